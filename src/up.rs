//! `starling up`: the whole system in one process. Every service (times `--replicas`)
//! listens on its own loopback port and registers in the embedded registry, stores in the
//! embedded store and publishes on the embedded bus, unless `--etcd`, `--redis` or
//! `--kafka` switch that part to the real backend. The services find each other through
//! the same mesh channel as in production.

use std::net::{IpAddr, SocketAddr};

use starling_runtime::{server, RunningService, ServerConfig, ServiceContext, ServiceKind};

use crate::cli::UpArgs;

/// Starts `replicas` instances of each of `kinds` on `host`, printing each address when
/// `announce` is set.
pub async fn start_all(
    ctx: &ServiceContext,
    kinds: &[ServiceKind],
    host: IpAddr,
    replicas: u16,
    announce: bool,
) -> anyhow::Result<Vec<RunningService>> {
    let mut running = Vec::new();
    for &kind in kinds {
        for _ in 0..replicas {
            let config = ServerConfig::new(kind, SocketAddr::new(host, 0));
            let parts = crate::services::build(kind, ctx).await?;
            let r = server::start(config, parts, ctx).await?;
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
    let running = start_all(&ctx, &ServiceKind::ALL, args.host, args.replicas, true).await?;
    let gateway = starling_gateway::start(args.gateway.config(), &ctx).await?;
    println!("starling: gateway http://{}", gateway.http_addr);
    println!("starling: gateway-grpc {}", gateway.grpc_addr);
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
