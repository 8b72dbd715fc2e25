//! The bottom of the stack, one attempt of a call: wait for the target to have an
//! endpoint (`snapshot.rs`), stamp the time left (`deadline.rs`), pick an endpoint by
//! policy (`pick.rs`) and send (`eject.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tower::{BoxError, Service};

use super::config::MeshConfig;
use super::pick::Picker;
use super::snapshot::Snapshots;
use super::{deadline, eject};

/// Cheap to clone (one reference count): the retry layer clones it for every call.
#[derive(Clone)]
pub(crate) struct Dispatch(Arc<Parts>);

pub(crate) struct Parts {
    pub(crate) service: Arc<str>,
    pub(crate) config: Arc<MeshConfig>,
    pub(crate) snapshots: Snapshots,
    pub(crate) picker: Picker,
}

impl Dispatch {
    pub(crate) fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }
}

impl Service<http::Request<Body>> for Dispatch {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Waiting for an endpoint happens inside the call, bounded by the deadline and
        // `no_endpoint_timeout`, so that readiness can never hang a caller.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move {
            let snap = this
                .snapshots
                .nonempty(this.config.no_endpoint_timeout)
                .await?;
            deadline::restamp(&mut req, &this.service)?;
            let endpoint = this.picker.pick(&snap, req.headers());
            eject::attempt(&this.service, &this.config, endpoint, req).await
        })
    }
}
