//! Every `starling bench` stays runnable: each runs here in a tiny configuration, and its
//! output keeps the lines the README and ARCHITECTURE.md quote. (The figures themselves
//! come from full runs in release builds; nothing here asserts a speed.)

mod common;

use std::process::{Command, Output};

use common::*;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("bench")
        .args(args)
        .env_remove("STARLING_ETCD")
        .env_remove("STARLING_REDIS")
        .env_remove("STARLING_KAFKA")
        .env_remove("STARLING_EMBEDDED")
        .output()
        .expect("run starling bench")
}

fn stdout_of(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// N in `max rate with p99 < T ms: N req/s`, the last line of `bench load` (T is
/// `--p99-ms`, 50 by default).
fn max_rate(text: &str) -> f64 {
    let last = text.lines().last().unwrap_or_default();
    last.strip_prefix("max rate with p99 < ")
        .and_then(|r| r.split_once(" ms: "))
        .and_then(|(_, r)| r.strip_suffix(" req/s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("last line {last:?} of:\n{text}"))
}

/// The CSV has a row per operation and `all` for each rate, and the chart is an SVG.
fn check_files(dir: &std::path::Path, stem: &str, rates: usize) {
    let csv = std::fs::read_to_string(dir.join(format!("{stem}.csv"))).expect("the CSV");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), rates * 6, "{csv}");
    assert_eq!(
        rows.iter()
            .filter(|r| r.split(',').nth(2) == Some("all"))
            .count(),
        rates,
        "{csv}"
    );
    let cpu = std::fs::read_to_string(dir.join(format!("{stem}-cpu.csv"))).expect("CPU CSV");
    assert!(cpu.contains(",generator,"), "{cpu}");
    let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).expect("the chart");
    assert!(svg.starts_with("<svg"), "{svg}");
}

#[test]
fn bench_load_runs_on_the_embedded_system() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let text = stdout_of(&bench(&[
        "load",
        "--embedded",
        // A debug build on a busy CI machine may take 100 ms for a cold call: the
        // threshold here checks that a rate is found and reported, not a speed.
        "--p99-ms",
        "10000",
        "--users",
        "200",
        "--follows",
        "5",
        "--rates",
        "20,40",
        "--seconds",
        "1",
        "--out",
        o,
    ]));
    // Every operation of the mix ran, none failed, and the CPU line names the process.
    for op in ["home_timeline", "user_timeline", "post", "all"] {
        assert!(text.contains(&format!("  {op} ")), "{op} missing:\n{text}");
    }
    assert!(text.contains("cpu seconds: up "), "{text}");
    assert!(text.contains("errors 0 (0.00%)"), "{text}");
    assert!(max_rate(&text) > 0.0, "{text}");
    check_files(out.path(), "load-grpc-embedded", 2);
}

/// The production path: real etcd, Redis and the broker (started by the bench), one
/// process per service, requests through the gateway's JSON API as signed-up users.
#[test]
fn bench_load_runs_through_the_gateway_on_real_backends() {
    for b in ["etcd", "redis-server"] {
        if require_binary(b).is_none() {
            return;
        }
    }
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let text = stdout_of(&bench(&[
        "load",
        "--door",
        "http",
        // A debug build on a busy CI machine may take 100 ms for a cold call: the
        // threshold here checks that a rate is found and reported, not a speed.
        "--p99-ms",
        "10000",
        "--users",
        "200",
        "--follows",
        "5",
        "--web-users",
        "20",
        "--rates",
        "20",
        "--seconds",
        "1",
        "--out",
        o,
    ]));
    assert!(
        text.contains("20 users signed up through the gateway"),
        "{text}"
    );
    // Every process's CPU time is read.
    for p in [
        "tweet",
        "timeline",
        "gateway",
        "etcd",
        "redis",
        "broker",
        "generator",
    ] {
        assert!(text.contains(&format!(" {p} ")), "{p} missing:\n{text}");
    }
    assert!(max_rate(&text) > 0.0, "{text}");
    check_files(out.path(), "load-http-real", 1);
}

#[test]
fn bench_load_refuses_bad_input() {
    let out = bench(&["load", "--rates", "10,-5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rates must be positive"), "{err}");
}

#[test]
fn bench_balancer_runs() {
    let text = stdout_of(&bench(&["balancer", "--seconds", "0.2", "--rounds", "2"]));
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    assert!(n >= 2, "{text}");
    assert!(
        lines[n - 2].starts_with("mesh round_robin vs tonic balance_channel: throughput "),
        "{text}"
    );
    assert!(
        lines[n - 1].starts_with("slow backend: p99 mesh p2c_ewma "),
        "{text}"
    );
    assert!(text.contains("(median of the rounds;"), "{text}");
    // Each heterogeneity scenario reports p2c_ewma's tail against its all-fast tail, one
    // ratio per round.
    for scenario in ["slow", "at its limit", "busy neighbour"] {
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(scenario) && l.contains("(worst "))
            .unwrap_or_else(|| panic!("no {scenario} line in:\n{text}"));
        assert_eq!(line.matches("x ").count(), 2, "one ratio per round: {line}");
    }
}

#[test]
fn bench_fanout_runs() {
    if require_binary("redis-server").is_none() {
        return;
    }
    let text = stdout_of(&bench(&[
        "fanout",
        "--sizes",
        "1000",
        "--naive-max",
        "1000",
    ]));
    // Both ceilings were measured in the run (redis-benchmark comes with redis-tools).
    let line = text
        .lines()
        .find(|l| l.starts_with("fan-out 1000 followers: "))
        .unwrap_or_else(|| panic!("{text}"));
    if require_binary("redis-benchmark").is_some() {
        assert!(line.contains("x of the Redis limit, "), "{line}");
        assert!(line.ends_with("x of ZADDs to distinct keys"), "{line}");
    }
}

/// `bench e2e` in a tiny configuration on `backends` (embedded when empty); its output,
/// once the line every run ends with is checked.
fn tiny_e2e(backends: &[&str]) -> String {
    let mut args = vec!["e2e"];
    args.extend_from_slice(backends);
    args.extend([
        "--rate",
        "5",
        "--seconds",
        "1",
        "--followers",
        "10",
        "--authors",
        "2",
    ]);
    let text = stdout_of(&bench(&args));
    assert!(
        text.lines().any(|l| l
            .starts_with("5 tweets: CreateTweet returned -> in all 10 followers' timelines: p50 ")),
        "{text}"
    );
    text
}

#[test]
fn bench_e2e_runs() {
    tiny_e2e(&[]);
}

/// The production path of the post-to-timeline bench: the shared Redis (its checker then
/// looks with one pipeline per look) and the broker.
#[test]
fn bench_e2e_runs_on_redis_and_the_broker() {
    let (Some(redis), Some(kafka)) = (
        common::shared("STARLING_TEST_REDIS"),
        common::shared("STARLING_TEST_KAFKA"),
    ) else {
        return;
    };
    let text = tiny_e2e(&["--redis", &redis, "--kafka", &kafka]);
    assert!(text.contains("store: redis "), "{text}");
}
