//! `/healthz` and `/readyz`, for load balancers and orchestrators.
//!
//! Liveness and readiness answer different questions: `/healthz` says the gateway process
//! serves HTTP at all (restart it if not), `/readyz` says it can do useful work, which for
//! a gateway means every service it fronts is reachable (each of the five has at least one
//! endpoint in the mesh) and its own store (the accounts) answers. A gateway that is not ready should get no traffic, but must not be
//! restarted for it (the cause is elsewhere).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use starling_discovery::Mesh;
use starling_runtime::ServiceKind;

use crate::AppState;

/// `GET /healthz`: 200 `ok` while the process serves.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The services with no endpoint in the mesh right now.
pub fn missing_services(mesh: &Mesh) -> Vec<&'static str> {
    ServiceKind::ALL
        .into_iter()
        .filter(|k| mesh.channel(k.name()).endpoints().is_empty())
        .map(|k| k.name())
        .collect()
}

/// `GET /readyz`: 200 `ready` when all five services have endpoints and the store
/// answers, else 503 saying what is missing.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let missing = missing_services(&state.ctx.mesh);
    let ping = tokio::time::timeout(std::time::Duration::from_secs(1), state.ctx.store.ping());
    let store_ok = matches!(ping.await, Ok(Ok(())));
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("no endpoints for {}", missing.join(", ")));
    }
    if !store_ok {
        problems.push("the store does not answer".to_string());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", problems.join("; ")),
        )
    }
}
