//! How the mesh's client behaves: per-target balancing policy, deadlines, retries,
//! ejection, buffering limits and TLS. One [`MeshConfig`] per process (see `starling
//! serve --help` for the flags that set it).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::endpoint::EjectionConfig;
use crate::balance::Policy;

#[derive(Debug, Clone)]
pub(crate) struct TargetConfig {
    pub(crate) policy: Policy,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Policy for targets without an entry of their own (see [`MeshConfig::with_policy`]).
    pub default_policy: Policy,
    pub(crate) targets: HashMap<String, TargetConfig>,
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
    /// The caller's zone: calls prefer endpoints registered in it (see `client::pick`);
    /// `None`: no preference.
    pub zone: Option<String>,
    /// Calls in flight on every usable endpoint of the caller's zone at which calls spill
    /// over to the other zones (the local zone is overloaded).
    pub zone_spill_in_flight: usize,
}

/// tonic's default limit on a decoded message, plus the 5-byte gRPC frame header.
pub const DEFAULT_MAX_BUFFERED_REQUEST: usize = 4 * 1024 * 1024 + 5;

/// See [`MeshConfig::zone_spill_in_flight`].
pub const DEFAULT_ZONE_SPILL_IN_FLIGHT: usize = 32;

impl MeshConfig {
    pub fn new(idempotent_methods: HashSet<String>) -> Self {
        Self {
            tls: None,
            zone: None,
            zone_spill_in_flight: DEFAULT_ZONE_SPILL_IN_FLIGHT,
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

    /// Balances calls to `service` by `policy`.
    pub fn with_policy(mut self, service: &str, policy: Policy) -> Self {
        self.targets
            .insert(service.to_string(), TargetConfig { policy });
        self
    }

    pub(crate) fn policy_for(&self, service: &str) -> Policy {
        self.targets
            .get(service)
            .map(|t| t.policy.clone())
            .unwrap_or_else(|| self.default_policy.clone())
    }
}
