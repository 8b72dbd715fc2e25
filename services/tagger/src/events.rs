//! Consumes `TweetCreated` (group `tagger`), tags the text and publishes `TweetTagged`.
//! Idempotent: the classifier is deterministic, so a redelivered tweet is tagged the same,
//! and the event id is derived from the tweet id, so a repeated `TweetTagged` is the same
//! event. It stores nothing itself, so it publishes directly (at least once) rather than
//! through an outbox: a crash before the commit only repeats the publish.

use std::sync::Arc;

use async_trait::async_trait;
use starling_proto::events::v1::{TweetCreated, TweetTagged};
use starling_runtime::events::consumer::HandleError;
use starling_runtime::events::EventHandler;
use starling_runtime::events::{self, now_ms, EventBus, Message};

use crate::classifier;

pub struct TweetCreatedHandler {
    bus: Arc<dyn EventBus>,
}

impl TweetCreatedHandler {
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        Self { bus }
    }
}

#[async_trait]
impl EventHandler for TweetCreatedHandler {
    type Event = TweetCreated;

    async fn handle(&self, created: TweetCreated, _: &Message) -> Result<(), HandleError> {
        let at = now_ms();
        let tagged = TweetTagged {
            event_id: format!("tagged-{}", created.tweet_id),
            occurred_at: Some(events::timestamp(at)),
            tweet_id: created.tweet_id,
            author: created.author.clone(),
            tags: classifier::tag(&created.text)
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        events::publish_traced(&*self.bus, Message::of(&created.author, &tagged, at))
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))
    }
}
