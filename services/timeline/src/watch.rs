//! Live timelines: who watches which home timeline, and the wake-ups that reach them.
//!
//! A `WatchHomeTimeline` stream must cost nothing while nothing happens, so it never
//! polls. Whoever changes home timelines says so on the store's pub/sub channel
//! [`CHANNEL`] ([`Notice`]): the fan-out once per page of followers written, with the
//! users of that page; for a celebrity's tweet (not fanned out, merged in at read time)
//! just the author; the follow handler for the follower whose timeline it merged into.
//!
//! Each timeline instance subscribes once, whatever the number of streams, and keeps one
//! entry per watched user, shared by that user's streams ([`Watchers`]). A notice wakes
//! the users it names, and for a celebrity's tweet the users whose last read showed they
//! follow the author; a woken stream reads what is new itself. The wake-up is a counter
//! in a `watch` channel, so a burst of notices costs the stream one read, not one each.
//!
//! Pub/sub delivers at most once, and only to connected subscribers: when the
//! subscription breaks (the store restarted, the instance fell behind), every watcher is
//! woken once it is back, so a notice lost in between costs one read per stream, never
//! an entry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt as _;
use starling_runtime::store::Store;
use tokio::sync::watch;

/// The store channel the notices travel on.
pub const CHANNEL: &str = "timeline-updates";

/// How long to wait before subscribing again after the subscription failed.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);
/// How often each instance publishes a heartbeat (an empty notice) on [`CHANNEL`]; a
/// subscription that has heard nothing for [`SILENCE`] is taken for dead (a connection
/// that died without a reset never ends the stream on its own) and made again.
const HEARTBEAT: Duration = Duration::from_secs(10);
const SILENCE: Duration = Duration::from_secs(35);

/// Which home timelines changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Whose tweet (or whose follow) it was.
    pub author: String,
    /// Users whose stored timelines gained or lost entries.
    pub users: Vec<String>,
    /// The author is a celebrity: their tweet reached no stored timeline, and every
    /// follower's timeline changed at read time.
    pub celebrity: bool,
}

impl Notice {
    /// `F <author>` or `C <author>`, then one user per line (user names have no spaces
    /// or line breaks: `check_user`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(2 + self.author.len() + self.users.len() * 12);
        out.push(if self.celebrity { 'C' } else { 'F' });
        out.push(' ');
        out.push_str(&self.author);
        for u in &self.users {
            out.push('\n');
            out.push_str(u);
        }
        out.into_bytes()
    }

    pub fn decode(payload: &[u8]) -> Option<Notice> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut lines = text.split('\n');
        let head = lines.next()?;
        let (kind, author) = head.split_once(' ')?;
        let celebrity = match kind {
            "C" => true,
            "F" => false,
            _ => return None,
        };
        Some(Notice {
            author: author.to_string(),
            users: lines.map(str::to_string).collect(),
            celebrity,
        })
    }
}

/// Publishes `notice`. A lost notice delays a live update until the next one (or until
/// the subscribers notice their subscription broke), it loses no entry: so a failure is
/// logged, not returned.
pub async fn publish(store: &dyn Store, notice: &Notice) {
    if let Err(e) = store.publish(CHANNEL, &notice.encode()).await {
        tracing::warn!(error = %e, author = %notice.author, "cannot publish a timeline notice");
    }
}

/// One watched user: the wake-up counter, and whom the user followed at the last read
/// (to tell whether a celebrity's tweet concerns them; `None` before the first read, when
/// every celebrity's tweet might).
struct Watched {
    wake: watch::Sender<u64>,
    following: Option<HashSet<String>>,
    streams: usize,
}

struct Inner {
    store: Arc<dyn Store>,
    users: Mutex<HashMap<String, Watched>>,
    listening: Mutex<bool>,
    /// Turns true when the instance stops: streams end, the subscription is dropped.
    stop: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The watched users of one timeline instance (module docs).
#[derive(Clone)]
pub struct Watchers {
    inner: Arc<Inner>,
}

impl Watchers {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                users: Mutex::default(),
                listening: Mutex::new(false),
                stop: watch::channel(false).0,
            }),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.inner.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream of `user`'s timeline. Register before the stream's first read:
    /// a change after registering wakes it, so none falls between the read and the wait.
    pub fn watch(&self, user: &str) -> Watch {
        self.listen();
        let mut users = self.users();
        let watched = users.entry(user.to_string()).or_insert_with(|| Watched {
            wake: watch::channel(0).0,
            following: None,
            streams: 0,
        });
        watched.streams += 1;
        Watch {
            changes: watched.wake.subscribe(),
            stop: self.inner.stop.subscribe(),
            user: user.to_string(),
            watchers: self.clone(),
        }
    }

    /// Records whom `user` follows, as the last read of their timeline saw it.
    pub fn set_following(&self, user: &str, following: Vec<String>) {
        if let Some(w) = self.users().get_mut(user) {
            w.following = Some(following.into_iter().collect());
        }
    }

    /// Users watched on this instance.
    pub fn watched(&self) -> usize {
        self.users().len()
    }

    /// Ends every stream (the instance is stopping).
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    fn wake(&self, notice: &Notice) {
        let users = self.users();
        let mut woken = 0usize;
        for u in notice.users.iter().chain(std::iter::once(&notice.author)) {
            if let Some(w) = users.get(u) {
                w.wake.send_modify(|n| *n += 1);
                woken += 1;
            }
        }
        if notice.celebrity {
            let concerned = |w: &&Watched| {
                w.following
                    .as_ref()
                    .is_none_or(|f| f.contains(&notice.author))
            };
            for w in users.values().filter(concerned) {
                w.wake.send_modify(|n| *n += 1);
                woken += 1;
            }
        }
        if woken > 0 {
            metrics::counter!("starling_timeline_watch_wakeups_total").increment(woken as u64);
        }
    }

    fn wake_all(&self) {
        for w in self.users().values() {
            w.wake.send_modify(|n| *n += 1);
        }
    }

    /// Starts the instance's one subscription, the first time anyone watches.
    fn listen(&self) {
        let mut listening = self
            .inner
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !*listening {
            *listening = true;
            tokio::spawn(listen(
                self.inner.store.clone(),
                Arc::downgrade(&self.inner),
                self.inner.stop.subscribe(),
            ));
        }
    }
}

/// Subscribes to [`CHANNEL`] and wakes watchers, subscribing again whenever the
/// subscription breaks, until the instance stops.
async fn listen(store: Arc<dyn Store>, inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        match store.subscribe(CHANNEL).await {
            Ok(mut notices) => {
                tracing::debug!("subscribed to timeline notices");
                let Some(watchers) = inner.upgrade().map(|inner| Watchers { inner }) else {
                    return;
                };
                // Whatever was published while not subscribed is unknown: everyone reads.
                watchers.wake_all();
                drop(watchers);
                let mut beat = tokio::time::interval(HEARTBEAT);
                let mut heard = tokio::time::Instant::now();
                loop {
                    let payload = tokio::select! {
                        p = notices.next() => p,
                        _ = beat.tick() => {
                            if heard.elapsed() >= SILENCE {
                                tracing::warn!("the timeline notice subscription went silent; subscribing again");
                                break;
                            }
                            if let Err(e) = store.publish(CHANNEL, &[]).await {
                                tracing::debug!(error = %e, "cannot publish a heartbeat");
                            }
                            continue;
                        }
                        _ = stopped(&mut stop) => return,
                    };
                    let Some(payload) = payload else {
                        tracing::warn!("the timeline notice subscription broke; subscribing again");
                        break;
                    };
                    heard = tokio::time::Instant::now();
                    if payload.is_empty() {
                        continue; // a heartbeat
                    }
                    let Some(inner) = inner.upgrade() else { return };
                    match Notice::decode(&payload) {
                        Some(notice) => Watchers { inner }.wake(&notice),
                        None => {
                            tracing::warn!(bytes = payload.len(), "an unreadable timeline notice")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to timeline notices"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One stream's registration; dropping it unregisters the stream.
pub struct Watch {
    /// Changes whenever the user's timeline may have new entries.
    pub changes: watch::Receiver<u64>,
    /// Turns true when the instance stops.
    pub stop: watch::Receiver<bool>,
    user: String,
    watchers: Watchers,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut users = self.watchers.users();
        if let Some(w) = users.get_mut(&self.user) {
            w.streams -= 1;
            if w.streams == 0 {
                users.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_runtime::store::MemoryStore;

    #[test]
    fn notices_round_trip() {
        for notice in [
            Notice {
                author: "alice".into(),
                users: vec!["bob".into(), "carol".into()],
                celebrity: false,
            },
            Notice {
                author: "star".into(),
                users: vec![],
                celebrity: true,
            },
        ] {
            assert_eq!(Notice::decode(&notice.encode()), Some(notice));
        }
        assert_eq!(Notice::decode(b"X alice"), None);
        assert_eq!(Notice::decode(&[0xff, 0xfe]), None);
    }

    async fn woken(w: &mut Watch) -> bool {
        tokio::time::timeout(Duration::from_secs(5), w.changes.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn notices_wake_the_named_users_and_celebrities_followers() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let watchers = Watchers::new(store.clone());
        let mut bob = watchers.watch("bob");
        let mut bob_again = watchers.watch("bob");
        let mut carol = watchers.watch("carol");
        assert_eq!(watchers.watched(), 2, "one entry per user");
        // The subscription's start wakes everyone once.
        assert!(woken(&mut bob).await && woken(&mut bob_again).await && woken(&mut carol).await);
        watchers.set_following("carol", vec!["star".into()]);
        watchers.set_following("bob", vec!["alice".into()]);
        // Registered after the subscription began: nothing wakes dave yet.
        let mut dave = watchers.watch("dave");
        assert!(!dave.changes.has_changed().unwrap());

        publish(
            store.as_ref(),
            &Notice {
                author: "alice".into(),
                users: vec!["bob".into(), "dave".into()],
                celebrity: false,
            },
        )
        .await;
        assert!(woken(&mut bob).await);
        assert!(woken(&mut bob_again).await, "every stream of the user");
        assert!(!carol.changes.has_changed().unwrap(), "carol was not named");

        publish(
            store.as_ref(),
            &Notice {
                author: "star".into(),
                users: vec![],
                celebrity: true,
            },
        )
        .await;
        assert!(woken(&mut carol).await, "carol follows the celebrity");
        assert!(
            woken(&mut dave).await,
            "whom dave follows is not known yet: any celebrity may concern him"
        );
        assert!(
            !bob.changes.has_changed().unwrap(),
            "bob does not follow the celebrity"
        );
        drop(dave);

        drop(bob);
        drop(bob_again);
        assert_eq!(
            watchers.watched(),
            1,
            "the last stream of bob unregistered him"
        );
        let mut stop = carol.stop.clone();
        watchers.stop();
        assert!(*stop.borrow_and_update());
    }
}
