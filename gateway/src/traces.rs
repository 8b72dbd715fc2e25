//! The last traces, for the web UI's waterfall (`/traces`, see `ui`): what `starling up` keeps in
//! memory (`starling_runtime::telemetry::recent`). A gateway running on its own keeps
//! none (its traces go to an OTLP collector, if any) and answers 404 with a message that
//! says so. Clients on the gateway's machine only (see `admin::LocalCaller`).

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use starling_runtime::telemetry::recent;

use crate::admin::LocalCaller;
use crate::errors::ApiError;

/// A trace in the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TraceSummaryJson {
    /// 32 hex digits.
    pub trace_id: String,
    /// The first span's name.
    pub name: String,
    pub services: Vec<String>,
    pub spans: usize,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    pub duration_us: u64,
    /// Spans that ended in an error.
    pub errors: usize,
}

/// One span of a trace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SpanJson {
    pub span_id: String,
    /// Empty for the trace's root (or when the parent is outside this process's view).
    pub parent_id: String,
    pub name: String,
    pub service: String,
    /// server, client, producer, consumer or internal.
    pub kind: String,
    pub start_us: u64,
    pub duration_us: u64,
    pub error: Option<String>,
}

/// One trace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TraceJson {
    pub trace_id: String,
    pub spans: Vec<SpanJson>,
}

fn store() -> Result<std::sync::Arc<recent::Recent>, ApiError> {
    recent::store().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this gateway keeps no traces (only `starling up` does); send them to an OTLP collector with OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    })
}

#[utoipa::path(get, path = "/api/admin/traces", tag = "traces",
    responses(
        (status = 200, description = "the traces kept, newest first", body = [TraceSummaryJson]),
        (status = 403, description = "not from the gateway's machine", body = crate::api::ErrorBody),
        (status = 404, description = "this process keeps no traces", body = crate::api::ErrorBody),
    ))]
pub async fn list(_: LocalCaller) -> Result<Json<Vec<TraceSummaryJson>>, ApiError> {
    Ok(Json(
        store()?
            .list()
            .into_iter()
            .map(|t| TraceSummaryJson {
                trace_id: t.trace_id,
                name: t.name,
                services: t.services,
                spans: t.spans,
                start_us: t.start_us,
                duration_us: t.duration_us,
                errors: t.errors,
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/admin/traces/{id}", tag = "traces",
    params(("id" = String, Path, description = "a trace id: 32 hex digits")),
    responses(
        (status = 200, description = "the trace's spans", body = TraceJson),
        (status = 400, description = "not a trace id", body = crate::api::ErrorBody),
        (status = 403, description = "not from the gateway's machine", body = crate::api::ErrorBody),
        (status = 404, description = "no such trace kept (or none kept at all)", body = crate::api::ErrorBody),
    ))]
pub async fn get(
    _: LocalCaller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TraceJson>, ApiError> {
    let id = id?.0;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "id: a trace id is 32 hex digits",
        ));
    }
    let trace = store()?.get(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("trace {id} is not among the last {} kept", recent::TRACES),
        )
    })?;
    Ok(Json(TraceJson {
        trace_id: trace.trace_id,
        spans: trace
            .spans
            .into_iter()
            .map(|s| SpanJson {
                span_id: s.span_id,
                parent_id: s.parent_id,
                name: s.name,
                service: s.service,
                kind: s.kind.to_string(),
                start_us: s.start_us,
                duration_us: s.duration_us,
                error: s.error,
            })
            .collect(),
    }))
}
