//! One endpoint of a target service: its connection, load and health as the balancer sees
//! them. Endpoints are kept across endpoint-set updates (matched by instance id), so an
//! update does not drop connections or forget latency history.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::Counter;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::balance::ewma::PeakEwma;
use crate::instance::ServiceInstance;

/// Latency assumed for an endpoint that has not answered yet: low enough that new
/// endpoints get traffic, high enough that one slow first answer is not undercut.
const DEFAULT_RTT: Duration = Duration::from_millis(5);
/// See `balance/ewma.rs`: how fast samples pull a latency peak down, and how fast the
/// estimate of an endpoint that gets no calls falls (so that it is tried again).
const EWMA_SAMPLED_DECAY: Duration = Duration::from_millis(100);
const EWMA_IDLE_DECAY: Duration = Duration::from_secs(10);
/// Without an answer for this long, an endpoint is probed one call at a time (see
/// [`Endpoint::load`]).
pub const STALE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Endpoint {
    pub instance: ServiceInstance,
    pub channel: Channel,
    inflight: AtomicUsize,
    ewma: Mutex<PeakEwma>,
    /// Consecutive transport failures; drives the ejection back-off.
    failures: AtomicU32,
    /// Nanoseconds since [`epoch`] until which the endpoint is ejected; 0 = never was.
    /// An atomic, because every pick reads it for every endpoint.
    ejected_until: AtomicU64,
    /// Nanoseconds since [`epoch`] of its last answer; 0 = none yet.
    answered_at: AtomicU64,
    pub picks: Counter,
    pub ejections: Counter,
    /// Attempts sent and ejections, for the mesh view ([`Endpoint::stats`]).
    calls: AtomicU64,
    ejected: AtomicU64,
    /// The instance's own health verdict, as registered (see [`ServiceInstance::serving`]).
    serving: std::sync::atomic::AtomicBool,
}

/// A process-wide origin, so instants fit in an `AtomicU64`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(t: Instant) -> u64 {
    // +1 so that no real instant maps to 0 ("not ejected").
    t.saturating_duration_since(epoch()).as_nanos() as u64 + 1
}

/// One endpoint as a caller's balancer sees it (see [`crate::MeshChannel::stats`]).
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub instance: ServiceInstance,
    /// Attempts sent to it since this caller first saw it.
    pub calls: u64,
    /// Times this caller took it out of rotation.
    pub ejections: u64,
    pub in_flight: usize,
    /// Peak-EWMA latency (the p2c policy's estimate; a default until it has answered).
    pub latency_ms: f64,
    /// Out of rotation now.
    pub ejected: bool,
    /// Its own health verdict, as registered.
    pub serving: bool,
}

#[derive(Debug, Clone)]
pub struct EjectionConfig {
    pub base: Duration,
    pub max: Duration,
}

impl Endpoint {
    pub fn new(
        target: &str,
        instance: ServiceInstance,
        connect_timeout: Duration,
        tls: Option<&crate::tls::MeshTls>,
    ) -> Result<Self, String> {
        let uri = format!("http://{}", instance.address);
        let endpoint = TonicEndpoint::from_shared(uri.clone())
            .map_err(|e| format!("bad endpoint address {uri}: {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = match tls {
            // The server must prove it is `target`: its certificate names the service. Each
            // new connection takes the identity current at that moment (see `tls`).
            Some(tls) => endpoint.connect_with_connector_lazy(
                tls.connector(target)
                    .map_err(|e| format!("TLS for {uri}: {e}"))?,
            ),
            None => endpoint.connect_lazy(),
        };
        let labels = [
            ("target", target.to_string()),
            ("endpoint", instance.address.clone()),
        ];
        Ok(Self {
            picks: metrics::counter!("starling_client_picks_total", &labels),
            ejections: metrics::counter!("starling_client_ejections_total", &labels),
            channel,
            inflight: AtomicUsize::new(0),
            ewma: Mutex::new(PeakEwma::new(
                DEFAULT_RTT,
                EWMA_SAMPLED_DECAY,
                EWMA_IDLE_DECAY,
                Instant::now(),
            )),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            ejected: AtomicU64::new(0),
            serving: std::sync::atomic::AtomicBool::new(instance.serving),
            instance,
        })
    }

    pub fn id(&self) -> &str {
        &self.instance.id
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > since_epoch(now)
    }

    /// Neither ejected nor reporting itself NOT_SERVING.
    pub fn usable(&self, now: Instant) -> bool {
        self.serving.load(Ordering::Relaxed) && !self.is_ejected(now)
    }

    /// Calls outstanding on it now.
    pub fn in_flight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// p2c load: peak-EWMA latency scaled by the calls outstanding here, counted against
    /// `mean_in_flight`, the mean over the endpoints the pick is among:
    /// `latency × (1 + in_flight / (1 + mean_in_flight))`.
    ///
    /// linkerd's `latency × (in_flight + 1)` prices every outstanding call at a whole
    /// latency, as if the endpoint served one call at a time. A server that serves many at
    /// once already shows its load in the latency it answers with, so under heavy load that
    /// formula double-counts it and makes a slower endpoint with fewer calls look as good
    /// (a backend at its concurrency limit kept getting calls until they queued). Counted
    /// against the mean, calls in flight still balance endpoints that answer alike, and
    /// weigh as much as linkerd's when load is light (mean near 0), while under load the
    /// latency decides.
    ///
    /// An endpoint that has not answered for [`STALE_AFTER`] (or ever) is probed with one
    /// call at a time: its estimate has only decayed, nothing says it is fast now, and a decayed
    /// estimate far under the others' would otherwise draw a burst of calls before the
    /// first answer corrects it (a backend at its concurrency limit queued them all; the
    /// limit scenario of `bench balancer` showed it in about one round in five).
    pub fn load(&self, mean_in_flight: f64) -> f64 {
        let now = Instant::now();
        let pending = self.inflight.load(Ordering::Relaxed);
        let answered = self.answered_at.load(Ordering::Relaxed);
        if pending > 0
            && (answered == 0
                || since_epoch(now).saturating_sub(answered) > STALE_AFTER.as_nanos() as u64)
        {
            return f64::INFINITY;
        }
        let ewma = self
            .ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .estimate_ns(now);
        ewma * (1.0 + pending as f64 / (1.0 + mean_in_flight))
    }

    pub fn start(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self,
            started: Instant::now(),
        }
    }

    /// A transport-level failure: take the endpoint out of rotation for a back-off period
    /// that doubles with each consecutive incident. Calls that fail together (one broken
    /// connection fails every call on it) are one incident: an endpoint already ejected is
    /// not ejected again, so one reset does not jump straight to the longest period.
    pub fn eject(&self, cfg: &EjectionConfig) -> Duration {
        let now = Instant::now();
        let current = self.ejected_until.load(Ordering::Relaxed);
        let now_ns = since_epoch(now);
        if current > now_ns {
            return Duration::from_nanos(current - now_ns);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let period = cfg.base.saturating_mul(1u32 << n).min(cfg.max);
        self.ejected_until
            .fetch_max(since_epoch(now + period), Ordering::Relaxed);
        self.ejections.increment(1);
        self.ejected.fetch_add(1, Ordering::Relaxed);
        period
    }

    /// What the balancer knows of this endpoint now.
    pub fn stats(&self) -> EndpointStats {
        let now = Instant::now();
        EndpointStats {
            instance: self.instance.clone(),
            calls: self.calls.load(Ordering::Relaxed),
            ejections: self.ejected.load(Ordering::Relaxed),
            in_flight: self.inflight.load(Ordering::Relaxed),
            latency_ms: self
                .ewma
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .estimate_ns(now)
                / 1e6,
            ejected: self.is_ejected(now),
            serving: self.serving.load(Ordering::Relaxed),
        }
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// An outstanding call; dropping it (answered, failed or cancelled) ends it.
pub struct InFlight<'a> {
    endpoint: &'a Endpoint,
    started: Instant,
}

impl InFlight<'_> {
    /// The endpoint answered: record the latency and clear any failure streak.
    pub fn answered(self) {
        let now = Instant::now();
        self.endpoint
            .answered_at
            .store(since_epoch(now), Ordering::Relaxed);
        self.endpoint
            .ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(now - self.started, now);
        self.endpoint.succeeded();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint nothing listens behind: its bookkeeping is all these tests use.
    fn test_endpoint() -> Endpoint {
        Endpoint::new(
            "t",
            ServiceInstance::new("t", "127.0.0.1:1"),
            Duration::from_millis(100),
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn ejection_backs_off_and_success_clears_it() {
        let ep = test_endpoint();
        let cfg = EjectionConfig {
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        assert!(!ep.is_ejected(Instant::now()));
        assert_eq!(ep.eject(&cfg), Duration::from_millis(100));
        // Failures during the ejection belong to the same incident.
        assert!(ep.eject(&cfg) <= Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(110));
        assert!(!ep.is_ejected(Instant::now()));
        assert_eq!(
            ep.eject(&cfg),
            Duration::from_millis(200),
            "next incident doubles"
        );
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(ep.eject(&cfg), Duration::from_millis(350), "capped");
        assert!(ep.is_ejected(Instant::now()));
        ep.start().answered();
        assert!(!ep.is_ejected(Instant::now()));
    }

    /// Without an answer for a while, one call at a time: a decayed estimate cannot draw
    /// a burst.
    #[tokio::test]
    async fn a_stale_endpoint_is_probed_one_call_at_a_time() {
        let ep = test_endpoint();
        // Never answered: the first call is the probe.
        assert!(ep.load(0.0).is_finite());
        let probe = ep.start();
        assert_eq!(
            ep.load(0.0),
            f64::INFINITY,
            "no second call before an answer"
        );
        probe.answered();
        let a = ep.start();
        assert!(ep.load(0.0).is_finite(), "an answer makes it fresh");
        drop(a);
    }

    #[tokio::test]
    async fn load_counts_outstanding_calls() {
        let ep = test_endpoint();
        // It answered once: not a stale endpoint (probed one call at a time).
        ep.start().answered();
        let idle = ep.load(0.0);
        let a = ep.start();
        let b = ep.start();
        // Lightly loaded peers: every outstanding call counts a whole latency, as in
        // linkerd's peak EWMA.
        assert!((ep.load(0.0) / (3.0 * idle) - 1.0).abs() < 1e-3);
        // Peers with three calls each: two is less than the others carry.
        assert!((ep.load(3.0) / (1.5 * idle) - 1.0).abs() < 1e-3);
        drop(a);
        drop(b);
        assert!((ep.load(3.0) / idle - 1.0).abs() < 1e-3);
    }
}
