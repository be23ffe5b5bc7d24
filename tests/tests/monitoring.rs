//! The monitoring shipped in deploy/: `promtool check rules` and the rules'
//! unit tests (`promtool test rules`: each alert fires on its failure and
//! not on a healthy neighbour), and every metric the rules and the Grafana
//! dashboard name is one the daemon exports — a rule over a misspelt
//! metric would never fire, and nothing else would notice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use quorate_host::daemon::metrics::Metrics;
use quorate_host::daemon::status::{PeerStatus, StatusView};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// promtool: `$PROMTOOL` (set by `make test`), target/tools/promtool, or PATH.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool");
    if local.exists() {
        return local;
    }
    PathBuf::from("promtool")
}

fn promtool_ok(args: &[&str]) -> String {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(deploy())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): `make tools` installs it",
                tool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let check = promtool_ok(&["check", "rules", "quorate.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let rules = std::fs::read_to_string(deploy().join("quorate.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy().join("quorate.rules.test.yml")).unwrap();
    // Every alert has at least one unit test.
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no promtool unit test"
            );
        }
    }
    let test = promtool_ok(&["test", "rules", "quorate.rules.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
    // The example scrape configuration, with its installed paths pointed
    // at this tree (the token file must exist for promtool).
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("quorate.token");
    std::fs::write(&token, "t\n").unwrap();
    let config = std::fs::read_to_string(deploy().join("prometheus.yml"))
        .unwrap()
        .replace("/etc/prometheus/quorate.token", token.to_str().unwrap())
        .replace(
            "/usr/share/quorate/prometheus/quorate.rules.yml",
            deploy().join("quorate.rules.yml").to_str().unwrap(),
        );
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let checked = promtool_ok(&["check", "config", path.to_str().unwrap()]);
    assert!(checked.contains("15 rules found"), "{checked}");
}

/// The metric names in the exposition `text` (histograms with their series).
fn exported() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let status = StatusView {
        party: 1,
        cluster: "c".into(),
        height: 1,
        state_root: "r".into(),
        peers_connected: 1,
        peers_attested: 1,
        peers: vec![PeerStatus {
            party: 2,
            address: "127.0.0.1:1".into(),
            connected: true,
            attested: true,
            attestation: String::new(),
        }],
        last_decision: None,
        outbox: 0,
        pid: 1,
        updated_ms: 0,
    };
    let text = Metrics::new(dir.path()).render(&status);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            names.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        }
    }
    names
}

/// The `quorate_*` identifiers in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("quorate_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn rules_and_dashboard_use_only_exported_metrics() {
    let have = exported();
    assert!(have.contains("quorate_sign_refusals_total"), "{have:?}");
    let rules = std::fs::read_to_string(deploy().join("quorate.rules.yml")).unwrap();
    // The rules file names its own files (quorate.rules.test.yml): only
    // identifiers in expressions count, i.e. lines outside comments.
    let exprs: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let dashboard = std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut dash_exprs = String::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            dash_exprs.push_str(t["expr"].as_str().unwrap());
            dash_exprs.push('\n');
        }
    }
    let used_rules = referenced(&exprs);
    let used_dash = referenced(&dash_exprs);
    assert!(
        used_rules.len() >= 15 && used_dash.len() >= 20,
        "{used_rules:?} {used_dash:?}"
    );
    for (what, used) in [("rules", &used_rules), ("dashboard", &used_dash)] {
        let missing: Vec<&String> = used.iter().filter(|m| !have.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "the {what} use metrics the daemon does not export: {missing:?}"
        );
    }
}
