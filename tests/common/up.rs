//! `starling up` as a child process (embedded backends, gateway on free ports), with its
//! banner parsed, and small helpers to run tools within a time bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

/// Runs `cmd` to completion within `timeout` (killed past it); its status and output.
pub async fn run_bounded(
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

pub fn show(out: &std::process::Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `starling up` child, killed if the test ends before `stop`.
pub struct Up {
    child: Option<Child>,
    /// What `starling up` printed, up to its "instances up" line.
    pub lines: Vec<String>,
}

impl Up {
    /// Starts `starling up` on the embedded backends with the gateway on free ports, and
    /// reads its banner up to the "instances up" line.
    pub async fn start() -> Up {
        Self::start_with(&[]).await
    }

    /// [`Up::start`] with extra arguments for `starling up`.
    pub async fn start_with(args: &[&str]) -> Up {
        Self::start_with_env(args, &[]).await
    }

    /// [`Up::start_with`], with `env` set for the child only.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["up", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
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

    /// The process id of the running `starling up`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The second word of the banner line "starling: <name> <value> ...".
    pub fn banner(&self, name: &str, what: &str) -> String {
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
    pub async fn stop(mut self) {
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

impl Up {
    /// The gateway's HTTP base URL ("starling: gateway http://ADDR").
    pub fn gateway_http(&self) -> String {
        self.banner("gateway", "http://ADDR")
            .trim_end_matches('/')
            .to_string()
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
pub fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
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
pub async fn wait_ready(base: &str) {
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
