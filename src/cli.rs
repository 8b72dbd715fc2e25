//! Command-line interface. Every flag has an environment-variable equivalent (`STARLING_*`),
//! so the same settings work in a shell, a systemd unit or docker-compose.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use starling_discovery::{EtcdConfig, MeshConfig, Policy};
use starling_runtime::ServiceKind;

#[derive(Debug, Parser)]
#[command(
    name = "starling",
    version,
    about = "Starling: a gRPC service mesh (etcd discovery, client-side balancing) with a Twitter-like reference app",
    long_about = "Starling: a gRPC service mesh (etcd discovery, client-side balancing) with a Twitter-like reference app.\n\n\
        Quick start: `starling up` runs every service in this process with nothing installed.\n\
        Production: run `starling serve <service> --etcd http://HOST:2379` per instance."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one instance of a service, registered in etcd under a leased key.
    Serve(ServeArgs),
    /// Run every service (optionally several replicas each) in this process, on the embedded
    /// in-memory registry unless --etcd is given.
    Up(UpArgs),
    /// Run the HTTP gateway (JSON API, web UI, gRPC-Web) and the gRPC pass-through.
    Gateway(GatewayArgs),
    /// Check an instance's grpc.health.v1 status: exit 0 when SERVING (for container health
    /// checks and scripts).
    Health(HealthArgs),
    /// Benchmarks (loopback only).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Inspect and re-drive dead letters (events a consumer group could not handle).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Fault injection: etcd, Redis, the broker and two replicas of every service as
    /// processes on loopback, a steady workload, faults one after another; then every
    /// acknowledged operation is checked. Needs etcd, redis-server and the Tansu broker.
    Chaos(ChaosArgs),
    /// A certificate authority for service identities: X.509 certificates whose URI SAN is
    /// spiffe://<namespace>/<name> (tweet, follower, ..., gateway, admin).
    #[command(subcommand)]
    Ca(CaCommand),
}

impl Cli {
    /// Whose spans this process makes: a `serve` process is its service, `gateway` the
    /// gateway, `up` all of them (and keeps the last traces for its web UI).
    pub fn telemetry(&self) -> starling_runtime::telemetry::TelemetryConfig {
        use starling_runtime::telemetry::TelemetryConfig;
        match &self.command {
            Command::Serve(args) => TelemetryConfig::single(args.service.name()),
            Command::Gateway(_) => TelemetryConfig::single("gateway"),
            Command::Up(args) => TelemetryConfig {
                service: "gateway".into(),
                services: ServiceKind::ALL
                    .iter()
                    .map(|k| k.name().to_string())
                    .chain(["gateway".to_string()])
                    .collect(),
                keep_recent: !args.no_trace_view,
                switchable: false,
            },
            // Measures tracing's cost: spans on and off, sampled and not, in one run.
            Command::Bench(BenchCommand::Balancer(_)) => TelemetryConfig {
                switchable: true,
                ..TelemetryConfig::single("bench")
            },
            _ => TelemetryConfig::single("starling"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA: DIR/ca.crt and DIR/ca.key (refuses to overwrite them).
    Init(CaInitArgs),
    /// Issue DIR/NAME.crt and DIR/NAME.key, signed by the CA in DIR.
    Issue(CaIssueArgs),
    /// Everything a mesh needs at once: the CA (unless DIR has one) and a certificate for
    /// each of the five services, gateway and admin (unless DIR has it). Safe to rerun.
    Mesh(CaMeshArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CaMeshArgs {
    /// Where the files go (created if missing).
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// The trust domain in the SPIFFE ids (spiffe://<namespace>/<name>).
    #[arg(long, env = "STARLING_NAMESPACE", default_value = "starling")]
    pub namespace: String,
    /// How long new certificates are valid, in days (a new CA: ten times as long).
    #[arg(long, default_value_t = 90)]
    pub days: u32,
}

#[derive(Debug, Clone, Args)]
pub struct CaInitArgs {
    /// Where the CA's certificate and key go (created if missing).
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// How long the CA is valid, in days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

#[derive(Debug, Clone, Args)]
pub struct CaIssueArgs {
    /// The identity: a service name (tweet, follower, timeline, tagger, recommendation),
    /// gateway, or admin for operators; a-z, 0-9, _ and -.
    pub name: String,
    /// The directory holding ca.crt and ca.key; NAME.crt and NAME.key are written there.
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// The trust domain in the SPIFFE id (spiffe://<namespace>/<name>).
    #[arg(long, env = "STARLING_NAMESPACE", default_value = "starling")]
    pub namespace: String,
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// More DNS names the certificate is valid for (repeatable); NAME, localhost,
    /// 127.0.0.1 and ::1 are always included.
    #[arg(long)]
    pub dns: Vec<String>,
    /// Replace NAME's certificate and key if they exist (rotation): the new files are
    /// renamed into place, and running processes start using them within seconds, on new
    /// connections, without a restart.
    #[arg(long)]
    pub renew: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Keep injecting (the fault list over again) for this many minutes; 0 = one pass.
    #[arg(long, default_value_t = 0.0)]
    pub minutes: f64,
    /// Faults to inject, in order (default: all): kill:<service>, freeze, rolling, redis,
    /// broker, etcd, etcd-wipe.
    #[arg(long, value_delimiter = ',', value_parser = crate::chaos::Fault::parse)]
    pub faults: Vec<crate::chaos::Fault>,
    /// Users the workload drives.
    #[arg(long, default_value_t = 30)]
    pub users: usize,
    /// Operations per second, all users together.
    #[arg(long, default_value_t = 25.0)]
    pub rate: f64,
    /// Followers of the big account (each of its posts is a fan-out this large).
    #[arg(long, default_value_t = 2_000)]
    pub fans: usize,
    /// Seconds a frozen (SIGSTOP) replica stays frozen.
    #[arg(long, default_value_t = 20)]
    pub stop_secs: u64,
    /// Seconds etcd stays down in the etcd-restart fault.
    #[arg(long, default_value_t = 30)]
    pub etcd_down_secs: u64,
    /// Seconds of plain load between faults.
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
    /// After the load stops, how long the checks may wait for the system to catch up.
    #[arg(long, default_value_t = 60)]
    pub converge_secs: u64,
    /// Seed of the workload and of the fault choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the data and logs directory.
    #[arg(long)]
    pub keep: bool,
}

impl ChaosArgs {
    pub fn settle(&self) -> Duration {
        Duration::from_secs_f64(self.settle_secs.max(0.0))
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print the dead letters (one JSON object per line: topic, key, attempts, error, ...)
    /// without consuming them.
    List(DlqArgs),
    /// Publish the dead letters of one group again on their original topic, and consume
    /// them from the dead-letter topic.
    Replay(DlqArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STARLING_KAFKA", required = true)]
    pub kafka: String,
    /// Topics and groups live under this namespace (see `starling serve --help`).
    #[arg(long, env = "STARLING_NAMESPACE", default_value = "starling")]
    pub namespace: String,
    /// The event topic, e.g. tweet-created.v1 (default: every topic of the catalogue).
    #[arg(long)]
    pub topic: Option<String>,
    /// The consumer group whose dead letters to read, e.g. timeline (default: every group).
    #[arg(long)]
    pub group: Option<String>,
    /// Stop once no dead letter has arrived for this many seconds (the first one may take a
    /// few seconds while the reader joins its group).
    #[arg(long, default_value_t = 10)]
    pub wait_secs: u64,
}

/// Where the gateway listens and how it signs tokens.
#[derive(Debug, Clone, Args)]
pub struct GatewayListenArgs {
    /// HTTP address: JSON API, web UI, gRPC-Web, /healthz, /readyz (metrics: --metrics).
    #[arg(long, env = "STARLING_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// gRPC address: every Starling service passed through, plus health and reflection.
    #[arg(long, env = "STARLING_GRPC", default_value = "127.0.0.1:8081")]
    pub grpc: SocketAddr,
    /// Secret that signs sign-in tokens; give every gateway replica the same one. When
    /// absent a random one is made, so tokens do not survive a restart.
    #[arg(long, env = "STARLING_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// How long a sign-in token is valid, in seconds.
    #[arg(long, env = "STARLING_TOKEN_TTL_SECS", default_value_t = 86_400)]
    pub token_ttl_secs: u64,
    /// HTTP connections served at once; further clients wait in the listen backlog.
    #[arg(long, env = "STARLING_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    /// HTTP connections one client address may hold; more are closed at once.
    #[arg(
        long,
        env = "STARLING_HTTP_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 256
    )]
    pub http_max_connections_per_client: usize,
    /// Seconds a request's header may take to arrive once the connection is ready for it
    /// (opened, or the previous answer sent): also how long an idle HTTP/1.1 keep-alive
    /// connection stays open.
    #[arg(long, env = "STARLING_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Seconds a connection may go without a request (or, with requests in flight,
    /// without writing a byte of their answers) before it is closed (an open live
    /// timeline writes a keep-alive every 15 s).
    #[arg(long, env = "STARLING_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub http_idle_timeout_secs: u64,
    /// Seconds a request body may take to arrive in full (else 408).
    #[arg(long, env = "STARLING_HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,
}

impl GatewayListenArgs {
    pub fn config(&self) -> starling_gateway::GatewayConfig {
        starling_gateway::GatewayConfig {
            http: self.http,
            grpc: self.grpc,
            token_secret: self.token_secret.clone(),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            limits: starling_gateway::Limits {
                max_connections: self.http_max_connections.max(1),
                max_connections_per_client: self.http_max_connections_per_client.max(1),
                header_read_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
                idle_timeout: Duration::from_secs(self.http_idle_timeout_secs.max(1)),
                body_timeout: Duration::from_secs(self.http_body_timeout_secs.max(1)),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub listen: GatewayListenArgs,
    /// etcd client URLs, comma-separated: every member of the cluster (each is probed, and
    /// one that is down, cut off or without a leader is left out until it is back).
    #[arg(long, env = "STARLING_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Serve Prometheus metrics on this address (GET /metrics); the public HTTP port does
    /// not serve them (they name internal addresses).
    #[arg(long, env = "STARLING_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Allow in-memory accounts when --redis is missing: sign-ups then live in this process
    /// only, unseen by other gateways and lost when it exits. For experiments only.
    #[arg(long, env = "STARLING_EMBEDDED")]
    pub embedded: bool,
    /// Mutual TLS to the services as identity `gateway` (DIR/gateway.crt); the gateway's own
    /// ports stay plaintext: put TLS for browsers in front of them.
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub backends: BackendArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// host:port of a Starling instance or gateway gRPC port.
    pub address: String,
    /// The service to ask about (default: the whole server).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub timeout_ms: u64,
    /// Mutual TLS: DIR/ca.crt and the certificate of --identity. The server must present
    /// a certificate valid for ADDRESS's host. (No environment variable: the gateway's own
    /// ports are plaintext, so a probe of them must not pick up STARLING_TLS_DIR.)
    #[arg(long)]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Whose certificate to present with --tls-dir (health is open to every identity).
    #[arg(long, default_value = "admin")]
    pub identity: String,
}

/// How a process proves who it is to the mesh, and checks who calls it.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Mutual TLS (TLS 1.3): DIR/ca.crt is the CA every peer's certificate must come from,
    /// DIR/<name>.crt + .key this process's identity (made by `starling ca`). Changed files
    /// are picked up within seconds by new connections, without a restart. serve and
    /// gateway need it unless --insecure; up makes a CA in memory when it is absent.
    #[arg(long, env = "STARLING_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Plaintext instead: no identities and no authorization, so anyone who can reach a
    /// port can call every method on it. For local experiments; a warning is logged.
    #[arg(long, env = "STARLING_INSECURE", conflicts_with = "tls_dir")]
    pub insecure: bool,
}

impl TlsArgs {
    /// The identity `name` from --tls-dir, `None` with --insecure, an error naming both
    /// flags when neither is given.
    pub fn load(&self, name: &str) -> anyhow::Result<Option<starling_discovery::MeshTls>> {
        match (&self.tls_dir, self.insecure) {
            (Some(dir), _) => {
                let tls = starling_discovery::MeshTls::from_dir(dir, name)?;
                tracing::info!(dir = %dir.display(), "mutual TLS as {name}; certificate files are watched for rotation");
                Ok(Some(tls))
            }
            (None, true) => {
                tracing::warn!("--insecure: plaintext mesh calls, no identities, no authorization: anyone who can reach a port can call any method");
                Ok(None)
            }
            (None, false) => anyhow::bail!(
                "no --tls-dir (STARLING_TLS_DIR): the mesh runs on mutual TLS. Make the files with \
                 `starling ca init --dir DIR` and `starling ca issue {name} --dir DIR`, then pass --tls-dir DIR; \
                 or pass --insecure for plaintext with no identities"
            ),
        }
    }
}

/// How this process discovers and calls other services.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    #[command(flatten)]
    pub etcd_security: EtcdSecurityArgs,
    /// Isolates deployments sharing backends: etcd keys live under /<namespace>/, Redis keys
    /// start with <namespace>:, Kafka topics and groups with <namespace>.
    #[arg(long, env = "STARLING_NAMESPACE", default_value = "starling")]
    pub namespace: String,
    /// This process's zone: registered with its instances, and its calls prefer instances
    /// of the same zone, spilling over to the others when the zone has no usable instance
    /// or all of them have --zone-spill-in-flight calls outstanding. Empty: no preference.
    #[arg(long, env = "STARLING_ZONE", default_value = "")]
    pub zone: String,
    /// Calls in flight on every instance of the caller's zone at which calls go to other
    /// zones too.
    #[arg(long, env = "STARLING_ZONE_SPILL_IN_FLIGHT", default_value_t = starling_discovery::DEFAULT_ZONE_SPILL_IN_FLIGHT as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub zone_spill_in_flight: u64,
    /// Seconds a registration outlives a crashed instance.
    #[arg(long, env = "STARLING_LEASE_TTL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl: u64,
    /// Seconds a Snowflake worker-id claim outlives its last renewal: ids keep being issued
    /// through an etcd outage this long, and a crashed instance's worker id is free after it.
    #[arg(long, env = "STARLING_CLAIM_TTL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub claim_ttl: u64,
    /// Balancing policy per target service, e.g. `timeline=consistent_hash:x-user-id,tweet=p2c_ewma`.
    /// Policies: round_robin, p2c_ewma, consistent_hash[:<header>]. Unlisted targets use round_robin.
    #[arg(long = "policy", env = "STARLING_POLICY", value_delimiter = ',', value_parser = parse_target_policy)]
    pub policies: Vec<(String, Policy)>,
    /// Deadline for outgoing calls when the caller sets none, in milliseconds.
    #[arg(long, env = "STARLING_CALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub call_timeout_ms: u64,
    /// How long a call waits for a target with no endpoint before failing UNAVAILABLE, in ms.
    #[arg(long, env = "STARLING_NO_ENDPOINT_TIMEOUT_MS", default_value_t = 2_000)]
    pub no_endpoint_timeout_ms: u64,
    /// How long one attempt of an outgoing call waits for its answer before the endpoint is
    /// taken for stalled, ejected, and an idempotent call retried elsewhere, in ms (0: off).
    #[arg(long, env = "STARLING_ATTEMPT_TIMEOUT_MS", default_value_t = 1_000)]
    pub attempt_timeout_ms: u64,
}

fn parse_target_policy(s: &str) -> Result<(String, Policy), String> {
    let (service, policy) = s
        .split_once('=')
        .ok_or_else(|| format!("expected <service>=<policy>, got {s:?}"))?;
    let kind: ServiceKind = service.parse()?;
    Ok((kind.name().to_string(), policy.parse()?))
}

impl MeshArgs {
    pub fn mesh_config(&self) -> MeshConfig {
        // The app's own settings (starling-app), then the operator's.
        let mut config = starling_app::mesh_config();
        config.call_timeout = Duration::from_millis(self.call_timeout_ms);
        config.no_endpoint_timeout = Duration::from_millis(self.no_endpoint_timeout_ms);
        config.attempt_timeout =
            (self.attempt_timeout_ms > 0).then(|| Duration::from_millis(self.attempt_timeout_ms));
        for (service, policy) in &self.policies {
            config = config.with_policy(service, policy.clone());
        }
        config.zone = (!self.zone.is_empty()).then(|| self.zone.clone());
        config.zone_spill_in_flight = self.zone_spill_in_flight as usize;
        config
    }

    pub fn etcd_config(&self, endpoints: Vec<String>) -> anyhow::Result<EtcdConfig> {
        let mut config = EtcdConfig::new(endpoints);
        config.namespace = self.namespace.clone();
        config.lease_ttl = Duration::from_secs(self.lease_ttl);
        config.relist_grace = Duration::from_secs(self.lease_ttl * 2);
        config.claim_ttl = Duration::from_secs(self.claim_ttl);
        config.tls = self.etcd_security.tls()?;
        config.user = self.etcd_security.user()?;
        Ok(config)
    }
}

/// `KEY=VALUE`; the error never quotes the input (it may be part of a password).
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        Some(_) => Err("expected KEY=VALUE: the key is empty".into()),
        None => Err("expected KEY=VALUE: there is no '='".into()),
    }
}

/// How to reach an etcd that takes TLS or has auth enabled.
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdSecurityArgs {
    /// TLS to etcd: the CA certificate (PEM) that signed etcd's. Endpoints without a scheme
    /// then use https://.
    #[arg(long, env = "STARLING_ETCD_CA")]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-key.
    #[arg(long, env = "STARLING_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "STARLING_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// etcd user, when etcd's auth is enabled; the password comes from
    /// STARLING_ETCD_PASSWORD (an environment variable, so it stays out of process lists).
    #[arg(long, env = "STARLING_ETCD_USER")]
    pub etcd_user: Option<String>,
}

impl EtcdSecurityArgs {
    fn tls(&self) -> anyhow::Result<Option<starling_discovery::EtcdTls>> {
        let read = |p: &std::path::PathBuf| {
            anyhow::Context::with_context(std::fs::read(p), || {
                format!("cannot read {}", p.display())
            })
        };
        let Some(ca) = &self.etcd_ca else {
            anyhow::ensure!(
                self.etcd_cert.is_none(),
                "--etcd-cert needs --etcd-ca (the CA that signed etcd's certificate)"
            );
            return Ok(None);
        };
        let mut tls = starling_discovery::EtcdTls::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        Ok(Some(tls))
    }

    fn user(&self) -> anyhow::Result<Option<starling_discovery::EtcdUser>> {
        let Some(name) = &self.etcd_user else {
            return Ok(None);
        };
        let password = std::env::var("STARLING_ETCD_PASSWORD").map_err(|_| {
            anyhow::anyhow!("--etcd-user {name} needs its password in STARLING_ETCD_PASSWORD")
        })?;
        Ok(Some(starling_discovery::EtcdUser {
            name: name.clone(),
            password,
        }))
    }
}

/// Storage and events: real backends when given, embedded in-memory ones otherwise.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Redis URL (e.g. redis://127.0.0.1:6379) for storage; embedded store when absent.
    #[arg(long, env = "STARLING_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// `--redis` names nodes of a Redis Cluster (comma-separated URLs, any of its nodes):
    /// commands go to the master of their key's slot, follow slots that move, and retry
    /// through a failover.
    #[arg(long, env = "STARLING_REDIS_CLUSTER", requires = "redis")]
    pub redis_cluster: bool,
    /// Replicas that must hold a write before it is acknowledged (Redis WAIT, up to 400 ms;
    /// else the call fails UNAVAILABLE). Redis replicates asynchronously: with 0, a master
    /// that dies just after a write can lose it when its replica takes over. With N, a
    /// master with fewer than N live replicas refuses writes (after a failover, until the
    /// old master is back as a replica).
    #[arg(
        long,
        env = "STARLING_REDIS_REPLICA_ACKS",
        default_value_t = 0,
        requires = "redis"
    )]
    pub redis_replica_acks: usize,
    /// Most Redis connections one process opens for commands (at least 2). Every command
    /// shares one multiplexed connection; the others replace a connection that died. (The
    /// outbox relays' blocking reads have connections of their own, one per stream.)
    #[arg(long, env = "STARLING_REDIS_POOL", default_value_t = 16)]
    pub redis_pool: usize,
    /// CA certificate (PEM) that signed Redis's, for a rediss:// (TLS) URL; the system's
    /// roots otherwise. A password goes in the URL: rediss://:PASSWORD@host:port.
    #[arg(long, env = "STARLING_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// Kafka bootstrap servers (e.g. 127.0.0.1:9092) for events; embedded bus when absent.
    #[arg(long, env = "STARLING_KAFKA")]
    pub kafka: Option<String>,
    /// A librdkafka setting for every Kafka client, KEY=VALUE (repeatable), e.g.
    /// security.protocol=SASL_SSL, ssl.ca.location=/pki/kafka-ca.crt, sasl.mechanism=PLAIN,
    /// sasl.username=..., sasl.password=... (in STARLING_KAFKA_OPTIONS, separated by ';').
    /// The settings Starling's guarantees rest on (acks, enable.idempotence, group.id, ...)
    /// are refused.
    #[arg(long = "kafka-option", env = "STARLING_KAFKA_OPTIONS", value_delimiter = ';', hide_env_values = true, value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
    /// Partitions of each topic Starling creates: how many members of a consumer group read
    /// in parallel. Topics that exist keep theirs.
    #[arg(long, env = "STARLING_KAFKA_PARTITIONS", default_value_t = starling_runtime::events::topics::PARTITIONS, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub kafka_partitions: i32,
    /// Copies of each partition of the topics Starling creates (at most the brokers there are).
    #[arg(long, env = "STARLING_KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub kafka_replication_factor: i32,
    /// min.insync.replicas of the topics Starling creates: an event leaves the outbox only
    /// once this many copies of its partition have it. Default: the broker's.
    #[arg(long, env = "STARLING_KAFKA_MIN_INSYNC_REPLICAS", value_parser = clap::value_parser!(i32).range(1..=100))]
    pub kafka_min_insync_replicas: Option<i32>,
    /// Authors with more followers than this are merged into timelines at read time
    /// instead of being fanned out.
    #[arg(long, env = "STARLING_CELEBRITY_THRESHOLD", default_value_t = 100_000)]
    pub celebrity_threshold: u64,
    /// Followers per fan-out page (one checkpoint per page).
    #[arg(long, env = "STARLING_FANOUT_PAGE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub fanout_page: u32,
}

impl BackendArgs {
    /// The layout of the topics Starling creates, checked.
    pub fn topic_layout(&self) -> anyhow::Result<starling_runtime::events::topics::TopicLayout> {
        let layout = starling_runtime::events::topics::TopicLayout {
            partitions: self.kafka_partitions,
            replication_factor: self.kafka_replication_factor,
            min_insync_replicas: self.kafka_min_insync_replicas,
        };
        layout
            .check()
            .map_err(|e| anyhow::anyhow!("invalid topic layout (--kafka-partitions, --kafka-replication-factor, --kafka-min-insync-replicas): {e}"))?;
        Ok(layout)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// tweet, follower, timeline, tagger or recommendation.
    pub service: ServiceKind,
    /// Address to listen on; port 0 picks a free port (the real one is registered).
    #[arg(long, env = "STARLING_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// host:port other instances should dial, if not the listen address (port 0 = the bound port).
    #[arg(long, env = "STARLING_ADVERTISE")]
    pub advertise: Option<String>,
    /// etcd client URLs, comma-separated: every member of the cluster (each is probed, and
    /// one that is down, cut off or without a leader is left out until it is back).
    #[arg(long, env = "STARLING_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "STARLING_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Relative share of traffic for this instance.
    #[arg(long, env = "STARLING_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    /// On shutdown, time between deregistering and closing the listener, in ms.
    #[arg(long, env = "STARLING_DRAIN_MS", default_value_t = 1_000)]
    pub drain_ms: u64,
    /// Allow in-memory storage and events when --redis or --kafka is missing. Each process
    /// then has its own private data, lost when it exits: for experiments only.
    #[arg(long, env = "STARLING_EMBEDDED")]
    pub embedded: bool,
    /// Mutual TLS as the service's own identity (DIR/<service>.crt): the listener takes
    /// only callers with a certificate from DIR/ca.crt and authorizes them by identity.
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub backends: BackendArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Keep no traces for /traces (spans are then made only for an OTLP collector named by
    /// OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, env = "STARLING_NO_TRACE_VIEW")]
    pub no_trace_view: bool,
    /// Instances of each service.
    #[arg(long, env = "STARLING_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replicas: u16,
    /// Interface the services listen on (each on a free port).
    #[arg(long, env = "STARLING_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Use this etcd (comma-separated URLs) instead of the embedded registry.
    #[arg(long, env = "STARLING_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "STARLING_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Internal calls run over mutual TLS: with certificates from --tls-dir (each service
    /// as DIR/<service>.crt, the gateway as DIR/gateway.crt), or by default from a CA made
    /// in memory at start. --insecure: plaintext.
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub gateway: GatewayListenArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub backends: BackendArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Unary calls at fixed concurrency through a direct tonic Channel, tonic's
    /// balance_channel and the mesh channel with each policy; then with one slow backend;
    /// and the mesh with tracing off, on but not sampled, and sampled.
    Balancer(BalancerBenchArgs),
    /// The seed article's naive fan-out loop against the real fan-out, on one Redis.
    Fanout(FanoutBenchArgs),
    /// Tweets posted at a steady rate through the whole system; delay until every
    /// follower's timeline shows them.
    E2e(E2eBenchArgs),
    /// CreateTweet's write path with the outbox against the store-then-publish path it
    /// replaced, on one Redis and one broker.
    Post(PostBenchArgs),
    /// The whole system at constant arrival rates (open loop, DeathStarBench's mix over a
    /// power-law social graph), swept until p99 breaks; the last line is the highest rate
    /// with p99 under the limit. CSV and an SVG chart go to --out.
    Load(LoadBenchArgs),
}

/// Where `bench load` sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadDoor {
    /// The services over the mesh (gRPC, mutual TLS, as admin).
    Grpc,
    /// The gateway's JSON API, as users signed up through it (each with its own token and
    /// the gateway's per-user write budget of 1 a second).
    Http,
}

#[derive(Debug, Clone, Args)]
pub struct LoadBenchArgs {
    /// Where requests go in.
    #[arg(long, value_enum, default_value = "grpc")]
    pub door: LoadDoor,
    /// Run against `starling up` on its embedded backends instead of real etcd, Redis and
    /// the broker (which the bench starts on free loopback ports; scripts/install-deps.sh
    /// installs them).
    #[arg(long)]
    pub embedded: bool,
    /// Accounts in the synthetic social graph.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Accounts each user follows on average (followees drawn by a power law, so a few
    /// accounts are followed by a large share of everyone).
    #[arg(long, default_value_t = 10)]
    pub follows: usize,
    /// Users that sign up through the gateway and make the http door's requests (16 per
    /// loopback source address, under the gateway's sign-up limit per address).
    #[arg(long, default_value_t = 500)]
    pub web_users: usize,
    /// Arrival rates to sweep, in requests/s, lowest first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,1500,2000,3000,4000,6000,8000,12000,16000"
    )]
    pub rates: Vec<f64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// The p99 (ms, all operations together) a rate must stay under to count.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    /// Stop the sweep after this many rates in a row missed the p99.
    #[arg(long, default_value_t = 2)]
    pub stop_after: usize,
    /// Directory for the CSV files and the chart.
    #[arg(long, default_value = "target/bench")]
    pub out: std::path::PathBuf,
    /// Seed of the graph and of the request mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Clone, Args)]
pub struct PostBenchArgs {
    /// Redis to write to (keys under a fresh namespace, removed at the end).
    #[arg(long, env = "STARLING_REDIS", hide_env_values = true)]
    pub redis: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "STARLING_KAFKA")]
    pub kafka: String,
    /// Calls per path.
    #[arg(long, default_value_t = 3_000)]
    pub calls: usize,
    /// Rounds the calls are split into, the two paths alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutBenchArgs {
    /// Redis to use; by default a throw-away redis-server is started on a free port.
    #[arg(long)]
    pub redis: Option<String>,
    /// Follower counts to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    pub sizes: Vec<usize>,
    /// Skip the naive loop above this many followers (it runs ~25 s at a million).
    #[arg(long, default_value_t = 1_000_000)]
    pub naive_max: usize,
}

#[derive(Debug, Clone, Args)]
pub struct E2eBenchArgs {
    #[command(flatten)]
    pub backends: BackendArgs,
    /// Tweets per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of posting.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Followers of each author.
    #[arg(long, default_value_t = 200)]
    pub followers: usize,
    /// Authors the tweets are spread over, round robin, each with followers of their own.
    #[arg(long, default_value_t = 1)]
    pub authors: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BalancerBenchArgs {
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds per measured configuration.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Extra latency of the slow backend in the second scenario, in ms.
    #[arg(long, default_value_t = 20)]
    pub slow_ms: u64,
    /// Rounds of each scenario (configurations are interleaved per round so that machine
    /// noise hits them alike); the median of the rounds is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// The scenarios to run (comma-separated): uniform, tracing, slow, limit, busy.
    #[arg(long, value_delimiter = ',', default_value = "uniform,tracing,slow,limit,busy",
        value_parser = ["uniform", "tracing", "slow", "limit", "busy"])]
    pub scenarios: Vec<String>,
}

impl BalancerBenchArgs {
    /// Rounds of `scenario`: none when it was not asked for.
    pub fn rounds_of(&self, scenario: &str) -> usize {
        if self.scenarios.iter().any(|s| s == scenario) {
            self.rounds.max(1)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn target_policies_parse() {
        assert_eq!(
            parse_target_policy("timeline=consistent_hash:x-user-id").unwrap(),
            (
                "timeline".to_string(),
                Policy::ConsistentHash {
                    header: "x-user-id".into()
                }
            )
        );
        assert!(parse_target_policy("nope=round_robin")
            .unwrap_err()
            .contains("unknown service"));
        assert!(parse_target_policy("tweet")
            .unwrap_err()
            .contains("<service>=<policy>"));
        assert!(parse_target_policy("tweet=fastest")
            .unwrap_err()
            .contains("unknown policy"));
    }
}
