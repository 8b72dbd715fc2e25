//! Registering users from tools. The chaos suite and the benchmarks make names up, and a
//! name must be registered (`FollowerService/RegisterUsers`, what sign-up does) before
//! anyone can follow it or it can follow anyone.

use anyhow::Context as _;
use starling_discovery::MeshChannel;
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::RegisterUsersRequest;

/// Users per `RegisterUsers` call (the service takes at most 1,000).
const CHUNK: usize = 1_000;

/// Registers `names` through `follower` (the follower service's channel); idempotent.
pub async fn register_users(follower: &MeshChannel, names: &[String]) -> anyhow::Result<()> {
    let mut client = FollowerServiceClient::new(follower.clone());
    for chunk in names.chunks(CHUNK) {
        client
            .register_users(RegisterUsersRequest {
                users: chunk.to_vec(),
            })
            .await
            .with_context(|| format!("registering {} users", chunk.len()))?;
    }
    Ok(())
}
