//! Which members of an etcd cluster this process talks to.
//!
//! etcd-client can balance requests over all listed endpoints itself, but a member that is
//! frozen, or cut off behind a network partition, keeps looking ready to it: its HTTP/2
//! connection stays open until keepalive gives up (15 s), and requests, lease renewals and
//! watches that land there hang until their own timeouts. Measured with a follower frozen:
//! a renewal's follow-up request hung its full 3 s on that member, and 2 s leases expired.
//! Its balancer only lets endpoints be added and removed; which member a given request,
//! retry or stream goes to is not ours to choose.
//!
//! So the [`Pool`] keeps one client per member and chooses the member itself: each request
//! or stream goes to the next member in rotation. A prober asks every member for its status
//! each `probe_interval`. A member that does not answer in time, answers without a leader
//! (it is on the minority side of a partition), or answers with a raft term older than
//! another member's (a replaced leader back from a pause, see [`judge`]) leaves the
//! rotation; its first good answer brings it back. When no member is healthy (an
//! election, or this process is the one cut off) the rotation stays as it is: there is
//! nothing better to go on. Each removal bumps a generation number, which tells watchers
//! and lease keepers that a stream they opened may be stuck on the member that left: they
//! reopen it (a watch resumes from its last revision, so nothing is missed).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use futures::future::join_all;
use tokio::sync::watch;
use tracing::{info, warn};

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Health {
    Healthy,
    Unhealthy(String),
}

/// Which endpoints should be in rotation, given each one's health and the rotation now:
/// the healthy ones; when none is (an election, or this process is the one cut off), the
/// rotation stays as it is, since nothing better is known.
pub(super) fn rotation(
    health: &[(String, Health)],
    current: &BTreeSet<String>,
) -> BTreeSet<String> {
    let healthy: BTreeSet<String> = health
        .iter()
        .filter(|(_, h)| *h == Health::Healthy)
        .map(|(e, _)| e.clone())
        .collect();
    if healthy.is_empty() {
        current.clone()
    } else {
        healthy
    }
}

/// One client per member, and which members are in rotation.
#[derive(Clone)]
pub(super) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each member's endpoint and client; a client that could not be made yet (etcd's
    /// auth needs a member to answer) is made by the prober later.
    members: Vec<(String, Mutex<Option<Client>>)>,
    /// Indexes into `members`.
    rotation: Mutex<Vec<usize>>,
    next: AtomicUsize,
    changes: watch::Sender<u64>,
}

impl Pool {
    /// Makes a client per endpoint (already with its scheme) and, with more than one,
    /// starts the prober. Fails only if no client at all can be made.
    pub(super) async fn connect(
        endpoints: Vec<String>,
        options: ConnectOptions,
        probe_interval: Duration,
    ) -> Result<Pool, etcd_client::Error> {
        let mut members = Vec::new();
        let mut last_error = None;
        for e in &endpoints {
            let client = match Client::connect([e.as_str()], Some(options.clone())).await {
                Ok(c) => Some(c),
                Err(err) => {
                    warn!(member = %e, error = %err, "cannot connect to the etcd member yet");
                    last_error = Some(err);
                    None
                }
            };
            members.push((e.clone(), Mutex::new(client)));
        }
        let rotation: Vec<usize> = (0..members.len())
            .filter(|&i| lock(&members[i].1).is_some())
            .collect();
        if rotation.is_empty() {
            return Err(last_error
                .unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint".into())));
        }
        let pool = Pool {
            inner: Arc::new(Inner {
                members,
                rotation: Mutex::new(rotation),
                next: AtomicUsize::new(0),
                changes: watch::channel(0).0,
            }),
        };
        if endpoints.len() > 1 {
            tokio::spawn(probe_forever(
                Arc::downgrade(&pool.inner),
                options,
                probe_interval,
            ));
        }
        Ok(pool)
    }

    /// The client of the next member in rotation.
    pub(super) fn client(&self) -> Client {
        let inner = &self.inner;
        let rotation = lock(&inner.rotation).clone();
        let n = inner.next.fetch_add(1, Ordering::Relaxed);
        let candidates = rotation
            .iter()
            .cycle()
            .skip(n % rotation.len().max(1))
            .take(rotation.len())
            .copied()
            .chain(0..inner.members.len());
        for i in candidates {
            if let Some(c) = lock(&inner.members[i].1).as_ref() {
                return c.clone();
            }
        }
        unreachable!("a pool is only made with at least one client")
    }

    /// Changes whenever a member leaves the rotation.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Judges each member from its status answer (its raft term) or why there was none. A
/// member whose term is behind another's is unhealthy too: it is a leader that was frozen
/// or cut off, came back, and has not yet heard that it was replaced. Until it does, it
/// takes itself for the leader (and its lessor serves lease renewals locally), so nothing
/// should be sent to it.
pub(super) fn judge(answers: Vec<(String, Result<u64, String>)>) -> Vec<(String, Health)> {
    let newest = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok().copied())
        .max()
        .unwrap_or(0);
    answers
        .into_iter()
        .map(|(endpoint, answer)| {
            let health = match answer {
                Ok(term) if term < newest => Health::Unhealthy(format!(
                    "its raft term {term} is behind the cluster's {newest}: a replaced leader"
                )),
                Ok(_) => Health::Healthy,
                Err(reason) => Health::Unhealthy(reason),
            };
            (endpoint, health)
        })
        .collect()
}

/// Asks one member for its status: its raft term, or why it is not usable.
async fn probe(
    inner: &Inner,
    i: usize,
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<u64, String> {
    let (endpoint, slot) = &inner.members[i];
    let attempt = async {
        let existing = lock(slot).clone();
        let mut client = match existing {
            Some(c) => c,
            None => {
                let c = Client::connect([endpoint.as_str()], Some(options.clone()))
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                *lock(slot) = Some(c.clone());
                c
            }
        };
        let status = client.status().await.map_err(|e| e.to_string())?;
        if status.leader() == 0 {
            return Err("it has no leader".to_string());
        }
        Ok(status.raft_term())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no status answer within {timeout:?}")),
    }
}

async fn probe_forever(inner: Weak<Inner>, options: ConnectOptions, interval: Duration) {
    // A probe must not take longer than the period between probes, and a member is slow
    // to answer a status request only when something is wrong with it.
    let timeout = interval.min(Duration::from_secs(1));
    let gauge = metrics::gauge!("starling_etcd_members_in_rotation");
    let mut first = true;
    loop {
        // The first probe at once: a member that is down when the process starts leaves
        // the rotation before most requests are made.
        if !std::mem::take(&mut first) {
            tokio::time::sleep(interval).await;
        }
        // The registry is gone: so is the prober.
        let Some(inner) = inner.upgrade() else { return };
        let answers = join_all((0..inner.members.len()).map(|i| {
            let inner = &inner;
            let options = &options;
            async move {
                let answer = probe(inner, i, options, timeout).await;
                (inner.members[i].0.clone(), answer)
            }
        }))
        .await;
        let health = judge(answers);
        let current: BTreeSet<String> = lock(&inner.rotation)
            .iter()
            .map(|&i| inner.members[i].0.clone())
            .collect();
        let wanted = rotation(&health, &current);
        gauge.set(wanted.len() as f64);
        if wanted == current {
            continue;
        }
        let mut removed = false;
        for (endpoint, h) in &health {
            match (current.contains(endpoint), wanted.contains(endpoint), h) {
                (true, false, Health::Unhealthy(reason)) => {
                    warn!(member = %endpoint, %reason, "etcd member out of rotation");
                    removed = true;
                }
                (false, true, _) => info!(member = %endpoint, "etcd member back in rotation"),
                _ => {}
            }
        }
        *lock(&inner.rotation) = (0..inner.members.len())
            .filter(|&i| wanted.contains(&inner.members[i].0))
            .collect();
        if removed {
            inner.changes.send_modify(|g| *g += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(list: &[(&str, bool)]) -> Vec<(String, Health)> {
        list.iter()
            .map(|(e, ok)| {
                let health = if *ok {
                    Health::Healthy
                } else {
                    Health::Unhealthy("down".into())
                };
                (e.to_string(), health)
            })
            .collect()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn the_rotation_is_the_healthy_members() {
        let r = rotation(
            &h(&[("a", true), ("b", false), ("c", true)]),
            &set(&["a", "b"]),
        );
        assert_eq!(r, set(&["a", "c"]));
    }

    #[test]
    fn a_member_behind_the_newest_term_is_unhealthy() {
        let judged = judge(vec![
            ("a".into(), Ok(7)),
            ("b".into(), Ok(6)),
            ("c".into(), Err("down".into())),
        ]);
        assert_eq!(judged[0].1, Health::Healthy);
        assert!(matches!(&judged[1].1, Health::Unhealthy(r) if r.contains("behind")));
        assert!(matches!(&judged[2].1, Health::Unhealthy(r) if r == "down"));
    }

    #[test]
    fn with_no_healthy_member_the_rotation_stays_as_it_is() {
        let r = rotation(
            &h(&[("a", false), ("b", false), ("c", false)]),
            &set(&["b", "c"]),
        );
        assert_eq!(
            r,
            set(&["b", "c"]),
            "a frozen member does not come back during an election"
        );
    }
}
