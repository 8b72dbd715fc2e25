//! The mesh on a three-member etcd cluster: registrations, watches, worker-id claims and
//! calls ride out the leader's death and a frozen member (one that holds its connections
//! open and answers nothing, as a member behind a partition does), and a member that comes
//! back is used again. Each test prints what it measured (election, how soon changes made
//! during the failover reach a watcher, how soon a member leaves and rejoins the rotation).

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd_cluster::EtcdCluster;
use common::*;
use starling_discovery::{EtcdRegistry, Mesh, MeshChannel, MeshConfig, Registry};

/// Tagger instances, each serving its metrics on its own port.
struct Taggers {
    urls: String,
    ns: String,
    live: Vec<(Instance, String)>,
}

impl Taggers {
    async fn start(cluster: &EtcdCluster, ns: &str, n: usize) -> Taggers {
        let mut t = Taggers {
            urls: cluster.urls(),
            ns: ns.to_string(),
            live: Vec::new(),
        };
        for _ in 0..n {
            t.add().await;
        }
        t
    }

    async fn add(&mut self) -> String {
        let metrics = format!("127.0.0.1:{}", free_port());
        let i = Instance::serve_on(
            "tagger",
            &self.urls,
            &self.ns,
            &["--metrics", &metrics],
            Stdio::null(),
        )
        .await;
        let id = i.id.clone();
        self.live.push((i, metrics));
        id
    }

    fn ids(&self) -> HashSet<String> {
        self.live.iter().map(|(i, _)| i.id.clone()).collect()
    }

    /// Waits until every instance has exactly `n` etcd members in rotation; how long that
    /// took.
    async fn await_rotation(&self, n: usize, what: &str) -> Duration {
        let t0 = Instant::now();
        assert!(
            eventually(Duration::from_secs(15), || self.members_in_rotation(n)).await,
            "{what}"
        );
        t0.elapsed()
    }

    /// Whether every instance has exactly `n` etcd members in rotation.
    async fn members_in_rotation(&self, n: usize) -> bool {
        for (_, addr) in &self.live {
            let text = http_get(addr, "/metrics").await;
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix("starling_etcd_members_in_rotation "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if value != Some(n as f64) {
                return false;
            }
        }
        true
    }
}

fn mesh(registry: Arc<EtcdRegistry>) -> (Mesh, MeshChannel) {
    let mut config = MeshConfig::new(starling_proto::idempotent_methods());
    config.idempotent_methods = Arc::new({
        let mut m = (*config.idempotent_methods).clone();
        m.insert("/starling.tagger.v1.TaggerService/ListTags".into());
        m
    });
    let mesh = Mesh::new(registry, config);
    let channel = mesh.channel("tagger");
    (mesh, channel)
}

/// Watches `registry`'s view of the taggers and records every moment an instance that
/// must stay (one of `steady`) is missing from it.
struct Sampler {
    stop: Arc<AtomicBool>,
    missing: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn start(registry: &EtcdRegistry, steady: HashSet<String>) -> Sampler {
        let mut view = registry.watch("tagger");
        let listed = tokio::time::timeout(
            Duration::from_secs(10),
            view.wait_for(|set| steady.iter().all(|id| set.contains_key(id))),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(listed, "the sampler's watch lists the instances");
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, missing) = (stop.clone(), missing.clone());
            async move {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let set = view.borrow().clone();
                    for id in &steady {
                        if !set.contains_key(id) {
                            missing
                                .lock()
                                .unwrap()
                                .push(format!("{id} missing at {:?}", t0.elapsed()));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Sampler {
            stop,
            missing,
            task,
        }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let missing = self.missing.lock().unwrap().clone();
        missing
    }
}

async fn sees(channel: &MeshChannel, ids: &HashSet<String>, timeout: Duration) -> bool {
    channel
        .wait_for_endpoints(timeout, |eps| {
            eps.len() == ids.len() && eps.iter().all(|e| ids.contains(&e.id))
        })
        .await
}

/// Stops the load and the sampler; checks that no call failed and that no live instance
/// was ever missing from the watcher's view. The calls that succeeded.
async fn no_call_failed_and_no_instance_went_missing(load: Load, sampler: Sampler) -> u64 {
    let (ok, failures) = load.finish().await;
    assert_none("failed calls", &failures);
    assert_none(
        "moments a live instance was missing",
        &sampler.finish().await,
    );
    ok
}

fn assert_none(what: &str, list: &[String]) {
    assert!(
        list.is_empty(),
        "{} {what}: {:?}",
        list.len(),
        &list[..list.len().min(5)]
    );
}

#[tokio::test]
async fn losing_the_leader_loses_no_registration_watch_event_claim_or_call() {
    let _serial = serial().await;
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let ns = fresh_namespace("etcd-leader");
    let mut taggers = Taggers::start(&cluster, &ns, 3).await;
    let registry = Arc::new(cluster.registry(&ns, LEASE_TTL).await);
    let (_mesh, channel) = mesh(registry.clone());
    assert!(sees(&channel, &taggers.ids(), Duration::from_secs(10)).await);
    let claim = registry.claim("ids", 4).await.expect("a worker id");
    let load = Load::start(channel.clone(), 4, Duration::from_millis(5));
    assert!(load.progress(50, Duration::from_secs(10)).await);
    // The first instance leaves during the failover; the other two must never vanish.
    let steady: HashSet<String> = taggers.live[1..]
        .iter()
        .map(|(i, _)| i.id.clone())
        .collect();
    let sampler = Sampler::start(&registry, steady).await;

    let leader = cluster.leader().await.expect("a leader");
    let killed_at = Instant::now();
    cluster.kill(leader);
    let election = cluster.await_leader(Duration::from_secs(10)).await;

    // Changes made during the failover reach the watcher as events: one instance joins,
    // one leaves. A watch that relisted instead would keep the leaver for the relist grace
    // (3 TTLs here), so how soon it goes is the proof that no event was skipped.
    let newcomer = taggers.add().await;
    let (leaver, _) = taggers.live.remove(0);
    let left_at = Instant::now();
    leaver.terminate().await;
    assert!(
        sees(&channel, &taggers.ids(), Duration::from_secs(5)).await,
        "the watcher saw the join ({newcomer}) and the leave made during the failover"
    );
    let leave_seen = left_at.elapsed();
    assert!(
        leave_seen < LEASE_TTL * 2,
        "a deregistration during the failover reached the watcher after {leave_seen:?}"
    );

    // Past several TTLs: every live registration is still in etcd, and the claim held.
    tokio::time::sleep(LEASE_TTL * 3).await;
    let listed: HashSet<String> = registry.list("tagger").await.unwrap().into_keys().collect();
    assert_eq!(listed, taggers.ids(), "registrations after the failover");
    assert!(
        claim.is_valid(),
        "the worker-id claim was renewed through the failover"
    );
    let other = cluster.registry(&ns, LEASE_TTL).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(other.claim("ids", 4).await.expect("a free worker id"));
    }
    assert!(
        others.iter().all(|c| c.id != claim.id),
        "a held worker id was given out again"
    );
    assert!(
        other.claim("ids", 4).await.is_err(),
        "the pool of 4 is exhausted: the first claim still counts"
    );

    // The dead member comes back and is taken into rotation again; then another member
    // dies, so the cluster works only with the one that came back.
    cluster.restart(leader);
    let rejoined = taggers
        .await_rotation(
            3,
            "the restarted member is back in every instance's rotation",
        )
        .await;
    let second = (leader + 1) % 3;
    cluster.kill(second);
    cluster.await_leader(Duration::from_secs(10)).await;
    let late = taggers.add().await;
    assert!(
        sees(&channel, &taggers.ids(), Duration::from_secs(5)).await,
        "a registration ({late}) made through the member that came back is watched"
    );
    assert!(load.progress(50, Duration::from_secs(10)).await);

    let ok = no_call_failed_and_no_instance_went_missing(load, sampler).await;
    eprintln!(
        "leader killed: new leader after {election:?}; a SIGTERM during the failover seen \
         after {leave_seen:?}; the restarted member back in rotation after {rejoined:?}; \
         {ok} calls, none failed (since the kill: {:?})",
        killed_at.elapsed()
    );
}

/// A frozen follower: a member that holds its connections and answers nothing, as one
/// behind a partition does. (A frozen *leader* that resumes is another matter: see
/// "Several hosts" in ARCHITECTURE.md.)
#[tokio::test]
async fn a_frozen_member_leaves_the_rotation_and_no_lease_or_call_is_lost() {
    let _serial = serial().await;
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let ns = fresh_namespace("etcd-frozen");
    let mut taggers = Taggers::start(&cluster, &ns, 3).await;
    let registry = Arc::new(cluster.registry(&ns, LEASE_TTL).await);
    let (_mesh, channel) = mesh(registry.clone());
    assert!(sees(&channel, &taggers.ids(), Duration::from_secs(10)).await);
    let load = Load::start(channel.clone(), 4, Duration::from_millis(5));
    assert!(load.progress(50, Duration::from_secs(10)).await);
    let sampler = Sampler::start(&registry, taggers.ids()).await;

    let leader = cluster.leader().await.expect("a leader");
    let victim = (leader + 1) % 3;
    cluster.freeze(victim);
    let left = taggers
        .await_rotation(2, "the frozen member left every instance's rotation")
        .await;
    // A registration while the member is frozen is watched.
    let newcomer = taggers.add().await;
    assert!(
        sees(&channel, &taggers.ids(), Duration::from_secs(5)).await,
        "a registration ({newcomer}) while a member is frozen is watched"
    );
    // The fault lasts several lease TTLs: leases kept on the frozen member would expire.
    tokio::time::sleep(LEASE_TTL * 3).await;
    let listed: HashSet<String> = registry.list("tagger").await.unwrap().into_keys().collect();
    assert_eq!(
        listed,
        taggers.ids(),
        "registrations while a member is frozen"
    );
    cluster.thaw(victim);
    let back = taggers
        .await_rotation(3, "the thawed member is back in every instance's rotation")
        .await;
    assert!(load.progress(50, Duration::from_secs(10)).await);
    let ok = no_call_failed_and_no_instance_went_missing(load, sampler).await;
    eprintln!(
        "frozen member: out of rotation after {left:?}, back {back:?} after thawing; \
         {ok} calls, none failed"
    );
}
