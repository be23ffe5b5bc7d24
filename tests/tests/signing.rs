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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.operation(receipt).await.unwrap();
        if v["status"] != "pending" && v["status"] != "accepted" && !v["record"].is_null() {
            return v;
        }
        assert!(Instant::now() < deadline, "{receipt} never decided: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until session `sid` has left the active phases at party `c`.
async fn finished(c: &Client, sid: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = c.session(sid).await.unwrap();
        let phase = s["phase_label"].as_str().unwrap_or_default().to_string();
        if phase != "active" && phase != "awaiting_approval" {
            return s;
        }
        if Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        let v = finished(&c.client(id).unwrap(), &sid, within).await;
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

    // Bad input is refused with its reason, and recorded.
    let p1 = c.client(1).unwrap();
    for (session, reason) in [
        (signing(&key, &[1u8; 31], None), "digest_length_for_scheme"),
        (
            signing(&key, &[1u8; 32], Some(json!({"merkle_root": "00"}))),
            "bad_merkle_root",
        ),
    ] {
        let r = p1
            .submit_json(&json!({"type": "create_session", "session": session}))
            .await
            .unwrap();
        let op = decided(&p1, &r.id).await;
        assert_eq!(op["status"], "rejected", "{op}");
        let reasons = op["record"]["status"]["rejected"]["reasons"].to_string();
        assert!(reasons.contains(reason), "{reason}: {op}");
    }
    let (ed_key, _) = keygen(&c, "frost-ed25519", 2).await;
    let r = p1
        .submit_json(&json!({"type": "create_session",
            "session": signing(&ed_key, b"m", Some(json!({"merkle_root": null})))}))
        .await
        .unwrap();
    let op = decided(&p1, &r.id).await;
    assert_eq!(op["status"], "rejected", "{op}");
    let reasons = op["record"]["status"]["rejected"]["reasons"].to_string();
    assert!(reasons.contains("taproot_for_scheme"), "{op}");
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
    for i in 0..10u8 {
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
    assert!(saw_culprit, "P3 was never selected in ten signings");
    assert!(saw_suspect, "P4 was never selected in ten signings");
}
