//! The party's signatures survive swtpm being killed with SIGKILL and
//! restarted on the same state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_attestation::tpm::{verify_ecdsa_p256, TpmSignature, TpmtPublic};
use quorate_host::init::{init, Enrollment, InitOptions, ENROLLMENT_FILE};
use quorate_host::tpm::{Swtpm, TpmHandle, TpmTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_after_sigkill_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut swtpm = Swtpm::spawn(&tmp.path().join("tpm")).unwrap();
    let dir = tmp.path().join("party");
    init(&InitOptions {
        data_dir: dir.clone(),
        party_id: quorate_firmware::types::PartyId(5),
        tpm: TpmTarget::Tcti(swtpm.tcti()),
        force: false,
    })
    .await
    .unwrap();
    let enrollment = Enrollment::load(&dir.join(ENROLLMENT_FILE)).unwrap();
    let tpmt = TpmtPublic::parse(&hex::decode(&enrollment.vote_key.tpmt_public).unwrap()).unwrap();
    let verify = |m: &[u8], raw: &[u8]| {
        verify_ecdsa_p256(&tpmt, m, &TpmSignature::parse(raw).unwrap()).unwrap();
    };

    let tpm = TpmHandle::open_party(&dir, &swtpm.tcti()).await.unwrap();
    let s = tpm.sign_tpmt(b"before".to_vec()).await.unwrap();
    verify(b"before", &s.tpmt_signature);

    // Power cut, then boot: the same handle recovers on its own (reconnect,
    // SRK from template, key from blobs), across several concurrent callers.
    swtpm.kill_hard().unwrap();
    swtpm.restart().unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8u8 {
        let tpm = tpm.clone();
        set.spawn(async move {
            let m = vec![i; 40];
            (m.clone(), tpm.sign_tpmt(m).await.unwrap())
        });
    }
    while let Some(r) = set.join_next().await {
        let (m, s) = r.unwrap();
        verify(&m, &s.tpmt_signature);
    }

    // While the TPM is down, signing fails with an error naming the TCTI
    // (no hang); once it is back, the same handle signs again.
    swtpm.kill_hard().unwrap();
    let err = tpm.sign(b"down".to_vec()).await.unwrap_err();
    assert!(err.to_string().contains(&swtpm.tcti().to_string()), "{err}");
    swtpm.restart().unwrap();
    let s = tpm.sign_tpmt(b"after".to_vec()).await.unwrap();
    verify(b"after", &s.tpmt_signature);
    tpm.close().await.unwrap();

    // A fresh process after the crash also signs under the enrolled key.
    let tpm2 = TpmHandle::open_party(&dir, &swtpm.tcti()).await.unwrap();
    let s = tpm2.sign_tpmt(b"new process".to_vec()).await.unwrap();
    verify(b"new process", &s.tpmt_signature);
    assert_eq!(
        tpm2.vote_public_key().await.unwrap(),
        enrollment.vote_public_key().unwrap()
    );
    tpm2.close().await.unwrap();
}

/// A crashed process leaves its objects loaded; the next owner flushes them
/// instead of running out of swtpm's three transient slots.
#[tokio::test]
async fn stale_transient_objects_are_flushed_at_start() {
    use tss_esapi::interface_types::{resource_handles::Hierarchy, session_handles::AuthSession};
    let tmp = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::spawn(&tmp.path().join("tpm")).unwrap();

    // "Crashed process": fill every transient slot and vanish without flushing.
    let mut ctx = tss_esapi::Context::new(swtpm.tcti().to_name_conf().unwrap()).unwrap();
    let mut filled = 0;
    for _ in 0..8 {
        let t = quorate_host::tpm::keys::srk_template().unwrap();
        let r = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, t, None, None, None, None)
        });
        if r.is_err() {
            break;
        }
        filled += 1;
    }
    assert!(filled >= 3, "swtpm should hold at least 3 objects");
    std::mem::forget(ctx);

    let tpm = TpmHandle::open(&swtpm.tcti()).await.unwrap();
    let key = tpm
        .create_vote_key(quorate_host::tpm::KeySpec::vote_password())
        .await
        .unwrap();
    tpm.load_vote_key(key.blob.clone(), Some(key.srk_name))
        .await
        .unwrap();
    let sig = tpm.sign(b"slots".to_vec()).await.unwrap();
    key.blob
        .p256_point()
        .unwrap()
        .verify(b"slots", &sig)
        .unwrap();
    tpm.close().await.unwrap();
}
