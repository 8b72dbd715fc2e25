//! The arithmetic of recommendation, kept free of I/O so it can be tested exactly.
//!
//! Two kinds of decay:
//!
//! * **Profiles** (tag → score per user) decay with a half-life of three days. Each entry
//!   stores its score and when it was last updated, and is decayed on read and on update
//!   ([`TagScore`]), so nothing ever has to rewrite old entries.
//! * **Popularity** (one scored set for everyone) uses *forward decay*: an engagement at
//!   time `t` adds `weight * 2^((t - T) / half_life)` for a fixed reference `T`. Every score
//!   is then the decayed popularity multiplied by the same factor `2^((now - T) / half_life)`,
//!   so ranking by the stored score ranks by decayed popularity, and a plain `ZINCRBY` is
//!   the only write.
//!
//! Forward decay with a half-life of one day doubles the factor daily, so one fixed `T`
//! cannot last: with `T` = 2024-01-01 the factor passes `f64::MAX` (2^1024) in October
//! 2026. The reference therefore moves: time is cut into [`POPULARITY_EPOCH_MS`] epochs
//! counted from 2024-01-01, each epoch has its own scored set with `T` = the epoch's start
//! (factors stay below 2^7), and a read merges the current and the previous epoch after
//! decaying both to now ([`popularity_at`]). What the read leaves out is at least a week
//! old and weighs less than 1/128 of its original weight.

use std::collections::{HashMap, HashSet};
use std::f64::consts::LN_2;

use starling_proto::recommendation::v1::EngagementKind;
use starling_runtime::ids::{id_time_ms, EPOCH_MS};

pub const DAY_MS: i64 = 86_400_000;
/// Half-life of a tag's weight in a user's profile.
pub const PROFILE_HALF_LIFE_MS: i64 = 3 * DAY_MS;
/// Half-life of a tweet's popularity.
pub const POPULARITY_HALF_LIFE_MS: i64 = DAY_MS;
/// 2024-01-01T00:00:00Z, where popularity epochs are counted from (the Snowflake epoch).
pub const T0_MS: i64 = EPOCH_MS as i64;
/// Length of one popularity epoch (see the module documentation).
pub const POPULARITY_EPOCH_MS: i64 = 7 * DAY_MS;
/// The recency term is at most this share of the user's strongest tag score: enough to
/// order near-ties newest first, never enough to beat a real difference in interest.
pub const RECENCY_SHARE: f64 = 1e-3;

/// How much one engagement of `kind` counts; `None` for kinds that are not engagements.
pub fn weight(kind: EngagementKind) -> Option<f64> {
    match kind {
        EngagementKind::Click => Some(1.0),
        EngagementKind::Like => Some(3.0),
        EngagementKind::Unspecified => None,
    }
}

/// `score` after `elapsed_ms` of exponential decay. A negative elapsed time (clock skew)
/// counts as none: decay never makes a score grow.
pub fn decay(score: f64, elapsed_ms: i64, half_life_ms: i64) -> f64 {
    score * (-LN_2 * elapsed_ms.max(0) as f64 / half_life_ms as f64).exp()
}

/// One tag of a user's profile: `score` as of `updated_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TagScore {
    pub score: f64,
    pub updated_ms: i64,
}

impl TagScore {
    /// The score decayed to `now_ms`.
    pub fn at(self, now_ms: i64) -> f64 {
        decay(self.score, now_ms - self.updated_ms, PROFILE_HALF_LIFE_MS)
    }

    /// `old` plus an engagement of `weight` at `at_ms`: `old * decay(dt) + weight`. An
    /// engagement older than the entry (delivered late) is decayed to the entry's time
    /// instead, so the result is the same whatever order engagements arrive in.
    pub fn add(old: Option<TagScore>, weight: f64, at_ms: i64) -> TagScore {
        match old {
            None => TagScore {
                score: weight,
                updated_ms: at_ms,
            },
            Some(old) if at_ms >= old.updated_ms => TagScore {
                score: old.at(at_ms) + weight,
                updated_ms: at_ms,
            },
            Some(old) => TagScore {
                score: old.score + decay(weight, old.updated_ms - at_ms, PROFILE_HALF_LIFE_MS),
                updated_ms: old.updated_ms,
            },
        }
    }
}

/// The popularity epoch `t_ms` falls in.
pub fn popularity_epoch(t_ms: i64) -> i64 {
    (t_ms - T0_MS).div_euclid(POPULARITY_EPOCH_MS)
}

fn epoch_start(epoch: i64) -> i64 {
    T0_MS + epoch * POPULARITY_EPOCH_MS
}

/// What an engagement of `weight` at `t_ms` adds to popularity: the epoch's set to add it
/// to, and the forward-decayed amount `weight * exp(ln2 * (t - start) / half_life)`.
pub fn forward_weight(weight: f64, t_ms: i64) -> (i64, f64) {
    let epoch = popularity_epoch(t_ms);
    let since = (t_ms - epoch_start(epoch)) as f64;
    (
        epoch,
        weight * (LN_2 * since / POPULARITY_HALF_LIFE_MS as f64).exp(),
    )
}

/// A stored score of `epoch`'s set, as decayed popularity at `now_ms`.
pub fn popularity_at(stored: f64, epoch: i64, now_ms: i64) -> f64 {
    let since = (now_ms - epoch_start(epoch)) as f64;
    stored * (-LN_2 * since / POPULARITY_HALF_LIFE_MS as f64).exp()
}

/// What ranking needs to know of a tagged tweet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TweetMeta {
    pub author: String,
    pub tags: Vec<String>,
}

/// One recommendation before hydration.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub id: u64,
    pub score: f64,
    /// The tweet's tags found in the profile, strongest first; empty for popular and
    /// recent picks.
    pub reasons: Vec<String>,
}

/// Everything [`rank`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    pub user: &'a str,
    pub now_ms: i64,
    /// The user's tag scores, decayed to `now_ms`.
    pub profile: &'a HashMap<String, f64>,
    /// Ids taken from the user's strongest tags.
    pub by_tag: &'a [u64],
    /// Decayed popularity, highest first.
    pub popular: &'a [(u64, f64)],
    /// Recently tagged ids, newest first.
    pub recent: &'a [u64],
    /// Author and tags of the candidates that have them (all but untagged popular ones).
    pub meta: &'a HashMap<u64, TweetMeta>,
    /// Tweets the user engaged with.
    pub engaged: &'a HashSet<u64>,
    /// Authors the user follows.
    pub following: &'a HashSet<String>,
}

/// Ranks candidates in three tiers: tweets matching the profile (score = the sum of the
/// user's scores for the tweet's tags, plus a small recency term), then popular tweets
/// (score = decayed popularity), then recent ones (score 0). The later tiers are the whole
/// answer at cold start and fill the list when the profile's tags run dry. Excludes what
/// the user engaged with, wrote, or sees already through follows (an unknown author, for a
/// popular tweet that was never tagged, is checked again after hydration).
pub fn rank(c: &Candidates<'_>) -> Vec<Pick> {
    let excluded = |id: u64| {
        c.engaged.contains(&id)
            || c.meta
                .get(&id)
                .is_some_and(|m| m.author == c.user || c.following.contains(&m.author))
    };
    let strongest = c.profile.values().copied().fold(0.0, f64::max);
    let mut seen: HashSet<u64> = HashSet::new();
    let mut personal = Vec::new();
    for &id in c.by_tag {
        if seen.contains(&id) || excluded(id) {
            continue;
        }
        let Some(meta) = c.meta.get(&id) else {
            continue;
        };
        let mut matched: Vec<(&str, f64)> = meta
            .tags
            .iter()
            .filter_map(|t| c.profile.get(t).map(|&s| (t.as_str(), s)))
            .collect();
        if matched.is_empty() {
            continue;
        }
        seen.insert(id);
        matched.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let interest: f64 = matched.iter().map(|m| m.1).sum();
        personal.push(Pick {
            id,
            score: interest + recency(id, c.now_ms, strongest),
            reasons: matched.into_iter().map(|m| m.0.to_string()).collect(),
        });
    }
    personal.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| b.id.cmp(&a.id)));

    let mut picks = personal;
    for &(id, popularity) in c.popular {
        if seen.insert(id) && !excluded(id) {
            picks.push(Pick {
                id,
                score: popularity,
                reasons: Vec::new(),
            });
        }
    }
    for &id in c.recent {
        if seen.insert(id) && !excluded(id) {
            picks.push(Pick {
                id,
                score: 0.0,
                reasons: Vec::new(),
            });
        }
    }
    picks
}

/// `RECENCY_SHARE * strongest / (1 + age in days)`: decreasing with age, never zero, and
/// scaled to the profile so it stays a tie-breaker however much the profile has decayed.
pub fn recency(id: u64, now_ms: i64, strongest: f64) -> f64 {
    let age_ms = (now_ms - id_time_ms(id) as i64).max(0);
    RECENCY_SHARE * strongest / (1.0 + age_ms as f64 / DAY_MS as f64)
}

/// The `n` tags with the highest scores, strongest first (ties by name).
pub fn top_tags(profile: &HashMap<String, f64>, n: usize) -> Vec<String> {
    let mut tags: Vec<(&String, f64)> = profile.iter().map(|(t, &s)| (t, s)).collect();
    tags.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    tags.into_iter().take(n).map(|(t, _)| t.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Snowflake id created at `ms`.
    fn id_at(ms: i64, n: u64) -> u64 {
        (((ms - T0_MS) as u64) << 22) | n
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn decay_halves_after_one_half_life() {
        assert!(close(
            decay(8.0, PROFILE_HALF_LIFE_MS, PROFILE_HALF_LIFE_MS),
            4.0
        ));
        assert!(close(decay(8.0, 3 * DAY_MS, DAY_MS), 1.0));
        assert!(close(decay(8.0, 0, DAY_MS), 8.0));
        // A clock that went backwards does not make a score grow.
        assert!(close(decay(8.0, -DAY_MS, DAY_MS), 8.0));
    }

    #[test]
    fn profile_updates_decay_then_add_in_any_order() {
        let t = T0_MS + 100 * DAY_MS;
        let first = TagScore::add(None, 1.0, t);
        assert_eq!(
            first,
            TagScore {
                score: 1.0,
                updated_ms: t
            }
        );
        let later = TagScore::add(Some(first), 3.0, t + PROFILE_HALF_LIFE_MS);
        assert!(close(later.score, 0.5 + 3.0));
        assert!(close(later.at(t + 2 * PROFILE_HALF_LIFE_MS), 1.75));

        // Same two engagements, delivered the other way round: same value at any time.
        let b = TagScore::add(None, 3.0, t + PROFILE_HALF_LIFE_MS);
        let a = TagScore::add(Some(b), 1.0, t);
        let now = t + 10 * DAY_MS;
        assert!(close(a.at(now), later.at(now)), "{a:?} {later:?}");
    }

    #[test]
    fn forward_decay_ranking_equals_decayed_ranking() {
        // Engagements (tweet, weight, time) spread over three epochs.
        let start = T0_MS + 1_000 * DAY_MS;
        let mut events = Vec::new();
        for i in 0..200i64 {
            let tweet = (i * 7 % 13) as u64;
            let w = if i % 3 == 0 { 3.0 } else { 1.0 };
            let t = start + i * (POPULARITY_EPOCH_MS * 3 / 200) + (i * 7919 % 3_600_000);
            events.push((tweet, w, t));
        }
        let now = start + POPULARITY_EPOCH_MS * 3;
        // The truth: every engagement decayed to now.
        let mut truth: HashMap<u64, f64> = HashMap::new();
        for &(tweet, w, t) in &events {
            *truth.entry(tweet).or_default() += decay(w, now - t, POPULARITY_HALF_LIFE_MS);
        }
        // Forward decay: per-epoch sums of forward weights, converted at read time.
        let mut stored: HashMap<(i64, u64), f64> = HashMap::new();
        for &(tweet, w, t) in &events {
            let (epoch, delta) = forward_weight(w, t);
            assert!(delta.is_finite() && delta <= w * 128.0);
            *stored.entry((epoch, tweet)).or_default() += delta;
        }
        let mut forward: HashMap<u64, f64> = HashMap::new();
        for (&(epoch, tweet), &s) in &stored {
            *forward.entry(tweet).or_default() += popularity_at(s, epoch, now);
        }
        for (tweet, v) in &truth {
            assert!(
                close(*v, forward[tweet]),
                "{tweet}: {v} vs {}",
                forward[tweet]
            );
        }
        let order = |m: &HashMap<u64, f64>| {
            let mut v: Vec<(u64, f64)> = m.iter().map(|(k, s)| (*k, *s)).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        };
        assert_eq!(order(&truth), order(&forward));

        // Within one epoch, the raw stored scores already rank like the truth.
        let epoch = popularity_epoch(now - 1);
        let mut raw: HashMap<u64, f64> = HashMap::new();
        let mut recent_truth: HashMap<u64, f64> = HashMap::new();
        for &(tweet, w, t) in events.iter().filter(|e| popularity_epoch(e.2) == epoch) {
            *raw.entry(tweet).or_default() += forward_weight(w, t).1;
            *recent_truth.entry(tweet).or_default() += decay(w, now - t, POPULARITY_HALF_LIFE_MS);
        }
        assert_eq!(order(&raw), order(&recent_truth));
    }

    #[test]
    fn forward_weights_stay_finite_for_centuries() {
        for years in [0i64, 3, 10, 100, 500] {
            let t = T0_MS + years * 365 * DAY_MS + 12_345_678;
            let (epoch, delta) = forward_weight(3.0, t);
            assert!((3.0..=3.0 * 128.0).contains(&delta), "{years}: {delta}");
            assert!(close(popularity_at(delta, epoch, t), 3.0));
        }
    }

    #[test]
    fn ranking_by_interest_with_reasons_strongest_first() {
        let now = T0_MS + 900 * DAY_MS;
        let profile: HashMap<String, f64> = [
            ("rust".to_string(), 5.0),
            ("cats".to_string(), 2.0),
            ("jazz".to_string(), 0.5),
        ]
        .into_iter()
        .collect();
        let old = id_at(now - 10 * DAY_MS, 1);
        let new = id_at(now - DAY_MS, 2);
        let both = id_at(now - 20 * DAY_MS, 3);
        let mine = id_at(now, 4);
        let followed = id_at(now, 5);
        let engaged = id_at(now, 6);
        let unknown_tag = id_at(now, 7);
        let meta: HashMap<u64, TweetMeta> = [
            (old, "ann", vec!["rust"]),
            (new, "ben", vec!["rust"]),
            (both, "cid", vec!["cats", "jazz", "rust"]),
            (mine, "me", vec!["rust"]),
            (followed, "pal", vec!["rust"]),
            (engaged, "ann", vec!["rust"]),
            (unknown_tag, "ann", vec!["golf"]),
        ]
        .into_iter()
        .map(|(id, a, tags)| {
            (
                id,
                TweetMeta {
                    author: a.to_string(),
                    tags: tags.into_iter().map(String::from).collect(),
                },
            )
        })
        .collect();
        let by_tag = [old, new, both, mine, followed, engaged, unknown_tag, new];
        let popular = [(unknown_tag, 9.0), (old, 8.0), (42, 1.0)];
        let recent = [unknown_tag, 43];
        let c = Candidates {
            user: "me",
            now_ms: now,
            profile: &profile,
            by_tag: &by_tag,
            popular: &popular,
            recent: &recent,
            meta: &meta,
            engaged: &[engaged].into_iter().collect(),
            following: &["pal".to_string()].into_iter().collect(),
        };
        let picks = rank(&c);
        let ids: Vec<u64> = picks.iter().map(|p| p.id).collect();
        // Interest first (newer breaks the rust-only tie), then popular, then recent.
        assert_eq!(ids, vec![both, new, old, unknown_tag, 42, 43]);
        assert_eq!(picks[0].reasons, vec!["rust", "cats", "jazz"]);
        assert!(close(picks[0].score, 7.5 + recency(both, now, 5.0)));
        assert_eq!(picks[1].reasons, vec!["rust"]);
        assert!(picks[1].score > picks[2].score && picks[2].score - 5.0 < 1e-3);
        assert!(picks[3].reasons.is_empty() && picks[3].score == 9.0);
        assert_eq!(picks[5].score, 0.0);
    }

    #[test]
    fn cold_start_is_popular_then_recent() {
        let meta = HashMap::new();
        let c = Candidates {
            user: "me",
            now_ms: T0_MS,
            profile: &HashMap::new(),
            by_tag: &[],
            popular: &[(5, 3.0), (6, 1.0)],
            recent: &[7, 5, 8],
            meta: &meta,
            engaged: &[8].into_iter().collect(),
            following: &HashSet::new(),
        };
        let ids: Vec<u64> = rank(&c).iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![5, 6, 7]);
    }

    #[test]
    fn top_tags_are_strongest_first() {
        let profile: HashMap<String, f64> = [("a", 1.0), ("b", 3.0), ("c", 2.0), ("d", 3.0)]
            .into_iter()
            .map(|(t, s)| (t.to_string(), s))
            .collect();
        assert_eq!(top_tags(&profile, 3), vec!["b", "d", "c"]);
        assert_eq!(weight(EngagementKind::Like), Some(3.0));
        assert_eq!(weight(EngagementKind::Unspecified), None);
    }
}
