//! The other services recommendation calls (tweet and follower), behind one trait: the
//! service uses [`MeshPeers`] (calls through the mesh), tests substitute an in-memory
//! fake, so ranking, hydration and the consumers run without a network.
//!
//! Failures come back as UNAVAILABLE with a message naming the service, whatever the
//! peer's own code was: to our client, a dependency that cannot answer is this service
//! being unable to answer. The one exception is a tweet that does not exist, which is an
//! answer (`Ok(None)`), not a failure.

use std::collections::HashSet;

use async_trait::async_trait;
use starling_discovery::{Mesh, MeshChannel};
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::ListFollowingRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::{BatchGetTweetsRequest, GetTweetRequest, Tweet};
use tonic::{Code, Status};

/// How many followees [`MeshPeers::following`] reads.
pub const FOLLOWING_PAGE: u32 = 1_000;

#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// The tweet, or `None` if it does not exist.
    async fn get_tweet(&self, id: u64) -> Result<Option<Tweet>, Status>;
    /// The tweets that exist among `ids`, in the order of `ids`.
    async fn batch_get_tweets(&self, ids: Vec<u64>) -> Result<Vec<Tweet>, Status>;
    /// The authors `user` follows.
    async fn following(&self, user: &str) -> Result<HashSet<String>, Status>;
}

/// UNAVAILABLE, naming the service that failed.
pub fn unavailable(service: &str, status: &Status) -> Status {
    tracing::warn!(service, code = ?status.code(), message = status.message(), "peer call failed");
    Status::unavailable(format!(
        "{service} service unavailable: {} ({:?})",
        status.message(),
        status.code()
    ))
}

/// One mesh channel per peer; a client per call is free (clients are thin wrappers).
#[derive(Clone)]
pub struct MeshPeers {
    tweet: MeshChannel,
    follower: MeshChannel,
}

impl MeshPeers {
    /// Must run inside a tokio runtime (the mesh starts watching the peers).
    pub fn new(mesh: &Mesh) -> Self {
        Self {
            tweet: mesh.channel("tweet"),
            follower: mesh.channel("follower"),
        }
    }
}

#[async_trait]
impl Peers for MeshPeers {
    async fn get_tweet(&self, id: u64) -> Result<Option<Tweet>, Status> {
        let mut client = TweetServiceClient::new(self.tweet.clone());
        match client.get_tweet(GetTweetRequest { id }).await {
            Ok(r) => Ok(r.into_inner().tweet),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(unavailable("tweet", &s)),
        }
    }

    async fn batch_get_tweets(&self, ids: Vec<u64>) -> Result<Vec<Tweet>, Status> {
        let mut client = TweetServiceClient::new(self.tweet.clone());
        client
            .batch_get_tweets(BatchGetTweetsRequest { ids })
            .await
            .map(|r| r.into_inner().tweets)
            .map_err(|s| unavailable("tweet", &s))
    }

    async fn following(&self, user: &str) -> Result<HashSet<String>, Status> {
        let mut client = FollowerServiceClient::new(self.follower.clone());
        // The first page (up to 1,000 followees) is enough: someone following more may see
        // a few tweets from the others, which is cheaper than walking every page on each
        // Recommend.
        let page = client
            .list_following(ListFollowingRequest {
                user: user.to_string(),
                page_size: FOLLOWING_PAGE,
                page_token: String::new(),
            })
            .await
            .map_err(|s| unavailable("follower", &s))?;
        Ok(page.into_inner().users.into_iter().collect())
    }
}
