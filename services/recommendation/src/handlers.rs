//! gRPC handlers of `starling.recommendation.v1.RecommendationService`.
//!
//! RecordEngagement only validates and publishes: the profile is written by the Engagement
//! consumer, so a burst of clicks costs the caller one publish each, and the state is
//! rebuilt the same way whether events come from this API or are replayed. Recommend reads
//! the store, asks the follower service whom the user follows, ranks
//! ([`crate::scoring::rank`]) and hydrates the winners with one BatchGetTweets call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use starling_proto::events::v1::Engagement;
use starling_proto::recommendation::v1::recommendation_service_server::RecommendationService;
use starling_proto::recommendation::v1::*;
use starling_runtime::events::{self, now_ms, Message};
use starling_runtime::outbox::Outbox;
use starling_runtime::{check_user, page_size, store_error};
use tonic::{Request, Response, Status};

use crate::peers::Peers;
use crate::scoring::{rank, top_tags, Candidates};
use crate::storage::RecStorage;

/// Tags of the profile that candidates are drawn from.
pub const TOP_TAGS: usize = 5;
/// Newest ids read per tag.
pub const PER_TAG: usize = 100;
/// Popular and recent ids read (for cold start, and to fill a short list).
pub const FALLBACK_CANDIDATES: usize = 200;
/// Ids hydrated beyond the limit, to make up for tweets that are gone or turn out (once
/// their author is known) to be the user's own or a followee's.
pub const HYDRATE_SLACK: usize = 20;

pub struct RecommendationHandler {
    storage: RecStorage,
    peers: Arc<dyn Peers>,
    outbox: Outbox,
}

impl RecommendationHandler {
    pub fn new(storage: RecStorage, peers: Arc<dyn Peers>, outbox: Outbox) -> Self {
        Self {
            storage,
            peers,
            outbox,
        }
    }
}

/// CLICK or LIKE; anything else (UNSPECIFIED, unknown numbers) is INVALID_ARGUMENT.
pub fn check_kind(kind: i32) -> Result<EngagementKind, Status> {
    match EngagementKind::try_from(kind) {
        Ok(k @ (EngagementKind::Click | EngagementKind::Like)) => Ok(k),
        _ => Err(Status::invalid_argument(format!(
            "kind must be ENGAGEMENT_KIND_CLICK or ENGAGEMENT_KIND_LIKE (got {kind})"
        ))),
    }
}

/// Up to `limit` recommendations for `user` as of `now_ms`, best first.
pub async fn recommend(
    storage: &RecStorage,
    peers: &dyn Peers,
    user: &str,
    limit: usize,
    now_ms: i64,
) -> Result<Vec<RecommendedTweet>, Status> {
    let (stored_profile, engaged, popular, recent, following) = futures::try_join!(
        async { storage.profile(user).await.map_err(store_error) },
        async { storage.engaged(user).await.map_err(store_error) },
        async {
            storage
                .popular(now_ms, FALLBACK_CANDIDATES)
                .await
                .map_err(store_error)
        },
        async {
            storage
                .recent_ids(FALLBACK_CANDIDATES)
                .await
                .map_err(store_error)
        },
        peers.following(user),
    )?;
    let profile: HashMap<String, f64> = stored_profile
        .into_iter()
        .map(|(tag, s)| (tag, s.at(now_ms)))
        .filter(|(_, s)| *s > 0.0)
        .collect();
    let tags = top_tags(&profile, TOP_TAGS);
    let by_tag: Vec<u64> =
        futures::future::try_join_all(tags.iter().map(|t| storage.tag_ids(t, PER_TAG)))
            .await
            .map_err(store_error)?
            .into_iter()
            .flatten()
            .collect();

    let mut ids: Vec<u64> = by_tag.clone();
    ids.extend(popular.iter().map(|p| p.0));
    ids.extend(&recent);
    let mut unique = HashSet::new();
    ids.retain(|id| unique.insert(*id));
    let meta = storage.tweet_metas(&ids).await.map_err(store_error)?;

    let picks = rank(&Candidates {
        user,
        now_ms,
        profile: &profile,
        by_tag: &by_tag,
        popular: &popular,
        recent: &recent,
        meta: &meta,
        engaged: &engaged,
        following: &following,
    });
    let wanted: Vec<u64> = picks
        .iter()
        .take(limit + HYDRATE_SLACK)
        .map(|p| p.id)
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut tweets: HashMap<u64, _> = peers
        .batch_get_tweets(wanted)
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    Ok(picks
        .into_iter()
        .filter_map(|p| {
            let tweet = tweets.remove(&p.id)?;
            // The authoritative author check (a popular tweet may never have been tagged).
            if tweet.author == user || following.contains(&tweet.author) {
                return None;
            }
            Some(RecommendedTweet {
                tweet: Some(tweet),
                score: p.score,
                reasons: p.reasons,
            })
        })
        .take(limit)
        .collect())
}

#[tonic::async_trait]
impl RecommendationService for RecommendationHandler {
    /// Validates, checks the tweet exists, publishes Engagement (keyed by user) and answers
    /// the event id. The profile is updated when the event is consumed.
    async fn record_engagement(
        &self,
        req: Request<RecordEngagementRequest>,
    ) -> Result<Response<RecordEngagementResponse>, Status> {
        let req = req.into_inner();
        check_user("user", &req.user)?;
        if req.tweet_id == 0 {
            return Err(Status::invalid_argument(
                "tweet_id must be a tweet id (non-zero)",
            ));
        }
        let kind = check_kind(req.kind)?;
        if self.peers.get_tweet(req.tweet_id).await?.is_none() {
            return Err(Status::not_found(format!(
                "tweet {} does not exist",
                req.tweet_id
            )));
        }
        let at = now_ms();
        let event = Engagement {
            event_id: events::event_id(),
            occurred_at: Some(events::timestamp(at)),
            user: req.user.clone(),
            tweet_id: req.tweet_id,
            kind: kind as i32,
        };
        // The event is the record: stored in the outbox (one atomic write), counted by the
        // Engagement consumer once per (user, tweet, kind).
        self.storage
            .store()
            .apply_atomic(vec![self.outbox.entry(&Message::of(&req.user, &event, at))])
            .await
            .map_err(store_error)?;
        Ok(Response::new(RecordEngagementResponse {
            event_id: event.event_id,
        }))
    }

    /// Up to `limit` (default 10, at most 50) tweets, best first. For a user with a profile,
    /// tweets from their strongest tags come first, with `score` their interest and
    /// `reasons` the matching tags, strongest first. Popular tweets (`score` = decayed
    /// popularity) and then recent ones (`score` 0) make up a cold start, or fill a short
    /// list; those picks have empty `reasons`: they are not explained by the profile.
    async fn recommend(
        &self,
        req: Request<RecommendRequest>,
    ) -> Result<Response<RecommendResponse>, Status> {
        let req = req.into_inner();
        check_user("user", &req.user)?;
        let limit = page_size(req.limit, 10, 50);
        let items = recommend(&self.storage, &*self.peers, &req.user, limit, now_ms()).await?;
        Ok(Response::new(RecommendResponse { items }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(check_kind(1).unwrap(), EngagementKind::Click);
        assert_eq!(check_kind(2).unwrap(), EngagementKind::Like);
        for bad in [0, 3, -1] {
            let e = check_kind(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("kind"), "{}", e.message());
        }
    }
}
