//! System tests: real `quorate` daemons, each with its own swtpm, on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use quorate_tests::cluster::TestCluster;
use serde_json::json;
use std::time::Duration;

fn keygen(participants: &[u32]) -> serde_json::Value {
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": participants,
        "threshold": 2, "scheme": "frost-secp256k1", "deadline_secs": 600}})
}

async fn submit_many(c: &TestCluster, ids: &[u32], per_party: usize) -> Vec<(u32, String)> {
    let mut receipts = Vec::new();
    for k in 0..per_party {
        for id in ids {
            let all: Vec<u32> = (1..=c.parties.len() as u32).collect();
            let r = c.client(*id).unwrap().submit_json(&keygen(&all)).await;
            let r = r.unwrap_or_else(|e| panic!("submit {k} to party {id}: {e}"));
            receipts.push((*id, r.id));
        }
    }
    receipts
}

async fn assert_all_executed(c: &TestCluster, receipts: &[(u32, String)]) {
    for (id, r) in receipts {
        let v = c.client(*id).unwrap().operation(r).await.unwrap();
        assert_eq!(v["status"], "executed", "operation {r} at party {id}: {v}");
        assert_eq!(v["verdicts"].as_array().unwrap().len(), c.parties.len(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parties_agree_on_hundreds_of_operations() {
    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    // 300 key generations, each approved by all three parties: 1,200
    // decided operations in all.
    let receipts = submit_many(&c, &[1, 2, 3], 100).await;
    let s = c.wait_quiescent(&[1, 2, 3], Duration::from_secs(240)).await.unwrap();
    assert!(s[0].height > 0);
    assert_all_executed(&c, &receipts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_parties_lose_nothing_when_one_is_killed_mid_load() {
    let mut c = TestCluster::provision(4, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=4 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let mut receipts = submit_many(&c, &[1, 2, 3, 4], 25).await;
    // Party 4 dies without warning while operations are in flight...
    c.kill9(4).unwrap();
    // ...and the other three (a quorum of 3 of 4) keep deciding.
    receipts.extend(submit_many(&c, &[1, 2, 3], 25).await);
    let before = c.wait_quiescent(&[1, 2, 3], Duration::from_secs(240)).await.unwrap();
    // Party 4 restarts from its data dir, replays, and catches up.
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(30)).await.unwrap();
    let after = c.wait_quiescent(&[1, 2, 3, 4], Duration::from_secs(240)).await.unwrap();
    assert!(after[3].height >= before[0].height);
    // Nothing any party accepted was lost, party 4's included.
    assert_all_executed(&c, &receipts).await;
    assert!(!c.log(4).contains("consensus halted"), "{}", c.log(4));
}
