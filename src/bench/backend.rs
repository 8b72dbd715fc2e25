//! A minimal gRPC backend for benchmarks and balancer tests: grpc.health.v1 `Check`, an
//! adjustable artificial delay (to play a slow instance) and the instance header, so a
//! caller can see which backend answered. With a [`MeshTls`] it serves as a real instance
//! does: mutual TLS, and every call authorized by the caller's identity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_discovery::MeshTls;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tower::ServiceBuilder;

/// Response header carrying the backend's id (same name as real instances use).
pub use starling_runtime::server::INSTANCE_HEADER;

pub struct TestBackend {
    pub addr: SocketAddr,
    pub id: String,
    delay_us: Arc<AtomicU64>,
    last_grpc_timeout: Arc<Mutex<Option<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestBackend {
    /// Starts a backend on a free loopback port.
    pub async fn start(id: &str, delay: Duration) -> std::io::Result<Self> {
        Self::start_with(id, delay, None).await
    }

    /// [`TestBackend::start`], on mutual TLS with identity `tls` (and the default policy,
    /// trust domain `starling`) when given.
    pub async fn start_with(
        id: &str,
        delay: Duration,
        tls: Option<MeshTls>,
    ) -> std::io::Result<Self> {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("valid address"))?
            .with_nodelay(Some(true));
        let addr = incoming.local_addr()?;
        let delay_us = Arc::new(AtomicU64::new(delay.as_micros() as u64));
        let (_reporter, health) = tonic_health::server::health_reporter();
        let header: http::HeaderValue = id
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
        let d = delay_us.clone();
        let last_grpc_timeout = Arc::new(Mutex::new(None));
        let seen = last_grpc_timeout.clone();
        let layers = ServiceBuilder::new()
            .map_request(move |r: http::Request<tonic::body::Body>| {
                let t = r
                    .headers()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok());
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = t.map(str::to_string);
                r
            })
            .map_response(move |mut r: http::Response<tonic::body::Body>| {
                r.headers_mut().insert(INSTANCE_HEADER, header.clone());
                r
            })
            .map_future(move |fut| {
                let us = d.load(Ordering::Relaxed);
                async move {
                    if us > 0 {
                        tokio::time::sleep(Duration::from_micros(us)).await;
                    }
                    fut.await
                }
            })
            .into_inner();
        let (stop, stopped) = oneshot::channel::<()>();
        let authz = tls.as_ref().map(|_| {
            starling_runtime::authz::AuthzLayer::new(
                starling_runtime::authz::Policy::default_policy(),
                "starling",
            )
        });
        let router = tonic::transport::Server::builder()
            .layer(ServiceBuilder::new().option_layer(authz).layer(layers))
            .add_service(health);
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = match tls {
            Some(tls) => {
                let server = router.serve_with_incoming_shutdown(
                    starling_discovery::tls::incoming(incoming, tls),
                    shutdown,
                );
                tokio::spawn(async move {
                    if let Err(e) = server.await {
                        tracing::warn!(error = %e, "test backend stopped with an error");
                    }
                })
            }
            None => {
                let server = router.serve_with_incoming_shutdown(incoming, shutdown);
                tokio::spawn(async move {
                    if let Err(e) = server.await {
                        tracing::warn!(error = %e, "test backend stopped with an error");
                    }
                })
            }
        };
        Ok(Self {
            addr,
            id: id.to_string(),
            delay_us,
            last_grpc_timeout,
            stop: Some(stop),
            task,
        })
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// The `grpc-timeout` header of the last call received, if it had one.
    pub fn last_grpc_timeout(&self) -> Option<String> {
        self.last_grpc_timeout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops accepting and waits for in-flight calls.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}
