//! System tests across real network separation: four `quorate` daemons,
//! each in its own network namespace with its own swtpm, every peer link
//! through the test kit's fault-injecting proxy (see
//! `quorate_tests::netcluster`). Needs root, as CI has.
//!
//! `make test` runs the shortest (`progress_and_commit_latency_at_50ms_rtt`);
//! `make netfault` runs them all, one at a time. The tests in
//! `netfault_long` are left out of `make test` by name.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_tests::netcluster::{advertised, NetCluster};
use serde_json::json;
use std::time::{Duration, Instant};

const RTT_50: Duration = Duration::from_millis(50);
const JITTER: Duration = Duration::from_millis(5);

fn keygen(n: u32) -> serde_json::Value {
    let all: Vec<u32> = (1..=n).collect();
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": all,
        "threshold": 2, "scheme": "frost-secp256k1", "deadline_secs": 600}})
}

async fn submit(c: &NetCluster, id: u32) -> (u32, String) {
    let n = c.parties.len() as u32;
    let r = c.client(id).unwrap().submit_json(&keygen(n)).await;
    (
        id,
        r.unwrap_or_else(|e| panic!("submit to party {id}: {e}")).id,
    )
}

async fn submit_many(c: &NetCluster, ids: &[u32], per_party: usize) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for _ in 0..per_party {
        for id in ids {
            out.push(submit(c, *id).await);
        }
    }
    out
}

/// Waits until every receipt is executed at the party that took it, with a
/// verdict from every party.
async fn wait_executed(c: &NetCluster, receipts: &[(u32, String)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for (id, r) in receipts {
        loop {
            let v = c.client(*id).unwrap().operation(r).await.unwrap();
            if v["status"] == "executed" {
                assert_eq!(
                    v["verdicts"].as_array().unwrap().len(),
                    c.parties.len(),
                    "{v}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "operation {r} at party {id} was not executed: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn heights(c: &NetCluster, ids: &[u32]) -> Vec<u64> {
    c.statuses(ids)
        .await
        .unwrap()
        .iter()
        .map(|s| s.height)
        .collect()
}

async fn started(n: u32) -> NetCluster {
    let mut c = NetCluster::provision(n, "byzantine").await.unwrap();
    c.net().set_latency(RTT_50, JITTER);
    c.start_connected(Duration::from_secs(60)).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_commit_latency_at_50ms_rtt() {
    let c = started(4).await;
    // Every party knows its peers by their proxied addresses only.
    for s in c.statuses(&[1, 2, 3, 4]).await.unwrap() {
        for p in &s.peers {
            assert_eq!(p.address, advertised(p.party).to_string(), "{s:?}");
        }
    }
    let mut receipts = Vec::new();
    let mut latencies = Vec::new();
    for k in 0..12u32 {
        let id = k % 4 + 1;
        let t = Instant::now();
        let (id, r) = submit(&c, id).await;
        loop {
            let v = c.client(id).unwrap().operation(&r).await.unwrap();
            if v["decided"] == true {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{r} not decided: {v}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(t.elapsed());
        receipts.push((id, r));
    }
    receipts.extend(submit_many(&c, &[1, 2, 3, 4], 5).await);
    let view = c
        .wait_same_view(&[1, 2, 3, 4], Duration::from_secs(120))
        .await
        .unwrap();
    assert!(view.height > 0);
    assert_eq!(view.block_hashes.len() as u64, view.height);
    wait_executed(&c, &receipts, Duration::from_secs(60)).await;
    // Every consensus byte crossed the proxy: one connection per pair at
    // least, and nothing from an address that is no party's.
    let s = c.net().stats();
    assert!(s.connections >= 6, "{s:?}");
    assert!(s.bytes > 0 && s.chunks > 0, "{s:?}");
    assert_eq!(s.refused, 0, "{s:?}");
    latencies.sort();
    eprintln!(
        "commit latency at 50 ms RTT (submit -> decided, n = 4): median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

/// The tests `make test` leaves out (by this module's name): longer runs.
mod netfault_long {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_party_partitioned_away_catches_up_and_holds_the_same_view_after_healing() {
        let c = started(4).await;
        let mut receipts = submit_many(&c, &[1, 2, 3, 4], 2).await;
        let before = c
            .wait_same_view(&[1, 2, 3, 4], Duration::from_secs(120))
            .await
            .unwrap();
        // Party 4 is cut off; the other three (a quorum of 3 of 4) go on.
        c.net().isolate(4);
        receipts.extend(submit_many(&c, &[1, 2, 3], 4).await);
        let during = c
            .wait_same_view(&[1, 2, 3], Duration::from_secs(120))
            .await
            .unwrap();
        assert!(during.height > before.height, "{during:?} vs {before:?}");
        assert_eq!(
            heights(&c, &[4]).await,
            vec![before.height],
            "party 4 decided alone"
        );
        // Healed, it catches up to exactly what the others hold.
        let t = Instant::now();
        c.net().heal();
        let after = c
            .wait_same_view(&[1, 2, 3, 4], Duration::from_secs(180))
            .await
            .unwrap();
        let heal_time = t.elapsed();
        assert!(after.height >= during.height);
        assert_eq!(
            after.block_hashes[..during.block_hashes.len()],
            during.block_hashes[..]
        );
        // Its verdicts arrive too: every keygen executes.
        wait_executed(&c, &receipts, Duration::from_secs(120)).await;
        let s = c.net().stats();
        assert!(s.held > 0, "nothing waited at the cut: {s:?}");
        eprintln!(
            "time to heal (heal -> party 4 holds the others' view, {} blocks behind): {heal_time:?}",
            during.height - before.height
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_two_two_split_decides_nothing_and_heals_to_one_history() {
        let c = started(4).await;
        let mut receipts = submit_many(&c, &[1, 2, 3, 4], 1).await;
        let before = c
            .wait_same_view(&[1, 2, 3, 4], Duration::from_secs(120))
            .await
            .unwrap();
        c.net().partition(&[&[1, 2], &[3, 4]]);
        // Work is pending on both sides...
        receipts.extend(submit_many(&c, &[1, 3], 3).await);
        receipts.extend(submit_many(&c, &[2, 4], 1).await);
        // ...but neither pair is a quorum (3 of 4): no decision anywhere,
        // however long it waits.
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            assert_eq!(
                heights(&c, &[1, 2, 3, 4]).await,
                vec![before.height; 4],
                "a side of the split decided"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for (id, r) in &receipts[4..] {
            let v = c.client(*id).unwrap().operation(r).await.unwrap();
            assert_eq!(v["decided"], false, "{v}");
        }
        let t = Instant::now();
        c.net().heal();
        let after = c
            .wait_same_view(&[1, 2, 3, 4], Duration::from_secs(180))
            .await
            .unwrap();
        let heal_time = t.elapsed();
        // One history: the blocks before the split are still there, and
        // all four hold the same blocks after it.
        assert!(after.height > before.height, "{after:?}");
        assert_eq!(
            after.block_hashes[..before.block_hashes.len()],
            before.block_hashes[..]
        );
        wait_executed(&c, &receipts, Duration::from_secs(120)).await;
        eprintln!("time to heal a 2|2 split (heal -> one view at all four): {heal_time:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flapping_link_for_a_minute_loses_nothing() {
        use quorate_tests::proxy::Loss;
        let mut c = started(4).await;
        let base = c
            .wait_same_view(&[1, 2, 3, 4], Duration::from_secs(60))
            .await
            .unwrap();
        // Some loss on every link, as stalls and the odd reset.
        c.net().set_loss(Loss {
            stall_chance: 0.02,
            stall: Duration::from_millis(200),
            reset_chance: 0.0005,
        });
        // Party 4's link flaps: down 2 s, up 3 s, for a minute; every
        // third time it comes back its connections are reset as well.
        let mut receipts = Vec::new();
        let started_at = Instant::now();
        let mut cycle = 0u32;
        while started_at.elapsed() < Duration::from_secs(60) {
            c.net().isolate(4);
            receipts.push(submit(&c, cycle % 3 + 1).await);
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.net().heal();
            if cycle % 3 == 2 {
                for o in 1..=3 {
                    c.net().reset(4, o);
                }
            }
            receipts.push(submit(&c, 4).await);
            tokio::time::sleep(Duration::from_secs(3)).await;
            cycle += 1;
        }
        c.net().set_loss(Loss::default());
        let after = c
            .wait_same_view(&[1, 2, 3, 4], Duration::from_secs(180))
            .await
            .unwrap();
        assert!(after.height > base.height, "no progress in a minute");
        assert_eq!(
            after.block_hashes[..base.block_hashes.len()],
            base.block_hashes[..]
        );
        wait_executed(&c, &receipts, Duration::from_secs(120)).await;
        let s = c.net().stats();
        assert!(s.held > 0 && s.resets > 0 && s.stalls > 0, "{s:?}");
        assert!(cycle >= 10, "{cycle} flaps");
        for id in 1..=4 {
            assert!(c.running(id), "party {id} died:\n{}", c.log(id));
        }
        eprintln!(
            "flapping: {cycle} flaps, {} blocks, {} operations, proxy {s:?}",
            after.height - base.height,
            receipts.len()
        );
    }
}
