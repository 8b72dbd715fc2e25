//! `starling bench e2e`: tweets posted at a steady rate through the mesh, spread over
//! `--authors` authors with `--followers` followers each; for each, the
//! delay from `CreateTweet` returning to the tweet being in every follower's home
//! timeline (the fan-out's last write). Runs the five services in this process on the
//! given backends (`--kafka`, `--redis`; embedded otherwise, which the report says).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::FollowRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::CreateTweetRequest;
use starling_runtime::store::{id_member, Store};
use starling_runtime::ServiceKind;
use starling_timeline::storage::home_key;

use crate::cli::{E2eBenchArgs, MeshArgs};

/// How the bench looks into the timelines. On a single Redis (`redis://`): one pipeline
/// of `ZSCORE`s per look, on a connection of its own. The instrument must not be the
/// load: asking for 1,000 followers as 1,000 separate reads, at 200 tweets a second, made
/// this process and Redis do about as much work checking as fanning out. Otherwise (the
/// embedded store, TLS, a cluster): the store's own reads, one per follower.
#[derive(Clone)]
enum Probe {
    Pipelined {
        conn: deadpool_redis::redis::aio::MultiplexedConnection,
        prefix: String,
    },
    Store(Arc<dyn Store>),
}

impl Probe {
    async fn new(
        args: &E2eBenchArgs,
        store: Arc<dyn Store>,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        match &args.backends.redis {
            Some(url) if !args.backends.redis_cluster && url.starts_with("redis://") => {
                let client = deadpool_redis::redis::Client::open(url.as_str())?;
                Ok(Probe::Pipelined {
                    conn: client.get_multiplexed_async_connection().await?,
                    // The services' store keys carry the namespace (`services::context`).
                    prefix: format!("{namespace}:"),
                })
            }
            _ => Ok(Probe::Store(store)),
        }
    }

    /// Which of `followers` lack `member` in their home timeline.
    async fn lacking<'a>(
        &self,
        followers: &[&'a String],
        member: &str,
    ) -> anyhow::Result<Vec<&'a String>> {
        let found: Vec<bool> = match self {
            Probe::Pipelined { conn, prefix } => {
                let mut pipe = deadpool_redis::redis::pipe();
                for f in followers {
                    pipe.cmd("ZSCORE")
                        .arg(format!("{prefix}{}", home_key(f)))
                        .arg(member);
                }
                let scores: Vec<Option<f64>> = pipe.query_async(&mut conn.clone()).await?;
                scores.into_iter().map(|s| s.is_some()).collect()
            }
            Probe::Store(store) => {
                futures::future::try_join_all(
                    followers
                        .iter()
                        .map(|f| async move { store.zcontains(&home_key(f), member).await }),
                )
                .await?
            }
        };
        anyhow::ensure!(
            found.len() == followers.len(),
            "short answer from the store"
        );
        Ok(followers
            .iter()
            .zip(found)
            .filter_map(|(f, ok)| (!ok).then_some(*f))
            .collect())
    }
}

/// Waits until `tweet_id` is in every one of `followers`' home timelines. The fan-out
/// writes followers in name order, so the last one is watched first (one read per poll);
/// then every follower is checked at once (one look), and any still missing are watched
/// until they have it.
async fn visible_to_all(
    probe: &Probe,
    followers: &[String],
    tweet_id: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let member = id_member(tweet_id);
    let until = Instant::now() + timeout;
    if let Some(last) = followers.iter().max() {
        while !probe.lacking(&[last], &member).await?.is_empty() {
            anyhow::ensure!(
                Instant::now() < until,
                "tweet {tweet_id} not delivered to {last} in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut missing: Vec<&String> = followers.iter().collect();
    loop {
        missing = probe.lacking(&missing, &member).await?;
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "tweet {tweet_id} not delivered to {} followers in {timeout:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(args: E2eBenchArgs) -> anyhow::Result<()> {
    let mesh_args = MeshArgs {
        etcd_security: Default::default(),
        zone: String::new(),
        zone_spill_in_flight: starling_discovery::DEFAULT_ZONE_SPILL_IN_FLIGHT as u64,
        namespace: format!("e2ebench{:08x}", rand::random::<u32>()),
        lease_ttl: 10,
        claim_ttl: 60,
        policies: Vec::new(),
        call_timeout_ms: 10_000,
        no_endpoint_timeout_ms: 2_000,
        attempt_timeout_ms: 1_000,
    };
    let ctx = crate::services::context(&args.backends, &mesh_args, &[]).await?;
    println!(
        "starling bench e2e: {} tweets/s for {}s from {} authors, {} followers each; {}",
        args.rate,
        args.seconds,
        args.authors.max(1),
        args.followers,
        crate::services::describe(&args.backends, &[])
    );
    // As in production: every call on mutual TLS and authorized; the bench calls as admin.
    let identities = crate::up::Identities::Memory(Box::new(crate::ca::Authority::new(1)?));
    let running = crate::up::start_all_as(
        &ctx,
        &identities,
        &mesh_args.namespace,
        &ServiceKind::ALL,
        "127.0.0.1".parse()?,
        1,
        false,
    )
    .await?;
    let ctx = identities.context_as("admin", &ctx, &mesh_args.namespace)?;
    // Each author has followers of their own, so a follower's timeline takes one author's
    // posts (a rate the 800-entry cap keeps for minutes) and fan-outs of different authors
    // run side by side as they do in production.
    let authors: Vec<String> = (0..args.authors.max(1))
        .map(|a| format!("poster{a:03}"))
        .collect();
    let followers: Vec<Vec<String>> = authors
        .iter()
        .map(|a| (0..args.followers).map(|i| format!("{a}r{i:05}")).collect())
        .collect();
    let mut names = authors.clone();
    names.extend(followers.iter().flatten().cloned());
    crate::users::register_users(&ctx.mesh.channel("follower"), &names).await?;
    let pairs: Vec<(String, String)> = authors
        .iter()
        .zip(&followers)
        .flat_map(|(a, fs)| fs.iter().map(move |f| (f.clone(), a.clone())))
        .collect();
    let follower_channel = ctx.mesh.channel("follower");
    let follows: Vec<Result<_, tonic::Status>> = futures::stream::iter(pairs)
        .map(|(follower, followee)| {
            let mut client = FollowerServiceClient::new(follower_channel.clone());
            async move { client.follow(FollowRequest { follower, followee }).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for f in follows {
        f?;
    }
    let probe = Probe::new(&args, ctx.store.clone(), &mesh_args.namespace).await?;
    let mut tweets = TweetServiceClient::new(ctx.mesh.channel("tweet"));
    // Warm-up: consumer groups join and connections open before anything is measured.
    for (author, fs) in authors.iter().zip(&followers) {
        let warm = tweets
            .create_tweet(CreateTweetRequest {
                author: author.clone(),
                text: "warming up".into(),
            })
            .await?
            .into_inner()
            .tweet
            .map(|t| t.id)
            .unwrap_or_default();
        visible_to_all(&probe, fs, warm, Duration::from_secs(120)).await?;
    }

    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let count = (args.rate * args.seconds).round().max(1.0) as usize;
    let mut ticker = tokio::time::interval(interval);
    let followers: Vec<Arc<Vec<String>>> = followers.into_iter().map(Arc::new).collect();
    let mut checks = Vec::new();
    for i in 0..count {
        ticker.tick().await;
        let a = i % authors.len();
        let tweet = tweets
            .create_tweet(CreateTweetRequest {
                author: authors[a].clone(),
                text: format!("tweet number {i} about movies and music"),
            })
            .await?
            .into_inner()
            .tweet
            .map(|t| t.id)
            .unwrap_or_default();
        let returned = Instant::now();
        let (probe, followers) = (probe.clone(), followers[a].clone());
        checks.push(tokio::spawn(async move {
            visible_to_all(&probe, &followers, tweet, Duration::from_secs(60))
                .await
                .map(|()| returned.elapsed())
        }));
    }
    let mut delays = Vec::new();
    for c in checks {
        delays.push(c.await??);
    }
    delays.sort_unstable();
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "{} tweets: CreateTweet returned -> in all {} followers' timelines: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        delays.len(),
        args.followers,
        pct(0.5),
        pct(0.99),
        delays[delays.len() - 1]
    );
    crate::up::stop_all(running).await
}
