//! Test helpers for the driver's unit tests: a cluster with software keys,
//! drivers for its parties, valid operations and signed batches.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::{Action, ConsensusDriver, DriverConfig, Input, Step, TimerId};
use crate::batch::SignedBatch;
use crate::consensus::context::{Block, BlockContents, BlockHeader, LogHead, Party, PartySet};
use crate::consensus::wire::PeerMessage;
use crate::sessions::ops::{Blob, SessionId, SessionMessage};
use crate::sessions::testkit::Cluster;
use crate::sessions::{OpBody, Operation};
use crate::types::{Epoch, FaultModel, Height, PartyId, Sha256Digest};

/// Parties P1..Pn and their vote keys (also their batch keys).
pub(crate) struct Net {
    pub c: Cluster,
    pub parties: PartySet,
}

/// A valid encoded operation of `author`: a session message whose
/// broadcast part is `bytes` long and starts with `tag`.
pub(crate) fn op(author: u32, tag: u64, bytes: usize) -> Vec<u8> {
    let mut payload = vec![0u8; bytes.max(8)];
    payload[..8].copy_from_slice(&tag.to_be_bytes());
    Operation {
        author: PartyId(author),
        body: OpBody::SessionMessage(SessionMessage {
            session: SessionId(Sha256Digest::of(b"driver test session")),
            round: 1,
            broadcast: Some(Blob(payload)),
            direct: Vec::new(),
        }),
    }
    .encode()
}

impl Net {
    pub fn new(n: u32) -> Self {
        let c = Cluster::new(n);
        let parties = PartySet::new(
            c.keys
                .iter()
                .map(|(id, k)| Party {
                    id: *id,
                    vote_key: *k,
                })
                .collect(),
        )
        .unwrap();
        Net { c, parties }
    }

    pub fn cfg(&self, me: u32) -> DriverConfig {
        DriverConfig::new(
            self.c.id,
            Epoch(0),
            PartyId(me),
            self.parties.clone(),
            FaultModel::Byzantine,
        )
    }

    /// A fresh driver and the id of its tip timer.
    pub fn driver(&self, cfg: DriverConfig) -> (ConsensusDriver, TimerId) {
        let (d, step) = ConsensusDriver::new(cfg, 1_000);
        let tip = step
            .actions
            .iter()
            .find_map(|a| match a {
                Action::ScheduleTimeout { id, .. } => Some(*id),
                _ => None,
            })
            .unwrap();
        (d, tip)
    }

    /// A batch of `author` at `seq` with `ops` operations of `bytes` each.
    pub fn batch(&self, author: u32, seq: u64, ops: usize, bytes: usize) -> SignedBatch {
        let ops = (0..ops)
            .map(|k| op(author, seq * 1_000_000 + k as u64, bytes))
            .collect();
        self.c.batch(author, seq, ops)
    }

    /// Delivers `batch` gossiped by `from`.
    pub fn gossip(d: &mut ConsensusDriver, now: u64, from: u32, b: &SignedBatch) -> Step {
        d.handle(
            now,
            Input::Peer {
                from: PartyId(from),
                bytes: PeerMessage::Batch(b.clone()).encode(),
            },
        )
        .unwrap()
    }
}

/// A block for height 1 on the empty chain carrying `batches`.
pub(crate) fn block_1(proposer: u32, batches: Vec<SignedBatch>) -> Block {
    Block::new(BlockContents {
        header: BlockHeader {
            height: Height(1),
            time_ms: 1_500,
            parent: Default::default(),
            proposer: PartyId(proposer),
            last_commit: None,
            log: LogHead::empty(),
        },
        batches,
        evidence: Vec::new(),
    })
}

/// Whether the step starts consensus work (a height started: the core
/// armed a round timer, or we asked for a signature).
pub(crate) fn starts_work(step: &Step) -> bool {
    step.actions.iter().any(|a| {
        matches!(
            a,
            Action::Sign { .. } | Action::ScheduleTimeout { .. } | Action::Decided(_)
        )
    })
}
