//! The production registry on etcd v3: the client and configuration, claims (Snowflake
//! worker ids) here; which members of a cluster are talked to in `members.rs` (a `Pool`
//! of one client per member and a prober); keeping a registration alive in `register.rs`
//! (a `Keeper` that renews until the lease is lost); following a service in `follow.rs`
//! (a `View` that a relist and watch events update).
//!
//! Registration: grant a lease, put the instance key under it, renew it every TTL/3. A lost
//! lease (etcd down longer than the TTL, or restarted with its data wiped) shows up as a
//! keep-alive answer with TTL 0 or as errors; the keeper then grants a new lease and puts
//! the key again, so an instance never stays invisible after etcd comes back. (Several
//! registries in the wild never re-register; that is the bug this avoids.)
//!
//! Watching: list the prefix, then watch from the listed revision + 1, so no event between
//! the two is missed. A broken stream resumes from the revision after the last event seen;
//! a compacted revision, a cancelled watch or etcd's history going backwards (restored or
//! wiped) lead to a fresh list and diff, after a jittered back-off. While etcd is unreachable the last
//! known set keeps being served. After a relist, instances that vanished are kept for a
//! grace period rather than dropped at once: when etcd comes back empty, the live instances
//! re-register within a few seconds, and dropping them in between would turn an etcd outage
//! into a data-path outage. Watch DELETE events (a real deregistration or an expired lease)
//! still apply immediately.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

mod follow;
mod members;
mod register;

use follow::watch_service;
use members::Pool;
use register::keep_registered;

use crate::instance::{EndpointSet, Keys, ServiceInstance};
use crate::registry::{
    check_service_name, Claim, DiscoveryError, EndpointWatch, Registration, Registry,
};

#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix root, so several meshes can share one etcd.
    pub namespace: String,
    /// How long a registration outlives its process when it dies without deregistering.
    pub lease_ttl: Duration,
    /// Per-request timeout towards etcd.
    pub request_timeout: Duration,
    /// How long instances missing from a relist are kept (see the module docs).
    pub relist_grace: Duration,
    /// Lease TTL of claims (Snowflake worker ids). Longer than `lease_ttl`: a claim stays
    /// usable through an etcd outage this long (see [`Registry::claim`]), and a crashed
    /// holder's number is free again after it.
    pub claim_ttl: Duration,
    /// TLS towards etcd (`https://` endpoints): the CA that signed etcd's certificate and,
    /// for etcd's `--client-cert-auth`, this process's certificate.
    pub tls: Option<etcd_client::TlsOptions>,
    /// etcd user and password (etcd's auth enabled).
    pub user: Option<EtcdUser>,
    /// With several endpoints: how often each member is asked whether it is healthy (see
    /// `members.rs`), at most a quarter of `lease_ttl`; an unhealthy member leaves the
    /// rotation until it answers again.
    pub member_probe_interval: Duration,
}

/// Everything but the TLS material (its key) and the password.
impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("lease_ttl", &self.lease_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("relist_grace", &self.relist_grace)
            .field("claim_ttl", &self.claim_ttl)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user)
            .field("member_probe_interval", &self.member_probe_interval)
            .finish()
    }
}

/// An etcd user; the password never shows in `Debug` output.
#[derive(Clone)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdUser({}, password hidden)", self.name)
    }
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            namespace: "starling".into(),
            lease_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3),
            relist_grace: Duration::from_secs(20),
            claim_ttl: Duration::from_secs(60),
            tls: None,
            user: None,
            member_probe_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Clone)]
pub struct EtcdRegistry {
    /// A client per member, and which are in rotation (`members.rs`).
    pool: Pool,
    keys: Keys,
    config: EtcdConfig,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("config", &self.config)
            .finish()
    }
}

impl EtcdRegistry {
    /// Builds a client. No request is made here: etcd may be down when a process starts,
    /// and the watchers and keepers connect (and reconnect) on their own.
    pub async fn connect(config: EtcdConfig) -> Result<Self, DiscoveryError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            .with_timeout(config.request_timeout)
            // Detects a silently dead etcd connection (no RST) within seconds. Not more often
            // than every 10 s: etcd (min 5 s) answers faster pings with GOAWAY
            // "too_many_pings", which resets every watch.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member without a leader (the minority side of a partition) fails requests
            // and cancels watches at once instead of serving stale data or none.
            .with_require_leader(true);
        let options = match &config.tls {
            Some(tls) => options.with_tls(tls.clone()),
            None => options,
        };
        let options = match &config.user {
            // etcd's tokens expire (5 minutes by default): fetch a new one when told so.
            Some(user) => options
                .with_user(user.name.clone(), user.password.clone())
                .with_auto_token_refresh(true),
            None => options,
        };
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        // A member must leave the rotation well within a lease TTL.
        let probe_interval = config
            .member_probe_interval
            .min(config.lease_ttl / 4)
            .max(Duration::from_millis(250));
        let pool = Pool::connect(endpoints, options, probe_interval).await?;
        Ok(Self {
            pool,
            keys: Keys::new(&config.namespace),
            config,
        })
    }

    /// A client of a member in rotation, for administrative operations (and tests that
    /// compact).
    pub fn client(&self) -> Client {
        self.pool.client()
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn session(&self) -> Session {
        Session {
            pool: self.pool.clone(),
            request_timeout: self.config.request_timeout,
            members: self.pool.changes(),
        }
    }

    fn ttl_secs(&self) -> i64 {
        self.config.lease_ttl.as_secs().max(1) as i64
    }
}

/// What a long-lived etcd task (a lease keeper, a watcher) works with.
struct Session {
    pool: Pool,
    request_timeout: Duration,
    /// Changes when an etcd member leaves the rotation (`members.rs`).
    members: watch::Receiver<u64>,
}

/// Resolves when an etcd member leaves the rotation; never, with a single endpoint.
async fn member_left(members: &mut watch::Receiver<u64>) {
    if members.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether an etcd request failed because the member it went to could not take it in time
/// (down, frozen, unreachable, or without a leader during an election): another member, or
/// the same one a moment later, may.
fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded
        ),
        _ => false,
    }
}

/// Runs `op` again while it fails as [`transient`], six attempts over about 1.5 s of pauses
/// (an election takes a second or two). Each attempt goes to the next member in rotation,
/// and one that just died or froze is only taken out of rotation by the next probe
/// (`members.rs`); until then a request may land on it. Every operation retried here is safe to repeat:
/// puts are idempotent, a lease granted twice expires unused, and a claim whose first
/// attempt did succeed fails its compare the second time, so the number is let go and
/// another is taken.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut pause = Duration::from_millis(50);
    for _ in 0..5 {
        match op().await {
            Err(e) if transient(&e) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            done => return done,
        }
    }
    op().await
}

async fn grant_and_put(
    pool: &Pool,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    retrying(|| {
        let mut client = pool.client();
        async move {
            let lease = client.lease_grant(ttl, None).await?.id();
            client
                .put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await?;
            Ok(lease)
        }
    })
    .await
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(
        &self,
        service: &str,
        instance: ServiceInstance,
    ) -> Result<Registration, DiscoveryError> {
        check_service_name(service)?;
        let key = self.keys.instance_key(service, &instance.id);
        let value = serde_json::to_string(&instance).map_err(|e| DiscoveryError::InvalidEntry {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let ttl = self.ttl_secs();
        let lease = grant_and_put(&self.pool, &key, &value, ttl).await?;
        info!(%key, lease, ttl, address = %instance.address, "registered");
        let (stop_tx, stop_rx) = oneshot::channel();
        let (updates_tx, updates_rx) = watch::channel(instance.clone());
        let keeper = tokio::spawn(keep_registered(
            self.session(),
            key,
            updates_rx,
            ttl,
            lease,
            stop_rx,
        ));
        Ok(Registration::new(instance, stop_tx, keeper, updates_tx))
    }

    async fn list(&self, service: &str) -> Result<EndpointSet, DiscoveryError> {
        check_service_name(service)?;
        let (set, _) = list(&self.pool, &self.keys, service).await?;
        Ok(set)
    }

    fn watch(&self, service: &str) -> EndpointWatch {
        self.spawn_watch(service, None)
    }

    async fn claim(&self, pool: &str, max: u32) -> Result<Claim, DiscoveryError> {
        check_service_name(pool)?;
        let ttl = self.config.claim_ttl.as_secs().max(1) as i64;
        let prefix = format!(
            "/{}/claims/{pool}/",
            self.config.namespace.trim_matches('/')
        );
        // Start at a random number so instances starting together rarely collide.
        let start = rand::random::<u32>() % max.max(1);
        for i in 0..max {
            let id = (start + i) % max;
            let key = format!("{prefix}{id}");
            let sent = std::time::Instant::now();
            if let Some(lease) = try_claim(&self.pool, &key, ttl).await? {
                info!(%key, lease, ttl, "claimed");
                let (valid_tx, valid_rx) = watch::channel(Some(valid_until(sent, ttl)));
                let (stop_tx, stop_rx) = oneshot::channel();
                tokio::spawn(keep_claim(
                    self.pool.clone(),
                    key,
                    ttl,
                    lease,
                    self.config.request_timeout,
                    valid_tx,
                    stop_rx,
                ));
                return Ok(Claim::new(id, valid_rx, stop_tx));
            }
        }
        Err(DiscoveryError::PoolExhausted(max, pool.to_string()))
    }
}

/// Creates `key` under a new lease if nobody holds it; the lease id on success.
async fn try_claim(pool: &Pool, key: &str, ttl: i64) -> Result<Option<i64>, DiscoveryError> {
    let claimed = retrying(|| {
        let mut client = pool.client();
        async move {
            let lease = client.lease_grant(ttl, None).await?.id();
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    "",
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if client.txn(txn).await?.succeeded() {
                Ok(Some(lease))
            } else {
                let _ = client.lease_revoke(lease).await;
                Ok(None)
            }
        }
    })
    .await?;
    Ok(claimed)
}

/// Until when a claim whose lease (of `ttl` seconds) was granted or renewed by a request
/// sent at `sent` is certainly still held: etcd counts the TTL from when the request
/// arrived, which is later; a second's margin covers clock-rate differences.
fn valid_until(sent: std::time::Instant, ttl: i64) -> std::time::Instant {
    sent + Duration::from_secs(ttl.max(1) as u64).saturating_sub(Duration::from_secs(1))
}

/// Keeps a claim's lease alive, moving its validity forward on every confirmed renewal. A
/// failed renewal changes nothing: the claim stays valid until its time runs out. If etcd
/// says the lease is gone, the claim is invalid at once, until the same number can be
/// claimed again (someone else may have it by then).
async fn keep_claim(
    pool: Pool,
    key: String,
    ttl: i64,
    mut lease: i64,
    request_timeout: Duration,
    valid: watch::Sender<Option<std::time::Instant>>,
    mut stop: oneshot::Receiver<()>,
) {
    // Six renewals per TTL: an outage that starts just before a renewal still leaves most
    // of the TTL.
    let period = Duration::from_millis((ttl as u64 * 1000 / 6).max(300));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(period) => {}
        }
        let held = valid.borrow().is_some();
        let sent = std::time::Instant::now();
        if held {
            let renewed = async {
                let (mut keeper, mut responses) =
                    pool.client().lease_keep_alive(lease).await.ok()?;
                keeper.keep_alive().await.ok()?;
                let resp = responses.message().await.ok()??;
                Some(resp.ttl() > 0)
            };
            match tokio::time::timeout(request_timeout, renewed).await {
                Ok(Some(true)) => {
                    valid.send_replace(Some(valid_until(sent, ttl)));
                    continue;
                }
                Ok(Some(false)) => {
                    warn!(%key, "claim lost (etcd no longer knows its lease); not issuing until re-claimed");
                    valid.send_replace(None);
                }
                Ok(None) | Err(_) => {
                    let left = valid
                        .borrow()
                        .map(|u| u.saturating_duration_since(std::time::Instant::now()));
                    warn!(%key, valid_for = ?left, "cannot renew the claim; it stays valid until its TTL runs out");
                    if left.is_some_and(|l| !l.is_zero()) {
                        continue;
                    }
                    valid.send_replace(None);
                }
            }
        }
        let sent = std::time::Instant::now();
        if let Ok(Ok(Some(new))) =
            tokio::time::timeout(request_timeout, try_claim(&pool, &key, ttl)).await
        {
            info!(%key, lease = new, "claim re-established");
            lease = new;
            valid.send_replace(Some(valid_until(sent, ttl)));
        }
    }
    let _ = tokio::time::timeout(request_timeout, pool.client().lease_revoke(lease)).await;
}

impl EtcdRegistry {
    /// Like [`Registry::watch`], but the first watch starts at `revision` instead of just
    /// after the listing: lets a test put the watcher behind a compaction, the situation
    /// a watcher meets when it resumes after being disconnected for a long time.
    pub fn watch_from_revision(&self, service: &str, revision: i64) -> EndpointWatch {
        self.spawn_watch(service, Some(revision))
    }

    fn spawn_watch(&self, service: &str, first_revision: Option<i64>) -> EndpointWatch {
        let (tx, rx) = watch::channel(Arc::new(EndpointSet::new()));
        if check_service_name(service).is_ok() {
            tokio::spawn(watch_service(
                self.session(),
                self.keys.clone(),
                service.to_string(),
                self.config.relist_grace,
                first_revision,
                tx,
            ));
        }
        rx
    }
}

fn parse(keys: &Keys, service: &str, kv: &KeyValue) -> Option<ServiceInstance> {
    let key = String::from_utf8_lossy(kv.key());
    let id = keys.instance_id(service, &key)?;
    match serde_json::from_slice::<ServiceInstance>(kv.value()) {
        Ok(mut inst) => {
            inst.id = id.to_string();
            Some(inst)
        }
        Err(e) => {
            warn!(%key, error = %e, "ignoring malformed registry entry");
            None
        }
    }
}

async fn list(
    pool: &Pool,
    keys: &Keys,
    service: &str,
) -> Result<(EndpointSet, i64), DiscoveryError> {
    let prefix = keys.service_prefix(service);
    let resp = retrying(|| {
        let mut client = pool.client();
        let prefix = prefix.clone();
        async move {
            client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
        }
    })
    .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let set = resp
        .kvs()
        .iter()
        .filter_map(|kv| parse(keys, service, kv).map(|i| (i.id.clone(), i)))
        .collect();
    Ok((set, revision))
}

/// Publishes `set` if it differs from what watchers have.
fn publish(tx: &watch::Sender<Arc<EndpointSet>>, set: &EndpointSet) {
    tx.send_if_modified(|current| {
        if current.as_ref() == set {
            false
        } else {
            *current = Arc::new(set.clone());
            true
        }
    });
}
