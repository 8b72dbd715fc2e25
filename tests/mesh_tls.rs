//! Mutual TLS in the mesh, in one process on the in-memory backends: certificates from
//! `starling ca`, services that take only callers with a certificate from their CA and
//! authorize them by identity, mesh channels that present one, and grpcurl with
//! `-cacert/-cert/-key`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use starling::cli::{CaInitArgs, CaIssueArgs};
use starling_discovery::{ClientTls, MemoryRegistry, Mesh, MeshConfig, Registry};
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
        })
        .expect("ca issue");
    }
}

/// `name`'s identity from the CA in `dir`, but a certificate that expired yesterday.
fn expired_identity(dir: &Path, name: &str) -> ClientTls {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.crt"), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        format!("spiffe://starling/{name}").try_into().unwrap(),
    ));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(3);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    ClientTls::new(
        tonic::transport::Certificate::from_pem(read("ca.crt")),
        tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem()),
    )
}

fn context(registry: Arc<dyn Registry>, tls: Option<ClientTls>) -> ServiceContext {
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
    let tagger_tls = ClientTls::from_dir(pki.path(), "tagger").unwrap();
    let ctx = context(registry.clone(), Some(tagger_tls));
    ctx.bus.create_topics(&topics::all_topics()).await.unwrap();
    let serve = |kind: ServiceKind| {
        let (client_ca, identity) = starling_discovery::tls::load(pki.path(), kind.name()).unwrap();
        let mut config = ServerConfig::new(kind, "127.0.0.1:0".parse().unwrap());
        config.drain_delay = Duration::ZERO;
        config.tls = Some(ServerTls {
            identity,
            client_ca,
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
        Some(ClientTls::from_dir(pki.path(), "gateway").unwrap()),
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
        Some(ClientTls::from_dir(pki.path(), "tagger").unwrap()),
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
            Some(ClientTls::from_dir(foreign.path(), "gateway").unwrap()),
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
