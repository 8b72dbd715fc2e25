//! `/healthz` and `/readyz`, for load balancers and orchestrators.
//!
//! Liveness and readiness answer different questions: `/healthz` says the gateway process
//! serves HTTP at all (restart it if not), `/readyz` says it can do useful work, which for
//! a gateway means every service it fronts is reachable (each of the five has at least one
//! endpoint in the mesh), its own store (the accounts) answers, and the event bus has not
//! been away for longer than the services' own grace ([`starling_runtime::server::BUS_GRACE`] by default: within it, writes wait
//! in the services' outboxes and nothing is lost, so a short broker outage does not take
//! the site down). A gateway that is not ready should get no traffic, but must not be
//! restarted for it (the cause is elsewhere).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use std::time::Duration;

use starling_discovery::Mesh;
use starling_runtime::events::EventBus;
use starling_runtime::health::Component;
use starling_runtime::ServiceKind;
use tokio::sync::watch;

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

/// How often the bus is pinged in the background.
const BUS_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Keeps `component` up to date with whether the bus answers, until `stop` turns true.
/// In the background rather than per request: a broker that does not answer costs a
/// metadata timeout, which a load balancer's probe should not wait for.
pub async fn watch_bus(
    bus: std::sync::Arc<dyn EventBus>,
    component: Component,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(BUS_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        component.set(bus.ping().await.map_err(|e| e.to_string()));
    }
}

/// `GET /readyz`: 200 `ready` when all five services have endpoints, the store answers
/// and the bus has answered within the configured grace, else 503 saying what is missing.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let missing = missing_services(&state.ctx.mesh);
    let ping = tokio::time::timeout(Duration::from_secs(1), state.ctx.store.ping());
    let store_ok = matches!(ping.await, Ok(Ok(())));
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("no endpoints for {}", missing.join(", ")));
    }
    if !store_ok {
        problems.push("the store does not answer".to_string());
    }
    if let Some(away) = state
        .bus_health
        .failing_for()
        .filter(|d| *d >= state.bus_grace)
    {
        problems.push(format!(
            "the event bus has not answered for {} s",
            away.as_secs()
        ));
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
