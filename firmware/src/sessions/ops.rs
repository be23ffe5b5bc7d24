//! Operation types and their wire encoding.
//!
//! An encoded operation is one version byte ([`OP_FORMAT_VERSION`]) followed
//! by the postcard encoding of an [`Operation`]. Decoding is strict: an
//! unknown version, trailing bytes, or a non-canonical encoding (one that
//! does not re-encode to the same bytes) is refused, so that one operation
//! has exactly one encoding and "the same operation" means "the same bytes".
//!
//! The same types serialize to JSON with the shapes the host's HTTP API
//! accepts (`{"type": "create_session", "session": {"kind": "keygen", ...}}`):
//! every serde impl asks `is_human_readable()` and picks the internally
//! tagged JSON form or the compact postcard form. Byte strings are hex in
//! JSON and raw in postcard.

use crate::batch::{BatchBody, SignedBatch};
use crate::crypto::PublicKey;
use crate::types::{ClusterId, Height, PartyId, Sha256Digest};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The first byte of every encoded operation. Bumped on any incompatible
/// change to [`Operation`]'s encoding.
pub const OP_FORMAT_VERSION: u8 = 2;

/// Hard cap on one encoded operation, before any cluster rule applies; keeps
/// a hostile batch from making the decoder allocate without bound.
pub const MAX_OP_BYTES: usize = 1 << 20;

/// Hard cap on the number of operations in one batch.
pub const MAX_OPS_PER_BATCH: usize = 4096;

/// Longest free-text reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// Longest scheme label, in bytes.
pub const MAX_SCHEME_BYTES: usize = 64;

// ---------------------------------------------------------------------------
// Byte strings and digest newtypes
// ---------------------------------------------------------------------------

/// An opaque byte string: raw bytes in postcard, lowercase hex in JSON.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(pub Vec<u8>);

impl Blob {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(v)
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.0.get(..16).unwrap_or(&self.0);
        write!(f, "Blob({}", hex::encode(shown))?;
        if self.0.len() > 16 {
            write!(f, "..; {} bytes", self.0.len())?;
        }
        write!(f, ")")
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(&self.0))
        } else {
            serde_bytes::Bytes::new(&self.0).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s)
                .map(Blob)
                .map_err(|e| serde::de::Error::custom(format!("expected hex bytes: {e}")))
        } else {
            serde_bytes::ByteBuf::deserialize(d).map(|b| Blob(b.into_vec()))
        }
    }
}

fn digest_from_hex<E: serde::de::Error>(s: &str) -> Result<Sha256Digest, E> {
    let v = hex::decode(s).map_err(|e| E::custom(format!("expected 64 hex digits: {e}")))?;
    let arr: [u8; 32] = v
        .try_into()
        .map_err(|_| E::custom("expected 64 hex digits (32 bytes)"))?;
    Ok(Sha256Digest(arr))
}

macro_rules! digest_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub Sha256Digest);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let s = self.0.to_string();
                write!(f, "{}({})", stringify!($name), s.get(..16).unwrap_or(&s))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.0.to_string())
                } else {
                    self.0.serialize(s)
                }
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    digest_from_hex(&s).map($name)
                } else {
                    Sha256Digest::deserialize(d).map($name)
                }
            }
        }
    };
}

digest_newtype!(
    /// Identity of a decided operation: derived from where consensus placed
    /// it (cluster, height, batch author, batch seq, index in the batch), so
    /// no party chooses it.
    OpId
);
digest_newtype!(
    /// Identity of a session: derived from the decided `CreateSession`
    /// operation that opened it, never chosen by one party.
    SessionId
);
digest_newtype!(
    /// Identity of a group key: the id of the key-generation session that
    /// produced it.
    KeyId
);

/// Domain tag of [`OpId`] derivation.
pub const OP_ID_DOMAIN: &[u8] = b"quorate/op-id/v1";
/// Domain tag of [`SessionId`] derivation.
pub const SESSION_ID_DOMAIN: &[u8] = b"quorate/session-id/v1";

impl OpId {
    /// The id of the operation at `index` of the batch `(author, seq)`,
    /// the `batch`-th of the block decided at `height` in `cluster`. The
    /// position (height, batch, index) alone is unique; author and seq bind
    /// the id to the batch that carried it.
    pub fn derive(
        cluster: &ClusterId,
        height: Height,
        batch: u32,
        author: PartyId,
        seq: u64,
        index: u32,
    ) -> Self {
        OpId(Sha256Digest::of_parts(&[
            OP_ID_DOMAIN,
            cluster.0.as_bytes(),
            &height.0.to_be_bytes(),
            &batch.to_be_bytes(),
            &author.0.to_be_bytes(),
            &seq.to_be_bytes(),
            &index.to_be_bytes(),
        ]))
    }
}

impl SessionId {
    /// The id of the session opened by the decided operation `op`.
    pub fn from_op(op: &OpId) -> Self {
        SessionId(Sha256Digest::of_parts(&[
            SESSION_ID_DOMAIN,
            op.0.as_bytes(),
        ]))
    }
}

impl KeyId {
    /// The key produced by the key-generation session `session`.
    pub fn of_session(session: &SessionId) -> Self {
        KeyId(session.0)
    }
    /// The key-generation session that produced this key.
    pub fn session(&self) -> SessionId {
        SessionId(self.0)
    }
}

// ---------------------------------------------------------------------------
// Dual serde: externally tagged in postcard, internally tagged in JSON
// ---------------------------------------------------------------------------

/// Implements Serialize/Deserialize for an enum of newtype variants that
/// carries `#[serde(remote = "Self")]` (so its derived, externally tagged
/// form is available as inherent functions for postcard) and uses an
/// internally tagged form (`$tag`) for human-readable formats.
macro_rules! json_tagged {
    ($ty:ident, $tag:tt, { $($variant:ident($inner:ty)),* $(,)? }) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    #[derive(Serialize)]
                    #[serde(tag = $tag, rename_all = "snake_case")]
                    enum Json<'a> { $($variant(&'a $inner)),* }
                    let j = match self { $($ty::$variant(x) => Json::$variant(x)),* };
                    j.serialize(s)
                } else {
                    $ty::serialize(self, s)
                }
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    #[derive(Deserialize)]
                    #[serde(tag = $tag, rename_all = "snake_case")]
                    enum Json { $($variant($inner)),* }
                    Ok(match Json::deserialize(d)? { $(Json::$variant(x) => $ty::$variant(x)),* })
                } else {
                    $ty::deserialize(d)
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// One operation as decided by consensus: who posts it and what it says.
/// The author must be the author of the signed batch that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The party posting the operation (its batch's signer).
    pub author: PartyId,
    /// What the operation does.
    pub body: OpBody,
}

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OpBody {
    /// Open a key-generation or signing session (pending approval).
    CreateSession(CreateSession),
    /// Approve or reject a pending operation.
    Verdict(VerdictOp),
    /// An MPC round message, opaque to the coordinator.
    SessionMessage(SessionMessage),
    /// A participant's final result (group public key, signature).
    SessionResult(SessionResult),
    /// Abort a session, with a reason.
    AbortSession(AbortSession),
    /// The author's attestation evidence, for the peers to judge.
    AttestationRecord(AttestationRecord),
    /// A self-verifying proof that a party misbehaved.
    Evidence(Evidence),
    /// A participant's claim, with proof, that another participant broke
    /// the session's MPC protocol (judged by the scheme's engine).
    Blame(BlameOp),
}

json_tagged!(OpBody, "type", {
    CreateSession(CreateSession),
    Verdict(VerdictOp),
    SessionMessage(SessionMessage),
    SessionResult(SessionResult),
    AbortSession(AbortSession),
    AttestationRecord(AttestationRecord),
    Evidence(Evidence),
    Blame(BlameOp),
});

impl OpBody {
    /// A short stable label of the operation's kind (for logs and metrics).
    pub fn label(&self) -> &'static str {
        match self {
            OpBody::CreateSession(c) => match c.session {
                SessionSpec::Keygen(_) => "create_session/keygen",
                SessionSpec::Signing(_) => "create_session/signing",
                SessionSpec::Refresh(_) => "create_session/refresh",
            },
            OpBody::Verdict(_) => "verdict",
            OpBody::SessionMessage(_) => "session_message",
            OpBody::SessionResult(_) => "session_result",
            OpBody::AbortSession(_) => "abort_session",
            OpBody::AttestationRecord(_) => "attestation_record",
            OpBody::Evidence(_) => "evidence",
            OpBody::Blame(_) => "blame",
        }
    }
}

/// `CreateSession`: the session's parameters, recorded once in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSession {
    /// Key generation or signing, with its parameters.
    pub session: SessionSpec,
}

/// The parameters of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionSpec {
    /// Distributed key generation.
    Keygen(KeygenSpec),
    /// Threshold signing with a key from a completed key generation.
    Signing(SigningSpec),
    /// Share refresh (proactive security): every holder of a key gets a new
    /// share of the same group key; the old shares stop being used.
    Refresh(RefreshSpec),
}

json_tagged!(SessionSpec, "kind", {
    Keygen(KeygenSpec),
    Signing(SigningSpec),
    Refresh(RefreshSpec),
});

impl SessionSpec {
    /// Overall deadline, seconds after the creating block's time.
    pub fn deadline_secs(&self) -> u32 {
        match self {
            SessionSpec::Keygen(k) => k.deadline_secs,
            SessionSpec::Signing(s) => s.deadline_secs,
            SessionSpec::Refresh(r) => r.deadline_secs,
        }
    }
    /// Per-round deadline, if the creator set one.
    pub fn round_secs(&self) -> Option<u32> {
        match self {
            SessionSpec::Keygen(k) => k.round_secs,
            SessionSpec::Signing(s) => s.round_secs,
            SessionSpec::Refresh(r) => r.round_secs,
        }
    }
    /// The session's kind.
    pub fn kind(&self) -> SessionKind {
        match self {
            SessionSpec::Keygen(_) => SessionKind::Keygen,
            SessionSpec::Signing(_) => SessionKind::Signing,
            SessionSpec::Refresh(_) => SessionKind::Refresh,
        }
    }
}

/// The kind of a session, without its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// Key generation.
    Keygen,
    /// Signing.
    Signing,
    /// Share refresh.
    Refresh,
}

/// Key-generation parameters: `threshold` of `participants` can sign later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeygenSpec {
    /// The parties that hold shares of the key (distinct cluster members).
    pub participants: Vec<PartyId>,
    /// How many participants are needed to sign (1 ..= participants).
    pub threshold: u16,
    /// The MPC scheme label, e.g. `frost-secp256k1` (`[a-z0-9-]`, 1..=64 bytes).
    pub scheme: String,
    /// Overall deadline in seconds from the creating block's time.
    pub deadline_secs: u32,
    /// Per-round deadline in seconds; the cluster default when absent.
    #[serde(default)]
    pub round_secs: Option<u32>,
}

/// Signing parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSpec {
    /// The group key to sign with (a completed key generation).
    pub key: KeyId,
    /// The digest of the message to sign (1..=64 bytes; the scheme decides).
    pub message_digest: Blob,
    /// The candidate signers: at least `threshold` distinct holders of the
    /// key. More than the threshold lets a robust engine (ROAST) finish
    /// without the ones that stall or cheat.
    pub signers: Vec<PartyId>,
    /// secp256k1-tr only: sign under the BIP-341 key-path tweak of the group
    /// key with this script tree (absent: the key as generated).
    #[serde(default)]
    pub taproot: Option<TaprootSpec>,
    /// Overall deadline in seconds from the creating block's time.
    pub deadline_secs: u32,
    /// Per-round deadline in seconds; the cluster default when absent.
    #[serde(default)]
    pub round_secs: Option<u32>,
}

/// Share-refresh parameters. The participants and threshold are the key's:
/// every holder takes part, and the result is the unchanged group key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshSpec {
    /// The group key whose shares are refreshed.
    pub key: KeyId,
    /// Overall deadline in seconds from the creating block's time.
    pub deadline_secs: u32,
    /// Per-round deadline in seconds; the cluster default when absent.
    #[serde(default)]
    pub round_secs: Option<u32>,
}

/// A BIP-341 key-path tweak request for a signing session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaprootSpec {
    /// The script tree's 32-byte merkle root; absent for a key with no
    /// script path.
    #[serde(default)]
    pub merkle_root: Option<Blob>,
}

/// `Verdict`: the author's approval or rejection of a pending operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictOp {
    /// The pending operation judged.
    pub target: OpId,
    /// Approve, or reject with a reason.
    pub decision: Decision,
}

/// A party's decision on a pending operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The party approves.
    Approve,
    /// The party rejects, saying why.
    Reject(Reason),
}

impl Decision {
    /// True for [`Decision::Approve`].
    pub fn is_approve(&self) -> bool {
        matches!(self, Decision::Approve)
    }
}

/// A reason code with free text, as given by a party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Machine-readable code.
    pub code: ReasonCode,
    /// Human-readable explanation (at most [`MAX_TEXT_BYTES`] bytes).
    pub text: String,
}

/// Why a party rejects an operation or aborts a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReasonCode {
    /// The local policy does not allow this key.
    KeyNotAllowed,
    /// The local policy does not allow this scheme.
    SchemeNotAllowed,
    /// The local policy does not accept sessions from this initiator.
    InitiatorNotAllowed,
    /// The local policy's per-hour limit for this kind is reached.
    RateLimited,
    /// The party's operator rejected it.
    OperatorRejected,
    /// The attestation evidence did not verify.
    AttestationInvalid,
    /// The party's MPC engine failed or refused.
    EngineFailure,
    /// Anything else (see the text).
    Other,
}

/// One point-to-point part of a [`SessionMessage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectPart {
    /// The recipient: a participant other than the author.
    pub to: PartyId,
    /// The part's bytes. The log shows them to every party and auditor, so
    /// an engine must encrypt them end to end to `to` (the built-in engine
    /// seals them with HPKE to a key the recipient published in round 1).
    pub payload: Blob,
}

/// `SessionMessage`: everything one participant posts for one MPC round, in
/// one operation, so that a round enters the log atomically: a broadcast part
/// that every participant sees identically, point-to-point parts, or both.
/// A participant has done its part of a round once its message for that round
/// is decided; a second message for the same round is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMessage {
    /// The session.
    pub session: SessionId,
    /// The session's current round, from 1.
    pub round: u32,
    /// The part for every participant (consistent broadcast), at most the
    /// cluster's payload limit.
    #[serde(default)]
    pub broadcast: Option<Blob>,
    /// Point-to-point parts, strictly ascending by recipient, each at most
    /// the cluster's payload limit.
    #[serde(default)]
    pub direct: Vec<DirectPart>,
}

impl SessionMessage {
    /// The point-to-point part addressed to `p`, if any.
    pub fn part_for(&self, p: PartyId) -> Option<&Blob> {
        self.direct.iter().find(|d| d.to == p).map(|d| &d.payload)
    }
    /// Total payload bytes, broadcast and direct parts together.
    pub fn payload_len(&self) -> usize {
        self.broadcast.as_ref().map_or(0, Blob::len)
            + self.direct.iter().map(|d| d.payload.len()).sum::<usize>()
    }
}

/// `SessionResult`: a participant's final output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResult {
    /// The session.
    pub session: SessionId,
    /// The result: the group public key (key generation) or the signature.
    pub result: Blob,
}

/// `Blame`: the author claims that `culprit` broke the MPC protocol of an
/// active session, and gives a proof that every party's engine checks
/// against the session's decided messages alone (for FROST key generation:
/// nothing for a bad proof of knowledge, which round 1 shows publicly; the
/// author's revealed decryption key for the culprit's share otherwise). A
/// proof that does not hold convicts the author instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlameOp {
    /// The session.
    pub session: SessionId,
    /// The accused participant.
    pub culprit: PartyId,
    /// The scheme-specific proof, at most the cluster's payload limit.
    pub proof: Blob,
}

/// `AbortSession`: stop a session, naming who and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortSession {
    /// The session.
    pub session: SessionId,
    /// Why.
    pub reason: Reason,
}

/// `AttestationRecord`: the author's own attestation evidence. Its format is
/// the attestation crate's; the firmware records it and the peers' verdicts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationRecord {
    /// The committed height whose block hash the quote's qualifying data binds.
    pub binds_height: Height,
    /// Opaque evidence (quote, event log, certification), verified by hosts.
    pub evidence: Blob,
}

/// `Evidence`: proof that a party signed two conflicting statements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The proof.
    pub proof: MisbehaviourProof,
}

/// A self-verifying proof of misbehaviour, checkable by every party's
/// machine from the cluster's public keys alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MisbehaviourProof {
    /// Two different batches signed by one party with the same sequence
    /// number (batch equivocation).
    ConflictingBatches {
        /// One batch.
        first: Box<SignedBatch>,
        /// Another batch, same author and seq, different body.
        second: Box<SignedBatch>,
    },
    /// Two conflicting operations signed by one party: session messages for
    /// the same (session, round, recipient) with different payloads, results
    /// for the same session that differ, or verdicts on the same operation
    /// that differ.
    ConflictingOps {
        /// The batch carrying the first operation.
        first: Box<SignedBatch>,
        /// Index of the first operation in `first`.
        first_op: u32,
        /// The batch carrying the second operation.
        second: Box<SignedBatch>,
        /// Index of the second operation in `second`.
        second_op: u32,
    },
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Why bytes are not a valid encoded operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Empty input.
    #[error("empty operation: expected a version byte and a body")]
    Empty,
    /// Larger than [`MAX_OP_BYTES`].
    #[error("operation of {0} bytes exceeds the {MAX_OP_BYTES}-byte limit")]
    TooLarge(usize),
    /// Unknown format version.
    #[error("operation format version {0} is not supported (expected {OP_FORMAT_VERSION}); upgrade the peer or this party")]
    UnsupportedVersion(u8),
    /// The body does not parse.
    #[error("operation body does not parse: {0}")]
    Malformed(String),
    /// Bytes after the body.
    #[error("{0} trailing bytes after the operation body")]
    TrailingBytes(usize),
    /// The body parses but is not in canonical form.
    #[error("operation is not canonically encoded")]
    NonCanonical,
}

impl Operation {
    /// The operation's canonical encoding: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![OP_FORMAT_VERSION];
        // Serialising plain data into a growable buffer cannot fail.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(_) => vec![OP_FORMAT_VERSION],
        }
    }

    /// Decodes and checks canonical form. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let (version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if *version != OP_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(*version));
        }
        let (op, rest): (Operation, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        if op.encode() != bytes {
            return Err(DecodeError::NonCanonical);
        }
        Ok(op)
    }
}

/// Why a batch was refused as a whole or in part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Signed for another cluster (cross-cluster replay).
    #[error("batch is for cluster {got}, this cluster is {expected}")]
    WrongCluster {
        /// This cluster.
        expected: Sha256Digest,
        /// The batch's cluster.
        got: Sha256Digest,
    },
    /// The author is not a member.
    #[error("batch author {0} is not a member of the cluster")]
    UnknownAuthor(PartyId),
    /// The signature does not verify under the author's key.
    #[error("batch signature does not verify under {0}'s key: forged or altered")]
    BadSignature(PartyId),
    /// Too many operations.
    #[error("batch carries {0} operations, more than the {MAX_OPS_PER_BATCH} allowed")]
    TooManyOps(usize),
    /// An operation does not decode.
    #[error("operation {index} does not decode: {error}")]
    Undecodable {
        /// Index in the batch.
        index: usize,
        /// Why.
        error: DecodeError,
    },
    /// An operation claims an author other than the batch's signer.
    #[error("operation {index} claims author {claimed} but the batch is signed by {signer}")]
    AuthorMismatch {
        /// Index in the batch.
        index: usize,
        /// The author the operation names.
        claimed: PartyId,
        /// The batch signer.
        signer: PartyId,
    },
}

/// The body of a batch carrying `ops`, all authored by `author`, ready for
/// the author's TPM to sign ([`BatchBody::signing_bytes`]).
pub fn batch_body(cluster: ClusterId, author: PartyId, seq: u64, ops: &[Operation]) -> BatchBody {
    BatchBody {
        cluster,
        author,
        seq,
        ops: ops.iter().map(Operation::encode).collect(),
    }
}

/// Checks a batch: right cluster, known author, the batch signature (once,
/// over all operations), that every operation decodes, and that every
/// operation's author is the batch's signer. Returns the decoded operations.
pub fn verify_batch(
    batch: &SignedBatch,
    cluster: &ClusterId,
    keys: &BTreeMap<PartyId, PublicKey>,
) -> Result<Vec<Operation>, BatchError> {
    check_batch(
        batch,
        cluster,
        |p| keys.get(&p).copied(),
        |key, b| b.verify(key).is_ok(),
    )
}

/// The batch rules, the one home for every caller (the API precheck aside,
/// consensus in `consensus::validate`, and [`verify_batch`]): right cluster,
/// known author (`key_of`), at most [`MAX_OPS_PER_BATCH`] operations, the
/// signature (`verify`, which the caller may cache), every operation
/// decodes, and every operation's author is the batch's signer.
pub fn check_batch(
    batch: &SignedBatch,
    cluster: &ClusterId,
    key_of: impl Fn(PartyId) -> Option<PublicKey>,
    verify: impl FnOnce(&PublicKey, &SignedBatch) -> bool,
) -> Result<Vec<Operation>, BatchError> {
    let signer = batch.body.author;
    let key = key_of(signer);
    check_envelope(batch, cluster, key.is_some())?;
    let key = key.ok_or(BatchError::UnknownAuthor(signer))?;
    if !verify(&key, batch) {
        return Err(BatchError::BadSignature(signer));
    }
    decode_batch_ops(batch)
}

/// Envelope checks that need no signature verification.
pub(crate) fn check_batch_envelope(
    batch: &SignedBatch,
    cluster: &ClusterId,
    keys: &BTreeMap<PartyId, PublicKey>,
) -> Result<(), BatchError> {
    check_envelope(batch, cluster, keys.contains_key(&batch.body.author))
}

fn check_envelope(
    batch: &SignedBatch,
    cluster: &ClusterId,
    author_is_member: bool,
) -> Result<(), BatchError> {
    if batch.body.cluster != *cluster {
        return Err(BatchError::WrongCluster {
            expected: cluster.0,
            got: batch.body.cluster.0,
        });
    }
    if !author_is_member {
        return Err(BatchError::UnknownAuthor(batch.body.author));
    }
    if batch.body.ops.len() > MAX_OPS_PER_BATCH {
        return Err(BatchError::TooManyOps(batch.body.ops.len()));
    }
    Ok(())
}

/// Decodes every operation of a batch and checks its author.
pub(crate) fn decode_batch_ops(batch: &SignedBatch) -> Result<Vec<Operation>, BatchError> {
    let signer = batch.body.author;
    batch
        .body
        .ops
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            let op = Operation::decode(bytes)
                .map_err(|error| BatchError::Undecodable { index, error })?;
            if op.author != signer {
                return Err(BatchError::AuthorMismatch {
                    index,
                    claimed: op.author,
                    signer,
                });
            }
            Ok(op)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::testkit::Cluster;

    fn keygen_op() -> Operation {
        Operation {
            author: PartyId(1),
            body: OpBody::CreateSession(CreateSession {
                session: SessionSpec::Keygen(KeygenSpec {
                    participants: vec![PartyId(1), PartyId(2), PartyId(3)],
                    threshold: 2,
                    scheme: "frost-secp256k1".into(),
                    deadline_secs: 120,
                    round_secs: None,
                }),
            }),
        }
    }

    #[test]
    fn known_answer_encoding_of_a_keygen_request() {
        let bytes = keygen_op().encode();
        // version 2 | author 1 | OpBody::CreateSession (0) | SessionSpec::Keygen (0)
        // | 3 participants 1,2,3 | threshold 2 | "frost-secp256k1" (15) | 120 | None
        let mut expected = vec![2, 1, 0, 0, 3, 1, 2, 3, 2, 15];
        expected.extend_from_slice(b"frost-secp256k1");
        expected.extend_from_slice(&[120, 0]);
        assert_eq!(hex::encode(&bytes), hex::encode(&expected));
        assert_eq!(Operation::decode(&bytes).unwrap(), keygen_op());
    }

    #[test]
    fn known_answer_encoding_of_a_verdict() {
        let op = Operation {
            author: PartyId(300),
            body: OpBody::Verdict(VerdictOp {
                target: OpId(Sha256Digest([0xab; 32])),
                decision: Decision::Reject(Reason {
                    code: ReasonCode::RateLimited,
                    text: "hi".into(),
                }),
            }),
        };
        let bytes = op.encode();
        // version | author 300 = varint ac 02 | Verdict (1) | 32 bytes | Reject (1)
        // | RateLimited (3) | "hi"
        let mut expected = vec![2, 0xac, 0x02, 1];
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[1, 3, 2, b'h', b'i']);
        assert_eq!(hex::encode(&bytes), hex::encode(&expected));
        assert_eq!(Operation::decode(&bytes).unwrap(), op);
    }

    #[test]
    fn decode_refuses_bad_input() {
        let good = keygen_op().encode();
        assert_eq!(Operation::decode(&[]), Err(DecodeError::Empty));
        let mut v1 = good.clone();
        v1[0] = 1;
        assert_eq!(
            Operation::decode(&v1),
            Err(DecodeError::UnsupportedVersion(1))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Operation::decode(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            Operation::decode(&good[..good.len() - 3]),
            Err(DecodeError::Malformed(_))
        ));
        // Overlong varint for author 1 (0x81 0x00) is not canonical.
        let mut overlong = vec![2, 0x81, 0x00];
        overlong.extend_from_slice(&good[2..]);
        assert!(matches!(
            Operation::decode(&overlong),
            Err(DecodeError::NonCanonical) | Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            Operation::decode(&vec![2u8; MAX_OP_BYTES + 1]),
            Err(DecodeError::TooLarge(MAX_OP_BYTES + 1))
        );
    }

    #[test]
    fn json_shape_matches_the_host_api() {
        let json = r#"{"type": "create_session", "session": {"kind": "keygen",
            "participants": [1, 2, 3], "threshold": 2, "scheme": "frost-secp256k1",
            "deadline_secs": 120}}"#;
        let body: OpBody = serde_json::from_str(json).unwrap();
        assert_eq!(body, keygen_op().body);
        let back = serde_json::to_value(&body).unwrap();
        assert_eq!(back["type"], "create_session");
        assert_eq!(back["session"]["kind"], "keygen");
        assert_eq!(back["session"]["threshold"], 2);

        let msg = r#"{"type": "session_message", "session": "0000000000000000000000000000000000000000000000000000000000000001",
            "round": 1, "broadcast": "0102", "direct": [{"to": 2, "payload": "deadbeef"}]}"#;
        let body: OpBody = serde_json::from_str(msg).unwrap();
        let OpBody::SessionMessage(m) = &body else {
            panic!("wrong variant")
        };
        assert_eq!(m.broadcast, Some(Blob(vec![1, 2])));
        assert_eq!(
            m.part_for(PartyId(2)),
            Some(&Blob(vec![0xde, 0xad, 0xbe, 0xef]))
        );
        assert_eq!(m.part_for(PartyId(3)), None);
        assert_eq!(m.payload_len(), 6);
        let roundtrip = Operation {
            author: PartyId(1),
            body: body.clone(),
        };
        assert_eq!(Operation::decode(&roundtrip.encode()).unwrap(), roundtrip);
        let blame = r#"{"type": "blame", "session": "0000000000000000000000000000000000000000000000000000000000000001",
            "culprit": 3, "proof": "00ff"}"#;
        let body: OpBody = serde_json::from_str(blame).unwrap();
        assert_eq!(body.label(), "blame");
        let verdict = r#"{"type": "verdict", "target": "abababababababababababababababababababababababababababababababab",
            "decision": {"reject": {"code": "operator_rejected", "text": "no"}}}"#;
        let body: OpBody = serde_json::from_str(verdict).unwrap();
        assert!(matches!(
            body,
            OpBody::Verdict(VerdictOp {
                decision: Decision::Reject(_),
                ..
            })
        ));
        assert!(serde_json::from_str::<OpBody>(r#"{"type": "nope"}"#).is_err());
        // JSON round trip of every variant survives postcard too.
        let op = Operation {
            author: PartyId(2),
            body,
        };
        assert_eq!(Operation::decode(&op.encode()).unwrap(), op);
    }

    #[test]
    fn verify_batch_checks_signature_once_and_every_author() {
        let c = Cluster::new(3);
        let ok = c.batch(1, 1, vec![keygen_op().encode()]);
        assert_eq!(
            verify_batch(&ok, &c.id, &c.keys).unwrap(),
            vec![keygen_op()]
        );

        let mut forged = ok.clone();
        forged.body.seq = 2;
        assert_eq!(
            verify_batch(&forged, &c.id, &c.keys),
            Err(BatchError::BadSignature(PartyId(1)))
        );

        let mut claims_p2 = keygen_op();
        claims_p2.author = PartyId(2);
        let b = c.batch(1, 2, vec![keygen_op().encode(), claims_p2.encode()]);
        assert_eq!(
            verify_batch(&b, &c.id, &c.keys),
            Err(BatchError::AuthorMismatch {
                index: 1,
                claimed: PartyId(2),
                signer: PartyId(1)
            })
        );

        let b = c.batch(1, 3, vec![vec![9, 9]]);
        assert!(matches!(
            verify_batch(&b, &c.id, &c.keys),
            Err(BatchError::Undecodable { index: 0, .. })
        ));

        let other = ClusterId(Sha256Digest::of(b"other"));
        assert!(matches!(
            verify_batch(&ok, &other, &c.keys),
            Err(BatchError::WrongCluster { .. })
        ));
        let mut stranger = c.batch(1, 4, vec![]);
        stranger.body.author = PartyId(9);
        assert_eq!(
            verify_batch(&stranger, &c.id, &c.keys),
            Err(BatchError::UnknownAuthor(PartyId(9)))
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = Operation::decode(&bytes);
                let mut v = vec![OP_FORMAT_VERSION];
                v.extend_from_slice(&bytes);
                if let Ok(op) = Operation::decode(&v) {
                    // Whatever decodes is canonical: it re-encodes to the same bytes.
                    prop_assert_eq!(op.encode(), v);
                }
            }

            #[test]
            fn mutated_encodings_decode_canonically_or_not_at_all(
                at in 0usize..64, xor in 1u8..=255, cut in proptest::option::of(0usize..64)
            ) {
                let mut v = keygen_op().encode();
                let n = v.len();
                v[at % n] ^= xor;
                if let Some(c) = cut {
                    v.truncate(c % n);
                }
                if let Ok(op) = Operation::decode(&v) {
                    prop_assert_eq!(op.encode(), v);
                }
            }
        }
    }

    #[test]
    fn ids_are_derived_and_distinct() {
        let c = ClusterId(Sha256Digest::of(b"c"));
        let a = OpId::derive(&c, Height(1), 0, PartyId(1), 1, 0);
        assert_ne!(a, OpId::derive(&c, Height(1), 0, PartyId(1), 1, 1));
        assert_ne!(a, OpId::derive(&c, Height(2), 0, PartyId(1), 1, 0));
        assert_ne!(a, OpId::derive(&c, Height(1), 1, PartyId(1), 1, 0));
        assert_ne!(a, OpId::derive(&c, Height(1), 0, PartyId(2), 1, 0));
        assert_ne!(a, OpId::derive(&c, Height(1), 0, PartyId(1), 2, 0));
        assert_ne!(SessionId::from_op(&a).0, a.0);
        assert_eq!(
            KeyId::of_session(&SessionId::from_op(&a)).session(),
            SessionId::from_op(&a)
        );
    }
}
