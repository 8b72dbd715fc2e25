//! Which service a span belongs to, and exporting each service's spans under its own
//! resource.
//!
//! The mesh's server spans, the relay's publish spans and the consumers' spans name their
//! service (`service.name`); a span made inside them (a mesh client call, a handler's own
//! span) does not know it. [`Attribute`] gives such a span its local parent's service when
//! it starts. [`ByService`] then exports each service's spans with a resource naming that
//! service: OpenTelemetry's service is a property of the resource, not of the span, and
//! `starling up` runs five services in one process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanId, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

/// The attribute that names a span's service.
pub const SERVICE: &str = "service.name";

/// The `service.name` of a span, if it has one.
pub fn service_of(span: &SpanData) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == SERVICE)
        .map(|kv| kv.value.to_string())
}

/// Gives a span without `service.name` its local parent's (or the process's default).
#[derive(Debug)]
pub struct Attribute {
    default: String,
    /// Services of the spans started and not yet ended here.
    live: Mutex<HashMap<SpanId, String>>,
}

/// Spans tracked at most (a leak guard: every span ends, but a bug should not grow this
/// without bound).
const LIVE_MAX: usize = 100_000;

impl Attribute {
    pub fn new(default: &str) -> Self {
        Self {
            default: default.to_string(),
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl SpanProcessor for Attribute {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        // A span that is not sampled is never exported: nothing to attribute.
        if !span.is_recording() {
            return;
        }
        let Some(data) = span.exported_data() else {
            return;
        };
        let own = service_of(&data);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let service = match own {
            Some(s) => s,
            None => {
                let parent = cx.span().span_context().span_id();
                let s = live
                    .get(&parent)
                    .cloned()
                    .unwrap_or_else(|| self.default.clone());
                span.set_attribute(KeyValue::new(SERVICE, s.clone()));
                s
            }
        };
        if live.len() < LIVE_MAX {
            live.insert(data.span_context.span_id(), service);
        }
    }

    fn on_end(&self, span: SpanData) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&span.span_context.span_id());
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// An OTLP exporter per service, each with a resource naming it. A process of one service
/// exports everything under that one (named by `OTEL_SERVICE_NAME` if set).
#[derive(Debug)]
pub struct ByService {
    default: String,
    /// One exporter each; built up front, inside the runtime (tonic needs it).
    exporters: HashMap<String, opentelemetry_otlp::SpanExporter>,
    single: bool,
}

impl ByService {
    pub fn new(
        default: &str,
        services: &[String],
    ) -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        let single = services.len() <= 1;
        let mut exporters = HashMap::new();
        let mut names: Vec<String> = services.to_vec();
        if !names.iter().any(|s| s == default) {
            names.push(default.to_string());
        }
        for name in names {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            let shown = match std::env::var("OTEL_SERVICE_NAME") {
                Ok(n) if single && !n.trim().is_empty() => n,
                _ => name.clone(),
            };
            exporter.set_resource(&Resource::builder().with_service_name(shown).build());
            exporters.insert(name, exporter);
        }
        Ok(Self {
            default: default.to_string(),
            exporters,
            single,
        })
    }

    fn exporter_for(&self, service: Option<&str>) -> &opentelemetry_otlp::SpanExporter {
        let by_name = service
            .filter(|_| !self.single)
            .and_then(|s| self.exporters.get(s));
        by_name
            .or_else(|| self.exporters.get(&self.default))
            .or_else(|| self.exporters.values().next())
            .expect("ByService holds the default service's exporter")
    }
}

impl SpanExporter for ByService {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: HashMap<Option<String>, Vec<SpanData>> = HashMap::new();
        for span in batch {
            let service = if self.single { None } else { service_of(&span) };
            groups.entry(service).or_default().push(span);
        }
        let mut failures = Vec::new();
        for (service, spans) in groups {
            if let Err(e) = self.exporter_for(service.as_deref()).export(spans).await {
                failures.push(e.to_string());
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(failures.join("; ")))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        for e in self.exporters.values() {
            let _ = e.shutdown_with_timeout(timeout);
        }
        Ok(())
    }

    fn set_resource(&mut self, _resource: &Resource) {
        // Each exporter has its service's resource already.
    }
}
