//! gRPC through the gateway: native gRPC on the HTTP port (HTTP/2) and on the gRPC port,
//! and gRPC-Web on the HTTP port, all served by one [`door`]:
//!
//! * `starling.auth.v1.AuthService` (`accounts.rs`): sign-up, sign-in and sign-out with the
//!   JSON API's accounts and tokens;
//! * grpc.health.v1 (each service's status follows the mesh: SERVING while it has an
//!   endpoint) and server reflection v1 and v1alpha from the services' descriptor set, so
//!   `grpcurl -plaintext <gateway> list` shows every service;
//! * every other `/starling.<svc>.v1.<Service>/<Method>` call, checked by `calls.rs`
//!   (public reads, a signed-in user's own writes) and sent, untouched, through the mesh
//!   channel of `<svc>` by [`Forwarder`]: balancing, retries of idempotent methods,
//!   ejection and deadlines are the mesh's, exactly as for a Rust client inside the mesh.
//!   Nothing is decoded on the way but a write's acting user, so a new read method needs
//!   no gateway change.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use starling_discovery::{DeadlineLayer, Mesh};
use starling_proto::auth::v1::auth_service_server::AuthServiceServer;
use starling_runtime::metrics::CallMetricsLayer;
use starling_runtime::ServiceKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::Status;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::accounts::Accounts;
use crate::calls::UserCalls;
use crate::AppState;

/// How often the gRPC port's health statuses are brought in line with the mesh.
const HEALTH_REFRESH: Duration = Duration::from_secs(1);

/// The service a gRPC path belongs to: `/starling.tweet.v1.TweetService/GetTweet` →
/// `tweet`. `None` for anything that is not one of the five Starling services.
pub fn target_service(path: &str) -> Option<ServiceKind> {
    let rest = path.strip_prefix("/starling.")?;
    let (full_service, method) = rest.split_once('/')?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    let grpc_name = format!("starling.{full_service}");
    ServiceKind::ALL
        .into_iter()
        .find(|k| k.grpc_name() == grpc_name)
}

/// Forwards Starling gRPC calls through the mesh (see the module docs). Who may make
/// which call is decided before it, by `calls::UserCalls`.
#[derive(Clone)]
pub struct Forwarder {
    mesh: Arc<Mesh>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(mesh: Arc<Mesh>) -> Self {
        Self { mesh }
    }
}

/// A gRPC error answer ("trailers-only": the status in the headers).
fn status_response(status: Status) -> http::Response<Body> {
    status.into_http::<Body>()
}

impl<B> Service<http::Request<B>> for Forwarder
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let Some(kind) = target_service(&path) else {
            return Box::pin(async move {
                Ok(status_response(Status::unimplemented(format!(
                    "the gateway forwards only starling.<service>.v1 calls (got {path})"
                ))))
            });
        };
        let channel = self.mesh.channel(kind.name());
        let (mut parts, body) = req.into_parts();
        // The mesh speaks HTTP/2 to the services whatever the client spoke to us (gRPC-Web
        // arrives over HTTP/1.1); the channel sets scheme and authority per endpoint.
        parts.version = http::Version::HTTP_2;
        parts.headers.remove(http::header::HOST);
        let req = http::Request::from_parts(parts, Body::new(body));
        Box::pin(async move {
            match channel.oneshot(req).await {
                Ok(resp) => Ok(resp),
                Err(e) => {
                    let status = Status::from_error(e);
                    tracing::debug!(%path, code = ?status.code(), message = status.message(), "forwarded call failed in the mesh");
                    Ok(status_response(status))
                }
            }
        })
    }
}

/// What every gRPC door of the gateway serves (native gRPC on the HTTP and gRPC ports,
/// gRPC-Web on the HTTP port): `AuthService`, health and reflection locally, and every
/// Starling call through [`UserCalls`] (public reads, a user's own writes) to the mesh;
/// counted by method, with the caller's deadline in scope.
pub type GrpcDoor =
    tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

pub fn door(state: AppState, health: &HealthReporter) -> anyhow::Result<GrpcDoor> {
    let (reflection_v1, reflection_v1alpha) = starling_runtime::server::reflection()?;
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.clone()),
    );
    let mut builder = tonic::service::Routes::builder();
    builder
        .add_service(AuthServiceServer::new(Accounts::new(state.clone())))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let router = builder
        .routes()
        .into_axum_router()
        .fallback_service(UserCalls::new(state));
    let service = ServiceBuilder::new()
        .layer(starling_discovery::trace::TraceLayer::server("gateway"))
        .layer(CallMetricsLayer::new("gateway"))
        .layer(DeadlineLayer)
        .service(router);
    let service =
        ServiceExt::<http::Request<Body>>::map_response(service, |r: axum::response::Response| {
            r.map(Body::new)
        });
    Ok(tower::util::BoxCloneSyncService::new(service))
}

/// gRPC-Web on the HTTP port: tonic-web's grpc-web ⇄ grpc translation in front of the
/// same [`door`] as native gRPC.
pub type GrpcWeb = tonic_web::GrpcWebService<GrpcDoor>;

pub fn grpc_web(door: GrpcDoor) -> GrpcWeb {
    tonic_web::GrpcWebLayer::new().layer(door)
}

/// True for native gRPC (not gRPC-Web): `application/grpc`, `application/grpc+proto`, ...
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
        })
}

/// True for the content types gRPC-Web clients send.
pub fn is_grpc_web(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"))
}

/// The running gRPC port.
pub struct GrpcServer {
    pub local_addr: SocketAddr,
    pub health: HealthReporter,
    pub server: JoinHandle<Result<(), tonic::transport::Error>>,
    pub health_task: JoinHandle<()>,
}

/// Binds `addr` and serves `door` on it until `shutdown` turns true; `health` is the
/// door's health reporter, kept in line with the mesh.
pub async fn serve(
    addr: SocketAddr,
    door: GrpcDoor,
    health: HealthReporter,
    mesh: Arc<Mesh>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<GrpcServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (gRPC)"))?;
    let local_addr = listener.local_addr()?;
    health.set_service_status("", ServingStatus::Serving).await;

    let router = axum::Router::new()
        .fallback_service(door.map_request(|r: http::Request<axum::body::Body>| r.map(Body::new)));
    let mut stop = shutdown.clone();
    let server = starling_runtime::server::grpc_server()
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        );
    let server = tokio::spawn(server);

    let reporter = health.clone();
    let health_task = tokio::spawn(async move {
        loop {
            for kind in ServiceKind::ALL {
                let status = if mesh.channel(kind.name()).endpoints().is_empty() {
                    ServingStatus::NotServing
                } else {
                    ServingStatus::Serving
                };
                reporter.set_service_status(kind.grpc_name(), status).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_REFRESH) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
    Ok(GrpcServer {
        local_addr,
        health,
        server,
        health_task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_services() {
        assert_eq!(
            target_service("/starling.tweet.v1.TweetService/GetTweet"),
            Some(ServiceKind::Tweet)
        );
        assert_eq!(
            target_service("/starling.recommendation.v1.RecommendationService/Recommend"),
            Some(ServiceKind::Recommendation)
        );
        assert_eq!(target_service("/starling.tweet.v1.Nope/GetTweet"), None);
        assert_eq!(target_service("/starling.tweet.v1.TweetService/"), None);
        assert_eq!(target_service("/grpc.health.v1.Health/Check"), None);
        assert_eq!(target_service("/api/tweets"), None);
    }

    #[test]
    fn grpc_web_is_told_by_content_type() {
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc_web(&h));
        h.insert(
            http::header::CONTENT_TYPE,
            "application/grpc-web+proto".parse().unwrap(),
        );
        assert!(is_grpc_web(&h));
        h.insert(
            http::header::CONTENT_TYPE,
            "application/grpc".parse().unwrap(),
        );
        assert!(!is_grpc_web(&h));
    }
}
