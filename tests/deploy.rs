//! The monitoring files under deploy/: Prometheus's configuration and alerting rules pass
//! `promtool` (Debian's prometheus package; scripts/install-deps.sh installs it), including
//! the rules' unit tests (each alert fires on the series that should fire it), and every
//! metric a rule or a Grafana panel reads is one the program exports.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) -> Option<String> {
    let bin = require_binary("promtool")?;
    let out = Command::new(bin)
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    Some(text)
}

#[test]
fn prometheus_config_and_alerting_rules_pass_promtool() {
    let Some(config) = promtool(&["check", "config", "prometheus.yml"]) else {
        return;
    };
    assert!(config.contains("SUCCESS: 6 rules found"), "{config}");
    let tests = promtool(&["test", "rules", "alerts.test.yml"]).expect("promtool");
    assert!(tests.contains("SUCCESS"), "{tests}");
}

/// Metric names the source registers (`counter!("…"`, `gauge!(…`, `histogram!(…`).
fn exported_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["src", "discovery/src", "services", "gateway/src"] {
        walk(&root().join(dir), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for kind in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(kind) {
                let rest = text[at + kind.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    if kind == "histogram!(" {
                        for suffix in ["_bucket", "_sum", "_count"] {
                            names.insert(format!("{name}{suffix}"));
                        }
                    }
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

/// `starling_…` names in an expression.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("starling_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

#[test]
fn rules_and_dashboards_read_metrics_the_program_exports() {
    let exported = exported_metrics();
    assert!(
        exported.contains("starling_server_requests_total"),
        "the scan finds the metrics: {exported:?}"
    );
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap(),
    )
    .expect("alerts.yml is YAML");
    let mut exprs: Vec<(String, String)> = rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            (
                format!("alert {}", r["alert"].as_str().unwrap_or("?")),
                r["expr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let dashboards = root().join("deploy/grafana/dashboards");
    for entry in std::fs::read_dir(&dashboards).expect("deploy/grafana/dashboards") {
        let path = entry.unwrap().path();
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        for panel in doc["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                exprs.push((
                    format!("panel {:?}", panel["title"].as_str().unwrap_or("?")),
                    target["expr"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    assert!(exprs.len() >= 10, "rules and panels found: {exprs:?}");
    for (what, expr) in exprs {
        let names = metrics_in(&expr);
        assert!(!names.is_empty(), "{what} reads no Starling metric: {expr}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{what} reads {name}, which the program does not export"
            );
        }
    }
}
