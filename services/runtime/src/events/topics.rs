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

/// Partitions of every topic (the seed article used 10).
pub const PARTITIONS: i32 = 10;

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
