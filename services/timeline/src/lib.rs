//! The timeline service: home timelines.
//!
//! * [`fanout`]: writes a new tweet into every follower's home timeline (paged, pipelined,
//!   checkpointed, skipping celebrities);
//! * [`events`]: consumes `TweetCreated` (fan-out) and `FollowChanged` (merge or remove the
//!   followee's recent tweets);
//! * [`handlers`]: `GetHomeTimeline` and the live `WatchHomeTimeline`;
//! * [`read`]: one page of a home timeline, merging celebrities' tweets in at read time
//!   and hydrating ids with one `BatchGetTweets`;
//! * [`watch`]: who watches which timeline, woken through the store's pub/sub when the
//!   fan-out or a follow changes it;
//! * [`storage`]: home timelines, checkpoints and celebrity markers in the store.

pub mod events;
pub mod fanout;
pub mod handlers;
pub mod read;
pub mod storage;
pub mod watch;

use std::sync::Arc;

use starling_proto::timeline::v1::timeline_service_server::TimelineServiceServer;
use starling_runtime::events::topics::groups;
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
    let reader = read::HomeReader::new(
        storage.clone(),
        ctx.mesh.channel("follower"),
        tweets.clone(),
    );
    let watchers = watch::Watchers::new(ctx.store.clone());
    let stopping = watchers.clone();
    Ok(ServiceParts::new(Routes::new(TimelineServiceServer::new(
        handlers::TimelineHandler::new(reader, watchers),
    )))
    .on_stop(move || stopping.stop())
    .on_events(groups::TIMELINE, events::TweetCreatedHandler::new(engine))
    .on_events(
        groups::TIMELINE,
        events::FollowChangedHandler::new(storage, tweets, ctx.mesh.channel("follower")),
    ))
}
