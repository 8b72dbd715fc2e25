//! Requests that may be sent again are read into memory first, so the retry layer can
//! resend them: those of methods the `.proto` declares idempotent (or carrying an
//! `idempotency-key`), marked [`Idempotent`] so any failure may be retried, and those of
//! unary methods, which are resent only when they certainly never left (a refused
//! connection). Never more than `max_buffered_request` bytes: past it, RESOURCE_EXHAUSTED.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http_body_util::{BodyExt as _, Full};
use tonic::body::Body;
use tower::{BoxError, Layer, Service, ServiceExt as _};

use super::config::MeshConfig;
use super::error::{fail, too_large_or};
use super::retry::BufferedBody;

/// Marks a request whose method may be retried on any failure; other buffered requests
/// are resent only when they were certainly never sent. `unary`: its answer is one message,
/// which the attempt reads whole (`eject.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idempotent {
    pub(crate) unary: bool,
}

#[derive(Clone)]
pub(crate) struct BufferLayer {
    config: Arc<MeshConfig>,
}

impl BufferLayer {
    pub(crate) fn new(config: Arc<MeshConfig>) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for BufferLayer {
    type Service = Buffer<S>;

    fn layer(&self, inner: S) -> Buffer<S> {
        Buffer {
            inner,
            config: self.config.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Buffer<S> {
    inner: S,
    config: Arc<MeshConfig>,
}

type Boxed = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

impl<S> Service<http::Request<Body>> for Buffer<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Either<Boxed, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let idempotent = self.config.idempotent_methods.contains(path)
            || req.headers().contains_key(crate::IDEMPOTENCY_KEY);
        let unary = self.config.unary_methods.contains(path);
        let buffer = idempotent || unary;
        if idempotent {
            req.extensions_mut().insert(Idempotent { unary });
        }
        if !buffer {
            return Either::Right(self.inner.call(req));
        }
        // The ready service goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.config.max_buffered_request;
        Either::Left(Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| fail(too_large_or(e, limit), false))?
                .to_bytes();
            // The request's own parts, moved (not cloned: this runs on every call); the
            // retry layer clones them only to keep a copy per attempt.
            let mut req = http::Request::from_parts(parts, Body::new(Full::new(bytes.clone())));
            req.extensions_mut().insert(BufferedBody(bytes));
            inner.oneshot(req).await
        }))
    }
}
