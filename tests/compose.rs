//! docker-compose.yml cannot be started here (no Docker engine), so this checks it against
//! the program instead: every service it runs exists, every subcommand, flag and variable it
//! passes is one `starling` accepts, and every address and port lines up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;

use serde_yaml::Value;

const KINDS: [&str; 5] = ["tweet", "follower", "timeline", "tagger", "recommendation"];

fn compose() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml at the top level");
    let mut doc: Value = serde_yaml::from_str(&text).expect("valid YAML");
    doc.apply_merge().expect("merge keys resolve");
    let services = doc
        .get("services")
        .and_then(Value::as_mapping)
        .expect("a services map");
    services
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.apply_merge().expect("merge keys resolve");
            (
                k.as_str().expect("service names are strings").to_string(),
                v,
            )
        })
        .collect()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn env(service: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(m) = service.get("environment").and_then(Value::as_mapping) {
        for (k, v) in m {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            out.insert(k.as_str().unwrap_or_default().to_string(), value);
        }
    }
    out
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run starling");
    assert!(
        out.status.success(),
        "`starling {} --help` fails: {out:?}",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or_default()
}

#[test]
fn compose_file_matches_the_program() {
    let services = compose();
    for infra in ["etcd-1", "etcd-2", "etcd-3", "kafka", "redis-cluster"] {
        assert!(services.contains_key(infra), "{infra} missing");
    }
    // Six Redis Cluster nodes (three masters with a replica each), made into one cluster.
    let redis_nodes: Vec<String> = (1..=6).map(|n| format!("redis-{n}")).collect();
    for node in &redis_nodes {
        let command = strings(services.get(node.as_str()).and_then(|s| s.get("command")));
        assert!(
            command
                .windows(2)
                .any(|w| w == ["--cluster-enabled", "yes"]),
            "{node} is a cluster node: {command:?}"
        );
        assert!(
            command
                .windows(2)
                .any(|w| w[0] == "--cluster-announce-hostname" && w[1] == *node),
            "{node} announces its own name"
        );
    }
    let create = strings(services["redis-cluster"].get("entrypoint")).join(" ");
    assert!(
        create.contains("--cluster create") && create.contains("--cluster-replicas 1"),
        "redis-cluster makes the cluster: {create}"
    );
    // The etcd members form one cluster, and every process lists all of them.
    let members: Vec<String> = (1..=3).map(|n| format!("etcd-{n}")).collect();
    let etcd_urls: Vec<String> = members.iter().map(|m| format!("http://{m}:2379")).collect();
    for m in &members {
        let command = strings(services[m.as_str()].get("command"));
        let arg = |flag: &str| {
            command
                .iter()
                .find_map(|c| c.strip_prefix(&format!("{flag}=")))
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(arg("--name"), *m);
        assert_eq!(arg("--advertise-client-urls"), format!("http://{m}:2379"));
        let cluster = arg("--initial-cluster");
        for other in &members {
            assert!(
                cluster.contains(&format!("{other}=http://{other}:2380")),
                "{m}: --initial-cluster lacks {other}: {cluster}"
            );
        }
    }
    let mut zones: HashMap<String, HashSet<String>> = HashMap::new();
    let mut replicas: HashMap<String, usize> = HashMap::new();
    let mut gateways = 0;
    let mut pki: Option<(String, String)> = None;
    let mut tls_dirs: Vec<(String, String, bool)> = Vec::new();
    for (name, svc) in &services {
        for dep in svc
            .get("depends_on")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            let dep = dep.0.as_str().unwrap_or_default();
            assert!(
                services.contains_key(dep),
                "{name} depends on unknown {dep}"
            );
        }
        if svc.get("image").and_then(Value::as_str) != Some("starling:latest") {
            continue;
        }
        let command = strings(svc.get("command"));
        let sub: Vec<&str> = command.iter().map(String::as_str).collect();
        assert!(!sub.is_empty(), "{name} has no command");
        let text = help(&sub);
        if sub[0] == "ca" {
            // The one-shot service that writes the mesh's certificates.
            assert_eq!(sub.get(1).copied(), Some("mesh"), "{name}");
            for flag in command.iter().filter(|c| c.starts_with("--")) {
                assert!(text.contains(flag.as_str()), "{name}: unknown flag {flag}");
            }
            let dir = command
                .iter()
                .skip_while(|c| *c != "--dir")
                .nth(1)
                .cloned()
                .unwrap_or_default();
            pki = Some((name.clone(), dir));
            continue;
        }
        // Every STARLING_* variable is one the subcommand reads (STARLING_LOG is the log
        // filter every subcommand reads; see README).
        let vars = env(svc);
        for var in vars
            .keys()
            .filter(|v| v.starts_with("STARLING_") && *v != "STARLING_LOG")
        {
            assert!(
                text.contains(&format!("[env: {var}")),
                "{name}: `starling {}` has no {var}",
                sub.join(" ")
            );
        }
        for flag in command.iter().filter(|c| c.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or_default();
            assert!(text.contains(flag), "{name}: unknown flag {flag}");
        }
        assert_eq!(
            vars.get("STARLING_ETCD")
                .map(|v| v.split(',').map(String::from).collect()),
            Some(etcd_urls.clone()),
            "{name}: STARLING_ETCD lists every etcd member"
        );
        let seeds = vars.get("STARLING_REDIS").cloned().unwrap_or_default();
        assert!(
            !seeds.is_empty()
                && seeds
                    .split(',')
                    .all(|u| redis_nodes.iter().any(|n| u == format!("redis://{n}:6379"))),
            "{name}: STARLING_REDIS names nodes of the cluster: {seeds}"
        );
        assert_eq!(
            vars.get("STARLING_REDIS_CLUSTER").map(String::as_str),
            Some("true"),
            "{name}: STARLING_REDIS_CLUSTER"
        );
        assert!(
            vars.get("STARLING_KAFKA")
                .is_some_and(|v| v == "kafka:9092"),
            "{name}: STARLING_KAFKA"
        );
        let waits_for_pki = svc
            .get("depends_on")
            .and_then(|d| d.get("pki"))
            .and_then(|p| p.get("condition"))
            .and_then(Value::as_str)
            == Some("service_completed_successfully");
        tls_dirs.push((
            name.clone(),
            vars.get("STARLING_TLS_DIR").cloned().unwrap_or_default(),
            waits_for_pki,
        ));
        let health = strings(svc.get("healthcheck").and_then(|h| h.get("test")));
        assert_eq!(
            health.get(1).map(String::as_str),
            Some("starling"),
            "{name}: health check runs starling"
        );
        assert_eq!(health.get(2).map(String::as_str), Some("health"), "{name}");
        let probed = health.get(3).cloned().unwrap_or_default();
        match sub[0] {
            "serve" => {
                let kind = sub.get(1).copied().unwrap_or_default();
                assert!(KINDS.contains(&kind), "{name}: unknown service {kind}");
                *replicas.entry(kind.to_string()).or_default() += 1;
                zones
                    .entry(kind.to_string())
                    .or_default()
                    .insert(vars.get("STARLING_ZONE").cloned().unwrap_or_default());
                let listen = &vars["STARLING_LISTEN"];
                let advertise = &vars["STARLING_ADVERTISE"];
                assert_eq!(
                    advertise.split(':').next(),
                    Some(name.as_str()),
                    "{name} advertises its own name"
                );
                assert_eq!(
                    port(advertise),
                    port(listen),
                    "{name}: advertised port is the listened one"
                );
                assert_eq!(
                    port(&probed),
                    port(listen),
                    "{name}: health check probes the listened port"
                );
                assert!(
                    health
                        .windows(2)
                        .any(|w| w[0] == "--tls-dir" && w[1] == vars["STARLING_TLS_DIR"]),
                    "{name}: the health check presents a certificate: {health:?}"
                );
            }
            "gateway" => {
                gateways += 1;
                let published: Vec<String> = strings(svc.get("ports"));
                for var in ["STARLING_HTTP", "STARLING_GRPC"] {
                    let p = port(&vars[var]);
                    assert!(
                        published.iter().any(|m| m.ends_with(&format!(":{p}"))),
                        "{var} port {p} is published"
                    );
                }
                assert_eq!(
                    port(&probed),
                    port(&vars["STARLING_GRPC"]),
                    "gateway health check probes its gRPC port"
                );
            }
            other => panic!("{name}: unexpected subcommand {other}"),
        }
    }
    for kind in KINDS {
        assert!(
            replicas.get(kind).copied().unwrap_or(0) >= 2,
            "{kind} needs two replicas: {replicas:?}"
        );
        let kind_zones = &zones[kind];
        assert!(
            kind_zones.len() >= 2 && !kind_zones.contains(""),
            "{kind}'s replicas are in two zones: {kind_zones:?}"
        );
    }
    assert_eq!(gateways, 1);
    // Every process runs on mutual TLS with the files the pki service wrote.
    let (pki_name, pki_dir) = pki.expect("a service running `starling ca mesh`");
    for (name, dir, waits) in &tls_dirs {
        assert_eq!(
            dir, &pki_dir,
            "{name}: STARLING_TLS_DIR is where {pki_name} writes"
        );
        assert!(
            waits,
            "{name} starts after {pki_name} has written the certificates"
        );
    }
    // Kafka advertises what the services dial.
    let kafka = env(&services["kafka"]);
    assert!(kafka["KAFKA_ADVERTISED_LISTENERS"].contains("kafka:9092"));
    assert_eq!(
        kafka["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft mode"
    );
}

/// Prometheus, Grafana and Jaeger are wired to the program: Prometheus scrapes every
/// Starling container on the port its STARLING_METRICS names, Grafana and Prometheus read
/// the files under deploy/, and the processes send traces to Jaeger's OTLP port.
#[test]
fn observability_services_are_wired() {
    let services = compose();
    for s in ["prometheus", "grafana", "jaeger"] {
        assert!(services.contains_key(s), "{s} missing");
    }
    let config: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/prometheus/prometheus.yml"
        ))
        .expect("deploy/prometheus/prometheus.yml"),
    )
    .expect("valid YAML");
    let mut targets: Vec<String> = config["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| strings(sc.get("targets")))
        .collect();
    targets.sort();
    let mut expected: Vec<String> = services
        .iter()
        .filter(|(_, svc)| {
            svc.get("image").and_then(Value::as_str) == Some("starling:latest")
                && strings(svc.get("command")).first().map(String::as_str) != Some("ca")
        })
        .map(|(name, svc)| {
            let vars = env(svc);
            let metrics = vars
                .get("STARLING_METRICS")
                .unwrap_or_else(|| panic!("{name} serves no metrics (STARLING_METRICS)"));
            assert_eq!(
                vars.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
                Some("http://jaeger:4317"),
                "{name} sends its traces to Jaeger"
            );
            format!("{name}:{}", port(metrics))
        })
        .collect();
    expected.sort();
    assert_eq!(
        targets, expected,
        "Prometheus scrapes every Starling process"
    );

    let mounts = |name: &str| strings(services[name].get("volumes"));
    assert!(
        mounts("prometheus")
            .iter()
            .any(|m| m.starts_with("./deploy/prometheus:")),
        "prometheus reads deploy/prometheus"
    );
    let grafana = mounts("grafana");
    for dir in [
        "./deploy/grafana/provisioning:",
        "./deploy/grafana/dashboards:",
    ] {
        assert!(
            grafana.iter().any(|m| m.starts_with(dir)),
            "grafana mounts {dir}"
        );
    }
    assert_eq!(
        env(&services["jaeger"])
            .get("COLLECTOR_OTLP_ENABLED")
            .map(String::as_str),
        Some("true"),
        "jaeger accepts OTLP"
    );
}
