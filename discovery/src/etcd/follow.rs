//! Watching one service: list the prefix, then follow a watch from the listed revision + 1
//! (so no event between the two is missed). A broken stream, or one on a member that left
//! the rotation, is resumed from the revision after the last event seen; a compacted
//! revision, a cancelled watch, or a member whose history is behind what was seen lead
//! back to a fresh list, after a jittered back-off. While etcd is unreachable the last
//! known set keeps being served.
//!
//! The set itself is a [`View`]: what a relist and what watch events do to it, including
//! the grace for instances a relist no longer shows (see the module docs of `etcd`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{list, member_left, parse, publish, Session};
use crate::backoff::Backoff;
use crate::instance::{EndpointSet, Keys};

/// One service's instances as the watcher knows them.
#[derive(Debug, Default)]
pub(super) struct View {
    pub(super) set: EndpointSet,
    /// Instances missing from a relist, kept until their deadline unless they come back.
    stale: HashMap<String, Instant>,
    listed_once: bool,
}

impl View {
    /// Takes a fresh listing: what it shows replaces what was known, and what it no longer
    /// shows is kept for `grace` (not after the very first listing, which is the truth).
    pub(super) fn relisted(&mut self, listed: EndpointSet, now: Instant, grace: Duration) {
        if self.listed_once {
            for id in self.set.keys() {
                if !listed.contains_key(id) {
                    self.stale.entry(id.clone()).or_insert(now + grace);
                }
            }
        }
        // Drop what has been missing for longer than the grace here too, not only while a
        // watch is open (opening the watch may keep failing).
        self.stale
            .retain(|id, deadline| !listed.contains_key(id) && *deadline > now);
        let stale = &self.stale;
        self.set.retain(|id, _| stale.contains_key(id));
        self.set.extend(listed);
        self.listed_once = true;
    }

    /// Applies a watch response's events: a put adds or replaces, a delete (deregistered,
    /// or its lease expired) removes at once.
    pub(super) fn apply(&mut self, keys: &Keys, service: &str, resp: &WatchResponse) {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    if let Some(inst) = parse(keys, service, kv) {
                        self.stale.remove(&inst.id);
                        self.set.insert(inst.id.clone(), inst);
                    }
                }
                EventType::Delete => {
                    let key = String::from_utf8_lossy(kv.key());
                    if let Some(id) = keys.instance_id(service, &key) {
                        self.stale.remove(id);
                        self.set.remove(id);
                    }
                }
            }
        }
    }

    /// When the next stale instance is due to go.
    pub(super) fn next_purge(&self) -> Option<Instant> {
        self.stale.values().min().copied()
    }

    /// Drops the stale instances whose grace is over.
    pub(super) fn purge(&mut self, service: &str, now: Instant) {
        let set = &mut self.set;
        self.stale.retain(|id, deadline| {
            let keep = *deadline > now;
            if !keep {
                info!(%service, instance = %id, "dropping instance that did not re-register");
                set.remove(id);
            }
            keep
        });
    }
}

/// Why following a watch stopped.
enum Ended {
    /// Nobody watches any more.
    Unwatched,
    /// The stream broke: watch again (after a back-off) from this revision, the one after
    /// the last event seen, so that nothing is missed or replayed.
    Resume(i64),
    /// The member the watch was on left the rotation: resume on another one at once.
    Moved(i64),
    /// Cancelled, compacted past, or etcd's history is behind what was seen (its data was
    /// wiped): list again.
    Relist,
}

/// Keeps `tx` current for `service` until no receiver is left.
pub(super) async fn watch_service(
    session: Session,
    keys: Keys,
    service: String,
    relist_grace: Duration,
    mut first_revision: Option<i64>,
    tx: watch::Sender<Arc<EndpointSet>>,
) {
    let Session {
        pool, mut members, ..
    } = session;
    let prefix = keys.service_prefix(&service);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut view = View::default();
    // Where to resume watching without listing again.
    let mut resume: Option<i64> = None;
    loop {
        let start = match resume.take() {
            Some(next) => Some(next),
            None => match list(&pool, &keys, &service).await {
                Ok((listed, revision)) => {
                    view.relisted(listed, Instant::now(), relist_grace);
                    publish(&tx, &view.set);
                    debug!(%service, revision, endpoints = view.set.len(), "listed");
                    Some(first_revision.take().unwrap_or(revision + 1))
                }
                Err(e) => {
                    warn!(%service, error = %e, endpoints = view.set.len(),
                        "cannot list; serving the last known endpoints");
                    None
                }
            },
        };
        if let Some(start) = start {
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(start)
                .with_progress_notify();
            match pool.client().watch(prefix.as_str(), Some(opts)).await {
                Ok(stream) => {
                    let mut watching = Watching {
                        view: &mut view,
                        keys: &keys,
                        service: &service,
                        tx: &tx,
                        next: start,
                    };
                    match watching.follow(stream, &mut backoff, &mut members).await {
                        Ended::Unwatched => return,
                        Ended::Resume(next) => resume = Some(next),
                        Ended::Moved(next) => {
                            resume = Some(next);
                            continue;
                        }
                        Ended::Relist => {}
                    }
                }
                Err(e) => {
                    warn!(%service, error = %e, "cannot open watch");
                    resume = Some(start);
                }
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One open watch and what it updates.
struct Watching<'a> {
    view: &'a mut View,
    keys: &'a Keys,
    service: &'a str,
    tx: &'a watch::Sender<Arc<EndpointSet>>,
    /// The revision after the last event applied: where a resumed watch starts.
    next: i64,
}

impl Watching<'_> {
    /// Applies a watch's events (and the stale instances' deadlines) until it ends.
    async fn follow(
        &mut self,
        mut stream: WatchStream,
        backoff: &mut Backoff,
        members: &mut watch::Receiver<u64>,
    ) -> Ended {
        let service = self.service;
        loop {
            let next_purge = self.view.next_purge();
            let purge = async {
                match next_purge {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.tx.closed() => return Ended::Unwatched,
                _ = member_left(members) => {
                    info!(%service, "an etcd member left the rotation; reopening the watch");
                    return Ended::Moved(self.next);
                }
                _ = purge => {
                    self.view.purge(service, Instant::now());
                    publish(self.tx, &self.view.set);
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            warn!(%service, compact_revision = resp.compact_revision(),
                                reason = resp.cancel_reason(), "watch cancelled; relisting");
                            return Ended::Relist;
                        }
                        if let Some(ended) = self.take(&resp) {
                            return ended;
                        }
                        backoff.reset();
                    }
                    Ok(None) => {
                        warn!(%service, "watch stream ended; resuming");
                        return Ended::Resume(self.next);
                    }
                    Err(e) => {
                        warn!(%service, error = %e, "watch failed; resuming");
                        return Ended::Resume(self.next);
                    }
                }
            }
        }
    }

    /// Applies one response; says how the watch ends if it must.
    fn take(&mut self, resp: &WatchResponse) -> Option<Ended> {
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.created() {
            // The member's history ends before what this watcher has already seen: etcd
            // lost its data (restored or wiped). Resuming would wait for revisions that
            // mean something else now.
            if revision + 1 < self.next {
                warn!(service = %self.service, revision, expected = self.next - 1,
                    "etcd's revision went backwards; relisting");
                return Some(Ended::Relist);
            }
            return None;
        }
        if let Some(last) = resp
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.mod_revision())
            .max()
        {
            self.next = self.next.max(last + 1);
        } else {
            // A progress notification: every event up to `revision` has been sent.
            self.next = self.next.max(revision + 1);
        }
        self.view.apply(self.keys, self.service, resp);
        publish(self.tx, &self.view.set);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::ServiceInstance;

    fn set(ids: &[&str]) -> EndpointSet {
        ids.iter()
            .map(|id| {
                let mut i = ServiceInstance::new("tagger", "127.0.0.1:1");
                i.id = id.to_string();
                (id.to_string(), i)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_relist_keeps_vanished_instances_for_the_grace_then_drops_them() {
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut view = View::default();
        view.relisted(set(&["a", "b"]), t0, grace);
        assert_eq!(view.next_purge(), None, "the first listing is the truth");

        // etcd came back empty (wiped): both are kept for the grace.
        view.relisted(set(&[]), t0, grace);
        assert_eq!(view.set.len(), 2);
        assert_eq!(view.next_purge(), Some(t0 + grace));

        // a re-registered; b did not.
        view.relisted(set(&["a"]), t0 + Duration::from_secs(1), grace);
        view.purge("tagger", t0 + grace);
        assert_eq!(view.set.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(view.next_purge(), None);
    }

    #[tokio::test]
    async fn a_relist_after_the_grace_forgets_at_once() {
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut view = View::default();
        view.relisted(set(&["a"]), t0, grace);
        view.relisted(set(&[]), t0, grace);
        view.relisted(set(&[]), t0 + grace + Duration::from_secs(1), grace);
        assert!(view.set.is_empty(), "missing past the grace: gone");
    }
}
