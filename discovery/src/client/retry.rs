//! Retry policy: a call is retried on another endpoint when its method is declared
//! idempotent in the `.proto` file and the failure says the endpoint, not the request, was
//! the problem; or, whatever its method, when the endpoint refused the connection, so the
//! request certainly never ran. A shared budget caps retries at a fraction of traffic so that an outage
//! does not turn into a retry storm.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use rand::Rng;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};

use super::buffer::Idempotent;
use super::error::MeshError;

/// The request body, kept so the request can be sent again. Buffered calls carry it (see
/// `buffer.rs`); whether they may be sent again is the policy's question.
#[derive(Debug, Clone)]
pub struct BufferedBody(pub Bytes);

#[derive(Clone)]
pub struct RetryPolicy {
    attempts_left: usize,
    budget: Arc<TpsBudget>,
    /// Retries made, for the mesh view (one count per target).
    retries: Arc<std::sync::atomic::AtomicU64>,
}

impl RetryPolicy {
    pub fn new(max_attempts: usize, budget: Arc<TpsBudget>) -> Self {
        Self {
            attempts_left: max_attempts.saturating_sub(1),
            budget,
            retries: Default::default(),
        }
    }

    /// Counts the retries it makes in `retries`.
    pub fn counting(mut self, retries: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.retries = retries;
        self
    }

    pub fn default_budget() -> Arc<TpsBudget> {
        // At least 10 retries per second, plus 20% of the calls.
        Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2))
    }
}

pub fn rebuild(req: &http::Request<Body>, buffered: &BufferedBody) -> http::Request<Body> {
    let mut out = http::Request::new(Body::new(Full::new(buffered.0.clone())));
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    // Keep the call's context (its deadline, tonic's method info) on every attempt.
    *out.extensions_mut() = req.extensions().clone();
    out.extensions_mut().insert(buffered.clone());
    out
}

type Res = Result<http::Response<Body>, tower::BoxError>;

impl tower::retry::Policy<http::Request<Body>, http::Response<Body>, tower::BoxError>
    for RetryPolicy
{
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(&mut self, req: &mut http::Request<Body>, result: &mut Res) -> Option<Self::Future> {
        let retryable = match result {
            Ok(_) => {
                self.budget.deposit();
                false
            }
            // Any failure of an idempotent call that another endpoint might not have; any
            // call at all that never left (a refused connection).
            Err(e) => e.downcast_ref::<MeshError>().is_some_and(|m| {
                m.unsent || (m.retryable && req.extensions().get::<Idempotent>().is_some())
            }),
        };
        if !retryable || self.attempts_left == 0 || req.extensions().get::<BufferedBody>().is_none()
        {
            return None;
        }
        if !self.budget.withdraw() {
            tracing::debug!(path = req.uri().path(), "retry budget exhausted");
            return None;
        }
        self.attempts_left -= 1;
        self.retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A little jitter so that callers failing together do not retry together.
        let pause = Duration::from_micros(rand::rng().random_range(0..2_000));
        Some(Box::pin(tokio::time::sleep(pause)))
    }

    fn clone_request(&mut self, req: &http::Request<Body>) -> Option<http::Request<Body>> {
        let buffered = req.extensions().get::<BufferedBody>()?;
        Some(rebuild(req, buffered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::retry::Policy as _;

    fn unsent() -> Res {
        Err(Box::new(MeshError {
            status: tonic::Status::unavailable("connection refused"),
            retryable: true,
            unsent: true,
        }))
    }

    fn buffered() -> http::Request<Body> {
        let mut req = http::Request::new(Body::empty());
        req.extensions_mut().insert(BufferedBody(Bytes::new()));
        req
    }

    /// The budget caps retries: with nothing deposited and no floor, a call that was
    /// certainly never sent is still not retried; with room, it is, up to the attempts.
    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent() {
        let empty = Arc::new(TpsBudget::new(Duration::from_secs(10), 0, 0.0));
        let mut policy = RetryPolicy::new(3, empty);
        assert!(
            policy.retry(&mut buffered(), &mut unsent()).is_none(),
            "no budget"
        );

        // Half a retry per successful call: four successes buy two retries.
        let half = Arc::new(TpsBudget::new(Duration::from_secs(10), 0, 0.5));
        let mut policy = RetryPolicy::new(5, half);
        for _ in 0..4 {
            let mut ok: Res = Ok(http::Response::new(Body::empty()));
            assert!(
                policy.retry(&mut buffered(), &mut ok).is_none(),
                "a success is final"
            );
        }
        let mut retried = 0;
        while policy.retry(&mut buffered(), &mut unsent()).is_some() {
            retried += 1;
            assert!(retried <= 5, "never past the attempts");
        }
        assert_eq!(retried, 2, "what four successes deposited, and no more");
    }
}
