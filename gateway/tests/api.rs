//! The gateway end to end, in one process: the five services on the embedded backends
//! (memory registry, store and bus), the gateway in front of them, and a small HTTP client
//! driving the API as a browser or script would.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use starling_discovery::{MemoryRegistry, Mesh, MeshConfig, Registry};
use starling_gateway::{GatewayConfig, RunningGateway};
use starling_runtime::events::{EventBus, MemoryBus};
use starling_runtime::server::{self, ServerConfig};
use starling_runtime::store::MemoryStore;
use starling_runtime::{AppSettings, RunningService, ServiceContext, ServiceKind};

/// Upper bound for anything awaited with a polling loop.
const PATIENCE: Duration = Duration::from_secs(15);
const SECRET: &str = "test secret shared by the gateways of one world";
const BOOK: &str =
    "Just finished a new novel. Can't wait to talk about it with my book club #nerdalert";

/// Five services and a gateway on embedded backends.
struct World {
    ctx: ServiceContext,
    services: Vec<RunningService>,
    gateway: RunningGateway,
    http: Http,
}

impl World {
    async fn start() -> World {
        // The app as the binary assembles it (starling-app), on the embedded backends.
        let ctx = starling_app::memory_context(starling_app::mesh_config(), AppSettings::default())
            .await
            .expect("embedded context");
        let mut services = Vec::new();
        for kind in ServiceKind::ALL {
            let mut config = ServerConfig::new(kind, "127.0.0.1:0".parse().unwrap());
            config.drain_delay = Duration::ZERO;
            let parts = starling_app::build(kind, &ctx)
                .await
                .expect("build service");
            services.push(
                server::start(config, parts, &ctx)
                    .await
                    .expect("start service"),
            );
        }
        let gateway = start_gateway(&ctx, Duration::from_secs(3600)).await;
        let http = Http::new(gateway.http_addr);
        let world = World {
            ctx,
            services,
            gateway,
            http,
        };
        world
            .http
            .eventually("the gateway is ready", |h| async move {
                h.get("/readyz").await.status == StatusCode::OK
            })
            .await;
        world
    }

    async fn stop(self) {
        self.gateway.stop().await.expect("gateway stops cleanly");
        for s in self.services {
            s.stop().await.expect("service stops cleanly");
        }
    }

    async fn sign_up(&self, user: &str) -> String {
        let r = self
            .http
            .post(
                "/api/signup",
                None,
                json!({"user": user, "password": "correct horse"}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "sign up {user}: {}",
            r.text()
        );
        r.json()["token"]
            .as_str()
            .expect("token in the answer")
            .to_string()
    }

    async fn post_tweet(&self, token: &str, text: &str) -> Value {
        let r = self
            .http
            .post("/api/tweets", Some(token), json!({ "text": text }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "post: {}", r.text());
        r.json()
    }
}

async fn start_gateway(ctx: &ServiceContext, ttl: Duration) -> RunningGateway {
    starling_gateway::start(
        GatewayConfig {
            http: "127.0.0.1:0".parse().unwrap(),
            grpc: "127.0.0.1:0".parse().unwrap(),
            token_secret: Some(SECRET.to_string()),
            token_ttl: ttl,
            ..Default::default()
        },
        ctx,
    )
    .await
    .expect("start gateway")
}

/// An answer, fully read.
struct Resp {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error` message of an error answer.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_string()
    }
}

/// A minimal HTTP/1.1 client for the gateway's HTTP port.
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// The same gateway, from another client address (any of 127.0.0.0/8 is loopback).
    fn with_source(&self, local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: self.base.clone(),
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> hyper::Request<Full<Bytes>> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        b.body(body).expect("valid request")
    }

    async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Resp {
        let resp = tokio::time::timeout(PATIENCE, self.client.request(req))
            .await
            .expect("answer in time")
            .expect("HTTP exchange");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        self.send(self.request(method, path, token, body)).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None, None).await
    }

    async fn get_auth(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Polls `check` (every 50 ms) until it holds; fails after [`PATIENCE`].
    async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut(Http) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if check(self.clone()).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn tweet_ids(page: &Value) -> Vec<String> {
    page["tweets"]
        .as_array()
        .expect("tweets array")
        .iter()
        .map(|t| t["id"].as_str().expect("string id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_tokens() {
    let w = World::start().await;
    let h = &w.http;

    // Sign-up answers a token that works.
    let token = w.sign_up("alice").await;
    let me = h.get_auth("/api/me", &token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json(), json!({"user": "alice"}));
    // The password is stored as an argon2 PHC string, never in clear.
    let stored = w.ctx.store.get("account:alice").await.unwrap().unwrap();
    let stored = String::from_utf8(stored).unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct horse"));

    // Taken names, bad input.
    let dup = h
        .post(
            "/api/signup",
            None,
            json!({"user": "alice", "password": "another one"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert!(dup.error().contains("taken"), "{}", dup.error());
    let short = h
        .post(
            "/api/signup",
            None,
            json!({"user": "bob", "password": "short"}),
        )
        .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert!(short.error().contains("password"), "{}", short.error());
    let bad_name = h
        .post(
            "/api/signup",
            None,
            json!({"user": "Bob!", "password": "long enough"}),
        )
        .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    let not_json = h.call(Method::POST, "/api/signup", None, None).await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(!not_json.error().is_empty());

    // Sign-in.
    let ok = h
        .post(
            "/api/signin",
            None,
            json!({"user": "alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let body = ok.json();
    assert_eq!(body["user"], "alice");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    let wrong = h
        .post(
            "/api/signin",
            None,
            json!({"user": "alice", "password": "wrong horse"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let unknown = h
        .post(
            "/api/signin",
            None,
            json!({"user": "nobody", "password": "whatever1"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown.error(),
        wrong.error(),
        "unknown users look like wrong passwords"
    );

    // Missing, garbage and foreign-secret tokens.
    assert_eq!(h.get("/api/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.get_auth("/api/me", "garbage").await.status,
        StatusCode::UNAUTHORIZED
    );
    let tampered = token.replacen("alice", "bob", 1);
    assert_eq!(
        h.get_auth("/api/me", &tampered).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A second gateway with the same secret accepts the first one's tokens (replicas), and
    // its own short-lived tokens expire.
    let short_lived = start_gateway(&w.ctx, Duration::from_secs(1)).await;
    let h2 = Http::new(short_lived.http_addr);
    assert_eq!(h2.get_auth("/api/me", &token).await.status, StatusCode::OK);
    let brief = h2
        .post(
            "/api/signin",
            None,
            json!({"user": "alice", "password": "correct horse"}),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    h2.eventually("the 1 s token expires", |h| {
        let brief = brief.clone();
        async move {
            let r = h.get_auth("/api/me", &brief).await;
            r.status == StatusCode::UNAUTHORIZED && r.error().contains("expired")
        }
    })
    .await;
    let posted = h
        .post(
            "/api/tweets",
            Some(&brief),
            json!({"text": "expired token"}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::UNAUTHORIZED);

    // Signing out on one gateway revokes every token issued so far, on every gateway;
    // signing in again gives a token that works.
    let elsewhere = h
        .post(
            "/api/signin",
            None,
            json!({"user": "alice", "password": "correct horse"}),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = h
        .call(Method::POST, "/api/signout", Some(&token), None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text());
    for (gw, t) in [
        (h, &token),
        (&h2, &token),
        (h, &elsewhere),
        (&h2, &elsewhere),
    ] {
        let r = gw.get_auth("/api/me", t).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.error().contains("signed out"), "{}", r.error());
    }
    let revoked_post = h
        .post(
            "/api/tweets",
            Some(&elsewhere),
            json!({"text": "after sign-out"}),
        )
        .await;
    assert_eq!(revoked_post.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.call(Method::POST, "/api/signout", Some(&token), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "a revoked token cannot sign out again"
    );
    let fresh = h
        .post(
            "/api/signin",
            None,
            json!({"user": "alice", "password": "correct horse"}),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(h2.get_auth("/api/me", &fresh).await.status, StatusCode::OK);
    short_lived.stop().await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_rate_limited() {
    let w = World::start().await;
    let h = &w.http;
    w.sign_up("carol").await;
    w.sign_up("dave").await;
    let attempt = |user: &'static str, password: &'static str| {
        let h = h.clone();
        async move {
            h.post(
                "/api/signin",
                None,
                json!({"user": user, "password": password}),
            )
            .await
        }
    };
    for i in 0..5 {
        let r = attempt("carol", "not her password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {}", i + 1);
    }
    let sixth = attempt("carol", "not her password").await;
    assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(sixth.error().contains("try again"), "{}", sixth.error());
    // Locked means locked for carol from this address: the right password does not get
    // through either...
    assert_eq!(
        attempt("carol", "correct horse").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...but another user of this address is not locked out...
    assert_eq!(
        attempt("dave", "correct horse").await.status,
        StatusCode::OK
    );
    // ...and carol, from an address that has not failed, signs in.
    let elsewhere = h.with_source("127.0.0.2".parse().unwrap());
    let r = elsewhere
        .post(
            "/api/signin",
            None,
            json!({"user": "carol", "password": "correct horse"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // One address guessing many users' passwords is stopped too.
    let spray = h.with_source("127.0.0.3".parse().unwrap());
    let mut limited = None;
    for i in 0..30 {
        let r = spray
            .post(
                "/api/signin",
                None,
                json!({"user": format!("victim{i}"), "password": "guess guess"}),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(i);
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        limited,
        Some(20),
        "the 21st failure from one address is refused"
    );
    w.stop().await;
}

/// One user's writes are held to a budget: a burst, then a steady rate, then 429 with
/// `Retry-After`; other users write on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_limited_per_user() {
    let w = World::start().await;
    let h = &w.http;
    let erin = w.sign_up("erin").await;
    let frank = w.sign_up("frank").await;
    let mut refused = None;
    for i in 0..40 {
        let r = h
            .post(
                "/api/follows",
                Some(&erin),
                json!({ "followee": format!("f{i}") }),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((i, r));
            break;
        }
        // Made-up names are nobody: following them changes nothing, and still costs a
        // write of the budget.
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        assert!(r.error().contains("not a user"), "{}", r.error());
    }
    let (i, r) = refused.expect("a burst of 40 follows is refused before its end");
    assert!((30..=32).contains(&i), "refused at write {i}");
    let retry = r.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(r.error().contains("too many writes"), "{}", r.error());
    // Another user is not held up.
    let other = h
        .post("/api/follows", Some(&frank), json!({ "followee": "erin" }))
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posting_reading_and_authorisation() {
    let w = World::start().await;
    let h = &w.http;
    let alice = w.sign_up("alice").await;
    w.sign_up("bob").await;

    let body = json!({"text": "hello"});
    assert_eq!(
        h.post("/api/tweets", None, body.clone()).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.post(
            "/api/tweets",
            Some("v1.alice.99999999999.AAAA"),
            body.clone()
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let as_bob = h
        .post(
            "/api/tweets",
            Some(&alice),
            json!({"text": "hi", "author": "bob"}),
        )
        .await;
    assert_eq!(as_bob.status, StatusCode::FORBIDDEN);
    assert!(as_bob.error().contains("bob"), "{}", as_bob.error());

    // A body over the JSON limit is refused before it is read whole.
    let huge = h
        .post(
            "/api/tweets",
            Some(&alice),
            json!({"text": "x".repeat(100 * 1024)}),
        )
        .await;
    assert_eq!(
        huge.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        huge.text()
    );
    assert!(huge.error().contains("larger than"), "{}", huge.error());

    // The service's validation message is passed through.
    let empty = h
        .post("/api/tweets", Some(&alice), json!({"text": "   "}))
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(empty.error().contains("text"), "{}", empty.error());

    let t = w.post_tweet(&alice, BOOK).await;
    let id = t["id"].as_str().expect("id is a string").to_string();
    assert!(id.parse::<u64>().is_ok());
    assert_eq!(t["author"], "alice");
    assert_eq!(t["text"], BOOK);
    assert!(t["created_at"].as_str().unwrap().contains('T'));

    // A post sent again with its Idempotency-Key answers the first tweet; the key with
    // another text is a conflict; a key that is not visible ASCII is refused.
    let carol = w.sign_up("carol").await;
    let keyed = |text: &str, key: &str| {
        let mut req = h.request(
            Method::POST,
            "/api/tweets",
            Some(&carol),
            Some(json!({ "text": text })),
        );
        req.headers_mut()
            .insert("idempotency-key", key.parse().expect("header value"));
        h.send(req)
    };
    let first = keyed("once only", "post-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = keyed("once only", "post-1").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.json()["id"], first.json()["id"]);
    let other = keyed("something else", "post-1").await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.error());
    let bad = keyed("once only", "has space").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.error());
    let carols = h.get("/api/users/carol/tweets").await.json();
    let once = carols["tweets"]
        .as_array()
        .expect("tweets")
        .iter()
        .filter(|t| t["text"] == "once only")
        .count();
    assert_eq!(once, 1, "{carols}");

    let same = h.get(&format!("/api/tweets/{id}")).await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.json()["id"], id.as_str());
    // Tags are added by the tagger, shortly after.
    h.eventually("the tweet is tagged", |h| {
        let id = id.clone();
        async move {
            let t = h.get(&format!("/api/tweets/{id}")).await.json();
            t["tags"].as_array().is_some_and(|a| !a.is_empty())
        }
    })
    .await;
    assert_eq!(
        h.get("/api/tweets/12x").await.status,
        StatusCode::BAD_REQUEST
    );
    let missing = h.get("/api/tweets/12345").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text());

    let mine = h.get("/api/users/alice/tweets?page_size=10").await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(tweet_ids(&mine.json()), vec![id.clone()]);
    assert_eq!(
        h.get("/api/users/alice/tweets?page_size=lots").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.get("/api/users/Not%20A%20User").await.status,
        StatusCode::BAD_REQUEST
    );

    // Engagements: only for yourself, only known kinds.
    let like = h
        .post(
            "/api/engagements",
            Some(&alice),
            json!({"tweet_id": id, "kind": "like"}),
        )
        .await;
    assert_eq!(like.status, StatusCode::ACCEPTED, "{}", like.text());
    assert!(!like.json()["event_id"].as_str().unwrap().is_empty());
    assert_eq!(
        h.post(
            "/api/engagements",
            Some(&alice),
            json!({"tweet_id": id, "kind": "click", "user": "bob"})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.post(
            "/api/engagements",
            Some(&alice),
            json!({"tweet_id": id, "kind": "poke"})
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );

    let tags = h.get("/api/tags").await.json();
    assert!(tags["tags"].as_array().unwrap().len() >= 10, "{tags}");
    let recs = h.get("/api/users/bob/recommendations?limit=5").await;
    assert_eq!(recs.status, StatusCode::OK, "{}", recs.text());
    assert!(recs.json()["items"].is_array());
    assert_eq!(h.get("/api/nope").await.status, StatusCode::NOT_FOUND);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followees_posts_reach_the_followers_timeline() {
    let w = World::start().await;
    let h = &w.http;
    let alice = w.sign_up("alice").await;
    let bob = w.sign_up("bob").await;

    let as_bob = h
        .post(
            "/api/follows",
            Some(&alice),
            json!({"followee": "bob", "follower": "bob"}),
        )
        .await;
    assert_eq!(as_bob.status, StatusCode::FORBIDDEN);
    let f = h
        .post("/api/follows", Some(&alice), json!({"followee": "bob"}))
        .await;
    assert_eq!(f.status, StatusCode::OK, "{}", f.text());
    assert_eq!(f.json(), json!({"changed": true}));
    let again = h
        .post("/api/follows", Some(&alice), json!({"followee": "bob"}))
        .await;
    assert_eq!(again.json(), json!({"changed": false}));
    let itself = h
        .post("/api/follows", Some(&alice), json!({"followee": "alice"}))
        .await;
    assert_eq!(itself.status, StatusCode::BAD_REQUEST);
    // Users exist once they sign up: a name nobody took cannot be followed, and has no
    // profile.
    let nobody = h
        .post("/api/follows", Some(&alice), json!({"followee": "nobody"}))
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{}", nobody.text());
    assert!(nobody.error().contains("\"nobody\""), "{}", nobody.error());
    assert_eq!(
        h.get("/api/users/nobody").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get("/api/users/nobody/followers").await.json()["users"],
        json!([]),
        "and nobody follows them"
    );

    assert_eq!(
        h.get("/api/users/alice").await.json(),
        json!({"user": "alice", "followers": 0, "following": 1})
    );
    assert_eq!(
        h.get("/api/users/bob/followers").await.json()["users"],
        json!(["alice"])
    );
    assert_eq!(
        h.get("/api/users/alice/following").await.json()["users"],
        json!(["bob"])
    );

    let t = w
        .post_tweet(&bob, "Morning run by the river, then coffee")
        .await;
    let id = t["id"].as_str().unwrap().to_string();
    h.eventually("bob's tweet is on alice's timeline", |h| {
        let id = id.clone();
        async move {
            let r = h.get("/api/users/alice/timeline?page_size=20").await;
            r.status == StatusCode::OK && tweet_ids(&r.json()).contains(&id)
        }
    })
    .await;

    let un = h
        .call(Method::DELETE, "/api/follows/bob", Some(&alice), None)
        .await;
    assert_eq!(un.status, StatusCode::OK, "{}", un.text());
    assert_eq!(un.json(), json!({"changed": true}));
    w.stop().await;
}

/// Reads server-sent events from `resp` until one `tweet` event carries `id`.
async fn await_tweet_event(body: &mut hyper::body::Incoming, id: &str) -> Value {
    let mut buf = String::new();
    let read = async {
        loop {
            let frame = body
                .frame()
                .await
                .expect("the stream stays open")
                .expect("stream frame");
            if let Some(data) = frame.data_ref() {
                buf.push_str(&String::from_utf8_lossy(data));
            }
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let name = event.lines().find_map(|l| l.strip_prefix("event:"));
                let data = event.lines().find_map(|l| l.strip_prefix("data:"));
                if let (Some(name), Some(data)) = (name, data) {
                    if name.trim() == "tweet" {
                        let tweet: Value = serde_json::from_str(data.trim()).expect("tweet JSON");
                        if tweet["id"] == id {
                            return tweet;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the tweet arrives on the stream in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_stream_delivers_new_tweets() {
    let w = World::start().await;
    let h = &w.http;
    let alice = w.sign_up("alice").await;
    let bob = w.sign_up("bob").await;
    h.post("/api/follows", Some(&alice), json!({"followee": "bob"}))
        .await;
    // Something already on the timeline, which the stream must not replay.
    let old = w.post_tweet(&bob, "An older post about gardening").await;
    let old_id = old["id"].as_str().unwrap().to_string();
    h.eventually("the older tweet is on alice's timeline", |h| {
        let id = old_id.clone();
        async move { tweet_ids(&h.get("/api/users/alice/timeline").await.json()).contains(&id) }
    })
    .await;

    // carol, whom alice does not follow, posts before the stream opens (see below).
    let carol = w.sign_up("carol").await;
    let late: u64 = w
        .post_tweet(&carol, "Written before bob's post, delivered after")
        .await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // A live timeline is the signed-in user's own.
    let anonymous = h.get("/api/users/alice/timeline/stream").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(
        anonymous.error().contains("ticket"),
        "{}",
        anonymous.error()
    );
    let token_as_ticket = h
        .get(&format!("/api/users/alice/timeline/stream?ticket={alice}"))
        .await;
    assert_eq!(
        token_as_ticket.status,
        StatusCode::UNAUTHORIZED,
        "a bearer token is not a stream ticket"
    );
    let foreign = h.get_auth("/api/users/alice/timeline/stream", &bob).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text());

    let req = hyper::Request::builder()
        .uri(format!("{}/api/users/alice/timeline/stream", h.base))
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {alice}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h.client.request(req).await.expect("stream opens");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.into_body();

    // The stream's starting point is fixed once the headers are out: post now.
    let fresh = w.post_tweet(&bob, "Fresh off the press: a new post").await;
    let fresh_id = fresh["id"].as_str().unwrap();
    let event = await_tweet_event(&mut body, fresh_id).await;
    assert_eq!(event["author"], "bob");
    assert_eq!(event["text"], "Fresh off the press: a new post");

    // Timelines do not fill in id order (a big fan-out lands after a small later one): an
    // entry older than one already sent, arriving late, is still sent. Here carol's
    // earlier tweet is put into alice's timeline by hand, as a slow fan-out would.
    assert!(late < fresh_id.parse::<u64>().unwrap());
    let storage = starling_timeline::storage::TimelineStorage::new(w.ctx.store.clone(), 800);
    storage.push_many("alice", &[late]).await.unwrap();
    starling_timeline::watch::publish(
        w.ctx.store.as_ref(),
        &starling_timeline::watch::Notice {
            author: "carol".into(),
            users: vec!["alice".into()],
            celebrity: false,
        },
    )
    .await;
    let late_event = await_tweet_event(&mut body, &late.to_string()).await;
    assert_eq!(late_event["id"], late.to_string());

    // Reconnecting with Last-Event-ID resumes after the given entry (with a stream
    // ticket in the query, as the web app's EventSource does).
    let ticket = h
        .call(Method::POST, "/api/stream-ticket", Some(&alice), None)
        .await;
    assert_eq!(ticket.status, StatusCode::OK, "{}", ticket.text());
    let ticket = ticket.json()["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        h.get_auth("/api/me", &ticket).await.status,
        StatusCode::UNAUTHORIZED,
        "a stream ticket is good for nothing else"
    );
    let req = hyper::Request::builder()
        .uri(format!(
            "{}/api/users/alice/timeline/stream?ticket={ticket}",
            h.base
        ))
        .header("last-event-id", &old_id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut resumed = h
        .client
        .request(req)
        .await
        .expect("stream reopens")
        .into_body();
    let replayed = await_tweet_event(&mut resumed, fresh_id).await;
    assert_eq!(replayed["id"], fresh_id);

    assert_eq!(
        h.get("/api/users/NOPE/timeline/stream").await.status,
        StatusCode::BAD_REQUEST
    );
    // Open streams do not hold the stop up.
    drop(body);
    tokio::time::timeout(Duration::from_secs(10), w.stop())
        .await
        .expect("the gateway stops with a stream open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_ui_and_cors() {
    let mut w = World::start().await;
    let h = w.http.clone();
    let healthz = h.get("/healthz").await;
    assert_eq!(
        (healthz.status, healthz.text().as_str()),
        (StatusCode::OK, "ok")
    );
    assert_eq!(h.get("/readyz").await.status, StatusCode::OK);

    h.get("/api/tags").await;
    // Metrics name internal addresses: not on the public port (`--metrics` serves them).
    assert_eq!(h.get("/metrics").await.status, StatusCode::NOT_FOUND);
    let text = starling_runtime::metrics::handle().render();
    assert!(
        text.contains("starling_gateway_http_requests_total"),
        "{text}"
    );
    assert!(text.contains("route=\"/api/tags\""), "{text}");
    // Made-up HTTP methods, paths and gRPC-Web methods all count as `other`: whatever is
    // sent, the label sets stay as they are. (Counted in series, not bytes: tests running
    // beside this one add their own series.)
    let made_up = |from: usize| {
        let h = h.clone();
        async move {
            for i in from..from + 100 {
                let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
                h.call(method, &format!("/made/up/{i}"), None, None).await;
                let mut web = h.request(
                    Method::POST,
                    &format!("/starling.made.v1.Up/Method{i}"),
                    None,
                    None,
                );
                web.headers_mut().insert(
                    "content-type",
                    "application/grpc-web+proto".parse().unwrap(),
                );
                h.send(web).await;
            }
        }
    };
    let other_series = || {
        starling_runtime::metrics::handle()
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("method=\"other\""))
            .count()
    };
    made_up(0).await;
    let before = other_series();
    assert!(before > 0, "made-up requests are counted as `other`");
    made_up(100).await;
    assert_eq!(
        other_series(),
        before,
        "100 more made-up requests added no series"
    );
    let after = starling_runtime::metrics::handle().render();
    assert!(!after.contains("BREW"), "a made-up method became a label");
    assert!(!after.contains("Method17"), "a made-up path became a label");

    let index = h.get("/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    for id in [
        "id=\"auth\"",
        "id=\"timeline\"",
        "id=\"recommendations\"",
        "/app.js",
    ] {
        assert!(index.text().contains(id), "{id} missing from the page");
    }
    let js = h.get("/app.js").await;
    assert!(js.headers["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert!(js.text().contains("EventSource"));
    assert!(h.get("/style.css").await.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));

    // CORS preflight.
    let pre = h
        .send(
            hyper::Request::builder()
                .method(Method::OPTIONS)
                .uri(format!("{}/api/tweets", h.base))
                .header("origin", "http://example.test")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(pre.status.is_success(), "{}", pre.status);
    assert!(pre.headers.contains_key("access-control-allow-origin"));

    // With a service gone, the gateway is not ready and says which one.
    let tagger = w
        .services
        .iter()
        .position(|s| s.kind == ServiceKind::Tagger)
        .unwrap();
    w.services.remove(tagger).stop().await.unwrap();
    h.eventually("readyz reports the tagger missing", |h| async move {
        let r = h.get("/readyz").await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.text().contains("tagger")
    })
    .await;
    let down = h.get("/api/tags").await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.text()
    );
    assert!(!down.error().is_empty());
    let body = down.json();
    assert!(body["request_id"].is_string(), "{body}");
    assert!(!down.text().contains("127.0.0.1"), "{}", down.text());
    w.stop().await;
}

/// A memory bus whose broker can be made to stop answering.
struct SwitchableBus {
    inner: MemoryBus,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl EventBus for SwitchableBus {
    async fn create_topics(&self, t: &[String]) -> Result<(), starling_runtime::events::BusError> {
        self.inner.create_topics(t).await
    }
    async fn publish(
        &self,
        m: starling_runtime::events::Message,
    ) -> Result<(), starling_runtime::events::BusError> {
        self.inner.publish(m).await
    }
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn starling_runtime::events::Subscription>, starling_runtime::events::BusError>
    {
        self.inner.subscribe(group, topics).await
    }
    async fn ping(&self) -> Result<(), starling_runtime::events::BusError> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(starling_runtime::events::BusError::Kafka(
                "broker switched off".into(),
            ));
        }
        Ok(())
    }
}

/// A gateway with no services behind it, on `bus`, configured by `tune`.
async fn bare_gateway(
    bus: Arc<dyn EventBus>,
    tune: impl FnOnce(&mut GatewayConfig),
) -> RunningGateway {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let ctx = ServiceContext {
        mesh: Arc::new(Mesh::new(
            registry.clone(),
            MeshConfig::new(starling_proto::idempotent_methods()),
        )),
        registry,
        store: Arc::new(MemoryStore::new()),
        bus,
        settings: Arc::new(AppSettings::default()),
    };
    let mut config = GatewayConfig {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: "127.0.0.1:0".parse().unwrap(),
        token_secret: Some(SECRET.to_string()),
        ..Default::default()
    };
    tune(&mut config);
    starling_gateway::start(config, &ctx)
        .await
        .expect("start gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_event_bus() {
    let bus = Arc::new(SwitchableBus {
        inner: MemoryBus::new(),
        down: std::sync::atomic::AtomicBool::new(true),
    });
    let gateway = bare_gateway(bus.clone(), |c| c.bus_grace = Duration::ZERO).await;
    let h = Http::new(gateway.http_addr);
    // No services run here, so the gateway is never ready; what matters is whether the
    // bus is among the reasons.
    h.eventually("readyz names the silent bus", |h| async move {
        let r = h.get("/readyz").await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.text().contains("event bus")
    })
    .await;
    bus.down.store(false, std::sync::atomic::Ordering::Relaxed);
    h.eventually("readyz no longer blames the bus", |h| async move {
        let r = h.get("/readyz").await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && !r.text().contains("event bus")
    })
    .await;
    gateway.stop().await.expect("gateway stops");
}

/// Connects from `source` (a loopback address) to `to`.
async fn connect_from(source: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .expect("bind a loopback source address");
    socket.connect(to).await.expect("connect")
}

/// Reads until the server closes the connection; what it sent, and when it closed.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> (String, tokio::time::Instant) {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    tokio::time::Instant::now(),
                )
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_crowding_connections_are_bounded() {
    use tokio::io::AsyncWriteExt as _;
    let limit = Duration::from_secs(1);
    let gateway = bare_gateway(Arc::new(MemoryBus::new()), |c| {
        c.limits.header_read_timeout = limit;
        c.limits.idle_timeout = limit;
        c.limits.body_timeout = limit;
        c.limits.max_connections_per_client = 4;
    })
    .await;
    let addr = gateway.http_addr;
    // Well past each 1 s limit, well short of forever.
    let patience = Duration::from_secs(6);

    // A connection that never sends anything is closed once idle.
    let mut idle = connect_from([127, 0, 0, 1], addr).await;
    let opened = tokio::time::Instant::now();
    let (_, closed) = tokio::time::timeout(patience, read_until_closed(&mut idle))
        .await
        .expect("an idle connection is closed");
    assert!(
        closed - opened >= limit,
        "not before it was idle for the limit"
    );

    // A header that trickles in, one line every 200 ms, is cut off: the header deadline
    // counts from the start, not from the last line.
    let mut slow = connect_from([127, 0, 0, 1], addr).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("x-line-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return i;
            }
        }
        unreachable!()
    };
    let lines = tokio::time::timeout(patience, trickle)
        .await
        .expect("the server stops a trickling header");
    assert!(lines >= 3, "the header had time to start ({lines} lines)");

    // A body that trickles in gets 408 once its time is up.
    let mut body = connect_from([127, 0, 0, 1], addr).await;
    body.write_all(
        b"POST /api/signup HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let (answer, _) = tokio::time::timeout(patience, async {
        let (mut r, mut w) = body.split();
        let feed = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if w.write_all(b" ").await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            answer = read_until_closed_half(&mut r) => answer,
            _ = feed => read_until_closed_half(&mut r).await,
        }
    })
    .await
    .expect("a trickling body is answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");

    // Four connections from one address are its share: a fifth is closed unanswered,
    // while another address is still served.
    let mut crowd = Vec::new();
    for _ in 0..4 {
        crowd.push(connect_from([127, 0, 0, 3], addr).await);
    }
    // The server counts a connection once it has accepted it: wait until the fourth is
    // counted, which shows as a fifth being closed.
    let mut fifth = connect_from([127, 0, 0, 3], addr).await;
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok();
    let (refused, _) =
        tokio::time::timeout(Duration::from_millis(900), read_until_closed(&mut fifth))
            .await
            .expect("the fifth connection is closed before the idle limit");
    assert!(refused.is_empty(), "closed without an answer: {refused}");
    let mut other = connect_from([127, 0, 0, 4], addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (ok, _) = tokio::time::timeout(patience, read_until_closed(&mut other))
        .await
        .expect("another address is served");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    drop(crowd);
    gateway.stop().await.expect("gateway stops");
}

async fn read_until_closed_half(r: &mut tokio::net::tcp::ReadHalf<'_>) -> (String, ()) {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&got).into_owned(), ()),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                // One full answer is enough (the connection may stay open).
                let text = String::from_utf8_lossy(&got);
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        return (text.into_owned(), ());
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_port_forwards_and_serves_health_and_reflection() {
    use starling_proto::auth::v1::auth_service_client::AuthServiceClient;
    use starling_proto::auth::v1::{Credentials, SignOutRequest};
    use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
    use starling_proto::follower::v1::RegisterUsersRequest;
    use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
    use starling_proto::timeline::v1::WatchHomeTimelineRequest;
    use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
    use starling_proto::tweet::v1::{CreateTweetRequest, GetTweetRequest};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let w = World::start().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", w.gateway.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the gRPC port");

    // Accounts over gRPC; writes need the token and act as its user only; reads are
    // public. The same on the HTTP port (native gRPC over HTTP/2 there).
    let http_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", w.gateway.http_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the HTTP port with gRPC");
    for (door, ch, user) in [
        ("gRPC port", channel.clone(), "erin"),
        ("HTTP port", http_channel, "fay"),
    ] {
        let mut accounts = AuthServiceClient::new(ch.clone());
        let session = accounts
            .sign_up(Credentials {
                user: user.into(),
                password: "correct horse".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{door}: sign up over gRPC: {e:?}"))
            .into_inner();
        assert_eq!(session.user, user);
        assert!(session.expires_at.is_some());
        let dup = accounts
            .sign_up(Credentials {
                user: user.into(),
                password: "correct horse".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(dup.code(), tonic::Code::AlreadyExists, "{door}");
        let wrong = accounts
            .sign_in(Credentials {
                user: user.into(),
                password: "wrong horse".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{door}");
        // The token is the JSON API's.
        let me = w.http.get_auth("/api/me", &session.token).await;
        assert_eq!(me.json()["user"], user, "{door}");

        let post = |author: &str, text: &str, token: Option<&str>| {
            let mut req = tonic::Request::new(CreateTweetRequest {
                author: author.into(),
                text: text.into(),
            });
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            req
        };
        let mut tweets = TweetServiceClient::new(ch.clone());
        let anonymous = tweets
            .create_tweet(post(user, "no token", None))
            .await
            .unwrap_err();
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated, "{door}");
        let forged = tweets
            .create_tweet(post("alice", "as someone else", Some(&session.token)))
            .await
            .unwrap_err();
        assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{door}");
        let created = tweets
            .create_tweet(post(
                user,
                "Posted through the gateway over gRPC",
                Some(&session.token),
            ))
            .await
            .unwrap_or_else(|e| panic!("{door}: create with a token: {e:?}"))
            .into_inner()
            .tweet
            .unwrap();
        let got = tweets
            .get_tweet(GetTweetRequest { id: created.id })
            .await
            .expect("reads are public")
            .into_inner()
            .tweet
            .unwrap();
        assert_eq!(got.text, created.text);
        // Service errors come back as they are.
        let bad = tweets
            .create_tweet(post(user, "   ", Some(&session.token)))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{door}");
        assert!(bad.message().contains("text"), "{}", bad.message());
        // Internal methods are not for clients of the gateway, token or not.
        let mut register = tonic::Request::new(RegisterUsersRequest {
            users: vec!["ghost".into()],
        });
        register.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", session.token).parse().unwrap(),
        );
        let internal = FollowerServiceClient::new(ch.clone())
            .register_users(register)
            .await
            .unwrap_err();
        assert_eq!(internal.code(), tonic::Code::PermissionDenied, "{door}");
        // A live timeline over gRPC: one's own only, and held to the JSON stream's caps.
        let watch = |whose: &str| {
            let mut req = tonic::Request::new(WatchHomeTimelineRequest {
                user: whose.into(),
                after_id: None,
            });
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", session.token).parse().unwrap(),
            );
            req
        };
        let mut timelines = TimelineServiceClient::new(ch.clone());
        let other = timelines
            .watch_home_timeline(watch("alice"))
            .await
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied, "{door}");
        let mut open = Vec::new();
        for _ in 0..starling_gateway::MAX_STREAMS_PER_USER {
            let mut stream = timelines
                .watch_home_timeline(watch(user))
                .await
                .unwrap_or_else(|e| panic!("{door}: watch: {e:?}"))
                .into_inner();
            let first = stream.message().await.expect("the opening message");
            assert!(first.is_some_and(|m| m.tweets.is_empty()), "{door}");
            open.push(stream);
        }
        let over = timelines
            .watch_home_timeline(watch(user))
            .await
            .unwrap_err();
        assert_eq!(
            over.code(),
            tonic::Code::ResourceExhausted,
            "{door}: {over:?}"
        );
        // A closed stream gives its place back.
        open.pop();
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let freed = loop {
            match timelines.watch_home_timeline(watch(user)).await {
                Ok(s) => break Some(s),
                Err(_) if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(_) => break None,
            }
        };
        assert!(
            freed.is_some(),
            "{door}: a place is free again after a stream closed"
        );
        drop(open);
        // Sign-out over gRPC revokes the token.
        let mut out = tonic::Request::new(SignOutRequest {});
        out.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", session.token).parse().unwrap(),
        );
        accounts.sign_out(out).await.expect("sign out");
        let revoked = tweets
            .create_tweet(post(user, "after sign-out", Some(&session.token)))
            .await
            .unwrap_err();
        assert_eq!(revoked.code(), tonic::Code::Unauthenticated, "{door}");
    }

    // Health, served by the gateway itself.
    let mut health = HealthClient::new(channel.clone());
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status(), ServingStatus::Serving);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = health
            .check(HealthCheckRequest {
                service: "starling.tweet.v1.TweetService".into(),
            })
            .await
            .map(|r| r.into_inner().status());
        if matches!(s, Ok(ServingStatus::Serving)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tweet never SERVING: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Reflection lists the five services (what `grpcurl list` shows).
    let mut reflection = ServerReflectionClient::new(channel);
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect("reflection call")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in starling_proto::SERVICE_NAMES {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_is_served_on_the_http_port() {
    use prost::Message;
    use starling_proto::tagger::v1::ListTagsResponse;

    let w = World::start().await;
    let h = &w.http;
    // An empty ListTagsRequest in one gRPC-Web frame: flag 0, length 0.
    let req = hyper::Request::builder()
        .method(Method::POST)
        .uri(format!(
            "{}/starling.tagger.v1.TaggerService/ListTags",
            h.base
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/grpc-web"));
    // First frame: the message; then a trailers frame (flag 0x80) with grpc-status 0.
    let body = &r.body[..];
    assert!(body.len() >= 5 && body[0] == 0, "{body:?}");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let tags = ListTagsResponse::decode(&body[5..5 + len]).expect("ListTagsResponse");
    assert!(!tags.tags.is_empty());
    let trailers = String::from_utf8_lossy(&body[5 + len..]);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Writes over gRPC-Web need a token and act as its user only.
    let victim_token = w.sign_up("victim").await;
    let mallory = w.sign_up("mallory").await;
    let web_post = |author: &str, token: Option<String>| {
        let create = starling_proto::tweet::v1::CreateTweetRequest {
            author: author.into(),
            text: format!("posted as {author}"),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(create.len() as u32).to_be_bytes());
        frame.extend_from_slice(&create);
        let mut req = hyper::Request::builder()
            .method(Method::POST)
            .uri(format!(
                "{}/starling.tweet.v1.TweetService/CreateTweet",
                h.base
            ))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Full::new(Bytes::from(frame))).unwrap()
    };
    let grpc_status = |r: &Resp| {
        r.headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&r.body).into_owned();
                text.split("grpc-status:")
                    .nth(1)
                    .map(|s| s.trim().chars().take_while(char::is_ascii_digit).collect())
                    .unwrap_or(text)
            })
    };
    let anonymous = h.send(web_post("victim", None)).await;
    assert_eq!(grpc_status(&anonymous), "16", "UNAUTHENTICATED expected");
    let forged = h.send(web_post("victim", Some(mallory))).await;
    assert_eq!(grpc_status(&forged), "7", "PERMISSION_DENIED expected");
    let own = h.send(web_post("victim", Some(victim_token))).await;
    assert_eq!(grpc_status(&own), "0", "the user's own write goes through");
    let victim = h.get("/api/users/victim/tweets").await;
    assert_eq!(victim.status, StatusCode::OK);
    assert_eq!(
        victim.json()["tweets"].as_array().map(Vec::len),
        Some(1),
        "only the victim's own post: {}",
        victim.text()
    );
    w.stop().await;
}

mod fuzz {
    //! Random bodies, ids, names and page tokens against every JSON route of a running
    //! gateway with its five services: each request gets an answer below 500 (bad input is
    //! the client's fault, so 4xx), and the gateway keeps serving. `PROPTEST_CASES` sets
    //! the number of cases (256 by default; `scripts/fuzz.sh` runs many more).

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const KEYS: [&str; 9] = [
        "user", "password", "text", "author", "followee", "follower", "tweet_id", "kind", "limit",
    ];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(KEYS.to_vec()).prop_map(String::from),
            1 => "\\PC{0,8}",
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,300}".prop_map(Value::from),
            "[a-z0-9_]{1,12}".prop_map(Value::from),
            "[0-9]{1,22}".prop_map(Value::from),
            proptest::sample::select(vec!["like", "click", "fuzzer", "nobody"])
                .prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// A body: mostly objects with the API's own keys, sometimes any JSON, sometimes not
    /// JSON at all.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            5 => proptest::collection::vec((key(), leaf()), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect()).to_string().into_bytes()),
            2 => json_value().prop_map(|v| v.to_string().into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    /// Any text, percent-encoded as a path segment or query value.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,24}",
            "[0-9]{1,22}",
            "[a-z0-9_]{1,12}",
            Just(String::new())
        ]
        .prop_map(|s| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b == b'_' {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        })
    }

    #[derive(Debug, Clone)]
    enum Call {
        Post(&'static str, Vec<u8>),
        Delete(String),
        Get(String),
    }

    fn call() -> impl Strategy<Value = Call> {
        let post = proptest::sample::select(vec![
            "/api/signup",
            "/api/signin",
            "/api/tweets",
            "/api/follows",
            "/api/engagements",
        ]);
        prop_oneof![
            4 => (post, body()).prop_map(|(p, b)| Call::Post(p, b)),
            1 => segment().prop_map(|s| Call::Delete(format!("/api/follows/{s}"))),
            3 => (
                proptest::sample::select(vec![
                    "/api/tweets/{}",
                    "/api/users/{}",
                    "/api/users/{}/tweets?page_size=3&page_token={}",
                    "/api/users/fuzzer/timeline?page_token={}",
                    "/api/users/{}/followers?page_token={}&page_size={}",
                    "/api/users/fuzzer/following?page_token={}",
                    "/api/users/{}/recommendations?limit={}",
                    "/api/tags?{}",
                ]),
                segment(),
                segment(),
                segment(),
            )
                .prop_map(|(pattern, a, b, c)| {
                    let mut parts = [a, b, c].into_iter();
                    let mut path = String::new();
                    for (i, piece) in pattern.split("{}").enumerate() {
                        if i > 0 {
                            path.push_str(&parts.next().unwrap_or_default());
                        }
                        path.push_str(piece);
                    }
                    Call::Get(path)
                }),
        ]
    }

    #[test]
    fn fuzz_json_api_answers_4xx_never_5xx() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (world, token) = rt.block_on(async {
            let w = World::start().await;
            let t = w.sign_up("fuzzer").await;
            (w, t)
        });
        let h = world.http.clone();
        let mut runner = TestRunner::new(Config::default());
        let result = runner.run(&call(), |c| {
            let resp = rt.block_on(async {
                let req = match &c {
                    Call::Post(path, body) => {
                        let mut req = h.request(Method::POST, path, Some(&token), None);
                        req.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        *req.body_mut() = Full::new(Bytes::from(body.clone()));
                        req
                    }
                    Call::Delete(path) => h.request(Method::DELETE, path, Some(&token), None),
                    Call::Get(path) => h.request(Method::GET, path, None, None),
                };
                h.send(req).await
            });
            prop_assert!(
                resp.status.as_u16() < 500,
                "{c:?} answered {}: {}",
                resp.status,
                resp.text()
            );
            if !resp.status.is_success() {
                let message = serde_json::from_slice::<Value>(&resp.body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_default();
                prop_assert!(
                    !message.is_empty(),
                    "{c:?}: an error says what is wrong: {}",
                    resp.text()
                );
            }
            Ok(())
        });
        let alive = rt.block_on(h.get("/healthz")).status;
        rt.block_on(world.stop());
        if let Err(e) = result {
            panic!("{e}");
        }
        assert_eq!(alive, StatusCode::OK, "the gateway kept serving");
    }
}

/// Whether `v` is what `schema` (within the OpenAPI document `doc`) describes: types,
/// required properties, no undocumented properties, array items; `$ref`, `oneOf` and
/// `anyOf` followed. An error says where the answer departs from the document.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: dangling $ref {r}"));
        }
        return conforms(doc, target, v, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            if alts.iter().any(|alt| conforms(doc, alt, v, at).is_ok()) {
                return Ok(());
            }
            return Err(format!("{at}: {v} matches none of {key} {schema}"));
        }
    }
    let actual = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| *t == actual || (*t == "number" && actual == "integer"))
    {
        return Err(format!(
            "{at}: a {actual} ({v}) where the document says {types:?}"
        ));
    }
    if let Value::Object(fields) = v {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !fields.contains_key(req) {
                return Err(format!("{at}: required property {req:?} missing from {v}"));
            }
        }
        if let Some(props) = props {
            for (k, fv) in fields {
                let Some(ps) = props.get(k) else {
                    return Err(format!("{at}: property {k:?} is not in the document"));
                };
                conforms(doc, ps, fv, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(doc, s, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_real_answers_match() {
    let w = World::start().await;
    let h = &w.http;
    let r = h.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );

    // Every route of the JSON API is documented, and nothing else.
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .into_iter()
                .flatten()
                .filter(|(m, _)| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
                .map(move |(m, _)| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let expected: std::collections::BTreeSet<(String, String)> = [
        ("POST", "/api/signup"),
        ("POST", "/api/signin"),
        ("POST", "/api/signout"),
        ("POST", "/api/stream-ticket"),
        ("GET", "/api/me"),
        ("POST", "/api/tweets"),
        ("GET", "/api/tweets/{id}"),
        ("GET", "/api/users/{user}"),
        ("GET", "/api/users/{user}/tweets"),
        ("GET", "/api/users/{user}/timeline"),
        ("GET", "/api/users/{user}/timeline/stream"),
        ("GET", "/api/users/{user}/followers"),
        ("GET", "/api/users/{user}/following"),
        ("GET", "/api/users/{user}/recommendations"),
        ("POST", "/api/follows"),
        ("DELETE", "/api/follows/{followee}"),
        ("POST", "/api/engagements"),
        ("GET", "/api/tags"),
        ("GET", "/api/admin/mesh"),
        ("GET", "/api/admin/traces"),
        ("GET", "/api/admin/traces/{id}"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(documented, expected);
    // ... and each documented operation is served (not the fallback's 404 or 405).
    for (method, path) in &documented {
        let concrete = path
            .replace("{user}", "nobody")
            .replace("{id}", "1")
            .replace("{followee}", "nobody");
        let r = h
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete,
                None,
                None,
            )
            .await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !r.text().contains("no such API route"),
            "{method} {path} is documented but not served"
        );
    }

    // Real answers match what the document says of them.
    let check = |method: &str, path: &str, r: &Resp| {
        let op = &doc["paths"][path][method.to_lowercase()];
        let response = &op["responses"][r.status.as_u16().to_string()];
        assert!(
            !response.is_null(),
            "{method} {path} answered {}, which the document does not list: {}",
            r.status,
            r.text()
        );
        if let Some(schema) = response["content"]["application/json"].get("schema") {
            if let Err(e) = conforms(&doc, schema, &r.json(), &format!("{method} {path}")) {
                panic!("{e}");
            }
        }
    };
    let creds = json!({"user": "olive", "password": "correct horse"});
    let r = h.post("/api/signup", None, creds.clone()).await;
    check("POST", "/api/signup", &r);
    let olive = r.json()["token"].as_str().unwrap().to_string();
    check(
        "POST",
        "/api/signup",
        &h.post("/api/signup", None, creds.clone()).await,
    );
    check(
        "POST",
        "/api/signin",
        &h.post("/api/signin", None, creds).await,
    );
    let pat = w.sign_up("pat").await;
    check("GET", "/api/me", &h.get_auth("/api/me", &olive).await);
    check("GET", "/api/me", &h.get("/api/me").await);
    let r = h
        .post(
            "/api/tweets",
            Some(&pat),
            json!({"text": "Reading a novel #books"}),
        )
        .await;
    check("POST", "/api/tweets", &r);
    let id = r.json()["id"].as_str().unwrap().to_string();
    check(
        "POST",
        "/api/tweets",
        &h.post("/api/tweets", Some(&pat), json!({"text": ""})).await,
    );
    check(
        "GET",
        "/api/tweets/{id}",
        &h.get(&format!("/api/tweets/{id}")).await,
    );
    check("GET", "/api/tweets/{id}", &h.get("/api/tweets/1").await);
    check("GET", "/api/tweets/{id}", &h.get("/api/tweets/x").await);
    let r = h
        .post("/api/follows", Some(&olive), json!({"followee": "pat"}))
        .await;
    check("POST", "/api/follows", &r);
    check(
        "POST",
        "/api/follows",
        &h.post("/api/follows", Some(&olive), json!({"followee": "nobody"}))
            .await,
    );
    check("GET", "/api/users/{user}", &h.get("/api/users/pat").await);
    check(
        "GET",
        "/api/users/{user}",
        &h.get("/api/users/nobody").await,
    );
    check(
        "GET",
        "/api/users/{user}/tweets",
        &h.get("/api/users/pat/tweets").await,
    );
    check(
        "GET",
        "/api/users/{user}/timeline",
        &h.get("/api/users/olive/timeline").await,
    );
    check(
        "GET",
        "/api/users/{user}/followers",
        &h.get("/api/users/pat/followers").await,
    );
    check(
        "GET",
        "/api/users/{user}/following",
        &h.get("/api/users/olive/following?page_token=NOPE").await,
    );
    let r = h
        .post(
            "/api/engagements",
            Some(&olive),
            json!({"tweet_id": id, "kind": "like"}),
        )
        .await;
    check("POST", "/api/engagements", &r);
    check(
        "GET",
        "/api/users/{user}/recommendations",
        &h.get("/api/users/olive/recommendations").await,
    );
    check("GET", "/api/tags", &h.get("/api/tags").await);
    // The admin routes (the test's client is on loopback): the mesh view of this world's
    // services, and no traces kept by a gateway of its own.
    let mesh = h.get("/api/admin/mesh").await;
    check("GET", "/api/admin/mesh", &mesh);
    assert_eq!(
        mesh.json()["services"].as_array().map(Vec::len),
        Some(5),
        "{}",
        mesh.text()
    );
    let traces = h.get("/api/admin/traces").await;
    assert_eq!(traces.status, StatusCode::NOT_FOUND, "{}", traces.text());
    check("GET", "/api/admin/traces", &traces);
    let bad = h.get("/api/admin/traces/xyz").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    check("GET", "/api/admin/traces/{id}", &bad);
    check(
        "POST",
        "/api/stream-ticket",
        &h.call(Method::POST, "/api/stream-ticket", Some(&olive), None)
            .await,
    );
    check(
        "DELETE",
        "/api/follows/{followee}",
        &h.call(Method::DELETE, "/api/follows/pat", Some(&olive), None)
            .await,
    );
    check(
        "POST",
        "/api/signout",
        &h.call(Method::POST, "/api/signout", Some(&olive), None)
            .await,
    );
    check(
        "POST",
        "/api/signout",
        &h.call(Method::POST, "/api/signout", Some(&olive), None)
            .await,
    );
    w.stop().await;
}
