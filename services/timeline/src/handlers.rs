//! gRPC handlers of `starling.timeline.v1.TimelineService`.

use std::collections::BTreeSet;

use starling_discovery::MeshChannel;
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::ListFollowingRequest;
use starling_proto::timeline::v1::timeline_service_server::TimelineService;
use starling_proto::timeline::v1::{GetHomeTimelineRequest, GetHomeTimelineResponse};
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::{BatchGetTweetsRequest, ListUserTweetsRequest};
use starling_runtime::{check_user, page_size, store_error};
use tonic::{Request, Response, Status};

use crate::storage::TimelineStorage;

/// Followees checked for celebrities on each read (the first page of ListFollowing).
pub const FOLLOWING_SCAN: u32 = 1_000;

pub struct TimelineHandler {
    storage: TimelineStorage,
    followers: MeshChannel,
    tweets: MeshChannel,
}

impl TimelineHandler {
    pub fn new(storage: TimelineStorage, followers: MeshChannel, tweets: MeshChannel) -> Self {
        Self {
            storage,
            followers,
            tweets,
        }
    }
}

fn upstream(service: &str) -> impl Fn(Status) -> Status + '_ {
    move |s| Status::unavailable(format!("{service} service: {}", s.message()))
}

#[tonic::async_trait]
impl TimelineService for TimelineHandler {
    async fn get_home_timeline(
        &self,
        req: Request<GetHomeTimelineRequest>,
    ) -> Result<Response<GetHomeTimelineResponse>, Status> {
        let req = req.into_inner();
        check_user("user", &req.user)?;
        let before = match req.page_token.as_str() {
            "" => None,
            t => Some(t.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!("page_token {t:?} is not one this service issued"))
            })?),
        };
        let size = page_size(req.page_size, 20, 100);
        // Fanned-out ids, newest first, plus one to know whether there is more.
        let mut ids: BTreeSet<u64> = self
            .storage
            .page(&req.user, before, size + 1)
            .await
            .map_err(store_error)?
            .into_iter()
            .collect();

        // Celebrities the user follows were not fanned out: merge their tweets in now.
        let following = FollowerServiceClient::new(self.followers.clone())
            .list_following(ListFollowingRequest {
                user: req.user.clone(),
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
        for celebrity in celebrities {
            let tweets = TweetServiceClient::new(self.tweets.clone())
                .list_user_tweets(ListUserTweetsRequest {
                    user: celebrity,
                    page_size: (size + 1) as u32,
                    page_token: before.map(|b| b.to_string()).unwrap_or_default(),
                })
                .await
                .map_err(upstream("tweet"))?
                .into_inner()
                .tweets;
            ids.extend(tweets.iter().map(|t| t.id));
        }

        let mut newest: Vec<u64> = ids.into_iter().rev().take(size + 1).collect();
        let more = newest.len() > size;
        newest.truncate(size);
        let next_page_token = if more {
            newest.last().map(u64::to_string).unwrap_or_default()
        } else {
            String::new()
        };
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
        Ok(Response::new(GetHomeTimelineResponse {
            tweets,
            next_page_token,
        }))
    }
}
