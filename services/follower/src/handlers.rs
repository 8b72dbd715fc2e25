//! gRPC handlers of `starling.follower.v1.FollowerService`.

use std::sync::Arc;

use prost::Message as _;
use starling_proto::events::v1::FollowChanged;
use starling_proto::follower::v1::follower_service_server::FollowerService;
use starling_proto::follower::v1::*;
use starling_runtime::events::topics::FOLLOW_CHANGED;
use starling_runtime::events::{self, now_ms, EventBus, Message};
use starling_runtime::{bus_error, check_user, page_size, store_error};
use tonic::{Request, Response, Status};

use crate::storage::{followers_key, following_key, FollowStorage};

/// Large pages serve the timeline's fan-out; ordinary clients ask for far fewer.
pub const MAX_PAGE: u32 = 10_000;

pub struct FollowerHandler {
    storage: FollowStorage,
    bus: Arc<dyn EventBus>,
}

impl FollowerHandler {
    pub fn new(storage: FollowStorage, bus: Arc<dyn EventBus>) -> Self {
        Self { storage, bus }
    }

    fn check_pair(follower: &str, followee: &str) -> Result<(), Status> {
        check_user("follower", follower)?;
        check_user("followee", followee)?;
        if follower == followee {
            return Err(Status::invalid_argument("a user cannot follow themselves"));
        }
        Ok(())
    }

    async fn announce(
        &self,
        follower: &str,
        followee: &str,
        following: bool,
    ) -> Result<(), events::BusError> {
        let at = now_ms();
        let event = FollowChanged {
            event_id: events::event_id(),
            occurred_at: Some(events::timestamp(at)),
            follower: follower.to_string(),
            followee: followee.to_string(),
            following,
        };
        self.bus
            .publish(Message::new(
                FOLLOW_CHANGED,
                follower,
                event.encode_to_vec(),
                at,
            ))
            .await
    }

    async fn list(
        &self,
        key: String,
        user: &str,
        size: u32,
        token: &str,
    ) -> Result<(Vec<String>, String), Status> {
        check_user("user", user)?;
        if !token.is_empty() && check_user("page_token", token).is_err() {
            return Err(Status::invalid_argument(format!(
                "page_token {token:?} is not one this service issued"
            )));
        }
        let size = page_size(size, 100, MAX_PAGE);
        let after = (!token.is_empty()).then_some(token);
        let mut users = self
            .storage
            .page(&key, after, size + 1)
            .await
            .map_err(store_error)?;
        let more = users.len() > size;
        users.truncate(size);
        let next = if more {
            users.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok((users, next))
    }
}

#[tonic::async_trait]
impl FollowerService for FollowerHandler {
    async fn follow(
        &self,
        req: Request<FollowRequest>,
    ) -> Result<Response<FollowResponse>, Status> {
        let FollowRequest { follower, followee } = req.into_inner();
        Self::check_pair(&follower, &followee)?;
        let changed = self
            .storage
            .follow(&follower, &followee)
            .await
            .map_err(store_error)?;
        if changed {
            if let Err(e) = self.announce(&follower, &followee, true).await {
                // Keep the graph and the timelines consistent: undo, and let the client retry.
                if let Err(undo) = self.storage.unfollow(&follower, &followee).await {
                    tracing::error!(%follower, %followee, error = %undo, "could not undo unannounced follow");
                }
                return Err(bus_error(e));
            }
        }
        Ok(Response::new(FollowResponse {
            changed,
            followed_at: Some(events::timestamp(now_ms())),
        }))
    }

    async fn unfollow(
        &self,
        req: Request<UnfollowRequest>,
    ) -> Result<Response<UnfollowResponse>, Status> {
        let UnfollowRequest { follower, followee } = req.into_inner();
        Self::check_pair(&follower, &followee)?;
        let changed = self
            .storage
            .unfollow(&follower, &followee)
            .await
            .map_err(store_error)?;
        if changed {
            if let Err(e) = self.announce(&follower, &followee, false).await {
                if let Err(undo) = self.storage.follow(&follower, &followee).await {
                    tracing::error!(%follower, %followee, error = %undo, "could not undo unannounced unfollow");
                }
                return Err(bus_error(e));
            }
        }
        Ok(Response::new(UnfollowResponse { changed }))
    }

    async fn list_followers(
        &self,
        req: Request<ListFollowersRequest>,
    ) -> Result<Response<ListFollowersResponse>, Status> {
        let r = req.into_inner();
        let (users, next_page_token) = self
            .list(followers_key(&r.user), &r.user, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListFollowersResponse {
            users,
            next_page_token,
        }))
    }

    async fn list_following(
        &self,
        req: Request<ListFollowingRequest>,
    ) -> Result<Response<ListFollowingResponse>, Status> {
        let r = req.into_inner();
        let (users, next_page_token) = self
            .list(following_key(&r.user), &r.user, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListFollowingResponse {
            users,
            next_page_token,
        }))
    }

    async fn get_follow_counts(
        &self,
        req: Request<GetFollowCountsRequest>,
    ) -> Result<Response<GetFollowCountsResponse>, Status> {
        let user = req.into_inner().user;
        check_user("user", &user)?;
        let followers = self
            .storage
            .count(&followers_key(&user))
            .await
            .map_err(store_error)?;
        let following = self
            .storage
            .count(&following_key(&user))
            .await
            .map_err(store_error)?;
        Ok(Response::new(GetFollowCountsResponse {
            followers,
            following,
        }))
    }
}
