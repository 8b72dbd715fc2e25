//! gRPC through the gateway: the pass-through port and gRPC-Web on the HTTP port.
//!
//! [`Forwarder`] is a tower service that takes any `/starling.<svc>.v1.<Service>/<Method>`
//! call and sends it, untouched, through the mesh channel of `<svc>`: balancing, retries of
//! idempotent methods, ejection and deadlines are the mesh's, exactly as for a Rust client
//! inside the mesh. Nothing is decoded, so a new method needs no gateway change.
//!
//! The gRPC port ([`serve`]) puts the forwarder behind grpc.health.v1 and server reflection
//! (v1 and v1alpha) served locally from the same descriptor set the services use, so
//! `grpcurl -plaintext <gateway> list` shows the five services. The health status of each
//! service name follows the mesh: SERVING while it has at least one endpoint.
//!
//! On the HTTP port, requests whose content-type starts with `application/grpc-web` go
//! through tonic-web's translation layer ([`grpc_web`]) into the same forwarder.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use starling_discovery::{DeadlineLayer, Mesh};
use starling_runtime::metrics::{CallMetrics, CallMetricsLayer};
use starling_runtime::ServiceKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::Status;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

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

/// Forwards Starling gRPC calls through the mesh (see the module docs).
#[derive(Clone)]
pub struct Forwarder {
    mesh: Arc<Mesh>,
    /// When set, only these paths pass (the reads); anything else is PERMISSION_DENIED.
    allowed: Option<Arc<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Forwards every Starling call: for the gRPC port, which is for trusted networks
    /// (other services, operators) and has no accounts.
    pub fn new(mesh: Arc<Mesh>) -> Self {
        Self {
            mesh,
            allowed: None,
        }
    }

    /// Forwards only the methods declared `NO_SIDE_EFFECTS` in the .proto files: for
    /// gRPC-Web on the public HTTP port, where writes must go through the JSON API with a
    /// token (a write here could name any author or follower).
    pub fn read_only(mesh: Arc<Mesh>) -> Self {
        Self {
            mesh,
            allowed: Some(Arc::new(starling_proto::read_only_methods())),
        }
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
        if let Some(allowed) = &self.allowed {
            if !allowed.contains(&path) {
                return Box::pin(async move {
                    Ok(status_response(Status::permission_denied(format!(
                        "{path} changes data: use the JSON API with a sign-in token (gRPC-Web \
                         serves reads only)"
                    ))))
                });
            }
        }
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

/// The gRPC-Web endpoint of the HTTP port: tonic-web's grpc-web ⇄ grpc translation in
/// front of a read-only forwarder, counted like the gRPC port's calls.
pub type GrpcWeb = tonic_web::GrpcWebService<CallMetrics<Forwarder>>;

pub fn grpc_web(mesh: Arc<Mesh>) -> GrpcWeb {
    tonic_web::GrpcWebLayer::new()
        .layer(CallMetricsLayer::new("gateway").layer(Forwarder::read_only(mesh)))
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

/// Binds `addr` and serves the gRPC port until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    mesh: Arc<Mesh>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<GrpcServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (gRPC)"))?;
    let local_addr = listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let (reflection_v1, reflection_v1alpha) = starling_runtime::server::reflection()?;

    let mut builder = tonic::service::Routes::builder();
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // Everything that is not health or reflection is forwarded.
    let router = builder
        .routes()
        .into_axum_router()
        .fallback_service(Forwarder::new(mesh.clone()));

    let layers = ServiceBuilder::new()
        .layer(CallMetricsLayer::new("gateway"))
        .layer(DeadlineLayer)
        .into_inner();
    let mut stop = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .layer(layers)
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
