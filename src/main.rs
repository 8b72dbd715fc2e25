//! The `starling` command: see `starling --help`.

use clap::Parser;

/// Every call allocates (HTTP/2 frames, headers, futures) on many threads; glibc's malloc
/// then spends much of its time on contended arena locks (seen as futex wait in `perf` of
/// `starling bench balancer`). mimalloc's per-thread heaps avoid that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = starling::cli::Cli::parse();
    let _telemetry = starling_runtime::telemetry::init(cli.telemetry());
    match starling::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
