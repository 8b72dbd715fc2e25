//! How fast one user may write (post, follow, unfollow, engage): a token bucket per user,
//! [`BURST`] writes at once and [`PER_SECOND`] a second after that. A person clicking is far
//! below it; a script with a stolen or its own token is held to it instead of adding 20,000
//! follows in 15 s. Over the limit: 429 with `Retry-After`. Kept in the gateway's memory,
//! so each replica limits on its own, like the sign-in limiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Writes a user may make at once.
pub const BURST: f64 = 30.0;
/// Writes a user may make per second, sustained.
pub const PER_SECOND: f64 = 1.0;
/// Buckets kept before full ones are swept out (a full bucket is the same as none).
const SWEEP_AT: usize = 10_000;

#[derive(Debug)]
pub struct WriteLimiter {
    burst: f64,
    per_second: f64,
    /// user -> (tokens, when last refilled)
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Default for WriteLimiter {
    fn default() -> Self {
        Self::new(BURST, PER_SECOND)
    }
}

impl WriteLimiter {
    pub fn new(burst: f64, per_second: f64) -> Self {
        Self {
            burst,
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one write for `user`, or `Err(when the next one is allowed)`.
    pub fn take(&self, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(user.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = WriteLimiter::new(3.0, 20.0);
        for _ in 0..3 {
            assert!(l.take("a").is_ok());
        }
        let wait = l.take("a").unwrap_err();
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        // Others are not held up by a's writes.
        assert!(l.take("b").is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.take("a").is_ok(), "refilled at the rate");
        assert!(l.take("a").is_err());
    }
}
