//! The behaviour every [`Registry`] must have, as one suite run against each
//! implementation: the in-memory one in its unit tests, etcd in the end-to-end tests. If the
//! embedded mode drifted from etcd's behaviour, one of the two runs would fail.

use std::time::Duration;

use crate::instance::ServiceInstance;
use crate::registry::{DiscoveryError, Registry};
use crate::wait_for;

const WAIT: Duration = Duration::from_secs(10);

/// A service name no other test (or earlier run against the same server) uses.
fn fresh_service(tag: &str) -> String {
    format!("contract-{tag}-{:08x}", rand::random::<u32>())
}

/// Runs every check in this module, panicking with a description on the first failure.
pub async fn run_all<R: Registry>(registry: &R) {
    registered_instance_is_listed_and_watched(registry).await;
    deregistered_instance_disappears(registry).await;
    dropped_registration_disappears(registry).await;
    services_are_isolated(registry).await;
    invalid_service_name_is_rejected(registry).await;
    claims_are_exclusive_and_released(registry).await;
    serving_changes_are_watched(registry).await;
}

/// An instance that stops serving stays registered, marked so; watchers see the change
/// both ways.
pub async fn serving_changes_are_watched<R: Registry>(registry: &R) {
    let service = fresh_service("serving");
    let mut watch = registry.watch(&service);
    let inst = ServiceInstance::new(&service, "127.0.0.1:4102");
    let id = inst.id.clone();
    let reg = registry.register(&service, inst).await.expect("register");
    let serving = |want: bool| {
        let id = id.clone();
        move |set: &crate::instance::EndpointSet| {
            set.iter().any(|(i, inst)| *i == id && inst.serving == want)
        }
    };
    wait_for(&mut watch, WAIT, serving(true))
        .await
        .expect("registered as serving");
    reg.serving_handle().set_serving(false);
    wait_for(&mut watch, WAIT, serving(false))
        .await
        .expect("watchers see it stop serving");
    reg.serving_handle().set_serving(true);
    wait_for(&mut watch, WAIT, serving(true))
        .await
        .expect("and serve again");
    reg.deregister().await;
}

pub async fn claims_are_exclusive_and_released<R: Registry>(registry: &R) {
    let pool = fresh_service("pool");
    let a = registry.claim(&pool, 2).await.expect("first claim");
    let b = registry.claim(&pool, 2).await.expect("second claim");
    assert_ne!(a.id, b.id, "two live holders never share a number");
    assert!(a.id < 2 && b.id < 2);
    assert!(a.is_valid() && b.is_valid());
    let err = registry
        .claim(&pool, 2)
        .await
        .expect_err("the pool is full");
    assert!(matches!(err, DiscoveryError::PoolExhausted(2, _)), "{err}");
    let freed = a.id;
    drop(a);
    // Release happens in the background: wait for the number to come back.
    let again = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(c) = registry.claim(&pool, 2).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a released number can be claimed again");
    assert_eq!(again.id, freed);
}

pub async fn registered_instance_is_listed_and_watched<R: Registry>(registry: &R) {
    let service = fresh_service("listed");
    let mut watch = registry.watch(&service);
    let mut inst = ServiceInstance::new(&service, "127.0.0.1:4101");
    inst.zone = "zone-a".into();
    inst.weight = 3;
    let reg = registry
        .register(&service, inst.clone())
        .await
        .expect("register");
    assert_eq!(reg.instance().id, inst.id);

    let listed = registry.list(&service).await.expect("list");
    let got = listed.get(&inst.id).expect("registered instance is listed");
    assert_eq!(got.address, "127.0.0.1:4101");
    assert_eq!(got.zone, "zone-a");
    assert_eq!(got.weight, 3);
    assert_eq!(got.id, inst.id);

    // A watcher opened before the registration sees it arrive...
    wait_for(&mut watch, WAIT, |s| s.contains_key(&inst.id))
        .await
        .expect("earlier watcher sees the new instance");
    // ...and one opened after sees it straight away.
    let mut late = registry.watch(&service);
    wait_for(&mut late, WAIT, |s| s.contains_key(&inst.id))
        .await
        .expect("later watcher sees the existing instance");
    reg.deregister().await;
}

pub async fn deregistered_instance_disappears<R: Registry>(registry: &R) {
    let service = fresh_service("dereg");
    let a = registry
        .register(&service, ServiceInstance::new(&service, "127.0.0.1:4201"))
        .await
        .expect("register a");
    let b = registry
        .register(&service, ServiceInstance::new(&service, "127.0.0.1:4202"))
        .await
        .expect("register b");
    let (a_id, b_id) = (a.instance().id.clone(), b.instance().id.clone());
    let mut watch = registry.watch(&service);
    wait_for(&mut watch, WAIT, |s| s.len() == 2)
        .await
        .expect("both instances seen");

    a.deregister().await;
    // Deregistration is complete when it returns: a list must no longer show it.
    let listed = registry.list(&service).await.expect("list");
    assert!(
        !listed.contains_key(&a_id),
        "deregistered instance still listed"
    );
    assert!(listed.contains_key(&b_id), "the other instance must stay");
    let set = wait_for(&mut watch, WAIT, |s| !s.contains_key(&a_id))
        .await
        .expect("watcher sees the removal");
    assert!(set.contains_key(&b_id));
    b.deregister().await;
    wait_for(&mut watch, WAIT, |s| s.is_empty())
        .await
        .expect("watcher sees the service empty");
}

pub async fn dropped_registration_disappears<R: Registry>(registry: &R) {
    let service = fresh_service("dropped");
    let reg = registry
        .register(&service, ServiceInstance::new(&service, "127.0.0.1:4301"))
        .await
        .expect("register");
    let mut watch = registry.watch(&service);
    wait_for(&mut watch, WAIT, |s| s.len() == 1)
        .await
        .expect("seen");
    drop(reg);
    wait_for(&mut watch, WAIT, |s| s.is_empty())
        .await
        .expect("a dropped registration is removed");
}

pub async fn services_are_isolated<R: Registry>(registry: &R) {
    let a = fresh_service("iso");
    // Same name with a suffix: a naive prefix match would mix the two.
    let b = format!("{a}x");
    let reg = registry
        .register(&a, ServiceInstance::new(&a, "127.0.0.1:4401"))
        .await
        .expect("register");
    assert_eq!(registry.list(&a).await.expect("list a").len(), 1);
    assert!(registry.list(&b).await.expect("list b").is_empty());
    reg.deregister().await;
}

pub async fn invalid_service_name_is_rejected<R: Registry>(registry: &R) {
    for bad in ["", "Tweet", "a/b", "x y"] {
        let err = registry
            .register(bad, ServiceInstance::new("x", "127.0.0.1:1"))
            .await
            .expect_err("bad name must be rejected");
        assert!(
            matches!(err, DiscoveryError::InvalidServiceName(_)),
            "{bad:?}: {err}"
        );
    }
}
