//! The live mesh view in a real browser: a gateway process on etcd, Redis and the broker,
//! beside one instance of every service and two of the tagger; headless Chromium renders
//! `/mesh` and lists the five services, both taggers and the consumer groups' lag; after
//! `kill -9` of one tagger,
//! the page drops it within seconds (its lease expires; the view reads the gateway's own
//! balancer).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::up::*;
use common::*;

const SERVICES: [&str; 5] = ["tweet", "follower", "timeline", "tagger", "recommendation"];

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The page as Chromium renders it after its scripts ran (a second or two of its time).
async fn render(chromium: &PathBuf, url: &str) -> String {
    let mut cmd = tokio::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--virtual-time-budget=2500",
        "--dump-dom",
        url,
    ]);
    match run_bounded(cmd, Duration::from_secs(60)).await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => panic!("chromium: {e}"),
    }
}

#[tokio::test]
async fn the_mesh_view_lists_every_service_and_drops_a_killed_instance() {
    let Some(chromium) = require_binary("chromium") else {
        return;
    };
    let _serial = serial().await;
    let Some(b) = AppBackends::start("meshview").await else {
        return;
    };
    let mut instances = Vec::new();
    for s in SERVICES {
        instances.push(b.serve(s, &[], Stdio::null()).await);
    }
    let second_tagger = b.serve("tagger", &[], Stdio::null()).await;
    let victim = second_tagger.address.clone();

    let (http, grpc) = (free_port(), free_port());
    let pki = b.pki.path().to_str().expect("UTF-8 path").to_string();
    let _gateway = Gateway(
        Command::new(env!("CARGO_BIN_EXE_starling"))
            .args([
                "gateway",
                "--etcd",
                &b.etcd.url(),
                "--namespace",
                &b.namespace,
            ])
            .args(["--tls-dir", &pki, "--redis", &b.redis, "--kafka", &b.kafka])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--grpc", &format!("127.0.0.1:{grpc}")])
            .env_remove("STARLING_REDIS")
            .env_remove("STARLING_KAFKA")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gateway"),
    );
    let base = format!("http://127.0.0.1:{http}");
    wait_ready(&base).await;
    let url = format!("{base}/mesh");

    // The last page rendered, for the failure message.
    let last = Arc::new(Mutex::new(String::new()));
    let listed = eventually(Duration::from_secs(30), || {
        let (chromium, url, victim, last) =
            (chromium.clone(), url.clone(), victim.clone(), last.clone());
        async move {
            let page = render(&chromium, &url).await;
            let ok = SERVICES
                .iter()
                .all(|s| page.contains(&format!("data-service=\"{s}\"")))
                && page.contains(&format!("data-address=\"{victim}\""))
                && ["timeline", "tagger", "tweet", "recommendation"]
                    .iter()
                    .all(|g| page.contains(&format!("data-group=\"{g}\"")));
            *last.lock().unwrap() = page;
            ok
        }
    })
    .await;
    let page = last.lock().unwrap().clone();
    assert!(
        listed,
        "/mesh lists the five services and the second tagger ({victim}):\n{page}"
    );
    for i in &instances {
        assert!(
            page.contains(&format!("data-address=\"{}\"", i.address)),
            "/mesh lists {} at {}",
            i.id,
            i.address
        );
    }

    let killed = Instant::now();
    second_tagger.kill9();
    let dropped = eventually(Duration::from_secs(20), || {
        let (chromium, url, victim, last) =
            (chromium.clone(), url.clone(), victim.clone(), last.clone());
        async move {
            let page = render(&chromium, &url).await;
            let ok = page.contains("data-service=\"tagger\"")
                && !page.contains(&format!("data-address=\"{victim}\""));
            *last.lock().unwrap() = page;
            ok
        }
    })
    .await;
    let page = last.lock().unwrap().clone();
    assert!(
        dropped,
        "/mesh dropped the killed tagger ({victim}) within 20 s:\n{page}"
    );
    println!(
        "mesh view: the killed instance left the page {:.1} s after kill -9 (lease TTL {:?})",
        killed.elapsed().as_secs_f64(),
        LEASE_TTL
    );
    drop(instances);
}
