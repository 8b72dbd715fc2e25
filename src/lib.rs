//! The `starling` program: command line ([`cli`]), the service table ([`services`]), the
//! embedded all-in-one mode ([`up`]), one instance against etcd ([`serve`]), dead letters
//! ([`dlq`]), fault injection ([`chaos`]), the benchmarks ([`bench`]) and registering the
//! users those tools make up ([`users`]).

pub mod bench;
pub mod ca;
pub mod chaos;
pub mod cli;
pub mod dlq;
pub mod gateway;
pub mod serve;
pub mod services;
pub mod up;
pub mod users;

/// Runs a parsed command line to completion.
pub async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    starling_discovery::tls::install_default_provider();
    match cli.command {
        cli::Command::Serve(args) => serve::run(args).await,
        cli::Command::Up(args) => up::run(args).await,
        cli::Command::Gateway(args) => gateway::run(args).await,
        cli::Command::Health(args) => gateway::health(args).await,
        cli::Command::Bench(cmd) => bench::run(cmd).await,
        cli::Command::Dlq(cmd) => dlq::run(cmd).await,
        cli::Command::Chaos(args) => chaos::run(args).await,
        cli::Command::Ca(cmd) => ca::run(cmd),
    }
}
