//! The mesh channel's own behaviour, on the in-memory registry (fast, no backend needed):
//! deadlines and their propagation, retries only for idempotent methods, ejection of a
//! dead endpoint, and a bounded wait when a target has no endpoint.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling::bench::backend::TestBackend;
use starling_discovery::{
    propagate_deadline, MemoryRegistry, Mesh, MeshChannel, MeshConfig, Registration, Registry,
    ServiceInstance,
};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const CHECK: &str = "/grpc.health.v1.Health/Check";

async fn register(registry: &MemoryRegistry, id: &str, addr: &str) -> Registration {
    let mut inst = ServiceInstance::new("svc", addr);
    inst.id = id.to_string();
    registry.register("svc", inst).await.unwrap()
}

fn mesh(registry: &MemoryRegistry, idempotent: bool) -> (Mesh, MeshChannel) {
    let mut methods = HashSet::new();
    if idempotent {
        methods.insert(CHECK.to_string());
    }
    let mut config = MeshConfig::new(methods);
    config.no_endpoint_timeout = Duration::from_millis(200);
    let mesh = Mesh::new(Arc::new(registry.clone()), config);
    let ch = mesh.channel("svc");
    (mesh, ch)
}

/// An address nothing listens on: a dead endpoint that is still registered.
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn caller_deadline_is_enforced_and_sent_downstream() {
    let registry = MemoryRegistry::new();
    let backend = TestBackend::start("slow", Duration::from_millis(500))
        .await
        .unwrap();
    let _r = register(&registry, "slow", &backend.addr.to_string()).await;
    let (_m, ch) = mesh(&registry, true);
    let mut client = HealthClient::new(ch);
    let mut req = tonic::Request::new(HealthCheckRequest::default());
    req.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let err = client
        .check(req)
        .await
        .expect_err("slower than the deadline");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let sent = backend
        .last_grpc_timeout()
        .expect("grpc-timeout reached the backend");
    let ms: u64 = sent.trim_end_matches('m').parse().unwrap();
    assert!(ms <= 100, "sent {sent}");
}

#[tokio::test]
async fn inbound_deadline_propagates_to_outgoing_calls() {
    let registry = MemoryRegistry::new();
    let backend = TestBackend::start("b", Duration::ZERO).await.unwrap();
    let _r = register(&registry, "b", &backend.addr.to_string()).await;
    let (_m, ch) = mesh(&registry, true);
    let mut client = HealthClient::new(ch.clone());
    // As if handling an inbound call with 250 ms left: the outgoing call carries no timeout
    // of its own, yet must inherit it.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(250);
    propagate_deadline(deadline, async {
        client
            .check(HealthCheckRequest::default())
            .await
            .expect("fast call");
    })
    .await;
    let sent = backend.last_grpc_timeout().expect("grpc-timeout sent");
    let ms: u64 = sent.trim_end_matches('m').parse().unwrap();
    assert!(ms <= 250 && ms > 100, "sent {sent}");

    backend.set_delay(Duration::from_millis(400));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let err = propagate_deadline(deadline, client.check(HealthCheckRequest::default()))
        .await
        .expect_err("inherited deadline cuts the call");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_millis(350));
}

#[tokio::test]
async fn idempotent_calls_retry_past_a_dead_endpoint_which_gets_ejected() {
    // Install the process's recorder before the mesh creates its per-endpoint counters.
    let metrics = starling_runtime::metrics::handle();
    let registry = MemoryRegistry::new();
    let live = TestBackend::start("live", Duration::ZERO).await.unwrap();
    let _a = register(&registry, "live", &live.addr.to_string()).await;
    let _b = register(&registry, "dead", &dead_address()).await;
    let (_m, ch) = mesh(&registry, true);
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(2), |e| e.len() == 2)
            .await
    );
    let mut client = HealthClient::new(ch);
    let mut answered_by_live = 0;
    for _ in 0..100 {
        let resp = client
            .check(HealthCheckRequest::default())
            .await
            .expect("retried on the live endpoint");
        if resp
            .metadata()
            .get("starling-instance")
            .map(|v| v.to_str().unwrap())
            == Some("live")
        {
            answered_by_live += 1;
        }
    }
    assert_eq!(answered_by_live, 100);
    let metrics = metrics.render();
    let ejections: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("starling_client_ejections_total") && l.contains("target=\"svc\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Ejected once, then re-probed only after each back-off: far fewer than the 50 picks
    // round-robin would have sent it.
    assert!(
        (1.0..=5.0).contains(&ejections),
        "ejections {ejections}\n{metrics}"
    );
}

#[tokio::test]
async fn non_idempotent_calls_are_not_retried() {
    let registry = MemoryRegistry::new();
    let live = TestBackend::start("live", Duration::ZERO).await.unwrap();
    let _a = register(&registry, "live", &live.addr.to_string()).await;
    let _b = register(&registry, "dead", &dead_address()).await;
    let (_m, ch) = mesh(&registry, false);
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(2), |e| e.len() == 2)
            .await
    );
    let mut client = HealthClient::new(ch);
    let mut unavailable = 0;
    for _ in 0..4 {
        if let Err(e) = client.check(HealthCheckRequest::default()).await {
            assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
            assert!(e.message().contains("failed"), "{}", e.message());
            unavailable += 1;
        }
    }
    assert!(
        unavailable >= 1,
        "a call that may not be repeated must surface the failure"
    );
}

/// A request the channel buffers (to resend it) is bounded: over the limit it answers
/// RESOURCE_EXHAUSTED once the limit has arrived, and never reaches the endpoint.
#[tokio::test]
async fn a_buffered_request_over_the_limit_is_refused() {
    let registry = MemoryRegistry::new();
    let live = TestBackend::start("live", Duration::ZERO).await.unwrap();
    let _a = register(&registry, "live", &live.addr.to_string()).await;
    let (_m, ch) = {
        let mut config = MeshConfig::new([CHECK.to_string()].into_iter().collect());
        config.max_buffered_request = 64 * 1024;
        let mesh = Mesh::new(Arc::new(registry.clone()), config);
        let ch = mesh.channel("svc");
        (mesh, ch)
    };
    let mut client = HealthClient::new(ch);
    let check = |size: usize| HealthCheckRequest {
        service: "x".repeat(size),
    };
    let e = client.check(check(100 * 1024)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("65536"), "{}", e.message());
    // Under the limit the endpoint answers (it knows no such service).
    let e = client.check(check(10 * 1024)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

/// A call carrying an idempotency key names one logical write, so the channel may send it
/// again like a call of a method the `.proto` marks idempotent: past a stalled endpoint
/// (the case a kill -9 mid-call looks like) and a dead one.
#[tokio::test]
async fn a_call_with_an_idempotency_key_is_resent_elsewhere() {
    let registry = MemoryRegistry::new();
    let live = TestBackend::start("live", Duration::ZERO).await.unwrap();
    let stalled = TestBackend::start("stalled", Duration::from_secs(5))
        .await
        .unwrap();
    let _a = register(&registry, "live", &live.addr.to_string()).await;
    let _b = register(&registry, "stalled", &stalled.addr.to_string()).await;
    let _c = register(&registry, "dead", &dead_address()).await;
    // No idempotent methods, no unary ones: only the key makes a call safe to resend.
    let channel = || async {
        let mut config = MeshConfig::new(HashSet::new());
        config.no_endpoint_timeout = Duration::from_millis(200);
        config.attempt_timeout = Some(Duration::from_millis(300));
        let mesh = Mesh::new(Arc::new(registry.clone()), config);
        let ch = mesh.channel("svc");
        assert!(
            ch.wait_for_endpoints(Duration::from_secs(2), |e| e.len() == 3)
                .await
        );
        (mesh, ch)
    };
    let (_keyed_mesh, ch) = channel().await;
    let mut client = HealthClient::new(ch);
    for i in 0..6 {
        let mut req = tonic::Request::new(HealthCheckRequest::default());
        req.metadata_mut().insert(
            starling_discovery::IDEMPOTENCY_KEY,
            format!("call-{i}").parse().unwrap(),
        );
        let resp = client
            .check(req)
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
        assert_eq!(
            resp.metadata()
                .get("starling-instance")
                .map(|v| v.to_str().unwrap()),
            Some("live")
        );
    }
    // Without a key, a fresh channel (nothing ejected yet) surfaces the failures.
    let (_plain_mesh, ch) = channel().await;
    let mut client = HealthClient::new(ch);
    let mut failed = 0;
    for _ in 0..6 {
        if client.check(HealthCheckRequest::default()).await.is_err() {
            failed += 1;
        }
    }
    assert!(failed >= 1, "calls without a key are not resent");
}

/// A refused connection means the request never left: even a call that must not run twice
/// is sent to another endpoint, when the channel knows the method is unary (so its request
/// could be buffered).
#[tokio::test]
async fn a_refused_connection_is_retried_even_for_non_idempotent_calls() {
    let registry = MemoryRegistry::new();
    let live = TestBackend::start("live", Duration::ZERO).await.unwrap();
    let _a = register(&registry, "live", &live.addr.to_string()).await;
    let _b = register(&registry, "dead", &dead_address()).await;
    let mut config = MeshConfig::new(HashSet::new())
        .with_unary_methods([CHECK.to_string()].into_iter().collect());
    config.no_endpoint_timeout = Duration::from_millis(200);
    let mesh = Mesh::new(Arc::new(registry.clone()), config);
    let ch = mesh.channel("svc");
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(2), |e| e.len() == 2)
            .await
    );
    let mut client = HealthClient::new(ch);
    for i in 0..4 {
        client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
    }
}

/// A health service whose every answer breaks off after its headers and half a message, as
/// a process killed in the middle of answering leaves it.
#[derive(Clone)]
struct CutShort;

impl tonic::server::NamedService for CutShort {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl tower::Service<http::Request<tonic::body::Body>> for CutShort {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        use futures::StreamExt as _;
        // A gRPC frame header announcing 10 bytes and one byte of them; then, once the
        // head has had time to reach the caller (failing at once would fail the head
        // too), the stream fails.
        let part: Result<http_body::Frame<bytes::Bytes>, std::io::Error> =
            Ok(http_body::Frame::data(bytes::Bytes::from_static(&[
                0, 0, 0, 0, 10, 8,
            ])));
        let frames = futures::stream::iter([part]).chain(futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::other("killed mid-answer"))
        }));
        let body = http_body_util::StreamBody::new(frames);
        std::future::ready(Ok(http::Response::builder()
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(body))
            .expect("a valid response")))
    }
}

/// An answer whose body breaks off after its headers (the endpoint died mid-answer) fails
/// an idempotent unary call only as an attempt: it is retried elsewhere, and the endpoint
/// is ejected like one that refused the connection.
#[tokio::test]
async fn an_answer_cut_short_is_retried_for_idempotent_calls() {
    let registry = MemoryRegistry::new();
    let live = TestBackend::start("live", Duration::ZERO).await.unwrap();
    let cut = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut_addr = cut.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CutShort)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(cut)),
    );
    let _a = register(&registry, "live", &live.addr.to_string()).await;
    let _b = register(&registry, "cut", &cut_addr).await;
    let calls = |idempotent: bool| {
        let methods: HashSet<String> = [CHECK.to_string()].into_iter().collect();
        let mut config = MeshConfig::new(if idempotent {
            methods.clone()
        } else {
            HashSet::new()
        })
        .with_unary_methods(methods);
        config.no_endpoint_timeout = Duration::from_millis(200);
        let mesh = Mesh::new(Arc::new(registry.clone()), config);
        let ch = mesh.channel("svc");
        (mesh, ch)
    };

    // The same endpoints without the idempotency mark: the broken body reaches the caller,
    // which shows the endpoint really does cut its answers short.
    let (_m, ch) = calls(false);
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(2), |e| e.len() == 2)
            .await
    );
    let mut client = HealthClient::new(ch);
    let mut broken = 0;
    for _ in 0..4 {
        if client.check(HealthCheckRequest::default()).await.is_err() {
            broken += 1;
        }
    }
    assert!(
        broken >= 1,
        "round robin sent some calls to the cut endpoint"
    );

    let (_m, ch) = calls(true);
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(2), |e| e.len() == 2)
            .await
    );
    let mut client = HealthClient::new(ch.clone());
    for i in 0..50 {
        let resp = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
        assert_eq!(
            resp.metadata()
                .get("starling-instance")
                .and_then(|v| v.to_str().ok()),
            Some("live")
        );
    }
    assert!(
        ch.stats().1 >= 1,
        "at least one call was retried after its answer broke off"
    );
}

/// A `Check` request as bytes on the wire: `message` (an encoded HealthCheckRequest) in
/// one gRPC frame, for calling the mesh channel below any generated client.
fn raw_check(message: &[u8]) -> http::Request<tonic::body::Body> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    http::Request::builder()
        .method("POST")
        .uri(format!("http://svc{CHECK}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(frame),
        )))
        .expect("a valid request")
}

/// An idempotent unary call's answer is read whole inside the attempt; a trailers-only
/// answer (the status in the head, as tonic sends errors) must still end with its head, so
/// that a proxy in front of the mesh (the gateway) forwards it as trailers-only: gRPC
/// clients other than tonic read the status there only then (a Python client saw UNKNOWN).
#[tokio::test]
async fn a_trailers_only_answer_stays_trailers_only() {
    use http_body::Body as _;
    use tower::ServiceExt as _;
    let registry = MemoryRegistry::new();
    let live = TestBackend::start("live", Duration::ZERO).await.unwrap();
    let _a = register(&registry, "live", &live.addr.to_string()).await;
    let methods: HashSet<String> = [CHECK.to_string()].into_iter().collect();
    let mesh = Mesh::new(
        Arc::new(registry.clone()),
        MeshConfig::new(methods.clone()).with_unary_methods(methods),
    );
    let ch = mesh.channel("svc");
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(2), |e| e.len() == 1)
            .await
    );
    let again = ch.clone();
    // A health check of a service the backend does not know: NOT_FOUND, trailers-only.
    let req = raw_check(b"\x0a\x04nope");
    let resp = ch.oneshot(req).await.expect("an answer");
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("5"),
        "{:?}",
        resp.headers()
    );
    assert!(resp.body().is_end_stream(), "the answer ends with its head");

    // A full answer keeps its trailers, and no exact size: an HTTP/1.1 proxy (gRPC-Web)
    // would otherwise send a content-length without room for the trailers frame.
    let ok = raw_check(b"");
    let resp = again.oneshot(ok).await.expect("an answer");
    assert_eq!(resp.body().size_hint().upper(), None);
    use http_body_util::BodyExt as _;
    let whole = resp.into_body().collect().await.expect("a whole body");
    let trailers = whole.trailers().cloned().expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0")
    );
    assert!(!whole.to_bytes().is_empty(), "the message");
}

#[tokio::test]
async fn a_target_without_endpoints_fails_fast_and_recovers_when_one_registers() {
    let registry = MemoryRegistry::new();
    let (_m, ch) = mesh(&registry, true);
    let mut client = HealthClient::new(ch);
    let started = Instant::now();
    let err = client
        .check(HealthCheckRequest::default())
        .await
        .expect_err("no endpoint");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(800));
    let backend = TestBackend::start("late", Duration::ZERO).await.unwrap();
    let _r = register(&registry, "late", &backend.addr.to_string()).await;
    client
        .check(HealthCheckRequest::default())
        .await
        .expect("works once registered");
}

/// Answers `n` health checks from `concurrency` callers; how many each instance answered.
async fn answered_by(
    ch: &MeshChannel,
    n: usize,
    concurrency: usize,
) -> std::collections::HashMap<String, usize> {
    let per = n / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = HealthClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..per {
                let resp = client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .expect("a call succeeds");
                let id = resp
                    .metadata()
                    .get(starling::bench::backend::INSTANCE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                seen.push(id);
            }
            seen
        }));
    }
    let mut counts = std::collections::HashMap::new();
    for t in tasks {
        for id in t.await.unwrap() {
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

/// A caller with a zone calls its own zone's instances while one is usable and not
/// overloaded; it spills to the other zone when its zone's instances are all busy, and
/// when none is left; a caller without a zone spreads over all.
#[tokio::test]
async fn calls_prefer_the_callers_zone_and_spill_over() {
    let registry = MemoryRegistry::new();
    let mut backends = Vec::new();
    let mut regs = Vec::new();
    for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
        let b = TestBackend::start(name, Duration::ZERO).await.unwrap();
        let mut inst = ServiceInstance::new("svc", b.addr.to_string());
        inst.id = b.id.clone();
        inst.zone = zone.to_string();
        regs.push((zone, registry.register("svc", inst).await.unwrap()));
        backends.push(b);
    }
    let zone_of = |id: &str| if id.starts_with('a') { "a" } else { "b" };

    let mut config = MeshConfig::new(HashSet::new());
    config.zone = Some("a".into());
    config.zone_spill_in_flight = 4;
    let mesh = Mesh::new(Arc::new(registry.clone()), config);
    let ch = mesh.channel("svc");
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(5), |e| e.len() == 4)
            .await
    );

    // One caller at a time: never busy, always zone a, both of its instances.
    let counts = answered_by(&ch, 200, 1).await;
    assert!(
        counts.keys().all(|id| zone_of(id) == "a"),
        "only zone a answers an idle caller in zone a: {counts:?}"
    );
    assert_eq!(counts.len(), 2, "both instances of zone a: {counts:?}");

    // Zone a's instances slowed down and 32 callers at once: every instance of zone a
    // holds 4 calls, so calls spill to zone b too.
    for b in &backends[..2] {
        b.set_delay(Duration::from_millis(20));
    }
    let counts = answered_by(&ch, 640, 32).await;
    let cross: usize = counts
        .iter()
        .filter(|(id, _)| zone_of(id) == "b")
        .map(|(_, n)| n)
        .sum();
    assert!(
        cross > 0 && cross < 640,
        "an overloaded zone a spills some calls to zone b: {counts:?}"
    );
    println!(
        "zones: idle caller 0% cross-zone; zone a 20 ms slow, 32 callers: {:.0}% cross-zone",
        100.0 * cross as f64 / counts.values().sum::<usize>() as f64
    );
    for b in &backends[..2] {
        b.set_delay(Duration::ZERO);
    }

    // Zone a gone: zone b answers everything.
    regs.retain(|(zone, _)| *zone != "a");
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(5), |e| e.len() == 2)
            .await
    );
    let counts = answered_by(&ch, 100, 1).await;
    assert!(
        counts.keys().all(|id| zone_of(id) == "b") && counts.values().sum::<usize>() == 100,
        "zone b takes over when zone a has no instance: {counts:?}"
    );

    // A caller without a zone spreads over every instance.
    let plain = Mesh::new(Arc::new(registry.clone()), MeshConfig::new(HashSet::new()));
    let ch = plain.channel("svc");
    assert!(
        ch.wait_for_endpoints(Duration::from_secs(5), |e| e.len() == 2)
            .await
    );
    assert_eq!(answered_by(&ch, 100, 1).await.len(), 2);
    drop(regs);
}
