//! The mesh's client: what a generated tonic client uses as its transport, one
//! [`MeshChannel`] per target service, shared by every clone.
//!
//! A call goes down this stack, built in [`MeshChannel::new`], one concern per module:
//!
//! 1. [`deadline`] `SetDeadline`: when the whole call must be over (the caller's
//!    `grpc-timeout`, the inbound call's deadline, or the default); DEADLINE_EXCEEDED
//!    when it passes;
//! 2. [`buffer`] `Buffer`: requests that may be sent again are read into memory, the
//!    idempotent ones marked so any failure may be retried;
//! 3. `tower::retry::Retry` with [`retry`]'s policy: another attempt, on another
//!    endpoint, within a retry budget per target;
//! 4. [`dispatch`] `Dispatch`, one attempt: wait (bounded) for an endpoint
//!    ([`snapshot`]), stamp the time left, pick by policy ([`pick`]), send, and eject an
//!    endpoint that fails or stalls ([`eject`]).
//!
//! Failures of the mesh itself are [`MeshError`]s ([`error`]); [`config`] holds the
//! knobs. Unlike tonic's `balance_channel`, load is measured (peak EWMA and outstanding
//! calls), failed endpoints stop being picked at once, and an empty endpoint set fails
//! fast.

mod buffer;
mod config;
mod deadline;
mod dispatch;
mod eject;
mod endpoint;
pub use endpoint::EndpointStats;
mod error;
mod pick;
pub(crate) mod retry;
mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt as _};

pub use config::{MeshConfig, DEFAULT_ZONE_SPILL_IN_FLIGHT};
pub use error::MeshError;

use crate::balance::Policy;
use crate::instance::ServiceInstance;
use crate::registry::{EndpointWatch, Registry};

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

type Stack = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// A tower service over HTTP/2 gRPC requests to one target service. Cheap to clone.
#[derive(Clone)]
pub struct MeshChannel {
    service: Arc<str>,
    policy: Policy,
    snapshots: snapshot::Snapshots,
    /// Retries this channel made (all endpoints).
    retries: Arc<std::sync::atomic::AtomicU64>,
    stack: Stack,
}

impl std::fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshChannel")
            .field("service", &self.service)
            .field("policy", &self.policy)
            .finish()
    }
}

impl MeshChannel {
    fn new(service: &str, policy: Policy, watch: EndpointWatch, config: Arc<MeshConfig>) -> Self {
        let snapshots =
            snapshot::Snapshots::follow(service, watch, config.connect_timeout, config.tls.clone());
        let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stack = ServiceBuilder::new()
            .layer(crate::trace::TraceLayer::client(service))
            .layer(deadline::SetDeadlineLayer::new(
                service,
                config.call_timeout,
            ))
            .layer(buffer::BufferLayer::new(config.clone()))
            .layer(tower::retry::RetryLayer::new(
                retry::RetryPolicy::new(
                    config.max_attempts,
                    // One budget per target: retries to one service cannot spend another's.
                    retry::RetryPolicy::default_budget(),
                )
                .counting(retries.clone()),
            ))
            .service(dispatch::Dispatch::new(dispatch::Parts {
                service: service.into(),
                config: config.clone(),
                snapshots: snapshots.clone(),
                picker: match &config.zone {
                    Some(zone) => pick::Picker::new(policy.clone()).in_zone(
                        service,
                        zone,
                        config.zone_spill_in_flight,
                    ),
                    None => pick::Picker::new(policy.clone()),
                },
            }));
        Self {
            service: service.into(),
            policy,
            snapshots,
            retries,
            stack: BoxCloneSyncService::new(stack),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The endpoints currently in the balancer.
    pub fn endpoints(&self) -> Vec<ServiceInstance> {
        self.snapshots
            .current()
            .endpoints
            .iter()
            .map(|e| e.instance.clone())
            .collect()
    }

    /// Every endpoint in the balancer with what this caller knows of it, and the retries
    /// this channel made (for the mesh view).
    pub fn stats(&self) -> (Vec<EndpointStats>, u64) {
        let endpoints = self
            .snapshots
            .current()
            .endpoints
            .iter()
            .map(|e| e.stats())
            .collect();
        (
            endpoints,
            self.retries.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Waits until the balancer holds endpoints satisfying `pred` (for tests, readiness
    /// checks and start-up ordering), at most `timeout`.
    pub async fn wait_for_endpoints(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[ServiceInstance]) -> bool,
    ) -> bool {
        self.snapshots
            .wait_for(timeout, |s| {
                let v: Vec<ServiceInstance> =
                    s.endpoints.iter().map(|e| e.instance.clone()).collect();
                pred(&v)
            })
            .await
    }
}

impl Service<http::Request<Body>> for MeshChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Oneshot<Stack, http::Request<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Nothing to wait for here: the stack waits (bounded) for an endpoint inside the
        // call, so that readiness can never hang a caller.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.stack.clone().oneshot(req)
    }
}
