//! The in-process bus of the embedded mode: one log per topic, and per consumer group a
//! position that all of the group's subscribers share, so each message goes to one member
//! of each group. Nothing survives the process, and a message is taken off the group's
//! position when delivered (there is no crash to recover from in one process).
//!
//! A log keeps only what some group reading the topic has not taken yet, so memory follows
//! the backlog, not the traffic: once every group that reads a topic is past a message, it
//! is dropped. A topic no group reads keeps everything (a dead-letter topic, until
//! `starling dlq` reads it), and a group that first subscribes later starts where the
//! slowest existing group is.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{BusError, Delivery, EventBus, Message, Subscription};

#[derive(Debug, Default)]
struct State {
    logs: HashMap<String, Log>,
    /// group -> topic -> offset of the next message to deliver
    positions: HashMap<String, HashMap<String, usize>>,
}

/// The messages of one topic still to be taken by some group.
#[derive(Debug, Default)]
struct Log {
    /// Offset of `entries[0]`.
    first: usize,
    entries: VecDeque<Message>,
}

impl Log {
    fn get(&self, offset: usize) -> Option<&Message> {
        self.entries.get(offset.checked_sub(self.first)?)
    }

    /// Drops what every group reading the topic has taken.
    fn trim(&mut self, topic: &str, positions: &HashMap<String, HashMap<String, usize>>) {
        let slowest = positions.values().filter_map(|p| p.get(topic)).min();
        if let Some(&slowest) = slowest {
            while self.first < slowest && self.entries.pop_front().is_some() {
                self.first += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages of `topic` still kept: everything published, if no group reads it;
    /// else what the slowest group has not taken yet (for tests and inspection).
    pub fn messages(&self, topic: &str) -> Vec<Message> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .logs
            .get(topic)
            .map(|log| log.entries.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn create_topics(&self, topics: &[String]) -> Result<(), BusError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for t in topics {
            state.logs.entry(t.clone()).or_default();
        }
        Ok(())
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state
                .logs
                .entry(message.topic.clone())
                .or_default()
                .entries
                .push_back(message);
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let State { logs, positions } = &mut *state;
            let positions = positions.entry(group.to_string()).or_default();
            for t in topics {
                // A new group starts with the oldest message still kept.
                let first = logs.get(t).map_or(0, |log| log.first);
                positions.entry(t.clone()).or_insert(first);
            }
        }
        Ok(Box::new(MemorySubscription {
            bus: self.clone(),
            group: group.to_string(),
            topics: topics.to_vec(),
            next_topic: 0,
        }))
    }
}

struct MemorySubscription {
    bus: MemoryBus,
    group: String,
    topics: Vec<String>,
    /// Rotates which topic is looked at first, so a busy topic cannot starve another.
    next_topic: usize,
}

impl MemorySubscription {
    fn take(&mut self) -> Option<Delivery> {
        let mut state = self.bus.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { logs, positions } = &mut *state;
        for i in 0..self.topics.len() {
            let topic = &self.topics[(self.next_topic + i) % self.topics.len()];
            let Some(log) = logs.get_mut(topic) else {
                continue;
            };
            let pos = positions
                .get_mut(&self.group)?
                .entry(topic.clone())
                .or_insert(log.first);
            if let Some(m) = log.get(*pos) {
                let delivery = Delivery {
                    message: m.clone(),
                    partition: 0,
                    offset: *pos as i64,
                };
                *pos += 1;
                log.trim(topic, positions);
                self.next_topic = (self.next_topic + i + 1) % self.topics.len();
                return Some(delivery);
            }
        }
        None
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Register interest before looking, so a publish in between is not missed.
            let notify = self.bus.notify.clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(d) = self.take() {
                return Ok(d);
            }
            notified.await;
        }
    }

    async fn commit_at(&mut self, _delivery: &Delivery, _next: i64) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_bus_passes_the_contract() {
        super::super::contract::run_all(&MemoryBus::new(), "mem").await;
    }

    /// Memory follows the backlog: what every group has taken is dropped; what a slower
    /// group has not taken stays until it has.
    #[tokio::test]
    async fn consumed_messages_are_dropped() {
        let bus = MemoryBus::new();
        let mut fast = bus.subscribe("fast", &["t".to_string()]).await.unwrap();
        let mut slow = bus.subscribe("slow", &["t".to_string()]).await.unwrap();
        for i in 0..1000u32 {
            bus.publish(Message::new("t", "k", i.to_be_bytes().to_vec(), 0))
                .await
                .unwrap();
        }
        for _ in 0..1000 {
            fast.next().await.unwrap();
        }
        assert_eq!(
            bus.messages("t").len(),
            1000,
            "the slow group has taken none"
        );
        for i in 0..600u32 {
            let d = slow.next().await.unwrap();
            assert_eq!(d.message.payload, i.to_be_bytes().to_vec());
            assert_eq!(d.offset, i64::from(i));
        }
        assert_eq!(bus.messages("t").len(), 400);
        for _ in 0..400 {
            slow.next().await.unwrap();
        }
        assert!(bus.messages("t").is_empty());
        // Later messages still flow, with offsets going on.
        bus.publish(Message::new("t", "k", b"late".to_vec(), 0))
            .await
            .unwrap();
        assert_eq!(fast.next().await.unwrap().offset, 1000);
        assert_eq!(slow.next().await.unwrap().message.payload, b"late");
        assert!(bus.messages("t").is_empty());
    }
}
