//! The mesh channel: what a generated tonic client uses as its transport.
//!
//! One [`MeshChannel`] per target service, shared by every clone. Its request path, as one
//! stack (built in [`Mesh::channel`]):
//!
//! 1. deadline: the earliest of the caller's `grpc-timeout`, the deadline of the inbound
//!    call being handled (see `deadline.rs`) and the configured default; sent downstream
//!    as `grpc-timeout` and enforced here (DEADLINE_EXCEEDED);
//! 2. body buffering for methods declared idempotent in the `.proto`, so they can be sent
//!    again;
//! 3. `tower::retry::Retry` with [`RetryPolicy`]: another attempt, on another endpoint,
//!    after a transport failure, within a retry budget;
//! 4. [`Balance`]: waits a bounded time for an endpoint to exist (then UNAVAILABLE), picks
//!    one by policy among those not ejected, and ejects an endpoint that fails at the
//!    transport level for a doubling back-off.
//!
//! Unlike tonic's `balance_channel`, load is measured (peak EWMA and outstanding calls),
//! failed endpoints stop being picked at once, and an empty endpoint set fails fast.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use rand::Rng;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::Status;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tracing::{debug, warn};

use crate::balance::ring::{HashRing, DEFAULT_POINTS_PER_WEIGHT};
use crate::balance::Policy;
use crate::deadline::{current_deadline, format_grpc_timeout, parse_grpc_timeout, GRPC_TIMEOUT};
use crate::endpoint::{EjectionConfig, Endpoint};
use crate::instance::{EndpointSet, ServiceInstance};
use crate::registry::{EndpointWatch, Registry};
use crate::retry::{rebuild, BufferedBody, RetryPolicy};

/// An error of the mesh itself (as opposed to an answer from a server). Tonic turns it into
/// the carried [`Status`]; `retryable` tells the retry policy whether another endpoint
/// might succeed, `unsent` that the request certainly never reached a server (the
/// connection was refused), so even a call that must not run twice may be sent again.
#[derive(Debug)]
pub struct MeshError {
    pub status: Status,
    pub retryable: bool,
    pub unsent: bool,
}

impl std::fmt::Display for MeshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.status.code(), self.status.message())
    }
}

impl std::error::Error for MeshError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.status)
    }
}

fn fail(status: Status, retryable: bool) -> BoxError {
    Box::new(MeshError {
        status,
        retryable,
        unsent: false,
    })
}

/// The status for a request body that could not be buffered: RESOURCE_EXHAUSTED if it was
/// over `limit`, else the body's own error.
fn too_large_or(e: BoxError, limit: usize) -> Status {
    if e.is::<http_body_util::LengthLimitError>() {
        Status::resource_exhausted(format!(
            "request message larger than the {limit} bytes a call may carry"
        ))
    } else {
        match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(e) => Status::unknown(format!("reading the request: {e}")),
        }
    }
}

/// Whether `e` says the connection was refused: the request was never sent.
fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Marks a request whose method may be retried on any failure (see `MeshConfig`); other
/// buffered requests are resent only when they were certainly never sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idempotent;

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Policy for targets without an entry in `targets`.
    pub default_policy: Policy,
    pub targets: HashMap<String, TargetConfig>,
    /// Deadline applied when neither the caller (`grpc-timeout`) nor the inbound call being
    /// served sets one; an explicit deadline, longer or shorter, is kept as it is.
    pub call_timeout: Duration,
    /// How long a call waits for the first endpoint of a target before UNAVAILABLE.
    pub no_endpoint_timeout: Duration,
    pub connect_timeout: Duration,
    /// Total attempts for an idempotent call (1 = no retry).
    pub max_attempts: usize,
    /// How long one attempt may wait for its answer before the endpoint is taken for
    /// stalled (a frozen or overloaded process that still holds its connections): it is
    /// ejected, and an idempotent call is retried elsewhere. `None`: only the deadline.
    pub attempt_timeout: Option<Duration>,
    pub ejection: EjectionConfig,
    /// gRPC paths that may be retried; see `starling_proto::idempotent_methods`.
    pub idempotent_methods: Arc<HashSet<String>>,
    /// gRPC paths of unary methods (`starling_proto::unary_methods`): their requests are
    /// buffered too, so that one sent to an endpoint that refused the connection can go to
    /// another, idempotent or not. Empty: only idempotent methods are ever resent.
    pub unary_methods: Arc<HashSet<String>>,
    /// The largest request body (gRPC framing included) buffered for a resend; a larger one
    /// answers RESOURCE_EXHAUSTED once this much has arrived, so no caller can make the
    /// channel hold more. The default is tonic's message limit (4 MiB) plus one frame header.
    pub max_buffered_request: usize,
    /// Mutual TLS to every endpoint (`None`: plaintext, for an insecure mesh).
    pub tls: Option<crate::tls::MeshTls>,
}

/// tonic's default limit on a decoded message, plus the 5-byte gRPC frame header.
pub const DEFAULT_MAX_BUFFERED_REQUEST: usize = 4 * 1024 * 1024 + 5;

impl MeshConfig {
    pub fn new(idempotent_methods: HashSet<String>) -> Self {
        Self {
            tls: None,
            default_policy: Policy::RoundRobin,
            targets: HashMap::new(),
            call_timeout: Duration::from_secs(10),
            no_endpoint_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            max_attempts: 3,
            attempt_timeout: Some(Duration::from_secs(1)),
            ejection: EjectionConfig {
                base: Duration::from_secs(1),
                max: Duration::from_secs(30),
            },
            idempotent_methods: Arc::new(idempotent_methods),
            unary_methods: Arc::new(HashSet::new()),
            max_buffered_request: DEFAULT_MAX_BUFFERED_REQUEST,
        }
    }

    /// See [`MeshConfig::unary_methods`].
    pub fn with_unary_methods(mut self, methods: HashSet<String>) -> Self {
        self.unary_methods = Arc::new(methods);
        self
    }

    pub fn with_policy(mut self, service: &str, policy: Policy) -> Self {
        self.targets
            .insert(service.to_string(), TargetConfig { policy });
        self
    }

    fn policy_for(&self, service: &str) -> Policy {
        self.targets
            .get(service)
            .map(|t| t.policy.clone())
            .unwrap_or_else(|| self.default_policy.clone())
    }
}

/// Hands out one shared [`MeshChannel`] per target service.
pub struct Mesh {
    registry: Arc<dyn Registry>,
    config: Arc<MeshConfig>,
    channels: Mutex<HashMap<String, MeshChannel>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("config", &self.config)
            .finish()
    }
}

impl Mesh {
    pub fn new(registry: Arc<dyn Registry>, config: MeshConfig) -> Self {
        Self {
            registry,
            config: Arc::new(config),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// The same registry and configuration, calling as the identity `tls` (several
    /// services in one process, as in `starling up`, each call as themselves).
    pub fn as_identity(&self, tls: Option<crate::tls::MeshTls>) -> Mesh {
        let mut config = (*self.config).clone();
        config.tls = tls;
        Mesh::new(self.registry.clone(), config)
    }

    /// The channel to `service` (created on first use; must run inside a tokio runtime).
    pub fn channel(&self, service: &str) -> MeshChannel {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(service.to_string())
            .or_insert_with(|| {
                MeshChannel::new(
                    service,
                    self.config.policy_for(service),
                    self.registry.watch(service),
                    self.config.clone(),
                )
            })
            .clone()
    }
}

/// The endpoints of a target as the balancer sees them at one moment.
#[derive(Debug, Default)]
struct Snapshot {
    endpoints: Vec<Arc<Endpoint>>,
    by_id: HashMap<String, usize>,
    ring: HashRing,
}

struct Target {
    service: String,
    policy: Policy,
    config: Arc<MeshConfig>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    next: AtomicUsize,
}

/// A tower service over HTTP/2 gRPC requests to one target service. Cheap to clone.
#[derive(Clone)]
pub struct MeshChannel {
    target: Arc<Target>,
    stack: BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>,
}

impl std::fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshChannel")
            .field("service", &self.target.service)
            .field("policy", &self.target.policy)
            .finish()
    }
}

impl MeshChannel {
    fn new(service: &str, policy: Policy, watch: EndpointWatch, config: Arc<MeshConfig>) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(maintain(
            service.to_string(),
            watch,
            tx,
            config.connect_timeout,
            config.tls.clone(),
        ));
        let target = Arc::new(Target {
            service: service.to_string(),
            policy,
            config: config.clone(),
            snapshot: rx,
            next: AtomicUsize::new(rand::rng().random::<u32>() as usize),
        });
        // Steps 3 and 4 of the module docs; steps 1 and 2 are in `call`, because they
        // decide per request what the retry layer may do.
        let stack = ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(RetryPolicy::new(
                config.max_attempts,
                // One budget per target: retries to one service cannot spend another's.
                RetryPolicy::default_budget(),
            )))
            .service(Balance {
                target: target.clone(),
            });
        Self {
            target,
            stack: BoxCloneSyncService::new(stack),
        }
    }

    pub fn service(&self) -> &str {
        &self.target.service
    }

    pub fn policy(&self) -> &Policy {
        &self.target.policy
    }

    /// The endpoints currently in the balancer.
    pub fn endpoints(&self) -> Vec<ServiceInstance> {
        self.target
            .snapshot
            .borrow()
            .endpoints
            .iter()
            .map(|e| e.instance.clone())
            .collect()
    }

    /// Waits until the balancer holds endpoints satisfying `pred` (for tests, readiness
    /// checks and start-up ordering), at most `timeout`.
    pub async fn wait_for_endpoints(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[ServiceInstance]) -> bool,
    ) -> bool {
        let mut rx = self.target.snapshot.clone();
        let wait = async {
            rx.wait_for(|s| {
                let v: Vec<ServiceInstance> =
                    s.endpoints.iter().map(|e| e.instance.clone()).collect();
                pred(&v)
            })
            .await
            .is_ok()
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

/// Keeps the balancer's snapshot in step with the registry's endpoint set, reusing the
/// `Endpoint` (connection, latency history) of every instance that stays.
async fn maintain(
    service: String,
    mut watch: EndpointWatch,
    tx: watch::Sender<Arc<Snapshot>>,
    connect_timeout: Duration,
    tls: Option<crate::tls::MeshTls>,
) {
    let gauge = metrics::gauge!("starling_client_endpoints", "target" => service.clone());
    loop {
        let set: Arc<EndpointSet> = watch.borrow_and_update().clone();
        let previous = tx.borrow().clone();
        let mut snap = Snapshot::default();
        for (id, inst) in set.iter() {
            let reused = previous
                .by_id
                .get(id)
                .map(|&i| previous.endpoints[i].clone())
                .filter(|e| e.instance.same_endpoint(inst));
            let ep = match reused {
                Some(ep) => ep,
                None => {
                    match Endpoint::new(&service, inst.clone(), connect_timeout, tls.as_ref()) {
                        Ok(ep) => Arc::new(ep),
                        Err(e) => {
                            warn!(%service, instance = %id, error = %e, "ignoring endpoint");
                            continue;
                        }
                    }
                }
            };
            ep.set_serving(inst.serving);
            snap.by_id.insert(id.clone(), snap.endpoints.len());
            snap.endpoints.push(ep);
        }
        snap.ring = HashRing::new(
            snap.endpoints.iter().map(|e| (e.id(), e.instance.weight)),
            DEFAULT_POINTS_PER_WEIGHT,
        );
        gauge.set(snap.endpoints.len() as f64);
        debug!(%service, endpoints = snap.endpoints.len(), "endpoint set updated");
        tx.send_replace(Arc::new(snap));
        tokio::select! {
            changed = watch.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

impl Service<http::Request<Body>> for MeshChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Waiting for an endpoint happens inside the call, bounded by the deadline and
        // `no_endpoint_timeout`, so that readiness can never hang a caller.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let config = &self.target.config;
        let now = tokio::time::Instant::now();
        // 1. Deadline: the earlier of the caller's and the inbound call's, or the default.
        let explicit = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|t| now + t);
        let deadline = match (explicit, current_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(d), None) | (None, Some(d)) => d,
            (None, None) => now + config.call_timeout,
        };
        req.extensions_mut().insert(CallDeadline(deadline));
        let idempotent = config.idempotent_methods.contains(req.uri().path())
            || req.headers().contains_key(crate::IDEMPOTENCY_KEY);
        let buffer = idempotent || config.unary_methods.contains(req.uri().path());
        if idempotent {
            req.extensions_mut().insert(Idempotent);
        }
        let stack = self.stack.clone();
        let service = self.target.service.clone();
        let limit = config.max_buffered_request;
        Box::pin(async move {
            let attempt = async move {
                // 2. Buffer unary requests so that the retry layer can resend them; never
                //    more than the limit.
                let req = if buffer {
                    let (parts, body) = req.into_parts();
                    let bytes = http_body_util::Limited::new(body, limit)
                        .collect()
                        .await
                        .map_err(|e| fail(too_large_or(e, limit), false))?
                        .to_bytes();
                    let shell = http::Request::from_parts(parts, Body::empty());
                    rebuild(&shell, &BufferedBody(bytes))
                } else {
                    req
                };
                stack.oneshot(req).await
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(result) => result,
                Err(_) => Err(fail(
                    Status::deadline_exceeded(format!(
                        "{service} did not answer within the deadline"
                    )),
                    false,
                )),
            }
        })
    }
}

/// When the call must be over; each attempt sends what is left of it as `grpc-timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDeadline(pub tokio::time::Instant);

/// Step 4: pick an endpoint and send the request to it.
#[derive(Clone)]
struct Balance {
    target: Arc<Target>,
}

impl Service<http::Request<Body>> for Balance {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move { target.dispatch(req).await })
    }
}

impl Target {
    async fn snapshot(&self) -> Result<Arc<Snapshot>, BoxError> {
        {
            let snap = self.snapshot.borrow();
            if !snap.endpoints.is_empty() {
                return Ok(snap.clone());
            }
        }
        let wait = self.config.no_endpoint_timeout;
        let mut rx = self.snapshot.clone();
        let ready = async {
            rx.wait_for(|s| !s.endpoints.is_empty())
                .await
                .map(|s| s.clone())
        };
        match tokio::time::timeout(wait, ready).await {
            Ok(Ok(snap)) => Ok(snap),
            _ => Err(fail(
                Status::unavailable(format!(
                    "no endpoints registered for service {:?} (waited {wait:?})",
                    self.service
                )),
                false,
            )),
        }
    }

    fn pick(&self, snap: &Snapshot, headers: &http::HeaderMap) -> Arc<Endpoint> {
        let now = Instant::now();
        let all = &snap.endpoints;
        let healthy = all.iter().filter(|e| e.usable(now)).count();
        // With every endpoint ejected or not serving, trying one beats failing outright. Candidates are
        // indexed without collecting them: this runs on every call.
        let panic_mode = healthy == 0;
        let n = if panic_mode { all.len() } else { healthy };
        let nth = |k: usize| -> &Arc<Endpoint> {
            if panic_mode {
                &all[k]
            } else {
                all.iter()
                    .filter(|e| e.usable(now))
                    .nth(k)
                    .unwrap_or(&all[0])
            }
        };
        let round_robin = || nth(self.next.fetch_add(1, Ordering::Relaxed) % n).clone();
        match &self.policy {
            Policy::RoundRobin => round_robin(),
            Policy::ConsistentHash { header } => {
                let Some(key) = headers.get(header.as_str()) else {
                    return round_robin();
                };
                let hash = HashRing::hash_key(key.as_bytes());
                let usable = |id: &str| {
                    panic_mode || snap.by_id.get(id).is_some_and(|&i| all[i].usable(now))
                };
                snap.ring
                    .owner_where(hash, usable)
                    .and_then(|id| snap.by_id.get(id))
                    .map(|&i| all[i].clone())
                    .unwrap_or_else(round_robin)
            }
            Policy::P2cEwma => {
                if n == 1 {
                    return nth(0).clone();
                }
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (ea, eb) = (nth(a), nth(b));
                if ea.load() <= eb.load() {
                    ea.clone()
                } else {
                    eb.clone()
                }
            }
        }
    }

    async fn dispatch(
        &self,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let snap = self.snapshot().await?;
        // What is left of the deadline now, not when the call started: a retry after a
        // slow first attempt must not promise the next hop the full budget again.
        if let Some(CallDeadline(deadline)) = req.extensions().get::<CallDeadline>().copied() {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(fail(
                    Status::deadline_exceeded(format!(
                        "deadline passed before calling {}",
                        self.service
                    )),
                    false,
                ));
            }
            if let Ok(v) = format_grpc_timeout(remaining).parse() {
                req.headers_mut().insert(GRPC_TIMEOUT, v);
            }
        }
        let endpoint = self.pick(&snap, req.headers());
        endpoint.picks.increment(1);
        let flight = endpoint.start();
        let mut channel = endpoint.channel.clone();
        let attempt = async {
            match channel.ready().await {
                Ok(ch) => ch.call(req).await,
                Err(e) => Err(e),
            }
        };
        let result = match self.config.attempt_timeout {
            None => attempt.await,
            Some(limit) => match tokio::time::timeout(limit, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    drop(flight);
                    let period = endpoint.eject(&self.config.ejection);
                    warn!(service = %self.service, endpoint = %endpoint.instance.address,
                        instance = %endpoint.id(), ejected_for = ?period,
                        "no answer within {limit:?}; endpoint ejected as stalled");
                    return Err(fail(
                        Status::unavailable(format!(
                            "{} endpoint {} did not answer within {limit:?}",
                            self.service, endpoint.instance.address
                        )),
                        true,
                    ));
                }
            },
        };
        match result {
            Ok(resp) => {
                // A trailers-only UNAVAILABLE: the instance is shedding load or shutting
                // down. Not a fast success (that would make p2c favour it): take it out of
                // rotation briefly so the retry goes elsewhere.
                // Unless the callee says not to retry (gRPC retry pushback < 0): its
                // dependency failed, and every replica shares that dependency.
                let pushback = resp
                    .headers()
                    .get(crate::RETRY_PUSHBACK)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|ms| ms < 0);
                if let Some(status) = Status::from_header_map(resp.headers()).filter(|_| !pushback)
                {
                    if status.code() == tonic::Code::Unavailable {
                        drop(flight);
                        endpoint.eject(&self.config.ejection);
                        return Err(fail(status, true));
                    }
                }
                flight.answered();
                Ok(resp)
            }
            Err(e) => {
                drop(flight);
                let period = endpoint.eject(&self.config.ejection);
                let unsent = connection_refused(&e);
                warn!(service = %self.service, endpoint = %endpoint.instance.address,
                    instance = %endpoint.id(), error = %e, ejected_for = ?period, unsent,
                    "transport failure; endpoint ejected");
                Err(Box::new(MeshError {
                    status: Status::unavailable(format!(
                        "{} endpoint {} failed: {e}",
                        self.service, endpoint.instance.address
                    )),
                    retryable: true,
                    unsent,
                }))
            }
        }
    }
}
