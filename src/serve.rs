//! `starling serve <service>`: one instance, registered in etcd, until SIGTERM/SIGINT.

use std::time::Duration;

use starling_runtime::{server, ServerConfig};

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    check_backends(&args)?;
    if let Some(addr) = args.metrics {
        starling_runtime::metrics::serve(addr).await?;
    }
    let name = args.service.name();
    let tls = args.tls.load(name)?;
    let ctx =
        crate::services::context_with_tls(&args.backends, &args.mesh, &args.etcd, tls.clone())
            .await?;
    tracing::info!("{}", crate::services::describe(&args.backends, &args.etcd));
    let mut config = ServerConfig::new(args.service, args.listen);
    config.tls = tls.map(|tls| starling_runtime::ServerTls {
        tls,
        namespace: args.mesh.namespace.clone(),
        policy: starling_runtime::authz::Policy::default_policy(),
    });
    config.advertise = args.advertise;
    config.zone = args.mesh.zone.clone();
    config.weight = args.weight;
    config.drain_delay = Duration::from_millis(args.drain_ms);
    let parts = crate::services::build(args.service, &ctx).await?;
    let running = server::start(config, parts, &ctx).await?;
    // One machine-readable line on stdout: scripts and tests wait for it.
    println!(
        "starling: {} instance {} serving on {}",
        running.kind, running.instance.id, running.instance.address
    );
    starling_runtime::shutdown::signal().await;
    running.stop().await
}

/// A served instance shares its data with the other replicas through Redis and Kafka; on
/// the embedded backends it would silently keep a private copy. So both are required
/// unless `--embedded` says that is what is wanted.
fn check_backends(args: &ServeArgs) -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("--redis (STARLING_REDIS)", args.backends.redis.is_none()),
        ("--kafka (STARLING_KAFKA)", args.backends.kafka.is_none()),
    ]
    .into_iter()
    .filter_map(|(flag, absent)| absent.then_some(flag))
    .collect();
    if missing.is_empty() || args.embedded {
        if !missing.is_empty() {
            tracing::info!(
                "--embedded: {} missing; this instance keeps private in-memory data that other replicas cannot see and that is lost when it exits",
                missing.join(" and ")
            );
        }
        return Ok(());
    }
    anyhow::bail!(
        "starling serve needs {}: replicas share their data through Redis and their events through Kafka. \
         Pass --embedded to run on private in-memory backends instead (data lost on exit), or use `starling up` for a one-process system.",
        missing.join(" and ")
    )
}
