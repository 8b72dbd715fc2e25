//! Which member of a consumer group reads which partition, decided through leases in the
//! store instead of by the broker's group coordinator.
//!
//! Why not the coordinator: on the Kafka-protocol broker of the tests (Tansu), rebalances
//! sometimes never completed. After a restart of the broker, or after both members of a
//! group were replaced in a rolling restart, members waited 30 to over 90 s with no
//! partition while events piled up, and joining again as a new member did not always help;
//! eager, cooperative and static membership all showed it. Leases in Redis are a mechanism
//! the relay already relies on (`outbox`), and they hand a partition over as soon as its
//! reader lets go.
//!
//! **The protocol.** Every subscription is a member with a random id. A member holds a
//! *slot* lease (`consumers:<group>:<topic>:member:<k>`, the lowest free `k`), so the members
//! can count each other, and one lease per partition it reads
//! (`consumers:<group>:<topic>:partition:<p>`). Every [`TICK`] it reads all these leases in
//! one round trip and [`plan`]s: its share is ⌈partitions ÷ members⌉; below its share it
//! takes free partitions, above it it gives partitions up. Giving up is two-phase, so a
//! partition never has two readers at once: the partition stops being fetched and is
//! *draining*; when the consumer loop has finished and committed what it holds of it
//! ([`super::Subscription::drained`]), its offset is committed synchronously and only then
//! is the lease released. A member that stops gracefully ([`super::Subscription::close`])
//! does the same for everything at once, so a rolling restart moves partitions within a
//! tick; one that dies loses its leases after [`LEASE_TTL`].
//!
//! **Leases that cannot be renewed** (Redis unreachable for most of a TTL, or taken over
//! after a long pause) stop being read at once, before another member can take them. A
//! reader paused for longer than the TTL (a frozen process) can still finish a message it
//! held when it froze; handlers are idempotent per event id, so that duplicate is harmless.
//!
//! Offsets stay in the broker (`commit` under the group id, as a simple consumer that never
//! joins the group), so a broker that loses its log loses the offsets with it and readers
//! start the new log from its beginning.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::store::Store;

/// How long a partition or slot lease lasts without renewal: how soon the partitions of a
/// member that died are read again.
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often a member renews its leases.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a member looks at the others' leases: how soon a released partition is taken.
pub const TICK: Duration = Duration::from_millis(250);

/// What a member should change, given everyone's leases (see [`plan`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The slot to take, when this member holds none.
    pub take_slot: Option<usize>,
    /// Free partitions to take.
    pub take: Vec<usize>,
    /// Partitions to give up (start draining).
    pub give_up: Vec<usize>,
}

/// Decides one step of the protocol for member `me`. `slots[k]` and `partitions[p]` are the
/// holders of the leases; `draining` are partitions `me` is already giving up.
pub fn plan(
    me: &str,
    slots: &[Option<String>],
    partitions: &[Option<String>],
    draining: &BTreeSet<usize>,
) -> Plan {
    let mine_slot = slots.iter().position(|h| h.as_deref() == Some(me));
    let take_slot = match mine_slot {
        Some(_) => None,
        None => slots.iter().position(Option::is_none),
    };
    let members =
        (slots.iter().filter(|h| h.is_some()).count() + usize::from(take_slot.is_some())).max(1);
    let share = partitions.len().div_ceil(members);
    let mine: Vec<usize> = (0..partitions.len())
        .filter(|&p| partitions[p].as_deref() == Some(me))
        .collect();
    let mut out = Plan {
        take_slot,
        ..Plan::default()
    };
    if mine.len() < share {
        // Start looking at this member's own stretch, so members starting together mostly
        // try different partitions.
        let start = mine_slot.or(take_slot).unwrap_or(0) * share;
        let n = partitions.len();
        out.take = (0..n)
            .map(|i| (start + i) % n.max(1))
            .filter(|&p| partitions[p].is_none())
            .take(share - mine.len())
            .collect();
    } else if mine.len() > share {
        let excess = mine.len() - share;
        let already = mine.iter().filter(|p| draining.contains(p)).count();
        out.give_up = mine
            .iter()
            .rev()
            .filter(|p| !draining.contains(p))
            .take(excess.saturating_sub(already))
            .copied()
            .collect();
    }
    out
}

/// What a member reads, shared between its [`Ownership`] task and the subscription.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Read: fetched and delivered.
    pub reading: BTreeSet<usize>,
    /// Given up: no longer fetched; the lease is kept until the consumer has let go.
    pub draining: BTreeSet<usize>,
    /// Drained by the consumer, with the offset to commit before the lease goes.
    pub done: Vec<(usize, Option<i64>)>,
}

impl Assignment {
    /// Every partition held (read or draining), now held no more.
    fn take_held(&mut self) -> Vec<usize> {
        let held = self.reading.iter().chain(&self.draining).copied().collect();
        self.reading.clear();
        self.draining.clear();
        held
    }
}

/// What the ownership task asks of the consumer client (the Kafka consumer in production;
/// a recorder in the tests).
pub trait Reader: Send + Sync + 'static {
    /// Starts fetching `partitions` from the group's committed offsets (all in one step,
    /// so they are fetched together).
    fn start(&self, partitions: &[usize]) -> Result<(), String>;
    /// Stops fetching `partition`.
    fn stop(&self, partition: usize) -> Result<(), String>;
    /// Commits `offset` for `partition` and waits for the broker's answer.
    fn commit_now(&self, partition: usize, offset: i64) -> Result<(), String>;
}

/// A member's leases on one topic of one group, kept by a background task.
pub struct Ownership {
    pub assignment: Arc<Mutex<Assignment>>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Ownership {
    /// Starts the task that takes, renews and gives up leases for `me` among the members
    /// of `group` reading `topic` (`partitions` of them). `reader` is held weakly: when the
    /// consumer goes, the task lets its leases go too.
    pub fn start(
        store: Arc<dyn Store>,
        group: &str,
        topic: &str,
        partitions: usize,
        me: String,
        reader: Weak<dyn Reader>,
    ) -> Self {
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let keys = Keys::new(group, topic, partitions);
        let task = tokio::spawn(keep(
            store,
            keys,
            me,
            reader,
            assignment.clone(),
            wake.clone(),
            stopped,
        ));
        Self {
            assignment,
            wake,
            stop,
            task: Some(task),
        }
    }

    /// Whether `partition` is read by this member (a delivery from any other is stale).
    pub fn reads(&self, partition: usize) -> bool {
        lock(&self.assignment).reading.contains(&partition)
    }

    /// Whether `partition` is still this member's: read, or being given up (its last
    /// commits still count).
    pub fn holds(&self, partition: usize) -> bool {
        let a = lock(&self.assignment);
        a.reading.contains(&partition) || a.draining.contains(&partition)
    }

    /// Partitions being given up.
    pub fn draining(&self) -> Vec<usize> {
        lock(&self.assignment).draining.iter().copied().collect()
    }

    /// The consumer has finished `partition`; `offset` (if any) is committed before the
    /// lease goes.
    pub fn drained(&self, partition: usize, offset: Option<i64>) {
        let mut a = lock(&self.assignment);
        if a.draining.contains(&partition) && !a.done.iter().any(|(p, _)| *p == partition) {
            a.done.push((partition, offset));
            drop(a);
            self.wake.notify_one();
        }
    }

    /// Commits `offsets` and releases every lease, then ends the task.
    pub async fn close(&mut self, offsets: Vec<(usize, i64)>) {
        {
            let mut a = lock(&self.assignment);
            for p in a.take_held() {
                let at = offsets.iter().find(|(q, _)| *q == p).map(|(_, o)| *o);
                a.done.push((p, at));
            }
        }
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        // Without close: the task releases the leases without committing (what was in hand
        // comes again to the next reader).
        self.stop.send_replace(true);
    }
}

fn lock(a: &Mutex<Assignment>) -> std::sync::MutexGuard<'_, Assignment> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

struct Keys {
    slots: Vec<String>,
    partitions: Vec<String>,
    /// For logs.
    what: String,
}

impl Keys {
    fn new(group: &str, topic: &str, partitions: usize) -> Self {
        let base = format!("consumers:{group}:{topic}");
        Self {
            slots: (0..partitions)
                .map(|k| format!("{base}:member:{k}"))
                .collect(),
            partitions: (0..partitions)
                .map(|p| format!("{base}:partition:{p}"))
                .collect(),
            what: format!("{topic}/{group}"),
        }
    }

    fn all(&self) -> Vec<String> {
        self.slots.iter().chain(&self.partitions).cloned().collect()
    }
}

/// Runs a blocking client call off the runtime's threads.
async fn blocking<T: Send + 'static>(
    reader: &Weak<dyn Reader>,
    f: impl FnOnce(&dyn Reader) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let Some(reader) = reader.upgrade() else {
        return Err("the consumer is gone".into());
    };
    tokio::task::spawn_blocking(move || f(&*reader))
        .await
        .map_err(|e| e.to_string())?
}

async fn keep(
    store: Arc<dyn Store>,
    keys: Keys,
    me: String,
    reader: Weak<dyn Reader>,
    assignment: Arc<Mutex<Assignment>>,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let all = keys.all();
    let n = keys.partitions.len();
    let mut slot: Option<usize> = None;
    let mut renewed = Instant::now();
    // Whether the last look at the store worked: a store outage is logged once, not per tick.
    let mut store_answers = true;
    let mut renew_due = Instant::now() + RENEW_EVERY;
    loop {
        let stop = *stopped.borrow();
        // Hand over what the consumer has let go of (everything, when stopping).
        let done = {
            let mut a = lock(&assignment);
            let done = std::mem::take(&mut a.done);
            for (p, _) in &done {
                a.draining.remove(p);
            }
            done
        };
        for (p, offset) in done {
            if let Some(at) = offset {
                if let Err(e) = blocking(&reader, move |r| r.commit_now(p, at)).await {
                    warn!(what = %keys.what, partition = p, error = %e, "cannot commit before handing the partition over");
                }
            }
            let _ = store.release(&keys.partitions[p], &me).await;
            info!(what = %keys.what, partition = p, member = %me, "handed the partition over");
        }
        if stop || reader.strong_count() == 0 {
            break;
        }

        if Instant::now() >= renew_due {
            renew_due = Instant::now() + RENEW_EVERY;
            match renew(&*store, &keys, &me, slot, &assignment).await {
                Ok(lost) => {
                    renewed = Instant::now();
                    for p in lost {
                        warn!(what = %keys.what, partition = p, member = %me, "another member took the partition; no longer reading it");
                        let _ = blocking(&reader, move |r| r.stop(p)).await;
                    }
                }
                Err(e) => {
                    if store_answers {
                        warn!(what = %keys.what, error = %e, "cannot renew the consumer leases");
                    }
                    store_answers = false;
                }
            }
            // Stop reading before the leases can lapse and another member takes them.
            let holds_any = slot.is_some() || {
                let a = lock(&assignment);
                !a.reading.is_empty() || !a.draining.is_empty()
            };
            if holds_any && renewed.elapsed() + RENEW_EVERY >= LEASE_TTL {
                let held = lock(&assignment).take_held();
                slot = None;
                for p in held {
                    let _ = blocking(&reader, move |r| r.stop(p)).await;
                }
                warn!(what = %keys.what, member = %me, "consumer leases not renewed in time; reading nothing until the store answers");
            }
        }

        match store.lease_holders(&all).await {
            Ok(holders) => {
                if !store_answers {
                    info!(what = %keys.what, "the store answers again; sharing partitions");
                }
                store_answers = true;
                let (slots, partitions) = holders.split_at(n);
                if slot.is_some_and(|k| slots[k].as_deref() != Some(me.as_str())) {
                    slot = None;
                }
                let draining = lock(&assignment).draining.clone();
                let step = plan(&me, slots, partitions, &draining);
                if let Some(k) = step.take_slot {
                    if matches!(store.lease(&keys.slots[k], &me, LEASE_TTL).await, Ok(true)) {
                        slot = Some(k);
                    }
                }
                let mut taken = Vec::new();
                for p in step.take {
                    if matches!(
                        store.lease(&keys.partitions[p], &me, LEASE_TTL).await,
                        Ok(true)
                    ) {
                        taken.push(p);
                    }
                }
                if !taken.is_empty() {
                    let starting = taken.clone();
                    match blocking(&reader, move |r| r.start(&starting)).await {
                        Ok(()) => {
                            lock(&assignment).reading.extend(&taken);
                            info!(what = %keys.what, partitions = ?taken, member = %me, "reading partitions");
                        }
                        Err(e) => {
                            warn!(what = %keys.what, partitions = ?taken, error = %e, "cannot start reading partitions");
                            for p in taken {
                                let _ = store.release(&keys.partitions[p], &me).await;
                            }
                        }
                    }
                }
                for p in step.give_up {
                    let _ = blocking(&reader, move |r| r.stop(p)).await;
                    let mut a = lock(&assignment);
                    a.reading.remove(&p);
                    a.draining.insert(p);
                    info!(what = %keys.what, partition = p, member = %me, "giving the partition up to another member");
                }
            }
            Err(e) => {
                if store_answers {
                    warn!(what = %keys.what, error = %e, "cannot read the consumer leases");
                }
                store_answers = false;
            }
        }

        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = wake.notified() => {}
            _ = stopped.changed() => {}
        }
    }
    // Whatever is still held goes (not committed: it comes again to the next reader).
    let held = lock(&assignment).take_held();
    for p in held {
        let _ = store.release(&keys.partitions[p], &me).await;
    }
    if let Some(k) = slot {
        let _ = store.release(&keys.slots[k], &me).await;
    }
}

/// Renews the slot and every held partition; answers the partitions found taken by another
/// member (dropped from the assignment).
async fn renew(
    store: &dyn Store,
    keys: &Keys,
    me: &str,
    slot: Option<usize>,
    assignment: &Mutex<Assignment>,
) -> Result<Vec<usize>, crate::store::StoreError> {
    if let Some(k) = slot {
        store.lease(&keys.slots[k], me, LEASE_TTL).await?;
    }
    let held: Vec<usize> = {
        let a = lock(assignment);
        a.reading.iter().chain(&a.draining).copied().collect()
    };
    let mut lost = Vec::new();
    for p in held {
        if !store.lease(&keys.partitions[p], me, LEASE_TTL).await? {
            lost.push(p);
        }
    }
    let mut a = lock(assignment);
    for p in &lost {
        a.reading.remove(p);
        a.draining.remove(p);
    }
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(spec: &[&str]) -> Vec<Option<String>> {
        spec.iter()
            .map(|h| (!h.is_empty()).then(|| h.to_string()))
            .collect()
    }

    #[test]
    fn a_lone_member_takes_a_slot_and_everything() {
        let p = plan(
            "a",
            &holders(&["", "", ""]),
            &holders(&["", "", ""]),
            &BTreeSet::new(),
        );
        assert_eq!(p.take_slot, Some(0));
        assert_eq!(p.take, vec![0, 1, 2]);
        assert!(p.give_up.is_empty());
    }

    #[test]
    fn a_member_over_its_share_gives_the_excess_up_once() {
        let slots = holders(&["a", "b", "", ""]);
        let parts = holders(&["a", "a", "a", "a"]);
        let p = plan("a", &slots, &parts, &BTreeSet::new());
        assert_eq!(p.take_slot, None);
        assert_eq!(p.give_up, vec![3, 2]);
        // Already draining those: nothing more to give up.
        let p = plan("a", &slots, &parts, &BTreeSet::from([2, 3]));
        assert!(p.give_up.is_empty(), "{p:?}");
    }

    #[test]
    fn a_newcomer_waits_for_partitions_to_be_free_and_takes_its_share() {
        let slots = holders(&["a", "", "", ""]);
        let p = plan(
            "b",
            &slots,
            &holders(&["a", "a", "a", "a"]),
            &BTreeSet::new(),
        );
        assert_eq!(p.take_slot, Some(1));
        assert!(p.take.is_empty());
        let p = plan(
            "b",
            &holders(&["a", "b", "", ""]),
            &holders(&["a", "a", "", ""]),
            &BTreeSet::new(),
        );
        assert_eq!(p.take, vec![2, 3]);
    }

    #[test]
    fn partitions_of_a_departed_member_are_taken_by_the_rest() {
        // c's slot and partitions lapsed; a and b share six partitions.
        let slots = holders(&["a", "b", "", "", "", ""]);
        let parts = holders(&["a", "a", "b", "b", "", ""]);
        let a = plan("a", &slots, &parts, &BTreeSet::new());
        let b = plan("b", &slots, &parts, &BTreeSet::new());
        assert_eq!(a.take.len(), 1);
        assert_eq!(b.take.len(), 1);
    }

    #[test]
    fn more_members_than_partitions_leaves_the_extra_ones_idle() {
        let slots = holders(&["a", "b"]);
        let p = plan("c", &slots, &holders(&["a", "b"]), &BTreeSet::new());
        assert_eq!(p, Plan::default());
    }
}
