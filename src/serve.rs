//! `starling serve <service>`: one instance, registered in etcd, until SIGTERM/SIGINT.

use std::time::Duration;

use starling_runtime::{server, ServerConfig};

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.metrics {
        starling_runtime::metrics::serve(addr).await?;
    }
    let ctx = crate::services::context(&args.backends, &args.mesh, &args.etcd).await?;
    tracing::info!("{}", crate::services::describe(&args.backends, &args.etcd));
    let mut config = ServerConfig::new(args.service, args.listen);
    config.advertise = args.advertise;
    config.zone = args.zone;
    config.weight = args.weight;
    config.drain_delay = Duration::from_millis(args.drain_ms);
    let parts = crate::services::build(args.service, &ctx).await?;
    let running = server::start(config, parts, ctx.registry.clone(), ctx.bus.clone()).await?;
    // One machine-readable line on stdout: scripts and tests wait for it.
    println!(
        "starling: {} instance {} serving on {}",
        running.kind, running.instance.id, running.instance.address
    );
    starling_runtime::shutdown::signal().await;
    running.stop().await
}
