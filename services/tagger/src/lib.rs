//! The tagger service: topic tags for tweets, only ever from the fixed list of 50.
//!
//! * [`tags`]: the tag list (from the seed article, verbatim);
//! * [`handlers`]: the gRPC API.
//!
//! Consuming `TweetCreated` and the classifier behind `TagText` arrive with the application
//! issue; until then `TagText` answers UNIMPLEMENTED.

pub mod handlers;
pub mod tags;

use starling_proto::tagger::v1::tagger_service_server::TaggerServiceServer;
use starling_runtime::ServiceContext;
use tonic::service::Routes;

/// The gRPC routes of this service, for the runtime to serve.
pub fn routes(_ctx: &ServiceContext) -> Routes {
    Routes::new(TaggerServiceServer::new(handlers::TaggerHandler))
}
