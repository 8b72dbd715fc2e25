//! The outermost layer of the channel: one `client` span per call (covering its retries),
//! whose context goes out as `traceparent`. Nothing at all while tracing is off (see
//! `crate::trace`).

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::Instrument as _;

use crate::trace::{enabled, inject};

#[derive(Clone)]
pub(crate) struct TraceLayer {
    target: Arc<str>,
}

impl TraceLayer {
    /// Calls to the service named `target`.
    pub(crate) fn new(target: &str) -> Self {
        Self {
            target: target.into(),
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            target: self.target.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Trace<S> {
    inner: S,
    target: Arc<str>,
}

impl<S, B> Service<http::Request<B>> for Trace<S>
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
        // The caller's service is its parent span's (see `starling_runtime::telemetry`).
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = req.uri().path(),
            otel.kind = "client",
            peer.service = &*self.target,
            rpc.system = "grpc",
        );
        inject(&span, req.headers_mut());
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        fut.instrument(span)
    }
}
