//! Every topic, partition key and consumer group, in one place.
//!
//! | topic | payload | key | consumed by (group) |
//! |---|---|---|---|
//! | `tweet-created.v1` | `TweetCreated` | author | `timeline` (fan-out), `tagger` |
//! | `tweet-tagged.v1` | `TweetTagged` | author | `tweet` (stores tags), `recommendation` |
//! | `engagement.v1` | `Engagement` | user | `recommendation` |
//! | `follow-changed.v1` | `FollowChanged` | follower | `timeline` (merge/remove) |
//!
//! On Kafka every topic and group name is prefixed with the namespace (`--namespace`,
//! default `starling`): `starling.tweet-created.v1`, group `starling.timeline`.
//!
//! Keying by author keeps one author's events in order on one partition. A failing event is
//! retried in place while later events of its key wait (see `consumer`), so there are no
//! retry topics (which would let later events of the key overtake it). Each consuming group
//! has its own dead-letter topic `<topic>.dlq.<group>`, inspected with `starling dlq list`
//! and sent round again with `starling dlq replay` (which publishes on the original topic).

pub const TWEET_CREATED: &str = "tweet-created.v1";
pub const TWEET_TAGGED: &str = "tweet-tagged.v1";
pub const ENGAGEMENT: &str = "engagement.v1";
pub const FOLLOW_CHANGED: &str = "follow-changed.v1";

/// Partitions of every topic unless configured otherwise (the seed article used 10).
pub const PARTITIONS: i32 = 10;

/// How the topics Starling creates are laid out on the broker. A topic that already exists
/// keeps its own layout: Kafka can add partitions but never remove them, and adding some
/// would move keys to other partitions and break their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    /// Partitions per topic: how many members of a group can read in parallel.
    pub partitions: i32,
    /// Copies of every partition on distinct brokers.
    pub replication_factor: i32,
    /// The topic's `min.insync.replicas`: with `acks=all` (which Starling's producer uses),
    /// a write is acknowledged only once this many copies have it. `None`: the broker's
    /// default.
    pub min_insync_replicas: Option<i32>,
}

impl Default for TopicLayout {
    fn default() -> Self {
        Self {
            partitions: PARTITIONS,
            replication_factor: 1,
            min_insync_replicas: None,
        }
    }
}

impl TopicLayout {
    /// Refuses a layout the broker would refuse later, or that would silently not protect
    /// anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.partitions) {
            return Err(format!(
                "partitions must be between 1 and 10000, not {}",
                self.partitions
            ));
        }
        if self.replication_factor < 1 {
            return Err(format!(
                "the replication factor must be at least 1, not {}",
                self.replication_factor
            ));
        }
        if let Some(min) = self.min_insync_replicas {
            if min < 1 || min > self.replication_factor {
                return Err(format!(
                    "min.insync.replicas must be between 1 and the replication factor ({}), not {min}",
                    self.replication_factor
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod layout_tests {
    use super::TopicLayout;

    #[test]
    fn a_layout_is_checked() {
        assert!(TopicLayout::default().check().is_ok());
        let three = TopicLayout {
            partitions: 12,
            replication_factor: 3,
            min_insync_replicas: Some(2),
        };
        assert!(three.check().is_ok());
        for bad in [
            TopicLayout {
                partitions: 0,
                ..three
            },
            TopicLayout {
                replication_factor: 0,
                ..three
            },
            TopicLayout {
                min_insync_replicas: Some(4),
                ..three
            },
            TopicLayout {
                min_insync_replicas: Some(0),
                ..three
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?} accepted");
        }
    }
}

pub mod groups {
    pub const TIMELINE: &str = "timeline";
    pub const TAGGER: &str = "tagger";
    pub const TWEET: &str = "tweet";
    pub const RECOMMENDATION: &str = "recommendation";
}

/// (topic, group) for every consumer in the system.
pub const CONSUMERS: &[(&str, &str)] = &[
    (TWEET_CREATED, groups::TIMELINE),
    (TWEET_CREATED, groups::TAGGER),
    (TWEET_TAGGED, groups::TWEET),
    (TWEET_TAGGED, groups::RECOMMENDATION),
    (ENGAGEMENT, groups::RECOMMENDATION),
    (FOLLOW_CHANGED, groups::TIMELINE),
];

pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{topic}.dlq.{group}")
}

/// Every topic the system uses, main and dead-letter.
pub fn all_topics() -> Vec<String> {
    let mut all: Vec<String> = [TWEET_CREATED, TWEET_TAGGED, ENGAGEMENT, FOLLOW_CHANGED]
        .iter()
        .map(|t| t.to_string())
        .collect();
    for (topic, group) in CONSUMERS {
        all.push(dead_letter_topic(topic, group));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_valid_kafka_topic_names() {
        let all = all_topics();
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        for t in &all {
            assert!(
                t.len() <= 249
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{t}"
            );
        }
    }
}
