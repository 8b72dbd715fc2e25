//! Picking one endpoint of a snapshot by the target's policy (see `balance/`): among the
//! endpoints neither ejected nor reporting NOT_SERVING, or among all of them when none is
//! left ("panic mode": trying one beats failing outright).
//!
//! **Zones.** A caller with a zone ([`crate::MeshConfig::zone`]) picks among the usable
//! endpoints of its own zone while there is one with fewer than
//! [`crate::MeshConfig::zone_spill_in_flight`] calls in flight; when its zone has no usable
//! endpoint, or every one is that busy, it picks among all usable endpoints (as Envoy's
//! zone-aware routing spills over). Picks are counted by locality
//! (`starling_client_zone_picks_total{target,locality="local"|"cross"}`), which gives the
//! cross-zone share.

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
    zone: Option<Zone>,
}

/// The caller's zone, and its picks by locality.
struct Zone {
    name: String,
    spill_at: usize,
    local: metrics::Counter,
    cross: metrics::Counter,
}

impl Picker {
    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            policy,
            // Callers that start together do not all begin with the same endpoint.
            next: AtomicUsize::new(rand::rng().random::<u32>() as usize),
            zone: None,
        }
    }

    /// Prefers endpoints in `zone` (see the module docs); calls to `target`.
    pub(crate) fn in_zone(mut self, target: &str, zone: &str, spill_at: usize) -> Self {
        let counter = |locality: &'static str| {
            metrics::counter!("starling_client_zone_picks_total",
                "target" => target.to_string(), "locality" => locality)
        };
        self.zone = Some(Zone {
            name: zone.to_string(),
            spill_at: spill_at.max(1),
            local: counter("local"),
            cross: counter("cross"),
        });
        self
    }

    /// The endpoint for a request with `headers`, counted by locality when the caller has
    /// a zone. `snap` must not be empty.
    pub(crate) fn pick(&self, snap: &Snapshot, headers: &http::HeaderMap) -> Arc<Endpoint> {
        let picked = self.pick_among(snap, headers);
        if let Some(z) = &self.zone {
            if picked.instance.zone == z.name {
                z.local.increment(1);
            } else {
                z.cross.increment(1);
            }
        }
        picked
    }

    /// The endpoint for a request with `headers` (consistent hashing reads one). `snap`
    /// must not be empty.
    fn pick_among(&self, snap: &Snapshot, headers: &http::HeaderMap) -> Arc<Endpoint> {
        let now = Instant::now();
        let all = &snap.endpoints;
        // Only the caller's zone while it has an endpoint that is usable and not too busy.
        let local_only = self.zone.as_ref().filter(|z| {
            all.iter()
                .any(|e| e.instance.zone == z.name && e.in_flight() < z.spill_at && e.usable(now))
        });
        let eligible =
            |e: &Endpoint| e.usable(now) && local_only.is_none_or(|z| e.instance.zone == z.name);
        let healthy = all.iter().filter(|e| eligible(e)).count();
        // Candidates are indexed without collecting them: this runs on every call.
        let panic_mode = healthy == 0;
        let n = if panic_mode { all.len() } else { healthy };
        let nth = |k: usize| -> &Arc<Endpoint> {
            if panic_mode {
                &all[k]
            } else {
                all.iter().filter(|e| eligible(e)).nth(k).unwrap_or(&all[0])
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
                let usable =
                    |id: &str| panic_mode || snap.by_id.get(id).is_some_and(|&i| eligible(&all[i]));
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
                // Over the same endpoints the two were drawn from.
                let in_flight: usize = all
                    .iter()
                    .filter(|e| panic_mode || eligible(e))
                    .map(|e| e.in_flight())
                    .sum();
                let mean = in_flight as f64 / n as f64;
                if ea.load(mean) <= eb.load(mean) {
                    ea.clone()
                } else {
                    eb.clone()
                }
            }
        }
    }
}
