//! gRPC handlers of `starling.recommendation.v1.RecommendationService`. Methods not written yet answer UNIMPLEMENTED
//! (the generated default).

use starling_proto::recommendation::v1::recommendation_service_server::RecommendationService;

#[derive(Debug, Clone, Default)]
pub struct RecommendationHandler;

#[tonic::async_trait]
impl RecommendationService for RecommendationHandler {}
