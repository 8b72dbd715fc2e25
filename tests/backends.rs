//! The shared backends that `scripts/test.sh` starts (etcd, Redis, a Kafka-protocol broker)
//! are up and speak their protocols. Under CI=true a missing one fails the run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::shared;

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[tokio::test]
async fn shared_etcd_passes_the_registry_contract() {
    let Some(url) = shared("STARLING_TEST_ETCD") else {
        return;
    };
    let mut config = starling_discovery::EtcdConfig::new(vec![url]);
    config.namespace = format!("contract-{:08x}", rand::random::<u32>());
    let registry = starling_discovery::EtcdRegistry::connect(config)
        .await
        .unwrap();
    starling_discovery::contract::run_all(&registry).await;
}

#[test]
fn shared_redis_answers_ping() {
    let Some(url) = shared("STARLING_TEST_REDIS") else {
        return;
    };
    let addr = url.trim_start_matches("redis://");
    let mut s = connect(addr);
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
}

#[test]
fn shared_broker_speaks_the_kafka_protocol() {
    let Some(addr) = shared("STARLING_TEST_KAFKA") else {
        return;
    };
    let mut s = connect(&addr);
    // ApiVersions v0: api_key 18, version 0, correlation id 7, client id "starling-ci".
    let client_id = b"starling-ci";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut header = [0u8; 10];
    s.read_exact(&mut header).unwrap();
    let correlation = i32::from_be_bytes(header[4..8].try_into().unwrap());
    let error_code = i16::from_be_bytes(header[8..10].try_into().unwrap());
    assert_eq!(correlation, 7);
    assert_eq!(error_code, 0, "ApiVersions must succeed");
}

#[tokio::test]
async fn redis_store_passes_the_store_contract() {
    let Some(url) = shared("STARLING_TEST_REDIS") else {
        return;
    };
    let prefix = format!("contract-{:08x}:", rand::random::<u32>());
    let store = starling_runtime::store::RedisStore::connect(&url, &prefix, 4)
        .await
        .unwrap();
    starling_runtime::store::contract::run_all(&store, "").await;
}

#[tokio::test]
async fn kafka_bus_passes_the_bus_contract() {
    let Some(brokers) = shared("STARLING_TEST_KAFKA") else {
        return;
    };
    let namespace = format!("contract-{:08x}", rand::random::<u32>());
    let Some(redis) = shared("STARLING_TEST_REDIS") else {
        return;
    };
    // The members of a group share partitions through leases in Redis.
    let store = starling_runtime::store::RedisStore::connect(&redis, &format!("{namespace}:"), 2)
        .await
        .unwrap();
    let bus = starling_runtime::events::KafkaBus::connect(&brokers, &namespace)
        .await
        .unwrap()
        .coordinated_by(std::sync::Arc::new(store));
    starling_runtime::events::contract::run_all(&bus, "c").await;
}

/// Topics are created with the configured partitions (and `min.insync.replicas`); a layout
/// the broker could not honour is refused before anything is created.
#[tokio::test]
async fn kafka_topics_are_created_with_the_configured_layout() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use starling_runtime::events::topics::TopicLayout;
    use starling_runtime::events::EventBus as _;

    let Some(brokers) = shared("STARLING_TEST_KAFKA") else {
        return;
    };
    let namespace = format!("layout-{:08x}", rand::random::<u32>());
    let layout = TopicLayout {
        partitions: 4,
        replication_factor: 1,
        min_insync_replicas: Some(1),
    };
    let bus = starling_runtime::events::KafkaBus::connect(&brokers, &namespace)
        .await
        .unwrap()
        .with_layout(layout)
        .expect("a layout one broker can hold");
    bus.create_topics(&["laid-out".to_string()]).await.unwrap();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let topic = format!("{namespace}.laid-out");
    let partitions = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&topic), std::time::Duration::from_secs(5))
            .map(|m| m.topics().first().map(|t| t.partitions().len()))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(partitions, Some(4));

    let unsafe_layout = TopicLayout {
        min_insync_replicas: Some(2),
        ..layout
    };
    let refused = starling_runtime::events::KafkaBus::connect(&brokers, &namespace)
        .await
        .unwrap()
        .with_layout(unsafe_layout);
    assert!(
        refused.is_err(),
        "min.insync.replicas above the replication factor"
    );
}
