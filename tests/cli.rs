//! The `starling` command as a user meets it: help, errors for bad input, and `starling up`
//! serving health checks, reflection (checked with the real grpcurl) and metrics.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;
use starling_proto::tagger::v1::{tagger_service_client::TaggerServiceClient, ListTagsRequest};
use starling_proto::tweet::v1::{tweet_service_client::TweetServiceClient, GetTweetRequest};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

fn starling(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .env_remove("STARLING_ETCD")
        .env_remove("STARLING_REDIS")
        .env_remove("STARLING_KAFKA")
        .env_remove("STARLING_EMBEDDED")
        .output()
        .expect("run starling")
}

#[test]
fn help_names_every_command_and_its_environment_variables() {
    let out = starling(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "up", "bench"] {
        assert!(text.contains(word), "{word} missing from --help:\n{text}");
    }
    let out = starling(&["serve", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "STARLING_ETCD",
        "STARLING_LISTEN",
        "STARLING_NAMESPACE",
        "STARLING_LEASE_TTL",
        "STARLING_METRICS",
        "--advertise",
    ] {
        assert!(
            text.contains(word),
            "{word} missing from serve --help:\n{text}"
        );
    }
}

#[test]
fn bad_input_gets_a_precise_error() {
    let out = starling(&["serve", "tagger"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--etcd"),
        "{out:?}"
    );

    // No silent fallback to private in-memory data for a served instance, nor for the
    // gateway's accounts.
    let out = starling(&["gateway", "--etcd", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--redis") && err.contains("--embedded"),
        "{out:?}"
    );
    let out = starling(&["serve", "tagger", "--etcd", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--redis") && err.contains("--kafka") && err.contains("--embedded"),
        "{out:?}"
    );
    let out = starling(&[
        "serve",
        "tagger",
        "--etcd",
        "http://127.0.0.1:1",
        "--redis",
        "redis://127.0.0.1:1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--kafka") && !err.contains("needs --redis"),
        "{out:?}"
    );

    let out = starling(&["serve", "tweets", "--etcd", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown service"),
        "{out:?}"
    );

    let out = starling(&["up", "--policy", "tweet=fastest"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown policy"),
        "{out:?}"
    );

    let out = starling(&["up", "--replicas", "0"]);
    assert!(!out.status.success());
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test]
async fn up_serves_every_service_with_health_reflection_and_metrics() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let up = common::up::Up::start_with(&["--replicas", "2", "--metrics", &metrics_addr]).await;
    let lines = up.lines.clone();
    let addr_of = |service: &str| up.banner(service, "ADDR");
    assert_eq!(
        lines.iter().filter(|l| l.contains("(starling.")).count(),
        10,
        "{lines:?}"
    );

    // Health: every service reports SERVING under its gRPC name.
    for (service, grpc) in [
        ("tweet", "starling.tweet.v1.TweetService"),
        ("follower", "starling.follower.v1.FollowerService"),
        ("timeline", "starling.timeline.v1.TimelineService"),
        ("tagger", "starling.tagger.v1.TaggerService"),
        (
            "recommendation",
            "starling.recommendation.v1.RecommendationService",
        ),
    ] {
        let url = format!("http://{}", addr_of(service));
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let resp = health
            .check(HealthCheckRequest {
                service: grpc.into(),
            })
            .await
            .unwrap();
        assert_eq!(resp.get_ref().status(), ServingStatus::Serving, "{service}");
    }

    let tagger = format!("http://{}", addr_of("tagger"));
    let tags = TaggerServiceClient::connect(tagger)
        .await
        .unwrap()
        .list_tags(ListTagsRequest {})
        .await
        .unwrap();
    assert_eq!(tags.get_ref().tags.len(), 50);
    let tweet = format!("http://{}", addr_of("tweet"));
    let err = TweetServiceClient::connect(tweet)
        .await
        .unwrap()
        .get_tweet(GetTweetRequest { id: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Metrics: the calls above are counted per method and code.
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(metrics.contains("200 OK"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("starling_server_requests_total")
                && l.contains("/starling.tagger.v1.TaggerService/ListTags")
                && l.contains("code=\"0\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("code=\"5\""),
        "the NOT_FOUND call is counted with its code"
    );
    assert!(metrics.contains("starling_server_request_duration_seconds_bucket"));

    // The health probe container health checks use.
    let out = starling(&[
        "health",
        &addr_of("tagger"),
        "--service",
        "starling.tagger.v1.TaggerService",
    ]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SERVING"),
        "{out:?}"
    );
    let out = starling(&[
        "health",
        &format!("127.0.0.1:{}", free_port()),
        "--timeout-ms",
        "500",
    ]);
    assert!(!out.status.success(), "nothing listens there");

    // Reflection, through grpcurl 1.8.6 (which speaks only v1alpha).
    if let Some(grpcurl) = require_binary("grpcurl") {
        let addr = addr_of("timeline");
        let out = Command::new(&grpcurl)
            .args(["-plaintext", &addr, "list"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        for s in [
            "starling.timeline.v1.TimelineService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                listed.contains(s),
                "{s} missing from grpcurl list:\n{listed}"
            );
        }
        let out = Command::new(&grpcurl)
            .args(["-plaintext", &addr, "describe", "starling.tweet.v1.Tweet"])
            .output()
            .unwrap();
        let described = String::from_utf8_lossy(&out.stdout);
        assert!(
            described.contains("google.protobuf.Timestamp created_at"),
            "{described}"
        );
        let out = Command::new(&grpcurl)
            .args([
                "-plaintext",
                "-d",
                "{}",
                &addr_of("tagger"),
                "starling.tagger.v1.TaggerService/ListTags",
            ])
            .output()
            .unwrap();
        let called = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && called.contains("bookworms"),
            "{out:?}"
        );
        // The gateway's gRPC port: the five services listed, described and called
        // through it.
        let gateway = up.banner("gateway-grpc", "ADDR");
        let out = Command::new(&grpcurl)
            .args(["-plaintext", &gateway, "list"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        for s in [
            "starling.tweet.v1.TweetService",
            "starling.follower.v1.FollowerService",
            "starling.timeline.v1.TimelineService",
            "starling.tagger.v1.TaggerService",
            "starling.recommendation.v1.RecommendationService",
        ] {
            assert!(
                listed.contains(s),
                "{s} missing from grpcurl list on the gateway:\n{listed}"
            );
        }
        let out = Command::new(&grpcurl)
            .args([
                "-plaintext",
                &gateway,
                "describe",
                "starling.timeline.v1.TimelineService",
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("GetHomeTimeline"),
            "{out:?}"
        );
        let out = Command::new(&grpcurl)
            .args([
                "-plaintext",
                "-d",
                "{}",
                &gateway,
                "starling.tagger.v1.TaggerService/ListTags",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("eco-friendly"),
            "{out:?}"
        );
    }

    // SIGTERM: every instance deregisters, drains and the process exits cleanly.
    up.stop().await;
}

/// `starling up` with nothing installed is the whole app: follow, post, read, tags and
/// recommendations flow through the embedded registry, store and event bus.
#[tokio::test]
async fn up_alone_is_a_working_app() {
    use starling_proto::follower::v1::{
        follower_service_client::FollowerServiceClient, FollowRequest, RegisterUsersRequest,
    };
    use starling_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
    use starling_proto::recommendation::v1::{
        EngagementKind, RecommendRequest, RecordEngagementRequest,
    };
    use starling_proto::timeline::v1::{
        timeline_service_client::TimelineServiceClient, GetHomeTimelineRequest,
    };
    use starling_proto::tweet::v1::CreateTweetRequest;

    let up = common::up::Up::start().await;
    let lines = up.lines.clone();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("store: embedded") && l.contains("events: embedded")),
        "{lines:?}"
    );
    let channel = |service: &str| {
        let addr = up.banner(service, "ADDR");
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    FollowerServiceClient::new(channel("follower"))
        .register_users(RegisterUsersRequest {
            users: vec!["alice".into(), "bob".into()],
        })
        .await
        .unwrap();
    FollowerServiceClient::new(channel("follower"))
        .follow(FollowRequest {
            follower: "alice".into(),
            followee: "bob".into(),
        })
        .await
        .unwrap();
    let posted = TweetServiceClient::new(channel("tweet"))
        .create_tweet(CreateTweetRequest {
            author: "bob".into(),
            text: "Finished a great novel for my book club".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tweet
        .unwrap();
    let mut timeline = TimelineServiceClient::new(channel("timeline"));
    let shown = eventually(Duration::from_secs(10), || {
        let mut timeline = timeline.clone();
        async move {
            let home = timeline
                .get_home_timeline(GetHomeTimelineRequest {
                    user: "alice".into(),
                    page_size: 10,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            home.tweets
                .iter()
                .any(|t| t.id == posted.id && t.tags.iter().any(|g| g == "bookworms"))
        }
    })
    .await;
    assert!(shown, "bob's tweet, tagged, in alice's timeline");
    let mut recs = RecommendationServiceClient::new(channel("recommendation"));
    recs.record_engagement(RecordEngagementRequest {
        user: "carol".into(),
        tweet_id: posted.id,
        kind: EngagementKind::Like as i32,
    })
    .await
    .unwrap();
    let _ = timeline
        .get_home_timeline(GetHomeTimelineRequest {
            user: "carol".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let dave = TweetServiceClient::new(channel("tweet"))
        .create_tweet(CreateTweetRequest {
            author: "dave".into(),
            text: "My book club picked a new novel, reading all weekend".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tweet
        .unwrap();
    let recommended = eventually(Duration::from_secs(10), || {
        let mut recs = recs.clone();
        async move {
            let items = recs
                .recommend(RecommendRequest {
                    user: "carol".into(),
                    limit: 5,
                })
                .await
                .unwrap()
                .into_inner()
                .items;
            items
                .first()
                .is_some_and(|i| i.tweet.as_ref().is_some_and(|t| t.id == dave.id))
        }
    })
    .await;
    assert!(
        recommended,
        "carol liked a book tweet: dave's book tweet is recommended to her"
    );
    up.stop().await;
}
