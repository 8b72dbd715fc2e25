//! Starling's public protobuf API: one module per `starling.<service>.v1` package plus the
//! event payloads, generated at build time from the `.proto` files beside this crate.
//!
//! Server traits are generated with default methods that answer `UNIMPLEMENTED`, so a
//! service can be brought up (and discovered, health-checked and reflected) before every
//! handler exists.

use std::collections::HashSet;

use prost::Message;

pub mod tweet {
    pub mod v1 {
        tonic::include_proto!("starling.tweet.v1");
    }
}
pub mod follower {
    pub mod v1 {
        tonic::include_proto!("starling.follower.v1");
    }
}
pub mod timeline {
    pub mod v1 {
        tonic::include_proto!("starling.timeline.v1");
    }
}
pub mod tagger {
    pub mod v1 {
        tonic::include_proto!("starling.tagger.v1");
    }
}
pub mod recommendation {
    pub mod v1 {
        tonic::include_proto!("starling.recommendation.v1");
    }
}
pub mod events {
    pub mod v1 {
        tonic::include_proto!("starling.events.v1");
    }
}
/// Accounts for gRPC clients, served by the gateway (not a mesh service).
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("starling.auth.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Starling `.proto` file and its imports, for
/// server reflection and for clients that want to inspect the API at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/starling_descriptor.bin"));

/// gRPC paths (`/package.Service/Method`) of every method declared with
/// `idempotency_level = IDEMPOTENT` or `NO_SIDE_EFFECTS`.
///
/// The mesh retries a call on another endpoint only when its method is in this set, so the
/// `.proto` file is the one place where retry safety is decided.
pub fn idempotent_methods() -> HashSet<String> {
    use prost_types::method_options::IdempotencyLevel;
    methods_with(&[
        IdempotencyLevel::Idempotent,
        IdempotencyLevel::NoSideEffects,
    ])
}

/// gRPC paths of every method of every Starling service: the label values a metric may
/// use for a method (anything else is `other`, so made-up paths cannot grow `/metrics`).
pub fn all_methods() -> HashSet<String> {
    use prost_types::method_options::IdempotencyLevel;
    methods_with(&[
        IdempotencyLevel::IdempotencyUnknown,
        IdempotencyLevel::Idempotent,
        IdempotencyLevel::NoSideEffects,
    ])
}

/// gRPC paths of every unary method (no client or server streaming): the mesh buffers
/// their requests, so one that met a refused connection can be sent elsewhere.
pub fn unary_methods() -> HashSet<String> {
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("descriptor set written by build.rs decodes");
    let mut paths = HashSet::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                if !method.client_streaming() && !method.server_streaming() {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    paths
}

/// gRPC paths of every method declared `idempotency_level = NO_SIDE_EFFECTS`: the reads.
/// The gateway's unauthenticated gRPC-Web endpoint passes only these.
pub fn read_only_methods() -> HashSet<String> {
    methods_with(&[prost_types::method_options::IdempotencyLevel::NoSideEffects])
}

fn methods_with(levels: &[prost_types::method_options::IdempotencyLevel]) -> HashSet<String> {
    use prost_types::method_options::IdempotencyLevel;
    // The descriptor set is produced by our own build script, so failing to decode it is a
    // build defect, not a run-time condition.
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("descriptor set written by build.rs decodes");
    let mut paths = HashSet::new();
    for file in &fds.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                let level = method
                    .options
                    .as_ref()
                    .map(|o| o.idempotency_level())
                    .unwrap_or(IdempotencyLevel::IdempotencyUnknown);
                if levels.contains(&level) {
                    paths.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    paths
}

/// Fully qualified names of the five Starling services, as used by gRPC health checks and
/// reflection (`starling.tweet.v1.TweetService`, ...).
pub const SERVICE_NAMES: &[&str] = &[
    "starling.tweet.v1.TweetService",
    "starling.follower.v1.FollowerService",
    "starling.timeline.v1.TimelineService",
    "starling.tagger.v1.TaggerService",
    "starling.recommendation.v1.RecommendationService",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_idempotency_from_the_proto_options() {
        let m = idempotent_methods();
        assert!(m.contains("/starling.tweet.v1.TweetService/GetTweet"));
        assert!(m.contains("/starling.follower.v1.FollowerService/Follow"));
        assert!(m.contains("/starling.tagger.v1.TaggerService/ListTags"));
        // Posting twice posts twice: retried only with an idempotency key, not by method.
        assert!(!m.contains("/starling.tweet.v1.TweetService/CreateTweet"));
        // An engagement counts once per (user, tweet, kind).
        assert!(m.contains("/starling.recommendation.v1.RecommendationService/RecordEngagement"));
        let reads = read_only_methods();
        assert!(reads.contains("/starling.timeline.v1.TimelineService/GetHomeTimeline"));
        assert!(
            !reads.contains("/starling.follower.v1.FollowerService/Follow"),
            "a write, if idempotent"
        );
    }

    #[test]
    fn all_methods_covers_reads_and_writes() {
        let all = all_methods();
        assert!(all.contains("/starling.tweet.v1.TweetService/CreateTweet"));
        assert!(all.contains("/starling.tweet.v1.TweetService/GetTweet"));
        assert!(idempotent_methods().is_subset(&all));
        assert!(unary_methods().is_subset(&all));
    }

    #[test]
    fn descriptor_set_holds_every_service() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        for s in SERVICE_NAMES {
            assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
        }
    }
}
