//! The in-process bus of the embedded mode: one log per topic, and per consumer group a
//! position that all of the group's subscribers share, so each message goes to one member
//! of each group. Nothing survives the process, and a message is taken off the group's
//! position when delivered (there is no crash to recover from in one process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{BusError, Delivery, EventBus, Message, Subscription};

#[derive(Debug, Default)]
struct State {
    logs: HashMap<String, Vec<Message>>,
    /// group -> topic -> next index to deliver
    positions: HashMap<String, HashMap<String, usize>>,
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

    /// Everything published to `topic` so far (for tests and inspection).
    pub fn messages(&self, topic: &str) -> Vec<Message> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.logs.get(topic).cloned().unwrap_or_default()
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
                .push(message);
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
            let positions = state.positions.entry(group.to_string()).or_default();
            for t in topics {
                positions.entry(t.clone()).or_insert(0);
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
        let positions = positions.get_mut(&self.group)?;
        for i in 0..self.topics.len() {
            let topic = &self.topics[(self.next_topic + i) % self.topics.len()];
            let pos = positions.entry(topic.clone()).or_insert(0);
            if let Some(m) = logs.get(topic).and_then(|log| log.get(*pos)) {
                let delivery = Delivery {
                    message: m.clone(),
                    partition: 0,
                    offset: *pos as i64,
                };
                *pos += 1;
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
    #[tokio::test]
    async fn memory_bus_passes_the_contract() {
        super::super::contract::run_all(&super::MemoryBus::new(), "mem").await;
    }
}
