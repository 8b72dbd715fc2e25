//! The tweet service: creates, stores and serves tweets.
//!
//! * [`handlers`]: the gRPC API (validation, Snowflake ids, the tweet stored, then listed
//!   with its `TweetCreated` in the outbox in one atomic step);
//! * [`text`]: what a tweet's text may be (normalised, counted as people see it);
//! * [`storage`]: tweets and per-author lists in the store;
//! * [`events`]: consumes `TweetTagged` to store the tagger's tags on the tweet.

pub mod events;
pub mod handlers;
pub mod storage;
pub mod text;

use std::sync::Arc;

use starling_proto::tweet::v1::tweet_service_server::TweetServiceServer;
use starling_runtime::events::topics::groups;
use starling_runtime::ids::{Snowflake, MAX_WORKERS};
use starling_runtime::outbox::Outbox;
use starling_runtime::{Probe, ServiceContext, ServiceParts};
use tonic::service::Routes;

/// Claims a worker id for Snowflake ids, then assembles the service.
pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let claim = ctx.registry.claim("tweet-worker-ids", MAX_WORKERS).await?;
    tracing::info!(worker = claim.id, "snowflake worker id claimed");
    let storage = storage::TweetStorage::new(ctx.store.clone());
    let ids = Arc::new(Snowflake::new(claim));
    let outbox = Outbox::new("tweet");
    let handler = handlers::TweetHandler::new(storage.clone(), ids.clone(), outbox.clone());
    Ok(
        ServiceParts::new(Routes::new(TweetServiceServer::new(handler)))
            .on_events(groups::TWEET, events::TagsHandler::new(storage))
            .outbox(outbox)
            .probe(Probe {
                name: "worker id",
                check: Box::new(move || ids.check()),
            }),
    )
}
