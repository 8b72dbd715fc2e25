//! Live timeline updates over server-sent events:
//! `GET /api/users/{user}/timeline/stream`.
//!
//! Each stream is one `TimelineService/WatchHomeTimeline` call through the mesh (the
//! timeline service pushes what the fan-out adds; nothing polls), sent on as SSE events,
//! oldest first, each with the tweet id as its SSE `id`: a browser that reconnects sends
//! `Last-Event-ID` and resumes where it stopped. When the call breaks (a timeline instance
//! stopped or died), the gateway watches again from the last position the service
//! reported, so the browser's stream stays open and loses nothing.
//!
//! A stream holds resources as long as it is open, so it is the signed-in user's own
//! timeline only, and bounded: per user, per client address and per gateway. It is opened
//! with a bearer token in the `Authorization` header or, since `EventSource` cannot set
//! headers, with a stream ticket in the `ticket` query parameter (`POST /api/stream-ticket`:
//! 60 s, good for nothing else, so a URL that ends up in a log is worth little). An open
//! stream checks every minute that its user has not signed out since, and ends when they
//! have (or when its bearer token expires).
//!
//! The per-address caps count the TCP peer: behind a reverse proxy every client is the
//! proxy, so run the gateway facing its clients (or raise the caps).
//!
//! Streams end when the client goes away (axum drops the stream) or when the gateway stops
//! (the shutdown signal), so a graceful stop is never held open by a browser tab.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::Stream;
use serde::Deserialize;
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::{WatchHomeTimelineRequest, WatchHomeTimelineResponse};
use starling_runtime::ServiceContext;
use tokio::sync::watch;
use tonic::codec::Streaming;

use crate::api::{user_path, TweetJson, USER_HEADER};
use crate::auth::{bearer, still_signed_in, Claims, Kind};
use crate::errors::ApiError;
use crate::AppState;

/// Live-timeline streams one gateway keeps open at once; more are refused with 503.
pub const MAX_STREAMS: usize = 2_048;
/// Streams one user may have open (a few tabs and devices); more get 429.
pub const MAX_STREAMS_PER_USER: usize = 8;
/// Streams one client address may have open; more get 429.
pub const MAX_STREAMS_PER_CLIENT: usize = 16;
/// Each watch call's deadline; the gateway watches again when it passes, so no call (and
/// no timeline instance's resources) is held for ever by one browser tab.
pub(crate) const WATCH_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Waits between attempts to watch again after a broken call: from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often an open stream checks that its user has not signed out.
const RECHECK: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    ticket: Option<String>,
}

/// Open streams per user and per client address (see the module docs).
#[derive(Debug, Default)]
pub struct StreamSlots(Mutex<HashMap<String, usize>>);

/// One open stream's places; given back when the stream ends.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    keys: [String; 2],
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl StreamSlots {
    fn take(
        self: &Arc<Self>,
        user: &str,
        client: std::net::IpAddr,
        global: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<StreamSlot, ApiError> {
        let keys = [format!("user:{user}"), format!("ip:{client}")];
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = |k: &str| open.get(k).copied().unwrap_or(0);
        if count(&keys[0]) >= MAX_STREAMS_PER_USER {
            return Err(ApiError::too_many_requests(format!(
                "{user} already has {MAX_STREAMS_PER_USER} live timelines open; close one first"
            )));
        }
        if count(&keys[1]) >= MAX_STREAMS_PER_CLIENT {
            return Err(ApiError::too_many_requests(format!(
                "this address already has {MAX_STREAMS_PER_CLIENT} live timelines open; close one first"
            )));
        }
        for k in &keys {
            *open.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(StreamSlot {
            slots: self.clone(),
            keys,
            _global: global,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = open.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    open.remove(k);
                }
            }
        }
    }
}

/// A place for one more live timeline of `user` from `client` (JSON or gRPC), or why not.
pub(crate) fn take_slot(
    state: &AppState,
    user: &str,
    client: std::net::IpAddr,
) -> Result<StreamSlot, ApiError> {
    let global = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "this gateway already serves {MAX_STREAMS} live timelines; try again later"
        ))
    })?;
    state.stream_slots.take(user, client, global)
}

/// The credential of a stream request: the bearer token of the header, else the ticket.
fn credential<'a>(
    headers: &'a HeaderMap,
    query: &'a StreamQuery,
) -> Result<(Kind, &'a str), ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return bearer(headers).map(|t| (Kind::Token, t));
    }
    query
        .ticket
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| (Kind::Ticket, t))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "sign in first: a live timeline needs Authorization: Bearer <token>, or ?ticket= from POST /api/stream-ticket",
            )
        })
}

/// `GET /api/users/{user}/timeline/stream`.
#[utoipa::path(get, path = "/api/users/{user}/timeline/stream", tag = "timelines",
    params(
        ("user" = String, Path, description = "the signed-in user"),
        ("ticket" = Option<String>, Query, description = "a stream ticket, when no Authorization header can be sent"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this tweet id"),
    ),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "server-sent events: `tweet` events whose data is a tweet", content_type = "text/event-stream", body = String),
        (status = 401, description = "no valid token or ticket", body = crate::api::ErrorBody),
        (status = 403, description = "another user's timeline", body = crate::api::ErrorBody),
        (status = 429, description = "too many open streams for this user or address", body = crate::api::ErrorBody),
        (status = 503, description = "too many open streams on this gateway", body = crate::api::ErrorBody),
    ))]
pub async fn timeline_stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let user = user_path(user)?;
    let Query(query) = query?;
    let (kind, credential) = credential(&headers, &query)?;
    let claims = state
        .auth
        .authenticate(state.ctx.store.as_ref(), kind, credential)
        .await?;
    let me = &claims.user;
    if *me != user {
        return Err(ApiError::forbidden(format!(
            "signed in as {me:?}: a live timeline is only for your own (watch /api/users/{me}/timeline/stream)"
        )));
    }
    let slot = take_slot(&state, &user, peer.ip())?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Opening fails (with the service's error) rather than answering a stream that
    // cannot say where it starts.
    let upstream = watch_call(&state.ctx, &user, resume).await?;
    tracing::debug!(%user, ?resume, "timeline stream opened");
    // A bearer token's stream ends with the token; a ticket only had to be valid to open.
    let ends_at = (kind == Kind::Token).then_some(claims.expires);
    let live = Live {
        ctx: state.ctx.clone(),
        claims,
        ends_at,
        position: resume,
        upstream: Some(upstream),
        pending: VecDeque::new(),
        retry: RETRY_FIRST,
        recheck: tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK),
        shutdown: state.shutdown.clone(),
        _slot: slot,
    };
    let sse = Sse::new(events(live)).keep_alive(KeepAlive::default());
    // Tells reverse proxies (nginx) not to buffer the stream.
    Ok(([("x-accel-buffering", "no")], sse))
}

async fn watch_call(
    ctx: &ServiceContext,
    user: &str,
    after_id: Option<u64>,
) -> Result<Streaming<WatchHomeTimelineResponse>, ApiError> {
    let mut req = tonic::Request::new(WatchHomeTimelineRequest {
        user: user.to_string(),
        after_id,
    });
    req.set_timeout(WATCH_LIFETIME);
    let value = user
        .parse()
        .map_err(|_| ApiError::bad_request(format!("user {user:?} is not a valid header value")))?;
    // The same instance as the user's other calls (consistent hashing): one watch entry
    // there serves all of the user's streams.
    req.metadata_mut().insert(USER_HEADER, value);
    Ok(TimelineServiceClient::new(ctx.mesh.channel("timeline"))
        .watch_home_timeline(req)
        .await?
        .into_inner())
}

struct Live {
    ctx: ServiceContext,
    claims: Claims,
    /// When the stream must end (its bearer token's expiry, unix seconds).
    ends_at: Option<u64>,
    /// The newest entry accounted for: where a new watch call resumes (`None`: the stream
    /// has not heard from the service yet, so it starts from now).
    position: Option<u64>,
    upstream: Option<Streaming<WatchHomeTimelineResponse>>,
    pending: VecDeque<TweetJson>,
    retry: Duration,
    recheck: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
    /// Held for the stream's life.
    _slot: StreamSlot,
}

impl Live {
    fn user(&self) -> &str {
        &self.claims.user
    }

    /// Whether the stream may go on: its user has not signed out, its token not expired.
    async fn still_allowed(&self) -> bool {
        if self.ends_at.is_some_and(|t| t <= crate::auth::unix_now()) {
            return false;
        }
        match still_signed_in(self.ctx.store.as_ref(), &self.claims).await {
            Ok(()) => true,
            Err(e) if e.status == axum::http::StatusCode::UNAUTHORIZED => false,
            // The store cannot say now: keep the stream, ask again next time.
            Err(_) => true,
        }
    }

    /// Waits for the next message of the watch call, watching again when it broke;
    /// false when the stream must end.
    async fn next_batch(&mut self) -> bool {
        loop {
            if *self.shutdown.borrow() {
                return false;
            }
            let Some(upstream) = self.upstream.as_mut() else {
                let pause = self.retry;
                self.retry = (self.retry * 2).min(RETRY_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.shutdown.wait_for(|s| *s) => return false,
                }
                if !self.still_allowed().await {
                    return false;
                }
                match watch_call(&self.ctx, &self.claims.user, self.position).await {
                    Ok(s) => self.upstream = Some(s),
                    Err(e) => {
                        tracing::debug!(user = %self.user(), error = %e, "cannot watch the timeline again yet")
                    }
                }
                continue;
            };
            let message = tokio::select! {
                m = upstream.message() => Some(m),
                _ = self.recheck.tick() => None,
                _ = self.shutdown.wait_for(|s| *s) => return false,
            };
            let Some(message) = message else {
                if !self.still_allowed().await {
                    tracing::debug!(user = %self.claims.user, "signed out or expired: live timeline ended");
                    return false;
                }
                continue;
            };
            match message {
                Ok(Some(m)) => {
                    self.retry = RETRY_FIRST;
                    self.position = Some(self.position.unwrap_or(0).max(m.position));
                    self.pending
                        .extend(m.tweets.into_iter().map(TweetJson::from));
                    if !self.pending.is_empty() {
                        return true;
                    }
                }
                // The call's deadline passed, or the instance stopped or died: watch
                // again from where this one was.
                Ok(None) => self.upstream = None,
                Err(status) => {
                    tracing::debug!(user = %self.user(), error = %status.message(), "the timeline watch broke");
                    self.upstream = None;
                }
            }
        }
    }
}

fn events(live: Live) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(live, |mut live| async move {
        loop {
            if let Some(tweet) = live.pending.pop_front() {
                match serde_json::to_string(&tweet) {
                    Ok(data) => {
                        let event = Event::default().event("tweet").id(&tweet.id).data(data);
                        return Some((Ok(event), live));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode a tweet event");
                        continue;
                    }
                }
            }
            if !live.next_batch().await {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_limited_per_user_and_per_client() {
        let slots = Arc::new(StreamSlots::default());
        let global = Arc::new(tokio::sync::Semaphore::new(1_000));
        let permit = || global.clone().try_acquire_owned().unwrap();
        let a: std::net::IpAddr = [127, 0, 0, 1].into();
        let mut held = Vec::new();
        for i in 0..MAX_STREAMS_PER_USER {
            held.push(
                slots
                    .take("alice", a, permit())
                    .unwrap_or_else(|e| panic!("{i}: {e}")),
            );
        }
        let e = slots
            .take("alice", [127, 0, 0, 2].into(), permit())
            .err()
            .unwrap();
        assert_eq!(e.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        for i in MAX_STREAMS_PER_USER..MAX_STREAMS_PER_CLIENT {
            held.push(slots.take(&format!("u{i}"), a, permit()).unwrap());
        }
        assert!(
            slots.take("bob", a, permit()).is_err(),
            "the address is full"
        );
        assert!(slots.take("bob", [127, 0, 0, 2].into(), permit()).is_ok());
        held.pop();
        assert!(
            slots.take("bob", a, permit()).is_ok(),
            "a closed stream gives its place back"
        );
    }
}
