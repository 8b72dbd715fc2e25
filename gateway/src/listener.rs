//! The HTTP port's connections: how many, for how long, and how much each may ask for.
//!
//! `axum::serve` accepts every connection and keeps it as long as the client likes, so an
//! anonymous client could hold the port with idle sockets, with a header line every few
//! seconds, or with a body that never ends. This accept loop (hyper-util's `auto` server,
//! HTTP/1.1 and HTTP/2 with prior knowledge) bounds each of those:
//!
//! * **connections**: at most [`Limits::max_connections`] at once (further clients wait in
//!   the kernel's backlog until one closes) and [`Limits::max_connections_per_client`] per
//!   client address (more are closed at once, so one address cannot take them all);
//! * **headers**: a request's header must arrive within [`Limits::header_read_timeout`] of
//!   the moment the connection is ready for it (its opening, or the end of the previous
//!   response: hyper's own timer, so an idle HTTP/1.1 keep-alive connection closes then),
//!   and may be at most 64 KiB;
//! * **idle**: a connection with no request in flight and none started for
//!   [`Limits::idle_timeout`] is shut down gracefully, whatever bytes it exchanges (HTTP/2
//!   pings, a preface sent a byte at a time); one with requests in flight whose answers
//!   have not moved a byte for as long is stalled (a client that stopped reading) and shut
//!   down alike; a connection still open [`CLOSE_GRACE`] after its shutdown began is
//!   dropped. An open event stream writes a keep-alive comment every 15 s, so it is
//!   neither;
//! * **bodies**: a request body must be complete within [`Limits::body_timeout`] of the
//!   request's start, or reading it fails with [`BodyTimedOut`] (the API answers 408);
//! * **HTTP/2**: at most [`Limits::max_concurrent_streams`] streams per connection and
//!   hyper's defences against reset floods.
//!
//! On stop the listener closes, every connection is asked to finish gracefully (in-flight
//! requests complete, idle ones close), and [`serve`] returns when all have.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// What one HTTP port allows (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    /// 10,000 connections, 256 per client address, headers in 10 s, idle 60 s, bodies in
    /// 30 s, 100 HTTP/2 streams per connection.
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_client: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_concurrent_streams: 100,
        }
    }
}

/// Largest request header block (HTTP/1.1 read buffer, HTTP/2 header list).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long a connection asked to shut down gracefully may take to finish its answers
/// before it is dropped: a client that never reads them cannot hold it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` turns true, then waits for the connections to
/// finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Clients::default();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: not fatal, but do not spin on it.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(client) = clients.admit(peer.ip(), limits.max_connections_per_client) else {
            metrics::counter!("starling_gateway_connections_refused_total", "reason" => "per_client")
                .increment(1);
            tracing::debug!(%peer, "too many connections from this address; closed");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let activity = Activity::new();
        let app = PerConnection {
            app: app.clone(),
            peer,
            body_timeout: limits.body_timeout,
            activity: activity.clone(),
        };
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            connection(builder, tcp, app, activity, limits.idle_timeout, stop).await;
            drop(client);
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: holding them all means all ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

/// The router as one connection's service: the peer's address for `ConnectInfo`, the body
/// deadline on every request, and the connection's count of requests in flight (a request
/// is in flight until its answer has been sent or dropped).
#[derive(Clone)]
struct PerConnection {
    app: Router,
    peer: SocketAddr,
    body_timeout: Duration,
    activity: Activity,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for PerConnection {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let mut req = req.map(|body| Body::new(DeadlineBody::new(body, self.body_timeout)));
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let in_flight = self.activity.request_started();
        // A router is always ready, and cloning one is cheap (an `Arc`).
        let answer = tower::Service::call(&mut self.app.clone(), req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|body| {
                Body::new(InFlightBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct InFlightBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Drives one connection to its end: shut down gracefully when idle or stalled for too
/// long or when the gateway stops, and dropped if that takes longer than [`CLOSE_GRACE`].
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    tcp: TcpStream,
    service: PerConnection,
    activity: Activity,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let io = Tracked {
        inner: tcp,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let give_up = async {
            match closing {
                Some(since) => tokio::time::sleep_until(since + CLOSE_GRACE).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = check.tick(), if closing.is_none() => {
                if let Some(reason) = activity.quiet(idle_timeout) {
                    metrics::counter!("starling_gateway_connections_closed_total", "reason" => reason)
                        .increment(1);
                    closing = Some(tokio::time::Instant::now());
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = stopped(&mut stop), if closing.is_none() => {
                closing = Some(tokio::time::Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            _ = give_up => {
                metrics::counter!("starling_gateway_connections_closed_total", "reason" => "forced")
                    .increment(1);
                tracing::debug!("an HTTP connection did not finish shutting down in time; dropped");
                return;
            }
        }
    }
}

/// Open connections per client address.
#[derive(Debug, Clone, Default)]
struct Clients(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One admitted connection; gives its place back when dropped.
struct ClientSlot {
    clients: Clients,
    ip: IpAddr,
}

impl Clients {
    fn admit(&self, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What the idle and stall checks of one connection look at: requests in flight, when
/// one last started or ended, and when the connection last wrote a byte.
#[derive(Debug, Clone)]
struct Activity(Arc<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    origin: tokio::time::Instant,
    in_flight: AtomicU64,
    last_request_ms: AtomicU64,
    last_write_ms: AtomicU64,
}

/// One request in flight (see [`PerConnection`]).
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &(self.0).0;
        state
            .last_request_ms
            .store(self.0.now_ms(), Ordering::Relaxed);
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Self(Arc::new(ActivityState {
            origin: tokio::time::Instant::now(),
            in_flight: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            last_write_ms: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn request_started(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        self.0
            .last_request_ms
            .store(self.now_ms(), Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn wrote(&self) {
        self.0.last_write_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(at.load(Ordering::Relaxed)))
    }

    /// Why the connection should close, if it should: `idle` (no request for `limit`) or
    /// `stalled` (requests in flight, but no byte written for `limit`).
    fn quiet(&self, limit: Duration) -> Option<&'static str> {
        let s = &self.0;
        let requests_quiet = self.since(&s.last_request_ms) >= limit;
        if s.in_flight.load(Ordering::Relaxed) == 0 {
            requests_quiet.then_some("idle")
        } else {
            (requests_quiet && self.since(&s.last_write_ms) >= limit).then_some("stalled")
        }
    }
}

/// A socket that records when it wrote.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error a request body fails with when it is not complete in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// A request body that must be complete by a deadline set when the request began: unlike
/// a per-read timeout, a client sending a byte now and then cannot stretch it.
struct DeadlineBody<B> {
    inner: B,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test(start_paused = true)]
    async fn quiet_means_no_request_for_a_while_or_a_stalled_answer() {
        let limit = Duration::from_secs(10);
        let step = |s| tokio::time::advance(Duration::from_secs(s));
        let a = Activity::new();
        assert_eq!(a.quiet(limit), None, "just opened");
        step(11).await;
        assert_eq!(
            a.quiet(limit),
            Some("idle"),
            "opened and never asked anything"
        );
        let request = a.request_started();
        assert_eq!(a.quiet(limit), None);
        step(11).await;
        assert_eq!(
            a.quiet(limit),
            Some("stalled"),
            "an answer that never moves"
        );
        a.wrote();
        assert_eq!(
            a.quiet(limit),
            None,
            "an answer that moves (an event stream)"
        );
        drop(request);
        step(6).await;
        assert_eq!(a.quiet(limit), None, "the answer ended 6 s ago");
        step(5).await;
        assert_eq!(a.quiet(limit), Some("idle"));
    }

    #[test]
    fn a_client_gets_only_its_share_of_connections() {
        let clients = Clients::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = clients.admit(a, 2).expect("first");
        let _second = clients.admit(a, 2).expect("second");
        assert!(
            clients.admit(a, 2).is_none(),
            "a third from the same address"
        );
        assert!(
            clients.admit(b, 2).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(
            clients.admit(a, 2).is_some(),
            "a closed connection gives its place back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_at_the_deadline() {
        // One byte a second, forever: each read is quick, the whole never completes.
        let trickle = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x"))),
                (),
            ))
        });
        let body = DeadlineBody::new(
            http_body_util::StreamBody::new(Box::pin(trickle)),
            Duration::from_secs(5),
        );
        let started = tokio::time::Instant::now();
        let err = body.collect().await.expect_err("the body never completes");
        assert!(err.downcast_ref::<BodyTimedOut>().is_some(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_prompt_body_is_untouched() {
        let body = DeadlineBody::new(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            Duration::from_secs(5),
        );
        let bytes = body.collect().await.expect("complete").to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }
}
