//! Starling on a Redis Cluster (three masters, one replica each, started by the test): the
//! store keeps its contract, the app's writes spread over the masters and reach timelines,
//! and when a master dies under load its replica takes over and the services go on by
//! themselves. What Redis's asynchronous replication lost in that failover is counted and
//! printed (see ARCHITECTURE.md, "Redis Cluster").

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use starling::chaos::redis_cluster::RedisCluster;
use starling_discovery::Mesh;
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::GetHomeTimelineRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::{CreateTweetRequest, ListUserTweetsRequest};
use starling_runtime::store::slot::hash_slot;
use starling_runtime::store::{RedisStore, Store as _};

async fn cluster(dir: &std::path::Path) -> Option<RedisCluster> {
    require_binary("redis-server")?;
    require_binary("redis-cli")?;
    Some(
        RedisCluster::start(dir, 3)
            .await
            .expect("start a redis cluster"),
    )
}

#[tokio::test]
async fn the_store_keeps_its_contract_on_a_redis_cluster() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(cluster) = cluster(dir.path()).await else {
        return;
    };
    let store = RedisStore::connect_cluster(&cluster.seeds(), "contract:", 4, None)
        .await
        .expect("connect to the cluster");
    starling_runtime::store::contract::run_all(&store, "").await;
    // A brace in the prefix would become every key's hash tag.
    let e = RedisStore::connect_cluster(&cluster.seeds(), "a{b}:", 4, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("brace"), "{e}");
}

async fn post(mesh: &Mesh, author: &str, text: &str) -> Result<u64, tonic::Status> {
    let resp = TweetServiceClient::new(mesh.channel("tweet"))
        .create_tweet(CreateTweetRequest {
            author: author.into(),
            text: text.into(),
        })
        .await?;
    Ok(resp.into_inner().tweet.map(|t| t.id).unwrap_or(0))
}

async fn home(mesh: &Mesh, user: &str) -> Vec<u64> {
    TimelineServiceClient::new(mesh.channel("timeline"))
        .get_home_timeline(GetHomeTimelineRequest {
            user: user.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().tweets.iter().map(|t| t.id).collect())
        .unwrap_or_default()
}

/// Every id in `author`'s list, newest first.
async fn listed(mesh: &Mesh, author: &str) -> HashSet<u64> {
    let mut ids = HashSet::new();
    let mut token = String::new();
    loop {
        let page = TweetServiceClient::new(mesh.channel("tweet"))
            .list_user_tweets(ListUserTweetsRequest {
                user: author.into(),
                page_size: 100,
                page_token: token,
            })
            .await
            .expect("list user tweets")
            .into_inner();
        ids.extend(page.tweets.iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
}

/// The app on a Redis Cluster: follows, posts and timelines work, the keys spread over all
/// three masters; then the master that holds an author's keys is killed while the author
/// posts, its replica takes over, and posting and timelines work again without a restart.
#[tokio::test]
async fn the_app_runs_on_a_redis_cluster_and_survives_a_master_failover() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(mut cluster) = cluster(dir.path()).await else {
        return;
    };
    let Some(mut backends) = AppBackends::start("rcluster").await else {
        return;
    };
    backends.redis = cluster.seeds();
    let mut instances = Vec::new();
    for s in ["tweet", "follower", "timeline"] {
        instances.push(
            backends
                .serve(s, &["--redis-cluster"], Stdio::inherit())
                .await,
        );
    }
    let mesh = backends
        .admin_mesh(&["tweet", "follower", "timeline"])
        .await;

    // Authors and readers in every shard, so every master holds some of their keys.
    let authors: Vec<String> = (0..6).map(|i| format!("author{i}")).collect();
    for a in &authors {
        follow(&mesh, "reader", a).await;
    }
    let mut posted = Vec::new();
    for a in &authors {
        posted.push(
            post(&mesh, a, &format!("hello from {a}"))
                .await
                .expect("post"),
        );
    }
    assert!(
        eventually(Duration::from_secs(60), || async {
            let h = home(&mesh, "reader").await;
            posted.iter().all(|id| h.contains(id))
        })
        .await,
        "every author's post reached the reader's timeline"
    );
    let masters: Vec<u16> = cluster
        .topology()
        .expect("topology")
        .into_iter()
        .filter(|n| n.master)
        .map(|n| n.port)
        .collect();
    assert_eq!(masters.len(), 3);
    for port in &masters {
        let keys = cluster.keys_on(*port).expect("dbsize");
        assert!(keys > 0, "master :{port} holds none of the app's keys");
    }

    // A failover under load: the author keeps posting while the master of their keys dies.
    let author = "author0";
    let ns = backends.namespace.clone();
    let slot =
        hash_slot(format!("{ns}:{}", starling_tweet::storage::user_tweets_key(author)).as_bytes());
    let mut acked = Vec::new();
    let mut failures = 0u32;
    let start = Instant::now();
    let mut killed_at = None;
    let mut first_failure: Option<Duration> = None;
    let mut recovered: Option<Duration> = None;
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(60) {
        if killed_at.is_none() && acked.len() >= 20 {
            let port = cluster.kill_master_of(slot).expect("kill the master");
            eprintln!("killed master :{port} (slot {slot})");
            killed_at = Some(Instant::now());
        }
        n += 1;
        match post(&mesh, author, &format!("post {n}")).await {
            Ok(id) => {
                acked.push(id);
                if let (Some(k), Some(_), None) = (killed_at, first_failure, recovered) {
                    recovered = Some(k.elapsed());
                }
                if recovered.is_some() && acked.len() >= 60 {
                    break;
                }
                // Past the failover without a failure (the client retried through it).
                if let (Some(k), None) = (killed_at, first_failure) {
                    if k.elapsed() > Duration::from_secs(5) && acked.len() >= 60 {
                        recovered = Some(Duration::ZERO);
                        break;
                    }
                }
            }
            Err(status) => {
                failures += 1;
                if let Some(k) = killed_at {
                    first_failure.get_or_insert(k.elapsed());
                } else {
                    panic!("a post failed before the failover: {status}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = recovered.expect("posting works again after the failover");
    eprintln!(
        "failover: first failure {first_failure:?} after the kill, posting again {recovered:?} after it; {failures} posts failed, {} acknowledged",
        acked.len()
    );
    assert!(
        recovered < Duration::from_secs(20),
        "posting took {recovered:?} to recover"
    );
    cluster
        .until_healthy(Duration::from_secs(20))
        .await
        .expect("the cluster settles with the replica promoted");
    let kept = listed(&mesh, author).await;
    let lost: Vec<&u64> = acked.iter().filter(|id| !kept.contains(id)).collect();
    eprintln!(
        "failover: {} of {} acknowledged posts lost (asynchronous replication): {lost:?}",
        lost.len(),
        acked.len()
    );
    // Only a write acknowledged just before the kill can be lost: what the master had not
    // yet sent its replica. Everything acknowledged well after the promotion is kept.
    let last = *acked.last().expect("posts");
    assert!(kept.contains(&last), "the last acknowledged post is kept");
    let after = post(&mesh, author, "after the failover")
        .await
        .expect("post");
    assert!(
        eventually(Duration::from_secs(60), || async {
            home(&mesh, "reader").await.contains(&after)
        })
        .await,
        "a post after the failover reached the reader's timeline"
    );
    for mut i in instances {
        assert!(i.exited().is_none(), "no instance exited");
        i.terminate().await;
    }
}

/// With replica acknowledgements, a write is acknowledged only once the master's replica
/// has it, so killing the master loses none: writes to its slots fail from the kill until
/// the old master is back as the new master's replica, and every acknowledged write is
/// then read back.
#[tokio::test]
async fn with_replica_acks_a_failover_loses_no_acknowledged_write() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(mut cluster) = cluster(dir.path()).await else {
        return;
    };
    let store = RedisStore::connect_cluster(&cluster.seeds(), "acks:", 4, None)
        .await
        .expect("connect to the cluster")
        .with_replica_acks(1);
    // One shard's keys: one slot, one master.
    let key = |i: u32| {
        format!(
            "{}:w{i}",
            starling_runtime::store::slot::user_key("k", "writer")
        )
    };
    let slot = hash_slot(format!("acks:{}", key(0)).as_bytes());
    let write = |i: u32| {
        let store = &store;
        let k = key(i);
        async move {
            store
                .apply_atomic(vec![starling_runtime::store::Write::Set {
                    key: k,
                    value: i.to_be_bytes().to_vec(),
                }])
                .await
        }
    };
    let mut acked = Vec::new();
    let mut i = 0;
    while acked.len() < 200 {
        i += 1;
        write(i).await.expect("a write before the failover");
        acked.push(i);
    }
    let port = cluster.kill_master_of(slot).expect("kill the master");
    let killed = Instant::now();
    let mut failed = 0;
    let mut restarted = false;
    let mut back: Option<Duration> = None;
    while killed.elapsed() < Duration::from_secs(60) {
        i += 1;
        match write(i).await {
            Ok(()) => {
                acked.push(i);
                back.get_or_insert(killed.elapsed());
                if acked.len() >= 400 {
                    break;
                }
            }
            Err(e) => {
                failed += 1;
                if failed % 50 == 1 {
                    eprintln!("refused at {:?}: {e}", killed.elapsed());
                }
            }
        }
        // Once the replica has taken over, bring the old master back: it rejoins as the
        // new master's replica, and writes are acknowledged again.
        if !restarted
            && cluster.topology().is_ok_and(|t| {
                t.iter().any(|n| {
                    n.master
                        && !n.failed
                        && n.port != port
                        && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
                })
            })
        {
            eprintln!("replica promoted {:?} after the kill", killed.elapsed());
            cluster.restart(port).await.expect("restart the old master");
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = back.expect("writes are acknowledged again");
    eprintln!(
        "replica acks: writes acknowledged again {back:?} after the kill ({failed} refused meanwhile); {} acknowledged in all",
        acked.len()
    );
    assert!(restarted, "the replica was promoted");
    let keys: Vec<String> = acked.iter().map(|&i| key(i)).collect();
    let values = store.mget(&keys).await.expect("read back");
    let lost: Vec<u32> = acked
        .iter()
        .zip(&values)
        .filter(|(i, v)| v.as_deref() != Some(&i.to_be_bytes()[..]))
        .map(|(i, _)| *i)
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}
