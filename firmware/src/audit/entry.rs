//! Audit entries: one per decided operation, one per later resolution of
//! an operation that was left pending, and one per piece of equivocation
//! evidence a block recorded, each carrying the attested measurements of
//! the parties whose votes decided its block.
//!
//! [`EntryBuilder::build_block`] turns one applied block into its entries.
//! It is a pure function of the decided log (the block, its outcome, the
//! canonical certificate signers and the measurements established by earlier
//! accepted attestation records), so every party builds identical entries
//! and the same Merkle tree.

use super::merkle::{leaf_hash, LeafIndex};
use crate::batch::SignedBatch;
use crate::consensus::context::Step;
use crate::consensus::Equivocation;
use crate::sessions::machine::{BlockOutcome, Event, OpKind, OpStatus, State};
use crate::sessions::ops::{Decision, OpBody, OpId, Operation};
use crate::types::{Height, PartyId, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// First byte of every encoded entry; postcard follows.
pub const ENTRY_FORMAT_VERSION: u8 = 1;
/// Largest encoded entry accepted by [`AuditEntry::decode`]: an operation
/// of the largest size plus room for its record.
pub const MAX_ENTRY_BYTES: usize = crate::sessions::ops::MAX_OP_BYTES + 64 * 1024;
/// Domain tag of [`Measurement::digest`].
pub const MEASUREMENT_DOMAIN: &[u8] = b"quorate/audit/measurement/v1";

/// The decided block an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Its height.
    pub height: Height,
    /// Its consensus time (ms since the Unix epoch).
    pub time_ms: u64,
    /// Its hash (the value the commit certificate's precommits sign).
    pub block_hash: Sha256Digest,
}

/// An attested measurement of a party's coordinator: the measurement PCR's
/// value and the digest of the event log that replays to it, as the host's
/// attestation verifier extracted them from an `AttestationRecord`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// The quoted measurement PCR (SHA-256 bank).
    pub pcr: Sha256Digest,
    /// SHA-256 of the event log that replays to `pcr`.
    pub event_log: Sha256Digest,
}

/// Digest of a [`Measurement`]: what entries refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeasurementDigest(pub Sha256Digest);

impl Measurement {
    /// `SHA-256(MEASUREMENT_DOMAIN || pcr || event_log)`.
    pub fn digest(&self) -> MeasurementDigest {
        MeasurementDigest(Sha256Digest::of_parts(&[
            MEASUREMENT_DOMAIN,
            self.pcr.as_bytes(),
            self.event_log.as_bytes(),
        ]))
    }
}

/// "This entry was decided by `party`, attested as running `measurement`
/// by the accepted attestation record at entry `record`."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementRef {
    /// The deciding party.
    pub party: PartyId,
    /// Its attested measurement.
    pub measurement: MeasurementDigest,
    /// The entry of the attestation record that established it.
    pub record: LeafIndex,
}

/// A decided operation, as consensus placed it and the machine judged it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationEntry {
    /// The block.
    pub block: BlockRef,
    /// Index of the batch in the block.
    pub batch: u32,
    /// Index of the operation in the batch.
    pub index: u32,
    /// The operation's id.
    pub op: OpId,
    /// The batch signer.
    pub author: PartyId,
    /// The batch's sequence number (with the above, binds the op id).
    pub batch_seq: u64,
    /// What it was.
    pub kind: OpKind,
    /// SHA-256 of `op_bytes`.
    pub op_digest: Sha256Digest,
    /// The operation exactly as signed in its batch.
    #[serde(with = "serde_bytes")]
    pub op_bytes: Vec<u8>,
    /// Executed, pending verdicts, or rejected with every reason.
    pub status: OpStatus,
    /// For an attestation record: the measurement its evidence establishes,
    /// if the evidence could be read.
    pub attests: Option<Measurement>,
    /// The attested measurements of the parties that decided the block.
    pub decided_under: Vec<MeasurementRef>,
}

/// The later outcome of an operation that was pending when decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionEntry {
    /// The block whose application resolved it.
    pub block: BlockRef,
    /// The operation.
    pub op: OpId,
    /// The entry of the operation's decision (`None` only if the builder
    /// state was lost; the verifier reports it).
    pub decided_at: Option<LeafIndex>,
    /// Executed or rejected with every reason.
    pub status: OpStatus,
    /// Every verdict posted on it, by voter.
    pub verdicts: BTreeMap<PartyId, Decision>,
    /// The attested measurements of the parties that decided the block.
    pub decided_under: Vec<MeasurementRef>,
}

/// Equivocation evidence a decided block recorded: `offender` signed two
/// conflicting votes for one (height, round, step). Both votes are kept,
/// so the entry proves itself to anyone with the offender's vote key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquivocationEntry {
    /// The block that recorded it.
    pub block: BlockRef,
    /// Index of the evidence in the block's evidence list.
    pub index: u32,
    /// Who equivocated.
    pub offender: PartyId,
    /// The height both votes are for (at or below the recording block's).
    pub height: Height,
    /// The round both votes are for.
    pub round: i64,
    /// Prevote or precommit.
    pub step: Step,
    /// The two signed votes, in canonical order.
    pub evidence: Equivocation,
    /// The attested measurements of the parties that decided the block.
    pub decided_under: Vec<MeasurementRef>,
}

impl EquivocationEntry {
    /// Whether the named offender, height, round and step are those of
    /// both votes, and the votes differ.
    pub fn is_consistent(&self) -> bool {
        let key = (self.offender, self.height, self.round, self.step);
        let (a, b) = (&self.evidence.first.vote, &self.evidence.second.vote);
        self.evidence.key() == key
            && a.voter == b.voter
            && a.height == b.height
            && a.round == b.round
            && a.precommit == b.precommit
            && a.value != b.value
    }
}

/// One leaf of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditEntry {
    /// A decided operation.
    Operation(OperationEntry),
    /// A pending operation's final outcome.
    Resolution(ResolutionEntry),
    /// Proof that a party equivocated, as a block recorded it.
    Equivocation(EquivocationEntry),
}

/// Bytes that are not an audit entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryDecodeError {
    /// No bytes.
    #[error("empty audit entry")]
    Empty,
    /// Larger than [`MAX_ENTRY_BYTES`].
    #[error("audit entry of {0} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
    /// A version this build does not know.
    #[error("audit entry format version {0} is unknown (this build reads {ENTRY_FORMAT_VERSION}); upgrade the verifier")]
    UnknownVersion(u8),
    /// The body does not decode.
    #[error("audit entry does not decode: {0}")]
    Malformed(String),
    /// Bytes after the entry.
    #[error("{0} bytes follow the audit entry")]
    TrailingBytes(usize),
}

impl AuditEntry {
    /// The canonical encoding: [`ENTRY_FORMAT_VERSION`], then postcard.
    /// These bytes are the Merkle leaf.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a growable buffer cannot fail; an
        // empty body would be rejected by `decode`, never accepted.
        postcard::to_extend(self, vec![ENTRY_FORMAT_VERSION]).unwrap_or_default()
    }

    /// Parses an encoded entry; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryDecodeError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryDecodeError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(EntryDecodeError::Empty)?;
        if version != ENTRY_FORMAT_VERSION {
            return Err(EntryDecodeError::UnknownVersion(version));
        }
        let (entry, rest) = postcard::take_from_bytes::<AuditEntry>(body)
            .map_err(|e| EntryDecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(EntryDecodeError::TrailingBytes(rest.len()));
        }
        Ok(entry)
    }

    /// The Merkle leaf hash of this entry.
    pub fn leaf_hash(&self) -> Sha256Digest {
        leaf_hash(&self.encode())
    }

    /// The block it belongs to.
    pub fn block(&self) -> &BlockRef {
        match self {
            AuditEntry::Operation(e) => &e.block,
            AuditEntry::Resolution(e) => &e.block,
            AuditEntry::Equivocation(e) => &e.block,
        }
    }

    /// The operation it concerns (none for equivocation evidence).
    pub fn op(&self) -> Option<&OpId> {
        match self {
            AuditEntry::Operation(e) => Some(&e.op),
            AuditEntry::Resolution(e) => Some(&e.op),
            AuditEntry::Equivocation(_) => None,
        }
    }

    /// Its operation's outcome (none for equivocation evidence).
    pub fn status(&self) -> Option<&OpStatus> {
        match self {
            AuditEntry::Operation(e) => Some(&e.status),
            AuditEntry::Resolution(e) => Some(&e.status),
            AuditEntry::Equivocation(_) => None,
        }
    }

    /// The measurements it was decided under.
    pub fn decided_under(&self) -> &[MeasurementRef] {
        match self {
            AuditEntry::Operation(e) => &e.decided_under,
            AuditEntry::Resolution(e) => &e.decided_under,
            AuditEntry::Equivocation(e) => &e.decided_under,
        }
    }
}

/// Reads the measurement out of an attestation record's evidence. The host
/// implements it with the attestation crate; it must be a pure function of
/// its arguments (every party must extract the same measurement).
pub trait MeasurementSource {
    /// The measurement `author`'s evidence establishes, or `None` if the
    /// evidence cannot be read.
    fn measurement(&self, author: PartyId, evidence: &[u8]) -> Option<Measurement>;
}

impl<F: Fn(PartyId, &[u8]) -> Option<Measurement>> MeasurementSource for F {
    fn measurement(&self, author: PartyId, evidence: &[u8]) -> Option<Measurement> {
        self(author, evidence)
    }
}

/// A block whose outcome does not match its batches: a fault of the local
/// driver, never of an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The outcome names an operation the batches do not hold.
    #[error("outcome names operation {index} of batch {batch}, which the block does not hold: pass the batches the outcome was computed from")]
    NoSuchOperation {
        /// Batch index.
        batch: u32,
        /// Operation index.
        index: u32,
    },
    /// The outcome is for another height than the block.
    #[error("outcome is for height {outcome}, block is {block}")]
    HeightMismatch {
        /// The block's height.
        block: Height,
        /// The outcome's height.
        outcome: Height,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingOp {
    entry: LeafIndex,
    author: PartyId,
    kind: OpKind,
    attests: Option<Measurement>,
}

/// The state needed to build entries block after block: the next leaf
/// index, each party's latest accepted measurement, and where each pending
/// operation was decided. Serializable; the host persists it with the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBuilder {
    next: u64,
    accepted: BTreeMap<PartyId, MeasurementRef>,
    pending: BTreeMap<OpId, PendingOp>,
}

/// The measurement table a verifier or builder keeps: each party's latest
/// accepted attestation record. Exposed so the verifier replays exactly the
/// builder's rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Table {
    pub(crate) accepted: BTreeMap<PartyId, MeasurementRef>,
}

impl Table {
    /// The refs for a block decided by `signers`.
    pub(crate) fn refs(&self, signers: &BTreeSet<PartyId>) -> Vec<MeasurementRef> {
        signers
            .iter()
            .filter_map(|p| self.accepted.get(p).copied())
            .collect()
    }

    /// Records that the attestation record at `entry` by `author` was accepted.
    pub(crate) fn accept(
        &mut self,
        author: PartyId,
        entry: LeafIndex,
        attests: Option<Measurement>,
    ) {
        match attests {
            Some(m) => {
                self.accepted.insert(
                    author,
                    MeasurementRef {
                        party: author,
                        measurement: m.digest(),
                        record: entry,
                    },
                );
            }
            // Accepted evidence this party cannot read: claim nothing.
            None => {
                self.accepted.remove(&author);
            }
        }
    }
}

impl EntryBuilder {
    /// A builder for a log starting at genesis.
    pub fn new() -> Self {
        EntryBuilder::default()
    }

    /// The number of entries built so far (the tree size).
    pub fn next_index(&self) -> LeafIndex {
        LeafIndex(self.next)
    }

    /// Each party's latest accepted measurement.
    pub fn measurements(&self) -> &BTreeMap<PartyId, MeasurementRef> {
        &self.accepted
    }

    /// Builds the entries of one decided block, in log order: first one
    /// [`OperationEntry`] per operation of `outcome` (block order), then one
    /// [`ResolutionEntry`] per `Executed`/`Rejected` event of an operation
    /// that was pending (event order), then one [`EquivocationEntry`] per
    /// piece of the block's `evidence` (block order).
    ///
    /// - `signers`: the parties whose precommits decided the block, from its
    ///   canonical commit certificate (it must be the same at every party;
    ///   see `docs/AUDIT.md`).
    /// - `batches`: the block's batches, from which `outcome` was computed.
    /// - `evidence`: the block's equivocation evidence.
    /// - `state`: the session machine's state after the block (verdicts of
    ///   resolved operations are read from it).
    /// - `source`: reads measurements out of attestation evidence.
    ///
    /// Every entry of the block refers to the measurements accepted in
    /// earlier blocks. On error the builder is unchanged.
    #[allow(clippy::too_many_arguments)]
    pub fn build_block(
        &mut self,
        block: BlockRef,
        signers: &BTreeSet<PartyId>,
        batches: &[SignedBatch],
        evidence: &[Equivocation],
        outcome: &BlockOutcome,
        state: &State,
        source: &dyn MeasurementSource,
    ) -> Result<Vec<AuditEntry>, BuildError> {
        let verdicts = |op: &OpId| {
            state
                .ops
                .get(op)
                .map(|r| r.verdicts.clone())
                .unwrap_or_default()
        };
        self.build_block_with(
            block, signers, batches, evidence, outcome, &verdicts, source,
        )
    }

    /// [`EntryBuilder::build_block`] with the verdicts of resolved
    /// operations read through `verdicts` (for a block built after later
    /// blocks were applied: see [`crate::audit::ledger`]).
    #[allow(clippy::too_many_arguments)]
    pub fn build_block_with(
        &mut self,
        block: BlockRef,
        signers: &BTreeSet<PartyId>,
        batches: &[SignedBatch],
        evidence: &[Equivocation],
        outcome: &BlockOutcome,
        verdicts: &dyn Fn(&OpId) -> BTreeMap<PartyId, Decision>,
        source: &dyn MeasurementSource,
    ) -> Result<Vec<AuditEntry>, BuildError> {
        if outcome.height != block.height {
            return Err(BuildError::HeightMismatch {
                block: block.height,
                outcome: outcome.height,
            });
        }
        let mut next = self.clone();
        let table = Table {
            accepted: self.accepted.clone(),
        };
        let refs = table.refs(signers);
        let mut out = Vec::with_capacity(outcome.ops.len());
        let mut accepted_now: Vec<(PartyId, LeafIndex, Option<Measurement>)> = Vec::new();
        let mut settled_here: BTreeSet<OpId> = BTreeSet::new();
        for o in &outcome.ops {
            let batch = usize::try_from(o.batch)
                .ok()
                .and_then(|b| batches.get(b))
                .ok_or(BuildError::NoSuchOperation {
                    batch: o.batch,
                    index: o.index,
                })?;
            let bytes = usize::try_from(o.index)
                .ok()
                .and_then(|i| batch.body.ops.get(i))
                .ok_or(BuildError::NoSuchOperation {
                    batch: o.batch,
                    index: o.index,
                })?;
            let entry = LeafIndex(next.next);
            let attests = if o.kind == OpKind::AttestationRecord {
                match Operation::decode(bytes).map(|op| op.body) {
                    Ok(OpBody::AttestationRecord(a)) => source.measurement(o.author, &a.evidence.0),
                    _ => None,
                }
            } else {
                None
            };
            match &o.status {
                OpStatus::Pending => {
                    next.pending.insert(
                        o.op,
                        PendingOp {
                            entry,
                            author: o.author,
                            kind: o.kind,
                            attests,
                        },
                    );
                }
                OpStatus::Executed { .. } => {
                    settled_here.insert(o.op);
                    if o.kind == OpKind::AttestationRecord {
                        accepted_now.push((o.author, entry, attests));
                    }
                }
                OpStatus::Rejected { .. } => {
                    settled_here.insert(o.op);
                }
            }
            out.push(AuditEntry::Operation(OperationEntry {
                block,
                batch: o.batch,
                index: o.index,
                op: o.op,
                author: o.author,
                batch_seq: batch.body.seq,
                kind: o.kind,
                op_digest: Sha256Digest::of(bytes),
                op_bytes: bytes.clone(),
                status: o.status.clone(),
                attests,
                decided_under: refs.clone(),
            }));
            next.next = next.next.saturating_add(1);
        }
        for ev in &outcome.events {
            let (op, status) = match ev {
                Event::Executed { op } => (
                    *op,
                    OpStatus::Executed {
                        height: block.height,
                    },
                ),
                Event::Rejected { op, reasons } => (
                    *op,
                    OpStatus::Rejected {
                        height: block.height,
                        reasons: reasons.clone(),
                    },
                ),
                _ => continue,
            };
            // Settled when decided: its operation entry already says so.
            if settled_here.contains(&op) {
                continue;
            }
            let pending = next.pending.remove(&op);
            if let (Some(p), OpStatus::Executed { .. }) = (&pending, &status) {
                if p.kind == OpKind::AttestationRecord {
                    accepted_now.push((p.author, p.entry, p.attests));
                }
            }
            let verdicts = verdicts(&op);
            out.push(AuditEntry::Resolution(ResolutionEntry {
                block,
                op,
                decided_at: pending.map(|p| p.entry),
                status,
                verdicts,
                decided_under: refs.clone(),
            }));
            next.next = next.next.saturating_add(1);
        }
        for (index, ev) in evidence.iter().enumerate() {
            let (offender, height, round, step) = ev.key();
            out.push(AuditEntry::Equivocation(EquivocationEntry {
                block,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                offender,
                height,
                round,
                step,
                evidence: ev.clone(),
                decided_under: refs.clone(),
            }));
            next.next = next.next.saturating_add(1);
        }
        let mut table = table;
        for (author, entry, attests) in accepted_now {
            table.accept(author, entry, attests);
        }
        next.accepted = table.accepted;
        *self = next;
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sessions::machine::{MachineConfig, SessionMachine, SessionRules};
    use crate::sessions::ops::{AttestationRecord, Blob, VerdictOp};
    use crate::sessions::testkit::Cluster;
    use crate::types::FaultModel;
    use proptest::prelude::*;

    pub(crate) fn measurement_of(_author: PartyId, evidence: &[u8]) -> Option<Measurement> {
        // Test evidence: the PCR value is the SHA-256 of the evidence bytes.
        (!evidence.is_empty()).then(|| Measurement {
            pcr: Sha256Digest::of(evidence),
            event_log: Sha256Digest::of(b"event log"),
        })
    }

    /// Drives a session machine and an entry builder together.
    pub(crate) struct Log {
        pub c: Cluster,
        pub m: SessionMachine,
        pub b: EntryBuilder,
        /// A second party's machine and builder, fed the same blocks.
        other: (SessionMachine, EntryBuilder),
        pub entries: Vec<AuditEntry>,
        pub height: u64,
        seq: BTreeMap<u32, u64>,
    }

    impl Log {
        pub fn new(n: u32) -> Self {
            let c = Cluster::new(n);
            let m = SessionMachine::new(MachineConfig {
                cluster: c.id,
                fault_model: FaultModel::Byzantine,
                members: c.keys.clone(),
                rules: SessionRules::default(),
            })
            .unwrap();
            Log {
                c,
                other: (m.clone(), EntryBuilder::new()),
                m,
                b: EntryBuilder::new(),
                entries: vec![],
                height: 0,
                seq: BTreeMap::new(),
            }
        }

        pub fn block(&mut self, ops: Vec<(u32, OpBody)>) -> Vec<AuditEntry> {
            self.height += 1;
            let batches = self.c.op_batches(&mut self.seq, ops);
            let time = 1_700_000_000_000 + self.height * 1000;
            let outcome = self
                .m
                .apply_block(Height(self.height), time, &batches)
                .unwrap();
            let block = BlockRef {
                height: Height(self.height),
                time_ms: time,
                block_hash: Sha256Digest::of(&self.height.to_be_bytes()),
            };
            let signers: BTreeSet<PartyId> = self.c.keys.keys().copied().collect();
            let es = self
                .b
                .build_block(
                    block,
                    &signers,
                    &batches,
                    &[],
                    &outcome,
                    self.m.state(),
                    &measurement_of,
                )
                .unwrap();
            // Every party builds the same entries from the same decided block.
            let (m2, b2) = &mut self.other;
            let outcome2 = m2.apply_block(Height(self.height), time, &batches).unwrap();
            let es2 = b2
                .build_block(
                    block,
                    &signers,
                    &batches,
                    &[],
                    &outcome2,
                    m2.state(),
                    &measurement_of,
                )
                .unwrap();
            assert_eq!(es, es2);
            assert_eq!(self.b, *b2);
            self.entries.extend(es.clone());
            es
        }

        pub fn op_id(&self, e: &AuditEntry) -> OpId {
            *e.op().unwrap()
        }
    }

    pub(crate) fn attest(evidence: &[u8], h: u64) -> OpBody {
        OpBody::AttestationRecord(AttestationRecord {
            binds_height: Height(h),
            evidence: Blob(evidence.to_vec()),
        })
    }

    pub(crate) fn approve(target: OpId) -> OpBody {
        OpBody::Verdict(VerdictOp {
            target,
            decision: Decision::Approve,
        })
    }

    #[test]
    fn attestation_records_become_measurements_of_later_blocks() {
        let mut log = Log::new(3);
        log.block(vec![]);
        let es = log.block(vec![(2, attest(b"p2 quote", 1))]);
        assert_eq!(es.len(), 1);
        let rec = log.op_id(&es[0]);
        let AuditEntry::Operation(e) = &es[0] else {
            panic!("operation entry expected")
        };
        assert_eq!(e.status, OpStatus::Pending);
        assert_eq!(e.attests, measurement_of(PartyId(2), b"p2 quote"));
        assert!(e.decided_under.is_empty());
        assert_eq!(e.op_digest, Sha256Digest::of(&e.op_bytes));
        // Two approvals in one block: two operation entries, then the
        // record's resolution pointing back at entry 0.
        let es = log.block(vec![(1, approve(rec)), (3, approve(rec))]);
        assert_eq!(es.len(), 3);
        let AuditEntry::Resolution(r) = &es[2] else {
            panic!("resolution expected")
        };
        assert_eq!(r.op, rec);
        assert_eq!(r.decided_at, Some(LeafIndex(0)));
        assert!(matches!(r.status, OpStatus::Executed { .. }));
        assert_eq!(r.verdicts.len(), 2);
        // Entries of this block still use the table of earlier blocks.
        assert!(r.decided_under.is_empty());
        // The next block is decided under P2's attested measurement.
        let es = log.block(vec![(1, attest(b"p1 quote", 3))]);
        let want = MeasurementRef {
            party: PartyId(2),
            measurement: measurement_of(PartyId(2), b"p2 quote").unwrap().digest(),
            record: LeafIndex(0),
        };
        assert_eq!(es[0].decided_under(), &[want]);
        assert_eq!(log.b.next_index(), LeafIndex(5));
    }

    #[test]
    fn entries_are_identical_at_every_party_and_round_trip() {
        let mut a = Log::new(3);
        a.block(vec![]);
        a.block(vec![(2, attest(b"q", 1)), (1, attest(b"", 1))]);
        let builder_bytes = postcard::to_allocvec(&a.b).unwrap();
        let restored: EntryBuilder = postcard::from_bytes(&builder_bytes).unwrap();
        assert_eq!(restored, a.b);
        for e in &a.entries {
            let bytes = e.encode();
            assert_eq!(bytes[0], ENTRY_FORMAT_VERSION);
            assert_eq!(&AuditEntry::decode(&bytes).unwrap(), e);
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                AuditEntry::decode(&longer),
                Err(EntryDecodeError::TrailingBytes(1))
            );
        }
        assert_eq!(AuditEntry::decode(&[]), Err(EntryDecodeError::Empty));
        assert_eq!(
            AuditEntry::decode(&[9, 0]),
            Err(EntryDecodeError::UnknownVersion(9))
        );
    }

    #[test]
    fn a_mismatched_outcome_is_refused_and_leaves_the_builder_unchanged() {
        let mut log = Log::new(3);
        log.block(vec![(1, attest(b"x", 0))]);
        let before = log.b.clone();
        let outcome = log
            .m
            .apply_block(
                Height(2),
                1_800_000_000_000,
                &[log.c.batch(
                    1,
                    9,
                    vec![Operation {
                        author: PartyId(1),
                        body: attest(b"y", 1),
                    }
                    .encode()],
                )],
            )
            .unwrap();
        let block = BlockRef {
            height: Height(2),
            time_ms: 0,
            block_hash: Sha256Digest::default(),
        };
        let err = log
            .b
            .build_block(
                block,
                &BTreeSet::new(),
                &[],
                &[],
                &outcome,
                log.m.state(),
                &measurement_of,
            )
            .unwrap_err();
        assert_eq!(err, BuildError::NoSuchOperation { batch: 0, index: 0 });
        assert_eq!(log.b, before);
        let wrong = BlockRef {
            height: Height(7),
            ..block
        };
        assert!(matches!(
            log.b.build_block(
                wrong,
                &BTreeSet::new(),
                &[],
                &[],
                &outcome,
                log.m.state(),
                &measurement_of
            ),
            Err(BuildError::HeightMismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = AuditEntry::decode(&bytes);
            let mut v = vec![ENTRY_FORMAT_VERSION];
            v.extend_from_slice(&bytes);
            if let Ok(e) = AuditEntry::decode(&v) {
                // Whatever decodes re-encodes to the same bytes (canonical).
                prop_assert_eq!(e.encode(), v);
            }
        }
    }
}
