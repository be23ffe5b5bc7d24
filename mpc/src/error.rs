//! The crate's typed errors.
//!
//! [`EngineError`] separates what the decided log (that is, some party) did
//! wrong from what the local caller did wrong: the `Peer*`-style variants name
//! a party, the `Invalid*` context variants are the host's fault.

use crate::PartyId;

/// Why a [`crate::SessionCtx`] or [`crate::SigningCtx`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextProblem {
    /// The participant (or candidate) list is not strictly ascending, has a
    /// duplicate, or holds party id 0.
    ParticipantsNotAscending,
    /// `threshold` is below 2 or above the number of participants (frost's
    /// limits: 2 <= t <= n).
    ThresholdOutOfRange,
    /// More than [`crate::MAX_PARTICIPANTS`] participants.
    TooManyParticipants,
    /// The local party is not in the participant (candidate) list.
    NotAParticipant,
    /// secp256k1-tr signs exactly a 32-byte digest.
    MessageLength,
    /// A Taproot tweak was given for an Ed25519 key.
    TweakWithoutTaproot,
    /// The public key package does not decode for the session's scheme.
    PublicKeyPackage,
    /// The key share is for another scheme or does not belong to the package.
    KeyShareMismatch,
}

/// Everything the engine refuses, typed. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The session parameters handed in by the host are unusable.
    #[error("session parameters refused: {0:?}; fix the create_session request")]
    InvalidContext(ContextProblem),
    /// A decided message names an author outside the session's participants.
    #[error("party {0:?} is not a participant of this session; the log should not have decided its message")]
    NotAParticipant(PartyId),
    /// A message for a round this protocol does not have.
    #[error("party {from:?} posted for round {round}, which this protocol does not have")]
    UnknownRound {
        /// Author of the message.
        from: PartyId,
        /// The round it claimed.
        round: u32,
    },
    /// A second message by the same author for the same round (a replay).
    #[error("party {from:?} already posted for round {round}; the repeat is ignored")]
    DuplicateMessage {
        /// Author of the repeat.
        from: PartyId,
        /// Round posted twice.
        round: u32,
    },
    /// A signature share from a candidate that the attempt's signing
    /// package does not include (a share for another package).
    #[error("party {from:?} posted a share for attempt {attempt}, whose signing package does not include it")]
    NotSelected {
        /// Author of the share.
        from: PartyId,
        /// The attempt it claimed.
        attempt: u32,
    },
    /// A message part larger than the engine accepts.
    #[error("a message part of {len} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// Size received.
        len: usize,
        /// [`crate::MAX_PART_BYTES`].
        limit: usize,
    },
    /// Bytes that are not the expected encoding (wrong version, truncated,
    /// trailing bytes, invalid point or scalar).
    #[error("undecodable {what}: the sender's software is incompatible or faulty")]
    Malformed {
        /// Which structure failed to decode.
        what: &'static str,
    },
    /// A structure tagged for another scheme than the session's.
    #[error("{what} is for another ciphersuite than the session's {expected}")]
    WrongCiphersuite {
        /// Which structure.
        what: &'static str,
        /// The session's scheme label.
        expected: &'static str,
    },
    /// The message posted under my own id is not the one I produced: the host
    /// fed the wrong party's log or an old session.
    #[error("the log carries a round-{round} message under my id that I did not produce; check the host's session routing")]
    OwnMessageMismatch {
        /// The round concerned.
        round: u32,
    },
    /// A message part meant for me does not decrypt or authenticate.
    #[error("HPKE sealing failed locally (recipient key rejected)")]
    Seal,
    /// A frost operation failed in a way the engine's own checks should
    /// have ruled out (a bug or an unsupported parameter).
    #[error("frost refused the operation: {0}")]
    Frost(String),
    /// A nonce that the persisted state marks as used was asked for again.
    #[error("signing attempt {attempt}: this nonce was already used (or its state was restored from a backup); refusing to sign")]
    NonceReused {
        /// The ROAST attempt whose nonce is gone.
        attempt: u32,
    },
    /// The signer has no nonce for this attempt (it never committed, or the
    /// process restarted since, which erases nonces by design).
    #[error("signing attempt {attempt}: no live nonce for it (nonces do not survive a restart)")]
    NoNonce {
        /// The ROAST attempt.
        attempt: u32,
    },
    /// A key share whose parts do not fit together.
    #[error("key share refused: {0}")]
    KeyShare(&'static str),
}

impl<C: frost_core::Ciphersuite> From<frost_core::Error<C>> for EngineError {
    fn from(e: frost_core::Error<C>) -> Self {
        EngineError::Frost(e.to_string())
    }
}

/// Why [`crate::check_blame`] could not reach a verdict: the claim cannot
/// be evaluated against this log at all (as opposed to a verdict of
/// [`crate::BlameVerdict::FalseAccusation`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlameError {
    /// The session parameters are unusable.
    #[error("session parameters refused: {0:?}")]
    InvalidContext(ContextProblem),
    /// Accuser or culprit is not a participant, or they are the same party.
    #[error("accuser {accuser:?} / culprit {culprit:?} are not two distinct participants")]
    Parties {
        /// The accuser.
        accuser: PartyId,
        /// The accused.
        culprit: PartyId,
    },
    /// The proof bytes do not decode.
    #[error("the blame proof does not decode")]
    MalformedProof,
    /// The log lacks what the claim is about (for example no round-2
    /// message yet, or the accuser's own round-1 broadcast is unusable).
    #[error("the log does not hold the messages this claim refers to: {0}")]
    LogIncomplete(&'static str),
}
