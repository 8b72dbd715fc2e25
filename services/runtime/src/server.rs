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
use std::time::Duration;

use anyhow::Context as _;
use starling_discovery::{DeadlineLayer, Registration, ServiceInstance};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tracing::{info, warn};

use crate::events::consumer;
use crate::health::{Component, Health};
use crate::metrics::CallMetricsLayer;
use crate::{ServiceContext, ServiceKind, ServiceParts};

/// The tonic server every gRPC listener of Starling starts from (each service's and the
/// gateway's): Nagle off, and HTTP/2 pings every 10 s that drop a peer silent for 5 s more,
/// so a vanished client does not hold a connection for ever.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}

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
    /// Mutual TLS on the listener, and authorization by the callers' identities
    /// (`None`: plaintext, with no identities, for an insecure mesh).
    pub tls: Option<ServerTls>,
}

/// The listener's side of mutual TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The instance's certificate, and the CA whose certificates callers must present.
    pub tls: starling_discovery::MeshTls,
    /// The trust domain of the callers' SPIFFE ids.
    pub namespace: String,
    /// Which caller may call which method.
    pub policy: crate::authz::Policy,
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
            tls: None,
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
    relay_stop: tokio::sync::watch::Sender<bool>,
    relay: Option<JoinHandle<()>>,
    monitor: JoinHandle<()>,
    /// Whether the instance can do its job (see [`crate::health`]).
    pub health_state: Health,
    on_stop: StopHooks,
}

/// [`ServiceParts::on_stop`]'s hooks, shown by count.
struct StopHooks(Vec<Box<dyn FnOnce() + Send + Sync>>);

impl std::fmt::Debug for StopHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stop hooks", self.0.len())
    }
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

/// Starts `parts` as an instance of `config.kind`: its consumers and outbox relay on the
/// context's bus, its routes on the listener, the health monitor; then registers it.
pub async fn start(
    config: ServerConfig,
    parts: ServiceParts,
    ctx: &ServiceContext,
) -> anyhow::Result<RunningService> {
    let ServiceParts {
        routes,
        consumers: specs,
        outbox,
        probes,
        on_stop,
    } = parts;
    let (registry, bus, store) = (ctx.registry.clone(), ctx.bus.clone(), ctx.store.clone());
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
    let authz = config
        .tls
        .as_ref()
        .map(|t| crate::authz::AuthzLayer::new(t.policy.clone(), &t.namespace));
    let layers = ServiceBuilder::new()
        .layer(starling_discovery::trace::TraceLayer::server(kind.name()))
        .layer(CallMetricsLayer::new(kind.name()))
        .option_layer(authz)
        .layer(tower::util::MapResponseLayer::new(
            move |mut resp: http::Response<tonic::body::Body>| {
                resp.headers_mut()
                    .insert(INSTANCE_HEADER, instance_header.clone());
                resp
            },
        ))
        .layer(tower::util::MapResponseLayer::new(
            crate::malformed::unreadable_request_status,
        ))
        .layer(DeadlineLayer)
        .into_inner();

    let (stop, stopped) = oneshot::channel::<()>();
    let router = grpc_server()
        .layer(layers)
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // tonic's own tcp_nodelay applies only to listeners it binds; ours (bound first, to
    // learn the port) needs it set here, or small answers wait on delayed ACKs.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let shutdown = async {
        let _ = stopped.await;
    };
    let server = match config.tls.clone() {
        // Each connection's handshake uses the certificate current when it is accepted.
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            starling_discovery::tls::incoming(incoming, tls.tls),
            shutdown,
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown)),
    };

    let health_state = Health::new();
    let store_health = health_state.add(Component::new("store"), Duration::ZERO);
    // With an outbox, writes go on while the broker is away; past this the instance says so.
    let bus_health = health_state.add(Component::new("bus"), BUS_GRACE);
    let probe_health: Vec<(Component, crate::ProbeCheck)> = probes
        .into_iter()
        .map(|p| {
            (
                health_state.add(Component::new(p.name), Duration::ZERO),
                p.check,
            )
        })
        .collect();

    let (consumers_stop, consumers_stopped) = tokio::sync::watch::channel(false);
    let reports_lag = !specs.is_empty();
    let mut consumers: Vec<JoinHandle<()>> = specs
        .into_iter()
        .map(|(config, handler)| {
            let component = health_state.add(Component::new("consumer"), Duration::ZERO);
            tokio::spawn(supervise(
                bus.clone(),
                config,
                handler,
                consumers_stopped.clone(),
                component,
            ))
        })
        .collect();
    if reports_lag {
        // For the mesh view (`events::lag`); stops with the consumers.
        consumers.push(tokio::spawn(crate::events::lag::report(
            store.clone(),
            kind.name().to_string(),
            instance.id.clone(),
            consumers_stopped.clone(),
        )));
    }
    let (relay_stop, relay_stopped) = tokio::sync::watch::channel(false);
    let relay = outbox.map(|outbox| {
        tokio::spawn(crate::outbox::relay(
            store.clone(),
            bus.clone(),
            outbox,
            instance.id.clone(),
            bus_health.clone(),
            relay_stopped,
        ))
    });
    let registration = match registry.register(kind.name(), instance.clone()).await {
        Ok(r) => r,
        Err(e) => {
            server.abort();
            consumers_stop.send_replace(true);
            relay_stop.send_replace(true);
            return Err(anyhow::Error::new(e).context(format!("cannot register {kind}")));
        }
    };
    let monitor = tokio::spawn(monitor(
        kind,
        store,
        store_health,
        probe_health,
        health_state.clone(),
        health.clone(),
        registration.serving_handle(),
    ));
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
        relay_stop,
        relay,
        monitor,
        health_state,
        on_stop: StopHooks(on_stop),
    })
}

/// How long the broker may refuse the outbox relay before the instance stops serving.
pub const BUS_GRACE: Duration = Duration::from_secs(30);

/// Runs a consumer, and runs it again (with back-off, counted in
/// `starling_consumer_restarts_total`) if it fails or panics, until shutdown.
async fn supervise(
    bus: std::sync::Arc<dyn crate::events::EventBus>,
    config: consumer::ConsumerConfig,
    handler: std::sync::Arc<dyn consumer::Handler>,
    stopped: tokio::sync::watch::Receiver<bool>,
    health: Component,
) {
    let (topic, group) = (config.topic.clone(), config.group.clone());
    let first = Duration::from_millis(200);
    let mut backoff = first;
    loop {
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(consumer::run(
            bus.clone(),
            config.clone(),
            handler.clone(),
            stopped.clone(),
            health.clone(),
        ));
        let (why, broker) = match run.await {
            Ok(Ok(())) if *stopped.borrow() => return,
            Ok(Ok(())) => ("returned".to_string(), false),
            Ok(Err(e)) => (
                e.to_string(),
                matches!(e, crate::events::BusError::BrokerLost),
            ),
            Err(e) => (format!("task died: {e}"), false),
        };
        // A broker outage is the bus's business
        // (it has a grace period); a consumer that died on its own is this instance's.
        if !broker {
            health.failing(&format!("consumer {topic}/{group}: {why}"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = first;
        }
        metrics::counter!("starling_consumer_restarts_total", "topic" => topic.clone(), "group" => group.clone())
            .increment(1);
        tracing::error!(%topic, %group, reason = %why, restart_in = ?backoff, "consumer failed; restarting");
        let mut stopped = stopped.clone();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Every second: checks the store and the service's probes, and publishes the verdict of
/// all components through grpc.health.v1 and the registry (balancers skip an instance
/// registered as not serving while another one serves).
async fn monitor(
    kind: ServiceKind,
    store: std::sync::Arc<dyn crate::store::Store>,
    store_health: Component,
    probes: Vec<(Component, crate::ProbeCheck)>,
    state: Health,
    reporter: tonic_health::server::HealthReporter,
    registered: starling_discovery::ServingHandle,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pinged = tokio::time::timeout(Duration::from_secs(1), store.ping()).await;
        store_health.set(match pinged {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 1 s".into()),
        });
        for (component, check) in &probes {
            component.set(check());
        }
        let verdict = state.verdict();
        metrics::gauge!("starling_serving", "service" => kind.name()).set(if verdict.is_ok() {
            1.0
        } else {
            0.0
        });
        registered.set_serving(verdict.is_ok());
        match (&verdict, serving) {
            (Err(why), true) => {
                warn!(service = %kind, reason = %why, "NOT_SERVING");
                reporter
                    .set_service_status(kind.grpc_name(), ServingStatus::NotServing)
                    .await;
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                serving = false;
            }
            (Ok(()), false) => {
                info!(service = %kind, "SERVING again");
                reporter
                    .set_service_status(kind.grpc_name(), ServingStatus::Serving)
                    .await;
                reporter
                    .set_service_status("", ServingStatus::Serving)
                    .await;
                serving = true;
            }
            _ => {}
        }
    }
}

impl RunningService {
    /// Graceful stop (see the module docs). Returns once in-flight calls have finished.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let kind = self.kind;
        self.monitor.abort();
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
        for f in std::mem::take(&mut self.on_stop.0) {
            f();
        }
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
        // Last: the relay publishes what the final calls put in the outbox, then gives its
        // lease up so another instance takes over at once.
        self.relay_stop.send_replace(true);
        if let Some(relay) = self.relay.take() {
            if tokio::time::timeout(self.shutdown_grace, relay)
                .await
                .is_err()
            {
                warn!(service = %kind, "the outbox relay did not stop in time");
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
