//! The endpoints of one target as the balancer sees them, kept in step with the
//! registry: every change of the registry's endpoint set makes a new [`Snapshot`], which
//! keeps the [`Endpoint`] (connection, latency history, ejection) of every instance that
//! stays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tower::BoxError;
use tracing::{debug, warn};

use super::endpoint::Endpoint;
use super::error::fail;
use crate::balance::ring::{HashRing, DEFAULT_POINTS_PER_WEIGHT};
use crate::instance::EndpointSet;
use crate::registry::EndpointWatch;

/// The endpoints of a target at one moment, with what each policy needs to pick fast.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) by_id: HashMap<String, usize>,
    pub(crate) ring: HashRing,
}

/// The current snapshot of one target (cheap to clone).
#[derive(Clone)]
pub(crate) struct Snapshots {
    service: String,
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Snapshots {
    /// Starts keeping the snapshot of `service` current from `watch` (until every clone of
    /// the result is gone), connecting new endpoints with `connect_timeout` and `tls`.
    pub(crate) fn follow(
        service: &str,
        watch: EndpointWatch,
        connect_timeout: Duration,
        tls: Option<crate::tls::MeshTls>,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(maintain(
            service.to_string(),
            watch,
            tx,
            connect_timeout,
            tls,
        ));
        Self {
            service: service.to_string(),
            rx,
        }
    }

    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// The current snapshot once it has an endpoint, waiting at most `wait` for one (then
    /// UNAVAILABLE): an empty target fails fast instead of hanging its callers.
    pub(crate) async fn nonempty(&self, wait: Duration) -> Result<Arc<Snapshot>, BoxError> {
        {
            let snap = self.rx.borrow();
            if !snap.endpoints.is_empty() {
                return Ok(snap.clone());
            }
        }
        let mut rx = self.rx.clone();
        let ready = async {
            rx.wait_for(|s| !s.endpoints.is_empty())
                .await
                .map(|s| s.clone())
        };
        match tokio::time::timeout(wait, ready).await {
            Ok(Ok(snap)) => Ok(snap),
            _ => Err(fail(
                tonic::Status::unavailable(format!(
                    "no endpoints registered for service {:?} (waited {wait:?})",
                    self.service
                )),
                false,
            )),
        }
    }

    /// Waits until `pred` holds for a snapshot, at most `timeout`.
    pub(crate) async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&Arc<Snapshot>) -> bool,
    ) -> bool {
        let mut rx = self.rx.clone();
        tokio::time::timeout(timeout, async { rx.wait_for(pred).await.is_ok() })
            .await
            .unwrap_or(false)
    }
}

/// Keeps the balancer's snapshot in step with the registry's endpoint set, reusing the
/// `Endpoint` of every instance that stays.
async fn maintain(
    service: String,
    mut watch: EndpointWatch,
    tx: watch::Sender<Arc<Snapshot>>,
    connect_timeout: Duration,
    tls: Option<crate::tls::MeshTls>,
) {
    let gauge = metrics::gauge!("starling_client_endpoints", "target" => service.clone());
    loop {
        let set: Arc<EndpointSet> = watch.borrow_and_update().clone();
        let previous = tx.borrow().clone();
        let mut snap = Snapshot::default();
        for (id, inst) in set.iter() {
            let reused = previous
                .by_id
                .get(id)
                .map(|&i| previous.endpoints[i].clone())
                .filter(|e| e.instance.same_endpoint(inst));
            let ep = match reused {
                Some(ep) => ep,
                None => {
                    match Endpoint::new(&service, inst.clone(), connect_timeout, tls.as_ref()) {
                        Ok(ep) => Arc::new(ep),
                        Err(e) => {
                            warn!(%service, instance = %id, error = %e, "ignoring endpoint");
                            continue;
                        }
                    }
                }
            };
            ep.set_serving(inst.serving);
            snap.by_id.insert(id.clone(), snap.endpoints.len());
            snap.endpoints.push(ep);
        }
        snap.ring = HashRing::new(
            snap.endpoints.iter().map(|e| (e.id(), e.instance.weight)),
            DEFAULT_POINTS_PER_WEIGHT,
        );
        gauge.set(snap.endpoints.len() as f64);
        debug!(%service, endpoints = snap.endpoints.len(), "endpoint set updated");
        tx.send_replace(Arc::new(snap));
        tokio::select! {
            changed = watch.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}
