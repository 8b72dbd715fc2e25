//! The last traces, kept in memory by `starling up` so its web UI can show one as a
//! waterfall without a collector. Bounded: [`TRACES`] traces of at most [`SPANS`] spans;
//! the oldest trace goes first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use serde::Serialize;

use super::attribute::service_of;

/// Traces kept.
pub const TRACES: usize = 200;
/// Spans kept per trace.
pub const SPANS: usize = 500;

/// One finished span, as the UI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub span_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    pub name: String,
    pub service: String,
    pub kind: &'static str,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    pub duration_us: u64,
    /// The status message of a span that failed.
    pub error: Option<String>,
}

/// One trace: its spans in the order they ended.
#[derive(Debug, Clone, Serialize)]
pub struct TraceView {
    pub trace_id: String,
    pub spans: Vec<SpanView>,
}

/// A trace in the list: when it started, how long it took, what it was.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The earliest span's name (the root's, once it has ended).
    pub name: String,
    pub services: Vec<String>,
    pub spans: usize,
    pub start_us: u64,
    pub duration_us: u64,
    pub errors: usize,
}

/// The store (one per process).
#[derive(Debug, Default)]
pub struct Recent {
    traces: Mutex<VecDeque<(TraceId, Vec<SpanView>)>>,
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

fn kind(k: &SpanKind) -> &'static str {
    match k {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

impl Recent {
    fn record(&self, span: SpanData) {
        let view = SpanView {
            span_id: span.span_context.span_id().to_string(),
            parent_id: if span.parent_span_id == SpanId::INVALID {
                String::new()
            } else {
                span.parent_span_id.to_string()
            },
            name: span.name.to_string(),
            service: service_of(&span).unwrap_or_default(),
            kind: kind(&span.span_kind),
            start_us: micros(span.start_time),
            duration_us: span
                .end_time
                .duration_since(span.start_time)
                .unwrap_or(Duration::ZERO)
                .as_micros() as u64,
            error: match &span.status {
                Status::Error { description } => Some(description.to_string()),
                _ => None,
            },
        };
        let id = span.span_context.trace_id();
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        // Spans of one trace end close together: look from the newest.
        if let Some((_, spans)) = traces.iter_mut().rev().find(|(t, _)| *t == id) {
            if spans.len() < SPANS {
                spans.push(view);
            }
            return;
        }
        if traces.len() >= TRACES {
            traces.pop_front();
        }
        traces.push_back((id, vec![view]));
    }

    /// The traces kept, newest first.
    pub fn list(&self) -> Vec<TraceSummary> {
        let traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        traces
            .iter()
            .rev()
            .map(|(id, spans)| {
                let start = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
                let end = spans
                    .iter()
                    .map(|s| s.start_us + s.duration_us)
                    .max()
                    .unwrap_or(start);
                let first = spans
                    .iter()
                    .min_by_key(|s| (s.start_us, !s.parent_id.is_empty()));
                let mut services: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
                services.sort();
                services.dedup();
                TraceSummary {
                    trace_id: id.to_string(),
                    name: first.map(|s| s.name.clone()).unwrap_or_default(),
                    services,
                    spans: spans.len(),
                    start_us: start,
                    duration_us: end - start,
                    errors: spans.iter().filter(|s| s.error.is_some()).count(),
                }
            })
            .collect()
    }

    /// One trace, if it is still kept (`id` as 32 hex digits).
    pub fn get(&self, id: &str) -> Option<TraceView> {
        let wanted = TraceId::from_hex(id).ok()?;
        let traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        traces
            .iter()
            .find(|(t, _)| *t == wanted)
            .map(|(t, spans)| TraceView {
                trace_id: t.to_string(),
                spans: spans.clone(),
            })
    }
}

static STORE: OnceLock<Arc<Recent>> = OnceLock::new();

/// This process's store, if it keeps traces (`starling up`).
pub fn store() -> Option<Arc<Recent>> {
    STORE.get().cloned()
}

/// The span processor that fills the store.
#[derive(Debug)]
pub struct Processor(Arc<Recent>);

impl Processor {
    /// Creates the process's store (once) and a processor filling it.
    pub fn install() -> Self {
        Self(STORE.get_or_init(Default::default).clone())
    }
}

impl SpanProcessor for Processor {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.record(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    fn span(trace: u128, id: u64, parent: u64, start_ms: u64, ms: u64, service: &str) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_millis(start_ms);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: format!("span {id}").into(),
            start_time: start,
            end_time: start + Duration::from_millis(ms),
            attributes: vec![KeyValue::new("service.name", service.to_string())],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn keeps_the_newest_traces_and_sums_them_up() {
        let recent = Recent::default();
        recent.record(span(1, 2, 1, 1_000, 5, "tweet"));
        recent.record(span(1, 1, 0, 999, 10, "gateway"));
        for t in 2..(TRACES as u128 + 2) {
            recent.record(span(t, 1, 0, 2_000, 1, "tweet"));
        }
        let list = recent.list();
        assert_eq!(list.len(), TRACES);
        assert_eq!(
            list[0].trace_id,
            TraceId::from(TRACES as u128 + 1).to_string()
        );
        assert!(
            recent.get(&TraceId::from(1u128).to_string()).is_none(),
            "the oldest went"
        );

        let recent = Recent::default();
        recent.record(span(7, 2, 1, 1_000, 5, "tweet"));
        recent.record(span(7, 1, 0, 999, 10, "gateway"));
        let s = &recent.list()[0];
        assert_eq!(
            (s.spans, s.duration_us, s.name.as_str()),
            (2, 10_000, "span 1")
        );
        assert_eq!(s.services, ["gateway", "tweet"]);
        let t = recent.get(&TraceId::from(7u128).to_string()).unwrap();
        assert_eq!(t.spans[0].parent_id, SpanId::from(1u64).to_string());
        assert_eq!(t.spans[1].parent_id, "");
        assert!(recent.get("not hex").is_none());
    }
}
