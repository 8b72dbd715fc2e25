//! The tweet service.
//!
//! Its handlers arrive with the application issue; until then every method answers
//! UNIMPLEMENTED, while the instance already registers, balances, health-checks and
//! reflects like any other.

pub mod handlers;

use starling_proto::tweet::v1::tweet_service_server::TweetServiceServer;
use starling_runtime::ServiceContext;
use tonic::service::Routes;

/// The gRPC routes of this service, for the runtime to serve.
pub fn routes(_ctx: &ServiceContext) -> Routes {
    Routes::new(TweetServiceServer::new(handlers::TweetHandler))
}
