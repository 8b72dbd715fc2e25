//! gRPC handlers of `starling.timeline.v1.TimelineService`.

use std::pin::Pin;

use futures::Stream;
use starling_proto::timeline::v1::timeline_service_server::TimelineService;
use starling_proto::timeline::v1::{
    GetHomeTimelineRequest, GetHomeTimelineResponse, WatchHomeTimelineRequest,
    WatchHomeTimelineResponse,
};
use starling_runtime::{check_user, page_size};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::read::HomeReader;
use crate::watch::Watchers;

/// Entries read per page when a live stream catches up.
const WATCH_PAGE: usize = 50;
/// Pages read per wake-up at most: a stream that fell further behind skips the excess.
const WATCH_PAGES: usize = 4;
/// How long a woken stream whose read failed waits before it reads again.
const WATCH_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct TimelineHandler {
    reader: HomeReader,
    watchers: Watchers,
}

impl TimelineHandler {
    pub fn new(reader: HomeReader, watchers: Watchers) -> Self {
        Self { reader, watchers }
    }
}

/// The generated trait's stream type (tonic's `BoxStream`).
type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchHomeTimelineResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TimelineService for TimelineHandler {
    async fn get_home_timeline(
        &self,
        req: Request<GetHomeTimelineRequest>,
    ) -> Result<Response<GetHomeTimelineResponse>, Status> {
        let req = req.into_inner();
        check_user("user", &req.user)?;
        let before = match req.page_token.as_str() {
            "" => None,
            t => Some(t.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!("page_token {t:?} is not one this service issued"))
            })?),
        };
        let size = page_size(req.page_size, 20, 100);
        let page = self.reader.page(&req.user, before, size).await?;
        Ok(Response::new(GetHomeTimelineResponse {
            tweets: page.tweets,
            next_page_token: page.next_before.map(|b| b.to_string()).unwrap_or_default(),
        }))
    }

    /// Registers the stream, reads where it starts, then reads again only when woken
    /// (see `watch.rs`), until the caller hangs up, its deadline passes or the instance
    /// stops.
    async fn watch_home_timeline(
        &self,
        req: Request<WatchHomeTimelineRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        // The runtime's deadline layer put the caller's grpc-timeout in scope.
        let deadline = starling_discovery::current_deadline();
        let req = req.into_inner();
        check_user("user", &req.user)?;
        let user = req.user;
        let mut watch = self.watchers.watch(&user);
        let mut seen = req.after_id;
        if seen == 0 {
            let page = self.reader.page(&user, None, 1).await?;
            seen = page.tweets.iter().map(|t| t.id).max().unwrap_or(0);
            self.watchers.set_following(&user, page.following);
        }
        // Anything newer than `seen` from here on is sent; the first round reads at once,
        // in case entries arrived between the caller's last look and the registration.
        watch.changes.mark_changed();
        let (tx, rx) = mpsc::channel(4);
        // Where the stream starts, so a caller whose stream breaks resumes from here.
        tx.try_send(Ok(WatchHomeTimelineResponse {
            tweets: Vec::new(),
            position: seen,
        }))
        .map_err(|_| Status::internal("cannot open the stream"))?;
        let reader = self.reader.clone();
        let watchers = self.watchers.clone();
        tokio::spawn(async move {
            let until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(until);
            let mut retry_at: Option<tokio::time::Instant> = None;
            loop {
                let retry = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = &mut until => break,
                    _ = watch.stop.wait_for(|s| *s) => break,
                    changed = watch.changes.changed() => if changed.is_err() { break },
                    _ = retry => {}
                }
                watch.changes.borrow_and_update();
                retry_at = None;
                match reader
                    .newer_than(&user, seen, WATCH_PAGE, WATCH_PAGES)
                    .await
                {
                    Ok((mut fresh, following)) => {
                        watchers.set_following(&user, following);
                        if fresh.is_empty() {
                            continue;
                        }
                        fresh.sort_by_key(|t| t.id);
                        seen = fresh.last().map_or(seen, |t| t.id);
                        let message = WatchHomeTimelineResponse {
                            tweets: fresh,
                            position: seen,
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    Err(status) => {
                        // The change is still unread: read again shortly.
                        tracing::debug!(%user, error = %status.message(), "live timeline read failed");
                        retry_at = Some(tokio::time::Instant::now() + WATCH_RETRY);
                    }
                }
            }
            tracing::debug!(%user, "live timeline stream ended");
        });
        let stream: WatchStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        Ok(Response::new(stream))
    }
}
