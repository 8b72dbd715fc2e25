//! Delivery guarantees on real backends: a post is acknowledged once it and its event are
//! stored together (the outbox), so it succeeds while the broker is down, and its event
//! reaches the followers' timelines once the broker is back, even though the broker lost
//! every topic in its restart.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use starling_discovery::{Mesh, MeshConfig};
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::GetHomeTimelineRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::CreateTweetRequest;
use starling_runtime::outbox::{pending, Outbox};
use starling_runtime::store::{id_member, RedisStore, Store as _};

async fn home(mesh: &Mesh, user: &str) -> Result<Vec<u64>, tonic::Status> {
    let resp = TimelineServiceClient::new(mesh.channel("timeline"))
        .get_home_timeline(GetHomeTimelineRequest {
            user: user.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await?;
    Ok(resp.into_inner().tweets.iter().map(|t| t.id).collect())
}

async fn home_ids(mesh: &Mesh, user: &str) -> Vec<u64> {
    home(mesh, user).await.unwrap_or_default()
}

async fn post(mesh: &Mesh, text: &str) -> Result<u64, tonic::Status> {
    let resp = TweetServiceClient::new(mesh.channel("tweet"))
        .create_tweet(CreateTweetRequest {
            author: "bob".into(),
            text: text.into(),
        })
        .await?;
    Ok(resp.into_inner().tweet.map(|t| t.id).unwrap_or(0))
}

#[tokio::test]
async fn posts_succeed_while_the_broker_is_down_and_reach_timelines_after() {
    let _serial = serial().await;
    let Some(redis) = shared("STARLING_TEST_REDIS") else {
        return;
    };
    let Some(mut broker) = Broker::start().await else {
        return;
    };
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let ns = fresh_namespace("outbox");
    let kafka = broker.address();
    let args = ["--redis", redis.as_str(), "--kafka", kafka.as_str()];
    let mut instances = Vec::new();
    for s in ["tweet", "follower", "timeline"] {
        instances.push(Instance::serve_with(s, &etcd, &ns, &args, Stdio::inherit()).await);
    }
    let registry = Arc::new(etcd.registry(&ns, LEASE_TTL).await);
    let mesh = Mesh::new(
        registry,
        MeshConfig::new(starling_proto::idempotent_methods()),
    );
    for s in ["tweet", "follower", "timeline"] {
        assert!(
            mesh.channel(s)
                .wait_for_endpoints(Duration::from_secs(15), |e| !e.is_empty())
                .await
        );
    }
    follow(&mesh, "alice", "bob").await;
    let first = post(&mesh, "before the outage").await.expect("post");
    assert!(
        eventually(Duration::from_secs(60), || async {
            home_ids(&mesh, "alice").await.contains(&first)
        })
        .await,
        "the first post reached alice"
    );

    broker.kill();
    let mut during = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let id = post(&mesh, &format!("during the outage {i}"))
            .await
            .expect("a post succeeds while the broker is down");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the post did not wait for the broker: {:?}",
            t.elapsed()
        );
        during.push(id);
    }
    let store = RedisStore::connect(&redis, &format!("{ns}:"), 1)
        .await
        .expect("redis");
    let outbox = Outbox::new("tweet");
    assert!(
        pending(&store, &outbox).await.expect("outbox") >= 5,
        "the events wait in the outbox"
    );

    broker.restart().await;
    // Waits for the posts, restarting (as a supervisor would) an instance that librdkafka
    // crashed: a Fetch answer whose leader-change tags name a topic by neither name nor id
    // makes librdkafka 2.12.1 (the newest rdkafka-sys) `strcmp` a null name in
    // `rd_kafka_metadata_update_op`, a SIGSEGV; this broker, restarted without its topics,
    // sends such answers (about 1 run in 15 here; see ARCHITECTURE.md, "Known issues").
    // Any other exit fails the test. What it proves stays the same: an acknowledged post
    // reaches the timeline however the processes come and go.
    let mut crashed = Vec::new();
    let until = Instant::now() + Duration::from_secs(90);
    let delivered = loop {
        let home = home_ids(&mesh, "alice").await;
        if during.iter().all(|id| home.contains(id)) {
            break true;
        }
        if Instant::now() > until {
            break false;
        }
        for instance in instances.iter_mut() {
            let Some(status) = instance.exited() else {
                continue;
            };
            use std::os::unix::process::ExitStatusExt as _;
            if status.signal() != Some(11) {
                continue;
            }
            let service = instance
                .id
                .split('-')
                .next()
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "{} died of SIGSEGV (librdkafka); restarting it",
                instance.id
            );
            crashed.push(instance.id.clone());
            *instance = Instance::serve_with(&service, &etcd, &ns, &args, Stdio::inherit()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !crashed.is_empty() {
        eprintln!("restarted after a librdkafka SIGSEGV: {crashed:?}");
    }
    if !delivered {
        // Say where the pipeline stopped: the read path, a dead process, the fan-out, or
        // the relay.
        let read = home(&mesh, "alice").await;
        let exited: Vec<String> = instances
            .iter_mut()
            .filter_map(|i| i.exited().map(|s| format!("{} {s}", i.id)))
            .collect();
        let mut stored = Vec::new();
        for id in std::iter::once(&first).chain(&during) {
            let there = store.zcontains("home:alice", &id_member(*id)).await;
            stored.push(format!("{id}: {there:?}"));
        }
        panic!(
            "posts made during the outage ({during:?}) did not all reach alice after the broker \
             came back. GetHomeTimeline: {read:?}; instances that exited: {exited:?}; \
             alice's timeline in Redis: {stored:?}; outbox entries not yet published: {:?}; \
             the broker's log ends with: {}",
            pending(&store, &outbox).await,
            broker.log_tail(2_000)
        );
    }
    let exited: Vec<String> = instances
        .iter_mut()
        .filter_map(|i| i.exited().map(|s| format!("{} {s}", i.id)))
        .collect();
    assert!(exited.is_empty(), "instances exited: {exited:?}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            pending(&store, &outbox).await.unwrap_or(1) == 0
        })
        .await,
        "the outbox is empty once everything is published"
    );
    // Each post exactly once in the timeline.
    let home = home_ids(&mesh, "alice").await;
    let mut unique = home.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), home.len(), "{home:?}");
    drop(instances);
}

/// `starling bench post` stays runnable: a tiny run against the shared backends prints its
/// ratio line.
#[tokio::test]
async fn bench_post_runs() {
    let (Some(redis), Some(kafka)) = (shared("STARLING_TEST_REDIS"), shared("STARLING_TEST_KAFKA"))
    else {
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["bench", "post", "--redis", &redis, "--kafka", &kafka])
        .args(["--calls", "20", "--rounds", "2"])
        .output()
        .expect("run the bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("outbox vs store + publish: p50 "),
        "{text}"
    );
}

/// Redis killed and started again: the first read after the restart already answers (the
/// store does not hand out its dead connection), nothing written before is lost (append-only
/// file), and writes work again within a couple of seconds.
#[tokio::test]
async fn the_store_answers_at_once_after_redis_restarts() {
    let _serial = serial().await;
    if require_binary("redis-server").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut redis = starling::chaos::cluster::Backend::start_redis(dir.path())
        .await
        .expect("start redis");
    let store = RedisStore::connect(&redis.url(), "restart:", 2)
        .await
        .expect("redis");
    store
        .apply(vec![starling_runtime::store::Write::Set {
            key: "before".into(),
            value: b"kept".to_vec(),
        }])
        .await
        .expect("write");
    redis.kill9();
    redis.restart().await.expect("restart redis");
    assert_eq!(
        store
            .get("before")
            .await
            .expect("the first read after the restart"),
        Some(b"kept".to_vec())
    );
    let written = eventually(Duration::from_secs(3), || async {
        store
            .apply(vec![starling_runtime::store::Write::Set {
                key: "after".into(),
                value: b"new".to_vec(),
            }])
            .await
            .is_ok()
    })
    .await;
    assert!(written, "writes work again");
}
