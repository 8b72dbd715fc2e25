//! Peak-EWMA latency estimate, as used by Finagle and linkerd for least-loaded balancing.
//!
//! A slower sample than the estimate replaces it at once (the "peak"), so an endpoint that
//! turns slow is avoided immediately; faster samples pull it down gradually with a decay
//! that depends on the time since the last sample, not on the sample count. Reading the
//! estimate also decays it towards zero: an endpoint that answered slowly once, and is
//! therefore no longer picked, must become worth a new try after a while instead of being
//! shunned for ever (it is never sampled again otherwise).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PeakEwma {
    estimate_ns: f64,
    last: Instant,
    decay_ns: f64,
}

impl PeakEwma {
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: initial.as_nanos() as f64,
            last: now,
            decay_ns: decay.as_nanos().max(1) as f64,
        }
    }

    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.last).as_nanos() as f64;
            let w = (-elapsed / self.decay_ns).exp();
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.last = now;
    }

    /// The estimate at `now`, decayed for the time since the last sample or read.
    pub fn estimate_ns(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos() as f64;
        if elapsed > 0.0 {
            self.estimate_ns *= (-elapsed / self.decay_ns).exp();
            self.last = now;
        }
        self.estimate_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_immediately_and_decays_gradually() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(1), t0);
        e.observe(Duration::from_millis(20), t0);
        assert_eq!(
            e.estimate_ns(t0),
            20_000_000.0,
            "a slow sample is taken at once"
        );
        e.observe(Duration::from_millis(1), t0 + Duration::from_millis(100));
        let after_one = e.estimate_ns(t0 + Duration::from_millis(100));
        assert!(
            after_one < 20_000_000.0 && after_one > 10_000_000.0,
            "{after_one}"
        );
        let mut t = t0 + Duration::from_millis(100);
        for _ in 0..50 {
            t += Duration::from_millis(100);
            e.observe(Duration::from_millis(1), t);
        }
        let end = e.estimate_ns(t);
        assert!(end < 1_500_000.0, "{end}");
    }

    #[test]
    fn an_unsampled_estimate_decays_so_a_shunned_endpoint_gets_retried() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(1), t0);
        e.observe(Duration::from_secs(2), t0);
        let later = e.estimate_ns(t0 + Duration::from_secs(10));
        assert!(later < 1_000_000.0, "{later}");
        // Reading twice does not decay twice for the same interval.
        assert_eq!(e.estimate_ns(t0 + Duration::from_secs(10)), later);
    }
}
