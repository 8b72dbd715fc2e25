//! `starling bench post`: what the transactional outbox does to the write path of
//! `CreateTweet`, measured against the path it replaced, on the same Redis and broker in
//! the same run.
//!
//! * **store + publish** (before the outbox): the tweet and its author-list entry in one
//!   pipelined round trip, then `TweetCreated` published and awaited (acks=all) before
//!   the call could answer;
//! * **outbox** (now): the tweet's body (one round trip), then its author-list entry and
//!   the event in the outbox stream in one MULTI/EXEC round trip (the body is in another
//!   slot on a Redis Cluster: see `TweetStorage::insert`); the relay publishes later.
//!
//! One caller, sequential calls, the two paths interleaved in rounds so that machine noise
//! hits both alike; latency per call, p50 and p99 over all rounds.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use starling_runtime::events::{EventBus, KafkaBus, Message};
use starling_runtime::outbox::Outbox;
use starling_runtime::store::{id_member, RedisStore, Store, Write};
use starling_tweet::storage::user_tweets_key;

use crate::cli::PostBenchArgs;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: PostBenchArgs) -> anyhow::Result<()> {
    let ns = format!("postbench{:08x}", rand::random::<u32>());
    let store = RedisStore::connect(&args.redis, &format!("{ns}:"), 4)
        .await
        .context("connecting to redis")?;
    let bus = KafkaBus::connect(&args.kafka, &ns)
        .await
        .context("connecting to kafka")?;
    let topic = "bench-tweet-created".to_string();
    bus.create_topics(std::slice::from_ref(&topic)).await?;
    let outbox = Outbox::new("bench");
    let payload = vec![7u8; 120];
    println!(
        "starling bench post: {} calls per path in {} rounds, one caller (redis {}, kafka {})",
        args.calls,
        args.rounds,
        starling_runtime::store::redacted_url(&args.redis),
        args.kafka
    );
    // As the tweet service writes: the body, then the author's list (with the outbox entry,
    // in one atomic step, on the new path).
    let list = user_tweets_key("bench");
    let body = |id: u64| Write::Set {
        key: format!("tweet:{id}"),
        value: payload.clone(),
    };
    let listing = |id: u64| Write::ZAdd {
        key: list.clone(),
        member: id_member(id),
    };
    let writes = |id: u64| vec![body(id), listing(id)];
    let per_round = (args.calls / args.rounds.max(1)).max(1);
    let (mut before, mut now) = (Vec::new(), Vec::new());
    let mut id = 1u64;
    // A warm-up call of each, not counted: connections, metadata, script caches.
    store.apply(writes(0)).await?;
    bus.publish(Message::new(&topic, "bench", payload.clone(), 0))
        .await?;
    for _ in 0..args.rounds.max(1) {
        for _ in 0..per_round {
            id += 1;
            let t = Instant::now();
            store.apply(writes(id)).await?;
            bus.publish(Message::new(&topic, "bench", payload.clone(), 0))
                .await?;
            before.push(t.elapsed());
        }
        for _ in 0..per_round {
            id += 1;
            let step = vec![
                listing(id),
                outbox.entry(&Message::new(&topic, "bench", payload.clone(), 0)),
            ];
            let t = Instant::now();
            store.apply(vec![body(id)]).await?;
            store.apply_atomic(step).await?;
            now.push(t.elapsed());
        }
    }
    before.sort();
    now.sort();
    for (name, d) in [
        ("store + awaited publish (before)", &before),
        ("body, then an atomic step with the outbox", &now),
    ] {
        println!(
            "  {name:<42} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} calls)",
            ms(percentile(d, 0.5)),
            ms(percentile(d, 0.99)),
            d.len()
        );
    }
    let ratio = |p| ms(percentile(&now, p)) / ms(percentile(&before, p)).max(1e-9);
    println!(
        "outbox vs store + publish: p50 {:.2}x, p99 {:.2}x",
        ratio(0.5),
        ratio(0.99)
    );
    // Leave nothing behind in a shared Redis.
    let mut cleanup: Vec<Write> = (0..=id)
        .map(|i| Write::Del {
            key: format!("tweet:{i}"),
        })
        .collect();
    cleanup.push(Write::Del { key: list });
    cleanup.extend(outbox.streams().into_iter().map(|key| Write::Del { key }));
    store.apply(cleanup).await?;
    Ok(())
}
