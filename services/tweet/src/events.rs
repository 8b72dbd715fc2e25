//! Consumes `TweetTagged`: the tagger's tags are stored on the tweet, so every read of the
//! tweet carries them. Idempotent: setting the same tags twice changes nothing.

use async_trait::async_trait;
use starling_proto::events::v1::TweetTagged;
use starling_runtime::events::consumer::HandleError;
use starling_runtime::events::EventHandler;
use starling_runtime::events::Message;

use crate::storage::TweetStorage;

pub struct TagsHandler {
    storage: TweetStorage,
}

impl TagsHandler {
    pub fn new(storage: TweetStorage) -> Self {
        Self { storage }
    }
}

#[async_trait]
impl EventHandler for TagsHandler {
    type Event = TweetTagged;

    async fn handle(&self, event: TweetTagged, _: &Message) -> Result<(), HandleError> {
        let transient =
            |e: starling_runtime::store::StoreError| HandleError::Transient(e.to_string());
        let Some(mut tweet) = self.storage.get(event.tweet_id).await.map_err(transient)? else {
            // A tweet and its TweetCreated are stored in one atomic step, so a tweet that
            // is missing here was lost with the store's data: nothing to tag.
            return Ok(());
        };
        if tweet.tags != event.tags {
            tweet.tags = event.tags;
            self.storage.put(&tweet).await.map_err(transient)?;
        }
        Ok(())
    }
}
