//! Logs and traces: what a process writes about its work, and how one request is followed
//! across processes.
//!
//! * **Logs** go to stderr, filtered by `STARLING_LOG` (or `RUST_LOG`, default `info`, with
//!   the redis crate's cluster connection at `error`: it warns once per command and node
//!   while a master fails over, over a thousand lines in three seconds, where the store's
//!   own errors say what failed), as
//!   text or, with `STARLING_LOG_FORMAT=json`, one JSON object per line. A line written
//!   inside a traced call or event carries that span's fields, `trace_id` among them.
//! * **Traces** are `tracing` spans turned into OpenTelemetry spans by
//!   `tracing-opentelemetry`. They are on when there is somewhere to put them: an OTLP
//!   collector named by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; gRPC), or the in-memory store of `starling up`
//!   ([`recent`]). Sampling follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
//!   (default: parent-based, always on), batching the `OTEL_BSP_*` variables. The spans
//!   themselves are made by the mesh (`starling_discovery::trace`: gRPC server and client),
//!   the outbox relay (publish) and the consumer loop (consume).
//! * **Whose span**: a span names its service in `service.name` (server, publish and
//!   consume spans do; any other span takes its parent's, see [`attribute`]). Spans are
//!   exported under a resource of that service, so `starling up`, five services in one
//!   process, shows as five services in Jaeger; `OTEL_SERVICE_NAME` renames a `serve`
//!   process's service.

mod attribute;
pub mod recent;
pub mod switch;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use attribute::ByService;

/// What this process is, for its traces.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The service of spans that name none (a `serve` process's service, `gateway`, or
    /// `starling` for tools).
    pub service: String,
    /// Every service whose spans this process may export (they get one exporter each).
    pub services: Vec<String>,
    /// Keep the last traces in memory ([`recent`]; `starling up`).
    pub keep_recent: bool,
    /// For measuring tracing's cost (`starling bench balancer`): spans are made and
    /// exported to nowhere, and [`switch`] turns span creation and sampling on and off.
    pub switchable: bool,
}

impl TelemetryConfig {
    /// A process that is `service` and nothing else.
    pub fn single(service: &str) -> Self {
        Self {
            service: service.to_string(),
            services: vec![service.to_string()],
            keep_recent: false,
            switchable: false,
        }
    }
}

/// Keeps the tracer provider alive; dropping it flushes what is buffered (at most 5 s).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Where traces go, from the standard variables: `Some(endpoint)` for an OTLP collector.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
}

/// The log filter when none is given (see the module docs).
const DEFAULT_FILTER: &str = "info,redis::cluster_handling=error";

/// Installs the process's logging and, where configured, tracing (see the module docs).
/// Call once, inside the tokio runtime (the OTLP exporter needs it).
pub fn init(config: TelemetryConfig) -> Telemetry {
    let filter = std::env::var("STARLING_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| DEFAULT_FILTER.into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // The request spans reach the log formatter whatever the level, so that a line logged
    // inside one (a warning, say, under STARLING_LOG=warn) carries its trace id.
    let filter = filter.or(tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && starling_discovery::trace::SPANS.contains(&m.name())
    }));
    let json = std::env::var("STARLING_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };

    let endpoint = otlp_endpoint();
    let mut problems = Vec::new();
    let mut builder = SdkTracerProvider::builder();
    let mut tracing_on = false;
    if let Some(endpoint) = &endpoint {
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|_| "grpc".into());
        if protocol != "grpc" {
            problems.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported (only grpc); exporting over grpc to {endpoint}"
            ));
        }
        match ByService::new(&config.service, &config.services) {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                tracing_on = true;
            }
            Err(e) => problems.push(format!("cannot export traces to {endpoint}: {e}")),
        }
    }
    if config.keep_recent {
        builder = builder.with_span_processor(recent::Processor::install());
        tracing_on = true;
    }
    if config.switchable {
        builder = builder
            .with_sampler(switch::Switched)
            .with_batch_exporter(switch::Discard);
    }

    let provider = (tracing_on || config.switchable).then(|| {
        builder
            .with_span_processor(attribute::Attribute::new(&config.service))
            .build()
    });
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("starling"))
            // Per span these add attributes (source file and line, thread) and clock reads
            // on every poll (busy/idle time) that a request's trace does not need.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if tracing_on {
        starling_discovery::trace::enable();
    }
    for p in problems {
        tracing::warn!("{p}");
    }
    if let Some(endpoint) = endpoint.filter(|_| tracing_on) {
        tracing::info!(%endpoint, service = %config.service, "exporting traces over OTLP");
    }
    Telemetry { provider }
}
