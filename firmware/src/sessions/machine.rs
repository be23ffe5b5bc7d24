//! The session state machine: applies each decided block, in order, and
//! returns what happened to every operation in it.
//!
//! Everything here is a function of the configuration and the decided blocks
//! alone: time is the block's consensus time (`time_ms`), never a local
//! clock; maps are ordered; nothing panics on what a peer sent. Two parties
//! that apply the same blocks hold byte-identical state and the same
//! [`SessionMachine::state_root`] after every block.
//!
//! Per block: (1) deadlines that the block's time has passed fire (pending
//! operations expire, sessions that missed their overall or round deadline
//! fail, naming the participants that had not done their part); (2) each
//! batch is checked (cluster, member, strictly increasing seq) and each of
//! its operations decoded, checked against the rules and applied; (3)
//! sessions whose current round every participant has completed move to the
//! next round, whose deadline starts at this block's time.

use super::approval::{tally, ApprovalPolicy, ApprovalRules, Tally};
use super::ops::{
    check_batch_envelope, decode_batch_ops, AbortSession, AttestationRecord, BlameOp, Blob,
    CreateSession, Decision, Evidence, KeyId, MisbehaviourProof, OpBody, OpId, Operation, Reason,
    SessionId, SessionKind, SessionMessage, SessionResult, SessionSpec, Slot, VerdictOp,
    MAX_SCHEME_BYTES, MAX_TEXT_BYTES,
};
use super::root::{leaf, MerkleTree};
use crate::batch::SignedBatch;
use crate::crypto::PublicKey;
use crate::types::{ClusterId, FaultModel, Height, PartyId, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Domain tag of the state root.
pub const STATE_ROOT_DOMAIN: &[u8] = b"quorate/sessions/state-root/v1";

/// The built-in engine's Ed25519 scheme label (signs the given bytes).
pub const SCHEME_ED25519: &str = "frost-ed25519";
/// The built-in engine's BIP-340 scheme label (signs a 32-byte digest).
pub const SCHEME_SECP256K1_TR: &str = "frost-secp256k1-tr";

/// Longest message digest a signing session accepts, in bytes.
pub const MAX_DIGEST_BYTES: usize = 64;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Cluster-wide session rules. Part of the canonical cluster configuration
/// (every party must use the same, or their state roots differ); the host
/// embeds it in its TOML config under `[sessions]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionRules {
    /// Approval policy per operation kind.
    pub approval: ApprovalRules,
    /// Largest session-message payload, in bytes.
    pub max_payload_bytes: u32,
    /// Largest session result, in bytes.
    pub max_result_bytes: u32,
    /// Largest attestation evidence, in bytes.
    pub max_evidence_bytes: u32,
    /// Round deadline when a session does not set one, in seconds.
    pub default_round_secs: u32,
    /// Longest overall session deadline (and round deadline) accepted, in seconds.
    pub max_deadline_secs: u32,
    /// Highest round number a session may reach.
    pub max_rounds: u32,
    /// How long an attestation record waits for verdicts, in seconds.
    pub attestation_verdict_secs: u32,
}

impl Default for SessionRules {
    fn default() -> Self {
        SessionRules {
            approval: ApprovalRules::default(),
            max_payload_bytes: 64 * 1024,
            max_result_bytes: 4 * 1024,
            max_evidence_bytes: 64 * 1024,
            default_round_secs: 60,
            max_deadline_secs: 24 * 3600,
            max_rounds: 16,
            attestation_verdict_secs: 300,
        }
    }
}

/// Everything the machine needs besides the blocks: fixed per epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// The cluster's identity.
    pub cluster: ClusterId,
    /// The fault model, which fixes quorum sizes.
    pub fault_model: FaultModel,
    /// The members and their vote keys.
    pub members: BTreeMap<PartyId, PublicKey>,
    /// The session rules.
    pub rules: SessionRules,
}

/// A configuration the machine refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No members.
    #[error("the cluster has no members; list every party and its vote key")]
    NoMembers,
    /// Party id 0 is reserved.
    #[error("party id 0 is not allowed; number parties from 1")]
    ZeroPartyId,
    /// A rule is zero where it must be positive.
    #[error("session rule `{0}` must be greater than zero")]
    ZeroRule(&'static str),
}

impl MachineConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() {
            return Err(ConfigError::NoMembers);
        }
        if self.members.contains_key(&PartyId(0)) {
            return Err(ConfigError::ZeroPartyId);
        }
        let r = &self.rules;
        for (name, v) in [
            ("max_payload_bytes", r.max_payload_bytes),
            ("max_result_bytes", r.max_result_bytes),
            ("max_evidence_bytes", r.max_evidence_bytes),
            ("default_round_secs", r.default_round_secs),
            ("max_deadline_secs", r.max_deadline_secs),
            ("max_rounds", r.max_rounds),
            ("attestation_verdict_secs", r.attestation_verdict_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroRule(name));
            }
        }
        Ok(())
    }

    /// Digest of the canonical encoding of this configuration.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&postcard::to_stdvec(self).unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// Where consensus placed an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpPosition {
    /// Block height.
    pub height: Height,
    /// Block time (consensus time, ms since the Unix epoch).
    pub time_ms: u64,
    /// Index of the batch in the block.
    pub batch: u32,
    /// Index of the operation in the batch.
    pub index: u32,
    /// Global order of the operation since genesis.
    pub ordinal: u64,
}

/// The kind of a decided operation, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OpKind {
    /// `CreateSession` for a key generation.
    CreateKeygen,
    /// `CreateSession` for a signing.
    CreateSigning,
    /// `Verdict`.
    Verdict,
    /// `SessionMessage`.
    SessionMessage,
    /// `SessionResult`.
    SessionResult,
    /// `AbortSession`.
    AbortSession,
    /// `AttestationRecord`.
    AttestationRecord,
    /// `Evidence`.
    Evidence,
    /// Bytes that did not decode into an operation.
    Undecodable,
    /// `Blame`.
    Blame,
    /// `CreateSession` for a share refresh.
    CreateRefresh,
}

impl OpKind {
    fn of(body: &OpBody) -> Self {
        match body {
            OpBody::CreateSession(c) => match c.session.kind() {
                SessionKind::Keygen => OpKind::CreateKeygen,
                SessionKind::Signing => OpKind::CreateSigning,
                SessionKind::Refresh => OpKind::CreateRefresh,
            },
            OpBody::Verdict(_) => OpKind::Verdict,
            OpBody::SessionMessage(_) => OpKind::SessionMessage,
            OpBody::SessionResult(_) => OpKind::SessionResult,
            OpBody::AbortSession(_) => OpKind::AbortSession,
            OpBody::AttestationRecord(_) => OpKind::AttestationRecord,
            OpBody::Evidence(_) => OpKind::Evidence,
            OpBody::Blame(_) => OpKind::Blame,
        }
    }
}

/// Where an operation stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Waiting for verdicts.
    Pending,
    /// Took effect at `height`.
    Executed {
        /// When.
        height: Height,
    },
    /// Refused at `height`, with every reason.
    Rejected {
        /// When.
        height: Height,
        /// Why (every rule broken, every rejecting verdict).
        reasons: Vec<RejectReason>,
    },
}

impl OpStatus {
    /// The height at which the operation was settled (executed or
    /// rejected); `None` while it waits for verdicts.
    pub fn finished_at(&self) -> Option<Height> {
        match self {
            OpStatus::Pending => None,
            OpStatus::Executed { height } | OpStatus::Rejected { height, .. } => Some(*height),
        }
    }
}

/// One reason an operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// It broke a deterministic rule.
    Rule(RuleViolation),
    /// A voter rejected it.
    Verdict {
        /// The voter.
        party: PartyId,
        /// The voter's reason.
        reason: Reason,
    },
    /// Its deadline passed before enough approvals arrived.
    Deadline {
        /// The deadline (block time, ms).
        deadline_ms: u64,
    },
    /// A newer record of the same kind by the same author replaced it.
    Superseded {
        /// The newer operation.
        by: OpId,
    },
    /// Its session was aborted before approval.
    Aborted {
        /// Who aborted.
        by: PartyId,
        /// Why.
        reason: Reason,
    },
}

/// A deterministic rule an operation broke. Every party reaches the same
/// verdict from the same decided state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RuleViolation {
    /// The batch is for another cluster.
    #[error("batch signed for another cluster")]
    WrongCluster,
    /// The batch author is not a member.
    #[error("batch author {0} is not a member")]
    UnknownAuthor(PartyId),
    /// The batch has too many operations.
    #[error("batch carries too many operations")]
    TooManyOps,
    /// The batch's seq does not exceed the author's last decided seq.
    #[error("batch seq {seq} replays or reorders (last decided seq of its author: {last})")]
    Replayed {
        /// The batch's seq.
        seq: u64,
        /// The author's last decided seq.
        last: u64,
    },
    /// The bytes do not decode.
    #[error("operation does not decode: {0}")]
    Undecodable(String),
    /// The operation names another author than the batch signer.
    #[error("operation claims author {claimed}, batch signed by {signer}")]
    AuthorMismatch {
        /// Claimed author.
        claimed: PartyId,
        /// Batch signer.
        signer: PartyId,
    },
    /// A listed party is not a member.
    #[error("{0} is not a member of the cluster")]
    NotAMember(PartyId),
    /// A party is listed twice.
    #[error("{0} is listed twice")]
    DuplicateParty(PartyId),
    /// Threshold out of range.
    #[error("threshold {threshold} is not within 1..={parties}")]
    BadThreshold {
        /// Requested threshold.
        threshold: u16,
        /// Number of participants.
        parties: usize,
    },
    /// Scheme label empty, too long or with characters outside `[a-z0-9-]`.
    #[error("scheme label must be 1..=64 characters of [a-z0-9-]")]
    BadScheme,
    /// Deadline zero or beyond the cluster maximum.
    #[error("deadline of {secs} s is not within 1..={max} s")]
    BadDeadline {
        /// Requested.
        secs: u32,
        /// Cluster maximum.
        max: u32,
    },
    /// A party is excluded (proven misbehaviour or rejected attestation).
    #[error("{0} is excluded from new sessions")]
    Excluded(PartyId),
    /// No completed key generation produced this key.
    #[error("no completed key generation produced key {0}")]
    UnknownKey(KeyId),
    /// A signer does not hold a share of the key.
    #[error("{0} does not hold a share of the key")]
    NotAKeyHolder(PartyId),
    /// Fewer signers than the key's threshold.
    #[error("{signers} signers is fewer than the key's threshold {threshold}")]
    TooFewSigners {
        /// Signers listed.
        signers: usize,
        /// The key's threshold.
        threshold: u16,
    },
    /// A taproot merkle root that is not 32 bytes.
    #[error("taproot merkle root of {0} bytes (expected 32)")]
    BadMerkleRoot(usize),
    /// Message digest empty or too long.
    #[error("message digest of {0} bytes is not within 1..=64")]
    BadDigest(usize),
    /// A message digest whose length the key's scheme cannot sign
    /// (`frost-secp256k1-tr` signs BIP-340 over exactly 32 bytes).
    #[error("scheme {scheme} signs a {expected}-byte digest, not {len} bytes")]
    DigestLengthForScheme {
        /// The key's scheme.
        scheme: String,
        /// The digest's length.
        len: usize,
        /// The length the scheme signs.
        expected: usize,
    },
    /// A taproot tweak requested for a key whose scheme has none
    /// (`frost-ed25519`).
    #[error("scheme {0} has no taproot tweak")]
    TaprootForScheme(String),
    /// Free text too long.
    #[error("reason text exceeds {MAX_TEXT_BYTES} bytes")]
    TextTooLong,
    /// Verdict on an operation that was never decided.
    #[error("no decided operation {0}")]
    UnknownOperation(OpId),
    /// Verdict on an operation that takes no verdicts (it needs no approval).
    #[error("operation {0} takes no verdicts")]
    NotVotable(OpId),
    /// Verdict from a party that does not vote on this operation.
    #[error("{0} does not vote on this operation")]
    NotAVoter(PartyId),
    /// A party's second verdict on the same operation.
    #[error("{0} already posted its verdict on this operation")]
    AlreadyVoted(PartyId),
    /// No such session.
    #[error("no session {0}")]
    UnknownSession(SessionId),
    /// The session is not running.
    #[error("session is not active")]
    SessionNotActive,
    /// The author does not take part in the session.
    #[error("{0} is not a participant of the session")]
    NotAParticipant(PartyId),
    /// The message is not for the session's current round.
    #[error("message for round {got}, the session is in round {current}")]
    WrongRound {
        /// The message's round.
        got: u32,
        /// The current round.
        current: u32,
    },
    /// The session would exceed the cluster's round limit.
    #[error("round {0} exceeds the cluster's round limit")]
    RoundLimit(u32),
    /// Addressed to a party that is not another participant.
    #[error("recipient {0} is not another participant")]
    BadRecipient(PartyId),
    /// Point-to-point parts not strictly ascending by recipient (a recipient
    /// listed twice, or out of order).
    #[error("point-to-point parts must be strictly ascending by recipient ({0} is out of order or repeated)")]
    UnorderedParts(PartyId),
    /// A message with neither a broadcast nor a point-to-point part.
    #[error("message has neither a broadcast nor a point-to-point part")]
    EmptyMessage,
    /// The party already posted its message for this round.
    #[error("already posted a message for this round")]
    DuplicateMessage,
    /// Payload, result or evidence too large.
    #[error("{len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: u32,
    },
    /// An empty result or evidence.
    #[error("empty content")]
    Empty,
    /// The party already posted its result.
    #[error("{0} already posted its result")]
    DuplicateResult(PartyId),
    /// Only the initiator and participants may abort.
    #[error("{0} may not abort this session")]
    MayNotAbort(PartyId),
    /// Attestation binds a height not yet decided.
    #[error("attestation binds height {binds}, only {decided} is decided")]
    FutureHeight {
        /// The bound height.
        binds: Height,
        /// The block being applied.
        decided: Height,
    },
    /// The misbehaviour proof does not hold.
    #[error("invalid misbehaviour proof: {0}")]
    InvalidProof(String),
    /// This misbehaviour is already recorded.
    #[error("this misbehaviour is already recorded")]
    AlreadyProven,
    /// A blame names the author itself, or a non-participant.
    #[error("{0} cannot be blamed in this session (not another participant)")]
    BadCulprit(PartyId),
    /// No engine on this cluster judges blame for the session's scheme.
    #[error("no engine judges blame for scheme {0:?}: such claims cannot be decided")]
    UnjudgeableScheme(String),
    /// The blame's proof is malformed or does not apply to this session.
    #[error("blame proof does not apply: {0}")]
    InvalidBlame(String),
    /// The key has an open session that this one cannot run beside: a
    /// refresh while the key signs or refreshes, a signing while it
    /// refreshes (a signing must use one generation of shares throughout).
    #[error("key {key} is busy with open session {session}")]
    KeyBusy {
        /// The key.
        key: KeyId,
        /// The open session in the way.
        session: SessionId,
    },
    /// A refresh result that is not the key's group public key: a refresh
    /// must keep the group key.
    #[error("a refresh result must be the key's group public key")]
    RefreshChangedKey,
}

/// The record of every decided operation (payloads live with their session).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Its id.
    pub id: OpId,
    /// Where consensus placed it.
    pub position: OpPosition,
    /// The batch signer.
    pub author: PartyId,
    /// What it was.
    pub kind: OpKind,
    /// The session it concerns, if any.
    pub session: Option<SessionId>,
    /// Where it stands.
    pub status: OpStatus,
    /// Verdicts posted on it, by voter.
    pub verdicts: BTreeMap<PartyId, Decision>,
    /// Its approval requirement, if it needs verdicts.
    pub approval: Option<Approval>,
}

/// What an operation needs to execute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The policy.
    pub policy: ApprovalPolicy,
    /// Who votes.
    pub voters: BTreeSet<PartyId>,
    /// Approvals needed.
    pub needed: usize,
    /// When it expires (block time, ms): rejected if still pending after.
    pub deadline_ms: u64,
}

/// A session's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Created; waiting for the approvals its policy needs.
    AwaitingApproval,
    /// Running; messages for `round` are accepted.
    Active {
        /// The current round, from 1.
        round: u32,
        /// When it started (block time, ms).
        round_started_ms: u64,
    },
    /// Every participant posted the same result.
    Completed {
        /// The agreed result.
        result: Blob,
        /// When.
        height: Height,
    },
    /// The approvals never came (see the creating operation's reasons).
    NotApproved {
        /// When.
        height: Height,
    },
    /// Started but did not complete.
    Failed(Failure),
}

impl Phase {
    /// A short label (`awaiting_approval`, `active`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::Active { .. } => "active",
            Phase::Completed { .. } => "completed",
            Phase::NotApproved { .. } => "not_approved",
            Phase::Failed(_) => "failed",
        }
    }
    /// True while the session may still complete (awaiting approval or
    /// active).
    pub fn is_open(&self) -> bool {
        matches!(self, Phase::AwaitingApproval | Phase::Active { .. })
    }

    /// The height at which the session finished (completed, not approved
    /// or failed); `None` while it is open.
    pub fn finished_at(&self) -> Option<Height> {
        match self {
            Phase::AwaitingApproval | Phase::Active { .. } => None,
            Phase::Completed { height, .. } | Phase::NotApproved { height } => Some(*height),
            Phase::Failed(f) => Some(f.height),
        }
    }
}

/// Why and how a session failed. Omission (did not act in time) and proven
/// misbehaviour (signed two conflicting statements) are kept apart: the
/// first is a suspicion, the second a proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Why.
    pub reason: FailureReason,
    /// When.
    pub height: Height,
    /// Block time of the failure (ms).
    pub time_ms: u64,
    /// Participants that had not done their part when a deadline passed.
    pub omission_suspects: Vec<PartyId>,
    /// Participants proven to have equivocated.
    pub proven_misbehaviour: Vec<PartyId>,
    /// Each result posted, when results disagree (or at a deadline).
    pub results: Vec<ResultClaim>,
    /// Participants whose result differs from the largest agreeing group
    /// (empty when no group is strictly largest).
    pub dissenters: Vec<PartyId>,
}

/// Why a session failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The overall deadline passed.
    DeadlinePassed,
    /// A round's deadline passed with participants still missing.
    RoundTimeout {
        /// The round.
        round: u32,
    },
    /// The participants posted different results.
    ResultsDisagree,
    /// A party aborted it.
    Aborted {
        /// Who.
        by: PartyId,
        /// Why.
        reason: Reason,
    },
    /// A participant was proven to misbehave.
    Misbehaviour,
    /// A blame was judged: the culprit (or, for a false accusation, the
    /// accuser) is in `proven_misbehaviour`.
    Blame {
        /// Who made the claim.
        accuser: PartyId,
        /// Who was accused.
        accused: PartyId,
        /// The engine's finding, e.g. `invalid_secret_share` or
        /// `false_accusation`.
        finding: String,
        /// The `Blame` operation.
        op: OpId,
    },
}

/// One participant's posted result, by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultClaim {
    /// The participant.
    pub party: PartyId,
    /// SHA-256 of its result.
    pub digest: Sha256Digest,
}

/// A decided session message: one participant's whole round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The operation that carried it.
    pub op: OpId,
    /// When it was decided.
    pub height: Height,
    /// The sender (the batch signer).
    pub from: PartyId,
    /// The round.
    pub round: u32,
    /// The broadcast part.
    pub broadcast: Option<Blob>,
    /// The point-to-point parts, ascending by recipient.
    pub direct: Vec<super::ops::DirectPart>,
}

/// A session, with its parameters recorded once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Its id (derived from the creating operation).
    pub id: SessionId,
    /// Its position among all sessions, in decided order (from 0).
    pub index: u64,
    /// The creating operation.
    pub create_op: OpId,
    /// Who asked for it.
    pub initiator: PartyId,
    /// The parameters, as decided.
    pub spec: SessionSpec,
    /// Who takes part (key-generation participants or signers), ascending.
    pub participants: Vec<PartyId>,
    /// The threshold (the key's, for signing).
    pub threshold: u16,
    /// The scheme label (the key's, for signing).
    pub scheme: String,
    /// When it was created.
    pub created: Height,
    /// Overall deadline (block time, ms).
    pub deadline_ms: u64,
    /// Each round's length (ms).
    pub round_ms: u64,
    /// Where it stands.
    pub phase: Phase,
    /// Every message, in decided order.
    pub messages: Vec<StoredMessage>,
    /// Every result, by participant.
    pub results: BTreeMap<PartyId, Blob>,
}

impl Session {
    /// True for sessions whose rounds are open (signing): messages for any
    /// round up to the limit, no round deadline, and completion once
    /// `threshold` participants posted the same result.
    pub fn has_open_rounds(&self) -> bool {
        self.spec.kind() == SessionKind::Signing
    }

    fn has_message(&self, round: u32, from: PartyId) -> bool {
        self.messages
            .iter()
            .any(|m| m.round == round && m.from == from)
    }

    /// True when `p` has done its part of `round`: posted its result, or its
    /// one message for the round (which carries all of that round's parts,
    /// so a round is never half done).
    pub fn round_done_by(&self, p: PartyId, round: u32) -> bool {
        self.results.contains_key(&p) || self.has_message(round, p)
    }

    fn claims(&self) -> Vec<ResultClaim> {
        self.results
            .iter()
            .map(|(p, r)| ResultClaim {
                party: *p,
                digest: Sha256Digest::of(r.as_slice()),
            })
            .collect()
    }
}

/// What a session request resolves to under the rules
/// ([`SessionMachine::check_session`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// Who takes part, ascending.
    pub participants: Vec<PartyId>,
    /// The threshold.
    pub threshold: u16,
    /// The scheme label.
    pub scheme: String,
    /// Each round's length, seconds.
    pub round_secs: u32,
}

/// A group key from a completed key generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKey {
    /// Its id (the key generation's session id).
    pub id: KeyId,
    /// The scheme.
    pub scheme: String,
    /// Who holds shares, ascending.
    pub participants: Vec<PartyId>,
    /// How many are needed to sign.
    pub threshold: u16,
    /// The group public key, as every participant reported it.
    pub public_key: Blob,
    /// When the key generation completed.
    pub height: Height,
    /// The last completed share refresh, if any: the session whose shares
    /// sign now. Absent: the key generation's shares.
    pub refreshed_by: Option<SessionId>,
}

impl GroupKey {
    /// The session whose shares are current: the last completed refresh,
    /// else the key generation. A holder's share is stored under it.
    pub fn share_session(&self) -> SessionId {
        self.refreshed_by.unwrap_or_else(|| self.id.session())
    }
}

/// What a party was proven to have signed twice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// Two batches with one seq.
    Batches {
        /// The seq.
        seq: u64,
    },
    /// Two different messages for one round of one session.
    Messages {
        /// Session.
        session: SessionId,
        /// Round.
        round: u32,
    },
    /// Two results for one session.
    Results {
        /// Session.
        session: SessionId,
    },
    /// Two verdicts on one operation.
    Verdicts {
        /// The operation judged.
        target: OpId,
    },
}

/// A recorded, proven misbehaviour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenMisbehaviour {
    /// Who misbehaved.
    pub party: PartyId,
    /// What it signed twice.
    pub conflict: Conflict,
    /// Who reported it.
    pub reported_by: PartyId,
    /// The `Evidence` operation.
    pub op: OpId,
    /// When.
    pub height: Height,
}

/// A party's attestation standing, from decided attestation records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationStanding {
    /// The record awaiting verdicts, if any.
    pub pending: Option<OpId>,
    /// The last accepted record and when.
    pub accepted: Option<(OpId, Height)>,
    /// Set when the last decided record was rejected: the party is excluded
    /// from new sessions until a later record is accepted.
    pub excluded: Option<(OpId, Height)>,
}

/// The machine's whole state: what the state root commits to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Last applied height (0 at genesis).
    pub height: Height,
    /// Last applied block time (ms).
    pub time_ms: u64,
    /// Operations decided so far.
    pub op_count: u64,
    /// Each author's last decided batch seq.
    pub last_seq: BTreeMap<PartyId, u64>,
    /// Decided operations still in memory: every pending one, and settled
    /// ones until they are retired ([`RETIRE_AFTER_HEIGHTS`]).
    pub ops: BTreeMap<OpId, OpRecord>,
    /// Operations awaiting verdicts.
    pub pending: BTreeSet<OpId>,
    /// Sessions still in memory: every open one, and finished ones until
    /// they are retired ([`RETIRE_AFTER_HEIGHTS`]).
    pub sessions: BTreeMap<SessionId, Session>,
    /// Sessions created so far (the next session's index).
    pub session_count: u64,
    /// Sessions awaiting approval or active.
    pub open_sessions: BTreeSet<SessionId>,
    /// Group keys from completed key generations.
    pub keys: BTreeMap<KeyId, GroupKey>,
    /// Proven misbehaviour, in decided order.
    pub misbehaviour: Vec<ProvenMisbehaviour>,
    /// Attestation standing by party.
    pub attestation: BTreeMap<PartyId, AttestationStanding>,
}

// ---------------------------------------------------------------------------
// Outcomes and events
// ---------------------------------------------------------------------------

/// What happened to one operation of the block when it was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpOutcome {
    /// Its id.
    pub op: OpId,
    /// Index of its batch in the block.
    pub batch: u32,
    /// Index in the batch.
    pub index: u32,
    /// The batch signer.
    pub author: PartyId,
    /// Its kind.
    pub kind: OpKind,
    /// Executed, pending verdicts, or rejected with reasons.
    pub status: OpStatus,
}

/// Something the host's event stream reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// An operation awaits verdicts; each voter's daemon should judge it.
    AwaitingVerdicts {
        /// The operation.
        op: OpId,
        /// Its kind.
        kind: OpKind,
        /// Who votes.
        voters: BTreeSet<PartyId>,
    },
    /// A pending operation executed.
    Executed {
        /// The operation.
        op: OpId,
    },
    /// A pending operation was rejected.
    Rejected {
        /// The operation.
        op: OpId,
        /// Why.
        reasons: Vec<RejectReason>,
    },
    /// A session started (round 1).
    SessionStarted {
        /// The session.
        session: SessionId,
    },
    /// A message was decided.
    Message {
        /// The session.
        session: SessionId,
        /// Round.
        round: u32,
        /// Sender.
        from: PartyId,
        /// True when the message has a broadcast part.
        broadcast: bool,
        /// Recipients of its point-to-point parts, ascending.
        direct_to: Vec<PartyId>,
        /// The carrying operation.
        op: OpId,
    },
    /// Every participant completed the previous round.
    RoundAdvanced {
        /// The session.
        session: SessionId,
        /// The new round.
        round: u32,
    },
    /// The session completed.
    SessionCompleted {
        /// The session.
        session: SessionId,
        /// The agreed result.
        result: Blob,
    },
    /// The session failed.
    SessionFailed {
        /// The session.
        session: SessionId,
        /// How.
        failure: Failure,
    },
    /// A party was proven to misbehave.
    MisbehaviourProven {
        /// The record.
        record: ProvenMisbehaviour,
    },
}

/// The result of applying one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockOutcome {
    /// The block's height.
    pub height: Height,
    /// The block's time (ms).
    pub time_ms: u64,
    /// Every operation of the block, in order.
    pub ops: Vec<OpOutcome>,
    /// Events, in the order they happened.
    pub events: Vec<Event>,
    /// The state root after the block.
    pub state_root: Sha256Digest,
}

/// A block the machine cannot apply: a fault of the local driver or of
/// consensus, never of an operation (those are rejected individually).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Heights must be applied one after another.
    #[error("block height {got} applied after {last}: apply decided blocks in order, from genesis or a snapshot")]
    HeightOutOfOrder {
        /// The block's height.
        got: Height,
        /// The last applied height.
        last: Height,
    },
    /// Consensus time must strictly increase.
    #[error("block time {got} ms does not exceed the previous block's {last} ms: consensus time must strictly increase")]
    TimeNotIncreasing {
        /// The block's time.
        got: u64,
        /// The previous block's time.
        last: u64,
    },
}

/// A snapshot that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bytes do not decode.
    #[error("state snapshot does not decode: {0}; it is corrupt or from another version")]
    Malformed(String),
}

// ---------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------

/// The deterministic session state machine of one party.
#[derive(Clone, Debug)]
pub struct SessionMachine {
    config: MachineConfig,
    config_digest: Sha256Digest,
    state: State,
    /// Merkle tree over operation records, by ordinal.
    ops_tree: MerkleTree,
    /// Merkle tree over sessions, by index.
    sessions_tree: MerkleTree,
    /// Records changed since the root was last computed.
    dirty_ops: BTreeSet<OpId>,
    /// Sessions changed since the root was last computed.
    dirty_sessions: BTreeSet<SessionId>,
    /// The state root after the last applied block.
    root: Sha256Digest,
    /// Judges `Blame` claims for the schemes it knows (none: every blame is
    /// refused as unjudgeable). Not state: a function of the binary.
    judge: Option<JudgeHandle>,
    /// Settled operations and finished sessions still in memory, by the
    /// height they finished at. An index over `state` (rebuilt from the
    /// records at restore), not state of its own.
    finished: BTreeMap<Height, Finished>,
    /// What blocks retired since the host last took it.
    retired: Retired,
    /// [`RETIRE_AFTER_HEIGHTS`] (tests compare with a machine that keeps
    /// everything).
    retire_after: u64,
    /// Retired requests that needed verdicts, by decided order, for an hour
    /// of block time (the local policy's rate limits count them).
    requests: BTreeMap<u64, RequestMark>,
}

/// What a local rate limit needs of a retired request that needed verdicts
/// (see `sessions::policy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMark {
    /// Its kind.
    pub kind: OpKind,
    /// Its decided order.
    pub ordinal: u64,
    /// Its block time (ms).
    pub time_ms: u64,
    /// Who rejected it.
    pub rejected_by: BTreeSet<PartyId>,
}

/// Block time (ms) a [`RequestMark`] is kept for after the oldest request
/// still pending and the last block: a local rate limit counts over an hour.
pub const REQUEST_MARKS_MS: u64 = 3_600_000;

/// Records that finished at one height.
#[derive(Clone, Debug, Default)]
struct Finished {
    ops: BTreeSet<OpId>,
    sessions: BTreeSet<SessionId>,
}

/// Heights a settled operation or finished session stays in memory after it
/// finished. Applying block *h* first retires every record that finished at
/// or before *h* − this: it leaves the machine's state (its leaf stays in the
/// state root's trees, so the root does not change) and is handed to the
/// host, which keeps it readable from its store. What finished is final except
/// for late verdicts and late results, which are still recorded until the
/// record is retired, and refused as unknown after. Attestation records are
/// never retired (an attestation standing names them).
pub const RETIRE_AFTER_HEIGHTS: u64 = 16;

/// Records that left the machine's memory when a block was applied (see
/// [`RETIRE_AFTER_HEIGHTS`] and [`SessionMachine::take_retired`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Settled operations, as they were last.
    pub ops: Vec<OpRecord>,
    /// Finished sessions, as they were last.
    pub sessions: Vec<Session>,
}

impl Retired {
    /// True when nothing was retired.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.sessions.is_empty()
    }
}

/// What [`SessionMachine::encode_state`] writes: the state and the leaves of
/// both trees (those of retired records are nowhere else).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    state: State,
    op_leaves: Vec<Sha256Digest>,
    session_leaves: Vec<Sha256Digest>,
    requests: Vec<RequestMark>,
}

/// What an MPC engine found when it checked a blame claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlameFinding {
    /// The accused broke the protocol; `kind` says how (snake_case).
    CulpritProven {
        /// E.g. `invalid_proof_of_knowledge`, `invalid_secret_share`.
        kind: String,
    },
    /// The proof shows the accused did nothing wrong: the accuser lied.
    FalseAccusation,
}

/// Judges blame claims from a session's decided messages alone. Implemented
/// by the host with its MPC engine, so the firmware stays scheme-agnostic;
/// it must be a pure function of its arguments (every party runs the same
/// measured code, so every party reaches the same finding).
pub trait BlameJudge: Send + Sync {
    /// True when this judge knows `scheme`.
    fn judges(&self, scheme: &str) -> bool;
    /// Judges `accuser`'s claim against `accused` in `session`. `Err` when
    /// the proof is malformed or does not apply (the claim is then refused,
    /// and convicts no one).
    fn judge(
        &self,
        cluster: &ClusterId,
        session: &Session,
        accuser: PartyId,
        accused: PartyId,
        proof: &[u8],
    ) -> Result<BlameFinding, String>;
}

/// A shared [`BlameJudge`].
#[derive(Clone)]
struct JudgeHandle(Arc<dyn BlameJudge>);

impl std::fmt::Debug for JudgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlameJudge")
    }
}

/// The small part of the state, hashed whole into the root.
#[derive(Serialize)]
struct Header<'a> {
    height: Height,
    time_ms: u64,
    op_count: u64,
    last_seq: &'a BTreeMap<PartyId, u64>,
    pending: &'a BTreeSet<OpId>,
    open_sessions: &'a BTreeSet<SessionId>,
    // `keys` is left out: each group key is a function of its completed
    // key-generation and refresh sessions, which the sessions tree commits
    // to.
    misbehaviour: &'a [ProvenMisbehaviour],
    attestation: &'a BTreeMap<PartyId, AttestationStanding>,
}

/// How an accepted operation took effect.
enum Applied {
    Executed,
    Pending,
}

/// Scratch of one block being applied.
struct BlockCtx {
    height: Height,
    time_ms: u64,
    events: Vec<Event>,
    touched: BTreeSet<SessionId>,
}

fn ms(secs: u32) -> u64 {
    u64::from(secs).saturating_mul(1000)
}

fn check_text(r: &Reason) -> Result<(), RuleViolation> {
    if r.text.len() > MAX_TEXT_BYTES {
        return Err(RuleViolation::TextTooLong);
    }
    Ok(())
}

fn check_scheme(s: &str) -> Result<(), RuleViolation> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SCHEME_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RuleViolation::BadScheme)
    }
}

fn sorted_distinct(parties: &[PartyId]) -> Result<Vec<PartyId>, RuleViolation> {
    let mut seen = BTreeSet::new();
    for p in parties {
        if !seen.insert(*p) {
            return Err(RuleViolation::DuplicateParty(*p));
        }
    }
    Ok(seen.into_iter().collect())
}

impl SessionMachine {
    /// A machine at genesis.
    pub fn new(config: MachineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut m = SessionMachine {
            config_digest: config.digest(),
            config,
            state: State::default(),
            ops_tree: MerkleTree::default(),
            sessions_tree: MerkleTree::default(),
            dirty_ops: BTreeSet::new(),
            dirty_sessions: BTreeSet::new(),
            root: Sha256Digest::default(),
            judge: None,
            finished: BTreeMap::new(),
            retired: Retired::default(),
            retire_after: RETIRE_AFTER_HEIGHTS,
            requests: BTreeMap::new(),
        };
        m.rebuild_root();
        Ok(m)
    }

    /// Installs the judge of blame claims (the host's MPC engine).
    pub fn with_judge(mut self, judge: Arc<dyn BlameJudge>) -> Self {
        self.judge = Some(JudgeHandle(judge));
        self
    }

    /// Installs the judge of blame claims in place (e.g. after a restore).
    pub fn set_judge(&mut self, judge: Arc<dyn BlameJudge>) {
        self.judge = Some(JudgeHandle(judge));
    }

    /// A machine restored from [`SessionMachine::encode_state`] bytes.
    pub fn restore(config: MachineConfig, state: &[u8]) -> Result<Self, RestoreError> {
        let mut m = SessionMachine::new(config)?;
        let snap: Snapshot =
            postcard::from_bytes(state).map_err(|e| RestoreError::Malformed(e.to_string()))?;
        m.state = snap.state;
        m.ops_tree = MerkleTree::from_leaves(snap.op_leaves);
        m.sessions_tree = MerkleTree::from_leaves(snap.session_leaves);
        m.requests = snap.requests.into_iter().map(|r| (r.ordinal, r)).collect();
        m.rebuild_root();
        let ops: Vec<OpId> = m.state.ops.keys().copied().collect();
        let sessions: Vec<SessionId> = m.state.sessions.keys().copied().collect();
        m.index_finished(ops.iter(), sessions.iter());
        Ok(m)
    }

    /// This machine never retires anything: every record stays in memory
    /// (to compare with one that retires).
    #[cfg(test)]
    pub(crate) fn keeping_everything(mut self) -> Self {
        self.retire_after = u64::MAX;
        self
    }

    /// Retired requests that needed verdicts, in decided order, for an hour
    /// of block time ([`REQUEST_MARKS_MS`]) before the oldest pending one.
    pub fn retired_requests(&self) -> impl Iterator<Item = &RequestMark> {
        self.requests.values()
    }

    /// The records retired since the last call. The host stores them after
    /// each block it applies.
    pub fn take_retired(&mut self) -> Retired {
        std::mem::take(&mut self.retired)
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// The whole state (read-only).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The canonical encoding of the state (for snapshots and comparison).
    pub fn encode_state(&self) -> Vec<u8> {
        postcard::to_stdvec(&Snapshot {
            state: self.state.clone(),
            op_leaves: self.ops_tree.leaves().to_vec(),
            session_leaves: self.sessions_tree.leaves().to_vec(),
            requests: self.requests.values().cloned().collect(),
        })
        .unwrap_or_default()
    }

    /// The state root after the last applied block: SHA-256 over a domain
    /// tag, the configuration's digest, the digest of the state's header and
    /// the roots of the Merkle trees over operation records and sessions (see
    /// the `root` module). Equal roots mean equal state under equal rules.
    pub fn state_root(&self) -> Sha256Digest {
        self.root
    }

    /// The state root computed from scratch: the records in memory hashed
    /// anew, over the kept leaves of retired ones, without the incremental
    /// trees' inner nodes: what an auditor recomputes from a snapshot.
    /// Always equal to [`SessionMachine::state_root`].
    pub fn full_state_root(&self) -> Sha256Digest {
        let mut ops = MerkleTree::from_leaves(self.ops_tree.leaves().to_vec());
        ops.update(self.op_leaves(self.state.ops.values()));
        let mut sessions = MerkleTree::from_leaves(self.sessions_tree.leaves().to_vec());
        sessions.update(self.session_leaves(self.state.sessions.values()));
        self.combine(&ops, &sessions)
    }

    fn op_leaves<'a>(
        &self,
        recs: impl Iterator<Item = &'a OpRecord>,
    ) -> Vec<(usize, Sha256Digest)> {
        let mut v: Vec<(usize, Sha256Digest)> = recs
            .map(|r| {
                (
                    usize::try_from(r.position.ordinal).unwrap_or(usize::MAX),
                    leaf(r),
                )
            })
            .collect();
        v.sort_unstable_by_key(|(i, _)| *i);
        v
    }

    fn session_leaves<'a>(
        &self,
        sessions: impl Iterator<Item = &'a Session>,
    ) -> Vec<(usize, Sha256Digest)> {
        let mut v: Vec<(usize, Sha256Digest)> = sessions
            .map(|s| (usize::try_from(s.index).unwrap_or(usize::MAX), leaf(s)))
            .collect();
        v.sort_unstable_by_key(|(i, _)| *i);
        v
    }

    fn combine(&self, ops: &MerkleTree, sessions: &MerkleTree) -> Sha256Digest {
        let st = &self.state;
        let header = Header {
            height: st.height,
            time_ms: st.time_ms,
            op_count: st.op_count,
            last_seq: &st.last_seq,
            pending: &st.pending,
            open_sessions: &st.open_sessions,
            misbehaviour: &st.misbehaviour,
            attestation: &st.attestation,
        };
        Sha256Digest::of_parts(&[
            STATE_ROOT_DOMAIN,
            self.config_digest.as_bytes(),
            leaf(&header).as_bytes(),
            ops.root().as_bytes(),
            sessions.root().as_bytes(),
        ])
    }

    /// Rehashes every record in memory into the trees (the leaves of
    /// retired records stay as they are) and recomputes the root.
    fn rebuild_root(&mut self) {
        self.ops_tree
            .update(self.op_leaves(self.state.ops.values()));
        self.sessions_tree
            .update(self.session_leaves(self.state.sessions.values()));
        self.dirty_ops.clear();
        self.dirty_sessions.clear();
        self.root = self.combine(&self.ops_tree, &self.sessions_tree);
    }

    /// Rehashes what the block changed, indexes what finished, and
    /// recomputes the root.
    fn flush_root(&mut self) {
        let dirty_ops = std::mem::take(&mut self.dirty_ops);
        let dirty_sessions = std::mem::take(&mut self.dirty_sessions);
        self.index_finished(dirty_ops.iter(), dirty_sessions.iter());
        let changes = self.op_leaves(dirty_ops.iter().filter_map(|id| self.state.ops.get(id)));
        self.ops_tree.update(changes);
        let changes = self.session_leaves(
            dirty_sessions
                .iter()
                .filter_map(|id| self.state.sessions.get(id)),
        );
        self.sessions_tree.update(changes);
        self.root = self.combine(&self.ops_tree, &self.sessions_tree);
    }

    /// Indexes, by the height they finished at, the given records that are
    /// settled or finished (attestation records excepted).
    fn index_finished<'a>(
        &mut self,
        ops: impl Iterator<Item = &'a OpId>,
        sessions: impl Iterator<Item = &'a SessionId>,
    ) {
        for id in ops {
            let Some(r) = self.state.ops.get(id) else {
                continue;
            };
            if r.kind == OpKind::AttestationRecord {
                continue;
            }
            if let Some(h) = r.status.finished_at() {
                self.finished.entry(h).or_default().ops.insert(*id);
            }
        }
        for id in sessions {
            if let Some(h) = self
                .state
                .sessions
                .get(id)
                .and_then(|s| s.phase.finished_at())
            {
                self.finished.entry(h).or_default().sessions.insert(*id);
            }
        }
    }

    /// Takes out of memory what finished at or before `height` −
    /// [`RETIRE_AFTER_HEIGHTS`]. The trees keep their leaves.
    fn retire(&mut self, height: Height) -> Retired {
        let mut out = Retired::default();
        let Some(upto) = height.0.checked_sub(self.retire_after) else {
            return out;
        };
        // Marks older than an hour before the oldest pending request and
        // the last block are counted by no rate limit any more (no scan of
        // the pending requests when there is no mark to drop).
        let oldest = if self.requests.is_empty() {
            0
        } else {
            self.state
                .pending
                .iter()
                .filter_map(|id| self.state.ops.get(id))
                .map(|r| r.position.time_ms)
                .fold(self.state.time_ms, u64::min)
        };
        let cutoff = oldest.saturating_sub(REQUEST_MARKS_MS);
        while let Some(e) = self.requests.first_entry() {
            if e.get().time_ms >= cutoff {
                break;
            }
            e.remove();
        }
        while let Some(e) = self.finished.first_entry() {
            if e.key().0 > upto {
                break;
            }
            let f = e.remove();
            for id in f.ops {
                if let Some(r) = self.state.ops.remove(&id) {
                    if r.approval.is_some() {
                        let rejected_by = r
                            .verdicts
                            .iter()
                            .filter(|(_, d)| matches!(d, Decision::Reject(_)))
                            .map(|(p, _)| *p)
                            .collect();
                        self.requests.insert(
                            r.position.ordinal,
                            RequestMark {
                                kind: r.kind,
                                ordinal: r.position.ordinal,
                                time_ms: r.position.time_ms,
                                rejected_by,
                            },
                        );
                    }
                    out.ops.push(r);
                }
            }
            for id in f.sessions {
                if let Some(s) = self.state.sessions.remove(&id) {
                    out.sessions.push(s);
                }
            }
        }
        out
    }

    /// Applies one decided block. `time_ms` is the block's consensus time.
    /// Every operation is executed, left pending or rejected with reasons;
    /// only a block out of order is refused, leaving the state unchanged.
    pub fn apply_block(
        &mut self,
        height: Height,
        time_ms: u64,
        batches: &[SignedBatch],
    ) -> Result<BlockOutcome, ApplyError> {
        let last = self.state.height;
        if height.0 != last.0.saturating_add(1) || last.0 == u64::MAX {
            return Err(ApplyError::HeightOutOfOrder { got: height, last });
        }
        if last.0 > 0 && time_ms <= self.state.time_ms {
            return Err(ApplyError::TimeNotIncreasing {
                got: time_ms,
                last: self.state.time_ms,
            });
        }
        let retired = self.retire(height);
        self.retired.ops.extend(retired.ops);
        self.retired.sessions.extend(retired.sessions);
        self.state.height = height;
        self.state.time_ms = time_ms;
        let mut cx = BlockCtx {
            height,
            time_ms,
            events: Vec::new(),
            touched: BTreeSet::new(),
        };
        self.fire_deadlines(&mut cx);
        let mut outcomes = Vec::new();
        for (bi, batch) in batches.iter().enumerate() {
            self.apply_batch(
                &mut cx,
                u32::try_from(bi).unwrap_or(u32::MAX),
                batch,
                &mut outcomes,
            );
        }
        self.advance_rounds(&mut cx);
        self.flush_root();
        Ok(BlockOutcome {
            height,
            time_ms,
            ops: outcomes,
            events: cx.events,
            state_root: self.state_root(),
        })
    }

    fn apply_batch(
        &mut self,
        cx: &mut BlockCtx,
        bi: u32,
        batch: &SignedBatch,
        outcomes: &mut Vec<OpOutcome>,
    ) {
        let author = batch.body.author;
        let seq = batch.body.seq;
        // A batch that breaks the batch rules (cluster, author, op count,
        // every op decodes and is the signer's) or replays a sequence
        // number leaves no trace: no record, no sequence number, no audit
        // entry. Validators refuse any block carrying one
        // (`consensus::validate::check_block`, which also checked the
        // signature and that sequence numbers have no gaps), so only a
        // quorum that broke the rules could have decided it; recording its
        // operations would let one signed batch of a million empty
        // operations become a million records.
        let ops = match check_batch_envelope(batch, &self.config.cluster, &self.config.members)
            .and_then(|()| decode_batch_ops(batch))
        {
            Ok(ops) => ops,
            Err(_) => return,
        };
        if self
            .state
            .last_seq
            .get(&author)
            .is_some_and(|last| seq <= *last)
        {
            return;
        }
        self.state.last_seq.insert(author, seq);
        for (i, op) in ops.into_iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let id = OpId::derive(&self.config.cluster, cx.height, bi, author, seq, index);
            let position = OpPosition {
                height: cx.height,
                time_ms: cx.time_ms,
                batch: bi,
                index,
                ordinal: self.state.op_count,
            };
            self.state.op_count = self.state.op_count.saturating_add(1);
            let kind = OpKind::of(&op.body);
            let session = match &op.body {
                OpBody::CreateSession(_) => Some(SessionId::from_op(&id)),
                OpBody::SessionMessage(m) => Some(m.session),
                OpBody::SessionResult(r) => Some(r.session),
                OpBody::AbortSession(a) => Some(a.session),
                _ => None,
            };
            // Recorded before it is applied, so that approval logic finds
            // the record.
            self.dirty_ops.insert(id);
            self.state.ops.insert(
                id,
                OpRecord {
                    id,
                    position,
                    author,
                    kind,
                    session,
                    status: OpStatus::Pending,
                    verdicts: BTreeMap::new(),
                    approval: None,
                },
            );
            let result = self.apply_op(cx, id, author, op.body);
            self.dirty_ops.insert(id);
            let status = match self.state.ops.get_mut(&id) {
                Some(rec) => {
                    match result {
                        Ok(Applied::Executed) => {
                            rec.status = OpStatus::Executed { height: cx.height }
                        }
                        // Already settled if its approvals were complete at once.
                        Ok(Applied::Pending) => {}
                        Err(v) => {
                            rec.status = OpStatus::Rejected {
                                height: cx.height,
                                reasons: vec![RejectReason::Rule(v)],
                            }
                        }
                    }
                    rec.status.clone()
                }
                None => OpStatus::Pending,
            };
            outcomes.push(OpOutcome {
                op: id,
                batch: bi,
                index,
                author,
                kind,
                status,
            });
        }
    }

    fn apply_op(
        &mut self,
        cx: &mut BlockCtx,
        id: OpId,
        author: PartyId,
        body: OpBody,
    ) -> Result<Applied, RuleViolation> {
        match body {
            OpBody::CreateSession(c) => self.create_session(cx, id, author, c),
            OpBody::Verdict(v) => self.verdict(cx, author, v),
            OpBody::SessionMessage(m) => self.message(cx, id, author, m),
            OpBody::SessionResult(r) => self.result(cx, author, r),
            OpBody::AbortSession(a) => self.abort(cx, author, a),
            OpBody::AttestationRecord(a) => self.attestation_record(cx, id, author, a),
            OpBody::Evidence(e) => self.evidence(cx, id, author, e),
            OpBody::Blame(b) => self.blame(cx, id, author, b),
        }
    }

    // -- exclusion ----------------------------------------------------------

    /// True when `p` may not join new sessions: proven misbehaviour, or its
    /// last decided attestation record was rejected.
    pub fn is_excluded(&self, p: PartyId) -> bool {
        self.state.misbehaviour.iter().any(|m| m.party == p)
            || self
                .state
                .attestation
                .get(&p)
                .is_some_and(|a| a.excluded.is_some())
    }

    fn check_parties(&self, parties: &[PartyId]) -> Result<(), RuleViolation> {
        for p in parties {
            if !self.config.members.contains_key(p) {
                return Err(RuleViolation::NotAMember(*p));
            }
            if self.is_excluded(*p) {
                return Err(RuleViolation::Excluded(*p));
            }
        }
        Ok(())
    }

    // -- CreateSession ------------------------------------------------------

    /// Checks a session request against the rules and the current state,
    /// without recording anything: what the API answers 422 with before it
    /// accepts a request consensus would refuse. Returns the participants,
    /// threshold and scheme the session would have, and its round length
    /// in seconds.
    pub fn check_session(&self, spec: &SessionSpec) -> Result<SessionParams, RuleViolation> {
        let rules = self.config.rules;
        let check_deadline = |secs: u32| {
            if secs == 0 || secs > rules.max_deadline_secs {
                Err(RuleViolation::BadDeadline {
                    secs,
                    max: rules.max_deadline_secs,
                })
            } else {
                Ok(())
            }
        };
        check_deadline(spec.deadline_secs())?;
        let round_secs = spec.round_secs().unwrap_or(rules.default_round_secs);
        check_deadline(round_secs)?;
        let (participants, threshold, scheme) = match spec {
            SessionSpec::Keygen(k) => {
                let ps = sorted_distinct(&k.participants)?;
                self.check_parties(&ps)?;
                if k.threshold == 0 || usize::from(k.threshold) > ps.len() {
                    return Err(RuleViolation::BadThreshold {
                        threshold: k.threshold,
                        parties: ps.len(),
                    });
                }
                check_scheme(&k.scheme)?;
                (ps, k.threshold, k.scheme.clone())
            }
            SessionSpec::Signing(s) => {
                let key = self.known_key(s.key)?;
                let ps = sorted_distinct(&s.signers)?;
                if let Some(p) = ps.iter().find(|p| !key.participants.contains(p)) {
                    return Err(RuleViolation::NotAKeyHolder(*p));
                }
                self.check_parties(&ps)?;
                if ps.len() < usize::from(key.threshold) {
                    return Err(RuleViolation::TooFewSigners {
                        signers: ps.len(),
                        threshold: key.threshold,
                    });
                }
                if s.message_digest.is_empty() || s.message_digest.len() > MAX_DIGEST_BYTES {
                    return Err(RuleViolation::BadDigest(s.message_digest.len()));
                }
                if let Some(root) = s.taproot.as_ref().and_then(|t| t.merkle_root.as_ref()) {
                    if root.len() != 32 {
                        return Err(RuleViolation::BadMerkleRoot(root.len()));
                    }
                }
                // The built-in schemes' own rules, so such a session is
                // refused when created rather than aborted by every engine.
                if key.scheme == SCHEME_SECP256K1_TR && s.message_digest.len() != 32 {
                    return Err(RuleViolation::DigestLengthForScheme {
                        scheme: key.scheme.clone(),
                        len: s.message_digest.len(),
                        expected: 32,
                    });
                }
                if key.scheme == SCHEME_ED25519 && s.taproot.is_some() {
                    return Err(RuleViolation::TaprootForScheme(key.scheme.clone()));
                }
                self.key_free(s.key, &[SessionKind::Refresh])?;
                (ps, key.threshold, key.scheme.clone())
            }
            SessionSpec::Refresh(r) => {
                let key = self.known_key(r.key)?;
                let ps = key.participants.clone();
                self.check_parties(&ps)?;
                let (threshold, scheme) = (key.threshold, key.scheme.clone());
                self.key_free(r.key, &[SessionKind::Signing, SessionKind::Refresh])?;
                (ps, threshold, scheme)
            }
        };
        Ok(SessionParams {
            participants,
            threshold,
            scheme,
            round_secs,
        })
    }

    fn create_session(
        &mut self,
        cx: &mut BlockCtx,
        id: OpId,
        author: PartyId,
        c: CreateSession,
    ) -> Result<Applied, RuleViolation> {
        let SessionParams {
            participants,
            threshold,
            scheme,
            round_secs,
        } = self.check_session(&c.session)?;
        let rules = self.config.rules;
        let sid = SessionId::from_op(&id);
        let deadline_ms = cx.time_ms.saturating_add(ms(c.session.deadline_secs()));
        let policy = rules.approval.for_session(c.session.kind());
        let voters: BTreeSet<PartyId> = self.config.members.keys().copied().collect();
        self.dirty_sessions.insert(sid);
        self.state.sessions.insert(
            sid,
            Session {
                id: sid,
                index: self.state.session_count,
                create_op: id,
                initiator: author,
                spec: c.session,
                participants,
                threshold,
                scheme,
                created: cx.height,
                deadline_ms,
                round_ms: ms(round_secs),
                phase: Phase::AwaitingApproval,
                messages: Vec::new(),
                results: BTreeMap::new(),
            },
        );
        self.state.session_count = self.state.session_count.saturating_add(1);
        self.state.open_sessions.insert(sid);
        self.await_verdicts(cx, id, policy, voters, deadline_ms);
        Ok(Applied::Pending)
    }

    /// The completed key `id`, or [`RuleViolation::UnknownKey`].
    fn known_key(&self, id: KeyId) -> Result<&GroupKey, RuleViolation> {
        self.state
            .keys
            .get(&id)
            .ok_or(RuleViolation::UnknownKey(id))
    }

    /// Fails with [`RuleViolation::KeyBusy`] when an open session of one
    /// of `kinds` uses `key`.
    fn key_free(&self, key: KeyId, kinds: &[SessionKind]) -> Result<(), RuleViolation> {
        let busy = self.state.open_sessions.iter().find(|sid| {
            self.state.sessions.get(sid).is_some_and(|s| {
                kinds.contains(&s.spec.kind())
                    && match &s.spec {
                        SessionSpec::Signing(sp) => sp.key == key,
                        SessionSpec::Refresh(r) => r.key == key,
                        _ => false,
                    }
            })
        });
        match busy {
            Some(session) => Err(RuleViolation::KeyBusy {
                key,
                session: *session,
            }),
            None => Ok(()),
        }
    }

    fn await_verdicts(
        &mut self,
        cx: &mut BlockCtx,
        id: OpId,
        policy: ApprovalPolicy,
        voters: BTreeSet<PartyId>,
        deadline_ms: u64,
    ) {
        let needed = super::approval::needed(policy, self.config.fault_model, voters.len());
        self.dirty_ops.insert(id);
        if let Some(rec) = self.state.ops.get_mut(&id) {
            cx.events.push(Event::AwaitingVerdicts {
                op: id,
                kind: rec.kind,
                voters: voters.clone(),
            });
            rec.approval = Some(Approval {
                policy,
                voters,
                needed,
                deadline_ms,
            });
            self.state.pending.insert(id);
        }
        self.settle(cx, id);
    }

    // -- Verdict ------------------------------------------------------------

    fn verdict(
        &mut self,
        cx: &mut BlockCtx,
        author: PartyId,
        v: VerdictOp,
    ) -> Result<Applied, RuleViolation> {
        if let Decision::Reject(r) = &v.decision {
            check_text(r)?;
        }
        self.dirty_ops.insert(v.target);
        let rec = self
            .state
            .ops
            .get_mut(&v.target)
            .ok_or(RuleViolation::UnknownOperation(v.target))?;
        let Some(approval) = &rec.approval else {
            return Err(RuleViolation::NotVotable(v.target));
        };
        if !approval.voters.contains(&author) {
            return Err(RuleViolation::NotAVoter(author));
        }
        if rec.verdicts.contains_key(&author) {
            return Err(RuleViolation::AlreadyVoted(author));
        }
        if rec.status != OpStatus::Pending {
            // A late verdict changes nothing, but it is recorded, and a late
            // rejection's reason joins a rejected operation's reasons.
            if let (OpStatus::Rejected { reasons, .. }, Decision::Reject(r)) =
                (&mut rec.status, &v.decision)
            {
                reasons.push(RejectReason::Verdict {
                    party: author,
                    reason: r.clone(),
                });
            }
            rec.verdicts.insert(author, v.decision);
            return Ok(Applied::Executed);
        }
        rec.verdicts.insert(author, v.decision);
        self.settle(cx, v.target);
        Ok(Applied::Executed)
    }

    /// Executes or rejects a pending operation once its tally is decided.
    fn settle(&mut self, cx: &mut BlockCtx, id: OpId) {
        let Some(rec) = self.state.ops.get(&id) else {
            return;
        };
        let Some(a) = &rec.approval else { return };
        if rec.status != OpStatus::Pending {
            return;
        }
        match tally(a.policy, self.config.fault_model, &a.voters, &rec.verdicts) {
            Tally::Open => {}
            Tally::Approved => self.execute_approved(cx, id),
            Tally::Rejected => {
                let reasons = rec
                    .verdicts
                    .iter()
                    .filter_map(|(p, d)| match d {
                        Decision::Reject(r) => Some(RejectReason::Verdict {
                            party: *p,
                            reason: r.clone(),
                        }),
                        Decision::Approve => None,
                    })
                    .collect();
                self.reject_pending(cx, id, reasons);
            }
        }
    }

    fn execute_approved(&mut self, cx: &mut BlockCtx, id: OpId) {
        let Some(rec) = self.state.ops.get(&id) else {
            return;
        };
        match rec.kind {
            OpKind::CreateKeygen | OpKind::CreateSigning | OpKind::CreateRefresh => {
                let sid = SessionId::from_op(&id);
                // Exclusions may have changed since the request was decided.
                let participants = self
                    .state
                    .sessions
                    .get(&sid)
                    .map(|s| s.participants.clone())
                    .unwrap_or_default();
                if let Err(v) = self.check_parties(&participants) {
                    self.reject_pending(cx, id, vec![RejectReason::Rule(v)]);
                    return;
                }
                self.dirty_sessions.insert(sid);
                if let Some(s) = self.state.sessions.get_mut(&sid) {
                    s.phase = Phase::Active {
                        round: 1,
                        round_started_ms: cx.time_ms,
                    };
                    cx.events.push(Event::SessionStarted { session: sid });
                }
            }
            OpKind::AttestationRecord => {
                let st = self.state.attestation.entry(rec.author).or_default();
                st.pending = None;
                st.accepted = Some((id, cx.height));
                st.excluded = None;
            }
            _ => {}
        }
        self.state.pending.remove(&id);
        self.dirty_ops.insert(id);
        if let Some(rec) = self.state.ops.get_mut(&id) {
            rec.status = OpStatus::Executed { height: cx.height };
        }
        cx.events.push(Event::Executed { op: id });
    }

    fn reject_pending(&mut self, cx: &mut BlockCtx, id: OpId, reasons: Vec<RejectReason>) {
        self.dirty_ops.insert(id);
        let Some(rec) = self.state.ops.get_mut(&id) else {
            return;
        };
        rec.status = OpStatus::Rejected {
            height: cx.height,
            reasons: reasons.clone(),
        };
        let (kind, author) = (rec.kind, rec.author);
        self.state.pending.remove(&id);
        match kind {
            OpKind::CreateKeygen | OpKind::CreateSigning | OpKind::CreateRefresh => {
                let sid = SessionId::from_op(&id);
                self.dirty_sessions.insert(sid);
                if let Some(s) = self.state.sessions.get_mut(&sid) {
                    if s.phase == Phase::AwaitingApproval {
                        s.phase = Phase::NotApproved { height: cx.height };
                    }
                }
                self.state.open_sessions.remove(&sid);
            }
            OpKind::AttestationRecord => {
                let st = self.state.attestation.entry(author).or_default();
                st.pending = None;
                // Only a verdict-rejection excludes; an expiry means the
                // peers did not judge in time, which is not the subject's fault.
                if reasons
                    .iter()
                    .any(|r| matches!(r, RejectReason::Verdict { .. }))
                {
                    st.excluded = Some((id, cx.height));
                }
            }
            _ => {}
        }
        cx.events.push(Event::Rejected { op: id, reasons });
    }

    // -- SessionMessage / SessionResult / AbortSession ------------------------

    fn active_session(
        &self,
        sid: SessionId,
        author: PartyId,
    ) -> Result<(&Session, u32), RuleViolation> {
        let s = self
            .state
            .sessions
            .get(&sid)
            .ok_or(RuleViolation::UnknownSession(sid))?;
        let Phase::Active { round, .. } = s.phase else {
            return Err(RuleViolation::SessionNotActive);
        };
        if !s.participants.contains(&author) {
            return Err(RuleViolation::NotAParticipant(author));
        }
        Ok((s, round))
    }

    fn message(
        &mut self,
        cx: &mut BlockCtx,
        id: OpId,
        author: PartyId,
        m: SessionMessage,
    ) -> Result<Applied, RuleViolation> {
        let max_rounds = self.config.rules.max_rounds;
        let max_payload = self.config.rules.max_payload_bytes;
        let (s, current) = self.active_session(m.session, author)?;
        // Key generation runs in lockstep rounds. A signing session's rounds
        // are open (any round up to the limit): a robust engine (ROAST)
        // moves on without the signers that stall, which lockstep rounds
        // would make fail the session.
        let round = if s.has_open_rounds() {
            if m.round == 0 {
                return Err(RuleViolation::WrongRound { got: 0, current: 1 });
            }
            m.round
        } else {
            if m.round != current {
                return Err(RuleViolation::WrongRound {
                    got: m.round,
                    current,
                });
            }
            current
        };
        if round > max_rounds {
            return Err(RuleViolation::RoundLimit(round));
        }
        if m.broadcast.is_none() && m.direct.is_empty() {
            return Err(RuleViolation::EmptyMessage);
        }
        let too_large = |len: usize| RuleViolation::TooLarge {
            len,
            max: max_payload,
        };
        if let Some(b) = &m.broadcast {
            if b.len() > max_payload as usize {
                return Err(too_large(b.len()));
            }
        }
        let mut last: Option<PartyId> = None;
        for part in &m.direct {
            if part.to == author || !s.participants.contains(&part.to) {
                return Err(RuleViolation::BadRecipient(part.to));
            }
            if last.is_some_and(|l| l >= part.to) {
                return Err(RuleViolation::UnorderedParts(part.to));
            }
            last = Some(part.to);
            if part.payload.len() > max_payload as usize {
                return Err(too_large(part.payload.len()));
            }
        }
        if s.has_message(round, author) {
            return Err(RuleViolation::DuplicateMessage);
        }
        self.dirty_sessions.insert(m.session);
        let direct_to = m.direct.iter().map(|d| d.to).collect();
        let broadcast = m.broadcast.is_some();
        if let Some(s) = self.state.sessions.get_mut(&m.session) {
            s.messages.push(StoredMessage {
                op: id,
                height: cx.height,
                from: author,
                round,
                broadcast: m.broadcast,
                direct: m.direct,
            });
        }
        cx.touched.insert(m.session);
        cx.events.push(Event::Message {
            session: m.session,
            round,
            from: author,
            broadcast,
            direct_to,
            op: id,
        });
        Ok(Applied::Executed)
    }

    /// A blame claim: the judge decides from the decided messages alone; the
    /// session fails naming whom the proof convicts (the accused, or the
    /// accuser for a false accusation).
    fn blame(
        &mut self,
        cx: &mut BlockCtx,
        id: OpId,
        author: PartyId,
        b: BlameOp,
    ) -> Result<Applied, RuleViolation> {
        let max_payload = self.config.rules.max_payload_bytes;
        let (s, _) = self.active_session(b.session, author)?;
        if b.culprit == author || !s.participants.contains(&b.culprit) {
            return Err(RuleViolation::BadCulprit(b.culprit));
        }
        if b.proof.len() > max_payload as usize {
            return Err(RuleViolation::TooLarge {
                len: b.proof.len(),
                max: max_payload,
            });
        }
        let judge = match &self.judge {
            Some(j) if j.0.judges(&s.scheme) => j,
            _ => return Err(RuleViolation::UnjudgeableScheme(s.scheme.clone())),
        };
        let finding = judge
            .0
            .judge(
                &self.config.cluster,
                s,
                author,
                b.culprit,
                b.proof.as_slice(),
            )
            .map_err(RuleViolation::InvalidBlame)?;
        let (convicted, finding) = match finding {
            BlameFinding::CulpritProven { kind } => (b.culprit, kind),
            BlameFinding::FalseAccusation => (author, "false_accusation".to_string()),
        };
        self.fail(
            cx,
            b.session,
            FailureReason::Blame {
                accuser: author,
                accused: b.culprit,
                finding,
                op: id,
            },
            Vec::new(),
            vec![convicted],
        );
        Ok(Applied::Executed)
    }

    fn result(
        &mut self,
        cx: &mut BlockCtx,
        author: PartyId,
        r: SessionResult,
    ) -> Result<Applied, RuleViolation> {
        let max = self.config.rules.max_result_bytes;
        let (s, _) = self.active_session(r.session, author)?;
        if r.result.is_empty() {
            return Err(RuleViolation::Empty);
        }
        if r.result.len() > max as usize {
            return Err(RuleViolation::TooLarge {
                len: r.result.len(),
                max,
            });
        }
        if s.results.contains_key(&author) {
            return Err(RuleViolation::DuplicateResult(author));
        }
        if let SessionSpec::Refresh(rf) = &s.spec {
            let same = self
                .state
                .keys
                .get(&rf.key)
                .is_some_and(|k| k.public_key == r.result);
            if !same {
                return Err(RuleViolation::RefreshChangedKey);
            }
        }
        let sid = r.session;
        self.dirty_sessions.insert(sid);
        let Some(s) = self.state.sessions.get_mut(&sid) else {
            return Err(RuleViolation::UnknownSession(sid));
        };
        s.results.insert(author, r.result);
        cx.touched.insert(sid);
        let mine = s.results.get(&author).cloned().unwrap_or_default();
        let agreeing = s.results.values().filter(|v| **v == mine).count();
        if s.has_open_rounds() && agreeing >= usize::from(s.threshold) {
            // `threshold` participants computed the same result: a
            // signature anyone can check, computed from the log alone.
            self.complete(cx, sid, mine);
        } else if s.results.len() == s.participants.len() {
            self.conclude(cx, sid);
        }
        Ok(Applied::Executed)
    }

    /// Every participant posted a result: complete if they agree, else fail
    /// naming who disagrees.
    fn conclude(&mut self, cx: &mut BlockCtx, sid: SessionId) {
        let Some(s) = self.state.sessions.get(&sid) else {
            return;
        };
        let mut distinct: BTreeSet<&Blob> = BTreeSet::new();
        for r in s.results.values() {
            distinct.insert(r);
        }
        let agreed = match (distinct.len(), distinct.first()) {
            (1, Some(r)) => Some((*r).clone()),
            _ => None,
        };
        match agreed {
            Some(result) => self.complete(cx, sid, result),
            None => self.fail(
                cx,
                sid,
                FailureReason::ResultsDisagree,
                Vec::new(),
                Vec::new(),
            ),
        }
    }

    /// The session completes with `result` (a key generation's records its key).
    fn complete(&mut self, cx: &mut BlockCtx, sid: SessionId, result: Blob) {
        let Some(s) = self.state.sessions.get(&sid) else {
            return;
        };
        match &s.spec {
            SessionSpec::Keygen(_) => {
                let key = GroupKey {
                    id: KeyId::of_session(&sid),
                    scheme: s.scheme.clone(),
                    participants: s.participants.clone(),
                    threshold: s.threshold,
                    public_key: result.clone(),
                    height: cx.height,
                    refreshed_by: None,
                };
                self.state.keys.insert(key.id, key);
            }
            SessionSpec::Refresh(r) => {
                if let Some(key) = self.state.keys.get_mut(&r.key) {
                    key.refreshed_by = Some(sid);
                }
            }
            _ => {}
        }
        self.dirty_sessions.insert(sid);
        if let Some(s) = self.state.sessions.get_mut(&sid) {
            s.phase = Phase::Completed {
                result: result.clone(),
                height: cx.height,
            };
        }
        self.state.open_sessions.remove(&sid);
        cx.events.push(Event::SessionCompleted {
            session: sid,
            result,
        });
    }

    fn fail(
        &mut self,
        cx: &mut BlockCtx,
        sid: SessionId,
        reason: FailureReason,
        omission_suspects: Vec<PartyId>,
        proven_misbehaviour: Vec<PartyId>,
    ) {
        self.dirty_sessions.insert(sid);
        let Some(s) = self.state.sessions.get_mut(&sid) else {
            return;
        };
        let results = s.claims();
        // Dissenters: everyone outside the strictly largest agreeing group.
        let mut groups: BTreeMap<&Blob, Vec<PartyId>> = BTreeMap::new();
        for (p, r) in &s.results {
            groups.entry(r).or_default().push(*p);
        }
        let mut sizes: Vec<usize> = groups.values().map(Vec::len).collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let dissenters = match (sizes.first(), sizes.get(1)) {
            (Some(a), Some(b)) if a > b => groups
                .values()
                .filter(|g| g.len() < *a)
                .flatten()
                .copied()
                .collect(),
            _ => Vec::new(),
        };
        let failure = Failure {
            reason,
            height: cx.height,
            time_ms: cx.time_ms,
            omission_suspects,
            proven_misbehaviour,
            results,
            dissenters,
        };
        s.phase = Phase::Failed(failure.clone());
        self.state.open_sessions.remove(&sid);
        cx.events.push(Event::SessionFailed {
            session: sid,
            failure,
        });
    }

    fn abort(
        &mut self,
        cx: &mut BlockCtx,
        author: PartyId,
        a: AbortSession,
    ) -> Result<Applied, RuleViolation> {
        check_text(&a.reason)?;
        let s = self
            .state
            .sessions
            .get(&a.session)
            .ok_or(RuleViolation::UnknownSession(a.session))?;
        if !s.phase.is_open() {
            return Err(RuleViolation::SessionNotActive);
        }
        if s.initiator != author && !s.participants.contains(&author) {
            return Err(RuleViolation::MayNotAbort(author));
        }
        if s.phase == Phase::AwaitingApproval {
            let create = s.create_op;
            self.reject_pending(
                cx,
                create,
                vec![RejectReason::Aborted {
                    by: author,
                    reason: a.reason.clone(),
                }],
            );
        }
        self.fail(
            cx,
            a.session,
            FailureReason::Aborted {
                by: author,
                reason: a.reason,
            },
            Vec::new(),
            Vec::new(),
        );
        Ok(Applied::Executed)
    }

    // -- AttestationRecord ----------------------------------------------------

    fn attestation_record(
        &mut self,
        cx: &mut BlockCtx,
        id: OpId,
        author: PartyId,
        a: AttestationRecord,
    ) -> Result<Applied, RuleViolation> {
        let max = self.config.rules.max_evidence_bytes;
        if a.binds_height > cx.height {
            return Err(RuleViolation::FutureHeight {
                binds: a.binds_height,
                decided: cx.height,
            });
        }
        if a.evidence.is_empty() {
            return Err(RuleViolation::Empty);
        }
        if a.evidence.len() > max as usize {
            return Err(RuleViolation::TooLarge {
                len: a.evidence.len(),
                max,
            });
        }
        // A newer record supersedes one still awaiting verdicts.
        let previous = self.state.attestation.get(&author).and_then(|s| s.pending);
        if let Some(prev) = previous {
            self.reject_pending(cx, prev, vec![RejectReason::Superseded { by: id }]);
        }
        self.state.attestation.entry(author).or_default().pending = Some(id);
        let voters: BTreeSet<PartyId> = self
            .config
            .members
            .keys()
            .copied()
            .filter(|p| *p != author)
            .collect();
        let deadline = cx
            .time_ms
            .saturating_add(ms(self.config.rules.attestation_verdict_secs));
        self.await_verdicts(
            cx,
            id,
            self.config.rules.approval.attestation,
            voters,
            deadline,
        );
        Ok(Applied::Pending)
    }

    // -- Evidence ---------------------------------------------------------------

    fn verify_signed(&self, b: &SignedBatch) -> Result<(), RuleViolation> {
        check_batch_envelope(b, &self.config.cluster, &self.config.members)
            .map_err(|e| RuleViolation::InvalidProof(e.to_string()))?;
        let key = self
            .config
            .members
            .get(&b.body.author)
            .ok_or(RuleViolation::UnknownAuthor(b.body.author))?;
        b.verify(key)
            .map_err(|_| RuleViolation::InvalidProof("a batch signature does not verify".into()))
    }

    fn proven_conflict(
        &self,
        proof: &MisbehaviourProof,
    ) -> Result<(PartyId, Conflict), RuleViolation> {
        let bad = |s: &str| RuleViolation::InvalidProof(s.into());
        match proof {
            MisbehaviourProof::ConflictingBatches { first, second } => {
                if first.body.author != second.body.author || first.body.seq != second.body.seq {
                    return Err(bad("the batches differ in author or seq"));
                }
                if first.body == second.body {
                    return Err(bad("the batches have the same content"));
                }
                self.verify_signed(first)?;
                self.verify_signed(second)?;
                Ok((
                    first.body.author,
                    Conflict::Batches {
                        seq: first.body.seq,
                    },
                ))
            }
            MisbehaviourProof::ConflictingOps {
                first,
                first_op,
                second,
                second_op,
            } => {
                if first.body.author != second.body.author {
                    return Err(bad("the batches have different authors"));
                }
                let party = first.body.author;
                let op_at = |b: &SignedBatch, i: u32| -> Result<Operation, RuleViolation> {
                    let bytes = b
                        .body
                        .ops
                        .get(i as usize)
                        .ok_or_else(|| bad("operation index out of range"))?;
                    let op = Operation::decode(bytes)
                        .map_err(|e| RuleViolation::InvalidProof(e.to_string()))?;
                    if op.author != party {
                        return Err(bad("operation author differs from batch signer"));
                    }
                    Ok(op)
                };
                let a = op_at(first, *first_op)?;
                let b = op_at(second, *second_op)?;
                // One definition of a conflict serves the daemon's slot
                // guard and this proof (`sessions::slot`).
                let conflict = match super::slot::conflict(&a.body, &b.body) {
                    Some(Slot::Message { session, round }) => Conflict::Messages { session, round },
                    Some(Slot::Result { session }) => Conflict::Results { session },
                    Some(Slot::Verdict { target }) => Conflict::Verdicts { target },
                    None => return Err(bad("the two operations do not conflict")),
                };
                self.verify_signed(first)?;
                self.verify_signed(second)?;
                Ok((party, conflict))
            }
        }
    }

    fn evidence(
        &mut self,
        cx: &mut BlockCtx,
        id: OpId,
        author: PartyId,
        e: Evidence,
    ) -> Result<Applied, RuleViolation> {
        let (party, conflict) = self.proven_conflict(&e.proof)?;
        if self
            .state
            .misbehaviour
            .iter()
            .any(|m| m.party == party && m.conflict == conflict)
        {
            return Err(RuleViolation::AlreadyProven);
        }
        let record = ProvenMisbehaviour {
            party,
            conflict,
            reported_by: author,
            op: id,
            height: cx.height,
        };
        self.state.misbehaviour.push(record.clone());
        cx.events.push(Event::MisbehaviourProven { record });
        // Every unfinished session the party takes part in fails, naming it
        // as proven (not merely suspected).
        let hit: Vec<SessionId> = self
            .state
            .open_sessions
            .iter()
            .filter(|sid| {
                self.state
                    .sessions
                    .get(sid)
                    .is_some_and(|s| s.participants.contains(&party))
            })
            .copied()
            .collect();
        for sid in hit {
            let awaiting = self
                .state
                .sessions
                .get(&sid)
                .filter(|s| s.phase == Phase::AwaitingApproval)
                .map(|s| s.create_op);
            if let Some(create) = awaiting {
                self.reject_pending(
                    cx,
                    create,
                    vec![RejectReason::Rule(RuleViolation::Excluded(party))],
                );
            }
            self.fail(
                cx,
                sid,
                FailureReason::Misbehaviour,
                Vec::new(),
                vec![party],
            );
        }
        Ok(Applied::Executed)
    }

    // -- Time -------------------------------------------------------------------

    fn fire_deadlines(&mut self, cx: &mut BlockCtx) {
        let now = cx.time_ms;
        let expired: Vec<(OpId, u64)> = self
            .state
            .pending
            .iter()
            .filter_map(|id| {
                let a = self.state.ops.get(id)?.approval.as_ref()?;
                (now > a.deadline_ms).then_some((*id, a.deadline_ms))
            })
            .collect();
        for (id, deadline_ms) in expired {
            self.reject_pending(cx, id, vec![RejectReason::Deadline { deadline_ms }]);
        }
        let open: Vec<SessionId> = self.state.open_sessions.iter().copied().collect();
        for sid in open {
            let Some(s) = self.state.sessions.get(&sid) else {
                continue;
            };
            let Phase::Active {
                round,
                round_started_ms,
            } = s.phase
            else {
                continue;
            };
            if now > s.deadline_ms {
                let missing: Vec<PartyId> = s
                    .participants
                    .iter()
                    .filter(|p| !s.results.contains_key(p))
                    .copied()
                    .collect();
                self.fail(cx, sid, FailureReason::DeadlinePassed, missing, Vec::new());
            } else if !s.has_open_rounds() && now > round_started_ms.saturating_add(s.round_ms) {
                let missing: Vec<PartyId> = s
                    .participants
                    .iter()
                    .filter(|p| !s.round_done_by(**p, round))
                    .copied()
                    .collect();
                self.fail(
                    cx,
                    sid,
                    FailureReason::RoundTimeout { round },
                    missing,
                    Vec::new(),
                );
            }
        }
    }

    fn advance_rounds(&mut self, cx: &mut BlockCtx) {
        let touched = std::mem::take(&mut cx.touched);
        for sid in touched {
            let Some(s) = self.state.sessions.get_mut(&sid) else {
                continue;
            };
            let Phase::Active { round, .. } = s.phase else {
                continue;
            };
            if s.has_open_rounds() {
                continue;
            }
            if s.participants.iter().all(|p| s.round_done_by(*p, round)) {
                self.dirty_sessions.insert(sid);
                let next = round.saturating_add(1);
                s.phase = Phase::Active {
                    round: next,
                    round_started_ms: cx.time_ms,
                };
                cx.events.push(Event::RoundAdvanced {
                    session: sid,
                    round: next,
                });
            }
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
pub(crate) mod tests;
