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

    pub async fn is_following(&self, follower: &str, followee: &str) -> StoreResult<bool> {
        self.store
            .zcontains(&following_key(follower), followee)
            .await
    }

    /// Adds or removes the edge, both directions and `announce` (its outbox entry) in one
    /// atomic step; true if the graph changed (nothing is written otherwise).
    pub async fn set(
        &self,
        follower: &str,
        followee: &str,
        following: bool,
        announce: Write,
    ) -> StoreResult<bool> {
        if self.is_following(follower, followee).await? == following {
            return Ok(false);
        }
        let (ers, ing) = (followers_key(followee), following_key(follower));
        let (follower, followee) = (follower.to_string(), followee.to_string());
        let edge = if following {
            vec![
                Write::ZAdd {
                    key: ers,
                    member: follower,
                },
                Write::ZAdd {
                    key: ing,
                    member: followee,
                },
            ]
        } else {
            vec![
                Write::ZRem {
                    key: ers,
                    member: follower,
                },
                Write::ZRem {
                    key: ing,
                    member: followee,
                },
            ]
        };
        self.store
            .apply_atomic(edge.into_iter().chain([announce]).collect())
            .await?;
        Ok(true)
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
