//! The timeline service: home timelines.
//!
//! * [`fanout`]: writes a new tweet into every follower's home timeline (paged, pipelined,
//!   checkpointed, skipping celebrities);
//! * [`events`]: consumes `TweetCreated` (fan-out) and `FollowChanged` (merge or remove the
//!   followee's recent tweets);
//! * [`handlers`]: `GetHomeTimeline`, merging celebrities' tweets in at read time and
//!   hydrating ids with one `BatchGetTweets`;
//! * [`storage`]: home timelines, checkpoints and celebrity markers in the store.

pub mod events;
pub mod fanout;
pub mod handlers;
pub mod storage;

use std::sync::Arc;

use starling_proto::timeline::v1::timeline_service_server::TimelineServiceServer;
use starling_runtime::events::consumer::ConsumerConfig;
use starling_runtime::events::topics::{groups, FOLLOW_CHANGED, TWEET_CREATED};
use starling_runtime::{ServiceContext, ServiceParts};
use tonic::service::Routes;

pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let storage = storage::TimelineStorage::new(ctx.store.clone(), ctx.settings.timeline_cap);
    let followers = Arc::new(fanout::MeshFollowers::new(ctx.mesh.channel("follower")));
    let tweets = ctx.mesh.channel("tweet");
    let engine = Arc::new(fanout::Fanout::new(
        storage.clone(),
        followers,
        ctx.settings.clone(),
    ));
    Ok(ServiceParts::new(Routes::new(TimelineServiceServer::new(
        handlers::TimelineHandler::new(
            storage.clone(),
            ctx.mesh.channel("follower"),
            tweets.clone(),
        ),
    )))
    .consumer(
        ConsumerConfig::new(TWEET_CREATED, groups::TIMELINE),
        Arc::new(events::TweetCreatedHandler::new(engine)),
    )
    .consumer(
        ConsumerConfig::new(FOLLOW_CHANGED, groups::TIMELINE),
        Arc::new(events::FollowChangedHandler::new(
            storage,
            tweets,
            ctx.mesh.channel("follower"),
        )),
    ))
}
