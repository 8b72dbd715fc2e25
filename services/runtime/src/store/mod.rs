//! Storage: the small subset of Redis the services use, behind one trait, so that the
//! embedded mode runs the same service code on [`MemoryStore`] and production on
//! [`RedisStore`] (deadpool-redis). [`contract`] checks both behave the same.
//!
//! Id-ordered collections (timelines, per-author tweets, followers) are *lexicographic*
//! sorted sets: every member has score 0 and the member itself carries the order. Tweet
//! ids are 64-bit Snowflakes, which a Redis score (an f64) cannot hold exactly, so they are
//! stored as zero-padded decimal strings ([`id_member`]), whose byte order is numeric order.
//! Scored sets ([`Write::ZIncr`], [`Store::ztop`]) hold real numbers such as popularity.

#[cfg(any(test, feature = "contract"))]
pub mod contract;
mod memory;
mod redis;
pub mod slot;

use std::time::Duration;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
pub use self::redis::{redacted as redacted_url, RedisStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("key {0:?} holds another kind of value")]
    WrongType(String),
    /// An atomic step named keys of several slots: a Redis Cluster cannot apply it, so no
    /// store does (see [`slot`]). A bug in the caller's key design, never the user's input.
    #[error("an atomic step spans several hash slots ({0}); its keys must share a hash tag")]
    CrossSlot(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A zero-padded decimal id: lexicographic order equals numeric order.
pub fn id_member(id: u64) -> String {
    format!("{id:020}")
}

/// The inverse of [`id_member`]; `None` for anything else.
pub fn parse_id_member(member: &str) -> Option<u64> {
    (member.len() == 20).then(|| member.parse().ok()).flatten()
}

/// Up to `limit` ids of an id-ordered set (see the module docs) older than `before`,
/// newest first: the read behind every cursor-paged, newest-first list.
pub async fn newest_ids(
    store: &dyn Store,
    key: &str,
    before: Option<u64>,
    limit: usize,
) -> StoreResult<Vec<u64>> {
    let cursor = before.map(id_member);
    let members = store
        .zrange_lex(key, Lex::Before(cursor.as_deref()), limit)
        .await?;
    Ok(members.iter().filter_map(|m| parse_id_member(m)).collect())
}

impl Write {
    /// The key it writes.
    pub fn key(&self) -> &str {
        match self {
            Write::Set { key, .. }
            | Write::Del { key }
            | Write::ZAdd { key, .. }
            | Write::ZRem { key, .. }
            | Write::ZKeepLast { key, .. }
            | Write::ZIncr { key, .. }
            | Write::ZKeepTop { key, .. }
            | Write::HSet { key, .. }
            | Write::HDel { key, .. }
            | Write::XAdd { key, .. }
            | Write::XDel { key, .. }
            | Write::XTrimBefore { key, .. } => key,
        }
    }
}

/// Refuses an atomic step whose writes are not in one slot ([`slot::one_slot`]).
pub(crate) fn check_one_slot(writes: &[Write]) -> StoreResult<()> {
    if slot::one_slot(writes.iter().map(Write::key)) {
        return Ok(());
    }
    let mut keys: Vec<&str> = writes.iter().map(Write::key).collect();
    keys.dedup();
    Err(StoreError::CrossSlot(keys.join(", ")))
}

/// Direction and start of a lexicographic range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lex<'a> {
    /// Ascending, members strictly after the given one (`None`: from the start).
    After(Option<&'a str>),
    /// Descending, members strictly before the given one (`None`: from the end).
    Before(Option<&'a str>),
}

/// One write of a pipelined batch ([`Store::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Set {
        key: String,
        value: Vec<u8>,
    },
    Del {
        key: String,
    },
    /// Adds to a lexicographic sorted set.
    ZAdd {
        key: String,
        member: String,
    },
    ZRem {
        key: String,
        member: String,
    },
    /// Keeps the `keep` greatest members of a lexicographic sorted set (the newest ids).
    ZKeepLast {
        key: String,
        keep: usize,
    },
    /// Adds `delta` to a member's score in a scored set.
    ZIncr {
        key: String,
        member: String,
        delta: f64,
    },
    /// Keeps the `keep` highest-scored members of a scored set.
    ZKeepTop {
        key: String,
        keep: usize,
    },
    HSet {
        key: String,
        field: String,
        value: Vec<u8>,
    },
    /// Removes a field of a hash (nothing if absent; an emptied hash goes).
    HDel {
        key: String,
        field: String,
    },
    /// Appends an entry to a stream; the store assigns its id (increasing in commit order).
    XAdd {
        key: String,
        fields: Vec<(String, Vec<u8>)>,
    },
    /// Removes one entry of a stream.
    XDel {
        key: String,
        id: String,
    },
    /// Removes the entries of a stream older than `min_ms` milliseconds since the epoch
    /// (by their ids, which start with the time they were added).
    XTrimBefore {
        key: String,
        min_ms: u64,
    },
}

/// One entry of a stream (see [`Write::XAdd`]), as [`Store::xread`] returns it. Its id is
/// `<ms>-<seq>`: the time it was added, in milliseconds since the epoch, and a sequence
/// number within that millisecond; ids increase in the order entries were added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// `<ms>-<seq>`, as Redis writes them; compare with [`stream_id_order`].
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// The numeric order of a stream id (`<ms>-<seq>`); `None` for anything else.
pub fn stream_id_order(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// One round trip for many keys; answers in the order of `keys`.
    async fn mget(&self, keys: &[String]) -> StoreResult<Vec<Option<Vec<u8>>>>;
    /// Adds to a lexicographic sorted set; true if the member was new.
    async fn zadd(&self, key: &str, member: &str) -> StoreResult<bool>;
    /// True if the member was there.
    async fn zrem(&self, key: &str, member: &str) -> StoreResult<bool>;
    async fn zcard(&self, key: &str) -> StoreResult<u64>;
    async fn zcontains(&self, key: &str, member: &str) -> StoreResult<bool>;
    /// At most `limit` members of a lexicographic sorted set, from `from`.
    async fn zrange_lex(&self, key: &str, from: Lex<'_>, limit: usize) -> StoreResult<Vec<String>>;
    /// The `limit` highest-scored members of a scored set, highest first.
    async fn ztop(&self, key: &str, limit: usize) -> StoreResult<Vec<(String, f64)>>;
    async fn hgetall(&self, key: &str) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Applies writes in order, pipelined (one round trip per chunk; on a Redis Cluster, one
    /// per master, in parallel); not atomic. Writes to one key keep their order.
    async fn apply(&self, writes: Vec<Write>) -> StoreResult<()>;
    /// Applies writes in order as one atomic step (Redis MULTI/EXEC): no reader sees a part
    /// of them, and a crash of the caller or a lost connection cannot leave a part applied.
    /// Their keys must be in one Redis Cluster slot ([`slot::one_slot`]), or nothing is
    /// written and the answer is [`StoreError::CrossSlot`].
    /// This is what makes the outbox work: a change and the event announcing it are stored
    /// together or not at all. (As in Redis, a write that fails inside the step, such as
    /// one on a key of another type, does not undo the others; the call reports the error.)
    async fn apply_atomic(&self, writes: Vec<Write>) -> StoreResult<()>;
    /// Up to `count` entries of stream `key` with ids after `after` (`"0"`: from the
    /// start), oldest first. When there is none, waits up to `block` for one to be added.
    async fn xread(
        &self,
        key: &str,
        after: &str,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>>;
    /// Entries in stream `key`.
    async fn xlen(&self, key: &str) -> StoreResult<u64>;
    /// Takes the lease `key` for `holder` if it is free or expired, or renews it if
    /// `holder` has it; true while `holder` holds it. The lease lapses `ttl` after the last
    /// successful call unless renewed.
    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<bool>;
    /// Gives the lease `key` up if `holder` has it.
    async fn release(&self, key: &str, holder: &str) -> StoreResult<()>;
    /// Sets `key` to `value` unless it is set, for `ttl` (`None`: for good); answers what it
    /// held (`None`: this call set it). One atomic step, so of two racing callers exactly
    /// one gets `None`: what makes a write with an idempotency key happen once, and a user
    /// name belong to one account.
    async fn claim(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<Option<Vec<u8>>>;
    /// Who holds each of the leases `keys` (`None`: free or lapsed), in one round trip: how
    /// consumers see each other's share of a topic's partitions (`events::ownership`).
    async fn lease_holders(&self, keys: &[String]) -> StoreResult<Vec<Option<String>>>;
    /// Checks the store answers.
    async fn ping(&self) -> StoreResult<()>;
    /// Sends `payload` to the current subscribers of `channel` (Redis PUBLISH): at most
    /// once, to those connected now; nothing is kept for later. For wake-ups whose loss a
    /// subscriber can make good by reading the data itself, never for the data.
    async fn publish(&self, channel: &str, payload: &[u8]) -> StoreResult<()>;
    /// The messages published on `channel` from now on. The stream ends when the
    /// subscription breaks (the connection dropped, or the subscriber fell too far behind):
    /// messages may then have been missed, so the caller catches up from the data and
    /// subscribes again.
    async fn subscribe(&self, channel: &str) -> StoreResult<Subscription>;
}

/// What [`Store::subscribe`] answers: payloads, in publication order, until it breaks.
pub type Subscription = futures::stream::BoxStream<'static, Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_members_sort_numerically() {
        let mut ids = [3u64, 1 << 60, 42, u64::MAX, 0, 1_000_000];
        let mut members: Vec<String> = ids.iter().map(|&i| id_member(i)).collect();
        members.sort();
        ids.sort();
        let back: Vec<u64> = members
            .iter()
            .map(|m| parse_id_member(m).unwrap())
            .collect();
        assert_eq!(back, ids);
        assert_eq!(parse_id_member("42"), None);
    }
}
