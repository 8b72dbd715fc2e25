//! Deadlines on the caller's side. [`SetDeadline`], the outermost layer, fixes when the
//! whole call must be over (the earliest of the caller's `grpc-timeout`, the deadline of
//! the inbound call being served, see `crate::deadline`, and the configured default) and
//! answers DEADLINE_EXCEEDED when it passes, in whatever layer the call then is.
//! [`restamp`], run by each attempt, sends what is left of it downstream as
//! `grpc-timeout`, so a retry after a slow first attempt does not promise the next hop the
//! whole time again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::body::Body;
use tonic::Status;
use tower::{BoxError, Layer, Service};

use super::error::fail;
use crate::deadline::{current_deadline, format_grpc_timeout, timeout_of, GRPC_TIMEOUT};

/// When the call must be over; set by [`SetDeadline`], read by [`restamp`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDeadline(pub Instant);

#[derive(Clone)]
pub(crate) struct SetDeadlineLayer {
    service: Arc<str>,
    default: Duration,
}

impl SetDeadlineLayer {
    /// Calls to `service` without a deadline of their own get `default`.
    pub(crate) fn new(service: &str, default: Duration) -> Self {
        Self {
            service: service.into(),
            default,
        }
    }
}

impl<S> Layer<S> for SetDeadlineLayer {
    type Service = SetDeadline<S>;

    fn layer(&self, inner: S) -> SetDeadline<S> {
        SetDeadline {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct SetDeadline<S> {
    inner: S,
    layer: SetDeadlineLayer,
}

pin_project_lite::pin_project! {
    /// The call under its deadline (a named future, not a box: this runs on every call).
    pub(crate) struct Deadlined<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        service: Arc<str>,
    }
}

impl<F> Future for Deadlined<F>
where
    F: Future<Output = Result<http::Response<Body>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_elapsed)) => Poll::Ready(Err(fail(
                Status::deadline_exceeded(format!(
                    "{} did not answer within the deadline",
                    this.service
                )),
                false,
            ))),
        }
    }
}

impl<S> Service<http::Request<Body>> for SetDeadline<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Deadlined<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let now = Instant::now();
        let explicit = timeout_of(req.headers()).map(|t| now + t);
        let deadline = match (explicit, current_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(d), None) | (None, Some(d)) => d,
            (None, None) => now + self.layer.default,
        };
        req.extensions_mut().insert(CallDeadline(deadline));
        Deadlined {
            inner: tokio::time::timeout_at(deadline, self.inner.call(req)),
            service: self.layer.service.clone(),
        }
    }
}

/// Puts what is left of the call's deadline in `req`'s `grpc-timeout`; DEADLINE_EXCEEDED
/// if nothing is left.
pub(crate) fn restamp(req: &mut http::Request<Body>, service: &str) -> Result<(), BoxError> {
    let Some(CallDeadline(deadline)) = req.extensions().get::<CallDeadline>().copied() else {
        return Ok(());
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(fail(
            Status::deadline_exceeded(format!("deadline passed before calling {service}")),
            false,
        ));
    }
    if let Ok(v) = format_grpc_timeout(remaining).parse() {
        req.headers_mut().insert(GRPC_TIMEOUT, v);
    }
    Ok(())
}
