//! Snowflake ids: 41 bits of milliseconds since 2024-01-01, 10 bits of worker id, 12 bits
//! of sequence. Ids sort by creation time, which is what timelines are ordered by.
//!
//! The worker id is a [`Claim`] (an etcd key under a lease in production), so no two live
//! instances share one. While the claim is not held, no id is issued.
//!
//! The clock: the generator keeps a logical millisecond that never goes backwards. If the
//! wall clock steps back (NTP), ids continue from the last millisecond issued, and if a
//! millisecond's 4,096 sequence numbers run out, the logical clock moves one millisecond
//! ahead instead of waiting. Ids stay unique and increasing either way.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use starling_discovery::Claim;

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const WORKER_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const MAX_WORKERS: u32 = 1 << WORKER_BITS;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("worker id {0} is not currently held (registry unreachable?); not issuing ids")]
    ClaimLost(u32),
}

enum Worker {
    Claimed(Claim),
    Fixed(u32),
}

pub struct Snowflake {
    worker: Worker,
    /// (logical millisecond since EPOCH_MS, last sequence used in it)
    state: Mutex<(u64, u64)>,
}

impl std::fmt::Debug for Snowflake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snowflake")
            .field("worker", &self.worker_id())
            .finish()
    }
}

fn wall_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(EPOCH_MS);
    now.saturating_sub(EPOCH_MS)
}

impl Snowflake {
    pub fn new(claim: Claim) -> Self {
        Self {
            worker: Worker::Claimed(claim),
            state: Mutex::new((0, 0)),
        }
    }

    /// A generator with a fixed worker id (tests and benchmarks).
    pub fn fixed(worker: u32) -> Self {
        Self {
            worker: Worker::Fixed(worker % MAX_WORKERS),
            state: Mutex::new((0, 0)),
        }
    }

    pub fn worker_id(&self) -> u32 {
        match &self.worker {
            Worker::Claimed(c) => c.id % MAX_WORKERS,
            Worker::Fixed(w) => *w,
        }
    }

    /// Whether ids can be issued now (for the health monitor).
    pub fn check(&self) -> Result<(), String> {
        match &self.worker {
            Worker::Claimed(c) if !c.is_valid() => Err(IdError::ClaimLost(c.id).to_string()),
            _ => Ok(()),
        }
    }

    pub fn next_id(&self) -> Result<u64, IdError> {
        if let Worker::Claimed(c) = &self.worker {
            if !c.is_valid() {
                return Err(IdError::ClaimLost(c.id));
            }
        }
        Ok(self.next_at(wall_ms()))
    }

    fn next_at(&self, wall: u64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last_ms, last_seq) = *state;
        let (ms, seq) = if wall > last_ms {
            (wall, 0)
        } else if last_seq < MAX_SEQUENCE {
            // Same millisecond, or the clock went back: continue from the last one.
            (last_ms, last_seq + 1)
        } else {
            (last_ms + 1, 0)
        };
        *state = (ms, seq);
        (ms << (WORKER_BITS + SEQUENCE_BITS)) | (u64::from(self.worker_id()) << SEQUENCE_BITS) | seq
    }
}

/// The creation time of a Snowflake id, in Unix milliseconds.
pub fn id_time_ms(id: u64) -> u64 {
    (id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_worker_and_time() {
        let g = Snowflake::fixed(7);
        let mut last = 0;
        for _ in 0..10_000 {
            let id = g.next_id().unwrap();
            assert!(id > last);
            last = id;
        }
        assert_eq!((last >> SEQUENCE_BITS) & (MAX_WORKERS as u64 - 1), 7);
        let t = id_time_ms(last);
        let now = wall_ms() + EPOCH_MS;
        assert!(now.abs_diff(t) < 5_000, "{t} vs {now}");
    }

    #[test]
    fn clock_going_back_keeps_ids_increasing() {
        let g = Snowflake::fixed(1);
        let a = g.next_at(1_000_000);
        let b = g.next_at(999_000); // NTP stepped back a second
        let c = g.next_at(999_500);
        assert!(a < b && b < c);
        assert_eq!(
            id_time_ms(b),
            id_time_ms(a),
            "continues from the last millisecond"
        );
    }

    #[test]
    fn exhausted_sequence_moves_the_logical_clock_ahead() {
        let g = Snowflake::fixed(1);
        let ids: Vec<u64> = (0..=MAX_SEQUENCE + 1).map(|_| g.next_at(5)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(id_time_ms(*ids.last().unwrap()) - EPOCH_MS, 6);
    }

    #[test]
    fn workers_never_collide() {
        let a = Snowflake::fixed(1);
        let b = Snowflake::fixed(2);
        let ids_a: std::collections::HashSet<u64> = (0..1000).map(|_| a.next_at(42)).collect();
        assert!((0..1000).all(|_| !ids_a.contains(&b.next_at(42))));
    }
}
