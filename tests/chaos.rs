//! The fault-injection suite, short: `starling chaos` with every fault once (a frozen replica
//! for 10 s instead of 20), against processes it starts itself on loopback: two replicas of
//! every service and the gateway, under a workload that comes in over the mesh and through
//! the gateway. It must find nothing acknowledged lost, duplicated or reordered, and meet
//! the availability targets (no failed call through an etcd outage or wipe or a broker
//! restart, nor through a kill -9 or a rolling restart but for non-idempotent writes; no
//! failed read and only fast-failing writes while a replica is frozen). A failing run keeps its logs and data and says where.

mod common;

use common::*;

#[tokio::test]
async fn chaos_short_run_loses_nothing() {
    let _serial = serial().await;
    for bin in ["etcd", "redis-server"] {
        if require_binary(bin).is_none() {
            return;
        }
    }
    if Broker::start().await.is_none() {
        return;
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["chaos", "--stop-secs", "10", "--fans", "1000"])
        .env("STARLING_LOG", "warn")
        .output()
        .await
        .expect("run starling chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The table goes to the test log either way.
    println!("{stdout}");
    assert!(
        out.status.success(),
        "chaos found violations:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "chaos: 0 lost, 0 duplicated, 0 reordered",
        "chaos: every availability target met",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }
}
