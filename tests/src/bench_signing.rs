//! `make bench` rows for threshold signing with the built-in engine,
//! through a real attested 4-party cluster (each party with its own swtpm,
//! loopback): the latency of one signing from `create_session` submitted
//! to the session completed at party 1, and the signatures per second with
//! many signings in flight at once. Every signature is checked with a
//! library other than frost, so a row never counts a bad one.

// serde_json::Value indexing returns Null on a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use quorate_host::client::Client;
use serde_json::{json, Value};

use crate::bench::{percentile, Row};
use crate::cluster::TestCluster;
use crate::mpc::{created_session, session_end, verify_independently};

const N: u32 = 4;
const T: u16 = 3;
/// Sequential signings per scheme for the latency rows.
const SIGNINGS: usize = 30;
/// Signings in flight at once for the throughput rows.
const CONCURRENT: usize = 16;
/// How long one signing may take before the bench gives up.
const WITHIN: Duration = Duration::from_secs(120);

/// Appends the signing rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(signing_rows(rows))
}

async fn signing_rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut c = TestCluster::provision_attested(N, "byzantine")?;
    c.start_all()?;
    for id in 1..=N {
        c.wait_api(id, Duration::from_secs(60)).await?;
    }
    let p1 = c.client(1)?;
    for scheme in ["frost-ed25519", "frost-secp256k1-tr"] {
        let (key, gpk) = keygen(&p1, scheme).await?;
        // One warm-up (shares unsealed once, connections busy), then the
        // samples, one at a time.
        let mut lat = Vec::with_capacity(SIGNINGS);
        for i in 0..=SIGNINGS {
            let msg = message(scheme, i);
            let t0 = Instant::now();
            sign(&p1, &key, &gpk, scheme, &msg).await?;
            if i > 0 {
                lat.push(t0.elapsed());
            }
        }
        let note = format!(
            "{T}-of-{N}, 4 candidates, swtpm per party, attested, loopback; submitted -> completed at P1, {SIGNINGS} signings"
        );
        rows.push(Row::new(
            "signing",
            format!("sign {scheme} n={N} t={T} p50"),
            ms(percentile(&mut lat, 50.0)),
            "ms",
            note.clone(),
        ));
        rows.push(Row::new(
            "signing",
            format!("sign {scheme} n={N} t={T} p99"),
            ms(percentile(&mut lat, 99.0)),
            "ms",
            note,
        ));

        // Many at once: each party's API takes a share of the requests;
        // one poller waits for them all (16 pollers would load the CPUs
        // the daemons share).
        let t0 = Instant::now();
        let mut receipts = Vec::with_capacity(CONCURRENT);
        for i in 0..CONCURRENT {
            let client = c.client(1 + (i as u32 % N))?;
            let msg = message(scheme, SIGNINGS + 1 + i);
            let r = client.submit_json(&signing(&key, &msg)).await?;
            receipts.push((client, r.id, msg));
        }
        for (client, receipt, msg) in &receipts {
            let sid = created_session(client, receipt, WITHIN).await?;
            completed(&p1, &sid, &gpk, scheme, msg).await?;
        }
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        rows.push(Row::new(
            "signing",
            format!("sign {scheme} n={N} t={T} x{CONCURRENT} concurrent"),
            CONCURRENT as f64 / secs,
            "sigs/s",
            format!(
                "{CONCURRENT} signings submitted at once (spread over the 4 APIs) until all completed at P1 ({:.1} s)",
                secs
            ),
        ));
    }
    Ok(())
}

/// A 3-of-4 key of `scheme`: (key id, group key), hex.
async fn keygen(p1: &Client, scheme: &str) -> anyhow::Result<(String, String)> {
    let r = p1
        .submit_json(
            &json!({"type": "create_session", "session": {"kind": "keygen",
            "participants": [1, 2, 3, 4], "threshold": T, "scheme": scheme,
            "deadline_secs": 600, "round_secs": 60}}),
        )
        .await?;
    let sid = created_session(p1, &r.id, WITHIN).await?;
    let s = session_end(p1, &sid, WITHIN).await?;
    if s["phase_label"] != "completed" {
        bail!("{scheme} key generation failed: {s}");
    }
    let field = |f: &str| {
        s[f].as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no {f} in {s}"))
    };
    Ok((field("key")?, field("group_public_key")?))
}

/// The `i`-th message to sign: bytes for Ed25519, a 32-byte digest for
/// secp256k1-tr.
fn message(scheme: &str, i: usize) -> Vec<u8> {
    let text = format!("quorate bench signing {i}");
    match scheme {
        "frost-ed25519" => text.into_bytes(),
        _ => quorate_firmware::types::Sha256Digest::of(text.as_bytes())
            .0
            .to_vec(),
    }
}

fn signing(key: &str, msg: &[u8]) -> Value {
    json!({"type": "create_session", "session": {"kind": "signing", "key": key,
        "message_digest": hex::encode(msg), "signers": [1, 2, 3, 4],
        "deadline_secs": 600, "round_secs": 10}})
}

/// One signing through `c` by all four candidates, to completion at `c`.
async fn sign(c: &Client, key: &str, gpk: &str, scheme: &str, msg: &[u8]) -> anyhow::Result<()> {
    let r = c.submit_json(&signing(key, msg)).await?;
    let sid = created_session(c, &r.id, WITHIN).await?;
    completed(c, &sid, gpk, scheme, msg).await
}

/// Waits until signing `sid` has completed at `c` and checks its signature
/// independently.
async fn completed(
    c: &Client,
    sid: &str,
    gpk: &str,
    scheme: &str,
    msg: &[u8],
) -> anyhow::Result<()> {
    let s = session_end(c, sid, WITHIN).await?;
    if s["phase_label"] != "completed" {
        bail!("{scheme} signing {sid} did not complete: {s}");
    }
    let sig = s["signature"]
        .as_str()
        .ok_or_else(|| anyhow!("no signature in {s}"))?;
    verify_independently(scheme, gpk, msg, sig)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
