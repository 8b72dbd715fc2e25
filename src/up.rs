//! `starling up`: the whole system in one process. Every service (times `--replicas`)
//! listens on its own loopback port and registers in the embedded registry (or in etcd
//! with `--etcd`), and they find each other through the same mesh channel as in production.

use std::net::SocketAddr;
use std::sync::Arc;

use starling_discovery::{EtcdRegistry, MemoryRegistry, Mesh, Registry};
use starling_runtime::{server, ServerConfig, ServiceContext, ServiceKind};

use crate::cli::UpArgs;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let registry: Arc<dyn Registry> = if args.etcd.is_empty() {
        Arc::new(MemoryRegistry::new())
    } else {
        Arc::new(EtcdRegistry::connect(args.mesh.etcd_config(args.etcd.clone())).await?)
    };
    if let Some(addr) = args.metrics {
        starling_runtime::metrics::serve(addr).await?;
    }
    let mesh = Arc::new(Mesh::new(registry.clone(), args.mesh.mesh_config()));
    let ctx = ServiceContext { mesh };
    let mut running = Vec::new();
    for kind in ServiceKind::ALL {
        for _ in 0..args.replicas {
            let config = ServerConfig::new(kind, SocketAddr::new(args.host, 0));
            let r = server::start(
                config,
                crate::services::routes(kind, &ctx),
                registry.clone(),
            )
            .await?;
            println!(
                "starling: {:<15} {}  ({})",
                kind.name(),
                r.instance.address,
                kind.grpc_name()
            );
            running.push(r);
        }
    }
    let backend = if args.etcd.is_empty() {
        "embedded registry"
    } else {
        "etcd"
    };
    println!(
        "starling: {} instances up on the {backend}; try `grpcurl -plaintext {} list`. Ctrl-C stops.",
        running.len(),
        running[0].instance.address
    );
    starling_runtime::shutdown::signal().await;
    // Stop all instances concurrently: each drains on its own.
    let results = futures::future::join_all(running.into_iter().map(|r| r.stop())).await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}
