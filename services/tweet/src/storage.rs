//! Where tweets live: `tweet:<id>` holds the protobuf-encoded `Tweet`, and
//! `user_tweets:{shard}:<author>` the author's tweet ids (a lexicographic sorted set of
//! zero-padded ids, newest last, in the author's shard: see `store::slot`), read newest
//! first by cursor.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use starling_proto::tweet::v1::Tweet;
use starling_runtime::store::{id_member, newest_ids, Store, StoreResult, Write};

#[derive(Clone)]
pub struct TweetStorage {
    store: Arc<dyn Store>,
}

pub fn tweet_key(id: u64) -> String {
    format!("tweet:{id}")
}

/// In the author's shard, with the outbox stream of the author's events (see `insert`).
pub fn user_tweets_key(user: &str) -> String {
    starling_runtime::store::slot::user_key("user_tweets", user)
}

/// How long a `CreateTweet` idempotency key is remembered: a client that sends the same
/// key again later creates a second tweet.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// `idempotency:create_tweet:<author>:<key>` holds `<tweet id>\n<text>` of the post that
/// first came with that key.
fn idempotency_record(author: &str, key: &str) -> String {
    format!("idempotency:create_tweet:{author}:{key}")
}

/// What an idempotency key says about a `CreateTweet`.
#[derive(Debug, PartialEq)]
pub enum PostClaim {
    /// The key is new: this call creates the tweet, under the id it proposed.
    New,
    /// A call with the key created this tweet: answer it, create nothing.
    Done(Tweet),
    /// A call with the key chose this id but its tweet is not stored (it failed, or is
    /// still on its way): store it under that id, so however many calls finish, there is
    /// one tweet.
    Unfinished(u64),
    /// The key came with another text.
    Conflict,
}

impl TweetStorage {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Stores the tweet, then appends it to its author's list and applies `announce` (its
    /// outbox entry, keyed by the author) as one atomic step.
    ///
    /// The body is a key of its own (`tweet:<id>`, read by id from anywhere), so on a Redis
    /// Cluster it is in another slot than the author's list and outbox, and cannot join
    /// their step. It is written first: a tweet is listed and announced together or not
    /// at all, and never before its body exists. A crash between the two leaves a body
    /// that nothing lists or announces and whose id no caller was given, except one that
    /// retries with the same idempotency key, which finishes that very tweet.
    pub async fn insert(&self, tweet: &Tweet, announce: Write) -> StoreResult<()> {
        self.put(tweet).await?;
        self.store
            .apply_atomic(vec![
                Write::ZAdd {
                    key: user_tweets_key(&tweet.author),
                    member: id_member(tweet.id),
                },
                announce,
            ])
            .await
    }

    /// Claims `key` of `author` for a post of `text` that would get `id`.
    pub async fn claim_post(
        &self,
        author: &str,
        key: &str,
        id: u64,
        text: &str,
    ) -> StoreResult<PostClaim> {
        let proposal = format!("{id}\n{text}");
        let Some(held) = self
            .store
            .claim(
                &idempotency_record(author, key),
                proposal.as_bytes(),
                Some(IDEMPOTENCY_TTL),
            )
            .await?
        else {
            return Ok(PostClaim::New);
        };
        let held = String::from_utf8_lossy(&held);
        let Some((first, first_text)) = held.split_once('\n') else {
            return Ok(PostClaim::Conflict);
        };
        match first.parse::<u64>() {
            // Done once listed (and so announced: see `insert`); a body alone is a call
            // that stopped between the two steps.
            Ok(first) if first_text == text => Ok(match self.get(first).await? {
                Some(tweet) if self.listed(author, first).await? => PostClaim::Done(tweet),
                _ => PostClaim::Unfinished(first),
            }),
            _ => Ok(PostClaim::Conflict),
        }
    }

    /// True if `id` is in `author`'s list.
    async fn listed(&self, author: &str, id: u64) -> StoreResult<bool> {
        self.store
            .zcontains(&user_tweets_key(author), &id_member(id))
            .await
    }

    pub async fn put(&self, tweet: &Tweet) -> StoreResult<()> {
        self.store
            .apply(vec![Write::Set {
                key: tweet_key(tweet.id),
                value: tweet.encode_to_vec(),
            }])
            .await
    }

    pub async fn get(&self, id: u64) -> StoreResult<Option<Tweet>> {
        Ok(self
            .store
            .get(&tweet_key(id))
            .await?
            .and_then(|b| Tweet::decode(b.as_slice()).ok()))
    }

    /// One MGET; missing ids are left out, order follows `ids`.
    pub async fn get_many(&self, ids: &[u64]) -> StoreResult<Vec<Tweet>> {
        let keys: Vec<String> = ids.iter().map(|&id| tweet_key(id)).collect();
        Ok(self
            .store
            .mget(&keys)
            .await?
            .into_iter()
            .flatten()
            .filter_map(|b| Tweet::decode(b.as_slice()).ok())
            .collect())
    }

    /// Up to `limit` of `user`'s tweet ids older than `before`, newest first.
    pub async fn user_tweet_ids(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<u64>> {
        newest_ids(&*self.store, &user_tweets_key(user), before, limit).await
    }
}
