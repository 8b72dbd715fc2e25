//! The consumer loop every service uses, so at-least-once delivery, ordering, retries, dead
//! letters and lag metrics are written once.
//!
//! * **Order per key, concurrency across keys.** Messages with one key (an author, a
//!   follower, a user) are handled one after another in offset order; messages with
//!   different keys run concurrently (up to [`ConsumerConfig::max_in_flight`]), so one slow
//!   fan-out does not hold up the others.
//! * **Retry in place, park only the key.** A message that fails transiently is tried again
//!   with growing back-off while later messages *with the same key* wait behind it; other
//!   keys keep flowing. So a follow and an unfollow of one pair can never be applied in the
//!   wrong order.
//! * **Dead letters only for what fails alone.** After [`ConsumerConfig::attempts`] failed
//!   attempts a message goes to the group's dead-letter topic (headers: the error and the
//!   attempt count), if other messages succeeded meanwhile: when nothing succeeds the cause
//!   is likely a dependency (Redis down, say), and the message is retried four times as
//!   long before it goes. A poison message (cannot be decoded) goes to the dead-letter
//!   topic at once.
//! * **Commit what is contiguous.** Per partition, the committed offset is the lowest offset
//!   still in hand (or one past the highest handled): a crash redelivers everything not
//!   finished and nothing is skipped. Handlers are idempotent, so what was finished but
//!   not yet committed is harmless when it comes again.
//! * **Hand-over.** A partition the subscription gives to another member of the group
//!   (`ownership`) is let go once nothing of it is in hand, so its next reader starts after
//!   the last message handled here; on shutdown, what is in hand finishes first.
//! * **Lag and stalls.** `starling_consumer_lag_seconds` (now − `occurred_at`) per message;
//!   `starling_consumer_oldest_pending_seconds` grows while a message waits; the offset lag
//!   (end offset − committed) where the broker reports it. A consumer with messages in hand
//!   and none finished for [`ConsumerConfig::stall_after`] reports its health component
//!   failing, which turns the instance NOT_SERVING.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn, Instrument as _};

use super::topics::dead_letter_topic;
use super::{now_ms, BusError, Delivery, EventBus, Message};
use crate::health::Component;

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be handled (malformed payload, impossible content).
    #[error("poison message: {0}")]
    Poison(String),
    /// Might work later (a dependency is down).
    #[error("transient failure: {0}")]
    Transient(String),
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, message: &Message) -> Result<(), HandleError>;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub topic: String,
    pub group: String,
    /// Failed attempts before a message that fails alone goes to the dead-letter topic.
    pub attempts: u32,
    /// Wait after the first failure; doubles per attempt up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Messages in hand at once, across keys.
    pub max_in_flight: usize,
    /// No progress for this long while messages wait: the consumer is stalled.
    pub stall_after: Duration,
}

impl ConsumerConfig {
    pub fn new(topic: &str, group: &str) -> Self {
        Self {
            topic: topic.to_string(),
            group: group.to_string(),
            attempts: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_in_flight: 256,
            stall_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    DeadLettered,
    /// Shutdown came first: not committed, delivered again after the restart.
    Abandoned,
}

/// Offsets in hand on one partition.
#[derive(Debug, Default)]
struct PartitionOffsets {
    in_hand: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
    committed: i64,
}

impl PartitionOffsets {
    /// The offset to commit if it moved: the lowest in hand, or one past the highest seen.
    fn committable(&mut self) -> Option<i64> {
        let at = self.in_hand.first().copied().unwrap_or(self.next);
        (at > self.committed).then(|| {
            self.committed = at;
            at
        })
    }
}

/// Failed receives in a row after which the loop gives up its subscription.
const RESUBSCRIBE_AFTER: u32 = 25;

/// Resolves when the bus reports a loss; never for a bus that cannot lose its log.
async fn lost(losses: &mut Option<watch::Receiver<u64>>) -> Result<(), watch::error::RecvError> {
    match losses {
        Some(l) => l.changed().await,
        None => std::future::pending().await,
    }
}

/// Shared between the loop and the per-key tasks: when any message last succeeded.
type LastSuccess = Arc<Mutex<Instant>>;

/// Consumes until `shutdown` turns true, then lets the messages in hand finish (a message
/// still being retried is given up and comes back after the restart) and returns.
/// `health` reports a stall.
pub async fn run(
    bus: Arc<dyn EventBus>,
    config: ConsumerConfig,
    handler: Arc<dyn Handler>,
    mut shutdown: watch::Receiver<bool>,
    health: Component,
) -> Result<(), BusError> {
    let dead = dead_letter_topic(&config.topic, &config.group);
    let mut sub = bus
        .subscribe(&config.group, std::slice::from_ref(&config.topic))
        .await?;
    info!(topic = %config.topic, group = %config.group, "consuming");
    // Made after subscribing: a loss this subscription's own set-up reported is behind it.
    let mut losses = bus.losses();
    let labels = [
        ("topic", config.topic.clone()),
        ("group", config.group.clone()),
    ];
    let lag = metrics::histogram!("starling_consumer_lag_seconds", &labels);
    let oldest_pending = metrics::gauge!("starling_consumer_oldest_pending_seconds", &labels);
    let offset_lag = metrics::gauge!("starling_consumer_offset_lag", &labels);
    let in_flight_gauge = metrics::gauge!("starling_consumer_in_flight", &labels);

    // key -> messages of that key in hand; the front one is running.
    let mut keys: HashMap<String, VecDeque<Delivery>> = HashMap::new();
    let mut partitions: HashMap<i32, PartitionOffsets> = HashMap::new();
    let mut running: FuturesUnordered<BoxFuture<'static, (Delivery, Outcome)>> =
        FuturesUnordered::new();
    let mut in_flight = 0usize;
    let mut receive_errors = 0u32;
    let last_success: LastSuccess = Arc::new(Mutex::new(Instant::now()));
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let task_shutdown = shutdown.clone();
    let start = |d: Delivery| -> BoxFuture<'static, (Delivery, Outcome)> {
        let (handler, bus, config, dead, shutdown, last_success) = (
            handler.clone(),
            bus.clone(),
            config.clone(),
            dead.clone(),
            task_shutdown.clone(),
            last_success.clone(),
        );
        // The handler continues the publisher's trace, as a span of the consuming service
        // (the group is named after it).
        let span = starling_discovery::trace::follow(
            || {
                tracing::info_span!(
                    "event.consume",
                    otel.name = format!("consume {}", d.message.topic),
                    otel.kind = "consumer",
                    service.name = %config.group,
                    messaging.destination.name = %d.message.topic,
                    messaging.consumer.group.name = %config.group,
                    trace_id = tracing::field::Empty,
                )
            },
            d.message.traceparent.as_deref(),
        );
        async move {
            let outcome = process(
                &*handler,
                &*bus,
                &config,
                &dead,
                &d.message,
                shutdown,
                &last_success,
            )
            .await;
            (d, outcome)
        }
        .instrument(span)
        .boxed()
    };

    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            Some((d, outcome)) = running.next(), if !running.is_empty() => {
                in_flight -= 1;
                last_progress = Instant::now();
                let label = match outcome {
                    Outcome::Handled => "handled",
                    Outcome::DeadLettered => "dead_lettered",
                    Outcome::Abandoned => "abandoned",
                };
                metrics::counter!("starling_consumer_messages_total",
                    "topic" => config.topic.clone(), "group" => config.group.clone(), "outcome" => label)
                .increment(1);
                if outcome != Outcome::Abandoned {
                    let p = partitions.entry(d.partition).or_default();
                    p.in_hand.remove(&d.offset);
                    if let Some(at) = p.committable() {
                        if let Err(e) = sub.commit_at(&d, at).await {
                            // Not fatal: the messages come again, and handlers are idempotent.
                            warn!(topic = %config.topic, group = %config.group, error = %e, "commit failed");
                        }
                    }
                }
                // The next message of the same key, if one waits (not after an abandoned
                // one: it must come first, after the restart).
                if outcome == Outcome::Abandoned {
                    continue;
                }
                if let Some(queue) = keys.get_mut(&d.message.key) {
                    queue.pop_front();
                    match queue.front() {
                        Some(next) => running.push(start(next.clone())),
                        None => { keys.remove(&d.message.key); }
                    }
                }
                hand_over(&mut *sub, &mut partitions);
            }
            received = sub.next(), if in_flight < config.max_in_flight => {
                let d = match received {
                    Ok(d) => {
                        receive_errors = 0;
                        d
                    }
                    Err(e) => {
                        receive_errors += 1;
                        if receive_errors >= RESUBSCRIBE_AFTER || matches!(e, BusError::BrokerLost) {
                            warn!(topic = %config.topic, group = %config.group, error = %e, "giving up this subscription");
                            drop_blocking(sub);
                            // A fresh subscription (a new client) is the cure for a broker
                            // that lost its state; the supervisor makes one.
                            return Err(e);
                        }
                        warn!(topic = %config.topic, group = %config.group, error = %e, "receive failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = stopped(&mut shutdown) => break,
                        }
                        continue;
                    }
                };
                lag.record((now_ms() - d.message.occurred_at_ms).max(0) as f64 / 1000.0);
                if in_flight == 0 {
                    // Idle until now: the stall clock starts with this message.
                    last_progress = Instant::now();
                }
                in_flight += 1;
                let p = partitions.entry(d.partition).or_default();
                if p.in_hand.is_empty() && p.next == 0 {
                    // First message of this partition here: nothing before it is ours.
                    p.committed = d.offset;
                }
                p.in_hand.insert(d.offset);
                p.next = p.next.max(d.offset + 1);
                let queue = keys.entry(d.message.key.clone()).or_default();
                queue.push_back(d.clone());
                if queue.len() == 1 {
                    running.push(start(d));
                }
            }
            Ok(()) = lost(&mut losses) => {
                // The broker lost its log: this client may have met the topics gone and
                // back (librdkafka does not always recover from that), so a fresh one
                // takes over; what is in hand comes again, and handlers are idempotent.
                warn!(topic = %config.topic, group = %config.group, "the broker lost its log; subscribing afresh");
                drop_blocking(sub);
                return Err(BusError::BrokerLost);
            }
            _ = tick.tick() => {
                in_flight_gauge.set(in_flight as f64);
                let oldest = keys.values().filter_map(|q| q.front()).map(|d| d.message.occurred_at_ms).min();
                let oldest_s = oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
                oldest_pending.set(oldest_s);
                report(&config, ConsumerState { oldest_pending_s: oldest_s, in_flight });
                if let Some(behind) = sub.offset_lag() {
                    offset_lag.set(behind as f64);
                }
                hand_over(&mut *sub, &mut partitions);
                // Stalled: messages in hand and none finished for a while. (Not judged from
                // the offset lag: the test broker's end offsets are not reliable.)
                if in_flight > 0 && last_progress.elapsed() >= config.stall_after {
                    health.failing(&format!(
                        "consumer {}/{} finished no message for {:?} with {in_flight} in hand",
                        config.topic, config.group, last_progress.elapsed()
                    ));
                } else {
                    health.ok();
                }
            }
        }
    }
    // Let what is in hand finish; `process` gives up retries once shutdown is set.
    while let Some((d, outcome)) = running.next().await {
        if outcome == Outcome::Abandoned {
            continue;
        }
        let p = partitions.entry(d.partition).or_default();
        p.in_hand.remove(&d.offset);
        if let Some(queue) = keys.get_mut(&d.message.key) {
            queue.pop_front();
            // The rest of this key's queue is not started: it stays in hand, uncommitted.
        }
        if let Some(at) = p.committable() {
            let _ = sub.commit_at(&d, at).await;
        }
    }
    // Commits and hands the partitions to the other members now, not after a lease lapses.
    sub.close().await;
    drop_blocking(sub);
    info!(topic = %config.topic, group = %config.group, "consumer stopped");
    Ok(())
}

/// Lets go of the partitions the subscription is giving up once nothing of theirs is in
/// hand (the other member then starts after the last message handled here).
fn hand_over(sub: &mut dyn super::Subscription, partitions: &mut HashMap<i32, PartitionOffsets>) {
    for (topic, p) in sub.draining() {
        if partitions.get(&p).is_none_or(|o| o.in_hand.is_empty()) {
            partitions.remove(&p);
            sub.drained(&topic, p);
        }
    }
}

/// A consumer as the mesh view shows it (see [`states`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConsumerState {
    /// How long the oldest event in hand has waited (0 when idle).
    pub oldest_pending_s: f64,
    pub in_flight: usize,
}

type States = std::sync::Mutex<std::collections::BTreeMap<(String, String), ConsumerState>>;

fn registry() -> &'static States {
    static STATES: std::sync::OnceLock<States> = std::sync::OnceLock::new();
    STATES.get_or_init(Default::default)
}

fn report(config: &ConsumerConfig, state: ConsumerState) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((config.topic.clone(), config.group.clone()), state);
}

/// Every consumer of this process by (topic, group), as of its last second: `starling up`
/// runs them all, so its gateway's mesh view shows their lag.
pub fn states() -> Vec<((String, String), ConsumerState)> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Closing a Kafka consumer blocks (it leaves its group): not on a runtime thread.
fn drop_blocking(sub: Box<dyn super::Subscription>) {
    tokio::task::spawn_blocking(move || drop(sub));
}

/// Handles one message: attempts with back-off until it succeeds, is poison, or failed
/// alone `attempts` times; then forwards it to the dead-letter topic.
async fn process(
    handler: &dyn Handler,
    bus: &dyn EventBus,
    config: &ConsumerConfig,
    dead: &str,
    m: &Message,
    mut shutdown: watch::Receiver<bool>,
    last_success: &LastSuccess,
) -> Outcome {
    let mut delay = config.backoff;
    let mut attempt = 0u32;
    let first_failure = Instant::now();
    let reason = loop {
        attempt += 1;
        let result = AssertUnwindSafe(handler.handle(m))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                metrics::counter!("starling_consumer_handler_panics_total",
                    "topic" => config.topic.clone(), "group" => config.group.clone())
                .increment(1);
                Err(HandleError::Transient(format!("handler panicked: {what}")))
            });
        match result {
            Ok(()) => {
                *last_success.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                return Outcome::Handled;
            }
            Err(HandleError::Poison(reason)) => break format!("poison: {reason}"),
            Err(HandleError::Transient(reason)) => {
                let others_succeeded =
                    *last_success.lock().unwrap_or_else(|e| e.into_inner()) > first_failure;
                // Failing alone: a dead letter. Failing with everything else: probably a
                // dependency outage, so retry longer; but not for ever, since messages of
                // this key waiting behind it can fill every slot and starve the rest.
                if (attempt >= config.attempts && others_succeeded)
                    || attempt >= config.attempts * 4
                {
                    break reason;
                }
                warn!(topic = %m.topic, group = %config.group, key = %m.key, attempt, %reason,
                    "handler failed; later messages of this key wait");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => return Outcome::Abandoned,
                }
                delay = (delay * 2).min(config.max_backoff);
            }
        }
    };
    error!(topic = %m.topic, group = %config.group, key = %m.key, attempt, %reason, "to the dead-letter topic");
    let mut letter = m.clone();
    letter.topic = dead.to_string();
    letter.attempt = attempt;
    letter.error = Some(reason);
    if forward(bus, letter, &mut shutdown).await {
        Outcome::DeadLettered
    } else {
        Outcome::Abandoned
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard wait_for returns must not live across an await (it is not Send).
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}

/// Publishes until it succeeds: committing past a message that was neither handled nor
/// forwarded would lose it. False if shutdown came first (the message is then not
/// committed and comes back after the restart).
async fn forward(bus: &dyn EventBus, m: Message, shutdown: &mut watch::Receiver<bool>) -> bool {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match bus.publish(m.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                warn!(topic = %m.topic, error = %e, waited = ?started.elapsed(), "cannot forward; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(shutdown) => return false,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryBus;

    /// Panics on `boom`, counts the rest.
    struct Panicky(std::sync::atomic::AtomicU32);

    #[async_trait]
    impl Handler for Panicky {
        async fn handle(&self, m: &Message) -> Result<(), HandleError> {
            if m.payload == b"boom" {
                panic!("handler bug");
            }
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    /// A panicking handler does not take the consumer down: the message is retried, then
    /// dead-lettered with the panic as its error, and the messages after it are handled.
    #[tokio::test]
    async fn a_panicking_handler_is_contained() {
        let bus = MemoryBus::new();
        let handler = Arc::new(Panicky(Default::default()));
        let mut config = ConsumerConfig::new("t", "g");
        config.backoff = Duration::from_millis(5);
        config.attempts = 2;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            Arc::new(bus.clone()),
            config,
            handler.clone(),
            stopped,
            Component::new("consumer"),
        ));
        for payload in [&b"ok"[..], b"boom", b"ok", b"ok"] {
            bus.publish(Message::new("t", "k", payload.to_vec(), now_ms()))
                .await
                .unwrap();
        }
        // Other keys succeed meanwhile, so "boom" fails alone and goes after 2 attempts.
        for i in 0..20 {
            bus.publish(Message::new(
                "t",
                &format!("other{i}"),
                b"ok".to_vec(),
                now_ms(),
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while bus.messages(&dead_letter_topic("t", "g")).is_empty()
            || handler.0.load(std::sync::atomic::Ordering::SeqCst) < 23
        {
            assert!(Instant::now() < deadline, "not contained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let letters = bus.messages(&dead_letter_topic("t", "g"));
        assert_eq!(letters[0].payload, b"boom");
        assert!(
            letters[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("panicked: handler bug"),
            "{:?}",
            letters[0].error
        );
        stop.send_replace(true);
        task.await.unwrap().unwrap();
    }

    #[test]
    fn commits_stop_at_the_lowest_offset_in_hand() {
        let mut p = PartitionOffsets {
            committed: 10,
            next: 10,
            ..Default::default()
        };
        for o in 10..15 {
            p.in_hand.insert(o);
            p.next = o + 1;
        }
        // 11..14 done, 10 still retrying: nothing can be committed.
        for o in 11..15 {
            p.in_hand.remove(&o);
        }
        assert_eq!(p.committable(), None);
        p.in_hand.remove(&10);
        assert_eq!(p.committable(), Some(15));
        assert_eq!(p.committable(), None, "only when it moves");
    }
}
