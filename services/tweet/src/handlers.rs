//! gRPC handlers of `starling.tweet.v1.TweetService`. Methods not written yet answer UNIMPLEMENTED
//! (the generated default).

use starling_proto::tweet::v1::tweet_service_server::TweetService;

#[derive(Debug, Clone, Default)]
pub struct TweetHandler;

#[tonic::async_trait]
impl TweetService for TweetHandler {}
