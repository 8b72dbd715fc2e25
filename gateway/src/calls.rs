//! Who may make which gRPC call through the gateway (native gRPC on either port, and
//! gRPC-Web), as the JSON API decides it for HTTP:
//!
//! * **reads** (methods the `.proto` declares `NO_SIDE_EFFECTS`) are public;
//! * **writes an end user makes** name the user they act for in one field of the request
//!   ([`acting_user`]): they need `authorization: Bearer <token>` (else UNAUTHENTICATED),
//!   may act as the token's user only (else PERMISSION_DENIED), and count against that
//!   user's write budget, as on the JSON API;
//! * **every other method** (internal ones, such as `RegisterUsers`, which sign-up makes)
//!   is PERMISSION_DENIED here.
//!
//! A gRPC `WatchHomeTimeline` is held to the JSON live timeline's rules: it takes one of
//! the user's, the client address's and the gateway's stream places
//! (`stream::take_slot`) for as long as its answer is open, instead of a write of the
//! budget, and lasts at most the JSON stream's 30 minutes (its own deadline if shorter).
//!
//! To read the acting user the request's one message is buffered (at most
//! [`MAX_MESSAGE`]) and decoded; what is forwarded is the bytes as received. The
//! `authorization` metadata never leaves the gateway.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use prost::Message as _;
use starling_proto::follower::v1::{FollowRequest, UnfollowRequest};
use starling_proto::recommendation::v1::RecordEngagementRequest;
use starling_proto::timeline::v1::WatchHomeTimelineRequest;
use starling_proto::tweet::v1::CreateTweetRequest;
use tonic::body::Body;
use tonic::Status;
use tower::{Service, ServiceExt as _};

use crate::auth::{bearer, Kind};
use crate::grpc::Forwarder;
use crate::AppState;

/// The largest request message a user write may carry (a tweet is at most 280
/// characters: the largest is well under 4 KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The user a write acts for, read from its request message; `None` for a method that is
/// not an end user's write.
pub fn acting_user(path: &str, message: &[u8]) -> Option<Result<String, prost::DecodeError>> {
    Some(match path {
        "/starling.tweet.v1.TweetService/CreateTweet" => {
            CreateTweetRequest::decode(message).map(|r| r.author)
        }
        "/starling.follower.v1.FollowerService/Follow" => {
            FollowRequest::decode(message).map(|r| r.follower)
        }
        "/starling.follower.v1.FollowerService/Unfollow" => {
            UnfollowRequest::decode(message).map(|r| r.follower)
        }
        "/starling.recommendation.v1.RecommendationService/RecordEngagement" => {
            RecordEngagementRequest::decode(message).map(|r| r.user)
        }
        // A live timeline holds resources while open: the user's own only.
        "/starling.timeline.v1.TimelineService/WatchHomeTimeline" => {
            WatchHomeTimelineRequest::decode(message).map(|r| r.user)
        }
        _ => return None,
    })
}

/// The forwarder behind the checks of the module docs.
#[derive(Clone)]
pub struct UserCalls {
    state: AppState,
    reads: Arc<std::collections::HashSet<String>>,
    forwarder: Forwarder,
}

impl UserCalls {
    pub fn new(state: AppState) -> Self {
        let forwarder = Forwarder::new(state.ctx.mesh.clone());
        Self {
            state,
            reads: Arc::new(starling_proto::read_only_methods()),
            forwarder,
        }
    }
}

fn refuse(status: Status) -> http::Response<Body> {
    status.into_http::<Body>()
}

impl<B> Service<http::Request<B>> for UserCalls
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let token = bearer(&parts.headers).map(str::to_string);
            parts.headers.remove(http::header::AUTHORIZATION);
            let path = parts.uri.path().to_string();
            if this.reads.contains(&path) {
                let req = http::Request::from_parts(parts, Body::new(body));
                return this.forwarder.oneshot(req).await;
            }
            let body = match http_body_util::Limited::new(body, MAX_MESSAGE + 5)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => return Ok(refuse(body_error(&path, e))),
            };
            let message = match unary_message(&body) {
                Ok(m) => m,
                Err(status) => return Ok(refuse(status)),
            };
            let Some(acting) = acting_user(&path, message) else {
                return Ok(refuse(Status::permission_denied(format!(
                    "{path} is not open to clients of the gateway"
                ))));
            };
            let acting = match acting {
                Ok(user) => user,
                Err(e) => {
                    return Ok(refuse(Status::invalid_argument(format!(
                        "the request message cannot be decoded: {e}"
                    ))))
                }
            };
            let token = match token {
                Ok(t) => t,
                Err(e) => return Ok(refuse(e.into())),
            };
            let claims = match this
                .state
                .auth
                .authenticate(this.state.ctx.store.as_ref(), Kind::Token, &token)
                .await
            {
                Ok(c) => c,
                Err(e) => return Ok(refuse(e.into())),
            };
            if acting != claims.user {
                return Ok(refuse(Status::permission_denied(format!(
                    "signed in as {:?}: cannot act as {acting:?}",
                    claims.user
                ))));
            }
            if path == WATCH {
                let slot =
                    match crate::stream::take_slot(&this.state, &claims.user, client_ip(&parts)) {
                        Ok(slot) => slot,
                        Err(e) => return Ok(refuse(e.into())),
                    };
                // The client's deadline, but never past the JSON stream's lifetime.
                let asked = parts
                    .headers
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .and_then(starling_discovery::deadline::parse_grpc_timeout);
                let lifetime = asked.map_or(crate::stream::WATCH_LIFETIME, |d| {
                    d.min(crate::stream::WATCH_LIFETIME)
                });
                let value = starling_discovery::deadline::format_grpc_timeout(lifetime);
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    parts.headers.insert("grpc-timeout", v);
                }
                let req =
                    http::Request::from_parts(parts, Body::new(http_body_util::Full::new(body)));
                let resp = this.forwarder.oneshot(req).await?;
                return Ok(resp.map(|b| {
                    Body::new(Holding {
                        body: b,
                        _slot: slot,
                    })
                }));
            }
            if let Err(e) = crate::api::take_write(&this.state, &claims.user) {
                return Ok(refuse(e.into()));
            }
            let req = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(body)));
            this.forwarder.oneshot(req).await
        })
    }
}

const WATCH: &str = "/starling.timeline.v1.TimelineService/WatchHomeTimeline";

/// The client's address: the HTTP port's listener records it as axum's `ConnectInfo`,
/// tonic's `--grpc` server as `TcpConnectInfo`. Unknown only for in-process calls.
fn client_ip(parts: &http::request::Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            parts
                .extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map(|a| a.ip())
        })
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}

/// An answer's body that holds `_slot` until it ends or is dropped.
struct Holding {
    body: Body,
    _slot: crate::stream::StreamSlot,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Why a write's body could not be read, as a status: too large, too slow, or broken.
fn body_error(path: &str, e: tower::BoxError) -> Status {
    if e.downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        return Status::resource_exhausted(format!(
            "a request to {path} is at most {MAX_MESSAGE} bytes"
        ));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<crate::BodyTimedOut>() {
            return Status::deadline_exceeded(t.to_string());
        }
        cause = c.source();
    }
    Status::invalid_argument(format!("the request body could not be read: {e}"))
}

/// The one message of a unary request body: a 5-byte gRPC frame header (uncompressed,
/// length) and exactly that many bytes.
fn unary_message(body: &[u8]) -> Result<&[u8], Status> {
    let (header, rest) = body
        .split_at_checked(5)
        .ok_or_else(|| Status::invalid_argument("the request carries no gRPC message"))?;
    if header[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not accepted by the gateway",
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if rest.len() != len {
        return Err(Status::invalid_argument(
            "the request must carry exactly one gRPC message",
        ));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_writes_name_their_user() {
        let m = CreateTweetRequest {
            author: "alice".into(),
            text: "hi".into(),
        }
        .encode_to_vec();
        let got = acting_user("/starling.tweet.v1.TweetService/CreateTweet", &m);
        assert_eq!(got.unwrap().unwrap(), "alice");
        assert!(acting_user("/starling.follower.v1.FollowerService/RegisterUsers", &m).is_none());
        assert!(
            acting_user("/starling.tweet.v1.TweetService/CreateTweet", &[0xff, 0xff])
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn a_unary_body_is_one_uncompressed_frame() {
        let mut body = vec![0, 0, 0, 0, 2];
        body.extend_from_slice(b"hi");
        assert_eq!(unary_message(&body).unwrap(), b"hi");
        assert_eq!(
            unary_message(&body[..6]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        body[0] = 1;
        assert_eq!(
            unary_message(&body).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        assert!(unary_message(&[]).is_err());
    }
}
