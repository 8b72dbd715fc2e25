//! Fan-out on write: a new tweet goes into every follower's home timeline.
//!
//! The seed article's loop (one Redis command per follower, no pipeline) managed about
//! 1,200 inserts a second and could not say what happens when it crashes half-way through
//! 100 million followers. Here:
//!
//! * followers are read a page at a time from the follower service (never all at once),
//!   the next page being fetched while the current one is written; pages are a quarter of
//!   the followers, between 1,000 and the configured page size (10,000 by default);
//! * each page's writes (add + cap per follower) go to the store as pipelines of 2,500
//!   followers, sent at once, and up to three pages are written at a time, so Redis has
//!   the next pipelines queued while the next page is read and built;
//! * after each page the last follower written is checkpointed, in page order (a page's
//!   checkpoint waits for the pages before it), so a crash resumes after it; pages are idempotent (adding an id twice is a no-op), so the page in flight at the
//!   crash is simply written again;
//! * authors with more followers than the celebrity threshold are not fanned out at all:
//!   they are marked, and readers merge their tweets in at read time;
//! * after each page (and for a celebrity's tweet) a notice wakes the live timelines
//!   concerned (`watch.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use starling_discovery::MeshChannel;
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::{GetFollowCountsRequest, ListFollowersRequest};
use starling_runtime::AppSettings;

use crate::storage::TimelineStorage;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("follower service: {0}")]
    Followers(String),
    #[error("store: {0}")]
    Store(#[from] starling_runtime::store::StoreError),
    /// A page's writer task ended without an answer (it panicked or was cancelled).
    #[error("page writer: {0}")]
    Writer(String),
}

/// Where followers come from: the follower service in production, anything in benchmarks.
#[async_trait]
pub trait FollowerSource: Send + Sync + 'static {
    async fn count(&self, user: &str) -> Result<u64, FanoutError>;
    /// A page of followers after `after` (empty = from the start) and the cursor to the
    /// next page (empty = this was the last).
    async fn page(
        &self,
        user: &str,
        after: &str,
        size: u32,
    ) -> Result<(Vec<String>, String), FanoutError>;
}

/// The follower service, through the mesh.
pub struct MeshFollowers {
    channel: MeshChannel,
}

impl MeshFollowers {
    pub fn new(channel: MeshChannel) -> Self {
        Self { channel }
    }
}

fn status(e: tonic::Status) -> FanoutError {
    FanoutError::Followers(format!("{:?}: {}", e.code(), e.message()))
}

#[async_trait]
impl FollowerSource for MeshFollowers {
    async fn count(&self, user: &str) -> Result<u64, FanoutError> {
        let mut client = FollowerServiceClient::new(self.channel.clone());
        let resp = client
            .get_follow_counts(GetFollowCountsRequest {
                user: user.to_string(),
            })
            .await
            .map_err(status)?;
        Ok(resp.into_inner().followers)
    }

    async fn page(
        &self,
        user: &str,
        after: &str,
        size: u32,
    ) -> Result<(Vec<String>, String), FanoutError> {
        let mut client = FollowerServiceClient::new(self.channel.clone());
        let resp = client
            .list_followers(ListFollowersRequest {
                user: user.to_string(),
                page_size: size,
                page_token: after.to_string(),
            })
            .await
            .map_err(status)?
            .into_inner();
        Ok((resp.users, resp.next_page_token))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutReport {
    /// Followers written by this run (a resumed run counts only its own).
    pub written: u64,
    pub pages: u64,
    pub resumed: bool,
    pub celebrity: bool,
    pub elapsed: Duration,
}

pub struct Fanout {
    storage: TimelineStorage,
    followers: Arc<dyn FollowerSource>,
    settings: Arc<AppSettings>,
}

impl Fanout {
    pub fn new(
        storage: TimelineStorage,
        followers: Arc<dyn FollowerSource>,
        settings: Arc<AppSettings>,
    ) -> Self {
        Self {
            storage,
            followers,
            settings,
        }
    }

    pub async fn fan_out(&self, tweet_id: u64, author: &str) -> Result<FanoutReport, FanoutError> {
        let started = Instant::now();
        // The author sees their own tweet.
        self.storage.push_many(author, &[tweet_id]).await?;
        let count = self.followers.count(author).await?;
        if count > self.settings.celebrity_threshold {
            self.storage.mark_celebrity(author).await?;
            crate::watch::publish(
                self.storage.store().as_ref(),
                &crate::watch::Notice {
                    author: author.to_string(),
                    users: Vec::new(),
                    celebrity: true,
                },
            )
            .await;
            tracing::info!(tweet_id, %author, followers = count, "celebrity: merged at read time, not fanned out");
            return Ok(FanoutReport {
                written: 0,
                pages: 0,
                resumed: false,
                celebrity: true,
                elapsed: started.elapsed(),
            });
        }
        let checkpoint = self.storage.checkpoint(tweet_id).await?;
        let resumed = checkpoint.is_some();
        if let Some(after) = &checkpoint {
            tracing::info!(tweet_id, %author, %after, "resuming fan-out from checkpoint");
        }
        // About four pages at least, so that reading the next page overlaps writing this
        // one even for mid-sized fan-outs; never above the configured page.
        let size = ((count / 4) as u32).clamp(1_000, self.settings.fanout_page.max(1_000));
        let mut cursor = checkpoint.unwrap_or_default();
        let mut written = 0u64;
        let mut pages = 0u64;
        // Pages being written, oldest first, up to PAGES_IN_FLIGHT at once: Redis always
        // has the next pipelines queued while this side reads and builds more. Finished
        // pages are checkpointed in order, so a checkpoint never passes an unwritten page.
        let mut writing: VecDeque<InFlight> = VecDeque::new();
        let mut next = Some(self.followers.page(author, &cursor, size).await?);
        while let Some((users, next_cursor)) = next.take() {
            let users = Arc::new(users);
            writing.push_back(InFlight {
                task: tokio::spawn(write_page(self.storage.clone(), tweet_id, users.clone())),
                users,
            });
            if !next_cursor.is_empty() {
                // The next page is read while the pages before it are written.
                next = Some(self.followers.page(author, &next_cursor, size).await?);
            }
            while writing.len() >= PAGES_IN_FLIGHT || (next.is_none() && !writing.is_empty()) {
                let Some(page) = writing.pop_front() else {
                    break;
                };
                written += self
                    .finish_page(tweet_id, author, page, &mut cursor)
                    .await?;
                pages += 1;
            }
        }
        self.storage.finish(tweet_id).await?;
        let report = FanoutReport {
            written,
            pages,
            resumed,
            celebrity: false,
            elapsed: started.elapsed(),
        };
        tracing::debug!(tweet_id, %author, ?report, %cursor, "fan-out done");
        Ok(report)
    }

    /// Waits for `page`'s writes, checkpoints its last follower and wakes the live
    /// timelines of its users; the number of followers written.
    async fn finish_page(
        &self,
        tweet_id: u64,
        author: &str,
        page: InFlight,
        cursor: &mut String,
    ) -> Result<u64, FanoutError> {
        page.task
            .await
            .map_err(|e| FanoutError::Writer(e.to_string()))??;
        let users = Arc::unwrap_or_clone(page.users);
        if let Some(last) = users.last() {
            self.storage
                .store()
                .apply(vec![TimelineStorage::checkpoint_write(tweet_id, last)])
                .await?;
            cursor.clone_from(last);
        }
        let n = users.len() as u64;
        // Live timelines of this page's users (and the author's own) read what is new.
        crate::watch::publish(
            self.storage.store().as_ref(),
            &crate::watch::Notice {
                author: author.to_string(),
                users,
                celebrity: false,
            },
        )
        .await;
        Ok(n)
    }
}

/// Pages written at once by one fan-out.
const PAGES_IN_FLIGHT: usize = 3;
/// Followers per pipeline: a page goes out as several pipelines at once.
const WRITE_CHUNK: usize = 2_500;

/// One page whose writes are under way.
struct InFlight {
    task: tokio::task::JoinHandle<Result<(), FanoutError>>,
    users: Arc<Vec<String>>,
}

/// Writes one page (add + cap per follower) as pipelines of [`WRITE_CHUNK`] followers,
/// all sent at once.
async fn write_page(
    storage: TimelineStorage,
    tweet_id: u64,
    users: Arc<Vec<String>>,
) -> Result<(), FanoutError> {
    let store = storage.store();
    futures::future::try_join_all(users.chunks(WRITE_CHUNK).map(|part| {
        let mut writes = Vec::with_capacity(part.len() * 2);
        for u in part {
            storage.push_writes(u, tweet_id, &mut writes);
        }
        store.apply(writes)
    }))
    .await?;
    Ok(())
}

/// Writes the pages with one store call per follower and no pipelining: the seed
/// article's approach, kept as the benchmark's baseline.
pub async fn naive_fan_out(
    storage: &TimelineStorage,
    tweet_id: u64,
    followers: &[String],
) -> Result<(), FanoutError> {
    for f in followers {
        let mut w = Vec::with_capacity(2);
        storage.push_writes(f, tweet_id, &mut w);
        // One command at a time, as the article did (its loop did not even cap).
        w.truncate(1);
        storage.store().apply(w).await?;
    }
    Ok(())
}

/// Followers in memory (benchmarks and tests).
pub struct StaticFollowers {
    pub users: Vec<String>,
}

#[async_trait]
impl FollowerSource for StaticFollowers {
    async fn count(&self, _user: &str) -> Result<u64, FanoutError> {
        Ok(self.users.len() as u64)
    }

    async fn page(
        &self,
        _user: &str,
        after: &str,
        size: u32,
    ) -> Result<(Vec<String>, String), FanoutError> {
        let start = if after.is_empty() {
            0
        } else {
            self.users.partition_point(|u| u.as_str() <= after)
        };
        let end = (start + size as usize).min(self.users.len());
        let page = self.users[start..end].to_vec();
        let next = if end < self.users.len() {
            page.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_runtime::store::MemoryStore;

    fn users(n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n).map(|i| format!("user{i:06}")).collect();
        v.sort();
        v
    }

    fn engine(n: usize, threshold: u64) -> (Fanout, TimelineStorage) {
        let storage = TimelineStorage::new(Arc::new(MemoryStore::new()), 800);
        let settings = AppSettings {
            celebrity_threshold: threshold,
            fanout_page: 100,
            ..AppSettings::default()
        };
        let f = Fanout::new(
            storage.clone(),
            Arc::new(StaticFollowers { users: users(n) }),
            Arc::new(settings),
        );
        (f, storage)
    }

    #[tokio::test]
    async fn every_follower_and_the_author_get_the_tweet() {
        let (f, storage) = engine(2_050, 10_000);
        let report = f.fan_out(77, "author").await.unwrap();
        assert_eq!(report.written, 2_050);
        assert_eq!(report.pages, 3, "pages of 1,000");
        for u in users(2_050).iter().chain([&"author".to_string()]) {
            assert!(storage.contains(u, 77).await.unwrap(), "{u}");
        }
        assert_eq!(
            storage.checkpoint(77).await.unwrap(),
            None,
            "checkpoint removed when done"
        );
    }

    #[tokio::test]
    async fn resumes_after_the_checkpoint() {
        let (f, storage) = engine(500, 10_000);
        let all = users(500);
        // As if a crash happened after the first 200 followers were written.
        storage
            .store()
            .apply(vec![TimelineStorage::checkpoint_write(5, &all[199])])
            .await
            .unwrap();
        let report = f.fan_out(5, "author").await.unwrap();
        assert!(report.resumed);
        assert_eq!(report.written, 300, "only the rest is written");
        assert!(
            !storage.contains(&all[0], 5).await.unwrap(),
            "pages before the checkpoint are not redone"
        );
        assert!(storage.contains(&all[499], 5).await.unwrap());
    }

    #[tokio::test]
    async fn celebrities_are_not_fanned_out() {
        let (f, storage) = engine(50, 10);
        let report = f.fan_out(9, "star").await.unwrap();
        assert!(report.celebrity);
        assert!(!storage.contains(&users(50)[0], 9).await.unwrap());
        assert!(storage.contains("star", 9).await.unwrap());
        assert_eq!(
            storage
                .celebrities(&["star".into(), "nobody".into()])
                .await
                .unwrap(),
            vec!["star"]
        );
    }

    #[tokio::test]
    async fn timelines_are_capped_to_the_newest() {
        let storage = TimelineStorage::new(Arc::new(MemoryStore::new()), 800);
        let ids: Vec<u64> = (1..=900).collect();
        storage.push_many("u", &ids).await.unwrap();
        let page = storage.page("u", None, 1_000).await.unwrap();
        assert_eq!(page.len(), 800);
        assert_eq!(page[0], 900);
        assert_eq!(*page.last().unwrap(), 101);
    }
}
