//! The recommendation service end to end, without a network: the real handlers and
//! consumers on `MemoryStore` and `MemoryBus`, with the tweet and follower services replaced
//! by an in-memory [`Peers`] fake. Events are fed to the consumers directly, as the consumer
//! loop would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use prost::Message as _;
use starling_proto::events::v1::{Engagement, TweetTagged};
use starling_proto::recommendation::v1::recommendation_service_server::RecommendationService;
use starling_proto::recommendation::v1::*;
use starling_proto::tweet::v1::Tweet;
use starling_recommendation::events::{EngagementHandler, TaggedHandler};
use starling_recommendation::handlers::RecommendationHandler;
use starling_recommendation::peers::Peers;
use starling_recommendation::scoring::popularity_epoch;
use starling_recommendation::storage::{self, RecStorage};
use starling_runtime::events::consumer::{HandleError, Handler};
use starling_runtime::events::topics::{ENGAGEMENT, TWEET_TAGGED};
use starling_runtime::events::{event_id, now_ms, timestamp, Message, Typed};
use starling_runtime::ids::EPOCH_MS;
use starling_runtime::outbox::Outbox;
use starling_runtime::store::{MemoryStore, Store};
use tonic::{Code, Request, Status};

#[derive(Default)]
struct FakePeers {
    tweets: Mutex<HashMap<u64, Tweet>>,
    following: Mutex<HashMap<String, HashSet<String>>>,
    down: Mutex<bool>,
}

impl FakePeers {
    fn check_up(&self, service: &str) -> Result<(), Status> {
        if *self.down.lock().unwrap() {
            Err(Status::unavailable(format!(
                "{service} service unavailable"
            )))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Peers for FakePeers {
    async fn get_tweet(&self, id: u64) -> Result<Option<Tweet>, Status> {
        self.check_up("tweet")?;
        Ok(self.tweets.lock().unwrap().get(&id).cloned())
    }

    async fn batch_get_tweets(&self, ids: Vec<u64>) -> Result<Vec<Tweet>, Status> {
        self.check_up("tweet")?;
        let tweets = self.tweets.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|id| tweets.get(id).cloned())
            .collect())
    }

    async fn following(&self, user: &str) -> Result<HashSet<String>, Status> {
        self.check_up("follower")?;
        Ok(self
            .following
            .lock()
            .unwrap()
            .get(user)
            .cloned()
            .unwrap_or_default())
    }
}

/// The events of `topic` waiting in the recommendation service's outbox (all its streams).
async fn outboxed(store: &MemoryStore, topic: &str) -> Vec<Message> {
    let mut entries = Vec::new();
    for stream in Outbox::new("recommendation").streams() {
        entries.extend(
            store
                .xread(&stream, "0", 1000, std::time::Duration::ZERO)
                .await
                .unwrap(),
        );
    }
    entries
        .iter()
        .filter_map(starling_runtime::outbox::decode)
        .filter(|m| m.topic == topic)
        .collect()
}

struct Fixture {
    store: Arc<MemoryStore>,
    peers: Arc<FakePeers>,
    /// As the consumer loop runs them: messages decoded, then handled.
    tagged: Typed<TaggedHandler>,
    engagement: Typed<EngagementHandler>,
    service: RecommendationHandler,
    next: u64,
}

impl Fixture {
    fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let peers = Arc::new(FakePeers::default());
        let storage = RecStorage::new(store.clone());
        Self {
            tagged: Typed(TaggedHandler::new(storage.clone())),
            engagement: Typed(EngagementHandler::new(storage.clone(), peers.clone())),
            service: RecommendationHandler::new(
                storage,
                peers.clone(),
                Outbox::new("recommendation"),
            ),
            store,
            peers,
            next: 0,
        }
    }

    /// A tweet that exists in the tweet service (created a few minutes ago, later tweets
    /// newer), not tagged yet.
    fn create(&mut self, author: &str) -> u64 {
        self.next += 1;
        let created = now_ms() - 600_000 + self.next as i64 * 1_000;
        let id = (((created - EPOCH_MS as i64) as u64) << 22) | self.next;
        let tweet = Tweet {
            id,
            author: author.into(),
            text: format!("tweet {}", self.next),
            created_at: Some(timestamp(created)),
            tags: vec![],
        };
        self.peers.tweets.lock().unwrap().insert(id, tweet);
        id
    }

    /// A tweet created and tagged (the TweetTagged event consumed).
    async fn post(&mut self, author: &str, tags: &[&str]) -> u64 {
        let id = self.create(author);
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        if let Some(t) = self.peers.tweets.lock().unwrap().get_mut(&id) {
            t.tags = tags.clone();
        }
        let event = TweetTagged {
            event_id: event_id(),
            occurred_at: Some(timestamp(now_ms())),
            tweet_id: id,
            author: author.into(),
            tags,
        };
        let m = Message::new(TWEET_TAGGED, author, event.encode_to_vec(), now_ms());
        self.tagged.handle(&m).await.unwrap();
        id
    }

    fn engagement_message(user: &str, tweet_id: u64, kind: EngagementKind) -> Message {
        let event = Engagement {
            event_id: event_id(),
            occurred_at: Some(timestamp(now_ms())),
            user: user.into(),
            tweet_id,
            kind: kind as i32,
        };
        Message::new(ENGAGEMENT, user, event.encode_to_vec(), now_ms())
    }

    async fn engage(&self, user: &str, tweet_id: u64, kind: EngagementKind) {
        let m = Self::engagement_message(user, tweet_id, kind);
        self.engagement.handle(&m).await.unwrap();
    }

    async fn recommend(&self, user: &str, limit: u32) -> Vec<RecommendedTweet> {
        self.service
            .recommend(Request::new(RecommendRequest {
                user: user.into(),
                limit,
            }))
            .await
            .unwrap()
            .into_inner()
            .items
    }

    async fn snapshot(&self, user: &str) -> impl PartialEq + std::fmt::Debug {
        let mut profile = self
            .store
            .hgetall(&storage::profile_key(user))
            .await
            .unwrap();
        profile.sort();
        let storage = RecStorage::new(self.store.clone());
        let mut engaged: Vec<u64> = storage.engaged(user).await.unwrap().into_iter().collect();
        engaged.sort();
        // The raw stored scores: decayed ones would differ by the milliseconds between reads.
        let epoch = popularity_epoch(now_ms());
        let popular = self
            .store
            .ztop(&storage::popular_key(epoch), 1_000)
            .await
            .unwrap();
        (profile, engaged, popular)
    }
}

fn ids(items: &[RecommendedTweet]) -> Vec<u64> {
    items.iter().map(|i| i.tweet.as_ref().unwrap().id).collect()
}

#[tokio::test]
async fn clicks_on_a_tag_bring_other_authors_tweets_with_that_tag_first() {
    let mut f = Fixture::new();
    let seen1 = f.post("alice", &["rust"]).await;
    let seen2 = f.post("erin", &["rust", "cooking"]).await;
    let other_topic = f.post("dave", &["gardening"]).await;
    let pick = f.post("carol", &["rust"]).await;
    f.engage("bob", seen1, EngagementKind::Click).await;
    f.engage("bob", seen2, EngagementKind::Click).await;

    let items = f.recommend("bob", 0).await;
    let first = &items[0];
    assert_eq!(first.tweet.as_ref().unwrap().id, pick);
    assert_eq!(first.reasons, vec!["rust"]);
    assert!(first.score > 1.9, "{}", first.score);
    // The unrelated tweet only fills the list, unexplained.
    assert_eq!(ids(&items), vec![pick, other_topic]);
    assert!(items[1].reasons.is_empty());

    // A like weighs more than clicks: cooking now beats rust.
    let cooking = f.post("frank", &["cooking"]).await;
    let liked = f.post("gina", &["cooking"]).await;
    f.engage("bob", liked, EngagementKind::Like).await;
    let items = f.recommend("bob", 1).await;
    assert_eq!(ids(&items), vec![cooking]);
    assert_eq!(items[0].reasons, vec!["cooking"]);
    // A tweet matching both tags lists both reasons, strongest first.
    let both = f.post("hugo", &["rust", "cooking"]).await;
    let items = f.recommend("bob", 1).await;
    assert_eq!(ids(&items), vec![both]);
    assert_eq!(items[0].reasons, vec!["cooking", "rust"]);
}

#[tokio::test]
async fn engaged_own_and_followed_tweets_are_excluded() {
    let mut f = Fixture::new();
    let engaged = f.post("alice", &["rust"]).await;
    let own = f.post("bob", &["rust"]).await;
    let followed = f.post("frank", &["rust"]).await;
    let ok = f.post("carol", &["rust"]).await;
    // Popular but never tagged, by a followee: only hydration knows the author.
    let untagged_followed = f.create("frank");
    f.peers
        .following
        .lock()
        .unwrap()
        .insert("bob".into(), ["frank".to_string()].into_iter().collect());
    f.engage("bob", engaged, EngagementKind::Like).await;
    for user in ["x1", "x2"] {
        f.engage(user, untagged_followed, EngagementKind::Like)
            .await;
        f.engage(user, own, EngagementKind::Like).await;
        f.engage(user, followed, EngagementKind::Like).await;
    }

    let items = f.recommend("bob", 50).await;
    assert_eq!(ids(&items), vec![ok]);
    // Another user sees all of them, popular first.
    let all = ids(&f.recommend("zed", 50).await);
    for id in [engaged, own, followed, ok, untagged_followed] {
        assert!(all.contains(&id), "{id} missing from {all:?}");
    }
}

#[tokio::test]
async fn duplicate_engagement_events_change_nothing() {
    let mut f = Fixture::new();
    let t = f.post("alice", &["rust", "cats"]).await;
    let m = Fixture::engagement_message("bob", t, EngagementKind::Click);
    f.engagement.handle(&m).await.unwrap();
    let before = f.snapshot("bob").await;
    // The same event delivered again, and a second click (a new event) on the same tweet.
    f.engagement.handle(&m).await.unwrap();
    f.engage("bob", t, EngagementKind::Click).await;
    assert_eq!(f.snapshot("bob").await, before);
    // A like is another engagement, and counts.
    f.engage("bob", t, EngagementKind::Like).await;
    assert_ne!(f.snapshot("bob").await, before);

    // Tagging twice is harmless too.
    let event = TweetTagged {
        event_id: event_id(),
        occurred_at: Some(timestamp(now_ms())),
        tweet_id: t,
        author: "alice".into(),
        tags: vec!["rust".into(), "cats".into()],
    };
    let tagged = Message::new(TWEET_TAGGED, "alice", event.encode_to_vec(), now_ms());
    let storage = RecStorage::new(f.store.clone());
    let rust_before = storage.tag_ids("rust", 10).await.unwrap();
    f.tagged.handle(&tagged).await.unwrap();
    f.tagged.handle(&tagged).await.unwrap();
    assert_eq!(storage.tag_ids("rust", 10).await.unwrap(), rust_before);
    assert_eq!(storage.recent_ids(10).await.unwrap(), vec![t]);
}

#[tokio::test]
async fn retagging_moves_the_tweet_between_tags() {
    let mut f = Fixture::new();
    let t = f.post("alice", &["rust", "cats"]).await;
    let event = TweetTagged {
        event_id: event_id(),
        occurred_at: Some(timestamp(now_ms())),
        tweet_id: t,
        author: "alice".into(),
        tags: vec![
            "cats".into(),
            "dogs".into(),
            "bad tag".into(),
            "dogs".into(),
        ],
    };
    let m = Message::new(TWEET_TAGGED, "alice", event.encode_to_vec(), now_ms());
    f.tagged.handle(&m).await.unwrap();
    let storage = RecStorage::new(f.store.clone());
    assert!(storage.tag_ids("rust", 10).await.unwrap().is_empty());
    assert_eq!(storage.tag_ids("cats", 10).await.unwrap(), vec![t]);
    assert_eq!(storage.tag_ids("dogs", 10).await.unwrap(), vec![t]);
    assert_eq!(
        storage.tweet_meta(t).await.unwrap().unwrap().tags,
        vec!["cats", "dogs"]
    );
}

#[tokio::test]
async fn cold_start_returns_popular_tweets() {
    let mut f = Fixture::new();
    let quiet = f.post("alice", &["rust"]).await;
    let hit = f.post("bob", &["cats"]).await;
    let warm = f.post("carol", &["jazz"]).await;
    let newest = f.post("dave", &["golf"]).await;
    for user in ["u1", "u2", "u3"] {
        f.engage(user, hit, EngagementKind::Like).await;
    }
    f.engage("u1", warm, EngagementKind::Click).await;

    let items = f.recommend("zoe", 0).await;
    // Popular first (by popularity), then the most recent of the rest.
    assert_eq!(ids(&items), vec![hit, warm, newest, quiet]);
    assert!(items.iter().all(|i| i.reasons.is_empty()));
    assert!((items[0].score - 9.0).abs() < 0.01, "{}", items[0].score);
    assert!((items[1].score - 1.0).abs() < 0.01, "{}", items[1].score);
    assert_eq!(items[2].score, 0.0);
    // The limit applies.
    assert_eq!(ids(&f.recommend("zoe", 2).await), vec![hit, warm]);
    // Nothing at all on an empty store.
    assert!(Fixture::new().recommend("zoe", 0).await.is_empty());
}

#[tokio::test]
async fn record_engagement_validates_then_publishes_for_the_consumer() {
    let mut f = Fixture::new();
    let t = f.post("alice", &["rust"]).await;
    let call = |user: &str, tweet_id: u64, kind: i32| {
        f.service
            .record_engagement(Request::new(RecordEngagementRequest {
                user: user.into(),
                tweet_id,
                kind,
            }))
    };
    for (user, id, kind, code, field) in [
        ("Bob", t, 1, Code::InvalidArgument, "user"),
        ("bob", 0, 1, Code::InvalidArgument, "tweet_id"),
        ("bob", t, 0, Code::InvalidArgument, "kind"),
        ("bob", t, 7, Code::InvalidArgument, "kind"),
        ("bob", 12345, 1, Code::NotFound, "tweet 12345"),
    ] {
        let e = call(user, id, kind).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    assert!(outboxed(&f.store, ENGAGEMENT).await.is_empty());

    let answer = call("bob", t, EngagementKind::Like as i32)
        .await
        .unwrap()
        .into_inner();
    let published = outboxed(&f.store, ENGAGEMENT).await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].key, "bob");
    let event = Engagement::decode(published[0].payload.as_slice()).unwrap();
    assert_eq!(event.event_id, answer.event_id);
    assert_eq!((event.user.as_str(), event.tweet_id), ("bob", t));
    assert_eq!(event.kind, EngagementKind::Like as i32);

    // Nothing changed yet; consuming the event builds the profile.
    let storage = RecStorage::new(f.store.clone());
    assert!(storage.profile("bob").await.unwrap().is_empty());
    f.engagement.handle(&published[0]).await.unwrap();
    let profile = storage.profile("bob").await.unwrap();
    assert_eq!(profile["rust"].score, 3.0);

    // The tweet service down: UNAVAILABLE, naming it.
    *f.peers.down.lock().unwrap() = true;
    let e = call("bob", t, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("tweet"), "{}", e.message());
    let e = f
        .service
        .recommend(Request::new(RecommendRequest {
            user: "bob".into(),
            limit: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
}

#[tokio::test]
async fn engagements_on_untagged_and_unknown_tweets() {
    let mut f = Fixture::new();
    // Not tagged yet: the tweet service supplies the author; popularity still counts.
    let untagged = f.create("alice");
    f.engage("bob", untagged, EngagementKind::Like).await;
    let storage = RecStorage::new(f.store.clone());
    let popular = storage.popular(now_ms(), 10).await.unwrap();
    assert_eq!(popular.len(), 1);
    assert_eq!(popular[0].0, untagged);
    assert!(storage.profile("bob").await.unwrap().is_empty());
    assert!(storage.engaged("bob").await.unwrap().contains(&untagged));

    // A tweet that does not exist is poison; the tweet service down is transient.
    let unknown = Fixture::engagement_message("bob", 999, EngagementKind::Click);
    assert!(matches!(
        f.engagement.handle(&unknown).await,
        Err(HandleError::Poison(_))
    ));
    *f.peers.down.lock().unwrap() = true;
    let later = f.create("carol");
    let m = Fixture::engagement_message("bob", later, EngagementKind::Click);
    assert!(matches!(
        f.engagement.handle(&m).await,
        Err(HandleError::Transient(_))
    ));
}

#[tokio::test]
async fn malformed_events_are_poison() {
    let f = Fixture::new();
    let garbage = Message::new(ENGAGEMENT, "bob", vec![0xff, 0xff, 0xff], now_ms());
    assert!(matches!(
        f.engagement.handle(&garbage).await,
        Err(HandleError::Poison(_))
    ));
    let garbage = Message::new(TWEET_TAGGED, "bob", vec![0xff, 0xff, 0xff], now_ms());
    assert!(matches!(
        f.tagged.handle(&garbage).await,
        Err(HandleError::Poison(_))
    ));
    for (user, tweet_id, kind) in [("bob", 1, 0), ("bob", 1, 9), ("bob", 0, 1), ("B B", 1, 1)] {
        let event = Engagement {
            event_id: event_id(),
            occurred_at: Some(timestamp(now_ms())),
            user: user.into(),
            tweet_id,
            kind,
        };
        let m = Message::new(ENGAGEMENT, user, event.encode_to_vec(), now_ms());
        assert!(
            matches!(f.engagement.handle(&m).await, Err(HandleError::Poison(_))),
            "{user} {tweet_id} {kind}"
        );
    }
}
