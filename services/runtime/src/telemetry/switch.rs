//! Tracing that a benchmark turns on and off while it runs, to measure what tracing costs
//! a call: off (no spans at all), on but not sampled (spans made and propagated, nothing
//! recorded), and on and sampled (every span recorded and batched for export; the export
//! itself goes nowhere, so the figure leaves out the network to a collector).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, ShouldSample, SpanData, SpanExporter,
};

static SAMPLED: AtomicBool = AtomicBool::new(false);

/// What the benchmark measures next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Unsampled,
    Sampled,
}

/// Switches tracing to `mode` (for a process initialised with `switchable`).
pub fn set(mode: Mode) {
    starling_discovery::trace::set_enabled(mode != Mode::Off);
    SAMPLED.store(mode == Mode::Sampled, Ordering::Relaxed);
}

/// Samples a new trace while [`Mode::Sampled`]; a span with a parent follows its parent,
/// as the production default (parent-based) does.
#[derive(Debug, Clone)]
pub struct Switched;

impl ShouldSample for Switched {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _: TraceId,
        _: &str,
        _: &SpanKind,
        _: &[KeyValue],
        _: &[Link],
    ) -> SamplingResult {
        let parent_sampled = parent
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid())
            .map(|sc| sc.is_sampled());
        let sample = parent_sampled.unwrap_or_else(|| SAMPLED.load(Ordering::Relaxed));
        SamplingResult {
            decision: if sample {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// An exporter that drops what it is given.
#[derive(Debug)]
pub struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}
