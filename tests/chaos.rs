//! The fault-injection suite, short: `starling chaos` with every fault once (a frozen replica
//! for 10 s instead of 20), against processes it starts itself on loopback. It must find
//! nothing acknowledged lost, duplicated or reordered.
//!
//! Not in the default run yet (`cargo test --test chaos -- --ignored`, or `starling chaos`):
//! one run in seven here found the fan-out pipeline stalled for over 90 s after a series of
//! faults, a defect still being tracked down (see issue 7's notes). A failing run keeps its
//! logs and data and says where.

mod common;

use common::*;

#[tokio::test]
#[ignore = "long fault run with an open defect: cargo test --test chaos -- --ignored"]
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
    assert!(
        stdout
            .lines()
            .any(|l| l == "chaos: 0 lost, 0 duplicated, 0 reordered"),
        "{stdout}"
    );
}
