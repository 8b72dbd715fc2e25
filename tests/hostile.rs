//! Hostile traffic against the real binary (`starling up`, anonymous and careless clients
//! on loopback only): each check reproduces one way the system was pushed off course and
//! asserts the bound that holds now. The figures are printed (`--nocapture`) for the
//! record: RSS, `/metrics` size, connection lifetimes, internal calls per idle stream.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The limits `starling up` runs with here: short, so a test sees them act.
const IDLE_SECS: u64 = 2;
const HEADER_SECS: u64 = 2;
const BODY_SECS: u64 = 2;
const PER_CLIENT: usize = 24;

async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind a loopback source address");
    socket.connect(to).await.expect("connect")
}

/// One HTTP/1.1 request on a fresh connection from `source`; the status and body.
async fn request(
    to: SocketAddr,
    source: [u8; 4],
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut tcp = connect_from(source, to).await;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: starling\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within 20 s")
        .ok();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn json_call(
    to: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let (status, text) = request(
        to,
        [127, 0, 0, 1],
        method,
        path,
        &headers,
        body.to_string().as_bytes(),
    )
    .await;
    // Chunked answers: the JSON is the line that parses.
    let value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (status, value)
}

async fn sign_up(to: SocketAddr, user: &str) -> String {
    let (status, body) = json_call(
        to,
        "POST",
        "/api/signup",
        None,
        json!({"user": user, "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, 201, "sign up {user}: {body}");
    body["token"].as_str().expect("token").to_string()
}

/// Sum of `starling_server_requests_total` over every service and method.
async fn internal_calls(metrics: SocketAddr) -> f64 {
    let (status, text) = request(metrics, [127, 0, 0, 1], "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with("starling_server_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_size(metrics: SocketAddr) -> usize {
    request(metrics, [127, 0, 0, 1], "GET", "/metrics", &[], b"")
        .await
        .1
        .len()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// An open live timeline: the connection, past the response header.
struct LiveStream {
    tcp: TcpStream,
    buf: String,
}

impl LiveStream {
    async fn open(to: SocketAddr, source: [u8; 4], user: &str, token: &str) -> Result<Self, u16> {
        let mut tcp = connect_from(source, to).await;
        let head = format!(
            "GET /api/users/{user}/timeline/stream HTTP/1.1\r\nhost: starling\r\naccept: text/event-stream\r\nauthorization: Bearer {token}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
                .await
                .expect("the stream answers")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 200 {
            return Err(status);
        }
        let rest = text.split_once("\r\n\r\n").map(|(_, r)| r.to_string());
        Ok(LiveStream {
            tcp,
            buf: rest.unwrap_or_default(),
        })
    }

    /// Waits until the stream has sent an event naming tweet `id`.
    async fn until_tweet(&mut self, id: &str) {
        let needle = format!("id: {id}");
        let mut chunk = [0u8; 4096];
        let wait = async {
            while !self.buf.contains(&needle) {
                let n = self.tcp.read(&mut chunk).await.unwrap_or(0);
                assert!(n > 0, "the stream closed before tweet {id} arrived");
                self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .unwrap_or_else(|_| panic!("tweet {id} reached the live timeline"));
    }
}

/// Reads until the server closes; how long that took.
async fn lifetime(tcp: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, closed)
        .await
        .ok()
        .map(|()| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_stay_bounded() {
    let _serial = common::serial().await;
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let up = common::up::Up::start_with(&[
        "--metrics",
        &metrics_addr,
        "--http-idle-timeout-secs",
        &IDLE_SECS.to_string(),
        "--http-header-timeout-secs",
        &HEADER_SECS.to_string(),
        "--http-body-timeout-secs",
        &BODY_SECS.to_string(),
        "--http-max-connections-per-client",
        &PER_CLIENT.to_string(),
    ])
    .await;
    let http: SocketAddr = up
        .banner("gateway", "http://ADDR")
        .trim_start_matches("http://")
        .parse()
        .expect("gateway address");
    let metrics: SocketAddr = metrics_addr.parse().unwrap();
    let pid = up.pid();

    // --- Live timelines: idle streams cost no internal call; new posts are pushed. ---
    let author = sign_up(http, "author").await;
    let mut watchers = Vec::new();
    for i in 0..4 {
        let user = format!("reader{i}");
        let token = sign_up(http, &user).await;
        let (status, body) = json_call(
            http,
            "POST",
            "/api/follows",
            Some(&token),
            json!({"followee": "author"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        watchers.push((user, token));
    }
    let mut streams = Vec::new();
    for (user, token) in &watchers {
        for _ in 0..4 {
            streams.push(
                LiveStream::open(http, [127, 0, 0, 1], user, token)
                    .await
                    .expect("a live timeline opens"),
            );
        }
    }
    // Each stream reads its timeline once when it opens (in the background, after its
    // answer began): wait until those reads are over, then a window with the streams
    // open and nothing happening.
    let settled = common::eventually(Duration::from_secs(15), || async {
        let a = internal_calls(metrics).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        internal_calls(metrics).await == a
    })
    .await;
    assert!(settled, "the streams' opening reads end");
    let window = Duration::from_secs(3);
    let before = internal_calls(metrics).await;
    tokio::time::sleep(window).await;
    let idle_calls = internal_calls(metrics).await - before;
    eprintln!(
        "idle live timelines: {} streams, {idle_calls} internal calls in {window:?} \
         (the polling design made 3 calls per stream every 500 ms: {})",
        streams.len(),
        streams.len() as f64 * 6.0 * window.as_secs_f64()
    );
    assert_eq!(idle_calls, 0.0, "idle streams make no internal calls");
    let (status, posted) = json_call(
        http,
        "POST",
        "/api/tweets",
        Some(&author),
        json!({"text": "pushed to every open stream"}),
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    let id = posted["id"].as_str().expect("tweet id").to_string();
    for s in &mut streams {
        s.until_tweet(&id).await;
    }

    // --- Live timeline caps: per user, per client, and only one's own. ---
    let (first_user, first_token) = &watchers[0];
    let mut extra = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        match LiveStream::open(http, [127, 0, 0, 2], first_user, first_token).await {
            Ok(s) => extra.push(s),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    assert_eq!(refused, Some(429), "a user's streams are capped");
    assert_eq!(extra.len(), 4, "8 per user: 4 were open already");
    assert_eq!(
        LiveStream::open(http, [127, 0, 0, 3], "reader1", first_token)
            .await
            .err(),
        Some(403),
        "another user's live timeline"
    );
    assert_eq!(
        LiveStream::open(http, [127, 0, 0, 3], "reader1", "forged")
            .await
            .err(),
        Some(401)
    );
    drop(extra);
    drop(streams);

    // --- Slow and idle connections are closed; others are served meanwhile. ---
    let bound = Duration::from_secs(IDLE_SECS.max(HEADER_SECS).max(BODY_SECS) * 3);
    let mut idle = connect_from([127, 0, 0, 4], http).await;
    let mut slow_header = connect_from([127, 0, 0, 5], http).await;
    slow_header
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // One header line a second, as the probe did every 5 s.
        for i in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if slow_header
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return Some(i);
            }
        }
        None
    });
    let normal_started = Instant::now();
    let (status, _) = request(http, [127, 0, 0, 6], "GET", "/api/users/author", &[], b"").await;
    let normal = normal_started.elapsed();
    assert_eq!(status, 200);
    let idle_life = lifetime(&mut idle, bound)
        .await
        .expect("an idle connection is closed");
    let header_lines = tokio::time::timeout(bound, trickle)
        .await
        .expect("a trickling header is cut off")
        .unwrap()
        .expect("the server stopped reading it");
    let mut slow_body = connect_from([127, 0, 0, 7], http).await;
    slow_body
        .write_all(b"POST /api/signup HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let body_started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(bound, slow_body.read_to_end(&mut answer)).await;
    let body_life = body_started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    eprintln!(
        "connection lifetimes: idle {idle_life:?} (limit {IDLE_SECS} s), trickling header cut \
         after {header_lines} lines (limit {HEADER_SECS} s), trickling body answered 408 after \
         {body_life:?} (limit {BODY_SECS} s); a normal request meanwhile took {normal:?}"
    );
    assert!(normal < Duration::from_secs(1), "{normal:?}");

    // --- Connections per client address. ---
    let mut crowd = Vec::new();
    for _ in 0..PER_CLIENT {
        crowd.push(connect_from([127, 0, 0, 8], http).await);
    }
    let mut over = connect_from([127, 0, 0, 8], http).await;
    let refused_after = lifetime(&mut over, Duration::from_secs(IDLE_SECS) / 2)
        .await
        .expect("a connection over the per-client cap is closed at once");
    let (status, _) = request(http, [127, 0, 0, 9], "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200, "another address is served");
    eprintln!("per-client cap {PER_CLIENT}: the next connection closed after {refused_after:?}");
    drop(crowd);

    // --- Made-up paths and methods do not grow /metrics. ---
    let size_before = metrics_size(metrics).await;
    for i in 0..300 {
        let path = format!("/starling.made{i}.v1.Nope/Method{i}");
        request(
            http,
            [127, 0, 0, 10],
            "POST",
            &path,
            &[("content-type", "application/grpc-web+proto")],
            b"\0\0\0\0\0",
        )
        .await;
        request(
            http,
            [127, 0, 0, 10],
            &format!("MADE{i}"),
            &format!("/x{i}"),
            &[],
            b"",
        )
        .await;
    }
    let size_after = metrics_size(metrics).await;
    eprintln!("/metrics: {size_before} bytes before 600 made-up requests, {size_after} after");
    assert!(
        size_after < size_before + 16 * 1024,
        "/metrics grew from {size_before} to {size_after} bytes"
    );

    // --- Oversized gRPC-Web bodies leave memory where it was. ---
    let rss_before = rss_kib(pid);
    let big = 64 * 1024 * 1024usize;
    for _ in 0..4 {
        let mut tcp = connect_from([127, 0, 0, 11], http).await;
        let head = format!(
            "POST /starling.tagger.v1.TaggerService/TagText HTTP/1.1\r\nhost: x\r\n\
             content-type: application/grpc-web+proto\r\ncontent-length: {}\r\n\r\n",
            big + 5
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(big as u32).to_be_bytes());
        tcp.write_all(&frame).await.unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            if tcp.write_all(&zeros).await.is_err() {
                break;
            }
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.contains("grpc-status: 8") || answer.contains("grpc-status:8"),
            "an oversized message is RESOURCE_EXHAUSTED: {answer}"
        );
    }
    let rss_after = rss_kib(pid);
    eprintln!(
        "RSS: {} MiB before four 64 MiB gRPC-Web bodies, {} MiB after",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    up.stop().await;
}
