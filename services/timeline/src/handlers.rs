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

use std::collections::BTreeSet;

use crate::read::HomeReader;
use crate::watch::{Watch, Watchers};

/// Entries read per page when a live stream catches up.
const WATCH_PAGE: usize = 50;
/// Pages read per wake-up at most: a stream that fell further behind skips the excess
/// (the next page is read only while a whole page was new).
const WATCH_PAGES: usize = 4;
/// How long a woken stream whose read failed waits before it reads again.
const WATCH_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// A stream with nothing new for this long gets a message with no tweets, so that a quiet
/// stream is not taken for a dead one by the caller, a proxy, or the gateway's rule that
/// closes connections whose answers stop moving (60 s).
pub const WATCH_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(25);

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
        let floor = match req.after_id {
            Some(id) => id,
            None => {
                let page = self.reader.page(&user, None, 1).await?;
                self.watchers.set_following(&user, page.following);
                page.tweets.iter().map(|t| t.id).max().unwrap_or(0)
            }
        };
        // The first round reads at once, in case entries arrived between the caller's
        // last look and the registration.
        watch.changes.mark_changed();
        let (tx, rx) = mpsc::channel(4);
        // Where the stream starts, so a caller whose stream breaks resumes from here.
        tx.try_send(Ok(WatchHomeTimelineResponse {
            tweets: Vec::new(),
            position: floor,
        }))
        .map_err(|_| Status::internal("cannot open the stream"))?;
        let stream = LiveStream {
            reader: self.reader.clone(),
            watchers: self.watchers.clone(),
            user,
            sent: Sent::new(floor),
        };
        tokio::spawn(stream.run(watch, tx, deadline));
        let stream: WatchStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        Ok(Response::new(stream))
    }
}

/// What one stream has sent: every id above `floor` it sent, at most [`SENT_MEMORY`];
/// forgetting the oldest raises the floor, so nothing is ever sent twice.
struct Sent {
    floor: u64,
    ids: BTreeSet<u64>,
    newest: u64,
}

/// Ids a stream remembers having sent.
const SENT_MEMORY: usize = 1_000;

impl Sent {
    fn new(floor: u64) -> Self {
        Self {
            floor,
            ids: BTreeSet::new(),
            newest: floor,
        }
    }

    fn record(&mut self, id: u64) {
        self.ids.insert(id);
        self.newest = self.newest.max(id);
        while self.ids.len() > SENT_MEMORY {
            if let Some(oldest) = self.ids.pop_first() {
                self.floor = self.floor.max(oldest);
            }
        }
    }
}

struct LiveStream {
    reader: HomeReader,
    watchers: Watchers,
    user: String,
    sent: Sent,
}

impl LiveStream {
    async fn run(
        mut self,
        mut watch: Watch,
        tx: mpsc::Sender<Result<WatchHomeTimelineResponse, Status>>,
        deadline: Option<tokio::time::Instant>,
    ) {
        let mut stop = watch.stop.clone();
        // Everything that ends the stream, awaited around every step that may block (a
        // read of up to four pages, a send to a caller that stopped reading).
        let ended = async move {
            let until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = until => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        tokio::pin!(ended);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + WATCH_KEEPALIVE,
            WATCH_KEEPALIVE,
        );
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tx.closed() => break,
                _ = &mut ended => break,
                changed = watch.changes.changed() => if changed.is_err() { break },
                _ = retry => {}
                _ = keepalive.tick() => {
                    let quiet = WatchHomeTimelineResponse {
                        tweets: Vec::new(),
                        position: self.sent.newest,
                    };
                    let sent = tokio::select! {
                        r = tx.send(Ok(quiet)) => r.is_ok(),
                        _ = &mut ended => false,
                    };
                    if !sent {
                        break;
                    }
                    continue;
                }
            }
            watch.changes.borrow_and_update();
            retry_at = None;
            let read = self.reader.unsent(
                &self.user,
                self.sent.floor,
                &self.sent.ids,
                WATCH_PAGE,
                WATCH_PAGES,
            );
            let read = tokio::select! {
                r = read => r,
                _ = tx.closed() => break,
                _ = &mut ended => break,
            };
            match read {
                Ok((mut fresh, following)) => {
                    self.watchers.set_following(&self.user, following);
                    if fresh.is_empty() {
                        continue;
                    }
                    fresh.sort_by_key(|t| t.id);
                    for t in &fresh {
                        self.sent.record(t.id);
                    }
                    let message = WatchHomeTimelineResponse {
                        tweets: fresh,
                        position: self.sent.newest,
                    };
                    let sent = tokio::select! {
                        r = tx.send(Ok(message)) => r.is_ok(),
                        _ = &mut ended => false,
                    };
                    if !sent {
                        break;
                    }
                    keepalive.reset();
                }
                Err(status) => {
                    // The change is still unread: read again shortly.
                    tracing::debug!(user = %self.user, error = %status.message(), "live timeline read failed");
                    retry_at = Some(tokio::time::Instant::now() + WATCH_RETRY);
                }
            }
        }
        tracing::debug!(user = %self.user, "live timeline stream ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_sent_ids_raises_the_floor() {
        let mut sent = Sent::new(10);
        for id in 11..(11 + SENT_MEMORY as u64 + 5) {
            sent.record(id);
        }
        assert_eq!(sent.ids.len(), SENT_MEMORY);
        assert_eq!(sent.floor, 15, "the five oldest were forgotten");
        assert_eq!(sent.newest, 10 + SENT_MEMORY as u64 + 5);
        assert!(sent.ids.iter().all(|&id| id > sent.floor));
    }
}
