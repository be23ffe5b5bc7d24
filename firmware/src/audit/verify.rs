//! The offline verifier core: replays an exported audit log and checks it
//! against its checkpoints, with no TPM and no network.
//!
//! What it checks itself: every entry decodes; blocks come in order with
//! increasing time; each operation's digest, id and position; that every
//! resolution follows the pending decision it resolves; that equivocation
//! entries come last in their block and name the offender, height, round
//! and step of their two conflicting votes; the Merkle tree
//! recomputed from the entries against every checkpoint; consistency proofs
//! between successive checkpoints (built from the recomputed tree and
//! verified); each checkpoint's cosignature quorum; checkpoints of one size
//! with different roots (a fork, reported with who signed each side); and
//! that every entry's measurement references are exactly the latest
//! accepted attestation records, before its block, of its block's signers.
//!
//! What it asks the host ([`EvidenceChecker`]), which links the attestation
//! and consensus crates: commit certificates and batch signatures per
//! block, TPM quotes on checkpoints, and attestation evidence against the
//! reference-value policy.

use super::checkpoint::{
    check_cosignatures, Checkpoint, CosignError, NoteSignature, ParseError, SignedCheckpoint,
};
use super::entry::{AuditEntry, BlockRef, EntryDecodeError, MeasurementRef, OperationEntry, Table};
use super::merkle::{verify_consistency, LeafIndex, TreeSize, VerifyError, WindowNodeStore};
use crate::crypto::PublicKey;
use crate::sessions::machine::{OpKind, OpStatus};
use crate::sessions::ops::OpId;
use crate::types::{ClusterId, FaultModel, Height, PartyId, Sha256Digest};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Checks the verifier cannot do without the attestation and consensus
/// crates; the host implements them. Each returns a message for the report
/// on failure. They may be called from one thread only; a host that wants
/// parallel signature checks verifies ahead (e.g. all blocks' certificates
/// over a thread pool) and answers from its results.
pub trait EvidenceChecker {
    /// Verifies the commit certificate of `block` (and its batches'
    /// signatures, that `entries`' operations are exactly those of its
    /// batches, and its equivocation entries exactly its evidence),
    /// returning the canonical certificate's signers.
    fn check_block(
        &mut self,
        block: &BlockRef,
        entries: &[AuditEntry],
    ) -> Result<BTreeSet<PartyId>, String>;

    /// Verifies `party`'s quote line on `checkpoint`: the AK signature, the
    /// quoted PCRs against the policy, and that the qualifying data equals
    /// `qualifying_data` ([`Checkpoint::quote_qualifying_data`]).
    fn check_quote(
        &mut self,
        party: PartyId,
        checkpoint: &Checkpoint,
        qualifying_data: &Sha256Digest,
        quote: &NoteSignature,
    ) -> Result<(), String>;

    /// Verifies the evidence of an attestation record (the operation bytes
    /// of `entry`) against the policy, and that it establishes
    /// `entry.attests`.
    fn check_attestation(&mut self, index: LeafIndex, entry: &OperationEntry)
        -> Result<(), String>;
}

/// The log's fixed parameters.
#[derive(Clone, Debug)]
pub struct LogParams {
    /// The cluster (operation ids are derived from it).
    pub cluster: ClusterId,
    /// The checkpoints' origin line.
    pub origin: String,
    /// The parties and their vote keys.
    pub parties: BTreeMap<PartyId, PublicKey>,
    /// The fault model (cosignature quorum).
    pub fault_model: FaultModel,
}

/// Where a problem was found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// At an entry.
    Entry(LeafIndex),
    /// At a block (its first entry).
    Block(Height, LeafIndex),
    /// At a checkpoint (its position in the bundle).
    Checkpoint(usize),
    /// Between two checkpoints.
    Checkpoints(usize, usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Entry(i) => write!(f, "entry {i}"),
            Location::Block(h, i) => write!(f, "block {h} (from entry {i})"),
            Location::Checkpoint(c) => write!(f, "checkpoint #{c}"),
            Location::Checkpoints(a, b) => write!(f, "checkpoints #{a} and #{b}"),
        }
    }
}

/// What was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemKind {
    /// An entry does not decode.
    #[error("entry does not decode: {0}")]
    Undecodable(EntryDecodeError),
    /// A block's height is below the previous one's.
    #[error("block height {got} follows height {prev}: entries were removed or reordered")]
    HeightRegressed {
        /// Previous height.
        prev: Height,
        /// This height.
        got: Height,
    },
    /// Entries of one height disagree on the block.
    #[error("entries of height {0} name different blocks")]
    BlockMismatch(Height),
    /// Block time did not increase.
    #[error("block time {got} ms does not exceed the previous block's {prev} ms")]
    TimeNotIncreasing {
        /// Previous block's time.
        prev: u64,
        /// This block's time.
        got: u64,
    },
    /// The operation's digest does not match its bytes.
    #[error("operation digest does not match the operation bytes: the entry was altered")]
    OpDigestMismatch,
    /// The operation id does not derive from its position.
    #[error("operation id {got} is not the id of its position (expected {want})")]
    OpIdMismatch {
        /// Recorded.
        got: OpId,
        /// Derived.
        want: OpId,
    },
    /// Operations of a block out of (batch, index) order, or after its resolutions.
    #[error("operation at batch {batch} index {index} is out of order in its block")]
    OutOfOrder {
        /// Batch index.
        batch: u32,
        /// Operation index.
        index: u32,
    },
    /// An equivocation entry before an operation or resolution entry of
    /// its block, or out of the block's evidence order.
    #[error("equivocation entry out of order in its block")]
    EquivocationOutOfOrder,
    /// An equivocation entry names another offender, height, round or
    /// step than its two votes, or the votes do not conflict.
    #[error("the equivocation entry against {0} does not match its two votes")]
    EquivocationInconsistent(PartyId),
    /// A settled status names another height than its block.
    #[error("outcome is recorded at height {got} in an entry of block {block}")]
    StatusHeight {
        /// The block.
        block: Height,
        /// The status's height.
        got: Height,
    },
    /// A resolution whose decision is missing, unresolved-pending or elsewhere.
    #[error(
        "resolution of {op} does not follow a pending decision of it (claims entry {claimed:?})"
    )]
    OrphanResolution {
        /// The operation.
        op: OpId,
        /// The entry it claims.
        claimed: Option<LeafIndex>,
    },
    /// A resolution that leaves the operation pending.
    #[error("resolution of {0} leaves it pending")]
    PendingResolution(OpId),
    /// The host's certificate check failed.
    #[error("commit certificate or batches: {0}")]
    Block(String),
    /// The host's attestation check failed.
    #[error("attestation record: {0}")]
    Attestation(String),
    /// An entry's measurement references are not its signers' latest
    /// accepted attestation records.
    #[error("measurement of {party}: entry says {got:?}, the log says {want:?}")]
    Measurement {
        /// The party.
        party: PartyId,
        /// What the entry claims.
        got: Option<MeasurementRef>,
        /// What the log establishes.
        want: Option<MeasurementRef>,
    },
    /// A checkpoint does not parse.
    #[error("checkpoint does not parse: {0}")]
    CheckpointUnparsable(ParseError),
    /// A checkpoint's cosignatures fail.
    #[error("{0}")]
    Cosignature(CosignError),
    /// A checkpoint without any TPM quote.
    #[error("checkpoint carries no TPM quote")]
    NoQuote,
    /// A quote failed the host's check.
    #[error("TPM quote of {party}: {message}")]
    Quote {
        /// Whose quote.
        party: PartyId,
        /// Why.
        message: String,
    },
    /// Checkpoints not in non-decreasing size order.
    #[error("checkpoint of size {got} follows one of size {prev}: the bundle's checkpoints are out of order")]
    CheckpointOrder {
        /// Previous size.
        prev: TreeSize,
        /// This size.
        got: TreeSize,
    },
    /// A checkpoint covers more entries than the bundle has.
    #[error("checkpoint covers {size} entries, the bundle has {have}: entries were removed")]
    BeyondLog {
        /// Its size.
        size: TreeSize,
        /// Entries in the bundle.
        have: TreeSize,
    },
    /// The recomputed root differs from a checkpoint's.
    #[error("root of the first {size} entries is {computed}, checkpoint says {signed}: an entry was altered, removed, inserted or reordered")]
    RootMismatch {
        /// Tree size.
        size: TreeSize,
        /// Recomputed.
        computed: Sha256Digest,
        /// Signed.
        signed: Sha256Digest,
    },
    /// Two successive checkpoints are not consistent.
    #[error("consistency proof from size {old} to {new} fails: {error}")]
    Inconsistent {
        /// Old size.
        old: TreeSize,
        /// New size.
        new: TreeSize,
        /// Why.
        error: VerifyError,
    },
    /// Two validly signed checkpoints of one size with different roots:
    /// proof that their signers misbehaved.
    #[error("fork at size {size}: root {first_root} signed by {first_signers:?}, root {second_root} signed by {second_signers:?}")]
    Fork {
        /// The size.
        size: TreeSize,
        /// One root.
        first_root: Sha256Digest,
        /// Who signed it (cosigners and quoters).
        first_signers: BTreeSet<PartyId>,
        /// The other root.
        second_root: Sha256Digest,
        /// Who signed that one.
        second_signers: BTreeSet<PartyId>,
    },
}

/// The first problem found, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub location: Location,
    /// What.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.kind)
    }
}

/// What the verifier checked and the first problem, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries read and hashed.
    pub entries: u64,
    /// Operation entries.
    pub operations: u64,
    /// Resolution entries.
    pub resolutions: u64,
    /// Equivocation entries.
    pub equivocations: u64,
    /// Blocks whose certificates were checked.
    pub blocks: u64,
    /// Attestation records checked.
    pub attestation_records: u64,
    /// Measurement references checked.
    pub measurement_refs: u64,
    /// Checkpoints whose root matched the recomputed tree.
    pub checkpoints: u64,
    /// Cosignatures verified.
    pub cosignatures: u64,
    /// Quotes checked.
    pub quotes: u64,
    /// Consistency proofs built and verified.
    pub consistency_proofs: u64,
    /// The recomputed tree's size.
    pub tree_size: TreeSize,
    /// The recomputed tree's root.
    pub root: Sha256Digest,
    /// The first problem.
    pub problem: Option<Problem>,
}

impl AuditReport {
    /// True when nothing was wrong.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "entries            {} ({} operations, {} resolutions, {} equivocations)",
            self.entries, self.operations, self.resolutions, self.equivocations
        )?;
        writeln!(
            f,
            "tree               size {} root {}",
            self.tree_size, self.root
        )?;
        writeln!(
            f,
            "blocks             {} commit certificates checked",
            self.blocks
        )?;
        writeln!(
            f,
            "attestation        {} records, {} measurement references",
            self.attestation_records, self.measurement_refs
        )?;
        writeln!(
            f,
            "checkpoints        {} matched the tree, {} cosignatures, {} quotes",
            self.checkpoints, self.cosignatures, self.quotes
        )?;
        writeln!(
            f,
            "consistency        {} proofs between successive checkpoints",
            self.consistency_proofs
        )?;
        match &self.problem {
            None => writeln!(f, "result             OK"),
            Some(p) => writeln!(f, "result             FAILED at {p}"),
        }
    }
}

struct PendingDecision {
    entry: LeafIndex,
    author: PartyId,
    kind: OpKind,
    attests: Option<super::entry::Measurement>,
}

/// Verifies a whole exported log: `entries` (encoded, in log order) and
/// `checkpoints` (signed note texts, in issue order). Stops at the first
/// problem.
pub fn verify_log(
    params: &LogParams,
    entries: &[Vec<u8>],
    checkpoints: &[Vec<u8>],
    checker: &mut dyn EvidenceChecker,
) -> AuditReport {
    let mut v = Verifier::new(params, checkpoints, checker);
    for e in entries {
        if !v.push_entry(e, checker) {
            break;
        }
    }
    v.finish(checker)
}

/// The streaming verifier behind [`verify_log`], for bundles read entry by
/// entry.
pub struct Verifier<'p> {
    params: &'p LogParams,
    report: AuditReport,
    /// The recomputed tree, holding the nodes since the last matched checkpoint.
    store: WindowNodeStore,
    /// Checkpoints that passed their signature checks: (bundle position, checkpoint).
    checkpoints: Vec<(usize, Checkpoint)>,
    /// Index into `checkpoints` of the next one to compare with the tree.
    next_cp: usize,
    table: Table,
    pending: BTreeMap<OpId, PendingDecision>,
    /// Attestation records accepted by resolutions of the buffered block.
    block_accepts: Vec<(PartyId, LeafIndex, Option<super::entry::Measurement>)>,
    block: Vec<AuditEntry>,
    block_start: LeafIndex,
    last_block: Option<BlockRef>,
}

impl<'p> Verifier<'p> {
    /// Parses and checks the signatures of every checkpoint, and looks for
    /// forks among them.
    pub fn new(
        params: &'p LogParams,
        checkpoints: &[Vec<u8>],
        checker: &mut dyn EvidenceChecker,
    ) -> Self {
        let mut v = Verifier {
            params,
            report: AuditReport::default(),
            store: WindowNodeStore::new(),
            checkpoints: Vec::new(),
            next_cp: 0,
            table: Table::default(),
            pending: BTreeMap::new(),
            block_accepts: Vec::new(),
            block: Vec::new(),
            block_start: LeafIndex(0),
            last_block: None,
        };
        v.check_checkpoints(checkpoints, checker);
        // Checkpoints of the empty tree.
        v.compare_checkpoints();
        v
    }

    fn fail(&mut self, location: Location, kind: ProblemKind) {
        if self.report.problem.is_none() {
            self.report.problem = Some(Problem { location, kind });
        }
    }

    fn check_checkpoints(&mut self, raw: &[Vec<u8>], checker: &mut dyn EvidenceChecker) {
        let mut by_size: BTreeMap<TreeSize, (usize, Sha256Digest, BTreeSet<PartyId>)> =
            BTreeMap::new();
        let mut prev: Option<TreeSize> = None;
        for (i, bytes) in raw.iter().enumerate() {
            let loc = Location::Checkpoint(i);
            let signed = match SignedCheckpoint::parse(bytes) {
                Ok(s) => s,
                Err(e) => return self.fail(loc, ProblemKind::CheckpointUnparsable(e)),
            };
            let cert = match check_cosignatures(
                &signed,
                &self.params.origin,
                &self.params.parties,
                self.params.fault_model,
            ) {
                Ok(c) => c,
                Err(e) => return self.fail(loc, ProblemKind::Cosignature(e)),
            };
            self.report.cosignatures += cert.cosigners.len() as u64;
            if cert.quotes.is_empty() {
                return self.fail(loc, ProblemKind::NoQuote);
            }
            let cp = signed.checkpoint;
            let qd = cp.quote_qualifying_data();
            let mut signers = cert.cosigners.clone();
            for (party, idx) in &cert.quotes {
                let Some(line) = signed.signatures.get(*idx) else {
                    continue;
                };
                if let Err(message) = checker.check_quote(*party, &cp, &qd, line) {
                    return self.fail(
                        loc,
                        ProblemKind::Quote {
                            party: *party,
                            message,
                        },
                    );
                }
                self.report.quotes += 1;
                signers.insert(*party);
            }
            if let Some((_, root, first_signers)) = by_size.get(&cp.size) {
                if *root != cp.root {
                    return self.fail(
                        loc,
                        ProblemKind::Fork {
                            size: cp.size,
                            first_root: *root,
                            first_signers: first_signers.clone(),
                            second_root: cp.root,
                            second_signers: signers,
                        },
                    );
                }
            } else {
                by_size.insert(cp.size, (i, cp.root, signers));
            }
            if let Some(p) = prev {
                if cp.size < p {
                    return self.fail(
                        loc,
                        ProblemKind::CheckpointOrder {
                            prev: p,
                            got: cp.size,
                        },
                    );
                }
            }
            prev = Some(cp.size);
            self.checkpoints.push((i, cp));
        }
    }

    /// Reads the next entry. Returns false once a problem has been found
    /// (further entries are not read).
    pub fn push_entry(&mut self, bytes: &[u8], checker: &mut dyn EvidenceChecker) -> bool {
        if self.report.problem.is_some() {
            return false;
        }
        let index = LeafIndex(self.report.entries);
        let loc = Location::Entry(index);
        let entry = match AuditEntry::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                self.fail(loc, ProblemKind::Undecodable(e));
                return false;
            }
        };
        let block = *entry.block();
        // A new block: settle the previous one first.
        match self.last_block {
            Some(last) if last.height == block.height => {
                if last != block {
                    self.fail(loc, ProblemKind::BlockMismatch(block.height));
                    return false;
                }
            }
            Some(last) => {
                if block.height < last.height {
                    self.fail(
                        loc,
                        ProblemKind::HeightRegressed {
                            prev: last.height,
                            got: block.height,
                        },
                    );
                    return false;
                }
                if block.time_ms <= last.time_ms {
                    self.fail(
                        loc,
                        ProblemKind::TimeNotIncreasing {
                            prev: last.time_ms,
                            got: block.time_ms,
                        },
                    );
                    return false;
                }
                if !self.flush_block(checker) {
                    return false;
                }
                self.block_start = index;
            }
            None => self.block_start = index,
        }
        self.last_block = Some(block);
        if !self.check_entry(index, &entry, checker) {
            return false;
        }
        self.store.push_leaf_hash(super::merkle::leaf_hash(bytes));
        self.report.entries += 1;
        self.block.push(entry);
        self.compare_checkpoints();
        self.report.problem.is_none()
    }

    fn check_entry(
        &mut self,
        index: LeafIndex,
        entry: &AuditEntry,
        checker: &mut dyn EvidenceChecker,
    ) -> bool {
        let loc = Location::Entry(index);
        let height = entry.block().height;
        match entry.status() {
            Some(OpStatus::Executed { height: h } | OpStatus::Rejected { height: h, .. })
                if *h != height =>
            {
                self.fail(
                    loc,
                    ProblemKind::StatusHeight {
                        block: height,
                        got: *h,
                    },
                );
                return false;
            }
            _ => {}
        }
        match entry {
            AuditEntry::Operation(e) => {
                self.report.operations += 1;
                if Sha256Digest::of(&e.op_bytes) != e.op_digest {
                    self.fail(loc, ProblemKind::OpDigestMismatch);
                    return false;
                }
                let want = OpId::derive(
                    &self.params.cluster,
                    height,
                    e.batch,
                    e.author,
                    e.batch_seq,
                    e.index,
                );
                if want != e.op {
                    self.fail(loc, ProblemKind::OpIdMismatch { got: e.op, want });
                    return false;
                }
                let in_order = match self.block.last() {
                    None => true,
                    Some(AuditEntry::Operation(p)) => (p.batch, p.index) < (e.batch, e.index),
                    Some(_) => false,
                };
                if !in_order {
                    self.fail(
                        loc,
                        ProblemKind::OutOfOrder {
                            batch: e.batch,
                            index: e.index,
                        },
                    );
                    return false;
                }
                if e.kind == OpKind::AttestationRecord {
                    if let Err(m) = checker.check_attestation(index, e) {
                        self.fail(loc, ProblemKind::Attestation(m));
                        return false;
                    }
                    self.report.attestation_records += 1;
                }
                if e.status == OpStatus::Pending {
                    self.pending.insert(
                        e.op,
                        PendingDecision {
                            entry: index,
                            author: e.author,
                            kind: e.kind,
                            attests: e.attests,
                        },
                    );
                }
            }
            AuditEntry::Resolution(r) => {
                self.report.resolutions += 1;
                if matches!(self.block.last(), Some(AuditEntry::Equivocation(_))) {
                    self.fail(loc, ProblemKind::EquivocationOutOfOrder);
                    return false;
                }
                if r.status == OpStatus::Pending {
                    self.fail(loc, ProblemKind::PendingResolution(r.op));
                    return false;
                }
                let decision = match (self.pending.remove(&r.op), r.decided_at) {
                    (Some(p), Some(at)) if p.entry == at => p,
                    (other, _) => {
                        // Put a mismatched decision back: it is still pending.
                        if let Some(p) = other {
                            self.pending.insert(r.op, p);
                        }
                        self.fail(
                            loc,
                            ProblemKind::OrphanResolution {
                                op: r.op,
                                claimed: r.decided_at,
                            },
                        );
                        return false;
                    }
                };
                if decision.kind == OpKind::AttestationRecord
                    && matches!(r.status, OpStatus::Executed { .. })
                {
                    self.block_accepts
                        .push((decision.author, decision.entry, decision.attests));
                }
            }
            AuditEntry::Equivocation(e) => {
                self.report.equivocations += 1;
                // Last in its block, in the block's evidence order.
                let expected = match self.block.last() {
                    Some(AuditEntry::Equivocation(p)) => p.index.checked_add(1),
                    _ => Some(0),
                };
                if expected != Some(e.index) {
                    self.fail(loc, ProblemKind::EquivocationOutOfOrder);
                    return false;
                }
                if !e.is_consistent() {
                    self.fail(loc, ProblemKind::EquivocationInconsistent(e.offender));
                    return false;
                }
            }
        }
        true
    }

    /// Checks the buffered block: certificate, measurement references; then
    /// applies its attestation acceptances to the table.
    fn flush_block(&mut self, checker: &mut dyn EvidenceChecker) -> bool {
        let Some(block) = self.last_block else {
            return true;
        };
        let entries = std::mem::take(&mut self.block);
        let loc = Location::Block(block.height, self.block_start);
        let signers = match checker.check_block(&block, &entries) {
            Ok(s) => s,
            Err(m) => {
                self.fail(loc, ProblemKind::Block(m));
                return false;
            }
        };
        self.report.blocks += 1;
        let want = self.table.refs(&signers);
        let mut accepted = Vec::new();
        for (k, e) in entries.iter().enumerate() {
            let at = LeafIndex(self.block_start.0 + k as u64);
            let got = e.decided_under();
            if got != want.as_slice() {
                let (party, g, w) = first_difference(got, &want);
                self.fail(
                    Location::Entry(at),
                    ProblemKind::Measurement {
                        party,
                        got: g,
                        want: w,
                    },
                );
                return false;
            }
            self.report.measurement_refs += got.len() as u64;
            if let AuditEntry::Operation(o) = e {
                if o.kind == OpKind::AttestationRecord
                    && matches!(o.status, OpStatus::Executed { .. })
                {
                    accepted.push((o.author, at, o.attests));
                }
            }
        }
        // Records decided earlier and accepted by a resolution in this block.
        accepted.append(&mut self.block_accepts);
        for (author, at, attests) in accepted {
            self.table.accept(author, at, attests);
        }
        true
    }

    fn compare_checkpoints(&mut self) {
        let size = self.store.tree().size();
        while let Some((pos, cp)) = self.checkpoints.get(self.next_cp) {
            let (pos, cp_size, cp_root) = (*pos, cp.size, cp.root);
            if cp_size > size {
                break;
            }
            // Checkpoints are compared as soon as the tree reaches their
            // size, so a smaller one can only follow a larger one.
            if cp_size < size {
                return self.fail(
                    Location::Checkpoint(pos),
                    ProblemKind::CheckpointOrder {
                        prev: size,
                        got: cp_size,
                    },
                );
            }
            let computed = self.store.tree().root();
            if computed != cp_root {
                return self.fail(
                    Location::Checkpoint(pos),
                    ProblemKind::RootMismatch {
                        size: cp_size,
                        computed,
                        signed: cp_root,
                    },
                );
            }
            self.report.checkpoints += 1;
            // Consistency with the previous checkpoint, as a client holding
            // only the two checkpoints would check it; the store's mark is
            // at the previous checkpoint's size.
            if let Some((prev_pos, prev)) = self
                .next_cp
                .checked_sub(1)
                .and_then(|i| self.checkpoints.get(i))
            {
                let (prev_pos, old, old_root) = (*prev_pos, prev.size, prev.root);
                if old.0 > 0 {
                    let proof: Result<Vec<Sha256Digest>, VerifyError> = if self.store.mark() == old
                    {
                        self.store
                            .consistency_from_mark()
                            .map_err(|_| VerifyError::WrongLength)
                    } else {
                        Err(VerifyError::WrongLength)
                    };
                    let result = proof
                        .and_then(|p| verify_consistency(old, &old_root, cp_size, &cp_root, &p));
                    if let Err(error) = result {
                        return self.fail(
                            Location::Checkpoints(prev_pos, pos),
                            ProblemKind::Inconsistent {
                                old,
                                new: cp_size,
                                error,
                            },
                        );
                    }
                    self.report.consistency_proofs += 1;
                }
            }
            self.store.set_mark();
            self.next_cp += 1;
        }
    }

    /// Settles the last block and the checkpoints beyond the entries, and
    /// returns the report.
    pub fn finish(mut self, checker: &mut dyn EvidenceChecker) -> AuditReport {
        if self.report.problem.is_none() {
            self.flush_block(checker);
        }
        if self.report.problem.is_none() {
            self.compare_checkpoints();
        }
        if self.report.problem.is_none() {
            if let Some((pos, cp)) = self.checkpoints.get(self.next_cp) {
                let kind = ProblemKind::BeyondLog {
                    size: cp.size,
                    have: self.store.tree().size(),
                };
                let pos = *pos;
                self.fail(Location::Checkpoint(pos), kind);
            }
        }
        self.report.tree_size = self.store.tree().size();
        self.report.root = self.store.tree().root();
        self.report
    }
}

fn first_difference(
    got: &[MeasurementRef],
    want: &[MeasurementRef],
) -> (PartyId, Option<MeasurementRef>, Option<MeasurementRef>) {
    let g: BTreeMap<PartyId, MeasurementRef> = got.iter().map(|r| (r.party, *r)).collect();
    let w: BTreeMap<PartyId, MeasurementRef> = want.iter().map(|r| (r.party, *r)).collect();
    let parties: BTreeSet<PartyId> = g.keys().chain(w.keys()).copied().collect();
    for p in parties {
        if g.get(&p) != w.get(&p) {
            return (p, g.get(&p).copied(), w.get(&p).copied());
        }
    }
    // Same set, different order or duplicates.
    let p = got
        .first()
        .or(want.first())
        .map(|r| r.party)
        .unwrap_or(PartyId(0));
    (p, got.first().copied(), want.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::tests::Keys;
    use crate::audit::checkpoint::{origin_for, quote_signature, CheckpointPolicy};
    use crate::audit::entry::tests::{approve, attest, measurement_of, Log};
    use crate::audit::merkle::MemoryNodeStore;
    use crate::sessions::ops::OpBody;
    use proptest::prelude::*;

    /// A host stand-in: certificates name every party (or one fewer than a
    /// quorum when `short_at` is that height); a "quote" is the qualifying
    /// data itself unless `bad_pcr`; evidence establishes
    /// `measurement_of(evidence)`.
    #[derive(Default)]
    struct Host {
        parties: BTreeSet<PartyId>,
        short_at: Option<Height>,
        bad_pcr: Option<PartyId>,
    }

    impl EvidenceChecker for Host {
        fn check_block(
            &mut self,
            block: &BlockRef,
            _: &[AuditEntry],
        ) -> Result<BTreeSet<PartyId>, String> {
            if Some(block.height) == self.short_at {
                return Err("2 precommits, a quorum is 3".into());
            }
            Ok(self.parties.clone())
        }
        fn check_quote(
            &mut self,
            party: PartyId,
            _: &Checkpoint,
            qd: &Sha256Digest,
            quote: &NoteSignature,
        ) -> Result<(), String> {
            if Some(party) == self.bad_pcr {
                return Err("quoted PCR 15 is not an approved measurement".into());
            }
            if quote.signature != qd.0 {
                return Err("qualifying data is not this checkpoint's hash".into());
            }
            Ok(())
        }
        fn check_attestation(&mut self, _: LeafIndex, e: &OperationEntry) -> Result<(), String> {
            let op =
                crate::sessions::ops::Operation::decode(&e.op_bytes).map_err(|e| e.to_string())?;
            let OpBody::AttestationRecord(a) = op.body else {
                return Err("not an attestation record".into());
            };
            if measurement_of(e.author, &a.evidence.0) != e.attests {
                return Err("evidence does not establish the recorded measurement".into());
            }
            Ok(())
        }
    }

    struct Fixture {
        params: LogParams,
        keys: Keys,
        entries: Vec<Vec<u8>>,
        checkpoints: Vec<Vec<u8>>,
        host: Host,
    }

    fn sign(keys: &Keys, origin: &str, cp: &Checkpoint, issuer: u32, cosigners: &[u32]) -> Vec<u8> {
        let mut sigs = vec![quote_signature(
            origin,
            PartyId(issuer),
            b"ak",
            cp.quote_qualifying_data().0.to_vec(),
        )];
        for p in cosigners {
            sigs.push(keys.cosign(origin, *p, cp));
        }
        SignedCheckpoint {
            checkpoint: cp.clone(),
            signatures: sigs,
        }
        .format()
        .into_bytes()
    }

    /// A three-party log: attestations, approvals, a rejected record; a
    /// checkpoint whenever the policy says so.
    fn fixture() -> Fixture {
        let mut log = Log::new(3);
        let keys = Keys::new(3);
        let origin = origin_for(&log.c.id);
        let params = LogParams {
            cluster: log.c.id,
            origin: origin.clone(),
            parties: keys.public.clone(),
            fault_model: FaultModel::Byzantine,
        };
        let policy = CheckpointPolicy {
            every_entries: 3,
            every_ms: 0,
        };
        let mut store = MemoryNodeStore::new();
        let mut checkpoints = vec![];
        let mut last = None;
        let mut entries = vec![];
        let script: Vec<Vec<(u32, OpBody)>> =
            vec![vec![], vec![(1, attest(b"p1", 1)), (2, attest(b"p2", 1))]];
        let mut run = |log: &mut Log, ops: Vec<(u32, OpBody)>| {
            let es = log.block(ops);
            for e in &es {
                let b = e.encode();
                store.append(&b);
                entries.push(b);
            }
            let time = log.height * 1000;
            if policy.due(last, store.size(), time) {
                let cp = Checkpoint {
                    origin: origin.clone(),
                    size: store.size(),
                    root: store.root(),
                    extensions: vec![],
                };
                checkpoints.push(sign(
                    &keys,
                    &origin,
                    &cp,
                    (log.height % 3 + 1) as u32,
                    &[1, 2, 3],
                ));
                last = Some((store.size(), time));
            }
            es
        };
        for ops in script {
            run(&mut log, ops);
        }
        let p1 = *log.entries[0].op().unwrap();
        let p2 = *log.entries[1].op().unwrap();
        run(
            &mut log,
            vec![(2, approve(p1)), (3, approve(p1)), (1, approve(p2))],
        );
        run(&mut log, vec![(3, approve(p2)), (3, attest(b"p3", 2))]);
        let p3 = *log
            .entries
            .iter()
            .rev()
            .find(|e| matches!(e, AuditEntry::Operation(o) if o.kind == OpKind::AttestationRecord))
            .unwrap()
            .op()
            .unwrap();
        run(&mut log, vec![(1, approve(p3)), (2, approve(p3))]);
        run(&mut log, vec![(1, attest(b"p1 again", 4))]);
        // The exporter checkpoints the tail: entries past the last
        // checkpoint are covered by no signature.
        if last.map(|(s, _)| s) != Some(store.size()) {
            let cp = Checkpoint {
                origin: origin.clone(),
                size: store.size(),
                root: store.root(),
                extensions: vec![],
            };
            checkpoints.push(sign(&keys, &origin, &cp, 1, &[1, 2, 3]));
        }
        Fixture {
            params,
            keys,
            entries,
            checkpoints,
            host: Host {
                parties: [1, 2, 3].map(PartyId).into(),
                ..Host::default()
            },
        }
    }

    fn run(f: &mut Fixture) -> AuditReport {
        verify_log(&f.params, &f.entries, &f.checkpoints, &mut f.host)
    }

    fn problem(f: &mut Fixture) -> Problem {
        let r = run(f);
        match r.problem.clone() {
            Some(p) => p,
            None => panic!("expected a problem, report:\n{r}"),
        }
    }

    #[test]
    fn an_honest_log_verifies_with_every_count() {
        let mut f = fixture();
        let r = run(&mut f);
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.entries, f.entries.len() as u64);
        assert_eq!(r.tree_size, TreeSize(f.entries.len() as u64));
        assert!(r.checkpoints >= 3);
        assert_eq!(r.checkpoints, f.checkpoints.len() as u64);
        assert_eq!(r.consistency_proofs, r.checkpoints - 1);
        assert_eq!(r.cosignatures, 3 * r.checkpoints);
        assert_eq!(r.quotes, r.checkpoints);
        assert_eq!(r.attestation_records, 4);
        assert!(r.resolutions >= 3, "{r}");
        // Later blocks are decided under all three accepted measurements.
        assert!(r.measurement_refs >= 3);
        let last = AuditEntry::decode(f.entries.last().unwrap()).unwrap();
        assert_eq!(last.decided_under().len(), 3);
        assert!(r.to_string().contains("OK"));
    }

    fn rewrite(f: &mut Fixture, i: usize, edit: impl FnOnce(&mut AuditEntry)) {
        let mut e = AuditEntry::decode(&f.entries[i]).unwrap();
        edit(&mut e);
        f.entries[i] = e.encode();
    }

    #[test]
    fn an_altered_entry_is_detected() {
        let mut f = fixture();
        rewrite(&mut f, 0, |e| {
            if let AuditEntry::Operation(o) = e {
                o.op_bytes.push(0);
            }
        });
        assert_eq!(problem(&mut f).kind, ProblemKind::OpDigestMismatch);
        // An alteration the entry alone cannot reveal: the outcome.
        let mut f = fixture();
        rewrite(&mut f, 2, |e| {
            if let AuditEntry::Operation(o) = e {
                o.status = OpStatus::Rejected {
                    height: o.block.height,
                    reasons: vec![],
                };
            }
        });
        let p = problem(&mut f);
        assert!(matches!(p.kind, ProblemKind::RootMismatch { .. }), "{p}");
    }

    #[test]
    fn a_removed_or_reordered_entry_is_detected() {
        let mut f = fixture();
        f.entries.pop();
        let p = problem(&mut f);
        assert!(
            matches!(
                p.kind,
                ProblemKind::BeyondLog { .. } | ProblemKind::RootMismatch { .. }
            ),
            "{p}"
        );
        let mut f = fixture();
        f.entries.remove(1);
        let p = problem(&mut f);
        assert!(
            matches!(
                p.kind,
                ProblemKind::RootMismatch { .. } | ProblemKind::OrphanResolution { .. }
            ),
            "{p}"
        );
        // Two operations of one block swapped.
        let mut f = fixture();
        f.entries.swap(0, 1);
        let p = problem(&mut f);
        assert!(matches!(p.kind, ProblemKind::OutOfOrder { .. }), "{p}");
        assert_eq!(p.location, Location::Entry(LeafIndex(1)));
        // Blocks swapped.
        let mut f = fixture();
        let n = f.entries.len();
        f.entries.swap(0, n - 1);
        let p = problem(&mut f);
        assert!(matches!(p.kind, ProblemKind::HeightRegressed { .. }), "{p}");
    }

    #[test]
    fn a_repeated_or_orphan_resolution_is_detected() {
        let mut f = fixture();
        let i = f
            .entries
            .iter()
            .position(|e| matches!(AuditEntry::decode(e), Ok(AuditEntry::Resolution(_))))
            .unwrap();
        let copy = f.entries[i].clone();
        f.entries.insert(i + 1, copy);
        let p = problem(&mut f);
        assert!(
            matches!(p.kind, ProblemKind::OrphanResolution { .. }),
            "{p}"
        );
        assert_eq!(p.location, Location::Entry(LeafIndex(i as u64 + 1)));
        // A resolution that lost its decision.
        let mut f = fixture();
        rewrite(&mut f, i, |e| {
            if let AuditEntry::Resolution(r) = e {
                r.decided_at = None;
            }
        });
        let p = problem(&mut f);
        assert!(
            matches!(p.kind, ProblemKind::OrphanResolution { claimed: None, .. }),
            "{p}"
        );
    }

    #[test]
    fn a_checkpoint_signed_by_a_non_party_is_detected() {
        let mut f = fixture();
        let outsider = Keys::new(4);
        let cp = SignedCheckpoint::parse(&f.checkpoints[0]).unwrap();
        let mut signed = cp.clone();
        signed
            .signatures
            .push(outsider.cosign(&f.params.origin, 4, &cp.checkpoint));
        f.checkpoints[0] = signed.format().into_bytes();
        assert_eq!(
            problem(&mut f).kind,
            ProblemKind::Cosignature(CosignError::NotAParty(PartyId(4)))
        );
        // Two cosignatures of three is below the quorum.
        let mut f = fixture();
        let cp = SignedCheckpoint::parse(&f.checkpoints[0]).unwrap();
        let mut short = cp.clone();
        short.signatures.pop();
        f.checkpoints[0] = short.format().into_bytes();
        assert_eq!(
            problem(&mut f),
            Problem {
                location: Location::Checkpoint(0),
                kind: ProblemKind::Cosignature(CosignError::NoQuorum { got: 2, need: 3 })
            }
        );
    }

    #[test]
    fn a_quote_over_another_pcr_or_checkpoint_is_detected() {
        let mut f = fixture();
        let cp = SignedCheckpoint::parse(&f.checkpoints[0]).unwrap();
        let (issuer, _) = cp.signatures[0].signer(&f.params.origin).unwrap();
        f.host.bad_pcr = Some(issuer);
        let p = problem(&mut f);
        assert!(
            matches!(p.kind, ProblemKind::Quote { party, .. } if party == issuer),
            "{p}"
        );
        // A quote whose qualifying data is another checkpoint's.
        let mut f = fixture();
        let cp = SignedCheckpoint::parse(&f.checkpoints[0]).unwrap();
        let other = SignedCheckpoint::parse(&f.checkpoints[1]).unwrap();
        let mut cp2 = cp.clone();
        cp2.signatures[0].signature = other.signatures[0].signature.clone();
        f.checkpoints[0] = cp2.format().into_bytes();
        assert!(matches!(problem(&mut f).kind, ProblemKind::Quote { .. }));
        // No quote at all.
        let mut f = fixture();
        let cp = SignedCheckpoint::parse(&f.checkpoints[0]).unwrap();
        let mut cp3 = cp.clone();
        cp3.signatures.remove(0);
        f.checkpoints[0] = cp3.format().into_bytes();
        assert_eq!(problem(&mut f).kind, ProblemKind::NoQuote);
    }

    #[test]
    fn a_certificate_one_signature_short_is_detected() {
        let mut f = fixture();
        f.host.short_at = Some(Height(3));
        let p = problem(&mut f);
        assert!(matches!(p.location, Location::Block(Height(3), _)), "{p}");
        assert!(matches!(p.kind, ProblemKind::Block(ref m) if m.contains("quorum")));
    }

    #[test]
    fn a_fork_names_the_signers_of_both_sides() {
        let mut f = fixture();
        let cp = SignedCheckpoint::parse(&f.checkpoints[0])
            .unwrap()
            .checkpoint;
        let forked = Checkpoint {
            root: Sha256Digest::of(b"another history"),
            ..cp.clone()
        };
        f.checkpoints
            .insert(1, sign(&f.keys, &f.params.origin, &forked, 2, &[1, 2, 3]));
        let p = problem(&mut f);
        match p.kind {
            ProblemKind::Fork {
                size,
                first_signers,
                second_signers,
                ..
            } => {
                assert_eq!(size, cp.size);
                assert_eq!(first_signers.len(), 3);
                assert_eq!(second_signers, [1, 2, 3].map(PartyId).into());
            }
            k => panic!("expected a fork, got {k}"),
        }
        assert_eq!(p.location, Location::Checkpoint(1));
    }

    #[test]
    fn a_false_measurement_reference_is_detected() {
        let mut f = fixture();
        // Drop the checkpoints so the tree does not catch it first.
        f.checkpoints.clear();
        let last = f.entries.len() - 1;
        rewrite(&mut f, last, |e| {
            if let AuditEntry::Operation(o) = e {
                o.decided_under[0].record = LeafIndex(1);
            }
        });
        let p = problem(&mut f);
        assert!(
            matches!(
                p.kind,
                ProblemKind::Measurement {
                    party: PartyId(1),
                    ..
                }
            ),
            "{p}"
        );
        assert_eq!(p.location, Location::Entry(LeafIndex(last as u64)));
    }

    /// Equivocation entries: one naming its votes verifies; one naming
    /// another offender, or out of the block's evidence order, does not.
    #[test]
    fn equivocation_entries_must_name_their_votes_in_order() {
        use crate::audit::entry::EquivocationEntry;
        use crate::audit::ledger::tests::equivocation;
        let params = fixture().params;
        let entry = |index: u32, offender: u32| {
            let evidence = equivocation();
            let (_, height, round, step) = evidence.key();
            AuditEntry::Equivocation(EquivocationEntry {
                block: BlockRef {
                    height: Height(2),
                    time_ms: 2_000,
                    block_hash: Sha256Digest::of(b"block 2"),
                },
                index,
                offender: PartyId(offender),
                height,
                round,
                step,
                evidence,
                decided_under: vec![],
            })
            .encode()
        };
        let verify = |entries: &[Vec<u8>]| {
            let mut host = Host::default();
            let mut v = Verifier::new(&params, &[], &mut host);
            for e in entries {
                v.push_entry(e, &mut host);
            }
            v.finish(&mut host)
        };
        let ok = verify(&[entry(0, 3)]);
        assert!(ok.is_ok(), "{ok}");
        assert_eq!(ok.equivocations, 1);
        let kind = |r: AuditReport| r.problem.map(|p| p.kind);
        assert_eq!(
            kind(verify(&[entry(0, 1)])),
            Some(ProblemKind::EquivocationInconsistent(PartyId(1)))
        );
        assert_eq!(
            kind(verify(&[entry(0, 3), entry(0, 3)])),
            Some(ProblemKind::EquivocationOutOfOrder)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn corrupt_bundles_never_panic(
            entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            cps in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..128), 0..3),
            flip in any::<(usize, usize, u8)>(),
        ) {
            let mut f = fixture();
            let _ = verify_log(&f.params, &entries, &cps, &mut f.host);
            // One byte of an honest bundle changed.
            let i = flip.0 % f.entries.len();
            let j = flip.1 % f.entries[i].len();
            f.entries[i][j] ^= flip.2 | 1;
            let r = run(&mut f);
            prop_assert!(!r.is_ok());
        }
    }
}
