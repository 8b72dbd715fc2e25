//! Where recommendation state lives. Everything is derived from events (TweetTagged and
//! Engagement), so all of it could be rebuilt by replaying them; every collection is
//! capped so no key grows without bound.
//!
//! | key | kind | holds |
//! |---|---|---|
//! | `rec:tweet:<id>` | bytes | `author\ttag1,tag2`: what ranking needs of a tagged tweet, without a call to the tweet service per candidate |
//! | `rec:tag:<tag>` | lexicographic set | ids of tweets tagged `<tag>` ([`id_member`]), the newest [`TAG_CAP`] |
//! | `rec:recent` | lexicographic set | ids of all tagged tweets, the newest [`RECENT_CAP`]: the cold-start fallback |
//! | `rec:popular:<epoch>` | scored set | forward-decayed popularity of the week `<epoch>` (see [`crate::scoring`]), the top [`POPULAR_CAP`] |
//! | `rec:profile:{shard}:<user>` | hash | tag → `score:updated_ms` ([`TagScore`]), decayed on read |
//! | `rec:engaged:{shard}:<user>` | lexicographic set | ids the user engaged with, never recommended again, the newest [`ENGAGED_CAP`] |
//! | `rec:engagements:{shard}:<user>` | lexicographic set | `<id_member>:<kind>` of every engagement already counted, so a redelivered or repeated one changes nothing |
//!
//! The popularity set is one per week because forward decay with a fixed origin would
//! overflow an f64 (the module documentation of [`crate::scoring`] explains); writes delete
//! the set of two weeks ago, which reads no longer look at.
//!
//! A profile is read, updated and written back, which is safe because Engagement events are
//! keyed by user: one user's events are handled in order, by one consumer at a time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use starling_proto::recommendation::v1::EngagementKind;
use starling_runtime::store::{id_member, parse_id_member, Lex, Store, StoreResult, Write};

use crate::scoring::{popularity_at, popularity_epoch, TagScore, TweetMeta};

/// Tweets kept per tag.
pub const TAG_CAP: usize = 500;
/// Tweets kept in `rec:recent`.
pub const RECENT_CAP: usize = 1_000;
/// Tweets kept per popularity set.
pub const POPULAR_CAP: usize = 1_000;
/// Engaged tweets kept per user.
pub const ENGAGED_CAP: usize = 2_000;
/// Counted engagements kept per user (two kinds per engaged tweet).
pub const ENGAGEMENTS_CAP: usize = 2 * ENGAGED_CAP;

pub fn tweet_key(id: u64) -> String {
    format!("rec:tweet:{id}")
}

pub fn tag_key(tag: &str) -> String {
    format!("rec:tag:{tag}")
}

pub const RECENT_KEY: &str = "rec:recent";

pub fn popular_key(epoch: i64) -> String {
    format!("rec:popular:{epoch}")
}

pub fn profile_key(user: &str) -> String {
    starling_runtime::store::slot::user_key("rec:profile", user)
}

pub fn engaged_key(user: &str) -> String {
    starling_runtime::store::slot::user_key("rec:engaged", user)
}

pub fn engagements_key(user: &str) -> String {
    starling_runtime::store::slot::user_key("rec:engagements", user)
}

/// The member of `rec:engagements:<user>` for one engagement.
pub fn engagement_member(id: u64, kind: EngagementKind) -> String {
    let kind = match kind {
        EngagementKind::Click => "click",
        EngagementKind::Like => "like",
        EngagementKind::Unspecified => "unspecified",
    };
    format!("{}:{kind}", id_member(id))
}

/// `author\ttag1,tag2`. Tags never contain tabs or commas ([`usable_tag`]).
pub fn encode_meta(meta: &TweetMeta) -> Vec<u8> {
    format!("{}\t{}", meta.author, meta.tags.join(",")).into_bytes()
}

/// The inverse of [`encode_meta`]; `None` for anything else.
pub fn decode_meta(bytes: &[u8]) -> Option<TweetMeta> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (author, tags) = text.split_once('\t')?;
    Some(TweetMeta {
        author: author.to_string(),
        tags: tags
            .split(',')
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// A tag this service can store: non-empty, at most 64 bytes, no whitespace, control
/// characters or commas (the separators of [`encode_meta`]).
pub fn usable_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != ',')
}

fn encode_score(s: TagScore) -> Vec<u8> {
    format!("{}:{}", s.score, s.updated_ms).into_bytes()
}

fn decode_score(bytes: &[u8]) -> Option<TagScore> {
    let (score, updated) = std::str::from_utf8(bytes).ok()?.split_once(':')?;
    let score: f64 = score.parse().ok()?;
    (score.is_finite() && score >= 0.0).then_some(TagScore {
        score,
        updated_ms: updated.parse().ok()?,
    })
}

/// The writes of one counted engagement.
#[derive(Debug, Clone)]
pub struct EngagementWrite<'a> {
    pub user: &'a str,
    pub tweet_id: u64,
    pub kind: EngagementKind,
    /// New values of the profile entries of the tweet's tags.
    pub profile: Vec<(String, TagScore)>,
    /// The popularity set and forward-decayed amount, if the engagement is recent enough
    /// to count.
    pub popularity: Option<(i64, f64)>,
    /// The current popularity epoch: the set of two epochs before is deleted.
    pub now_epoch: i64,
}

#[derive(Clone)]
pub struct RecStorage {
    store: Arc<dyn Store>,
}

impl RecStorage {
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn tweet_meta(&self, id: u64) -> StoreResult<Option<TweetMeta>> {
        Ok(self
            .store
            .get(&tweet_key(id))
            .await?
            .and_then(|b| decode_meta(&b)))
    }

    /// One MGET; ids without (readable) metadata are absent from the answer.
    pub async fn tweet_metas(&self, ids: &[u64]) -> StoreResult<HashMap<u64, TweetMeta>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<String> = ids.iter().map(|&id| tweet_key(id)).collect();
        let values = self.store.mget(&keys).await?;
        Ok(ids
            .iter()
            .zip(values)
            .filter_map(|(&id, v)| Some((id, decode_meta(&v?)?)))
            .collect())
    }

    /// Files a tagged tweet under its tags and `rec:recent` (one pipelined batch), then,
    /// once all of that succeeded, stores it; `previous` is what was stored before
    /// (re-tagging removes the tweet from the tags it lost). Not one atomic step: its keys
    /// are in many slots of a Redis Cluster. Every write is idempotent and the tweet itself
    /// is written last, so a batch cut short is simply applied again when the event is
    /// redelivered (`previous` is then still the old tagging); readers skip ids without a
    /// stored tweet.
    pub async fn put_tagged(
        &self,
        id: u64,
        meta: &TweetMeta,
        previous: Option<&TweetMeta>,
    ) -> StoreResult<()> {
        let member = id_member(id);
        let mut writes = Vec::new();
        for old in previous.iter().flat_map(|p| &p.tags) {
            if !meta.tags.contains(old) {
                writes.push(Write::ZRem {
                    key: tag_key(old),
                    member: member.clone(),
                });
            }
        }
        for tag in &meta.tags {
            writes.push(Write::ZAdd {
                key: tag_key(tag),
                member: member.clone(),
            });
            writes.push(Write::ZKeepLast {
                key: tag_key(tag),
                keep: TAG_CAP,
            });
        }
        writes.push(Write::ZAdd {
            key: RECENT_KEY.to_string(),
            member,
        });
        writes.push(Write::ZKeepLast {
            key: RECENT_KEY.to_string(),
            keep: RECENT_CAP,
        });
        // Only once every list write succeeded: on a Redis Cluster the batch is sent in
        // parts, and a stored tweet with a missing list entry would never be repaired (a
        // redelivery finds the tagging already stored and does nothing).
        self.store.apply(writes).await?;
        self.store
            .apply(vec![Write::Set {
                key: tweet_key(id),
                value: encode_meta(meta),
            }])
            .await
    }

    /// True if this engagement was counted already.
    pub async fn engagement_seen(
        &self,
        user: &str,
        id: u64,
        kind: EngagementKind,
    ) -> StoreResult<bool> {
        self.store
            .zcontains(&engagements_key(user), &engagement_member(id, kind))
            .await
    }

    /// The user's profile as stored (not decayed); unreadable entries are skipped.
    pub async fn profile(&self, user: &str) -> StoreResult<HashMap<String, TagScore>> {
        Ok(self
            .store
            .hgetall(&profile_key(user))
            .await?
            .into_iter()
            .filter_map(|(tag, v)| Some((tag, decode_score(&v)?)))
            .collect())
    }

    /// Counts one engagement: the tweet's popularity (a shared ranking, in its own slot),
    /// then the user's profile, engagements and idempotency member as one atomic step (all
    /// in the user's shard: see `store::slot`). The idempotency member is written last: if
    /// anything before it fails, the redelivered event is counted again rather than lost.
    pub async fn record_engagement(&self, e: &EngagementWrite<'_>) -> StoreResult<()> {
        let member = id_member(e.tweet_id);
        let mut ranking = Vec::new();
        if let Some((epoch, delta)) = e.popularity {
            ranking.push(Write::ZIncr {
                key: popular_key(epoch),
                member: member.clone(),
                delta,
            });
            ranking.push(Write::ZKeepTop {
                key: popular_key(epoch),
                keep: POPULAR_CAP,
            });
        }
        ranking.push(Write::Del {
            key: popular_key(e.now_epoch - 2),
        });
        self.store.apply(ranking).await?;
        let mut writes: Vec<Write> = e
            .profile
            .iter()
            .map(|(tag, score)| Write::HSet {
                key: profile_key(e.user),
                field: tag.clone(),
                value: encode_score(*score),
            })
            .collect();
        writes.push(Write::ZAdd {
            key: engaged_key(e.user),
            member,
        });
        writes.push(Write::ZKeepLast {
            key: engaged_key(e.user),
            keep: ENGAGED_CAP,
        });
        writes.push(Write::ZAdd {
            key: engagements_key(e.user),
            member: engagement_member(e.tweet_id, e.kind),
        });
        writes.push(Write::ZKeepLast {
            key: engagements_key(e.user),
            keep: ENGAGEMENTS_CAP,
        });
        self.store.apply_atomic(writes).await
    }

    /// The tweets the user engaged with (the newest [`ENGAGED_CAP`]).
    pub async fn engaged(&self, user: &str) -> StoreResult<HashSet<u64>> {
        Ok(self
            .store
            .zrange_lex(&engaged_key(user), Lex::Before(None), ENGAGED_CAP)
            .await?
            .iter()
            .filter_map(|m| parse_id_member(m))
            .collect())
    }

    /// The newest `limit` ids tagged `tag`, newest first.
    pub async fn tag_ids(&self, tag: &str, limit: usize) -> StoreResult<Vec<u64>> {
        self.newest(&tag_key(tag), limit).await
    }

    /// The newest `limit` tagged ids, newest first.
    pub async fn recent_ids(&self, limit: usize) -> StoreResult<Vec<u64>> {
        self.newest(RECENT_KEY, limit).await
    }

    async fn newest(&self, key: &str, limit: usize) -> StoreResult<Vec<u64>> {
        Ok(self
            .store
            .zrange_lex(key, Lex::Before(None), limit)
            .await?
            .iter()
            .filter_map(|m| parse_id_member(m))
            .collect())
    }

    /// The `limit` most popular tweets with their popularity decayed to `now_ms`, highest
    /// first: the top of this epoch's and the previous epoch's sets, merged.
    pub async fn popular(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<(u64, f64)>> {
        let epoch = popularity_epoch(now_ms);
        let (current_key, previous_key) = (popular_key(epoch), popular_key(epoch - 1));
        let (current, previous) = futures::try_join!(
            self.store.ztop(&current_key, limit),
            self.store.ztop(&previous_key, limit),
        )?;
        let mut merged: HashMap<u64, f64> = HashMap::new();
        for (e, set) in [(epoch, current), (epoch - 1, previous)] {
            for (member, stored) in set {
                if let Some(id) = parse_id_member(&member) {
                    *merged.entry(id).or_default() += popularity_at(stored, e, now_ms);
                }
            }
        }
        let mut top: Vec<(u64, f64)> = merged.into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        top.truncate(limit);
        Ok(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let meta = TweetMeta {
            author: "alice".into(),
            tags: vec!["rust".into(), "eco-friendly".into()],
        };
        assert_eq!(decode_meta(&encode_meta(&meta)), Some(meta));
        let bare = TweetMeta {
            author: "bob".into(),
            tags: vec![],
        };
        assert_eq!(decode_meta(&encode_meta(&bare)), Some(bare));
        assert_eq!(decode_meta(b"no tab"), None);

        let s = TagScore {
            score: 0.1 + 0.2,
            updated_ms: 1_700_000_000_123,
        };
        assert_eq!(decode_score(&encode_score(s)), Some(s));
        assert_eq!(decode_score(b"NaN:1"), None);
        assert_eq!(decode_score(b"1.5"), None);

        assert!(usable_tag("DIY_crafts") && usable_tag("eco-friendly"));
        assert!(!usable_tag("") && !usable_tag("a,b") && !usable_tag("a b") && !usable_tag("a\tb"));
        assert_eq!(
            engagement_member(42, EngagementKind::Like),
            "00000000000000000042:like"
        );
    }
}
