//! Home timelines and fan-out state in the store:
//!
//! * `home:<user>`: lexicographic sorted set of zero-padded tweet ids; adding an id twice is
//!   a no-op, which makes a redelivered fan-out harmless. Readers see the newest
//!   `timeline_cap` (800). A fan-out trims a timeline back to the cap on about one write
//!   in [`TRIM_EVERY`] (the rest are a single ZADD, half the Redis commands), so between
//!   trims a timeline holds a few more; [`TimelineStorage::page`] never shows them;
//! * `fanout:<tweet id>`: the last follower name written, per page, so a crashed fan-out
//!   resumes after it; deleted when the fan-out completes;
//! * `celebrity:<user>`: set when an author had too many followers to fan out, so readers
//!   merge that author's tweets in at read time.

use std::sync::Arc;

use starling_runtime::store::{id_member, newest_ids, Store, StoreResult, Write};

/// A timeline is trimmed back to the cap on about one write in this many.
pub const TRIM_EVERY: u64 = 8;

/// Whether adding `tweet_id` to `user`'s timeline also trims it.
fn trim_due(user: &str, tweet_id: u64) -> bool {
    xxhash_rust::xxh3::xxh3_64_with_seed(user.as_bytes(), tweet_id).is_multiple_of(TRIM_EVERY)
}

#[derive(Clone)]
pub struct TimelineStorage {
    store: Arc<dyn Store>,
    cap: usize,
}

pub fn home_key(user: &str) -> String {
    format!("home:{user}")
}

pub fn checkpoint_key(tweet_id: u64) -> String {
    format!("fanout:{tweet_id}")
}

pub fn celebrity_key(user: &str) -> String {
    format!("celebrity:{user}")
}

impl TimelineStorage {
    pub fn new(store: Arc<dyn Store>, cap: usize) -> Self {
        Self { store, cap }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The writes that put `tweet_id` into `user`'s home timeline: the add, and on about
    /// one (user, tweet) in [`TRIM_EVERY`] the trim back to the cap. Which ones is a hash
    /// of both, so every fan-out trims an even share of its followers and every timeline
    /// is trimmed about every [`TRIM_EVERY`] tweets, whatever the ids look like.
    pub fn push_writes(&self, user: &str, tweet_id: u64, out: &mut Vec<Write>) {
        let key = home_key(user);
        let member = id_member(tweet_id);
        if trim_due(user, tweet_id) {
            out.push(Write::ZAdd {
                key: key.clone(),
                member,
            });
            out.push(Write::ZKeepLast {
                key,
                keep: self.cap,
            });
        } else {
            out.push(Write::ZAdd { key, member });
        }
    }

    /// Adds `tweet_ids` to `user`'s timeline and trims it to the cap (a handful of ids:
    /// the author's own tweet, a follow's backfill).
    pub async fn push_many(&self, user: &str, tweet_ids: &[u64]) -> StoreResult<()> {
        let key = home_key(user);
        let mut writes: Vec<Write> = tweet_ids
            .iter()
            .map(|&id| Write::ZAdd {
                key: key.clone(),
                member: id_member(id),
            })
            .collect();
        writes.push(Write::ZKeepLast {
            key,
            keep: self.cap,
        });
        self.store.apply(writes).await
    }

    pub async fn remove_many(&self, user: &str, tweet_ids: &[u64]) -> StoreResult<()> {
        let key = home_key(user);
        let writes = tweet_ids
            .iter()
            .map(|&id| Write::ZRem {
                key: key.clone(),
                member: id_member(id),
            })
            .collect();
        self.store.apply(writes).await
    }

    /// Up to `limit` ids older than `before`, newest first, from the newest `cap` only
    /// (a timeline not trimmed lately holds a few older ones, which no reader sees). A
    /// first page is one range read; a later page reads the newest `cap` ids to know
    /// where the cap falls.
    pub async fn page(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<u64>> {
        let key = home_key(user);
        match before {
            None if limit <= self.cap => newest_ids(&*self.store, &key, None, limit).await,
            _ => {
                let visible = newest_ids(&*self.store, &key, None, self.cap).await?;
                Ok(visible
                    .into_iter()
                    .filter(|id| before.is_none_or(|b| *id < b))
                    .take(limit)
                    .collect())
            }
        }
    }

    pub async fn contains(&self, user: &str, tweet_id: u64) -> StoreResult<bool> {
        self.store
            .zcontains(&home_key(user), &id_member(tweet_id))
            .await
    }

    pub async fn checkpoint(&self, tweet_id: u64) -> StoreResult<Option<String>> {
        Ok(self
            .store
            .get(&checkpoint_key(tweet_id))
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub fn checkpoint_write(tweet_id: u64, after: &str) -> Write {
        Write::Set {
            key: checkpoint_key(tweet_id),
            value: after.as_bytes().to_vec(),
        }
    }

    pub async fn finish(&self, tweet_id: u64) -> StoreResult<()> {
        self.store
            .apply(vec![Write::Del {
                key: checkpoint_key(tweet_id),
            }])
            .await
    }

    pub async fn mark_celebrity(&self, user: &str) -> StoreResult<()> {
        self.store
            .apply(vec![Write::Set {
                key: celebrity_key(user),
                value: b"1".to_vec(),
            }])
            .await
    }

    /// Which of `users` are celebrities (one MGET).
    pub async fn celebrities(&self, users: &[String]) -> StoreResult<Vec<String>> {
        let keys: Vec<String> = users.iter().map(|u| celebrity_key(u)).collect();
        let marks = self.store.mget(&keys).await?;
        Ok(users
            .iter()
            .zip(marks)
            .filter_map(|(u, m)| m.map(|_| u.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_runtime::store::{Lex, MemoryStore};

    #[tokio::test]
    async fn readers_see_the_newest_cap_while_trims_are_lazy() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let storage = TimelineStorage::new(store.clone(), 100);
        let mut most = 0;
        let mut commands = 0;
        for id in 1..=2_000u64 {
            let mut writes = Vec::new();
            storage.push_writes("u", id, &mut writes);
            commands += writes.len();
            store.apply(writes).await.unwrap();
            most = most.max(store.zcard("home:u").await.unwrap());
        }
        // About one trim in eight, and the set never far above the cap.
        assert!((2_100..2_500).contains(&commands), "{commands} commands");
        assert!(most <= 100 + 64, "held {most}");
        // Every way of reading shows exactly the newest 100.
        let first = storage.page("u", None, 1_000).await.unwrap();
        assert_eq!(first, (1_901..=2_000).rev().collect::<Vec<u64>>());
        let mut paged = Vec::new();
        let mut before = None;
        loop {
            let page = storage.page("u", before, 30).await.unwrap();
            if page.is_empty() {
                break;
            }
            before = page.last().copied();
            paged.extend(page);
        }
        assert_eq!(paged, first);
        // Whatever is stored beyond the cap is older than what readers see.
        let all = store
            .zrange_lex("home:u", Lex::Before(None), 1_000)
            .await
            .unwrap();
        assert!(all.len() >= 100);
    }
}
