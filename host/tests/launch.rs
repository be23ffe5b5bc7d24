//! Measured launch against a real swtpm: once per TPM boot, replayable
//! from the event log, refused when the PCR and the log disagree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_attestation::eventlog::EventLog;
use quorate_attestation::pcr::{measurement_policy, PcrIndex};
use quorate_attestation::tpm::TpmtPublic;
use quorate_firmware::types::{PartyId, Sha256Digest};
use quorate_host::init::{init_with, Enrollment, InitOptions, MeasuredInit, ENROLLMENT_FILE};
use quorate_host::launch::{
    measured_launch, LaunchError, LaunchOutcome, Measurement, EVENT_LOG_FILE,
};
use quorate_host::tpm::{Swtpm, TpmHandle, TpmTarget};

fn measurement() -> Measurement {
    Measurement {
        pcr: PcrIndex::DEFAULT_MEASUREMENT,
        executable: Sha256Digest::of(b"quorate executable"),
        config: Sha256Digest::of(b"cluster config"),
    }
}

struct Fixture {
    swtpm: Swtpm,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("party")
    }

    async fn open(&self) -> TpmHandle {
        TpmHandle::open_party(&self.data(), &self.swtpm.tcti())
            .await
            .unwrap()
    }
}

async fn provisioned() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::spawn(&dir.path().join("tpm")).unwrap();
    let f = Fixture { swtpm, dir };
    let report = init_with(
        &InitOptions {
            data_dir: f.data(),
            party_id: PartyId(1),
            tpm: TpmTarget::Tcti(f.swtpm.tcti()),
            force: false,
        },
        Some(MeasuredInit {
            measurement: measurement(),
            dev: false,
        }),
    )
    .await
    .unwrap();
    // The enrolled vote key carries the PolicyPCR of the expected value.
    let e = Enrollment::load(&report.enrollment_path).unwrap();
    assert!(e.ak.is_some());
    let vote = TpmtPublic::parse(&hex::decode(&e.vote_key.tpmt_public).unwrap()).unwrap();
    let m = measurement();
    assert_eq!(
        vote.auth_policy(),
        measurement_policy(m.pcr, &m.expected_pcr()).as_bytes()
    );
    f
}

#[tokio::test]
async fn launch_once_per_boot_and_sign() {
    let mut f = provisioned().await;
    let m = measurement();
    let e = Enrollment::load(&f.data().join(ENROLLMENT_FILE)).unwrap();
    let key = e.vote_public_key().unwrap();

    // init measured this boot already: a daemon start does not extend again.
    let tpm = f.open().await;
    let r = measured_launch(&tpm, &f.data(), &m, false).await.unwrap();
    assert_eq!(r.outcome, LaunchOutcome::AlreadyMeasured);
    assert_eq!(r.pcr_value, m.expected_pcr());
    let sig = tpm.sign(b"vote".to_vec()).await.unwrap();
    key.verify(b"vote", &sig).unwrap();

    // Another executable in the same boot: refused, naming both digests.
    let other = Measurement {
        executable: Sha256Digest::of(b"tampered executable"),
        ..m
    };
    let err = measured_launch(&tpm, &f.data(), &other, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LaunchError::AlreadyMeasuredOther {
                what: "executable",
                ..
            }
        ),
        "{err}"
    );
    let other = Measurement {
        config: Sha256Digest::of(b"another config"),
        ..m
    };
    let err = measured_launch(&tpm, &f.data(), &other, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LaunchError::AlreadyMeasuredOther {
                what: "configuration",
                ..
            }
        ),
        "{err}"
    );

    // Reboot: a new resetCount, measured again, the same key signs again.
    tpm.close().await.unwrap();
    f.swtpm.stop().unwrap();
    f.swtpm.restart().unwrap();
    let tpm = f.open().await;
    assert!(tpm.sign(b"before launch".to_vec()).await.is_err());
    let r2 = measured_launch(&tpm, &f.data(), &m, false).await.unwrap();
    assert_eq!(r2.outcome, LaunchOutcome::Measured);
    assert!(r2.reset_count > r.reset_count);
    let log = EventLog::parse(&std::fs::read(f.data().join(EVENT_LOG_FILE)).unwrap()).unwrap();
    assert_eq!(log.replay_sha256().unwrap()[&m.pcr], m.expected_pcr());
    let sig = tpm.sign(b"vote 2".to_vec()).await.unwrap();
    key.verify(b"vote 2", &sig).unwrap();

    // Something else extends the PCR: the next start refuses, and the key
    // no longer signs.
    tpm.pcr_extend(m.pcr.get(), [7; 32]).await.unwrap();
    let err = measured_launch(&tpm, &f.data(), &m, false)
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::PcrMismatch { .. }), "{err}");
    assert!(tpm.sign(b"vote 3".to_vec()).await.is_err());
    tpm.close().await.unwrap();
}

#[tokio::test]
async fn interrupted_launch_is_resumed_and_foreign_extends_refused() {
    let mut f = provisioned().await;
    let m = measurement();

    // Reboot, then simulate a crash after the log was written and only the
    // executable was extended.
    f.swtpm.kill_hard().unwrap();
    f.swtpm.restart().unwrap();
    let tpm = f.open().await;
    let rc = tpm.reset_count().await.unwrap();
    std::fs::write(f.data().join(EVENT_LOG_FILE), m.event_log(rc).to_bytes()).unwrap();
    tpm.pcr_extend(m.pcr.get(), m.executable.0).await.unwrap();
    let r = measured_launch(&tpm, &f.data(), &m, false).await.unwrap();
    assert_eq!(r.outcome, LaunchOutcome::Resumed(1));
    assert!(tpm.sign(b"resumed".to_vec()).await.is_ok());

    // An altered log (one digest byte) in the same boot: refused.
    let path = f.data().join(EVENT_LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1; // last byte of the config event's data
    std::fs::write(&path, &bytes).unwrap();
    assert!(measured_launch(&tpm, &f.data(), &m, false).await.is_err());
    tpm.close().await.unwrap();

    // Reboot; someone extends the PCR before we launch: refused.
    f.swtpm.stop().unwrap();
    f.swtpm.restart().unwrap();
    let tpm = f.open().await;
    tpm.pcr_extend(m.pcr.get(), [1; 32]).await.unwrap();
    let err = measured_launch(&tpm, &f.data(), &m, false)
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::PcrNotFresh { .. }), "{err}");

    // PCR 23 without dev mode: refused before touching the TPM.
    let dev = Measurement {
        pcr: PcrIndex::DEV_MEASUREMENT,
        ..m
    };
    let err = measured_launch(&tpm, &f.data(), &dev, false)
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::NeedsDev { .. }), "{err}");
    tpm.close().await.unwrap();
}

/// Evidence from the real TPM passes the attestation crate's verifier;
/// another nonce does not.
#[tokio::test]
async fn evidence_from_the_tpm_verifies() {
    use quorate_attestation::evidence::{Evidence, Freshness};
    use quorate_attestation::policy::Policy;
    use quorate_attestation::verify::{verify, VerifierState};

    let f = provisioned().await;
    let m = measurement();
    let tpm = f.open().await;
    measured_launch(&tpm, &f.data(), &m, false).await.unwrap();
    let nonce = Freshness::Nonce(vec![0xab; 32]);
    let tls = Sha256Digest::of(b"tls key");
    let ev = quorate_host::evidence::produce_evidence(&tpm, &f.data(), m.pcr, &[], &nonce, &tls)
        .await
        .unwrap();
    let ev = Evidence::from_bytes(&ev.to_bytes()).unwrap();
    let mut policy = Policy::new(vec![m.executable], m.config);
    policy.require_ak_no_da = true;
    let mut state = VerifierState::default();
    let result = verify(&ev, &nonce, &policy, &mut state).unwrap();
    assert_eq!(result.measurement, m.expected_pcr());
    assert_eq!(result.executable, m.executable);
    let e = Enrollment::load(&f.data().join(ENROLLMENT_FILE)).unwrap();
    assert_eq!(result.vote_key, e.vote_public_key().unwrap());

    let mut fresh = VerifierState::default();
    assert!(verify(&ev, &Freshness::Nonce(vec![0xac; 32]), &policy, &mut fresh).is_err());
    let other = Policy::new(vec![Sha256Digest::of(b"other exe")], m.config);
    assert!(verify(&ev, &nonce, &other, &mut VerifierState::default()).is_err());
    tpm.close().await.unwrap();
}

/// A checkpoint quote made by a real TPM (swtpm) verifies offline with the
/// enrolled AK; the same quote for another checkpoint, or under a policy
/// that does not approve the running executable, does not.
#[tokio::test]
async fn a_checkpoint_quote_from_the_tpm_verifies() {
    use quorate_attestation::checkpoint::CheckpointQuote;
    use quorate_attestation::checkpoint_verify::{verify_checkpoint_quote, CheckpointVerifyError};
    use quorate_attestation::evidence::SignedAttest;
    use quorate_attestation::pcr::PcrValue;
    use quorate_attestation::policy::Policy;
    use quorate_firmware::audit::checkpoint::Checkpoint;
    use quorate_firmware::audit::merkle::TreeSize;

    let f = provisioned().await;
    let m = measurement();
    let tpm = f.open().await;
    measured_launch(&tpm, &f.data(), &m, false).await.unwrap();
    let cp = Checkpoint {
        origin: "quorate/00ff".into(),
        size: TreeSize(8),
        root: Sha256Digest::of(b"root"),
        extensions: vec![],
    };
    let qd = cp.quote_qualifying_data();
    let q = tpm.quote(vec![m.pcr.get()], qd.0.to_vec()).await.unwrap();
    let value = Sha256Digest(tpm.pcr_read(m.pcr.get()).await.unwrap());
    let line = CheckpointQuote {
        quote: SignedAttest {
            attest: q.attest,
            signature: q.signature,
        },
        pcr_values: vec![PcrValue {
            index: m.pcr,
            value,
        }],
    }
    .encode();
    let cq = CheckpointQuote::decode(&line).unwrap();
    let e = Enrollment::load(&f.data().join(ENROLLMENT_FILE)).unwrap();
    let ak = hex::decode(&e.ak.unwrap().tpmt_public).unwrap();
    let policy = Policy::new(vec![m.executable], m.config);
    let r = verify_checkpoint_quote(&ak, &cq, &qd, &policy).unwrap();
    assert_eq!(r.measurement, m.expected_pcr());
    assert_eq!(r.executable, m.executable);
    let other = Checkpoint {
        size: TreeSize(9),
        ..cp.clone()
    };
    assert!(matches!(
        verify_checkpoint_quote(&ak, &cq, &other.quote_qualifying_data(), &policy),
        Err(CheckpointVerifyError::QualifyingDataMismatch { .. })
    ));
    let not_ours = Policy::new(vec![Sha256Digest::of(b"other exe")], m.config);
    assert!(matches!(
        verify_checkpoint_quote(&ak, &cq, &qd, &not_ours),
        Err(CheckpointVerifyError::MeasurementNotApproved { .. })
    ));
    tpm.close().await.unwrap();
}
