//! The party API against its own contract: schemathesis (PyPI) generates
//! requests from docs/openapi.json — valid ones, invalid ones, undeclared
//! methods, missing auth — against a live one-party cluster (a real daemon
//! with its own swtpm) and checks every answer: no 5xx, status codes,
//! content types, headers and bodies as the document declares, invalid
//! input refused, valid input accepted (except where tests/schemathesis.toml
//! names a rule OpenAPI cannot state). Then the daemon must still run and
//! have answered no 5xx (its own metrics).
//!
//! `GET /v1/events` is left out: a Server-Sent Events stream does not end,
//! so a generated request would only time out; tests/tests/api.rs covers it.
//!
//! Bounded: `QUORATE_SCHEMATHESIS_EXAMPLES` (default 30) examples per
//! operation, seed `QUORATE_SCHEMATHESIS_SEED` (default 1, so a failure
//! reproduces); about 15 s of schemathesis on 2 cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use quorate_tests::cluster::TestCluster;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// schemathesis: `$SCHEMATHESIS` (set by `make test`), the venv `make
/// tools` makes, or `st` on PATH.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/schemathesis-venv/bin/schemathesis");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("st")
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_conforms_to_its_openapi_document() {
    let mut cluster = TestCluster::provision(1, "byzantine").unwrap();
    cluster.start_all().unwrap();
    cluster.wait_api(1, Duration::from_secs(30)).await.unwrap();
    let c = cluster.client(1).unwrap();
    // Real data behind the routes: a decided operation, a session, audit
    // entries (and, with a quorum of one, certified checkpoints).
    let r = c
        .submit_json(&json!({"type": "create_session", "session": {"kind": "keygen",
            "participants": [1], "threshold": 1, "scheme": "frost-secp256k1", "deadline_secs": 600}}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.operation(&r.id).await.unwrap()["status"] == "pending" {
        assert!(Instant::now() < deadline, "the keygen was not decided");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let token = std::fs::read_to_string(cluster.parties[0].data_dir.join("api.token")).unwrap();
    let tool = schemathesis();
    let out = Command::new(&tool)
        // Its cache (.schemathesis/) goes to the cluster's temp dir.
        .current_dir(cluster.dir())
        .arg("--config-file")
        .arg(root.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(root.join("docs/openapi.json"))
        .arg("--url")
        .arg(format!("http://{}", cluster.parties[0].api))
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .args(["--checks", "all", "--exclude-path", "/v1/events"])
        .args([
            "--max-examples",
            &env_or("QUORATE_SCHEMATHESIS_EXAMPLES", 30).to_string(),
        ])
        .args([
            "--seed",
            &env_or("QUORATE_SCHEMATHESIS_SEED", 1).to_string(),
        ])
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--report", "junit", "--report-dir"])
        .arg(cluster.dir().join("schemathesis-report"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): `make tools` installs schemathesis",
                tool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found disagreements between the API and docs/openapi.json:\n{text}\ndaemon log:\n{}",
        cluster.log(1)
    );
    // It did test the operations (a run that selected nothing passes too).
    assert!(text.contains("Tested: 14"), "{text}");
    assert!(cluster.running(1), "the daemon died:\n{}", cluster.log(1));
    assert!(c.healthy().await);
    let metrics = c.metrics().await.unwrap();
    let server_errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quorate_api_requests_total{class=\"5xx\"} "))
        .expect("the 5xx counter");
    assert_eq!(server_errors, "0", "the daemon answered 5xx:\n{metrics}");
    let client_errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quorate_api_requests_total{class=\"4xx\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        client_errors > 100,
        "schemathesis sent invalid requests: {client_errors}"
    );
}
