//! Reading a home timeline: the fanned-out entries in the store, the tweets of the
//! celebrities the user follows merged in (they were not fanned out), hydrated with one
//! `BatchGetTweets`. Shared by `GetHomeTimeline` and the live `WatchHomeTimeline`.

use std::collections::BTreeSet;

use starling_discovery::MeshChannel;
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::ListFollowingRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::{BatchGetTweetsRequest, ListUserTweetsRequest, Tweet};
use starling_runtime::store_error;
use tonic::Status;

use crate::storage::TimelineStorage;

/// Followees checked for celebrities on each read (the first page of ListFollowing).
pub const FOLLOWING_SCAN: u32 = 1_000;

/// One page of a home timeline.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Newest first.
    pub tweets: Vec<Tweet>,
    /// The id to read on from (exclusive); `None` when this was the last page.
    pub next_before: Option<u64>,
    /// Whom the user follows, as this read saw it (first [`FOLLOWING_SCAN`]).
    pub following: Vec<String>,
}

#[derive(Clone)]
pub struct HomeReader {
    storage: TimelineStorage,
    followers: MeshChannel,
    tweets: MeshChannel,
}

fn upstream(service: &str) -> impl Fn(Status) -> Status + '_ {
    move |s| Status::unavailable(format!("{service} service: {}", s.message()))
}

impl HomeReader {
    pub fn new(storage: TimelineStorage, followers: MeshChannel, tweets: MeshChannel) -> Self {
        Self {
            storage,
            followers,
            tweets,
        }
    }

    /// Up to `size` entries older than `before` (`None`: the newest), newest first.
    pub async fn page(&self, user: &str, before: Option<u64>, size: usize) -> Result<Page, Status> {
        // Fanned-out ids (newest first, plus one to know whether there is more) and the
        // celebrities the user follows, whose tweets were not fanned out and are merged in
        // now: two independent lookups, made at the same time.
        let fanned_out = async {
            self.storage
                .page(user, before, size + 1)
                .await
                .map_err(store_error)
        };
        let followed = async {
            let following = FollowerServiceClient::new(self.followers.clone())
                .list_following(ListFollowingRequest {
                    user: user.to_string(),
                    page_size: FOLLOWING_SCAN,
                    page_token: String::new(),
                })
                .await
                .map_err(upstream("follower"))?
                .into_inner()
                .users;
            let celebrities = self
                .storage
                .celebrities(&following)
                .await
                .map_err(store_error)?;
            Ok::<_, Status>((following, celebrities))
        };
        let (fanned_out, followed) = futures::join!(fanned_out, followed);
        let mut ids: BTreeSet<u64> = fanned_out?.into_iter().collect();
        let (following, celebrities) = followed?;
        // Each celebrity's latest tweets, all asked for at once.
        let merged = futures::future::try_join_all(celebrities.into_iter().map(|celebrity| {
            let mut tweets = TweetServiceClient::new(self.tweets.clone());
            let page_token = before.map(|b| b.to_string()).unwrap_or_default();
            async move {
                tweets
                    .list_user_tweets(ListUserTweetsRequest {
                        user: celebrity,
                        page_size: (size + 1) as u32,
                        page_token,
                    })
                    .await
                    .map_err(upstream("tweet"))
                    .map(|r| r.into_inner().tweets)
            }
        }))
        .await?;
        ids.extend(merged.iter().flatten().map(|t| t.id));

        let mut newest: Vec<u64> = ids.into_iter().rev().take(size + 1).collect();
        let more = newest.len() > size;
        newest.truncate(size);
        let next_before = if more { newest.last().copied() } else { None };
        let tweets = if newest.is_empty() {
            Vec::new()
        } else {
            TweetServiceClient::new(self.tweets.clone())
                .batch_get_tweets(BatchGetTweetsRequest { ids: newest })
                .await
                .map_err(upstream("tweet"))?
                .into_inner()
                .tweets
        };
        Ok(Page {
            tweets,
            next_before,
            following,
        })
    }

    /// The entries newer than `floor` that `sent` does not hold, reading at most `pages`
    /// pages of `size` (the next page only while a whole page was new); and whom the user
    /// follows.
    pub async fn unsent(
        &self,
        user: &str,
        floor: u64,
        sent: &BTreeSet<u64>,
        size: usize,
        pages: usize,
    ) -> Result<(Vec<Tweet>, Vec<String>), Status> {
        let mut fresh = Vec::new();
        let mut before = None;
        let mut following = Vec::new();
        for i in 0..pages {
            let page = self.page(user, before, size).await?;
            if i == 0 {
                following = page.following;
            }
            let all_new = page
                .tweets
                .iter()
                .all(|t| t.id > floor && !sent.contains(&t.id));
            fresh.extend(
                page.tweets
                    .into_iter()
                    .filter(|t| t.id > floor && !sent.contains(&t.id)),
            );
            match page.next_before {
                Some(next) if all_new => before = Some(next),
                _ => break,
            }
        }
        Ok((fresh, following))
    }
}
