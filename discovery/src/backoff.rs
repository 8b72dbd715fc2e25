//! Exponential back-off with full jitter, shared by every reconnect loop so that many
//! clients losing etcd at once do not come back in lock-step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The ceiling for the current attempt: `base * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random delay in `[ceiling/2, ceiling]`, then doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut prev_ceiling = Duration::ZERO;
        for _ in 0..10 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c && d >= c / 2, "{d:?} outside [{:?}, {c:?}]", c / 2);
            assert!(c >= prev_ceiling);
            prev_ceiling = c;
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
