//! gRPC handlers of `starling.tweet.v1.TweetService`.

use std::sync::Arc;

use starling_proto::events::v1::TweetCreated;
use starling_proto::tweet::v1::tweet_service_server::TweetService;
use starling_proto::tweet::v1::*;
use starling_runtime::events::{self, Message};
use starling_runtime::ids::{id_time_ms, Snowflake};
use starling_runtime::outbox::Outbox;
use starling_runtime::{check_user, idempotency_key, page_size, store_error};
use tonic::{Request, Response, Status};

use crate::storage::{PostClaim, TweetStorage};
use crate::text::check_text;

pub const MAX_BATCH: usize = 500;

pub struct TweetHandler {
    storage: TweetStorage,
    ids: Arc<Snowflake>,
    outbox: Outbox,
}

impl TweetHandler {
    pub fn new(storage: TweetStorage, ids: Arc<Snowflake>, outbox: Outbox) -> Self {
        Self {
            storage,
            ids,
            outbox,
        }
    }
}

fn check_id(id: u64) -> Result<u64, Status> {
    if id == 0 {
        Err(Status::invalid_argument("id must be a tweet id (non-zero)"))
    } else {
        Ok(id)
    }
}

/// Page tokens are the last id of the previous page.
pub fn parse_page_token(token: &str) -> Result<Option<u64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token.parse::<u64>().map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "page_token {token:?} is not one this service issued"
        ))
    })
}

#[tonic::async_trait]
impl TweetService for TweetHandler {
    async fn create_tweet(
        &self,
        req: Request<CreateTweetRequest>,
    ) -> Result<Response<CreateTweetResponse>, Status> {
        let key = idempotency_key(&req)?;
        let req = req.into_inner();
        check_user("author", &req.author)?;
        let text = check_text(&req.text)?;
        let text = text.as_str();
        let mut id = self
            .ids
            .next_id()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Some(key) = &key {
            match self
                .storage
                .claim_post(&req.author, key, id, text)
                .await
                .map_err(store_error)?
            {
                PostClaim::New => {}
                PostClaim::Done(tweet) => {
                    return Ok(Response::new(CreateTweetResponse { tweet: Some(tweet) }))
                }
                PostClaim::Unfinished(first) => id = first,
                PostClaim::Conflict => {
                    return Err(Status::already_exists(format!(
                    "idempotency-key {key:?} was already used by {} for a post with another text",
                    req.author
                )))
                }
            }
        }
        let created_ms = id_time_ms(id) as i64;
        let tweet = Tweet {
            id,
            author: req.author.clone(),
            text: text.to_string(),
            created_at: Some(events::timestamp(created_ms)),
            tags: Vec::new(),
        };
        let event = TweetCreated {
            event_id: events::event_id(),
            occurred_at: Some(events::timestamp(created_ms)),
            tweet_id: id,
            author: tweet.author.clone(),
            text: tweet.text.clone(),
        };
        // The tweet is listed and announced in one atomic step, after its body (see
        // `outbox` and `TweetStorage::insert`): the answer does not wait for the broker,
        // and a crash cannot list a tweet without announcing it, or the reverse.
        let announce = self
            .outbox
            .entry(&Message::of(&tweet.author, &event, created_ms));
        self.storage
            .insert(&tweet, announce)
            .await
            .map_err(store_error)?;
        tracing::debug!(id, author = %tweet.author, "tweet created");
        Ok(Response::new(CreateTweetResponse { tweet: Some(tweet) }))
    }

    async fn get_tweet(
        &self,
        req: Request<GetTweetRequest>,
    ) -> Result<Response<GetTweetResponse>, Status> {
        let id = check_id(req.get_ref().id)?;
        match self.storage.get(id).await.map_err(store_error)? {
            Some(tweet) => Ok(Response::new(GetTweetResponse { tweet: Some(tweet) })),
            None => Err(Status::not_found(format!("tweet {id} does not exist"))),
        }
    }

    async fn batch_get_tweets(
        &self,
        req: Request<BatchGetTweetsRequest>,
    ) -> Result<Response<BatchGetTweetsResponse>, Status> {
        let ids = &req.get_ref().ids;
        if ids.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} ids requested; at most {MAX_BATCH} per call",
                ids.len()
            )));
        }
        let tweets = self.storage.get_many(ids).await.map_err(store_error)?;
        Ok(Response::new(BatchGetTweetsResponse { tweets }))
    }

    async fn list_user_tweets(
        &self,
        req: Request<ListUserTweetsRequest>,
    ) -> Result<Response<ListUserTweetsResponse>, Status> {
        let req = req.into_inner();
        check_user("user", &req.user)?;
        let before = parse_page_token(&req.page_token)?;
        let size = page_size(req.page_size, 20, 800);
        let mut ids = self
            .storage
            .user_tweet_ids(&req.user, before, size + 1)
            .await
            .map_err(store_error)?;
        let more = ids.len() > size;
        ids.truncate(size);
        let next_page_token = if more {
            ids.last().map(u64::to_string).unwrap_or_default()
        } else {
            String::new()
        };
        let tweets = self.storage.get_many(&ids).await.map_err(store_error)?;
        Ok(Response::new(ListUserTweetsResponse {
            tweets,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> (TweetHandler, Arc<dyn starling_runtime::store::Store>) {
        let store: Arc<dyn starling_runtime::store::Store> =
            Arc::new(starling_runtime::store::MemoryStore::new());
        let handler = TweetHandler::new(
            TweetStorage::new(store.clone()),
            Arc::new(Snowflake::fixed(1)),
            Outbox::new("tweet"),
        );
        (handler, store)
    }

    fn post(text: &str, key: Option<&str>) -> Request<CreateTweetRequest> {
        let mut req = Request::new(CreateTweetRequest {
            author: "bob".into(),
            text: text.into(),
        });
        if let Some(key) = key {
            req.metadata_mut()
                .insert(starling_discovery::IDEMPOTENCY_KEY, key.parse().unwrap());
        }
        req
    }

    async fn created(h: &TweetHandler, req: Request<CreateTweetRequest>) -> Result<Tweet, Status> {
        Ok(h.create_tweet(req).await?.into_inner().tweet.unwrap())
    }

    async fn bobs_tweets(store: &Arc<dyn starling_runtime::store::Store>) -> Vec<u64> {
        TweetStorage::new(store.clone())
            .user_tweet_ids("bob", None, 100)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_post_repeated_with_its_key_is_created_once() {
        let (h, store) = handler();
        let first = created(&h, post("hello", Some("k-1"))).await.unwrap();
        let again = created(&h, post("hello", Some("k-1"))).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(bobs_tweets(&store).await, vec![first.id]);
        let pending = starling_runtime::outbox::pending(&*store, &Outbox::new("tweet"))
            .await
            .unwrap();
        assert_eq!(pending, 1, "one event for one tweet");
        // Without a key, or with another one, a post is a new post.
        let other = created(&h, post("hello", Some("k-2"))).await.unwrap();
        let plain = created(&h, post("hello", None)).await.unwrap();
        assert_eq!(
            bobs_tweets(&store).await,
            vec![plain.id, other.id, first.id]
        );
    }

    #[tokio::test]
    async fn a_key_reused_for_another_text_is_refused_and_changes_nothing() {
        let (h, store) = handler();
        let first = created(&h, post("hello", Some("k"))).await.unwrap();
        let e = created(&h, post("bye", Some("k"))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        assert_eq!(bobs_tweets(&store).await, vec![first.id]);
        for bad in ["x".repeat(129), "tab\there".to_string()] {
            let mut req = post("hello", None);
            req.metadata_mut().insert(
                starling_discovery::IDEMPOTENCY_KEY,
                tonic::metadata::MetadataValue::try_from(bad.as_str()).unwrap(),
            );
            let e = created(&h, req).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        }
        assert_eq!(bobs_tweets(&store).await, vec![first.id]);
    }

    #[tokio::test]
    async fn a_post_whose_first_attempt_died_after_claiming_is_stored_under_the_claimed_id() {
        let (h, store) = handler();
        // A first attempt claimed the key for id 4242 and died before storing the tweet.
        let storage = TweetStorage::new(store.clone());
        assert_eq!(
            storage.claim_post("bob", "k", 4242, "hello").await.unwrap(),
            PostClaim::New
        );
        let tweet = created(&h, post("hello", Some("k"))).await.unwrap();
        assert_eq!(tweet.id, 4242);
        assert_eq!(bobs_tweets(&store).await, vec![4242]);
    }

    #[test]
    fn page_tokens() {
        assert_eq!(parse_page_token("").unwrap(), None);
        assert_eq!(parse_page_token("42").unwrap(), Some(42));
        assert_eq!(
            parse_page_token("x").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
