//! The live mesh view (`/mesh`, see `ui`): every service and instance as this gateway's
//! mesh channels see them (address, zone, version, health, calls, latency, ejections,
//! retries), and every consumer group's lag as its instances report it through the store
//! (`starling_runtime::events::lag`).
//!
//! Clients on the gateway's machine only (see `admin::LocalCaller`).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use starling_runtime::events::lag;
use starling_runtime::ServiceKind;

use crate::admin::LocalCaller;
use crate::AppState;

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
