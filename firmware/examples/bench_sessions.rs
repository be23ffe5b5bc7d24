//! Measures the session state machine and prints a table (area, metric,
//! value, unit, note) in the `make bench` format:
//! `cargo run --release -p quorate-firmware --example bench_sessions`.
//!
//! Batches carry dummy signatures: `apply_block` does not verify them
//! (consensus did, with `verify_batch`), so this measures the machine alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_firmware::batch::{BatchBody, SignedBatch};
use quorate_firmware::crypto::{PublicKey, Signature};
use quorate_firmware::sessions::ops::{
    Blob, CreateSession, Decision, KeygenSpec, OpBody, OpId, Operation, SessionId, SessionMessage,
    SessionResult, SessionSpec, VerdictOp,
};
use quorate_firmware::sessions::{MachineConfig, SessionMachine, SessionRules};
use quorate_firmware::types::{ClusterId, FaultModel, Height, PartyId, Sha256Digest};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Driver {
    m: SessionMachine,
    cluster: ClusterId,
    height: u64,
    time_ms: u64,
    seq: BTreeMap<u32, u64>,
    apply: Duration,
    ops: u64,
}

impl Driver {
    fn batch(&mut self, author: u32, bodies: Vec<OpBody>) -> SignedBatch {
        let seq = self.seq.entry(author).or_insert(0);
        *seq += 1;
        SignedBatch {
            body: BatchBody {
                cluster: self.cluster,
                author: PartyId(author),
                seq: *seq,
                ops: bodies
                    .into_iter()
                    .map(|body| {
                        Operation {
                            author: PartyId(author),
                            body,
                        }
                        .encode()
                    })
                    .collect(),
            },
            signature: Signature([0; 64]),
        }
    }

    fn block(&mut self, batches: Vec<SignedBatch>) -> Vec<OpId> {
        self.height += 1;
        self.time_ms += 500;
        self.ops += batches.iter().map(|b| b.body.ops.len() as u64).sum::<u64>();
        let t = Instant::now();
        let out = self
            .m
            .apply_block(Height(self.height), self.time_ms, &batches)
            .unwrap();
        self.apply += t.elapsed();
        out.ops.into_iter().map(|o| o.op).collect()
    }

    /// `k` key generations run side by side through approval, one broadcast
    /// round and results: 8 operations each, in 4 blocks.
    fn keygens(&mut self, k: usize) {
        let creates: Vec<OpBody> = (0..k)
            .map(|_| {
                OpBody::CreateSession(CreateSession {
                    session: SessionSpec::Keygen(KeygenSpec {
                        participants: vec![PartyId(1), PartyId(2), PartyId(3)],
                        threshold: 2,
                        scheme: "frost-secp256k1".into(),
                        deadline_secs: 600,
                        round_secs: None,
                    }),
                })
            })
            .collect();
        let b = self.batch(1, creates);
        let ops = self.block(vec![b]);
        let b: Vec<_> = (1..=3)
            .map(|p| {
                let v = ops
                    .iter()
                    .map(|op| {
                        OpBody::Verdict(VerdictOp {
                            target: *op,
                            decision: Decision::Approve,
                        })
                    })
                    .collect();
                self.batch(p, v)
            })
            .collect();
        self.block(b);
        let sids: Vec<SessionId> = ops.iter().map(SessionId::from_op).collect();
        let b: Vec<_> = (1..=3u32)
            .map(|p| {
                let v = sids
                    .iter()
                    .map(|s| {
                        OpBody::SessionMessage(SessionMessage {
                            session: *s,
                            round: 1,
                            broadcast: Some(Blob(vec![p as u8; 256])),
                            direct: Vec::new(),
                        })
                    })
                    .collect();
                self.batch(p, v)
            })
            .collect();
        self.block(b);
        let b: Vec<_> = (1..=3)
            .map(|p| {
                let v = sids
                    .iter()
                    .map(|s| {
                        OpBody::SessionResult(SessionResult {
                            session: *s,
                            result: Blob(vec![2; 33]),
                        })
                    })
                    .collect();
                self.batch(p, v)
            })
            .collect();
        self.block(b);
    }
}

fn main() {
    let members: BTreeMap<PartyId, PublicKey> = (1..=3)
        .map(|i| (PartyId(i), PublicKey([i as u8; 65])))
        .collect();
    let cluster = ClusterId(Sha256Digest::of(b"bench"));
    let config = MachineConfig {
        cluster,
        fault_model: FaultModel::Byzantine,
        members,
        rules: SessionRules::default(),
    };
    let mut d = Driver {
        m: SessionMachine::new(config).unwrap(),
        cluster,
        height: 0,
        time_ms: 1_700_000_000_000,
        seq: BTreeMap::new(),
        apply: Duration::ZERO,
        ops: 0,
    };
    println!(
        "{:<12} {:<44} {:>14} {:<8} note",
        "area", "metric", "value", "unit"
    );
    println!("{}", "-".repeat(100));
    let row = |metric: String, value: f64, unit: &str, note: String| {
        let v = if value >= 100.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        println!(
            "{:<12} {:<44} {:>14} {:<8} {}",
            "sessions", metric, v, unit, note
        );
    };
    let mut done = 0usize;
    for target in [100usize, 1_000, 5_000] {
        d.apply = Duration::ZERO;
        d.ops = 0;
        while done < target {
            d.keygens(50);
            done += 50;
        }
        let state_bytes = d.m.encode_state().len();
        let t = Instant::now();
        let reps = 20;
        for _ in 0..reps {
            std::hint::black_box(d.m.full_state_root());
        }
        let root = t.elapsed() / reps;
        row(
            format!("apply (keygen lifecycle), {target} sessions"),
            d.ops as f64 / d.apply.as_secs_f64(),
            "ops/s",
            "50 sessions x 8 ops per 4 blocks; incremental state root per block".to_string(),
        );
        row(
            format!("state root from scratch, {target} sessions"),
            root.as_secs_f64() * 1e3,
            "ms",
            format!("{state_bytes} bytes of state; audit/restore cost, not per block"),
        );
    }
}
