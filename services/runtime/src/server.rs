//! Starting and stopping one service instance.
//!
//! Start: bind (port 0 picks a free port), build the tonic server with the service's
//! routes plus grpc.health.v1 and server reflection (v1 and v1alpha, so old and new grpcurl
//! both work), wrap every call in the shared layers, then register the real address.
//!
//! Stop, in the order that loses no call: mark health NOT_SERVING, deregister (clients'
//! watchers see the key vanish and stop picking this instance), wait `drain_delay` for
//! them to notice, then stop accepting and let in-flight calls finish.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use starling_discovery::{DeadlineLayer, Registration, Registry, ServiceInstance};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tracing::{info, warn};

use crate::events::{consumer, EventBus};
use crate::metrics::CallMetricsLayer;
use crate::{ServiceKind, ServiceParts};

/// Response header naming the instance that served a call: shows up in `grpcurl -v` and
/// lets tests see where the balancer sent each call.
pub const INSTANCE_HEADER: &str = "starling-instance";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub kind: ServiceKind,
    pub listen: SocketAddr,
    /// `host:port` to register; defaults to the bound address (with 127.0.0.1 in place of
    /// an unspecified IP). A port of 0 is replaced by the bound port.
    pub advertise: Option<String>,
    pub zone: String,
    pub weight: u32,
    pub drain_delay: Duration,
    /// After the listener closes, how long in-flight calls and open streams (a health
    /// Watch, say) may take before the server is stopped anyway.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    pub fn new(kind: ServiceKind, listen: SocketAddr) -> Self {
        Self {
            kind,
            listen,
            advertise: None,
            zone: String::new(),
            weight: 1,
            drain_delay: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A serving, registered instance.
#[derive(Debug)]
pub struct RunningService {
    pub kind: ServiceKind,
    pub instance: ServiceInstance,
    pub local_addr: SocketAddr,
    health: tonic_health::server::HealthReporter,
    registration: Registration,
    drain_delay: Duration,
    shutdown_grace: Duration,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    consumers_stop: tokio::sync::watch::Sender<bool>,
    consumers: Vec<JoinHandle<()>>,
}

fn advertised(config: &ServerConfig, local: SocketAddr) -> String {
    match &config.advertise {
        Some(a) => match a.rsplit_once(':') {
            Some((host, "0")) => format!("{host}:{}", local.port()),
            _ => a.clone(),
        },
        None => {
            let ip = if local.ip().is_unspecified() {
                warn!(listen = %local, "listening on an unspecified address without --advertise; registering 127.0.0.1");
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                local.ip()
            };
            SocketAddr::new(ip, local.port()).to_string()
        }
    }
}

/// Server reflection over every Starling service and grpc.health.v1, as both v1 (new
/// grpcurl and most tools) and v1alpha (grpcurl up to 1.8).
#[allow(clippy::type_complexity)]
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let configure = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(starling_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        configure().build_v1().context("building reflection v1")?,
        configure()
            .build_v1alpha()
            .context("building reflection v1alpha")?,
    ))
}

/// Starts `parts` as an instance of `config.kind`: its consumers on `bus`, its routes on
/// the listener; then registers it in `registry`.
pub async fn start(
    config: ServerConfig,
    parts: ServiceParts,
    registry: Arc<dyn Registry>,
    bus: Arc<dyn EventBus>,
) -> anyhow::Result<RunningService> {
    let ServiceParts {
        routes,
        consumers: specs,
    } = parts;
    let kind = config.kind;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let mut instance = ServiceInstance::new(kind.name(), advertised(&config, local_addr));
    instance.zone = config.zone.clone();
    instance.weight = config.weight.max(1);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(kind.grpc_name(), ServingStatus::Serving)
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;

    let instance_header: http::HeaderValue = instance
        .id
        .parse()
        .context("instance id is a valid header value")?;
    // Every inbound call passes these layers, outermost first.
    let layers = ServiceBuilder::new()
        .layer(CallMetricsLayer::new(kind.name()))
        .layer(tower::util::MapResponseLayer::new(
            move |mut resp: http::Response<tonic::body::Body>| {
                resp.headers_mut()
                    .insert(INSTANCE_HEADER, instance_header.clone());
                resp
            },
        ))
        .layer(DeadlineLayer)
        .into_inner();

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .layer(layers)
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // tonic's own tcp_nodelay applies only to listeners it binds; ours (bound first, to
        // learn the port) needs it set here, or small answers wait on delayed ACKs.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stopped.await;
            },
        );
    let server = tokio::spawn(server);

    let (consumers_stop, consumers_stopped) = tokio::sync::watch::channel(false);
    let consumers: Vec<JoinHandle<()>> = specs
        .into_iter()
        .map(|(config, handler)| {
            let (bus, stopped) = (bus.clone(), consumers_stopped.clone());
            tokio::spawn(async move {
                let (topic, group) = (config.topic.clone(), config.group.clone());
                if let Err(e) = consumer::run(bus, config, handler, stopped).await {
                    tracing::error!(%topic, %group, error = %e, "consumer failed");
                }
            })
        })
        .collect();
    let registration = match registry.register(kind.name(), instance.clone()).await {
        Ok(r) => r,
        Err(e) => {
            server.abort();
            consumers_stop.send_replace(true);
            return Err(anyhow::Error::new(e).context(format!("cannot register {kind}")));
        }
    };
    info!(service = %kind, instance = %instance.id, address = %instance.address, %local_addr, "serving");
    Ok(RunningService {
        kind,
        instance,
        local_addr,
        health,
        registration,
        drain_delay: config.drain_delay,
        shutdown_grace: config.shutdown_grace,
        stop,
        server,
        consumers_stop,
        consumers,
    })
}

impl RunningService {
    /// Graceful stop (see the module docs). Returns once in-flight calls have finished.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let kind = self.kind;
        self.health
            .set_service_status(kind.grpc_name(), ServingStatus::NotServing)
            .await;
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.registration.deregister().await;
        info!(service = %kind, instance = %self.instance.id, drain = ?self.drain_delay, "deregistered; draining");
        tokio::time::sleep(self.drain_delay).await;
        // Ends open health Watch streams, which would otherwise hold the shutdown open.
        self.health.clear_service_status(kind.grpc_name()).await;
        self.health.clear_service_status("").await;
        let _ = self.stop.send(());
        // Consumers finish the message in hand, commit, and leave their groups.
        self.consumers_stop.send_replace(true);
        for c in std::mem::take(&mut self.consumers) {
            if tokio::time::timeout(self.shutdown_grace, c).await.is_err() {
                warn!(service = %kind, "a consumer did not stop in time");
            }
        }
        match tokio::time::timeout(self.shutdown_grace, &mut self.server).await {
            Ok(joined) => joined.context("server task")??,
            Err(_) => {
                warn!(service = %kind, grace = ?self.shutdown_grace,
                    "in-flight calls did not finish in time; closing them");
                self.server.abort();
            }
        }
        info!(service = %kind, instance = %self.instance.id, "stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_the_bound_port() {
        let local: SocketAddr = "0.0.0.0:4567".parse().unwrap();
        let mut c = ServerConfig::new(ServiceKind::Tweet, "0.0.0.0:0".parse().unwrap());
        assert_eq!(advertised(&c, local), "127.0.0.1:4567");
        c.advertise = Some("tweet-1:0".into());
        assert_eq!(advertised(&c, local), "tweet-1:4567");
        c.advertise = Some("tweet-1:9000".into());
        assert_eq!(advertised(&c, local), "tweet-1:9000");
    }
}
