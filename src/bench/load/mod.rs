//! `starling bench load`: the whole system at a constant arrival rate, swept upwards until
//! its tail breaks.
//!
//! Open loop: requests are sent at fixed intended times whatever the system answers, and
//! each latency runs from the intended time, not from when the generator got round to it,
//! so a stall is charged to every request that should have gone out during it
//! (coordinated omission, as wrk2 corrects it). The mix is DeathStarBench socialNetwork's
//! (60 % home-timeline reads, 30 % user-timeline reads, 10 % posts), scaled to 97 % to
//! leave room for follows (1 %) and likes (2 %), over a power-law social graph
//! ([`graph`]). Each rate reports latency per operation (HdrHistogram), errors and the CPU
//! seconds of every process ([`cpu`]), and the sweep ends with the highest rate whose p99
//! stayed under the limit ([`report`]).

pub mod cpu;
pub mod graph;
pub mod report;
pub mod sut;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use starling_discovery::MeshChannel;
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::FollowRequest;
use starling_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use starling_proto::recommendation::v1::{EngagementKind, RecordEngagementRequest};
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::GetHomeTimelineRequest;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::{CreateTweetRequest, ListUserTweetsRequest};
use tokio::sync::Semaphore;
use tonic::Code;

use crate::chaos::web::Web;
use crate::cli::{LoadBenchArgs, LoadDoor};
use report::{OpStats, Step};

/// Every call's deadline; a call that misses it is an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests the generator keeps in flight at most; one more is counted as an error
/// without being sent (the system is far behind by then).
const MAX_IN_FLIGHT: usize = 20_000;
/// Tweet ids kept for likes to pick from.
const KEEP_TWEETS: usize = 10_000;
/// Calls in flight while the graph is loaded.
const SETUP_CONCURRENCY: usize = 64;
/// The gateway takes 20 sign-ups a minute from one address: each source address signs up
/// fewer than that.
const SIGN_UPS_PER_ADDRESS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    HomeTimeline,
    UserTimeline,
    Post,
    Follow,
    Like,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::HomeTimeline,
        Op::UserTimeline,
        Op::Post,
        Op::Follow,
        Op::Like,
    ];

    /// Share per thousand requests.
    fn per_mille(self) -> u32 {
        match self {
            Op::HomeTimeline => 582,
            Op::UserTimeline => 291,
            Op::Post => 97,
            Op::Follow => 10,
            Op::Like => 20,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::HomeTimeline => "home_timeline",
            Op::UserTimeline => "user_timeline",
            Op::Post => "post",
            Op::Follow => "follow",
            Op::Like => "like",
        }
    }

    fn pick(rng: &mut StdRng) -> Op {
        let mut x = rng.random_range(0..1000);
        for op in Op::ALL {
            if x < op.per_mille() {
                return op;
            }
            x -= op.per_mille();
        }
        Op::HomeTimeline
    }
}

/// Latencies and errors of one step, per operation.
struct Recorder {
    hists: Mutex<Vec<Histogram<u64>>>,
    errors: [AtomicU64; 5],
    last_error: Mutex<Option<String>>,
}

impl Recorder {
    fn new() -> Recorder {
        let hist = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        Recorder {
            hists: Mutex::new(Op::ALL.iter().map(|_| hist()).collect()),
            errors: Default::default(),
            last_error: Mutex::new(None),
        }
    }

    fn index(op: Op) -> usize {
        Op::ALL.iter().position(|o| *o == op).unwrap_or(0)
    }

    fn record(&self, op: Op, intended: Instant, outcome: &Result<Option<u64>, String>) {
        let us = intended.elapsed().as_micros().clamp(1, 120_000_000) as u64;
        let i = Self::index(op);
        self.hists.lock().unwrap_or_else(|e| e.into_inner())[i].saturating_record(us);
        if let Err(e) = outcome {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{}: {e}", op.name()));
        }
    }

    fn stats(&self) -> Vec<OpStats> {
        let hists = self.hists.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        let mut out = Vec::new();
        let mut errors = 0;
        for (i, op) in Op::ALL.iter().enumerate() {
            let e = self.errors[i].load(Ordering::Relaxed);
            errors += e;
            let _ = all.add(&hists[i]);
            out.push(OpStats::of(op.name(), &hists[i], e));
        }
        out.push(OpStats::of("all", &all, errors));
        out
    }
}

/// A signed-up user of the http door.
struct WebUser {
    token: String,
    /// A client bound to this user's source address.
    web: Arc<Web>,
}

/// The services' channels, for the grpc door.
struct Channels {
    tweet: MeshChannel,
    timeline: MeshChannel,
    follower: MeshChannel,
    recommendation: MeshChannel,
}

/// Where requests go in.
enum Door {
    Grpc(Box<Channels>),
    Http { users: Vec<WebUser> },
}

struct Load {
    door: Door,
    users: Vec<String>,
    tweets: Mutex<Vec<u64>>,
}

fn deadline<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// A post named by an idempotency key, so the mesh may resend it.
fn keyed<T>(msg: T) -> tonic::Request<T> {
    let mut r = deadline(msg);
    let key = format!("load-{:032x}", rand::random::<u128>());
    if let Ok(v) = key.parse() {
        r.metadata_mut()
            .insert(starling_discovery::IDEMPOTENCY_KEY, v);
    }
    r
}

fn post_text(rng: &mut StdRng) -> String {
    const TOPICS: [&str; 8] = [
        "music", "movies", "football", "rust", "coffee", "travel", "science", "cooking",
    ];
    format!(
        "thinking about {} and {} today #{}",
        TOPICS[rng.random_range(0..TOPICS.len())],
        TOPICS[rng.random_range(0..TOPICS.len())],
        rng.random_range(0..1000)
    )
}

/// One request, fully decided before its intended time.
struct Request {
    op: Op,
    /// Index into `users` (the reader, poster, follower or liker).
    user: usize,
    /// Index into `users` (whose timeline, whom to follow).
    other: usize,
    tweet: u64,
    text: String,
}

impl Load {
    fn decide(&self, rng: &mut StdRng) -> Request {
        let op = Op::pick(rng);
        let actors = match &self.door {
            Door::Grpc(_) => self.users.len(),
            Door::Http { users } => users.len(),
        };
        // Only a like needs a tweet: the shared list is not locked for anything else.
        let tweet = if op == Op::Like {
            let tweets = self.tweets.lock().unwrap_or_else(|e| e.into_inner());
            if tweets.is_empty() {
                0
            } else {
                tweets[rng.random_range(0..tweets.len())]
            }
        } else {
            0
        };
        Request {
            op,
            user: rng.random_range(0..actors.max(1)),
            other: rng.random_range(0..self.users.len().max(1)),
            tweet,
            text: if op == Op::Post {
                post_text(rng)
            } else {
                String::new()
            },
        }
    }

    fn remember(&self, tweet: u64) {
        let mut tweets = self.tweets.lock().unwrap_or_else(|e| e.into_inner());
        if tweets.len() < KEEP_TWEETS {
            tweets.push(tweet);
        } else {
            let i = (tweet as usize) % KEEP_TWEETS;
            tweets[i] = tweet;
        }
    }

    /// Sends `r`; the new tweet's id for a post.
    async fn send(&self, r: Request) -> Result<Option<u64>, String> {
        let out = match &self.door {
            Door::Grpc(channels) => self.over_grpc(r, channels).await,
            Door::Http { users } => self.over_http(r, users).await,
        };
        if let Ok(Some(id)) = out {
            self.remember(id);
        }
        out
    }

    async fn over_grpc(&self, r: Request, channels: &Channels) -> Result<Option<u64>, String> {
        let Channels {
            tweet,
            timeline,
            follower,
            recommendation,
        } = channels;
        let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        let user = self.users[r.user].clone();
        let other = self.users[r.other].clone();
        match r.op {
            Op::HomeTimeline => {
                let mut req = deadline(GetHomeTimelineRequest {
                    user: other.clone(),
                    page_size: 20,
                    page_token: String::new(),
                });
                if let Ok(v) = other.parse() {
                    req.metadata_mut().insert("x-user-id", v);
                }
                TimelineServiceClient::new(timeline.clone())
                    .get_home_timeline(req)
                    .await
                    .map(|_| None)
                    .map_err(status)
            }
            Op::UserTimeline => TweetServiceClient::new(tweet.clone())
                .list_user_tweets(deadline(ListUserTweetsRequest {
                    user: other,
                    page_size: 20,
                    page_token: String::new(),
                }))
                .await
                .map(|_| None)
                .map_err(status),
            Op::Post => TweetServiceClient::new(tweet.clone())
                .create_tweet(keyed(CreateTweetRequest {
                    author: user,
                    text: r.text,
                }))
                .await
                .map(|a| a.into_inner().tweet.map(|t| t.id))
                .map_err(status),
            Op::Follow => FollowerServiceClient::new(follower.clone())
                .follow(deadline(FollowRequest {
                    follower: user,
                    followee: other,
                }))
                .await
                .map(|_| None)
                .or_else(|s| follow_outcome(s.code()).ok_or(s).map_err(status)),
            Op::Like => RecommendationServiceClient::new(recommendation.clone())
                .record_engagement(deadline(RecordEngagementRequest {
                    user,
                    tweet_id: r.tweet,
                    kind: EngagementKind::Like as i32,
                }))
                .await
                .map(|_| None)
                .map_err(status),
        }
    }

    async fn over_http(&self, r: Request, users: &[WebUser]) -> Result<Option<u64>, String> {
        use http::Method;
        let code = |c: Code| format!("{c:?}");
        let me = &users[r.user];
        let other = &self.users[r.other];
        let token = Some(me.token.as_str());
        match r.op {
            Op::HomeTimeline | Op::UserTimeline => {
                let list = if r.op == Op::HomeTimeline {
                    "timeline"
                } else {
                    "tweets"
                };
                me.web
                    .call(
                        Method::GET,
                        &format!("/api/users/{other}/{list}?page_size=20"),
                        token,
                        None,
                    )
                    .await
                    .map(|_| None)
                    .map_err(code)
            }
            Op::Post => {
                let answer = me
                    .web
                    .call(
                        Method::POST,
                        "/api/tweets",
                        token,
                        Some(json!({ "text": r.text })),
                    )
                    .await
                    .map_err(code)?;
                let id = answer
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| format!("post answered without an id: {answer}"))?;
                Ok(Some(id))
            }
            Op::Follow => me
                .web
                .call(
                    Method::POST,
                    "/api/follows",
                    token,
                    Some(json!({ "followee": other })),
                )
                .await
                .map(|_| None)
                .or_else(|c| follow_outcome(c).ok_or(c).map_err(code)),
            Op::Like => me
                .web
                .call(
                    Method::POST,
                    "/api/engagements",
                    token,
                    Some(json!({ "tweet_id": r.tweet.to_string(), "kind": "like" })),
                )
                .await
                .map(|_| None)
                .map_err(code),
        }
    }
}

/// Following oneself is refused by design; the mix draws the followee at random, so that
/// answer is the right one, not an error of the system.
fn follow_outcome(code: Code) -> Option<Option<u64>> {
    (code == Code::InvalidArgument).then_some(None)
}

/// Runs `seconds` of requests at `rate`; every request has finished when it returns.
async fn step(
    load: &Arc<Load>,
    rate: f64,
    seconds: f64,
    rng: &mut StdRng,
    processes: &[(String, u32)],
) -> Step {
    let count = (rate * seconds).round().max(1.0) as u64;
    let recorder = Arc::new(Recorder::new());
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let cpu_before: Vec<Option<f64>> = processes
        .iter()
        .map(|(_, p)| cpu::cpu_seconds(*p))
        .collect();
    let start = Instant::now() + Duration::from_millis(5);
    for i in 0..count {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let request = load.decide(rng);
        let op = request.op;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            recorder.record(
                op,
                intended,
                &Err("not sent: the generator's in-flight limit".into()),
            );
            continue;
        };
        let (load, recorder) = (load.clone(), recorder.clone());
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), load.send(request))
                    .await
                    .unwrap_or_else(|_| Err("no answer within the deadline".into()));
            recorder.record(op, intended, &outcome);
            drop(slot);
        });
    }
    // Every slot back: every request answered or timed out.
    let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    let wall = start.elapsed().as_secs_f64();
    let cpu = processes
        .iter()
        .zip(cpu_before)
        .filter_map(|((name, pid), before)| Some((name.clone(), cpu::cpu_seconds(*pid)? - before?)))
        .collect();
    let ops = recorder.stats();
    let all = ops.last().map_or(0, |o| o.count - o.errors);
    if let Some(e) = recorder
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        println!("  last error at {rate:.0}/s: {e}");
    }
    Step {
        target: rate,
        achieved: all as f64 / wall,
        ops,
        cpu,
        wall_seconds: wall,
    }
}

/// Signs up the first `count` users through the gateway, 16 per loopback source address.
async fn sign_up(gateway: &str, users: &[String], count: usize) -> anyhow::Result<Vec<WebUser>> {
    let base = Web::new(gateway, Duration::from_secs(30));
    let webs: Vec<Arc<Web>> = (0..count.div_ceil(SIGN_UPS_PER_ADDRESS))
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(127, 0, 10 + (i / 250) as u8, (i % 250) as u8 + 2);
            Arc::new(base.from_source(ip.into()))
        })
        .collect();
    let signed: Vec<anyhow::Result<WebUser>> = futures::stream::iter(0..count.min(users.len()))
        .map(|i| {
            let web = webs[i / SIGN_UPS_PER_ADDRESS].clone();
            let name = users[i].clone();
            async move {
                let password = format!("load-password-{name}");
                let token = web
                    .sign_up(&name, &password)
                    .await
                    .map_err(|c| anyhow::anyhow!("signing {name} up through the gateway: {c:?}"))?;
                Ok(WebUser { token, web })
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    signed.into_iter().collect()
}

/// Loads the graph: every user registered, every follow made, and one post per five users.
async fn populate(
    load: &Load,
    mesh: &starling_discovery::Mesh,
    graph: &graph::Graph,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let follower = mesh.channel("follower");
    crate::users::register_users(&follower, &graph.users).await?;
    let started = Instant::now();
    let results: Vec<Result<(), tonic::Status>> = futures::stream::iter(graph.follows.iter())
        .map(|&(a, b)| {
            let mut client = FollowerServiceClient::new(follower.clone());
            let req = deadline(FollowRequest {
                follower: graph.users[a as usize].clone(),
                followee: graph.users[b as usize].clone(),
            });
            async move { client.follow(req).await.map(|_| ()) }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} follows failed while loading the graph (first: {:?})",
        results.len(),
        results.iter().find_map(|r| r.as_ref().err())
    );
    println!(
        "  {} follows in {:.1} s",
        graph.follows.len(),
        started.elapsed().as_secs_f64()
    );
    let tweet = mesh.channel("tweet");
    let posts: Vec<(String, String)> = (0..graph.users.len().div_ceil(5))
        .map(|_| {
            (
                graph.users[rng.random_range(0..graph.users.len())].clone(),
                post_text(rng),
            )
        })
        .collect();
    let ids: Vec<Result<Option<u64>, tonic::Status>> = futures::stream::iter(posts)
        .map(|(author, text)| {
            let mut client = TweetServiceClient::new(tweet.clone());
            async move {
                client
                    .create_tweet(keyed(CreateTweetRequest { author, text }))
                    .await
                    .map(|a| a.into_inner().tweet.map(|t| t.id))
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    for id in ids {
        if let Some(id) = id.context("seeding posts")? {
            load.remember(id);
        }
    }
    Ok(())
}

pub async fn run(args: LoadBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    anyhow::ensure!(
        args.rates.iter().all(|r| r.is_finite() && *r > 0.0),
        "--rates must be positive requests/s"
    );
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    let door_name = match args.door {
        LoadDoor::Grpc => "grpc",
        LoadDoor::Http => "http",
    };
    let sut = if args.embedded {
        sut::Sut::embedded().await?
    } else {
        sut::Sut::real().await?
    };
    println!(
        "starling bench load: {door_name} door, {}; {} users, {} follows each on average; \
         rates {:?}/s, {} s each; deadline {CALL_TIMEOUT:?} per call",
        sut.label, args.users, args.follows, args.rates, args.seconds
    );
    let graph = graph::power_law(args.users, args.follows, args.seed);
    let counts = graph.follower_counts();
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    println!(
        "  graph: {} follows; followers per account: median {}, p99 {}, max {}",
        graph.follows.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 99 / 100],
        sorted[sorted.len() - 1]
    );
    let door = match args.door {
        LoadDoor::Grpc => Door::Grpc(Box::new(Channels {
            tweet: sut.mesh.channel("tweet"),
            timeline: sut.mesh.channel("timeline"),
            follower: sut.mesh.channel("follower"),
            recommendation: sut.mesh.channel("recommendation"),
        })),
        LoadDoor::Http => {
            // Signed up before the rest are registered, as the sign-up itself registers.
            let web_users = args.web_users.clamp(1, args.users);
            let started = Instant::now();
            let users = sign_up(&sut.gateway, &graph.users, web_users).await?;
            println!(
                "  {} users signed up through the gateway in {:.1} s",
                users.len(),
                started.elapsed().as_secs_f64()
            );
            Door::Http { users }
        }
    };
    let load = Arc::new(Load {
        door,
        users: graph.users.clone(),
        tweets: Mutex::new(Vec::new()),
    });
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    populate(&load, &sut.mesh, &graph, &mut rng).await?;
    let mut processes = sut.processes();
    processes.push(("generator".to_string(), std::process::id()));
    // Warm-up at the first rate: connections, consumer groups, caches, and the seed posts'
    // fan-outs out of the way.
    let first = args.rates.first().copied().unwrap_or(100.0);
    let _ = step(&load, first, args.seconds.min(5.0), &mut rng, &processes).await;

    let mut steps: Vec<Step> = Vec::new();
    let mut failed_in_a_row = 0;
    for &rate in &args.rates {
        let s = step(&load, rate, args.seconds, &mut rng, &processes).await;
        print!("{}", report::table(&s));
        failed_in_a_row = if s.passes(args.p99_ms) {
            0
        } else {
            failed_in_a_row + 1
        };
        steps.push(s);
        if failed_in_a_row >= args.stop_after.max(1) {
            println!(
                "  stopping: {failed_in_a_row} rates in a row missed p99 < {} ms",
                args.p99_ms
            );
            break;
        }
    }
    let stem = format!(
        "load-{door_name}-{}",
        if args.embedded { "embedded" } else { "real" }
    );
    report::write_csv(&args.out, &stem, &steps)?;
    let chart = args.out.join(format!("{stem}.svg"));
    report::write_svg(
        &chart,
        &format!("starling bench load: {door_name} door, {}", sut.label),
        &steps,
        args.p99_ms,
    )?;
    println!(
        "wrote {}/{stem}.csv, {stem}-cpu.csv and {stem}.svg",
        args.out.display()
    );
    // The generator's channels go before the system they watch, quietly.
    drop(load);
    drop(sut);
    match report::max_rate(&steps, args.p99_ms) {
        Some(best) => println!(
            "max rate with p99 < {} ms: {:.0} req/s",
            args.p99_ms, best.achieved
        ),
        None => {
            println!(
                "no rate tried kept p99 under {} ms with at most 1% errors",
                args.p99_ms
            );
            println!("max rate with p99 < {} ms: 0 req/s", args.p99_ms);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_deathstarbench_plus_follows_and_likes() {
        assert_eq!(Op::ALL.iter().map(|o| o.per_mille()).sum::<u32>(), 1000);
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0u32; 5];
        for _ in 0..100_000 {
            counts[Recorder::index(Op::pick(&mut rng))] += 1;
        }
        // Home : user : post = 60 : 30 : 10.
        let share = |i: usize| counts[i] as f64 / 100_000.0;
        assert!((share(0) - 0.582).abs() < 0.01, "{counts:?}");
        assert!((share(1) - 0.291).abs() < 0.01, "{counts:?}");
        assert!((share(2) - 0.097).abs() < 0.01, "{counts:?}");
        assert!(counts[3] > 0 && counts[4] > 0);
    }

    #[tokio::test]
    async fn latency_runs_from_the_intended_time() {
        let r = Recorder::new();
        let intended = Instant::now() - Duration::from_millis(40);
        r.record(Op::Post, intended, &Ok(Some(1)));
        r.record(Op::Post, Instant::now(), &Err("x".into()));
        let stats = r.stats();
        let post = &stats[Recorder::index(Op::Post)];
        assert_eq!((post.count, post.errors), (2, 1));
        assert!(post.max_ms >= 40.0, "{}", post.max_ms);
        assert_eq!(stats.last().map(|a| (a.op, a.count)), Some(("all", 2)));
    }
}
