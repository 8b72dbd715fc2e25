//! gRPC handlers of `starling.tagger.v1.TaggerService`.

use starling_proto::tagger::v1::{
    tagger_service_server::TaggerService, ListTagsRequest, ListTagsResponse,
};
use tonic::{Request, Response, Status};

use crate::tags::TAGS;

#[derive(Debug, Clone, Default)]
pub struct TaggerHandler;

#[tonic::async_trait]
impl TaggerService for TaggerHandler {
    async fn list_tags(
        &self,
        _req: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        Ok(Response::new(ListTagsResponse {
            tags: TAGS.iter().map(|t| t.to_string()).collect(),
        }))
    }
}
