//! Service discovery and client-side balancing for the Starling mesh.
//!
//! * [`Registry`]: register an instance under a lease, list and watch a service; backed by
//!   etcd ([`EtcdRegistry`]) or by memory ([`MemoryRegistry`]) for the embedded mode.
//! * [`Mesh`]: hands out a [`MeshChannel`] per target service. A `MeshChannel` is a tower
//!   `Service` over HTTP/2 requests, so generated tonic clients take it as their transport
//!   (`TweetServiceClient::new(mesh.channel("tweet"))`) and never see endpoints.
//!
//! The request path through a `MeshChannel`, outermost first (one layer per module of
//! `client/`, and [`trace`]'s span first, only while tracing is on): trace -> deadline
//! (grpc-timeout, propagated from the inbound call) -> buffering of requests that may be
//! resent -> retry on another endpoint -> one attempt: pick
//! (round-robin, consistent-hash or p2c over peak EWMA, skipping ejected endpoints), send
//! on the endpoint's tonic `Channel` (mutual TLS when [`MeshConfig::tls`] is set, see
//! [`tls`]), eject it if it fails.

mod backoff;
mod balance;
mod client;
#[cfg(any(test, feature = "contract"))]
pub mod contract;
pub mod deadline;
mod etcd;
mod instance;
mod memory;
mod registry;
pub mod tls;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

pub use balance::Policy;
pub use client::{
    EndpointStats, Mesh, MeshChannel, MeshConfig, MeshError, DEFAULT_ZONE_SPILL_IN_FLIGHT,
};
pub use deadline::{current_deadline, propagate_deadline, DeadlineLayer};
pub use etcd::{EtcdConfig, EtcdRegistry, EtcdUser};
/// TLS settings for etcd connections (etcd-client's, which are tonic's).
pub use etcd_client::TlsOptions as EtcdTls;
pub use instance::{EndpointSet, ServiceInstance};
pub use memory::MemoryRegistry;
pub use registry::{Claim, DiscoveryError, EndpointWatch, Registration, Registry, ServingHandle};
pub use tls::MeshTls;

/// gRPC's retry pushback header: a negative value tells the caller not to retry (see
/// gRFC A6). A service sets it on failures of a dependency that every replica shares, and
/// the mesh channel then neither retries the call elsewhere nor ejects the endpoint.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Request metadata naming one logical write (as the IETF draft's `Idempotency-Key` HTTP
/// header does): a service that honours it applies the write once however often it comes
/// (tweet's `CreateTweet`), so the mesh channel may resend a call that carries it, as it
/// resends the methods the `.proto` marks idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Waits until the watched set satisfies `pred`, for at most `timeout`. Returns the set that
/// satisfied it. This is how callers await a condition instead of sleeping.
pub async fn wait_for(
    watch: &mut EndpointWatch,
    timeout: Duration,
    mut pred: impl FnMut(&EndpointSet) -> bool,
) -> Result<Arc<EndpointSet>, DiscoveryError> {
    let fut = async {
        loop {
            {
                let set = watch.borrow_and_update();
                if pred(&set) {
                    return Ok(set.clone());
                }
            }
            if watch.changed().await.is_err() {
                // The producer is gone: the set can no longer change.
                let set = watch.borrow().clone();
                return if pred(&set) {
                    Ok(set)
                } else {
                    Err(DiscoveryError::Timeout(timeout))
                };
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| DiscoveryError::Timeout(timeout))?
}
