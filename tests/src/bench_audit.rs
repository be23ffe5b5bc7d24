//! Audit-log figures: Merkle appends, proof generation and verification,
//! entries verified per second by the offline verifier core (hashing and
//! structure), and by `quorate audit verify` with every signature checked
//! over all cores.

use crate::bench::Row;
use quorate_firmware::audit::checkpoint::{origin_for, Checkpoint, NoteSignature};
use quorate_firmware::audit::entry::{AuditEntry, BlockRef, OperationEntry};
use quorate_firmware::audit::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion,
    CompactTree, LeafIndex, MemoryNodeStore, TreeSize,
};
use quorate_firmware::audit::verify::{verify_log, EvidenceChecker, LogParams};
use quorate_firmware::sessions::machine::{OpKind, OpStatus};
use quorate_firmware::sessions::ops::OpId;
use quorate_firmware::types::{ClusterId, FaultModel, Height, PartyId, Sha256Digest};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

const AREA: &str = "audit";

fn per_sec(n: u64, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// A deterministic pseudo-random index in `0..n`.
fn pick(i: u64, n: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % n.max(1)
}

/// Accepts every block (signers: none), quote and record: the verifier
/// core's own work is what is measured.
struct AcceptAll;

impl EvidenceChecker for AcceptAll {
    fn check_block(&mut self, _: &BlockRef, _: &[AuditEntry]) -> Result<BTreeSet<PartyId>, String> {
        Ok(BTreeSet::new())
    }
    fn check_quote(
        &mut self,
        _: PartyId,
        _: &Checkpoint,
        _: &Sha256Digest,
        _: &NoteSignature,
    ) -> Result<(), String> {
        Ok(())
    }
    fn check_attestation(&mut self, _: LeafIndex, _: &OperationEntry) -> Result<(), String> {
        Ok(())
    }
}

/// `n` encoded operation entries of `op_len` bytes each, 100 per block.
fn entries(cluster: &ClusterId, n: u64, op_len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let height = Height(1 + i / 100);
            let index = (i % 100) as u32;
            let op_bytes: Vec<u8> = (0..op_len).map(|k| (k as u64 ^ i) as u8).collect();
            AuditEntry::Operation(OperationEntry {
                block: BlockRef {
                    height,
                    time_ms: 1_700_000_000_000 + height.0 * 1000,
                    block_hash: Sha256Digest::of(&height.0.to_be_bytes()),
                },
                batch: 0,
                index,
                op: OpId::derive(cluster, height, 0, PartyId(1), height.0, index),
                author: PartyId(1),
                batch_seq: height.0,
                kind: OpKind::SessionMessage,
                op_digest: Sha256Digest::of(&op_bytes),
                op_bytes,
                status: OpStatus::Executed { height },
                attests: None,
                decided_under: vec![],
            })
            .encode()
        })
        .collect()
}

/// Appends the audit rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const N: u64 = 1 << 20;
    // Appends: hashing the leaf and the nodes it completes.
    let t = Instant::now();
    let mut tree = CompactTree::new();
    for i in 0..N {
        tree.append(&i.to_be_bytes());
    }
    rows.push(Row::new(
        AREA,
        "merkle appends (compact tree)",
        per_sec(N, t),
        "ops/s",
        "8-byte entries, root after each append available",
    ));
    let t = Instant::now();
    let mut store = MemoryNodeStore::new();
    for i in 0..N {
        store.append(&i.to_be_bytes());
    }
    rows.push(Row::new(
        AREA,
        "merkle appends (with node store)",
        per_sec(N, t),
        "ops/s",
        "in-memory store of every perfect node",
    ));
    let size = store.size();
    let root = store.root();

    const P: u64 = 100_000;
    let t = Instant::now();
    let mut proofs = Vec::with_capacity(P as usize);
    for i in 0..P {
        let idx = LeafIndex(pick(i, size.0));
        proofs.push((idx, inclusion_proof(&store, idx, size)?));
    }
    rows.push(Row::new(
        AREA,
        "inclusion proofs generated",
        per_sec(P, t),
        "ops/s",
        format!("tree of {} leaves", size.0),
    ));
    let t = Instant::now();
    for (idx, path) in &proofs {
        verify_inclusion(&leaf_hash(&idx.0.to_be_bytes()), *idx, size, path, &root)?;
    }
    rows.push(Row::new(
        AREA,
        "inclusion proofs verified",
        per_sec(P, t),
        "ops/s",
        format!(
            "{} hashes per proof",
            proofs.first().map_or(0, |p| p.1.len())
        ),
    ));

    let t = Instant::now();
    let mut cproofs = Vec::with_capacity(P as usize);
    for i in 0..P {
        let old = TreeSize(1 + pick(i, size.0 - 1));
        cproofs.push((old, consistency_proof(&store, old, size)?));
    }
    rows.push(Row::new(
        AREA,
        "consistency proofs generated",
        per_sec(P, t),
        "ops/s",
        format!("random old size to {}", size.0),
    ));
    let olds: BTreeMap<TreeSize, Sha256Digest> = cproofs
        .iter()
        .take(1000)
        .map(|(o, _)| Ok((*o, store.root_at(*o)?)))
        .collect::<Result<_, quorate_firmware::audit::merkle::ProofError>>()?;
    let sample: Vec<_> = cproofs
        .iter()
        .filter_map(|(o, p)| olds.get(o).map(|r| (*o, *r, p)))
        .collect();
    let t = Instant::now();
    let reps = (P as usize / sample.len().max(1)).max(1);
    for _ in 0..reps {
        for (old, old_root, p) in &sample {
            verify_consistency(*old, old_root, size, &root, p)?;
        }
    }
    rows.push(Row::new(
        AREA,
        "consistency proofs verified",
        per_sec((reps * sample.len()) as u64, t),
        "ops/s",
        "",
    ));

    // The verifier core over a log of operation entries.
    let cluster = ClusterId(Sha256Digest::of(b"bench cluster"));
    let params = LogParams {
        cluster,
        origin: origin_for(&cluster),
        parties: BTreeMap::new(),
        fault_model: FaultModel::Byzantine,
    };
    for (n, op_len) in [(200_000u64, 200usize), (50_000, 2_000)] {
        let log = entries(&cluster, n, op_len);
        let t = Instant::now();
        let report = verify_log(&params, &log, &[], &mut AcceptAll);
        let rate = per_sec(n, t);
        anyhow::ensure!(report.is_ok(), "bench log failed verification: {report}");
        rows.push(Row::new(
            AREA,
            format!("entries verified ({op_len}-byte ops)"),
            rate,
            "entries/s",
            "decode, digest, op id, order, Merkle; one core, signatures excluded",
        ));
    }

    // `quorate audit verify` end to end: a bundle of a real three-party log
    // (session machine, software vote keys and TPMs), every signature
    // checked (certificates, batches, cosignatures, quotes, evidence) over
    // all cores.
    for (blocks, ops) in [(60u64, 500usize), (100, 50)] {
        let f = quorate_host::audit::testkit::Fixture::bulk(blocks, ops, 10);
        let bundle = f.bundle();
        let t = Instant::now();
        let v =
            quorate_host::audit::check::verify_bundle(bundle.as_slice(), &f.policy, &f.policy_text);
        let rate = per_sec(v.report.entries, t);
        anyhow::ensure!(v.is_ok(), "bench bundle failed verification: {v}");
        rows.push(Row::new(
            AREA,
            format!("bundle entries verified, signatures included ({ops}-op batches)"),
            rate,
            "entries/s",
            format!(
                "{} entries, {} blocks, {} precommit + {} batch signatures, {} quotes; {} threads",
                v.report.entries,
                v.host.blocks,
                v.host.precommit_signatures,
                v.host.batch_signatures,
                v.host.quotes,
                v.host.threads
            ),
        ));
    }
    Ok(())
}
