//! The Starling gateway: how browsers and non-Rust clients reach the mesh (see `API.md`).
//!
//! One HTTP port (`listener.rs`: connection caps and timeouts) serves, told apart by
//! content type:
//! * the JSON API under `/api` (`api.rs`, `auth.rs`, `stream.rs`), the web UI (`ui.rs`),
//!   `/healthz` and `/readyz` (`health.rs`), with CORS open to any origin (the API
//!   authenticates with bearer tokens, never cookies, so a foreign page gains nothing it
//!   could not do with its own token);
//! * native gRPC and gRPC-Web (`grpc.rs`): `AuthService` (`accounts.rs`), health,
//!   reflection, and every `starling.*` call under the JSON API's rules (`calls.rs`)
//!   forwarded through the mesh.
//!
//! The `--grpc` port serves the same gRPC again, for clients that want a port of its own.
//!
//! The gateway is stateless apart from accounts (in the shared store) and the sign-in
//! limiter (in memory), so replicas can run side by side given a shared token secret.
//! This file only composes: configuration, the router, start and stop.

mod accounts;
mod admin;
mod api;
mod auth;
mod calls;
mod errors;
mod grpc;
mod health;
mod listener;
mod mesh_view;
mod openapi;
mod stream;
mod traces;
mod ui;
mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use starling_runtime::{ServiceContext, ServiceKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tower::ServiceExt as _;
use tower_http::cors::CorsLayer;

/// How long [`RunningGateway::stop`] lets in-flight requests finish before closing them.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the gateway listens and how it signs tokens.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The HTTP port: JSON API, web UI, gRPC-Web (port 0 picks a free one).
    pub http: SocketAddr,
    /// The gRPC pass-through port (port 0 picks a free one).
    pub grpc: SocketAddr,
    /// HMAC key for tokens; `None` draws a random one (tokens then end with the process).
    pub token_secret: Option<String>,
    /// How long a token is valid.
    pub token_ttl: Duration,
    /// How long the event bus may be away before `/readyz` fails (the services' own grace,
    /// [`starling_runtime::server::BUS_GRACE`], by default).
    pub bus_grace: Duration,
    /// Connections, timeouts and HTTP/2 limits of the HTTP port.
    pub limits: Limits,
}

impl Default for GatewayConfig {
    /// `127.0.0.1:8080`, `127.0.0.1:8081`, a random secret, 24 h tokens, 30 s bus grace,
    /// [`Limits::default`].
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token_secret: None,
            token_ttl: Duration::from_secs(24 * 3600),
            bus_grace: starling_runtime::server::BUS_GRACE,
            limits: Limits::default(),
        }
    }
}

/// What every HTTP handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) ctx: ServiceContext,
    pub(crate) auth: Arc<auth::Auth>,
    /// Turns true when the gateway stops; open event streams end on it.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Open live-timeline streams, bounded in all and per user and client (`stream.rs`).
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    pub(crate) stream_slots: Arc<stream::StreamSlots>,
    /// Writes per user (see `writes.rs`).
    pub(crate) writes: Arc<writes::WriteLimiter>,
    /// Whether the event bus answers, and for how long it may not (see `health.rs`).
    pub(crate) bus_health: starling_runtime::health::Component,
    pub(crate) bus_grace: Duration,
}

pub use listener::{BodyTimedOut, Limits};
pub use stream::{MAX_STREAMS, MAX_STREAMS_PER_CLIENT, MAX_STREAMS_PER_USER};

/// A serving gateway. [`stop`](RunningGateway::stop) it to finish in-flight requests;
/// dropping it also stops it, without waiting.
pub struct RunningGateway {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    grpc: grpc::GrpcServer,
}

impl std::fmt::Debug for RunningGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningGateway")
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

/// Binds both ports and starts serving; the services are reached through `ctx.mesh` and
/// accounts kept in `ctx.store`.
pub async fn start(config: GatewayConfig, ctx: &ServiceContext) -> anyhow::Result<RunningGateway> {
    let auth = Arc::new(auth::Auth::new(
        config.token_secret.as_deref(),
        config.token_ttl,
    )?);
    // Installs the process's metrics recorder (if nothing did yet), so that what is
    // counted from the first request on shows up on `--metrics` (off the public port: it
    // names internal addresses).
    starling_runtime::metrics::handle();
    // Creating the channels now starts their registry watches, so that readiness and the
    // first calls see the endpoints as soon as they exist.
    for kind in ServiceKind::ALL {
        ctx.mesh.channel(kind.name());
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let state = AppState {
        ctx: ctx.clone(),
        auth,
        shutdown: shutdown_rx.clone(),
        streams: Arc::new(tokio::sync::Semaphore::new(stream::MAX_STREAMS)),
        stream_slots: Arc::default(),
        writes: Arc::new(writes::WriteLimiter::default()),
        bus_health: starling_runtime::health::Component::new("bus"),
        bus_grace: config.bus_grace,
    };
    tokio::spawn(health::watch_bus(
        ctx.bus.clone(),
        state.bus_health.clone(),
        shutdown_rx.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", config.http))?;
    let http_addr = listener.local_addr()?;
    let health = tonic_health::server::HealthReporter::new();
    let door = grpc::door(state.clone(), &health)?;
    let grpc = grpc::serve(
        config.grpc,
        door.clone(),
        health,
        ctx.mesh.clone(),
        shutdown_rx.clone(),
    )
    .await?;

    let app = router(state, door);
    let http = tokio::spawn(listener::serve(listener, app, config.limits, shutdown_rx));
    tracing::info!(%http_addr, grpc_addr = %grpc.local_addr, "gateway serving");
    Ok(RunningGateway {
        http_addr,
        grpc_addr: grpc.local_addr,
        shutdown,
        http,
        grpc,
    })
}

impl RunningGateway {
    /// Marks the gRPC port NOT_SERVING, stops accepting, ends open event streams and waits
    /// (at most 10 s) for in-flight requests to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        let RunningGateway {
            http_addr,
            shutdown,
            mut http,
            grpc,
            ..
        } = self;
        let grpc::GrpcServer {
            mut health,
            server: mut grpc_server,
            health_task,
            ..
        } = grpc;
        health_task.abort();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for kind in ServiceKind::ALL {
            health.clear_service_status(kind.grpc_name()).await;
        }
        // Ends open health Watch streams, which would otherwise hold the shutdown open.
        health.clear_service_status("").await;
        shutdown.send_replace(true);

        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let http_result = match tokio::time::timeout_at(deadline, &mut http).await {
            Ok(joined) => joined.context("HTTP server task")?.context("HTTP server"),
            Err(_) => {
                tracing::warn!("HTTP requests did not finish in time; closing them");
                http.abort();
                Ok(())
            }
        };
        let grpc_result = match tokio::time::timeout_at(deadline, &mut grpc_server).await {
            Ok(joined) => joined.context("gRPC server task")?.context("gRPC server"),
            Err(_) => {
                tracing::warn!("gRPC calls did not finish in time; closing them");
                grpc_server.abort();
                Ok(())
            }
        };
        tracing::info!(%http_addr, "gateway stopped");
        http_result.and(grpc_result)
    }
}

/// The largest JSON body the API reads (a tweet is at most 280 characters; the largest
/// request is a few hundred bytes): more answers 413 before it is buffered.
pub const JSON_BODY_LIMIT: usize = 16 * 1024;

/// The HTTP port's routes and layers.
fn router(state: AppState, door: grpc::GrpcDoor) -> Router {
    let doors = GrpcDoors {
        web: grpc::grpc_web(door.clone()),
        native: door,
    };
    let (api, doc) = openapi::api_routes().split_for_parts();
    let doc = Arc::new(doc);
    Router::new()
        .route("/", get(ui::index))
        .route("/app.js", get(ui::app_js))
        .route("/style.css", get(ui::style_css))
        .route("/traces", get(ui::traces_html))
        .route("/traces.js", get(ui::traces_js))
        .route("/mesh", get(ui::mesh_html))
        .route("/mesh.js", get(ui::mesh_js))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json).with_state(doc))
        .merge(api)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(state)
        // Outermost last: CORS answers preflights for everything, gRPC-Web included.
        .layer(middleware::from_fn(http_metrics))
        .layer(middleware::from_fn_with_state(doors, grpc_dispatch))
        .layer(CorsLayer::permissive())
        .layer(middleware::from_fn(http_trace))
}

/// A `server` span of the gateway per request, child of the caller's `traceparent` (a
/// browser or client may send one), when tracing is on (see `starling_discovery::trace`):
/// the root of the trace of everything the request causes.
async fn http_trace(req: Request, next: Next) -> Response {
    use starling_discovery::trace;
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !trace::enabled() {
        return next.run(req).await;
    }
    let path = req.uri().path();
    let span = tracing::info_span!(
        "http.server",
        otel.name = format!("{} {}", req.method(), &path[..path.len().min(80)]),
        otel.kind = "server",
        service.name = "gateway",
        http.request.method = %req.method(),
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let _ = span.set_parent(trace::extract(req.headers()));
    trace::record_trace_id(&span);
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    resp
}

/// The gRPC doors of the HTTP port (see `grpc::door`).
#[derive(Clone)]
struct GrpcDoors {
    web: grpc::GrpcWeb,
    native: grpc::GrpcDoor,
}

/// Sends gRPC-Web requests to tonic-web, native gRPC (HTTP/2) to the gRPC door, and
/// everything else on, told apart by content type: one port serves them all.
async fn grpc_dispatch(State(doors): State<GrpcDoors>, req: Request, next: Next) -> Response {
    if grpc::is_grpc_web(req.headers()) {
        return match doors.web.oneshot(req).await {
            Ok(resp) => resp.into_response(),
            Err(never) => match never {},
        };
    }
    if grpc::is_grpc(req.headers()) {
        let req = req.map(tonic::body::Body::new);
        return match doors.native.oneshot(req).await {
            Ok(resp) => resp.into_response(),
            Err(never) => match never {},
        };
    }
    next.run(req).await
}

/// `starling_gateway_http_requests_total{method,route,status}` and
/// `starling_gateway_http_request_duration_seconds{method,route}`. The route is the
/// pattern (`/api/users/{user}`), never the raw path, to keep the label set bounded.
async fn http_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Made-up methods are all `other`: label values come from a known set.
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS => req.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics::counter!("starling_gateway_http_requests_total",
        "method" => method.clone(), "route" => route.clone(),
        "status" => resp.status().as_u16().to_string())
    .increment(1);
    metrics::histogram!("starling_gateway_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    resp
}
