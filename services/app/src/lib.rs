//! The reference application assembled, once, for the `starling` binary and for every test
//! that runs the app in one process:
//!
//! * [`build`]: which crate serves which [`ServiceKind`];
//! * [`mesh_config`]: the mesh settings the app relies on (the methods that may be
//!   retried, the unary ones, and a user's timeline calls hashed on `x-user-id`);
//! * [`memory_context`]: a context on the embedded backends (memory registry, store and
//!   bus), as `starling up` runs without flags.

use std::sync::Arc;

use anyhow::Context as _;
use starling_discovery::{MemoryRegistry, Mesh, MeshConfig, Policy, Registry};
use starling_runtime::events::{topics, EventBus, MemoryBus};
use starling_runtime::store::{MemoryStore, Store};
use starling_runtime::{AppSettings, ServiceContext, ServiceKind, ServiceParts};

/// The header a user's timeline calls carry, which the mesh hashes on.
pub const USER_HEADER: &str = "x-user-id";

/// The routes, consumers and outbox of service `kind`.
pub async fn build(kind: ServiceKind, ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let parts = match kind {
        ServiceKind::Tweet => starling_tweet::build(ctx).await,
        ServiceKind::Follower => starling_follower::build(ctx).await,
        ServiceKind::Timeline => starling_timeline::build(ctx).await,
        ServiceKind::Tagger => starling_tagger::build(ctx).await,
        ServiceKind::Recommendation => starling_recommendation::build(ctx).await,
    };
    parts.with_context(|| format!("starting the {kind} service"))
}

/// The mesh configuration the app needs, before any operator's overrides: idempotent and
/// unary methods as the `.proto` files declare them, and a user's timeline calls to the
/// same instance (and its caches).
pub fn mesh_config() -> MeshConfig {
    MeshConfig::new(starling_proto::idempotent_methods())
        .with_unary_methods(starling_proto::unary_methods())
        .with_policy(
            "timeline",
            Policy::ConsistentHash {
                header: USER_HEADER.into(),
            },
        )
}

/// A context on the embedded backends with `config` for the mesh and `settings` for the
/// app, its topics created.
pub async fn memory_context(
    config: MeshConfig,
    settings: AppSettings,
) -> anyhow::Result<ServiceContext> {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
    bus.create_topics(&topics::all_topics())
        .await
        .context("creating topics")?;
    Ok(ServiceContext {
        mesh: Arc::new(Mesh::new(registry.clone(), config)),
        registry,
        store,
        bus,
        settings: Arc::new(settings),
    })
}
