//! Keeping one registration alive: renew the lease every TTL/3; put the key back if it
//! went missing under a live lease (an operator's `etcdctl del`, a partial restore); put
//! the instance again when its value changes (the health verdict); and when the lease is
//! lost (etcd down longer than the TTL, or wiped), grant a new one and put the key again,
//! so an instance never stays invisible after etcd comes back. On stop, revoke the lease:
//! the key goes, and watchers see a DELETE.

use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::{grant_and_put, member_left};
use crate::backoff::Backoff;
use crate::instance::ServiceInstance;

/// How a round of renewals ended.
enum Renewals {
    /// The registration is being dropped: deregister.
    Stopped,
    /// etcd no longer knows the lease: register afresh.
    LeaseLost,
    /// The keep-alive stream broke: open it again (same lease) after a back-off.
    Broken,
}

/// One registration's key, value and client.
struct Keeper {
    /// The clients of etcd's members; each request goes to the next one in rotation.
    pool: super::Pool,
    key: String,
    /// The instance as last encoded.
    value: String,
    /// A change whose put failed: put again on the next renewal.
    dirty: bool,
    ttl: i64,
    request_timeout: Duration,
    /// Changes when an etcd member leaves the rotation: the keep-alive stream may be on it.
    members: watch::Receiver<u64>,
}

impl Keeper {
    /// How long a request made while renewing may take: not past the next renewal.
    fn wait(&self) -> Duration {
        self.request_timeout
            .min(Duration::from_millis(self.ttl as u64 * 1000 / 3))
    }

    /// Puts the value under `lease`; remembers a failure for the next renewal.
    async fn put(&mut self, lease: i64, why: &str) {
        let mut client = self.pool.client();
        let put = client.put(
            self.key.as_str(),
            self.value.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let put = bounded(self.wait(), &mut self.members, put).await;
        self.dirty = !matches!(put, Some(Ok(_)));
        match put {
            Some(Ok(_)) => info!(key = %self.key, value = %self.value, "{why}"),
            Some(Err(e)) => {
                warn!(key = %self.key, error = %e, "{why} failed; trying again at the next renewal")
            }
            None => {
                warn!(key = %self.key, "{why} got no answer in time; trying again at the next renewal")
            }
        }
    }

    /// Whether the key is missing although its lease lives.
    async fn key_missing(&mut self) -> bool {
        let mut client = self.pool.client();
        let get = client.get(self.key.as_str(), Some(GetOptions::new().with_keys_only()));
        matches!(
            bounded(self.wait(), &mut self.members, get).await,
            Some(Ok(r)) if r.kvs().is_empty()
        )
    }

    /// Renews `lease` every `period` (and applies value changes) until the lease is lost,
    /// the stream breaks, or the registration stops.
    async fn renew_until_lost(
        &mut self,
        lease: i64,
        period: Duration,
        updates: &mut watch::Receiver<ServiceInstance>,
        stop: &mut oneshot::Receiver<()>,
        backoff: &mut Backoff,
    ) -> Renewals {
        let mut client = self.pool.client();
        let open = bounded(
            self.wait(),
            &mut self.members,
            client.lease_keep_alive(lease),
        );
        let (mut keeper, mut responses) = match open.await {
            None => {
                warn!(key = %self.key, "lease keep-alive did not open in time");
                return Renewals::Broken;
            }
            Some(Ok(pair)) => pair,
            // etcd-client reports a keep-alive answer with TTL <= 0 at open time this way:
            // the lease is gone (expired, or etcd lost its data).
            Some(Err(etcd_client::Error::LeaseKeepAliveError(reason))) => {
                warn!(key = %self.key, lease, %reason, "lease lost; re-registering");
                return Renewals::LeaseLost;
            }
            Some(Err(e)) => {
                warn!(key = %self.key, error = %e, "cannot open lease keep-alive");
                return Renewals::Broken;
            }
        };
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = &mut *stop => return Renewals::Stopped,
                _ = member_left(&mut self.members) => {
                    info!(key = %self.key, "an etcd member left the rotation; reopening the lease keep-alive");
                    return Renewals::Broken;
                }
                _ = tick.tick() => {}
                changed = updates.changed() => {
                    // The handle is gone: the registration is being dropped.
                    if changed.is_err() {
                        return Renewals::Stopped;
                    }
                    self.value = encode(&updates.borrow_and_update());
                    self.put(lease, "registration updated").await;
                    continue;
                }
            }
            if let Err(e) = keeper.keep_alive().await {
                warn!(key = %self.key, error = %e, "lease keep-alive failed to send");
                return Renewals::Broken;
            }
            // An answer later than the next renewal is as good as none: open the stream
            // again (elsewhere, if a member left the rotation meanwhile).
            let wait = self.wait();
            let answer = tokio::select! {
                answer = tokio::time::timeout(wait, responses.message()) => answer,
                _ = member_left(&mut self.members) => {
                    info!(key = %self.key, "an etcd member left the rotation; reopening the lease keep-alive");
                    return Renewals::Broken;
                }
            };
            match answer {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    backoff.reset();
                    debug!(key = %self.key, ttl = resp.ttl(), "lease renewed");
                    if self.dirty || self.key_missing().await {
                        self.put(lease, "registration key put (again)").await;
                    }
                }
                Ok(Ok(Some(_))) => {
                    warn!(key = %self.key, lease, "lease expired or unknown to etcd; re-registering");
                    return Renewals::LeaseLost;
                }
                Ok(Ok(None)) => {
                    warn!(key = %self.key, "lease keep-alive stream closed");
                    return Renewals::Broken;
                }
                Ok(Err(e)) => {
                    warn!(key = %self.key, error = %e, "lease keep-alive failed");
                    return Renewals::Broken;
                }
                Err(_) => {
                    warn!(key = %self.key, "lease keep-alive timed out");
                    return Renewals::Broken;
                }
            }
        }
    }

    /// Revokes `lease`: the key goes with it.
    async fn deregister(&mut self, lease: i64) {
        let mut client = self.pool.client();
        match tokio::time::timeout(self.request_timeout, client.lease_revoke(lease)).await {
            Ok(Ok(_)) => info!(key = %self.key, "deregistered"),
            Ok(Err(e)) => {
                warn!(key = %self.key, error = %e, "revoke failed; the lease will expire")
            }
            Err(_) => warn!(key = %self.key, "revoke timed out; the lease will expire"),
        }
    }
}

/// Waits for an etcd request at most `wait`, and not past a member leaving the rotation
/// (the request may be stuck on it); `None` when it was given up.
async fn bounded<T>(
    wait: Duration,
    members: &mut watch::Receiver<u64>,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Option<Result<T, etcd_client::Error>> {
    tokio::select! {
        answer = tokio::time::timeout(wait, request) => answer.ok(),
        _ = member_left(members) => None,
    }
}

fn encode(i: &ServiceInstance) -> String {
    serde_json::to_string(i).unwrap_or_default()
}

/// Keeps one registration alive until `stop` fires, then revokes its lease.
pub(super) async fn keep_registered(
    session: super::Session,
    key: String,
    mut updates: watch::Receiver<ServiceInstance>,
    ttl: i64,
    first_lease: i64,
    mut stop: oneshot::Receiver<()>,
) {
    let super::Session {
        pool,
        request_timeout,
        members,
    } = session;
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let mut backoff = Backoff::new(Duration::from_millis(200), period);
    // Not marked as seen: a change made before this task ran is still put (below).
    let value = encode(&updates.borrow());
    let mut keeper = Keeper {
        pool,
        key,
        value,
        dirty: false,
        ttl,
        request_timeout,
        members,
    };
    let mut lease = Some(first_lease);
    loop {
        let id = match lease {
            Some(id) => id,
            None => {
                match grant_and_put(&keeper.pool, &keeper.key, &keeper.value, keeper.ttl).await {
                    Ok(id) => {
                        info!(key = %keeper.key, lease = id, "re-registered after losing the lease");
                        lease = Some(id);
                        id
                    }
                    Err(e) => {
                        warn!(key = %keeper.key, error = %e, "cannot re-register yet");
                        tokio::select! {
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        }
                    }
                }
            }
        };
        match keeper
            .renew_until_lost(id, period, &mut updates, &mut stop, &mut backoff)
            .await
        {
            Renewals::Stopped => break,
            Renewals::LeaseLost => {
                lease = None;
                continue;
            }
            Renewals::Broken => {}
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    if let Some(id) = lease {
        keeper.deregister(id).await;
    }
}
