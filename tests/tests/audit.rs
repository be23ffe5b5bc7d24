//! System tests of the attested audit log: real daemons with swtpm and
//! measured launch; every party's log is the same, checkpoints are
//! certified with TPM quotes, proofs from the API verify.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine as _;
use quorate_attestation::attest::TpmsAttest;
use quorate_attestation::checkpoint::CheckpointQuote;
use quorate_attestation::tpm::{verify_ecdsa_p256, TpmSignature, TpmtPublic};
use quorate_firmware::audit::checkpoint::{
    check_cosignatures, origin_for, SignedCheckpoint, SignerRole,
};
use quorate_firmware::audit::entry::AuditEntry;
use quorate_firmware::audit::merkle::{
    leaf_hash, root_of, verify_consistency, verify_inclusion, LeafIndex, TreeSize,
};
use quorate_firmware::types::{FaultModel, PartyId, Sha256Digest};
use quorate_host::init::Enrollment;
use quorate_tests::cluster::TestCluster;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn keygen(n: u32) -> serde_json::Value {
    let all: Vec<u32> = (1..=n).collect();
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": all,
        "threshold": 2, "scheme": "frost-secp256k1", "deadline_secs": 600}})
}

async fn submit(c: &TestCluster, ids: &[u32], per_party: usize) {
    let n = c.parties.len() as u32;
    for _ in 0..per_party {
        for id in ids {
            c.client(*id)
                .unwrap()
                .submit_json(&keygen(n))
                .await
                .unwrap();
        }
    }
}

fn hash(v: &serde_json::Value) -> Sha256Digest {
    Sha256Digest(
        hex::decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    )
}

/// Every entry of party `id`'s log, paging through the API.
async fn all_entries(c: &TestCluster, id: u32) -> Vec<Vec<u8>> {
    let client = c.client(id).unwrap();
    let mut out = Vec::new();
    loop {
        let start = out.len() as u64;
        let page = match client.log_entries(start, start + 100).await {
            Ok(p) => p,
            Err(quorate_host::client::ClientError::Status { status, .. }) if status == 404 => {
                return out
            }
            Err(e) => panic!("entries of party {id}: {e}"),
        };
        for e in page["entries"].as_array().unwrap() {
            assert_eq!(e["index"].as_u64().unwrap(), out.len() as u64);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(e["entry"].as_str().unwrap())
                .unwrap();
            assert_eq!(hash(&e["leaf_hash"]), leaf_hash(&bytes));
            out.push(bytes);
        }
    }
}

/// Waits until every party in `ids` holds the same number of entries and
/// a certified checkpoint of the same size (the policy checkpoints at block
/// boundaries, so the newest entries may lie after it); returns the notes.
async fn wait_checkpointed(c: &TestCluster, ids: &[u32], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut notes = Vec::new();
        for id in ids {
            if let Ok(v) = c.client(*id).unwrap().log_checkpoint().await {
                notes.push((
                    v["size"].as_u64().unwrap(),
                    v["log_size"].as_u64().unwrap(),
                    v["note"].as_str().unwrap().to_string(),
                ));
            }
        }
        let same = notes
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1);
        if notes.len() == ids.len() && same {
            return notes.into_iter().map(|(_, _, n)| n).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no common certified checkpoint covering the log: {notes:?}\nlog of party 1:\n{}",
            c.log(1)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn enrollments(c: &TestCluster) -> BTreeMap<PartyId, Enrollment> {
    c.parties
        .iter()
        .map(|p| {
            (
                PartyId(p.id),
                Enrollment::load(&p.data_dir.join("enrollment.json")).unwrap(),
            )
        })
        .collect()
}

/// Checks a certified note: a quorum of cosignatures, and every quote line
/// a TPM quote by the party's enrolled AK over the checkpoint.
fn check_note(c: &TestCluster, note: &str) -> SignedCheckpoint {
    let cp = SignedCheckpoint::parse(note.as_bytes()).unwrap();
    let ens = enrollments(c);
    let keys = ens
        .iter()
        .map(|(id, e)| (*id, e.vote_public_key().unwrap()))
        .collect();
    let origin = cp.checkpoint.origin.clone();
    let certified = check_cosignatures(&cp, &origin, &keys, FaultModel::Byzantine).unwrap();
    assert!(certified.cosigners.len() >= 3, "{note}");
    assert!(!certified.quotes.is_empty(), "no quote line: {note}");
    for (party, i) in certified.quotes {
        let line = &cp.signatures[i];
        assert_eq!(line.signer(&origin), Some((party, SignerRole::Quote)));
        let q = CheckpointQuote::decode(&line.signature).unwrap();
        let ak_bytes = hex::decode(&ens[&party].ak.as_ref().unwrap().tpmt_public).unwrap();
        let ak = TpmtPublic::parse(&ak_bytes).unwrap();
        let sig = TpmSignature::parse(&q.quote.signature).unwrap();
        verify_ecdsa_p256(&ak, &q.quote.attest, &sig).unwrap();
        let attest = TpmsAttest::parse(&q.quote.attest).unwrap();
        assert_eq!(
            attest.extra_data,
            cp.checkpoint.quote_qualifying_data().as_bytes().to_vec(),
            "the quote binds another checkpoint"
        );
        assert!(!q.pcr_values.is_empty());
    }
    cp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_party_keeps_the_same_certified_log_and_a_restarted_party_catches_up() {
    // Epoch attestation records every 10 heights, so entries are decided
    // under attested measurements (their `decided_under` references).
    let mut c = TestCluster::provision_attested_every(4, "byzantine", 10).unwrap();
    c.start_all().unwrap();
    for id in 1..=4 {
        c.wait_api(id, Duration::from_secs(60)).await.unwrap();
    }
    submit(&c, &[1, 2, 3, 4], 8).await;
    c.wait_quiescent(&[1, 2, 3, 4], Duration::from_secs(240))
        .await
        .unwrap();
    let notes = wait_checkpointed(&c, &[1, 2, 3, 4], Duration::from_secs(120)).await;

    // Every party's log is byte-identical.
    let logs: Vec<Vec<Vec<u8>>> = {
        let mut v = Vec::new();
        for id in 1..=4 {
            v.push(all_entries(&c, id).await);
        }
        v
    };
    assert!(logs[0].len() > 32 * 2, "{} entries", logs[0].len());
    for (i, l) in logs.iter().enumerate() {
        assert_eq!(l, &logs[0], "party {} holds another log", i + 1);
    }
    for e in &logs[0] {
        AuditEntry::decode(e).unwrap();
    }
    let leaves: Vec<Sha256Digest> = logs[0].iter().map(|e| leaf_hash(e)).collect();

    // The checkpoint is certified, quoted, and its root is the entries'.
    let cp = check_note(&c, &notes[0]);
    let ens = enrollments(&c);
    let cluster_id = quorate_host::config::Config::load(&c.parties[0].config)
        .unwrap()
        .cluster_id;
    assert_eq!(cp.checkpoint.origin, origin_for(&cluster_id));
    let size = cp.checkpoint.size;
    assert!(size.0 > 0 && size.0 <= leaves.len() as u64);
    assert_eq!(cp.checkpoint.root, root_of(&leaves[..size.0 as usize]));
    assert_eq!(ens.len(), 4);

    // Proofs from the API verify against the checkpoint's root.
    let client = c.client(2).unwrap();
    for index in [0, size.0 / 3, size.0 - 1] {
        let p = client.log_inclusion(index, size.0).await.unwrap();
        let path: Vec<Sha256Digest> = p["proof"].as_array().unwrap().iter().map(hash).collect();
        verify_inclusion(
            &leaves[index as usize],
            LeafIndex(index),
            size,
            &path,
            &cp.checkpoint.root,
        )
        .unwrap();
    }
    let old = size.0 / 2;
    let p = client.log_consistency(old, size.0).await.unwrap();
    let proof: Vec<Sha256Digest> = p["proof"].as_array().unwrap().iter().map(hash).collect();
    verify_consistency(
        TreeSize(old),
        &root_of(&leaves[..old as usize]),
        size,
        &cp.checkpoint.root,
        &proof,
    )
    .unwrap();
    // Bad and out-of-range arguments.
    let status = |r: Result<serde_json::Value, quorate_host::client::ClientError>| match r {
        Err(quorate_host::client::ClientError::Status { status, .. }) => status.as_u16(),
        other => panic!("expected an error status, got {other:?}"),
    };
    assert_eq!(status(client.log_inclusion(size.0, size.0).await), 400);
    assert_eq!(status(client.log_inclusion(0, size.0 + 1000).await), 404);
    assert_eq!(status(client.log_consistency(0, size.0).await), 400);
    assert_eq!(status(client.log_consistency(1, size.0 + 1000).await), 404);
    assert_eq!(
        status(client.log_entries(size.0 + 1000, size.0 + 1001).await),
        404
    );

    // Party 4 dies; the others go on and checkpoint without it.
    c.kill9(4).unwrap();
    submit(&c, &[1, 2, 3], 8).await;
    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(240))
        .await
        .unwrap();
    let notes = wait_checkpointed(&c, &[1, 2, 3], Duration::from_secs(120)).await;
    let later = check_note(&c, &notes[0]);
    assert!(later.checkpoint.size > size);

    // It restarts, replays its store, catches up, and ends with the same
    // log and a certified checkpoint of the same size.
    c.start(4).unwrap();
    c.wait_api(4, Duration::from_secs(60)).await.unwrap();
    c.wait_quiescent(&[1, 2, 3, 4], Duration::from_secs(240))
        .await
        .unwrap();
    let notes = wait_checkpointed(&c, &[1, 2, 3, 4], Duration::from_secs(120)).await;
    let last = check_note(&c, &notes[3]);
    let logs: Vec<Vec<Vec<u8>>> = {
        let mut v = Vec::new();
        for id in 1..=4 {
            v.push(all_entries(&c, id).await);
        }
        v
    };
    for (i, l) in logs.iter().enumerate() {
        assert_eq!(l, &logs[0], "party {} holds another log", i + 1);
    }
    let leaves: Vec<Sha256Digest> = logs[0].iter().map(|e| leaf_hash(e)).collect();
    assert!(last.checkpoint.size >= later.checkpoint.size);
    assert_eq!(
        last.checkpoint.root,
        root_of(&leaves[..last.checkpoint.size.0 as usize])
    );
    assert!(!c.log(4).contains("consensus halted"), "{}", c.log(4));

    // An auditor: export party 2's log while its daemon runs, and verify
    // the bundle offline against the cluster's reference policy.
    let bin = quorate_tests::cluster::quorate_bin().unwrap();
    let bundle = c.export_audit(2).unwrap();
    let policy = c.dir().join("policy.toml");
    let verify = |path: &std::path::Path| {
        std::process::Command::new(&bin)
            .args(["audit", "verify", "--bundle"])
            .arg(path)
            .arg("--policy")
            .arg(&policy)
            .arg("--allow-dev")
            .output()
            .unwrap()
    };
    let out = verify(&bundle);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "verify: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("OK"), "{report}");
    // The bundle holds at least the entries every party agreed on above.
    let entries_line = report
        .lines()
        .find(|l| l.trim_start().starts_with("entries"))
        .unwrap_or_else(|| panic!("no entries count in the report: {report}"));
    let counted: u64 = entries_line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number in {entries_line:?}"));
    assert!(counted >= last.checkpoint.size.0, "{report}");
    // Attestation records were verified against the policy and entries
    // point at them ("attestation  N records, M measurement references").
    let numbers = |prefix: &str| -> Vec<u64> {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in the report: {report}"))
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    let att = numbers("attestation");
    assert!(att.len() >= 2 && att[0] > 0 && att[1] > 0, "{report}");
    // One flipped byte anywhere past the header is found, never a panic.
    let bytes = std::fs::read(&bundle).unwrap();
    let mut bad = bytes.clone();
    let at = bytes.len() * 2 / 3;
    bad[at] ^= 0x01;
    let tampered = c.dir().join("tampered.bundle");
    std::fs::write(&tampered, &bad).unwrap();
    let out = verify(&tampered);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
