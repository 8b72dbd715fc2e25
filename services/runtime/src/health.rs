//! What an instance needs to do its job, and whether it has it: the store answers, the
//! broker takes what the outbox relay publishes, the Snowflake worker id is held, every
//! consumer makes progress. Each of these is a [`Component`] that the part of the code
//! that sees it reports on; [`Health`] folds them into SERVING or NOT_SERVING, which
//! `server` publishes through grpc.health.v1 and the registry (balancers skip an instance
//! that is not serving).
//!
//! A component may have a grace period: the broker can be away for a while without the
//! instance failing its callers, since writes wait in the outbox meanwhile.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    failing_since: Option<Instant>,
    reason: String,
}

/// One dependency's state, shared between whoever observes it and the health monitor.
#[derive(Debug, Clone)]
pub struct Component {
    name: &'static str,
    state: Arc<Mutex<State>>,
}

impl Component {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            state: Arc::default(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The dependency works (again).
    pub fn ok(&self) {
        let mut s = self.lock();
        if s.failing_since.take().is_some() {
            tracing::info!(component = self.name, "recovered");
        }
    }

    /// The dependency failed; the first failure of a run starts its clock.
    pub fn failing(&self, reason: &str) {
        let mut s = self.lock();
        if s.failing_since.is_none() {
            tracing::warn!(component = self.name, reason, "failing");
            s.failing_since = Some(Instant::now());
        }
        s.reason = reason.to_string();
    }

    /// Sets the state from a check's result.
    pub fn set(&self, result: Result<(), String>) {
        match result {
            Ok(()) => self.ok(),
            Err(reason) => self.failing(&reason),
        }
    }

    /// How long it has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        self.lock().failing_since.map(|t| t.elapsed())
    }

    pub fn reason(&self) -> String {
        self.lock().reason.clone()
    }
}

/// The components of one instance, each with the grace it gets before the instance stops
/// serving.
#[derive(Debug, Clone, Default)]
pub struct Health {
    parts: Arc<Mutex<Vec<(Component, Duration)>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a component that may fail for `grace` before the instance stops serving.
    pub fn add(&self, component: Component, grace: Duration) -> Component {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((component.clone(), grace));
        component
    }

    /// Ok when every component is fine or within its grace; else the reasons.
    pub fn verdict(&self) -> Result<(), String> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let failing: Vec<String> = parts
            .iter()
            .filter(|(c, grace)| c.failing_for().is_some_and(|d| d >= *grace))
            .map(|(c, _)| format!("{}: {}", c.name(), c.reason()))
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_delays_the_verdict() {
        let health = Health::new();
        let store = health.add(Component::new("store"), Duration::ZERO);
        let bus = health.add(Component::new("bus"), Duration::from_secs(3600));
        assert!(health.verdict().is_ok());
        bus.failing("broker down");
        assert!(health.verdict().is_ok(), "within its grace");
        store.failing("connection refused");
        let why = health.verdict().unwrap_err();
        assert!(why.contains("store: connection refused"), "{why}");
        assert!(!why.contains("bus"), "{why}");
        store.ok();
        assert!(health.verdict().is_ok());
        assert!(bus.failing_for().is_some());
    }
}
