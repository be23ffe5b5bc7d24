//! Threshold signing through the coordinator: four attested parties, each
//! with its own swtpm, generate a key with the built-in FROST engine, then
//! sign with it. The ROAST coordinator runs from the decided log at every
//! party, so every party shows the same signature, attempts and blame; the
//! signature is checked by an independent library (ed25519-dalek, k256's
//! BIP-340 `schnorr`), never by frost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_host::client::Client;
use quorate_tests::cluster::TestCluster;
use quorate_tests::mpc::verify_independently;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const N: u32 = 4;
/// The per-round deadline of the signing sessions here, in seconds.
const ROUND_SECS: u64 = 3;

/// Waits until an operation is decided and returns its record.
async fn decided(c: &Client, receipt: &str) -> Value {
    quorate_tests::mpc::decided(c, receipt, Duration::from_secs(60))
        .await
        .unwrap()
}

/// Waits until session `sid` has left the active phases at party `c`.
async fn finished(c: &Client, sid: &str, within: Duration) -> Value {
    quorate_tests::mpc::session_end(c, sid, within)
        .await
        .unwrap()
}

async fn started(c: TestCluster) -> TestCluster {
    let mut c = c;
    c.start_all().unwrap();
    for id in 1..=N {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    c
}

/// Creates a session at party 1 and returns its id once decided.
async fn create(c: &TestCluster, session: Value) -> String {
    let p1 = c.client(1).unwrap();
    let r = p1
        .submit_json(&json!({"type": "create_session", "session": session}))
        .await
        .unwrap();
    let op = decided(&p1, &r.id).await;
    op["record"]["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {op}"))
        .to_string()
}

/// A completed `t`-of-4 key of `scheme`: (key id, group key hex).
async fn keygen(c: &TestCluster, scheme: &str, t: u16) -> (String, String) {
    let sid = create(
        c,
        json!({"kind": "keygen", "participants": [1, 2, 3, 4], "threshold": t,
            "scheme": scheme, "deadline_secs": 600, "round_secs": 60}),
    )
    .await;
    let s = finished(&c.client(1).unwrap(), &sid, Duration::from_secs(90)).await;
    assert_eq!(s["phase_label"], "completed", "{scheme}: {s}");
    (
        s["key"].as_str().unwrap().to_string(),
        s["group_public_key"].as_str().unwrap().to_string(),
    )
}

fn signing(key: &str, digest: &[u8], taproot: Option<Value>) -> Value {
    let mut s = json!({"kind": "signing", "key": key, "message_digest": hex::encode(digest),
        "signers": [1, 2, 3, 4], "deadline_secs": 600, "round_secs": ROUND_SECS});
    if let Some(t) = taproot {
        s["taproot"] = t;
    }
    s
}

/// Runs a signing session to its end at every party and returns each
/// party's view (index 0 is party 1), checking that all agree.
async fn sign(c: &TestCluster, session: Value, within: Duration) -> (String, Vec<Value>) {
    let sid = create(c, session).await;
    let mut views = Vec::new();
    for id in 1..=N {
        let v = match quorate_tests::mpc::session_end(&c.client(id).unwrap(), &sid, within).await {
            Ok(v) => v,
            Err(e) => panic!("P{id}: {e}; its log:\n{}", c.log(id)),
        };
        if v["phase_label"] != "completed" {
            println!("P{id}'s log:\n{}", c.log(id));
        }
        views.push(v);
    }
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v["phase_label"], "completed", "P{}: {v}", i + 1);
        assert_eq!(v["signature"], views[0]["signature"], "P{}", i + 1);
        assert_eq!(v["verifying_key"], views[0]["verifying_key"]);
        assert_eq!(v["attempts"], views[0]["attempts"], "P{}", i + 1);
        assert_eq!(v["roast"], views[0]["roast"], "P{}", i + 1);
    }
    (sid, views)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_schemes_sign_once_for_all_and_an_independent_library_verifies() {
    let c = started(TestCluster::provision_attested(N, "byzantine").unwrap()).await;
    for scheme in ["frost-ed25519", "frost-secp256k1-tr"] {
        let (key, gpk) = keygen(&c, scheme, 3).await;
        // Ed25519 signs the given bytes; BIP-340 a 32-byte digest.
        let msg: Vec<u8> = match scheme {
            "frost-ed25519" => b"pay 1 BTC to bc1q... at height 900000".to_vec(),
            _ => (0u8..32).collect(),
        };
        let t0 = Instant::now();
        let (_, views) = sign(&c, signing(&key, &msg, None), Duration::from_secs(60)).await;
        let v = &views[0];
        println!("{scheme}: signed at all 4 parties in {:?}", t0.elapsed());
        assert_eq!(v["verifying_key"], gpk.as_str(), "untweaked: the group key");
        verify_independently(scheme, &gpk, &msg, v["signature"].as_str().unwrap()).unwrap();
        // The session's agreed result is the signature.
        let attempts = v["attempts"].as_array().unwrap();
        assert_eq!(attempts.last().unwrap()["outcome"], "signed", "{v}");
        assert_eq!(
            attempts.last().unwrap()["signers"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    // A Taproot key-path signature: the result states the tweaked key it
    // verifies under, which differs from the group key.
    let (key, gpk) = keygen(&c, "frost-secp256k1-tr", 3).await;
    let digest = [0x5au8; 32];
    let (_, views) = sign(
        &c,
        signing(&key, &digest, Some(json!({"merkle_root": null}))),
        Duration::from_secs(60),
    )
    .await;
    let vk = views[0]["verifying_key"].as_str().unwrap();
    assert_ne!(vk, gpk, "the key-path tweak changes the output key");
    verify_independently(
        "frost-secp256k1-tr",
        vk,
        &digest,
        views[0]["signature"].as_str().unwrap(),
    )
    .unwrap();

    // Bad input is refused before it is accepted (422), naming the rule
    // consensus would refuse it by.
    let p1 = c.client(1).unwrap();
    let (ed_key, _) = keygen(&c, "frost-ed25519", 2).await;
    for (session, reason) in [
        (signing(&key, &[1u8; 31], None), "digest_length_for_scheme"),
        (
            signing(&key, &[1u8; 32], Some(json!({"merkle_root": "00"}))),
            "bad_merkle_root",
        ),
        (
            signing(&ed_key, b"m", Some(json!({"merkle_root": null}))),
            "taproot_for_scheme",
        ),
        (
            json!({"kind": "refresh", "key": hex::encode([7u8; 32]), "deadline_secs": 60}),
            "unknown_key",
        ),
    ] {
        let e = p1
            .submit_json(&json!({"type": "create_session", "session": session}))
            .await
            .unwrap_err();
        match e {
            quorate_host::client::ClientError::Status { status, body } => {
                assert_eq!(status.as_u16(), 422, "{reason}: {body}");
                assert!(body.contains(reason), "{reason}: {body}");
            }
            e => panic!("{reason}: {e}"),
        }
    }
}

/// Party 3 corrupts every signature share it posts; party 4 posts
/// commitments and then never a share. With a 2-of-4 key ROAST tolerates
/// both (n − t = 2). Signings run until each misbehaving party has been
/// selected at least once; every one must end with a valid signature, the
/// cheater named with its share as proof and the staller as a suspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roast_signs_despite_a_cheating_and_a_stalling_candidate() {
    let c = TestCluster::provision_attested(N, "byzantine").unwrap();
    c.append_config(3, "[party.engine]\ndev_fault = \"bad_signature_share\"\n")
        .unwrap();
    c.append_config(
        4,
        "[party.engine]\ndev_fault = \"withhold_signature_share\"\n",
    )
    .unwrap();
    let c = started(c).await;
    let (key, gpk) = keygen(&c, "frost-ed25519", 2).await;
    let (mut saw_culprit, mut saw_suspect) = (false, false);
    for i in 0..20u8 {
        let msg = [b'm', i];
        let t0 = Instant::now();
        let (_, views) = sign(&c, signing(&key, &msg, None), Duration::from_secs(60)).await;
        let took = t0.elapsed();
        let v = &views[0];
        verify_independently(
            "frost-ed25519",
            &gpk,
            &msg,
            v["signature"].as_str().unwrap(),
        )
        .unwrap();
        let attempts = v["attempts"].as_array().unwrap();
        let mut timeouts = 0;
        for a in attempts {
            let signers: Vec<u64> = a["signers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap())
                .collect();
            if signers.contains(&3) {
                assert_eq!(a["outcome"], "blamed", "P3 was selected: {a}");
                let cul = &a["culprits"][0];
                assert_eq!(cul["party"], 3, "{a}");
                assert_eq!(cul["kind"], "invalid_share", "{a}");
                assert_eq!(
                    hex::decode(cul["proof"].as_str().unwrap()).unwrap().len(),
                    32,
                    "the share as proof: {a}"
                );
                saw_culprit = true;
            }
            if signers.contains(&4) && a["outcome"] == "timed_out" {
                assert!(a["suspects"].as_array().unwrap().contains(&json!(4)), "{a}");
                saw_suspect = true;
                timeouts += 1;
            }
            assert!(!signers.contains(&4) || a["outcome"] != "signed", "{a}");
        }
        // At most one deadline passes (P4 is dropped after its first), and
        // the attempt after it signs: the signature comes within two round
        // deadlines of block time.
        assert!(timeouts <= 1, "{attempts:?}");
        println!(
            "signing {i}: {} attempt(s), {took:?}: {}",
            attempts.len(),
            Value::Array(attempts.clone())
        );
        if saw_culprit && saw_suspect {
            break;
        }
    }
    assert!(saw_culprit, "P3 was never selected in twenty signings");
    assert!(saw_suspect, "P4 was never selected in twenty signings");
}

/// The operations party `from` posted in session `sid`, as party 1 sees
/// them: `(round, op)`.
async fn messages_from(c: &TestCluster, sid: &str, from: u32) -> Vec<(u64, String)> {
    let s = c.client(1).unwrap().session(sid).await.unwrap();
    s["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["from"] == from)
        .map(|m| {
            (
                m["round"].as_u64().unwrap(),
                m["op"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The key shares stored in a stopped party's data dir.
fn stored_shares(c: &TestCluster, id: u32) -> Vec<String> {
    let dir = &c.parties[id as usize - 1].data_dir;
    let store = quorate_host::store::Store::open_read_only(dir).unwrap();
    quorate_host::engine::stored_shares(&store)
        .unwrap()
        .into_iter()
        .map(|(_, sid)| hex::encode(sid.0.as_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_keeps_the_group_key_rotates_every_share_and_erases_the_old() {
    let mut c = started(TestCluster::provision_attested(N, "byzantine").unwrap()).await;
    let mut current = Vec::new();
    for scheme in ["frost-ed25519", "frost-secp256k1-tr"] {
        let (key, gpk) = keygen(&c, scheme, 3).await;
        let msg = [0x42u8; 32];
        let (_, before) = sign(&c, signing(&key, &msg, None), Duration::from_secs(60)).await;
        verify_independently(scheme, &gpk, &msg, before[0]["signature"].as_str().unwrap()).unwrap();

        let t0 = Instant::now();
        let rid = create(
            &c,
            json!({"kind": "refresh", "key": key, "deadline_secs": 600, "round_secs": 60}),
        )
        .await;
        for id in 1..=N {
            let r = finished(&c.client(id).unwrap(), &rid, Duration::from_secs(90)).await;
            assert_eq!(r["phase_label"], "completed", "P{id}: {r}");
            // The result every holder posted is the unchanged group key.
            assert_eq!(r["phase"]["completed"]["result"], json!(gpk), "P{id}: {r}");
            assert_eq!(r["key"], json!(key), "{r}");
            assert_eq!(r["group_public_key"], json!(gpk), "{r}");
        }
        println!("{scheme}: refresh completed in {:?}", t0.elapsed());

        // The refreshed shares sign under the same key; the old shares and
        // verifying shares would not verify together with the new ones.
        let msg = [0x43u8; 32];
        let (_, after) = sign(&c, signing(&key, &msg, None), Duration::from_secs(60)).await;
        let sig = after[0]["signature"].as_str().unwrap();
        verify_independently(scheme, &gpk, &msg, sig).unwrap();
        let attempts = after[0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "no one was blamed: {attempts:?}");
        current.push(rid);
    }
    // Each party keeps exactly the refreshed shares: the key generations'
    // shares are erased from the store.
    current.sort();
    for id in 1..=N {
        c.stop(id).unwrap();
        let mut held = stored_shares(&c, id);
        held.sort();
        assert_eq!(held, current, "P{id} keeps only the refreshed shares");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_killed_after_its_commitments_never_signs_again_even_from_a_backup() {
    let mut c = started(TestCluster::provision_attested(N, "byzantine").unwrap()).await;
    let (key, gpk) = keygen(&c, "frost-secp256k1-tr", 3).await;
    // A backup of P4's store, taken while it is stopped.
    let db = c.parties[3].data_dir.join(quorate_host::store::DB_FILE);
    let backup = c.dir().join("p4-backup.redb");
    c.stop(4).unwrap();
    std::fs::copy(&db, &backup).unwrap();
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(30)).await.unwrap();
    // P4 is back at the cluster's height before the signing starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.statuses(&[1, 4]).await.unwrap();
        if s[0].height == s[1].height && s[0].state_root == s[1].state_root {
            break;
        }
        assert!(Instant::now() < deadline, "P4 did not catch up: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let digest = [0x5au8; 32];
    // Long rounds: if P4 is selected and killed before its share, the
    // attempt stays open while P4 comes back from the backup.
    let mut session = signing(&key, &digest, None);
    session["round_secs"] = json!(15);
    let sid = create(&c, session).await;
    // Kill P4 as soon as its commitments are decided.
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages_from(&c, &sid, 4).await.is_empty() {
        assert!(Instant::now() < deadline, "P4 never committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.kill9(4).unwrap();
    // Whatever P4 had in flight is decided (or lost) by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posted = messages_from(&c, &sid, 4).await;
    assert!(
        posted.iter().any(|(round, _)| *round == 1),
        "P4's commitments are in the log: {posted:?}"
    );
    // P4 comes back from the backup: its "nonce used" records and its
    // outbox are from before the signing.
    std::fs::copy(&backup, &db).unwrap();
    let before_restart = c.log(4).len();
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(30)).await.unwrap();
    let mut views = Vec::new();
    for id in 1..=N {
        let v = finished(&c.client(id).unwrap(), &sid, Duration::from_secs(60)).await;
        assert_eq!(v["phase_label"], "completed", "P{id}: {v}");
        views.push(v);
    }
    let sig = views[0]["signature"].as_str().unwrap();
    for v in &views {
        assert_eq!(v["signature"].as_str(), Some(sig));
    }
    verify_independently("frost-secp256k1-tr", &gpk, &digest, sig).unwrap();
    // The restored P4 observed the rest of the session without posting a
    // single new commitment or share: its nonces died with the process.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        messages_from(&c, &sid, 4).await,
        posted,
        "P4 posted nothing after it restarted"
    );
    let after = c
        .log(4)
        .get(before_restart..)
        .unwrap_or_default()
        .to_string();
    assert!(
        !after.contains("signer started") && !after.contains("posting a signature share"),
        "the restored P4 started no signer:\n{after}"
    );
    for a in views[0]["attempts"].as_array().unwrap() {
        assert_eq!(a["culprits"], json!([]), "no one is blamed: {a}");
    }
    println!(
        "P4 {} while the session was open",
        if after.contains("observ") {
            "came back and observed"
        } else {
            "came back after the session ended, or"
        }
    );
}
