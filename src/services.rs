//! Which crate serves which service: the one table that connects `ServiceKind` to the
//! handlers in `services/<name>/`.

use starling_runtime::{ServiceContext, ServiceKind};
use tonic::service::Routes;

pub fn routes(kind: ServiceKind, ctx: &ServiceContext) -> Routes {
    match kind {
        ServiceKind::Tweet => starling_tweet::routes(ctx),
        ServiceKind::Follower => starling_follower::routes(ctx),
        ServiceKind::Timeline => starling_timeline::routes(ctx),
        ServiceKind::Tagger => starling_tagger::routes(ctx),
        ServiceKind::Recommendation => starling_recommendation::routes(ctx),
    }
}
