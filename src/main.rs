//! The `starling` command: see `starling --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = starling::cli::Cli::parse();
    starling_runtime::init_logging();
    match starling::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
