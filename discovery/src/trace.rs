//! Distributed traces across the mesh: W3C trace context (`traceparent`) in gRPC metadata,
//! and the spans that carry it.
//!
//! Spans are `tracing` spans; the process's subscriber (`starling_runtime::telemetry`)
//! turns them into OpenTelemetry spans and exports them. That subscriber calls [`enable`]:
//! until then (no collector configured, not `starling up`) every layer here passes calls
//! through without creating a span, so a mesh without tracing pays nothing for it.
//!
//! * Server side, [`TraceLayer::server`] (outermost in `starling_runtime::server`): a
//!   `server` span per inbound call, child of the caller's `traceparent` when there is
//!   one, named after the method and its service; the handler runs inside it.
//! * Client side, [`TraceLayer::client`] (outermost in the mesh channel): a `client` span
//!   per call (one for all its attempts), whose context goes out as `traceparent`.
//! * Events: [`traceparent`] and [`context_of`] carry the same context through a Kafka
//!   header and the outbox (see `starling_runtime::events`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The names of the spans Starling makes for requests and events (the gateway's, the
/// mesh's, the outbox relay's and the consumers'): the log formatter always sees them.
pub const SPANS: [&str; 6] = [
    "http.server",
    "grpc.server",
    "grpc.client",
    "outbox.publish",
    "event.publish",
    "event.consume",
];

/// The W3C header (and Kafka header, and outbox field) that carries a span's context.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span creation and propagation on for this process (the telemetry subscriber does,
/// once it is installed).
pub fn enable() {
    set_enabled(true);
}

/// Turns span creation on or off (`starling bench balancer` measures both in one run).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether this process traces (see [`enable`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Puts `span`'s context in `headers` as `traceparent` (nothing if it has none).
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The caller's context from `traceparent` (an empty context when absent or malformed).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// `span`'s context as a `traceparent` value, if it is part of a trace (for an event).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut fields);
    fields.remove(TRACEPARENT)
}

/// The context a `traceparent` value names (an empty context when it is malformed).
pub fn context_of(traceparent: &str) -> opentelemetry::Context {
    let fields = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&fields)
}

/// Records `span`'s trace id in its `trace_id` field, so every log line written inside
/// it names the trace.
pub fn record_trace_id(span: &tracing::Span) {
    let cx = span.context();
    let id = cx.span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// A span for work that continues a trace from elsewhere (an event's `traceparent`):
/// `make`'s span, child of `parent`. Without a parent, or while tracing is off, no span
/// (`Span::none()`): an event from an untraced call starts no trace of its own.
pub fn follow(make: impl FnOnce() -> tracing::Span, parent: Option<&str>) -> tracing::Span {
    let Some(parent) = parent.filter(|_| enabled()) else {
        return tracing::Span::none();
    };
    let span = make();
    let _ = span.set_parent(context_of(parent));
    record_trace_id(&span);
    span
}

/// A gRPC call's span, on either side: the layer the server and the mesh channel share.
#[derive(Debug, Clone)]
enum Side {
    /// Each inbound call runs in a `server` span of this service, child of the caller's
    /// `traceparent`.
    Server(Arc<str>),
    /// Each call to this target runs in a `client` span, whose context goes out as
    /// `traceparent`; its service is its parent span's (see `starling_runtime::telemetry`).
    Client(Arc<str>),
}

impl Side {
    fn span<B>(&self, req: &mut http::Request<B>) -> tracing::Span {
        match self {
            Side::Server(service) => {
                let span = tracing::info_span!(
                    "grpc.server",
                    otel.name = req.uri().path(),
                    otel.kind = "server",
                    service.name = &**service,
                    rpc.system = "grpc",
                    trace_id = tracing::field::Empty,
                );
                let _ = span.set_parent(extract(req.headers()));
                record_trace_id(&span);
                span
            }
            Side::Client(target) => {
                let span = tracing::info_span!(
                    "grpc.client",
                    otel.name = req.uri().path(),
                    otel.kind = "client",
                    peer.service = &**target,
                    rpc.system = "grpc",
                );
                inject(&span, req.headers_mut());
                span
            }
        }
    }
}

/// Runs each gRPC call in its span (see [`Side`]); nothing while tracing is off.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    side: Side,
}

impl TraceLayer {
    /// A server's layer: a `server` span of `service` per inbound call, child of the
    /// caller's `traceparent` (outermost in `starling_runtime::server`).
    pub fn server(service: &str) -> Self {
        Self {
            side: Side::Server(service.into()),
        }
    }

    /// The mesh channel's layer: a `client` span per call to `target` (outermost in
    /// `client::MeshChannel`, so one span covers the call's retries).
    pub fn client(target: &str) -> Self {
        Self {
            side: Side::Client(target.into()),
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;
    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            inner,
            side: self.side.clone(),
        }
    }
}

/// A service whose calls run in their span (see [`TraceLayer`]).
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
    side: Side,
}

impl<S, B> Service<http::Request<B>> for Traced<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !enabled() {
            return self.inner.call(req).instrument(tracing::Span::none());
        }
        let span = self.side.span(&mut req);
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        fut.instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_garbage_is_no_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_of(tp);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, tp.parse().unwrap());
        assert_eq!(extract(&headers).span().span_context(), &sc);
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(!context_of(bad).span().span_context().is_valid(), "{bad:?}");
        }
    }
}
