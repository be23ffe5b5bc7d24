//! Deterministic simulation of a Quorate cluster's consensus (test code,
//! compiled only with the `sim` feature; the daemon never calls it).
//!
//! n parties run the real [`ConsensusDriver`] in one thread, on a simulated
//! clock, with every source of nondeterminism drawn from one seeded ChaCha
//! RNG: message delays, drops, duplicates, reordering, partitions that heal,
//! crashes and restarts from persisted state, and Byzantine parties that
//! equivocate, forge signatures or send garbage. The seed also picks n and
//! the fault model, so a seed alone reproduces a run.
//!
//! Signatures are real ECDSA P-256, verified by the firmware with ring.
//! ring cannot sign deterministically, so the simulated signer uses the
//! RustCrypto `p256` crate with RFC 6979 nonces and fixed keys: every byte of
//! a run (keys, signatures, block hashes) is the same on every machine, and a
//! failing seed reproduces exactly.
//!
//! Checked on every run: agreement, validity, no honest party signs twice at
//! one (height, round, step), every decided block carries a valid commit
//! certificate, and liveness (every submitted batch is decided by every
//! honest party within a bound after the last fault ends).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::batch::{BatchBody, SignedBatch};
use crate::consensus::context::{LogHead, Party, PartySet, SignedBytes, SignedVoteWire};
use crate::consensus::driver::{
    Action, ChainState, ConsensusDriver, DecidedBlock, DriverConfig, Input, Persist, Restored,
    SignRequestId, Step,
};
use crate::consensus::sign_guard::SignGuard;
use crate::consensus::verify_commit_certificate;
use crate::consensus::wire::{PeerMessage, WalRecord};
use crate::crypto::{PublicKey, Signature};
use crate::sessions::ops::{Decision, Slot};
use crate::sessions::slot::{SlotCheck, SlotGuard};
use crate::sessions::{OpBody, Operation};
use crate::types::{ClusterId, Epoch, FaultModel, Height, PartyId, Sha256Digest};
use malachitebft_core_types::NilOrVal;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::SigningKey;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::OnceLock;

const EPOCH_MS: u64 = 1_700_000_000_000;

/// The largest cluster the simulator supports.
pub const MAX_PARTIES: usize = 7;

fn keys() -> &'static Vec<(SigningKey, PublicKey)> {
    static KEYS: OnceLock<Vec<(SigningKey, PublicKey)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..MAX_PARTIES)
            .map(|i| {
                let secret = Sha256Digest::of_parts(&[b"quorate-sim-vote-key", &[i as u8]]);
                let sk = SigningKey::from_slice(secret.as_bytes()).unwrap();
                let point = sk.verifying_key().to_encoded_point(false);
                let pk = PublicKey(point.as_bytes().try_into().unwrap());
                (sk, pk)
            })
            .collect()
    })
}

/// Signs with party `p`'s (1-based) simulated vote key: ECDSA P-256 with
/// RFC 6979 deterministic nonces, so every byte of a run is reproducible.
pub fn sign_as(p: PartyId, bytes: &[u8]) -> Signature {
    let sig: p256::ecdsa::Signature = keys()[(p.0 - 1) as usize].0.sign(bytes);
    let fixed: [u8; 64] = sig.to_bytes().into();
    Signature(fixed)
}

/// The simulated party set of size n (P1..Pn).
pub fn party_set(n: usize) -> PartySet {
    PartySet::new(
        (1..=n)
            .map(|i| Party {
                id: PartyId(i as u32),
                vote_key: keys()[i - 1].1,
            })
            .collect(),
    )
    .unwrap()
}

/// The simulated cluster id.
pub fn cluster() -> ClusterId {
    ClusterId(Sha256Digest::of(b"quorate-sim-cluster"))
}

/// A Byzantine behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Byzantine {
    /// Sends conflicting signed votes to different peers.
    Equivocate,
    /// Sends messages with forged signatures (other parties' names, altered content).
    Forge,
    /// Sends random and truncated bytes.
    Garbage,
    /// Signs (with its own, valid key) batches that break the batch rules
    /// (too many operations, an operation that does not decode), gossips
    /// them and proposes blocks carrying them. Honest parties must refuse
    /// them; one decided is a validity violation.
    Oversized,
    /// Gossips well-formed, signed batches whose predecessor it never
    /// sends. They must not make work: an idle cluster stays idle.
    SeqGap,
    /// Gossips a backlog of valid half-block batches, always topped up,
    /// so that its batches could fill every block. Correct authors' batches
    /// must still be decided within the fairness bound.
    Flood,
    /// Runs the real driver on a clock 20 s or 60 s ahead of or behind
    /// the others' (`SimConfig::clock_offsets_ms`): its fresh proposals'
    /// times fall outside the correct parties' window and must be refused
    /// (a decided block time more than the window past a correct clock is a
    /// *block time* violation), and it refuses theirs.
    SkewedClock,
    /// Shows each half of its peers a different vote, signed, for every
    /// vote it casts (the other half never gets the first one): a split
    /// view, which no single correct party sees both sides of unless
    /// votes are relayed. Every correct party must end with the evidence
    /// committed (an *evidence* violation otherwise).
    SplitView,
    /// Honest on the wire, it keeps every batch it receives, to frame a
    /// correct author with two of its different signed operations for one
    /// slot (`ConflictingOps`, which excludes the author). Meanwhile the
    /// correct parties retry operations (an MPC engine retrying a round
    /// with fresh randomness, a manual verdict racing the automatic one)
    /// through their slot guard ([`SimConfig::retries`]). Holding such a
    /// pair is an *exclusion* violation.
    Framer,
}

impl Byzantine {
    /// The named adversary models `make soak` reports on, one line each.
    pub const MODELS: [(&'static str, Byzantine); 9] = [
        ("equivocation", Byzantine::Equivocate),
        ("forged-signatures", Byzantine::Forge),
        ("garbage-frames", Byzantine::Garbage),
        ("oversized-batch", Byzantine::Oversized),
        ("seq-gap", Byzantine::SeqGap),
        ("batch-flood", Byzantine::Flood),
        ("skewed-proposer-clock", Byzantine::SkewedClock),
        ("split-view-equivocation", Byzantine::SplitView),
        ("conflicting-retry", Byzantine::Framer),
    ];
}

/// Heights a correct author's batch may wait, from the height in progress
/// when it is submitted to the one that decides it, under a batch flood on
/// a clean network: the height in progress may already be proposed, and the
/// next correct proposer takes the author first (it was served longest
/// ago), so 2 suffice; one more for gossip racing the proposal.
pub const FAIRNESS_BOUND_HEIGHTS: u64 = 3;

/// One run's configuration (all derived from the seed by [`SimConfig::from_seed`]).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Parties.
    pub n: usize,
    /// Fault model.
    pub model: FaultModel,
    /// Batches to submit.
    pub batches: usize,
    /// Operations per batch.
    pub ops_per_batch: usize,
    /// Bytes per operation.
    pub op_bytes: usize,
    /// Message drop probability.
    pub drop: f64,
    /// Duplicate probability.
    pub dup: f64,
    /// Maximum extra delay (reordering), ms.
    pub max_delay_ms: u64,
    /// Partition: (start, end, side of each party).
    pub partition: Option<(u64, u64, Vec<bool>)>,
    /// Crash: (party index 0-based, at, restart at).
    pub crash: Option<(usize, u64, u64)>,
    /// Byzantine parties (index 0-based) and behaviour.
    pub byzantine: Vec<(usize, Byzantine)>,
    /// Simulated time allowed after the last fault for everything to decide.
    pub liveness_bound_ms: u64,
    /// Submit one batch at a time, each after the previous one is decided
    /// (one batch per block; for benchmarks).
    pub sequential: bool,
    /// Check the fairness bound ([`FAIRNESS_BOUND_HEIGHTS`]) for every
    /// correct author's batch.
    pub fairness: bool,
    /// Once everything is decided (and a grace period for carriers has
    /// passed), run this many more ms and fail if a correct party signs
    /// anything: nothing left to decide must not make work.
    pub idle_tail_ms: Option<u64>,
    /// Each party's clock offset from the simulated clock, ms (empty: all
    /// 0). Correct parties' offsets must stay well inside the drivers'
    /// block time window.
    pub clock_offsets_ms: Vec<i64>,
    /// Every correct party must decide equivocation evidence against a
    /// Byzantine party before the run ends.
    pub require_evidence: bool,
    /// Correct parties retry some of their operations with a different
    /// one for the same slot (a fresh MPC round message, a manual verdict
    /// racing the automatic one), or the very same one, after a delay.
    pub retries: bool,
    /// Whether the correct parties' hosts put their operations through a
    /// [`SlotGuard`] (off only to show what it prevents).
    pub slot_guard: bool,
}

/// How many equivocating parties a model tolerates for safety *and* liveness.
pub fn equivocators_tolerated(model: FaultModel, n: usize) -> usize {
    let q = model.quorum(n);
    (2 * q).saturating_sub(n).saturating_sub(1).min(n - q)
}

impl SimConfig {
    /// Everything from the seed: n, fault model and the fault schedule.
    pub fn from_seed(seed: u64) -> Self {
        let n = [3usize, 4, 7][(seed % 3) as usize];
        let model = [
            FaultModel::Byzantine,
            FaultModel::Unanimous,
            FaultModel::Majority,
        ][((seed / 3) % 3) as usize];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let drop = if rng.random_bool(0.7) {
            rng.random_range(0.0..0.3)
        } else {
            0.0
        };
        let dup = if rng.random_bool(0.5) {
            rng.random_range(0.0..0.1)
        } else {
            0.0
        };
        let max_delay_ms = rng.random_range(5..300);
        let partition = if rng.random_bool(0.3) {
            let start = rng.random_range(0..4000);
            let end = start + rng.random_range(500..6000);
            let sides = (0..n).map(|_| rng.random_bool(0.5)).collect();
            Some((start, end, sides))
        } else {
            None
        };
        let mut byzantine = Vec::new();
        let eq = equivocators_tolerated(model, n);
        if rng.random_bool(0.5) {
            let kinds = if eq >= 1 {
                vec![Byzantine::Equivocate, Byzantine::Forge, Byzantine::Garbage]
            } else {
                vec![Byzantine::Forge, Byzantine::Garbage]
            };
            let count = if eq >= 1 { rng.random_range(1..=eq) } else { 1 };
            let mut idx: Vec<usize> = (0..n).collect();
            for _ in 0..count {
                let i = idx.remove(rng.random_range(0..idx.len()));
                let k = kinds[rng.random_range(0..kinds.len())];
                // Only as many equivocators as the model tolerates.
                let k = if k == Byzantine::Equivocate
                    && byzantine
                        .iter()
                        .filter(|(_, b)| *b == Byzantine::Equivocate)
                        .count()
                        >= eq
                {
                    Byzantine::Garbage
                } else {
                    k
                };
                byzantine.push((i, k));
            }
        }
        let crash = if rng.random_bool(0.3) {
            let honest: Vec<usize> = (0..n)
                .filter(|i| !byzantine.iter().any(|(b, _)| b == i))
                .collect();
            let p = honest[rng.random_range(0..honest.len())];
            let at = rng.random_range(0..5000);
            Some((p, at, at + rng.random_range(200..5000)))
        } else {
            None
        };
        SimConfig {
            seed,
            n,
            model,
            batches: rng.random_range(1..=4),
            ops_per_batch: rng.random_range(1..=3),
            op_bytes: 32,
            drop,
            dup,
            max_delay_ms,
            partition,
            crash,
            byzantine,
            liveness_bound_ms: 120_000,
            sequential: false,
            fairness: false,
            idle_tail_ms: None,
            clock_offsets_ms: Vec::new(),
            require_evidence: false,
            retries: false,
            slot_guard: true,
        }
    }

    /// A run of the named adversary `model` ([`Byzantine::MODELS`]): n
    /// from the seed in {4, 7}, the Byzantine fault model, one adversary,
    /// batches from the correct parties, message delays (and, except for
    /// the flood, whose fairness bound assumes a clean network, drops and
    /// duplicates) from the seed.
    pub fn model(seed: u64, model: Byzantine) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d6f_6465_6c00);
        let n = [4usize, 7][(seed % 2) as usize];
        let mut cfg = SimConfig::clean(seed, n, FaultModel::Byzantine, rng.random_range(2..=6), 2);
        cfg.sequential = false;
        cfg.liveness_bound_ms = 120_000;
        cfg.max_delay_ms = rng.random_range(5..100);
        if model != Byzantine::Flood {
            cfg.drop = rng.random_range(0.0..0.1);
            cfg.dup = rng.random_range(0.0..0.1);
        }
        let adversary = rng.random_range(0..n);
        cfg.byzantine = vec![(adversary, model)];
        cfg.fairness = model == Byzantine::Flood;
        if model == Byzantine::SkewedClock {
            // Correct clocks within ±1 s of each other (NTP does better);
            // the adversary's far outside the 5 s window, or just outside
            // it and inside the 30 s bound that was the only one before.
            let skew = [-60_000, -20_000, 20_000, 60_000][rng.random_range(0..4usize)];
            cfg.clock_offsets_ms = (0..n)
                .map(|i| {
                    if i == adversary {
                        skew
                    } else {
                        rng.random_range(-1_000..=1_000)
                    }
                })
                .collect();
        }
        if model == Byzantine::SeqGap {
            cfg.idle_tail_ms = Some(40_000);
        }
        cfg.require_evidence = model == Byzantine::SplitView;
        cfg.retries = model == Byzantine::Framer;
        cfg
    }

    /// A fault-free run (for benchmarks).
    pub fn clean(seed: u64, n: usize, model: FaultModel, batches: usize, ops: usize) -> Self {
        SimConfig {
            seed,
            n,
            model,
            batches,
            ops_per_batch: ops,
            op_bytes: 32,
            drop: 0.0,
            dup: 0.0,
            max_delay_ms: 5,
            partition: None,
            crash: None,
            byzantine: Vec::new(),
            liveness_bound_ms: 600_000,
            sequential: true,
            fairness: false,
            idle_tail_ms: None,
            clock_offsets_ms: Vec::new(),
            require_evidence: false,
            retries: false,
            slot_guard: true,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Highest height decided by every honest party.
    pub heights: u64,
    /// Signatures produced by honest parties.
    pub signatures: u64,
    /// ECDSA verifications performed (all parties).
    pub verifications: u64,
    /// Blocks that recorded equivocation evidence.
    pub evidence_blocks: u64,
    /// Peer frames honest drivers refused (garbage, forgeries).
    pub refused_frames: u64,
    /// Simulated milliseconds until the run ended.
    pub sim_ms: u64,
    /// Most heights a correct author's batch waited (see
    /// [`FAIRNESS_BOUND_HEIGHTS`]).
    pub max_wait_heights: u64,
    /// Block requests answered from the store (older than the blocks a
    /// driver keeps in memory) by honest parties.
    pub served_from_store: u64,
    /// Peer votes honest drivers relayed (one per peer sent to).
    pub votes_relayed: u64,
    /// Retried operations the correct parties' slot guards refused (409).
    pub retries_refused: u64,
}

/// The one-line command that reproduces `seed`.
pub fn repro(seed: u64) -> String {
    format!(
        "QUORATE_SIM_SEED={seed} cargo test -p quorate-firmware --features sim --test sim -- one_seed --nocapture"
    )
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        inc: u64,
        id: crate::consensus::driver::TimerId,
    },
    Sign {
        node: usize,
        inc: u64,
        request: SignRequestId,
        bytes: Vec<u8>,
    },
    Submit {
        node: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Retry {
        node: usize,
    },
}

#[derive(Default, Clone)]
struct Store {
    chain: ChainState,
    recent: Vec<DecidedBlock>,
    /// Every decided block, by height − 1 (the host's store holds them all
    /// and serves [`Action::ServeStored`] from them).
    blocks: Vec<DecidedBlock>,
    guard: SignGuard,
    wal: Vec<(Height, WalRecord)>,
    own_batches: Vec<SignedBatch>,
    /// The host's slot guard (durable, with its outbox).
    slots: SlotGuard,
}

struct Node {
    driver: Option<ConsensusDriver>,
    inc: u64,
    store: Store,
    byz: Option<Byzantine>,
    crash_mid_step: bool,
    next_seq: u64,
    decided: Vec<DecidedBlock>,
    app: SimLog,
    /// What an adversary gossips, by seq (the same bytes to every peer).
    byz_batches: BTreeMap<(u8, u64), SignedBatch>,
}

/// The application's stand-in for the audit log: a pure fold over decided
/// blocks that, like the host's ledger, needs each block's canonical
/// certificate (carried by the next block) and has a head every block
/// must carry. It makes the simulation exercise carrier blocks, the
/// `last_commit` and `log` header checks, and the driver's wait for the
/// application.
#[derive(Clone, Default)]
struct SimLog {
    head: LogHead,
    /// Last block applied.
    height: u64,
    /// The last decided block had content: its "entry" awaits its
    /// certificate.
    prepared: Option<crate::consensus::BlockHash>,
}

impl SimLog {
    fn on_decided(&mut self, d: &DecidedBlock) -> Result<(), Fail> {
        let h = d.block.header();
        if h.height.0 != self.height + 1 {
            return Ok(());
        }
        self.height = h.height.0;
        if let Some(prev) = self.prepared.take() {
            let cert = h.last_commit.as_ref().ok_or_else(|| {
                format!("block {} carries no certificate for its parent", h.height)
            })?;
            if cert.block != prev {
                return Err(format!(
                    "block {} carries a certificate for another parent",
                    h.height
                ));
            }
            let mut signers = Vec::new();
            for (p, _) in &cert.signatures {
                signers.extend_from_slice(&p.0.to_be_bytes());
            }
            self.head = LogHead {
                size: self.head.size + 1,
                root: Sha256Digest::of_parts(&[
                    self.head.root.as_bytes(),
                    prev.0.as_bytes(),
                    &signers,
                ]),
            };
        }
        if !d.block.batches().is_empty() || !d.block.evidence().is_empty() {
            self.prepared = Some(d.block.hash());
        }
        Ok(())
    }
}

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: HashMap<usize, Ev>,
    next_ev: usize,
    nodes: Vec<Node>,
    parties: PartySet,
    dcfg: Vec<DriverConfig>,
    submitted: HashMap<Sha256Digest, SignedBatch>,
    /// The height in progress when each correct batch was submitted.
    submitted_at: HashMap<Sha256Digest, u64>,
    to_submit: usize,
    agreed: BTreeMap<Height, crate::consensus::BlockHash>,
    signed: HashMap<(usize, Height, i64, crate::consensus::context::Step), Sha256Digest>,
    /// What a framer holds: the first signed operation it saw of each
    /// correct author and slot.
    framer_seen: HashMap<(PartyId, Slot), OpBody>,
    report: SimReport,
    last_fault_end: u64,
}

type Fail = String;

impl Sim {
    fn push(&mut self, at: u64, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.seq += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at, self.seq, id)));
    }

    fn honest(&self, i: usize) -> bool {
        self.nodes[i].byz.is_none()
    }

    /// Party `i`'s clock: the simulated clock plus its offset.
    fn clock(&self, i: usize) -> u64 {
        let offset = self.cfg.clock_offsets_ms.get(i).copied().unwrap_or(0);
        (EPOCH_MS + self.now).saturating_add_signed(offset)
    }

    /// The fastest correct clock.
    fn fastest_correct_clock(&self) -> u64 {
        (0..self.cfg.n)
            .filter(|i| self.honest(*i))
            .map(|i| self.clock(i))
            .max()
            .unwrap_or(EPOCH_MS + self.now)
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        match &self.cfg.partition {
            Some((s, e, sides)) => self.now >= *s && self.now < *e && sides[a] != sides[b],
            None => false,
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if from == to || self.partitioned(from, to) {
            return;
        }
        if self.cfg.drop > 0.0 && self.rng.random_bool(self.cfg.drop) {
            return;
        }
        let copies = if self.cfg.dup > 0.0 && self.rng.random_bool(self.cfg.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = 1 + self.rng.random_range(0..=self.cfg.max_delay_ms);
            self.push(
                self.now + d,
                Ev::Deliver {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn broadcast(&mut self, from: usize, bytes: &[u8]) {
        for to in 0..self.cfg.n {
            if to != from {
                self.byz_send(from, to, bytes.to_vec());
            }
        }
    }

    /// Sends, letting a Byzantine sender misbehave.
    fn byz_send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        match self.nodes[from].byz {
            None => self.send(from, to, bytes),
            Some(Byzantine::Garbage) => {
                self.send(from, to, bytes.clone());
                let len = self.rng.random_range(0..200);
                let mut g = vec![0u8; len];
                self.rng.fill_bytes(&mut g);
                self.send(from, to, g);
                if !bytes.is_empty() {
                    let cut = self.rng.random_range(0..bytes.len());
                    self.send(from, to, bytes[..cut].to_vec());
                }
            }
            Some(Byzantine::Forge) => {
                self.send(from, to, bytes.clone());
                if let Ok(PeerMessage::Vote(mut v)) = PeerMessage::decode(&bytes, usize::MAX) {
                    // Claim another party's name, keep our signature.
                    let other = PartyId(((v.vote.voter.0 as usize) % self.cfg.n) as u32 + 1);
                    v.vote.voter = other;
                    self.send(from, to, PeerMessage::Vote(v.clone()).encode());
                    // Alter the content under a valid-looking signature.
                    v.vote.value = NilOrVal::Val(crate::consensus::BlockHash(Sha256Digest::of(
                        &self.now.to_be_bytes(),
                    )));
                    v.signature.0[5] ^= 0x55;
                    self.send(from, to, PeerMessage::Vote(v).encode());
                } else if let Ok(PeerMessage::Batch(mut b)) =
                    PeerMessage::decode(&bytes, usize::MAX)
                {
                    b.body.ops.push(vec![0xEE]);
                    self.send(from, to, PeerMessage::Batch(b).encode());
                } else if let Ok(PeerMessage::Proposal(p)) = PeerMessage::decode(&bytes, usize::MAX)
                {
                    // A correctly signed proposal of an invalid block: it
                    // carries a batch "by" another party with a forged
                    // signature. Honest parties must refuse it.
                    let mut contents: crate::consensus::context::BlockContents =
                        p.proposal.block.clone().into();
                    let victim = PartyId(((from + 1) % self.cfg.n) as u32 + 1);
                    contents.batches.push(SignedBatch {
                        body: BatchBody {
                            cluster: cluster(),
                            author: victim,
                            seq: 1_000_000 + self.now,
                            ops: vec![b"forged".to_vec()],
                        },
                        signature: Signature([7u8; 64]),
                    });
                    let mut forged = p.clone();
                    forged.proposal.block = crate::consensus::Block::new(contents);
                    let ctx = crate::consensus::context::QuorateContext {
                        cluster: cluster(),
                        epoch: Epoch(0),
                    };
                    forged.signature = sign_as(
                        forged.proposal.proposer,
                        &forged.proposal.signed_bytes(&ctx).encode(),
                    );
                    self.send(from, to, PeerMessage::Proposal(forged).encode());
                }
            }
            Some(Byzantine::Oversized) => {
                if let Ok(PeerMessage::Proposal(p)) = PeerMessage::decode(&bytes, usize::MAX) {
                    // Only the block with a junk batch of its own in it.
                    let junk = self.byz_batch(from, 1);
                    let mut contents: crate::consensus::context::BlockContents =
                        p.proposal.block.clone().into();
                    contents.batches.extend(junk);
                    let mut bad = p.clone();
                    bad.proposal.block = crate::consensus::Block::new(contents);
                    let ctx = crate::consensus::context::QuorateContext {
                        cluster: cluster(),
                        epoch: Epoch(0),
                    };
                    bad.signature = sign_as(
                        bad.proposal.proposer,
                        &bad.proposal.signed_bytes(&ctx).encode(),
                    );
                    self.send(from, to, PeerMessage::Proposal(bad).encode());
                    return;
                }
                self.byz_gossip(from, to, bytes);
            }
            Some(Byzantine::SeqGap | Byzantine::Flood) => self.byz_gossip(from, to, bytes),
            // Misbehaves only through its clock, or not on the wire.
            Some(Byzantine::SkewedClock | Byzantine::Framer) => self.send(from, to, bytes),
            Some(Byzantine::SplitView) => {
                let own_vote = match PeerMessage::decode(&bytes, usize::MAX) {
                    Ok(PeerMessage::Vote(v)) if v.vote.voter.0 as usize == from + 1 => Some(v),
                    _ => None,
                };
                match own_vote {
                    // The even half of the peers gets the other vote, and
                    // only that one.
                    Some(v) if to % 2 == 0 => {
                        let c = conflicting_vote(&v);
                        self.send(from, to, PeerMessage::Vote(c).encode());
                    }
                    _ => self.send(from, to, bytes),
                }
            }
            Some(Byzantine::Equivocate) => {
                if let Ok(PeerMessage::Vote(v)) = PeerMessage::decode(&bytes, usize::MAX) {
                    // Its own votes only (it relays the others' as they are).
                    if to % 2 == 0 && v.vote.voter.0 as usize == from + 1 {
                        let c = conflicting_vote(&v);
                        self.send(from, to, PeerMessage::Vote(c).encode());
                        // Some peers see both votes: that is what evidence needs.
                        if to % 4 != 0 {
                            return;
                        }
                    }
                }
                self.send(from, to, bytes);
            }
        }
    }

    /// A framer's view of a frame it received: it keeps the first signed
    /// operation of each correct author per slot, and fails the run if
    /// another one conflicts with it (the proof that would exclude it).
    fn framer_receives(&mut self, framer: usize, bytes: &[u8]) -> Result<(), Fail> {
        let batches: Vec<SignedBatch> = match PeerMessage::decode(bytes, usize::MAX) {
            Ok(PeerMessage::Batch(b)) => vec![b],
            Ok(PeerMessage::Proposal(p)) => p.proposal.block.batches().to_vec(),
            Ok(PeerMessage::BlockResponse { block, .. }) => block.batches().to_vec(),
            _ => return Ok(()),
        };
        for b in batches {
            let author = b.body.author;
            let correct = (author.0 as usize)
                .checked_sub(1)
                .is_some_and(|a| a < self.cfg.n && self.honest(a));
            if !correct || self.parties.key_of(author).map(|k| b.verify(k).is_ok()) != Some(true) {
                continue;
            }
            for bytes in &b.body.ops {
                let Ok(op) = Operation::decode(bytes) else {
                    continue;
                };
                let Some(slot) = op.body.slot() else {
                    continue;
                };
                match self.framer_seen.get(&(author, slot)) {
                    None => {
                        self.framer_seen.insert((author, slot), op.body);
                    }
                    Some(first) => {
                        if crate::sessions::slot::conflict(first, &op.body).is_some() {
                            return Err(format!(
                                "exclusion violated: P{} holds two different signed operations of correct {author} for {slot:?}, a proof that excludes it",
                                framer + 1
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `bytes`, and with every tip the adversary's batches.
    fn byz_gossip(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let tip = matches!(
            PeerMessage::decode(&bytes, usize::MAX),
            Ok(PeerMessage::Tip { .. })
        );
        self.send(from, to, bytes);
        if tip {
            for kind in 0..2u8 {
                for b in self.byz_batch(from, kind) {
                    self.send(from, to, PeerMessage::Batch(b).encode());
                }
            }
        }
    }

    /// The adversary `i`'s batches of `kind` for now (cached, so every peer
    /// gets the same bytes).
    fn byz_batch(&mut self, i: usize, kind: u8) -> Vec<SignedBatch> {
        let author = PartyId(i as u32 + 1);
        let Some(d) = self.nodes[i].driver.as_ref() else {
            return Vec::new();
        };
        let last = d.chain().last_seq.get(&author).copied().unwrap_or(0);
        let seqs: Vec<u64> = match (self.nodes[i].byz, kind) {
            // Kind 0: too many operations; kind 1: one that does not decode.
            (Some(Byzantine::Oversized), 0 | 1) => vec![last + 1],
            (Some(Byzantine::SeqGap), 0) => vec![last + 2, last + 3],
            (Some(Byzantine::Flood), 0) => (last + 1..=last + 6).collect(),
            _ => Vec::new(),
        };
        let byz = self.nodes[i].byz;
        let mut out = Vec::new();
        for seq in seqs {
            if let Some(b) = self.nodes[i].byz_batches.get(&(kind, seq)) {
                out.push(b.clone());
                continue;
            }
            let ops: Vec<Vec<u8>> = match (byz, kind) {
                (Some(Byzantine::Oversized), 0) => (0..=crate::sessions::ops::MAX_OPS_PER_BATCH)
                    .map(|k| sim_op(author, seq, k, 16))
                    .collect(),
                (Some(Byzantine::Oversized), _) => {
                    vec![sim_op(author, seq, 0, 16), b"junk".to_vec()]
                }
                // Half a block (the simulated blocks are 256 KiB).
                (Some(Byzantine::Flood), _) => {
                    (0..8).map(|k| sim_op(author, seq, k, 15_000)).collect()
                }
                _ => vec![sim_op(author, seq, 0, 64)],
            };
            let body = BatchBody {
                cluster: cluster(),
                author,
                seq,
                ops,
            };
            let signature = sign_as(author, &body.signing_bytes());
            let b = SignedBatch { body, signature };
            if byz == Some(Byzantine::Flood) {
                // Valid: deciding it is no violation.
                self.submitted.insert(b.id(), b.clone());
            }
            self.nodes[i].byz_batches.insert((kind, seq), b.clone());
            out.push(b);
        }
        self.nodes[i].byz_batches.retain(|(_, s), _| *s > last);
        out
    }

    /// The height in progress at the correct parties (the highest).
    fn height_in_progress(&self) -> u64 {
        (0..self.cfg.n)
            .filter(|i| self.honest(*i))
            .map(|i| self.nodes[i].decided.len() as u64 + 1)
            .max()
            .unwrap_or(1)
    }

    fn apply(&mut self, i: usize, step: Step) -> Result<(), Fail> {
        let inc = self.nodes[i].inc;
        let mut persist = step.persist;
        let crash_now = self.nodes[i].crash_mid_step;
        if crash_now {
            // Crash in the middle of making this step durable: a prefix of
            // its records reached the disk, none of its actions happened.
            let k = self.rng.random_range(0..=persist.len());
            persist.truncate(k);
        }
        if trace() {
            for p in &persist {
                let d = match p {
                    Persist::WalAppend { height, record } => format!(
                        "wal h={height} {}",
                        match record {
                            WalRecord::Vote(v) => format!(
                                "vote {:?} r={} {:?} by {}",
                                v.vote.step(),
                                v.vote.round,
                                v.vote.value_opt().map(|h| h.to_string()),
                                v.vote.voter
                            ),
                            WalRecord::Proposal(p) => format!(
                                "proposal r={} {}",
                                p.proposal.round,
                                p.proposal.block.hash()
                            ),
                            other => format!("{:?}", std::mem::discriminant(other)),
                        }
                    ),
                    Persist::WalReset { height } => format!("wal reset {height}"),
                    Persist::SignGuard(g) => format!("guard {g:?}"),
                    Persist::Decided { decided, .. } => {
                        format!("decided {}", decided.block.header().height)
                    }
                };
                eprintln!(
                    "{:>7} P{} persist {d}{}",
                    self.now,
                    i + 1,
                    if crash_now { " (crashing)" } else { "" }
                );
            }
        }
        for p in persist {
            let s = &mut self.nodes[i].store;
            match p {
                Persist::WalAppend { height, record } => s.wal.push((height, record)),
                Persist::WalReset { height } => s.wal.retain(|(h, _)| *h >= height),
                Persist::SignGuard(g) => s.guard = g,
                Persist::Decided { decided, chain } => {
                    s.chain = chain;
                    s.blocks.push(decided.clone());
                    s.recent.push(decided);
                    if s.recent.len() > 64 {
                        s.recent.remove(0);
                    }
                }
            }
        }
        if crash_now {
            self.nodes[i].crash_mid_step = false;
            self.nodes[i].driver = None;
            self.nodes[i].inc += 1;
            return Ok(());
        }
        for a in step.actions {
            match a {
                Action::Send { to, bytes } => self.byz_send(i, (to.0 - 1) as usize, bytes),
                Action::Broadcast { bytes } => self.broadcast(i, &bytes),
                Action::ScheduleTimeout { id, after_ms } => {
                    self.push(self.now + after_ms, Ev::Timer { node: i, inc, id })
                }
                Action::CancelTimeout { .. } => {}
                Action::Sign { request, bytes } => {
                    let d = self.rng.random_range(1..40);
                    self.push(
                        self.now + d,
                        Ev::Sign {
                            node: i,
                            inc,
                            request,
                            bytes,
                        },
                    );
                }
                Action::Decided(d) => self.on_decided(i, *d)?,
                Action::ServeStored { to, height } => {
                    let d = usize::try_from(height.0)
                        .ok()
                        .and_then(|h| h.checked_sub(1))
                        .and_then(|h| self.nodes[i].store.blocks.get(h))
                        .cloned()
                        .ok_or_else(|| {
                            format!("P{} asked to serve height {height}, not stored", i + 1)
                        })?;
                    self.report.served_from_store += 1;
                    let bytes =
                        crate::consensus::driver::block_response_frame(d.block, d.certificate);
                    self.byz_send(i, (to.0 - 1) as usize, bytes);
                }
            }
        }
        Ok(())
    }

    fn on_decided(&mut self, i: usize, d: DecidedBlock) -> Result<(), Fail> {
        let h = d.block.header().height;
        verify_commit_certificate(
            &self.parties,
            self.cfg.model,
            cluster(),
            Epoch(0),
            h,
            d.block.hash(),
            &d.certificate,
        )
        .map_err(|e| {
            format!(
                "P{} decided height {h} with an invalid certificate: {e}",
                i + 1
            )
        })?;
        // The application (every party, honest or not, runs one) updates
        // its log and tells the driver, which holds the next height until
        // then.
        self.nodes[i]
            .app
            .on_decided(&d)
            .map_err(|e| format!("P{}: {e}", i + 1))?;
        let (head, pending) = (self.nodes[i].app.head, self.nodes[i].app.prepared.is_some());
        let now = self.clock(i);
        if let Some(drv) = self.nodes[i].driver.as_mut() {
            match drv.set_app_state(now, head, pending) {
                Ok(step) => {
                    if self.honest(i) {
                        self.record_decided(i, d)?;
                    }
                    return self.apply(i, step);
                }
                Err(e) => return Err(format!("P{} halted: {e}", i + 1)),
            }
        }
        if !self.honest(i) {
            return Ok(());
        }
        self.record_decided(i, d)
    }

    fn record_decided(&mut self, i: usize, d: DecidedBlock) -> Result<(), Fail> {
        let h = d.block.header().height;
        match self.agreed.get(&h) {
            Some(x) if *x != d.block.hash() => {
                return Err(format!(
                    "agreement violated at height {h}: P{} decided another block",
                    i + 1
                ))
            }
            _ => {
                self.agreed.insert(h, d.block.hash());
            }
        }
        // A correct party prevoted the block (fewer than a quorum are
        // faulty) and checked its time against its clock when it arrived,
        // which was no later than now.
        let bound = self.fastest_correct_clock() + self.dcfg[i].block_time_ahead_ms;
        let time_ms = d.block.header().time_ms;
        if time_ms > bound {
            return Err(format!(
                "block time violated: P{} decided height {h} with time {time_ms}, {} ms past the fastest correct clock plus the window",
                i + 1,
                time_ms - bound
            ));
        }
        let expected = self.nodes[i].decided.len() as u64 + 1;
        if h.0 != expected {
            return Err(format!(
                "P{} decided height {h} out of order (expected {expected})",
                i + 1
            ));
        }
        for b in d.block.batches() {
            if let Some(at) = self.submitted_at.remove(&b.id()) {
                let waited = h.0.saturating_sub(at);
                self.report.max_wait_heights = self.report.max_wait_heights.max(waited);
                if self.cfg.fairness && waited > FAIRNESS_BOUND_HEIGHTS {
                    return Err(format!(
                        "fairness violated: {}#{} was decided at height {h}, {waited} heights after it was submitted (bound {FAIRNESS_BOUND_HEIGHTS})",
                        b.body.author, b.body.seq
                    ));
                }
            }
            let ok = self.submitted.contains_key(&b.id())
                && self
                    .parties
                    .key_of(b.body.author)
                    .map(|k| b.verify(k).is_ok())
                    .unwrap_or(false);
            if !ok {
                return Err(format!("validity violated: P{} decided a batch that was not submitted or is badly signed", i + 1));
            }
        }
        for e in d.block.evidence() {
            let offender = e.first.vote.voter;
            if self.honest((offender.0 - 1) as usize) {
                return Err(format!(
                    "exclusion violated: P{} decided equivocation evidence against correct {offender}",
                    i + 1
                ));
            }
        }
        if !d.block.evidence().is_empty() {
            self.report.evidence_blocks += 1;
        }
        self.nodes[i].decided.push(d);
        if self.cfg.sequential && i == 0 && self.to_submit > 0 {
            self.push(self.now + 1, Ev::Submit { node: 0 });
        }
        Ok(())
    }

    fn handle(&mut self, i: usize, input: Input) -> Result<(), Fail> {
        let now = self.clock(i);
        let Some(d) = self.nodes[i].driver.as_mut() else {
            return Ok(());
        };
        match d.handle(now, input) {
            Ok(step) => {
                self.report.refused_frames += step.faults.len() as u64;
                self.apply(i, step)
            }
            Err(crate::consensus::DriverError::Halted(e)) => Err(format!("P{} halted: {e}", i + 1)),
            Err(_) => Ok(()),
        }
    }

    fn restore(&mut self, i: usize) -> Result<(), Fail> {
        let s = self.nodes[i].store.clone();
        let next = Height(s.chain.height.0 + 1);
        let restored = Restored {
            chain: s.chain.clone(),
            recent: s.recent.clone(),
            sign_guard: s.guard.clone(),
            wal: s
                .wal
                .iter()
                .filter(|(h, _)| *h == next)
                .map(|(_, r)| r.clone())
                .collect(),
            log_head: self.nodes[i].app.head,
            log_pending: self.nodes[i].app.prepared.is_some(),
        };
        let (d, step) = ConsensusDriver::restore(self.dcfg[i].clone(), restored, self.clock(i))
            .map_err(|e| format!("P{} failed to restore: {e}", i + 1))?;
        self.nodes[i].driver = Some(d);
        // The application applies decided blocks from the store: blocks whose
        // `Decided` action a crash swallowed are delivered now.
        let applied = self.nodes[i].decided.len() as u64;
        for b in s
            .recent
            .iter()
            .filter(|b| b.block.header().height.0 > applied)
        {
            self.on_decided(i, b.clone())?;
        }
        self.apply(i, step)?;
        // The host keeps its own undecided batches and submits them again.
        let last = s
            .chain
            .last_seq
            .get(&PartyId(i as u32 + 1))
            .copied()
            .unwrap_or(0);
        for b in s.own_batches.iter().filter(|b| b.body.seq > last) {
            self.handle(i, Input::SubmitBatch(b.clone()))?;
        }
        Ok(())
    }

    fn submit(&mut self, i: usize) -> Result<(), Fail> {
        let author = PartyId(i as u32 + 1);
        let seq = self.nodes[i].next_seq + 1;
        let ops: Vec<Vec<u8>> = (0..self.cfg.ops_per_batch)
            .map(|k| {
                if self.cfg.retries && k % 2 == 1 {
                    sim_verdict(author, seq, k, Decision::Approve)
                } else {
                    sim_op(author, seq, k, self.cfg.op_bytes)
                }
            })
            .collect();
        for op in &ops {
            // Fresh slots: the guard records them.
            if let Ok(op) = Operation::decode(op) {
                self.nodes[i].store.slots.claim(&op);
            }
        }
        if self.cfg.retries && self.rng.random_bool(0.6) {
            let at = self.now + self.rng.random_range(50..3_000);
            self.last_fault_end = self.last_fault_end.max(at);
            self.push(at, Ev::Retry { node: i });
        }
        self.submit_ops(i, ops)
    }

    /// Signs `ops` as party `i`'s next batch and submits it.
    fn submit_ops(&mut self, i: usize, ops: Vec<Vec<u8>>) -> Result<(), Fail> {
        let author = PartyId(i as u32 + 1);
        self.nodes[i].next_seq += 1;
        let seq = self.nodes[i].next_seq;
        let body = BatchBody {
            cluster: cluster(),
            author,
            seq,
            ops,
        };
        let signature = sign_as(author, &body.signing_bytes());
        let b = SignedBatch { body, signature };
        self.submitted.insert(b.id(), b.clone());
        let at = self.height_in_progress();
        self.submitted_at.insert(b.id(), at);
        self.nodes[i].store.own_batches.push(b.clone());
        self.handle(i, Input::SubmitBatch(b))
    }

    /// Party `i`'s host is asked again for one of its earlier operations'
    /// slots: the very same operation, or (an MPC engine retrying a round
    /// with fresh randomness, a manual verdict racing the automatic one)
    /// a different one. Its slot guard refuses the different one (409);
    /// only without the guard is it signed.
    fn retry(&mut self, i: usize) -> Result<(), Fail> {
        if self.nodes[i].driver.is_none() {
            self.push(self.now + 100, Ev::Retry { node: i });
            return Ok(());
        }
        let earlier: Vec<Vec<u8>> = self.nodes[i]
            .store
            .own_batches
            .iter()
            .flat_map(|b| b.body.ops.iter().cloned())
            .collect();
        if earlier.is_empty() {
            return Ok(());
        }
        let pick = earlier[self.rng.random_range(0..earlier.len())].clone();
        let Ok(mut op) = Operation::decode(&pick) else {
            return Ok(());
        };
        if self.rng.random_bool(0.75) {
            match &mut op.body {
                OpBody::SessionMessage(m) => {
                    m.broadcast = Some(crate::sessions::ops::Blob(
                        format!("retried at {}", self.now).into_bytes(),
                    ))
                }
                OpBody::Verdict(v) => {
                    v.decision = Decision::Reject(crate::sessions::ops::Reason {
                        code: crate::sessions::ops::ReasonCode::OperatorRejected,
                        text: "manual".into(),
                    })
                }
                _ => {}
            }
        }
        let check = if self.cfg.slot_guard {
            self.nodes[i].store.slots.claim(&op)
        } else {
            SlotCheck::Free
        };
        match check {
            SlotCheck::Free => self.submit_ops(i, vec![op.encode()]),
            // The first receipt again: nothing new is signed.
            SlotCheck::Repeat => Ok(()),
            SlotCheck::Taken => {
                self.report.retries_refused += 1;
                Ok(())
            }
        }
    }

    /// Whether every correct party decided equivocation evidence against
    /// a Byzantine party (when the run requires it).
    fn evidence_committed(&self) -> bool {
        !self.cfg.require_evidence
            || (0..self.cfg.n).filter(|i| self.honest(*i)).all(|i| {
                self.nodes[i].decided.iter().any(|d| {
                    d.block
                        .evidence()
                        .iter()
                        .any(|e| !self.honest((e.first.vote.voter.0 - 1) as usize))
                })
            })
    }

    fn all_decided(&self) -> bool {
        self.batches_decided() && self.evidence_committed()
    }

    fn batches_decided(&self) -> bool {
        let total = self
            .submitted
            .values()
            .filter(|b| self.honest((b.body.author.0 - 1) as usize))
            .count();
        self.to_submit == 0
            && (0..self.cfg.n).filter(|i| self.honest(*i)).all(|i| {
                self.nodes[i].driver.is_some()
                    && self.nodes[i]
                        .decided
                        .iter()
                        .map(|d| {
                            d.block
                                .batches()
                                .iter()
                                .filter(|b| self.honest((b.body.author.0 - 1) as usize))
                                .count()
                        })
                        .sum::<usize>()
                        >= total
            })
    }
}

/// A verdict of `author` on a (simulated) operation named by the batch
/// and the index.
fn sim_verdict(author: PartyId, seq: u64, k: usize, decision: Decision) -> Vec<u8> {
    Operation {
        author,
        body: OpBody::Verdict(crate::sessions::ops::VerdictOp {
            target: crate::sessions::ops::OpId(Sha256Digest::of_parts(&[
                b"quorate-sim-target",
                &author.0.to_be_bytes(),
                &seq.to_be_bytes(),
                &(k as u64).to_be_bytes(),
            ])),
            decision,
        }),
    }
    .encode()
}

/// `v` with the other value (nil for a block, a made-up block for nil),
/// signed with its voter's key: what an equivocator sends.
fn conflicting_vote(v: &SignedVoteWire) -> SignedVoteWire {
    let mut c = v.vote.clone();
    c.value = match c.value {
        NilOrVal::Nil => NilOrVal::Val(crate::consensus::BlockHash(Sha256Digest::of(
            b"other block",
        ))),
        NilOrVal::Val(_) => NilOrVal::Nil,
    };
    let ctx = crate::consensus::context::QuorateContext {
        cluster: cluster(),
        epoch: Epoch(0),
    };
    let signature = sign_as(c.voter, &c.signed_bytes(&ctx).encode());
    SignedVoteWire { vote: c, signature }
}

/// A valid encoded operation of `author` (validators refuse batches whose
/// operations do not decode): a session message whose broadcast part,
/// `bytes` long, names the batch and the index.
pub fn sim_op(author: PartyId, seq: u64, k: usize, bytes: usize) -> Vec<u8> {
    use crate::sessions::ops::{Blob, SessionId, SessionMessage};
    let mut payload = vec![0u8; bytes.max(16)];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload[8..16].copy_from_slice(&(k as u64).to_be_bytes());
    Operation {
        author,
        body: OpBody::SessionMessage(SessionMessage {
            session: SessionId(Sha256Digest::of(b"quorate-sim-session")),
            // One slot per operation, as a correct party's are.
            round: u32::try_from(seq.saturating_mul(4096).saturating_add(k as u64))
                .unwrap_or(u32::MAX),
            broadcast: Some(Blob(payload)),
            direct: Vec::new(),
        }),
    }
    .encode()
}

fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var("QUORATE_SIM_TRACE").is_ok())
}

fn summarize(m: &PeerMessage) -> String {
    match m {
        PeerMessage::Proposal(p) => format!(
            "Proposal h={} r={} block={} pol={}",
            p.proposal.height,
            p.proposal.round,
            p.proposal.block.hash(),
            p.proposal.pol_round
        ),
        PeerMessage::Vote(v) => format!(
            "{:?} h={} r={} {:?} by {}",
            v.vote.step(),
            v.vote.height,
            v.vote.round,
            v.vote.value_opt().map(|h| h.to_string()),
            v.vote.voter
        ),
        PeerMessage::Polka(c) => format!("Polka h={} r={}", c.height, c.round),
        PeerMessage::RoundCert(c) => {
            format!("RoundCert h={} r={} skip={}", c.height, c.round, c.skip)
        }
        PeerMessage::Batch(b) => format!("Batch {}#{}", b.body.author, b.body.seq),
        PeerMessage::Tip { height } => format!("Tip {height}"),
        PeerMessage::BlockRequest { height } => format!("BlockRequest {height}"),
        PeerMessage::BlockResponse { block, .. } => {
            format!("BlockResponse {}", block.header().height)
        }
    }
}

/// Runs one simulation; `Err` describes the violated property.
pub fn run(cfg: SimConfig) -> Result<SimReport, String> {
    let n = cfg.n;
    let parties = party_set(n);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_5eed_5eed_5eed);
    let dcfg: Vec<DriverConfig> = (0..n)
        .map(|i| {
            let mut c = DriverConfig::new(
                cluster(),
                Epoch(0),
                PartyId(i as u32 + 1),
                parties.clone(),
                cfg.model,
            );
            c.max_block_bytes = 256 * 1024;
            c.app_state = true;
            // Every other seed keeps only 2 blocks in memory, so catch-up
            // after a crash or partition is served from the store.
            if cfg.seed % 2 == 1 {
                c.recent_blocks = 2;
            }
            c
        })
        .collect();
    let nodes = (0..n)
        .map(|i| Node {
            driver: None,
            inc: 0,
            store: Store::default(),
            byz: cfg.byzantine.iter().find(|(b, _)| *b == i).map(|(_, k)| *k),
            crash_mid_step: false,
            next_seq: 0,
            decided: Vec::new(),
            app: SimLog::default(),
            byz_batches: BTreeMap::new(),
        })
        .collect();
    let mut last_fault_end = 0;
    if let Some((_, e, _)) = &cfg.partition {
        last_fault_end = last_fault_end.max(*e);
    }
    if let Some((_, _, r)) = &cfg.crash {
        last_fault_end = last_fault_end.max(*r);
    }
    let seed2 = rng.next_u64();
    let mut sim = Sim {
        rng: ChaCha8Rng::seed_from_u64(seed2),
        cfg: cfg.clone(),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        next_ev: 0,
        nodes,
        parties,
        dcfg,
        submitted: HashMap::new(),
        submitted_at: HashMap::new(),
        to_submit: cfg.batches,
        agreed: BTreeMap::new(),
        signed: HashMap::new(),
        framer_seen: HashMap::new(),
        report: SimReport::default(),
        last_fault_end,
    };
    for i in 0..n {
        sim.restore(i)?;
    }
    let honest: Vec<usize> = (0..n).filter(|i| sim.honest(*i)).collect();
    if cfg.sequential {
        if cfg.batches > 0 {
            sim.push(0, Ev::Submit { node: 0 });
        }
    } else {
        for _ in 0..cfg.batches {
            let at = rng.random_range(0..3000);
            let node = honest[rng.random_range(0..honest.len())];
            sim.last_fault_end = sim.last_fault_end.max(at);
            sim.push(at, Ev::Submit { node });
        }
    }
    if let Some((p, at, back)) = cfg.crash {
        sim.push(at, Ev::Crash { node: p });
        sim.push(back, Ev::Restart { node: p });
    }
    let deadline = sim.last_fault_end + cfg.liveness_bound_ms;
    let mut idle: Option<(u64, Option<u64>)> = None;
    while let Some(Reverse((at, _, id))) = sim.queue.pop() {
        if at > deadline {
            break;
        }
        sim.now = at;
        let Some(ev) = sim.events.remove(&id) else {
            continue;
        };
        match ev {
            Ev::Deliver { to, from, bytes } => {
                if trace() {
                    let m = PeerMessage::decode(&bytes, usize::MAX)
                        .map(|m| summarize(&m))
                        .unwrap_or_else(|_| "garbage".into());
                    eprintln!("{at:>7} P{}->P{} {m}", from + 1, to + 1);
                }
                if sim.nodes[to].byz == Some(Byzantine::Framer) {
                    sim.framer_receives(to, &bytes)?;
                }
                if sim.nodes[to].driver.is_some() {
                    sim.handle(
                        to,
                        Input::Peer {
                            from: PartyId(from as u32 + 1),
                            bytes,
                        },
                    )?;
                }
            }
            Ev::Timer { node, inc, id } => {
                if sim.nodes[node].inc == inc {
                    sim.handle(node, Input::TimeoutFired(id))?;
                }
            }
            Ev::Sign {
                node,
                inc,
                request,
                bytes,
            } => {
                if sim.nodes[node].inc == inc && sim.nodes[node].driver.is_some() {
                    if sim.honest(node) {
                        let sb: SignedBytes = postcard::from_bytes(&bytes).map_err(|e| {
                            format!("P{} asked to sign non-consensus bytes: {e}", node + 1)
                        })?;
                        let key = (node, sb.height, sb.round, sb.step);
                        let dg = Sha256Digest::of(&bytes);
                        match sim.signed.get(&key) {
                            Some(prev) if *prev != dg => {
                                return Err(format!(
                                    "P{} signed two different {:?} at height {} round {}",
                                    node + 1,
                                    sb.step,
                                    sb.height,
                                    sb.round
                                ))
                            }
                            _ => {
                                sim.signed.insert(key, dg);
                            }
                        }
                        sim.report.signatures += 1;
                    }
                    let signature = sign_as(PartyId(node as u32 + 1), &bytes);
                    sim.handle(node, Input::SignatureReady { request, signature })?;
                }
            }
            Ev::Submit { node } => {
                if sim.nodes[node].driver.is_some() {
                    sim.to_submit -= 1;
                    sim.submit(node)?;
                } else {
                    sim.push(at + 100, Ev::Submit { node });
                }
            }
            Ev::Retry { node } => sim.retry(node)?,
            Ev::Crash { node } => {
                if sim.rng.random_bool(0.5) {
                    sim.nodes[node].driver = None;
                    sim.nodes[node].inc += 1;
                } else {
                    // Crash during the next step this node makes durable.
                    sim.nodes[node].crash_mid_step = true;
                }
            }
            Ev::Restart { node } => {
                if sim.nodes[node].crash_mid_step || sim.nodes[node].driver.is_some() {
                    sim.nodes[node].crash_mid_step = false;
                    sim.nodes[node].driver = None;
                    sim.nodes[node].inc += 1;
                }
                sim.restore(node)?;
            }
        }
        if sim.now >= sim.last_fault_end && sim.all_decided() {
            let Some(tail) = cfg.idle_tail_ms else { break };
            // Carriers for the last entries may follow: watch after a grace.
            match idle {
                None => idle = Some((sim.now + 10_000, None)),
                Some((start, None)) if sim.now >= start => {
                    idle = Some((start, Some(sim.report.signatures)))
                }
                Some((start, Some(signed))) => {
                    if sim.report.signatures != signed {
                        return Err(format!(
                            "idle violated: with nothing left to decide, correct parties signed {} messages at {} ms",
                            sim.report.signatures - signed,
                            sim.now
                        ));
                    }
                    if sim.now >= start + tail {
                        break;
                    }
                }
                Some(_) => {}
            }
        }
    }
    if sim.batches_decided() && !sim.evidence_committed() {
        let missing: Vec<String> = (0..n)
            .filter(|i| sim.honest(*i))
            .filter(|i| {
                sim.nodes[*i]
                    .decided
                    .iter()
                    .all(|d| d.block.evidence().is_empty())
            })
            .map(|i| format!("P{}", i + 1))
            .collect();
        return Err(format!(
            "evidence violated: {} decided no equivocation evidence against the equivocator within {} ms after the last fault",
            missing.join(", "),
            cfg.liveness_bound_ms
        ));
    }
    if !sim.all_decided() {
        let progress: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "P{}:{}{} [{}]",
                    i + 1,
                    sim.nodes[i].decided.len(),
                    if sim.honest(i) { "" } else { "(byz)" },
                    sim.nodes[i]
                        .driver
                        .as_ref()
                        .map(|d| d.debug_summary())
                        .unwrap_or_default()
                )
            })
            .collect();
        return Err(format!(
            "liveness violated: not every submitted batch was decided by every honest party within {} ms after the last fault (decided heights {})",
            cfg.liveness_bound_ms,
            progress.join(" ")
        ));
    }
    sim.report.heights = (0..n)
        .filter(|i| sim.honest(*i))
        .map(|i| sim.nodes[i].decided.len() as u64)
        .min()
        .unwrap_or(0);
    sim.report.verifications = sim
        .nodes
        .iter()
        .filter_map(|x| x.driver.as_ref())
        .map(|d| d.verifications())
        .sum();
    sim.report.votes_relayed = sim
        .nodes
        .iter()
        .filter(|x| x.byz.is_none())
        .filter_map(|x| x.driver.as_ref())
        .map(|d| d.votes_relayed())
        .sum();
    sim.report.sim_ms = sim.now;
    for (i, node) in sim.nodes.iter().enumerate() {
        if let Some(d) = &node.driver {
            if node.byz.is_none() && d.sign_refusals() > 0 {
                return Err(format!(
                    "P{} had its sign guard refuse {} requests",
                    i + 1,
                    d.sign_refusals()
                ));
            }
        }
    }
    Ok(sim.report)
}

/// Runs `seed`, turning a failure into a message with its reproduction command.
pub fn run_seed(seed: u64) -> Result<SimReport, String> {
    let cfg = SimConfig::from_seed(seed);
    let desc = format!("{cfg:?}");
    run(cfg).map_err(|e| {
        format!(
            "seed {seed} failed: {e}\n  config: {desc}\n  reproduce: {}",
            repro(seed)
        )
    })
}
