//! The two consumers that build recommendation state (group `recommendation`):
//!
//! * [`TaggedHandler`] (TweetTagged): remembers each tagged tweet's author and tags and
//!   files it under its tags, so ranking reads candidates from the store alone.
//! * [`EngagementHandler`] (Engagement): updates the user's profile, the tweet's
//!   popularity and the set of tweets the user has seen.
//!
//! Both are idempotent, as the consumer loop requires (a crash before the commit delivers a
//! message again): tagging writes the same values again, and an engagement already in
//! `rec:engagements:<user>` is skipped. The engagement check is by tweet and kind, so a
//! second click on the same tweet, even from a distinct event, counts once.

use std::sync::Arc;

use async_trait::async_trait;
use starling_proto::events::v1::{Engagement, TweetTagged};
use starling_proto::recommendation::v1::EngagementKind;
use starling_runtime::check_user;
use starling_runtime::events::consumer::HandleError;
use starling_runtime::events::EventHandler;
use starling_runtime::events::{now_ms, Message};
use starling_runtime::store::StoreError;

use crate::peers::Peers;
use crate::scoring::{self, popularity_epoch, TagScore, TweetMeta};
use crate::storage::{usable_tag, EngagementWrite, RecStorage};

/// At most this many tags of a tweet are used.
pub const MAX_TAGS: usize = 16;

fn transient(e: StoreError) -> HandleError {
    HandleError::Transient(e.to_string())
}

/// The tags this service keeps: usable ones, without duplicates, at most [`MAX_TAGS`].
pub fn clean_tags(tags: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for tag in tags {
        if kept.len() == MAX_TAGS {
            break;
        }
        if usable_tag(tag) && !kept.contains(tag) {
            kept.push(tag.clone());
        } else if !usable_tag(tag) {
            tracing::warn!(tag, "ignoring a tag that cannot be stored");
        }
    }
    kept
}

fn ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

pub struct TaggedHandler {
    storage: RecStorage,
}

impl TaggedHandler {
    pub fn new(storage: RecStorage) -> Self {
        Self { storage }
    }
}

#[async_trait]
impl EventHandler for TaggedHandler {
    type Event = TweetTagged;

    async fn handle(&self, event: TweetTagged, _: &Message) -> Result<(), HandleError> {
        if event.tweet_id == 0 {
            return Err(HandleError::Poison("TweetTagged without a tweet id".into()));
        }
        check_user("author", &event.author)
            .map_err(|s| HandleError::Poison(s.message().to_string()))?;
        let meta = TweetMeta {
            author: event.author,
            tags: clean_tags(&event.tags),
        };
        let previous = self
            .storage
            .tweet_meta(event.tweet_id)
            .await
            .map_err(transient)?;
        if previous.as_ref() == Some(&meta) {
            return Ok(());
        }
        self.storage
            .put_tagged(event.tweet_id, &meta, previous.as_ref())
            .await
            .map_err(transient)
    }
}

pub struct EngagementHandler {
    storage: RecStorage,
    peers: Arc<dyn Peers>,
}

impl EngagementHandler {
    pub fn new(storage: RecStorage, peers: Arc<dyn Peers>) -> Self {
        Self { storage, peers }
    }

    /// Author and tags from the store, or from the tweet service for a tweet not tagged
    /// yet. Not stored in that case: the TweetTagged consumer may be writing the real tags
    /// at the same moment, and must not be overwritten by an older view.
    async fn meta(&self, id: u64) -> Result<TweetMeta, HandleError> {
        if let Some(meta) = self.storage.tweet_meta(id).await.map_err(transient)? {
            return Ok(meta);
        }
        match self.peers.get_tweet(id).await {
            Ok(Some(tweet)) => Ok(TweetMeta {
                author: tweet.author,
                tags: clean_tags(&tweet.tags),
            }),
            Ok(None) => Err(HandleError::Poison(format!("tweet {id} does not exist"))),
            Err(status) => Err(HandleError::Transient(status.message().to_string())),
        }
    }
}

#[async_trait]
impl EventHandler for EngagementHandler {
    type Event = Engagement;

    async fn handle(&self, event: Engagement, m: &Message) -> Result<(), HandleError> {
        check_user("user", &event.user)
            .map_err(|s| HandleError::Poison(s.message().to_string()))?;
        if event.tweet_id == 0 {
            return Err(HandleError::Poison("Engagement without a tweet id".into()));
        }
        let kind = EngagementKind::try_from(event.kind).ok();
        let (kind, weight) = kind
            .and_then(|k| Some((k, scoring::weight(k)?)))
            .ok_or_else(|| {
                HandleError::Poison(format!("unknown engagement kind {}", event.kind))
            })?;
        let (user, id) = (event.user.as_str(), event.tweet_id);

        if self
            .storage
            .engagement_seen(user, id, kind)
            .await
            .map_err(transient)?
        {
            return Ok(());
        }
        let meta = self.meta(id).await?;

        let now = now_ms();
        // A timestamp from the future (skewed clock) counts as now.
        let at = event
            .occurred_at
            .as_ref()
            .map_or(m.occurred_at_ms, ms)
            .min(now);
        let profile = self.storage.profile(user).await.map_err(transient)?;
        let updates = meta
            .tags
            .iter()
            .map(|tag| {
                (
                    tag.clone(),
                    TagScore::add(profile.get(tag).copied(), weight, at),
                )
            })
            .collect();
        // Reads look at this epoch and the previous one; anything older would add to a set
        // already deleted (and weigh less than 1/128 by now anyway).
        let popularity = (popularity_epoch(at) + 1 >= popularity_epoch(now))
            .then(|| scoring::forward_weight(weight, at));
        self.storage
            .record_engagement(&EngagementWrite {
                user,
                tweet_id: id,
                kind,
                profile: updates,
                popularity,
                now_epoch: popularity_epoch(now),
            })
            .await
            .map_err(transient)?;
        tracing::debug!(user, id, ?kind, "engagement counted");
        Ok(())
    }
}
