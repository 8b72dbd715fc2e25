//! Picking one endpoint of a snapshot by the target's policy (see `balance/`): among the
//! endpoints neither ejected nor reporting NOT_SERVING, or among all of them when none is
//! left ("panic mode": trying one beats failing outright).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use super::endpoint::Endpoint;
use super::snapshot::Snapshot;
use crate::balance::ring::HashRing;
use crate::balance::Policy;

/// A target's policy and its round-robin position.
pub(crate) struct Picker {
    pub(crate) policy: Policy,
    next: AtomicUsize,
}

impl Picker {
    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            policy,
            // Callers that start together do not all begin with the same endpoint.
            next: AtomicUsize::new(rand::rng().random::<u32>() as usize),
        }
    }

    /// The endpoint for a request with `headers` (consistent hashing reads one). `snap`
    /// must not be empty.
    pub(crate) fn pick(&self, snap: &Snapshot, headers: &http::HeaderMap) -> Arc<Endpoint> {
        let now = Instant::now();
        let all = &snap.endpoints;
        let healthy = all.iter().filter(|e| e.usable(now)).count();
        // Candidates are indexed without collecting them: this runs on every call.
        let panic_mode = healthy == 0;
        let n = if panic_mode { all.len() } else { healthy };
        let nth = |k: usize| -> &Arc<Endpoint> {
            if panic_mode {
                &all[k]
            } else {
                all.iter()
                    .filter(|e| e.usable(now))
                    .nth(k)
                    .unwrap_or(&all[0])
            }
        };
        let round_robin = || nth(self.next.fetch_add(1, Ordering::Relaxed) % n).clone();
        match &self.policy {
            Policy::RoundRobin => round_robin(),
            Policy::ConsistentHash { header } => {
                let Some(key) = headers.get(header.as_str()) else {
                    return round_robin();
                };
                let hash = HashRing::hash_key(key.as_bytes());
                let usable = |id: &str| {
                    panic_mode || snap.by_id.get(id).is_some_and(|&i| all[i].usable(now))
                };
                snap.ring
                    .owner_where(hash, usable)
                    .and_then(|id| snap.by_id.get(id))
                    .map(|&i| all[i].clone())
                    .unwrap_or_else(round_robin)
            }
            Policy::P2cEwma => {
                if n == 1 {
                    return nth(0).clone();
                }
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (ea, eb) = (nth(a), nth(b));
                if ea.load() <= eb.load() {
                    ea.clone()
                } else {
                    eb.clone()
                }
            }
        }
    }
}
