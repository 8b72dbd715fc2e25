//! Events as types. Each event message of `starling.events.v1` knows its topic
//! ([`Event`]); a publisher makes its bus message with [`Message::of`], and a consumer
//! implements [`EventHandler`] for one event type: the consumer loop decodes each message
//! once, and a payload that does not decode is poison (dead-lettered at once) before any
//! handler code runs.

use async_trait::async_trait;
use starling_proto::events::v1::{Engagement, FollowChanged, TweetCreated, TweetTagged};

use super::consumer::{HandleError, Handler};
use super::topics;
use super::Message;

/// An event type and the topic it travels on.
pub trait Event: prost::Message + Default + Send + Sync + 'static {
    const TOPIC: &'static str;
    /// The message's name, for errors and logs.
    const NAME: &'static str;
}

impl Event for TweetCreated {
    const TOPIC: &'static str = topics::TWEET_CREATED;
    const NAME: &'static str = "TweetCreated";
}

impl Event for TweetTagged {
    const TOPIC: &'static str = topics::TWEET_TAGGED;
    const NAME: &'static str = "TweetTagged";
}

impl Event for FollowChanged {
    const TOPIC: &'static str = topics::FOLLOW_CHANGED;
    const NAME: &'static str = "FollowChanged";
}

impl Event for Engagement {
    const TOPIC: &'static str = topics::ENGAGEMENT;
    const NAME: &'static str = "Engagement";
}

impl Message {
    /// `event` on its topic, partitioned by `key` (events with one key stay in order),
    /// having happened at `occurred_at_ms`.
    pub fn of<E: Event>(key: &str, event: &E, occurred_at_ms: i64) -> Self {
        Message::new(E::TOPIC, key, event.encode_to_vec(), occurred_at_ms)
    }
}

/// Handles the events of one type (see the module docs).
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    type Event: Event;

    /// `event`, decoded from `message` (whose key and `occurred_at_ms` are at hand too).
    async fn handle(&self, event: Self::Event, message: &Message) -> Result<(), HandleError>;
}

/// An [`EventHandler`] as the consumer loop's [`Handler`]: decodes, then hands over.
pub struct Typed<H>(pub H);

#[async_trait]
impl<H: EventHandler> Handler for Typed<H> {
    async fn handle(&self, message: &Message) -> Result<(), HandleError> {
        let event =
            <H::Event as prost::Message>::decode(message.payload.as_slice()).map_err(|e| {
                HandleError::Poison(format!("not a {}: {e}", <H::Event as Event>::NAME))
            })?;
        self.0.handle(event, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Seen(Mutex<Vec<u64>>);

    #[async_trait]
    impl EventHandler for Seen {
        type Event = TweetCreated;

        async fn handle(&self, event: TweetCreated, _: &Message) -> Result<(), HandleError> {
            self.0.lock().unwrap().push(event.tweet_id);
            Ok(())
        }
    }

    #[tokio::test]
    async fn messages_are_decoded_once_and_garbage_is_poison() {
        let typed = Typed(Seen(Mutex::new(Vec::new())));
        let event = TweetCreated {
            tweet_id: 7,
            ..Default::default()
        };
        let message = Message::of("ann", &event, 1);
        assert_eq!(message.topic, topics::TWEET_CREATED);
        Handler::handle(&typed, &message).await.unwrap();
        assert_eq!(*typed.0 .0.lock().unwrap(), [7]);

        let garbage = Message::new(topics::TWEET_CREATED, "ann", vec![0xff, 0xff], 1);
        match Handler::handle(&typed, &garbage).await {
            Err(HandleError::Poison(why)) => assert!(why.contains("TweetCreated"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(typed.0 .0.lock().unwrap().len(), 1, "no handler code ran");
    }
}
