//! The browser's side of the workload: the gateway's JSON API over HTTP/1.1, as the web
//! app calls it (sign-up, sign-in, then calls with the bearer token).
//!
//! Answers are mapped onto gRPC status codes so that the report counts failed calls the
//! same way whichever door they came through (503 → UNAVAILABLE, 504 → DEADLINE_EXCEEDED,
//! a connection that fails → UNAVAILABLE, no answer within the deadline →
//! DEADLINE_EXCEEDED).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tonic::Code;

/// A client of one gateway.
#[derive(Clone)]
pub struct Web {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// Idle pooled connections are dropped early, so a call seldom goes out on a keep-alive
/// connection the server is just closing (a race any HTTP client meets; a browser retries
/// such a request on its own).
fn client(connector: HttpConnector) -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(10))
        .build(connector)
}

/// The gRPC code a browser-facing HTTP status stands for.
pub fn code_of(status: u16) -> Code {
    match status {
        400 | 413 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

impl Web {
    /// `address` is the gateway's `--http` address (`host:port`).
    pub fn new(address: &str, timeout: Duration) -> Web {
        Web {
            base: format!("http://{address}"),
            client: client(HttpConnector::new()),
            timeout,
        }
    }

    /// The same gateway, from the loopback address `source` (any of 127.0.0.0/8): a client
    /// of its own, as far as the gateway's per-address limits go.
    pub fn from_source(&self, source: std::net::IpAddr) -> Web {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(source));
        Web {
            base: self.base.clone(),
            client: client(connector),
            timeout: self.timeout,
        }
    }

    /// One call; the JSON answer of a 2xx, else the status as a gRPC code.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, Code> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|_| Code::Internal)?;
        let answer = async {
            let resp = self.client.request(req).await.map_err(|e| {
                tracing::warn!(error = %e, "cannot reach the gateway");
                Code::Unavailable
            })?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Code::Unavailable)?
                .to_bytes();
            if !(200..300).contains(&status) {
                return Err(code_of(status));
            }
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).map_err(|_| Code::Internal)
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .unwrap_or(Err(Code::DeadlineExceeded))
    }

    /// Signs `user` up (or in, if the account exists from an earlier attempt whose answer
    /// was lost) and returns the token.
    pub async fn sign_up(&self, user: &str, password: &str) -> Result<String, Code> {
        let body = serde_json::json!({ "user": user, "password": password });
        let answer = match self
            .call(http::Method::POST, "/api/signup", None, Some(body.clone()))
            .await
        {
            Err(Code::AlreadyExists) => {
                self.call(http::Method::POST, "/api/signin", None, Some(body))
                    .await
            }
            other => other,
        }?;
        token_of(&answer)
    }

    /// Signs `user` in; the token.
    pub async fn sign_in(&self, user: &str, password: &str) -> Result<String, Code> {
        let body = serde_json::json!({ "user": user, "password": password });
        let answer = self
            .call(http::Method::POST, "/api/signin", None, Some(body))
            .await?;
        token_of(&answer)
    }
}

fn token_of(answer: &Value) -> Result<String, Code> {
    answer
        .get("token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(Code::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_codes_the_report_counts() {
        assert_eq!(code_of(503), Code::Unavailable);
        assert_eq!(code_of(504), Code::DeadlineExceeded);
        assert_eq!(code_of(409), Code::AlreadyExists);
        assert_eq!(code_of(500), Code::Internal);
    }
}
