//! The registry contract: register an instance under a lease, list a service, watch it.
//!
//! Two implementations sit behind this trait: [`crate::EtcdRegistry`] for production and
//! [`crate::MemoryRegistry`] for the one-process embedded mode and fast tests. Both are
//! checked by the same suite in [`crate::contract`].

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::instance::{EndpointSet, ServiceInstance};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("invalid registry entry at {key}: {reason}")]
    InvalidEntry { key: String, reason: String },
    #[error("invalid service name {0:?}: use [a-z0-9_-]+")]
    InvalidServiceName(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("all {0} numbers of pool {1:?} are taken")]
    PoolExhausted(u32, String),
}

/// A live view of one service's instances. `borrow()` is always the last known set: while
/// the registry is unreachable it keeps serving the old one rather than going empty,
/// because the registry is a control plane and must never take the data path down.
pub type EndpointWatch = watch::Receiver<Arc<EndpointSet>>;

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers `instance` under `service` and keeps it registered (renewing the lease and
    /// re-registering after a lost lease) until the returned handle is deregistered.
    async fn register(
        &self,
        service: &str,
        instance: ServiceInstance,
    ) -> Result<Registration, DiscoveryError>;

    /// The instances of `service` right now.
    async fn list(&self, service: &str) -> Result<EndpointSet, DiscoveryError>;

    /// A view of `service` kept current in the background for as long as a receiver lives.
    fn watch(&self, service: &str) -> EndpointWatch;

    /// Claims a number in `0..max` of the pool `pool` that no other live holder has (a
    /// Snowflake worker id, say), held until the returned [`Claim`] is dropped.
    /// [`Claim::is_valid`] stays true for as long as the claim is provably still ours: until
    /// the lease TTL has passed since the last renewal that etcd confirmed (counted from
    /// when that renewal was *sent*, on the local monotonic clock, so never later than etcd
    /// itself could expire it). An etcd outage shorter than that costs nothing; past it the
    /// claim is invalid until the same number is claimed again.
    async fn claim(&self, pool: &str, max: u32) -> Result<Claim, DiscoveryError>;
}

/// A number held exclusively; see [`Registry::claim`].
#[derive(Debug)]
pub struct Claim {
    pub id: u32,
    valid_until: watch::Receiver<Option<std::time::Instant>>,
    _stop: oneshot::Sender<()>,
}

impl Claim {
    /// `valid_until` says until when the claim is certainly held (`None`: not held); `stop`
    /// fires (or is dropped) when the claim should be released.
    pub(crate) fn new(
        id: u32,
        valid_until: watch::Receiver<Option<std::time::Instant>>,
        stop: oneshot::Sender<()>,
    ) -> Self {
        Self {
            id,
            valid_until,
            _stop: stop,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.valid_until
            .borrow()
            .is_some_and(|until| std::time::Instant::now() < until)
    }
}

pub(crate) fn check_service_name(service: &str) -> Result<(), DiscoveryError> {
    let ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::InvalidServiceName(service.to_string()))
    }
}

/// Handle to a live registration. Dropping it stops the keeper, which deregisters in the
/// background; call [`Registration::deregister`] to wait until the key is gone.
#[derive(Debug)]
pub struct Registration {
    instance: ServiceInstance,
    stop: Option<oneshot::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
    updates: watch::Sender<ServiceInstance>,
}

/// Changes what a live registration says about the instance (its health verdict).
#[derive(Debug, Clone)]
pub struct ServingHandle(watch::Sender<ServiceInstance>);

impl ServingHandle {
    /// Registers the instance as serving or not; the keeper writes it if it changed.
    pub fn set_serving(&self, serving: bool) {
        self.0.send_if_modified(|i| {
            let changed = i.serving != serving;
            i.serving = serving;
            changed
        });
    }
}

impl Registration {
    /// `keeper` must remove the registration when `stop` fires (or its sender is dropped),
    /// and write the instance again whenever `updates` changes.
    pub(crate) fn new(
        instance: ServiceInstance,
        stop: oneshot::Sender<()>,
        keeper: JoinHandle<()>,
        updates: watch::Sender<ServiceInstance>,
    ) -> Self {
        Self {
            instance,
            stop: Some(stop),
            keeper: Some(keeper),
            updates,
        }
    }

    pub fn instance(&self) -> &ServiceInstance {
        &self.instance
    }

    pub fn serving_handle(&self) -> ServingHandle {
        ServingHandle(self.updates.clone())
    }

    /// Removes the instance from the registry and waits until that is done (or has been
    /// given up on because the registry is unreachable; the lease then expires by itself).
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
