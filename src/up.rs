//! `starling up`: the whole system in one process. Every service (times `--replicas`)
//! listens on its own loopback port and registers in the embedded registry, stores in the
//! embedded store and publishes on the embedded bus, unless `--etcd`, `--redis` or
//! `--kafka` switch that part to the real backend. The services find each other through
//! the same mesh channel as in production, over mutual TLS: each service and the gateway
//! call as themselves and are authorized by the default policy, with certificates from a
//! CA made in memory at start (or from `--tls-dir`; `--insecure` for plaintext).

use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;

use starling_discovery::MeshTls;
use starling_runtime::{server, RunningService, ServerConfig, ServiceContext, ServiceKind};

use crate::cli::UpArgs;

/// Where the processes of a one-process system get their identities.
pub enum Identities {
    /// Plaintext, no identities (`--insecure`).
    None,
    /// `DIR/<name>.crt` + `.key` and `DIR/ca.crt`, watched for rotation (`--tls-dir`).
    Dir(std::path::PathBuf),
    /// Issued at start by a CA that exists only in this process (the default).
    Memory(Box<crate::ca::Authority>),
}

impl Identities {
    /// `name`'s identity in `namespace`.
    pub fn get(&self, name: &str, namespace: &str) -> anyhow::Result<Option<MeshTls>> {
        Ok(match self {
            Self::None => None,
            Self::Dir(dir) => Some(MeshTls::from_dir(dir, name)?),
            Self::Memory(ca) => {
                let (cert, key) = ca.issue(name, namespace, 365, &[])?;
                Some(MeshTls::from_pem(starling_discovery::tls::Pem {
                    ca: ca.cert_pem().as_bytes().to_vec(),
                    cert: cert.into_bytes(),
                    key: key.into_bytes(),
                })?)
            }
        })
    }

    /// `ctx` calling as `name` (a tool's own calls: `admin`, say).
    pub fn context_as(
        &self,
        name: &str,
        ctx: &ServiceContext,
        namespace: &str,
    ) -> anyhow::Result<ServiceContext> {
        Ok(self.apply(name, ctx, namespace)?.0)
    }

    /// `ctx` calling as `name`, and the server side of `name`'s listener.
    fn apply(
        &self,
        name: &str,
        ctx: &ServiceContext,
        namespace: &str,
    ) -> anyhow::Result<(ServiceContext, Option<starling_runtime::ServerTls>)> {
        let Some(tls) = self.get(name, namespace)? else {
            return Ok((ctx.clone(), None));
        };
        let ctx = ServiceContext {
            mesh: Arc::new(ctx.mesh.as_identity(Some(tls.clone()))),
            ..ctx.clone()
        };
        let server = starling_runtime::ServerTls {
            tls,
            namespace: namespace.to_string(),
            policy: starling_runtime::authz::Policy::default_policy(),
        };
        Ok((ctx, Some(server)))
    }
}

/// Starts `replicas` instances of each of `kinds` on `host` in plaintext, printing each
/// address when `announce` is set.
pub async fn start_all(
    ctx: &ServiceContext,
    kinds: &[ServiceKind],
    host: IpAddr,
    replicas: u16,
    announce: bool,
) -> anyhow::Result<Vec<RunningService>> {
    start_all_as(ctx, &Identities::None, "", kinds, host, replicas, announce).await
}

/// [`start_all`] with each service serving and calling as its identity from `identities`
/// (trust domain `namespace`).
pub async fn start_all_as(
    ctx: &ServiceContext,
    identities: &Identities,
    namespace: &str,
    kinds: &[ServiceKind],
    host: IpAddr,
    replicas: u16,
    announce: bool,
) -> anyhow::Result<Vec<RunningService>> {
    let mut running = Vec::new();
    for &kind in kinds {
        let (ctx, tls) = identities.apply(kind.name(), ctx, namespace)?;
        for _ in 0..replicas {
            let mut config = ServerConfig::new(kind, SocketAddr::new(host, 0));
            config.tls = tls.clone();
            config.zone = ctx.mesh.config().zone.clone().unwrap_or_default();
            let parts = crate::services::build(kind, &ctx).await?;
            let r = server::start(config, parts, &ctx).await?;
            if announce {
                println!(
                    "starling: {:<15} {}  ({})",
                    kind.name(),
                    r.instance.address,
                    kind.grpc_name()
                );
            }
            running.push(r);
        }
    }
    Ok(running)
}

/// Stops instances concurrently: each drains on its own.
pub async fn stop_all(running: Vec<RunningService>) -> anyhow::Result<()> {
    let results = futures::future::join_all(running.into_iter().map(|r| r.stop())).await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.metrics {
        starling_runtime::metrics::serve(addr).await?;
    }
    let ctx = crate::services::context(&args.backends, &args.mesh, &args.etcd).await?;
    let identities = match (&args.tls.tls_dir, args.tls.insecure) {
        (Some(dir), _) => Identities::Dir(dir.clone()),
        (None, true) => {
            tracing::warn!("--insecure: plaintext mesh calls, no identities, no authorization");
            Identities::None
        }
        (None, false) => Identities::Memory(Box::new(crate::ca::Authority::new(365)?)),
    };
    let namespace = &args.mesh.namespace;
    let running = start_all_as(
        &ctx,
        &identities,
        namespace,
        &ServiceKind::ALL,
        args.host,
        args.replicas,
        true,
    )
    .await?;
    let (gateway_ctx, _) = identities.apply("gateway", &ctx, namespace)?;
    let gateway = starling_gateway::start(args.gateway.config(), &gateway_ctx).await?;
    println!("starling: gateway http://{}", gateway.http_addr);
    println!("starling: gateway-grpc {}", gateway.grpc_addr);
    println!(
        "starling: mesh {}",
        match &identities {
            Identities::None => "plaintext (--insecure): no identities, no authorization".to_string(),
            Identities::Dir(dir) => format!("mutual TLS with the certificates in {}", dir.display()),
            Identities::Memory(_) => "mutual TLS with a CA made in memory (--tls-dir DIR to use your own, and call the services with grpcurl -cacert/-cert/-key)".to_string(),
        }
    );
    println!(
        "starling: {} instances up ({}); open http://{} or try `grpcurl -plaintext {} list`. Ctrl-C stops.",
        running.len(),
        crate::services::describe(&args.backends, &args.etcd),
        gateway.http_addr,
        gateway.grpc_addr
    );
    starling_runtime::shutdown::signal().await;
    gateway.stop().await?;
    stop_all(running).await
}
