//! The mempool: batches waiting to be decided, and the blocks a proposer
//! builds from them.

use super::{ConsensusDriver, DriverError};
use crate::batch::SignedBatch;
use crate::consensus::context::{Block, BlockContents, BlockHeader};
use crate::types::{Height, PartyId};
use std::collections::BTreeMap;

/// Most undecided batches kept per author (a member cannot exhaust memory).
pub const MAX_PENDING_PER_AUTHOR: usize = 4096;

impl ConsensusDriver {
    pub(super) fn add_batch(&mut self, b: SignedBatch) -> Result<(), DriverError> {
        if b.body.cluster != self.io.cfg.cluster {
            return Err(DriverError::BadBatch("batch for another cluster".into()));
        }
        let key = self
            .io
            .cfg
            .parties
            .key_of(b.body.author)
            .copied()
            .ok_or_else(|| {
                DriverError::BadBatch(format!("author {} is not a member", b.body.author))
            })?;
        let last = self
            .chain
            .last_seq
            .get(&b.body.author)
            .copied()
            .unwrap_or(0);
        if b.body.seq <= last {
            return Ok(()); // already decided: a replay or a late gossip
        }
        if b.encoded_len() + 256 > self.io.cfg.max_block_bytes {
            return Err(DriverError::BadBatch("batch larger than a block".into()));
        }
        if self.mempool.contains_key(&(b.body.author, b.body.seq)) {
            return Ok(());
        }
        let pending_of_author = self
            .mempool
            .range((b.body.author, 0)..=(b.body.author, u64::MAX))
            .count();
        if pending_of_author >= MAX_PENDING_PER_AUTHOR {
            return Err(DriverError::BadBatch(format!(
                "{} already has {MAX_PENDING_PER_AUTHOR} undecided batches",
                b.body.author
            )));
        }
        if !self
            .io
            .cache
            .verify(&key, &b.body.signing_bytes(), &b.signature)
        {
            return Err(DriverError::BadBatch(
                "batch signature does not verify".into(),
            ));
        }
        self.mempool.insert((b.body.author, b.body.seq), b);
        Ok(())
    }

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
        let budget = self.io.cfg.max_block_bytes.saturating_sub(256);
        let mut used = 0usize;
        let mut evidence = Vec::new();
        for ev in self.evidence_pool.values() {
            let len = postcard::experimental::serialized_size(ev).unwrap_or(usize::MAX);
            if used.saturating_add(len) <= budget {
                used += len;
                evidence.push(ev.clone());
            }
        }
        let mut batches = Vec::new();
        let mut next_seq: BTreeMap<PartyId, u64> = BTreeMap::new();
        for ((author, seq), b) in &self.mempool {
            let expect = next_seq
                .get(author)
                .copied()
                .unwrap_or_else(|| self.chain.last_seq.get(author).copied().unwrap_or(0) + 1);
            // Honest proposers include consecutive runs only, so that a
            // batch delayed in gossip is never overtaken by its successor.
            if *seq != expect {
                continue;
            }
            let len = b.encoded_len();
            if used.saturating_add(len) > budget {
                break;
            }
            used += len;
            next_seq.insert(*author, seq + 1);
            batches.push(b.clone());
        }
        Some(Block::new(BlockContents {
            header: BlockHeader {
                height: h,
                time_ms: self.io.now.max(self.chain.time_ms + 1),
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
