//! The mempool: batches waiting to be decided, and the blocks a proposer
//! builds from them.
//!
//! * **Admission** ([`ConsensusDriver::add_batch`]): a batch enters only if
//!   it passes the batch rules ([`super::validate::check_batch_cached`]:
//!   what validators would refuse in a block never takes memory here) and
//!   fits the caps: [`MAX_PENDING_PER_AUTHOR`] batches and
//!   [`MAX_POOL_BYTES_PER_AUTHOR`] bytes per author, [`MAX_POOL_BYTES`] in
//!   all. When the whole pool is full, the author holding the most bytes
//!   gives way (its latest batch is dropped) to an author holding fewer;
//!   so a flooding member cannot lock a correct one out.
//! * **Ready and parked**: an author's batches that follow on from its last
//!   decided one without a gap are *ready*: only they make work
//!   ([`ConsensusDriver::has_work`]) and go into blocks. The others are
//!   *parked* until the gap closes, and dropped after
//!   [`PARK_TIMEOUT_MS`]: a gap alone never starts a height.
//! * **Fairness** ([`ConsensusDriver::build_block`]): blocks are filled
//!   round-robin, one batch per author per turn, starting with the authors
//!   whose batches were decided longest ago; a batch that does not fit is
//!   skipped (with the rest of its author's run), not the end of the block.

use super::validate::MAX_OPS_PER_BLOCK;
use super::{ChainState, ConsensusDriver, DriverConfig};
use crate::batch::SignedBatch;
use crate::consensus::context::{Block, BlockContents, BlockHeader};
use crate::sessions::ops::BatchError;
use crate::types::{Height, PartyId};
use std::collections::BTreeMap;

/// Most undecided batches kept per author (a member cannot exhaust memory
/// with many small batches).
pub const MAX_PENDING_PER_AUTHOR: usize = 4096;

/// Most bytes of undecided batches kept per author (the default of
/// [`DriverConfig::max_pool_bytes_per_author`]; never less than one block).
///
/// A correct author keeps one batch in flight (the daemon signs its next
/// batch only after the last one is decided), of at most one block, so
/// its share is never the limit; eight default (1 MiB) blocks leave room for
/// an author that signs ahead, while what one member can pin in every
/// other party's memory stays small.
pub const MAX_POOL_BYTES_PER_AUTHOR: usize = 8 << 20;

/// Most bytes of undecided batches kept in all (the default of
/// [`DriverConfig::max_pool_bytes`]).
///
/// Bounds the mempool whatever the cluster size. Below it, every author
/// gets its own share in full (eight authors at
/// [`MAX_POOL_BYTES_PER_AUTHOR`]); above it, the author holding the most
/// gives way, so an author with one block-sized batch always gets in while
/// 64 MiB / 1 MiB = 64 authors share the pool.
pub const MAX_POOL_BYTES: usize = 64 << 20;

/// How long a parked batch (one whose predecessor is missing) is kept, in
/// milliseconds of our clock (the default of
/// [`DriverConfig::park_timeout_ms`]).
///
/// Gossip reorders batches by milliseconds, and an author re-gossips its
/// own undecided batches every tip interval (1 s by default), so a gap a
/// correct author left closes within a few seconds; 30 s is thirty tip
/// intervals. A batch still parked then is a Byzantine author's (or its
/// correct author sends it again with its next re-gossip).
pub const PARK_TIMEOUT_MS: u64 = 30_000;

/// Why a batch was refused: a fault of its author or of the peer that
/// relayed it (or, for [`Input::SubmitBatch`](super::Input::SubmitBatch),
/// of the local application). The batch is dropped; nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadBatch {
    /// It breaks a batch rule validators check in every block.
    #[error(transparent)]
    Rule(#[from] BatchError),
    /// It cannot fit in any block.
    #[error(
        "batch of {bytes} bytes cannot fit in a block (at most {max} bytes of batches): split it"
    )]
    LargerThanBlock {
        /// Its encoded size.
        bytes: usize,
        /// The most a block holds besides its header.
        max: usize,
    },
    /// Its author has [`MAX_PENDING_PER_AUTHOR`] batches waiting.
    #[error("{0} already has {MAX_PENDING_PER_AUTHOR} undecided batches")]
    AuthorBacklogFull(PartyId),
    /// Its author's waiting batches would exceed the per-author byte cap.
    #[error(
        "{author}'s undecided batches would hold {bytes} bytes, more than its {cap}-byte share"
    )]
    AuthorBytesFull {
        /// The author.
        author: PartyId,
        /// What its batches would hold with this one.
        bytes: usize,
        /// The cap.
        cap: usize,
    },
    /// The pool is full of batches of authors that hold no more than this
    /// one's would.
    #[error("the mempool is full ({cap} bytes) and no author holds more than {author} would")]
    PoolFull {
        /// The author.
        author: PartyId,
        /// The cap.
        cap: usize,
    },
}

#[derive(Clone, Debug)]
struct Pooled {
    batch: SignedBatch,
    bytes: usize,
    arrived_ms: u64,
}

/// Undecided batches by (author, seq), with their byte counts.
#[derive(Clone, Debug, Default)]
pub(super) struct Mempool {
    batches: BTreeMap<(PartyId, u64), Pooled>,
    bytes_of: BTreeMap<PartyId, usize>,
    bytes: usize,
    /// The height of each author's last decided batch (not persisted: after
    /// a restart every author starts even).
    served: BTreeMap<PartyId, Height>,
}

fn next_seq(chain: &ChainState, author: PartyId) -> u64 {
    chain
        .last_seq
        .get(&author)
        .copied()
        .unwrap_or(0)
        .saturating_add(1)
}

impl Mempool {
    /// Every batch held, ready or parked.
    pub(super) fn len(&self) -> usize {
        self.batches.len()
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    fn contains(&self, author: PartyId, seq: u64) -> bool {
        self.batches.contains_key(&(author, seq))
    }

    fn count_of(&self, author: PartyId) -> usize {
        self.batches.range((author, 0)..=(author, u64::MAX)).count()
    }

    fn authors(&self) -> impl Iterator<Item = PartyId> + '_ {
        self.bytes_of.keys().copied()
    }

    /// The author's ready run: its batches from its next sequence number on,
    /// without a gap.
    fn run_of<'a>(
        &'a self,
        chain: &ChainState,
        author: PartyId,
    ) -> impl Iterator<Item = &'a Pooled> + 'a {
        let mut expect = next_seq(chain, author);
        self.batches
            .range((author, expect)..=(author, u64::MAX))
            .take_while(move |((_, s), _)| {
                let ok = *s == expect;
                expect = expect.saturating_add(1);
                ok
            })
            .map(|(_, p)| p)
    }

    /// Whether some author has a ready batch.
    pub(super) fn has_ready(&self, chain: &ChainState) -> bool {
        self.authors().any(|a| self.contains(a, next_seq(chain, a)))
    }

    /// How many batches are ready.
    pub(super) fn ready(&self, chain: &ChainState) -> usize {
        self.authors().map(|a| self.run_of(chain, a).count()).sum()
    }

    fn remove(&mut self, key: (PartyId, u64)) {
        if let Some(p) = self.batches.remove(&key) {
            self.bytes = self.bytes.saturating_sub(p.bytes);
            if let Some(b) = self.bytes_of.get_mut(&key.0) {
                *b = b.saturating_sub(p.bytes);
                if *b == 0 && self.count_of(key.0) == 0 {
                    self.bytes_of.remove(&key.0);
                }
            }
        }
    }

    /// Adds a batch that passed the batch rules, within the caps.
    fn insert(
        &mut self,
        cfg: &DriverConfig,
        batch: SignedBatch,
        bytes: usize,
        now_ms: u64,
    ) -> Result<(), BadBatch> {
        let author = batch.body.author;
        if self.count_of(author) >= MAX_PENDING_PER_AUTHOR {
            return Err(BadBatch::AuthorBacklogFull(author));
        }
        let held = self.bytes_of.get(&author).copied().unwrap_or(0);
        let after = held.saturating_add(bytes);
        let cap = cfg.max_pool_bytes_per_author.max(cfg.max_block_bytes);
        if after > cap {
            return Err(BadBatch::AuthorBytesFull {
                author,
                bytes: after,
                cap,
            });
        }
        let total_cap = cfg.max_pool_bytes.max(cap);
        while self.bytes.saturating_add(bytes) > total_cap {
            // The author holding the most gives way, if it holds more than
            // this author would: its latest batch (the last it would get
            // into a block) goes.
            let biggest = self
                .bytes_of
                .iter()
                .filter(|(a, _)| **a != author)
                .max_by_key(|(a, b)| (**b, std::cmp::Reverse(**a)))
                .map(|(a, b)| (*a, *b));
            match biggest {
                Some((victim, held)) if held > after => {
                    let last = self
                        .batches
                        .range((victim, 0)..=(victim, u64::MAX))
                        .next_back()
                        .map(|(k, _)| *k);
                    match last {
                        Some(k) => self.remove(k),
                        None => {
                            self.bytes_of.remove(&victim);
                        }
                    }
                }
                _ => {
                    return Err(BadBatch::PoolFull {
                        author,
                        cap: total_cap,
                    })
                }
            }
        }
        self.bytes = self.bytes.saturating_add(bytes);
        *self.bytes_of.entry(author).or_insert(0) = after;
        self.batches.insert(
            (author, batch.body.seq),
            Pooled {
                batch,
                bytes,
                arrived_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Drops what `chain` (after the block decided at `height`) decided.
    pub(super) fn prune_decided(&mut self, chain: &ChainState, block: &Block) {
        for b in block.batches() {
            self.served.insert(b.body.author, block.header().height);
        }
        let done: Vec<(PartyId, u64)> = self
            .batches
            .keys()
            .filter(|(a, s)| *s < next_seq(chain, *a))
            .copied()
            .collect();
        for k in done {
            self.remove(k);
        }
    }

    /// Drops parked batches older than `timeout_ms`; returns how many.
    pub(super) fn evict_parked(
        &mut self,
        chain: &ChainState,
        now_ms: u64,
        timeout_ms: u64,
    ) -> usize {
        let stale: Vec<(PartyId, u64)> = self
            .authors()
            .flat_map(|a| {
                let ready = self.run_of(chain, a).count() as u64;
                let first_parked = next_seq(chain, a).saturating_add(ready);
                self.batches
                    .range((a, first_parked)..=(a, u64::MAX))
                    .filter(|(_, p)| now_ms.saturating_sub(p.arrived_ms) > timeout_ms)
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
            })
            .collect();
        let n = stale.len();
        for k in stale {
            self.remove(k);
        }
        n
    }

    /// The batches of `author` (for re-gossip of our own).
    pub(super) fn of(&self, author: PartyId) -> Vec<SignedBatch> {
        self.batches
            .range((author, 0)..=(author, u64::MAX))
            .map(|(_, p)| p.batch.clone())
            .collect()
    }

    /// Picks batches for a block: round-robin over authors, one batch per
    /// author per turn, authors served longest ago first (ties broken by a
    /// rotation with `height`), each author's ready run in order; a batch
    /// that does not fit `budget` bytes or the operation cap ends its
    /// author's turns, not the block.
    fn pick(
        &self,
        chain: &ChainState,
        parties: &[PartyId],
        height: Height,
        budget: usize,
    ) -> Vec<SignedBatch> {
        let n = parties.len().max(1);
        let rot = usize::try_from(height.0 % n as u64).unwrap_or(0);
        let mut order: Vec<(Height, usize, PartyId)> = parties
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    self.served.get(a).copied().unwrap_or(Height(0)),
                    (i + n - rot) % n,
                    *a,
                )
            })
            .collect();
        order.sort();
        let mut runs: Vec<_> = order
            .iter()
            .map(|(_, _, a)| self.run_of(chain, *a).peekable())
            .collect();
        let (mut used, mut ops) = (0usize, 0usize);
        let mut out = Vec::new();
        loop {
            let mut took = false;
            for run in runs.iter_mut() {
                let Some(p) = run.peek() else { continue };
                let fits = used.saturating_add(p.bytes) <= budget
                    && ops.saturating_add(p.batch.body.ops.len()) <= MAX_OPS_PER_BLOCK;
                if !fits {
                    // The rest of this author's run must wait for its
                    // predecessor: skip the author, fill with the others.
                    while run.next().is_some() {}
                    continue;
                }
                used += p.bytes;
                ops += p.batch.body.ops.len();
                out.push(p.batch.clone());
                run.next();
                took = true;
            }
            if !took {
                return out;
            }
        }
    }
}

impl ConsensusDriver {
    /// Offers a batch (gossiped, or submitted by the local application) to
    /// the mempool.
    pub(super) fn add_batch(&mut self, b: SignedBatch) -> Result<(), BadBatch> {
        let (author, seq) = (b.body.author, b.body.seq);
        if seq < next_seq(&self.chain, author) && self.io.cfg.parties.contains(author) {
            return Ok(()); // already decided: a replay or a late gossip
        }
        if self.mempool.contains(author, seq) {
            return Ok(());
        }
        let bytes = b.encoded_len();
        let max = self.batch_budget();
        if bytes > max {
            return Err(BadBatch::LargerThanBlock { bytes, max });
        }
        self.check_batch(&b)?;
        let now = self.io.now;
        self.mempool.insert(&self.io.cfg, b, bytes, now)
    }

    /// Bytes of batches and evidence a block holds besides its header.
    pub(super) fn batch_budget(&self) -> usize {
        // The header: fixed fields and the parent's certificate (one
        // signature per party at most), with room for encoding overhead.
        let header = 256usize.saturating_add(self.io.cfg.parties.len().saturating_mul(80));
        self.io.cfg.max_block_bytes.saturating_sub(header)
    }

    /// Drops parked batches past [`DriverConfig::park_timeout_ms`].
    pub(super) fn evict_parked(&mut self) {
        let (now, timeout) = (self.io.now, self.io.cfg.park_timeout_ms);
        self.mempool.evict_parked(&self.chain, now, timeout);
    }

    /// A block for height `h` from the pool (see [`Mempool::pick`]), with
    /// the evidence waiting to be recorded first.
    pub(super) fn build_block(&self, h: Height) -> Option<Block> {
        let last_commit = if h.0 <= 1 {
            None
        } else {
            let d = self.recent.back()?;
            if d.block.header().height != self.chain.height {
                return None;
            }
            Some(d.certificate.clone())
        };
        let budget = self.batch_budget();
        let mut used = 0usize;
        let mut evidence = Vec::new();
        for ev in self.evidence_pool.values() {
            let len = postcard::experimental::serialized_size(ev).unwrap_or(usize::MAX);
            if used.saturating_add(len) <= budget {
                used += len;
                evidence.push(ev.clone());
            }
        }
        let parties: Vec<PartyId> = self.io.cfg.parties.parties().iter().map(|p| p.id).collect();
        let batches = self
            .mempool
            .pick(&self.chain, &parties, h, budget.saturating_sub(used));
        Some(Block::new(BlockContents {
            header: BlockHeader {
                height: h,
                time_ms: self.io.clock.max(self.chain.time_ms.saturating_add(1)),
                parent: self.chain.hash,
                proposer: self.io.cfg.me,
                last_commit,
                log: self.log_head,
            },
            batches,
            evidence,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::super::testkit::{starts_work, Net};
    use super::super::{Input, PeerFault};
    use super::*;

    fn authors(b: &Block) -> Vec<(u32, u64)> {
        b.batches()
            .iter()
            .map(|b| (b.body.author.0, b.body.seq))
            .collect()
    }

    /// One author's backlog does not own the blocks: P3's single batch goes
    /// into the next block although P2 has many waiting, each a third of a
    /// block. Before, blocks were filled in (author, seq) order and stopped
    /// at the first batch that did not fit: P2's backlog took every block.
    #[test]
    fn a_flooding_author_does_not_starve_another() {
        let net = Net::new(4);
        let mut cfg = net.cfg(1);
        cfg.max_block_bytes = 64 * 1024;
        let (mut d, _) = net.driver(cfg);
        let third = d.batch_budget() / 3 - 200;
        for seq in 1..=12 {
            let b = net.batch(2, seq, 1, third);
            assert!(Net::gossip(&mut d, 1_100, 2, &b).faults.is_empty());
        }
        let mine = net.batch(3, 1, 1, 64);
        assert!(Net::gossip(&mut d, 1_200, 3, &mine).faults.is_empty());
        let block = d.build_block(Height(1)).unwrap();
        assert!(authors(&block).contains(&(3, 1)), "{:?}", authors(&block));
        // P2 still fills the rest of the block, in order.
        let p2: Vec<u64> = authors(&block)
            .iter()
            .filter(|(a, _)| *a == 2)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(p2, vec![1, 2]);
        assert_eq!(d.validate_block(&block, None), Ok(()));
    }

    /// A batch that does not fit ends its author's share of the block, not
    /// the block: P4's small batch still goes in after P3's large one is
    /// skipped. Before, the block ended at P3's batch.
    #[test]
    fn what_does_not_fit_is_skipped() {
        let net = Net::new(4);
        let mut cfg = net.cfg(1);
        cfg.max_block_bytes = 64 * 1024;
        let (mut d, _) = net.driver(cfg);
        let big = d.batch_budget() * 6 / 10;
        for (a, bytes) in [(2, big), (3, big), (4, 64)] {
            let b = net.batch(a, 1, 1, bytes);
            assert!(Net::gossip(&mut d, 1_100, a, &b).faults.is_empty());
        }
        let block = d.build_block(Height(1)).unwrap();
        let got = authors(&block);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&(4, 1)), "{got:?}");
    }

    /// Authors whose batches were decided longest ago come first: after P2
    /// filled a block, P3's batch leads the next one.
    #[test]
    fn the_author_served_longest_ago_goes_first() {
        let net = Net::new(4);
        let (mut d, _) = net.driver(net.cfg(1));
        let b = net.batch(2, 1, 1, 64);
        Net::gossip(&mut d, 1_100, 2, &b);
        let block = d.build_block(Height(1)).unwrap();
        let chain = d.chain.after(&block);
        d.mempool.prune_decided(&chain, &block);
        d.chain = chain;
        for (a, seq) in [(2, 2), (3, 1)] {
            let b = net.batch(a, seq, 1, 64);
            Net::gossip(&mut d, 1_200, a, &b);
        }
        let parties: Vec<PartyId> = (1..=4).map(PartyId).collect();
        let picked = d.mempool.pick(&d.chain, &parties, Height(2), usize::MAX);
        let order: Vec<u32> = picked.iter().map(|b| b.body.author.0).collect();
        assert_eq!(order, vec![3, 2]);
    }

    /// A batch whose predecessor is missing is parked: it does not make
    /// work (no height starts, no timers climb), it is proposed once the gap
    /// closes, and it is dropped after the park timeout. Before, any batch
    /// above the author's last made `has_work()` true forever.
    #[test]
    fn a_seq_gap_is_parked_makes_no_work_and_is_evicted() {
        let net = Net::new(4);
        let (mut d, _) = net.driver(net.cfg(1));
        let two = net.batch(2, 2, 1, 64);
        let step = Net::gossip(&mut d, 1_100, 2, &two);
        assert!(step.faults.is_empty());
        assert!(!starts_work(&step), "{:?}", step.actions);
        assert_eq!((d.pending_batches(), d.parked_batches()), (0, 1));
        assert!(!d.has_work());
        let step = d.handle(2_000, Input::Tick).unwrap();
        assert!(!starts_work(&step));
        // The gap closes: both are ready, and work starts.
        let one = net.batch(2, 1, 1, 64);
        let step = Net::gossip(&mut d, 2_100, 2, &one);
        assert!(starts_work(&step));
        assert_eq!((d.pending_batches(), d.parked_batches()), (2, 0));
        let block = d.build_block(Height(1)).unwrap();
        assert_eq!(authors(&block), vec![(2, 1), (2, 2)]);

        // Another gap, from P3, outlives the park timeout.
        let net = Net::new(4);
        let (mut d, tip) = net.driver(net.cfg(1));
        let far = net.batch(3, 5, 1, 64);
        Net::gossip(&mut d, 1_100, 3, &far);
        let step = d.handle(2_000, Input::TimeoutFired(tip)).unwrap();
        assert_eq!(d.parked_batches(), 1, "kept within the timeout");
        let next_tip = step
            .actions
            .iter()
            .find_map(|a| match a {
                super::super::Action::ScheduleTimeout { id, .. } => Some(*id),
                _ => None,
            })
            .unwrap();
        d.handle(1_100 + PARK_TIMEOUT_MS + 1, Input::TimeoutFired(next_tip))
            .unwrap();
        assert_eq!((d.parked_batches(), d.pool_bytes()), (0, 0));
    }

    /// The byte caps: an author may hold at most its share, and when the
    /// whole pool is full the author holding the most gives way to one
    /// holding less. Before, only the count (4096 batches) was capped.
    #[test]
    fn byte_caps_per_author_and_in_all() {
        let net = Net::new(4);
        let mut cfg = net.cfg(1);
        cfg.max_block_bytes = 8 * 1024;
        cfg.max_pool_bytes_per_author = 8 * 1024;
        cfg.max_pool_bytes = 16 * 1024;
        let (mut d, _) = net.driver(cfg);
        let batch = |a: u32, seq: u64| net.batch(a, seq, 1, 1_800);
        let len = batch(2, 1).encoded_len();
        assert!(len * 4 <= 8 * 1024 && len * 5 > 8 * 1024);
        for seq in 1..=4 {
            assert!(Net::gossip(&mut d, 1_100, 2, &batch(2, seq))
                .faults
                .is_empty());
        }
        let step = Net::gossip(&mut d, 1_100, 2, &batch(2, 5));
        assert!(matches!(
            &step.faults[..],
            [PeerFault::BadBatch {
                reason: BadBatch::AuthorBytesFull {
                    author: PartyId(2),
                    cap: 8192,
                    ..
                },
                ..
            }]
        ));
        for seq in 1..=4 {
            assert!(Net::gossip(&mut d, 1_100, 3, &batch(3, seq))
                .faults
                .is_empty());
        }
        assert_eq!(d.pool_bytes(), 8 * len);
        // P4 gets in: P2 (the largest, lowest id first) drops its latest.
        assert!(Net::gossip(&mut d, 1_100, 4, &batch(4, 1))
            .faults
            .is_empty());
        assert!(d.mempool.contains(PartyId(4), 1));
        assert!(!d.mempool.contains(PartyId(2), 4));
        assert_eq!(d.mempool.count_of(PartyId(2)), 3);
        assert!(d.pool_bytes() <= 16 * 1024);
        // Nobody gives way to an author that would hold as much as they do.
        for seq in 2..=3 {
            Net::gossip(&mut d, 1_100, 4, &batch(4, seq));
        }
        let step = Net::gossip(&mut d, 1_100, 4, &batch(4, 4));
        assert!(matches!(
            &step.faults[..],
            [PeerFault::BadBatch {
                reason: BadBatch::PoolFull { .. },
                ..
            }]
        ));
        // A batch larger than a block never enters.
        let huge = net.batch(2, 4, 1, 9 * 1024);
        assert!(matches!(
            &Net::gossip(&mut d, 1_100, 2, &huge).faults[..],
            [PeerFault::BadBatch {
                reason: BadBatch::LargerThanBlock { .. },
                ..
            }]
        ));
    }
}
