//! `make bench` rows for the built-in MPC engine: the cost of sealing and
//! unsealing a key share in the TPM, and FROST key-generation latency
//! through a real attested cluster (each party with its own swtpm), from
//! `create_session` accepted to the session completed at party 1.

// serde_json::Value indexing returns Null on a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use quorate_attestation::pcr::{extend_sha256, PcrIndex};
use quorate_firmware::types::Sha256Digest;
use quorate_host::tpm::{KeySpec, Swtpm, TpmHandle};
use serde_json::json;
use zeroize::Zeroizing;

use crate::bench::{percentile, Row};
use crate::cluster::TestCluster;

const SEALS: usize = 100;
const DKGS: usize = 5;

/// Appends the MPC rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(seal_rows(rows))?;
    for n in [4u32, 7] {
        rt.block_on(dkg_rows(rows, n))?;
    }
    Ok(())
}

async fn seal_rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let swtpm = Swtpm::spawn(&tmp.path().join("tpm"))?;
    let tpm = TpmHandle::open(&swtpm.tcti()).await?;
    let pcr = PcrIndex::new(23).ok_or_else(|| anyhow!("PCR 23"))?;
    let measurement = [0x5a; 32];
    let expected = extend_sha256(&Sha256Digest([0; 32]), &Sha256Digest(measurement));
    let vote = tpm
        .create_vote_key(KeySpec::vote_policy_pcr(pcr, &expected))
        .await?;
    tpm.load_vote_key(vote.blob, Some(vote.srk_name)).await?;
    tpm.pcr_extend(23, measurement).await?;
    let secret = Zeroizing::new(vec![0x42u8; 32]);
    let mut seal = Vec::with_capacity(SEALS);
    let mut blob = None;
    for _ in 0..SEALS {
        let t = Instant::now();
        blob = Some(tpm.seal(secret.clone()).await?);
        seal.push(t.elapsed());
    }
    let blob = blob.ok_or_else(|| anyhow!("no blob"))?;
    let mut unseal = Vec::with_capacity(SEALS);
    for _ in 0..SEALS {
        let t = Instant::now();
        let out = tpm.unseal(blob.clone()).await?;
        unseal.push(t.elapsed());
        if out.as_slice() != secret.as_slice() {
            bail!("unsealed bytes differ");
        }
    }
    let note = "swtpm, 32-byte share, SRK re-created per call, PolicyPCR";
    for (what, lat) in [
        ("seal key share", &mut seal),
        ("unseal key share", &mut unseal),
    ] {
        rows.push(Row::new(
            "mpc",
            format!("{what} p50"),
            ms(percentile(lat, 50.0)),
            "ms",
            note,
        ));
        rows.push(Row::new(
            "mpc",
            format!("{what} p99"),
            ms(percentile(lat, 99.0)),
            "ms",
            note,
        ));
    }
    tpm.close().await?;
    drop(swtpm);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn dkg_rows(rows: &mut Vec<Row>, n: u32) -> anyhow::Result<()> {
    let mut c = TestCluster::provision_attested(n, "byzantine")?;
    c.start_all()?;
    for id in 1..=n {
        c.wait_api(id, Duration::from_secs(60)).await?;
    }
    let p1 = c.client(1)?;
    let parts: Vec<u32> = (1..=n).collect();
    let t = (2 * n).div_ceil(3);
    for scheme in ["frost-ed25519", "frost-secp256k1-tr"] {
        let mut lat = Vec::new();
        // One warm-up (peers attested, connections up), then the samples.
        for i in 0..=DKGS {
            let t0 = Instant::now();
            let r = p1
                .submit_json(&json!({"type": "create_session", "session": {"kind": "keygen",
                    "participants": parts, "threshold": t, "scheme": scheme, "deadline_secs": 600}}))
                .await?;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let op = p1.operation(&r.id).await?;
                if let Some(sid) = op["record"]["session"].as_str() {
                    let s = p1.session(sid).await?;
                    match s["phase_label"].as_str() {
                        Some("completed") => break,
                        Some("failed") | Some("not_approved") => bail!("DKG failed: {s}"),
                        _ => {}
                    }
                }
                if Instant::now() > deadline {
                    bail!("DKG n={n} {scheme} did not complete");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if i > 0 {
                lat.push(t0.elapsed());
            }
        }
        let note =
            format!("{t}-of-{n}, swtpm per party, attested, loopback; accepted -> completed at P1");
        rows.push(Row::new(
            "mpc",
            format!("DKG {scheme} n={n} p50"),
            ms(percentile(&mut lat, 50.0)),
            "ms",
            note.clone(),
        ));
        rows.push(Row::new(
            "mpc",
            format!("DKG {scheme} n={n} max"),
            ms(percentile(&mut lat, 100.0)),
            "ms",
            note,
        ));
    }
    Ok(())
}
