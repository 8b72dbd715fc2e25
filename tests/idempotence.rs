//! Consumers take repeated and late events in their stride: the embedded system (every
//! service in this process, memory backends), with events published again by hand, as an
//! outbox relay handing over or a redelivery after a crash would.

mod common;

use std::time::{Duration, Instant};

use prost::Message as _;
use starling_proto::events::v1::{FollowChanged, TweetCreated};
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::{FollowRequest, UnfollowRequest};
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::CreateTweetRequest;
use starling_runtime::events::topics::{FOLLOW_CHANGED, TWEET_CREATED};
use starling_runtime::events::{event_id, now_ms, timestamp, Message};
use starling_runtime::store::{id_member, Lex};
use starling_runtime::ServiceContext;

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn home(ctx: &ServiceContext, user: &str) -> Vec<String> {
    ctx.store
        .zrange_lex(&format!("home:{user}"), Lex::Before(None), 1000)
        .await
        .expect("read timeline")
}

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
        .expect("tweet")
        .id
}

fn follow_event(follower: &str, followee: &str, following: bool) -> Message {
    let at = now_ms();
    let e = FollowChanged {
        event_id: event_id(),
        occurred_at: Some(timestamp(at)),
        follower: follower.into(),
        followee: followee.into(),
        following,
    };
    Message::new(FOLLOW_CHANGED, follower, e.encode_to_vec(), at)
}

#[tokio::test]
async fn late_and_repeated_events_change_nothing() {
    let (ctx, running) = common::embedded_app("idem", 100_000).await;
    let followers = FollowerServiceClient::new(ctx.mesh.channel("follower"));
    starling::users::register_users(
        &ctx.mesh.channel("follower"),
        &["alice".into(), "bob".into(), "carol".into()],
    )
    .await
    .expect("register users");

    // alice follows bob, then unfollows: bob's tweet comes and goes.
    let t1 = post(&ctx, "bob", "a new novel for my book club").await;
    followers
        .clone()
        .follow(FollowRequest {
            follower: "alice".into(),
            followee: "bob".into(),
        })
        .await
        .unwrap();
    until("merged on follow", async || {
        home(&ctx, "alice").await.contains(&id_member(t1))
    })
    .await;
    followers
        .clone()
        .unfollow(UnfollowRequest {
            follower: "alice".into(),
            followee: "bob".into(),
        })
        .await
        .unwrap();
    until("removed on unfollow", async || {
        !home(&ctx, "alice").await.contains(&id_member(t1))
    })
    .await;

    // The old "alice follows bob" arrives again, late; then a marker event on the same key
    // (alice follows carol), handled after it, since one key's events stay in order.
    let t2 = post(&ctx, "carol", "a walk in the mountains").await;
    ctx.bus
        .publish(follow_event("alice", "bob", true))
        .await
        .unwrap();
    followers
        .clone()
        .follow(FollowRequest {
            follower: "alice".into(),
            followee: "carol".into(),
        })
        .await
        .unwrap();
    until("the marker is handled", async || {
        home(&ctx, "alice").await.contains(&id_member(t2))
    })
    .await;
    assert!(
        !home(&ctx, "alice").await.contains(&id_member(t1)),
        "a late follow event must not bring back the tweets of someone alice unfollowed"
    );

    // carol's TweetCreated delivered three times more: once in the timeline.
    let created = TweetCreated {
        event_id: event_id(),
        occurred_at: Some(timestamp(now_ms())),
        tweet_id: t2,
        author: "carol".into(),
        text: "a walk in the mountains".into(),
    };
    for _ in 0..3 {
        ctx.bus
            .publish(Message::new(
                TWEET_CREATED,
                "carol",
                created.encode_to_vec(),
                now_ms(),
            ))
            .await
            .unwrap();
    }
    let t3 = post(&ctx, "carol", "another walk").await;
    until("later posts still flow", async || {
        home(&ctx, "alice").await.contains(&id_member(t3))
    })
    .await;
    let entries = home(&ctx, "alice").await;
    assert_eq!(
        entries.iter().filter(|m| **m == id_member(t2)).count(),
        1,
        "{entries:?}"
    );
    starling::up::stop_all(running).await.unwrap();
}
