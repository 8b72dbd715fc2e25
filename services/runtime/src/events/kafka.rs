//! The production bus on Kafka through rdkafka (bundled librdkafka).
//!
//! Producer: idempotent, `acks=all`, small linger (a request that waits for its publish
//! pays the linger). Consumers: manual commits only (`enable.auto.commit=false`), from the
//! earliest offset for a new group, and a 6 s session timeout so group joins and rebalances
//! after a crash are quick. Settings chosen with Tansu, the Kafka-protocol broker used in
//! the tests, in mind: see `../shared/design.md`.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::topics::PARTITIONS;
use super::{BusError, Delivery, EventBus, Message, Subscription};

const OCCURRED_AT: &str = "occurred-at-ms";
const ATTEMPT: &str = "attempt";

#[derive(Clone)]
pub struct KafkaBus {
    brokers: String,
    /// `<namespace>.`, prepended to every topic and group name on the broker.
    prefix: String,
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .finish()
    }
}

fn kafka(e: impl std::fmt::Display) -> BusError {
    BusError::Kafka(e.to_string())
}

impl KafkaBus {
    /// `brokers` like `127.0.0.1:9092` (comma-separated); topics and groups live under
    /// `namespace`. Checks the cluster answers.
    pub async fn connect(brokers: &str, namespace: &str) -> Result<Self, BusError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "15000")
            .create()
            .map_err(kafka)?;
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|_| ())
        })
        .await
        .map_err(kafka)?
        .map_err(|e| BusError::Kafka(format!("cannot reach kafka at {brokers}: {e}")))?;
        Ok(Self {
            brokers: brokers.to_string(),
            prefix: format!("{namespace}."),
            producer,
        })
    }

    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn create_topics(&self, topics: &[String]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .map_err(kafka)?;
        let names: Vec<String> = topics.iter().map(|t| self.name(t)).collect();
        let new: Vec<NewTopic> = names
            .iter()
            .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(kafka)?
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Kafka(format!("creating {topic}: {code}")))
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, m: Message) -> Result<(), BusError> {
        let occurred = m.occurred_at_ms.to_string();
        let attempt = m.attempt.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: OCCURRED_AT,
                value: Some(&occurred),
            })
            .insert(Header {
                key: ATTEMPT,
                value: Some(&attempt),
            });
        let topic = self.name(&m.topic);
        let record = FutureRecord::to(&topic)
            .key(&m.key)
            .payload(&m.payload)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| BusError::Kafka(format!("publishing to {}: {e}", m.topic)))
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", self.name(group))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("enable.partition.eof", "false")
            // librdkafka long-polls the broker for up to 500 ms by default; the pipeline's
            // end-to-end delay is dominated by it unless the broker answers early.
            .set("fetch.wait.max.ms", "20")
            .create()
            .map_err(kafka)?;
        let names: Vec<String> = topics.iter().map(|t| self.name(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(kafka)?;
        Ok(Box::new(KafkaSubscription {
            consumer,
            prefix: self.prefix.clone(),
        }))
    }
}

struct KafkaSubscription {
    consumer: StreamConsumer,
    prefix: String,
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
        let m = self.consumer.recv().await.map_err(kafka)?;
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
            },
            partition: m.partition(),
            offset: m.offset(),
        })
    }

    async fn commit(&mut self, d: &Delivery) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        let topic = format!("{}{}", self.prefix, d.message.topic);
        tpl.add_partition_offset(&topic, d.partition, Offset::Offset(d.offset + 1))
            .map_err(kafka)?;
        self.consumer.commit(&tpl, CommitMode::Async).map_err(kafka)
    }
}
