//! `make bench` rows for the attestation verifier (pure software: no TPM).

use crate::bench::{percentile, Row};
use anyhow::{anyhow, Context};
use quorate_attestation::soft::SoftTpm;
use quorate_attestation::{
    verify, verify_ecdsa_p256, verify_ek_chain, EventLog, Evidence, Freshness, PcrIndex, Policy,
    TpmSignature, TpmtPublic, VerifierState,
};
use quorate_firmware::types::Sha256Digest;
use std::time::{Duration, Instant};

const ROUND: Duration = Duration::from_millis(1500);

macro_rules! vector {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../attestation/tests/vectors/",
            $name
        ))
        .as_slice()
    };
}

/// Runs `op` repeatedly for about [`ROUND`]; returns (ops/s, p50, p99).
fn measure(
    mut op: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < ROUND {
        let t = Instant::now();
        op()?;
        samples.push(t.elapsed());
    }
    let total: Duration = samples.iter().sum();
    let rate = samples.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE);
    let p50 = percentile(&mut samples, 50.0);
    let p99 = percentile(&mut samples, 99.0);
    Ok((rate, p50, p99))
}

fn note(p50: Duration, p99: Duration, what: &str) -> String {
    format!(
        "p50 {:.1} µs, p99 {:.1} µs; {what}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    )
}

/// Appends the attestation rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rng = ring::rand::SystemRandom::new();
    let exe = Sha256Digest([1; 32]);
    let config = Sha256Digest([2; 32]);
    let mut tpm = SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &exe, &config, 1)
        .map_err(|e| anyhow!("software TPM: {e}"))?;
    let policy = Policy::new(vec![exe], config);
    let fresh = Freshness::Nonce(vec![7; 32]);
    let evidence = tpm
        .evidence(&rng, &fresh, &Sha256Digest([3; 32]), &policy.quoted_pcrs())
        .map_err(|e| anyhow!("software TPM: {e}"))?;
    let bytes = evidence.to_bytes();

    let (rate, p50, p99) = measure(|| {
        let ev = Evidence::from_bytes(&bytes)?;
        verify(&ev, &fresh, &policy, &mut VerifierState::default())?;
        Ok(())
    })?;
    rows.push(Row::new(
        "attestation",
        "evidence verifications",
        rate,
        "ops/s",
        note(
            p50,
            p99,
            "decode + all checks, 2 ECDSA P-256 verifies, no EK chain, 1 thread",
        ),
    ));

    let ak = TpmtPublic::parse_tpm2b(vector!("ak.pub")).context("ak.pub vector")?;
    let ak_bytes = ak.as_bytes().to_vec();
    let quote = vector!("quote.msg");
    let sig = vector!("quote.sig");
    let (rate, p50, p99) = measure(|| {
        let ak = TpmtPublic::parse(&ak_bytes)?;
        let sig = TpmSignature::parse(sig)?;
        verify_ecdsa_p256(&ak, quote, &sig)?;
        Ok(())
    })?;
    rows.push(Row::new(
        "attestation",
        "TPMT_PUBLIC parse + TPM ECDSA verify",
        rate,
        "ops/s",
        note(p50, p99, "swtpm-made AK and quote, ring P-256"),
    ));

    let log = vector!("eventlog.bin");
    let (rate, p50, p99) = measure(|| {
        EventLog::parse(log)?.replay_sha256()?;
        Ok(())
    })?;
    rows.push(Row::new(
        "attestation",
        "event log parse + replay",
        rate,
        "ops/s",
        note(p50, p99, "3 events"),
    ));

    let leaf = vector!("ek_cert_ecc.der");
    let inter = vec![vector!("ek_intermediate.der").to_vec()];
    let roots = vec![vector!("ek_root.der").to_vec()];
    let (rate, p50, p99) = measure(|| {
        verify_ek_chain(leaf, &inter, &roots, None)?;
        Ok(())
    })?;
    rows.push(Row::new(
        "attestation",
        "EK certificate chain verify",
        rate,
        "ops/s",
        note(
            p50,
            p99,
            "swtpm local CA: 2 RSA-3072 PKCS#1 SHA-256 signatures",
        ),
    ));
    Ok(())
}
