//! The production registry on etcd v3.
//!
//! Registration: grant a lease, put the instance key under it, renew it every TTL/3. A lost
//! lease (etcd down longer than the TTL, or restarted with its data wiped) shows up as a
//! keep-alive answer with TTL 0 or as errors; the keeper then grants a new lease and puts
//! the key again, so an instance never stays invisible after etcd comes back. (Several
//! registries in the wild never re-register; that is the bug this avoids.)
//!
//! Watching: list the prefix, then watch from the listed revision + 1, so no event between
//! the two is missed. A compacted revision, a cancelled watch or a broken stream all lead
//! to a fresh list and diff, after a jittered back-off. While etcd is unreachable the last
//! known set keeps being served. After a relist, instances that vanished are kept for a
//! grace period rather than dropped at once: when etcd comes back empty, the live instances
//! re-register within a few seconds, and dropping them in between would turn an etcd outage
//! into a data-path outage. Watch DELETE events (a real deregistration or an expired lease)
//! still apply immediately.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
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
        }
    }
}

#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
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
            .with_keep_alive_while_idle(true);
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
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Self {
            client,
            keys: Keys::new(&config.namespace),
            config,
        })
    }

    /// The underlying client, for administrative operations (and tests that compact).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn ttl_secs(&self) -> i64 {
        self.config.lease_ttl.as_secs().max(1) as i64
    }
}

async fn grant_and_put(
    client: &mut Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(ttl, None).await?.id();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await?;
    Ok(lease)
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
        let mut client = self.client.clone();
        let ttl = self.ttl_secs();
        let lease = grant_and_put(&mut client, &key, &value, ttl).await?;
        info!(%key, lease, ttl, address = %instance.address, "registered");
        let (stop_tx, stop_rx) = oneshot::channel();
        let (updates_tx, updates_rx) = watch::channel(instance.clone());
        let keeper = tokio::spawn(keep_registered(
            client,
            key,
            updates_rx,
            ttl,
            lease,
            self.config.request_timeout,
            stop_rx,
        ));
        Ok(Registration::new(instance, stop_tx, keeper, updates_tx))
    }

    async fn list(&self, service: &str) -> Result<EndpointSet, DiscoveryError> {
        check_service_name(service)?;
        let (set, _) = list(&mut self.client.clone(), &self.keys, service).await?;
        Ok(set)
    }

    fn watch(&self, service: &str) -> EndpointWatch {
        self.spawn_watch(service, None)
    }

    async fn claim(&self, pool: &str, max: u32) -> Result<Claim, DiscoveryError> {
        check_service_name(pool)?;
        let mut client = self.client.clone();
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
            if let Some(lease) = try_claim(&mut client, &key, ttl).await? {
                info!(%key, lease, ttl, "claimed");
                let (valid_tx, valid_rx) = watch::channel(Some(valid_until(sent, ttl)));
                let (stop_tx, stop_rx) = oneshot::channel();
                tokio::spawn(keep_claim(
                    client,
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
async fn try_claim(
    client: &mut Client,
    key: &str,
    ttl: i64,
) -> Result<Option<i64>, DiscoveryError> {
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
    mut client: Client,
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
                let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.ok()?;
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
            tokio::time::timeout(request_timeout, try_claim(&mut client, &key, ttl)).await
        {
            info!(%key, lease = new, "claim re-established");
            lease = new;
            valid.send_replace(Some(valid_until(sent, ttl)));
        }
    }
    let _ = tokio::time::timeout(request_timeout, client.lease_revoke(lease)).await;
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
                self.client.clone(),
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

/// Keeps one registration alive until `stop` fires, then revokes its lease.
async fn keep_registered(
    mut client: Client,
    key: String,
    mut updates: watch::Receiver<ServiceInstance>,
    ttl: i64,
    first_lease: i64,
    request_timeout: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let mut backoff = Backoff::new(Duration::from_millis(200), period);
    let mut lease = Some(first_lease);
    let encode = |i: &ServiceInstance| serde_json::to_string(i).unwrap_or_default();
    // Not marked as seen: a change made before this task ran is still put (below).
    let mut value = encode(&updates.borrow());
    // A change whose put failed: put again on the next renewal round.
    let mut dirty = false;
    'outer: loop {
        let id = match lease {
            Some(id) => id,
            None => match grant_and_put(&mut client, &key, &value, ttl).await {
                Ok(id) => {
                    info!(%key, lease = id, "re-registered after losing the lease");
                    lease = Some(id);
                    id
                }
                Err(e) => {
                    warn!(%key, error = %e, "cannot re-register yet");
                    tokio::select! {
                        _ = &mut stop => break 'outer,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue 'outer,
                    }
                }
            },
        };
        match client.lease_keep_alive(id).await {
            Ok((mut keeper, mut responses)) => {
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = &mut stop => break 'outer,
                        _ = tick.tick() => {}
                        changed = updates.changed() => {
                            // The handle is gone: the registration is being dropped.
                            if changed.is_err() {
                                break 'outer;
                            }
                            {
                                value = encode(&updates.borrow_and_update());
                                let put = client
                                    .put(key.as_str(), value.as_str(), Some(PutOptions::new().with_lease(id)))
                                    .await;
                                dirty = put.is_err();
                                match put {
                                    Ok(_) => info!(%key, %value, "registration updated"),
                                    Err(e) => warn!(%key, error = %e, "cannot update the registration; trying again at the next renewal"),
                                }
                            }
                            continue;
                        }
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        warn!(%key, error = %e, "lease keep-alive failed to send");
                        break;
                    }
                    match tokio::time::timeout(request_timeout, responses.message()).await {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                            backoff.reset();
                            debug!(%key, ttl = resp.ttl(), "lease renewed");
                            // The lease lives, but the key may not (an operator's `etcdctl
                            // del`, a partial restore): put it back under the same lease.
                            let present = client
                                .get(key.as_str(), Some(GetOptions::new().with_keys_only()))
                                .await
                                .map(|r| !r.kvs().is_empty());
                            if dirty || matches!(present, Ok(false)) {
                                let put = client
                                    .put(
                                        key.as_str(),
                                        value.as_str(),
                                        Some(PutOptions::new().with_lease(id)),
                                    )
                                    .await;
                                dirty = put.is_err();
                                match put {
                                    Ok(_) => {
                                        info!(%key, "registration key put (again)")
                                    }
                                    Err(e) => {
                                        warn!(%key, error = %e, "cannot put the missing key back")
                                    }
                                }
                            }
                        }
                        Ok(Ok(Some(_))) => {
                            warn!(%key, lease = id, "lease expired or unknown to etcd; re-registering");
                            lease = None;
                            break;
                        }
                        Ok(Ok(None)) => {
                            warn!(%key, "lease keep-alive stream closed");
                            break;
                        }
                        Ok(Err(e)) => {
                            warn!(%key, error = %e, "lease keep-alive failed");
                            break;
                        }
                        Err(_) => {
                            warn!(%key, "lease keep-alive timed out");
                            break;
                        }
                    }
                }
            }
            // etcd-client reports a keep-alive answer with TTL <= 0 at open time this way:
            // the lease is gone (expired, or etcd lost its data), so register afresh.
            Err(etcd_client::Error::LeaseKeepAliveError(reason)) => {
                warn!(%key, lease = id, %reason, "lease lost; re-registering");
                lease = None;
                continue 'outer;
            }
            Err(e) => warn!(%key, error = %e, "cannot open lease keep-alive"),
        }
        tokio::select! {
            _ = &mut stop => break 'outer,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    // Deregister: revoking the lease deletes the key, and watchers see a DELETE.
    if let Some(id) = lease {
        match tokio::time::timeout(request_timeout, client.lease_revoke(id)).await {
            Ok(Ok(_)) => info!(%key, "deregistered"),
            Ok(Err(e)) => warn!(%key, error = %e, "revoke failed; the lease will expire"),
            Err(_) => warn!(%key, "revoke timed out; the lease will expire"),
        }
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
    client: &mut Client,
    keys: &Keys,
    service: &str,
) -> Result<(EndpointSet, i64), DiscoveryError> {
    let resp = client
        .get(
            keys.service_prefix(service),
            Some(GetOptions::new().with_prefix()),
        )
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

async fn watch_service(
    mut client: Client,
    keys: Keys,
    service: String,
    relist_grace: Duration,
    mut first_revision: Option<i64>,
    tx: watch::Sender<Arc<EndpointSet>>,
) {
    let prefix = keys.service_prefix(&service);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut set = EndpointSet::new();
    // Instances missing from a relist, kept until their deadline unless they come back.
    let mut stale: HashMap<String, Instant> = HashMap::new();
    let mut first_list = true;
    loop {
        match list(&mut client, &keys, &service).await {
            Ok((listed, revision)) => {
                let now = Instant::now();
                for id in set.keys() {
                    if !listed.contains_key(id) && !first_list {
                        stale.entry(id.clone()).or_insert(now + relist_grace);
                    }
                }
                // Drop what has been missing for longer than the grace here too, not only
                // while a watch is open (opening the watch may keep failing).
                stale.retain(|id, deadline| !listed.contains_key(id) && *deadline > now);
                set.retain(|id, _| stale.contains_key(id));
                set.extend(listed);
                first_list = false;
                publish(&tx, &set);
                debug!(%service, revision, endpoints = set.len(), stale = stale.len(), "listed");

                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(first_revision.take().unwrap_or(revision + 1))
                    .with_progress_notify();
                match client.watch(prefix.as_str(), Some(opts)).await {
                    Ok(mut stream) => loop {
                        let next_purge = stale.values().min().copied();
                        let purge = async {
                            match next_purge {
                                Some(at) => tokio::time::sleep_until(at).await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = purge => {
                                let now = Instant::now();
                                stale.retain(|id, deadline| {
                                    let keep = *deadline > now;
                                    if !keep {
                                        info!(%service, instance = %id, "dropping instance that did not re-register");
                                        set.remove(id);
                                    }
                                    keep
                                });
                                publish(&tx, &set);
                            }
                            msg = stream.message() => match msg {
                                Ok(Some(resp)) => {
                                    if resp.canceled() || resp.compact_revision() > 0 {
                                        warn!(%service, compact_revision = resp.compact_revision(),
                                            reason = resp.cancel_reason(), "watch cancelled; relisting");
                                        break;
                                    }
                                    backoff.reset();
                                    for event in resp.events() {
                                        let Some(kv) = event.kv() else { continue };
                                        match event.event_type() {
                                            EventType::Put => {
                                                if let Some(inst) = parse(&keys, &service, kv) {
                                                    stale.remove(&inst.id);
                                                    set.insert(inst.id.clone(), inst);
                                                }
                                            }
                                            EventType::Delete => {
                                                let key = String::from_utf8_lossy(kv.key());
                                                if let Some(id) = keys.instance_id(&service, &key) {
                                                    stale.remove(id);
                                                    set.remove(id);
                                                }
                                            }
                                        }
                                    }
                                    publish(&tx, &set);
                                }
                                Ok(None) => {
                                    warn!(%service, "watch stream ended; relisting");
                                    break;
                                }
                                Err(e) => {
                                    warn!(%service, error = %e, "watch failed; relisting");
                                    break;
                                }
                            }
                        }
                    },
                    Err(e) => warn!(%service, error = %e, "cannot open watch"),
                }
            }
            Err(e) => {
                warn!(%service, error = %e, endpoints = set.len(),
                    "cannot list; serving the last known endpoints");
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
