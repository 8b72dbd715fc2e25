//! The follower service: the follow graph.
//!
//! * [`handlers`]: the gRPC API (idempotent follow/unfollow, each stored atomically with
//!   its `FollowChanged` in the outbox; cursor-paged lists, counts);
//! * [`storage`]: both directions of every edge in the store;
//! * [`users`]: who has signed up (`RegisterUsers`, `GetUser`; `Follow` refuses others).
//!
//! It consumes no events.

pub mod handlers;
pub mod storage;
pub mod users;

use starling_proto::follower::v1::follower_service_server::FollowerServiceServer;
use starling_runtime::outbox::Outbox;
use starling_runtime::{ServiceContext, ServiceParts};
use tonic::service::Routes;

pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let storage = storage::FollowStorage::new(ctx.store.clone());
    let outbox = Outbox::new("follower");
    Ok(ServiceParts::new(Routes::new(FollowerServiceServer::new(
        handlers::FollowerHandler::new(
            storage,
            users::Users::new(ctx.store.clone()),
            outbox.clone(),
        ),
    )))
    .outbox(outbox))
}
