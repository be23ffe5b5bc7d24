//! Quorate's implementation of malachite's [`Context`]: heights, blocks of
//! signed operation batches, proposals and votes, the party set, and the
//! exact bytes a party's vote key signs.
//!
//! Signatures never come from here: the core asks its driver to sign
//! ([`crate::consensus::driver`]), and the driver asks the host's TPM.

use crate::batch::SignedBatch;
use crate::consensus::certificate::CommitCertificate;
use crate::crypto::{PublicKey, Signature};
use crate::types::{ClusterId, Epoch, FaultModel, Height, PartyId, Sha256Digest};
use malachitebft_core_types as mc;
use malachitebft_core_types::{NilOrVal, Round, VoteType};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// Domain tag of every consensus message a vote key signs.
pub const CONSENSUS_DOMAIN: &str = "quorate/consensus/v1";

/// Identifies a block: SHA-256 over the postcard encoding of its contents.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct BlockHash(pub Sha256Digest);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.as_bytes();
        for x in b.iter().take(6) {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl malachitebft_core_types::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

impl mc::Address for PartyId {}

/// A block's header: what links it into the chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockHeader {
    /// The height this block decides.
    pub height: Height,
    /// Milliseconds since the Unix epoch, chosen by the proposer; strictly
    /// greater than the parent's.
    pub time_ms: u64,
    /// Hash of the block decided at `height - 1` (all zero at height 1).
    pub parent: BlockHash,
    /// The party that proposed the block.
    pub proposer: PartyId,
    /// The canonical commit certificate of block `height - 1` (`None` at
    /// height 1): the quorum of precommits that decided the parent, as this
    /// block's proposer collected it. Every validator checks it, so every
    /// party agrees on one signer set per block (the audit log's entries
    /// name those signers).
    pub last_commit: Option<CommitCertificate>,
    /// The audit log's Merkle tree after the entries of every block up to
    /// `height - 2` (entries of block h are built once block h+1 carries
    /// h's canonical certificate). Every validator compares it with its own
    /// tree, so consensus agrees on the log.
    pub log: LogHead,
}

/// Size and root of the audit log's Merkle tree (RFC 6962).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogHead {
    /// Number of entries.
    pub size: u64,
    /// Merkle tree hash of those entries (SHA-256 of "" when empty).
    pub root: Sha256Digest,
}

impl LogHead {
    /// The empty log.
    pub fn empty() -> Self {
        LogHead {
            size: 0,
            root: Sha256Digest::of(b""),
        }
    }
}

impl Default for LogHead {
    fn default() -> Self {
        LogHead::empty()
    }
}

/// Two conflicting votes signed by one party for the same height, round and
/// step: proof that the party equivocated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Equivocation {
    /// The first vote.
    pub first: SignedVoteWire,
    /// The conflicting vote.
    pub second: SignedVoteWire,
}

impl Equivocation {
    /// The (voter, height, round, step) this evidence is about; one piece of
    /// evidence per key is enough.
    pub fn key(&self) -> (PartyId, Height, i64, Step) {
        let v = &self.first.vote;
        (v.voter, v.height, round_i64(v.round), v.step())
    }
}

/// What is hashed into a block's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockContents {
    /// The header.
    pub header: BlockHeader,
    /// Operation batches, in order of application.
    pub batches: Vec<SignedBatch>,
    /// Equivocation evidence recorded by this block.
    pub evidence: Vec<Equivocation>,
}

/// A block: the value consensus decides. Its id is computed once, at
/// construction, because the core asks for it often.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "BlockContents", into = "BlockContents")]
pub struct Block {
    contents: BlockContents,
    hash: BlockHash,
    encoded_len: usize,
}

impl From<BlockContents> for Block {
    fn from(contents: BlockContents) -> Self {
        Block::new(contents)
    }
}

impl From<Block> for BlockContents {
    fn from(b: Block) -> Self {
        b.contents
    }
}

impl Block {
    /// Builds a block and computes its hash.
    pub fn new(contents: BlockContents) -> Self {
        // Serialising plain owned data into a Vec cannot fail.
        let bytes = postcard::to_stdvec(&contents).unwrap_or_default();
        Block {
            hash: BlockHash(Sha256Digest::of(&bytes)),
            encoded_len: bytes.len(),
            contents,
        }
    }

    /// The block's id.
    pub fn hash(&self) -> BlockHash {
        self.hash
    }

    /// The header.
    pub fn header(&self) -> &BlockHeader {
        &self.contents.header
    }

    /// The batches, in order.
    pub fn batches(&self) -> &[SignedBatch] {
        &self.contents.batches
    }

    /// The evidence it records.
    pub fn evidence(&self) -> &[Equivocation] {
        &self.contents.evidence
    }

    /// Size of its encoding in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// The encoding (postcard of the contents).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.contents).unwrap_or_default()
    }

    /// Decodes a block from untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes::<BlockContents>(bytes).map(Block::new)
    }
}

impl PartialEq for Block {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
    }
}
impl Eq for Block {}
impl PartialOrd for Block {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Block {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hash.cmp(&other.hash)
    }
}

impl mc::Value for Block {
    type Id = BlockHash;
    fn id(&self) -> BlockHash {
        self.hash
    }
}

/// Which signed step a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Step {
    /// A block proposal.
    Proposal,
    /// A prevote.
    Prevote,
    /// A precommit.
    Precommit,
}

impl From<VoteType> for Step {
    fn from(t: VoteType) -> Self {
        match t {
            VoteType::Prevote => Step::Prevote,
            VoteType::Precommit => Step::Precommit,
        }
    }
}

/// A round as a signed integer (-1 for "none").
pub fn round_i64(r: Round) -> i64 {
    r.as_i64()
}

/// The inverse of [`round_i64`].
pub fn round_from_i64(r: i64) -> Round {
    if r < 0 {
        Round::Nil
    } else {
        Round::new(u32::try_from(r).unwrap_or(u32::MAX))
    }
}

/// The exact structure whose postcard encoding a vote key signs. Every field
/// can be rebuilt from a certificate entry and the cluster constants, so a
/// certificate carries only (party, signature).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBytes {
    /// [`CONSENSUS_DOMAIN`].
    pub domain: String,
    /// The cluster.
    pub cluster: ClusterId,
    /// The membership epoch.
    pub epoch: Epoch,
    /// Height.
    pub height: Height,
    /// Round.
    pub round: i64,
    /// Proposal, prevote or precommit.
    pub step: Step,
    /// The block voted for (`None` for nil); for a proposal, the block.
    pub value: Option<BlockHash>,
    /// A proposal's proof-of-lock round (-1 for votes and fresh proposals).
    pub pol_round: i64,
    /// The signing party.
    pub signer: PartyId,
}

impl SignedBytes {
    /// The postcard encoding: what is signed.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// A prevote or precommit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// True for a precommit, false for a prevote.
    pub precommit: bool,
    /// Height.
    pub height: Height,
    /// Round.
    #[serde(with = "round_serde")]
    pub round: Round,
    /// The block voted for, or nil.
    #[serde(with = "nil_or_val_serde")]
    pub value: NilOrVal<BlockHash>,
    /// The voter.
    pub voter: PartyId,
}

impl Vote {
    /// The step of this vote.
    pub fn step(&self) -> Step {
        if self.precommit {
            Step::Precommit
        } else {
            Step::Prevote
        }
    }

    /// The malachite vote type.
    pub fn vote_type(&self) -> VoteType {
        if self.precommit {
            VoteType::Precommit
        } else {
            VoteType::Prevote
        }
    }

    /// The value as an option (`None` = nil).
    pub fn value_opt(&self) -> Option<BlockHash> {
        match self.value {
            NilOrVal::Nil => None,
            NilOrVal::Val(v) => Some(v),
        }
    }

    /// The signed bytes of this vote in `ctx`'s cluster.
    pub fn signed_bytes(&self, ctx: &QuorateContext) -> SignedBytes {
        SignedBytes {
            domain: CONSENSUS_DOMAIN.to_string(),
            cluster: ctx.cluster,
            epoch: ctx.epoch,
            height: self.height,
            round: round_i64(self.round),
            step: self.step(),
            value: self.value_opt(),
            pol_round: -1,
            signer: self.voter,
        }
    }
}

fn unreachable_empty() -> &'static Party {
    // Unreachable: a PartySet is never empty (checked in `new`).
    std::process::abort()
}

/// Serde for malachite's `Round` as an i64.
pub mod round_serde {
    use super::*;
    /// Serialises a round.
    pub fn serialize<S: serde::Serializer>(r: &Round, s: S) -> Result<S::Ok, S::Error> {
        round_i64(*r).serialize(s)
    }
    /// Deserialises a round (-1 ..= u32::MAX).
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Round, D::Error> {
        let v = i64::deserialize(d)?;
        if v < -1 || v > i64::from(u32::MAX) {
            return Err(serde::de::Error::custom("round out of range"));
        }
        Ok(round_from_i64(v))
    }
}

/// Serde for `NilOrVal<BlockHash>` as an `Option`.
pub mod nil_or_val_serde {
    use super::*;
    /// Serialises as an option.
    pub fn serialize<S: serde::Serializer>(
        v: &NilOrVal<BlockHash>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let o: Option<BlockHash> = match v {
            NilOrVal::Nil => None,
            NilOrVal::Val(h) => Some(*h),
        };
        o.serialize(s)
    }
    /// Deserialises from an option.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<NilOrVal<BlockHash>, D::Error> {
        Ok(match Option::<BlockHash>::deserialize(d)? {
            None => NilOrVal::Nil,
            Some(h) => NilOrVal::Val(h),
        })
    }
}

/// A vote with its signature, as it travels and as evidence holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedVoteWire {
    /// The vote.
    pub vote: Vote,
    /// The voter's signature over its [`SignedBytes`].
    pub signature: Signature,
}

impl mc::Vote<QuorateContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &NilOrVal<BlockHash> {
        &self.value
    }
    fn take_value(self) -> NilOrVal<BlockHash> {
        self.value
    }
    fn vote_type(&self) -> VoteType {
        Vote::vote_type(self)
    }
    fn validator_address(&self) -> &PartyId {
        &self.voter
    }
    fn extension(&self) -> Option<&mc::SignedExtension<QuorateContext>> {
        None
    }
    fn take_extension(&mut self) -> Option<mc::SignedExtension<QuorateContext>> {
        None
    }
    fn extend(self, _extension: mc::SignedExtension<QuorateContext>) -> Self {
        // Vote extensions are disabled for Quorate.
        self
    }
}

/// A block proposal for (height, round).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Height.
    pub height: Height,
    /// Round.
    #[serde(with = "round_serde")]
    pub round: Round,
    /// The proposed block.
    pub block: Block,
    /// Proof-of-lock round, or nil.
    #[serde(with = "round_serde")]
    pub pol_round: Round,
    /// The proposer.
    pub proposer: PartyId,
}

impl Proposal {
    /// The signed bytes of this proposal (the block enters by its hash).
    pub fn signed_bytes(&self, ctx: &QuorateContext) -> SignedBytes {
        SignedBytes {
            domain: CONSENSUS_DOMAIN.to_string(),
            cluster: ctx.cluster,
            epoch: ctx.epoch,
            height: self.height,
            round: round_i64(self.round),
            step: Step::Proposal,
            value: Some(self.block.hash()),
            pol_round: round_i64(self.pol_round),
            signer: self.proposer,
        }
    }
}

impl mc::Proposal<QuorateContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &Block {
        &self.block
    }
    fn take_value(self) -> Block {
        self.block
    }
    fn pol_round(&self) -> Round {
        self.pol_round
    }
    fn validator_address(&self) -> &PartyId {
        &self.proposer
    }
}

/// Proposal parts are not used: Quorate runs malachite in `ProposalOnly`
/// mode, where the whole block travels inside the signed proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoProposalParts {}

impl mc::ProposalPart<QuorateContext> for NoProposalParts {
    fn is_first(&self) -> bool {
        match *self {}
    }
    fn is_last(&self) -> bool {
        match *self {}
    }
}

/// One party of the cluster with its vote key. Every party has voting power 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// Its id.
    pub id: PartyId,
    /// Its TPM-resident vote key (public part).
    pub vote_key: PublicKey,
}

impl mc::Validator<QuorateContext> for Party {
    fn address(&self) -> &PartyId {
        &self.id
    }
    fn public_key(&self) -> &PublicKey {
        &self.vote_key
    }
    fn voting_power(&self) -> mc::VotingPower {
        1
    }
}

/// Why a party set could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartySetError {
    /// No parties.
    #[error("the party set is empty: configure at least one party")]
    Empty,
    /// A party id appears twice.
    #[error("party {0} appears twice in the party set: fix the cluster configuration")]
    Duplicate(PartyId),
}

/// The parties of an epoch, sorted by id (a deterministic order that every
/// party computes identically).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartySet {
    parties: Vec<Party>,
}

impl PartySet {
    /// Builds a party set; sorts by id and refuses duplicates.
    pub fn new(mut parties: Vec<Party>) -> Result<Self, PartySetError> {
        if parties.is_empty() {
            return Err(PartySetError::Empty);
        }
        parties.sort_by_key(|p| p.id);
        for w in parties.windows(2) {
            if let [a, b] = w {
                if a.id == b.id {
                    return Err(PartySetError::Duplicate(a.id));
                }
            }
        }
        Ok(PartySet { parties })
    }

    /// The parties, sorted by id.
    pub fn parties(&self) -> &[Party] {
        &self.parties
    }

    /// Number of parties.
    pub fn len(&self) -> usize {
        self.parties.len()
    }

    /// Always false for a built set (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.parties.is_empty()
    }

    /// The vote key of `id`, if it is a member.
    pub fn key_of(&self, id: PartyId) -> Option<&PublicKey> {
        self.get(id).map(|p| &p.vote_key)
    }

    /// The party `id`, if it is a member.
    pub fn get(&self, id: PartyId) -> Option<&Party> {
        self.parties
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .and_then(|i| self.parties.get(i))
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: PartyId) -> bool {
        self.get(id).is_some()
    }

    /// Round-robin proposer for (height, round).
    pub fn proposer(&self, height: Height, round: Round) -> &Party {
        let n = self.parties.len() as u64;
        let r = u64::try_from(round_i64(round).max(0)).unwrap_or(0);
        let idx = (height.0.wrapping_add(r)) % n.max(1);
        // `new` refuses empty sets, so the index is always in range.
        let i = usize::try_from(idx).unwrap_or(0);
        // `new` refuses empty sets and idx < n, so `get` always succeeds;
        // the fallback keeps the function total without indexing.
        self.parties
            .get(i)
            .or_else(|| self.parties.first())
            .unwrap_or_else(|| unreachable_empty())
    }
}

impl mc::ValidatorSet<QuorateContext> for PartySet {
    fn count(&self) -> usize {
        self.parties.len()
    }
    fn total_voting_power(&self) -> mc::VotingPower {
        self.parties.len() as u64
    }
    fn get_by_address(&self, address: &PartyId) -> Option<&Party> {
        self.get(*address)
    }
    fn get_by_index(&self, index: usize) -> Option<&Party> {
        self.parties.get(index)
    }
}

/// ECDSA P-256 with SHA-256 (the TPM's vote keys); verification with ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P256;

/// A signature or key that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodingError {
    /// Wrong length.
    #[error("expected {expected} bytes, got {got}")]
    Length {
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}

impl mc::SigningScheme for P256 {
    type DecodingError = DecodingError;
    type Signature = Signature;
    type PublicKey = PublicKey;
    /// The core never holds a private key; signing is an effect.
    type PrivateKey = ();

    fn decode_signature(bytes: &[u8]) -> Result<Signature, DecodingError> {
        <[u8; 64]>::try_from(bytes)
            .map(Signature)
            .map_err(|_| DecodingError::Length {
                expected: 64,
                got: bytes.len(),
            })
    }
    fn encode_signature(signature: &Signature) -> Vec<u8> {
        signature.0.to_vec()
    }
    fn decode_public_key(bytes: &[u8]) -> Result<PublicKey, DecodingError> {
        <[u8; 65]>::try_from(bytes)
            .map(PublicKey)
            .map_err(|_| DecodingError::Length {
                expected: 65,
                got: bytes.len(),
            })
    }
    fn encode_public_key(public_key: &PublicKey) -> Vec<u8> {
        public_key.0.to_vec()
    }
}

/// The malachite context of one Quorate cluster epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorateContext {
    /// The cluster (bound into every signature).
    pub cluster: ClusterId,
    /// The membership epoch (bound into every signature).
    pub epoch: Epoch,
}

impl mc::Context for QuorateContext {
    type Address = PartyId;
    type Height = Height;
    type ProposalPart = NoProposalParts;
    type Proposal = Proposal;
    type Validator = Party;
    type ValidatorSet = PartySet;
    type Timeouts = mc::LinearTimeouts;
    type Value = Block;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = P256;

    fn select_proposer<'a>(&self, set: &'a PartySet, height: Height, round: Round) -> &'a Party {
        set.proposer(height, round)
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        block: Block,
        pol_round: Round,
        address: PartyId,
    ) -> Proposal {
        Proposal {
            height,
            round,
            block,
            pol_round,
            proposer: address,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value: NilOrVal<BlockHash>,
        voter: PartyId,
    ) -> Vote {
        Vote {
            precommit: false,
            height,
            round,
            value,
            voter,
        }
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value: NilOrVal<BlockHash>,
        voter: PartyId,
    ) -> Vote {
        Vote {
            precommit: true,
            height,
            round,
            value,
            voter,
        }
    }
}

/// malachite's threshold parameters for a fault model, so that its vote
/// keeper's "quorum" is exactly [`FaultModel::quorum`] and its "honest"
/// threshold (used to skip to a higher round) is `n - q + 1` votes, i.e. more
/// than the number of parties the model lets be faulty while staying live.
///
/// malachite counts a threshold `num/den` as met when
/// `weight * den > total * num`. With weight 1 per party and `total = n`,
/// `num = q - 1, den = n` gives `weight > q - 1`, i.e. `weight >= q`.
pub fn threshold_params(model: FaultModel, n: usize) -> mc::ThresholdParams {
    let n64 = n as u64;
    let q = model.quorum(n) as u64;
    mc::ThresholdParams {
        quorum: mc::ThresholdParam::new(q.saturating_sub(1), n64.max(1)),
        honest: mc::ThresholdParam::new(n64.saturating_sub(q), n64.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_the_fault_models() {
        for n in 1..=10usize {
            for m in [
                FaultModel::Byzantine,
                FaultModel::Unanimous,
                FaultModel::Majority,
            ] {
                let p = threshold_params(m, n);
                let q = m.quorum(n) as u64;
                for w in 0..=n as u64 {
                    assert_eq!(p.quorum.is_met(w, n as u64), w >= q, "{m:?} n={n} w={w}");
                    assert_eq!(
                        p.honest.is_met(w, n as u64),
                        w > n as u64 - q,
                        "{m:?} n={n} w={w}"
                    );
                }
            }
        }
    }

    #[test]
    fn byzantine_thresholds_equal_malachite_defaults_for_3f_plus_1() {
        for f in 1..5usize {
            let n = 3 * f + 1;
            let p = threshold_params(FaultModel::Byzantine, n);
            let d = mc::ThresholdParams::default();
            for w in 0..=n as u64 {
                assert_eq!(p.quorum.is_met(w, n as u64), d.quorum.is_met(w, n as u64));
                assert_eq!(p.honest.is_met(w, n as u64), d.honest.is_met(w, n as u64));
            }
        }
    }

    #[test]
    fn block_hash_covers_contents_and_round_trips() {
        let b = Block::new(BlockContents {
            header: BlockHeader {
                height: Height(1),
                time_ms: 5,
                parent: BlockHash(Sha256Digest::default()),
                proposer: PartyId(1),
                last_commit: None,
                log: LogHead::empty(),
            },
            batches: vec![],
            evidence: vec![],
        });
        let back = Block::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(back.hash(), b.hash());
        let mut c: BlockContents = b.clone().into();
        c.header.time_ms = 6;
        assert_ne!(Block::new(c).hash(), b.hash());
        assert!(Block::from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn party_set_sorted_unique_round_robin() {
        let k = PublicKey([4u8; 65]);
        let set = PartySet::new(vec![
            Party {
                id: PartyId(2),
                vote_key: k,
            },
            Party {
                id: PartyId(1),
                vote_key: k,
            },
        ])
        .unwrap();
        assert_eq!(set.parties()[0].id, PartyId(1));
        assert_ne!(
            set.proposer(Height(1), Round::new(0)).id,
            set.proposer(Height(1), Round::new(1)).id
        );
        assert!(PartySet::new(vec![]).is_err());
        assert!(PartySet::new(vec![
            Party {
                id: PartyId(1),
                vote_key: k
            },
            Party {
                id: PartyId(1),
                vote_key: k
            },
        ])
        .is_err());
    }
}
