//! Nothing accepted is lost (issue 16, point 1), with real daemons, each
//! with its own swtpm: a party whose outbox is full answers 429 with
//! `Retry-After` and accepts nothing, every 202 it gave is executed, and a
//! bulk POST's operations are accepted all or none and all executed.
//!
//! No timing: the outbox is filled while the party is alone (a quorum of 3
//! of 3 cannot decide), so exactly `party.max_outbox_ops` operations fit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use hyper::{Method, StatusCode};
use quorate_tests::cluster::TestCluster;
use serde_json::{json, Value};
use std::time::Duration;

/// The outbox bound of party 1.
const LIMIT: usize = 8;

fn keygen() -> Value {
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": [1, 2, 3],
        "threshold": 2, "scheme": "frost-secp256k1", "deadline_secs": 600}})
}

/// Sets `key = value` in party `id`'s `[party]` table.
fn set_party_option(c: &TestCluster, id: u32, line: &str) {
    let path = &c.parties[id as usize - 1].config;
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.replacen("[party]\n", &format!("[party]\n{line}\n"), 1);
    std::fs::write(path, text).unwrap();
}

/// One metric's value at party `id`.
async fn metric(c: &TestCluster, id: u32, series: &str) -> f64 {
    let text = c.client(id).unwrap().metrics().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

async fn outbox(c: &TestCluster, id: u32) -> usize {
    c.client(id).unwrap().status().await.unwrap().outbox
}

/// POSTs `body` to `path` at party `id`: status, headers, JSON body.
async fn post(
    c: &TestCluster,
    id: u32,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, Value) {
    let (status, head, bytes) = c
        .client(id)
        .unwrap()
        .raw_full(
            Method::POST,
            path,
            Some(serde_json::to_vec(body).unwrap()),
            headers,
        )
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, head, v)
}

/// A 429 as the API answers backpressure.
fn assert_backpressure(status: StatusCode, head: &hyper::HeaderMap, v: &Value) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let after: u64 = head
        .get(hyper::header::RETRY_AFTER)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {head:?}"));
    assert!(after >= 1);
    assert_eq!(v["status"], 429, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("max_outbox_ops is 8"), "{reason}");
}

/// Every receipt executed at party 1 with the three parties' verdicts.
async fn assert_all_executed(c: &TestCluster, receipts: &[String]) {
    for r in receipts {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let v = c.client(1).unwrap().operation(r).await.unwrap();
            let verdicts = v["verdicts"].as_array().map_or(0, Vec::len);
            if v["status"] == "executed" && verdicts == 3 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "operation {r}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_answers_429_and_every_accepted_operation_executes() {
    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    set_party_option(&c, 1, &format!("max_outbox_ops = {LIMIT}"));
    // Party 1 alone: nothing is decided, so its outbox only fills.
    c.start(1).unwrap();
    c.wait_api(1, Duration::from_secs(30)).await.unwrap();
    let key = [("Idempotency-Key", "first")];
    let (status, _, first) = post(&c, 1, "/v1/operations", &keygen(), &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let mut accepted = vec![first["id"].as_str().unwrap().to_string()];

    // A burst of 20 at once: exactly the room left accepted, the rest
    // refused.
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let client = c.client(1).unwrap();
            tokio::spawn(async move {
                let body = serde_json::to_vec(&keygen()).unwrap();
                client
                    .raw_full(Method::POST, "/v1/operations", Some(body), &[])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut refused = 0;
    for task in burst {
        let (status, head, bytes) = task.await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        if status == StatusCode::ACCEPTED {
            accepted.push(v["id"].as_str().unwrap().to_string());
        } else {
            assert_backpressure(status, &head, &v);
            refused += 1;
        }
    }
    assert_eq!((accepted.len(), refused), (LIMIT, 20 - (LIMIT - 1)));
    assert_eq!(outbox(&c, 1).await, LIMIT);

    // A bulk request while full: refused whole, nothing of it queued.
    let two = json!({"operations": [keygen(), keygen()]});
    let (status, head, v) = post(&c, 1, "/v1/operations/bulk", &two, &[]).await;
    assert_backpressure(status, &head, &v);
    assert_eq!(outbox(&c, 1).await, LIMIT);
    assert_eq!(
        metric(&c, 1, "quorate_backpressure_refused_operations_total").await,
        (refused + 2) as f64
    );
    assert_eq!(metric(&c, 1, "quorate_outbox_limit").await, LIMIT as f64);
    // A retry of an accepted request is not refused: its first receipt.
    let (status, _, again) = post(&c, 1, "/v1/operations", &keygen(), &key).await;
    assert_eq!((status, &again["id"]), (StatusCode::ACCEPTED, &first["id"]));
    assert_eq!(outbox(&c, 1).await, LIMIT);

    // The others come up: everything accepted is decided and executed.
    c.start(2).unwrap();
    c.start(3).unwrap();
    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(240))
        .await
        .unwrap();
    assert_all_executed(&c, &accepted).await;
    // With room again, the API accepts what it refused.
    let (status, _, v) = post(&c, 1, "/v1/operations/bulk", &two, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let ids: Vec<String> = serde_json::from_value(v["ids"].clone()).unwrap();
    assert_all_executed(&c, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_post_is_accepted_whole_and_all_its_operations_execute() {
    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let path = "/v1/operations/bulk";
    // All or nothing: the first bad operation is named, nothing queued.
    let mut bad = keygen();
    bad["session"].as_object_mut().unwrap().remove("scheme");
    let (status, _, v) = post(&c, 1, path, &json!({"operations": [keygen(), bad]}), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "operations[1].scheme", "{v}");
    let mut stranger = keygen();
    stranger["session"]["participants"] = json!([1, 2, 9]);
    let body = json!({"operations": [keygen(), keygen(), stranger]});
    let (status, _, v) = post(&c, 1, path, &body, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "operations[2].session.participants", "{v}");
    assert_eq!(outbox(&c, 1).await, 0);

    // Five in one request, with a key covering the request: five receipts
    // in order; the same request again gets the same five.
    let five = json!({"operations": vec![keygen(); 5]});
    let key = [("Idempotency-Key", "bulk-1")];
    let (status, _, v) = post(&c, 1, path, &five, &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let ids: Vec<String> = serde_json::from_value(v["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 5);
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 5, "{ids:?}");
    let (status, _, again) = post(&c, 1, path, &five, &key).await;
    assert_eq!((status, &again["ids"]), (StatusCode::ACCEPTED, &v["ids"]));
    // The key with other operations is refused.
    let four = json!({"operations": vec![keygen(); 4]});
    let (status, _, v) = post(&c, 1, path, &four, &key).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "Idempotency-Key", "{v}");

    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(240))
        .await
        .unwrap();
    assert_all_executed(&c, &ids).await;
}
