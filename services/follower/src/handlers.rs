//! gRPC handlers of `starling.follower.v1.FollowerService`.

use starling_proto::events::v1::FollowChanged;
use starling_proto::follower::v1::follower_service_server::FollowerService;
use starling_proto::follower::v1::*;
use starling_runtime::events::{self, now_ms, Message};
use starling_runtime::outbox::Outbox;
use starling_runtime::{check_user, page_size, store_error};
use tonic::{Request, Response, Status};

use crate::storage::{FollowStorage, List};
use crate::users::{Users, MAX_REGISTER};

/// Large pages serve the timeline's fan-out; ordinary clients ask for far fewer.
pub const MAX_PAGE: u32 = 10_000;

pub struct FollowerHandler {
    storage: FollowStorage,
    users: Users,
    outbox: Outbox,
}

impl FollowerHandler {
    pub fn new(storage: FollowStorage, users: Users, outbox: Outbox) -> Self {
        Self {
            storage,
            users,
            outbox,
        }
    }

    /// NOT_FOUND naming the first of `users` who never signed up.
    async fn ensure_registered(&self, users: [(&str, &str); 2]) -> Result<(), Status> {
        let names = users.map(|(_, u)| u);
        let registered = self
            .users
            .registered_at(&names)
            .await
            .map_err(store_error)?;
        for ((field, user), at) in users.iter().zip(registered) {
            if at.is_none() {
                return Err(Status::not_found(format!(
                    "{field} {user:?} is not a user (users exist once they sign up)"
                )));
            }
        }
        Ok(())
    }

    fn check_pair(follower: &str, followee: &str) -> Result<(), Status> {
        check_user("follower", follower)?;
        check_user("followee", followee)?;
        if follower == followee {
            return Err(Status::invalid_argument("a user cannot follow themselves"));
        }
        Ok(())
    }

    /// Changes the edge and stores its `FollowChanged` in the outbox, atomically.
    async fn set(&self, follower: &str, followee: &str, following: bool) -> Result<bool, Status> {
        let at = now_ms();
        let event = FollowChanged {
            event_id: events::event_id(),
            occurred_at: Some(events::timestamp(at)),
            follower: follower.to_string(),
            followee: followee.to_string(),
            following,
        };
        let announce = self.outbox.entry(&Message::of(follower, &event, at));
        self.storage
            .set(follower, followee, following, announce)
            .await
            .map_err(store_error)
    }

    async fn list(
        &self,
        list: List,
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
            .page(list, user, after, size + 1)
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
        self.ensure_registered([("follower", &follower), ("followee", &followee)])
            .await?;
        let changed = self.set(&follower, &followee, true).await?;
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
        let changed = self.set(&follower, &followee, false).await?;
        Ok(Response::new(UnfollowResponse { changed }))
    }

    async fn list_followers(
        &self,
        req: Request<ListFollowersRequest>,
    ) -> Result<Response<ListFollowersResponse>, Status> {
        let r = req.into_inner();
        let (users, next_page_token) = self
            .list(List::Followers, &r.user, r.page_size, &r.page_token)
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
            .list(List::Following, &r.user, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListFollowingResponse {
            users,
            next_page_token,
        }))
    }

    async fn is_following(
        &self,
        req: Request<IsFollowingRequest>,
    ) -> Result<Response<IsFollowingResponse>, Status> {
        let IsFollowingRequest { follower, followee } = req.into_inner();
        check_user("follower", &follower)?;
        check_user("followee", &followee)?;
        let following = self
            .storage
            .is_following(&follower, &followee)
            .await
            .map_err(store_error)?;
        Ok(Response::new(IsFollowingResponse { following }))
    }

    async fn get_follow_counts(
        &self,
        req: Request<GetFollowCountsRequest>,
    ) -> Result<Response<GetFollowCountsResponse>, Status> {
        let user = req.into_inner().user;
        check_user("user", &user)?;
        let followers = self
            .storage
            .count(List::Followers, &user)
            .await
            .map_err(store_error)?;
        let following = self
            .storage
            .count(List::Following, &user)
            .await
            .map_err(store_error)?;
        Ok(Response::new(GetFollowCountsResponse {
            followers,
            following,
        }))
    }

    async fn register_users(
        &self,
        req: Request<RegisterUsersRequest>,
    ) -> Result<Response<RegisterUsersResponse>, Status> {
        let users = req.into_inner().users;
        if users.is_empty() || users.len() > MAX_REGISTER {
            return Err(Status::invalid_argument(format!(
                "users must name 1 to {MAX_REGISTER} users (got {})",
                users.len()
            )));
        }
        for u in &users {
            check_user("users", u)?;
        }
        let created = self
            .users
            .register(&users, now_ms())
            .await
            .map_err(store_error)?;
        Ok(Response::new(RegisterUsersResponse { created }))
    }

    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let user = req.into_inner().user;
        check_user("user", &user)?;
        let at = self
            .users
            .registered_at(&[&user])
            .await
            .map_err(store_error)?
            .pop()
            .flatten()
            .ok_or_else(|| Status::not_found(format!("{user:?} is not a user")))?;
        Ok(Response::new(GetUserResponse {
            user,
            registered_at: Some(events::timestamp(at)),
        }))
    }
}
