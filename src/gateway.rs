//! `starling gateway` (the gateway on its own, finding the services in etcd) and
//! `starling health` (a grpc.health.v1 probe for scripts and container health checks).

use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::cli::{GatewayArgs, HealthArgs};

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    // Accounts live in the store: on the embedded one each gateway would keep its own,
    // and lose them on exit, without a word.
    if args.backends.redis.is_none() && !args.embedded {
        anyhow::bail!(
            "starling gateway needs --redis (STARLING_REDIS): accounts are kept there and shared by every gateway. \
             Pass --embedded to keep them in this process's memory instead (lost on exit), or use `starling up` for a one-process system."
        );
    }
    if let Some(addr) = args.metrics {
        starling_runtime::metrics::serve(addr).await?;
    }
    let tls = args.tls.load("gateway")?;
    let ctx =
        crate::services::context_with_tls(&args.backends, &args.mesh, &args.etcd, tls).await?;
    let gateway = starling_gateway::start(args.listen.config(), &ctx).await?;
    println!("starling: gateway http://{}", gateway.http_addr);
    println!("starling: gateway-grpc {}", gateway.grpc_addr);
    starling_runtime::shutdown::signal().await;
    gateway.stop().await
}

pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let check = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.address))
            .with_context(|| format!("bad address {:?}", args.address))?;
        let channel = match &args.tls_dir {
            Some(dir) => {
                let tls = starling_discovery::MeshTls::from_dir(dir, &args.identity)?;
                // The server proves it is the host we dialled (a service's certificate names
                // the service, localhost and the loopback addresses).
                let host = endpoint.uri().host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                endpoint.connect_with_connector(tls.connector(host)?).await
            }
            None => endpoint.connect().await,
        }
        .with_context(|| format!("cannot connect to {}", args.address))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .context("health check failed")?
            .into_inner()
            .status();
        anyhow::ensure!(
            status == ServingStatus::Serving,
            "{} is {status:?}",
            args.address
        );
        println!("{} SERVING", args.address);
        Ok(())
    };
    tokio::time::timeout(Duration::from_millis(args.timeout_ms), check)
        .await
        .with_context(|| format!("no answer from {} in {} ms", args.address, args.timeout_ms))?
}
