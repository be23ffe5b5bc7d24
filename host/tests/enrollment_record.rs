//! Enrollment records close the trust chain against a party that sets
//! itself up maliciously (issue 17 point 1), on a real swtpm manufactured
//! with an EK certificate by a local CA:
//!
//! - a software AK listed beside the TPM's genuine EK certificate cannot
//!   get a record: the TPM refuses to activate a credential sealed to it;
//! - `quorate run` outside dev mode refuses to start without a record, and
//!   with a record that does not match the enrollment, naming the party and
//!   `quorate enroll complete`;
//! - evidence made with a software AK beside that genuine EK certificate
//!   verifies on its own (nothing signs an AK's public area), and is refused
//!   once tied to the activated AK; real evidence passes admission.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use quorate_attestation::enroll::ActivationMismatch;
use quorate_attestation::evidence::{Evidence, Freshness};
use quorate_attestation::pcr::PcrIndex;
use quorate_attestation::policy::Policy;
use quorate_attestation::soft::SoftTpm;
use quorate_attestation::verify::{verify, VerifierState};
use quorate_firmware::types::{PartyId, Sha256Digest};
use quorate_host::daemon::admission::Admission;
use quorate_host::enroll_cli::{check_record, RecordError};
use quorate_host::init::{EnrolledKey, Enrollment, ENROLLMENT_FILE};
use quorate_host::tpm::Swtpm;

mod common;
use common::quorate;

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A party config for `dir` on `tcti`, with `record` as party 1's record.
fn config(
    root: &Path,
    dir: &Path,
    tcti: &str,
    dev: bool,
    enrollment: &Path,
    record: Option<&Path>,
) -> String {
    let record = record
        .map(|r| format!("enrollment_record = \"{}\"\n", r.display()))
        .unwrap_or_default();
    format!(
        "[party]\nid = 1\ndata_dir = \"{}\"\ntpm = \"{tcti}\"\ndev = {dev}\napi_listen = \"127.0.0.1:1\"\n\n[cluster]\nname = \"record-test\"\nreference_policy = \"{}\"\n\n[[cluster.parties]]\nid = 1\naddress = \"127.0.0.1:1\"\nenrollment = \"{}\"\n{record}",
        dir.display(),
        root.join("policy.toml").display(),
        enrollment.display(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_software_ak_beside_a_genuine_ek_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("tpm1");
    let ca = Swtpm::manufacture_with_ek_certificates(&state, &root.join("vendor-ca")).unwrap();
    let swtpm = Swtpm::spawn(&state).unwrap();
    let tcti = swtpm.tcti().to_string();
    let dir = root.join("p1");
    let enrollment = dir.join(ENROLLMENT_FILE);
    std::fs::write(root.join("policy.toml"), "placeholder\n").unwrap();
    let dev_cfg = root.join("dev.toml");
    std::fs::write(&dev_cfg, config(root, &dir, &tcti, true, &enrollment, None)).unwrap();
    ok(&quorate(&[
        "init",
        "--data-dir",
        s(&dir),
        "--party-id",
        "1",
        "--tpm",
        &tcti,
        "--config",
        s(&dev_cfg),
        "--ek-chain",
        s(&ca.intermediate_pem),
    ]));
    let honest_bytes = std::fs::read(&enrollment).unwrap();
    let honest = Enrollment::from_json(&honest_bytes).unwrap();

    // The honest enrollment: challenge, activate, complete.
    let enroll = |enrollment: &Path, tag: &str| -> Output {
        let ch = root.join(format!("{tag}.challenge.json"));
        ok(&quorate(&[
            "enroll",
            "challenge",
            "--enrollment",
            s(enrollment),
            "--out",
            s(&ch),
            "--state",
            s(&root.join(format!("{tag}.state.json"))),
            "--ek-root",
            s(&ca.root_pem),
            "--require-ek-cert",
        ]));
        quorate(&[
            "activate",
            "--data-dir",
            s(&dir),
            "--tpm",
            &tcti,
            "--challenge",
            s(&ch),
            "--out",
            s(&root.join(format!("{tag}.answer.json"))),
        ])
    };
    ok(&enroll(&enrollment, "honest"));
    let record = root.join("p1.enrolled.json");
    ok(&quorate(&[
        "enroll",
        "complete",
        "--state",
        s(&root.join("honest.state.json")),
        "--answer",
        s(&root.join("honest.answer.json")),
        "--out",
        s(&record),
    ]));
    let activated = check_record(&record, &enrollment, &honest_bytes, &honest).unwrap();
    assert_eq!(
        hex::encode(activated.ak_name.as_bytes()),
        honest.ak.as_ref().unwrap().name
    );

    // The malicious setup: the genuine EK and its certificate, beside an AK
    // made in software (whose private key the attacker holds).
    let rng = ring::rand::SystemRandom::new();
    let exe = Sha256Digest::of(b"whatever the attacker runs");
    let cfg = Sha256Digest::of(b"rules");
    let soft = SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &exe, &cfg, 1).unwrap();
    let mut forged = honest.clone();
    forged.ak = Some(EnrolledKey {
        tpmt_public: hex::encode(soft.ak_public.as_bytes()),
        name: hex::encode(soft.ak_public.name().as_bytes()),
        point: hex::encode(soft.ak_public.ecc_p256_point().unwrap().0),
    });
    let forged_bytes = serde_json::to_vec_pretty(&forged).unwrap();

    // (a) It cannot be enrolled: the challenge is sealed to (EK, software
    // AK Name), which no object in the TPM holding the EK has.
    std::fs::write(&enrollment, &forged_bytes).unwrap();
    let err = fails(&enroll(&enrollment, "forged"));
    assert!(err.contains("the TPM refused the challenge"), "{err}");
    std::fs::write(&enrollment, &honest_bytes).unwrap();

    // (b) `quorate run` outside dev mode: no record, then the honest record
    // beside the forged enrollment: refused at start, naming the party and
    // the command to run.
    let run = |cfg_text: String| {
        let path = root.join("prod.toml");
        std::fs::write(&path, cfg_text).unwrap();
        fails(&quorate(&["run", "--config", s(&path)]))
    };
    let err = run(config(root, &dir, &tcti, false, &enrollment, None));
    assert!(
        err.contains("P1 has no enrollment record") && err.contains("quorate enroll complete"),
        "{err}"
    );
    let forged_path = root.join("forged.json");
    std::fs::write(&forged_path, &forged_bytes).unwrap();
    let err = run(config(
        root,
        &dir,
        &tcti,
        false,
        &forged_path,
        Some(&record),
    ));
    assert!(
        err.contains("of P1 does not match its enrollment")
            && err.contains("quorate enroll complete"),
        "{err}"
    );
    // Even a record edited to carry the forged file's digest: the AK Name
    // it activated is not the forged AK's.
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    r["enrollment_sha256"] = Sha256Digest::of(&forged_bytes).to_string().into();
    let edited = root.join("edited.json");
    std::fs::write(&edited, serde_json::to_vec(&r).unwrap()).unwrap();
    match check_record(&edited, &forged_path, &forged_bytes, &forged) {
        Err(RecordError::Mismatch { what, party, .. }) => {
            assert_eq!(what, "the AK Name");
            assert_eq!(party, PartyId(1));
        }
        other => panic!("the forged AK was not refused: {other:?}"),
    }

    // (c) Evidence: a quote by the software AK beside the genuine EK
    // certificate verifies by itself, and is refused when tied to the
    // activated AK.
    let (cert, _) = honest.ek.as_ref().unwrap().certificates().unwrap();
    let cert = cert.expect("the TPM's EK certificate");
    let mut soft = soft;
    let fresh = Freshness::Nonce(vec![7; 16]);
    let soft_policy = Policy::new(vec![exe], cfg);
    let mut ev = soft
        .evidence(
            &rng,
            &fresh,
            &Sha256Digest::of(b"tls"),
            &soft_policy.quoted_pcrs(),
        )
        .unwrap();
    ev.ek_certificate = Some(serde_bytes::ByteBuf::from(cert.clone()));
    let r = verify(&ev, &fresh, &soft_policy, &mut VerifierState::default()).unwrap();
    assert!(matches!(
        activated.check(&r.ak_name, Some(&cert)),
        Err(ActivationMismatch::AkNotActivated { .. })
    ));
    // The genuine EK certificate beside an activation of another EK.
    let mut other = activated.clone();
    other.ak_name = r.ak_name.clone();
    other.ek_public = soft.ak_public.clone();
    assert!(matches!(
        other.check(&r.ak_name, Some(&cert)),
        Err(ActivationMismatch::EkCertificateForAnotherKey { .. })
    ));

    // (d) The party's real evidence passes admission tied to its record.
    let nonce = [0x5a_u8; 20];
    let ev_path = root.join("evidence.bin");
    ok(&quorate(&[
        "attest",
        "--config",
        s(&dev_cfg),
        "--nonce",
        &hex::encode(nonce),
        "--out",
        s(&ev_path),
    ]));
    let bytes = std::fs::read(&ev_path).unwrap();
    let real = Evidence::from_bytes(&bytes).unwrap();
    assert!(
        real.ek_certificate.is_some(),
        "evidence carries the EK certificate"
    );
    let (rules, _) = quorate_host::config::Config::measured_digest_of_file(&dev_cfg).unwrap();
    let exe = quorate_host::launch::file_digest(Path::new(env!("CARGO_BIN_EXE_quorate"))).unwrap();
    let mut policy = Policy::new(vec![exe], rules);
    policy.dev = true;
    policy.measurement_pcr = PcrIndex::DEV_MEASUREMENT;
    policy.require_ek_certificate = true;
    policy.ek_roots = vec![std::fs::read_to_string(&ca.root_pem).unwrap()];
    let enrollments = BTreeMap::from([(PartyId(1), honest.clone())]);
    let mut admission = Admission::new(Some(policy.clone()), PartyId(2), &enrollments)
        .with_activated(BTreeMap::from([(PartyId(1), activated.clone())]));
    admission.connected(PartyId(1), nonce.to_vec());
    admission.check_evidence(PartyId(1), &bytes).unwrap();
    assert!(admission.admitted(PartyId(1)));
    // The same evidence against the activation of another AK is refused.
    let mut admission = Admission::new(Some(policy), PartyId(2), &enrollments)
        .with_activated(BTreeMap::from([(PartyId(1), other)]));
    admission.connected(PartyId(1), nonce.to_vec());
    let err = admission.check_evidence(PartyId(1), &bytes).unwrap_err();
    assert!(err.contains("enrolled"), "{err}");
    drop(swtpm);
}
