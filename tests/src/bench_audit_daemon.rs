//! Audit-log figures of the daemon path: entries appended per second into
//! the party's redb store (one transaction per decided block, with the
//! Merkle nodes they complete, as `Store::append_log` does for each ledger
//! step), proofs served from the store, and the latency of issuing a
//! checkpoint's lines (TPM quote by the AK and vote-key cosignature, on
//! swtpm).
#![allow(clippy::indexing_slicing)]

use crate::bench::{percentile, Row};
use crate::bench_tpm::BenchParty;
use quorate_attestation::pcr::PcrIndex;
use quorate_firmware::audit::checkpoint::{origin_for, Checkpoint};
use quorate_firmware::audit::merkle::{CompactTree, LeafIndex, TreeSize};
use quorate_firmware::types::{ClusterId, PartyId, Sha256Digest};
use quorate_host::store::Store;
use quorate_host::tpm::TpmHandle;
use std::time::{Duration, Instant};

const AREA: &str = "audit";
const ENTRIES: u64 = 50_000;
const ENTRY_BYTES: usize = 300;
const CHECKPOINTS: usize = 30;

fn per_sec(n: u64, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// Appends the daemon-path audit rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = Store::open(tmp.path(), "bench")?;
    for per_block in [10u64, 100, 1000] {
        // Go on from what is stored (the frontier from the node table).
        let base = store.log_size()?.0;
        let mut tree = CompactTree::from_store(&store, TreeSize(base))?;
        let t = Instant::now();
        let mut i = 0u64;
        while i < ENTRIES {
            let first = LeafIndex(base + i);
            let mut encoded = Vec::with_capacity(per_block as usize);
            let mut nodes = Vec::new();
            for k in 0..per_block.min(ENTRIES - i) {
                let mut e = vec![(i + k) as u8; ENTRY_BYTES];
                e[..8].copy_from_slice(&(base + i + k).to_be_bytes());
                nodes.extend(tree.append(&e).1);
                encoded.push(e);
            }
            i += encoded.len() as u64;
            store.append_log(first, &encoded, &nodes)?;
        }
        rows.push(Row::new(
            AREA,
            format!("daemon log appends, {per_block} entries/block"),
            per_sec(ENTRIES, t),
            "ops/s",
            format!("{ENTRY_BYTES}-byte entries, one fsync'd redb transaction per block"),
        ));
    }
    let size = store.log_size()?;
    let t = Instant::now();
    const PROOFS: u64 = 2000;
    for k in 0..PROOFS {
        let index = LeafIndex(k.wrapping_mul(7919) % size.0);
        store.inclusion_proof(index, size)?;
    }
    rows.push(Row::new(
        AREA,
        "inclusion proofs from the store",
        per_sec(PROOFS, t),
        "ops/s",
        format!("{} entries in redb, one read transaction each", size.0),
    ));
    checkpoint_rows(rows)
}

fn checkpoint_rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let party = BenchParty::provision()?;
    let (data, tcti) = (&party.data, &party.tcti);
    let vote_key = party.enrollment.vote_public_key()?;
    let mut lat = party.rt.block_on(async {
        let tpm = TpmHandle::open_party(data, tcti).await?;
        let ak = tpm.create_ak().await?;
        let ak_public = ak.blob.tpmt_public()?;
        tpm.set_ak(ak.blob, Some(ak.ek_name), ak.ek_template)
            .await?;
        let origin = origin_for(&ClusterId(Sha256Digest::of(b"bench")));
        let pcrs = [PcrIndex::DEV_MEASUREMENT];
        let mut lat = Vec::with_capacity(CHECKPOINTS);
        for i in 0..CHECKPOINTS {
            let cp = Checkpoint {
                origin: origin.clone(),
                size: TreeSize(64 * (i as u64 + 1)),
                root: Sha256Digest::of(&i.to_be_bytes()),
                extensions: Vec::new(),
            };
            let t = Instant::now();
            let lines = quorate_host::daemon::audit::issue_lines(
                &tpm,
                PartyId(1),
                vote_key,
                Some(ak_public.clone()),
                &pcrs,
                &cp,
            )
            .await?;
            lat.push(t.elapsed());
            anyhow::ensure!(lines.len() == 2, "expected a quote and a cosignature");
        }
        tpm.close().await?;
        anyhow::Ok(lat)
    })?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = percentile(&mut lat, 50.0);
    let p99 = percentile(&mut lat, 99.0);
    rows.push(Row::new(
        AREA,
        "checkpoint issue (quote + cosign), p50",
        ms(p50),
        "ms",
        format!("swtpm, {CHECKPOINTS} checkpoints, 1 PCR quoted"),
    ));
    rows.push(Row::new(
        AREA,
        "checkpoint issue (quote + cosign), p99",
        ms(p99),
        "ms",
        "",
    ));
    party.finish();
    Ok(())
}
