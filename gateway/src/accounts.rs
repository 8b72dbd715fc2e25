//! `starling.auth.v1.AuthService`: sign-up, sign-in and sign-out for clients that speak
//! only gRPC. The same accounts, limits and tokens as the JSON API (`auth.rs` does the
//! work for both); a failure is the JSON API's, as a gRPC status.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use starling_proto::auth::v1::auth_service_server::AuthService;
use starling_proto::auth::v1::{Credentials, Session, SignOutRequest, SignOutResponse};
use tonic::{Request, Response, Status};

use crate::auth::{self, Kind};
use crate::AppState;

pub struct Accounts {
    state: AppState,
}

impl Accounts {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// The client's address, as the HTTP port's listener or tonic's recorded it (the sign-up
/// and sign-in limits are per address). Unknown only for in-process calls.
fn peer<T>(req: &Request<T>) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| req.remote_addr().map(|a| a.ip()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn session(s: auth::Session) -> Session {
    Session {
        user: s.user,
        token: s.token,
        expires_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(s.expires).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
}

fn credentials(c: Credentials) -> auth::Credentials {
    auth::Credentials {
        user: c.user,
        password: c.password,
    }
}

#[tonic::async_trait]
impl AuthService for Accounts {
    async fn sign_up(&self, req: Request<Credentials>) -> Result<Response<Session>, Status> {
        let peer = peer(&req);
        let s = auth::sign_up(&self.state, peer, credentials(req.into_inner())).await?;
        Ok(Response::new(session(s)))
    }

    async fn sign_in(&self, req: Request<Credentials>) -> Result<Response<Session>, Status> {
        let peer = peer(&req);
        let s = auth::sign_in(&self.state, peer, credentials(req.into_inner())).await?;
        Ok(Response::new(session(s)))
    }

    async fn sign_out(
        &self,
        req: Request<SignOutRequest>,
    ) -> Result<Response<SignOutResponse>, Status> {
        let headers = req.metadata().clone().into_headers();
        let token = auth::bearer(&headers)?;
        let claims = self
            .state
            .auth
            .authenticate(self.state.ctx.store.as_ref(), Kind::Token, token)
            .await?;
        auth::sign_out(&self.state, &claims.user).await?;
        Ok(Response::new(SignOutResponse {}))
    }
}
