//! `starling bench balancer`: what the mesh channel costs and what it buys.
//!
//! Uniform scenario: three identical in-process backends; unary health checks at fixed
//! concurrency through (a) a direct tonic `Channel` to one backend (the baseline), (b)
//! tonic's `balance_channel` over the three, (c) the mesh channel over the same three with
//! each policy. Configurations are interleaved round by round so machine noise hits all
//! alike; the median of the rounds is reported for each, and every ratio is the median of
//! the per-round ratios.
//!
//! A fourth uniform row, `mesh round_robin (mTLS)`, calls three more backends that serve as
//! real instances do (mutual TLS with certificates from a CA made for the run, every call
//! authorized by identity): what mTLS costs, against the plaintext round_robin row.
//!
//! Heterogeneity, one backend of three unlike the others: `--slow-ms` slower; at its
//! concurrency limit (four calls at a time, 1 ms each); sharing its CPU with a busy loop (the rest
//! of the process kept to the other CPU). p99 per client in as many interleaved rounds,
//! and per round mesh p2c_ewma's p99 over its p99 with all three alike, measured in the
//! same round.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_discovery::{MemoryRegistry, Mesh, MeshConfig, Policy, Registry, ServiceInstance};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use starling_runtime::telemetry::switch::{self, Mode};

use super::backend::{own_threads, pin_thread, BusyLoop, Serving, TestBackend};
use crate::cli::BalancerBenchArgs;

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const TRACING_OFF: &str = "mesh round_robin, tracing off";
const TRACING_UNSAMPLED: &str = "mesh round_robin, traced, not sampled";
const TRACING_SAMPLED: &str = "mesh round_robin, traced and sampled";
const TRACING_MODES: [(&str, Mode); 3] = [
    (TRACING_OFF, Mode::Off),
    (TRACING_UNSAMPLED, Mode::Unsampled),
    (TRACING_SAMPLED, Mode::Sampled),
];
const TARGET: &str = "bench";
const MTLS_ROW: &str = "mesh round_robin (mTLS)";
const BALANCE_CHANNEL: &str = "tonic balance_channel";

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

/// `rows` (medians of the rounds) with each one's throughput and p99 as the median of its
/// per-round ratios to `baseline` (the first row).
fn print_table(title: &str, rows: &[Stats], rounds: &Rounds) {
    println!("\n{title}");
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>7} {:>11} {:>9}",
        "client", "calls/s", "p50", "p99", "errors", "x baseline", "p99 x"
    );
    let baseline = rows.first().map(|b| b.name.clone()).unwrap_or_default();
    for s in rows {
        let (tput, p99) = median_ratios(rounds, &s.name, &baseline)
            .map_or(("-".into(), "-".into()), |(t, p)| {
                (format!("{t:.2}"), format!("{p:.2}"))
            });
        println!(
            "{:<40} {:>10.0} {:>9.2?} {:>9.2?} {:>7} {:>11} {:>9}",
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
            // Idempotent and unary, as the app declares its reads: their answers are
            // read whole inside the attempt (`client/eject.rs`), a cost every such call pays.
            MeshConfig::new(idempotent.clone())
                .with_unary_methods(idempotent.clone())
                .with_policy(TARGET, policy.clone()),
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
    let check: HashSet<String> = [HEALTH_CHECK.to_string()].into_iter().collect();
    let mut config = MeshConfig::new(check.clone())
        .with_unary_methods(check)
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

fn log_round(scenario: &str, round: usize, row: &[Stats]) {
    for s in row {
        eprintln!(
            "{scenario} round {round}: {:<28} {:>8.0} calls/s p99 {:?}",
            s.name,
            s.throughput(),
            s.p99
        );
    }
}

/// Rows of each round of a scenario.
pub type Rounds = Vec<Vec<Stats>>;

/// Every round of every scenario.
pub struct Scenarios {
    /// First row of each round: the direct baseline.
    pub uniform: Rounds,
    /// One backend `--slow-ms` slower. First row of each round: [`ALL_FAST`].
    pub slow: Rounds,
    /// One backend serving [`LIMIT`] calls at a time.
    pub limit: Rounds,
    /// One backend sharing its CPU with a busy loop.
    pub busy: Rounds,
    /// Mesh round_robin with tracing off, on but unsampled, and sampled.
    pub tracing: Rounds,
}

pub async fn run_scenarios(args: &BalancerBenchArgs) -> anyhow::Result<Scenarios> {
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
    let mut uniform = Vec::new();
    for round in 0..args.rounds_of("uniform") {
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
                BALANCE_CHANNEL,
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
        log_round("uniform", round, &row);
        uniform.push(row);
    }

    // What tracing costs a call (client and server span, traceparent): off, made but not
    // sampled, sampled and batched for export (to nowhere: no collector's network here).
    let mut tracing = Vec::new();
    if let Some((_, rr)) = c.mesh.iter().find(|(n, _)| n == "mesh round_robin") {
        for round in 0..args.rounds_of("tracing") {
            let mut row = Vec::new();
            for (name, mode) in TRACING_MODES {
                switch::set(mode);
                measure("warm-up", rr.clone(), args.concurrency, warm).await;
                row.push(measure(name, rr.clone(), args.concurrency, args.seconds).await);
            }
            switch::set(Mode::Off);
            log_round("tracing", round, &row);
            tracing.push(row);
        }
    }

    // Heterogeneity: one backend of three unlike the others, in three ways. Each round
    // also measures mesh p2c_ewma with all three alike (ALL_FAST), under the same
    // conditions, to compare the tail with.
    let mut slow = Vec::new();
    for round in 0..args.rounds_of("slow") {
        backends[2].set_delay(Duration::ZERO);
        let mut row = vec![all_fast(&c, args, warm).await];
        backends[2].set_delay(Duration::from_millis(args.slow_ms));
        row.extend(hetero_row(&c, args, warm).await);
        log_round("slow", round, &row);
        slow.push(row);
    }
    backends[2].set_delay(Duration::ZERO);

    // One backend at its concurrency limit: it serves LIMIT calls at a time, each taking
    // LIMIT_DELAY, so at most LIMIT / LIMIT_DELAY a second; more queue inside it.
    let mut limited = vec![
        TestBackend::start("lim-backend-0", Duration::ZERO).await?,
        TestBackend::start("lim-backend-1", Duration::ZERO).await?,
    ];
    limited.push(
        TestBackend::start_serving(
            "lim-backend-2",
            Serving {
                concurrency_limit: Some(LIMIT),
                delay: LIMIT_DELAY,
                ..Serving::default()
            },
        )
        .await?,
    );
    let lc = clients(&limited, &policies).await?;
    let mut limit = Vec::new();
    for round in 0..args.rounds_of("limit") {
        let mut row = vec![all_fast(&c, args, warm).await];
        row.extend(hetero_row(&lc, args, warm).await);
        log_round("limit", round, &row);
        limit.push(row);
    }

    // One backend sharing its core with a busy loop. Everything else in this process is
    // kept to CPU 0 meanwhile, so the busy loop slows that one backend only (a machine
    // with one CPU cannot play this; it runs the scenario unpinned).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_cpus: Vec<usize> = (0..cpus).collect();
    for tid in own_threads() {
        pin_thread(tid, &[0]);
    }
    let mut shared = vec![
        TestBackend::start("busy-backend-0", Duration::ZERO).await?,
        TestBackend::start("busy-backend-1", Duration::ZERO).await?,
    ];
    shared.push(
        TestBackend::start_serving(
            "busy-backend-2",
            Serving {
                pinned_cpu: Some(1.min(cpus - 1)),
                ..Serving::default()
            },
        )
        .await?,
    );
    let sc = clients(&shared, &policies).await?;
    let mut busy = Vec::new();
    for round in 0..args.rounds_of("busy") {
        let mut row = vec![all_fast(&sc, args, warm).await];
        let spinner = BusyLoop::start(1.min(cpus - 1))?;
        row.extend(hetero_row(&sc, args, warm).await);
        drop(spinner);
        log_round("busy", round, &row);
        busy.push(row);
    }
    for tid in own_threads() {
        pin_thread(tid, &all_cpus);
    }

    for b in backends
        .into_iter()
        .chain(tls_backends)
        .chain(limited)
        .chain(shared)
    {
        b.stop().await;
    }
    Ok(Scenarios {
        uniform,
        slow,
        limit,
        busy,
        tracing,
    })
}

/// Calls the limited backend serves at once in the `limit` scenario, and how long each
/// takes there: 4,000 calls/s at most, a fraction of what the caller sends.
const LIMIT: usize = 4;
const LIMIT_DELAY: Duration = Duration::from_millis(1);
/// The row of mesh p2c_ewma with every backend alike, in each heterogeneity round.
const ALL_FAST: &str = "all fast: mesh p2c_ewma";
const P2C: &str = "mesh p2c_ewma";

async fn all_fast(c: &Clients, args: &BalancerBenchArgs, warm: f64) -> Stats {
    let p2c = c
        .mesh
        .iter()
        .find(|(n, _)| n == P2C)
        .map(|(_, client)| client.clone())
        .expect("the p2c_ewma client");
    measure("warm-up", p2c.clone(), args.concurrency, warm).await;
    measure(ALL_FAST, p2c, args.concurrency, args.seconds).await
}

/// balance_channel and every mesh policy, as they are now.
async fn hetero_row(c: &Clients, args: &BalancerBenchArgs, warm: f64) -> Vec<Stats> {
    let mut row = Vec::new();
    measure("warm-up", c.balance_channel.clone(), args.concurrency, warm).await;
    row.push(
        measure(
            BALANCE_CHANNEL,
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
    row
}

/// Per round, mesh p2c_ewma's p99 in the scenario over its all-fast p99 in that round.
fn tail_ratios(rounds: &Rounds) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| {
            let fast = r.iter().find(|s| s.name == ALL_FAST)?;
            let p2c = r.iter().find(|s| s.name == P2C)?;
            Some(p2c.p99.as_secs_f64() / fast.p99.as_secs_f64())
        })
        .collect()
}

/// The median of `values` (the upper one of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Configuration `name` over the rounds: median throughput, p50 and p99, errors summed.
fn median_row(rounds: &Rounds, name: &str) -> Option<Stats> {
    let rows: Vec<&Stats> = rounds
        .iter()
        .filter_map(|r| r.iter().find(|s| s.name == name))
        .collect();
    let first = rows.first()?;
    let secs = |f: fn(&Stats) -> Duration| {
        Duration::from_secs_f64(median(rows.iter().map(|s| f(s).as_secs_f64()).collect()))
    };
    let seconds = median(rows.iter().map(|s| s.seconds).collect());
    Some(Stats {
        name: first.name.clone(),
        ok: (median(rows.iter().map(|s| s.throughput()).collect()) * seconds).round() as usize,
        errors: rows.iter().map(|s| s.errors).sum(),
        seconds,
        p50: secs(|s| s.p50),
        p99: secs(|s| s.p99),
    })
}

/// The median over rounds of `a`'s throughput and p99 as ratios of `b`'s in the same
/// round (so a round the machine slowed down compares like with like).
fn median_ratios(rounds: &Rounds, a: &str, b: &str) -> Option<(f64, f64)> {
    let pairs: Vec<(&Stats, &Stats)> = rounds
        .iter()
        .filter_map(|r| {
            Some((
                r.iter().find(|s| s.name == a)?,
                r.iter().find(|s| s.name == b)?,
            ))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some((
        median(
            pairs
                .iter()
                .map(|(x, y)| x.throughput() / y.throughput())
                .collect(),
        ),
        median(
            pairs
                .iter()
                .map(|(x, y)| x.p99.as_secs_f64() / y.p99.as_secs_f64())
                .collect(),
        ),
    ))
}

fn names(rounds: &Rounds) -> Vec<String> {
    rounds
        .first()
        .map(|r| r.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default()
}

pub async fn run(args: BalancerBenchArgs) -> anyhow::Result<()> {
    println!(
        "starling bench balancer: {} concurrent callers, {}s per configuration, {} interleaved round(s), loopback",
        args.concurrency, args.seconds, args.rounds
    );
    let scenarios = run_scenarios(&args).await?;
    let uniform_rounds = &scenarios.uniform;
    let medians = |rounds: &Rounds| -> Vec<Stats> {
        names(rounds)
            .iter()
            .filter_map(|n| median_row(rounds, n))
            .collect()
    };
    let uniform = medians(uniform_rounds);
    print_table(
        "Three identical backends (median of the rounds; ratios: median of the per-round ratios):",
        &uniform,
        uniform_rounds,
    );
    let hetero = [
        (
            format!("One of three backends {} ms slower", args.slow_ms),
            "slow",
            &scenarios.slow,
        ),
        (
            format!(
                "One of three backends serving {LIMIT} calls at a time, {} ms each",
                LIMIT_DELAY.as_millis()
            ),
            "at its limit",
            &scenarios.limit,
        ),
        (
            "One of three backends sharing its CPU with a busy loop (the rest of the process on the other CPU)".to_string(),
            "busy neighbour",
            &scenarios.busy,
        ),
    ];
    for (title, _, rounds) in &hetero {
        print_table(
            &format!("{title} (median of the rounds; ratios to {ALL_FAST} in the same round):"),
            &medians(rounds),
            rounds,
        );
    }
    println!("\nmesh p2c_ewma p99 over its all-fast p99, per round:");
    for (_, name, rounds) in &hetero {
        let ratios = tail_ratios(rounds);
        println!(
            "  {name:<15} {} (worst {:.1}x)",
            ratios
                .iter()
                .map(|r| format!("{r:.1}x"))
                .collect::<Vec<_>>()
                .join(" "),
            ratios.iter().copied().fold(0.0, f64::max)
        );
    }
    let ratio = |a: &str, b: &str| median_ratios(uniform_rounds, a, b);
    if let Some((t, p)) = ratio("mesh round_robin", "direct Channel (1 backend)") {
        println!("\nmesh round_robin vs direct: throughput {t:.2}x, p99 {p:.2}x");
    }
    if let Some((t, p)) = ratio(MTLS_ROW, "mesh round_robin") {
        println!(
            "mTLS cost: mesh round_robin (mTLS) vs plaintext: throughput {t:.2}x, p99 {p:.2}x"
        );
    }
    if !scenarios.tracing.is_empty() {
        print_table(
            "Tracing (mesh round_robin; a client and a server span per call; median of the rounds, ratios to tracing off):",
            &medians(&scenarios.tracing),
            &scenarios.tracing,
        );
        for (name, label) in [
            (TRACING_UNSAMPLED, "not sampled"),
            (TRACING_SAMPLED, "sampled"),
        ] {
            if let Some((t, p)) = median_ratios(&scenarios.tracing, name, TRACING_OFF) {
                println!("tracing cost, {label} vs off: throughput {t:.2}x, p99 {p:.2}x");
            }
        }
    }
    if let Some((t, p)) = ratio("mesh round_robin", BALANCE_CHANNEL) {
        println!("mesh round_robin vs tonic balance_channel: throughput {t:.2}x, p99 {p:.2}x");
    }
    if let (Some(fast), Some(slowed)) = (
        median_row(&scenarios.slow, ALL_FAST),
        median_row(&scenarios.slow, P2C),
    ) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "slow backend: p99 mesh p2c_ewma {:.2} ms, all-fast p99 {:.2} ms ({:.1}x)",
            ms(slowed.p99),
            ms(fast.p99),
            slowed.p99.as_secs_f64() / fast.p99.as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str, ok: usize, p99_ms: u64) -> Stats {
        Stats {
            name: name.into(),
            ok,
            errors: 0,
            seconds: 1.0,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
        }
    }

    #[test]
    fn medians_are_of_the_rounds_and_ratios_per_round() {
        let rounds: Rounds = vec![
            vec![stats("a", 100, 2), stats("b", 200, 2)],
            vec![stats("a", 10, 9), stats("b", 10, 3)],
            vec![stats("a", 300, 4), stats("b", 300, 2)],
        ];
        let a = median_row(&rounds, "a").unwrap();
        assert_eq!((a.ok, a.p99), (100, Duration::from_millis(4)));
        // Per-round ratios of a to b: 0.5, 1.0, 1.0 and p99 1.0, 3.0, 2.0.
        assert_eq!(median_ratios(&rounds, "a", "b"), Some((1.0, 2.0)));
        assert!(median_row(&rounds, "c").is_none());
    }
}
