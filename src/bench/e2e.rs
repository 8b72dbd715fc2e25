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

use crate::cli::{E2eBenchArgs, MeshArgs};

/// Waits until `tweet_id` is in every one of `followers`' home timelines. The fan-out
/// writes followers in name order, so the last one is watched first (one read per poll);
/// then every follower is checked at once, and any still missing are watched until they
/// have it.
async fn visible_to_all(
    store: &Arc<dyn Store>,
    followers: &[String],
    tweet_id: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let member = id_member(tweet_id);
    let until = Instant::now() + timeout;
    let has = |f: &String| {
        let (store, key, member) = (store.clone(), format!("home:{f}"), member.clone());
        async move { store.zcontains(&key, &member).await }
    };
    if let Some(last) = followers.iter().max() {
        while !has(last).await? {
            anyhow::ensure!(
                Instant::now() < until,
                "tweet {tweet_id} not delivered to {last} in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut missing: Vec<&String> = followers.iter().collect();
    while !missing.is_empty() {
        let found = futures::future::try_join_all(missing.iter().map(|f| has(f))).await?;
        missing = missing
            .into_iter()
            .zip(found)
            .filter_map(|(f, ok)| (!ok).then_some(f))
            .collect();
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
        visible_to_all(&ctx.store, fs, warm, Duration::from_secs(120)).await?;
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
        let (store, followers) = (ctx.store.clone(), followers[a].clone());
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
        "{} tweets: CreateTweet returned -> in all {} followers' timelines: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        delays.len(),
        args.followers,
        pct(0.5),
        pct(0.99),
        delays[delays.len() - 1]
    );
    crate::up::stop_all(running).await
}
