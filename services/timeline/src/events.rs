//! Consumers of the timeline service.
//!
//! * `TweetCreated` → [`crate::fanout::Fanout`]. Redelivery is harmless: adds are
//!   idempotent and a checkpoint skips what was done.
//! * `FollowChanged` → asks the follower service whether the follower follows the followee
//!   *now*, and merges the followee's recent tweets into the follower's home timeline if so,
//!   removes them if not. Acting on the current state rather than on the event makes the
//!   handler idempotent and order-insensitive: a repeated or late event (an outbox relay
//!   handing over, a redelivery after a crash) cannot undo a newer change.

use std::sync::Arc;

use async_trait::async_trait;
use starling_discovery::MeshChannel;
use starling_proto::events::v1::{FollowChanged, TweetCreated};
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::IsFollowingRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::ListUserTweetsRequest;
use starling_runtime::events::consumer::HandleError;
use starling_runtime::events::EventHandler;
use starling_runtime::events::Message;

use crate::fanout::{Fanout, FanoutError};
use crate::storage::TimelineStorage;

/// Tweets of a newly followed author merged into the follower's timeline.
pub const MERGE_ON_FOLLOW: u32 = 50;

pub struct TweetCreatedHandler {
    fanout: Arc<Fanout>,
}

impl TweetCreatedHandler {
    pub fn new(fanout: Arc<Fanout>) -> Self {
        Self { fanout }
    }
}

#[async_trait]
impl EventHandler for TweetCreatedHandler {
    type Event = TweetCreated;

    async fn handle(&self, event: TweetCreated, _: &Message) -> Result<(), HandleError> {
        if event.tweet_id == 0 || event.author.is_empty() {
            return Err(HandleError::Poison(
                "TweetCreated without tweet id or author".into(),
            ));
        }
        self.fanout
            .fan_out(event.tweet_id, &event.author)
            .await
            .map(|_| ())
            .map_err(|e: FanoutError| HandleError::Transient(e.to_string()))
    }
}

pub struct FollowChangedHandler {
    storage: TimelineStorage,
    tweets: MeshChannel,
    followers: MeshChannel,
}

impl FollowChangedHandler {
    pub fn new(storage: TimelineStorage, tweets: MeshChannel, followers: MeshChannel) -> Self {
        Self {
            storage,
            tweets,
            followers,
        }
    }

    async fn following_now(&self, follower: &str, followee: &str) -> Result<bool, HandleError> {
        let mut client = FollowerServiceClient::new(self.followers.clone());
        let resp = client
            .is_following(IsFollowingRequest {
                follower: follower.to_string(),
                followee: followee.to_string(),
            })
            .await
            .map_err(|s| HandleError::Transient(format!("follower service: {}", s.message())))?;
        Ok(resp.into_inner().following)
    }

    async fn recent_ids(&self, author: &str, limit: u32) -> Result<Vec<u64>, HandleError> {
        let mut client = TweetServiceClient::new(self.tweets.clone());
        let resp = client
            .list_user_tweets(ListUserTweetsRequest {
                user: author.to_string(),
                page_size: limit,
                page_token: String::new(),
            })
            .await
            .map_err(|s| HandleError::Transient(format!("tweet service: {}", s.message())))?;
        Ok(resp.into_inner().tweets.iter().map(|t| t.id).collect())
    }
}

#[async_trait]
impl EventHandler for FollowChangedHandler {
    type Event = FollowChanged;

    async fn handle(&self, e: FollowChanged, _: &Message) -> Result<(), HandleError> {
        let transient =
            |e: starling_runtime::store::StoreError| HandleError::Transient(e.to_string());
        if self.following_now(&e.follower, &e.followee).await? {
            let ids = self.recent_ids(&e.followee, MERGE_ON_FOLLOW).await?;
            self.storage
                .push_many(&e.follower, &ids)
                .await
                .map_err(transient)?;
        } else {
            // Everything of theirs that can still be in the capped timeline.
            let ids = self.recent_ids(&e.followee, 800).await?;
            self.storage
                .remove_many(&e.follower, &ids)
                .await
                .map_err(transient)?;
        }
        crate::watch::publish(
            self.storage.store().as_ref(),
            &crate::watch::Notice {
                author: e.followee,
                users: vec![e.follower],
                celebrity: false,
            },
        )
        .await;
        Ok(())
    }
}
