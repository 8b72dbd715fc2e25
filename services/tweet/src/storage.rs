//! Where tweets live: `tweet:<id>` holds the protobuf-encoded `Tweet`, and
//! `user_tweets:<author>` the author's tweet ids (a lexicographic sorted set of zero-padded
//! ids, newest last), read newest first by cursor.

use std::sync::Arc;

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

pub fn user_tweets_key(user: &str) -> String {
    format!("user_tweets:{user}")
}

impl TweetStorage {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Stores the tweet, appends it to its author's list and applies `announce` (its outbox
    /// entry), as one atomic step.
    pub async fn insert(&self, tweet: &Tweet, announce: Write) -> StoreResult<()> {
        self.store
            .apply_atomic(vec![
                Write::Set {
                    key: tweet_key(tweet.id),
                    value: tweet.encode_to_vec(),
                },
                Write::ZAdd {
                    key: user_tweets_key(&tweet.author),
                    member: id_member(tweet.id),
                },
                announce,
            ])
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
