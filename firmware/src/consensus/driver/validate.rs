//! Block validity: what an honest party checks before it lets the core
//! see a proposed or fetched block.

use super::ConsensusDriver;
use crate::consensus::certificate::{verify_commit_certificate_cached, verify_equivocation};
use crate::consensus::context::Block;
use crate::types::PartyId;
use std::collections::{BTreeMap, BTreeSet};

impl ConsensusDriver {
    /// Checks a block against the chain: header, batches, evidence, size.
    pub(super) fn validate_block(
        &mut self,
        block: &Block,
        proposer: Option<PartyId>,
        check_clock: bool,
    ) -> Result<(), String> {
        let h = block.header();
        if h.height != self.io.height_in_progress {
            return Err(format!(
                "height {} is not {}",
                h.height, self.io.height_in_progress
            ));
        }
        if h.parent != self.chain.hash {
            return Err("parent is not our last decided block".into());
        }
        // The header names the party that built the block; a later round
        // may re-propose it (proof-of-lock), so it need not be the proposer
        // of the proposal that carries it.
        let _ = proposer;
        if !self.io.cfg.parties.contains(h.proposer) {
            return Err("proposer is not a member".into());
        }
        if h.time_ms <= self.chain.time_ms {
            return Err("time does not advance".into());
        }
        if check_clock && h.time_ms > self.io.now.saturating_add(self.io.cfg.max_clock_skew_ms) {
            return Err("time too far in the future".into());
        }
        if block.encoded_len() > self.io.cfg.max_block_bytes {
            return Err("block too large".into());
        }
        self.validate_last_commit(block)?;
        if h.log != self.log_head {
            return Err(format!(
                "audit log head is size {} root {}, ours is size {} root {}",
                h.log.size, h.log.root, self.log_head.size, self.log_head.root
            ));
        }
        if block.batches().is_empty() && block.evidence().is_empty() && !self.log_pending {
            return Err("empty block".into());
        }
        let mut seqs: BTreeMap<PartyId, u64> = BTreeMap::new();
        for b in block.batches() {
            if b.body.cluster != self.io.cfg.cluster {
                return Err("batch for another cluster".into());
            }
            let key = self
                .io
                .cfg
                .parties
                .key_of(b.body.author)
                .copied()
                .ok_or("batch author is not a member")?;
            let last = seqs
                .get(&b.body.author)
                .copied()
                .or_else(|| self.chain.last_seq.get(&b.body.author).copied())
                .unwrap_or(0);
            if b.body.seq <= last {
                return Err(format!(
                    "batch {}#{} replays or reorders",
                    b.body.author, b.body.seq
                ));
            }
            seqs.insert(b.body.author, b.body.seq);
            if !self
                .io
                .cache
                .verify(&key, &b.body.signing_bytes(), &b.signature)
            {
                return Err("batch signature does not verify".into());
            }
        }
        let mut keys = BTreeSet::new();
        for ev in block.evidence() {
            verify_equivocation(&self.io.ctx, &self.io.cfg.parties, ev, &mut self.io.cache)
                .map_err(|e| e.to_string())?;
            let k = ev.key();
            if self.chain.evidence.contains(&k) || !keys.insert(k) {
                return Err("evidence already recorded".into());
            }
        }
        Ok(())
    }

    /// Block h must carry a valid commit certificate of our block h-1.
    fn validate_last_commit(&mut self, block: &Block) -> Result<(), String> {
        let h = block.header().height;
        match (&block.header().last_commit, h.0) {
            (None, 1) => Ok(()),
            (Some(_), 1) => Err("block 1 carries a parent certificate".into()),
            (None, _) => Err("missing the parent's commit certificate".into()),
            (Some(cert), _) => verify_commit_certificate_cached(
                &self.io.cfg.parties,
                self.io.cfg.fault_model,
                self.io.cfg.cluster,
                self.io.cfg.epoch,
                self.chain.height,
                self.chain.hash,
                cert,
                &mut self.io.cache,
            )
            .map_err(|e| format!("parent's commit certificate: {e}")),
        }
    }
}
