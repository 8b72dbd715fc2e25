//! The workload, and the history of every operation it attempted.
//!
//! Users `u000`..: each is driven by exactly one worker, one operation at a time, so the
//! operations on one follow pair never overlap and "the last acknowledged operation" of a
//! pair is well defined. A mix of posts, follows, unfollows, home-timeline reads and
//! engagements, at a fixed total rate; every call has a 5 s deadline. Every attempt is
//! recorded with its start and end time and its outcome (acknowledged, or the status code).

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

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Runs one operation and records it.
pub async fn run_op(mesh: &Mesh, history: &History, kind: Kind) -> Result<u64, tonic::Code> {
    let started = Instant::now();
    let code = |s: tonic::Status| s.code();
    let outcome = match &kind {
        Kind::Post { author, text } => TweetServiceClient::new(mesh.channel("tweet"))
            .create_tweet(deadline(CreateTweetRequest {
                author: author.clone(),
                text: text.clone(),
            }))
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
    };
    history.record(Op {
        kind,
        started,
        finished: Instant::now(),
        outcome,
    });
    outcome
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

/// Runs the workload until `stop` turns true.
pub async fn drive(
    mesh: Arc<Mesh>,
    history: Arc<History>,
    w: Workload,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    for worker in 0..w.workers {
        let (mesh, history, w, mut stop) = (mesh.clone(), history.clone(), w.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_add(worker as u64));
            let mine: Vec<String> = (0..w.users)
                .filter(|i| i % w.workers == worker)
                .map(user)
                .collect();
            if mine.is_empty() {
                return;
            }
            let period = Duration::from_secs_f64(w.workers as f64 / w.rate.max(0.1));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let me = mine[rng.random_range(0..mine.len())].clone();
                let other = user(rng.random_range(0..w.users));
                let roll = rng.random_range(0..100);
                let kind = if roll < 20 {
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
                let _ = run_op(&mesh, &history, kind).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
