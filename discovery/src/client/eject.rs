//! One attempt on one endpoint, and what its outcome says about the endpoint. A transport
//! failure, or no answer within the attempt timeout (a frozen process keeps its
//! connections open), ejects the endpoint for a doubling back-off (`endpoint.rs`) and is
//! retryable elsewhere; so is a trailers-only UNAVAILABLE (the instance sheds load or is
//! stopping), unless the answer carries a negative `grpc-retry-pushback-ms` (its
//! dependency failed, and every replica shares that dependency: passed back as it is).
//! The endpoint's in-flight count and latency (for p2c) are kept here too.
//!
//! A process killed between a response's headers and its body leaves the caller with a
//! call that failed after it "succeeded": the retry layer, which judges by the head, would
//! pass the broken body up. So the answer of an idempotent unary call is read whole here,
//! inside the attempt, and a body cut short is a transport failure like any other: the
//! endpoint is ejected and the call retried elsewhere. (tonic reads a unary answer whole
//! before decoding it anyway, so this holds no more memory; streams are never read ahead.)

use std::sync::Arc;

use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use tonic::body::Body;
use tonic::Status;
use tower::{BoxError, Service as _, ServiceExt as _};
use tracing::warn;

use super::buffer::Idempotent;
use super::config::MeshConfig;
use super::endpoint::Endpoint;
use super::error::{connection_refused, fail, MeshError};

/// Sends `req` to `endpoint` of `service`.
pub(crate) async fn attempt(
    service: &str,
    config: &MeshConfig,
    endpoint: Arc<Endpoint>,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    endpoint.picks.increment(1);
    let flight = endpoint.start();
    let mut channel = endpoint.channel.clone();
    let read_whole = req
        .extensions()
        .get::<Idempotent>()
        .is_some_and(|i| i.unary);
    let send = async {
        let resp = match channel.ready().await {
            Ok(ch) => ch.call(req).await.map_err(BoxError::from)?,
            Err(e) => return Err(BoxError::from(e)),
        };
        if !read_whole {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        let whole = body.collect().await?;
        let trailers = whole.trailers().cloned();
        let data = whole.to_bytes();
        let body = if data.is_empty() && trailers.is_none() {
            // A trailers-only answer (its status in the head) must stay one: a body that
            // ends at once, so a proxy such as the gateway still forwards the head as the
            // end of the stream, where gRPC clients look for the status.
            Body::empty()
        } else {
            // Frames, not a `Full`: its exact size would let an HTTP/1.1 server (gRPC-Web)
            // send a content-length that leaves out the trailers frame tonic-web appends.
            let frames = [
                (!data.is_empty()).then(|| Frame::data(data)),
                trailers.map(Frame::trailers),
            ];
            Body::new(StreamBody::new(futures::stream::iter(
                frames
                    .into_iter()
                    .flatten()
                    .map(Ok::<_, std::convert::Infallible>),
            )))
        };
        Ok(http::Response::from_parts(parts, body))
    };
    let result = match config.attempt_timeout {
        None => send.await,
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(r) => r,
            Err(_) => {
                drop(flight);
                let period = endpoint.eject(&config.ejection);
                warn!(%service, endpoint = %endpoint.instance.address,
                    instance = %endpoint.id(), ejected_for = ?period,
                    "no answer within {limit:?}; endpoint ejected as stalled");
                return Err(fail(
                    Status::unavailable(format!(
                        "{service} endpoint {} did not answer within {limit:?}",
                        endpoint.instance.address
                    )),
                    true,
                ));
            }
        },
    };
    match result {
        Ok(resp) => {
            // A trailers-only UNAVAILABLE is not a fast success (that would make p2c favour
            // the endpoint): out of rotation briefly, so the retry goes elsewhere.
            let pushback = resp
                .headers()
                .get(crate::RETRY_PUSHBACK)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|ms| ms < 0);
            if let Some(status) = Status::from_header_map(resp.headers()).filter(|_| !pushback) {
                if status.code() == tonic::Code::Unavailable {
                    drop(flight);
                    endpoint.eject(&config.ejection);
                    return Err(fail(status, true));
                }
            }
            flight.answered();
            Ok(resp)
        }
        Err(e) => {
            drop(flight);
            let period = endpoint.eject(&config.ejection);
            let unsent = connection_refused(e.as_ref());
            warn!(%service, endpoint = %endpoint.instance.address,
                instance = %endpoint.id(), error = %e, ejected_for = ?period, unsent,
                "transport failure; endpoint ejected");
            Err(Box::new(MeshError {
                status: Status::unavailable(format!(
                    "{service} endpoint {} failed: {e}",
                    endpoint.instance.address
                )),
                retryable: true,
                unsent,
            }))
        }
    }
}
