//! Sealed data objects (MPC key shares) against a real swtpm: they open only
//! on the TPM that sealed them, only while the measurement PCR holds the
//! approved value, survive a TPM reboot once it is measured again, and the
//! stored blob does not contain the secret.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_attestation::pcr::{extend_sha256, PcrIndex};
use quorate_firmware::types::Sha256Digest;
use quorate_host::tpm::{KeySpec, Swtpm, TpmError, TpmHandle};
use zeroize::Zeroizing;

const DEV_PCR: u8 = 23;
const MEASUREMENT: [u8; 32] = [0x5a; 32];

/// A TPM with a PolicyPCR-bound vote key loaded and the PCR measured.
async fn measured(dir: &std::path::Path) -> (Swtpm, TpmHandle) {
    let swtpm = Swtpm::spawn(&dir.join("tpm")).unwrap();
    let tpm = TpmHandle::open(&swtpm.tcti()).await.unwrap();
    let pcr = PcrIndex::new(DEV_PCR).unwrap();
    let expected = extend_sha256(&Sha256Digest([0; 32]), &Sha256Digest(MEASUREMENT));
    let vote = tpm
        .create_vote_key(KeySpec::vote_policy_pcr(pcr, &expected))
        .await
        .unwrap();
    tpm.load_vote_key(vote.blob, Some(vote.srk_name))
        .await
        .unwrap();
    tpm.pcr_extend(DEV_PCR, MEASUREMENT).await.unwrap();
    (swtpm, tpm)
}

#[tokio::test]
async fn a_sealed_share_opens_only_under_the_measured_pcr_on_its_own_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut swtpm, tpm) = measured(dir.path()).await;
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let blob = tpm.seal(Zeroizing::new(secret.clone())).await.unwrap();
    // The stored form does not carry the plaintext.
    let stored = postcard::to_allocvec(&blob).unwrap();
    assert!(
        !stored.windows(secret.len()).any(|w| w == secret.as_slice()),
        "the sealed blob contains the secret in the clear"
    );
    assert_eq!(tpm.unseal(blob.clone()).await.unwrap().as_slice(), secret);
    // Repeatedly, on the one policy session, and interleaved with signing.
    for _ in 0..3 {
        tpm.sign(b"vote".to_vec()).await.unwrap();
        assert_eq!(tpm.unseal(blob.clone()).await.unwrap().as_slice(), secret);
    }

    // Something else extended the PCR: refused.
    tpm.pcr_extend(DEV_PCR, [1; 32]).await.unwrap();
    let err = tpm.unseal(blob.clone()).await.unwrap_err();
    assert!(matches!(err, TpmError::Tss { .. }), "{err}");

    // Reboot: unmeasured, refused; measured again, it opens.
    swtpm.kill_hard().unwrap();
    swtpm.restart().unwrap();
    assert!(tpm.unseal(blob.clone()).await.is_err());
    tpm.pcr_extend(DEV_PCR, MEASUREMENT).await.unwrap();
    assert_eq!(tpm.unseal(blob.clone()).await.unwrap().as_slice(), secret);

    // Another TPM, measured the same way, cannot load it.
    let other = tempfile::tempdir().unwrap();
    let (_swtpm2, tpm2) = measured(other.path()).await;
    assert!(tpm2.unseal(blob).await.is_err());
}

#[tokio::test]
async fn sealing_refuses_empty_and_oversized_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (_swtpm, tpm) = measured(dir.path()).await;
    for len in [0usize, 129] {
        let err = tpm.seal(Zeroizing::new(vec![7; len])).await.unwrap_err();
        assert!(matches!(err, TpmError::SealSize(n) if n == len), "{err}");
    }
    let max = tpm.seal(Zeroizing::new(vec![9; 128])).await.unwrap();
    assert_eq!(tpm.unseal(max).await.unwrap().as_slice(), &[9u8; 128][..]);
}
