//! Checks the history against the state the system ended in (read straight from Redis):
//!
//! * every acknowledged post is readable, with its author and text, and no id was issued
//!   twice;
//! * it is in the home timeline of every user whose follow of its author was acknowledged
//!   before the post started and was not touched again (so they "followed before and still
//!   do"), unless that timeline's 800-entry cap has pushed it out;
//! * the follow graph equals the last acknowledged operation on each pair (where no
//!   unacknowledged operation came after it, which may or may not have taken effect);
//! * every acknowledged engagement is recorded (engagements are counted per user, tweet
//!   and kind, so a recorded one is counted once);
//! * every acknowledged sign-up can sign in with its password (through the gateway).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use prost::Message as _;
use starling_follower::storage::{followers_key_of, following_key};
use starling_proto::tweet::v1::Tweet;
use starling_runtime::store::{id_member, parse_id_member, Lex, Store};

use super::load::{password, Kind, Op};
use super::web::Web;

pub const TIMELINE_CAP: usize = 800;

/// What one check found wrong, attributed to the moment the operation started.
#[derive(Debug, Clone)]
pub struct Violation {
    pub at: Instant,
    pub what: ViolationKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// An acknowledged effect is missing.
    Lost,
    /// Something is there twice (an id issued twice, a timeline entry twice).
    Duplicated,
    /// A later acknowledged operation was overtaken by an earlier one.
    Reordered,
}

/// Checks everything; `pairs_state` etc. are read from the store.
pub async fn check(store: &dyn Store, ops: &[Op]) -> anyhow::Result<Vec<Violation>> {
    let mut found = Vec::new();
    check_posts(store, ops, &mut found).await?;
    check_graph(store, ops, &mut found).await?;
    check_timelines(store, ops, &mut found).await?;
    check_engagements(store, ops, &mut found).await?;
    Ok(found)
}

async fn check_posts(
    store: &dyn Store,
    ops: &[Op],
    found: &mut Vec<Violation>,
) -> anyhow::Result<()> {
    let mut seen: HashMap<u64, &Op> = HashMap::new();
    for op in ops {
        let (Kind::Post { author, text }, Ok(id)) = (&op.kind, op.outcome) else {
            continue;
        };
        if let Some(first) = seen.insert(id, op) {
            found.push(Violation {
                at: op.started,
                what: ViolationKind::Duplicated,
                detail: format!(
                    "tweet id {id} was issued twice ({:?} and {:?})",
                    first.kind, op.kind
                ),
            });
        }
        let stored = store
            .get(&format!("tweet:{id}"))
            .await?
            .and_then(|b| Tweet::decode(b.as_slice()).ok());
        match stored {
            Some(t) if &t.author == author && &t.text == text => {}
            Some(t) => found.push(Violation {
                at: op.started,
                what: ViolationKind::Duplicated,
                detail: format!(
                    "tweet {id} holds {:?} by {}, not the acknowledged post by {author}",
                    t.text, t.author
                ),
            }),
            None => found.push(Violation {
                at: op.started,
                what: ViolationKind::Lost,
                detail: format!("acknowledged tweet {id} by {author} is not stored"),
            }),
        }
    }
    Ok(())
}

/// The operations on each (follower, followee) pair, in order (one worker per follower
/// issues them one at a time).
fn pair_ops(ops: &[Op]) -> HashMap<(String, String), Vec<&Op>> {
    let mut pairs: HashMap<(String, String), Vec<&Op>> = HashMap::new();
    for op in ops {
        if let Kind::Follow { follower, followee } | Kind::Unfollow { follower, followee } =
            &op.kind
        {
            pairs
                .entry((follower.clone(), followee.clone()))
                .or_default()
                .push(op);
        }
    }
    for list in pairs.values_mut() {
        list.sort_by_key(|o| o.started);
    }
    pairs
}

async fn check_graph(
    store: &dyn Store,
    ops: &[Op],
    found: &mut Vec<Violation>,
) -> anyhow::Result<()> {
    for ((follower, followee), list) in pair_ops(ops) {
        // Only if the last operation was acknowledged: an unacknowledged one may or may not
        // have taken effect.
        let Some(last) = list.last().filter(|o| o.acked()) else {
            continue;
        };
        let want = matches!(last.kind, Kind::Follow { .. });
        let following = store
            .zcontains(&following_key(&follower), &followee)
            .await?;
        let followed = store
            .zcontains(&followers_key_of(&follower, &followee), &follower)
            .await?;
        if following != want || followed != want {
            found.push(Violation {
                at: last.started,
                what: if list.iter().filter(|o| o.acked()).count() > 1 {
                    ViolationKind::Reordered
                } else {
                    ViolationKind::Lost
                },
                detail: format!(
                    "{follower} -> {followee}: last acknowledged {:?}, but following:{following} followers:{followed}",
                    last.kind
                ),
            });
        }
    }
    Ok(())
}

async fn check_timelines(
    store: &dyn Store,
    ops: &[Op],
    found: &mut Vec<Violation>,
) -> anyhow::Result<()> {
    let pairs = pair_ops(ops);
    // Per author, the followers whose follow was acknowledged and never touched again:
    // (follower, when the follow was acknowledged).
    let mut stable: HashMap<&str, Vec<(&str, Instant)>> = HashMap::new();
    for ((follower, followee), list) in &pairs {
        if let Some(last) = list.last() {
            if matches!(last.kind, Kind::Follow { .. }) && last.acked() {
                stable
                    .entry(followee.as_str())
                    .or_default()
                    .push((follower.as_str(), last.finished));
            }
        }
    }
    // Who each user ever touched a follow with (any outcome), and all acknowledged posts
    // by author: what could have entered the user's timeline and pushed older entries
    // out of its 800. Unacknowledged posts may be stored too, with ids unknown: counted
    // against every timeline.
    let mut touched: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (follower, followee) in pairs.keys() {
        touched
            .entry(follower.as_str())
            .or_default()
            .insert(followee.as_str());
    }
    let mut posts_by: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut unacked_posts = 0usize;
    for op in ops {
        if let Kind::Post { author, .. } = &op.kind {
            match op.outcome {
                Ok(id) => posts_by.entry(author.as_str()).or_default().push(id),
                Err(_) => unacked_posts += 1,
            }
        }
    }
    let newer_candidates = |follower: &str, id: u64| -> usize {
        let authors = touched.get(follower);
        let own = std::iter::once(follower);
        own.chain(authors.into_iter().flatten().copied())
            .filter_map(|a| posts_by.get(a))
            .map(|ids| ids.iter().filter(|&&x| x > id).count())
            .sum::<usize>()
            + unacked_posts
    };
    let mut timelines: HashMap<String, Vec<String>> = HashMap::new();
    for op in ops {
        let (Kind::Post { author, .. }, Ok(id)) = (&op.kind, op.outcome) else {
            continue;
        };
        for (follower, since) in stable.get(author.as_str()).into_iter().flatten() {
            if *since >= op.started {
                continue;
            }
            if !timelines.contains_key(*follower) {
                let members = store
                    .zrange_lex(
                        &format!("home:{follower}"),
                        Lex::Before(None),
                        TIMELINE_CAP + 100,
                    )
                    .await?;
                let unique: HashSet<&String> = members.iter().collect();
                if unique.len() != members.len() {
                    found.push(Violation {
                        at: op.started,
                        what: ViolationKind::Duplicated,
                        detail: format!("home timeline of {follower} lists an entry twice"),
                    });
                }
                timelines.insert(follower.to_string(), members);
            }
            let home = &timelines[*follower];
            if home.contains(&id_member(id)) {
                continue;
            }
            // Pushed out by the cap: only the newest entries are kept, and entries removed
            // later (an unfollow) can leave a timeline below the cap that once was full.
            let oldest = home.last().and_then(|m| parse_id_member(m)).unwrap_or(0);
            if (home.len() >= TIMELINE_CAP && id < oldest)
                || newer_candidates(follower, id) >= TIMELINE_CAP
            {
                continue;
            }
            // What the fan-out got to, for whoever reads the report: it writes the author's
            // own timeline first, and leaves a checkpoint while it runs.
            let started = store
                .zcontains(&format!("home:{author}"), &id_member(id))
                .await?;
            let checkpoint = store.get(&format!("fanout:{id}")).await?.is_some();
            let listed = store
                .zcontains(&followers_key_of(follower, author), follower)
                .await?;
            found.push(Violation {
                at: op.started,
                what: ViolationKind::Lost,
                detail: format!(
                    "tweet {id} by {author} is missing from the home timeline of {follower}, who followed before and still does \
                     (fan-out started: {started}, checkpoint left: {checkpoint}, {follower} in followers:{author}: {listed}, {follower}'s timeline has {} entries)",
                    home.len()
                ),
            });
        }
    }
    Ok(())
}

async fn check_engagements(
    store: &dyn Store,
    ops: &[Op],
    found: &mut Vec<Violation>,
) -> anyhow::Result<()> {
    for op in ops {
        let (Kind::Engage { user, tweet, like }, true) = (&op.kind, op.acked()) else {
            continue;
        };
        let member = format!(
            "{}:{}",
            id_member(*tweet),
            if *like { "like" } else { "click" }
        );
        let recorded = store
            .zcontains(
                &starling_recommendation::storage::engagements_key(user),
                &member,
            )
            .await?;
        if !recorded {
            found.push(Violation {
                at: op.started,
                what: ViolationKind::Lost,
                detail: format!("engagement {member} of {user} is not counted"),
            });
        }
    }
    Ok(())
}

/// Every account whose sign-up was acknowledged signs in with its password.
pub async fn check_sign_ups(web: &Web, ops: &[Op]) -> Vec<Violation> {
    let accounts: Vec<(&str, Instant)> = ops
        .iter()
        .filter_map(|op| match (&op.kind, op.acked()) {
            (Kind::SignUp { user }, true) => Some((user.as_str(), op.started)),
            _ => None,
        })
        .collect();
    let mut violations = Vec::new();
    // A few at a time: each sign-in hashes a password. Each account signs in from a
    // loopback address of its own, as its user would from their own device: the gateway
    // limits sign-ins per client address.
    let mut n = 0u32;
    for chunk in accounts.chunks(4) {
        let tries = chunk.iter().map(|(user, _)| {
            n += 1;
            let source = std::net::Ipv4Addr::new(127, 0, (n / 250) as u8 + 1, (n % 250) as u8 + 2);
            let client = web.from_source(source.into());
            async move {
                let password = password(user);
                client.sign_in(user, &password).await
            }
        });
        for ((user, at), result) in chunk.iter().zip(futures::future::join_all(tries).await) {
            if let Err(code) = result {
                violations.push(Violation {
                    at: *at,
                    what: ViolationKind::Lost,
                    detail: format!("{user} signed up but cannot sign in: {code:?}"),
                });
            }
        }
    }
    violations
}
