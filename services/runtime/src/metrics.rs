//! Prometheus metrics: one recorder per process, served on `/metrics`, and the tower layer
//! that counts and times every inbound call.
//!
//! Names (all prefixed `starling_`):
//! * `server_requests_total{service,method,code}` and
//!   `server_request_duration_seconds{service,method}` (histogram), from [`CallMetricsLayer`];
//! * `client_endpoints{target}`, `client_picks_total{target,endpoint}`,
//!   `client_ejections_total{target,endpoint}`, from the mesh channel (`discovery/`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use. Several services in one process
/// (`starling up`) share it; their series are told apart by the `service` label.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("bucket list is non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a test harness, say);
            // the handle then renders our (empty) registry, which is still well formed.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves `GET /metrics` on `addr` until the process ends. Returns the bound address.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let handle = handle();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%local, "metrics on http://{local}/metrics");
    Ok(local)
}

/// Counts and times each inbound call by method and gRPC status code.
#[derive(Debug, Clone)]
pub struct CallMetricsLayer {
    service: &'static str,
}

impl CallMetricsLayer {
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics {
            inner,
            service: self.service,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallMetrics<S> {
    inner: S,
    service: &'static str,
}

impl<S, B, RB> Service<http::Request<B>> for CallMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let service = self.service;
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            // Unary handlers that fail answer "trailers-only", with grpc-status in the
            // headers; a success carries it in the trailers, so no header means OK.
            let code = match &result {
                Ok(resp) => code_label(resp.headers().get("grpc-status")),
                Err(_) => "transport_error".to_string(),
            };
            metrics::counter!("starling_server_requests_total",
                "service" => service, "method" => method.clone(), "code" => code)
            .increment(1);
            metrics::histogram!("starling_server_request_duration_seconds",
                "service" => service, "method" => method)
            .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// gRPC methods served besides the Starling ones.
const INFRASTRUCTURE_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The `method` label: the gRPC path if it is a method some service has, else `other`.
/// Label values come from a known set, so requests to made-up paths cannot grow `/metrics`.
pub fn method_label(path: &str) -> String {
    static KNOWN: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let mut known = starling_proto::all_methods();
        known.extend(INFRASTRUCTURE_METHODS.iter().map(|m| m.to_string()));
        known
    });
    if known.contains(path) {
        path.to_string()
    } else {
        "other".to_string()
    }
}

/// The `code` label: a gRPC status code (0 to 16; no header means OK), else `other`.
fn code_label(status: Option<&http::HeaderValue>) -> String {
    match status.map(|v| v.to_str().map(str::parse::<u8>)) {
        None => "0".to_string(),
        Some(Ok(Ok(code))) if code <= 16 => code.to_string(),
        Some(_) => "other".to_string(),
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn labels_come_from_known_sets() {
        assert_eq!(
            method_label("/starling.tweet.v1.TweetService/CreateTweet"),
            "/starling.tweet.v1.TweetService/CreateTweet"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/made.up.Service/Method12345"), "other");
        assert_eq!(
            method_label("/starling.tweet.v1.TweetService/Nope"),
            "other"
        );
        assert_eq!(code_label(None), "0");
        assert_eq!(
            code_label(Some(&http::HeaderValue::from_static("14"))),
            "14"
        );
        assert_eq!(
            code_label(Some(&http::HeaderValue::from_static("99"))),
            "other"
        );
        assert_eq!(
            code_label(Some(&http::HeaderValue::from_static("x"))),
            "other"
        );
    }
}
