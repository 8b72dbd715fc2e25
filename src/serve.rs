//! `starling serve <service>`: one instance, registered in etcd, until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use starling_discovery::{EtcdRegistry, Mesh, Registry};
use starling_runtime::{server, ServerConfig, ServiceContext};

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let registry: Arc<dyn Registry> =
        Arc::new(EtcdRegistry::connect(args.mesh.etcd_config(args.etcd.clone())).await?);
    if let Some(addr) = args.metrics {
        starling_runtime::metrics::serve(addr).await?;
    }
    let mesh = Arc::new(Mesh::new(registry.clone(), args.mesh.mesh_config()));
    let ctx = ServiceContext { mesh };
    let mut config = ServerConfig::new(args.service, args.listen);
    config.advertise = args.advertise;
    config.zone = args.zone;
    config.weight = args.weight;
    config.drain_delay = Duration::from_millis(args.drain_ms);
    let running = server::start(
        config,
        crate::services::routes(args.service, &ctx),
        registry,
    )
    .await?;
    // One machine-readable line on stdout: scripts and tests wait for it.
    println!(
        "starling: {} instance {} serving on {}",
        running.kind, running.instance.id, running.instance.address
    );
    starling_runtime::shutdown::signal().await;
    running.stop().await
}
