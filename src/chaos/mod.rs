//! `starling chaos`: the whole system as separate processes (etcd, Redis, the broker, two
//! replicas of every service, the gateway) under a steady workload, while faults are injected one after
//! another; then the history of acknowledged operations is checked against what the system
//! holds (see [`check`]). Prints a table per fault and fails if anything acknowledged was
//! lost, duplicated or reordered.
//!
//! * [`cluster`]: the processes, and how to kill, freeze and restart them;
//! * [`load`]: the workload and its history;
//! * [`web`]: the workload's browser side, through the gateway's JSON API;
//! * [`pulse`]: a steady trickle of posts that measures how long the fan-out paused;
//! * [`check`]: the checks.
//!
//! Traffic goes to loopback only; every process is started by the suite and stopped at the
//! end; the run is bounded by `--minutes` (one pass over the faults at least).

pub mod check;
pub mod cluster;
pub mod load;
pub mod pulse;
pub mod redis_cluster;
pub mod web;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use starling_discovery::{EtcdConfig, EtcdRegistry, Mesh};
use starling_runtime::outbox::{pending, Outbox};
use starling_runtime::store::{RedisStore, Store as _};
use tokio::sync::watch;

use crate::cli::ChaosArgs;
use check::{Violation, ViolationKind};
use cluster::{Backends, Launcher, Replica};
use load::{Door, History, Kind, Workload};
use web::Web;

pub const SERVICES: [&str; 5] = ["tweet", "follower", "timeline", "tagger", "recommendation"];
const OUTBOXES: [&str; 3] = ["tweet", "follower", "recommendation"];
const PROBE_AUTHOR: &str = "probe_author";
const PROBE_READER: &str = "probe_reader";
const BIG_ACCOUNT: &str = "big";

/// One fault the suite can inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of one replica of a service, restarted 2 s later.
    Kill(&'static str),
    /// SIGSTOP of one replica for `--stop-secs`, then SIGCONT.
    Freeze,
    /// SIGTERM and restart of every replica, one after another.
    Rolling,
    /// kill -9 of Redis, restarted 2 s later (append-only file on).
    Redis,
    /// The broker killed and restarted: it comes back without its topics.
    Broker,
    /// etcd killed and restarted with its data `--etcd-down-secs` later.
    Etcd,
    /// etcd killed, its data deleted, restarted.
    EtcdWipe,
}

impl Fault {
    pub fn all() -> Vec<Fault> {
        let mut all: Vec<Fault> = SERVICES.iter().map(|s| Fault::Kill(s)).collect();
        all.extend([
            Fault::Freeze,
            Fault::Rolling,
            Fault::Redis,
            Fault::Broker,
            Fault::Etcd,
            Fault::EtcdWipe,
        ]);
        all
    }

    pub fn name(&self) -> String {
        match self {
            Fault::Kill(s) => format!("kill-9 {s}"),
            Fault::Freeze => "sigstop replica".into(),
            Fault::Rolling => "rolling restart".into(),
            Fault::Redis => "redis kill-9".into(),
            Fault::Broker => "broker restart".into(),
            Fault::Etcd => "etcd restart".into(),
            Fault::EtcdWipe => "etcd wiped".into(),
        }
    }

    /// Parses `kill:<service>`, `freeze`, `rolling`, `redis`, `broker`, `etcd`, `etcd-wipe`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        match s {
            "freeze" => Ok(Fault::Freeze),
            "rolling" => Ok(Fault::Rolling),
            "redis" => Ok(Fault::Redis),
            "broker" => Ok(Fault::Broker),
            "etcd" => Ok(Fault::Etcd),
            "etcd-wipe" => Ok(Fault::EtcdWipe),
            other => match other.strip_prefix("kill:") {
                Some(svc) => SERVICES
                    .iter()
                    .find(|s| **s == svc)
                    .map(|s| Fault::Kill(s))
                    .ok_or_else(|| format!("unknown service {svc:?} in {other:?}")),
                None => Err(format!(
                    "unknown fault {other:?}: use kill:<service>, freeze, rolling, redis, broker, etcd or etcd-wipe"
                )),
            },
        }
    }
}

struct System {
    backends: Backends,
    launcher: Launcher,
    replicas: Vec<Replica>,
    /// Not among the faults' targets: there is one, and the web users' only way in.
    gateway: Replica,
}

impl System {
    async fn restart_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let (service, index) = (self.replicas[i].service, self.replicas[i].index);
        self.replicas[i] = self.launcher.start(service, index).await?;
        Ok(())
    }
}

/// What happened while one fault was on.
struct Phase {
    fault: Fault,
    started: Instant,
    ended: Instant,
    recovery: Option<Duration>,
}

/// Runs the suite; an error if any check failed (after printing the table).
pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let faults = if args.faults.is_empty() {
        Fault::all()
    } else {
        args.faults.clone()
    };
    let dir = tempfile::Builder::new()
        .prefix("starling-chaos-")
        .tempdir()
        .context("temporary directory")?;
    let work = dir.path().to_path_buf();
    println!("starling chaos: logs and data in {}", work.display());
    let backends = Backends::start(&work).await?;
    let namespace = format!("chaos{:08x}", rand::random::<u32>());
    // The production path: every process on mutual TLS, its certificates from a CA made
    // for the run; the chaos driver calls the services as `admin`.
    let tls_dir = work.join("pki");
    // Valid a day longer than the run is asked to last.
    let days = (args.minutes / (24.0 * 60.0)).ceil() as u32 + 1;
    let ca = crate::ca::Authority::new(days)?;
    crate::ca::write_identities(&tls_dir, &ca, &namespace, days, crate::ca::MESH_IDENTITIES)?;
    let launcher = Launcher::new(&backends, &work, &namespace, &tls_dir)?;
    let mut replicas = Vec::new();
    for service in SERVICES {
        for index in 0..2 {
            replicas.push(launcher.start(service, index).await?);
        }
    }
    let gateway = launcher.start_gateway().await?;
    let mut system = System {
        backends,
        launcher,
        replicas,
        gateway,
    };
    let web = Web::new(&system.gateway.address, load::CALL_TIMEOUT);
    let mut config = EtcdConfig::new(vec![system.backends.etcd_url()]);
    config.namespace = namespace.clone();
    config.lease_ttl = Duration::from_secs(3);
    config.relist_grace = Duration::from_secs(9);
    let registry = Arc::new(EtcdRegistry::connect(config).await?);
    let mesh = cluster::admin_mesh(registry, &tls_dir)?;
    for s in SERVICES {
        let ready = mesh
            .channel(s)
            .wait_for_endpoints(Duration::from_secs(30), |e| e.len() >= 2)
            .await;
        if !ready {
            bail!("{s} did not register both replicas");
        }
    }
    let history = Arc::new(History::default());
    let store =
        RedisStore::connect(&system.backends.redis_url(), &format!("{namespace}:"), 4).await?;
    setup(&mesh, &history, args.fans, args.users).await?;
    println!(
        "starling chaos: {} replicas up; {} users, {} ops/s, faults: {}",
        system.replicas.len(),
        args.users,
        args.rate,
        faults
            .iter()
            .map(Fault::name)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let (stop_load, load_stopped) = watch::channel(false);
    let workload = Workload {
        users: args.users,
        rate: args.rate,
        workers: args.users.clamp(1, 16),
        seed: args.seed,
        big_account: BIG_ACCOUNT.into(),
    };
    let pulses = Arc::new(pulse::Pulses::default());
    let pulse = tokio::spawn(pulse::run(
        mesh.clone(),
        history.clone(),
        pulses.clone(),
        load_stopped.clone(),
    ));
    let load = tokio::spawn(load::drive(
        mesh.clone(),
        web.clone(),
        history.clone(),
        workload,
        load_stopped,
    ));

    let mut rng = StdRng::seed_from_u64(args.seed);
    let run_until = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let mut phases = Vec::new();
    let mut round = 0;
    loop {
        for fault in &faults {
            tokio::time::sleep(args.settle()).await;
            let started = Instant::now();
            inject(&mut system, &mesh, fault, &mut rng, &args).await?;
            let recovery = probe(&mesh, &history, &store, Duration::from_secs(90)).await;
            phases.push(Phase {
                fault: fault.clone(),
                started,
                ended: Instant::now(),
                recovery,
            });
            println!(
                "starling chaos: {:<18} recovered in {}",
                fault.name(),
                recovery.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
            );
        }
        round += 1;
        if Instant::now() >= run_until {
            break;
        }
        println!("starling chaos: round {round} done; again until --minutes is up");
    }
    tokio::time::sleep(args.settle()).await;
    stop_load.send_replace(true);
    let _ = load.await;
    let _ = pulse.await;

    // Let every outbox drain and every consumer catch up, then check; a check that still
    // fails after the wait is a violation.
    let quiet_until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = 0;
        for s in OUTBOXES {
            left += pending(&store, &Outbox::new(s)).await.unwrap_or(1);
        }
        if left == 0 || Instant::now() >= quiet_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ops = history.ops();
    let check_until = Instant::now() + Duration::from_secs(args.converge_secs);
    let violations = loop {
        let mut v = check::check(&store, &ops).await?;
        v.extend(check::check_sign_ups(&web, &ops).await);
        if v.is_empty() || Instant::now() >= check_until {
            break v;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let misses = report(&phases, &ops, &violations, &pulses);
    for mut r in system.replicas.drain(..) {
        r.terminate(Duration::from_secs(5)).await;
    }
    system.gateway.terminate(Duration::from_secs(5)).await;
    // A failed run keeps its logs and data for whoever looks into it.
    if args.keep || !violations.is_empty() || !misses.is_empty() {
        println!("starling chaos: kept {}", dir.keep().display());
    }
    if !violations.is_empty() {
        for v in violations.iter().take(20) {
            eprintln!("starling chaos: {:?}: {}", v.what, v.detail);
        }
        bail!(
            "{} acknowledged operations were lost, duplicated or reordered",
            violations.len()
        )
    }
    println!("chaos: 0 lost, 0 duplicated, 0 reordered");
    if !misses.is_empty() {
        for m in &misses {
            eprintln!("starling chaos: target missed: {m}");
        }
        bail!("{} availability targets missed", misses.len())
    }
    println!("chaos: every availability target met");
    Ok(())
}

/// Accounts the probes and the big account use, and the big account's followers; every
/// name the run uses is registered first (following a name nobody registered is
/// NOT_FOUND).
async fn setup(
    mesh: &Arc<Mesh>,
    history: &History,
    fans: usize,
    users: usize,
) -> anyhow::Result<()> {
    let mut names: Vec<String> = [PROBE_READER, PROBE_AUTHOR, pulse::READER, pulse::AUTHOR]
        .into_iter()
        .chain([BIG_ACCOUNT])
        .map(str::to_string)
        .collect();
    names.extend((0..users).map(load::user));
    names.extend((0..fans).map(fan));
    crate::users::register_users(&mesh.channel("follower"), &names).await?;
    let follow = |follower: String, followee: &str| Kind::Follow {
        follower,
        followee: followee.to_string(),
    };
    for (reader, author) in [(PROBE_READER, PROBE_AUTHOR), (pulse::READER, pulse::AUTHOR)] {
        load::run_op(Door::Mesh(mesh), history, follow(reader.into(), author))
            .await
            .map_err(|c| anyhow::anyhow!("setting up the probes failed: {c:?}"))?;
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..fans {
        let mesh = mesh.clone();
        set.spawn(async move {
            let mut client =
                starling_proto::follower::v1::follower_service_client::FollowerServiceClient::new(
                    mesh.channel("follower"),
                );
            client
                .follow(starling_proto::follower::v1::FollowRequest {
                    follower: fan(i),
                    followee: BIG_ACCOUNT.into(),
                })
                .await
        });
        if set.len() >= 32 {
            if let Some(r) = set.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

fn fan(i: usize) -> String {
    format!("fan{i:05}")
}

/// Posts as the probe author until the post shows in the probe reader's timeline: how
/// long the write path and the pipeline took to work again.
async fn probe(
    mesh: &Mesh,
    history: &History,
    store: &RedisStore,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut posted: Option<u64> = None;
    while started.elapsed() < within {
        if posted.is_none() {
            if let Ok(id) = load::run_op(
                Door::Mesh(mesh),
                history,
                Kind::Post {
                    author: PROBE_AUTHOR.into(),
                    text: format!("probe at {:?}", started.elapsed()),
                },
            )
            .await
            {
                posted = Some(id);
            }
        }
        if let Some(id) = posted {
            let mut client =
                starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient::new(
                    mesh.channel("timeline"),
                );
            let home = client
                .get_home_timeline(starling_proto::timeline::v1::GetHomeTimelineRequest {
                    user: PROBE_READER.into(),
                    page_size: 5,
                    page_token: String::new(),
                })
                .await;
            if home.is_ok_and(|h| h.into_inner().tweets.iter().any(|t| t.id == id)) {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Say where it stuck, for whoever reads the report: still in the outbox, published
    // but not fanned out (the author's own timeline is written first), or fanned out.
    if let Some(id) = posted {
        let pending = pending(store, &Outbox::new("tweet")).await.ok();
        let started = store
            .zcontains(
                &format!("home:{PROBE_AUTHOR}"),
                &starling_runtime::store::id_member(id),
            )
            .await
            .ok();
        println!(
            "starling chaos: probe tweet {id} not delivered within {within:?}: tweet outbox entries not yet published: {pending:?}, fan-out started: {started:?}"
        );
    }
    None
}

async fn inject(
    system: &mut System,
    mesh: &Mesh,
    fault: &Fault,
    rng: &mut StdRng,
    args: &ChaosArgs,
) -> anyhow::Result<()> {
    let pick = |rng: &mut StdRng, system: &System, service: Option<&str>| -> usize {
        let candidates: Vec<usize> = (0..system.replicas.len())
            .filter(|&i| service.is_none_or(|s| system.replicas[i].service == s))
            .collect();
        candidates[rng.random_range(0..candidates.len())]
    };
    match fault {
        Fault::Kill(service) => {
            let i = pick(rng, system, Some(service));
            // At a random moment within the next second: mid-call, mid-fan-out.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
            system.replicas[i].kill9();
            tokio::time::sleep(Duration::from_secs(2)).await;
            system.restart_replica(i).await?;
        }
        Fault::Freeze => {
            // A service the workload calls synchronously, so callers meet the frozen one.
            let services = ["tweet", "follower", "timeline", "recommendation"];
            let service = services[rng.random_range(0..services.len())];
            let i = pick(rng, system, Some(service));
            println!(
                "starling chaos: freezing {} replica {} for {} s",
                system.replicas[i].service, system.replicas[i].index, args.stop_secs
            );
            system.replicas[i].freeze();
            tokio::time::sleep(Duration::from_secs(args.stop_secs)).await;
            system.replicas[i].thaw();
        }
        Fault::Rolling => {
            let started = Instant::now();
            for i in 0..system.replicas.len() {
                println!(
                    "starling chaos: rolling restart: {} replica {} at +{:.1} s",
                    system.replicas[i].service,
                    system.replicas[i].index,
                    started.elapsed().as_secs_f64()
                );
                system.replicas[i].terminate(Duration::from_secs(15)).await;
                system.restart_replica(i).await?;
                // As a deployment does: the next step waits until the new replica is
                // registered as serving (and callers can see it), plus a second.
                let (service, address) = (
                    system.replicas[i].service,
                    system.replicas[i].address.clone(),
                );
                let visible = mesh
                    .channel(service)
                    .wait_for_endpoints(Duration::from_secs(30), |e| {
                        e.iter().any(|r| r.address == address && r.serving)
                    })
                    .await;
                if !visible {
                    bail!("{service} replica at {address} did not become ready within 30 s");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Fault::Redis => {
            system.backends.redis.kill9();
            tokio::time::sleep(Duration::from_secs(2)).await;
            system.backends.redis.restart().await?;
        }
        Fault::Broker => {
            system.backends.broker.kill9();
            tokio::time::sleep(Duration::from_secs(2)).await;
            system.backends.broker.restart().await?;
        }
        Fault::Etcd => {
            system.backends.etcd.kill9();
            tokio::time::sleep(Duration::from_secs(args.etcd_down_secs)).await;
            system.backends.etcd.restart().await?;
        }
        Fault::EtcdWipe => {
            system.backends.etcd.kill9();
            system.backends.etcd.wipe();
            tokio::time::sleep(Duration::from_secs(2)).await;
            system.backends.etcd.restart().await?;
        }
    }
    Ok(())
}

/// What each fault may cost in failed calls and fan-out delay (issue 7's availability
/// targets); `None` where the fault takes away something calls cannot do without (Redis).
struct Target {
    /// No call of any kind fails.
    no_failures: bool,
    /// Reads never fail, and a failed write gave up within this.
    reads_only: Option<Duration>,
    /// The fan-out pipeline pauses at most this long.
    max_pause: Option<Duration>,
}

fn target(fault: &Fault) -> Option<Target> {
    let none = Target {
        no_failures: false,
        reads_only: None,
        max_pause: None,
    };
    match fault {
        Fault::Kill(_) => Some(Target {
            no_failures: true,
            max_pause: Some(LAPSE_PAUSE),
            ..none
        }),
        Fault::Etcd | Fault::EtcdWipe => Some(Target {
            no_failures: true,
            max_pause: Some(LAPSE_PAUSE),
            ..none
        }),
        Fault::Broker => Some(Target {
            no_failures: true,
            max_pause: Some(LAPSE_PAUSE),
            ..none
        }),
        Fault::Freeze => Some(Target {
            reads_only: Some(WRITE_GIVES_UP),
            max_pause: Some(LAPSE_PAUSE),
            ..none
        }),
        Fault::Rolling => Some(Target {
            no_failures: true,
            max_pause: Some(ROLLING_PAUSE),
            ..none
        }),
        Fault::Redis => None,
    }
}

/// A write sent to a frozen replica fails within this (the mesh's 1 s attempt timeout,
/// plus the client's own scheduling on a busy 2-core machine).
const WRITE_GIVES_UP: Duration = Duration::from_millis(1_500);
/// Longest fan-out pause a rolling restart may cause: a replica that stops hands its
/// partitions over at once (`events::ownership`).
const ROLLING_PAUSE: Duration = Duration::from_secs(2);
/// Longest fan-out pause when a reader dies or freezes (its partition leases lapse after
/// 6 s, then another replica takes them within a tick), the broker restarts (clients
/// reconnect, topics are made again) or etcd goes away (up to 2.5 s seen in a 10-minute
/// run, cause not pinned down); the rest is slack for a busy 2-core machine.
const LAPSE_PAUSE: Duration = Duration::from_secs(10);

/// Prints the table; returns the availability targets missed.
fn report(
    phases: &[Phase],
    ops: &[load::Op],
    violations: &[Violation],
    pulses: &pulse::Pulses,
) -> Vec<String> {
    println!();
    println!(
        "| fault | ops | acknowledged | lost | duplicated | reordered | failed calls by code | slowest failure | longest fan-out pause | recovery |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut misses = Vec::new();
    let now = Instant::now();
    // (name, fault, from, to, recovery)
    type Row<'a> = (
        String,
        Option<&'a Fault>,
        Instant,
        Instant,
        Option<Duration>,
    );
    let mut rows: Vec<Row> = Vec::new();
    if let (Some(first), Some(earliest)) = (phases.first(), ops.iter().map(|o| o.started).min()) {
        rows.push((
            "(before faults)".into(),
            None,
            earliest,
            first.started,
            None,
        ));
    }
    for (i, p) in phases.iter().enumerate() {
        // A phase runs until the next one's fault starts.
        let end = phases.get(i + 1).map_or(p.ended.max(now), |n| n.started);
        rows.push((p.fault.name(), Some(&p.fault), p.started, end, p.recovery));
    }
    for (name, fault, from, to, recovery) in rows {
        let in_phase: Vec<&load::Op> = ops
            .iter()
            .filter(|o| o.started >= from && o.started < to)
            .collect();
        let acked = in_phase.iter().filter(|o| o.acked()).count();
        // A call fails in the phase where its failure happened: one still in flight when the
        // next fault began (a read sent just before Redis was killed) is that fault's.
        let failures: Vec<&load::Op> = ops
            .iter()
            .filter(|o| !o.acked() && o.finished >= from && o.finished < to)
            .collect();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for o in &failures {
            if let Err(c) = o.outcome {
                *codes.entry(format!("{c:?}")).or_default() += 1;
            }
        }
        let slowest = failures.iter().map(|o| o.finished - o.started).max();
        let pause = pulses.max_delay(from, to, now);
        let count = |k: ViolationKind| {
            violations
                .iter()
                .filter(|v| v.what == k && v.at >= from && v.at < to)
                .count()
        };
        let failed = if codes.is_empty() {
            "0".to_string()
        } else {
            codes
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let secs =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!(
            "| {name} | {} | {acked} | {} | {} | {} | {failed} | {} | {} | {} |",
            in_phase.len(),
            count(ViolationKind::Lost),
            count(ViolationKind::Duplicated),
            count(ViolationKind::Reordered),
            secs(slowest),
            secs(pause),
            secs(recovery),
        );
        let Some(t) = fault.and_then(target) else {
            continue;
        };
        if t.no_failures && !failures.is_empty() {
            let examples: Vec<String> = failures
                .iter()
                .take(3)
                .map(|o| format!("{:?} -> {:?}", o.kind, o.outcome))
                .collect();
            misses.push(format!(
                "{name}: {} calls failed ({failed}), target 0; e.g. {}",
                failures.len(),
                examples.join("; ")
            ));
        }
        if let Some(limit) = t.reads_only {
            let reads = failures
                .iter()
                .filter(|o| matches!(o.kind, Kind::Read { .. }))
                .count();
            if reads > 0 {
                misses.push(format!("{name}: {reads} reads failed, target 0"));
            }
            if let Some(slow) = slowest.filter(|d| *d > limit) {
                misses.push(format!(
                    "{name}: a failed call took {:.1} s, target under {:.1} s",
                    slow.as_secs_f64(),
                    limit.as_secs_f64()
                ));
            }
        }
        if let (Some(limit), Some(p)) = (t.max_pause, pause) {
            if p > limit {
                // Where in the fault: the first slow post of each stretch.
                let mut last: Option<Instant> = None;
                for (acked, delay) in pulses.slow(from, to, limit, now) {
                    if last.is_none_or(|l| acked - l > Duration::from_millis(500)) {
                        println!(
                            "starling chaos: {name}: a post at +{:.1} s took {:.1} s to reach the follower",
                            (acked - from).as_secs_f64(),
                            delay.as_secs_f64()
                        );
                    }
                    last = Some(acked);
                }
                misses.push(format!(
                    "{name}: fan-out paused {:.1} s, target under {:.1} s",
                    p.as_secs_f64(),
                    limit.as_secs_f64()
                ));
            }
        }
    }
    println!();
    misses
}
