//! The in-process store of the embedded mode: Redis semantics for the commands the services
//! use, in a mutex-guarded map. Nothing survives the process, which is what `starling up`
//! with no `--redis` promises.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Lex, Store, StoreError, StoreResult, Write};

#[derive(Debug, Clone)]
enum Value {
    Bytes(Vec<u8>),
    Lex(BTreeSet<String>),
    Scored(HashMap<String, f64>),
    Hash(HashMap<String, Vec<u8>>),
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<HashMap<String, Value>>,
}

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
    fn apply_one(map: &mut HashMap<String, Value>, w: Write) -> StoreResult<()> {
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
            }
            Write::ZKeepLast { key, keep } => {
                if let Some(Value::Lex(s)) = map.get_mut(&key) {
                    while s.len() > keep {
                        s.pop_first();
                    }
                }
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
            }
            Write::HSet { key, field, value } => {
                entry!(map, key, Hash).insert(field, value);
            }
        }
        // Like Redis, an emptied collection does not exist.
        map.retain(|_, v| match v {
            Value::Lex(s) => !s.is_empty(),
            Value::Scored(s) => !s.is_empty(),
            Value::Hash(h) => !h.is_empty(),
            Value::Bytes(_) => true,
        });
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
        let mut map = self.lock();
        for w in writes {
            Self::apply_one(&mut map, w)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_the_contract() {
        super::super::contract::run_all(&super::MemoryStore::new(), "").await;
    }
}
