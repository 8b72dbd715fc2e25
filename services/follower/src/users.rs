//! Who has signed up: `user:<name>` holds the registration time (milliseconds since the
//! epoch, decimal). A fact of this service rather than of the gateway's account table, so
//! that every service and client can ask it (`GetUser`) and `Follow` can refuse names that
//! belong to nobody: following made-up names was free.
//!
//! Registration is a claim (`Store::claim`: set-if-absent in one step), so registering a
//! user twice, or two gateways racing, keeps the first time.

use std::sync::Arc;

use starling_runtime::store::{Store, StoreResult};

/// Users one `RegisterUsers` call may carry.
pub const MAX_REGISTER: usize = 1_000;

pub fn user_key(user: &str) -> String {
    format!("user:{user}")
}

#[derive(Clone)]
pub struct Users {
    store: Arc<dyn Store>,
}

impl Users {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Registers each user not yet registered, at `at_ms`; how many were new.
    pub async fn register(&self, users: &[String], at_ms: i64) -> StoreResult<u32> {
        let value = at_ms.to_string();
        let keys: Vec<String> = users.iter().map(|u| user_key(u)).collect();
        let claims = keys
            .iter()
            .map(|k| self.store.claim(k, value.as_bytes(), None));
        let mut created = 0;
        for held in futures::future::join_all(claims).await {
            if held?.is_none() {
                created += 1;
            }
        }
        Ok(created)
    }

    /// When each user registered (`None`: never), in one round trip.
    pub async fn registered_at(&self, users: &[&str]) -> StoreResult<Vec<Option<i64>>> {
        let keys: Vec<String> = users.iter().map(|u| user_key(u)).collect();
        Ok(self
            .store
            .mget(&keys)
            .await?
            .into_iter()
            .map(|v| {
                // A value that is not a number still says the user exists.
                v.map(|v| {
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_runtime::store::MemoryStore;

    #[tokio::test]
    async fn registration_is_first_come_and_idempotent() {
        let users = Users::new(Arc::new(MemoryStore::new()));
        assert_eq!(
            users.registered_at(&["alice", "bob"]).await.unwrap(),
            vec![None, None]
        );
        assert_eq!(
            users
                .register(&["alice".into(), "bob".into()], 100)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            users
                .register(&["alice".into(), "carol".into()], 200)
                .await
                .unwrap(),
            1,
            "alice was registered already"
        );
        assert_eq!(
            users
                .registered_at(&["alice", "carol", "dave"])
                .await
                .unwrap(),
            vec![Some(100), Some(200), None],
            "the first registration stays"
        );
    }
}
