//! Consensus failures reach the operator three ways — metrics, events in
//! `GET /v1/events`, structured log lines — with real daemons: a
//! two-party cluster (byzantine: both are needed to decide) whose party 2
//! runs a modified executable. Party 1 refuses its attestation
//! (`peer_refused`), and an operation submitted to party 1 then waits
//! without a decision until the stall alert (`consensus_stalled`) fires.
//! The stall threshold is lowered to 3 s for the test through
//! `QUORATE_STALL_AFTER_SECS` in the daemons' environment.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_host::client::EventStream;
use quorate_tests::cluster::TestCluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The value of the sample `series` in the metrics `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Reads events until one of `kind` arrives; returns its data.
async fn wait_event(s: &mut EventStream, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, s.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within 60 s"))
            .unwrap()
            .expect("the stream closed");
        if e.event == kind {
            return e.data;
        }
    }
}

#[test]
fn a_refused_peer_and_a_stall_are_metrics_events_and_log_lines() {
    // The daemons inherit it; set before any thread of this test starts.
    std::env::set_var(quorate_host::daemon::health::STALL_AFTER_ENV, "3");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let mut c = TestCluster::provision_attested(2, "byzantine").unwrap();
    let modified = c.modified_binary().unwrap();
    c.parties[1].binary = Some(modified);
    c.start_all().unwrap();
    c.wait_api(1, Duration::from_secs(30)).await.unwrap();
    let p1 = c.client(1).unwrap();
    // From the start of the stream: alerts before the first block are "0:N".
    let mut events = p1.events(Some("0:0")).await.unwrap();

    let refused = wait_event(&mut events, "peer_refused").await;
    assert_eq!(refused["data"]["peer"], 2, "{refused}");
    assert_eq!(refused["data"]["scope"], "local");
    assert_eq!(refused["data"]["severity"], "warning");
    let reason = refused["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("executable"), "{reason}");
    let metrics = p1.metrics().await.unwrap();
    assert!(
        sample(&metrics, "quorate_peer_refusals_total{peer=\"2\"}").unwrap() >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "quorate_peer_attested{peer=\"2\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&metrics, "quorate_attestation_enforced"), Some(1.0));

    // Work that cannot be decided without party 2.
    let r = p1
        .submit_json(&json!({"type": "create_session", "session": {"kind": "keygen",
            "participants": [1, 2], "threshold": 2, "scheme": "frost-secp256k1", "deadline_secs": 600}}))
        .await
        .unwrap();
    let stalled = wait_event(&mut events, "consensus_stalled").await;
    assert_eq!(stalled["data"]["severity"], "critical", "{stalled}");
    assert!(
        stalled["data"]["outbox"].as_u64().unwrap() >= 1,
        "{stalled}"
    );
    assert!(
        stalled["data"]["seconds_without_decision"]
            .as_u64()
            .unwrap()
            >= 3,
        "{stalled}"
    );
    assert_eq!(p1.operation(&r.id).await.unwrap()["status"], "pending");
    let metrics = p1.metrics().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = sample(&metrics, "quorate_last_decision_timestamp_seconds").unwrap();
    assert!(now - last >= 3.0, "last decision {last}, now {now}");
    assert!(sample(&metrics, "quorate_outbox_operations").unwrap() >= 1.0);

    // The same failures as structured log lines.
    let log = c.log(1);
    for kind in ["peer_refused", "consensus_stalled"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("alert=\"{kind}\"")) && l.contains("event_id=")),
            "no {kind} log line:\n{log}"
        );
    }
}
