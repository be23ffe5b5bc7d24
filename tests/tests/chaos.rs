//! The process-level fault suite: real daemons, each with its own swtpm,
//! under a steady load from API clients, while a random party is killed
//! with SIGKILL every few seconds (mid-write of a block as often as not)
//! and started again. Afterwards every operation the API accepted is
//! executed exactly once, nothing was signed twice, and every party holds
//! the same chain, state root and audit log.
//!
//! `make test` runs 4 cycles; `make chaos` runs 50 (`QUORATE_CHAOS_CYCLES`).
//! `QUORATE_CHAOS_SEED` replays a schedule.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine as _;
use quorate_firmware::audit::entry::AuditEntry;
use quorate_tests::cluster::TestCluster;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small deterministic generator for the kill schedule (xorshift64*).
struct Schedule(u64);

impl Schedule {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// A key generation whose body is unique to `k` (its deadline), so two
/// decided copies of one accepted request would show as equal op bytes.
fn keygen(n: u32, k: u32) -> serde_json::Value {
    let all: Vec<u32> = (1..=n).collect();
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": all,
        "threshold": 2, "scheme": "frost-secp256k1", "deadline_secs": 600 + k}})
}

/// Every audit entry of party `id`'s log, decoded, with its leaf hash.
async fn audit_log(c: &TestCluster, id: u32) -> Vec<(AuditEntry, String)> {
    let client = c.client(id).unwrap();
    let mut out = Vec::new();
    loop {
        let start = out.len() as u64;
        let page = match client.log_entries(start, start + 256).await {
            Ok(p) => p,
            // Past the end: the log is read.
            Err(_) => break,
        };
        let entries = page["entries"].as_array().unwrap();
        if entries.is_empty() {
            break;
        }
        for e in entries {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(e["entry"].as_str().unwrap())
                .unwrap();
            out.push((
                AuditEntry::decode(&bytes).unwrap(),
                e["leaf_hash"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_parties_under_load_loses_nothing_and_duplicates_nothing() {
    let cycles: u32 = std::env::var("QUORATE_CHAOS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("QUORATE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("chaos: {cycles} cycles, QUORATE_CHAOS_SEED={seed}");
    let n = 4u32;
    let all: Vec<u32> = (1..=n).collect();
    let mut c = TestCluster::provision(n, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in &all {
        c.wait_api(*id, Duration::from_secs(30)).await.unwrap();
    }

    // The load: one client per party, each submitting unique key
    // generations back to back; a refused or failed request (its party is
    // down) is simply not counted as accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let mut load = Vec::new();
    for id in all.clone() {
        let client = c.client(id).unwrap();
        let (stop, accepted) = (stop.clone(), accepted.clone());
        load.push(tokio::spawn(async move {
            let mut k = id * 10_000;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                match client.submit_json(&keygen(n, k)).await {
                    Ok(r) => accepted.lock().unwrap().push((id, r.id)),
                    Err(e) => {
                        // Only a party that is down (or busy: 429) may refuse.
                        let text = e.to_string();
                        assert!(!text.contains("422") && !text.contains("400"), "{text}");
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let mut rng = Schedule(seed);
    let mut kills: BTreeMap<u32, u32> = BTreeMap::new();
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.next(2_000))).await;
        let victim = 1 + rng.next(u64::from(n)) as u32;
        c.kill9(victim).unwrap();
        *kills.entry(victim).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(200 + rng.next(1_500))).await;
        c.start(victim).unwrap();
        c.wait_api(victim, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: party {victim} did not come back: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    println!(
        "chaos: kills per party {kills:?}, {} accepted",
        accepted.len()
    );
    assert!(!accepted.is_empty());

    let s = c
        .wait_quiescent(&all, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(s.iter().all(|x| x.state_root == s[0].state_root));

    // Every accepted operation executed, at the party that accepted it.
    let mut accepted_ops = HashSet::new();
    for (id, receipt) in &accepted {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = c.client(*id).unwrap().operation(receipt).await.unwrap();
            if v["status"] == "executed" {
                accepted_ops.insert(v["op_id"].as_str().unwrap().to_string());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "operation {receipt} at party {id}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(accepted_ops.len(), accepted.len(), "two receipts, one op");

    // One more block, so the entries of the last one are in every log
    // (a block's entries wait for the next block's certificate).
    c.client(1)
        .unwrap()
        .submit_json(&keygen(n, 1))
        .await
        .unwrap();
    c.wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();

    // The same audit log everywhere.
    let logs: Vec<Vec<(AuditEntry, String)>> = {
        let mut v = Vec::new();
        for id in &all {
            v.push(audit_log(&c, *id).await);
        }
        v
    };
    assert!(!logs[0].is_empty());
    for (i, l) in logs.iter().enumerate() {
        let a: Vec<&String> = l.iter().map(|(_, h)| h).collect();
        let b: Vec<&String> = logs[0].iter().map(|(_, h)| h).collect();
        assert_eq!(a, b, "party {} has another log", i + 1);
    }

    // Exactly once: no operation's bytes were decided twice (each accepted
    // body is unique), every accepted one is in the log, and nobody
    // equivocated (no evidence was committed).
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut logged_ops = HashSet::new();
    for (e, _) in &logs[0] {
        match e {
            AuditEntry::Operation(o) => {
                *seen.entry(hex::encode(o.op_digest.as_bytes())).or_default() += 1;
                logged_ops.insert(hex::encode(o.op.0.as_bytes()));
            }
            AuditEntry::Equivocation(q) => panic!("equivocation committed: {q:?}"),
            _ => {}
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, k)| **k > 1).collect();
    assert!(twice.is_empty(), "decided more than once: {twice:?}");
    let missing: Vec<_> = accepted_ops.difference(&logged_ops).collect();
    assert!(
        missing.is_empty(),
        "accepted but not in the log: {missing:?}"
    );
    for id in &all {
        let log = c.log(*id);
        assert!(!log.contains("consensus halted"), "party {id}: {log}");
        assert!(!log.contains("double signing detected"), "party {id}");
    }
}
