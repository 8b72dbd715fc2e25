//! The follower service: the follow graph.
//!
//! * [`handlers`]: the gRPC API (idempotent follow/unfollow publishing `FollowChanged`,
//!   cursor-paged lists, counts);
//! * [`storage`]: both directions of every edge in the store.
//!
//! It consumes no events.

pub mod handlers;
pub mod storage;

use starling_proto::follower::v1::follower_service_server::FollowerServiceServer;
use starling_runtime::{ServiceContext, ServiceParts};
use tonic::service::Routes;

pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let storage = storage::FollowStorage::new(ctx.store.clone());
    Ok(ServiceParts {
        routes: Routes::new(FollowerServiceServer::new(handlers::FollowerHandler::new(
            storage,
            ctx.bus.clone(),
        ))),
        consumers: Vec::new(),
    })
}
