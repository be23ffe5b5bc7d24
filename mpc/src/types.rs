//! The small shared types: party ids, schemes, session parameters and the
//! shape of one round message.

use std::collections::BTreeMap;

use crate::error::{ContextProblem, EngineError};

/// Most participants a session may have. frost itself allows up to
/// `u16::MAX`; the engine caps it so that message sizes stay bounded
/// (a round-2 message carries one ciphertext per other participant).
pub const MAX_PARTICIPANTS: usize = 64;

/// Largest single part (a broadcast, or one direct payload) the engine
/// decodes. A round-1 broadcast at t = n = 64 is about 4.3 KiB.
pub const MAX_PART_BYTES: usize = 16 * 1024;

/// A cluster party id as the coordinator knows it: non-zero. It maps to the
/// frost participant identifier `Identifier::try_from(u16)`, so the same id
/// names the same party in the log, in frost and in blame.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PartyId(pub u16);

impl PartyId {
    /// The frost identifier of this party; fails only for id 0.
    pub(crate) fn identifier<C: frost_core::Ciphersuite>(
        self,
    ) -> Result<frost_core::Identifier<C>, EngineError> {
        frost_core::Identifier::<C>::try_from(self.0)
            .map_err(|_| EngineError::InvalidContext(ContextProblem::ParticipantsNotAscending))
    }
}

/// The FROST ciphersuites the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    /// FROST(Ed25519, SHA-512), RFC 9591; signatures verify as plain Ed25519.
    Ed25519,
    /// FROST(secp256k1, SHA-256) with BIP-340/341 Taproot compatibility:
    /// signatures verify as BIP-340 Schnorr under an x-only key.
    Secp256k1Tr,
}

impl Scheme {
    /// Every scheme, in label order.
    pub const ALL: [Scheme; 2] = [Scheme::Ed25519, Scheme::Secp256k1Tr];

    /// The scheme's label in `create_session` and in the HPKE binding:
    /// `"frost-ed25519"` or `"frost-secp256k1-tr"`.
    pub fn label(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "frost-ed25519",
            Scheme::Secp256k1Tr => "frost-secp256k1-tr",
        }
    }

    /// Parses a label written by [`Scheme::label`]; anything else is `None`.
    pub fn from_label(label: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.label() == label)
    }

    /// One-byte tag used inside the engine's own wire structs.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Scheme::Ed25519 => 1,
            Scheme::Secp256k1Tr => 2,
        }
    }

    /// Checks a wire tag against the expected scheme.
    pub(crate) fn expect_tag(self, tag: u8, what: &'static str) -> Result<(), EngineError> {
        if tag == self.tag() {
            Ok(())
        } else {
            Err(EngineError::WrongCiphersuite {
                what,
                expected: self.label(),
            })
        }
    }
}

/// A key generation (or refresh) session's decided parameters, identical at
/// every party because they come from the decided `create_session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCtx {
    /// The cluster's id; bound into every HPKE context so that ciphertexts
    /// of one cluster never open in another.
    pub cluster_id: [u8; 32],
    /// The session id (`record.session` of the create operation); bound into
    /// every HPKE context and so into every blame proof.
    pub session_id: [u8; 32],
    /// The ciphersuite.
    pub scheme: Scheme,
    /// Every participant, strictly ascending, non-zero, at most
    /// [`MAX_PARTICIPANTS`]; this is frost's `max_signers`.
    pub participants: Vec<PartyId>,
    /// frost's `min_signers`: 2 <= threshold <= participants.len().
    pub threshold: u16,
}

impl SessionCtx {
    /// Checks the parameters (one home for the rule: the engine, blame
    /// checking and the host's precheck all call this).
    pub fn validate(&self) -> Result<(), EngineError> {
        validate_parties(&self.participants, self.threshold)
    }

    /// `max_signers` as frost wants it.
    pub(crate) fn n(&self) -> u16 {
        // validate() bounds the length by MAX_PARTICIPANTS (64).
        u16::try_from(self.participants.len()).unwrap_or(u16::MAX)
    }

    /// Whether `p` is a participant.
    pub(crate) fn has(&self, p: PartyId) -> bool {
        self.participants.binary_search(&p).is_ok()
    }

    /// The participants other than `me`, ascending.
    pub(crate) fn others(&self, me: PartyId) -> impl Iterator<Item = PartyId> + '_ {
        self.participants.iter().copied().filter(move |p| *p != me)
    }
}

/// The shared participant-list rule of key generation and signing.
pub(crate) fn validate_parties(parties: &[PartyId], threshold: u16) -> Result<(), EngineError> {
    if parties.len() > MAX_PARTICIPANTS {
        return Err(EngineError::InvalidContext(
            ContextProblem::TooManyParticipants,
        ));
    }
    let ascending = parties.windows(2).all(|w| matches!(w, [a, b] if a < b));
    if !ascending || parties.iter().any(|p| p.0 == 0) {
        return Err(EngineError::InvalidContext(
            ContextProblem::ParticipantsNotAscending,
        ));
    }
    if threshold < 2 || usize::from(threshold) > parties.len() {
        return Err(EngineError::InvalidContext(
            ContextProblem::ThresholdOutOfRange,
        ));
    }
    Ok(())
}

/// Everything one party posts for one round. It enters the log atomically
/// as ONE operation (the firmware's `SessionMessage` carries exactly these
/// two fields), so a round is complete for a party exactly when this one
/// message is decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundMessage {
    /// The part every party reads (round-1 packages, commitments, shares).
    pub broadcast: Option<Vec<u8>>,
    /// Point-to-point parts by recipient. In this engine they are always
    /// HPKE ciphertexts, so the log and audit exports never hold plaintext.
    pub direct: BTreeMap<PartyId, Vec<u8>>,
}

impl RoundMessage {
    /// A message with only a broadcast part.
    pub fn broadcast(bytes: Vec<u8>) -> RoundMessage {
        RoundMessage {
            broadcast: Some(bytes),
            direct: BTreeMap::new(),
        }
    }

    /// Refuses any part larger than [`MAX_PART_BYTES`].
    pub(crate) fn check_sizes(&self) -> Result<(), EngineError> {
        let parts = self.broadcast.iter().chain(self.direct.values());
        for part in parts {
            if part.len() > MAX_PART_BYTES {
                return Err(EngineError::Oversized {
                    len: part.len(),
                    limit: MAX_PART_BYTES,
                });
            }
        }
        Ok(())
    }
}

/// One decided message of a session, in log order, with its authenticated
/// author: the party whose TPM-signed batch carried it, never a field inside
/// the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The protocol round the author posted for (DKG: 1 and 2).
    pub round: u32,
    /// The authenticated author.
    pub from: PartyId,
    /// The message.
    pub message: RoundMessage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u16]) -> Vec<PartyId> {
        v.iter().map(|&i| PartyId(i)).collect()
    }

    #[test]
    fn labels_round_trip_and_unknown_is_none() {
        for s in Scheme::ALL {
            assert_eq!(Scheme::from_label(s.label()), Some(s));
        }
        assert_eq!(Scheme::from_label("frost-p256"), None);
        assert_eq!(Scheme::from_label(""), None);
    }

    #[test]
    fn party_lists_are_checked() {
        assert!(validate_parties(&ids(&[1, 2, 3]), 2).is_ok());
        assert!(validate_parties(&ids(&[1, 2, 3]), 3).is_ok());
        let bad = |v: &[u16], t| validate_parties(&ids(v), t).err();
        assert_eq!(
            bad(&[2, 1, 3], 2),
            Some(EngineError::InvalidContext(
                ContextProblem::ParticipantsNotAscending
            ))
        );
        assert_eq!(
            bad(&[1, 1, 3], 2),
            Some(EngineError::InvalidContext(
                ContextProblem::ParticipantsNotAscending
            ))
        );
        assert_eq!(
            bad(&[0, 1, 3], 2),
            Some(EngineError::InvalidContext(
                ContextProblem::ParticipantsNotAscending
            ))
        );
        assert_eq!(
            bad(&[1, 2, 3], 1),
            Some(EngineError::InvalidContext(
                ContextProblem::ThresholdOutOfRange
            ))
        );
        assert_eq!(
            bad(&[1, 2, 3], 4),
            Some(EngineError::InvalidContext(
                ContextProblem::ThresholdOutOfRange
            ))
        );
        let many: Vec<u16> = (1..=65).collect();
        assert_eq!(
            bad(&many, 2),
            Some(EngineError::InvalidContext(
                ContextProblem::TooManyParticipants
            ))
        );
    }

    #[test]
    fn oversized_parts_are_refused() {
        let mut m = RoundMessage::broadcast(vec![0; MAX_PART_BYTES]);
        assert!(m.check_sizes().is_ok());
        m.direct.insert(PartyId(2), vec![0; MAX_PART_BYTES + 1]);
        assert_eq!(
            m.check_sizes(),
            Err(EngineError::Oversized {
                len: MAX_PART_BYTES + 1,
                limit: MAX_PART_BYTES
            })
        );
    }
}
