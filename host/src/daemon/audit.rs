//! The audit log in the daemon: checkpoints issued, exchanged and certified.
//!
//! Every decided block feeds the firmware's ledger (in `mod.rs`, beside the
//! session machine); its step is stored by [`crate::store::Store::append_log`]
//! and the tree head handed back to the consensus driver. After each step
//! [`CheckpointBook::after_block`] evaluates the cluster's
//! [`CheckpointPolicy`] on decided values only, so every party opens a
//! checkpoint for the same tree sizes. For each one this party
//!
//! 1. quotes the note text with its TPM (qualifying data
//!    [`Checkpoint::quote_qualifying_data`], the measurement PCR and the
//!    PCRs the reference policy selects) and cosigns it with its vote key
//!    over [`Checkpoint::cosign_message`] ([`issue_lines`]);
//! 2. stores those lines (`own_checkpoint_lines`) before sending them, then
//!    sends them to every peer as a signed note holding only its own lines
//!    ([`super::admission::PeerFrame::Checkpoint`]);
//! 3. collects peers' lines for the same note text, each checked as it
//!    arrives (cosignatures against the vote keys, quotes against the
//!    enrolled AKs), and once a quorum of cosignatures verifies
//!    ([`check_cosignatures`]) stores the certified signed note with every
//!    line it has.
//!
//! Nothing here blocks consensus: a checkpoint that lacks lines waits in
//! memory (at most [`MAX_OPEN`] of them), lines are re-sent on reconnect
//! and every [`RESEND_EVERY`], and a party that receives lines for a size it
//! has already certified answers with the certified note, so a restarted
//! party catches up. Lines for sizes not open here are dropped; only a
//! quorum of valid cosignatures makes anything durable, so a peer (and
//! a non-party, which cannot even connect) cannot make us store anything.
//!
//! The vote key signs `"quorate/audit/checkpoint-cosign/v1\n" || note`,
//! whose first byte (`q`) is never the first byte of a consensus message
//! or a batch (the postcard length of their domain strings, 0x14 and 0x10):
//! a cosignature can never be replayed as a vote, and the consensus sign
//! guard, which rules over consensus messages only, is not involved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_attestation::checkpoint::CheckpointQuote;
use quorate_attestation::checkpoint_verify::{
    verify_checkpoint_quote, verify_checkpoint_quote_signature,
};
use quorate_attestation::evidence::SignedAttest;
use quorate_attestation::pcr::{PcrIndex, PcrValue};
use quorate_attestation::policy::Policy;
use quorate_firmware::audit::checkpoint::{
    check_cosignatures, cosignature, quote_key_id, quote_signature, verify_cosignature, Checkpoint,
    CheckpointPolicy, NoteSignature, SignedCheckpoint, SignerRole,
};
use quorate_firmware::audit::ledger::{Ledger, LedgerError};
use quorate_firmware::audit::merkle::{LeafIndex, TreeSize};
use quorate_firmware::consensus::{Block, LogHead};
use quorate_firmware::crypto::PublicKey;
use quorate_firmware::sessions::machine::State;
use quorate_firmware::sessions::BlockOutcome;
use quorate_firmware::types::{FaultModel, PartyId, Sha256Digest};
use tracing::{debug, info, warn};

use crate::store::{Store, StoreError};
use crate::tpm::{TpmError, TpmHandle};

/// Most checkpoints collected at once; the oldest uncertified one is
/// dropped beyond it (its lines can no longer certify it here).
pub const MAX_OPEN: usize = 8;
/// How often this party re-sends its lines of checkpoints still short of a
/// quorum.
pub const RESEND_EVERY: Duration = Duration::from_secs(5);

/// TPM2B_PUBLIC (big-endian u16 size, then the TPMT_PUBLIC): the AK bytes a
/// quote line's key ID covers (docs/AUDIT.md).
pub fn ak_tpm2b(tpmt_public: &[u8]) -> Vec<u8> {
    let len = u16::try_from(tpmt_public.len()).unwrap_or(u16::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(tpmt_public);
    out
}

/// Checks a quote line's bytes with the one checkpoint-quote check,
/// [`quorate_attestation::checkpoint_verify`], as `quorate audit verify`
/// does: with the cluster's reference policy, the AK (`ak_tpmt`,
/// TPMT_PUBLIC) signed a quote over `qualifying_data` while running approved
/// code (measurement, configuration and required PCRs). Without a policy
/// (dev mode only) only the signature, qualifying data and PCR digest are
/// checked.
pub fn verify_quote(
    ak_tpmt: &[u8],
    qualifying_data: &Sha256Digest,
    bytes: &[u8],
    policy: Option<&Policy>,
) -> Result<(), String> {
    let q = CheckpointQuote::decode(bytes).map_err(|e| e.to_string())?;
    match policy {
        Some(p) => verify_checkpoint_quote(ak_tpmt, &q, qualifying_data, p).map(drop),
        None => verify_checkpoint_quote_signature(ak_tpmt, &q, qualifying_data).map(drop),
    }
    .map_err(|e| e.to_string())
}

/// This party's lines for `cp`: a TPM quote (when `quote_pcrs` is given:
/// the party has an AK) and the vote-key cosignature.
pub async fn issue_lines(
    tpm: &TpmHandle,
    me: PartyId,
    vote_key: PublicKey,
    ak_tpmt: Option<Vec<u8>>,
    quote_pcrs: &[PcrIndex],
    cp: &Checkpoint,
) -> Result<Vec<NoteSignature>, TpmError> {
    let mut lines = Vec::with_capacity(2);
    if let Some(ak) = ak_tpmt {
        let indices: Vec<u8> = quote_pcrs.iter().map(|p| p.get()).collect();
        let quote = tpm
            .quote(indices, cp.quote_qualifying_data().0.to_vec())
            .await?;
        let mut pcr_values = Vec::with_capacity(quote_pcrs.len());
        for p in quote_pcrs {
            pcr_values.push(PcrValue {
                index: *p,
                value: Sha256Digest(tpm.pcr_read(p.get()).await?),
            });
        }
        let bytes = CheckpointQuote {
            quote: SignedAttest {
                attest: quote.attest,
                signature: quote.signature,
            },
            pcr_values,
        }
        .encode();
        lines.push(quote_signature(&cp.origin, me, &ak_tpm2b(&ak), bytes));
    }
    let sig = tpm.sign(cp.cosign_message()).await?;
    lines.push(cosignature(&cp.origin, me, &vote_key, &sig));
    Ok(lines)
}

/// A checkpoint being collected.
#[derive(Debug, Clone)]
struct Open {
    checkpoint: Checkpoint,
    /// Verified lines by signer and role.
    lines: BTreeMap<(PartyId, SignerRole), NoteSignature>,
    /// Whether this party's own lines are in.
    own: bool,
    /// Whether a quorum certified it (and it is stored).
    certified: bool,
}

impl Open {
    fn signed(&self) -> SignedCheckpoint {
        SignedCheckpoint {
            checkpoint: self.checkpoint.clone(),
            signatures: self.lines.values().cloned().collect(),
        }
    }
}

/// What to do after a peer's note.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Received {
    /// Newly certified (or certified with more lines): store it.
    pub store: Option<SignedCheckpoint>,
    /// Send this note back to the sender (our lines, or a certified note).
    pub answer: Option<String>,
    /// The sender sent lines for a size this party already certified and
    /// no longer collects: answer with the stored certified note.
    pub answer_stored: Option<TreeSize>,
}

/// A peer's note that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Not a signed checkpoint.
    #[error("malformed checkpoint note: {0}")]
    Malformed(String),
    /// Another log.
    #[error("checkpoint of another log ({0})")]
    WrongOrigin(String),
    /// The same size with another root: a fork, or a corrupt peer.
    #[error("checkpoint of size {size} has root {theirs}, this party's log has {ours}: the logs have forked")]
    Fork {
        /// The size.
        size: TreeSize,
        /// Our root.
        ours: Sha256Digest,
        /// Theirs.
        theirs: Sha256Digest,
    },
    /// A line names a party that is not one.
    #[error("line of {0}, which is not a party")]
    NotAParty(PartyId),
    /// A line does not verify.
    #[error("line of {party} ({role:?}) does not verify: {reason}")]
    BadLine {
        /// Whose.
        party: PartyId,
        /// Which kind.
        role: SignerRole,
        /// Why.
        reason: String,
    },
}

/// The checkpoint schedule and the lines collected for open checkpoints.
/// Pure: no I/O; the daemon stores and sends what it says.
#[derive(Debug)]
pub struct CheckpointBook {
    origin: String,
    me: PartyId,
    parties: BTreeMap<PartyId, PublicKey>,
    /// Enrolled AK TPMT_PUBLIC of each party that has one.
    aks: BTreeMap<PartyId, Vec<u8>>,
    fault_model: FaultModel,
    policy: CheckpointPolicy,
    /// The reference-value policy quote lines are checked against (none:
    /// dev mode, signatures only).
    quote_policy: Option<Policy>,
    /// The last checkpoint point, `(size, block time)`: decided values only.
    last: Option<(TreeSize, u64)>,
    open: BTreeMap<TreeSize, Open>,
    /// The largest certified size stored.
    latest: Option<TreeSize>,
}

impl CheckpointBook {
    /// A book for `me` in a cluster of `parties` (vote keys) with enrolled
    /// AKs `aks`, whose log origin is `origin`.
    pub fn new(
        origin: String,
        me: PartyId,
        parties: BTreeMap<PartyId, PublicKey>,
        aks: BTreeMap<PartyId, Vec<u8>>,
        fault_model: FaultModel,
        policy: CheckpointPolicy,
    ) -> Self {
        CheckpointBook {
            origin,
            me,
            parties,
            aks,
            fault_model,
            policy,
            quote_policy: None,
            last: None,
            open: BTreeMap::new(),
            latest: None,
        }
    }

    /// Checks peers' quote lines against the cluster's reference-value
    /// `policy` (what `quorate audit verify` checks them against too).
    pub fn with_quote_policy(mut self, policy: Option<Policy>) -> Self {
        self.quote_policy = policy;
        self
    }

    /// Records that the certified checkpoint of `size` is stored (at start).
    pub fn set_latest_certified(&mut self, size: TreeSize) {
        self.latest = self.latest.max(Some(size));
    }

    /// The largest certified size.
    pub fn latest_certified(&self) -> Option<TreeSize> {
        self.latest
    }

    /// Whether a certified note needs a quote line: when any party has an AK.
    fn needs_quote(&self) -> bool {
        !self.aks.is_empty()
    }

    /// After a ledger step: the tree now has `size` entries with `root`,
    /// the block's time is `time_ms`. Returns the checkpoint to issue if
    /// the policy says one is due (and opens it for collection).
    pub fn after_block(
        &mut self,
        size: TreeSize,
        root: Sha256Digest,
        time_ms: u64,
    ) -> Option<Checkpoint> {
        if !self.policy.due(self.last, size, time_ms) {
            return None;
        }
        self.last = Some((size, time_ms));
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions: Vec::new(),
        };
        if self.latest.is_some_and(|l| l >= size) {
            // Certified before a restart: nothing to collect.
            return None;
        }
        self.open.insert(
            size,
            Open {
                checkpoint: cp.clone(),
                lines: BTreeMap::new(),
                own: false,
                certified: false,
            },
        );
        // Bound memory: drop the oldest beyond MAX_OPEN.
        while self.open.len() > MAX_OPEN {
            self.open.pop_first();
        }
        Some(cp)
    }

    /// The open checkpoint of `size`, if any.
    pub fn open(&self, size: TreeSize) -> Option<&Checkpoint> {
        self.open.get(&size).map(|o| &o.checkpoint)
    }

    /// Adds this party's own lines (issued now, or loaded from the store at
    /// start). Returns the certified note if they complete a quorum.
    pub fn add_own(
        &mut self,
        size: TreeSize,
        lines: Vec<NoteSignature>,
    ) -> Option<SignedCheckpoint> {
        let me = self.me;
        let open = self.open.get_mut(&size)?;
        for l in lines {
            if let Some((p, role)) = l.signer(&self.origin) {
                if p == me {
                    open.lines.insert((p, role), l);
                }
            }
        }
        open.own = true;
        self.try_certify(size)
    }

    /// This party's lines of checkpoint `size` as a signed note.
    pub fn own_note(&self, size: TreeSize) -> Option<String> {
        let open = self.open.get(&size)?;
        let signatures: Vec<NoteSignature> = open
            .lines
            .iter()
            .filter(|((p, _), _)| *p == self.me)
            .map(|(_, l)| l.clone())
            .collect();
        (!signatures.is_empty()).then(|| {
            SignedCheckpoint {
                checkpoint: open.checkpoint.clone(),
                signatures,
            }
            .format()
        })
    }

    /// Notes to re-send: for every open checkpoint, our own lines while it
    /// lacks a quorum, the certified note once it has one.
    pub fn resend(&self) -> Vec<String> {
        self.open
            .iter()
            .filter(|(_, o)| o.own)
            .filter_map(|(size, o)| {
                if o.certified {
                    Some(o.signed().format())
                } else {
                    self.own_note(*size)
                }
            })
            .collect()
    }

    /// Open checkpoints without this party's lines yet.
    pub fn unsigned(&self) -> Vec<&Checkpoint> {
        self.open
            .values()
            .filter(|o| !o.own && !o.certified)
            .map(|o| &o.checkpoint)
            .collect()
    }

    /// Whether some open checkpoint still lacks a quorum.
    pub fn waiting(&self) -> bool {
        self.open.values().any(|o| !o.certified)
    }

    /// A peer's note: keeps the lines that verify for a checkpoint open
    /// here with the same text.
    pub fn receive(&mut self, text: &[u8]) -> Result<Received, Refused> {
        let note = SignedCheckpoint::parse(text).map_err(|e| Refused::Malformed(e.to_string()))?;
        if note.checkpoint.origin != self.origin {
            return Err(Refused::WrongOrigin(
                note.checkpoint.origin.chars().take(80).collect(),
            ));
        }
        let size = note.checkpoint.size;
        let Some(open) = self.open.get(&size) else {
            let mut r = Received::default();
            if self.latest.is_some_and(|l| l >= size) {
                r.answer_stored = Some(size);
            }
            return Ok(r);
        };
        if open.checkpoint != note.checkpoint {
            return Err(Refused::Fork {
                size,
                ours: open.checkpoint.root,
                theirs: note.checkpoint.root,
            });
        }
        let qd = open.checkpoint.quote_qualifying_data();
        let msg = open.checkpoint.cosign_message();
        let mut fresh = Vec::new();
        for line in &note.signatures {
            let Some((party, role)) = line.signer(&self.origin) else {
                continue; // another kind of signer: ignored, as signed-note says
            };
            let key = self.parties.get(&party).ok_or(Refused::NotAParty(party))?;
            if open.lines.contains_key(&(party, role)) {
                continue; // one line per signer and role: the first that verified
            }
            let bad = |reason: &str| Refused::BadLine {
                party,
                role,
                reason: reason.to_string(),
            };
            match role {
                SignerRole::Cosign => {
                    verify_cosignature(line, party, key, &msg).map_err(|e| bad(&e.to_string()))?;
                }
                SignerRole::Quote => {
                    let ak = self
                        .aks
                        .get(&party)
                        .ok_or_else(|| bad("the party has no enrolled AK"))?;
                    if line.key_id != quote_key_id(&line.name, &ak_tpm2b(ak)) {
                        return Err(bad("key ID is not the party's AK"));
                    }
                    verify_quote(ak, &qd, &line.signature, self.quote_policy.as_ref())
                        .map_err(|e| bad(&e))?;
                }
            }
            fresh.push(((party, role), line.clone()));
        }
        let mut out = Received::default();
        let Some(open) = self.open.get_mut(&size) else {
            return Ok(out);
        };
        let added = !fresh.is_empty();
        for (k, l) in fresh {
            open.lines.insert(k, l);
        }
        // The sender lacks lines we hold (it was behind, or restarted, or
        // missed ours): answer with all of them. Each answer carries a
        // superset of the note it answers, so exchanges end.
        let theirs: BTreeSet<(PartyId, SignerRole)> = note
            .signatures
            .iter()
            .filter_map(|l| l.signer(&self.origin))
            .collect();
        if open.lines.keys().any(|k| !theirs.contains(k)) {
            out.answer = Some(open.signed().format());
        }
        if added {
            let was = self.open.get(&size).is_some_and(|o| o.certified);
            out.store = self.try_certify(size);
            if was && out.store.is_none() {
                // Certified already; more lines: store the fuller note.
                out.store = self.open.get(&size).map(Open::signed);
            }
        }
        Ok(out)
    }

    /// Certifies `size` if its lines hold a quorum of cosignatures (and a
    /// quote line, in an attested cluster). Returns it the first time.
    fn try_certify(&mut self, size: TreeSize) -> Option<SignedCheckpoint> {
        let needs_quote = self.needs_quote();
        let open = self.open.get(&size)?;
        if open.certified {
            return None;
        }
        let signed = open.signed();
        let ok = check_cosignatures(&signed, &self.origin, &self.parties, self.fault_model).ok()?;
        if needs_quote && ok.quotes.is_empty() {
            return None;
        }
        if let Some(o) = self.open.get_mut(&size) {
            o.certified = true;
        }
        self.latest = self.latest.max(Some(size));
        // Older uncertified checkpoints are superseded: the newer one's
        // consistency with them is what a verifier checks anyway.
        let keep = self.open.split_off(&size);
        self.open = keep;
        Some(signed)
    }
}

/// Why the daemon's audit log cannot go on: local faults, fatal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The ledger refused a decided block.
    #[error("audit ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The store failed or disagrees with the replay.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The daemon's audit log: the firmware ledger fed with every decided
/// block, its steps stored, and the checkpoint book.
#[derive(Debug)]
pub struct AuditLog {
    ledger: Ledger,
    /// The checkpoint schedule and collection.
    pub book: CheckpointBook,
}

impl AuditLog {
    /// A log rebuilt from block 1; `book` knows the latest stored
    /// certified checkpoint (so replay does not reopen older ones).
    pub fn new(book: CheckpointBook) -> Self {
        AuditLog {
            ledger: Ledger::new(),
            book,
        }
    }

    /// The tree head and whether the last block's entries are pending.
    pub fn app_state(&self) -> (LogHead, bool) {
        (self.ledger.head(), self.ledger.pending())
    }

    /// Feeds decided `block` (applied by the session machine with
    /// `outcome`, leaving `state`) to the ledger and stores its step in one
    /// transaction; entries already stored (a replay) are compared, not
    /// rewritten. Returns how many entries were appended and the checkpoint
    /// that falls due, if any.
    pub fn on_decided(
        &mut self,
        store: &Store,
        block: &Block,
        outcome: &BlockOutcome,
        state: &State,
    ) -> Result<(usize, Option<Checkpoint>), AuditError> {
        let source = crate::measurement::EvidenceMeasurements;
        let step = self.ledger.on_decided(block, outcome, state, &source)?;
        if !step.encoded.is_empty() {
            store.append_log(step.first, &step.encoded, &step.nodes)?;
        }
        let due = self.book.after_block(
            TreeSize(step.head.size),
            step.head.root,
            block.header().time_ms,
        );
        Ok((step.encoded.len(), due))
    }
}

/// The checkpoint book and issuer of party `me`, from the cluster's
/// enrollments and rules. `quote_pcrs` are the PCRs the party's quotes
/// select (none: it has no AK and only cosigns).
pub(super) fn setup(
    cfg: &crate::config::Config,
    enrollments: &BTreeMap<PartyId, crate::init::Enrollment>,
    quote_pcrs: Option<Vec<PcrIndex>>,
) -> anyhow::Result<(CheckpointBook, Issuer)> {
    let mut parties = BTreeMap::new();
    let mut aks = BTreeMap::new();
    for (id, e) in enrollments {
        parties.insert(*id, e.vote_public_key()?);
        if let Some(ak) = &e.ak {
            let bytes = hex::decode(&ak.tpmt_public)
                .map_err(|err| anyhow::anyhow!("the enrolled AK of {id} is not hex: {err}"))?;
            aks.insert(*id, bytes);
        }
    }
    let vote_key = *parties
        .get(&cfg.me)
        .ok_or_else(|| anyhow::anyhow!("party.id: {} has no enrollment", cfg.me))?;
    let ak = match quote_pcrs {
        Some(_) => aks.get(&cfg.me).cloned(),
        None => None,
    };
    let book = CheckpointBook::new(
        quorate_firmware::audit::checkpoint::origin_for(&cfg.cluster_id),
        cfg.me,
        parties,
        aks,
        cfg.file.cluster.fault_model,
        cfg.file.cluster.checkpoint_policy(),
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let issuer = Issuer {
        vote_key,
        ak,
        pcrs: quote_pcrs.unwrap_or_default(),
        tx,
        rx,
        signing: BTreeSet::new(),
        last_resend: Instant::now(),
        witnesses: crate::audit::witness::Submitter::new(cfg.file.cluster.witness_list()),
    };
    Ok((book, issuer))
}

/// Lines signed by the TPM for a checkpoint size, or why not.
pub(super) type SignedLines = (TreeSize, Result<Vec<NoteSignature>, String>);

/// What the runtime keeps for issuing checkpoints.
pub(super) struct Issuer {
    vote_key: PublicKey,
    /// This party's AK (TPMT_PUBLIC), when it can quote.
    ak: Option<Vec<u8>>,
    /// The PCRs its quotes select (measurement PCR and the policy's).
    pcrs: Vec<PcrIndex>,
    tx: tokio::sync::mpsc::UnboundedSender<SignedLines>,
    pub(super) rx: tokio::sync::mpsc::UnboundedReceiver<SignedLines>,
    /// Checkpoints being signed by the TPM now.
    signing: BTreeSet<TreeSize>,
    last_resend: Instant,
    /// Submissions to outside witnesses (`cluster.witnesses`).
    witnesses: crate::audit::witness::Submitter,
}

impl super::Runtime {
    /// After a decided (or replayed) block was applied: feed the ledger,
    /// store its step, remember the head for the driver, and issue the
    /// checkpoint that fell due (live only; at start see
    /// [`super::Runtime::resume_checkpoints`]).
    pub(super) fn audit_decided(
        &mut self,
        block: &Block,
        outcome: &BlockOutcome,
        replay: bool,
    ) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let (appended, due) =
            self.audit
                .on_decided(&self.store, block, outcome, self.machine.state())?;
        if !replay {
            self.metrics.log_append(appended, t0.elapsed());
            self.app_state = Some(self.audit.app_state());
            if let Some(cp) = due {
                self.issue_checkpoint(cp);
            }
        }
        Ok(())
    }

    /// At start, after the replay: take back our stored lines of open
    /// checkpoints, and sign those we had not signed before the restart.
    pub(super) fn resume_checkpoints(&mut self) -> anyhow::Result<()> {
        for (size, note) in self.store.own_lines()? {
            if self.audit.book.open(size).is_none() {
                continue;
            }
            match SignedCheckpoint::parse(note.as_bytes()) {
                Ok(n) => {
                    if let Some(c) = self.audit.book.add_own(size, n.signatures) {
                        self.store_certified(&c)?;
                    }
                }
                Err(e) => {
                    warn!(size = size.0, error = %e, "stored own checkpoint lines are unreadable; signing again")
                }
            }
        }
        let unsigned: Vec<Checkpoint> = self.audit.book.unsigned().into_iter().cloned().collect();
        for cp in unsigned {
            self.issue_checkpoint(cp);
        }
        Ok(())
    }

    /// Has the TPM quote and cosign `cp`, off the event loop.
    fn issue_checkpoint(&mut self, cp: Checkpoint) {
        if !self.issuer.signing.insert(cp.size) {
            return;
        }
        let tpm = self.tpm.clone();
        let (me, key, ak, pcrs) = (
            self.me,
            self.issuer.vote_key,
            self.issuer.ak.clone(),
            self.issuer.pcrs.clone(),
        );
        let tx = self.issuer.tx.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let res = issue_lines(&tpm, me, key, ak, &pcrs, &cp)
                .await
                .map_err(|e| e.to_string());
            metrics.checkpoint_issue_latency.observe(t0.elapsed());
            let _ = tx.send((cp.size, res));
        });
    }

    /// Our lines for checkpoint `size` are signed: durable first, then sent.
    pub(super) fn checkpoint_signed(
        &mut self,
        size: TreeSize,
        res: Result<Vec<NoteSignature>, String>,
    ) -> anyhow::Result<()> {
        self.issuer.signing.remove(&size);
        let lines = match res {
            Ok(l) => l,
            Err(e) => {
                warn!(size = size.0, error = %e, "cannot sign the audit checkpoint; will retry");
                return Ok(());
            }
        };
        let Some(cp) = self.audit.book.open(size).cloned() else {
            return Ok(()); // superseded meanwhile
        };
        let own = SignedCheckpoint {
            checkpoint: cp,
            signatures: lines.clone(),
        };
        self.store.put_own_lines(size, &own.format())?;
        if let Some(c) = self.audit.book.add_own(size, lines) {
            self.store_certified(&c)?;
        }
        if let Some(note) = self.audit.book.own_note(size) {
            self.broadcast_note(&note);
        }
        debug!(size = size.0, "audit checkpoint signed and sent");
        Ok(())
    }

    fn broadcast_note(&self, note: &str) {
        let f = super::admission::PeerFrame::Checkpoint(note.to_string());
        self.net.broadcast(Arc::from(f.encode()));
    }

    fn send_note(&self, to: PartyId, note: &str) {
        let f = super::admission::PeerFrame::Checkpoint(note.to_string());
        self.net.send(to, Arc::from(f.encode()));
    }

    fn store_certified(&mut self, c: &SignedCheckpoint) -> anyhow::Result<()> {
        self.store.put_checkpoint(c.checkpoint.size, &c.format())?;
        self.issuer.witnesses.certified(&self.store, c);
        self.metrics.checkpoint_certified(c.checkpoint.size.0);
        info!(
            size = c.checkpoint.size.0,
            lines = c.signatures.len(),
            "audit checkpoint certified"
        );
        Ok(())
    }

    /// A peer's checkpoint note.
    pub(super) fn checkpoint_frame(&mut self, from: PartyId, note: &str) -> anyhow::Result<()> {
        match self.audit.book.receive(note.as_bytes()) {
            Ok(r) => {
                if let Some(c) = &r.store {
                    self.store_certified(c)?;
                }
                if let Some(a) = &r.answer {
                    self.send_note(from, a);
                }
                if let Some(size) = r.answer_stored {
                    if let Some(stored) = self.store.checkpoint(size)? {
                        if stored_helps(note.as_bytes(), &stored) {
                            self.send_note(from, &stored);
                        }
                    }
                }
            }
            Err(e @ Refused::Fork { .. }) => {
                self.fork_noted(from, &e.to_string());
                tracing::error!(peer = %from, error = %e, "AUDIT LOG FORK: a peer signed another root for the same size");
            }
            Err(e) => warn!(peer = %from, error = %e, "checkpoint note refused"),
        }
        Ok(())
    }

    /// A peer came up: send it what it may have missed.
    pub(super) fn checkpoint_peer_up(&mut self, peer: PartyId) -> anyhow::Result<()> {
        for note in self.audit.book.resend() {
            self.send_note(peer, &note);
        }
        if let Some((_, latest)) = self.store.latest_checkpoint()? {
            self.send_note(peer, &latest);
        }
        Ok(())
    }

    /// On the tick: retry failed signing and re-send lines still short of
    /// a quorum, every [`RESEND_EVERY`].
    pub(super) fn checkpoint_tick(&mut self) {
        self.issuer.witnesses.poll(&self.store);
        if self.issuer.last_resend.elapsed() < RESEND_EVERY || !self.audit.book.waiting() {
            return;
        }
        self.issuer.last_resend = Instant::now();
        let unsigned: Vec<Checkpoint> = self.audit.book.unsigned().into_iter().cloned().collect();
        for cp in unsigned {
            self.issue_checkpoint(cp);
        }
        for note in self.audit.book.resend() {
            self.broadcast_note(&note);
        }
    }
}

/// True when `stored`, this party's certified note for a size the sender's
/// `note` is about, holds a signature line the note lacks: the sender is
/// behind and gets ours. Two parties that hold the same certified note do
/// not answer each other, so the exchange ends; before, each answered the
/// other's stored note with its own, forever (found under load: four idle
/// daemons at ≈ 50 % CPU each, parsing checkpoint notes).
fn stored_helps(note: &[u8], stored: &str) -> bool {
    match (
        SignedCheckpoint::parse(note),
        SignedCheckpoint::parse(stored.as_bytes()),
    ) {
        (Ok(theirs), Ok(ours)) => ours
            .signatures
            .iter()
            .any(|l| !theirs.signatures.contains(l)),
        _ => false,
    }
}

/// Most entries one `GET /v1/log/entries` page returns.
pub const ENTRIES_PAGE: u64 = 256;
/// A page stops once its entries exceed this many bytes (one entry at least).
pub const ENTRIES_PAGE_BYTES: usize = 4 << 20;

/// What the API asks of the log. Arguments are checked by the API
/// (`index < size`, `0 < old <= new`, `start < end`); sizes beyond the log
/// make the answer `None` (404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogQuery {
    /// The latest certified checkpoint.
    Checkpoint,
    /// Entries `start .. end` (a bounded page of them).
    Entries {
        /// First index.
        start: u64,
        /// End index (exclusive).
        end: u64,
    },
    /// Inclusion proof of leaf `index` in the tree of `size` entries.
    Inclusion {
        /// The leaf.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// Consistency proof between the trees of `old` and `new` entries.
    Consistency {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hexes(v: &[Sha256Digest]) -> Vec<String> {
    v.iter().map(|d| hex::encode(d.as_bytes())).collect()
}

/// Answers a [`LogQuery`] from the store: JSON, hashes in hex, entries in
/// standard base64. `Ok(None)` when what is asked lies beyond the log.
pub fn log_view(store: &Store, q: LogQuery) -> Result<Option<serde_json::Value>, StoreError> {
    use serde_json::json;
    let size = store.log_size()?;
    Ok(match q {
        LogQuery::Checkpoint => store.latest_checkpoint()?.and_then(|(_, note)| {
            let cp = SignedCheckpoint::parse(note.as_bytes()).ok()?;
            Some(json!({
                "size": cp.checkpoint.size.0,
                "root": hex::encode(cp.checkpoint.root.as_bytes()),
                "origin": cp.checkpoint.origin,
                "signers": cp.signatures.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                "note": note,
                "log_size": size.0,
            }))
        }),
        LogQuery::Entries { start, end } => {
            if start >= size.0 {
                return Ok(None);
            }
            let end = end.min(size.0).min(start.saturating_add(ENTRIES_PAGE));
            let entries = store.entries(LeafIndex(start), LeafIndex(end))?;
            let leaves = store.leaf_hashes(LeafIndex(start), LeafIndex(end))?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for ((i, e), l) in (start..).zip(&entries).zip(&leaves) {
                if !out.is_empty() && bytes.saturating_add(e.len()) > ENTRIES_PAGE_BYTES {
                    break;
                }
                bytes = bytes.saturating_add(e.len());
                out.push(
                    json!({"index": i, "entry": b64(e), "leaf_hash": hex::encode(l.as_bytes())}),
                );
            }
            let next = start.saturating_add(out.len() as u64);
            Some(json!({
                "start": start,
                "end": next,
                "log_size": size.0,
                "entries": out,
            }))
        }
        LogQuery::Inclusion { index, size: at } => {
            if at > size.0 || index >= at {
                return Ok(None);
            }
            let proof = store.inclusion_proof(LeafIndex(index), TreeSize(at))?;
            let leaf = store
                .leaf_hashes(LeafIndex(index), LeafIndex(index.saturating_add(1)))?
                .pop();
            let root = store.root_at(TreeSize(at))?;
            Some(json!({
                "index": index,
                "size": at,
                "leaf_hash": leaf.map(|l| hex::encode(l.as_bytes())),
                "root": hex::encode(root.as_bytes()),
                "proof": hexes(&proof),
            }))
        }
        LogQuery::Consistency { old, new } => {
            if new > size.0 || old == 0 || old > new {
                return Ok(None);
            }
            let proof = store.consistency_proof(TreeSize(old), TreeSize(new))?;
            Some(json!({
                "old": old,
                "new": new,
                "old_root": hex::encode(store.root_at(TreeSize(old))?.as_bytes()),
                "new_root": hex::encode(store.root_at(TreeSize(new))?.as_bytes()),
                "proof": hexes(&proof),
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_firmware::audit::checkpoint::{key_name, origin_for};
    use quorate_firmware::crypto::Signature;
    use quorate_firmware::types::ClusterId;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    struct Party {
        id: PartyId,
        key: EcdsaKeyPair,
        public: PublicKey,
    }

    fn parties(n: u32) -> Vec<Party> {
        let rng = SystemRandom::new();
        (1..=n)
            .map(|i| {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
                let key = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .unwrap();
                let public = PublicKey(key.public_key().as_ref().try_into().unwrap());
                Party {
                    id: PartyId(i),
                    key,
                    public,
                }
            })
            .collect()
    }

    fn origin() -> String {
        origin_for(&ClusterId(Sha256Digest::of(b"audit test")))
    }

    fn book(ps: &[Party], me: u32) -> CheckpointBook {
        CheckpointBook::new(
            origin(),
            PartyId(me),
            ps.iter().map(|p| (p.id, p.public)).collect(),
            BTreeMap::new(),
            FaultModel::Byzantine,
            CheckpointPolicy {
                every_entries: 4,
                every_ms: 10_000,
            },
        )
    }

    fn cosign(p: &Party, cp: &Checkpoint) -> NoteSignature {
        let rng = SystemRandom::new();
        let sig = p.key.sign(&rng, &cp.cosign_message()).unwrap();
        cosignature(
            &cp.origin,
            p.id,
            &p.public,
            &Signature(sig.as_ref().try_into().unwrap()),
        )
    }

    fn note(cp: &Checkpoint, lines: Vec<NoteSignature>) -> Vec<u8> {
        SignedCheckpoint {
            checkpoint: cp.clone(),
            signatures: lines,
        }
        .format()
        .into_bytes()
    }

    #[test]
    fn every_party_opens_the_same_checkpoints_from_decided_values() {
        let ps = parties(4);
        let (mut a, mut b) = (book(&ps, 1), book(&ps, 2));
        let root = Sha256Digest::of(b"root");
        let mut opened = Vec::new();
        // (size, time): first non-empty tree, then every 4 entries or 10 s.
        for (size, t) in [(0, 1), (2, 2), (3, 3), (6, 4), (7, 15_000), (8, 15_001)] {
            let x = a.after_block(TreeSize(size), root, t);
            let y = b.after_block(TreeSize(size), root, t);
            assert_eq!(x, y);
            if let Some(cp) = x {
                opened.push(cp.size.0);
            }
        }
        assert_eq!(opened, vec![2, 6, 7]);
    }

    #[test]
    fn a_quorum_of_cosignatures_certifies_and_late_lines_are_kept() {
        let ps = parties(4);
        let mut b = book(&ps, 1);
        let cp = b
            .after_block(TreeSize(5), Sha256Digest::of(b"r"), 1)
            .unwrap();
        assert_eq!(b.add_own(TreeSize(5), vec![cosign(&ps[0], &cp)]), None);
        assert!(b.own_note(TreeSize(5)).unwrap().contains("/P1/vote"));
        // P2's lines: not yet a quorum (3 of 4); P2 is answered with ours.
        let r = b.receive(&note(&cp, vec![cosign(&ps[1], &cp)])).unwrap();
        assert_eq!(r.store, None);
        assert!(r.answer.unwrap().contains("/P1/vote"));
        // P3's line completes the quorum.
        let r = b.receive(&note(&cp, vec![cosign(&ps[2], &cp)])).unwrap();
        let stored = r.store.unwrap();
        assert_eq!(stored.signatures.len(), 3);
        check_cosignatures(&stored, &origin(), &b.parties, FaultModel::Byzantine).unwrap();
        assert_eq!(b.latest_certified(), Some(TreeSize(5)));
        assert!(!b.waiting());
        // A late P4 line makes a fuller note to store; P4 gets the certified one.
        let r = b.receive(&note(&cp, vec![cosign(&ps[3], &cp)])).unwrap();
        assert_eq!(r.store.unwrap().signatures.len(), 4);
        assert_eq!(
            SignedCheckpoint::parse(r.answer.unwrap().as_bytes())
                .unwrap()
                .signatures
                .len(),
            4
        );
        // The same signer again: nothing to store, but it evidently lacks
        // the others' lines, so it is sent them.
        let r = b.receive(&note(&cp, vec![cosign(&ps[3], &cp)])).unwrap();
        assert_eq!(r.store, None);
        assert_eq!(
            SignedCheckpoint::parse(r.answer.unwrap().as_bytes())
                .unwrap()
                .signatures
                .len(),
            4
        );
        // A note holding every line we hold is not answered.
        let all = SignedCheckpoint::parse(b.resend()[0].as_bytes()).unwrap();
        let r = b.receive(all.format().as_bytes()).unwrap();
        assert_eq!(r, Received::default());
    }

    #[test]
    fn forged_foreign_and_forked_notes_are_refused_and_store_nothing() {
        let ps = parties(4);
        let mut b = book(&ps, 1);
        let cp = b
            .after_block(TreeSize(5), Sha256Digest::of(b"r"), 1)
            .unwrap();
        b.add_own(TreeSize(5), vec![cosign(&ps[0], &cp)]);
        // A cosignature over another checkpoint, in P2's name.
        let mut other = cp.clone();
        other.root = Sha256Digest::of(b"other");
        let mut forged = cosign(&ps[1], &other);
        assert!(matches!(
            b.receive(&note(&cp, vec![forged.clone()])),
            Err(Refused::BadLine { .. })
        ));
        // P3 signing in P2's name: wrong key ID.
        forged = cosign(&ps[2], &cp);
        forged.name = key_name(&cp.origin, PartyId(2), SignerRole::Cosign);
        assert!(matches!(
            b.receive(&note(&cp, vec![forged])),
            Err(Refused::BadLine { .. })
        ));
        // A line in the name of party 9.
        let outsider = parties(9).pop().unwrap();
        assert!(matches!(
            b.receive(&note(&cp, vec![cosign(&outsider, &cp)])),
            Err(Refused::NotAParty(PartyId(9)))
        ));
        // The same size with another root: a fork.
        assert!(matches!(
            b.receive(&note(&other, vec![cosign(&ps[1], &other)])),
            Err(Refused::Fork { .. })
        ));
        // Another log, and garbage.
        let mut foreign = cp.clone();
        foreign.origin = "quorate/other".into();
        assert!(matches!(
            b.receive(&note(&foreign, vec![cosign(&ps[1], &foreign)])),
            Err(Refused::WrongOrigin(_))
        ));
        assert!(matches!(b.receive(b"\xff\x00"), Err(Refused::Malformed(_))));
        // Sizes not open here are dropped, and nothing was certified.
        let mut far = cp.clone();
        far.size = TreeSize(1_000_000);
        assert_eq!(
            b.receive(&note(&far, vec![cosign(&ps[1], &far)])).unwrap(),
            Received::default()
        );
        assert_eq!(b.latest_certified(), None);
        assert!(b.waiting());
    }

    #[test]
    fn quote_lines_are_checked_against_the_reference_policy() {
        use quorate_attestation::soft::SoftTpm;
        let ps = parties(4);
        let rng = SystemRandom::new();
        let pcr = PcrIndex::DEFAULT_MEASUREMENT;
        let approved = Sha256Digest::of(b"approved executable");
        let config = Sha256Digest::of(b"cluster rules");
        let policy = Policy::new(vec![approved], config);
        // P2's TPM runs an executable the policy does not allow.
        let mut rogue =
            SoftTpm::launch(&rng, pcr, &Sha256Digest::of(b"rogue"), &config, 1).unwrap();
        let mut honest = SoftTpm::launch(&rng, pcr, &approved, &config, 1).unwrap();
        let line = |tpm: &mut SoftTpm, cp: &Checkpoint| {
            let (quote, pcr_values) = tpm
                .quote(
                    &rng,
                    &policy.quoted_pcrs(),
                    cp.quote_qualifying_data().as_bytes(),
                )
                .unwrap();
            let ak = tpm.ak_public.as_bytes().to_vec();
            quote_signature(
                &cp.origin,
                PartyId(2),
                &ak_tpm2b(&ak),
                CheckpointQuote { quote, pcr_values }.encode(),
            )
        };
        for (tpm, approved_code) in [(&mut rogue, false), (&mut honest, true)] {
            let aks = BTreeMap::from([(PartyId(2), tpm.ak_public.as_bytes().to_vec())]);
            let mk = |p: Option<Policy>| {
                CheckpointBook::new(
                    origin(),
                    PartyId(1),
                    ps.iter().map(|p| (p.id, p.public)).collect(),
                    aks.clone(),
                    FaultModel::Byzantine,
                    CheckpointPolicy {
                        every_entries: 4,
                        every_ms: 10_000,
                    },
                )
                .with_quote_policy(p)
            };
            let mut strict = mk(Some(policy.clone()));
            let cp = strict
                .after_block(TreeSize(5), Sha256Digest::of(b"r"), 1)
                .unwrap();
            let l = line(tpm, &cp);
            let r = strict.receive(&note(&cp, vec![l.clone()]));
            if approved_code {
                r.unwrap();
            } else {
                match r {
                    Err(Refused::BadLine { party, reason, .. }) => {
                        assert_eq!(party, PartyId(2));
                        assert!(reason.contains("not the launch measurement"), "{reason}");
                    }
                    other => panic!("a quote by unapproved code was not refused: {other:?}"),
                }
            }
            // Without a policy (dev mode) only the signature is checked.
            let mut dev = mk(None);
            dev.after_block(TreeSize(5), Sha256Digest::of(b"r"), 1)
                .unwrap();
            dev.receive(&note(&cp, vec![l])).unwrap();
        }
    }

    #[test]
    fn a_party_behind_is_answered_and_memory_stays_bounded() {
        let ps = parties(4);
        let mut b = book(&ps, 1);
        let root = Sha256Digest::of(b"r");
        let mut first = None;
        for i in 0..(MAX_OPEN as u64 + 3) {
            let cp = b.after_block(TreeSize(4 * (i + 1)), root, i).unwrap();
            first.get_or_insert(cp);
        }
        assert_eq!(b.open.len(), MAX_OPEN);
        let first = first.unwrap();
        assert_eq!(b.open(first.size), None);
        // A certified size that is no longer open: the sender is answered
        // from the store.
        b.set_latest_certified(TreeSize(4));
        let r = b
            .receive(&note(&first, vec![cosign(&ps[1], &first)]))
            .unwrap();
        assert_eq!(r.answer_stored, Some(TreeSize(4)));
        // Certifying a size drops the older open ones.
        let size = TreeSize(4 * (MAX_OPEN as u64));
        let cp = b.open(size).unwrap().clone();
        b.add_own(size, vec![cosign(&ps[0], &cp)]);
        b.receive(&note(&cp, vec![cosign(&ps[1], &cp)])).unwrap();
        let r = b.receive(&note(&cp, vec![cosign(&ps[2], &cp)])).unwrap();
        assert!(r.store.is_some());
        assert!(b.open.keys().all(|s| *s >= size));
        assert_eq!(b.resend().len(), 1);
    }

    #[test]
    fn a_stored_note_answers_only_a_sender_that_lacks_its_lines() {
        let ps = parties(4);
        let mut b = book(&ps, 1);
        let cp = b
            .after_block(TreeSize(4), Sha256Digest::of(b"r"), 0)
            .unwrap();
        let lines: Vec<NoteSignature> = ps.iter().take(3).map(|p| cosign(p, &cp)).collect();
        let stored = String::from_utf8(note(&cp, lines.clone())).unwrap();
        // A sender holding one line is behind: it gets the certified note.
        assert!(stored_helps(&note(&cp, lines[..1].to_vec()), &stored));
        // A sender holding the same certified note is not answered, so two
        // such parties do not echo it to each other for ever.
        assert!(!stored_helps(stored.as_bytes(), &stored));
        let mut more = lines.clone();
        more.push(cosign(&ps[3], &cp));
        assert!(!stored_helps(&note(&cp, more), &stored));
        assert!(!stored_helps(b"not a note", &stored));
    }

    #[test]
    fn log_views_page_prove_and_answer_none_beyond_the_log() {
        use quorate_firmware::audit::merkle::{leaf_hash, verify_inclusion, CompactTree};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "p").unwrap();
        let mut tree = CompactTree::new();
        let entries: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut nodes = Vec::new();
        for e in &entries {
            nodes.extend(tree.append(e).1);
        }
        store.append_log(LeafIndex(0), &entries, &nodes).unwrap();
        let view = |q| log_view(&store, q).unwrap();
        assert_eq!(view(LogQuery::Checkpoint), None);
        // Pages are bounded; the answer's end is where the next starts.
        let page = view(LogQuery::Entries {
            start: 10,
            end: 10_000,
        })
        .unwrap();
        assert_eq!(page["end"], 10 + ENTRIES_PAGE);
        assert_eq!(
            page["entries"].as_array().unwrap().len() as u64,
            ENTRIES_PAGE
        );
        assert_eq!(page["entries"][0]["entry"], b64(&entries[10]));
        assert_eq!(
            page["entries"][0]["leaf_hash"],
            hex::encode(leaf_hash(&entries[10]).as_bytes())
        );
        let tail = view(LogQuery::Entries {
            start: 290,
            end: 10_000,
        })
        .unwrap();
        assert_eq!(tail["end"], 300);
        assert_eq!(
            view(LogQuery::Entries {
                start: 300,
                end: 301
            }),
            None
        );
        // Proofs verify against the tree's roots; beyond the log: None.
        let p = view(LogQuery::Inclusion {
            index: 7,
            size: 300,
        })
        .unwrap();
        let path: Vec<Sha256Digest> = p["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                Sha256Digest(
                    hex::decode(h.as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap(),
                )
            })
            .collect();
        verify_inclusion(
            &leaf_hash(&entries[7]),
            LeafIndex(7),
            TreeSize(300),
            &path,
            &tree.root(),
        )
        .unwrap();
        assert_eq!(
            view(LogQuery::Inclusion {
                index: 7,
                size: 301
            }),
            None
        );
        assert!(view(LogQuery::Consistency { old: 5, new: 300 }).is_some());
        assert_eq!(view(LogQuery::Consistency { old: 5, new: 301 }), None);
        // A stored certified checkpoint is served with its note.
        let cp = SignedCheckpoint {
            checkpoint: Checkpoint {
                origin: origin(),
                size: TreeSize(300),
                root: tree.root(),
                extensions: Vec::new(),
            },
            signatures: vec![NoteSignature {
                name: format!("{}/P1/vote", origin()),
                key_id: [1, 2, 3, 4],
                signature: vec![5; 64],
            }],
        };
        store.put_checkpoint(TreeSize(300), &cp.format()).unwrap();
        let v = view(LogQuery::Checkpoint).unwrap();
        assert_eq!(v["size"], 300);
        assert_eq!(v["note"], cp.format());
        assert_eq!(v["root"], hex::encode(tree.root().as_bytes()));
    }

    #[test]
    fn cosignatures_never_share_a_prefix_with_consensus_or_batch_messages() {
        use quorate_firmware::batch::BatchBody;
        use quorate_firmware::consensus::context::{SignedBytes, Step, CONSENSUS_DOMAIN};
        use quorate_firmware::types::{Epoch, Height};
        let cluster = ClusterId(Sha256Digest::of(b"c"));
        let cp = Checkpoint {
            origin: origin_for(&cluster),
            size: TreeSize(1),
            root: Sha256Digest::of(b"r"),
            extensions: Vec::new(),
        };
        let vote = SignedBytes {
            domain: CONSENSUS_DOMAIN.to_string(),
            cluster,
            epoch: Epoch(0),
            height: Height(1),
            round: 0,
            step: Step::Precommit,
            value: None,
            pol_round: -1,
            signer: PartyId(1),
        }
        .encode();
        let batch = BatchBody {
            cluster,
            author: PartyId(1),
            seq: 1,
            ops: vec![],
        }
        .signing_bytes();
        let cosign = cp.cosign_message();
        assert_eq!(cosign.first(), Some(&b'q'));
        assert_ne!(vote.first(), cosign.first());
        assert_ne!(batch.first(), cosign.first());
    }
}
