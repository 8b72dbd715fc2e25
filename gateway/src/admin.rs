//! The gate of the admin routes (`/api/admin/*`: the mesh view and the traces): they
//! answer clients on the gateway's own machine only, since they show internal addresses
//! (as `/metrics` does, which is never on the public port) and what other users did.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::errors::ApiError;

/// A request from a loopback address (403 otherwise).
pub struct LocalCaller;

impl<S: Send + Sync> FromRequestParts<S> for LocalCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        match peer {
            Some(ip) if ip.is_loopback() => Ok(LocalCaller),
            _ => Err(ApiError::forbidden(
                "admin pages answer clients on the gateway's own machine only (they show internal addresses)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn from(peer: Option<&str>) -> Result<LocalCaller, ApiError> {
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        if let Some(p) = peer {
            parts
                .extensions
                .insert(ConnectInfo(p.parse::<SocketAddr>().unwrap()));
        }
        LocalCaller::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn admin_pages_answer_loopback_clients_only() {
        for ok in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert!(from(Some(ok)).await.is_ok(), "{ok}");
        }
        for refused in [Some("10.0.0.7:5000"), Some("[2001:db8::1]:5000"), None] {
            let e = from(refused).await.err().expect("refused");
            assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN, "{refused:?}");
        }
    }
}
