//! The application end to end on real backends: five `starling serve` processes on etcd,
//! Redis and the Kafka-protocol broker, driven through the mesh like any client.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use starling_discovery::{Mesh, MeshChannel};
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::*;
use starling_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use starling_proto::recommendation::v1::*;
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::GetHomeTimelineRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::*;
use tonic::Code;

const SERVICES: [&str; 5] = ["tweet", "follower", "timeline", "tagger", "recommendation"];

struct Cluster {
    // Field order: instances stop before their etcd.
    _instances: Vec<Instance>,
    _backends: AppBackends,
    mesh: Mesh,
}

impl Cluster {
    /// `None` when the backends are missing off CI (the test then skips).
    async fn start(tag: &str, extra: &[&str]) -> Option<Cluster> {
        let b = AppBackends::start(tag).await?;
        let mut instances = Vec::new();
        for s in SERVICES {
            instances.push(b.serve(s, extra, Stdio::null()).await);
        }
        let mesh = b.admin_mesh(&SERVICES).await;
        Some(Cluster {
            _instances: instances,
            _backends: b,
            mesh,
        })
    }

    fn ch(&self, s: &str) -> MeshChannel {
        self.mesh.channel(s)
    }

    async fn post(&self, author: &str, text: &str) -> Tweet {
        TweetServiceClient::new(self.ch("tweet"))
            .create_tweet(CreateTweetRequest {
                author: author.into(),
                text: text.into(),
            })
            .await
            .expect("create tweet")
            .into_inner()
            .tweet
            .expect("tweet in answer")
    }

    async fn follow(&self, follower: &str, followee: &str) {
        starling::users::register_users(&self.ch("follower"), &[follower.into(), followee.into()])
            .await
            .expect("register users");
        FollowerServiceClient::new(self.ch("follower"))
            .follow(FollowRequest {
                follower: follower.into(),
                followee: followee.into(),
            })
            .await
            .expect("follow");
    }

    async fn home(&self, user: &str) -> Vec<Tweet> {
        TimelineServiceClient::new(self.ch("timeline"))
            .get_home_timeline(GetHomeTimelineRequest {
                user: user.into(),
                page_size: 50,
                page_token: String::new(),
            })
            .await
            .expect("home timeline")
            .into_inner()
            .tweets
    }

    async fn recommend(&self, user: &str) -> Vec<RecommendedTweet> {
        RecommendationServiceClient::new(self.ch("recommendation"))
            .recommend(RecommendRequest {
                user: user.into(),
                limit: 10,
            })
            .await
            .expect("recommend")
            .into_inner()
            .items
    }
}

const BOOK: &str =
    "Just finished a new novel. Can't wait to talk about it with my book club #nerdalert";

#[tokio::test]
async fn follow_post_read_tag_and_recommend() {
    let _serial = serial().await;
    let Some(c) = Cluster::start("app", &[]).await else {
        return;
    };
    c.follow("alice", "bob").await;
    let posted = c.post("bob", BOOK).await;

    // Fan-out through Kafka: the tweet reaches alice's home timeline.
    let arrived = eventually(Duration::from_secs(60), || async {
        c.home("alice").await.iter().any(|t| t.id == posted.id)
    })
    .await;
    assert!(arrived, "bob's tweet in alice's timeline");
    // The tagger's tags reach the stored tweet; only tags from the list.
    let tags_arrived = eventually(Duration::from_secs(60), || async {
        c.home("alice")
            .await
            .iter()
            .any(|t| t.id == posted.id && !t.tags.is_empty())
    })
    .await;
    assert!(tags_arrived, "tags stored on the tweet");
    let tweet = c
        .home("alice")
        .await
        .into_iter()
        .find(|t| t.id == posted.id)
        .unwrap();
    for tag in &tweet.tags {
        assert!(
            starling_tagger::tags::TAGS.contains(&tag.as_str()),
            "{tag} is not in the list"
        );
    }
    assert!(
        tweet.tags.iter().any(|t| t == "bookworms"),
        "{:?}",
        tweet.tags
    );

    // Another author, whom alice does not follow, writes about books too; a third about cars.
    let carol = c
        .post(
            "carol",
            "Reading a gripping thriller novel tonight, best book of the year #bookworm",
        )
        .await;
    let _dave = c
        .post(
            "dave",
            "Took my car to the track, new tyres and a tuned engine #carsofinstagram",
        )
        .await;
    let tagged = eventually(Duration::from_secs(60), || async {
        let t = TweetServiceClient::new(c.ch("tweet"))
            .get_tweet(GetTweetRequest { id: carol.id })
            .await;
        t.map(|t| {
            t.into_inner()
                .tweet
                .is_some_and(|t| t.tags.iter().any(|g| g == "bookworms"))
        })
        .unwrap_or(false)
    })
    .await;
    assert!(tagged, "carol's tweet tagged bookworms");
    let before = c.recommend("alice").await;

    // alice clicks bob's book tweet: her profile leans to bookworms, and carol's book tweet
    // (not bob's: she engaged with it; and not from someone she follows) is recommended.
    RecommendationServiceClient::new(c.ch("recommendation"))
        .record_engagement(RecordEngagementRequest {
            user: "alice".into(),
            tweet_id: posted.id,
            kind: EngagementKind::Click as i32,
        })
        .await
        .expect("record engagement");
    let changed = eventually(Duration::from_secs(60), || async {
        let recs = c.recommend("alice").await;
        recs.first().is_some_and(|r| {
            r.tweet.as_ref().is_some_and(|t| t.id == carol.id)
                && r.reasons.iter().any(|x| x == "bookworms")
        })
    })
    .await;
    assert!(
        changed,
        "carol's book tweet recommended, explained by bookworms"
    );
    let after = c.recommend("alice").await;
    assert_ne!(
        before
            .iter()
            .map(|r| r.tweet.as_ref().map(|t| t.id))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|r| r.tweet.as_ref().map(|t| t.id))
            .collect::<Vec<_>>(),
        "recommendations changed after the click"
    );
    for r in &after {
        let t = r.tweet.as_ref().unwrap();
        assert_ne!(t.author, "alice");
        assert_ne!(
            t.author, "bob",
            "alice follows bob: his tweets are not recommendations"
        );
    }
}

#[tokio::test]
async fn every_validation_rule_answers_its_status_and_stores_nothing() {
    let _serial = serial().await;
    let Some(c) = Cluster::start("val", &[]).await else {
        return;
    };
    let mut tweets = TweetServiceClient::new(c.ch("tweet"));
    let mut follows = FollowerServiceClient::new(c.ch("follower"));
    let bad_create = [
        ("Bad Name", "hello", "author"),
        ("", "hello", "author"),
        (&*"a".repeat(33), "hello", "author"),
        ("eve", "   ", "empty"),
        ("eve", &*"x".repeat(281), "281"),
    ];
    for (author, text, needle) in bad_create {
        let e = tweets
            .create_tweet(CreateTweetRequest {
                author: author.into(),
                text: text.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{author:?}/{}: {e:?}",
            text.len()
        );
        assert!(e.message().contains(needle), "{}", e.message());
    }
    // 280 characters of a two-byte letter is within the limit.
    tweets
        .create_tweet(CreateTweetRequest {
            author: "frank".into(),
            text: "é".repeat(280),
        })
        .await
        .expect("280 chars");
    let eve = tweets
        .list_user_tweets(ListUserTweetsRequest {
            user: "eve".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(eve.tweets.is_empty(), "rejected tweets were not stored");

    let e = tweets
        .get_tweet(GetTweetRequest { id: 12345 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = tweets
        .get_tweet(GetTweetRequest { id: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = tweets
        .batch_get_tweets(BatchGetTweetsRequest { ids: vec![1; 501] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let found = tweets
        .batch_get_tweets(BatchGetTweetsRequest { ids: vec![1, 2, 3] })
        .await
        .unwrap()
        .into_inner();
    assert!(found.tweets.is_empty(), "unknown ids are simply absent");
    let e = tweets
        .list_user_tweets(ListUserTweetsRequest {
            user: "eve".into(),
            page_size: 10,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = follows
        .follow(FollowRequest {
            follower: "eve".into(),
            followee: "eve".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("themselves"), "{}", e.message());
    let e = follows
        .follow(FollowRequest {
            follower: "eve".into(),
            followee: "NOPE".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("followee"), "{}", e.message());
    // Names nobody registered cannot follow or be followed.
    let e = follows
        .follow(FollowRequest {
            follower: "eve".into(),
            followee: "gus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("\"eve\""), "{}", e.message());
    let e = follows
        .register_users(RegisterUsersRequest {
            users: vec!["eve".into(), "Not A Name".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = follows
        .get_user(GetUserRequest { user: "eve".into() })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "a refused registration registered nobody"
    );
    let registered = follows
        .register_users(RegisterUsersRequest {
            users: vec!["eve".into(), "gus".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.created, 2);
    let eve_user = follows
        .get_user(GetUserRequest { user: "eve".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(eve_user.user, "eve");
    assert!(eve_user.registered_at.is_some());
    let counts = follows
        .get_follow_counts(GetFollowCountsRequest { user: "eve".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (counts.followers, counts.following),
        (0, 0),
        "rejected follows were not stored"
    );
    // Follow and unfollow are idempotent.
    assert!(
        follows
            .follow(FollowRequest {
                follower: "eve".into(),
                followee: "gus".into()
            })
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        !follows
            .follow(FollowRequest {
                follower: "eve".into(),
                followee: "gus".into()
            })
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        follows
            .unfollow(UnfollowRequest {
                follower: "eve".into(),
                followee: "gus".into()
            })
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        !follows
            .unfollow(UnfollowRequest {
                follower: "eve".into(),
                followee: "gus".into()
            })
            .await
            .unwrap()
            .into_inner()
            .changed
    );

    let e = TimelineServiceClient::new(c.ch("timeline"))
        .get_home_timeline(GetHomeTimelineRequest {
            user: "Eve!".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let mut recs = RecommendationServiceClient::new(c.ch("recommendation"));
    let e = recs
        .record_engagement(RecordEngagementRequest {
            user: "eve".into(),
            tweet_id: 999,
            kind: EngagementKind::Like as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = recs
        .record_engagement(RecordEngagementRequest {
            user: "eve".into(),
            tweet_id: 999,
            kind: EngagementKind::Unspecified as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = recs
        .recommend(RecommendRequest {
            user: "".into(),
            limit: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Bytes that are no protobuf message: the caller's mistake, INVALID_ARGUMENT; and
    // nothing stored.
    for (service, path) in [
        ("tweet", "/starling.tweet.v1.TweetService/CreateTweet"),
        ("follower", "/starling.follower.v1.FollowerService/Follow"),
    ] {
        let e = raw_call(c.ch(service), path, vec![0xff, 0xff, 0xff])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e:?}");
        assert!(e.message().contains("decode"), "{}", e.message());
    }
    assert!(tweets
        .list_user_tweets(ListUserTweetsRequest {
            user: "eve".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner()
        .tweets
        .is_empty());
}

/// Sends `body` as the request message of `path`, as a client with a broken encoder would.
async fn raw_call(
    ch: MeshChannel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let bytes = buf.chunk().to_vec();
            buf.advance(bytes.len());
            Ok(Some(bytes))
        }
    }
    struct RawCodec;
    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}
