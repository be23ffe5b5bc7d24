//! System tests: real `quorate` daemons, each with its own swtpm, on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

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

/// Every receipt executed with every party's verdict recorded. A verdict
/// that arrives after the decision is still recorded, so on a busy machine
/// the last one may land a few blocks later: poll for it.
async fn assert_all_executed(c: &TestCluster, receipts: &[(u32, String)]) {
    for (id, r) in receipts {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v = c.client(*id).unwrap().operation(r).await.unwrap();
            let verdicts = v["verdicts"].as_array().map_or(0, Vec::len);
            if v["status"] == "executed" && verdicts == c.parties.len() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operation {r} at party {id}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
    let s = c
        .wait_quiescent(&[1, 2, 3], Duration::from_secs(240))
        .await
        .unwrap();
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
    let before = c
        .wait_quiescent(&[1, 2, 3], Duration::from_secs(240))
        .await
        .unwrap();
    // Party 4 restarts from its data dir, replays, and catches up.
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(30)).await.unwrap();
    let after = c
        .wait_quiescent(&[1, 2, 3, 4], Duration::from_secs(240))
        .await
        .unwrap();
    assert!(after[3].height >= before[0].height);
    // Nothing any party accepted was lost, party 4's included.
    assert_all_executed(&c, &receipts).await;
    assert!(!c.log(4).contains("consensus halted"), "{}", c.log(4));
    // The restarted daemon stopped the swtpm its killed predecessor left.
    assert!(
        c.log(4).contains("a crashed daemon left running"),
        "{}",
        c.log(4)
    );
}

/// Forgets party `id`'s sign-guard state in its (stopped) daemon's store.
fn clear_guard(c: &TestCluster, id: u32) {
    let dir = &c.parties[id as usize - 1].data_dir;
    let identity = quorate_host::store::Store::open_read_only(dir)
        .unwrap()
        .meta("identity")
        .unwrap()
        .unwrap();
    let store =
        quorate_host::store::Store::open(dir, std::str::from_utf8(&identity).unwrap()).unwrap();
    store.clear_guard().unwrap();
    assert!(store.guard().unwrap().is_none());
}

/// Waits until party `id`'s log holds `needle` at least `count` times.
async fn wait_log(c: &TestCluster, id: u32, needle: &str, count: usize, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while c.log(id).matches(needle).count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "party {id} did not log {needle:?} {count} times: {}",
            c.log(id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The start-up double-sign check (ADR-051), on by default: a party whose
/// sign-guard state was lost signs nothing after its start until the
/// others decide heights without it (or, when nothing is decided, until
/// its idle time passes), then takes part again; nothing accepted is lost.
async fn lost_sign_guard(n: u32, fault_model: &str) {
    let mut c = TestCluster::provision(n, fault_model).unwrap();
    c.start_all().unwrap();
    let all: Vec<u32> = (1..=n).collect();
    let others: Vec<u32> = (1..n).collect();
    for id in 1..=n {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let mut receipts = submit_many(&c, &all, 2).await;
    c.wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();
    const WATCHING: &str = "double-sign check: signing nothing";

    // Under load: the others decide heights without the last party, which watches
    // them and then signs again.
    c.stop(n).unwrap();
    clear_guard(&c, n);
    c.start(n).unwrap();
    c.wait_api(n, Duration::from_secs(30)).await.unwrap();
    wait_log(&c, n, WATCHING, 1, Duration::from_secs(10)).await;
    receipts.extend(submit_many(&c, &others, 2).await);
    wait_log(
        &c,
        n,
        "double-sign check passed: signing resumes",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert!(c.log(n).contains("signature withheld"), "{}", c.log(n));
    let metrics = c.client(n).unwrap().metrics().await.unwrap();
    let withheld: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quorate_signatures_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no withheld-signature count: {metrics}"));
    assert!(withheld > 0, "{metrics}");
    receipts.extend(submit_many(&c, &[n], 2).await);
    c.wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();

    // Idle: nothing is decided, so no copy of the last party signs either; the
    // watch ends after its idle time (10 s by default).
    c.stop(n).unwrap();
    clear_guard(&c, n);
    c.start(n).unwrap();
    c.wait_api(n, Duration::from_secs(30)).await.unwrap();
    wait_log(&c, n, WATCHING, 2, Duration::from_secs(10)).await;
    wait_log(
        &c,
        n,
        "double-sign check passed (nothing decided while watching)",
        1,
        Duration::from_secs(30),
    )
    .await;
    receipts.extend(submit_many(&c, &[n, 1], 2).await);
    c.wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();
    assert_all_executed(&c, &receipts).await;
    assert!(!c.log(n).contains("consensus halted"), "{}", c.log(n));
    assert!(
        !c.log(n).contains("double signing detected"),
        "{}",
        c.log(n)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_lost_its_sign_guard_watches_before_it_signs_again() {
    lost_sign_guard(4, "byzantine").await;
}

/// The same with `majority` (a quorum of 2 of 3), where the watching
/// party's own placeholder precommit completes its local quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_party_that_lost_its_sign_guard_watches_before_it_signs_again() {
    lost_sign_guard(3, "majority").await;
}

fn peer_specs(c: &TestCluster, except: u32) -> Vec<quorate_host::net::PeerSpec> {
    c.parties
        .iter()
        .filter(|p| p.id != except)
        .map(|p| {
            let e =
                quorate_host::init::Enrollment::load(&p.data_dir.join("enrollment.json")).unwrap();
            quorate_host::net::PeerSpec {
                party: quorate_firmware::types::PartyId(p.id),
                addr: p.peer.to_string(),
                cert_der: hex::decode(e.tls_cert).unwrap(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_from_a_connected_peer_leave_every_daemon_running() {
    use quorate_firmware::types::PartyId;
    use quorate_host::net::{tls::TlsIdentity, NetConfig, PeerNet};
    use std::sync::Arc;

    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let first = submit_many(&c, &[1], 3).await;
    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(120))
        .await
        .unwrap();
    // Party 3's daemon stops; something holding party 3's TLS key takes its
    // place and, once the others connect, sends them garbage.
    c.stop(3).unwrap();
    let p3 = &c.parties[2];
    let identity = TlsIdentity::load(&p3.data_dir).unwrap();
    let cfg = NetConfig::new(PartyId(3), p3.peer, peer_specs(&c, 3));
    let (rogue, _rx) = PeerNet::start(cfg, identity).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rogue.connected().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the others did not connect to party 3's address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sent = 0;
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 97) + 1).map(|k| (k * 31 + i) as u8).collect();
        sent += rogue.broadcast(Arc::from(junk));
    }
    // One frame far over the limit (the daemons close that connection).
    sent += rogue.broadcast(Arc::from(vec![0xabu8; 8 << 20]));
    assert!(sent > 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rogue.shutdown();
    assert!(
        c.running(1) && c.running(2),
        "a daemon died:\n{}\n{}",
        c.log(1),
        c.log(2)
    );
    // Party 3 comes back and the cluster decides again.
    c.start(3).unwrap();
    c.wait_api(3, Duration::from_secs(30)).await.unwrap();
    let second = submit_many(&c, &[2], 3).await;
    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(120))
        .await
        .unwrap();
    assert_all_executed(&c, &first).await;
    assert_all_executed(&c, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_presenting_a_tls_key_not_in_its_enrollment_is_refused() {
    use quorate_firmware::types::PartyId;
    use quorate_host::net::tls::TlsIdentity;

    let mut c = TestCluster::provision(4, "byzantine").unwrap();
    // Party 4 gets a fresh TLS key that its enrollment does not list.
    TlsIdentity::generate(PartyId(4))
        .unwrap()
        .save(&c.parties[3].data_dir)
        .unwrap();
    c.start_all().unwrap();
    for id in 1..=4 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let receipts = submit_many(&c, &[1], 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in c.statuses(&[1, 2, 3]).await.unwrap() {
        let p4 = s.peers.iter().find(|p| p.party == 4).unwrap();
        assert!(
            !p4.connected,
            "party {} accepted party 4's unenrolled key",
            s.party
        );
        assert_eq!(s.peers_connected, 2);
    }
    let s4 = c.client(4).unwrap().status().await.unwrap();
    assert_eq!(s4.peers_connected, 0);
    assert_eq!(s4.height, 0, "party 4 took part in consensus");
    // The other three still decide (unanimous keygen stays pending without
    // party 4's verdict, but the blocks are decided).
    let s = c
        .wait_quiescent(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(s[0].height > 0);
    for (id, r) in &receipts {
        let v = c.client(*id).unwrap().operation(r).await.unwrap();
        assert_eq!(v["decided"], true, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parties_attest_each_other_and_a_modified_executable_is_refused_admission() {
    let mut c = TestCluster::provision_attested(3, "majority").unwrap();
    // Party 3 runs a copy of the coordinator with one byte changed.
    let modified = c.modified_binary().unwrap();
    c.parties[2].binary = Some(modified);
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.statuses(&[1, 2]).await.unwrap();
        let p3_refused = s.iter().all(|s| {
            s.peers
                .iter()
                .any(|p| p.party == 3 && !p.attested && p.attestation.contains("REFUSED"))
        });
        let honest_attested = s.iter().all(|s| s.peers_attested == 1);
        if p3_refused && honest_attested {
            for s in &s {
                let p3 = s.peers.iter().find(|p| p.party == 3).unwrap();
                assert!(p3.attestation.contains("executable"), "{}", p3.attestation);
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "admission did not settle: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The two attested parties (a majority of 3) decide without party 3.
    let receipts = submit_many(&c, &[1], 2).await;
    let s = c
        .wait_quiescent(&[1, 2], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(s[0].height > 0);
    for (id, r) in &receipts {
        let v = c.client(*id).unwrap().operation(r).await.unwrap();
        assert_eq!(v["decided"], true, "{v}");
    }
    // Party 3 decided nothing: it was never admitted.
    assert_eq!(c.client(3).unwrap().status().await.unwrap().height, 0);
    assert!(c.log(1).contains("is not approved"), "{}", c.log(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_attestation_records_are_committed_and_verified_by_every_peer() {
    // Every 3 heights each party quotes with the epoch and the latest block
    // hash bound in and commits the evidence; the others verify it and post
    // their verdicts, so the log shows which code ran across its history.
    let mut c = TestCluster::provision_attested_every(3, "byzantine", 3).unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let receipts = submit_many(&c, &[1, 2, 3], 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let verified = (1..=3).all(|id| {
            c.log(id)
                .matches("epoch attestation record verified")
                .count()
                >= 2
        });
        if verified {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records were not verified:\n{}\n{}",
            c.log(1),
            c.log(2)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in c.statuses(&[1, 2, 3]).await.unwrap() {
        assert_eq!(s.peers_attested, 2, "{s:?}");
    }
    assert_all_executed(&c, &receipts).await;
    for id in 1..=3 {
        assert!(
            !c.log(id).contains("epoch attestation record: "),
            "a record was refused:\n{}",
            c.log(id)
        );
    }
}

/// Catch-up reads any decided height from the store. Every party keeps only
/// 4 blocks in memory, so a party down for more heights than that rejoins
/// only through blocks read from the others' stores; then a party whose
/// store was deleted (keys, TLS identity and enrollment kept) replays from
/// height 1, verifying every certificate, reaches the same state root, and
/// takes part again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_down_longer_than_the_kept_blocks_or_with_a_wiped_store_rejoins() {
    let mut c = TestCluster::provision(4, "byzantine").unwrap();
    for id in 1..=4 {
        c.append_config(id, "[party.net]\nrecent_blocks = 4\n")
            .unwrap();
    }
    c.start_all().unwrap();
    let all = [1, 2, 3, 4];
    for id in all {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let mut receipts = submit_many(&c, &all, 1).await;
    let start = c
        .wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();

    // Down while the others decide many more heights than they keep.
    c.stop(4).unwrap();
    for _ in 0..6 {
        receipts.extend(submit_many(&c, &[1, 2, 3], 1).await);
        c.wait_quiescent(&[1, 2, 3], Duration::from_secs(120))
            .await
            .unwrap();
    }
    let ahead = c.statuses(&[1]).await.unwrap()[0].height;
    assert!(
        ahead > start[0].height + 4,
        "{ahead} vs {}",
        start[0].height
    );
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(30)).await.unwrap();
    let s = c
        .wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(s[3].height >= ahead);

    assert_all_executed(&c, &receipts).await;
    let ours = receipts.iter().find(|(id, _)| *id == 4).unwrap().1.clone();
    let op_id = c.client(4).unwrap().operation(&ours).await.unwrap()["op_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A wiped store: the party starts from nothing and replays from height 1.
    c.stop(4).unwrap();
    std::fs::remove_file(c.parties[3].data_dir.join("quorate.redb")).unwrap();
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(30)).await.unwrap();
    wait_log(&c, 4, "the store was lost", 1, Duration::from_secs(10)).await;
    wait_log(
        &c,
        4,
        "double-sign check: signing nothing",
        1,
        Duration::from_secs(10),
    )
    .await;
    let s = c
        .wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(s[3].height >= ahead);
    // Its old receipts are gone with the store, and never name another
    // operation; the operation itself is found by its id.
    let gone = c.client(4).unwrap().operation(&ours).await;
    assert!(gone.is_err(), "{gone:?}");
    let by_id = c.client(4).unwrap().operation(&op_id).await.unwrap();
    assert_eq!(by_id["status"], "executed", "{by_id}");
    let mut receipts: Vec<(u32, String)> = Vec::new();
    // It takes part: its own submissions are decided and executed, and the
    // others cannot decide without it once one of them is stopped.
    c.stop(1).unwrap();
    receipts.extend(submit_many(&c, &[2, 3, 4], 1).await);
    c.wait_quiescent(&[2, 3, 4], Duration::from_secs(120))
        .await
        .unwrap();
    c.start(1).unwrap();
    c.wait_api(1, Duration::from_secs(30)).await.unwrap();
    c.wait_quiescent(&all, Duration::from_secs(120))
        .await
        .unwrap();
    assert_all_executed(&c, &receipts).await;
    for id in all {
        assert!(!c.log(id).contains("consensus halted"), "{}", c.log(id));
    }
}
