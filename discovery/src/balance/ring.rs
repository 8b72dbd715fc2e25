//! A consistent-hash ring with virtual nodes.
//!
//! Each endpoint owns `points_per_weight * weight` points placed by hashing
//! `<instance-id>#<n>`, so the placement depends only on the instance's own id: when one of
//! N endpoints joins or leaves, only the keys on the arcs it owns (about 1/N) move, and
//! every other key keeps its endpoint. xxh3 is used because it is stable across processes
//! and Rust versions (std's hasher is not guaranteed to be), so two gateways agree.

use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, Clone, Default)]
pub struct HashRing {
    /// (point, index into `members`), sorted by point.
    points: Vec<(u64, usize)>,
    members: Vec<String>,
}

/// Enough points that each of a handful of endpoints gets a share within a few percent.
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 160;

/// Weights come from the registry, i.e. from outside the process: a typo of `1000000`
/// must not make every client build a ring of 160 million points.
pub const MAX_WEIGHT: u32 = 100;

impl HashRing {
    /// `members` are (instance id, weight) pairs.
    pub fn new<'a>(
        members: impl IntoIterator<Item = (&'a str, u32)>,
        points_per_weight: u32,
    ) -> Self {
        let mut ring = HashRing::default();
        for (id, weight) in members {
            let idx = ring.members.len();
            ring.members.push(id.to_string());
            for n in 0..points_per_weight.saturating_mul(weight.clamp(1, MAX_WEIGHT)) {
                ring.points
                    .push((xxh3_64(format!("{id}#{n}").as_bytes()), idx));
            }
        }
        ring.points.sort_unstable();
        ring
    }

    pub fn hash_key(key: &[u8]) -> u64 {
        xxh3_64(key)
    }

    /// The owner of `hash`: the first point clockwise from it (what the tests check the
    /// ring's spread and stability on; the picker uses [`HashRing::owner_where`]).
    #[cfg(test)]
    pub fn owner(&self, hash: u64) -> Option<&str> {
        self.owner_where(hash, |_| true)
    }

    /// The first member clockwise from `hash` that `usable` accepts, so that an ejected
    /// endpoint's keys spill to their ring successors instead of being reshuffled.
    pub fn owner_where(&self, hash: u64, mut usable: impl FnMut(&str) -> bool) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < hash);
        let n = self.points.len();
        let mut tried = vec![false; self.members.len()];
        let mut remaining = self.members.len();
        for i in 0..n {
            let (_, idx) = self.points[(start + i) % n];
            if tried[idx] {
                continue;
            }
            let id = self.members[idx].as_str();
            if usable(id) {
                return Some(id);
            }
            tried[idx] = true;
            remaining -= 1;
            if remaining == 0 {
                break;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ring(ids: &[&str]) -> HashRing {
        HashRing::new(ids.iter().map(|i| (*i, 1)), DEFAULT_POINTS_PER_WEIGHT)
    }

    fn owners(r: &HashRing, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                r.owner(HashRing::hash_key(format!("user{k}").as_bytes()))
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn same_key_same_owner_and_balanced_share() {
        let r = ring(&["a", "b", "c", "d"]);
        let o = owners(&r, 20_000);
        assert_eq!(o, owners(&r, 20_000), "deterministic");
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for x in &o {
            *counts.entry(x).or_default() += 1;
        }
        for (id, c) in counts {
            // Fair share is 5,000; allow 20% either way.
            assert!((4_000..=6_000).contains(&c), "{id} got {c}");
        }
    }

    #[test]
    fn removing_one_of_four_moves_only_its_keys() {
        let before = owners(&ring(&["a", "b", "c", "d"]), 20_000);
        let after = owners(&ring(&["a", "b", "c"]), 20_000);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(b, "d", "a key not owned by the leaving node moved");
                moved += 1;
            }
        }
        let owned_by_d = before.iter().filter(|o| *o == "d").count();
        assert_eq!(moved, owned_by_d);
    }

    #[test]
    fn adding_one_moves_about_a_fifth() {
        let before = owners(&ring(&["a", "b", "c", "d"]), 20_000);
        let after = owners(&ring(&["a", "b", "c", "d", "e"]), 20_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        for (b, a) in before.iter().zip(&after) {
            assert!(b == a || a == "e", "keys only move to the newcomer");
        }
        let share = moved as f64 / 20_000.0;
        assert!((0.15..0.25).contains(&share), "moved {share}");
    }

    #[test]
    fn unusable_owner_spills_to_successor() {
        let r = ring(&["a", "b", "c"]);
        for k in 0..1000 {
            let h = HashRing::hash_key(format!("k{k}").as_bytes());
            let owner = r.owner(h).unwrap().to_string();
            let alt = r.owner_where(h, |id| id != owner).unwrap();
            assert_ne!(alt, owner);
        }
        assert_eq!(r.owner_where(1, |_| false), None);
        assert_eq!(HashRing::default().owner(1), None);
    }

    #[test]
    fn absurd_weights_are_capped() {
        let r = HashRing::new([("a", u32::MAX)], DEFAULT_POINTS_PER_WEIGHT);
        assert_eq!(
            r.points.len(),
            (DEFAULT_POINTS_PER_WEIGHT * MAX_WEIGHT) as usize
        );
    }

    #[test]
    fn weight_scales_share() {
        let r = HashRing::new([("a", 1), ("b", 3)], DEFAULT_POINTS_PER_WEIGHT);
        let b = owners(&r, 20_000).iter().filter(|o| *o == "b").count();
        let share = b as f64 / 20_000.0;
        assert!((0.68..0.82).contains(&share), "b share {share}");
    }
}
