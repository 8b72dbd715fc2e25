//! `starling bench balancer`: what the mesh channel costs and what it buys.
//!
//! Uniform scenario: three identical in-process backends; unary health checks at fixed
//! concurrency through (a) a direct tonic `Channel` to one backend (the baseline), (b)
//! tonic's `balance_channel` over the three, (c) the mesh channel over the same three with
//! each policy. Configurations are interleaved round by round so machine noise hits all
//! alike; the best round of each is reported, with ratios against the baseline.
//!
//! A fourth uniform row, `mesh round_robin (mTLS)`, calls three more backends that serve as
//! real instances do (mutual TLS with certificates from a CA made for the run, every call
//! authorized by identity): what mTLS costs, against the plaintext round_robin row.
//!
//! Slow-backend scenario: one of the three answers `--slow-ms` later; p99 per client.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_discovery::{MemoryRegistry, Mesh, MeshConfig, Policy, Registry, ServiceInstance};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::backend::TestBackend;
use crate::cli::BalancerBenchArgs;

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const TARGET: &str = "bench";
const MTLS_ROW: &str = "mesh round_robin (mTLS)";

#[derive(Debug, Clone)]
pub struct Stats {
    pub name: String,
    pub ok: usize,
    pub errors: usize,
    pub seconds: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

/// Calls `Check` from `concurrency` tasks for `seconds`; each call gets a distinct hash key.
pub async fn measure<T>(
    name: &str,
    client: HealthClient<T>,
    concurrency: usize,
    seconds: f64,
) -> Stats
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(16_384);
            let mut errors = 0usize;
            let mut n = 0u64;
            while Instant::now() < until {
                let mut req = tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                n += 1;
                if let Ok(v) = format!("k{w}-{n}").parse() {
                    req.metadata_mut().insert("x-starling-hash-key", v);
                }
                let t = Instant::now();
                match client.check(req).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        name: name.to_string(),
        ok: all.len(),
        errors,
        seconds,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn print_table(title: &str, rows: &[Stats], baseline: Option<&Stats>) {
    println!("\n{title}");
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>7} {:>11} {:>9}",
        "client", "calls/s", "p50", "p99", "errors", "x baseline", "p99 x"
    );
    for s in rows {
        let (tput, p99) = match baseline {
            Some(b) => (
                format!("{:.2}", s.throughput() / b.throughput()),
                format!("{:.2}", s.p99.as_secs_f64() / b.p99.as_secs_f64()),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<28} {:>10.0} {:>9.2?} {:>9.2?} {:>7} {:>11} {:>9}",
            s.name,
            s.throughput(),
            s.p50,
            s.p99,
            s.errors,
            tput,
            p99
        );
    }
}

struct Clients {
    direct: HealthClient<Channel>,
    balance_channel: HealthClient<Channel>,
    mesh: Vec<(String, HealthClient<starling_discovery::MeshChannel>)>,
    _meshes: Vec<Mesh>,
}

async fn clients(backends: &[TestBackend], policies: &[Policy]) -> anyhow::Result<Clients> {
    let endpoint = |b: &TestBackend| -> anyhow::Result<Endpoint> {
        Ok(Endpoint::from_shared(format!("http://{}", b.addr))?.tcp_nodelay(true))
    };
    let direct = HealthClient::new(endpoint(&backends[0])?.connect().await?);
    let (balanced, tx) = Channel::balance_channel::<usize>(1024);
    for (i, b) in backends.iter().enumerate() {
        tx.send(Change::Insert(i, endpoint(b)?)).await?;
    }
    let registry = registry_of(backends).await?;
    let mut idempotent = HashSet::new();
    idempotent.insert(HEALTH_CHECK.to_string());
    let mut mesh = Vec::new();
    let mut meshes = Vec::new();
    for policy in policies {
        let m = Mesh::new(
            registry.clone(),
            MeshConfig::new(idempotent.clone()).with_policy(TARGET, policy.clone()),
        );
        let ch = m.channel(TARGET);
        anyhow::ensure!(
            ch.wait_for_endpoints(Duration::from_secs(5), |e| e.len() == backends.len())
                .await,
            "mesh did not see the backends"
        );
        mesh.push((format!("mesh {policy}"), HealthClient::new(ch)));
        meshes.push(m);
    }
    Ok(Clients {
        direct,
        balance_channel: HealthClient::new(balanced),
        mesh,
        _meshes: meshes,
    })
}

/// A registry holding `backends` as instances of the target.
async fn registry_of(backends: &[TestBackend]) -> anyhow::Result<Arc<MemoryRegistry>> {
    let registry = Arc::new(MemoryRegistry::new());
    let mut regs = Vec::new();
    for b in backends {
        let mut inst = ServiceInstance::new(TARGET, b.addr.to_string());
        inst.id = b.id.clone();
        regs.push(registry.register(TARGET, inst).await?);
    }
    // The registrations live as long as the registry's entries: leak the handles for the
    // benchmark's lifetime instead of threading them through.
    std::mem::forget(regs);
    Ok(registry)
}

/// A round-robin mesh client over mutual TLS to `backends`, calling as `gateway`.
async fn mtls_client(
    backends: &[TestBackend],
    tls: starling_discovery::MeshTls,
) -> anyhow::Result<(HealthClient<starling_discovery::MeshChannel>, Mesh)> {
    let registry = registry_of(backends).await?;
    let mut config = MeshConfig::new([HEALTH_CHECK.to_string()].into_iter().collect())
        .with_policy(TARGET, Policy::RoundRobin);
    config.tls = Some(tls);
    let mesh = Mesh::new(registry, config);
    let ch = mesh.channel(TARGET);
    anyhow::ensure!(
        ch.wait_for_endpoints(Duration::from_secs(5), |e| e.len() == backends.len())
            .await,
        "mesh did not see the TLS backends"
    );
    Ok((HealthClient::new(ch), mesh))
}

/// An identity issued by `ca` (trust domain `starling`), as a process would load it.
fn identity(ca: &crate::ca::Authority, name: &str) -> anyhow::Result<starling_discovery::MeshTls> {
    let (cert, key) = ca.issue(name, "starling", 1, &[])?;
    Ok(starling_discovery::MeshTls::from_pem(
        starling_discovery::tls::Pem {
            ca: ca.cert_pem().as_bytes().to_vec(),
            cert: cert.into_bytes(),
            key: key.into_bytes(),
        },
    )?)
}

/// Returns (uniform rows, slow rows); the first uniform row is the direct baseline.
pub async fn run_scenarios(args: &BalancerBenchArgs) -> anyhow::Result<(Vec<Stats>, Vec<Stats>)> {
    let mut backends = Vec::new();
    for i in 0..3 {
        backends.push(TestBackend::start(&format!("backend-{i}"), Duration::ZERO).await?);
    }
    let policies = [
        Policy::RoundRobin,
        Policy::ConsistentHash {
            header: "x-starling-hash-key".into(),
        },
        Policy::P2cEwma,
    ];
    let c = clients(&backends, &policies).await?;
    // The backends' certificates name the target, as a service's names the service.
    let ca = crate::ca::Authority::new(1)?;
    let mut tls_backends = Vec::new();
    for i in 0..3 {
        let server = identity(&ca, TARGET)?;
        tls_backends.push(
            TestBackend::start_with(&format!("tls-backend-{i}"), Duration::ZERO, Some(server))
                .await?,
        );
    }
    let (mtls, _mtls_mesh) = mtls_client(&tls_backends, identity(&ca, "gateway")?).await?;
    let warm = 0.3_f64.min(args.seconds);

    // Uniform scenario, interleaved rounds.
    let mut best: Vec<Option<Stats>> = vec![None; 3 + c.mesh.len()];
    for round in 0..args.rounds.max(1) {
        let mut row = Vec::new();
        measure("warm-up", c.direct.clone(), args.concurrency, warm).await;
        row.push(
            measure(
                "direct Channel (1 backend)",
                c.direct.clone(),
                args.concurrency,
                args.seconds,
            )
            .await,
        );
        measure("warm-up", c.balance_channel.clone(), args.concurrency, warm).await;
        row.push(
            measure(
                "tonic balance_channel",
                c.balance_channel.clone(),
                args.concurrency,
                args.seconds,
            )
            .await,
        );
        for (name, client) in &c.mesh {
            measure("warm-up", client.clone(), args.concurrency, warm).await;
            row.push(measure(name, client.clone(), args.concurrency, args.seconds).await);
        }
        measure("warm-up", mtls.clone(), args.concurrency, warm).await;
        row.push(measure(MTLS_ROW, mtls.clone(), args.concurrency, args.seconds).await);
        for (slot, s) in best.iter_mut().zip(row) {
            eprintln!(
                "round {round}: {:<28} {:>8.0} calls/s p99 {:?}",
                s.name,
                s.throughput(),
                s.p99
            );
            if slot
                .as_ref()
                .is_none_or(|b| s.throughput() > b.throughput())
            {
                *slot = Some(s);
            }
        }
    }
    let uniform: Vec<Stats> = best.into_iter().flatten().collect();

    // Slow-backend scenario.
    backends[2].set_delay(Duration::from_millis(args.slow_ms));
    let mut slow = Vec::new();
    measure("warm-up", c.balance_channel.clone(), args.concurrency, warm).await;
    slow.push(
        measure(
            "tonic balance_channel",
            c.balance_channel.clone(),
            args.concurrency,
            args.seconds,
        )
        .await,
    );
    for (name, client) in &c.mesh {
        measure("warm-up", client.clone(), args.concurrency, warm).await;
        slow.push(measure(name, client.clone(), args.concurrency, args.seconds).await);
    }
    for b in backends.into_iter().chain(tls_backends) {
        b.stop().await;
    }
    Ok((uniform, slow))
}

pub async fn run(args: BalancerBenchArgs) -> anyhow::Result<()> {
    println!(
        "starling bench balancer: {} concurrent callers, {}s per configuration, {} round(s), loopback",
        args.concurrency, args.seconds, args.rounds
    );
    let (uniform, slow) = run_scenarios(&args).await?;
    print_table(
        "Three identical backends (best round each):",
        &uniform,
        uniform.first(),
    );
    print_table(
        &format!("One of three backends {} ms slower:", args.slow_ms),
        &slow,
        slow.first(),
    );
    if let (Some(direct), Some(rr)) = (
        uniform.first(),
        uniform.iter().find(|s| s.name == "mesh round_robin"),
    ) {
        println!(
            "\nmesh round_robin vs direct: throughput {:.2}x (target >= 0.90), p99 {:.2}x (target <= 1.20)",
            rr.throughput() / direct.throughput(),
            rr.p99.as_secs_f64() / direct.p99.as_secs_f64()
        );
    }
    if let (Some(rr), Some(mtls)) = (
        uniform.iter().find(|s| s.name == "mesh round_robin"),
        uniform.iter().find(|s| s.name == MTLS_ROW),
    ) {
        println!(
            "mTLS cost: mesh round_robin (mTLS) vs plaintext: throughput {:.2}x, p99 {:.2}x",
            mtls.throughput() / rr.throughput(),
            mtls.p99.as_secs_f64() / rr.p99.as_secs_f64()
        );
    }
    if let (Some(bc), Some(p2c)) = (
        slow.first(),
        slow.iter().find(|s| s.name == "mesh p2c_ewma"),
    ) {
        println!(
            "slow backend: p99 mesh p2c_ewma {:.2?} vs tonic balance_channel {:.2?}",
            p2c.p99, bc.p99
        );
    }
    Ok(())
}
