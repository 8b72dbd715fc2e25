//! Test harness for the end-to-end tests: real etcd processes (one per test, so a test can
//! stop, restart and wipe its own), `starling serve` child processes, and a paced load
//! generator that counts every failed call.
//!
//! A backend binary that is missing makes a test skip with a loud message on a developer
//! machine, and fail under `CI=true`: CI must never pass by skipping.

#![allow(dead_code)]

pub mod delay;
pub mod etcd_cluster;
pub mod netns;
pub mod up;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_discovery::{EtcdConfig, EtcdRegistry, MeshChannel};
use starling_proto::tagger::v1::tagger_service_client::TaggerServiceClient;
use starling_proto::tagger::v1::ListTagsRequest;

pub const INSTANCE_HEADER: &str = "starling-instance";

pub fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Timing-sensitive tests hold this for their whole run so they do not compete for the
/// 2 cores. (An async mutex: each test has its own runtime, and the guard spans awaits.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The binary, or `None` (skip) off CI; a panic under CI.
pub fn require_binary(name: &str) -> Option<PathBuf> {
    match find_binary(name) {
        Some(p) => Some(p),
        None if ci() => panic!("{name} is not installed, and CI=true forbids skipping (scripts/install-deps.sh installs it)"),
        None => {
            eprintln!("SKIPPED: {name} is not installed (scripts/install-deps.sh installs it)");
            None
        }
    }
}

/// A backend started by `scripts/test.sh` (its address from `var`), or `None` (skip) off
/// CI; a panic under CI.
pub fn shared(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if ci() => panic!("{var} is not set: CI must run the tests through scripts/test.sh"),
        _ => {
            eprintln!("SKIPPED: {var} not set (scripts/test.sh starts the shared backends)");
            None
        }
    }
}

/// A namespace no other test or earlier run uses (isolates etcd keys, Redis keys, topics).
pub fn fresh_namespace(tag: &str) -> String {
    format!("t{tag}{:08x}", rand::random::<u32>())
}

/// A CA made for one test and certificates for every service, `gateway` and `admin` in
/// trust domain `namespace`, as `starling ca` writes them.
pub fn pki(namespace: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = starling::ca::Authority::new(1).expect("a CA");
    starling::ca::write_identities(dir.path(), &ca, namespace, 1, starling::ca::MESH_IDENTITIES)
        .expect("identities");
    dir
}

/// The five services on the embedded backends; authors with more than `celebrity`
/// followers are not fanned out.
pub async fn embedded_app(
    namespace: &str,
    celebrity: u64,
) -> (
    starling_runtime::ServiceContext,
    Vec<starling_runtime::RunningService>,
) {
    let backends = starling::cli::BackendArgs {
        redis: None,
        redis_cluster: false,
        redis_replica_acks: 0,
        redis_pool: 1,
        redis_ca: None,
        kafka: None,
        kafka_options: Vec::new(),
        kafka_partitions: starling_runtime::events::topics::PARTITIONS,
        kafka_replication_factor: 1,
        kafka_min_insync_replicas: None,
        celebrity_threshold: celebrity,
        fanout_page: 1_000,
    };
    let mesh = starling::cli::MeshArgs {
        etcd_security: Default::default(),
        zone: String::new(),
        zone_spill_in_flight: starling_discovery::DEFAULT_ZONE_SPILL_IN_FLIGHT as u64,
        namespace: namespace.into(),
        lease_ttl: 10,
        claim_ttl: 60,
        policies: Vec::new(),
        call_timeout_ms: 5_000,
        no_endpoint_timeout_ms: 2_000,
        attempt_timeout_ms: 1_000,
    };
    let ctx = starling::services::context(&backends, &mesh, &[])
        .await
        .expect("embedded context");
    let running = starling::up::start_all(
        &ctx,
        &starling_runtime::ServiceKind::ALL,
        "127.0.0.1".parse().unwrap(),
        1,
        false,
    )
    .await
    .expect("services");
    (ctx, running)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes. For conditions that have
/// no notification to await (a process's view of etcd, an OS process state).
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `path` from `addr` (plain HTTP/1.1) and returns the whole response, headers
/// included; empty when the server cannot be reached within 2 s.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// One etcd server on loopback with its own data directory.
pub struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    pub async fn start() -> Option<Etcd> {
        let bin = require_binary("etcd")?;
        let mut etcd = Etcd {
            bin,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.spawn().await;
        Some(etcd)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log file");
        let child = Command::new(&self.bin)
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let url = self.url();
        let ready = eventually(Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                match etcd_client::Client::connect([url], None).await {
                    Ok(mut c) => c.get("probe", None).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(ready, "etcd did not become ready on {}", self.url());
    }

    /// SIGKILL: the harshest outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports, with its data or (`wipe`) without.
    pub async fn restart(&mut self, wipe: bool) {
        self.kill();
        if wipe {
            let _ = std::fs::remove_dir_all(self.dir.path().join("data"));
        }
        self.spawn().await;
    }

    pub async fn registry(&self, namespace: &str, lease_ttl: Duration) -> EtcdRegistry {
        let mut config = EtcdConfig::new(vec![self.url()]);
        config.namespace = namespace.to_string();
        config.lease_ttl = lease_ttl;
        config.request_timeout = Duration::from_secs(1);
        config.relist_grace = lease_ttl * 3;
        EtcdRegistry::connect(config).await.expect("etcd client")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Tansu broker's binary, or `None` (skip) off CI; a panic under CI.
pub fn tansu_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/find-tansu.py"
        ))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(PathBuf::from(
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )),
        _ if ci() => panic!("tansu is not installed, and CI=true forbids skipping (scripts/install-deps.sh installs it)"),
        _ => {
            eprintln!("SKIPPED: tansu is not installed (scripts/install-deps.sh installs it)");
            None
        }
    }
}

/// A Kafka-protocol broker (Tansu, memory storage) of one test's own, so the test can kill
/// and restart it. A restart loses every topic, as Tansu keeps them in memory.
pub struct Broker {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// `None` (skip) off CI when Tansu is not installed; a panic under CI.
    pub async fn start() -> Option<Broker> {
        let bin = tansu_binary()?;
        let mut broker = Broker {
            bin,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        broker.spawn().await;
        Some(broker)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("log file");
        let child = Command::new(&self.bin)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(30), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "tansu did not start on port {port}");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `bytes` of the broker's log (for a failing test's message).
    pub fn log_tail(&self, bytes: usize) -> String {
        let log = std::fs::read(self.dir.path().join("tansu.log")).unwrap_or_default();
        String::from_utf8_lossy(&log[log.len().saturating_sub(bytes)..]).into_owned()
    }

    /// Kills the broker and starts it again on the same port, with no topics.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything an application test runs against: the shared Redis and Kafka-protocol broker
/// of `scripts/test.sh`, an etcd of its own, and a namespace no other test uses.
pub struct AppBackends {
    pub redis: String,
    pub kafka: String,
    pub etcd: Etcd,
    pub namespace: String,
    /// Every service's certificate and `admin`'s (the tests' own), from a CA made for
    /// the test: instances run on mutual TLS, as in production.
    pub pki: tempfile::TempDir,
}

impl AppBackends {
    /// `None` (skip) when a backend is missing off CI; a panic under CI.
    pub async fn start(tag: &str) -> Option<AppBackends> {
        let redis = shared("STARLING_TEST_REDIS")?;
        let kafka = shared("STARLING_TEST_KAFKA")?;
        let etcd = Etcd::start().await?;
        let namespace = fresh_namespace(tag);
        Some(AppBackends {
            redis,
            kafka,
            etcd,
            pki: pki(&namespace),
            namespace,
        })
    }

    /// The tests' identity, `admin`.
    pub fn admin_tls(&self) -> starling_discovery::MeshTls {
        starling_discovery::MeshTls::from_dir(self.pki.path(), "admin").expect("admin identity")
    }

    /// A mesh on these backends calling as `admin` over mutual TLS, once each of
    /// `services` has an endpoint (at most 15 s each).
    pub async fn admin_mesh(&self, services: &[&str]) -> starling_discovery::Mesh {
        let registry = Arc::new(self.etcd.registry(&self.namespace, LEASE_TTL).await);
        let mut config = starling_discovery::MeshConfig::new(starling_proto::idempotent_methods());
        config.tls = Some(self.admin_tls());
        let mesh = starling_discovery::Mesh::new(registry, config);
        for s in services {
            assert!(
                mesh.channel(s)
                    .wait_for_endpoints(Duration::from_secs(15), |e| !e.is_empty())
                    .await,
                "{s} registered"
            );
        }
        mesh
    }

    /// Starts `service` on these backends with `extra` arguments; its log goes to `stderr`.
    pub async fn serve(&self, service: &str, extra: &[&str], stderr: Stdio) -> Instance {
        let pki = self.pki.path().to_str().expect("a UTF-8 temporary path");
        let mut args = vec![
            "--redis",
            self.redis.as_str(),
            "--kafka",
            self.kafka.as_str(),
            "--tls-dir",
            pki,
        ];
        args.extend_from_slice(extra);
        Instance::serve_with(service, &self.etcd, &self.namespace, &args, stderr).await
    }
}

/// A `starling serve` child process.
pub struct Instance {
    child: Child,
    pub id: String,
    pub address: String,
}

pub const LEASE_TTL: Duration = Duration::from_secs(2);

impl Instance {
    pub async fn serve(service: &str, etcd: &Etcd, namespace: &str) -> Instance {
        Self::spawn(
            &etcd.url(),
            service,
            namespace,
            &[],
            Stdio::inherit(),
            "warn",
        )
        .await
    }

    /// `extra` arguments (e.g. `--redis`), and where the child's full log goes.
    pub async fn serve_with(
        service: &str,
        etcd: &Etcd,
        namespace: &str,
        extra: &[&str],
        stderr: Stdio,
    ) -> Instance {
        Self::spawn(&etcd.url(), service, namespace, extra, stderr, "info").await
    }

    /// Like [`Instance::serve_with`], on the etcd members at `etcd_urls` (comma-separated).
    pub async fn serve_on(
        service: &str,
        etcd_urls: &str,
        namespace: &str,
        extra: &[&str],
        stderr: Stdio,
    ) -> Instance {
        Self::spawn(etcd_urls, service, namespace, extra, stderr, "info").await
    }

    async fn spawn(
        url: &str,
        service: &str,
        namespace: &str,
        extra: &[&str],
        stderr: Stdio,
        level: &str,
    ) -> Instance {
        let ttl = LEASE_TTL.as_secs().to_string();
        let mut command = Command::new(env!("CARGO_BIN_EXE_starling"));
        command
            .args(["serve", service, "--listen", "127.0.0.1:0", "--etcd", url])
            .args([
                "--namespace",
                namespace,
                "--lease-ttl",
                &ttl,
                "--drain-ms",
                "300",
                // Mesh tests need no Redis or Kafka; those that do pass them in `extra`.
                "--embedded",
            ])
            // Without certificates in `extra`: discovery and balancing tests, plaintext.
            .args((!extra.contains(&"--tls-dir")).then_some("--insecure"))
            .args(extra)
            .env("STARLING_LOG", level)
            .env_remove("STARLING_REDIS")
            .env_remove("STARLING_KAFKA")
            .stderr(stderr);
        Self::launch(command).await
    }

    /// Runs `command`, a `starling serve` however started (in a network namespace, say),
    /// and waits for its announcement.
    pub async fn launch(mut command: Command) -> Instance {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("start starling serve");
        let stdout = child.stdout.take().expect("piped stdout");
        // Read the announcement line on a blocking thread; it carries the id and address.
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(30), line)
            .await
            .expect("starling serve announced itself in time")
            .expect("reader thread");
        // "starling: <service> instance <id> serving on <addr>"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() == 7 && words[2] == "instance",
            "unexpected announcement {line:?}"
        );
        Instance {
            child,
            id: words[3].to_string(),
            address: words[6].to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .expect("wait thread")
            .expect("wait");
        assert!(exit.success(), "graceful shutdown must exit 0, got {exit}");
    }
}

impl Instance {
    /// How the process ended, if it has (for a failing test to say which instance died).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers `follower` and `followee` with the follower service, and makes the one follow
/// the other.
pub async fn follow(mesh: &starling_discovery::Mesh, follower: &str, followee: &str) {
    starling::users::register_users(
        &mesh.channel("follower"),
        &[follower.to_string(), followee.to_string()],
    )
    .await
    .expect("register users");
    starling_proto::follower::v1::follower_service_client::FollowerServiceClient::new(
        mesh.channel("follower"),
    )
    .follow(starling_proto::follower::v1::FollowRequest {
        follower: follower.into(),
        followee: followee.into(),
    })
    .await
    .expect("follow");
}

/// Calls `ListTags` once and returns the instance that answered.
pub async fn call_tagger(channel: &MeshChannel) -> Result<String, tonic::Status> {
    let mut client = TaggerServiceClient::new(channel.clone());
    let resp = client.list_tags(ListTagsRequest {}).await?;
    assert_eq!(resp.get_ref().tags.len(), 50);
    Ok(resp
        .metadata()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string())
}

/// Paced calls from several workers until stopped; every failure is kept.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(channel: MeshChannel, workers: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failures, channel) =
                    (stop.clone(), ok.clone(), failures.clone(), channel.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match call_tagger(&channel).await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(s) => failures.lock().unwrap().push(format!(
                                "{:?}: {}",
                                s.code(),
                                s.message()
                            )),
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further calls have succeeded (proof that traffic flows).
    pub async fn progress(&self, more: u64, timeout: Duration) -> bool {
        let target = self.ok() + more;
        eventually(timeout, || async move { self.ok() >= target }).await
    }

    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}
