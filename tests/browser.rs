//! The web UI in a real browser: `starling up` serves it, and `tests/browser/ui.test.mjs`
//! drives Debian's Chromium through npm `playwright-core` (never a downloaded browser):
//! two users sign up, one follows the other, the followee posts, and the post appears in
//! the follower's timeline without a reload.
//!
//! Needs `chromium` and `node` (scripts/install-deps.sh installs them) and
//! `tests/browser/node_modules` (`npm ci` there; this test runs it when it is missing).
//! Off CI a missing piece skips the test loudly; under `CI=true` it fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The whole browser scenario (each of its steps is bounded by 30 s in the script).
const NODE_TIMEOUT: Duration = Duration::from_secs(240);
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
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

/// `npm ci` in tests/browser when its node_modules is missing. `false`: skip (off CI).
async fn ensure_node_modules() -> bool {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return true;
    }
    let Some(npm) = require_binary("npm") else {
        return false;
    };
    eprintln!("browser: running `npm ci` in {}", dir.display());
    let mut cmd = tokio::process::Command::new(npm);
    cmd.arg("ci")
        .args(["--no-audit", "--no-fund"])
        .current_dir(&dir);
    let failure = match run_bounded(cmd, NPM_CI_TIMEOUT).await {
        Ok(out) if out.status.success() => return true,
        Ok(out) => show(&out),
        Err(e) => e,
    };
    if ci() {
        panic!(
            "`npm ci` in {} failed, and CI=true forbids skipping:\n{failure}",
            dir.display()
        );
    }
    eprintln!("SKIPPED: `npm ci` in {} failed:\n{failure}", dir.display());
    false
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

    /// The gateway's HTTP base URL ("starling: gateway http://ADDR").
    fn gateway_http(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| {
                w.len() == 3
                    && w[0] == "starling:"
                    && w[1] == "gateway"
                    && w[2].starts_with("http://")
            })
            .map(|w| w[2].trim_end_matches('/').to_string())
            .unwrap_or_else(|| {
                panic!(
                    "starling up printed no `starling: gateway http://ADDR` line; it printed:\n{}",
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
    let addr = base.trim_start_matches("http://");
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

/// Waits until `/readyz` says every service has an endpoint.
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

#[tokio::test]
async fn web_ui_shows_a_followed_users_post_live() {
    let Some(chromium) = require_binary("chromium") else {
        return;
    };
    let Some(node) = require_binary("node") else {
        return;
    };
    if !ensure_node_modules().await {
        return;
    }
    // A browser and the whole app on 2 cores: keep other timing-sensitive tests out.
    let _serial = serial().await;

    let up = Up::start().await;
    let base = up.gateway_http();
    wait_ready(&base).await;

    let screenshot = std::env::var_os("STARLING_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-timeline.png"));
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(browser_dir().join("ui.test.mjs"))
        .arg(&base)
        .current_dir(browser_dir())
        .env("CHROMIUM", &chromium)
        .env("STARLING_SCREENSHOT", &screenshot);
    let out = match run_bounded(cmd, NODE_TIMEOUT).await {
        Ok(out) => out,
        Err(e) => panic!("browser test: {e}"),
    };
    println!("{}", show(&out));
    assert!(
        out.status.success(),
        "the browser scenario failed against {base} (screenshot: {}):\n{}",
        screenshot.display(),
        show(&out)
    );
    println!(
        "browser: screenshot of the follower's page: {}",
        screenshot.display()
    );

    up.stop().await;
}
