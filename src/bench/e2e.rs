//! `starling bench e2e`: tweets posted at a steady rate through the mesh; for each, the
//! delay from `CreateTweet` returning to the tweet being in every follower's home
//! timeline (the fan-out's last write). Runs the five services in this process on the
//! given backends (`--kafka`, `--redis`; embedded otherwise, which the report says).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::FollowRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::CreateTweetRequest;
use starling_runtime::store::{id_member, Store};
use starling_runtime::ServiceKind;

use crate::cli::{E2eBenchArgs, MeshArgs};

/// Waits until `tweet_id` is in every one of `followers`' home timelines.
async fn visible_to_all(
    store: &Arc<dyn Store>,
    followers: &[String],
    tweet_id: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let member = id_member(tweet_id);
    let mut missing: HashSet<&String> = followers.iter().collect();
    let until = Instant::now() + timeout;
    while !missing.is_empty() {
        let mut found = Vec::new();
        for f in &missing {
            if store.zcontains(&format!("home:{f}"), &member).await? {
                found.push(*f);
            }
        }
        for f in found {
            missing.remove(f);
        }
        if missing.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "tweet {tweet_id} not delivered to {} followers in {timeout:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub async fn run(args: E2eBenchArgs) -> anyhow::Result<()> {
    let mesh_args = MeshArgs {
        etcd_security: Default::default(),
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
        "starling bench e2e: {} tweets/s for {}s, {} followers; {}",
        args.rate,
        args.seconds,
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
    let followers: Vec<String> = (0..args.followers)
        .map(|i| format!("reader{i:05}"))
        .collect();
    let mut names = followers.clone();
    names.push("poster".into());
    crate::users::register_users(&ctx.mesh.channel("follower"), &names).await?;
    let mut follow = FollowerServiceClient::new(ctx.mesh.channel("follower"));
    for f in &followers {
        follow
            .follow(FollowRequest {
                follower: f.clone(),
                followee: "poster".into(),
            })
            .await?;
    }
    let mut tweets = TweetServiceClient::new(ctx.mesh.channel("tweet"));
    // Warm-up: consumer groups join and connections open before anything is measured.
    let warm = tweets
        .create_tweet(CreateTweetRequest {
            author: "poster".into(),
            text: "warming up".into(),
        })
        .await?
        .into_inner()
        .tweet
        .map(|t| t.id)
        .unwrap_or_default();
    visible_to_all(&ctx.store, &followers, warm, Duration::from_secs(120)).await?;

    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let count = (args.rate * args.seconds).round().max(1.0) as usize;
    let mut ticker = tokio::time::interval(interval);
    let followers = Arc::new(followers);
    let mut checks = Vec::new();
    for i in 0..count {
        ticker.tick().await;
        let tweet = tweets
            .create_tweet(CreateTweetRequest {
                author: "poster".into(),
                text: format!("tweet number {i} about movies and music"),
            })
            .await?
            .into_inner()
            .tweet
            .map(|t| t.id)
            .unwrap_or_default();
        let returned = Instant::now();
        let (store, followers) = (ctx.store.clone(), followers.clone());
        checks.push(tokio::spawn(async move {
            visible_to_all(&store, &followers, tweet, Duration::from_secs(60))
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
        "{} tweets: CreateTweet returned -> in all {} timelines: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        delays.len(),
        args.followers,
        pct(0.5),
        pct(0.99),
        delays[delays.len() - 1]
    );
    crate::up::stop_all(running).await
}
