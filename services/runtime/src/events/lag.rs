//! Consumer lag shared through the store, for the gateway's mesh view: every instance that
//! consumes writes, every [`EVERY`], its consumers' state (the oldest event in hand, how
//! many are in hand) into `consumer-lag:<topic>:<group>`, one hash field per instance; a
//! reader ([`read`]) sums a group up from the fields fresh enough to be true and deletes
//! those of instances long gone.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::consumer;
use super::now_ms;
use super::topics::CONSUMERS;
use crate::store::{Store, Write};

/// How often an instance reports.
pub const EVERY: Duration = Duration::from_secs(2);
/// A report older than this is not shown (its instance stopped or cannot reach the store).
const FRESH_MS: i64 = 10_000;
/// A report older than this is deleted by the reader.
const STALE_MS: i64 = 120_000;

fn key(topic: &str, group: &str) -> String {
    format!("consumer-lag:{topic}:{group}")
}

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    oldest_pending_s: f64,
    in_flight: usize,
    at_ms: i64,
}

/// Reports the consumers of `group` in this process as instance `instance` until `stop`
/// turns true; then removes its reports.
pub async fn report(
    store: Arc<dyn Store>,
    group: String,
    instance: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut topics = Vec::new();
    loop {
        let writes: Vec<Write> = consumer::states()
            .into_iter()
            .filter(|((_, g), _)| *g == group)
            .filter_map(|((topic, g), s)| {
                let value = serde_json::to_vec(&Report {
                    oldest_pending_s: s.oldest_pending_s,
                    in_flight: s.in_flight,
                    at_ms: now_ms(),
                })
                .ok()?;
                if !topics.contains(&topic) {
                    topics.push(topic.clone());
                }
                Some(Write::HSet {
                    key: key(&topic, &g),
                    field: instance.clone(),
                    value,
                })
            })
            .collect();
        if !writes.is_empty() {
            // A store outage only leaves the view stale; the consumers say so themselves.
            let _ = store.apply(writes).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let gone = topics
        .iter()
        .map(|t| Write::HDel {
            key: key(t, &group),
            field: instance.clone(),
        })
        .collect();
    let _ = store.apply(gone).await;
}

/// One consumer group on one topic, summed over its instances.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLag {
    pub topic: String,
    pub group: String,
    /// Instances that reported within the last 10 s.
    pub members: usize,
    /// The oldest event any of them holds, in seconds (0 when idle).
    pub oldest_pending_s: f64,
    pub in_flight: usize,
}

/// Every consumer group of the catalogue, from the reports in `store`.
pub async fn read(store: &dyn Store) -> crate::store::StoreResult<Vec<GroupLag>> {
    let now = now_ms();
    let mut out = Vec::new();
    let mut stale = Vec::new();
    for (topic, group) in CONSUMERS {
        let k = key(topic, group);
        let mut lag = GroupLag {
            topic: topic.to_string(),
            group: group.to_string(),
            members: 0,
            oldest_pending_s: 0.0,
            in_flight: 0,
        };
        for (field, value) in store.hgetall(&k).await? {
            let Ok(r) = serde_json::from_slice::<Report>(&value) else {
                stale.push((k.clone(), field));
                continue;
            };
            if now - r.at_ms > STALE_MS {
                stale.push((k.clone(), field));
            } else if now - r.at_ms <= FRESH_MS {
                lag.members += 1;
                lag.oldest_pending_s = lag.oldest_pending_s.max(r.oldest_pending_s);
                lag.in_flight += r.in_flight;
            }
        }
        out.push(lag);
    }
    if !stale.is_empty() {
        let writes = stale
            .into_iter()
            .map(|(key, field)| Write::HDel { key, field })
            .collect();
        let _ = store.apply(writes).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_group_sums_its_fresh_reports_and_forgets_the_stale() {
        let store = MemoryStore::new();
        let (topic, group) = CONSUMERS[0];
        let at = |ago_ms: i64, oldest: f64, in_flight: usize| {
            serde_json::to_vec(&Report {
                oldest_pending_s: oldest,
                in_flight,
                at_ms: now_ms() - ago_ms,
            })
            .unwrap()
        };
        let k = key(topic, group);
        store
            .apply(vec![
                Write::HSet {
                    key: k.clone(),
                    field: "a".into(),
                    value: at(0, 1.5, 3),
                },
                Write::HSet {
                    key: k.clone(),
                    field: "b".into(),
                    value: at(1_000, 4.0, 1),
                },
                Write::HSet {
                    key: k.clone(),
                    field: "quiet".into(),
                    value: at(30_000, 99.0, 9),
                },
                Write::HSet {
                    key: k.clone(),
                    field: "gone".into(),
                    value: at(600_000, 99.0, 9),
                },
                Write::HSet {
                    key: k.clone(),
                    field: "junk".into(),
                    value: b"{".to_vec(),
                },
            ])
            .await
            .unwrap();
        let lags = read(&store).await.unwrap();
        assert_eq!(lags.len(), CONSUMERS.len());
        let l = lags
            .iter()
            .find(|l| l.topic == topic && l.group == group)
            .unwrap();
        assert_eq!((l.members, l.oldest_pending_s, l.in_flight), (2, 4.0, 4));
        let mut left: Vec<String> = store
            .hgetall(&k)
            .await
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["a", "b", "quiet"],
            "stale and unreadable reports are deleted"
        );
    }
}
