//! The workload, and the history of every operation it attempted.
//!
//! Users `u000`..: each is driven by exactly one worker, one operation at a time, so the
//! operations on one follow pair never overlap and "the last acknowledged operation" of a
//! pair is well defined. A mix of posts, follows, unfollows, home-timeline reads,
//! engagements and sign-ups of new accounts, at a fixed total rate; every call has a 5 s
//! deadline. Every third user (up to 15) is a web user: they sign up through the gateway and
//! make every call through its JSON API with their token, as the browser app does; the
//! others call the services over the mesh. Every attempt is recorded with its start and
//! end time and its outcome (acknowledged, or the status code).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use starling_discovery::Mesh;
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::{FollowRequest, UnfollowRequest};
use starling_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use starling_proto::recommendation::v1::{EngagementKind, RecordEngagementRequest};
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::GetHomeTimelineRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::CreateTweetRequest;
use tokio::sync::watch;

use super::web::Web;

pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Post {
        author: String,
        text: String,
    },
    Follow {
        follower: String,
        followee: String,
    },
    Unfollow {
        follower: String,
        followee: String,
    },
    Read {
        user: String,
    },
    Engage {
        user: String,
        tweet: u64,
        like: bool,
    },
    /// A new account, through the gateway.
    SignUp {
        user: String,
    },
}

/// Where a call goes in: the services over the mesh, or the gateway's JSON API with a
/// user's token.
#[derive(Clone, Copy)]
pub enum Door<'a> {
    Mesh(&'a Mesh),
    Web(&'a Web, &'a str),
}

/// The password the workload gives `user` (the checks sign in with it).
pub fn password(user: &str) -> String {
    format!("chaos-password-{user}")
}

#[derive(Debug, Clone)]
pub struct Op {
    pub kind: Kind,
    pub started: Instant,
    pub finished: Instant,
    /// `Ok` with the tweet id for posts (0 otherwise), or the status code.
    pub outcome: Result<u64, tonic::Code>,
}

impl Op {
    pub fn acked(&self) -> bool {
        self.outcome.is_ok()
    }
}

#[derive(Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
    /// Acknowledged posts, for engagements to pick from.
    tweets: Mutex<Vec<u64>>,
}

impl History {
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, op: Op) {
        if let (Kind::Post { .. }, Ok(id)) = (&op.kind, &op.outcome) {
            self.tweets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(*id);
        }
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Records `kind` as started at `started` and finished now.
    fn record_since(&self, kind: Kind, started: Instant, outcome: Result<u64, tonic::Code>) {
        self.record(Op {
            kind,
            started,
            finished: Instant::now(),
            outcome,
        });
    }

    /// Runs `call`, records it as `kind` (its answer shown as `id`), and hands the answer on.
    async fn timed<T>(
        &self,
        kind: Kind,
        call: impl std::future::Future<Output = Result<T, tonic::Code>>,
        id: impl FnOnce(&T) -> u64,
    ) -> Result<T, tonic::Code> {
        let started = Instant::now();
        let answer = call.await;
        self.record_since(kind, started, answer.as_ref().map(id).map_err(|c| *c));
        answer
    }

    fn some_tweet(&self, rng: &mut StdRng) -> Option<u64> {
        let tweets = self.tweets.lock().unwrap_or_else(|e| e.into_inner());
        (!tweets.is_empty()).then(|| tweets[rng.random_range(0..tweets.len())])
    }
}

pub fn user(i: usize) -> String {
    format!("u{i:03}")
}

fn deadline<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// Names the write with an idempotency key, so the mesh may resend it (see
/// `starling_discovery::IDEMPOTENCY_KEY`).
fn keyed<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
    let key = format!(
        "chaos-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    if let Ok(v) = key.parse() {
        r.metadata_mut()
            .insert(starling_discovery::IDEMPOTENCY_KEY, v);
    }
    r
}

/// Runs one operation and records it.
pub async fn run_op(door: Door<'_>, history: &History, kind: Kind) -> Result<u64, tonic::Code> {
    let started = Instant::now();
    let outcome = match door {
        Door::Mesh(mesh) => over_mesh(mesh, &kind).await,
        Door::Web(web, token) => over_web(web, token, &kind).await,
    };
    history.record_since(kind, started, outcome);
    outcome
}

async fn over_web(web: &Web, token: &str, kind: &Kind) -> Result<u64, tonic::Code> {
    use http::Method;
    use serde_json::json;
    let token = Some(token);
    match kind {
        Kind::Post { text, .. } => {
            let tweet = web
                .call(Method::POST, "/api/tweets", token, Some(json!({ "text": text })))
                .await?;
            tweet
                .get("id")
                .and_then(serde_json::Value::as_str)
                .and_then(|id| id.parse().ok())
                .ok_or(tonic::Code::Internal)
        }
        Kind::Follow { followee, .. } => web
            .call(Method::POST, "/api/follows", token, Some(json!({ "followee": followee })))
            .await
            .map(|_| 0),
        Kind::Unfollow { followee, .. } => web
            .call(Method::DELETE, &format!("/api/follows/{followee}"), token, None)
            .await
            .map(|_| 0),
        Kind::Read { user } => web
            .call(Method::GET, &format!("/api/users/{user}/timeline?page_size=20"), None, None)
            .await
            .map(|_| 0),
        Kind::Engage { tweet, like, .. } => web
            .call(
                Method::POST,
                "/api/engagements",
                token,
                Some(json!({ "tweet_id": tweet.to_string(), "kind": if *like { "like" } else { "click" } })),
            )
            .await
            .map(|_| 0),
        Kind::SignUp { user } => web.sign_up(user, &password(user)).await.map(|_| 0),
    }
}

async fn over_mesh(mesh: &Mesh, kind: &Kind) -> Result<u64, tonic::Code> {
    let code = |s: tonic::Status| s.code();
    match kind {
        Kind::Post { author, text } => TweetServiceClient::new(mesh.channel("tweet"))
            .create_tweet(keyed(deadline(CreateTweetRequest {
                author: author.clone(),
                text: text.clone(),
            })))
            .await
            .map(|r| r.into_inner().tweet.map_or(0, |t| t.id))
            .map_err(code),
        Kind::Follow { follower, followee } => FollowerServiceClient::new(mesh.channel("follower"))
            .follow(deadline(FollowRequest {
                follower: follower.clone(),
                followee: followee.clone(),
            }))
            .await
            .map(|_| 0)
            .map_err(code),
        Kind::Unfollow { follower, followee } => {
            FollowerServiceClient::new(mesh.channel("follower"))
                .unfollow(deadline(UnfollowRequest {
                    follower: follower.clone(),
                    followee: followee.clone(),
                }))
                .await
                .map(|_| 0)
                .map_err(code)
        }
        Kind::Read { user } => {
            let mut req = deadline(GetHomeTimelineRequest {
                user: user.clone(),
                page_size: 20,
                page_token: String::new(),
            });
            if let Ok(v) = user.parse() {
                req.metadata_mut().insert("x-user-id", v);
            }
            TimelineServiceClient::new(mesh.channel("timeline"))
                .get_home_timeline(req)
                .await
                .map(|_| 0)
                .map_err(code)
        }
        Kind::Engage { user, tweet, like } => {
            RecommendationServiceClient::new(mesh.channel("recommendation"))
                .record_engagement(deadline(RecordEngagementRequest {
                    user: user.clone(),
                    tweet_id: *tweet,
                    kind: if *like {
                        EngagementKind::Like as i32
                    } else {
                        EngagementKind::Click as i32
                    },
                }))
                .await
                .map(|r| r.into_inner().event_id.len() as u64)
                .map_err(code)
        }
        // Accounts live in the gateway only.
        Kind::SignUp { .. } => Err(tonic::Code::Unimplemented),
    }
}

/// What the workload looks like.
#[derive(Debug, Clone)]
pub struct Workload {
    pub users: usize,
    /// Operations per second, all workers together.
    pub rate: f64,
    pub workers: usize,
    pub seed: u64,
    /// A user with many followers, whose posts are large fan-outs.
    pub big_account: String,
}

/// Web users (every third, at most 15) call through the gateway. The gateway takes 20
/// sign-ups a minute from one address, and the whole workload comes from one: 15 web
/// users at the start plus one new account every [`SIGN_UP_EVERY`] stay under it.
pub fn is_web_user(i: usize) -> bool {
    i.is_multiple_of(3) && i < 45
}

/// How often someone new signs up (see [`is_web_user`]).
const SIGN_UP_EVERY: Duration = Duration::from_secs(15);

/// Runs the workload until `stop` turns true.
pub async fn drive(
    mesh: Arc<Mesh>,
    web: Web,
    history: Arc<History>,
    w: Workload,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    let last_sign_up = Arc::new(Mutex::new(Instant::now()));
    for worker in 0..w.workers {
        let (mesh, web, history, w, mut stop, last_sign_up) = (
            mesh.clone(),
            web.clone(),
            history.clone(),
            w.clone(),
            stop.clone(),
            last_sign_up.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_add(worker as u64));
            let mine: Vec<usize> = (0..w.users).filter(|i| i % w.workers == worker).collect();
            if mine.is_empty() {
                return;
            }
            // Tokens of this worker's web users, got by signing up on their first call.
            let mut tokens: std::collections::HashMap<usize, String> = Default::default();
            let mut sign_ups = 0u64;
            let period = Duration::from_secs_f64(w.workers as f64 / w.rate.max(0.1));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let me_index = mine[rng.random_range(0..mine.len())];
                let me = user(me_index);
                let web_user = is_web_user(me_index);
                if web_user && !tokens.contains_key(&me_index) {
                    let kind = Kind::SignUp { user: me.clone() };
                    let outcome = history
                        .timed(kind, web.sign_up(&me, &password(&me)), |_| 0)
                        .await;
                    if let Ok(token) = outcome {
                        tokens.insert(me_index, token);
                    }
                    continue;
                }
                let other = user(rng.random_range(0..w.users));
                let roll = rng.random_range(0..100);
                let due = || {
                    let mut last = last_sign_up.lock().unwrap_or_else(|e| e.into_inner());
                    let due = last.elapsed() >= SIGN_UP_EVERY;
                    if due {
                        *last = Instant::now();
                    }
                    due
                };
                let kind = if roll < 2 && due() {
                    // Someone new joins (through the gateway, the only place accounts live).
                    sign_ups += 1;
                    let kind = Kind::SignUp {
                        user: format!("new{worker:02}x{sign_ups}"),
                    };
                    let _ = run_op(Door::Web(&web, ""), &history, kind).await;
                    continue;
                } else if roll < 20 {
                    n += 1;
                    Kind::Post {
                        author: me.clone(),
                        text: format!("chaos post {n} by {me}: a new novel for my book club"),
                    }
                } else if roll < 22 && me == user(0) {
                    Kind::Post {
                        author: w.big_account.clone(),
                        text: format!("announcement {n} to everyone"),
                    }
                } else if roll < 40 {
                    Kind::Follow {
                        follower: me.clone(),
                        followee: if rng.random_range(0..10) == 0 {
                            w.big_account.clone()
                        } else {
                            other
                        },
                    }
                } else if roll < 50 {
                    Kind::Unfollow {
                        follower: me.clone(),
                        followee: other,
                    }
                } else if roll < 85 {
                    Kind::Read { user: me.clone() }
                } else {
                    match history.some_tweet(&mut rng) {
                        Some(tweet) => Kind::Engage {
                            user: me.clone(),
                            tweet,
                            like: rng.random_range(0..2) == 0,
                        },
                        None => Kind::Read { user: me.clone() },
                    }
                };
                if let Kind::Follow { follower, followee } | Kind::Unfollow { follower, followee } =
                    &kind
                {
                    if follower == followee {
                        continue;
                    }
                }
                // The big account's posts stay on the mesh: it has no account in the gateway.
                let door = match tokens.get(&me_index) {
                    Some(token) if !matches!(&kind, Kind::Post { author, .. } if *author != me) => {
                        Door::Web(&web, token)
                    }
                    _ => Door::Mesh(&mesh),
                };
                let _ = run_op(door, &history, kind).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
