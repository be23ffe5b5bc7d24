//! Signing through the TPM owner against a real swtpm; verification with the
//! attestation crate (pure Rust, no TSS).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use quorate_attestation::tpm::{verify_ecdsa_p256, TpmSignature, TpmtPublic};
use rand::{Rng, RngCore, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_signatures_verify() {
    let party = common::Party::new().await;
    let tpmt = TpmtPublic::parse(&party.key.blob.tpmt_public().unwrap()).unwrap();
    // The Name the TPM reported, ours, and the attestation crate's agree.
    assert_eq!(tpmt.name().as_bytes(), party.key.name.as_slice());
    assert_eq!(party.key.blob.name().unwrap(), party.key.name);
    let point = party.tpm.vote_public_key().await.unwrap();
    assert_eq!(tpmt.ecc_p256_point().unwrap(), point);

    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let messages: Vec<Vec<u8>> = (0..1000)
        .map(|_| {
            let mut m = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut m);
            m
        })
        .collect();

    let tasks = 32;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let tpm = party.tpm.clone();
        let mine: Vec<Vec<u8>> = messages.iter().skip(t).step_by(tasks).cloned().collect();
        set.spawn(async move {
            let mut out = Vec::new();
            for m in mine {
                let signed = tpm.sign_tpmt(m.clone()).await.unwrap();
                out.push((m, signed));
            }
            out
        });
    }
    let mut n = 0;
    while let Some(res) = set.join_next().await {
        for (m, signed) in res.unwrap() {
            let parsed = TpmSignature::parse(&signed.tpmt_signature).unwrap();
            verify_ecdsa_p256(&tpmt, &m, &parsed).unwrap();
            assert_eq!(parsed.to_p256_fixed().unwrap(), signed.signature);
            point.verify(&m, &signed.signature).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 1000);
}

#[tokio::test]
async fn one_flipped_bit_fails() {
    let party = common::Party::new().await;
    let tpmt_bytes = party.key.blob.tpmt_public().unwrap();
    let tpmt = TpmtPublic::parse(&tpmt_bytes).unwrap();
    let msg = b"height 7 round 0 precommit".to_vec();
    let signed = party.tpm.sign_tpmt(msg.clone()).await.unwrap();
    let sig = TpmSignature::parse(&signed.tpmt_signature).unwrap();
    verify_ecdsa_p256(&tpmt, &msg, &sig).unwrap();

    let mut rng = rand::rng();
    for _ in 0..32 {
        // Message.
        let mut m = msg.clone();
        let bit = rng.random_range(0..m.len() * 8);
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(verify_ecdsa_p256(&tpmt, &m, &sig).is_err());

        // Signature (r || s).
        let mut s = signed.signature;
        let bit = rng.random_range(0..512);
        s.0[bit / 8] ^= 1 << (bit % 8);
        assert!(verify_ecdsa_p256(&tpmt, &msg, &TpmSignature::from_ecdsa_p256(&s)).is_err());

        // Key: a bit of the point in the TPMT_PUBLIC (its last 64 bytes are
        // x and y, each behind a 2-byte size). Either the point is no longer
        // on the curve or it is another key: both must fail.
        let mut k = tpmt_bytes.clone();
        let len = k.len();
        let mut idx = rng.random_range(len - 66..len);
        if idx == len - 34 || idx == len - 33 {
            idx = len - 1; // not the size of y
        }
        k[idx] ^= 1 << rng.random_range(0..8);
        if let Ok(other) = TpmtPublic::parse(&k) {
            assert!(verify_ecdsa_p256(&other, &msg, &sig).is_err());
        }
        let mut p = party.tpm.vote_public_key().await.unwrap();
        let bit = rng.random_range(8..520);
        p.0[bit / 8] ^= 1 << (bit % 8);
        assert!(p.verify(&msg, &signed.signature).is_err());
    }
}

/// A challenge flood queues attestation work (PCR reads, as evidence
/// production does) in the owner's background lane; a vote signature
/// queued after all of it runs before any of it.
#[tokio::test]
async fn a_consensus_signature_overtakes_queued_attestation_work() {
    use quorate_host::tpm::Priority;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let party = common::Party::new().await;
    let ran = Arc::new(AtomicUsize::new(0));
    // Hold the owner thread until everything is queued.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let tpm = party.tpm.clone();
    let gate = tokio::spawn(async move {
        tpm.run(move |_| {
            let _ = started_tx.send(());
            let _ = held.recv();
            Ok(())
        })
        .await
    });
    started.await.unwrap();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (tpm, ran) = (party.tpm.clone(), ran.clone());
        flood.spawn(async move {
            tpm.run(move |o| {
                let v = o.pcr_read(23)?;
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(v)
            })
            .await
        });
    }
    // This runtime has one thread: yielding lets every flood task queue
    // its job (the owner is held by the gate).
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    let msg = b"height 9 round 0 precommit".to_vec();
    let tpm = party.tpm.clone();
    let m = msg.clone();
    let sign = tokio::spawn(async move { tpm.sign_consensus(m).await });
    // A marker right behind the signature in the consensus lane: how many
    // background jobs ran before it.
    let (tpm, r) = (party.tpm.clone(), ran.clone());
    let marker = tokio::spawn(async move {
        tpm.run_at(Priority::Consensus, move |_| Ok(r.load(Ordering::SeqCst)))
            .await
    });
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    gate.await.unwrap().unwrap();
    let signature = sign.await.unwrap().unwrap();
    party
        .tpm
        .vote_public_key()
        .await
        .unwrap()
        .verify(&msg, &signature)
        .unwrap();
    assert_eq!(
        marker.await.unwrap().unwrap(),
        0,
        "attestation work ran before the queued consensus signature"
    );
    while let Some(r) = flood.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), 64);
}
