//! The production bus on Kafka through rdkafka (bundled librdkafka).
//!
//! Producer: idempotent, `acks=all`, small linger (a request that waits for its publish
//! pays the linger). Consumers: manual commits only (`enable.auto.commit=false`), from the
//! earliest offset for a new group. They never join a group on the broker: the members of a
//! group share the partitions through leases in the store (`ownership`, which says why),
//! and commit their offsets under the group id as simple consumers. Settings chosen with
//! Tansu, the Kafka-protocol broker used in the tests, in mind: see `../shared/design.md`.
//!
//! **A broker that goes away.** librdkafka 2.12 can crash (SIGSEGV in
//! `rd_kafka_metadata_cache_find`, librdkafka issues 4778 and 4964) when a client that
//! cached a topic's metadata meets the topic again under a new id, which is what a broker
//! restarted without its log (the test broker keeps topics in memory) shows it. So a client
//! that sees every broker connection go down is replaced at once by a fresh one, which has
//! no cache to trip over: the producer by a watchdog task here, a consumer by its
//! supervisor (its `next` answers [`BusError::BrokerLost`]). When the broker answers again,
//! the topics are created before the first publish and before any subscription; if they
//! had to be created (the broker lost them), [`EventBus::losses`] ticks: consumers
//! subscribe afresh, and the outbox relays (told through the store, see
//! `outbox::report_losses`) publish again what the lost log may have held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{watch, Notify};

use super::ownership::{Ownership, Reader};
use super::topics::TopicLayout;
use super::{BusError, Delivery, EventBus, Message, Subscription};
use crate::store::Store;

const OCCURRED_AT: &str = "occurred-at-ms";
const ATTEMPT: &str = "attempt";
const ERROR: &str = "error";
use starling_discovery::trace::TRACEPARENT;

/// librdkafka reconnects with exponential back-off up to this: short, so a restarted
/// broker is found again within about a second.
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// Settings Starling sets itself, which its delivery guarantees rely on: an operator's
/// `--kafka-option` may not change them.
pub const RESERVED_OPTIONS: [&str; 6] = [
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "group.id",
    "enable.auto.commit",
    "auto.offset.reset",
];

/// Where the brokers are and how to reach them: the bootstrap servers plus the operator's
/// librdkafka settings (TLS, SASL and the like).
#[derive(Clone)]
struct Brokers {
    servers: String,
    options: Arc<Vec<(String, String)>>,
}

impl Brokers {
    /// A librdkafka configuration with the operator's options; the caller adds Starling's.
    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in self.options.iter() {
            config.set(key, value);
        }
        config.set("bootstrap.servers", &self.servers);
        config
    }

    /// The operator's value of a tuning setting Starling has a default for (`--kafka-option
    /// key=value` wins); settings Starling depends on (acks, idempotence, offsets) are
    /// always Starling's.
    fn tuned<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map_or(default, |(_, v)| v.as_str())
    }
}

impl Brokers {
    /// `message` (a librdkafka error, which may quote a setting's value) with the values
    /// of secret settings (passwords, keys, secrets) blanked out.
    fn scrub(&self, message: String) -> String {
        self.options
            .iter()
            .filter(|(k, v)| {
                !v.is_empty()
                    && ["password", "secret", "key"]
                        .iter()
                        .any(|s| k.to_ascii_lowercase().contains(s))
            })
            .fold(message, |m, (_, v)| m.replace(v.as_str(), "***"))
    }
}

impl std::fmt::Display for Brokers {
    /// The servers only: options may hold a SASL password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.servers)
    }
}

#[derive(Clone)]
pub struct KafkaBus {
    brokers: Brokers,
    /// `<namespace>.`, prepended to every topic and group name on the broker.
    prefix: String,
    shared: Arc<Shared>,
    /// Where the members of a group agree who reads which partition (see `ownership`);
    /// without it a subscription reads every partition, as a tool reading alone does.
    coordination: Option<Arc<dyn Store>>,
    /// Partitions and replication of the topics this bus creates.
    layout: TopicLayout,
}

struct Shared {
    producer: RwLock<Arc<ProducerSlot>>,
    /// Wakes the watchdog (see [`watchdog`]).
    down: Arc<Notify>,
    /// Topics created through this bus, created again after the broker lost them.
    topics: Mutex<Vec<String>>,
    /// Set when the producer was replaced: create the topics before the next publish.
    needs_topics: AtomicBool,
    /// One restorer at a time; the publishes behind it wait their turn in order.
    restoring: tokio::sync::Mutex<()>,
    /// Ticks each time the broker turned out to have lost the topics.
    losses: watch::Sender<u64>,
}

/// A producer and what its context saw.
struct ProducerSlot {
    producer: FutureProducer<Watch>,
    /// The client has cached metadata (it talked to a broker), so it must not meet a
    /// restarted broker (see the module docs).
    warm: Arc<AtomicBool>,
}

/// Reports "all brokers down" to the watchdog.
struct Watch {
    down: Arc<Notify>,
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.down.notify_one();
        }
        tracing::debug!("librdkafka: {error}: {reason}");
    }
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers.servers)
            .finish()
    }
}

fn kafka(e: impl std::fmt::Display) -> BusError {
    BusError::Kafka(e.to_string())
}

/// The producer's settings: the operator's, then Starling's (which win but for tuning).
fn producer_config(brokers: &Brokers) -> ClientConfig {
    let mut config = brokers.config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", brokers.tuned("linger.ms", "1"))
        // The outbox keeps what could not be published, so waiting long helps nobody.
        .set("message.timeout.ms", "5000")
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    config
}

fn new_producer(brokers: &Brokers, down: Arc<Notify>) -> Result<ProducerSlot, BusError> {
    let producer = producer_config(brokers)
        .create_with_context(Watch { down })
        .map_err(|e| BusError::Kafka(brokers.scrub(e.to_string())))?;
    Ok(ProducerSlot {
        producer,
        warm: Arc::new(AtomicBool::new(false)),
    })
}

impl KafkaBus {
    /// `brokers` like `127.0.0.1:9092` (comma-separated); topics and groups live under
    /// `namespace`. Checks the cluster answers.
    pub async fn connect(brokers: &str, namespace: &str) -> Result<Self, BusError> {
        Self::connect_with(brokers, namespace, Vec::new()).await
    }

    /// [`KafkaBus::connect`] with librdkafka settings (`security.protocol`, `ssl.*`,
    /// `sasl.*`, ...) for every client it makes. A key in [`RESERVED_OPTIONS`] is refused;
    /// a key librdkafka does not know fails here, naming it.
    pub async fn connect_with(
        brokers: &str,
        namespace: &str,
        options: Vec<(String, String)>,
    ) -> Result<Self, BusError> {
        if let Some((key, _)) = options
            .iter()
            .find(|(k, _)| RESERVED_OPTIONS.contains(&k.as_str()))
        {
            return Err(BusError::Kafka(format!(
                "kafka option {key} is set by Starling (its delivery guarantees depend on it) and cannot be changed"
            )));
        }
        let brokers = Brokers {
            servers: brokers.to_string(),
            options: Arc::new(options),
        };
        let down = Arc::new(Notify::new());
        let first = new_producer(&brokers, down.clone())?;
        let probe = first.producer.clone();
        tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|_| ())
        })
        .await
        .map_err(kafka)?
        .map_err(|e| BusError::Kafka(format!("cannot reach kafka at {brokers}: {e}")))?;
        first.warm.store(true, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            producer: RwLock::new(Arc::new(first)),
            down: down.clone(),
            topics: Mutex::new(Vec::new()),
            needs_topics: AtomicBool::new(false),
            restoring: tokio::sync::Mutex::new(()),
            losses: watch::channel(0).0,
        });
        tokio::spawn(watchdog(Arc::downgrade(&shared), brokers.clone(), down));
        Ok(Self {
            brokers,
            prefix: format!("{namespace}."),
            shared,
            coordination: None,
            layout: TopicLayout::default(),
        })
    }

    /// Lays out the topics this bus creates so (see [`TopicLayout`]); checked here.
    pub fn with_layout(mut self, layout: TopicLayout) -> Result<Self, BusError> {
        layout.check().map_err(BusError::Kafka)?;
        self.layout = layout;
        Ok(self)
    }

    /// Shares the partitions of each group among its members through leases in `store`
    /// (see `ownership`). The store's namespace should be the bus's.
    pub fn coordinated_by(mut self, store: Arc<dyn Store>) -> Self {
        self.coordination = Some(store);
        self
    }

    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Creates the topics that are missing; how many were.
    async fn create_missing(&self, topics: &[String]) -> Result<usize, BusError> {
        let admin: AdminClient<DefaultClientContext> = self
            .brokers
            .config()
            .create()
            .map_err(|e| BusError::Kafka(self.brokers.scrub(e.to_string())))?;
        let names: Vec<String> = topics.iter().map(|t| self.name(t)).collect();
        let layout = self.layout;
        let min_insync = layout.min_insync_replicas.map(|m| m.to_string());
        let new: Vec<NewTopic> = names
            .iter()
            .map(|t| {
                let topic = NewTopic::new(
                    t,
                    layout.partitions,
                    TopicReplication::Fixed(layout.replication_factor),
                );
                match &min_insync {
                    Some(m) => topic.set("min.insync.replicas", m),
                    None => topic,
                }
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(5)))
            .request_timeout(Some(Duration::from_secs(5)));
        let mut created = 0;
        let results = admin.create_topics(new.iter(), &opts).await;
        // Dropping an admin client blocks on its threads.
        tokio::task::spawn_blocking(move || drop(admin));
        for result in results.map_err(kafka)? {
            match result {
                Ok(_) => created += 1,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Kafka(format!("creating {topic}: {code}")))
                }
            }
        }
        Ok(created)
    }

    /// Adds `topics` to those created again after the broker lost them.
    fn remember(&self, topics: &[String]) {
        let mut known = self.shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        for t in topics {
            if !known.contains(t) {
                known.push(t.clone());
            }
        }
    }

    /// After the producer was replaced: creates the topics again before anything is
    /// published (else the broker would auto-create them with its own partition count),
    /// and reports a loss if they were gone.
    async fn restore_topics(&self) -> Result<(), BusError> {
        if !self.shared.needs_topics.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _turn = self.shared.restoring.lock().await;
        if !self.shared.needs_topics.load(Ordering::Relaxed) {
            return Ok(());
        }
        let topics = self
            .shared
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let created = self.create_missing(&topics).await?;
        self.shared.needs_topics.store(false, Ordering::Relaxed);
        if created > 0 {
            tracing::warn!(
                created,
                "the broker had lost its topics; created them again"
            );
            self.shared.losses.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}

/// Replaces the producer as soon as it reports every broker down (if it had talked to one,
/// see the module docs) or has failed fatally (an idempotent producer can, and then never
/// publishes again). Ends when the bus is dropped.
async fn watchdog(shared: Weak<Shared>, brokers: Brokers, down: Arc<Notify>) {
    loop {
        down.notified().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (warm, fatal) = {
            let slot = shared.producer.read().unwrap_or_else(|e| e.into_inner());
            (
                slot.warm.load(Ordering::Relaxed),
                slot.producer.client().fatal_error(),
            )
        };
        if !warm && fatal.is_none() {
            continue;
        }
        match new_producer(&brokers, down.clone()) {
            Ok(fresh) => {
                // Before the swap, so no publish reaches the broker (which would create a
                // lost topic with its own defaults) before the topics are restored.
                shared.needs_topics.store(true, Ordering::Relaxed);
                let old = std::mem::replace(
                    &mut *shared.producer.write().unwrap_or_else(|e| e.into_inner()),
                    Arc::new(fresh),
                );
                match fatal {
                    Some((code, reason)) => {
                        tracing::warn!(%brokers, ?code, %reason, "the kafka producer failed fatally; replaced it")
                    }
                    None => {
                        tracing::warn!(%brokers, "every broker connection is down; replaced the kafka producer")
                    }
                }
                // Dropping a producer flushes and joins its threads: not on a runtime thread.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "cannot build a new kafka producer"),
        }
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn create_topics(&self, topics: &[String]) -> Result<(), BusError> {
        self.remember(topics);
        self.create_missing(topics).await.map(|_| ())
    }

    async fn publish(&self, m: Message) -> Result<(), BusError> {
        self.restore_topics().await?;
        let occurred = m.occurred_at_ms.to_string();
        let attempt = m.attempt.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: OCCURRED_AT,
                value: Some(&occurred),
            })
            .insert(Header {
                key: ATTEMPT,
                value: Some(&attempt),
            });
        if let Some(error) = &m.error {
            headers = headers.insert(Header {
                key: ERROR,
                value: Some(error),
            });
        }
        if let Some(tp) = &m.traceparent {
            headers = headers.insert(Header {
                key: TRACEPARENT,
                value: Some(tp),
            });
        }
        let topic = self.name(&m.topic);
        let record = FutureRecord::to(&topic)
            .key(&m.key)
            .payload(&m.payload)
            .headers(headers);
        let producer = self
            .shared
            .producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sent = producer
            .producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| BusError::Kafka(format!("publishing to {}: {e}", m.topic)));
        match &sent {
            Ok(()) => producer.warm.store(true, Ordering::Relaxed),
            // Let the watchdog look at it (it replaces a fatally failed producer).
            Err(_) if producer.producer.client().fatal_error().is_some() => {
                self.shared.down.notify_one()
            }
            Err(_) => {}
        }
        sent
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        // A subscription to a topic the broker does not have (it lost it in a restart and
        // nothing has published since) would wait forever on Tansu even after the topic
        // comes back, so the topics exist first. A broker that does not answer is an
        // outage, for the supervisor to wait out, not a broken consumer.
        let created = self.create_missing(topics).await.map_err(|e| {
            tracing::debug!(error = %e, "cannot make sure the topics exist before subscribing");
            BusError::BrokerLost
        })?;
        if created > 0 {
            self.remember(topics);
            tracing::warn!(
                created,
                "the broker had lost topics this consumer reads; created them again"
            );
            // The rest of the catalogue is gone too: restore it before the next publish.
            self.shared.needs_topics.store(true, Ordering::Relaxed);
            self.shared.losses.send_modify(|n| *n += 1);
        }
        let consumer: StreamConsumer<LagContext> = self
            .brokers
            .config()
            // Offsets are committed under the group id; the consumer never joins the group
            // (partitions are assigned through `ownership`, see its docs for why).
            .set("group.id", self.name(group))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // librdkafka long-polls the broker for up to 500 ms by default; the pipeline's
            // end-to-end delay is dominated by it unless the broker answers early, which
            // Tansu does not (it holds every fetch the whole wait). `--kafka-option
            // fetch.wait.max.ms=N` changes it; on Tansu a shorter wait cost the broker more
            // CPU than it saved in delay (ARCHITECTURE.md, "Measured").
            .set(
                "fetch.wait.max.ms",
                self.brokers.tuned("fetch.wait.max.ms", "20"),
            )
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
            // For the offset-lag metric (see `LagContext`).
            .set("statistics.interval.ms", "5000")
            .create_with_context(LagContext {
                lag: AtomicI64::new(-1),
            })
            .map_err(|e| BusError::Kafka(self.brokers.scrub(e.to_string())))?;
        let consumer = Arc::new(consumer);
        let me = format!("{}-{}", std::process::id(), &super::event_id()[..8]);
        let mut readers = Vec::new();
        for topic in topics {
            let name = self.name(topic);
            let count = partition_count(&consumer, &name, self.layout.partitions).await;
            let reader = Arc::new(TopicReader {
                consumer: consumer.clone(),
                topic: name,
            });
            let ownership = match &self.coordination {
                Some(store) => {
                    let weak: Weak<TopicReader> = Arc::downgrade(&reader);
                    Some(Ownership::start(
                        store.clone(),
                        group,
                        topic,
                        count,
                        me.clone(),
                        weak,
                    ))
                }
                None => {
                    let all: Vec<usize> = (0..count).collect();
                    reader.start(&all).map_err(BusError::Kafka)?;
                    None
                }
            };
            readers.push(Readers {
                topic: topic.clone(),
                _reader: reader,
                ownership,
                committed: HashMap::new(),
            });
        }
        Ok(Box::new(KafkaSubscription {
            consumer,
            prefix: self.prefix.clone(),
            readers,
        }))
    }

    fn losses(&self) -> Option<watch::Receiver<u64>> {
        Some(self.shared.losses.subscribe())
    }

    /// A metadata request on the current producer's connection, at most [`PING_TIMEOUT`].
    async fn ping(&self) -> Result<(), BusError> {
        let producer = self
            .shared
            .producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .producer
            .clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, PING_TIMEOUT)
                .map(|_| ())
        })
        .await
        .map_err(kafka)?
        .map_err(kafka)
    }
}

/// How long [`KafkaBus::ping`] waits for the broker's metadata.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps librdkafka's own view of the consumer lag (end offset − committed offset, summed
/// over the assigned partitions), from the statistics it emits every few seconds.
struct LagContext {
    /// -1 until the broker has reported end offsets.
    lag: AtomicI64,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let mut total = 0;
        let mut known = false;
        for topic in statistics.topics.values() {
            for (id, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal one; -1 lag means "not known".
                if *id >= 0 && p.consumer_lag >= 0 {
                    total += p.consumer_lag;
                    known = true;
                }
            }
        }
        self.lag
            .store(if known { total } else { -1 }, Ordering::Relaxed);
    }
}

impl ConsumerContext for LagContext {}

/// How many partitions `topic` has, from the broker (`configured` if it does not say).
async fn partition_count(
    consumer: &Arc<StreamConsumer<LagContext>>,
    topic: &str,
    configured: i32,
) -> usize {
    let (consumer, name) = (consumer.clone(), topic.to_string());
    let found = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&name), Duration::from_secs(5))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
    })
    .await
    .ok()
    .flatten();
    match found {
        Some(n) if n > 0 => n,
        _ => configured.max(1) as usize,
    }
}

/// One topic of a consumer client, as the ownership task drives it.
struct TopicReader {
    consumer: Arc<StreamConsumer<LagContext>>,
    topic: String,
}

impl Reader for TopicReader {
    fn start(&self, partitions: &[usize]) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(&self.topic, p as i32, Offset::Stored)
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| e.to_string())
    }

    fn stop(&self, partition: usize) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition as i32);
        self.consumer
            .incremental_unassign(&tpl)
            .map_err(|e| e.to_string())
    }

    fn commit_now(&self, partition: usize, offset: i64) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition as i32, Offset::Offset(offset))
            .map_err(|e| e.to_string())?;
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| e.to_string())
    }
}

/// A subscription's reading of one topic.
struct Readers {
    /// The catalogue's name (without the namespace).
    topic: String,
    /// Kept alive here: the ownership task holds it only weakly.
    _reader: Arc<TopicReader>,
    /// `None`: every partition, no leases.
    ownership: Option<Ownership>,
    /// Partition -> the last offset committed, committed again synchronously on hand-over.
    committed: HashMap<usize, i64>,
}

impl Readers {
    fn reads(&self, partition: i32) -> bool {
        self.ownership
            .as_ref()
            .is_none_or(|o| o.reads(partition as usize))
    }
}

struct KafkaSubscription {
    consumer: Arc<StreamConsumer<LagContext>>,
    prefix: String,
    readers: Vec<Readers>,
}

impl KafkaSubscription {
    fn readers(&mut self, topic: &str) -> Option<&mut Readers> {
        self.readers.iter_mut().find(|r| r.topic == topic)
    }
}

fn header<'a>(
    headers: Option<&'a rdkafka::message::BorrowedHeaders>,
    name: &str,
) -> Option<&'a str> {
    headers?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let m = loop {
            let m = self.consumer.recv().await.map_err(|e| {
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
                    BusError::BrokerLost
                } else {
                    kafka(e)
                }
            })?;
            // A message fetched before its partition was given up is the next reader's.
            let topic = m.topic().strip_prefix(&self.prefix).unwrap_or(m.topic());
            if self
                .readers
                .iter()
                .any(|r| r.topic == topic && r.reads(m.partition()))
            {
                break m;
            }
        };
        let headers = m.headers();
        Ok(Delivery {
            message: Message {
                // Handlers see the catalogue's names, without the namespace.
                topic: m
                    .topic()
                    .strip_prefix(&self.prefix)
                    .unwrap_or(m.topic())
                    .to_string(),
                key: m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                // A message without the header (a foreign producer) counts from its broker
                // timestamp, else from now: lag is then understated, never invented.
                occurred_at_ms: header(headers, OCCURRED_AT)
                    .and_then(|v| v.parse().ok())
                    .or_else(|| m.timestamp().to_millis())
                    .unwrap_or_else(super::now_ms),
                attempt: header(headers, ATTEMPT)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                error: header(headers, ERROR).map(str::to_string),
                traceparent: header(headers, TRACEPARENT).map(str::to_string),
            },
            partition: m.partition(),
            offset: m.offset(),
        })
    }

    async fn commit_at(&mut self, d: &Delivery, next: i64) -> Result<(), BusError> {
        if let Some(r) = self.readers(&d.message.topic) {
            if r.ownership
                .as_ref()
                .is_some_and(|o| !o.holds(d.partition as usize))
            {
                // Another member reads it now: its commits count, not this one's.
                return Ok(());
            }
            r.committed.insert(d.partition as usize, next);
        }
        let mut tpl = TopicPartitionList::new();
        let topic = format!("{}{}", self.prefix, d.message.topic);
        tpl.add_partition_offset(&topic, d.partition, Offset::Offset(next))
            .map_err(kafka)?;
        self.consumer.commit(&tpl, CommitMode::Async).map_err(kafka)
    }

    fn offset_lag(&self) -> Option<i64> {
        let lag = self.consumer.context().lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }

    fn draining(&self) -> Vec<(String, i32)> {
        self.readers
            .iter()
            .filter_map(|r| Some((r, r.ownership.as_ref()?)))
            .flat_map(|(r, o)| {
                o.draining()
                    .into_iter()
                    .map(|p| (r.topic.clone(), p as i32))
            })
            .collect()
    }

    fn drained(&mut self, topic: &str, partition: i32) {
        if let Some(r) = self.readers(topic) {
            let at = r.committed.remove(&(partition as usize));
            if let Some(o) = &r.ownership {
                o.drained(partition as usize, at);
            }
        }
    }

    async fn close(&mut self) {
        for r in &mut self.readers {
            let offsets: Vec<(usize, i64)> = r.committed.drain().collect();
            if let Some(o) = &mut r.ownership {
                o.close(offsets).await;
            }
        }
    }
}

#[cfg(test)]
mod option_tests {
    use super::*;

    fn brokers(options: &[(&str, &str)]) -> Brokers {
        Brokers {
            servers: "127.0.0.1:1".into(),
            options: Arc::new(
                options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn the_operator_tunes_waits_but_not_guarantees() {
        let b = brokers(&[("fetch.wait.max.ms", "50"), ("fetch.wait.max.ms", "5")]);
        assert_eq!(
            b.tuned("fetch.wait.max.ms", "20"),
            "5",
            "the last one given wins"
        );
        assert_eq!(
            b.tuned("linger.ms", "1"),
            "1",
            "Starling's default otherwise"
        );
        // acks is set after the operator's options, so theirs cannot weaken it.
        let b = brokers(&[("acks", "0"), ("linger.ms", "7")]);
        let config = producer_config(&b);
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("7"));
    }

    #[tokio::test]
    async fn tls_and_sasl_settings_reach_librdkafka() {
        // Built with OpenSSL: an SSL or SASL_SSL client can be made (it connects later).
        for protocol in ["SSL", "SASL_SSL"] {
            let b = brokers(&[
                ("security.protocol", protocol),
                ("sasl.mechanism", "SCRAM-SHA-256"),
                ("sasl.username", "u"),
                ("sasl.password", "pw-1"),
            ]);
            assert!(
                new_producer(&b, Arc::new(Notify::new())).is_ok(),
                "{protocol} is available"
            );
        }
    }

    #[tokio::test]
    async fn errors_name_the_setting_but_not_a_secret() {
        let b = brokers(&[
            ("ssl.key.password", "hunter2-secret"),
            ("no.such.setting", "1"),
        ]);
        let e = new_producer(&b, Arc::new(Notify::new()))
            .err()
            .expect("an unknown setting is refused")
            .to_string();
        assert!(e.contains("no.such.setting"), "{e}");
        assert!(!e.contains("hunter2-secret"), "{e}");
        assert_eq!(b.scrub("value hunter2-secret".into()), "value ***");
    }
}
