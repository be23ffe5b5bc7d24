//! The audit log as every party builds it, one decided block after another.
//!
//! The entries of block *h* name the parties whose precommits decided it
//! (`decided_under`), so they can only be built from the *canonical* commit
//! certificate of *h*, which block *h+1* carries in its header
//! (`last_commit`). The [`Ledger`] therefore keeps block *h*'s outcome
//! until block *h+1* is decided, then builds *h*'s entries and appends them
//! to the tree. The head it reports after block *h+1* (the tree after the
//! entries of blocks up to *h*) is what block *h+2* must carry in its
//! header (`log`), so consensus agrees on the log.
//!
//! A block with entries waiting for their certificate is *pending*: the
//! consensus driver then proposes a block even with nothing else to decide
//! (a carrier), so the log never waits for unrelated traffic.
//!
//! Pure and deterministic: the host feeds every decided block, in order,
//! after its session machine applied it (also when replaying its store at
//! start), and stores what each [`LedgerStep`] returns.

use crate::audit::entry::{AuditEntry, BlockRef, BuildError, EntryBuilder, MeasurementSource};
use crate::audit::merkle::{CompactTree, LeafIndex, NewNode};
use crate::batch::SignedBatch;
use crate::consensus::{Block, Equivocation, LogHead};
use crate::sessions::machine::{Event, State};
use crate::sessions::ops::{Decision, OpId};
use crate::sessions::BlockOutcome;
use crate::types::{Height, PartyId};
use std::collections::{BTreeMap, BTreeSet};

/// A decided block whose entries await its canonical certificate.
#[derive(Clone, Debug)]
struct Prepared {
    block: BlockRef,
    batches: Vec<SignedBatch>,
    /// Its equivocation evidence (an entry each).
    evidence: Vec<Equivocation>,
    outcome: BlockOutcome,
    /// Verdicts of the operations the block resolved, as they stood after
    /// the block (later blocks may add verdicts; the entry records these).
    verdicts: BTreeMap<OpId, BTreeMap<PartyId, Decision>>,
}

/// What one decided block added to the log.
#[derive(Clone, Debug, Default)]
pub struct LedgerStep {
    /// Leaf index of the first entry appended.
    pub first: LeafIndex,
    /// The entries appended (those of the previous block), in log order.
    pub entries: Vec<AuditEntry>,
    /// Their encodings: the tree's leaves.
    pub encoded: Vec<Vec<u8>>,
    /// The perfect subtree nodes the appends completed (for a node store).
    pub nodes: Vec<NewNode>,
    /// The tree after the appends: what the block after next carries.
    pub head: LogHead,
    /// This block's own entries await its certificate.
    pub pending: bool,
}

/// A decided block the ledger cannot take: a fault of the caller or of
/// consensus, never of an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Blocks must come one after another.
    #[error("block {got} given to the audit ledger after block {last}: feed decided blocks in order, from genesis")]
    OutOfOrder {
        /// The last block taken.
        last: Height,
        /// The block given.
        got: Height,
    },
    /// The outcome is not the block's.
    #[error("the outcome given is of height {outcome}, the block is {block}")]
    OutcomeMismatch {
        /// The block's height.
        block: Height,
        /// The outcome's height.
        outcome: Height,
    },
    /// The block does not carry its parent's certificate.
    #[error("block {0} carries no commit certificate for its parent, whose entries need it")]
    MissingCertificate(Height),
    /// The carried certificate is for another block.
    #[error("block {0} carries a commit certificate for another block than its parent")]
    WrongCertificate(Height),
    /// Building the parent's entries failed.
    #[error("building the entries of block {height}: {source}")]
    Build {
        /// The block whose entries failed.
        height: Height,
        /// Why.
        source: BuildError,
    },
}

/// The builder of the audit log: entries, tree, and the block awaiting
/// its certificate.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    builder: EntryBuilder,
    tree: CompactTree,
    prepared: Option<Prepared>,
    height: Height,
}

impl Ledger {
    /// An empty ledger, before block 1.
    pub fn new() -> Self {
        Ledger::default()
    }

    /// The tree's size and root.
    pub fn head(&self) -> LogHead {
        LogHead {
            size: self.tree.size().0,
            root: self.tree.root(),
        }
    }

    /// Whether the last block's entries await its certificate.
    pub fn pending(&self) -> bool {
        self.prepared.is_some()
    }

    /// The last block taken.
    pub fn height(&self) -> Height {
        self.height
    }

    /// The tree (frontier only).
    pub fn tree(&self) -> &CompactTree {
        &self.tree
    }

    /// Takes decided block `block`, which the session machine has just
    /// applied with `outcome`, leaving `state`: builds the entries of the
    /// previous block (if it had any) with the canonical signers `block`
    /// carries, appends them, and keeps `block`'s outcome for the next
    /// call. On error the ledger is unchanged.
    pub fn on_decided(
        &mut self,
        block: &Block,
        outcome: &BlockOutcome,
        state: &State,
        source: &dyn MeasurementSource,
    ) -> Result<LedgerStep, LedgerError> {
        let header = block.header();
        if header.height.0 != self.height.0.saturating_add(1) {
            return Err(LedgerError::OutOfOrder {
                last: self.height,
                got: header.height,
            });
        }
        if outcome.height != header.height {
            return Err(LedgerError::OutcomeMismatch {
                block: header.height,
                outcome: outcome.height,
            });
        }
        let mut builder = self.builder.clone();
        let mut tree = self.tree.clone();
        let first = builder.next_index();
        let mut step = LedgerStep {
            first,
            ..LedgerStep::default()
        };
        if let Some(p) = &self.prepared {
            let cert = header
                .last_commit
                .as_ref()
                .ok_or(LedgerError::MissingCertificate(header.height))?;
            if cert.block.0 != p.block.block_hash || cert.height != p.block.height {
                return Err(LedgerError::WrongCertificate(header.height));
            }
            let signers: BTreeSet<PartyId> = cert.signatures.iter().map(|(p, _)| *p).collect();
            let verdicts = |op: &OpId| p.verdicts.get(op).cloned().unwrap_or_default();
            let entries = builder
                .build_block_with(
                    p.block,
                    &signers,
                    &p.batches,
                    &p.evidence,
                    &p.outcome,
                    &verdicts,
                    source,
                )
                .map_err(|source| LedgerError::Build {
                    height: p.block.height,
                    source,
                })?;
            for e in &entries {
                let bytes = e.encode();
                let (_, nodes) = tree.append(&bytes);
                step.nodes.extend(nodes);
                step.encoded.push(bytes);
            }
            step.entries = entries;
        }
        let resolves = outcome
            .events
            .iter()
            .any(|e| matches!(e, Event::Executed { .. } | Event::Rejected { .. }));
        let evidence = block.evidence();
        let prepared = (!outcome.ops.is_empty() || resolves || !evidence.is_empty()).then(|| {
            let verdicts = outcome
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::Executed { op } | Event::Rejected { op, .. } => Some(*op),
                    _ => None,
                })
                .map(|op| {
                    let v = state
                        .ops
                        .get(&op)
                        .map(|r| r.verdicts.clone())
                        .unwrap_or_default();
                    (op, v)
                })
                .collect();
            Prepared {
                block: BlockRef {
                    height: header.height,
                    time_ms: header.time_ms,
                    block_hash: block.hash().0,
                },
                batches: block.batches().to_vec(),
                evidence: evidence.to_vec(),
                outcome: outcome.clone(),
                verdicts,
            }
        });
        self.builder = builder;
        self.tree = tree;
        self.prepared = prepared;
        self.height = header.height;
        step.head = self.head();
        step.pending = self.pending();
        Ok(step)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::entry::tests::{approve, attest, measurement_of};
    use crate::audit::merkle::{leaf_hash, root_of};
    use crate::consensus::context::{BlockContents, BlockHeader};
    use crate::consensus::{BlockHash, CommitCertificate};
    use crate::crypto::Signature;
    use crate::sessions::machine::{MachineConfig, SessionMachine, SessionRules};
    use crate::sessions::ops::OpBody;
    use crate::sessions::testkit::Cluster;
    use crate::types::{FaultModel, Sha256Digest};

    fn cert(parent: &Block, signers: &[u32]) -> CommitCertificate {
        CommitCertificate {
            height: parent.header().height,
            round: 0,
            block: parent.hash(),
            signatures: signers
                .iter()
                .map(|p| (PartyId(*p), Signature([7; 64])))
                .collect(),
        }
    }

    struct Chain {
        c: Cluster,
        m: SessionMachine,
        ledger: Ledger,
        /// Another party's ledger, fed the same decided blocks.
        other: Ledger,
        last: Option<Block>,
        seq: BTreeMap<u32, u64>,
        leaves: Vec<crate::types::Sha256Digest>,
    }

    impl Chain {
        fn new() -> Self {
            let c = Cluster::new(3);
            let m = SessionMachine::new(MachineConfig {
                cluster: c.id,
                fault_model: FaultModel::Byzantine,
                members: c.keys.clone(),
                rules: SessionRules::default(),
            })
            .unwrap();
            Chain {
                c,
                m,
                ledger: Ledger::new(),
                other: Ledger::new(),
                last: None,
                seq: BTreeMap::new(),
                leaves: Vec::new(),
            }
        }

        /// Decides a block of `ops` (author, body), its parent certified by
        /// `signers`.
        fn decide(&mut self, ops: Vec<(u32, OpBody)>, signers: &[u32]) -> LedgerStep {
            self.decide_with(ops, vec![], signers)
        }

        /// [`Chain::decide`] with equivocation evidence in the block.
        fn decide_with(
            &mut self,
            ops: Vec<(u32, OpBody)>,
            evidence: Vec<Equivocation>,
            signers: &[u32],
        ) -> LedgerStep {
            let height = Height(self.ledger.height().0 + 1);
            let batches = self.c.op_batches(&mut self.seq, ops);
            let block = Block::new(BlockContents {
                header: BlockHeader {
                    height,
                    time_ms: 1_700_000_000_000 + 1_000 * height.0,
                    parent: self.last.as_ref().map(|b| b.hash()).unwrap_or_default(),
                    proposer: PartyId(1),
                    last_commit: self.last.as_ref().map(|b| cert(b, signers)),
                    log: self.ledger.head(),
                },
                batches,
                evidence,
            });
            let outcome = self
                .m
                .apply_block(height, block.header().time_ms, block.batches())
                .unwrap();
            let step = self
                .ledger
                .on_decided(&block, &outcome, self.m.state(), &measurement_of)
                .unwrap();
            let theirs = self
                .other
                .on_decided(&block, &outcome, self.m.state(), &measurement_of)
                .unwrap();
            // Every party builds the same entries, byte for byte.
            assert_eq!(theirs.encoded, step.encoded);
            assert_eq!(theirs.head, step.head);
            for e in &step.encoded {
                self.leaves.push(leaf_hash(e));
            }
            self.last = Some(block);
            step
        }
    }

    #[test]
    fn entries_of_a_block_are_built_when_its_certificate_arrives() {
        let mut ch = Chain::new();
        let s1 = ch.decide(vec![(2, attest(b"p2", 0))], &[]);
        assert!(s1.entries.is_empty());
        assert!(s1.pending);
        assert_eq!(s1.head, LogHead::empty());
        let rec = *s1_op(&mut ch);
        // Block 2 certifies block 1: block 1's entry appears.
        let s2 = ch.decide(vec![(1, approve(rec)), (3, approve(rec))], &[1, 3]);
        assert_eq!(s2.first, LeafIndex(0));
        assert_eq!(s2.entries.len(), 1);
        assert_eq!(s2.entries[0].block().height, Height(1));
        assert!(s2.pending);
        assert_eq!(s2.head.size, 1);
        assert_eq!(s2.head.root, root_of(&ch.leaves));
        // A carrier (empty) block certifies block 2: two approvals and the
        // record's resolution.
        let s3 = ch.decide(vec![], &[1, 2, 3]);
        assert_eq!(s3.first, LeafIndex(1));
        assert_eq!(s3.entries.len(), 3);
        assert!(
            !s3.pending,
            "an empty block resolving nothing has no entries"
        );
        assert_eq!(s3.head.size, 4);
        assert_eq!(s3.head.root, root_of(&ch.leaves));
        // Block 4's entries are decided under P2's accepted measurement, for
        // the signers of block 5's certificate that have one.
        ch.decide(vec![(1, attest(b"p1", 3))], &[]);
        let s5 = ch.decide(vec![], &[2, 3]);
        assert_eq!(s5.entries.len(), 1);
        let refs = s5.entries[0].decided_under();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].party, PartyId(2));
        assert_eq!(refs[0].record, LeafIndex(0));
        assert_eq!(s5.head.root, root_of(&ch.leaves));
    }

    fn s1_op(ch: &mut Chain) -> &OpId {
        // The op id of block 1's single operation, as the machine recorded it.
        ch.m.state().ops.keys().next().unwrap()
    }

    /// P3's two precommits for different blocks at height 1, round 2.
    pub(crate) fn equivocation() -> Equivocation {
        use crate::consensus::context::{SignedVoteWire, Vote};
        let vote = |v: &[u8], sig: u8| SignedVoteWire {
            vote: Vote {
                precommit: true,
                height: Height(1),
                round: malachitebft_core_types::Round::new(2),
                value: malachitebft_core_types::NilOrVal::Val(BlockHash(Sha256Digest::of(v))),
                voter: PartyId(3),
            },
            signature: Signature([sig; 64]),
        };
        crate::consensus::certificate::canonical_equivocation(vote(b"a", 1), vote(b"b", 2))
    }

    /// A block's equivocation evidence becomes an audit entry naming the
    /// offender, height, round and step, after the block's operation
    /// entries, once the block's certificate arrives; a block with only
    /// evidence still awaits a carrier. Every party builds the same bytes
    /// (`Chain::decide` checks that of every block).
    #[test]
    fn equivocation_evidence_is_an_audit_entry() {
        use crate::audit::entry::EquivocationEntry;
        use crate::consensus::context::Step;
        let mut ch = Chain::new();
        ch.decide(vec![(1, attest(b"p1", 0))], &[]);
        let s2 = ch.decide_with(vec![], vec![equivocation()], &[1, 2, 3]);
        assert!(s2.pending, "a block with evidence awaits its certificate");
        let s3 = ch.decide(vec![], &[1, 2]);
        assert!(!s3.pending);
        assert_eq!(s3.head.root, root_of(&ch.leaves));
        assert!(matches!(s2.entries[..], [AuditEntry::Operation(_)]));
        let [AuditEntry::Equivocation(e)] = &s3.entries[..] else {
            panic!("{:?}", s3.entries);
        };
        let EquivocationEntry {
            block,
            index,
            offender,
            height,
            round,
            step,
            evidence,
            ..
        } = e;
        assert_eq!(block.height, Height(2));
        assert_eq!(
            (*index, *offender, *height, *round, *step),
            (0, PartyId(3), Height(1), 2, Step::Precommit)
        );
        assert_eq!(*evidence, equivocation());
        assert!(e.is_consistent());
        assert_eq!(s3.first, LeafIndex(1));
        assert_eq!(AuditEntry::decode(&s3.encoded[0]).unwrap(), s3.entries[0]);
    }

    #[test]
    fn the_canonical_signers_decide_the_log() {
        let run = |signers: &[u32]| {
            let mut ch = Chain::new();
            ch.decide(vec![(2, attest(b"p2", 0))], &[]);
            let rec = *s1_op(&mut ch);
            ch.decide(vec![(1, approve(rec)), (3, approve(rec))], &[1, 2, 3]);
            ch.decide(vec![(1, attest(b"p1", 2))], &[1, 2, 3]);
            let last = ch.decide(vec![], signers);
            assert_eq!(last.head.root, root_of(&ch.leaves));
            last.entries
        };
        // P2's accepted record is named by block 3's entry only when P2
        // signed block 3's canonical certificate: another certificate,
        // another log. So parties must agree on it: the header carries it.
        let with_p2 = run(&[1, 2]);
        let without = run(&[1, 3]);
        assert_eq!(with_p2.len(), 1);
        assert_eq!(with_p2[0].decided_under().len(), 1);
        assert_eq!(with_p2[0].decided_under()[0].party, PartyId(2));
        assert!(without[0].decided_under().is_empty());
    }

    #[test]
    fn refuses_blocks_out_of_order_or_without_the_parents_certificate() {
        let mut ch = Chain::new();
        ch.decide(vec![(1, attest(b"x", 0))], &[]);
        let before = (ch.ledger.head(), ch.ledger.height(), ch.ledger.pending());
        let parent = ch.last.clone().unwrap();
        let outcome2 = BlockOutcome {
            height: Height(2),
            time_ms: 2_000,
            ops: vec![],
            events: vec![],
            state_root: Sha256Digest::default(),
        };
        let mk = |height: u64, last_commit: Option<CommitCertificate>| {
            Block::new(BlockContents {
                header: BlockHeader {
                    height: Height(height),
                    time_ms: 2_000,
                    parent: parent.hash(),
                    proposer: PartyId(1),
                    last_commit,
                    log: LogHead::empty(),
                },
                batches: vec![],
                evidence: vec![],
            })
        };
        let st = ch.m.state().clone();
        assert!(matches!(
            ch.ledger
                .on_decided(&mk(3, None), &outcome2, &st, &measurement_of),
            Err(LedgerError::OutOfOrder { .. })
        ));
        assert!(matches!(
            ch.ledger
                .on_decided(&mk(2, None), &outcome2, &st, &measurement_of),
            Err(LedgerError::MissingCertificate(Height(2)))
        ));
        let mut wrong = cert(&parent, &[1, 2]);
        wrong.block = BlockHash(Sha256Digest::of(b"another"));
        assert!(matches!(
            ch.ledger
                .on_decided(&mk(2, Some(wrong)), &outcome2, &st, &measurement_of),
            Err(LedgerError::WrongCertificate(Height(2)))
        ));
        let mut o = outcome2.clone();
        o.height = Height(5);
        assert!(matches!(
            ch.ledger.on_decided(
                &mk(2, Some(cert(&parent, &[1, 2]))),
                &o,
                &st,
                &measurement_of
            ),
            Err(LedgerError::OutcomeMismatch { .. })
        ));
        assert_eq!(
            before,
            (ch.ledger.head(), ch.ledger.height(), ch.ledger.pending()),
            "errors leave the ledger unchanged"
        );
    }
}
