//! What a registered service instance says about itself, and where it lives in the registry.
//!
//! The key layout is `/<namespace>/services/<service>/<instance-id>` with a JSON value, so
//! operators can read the registry with `etcdctl get --prefix /starling/services/`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One running instance of a service, as stored in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// Unique per process start, so a restarted instance is a new endpoint (its old
    /// connections and latency history must not be reused).
    #[serde(skip)]
    pub id: String,
    /// `host:port` that clients dial.
    pub address: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub zone: String,
    /// Relative share of traffic (consistent hashing gives it proportionally more ring
    /// points). Zero is treated as one.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_at: u64,
    /// Whether the instance can do its job now (its health verdict). Balancers skip an
    /// instance that is not serving while any other is.
    #[serde(default = "default_serving")]
    pub serving: bool,
}

fn default_weight() -> u32 {
    1
}

fn default_serving() -> bool {
    true
}

impl ServiceInstance {
    /// The same endpoint (a change of `serving` alone keeps its connection and history).
    pub fn same_endpoint(&self, other: &ServiceInstance) -> bool {
        self.id == other.id
            && self.address == other.address
            && self.version == other.version
            && self.zone == other.zone
            && self.weight == other.weight
            && self.started_at == other.started_at
    }
}

impl ServiceInstance {
    /// A new instance with a fresh random id, weight 1 and `started_at` = now.
    pub fn new(service: &str, address: impl Into<String>) -> Self {
        Self {
            id: new_instance_id(service),
            address: address.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            zone: String::new(),
            weight: 1,
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            serving: true,
        }
    }
}

/// `<service>-<16 hex digits>`: readable in logs and unique without coordination.
pub fn new_instance_id(service: &str) -> String {
    format!("{service}-{:016x}", rand::random::<u64>())
}

/// The instances of one service, keyed by instance id. A `BTreeMap` so that iteration order
/// (and therefore round-robin order and test output) is stable.
pub type EndpointSet = BTreeMap<String, ServiceInstance>;

/// Registry key layout, in one place.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.trim_matches('/').to_string(),
        }
    }

    /// `/<ns>/services/<service>/`: the prefix a watcher lists and watches.
    pub fn service_prefix(&self, service: &str) -> String {
        format!("/{}/services/{service}/", self.namespace)
    }

    pub fn instance_key(&self, service: &str, id: &str) -> String {
        format!("{}{id}", self.service_prefix(service))
    }

    /// The instance id from a key under `service_prefix`, if the key is well formed.
    pub fn instance_id<'k>(&self, service: &str, key: &'k str) -> Option<&'k str> {
        let id = key.strip_prefix(&self.service_prefix(service))?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_round_trips() {
        let keys = Keys::new("/starling/");
        let key = keys.instance_key("tweet", "tweet-00ff");
        assert_eq!(key, "/starling/services/tweet/tweet-00ff");
        assert_eq!(keys.instance_id("tweet", &key), Some("tweet-00ff"));
        // Another service sharing a name prefix must not leak in.
        assert_eq!(
            keys.instance_id("tweet", "/starling/services/tweets/x"),
            None
        );
        assert_eq!(
            keys.instance_id("tweet", "/starling/services/tweet/a/b"),
            None
        );
    }

    #[test]
    fn value_is_json_with_the_documented_fields() {
        let mut inst = ServiceInstance::new("tweet", "127.0.0.1:7000");
        inst.zone = "z1".into();
        let json: serde_json::Value = serde_json::to_value(&inst).unwrap();
        for field in ["address", "version", "zone", "weight", "started_at"] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        let back: ServiceInstance = serde_json::from_value(json).unwrap();
        assert_eq!(back.address, inst.address);
        assert_eq!(back.zone, "z1");
    }

    #[test]
    fn missing_optional_fields_get_defaults() {
        let inst: ServiceInstance = serde_json::from_str(r#"{"address":"h:1"}"#).unwrap();
        assert_eq!(inst.weight, 1);
    }
}
