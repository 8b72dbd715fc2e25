//! The event pipeline's failure behaviour on real Redis and Kafka: a fan-out to 100,000
//! followers survives `kill -9` of its consumer, and a poison message ends in the dead-letter
//! topic without stalling the partition.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use deadpool_redis::redis;
use prost::Message as _;
use starling_proto::events::v1::TweetCreated;
use starling_runtime::events::topics::{dead_letter_topic, groups, TWEET_CREATED};
use starling_runtime::events::{now_ms, EventBus, KafkaBus, Message};
use starling_runtime::store::{id_member, RedisStore, Store, Write};

const FOLLOWERS: usize = 100_000;

fn follower_names() -> Vec<String> {
    (0..FOLLOWERS).map(|i| format!("f{i:06}")).collect()
}

/// How many of `users` have `tweet_id` in their home timeline (one pipelined round trip).
async fn delivered(redis_url: &str, ns: &str, users: &[String], tweet_id: u64) -> usize {
    let pool = deadpool_redis::Config::from_url(redis_url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let mut pipe = redis::pipe();
    for u in users {
        pipe.cmd("ZSCORE")
            .arg(format!("{ns}:home:{u}"))
            .arg(id_member(tweet_id));
    }
    let scores: Vec<Option<f64>> = pipe.query_async(&mut conn).await.unwrap();
    scores.iter().filter(|s| s.is_some()).count()
}

#[tokio::test]
async fn fan_out_to_100k_followers_survives_kill_9_and_resumes() {
    let _serial = serial().await;
    let Some(b) = AppBackends::start("crash").await else {
        return;
    };
    let (redis_url, ns) = (b.redis.clone(), b.namespace.clone());
    let page = ["--fanout-page", "1000"];
    let _follower = b.serve("follower", &page, Stdio::null()).await;
    let timeline = b.serve("timeline", &page, Stdio::null()).await;

    // 100,000 followers of "celeb", written straight into the follower service's storage.
    let store = RedisStore::connect(&redis_url, &format!("{ns}:"), 2)
        .await
        .unwrap();
    let users = follower_names();
    store
        .apply(
            users
                .iter()
                .map(|u| Write::ZAdd {
                    key: starling_follower::storage::followers_key_of(u, "celeb"),
                    member: u.clone(),
                })
                .collect(),
        )
        .await
        .unwrap();

    let tweet_id = 4_242_424_242;
    let bus = KafkaBus::connect(&b.kafka, &ns).await.unwrap();
    let event = TweetCreated {
        tweet_id,
        author: "celeb".into(),
        text: "hello".into(),
        ..Default::default()
    };
    bus.publish(Message::new(
        TWEET_CREATED,
        "celeb",
        event.encode_to_vec(),
        now_ms(),
    ))
    .await
    .unwrap();

    // Kill the consumer as soon as the fan-out has checkpointed its first pages.
    let checkpoint = format!("fanout:{tweet_id}");
    let started = eventually(Duration::from_secs(90), || async {
        store.get(&checkpoint).await.unwrap().is_some()
    })
    .await;
    assert!(started, "the fan-out started and checkpointed");
    timeline.kill9();
    let partial = delivered(&redis_url, &ns, &users, tweet_id).await;
    assert!(
        store.get(&checkpoint).await.unwrap().is_some(),
        "killed mid-way: the checkpoint is still there"
    );
    assert!(
        partial < FOLLOWERS,
        "killed before the end ({partial} delivered)"
    );
    eprintln!("killed after {partial} of {FOLLOWERS} followers");

    // A new consumer process: Kafka redelivers the uncommitted event and the fan-out resumes.
    let log_path = std::env::temp_dir().join(format!("{ns}-timeline.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let _timeline = b.serve("timeline", &page, Stdio::from(log)).await;
    let done = eventually(Duration::from_secs(120), || async {
        store.get(&checkpoint).await.unwrap().is_none()
    })
    .await;
    assert!(done, "the resumed fan-out finished");
    assert_eq!(
        delivered(&redis_url, &ns, &users, tweet_id).await,
        FOLLOWERS,
        "every follower has the tweet"
    );
    // Exactly once: a home timeline is a set, and the tweet is in each exactly one time.
    let sample = store
        .zrange_lex(
            "home:f000000",
            starling_runtime::store::Lex::Before(None),
            10,
        )
        .await
        .unwrap();
    assert_eq!(sample, vec![id_member(tweet_id)]);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("resuming fan-out from checkpoint"),
        "the restart resumed rather than restarted:\n{log}"
    );
    let _ = std::fs::remove_file(&log_path);
}

#[tokio::test]
async fn poison_message_goes_to_dead_letters_and_later_ones_flow() {
    let _serial = serial().await;
    let Some(b) = AppBackends::start("poison").await else {
        return;
    };
    let (redis_url, ns) = (b.redis.clone(), b.namespace.clone());
    let _follower = b.serve("follower", &[], Stdio::null()).await;
    let _timeline = b.serve("timeline", &[], Stdio::null()).await;
    let bus: Arc<dyn EventBus> = Arc::new(KafkaBus::connect(&b.kafka, &ns).await.unwrap());
    let mut dead = bus
        .subscribe(
            "dlq-reader",
            &[dead_letter_topic(TWEET_CREATED, groups::TIMELINE)],
        )
        .await
        .unwrap();
    // Same key as the good message after it: same partition, so it would block it.
    bus.publish(Message::new(
        TWEET_CREATED,
        "zed",
        b"\xff\xfe not protobuf".to_vec(),
        now_ms(),
    ))
    .await
    .unwrap();
    let good = TweetCreated {
        tweet_id: 77,
        author: "zed".into(),
        text: "fine".into(),
        ..Default::default()
    };
    bus.publish(Message::new(
        TWEET_CREATED,
        "zed",
        good.encode_to_vec(),
        now_ms(),
    ))
    .await
    .unwrap();

    let d = tokio::time::timeout(Duration::from_secs(90), dead.next())
        .await
        .expect("dead letter in time")
        .unwrap();
    assert_eq!(d.message.payload, b"\xff\xfe not protobuf");
    let store = RedisStore::connect(&redis_url, &format!("{ns}:"), 1)
        .await
        .unwrap();
    let flowed = eventually(Duration::from_secs(60), || async {
        store.zcontains("home:zed", &id_member(77)).await.unwrap()
    })
    .await;
    assert!(flowed, "the message after the poison one was processed");
    assert!(
        d.message.error.as_deref().unwrap_or("").contains("poison"),
        "the dead letter says why: {:?}",
        d.message.error
    );

    // `starling dlq list` shows it (without consuming it), `replay` sends it round again
    // (and it comes back to the dead-letter topic, being poison).
    let dlq = |verb: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["dlq", verb, "--kafka", &b.kafka, "--namespace", &ns])
            .args(["--topic", TWEET_CREATED, "--group", groups::TIMELINE])
            .args(["--wait-secs", "10"])
            .output()
            .expect("run starling dlq")
    };
    let listed = dlq("list");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    let letter: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap_or("{}")).expect("a JSON line");
    assert_eq!(letter["key"], "zed", "{text}");
    assert!(
        letter["error"].as_str().unwrap_or("").contains("poison"),
        "{text}"
    );
    let replayed = dlq("replay");
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("replayed 1 dead letters"),
        "{replayed:?}"
    );
    let again = tokio::time::timeout(Duration::from_secs(90), dead.next())
        .await
        .expect("the replayed poison message is dead-lettered again")
        .unwrap();
    assert_eq!(again.message.payload, b"\xff\xfe not protobuf");
}
