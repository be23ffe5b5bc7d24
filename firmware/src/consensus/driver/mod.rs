//! The consensus driver: one sans-IO state machine, shared by the host and the
//! simulator, that runs malachite's core for one party.
//!
//! # Inputs and outputs
//! The host calls [`ConsensusDriver::handle`] with the current time and one
//! [`Input`] (peer bytes, a fired timeout, a signature from the TPM, a
//! submitted batch, or a plain tick). It gets back a [`Step`]:
//!
//! * `step.persist`: records the host must make **durable, in order, before
//!   it carries out any of `step.actions`** (WAL records, the sign-guard
//!   state, decided blocks with their certificate and chain state);
//! * `step.actions`: sends, broadcasts, timers to (re)arm or cancel, signing
//!   requests for the TPM, and decided blocks for the application.
//!
//! That one barrier is the whole persistence contract: a vote leaves only
//! after the WAL record that holds it is durable; a signature is requested
//! only after the sign guard that allowed it is durable; a decided block is
//! handed to the application only after it is stored with its certificate.
//!
//! # Asynchronous signing
//! malachite's core asks for a signature synchronously (`SignVote`,
//! `SignProposal`). A TPM takes ~200 ms, and nothing else may wait for it.
//! So the driver answers the core at once with a *placeholder* signature
//! (all zero: never a valid ECDSA signature), emits [`Action::Sign`], and
//! holds back every outgoing message that carries the placeholder. When
//! [`Input::SignatureReady`] arrives the real signature is logged to the WAL
//! and substituted into held messages, certificates and rebroadcasts. The
//! core accepts the placeholder only for messages this driver itself asked
//! to sign.

use crate::batch::SignedBatch;
use crate::consensus::certificate::{
    canonical_equivocation, from_malachite, precommit_bytes, to_malachite_extended,
    verify_commit_certificate_cached, CommitCertificate, VerifyCache,
};
use crate::consensus::context::{
    round_from_i64, round_i64, threshold_params, Block, BlockHash, Equivocation, LogHead, PartySet,
    QuorateContext, SignedVoteWire, Step as MsgStep,
};
use crate::consensus::sign_guard::{SignGuard, SignGuardError};
use crate::consensus::sync::{peer_id_of, CatchUp, ServeBudget};
use crate::consensus::wire::{
    input_of_wal_record, polka_to_mc, proposal_to_mc, round_cert_to_mc, vote_to_mc, DecodeError,
    PeerMessage, SignedProposalWire, WalRecord,
};
use crate::crypto::Signature;
use crate::types::{ClusterId, Epoch, FaultModel, Height, PartyId, Sha256Digest};
use malachitebft_core_consensus as mcc;
use malachitebft_core_consensus::Resume;
use malachitebft_core_types as mc;
use malachitebft_core_types::{Round, Timeout};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

mod effects;
mod mempool;
mod signing;
pub mod validate;

#[cfg(test)]
mod testkit;

pub use mempool::{
    BadBatch, MAX_PENDING_PER_AUTHOR, MAX_POOL_BYTES, MAX_POOL_BYTES_PER_AUTHOR, PARK_TIMEOUT_MS,
};
pub use signing::PLACEHOLDER;
pub use validate::{InvalidBlock, BLOCK_TIME_AHEAD_MS, BLOCK_TIME_BEHIND_MS, MAX_OPS_PER_BLOCK};

type Ctx = QuorateContext;

/// Static configuration of one party's driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The cluster.
    pub cluster: ClusterId,
    /// The membership epoch.
    pub epoch: Epoch,
    /// This party.
    pub me: PartyId,
    /// The parties and their vote keys.
    pub parties: PartySet,
    /// Which quorum.
    pub fault_model: FaultModel,
    /// Largest encoded block a proposer builds or a party accepts.
    pub max_block_bytes: usize,
    /// Round timeouts.
    pub timeouts: mc::LinearTimeouts,
    /// How often to announce our tip and re-gossip our pending batches.
    pub tip_interval_ms: u64,
    /// How far a fresh proposal's block time may be ahead of our clock, in
    /// ms; default [`BLOCK_TIME_AHEAD_MS`]. With `block_time_behind_ms`
    /// it bounds how far a Byzantine proposer can move block time, and so
    /// every deadline (`docs/PROTOCOL.md` section 4).
    pub block_time_ahead_ms: u64,
    /// How far a fresh proposal's block time may be behind our clock when
    /// it arrives, in ms; default [`BLOCK_TIME_BEHIND_MS`]. Must cover the
    /// honest proposers' clock skew plus a proposal's age on arrival
    /// (signing, delivery, a rebroadcast after a loss).
    pub block_time_behind_ms: u64,
    /// How many recent decided blocks to keep in memory to serve catch-up.
    pub recent_blocks: usize,
    /// Block requests answered per peer per second once its burst is
    /// spent; default [`crate::consensus::sync::BLOCK_SERVE_PER_SEC`].
    /// Requests beyond it are dropped (a peer re-asks).
    pub block_serve_per_sec: u32,
    /// Block requests a peer may have answered back to back; default
    /// [`crate::consensus::sync::BLOCK_SERVE_BURST`].
    pub block_serve_burst: u32,
    /// The host keeps the audit log: after every [`Action::Decided`] the
    /// driver waits for [`ConsensusDriver::set_app_state`] before it starts
    /// the next height (proposals and blocks for it are held until then).
    /// Without it, blocks carry whatever head was last set (the simulator
    /// sets it itself or not at all).
    pub app_state: bool,
    /// Most bytes of undecided batches kept per author (never less than
    /// `max_block_bytes`); default [`MAX_POOL_BYTES_PER_AUTHOR`].
    pub max_pool_bytes_per_author: usize,
    /// Most bytes of undecided batches kept in all; default
    /// [`MAX_POOL_BYTES`].
    pub max_pool_bytes: usize,
    /// How long a batch whose predecessor is missing is kept, in ms;
    /// default [`PARK_TIMEOUT_MS`].
    pub park_timeout_ms: u64,
}

impl DriverConfig {
    /// A configuration with default limits (1 MiB blocks, 1 s base timeouts).
    pub fn new(
        cluster: ClusterId,
        epoch: Epoch,
        me: PartyId,
        parties: PartySet,
        fault_model: FaultModel,
    ) -> Self {
        use std::time::Duration;
        DriverConfig {
            cluster,
            epoch,
            me,
            parties,
            fault_model,
            max_block_bytes: 1 << 20,
            timeouts: mc::LinearTimeouts {
                propose: Duration::from_millis(1000),
                propose_delta: Duration::from_millis(500),
                prevote: Duration::from_millis(500),
                prevote_delta: Duration::from_millis(250),
                precommit: Duration::from_millis(500),
                precommit_delta: Duration::from_millis(250),
                rebroadcast: Duration::from_millis(2000),
                max_timeout: Duration::from_secs(30),
            },
            tip_interval_ms: 1000,
            block_time_ahead_ms: BLOCK_TIME_AHEAD_MS,
            block_time_behind_ms: BLOCK_TIME_BEHIND_MS,
            recent_blocks: 1024,
            block_serve_per_sec: crate::consensus::sync::BLOCK_SERVE_PER_SEC,
            block_serve_burst: crate::consensus::sync::BLOCK_SERVE_BURST,
            app_state: false,
            max_pool_bytes_per_author: MAX_POOL_BYTES_PER_AUTHOR,
            max_pool_bytes: MAX_POOL_BYTES,
            park_timeout_ms: PARK_TIMEOUT_MS,
        }
    }

    fn max_message_bytes(&self) -> usize {
        self.max_block_bytes
            .saturating_mul(2)
            .saturating_add(64 * 1024)
    }
}

/// The replicated chain state after the last decided block; persisted with
/// every decided block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    /// Last decided height (0 = none).
    pub height: Height,
    /// Its hash (all zero at height 0).
    pub hash: BlockHash,
    /// Its time.
    pub time_ms: u64,
    /// Highest decided batch sequence number per author.
    pub last_seq: BTreeMap<PartyId, u64>,
    /// Equivocations already recorded in the chain.
    pub evidence: BTreeSet<(PartyId, Height, i64, MsgStep)>,
}

/// A decided block with the certificate that proves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedBlock {
    /// The block (height and time in its header, batches in order).
    pub block: Block,
    /// The quorum of precommits for it.
    pub certificate: CommitCertificate,
}

/// The recent decided blocks kept in memory are also bounded in bytes (of
/// their encoded blocks): under load a block carries thousands of
/// operations, and `recent_blocks` of them would be hundreds of MiB. Older
/// blocks are served from the store.
pub const RECENT_BLOCKS_BYTES: usize = 16 * 1024 * 1024;

/// True when `recent` holds more than one block and more than
/// [`RECENT_BLOCKS_BYTES`].
fn over_bytes(recent: &VecDeque<DecidedBlock>) -> bool {
    recent.len() > 1
        && recent
            .iter()
            .map(|d| d.block.encoded_len())
            .fold(0usize, usize::saturating_add)
            > RECENT_BLOCKS_BYTES
}

/// An opaque timer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub u64);

/// An opaque signing request id, echoed back in [`Input::SignatureReady`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignRequestId(pub Sha256Digest);

/// What the driver reacts to.
#[derive(Clone, Debug)]
pub enum Input {
    /// Bytes from a peer (authenticated transport tells who sent them).
    Peer {
        /// The sender.
        from: PartyId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// A timer scheduled by [`Action::ScheduleTimeout`] fired.
    TimeoutFired(TimerId),
    /// The TPM produced the signature asked for by [`Action::Sign`].
    SignatureReady {
        /// The request.
        request: SignRequestId,
        /// The signature (r||s).
        signature: Signature,
    },
    /// The local application submits a batch it signed with this party's key.
    SubmitBatch(SignedBatch),
    /// Only the time moved.
    Tick,
}

/// A record to make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Append to the write-ahead log of height `height`.
    WalAppend {
        /// The height in progress.
        height: Height,
        /// The record.
        record: WalRecord,
    },
    /// Discard every WAL record of heights below `height`.
    WalReset {
        /// The new height in progress.
        height: Height,
    },
    /// Overwrite the stored sign-guard state.
    SignGuard(SignGuard),
    /// Store a decided block, its certificate and the chain state after it.
    Decided {
        /// Block and certificate.
        decided: DecidedBlock,
        /// Chain state after applying it.
        chain: ChainState,
    },
}

/// Something the host does once `persist` is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send bytes to one peer.
    Send {
        /// The peer.
        to: PartyId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Send bytes to every other party.
    Broadcast {
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Arm a timer (replaces nothing: ids are unique).
    ScheduleTimeout {
        /// Its id.
        id: TimerId,
        /// Delay.
        after_ms: u64,
    },
    /// Disarm a timer (it may already have fired: a late fire is ignored).
    CancelTimeout {
        /// Its id.
        id: TimerId,
    },
    /// Sign `bytes` with the vote key; answer with [`Input::SignatureReady`].
    Sign {
        /// Request id.
        request: SignRequestId,
        /// The exact bytes to sign (ECDSA P-256 over SHA-256 of them).
        bytes: Vec<u8>,
    },
    /// A block was decided: apply it (height, time, batches) in order.
    Decided(Box<DecidedBlock>),
    /// A peer asked for decided block `height`, older than the blocks kept
    /// in memory ([`DriverConfig::recent_blocks`]): read it and its commit
    /// certificate from the store and send `to` the
    /// [`block_response_frame`]. The request was rationed like any other
    /// (one store read per answer the peer's budget allows).
    ServeStored {
        /// The peer.
        to: PartyId,
        /// The decided height (at least 1, at most our chain's height).
        height: Height,
    },
}

/// The frame that answers a block request with a decided block and its
/// commit certificate (what [`Action::ServeStored`] sends).
pub fn block_response_frame(block: Block, certificate: CommitCertificate) -> Vec<u8> {
    PeerMessage::BlockResponse { block, certificate }.encode()
}

/// The outputs of one input. Contract: make every `persist` entry durable
/// in order, then carry out `actions` in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Records to make durable first.
    pub persist: Vec<Persist>,
    /// Actions to carry out after.
    pub actions: Vec<Action>,
    /// What peers (or the local application) sent that was refused, for
    /// the host's log and metrics: diagnostics, nothing to carry out.
    pub faults: Vec<PeerFault>,
}

/// What a peer (or the local application) sent that the driver refused.
/// The input is dropped and the driver goes on: these are diagnostics in
/// [`Step::faults`], never an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFault {
    /// The frame did not decode.
    #[error("dropping a frame from {from}: {error}")]
    Decode {
        /// The sender.
        from: PartyId,
        /// Why.
        error: DecodeError,
    },
    /// The sender is not a member (or is ourselves).
    #[error("frame from {0}, which is not a peer in this cluster")]
    UnknownPeer(PartyId),
    /// A signature in the message does not verify.
    #[error("message from {0} carries a signature that does not verify")]
    BadSignature(PartyId),
    /// A proposed or fetched block is invalid: it is never fed to the core
    /// (for a proposal, this party prevotes nil).
    #[error("invalid block from {from}: {reason}")]
    InvalidBlock {
        /// The sender.
        from: PartyId,
        /// Why.
        reason: InvalidBlock,
    },
    /// A batch was refused (`from` is this party for a local submission).
    #[error("batch from {from} refused: {reason}")]
    BadBatch {
        /// The peer that sent it, or this party.
        from: PartyId,
        /// Why.
        reason: BadBatch,
    },
}

/// What went wrong locally: the input could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The TPM returned a signature that does not verify under our key, or
    /// answered a request we did not make.
    #[error("signature from the TPM refused: {0}")]
    BadLocalSignature(String),
    /// The core stopped (e.g. WAL replay diverged). Halt and investigate.
    #[error("consensus core halted: {0}; do not restart without investigating")]
    Halted(String),
    /// Persisted state does not decode.
    #[error("persisted consensus state is corrupt: {0}")]
    Corrupt(String),
}

/// Why an input stopped short inside the driver: a peer's fault (reported
/// in the step) or a local one (returned).
#[derive(Debug)]
enum Refusal {
    Peer(PeerFault),
    Local(DriverError),
}

impl From<PeerFault> for Refusal {
    fn from(f: PeerFault) -> Self {
        Refusal::Peer(f)
    }
}

impl From<DriverError> for Refusal {
    fn from(e: DriverError) -> Self {
        Refusal::Local(e)
    }
}

/// What the host restores on restart (everything it was told to persist).
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// The chain state stored with the last decided block.
    pub chain: ChainState,
    /// The most recent decided blocks (ascending), to serve catch-up.
    pub recent: Vec<DecidedBlock>,
    /// The sign guard.
    pub sign_guard: SignGuard,
    /// The WAL records of height `chain.height + 1`, in append order.
    pub wal: Vec<WalRecord>,
    /// The audit log's head after the host processed the last decided
    /// block (see [`ConsensusDriver::set_app_state`]).
    pub log_head: LogHead,
    /// Whether the last decided block's entries await its canonical
    /// certificate (the next block must be decided, even empty).
    pub log_pending: bool,
}

#[derive(Clone, Debug)]
struct OwnMessage {
    bytes: Vec<u8>,
    height: Height,
    signature: Option<Signature>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    Core(Timeout),
    Tip,
}

/// Everything but the core state: the effect handler works on this while
/// `process!` holds the core.
struct Io {
    cfg: DriverConfig,
    ctx: Ctx,
    /// The host's clock, never going back (`max` of every reading): what
    /// timers, parking and deadlines are measured on.
    now: u64,
    /// The host's last clock reading as given: what block time is built
    /// from and proposals are checked against. Not sticky, so that a clock
    /// stepped back after running ahead is believed at once (a sticky
    /// reading would keep this party refusing honest proposals as stale,
    /// and proposing times others refuse, until real time caught up).
    clock: u64,
    step: Step,
    guard: SignGuard,
    cache: VerifyCache,
    own: HashMap<Sha256Digest, OwnMessage>,
    held: Vec<(Sha256Digest, PeerMessage)>,
    timers: BTreeMap<TimerId, TimerKind>,
    next_timer: u64,
    queue: VecDeque<mcc::Input<Ctx>>,
    want_value: Option<(Height, Round)>,
    finalized: Option<mc::CommitCertificate<Ctx>>,
    height_in_progress: Height,
    signatures_requested: u64,
    step_errors: u64,
    sign_refusals: u64,
    /// Why the guard refused, since the host last asked (at most
    /// [`signing::MAX_REFUSALS_KEPT`]; the count above is exact).
    refused: Vec<SignGuardError>,
    own_proposal: Option<SignedProposalWire>,
}

/// One party's consensus driver.
pub struct ConsensusDriver {
    core: mcc::State<Ctx>,
    io: Io,
    chain: ChainState,
    started: bool,
    pending_decision: Option<(Block, mc::CommitCertificate<Ctx>)>,
    mempool: mempool::Mempool,
    evidence_pool: BTreeMap<(PartyId, Height, i64, MsgStep), Equivocation>,
    /// The first vote seen of each (voter, height, round, precommit), for
    /// the height in progress and the one decided last (a conflicting vote
    /// relayed by a peer may arrive after we decided): what equivocation
    /// evidence and the vote relay are built from.
    vote_log: HashMap<(PartyId, Height, i64, bool), SignedVoteWire>,
    /// The round the last decided height was decided in (bounds the
    /// rounds of its late votes kept in `vote_log`).
    decided_round: i64,
    /// Peer votes relayed to the other peers (see [`ConsensusDriver::relay_vote`]).
    votes_relayed: u64,
    recent: VecDeque<DecidedBlock>,
    /// Proposals for a later height (or held while the host applies a
    /// block), with our clock when each arrived: their time is checked
    /// against that, as if they were handled on arrival.
    future_proposals: Vec<(SignedProposalWire, u64)>,
    recovered_proposals: BTreeMap<(Height, i64), Block>,
    catch_up: CatchUp,
    /// Block responses still allowed per peer.
    serve: ServeBudget,
    halted: Option<String>,
    /// Audit log head after the last decided block (carried by the next).
    log_head: LogHead,
    /// The last decided block's entries await its certificate.
    log_pending: bool,
    /// A block was decided and the host has not yet said what it did to
    /// the log: hold the next height.
    awaiting_app: bool,
    /// The application's next time-driven deadline (block time, ms): see
    /// [`ConsensusDriver::set_wake_at`].
    wake_at: Option<u64>,
}

impl ConsensusDriver {
    /// A fresh driver (no history). Returns the first step (timers to arm).
    pub fn new(cfg: DriverConfig, now_ms: u64) -> (Self, Step) {
        Self::restore(cfg, Restored::default(), now_ms).unwrap_or_else(|_| unreachable_restore())
    }

    /// Restarts a driver from what the host persisted. Replays the WAL of the
    /// height in progress (re-using recorded signed messages, never signing
    /// anew what was signed before).
    pub fn restore(
        cfg: DriverConfig,
        restored: Restored,
        now_ms: u64,
    ) -> Result<(Self, Step), DriverError> {
        let ctx = QuorateContext {
            cluster: cfg.cluster,
            epoch: cfg.epoch,
        };
        let next = Height(restored.chain.height.0 + 1);
        let params = mcc::Params {
            address: cfg.me,
            threshold_params: threshold_params(cfg.fault_model, cfg.parties.len()),
            value_payload: mc::ValuePayload::ProposalOnly,
            enabled: true,
        };
        let core = mcc::State::new(ctx.clone(), next, cfg.parties.clone(), params, 4096, 1024);
        let recent_cap = cfg.recent_blocks;
        let serve = ServeBudget::new(cfg.block_serve_per_sec, cfg.block_serve_burst);
        let mut d = ConsensusDriver {
            core,
            io: Io {
                cfg,
                ctx,
                now: now_ms,
                clock: now_ms,
                step: Step::default(),
                guard: restored.sign_guard,
                cache: VerifyCache::default(),
                own: HashMap::new(),
                held: Vec::new(),
                timers: BTreeMap::new(),
                next_timer: 1,
                queue: VecDeque::new(),
                want_value: None,
                finalized: None,
                height_in_progress: next,
                signatures_requested: 0,
                step_errors: 0,
                sign_refusals: 0,
                refused: Vec::new(),
                own_proposal: None,
            },
            chain: restored.chain,
            started: false,
            pending_decision: None,
            mempool: mempool::Mempool::default(),
            evidence_pool: BTreeMap::new(),
            vote_log: HashMap::new(),
            decided_round: 0,
            votes_relayed: 0,
            recent: restored.recent.into_iter().collect(),
            future_proposals: Vec::new(),
            recovered_proposals: BTreeMap::new(),
            catch_up: CatchUp::default(),
            serve,
            halted: None,
            log_head: restored.log_head,
            log_pending: restored.log_pending,
            awaiting_app: false,
            wake_at: None,
        };
        while d.recent.len() > recent_cap || over_bytes(&d.recent) {
            d.recent.pop_front();
        }
        d.io.schedule(TimerKind::Tip, d.io.cfg.tip_interval_ms);
        if !restored.wal.is_empty() {
            match d.replay_wal(&restored.wal) {
                Ok(()) => {}
                Err(Refusal::Local(e)) => return Err(e),
                // Replay feeds only our own records to the core.
                Err(Refusal::Peer(f)) => d.io.step.faults.push(f),
            }
        }
        let step = std::mem::take(&mut d.io.step);
        Ok((d, step))
    }

    fn replay_wal(&mut self, wal: &[WalRecord]) -> Result<(), Refusal> {
        let me = self.io.cfg.me;
        // Our own signatures recorded after the messages they belong to.
        for r in wal {
            if let WalRecord::OwnSignature { digest, signature } = r {
                self.io.own.insert(
                    *digest,
                    OwnMessage {
                        bytes: Vec::new(),
                        height: self.io.height_in_progress,
                        signature: Some(*signature),
                    },
                );
            }
        }
        // Our own messages recorded with the placeholder: the core will accept
        // them as ours; any that lack a real signature get signed again (the
        // sign guard allows re-signing the very same message).
        let inputs: Vec<mcc::Input<Ctx>> = wal.iter().filter_map(input_of_wal_record).collect();
        // Blocks we proposed before the crash: if the core asks us again for
        // a value at the same (height, round), we must propose the very same
        // block (the sign guard would refuse any other).
        for r in wal {
            if let WalRecord::ProposedValue {
                height,
                round,
                proposer,
                block,
                ..
            } = r
            {
                if *proposer == me {
                    self.recovered_proposals
                        .insert((*height, *round), block.clone());
                }
            }
        }
        // In WAL order, so that the sign requests below come out in a
        // deterministic order.
        let mut own_order: Vec<Sha256Digest> = Vec::new();
        for r in wal {
            let sb = match r {
                WalRecord::Vote(v) if v.vote.voter == me => Some(v.vote.signed_bytes(&self.io.ctx)),
                WalRecord::Proposal(p) if p.proposal.proposer == me => {
                    Some(p.proposal.signed_bytes(&self.io.ctx))
                }
                _ => None,
            };
            if let Some(sb) = sb {
                let bytes = sb.encode();
                let digest = Sha256Digest::of(&bytes);
                let e = self.io.own.entry(digest).or_insert(OwnMessage {
                    bytes: Vec::new(),
                    height: sb.height,
                    signature: None,
                });
                e.bytes = bytes;
                if !own_order.contains(&digest) {
                    own_order.push(digest);
                }
            }
        }
        let pending: Vec<(Sha256Digest, Vec<u8>)> = own_order
            .iter()
            .filter_map(|d| self.io.own.get(d).map(|m| (*d, m)))
            .filter(|(_, m)| m.signature.is_none() && !m.bytes.is_empty())
            .map(|(d, m)| (d, m.bytes.clone()))
            .collect();
        for (d, bytes) in pending {
            self.io.signatures_requested += 1;
            self.io.step.actions.push(Action::Sign {
                request: SignRequestId(d),
                bytes,
            });
        }
        self.start_height_now();
        self.core.index_wal_entries(inputs.iter());
        for input in inputs {
            self.run_core(input)?;
        }
        self.core.reset_entries_index();
        Ok(())
    }

    /// The last decided height and hash.
    pub fn chain(&self) -> &ChainState {
        &self.chain
    }

    /// The height in progress.
    pub fn height(&self) -> Height {
        self.io.height_in_progress
    }

    /// True when some peer decided two or more heights past this party's
    /// chain: it is catching up, and what it applies now is history the
    /// rest of the cluster has moved past.
    pub fn far_behind(&self) -> bool {
        self.catch_up
            .peer_ahead(Height(self.chain.height.0.saturating_add(1)))
    }

    /// Number of ECDSA verifications performed so far (cache misses).
    pub fn verifications(&self) -> u64 {
        self.io.cache.verifications
    }

    /// Number of signatures requested so far.
    pub fn signatures_requested(&self) -> u64 {
        self.io.signatures_requested
    }

    /// A one-line summary of the driver's state, for logs and test failures.
    pub fn debug_summary(&self) -> String {
        format!(
            "h={} started={} round={} mempool={} evidence={} want_value={:?} pending_decision={} held={} own_unsigned={} timers={} refusals={} core_errors={}",
            self.io.height_in_progress,
            self.started,
            self.core.round(),
            self.mempool.len(),
            self.evidence_pool.len(),
            self.io.want_value,
            self.pending_decision.is_some(),
            self.io.held.len(),
            self.io.own.values().filter(|m| m.signature.is_none()).count(),
            self.io.timers.len(),
            self.io.sign_refusals,
            self.io.step_errors,
        )
    }

    /// Peer votes relayed to other peers so far (one per peer sent to).
    pub fn votes_relayed(&self) -> u64 {
        self.votes_relayed
    }

    /// How many times the sign guard refused to sign (should stay 0; alert
    /// if not: the WAL or the sign-guard state was lost or rolled back).
    pub fn sign_refusals(&self) -> u64 {
        self.io.sign_refusals
    }

    /// Why the sign guard refused each signature since the last call (for
    /// the host's log line per refusal), oldest first.
    pub fn take_sign_refusals(&mut self) -> Vec<SignGuardError> {
        std::mem::take(&mut self.io.refused)
    }

    /// How many inputs the malachite core refused with an error (dropped).
    pub fn core_errors(&self) -> u64 {
        self.io.step_errors
    }

    /// Block requests left unanswered because their peer had spent its
    /// answer budget ([`DriverConfig::block_serve_per_sec`]), per peer,
    /// since start.
    pub fn block_requests_dropped(&self) -> &BTreeMap<PartyId, u64> {
        self.serve.dropped()
    }

    /// Number of batches ready to be decided (their predecessors are).
    pub fn pending_batches(&self) -> usize {
        self.mempool.ready(&self.chain)
    }

    /// Number of batches parked: their author's previous batch is missing.
    pub fn parked_batches(&self) -> usize {
        self.mempool.len().saturating_sub(self.pending_batches())
    }

    /// Bytes of undecided batches held, ready or parked.
    pub fn pool_bytes(&self) -> usize {
        self.mempool.bytes()
    }

    /// Handles one input at time `now_ms` (milliseconds since the Unix epoch).
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Result<Step, DriverError> {
        if let Some(h) = &self.halted {
            return Err(DriverError::Halted(h.clone()));
        }
        self.io.now = self.io.now.max(now_ms);
        self.io.clock = now_ms;
        let r = self.handle_inner(input);
        let mut step = std::mem::take(&mut self.io.step);
        match r {
            Ok(()) => Ok(step),
            Err(Refusal::Peer(f)) => {
                step.faults.push(f);
                Ok(step)
            }
            Err(Refusal::Local(e @ DriverError::Halted(_))) => {
                self.halted = Some(e.to_string());
                Err(e)
            }
            Err(Refusal::Local(e)) => {
                if step.persist.is_empty() && step.actions.is_empty() {
                    Err(e)
                } else {
                    // Keep what was produced before the error: it must not be lost.
                    Ok(step)
                }
            }
        }
    }

    /// Tells the driver what the last decided block did to the audit log:
    /// its `head` after the host's ledger processed the block, and whether
    /// that block's own entries are `pending` (they await its canonical
    /// certificate, carried by the next block: the driver then proposes a
    /// block even with no other work). With [`DriverConfig::app_state`]
    /// the host must call this after every [`Action::Decided`]; the next
    /// height starts only then. Returns the step that follows (persist,
    /// then act, as for [`ConsensusDriver::handle`]).
    pub fn set_app_state(
        &mut self,
        now_ms: u64,
        head: LogHead,
        pending: bool,
    ) -> Result<Step, DriverError> {
        if let Some(h) = &self.halted {
            return Err(DriverError::Halted(h.clone()));
        }
        self.io.now = self.io.now.max(now_ms);
        self.io.clock = now_ms;
        self.log_head = head;
        self.log_pending = pending;
        self.awaiting_app = false;
        let r = self.after_input();
        let mut step = std::mem::take(&mut self.io.step);
        match r {
            Err(Refusal::Local(e @ DriverError::Halted(_))) => {
                self.halted = Some(e.to_string());
                Err(e)
            }
            Err(Refusal::Peer(f)) => {
                step.faults.push(f);
                Ok(step)
            }
            _ => Ok(step),
        }
    }

    /// Tells the driver the application's next time-driven deadline, in
    /// block time (ms): an approval or session deadline, a round deadline.
    /// Such a deadline takes effect only in a block whose time reaches it,
    /// so once this party's clock reaches `at` the driver starts a height
    /// even with no other work, and an idle cluster still decides the
    /// (possibly empty) block that applies it. `None`: no deadline.
    pub fn set_wake_at(&mut self, at: Option<u64>) {
        self.wake_at = at;
    }

    /// The audit log head the next block must carry.
    pub fn log_head(&self) -> LogHead {
        self.log_head
    }

    fn handle_inner(&mut self, input: Input) -> Result<(), Refusal> {
        match input {
            Input::Tick => {}
            Input::Peer { from, bytes } => self.on_peer(from, &bytes)?,
            Input::TimeoutFired(id) => match self.io.timers.remove(&id) {
                None => {}
                Some(TimerKind::Tip) => self.on_tip_timer()?,
                Some(TimerKind::Core(t)) if self.started => {
                    self.run_core(mcc::Input::TimeoutElapsed(t))?;
                }
                Some(TimerKind::Core(_)) => {}
            },
            Input::SignatureReady { request, signature } => {
                self.on_signature(request, signature)?
            }
            Input::SubmitBatch(b) => {
                let from = self.io.cfg.me;
                self.add_batch(b.clone())
                    .map_err(|reason| PeerFault::BadBatch { from, reason })?;
                self.io.broadcast(&PeerMessage::Batch(b));
            }
        }
        self.after_input()
    }

    /// Work common to every input: start a height when there is work, propose
    /// when asked and able.
    fn after_input(&mut self) -> Result<(), Refusal> {
        // Far behind (a peer decided two or more heights past ours): fetch
        // the next block at once rather than at the next tip, so catch-up
        // runs at network speed. (One height behind usually resolves by
        // consensus itself; the tip timer covers the rest.)
        let far = Height(self.chain.height.0 + 1);
        if self.catch_up.peer_ahead(far) {
            if let Some(p) = self.catch_up.a_peer_ahead_of(far) {
                self.request_block(p);
            }
        }
        self.maybe_start_height()?;
        self.try_propose()?;
        Ok(())
    }

    /// Whether there is something to decide: a ready batch (a parked one,
    /// whose predecessor is missing, is not work), evidence, audit entries
    /// awaiting a carrier block, or an application deadline our clock has
    /// reached ([`ConsensusDriver::set_wake_at`]).
    fn has_work(&self) -> bool {
        self.log_pending
            // The clock block time is built from: a block we build then
            // reaches the deadline, as validators require of an empty one.
            || self.wake_at.is_some_and(|t| self.io.clock >= t)
            || !self.evidence_pool.is_empty()
            || self.mempool.has_ready(&self.chain)
    }

    fn maybe_start_height(&mut self) -> Result<(), Refusal> {
        if self.started || self.pending_decision.is_some() || self.awaiting_app {
            return Ok(());
        }
        // Unsigned tips alone never start a height (they only trigger block
        // requests): a height starts for our own work, or for a signed
        // message of a member at or past it, or for a verified block.
        if self.has_work() || self.catch_up.peer_active_at(self.io.height_in_progress) {
            self.start_height_now();
            self.drain_queue()?;
            // Proposals for this height that arrived early.
            let h = self.io.height_in_progress;
            let early = std::mem::take(&mut self.future_proposals);
            for (p, received_ms) in early {
                if p.proposal.height == h {
                    match self.on_proposal(p.proposal.proposer, p, received_ms) {
                        Ok(()) => {}
                        Err(Refusal::Peer(f)) => self.io.step.faults.push(f),
                        Err(e) => return Err(e),
                    }
                } else if p.proposal.height > h {
                    self.future_proposals.push((p, received_ms));
                }
            }
        }
        Ok(())
    }

    fn start_height_now(&mut self) {
        self.started = true;
        let h = self.io.height_in_progress;
        self.io.queue.push_back(mcc::Input::StartHeight(
            h,
            self.io.cfg.parties.clone(),
            false,
            None,
            mc::VoteExtensionPolicy::Disabled,
        ));
    }

    fn run_core(&mut self, input: mcc::Input<Ctx>) -> Result<(), Refusal> {
        self.io.queue.push_back(input);
        self.drain_queue()
    }

    fn drain_queue(&mut self) -> Result<(), Refusal> {
        while let Some(input) = self.io.queue.pop_front() {
            let io = &mut self.io;
            let core = &mut self.core;
            let r: Result<(), mcc::Error<Ctx>> = mcc::process!(
                input: input,
                state: core,
                metrics: &(),
                with: effect => Ok::<Resume<Ctx>, std::convert::Infallible>(io.on_effect(effect))
            );
            match r {
                Ok(()) => {}
                Err(e @ mcc::Error::ReplayDivergence(..)) => {
                    return Err(DriverError::Halted(format!("{e}")).into());
                }
                Err(e) => {
                    // The core refused this input (e.g. out of order); it
                    // left its state consistent, so drop the input and go on.
                    self.io.step_errors += 1;
                    let _ = e;
                }
            }
            if let Some(cert) = self.io.finalized.take() {
                let block = self.core.decided_value().map(|(_, b)| b);
                match block {
                    Some(b) => self.pending_decision = Some((b, cert)),
                    None => return Err(DriverError::Halted("decided value missing".into()).into()),
                }
                self.try_complete_decision()?;
                // Inputs queued for the finished height are moot.
                self.io.queue.clear();
                return Ok(());
            }
        }
        Ok(())
    }

    fn try_complete_decision(&mut self) -> Result<(), Refusal> {
        let Some((block, mcert)) = self.pending_decision.take() else {
            return Ok(());
        };
        let mut cert = from_malachite(&mcert);
        let me = self.io.cfg.me;
        let mut waiting = false;
        for (party, sig) in cert.signatures.iter_mut() {
            if *party == me && *sig == PLACEHOLDER {
                let bytes = precommit_bytes(
                    self.io.cfg.cluster,
                    self.io.cfg.epoch,
                    cert.height,
                    cert.round,
                    cert.block,
                    me,
                );
                match self
                    .io
                    .own
                    .get(&Sha256Digest::of(&bytes))
                    .and_then(|m| m.signature)
                {
                    Some(s) => *sig = s,
                    None => waiting = true,
                }
            }
        }
        if waiting {
            match self.certificate_without_us(&cert) {
                // The others' precommits are a quorum without ours: decide
                // now (and a party whose signatures are withheld, as by the
                // host's start-up double-sign watch, still follows the
                // chain).
                Some(c) => cert = c,
                None => {
                    // Our own precommit is still at the TPM: finish when it
                    // is back, or when enough of the others' arrive.
                    self.pending_decision = Some((block, mcert));
                    return Ok(());
                }
            }
        }
        let decided = DecidedBlock {
            block,
            certificate: cert,
        };
        self.apply_decided(decided);
        Ok(())
    }

    /// A commit certificate for `cert`'s decision made of the other
    /// parties' precommits only (those in `cert` and those in the vote
    /// log), if they are a quorum by themselves.
    fn certificate_without_us(&mut self, cert: &CommitCertificate) -> Option<CommitCertificate> {
        let me = self.io.cfg.me;
        let mut sigs: BTreeMap<PartyId, Signature> = cert
            .signatures
            .iter()
            .filter(|(p, _)| *p != me)
            .map(|(p, s)| (*p, *s))
            .collect();
        for ((voter, height, round, precommit), v) in &self.vote_log {
            if *voter != me
                && *precommit
                && *round == cert.round
                && *height == cert.height
                && v.vote.value == mc::NilOrVal::Val(cert.block)
            {
                sigs.entry(*voter).or_insert(v.signature);
            }
        }
        let candidate = CommitCertificate {
            height: cert.height,
            round: cert.round,
            block: cert.block,
            signatures: sigs.into_iter().collect(),
        };
        verify_commit_certificate_cached(
            &self.io.cfg.parties,
            self.io.cfg.fault_model,
            self.io.cfg.cluster,
            self.io.cfg.epoch,
            cert.height,
            cert.block,
            &candidate,
            &mut self.io.cache,
        )
        .ok()
        .map(|()| candidate)
    }

    fn apply_decided(&mut self, decided: DecidedBlock) {
        let header = decided.block.header().clone();
        let chain = self.chain.after(&decided.block);
        self.mempool.prune_decided(&chain, &decided.block);
        self.evidence_pool
            .retain(|k, _| !chain.evidence.contains(k));
        // Votes of the height just decided stay, so that a conflicting one
        // relayed late still makes evidence; older ones go.
        self.vote_log.retain(|(_, h, _, _), _| *h == header.height);
        self.decided_round = decided.certificate.round;
        self.recovered_proposals.clear();
        self.chain = chain.clone();
        let next = Height(header.height.0 + 1);
        self.io.height_in_progress = next;
        self.io.own.retain(|_, m| m.height >= next);
        self.io.held.retain(|(d, _)| self.io.own.contains_key(d));
        self.io.want_value = None;
        self.io.cancel_core_timers();
        self.io.step.persist.push(Persist::Decided {
            decided: decided.clone(),
            chain,
        });
        self.io
            .step
            .persist
            .push(Persist::WalReset { height: next });
        self.io
            .step
            .actions
            .push(Action::Decided(Box::new(decided.clone())));
        self.recent.push_back(decided);
        while self.recent.len() > self.io.cfg.recent_blocks || over_bytes(&self.recent) {
            self.recent.pop_front();
        }
        // The same core state moves on with `StartHeight(next)` (fed when
        // there is work); it replays the inputs it buffered for that height.
        self.started = false;
        self.awaiting_app = self.io.cfg.app_state;
    }

    fn on_peer(&mut self, from: PartyId, bytes: &[u8]) -> Result<(), Refusal> {
        if from == self.io.cfg.me || !self.io.cfg.parties.contains(from) {
            return Err(PeerFault::UnknownPeer(from).into());
        }
        let msg = PeerMessage::decode(bytes, self.io.cfg.max_message_bytes())
            .map_err(|error| PeerFault::Decode { from, error })?;
        let h = self.io.height_in_progress;
        match msg {
            PeerMessage::Batch(b) => self
                .add_batch(b)
                .map_err(|reason| PeerFault::BadBatch { from, reason }.into()),
            PeerMessage::Tip { height } => {
                self.catch_up.note_tip(from, height);
                if height >= h {
                    self.request_block(from);
                }
                Ok(())
            }
            PeerMessage::BlockRequest { height } => {
                // Rationed before the lookup: a flood costs a map update each.
                if !self.serve.take(from, self.io.now) {
                    return Ok(());
                }
                if let Some(d) = self.recent_block(height) {
                    let bytes = block_response_frame(d.block.clone(), d.certificate.clone());
                    self.io.step.actions.push(Action::Send { to: from, bytes });
                } else if height.0 >= 1 && height <= self.chain.height {
                    // Decided, but no longer in memory: the host reads it.
                    self.io
                        .step
                        .actions
                        .push(Action::ServeStored { to: from, height });
                }
                Ok(())
            }
            PeerMessage::BlockResponse { block, certificate } => {
                self.on_block_response(from, block, certificate)
            }
            PeerMessage::Vote(v) => {
                let bytes = v.vote.signed_bytes(&self.io.ctx).encode();
                self.io
                    .check_peer_signature(from, v.vote.voter, &bytes, &v.signature)?;
                if v.vote.height < h {
                    // The height just decided: its late votes still count
                    // as evidence (and are relayed), nothing else.
                    if v.vote.height == self.chain.height {
                        self.note_vote(from, &v);
                    }
                    return Ok(());
                }
                if v.vote.height > h {
                    self.catch_up.note_tip(from, Height(v.vote.height.0 - 1));
                    self.catch_up.mark_active(h);
                    self.maybe_start_height()?;
                    return self.run_core(mcc::Input::Vote(vote_to_mc(&v)));
                }
                self.note_vote(from, &v);
                self.catch_up.note_active(from, h);
                if self.pending_decision.is_some() {
                    // Decided, waiting for our own precommit's signature:
                    // the others' may complete the certificate first.
                    return self.try_complete_decision();
                }
                self.maybe_start_height()?;
                self.run_core(mcc::Input::Vote(vote_to_mc(&v)))
            }
            PeerMessage::Proposal(p) => {
                if p.proposal.height < h {
                    return Ok(());
                }
                if p.proposal.height > h {
                    self.catch_up
                        .note_tip(from, Height(p.proposal.height.0 - 1));
                    if self.future_proposals.len() < 64 {
                        self.future_proposals.push((p, self.io.clock));
                    }
                    return Ok(());
                }
                if self.awaiting_app {
                    // Validated once the host has applied the parent.
                    if self.future_proposals.len() < 64 {
                        self.future_proposals.push((p, self.io.clock));
                    }
                    return Ok(());
                }
                self.on_proposal(from, p, self.io.clock)
            }
            PeerMessage::Polka(c) => {
                if c.height != h || !self.started {
                    return Ok(());
                }
                self.run_core(mcc::Input::PolkaCertificate(polka_to_mc(&c)))
            }
            PeerMessage::RoundCert(c) => {
                if c.height != h || !self.started {
                    return Ok(());
                }
                self.run_core(mcc::Input::RoundCertificate(round_cert_to_mc(&c)))
            }
        }
    }

    /// A proposal for the height in progress that arrived when our clock
    /// read `received_ms`.
    fn on_proposal(
        &mut self,
        from: PartyId,
        p: SignedProposalWire,
        received_ms: u64,
    ) -> Result<(), Refusal> {
        let bytes = p.proposal.signed_bytes(&self.io.ctx).encode();
        self.io
            .check_peer_signature(from, p.proposal.proposer, &bytes, &p.signature)?;
        self.catch_up.note_active(from, p.proposal.height);
        self.maybe_start_height()?;
        // Only a fresh proposal is checked against our clock. A re-proposal
        // (proof-of-lock round set) carries a block built rounds ago, whose
        // time the core accepts only with a polka of that round: a quorum
        // checked it then, when it was fresh. Refusing it now for its age
        // could leave the parties locked on it unable to decide anything.
        let clock = (!p.proposal.pol_round.is_defined()).then_some(received_ms);
        if let Err(reason) = self.validate_block(&p.proposal.block, clock) {
            return Err(PeerFault::InvalidBlock { from, reason }.into());
        }
        if !self.started {
            return Ok(());
        }
        self.run_core(mcc::Input::Proposal(proposal_to_mc(&p)))
    }

    fn on_block_response(
        &mut self,
        from: PartyId,
        block: Block,
        cert: CommitCertificate,
    ) -> Result<(), Refusal> {
        let h = self.io.height_in_progress;
        if block.header().height != h || self.pending_decision.is_some() || self.awaiting_app {
            return Ok(());
        }
        verify_commit_certificate_cached(
            &self.io.cfg.parties,
            self.io.cfg.fault_model,
            self.io.cfg.cluster,
            self.io.cfg.epoch,
            h,
            block.hash(),
            &cert,
            &mut self.io.cache,
        )
        .map_err(|e| PeerFault::InvalidBlock {
            from,
            reason: InvalidBlock::Uncertified(e),
        })?;
        // A decided block (it came with its commit certificate) is not
        // checked against our clock: a quorum checked it when it was fresh.
        if let Err(reason) = self.validate_block(&block, None) {
            return Err(PeerFault::InvalidBlock { from, reason }.into());
        }
        if !self.started {
            self.start_height_now();
        }
        let resp = mc::ValueResponse::new(
            peer_id_of(from),
            bytes::Bytes::from(block.to_bytes()),
            to_malachite_extended(&cert),
        );
        self.run_core(mcc::Input::SyncValueResponse(resp))
    }

    /// Decided block `height` among the recent ones kept in memory (they
    /// are consecutive, so this is an index, not a search).
    fn recent_block(&self, height: Height) -> Option<&DecidedBlock> {
        let first = self.recent.front()?.block.header().height;
        let i = usize::try_from(height.0.checked_sub(first.0)?).ok()?;
        self.recent
            .get(i)
            .filter(|d| d.block.header().height == height)
    }

    fn request_block(&mut self, to: PartyId) {
        let h = self.io.height_in_progress;
        if self
            .catch_up
            .should_request(h, self.io.now, self.io.cfg.tip_interval_ms)
        {
            self.io.step.actions.push(Action::Send {
                to,
                bytes: PeerMessage::BlockRequest { height: h }.encode(),
            });
        }
    }

    fn on_tip_timer(&mut self) -> Result<(), Refusal> {
        self.io
            .schedule(TimerKind::Tip, self.io.cfg.tip_interval_ms);
        self.io.broadcast(&PeerMessage::Tip {
            height: self.chain.height,
        });
        // Re-gossip our own undecided batches: the first broadcast may have been lost.
        let mine: Vec<SignedBatch> = self.mempool.of(self.io.cfg.me);
        for b in mine {
            self.io.broadcast(&PeerMessage::Batch(b));
        }
        self.evict_parked();
        // Ask a peer that is ahead for the block we are missing.
        if let Some(p) = self.catch_up.a_peer_ahead_of(self.chain.height) {
            self.request_block(p);
        }
        // malachite does not rebroadcast proposals: re-send ours while its
        // round is still the current one, so a lost proposal costs one tip
        // interval rather than a round.
        if let Some(p) = self.io.own_proposal.clone() {
            if self.started
                && p.proposal.height == self.io.height_in_progress
                && p.proposal.round == self.core.round()
            {
                self.io.broadcast(&PeerMessage::Proposal(p));
            } else {
                self.io.own_proposal = None;
            }
        }
        Ok(())
    }

    /// Records a verified peer vote `from` sent, and relays it if it is
    /// the first of its (voter, height, round, step) or the first to
    /// conflict with it.
    fn note_vote(&mut self, from: PartyId, v: &SignedVoteWire) {
        if self.record_vote(v).relay() && v.vote.voter != self.io.cfg.me {
            self.relay_vote(from, v);
        }
    }

    /// Logs `v` (of the height in progress or the one just decided) and
    /// turns a conflict with the vote logged before into evidence.
    fn record_vote(&mut self, v: &SignedVoteWire) -> VoteRecord {
        // Bounded like the core's own lookahead: a member cannot grow this
        // log without limit by signing votes for far-future rounds.
        let round = round_i64(v.vote.round);
        let current = if v.vote.height == self.io.height_in_progress {
            round_i64(self.core.round()).max(0)
        } else {
            self.decided_round
        };
        if round > current + i64::from(mcc::MAX_FUTURE_ROUND_LOOKAHEAD) {
            return VoteRecord::Dropped;
        }
        let k = (v.vote.voter, v.vote.height, round, v.vote.precommit);
        match self.vote_log.get(&k) {
            None => {
                self.vote_log.insert(k, v.clone());
                VoteRecord::First
            }
            Some(prev) if prev.vote.value != v.vote.value => {
                let ev = canonical_equivocation(prev.clone(), v.clone());
                let key = ev.key();
                if self.chain.evidence.contains(&key) || self.evidence_pool.contains_key(&key) {
                    return VoteRecord::Known;
                }
                self.evidence_pool.insert(key, ev);
                VoteRecord::Conflict
            }
            Some(_) => VoteRecord::Known,
        }
    }

    /// Sends a peer's vote on, once, to every other peer but the one it
    /// came from and its voter. A Byzantine voter that shows each half of
    /// the cluster a different vote (a split view) so meets its other
    /// half at every correct party, which proves the equivocation. Each
    /// party relays at most two votes per (voter, height, round, step):
    /// the first, and the first that conflicts with it.
    fn relay_vote(&mut self, from: PartyId, v: &SignedVoteWire) {
        let me = self.io.cfg.me;
        let bytes = PeerMessage::Vote(v.clone()).encode();
        let peers: Vec<PartyId> = self
            .io
            .cfg
            .parties
            .parties()
            .iter()
            .map(|p| p.id)
            .filter(|p| *p != me && *p != from && *p != v.vote.voter)
            .collect();
        for to in peers {
            self.votes_relayed += 1;
            self.io.step.actions.push(Action::Send {
                to,
                bytes: bytes.clone(),
            });
        }
    }

    fn try_propose(&mut self) -> Result<(), Refusal> {
        let Some((h, r)) = self.io.want_value else {
            return Ok(());
        };
        if !self.started || h != self.io.height_in_progress || self.awaiting_app {
            return Ok(());
        }
        let recovered = self.recovered_proposals.remove(&(h, round_i64(r)));
        if recovered.is_none() && !self.has_work() {
            return Ok(());
        }
        let block = match recovered {
            Some(b) => b,
            None => match self.build_block(h) {
                Some(b) => b,
                // Our parent's certificate is gone (cannot happen with
                // `recent_blocks` >= 1): let another party propose.
                None => return Ok(()),
            },
        };
        self.io.want_value = None;
        self.run_core(mcc::Input::Propose(mcc::LocallyProposedValue::new(
            h, r, block,
        )))
    }
}

/// What logging a peer vote did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VoteRecord {
    /// The first vote of its (voter, height, round, step).
    First,
    /// The first to conflict with it: new evidence.
    Conflict,
    /// Seen before, or a conflict already proven.
    Known,
    /// Too far in the future to keep.
    Dropped,
}

impl VoteRecord {
    fn relay(self) -> bool {
        matches!(self, VoteRecord::First | VoteRecord::Conflict)
    }
}

fn unreachable_restore() -> (ConsensusDriver, Step) {
    // `restore` with an empty WAL performs no core step that can fail; this
    // path is unreachable. Abort loudly rather than run without a core.
    std::process::abort()
}

impl Io {
    /// Checks a signature a peer's message carries: the signer must be a
    /// member, the signature real (never the placeholder) and valid over
    /// `bytes` under the signer's key (verified once, then cached).
    fn check_peer_signature(
        &mut self,
        from: PartyId,
        signer: PartyId,
        bytes: &[u8],
        sig: &Signature,
    ) -> Result<(), PeerFault> {
        let key = self
            .cfg
            .parties
            .key_of(signer)
            .copied()
            .ok_or(PeerFault::UnknownPeer(signer))?;
        if *sig == PLACEHOLDER || !self.cache.verify(&key, bytes, sig) {
            return Err(PeerFault::BadSignature(from));
        }
        Ok(())
    }

    fn schedule(&mut self, kind: TimerKind, after_ms: u64) {
        let id = TimerId(self.next_timer);
        self.next_timer += 1;
        self.timers.insert(id, kind);
        self.step
            .actions
            .push(Action::ScheduleTimeout { id, after_ms });
    }

    fn cancel_where(&mut self, pred: impl Fn(&TimerKind) -> bool) {
        let ids: Vec<TimerId> = self
            .timers
            .iter()
            .filter(|(_, k)| pred(k))
            .map(|(i, _)| *i)
            .collect();
        for id in ids {
            self.timers.remove(&id);
            self.step.actions.push(Action::CancelTimeout { id });
        }
    }

    fn cancel_core_timers(&mut self) {
        self.cancel_where(|k| matches!(k, TimerKind::Core(_)));
    }

    fn broadcast(&mut self, m: &PeerMessage) {
        if let PeerMessage::Proposal(p) = m {
            if p.proposal.proposer == self.cfg.me {
                self.own_proposal = Some(p.clone());
            }
        }
        self.step
            .actions
            .push(Action::Broadcast { bytes: m.encode() });
    }
}

/// Unused import guard for `round_from_i64` in some cfgs.
#[allow(dead_code)]
fn _keep(r: i64) -> Round {
    round_from_i64(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBody;
    use crate::consensus::context::Party;
    use crate::consensus::context::{BlockContents, SignedBytes};
    use crate::crypto::PublicKey;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn key() -> (EcdsaKeyPair, PublicKey) {
        let rng = SystemRandom::new();
        let p = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let k =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p.as_ref(), &rng).unwrap();
        let pk = PublicKey(k.public_key().as_ref().try_into().unwrap());
        (k, pk)
    }

    fn sign(k: &EcdsaKeyPair, m: &[u8]) -> Signature {
        Signature(
            k.sign(&SystemRandom::new(), m)
                .unwrap()
                .as_ref()
                .try_into()
                .unwrap(),
        )
    }

    /// A one-party cluster decides a batch: every signature is requested in a
    /// step that persists the sign guard first, no placeholder ever leaves,
    /// and the decided block carries a valid certificate.
    #[test]
    fn single_party_decides_with_async_signatures() {
        let (k, pk) = key();
        let me = PartyId(1);
        let parties = PartySet::new(vec![Party {
            id: me,
            vote_key: pk,
        }])
        .unwrap();
        let cluster = ClusterId(Sha256Digest::of(b"t"));
        let cfg = DriverConfig::new(
            cluster,
            Epoch(0),
            me,
            parties.clone(),
            FaultModel::Byzantine,
        );
        let (mut d, _) = ConsensusDriver::new(cfg.clone(), 1_000);
        let body = BatchBody {
            cluster,
            author: me,
            seq: 1,
            ops: vec![testkit::op(1, 1, 8)],
        };
        let batch = SignedBatch {
            signature: sign(&k, &body.signing_bytes()),
            body,
        };
        let mut pending = vec![Input::SubmitBatch(batch.clone())];
        let mut decided = None;
        let mut guard_persisted = SignGuard::default();
        let mut rounds = 0;
        while let Some(input) = pending.pop() {
            rounds += 1;
            assert!(rounds < 100, "no decision");
            let step = d.handle(2_000, input).unwrap();
            for p in &step.persist {
                if let Persist::SignGuard(g) = p {
                    guard_persisted = g.clone();
                }
            }
            for a in step.actions {
                match a {
                    Action::Sign { request, bytes } => {
                        let sb: SignedBytes = postcard::from_bytes(&bytes).unwrap();
                        // The guard state durable before this request covers it.
                        let last = guard_persisted.last(sb.step).unwrap();
                        assert_eq!((last.height, last.round), (sb.height, sb.round));
                        pending.push(Input::SignatureReady {
                            request,
                            signature: sign(&k, &bytes),
                        });
                    }
                    Action::Broadcast { bytes } => {
                        let m = PeerMessage::decode(&bytes, usize::MAX).unwrap();
                        if let PeerMessage::Vote(v) = &m {
                            assert_ne!(v.signature, PLACEHOLDER);
                        }
                        if let PeerMessage::Proposal(p) = &m {
                            assert_ne!(p.signature, PLACEHOLDER);
                        }
                    }
                    Action::Decided(b) => decided = Some(*b),
                    _ => {}
                }
            }
        }
        let decided = decided.unwrap();
        assert_eq!(decided.block.batches(), std::slice::from_ref(&batch));
        assert_eq!(decided.block.header().height, Height(1));
        crate::consensus::verify_commit_certificate(
            &parties,
            FaultModel::Byzantine,
            cluster,
            Epoch(0),
            Height(1),
            decided.block.hash(),
            &decided.certificate,
        )
        .unwrap();
        assert_eq!(d.chain().height, Height(1));
        assert_eq!(d.pending_batches(), 0);
        // The same batch again is a replay: no new height starts.
        let step = d.handle(3_000, Input::SubmitBatch(batch)).unwrap();
        assert!(!step
            .actions
            .iter()
            .any(|a| matches!(a, Action::Sign { .. })));
    }

    /// Feeds `first` and then every signature the driver asks for, until
    /// it is quiet; returns the decided blocks and whether it signed.
    fn pump(d: &mut ConsensusDriver, k: &EcdsaKeyPair, first: Step) -> (Vec<DecidedBlock>, bool) {
        pump_at(d, k, first, 2_000)
    }

    /// [`pump`] with the clock at `now`.
    fn pump_at(
        d: &mut ConsensusDriver,
        k: &EcdsaKeyPair,
        first: Step,
        now: u64,
    ) -> (Vec<DecidedBlock>, bool) {
        let mut decided = Vec::new();
        let mut signed = false;
        let mut steps = vec![first];
        let mut rounds = 0;
        while let Some(step) = steps.pop() {
            rounds += 1;
            assert!(rounds < 200, "does not settle");
            for a in step.actions {
                match a {
                    Action::Sign { request, bytes } => {
                        signed = true;
                        let signature = sign(k, &bytes);
                        steps.push(
                            d.handle(now, Input::SignatureReady { request, signature })
                                .unwrap(),
                        );
                    }
                    Action::Decided(b) => decided.push(*b),
                    _ => {}
                }
            }
        }
        (decided, signed)
    }

    /// Block time at height 2, with a real parent: never at or before the
    /// parent's time (fresh or decided); a fresh proposal within the window
    /// around our clock (60 s behind or ahead is refused, 4 s is not); a
    /// decided block (catch-up) not held to our clock. The proposer takes
    /// its last clock reading, even one stepped back, and never less than
    /// the parent's time plus 1 ms. Before, a proposal 60 s in the past was
    /// valid, and the proposer's time was its highest reading ever.
    #[test]
    fn block_time_advances_past_the_parent_and_stays_near_our_clock() {
        const T0: u64 = 1_700_000_000_000;
        const T1: u64 = T0 + 120_000;
        let (k, pk) = key();
        let me = PartyId(1);
        let parties = PartySet::new(vec![Party {
            id: me,
            vote_key: pk,
        }])
        .unwrap();
        let cluster = ClusterId(Sha256Digest::of(b"t"));
        let cfg = DriverConfig::new(cluster, Epoch(0), me, parties, FaultModel::Byzantine);
        let (mut d, _) = ConsensusDriver::new(cfg, T0);
        let body = BatchBody {
            cluster,
            author: me,
            seq: 1,
            ops: vec![testkit::op(1, 1, 8)],
        };
        let batch = SignedBatch {
            signature: sign(&k, &body.signing_bytes()),
            body,
        };
        let first = d.handle(T0, Input::SubmitBatch(batch)).unwrap();
        let (decided, _) = pump_at(&mut d, &k, first, T0);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].block.header().time_ms, T0);

        // The clock runs an hour ahead, then is stepped back: the proposer
        // believes the step (timers keep the highest reading).
        d.handle(T1 + 3_600_000, Input::Tick).unwrap();
        d.handle(T1, Input::Tick).unwrap();
        assert_eq!((d.io.clock, d.io.now), (T1, T1 + 3_600_000));
        // Block 2, a carrier of block 1's certificate.
        d.log_pending = true;
        let good = d.build_block(Height(2)).unwrap();
        assert_eq!(good.header().time_ms, T1);
        assert_eq!(d.validate_block(&good, Some(T1)), Ok(()));
        let at = |time_ms: u64| {
            let mut c: BlockContents = good.clone().into();
            c.header.time_ms = time_ms;
            Block::new(c)
        };
        for clock in [Some(T1), None] {
            assert_eq!(
                d.validate_block(&at(T0), clock),
                Err(InvalidBlock::TimeNotAdvancing {
                    time_ms: T0,
                    parent_ms: T0
                }),
                "at the parent's time"
            );
        }
        let behind = T1 - 60_000;
        assert_eq!(
            d.validate_block(&at(behind), Some(T1)),
            Err(InvalidBlock::TimeTooFarBehind {
                time_ms: behind,
                bound_ms: T1 - BLOCK_TIME_BEHIND_MS
            })
        );
        let ahead = T1 + 60_000;
        assert_eq!(
            d.validate_block(&at(ahead), Some(T1)),
            Err(InvalidBlock::TimeTooFarAhead {
                time_ms: ahead,
                bound_ms: T1 + BLOCK_TIME_AHEAD_MS
            })
        );
        for t in [behind, ahead] {
            assert_eq!(d.validate_block(&at(t), None), Ok(()), "decided: no clock");
        }
        for t in [T1 - 4_000, T1 + 4_000] {
            assert_eq!(d.validate_block(&at(t), Some(T1)), Ok(()));
        }
        // Our clock behind the parent's time: the next block is 1 ms after it.
        d.handle(T0 - 1_000, Input::Tick).unwrap();
        let next = d.build_block(Height(2)).unwrap();
        assert_eq!(next.header().time_ms, T0 + 1);
    }

    #[test]
    fn next_block_carries_the_parents_certificate_and_the_hosts_log_head() {
        let (k, pk) = key();
        let me = PartyId(1);
        let parties = PartySet::new(vec![Party {
            id: me,
            vote_key: pk,
        }])
        .unwrap();
        let cluster = ClusterId(Sha256Digest::of(b"t"));
        let mut cfg = DriverConfig::new(cluster, Epoch(0), me, parties, FaultModel::Byzantine);
        cfg.app_state = true;
        let (mut d, _) = ConsensusDriver::new(cfg, 1_000);
        let body = BatchBody {
            cluster,
            author: me,
            seq: 1,
            ops: vec![testkit::op(1, 1, 8)],
        };
        let batch = SignedBatch {
            signature: sign(&k, &body.signing_bytes()),
            body,
        };
        let first = d.handle(2_000, Input::SubmitBatch(batch)).unwrap();
        let (decided, _) = pump(&mut d, &k, first);
        assert_eq!(decided.len(), 1);
        let b1 = &decided[0];
        assert_eq!(b1.block.header().last_commit, None);
        assert_eq!(b1.block.header().log, LogHead::empty());
        // Until the host says what block 1 did to its log, nothing starts.
        let idle = d.handle(2_500, Input::Tick).unwrap();
        let (none, signed) = pump(&mut d, &k, idle);
        assert!(none.is_empty() && !signed);
        // Block 1's entries are pending: a carrier block follows at once,
        // with block 1's certificate and the head the host reported.
        let head = LogHead {
            size: 7,
            root: Sha256Digest::of(b"root"),
        };
        // What validators refuse at height 2 (checked before it starts).
        d.log_head = head;
        d.log_pending = true;
        d.awaiting_app = false;
        let good = d.build_block(Height(2)).unwrap();
        assert_eq!(d.validate_block(&good, None), Ok(()));
        let variant = |f: &dyn Fn(&mut BlockContents)| {
            let mut c: BlockContents = good.clone().into();
            f(&mut c);
            Block::new(c)
        };
        let other_log = variant(&|c| c.header.log = LogHead::empty());
        assert!(matches!(
            d.validate_block(&other_log, None),
            Err(InvalidBlock::LogHeadMismatch { expected, .. }) if expected == head
        ));
        let no_cert = variant(&|c| c.header.last_commit = None);
        assert_eq!(
            d.validate_block(&no_cert, None),
            Err(InvalidBlock::MissingParentCertificate(Height(2)))
        );
        let forged = variant(&|c| {
            if let Some(cert) = c.header.last_commit.as_mut() {
                cert.signatures[0].1 = Signature([9; 64]);
            }
        });
        assert!(matches!(
            d.validate_block(&forged, None),
            Err(InvalidBlock::ParentCertificate { .. })
        ));
        d.log_pending = false;
        assert_eq!(
            d.validate_block(&good, None),
            Err(InvalidBlock::Empty),
            "an empty block is valid only as a carrier"
        );
        let step = d.set_app_state(3_000, head, true).unwrap();
        let (decided, _) = pump(&mut d, &k, step);
        assert_eq!(decided.len(), 1);
        let h2 = decided[0].block.header();
        assert_eq!(h2.height, Height(2));
        assert!(decided[0].block.batches().is_empty());
        assert_eq!(h2.last_commit.as_ref(), Some(&b1.certificate));
        assert_eq!(h2.log, head);
        // Nothing pending after the carrier: the driver stays quiet.
        let step = d.set_app_state(3_500, head, false).unwrap();
        let (none, signed) = pump(&mut d, &k, step);
        assert!(none.is_empty() && !signed);
        assert_eq!(d.log_head(), head);
    }

    /// A driver restored at chain height `height` that keeps only block 1
    /// (with an empty certificate) in memory.
    fn restored_with_block_1(cfg: DriverConfig, height: u64) -> ConsensusDriver {
        let block = testkit::block_1(2, Vec::new());
        let kept = DecidedBlock {
            certificate: CommitCertificate {
                height: Height(1),
                round: 0,
                block: block.hash(),
                signatures: Vec::new(),
            },
            block,
        };
        let restored = Restored {
            chain: ChainState {
                height: Height(height),
                ..Default::default()
            },
            recent: vec![kept],
            ..Default::default()
        };
        ConsensusDriver::restore(cfg, restored, 1_000).unwrap().0
    }

    /// A member flooding block requests gets its burst, then the refill
    /// rate; the rest are dropped and counted, and another member's
    /// requests are answered from its own budget.
    #[test]
    fn block_requests_beyond_a_peers_budget_are_dropped_and_counted() {
        let net = testkit::Net::new(4);
        let mut cfg = net.cfg(1);
        cfg.block_serve_burst = 5;
        cfg.block_serve_per_sec = 2;
        let mut d = restored_with_block_1(cfg, 1);
        let request = PeerMessage::BlockRequest { height: Height(1) }.encode();
        let ask = |d: &mut ConsensusDriver, now: u64, from: u32| {
            let step = d
                .handle(
                    now,
                    Input::Peer {
                        from: PartyId(from),
                        bytes: request.clone(),
                    },
                )
                .unwrap();
            step.actions
                .iter()
                .filter(|a| match a {
                    Action::Send { to, bytes } => {
                        *to == PartyId(from)
                            && matches!(
                                PeerMessage::decode(bytes, usize::MAX),
                                Ok(PeerMessage::BlockResponse { .. })
                            )
                    }
                    _ => false,
                })
                .count()
        };
        let served: usize = (0..100).map(|i| ask(&mut d, 2_000 + i, 3)).sum();
        assert_eq!(served, 5);
        assert_eq!(d.block_requests_dropped().get(&PartyId(3)), Some(&95));
        assert_eq!(ask(&mut d, 2_100, 4), 1);
        // Two per second: a second later two more, then none.
        assert_eq!(ask(&mut d, 3_100, 3), 1);
        assert_eq!(ask(&mut d, 3_100, 3), 1);
        assert_eq!(ask(&mut d, 3_100, 3), 0);
        assert_eq!(d.block_requests_dropped().get(&PartyId(3)), Some(&96));
        assert_eq!(d.block_requests_dropped().get(&PartyId(4)), None);
    }

    /// A party whose signatures are withheld (the host's start-up
    /// double-sign watch holds every sign request back) still decides what
    /// the others decide: its core counts its own placeholder precommit,
    /// but the certificate is completed from the others' precommits, and
    /// carries no signature of it. Before, it waited for its own signature
    /// and never left the height.
    #[test]
    fn a_party_that_signs_nothing_follows_the_decisions_of_the_others() {
        let net = testkit::Net::new(4);
        let mut drivers: Vec<ConsensusDriver> = (1..=4).map(|i| net.driver(net.cfg(i)).0).collect();
        let silent = 3usize; // P4 signs nothing.
        let mut now = 2_000u64;
        // (to index, from, bytes) in flight; (due, party index, timer) armed.
        let mut wire: VecDeque<(usize, PartyId, Vec<u8>)> = VecDeque::new();
        let mut timers: Vec<(u64, usize, TimerId)> = Vec::new();
        let mut decided: Vec<Vec<DecidedBlock>> = vec![Vec::new(); 4];
        let mut withheld = 0usize;
        let batch = net.batch(1, 1, 2, 16);
        let mut inputs: VecDeque<(usize, Input)> = (0..4)
            .map(|i| (i, Input::SubmitBatch(batch.clone())))
            .take(1)
            .collect();
        let mut steps = 0;
        while decided.iter().any(Vec::is_empty) {
            steps += 1;
            assert!(
                steps < 20_000,
                "no decision at every party: {:?}",
                decided.iter().map(Vec::len).collect::<Vec<_>>()
            );
            let (i, input) = if let Some(x) = inputs.pop_front() {
                x
            } else if let Some((to, from, bytes)) = wire.pop_front() {
                (to, Input::Peer { from, bytes })
            } else {
                timers.sort();
                assert!(!timers.is_empty(), "stuck with no timer");
                let (due, i, id) = timers.remove(0);
                now = now.max(due);
                (i, Input::TimeoutFired(id))
            };
            let step = drivers[i].handle(now, input).unwrap();
            let me = PartyId(i as u32 + 1);
            for a in step.actions {
                match a {
                    Action::Sign { request, bytes } => {
                        if i == silent {
                            withheld += 1;
                        } else {
                            let signature = net.c.sign(me.0, &bytes);
                            inputs.push_back((i, Input::SignatureReady { request, signature }));
                        }
                    }
                    Action::Broadcast { bytes } => {
                        for j in (0..4).filter(|j| *j != i) {
                            wire.push_back((j, me, bytes.clone()));
                        }
                    }
                    Action::Send { to, bytes } => {
                        wire.push_back((to.0 as usize - 1, me, bytes));
                    }
                    Action::ScheduleTimeout { id, after_ms } => {
                        timers.push((now + after_ms, i, id))
                    }
                    Action::CancelTimeout { id } => {
                        timers.retain(|(_, j, t)| !(*j == i && *t == id))
                    }
                    Action::Decided(b) => decided[i].push(*b),
                    Action::ServeStored { .. } => {}
                }
            }
        }
        assert!(withheld > 0, "the silent party was never asked to sign");
        let first = &decided[0][0];
        for d in &decided {
            assert_eq!(d[0].block.hash(), first.block.hash());
        }
        let cert = &decided[silent][0].certificate;
        assert!(
            cert.signatures.iter().all(|(p, _)| *p != PartyId(4)),
            "{cert:?}"
        );
        crate::consensus::verify_commit_certificate(
            &net.parties,
            FaultModel::Byzantine,
            net.c.id,
            Epoch(0),
            Height(1),
            first.block.hash(),
            cert,
        )
        .unwrap();
        assert_eq!(drivers[silent].chain().height, Height(1));
    }

    /// A peer's vote is relayed once to the peers other than its sender
    /// and voter; a conflicting one is relayed too (and is evidence); a
    /// third value, or a repeat, is not. Without the relay a split view
    /// (each half of the peers shown one vote) is never seen whole.
    #[test]
    fn peer_votes_are_relayed_once_and_a_conflict_once_more() {
        use crate::consensus::context::Vote;
        let net = testkit::Net::new(4);
        let (mut d, _) = net.driver(net.cfg(1));
        let ctx = QuorateContext {
            cluster: net.c.id,
            epoch: Epoch(0),
        };
        let vote = |value: mc::NilOrVal<BlockHash>| {
            let vote = Vote {
                precommit: false,
                height: Height(1),
                round: Round::new(0),
                value,
                voter: PartyId(3),
            };
            let signature = net.c.sign(3, &vote.signed_bytes(&ctx).encode());
            PeerMessage::Vote(SignedVoteWire { vote, signature }).encode()
        };
        let block = |tag: &[u8]| mc::NilOrVal::Val(BlockHash(Sha256Digest::of(tag)));
        let mut deliver = |from: u32, bytes: Vec<u8>| -> Vec<PartyId> {
            let step = d
                .handle(
                    2_000,
                    Input::Peer {
                        from: PartyId(from),
                        bytes: bytes.clone(),
                    },
                )
                .unwrap();
            assert!(step.faults.is_empty(), "{:?}", step.faults);
            step.actions
                .iter()
                .filter_map(|a| match a {
                    Action::Send { to, bytes: b } if *b == bytes => Some(*to),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(deliver(3, vote(block(b"a"))), vec![PartyId(2), PartyId(4)]);
        assert!(deliver(3, vote(block(b"a"))).is_empty(), "a repeat");
        assert!(deliver(4, vote(block(b"a"))).is_empty(), "relayed back");
        // The other half's vote, relayed by P2.
        assert_eq!(deliver(2, vote(mc::NilOrVal::Nil)), vec![PartyId(4)]);
        assert!(deliver(3, vote(block(b"c"))).is_empty(), "a third value");
        assert_eq!(d.votes_relayed(), 3);
        assert_eq!(d.evidence_pool.len(), 1);
    }

    /// A request for a decided block older than the kept ones asks the host
    /// to serve it from the store; a kept one is answered from memory; a
    /// height not decided (or 0) is not answered at all. Before, a block
    /// older than `recent_blocks` was never served, so a party down longer
    /// than that could not rejoin.
    #[test]
    fn block_requests_below_the_kept_blocks_are_served_from_the_store() {
        let net = testkit::Net::new(4);
        let mut cfg = net.cfg(1);
        cfg.recent_blocks = 1;
        // Restored at height 5 with only block 1 given: a gap is fine for
        // the lookup (it checks the height it finds).
        let mut d = restored_with_block_1(cfg, 5);
        let mut ask = |height: u64| {
            d.handle(
                2_000,
                Input::Peer {
                    from: PartyId(3),
                    bytes: PeerMessage::BlockRequest {
                        height: Height(height),
                    }
                    .encode(),
                },
            )
            .unwrap()
            .actions
        };
        let a = ask(1);
        assert!(
            matches!(a.as_slice(), [Action::Send { to: PartyId(3), bytes }]
                if matches!(PeerMessage::decode(bytes, usize::MAX), Ok(PeerMessage::BlockResponse { .. }))),
            "{a:?}"
        );
        for h in [2, 5] {
            assert_eq!(
                ask(h),
                vec![Action::ServeStored {
                    to: PartyId(3),
                    height: Height(h)
                }]
            );
        }
        for h in [0, 6, 1_000] {
            assert!(
                !ask(h)
                    .iter()
                    .any(|a| matches!(a, Action::ServeStored { .. } | Action::Send { .. })),
                "height {h}"
            );
        }
    }
}
