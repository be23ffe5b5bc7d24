//! Real FROST key generation through the coordinator: four attested parties,
//! each with its own swtpm, run the built-in engine. The group key is agreed
//! by all, point-to-point shares are only ever ciphertext (in the log, the
//! API and the audit export), a dealer of a bad share is named with proof at
//! every party, and a party restarted mid key generation fails the session
//! cleanly, naming itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_host::client::Client;
use quorate_tests::cluster::TestCluster;
use quorate_tests::mpc::{bundle_messages, is_plain_round2};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const N: u32 = 4;

fn keygen(scheme: &str) -> Value {
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": [1, 2, 3, 4],
        "threshold": 3, "scheme": scheme, "deadline_secs": 600, "round_secs": 60}})
}

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

async fn cluster() -> TestCluster {
    let mut c = TestCluster::provision_attested(N, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=N {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    c
}

/// Starts a key generation at party 1 and returns its session id.
async fn start_keygen(c: &TestCluster, scheme: &str) -> String {
    let p1 = c.client(1).unwrap();
    let r = p1.submit_json(&keygen(scheme)).await.unwrap();
    let op = decided(&p1, &r.id).await;
    op["record"]["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {op}"))
        .to_string()
}

/// Every point-to-point part of a finished session as party `c` serves it.
fn direct_parts(s: &Value) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for m in s["messages"].as_array().unwrap() {
        for d in m["direct"].as_array().unwrap() {
            out.push(hex::decode(d["payload"].as_str().unwrap()).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_of_4_frost_dkg_agrees_on_the_group_key_for_both_schemes_and_shows_no_plaintext_share()
{
    let c = cluster().await;
    let mut sids = Vec::new();
    for scheme in ["frost-ed25519", "frost-secp256k1-tr"] {
        let t0 = Instant::now();
        let sid = start_keygen(&c, scheme).await;
        sids.push((scheme, sid.clone()));
        let mut keys = Vec::new();
        for id in 1..=N {
            let s = finished(&c.client(id).unwrap(), &sid, Duration::from_secs(90)).await;
            assert_eq!(s["phase_label"], "completed", "P{id} {scheme}: {s}");
            let gpk = s["group_public_key"].as_str().unwrap().to_string();
            assert_eq!(gpk.len(), 64, "a 32-byte key in lowercase hex: {gpk}");
            assert_eq!(gpk, gpk.to_lowercase());
            keys.push((gpk, s["key"].as_str().unwrap().to_string()));
            // This party sees its own round-2 parts (3) and one part from
            // each other participant (3); no one else's.
            let parts = direct_parts(&s);
            assert_eq!(parts.len(), 6, "P{id}: {s}");
            for m in s["messages"].as_array().unwrap() {
                if m["from"] != id {
                    for d in m["direct"].as_array().unwrap() {
                        assert_eq!(d["to"], id, "P{id} is shown a part for someone else");
                    }
                }
            }
            // A part is an HPKE encapsulation and AEAD ciphertext, not a
            // FROST round-2 package.
            for p in &parts {
                assert!(p.len() > 32 + 16, "too short for HPKE: {}", p.len());
                assert!(!is_plain_round2(scheme, p), "a plaintext round-2 package");
            }
        }
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
        assert_eq!(
            keys[0].1, sid,
            "the key id is the key generation's session id"
        );
        println!(
            "{scheme}: DKG executed at all 4 parties in {:?}",
            t0.elapsed()
        );
    }

    // The audit export holds the logged ciphertexts, and no round-2
    // package in the clear.
    let bundle = c.export_audit(1).unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    for m in bundle_messages(&bytes).unwrap() {
        assert!(!(m.round == 2 && m.broadcast), "a round-2 broadcast: {m:?}");
        for (_, p) in &m.direct {
            for scheme in ["frost-ed25519", "frost-secp256k1-tr"] {
                assert!(!is_plain_round2(scheme, p), "a plaintext share: {m:?}");
            }
        }
    }
    for (scheme, sid) in &sids {
        for id in 1..=N {
            let s = c.client(id).unwrap().session(sid).await.unwrap();
            for p in direct_parts(&s) {
                assert!(
                    bytes.windows(p.len()).any(|w| w == p.as_slice()),
                    "{scheme}: the export lacks a logged ciphertext"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dealer_of_a_bad_share_is_named_with_proof_at_every_party() {
    let mut c = TestCluster::provision_attested(N, "byzantine").unwrap();
    // Party 2 deals party 3 a corrupted share (dev-only fault knob).
    c.append_config(2, "[party.engine]\ndev_fault = \"bad_share_to:3\"\n")
        .unwrap();
    c.start_all().unwrap();
    for id in 1..=N {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let sid = start_keygen(&c, "frost-ed25519").await;
    for id in 1..=N {
        let s = finished(&c.client(id).unwrap(), &sid, Duration::from_secs(90)).await;
        assert_eq!(s["phase_label"], "failed", "P{id}: {s}");
        let f = &s["phase"]["failed"];
        assert_eq!(f["proven_misbehaviour"], json!([2]), "P{id}: {f}");
        let blame = &f["reason"]["blame"];
        assert_eq!(blame["accuser"], 3, "{f}");
        assert_eq!(blame["accused"], 2, "{f}");
        assert_eq!(blame["finding"], "invalid_secret_share", "{f}");
        assert!(
            s.get("group_public_key").is_none(),
            "no key from a failed DKG"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_killed_mid_dkg_fails_the_session_cleanly_naming_itself() {
    let mut c = cluster().await;
    let p1 = c.client(1).unwrap();
    let r = p1.submit_json(&keygen("frost-secp256k1-tr")).await.unwrap();
    // Kill party 4 the moment the session is active (round 1 running).
    let deadline = Instant::now() + Duration::from_secs(60);
    let sid = loop {
        let v = p1.operation(&r.id).await.unwrap();
        if let Some(sid) = v["record"]["session"].as_str() {
            let s = p1.session(sid).await.unwrap();
            if s["phase_label"] != "awaiting_approval" {
                break sid.to_string();
            }
        }
        assert!(Instant::now() < deadline, "never started: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    c.kill9(4).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(30)).await.unwrap();
    for id in 1..=N {
        let s = finished(&c.client(id).unwrap(), &sid, Duration::from_secs(120)).await;
        if s["phase_label"] == "completed" {
            // The kill landed after party 4 had posted its result: nothing
            // was lost and the key is complete everywhere.
            assert!(s["group_public_key"].as_str().is_some(), "{s}");
            continue;
        }
        assert_eq!(s["phase_label"], "failed", "P{id}: {s}");
        let f = &s["phase"]["failed"];
        println!("P{id}: failed: {}", f["reason"]);
        let aborted_by_4 = f["reason"]["aborted"]["by"] == 4;
        let suspect_4 = f["omission_suspects"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(4)));
        assert!(
            aborted_by_4 || suspect_4,
            "P{id}: the failure must name P4: {f}"
        );
        assert!(
            f["proven_misbehaviour"].as_array().unwrap().is_empty(),
            "{f}"
        );
    }
}
