//! Mutual TLS in the mesh, in one process on the in-memory backends: certificates from
//! `starling ca`, services that take only callers with a certificate from their CA and
//! authorize them by identity, mesh channels that present one, and grpcurl with
//! `-cacert/-cert/-key`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use starling::cli::{CaInitArgs, CaIssueArgs};
use starling_discovery::tls::Pem;
use starling_discovery::{MemoryRegistry, Mesh, MeshConfig, MeshTls, Registry};
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::{FollowRequest, RegisterUsersRequest};
use starling_proto::tagger::v1::tagger_service_client::TaggerServiceClient;
use starling_proto::tagger::v1::ListTagsRequest;
use starling_runtime::authz::Policy;
use starling_runtime::events::{topics, MemoryBus};
use starling_runtime::server::{self, ServerConfig};
use starling_runtime::store::MemoryStore;
use starling_runtime::{AppSettings, ServerTls, ServiceContext, ServiceKind};

fn make_ca(dir: &Path, names: &[&str]) {
    starling::ca::init(&CaInitArgs {
        dir: dir.to_path_buf(),
        days: 1,
    })
    .expect("ca init");
    for name in names {
        starling::ca::issue(&CaIssueArgs {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            namespace: "starling".into(),
            days: 1,
            dns: Vec::new(),
            renew: false,
        })
        .expect("ca issue");
    }
}

/// `name`'s identity from the CA in `dir`, but a certificate that expired yesterday.
fn expired_identity(dir: &Path, name: &str) -> MeshTls {
    let now = time::OffsetDateTime::now_utc();
    identity_valid(
        dir,
        name,
        now - time::Duration::days(3),
        now - time::Duration::days(1),
    )
}

/// `name`'s identity from the CA in `dir`, valid from `not_before` to `not_after`.
fn identity_valid(
    dir: &Path,
    name: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> MeshTls {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.crt"), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        format!("spiffe://starling/{name}").try_into().unwrap(),
    ));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    MeshTls::from_pem(Pem {
        ca: read("ca.crt").into_bytes(),
        cert: cert.pem().into_bytes(),
        key: key.serialize_pem().into_bytes(),
    })
    .unwrap()
}

fn context(registry: Arc<dyn Registry>, tls: Option<MeshTls>) -> ServiceContext {
    let mut config = MeshConfig::new(starling_proto::idempotent_methods());
    config.tls = tls;
    config.no_endpoint_timeout = Duration::from_millis(500);
    config.call_timeout = Duration::from_secs(3);
    ServiceContext {
        mesh: Arc::new(Mesh::new(registry.clone(), config)),
        registry,
        store: Arc::new(MemoryStore::new()),
        bus: Arc::new(MemoryBus::new()),
        settings: Arc::new(AppSettings::default()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_callers_with_a_certificate_from_the_ca_get_through() {
    let pki = tempfile::tempdir().unwrap();
    make_ca(pki.path(), &["tagger", "follower", "gateway"]);
    let foreign = tempfile::tempdir().unwrap();
    make_ca(foreign.path(), &["gateway"]);

    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let tagger_tls = MeshTls::from_dir(pki.path(), "tagger").unwrap();
    let ctx = context(registry.clone(), Some(tagger_tls));
    ctx.bus.create_topics(&topics::all_topics()).await.unwrap();
    let serve = |kind: ServiceKind| {
        let mut config = ServerConfig::new(kind, "127.0.0.1:0".parse().unwrap());
        config.drain_delay = Duration::ZERO;
        config.tls = Some(ServerTls {
            tls: MeshTls::from_dir(pki.path(), kind.name()).unwrap(),
            namespace: "starling".into(),
            policy: Policy::default_policy(),
        });
        config
    };
    let parts = starling_tagger::build(&ctx).await.unwrap();
    let tagger = server::start(serve(ServiceKind::Tagger), parts, &ctx)
        .await
        .expect("start over TLS");
    let parts = starling_follower::build(&ctx).await.unwrap();
    let follower = server::start(serve(ServiceKind::Follower), parts, &ctx)
        .await
        .expect("start over TLS");

    // The gateway's identity, from the same CA: served.
    let trusted = context(
        registry.clone(),
        Some(MeshTls::from_dir(pki.path(), "gateway").unwrap()),
    );
    let tags = TaggerServiceClient::new(trusted.mesh.channel("tagger"))
        .list_tags(ListTagsRequest {})
        .await
        .expect("a caller with a certificate from the CA is served")
        .into_inner()
        .tags;
    assert!(!tags.is_empty());

    // Authorization by identity (services/runtime/src/policy.txt): the gateway may
    // register users and follow; the tagger may not.
    let mut as_gateway = FollowerServiceClient::new(trusted.mesh.channel("follower"));
    as_gateway
        .register_users(RegisterUsersRequest {
            users: vec!["ann".into(), "ben".into()],
        })
        .await
        .expect("the gateway registers users");
    let follow = || FollowRequest {
        follower: "ann".into(),
        followee: "ben".into(),
    };
    let as_tagger = context(
        registry.clone(),
        Some(MeshTls::from_dir(pki.path(), "tagger").unwrap()),
    );
    let denied = FollowerServiceClient::new(as_tagger.mesh.channel("follower"))
        .follow(follow())
        .await
        .expect_err("the tagger may not follow on anyone's behalf");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("tagger"), "{}", denied.message());
    assert!(
        as_gateway
            .follow(follow())
            .await
            .expect("the gateway may")
            .into_inner()
            .changed
    );
    // Health is open to any authenticated peer.
    tonic_health::pb::health_client::HealthClient::new(as_tagger.mesh.channel("follower"))
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is open to every identity");

    // No certificate at all (plaintext), one from another CA, or an expired one from the
    // right CA: refused at the handshake.
    let expired = expired_identity(pki.path(), "gateway");
    for (who, tls) in [
        ("plaintext", None),
        (
            "another CA",
            Some(MeshTls::from_dir(foreign.path(), "gateway").unwrap()),
        ),
        ("an expired certificate", Some(expired)),
    ] {
        let stranger = context(registry.clone(), tls);
        let e = TaggerServiceClient::new(stranger.mesh.channel("tagger"))
            .list_tags(ListTagsRequest {})
            .await
            .expect_err(who);
        assert_eq!(e.code(), tonic::Code::Unavailable, "{who}: {e:?}");
    }

    // grpcurl with the CA and a client certificate; and without the client certificate.
    if let Some(grpcurl) = common::require_binary("grpcurl") {
        let addr = tagger.local_addr.to_string();
        let file = |f: &str| pki.path().join(f).display().to_string();
        let with_cert = std::process::Command::new(&grpcurl)
            .args([
                "-cacert",
                &file("ca.crt"),
                "-cert",
                &file("gateway.crt"),
                "-key",
                &file("gateway.key"),
                "-d",
                "{}",
                &addr,
                "starling.tagger.v1.TaggerService/ListTags",
            ])
            .output()
            .unwrap();
        assert!(
            with_cert.status.success(),
            "grpcurl with a certificate: {}",
            String::from_utf8_lossy(&with_cert.stderr)
        );
        let without = std::process::Command::new(&grpcurl)
            .args([
                "-cacert",
                &file("ca.crt"),
                "-d",
                "{}",
                &addr,
                "starling.tagger.v1.TaggerService/ListTags",
            ])
            .output()
            .unwrap();
        assert!(
            !without.status.success(),
            "grpcurl without a client certificate must be refused"
        );
    }
    tagger.stop().await.unwrap();
    follower.stop().await.unwrap();
}

/// The certificate a server presents to a new connection, as DER.
async fn presented_certificate(addr: std::net::SocketAddr, server: &str, as_: &MeshTls) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(as_.client_config())
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

/// Certificates renewed with `starling ca issue --renew` while calls flow: no call fails,
/// the server presents its new certificate to new connections, and the caller presents
/// its new one (its old one expires during the test, and a new connection still gets in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_call() {
    let pki = tempfile::tempdir().unwrap();
    make_ca(pki.path(), &["tagger"]);
    // The caller's first certificate expires a few seconds from now.
    let now = time::OffsetDateTime::now_utc();
    let short = identity_valid(
        pki.path(),
        "gateway",
        now - time::Duration::minutes(1),
        now + time::Duration::seconds(6),
    );
    let pem_of = |tls: &MeshTls| -> Pem { tls.pem() };
    let short_pem = pem_of(&short);
    std::fs::write(pki.path().join("gateway.crt"), &short_pem.cert).unwrap();
    std::fs::write(pki.path().join("gateway.key"), &short_pem.key).unwrap();

    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let server_ctx = context(registry.clone(), None);
    server_ctx
        .bus
        .create_topics(&topics::all_topics())
        .await
        .unwrap();
    let mut config = ServerConfig::new(ServiceKind::Tagger, "127.0.0.1:0".parse().unwrap());
    config.drain_delay = Duration::ZERO;
    config.tls = Some(ServerTls {
        tls: MeshTls::from_dir(pki.path(), "tagger").unwrap(),
        namespace: "starling".into(),
        policy: Policy::default_policy(),
    });
    let parts = starling_tagger::build(&server_ctx).await.unwrap();
    let tagger = server::start(config, parts, &server_ctx).await.unwrap();
    let addr = tagger.local_addr;

    let caller = MeshTls::from_dir(pki.path(), "gateway").unwrap();
    let gateway = context(registry.clone(), Some(caller.clone()));
    let old_server_cert = presented_certificate(addr, "tagger", &caller).await;
    assert_eq!(old_server_cert, pem_der(&pki.path().join("tagger.crt")));

    // Load: four callers in a loop until told to stop, on long-lived connections, and one
    // that makes a new connection (a new mesh) every ten calls, so handshakes happen all
    // through the rotation; every failure is kept.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load: Vec<_> = (0..4)
        .map(|_| {
            let mut client = TaggerServiceClient::new(gateway.mesh.channel("tagger"));
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.list_tags(ListTagsRequest {}).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    {
        let (stop, registry, caller) = (stop.clone(), registry.clone(), caller.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let fresh = context(registry.clone(), Some(caller.clone()));
                let mut client = TaggerServiceClient::new(fresh.mesh.channel("tagger"));
                for _ in 0..10 {
                    match client.list_tags(ListTagsRequest {}).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
            }
            (ok, failed)
        }));
    }

    for name in ["tagger", "gateway"] {
        starling::ca::issue(&CaIssueArgs {
            name: name.into(),
            dir: pki.path().to_path_buf(),
            namespace: "starling".into(),
            days: 1,
            dns: Vec::new(),
            renew: true,
        })
        .expect("ca issue --renew");
    }
    let new_server_cert = pem_der(&pki.path().join("tagger.crt"));
    assert_ne!(new_server_cert, old_server_cert);
    let served_new = common::eventually(Duration::from_secs(15), || {
        let (caller, new) = (caller.clone(), new_server_cert.clone());
        async move { presented_certificate(addr, "tagger", &caller).await == new }
    })
    .await;
    assert!(
        served_new,
        "new connections get the renewed server certificate"
    );
    let renewed_caller = std::fs::read(pki.path().join("gateway.crt")).unwrap();
    let reloaded = common::eventually(Duration::from_secs(15), || {
        let (caller, renewed) = (caller.clone(), renewed_caller.clone());
        async move { caller.pem().cert == renewed }
    })
    .await;
    assert!(reloaded, "the caller took its renewed certificate");

    // Past the first caller certificate's expiry, a new connection (a fresh mesh) still
    // gets in: the caller presents its renewed certificate.
    let expired_at = now + time::Duration::seconds(7);
    let wait = (expired_at - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(wait.whole_milliseconds() as u64)).await;
    let fresh = context(registry.clone(), Some(caller.clone()));
    TaggerServiceClient::new(fresh.mesh.channel("tagger"))
        .list_tags(ListTagsRequest {})
        .await
        .expect("a new connection after the old certificate expired");
    // And the old certificate alone is refused now, so the call above proved the new one.
    let old_only = context(registry.clone(), Some(short));
    let refused = TaggerServiceClient::new(old_only.mesh.channel("tagger"))
        .list_tags(ListTagsRequest {})
        .await
        .expect_err("the expired first certificate");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for task in load {
        let (o, f) = task.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!("rotation under load: {ok} calls, {} failed", failed.len());
    assert!(ok > 100, "the load ran ({ok} calls)");
    assert!(
        failed.is_empty(),
        "calls failed during rotation: {failed:?}"
    );
    tagger.stop().await.unwrap();
}
