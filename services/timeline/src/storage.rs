//! Home timelines and fan-out state in the store:
//!
//! * `home:<user>`: lexicographic sorted set of zero-padded tweet ids, capped to the newest
//!   `timeline_cap` (800) after every write; adding an id twice is a no-op, which makes a
//!   redelivered fan-out harmless;
//! * `fanout:<tweet id>`: the last follower name written, per page, so a crashed fan-out
//!   resumes after it; deleted when the fan-out completes;
//! * `celebrity:<user>`: set when an author had too many followers to fan out, so readers
//!   merge that author's tweets in at read time.

use std::sync::Arc;

use starling_runtime::store::{id_member, newest_ids, Store, StoreResult, Write};

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

    /// The two writes that put `tweet_id` into `user`'s home timeline and keep it capped.
    pub fn push_writes(&self, user: &str, tweet_id: u64, out: &mut Vec<Write>) {
        let key = home_key(user);
        out.push(Write::ZAdd {
            key: key.clone(),
            member: id_member(tweet_id),
        });
        out.push(Write::ZKeepLast {
            key,
            keep: self.cap,
        });
    }

    pub async fn push_many(&self, user: &str, tweet_ids: &[u64]) -> StoreResult<()> {
        let mut writes = Vec::with_capacity(tweet_ids.len() * 2);
        for &id in tweet_ids {
            self.push_writes(user, id, &mut writes);
        }
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

    /// Up to `limit` ids older than `before`, newest first.
    pub async fn page(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<u64>> {
        newest_ids(&*self.store, &home_key(user), before, limit).await
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
