//! The backends the services share, real or embedded, chosen from the command line; which
//! crate serves which service is `starling-app`'s (`services/app/`), re-exported here.

use std::sync::Arc;

use anyhow::Context as _;
use starling_discovery::{EtcdRegistry, MemoryRegistry, Mesh, Registry};
use starling_runtime::events::{topics, EventBus, KafkaBus, MemoryBus};
use starling_runtime::store::{MemoryStore, RedisStore, Store};
use starling_runtime::{AppSettings, ServiceContext};

use crate::cli::{BackendArgs, MeshArgs};

/// Which crate serves `kind` (see `starling-app`).
pub use starling_app::build;

/// Connects each backend: the real one when its flag is given, the in-memory one otherwise.
pub async fn context(
    backends: &BackendArgs,
    mesh: &MeshArgs,
    etcd: &[String],
) -> anyhow::Result<ServiceContext> {
    context_with_tls(backends, mesh, etcd, None).await
}

/// [`context`] whose mesh calls every endpoint over mutual TLS when `tls` is given.
pub async fn context_with_tls(
    backends: &BackendArgs,
    mesh: &MeshArgs,
    etcd: &[String],
    tls: Option<starling_discovery::MeshTls>,
) -> anyhow::Result<ServiceContext> {
    // Checked before anything connects: a bad layout is the caller's mistake.
    let layout = backends.topic_layout()?;
    let registry: Arc<dyn Registry> = if etcd.is_empty() {
        Arc::new(MemoryRegistry::new())
    } else {
        Arc::new(EtcdRegistry::connect(mesh.etcd_config(etcd.to_vec())?).await?)
    };
    let store: Arc<dyn Store> = match &backends.redis {
        Some(url) => {
            let ca = match &backends.redis_ca {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            let prefix = format!("{}:", mesh.namespace);
            let store = if backends.redis_cluster {
                RedisStore::connect_cluster(url, &prefix, backends.redis_pool, ca)
                    .await
                    .context("connecting to the redis cluster")?
            } else {
                RedisStore::connect_with_ca(url, &prefix, backends.redis_pool, ca)
                    .await
                    .context("connecting to redis")?
            };
            Arc::new(store.with_replica_acks(backends.redis_replica_acks))
        }
        None => Arc::new(MemoryStore::new()),
    };
    let bus: Arc<dyn EventBus> = match &backends.kafka {
        Some(brokers) => Arc::new(
            KafkaBus::connect_with(brokers, &mesh.namespace, backends.kafka_options.clone())
                .await
                .context("connecting to kafka")?
                .with_layout(layout)?
                .coordinated_by(store.clone()),
        ),
        None => Arc::new(MemoryBus::new()),
    };
    bus.create_topics(&topics::all_topics())
        .await
        .context("creating topics")?;
    // Every process, relay or not, tells the relays when its bus finds the log lost.
    tokio::spawn(starling_runtime::outbox::report_losses(
        store.clone(),
        bus.clone(),
    ));
    let settings = AppSettings {
        celebrity_threshold: backends.celebrity_threshold,
        fanout_page: backends.fanout_page,
        ..AppSettings::default()
    };
    Ok(ServiceContext {
        mesh: Arc::new(Mesh::new(registry.clone(), {
            let mut config = mesh.mesh_config();
            config.tls = tls;
            config
        })),
        registry,
        store,
        bus,
        settings: Arc::new(settings),
    })
}

/// A one-line description of the backends in use, for the start-up banner.
pub fn describe(backends: &BackendArgs, etcd: &[String]) -> String {
    format!(
        "registry: {}, store: {}, events: {}",
        if etcd.is_empty() {
            "embedded".to_string()
        } else {
            format!("etcd {}", etcd.join(","))
        },
        backends
            .redis
            .as_deref()
            .map_or("embedded".to_string(), |r| {
                format!("redis {}", starling_runtime::store::redacted_url(r))
            }),
        backends
            .kafka
            .as_deref()
            .map_or("embedded".to_string(), |k| format!("kafka {k}")),
    )
}
