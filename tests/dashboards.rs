//! The operator's view shipped in `contrib/`: the Prometheus alerting rules
//! pass `promtool check rules` and their unit tests, and every metric the
//! rules and the Grafana dashboard query is one the running daemons export
//! (a syncd pair scraped on loopback; syncd-proxy with built-in VRRP scraped
//! in a network namespace). A renamed metric fails here, not on a pager.

mod common;
use syncd_testkit::netns;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netns::{can_run, get, have, serial, wait_for, Lan};

const SYNCD: &str = env!("CARGO_BIN_EXE_syncd");

fn contrib(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(p)
}

#[test]
fn alert_rules_pass_promtool() {
    if !have("promtool", "alert_rules_pass_promtool") {
        return;
    }
    for args in [
        vec!["check", "rules", "syncd-alerts.yml"],
        vec!["test", "rules", "syncd-alerts.test.yml"],
    ] {
        let o = Command::new("promtool")
            .args(&args)
            .current_dir(contrib("prometheus"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Identifiers in `text` that name one of our metrics.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (text[i..].starts_with("syncd_") || text[i..].starts_with("vrrp_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| i + n);
            into.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
}

/// Every `expr` string in the dashboard JSON.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Metric names a scrape exposes: every `# TYPE` family and its samples
/// (a histogram's `_bucket`, `_sum`, `_count` included).
fn exported(scrape: &str, into: &mut BTreeSet<String>) {
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (w.next(), w.next()) {
                into.insert(name.to_string());
                if kind == "histogram" {
                    for s in ["_bucket", "_sum", "_count"] {
                        into.insert(format!("{name}{s}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            into.insert(line[..end].to_string());
        }
    }
}

const PROXY_TOML: &str = r#"[global]
workers = 1
access_log = false

[admin]
listen = "127.0.0.1:9901"

[[listener]]
listen = "127.0.0.1:8080"
upstream = "web"

[[upstream]]
name = "web"

[[upstream.server]]
addr = "127.0.0.1:9000"

[[vrrp]]
name = "VI_LB"
interface = "eth0"
vrid = 52
priority = 100
advert_int = 1
version = 3
virtual_ips = ["VIP/24"]
"#;

#[test]
fn every_metric_in_rules_and_dashboard_is_exported() {
    let name = "every_metric_in_rules_and_dashboard_is_exported";
    if !can_run(name) {
        return;
    }
    let proxy = Path::new(SYNCD).with_file_name("syncd-proxy");
    if !proxy.exists() {
        syncd_testkit::skip::skip(name, "syncd-proxy is not built (run the workspace's tests)");
        return;
    }

    // What the rules and the dashboard ask for.
    let mut wanted = BTreeSet::new();
    let rules = std::fs::read_to_string(contrib("prometheus/syncd-alerts.yml")).unwrap();
    metric_names(&rules, &mut wanted);
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana/syncd-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut queries = Vec::new();
    exprs(&dash, &mut queries);
    assert!(queries.len() >= 20, "dashboard queries: {queries:?}");
    for q in &queries {
        metric_names(q, &mut wanted);
    }
    // The families an operator of the pair must see are all there.
    for must in [
        "syncd_lag_seconds",
        "syncd_lag_operations",
        "syncd_connected",
        "syncd_leader",
        "syncd_generation",
        "syncd_conflicts_kept_total",
        "vrrp_state",
        "vrrp_priority",
        "syncd_proxy_upstream_up",
        "syncd_proxy_responses_total",
    ] {
        assert!(wanted.contains(must), "rules/dashboard never use {must}");
    }

    // What the daemons export: a replicating pair on loopback ...
    let mut seen = BTreeSet::new();
    let mut pair = common::Pair::new();
    pair.start_standby();
    pair.start_primary();
    pair.wait_live();
    exported(&pair.admin_get("/metrics"), &mut seen);

    // ... and syncd-proxy with its built-in VRRP on a namespace's interface.
    let _g = serial();
    let mut lan = Lan::new("dash", 1);
    let cfg = lan.syncd_config(0, &PROXY_TOML.replace("VIP", &lan.vip()));
    lan.start(
        0,
        "proxy",
        proxy.to_str().unwrap(),
        &["--config", cfg.to_str().unwrap()],
    );
    let mut scrape = None;
    wait_for(Duration::from_secs(10), || {
        scrape = get(lan.ns(0), "127.0.0.1:9901", "/metrics")
            .filter(|(code, m)| *code == 200 && m.contains("vrrp_state{"))
            .map(|(_, m)| m);
        scrape.is_some()
    });
    let scrape = scrape.unwrap_or_else(|| {
        lan.dump_logs();
        panic!("no /metrics with VRRP state from syncd-proxy")
    });
    exported(&scrape, &mut seen);

    let missing: Vec<_> = wanted.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "metrics used by contrib/ but exported by no daemon: {missing:?}\nexported: {seen:?}"
    );
}
