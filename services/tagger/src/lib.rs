//! The tagger service: topic tags for tweets, only ever from the fixed list of 50.
//!
//! * [`tags`]: the tag list (from the seed article, verbatim);
//! * [`classifier`]: the deterministic lexicon classifier (precision and recall on the
//!   tuning set `data/labelled.tsv` and the held-out `data/heldout.tsv`: see
//!   `tests/labelled_set.rs`);
//! * [`handlers`]: the gRPC API (`TagText`, `ListTags`);
//! * [`events`]: consumes `TweetCreated`, publishes `TweetTagged`.

pub mod classifier;
pub mod events;
pub mod handlers;
pub mod tags;

use starling_proto::tagger::v1::tagger_service_server::TaggerServiceServer;
use starling_runtime::events::topics::groups;
use starling_runtime::{ServiceContext, ServiceParts};
use tonic::service::Routes;

pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    Ok(ServiceParts::new(Routes::new(TaggerServiceServer::new(
        handlers::TaggerHandler,
    )))
    .on_events(
        groups::TAGGER,
        events::TweetCreatedHandler::new(ctx.bus.clone()),
    ))
}
