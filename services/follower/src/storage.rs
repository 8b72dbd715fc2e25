//! The follow graph: lexicographic sorted sets of user names. Paging walks them by name
//! (`ZRANGEBYLEX` from the last name seen), so a million followers are read a page at a
//! time, never loaded at once.
//!
//! **Keys.** A follow is one atomic step with its outbox entry (keyed by the follower), so
//! every key it writes is in the follower's shard (`store::slot`):
//! * `following:{f}:<follower>`: whom a user follows, whole (a home timeline reads it on
//!   every page);
//! * `followers:{f}:<followee>`: the followers of a user *in shard `f`*; a user's followers
//!   are the union of [`SHARDS`] such parts, merged by name when read ([`FollowStorage::page`]).

use std::sync::Arc;

use futures::future::try_join_all;
use starling_runtime::store::slot::{shard_key, shard_of, user_key, SHARDS};
use starling_runtime::store::{Lex, Store, StoreResult, Write};

#[derive(Clone)]
pub struct FollowStorage {
    store: Arc<dyn Store>,
}

/// Which list of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Followers,
    Following,
}

/// The followers of `followee` who are in `shard`.
pub fn followers_part_key(shard: usize, followee: &str) -> String {
    shard_key("followers", shard, followee)
}

/// The part of `followee`'s followers that holds `follower`.
pub fn followers_key_of(follower: &str, followee: &str) -> String {
    followers_part_key(shard_of(follower), followee)
}

pub fn following_key(user: &str) -> String {
    user_key("following", user)
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
        let (ers, ing) = (
            followers_key_of(follower, followee),
            following_key(follower),
        );
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

    /// Up to `limit` names of `user`'s list after `after`, in name order. Followers are
    /// read from every part at once and merged: each part is asked for a share of the
    /// page, and the parts that had more are asked again from where the merge stopped, so
    /// a page costs about 1.5 × `limit` names read, not [`SHARDS`] times that.
    pub async fn page(
        &self,
        list: List,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if list == List::Following {
            return self
                .store
                .zrange_lex(&following_key(user), Lex::After(after), limit)
                .await;
        }
        let keys: Vec<String> = (0..SHARDS).map(|s| followers_part_key(s, user)).collect();
        let mut page: Vec<String> = Vec::new();
        let mut from = after.map(str::to_string);
        // The parts that may hold more names after `from`.
        let mut open: Vec<usize> = (0..SHARDS).collect();
        while page.len() < limit && !open.is_empty() {
            let want = limit - page.len();
            // An even share and half again, plus a few: enough that one round usually
            // fills the page (a part holds about an even share of any run of names).
            let even = want / open.len();
            let share = even + even / 2 + 8;
            let reads = try_join_all(open.iter().map(|&p| {
                self.store
                    .zrange_lex(&keys[p], Lex::After(from.as_deref()), share)
            }))
            .await?;
            // Names are certain up to the smallest last name of a part that gave a full
            // share (it may hold names before anything beyond that); a part that gave less
            // is exhausted.
            let bound = reads
                .iter()
                .filter(|r| r.len() == share)
                .filter_map(|r| r.last())
                .min()
                .cloned();
            let lasts: Vec<(bool, Option<String>)> = reads
                .iter()
                .map(|r| (r.len() == share, r.last().cloned()))
                .collect();
            let mut round: Vec<String> = reads
                .into_iter()
                .flatten()
                .filter(|n| bound.as_ref().is_none_or(|b| n <= b))
                .collect();
            round.sort_unstable();
            round.truncate(want);
            let Some(last) = round.last().cloned() else {
                break;
            };
            // A part stays open while it may hold names after `last`: it gave a full share,
            // or some of what it gave was not taken.
            open = open
                .iter()
                .zip(&lasts)
                .filter(|(_, (full, l))| *full || l.as_ref().is_some_and(|l| *l > last))
                .map(|(&p, _)| p)
                .collect();
            page.extend(round);
            from = Some(last);
        }
        Ok(page)
    }

    pub async fn count(&self, list: List, user: &str) -> StoreResult<u64> {
        match list {
            List::Following => self.store.zcard(&following_key(user)).await,
            List::Followers => Ok(try_join_all(
                (0..SHARDS)
                    .map(|s| async move { self.store.zcard(&followers_part_key(s, user)).await }),
            )
            .await?
            .into_iter()
            .sum()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_runtime::events::Message;
    use starling_runtime::outbox::Outbox;
    use starling_runtime::store::MemoryStore;

    async fn follow(s: &FollowStorage, follower: &str, followee: &str, on: bool) -> bool {
        let announce = Outbox::new("follower").entry(&Message::new("t", follower, vec![], 0));
        s.set(follower, followee, on, announce).await.unwrap()
    }

    /// Followers kept in parts, one per shard, read back as one list in name order, for
    /// any page size; a follow and an unfollow are each one atomic step.
    #[tokio::test]
    async fn followers_in_parts_page_as_one_list() {
        let s = FollowStorage::new(Arc::new(MemoryStore::new()));
        let mut all: Vec<String> = (0..157).map(|i| format!("user{i:03}")).collect();
        for f in &all {
            assert!(follow(&s, f, "star", true).await);
        }
        assert!(!follow(&s, "user000", "star", true).await);
        assert!(follow(&s, "user100", "star", false).await);
        all.retain(|u| u != "user100");
        assert_eq!(s.count(List::Followers, "star").await.unwrap(), 156);
        assert_eq!(s.count(List::Following, "user001").await.unwrap(), 1);
        for size in [1, 2, 7, 50, 156, 500] {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = s
                    .page(List::Followers, "star", after.as_deref(), size)
                    .await
                    .unwrap();
                assert!(page.len() <= size);
                seen.extend(page.iter().cloned());
                if page.len() < size {
                    break;
                }
                after = page.last().cloned();
            }
            assert_eq!(seen, all, "page size {size}");
        }
        assert_eq!(
            s.page(List::Following, "user005", None, 10).await.unwrap(),
            vec!["star".to_string()]
        );
    }
}
