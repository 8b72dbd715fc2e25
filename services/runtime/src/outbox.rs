//! The transactional outbox: how a call that changes data and announces the change on the
//! bus does both or neither, without waiting for the broker.
//!
//! A handler stores its change and the event in one atomic step ([`Store::apply_atomic`]):
//! the event is an entry of one of the service's outbox streams, written with
//! [`Outbox::entry`] next to the change's own writes. The call answers right after that
//! step, so it neither waits for the broker nor fails while the broker is down.
//!
//! **Shards.** A Redis Cluster applies an atomic step only to keys of one slot, so the
//! outbox is [`SHARDS`] streams, `outbox:<service>:{tag}`, one per shard of the keys
//! (`store::slot`): an event keyed by user `u` goes to the stream of `u`'s shard, in the
//! same slot as `u`'s own keys ([`crate::store::slot::user_key`]). Events of one key stay in
//! one stream, so they keep their order.
//!
//! The [`relay`] publishes each stream's entries to the bus, oldest first, and moves that
//! stream's cursor (`outbox:<service>:{tag}:published`) past each one only after the broker
//! acknowledged it. A crash at any point leaves the cursor before the entry, and the next
//! relay publishes it again: delivery is at least once, so every consumer is idempotent (see
//! `events::consumer`). One relay per stream works at a time (it holds a lease in the
//! store, renewed while it works), so entries leave in the order they were committed; when
//! the holder dies its lease lapses and another instance of the service takes over from
//! the cursor. The streams' leases are taken independently, so the relaying spreads over
//! the instances of a service.
//!
//! Published entries are kept for [`RETENTION`]: a broker that restarts without its log
//! (the test broker keeps topics in memory) loses events it had acknowledged, and when any
//! process's bus reports such a loss ([`report_losses`]) every relay publishes its retained
//! entries again.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tracing::{info, warn, Instrument as _};

use crate::events::{EventBus, Message};
use crate::health::Component;
use crate::store::slot::{shard_of, tag, SHARDS};
use crate::store::{Store, StreamEntry, Write};

const TOPIC: &str = "topic";
const KEY: &str = "key";
const PAYLOAD: &str = "payload";
const OCCURRED_AT: &str = "occurred_at_ms";
use starling_discovery::trace::TRACEPARENT;

/// How long a relay's lease lasts without renewal: how soon another instance takes over
/// from a relay that died.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often an instance that does not relay tries to take the lease: a holder that stops
/// cleanly gives it up, and the pipeline should not wait long for the next one.
const STANDBY_POLL: Duration = Duration::from_millis(500);
/// Entries published per round.
const BATCH: usize = 256;
/// How long one read waits for new entries before looking at the lease and for a lost
/// broker log again.
const BLOCK: Duration = Duration::from_millis(500);

/// The outbox of one service: where its handlers put events.
#[derive(Debug, Clone)]
pub struct Outbox {
    service: String,
}

/// One stream of an outbox (see the module docs).
#[derive(Debug, Clone)]
struct Stream {
    key: String,
}

impl Stream {
    /// Where the relay records the id of the last entry published.
    fn cursor_key(&self) -> String {
        format!("{}:published", self.key)
    }
}

impl Outbox {
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_string(),
        }
    }

    /// The stream that events keyed `key` go to: in the slot of `key`'s shard.
    pub fn stream_for(&self, key: &str) -> String {
        self.stream(shard_of(key)).key
    }

    /// The keys of all its streams.
    pub fn streams(&self) -> Vec<String> {
        (0..SHARDS).map(|s| self.stream(s).key).collect()
    }

    fn stream(&self, shard: usize) -> Stream {
        Stream {
            key: format!("outbox:{}:{}", self.service, tag(shard)),
        }
    }

    /// The write that puts `message` in the outbox, in the stream of its key's shard;
    /// apply it atomically with the change the message announces, whose keys must carry
    /// the same shard's tag ([`crate::store::slot::user_key`] of the message's key).
    pub fn entry(&self, message: &Message) -> Write {
        let mut fields = vec![
            (TOPIC.into(), message.topic.as_bytes().to_vec()),
            (KEY.into(), message.key.as_bytes().to_vec()),
            (PAYLOAD.into(), message.payload.clone()),
            (
                OCCURRED_AT.into(),
                message.occurred_at_ms.to_string().into_bytes(),
            ),
        ];
        // The trace of the call that made the event goes on with its publication.
        if let Some(tp) = &message.traceparent {
            fields.push((TRACEPARENT.into(), tp.as_bytes().to_vec()));
        }
        Write::XAdd {
            key: self.stream_for(&message.key),
            fields,
        }
    }
}

/// The message an outbox entry holds; `None` if it is not one [`Outbox::entry`] wrote.
pub fn decode(entry: &StreamEntry) -> Option<Message> {
    let text = |name| {
        entry
            .field(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    Some(Message {
        topic: text(TOPIC)?,
        key: text(KEY)?,
        payload: entry.field(PAYLOAD)?.to_vec(),
        occurred_at_ms: text(OCCURRED_AT)?.parse().ok()?,
        attempt: 0,
        error: None,
        traceparent: text(TRACEPARENT),
    })
}

/// How long published entries stay in the outbox: if the broker turns out to have lost
/// its log ([`EventBus::losses`]), everything published within this window is published
/// again (consumers are idempotent, so what they had already seen is harmless).
pub const RETENTION: Duration = Duration::from_secs(300);

/// Entries not yet published, over all its streams (for metrics, tests and `starling`
/// tooling).
pub async fn pending(store: &dyn Store, outbox: &Outbox) -> crate::store::StoreResult<usize> {
    let mut left = 0;
    for shard in 0..SHARDS {
        let stream = outbox.stream(shard);
        let cursor = published_cursor(store, &stream).await?;
        left += store
            .xread(&stream.key, &cursor, 1_000_000, Duration::ZERO)
            .await?
            .len();
    }
    Ok(left)
}

/// The id of the last entry of `stream` published ("0" if none).
async fn published_cursor(store: &dyn Store, stream: &Stream) -> crate::store::StoreResult<String> {
    Ok(store
        .get(&stream.cursor_key())
        .await?
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| "0".into()))
}

/// Where processes tell each other that the broker lost its log: every process writes a
/// fresh token here when its bus reports a loss ([`report_losses`]), and every relay that
/// sees the token change publishes its retained entries again. Only the process that
/// re-created the topics learns of the loss from its bus, and it may hold no relay lease
/// (or have no outbox at all, like the timeline service).
const LOSS_KEY: &str = "outbox:broker_loss";

/// Writes a fresh loss token whenever `bus` reports that the broker lost its log, for the
/// relays of every process (see [`LOSS_KEY`]). One per process; runs until the bus is gone.
pub async fn report_losses(store: Arc<dyn Store>, bus: Arc<dyn EventBus>) {
    let Some(mut losses) = bus.losses() else {
        return;
    };
    drop(bus);
    while losses.changed().await.is_ok() {
        let token = format!("{:016x}", rand::random::<u64>()).into_bytes();
        let write = || {
            store.apply(vec![Write::Set {
                key: LOSS_KEY.into(),
                value: token.clone(),
            }])
        };
        // A store that is down too must not swallow the news.
        let mut pause = Duration::from_millis(100);
        while let Err(e) = write().await {
            warn!(error = %e, "cannot tell the relays that the broker lost its log; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        info!("told the outbox relays that the broker lost its log");
    }
}

/// True once shutdown is requested or its sender is gone.
fn is_stopped(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Publishes the outbox `outbox` of this service to `bus` until `shutdown` turns true:
/// each of its streams whenever this instance (`holder`) holds that stream's relay lease;
/// then publishes what is left (of the streams it holds) and gives the leases up.
/// `bus_health` reports whether the broker takes what is published (only a holder knows;
/// the others report it fine).
pub async fn relay(
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    outbox: Outbox,
    holder: String,
    bus_health: Component,
    shutdown: watch::Receiver<bool>,
) {
    let health = StreamsHealth {
        component: bus_health,
        failing: Arc::default(),
    };
    join_all((0..SHARDS).map(|shard| {
        relay_stream(
            store.clone(),
            bus.clone(),
            outbox.stream(shard),
            holder.clone(),
            (health.clone(), shard),
            shutdown.clone(),
        )
    }))
    .await;
}

/// The broker's health as the relays of one outbox see it: failing while any of the
/// streams they relay fails, so one stream's success does not hide another's failure.
#[derive(Clone)]
struct StreamsHealth {
    component: Component,
    failing: Arc<std::sync::Mutex<std::collections::HashSet<usize>>>,
}

impl StreamsHealth {
    fn ok(&self, shard: usize) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.remove(&shard);
        if failing.is_empty() {
            self.component.ok();
        }
    }

    fn failing(&self, shard: usize, reason: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.insert(shard);
        self.component.failing(reason);
    }
}

/// [`relay`] for one stream.
async fn relay_stream(
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    outbox: Stream,
    holder: String,
    (bus_health, shard): (StreamsHealth, usize),
    mut shutdown: watch::Receiver<bool>,
) {
    let lease = format!("{}:relay", outbox.key);
    let stream = outbox.key.clone();
    let mut loss_token = store.get(LOSS_KEY).await.ok().flatten();
    let mut pause = Duration::from_millis(100);
    loop {
        if is_stopped(&shutdown) {
            break;
        }
        match store.lease(&lease, &holder, LEASE_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                // Another instance relays; check again soon in case it stops or dies.
                // (Health is left to the streams this instance relays: a standby cannot
                // tell whether the broker takes events.)
                wait(&mut shutdown, STANDBY_POLL).await;
                continue;
            }
            Err(e) => {
                warn!(%stream, error = %e, "cannot take the relay lease");
                wait(&mut shutdown, LEASE_TTL / 3).await;
                continue;
            }
        }
        // From the entry after the last one published, by whichever holder.
        let mut after = match published_cursor(&*store, &outbox).await {
            Ok(c) => c,
            Err(e) => {
                warn!(%stream, error = %e, "cannot read the outbox cursor");
                let _ = store.release(&lease, &holder).await;
                wait(&mut shutdown, pause).await;
                continue;
            }
        };
        info!(%stream, %holder, %after, "relaying the outbox");
        // The lease is renewed beside the work, so a slow publish (a broker that does not
        // answer) never lets it lapse while this relay still publishes.
        let (held_tx, held) = watch::channel(true);
        let keeper = tokio::spawn(keep_lease(
            store.clone(),
            lease.clone(),
            holder.clone(),
            held_tx,
        ));
        loop {
            if is_stopped(&shutdown) || !*held.borrow() {
                break;
            }
            // A loss reported by any process's bus (see `report_losses`).
            let mut rewind = false;
            if let Ok(now) = store.get(LOSS_KEY).await {
                if now != loss_token {
                    loss_token = now;
                    rewind = true;
                }
            }
            if rewind {
                warn!(%stream, retention = ?RETENTION,
                    "the broker lost its log; publishing again what it may have held");
                metrics::counter!("starling_outbox_rewinds_total", "stream" => stream.clone())
                    .increment(1);
                after = "0".into();
            }
            let entries = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                read = store.xread(&stream, &after, BATCH, BLOCK) => match read {
                    Ok(entries) => entries,
                    Err(e) => {
                        warn!(%stream, error = %e, "cannot read the outbox");
                        wait(&mut shutdown, pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            if entries.is_empty() {
                continue;
            }
            let (published, failure) = publish_batch(&*bus, &stream, &entries).await;
            if let Some(last) = published {
                // Only while the lease is ours: a relay that lost it must not move the
                // cursor under the new holder.
                if *held.borrow() {
                    if let Err(e) = advance(&*store, &outbox, &last).await {
                        // Published, but the cursor stays behind: published again later,
                        // which consumers tolerate.
                        warn!(%stream, error = %e, "cannot record what was published");
                    }
                }
                after = last;
            }
            match failure {
                None => {
                    pause = Duration::from_millis(100);
                    bus_health.ok(shard);
                }
                Some(e) => {
                    bus_health.failing(shard, &e);
                    warn!(%stream, error = %e, "cannot publish; the outbox keeps the events");
                    wait(&mut shutdown, pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        keeper.abort();
        if is_stopped(&shutdown) {
            if *held.borrow() {
                drain(&*store, &*bus, &outbox, &after).await;
            }
            let _ = store.release(&lease, &holder).await;
            break;
        }
        warn!(%stream, "relay lease lost; another instance relays");
        bus_health.ok(shard);
    }
}

/// Renews the relay lease every third of its TTL; reports through `held` when it is lost.
async fn keep_lease(
    store: Arc<dyn Store>,
    lease: String,
    holder: String,
    held: watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        // One failed renewal is not yet a lost lease; a lease past its TTL is.
        let renewed =
            tokio::time::timeout(LEASE_TTL / 3, store.lease(&lease, &holder, LEASE_TTL)).await;
        match renewed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                held.send_replace(false);
                return;
            }
            Ok(Err(_)) | Err(_) => {
                // Try once more right away; give up if that fails too (the TTL may run
                // out before the next round).
                if !matches!(store.lease(&lease, &holder, LEASE_TTL).await, Ok(true)) {
                    held.send_replace(false);
                    return;
                }
            }
        }
    }
}

/// Records `last` as published and drops entries older than [`RETENTION`], never one
/// after the cursor (a backlog older than the retention stays until published).
async fn advance(store: &dyn Store, outbox: &Stream, last: &str) -> crate::store::StoreResult<()> {
    let now = crate::events::now_ms().max(0) as u64;
    let cursor_ms = crate::store::stream_id_order(last).map_or(0, |(ms, _)| ms);
    let min_ms = now
        .saturating_sub(RETENTION.as_millis() as u64)
        .min(cursor_ms);
    store
        .apply(vec![
            Write::Set {
                key: outbox.cursor_key(),
                value: last.as_bytes().to_vec(),
            },
            Write::XTrimBefore {
                key: outbox.key.clone(),
                min_ms,
            },
        ])
        .await
}

/// At shutdown: publishes what is left, for a bounded time (another instance, or this one
/// after a restart, takes over anything still there).
async fn drain(store: &dyn Store, bus: &dyn EventBus, outbox: &Stream, after: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut after = after.to_string();
    while tokio::time::Instant::now() < until {
        let Ok(entries) = store
            .xread(&outbox.key, &after, BATCH, Duration::ZERO)
            .await
        else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        let (published, failure) = publish_batch(bus, &outbox.key, &entries).await;
        if let Some(last) = published {
            if advance(store, outbox, &last).await.is_err() {
                return;
            }
            after = last;
        }
        if failure.is_some() {
            return;
        }
    }
}

/// Publishes `entries` in order, up to the first failure: the id of the last entry
/// published (if any) and the failure (if any).
async fn publish_batch(
    bus: &dyn EventBus,
    stream: &str,
    entries: &[StreamEntry],
) -> (Option<String>, Option<String>) {
    // Sent together, enqueued in order (join_all polls them in order), so the producer
    // keeps their order per partition; an idempotent producer keeps it across its retries.
    let service = stream
        .strip_prefix("outbox:")
        .and_then(|s| s.split(':').next())
        .unwrap_or(stream);
    let results = join_all(entries.iter().map(|e| async move {
        match decode(e) {
            Some(mut m) => {
                // A producer span in the trace of the call that stored the event; the
                // consumers' spans follow from it.
                let span = starling_discovery::trace::follow(
                    || {
                        tracing::info_span!(
                            "outbox.publish",
                            otel.name = format!("publish {}", m.topic),
                            otel.kind = "producer",
                            service.name = service,
                            messaging.destination.name = %m.topic,
                            trace_id = tracing::field::Empty,
                        )
                    },
                    m.traceparent.as_deref(),
                );
                if !span.is_none() {
                    m.traceparent = starling_discovery::trace::traceparent(&span);
                }
                bus.publish(m)
                    .instrument(span)
                    .await
                    .map_err(|e| e.to_string())
            }
            // Nothing can ever publish it; keeping it would block the outbox for good.
            None => {
                warn!(%stream, id = %e.id, "skipping an outbox entry that is not an event");
                Ok(())
            }
        }
    }))
    .await;
    let done = results.iter().take_while(|r| r.is_ok()).count();
    let failure = results.into_iter().find_map(Result::err);
    metrics::counter!("starling_outbox_published_total", "stream" => stream.to_string())
        .increment(done as u64);
    let last = done.checked_sub(1).map(|i| entries[i].id.clone());
    (last, failure)
}

async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopped(shutdown) => {}
    }
}

/// Resolves once shutdown is requested or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    /// One stream's success does not hide another's failure: the broker is reported fine
    /// only once no stream fails.
    #[test]
    fn streams_report_the_broker_failing_while_any_fails() {
        let health = StreamsHealth {
            component: Component::new("broker"),
            failing: Arc::default(),
        };
        health.failing(1, "no leader");
        health.failing(2, "no leader");
        health.ok(3);
        health.ok(1);
        assert!(health.component.failing_for().is_some());
        health.ok(2);
        assert!(health.component.failing_for().is_none());
    }

    use super::*;
    use crate::events::{BusError, MemoryBus};
    use crate::store::MemoryStore;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A bus that refuses publishes while `down` is set.
    struct Flaky {
        inner: MemoryBus,
        down: AtomicBool,
        losses: watch::Sender<u64>,
    }

    #[async_trait]
    impl EventBus for Flaky {
        async fn create_topics(&self, t: &[String]) -> Result<(), BusError> {
            self.inner.create_topics(t).await
        }
        async fn publish(&self, m: Message) -> Result<(), BusError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(BusError::Kafka("broker down".into()));
            }
            self.inner.publish(m).await
        }
        async fn subscribe(
            &self,
            g: &str,
            t: &[String],
        ) -> Result<Box<dyn crate::events::Subscription>, BusError> {
            self.inner.subscribe(g, t).await
        }
        fn losses(&self) -> Option<watch::Receiver<u64>> {
            Some(self.losses.subscribe())
        }
    }

    async fn until(mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "condition not met");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn entries_round_trip() {
        let m = Message::new("t", "k", vec![1, 2, 3], 42);
        let Write::XAdd { fields, .. } = Outbox::new("svc").entry(&m) else {
            panic!("not an XAdd")
        };
        let e = StreamEntry {
            id: "1-0".into(),
            fields,
        };
        assert_eq!(decode(&e), Some(m));
        assert_eq!(
            decode(&StreamEntry {
                id: "2-0".into(),
                fields: vec![]
            }),
            None
        );
    }

    /// Events stored while the broker is down are published, in commit order, once it is
    /// back; the outbox is then empty.
    #[tokio::test]
    async fn events_wait_in_the_outbox_while_the_broker_is_down() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let flaky = Arc::new(Flaky {
            inner: MemoryBus::new(),
            down: AtomicBool::new(true),
            losses: watch::channel(0).0,
        });
        let outbox = Outbox::new("svc");
        let (stop, stopped) = watch::channel(false);
        let health = Component::new("bus");
        let relay = tokio::spawn(relay(
            store.clone(),
            flaky.clone(),
            outbox.clone(),
            "me".into(),
            health.clone(),
            stopped,
        ));
        for i in 0..20u8 {
            store
                .apply_atomic(vec![outbox.entry(&Message::new("t", "k", vec![i], 1))])
                .await
                .unwrap();
        }
        until(|| health.failing_for().is_some()).await;
        assert!(flaky.inner.messages("t").is_empty());
        assert_eq!(pending(&*store, &outbox).await.unwrap(), 20);
        flaky.down.store(false, Ordering::SeqCst);
        until(|| flaky.inner.messages("t").len() == 20).await;
        let order: Vec<u8> = flaky
            .inner
            .messages("t")
            .iter()
            .map(|m| m.payload[0])
            .collect();
        assert_eq!(order, (0..20).collect::<Vec<u8>>());
        until(|| health.failing_for().is_none()).await;
        stop.send_replace(true);
        relay.await.unwrap();
        assert_eq!(pending(&*store, &outbox).await.unwrap(), 0);
        assert_eq!(
            store.xlen(&outbox.stream_for("k")).await.unwrap(),
            20,
            "kept for RETENTION"
        );
    }

    /// When a bus reports that the broker lost its log, the retained entries are published
    /// again, in order, even when that bus belongs to another process (here: another bus
    /// on the same store) than the relay's.
    #[tokio::test]
    async fn a_lost_broker_log_is_published_again() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let flaky = Arc::new(Flaky {
            inner: MemoryBus::new(),
            down: AtomicBool::new(false),
            losses: watch::channel(0).0,
        });
        let elsewhere = Arc::new(Flaky {
            inner: MemoryBus::new(),
            down: AtomicBool::new(false),
            losses: watch::channel(0).0,
        });
        tokio::spawn(report_losses(store.clone(), elsewhere.clone()));
        let outbox = Outbox::new("svc");
        let (stop, stopped) = watch::channel(false);
        let relay = tokio::spawn(relay(
            store.clone(),
            flaky.clone(),
            outbox.clone(),
            "me".into(),
            Component::new("bus"),
            stopped,
        ));
        for i in 0..5u8 {
            store
                .apply_atomic(vec![outbox.entry(&Message::new("t", "k", vec![i], 1))])
                .await
                .unwrap();
        }
        until(|| flaky.inner.messages("t").len() == 5).await;
        elsewhere.losses.send_modify(|n| *n += 1);
        until(|| flaky.inner.messages("t").len() == 10).await;
        let order: Vec<u8> = flaky
            .inner
            .messages("t")
            .iter()
            .map(|m| m.payload[0])
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        stop.send_replace(true);
        relay.await.unwrap();
    }

    /// Two relays on one outbox: one publishes, and when it stops the other takes over;
    /// every entry is published, none lost.
    #[tokio::test]
    async fn a_second_relay_takes_over() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let bus = Arc::new(MemoryBus::new());
        let outbox = Outbox::new("svc");
        let (stop_a, stopped_a) = watch::channel(false);
        let (stop_b, stopped_b) = watch::channel(false);
        let a = tokio::spawn(relay(
            store.clone(),
            bus.clone(),
            outbox.clone(),
            "a".into(),
            Component::new("bus"),
            stopped_a,
        ));
        for i in 0..10u8 {
            store
                .apply_atomic(vec![outbox.entry(&Message::new("t", "k", vec![i], 1))])
                .await
                .unwrap();
        }
        until(|| bus.messages("t").len() == 10).await;
        let b = tokio::spawn(relay(
            store.clone(),
            bus.clone(),
            outbox.clone(),
            "b".into(),
            Component::new("bus"),
            stopped_b,
        ));
        stop_a.send_replace(true);
        a.await.unwrap();
        for i in 10..20u8 {
            store
                .apply_atomic(vec![outbox.entry(&Message::new("t", "k", vec![i], 1))])
                .await
                .unwrap();
        }
        until(|| bus.messages("t").len() == 20).await;
        stop_b.send_replace(true);
        b.await.unwrap();
        let order: Vec<u8> = bus.messages("t").iter().map(|m| m.payload[0]).collect();
        assert_eq!(order, (0..20).collect::<Vec<u8>>());
    }
}
