//! Storage: the small subset of Redis the services use, behind one trait, so that the
//! embedded mode runs the same service code on [`MemoryStore`] and production on
//! [`RedisStore`] (deadpool-redis). [`contract`] checks both behave the same.
//!
//! Id-ordered collections (timelines, per-author tweets, followers) are *lexicographic*
//! sorted sets: every member has score 0 and the member itself carries the order. Tweet
//! ids are 64-bit Snowflakes, which a Redis score (an f64) cannot hold exactly, so they are
//! stored as zero-padded decimal strings ([`id_member`]), whose byte order is numeric order.
//! Scored sets ([`Write::ZIncr`], [`Store::ztop`]) hold real numbers such as popularity.

pub mod contract;
mod memory;
mod redis;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("key {0:?} holds another kind of value")]
    WrongType(String),
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
    /// Applies writes in order, pipelined (one round trip per chunk); not atomic.
    async fn apply(&self, writes: Vec<Write>) -> StoreResult<()>;
}

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
