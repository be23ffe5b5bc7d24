//! `quorate audit verify`: checks a bundle offline (no TPM, no network).
//!
//! The firmware's streaming [`Verifier`] checks the entries, the Merkle
//! tree, the checkpoints' cosignatures, consistency and forks, and the
//! measurement references. This module feeds it and implements its
//! [`EvidenceChecker`] with the consensus and attestation crates:
//!
//! - every block: it decodes, is at its height, obeys the rules every
//!   validator checked before it voted (`consensus::validate`, the same
//!   code the daemon runs: it links to its parent, its time advances, its
//!   proposer and batch authors are parties, every batch is for this
//!   cluster, correctly signed and made of operations that decode and are
//!   their signer's, each author's batches follow on without gaps or
//!   replays, at most `MAX_OPS_PER_BLOCK` operations, its equivocation
//!   evidence verifies and is new, its header's certificate and log head),
//!   and the certificate the exporter stored proves it decided. Not checked
//!   offline: the block size limit (a bundle carries the cluster's rules
//!   only as a digest) and whether an empty block was a needed carrier;
//! - the canonical commit certificate of block *h* (the one whose signers
//!   the entries of *h* name) is verified and its signers returned to the
//!   verifier; the entries of a block are exactly its operations, in order;
//! - every checkpoint's TPM quote, with the issuer's enrolled AK, against
//!   the policy (`quorate_attestation::checkpoint_verify`, through
//!   [`crate::daemon::audit::verify_quote`], the daemon's own check);
//! - every attestation record's evidence against the policy, with the
//!   issuer's enrollment and the block hash it binds, and that it
//!   establishes the measurement its entry records; a record the parties
//!   accepted must verify, a record they rejected may fail.
//!
//! Signature checks run ahead of the verifier, a chunk of blocks at a time,
//! spread over every core ([`std::thread::scope`]); the verifier then
//! answers from their results in log order. Memory stays bounded by a
//! chunk (plus 32 bytes per block hash, for the heights records bind).

use super::bundle::{BundleBlock, BundleError, BundleHeader, BundleReader, Section};
use crate::init::Enrollment;
use crate::measurement::measurement_of_evidence;
use quorate_attestation::evidence::Freshness;
use quorate_attestation::policy::Policy;
use quorate_firmware::audit::checkpoint::{origin_for, quote_key_id, Checkpoint, NoteSignature};
use quorate_firmware::audit::entry::{AuditEntry, BlockRef, Measurement, OperationEntry};
use quorate_firmware::audit::merkle::{leaf_hash, CompactTree, LeafIndex};
use quorate_firmware::audit::verify::{AuditReport, EvidenceChecker, LogParams, Verifier};
use quorate_firmware::consensus::certificate::{
    verify_commit_certificate, CommitCertificate, VerifyCache,
};
use quorate_firmware::consensus::context::{Block, LogHead, Party, PartySet};
use quorate_firmware::consensus::validate::{
    check_block_contents, check_block_in_chain, BlockRules, Parent,
};
use quorate_firmware::consensus::ChainState;
use quorate_firmware::consensus::Equivocation;
use quorate_firmware::sessions::machine::OpStatus;
use quorate_firmware::sessions::ops::{OpBody, OpId, Operation};
use quorate_firmware::types::{Height, PartyId, Sha256Digest};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;

/// Entries gathered before a chunk's signatures are checked in parallel.
const CHUNK_ENTRIES: usize = 8192;
/// Blocks gathered before a chunk's signatures are checked in parallel.
const CHUNK_BLOCKS: usize = 512;

/// A problem outside the entries: the bundle itself, a block, the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleProblem {
    /// Where (e.g. "block 7", "section 12", "enrollment of P2").
    pub location: String,
    /// What.
    pub message: String,
}

impl fmt::Display for BundleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// What the host checked, beside the verifier core's [`AuditReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// The cluster id.
    pub cluster: Option<Sha256Digest>,
    /// Parties (enrollments) in the bundle.
    pub parties: u64,
    /// Whose store was exported.
    pub exporter: Option<PartyId>,
    /// The fault model the cluster id commits to (and its quorum).
    pub fault_model: Option<(quorate_firmware::types::FaultModel, usize)>,
    /// Blocks decoded and chained.
    pub blocks: u64,
    /// Canonical certificates checked (and their signers handed on).
    pub canonical_certificates: u64,
    /// Precommit signatures verified (stored and canonical certificates).
    pub precommit_signatures: u64,
    /// Batch signatures verified.
    pub batch_signatures: u64,
    /// Operations matched against their entries.
    pub operations_matched: u64,
    /// Pieces of equivocation evidence matched against their entries.
    pub equivocations_matched: u64,
    /// Checkpoint quotes verified against the policy.
    pub quotes: u64,
    /// Attestation records whose evidence verified against the policy.
    pub records_verified: u64,
    /// Records the parties rejected whose evidence also fails here.
    pub records_rejected_confirmed: u64,
    /// Whether the policy given is the one the cluster was configured with.
    pub policy_is_clusters: Option<bool>,
    /// Threads the signature checks ran on.
    pub threads: usize,
    /// Whether the policy checked against is a development policy.
    pub dev_policy: bool,
    /// Valid outside-witness cosignatures, over every checkpoint.
    pub witness_cosignatures: u64,
    /// (witnesses that cosigned the latest checkpoint, required), when
    /// witnesses were configured.
    pub witnessed: Option<(usize, usize)>,
}

/// The outcome of verifying a bundle.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// The verifier core's report (entries, tree, checkpoints, measurements).
    pub report: AuditReport,
    /// The host's checks.
    pub host: HostCounts,
    /// The first problem outside the verifier core's checks, if any.
    pub problem: Option<BundleProblem>,
}

impl Verification {
    /// True when nothing was wrong.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none() && self.report.is_ok()
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.host;
        writeln!(f, "quorate audit verify")?;
        if let Some(c) = &h.cluster {
            writeln!(f, "cluster            {c}")?;
        }
        writeln!(
            f,
            "parties            {} enrolled{}",
            h.parties,
            h.exporter
                .map(|p| format!(", exported by {p}"))
                .unwrap_or_default()
        )?;
        if let Some((m, q)) = h.fault_model {
            writeln!(
                f,
                "fault model        {m:?}: quorum {q} of {} (bound by the cluster id)",
                h.parties
            )?;
        }
        if h.dev_policy {
            writeln!(
                f,
                "policy             DEV: a development policy (dev = true); the measurements prove nothing against the parties' own users"
            )?;
        }
        match h.policy_is_clusters {
            Some(true) => writeln!(
                f,
                "policy             the cluster's configured reference policy"
            )?,
            Some(false) => writeln!(
                f,
                "policy             NOT the cluster's configured reference policy (checked against yours)"
            )?,
            None => {}
        }
        writeln!(
            f,
            "chain              {} blocks decoded and linked, {} canonical certificates",
            h.blocks, h.canonical_certificates
        )?;
        writeln!(
            f,
            "signatures         {} precommit, {} batch (on {} threads)",
            h.precommit_signatures, h.batch_signatures, h.threads
        )?;
        writeln!(
            f,
            "operations         {} matched to their blocks, {} equivocations",
            h.operations_matched, h.equivocations_matched
        )?;
        writeln!(
            f,
            "tpm                {} checkpoint quotes, {} attestation records verified against the policy ({} rejected records confirmed)",
            h.quotes, h.records_verified, h.records_rejected_confirmed
        )?;
        if let Some((got, need)) = h.witnessed {
            writeln!(
                f,
                "witnesses          {got} cosigned the latest checkpoint ({need} required), {} valid cosignatures in all",
                h.witness_cosignatures
            )?;
        }
        let core = self.report.to_string();
        // The core's last line is its verdict; ours replaces it.
        for line in core.lines().filter(|l| !l.starts_with("result")) {
            writeln!(f, "{line}")?;
        }
        match (&self.problem, &self.report.problem) {
            (Some(p), _) => writeln!(f, "result             FAILED at {p}"),
            (None, Some(p)) => writeln!(f, "result             FAILED at {p}"),
            (None, None) => writeln!(f, "result             OK"),
        }
    }
}

/// Why verification could not run at all (as opposed to a problem found).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The policy is unusable.
    #[error("the reference policy is unusable: {0}")]
    Policy(String),
}

/// A block after the parallel pass: decoded and its signatures checked.
struct Prepared {
    height: Height,
    block: Result<Block, String>,
    /// The stored certificate's check (it proves the block decided).
    stored: Result<CommitCertificate, String>,
    /// Signers of the header's certificate of the previous block (checked
    /// with the body).
    previous: Option<BTreeSet<PartyId>>,
    /// [`check_block_contents`]: size aside, everything the block alone
    /// shows (batches, evidence, the header's certificate).
    body: Result<(), String>,
    precommits: u64,
    batches: u64,
    entries: Vec<Vec<u8>>,
    /// The entries' leaf hashes, computed in the parallel pass.
    leaves: Vec<Sha256Digest>,
}

/// A block waiting for its entries' check.
struct Open {
    block: Block,
    /// Signers of its canonical certificate, once known.
    canonical: Option<BTreeSet<PartyId>>,
    /// Entries the bundle placed after it.
    entries: u64,
}

/// The host half of the verifier: the [`EvidenceChecker`] and the state
/// it keeps between blocks.
pub struct HostChecker {
    cluster: quorate_firmware::types::ClusterId,
    epoch: quorate_firmware::types::Epoch,
    model: quorate_firmware::types::FaultModel,
    parties: PartySet,
    enrollments: BTreeMap<PartyId, Enrollment>,
    policy: Policy,
    admission: crate::daemon::admission::Admission,
    /// Hash of every block so far (index h-1), for the heights records bind.
    hashes: Vec<Sha256Digest>,
    /// The chain after the last settled block, as validators saw it (the
    /// state [`check_block_in_chain`] checks the next block against).
    chain: ChainState,
    /// The tree recomputed from the entries' leaf hashes, for the heads
    /// block headers carry.
    tree: CompactTree,
    /// The head before the previous block's entries (after blocks <= h-2
    /// when block h is next).
    head_before_previous: LogHead,
    open: BTreeMap<Height, Open>,
    /// Records decided pending whose evidence fails: a later acceptance is an error.
    doubtful: BTreeMap<OpId, (LeafIndex, String)>,
    counts: HostCounts,
}

fn ak_of(e: &Enrollment) -> Result<Vec<u8>, String> {
    let ak =
        e.ak.as_ref()
            .ok_or_else(|| format!("{}'s enrollment has no AK", e.party_id))?;
    hex::decode(&ak.tpmt_public).map_err(|err| format!("{}'s AK: {err}", e.party_id))
}

/// What the parallel pass needs: the cluster and its vote keys.
#[derive(Clone)]
struct Keys {
    cluster: quorate_firmware::types::ClusterId,
    epoch: quorate_firmware::types::Epoch,
    model: quorate_firmware::types::FaultModel,
    parties: PartySet,
}

impl Keys {
    fn prepare(&self, b: BundleBlock, entries: Vec<Vec<u8>>) -> Prepared {
        let mut p = Prepared {
            height: b.height,
            block: Err(String::new()),
            stored: Err(String::new()),
            previous: None,
            body: Ok(()),
            precommits: 0,
            batches: 0,
            leaves: entries.iter().map(|e| leaf_hash(e)).collect(),
            entries,
        };
        let block = match Block::from_bytes(&b.block) {
            Ok(block) => block,
            Err(e) => {
                p.block = Err(format!("does not decode: {e}"));
                return p;
            }
        };
        let cert = |bytes: &[u8]| -> Result<CommitCertificate, String> {
            postcard::from_bytes(bytes).map_err(|e| format!("certificate does not decode: {e}"))
        };
        p.stored = cert(&b.cert).and_then(|c| {
            verify_commit_certificate(
                &self.parties,
                self.model,
                self.cluster,
                self.epoch,
                b.height,
                block.hash(),
                &c,
            )
            .map_err(|e| format!("its stored certificate: {e}"))?;
            Ok(c)
        });
        if let Ok(c) = &p.stored {
            p.precommits += c.signatures.len() as u64;
        }
        let rules = BlockRules {
            cluster: self.cluster,
            epoch: self.epoch,
            fault_model: self.model,
            parties: &self.parties,
            // A bundle carries the cluster's rules only as a digest.
            max_block_bytes: None,
        };
        p.body = check_block_contents(&rules, &block, &mut VerifyCache::default())
            .map_err(|e| e.to_string());
        if p.body.is_ok() {
            p.batches = block.batches().len() as u64;
            if let Some(c) = &block.header().last_commit {
                p.precommits += c.signatures.len() as u64;
            }
        }
        p.previous = block
            .header()
            .last_commit
            .as_ref()
            .map(|c| c.signatures.iter().map(|(s, _)| *s).collect());
        p.block = Ok(block);
        p
    }
}

impl HostChecker {
    fn keys(&self) -> Keys {
        Keys {
            cluster: self.cluster,
            epoch: self.epoch,
            model: self.model,
            parties: self.parties.clone(),
        }
    }

    /// Sequential checks of one prepared block, in height order.
    fn settle(&mut self, p: &mut Prepared) -> Result<(), String> {
        let block = std::mem::replace(&mut p.block, Err(String::new()))?;
        let h = block.header().clone();
        if h.height != p.height {
            return Err(format!("its header says height {}", h.height));
        }
        // The rules every validator checked before it voted: one home,
        // `consensus::validate` (the same code the daemon runs). Of block
        // time that is monotonicity only: the window around a validator's
        // clock (`validate::check_block_time`) needs that validator's clock
        // when the proposal arrived, which no bundle records.
        check_block_in_chain(
            &Parent {
                chain: &self.chain,
                // The tree after the entries of every block up to h-2.
                log_head: self.head_before_previous,
                // Whether an empty block was a needed carrier depends on the
                // session machine's deadlines, which the verifier does not
                // replay; an empty block changes no history.
                log_pending: None,
                wake_at: None,
            },
            &block,
        )
        .map_err(|e| e.to_string())?;
        std::mem::replace(&mut p.stored, Ok(empty_cert()))?;
        std::mem::replace(&mut p.body, Ok(()))?;
        self.counts.precommit_signatures += p.precommits;
        self.counts.batch_signatures += p.batches;
        // The canonical certificate of the previous block.
        let prev = Height(p.height.0.saturating_sub(1));
        if let Some(signers) = p.previous.take() {
            if let Some(o) = self.open.get_mut(&prev) {
                o.canonical = Some(signers);
            }
            self.counts.canonical_certificates += 1;
        }
        self.head_before_previous = self.head();
        for l in &p.leaves {
            self.tree.push_leaf_hash(*l);
        }
        self.hashes.push(block.hash().0);
        self.chain = self.chain.after(&block);
        self.counts.blocks += 1;
        self.open.insert(
            p.height,
            Open {
                block,
                canonical: None,
                entries: p.entries.len() as u64,
            },
        );
        Ok(())
    }

    fn head(&self) -> LogHead {
        LogHead {
            size: self.tree.size().0,
            root: self.tree.root(),
        }
    }

    /// Blocks below `height` left without entries must have had no operations.
    fn close_before(&mut self, height: Height) -> Result<(), String> {
        let rest = self.open.split_off(&height);
        let done = std::mem::replace(&mut self.open, rest);
        for (h, o) in done {
            let ops: usize = o.block.batches().iter().map(|b| b.body.ops.len()).sum();
            let evidence = o.block.evidence().len();
            if evidence > 0 {
                return Err(format!(
                    "block {h} records {evidence} pieces of equivocation evidence but the bundle has no entries for it: entries were removed"
                ));
            }
            if ops > 0 {
                return Err(format!(
                    "block {h} carries {ops} operations but the bundle has no entries for it: entries were removed"
                ));
            }
        }
        Ok(())
    }
}

fn empty_cert() -> CommitCertificate {
    CommitCertificate {
        height: Height(0),
        round: 0,
        block: Default::default(),
        signatures: vec![],
    }
}

impl EvidenceChecker for HostChecker {
    fn check_block(
        &mut self,
        r: &BlockRef,
        entries: &[AuditEntry],
    ) -> Result<BTreeSet<PartyId>, String> {
        self.close_before(r.height)?;
        let o = self
            .open
            .remove(&r.height)
            .ok_or_else(|| format!("the bundle holds no block {}", r.height))?;
        if o.block.hash().0 != r.block_hash || o.block.header().time_ms != r.time_ms {
            return Err(format!(
                "the entries name block {} ({} ms), the bundle's block at that height is {} ({} ms)",
                r.block_hash,
                r.time_ms,
                o.block.hash().0,
                o.block.header().time_ms
            ));
        }
        if o.entries != entries.len() as u64 {
            return Err(format!(
                "{} entries name this block, the bundle places {} after it",
                entries.len(),
                o.entries
            ));
        }
        // Its operations, exactly and in order, are the operation entries.
        let ops: Vec<&OperationEntry> = entries
            .iter()
            .filter_map(|e| match e {
                AuditEntry::Operation(o) => Some(o),
                _ => None,
            })
            .collect();
        let total: usize = o.block.batches().iter().map(|b| b.body.ops.len()).sum();
        if ops.len() < total {
            return Err(format!(
                "the block carries {total} operations, the bundle has {} operation entries for it: entries were removed",
                ops.len()
            ));
        }
        if ops.len() > total {
            return Err(format!(
                "the block carries {total} operations, the bundle has {} operation entries for it: entries were inserted",
                ops.len()
            ));
        }
        let mut ops = ops.into_iter();
        for (bi, batch) in o.block.batches().iter().enumerate() {
            for (oi, bytes) in batch.body.ops.iter().enumerate() {
                let e = ops.next().ok_or("operation entries ran out")?;
                let same = usize::try_from(e.batch).ok() == Some(bi)
                    && usize::try_from(e.index).ok() == Some(oi)
                    && e.author == batch.body.author
                    && e.batch_seq == batch.body.seq
                    && e.op_bytes == *bytes;
                if !same {
                    return Err(format!(
                        "the entry for operation {oi} of batch {bi} is not that operation: it was altered, moved or replaced"
                    ));
                }
                self.counts.operations_matched += 1;
            }
        }
        // Its equivocation evidence, exactly and in order, is the
        // equivocation entries (the verifier checked their place and that
        // each names its votes' offender; `check_block_contents` the votes'
        // signatures).
        let named: Vec<&Equivocation> = entries
            .iter()
            .filter_map(|e| match e {
                AuditEntry::Equivocation(q) => Some(&q.evidence),
                _ => None,
            })
            .collect();
        let recorded: Vec<&Equivocation> = o.block.evidence().iter().collect();
        if named != recorded {
            return Err(format!(
                "the block records {} pieces of equivocation evidence, the bundle's equivocation entries for it are {} and not the same: entries were removed, inserted or altered",
                recorded.len(),
                named.len()
            ));
        }
        self.counts.equivocations_matched += named.len() as u64;
        // A record whose evidence failed here must not have been accepted.
        for e in entries {
            if let AuditEntry::Resolution(res) = e {
                if let Some((at, why)) = self.doubtful.remove(&res.op) {
                    if matches!(res.status, OpStatus::Executed { .. }) {
                        return Err(format!(
                            "the attestation record at entry {at} was accepted, but its evidence fails the policy: {why}"
                        ));
                    }
                    self.counts.records_rejected_confirmed += 1;
                }
            }
        }
        o.canonical.ok_or_else(|| {
            format!(
                "the bundle lacks block {}, whose header carries this block's canonical certificate",
                r.height.0.saturating_add(1)
            )
        })
    }

    fn check_quote(
        &mut self,
        party: PartyId,
        _checkpoint: &Checkpoint,
        qualifying_data: &Sha256Digest,
        quote: &NoteSignature,
    ) -> Result<(), String> {
        let e = self
            .enrollments
            .get(&party)
            .ok_or_else(|| format!("{party} is not enrolled"))?;
        let ak = ak_of(e)?;
        // The signed-note key ID binds the line to this AK (the cosignature
        // check cannot: it knows only vote keys).
        if quote.key_id != quote_key_id(&quote.name, &crate::daemon::audit::ak_tpm2b(&ak)) {
            return Err(format!(
                "the line's key ID is not that of {party}'s enrolled AK"
            ));
        }
        // The daemon's check, with the reference policy.
        crate::daemon::audit::verify_quote(
            &ak,
            qualifying_data,
            &quote.signature,
            Some(&self.policy),
        )?;
        self.counts.quotes += 1;
        Ok(())
    }

    fn check_attestation(&mut self, index: LeafIndex, e: &OperationEntry) -> Result<(), String> {
        let op = Operation::decode(&e.op_bytes).map_err(|x| x.to_string())?;
        let OpBody::AttestationRecord(rec) = op.body else {
            return Err("the operation is not an attestation record".into());
        };
        // What every party's ledger reads out of the evidence, valid or not.
        let claimed = measurement_of_evidence(&rec.evidence.0);
        if e.attests != claimed {
            return Err(format!(
                "the entry records measurement {:?}, its evidence claims {:?}",
                e.attests, claimed
            ));
        }
        let verdict = (|| -> Result<Measurement, String> {
            let block_hash = usize::try_from(rec.binds_height.0)
                .ok()
                .and_then(|h| h.checked_sub(1))
                .and_then(|i| self.hashes.get(i))
                .copied()
                .ok_or_else(|| {
                    format!(
                        "it binds height {}, which is not decided before it",
                        rec.binds_height
                    )
                })?;
            let fresh = Freshness::Epoch {
                epoch: self.epoch,
                block_hash,
            };
            let r = self
                .admission
                .check_record(e.author, &rec.evidence.0, &fresh)?;
            Ok(Measurement {
                pcr: r.measurement,
                event_log: r.event_log_digest,
            })
        })();
        match (verdict, &e.status) {
            (Ok(m), _) => {
                if e.attests != Some(m) {
                    return Err(format!(
                        "its evidence establishes PCR {} (event log {}), the entry records {:?}",
                        m.pcr, m.event_log, e.attests
                    ));
                }
                self.counts.records_verified += 1;
                Ok(())
            }
            (Err(_), OpStatus::Rejected { .. }) => {
                self.counts.records_rejected_confirmed += 1;
                Ok(())
            }
            (Err(why), OpStatus::Pending) => {
                self.doubtful.insert(e.op, (index, why));
                Ok(())
            }
            (Err(why), OpStatus::Executed { .. }) => Err(format!(
                "the parties accepted it, but its evidence fails the policy: {why}"
            )),
        }
    }
}

/// Runs `f` over `items` on every core, in contiguous slices, keeping order.
fn parallel_map<T: Send, U: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    if threads <= 1 || items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut slices: Vec<Vec<T>> = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        slices.push(it.by_ref().take(per).collect());
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = slices
            .into_iter()
            .map(|slice| s.spawn(move || slice.into_iter().map(f).collect::<Vec<U>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// How `quorate audit verify` is asked to judge a bundle beyond the
/// policy itself.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Accept a development policy (`dev = true`: the measurement may sit in
    /// a PCR any process resets, so the attestation proves nothing against
    /// the machine's own users). Without it such a policy fails the check.
    pub allow_dev: bool,
    /// Outside witnesses' verifier keys (C2SP vkeys, `cosignature/v1`).
    pub witnesses: Vec<super::witness::WitnessKey>,
    /// How many of them must have cosigned the bundle's latest certified
    /// checkpoint (0: none required; their lines are still checked).
    pub witness_quorum: usize,
}

/// Verifies the bundle read from `input` against `policy` (the reference
/// policy's TOML text, for the report's comparison with the cluster's),
/// accepting a development policy (tests and the dev cluster); see
/// [`verify_bundle_with`].
pub fn verify_bundle<R: Read + Send>(
    input: R,
    policy: &Policy,
    policy_text: &[u8],
) -> Verification {
    let opts = VerifyOptions {
        allow_dev: true,
        ..Default::default()
    };
    verify_bundle_with(input, policy, policy_text, &opts)
}

/// Checks the outside witnesses' cosignatures: every line of a configured
/// witness on any checkpoint must verify, and the latest checkpoint must
/// carry `opts.witness_quorum` of them.
fn check_witnesses(
    checkpoints: &[Vec<u8>],
    opts: &VerifyOptions,
    host: &mut HostCounts,
) -> Result<(), BundleProblem> {
    use quorate_firmware::audit::checkpoint::SignedCheckpoint;
    if opts.witnesses.is_empty() && opts.witness_quorum == 0 {
        return Ok(());
    }
    let mut latest: Option<(u64, usize)> = None;
    for bytes in checkpoints {
        // A note that does not parse is reported by the verifier core.
        let Ok(cp) = SignedCheckpoint::parse(bytes) else {
            continue;
        };
        let size = cp.checkpoint.size.0;
        let got = super::witness::cosigned_by(&cp, &opts.witnesses).map_err(|e| BundleProblem {
            location: format!("checkpoint of size {size}"),
            message: e.to_string(),
        })?;
        host.witness_cosignatures += got.len() as u64;
        if latest.is_none_or(|(s, _)| size >= s) {
            latest = Some((size, got.len()));
        }
    }
    let (size, got) = latest.unwrap_or((0, 0));
    host.witnessed = Some((got, opts.witness_quorum));
    if got < opts.witness_quorum {
        return Err(BundleProblem {
            location: format!("checkpoint of size {size}"),
            message: format!(
                "{got} of the configured witnesses cosigned the latest checkpoint, {} required: no outside party vouches that this is the history everyone sees",
                opts.witness_quorum
            ),
        });
    }
    Ok(())
}

/// Verifies the bundle read from `input` against `policy` with `opts`.
pub fn verify_bundle_with<R: Read + Send>(
    input: R,
    policy: &Policy,
    policy_text: &[u8],
    opts: &VerifyOptions,
) -> Verification {
    let mut out = Verification::default();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    out.host.threads = threads;
    out.host.dev_policy = policy.dev;
    if let Err(e) = policy.check() {
        out.problem = Some(BundleProblem {
            location: "policy".into(),
            message: e.to_string(),
        });
        return out;
    }
    if policy.dev && !opts.allow_dev {
        out.problem = Some(BundleProblem {
            location: "policy".into(),
            message: "it is a DEVELOPMENT policy (dev = true): a measurement in a resettable \
                      PCR proves nothing about the code that ran; verify with the cluster's \
                      production policy, or pass --allow-dev to check a dev cluster"
                .into(),
        });
        return out;
    }
    let fail = |out: &mut Verification, location: String, message: String| {
        if out.problem.is_none() {
            out.problem = Some(BundleProblem { location, message });
        }
    };
    let bundle_err = |out: &mut Verification, e: BundleError| {
        fail(out, "bundle".into(), e.to_string());
    };
    let mut reader = match BundleReader::new(input) {
        Ok(r) => r,
        Err(e) => {
            bundle_err(&mut out, e);
            return out;
        }
    };
    // The prelude: header, enrollments, checkpoints.
    let mut header: Option<BundleHeader> = None;
    let mut enrollment_bytes: Vec<Vec<u8>> = Vec::new();
    let mut checkpoints: Vec<Vec<u8>> = Vec::new();
    let mut first_body: Option<Section> = None;
    loop {
        match reader.next_section() {
            Ok(Some(Section::Header(h))) => header = Some(h),
            Ok(Some(Section::Enrollment(b))) => enrollment_bytes.push(b),
            Ok(Some(Section::Checkpoint(b))) => checkpoints.push(b),
            Ok(Some(s)) => {
                first_body = Some(s);
                break;
            }
            Ok(None) => break,
            Err(e) => {
                bundle_err(&mut out, e);
                return out;
            }
        }
    }
    let Some(header) = header else {
        fail(&mut out, "bundle".into(), "no header".into());
        return out;
    };
    if let Err(p) = check_witnesses(&checkpoints, opts, &mut out.host) {
        out.problem = Some(p);
        return out;
    }
    out.host.cluster = Some(header.cluster.0);
    out.host.exporter = Some(header.exporter);
    let mut checker = match setup(&header, &enrollment_bytes, policy, policy_text, &mut out) {
        Ok(c) => c,
        Err(p) => {
            out.problem = Some(p);
            return out;
        }
    };
    let params = LogParams {
        cluster: header.cluster,
        origin: origin_for(&header.cluster),
        parties: checker
            .parties
            .parties()
            .iter()
            .map(|p| (p.id, p.vote_key))
            .collect(),
        fault_model: header.fault_model,
    };
    let mut verifier = Verifier::new(&params, &checkpoints, &mut checker);
    drop(checkpoints);
    // Whether the verifier core found a problem (it reads no further).
    let mut stopped = false;
    let keys = checker.keys();
    // A producer thread reads chunks and checks their signatures over every
    // core while this thread runs the verifier core over the previous chunk.
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Prepared>, BundleError>>(1);
        let keys = &keys;
        s.spawn(move || {
            let mut pending = first_body;
            loop {
                // Gather a chunk: blocks with the entries that follow each.
                let mut chunk: Vec<(BundleBlock, Vec<Vec<u8>>)> = Vec::new();
                let mut n_entries = 0usize;
                let mut done = false;
                loop {
                    let section = match pending.take() {
                        Some(s) => Some(s),
                        None => match reader.next_section() {
                            Ok(s) => s,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        },
                    };
                    match section {
                        Some(Section::Block(b)) => {
                            if chunk.len() >= CHUNK_BLOCKS || n_entries >= CHUNK_ENTRIES {
                                pending = Some(Section::Block(b));
                                break;
                            }
                            chunk.push((b, Vec::new()));
                        }
                        Some(Section::Entry(e)) => {
                            if let Some((_, es)) = chunk.last_mut() {
                                es.push(e);
                                n_entries += 1;
                            }
                        }
                        Some(_) | None => {
                            done = true;
                            break;
                        }
                    }
                }
                let prepared = parallel_map(chunk, threads, |(b, es)| keys.prepare(b, es));
                // A closed channel: the verifier stopped at a problem.
                if tx.send(Ok(prepared)).is_err() || done {
                    return;
                }
            }
        });
        for msg in rx {
            let prepared = match msg {
                Ok(p) => p,
                Err(e) => {
                    bundle_err(&mut out, e);
                    break;
                }
            };
            for mut p in prepared {
                if let Err(m) = checker.settle(&mut p) {
                    fail(&mut out, format!("block {}", p.height), m);
                    break;
                }
                for e in &p.entries {
                    if !verifier.push_entry(e, &mut checker) {
                        stopped = true;
                        break;
                    }
                }
                if stopped {
                    break;
                }
            }
            if out.problem.is_some() || stopped {
                break;
            }
        }
    });
    out.report = verifier.finish(&mut checker);
    if out.problem.is_none() && out.report.is_ok() {
        // Blocks after the last with entries, but the tip, must be empty.
        let tip = Height(checker.hashes.len() as u64);
        if let Err(m) = checker.close_before(tip) {
            fail(&mut out, "bundle".into(), m);
        }
    }
    let keep = (
        out.host.threads,
        out.host.policy_is_clusters,
        out.host.parties,
    );
    let witnessed = (out.host.witness_cosignatures, out.host.witnessed);
    out.host = checker.counts;
    out.host.dev_policy = policy.dev;
    (out.host.witness_cosignatures, out.host.witnessed) = witnessed;
    out.host.cluster = Some(header.cluster.0);
    out.host.exporter = Some(header.exporter);
    (
        out.host.threads,
        out.host.policy_is_clusters,
        out.host.parties,
    ) = keep;
    out.host.fault_model = Some((
        header.fault_model,
        header.fault_model.quorum(out.host.parties as usize),
    ));
    out
}

/// Checks the header against the enrollments and builds the checker.
fn setup(
    header: &BundleHeader,
    enrollment_bytes: &[Vec<u8>],
    policy: &Policy,
    policy_text: &[u8],
    out: &mut Verification,
) -> Result<HostChecker, BundleProblem> {
    let problem = |location: &str, message: String| BundleProblem {
        location: location.into(),
        message,
    };
    if Sha256Digest::of(&header.identity) != header.cluster.0 {
        return Err(problem(
            "header",
            "the cluster identity does not hash to the cluster id".into(),
        ));
    }
    let identity: crate::config::ClusterIdentity =
        postcard::from_bytes(&header.identity).map_err(|e| {
            problem(
                "header",
                format!("the cluster identity does not decode: {e}"),
            )
        })?;
    if identity.domain != crate::config::CLUSTER_ID_DOMAIN {
        return Err(problem(
            "header",
            format!("unknown cluster identity domain {:?}", identity.domain),
        ));
    }
    // The rules the verifier applies come from the identity, which every
    // signature binds; the header's copies must agree with it.
    if header.fault_model != identity.fault_model {
        return Err(problem(
            "header",
            format!(
                "states fault model {:?}, but the cluster id commits to {:?}: the header was altered",
                header.fault_model, identity.fault_model
            ),
        ));
    }
    if header.epoch.0 != identity.epoch {
        return Err(problem(
            "header",
            format!(
                "states epoch {}, but the cluster id commits to epoch {}: the header was altered",
                header.epoch.0, identity.epoch
            ),
        ));
    }
    let mut enrollments = BTreeMap::new();
    let mut parties = Vec::new();
    let listed: BTreeMap<u32, Sha256Digest> = identity.enrollments.iter().copied().collect();
    for bytes in enrollment_bytes {
        let e = Enrollment::from_json(bytes)
            .map_err(|m| problem("enrollment", format!("does not parse: {m}")))?;
        let loc = format!("enrollment of {}", e.party_id);
        if listed.get(&e.party_id.0) != Some(&Sha256Digest::of(bytes)) {
            return Err(problem(
                &loc,
                "is not the enrollment the cluster id commits to".into(),
            ));
        }
        let key = e
            .vote_public_key()
            .map_err(|m| problem(&loc, m.to_string()))?;
        parties.push(Party {
            id: e.party_id,
            vote_key: key,
        });
        if enrollments.insert(e.party_id, e).is_some() {
            return Err(problem(&loc, "appears twice".into()));
        }
    }
    if enrollments.len() != listed.len() {
        return Err(problem(
            "bundle",
            format!(
                "holds {} enrollments, the cluster has {} parties",
                enrollments.len(),
                listed.len()
            ),
        ));
    }
    out.host.parties = enrollments.len() as u64;
    out.host.policy_is_clusters = identity
        .reference_policy
        .map(|d| d == Sha256Digest::of(policy_text));
    let parties = PartySet::new(parties).map_err(|e| problem("enrollments", e.to_string()))?;
    let admission =
        crate::daemon::admission::Admission::new(Some(policy.clone()), PartyId(0), &enrollments);
    Ok(HostChecker {
        cluster: header.cluster,
        epoch: header.epoch,
        model: header.fault_model,
        parties,
        enrollments,
        policy: policy.clone(),
        admission,
        hashes: Vec::new(),
        chain: ChainState::default(),
        tree: CompactTree::new(),
        head_before_previous: LogHead::empty(),
        open: BTreeMap::new(),
        doubtful: BTreeMap::new(),
        counts: HostCounts::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::bundle::read_all;
    use crate::audit::testkit::{sign, Fixture};
    use proptest::prelude::*;
    use quorate_firmware::audit::checkpoint::{cosignature, SignedCheckpoint};
    use quorate_firmware::audit::verify::ProblemKind;
    use quorate_firmware::consensus::context::BlockContents;
    use quorate_firmware::sessions::ops::{Decision, VerdictOp};

    fn failure(v: &Verification) -> String {
        assert!(!v.is_ok(), "expected a problem:\n{v}");
        match (&v.problem, &v.report.problem) {
            (Some(p), _) => p.to_string(),
            (None, Some(p)) => p.to_string(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_header_stating_another_fault_model_or_epoch_than_the_cluster_id_fails() {
        let mut f = Fixture::honest();
        assert!(f.verify().is_ok());
        // Two colluders of three would need only `majority` to present a
        // history of their own: the header's claim is checked against the id.
        f.header.fault_model = quorate_firmware::types::FaultModel::Majority;
        let why = failure(&f.verify());
        assert!(
            why.starts_with("header: ") && why.contains("fault model Majority"),
            "{why}"
        );
        let mut f = Fixture::honest();
        f.header.epoch = quorate_firmware::types::Epoch(1);
        let why = failure(&f.verify());
        assert!(why.contains("epoch 1"), "{why}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn witness_cosignatures_from_a_spec_witness_verify_and_a_quorum_is_enforced() {
        use crate::audit::test_witness::TestWitness;
        use crate::audit::witness::{submit, Submitted};
        use quorate_firmware::audit::checkpoint::{origin_for, SignedCheckpoint};
        let mut f = Fixture::honest();
        let w = TestWitness::start("witness.test/w1").unwrap();
        w.trust(
            &origin_for(&f.header.cluster),
            f.parties.iter().map(|(p, x)| (*p, x.vote_key)).collect(),
        );
        // The bundle's checkpoints, oldest first, submitted as a log does.
        let mut old: Option<(u64, usize)> = None;
        for i in 0..f.checkpoints.len() {
            let mut cp = SignedCheckpoint::parse(&f.checkpoints[i]).unwrap();
            let proof = match old {
                Some((o, _)) if o < cp.checkpoint.size.0 => {
                    // The consistency proof from the fixture's own tree.
                    quorate_firmware::audit::merkle::consistency_proof(
                        &f.tree,
                        quorate_firmware::audit::merkle::TreeSize(o),
                        cp.checkpoint.size,
                    )
                    .unwrap()
                }
                _ => Vec::new(),
            };
            let o = old.map(|(o, _)| o).unwrap_or(0);
            match submit(&w.url(), o, &proof, &cp.checkpoint, &cp.format())
                .await
                .unwrap()
            {
                Submitted::Cosigned(lines) => cp.signatures.extend(lines),
                other => panic!("witness answered {other:?}"),
            }
            f.checkpoints[i] = cp.format().into_bytes();
            old = Some((cp.checkpoint.size.0, i));
        }
        let opts = |need| VerifyOptions {
            allow_dev: false,
            witnesses: vec![w.key()],
            witness_quorum: need,
        };
        let bundle = f.bundle();
        let v = verify_bundle_with(bundle.as_slice(), &f.policy, &f.policy_text, &opts(1));
        assert!(v.is_ok(), "{v}");
        assert!(
            v.to_string()
                .contains("witnesses          1 cosigned the latest checkpoint (1 required)"),
            "{v}"
        );
        // Two required, one configured: refused.
        let v = verify_bundle_with(bundle.as_slice(), &f.policy, &f.policy_text, &opts(2));
        assert!(failure(&v).contains("1 of the configured witnesses"), "{v}");
        // Another witness's key: its lines are not there.
        let stranger = TestWitness::start("witness.test/w2").unwrap();
        let v = verify_bundle_with(
            bundle.as_slice(),
            &f.policy,
            &f.policy_text,
            &VerifyOptions {
                witnesses: vec![stranger.key()],
                witness_quorum: 1,
                ..Default::default()
            },
        );
        assert!(failure(&v).contains("0 of the configured witnesses"), "{v}");
        // A forged witness line fails even when no quorum is required.
        let last = f.checkpoints.len() - 1;
        let mut cp = SignedCheckpoint::parse(&f.checkpoints[last]).unwrap();
        let wl = cp
            .signatures
            .iter_mut()
            .find(|l| l.name == "witness.test/w1")
            .unwrap();
        wl.signature[20] ^= 1;
        f.checkpoints[last] = cp.format().into_bytes();
        let v = verify_bundle_with(f.bundle().as_slice(), &f.policy, &f.policy_text, &opts(0));
        assert!(failure(&v).contains("does not verify"), "{v}");
    }

    #[test]
    fn a_dev_policy_fails_unless_allowed_and_is_flagged() {
        let f = Fixture::honest();
        let mut dev = f.policy.clone();
        dev.dev = true;
        let bundle = f.bundle();
        let v = verify_bundle_with(
            bundle.as_slice(),
            &dev,
            &f.policy_text,
            &VerifyOptions::default(),
        );
        let why = failure(&v);
        assert!(
            why.starts_with("policy: ") && why.contains("--allow-dev"),
            "{why}"
        );
        let v = verify_bundle_with(
            bundle.as_slice(),
            &dev,
            &f.policy_text,
            &VerifyOptions {
                allow_dev: true,
                ..Default::default()
            },
        );
        assert!(v.is_ok(), "{v}");
        assert!(v.to_string().contains("DEV: a development policy"), "{v}");
        // A production policy prints no DEV warning.
        let v = f.verify();
        assert!(v.is_ok() && !v.to_string().contains("DEV"), "{v}");
    }

    #[test]
    fn an_honest_bundle_verifies_with_every_count() {
        let f = Fixture::honest();
        let v = f.verify();
        assert!(v.is_ok(), "{v}");
        let entries: usize = f.blocks.iter().map(|(_, e)| e.len()).sum();
        assert_eq!(v.report.entries, entries as u64);
        assert_eq!(v.report.tree_size.0, entries as u64);
        assert_eq!(v.report.root, f.tree.root());
        assert_eq!(v.report.checkpoints, 3);
        assert_eq!(v.report.consistency_proofs, 2);
        assert_eq!(v.host.quotes, 3);
        assert_eq!(v.host.blocks, 5);
        assert_eq!(v.host.records_verified, 4);
        assert_eq!(v.host.batch_signatures, 9);
        assert_eq!(v.host.canonical_certificates, 4);
        assert_eq!(v.host.precommit_signatures, 5 * 3 + 4 * 3);
        assert_eq!(v.host.operations_matched, 13);
        assert_eq!(v.host.policy_is_clusters, Some(true));
        // The later blocks were decided under all three attested measurements.
        assert!(v.report.measurement_refs >= 3, "{v}");
        let text = v.to_string();
        assert!(text.contains("result             OK"), "{text}");
        assert!(text.contains("3 checkpoint quotes"), "{text}");
    }

    fn tamper_entry(f: &mut Fixture, block: usize, i: usize, edit: impl FnOnce(&mut AuditEntry)) {
        let mut e = AuditEntry::decode(&f.blocks[block].1[i]).unwrap();
        edit(&mut e);
        f.blocks[block].1[i] = e.encode();
    }

    #[test]
    fn an_altered_entry_is_detected() {
        // The operation swapped for another one, digest and all: only the
        // block's signed batch shows it.
        let mut f = Fixture::honest();
        tamper_entry(&mut f, 2, 0, |e| {
            if let AuditEntry::Operation(o) = e {
                o.op_bytes = Operation {
                    author: o.author,
                    body: OpBody::Verdict(VerdictOp {
                        target: o.op,
                        decision: Decision::Approve,
                    }),
                }
                .encode();
                o.op_digest = Sha256Digest::of(&o.op_bytes);
            }
        });
        let m = failure(&f.verify());
        assert!(
            m.contains("root of the first") || m.contains("is not that operation"),
            "{m}"
        );
        // Without checkpoints the block's batch still catches it.
        f.checkpoints.clear();
        let m = failure(&f.verify());
        assert!(
            m.contains("block 3") && m.contains("is not that operation"),
            "{m}"
        );
    }

    #[test]
    fn a_removed_or_reordered_entry_is_detected() {
        let mut f = Fixture::honest();
        f.blocks[2].1.remove(1);
        f.checkpoints.clear();
        let m = failure(&f.verify());
        assert!(
            m.contains("block 3") && m.contains("entries were removed"),
            "{m}"
        );
        // A whole block's entries removed.
        let mut f = Fixture::honest();
        f.blocks[3].1.clear();
        f.checkpoints.clear();
        let m = failure(&f.verify());
        assert!(m.contains("no entries for it"), "{m}");
        // Two entries of a block swapped.
        let mut f = Fixture::honest();
        f.blocks[1].1.swap(0, 1);
        let m = failure(&f.verify());
        assert!(m.contains("out of order"), "{m}");
    }

    #[test]
    fn a_checkpoint_signed_by_a_non_party_is_detected() {
        let mut f = Fixture::honest();
        let outsider = Fixture::new(4);
        let mut cp = SignedCheckpoint::parse(&f.checkpoints[0]).unwrap();
        let x = &outsider.parties[&PartyId(4)];
        let s = sign(&x.vote, &f.rng, &cp.checkpoint.cosign_message());
        cp.signatures.push(cosignature(
            &cp.checkpoint.origin.clone(),
            PartyId(4),
            &x.vote_key,
            &s,
        ));
        f.checkpoints[0] = cp.format().into_bytes();
        let m = failure(&f.verify());
        assert!(m.contains("checkpoint #0") && m.contains("P4"), "{m}");
    }

    #[test]
    fn a_quote_over_another_pcr_value_is_detected() {
        let mut f = Fixture::honest();
        let cp = SignedCheckpoint::parse(&f.checkpoints[1])
            .unwrap()
            .checkpoint;
        let pcr = f.policy.measurement_pcr;
        f.parties
            .get_mut(&PartyId(2))
            .unwrap()
            .tpm
            .pcrs
            .insert(pcr, Sha256Digest::of(b"other code"));
        f.checkpoints[1] = f.sign_checkpoint(&cp, 2);
        let m = failure(&f.verify());
        assert!(
            m.contains("checkpoint #1")
                && m.contains("TPM quote of P2")
                && m.contains("not the launch measurement"),
            "{m}"
        );
    }

    #[test]
    fn a_quote_line_with_another_key_id_is_detected() {
        let mut f = Fixture::honest();
        let mut cp = SignedCheckpoint::parse(&f.checkpoints[0]).unwrap();
        cp.signatures[0].key_id[0] ^= 1;
        f.checkpoints[0] = cp.format().into_bytes();
        let m = failure(&f.verify());
        assert!(m.contains("checkpoint #0") && m.contains("key ID"), "{m}");
    }

    #[test]
    fn a_certificate_one_signature_short_is_detected() {
        let mut f = Fixture::honest();
        let (b, _) = &f.blocks[2];
        let block = Block::from_bytes(&b.block).unwrap();
        let short = f.certificate(Height(3), block.hash(), 2);
        f.blocks[2].0.cert = postcard::to_stdvec(&short).unwrap();
        let m = failure(&f.verify());
        assert!(
            m.contains("block 3") && m.contains("2 valid precommits, the quorum is 3"),
            "{m}"
        );
    }

    #[test]
    fn a_canonical_certificate_one_signature_short_is_detected() {
        let f = Fixture::honest_with(|f| f.short_commit_at = Some(3));
        let m = failure(&f.verify());
        assert!(
            m.contains("block 4")
                && m.contains("certificate of block 3")
                && m.contains("2 valid precommits, the quorum is 3"),
            "{m}"
        );
    }

    #[test]
    fn a_header_log_head_that_differs_from_the_entries_is_detected() {
        // An entry of block 3 altered in a way only the tree shows (its
        // status), with no checkpoint to catch it: block 5's header, which
        // every validator checked, carries the true head.
        let mut f = Fixture::honest();
        f.checkpoints.clear();
        let i = f.blocks[2].1.len() - 1;
        tamper_entry(&mut f, 2, i, |e| {
            if let AuditEntry::Resolution(r) = e {
                r.verdicts.clear();
            }
        });
        let m = failure(&f.verify());
        assert!(
            m.contains("block 5") && m.contains("its header says the log held"),
            "{m}"
        );
    }

    #[test]
    fn a_bad_batch_signature_is_detected() {
        let mut f = Fixture::honest();
        let b = &f.blocks[1].0;
        let block = Block::from_bytes(&b.block).unwrap();
        let mut c: BlockContents = block.into();
        c.batches[1].signature.0[5] ^= 1;
        let block = Block::new(c);
        // Re-certify the altered block so only the batch signature is wrong.
        let cert = f.certificate(Height(2), block.hash(), 3);
        f.blocks[1].0.block = block.to_bytes();
        f.blocks[1].0.cert = postcard::to_stdvec(&cert).unwrap();
        let m = failure(&f.verify());
        assert!(
            m.contains("block 2") && m.contains("batch 1") && m.contains("signature"),
            "{m}"
        );
    }

    /// A block that replays an earlier, correctly signed batch. The
    /// validators' rule (each author's batches follow on from its last
    /// decided one) is checked offline too; before, the verifier checked no
    /// sequence numbers and passed such a block.
    #[test]
    fn a_replayed_batch_is_detected() {
        let mut f = Fixture::honest();
        let earlier = Block::from_bytes(&f.blocks[1].0.block).unwrap();
        let block = Block::from_bytes(&f.blocks[2].0.block).unwrap();
        let mut c: BlockContents = block.into();
        c.batches.push(earlier.batches()[0].clone());
        let block = Block::new(c);
        let cert = f.certificate(Height(3), block.hash(), 3);
        f.blocks[2].0.block = block.to_bytes();
        f.blocks[2].0.cert = postcard::to_stdvec(&cert).unwrap();
        let m = failure(&f.verify());
        assert!(
            m.contains("block 3") && m.contains("replays or reorders"),
            "{m}"
        );
    }

    #[test]
    fn a_fork_names_the_signers_of_both_sides() {
        let mut f = Fixture::honest();
        let cp = SignedCheckpoint::parse(&f.checkpoints[0])
            .unwrap()
            .checkpoint;
        let forked = Checkpoint {
            root: Sha256Digest::of(b"another history"),
            ..cp.clone()
        };
        let other = f.sign_checkpoint(&forked, 3);
        f.checkpoints.insert(1, other);
        let v = f.verify();
        match &v.report.problem.as_ref().map(|p| &p.kind) {
            Some(ProblemKind::Fork {
                size,
                first_signers,
                second_signers,
                ..
            }) => {
                assert_eq!(*size, cp.size);
                assert_eq!(first_signers.len(), 3);
                assert_eq!(*second_signers, [1, 2, 3].map(PartyId).into());
            }
            other => panic!("expected a fork, got {other:?}\n{v}"),
        }
        assert!(failure(&v).contains("fork at size"));
    }

    #[test]
    fn an_accepted_record_with_failing_evidence_is_detected() {
        let mut f = Fixture::honest();
        // A policy that approves another executable: every record fails.
        let mut p = f.policy.clone();
        p.allowed_executables = vec![quorate_attestation::policy::HexDigest(Sha256Digest::of(
            b"x",
        ))];
        f.policy = p;
        let m = failure(&f.verify());
        // The first checkpoint's quote fails first.
        assert!(m.contains("not the launch measurement"), "{m}");
        f.checkpoints.clear();
        let m = failure(&f.verify());
        assert!(
            m.contains("was accepted, but its evidence fails the policy"),
            "{m}"
        );
    }

    #[test]
    fn a_bundle_from_another_cluster_or_with_a_swapped_enrollment_is_refused() {
        let mut f = Fixture::honest();
        let other = Fixture::new(3);
        f.enrollments[1] = other.enrollments[1].clone();
        let m = failure(&f.verify());
        assert!(
            m.contains("enrollment of P2") && m.contains("cluster id commits to"),
            "{m}"
        );
        let mut f = Fixture::honest();
        f.header.identity.push(0);
        assert!(failure(&f.verify()).contains("does not hash to the cluster id"));
    }

    #[test]
    fn every_section_survives_a_round_trip() {
        let f = Fixture::honest();
        let sections = read_all(&f.bundle()).unwrap();
        assert_eq!(sections.len(), 1 + 3 + 3 + 5 + 16 + 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn corrupt_bundles_never_panic_and_always_fail(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..3),
            cut in any::<usize>(),
        ) {
            let f = Fixture::honest();
            let honest = f.bundle();
            let mut bytes = honest.clone();
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x | 1;
            }
            let v = verify_bundle(bytes.as_slice(), &f.policy, &f.policy_text);
            prop_assert!(!v.is_ok(), "{}", v);
            let short = &honest[..cut % honest.len()];
            let v = verify_bundle(short, &f.policy, &f.policy_text);
            prop_assert!(!v.is_ok());
        }
    }
}
