//! The pulse: a post every 250 ms by an author with one follower, whose home timeline is
//! read every 100 ms, so that the report can say, for every fault, how long the fan-out
//! pipeline paused (the longest delay from a post's acknowledgement to its appearance in
//! the follower's timeline). The pulse's posts are ordinary history: checked like all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_discovery::Mesh;
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::GetHomeTimelineRequest;
use tokio::sync::watch;

use super::load::{self, Door, History, Kind};

pub const AUTHOR: &str = "pulse_author";
pub const READER: &str = "pulse_reader";

/// Acknowledged pulse posts: when acknowledged, and when first seen in the timeline.
#[derive(Default)]
pub struct Pulses {
    seen: Mutex<HashMap<u64, (Instant, Option<Instant>)>>,
}

impl Pulses {
    /// The longest delay of the posts acknowledged in `[from, to)`, counted until the post
    /// showed or `to` (when the next fault began: a post acknowledged just before it and held
    /// up by it is that fault's doing), whichever came first; a post never seen counts
    /// until `now` if that is earlier.
    pub fn max_delay(&self, from: Instant, to: Instant, now: Instant) -> Option<Duration> {
        self.delays(from, to, now).into_iter().map(|(_, d)| d).max()
    }

    /// (acknowledged, delay) of the posts acknowledged in `[from, to)`, in order, counted
    /// as [`Pulses::max_delay`] says.
    fn delays(&self, from: Instant, to: Instant, now: Instant) -> Vec<(Instant, Duration)> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut delays: Vec<(Instant, Duration)> = seen
            .values()
            .filter(|(acked, _)| *acked >= from && *acked < to)
            .map(|(acked, at)| {
                let until = at.unwrap_or(now).min(to);
                (*acked, until.saturating_duration_since(*acked))
            })
            .collect();
        delays.sort();
        delays
    }
}

/// Posts and watches until `stop` turns true.
pub async fn run(
    mesh: Arc<Mesh>,
    history: Arc<History>,
    pulses: Arc<Pulses>,
    mut stop: watch::Receiver<bool>,
) {
    let watcher = {
        let (mesh, pulses, mut stop) = (mesh.clone(), pulses.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let mut req = tonic::Request::new(GetHomeTimelineRequest {
                    user: READER.into(),
                    page_size: 50,
                    page_token: String::new(),
                });
                req.set_timeout(Duration::from_secs(1));
                let Ok(home) = TimelineServiceClient::new(mesh.channel("timeline"))
                    .get_home_timeline(req)
                    .await
                else {
                    continue;
                };
                let now = Instant::now();
                // One author's posts reach the timeline in order, so every pulse up to the
                // newest one shown has arrived by now, even one a burst after a stall pushed
                // past the first page before this read.
                let Some(newest) = home.into_inner().tweets.iter().map(|t| t.id).max() else {
                    continue;
                };
                let mut seen = pulses.seen.lock().unwrap_or_else(|e| e.into_inner());
                for (id, (_, at)) in seen.iter_mut() {
                    if at.is_none() && *id <= newest {
                        *at = Some(now);
                    }
                }
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        n += 1;
        let post = Kind::Post {
            author: AUTHOR.into(),
            text: format!("pulse {n}"),
        };
        if let Ok(id) = load::run_op(Door::Mesh(&mesh), &history, post).await {
            pulses
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, (Instant::now(), None));
        }
    }
    let _ = watcher.await;
}

impl Pulses {
    /// The posts acknowledged in `[from, to)` that took longer than `over` to show, as
    /// (acknowledged, delay), in order: where in a fault the pipeline paused.
    pub fn slow(
        &self,
        from: Instant,
        to: Instant,
        over: Duration,
        now: Instant,
    ) -> Vec<(Instant, Duration)> {
        let mut slow = self.delays(from, to, now);
        slow.retain(|(_, d)| *d > over);
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_delay_counts_until_seen_the_next_fault_or_now() {
        let pulses = Pulses::default();
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        {
            let mut seen = pulses.seen.lock().unwrap();
            seen.insert(1, (s(0), Some(s(30))));
            seen.insert(2, (s(100), Some(s(2100))));
            seen.insert(3, (s(4000), None));
        }
        assert_eq!(
            pulses.max_delay(s(0), s(3000), s(5000)),
            Some(Duration::from_millis(2000))
        );
        assert_eq!(
            pulses.max_delay(s(3000), s(6000), s(5000)),
            Some(Duration::from_millis(1000)),
            "unseen: until now"
        );
        assert_eq!(
            pulses.max_delay(s(0), s(150), s(5000)),
            Some(Duration::from_millis(50)),
            "post 2 held up after the next fault began: counted until it began"
        );
        assert_eq!(pulses.max_delay(s(4100), s(4200), s(5000)), None);
    }
}
