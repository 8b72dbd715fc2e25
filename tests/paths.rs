//! Paths of the application and the runtime that only show when something specific happens,
//! each with a test that fails when the path breaks: a celebrity's tweets merged into
//! timelines at read time, a follow filling the timeline with the followee's earlier
//! tweets and an unfollow taking them out, and a drain that lets a call which cannot be
//! retried finish. In one process, on the embedded backends.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use starling_discovery::{MemoryRegistry, Mesh, MeshConfig, Registry};
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::{FollowRequest, UnfollowRequest};
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::GetHomeTimelineRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::tweet_service_server::{TweetService, TweetServiceServer};
use starling_proto::tweet::v1::*;
use starling_runtime::events::MemoryBus;
use starling_runtime::server::{self, ServerConfig};
use starling_runtime::store::MemoryStore;
use starling_runtime::{AppSettings, ServiceContext, ServiceKind, ServiceParts};
use tonic::{Request, Response, Status};

async fn post(ctx: &ServiceContext, author: &str, text: &str) -> u64 {
    TweetServiceClient::new(ctx.mesh.channel("tweet"))
        .create_tweet(CreateTweetRequest {
            author: author.into(),
            text: text.into(),
        })
        .await
        .expect("post")
        .into_inner()
        .tweet
        .expect("the tweet")
        .id
}

async fn home(ctx: &ServiceContext, user: &str) -> Vec<u64> {
    let mut req = Request::new(GetHomeTimelineRequest {
        user: user.into(),
        page_size: 50,
        page_token: String::new(),
    });
    req.metadata_mut()
        .insert("x-user-id", user.parse().expect("a header value"));
    TimelineServiceClient::new(ctx.mesh.channel("timeline"))
        .get_home_timeline(req)
        .await
        .map(|r| r.into_inner().tweets.iter().map(|t| t.id).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celebritys_tweets_are_merged_in_at_read_time() {
    let (ctx, running) = common::embedded_app("celeb", 2).await;
    let fans: Vec<String> = (0..3).map(|i| format!("fan{i}")).collect();
    let mut names = fans.clone();
    names.push("star".into());
    starling::users::register_users(&ctx.mesh.channel("follower"), &names)
        .await
        .expect("register users");
    // A follow merges the followee's recent tweets into the follower's stored timeline
    // when its event is handled; handled after the post below, it would store that tweet
    // too. So star posts once first, and the post waits until fan0, following last, has
    // that earlier tweet stored: fan0's follow was handled (a fan-out of the earlier
    // tweet cannot have put it there: before fan0 followed, fan0 was not a follower;
    // after, star had three followers and was not fanned out).
    let earlier = post(&ctx, "star", "Before anyone followed").await;
    let mut follows = FollowerServiceClient::new(ctx.mesh.channel("follower"));
    for fan in fans.iter().rev() {
        follows
            .follow(FollowRequest {
                follower: fan.clone(),
                followee: "star".into(),
            })
            .await
            .expect("follow");
    }
    let merged = eventually(Duration::from_secs(10), || async {
        ctx.store
            .zcontains(
                &starling_timeline::storage::home_key("fan0"),
                &starling_runtime::store::id_member(earlier),
            )
            .await
            .unwrap_or(false)
    })
    .await;
    assert!(merged, "fan0's follow merged star's earlier tweet");
    let id = post(&ctx, "star", "Three followers make a celebrity here").await;
    // The fan-out marks the author a celebrity instead of writing three timelines.
    let marked = eventually(Duration::from_secs(10), || async {
        ctx.store
            .get(&starling_timeline::storage::celebrity_key("star"))
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    assert!(marked, "star is marked a celebrity");
    let stored = ctx
        .store
        .zcontains(
            &starling_timeline::storage::home_key("fan0"),
            &starling_runtime::store::id_member(id),
        )
        .await
        .expect("read fan0's stored timeline");
    assert!(
        !stored,
        "not fanned out: the tweet is not in fan0's stored timeline"
    );
    for fan in &fans {
        assert!(
            home(&ctx, fan).await.contains(&id),
            "{fan} sees the celebrity's tweet, merged in at read time"
        );
    }
    starling::up::stop_all(running).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_brings_earlier_tweets_and_an_unfollow_takes_them_out() {
    let (ctx, running) = common::embedded_app("backfill", 100_000).await;
    starling::users::register_users(&ctx.mesh.channel("follower"), &["ann".into(), "bo".into()])
        .await
        .expect("register users");
    // Posted before anyone follows bo: no fan-out reaches ann.
    let earlier = [
        post(&ctx, "bo", "Before ann followed, one").await,
        post(&ctx, "bo", "Before ann followed, two").await,
    ];
    let mut follows = FollowerServiceClient::new(ctx.mesh.channel("follower"));
    follows
        .follow(FollowRequest {
            follower: "ann".into(),
            followee: "bo".into(),
        })
        .await
        .expect("follow");
    let backfilled = eventually(Duration::from_secs(10), || async {
        let shown = home(&ctx, "ann").await;
        earlier.iter().all(|id| shown.contains(id))
    })
    .await;
    assert!(
        backfilled,
        "following bo brings bo's earlier tweets into ann's timeline"
    );

    follows
        .unfollow(UnfollowRequest {
            follower: "ann".into(),
            followee: "bo".into(),
        })
        .await
        .expect("unfollow");
    let removed = eventually(Duration::from_secs(10), || async {
        let shown = home(&ctx, "ann").await;
        !earlier.iter().any(|id| shown.contains(id))
    })
    .await;
    assert!(
        removed,
        "unfollowing bo takes bo's tweets out of ann's timeline"
    );
    starling::up::stop_all(running).await.expect("stop");
}

/// A tweet service whose `CreateTweet` takes `delay`; it says when a call came in and
/// whether it ran to its end.
struct SlowTweets {
    delay: Duration,
    entered: Arc<tokio::sync::Notify>,
    finished: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl TweetService for SlowTweets {
    async fn create_tweet(
        &self,
        req: Request<CreateTweetRequest>,
    ) -> Result<Response<CreateTweetResponse>, Status> {
        self.entered.notify_one();
        tokio::time::sleep(self.delay).await;
        self.finished.store(true, Ordering::SeqCst);
        let r = req.into_inner();
        Ok(Response::new(CreateTweetResponse {
            tweet: Some(Tweet {
                id: 1,
                author: r.author,
                text: r.text,
                ..Default::default()
            }),
        }))
    }

    async fn get_tweet(
        &self,
        _: Request<GetTweetRequest>,
    ) -> Result<Response<GetTweetResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn batch_get_tweets(
        &self,
        _: Request<BatchGetTweetsRequest>,
    ) -> Result<Response<BatchGetTweetsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_user_tweets(
        &self,
        _: Request<ListUserTweetsRequest>,
    ) -> Result<Response<ListUserTweetsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// `CreateTweet` without an idempotency key is never retried, so a drain that cut it off
/// would fail it: stopping the instance while one runs must let it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_a_call_that_cannot_be_retried_finish() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let ctx = ServiceContext {
        mesh: Arc::new(Mesh::new(
            registry.clone(),
            MeshConfig::new(starling_proto::idempotent_methods()),
        )),
        registry: registry.clone(),
        store: Arc::new(MemoryStore::new()),
        bus: Arc::new(MemoryBus::new()),
        settings: Arc::new(AppSettings::default()),
    };
    let entered = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    let slow = SlowTweets {
        delay: Duration::from_millis(800),
        entered: entered.clone(),
        finished: finished.clone(),
    };
    let parts = ServiceParts::new(tonic::service::Routes::new(TweetServiceServer::new(slow)));
    let mut config = ServerConfig::new(ServiceKind::Tweet, "127.0.0.1:0".parse().unwrap());
    config.drain_delay = Duration::from_millis(100);
    let instance = server::start(config, parts, &ctx).await.expect("start");
    let channel = ctx.mesh.channel("tweet");
    assert!(
        channel
            .wait_for_endpoints(Duration::from_secs(5), |e| !e.is_empty())
            .await
    );

    let call = tokio::spawn({
        let channel = channel.clone();
        async move {
            TweetServiceClient::new(channel)
                .create_tweet(CreateTweetRequest {
                    author: "ann".into(),
                    text: "in flight while the instance stops".into(),
                })
                .await
        }
    });
    entered.notified().await;
    instance.stop().await.expect("a clean stop");
    let answer = call.await.expect("the call's task");
    let tweet = answer
        .expect("the call in flight is answered, not cut off")
        .into_inner()
        .tweet
        .expect("a tweet");
    assert_eq!(tweet.text, "in flight while the instance stops");
    assert!(
        finished.load(Ordering::SeqCst),
        "the handler ran to its end"
    );

    // Deregistered: the next call finds no endpoint.
    let after = TweetServiceClient::new(channel)
        .create_tweet(CreateTweetRequest {
            author: "ann".into(),
            text: "after".into(),
        })
        .await
        .expect_err("no instance left");
    assert_eq!(after.code(), tonic::Code::Unavailable, "{after:?}");
}
