//! Deadline propagation.
//!
//! A server handler that calls another service should not outlive its own caller's
//! deadline. The server side ([`DeadlineLayer`]) reads the inbound `grpc-timeout` and makes
//! the deadline visible to the handler's task; the mesh channel reads it back
//! ([`current_deadline`]) and sends the remaining time downstream as `grpc-timeout`, also
//! enforcing it locally so a call never waits past it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the inbound call being handled on this task, if any.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `fut` with `deadline` as the current deadline (the earlier one wins if a deadline
/// is already in scope).
pub async fn propagate_deadline<F: Future>(deadline: Instant, fut: F) -> F::Output {
    let deadline = current_deadline().map_or(deadline, |d| d.min(deadline));
    DEADLINE.scope(deadline, fut).await
}

pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        // (Checked first: splitting a string that ends in a multi-byte character one
        // byte from its end would panic.)
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        // `u64::from_str` would take a leading `+`, which the gRPC spec does not.
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` of a request's headers, if it has a valid one: the one place both
/// the server layer and the mesh's client read it.
pub fn timeout_of(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// Formats a duration for `grpc-timeout`, rounding up to whole milliseconds (at least 1).
pub fn format_grpc_timeout(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000).clamp(1, 99_999_999);
    format!("{ms}m")
}

/// Server-side layer: makes the inbound `grpc-timeout` the current deadline of the handler.
#[derive(Debug, Clone, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = timeout_of(req.headers());
        let fut = self.inner.call(req);
        match timeout {
            Some(t) => Box::pin(DEADLINE.scope(Instant::now() + t, fut)),
            None => Box::pin(fut),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trip() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(format_grpc_timeout(Duration::from_micros(1500)), "2m");
        assert_eq!(format_grpc_timeout(Duration::ZERO), "1m");
    }

    proptest::proptest! {
        /// Any header value: no panic, and an accepted one is what the spec allows.
        #[test]
        fn fuzz_grpc_timeout_parsing(value in "\\PC{0,12}") {
            if let Some(d) = parse_grpc_timeout(&value) {
                let (digits, unit) = value.split_at(value.len() - 1);
                proptest::prop_assert!((1..=8).contains(&digits.len()));
                proptest::prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                proptest::prop_assert!("HMSmun".contains(unit));
                proptest::prop_assert!(d <= Duration::from_secs(99_999_999 * 3600));
            }
        }

        /// What we send parses back to at least the time we meant (rounded up to the ms).
        #[test]
        fn fuzz_grpc_timeout_round_trip(micros in 0u64..200_000_000_000) {
            let d = Duration::from_micros(micros);
            let sent = format_grpc_timeout(d);
            let back = parse_grpc_timeout(&sent).expect("our own format parses");
            proptest::prop_assert!(back >= d.min(Duration::from_millis(99_999_999)));
            proptest::prop_assert!(back <= d + Duration::from_millis(1) || back == Duration::from_millis(99_999_999) || d.is_zero());
        }
    }

    #[test]
    fn odd_values_are_refused_not_panicked_on() {
        assert_eq!(parse_grpc_timeout("1é"), None, "multi-byte last character");
        assert_eq!(parse_grpc_timeout("+5S"), None, "a sign is not a digit");
    }

    /// The server layer puts the caller's `grpc-timeout` in the handler's scope, and
    /// nothing without one.
    #[tokio::test]
    async fn the_server_layer_scopes_the_inbound_deadline() {
        use tower::ServiceExt as _;
        let seen = |req: http::Request<()>| async move {
            let svc = DeadlineLayer.layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(current_deadline())
            }));
            svc.oneshot(req).await.unwrap()
        };
        let before = Instant::now();
        let with = http::Request::builder()
            .header(GRPC_TIMEOUT, "250m")
            .body(())
            .unwrap();
        let deadline = seen(with).await.expect("a deadline in the handler's scope");
        assert!(deadline >= before + Duration::from_millis(250));
        assert!(deadline <= Instant::now() + Duration::from_millis(250));
        assert_eq!(
            seen(http::Request::new(())).await,
            None,
            "no header, no deadline"
        );
        let bad = http::Request::builder()
            .header(GRPC_TIMEOUT, "soon")
            .body(())
            .unwrap();
        assert_eq!(seen(bad).await, None, "an unparsable header is ignored");
    }

    #[tokio::test]
    async fn inner_scope_keeps_the_earlier_deadline() {
        assert_eq!(current_deadline(), None);
        let soon = Instant::now() + Duration::from_millis(50);
        let later = soon + Duration::from_secs(5);
        propagate_deadline(soon, async {
            propagate_deadline(later, async {
                assert_eq!(current_deadline(), Some(soon));
            })
            .await;
        })
        .await;
    }
}
