//! `starling bench fanout`: the seed article's fan-out (one Redis command per follower, in a
//! loop, no pipeline) against Starling's (followers paged from the follower service over
//! gRPC, pipelined writes, timelines trimmed lazily to their cap, checkpoints), on the same Redis in one run,
//! next to what `redis-benchmark` says this Redis can take.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use starling_discovery::{MemoryRegistry, Mesh, MeshConfig};
use starling_follower::storage::followers_key_of;
use starling_runtime::events::MemoryBus;
use starling_runtime::store::{RedisStore, Store, Write};
use starling_runtime::{AppSettings, ServiceContext, ServiceKind};
use starling_timeline::fanout::{naive_fan_out, Fanout, MeshFollowers};
use starling_timeline::storage::TimelineStorage;

use crate::cli::FanoutBenchArgs;

/// A redis-server of our own, stopped on drop.
struct OwnRedis {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn own_redis() -> anyhow::Result<(String, OwnRedis)> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (install it, or pass --redis URL)")?;
    let url = format!("redis://127.0.0.1:{port}");
    let own = OwnRedis { child, _dir: dir };
    for _ in 0..100 {
        if RedisStore::connect(&url, "", 1).await.is_ok() {
            return Ok((url, own));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("redis-server did not start on port {port}")
}

/// ZADD/s with 100-command pipelines, as `redis-benchmark -t zadd` measures it (if
/// installed): the issue's ceiling. Its ZADD rewrites one member of one key, so it measures
/// the cost of a command and no more.
fn redis_limit(url: &str) -> Option<f64> {
    redis_benchmark(url, &["-t", "zadd"])
}

/// ZADD/s with 100-command pipelines, each to one of a million different keys, one new
/// member each: the shape of a fan-out's writes (a timeline per follower), so the cost of
/// finding (or making) the key is in it too. Leaves up to a million keys behind, so only
/// run on the bench's own Redis.
fn distinct_key_limit(url: &str) -> Option<f64> {
    // A member as the timelines hold them (a zero-padded tweet id).
    let member = starling_runtime::store::id_member(1 << 40);
    redis_benchmark(
        url,
        &[
            "-r",
            "1000000",
            "ZADD",
            "limit:home:__rand_int__",
            "0",
            &member,
        ],
    )
}

fn redis_benchmark(url: &str, test: &[&str]) -> Option<f64> {
    let hostport = url.trim_start_matches("redis://");
    let (host, port) = hostport.split_once(':')?;
    let out = Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-P", "100", "-n", "1000000", "-q"])
        .args(test)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "ZADD: 690000.00 requests per second, p50=..." (or the command line, for a custom
    // test); with -q the line is overwritten in place with \r, so take the last segment.
    let line = text
        .rsplit('\r')
        .find(|l| l.contains("requests per second"))?;
    let (_, rate) = line.rsplit_once(": ")?;
    rate.split_whitespace().next()?.parse().ok()
}

pub async fn run(args: FanoutBenchArgs) -> anyhow::Result<()> {
    let (url, own) = match &args.redis {
        Some(u) => (u.clone(), None),
        None => {
            let (u, own) = own_redis().await?;
            (u, Some(own))
        }
    };
    let prefix = format!("fanoutbench{:08x}:", rand::random::<u32>());
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&url, &prefix, 8).await?);
    let settings = Arc::new(AppSettings {
        celebrity_threshold: u64::MAX,
        ..AppSettings::default()
    });
    // The follower service, in process, reached through the mesh like in production.
    let registry = Arc::new(MemoryRegistry::new());
    let ctx = ServiceContext {
        mesh: Arc::new(Mesh::new(
            registry.clone(),
            MeshConfig::new(starling_proto::idempotent_methods()),
        )),
        registry,
        store: store.clone(),
        bus: Arc::new(MemoryBus::new()),
        settings: settings.clone(),
    };
    let running = crate::up::start_all(
        &ctx,
        &[ServiceKind::Follower],
        "127.0.0.1".parse()?,
        1,
        false,
    )
    .await?;
    let storage = TimelineStorage::new(store.clone(), settings.timeline_cap);
    let engine = Fanout::new(
        storage.clone(),
        Arc::new(MeshFollowers::new(ctx.mesh.channel("follower"))),
        settings.clone(),
    );

    println!(
        "starling bench fanout: redis {}",
        starling_runtime::store::redacted_url(&url)
    );
    let limit = redis_limit(&url);
    match limit {
        Some(l) => println!("redis-benchmark -t zadd -P 100 on this Redis: {l:.0} ZADD/s"),
        None => println!("redis-benchmark not available: no Redis ceiling measured"),
    }
    println!(
        "\n{:>10}  {:>12} {:>12}  {:>12} {:>12}  {:>9}",
        "followers", "naive time", "naive ins/s", "starling", "ins/s", "speed-up"
    );
    let mut tweet_id = 1u64 << 40;
    let mut summary = Vec::new();
    // Warm-up: open the gRPC and Redis connections before anything is timed.
    store
        .apply(vec![Write::ZAdd {
            key: followers_key_of("w", "warmup"),
            member: "w".into(),
        }])
        .await?;
    engine.fan_out(tweet_id, "warmup").await?;
    for &n in &args.sizes {
        let author = format!("author{n}");
        let users: Vec<String> = (0..n).map(|i| format!("u{n}x{i:07}")).collect();
        for chunk in users.chunks(100_000) {
            let writes = chunk
                .iter()
                .map(|u| Write::ZAdd {
                    key: followers_key_of(u, &author),
                    member: u.clone(),
                })
                .collect();
            store.apply(writes).await?;
        }
        let naive = if n <= args.naive_max {
            tweet_id += 1;
            let t = Instant::now();
            naive_fan_out(&storage, tweet_id, &users).await?;
            Some(t.elapsed())
        } else {
            None
        };
        // The median of three fan-outs (three tweets), as the footer says.
        let mut runs = Vec::with_capacity(3);
        for _ in 0..3 {
            tweet_id += 1;
            let report = engine.fan_out(tweet_id, &author).await?;
            anyhow::ensure!(
                report.written == n as u64,
                "fan-out wrote {} of {n}",
                report.written
            );
            runs.push(report.elapsed);
        }
        runs.sort();
        let real = runs[1];
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "{:>10}  {:>12} {:>12}  {:>12} {:>12.0}  {:>9}",
            n,
            naive.map_or("skipped".into(), |d| format!("{d:.2?}")),
            naive.map_or("-".into(), |d| format!("{:.0}", rate(d))),
            format!("{real:.2?}"),
            rate(real),
            naive.map_or("-".into(), |d| format!(
                "{:.1}x",
                d.as_secs_f64() / real.as_secs_f64()
            )),
        );
        summary.push((n, real, rate(real)));
    }
    // After the fan-outs, so that its million keys were not in their way.
    let distinct = if own.is_some() {
        distinct_key_limit(&url)
    } else {
        None
    };
    match (distinct, own.is_some()) {
        (Some(d), _) => println!(
            "\nredis-benchmark ZADD to 1,000,000 different keys on this Redis: {d:.0} ZADD/s ({:.2}x of the Redis limit)",
            limit.map_or(f64::NAN, |l| d / l)
        ),
        (None, true) => println!("\nredis-benchmark not available: no distinct-key ceiling measured"),
        (None, false) => println!("\nno distinct-key ceiling: it writes a million keys, so it runs only on the bench's own Redis (no --redis)"),
    }
    println!("\nstarling = median of 3 runs: followers paged over gRPC from the follower service, a ZADD per follower plus a trim to 800 on about one in 8, pipelines of 2,500 followers, three pages in flight; naive = one run of 1 ZADD per follower, awaited one by one (the seed article's loop).");
    for (n, real, r) in summary {
        println!(
            "fan-out {n} followers: {:.3} s, {r:.0} inserts/s, {}{}",
            real.as_secs_f64(),
            limit.map_or("no Redis limit measured".into(), |l| format!(
                "{:.2}x of the Redis limit",
                r / l
            )),
            distinct.map_or(String::new(), |d| format!(
                ", {:.2}x of ZADDs to distinct keys",
                r / d
            ))
        );
    }
    crate::up::stop_all(running).await?;
    Ok(())
}
