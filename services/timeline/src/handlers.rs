//! gRPC handlers of `starling.timeline.v1.TimelineService`. Methods not written yet answer UNIMPLEMENTED
//! (the generated default).

use starling_proto::timeline::v1::timeline_service_server::TimelineService;

#[derive(Debug, Clone, Default)]
pub struct TimelineHandler;

#[tonic::async_trait]
impl TimelineService for TimelineHandler {}
