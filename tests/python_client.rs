//! Starling from another language: a Python client generated from `proto/` with
//! grpcio-tools (`python3 -m grpc_tools.protoc`) runs `tests/python/client_test.py` against
//! `starling up`: through the gateway's gRPC port and through its HTTP port (signing up
//! with `AuthService` and sending the tokens; refused without one or as someone else), and
//! straight to the services: follow, post, the post in the follower's home timeline,
//! INVALID_ARGUMENT for an empty text.
//!
//! Needs `python3` with grpcio-tools (scripts/install-deps.sh installs it). Off CI a missing
//! piece skips the test loudly; under `CI=true` it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::up::*;
use common::*;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

    // Certificates of our own, so the test can call the services directly (as admin); the
    // gateway calls them over mutual TLS too.
    let pki = common::pki("starling");
    let pki_dir = pki
        .path()
        .to_str()
        .expect("a UTF-8 temporary path")
        .to_string();
    let up = Up::start_with(&["--tls-dir", &pki_dir]).await;
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
    // The HTTP port serves native gRPC too (one port for everything).
    let http_addr = gateway_http.trim_start_matches("http://").to_string();
    run_client(&python, stubs.path(), &["--gateway", &http_addr]).await;
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
            "--tls-dir",
            &pki_dir,
        ],
    )
    .await;

    up.stop().await;
}
