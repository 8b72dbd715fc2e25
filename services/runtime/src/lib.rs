//! Plumbing every Starling service shares, so that none of the five copies it: the server
//! bootstrap ([`server`]), metrics ([`metrics`]), the service catalogue ([`ServiceKind`]),
//! logging set-up and signal handling ([`shutdown`]).

pub mod events;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod store;

use std::sync::Arc;

use starling_discovery::Mesh;

pub use server::{RunningService, ServerConfig};

/// The five Starling services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Tweet,
    Follower,
    Timeline,
    Tagger,
    Recommendation,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Tweet,
        ServiceKind::Follower,
        ServiceKind::Timeline,
        ServiceKind::Tagger,
        ServiceKind::Recommendation,
    ];

    /// The registry name (`/<ns>/services/<name>/...`) and command-line name.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Tweet => "tweet",
            ServiceKind::Follower => "follower",
            ServiceKind::Timeline => "timeline",
            ServiceKind::Tagger => "tagger",
            ServiceKind::Recommendation => "recommendation",
        }
    }

    /// The fully qualified gRPC service name, as health checks and reflection know it.
    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Tweet => "starling.tweet.v1.TweetService",
            ServiceKind::Follower => "starling.follower.v1.FollowerService",
            ServiceKind::Timeline => "starling.timeline.v1.TimelineService",
            ServiceKind::Tagger => "starling.tagger.v1.TaggerService",
            ServiceKind::Recommendation => "starling.recommendation.v1.RecommendationService",
        }
    }
}

impl std::str::FromStr for ServiceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown service {s:?}: use tweet, follower, timeline, tagger or recommendation")
            })
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a service's handlers get from the runtime: the mesh, to call other services.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub mesh: Arc<Mesh>,
}

/// Logs to stderr, filtered by `STARLING_LOG` (or `RUST_LOG`), default `info`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("STARLING_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_proto_catalogue() {
        for kind in ServiceKind::ALL {
            assert_eq!(kind.name().parse::<ServiceKind>().unwrap(), kind);
            assert!(starling_proto::SERVICE_NAMES.contains(&kind.grpc_name()));
        }
        assert!("tweets"
            .parse::<ServiceKind>()
            .unwrap_err()
            .contains("tweet"));
    }
}
