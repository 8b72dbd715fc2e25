//! The backends behind TLS and passwords, as production runs them: an etcd that takes only
//! TLS clients with a certificate from its CA and has auth enabled, and a Redis on a TLS
//! port with a password. The registry and the store work through them, wrong or missing
//! credentials are refused with errors that name the problem (and never the password), and
//! `starling up` runs the whole system on them.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, free_port, require_binary};
use starling_discovery::{EtcdConfig, EtcdRegistry, EtcdTls, EtcdUser, Registry, ServiceInstance};
use starling_runtime::store::{RedisStore, Store};

const PASSWORD: &str = "correct-horse-battery";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and certificates for etcd, redis (servers) and admin (a client), in `dir`.
fn pki(dir: &Path) {
    let ca = starling::ca::Authority::new(1).unwrap();
    starling::ca::write_identities(dir, &ca, "starling", 1, ["etcd", "redis", "admin"]).unwrap();
}

fn etcd_tls(dir: &Path, with_identity: bool) -> EtcdTls {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let tls =
        EtcdTls::new().ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")));
    if with_identity {
        tls.identity(tonic::transport::Identity::from_pem(
            read("admin.crt"),
            read("admin.key"),
        ))
    } else {
        tls
    }
}

/// etcd on TLS with client-certificate authentication, auth enabled with user root.
async fn start_etcd(bin: &Path, pki: &Path, data: &Path) -> (Killed, String) {
    let (client_port, peer_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let file = |f: &str| pki.join(f).display().to_string();
    let child = Command::new(bin)
        .args(["--name", "tls"])
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("tls={peer}")])
        .args([
            "--cert-file",
            &file("etcd.crt"),
            "--key-file",
            &file("etcd.key"),
        ])
        .args(["--trusted-ca-file", &file("ca.crt"), "--client-cert-auth"])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let child = Killed(child);
    let options = || {
        Some(
            etcd_client::ConnectOptions::new()
                .with_tls(etcd_tls(pki, true))
                .with_connect_timeout(Duration::from_secs(2)),
        )
    };
    let ready = eventually(Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            match etcd_client::Client::connect([url], options()).await {
                Ok(mut c) => c.get("probe", None).await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(ready, "etcd on TLS did not become ready");
    let client = etcd_client::Client::connect([url.clone()], options())
        .await
        .unwrap();
    let mut auth = client.auth_client();
    auth.user_add("root", PASSWORD, None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.auth_enable().await.unwrap();
    (child, url)
}

fn start_redis(bin: &Path, pki: &Path) -> (Killed, u16) {
    let port = free_port();
    let file = |f: &str| pki.join(f).display().to_string();
    let child = Command::new(bin)
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args([
            "--tls-cert-file",
            &file("redis.crt"),
            "--tls-key-file",
            &file("redis.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "no",
        ])
        .args(["--requirepass", PASSWORD])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    (Killed(child), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_and_store_work_through_tls_and_passwords() {
    let (Some(etcd_bin), Some(redis_bin)) =
        (require_binary("etcd"), require_binary("redis-server"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let (_etcd, etcd_url) = start_etcd(&etcd_bin, &pki_dir, &dir.path().join("etcd")).await;
    let (_redis, redis_port) = start_redis(&redis_bin, &pki_dir);

    // etcd: with the CA, a client certificate and the password, registration and watching
    // work.
    let config = |tls: Option<EtcdTls>, password: &str| {
        let mut c = EtcdConfig::new(vec![etcd_url.clone()]);
        c.namespace = "tlsns".into();
        c.request_timeout = Duration::from_secs(2);
        c.tls = tls;
        c.user = Some(EtcdUser {
            name: "root".into(),
            password: password.into(),
        });
        c
    };
    let registry = Arc::new(
        EtcdRegistry::connect(config(Some(etcd_tls(&pki_dir, true)), PASSWORD))
            .await
            .expect("etcd over TLS with a user"),
    );
    let instance = ServiceInstance::new("tagger", "127.0.0.1:1");
    let _registration = registry
        .register("tagger", instance.clone())
        .await
        .expect("register");
    let mut watch = registry.watch("tagger");
    let seen = eventually(Duration::from_secs(10), || {
        let set = watch.borrow_and_update().clone();
        let id = instance.id.clone();
        async move { set.contains_key(&id) }
    })
    .await;
    assert!(seen, "the registration is watched over TLS");

    let wrong_password = "staple-wrong-4711";
    let wrong = EtcdRegistry::connect(config(Some(etcd_tls(&pki_dir, true)), wrong_password)).await;
    let e = wrong.expect_err("a wrong password is refused");
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(
            !shown.contains(wrong_password),
            "the password is not echoed: {shown}"
        );
    }
    let debug = format!("{:?}", config(Some(etcd_tls(&pki_dir, true)), PASSWORD));
    assert!(
        !debug.contains(PASSWORD) && !debug.contains("PRIVATE KEY"),
        "{debug}"
    );
    let no_cert = EtcdRegistry::connect(config(Some(etcd_tls(&pki_dir, false)), PASSWORD)).await;
    assert!(no_cert.is_err(), "no client certificate: refused");

    // Redis: rediss:// with the CA and the password.
    let ca = std::fs::read(pki_dir.join("ca.crt")).unwrap();
    let url = format!("rediss://:{PASSWORD}@localhost:{redis_port}");
    let store = eventually_store(&url, Some(ca.clone())).await;
    store
        .apply(vec![starling_runtime::store::Write::Set {
            key: "k".into(),
            value: b"over tls".to_vec(),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.get("k").await.unwrap().as_deref(),
        Some(&b"over tls"[..])
    );

    let wrong = format!("rediss://:nope-{PASSWORD}@localhost:{redis_port}");
    let e = RedisStore::connect_with_ca(&wrong, "tls:", 2, Some(ca.clone()))
        .await
        .expect_err("a wrong password is refused")
        .to_string();
    assert!(
        !e.contains("nope-"),
        "the password is not in the error: {e}"
    );
    let e = RedisStore::connect_with_ca(&url, "tls:", 2, None)
        .await
        .expect_err("without the CA, Redis's certificate is not trusted")
        .to_string();
    assert!(!e.contains(PASSWORD), "{e}");
    let plain = format!("redis://:{PASSWORD}@localhost:{redis_port}");
    let e = RedisStore::connect_with_ca(&plain, "tls:", 2, Some(ca))
        .await
        .expect_err("a CA with a plaintext URL is a mistake")
        .to_string();
    assert!(e.contains("rediss://") && !e.contains(PASSWORD), "{e}");

    // The whole system on them: the services register in the TLS etcd and store in the
    // TLS Redis; the gateway is ready only when it sees all five and its store answers.
    let file = |f: &str| pki_dir.join(f).display().to_string();
    let up = common::up::Up::start_with_env(
        &[
            "--etcd",
            &etcd_url,
            "--etcd-ca",
            &file("ca.crt"),
            "--etcd-cert",
            &file("admin.crt"),
            "--etcd-key",
            &file("admin.key"),
            "--etcd-user",
            "root",
            "--redis",
            &url,
            "--redis-ca",
            &file("ca.crt"),
        ],
        &[("STARLING_ETCD_PASSWORD", PASSWORD)],
    )
    .await;
    assert!(
        up.lines
            .iter()
            .any(|l| l.contains("redis rediss://:***@localhost")),
        "the banner hides the password: {:?}",
        up.lines
    );
    assert!(
        !up.lines.iter().any(|l| l.contains(PASSWORD)),
        "{:?}",
        up.lines
    );
    // Ready: every service registered in the TLS etcd and the store (TLS Redis) answers.
    common::up::wait_ready(&up.gateway_http()).await;
    up.stop().await;
}

/// Redis may take a moment to open its TLS port.
async fn eventually_store(url: &str, ca: Option<Vec<u8>>) -> RedisStore {
    let mut last = String::new();
    for _ in 0..100 {
        match RedisStore::connect_with_ca(url, "tls:", 2, ca.clone()).await {
            Ok(s) => return s,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("redis over TLS never answered: {last}");
}
