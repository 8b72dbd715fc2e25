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
//! timeline only (a bearer token, in the `Authorization` header or, since `EventSource`
//! cannot set headers, in the `access_token` query parameter), and bounded: per user, per
//! client address and per gateway.
//!
//! Streams end when the client goes away (axum drops the stream) or when the gateway stops
//! (the shutdown signal), so a graceful stop is never held open by a browser tab.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
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
const WATCH_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Waits between attempts to watch again after a broken call: from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    access_token: Option<String>,
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

/// The bearer token of a stream request: the header, else `access_token`.
fn stream_token<'a>(headers: &'a HeaderMap, query: &'a StreamQuery) -> Result<&'a str, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("invalid Authorization header"))?;
        return value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <token>\""));
    }
    query
        .access_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "sign in first: a live timeline needs Authorization: Bearer <token> or ?access_token=<token>",
            )
        })
}

/// `GET /api/users/{user}/timeline/stream`.
pub async fn timeline_stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: Result<Path<String>, PathRejection>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let user = user_path(user)?;
    let token = stream_token(&headers, &query)?;
    let me = state
        .auth
        .authenticate(state.ctx.store.as_ref(), token)
        .await?;
    if me != user {
        return Err(ApiError::forbidden(format!(
            "signed in as {me:?}: a live timeline is only for your own (watch /api/users/{me}/timeline/stream)"
        )));
    }
    let global = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "this gateway already serves {MAX_STREAMS} live timelines; try again later"
        ))
    })?;
    let slot = state.stream_slots.take(&user, peer.ip(), global)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // Opening fails (with the service's error) rather than answering a stream that
    // cannot say where it starts.
    let upstream = watch_call(&state.ctx, &user, resume).await?;
    tracing::debug!(%user, resume, "timeline stream opened");
    let live = Live {
        ctx: state.ctx.clone(),
        user,
        position: resume,
        upstream: Some(upstream),
        pending: VecDeque::new(),
        retry: RETRY_FIRST,
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
    after_id: u64,
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
    user: String,
    /// The newest entry accounted for: where a new watch call resumes.
    position: u64,
    upstream: Option<Streaming<WatchHomeTimelineResponse>>,
    pending: VecDeque<TweetJson>,
    retry: Duration,
    shutdown: watch::Receiver<bool>,
    /// Held for the stream's life.
    _slot: StreamSlot,
}

impl Live {
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
                    _ = self.shutdown.changed() => continue,
                }
                match watch_call(&self.ctx, &self.user, self.position).await {
                    Ok(s) => self.upstream = Some(s),
                    Err(e) => {
                        tracing::debug!(user = %self.user, error = %e, "cannot watch the timeline again yet")
                    }
                }
                continue;
            };
            let message = tokio::select! {
                m = upstream.message() => m,
                _ = self.shutdown.changed() => continue,
            };
            match message {
                Ok(Some(m)) => {
                    self.retry = RETRY_FIRST;
                    self.position = self.position.max(m.position);
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
                    tracing::debug!(user = %self.user, error = %status.message(), "the timeline watch broke");
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
