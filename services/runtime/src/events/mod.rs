//! Asynchronous events: the [`EventBus`] trait with a Kafka implementation ([`KafkaBus`],
//! rdkafka) and an in-process one ([`MemoryBus`]) for the embedded mode, checked by one
//! [`contract`] suite; the topic catalogue ([`topics`]); and the consumer loop every service
//! uses ([`consumer`]): order per key, retry in place, dead-letter topic, lag metrics; and
//! events as types ([`Event`], [`EventHandler`]): encoded and decoded in one place.
//!
//! Payloads are protobuf messages from `starling.events.v1`; the bus carries bytes plus the
//! event's `occurred_at` (as a header, so lag is measured without decoding, and never from
//! broker watermarks), the W3C `traceparent` of the span that published it, and, on dead
//! letters, the attempt count and the error.

pub mod consumer;
#[cfg(any(test, feature = "contract"))]
pub mod contract;
mod kafka;
pub mod lag;
mod memory;
mod ownership;
pub mod topics;
mod typed;

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

pub use kafka::KafkaBus;
pub use memory::MemoryBus;
pub use typed::{Event, EventHandler, Typed};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("subscription closed")]
    Closed,
    /// Every broker connection is down, the broker does not answer, or it lost its log:
    /// the subscription should be replaced by a fresh one (see `kafka`'s module docs).
    #[error("kafka: every broker connection is down")]
    BrokerLost,
}

/// One event on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// Partition key: events with one key stay in order.
    pub key: String,
    pub payload: Vec<u8>,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
    /// Failed attempts behind it (0 when first published; set on dead letters).
    pub attempt: u32,
    /// Why the last attempt failed (dead letters only).
    pub error: Option<String>,
    /// The W3C trace context of the span that published it (a header on Kafka), so the
    /// consumer's span continues the producer's trace; `None` when tracing is off.
    pub traceparent: Option<String>,
}

impl Message {
    /// An event made now, inside the current span (whose trace it continues).
    pub fn new(topic: &str, key: &str, payload: Vec<u8>, occurred_at_ms: i64) -> Self {
        Self {
            topic: topic.to_string(),
            key: key.to_string(),
            payload,
            occurred_at_ms,
            attempt: 0,
            error: None,
            traceparent: starling_discovery::trace::traceparent(&tracing::Span::current()),
        }
    }
}

/// Publishes `message` now (not through an outbox: a consumer's follow-up event) as a
/// producer span of the current trace, whose context the message carries to its
/// consumers.
pub async fn publish_traced(bus: &dyn EventBus, mut message: Message) -> Result<(), BusError> {
    use tracing::Instrument as _;
    if !starling_discovery::trace::enabled() {
        return bus.publish(message).await;
    }
    let span = tracing::info_span!(
        "event.publish",
        otel.name = format!("publish {}", message.topic),
        otel.kind = "producer",
        messaging.destination.name = %message.topic,
    );
    message.traceparent = starling_discovery::trace::traceparent(&span);
    bus.publish(message).instrument(span).await
}

/// A message handed to a consumer, with what is needed to commit it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Message,
    pub partition: i32,
    pub offset: i64,
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Creates the topics that do not exist yet.
    async fn create_topics(&self, topics: &[String]) -> Result<(), BusError>;
    /// Publishes and waits until the broker has acknowledged it (all in-sync replicas).
    async fn publish(&self, message: Message) -> Result<(), BusError>;
    /// Joins `group` and consumes `topics` from the group's committed position (from the
    /// earliest message if the group is new).
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError>;
    /// Ticks whenever the broker is found to have lost its topics (and so perhaps events it
    /// had acknowledged); `None` for a bus that cannot lose them.
    fn losses(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Whether the broker answers now (for readiness checks of processes that do not
    /// publish themselves); an in-process bus always does.
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[async_trait]
pub trait Subscription: Send {
    async fn next(&mut self) -> Result<Delivery, BusError>;
    /// Records that everything before `next_offset` on `delivery`'s partition is
    /// processed: the group resumes there.
    async fn commit_at(&mut self, delivery: &Delivery, next_offset: i64) -> Result<(), BusError>;
    /// Records that `delivery` and what came before it on its partition are processed.
    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        self.commit_at(delivery, delivery.offset + 1).await
    }
    /// Messages on the assigned partitions after the committed offsets, where the broker
    /// reports its end offsets; `None` when it does not.
    fn offset_lag(&self) -> Option<i64> {
        None
    }
    /// Partitions (topic, partition) this subscription is handing to another member of its
    /// group: nothing more is delivered from them. Once the caller has finished and
    /// committed what it holds of one, it calls [`Subscription::drained`].
    fn draining(&self) -> Vec<(String, i32)> {
        Vec::new()
    }
    /// The caller holds nothing more of `partition`: it goes to the other member.
    fn drained(&mut self, _topic: &str, _partition: i32) {}
    /// Ends the subscription after the caller has finished what it holds: commits, and
    /// hands every partition to the other members at once.
    async fn close(&mut self) {}
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `google.protobuf.Timestamp` for `ms` since the epoch.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A fresh event id: unique without coordination.
pub fn event_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}
