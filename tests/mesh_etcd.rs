//! The mesh against a real etcd: registration, watching and balancing across real
//! `starling serve` processes, and the failures the mesh must ride out (an instance
//! killed, a rolling restart, etcd down and wiped, compaction, no instance at all).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use starling::bench::backend::TestBackend;
use starling_discovery::{
    EtcdConfig, EtcdRegistry, Mesh, MeshChannel, MeshConfig, Policy, Registry, ServiceInstance,
};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn mesh(registry: Arc<dyn Registry>, service: &str, policy: Policy) -> (Mesh, MeshChannel) {
    let mut config =
        MeshConfig::new(starling_proto::idempotent_methods()).with_policy(service, policy);
    config.idempotent_methods = Arc::new({
        let mut m = (*config.idempotent_methods).clone();
        m.insert("/grpc.health.v1.Health/Check".into());
        m
    });
    let mesh = Mesh::new(registry, config);
    let channel = mesh.channel(service);
    (mesh, channel)
}

async fn wait_ids(channel: &MeshChannel, ids: &HashSet<String>, timeout: Duration) -> bool {
    channel
        .wait_for_endpoints(timeout, |eps| {
            eps.len() == ids.len() && eps.iter().all(|e| ids.contains(&e.id))
        })
        .await
}

fn ids_of(instances: &[Instance]) -> HashSet<String> {
    instances.iter().map(|i| i.id.clone()).collect()
}

/// `n` `starling serve tagger` processes in namespace `ns`, and a client mesh (registry,
/// mesh, channel with `policy`) that already sees all of them.
async fn taggers(
    etcd: &Etcd,
    ns: &str,
    n: usize,
    policy: Policy,
) -> (Vec<Instance>, Arc<EtcdRegistry>, Mesh, MeshChannel) {
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(Instance::serve("tagger", etcd, ns).await);
    }
    let registry = Arc::new(etcd.registry(ns, LEASE_TTL).await);
    let (mesh, channel) = mesh(registry.clone(), "tagger", policy);
    assert!(
        wait_ids(&channel, &ids_of(&instances), Duration::from_secs(10)).await,
        "the client sees all {n} instances"
    );
    (instances, registry, mesh, channel)
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failed calls: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test]
async fn etcd_registry_passes_the_contract() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let registry = etcd.registry("contract", Duration::from_secs(5)).await;
    starling_discovery::contract::run_all(&registry).await;
}

#[tokio::test]
async fn round_robin_spreads_300_calls_over_three_processes() {
    let _serial = serial().await;
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (instances, registry, _mesh, channel) = taggers(&etcd, "rr", 3, Policy::RoundRobin).await;
    let ids = ids_of(&instances);

    // Each instance's key is under /<ns>/services/<service>/<id> with the documented value.
    let listed = registry.list("tagger").await.unwrap();
    for inst in &instances {
        assert_eq!(listed[&inst.id].address, inst.address);
    }

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *counts
            .entry(call_tagger(&channel).await.expect("call"))
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!(ids.contains(id), "answer from unknown instance {id}");
        assert!((90..=110).contains(n), "{id} got {n} of 300: {counts:?}");
    }
}

#[tokio::test]
async fn consistent_hash_is_sticky_and_moves_only_the_leavers_keys() {
    let _serial = serial().await;
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let hash = Policy::ConsistentHash {
        header: "x-user-id".into(),
    };
    let (mut instances, _registry, _mesh, channel) = taggers(&etcd, "ch", 4, hash).await;

    async fn owner(channel: &MeshChannel, user: &str) -> String {
        use starling_proto::tagger::v1::{
            tagger_service_client::TaggerServiceClient, ListTagsRequest,
        };
        let mut req = tonic::Request::new(ListTagsRequest {});
        req.metadata_mut()
            .insert("x-user-id", user.parse().unwrap());
        let resp = TaggerServiceClient::new(channel.clone())
            .list_tags(req)
            .await
            .expect("call");
        resp.metadata()
            .get(INSTANCE_HEADER)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    let users: Vec<String> = (0..400).map(|i| format!("user{i}")).collect();
    let mut before = HashMap::new();
    for u in &users {
        let first = owner(&channel, u).await;
        assert_eq!(
            owner(&channel, u).await,
            first,
            "{u} must stick to one instance"
        );
        before.insert(u.clone(), first);
    }
    let used: HashSet<&String> = before.values().collect();
    assert_eq!(used.len(), 4, "every instance owns some keys");

    // One of the four leaves (gracefully: it deregisters at once).
    let leaver = instances.remove(1);
    let leaver_id = leaver.id.clone();
    leaver.terminate().await;
    let remaining = ids_of(&instances);
    assert!(wait_ids(&channel, &remaining, Duration::from_secs(10)).await);

    let mut moved = 0;
    for u in &users {
        let now = owner(&channel, u).await;
        if now != before[u] {
            assert_eq!(
                before[u], leaver_id,
                "{u} moved from {} although it stayed",
                before[u]
            );
            moved += 1;
        } else {
            assert_ne!(now, leaver_id);
        }
    }
    let owned = before.values().filter(|o| **o == leaver_id).count();
    assert_eq!(moved, owned, "exactly the leaver's keys move");
    let share = moved as f64 / users.len() as f64;
    assert!(
        (0.10..=0.40).contains(&share),
        "about a quarter of the keys should move, moved {share:.2}"
    );
    eprintln!(
        "consistent hash: {moved} of {} keys moved ({share:.2}) when 1 of 4 left",
        users.len()
    );
}

#[tokio::test]
async fn p2c_ewma_sends_a_slow_instance_a_much_smaller_share() {
    let _serial = serial().await;
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let registry = Arc::new(etcd.registry("p2c", Duration::from_secs(5)).await);
    let mut backends = Vec::new();
    let mut regs = Vec::new();
    for i in 0..3 {
        let b = TestBackend::start(&format!("b{i}"), Duration::ZERO)
            .await
            .unwrap();
        let mut inst = ServiceInstance::new("bench", b.addr.to_string());
        inst.id = b.id.clone();
        regs.push(registry.register("bench", inst).await.unwrap());
        backends.push(b);
    }
    backends[2].set_delay(Duration::from_millis(20));
    let (_mesh, channel) = mesh(registry.clone(), "bench", Policy::P2cEwma);
    assert!(
        channel
            .wait_for_endpoints(Duration::from_secs(10), |e| e.len() == 3)
            .await
    );

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = HealthClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..150 {
                let resp = client
                    .check(HealthCheckRequest::default())
                    .await
                    .expect("call");
                let id = resp
                    .metadata()
                    .get(INSTANCE_HEADER)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                *seen.entry(id).or_default() += 1;
            }
            seen
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let total: usize = counts.values().sum();
    let slow = counts.get("b2").copied().unwrap_or(0);
    let share = slow as f64 / total as f64;
    eprintln!("p2c_ewma shares: {counts:?}");
    assert!(
        share < 0.10,
        "slow instance got {share:.3} of calls (fair share 0.33): {counts:?}"
    );
    for fast in ["b0", "b1"] {
        assert!(
            counts.get(fast).copied().unwrap_or(0) > 4 * slow.max(1),
            "{counts:?}"
        );
    }
    for r in regs {
        r.deregister().await;
    }
}

#[tokio::test]
async fn kill_9_under_load_fails_no_idempotent_call_and_the_key_expires() {
    let _serial = serial().await;
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (mut instances, registry, _mesh, channel) =
        taggers(&etcd, "kill", 3, Policy::RoundRobin).await;

    let load = Load::start(channel.clone(), 4, Duration::from_millis(2));
    assert!(load.progress(200, Duration::from_secs(10)).await);
    let victim = instances.remove(0);
    let victim_id = victim.id.clone();
    victim.kill9();
    let killed_at = Instant::now();
    assert!(
        load.progress(300, Duration::from_secs(10)).await,
        "calls keep succeeding"
    );

    // The key outlives the process by at most the lease TTL (plus etcd's expiry tick).
    let gone = eventually(LEASE_TTL + Duration::from_secs(3), || {
        let registry = registry.clone();
        let victim_id = victim_id.clone();
        async move {
            registry
                .list("tagger")
                .await
                .map(|s| !s.contains_key(&victim_id))
                .unwrap_or(false)
        }
    })
    .await;
    assert!(gone, "the killed instance's key must expire with its lease");
    let expired_after = killed_at.elapsed();
    let remaining = ids_of(&instances);
    assert!(wait_ids(&channel, &remaining, Duration::from_secs(5)).await);
    assert!(load.progress(200, Duration::from_secs(10)).await);
    let (ok, failures) = load.finish().await;
    eprintln!("kill -9: {ok} calls ok, key gone after {expired_after:?}");
    assert_no_failures(&failures);
}

#[tokio::test]
async fn rolling_restart_under_load_fails_no_call() {
    let _serial = serial().await;
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (mut instances, _registry, _mesh, channel) =
        taggers(&etcd, "roll", 3, Policy::RoundRobin).await;

    let load = Load::start(channel.clone(), 4, Duration::from_millis(2));
    assert!(load.progress(100, Duration::from_secs(10)).await);
    for _ in 0..3 {
        let old = instances.remove(0);
        old.terminate().await;
        instances.push(Instance::serve("tagger", &etcd, "roll").await);
        let ids = ids_of(&instances);
        assert!(
            wait_ids(&channel, &ids, Duration::from_secs(10)).await,
            "client sees the new set"
        );
        assert!(load.progress(100, Duration::from_secs(10)).await);
    }
    let (ok, failures) = load.finish().await;
    eprintln!("rolling restart: {ok} calls ok");
    assert_no_failures(&failures);
}

#[tokio::test]
async fn etcd_outage_and_wipe_keep_traffic_flowing_and_instances_reregister() {
    let _serial = serial().await;
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let (instances, registry, _mesh, channel) =
        taggers(&etcd, "outage", 3, Policy::RoundRobin).await;
    let ids = ids_of(&instances);
    let load = Load::start(channel.clone(), 4, Duration::from_millis(5));
    assert!(load.progress(100, Duration::from_secs(10)).await);

    for wipe in [false, true] {
        etcd.kill();
        // Down for longer than the lease TTL: every lease would have expired.
        let down_for = LEASE_TTL * 2;
        let until = Instant::now() + down_for;
        let before = load.ok();
        while Instant::now() < until {
            assert!(
                load.progress(20, Duration::from_secs(5)).await,
                "calls must flow while etcd is down"
            );
        }
        assert!(load.ok() > before);
        assert_eq!(
            channel.endpoints().len(),
            3,
            "the last known endpoints are kept"
        );

        etcd.restart(wipe).await;
        let back = Instant::now();
        let registered = eventually(LEASE_TTL + Duration::from_secs(5), || {
            let registry = registry.clone();
            let ids = ids.clone();
            async move {
                registry
                    .list("tagger")
                    .await
                    .map(|s| s.len() == 3 && s.keys().all(|k| ids.contains(k)))
                    .unwrap_or(false)
            }
        })
        .await;
        assert!(registered, "all instances registered again (wiped: {wipe})");
        eprintln!(
            "etcd back (wiped: {wipe}): all three registered after {:?}",
            back.elapsed()
        );
        assert!(
            wait_ids(&channel, &ids, Duration::from_secs(5)).await,
            "client sees them"
        );
        assert!(load.progress(100, Duration::from_secs(10)).await);
    }
    // Watch events flow again after the wipe: a newcomer is seen.
    let newcomer = Instance::serve("tagger", &etcd, "outage").await;
    let mut all = ids.clone();
    all.insert(newcomer.id.clone());
    assert!(
        wait_ids(&channel, &all, Duration::from_secs(10)).await,
        "watch works after the wipe"
    );
    let (ok, failures) = load.finish().await;
    eprintln!("etcd outage: {ok} calls ok");
    assert_no_failures(&failures);
}

#[tokio::test]
async fn watcher_recovers_after_compaction_past_its_revision() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let registry = etcd.registry("compact", Duration::from_secs(10)).await;
    let mut client = registry.client();
    let start_rev = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let a = registry
        .register("svc", ServiceInstance::new("svc", "127.0.0.1:1001"))
        .await
        .unwrap();
    let b = registry
        .register("svc", ServiceInstance::new("svc", "127.0.0.1:1002"))
        .await
        .unwrap();
    let b_id = b.instance().id.clone();
    a.deregister().await;
    let c = registry
        .register("svc", ServiceInstance::new("svc", "127.0.0.1:1003"))
        .await
        .unwrap();
    let c_id = c.instance().id.clone();
    let now = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(now, None).await.unwrap();

    // A watcher whose first watch starts from a compacted revision: etcd cancels it, and it
    // must list again and keep watching.
    let mut watch = registry.watch_from_revision("svc", start_rev + 1);
    let set = starling_discovery::wait_for(&mut watch, Duration::from_secs(10), |s| s.len() == 2)
        .await
        .expect("correct set after compaction");
    assert!(set.contains_key(&b_id) && set.contains_key(&c_id));
    let d = registry
        .register("svc", ServiceInstance::new("svc", "127.0.0.1:1004"))
        .await
        .unwrap();
    let d_id = d.instance().id.clone();
    starling_discovery::wait_for(&mut watch, Duration::from_secs(10), |s| {
        s.contains_key(&d_id)
    })
    .await
    .expect("the watch is live again after the compaction");
}

#[tokio::test]
async fn no_instance_at_all_fails_unavailable_within_the_bound() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let registry = Arc::new(etcd.registry("empty", Duration::from_secs(5)).await);
    let mut config = MeshConfig::new(starling_proto::idempotent_methods());
    config.no_endpoint_timeout = Duration::from_millis(300);
    let mesh = Mesh::new(registry, config);
    let started = Instant::now();
    let err = call_tagger(&mesh.channel("tagger"))
        .await
        .expect_err("nobody serves tagger");
    let took = started.elapsed();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("no endpoints"), "{}", err.message());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_deleted_key_with_a_live_lease_is_put_back() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let registry = etcd.registry("reput", LEASE_TTL).await;
    let reg = registry
        .register("svc", ServiceInstance::new("svc", "127.0.0.1:1101"))
        .await
        .unwrap();
    let id = reg.instance().id.clone();
    let mut watch = registry.watch("svc");
    starling_discovery::wait_for(&mut watch, Duration::from_secs(5), |s| s.contains_key(&id))
        .await
        .unwrap();
    // An operator's `etcdctl del`: the lease is still alive, so only the keeper can notice.
    // (Checked in etcd itself: the watch may see the deletion and the re-put as one
    // snapshot when the keeper is quick.)
    let key = format!("/reput/services/svc/{id}");
    let deleted = registry.client().delete(key.as_str(), None).await.unwrap();
    assert_eq!(deleted.deleted(), 1, "the key was there to delete");
    let put_back = eventually(LEASE_TTL + Duration::from_secs(2), || async {
        registry
            .client()
            .get(key.as_str(), None)
            .await
            .is_ok_and(|r| !r.kvs().is_empty())
    })
    .await;
    assert!(
        put_back,
        "the keeper puts the key back within a renewal period"
    );
    starling_discovery::wait_for(&mut watch, Duration::from_secs(5), |s| s.contains_key(&id))
        .await
        .expect("and watchers see it");
    reg.deregister().await;
}

/// Worker-id claims: a claim survives an etcd outage shorter than its TTL, stops being
/// trusted once its TTL has passed since the last confirmed renewal, and a number is never
/// held by two live claimants at once (here: etcd comes back wiped, a second claimant takes
/// the number, and the first one stays invalid).
#[tokio::test]
async fn a_worker_id_claim_outlives_a_short_outage_and_is_never_shared() {
    let _serial = serial().await;
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let url = etcd.url();
    let registry = |ns: &str| {
        let mut config = EtcdConfig::new(vec![url.clone()]);
        config.namespace = ns.to_string();
        config.claim_ttl = Duration::from_secs(6);
        config.request_timeout = Duration::from_secs(1);
        EtcdRegistry::connect(config)
    };
    let a = registry("claims").await.unwrap();
    let claim_a = a.claim("ids", 1).await.expect("first claim");
    etcd.kill();
    // Within the TTL: still ours, ids keep flowing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(claim_a.is_valid(), "a short outage costs nothing");
    // Past the TTL since the last confirmed renewal: no longer trusted.
    assert!(
        eventually(Duration::from_secs(8), || async { !claim_a.is_valid() }).await,
        "a claim is not trusted past its TTL"
    );
    // etcd comes back without the lease: the first claimant tries to take its number
    // again while a second one tries to take it too. Whoever gets it, never both.
    etcd.restart(true).await;
    let b = registry("claims").await.unwrap();
    let mut claim_b = None;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if claim_b.is_none() {
            claim_b = b.claim("ids", 1).await.ok();
        }
        let b_valid = claim_b.as_ref().is_some_and(|c| c.is_valid());
        assert!(
            !(claim_a.is_valid() && b_valid),
            "two live claimants of one number"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_valid = claim_b.as_ref().is_some_and(|c| c.is_valid());
    assert!(
        claim_a.is_valid() ^ b_valid,
        "exactly one claimant holds the number once etcd is back"
    );
}
