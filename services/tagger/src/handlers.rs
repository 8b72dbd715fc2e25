//! gRPC handlers of `starling.tagger.v1.TaggerService`.

use starling_proto::tagger::v1::tagger_service_server::TaggerService;
use starling_proto::tagger::v1::{
    ListTagsRequest, ListTagsResponse, TagTextRequest, TagTextResponse,
};
use tonic::{Request, Response, Status};

use crate::classifier;
use crate::tags::TAGS;

/// Longer texts are not tweets; refusing them bounds the work per call.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Default)]
pub struct TaggerHandler;

#[tonic::async_trait]
impl TaggerService for TaggerHandler {
    async fn tag_text(
        &self,
        req: Request<TagTextRequest>,
    ) -> Result<Response<TagTextResponse>, Status> {
        let text = &req.get_ref().text;
        if text.len() > MAX_TEXT_BYTES {
            return Err(Status::invalid_argument(format!(
                "text is {} bytes; at most {MAX_TEXT_BYTES} are accepted",
                text.len()
            )));
        }
        let tags = classifier::tag(text)
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(Response::new(TagTextResponse { tags }))
    }

    async fn list_tags(
        &self,
        _req: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        Ok(Response::new(ListTagsResponse {
            tags: TAGS.iter().map(|t| t.to_string()).collect(),
        }))
    }
}
