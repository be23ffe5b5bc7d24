//! The AK, quotes, certification and the PolicyPCR-bound vote key against
//! a real swtpm, checked with the attestation crate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_attestation::attest::{Attested, TpmsAttest};
use quorate_attestation::pcr::{extend_sha256, measurement_policy, pcr_composite_digest, PcrIndex};
use quorate_attestation::tpm::{verify_ecdsa_p256, TpmSignature, TpmtPublic};
use quorate_firmware::types::Sha256Digest;
use quorate_host::tpm::{KeySpec, Swtpm, TpmError, TpmHandle};

const DEV_PCR: u8 = 23;

async fn open() -> (tempfile::TempDir, Swtpm, TpmHandle) {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::spawn(&dir.path().join("tpm")).unwrap();
    let tpm = TpmHandle::open(&swtpm.tcti()).await.unwrap();
    (dir, swtpm, tpm)
}

#[tokio::test]
async fn ak_quotes_and_certifies_and_reports_reset_count() {
    let (_dir, mut swtpm, tpm) = open().await;
    let ak = tpm.create_ak().await.unwrap();
    tpm.set_ak(ak.blob.clone(), Some(ak.ek_name.clone()), ak.ek_template)
        .await
        .unwrap();
    let ak_public = TpmtPublic::parse(&ak.blob.tpmt_public().unwrap()).unwrap();
    let a = ak_public.object_attributes();
    assert!(a.restricted() && a.sign() && a.fixed_tpm() && a.fixed_parent());
    assert!(a.sensitive_data_origin() && a.no_da() && !a.decrypt());

    tpm.pcr_extend(DEV_PCR, [9; 32]).await.unwrap();
    let pcr = tpm.pcr_read(DEV_PCR).await.unwrap();
    assert_eq!(
        Sha256Digest(pcr),
        extend_sha256(&Sha256Digest([0; 32]), &Sha256Digest([9; 32]))
    );

    let q = tpm.quote(vec![DEV_PCR], vec![7; 32]).await.unwrap();
    verify_ecdsa_p256(
        &ak_public,
        &q.attest,
        &TpmSignature::parse(&q.signature).unwrap(),
    )
    .unwrap();
    let parsed = TpmsAttest::parse(&q.attest).unwrap();
    assert_eq!(parsed.extra_data, vec![7; 32]);
    assert_eq!(parsed.clock_info.reset_count, q.reset_count);
    match &parsed.attested {
        Attested::Quote { pcr_digest, .. } => {
            assert_eq!(
                pcr_digest.as_slice(),
                pcr_composite_digest(&[Sha256Digest(pcr)]).as_bytes()
            );
        }
        other => panic!("not a quote: {other:?}"),
    }

    // Certify the vote key.
    let vote = tpm.create_vote_key(KeySpec::vote_password()).await.unwrap();
    tpm.load_vote_key(vote.blob.clone(), Some(vote.srk_name.clone()))
        .await
        .unwrap();
    let c = tpm.certify_vote_key(vec![1, 2, 3]).await.unwrap();
    verify_ecdsa_p256(
        &ak_public,
        &c.attest,
        &TpmSignature::parse(&c.signature).unwrap(),
    )
    .unwrap();
    match TpmsAttest::parse(&c.attest).unwrap().attested {
        Attested::Certify { name, .. } => assert_eq!(name.as_bytes(), vote.name.as_slice()),
        other => panic!("not a certification: {other:?}"),
    }

    // A TPM reset (swtpm restart with startup-clear) increments resetCount.
    let before = tpm.reset_count().await.unwrap();
    swtpm.stop().unwrap();
    swtpm.restart().unwrap();
    // The same owner recovers (reconnect, EK re-created, AK reloaded).
    let after = tpm.reset_count().await.unwrap();
    assert!(after > before, "resetCount {before} -> {after}");
}

#[tokio::test]
async fn trial_session_matches_the_software_policy_digest() {
    let (_dir, _swtpm, tpm) = open().await;
    for step in 0..3u8 {
        let value = Sha256Digest(tpm.pcr_read(DEV_PCR).await.unwrap());
        let trial = tpm.run(|o| o.trial_policy_pcr(DEV_PCR)).await.unwrap();
        let ours = measurement_policy(PcrIndex::new(DEV_PCR).unwrap(), &value);
        assert_eq!(trial, ours.0, "step {step}");
        tpm.pcr_extend(DEV_PCR, [step; 32]).await.unwrap();
    }
}

#[tokio::test]
async fn policy_bound_vote_key_signs_only_with_the_expected_pcr() {
    let (_dir, mut swtpm, tpm) = open().await;
    let pcr = PcrIndex::new(DEV_PCR).unwrap();
    let measurement = Sha256Digest([0x5a; 32]);
    let expected = extend_sha256(&Sha256Digest([0; 32]), &measurement);
    let spec = KeySpec::vote_policy_pcr(pcr, &expected);
    let vote = tpm.create_vote_key(spec).await.unwrap();
    let public = TpmtPublic::parse(&vote.blob.tpmt_public().unwrap()).unwrap();
    assert_eq!(
        public.auth_policy(),
        measurement_policy(pcr, &expected).as_bytes()
    );
    assert!(!public.object_attributes().user_with_auth());
    tpm.load_vote_key(vote.blob.clone(), Some(vote.srk_name.clone()))
        .await
        .unwrap();

    // PCR at its reset value: refused.
    let err = tpm.sign(b"too early".to_vec()).await.unwrap_err();
    assert!(matches!(err, TpmError::Tss { .. }), "{err}");

    // Measured: signs, many times on the one policy session.
    tpm.pcr_extend(DEV_PCR, measurement.0).await.unwrap();
    for i in 0..20u8 {
        let m = vec![i; 10];
        let s = tpm.sign_tpmt(m.clone()).await.unwrap();
        verify_ecdsa_p256(
            &public,
            &m,
            &TpmSignature::parse(&s.tpmt_signature).unwrap(),
        )
        .unwrap();
    }

    // Something else extended the PCR: refused again.
    tpm.pcr_extend(DEV_PCR, [1; 32]).await.unwrap();
    assert!(tpm.sign(b"tampered".to_vec()).await.is_err());

    // Reboot (PCRs reset) and measure again: the same key signs again,
    // after the owner recovers its lost session and key.
    swtpm.kill_hard().unwrap();
    swtpm.restart().unwrap();
    assert!(tpm.sign(b"unmeasured boot".to_vec()).await.is_err());
    tpm.pcr_extend(DEV_PCR, measurement.0).await.unwrap();
    let s = tpm.sign_tpmt(b"after reboot".to_vec()).await.unwrap();
    verify_ecdsa_p256(
        &public,
        b"after reboot",
        &TpmSignature::parse(&s.tpmt_signature).unwrap(),
    )
    .unwrap();
}

/// tpm2-tools accepts our quote: `tpm2_checkquote` verifies the AK's
/// signature over the exact TPMS_ATTEST bytes and the qualifying data.
#[tokio::test]
async fn tpm2_checkquote_accepts_our_quote() {
    let (dir, _swtpm, tpm) = open().await;
    let ak = tpm.create_ak().await.unwrap();
    tpm.set_ak(ak.blob.clone(), Some(ak.ek_name.clone()), ak.ek_template)
        .await
        .unwrap();
    tpm.pcr_extend(DEV_PCR, [3; 32]).await.unwrap();
    let qd = Sha256Digest::of(b"nonce").0.to_vec();
    let q = tpm.quote(vec![DEV_PCR], qd.clone()).await.unwrap();

    let p = |n: &str| dir.path().join(n);
    let tpmt = ak.blob.tpmt_public().unwrap();
    let mut tpm2b = (tpmt.len() as u16).to_be_bytes().to_vec();
    tpm2b.extend_from_slice(&tpmt);
    std::fs::write(p("ak.pub"), &tpm2b).unwrap();
    std::fs::write(p("quote.msg"), &q.attest).unwrap();
    std::fs::write(p("quote.sig"), &q.signature).unwrap();
    let check = |qd_hex: &str| {
        std::process::Command::new("tpm2_checkquote")
            .args(["-u", p("ak.pub").to_str().unwrap()])
            .args(["-m", p("quote.msg").to_str().unwrap()])
            .args(["-s", p("quote.sig").to_str().unwrap()])
            .args(["-g", "sha256", "-q", qd_hex])
            .env("TSS2_LOG", "all+none")
            .output()
            .unwrap()
    };
    let ok = check(&hex::encode(&qd));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = check(&hex::encode(Sha256Digest::of(b"other").0));
    assert!(!wrong.status.success());
}

/// Credential activation binds the AK to the EK: a credential made for the
/// AK's Name under this TPM's EK is recovered; one made for another Name,
/// or by another TPM's EK, is refused.
#[tokio::test]
async fn credential_activation_recovers_the_secret_only_for_our_ak() {
    let (_dir, _swtpm, tpm) = open().await;
    let ak = tpm.create_ak().await.unwrap();
    tpm.set_ak(ak.blob.clone(), Some(ak.ek_name.clone()), ak.ek_template)
        .await
        .unwrap();
    let ak_name = ak.blob.name().unwrap();
    let secret = Sha256Digest::of(b"challenge").0.to_vec();
    // The EK public a verifier would encrypt to: its Name is the AK's parent.
    let ek = TpmtPublic::parse(&tpm.ek_public().await.unwrap()).unwrap();
    assert_eq!(ek.name().as_bytes(), ak.ek_name.as_slice());
    assert!(ek.object_attributes().restricted() && ek.object_attributes().decrypt());
    // With the vote key loaded too, as in a running daemon (3 slots: vote
    // key, AK, EK).
    let vote = tpm.create_vote_key(KeySpec::vote_password()).await.unwrap();
    tpm.load_vote_key(vote.blob, Some(vote.srk_name))
        .await
        .unwrap();
    tpm.quote(vec![DEV_PCR], vec![]).await.unwrap(); // AK now loaded

    let (id, enc) = tpm
        .make_credential(secret.clone(), ak_name.clone())
        .await
        .unwrap();
    assert_eq!(tpm.activate_credential(id, enc).await.unwrap(), secret);

    // Made for another object's Name: the TPM refuses (integrity check).
    let mut other_name = ak_name.clone();
    other_name[5] ^= 1;
    let (id, enc) = tpm
        .make_credential(secret.clone(), other_name)
        .await
        .unwrap();
    assert!(tpm.activate_credential(id, enc).await.is_err());

    // Made by another TPM for our AK's Name: our EK cannot decrypt it.
    let (_dir2, _swtpm2, other) = open().await;
    let (id, enc) = other.make_credential(secret, ak_name).await.unwrap();
    assert!(tpm.activate_credential(id, enc).await.is_err());
    assert!(tpm.sign(b"still signs".to_vec()).await.is_ok());
    other.close().await.unwrap();
    tpm.close().await.unwrap();
}
