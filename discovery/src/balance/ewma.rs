//! Peak-EWMA latency estimate, as used by Finagle and linkerd for least-loaded balancing.
//!
//! A slower sample than the estimate replaces it at once (the "peak"), so an endpoint that
//! turns slow is avoided immediately; faster samples pull it down gradually with a decay
//! that depends on the time since the last sample, not on the sample count. Reading the
//! estimate also decays it towards zero: an endpoint that answered slowly once, and is
//! therefore no longer picked, must become worth a new try after a while instead of being
//! shunned for ever (it is never sampled again otherwise).
//!
//! **Two decays.** linkerd uses one (10 s) for both. At tens of thousands of calls a second
//! on a busy machine, though, the slowest of a second's samples is a scheduling hiccup
//! several times the typical latency, and with a 10 s decay every fast endpoint's estimate
//! sat near its last hiccup: a backend that was really slower (one at its concurrency
//! limit, 1 ms a call) looked no worse and kept getting calls (`starling bench balancer`,
//! limit scenario: p99 2.2–3.7× the all-fast p99). So samples pull a peak down with a short
//! decay (`sampled`, 100 ms: a hiccup is forgotten after a few hundred samples, a real
//! slowdown keeps renewing its peak), while an endpoint nobody samples still waits the long
//! decay (`idle`, 10 s) before it is worth a new try.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PeakEwma {
    estimate_ns: f64,
    last: Instant,
    sampled_ns: f64,
    idle_ns: f64,
}

impl PeakEwma {
    /// `sampled`: how fast samples pull a peak down; `idle`: how fast the estimate of an
    /// endpoint without samples falls (see the module docs).
    pub fn new(initial: Duration, sampled: Duration, idle: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: initial.as_nanos() as f64,
            last: now,
            sampled_ns: sampled.as_nanos().max(1) as f64,
            idle_ns: idle.as_nanos().max(1) as f64,
        }
    }

    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.last).as_nanos() as f64;
            let w = (-elapsed / self.sampled_ns).exp();
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.last = now;
    }

    /// The estimate at `now`, decayed for the time since the last sample or read.
    pub fn estimate_ns(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos() as f64;
        if elapsed > 0.0 {
            self.estimate_ns *= (-elapsed / self.idle_ns).exp();
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
        let mut e = PeakEwma::new(
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            t0,
        );
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
        let mut e = PeakEwma::new(
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            t0,
        );
        e.observe(Duration::from_secs(2), t0);
        let later = e.estimate_ns(t0 + Duration::from_secs(10));
        assert!(later < 1_000_000.0, "{later}");
        // Reading twice does not decay twice for the same interval.
        assert_eq!(e.estimate_ns(t0 + Duration::from_secs(10)), later);
    }

    /// A hiccup among fast samples is forgotten within a few sampled decays, while an
    /// endpoint nobody samples keeps its estimate for the (longer) idle decay.
    #[test]
    fn samples_forget_a_hiccup_faster_than_idleness_forgets_a_peak() {
        let t0 = Instant::now();
        let (sampled, idle) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut busy = PeakEwma::new(Duration::from_micros(500), sampled, idle, t0);
        let mut shunned = busy.clone();
        busy.observe(Duration::from_millis(5), t0);
        shunned.observe(Duration::from_millis(5), t0);
        let mut t = t0;
        // 10,000 calls a second of 0.5 ms for half a second.
        for _ in 0..5_000 {
            t += Duration::from_micros(100);
            busy.observe(Duration::from_micros(500), t);
        }
        let busy = busy.estimate_ns(t);
        let shunned = shunned.estimate_ns(t);
        assert!(busy < 600_000.0, "hiccup still counted: {busy}");
        assert!(
            shunned > 4_500_000.0,
            "a shunned peak fell too soon: {shunned}"
        );
    }
}
