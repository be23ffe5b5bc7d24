//! Known-answer tests: structures made by a real (software) TPM through
//! tpm2-tools, and an event log and qualifying data computed independently
//! in python (see tests/vectors/README.md and generate.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_attestation::attest::{
    Attested, TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_QUOTE,
};
use quorate_attestation::ekcert::verify_ek_chain;
use quorate_attestation::pcr::pcr_composite_digest;
use quorate_attestation::*;
use quorate_types::Sha256Digest;

macro_rules! vector {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/",
            $name
        ))
        .as_slice()
    };
}

fn hex_file(text: &[u8]) -> Vec<u8> {
    hex::decode(std::str::from_utf8(text).unwrap().trim()).unwrap()
}

fn digest_file(text: &[u8]) -> Sha256Digest {
    Sha256Digest(hex_file(text).try_into().unwrap())
}

fn ak() -> TpmtPublic {
    TpmtPublic::parse_tpm2b(vector!("ak.pub")).unwrap()
}

fn vote() -> TpmtPublic {
    TpmtPublic::parse_tpm2b(vector!("vote.pub")).unwrap()
}

#[test]
fn names_match_the_tpm() {
    assert_eq!(ak().name().as_bytes(), vector!("ak.name"));
    assert_eq!(vote().name().as_bytes(), vector!("vote.name"));
    let a = ak().object_attributes();
    assert!(
        a.restricted()
            && a.sign()
            && a.fixed_tpm()
            && a.fixed_parent()
            && a.sensitive_data_origin()
    );
    assert!(!a.decrypt());
    let v = vote().object_attributes();
    assert!(v.no_da() && !v.user_with_auth() && !v.restricted());
    assert_eq!(vote().ecc_parms().unwrap().curve, EccCurve::NIST_P256);
}

#[test]
fn policy_pcr_matches_the_trial_session() {
    let pcr15 = Sha256Digest(vector!("pcr15.bin").try_into().unwrap());
    let ours = measurement_policy(PcrIndex::DEFAULT_MEASUREMENT, &pcr15);
    assert_eq!(ours.as_bytes().as_slice(), vector!("policy.digest"));
    assert_eq!(vote().auth_policy(), vector!("policy.digest"));
}

#[test]
fn pcr_extends_and_event_log_replay_match_the_tpm() {
    let log = EventLog::parse(vector!("eventlog.bin")).unwrap();
    let replayed = log.replay_sha256().unwrap();
    assert_eq!(
        replayed[&PcrIndex::DEFAULT_MEASUREMENT]
            .as_bytes()
            .as_slice(),
        vector!("pcr15.bin")
    );
    assert_eq!(log.events.len(), 3);
    let expected = expected_measurement(&[
        digest_file(vector!("executable.sha256")),
        digest_file(vector!("config.sha256")),
    ]);
    assert_eq!(expected.as_bytes().as_slice(), vector!("pcr15.bin"));
    assert_eq!(
        log.events[1].quorate(),
        Some(QuorateEvent::Executable(digest_file(vector!(
            "executable.sha256"
        ))))
    );
    assert_eq!(
        log.events[2].quorate(),
        Some(QuorateEvent::Config(digest_file(vector!("config.sha256"))))
    );
    // Our writer produces the same bytes as the independent python writer.
    let mut ours = EventLog::new_sha256();
    let Some(QuorateEvent::Boot { reset_count }) = log.events[0].quorate() else {
        panic!("no boot record")
    };
    ours.events.push(LogEvent::boot(reset_count));
    ours.events.push(LogEvent::executable(
        PcrIndex::DEFAULT_MEASUREMENT,
        &digest_file(vector!("executable.sha256")),
    ));
    ours.events.push(LogEvent::config(
        PcrIndex::DEFAULT_MEASUREMENT,
        &digest_file(vector!("config.sha256")),
    ));
    assert_eq!(ours.to_bytes(), vector!("eventlog.bin"));
}

#[test]
fn tpm_quote_parses_and_verifies() {
    let q = TpmsAttest::parse(vector!("quote.msg")).unwrap();
    assert_eq!(q.magic, TPM_GENERATED_VALUE);
    assert_eq!(q.attest_type, TPM_ST_ATTEST_QUOTE);
    assert_eq!(q.marshal(), vector!("quote.msg"));
    assert_eq!(q.extra_data, hex_file(vector!("qualifying_data.hex")));
    let Attested::Quote {
        pcr_select,
        pcr_digest,
    } = &q.attested
    else {
        panic!("not a quote")
    };
    assert_eq!(
        *pcr_select,
        PcrSelection::sha256(&[PcrIndex::DEFAULT_MEASUREMENT])
    );
    let pcr15 = Sha256Digest(vector!("pcr15.bin").try_into().unwrap());
    assert_eq!(
        pcr_digest.as_slice(),
        pcr_composite_digest(&[pcr15]).as_bytes()
    );
    let sig = TpmSignature::parse(vector!("quote.sig")).unwrap();
    assert_eq!(sig.marshal(), vector!("quote.sig"));
    verify_ecdsa_p256(&ak(), vector!("quote.msg"), &sig).unwrap();
    let mut flipped = vector!("quote.msg").to_vec();
    flipped[40] ^= 1;
    assert_eq!(
        verify_ecdsa_p256(&ak(), &flipped, &sig),
        Err(SignatureError::Invalid)
    );
    // The qualifying data the python generator computed is ours.
    let qd = qualifying_data(
        &Freshness::Nonce(hex_file(vector!("nonce.hex"))),
        &digest_file(vector!("tls_key.sha256")),
        vote().name(),
    );
    assert_eq!(
        qd.as_bytes().as_slice(),
        hex_file(vector!("qualifying_data.hex"))
    );
}

#[test]
fn tpm_certify_parses_and_verifies() {
    let c = TpmsAttest::parse(vector!("certify.msg")).unwrap();
    assert_eq!(c.attest_type, TPM_ST_ATTEST_CERTIFY);
    let Attested::Certify { name, .. } = &c.attested else {
        panic!("not a certify")
    };
    assert_eq!(name.as_bytes(), vector!("vote.name"));
    let sig = TpmSignature::parse(vector!("certify.sig")).unwrap();
    verify_ecdsa_p256(&ak(), vector!("certify.msg"), &sig).unwrap();
    let q = TpmsAttest::parse(vector!("quote.msg")).unwrap();
    assert_eq!(q.qualified_signer, c.qualified_signer);
}

#[test]
fn swtpm_ek_certificates_chain_to_the_local_ca() {
    let roots = vec![vector!("ek_root.der").to_vec()];
    let inter = vec![vector!("ek_intermediate.der").to_vec()];
    for leaf in [vector!("ek_cert_ecc.der"), vector!("ek_cert_rsa.der")] {
        let info = verify_ek_chain(leaf, &inter, &roots, None).unwrap();
        assert_eq!(info.depth, 3);
        assert!(info.root.contains("swtpm-localca-rootca"), "{}", info.root);
    }
    // Without the intermediate, or with the intermediate as the only root's stand-in, it fails.
    assert!(matches!(
        verify_ek_chain(vector!("ek_cert_ecc.der"), &[], &roots, None),
        Err(EkError::UnknownIssuer { .. })
    ));
    // A root that is not the issuer's does not verify it.
    assert!(matches!(
        verify_ek_chain(
            vector!("ek_cert_ecc.der"),
            &[],
            &[vector!("ek_cert_rsa.der").to_vec()],
            None
        ),
        Err(EkError::UnknownIssuer { .. })
    ));
    // Validity periods are checked when a time is given (year 1990 is before issuance).
    assert!(matches!(
        verify_ek_chain(
            vector!("ek_cert_ecc.der"),
            &inter,
            &roots,
            Some(631_152_000)
        ),
        Err(EkError::NotValidAt { .. })
    ));
}

fn tpm_evidence() -> Evidence {
    Evidence {
        quote: SignedAttest {
            attest: vector!("quote.msg").to_vec(),
            signature: vector!("quote.sig").to_vec(),
        },
        pcr_values: vec![PcrValue {
            index: PcrIndex::DEFAULT_MEASUREMENT,
            value: Sha256Digest(vector!("pcr15.bin").try_into().unwrap()),
        }],
        event_log: vector!("eventlog.bin").to_vec(),
        ak_public: ak().as_bytes().to_vec(),
        ek_certificate: Some(serde_bytes::ByteBuf::from(
            vector!("ek_cert_ecc.der").to_vec(),
        )),
        ek_chain: vec![serde_bytes::ByteBuf::from(
            vector!("ek_intermediate.der").to_vec(),
        )],
        vote_key_public: vote().as_bytes().to_vec(),
        vote_key_certify: SignedAttest {
            attest: vector!("certify.msg").to_vec(),
            signature: vector!("certify.sig").to_vec(),
        },
        tls_key_hash: digest_file(vector!("tls_key.sha256")),
    }
}

fn tpm_policy() -> Policy {
    let mut p = Policy::new(
        vec![digest_file(vector!("executable.sha256"))],
        digest_file(vector!("config.sha256")),
    );
    p.ek_roots = vec![hex::encode(vector!("ek_root.der"))];
    p.require_ek_certificate = true;
    p
}

#[test]
fn evidence_made_by_a_real_tpm_verifies() {
    let ev = Evidence::from_bytes(&tpm_evidence().to_bytes()).unwrap();
    let mut state = VerifierState {
        enrolled_ak: Some(ak().name().clone()),
        ..Default::default()
    };
    let fresh = Freshness::Nonce(hex_file(vector!("nonce.hex")));
    let r = verify(&ev, &fresh, &tpm_policy(), &mut state).unwrap();
    assert_eq!(r.executable, digest_file(vector!("executable.sha256")));
    assert_eq!(r.config, digest_file(vector!("config.sha256")));
    assert_eq!(r.measurement.as_bytes().as_slice(), vector!("pcr15.bin"));
    assert_eq!(r.vote_key, vote().ecc_p256_point().unwrap());
    assert!(r.ek_chain.is_some());
    assert_eq!(state.last_clock, Some(r.clock_info));
    // The same quote again is a replay.
    assert!(matches!(
        verify(&ev, &fresh, &tpm_policy(), &mut state),
        Err(AttestationError::QuoteReplayed { .. })
    ));
    // Another nonce is stale.
    let other = Freshness::Nonce(vec![0; 16]);
    assert!(matches!(
        verify(&ev, &other, &tpm_policy(), &mut VerifierState::default()),
        Err(AttestationError::QualifyingDataMismatch { .. })
    ));
}

#[test]
fn software_make_credential_matches_what_the_tpm_activated() {
    use quorate_attestation::credential::{ek_matches_certificate, make_credential};
    let name = TpmName(vector!("ak.name").to_vec());
    let cred = hex_file(vector!("credential.hex"));
    let ek256 = TpmtPublic::parse_tpm2b(vector!("cred_ek256.pub")).unwrap();
    let made =
        make_credential(&ek256, &name, &cred, &hex_file(vector!("ephemeral256.hex"))).unwrap();
    assert_eq!(made.to_tpm2_tools_file(), vector!("cred256.bin"));
    let ek384 = TpmtPublic::parse_tpm2b(vector!("cred_ek384.pub")).unwrap();
    assert_eq!(ek384.ecc_parms().unwrap().curve, EccCurve::NIST_P384);
    let made = make_credential(
        &ek384,
        &name,
        &cred[..32],
        &hex_file(vector!("ephemeral384.hex")),
    )
    .unwrap();
    assert_eq!(made.to_tpm2_tools_file(), vector!("cred384.bin"));
    // The EKs re-created from the TCG templates are the certified keys; others are not.
    let chain = |leaf: &[u8]| {
        verify_ek_chain(
            leaf,
            &[vector!("ek_intermediate.der").to_vec()],
            &[vector!("ek_root.der").to_vec()],
            None,
        )
        .unwrap()
    };
    let ecc = chain(vector!("ek_cert_ecc.der"));
    let rsa = chain(vector!("ek_cert_rsa.der"));
    let ek_ecc = TpmtPublic::parse_tpm2b(vector!("ek_ecc384.pub")).unwrap();
    let ek_rsa = TpmtPublic::parse_tpm2b(vector!("ek_rsa.pub")).unwrap();
    assert!(ek_matches_certificate(&ek_ecc, &ecc.ek_spki));
    assert!(ek_matches_certificate(&ek_rsa, &rsa.ek_spki));
    assert!(!ek_matches_certificate(&ek_ecc, &rsa.ek_spki));
    assert!(!ek_matches_certificate(&ek384, &ecc.ek_spki));
    assert!(!ek_matches_certificate(&ek256, &ecc.ek_spki));
    // The RSA EK (TCG template L-1): RSAES-OAEP seed, activated by the TPM.
    let made = make_credential(
        &ek_rsa,
        &name,
        &cred,
        &hex_file(vector!("ephemeral_rsa.hex")),
    )
    .unwrap();
    assert_eq!(made.to_tpm2_tools_file(), vector!("credrsa.bin"));
    assert_eq!(made.secret.len(), 256);
    assert!(matches!(
        make_credential(&ek_rsa, &name, &cred, &[0; 10]),
        Err(quorate_attestation::CredentialError::BadEphemeral { expected: 64 })
    ));
    // The certified P-384 EK is a template make_credential accepts.
    make_credential(
        &ek_ecc,
        &name,
        &cred,
        &hex_file(vector!("ephemeral384.hex")),
    )
    .unwrap();
}
