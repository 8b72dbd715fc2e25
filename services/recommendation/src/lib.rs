//! The recommendation service: personal recommendations from tags and engagement.
//!
//! * [`handlers`]: the gRPC API (RecordEngagement stores an `Engagement` event in the outbox,
//!   Recommend ranks and hydrates);
//! * [`events`]: the TweetTagged and Engagement consumers that build the state;
//! * [`storage`]: the keys (documented there) and store access;
//! * [`scoring`]: the pure arithmetic: decay, forward-decayed popularity, ranking;
//! * [`peers`]: the tweet and follower services, behind a trait so tests need no network.

pub mod events;
pub mod handlers;
pub mod peers;
pub mod scoring;
pub mod storage;

use std::sync::Arc;

use starling_proto::recommendation::v1::recommendation_service_server::RecommendationServiceServer;
use starling_runtime::events::topics::groups;
use starling_runtime::outbox::Outbox;
use starling_runtime::{ServiceContext, ServiceParts};
use tonic::service::Routes;

/// Assembles the service: its routes and its two consumers.
pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let storage = storage::RecStorage::new(ctx.store.clone());
    let peers: Arc<dyn peers::Peers> = Arc::new(peers::MeshPeers::new(&ctx.mesh));
    let outbox = Outbox::new("recommendation");
    let handler =
        handlers::RecommendationHandler::new(storage.clone(), peers.clone(), outbox.clone());
    Ok(
        ServiceParts::new(Routes::new(RecommendationServiceServer::new(handler)))
            .on_events(
                groups::RECOMMENDATION,
                events::TaggedHandler::new(storage.clone()),
            )
            .on_events(
                groups::RECOMMENDATION,
                events::EngagementHandler::new(storage, peers),
            )
            .outbox(outbox),
    )
}
