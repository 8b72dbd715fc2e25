//! The follow graph: `followers:<user>` and `following:<user>`, lexicographic sorted sets
//! of user names. Paging walks them by name (`ZRANGEBYLEX` from the last name seen), so a
//! million followers are read a page at a time, never loaded at once.

use std::sync::Arc;

use starling_runtime::store::{Lex, Store, StoreResult, Write};

#[derive(Clone)]
pub struct FollowStorage {
    store: Arc<dyn Store>,
}

pub fn followers_key(user: &str) -> String {
    format!("followers:{user}")
}

pub fn following_key(user: &str) -> String {
    format!("following:{user}")
}

impl FollowStorage {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Adds the edge; true if it is new.
    pub async fn follow(&self, follower: &str, followee: &str) -> StoreResult<bool> {
        let added = self.store.zadd(&followers_key(followee), follower).await?;
        // Written every time (idempotent), so a half-written earlier attempt is completed.
        self.store
            .apply(vec![Write::ZAdd {
                key: following_key(follower),
                member: followee.to_string(),
            }])
            .await?;
        Ok(added)
    }

    /// Removes the edge; true if it existed.
    pub async fn unfollow(&self, follower: &str, followee: &str) -> StoreResult<bool> {
        let removed = self.store.zrem(&followers_key(followee), follower).await?;
        self.store
            .apply(vec![Write::ZRem {
                key: following_key(follower),
                member: followee.to_string(),
            }])
            .await?;
        Ok(removed)
    }

    pub async fn page(
        &self,
        key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.store.zrange_lex(key, Lex::After(after), limit).await
    }

    pub async fn count(&self, key: &str) -> StoreResult<u64> {
        self.store.zcard(key).await
    }
}
