//! The in-process store of the embedded mode: Redis semantics for the commands the services
//! use, in a mutex-guarded map. Nothing survives the process, which is what `starling up`
//! with no `--redis` promises.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{stream_id_order, Lex, Store, StoreError, StoreResult, StreamEntry, Write};

type Fields = Vec<(String, Vec<u8>)>;

/// Claims with a ttl kept before lapsed ones are swept out (Redis expires them itself).
const CLAIMS_BEFORE_SWEEP: usize = 10_000;

#[derive(Debug, Clone)]
enum Value {
    Bytes(Vec<u8>),
    Lex(BTreeSet<String>),
    Scored(HashMap<String, f64>),
    Hash(HashMap<String, Vec<u8>>),
    /// Entries by id: (milliseconds since the epoch, sequence), as Redis makes them.
    Stream(BTreeMap<(u64, u64), Fields>),
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<HashMap<String, Value>>,
    /// Leases: key -> (holder, lapses at).
    leases: Mutex<HashMap<String, (String, Instant)>>,
    /// When the keys set by a claim with a ttl lapse (see `Store::claim`); the values
    /// live in `data` like any other, as in Redis.
    claim_expiry: Mutex<HashMap<String, Instant>>,
    /// Claims with a ttl at which the next sweep of lapsed ones runs: twice as many as
    /// were live after the last, so sweeping costs a constant per claim on average.
    claim_sweep_at: std::sync::atomic::AtomicUsize,
    /// The last stream id given out: ids increase across the store even if the wall
    /// clock steps back (Redis's increase per stream, likewise).
    last_stream_id: Mutex<(u64, u64)>,
    /// Wakes blocked [`Store::xread`] calls when an entry is added.
    added: Notify,
    /// Pub/sub channels ([`Store::publish`]).
    channels: Mutex<HashMap<String, tokio::sync::broadcast::Sender<Vec<u8>>>>,
}

/// Messages a slow subscriber may fall behind by before its subscription breaks.
const CHANNEL_BACKLOG: usize = 1_024;

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

macro_rules! entry {
    ($map:expr, $key:expr, $variant:ident) => {{
        let v = $map
            .entry($key.to_string())
            .or_insert_with(|| Value::$variant(Default::default()));
        match v {
            Value::$variant(inner) => inner,
            _ => return Err(StoreError::WrongType($key.to_string())),
        }
    }};
}

fn top(set: &HashMap<String, f64>, limit: usize) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = set.iter().map(|(m, s)| (m.clone(), *s)).collect();
    // Highest score first; equal scores by member, descending, as Redis ZREVRANGE does.
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    all.truncate(limit);
    all
}

impl MemoryStore {
    fn apply_one(
        map: &mut HashMap<String, Value>,
        last_id: &Mutex<(u64, u64)>,
        w: Write,
    ) -> StoreResult<()> {
        match w {
            Write::Set { key, value } => {
                map.insert(key, Value::Bytes(value));
            }
            Write::Del { key } => {
                map.remove(&key);
            }
            Write::ZAdd { key, member } => {
                entry!(map, key, Lex).insert(member);
            }
            Write::ZRem { key, member } => {
                if let Some(Value::Lex(s)) = map.get_mut(&key) {
                    s.remove(&member);
                }
                remove_if_empty(map, &key);
            }
            Write::ZKeepLast { key, keep } => {
                if let Some(Value::Lex(s)) = map.get_mut(&key) {
                    while s.len() > keep {
                        s.pop_first();
                    }
                }
                remove_if_empty(map, &key);
            }
            Write::ZIncr { key, member, delta } => {
                *entry!(map, key, Scored).entry(member).or_insert(0.0) += delta;
            }
            Write::ZKeepTop { key, keep } => {
                if let Some(Value::Scored(s)) = map.get_mut(&key) {
                    if s.len() > keep {
                        let kept: HashMap<String, f64> = top(s, keep).into_iter().collect();
                        *s = kept;
                    }
                }
                remove_if_empty(map, &key);
            }
            Write::HSet { key, field, value } => {
                entry!(map, key, Hash).insert(field, value);
            }
            Write::HDel { key, field } => {
                if let Some(Value::Hash(h)) = map.get_mut(&key) {
                    h.remove(&field);
                }
                remove_if_empty(map, &key);
            }
            Write::XAdd { key, fields } => {
                let id = {
                    let mut last = last_id.lock().unwrap_or_else(|e| e.into_inner());
                    let now = crate::events::now_ms().max(0) as u64;
                    *last = if now > last.0 {
                        (now, 0)
                    } else {
                        (last.0, last.1 + 1)
                    };
                    *last
                };
                entry!(map, key, Stream).insert(id, fields);
            }
            Write::XTrimBefore { key, min_ms } => {
                if let Some(Value::Stream(s)) = map.get_mut(&key) {
                    *s = s.split_off(&(min_ms, 0));
                }
            }
            Write::XDel { key, id } => {
                if let (Some(Value::Stream(s)), Some(id)) =
                    (map.get_mut(&key), stream_id_order(&id))
                {
                    s.remove(&id);
                }
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        match self.lock().get(key) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
        }
    }

    async fn mget(&self, keys: &[String]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let map = self.lock();
        // Redis MGET answers nil for keys of another type rather than failing.
        Ok(keys
            .iter()
            .map(|k| match map.get(k) {
                Some(Value::Bytes(b)) => Some(b.clone()),
                _ => None,
            })
            .collect())
    }

    async fn zadd(&self, key: &str, member: &str) -> StoreResult<bool> {
        let mut map = self.lock();
        Ok(entry!(map, key, Lex).insert(member.to_string()))
    }

    async fn zrem(&self, key: &str, member: &str) -> StoreResult<bool> {
        let mut map = self.lock();
        let removed = match map.get_mut(key) {
            Some(Value::Lex(s)) => s.remove(member),
            Some(_) => return Err(StoreError::WrongType(key.to_string())),
            None => false,
        };
        if matches!(map.get(key), Some(Value::Lex(s)) if s.is_empty()) {
            map.remove(key);
        }
        Ok(removed)
    }

    async fn zcard(&self, key: &str) -> StoreResult<u64> {
        match self.lock().get(key) {
            None => Ok(0),
            Some(Value::Lex(s)) => Ok(s.len() as u64),
            Some(Value::Scored(s)) => Ok(s.len() as u64),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
        }
    }

    async fn zcontains(&self, key: &str, member: &str) -> StoreResult<bool> {
        match self.lock().get(key) {
            None => Ok(false),
            Some(Value::Lex(s)) => Ok(s.contains(member)),
            Some(Value::Scored(s)) => Ok(s.contains_key(member)),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
        }
    }

    async fn zrange_lex(&self, key: &str, from: Lex<'_>, limit: usize) -> StoreResult<Vec<String>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let map = self.lock();
        let set = match map.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Lex(s)) => s,
            Some(_) => return Err(StoreError::WrongType(key.to_string())),
        };
        Ok(match from {
            Lex::After(after) => {
                let lower = after.map_or(Unbounded, |a| Excluded(a.to_string()));
                set.range((lower, Unbounded)).take(limit).cloned().collect()
            }
            Lex::Before(before) => {
                let upper = before.map_or(Unbounded, |b| Excluded(b.to_string()));
                set.range((Unbounded, upper))
                    .rev()
                    .take(limit)
                    .cloned()
                    .collect()
            }
        })
    }

    async fn ztop(&self, key: &str, limit: usize) -> StoreResult<Vec<(String, f64)>> {
        match self.lock().get(key) {
            None => Ok(Vec::new()),
            Some(Value::Scored(s)) => Ok(top(s, limit)),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
        }
    }

    async fn hgetall(&self, key: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        match self.lock().get(key) {
            None => Ok(Vec::new()),
            Some(Value::Hash(h)) => Ok(h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
        }
    }

    async fn apply(&self, writes: Vec<Write>) -> StoreResult<()> {
        let streamed = writes.iter().any(|w| matches!(w, Write::XAdd { .. }));
        {
            let mut map = self.lock();
            for w in writes {
                Self::apply_one(&mut map, &self.last_stream_id, w)?;
            }
        }
        if streamed {
            self.added.notify_waiters();
        }
        Ok(())
    }

    async fn apply_atomic(&self, writes: Vec<Write>) -> StoreResult<()> {
        super::check_one_slot(&writes)?;
        // One lock around all of them: as atomic as MULTI/EXEC. Like EXEC, a failing write
        // does not stop the others; the first error is reported.
        let streamed = writes.iter().any(|w| matches!(w, Write::XAdd { .. }));
        let mut first_error = None;
        {
            let mut map = self.lock();
            for w in writes {
                if let Err(e) = Self::apply_one(&mut map, &self.last_stream_id, w) {
                    first_error.get_or_insert(e);
                }
            }
        }
        if streamed {
            self.added.notify_waiters();
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn xread(
        &self,
        key: &str,
        after: &str,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>> {
        let after = stream_id_order(after).unwrap_or((0, 0));
        let deadline = Instant::now() + block;
        loop {
            // Register interest before looking, so an add in between is not missed.
            let notified = self.added.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let map = self.lock();
                let found: Vec<StreamEntry> = match map.get(key) {
                    None => Vec::new(),
                    Some(Value::Stream(s)) => s
                        .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                        .take(count.max(1))
                        .map(|((ms, seq), fields)| StreamEntry {
                            id: format!("{ms}-{seq}"),
                            fields: fields.clone(),
                        })
                        .collect(),
                    Some(_) => return Err(StoreError::WrongType(key.to_string())),
                };
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    async fn xlen(&self, key: &str) -> StoreResult<u64> {
        match self.lock().get(key) {
            None => Ok(0),
            Some(Value::Stream(s)) => Ok(s.len() as u64),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
        }
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let free = match leases.get(key) {
            None => true,
            Some((h, until)) => h == holder || *until <= now,
        };
        if free {
            leases.insert(key.to_string(), (holder.to_string(), now + ttl));
        }
        Ok(free)
    }

    async fn release(&self, key: &str, holder: &str) -> StoreResult<()> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.get(key).is_some_and(|(h, _)| h == holder) {
            leases.remove(key);
        }
        Ok(())
    }

    async fn claim(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<Option<Vec<u8>>> {
        let mut map = self.lock();
        let mut expiry = self.claim_expiry.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        use std::sync::atomic::Ordering;
        let sweep_at = self.claim_sweep_at.load(Ordering::Relaxed);
        if expiry.len() >= sweep_at.max(CLAIMS_BEFORE_SWEEP) {
            expiry.retain(|k, until| {
                let live = *until > now;
                if !live {
                    map.remove(k);
                }
                live
            });
            self.claim_sweep_at
                .store(2 * expiry.len(), Ordering::Relaxed);
        }
        let lapsed = expiry.get(key).is_some_and(|until| *until <= now);
        match map.get(key) {
            Some(Value::Bytes(held)) if !lapsed => return Ok(Some(held.clone())),
            Some(Value::Bytes(_)) | None => {}
            Some(_) => return Err(StoreError::WrongType(key.to_string())),
        }
        map.insert(key.to_string(), Value::Bytes(value.to_vec()));
        match ttl {
            Some(t) => expiry.insert(key.to_string(), now + t),
            None => expiry.remove(key),
        };
        Ok(None)
    }

    async fn lease_holders(&self, keys: &[String]) -> StoreResult<Vec<Option<String>>> {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|k| {
                leases
                    .get(k)
                    .filter(|(_, until)| *until > now)
                    .map(|(h, _)| h.clone())
            })
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn publish(&self, channel: &str, payload: &[u8]) -> StoreResult<()> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = channels.get(channel) {
            if tx.send(payload.to_vec()).is_err() {
                // Nobody listens any more.
                channels.remove(channel);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> StoreResult<super::Subscription> {
        let rx = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.to_string())
            .or_insert_with(|| tokio::sync::broadcast::channel(CHANNEL_BACKLOG).0)
            .subscribe();
        // A subscriber that lagged has missed messages: its stream ends, as a Redis
        // subscription does when its connection drops.
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.ok().map(|payload| (payload, rx))
        });
        Ok(Box::pin(stream))
    }
}

/// Like Redis, an emptied collection does not exist: called on the one key a write that
/// removes members touched (checking every key after every write made each write cost
/// the size of the whole store).
fn remove_if_empty(map: &mut HashMap<String, Value>, key: &str) {
    let empty = match map.get(key) {
        Some(Value::Lex(s)) => s.is_empty(),
        Some(Value::Scored(s)) => s.is_empty(),
        Some(Value::Hash(h)) => h.is_empty(),
        // Redis keeps an emptied stream (and its last id).
        Some(Value::Bytes(_)) | Some(Value::Stream(_)) | None => false,
    };
    if empty {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_the_contract() {
        super::super::contract::run_all(&super::MemoryStore::new(), "").await;
    }
}
