//! Where a key lives in a Redis Cluster, and how the services name keys so that each of
//! their atomic steps stays in one place.
//!
//! A Redis Cluster splits keys over 16,384 hash slots (CRC16 of the key, or of its *hash
//! tag*: the part between the first `{` and the next `}`), and a MULTI/EXEC step may only
//! touch keys of one slot. So every step the services make atomic (a change and its outbox
//! entry: see `outbox`) names its keys with one tag: the *shard* of the user the step is
//! about ([`shard_of`]), one of [`SHARDS`]. A user's own keys ([`user_key`]) and the
//! outbox stream of that shard carry the same tag, so they always share a slot, while the
//! shards spread users, and the relays of the outbox, over the cluster's masters.
//!
//! The same names are used on a single Redis and in memory, and both stores refuse an
//! atomic step whose keys are not in one slot by this rule ([`one_slot`]), so a key design
//! that would fail on a cluster fails every test, not just the cluster's.

/// Shards of the users (and of each outbox). More shards spread the outbox relays over more
/// masters and instances; each is one relay loop with one blocking read. Changing it moves
/// users between shards, so it is fixed.
pub const SHARDS: usize = 8;

/// The Redis Cluster hash slot of `key` (CRC16-XMODEM of its hash tag, or of the whole key,
/// modulo 16,384), as the cluster and the redis crate compute it.
pub fn hash_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hashed_part(key)) % 16_384
}

/// The part of a key a cluster hashes: its tag if it has a non-empty one, else all of it.
fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// True if the keys are in one slot whatever prefix they get: all the same key, or all with
/// the same hash tag. (Two untagged keys that merely hash alike are not: with another
/// prefix they would not.)
pub fn one_slot<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    let mut keys = keys.into_iter().map(|k| hashed_part(k.as_bytes()));
    match keys.next() {
        Some(first) => keys.all(|k| k == first),
        None => true,
    }
}

/// The shard of a user (or any other name a step is about): stable across processes and
/// releases, since keys are named by it.
pub fn shard_of(name: &str) -> usize {
    usize::from(crc16::State::<crc16::XMODEM>::calculate(name.as_bytes())) % SHARDS
}

/// The hash tags of the shards: short strings chosen so that shard `i`'s slot lies in the
/// `i`-th eighth of the slot range. A cluster that splits its slots evenly over its masters
/// (as `redis-cli --cluster create` does) then gets an even share of shards on each: with
/// tags picked blindly (`s0`..`s7`), three masters held 2, 2 and 4.
const TAGS: [&str; SHARDS] = ["s10", "s2", "s11", "s3", "s12", "s0", "s13", "s1"];

/// The hash tag of a shard, as it appears in keys: `{s11}`.
pub fn tag(shard: usize) -> String {
    format!("{{{}}}", TAGS[shard % SHARDS])
}

/// The key `kind` of `user`, tagged with the user's shard: `followers:{s11}:alice`. Every
/// key of one user, whatever its kind, is in the same slot as that shard's outbox.
pub fn user_key(kind: &str, user: &str) -> String {
    format!("{kind}:{}:{user}", tag(shard_of(user)))
}

/// [`user_key`] for a given shard rather than the user's own: for data kept in parts, one
/// per shard of someone else (see the follower service's `followers` lists, one part per
/// shard of the followers).
pub fn shard_key(kind: &str, shard: usize, name: &str) -> String {
    format!("{kind}:{}:{name}", tag(shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // The examples of the Redis Cluster specification.
        assert_eq!(hash_slot(b"123456789"), 0x31C3);
        assert_eq!(
            hash_slot(b"{user1000}.following"),
            hash_slot(b"{user1000}.followers")
        );
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
        assert_eq!(hash_slot(b"foo{bar}{zap}"), hash_slot(b"bar"));
    }

    #[test]
    fn a_users_keys_share_a_slot_with_its_shard() {
        for user in ["alice", "bob", "émile", "{s1}", "a}b{c"] {
            let shard = shard_of(user);
            assert!(shard < SHARDS);
            let keys = [
                user_key("followers", user),
                user_key("user_tweets", user),
                shard_key("outbox:tweet", shard, ""),
            ];
            assert!(one_slot(keys.iter().map(String::as_str)), "{keys:?}");
            let slots: Vec<u16> = keys.iter().map(|k| hash_slot(k.as_bytes())).collect();
            assert!(slots.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
        }
    }

    #[test]
    fn each_shard_has_its_eighth_of_the_slots() {
        for shard in 0..SHARDS {
            let slot = hash_slot(tag(shard).as_bytes()) as usize;
            assert_eq!(slot * SHARDS / 16_384, shard, "{}", tag(shard));
        }
    }

    #[test]
    fn one_slot_is_strict() {
        assert!(one_slot(["a", "a"]));
        assert!(!one_slot(["a", "b"]));
        assert!(one_slot(["x:{s1}:a", "y:{s1}:b"]));
        assert!(!one_slot(["x:{s1}:a", "y:{s2}:a"]));
        assert!(one_slot(std::iter::empty()));
    }

    #[test]
    fn shards_spread_users() {
        let mut counts = [0usize; SHARDS];
        for i in 0..8_000 {
            counts[shard_of(&format!("user{i}"))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }
}
