//! Plumbing every Starling service shares, so that none of the five copies it: the server
//! bootstrap ([`server`]), metrics ([`metrics`]), the service catalogue ([`ServiceKind`]),
//! logs and traces ([`telemetry`]) and signal handling ([`shutdown`]).

pub mod authz;
pub mod events;
pub mod health;
pub mod ids;
mod malformed;
pub mod metrics;
pub mod outbox;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;

use std::sync::Arc;

use starling_discovery::{Mesh, Registry};

pub use server::{RunningService, ServerConfig, ServerTls};

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

/// What a service gets from the runtime: the mesh (to call other services), the store,
/// the event bus, the registry (for claims) and the application settings.
#[derive(Clone)]
pub struct ServiceContext {
    pub mesh: Arc<Mesh>,
    pub registry: Arc<dyn Registry>,
    pub store: Arc<dyn store::Store>,
    pub bus: Arc<dyn events::EventBus>,
    pub settings: Arc<AppSettings>,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Knobs of the reference application (see `starling up --help`).
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Entries kept per home timeline.
    pub timeline_cap: usize,
    /// Authors with more followers than this are not fanned out but merged in at read time.
    pub celebrity_threshold: u64,
    /// Followers read per page during a fan-out (each page is one checkpoint).
    pub fanout_page: u32,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            timeline_cap: 800,
            celebrity_threshold: 100_000,
            fanout_page: 10_000,
        }
    }
}

/// What a service crate hands the runtime: its gRPC routes, its event consumers, its
/// outbox (if its handlers publish events) and the checks of what else it depends on.
pub struct ServiceParts {
    pub routes: tonic::service::Routes,
    pub consumers: Vec<(
        events::consumer::ConsumerConfig,
        Arc<dyn events::consumer::Handler>,
    )>,
    /// The runtime relays this outbox to the bus (see [`outbox`]).
    pub outbox: Option<outbox::Outbox>,
    pub probes: Vec<Probe>,
    /// Run when the instance stops, after it left the registry and drained, before the
    /// server waits for in-flight calls: ends what would otherwise hold the stop open
    /// (streams that last as long as their caller likes).
    pub on_stop: Vec<Box<dyn FnOnce() + Send + Sync>>,
}

impl ServiceParts {
    pub fn new(routes: tonic::service::Routes) -> Self {
        Self {
            routes,
            consumers: Vec::new(),
            outbox: None,
            probes: Vec::new(),
            on_stop: Vec::new(),
        }
    }

    pub fn on_stop(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_stop.push(Box::new(f));
        self
    }

    pub fn consumer(
        mut self,
        config: events::consumer::ConsumerConfig,
        handler: Arc<dyn events::consumer::Handler>,
    ) -> Self {
        self.consumers.push((config, handler));
        self
    }

    /// Consumes the events `handler` takes, from their topic, as consumer group `group`.
    pub fn on_events<H: events::EventHandler>(self, group: &str, handler: H) -> Self {
        self.consumer(
            events::consumer::ConsumerConfig::new(<H::Event as events::Event>::TOPIC, group),
            Arc::new(events::Typed(handler)),
        )
    }

    pub fn outbox(mut self, outbox: outbox::Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    pub fn probe(mut self, probe: Probe) -> Self {
        self.probes.push(probe);
        self
    }
}

/// A dependency check the runtime runs every second (a held worker id, say): its name in
/// the health verdict, and the check.
pub struct Probe {
    pub name: &'static str,
    pub check: ProbeCheck,
}

/// A [`Probe`]'s check: `Err` says what is missing.
pub type ProbeCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Validates a user name: `[a-z0-9_]{1,32}`. The message names the field, so the error a
/// client sees says what to fix.
pub fn check_user(field: &str, name: &str) -> Result<(), tonic::Status> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(tonic::Status::invalid_argument(format!(
            "{field} must be a user name of 1 to 32 characters from a-z, 0-9 and _ (got {name:?})"
        )))
    }
}

/// The request's idempotency key (`idempotency-key` metadata, see
/// `starling_discovery::IDEMPOTENCY_KEY`), if it has one: 1 to 128 visible ASCII characters.
pub fn idempotency_key<T>(req: &tonic::Request<T>) -> Result<Option<String>, tonic::Status> {
    let Some(value) = req.metadata().get(starling_discovery::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_string()))
        }
        _ => Err(tonic::Status::invalid_argument(format!(
            "{} must be 1 to 128 visible ASCII characters",
            starling_discovery::IDEMPOTENCY_KEY
        ))),
    }
}

/// Page size from a request: 0 means `default`; larger than `max` is capped.
pub fn page_size(requested: u32, default: u32, max: u32) -> usize {
    match requested {
        0 => default as usize,
        n => n.min(max) as usize,
    }
}

/// Maps a storage failure to UNAVAILABLE, logging the cause. The status carries gRPC's
/// retry pushback "do not retry" (`grpc-retry-pushback-ms: -1`): every replica shares the
/// store, so retrying elsewhere would only multiply the load on a failing dependency, hop
/// after hop; the caller's own caller decides.
pub fn store_error(e: store::StoreError) -> tonic::Status {
    tracing::error!(error = %e, "storage failure");
    dependency_failure("storage unavailable")
}

/// UNAVAILABLE for a failed dependency, marked not to be retried by the mesh (see
/// [`store_error`]). The message says what failed, not how (details are in the log).
pub fn dependency_failure(what: &str) -> tonic::Status {
    let mut status = tonic::Status::unavailable(what.to_string());
    status.metadata_mut().insert(
        starling_discovery::RETRY_PUSHBACK,
        tonic::metadata::MetadataValue::from_static("-1"),
    );
    status
}

/// Maps a publish failure to UNAVAILABLE (not retried by the mesh, see [`store_error`]).
pub fn bus_error(e: events::BusError) -> tonic::Status {
    tracing::error!(error = %e, "event bus failure");
    dependency_failure("event bus unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_checked() {
        assert!(check_user("author", "alice_01").is_ok());
        for bad in ["", "Alice", "a b", "ü", &"a".repeat(33)] {
            let e = check_user("author", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("author"), "{}", e.message());
        }
        assert_eq!(page_size(0, 20, 100), 20);
        assert_eq!(page_size(500, 20, 100), 100);
    }

    proptest::proptest! {
        /// A user name (which is also a page token of the follow lists and a key part in
        /// the store) is accepted exactly when it is 1 to 32 of `a-z0-9_`.
        #[test]
        fn fuzz_user_names(name in "\\PC{0,40}|[a-z0-9_]{0,40}") {
            let expected = (1..=32).contains(&name.len())
                && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
            proptest::prop_assert_eq!(check_user("user", &name).is_ok(), expected);
        }

        #[test]
        fn fuzz_page_sizes(requested in proptest::num::u32::ANY, default in 1u32..1000, max in 1u32..10_000) {
            let n = page_size(requested, default, max);
            proptest::prop_assert!(n <= max.max(default) as usize);
            proptest::prop_assert!(n >= 1);
        }
    }

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
