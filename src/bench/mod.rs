//! `starling bench ...`: benchmarks that measure the mesh against a baseline in the same
//! run, on loopback only, and stop by themselves.

pub mod backend;
pub mod balancer;
pub mod e2e;
pub mod fanout;
pub mod load;
pub mod post;

use crate::cli::BenchCommand;

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let bench = async {
        match cmd {
            BenchCommand::Balancer(args) => balancer::run(args).await,
            BenchCommand::Fanout(args) => fanout::run(args).await,
            BenchCommand::E2e(args) => e2e::run(args).await,
            BenchCommand::Post(args) => post::run(args).await,
            BenchCommand::Load(args) => load::run(args).await,
        }
    };
    // On SIGTERM or SIGINT the bench is dropped, and with it the processes it started
    // (each is killed when its handle drops), instead of leaving them running.
    tokio::select! {
        result = bench => result,
        _ = starling_runtime::shutdown::signal() => {
            anyhow::bail!("stopped by a signal; the processes it started are stopped")
        }
    }
}
