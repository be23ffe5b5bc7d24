//! Enrollment by credential activation and EK certificates, end to end
//! with the real `quorate` binary on two swtpm instances manufactured with
//! EK certificates by two different local CAs (as TPM vendors would).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Output;

use quorate_attestation::credential::ek_matches_certificate;
use quorate_attestation::ekcert::{certificates_from_text, verify_ek_chain, EkError};
use quorate_attestation::tpm::TpmtPublic;
use quorate_host::enroll_cli::{ChallengeFile, EnrollmentRecord};
use quorate_host::init::{Enrollment, ENROLLMENT_FILE};
use quorate_host::tpm::{EkCa, EkTemplate, Swtpm, TpmHandle};

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

/// A party: its manufactured swtpm (certified by `ca`), data dir and config.
struct Party {
    swtpm: Swtpm,
    dir: PathBuf,
    config: PathBuf,
    ca: EkCa,
}

fn cluster_rules(root: &Path) -> String {
    format!(
        "[cluster]\nname = \"enroll-test\"\n\n[[cluster.parties]]\nid = 1\naddress = \"127.0.0.1:1\"\nenrollment = \"{a}\"\n\n[[cluster.parties]]\nid = 2\naddress = \"127.0.0.1:2\"\nenrollment = \"{b}\"\n",
        a = root.join("p1").join(ENROLLMENT_FILE).display(),
        b = root.join("p2").join(ENROLLMENT_FILE).display(),
    )
}

fn party(root: &Path, id: u32, ca_dir: &Path) -> Party {
    let state = root.join(format!("tpm{id}"));
    let ca = Swtpm::manufacture_with_ek_certificates(&state, ca_dir).unwrap();
    let swtpm = Swtpm::spawn(&state).unwrap();
    let dir = root.join(format!("p{id}"));
    let config = root.join(format!("party{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "[party]\nid = {id}\ndata_dir = \"{}\"\ntpm = \"{}\"\ndev = true\n\n{}",
            dir.display(),
            swtpm.tcti(),
            cluster_rules(root)
        ),
    )
    .unwrap();
    let tcti = swtpm.tcti().to_string();
    let out = quorate(&[
        "init",
        "--data-dir",
        s(&dir),
        "--party-id",
        &id.to_string(),
        "--tpm",
        &tcti,
        "--config",
        s(&config),
        "--ek-chain",
        s(&ca.intermediate_pem),
    ]);
    let text = ok(&out);
    assert!(text.contains("ECC NIST P-384"), "{text}");
    Party {
        swtpm,
        dir,
        config,
        ca,
    }
}

fn pem_der(p: &Path) -> Vec<u8> {
    certificates_from_text(&std::fs::read_to_string(p).unwrap())
        .unwrap()
        .remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_by_credential_activation_and_ek_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = party(root, 1, &root.join("vendor-ca"));
    let b = party(root, 2, &root.join("unknown-ca"));
    let enrollment_a = a.dir.join(ENROLLMENT_FILE);
    let enrollment_b = b.dir.join(ENROLLMENT_FILE);

    // The enrollment records the certified EK: the P-384 one swtpm_setup
    // certifies, re-created from TCG template H-3, and its public area is
    // the certificate's key; the certificate chains to the vendor's CA.
    let e = Enrollment::load(&enrollment_a).unwrap();
    let ek = e.ek.as_ref().unwrap();
    assert_eq!(ek.template, EkTemplate::EccP384);
    let (cert, chain) = ek.certificates().unwrap();
    let cert = cert.expect("the EK certificate from NV 0x01c00016");
    assert_eq!(chain, vec![pem_der(&a.ca.intermediate_pem)]);
    let info = verify_ek_chain(&cert, &chain, &[pem_der(&a.ca.root_pem)], None).unwrap();
    let ek_public = TpmtPublic::parse(&hex::decode(&ek.tpmt_public).unwrap()).unwrap();
    assert!(ek_matches_certificate(&ek_public, &info.ek_spki));
    // The other vendor's certificate does not chain to this root: its own error.
    let eb = Enrollment::load(&enrollment_b).unwrap();
    let (cert_b, chain_b) = eb.ek.as_ref().unwrap().certificates().unwrap();
    assert!(matches!(
        verify_ek_chain(&cert_b.unwrap(), &chain_b, &[pem_der(&a.ca.root_pem)], None),
        Err(EkError::UnknownIssuer { .. }) | Err(EkError::BadSignature { .. })
    ));

    // 1. The verifier challenges party 1, trusting the vendor root.
    let ch = root.join("challenge.json");
    let st = root.join("state.json");
    let text = ok(&quorate(&[
        "enroll",
        "challenge",
        "--enrollment",
        s(&enrollment_a),
        "--out",
        s(&ch),
        "--state",
        s(&st),
        "--ek-root",
        s(&a.ca.root_pem),
        "--require-ek-cert",
    ]));
    assert!(text.contains("EK certificate verified"), "{text}");

    // Party 2's EK certificate is from a CA the verifier does not trust.
    let err = fails(&quorate(&[
        "enroll",
        "challenge",
        "--enrollment",
        s(&enrollment_b),
        "--out",
        s(&root.join("ch-b.json")),
        "--state",
        s(&root.join("st-b.json")),
        "--ek-root",
        s(&a.ca.root_pem),
        "--require-ek-cert",
    ]));
    // Both local CAs are named alike, so the chain is refused at the
    // signature of the intermediate under the trusted root's key.
    assert!(
        err.contains("EK certificate")
            && (err.contains("neither a configured EK root")
                || err.contains("signature does not verify")),
        "{err}"
    );

    let tcti_a = a.swtpm.tcti().to_string();
    let tcti_b = b.swtpm.tcti().to_string();
    let activate = |dir: &Path, tcti: &str, challenge: &Path, out: &Path| {
        quorate(&[
            "activate",
            "--data-dir",
            s(dir),
            "--tpm",
            tcti,
            "--challenge",
            s(challenge),
            "--out",
            s(out),
        ])
    };

    // 2a. A modified challenge: the TPM's integrity check refuses it.
    let c: ChallengeFile = serde_json::from_slice(&std::fs::read(&ch).unwrap()).unwrap();
    for field in ["credential_blob", "secret"] {
        let mut v = serde_json::to_value(&c).unwrap();
        let mut bytes = hex::decode(v[field].as_str().unwrap()).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        v[field] = serde_json::json!(hex::encode(bytes));
        let tampered = root.join(format!("tampered-{field}.json"));
        std::fs::write(&tampered, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = fails(&activate(&a.dir, &tcti_a, &tampered, &root.join("x.json")));
        assert!(
            err.contains("the TPM refused the challenge"),
            "{field}: {err}"
        );
    }

    // 2b. Another party's TPM: party 2 is told the challenge is not its own;
    // party 1's keys on party 2's TPM are refused as another TPM; and party
    // 2's TPM cannot open the credential sealed to party 1's EK.
    let err = fails(&activate(&b.dir, &tcti_b, &ch, &root.join("x.json")));
    assert!(err.contains("made for another party"), "{err}");
    let err = fails(&activate(&a.dir, &tcti_b, &ch, &root.join("x.json")));
    assert!(
        err.contains("not the TPM the party was provisioned on"),
        "{err}"
    );
    let tpm_b = TpmHandle::open_party(&b.dir, &b.swtpm.tcti())
        .await
        .unwrap();
    let refused = tpm_b
        .activate_credential(
            hex::decode(&c.credential_blob).unwrap(),
            hex::decode(&c.secret).unwrap(),
        )
        .await;
    assert!(refused.is_err(), "party 2's TPM opened party 1's challenge");
    tpm_b.close().await.unwrap();

    // 2c. The right TPM answers.
    let answer = root.join("answer.json");
    ok(&activate(&a.dir, &tcti_a, &ch, &answer));

    // 3. A wrong credential for this challenge, and an answer to another
    // challenge, are refused with their own errors.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&answer).unwrap()).unwrap();
    let right = v["credential"].as_str().unwrap().to_string();
    v["credential"] = serde_json::json!(hex::encode([7u8; 32]));
    let wrong = root.join("wrong-answer.json");
    std::fs::write(&wrong, serde_json::to_vec(&v).unwrap()).unwrap();
    let complete = |answer: &Path, out: &Path| {
        quorate(&[
            "enroll",
            "complete",
            "--state",
            s(&st),
            "--answer",
            s(answer),
            "--out",
            s(out),
        ])
    };
    let err = fails(&complete(&wrong, &root.join("record.json")));
    assert!(
        err.contains("answer to the credential challenge is wrong"),
        "{err}"
    );
    v["credential"] = serde_json::json!(right);
    v["challenge_id"] = serde_json::json!("00".repeat(32));
    let other = root.join("other-answer.json");
    std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = fails(&complete(&other, &root.join("record.json")));
    assert!(err.contains("the answer is for challenge"), "{err}");
    assert!(!root.join("record.json").exists());

    let record_path = root.join("record.json");
    let text = ok(&complete(&answer, &record_path));
    assert!(
        text.contains("verified") && text.contains("certified"),
        "{text}"
    );
    let record: EnrollmentRecord =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert!(record.ek_certified);
    assert_eq!(record.ak_name, e.ak.as_ref().unwrap().name);
    assert_eq!(record.ek_name, ek.name);

    // Evidence carries the EK certificate and its chain: it verifies under
    // a policy requiring an EK certificate from the vendor's root, and is
    // refused under one trusting only another CA.
    let measure = ok(&quorate(&[
        "measure",
        "--exe",
        env!("CARGO_BIN_EXE_quorate"),
        "--config",
        s(&a.config),
    ]));
    let policy_with = |root_pem: &Path| {
        let mut p = measure.clone();
        p.push_str(&format!(
            "ek_roots = [\"\"\"{}\"\"\"]\nrequire_ek_certificate = true\n",
            std::fs::read_to_string(root_pem).unwrap().trim()
        ));
        p.replace("require_ek_certificate = false\n", "")
    };
    let good = root.join("policy-vendor.toml");
    let bad = root.join("policy-other.toml");
    std::fs::write(&good, policy_with(&a.ca.root_pem)).unwrap();
    std::fs::write(&bad, policy_with(&b.ca.root_pem)).unwrap();
    let ev = root.join("evidence.bin");
    ok(&quorate(&[
        "attest",
        "--config",
        s(&a.config),
        "--nonce",
        "0a0b0c",
        "--out",
        s(&ev),
    ]));
    let verify = |policy: &Path| {
        quorate(&[
            "verify",
            "--evidence",
            s(&ev),
            "--enrollment",
            s(&enrollment_a),
            "--policy",
            s(policy),
            "--nonce",
            "0a0b0c",
        ])
    };
    ok(&verify(&good));
    let err = fails(&verify(&bad));
    assert!(err.contains("EK certificate"), "{err}");
}
