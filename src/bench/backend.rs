//! A minimal gRPC backend for benchmarks and balancer tests: grpc.health.v1 `Check`, an
//! adjustable artificial delay (to play a slow instance) and the instance header, so a
//! caller can see which backend answered. With a [`MeshTls`] it serves as a real instance
//! does: mutual TLS, and every call authorized by the caller's identity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_discovery::MeshTls;

/// The service the backends' server spans name.
const TRACED_SERVICE: &str = "bench-backend";
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

/// How a test backend serves, beyond the defaults (no delay, plaintext, no limit, on the
/// caller's runtime).
#[derive(Default)]
pub struct Serving {
    pub delay: Duration,
    /// Mutual TLS with this identity (and the default policy, trust domain `starling`).
    pub tls: Option<MeshTls>,
    /// Calls served at once; more wait in the backend (an instance at its limit).
    pub concurrency_limit: Option<usize>,
    /// Serve from a thread of its own pinned to this CPU, on a runtime of its own (to
    /// share that core with something else, such as a busy loop).
    pub pinned_cpu: Option<usize>,
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
        Self::start_serving(
            id,
            Serving {
                delay,
                tls,
                ..Serving::default()
            },
        )
        .await
    }

    pub async fn start_serving(id: &str, serving: Serving) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let delay_us = Arc::new(AtomicU64::new(serving.delay.as_micros() as u64));
        let header: http::HeaderValue = id
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
        let last_grpc_timeout = Arc::new(Mutex::new(None));
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = {
            let (d, seen) = (delay_us.clone(), last_grpc_timeout.clone());
            move || {
                serve(
                    listener,
                    header,
                    d,
                    seen,
                    serving.tls,
                    serving.concurrency_limit,
                    stopped,
                )
            }
        };
        let task = match serving.pinned_cpu {
            None => tokio::spawn(serve()),
            Some(cpu) => {
                // A thread of its own (not one of tokio's blocking pool, which would stay
                // pinned after the backend stops).
                let thread = std::thread::Builder::new()
                    .name(format!("backend-{id}"))
                    .spawn(move || {
                        pin_current_thread(cpu);
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt.block_on(serve()),
                            Err(e) => tracing::warn!(error = %e, "test backend: no runtime"),
                        }
                    })?;
                tokio::task::spawn_blocking(move || {
                    let _ = thread.join();
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

/// Serves `Check` on `listener` until `stopped`.
async fn serve(
    listener: std::net::TcpListener,
    header: http::HeaderValue,
    d: Arc<AtomicU64>,
    seen: Arc<Mutex<Option<String>>>,
    tls: Option<MeshTls>,
    limit: Option<usize>,
    stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "test backend cannot listen");
            return;
        }
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (_reporter, health) = tonic_health::server::health_reporter();
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
        // One limit for the whole backend, whatever the connections.
        .option_layer(limit.map(tower::limit::GlobalConcurrencyLimitLayer::new))
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
    let authz = tls.as_ref().map(|_| {
        starling_runtime::authz::AuthzLayer::new(
            starling_runtime::authz::Policy::default_policy(),
            "starling",
        )
    });
    // As a service's server: a span per call while tracing is on.
    let traced = starling_discovery::trace::TraceLayer::server(TRACED_SERVICE);
    let router = tonic::transport::Server::builder()
        .layer(
            ServiceBuilder::new()
                .layer(traced)
                .option_layer(authz)
                .layer(layers),
        )
        .add_service(health);
    let shutdown = async {
        let _ = stopped.await;
    };
    let served = match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(
                    starling_discovery::tls::incoming(incoming, tls),
                    shutdown,
                )
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    if let Err(e) = served {
        tracing::warn!(error = %e, "test backend stopped with an error");
    }
}

/// Pins the calling thread to `cpu` (best effort: a machine with fewer CPUs, or without
/// the call, leaves it where it is).
pub fn pin_current_thread(cpu: usize) {
    pin_thread(0, &[cpu]);
}

/// Lets thread `tid` (0: the calling one) run only on `cpus` (best effort).
pub fn pin_thread(tid: i32, cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity
    // only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(tid, ?cpus, "cannot pin the thread to these CPUs");
        }
    }
}

/// Every thread of this process right now (from /proc/self/task).
pub fn own_threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A thread spinning on `cpu` until dropped: a noisy neighbour for whatever else runs
/// there.
pub struct BusyLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyLoop {
    pub fn start(cpu: usize) -> std::io::Result<BusyLoop> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("busy-loop".into())
            .spawn(move || {
                pin_current_thread(cpu);
                let mut x = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            })?;
        Ok(BusyLoop {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
