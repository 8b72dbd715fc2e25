//! The in-process registry behind `starling up`: the same contract as etcd, without a
//! server. Registrations vanish when deregistered or when their handle is dropped, the
//! in-process equivalent of a lease ending with its owner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use crate::instance::{EndpointSet, ServiceInstance};
use crate::registry::{
    check_service_name, Claim, DiscoveryError, EndpointWatch, Registration, Registry,
};

#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    services: Arc<Mutex<HashMap<String, watch::Sender<Arc<EndpointSet>>>>>,
    claims: Arc<Mutex<HashMap<String, std::collections::HashSet<u32>>>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn sender(&self, service: &str) -> watch::Sender<Arc<EndpointSet>> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services
            .entry(service.to_string())
            .or_insert_with(|| watch::channel(Arc::new(EndpointSet::new())).0)
            .clone()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(
        &self,
        service: &str,
        instance: ServiceInstance,
    ) -> Result<Registration, DiscoveryError> {
        check_service_name(service)?;
        let tx = self.sender(service);
        let id = instance.id.clone();
        tx.send_modify(|set| {
            Arc::make_mut(set).insert(id.clone(), instance.clone());
        });
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (updates_tx, mut updates) = watch::channel(instance.clone());
        let keeper = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    changed = updates.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let now = updates.borrow_and_update().clone();
                        tx.send_modify(|set| {
                            Arc::make_mut(set).insert(id.clone(), now);
                        });
                    }
                }
            }
            tx.send_modify(|set| {
                Arc::make_mut(set).remove(&id);
            });
        });
        Ok(Registration::new(instance, stop_tx, keeper, updates_tx))
    }

    async fn list(&self, service: &str) -> Result<EndpointSet, DiscoveryError> {
        check_service_name(service)?;
        Ok(self.sender(service).borrow().as_ref().clone())
    }

    fn watch(&self, service: &str) -> EndpointWatch {
        self.sender(service).subscribe()
    }

    async fn claim(&self, pool: &str, max: u32) -> Result<Claim, DiscoveryError> {
        let id = {
            let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            let taken = claims.entry(pool.to_string()).or_default();
            let id = (0..max)
                .find(|n| !taken.contains(n))
                .ok_or_else(|| DiscoveryError::PoolExhausted(max, pool.to_string()))?;
            taken.insert(id);
            id
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        // In one process a claim cannot be lost: valid until released.
        let forever =
            std::time::Instant::now() + std::time::Duration::from_secs(100 * 365 * 86_400);
        let (valid_tx, valid_rx) = watch::channel(Some(forever));
        let claims = self.claims.clone();
        let pool = pool.to_string();
        tokio::spawn(async move {
            let _ = stop_rx.await;
            drop(valid_tx);
            let mut claims = claims.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(taken) = claims.get_mut(&pool) {
                taken.remove(&id);
            }
        });
        Ok(Claim::new(id, valid_rx, stop_tx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_registry_passes_the_contract() {
        crate::contract::run_all(&MemoryRegistry::new()).await;
    }
}
