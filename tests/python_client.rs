//! Starling from another language: a Python client generated from `proto/` with
//! grpcio-tools (`python3 -m grpc_tools.protoc`) runs `tests/python/client_test.py` against
//! `starling up`, once through the gateway's gRPC port and once straight to the services:
//! follow, post, the post in the follower's home timeline, INVALID_ARGUMENT for an empty
//! text.
//!
//! Needs `python3` with grpcio-tools (scripts/install-deps.sh installs it). Off CI a missing
//! piece skips the test loudly; under `CI=true` it fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to completion within `timeout` (killed past it); its status and output.
async fn run_bounded(
    mut cmd: tokio::process::Command,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("waiting for {cmd:?}: {e}")),
        Err(_) => Err(format!(
            "{cmd:?} did not finish within {timeout:?} (killed)"
        )),
    }
}

fn show(out: &std::process::Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// python3 with grpcio-tools, or `None` (skip) off CI; a panic under CI.
fn require_grpc_tools() -> Option<PathBuf> {
    let python = require_binary("python3")?;
    let probe = Command::new(&python)
        .args(["-c", "import grpc_tools.protoc, grpc"])
        .output()
        .expect("run python3");
    if probe.status.success() {
        return Some(python);
    }
    let why = String::from_utf8_lossy(&probe.stderr);
    if ci() {
        panic!("python3 cannot import grpc_tools, and CI=true forbids skipping (scripts/install-deps.sh installs grpcio-tools):\n{why}");
    }
    eprintln!("SKIPPED: python3 cannot import grpc_tools (scripts/install-deps.sh installs grpcio-tools):\n{why}");
    None
}

/// Every `.proto` under `dir`, sorted, relative to `proto/`.
fn protos(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proto dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            protos(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(
                path.strip_prefix(repo().join("proto"))
                    .unwrap()
                    .to_path_buf(),
            );
        }
    }
    out.sort();
}

/// Generates the Python stubs for every Starling proto into `out`.
fn generate_stubs(python: &Path, out: &Path) {
    let mut files = Vec::new();
    protos(&repo().join("proto/starling"), &mut files);
    assert!(files.len() >= 5, "protos under proto/starling: {files:?}");
    let gen = Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&files)
        .current_dir(repo())
        .output()
        .expect("run grpc_tools.protoc");
    assert!(
        gen.status.success(),
        "grpc_tools.protoc failed:\n{}",
        show(&gen)
    );
    for f in &files {
        let stem = f.with_extension("");
        let pb2 = out.join(format!("{}_pb2.py", stem.display()));
        assert!(pb2.is_file(), "{} was not generated", pb2.display());
    }
}

/// A `starling up` child, killed if the test ends before `stop`.
struct Up {
    child: Option<Child>,
    lines: Vec<String>,
}

impl Up {
    /// Starts `starling up` on the embedded backends with the gateway on free ports, and
    /// reads its banner up to the "instances up" line.
    async fn start() -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["up", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .env("STARLING_LOG", "warn")
            .env_remove("STARLING_ETCD")
            .env_remove("STARLING_REDIS")
            .env_remove("STARLING_KAFKA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start starling up");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut up = Up {
            child: Some(child),
            lines: Vec::new(),
        };
        let lines = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut out = Vec::new();
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                let done = line.contains("instances up");
                out.push(line.trim_end().to_string());
                line.clear();
                if done {
                    break;
                }
            }
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            out
        });
        up.lines = tokio::time::timeout(Duration::from_secs(60), lines)
            .await
            .expect("starling up printed its banner within 60 s")
            .expect("reader thread");
        up
    }

    /// The second word of the banner line "starling: <name> <value> ...".
    fn banner(&self, name: &str, what: &str) -> String {
        self.lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() >= 3 && w[0] == "starling:" && w[1] == name)
            .map(|w| w[2].to_string())
            .unwrap_or_else(|| {
                panic!(
                    "starling up printed no `starling: {name} {what}` line; it printed:\n{}",
                    self.lines.join("\n")
                )
            })
    }

    /// SIGTERM: the gateway and every instance stop and the process exits 0.
    async fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let wait = tokio::task::spawn_blocking(move || {
            let status = child.wait();
            (child, status)
        });
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(Ok((_, status))) => {
                let status = status.expect("wait for starling up");
                assert!(
                    status.success(),
                    "starling up must exit 0 on SIGTERM, got {status}"
                );
            }
            Ok(Err(e)) => panic!("wait thread: {e}"),
            Err(_) => {
                // The blocking thread still owns the child: kill it by pid.
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("starling up did not exit within 30 s of SIGTERM");
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One plain HTTP/1.1 GET; the status code and body, or `None` if it could not connect.
fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((code, body.to_string()))
}

/// Waits until the gateway's `/readyz` says every service has an endpoint.
async fn wait_ready(base: &str) {
    let mut last = None;
    let ready = eventually(Duration::from_secs(30), || {
        let got = http_get(base, "/readyz");
        let ok = matches!(got, Some((200, _)));
        last = got;
        async move { ok }
    })
    .await;
    assert!(
        ready,
        "{base}/readyz never answered 200; last answer: {last:?}"
    );
}

/// Runs client_test.py with `args`; panics with its output unless it passes.
async fn run_client(python: &Path, stubs: &Path, args: &[&str]) {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(repo().join("tests/python/client_test.py"))
        .arg("--stubs")
        .arg(stubs)
        .args(args)
        .current_dir(repo())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH");
    let out = match run_bounded(cmd, SCRIPT_TIMEOUT).await {
        Ok(out) => out,
        Err(e) => panic!("python client {args:?}: {e}"),
    };
    println!("{}", show(&out));
    assert!(
        out.status.success(),
        "python client {args:?} failed:\n{}",
        show(&out)
    );
}

#[tokio::test]
async fn generated_python_client_works_through_the_gateway_and_directly() {
    let Some(python) = require_grpc_tools() else {
        return;
    };
    let stubs = tempfile::tempdir().expect("temp dir");
    generate_stubs(&python, stubs.path());
    let _serial = serial().await;

    let up = Up::start().await;
    let gateway_grpc = up.banner("gateway-grpc", "ADDR");
    let gateway_http = up.banner("gateway", "http://ADDR");
    assert!(
        gateway_http.starts_with("http://"),
        "the gateway line names an http:// URL: {gateway_http}"
    );
    let (tweet, follower, timeline) = (
        up.banner("tweet", "ADDR"),
        up.banner("follower", "ADDR"),
        up.banner("timeline", "ADDR"),
    );
    wait_ready(&gateway_http).await;

    run_client(&python, stubs.path(), &["--gateway", &gateway_grpc]).await;
    run_client(
        &python,
        stubs.path(),
        &[
            "--tweet",
            &tweet,
            "--follower",
            &follower,
            "--timeline",
            &timeline,
        ],
    )
    .await;

    up.stop().await;
}
