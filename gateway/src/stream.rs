//! Live timeline updates over server-sent events:
//! `GET /api/users/{user}/timeline/stream`.
//!
//! The services publish no per-user feed the gateway could subscribe to, and a home
//! timeline is assembled at read time (celebrity tweets are merged in then), so the one
//! faithful source of "what is new on this timeline" is the timeline service itself. Each
//! open stream therefore polls the user's home timeline every 500 ms and sends, oldest
//! first, each entry newer than the newest it has seen, starting from the newest entry when
//! the stream opened. Every event carries the tweet id as its SSE `id`, so a browser that
//! reconnects sends `Last-Event-ID` and resumes where it stopped instead of losing entries.
//!
//! Streams end when the client goes away (axum drops the stream) or when the gateway stops
//! (the shutdown signal), so a graceful stop is never held open by a browser tab.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::Stream;
use starling_runtime::ServiceContext;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::api::{home_timeline, user_path, TweetJson};
use crate::errors::ApiError;
use crate::AppState;

/// How often an open stream reads the timeline.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Entries read per timeline page while catching up.
const PAGE: u32 = 50;
/// Pages read per poll at most: a stream that fell further behind skips the excess rather
/// than hammering the timeline service.
const MAX_PAGES: usize = 4;
/// Live-timeline streams one gateway keeps open at once; more are refused with 503.
pub const MAX_STREAMS: usize = 2_048;

/// `GET /api/users/{user}/timeline/stream`.
pub async fn timeline_stream(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let user = user_path(user)?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "this gateway already serves {MAX_STREAMS} live timelines; try again later"
        ))
    })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let newest_seen = match resume {
        Some(id) => id,
        // Opening fails (with the service's error) rather than streaming from an unknown
        // starting point, which would replay the whole timeline.
        None => newest_id(&state.ctx, &user).await?,
    };
    tracing::debug!(%user, newest_seen, "timeline stream opened");
    let poller = Poller {
        ctx: state.ctx.clone(),
        user,
        newest_seen,
        pending: VecDeque::new(),
        interval: None,
        shutdown: state.shutdown.clone(),
        _permit: permit,
    };
    let sse = Sse::new(events(poller)).keep_alive(KeepAlive::default());
    // Tells reverse proxies (nginx) not to buffer the stream.
    Ok(([("x-accel-buffering", "no")], sse))
}

async fn newest_id(ctx: &ServiceContext, user: &str) -> Result<u64, ApiError> {
    let page = home_timeline(ctx, user, 1, String::new()).await?;
    Ok(page.tweets.iter().map(|t| t.id).max().unwrap_or(0))
}

struct Poller {
    ctx: ServiceContext,
    user: String,
    newest_seen: u64,
    pending: VecDeque<TweetJson>,
    interval: Option<tokio::time::Interval>,
    shutdown: watch::Receiver<bool>,
    /// Held for the stream's life (see [`MAX_STREAMS`]).
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Poller {
    /// Waits for the next tick and queues what is new; false when the stream must end.
    async fn poll(&mut self) -> bool {
        let interval = self.interval.get_or_insert_with(|| {
            let mut i = tokio::time::interval_at(
                tokio::time::Instant::now() + POLL_INTERVAL,
                POLL_INTERVAL,
            );
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        if *self.shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = interval.tick() => {}
            changed = self.shutdown.changed() => {
                if changed.is_err() || *self.shutdown.borrow() {
                    return false;
                }
            }
        }
        match self.fetch_new().await {
            Ok(mut fresh) => {
                if let Some(max) = fresh.iter().map(|t| t.id).max() {
                    self.newest_seen = max;
                }
                // Newest first from the service; the client prepends, so send oldest first.
                fresh.sort_by_key(|t| t.id);
                self.pending.extend(fresh.into_iter().map(TweetJson::from));
            }
            // A failed poll is retried on the next tick; the stream stays open.
            Err(e) => tracing::debug!(user = %self.user, error = %e, "timeline poll failed"),
        }
        true
    }

    async fn fetch_new(&self) -> Result<Vec<starling_proto::tweet::v1::Tweet>, ApiError> {
        let mut fresh = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let page = home_timeline(&self.ctx, &self.user, PAGE, token).await?;
            let reached_seen = page.tweets.iter().any(|t| t.id <= self.newest_seen);
            fresh.extend(page.tweets.into_iter().filter(|t| t.id > self.newest_seen));
            if reached_seen || page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(fresh)
    }
}

fn events(poller: Poller) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(poller, |mut p| async move {
        loop {
            if let Some(tweet) = p.pending.pop_front() {
                match serde_json::to_string(&tweet) {
                    Ok(data) => {
                        let event = Event::default().event("tweet").id(&tweet.id).data(data);
                        return Some((Ok(event), p));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode a tweet event");
                        continue;
                    }
                }
            }
            if !p.poll().await {
                return None;
            }
        }
    })
}
