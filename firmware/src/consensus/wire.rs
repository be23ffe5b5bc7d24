//! Peer messages and write-ahead-log records: their encodings (postcard) and
//! their conversion to and from malachite's types. Decoding untrusted bytes
//! returns a typed error, never panics.

use crate::batch::SignedBatch;
use crate::consensus::certificate::CommitCertificate;
use crate::consensus::context::{
    round_from_i64, round_i64, Block, BlockHash, Proposal, QuorateContext, SignedVoteWire,
};
use crate::crypto::Signature;
use crate::types::{Height, PartyId, Sha256Digest};
use malachitebft_core_consensus as mcc;
use malachitebft_core_types as mc;
use malachitebft_core_types::{NilOrVal, Round, Timeout, TimeoutKind, VoteType};
use serde::{Deserialize, Serialize};

/// A signed proposal on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProposalWire {
    /// The proposal.
    pub proposal: Proposal,
    /// The proposer's signature over its signed bytes.
    pub signature: Signature,
}

/// A polka (quorum of prevotes for one block) on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolkaWire {
    /// Height.
    pub height: Height,
    /// Round.
    pub round: i64,
    /// The block.
    pub value: BlockHash,
    /// (party, prevote signature).
    pub signatures: Vec<(PartyId, Signature)>,
}

/// One vote inside a round certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundSigWire {
    /// Precommit (true) or prevote.
    pub precommit: bool,
    /// The value voted for (None = nil).
    pub value: Option<BlockHash>,
    /// The voter.
    pub party: PartyId,
    /// Its signature.
    pub signature: Signature,
}

/// A round certificate (skip or precommit-any) on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundCertWire {
    /// Height.
    pub height: Height,
    /// Round.
    pub round: i64,
    /// Skip certificate (true) or precommit certificate.
    pub skip: bool,
    /// The votes.
    pub signatures: Vec<RoundSigWire>,
}

/// Every message one party's driver sends another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A signed block proposal.
    Proposal(SignedProposalWire),
    /// A signed prevote or precommit (also its rebroadcast).
    Vote(SignedVoteWire),
    /// A polka certificate (liveness).
    Polka(PolkaWire),
    /// A round certificate (liveness).
    RoundCert(RoundCertWire),
    /// A party's signed operation batch, gossiped to every proposer.
    Batch(SignedBatch),
    /// "My last decided height is `height`" (catch-up).
    Tip {
        /// Last decided height (0 = none).
        height: Height,
    },
    /// "Send me the block decided at `height`" (catch-up).
    BlockRequest {
        /// Requested height.
        height: Height,
    },
    /// A decided block with its commit certificate (catch-up).
    BlockResponse {
        /// The block.
        block: Block,
        /// Its certificate.
        certificate: CommitCertificate,
    },
}

/// Why peer bytes were refused. The host drops the frame (and may count it
/// against the peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than the configured limit.
    #[error("peer message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a valid encoding.
    #[error("peer message does not decode: {0}")]
    Malformed(String),
}

impl PeerMessage {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes, refusing anything over `limit` bytes.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

/// One write-ahead-log record. The WAL holds the records of the height in
/// progress; it is reset when a block is decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalRecord {
    /// A vote the core accepted (ours or a peer's).
    Vote(SignedVoteWire),
    /// A proposal the core accepted.
    Proposal(SignedProposalWire),
    /// A value we proposed.
    Propose {
        /// Height.
        height: Height,
        /// Round.
        round: i64,
        /// The block.
        block: Block,
    },
    /// A proposed value and its validity.
    ProposedValue {
        /// Height.
        height: Height,
        /// Round.
        round: i64,
        /// Valid round.
        valid_round: i64,
        /// Proposer.
        proposer: PartyId,
        /// The block.
        block: Block,
        /// Validity.
        valid: bool,
        /// Came from catch-up.
        sync: bool,
    },
    /// A timeout that elapsed.
    Timeout {
        /// 0 propose, 1 prevote, 2 precommit, 3 rebroadcast.
        kind: u8,
        /// Round.
        round: i64,
    },
    /// A polka certificate.
    Polka(PolkaWire),
    /// A round certificate.
    RoundCert(RoundCertWire),
    /// The real signature of one of our own messages (the core first sees a
    /// placeholder; see the driver's docs).
    OwnSignature {
        /// SHA-256 of the signed bytes.
        digest: Sha256Digest,
        /// The TPM's signature.
        signature: Signature,
    },
}

impl WalRecord {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

type Ctx = QuorateContext;

/// A malachite signed vote from the wire form.
pub fn vote_to_mc(v: &SignedVoteWire) -> mc::SignedVote<Ctx> {
    mc::SignedMessage::new(v.vote.clone(), v.signature)
}

/// The wire form of a malachite signed vote.
pub fn vote_from_mc(v: &mc::SignedVote<Ctx>) -> SignedVoteWire {
    SignedVoteWire {
        vote: v.message.clone(),
        signature: v.signature,
    }
}

/// A malachite signed proposal from the wire form.
pub fn proposal_to_mc(p: &SignedProposalWire) -> mc::SignedProposal<Ctx> {
    mc::SignedMessage::new(p.proposal.clone(), p.signature)
}

/// The wire form of a malachite signed proposal.
pub fn proposal_from_mc(p: &mc::SignedProposal<Ctx>) -> SignedProposalWire {
    SignedProposalWire {
        proposal: p.message.clone(),
        signature: p.signature,
    }
}

/// Wire form of a polka certificate.
pub fn polka_from_mc(c: &mc::PolkaCertificate<Ctx>) -> PolkaWire {
    PolkaWire {
        height: c.height,
        round: round_i64(c.round),
        value: c.value_id,
        signatures: c
            .polka_signatures
            .iter()
            .map(|s| (s.address, s.signature))
            .collect(),
    }
}

/// malachite polka certificate from the wire form.
pub fn polka_to_mc(c: &PolkaWire) -> mc::PolkaCertificate<Ctx> {
    mc::PolkaCertificate {
        height: c.height,
        round: round_from_i64(c.round),
        value_id: c.value,
        polka_signatures: c
            .signatures
            .iter()
            .map(|(p, s)| mc::PolkaSignature::new(*p, *s))
            .collect(),
    }
}

/// Wire form of a round certificate.
pub fn round_cert_from_mc(c: &mc::RoundCertificate<Ctx>) -> RoundCertWire {
    RoundCertWire {
        height: c.height,
        round: round_i64(c.round),
        skip: matches!(c.cert_type, mc::RoundCertificateType::Skip),
        signatures: c
            .round_signatures
            .iter()
            .map(|s| RoundSigWire {
                precommit: s.vote_type == VoteType::Precommit,
                value: match s.value_id {
                    NilOrVal::Nil => None,
                    NilOrVal::Val(v) => Some(v),
                },
                party: s.address,
                signature: s.signature,
            })
            .collect(),
    }
}

/// malachite round certificate from the wire form.
pub fn round_cert_to_mc(c: &RoundCertWire) -> mc::RoundCertificate<Ctx> {
    mc::RoundCertificate {
        height: c.height,
        round: round_from_i64(c.round),
        cert_type: if c.skip {
            mc::RoundCertificateType::Skip
        } else {
            mc::RoundCertificateType::Precommit
        },
        round_signatures: c
            .signatures
            .iter()
            .map(|s| mc::RoundSignature {
                vote_type: if s.precommit {
                    VoteType::Precommit
                } else {
                    VoteType::Prevote
                },
                value_id: match s.value {
                    None => NilOrVal::Nil,
                    Some(v) => NilOrVal::Val(v),
                },
                address: s.party,
                signature: s.signature,
            })
            .collect(),
    }
}

fn timeout_kind_code(k: TimeoutKind) -> Option<u8> {
    match k {
        TimeoutKind::Propose => Some(0),
        TimeoutKind::Prevote => Some(1),
        TimeoutKind::Precommit => Some(2),
        TimeoutKind::Rebroadcast => Some(3),
        TimeoutKind::FinalizeHeight(_) => None,
    }
}

fn timeout_from_code(kind: u8, round: i64) -> Option<Timeout> {
    let k = match kind {
        0 => TimeoutKind::Propose,
        1 => TimeoutKind::Prevote,
        2 => TimeoutKind::Precommit,
        3 => TimeoutKind::Rebroadcast,
        _ => return None,
    };
    Some(Timeout::new(round_from_i64(round), k))
}

/// The WAL record of a core input the core asked to append (None for inputs
/// that are never appended).
pub fn wal_record_of(input: &mcc::Input<Ctx>) -> Option<WalRecord> {
    Some(match input {
        mcc::Input::Vote(v) => WalRecord::Vote(vote_from_mc(v)),
        mcc::Input::Proposal(p) => WalRecord::Proposal(proposal_from_mc(p)),
        mcc::Input::Propose(v) => WalRecord::Propose {
            height: v.height,
            round: round_i64(v.round),
            block: v.value.clone(),
        },
        mcc::Input::ProposedValue(v, origin) => WalRecord::ProposedValue {
            height: v.height,
            round: round_i64(v.round),
            valid_round: round_i64(v.valid_round),
            proposer: v.proposer,
            block: v.value.clone(),
            valid: v.validity.is_valid(),
            sync: origin.is_sync(),
        },
        mcc::Input::TimeoutElapsed(t) => WalRecord::Timeout {
            kind: timeout_kind_code(t.kind)?,
            round: round_i64(t.round),
        },
        mcc::Input::PolkaCertificate(c) => WalRecord::Polka(polka_from_mc(c)),
        mcc::Input::RoundCertificate(c) => WalRecord::RoundCert(round_cert_from_mc(c)),
        mcc::Input::StartHeight(..) | mcc::Input::SyncValueResponse(_) => return None,
    })
}

/// The core input a WAL record replays (None for our own bookkeeping records).
pub fn input_of_wal_record(r: &WalRecord) -> Option<mcc::Input<Ctx>> {
    Some(match r {
        WalRecord::Vote(v) => mcc::Input::Vote(vote_to_mc(v)),
        WalRecord::Proposal(p) => mcc::Input::Proposal(proposal_to_mc(p)),
        WalRecord::Propose {
            height,
            round,
            block,
        } => mcc::Input::Propose(mcc::LocallyProposedValue::new(
            *height,
            round_from_i64(*round),
            block.clone(),
        )),
        WalRecord::ProposedValue {
            height,
            round,
            valid_round,
            proposer,
            block,
            valid,
            sync,
        } => mcc::Input::ProposedValue(
            mcc::ProposedValue {
                height: *height,
                round: round_from_i64(*round),
                valid_round: round_from_i64(*valid_round),
                proposer: *proposer,
                value: block.clone(),
                validity: mc::Validity::from_bool(*valid),
            },
            if *sync {
                mc::ValueOrigin::Sync
            } else {
                mc::ValueOrigin::Consensus
            },
        ),
        WalRecord::Timeout { kind, round } => {
            mcc::Input::TimeoutElapsed(timeout_from_code(*kind, *round)?)
        }
        WalRecord::Polka(c) => mcc::Input::PolkaCertificate(polka_to_mc(c)),
        WalRecord::RoundCert(c) => mcc::Input::RoundCertificate(round_cert_to_mc(c)),
        WalRecord::OwnSignature { .. } => return None,
    })
}

/// Unused-round helper kept for symmetry in docs.
pub fn nil_round() -> Round {
    Round::Nil
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_typed_error() {
        for bytes in [&[][..], &[0xff, 0xff, 0xff][..], &[1, 2, 3, 4, 5][..]] {
            assert!(matches!(
                PeerMessage::decode(bytes, 1024),
                Err(DecodeError::Malformed(_))
            ));
        }
        assert!(matches!(
            PeerMessage::decode(&[0u8; 2000], 1024),
            Err(DecodeError::TooLarge(2000))
        ));
        let m = PeerMessage::Tip { height: Height(7) };
        assert_eq!(PeerMessage::decode(&m.encode(), 1024), Ok(m));
    }

    #[test]
    fn timeouts_round_trip_through_the_wal() {
        let t = Timeout::new(Round::new(3), TimeoutKind::Prevote);
        let r = wal_record_of(&mcc::Input::TimeoutElapsed(t)).unwrap();
        let back = WalRecord::decode(&r.encode()).unwrap();
        assert_eq!(
            input_of_wal_record(&back),
            Some(mcc::Input::TimeoutElapsed(t))
        );
    }
}
