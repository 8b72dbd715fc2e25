//! gRPC handlers of `starling.follower.v1.FollowerService`. Methods not written yet answer UNIMPLEMENTED
//! (the generated default).

use starling_proto::follower::v1::follower_service_server::FollowerService;

#[derive(Debug, Clone, Default)]
pub struct FollowerHandler;

#[tonic::async_trait]
impl FollowerService for FollowerHandler {}
