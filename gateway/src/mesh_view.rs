//! The live mesh view (`/mesh`, see `ui`): every service and instance as this gateway's
//! mesh channels see them (address, zone, version, health, calls, latency, ejections,
//! retries), and every consumer group's lag as its instances report it through the store
//! (`starling_runtime::events::lag`).
//!
//! Admin pages ([`LocalCaller`]) answer only clients on this machine: they show internal
//! addresses (as `/metrics` does, which is never on the public port) and, for traces,
//! what other users did.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use serde::Serialize;
use starling_runtime::events::lag;
use starling_runtime::ServiceKind;

use crate::errors::ApiError;
use crate::AppState;

/// A request from a loopback address (403 otherwise).
pub struct LocalCaller;

impl<S: Send + Sync> FromRequestParts<S> for LocalCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        match peer {
            Some(ip) if ip.is_loopback() => Ok(LocalCaller),
            _ => Err(ApiError::forbidden(
                "admin pages answer clients on the gateway's own machine only (they show internal addresses)",
            )),
        }
    }
}

/// One instance, as this gateway's balancer sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceJson {
    pub id: String,
    pub address: String,
    pub zone: String,
    pub version: String,
    /// Its own health verdict, as registered.
    pub serving: bool,
    /// Out of this gateway's rotation now (it failed recently).
    pub ejected: bool,
    /// Calls this gateway sent it since it first saw it (the page turns these into calls/s).
    pub calls: u64,
    pub ejections: u64,
    pub in_flight: usize,
    /// The balancer's peak-EWMA latency estimate.
    pub latency_ms: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceJson {
    pub name: String,
    /// Retries this gateway made on calls to the service.
    pub retries: u64,
    pub instances: Vec<InstanceJson>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerJson {
    pub topic: String,
    pub group: String,
    /// Instances of the group that reported in the last 10 s.
    pub members: usize,
    /// How long the oldest event any of them holds has waited (0 when idle).
    pub oldest_pending_s: f64,
    /// Events in hand, all instances together.
    pub in_flight: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeshJson {
    /// When the gateway read these figures (ms since the Unix epoch): the page divides
    /// call counts by the time between two readings.
    pub sampled_at_ms: i64,
    pub services: Vec<ServiceJson>,
    /// Every consumer group of the catalogue; empty when the store does not answer.
    pub consumers: Vec<ConsumerJson>,
}

#[utoipa::path(get, path = "/api/admin/mesh", tag = "admin",
    responses(
        (status = 200, description = "every service and instance, and every consumer group's lag", body = MeshJson),
        (status = 403, description = "not from the gateway's machine", body = crate::api::ErrorBody),
    ))]
pub async fn mesh(_: LocalCaller, State(state): State<AppState>) -> Json<MeshJson> {
    let services = ServiceKind::ALL
        .iter()
        .map(|kind| {
            let (endpoints, retries) = state.ctx.mesh.channel(kind.name()).stats();
            let mut instances: Vec<InstanceJson> = endpoints
                .into_iter()
                .map(|e| InstanceJson {
                    id: e.instance.id,
                    address: e.instance.address,
                    zone: e.instance.zone,
                    version: e.instance.version,
                    serving: e.serving,
                    ejected: e.ejected,
                    calls: e.calls,
                    ejections: e.ejections,
                    in_flight: e.in_flight,
                    latency_ms: e.latency_ms,
                })
                .collect();
            instances.sort_by(|a, b| a.address.cmp(&b.address));
            ServiceJson {
                name: kind.name().to_string(),
                retries,
                instances,
            }
        })
        .collect();
    let consumers = lag::read(state.ctx.store.as_ref())
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|l| ConsumerJson {
            topic: l.topic,
            group: l.group,
            members: l.members,
            oldest_pending_s: l.oldest_pending_s,
            in_flight: l.in_flight,
        })
        .collect();
    Json(MeshJson {
        sampled_at_ms: starling_runtime::events::now_ms(),
        services,
        consumers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn from(peer: Option<&str>) -> Result<LocalCaller, ApiError> {
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        if let Some(p) = peer {
            parts
                .extensions
                .insert(ConnectInfo(p.parse::<SocketAddr>().unwrap()));
        }
        LocalCaller::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn admin_pages_answer_loopback_clients_only() {
        for ok in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert!(from(Some(ok)).await.is_ok(), "{ok}");
        }
        for refused in [Some("10.0.0.7:5000"), Some("[2001:db8::1]:5000"), None] {
            let e = from(refused).await.err().expect("refused");
            assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN, "{refused:?}");
        }
    }
}
