//! The system under load, as processes of its own so that each one's CPU time can be read:
//! either real etcd, Redis (append-only file) and the Kafka-protocol broker with one
//! `starling serve` per service and a `starling gateway` (the production path, started as
//! the chaos suite starts it), or one `starling up` on its embedded backends. Either way
//! every call runs over mutual TLS with certificates made for the run, and the load
//! generator calls the services as `admin`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use starling_discovery::{
    EtcdConfig, EtcdRegistry, MemoryRegistry, Mesh, Registry, ServiceInstance,
};

use crate::chaos::cluster::{Backends, Launcher, Replica};
use crate::chaos::SERVICES;

/// A running system, stopped on drop.
pub struct Sut {
    /// The services, reached as `admin` over mutual TLS.
    pub mesh: Arc<Mesh>,
    /// The gateway's HTTP address (`host:port`).
    pub gateway: String,
    /// What the report calls the backends.
    pub label: &'static str,
    parts: Parts,
    _dir: tempfile::TempDir,
}

enum Parts {
    /// Fields drop in order: the services stop before the backends they use.
    Real {
        replicas: Vec<Replica>,
        backends: Box<Backends>,
    },
    Embedded {
        up: Child,
        /// The registrations the generator's own registry holds for `up`'s instances.
        _registrations: Vec<starling_discovery::Registration>,
    },
}

impl Drop for Parts {
    fn drop(&mut self) {
        if let Parts::Embedded { up, .. } = self {
            let _ = up.kill();
            let _ = up.wait();
        }
    }
}

impl Sut {
    /// `(name, pid)` of every process of the system.
    pub fn processes(&self) -> Vec<(String, u32)> {
        match &self.parts {
            Parts::Real { backends, replicas } => {
                let mut out: Vec<(String, u32)> = replicas
                    .iter()
                    .filter_map(|r| Some((r.service.to_string(), r.pid()?)))
                    .collect();
                for b in [&backends.etcd, &backends.redis, &backends.broker] {
                    if let Some(pid) = b.pid() {
                        out.push((b.name.to_string(), pid));
                    }
                }
                out
            }
            Parts::Embedded { up, .. } => vec![("up".to_string(), up.id())],
        }
    }

    /// Real backends and one process per service and the gateway.
    pub async fn real() -> anyhow::Result<Sut> {
        let dir = work_dir()?;
        let work = dir.path().to_path_buf();
        let backends = Backends::start(&work).await?;
        let namespace = format!("load{:08x}", rand::random::<u32>());
        let tls_dir = identities(&work, &namespace)?;
        let launcher = Launcher::new(&backends, &work, &namespace, &tls_dir)?;
        let mut replicas = Vec::new();
        for service in SERVICES {
            replicas.push(launcher.start(service, 0).await?);
        }
        let gateway = launcher.start_gateway().await?;
        let gateway_address = gateway.address.clone();
        replicas.push(gateway);
        let mut config = EtcdConfig::new(vec![backends.etcd_url()]);
        config.namespace = namespace.clone();
        let registry = Arc::new(EtcdRegistry::connect(config).await?);
        let mesh = crate::chaos::cluster::admin_mesh(registry, &tls_dir)?;
        wait_for_services(&mesh).await?;
        Ok(Sut {
            mesh,
            gateway: gateway_address,
            label: "etcd, Redis and the broker",
            parts: Parts::Real {
                replicas,
                backends: Box::new(backends),
            },
            _dir: dir,
        })
    }

    /// `starling up` on its embedded backends, one process.
    pub async fn embedded() -> anyhow::Result<Sut> {
        let dir = work_dir()?;
        let work = dir.path().to_path_buf();
        let namespace = format!("load{:08x}", rand::random::<u32>());
        let tls_dir = identities(&work, &namespace)?;
        let log = std::fs::File::create(work.join("up.log"))?;
        let mut up = Command::new(std::env::current_exe().context("this program's path")?)
            .args(["up", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(["--namespace", &namespace])
            .arg("--tls-dir")
            .arg(&tls_dir)
            .env("STARLING_LOG", "warn")
            .env_remove("STARLING_ETCD")
            .env_remove("STARLING_REDIS")
            .env_remove("STARLING_KAFKA")
            .env_remove("STARLING_EMBEDDED")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting starling up")?;
        let stdout = up.stdout.take().context("piped stdout")?;
        let lines = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let done = line.contains("instances up");
                lines.push(std::mem::take(&mut line));
                if done {
                    break;
                }
            }
            std::thread::spawn(move || for _ in reader.lines() {});
            lines
        });
        let lines = match tokio::time::timeout(Duration::from_secs(60), lines).await {
            Ok(lines) => lines?,
            Err(_) => {
                let _ = up.kill();
                bail!("starling up did not start within 60 s");
            }
        };
        let (instances, gateway) = parse_up(&lines);
        let Some(gateway) = gateway else {
            let _ = up.kill();
            bail!(
                "starling up did not start (its log: {}): {lines:?}",
                work.join("up.log").display()
            );
        };
        // `up`'s registry lives in its process: the generator gets the addresses it printed.
        let registry = Arc::new(MemoryRegistry::new());
        let mut registrations = Vec::new();
        for (service, address) in instances {
            registrations.push(
                registry
                    .register(&service, ServiceInstance::new(&service, address))
                    .await?,
            );
        }
        let mesh = crate::chaos::cluster::admin_mesh(registry, &tls_dir)?;
        let sut = Sut {
            mesh,
            gateway,
            label: "embedded (starling up)",
            parts: Parts::Embedded {
                up,
                _registrations: registrations,
            },
            _dir: dir,
        };
        wait_for_services(&sut.mesh).await?;
        Ok(sut)
    }
}

fn work_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("starling-load-")
        .tempdir()
        .context("temporary directory")
}

/// A CA for the run and every identity, in `work/pki`.
fn identities(work: &Path, namespace: &str) -> anyhow::Result<std::path::PathBuf> {
    let tls_dir = work.join("pki");
    let ca = crate::ca::Authority::new(2)?;
    crate::ca::write_identities(&tls_dir, &ca, namespace, 2, crate::ca::MESH_IDENTITIES)?;
    Ok(tls_dir)
}

async fn wait_for_services(mesh: &Mesh) -> anyhow::Result<()> {
    for s in SERVICES {
        let ready = mesh
            .channel(s)
            .wait_for_endpoints(Duration::from_secs(30), |e| !e.is_empty())
            .await;
        if !ready {
            bail!("{s} did not register within 30 s");
        }
    }
    Ok(())
}

/// The instances (`starling: <service> <address>  (<grpc name>)`) and the gateway's HTTP
/// address (`starling: gateway http://<address>`) from `starling up`'s banner.
fn parse_up(lines: &[String]) -> (Vec<(String, String)>, Option<String>) {
    let mut instances = Vec::new();
    let mut gateway = None;
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["starling:", "gateway", url] => {
                gateway = url.strip_prefix("http://").map(str::to_string);
            }
            ["starling:", service, address, _grpc] if SERVICES.contains(service) => {
                instances.push((service.to_string(), address.to_string()));
            }
            _ => {}
        }
    }
    (instances, gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_banner() {
        let lines: Vec<String> = [
            "starling: tweet           127.0.0.1:4101  (starling.tweet.v1.TweetService)\n",
            "starling: timeline        127.0.0.1:4102  (starling.timeline.v1.TimelineService)\n",
            "starling: gateway http://127.0.0.1:8080\n",
            "starling: gateway-grpc 127.0.0.1:8081\n",
            "starling: 5 instances up (embedded); open http://127.0.0.1:8080 or try ...\n",
        ]
        .map(String::from)
        .to_vec();
        let (instances, gateway) = parse_up(&lines);
        assert_eq!(
            instances,
            vec![
                ("tweet".to_string(), "127.0.0.1:4101".to_string()),
                ("timeline".to_string(), "127.0.0.1:4102".to_string())
            ]
        );
        assert_eq!(gateway.as_deref(), Some("127.0.0.1:8080"));
    }
}
