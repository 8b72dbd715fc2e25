//! The consumer loop every service uses, so at-least-once delivery, retries, dead letters
//! and lag metrics are written once.
//!
//! For each message: record the lag (now - `occurred_at`), run the handler (a few quick
//! in-place attempts for transient errors), then commit. A message that still fails goes
//! to the group's retry topic (which this loop also consumes, after a delay), and after
//! [`ConsumerConfig::retry_rounds`] rounds to the dead-letter topic; a message the handler
//! calls poison (it cannot be decoded) goes to the dead-letter topic at once. Either way the
//! offset is committed only once the message is handled or safely forwarded, and the
//! partition moves on: one poison message never stalls it. Handlers must be idempotent,
//! since a crash between handling and committing delivers a message again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::topics::{dead_letter_topic, retry_topic};
use super::{now_ms, BusError, EventBus, Message};

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
    /// Attempts in place before a message goes to the retry topic.
    pub attempts: u32,
    /// Rounds through the retry topic before the dead-letter topic.
    pub retry_rounds: u32,
    /// How long a message waits on the retry topic before it is tried again.
    pub retry_delay: Duration,
}

impl ConsumerConfig {
    pub fn new(topic: &str, group: &str) -> Self {
        Self {
            topic: topic.to_string(),
            group: group.to_string(),
            attempts: 3,
            retry_rounds: 2,
            retry_delay: Duration::from_secs(1),
        }
    }
}

enum Outcome {
    Handled,
    Retried,
    DeadLettered,
}

/// Consumes until `shutdown` turns true, then finishes the message in hand and returns.
pub async fn run(
    bus: Arc<dyn EventBus>,
    config: ConsumerConfig,
    handler: Arc<dyn Handler>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let retry = retry_topic(&config.topic, &config.group);
    let dead = dead_letter_topic(&config.topic, &config.group);
    let mut sub = bus
        .subscribe(&config.group, &[config.topic.clone(), retry.clone()])
        .await?;
    info!(topic = %config.topic, group = %config.group, "consuming");
    let lag = metrics::histogram!("starling_consumer_lag_seconds",
        "topic" => config.topic.clone(), "group" => config.group.clone());
    loop {
        let delivery = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            d = sub.next() => match d {
                Ok(d) => d,
                Err(e) => {
                    warn!(topic = %config.topic, group = %config.group, error = %e, "receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let m = &delivery.message;
        lag.record((now_ms() - m.occurred_at_ms).max(0) as f64 / 1000.0);
        if m.topic == retry {
            // Give the cause (a dependency restarting, say) time to pass.
            let due =
                m.occurred_at_ms + (config.retry_delay.as_millis() as i64) * i64::from(m.attempt);
            let wait = (due - now_ms()).clamp(0, config.retry_delay.as_millis() as i64);
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let outcome = match handle(&*handler, m, config.attempts).await {
            Ok(()) => Outcome::Handled,
            Err(HandleError::Transient(reason)) if m.attempt < config.retry_rounds => {
                warn!(topic = %m.topic, group = %config.group, attempt = m.attempt, %reason, "handler failed; to the retry topic");
                let mut again = m.clone();
                again.topic = retry.clone();
                again.attempt += 1;
                forward(&*bus, again, &mut shutdown).await;
                Outcome::Retried
            }
            Err(e) => {
                error!(topic = %m.topic, group = %config.group, attempt = m.attempt, error = %e, "to the dead-letter topic");
                let mut dead_letter = m.clone();
                dead_letter.topic = dead.clone();
                forward(&*bus, dead_letter, &mut shutdown).await;
                Outcome::DeadLettered
            }
        };
        let label = match outcome {
            Outcome::Handled => "handled",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        };
        metrics::counter!("starling_consumer_messages_total",
            "topic" => config.topic.clone(), "group" => config.group.clone(), "outcome" => label)
        .increment(1);
        if let Err(e) = sub.commit(&delivery).await {
            // Not fatal: the message will be delivered again, and handlers are idempotent.
            warn!(topic = %m.topic, group = %config.group, error = %e, "commit failed");
        }
    }
    info!(topic = %config.topic, group = %config.group, "consumer stopped");
    Ok(())
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard wait_for returns must not live across an await (it is not Send).
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}

async fn handle(handler: &dyn Handler, m: &Message, attempts: u32) -> Result<(), HandleError> {
    let mut delay = Duration::from_millis(50);
    let mut n = 1;
    loop {
        match handler.handle(m).await {
            Err(HandleError::Transient(reason)) if n < attempts => {
                warn!(topic = %m.topic, attempt = n, %reason, "handler failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 4;
                n += 1;
            }
            other => return other,
        }
    }
}

/// Publishes until it succeeds: committing past a message that was neither handled nor
/// forwarded would lose it. Gives up only at shutdown (the message is then not committed
/// and comes back after the restart).
async fn forward(bus: &dyn EventBus, m: Message, shutdown: &mut watch::Receiver<bool>) {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match bus.publish(m.clone()).await {
            Ok(()) => return,
            Err(e) => {
                warn!(topic = %m.topic, error = %e, waited = ?started.elapsed(), "cannot forward; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(shutdown) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
