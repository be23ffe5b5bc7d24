//! Commit certificates and equivocation evidence, verifiable by anyone who
//! holds the party set (the audit verifier, the host, a lagging peer).

use crate::consensus::context::Step;
use crate::consensus::context::{
    round_from_i64, BlockHash, Equivocation, PartySet, QuorateContext, SignedBytes, SignedVoteWire,
    Vote, CONSENSUS_DOMAIN,
};
use crate::crypto::{PublicKey, Signature};
use crate::types::{ClusterId, Epoch, FaultModel, Height, PartyId, Sha256Digest};
use malachitebft_core_types::NilOrVal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// A quorum of precommits for one block: proof that it was decided.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommitCertificate {
    /// The decided height.
    pub height: Height,
    /// The round whose precommits decided.
    pub round: i64,
    /// The decided block.
    pub block: BlockHash,
    /// (party, precommit signature), sorted by party.
    pub signatures: Vec<(PartyId, Signature)>,
}

/// Why a certificate does not prove a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Certificate for another height.
    #[error("certificate is for height {got}, expected {expected}")]
    WrongHeight {
        /// Expected.
        expected: Height,
        /// In the certificate.
        got: Height,
    },
    /// Certificate for another block.
    #[error("certificate is for another block than the one presented")]
    WrongBlock,
    /// A signer is not a member.
    #[error("certificate signer {0} is not a member of the party set")]
    UnknownSigner(PartyId),
    /// A signer appears twice.
    #[error("certificate signer {0} appears twice")]
    DuplicateSigner(PartyId),
    /// A signature does not verify.
    #[error("precommit signature of {0} does not verify: the certificate is forged or corrupt")]
    BadSignature(PartyId),
    /// Not enough signers.
    #[error("certificate has {got} valid precommits, the quorum is {quorum}")]
    NotEnoughSigners {
        /// Valid signers.
        got: usize,
        /// Needed.
        quorum: usize,
    },
    /// Round out of range.
    #[error("certificate round {0} is out of range")]
    BadRound(i64),
}

/// Caches verified (key, message, signature) triples so that a signature seen
/// again (in a certificate, a rebroadcast, a WAL replay) is not re-verified.
/// ECDSA verification dominates consensus CPU.
#[derive(Debug, Default, Clone)]
pub struct VerifyCache {
    ok: HashSet<Sha256Digest>,
    order: std::collections::VecDeque<Sha256Digest>,
    /// Number of ECDSA verifications actually performed.
    pub verifications: u64,
}

const CACHE_CAP: usize = 8192;

impl VerifyCache {
    /// Verifies `sig` over `msg` under `key`, consulting the cache first.
    pub fn verify(&mut self, key: &PublicKey, msg: &[u8], sig: &Signature) -> bool {
        let k = Sha256Digest::of_parts(&[&key.0, &sig.0, msg]);
        if self.ok.contains(&k) {
            return true;
        }
        self.verifications += 1;
        if key.verify(msg, sig).is_err() {
            return false;
        }
        if self.order.len() >= CACHE_CAP {
            if let Some(old) = self.order.pop_front() {
                self.ok.remove(&old);
            }
        }
        self.ok.insert(k);
        self.order.push_back(k);
        true
    }
}

/// The bytes a precommit for `block` at (height, round) by `signer` signs.
pub fn precommit_bytes(
    cluster: ClusterId,
    epoch: Epoch,
    height: Height,
    round: i64,
    block: BlockHash,
    signer: PartyId,
) -> Vec<u8> {
    SignedBytes {
        domain: CONSENSUS_DOMAIN.to_string(),
        cluster,
        epoch,
        height,
        round,
        step: Step::Precommit,
        value: Some(block),
        pol_round: -1,
        signer,
    }
    .encode()
}

/// Checks that `cert` proves that `block` was decided at `height` by a
/// quorum (of `model`) of `parties` in (`cluster`, `epoch`).
pub fn verify_commit_certificate(
    parties: &PartySet,
    model: FaultModel,
    cluster: ClusterId,
    epoch: Epoch,
    height: Height,
    block: BlockHash,
    cert: &CommitCertificate,
) -> Result<(), CertificateError> {
    verify_commit_certificate_cached(
        parties,
        model,
        cluster,
        epoch,
        height,
        block,
        cert,
        &mut VerifyCache::default(),
    )
}

/// [`verify_commit_certificate`] with a signature cache.
#[allow(clippy::too_many_arguments)]
pub fn verify_commit_certificate_cached(
    parties: &PartySet,
    model: FaultModel,
    cluster: ClusterId,
    epoch: Epoch,
    height: Height,
    block: BlockHash,
    cert: &CommitCertificate,
    cache: &mut VerifyCache,
) -> Result<(), CertificateError> {
    if cert.height != height {
        return Err(CertificateError::WrongHeight {
            expected: height,
            got: cert.height,
        });
    }
    if cert.block != block {
        return Err(CertificateError::WrongBlock);
    }
    if cert.round < 0 || cert.round > i64::from(u32::MAX) {
        return Err(CertificateError::BadRound(cert.round));
    }
    let mut seen = BTreeSet::new();
    for (party, sig) in &cert.signatures {
        let key = parties
            .key_of(*party)
            .ok_or(CertificateError::UnknownSigner(*party))?;
        if !seen.insert(*party) {
            return Err(CertificateError::DuplicateSigner(*party));
        }
        let msg = precommit_bytes(cluster, epoch, height, cert.round, block, *party);
        if !cache.verify(key, &msg, sig) {
            return Err(CertificateError::BadSignature(*party));
        }
    }
    let quorum = model.quorum(parties.len());
    if seen.len() < quorum {
        return Err(CertificateError::NotEnoughSigners {
            got: seen.len(),
            quorum,
        });
    }
    Ok(())
}

/// Why evidence does not prove an equivocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The two votes are not by the same party for the same height, round and step.
    #[error("the two votes are not for the same voter, height, round and step")]
    NotComparable,
    /// The two votes agree.
    #[error("the two votes are for the same value: no equivocation")]
    NoConflict,
    /// The voter is unknown.
    #[error("voter {0} is not a member")]
    UnknownVoter(PartyId),
    /// A signature does not verify.
    #[error("a vote signature in the evidence does not verify")]
    BadSignature,
}

/// Checks that `ev` proves its voter signed two conflicting votes.
pub fn verify_equivocation(
    ctx: &QuorateContext,
    parties: &PartySet,
    ev: &Equivocation,
    cache: &mut VerifyCache,
) -> Result<(), EvidenceError> {
    let (a, b) = (&ev.first.vote, &ev.second.vote);
    if a.voter != b.voter
        || a.height != b.height
        || a.round != b.round
        || a.precommit != b.precommit
    {
        return Err(EvidenceError::NotComparable);
    }
    if a.value == b.value {
        return Err(EvidenceError::NoConflict);
    }
    let key = parties
        .key_of(a.voter)
        .ok_or(EvidenceError::UnknownVoter(a.voter))?;
    for sv in [&ev.first, &ev.second] {
        if !cache.verify(key, &sv.vote.signed_bytes(ctx).encode(), &sv.signature) {
            return Err(EvidenceError::BadSignature);
        }
    }
    Ok(())
}

/// Puts two conflicting votes in a canonical order so that the same
/// equivocation always yields the same evidence.
pub fn canonical_equivocation(x: SignedVoteWire, y: SignedVoteWire) -> Equivocation {
    let kx = postcard::to_stdvec(&x).unwrap_or_default();
    let ky = postcard::to_stdvec(&y).unwrap_or_default();
    if kx <= ky {
        Equivocation {
            first: x,
            second: y,
        }
    } else {
        Equivocation {
            first: y,
            second: x,
        }
    }
}

/// Converts malachite's certificate into ours (signatures sorted by party).
pub fn from_malachite(
    c: &malachitebft_core_types::CommitCertificate<QuorateContext>,
) -> CommitCertificate {
    let mut signatures: Vec<(PartyId, Signature)> = c
        .commit_signatures
        .iter()
        .map(|s| (s.address, s.signature))
        .collect();
    signatures.sort_by_key(|(p, _)| *p);
    signatures.dedup_by_key(|(p, _)| *p);
    CommitCertificate {
        height: c.height,
        round: c.round.as_i64(),
        block: c.value_id,
        signatures,
    }
}

/// Converts our certificate into malachite's extended form (no extensions).
pub fn to_malachite_extended(
    c: &CommitCertificate,
) -> malachitebft_core_types::ExtendedCommitCertificate<QuorateContext> {
    malachitebft_core_types::ExtendedCommitCertificate {
        height: c.height,
        round: round_from_i64(c.round),
        value_id: c.block,
        commit_signatures: c
            .signatures
            .iter()
            .map(|(p, s)| malachitebft_core_types::ExtendedCommitSignature::new(*p, *s, None))
            .collect(),
    }
}

/// The precommit vote a certificate entry stands for.
pub fn precommit_of(cert: &CommitCertificate, signer: PartyId) -> Vote {
    Vote {
        precommit: true,
        height: cert.height,
        round: round_from_i64(cert.round),
        value: NilOrVal::Val(cert.block),
        voter: signer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::context::Party;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    struct Fixture {
        keys: Vec<EcdsaKeyPair>,
        parties: PartySet,
        cluster: ClusterId,
    }

    fn fixture(n: usize) -> Fixture {
        let rng = SystemRandom::new();
        let keys: Vec<EcdsaKeyPair> = (0..n)
            .map(|_| {
                let p =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p.as_ref(), &rng)
                    .unwrap()
            })
            .collect();
        let parties = PartySet::new(
            keys.iter()
                .enumerate()
                .map(|(i, k)| Party {
                    id: PartyId(i as u32 + 1),
                    vote_key: PublicKey(k.public_key().as_ref().try_into().unwrap()),
                })
                .collect(),
        )
        .unwrap();
        Fixture {
            keys,
            parties,
            cluster: ClusterId(Sha256Digest::of(b"c")),
        }
    }

    fn sign(f: &Fixture, i: usize, msg: &[u8]) -> Signature {
        let s = f.keys[i].sign(&SystemRandom::new(), msg).unwrap();
        Signature(s.as_ref().try_into().unwrap())
    }

    fn cert(f: &Fixture, signers: &[usize], block: BlockHash) -> CommitCertificate {
        CommitCertificate {
            height: Height(5),
            round: 2,
            block,
            signatures: signers
                .iter()
                .map(|i| {
                    let p = PartyId(*i as u32 + 1);
                    let m = precommit_bytes(f.cluster, Epoch(1), Height(5), 2, block, p);
                    (p, sign(f, *i, &m))
                })
                .collect(),
        }
    }

    #[test]
    fn certificate_needs_a_quorum_of_valid_distinct_members() {
        let f = fixture(4);
        let b = BlockHash(Sha256Digest::of(b"block"));
        let v = |c: &CommitCertificate, m: FaultModel| {
            verify_commit_certificate(&f.parties, m, f.cluster, Epoch(1), Height(5), b, c)
        };
        let good = cert(&f, &[0, 1, 2], b);
        assert_eq!(v(&good, FaultModel::Byzantine), Ok(()));
        assert_eq!(v(&good, FaultModel::Majority), Ok(()));
        assert_eq!(
            v(&good, FaultModel::Unanimous),
            Err(CertificateError::NotEnoughSigners { got: 3, quorum: 4 })
        );
        assert_eq!(
            v(&cert(&f, &[0, 1, 2, 3], b), FaultModel::Unanimous),
            Ok(())
        );
        assert!(matches!(
            v(&cert(&f, &[0, 1], b), FaultModel::Byzantine),
            Err(CertificateError::NotEnoughSigners { .. })
        ));
        let mut dup = good.clone();
        dup.signatures.push(dup.signatures[0]);
        assert!(matches!(
            v(&dup, FaultModel::Byzantine),
            Err(CertificateError::DuplicateSigner(_))
        ));
        let mut forged = good.clone();
        forged.signatures[1].1 .0[7] ^= 1;
        assert_eq!(
            v(&forged, FaultModel::Byzantine),
            Err(CertificateError::BadSignature(PartyId(2)))
        );
        let mut swapped = good.clone();
        swapped.signatures[1].0 = PartyId(4);
        assert!(v(&swapped, FaultModel::Byzantine).is_err());
        let mut stranger = good.clone();
        stranger.signatures[0].0 = PartyId(9);
        assert_eq!(
            v(&stranger, FaultModel::Byzantine),
            Err(CertificateError::UnknownSigner(PartyId(9)))
        );
        let other = BlockHash(Sha256Digest::of(b"other"));
        assert_eq!(
            verify_commit_certificate(
                &f.parties,
                FaultModel::Byzantine,
                f.cluster,
                Epoch(1),
                Height(5),
                other,
                &good
            ),
            Err(CertificateError::WrongBlock)
        );
        // Another epoch or cluster: signatures do not carry over.
        assert!(verify_commit_certificate(
            &f.parties,
            FaultModel::Byzantine,
            f.cluster,
            Epoch(2),
            Height(5),
            b,
            &good
        )
        .is_err());
    }

    #[test]
    fn equivocation_evidence_verifies_only_real_conflicts() {
        let f = fixture(4);
        let ctx = QuorateContext {
            cluster: f.cluster,
            epoch: Epoch(1),
        };
        let vote = |value: NilOrVal<BlockHash>| Vote {
            precommit: false,
            height: Height(3),
            round: round_from_i64(1),
            value,
            voter: PartyId(2),
        };
        let signed = |v: Vote| SignedVoteWire {
            signature: sign(&f, 1, &v.signed_bytes(&ctx).encode()),
            vote: v,
        };
        let a = signed(vote(NilOrVal::Val(BlockHash(Sha256Digest::of(b"a")))));
        let b = signed(vote(NilOrVal::Nil));
        let mut cache = VerifyCache::default();
        let ev = canonical_equivocation(a.clone(), b.clone());
        assert_eq!(ev, canonical_equivocation(b.clone(), a.clone()));
        assert_eq!(
            verify_equivocation(&ctx, &f.parties, &ev, &mut cache),
            Ok(())
        );
        let same = Equivocation {
            first: a.clone(),
            second: a.clone(),
        };
        assert_eq!(
            verify_equivocation(&ctx, &f.parties, &same, &mut cache),
            Err(EvidenceError::NoConflict)
        );
        let mut forged = ev.clone();
        forged.second.signature.0[3] ^= 1;
        assert_eq!(
            verify_equivocation(&ctx, &f.parties, &forged, &mut cache),
            Err(EvidenceError::BadSignature)
        );
        let mut other_round = ev;
        other_round.second.vote.round = round_from_i64(2);
        assert_eq!(
            verify_equivocation(&ctx, &f.parties, &other_round, &mut cache),
            Err(EvidenceError::NotComparable)
        );
    }

    #[test]
    fn cache_counts_real_verifications_only() {
        let f = fixture(1);
        let k = *f.parties.key_of(PartyId(1)).unwrap();
        let s = sign(&f, 0, b"m");
        let mut c = VerifyCache::default();
        assert!(c.verify(&k, b"m", &s));
        assert!(c.verify(&k, b"m", &s));
        assert_eq!(c.verifications, 1);
        assert!(!c.verify(&k, b"n", &s));
        assert!(!c.verify(&k, b"n", &s));
        assert_eq!(c.verifications, 3);
    }
}
