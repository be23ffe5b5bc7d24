//! Block validity: the one home of the rules a decided block obeys.
//!
//! [`check_block`] is what an honest validator checks before it lets the
//! core see a proposed or fetched block (a block that fails is never fed
//! to the core, so the party prevotes nil when its propose timeout fires),
//! and what the offline verifier (`quorate audit verify`) checks of every
//! exported block. It is two halves, so that the verifier can run the
//! costly one in parallel:
//!
//! * [`check_block_contents`]: everything that needs only the block and
//!   the cluster's rules: size, operation count, every batch
//!   ([`check_batch`]: cluster, author, op count, signature, every
//!   operation decodes and is the signer's), the equivocation evidence, and
//!   the signatures of the parent's certificate the header carries;
//! * [`check_block_in_chain`]: what needs the chain after the parent
//!   ([`Parent`]): height, parent hash, time, the certificate being the
//!   parent's, the audit log head, the empty-block rule, each author's
//!   batches following on from its last decided one without gaps, and
//!   evidence not recorded before.
//!
//! Block time has two halves too, and the split is the point:
//!
//! * **monotonicity** (in [`check_block_in_chain`]): a block's time is
//!   strictly after its parent's. Every block must obey it, so the offline
//!   verifier checks it of every exported block;
//! * **timeliness** ([`check_block_time`]): a *fresh proposal's* time is
//!   within a window around the validator's own clock. Only a live party
//!   voting on a proposal can check that: the verifier has no clock of
//!   that moment, and a decided block fetched in catch-up or replayed
//!   carries a commit certificate, whose quorum checked its time when it
//!   was fresh. So the driver applies it to proposals only.

use super::{ChainState, ConsensusDriver};
use crate::batch::SignedBatch;
use crate::consensus::certificate::{
    verify_commit_certificate_cached, verify_equivocation, CertificateError, EvidenceError,
    VerifyCache,
};
use crate::consensus::context::{Block, BlockHash, LogHead, PartySet, QuorateContext};
use crate::sessions::ops::{check_batch, BatchError, MAX_OPS_PER_BATCH};
use crate::types::{ClusterId, Epoch, FaultModel, Height, PartyId};
use std::collections::{BTreeMap, BTreeSet};

/// Most operations one block may carry, summed over its batches.
///
/// Every operation of a decided block becomes a permanent record and an
/// audit entry at every party, so this bounds what one height can add to
/// every party's state and log (and the session machine's work per block),
/// whatever the byte size of the operations. Four full batches
/// ([`MAX_OPS_PER_BATCH`], the size the daemon splits its own outbox at):
/// a block always takes a full batch, and with round-robin filling up to
/// four authors' full batches share one height.
pub const MAX_OPS_PER_BLOCK: usize = 4 * MAX_OPS_PER_BATCH;

/// Default of `DriverConfig::block_time_ahead_ms`: how far a fresh
/// proposal's time may be ahead of a validator's clock.
///
/// It is also, with the honest parties' clock skew, the most a Byzantine
/// proposer can bring a deadline forward. Honest clocks under NTP agree to
/// well under a second; 5 s leaves room for a poorly synchronised one
/// while keeping deadlines (tens of seconds and more) meaningful.
pub const BLOCK_TIME_AHEAD_MS: u64 = 5_000;

/// Default of `DriverConfig::block_time_behind_ms`: how far a fresh
/// proposal's time may be behind a validator's clock when it arrives.
///
/// An honest proposal is already this old on arrival by the proposer's
/// skew plus the TPM signature (~200 ms), delivery and, if the first copy
/// was lost, a rebroadcast (every tip interval, 1 s). It is also, with the
/// skew, the most a Byzantine proposer can hold a deadline back in its own
/// block (the next honest proposer's block takes its own clock).
pub const BLOCK_TIME_BEHIND_MS: u64 = 5_000;
/// The cluster's rules a block is checked against (fixed for an epoch).
#[derive(Clone, Copy, Debug)]
pub struct BlockRules<'a> {
    /// The cluster every batch and certificate binds.
    pub cluster: ClusterId,
    /// The membership epoch certificates bind.
    pub epoch: Epoch,
    /// The quorum a certificate needs.
    pub fault_model: FaultModel,
    /// The members and their vote keys.
    pub parties: &'a PartySet,
    /// Largest encoded block, in bytes; `None` where it is not known (the
    /// offline verifier: a bundle carries the cluster's rules only as a
    /// digest).
    pub max_block_bytes: Option<usize>,
}

/// The chain a block extends: the state after its parent.
#[derive(Clone, Copy, Debug)]
pub struct Parent<'a> {
    /// Height, hash, time, per-author sequence numbers and recorded
    /// evidence after the parent.
    pub chain: &'a ChainState,
    /// The audit log head the block must carry.
    pub log_head: LogHead,
    /// Whether the parent's entries await its canonical certificate (then
    /// an empty block is a valid carrier); `None` where it is not known.
    pub log_pending: Option<bool>,
    /// The application's next time-driven deadline (block time, ms; see
    /// `ConsensusDriver::set_wake_at`): an empty block whose time reaches
    /// it is a valid carrier of that deadline. `None`: no deadline, or not
    /// known (then `log_pending` is `None` too).
    pub wake_at: Option<u64>,
}

/// Why a block is invalid: each is a fault of the block's proposer (or of
/// the peer that sent it), never of this party. Honest validators refuse
/// such a block: they prevote nil.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBlock {
    /// Not for the next height.
    #[error("block is for height {got}, the next height is {expected}")]
    WrongHeight {
        /// The next height.
        expected: Height,
        /// The block's.
        got: Height,
    },
    /// Does not extend the last decided block.
    #[error("block's parent {got} is not the last decided block {expected}: stale or forked")]
    WrongParent {
        /// The last decided block.
        expected: BlockHash,
        /// The block's parent.
        got: BlockHash,
    },
    /// The header names a proposer that is not a member.
    #[error("block proposer {0} is not a member")]
    UnknownProposer(PartyId),
    /// Time does not move forward.
    #[error("block time {time_ms} ms does not advance past its parent's {parent_ms} ms")]
    TimeNotAdvancing {
        /// The block's time.
        time_ms: u64,
        /// The parent's.
        parent_ms: u64,
    },
    /// A fresh proposal's time is too far ahead of this party's clock.
    #[error("block time {time_ms} ms is past {bound_ms} ms, our clock plus block_time_ahead_ms: check the proposer's clock (or ours)")]
    TimeTooFarAhead {
        /// The block's time.
        time_ms: u64,
        /// Our clock plus `block_time_ahead_ms`.
        bound_ms: u64,
    },
    /// A fresh proposal's time is too far behind this party's clock.
    #[error("block time {time_ms} ms is before {bound_ms} ms, our clock minus block_time_behind_ms: check the proposer's clock (or ours), or the network delay")]
    TimeTooFarBehind {
        /// The block's time.
        time_ms: u64,
        /// Our clock minus `block_time_behind_ms`.
        bound_ms: u64,
    },
    /// Larger than the cluster's block limit.
    #[error("block of {bytes} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The block's encoded size.
        bytes: usize,
        /// `cluster.max_block_bytes`.
        max: usize,
    },
    /// More operations than [`MAX_OPS_PER_BLOCK`].
    #[error("block carries {0} operations, more than the {MAX_OPS_PER_BLOCK} allowed")]
    TooManyOps(usize),
    /// Block 1 has no parent to certify.
    #[error("block 1 carries a parent certificate, but it has no parent")]
    CertificateAtGenesis,
    /// A block past 1 must carry its parent's canonical certificate.
    #[error("block {0} is missing its parent's commit certificate")]
    MissingParentCertificate(Height),
    /// The carried certificate does not verify.
    #[error("its header's commit certificate of block {height} does not verify: {error}")]
    ParentCertificate {
        /// The parent's height.
        height: Height,
        /// Why.
        error: CertificateError,
    },
    /// The carried certificate is valid, but for another block.
    #[error(
        "the header's certificate is for block {block} at height {height}, not for the parent"
    )]
    CertificateNotForParent {
        /// The height it certifies.
        height: Height,
        /// The block it certifies.
        block: BlockHash,
    },
    /// The commit certificate that came with a fetched block does not
    /// prove it decided.
    #[error("the block's own commit certificate does not verify: {0}")]
    Uncertified(CertificateError),
    /// The audit log head differs from ours.
    #[error("its header says the log held {} entries with root {}, but the log before its parent's entries holds {} with root {}", got.size, got.root, expected.size, expected.root)]
    LogHeadMismatch {
        /// Ours.
        expected: LogHead,
        /// The block's.
        got: LogHead,
    },
    /// Nothing to decide: no batch, no evidence, no entries awaiting a
    /// certificate, no application deadline reached (no empty blocks while
    /// idle).
    #[error("empty block: no batch, no evidence, no audit entries awaiting a certificate and no deadline reached")]
    Empty,
    /// A batch breaks the batch rules ([`check_batch`]).
    #[error("batch {index} (by {author} #{seq}): {error}")]
    Batch {
        /// Its index in the block.
        index: usize,
        /// Its author.
        author: PartyId,
        /// Its sequence number.
        seq: u64,
        /// Which rule.
        error: BatchError,
    },
    /// A batch at or below its author's last decided (or earlier in the
    /// block) sequence number: a replay or a reordering.
    #[error("batch {index} ({author} #{seq}) replays or reorders: {author}'s last is #{last}")]
    BatchReplayed {
        /// Its index in the block.
        index: usize,
        /// Its author.
        author: PartyId,
        /// Its sequence number.
        seq: u64,
        /// The author's last, decided or earlier in this block.
        last: u64,
    },
    /// A batch that skips sequence numbers: its predecessor is not decided.
    #[error("batch {index} ({author} #{seq}) skips ahead: {author}'s next is #{expected}")]
    BatchSeqGap {
        /// Its index in the block.
        index: usize,
        /// Its author.
        author: PartyId,
        /// Its sequence number.
        seq: u64,
        /// The author's next.
        expected: u64,
    },
    /// Equivocation evidence that does not verify.
    #[error("equivocation evidence {index}: {error}")]
    Evidence {
        /// Its index in the block.
        index: usize,
        /// Why.
        error: EvidenceError,
    },
    /// Equivocation evidence recorded before (or twice in the block).
    #[error("equivocation evidence {0} is already recorded")]
    EvidenceRepeated(usize),
}

/// Checks a block against the cluster's rules and the chain it extends:
/// [`check_block_contents`], then [`check_block_in_chain`].
pub fn check_block(
    rules: &BlockRules<'_>,
    parent: &Parent<'_>,
    block: &Block,
    cache: &mut VerifyCache,
) -> Result<(), InvalidBlock> {
    check_block_in_chain(parent, block)?;
    check_block_contents(rules, block, cache)
}

/// The half of [`check_block`] that needs only the block and the rules.
pub fn check_block_contents(
    rules: &BlockRules<'_>,
    block: &Block,
    cache: &mut VerifyCache,
) -> Result<(), InvalidBlock> {
    let h = block.header();
    if !rules.parties.contains(h.proposer) {
        return Err(InvalidBlock::UnknownProposer(h.proposer));
    }
    if let Some(max) = rules.max_block_bytes {
        if block.encoded_len() > max {
            return Err(InvalidBlock::TooLarge {
                bytes: block.encoded_len(),
                max,
            });
        }
    }
    let ops = block
        .batches()
        .iter()
        .fold(0usize, |n, b| n.saturating_add(b.body.ops.len()));
    if ops > MAX_OPS_PER_BLOCK {
        return Err(InvalidBlock::TooManyOps(ops));
    }
    match (&h.last_commit, h.height.0) {
        (None, 0 | 1) => {}
        (Some(_), 0 | 1) => return Err(InvalidBlock::CertificateAtGenesis),
        (None, _) => return Err(InvalidBlock::MissingParentCertificate(h.height)),
        (Some(cert), _) => verify_commit_certificate_cached(
            rules.parties,
            rules.fault_model,
            rules.cluster,
            rules.epoch,
            Height(h.height.0 - 1),
            cert.block,
            cert,
            cache,
        )
        .map_err(|error| InvalidBlock::ParentCertificate {
            height: Height(h.height.0 - 1),
            error,
        })?,
    }
    for (index, b) in block.batches().iter().enumerate() {
        check_batch_cached(rules, b, cache).map_err(|error| InvalidBlock::Batch {
            index,
            author: b.body.author,
            seq: b.body.seq,
            error,
        })?;
    }
    let ctx = QuorateContext {
        cluster: rules.cluster,
        epoch: rules.epoch,
    };
    for (index, ev) in block.evidence().iter().enumerate() {
        verify_equivocation(&ctx, rules.parties, ev, cache)
            .map_err(|error| InvalidBlock::Evidence { index, error })?;
    }
    Ok(())
}

/// The window around a validator's clock a fresh proposal's time must fall
/// in (see [`check_block_time`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockWindow {
    /// How far ahead, ms.
    pub ahead_ms: u64,
    /// How far behind, ms.
    pub behind_ms: u64,
}

/// The timeliness rule, which only a live validator voting on a fresh
/// proposal applies: the block's `time_ms` is within `window` of
/// `clock_ms`, the validator's clock when the proposal arrived. Not part of
/// [`check_block`]: no one can check it of a decided block later (see the
/// module doc).
pub fn check_block_time(
    time_ms: u64,
    clock_ms: u64,
    window: ClockWindow,
) -> Result<(), InvalidBlock> {
    let ahead = clock_ms.saturating_add(window.ahead_ms);
    if time_ms > ahead {
        return Err(InvalidBlock::TimeTooFarAhead {
            time_ms,
            bound_ms: ahead,
        });
    }
    let behind = clock_ms.saturating_sub(window.behind_ms);
    if time_ms < behind {
        return Err(InvalidBlock::TimeTooFarBehind {
            time_ms,
            bound_ms: behind,
        });
    }
    Ok(())
}

/// The half of [`check_block`] that needs the chain after the parent.
pub fn check_block_in_chain(parent: &Parent<'_>, block: &Block) -> Result<(), InvalidBlock> {
    let h = block.header();
    let chain = parent.chain;
    let expected = Height(chain.height.0.saturating_add(1));
    if h.height != expected {
        return Err(InvalidBlock::WrongHeight {
            expected,
            got: h.height,
        });
    }
    if h.parent != chain.hash {
        return Err(InvalidBlock::WrongParent {
            expected: chain.hash,
            got: h.parent,
        });
    }
    // Monotonicity, which the offline verifier checks too; timeliness
    // against a clock is `check_block_time`, live parties only.
    if h.time_ms <= chain.time_ms {
        return Err(InvalidBlock::TimeNotAdvancing {
            time_ms: h.time_ms,
            parent_ms: chain.time_ms,
        });
    }
    if let Some(cert) = &h.last_commit {
        if cert.height != chain.height || cert.block != chain.hash {
            return Err(InvalidBlock::CertificateNotForParent {
                height: cert.height,
                block: cert.block,
            });
        }
    }
    if h.log != parent.log_head {
        return Err(InvalidBlock::LogHeadMismatch {
            expected: parent.log_head,
            got: h.log,
        });
    }
    // An empty block is valid only when it does something: it carries the
    // parent's audit certificate, or its time passes a deadline the
    // application waits on. Where neither is known (the offline verifier)
    // the rule is not checked: an empty block changes no history.
    let wakes = parent.wake_at.is_some_and(|t| h.time_ms >= t);
    if block.batches().is_empty()
        && block.evidence().is_empty()
        && parent.log_pending == Some(false)
        && !wakes
    {
        return Err(InvalidBlock::Empty);
    }
    let mut last: BTreeMap<PartyId, u64> = BTreeMap::new();
    for (index, b) in block.batches().iter().enumerate() {
        let (author, seq) = (b.body.author, b.body.seq);
        let prev = last
            .get(&author)
            .copied()
            .or_else(|| chain.last_seq.get(&author).copied())
            .unwrap_or(0);
        if seq <= prev {
            return Err(InvalidBlock::BatchReplayed {
                index,
                author,
                seq,
                last: prev,
            });
        }
        // Honest proposers include consecutive runs only: a batch whose
        // predecessor is not decided would make that predecessor a replay
        // forever (a Byzantine proposer could so censor an author).
        if seq != prev.saturating_add(1) {
            return Err(InvalidBlock::BatchSeqGap {
                index,
                author,
                seq,
                expected: prev.saturating_add(1),
            });
        }
        last.insert(author, seq);
    }
    let mut seen = BTreeSet::new();
    for (index, ev) in block.evidence().iter().enumerate() {
        let k = ev.key();
        if chain.evidence.contains(&k) || !seen.insert(k) {
            return Err(InvalidBlock::EvidenceRepeated(index));
        }
    }
    Ok(())
}

/// The batch rules ([`check_batch`]) with the batch signature checked
/// through `cache`.
pub fn check_batch_cached(
    rules: &BlockRules<'_>,
    batch: &SignedBatch,
    cache: &mut VerifyCache,
) -> Result<(), BatchError> {
    check_batch(
        batch,
        &rules.cluster,
        |p| rules.parties.key_of(p).copied(),
        |key, b| cache.verify(key, &b.body.signing_bytes(), &b.signature),
    )
    .map(|_| ())
}

impl ChainState {
    /// The chain state after `block` (assumed valid on top of `self`).
    pub fn after(&self, block: &Block) -> ChainState {
        let header = block.header();
        let mut chain = self.clone();
        chain.height = header.height;
        chain.hash = block.hash();
        chain.time_ms = header.time_ms;
        for b in block.batches() {
            let e = chain.last_seq.entry(b.body.author).or_insert(0);
            *e = (*e).max(b.body.seq);
        }
        for ev in block.evidence() {
            chain.evidence.insert(ev.key());
        }
        chain
    }
}

impl ConsensusDriver {
    /// The rules this party checks blocks against.
    fn rules(&self) -> BlockRules<'_> {
        BlockRules {
            cluster: self.io.cfg.cluster,
            epoch: self.io.cfg.epoch,
            fault_model: self.io.cfg.fault_model,
            parties: &self.io.cfg.parties,
            max_block_bytes: Some(self.io.cfg.max_block_bytes),
        }
    }

    /// Checks a block for the height in progress ([`check_block`]) and, for
    /// a fresh proposal that arrived when our clock read `clock`, that its
    /// time is within our window ([`check_block_time`]); `None` for a
    /// re-proposal or a decided block. (A block's header names the party
    /// that built it; a later round may re-propose it after a proof-of-lock,
    /// so it need not be the proposer of the proposal that carries it.)
    pub(super) fn validate_block(
        &mut self,
        block: &Block,
        clock: Option<u64>,
    ) -> Result<(), InvalidBlock> {
        let mut cache = std::mem::take(&mut self.io.cache);
        let r = check_block(
            &self.rules(),
            &Parent {
                chain: &self.chain,
                log_head: self.log_head,
                log_pending: Some(self.log_pending),
                wake_at: self.wake_at,
            },
            block,
            &mut cache,
        );
        self.io.cache = cache;
        r?;
        match clock {
            Some(clock_ms) => {
                check_block_time(block.header().time_ms, clock_ms, self.clock_window())
            }
            None => Ok(()),
        }
    }

    /// The window fresh proposals' times must fall in.
    fn clock_window(&self) -> ClockWindow {
        ClockWindow {
            ahead_ms: self.io.cfg.block_time_ahead_ms,
            behind_ms: self.io.cfg.block_time_behind_ms,
        }
    }

    /// The batch rules for a batch offered to the mempool.
    pub(super) fn check_batch(&mut self, batch: &SignedBatch) -> Result<(), BatchError> {
        let mut cache = std::mem::take(&mut self.io.cache);
        let r = check_batch_cached(&self.rules(), batch, &mut cache);
        self.io.cache = cache;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{block_1, op, Net};
    use super::super::{BadBatch, PeerFault};
    use super::*;
    use crate::sessions::ops::DecodeError;

    /// A batch whose signature is good but whose operations break the batch
    /// rules never enters the mempool, and a block carrying it is refused
    /// (the validator prevotes nil). Before, only cluster, author, sequence
    /// and signature were checked: a signed batch of garbage was decided.
    #[test]
    fn a_batch_that_fails_verify_batch_is_refused_in_the_pool_and_in_blocks() {
        let net = Net::new(4);
        let (mut d, _) = net.driver(net.cfg(1));
        let junk = net.c.batch(2, 1, vec![op(2, 1, 8), b"junk".to_vec()]);
        let step = Net::gossip(&mut d, 1_100, 2, &junk);
        assert!(matches!(
            &step.faults[..],
            [PeerFault::BadBatch {
                from: PartyId(2),
                reason: BadBatch::Rule(BatchError::Undecodable { index: 1, .. })
            }]
        ));
        assert_eq!(d.pending_batches() + d.parked_batches(), 0);
        assert!(matches!(
            d.validate_block(&block_1(2, vec![junk]), None),
            Err(InvalidBlock::Batch {
                index: 0,
                author: PartyId(2),
                seq: 1,
                error: BatchError::Undecodable {
                    index: 1,
                    error: DecodeError::UnsupportedVersion(b'j')
                }
            })
        ));
        // An operation claiming another author, and too many operations.
        let forged = net.c.batch(2, 1, vec![op(3, 1, 8)]);
        assert!(matches!(
            d.validate_block(&block_1(2, vec![forged]), None),
            Err(InvalidBlock::Batch {
                error: BatchError::AuthorMismatch { .. },
                ..
            })
        ));
        let one = op(2, 1, 8);
        let many = net.c.batch(2, 1, vec![one; MAX_OPS_PER_BATCH + 1]);
        assert!(matches!(
            d.validate_block(&block_1(2, vec![many]), None),
            Err(InvalidBlock::Batch {
                error: BatchError::TooManyOps(n),
                ..
            }) if n == MAX_OPS_PER_BATCH + 1
        ));
        // The same batch with valid operations is fine.
        let good = net.batch(2, 1, 2, 8);
        assert_eq!(d.validate_block(&block_1(2, vec![good]), None), Ok(()));
    }

    /// A block may carry at most MAX_OPS_PER_BLOCK operations, whatever their
    /// size; before there was no such cap.
    #[test]
    fn a_block_over_the_operation_cap_is_refused() {
        let net = Net::new(4);
        let mut cfg = net.cfg(1);
        cfg.max_block_bytes = 8 << 20;
        let (mut d, _) = net.driver(cfg);
        let full: Vec<SignedBatch> = (1..=4)
            .map(|a| net.batch(a, 1, MAX_OPS_PER_BATCH, 8))
            .collect();
        assert_eq!(d.validate_block(&block_1(1, full.clone()), None), Ok(()));
        let mut over = full;
        over.push(net.batch(1, 2, 1, 8));
        assert_eq!(
            d.validate_block(&block_1(1, over), None),
            Err(InvalidBlock::TooManyOps(MAX_OPS_PER_BLOCK + 1))
        );
    }

    /// Each author's batches in a block follow on from its last decided one
    /// without a gap. Before, any seq above the last was accepted, so a
    /// Byzantine proposer could decide an author's #2 ahead of its #1 and
    /// make #1 a replay forever.
    #[test]
    fn batches_follow_on_without_gaps_or_replays() {
        let net = Net::new(4);
        let (mut d, _) = net.driver(net.cfg(1));
        let (b1, b2) = (net.batch(2, 1, 1, 8), net.batch(2, 2, 1, 8));
        assert_eq!(
            d.validate_block(&block_1(2, vec![b2.clone()]), None),
            Err(InvalidBlock::BatchSeqGap {
                index: 0,
                author: PartyId(2),
                seq: 2,
                expected: 1
            })
        );
        assert_eq!(
            d.validate_block(&block_1(2, vec![b1.clone(), b2.clone()]), None),
            Ok(())
        );
        assert_eq!(
            d.validate_block(&block_1(2, vec![b1.clone(), b1]), None),
            Err(InvalidBlock::BatchReplayed {
                index: 1,
                author: PartyId(2),
                seq: 1,
                last: 1
            })
        );
    }

    /// The two halves of check_block see what the driver sees: a stranger
    /// as proposer, a block of 1 with a certificate, time that does not
    /// advance, and the clock bound only for proposals.
    #[test]
    fn header_rules() {
        let net = Net::new(4);
        let (mut d, _) = net.driver(net.cfg(1));
        let b = net.batch(2, 1, 1, 8);
        let mut c: BlockContents = block_1(9, vec![b.clone()]).into();
        assert_eq!(
            d.validate_block(&Block::new(c.clone()), None),
            Err(InvalidBlock::UnknownProposer(PartyId(9)))
        );
        c.header.proposer = PartyId(2);
        c.header.time_ms = 0;
        assert_eq!(
            d.validate_block(&Block::new(c.clone()), None),
            Err(InvalidBlock::TimeNotAdvancing {
                time_ms: 0,
                parent_ms: 0
            })
        );
        c.header.time_ms = 1_000 + BLOCK_TIME_AHEAD_MS + 1;
        let ahead = Block::new(c);
        assert_eq!(d.validate_block(&ahead, None), Ok(()));
        assert_eq!(
            d.validate_block(&ahead, Some(1_000)),
            Err(InvalidBlock::TimeTooFarAhead {
                time_ms: 6_001,
                bound_ms: 6_000
            })
        );
    }

    /// The window is closed at both ends: a time exactly `ahead_ms` ahead
    /// or `behind_ms` behind the clock is timely, one ms more is not.
    #[test]
    fn the_clock_window_is_closed_at_both_ends() {
        let w = ClockWindow {
            ahead_ms: 5_000,
            behind_ms: 3_000,
        };
        let clock = 100_000;
        assert_eq!(check_block_time(105_000, clock, w), Ok(()));
        assert_eq!(check_block_time(97_000, clock, w), Ok(()));
        assert_eq!(check_block_time(clock, clock, w), Ok(()));
        assert_eq!(
            check_block_time(105_001, clock, w),
            Err(InvalidBlock::TimeTooFarAhead {
                time_ms: 105_001,
                bound_ms: 105_000
            })
        );
        assert_eq!(
            check_block_time(96_999, clock, w),
            Err(InvalidBlock::TimeTooFarBehind {
                time_ms: 96_999,
                bound_ms: 97_000
            })
        );
        // No underflow near zero.
        assert_eq!(check_block_time(1, 2_000, w), Ok(()));
    }

    /// Block 1 at `time_ms` carrying one batch of `proposer`, proposed by
    /// it for (1, `round`) with `pol_round`, signed: the frame a validator
    /// receives.
    fn proposal(
        net: &Net,
        proposer: PartyId,
        time_ms: u64,
        round: Round,
        pol_round: Round,
    ) -> (Block, Vec<u8>) {
        let mut c: BlockContents = block_1(proposer.0, vec![net.batch(proposer.0, 1, 1, 8)]).into();
        c.header.time_ms = time_ms;
        let block = Block::new(c);
        let proposal = Proposal {
            height: Height(1),
            round,
            block: block.clone(),
            pol_round,
            proposer,
        };
        let ctx = QuorateContext {
            cluster: net.c.id,
            epoch: Epoch(0),
        };
        let signature = net
            .c
            .sign(proposer.0, &proposal.signed_bytes(&ctx).encode());
        let frame = PeerMessage::Proposal(SignedProposalWire {
            proposal,
            signature,
        })
        .encode();
        (block, frame)
    }

    /// Whether the step asks to sign a prevote for `block`.
    fn prevotes(step: &Step, block: &Block) -> bool {
        step.actions.iter().any(|a| match a {
            Action::Sign { bytes, .. } => postcard::from_bytes::<SignedBytes>(bytes)
                .is_ok_and(|sb| sb.step == MsgStep::Prevote && sb.value == Some(block.hash())),
            _ => false,
        })
    }

    /// A validator refuses a fresh proposal whose time is 60 s behind or
    /// ahead of its clock (it does not prevote it; it prevotes nil when
    /// its propose timeout fires) and prevotes one within the window.
    /// Before, only a time more than 30 s ahead was refused: a proposal
    /// 60 s in the past was prevoted.
    #[test]
    fn a_fresh_proposal_outside_the_clock_window_is_refused() {
        const NOW: u64 = 1_700_000_000_000;
        let net = Net::new(4);
        let proposer = net.parties.proposer(Height(1), Round::new(0)).id;
        let me = if proposer == PartyId(1) { 2 } else { 1 };
        let cases = [
            (NOW - 60_000, Some(false)),
            (NOW + 60_000, Some(true)),
            (NOW - 4_000, None),
            (NOW + 4_000, None),
        ];
        for (time_ms, refused_ahead) in cases {
            let (mut d, _) = ConsensusDriver::new(net.cfg(me), NOW);
            let (block, frame) = proposal(&net, proposer, time_ms, Round::new(0), Round::Nil);
            let step = d
                .handle(
                    NOW,
                    Input::Peer {
                        from: proposer,
                        bytes: frame,
                    },
                )
                .unwrap();
            match refused_ahead {
                None => {
                    assert!(step.faults.is_empty(), "{time_ms}: {:?}", step.faults);
                    assert!(prevotes(&step, &block), "{time_ms}: not prevoted");
                }
                Some(ahead) => {
                    assert!(!prevotes(&step, &block), "{time_ms}: prevoted");
                    let bound_ms = if ahead {
                        NOW + BLOCK_TIME_AHEAD_MS
                    } else {
                        NOW - BLOCK_TIME_BEHIND_MS
                    };
                    let reason = if ahead {
                        InvalidBlock::TimeTooFarAhead { time_ms, bound_ms }
                    } else {
                        InvalidBlock::TimeTooFarBehind { time_ms, bound_ms }
                    };
                    assert_eq!(
                        step.faults,
                        vec![PeerFault::InvalidBlock {
                            from: proposer,
                            reason
                        }]
                    );
                }
            }
        }
    }

    /// A proposal that arrived before its height started is checked
    /// against the clock when it arrived, not when it is handled; a
    /// re-proposal (proof-of-lock round set) is not checked against the
    /// clock at all (a quorum checked its block when it was fresh).
    #[test]
    fn early_proposals_keep_their_arrival_time_and_re_proposals_skip_the_window() {
        const NOW: u64 = 1_700_000_000_000;
        let net = Net::new(4);
        let proposer = net.parties.proposer(Height(1), Round::new(1)).id;
        let me = if proposer == PartyId(1) { 2 } else { 1 };
        let (mut d, _) = ConsensusDriver::new(net.cfg(me), NOW);
        let (_, frame) = proposal(&net, proposer, NOW - 60_000, Round::new(1), Round::new(0));
        let step = d
            .handle(
                NOW,
                Input::Peer {
                    from: proposer,
                    bytes: frame,
                },
            )
            .unwrap();
        assert!(step.faults.is_empty(), "{:?}", step.faults);

        let proposer = net.parties.proposer(Height(1), Round::new(0)).id;
        let me = if proposer == PartyId(1) { 2 } else { 1 };
        let mut cfg = net.cfg(me);
        cfg.app_state = true;
        let (mut d, _) = ConsensusDriver::new(cfg, NOW);
        // Held while the host has not applied the last block (its batch is
        // work, which starts the height once the host has).
        d.awaiting_app = true;
        let (block, frame) = proposal(&net, proposer, NOW, Round::new(0), Round::Nil);
        Net::gossip(&mut d, NOW, proposer.0, &block.batches()[0]);
        let step = d
            .handle(
                NOW,
                Input::Peer {
                    from: proposer,
                    bytes: frame,
                },
            )
            .unwrap();
        assert!(step.faults.is_empty() && !prevotes(&step, &block));
        // Applied 10 s later: timely on arrival, so prevoted now.
        let step = d
            .set_app_state(NOW + 10_000, LogHead::empty(), false)
            .unwrap();
        assert!(step.faults.is_empty(), "{:?}", step.faults);
        assert!(prevotes(&step, &block));
    }

    /// An application deadline (`set_wake_at`) is work once our clock
    /// reaches it, and makes an empty block valid once the block's time
    /// reaches it; before it, an idle party starts nothing and an empty
    /// block is refused.
    #[test]
    fn a_reached_deadline_is_work_and_makes_an_empty_block_valid() {
        let net = Net::new(4);
        let (mut d, _) = net.driver(net.cfg(1));
        let empty = block_1(2, Vec::new());
        assert_eq!(d.validate_block(&empty, None), Err(InvalidBlock::Empty));
        d.set_wake_at(Some(1_501));
        assert_eq!(d.validate_block(&empty, None), Err(InvalidBlock::Empty));
        assert!(!starts_work(&d.handle(1_400, Input::Tick).unwrap()));
        d.set_wake_at(Some(1_500));
        assert_eq!(d.validate_block(&empty, None), Ok(()));
        assert!(starts_work(&d.handle(1_500, Input::Tick).unwrap()));
    }

    use super::super::testkit::starts_work;
    use super::super::{Action, Input, Step};
    use crate::consensus::context::{BlockContents, Proposal, SignedBytes, Step as MsgStep};
    use crate::consensus::wire::{PeerMessage, SignedProposalWire};
    use malachitebft_core_types::Round;
}
