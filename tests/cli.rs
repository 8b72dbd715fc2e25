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

/// A channel to the service at `addr` over mutual TLS, as `admin` from `pki`.
fn tls_channel(addr: &str, pki: &std::path::Path) -> tonic::transport::Channel {
    let admin = starling_discovery::MeshTls::from_dir(pki, "admin").unwrap();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(admin.connector("localhost").unwrap())
}

fn starling(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .env_remove("STARLING_ETCD")
        .env_remove("STARLING_REDIS")
        .env_remove("STARLING_KAFKA")
        .env_remove("STARLING_EMBEDDED")
        .env_remove("STARLING_TLS_DIR")
        .env_remove("STARLING_INSECURE")
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

    // librdkafka settings: KEY=VALUE; the ones the delivery guarantees rest on are refused;
    // a key librdkafka does not know is named.
    for (option, expect) in [
        ("acks", "KEY=VALUE"),
        ("acks=0", "acks is set by Starling"),
        ("no.such.setting=1", "no.such.setting"),
    ] {
        let out = starling(&["up", "--kafka", "127.0.0.1:1", "--kafka-option", option]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{option}: {out:?}"
        );
    }

    // A topic layout the broker could not honour is refused before anything connects.
    for (args, expect) in [
        (
            vec![
                "--kafka-replication-factor",
                "1",
                "--kafka-min-insync-replicas",
                "2",
            ],
            "min.insync.replicas must be between 1 and the replication factor (1), not 2",
        ),
        (vec!["--kafka-partitions", "0"], "--kafka-partitions"),
    ] {
        let mut all = vec!["up", "--kafka", "127.0.0.1:1"];
        all.extend(args.iter().copied());
        let out = starling(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{args:?}: {out:?}"
        );
    }

    // The mesh is on mutual TLS unless plaintext is asked for by name.
    let out = starling(&[
        "serve",
        "tagger",
        "--etcd",
        "http://127.0.0.1:1",
        "--embedded",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("--tls-dir")
            && err.contains("--insecure")
            && err.contains("starling ca init"),
        "{out:?}"
    );
    let out = starling(&[
        "serve",
        "tagger",
        "--etcd",
        "http://127.0.0.1:1",
        "--embedded",
        "--tls-dir",
        "/nonexistent-starling-pki",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent-starling-pki/ca.crt"),
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
    let pki = common::pki("starling");
    let pki_dir = pki.path().to_str().unwrap().to_string();
    let up = common::up::Up::start_with(&[
        "--replicas",
        "2",
        "--metrics",
        &metrics_addr,
        "--tls-dir",
        &pki_dir,
    ])
    .await;
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
        let mut health = HealthClient::new(tls_channel(&addr_of(service), pki.path()));
        let resp = health
            .check(HealthCheckRequest {
                service: grpc.into(),
            })
            .await
            .unwrap();
        assert_eq!(resp.get_ref().status(), ServingStatus::Serving, "{service}");
    }

    let tags = TaggerServiceClient::new(tls_channel(&addr_of("tagger"), pki.path()))
        .list_tags(ListTagsRequest {})
        .await
        .unwrap();
    assert_eq!(tags.get_ref().tags.len(), 50);
    let err = TweetServiceClient::new(tls_channel(&addr_of("tweet"), pki.path()))
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
        "--tls-dir",
        &pki_dir,
    ]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SERVING"),
        "{out:?}"
    );
    let out = starling(&["health", &addr_of("tagger"), "--timeout-ms", "2000"]);
    assert!(!out.status.success(), "plaintext is refused: {out:?}");
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
        let file = |f: &str| pki.path().join(f).display().to_string();
        let certs = [
            "-cacert".to_string(),
            file("ca.crt"),
            "-cert".to_string(),
            file("admin.crt"),
            "-key".to_string(),
            file("admin.key"),
        ];
        let out = Command::new(&grpcurl)
            .args(&certs)
            .args([&addr, "list"])
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
            .args(&certs)
            .args([&addr, "describe", "starling.tweet.v1.Tweet"])
            .output()
            .unwrap();
        let described = String::from_utf8_lossy(&out.stdout);
        assert!(
            described.contains("google.protobuf.Timestamp created_at"),
            "{described}"
        );
        let out = Command::new(&grpcurl)
            .args(&certs)
            .args([
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

    let pki = common::pki("starling");
    let up = common::up::Up::start_with(&["--tls-dir", pki.path().to_str().unwrap()]).await;
    let lines = up.lines.clone();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("store: embedded") && l.contains("events: embedded")),
        "{lines:?}"
    );
    let channel = |service: &str| tls_channel(&up.banner(service, "ADDR"), pki.path());
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

/// `starling up` with no flags runs the mesh on mutual TLS with a CA made in memory: a
/// plaintext caller, or one with a certificate from another CA, is refused by the services,
/// while the gateway (which holds its identity) gets through.
#[tokio::test]
async fn up_runs_the_mesh_on_mutual_tls_by_default() {
    let up = common::up::Up::start().await;
    assert!(
        up.lines
            .iter()
            .any(|l| l.contains("mutual TLS with a CA made in memory")),
        "{:?}",
        up.lines
    );
    let tagger = up.banner("tagger", "ADDR");
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{tagger}"))
        .unwrap()
        .connect_lazy();
    // No answer: the server speaks TLS, so the client reads its alert as a broken HTTP/2
    // connection (tonic says Unknown, Internal or Unavailable depending on timing).
    TaggerServiceClient::new(plaintext)
        .list_tags(ListTagsRequest {})
        .await
        .expect_err("plaintext is refused");
    let stranger = common::pki("starling");
    let e = TaggerServiceClient::new(tls_channel(&tagger, stranger.path()))
        .list_tags(ListTagsRequest {})
        .await
        .expect_err("a certificate from another CA is refused");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    let gateway = up.banner("gateway-grpc", "ADDR");
    let tags = TaggerServiceClient::connect(format!("http://{gateway}"))
        .await
        .unwrap()
        .list_tags(ListTagsRequest {})
        .await
        .expect("through the gateway, which calls the tagger over mutual TLS")
        .into_inner()
        .tags;
    assert_eq!(tags.len(), 50);
    up.stop().await;
}

/// The README quotes the shipped authorization policy: the quote must stay the policy.
#[test]
fn readme_shows_the_shipped_policy() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let rules: Vec<&str> = starling_runtime::authz::DEFAULT_POLICY
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    let quoted = format!("```\n{}\n```", rules.join("\n"));
    assert!(
        readme.contains(&quoted),
        "README.md must quote services/runtime/src/policy.txt's rules exactly:\n{quoted}"
    );
}
