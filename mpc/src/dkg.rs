//! FROST distributed key generation through the decided log, with
//! HPKE-sealed round-2 shares and proven blame.
//!
//! Round 1 (broadcast): frost `dkg::part1` plus one fresh X25519 recipient
//! key per other participant. Round 2 (direct only): one HPKE ciphertext of
//! frost's `round2::Package` per other participant. Then frost `part3`.
//! Every rule that decides a fault lives in one function here, used both by
//! [`Dkg`] and by [`check_blame`], so a party and an auditor cannot disagree.

use std::collections::BTreeMap;
use std::fmt;

use frost_core::keys::dkg::{self, round1, round2};
use frost_core::keys::{
    refresh, CoefficientCommitment, KeyPackage, PublicKeyPackage, SecretShare, SigningShare,
    VerifiableSecretSharingCommitment,
};
use frost_core::Group;
use frost_core::Identifier;
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{BlameError, EngineError};
use crate::keyshare::KeyShare;
use crate::seal::{self, RecipientSecret, ShareBinding, DKG_SHARE_DOMAIN, REFRESH_SHARE_DOMAIN};
use crate::suite::{Ed, Suite, Tr};
use crate::wire::{decode, encode, BlameProofWire, Evidence, Round1Wire, WIRE_VERSION};
use crate::{PartyId, Posted, RoundMessage, Scheme, SessionCtx};

/// Round number of the round-1 broadcast.
pub const DKG_ROUND_1: u32 = 1;
/// Round number of the round-2 sealed shares.
pub const DKG_ROUND_2: u32 = 2;

/// Which two-round protocol a [`Dkg`] runs: a fresh key generation, or a
/// share refresh (frost `refresh_dkg_*`) that keeps the group key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// frost `dkg::part1..3`.
    Dkg,
    /// frost `refresh_dkg_part1/part2/refresh_dkg_shares`: commitments to a
    /// zero constant term (sent without it, t − 1 entries, and without a
    /// meaningful proof of knowledge, which frost does not verify).
    Refresh,
}

impl Protocol {
    fn domain(self) -> &'static [u8] {
        match self {
            Protocol::Dkg => DKG_SHARE_DOMAIN,
            Protocol::Refresh => REFRESH_SHARE_DOMAIN,
        }
    }
}

/// What a proven culprit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum BlameKind {
    /// Its round-1 broadcast does not decode, is for another ciphersuite,
    /// has a commitment of the wrong length, carries direct parts, or does
    /// not publish exactly one usable recipient key per other participant.
    MalformedRound1,
    /// Its round-1 proof of knowledge does not verify (frost part2).
    InvalidProofOfKnowledge,
    /// Its round-2 message has a broadcast part, or lacks or misaddresses a
    /// direct part (the set of recipients is not exactly the others).
    MissingOrMisaddressedShare,
    /// The ciphertext for the accuser does not open under the accuser's
    /// published key and the session binding, or its plaintext is not a
    /// frost round-2 package.
    UndecryptableShare,
    /// The share opens but does not match the culprit's round-1 commitment
    /// (frost part3's `InvalidSecretShare`).
    InvalidSecretShare,
}

/// The outcome of [`check_blame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlameVerdict {
    /// The culprit is proven at fault.
    Culprit(BlameKind),
    /// The log and proof show the culprit behaved: the accuser is proven to
    /// have lied (or its revealed key is not the one it published).
    FalseAccusation,
}

/// Test-only misbehaviour, for the system tests' bad-dealer scenario. The
/// host enables it only in dev mode; production code never constructs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DkgFault {
    /// Deal a corrupted (but correctly sealed) round-2 share to this party:
    /// it decrypts fine and fails the commitment check, so the recipient
    /// blames the dealer and [`check_blame`] proves it.
    BadShareTo(PartyId),
}

/// What the host must do after feeding a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DkgOutput {
    /// Post this as my message for `round` (round 2: one HPKE ciphertext per
    /// other participant in `direct`, no broadcast).
    Submit {
        /// The round it is for.
        round: u32,
        /// The whole message: one operation.
        message: RoundMessage,
    },
    /// part3 succeeded. The host seals `share` in its TPM, then posts
    /// `group_public_key` as this party's session result.
    Complete {
        /// The 32-byte key signatures verify under ([`crate::group_public_key`]).
        group_public_key: Vec<u8>,
        /// My key share.
        share: KeyShare,
    },
    /// A participant misbehaved: the host posts a Blame operation naming
    /// `culprit` with `proof`; anyone checks it with [`check_blame`]. The
    /// session cannot complete after a blame.
    Blame {
        /// The proven culprit.
        culprit: PartyId,
        /// What it did (also re-derived by [`check_blame`]).
        kind: BlameKind,
        /// The proof bytes (public faults: a tag; share faults: my revealed
        /// X25519 secret for that one sender).
        proof: Vec<u8>,
    },
}

/// One participant's key generation. Secrets (frost's secret packages and
/// the X25519 recipient secrets) are zeroized as soon as they are spent and
/// on drop; `Debug` shows no secret.
pub struct Dkg {
    inner: Inner,
}

enum Inner {
    Ed(Box<Core<Ed>>),
    Tr(Box<Core<Tr>>),
}

impl fmt::Debug for Dkg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (me, phase) = match &self.inner {
            Inner::Ed(c) => (c.me, c.phase.name()),
            Inner::Tr(c) => (c.me, c.phase.name()),
        };
        f.debug_struct("Dkg")
            .field("me", &me)
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

impl Dkg {
    /// Round 1: frost `dkg::part1` plus fresh X25519 recipient keys, one per
    /// other participant (the key that participant must seal its share to me
    /// with), published in my round-1 broadcast. Returns the round-1 message
    /// to post.
    pub fn start<R: RngCore + CryptoRng>(
        ctx: SessionCtx,
        me: PartyId,
        rng: &mut R,
    ) -> Result<(Dkg, RoundMessage), EngineError> {
        Self::start_inner(ctx, me, None, None, rng)
    }

    /// TEST-ONLY: [`Dkg::start`] with a deliberate fault (see [`DkgFault`]).
    /// The host exposes this only in dev mode, for the bad-dealer system test.
    pub fn start_with_fault<R: RngCore + CryptoRng>(
        ctx: SessionCtx,
        me: PartyId,
        fault: DkgFault,
        rng: &mut R,
    ) -> Result<(Dkg, RoundMessage), EngineError> {
        Self::start_inner(ctx, me, Some(fault), None, rng)
    }

    /// Share refresh (proactive security): the same two rounds, with frost
    /// `refresh_dkg_part1/part2/refresh_dkg_shares`, over `old`, my current
    /// share. [`DkgOutput::Complete`] then carries my NEW share under the SAME
    /// group key (the engine checks it); the host seals the new share and
    /// erases the old one once the session executes. `ctx.participants` must
    /// be exactly the key's parties and `ctx.threshold` its `min_signers`.
    /// Blame is checked with [`check_refresh_blame`].
    pub fn start_refresh<R: RngCore + CryptoRng>(
        ctx: SessionCtx,
        me: PartyId,
        old: &KeyShare,
        rng: &mut R,
    ) -> Result<(Dkg, RoundMessage), EngineError> {
        if old.scheme != ctx.scheme {
            return Err(EngineError::InvalidContext(
                crate::error::ContextProblem::KeyShareMismatch,
            ));
        }
        Self::start_inner(ctx, me, None, Some(old), rng)
    }

    fn start_inner<R: RngCore + CryptoRng>(
        ctx: SessionCtx,
        me: PartyId,
        fault: Option<DkgFault>,
        refresh_of: Option<&KeyShare>,
        rng: &mut R,
    ) -> Result<(Dkg, RoundMessage), EngineError> {
        Ok(match ctx.scheme {
            Scheme::Ed25519 => {
                let (c, m) = Core::<Ed>::start(ctx, me, fault, refresh_of, rng)?;
                (
                    Dkg {
                        inner: Inner::Ed(Box::new(c)),
                    },
                    m,
                )
            }
            Scheme::Secp256k1Tr => {
                let (c, m) = Core::<Tr>::start(ctx, me, fault, refresh_of, rng)?;
                (
                    Dkg {
                        inner: Inner::Tr(Box::new(c)),
                    },
                    m,
                )
            }
        })
    }

    /// Feeds one decided message of the session, in log order (every
    /// party's messages, my own included). Messages that the log should
    /// never have decided (non-participant, unknown round, repeat, oversized
    /// part, or my own id carrying something I did not produce) are refused
    /// with a typed error and leave the state unchanged; a participant's bad
    /// content yields [`DkgOutput::Blame`]. After completion or a blame,
    /// further messages are accepted and ignored.
    pub fn on_message<R: RngCore + CryptoRng>(
        &mut self,
        posted: &Posted,
        rng: &mut R,
    ) -> Result<Vec<DkgOutput>, EngineError> {
        match &mut self.inner {
            Inner::Ed(c) => c.on_message(posted, rng),
            Inner::Tr(c) => c.on_message(posted, rng),
        }
    }

    /// Whether the DKG has completed or failed (nothing more will come out).
    pub fn is_finished(&self) -> bool {
        match &self.inner {
            Inner::Ed(c) => matches!(c.phase, Phase::Done | Phase::Failed),
            Inner::Tr(c) => matches!(c.phase, Phase::Done | Phase::Failed),
        }
    }

    /// The participants whose message for `round` has not been decided yet:
    /// the suspects when the round's deadline passes (omission is suspected,
    /// never proven).
    pub fn missing(&self, round: u32) -> Vec<PartyId> {
        match &self.inner {
            Inner::Ed(c) => c.missing(round),
            Inner::Tr(c) => c.missing(round),
        }
    }
}

enum Phase<C: Suite> {
    AwaitRound1(round1::SecretPackage<C>),
    AwaitRound2(round2::SecretPackage<C>),
    Done,
    Failed,
}

impl<C: Suite> Phase<C> {
    fn name(&self) -> &'static str {
        match self {
            Phase::AwaitRound1(_) => "await-round-1",
            Phase::AwaitRound2(_) => "await-round-2",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

/// A valid round-1 broadcast.
#[derive(Clone)]
pub(crate) struct Round1<C: Suite> {
    pub package: round1::Package<C>,
    pub keys: BTreeMap<PartyId, [u8; 32]>,
}

struct Core<C: Suite> {
    ctx: SessionCtx,
    protocol: Protocol,
    /// Refresh only: my current key package and the group's public key package.
    old: Option<(KeyPackage<C>, PublicKeyPackage<C>)>,
    me: PartyId,
    fault: Option<DkgFault>,
    my_round1: RoundMessage,
    my_round2: Option<RoundMessage>,
    /// My recipient secret for each other participant (the sender).
    secrets: BTreeMap<PartyId, RecipientSecret>,
    round1: BTreeMap<PartyId, Result<Round1<C>, BlameKind>>,
    round2: BTreeMap<PartyId, RoundMessage>,
    phase: Phase<C>,
}

impl<C: Suite> Core<C> {
    fn start<R: RngCore + CryptoRng>(
        ctx: SessionCtx,
        me: PartyId,
        fault: Option<DkgFault>,
        refresh_of: Option<&KeyShare>,
        rng: &mut R,
    ) -> Result<(Self, RoundMessage), EngineError> {
        ctx.validate()?;
        if !ctx.has(me) {
            return Err(EngineError::InvalidContext(
                crate::error::ContextProblem::NotAParticipant,
            ));
        }
        let id = me.identifier::<C>()?;
        let (protocol, old, (secret1, package)) = match refresh_of {
            None => (
                Protocol::Dkg,
                None,
                dkg::part1::<C, _>(id, ctx.n(), ctx.threshold, &mut *rng)?,
            ),
            Some(share) => {
                let old = share.decode::<C>()?;
                let mismatch =
                    EngineError::InvalidContext(crate::error::ContextProblem::KeyShareMismatch);
                // A refresh covers exactly the key's parties at its threshold.
                let ids: Vec<Identifier<C>> = ctx
                    .participants
                    .iter()
                    .map(|p| p.identifier::<C>())
                    .collect::<Result<_, _>>()?;
                if old.party != me
                    || old.public_key_package.min_signers() != Some(ctx.threshold)
                    || !old
                        .public_key_package
                        .verifying_shares()
                        .keys()
                        .eq(ids.iter())
                {
                    return Err(mismatch);
                }
                let round1 =
                    refresh::refresh_dkg_part1::<C, _>(id, ctx.n(), ctx.threshold, &mut *rng)?;
                (
                    Protocol::Refresh,
                    Some((old.key_package, old.public_key_package)),
                    round1,
                )
            }
        };
        let mut secrets = BTreeMap::new();
        let mut recipient_keys = BTreeMap::new();
        for j in ctx.others(me) {
            let (sk, pk) = seal::generate_recipient(rng);
            secrets.insert(j, sk);
            recipient_keys.insert(j, pk);
        }
        let wire = Round1Wire {
            version: WIRE_VERSION,
            scheme: C::SCHEME.tag(),
            frost_package: package.serialize()?,
            recipient_keys,
        };
        let message = RoundMessage::broadcast(encode(&wire)?);
        let core = Core {
            ctx,
            protocol,
            old,
            me,
            fault,
            my_round1: message.clone(),
            my_round2: None,
            secrets,
            round1: BTreeMap::new(),
            round2: BTreeMap::new(),
            phase: Phase::AwaitRound1(secret1),
        };
        Ok((core, message))
    }

    fn missing(&self, round: u32) -> Vec<PartyId> {
        let seen: Vec<PartyId> = match round {
            DKG_ROUND_1 => self.round1.keys().copied().collect(),
            DKG_ROUND_2 => self.round2.keys().copied().collect(),
            _ => return Vec::new(),
        };
        self.ctx
            .participants
            .iter()
            .copied()
            .filter(|p| !seen.contains(p))
            .collect()
    }

    fn on_message<R: RngCore + CryptoRng>(
        &mut self,
        posted: &Posted,
        rng: &mut R,
    ) -> Result<Vec<DkgOutput>, EngineError> {
        let from = posted.from;
        if !self.ctx.has(from) {
            return Err(EngineError::NotAParticipant(from));
        }
        let seen = match posted.round {
            DKG_ROUND_1 => self.round1.contains_key(&from),
            DKG_ROUND_2 => self.round2.contains_key(&from),
            round => return Err(EngineError::UnknownRound { from, round }),
        };
        if seen {
            return Err(EngineError::DuplicateMessage {
                from,
                round: posted.round,
            });
        }
        posted.message.check_sizes()?;
        if from == self.me {
            let mine = match posted.round {
                DKG_ROUND_1 => Some(&self.my_round1),
                _ => self.my_round2.as_ref(),
            };
            if mine != Some(&posted.message) {
                return Err(EngineError::OwnMessageMismatch {
                    round: posted.round,
                });
            }
        }
        if posted.round == DKG_ROUND_1 {
            let parsed = parse_round1::<C>(&self.ctx, self.protocol, from, &posted.message);
            self.round1.insert(from, parsed);
            if self.round1.len() == self.ctx.participants.len()
                && matches!(self.phase, Phase::AwaitRound1(_))
            {
                return self.finish_round1(rng);
            }
        } else {
            self.round2.insert(from, posted.message.clone());
            if self.round2.len() == self.ctx.participants.len()
                && matches!(self.phase, Phase::AwaitRound2(_))
            {
                return self.finish_round2();
            }
        }
        Ok(Vec::new())
    }

    fn fail(&mut self, blames: Vec<DkgOutput>) -> Result<Vec<DkgOutput>, EngineError> {
        self.phase = Phase::Failed;
        self.secrets.clear();
        Ok(blames)
    }

    /// The others' valid round-1 packages keyed by authenticated author.
    fn round1_map(&self) -> Result<BTreeMap<Identifier<C>, round1::Package<C>>, EngineError> {
        let mut map = BTreeMap::new();
        for (p, r) in &self.round1 {
            if *p == self.me {
                continue;
            }
            // finish_round1 fails the session before this is reached with
            // any invalid entry.
            let r = r.as_ref().map_err(|_| EngineError::Malformed {
                what: "round-1 broadcast",
            })?;
            map.insert(p.identifier::<C>()?, r.package.clone());
        }
        Ok(map)
    }

    fn finish_round1<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<Vec<DkgOutput>, EngineError> {
        let blames: Vec<DkgOutput> = self
            .round1
            .iter()
            .filter_map(|(p, r)| r.as_ref().err().map(|kind| public_blame(*p, *kind)))
            .collect::<Result<_, _>>()?;
        if !blames.is_empty() {
            return self.fail(blames);
        }
        let Phase::AwaitRound1(secret1) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Ok(Vec::new());
        };
        let map = self.round1_map()?;
        let (secret2, packages) = match self.protocol {
            Protocol::Dkg => dkg::part2(secret1, &map)?,
            Protocol::Refresh => refresh::refresh_dkg_part2(secret1, &map)?,
        };
        let mut direct = BTreeMap::new();
        for j in self.ctx.others(self.me).collect::<Vec<_>>() {
            let package = packages
                .get(&j.identifier::<C>()?)
                .ok_or(EngineError::Frost("part2 omitted a recipient".into()))?;
            let mut plaintext = Zeroizing::new(package.serialize()?);
            if self.fault == Some(DkgFault::BadShareTo(j)) {
                plaintext = corrupt_share::<C>(package)?;
            }
            let pk = match self.round1.get(&j) {
                Some(Ok(r)) => r.keys.get(&self.me).copied(),
                _ => None,
            }
            .ok_or(EngineError::Malformed {
                what: "round-1 recipient keys",
            })?;
            let binding = self.binding(DKG_ROUND_2, self.me, j);
            direct.insert(j, seal::seal(rng, &pk, &binding, &plaintext)?);
        }
        drop(packages);
        let message = RoundMessage {
            broadcast: None,
            direct,
        };
        self.my_round2 = Some(message.clone());
        self.phase = Phase::AwaitRound2(secret2);
        Ok(vec![DkgOutput::Submit {
            round: DKG_ROUND_2,
            message,
        }])
    }

    fn binding(&self, round: u32, sender: PartyId, recipient: PartyId) -> ShareBinding<'_> {
        ShareBinding {
            domain: self.protocol.domain(),
            cluster_id: &self.ctx.cluster_id,
            session_id: &self.ctx.session_id,
            round,
            sender,
            recipient,
            scheme: C::SCHEME,
        }
    }

    fn finish_round2(&mut self) -> Result<Vec<DkgOutput>, EngineError> {
        let mut blames = Vec::new();
        for (s, msg) in &self.round2 {
            if *s != self.me && !round2_addressing_ok(&self.ctx, *s, msg) {
                blames.push(public_blame(*s, BlameKind::MissingOrMisaddressedShare)?);
            }
        }
        let mut shares = BTreeMap::new();
        for s in self.ctx.others(self.me) {
            let (Some(msg), Some(Ok(r1)), Some(sk)) = (
                self.round2.get(&s),
                self.round1.get(&s),
                self.secrets.get(&s),
            ) else {
                continue;
            };
            if !round2_addressing_ok(&self.ctx, s, msg) {
                continue;
            }
            let ct = msg
                .direct
                .get(&self.me)
                .map(Vec::as_slice)
                .unwrap_or_default();
            match judge_share::<C>(&self.ctx, self.protocol, s, self.me, sk, &r1.package, ct) {
                Ok(p) => {
                    shares.insert(s.identifier::<C>()?, p);
                }
                Err(kind) => {
                    let proof = encode(&BlameProofWire {
                        version: WIRE_VERSION,
                        evidence: Evidence::RevealedKey(*seal::secret_bytes(sk)),
                    })?;
                    blames.push(DkgOutput::Blame {
                        culprit: s,
                        kind,
                        proof,
                    });
                }
            }
        }
        if !blames.is_empty() {
            return self.fail(blames);
        }
        self.secrets.clear();
        let Phase::AwaitRound2(secret2) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Ok(Vec::new());
        };
        let map = self.round1_map()?;
        let (key_package, public_key_package) = match &self.old {
            None => dkg::part3(&secret2, &map, &shares)?,
            Some((old_kp, old_pkp)) => {
                let (kp, pkp) = refresh::refresh_dkg_shares(
                    &secret2,
                    &map,
                    &shares,
                    old_pkp.clone(),
                    old_kp.clone(),
                )?;
                if pkp.verifying_key() != old_pkp.verifying_key() {
                    return Err(EngineError::Frost("refresh changed the group key".into()));
                }
                (kp, pkp)
            }
        };
        self.old = None;
        drop(secret2);
        let share = KeyShare::from_frost(self.me, &key_package, &public_key_package)?;
        let group_public_key = C::group_key_bytes(public_key_package.verifying_key())?;
        self.phase = Phase::Done;
        Ok(vec![DkgOutput::Complete {
            group_public_key,
            share,
        }])
    }
}

fn public_blame(culprit: PartyId, kind: BlameKind) -> Result<DkgOutput, EngineError> {
    let proof = encode(&BlameProofWire {
        version: WIRE_VERSION,
        evidence: Evidence::Public,
    })?;
    Ok(DkgOutput::Blame {
        culprit,
        kind,
        proof,
    })
}

/// A different, valid scalar: flips the lowest bit of the first byte that
/// keeps the encoding canonical.
fn corrupt_share<C: Suite>(
    package: &round2::Package<C>,
) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let good = Zeroizing::new(package.signing_share().serialize());
    for i in 0..good.len() {
        let mut bad = good.clone();
        if let Some(b) = bad.get_mut(i) {
            *b ^= 1;
        }
        if let Ok(share) = SigningShare::<C>::deserialize(&bad) {
            return Ok(Zeroizing::new(round2::Package::new(share).serialize()?));
        }
    }
    Err(EngineError::Frost("cannot corrupt share".into()))
}

/// THE round-1 rule: decodes `sender`'s round-1 message or names its fault.
pub(crate) fn parse_round1<C: Suite>(
    ctx: &SessionCtx,
    protocol: Protocol,
    sender: PartyId,
    msg: &RoundMessage,
) -> Result<Round1<C>, BlameKind> {
    let bytes = match (&msg.broadcast, msg.direct.is_empty()) {
        (Some(b), true) => b,
        _ => return Err(BlameKind::MalformedRound1),
    };
    let Round1 { package, keys } =
        decode_round1::<C>(bytes).map_err(|_| BlameKind::MalformedRound1)?;
    let others: Vec<PartyId> = ctx.others(sender).collect();
    if !keys.keys().copied().eq(others.iter().copied())
        || !keys.values().all(seal::key_is_contributory)
    {
        return Err(BlameKind::MalformedRound1);
    }
    let coefficients = package
        .commitment()
        .serialize()
        .map_err(|_| BlameKind::MalformedRound1)?;
    let expected = match protocol {
        Protocol::Dkg => usize::from(ctx.threshold),
        Protocol::Refresh => usize::from(ctx.threshold) - 1,
    };
    if coefficients.len() != expected {
        return Err(BlameKind::MalformedRound1);
    }
    if protocol == Protocol::Refresh {
        // frost does not verify refresh proofs of knowledge (the constant
        // term is forced to zero by prepending the identity instead).
        return Ok(Round1 { package, keys });
    }
    let id = sender
        .identifier::<C>()
        .map_err(|_| BlameKind::MalformedRound1)?;
    dkg::verify_proof_of_knowledge(id, package.commitment(), package.proof_of_knowledge())
        .map_err(|_| BlameKind::InvalidProofOfKnowledge)?;
    Ok(Round1 { package, keys })
}

/// Decodes a round-1 broadcast's bytes (the fuzzed decoder).
pub(crate) fn decode_round1<C: Suite>(bytes: &[u8]) -> Result<Round1<C>, EngineError> {
    let wire: Round1Wire = decode(bytes, "round-1 broadcast")?;
    C::SCHEME.expect_tag(wire.scheme, "round-1 broadcast")?;
    let package = round1::Package::<C>::deserialize(&wire.frost_package).map_err(|_| {
        EngineError::Malformed {
            what: "frost round-1 package",
        }
    })?;
    Ok(Round1 {
        package,
        keys: wire.recipient_keys,
    })
}

/// Decodes a round-1 broadcast for `scheme`, as the engine would: the typed
/// error says whether it is undecodable or for another ciphersuite. For
/// tools and the fuzzer; [`Dkg`] applies the same decoder.
pub fn decode_round1_broadcast(scheme: Scheme, bytes: &[u8]) -> Result<(), EngineError> {
    match scheme {
        Scheme::Ed25519 => decode_round1::<Ed>(bytes).map(|_| ()),
        Scheme::Secp256k1Tr => decode_round1::<Tr>(bytes).map(|_| ()),
    }
}

/// THE round-2 addressing rule: no broadcast, and direct parts for exactly
/// the other participants.
pub(crate) fn round2_addressing_ok(ctx: &SessionCtx, sender: PartyId, msg: &RoundMessage) -> bool {
    msg.broadcast.is_none() && msg.direct.keys().copied().eq(ctx.others(sender))
}

/// THE share rule: opens `sender`'s ciphertext for `recipient` with the
/// recipient's secret for that sender and checks it against the sender's
/// round-1 commitment.
fn judge_share<C: Suite>(
    ctx: &SessionCtx,
    protocol: Protocol,
    sender: PartyId,
    recipient: PartyId,
    sk: &RecipientSecret,
    sender_round1: &round1::Package<C>,
    ciphertext: &[u8],
) -> Result<round2::Package<C>, BlameKind> {
    let binding = ShareBinding {
        domain: protocol.domain(),
        cluster_id: &ctx.cluster_id,
        session_id: &ctx.session_id,
        round: DKG_ROUND_2,
        sender,
        recipient,
        scheme: C::SCHEME,
    };
    let plaintext =
        seal::open(sk, &binding, ciphertext).map_err(|_| BlameKind::UndecryptableShare)?;
    let package =
        round2::Package::<C>::deserialize(&plaintext).map_err(|_| BlameKind::UndecryptableShare)?;
    let id = recipient
        .identifier::<C>()
        .map_err(|_| BlameKind::UndecryptableShare)?;
    let commitment = match protocol {
        Protocol::Dkg => sender_round1.commitment().clone(),
        // Refresh commitments travel without their identity constant term.
        Protocol::Refresh => VerifiableSecretSharingCommitment::new(
            std::iter::once(CoefficientCommitment::new(<C::Group as Group>::identity()))
                .chain(sender_round1.commitment().coefficients().iter().copied())
                .collect(),
        ),
    };
    SecretShare::new(id, *package.signing_share(), commitment)
        .verify()
        .map_err(|_| BlameKind::InvalidSecretShare)?;
    Ok(package)
}

/// Checks a blame claim from the decided log alone (every party's firmware
/// via its host, and the offline auditor). `log` is the session's decided
/// messages in order; for each author and round the first message counts
/// (the engine refuses repeats). Returns [`BlameVerdict::Culprit`] when the
/// log and proof show the culprit's fault, [`BlameVerdict::FalseAccusation`]
/// when they show it behaved, and [`BlameError`] when the claim cannot be
/// evaluated (bad proof encoding, or the log lacks the messages concerned).
pub fn check_blame(
    ctx: &SessionCtx,
    log: &[Posted],
    accuser: PartyId,
    culprit: PartyId,
    proof: &[u8],
) -> Result<BlameVerdict, BlameError> {
    match ctx.scheme {
        Scheme::Ed25519 => check_blame_for::<Ed>(ctx, Protocol::Dkg, log, accuser, culprit, proof),
        Scheme::Secp256k1Tr => {
            check_blame_for::<Tr>(ctx, Protocol::Dkg, log, accuser, culprit, proof)
        }
    }
}

/// [`check_blame`] for a share-refresh session ([`Dkg::start_refresh`]):
/// the same rules, with refresh commitments (t − 1 entries, no proof of
/// knowledge) and the refresh HPKE domain.
pub fn check_refresh_blame(
    ctx: &SessionCtx,
    log: &[Posted],
    accuser: PartyId,
    culprit: PartyId,
    proof: &[u8],
) -> Result<BlameVerdict, BlameError> {
    match ctx.scheme {
        Scheme::Ed25519 => {
            check_blame_for::<Ed>(ctx, Protocol::Refresh, log, accuser, culprit, proof)
        }
        Scheme::Secp256k1Tr => {
            check_blame_for::<Tr>(ctx, Protocol::Refresh, log, accuser, culprit, proof)
        }
    }
}

fn first_message(log: &[Posted], round: u32, from: PartyId) -> Option<&RoundMessage> {
    log.iter()
        .find(|p| p.round == round && p.from == from)
        .map(|p| &p.message)
}

fn check_blame_for<C: Suite>(
    ctx: &SessionCtx,
    protocol: Protocol,
    log: &[Posted],
    accuser: PartyId,
    culprit: PartyId,
    proof: &[u8],
) -> Result<BlameVerdict, BlameError> {
    ctx.validate().map_err(|e| match e {
        EngineError::InvalidContext(p) => BlameError::InvalidContext(p),
        _ => BlameError::LogIncomplete("session parameters"),
    })?;
    if accuser == culprit || !ctx.has(accuser) || !ctx.has(culprit) {
        return Err(BlameError::Parties { accuser, culprit });
    }
    let proof: BlameProofWire =
        decode(proof, "blame proof").map_err(|_| BlameError::MalformedProof)?;
    let culprit_r1 = first_message(log, DKG_ROUND_1, culprit)
        .ok_or(BlameError::LogIncomplete("the culprit's round-1 message"))?;
    let culprit_r1 = match parse_round1::<C>(ctx, protocol, culprit, culprit_r1) {
        Ok(r) => r,
        Err(kind) => return Ok(BlameVerdict::Culprit(kind)),
    };
    let culprit_r2 = first_message(log, DKG_ROUND_2, culprit);
    if let Some(m) = culprit_r2 {
        if !round2_addressing_ok(ctx, culprit, m) {
            return Ok(BlameVerdict::Culprit(BlameKind::MissingOrMisaddressedShare));
        }
    }
    let revealed = match proof.evidence {
        Evidence::Public => return Ok(BlameVerdict::FalseAccusation),
        Evidence::RevealedKey(k) => Zeroizing::new(k),
    };
    let accuser_r1 = first_message(log, DKG_ROUND_1, accuser)
        .ok_or(BlameError::LogIncomplete("the accuser's round-1 message"))?;
    let accuser_r1 = parse_round1::<C>(ctx, protocol, accuser, accuser_r1)
        .map_err(|_| BlameError::LogIncomplete("the accuser's round-1 broadcast is invalid"))?;
    let sk = seal::secret_from_bytes(&revealed).map_err(|_| BlameError::MalformedProof)?;
    if accuser_r1.keys.get(&culprit) != Some(&seal::public_of(&sk)) {
        return Ok(BlameVerdict::FalseAccusation);
    }
    let culprit_r2 =
        culprit_r2.ok_or(BlameError::LogIncomplete("the culprit's round-2 message"))?;
    let ct = culprit_r2
        .direct
        .get(&accuser)
        .map(Vec::as_slice)
        .unwrap_or_default();
    Ok(
        match judge_share::<C>(
            ctx,
            protocol,
            culprit,
            accuser,
            &sk,
            &culprit_r1.package,
            ct,
        ) {
            Ok(_) => BlameVerdict::FalseAccusation,
            Err(kind) => BlameVerdict::Culprit(kind),
        },
    )
}

/// Forges a blame proof that reveals an arbitrary key (tests of false
/// accusations use it through [`crate::testing`]).
#[cfg(any(test, feature = "testing"))]
pub(crate) fn revealed_key_proof(key: [u8; 32]) -> Vec<u8> {
    encode(&BlameProofWire {
        version: WIRE_VERSION,
        evidence: Evidence::RevealedKey(key),
    })
    .unwrap_or_default()
}

impl Dkg {
    /// TEST-ONLY: my recipient secret for `sender`, so that a test can
    /// build the proof an honest accuser would send for a good share (a
    /// false accusation). `None` once secrets are erased.
    #[cfg(any(test, feature = "testing"))]
    pub fn false_accusation_proof(&self, sender: PartyId) -> Option<Vec<u8>> {
        let key = match &self.inner {
            Inner::Ed(c) => c.secrets.get(&sender).map(seal::secret_bytes),
            Inner::Tr(c) => c.secrets.get(&sender).map(seal::secret_bytes),
        }?;
        Some(revealed_key_proof(*key))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test helpers: a failure is the test failing
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha_06::rand_core::SeedableRng;
    use rand_chacha_06::ChaCha20Rng;
    use rand_core::RngCore;

    pub(crate) fn ctx(scheme: Scheme, n: u16, t: u16) -> SessionCtx {
        SessionCtx {
            cluster_id: [0xC1; 32],
            session_id: [0x5E; 32],
            scheme,
            participants: (1..=n).map(PartyId).collect(),
            threshold: t,
        }
    }

    /// The outcome of one simulated DKG.
    pub(crate) struct Run {
        pub log: Vec<Posted>,
        pub outputs: BTreeMap<PartyId, Vec<DkgOutput>>,
    }

    /// Runs a DKG where a "consensus" decides pending messages in an order
    /// drawn from `order_seed`, feeding each decided message to every party.
    pub(crate) fn run(ctx: &SessionCtx, faults: &[(PartyId, DkgFault)], order_seed: u64) -> Run {
        let mut rng = ChaCha20Rng::seed_from_u64(order_seed ^ 0xD1CE);
        let mut order = ChaCha20Rng::seed_from_u64(order_seed);
        let mut parties = BTreeMap::new();
        let mut pending = Vec::new();
        for &p in &ctx.participants {
            let fault = faults.iter().find(|(f, _)| *f == p).map(|(_, f)| *f);
            let (d, m) = match fault {
                Some(f) => Dkg::start_with_fault(ctx.clone(), p, f, &mut rng).unwrap(),
                None => Dkg::start(ctx.clone(), p, &mut rng).unwrap(),
            };
            parties.insert(p, d);
            pending.push(Posted {
                round: DKG_ROUND_1,
                from: p,
                message: m,
            });
        }
        let mut log = Vec::new();
        let mut outputs: BTreeMap<PartyId, Vec<DkgOutput>> = BTreeMap::new();
        while !pending.is_empty() {
            let i = (order.next_u64() % pending.len() as u64) as usize;
            let decided = pending.swap_remove(i);
            for (p, d) in parties.iter_mut() {
                for out in d.on_message(&decided, &mut rng).unwrap() {
                    if let DkgOutput::Submit { round, message } = &out {
                        pending.push(Posted {
                            round: *round,
                            from: *p,
                            message: message.clone(),
                        });
                    }
                    outputs.entry(*p).or_default().push(out);
                }
            }
            log.push(decided);
        }
        Run { log, outputs }
    }

    pub(crate) fn completed(run: &Run) -> BTreeMap<PartyId, (Vec<u8>, KeyShare)> {
        let mut out = BTreeMap::new();
        for (p, outs) in &run.outputs {
            for o in outs {
                if let DkgOutput::Complete {
                    group_public_key,
                    share,
                } = o
                {
                    out.insert(*p, (group_public_key.clone(), share.clone()));
                }
            }
        }
        out
    }

    fn blames(run: &Run) -> Vec<(PartyId, PartyId, BlameKind, Vec<u8>)> {
        let mut v = Vec::new();
        for (p, outs) in &run.outputs {
            for o in outs {
                if let DkgOutput::Blame {
                    culprit,
                    kind,
                    proof,
                } = o
                {
                    v.push((*p, *culprit, *kind, proof.clone()));
                }
            }
        }
        v
    }

    fn scheme() -> impl Strategy<Value = Scheme> {
        prop_oneof![Just(Scheme::Ed25519), Just(Scheme::Secp256k1Tr)]
    }

    fn n_t() -> impl Strategy<Value = (u16, u16)> {
        (2u16..=7).prop_flat_map(|n| (Just(n), 2u16..=n))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn honest_parties_agree_on_one_group_key(s in scheme(), (n, t) in n_t(), seed in any::<u64>()) {
            let c = ctx(s, n, t);
            let r = run(&c, &[], seed);
            let done = completed(&r);
            prop_assert_eq!(done.len(), usize::from(n));
            let keys: Vec<_> = done.values().map(|(k, _)| k.clone()).collect();
            prop_assert!(keys.iter().all(|k| k == &keys[0] && k.len() == 32));
            for (p, (k, share)) in &done {
                prop_assert_eq!(share.party().unwrap(), *p);
                prop_assert_eq!(&share.group_public_key().unwrap(), k);
                let again = KeyShare::from_parts(s, &share.secret, &share.public).unwrap();
                prop_assert_eq!(&again, share);
            }
            prop_assert!(blames(&r).is_empty());
            // Nobody's round-2 message carries a plaintext share.
            for posted in r.log.iter().filter(|p| p.round == DKG_ROUND_2) {
                prop_assert!(posted.message.broadcast.is_none());
                for (to, ct) in &posted.message.direct {
                    let (_, share) = &done[to];
                    prop_assert!(!ct.windows(share.secret.len()).any(|w| w == share.secret.as_slice()));
                }
            }
        }

        #[test]
        fn a_bad_dealer_is_always_named_and_proven(s in scheme(), (n, t) in n_t(), seed in any::<u64>(), d in any::<u16>(), v in any::<u16>()) {
            let dealer = PartyId(d % n + 1);
            let victim = PartyId((dealer.0 + v % (n - 1)) % n + 1);
            prop_assume!(victim != dealer);
            let c = ctx(s, n, t);
            let r = run(&c, &[(dealer, DkgFault::BadShareTo(victim))], seed);
            let b = blames(&r);
            prop_assert_eq!(b.len(), 1);
            let (accuser, culprit, kind, proof) = &b[0];
            prop_assert_eq!((*accuser, *culprit, *kind), (victim, dealer, BlameKind::InvalidSecretShare));
            prop_assert_eq!(check_blame(&c, &r.log, victim, dealer, proof), Ok(BlameVerdict::Culprit(BlameKind::InvalidSecretShare)));
            // The victim's proof does not let anyone else blame the dealer.
            for other in c.others(dealer).filter(|p| *p != victim) {
                prop_assert_eq!(check_blame(&c, &r.log, other, dealer, proof), Ok(BlameVerdict::FalseAccusation));
            }
            prop_assert!(!completed(&r).contains_key(&victim));
        }

        #[test]
        fn a_false_accusation_is_always_exposed(s in scheme(), (n, t) in n_t(), seed in any::<u64>()) {
            let c = ctx(s, n, t);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            // Party 1's real recipient key for party 2, revealed over a good share.
            let (d1, _) = Dkg::start(c.clone(), PartyId(1), &mut rng).unwrap();
            let real = d1.false_accusation_proof(PartyId(2)).unwrap();
            let r = run(&c, &[], seed);
            // A different run: the revealed key is not the one published.
            prop_assert_eq!(check_blame(&c, &r.log, PartyId(1), PartyId(2), &real), Ok(BlameVerdict::FalseAccusation));
            let public = encode(&BlameProofWire { version: WIRE_VERSION, evidence: Evidence::Public }).unwrap();
            prop_assert_eq!(check_blame(&c, &r.log, PartyId(1), PartyId(2), &public), Ok(BlameVerdict::FalseAccusation));
        }
    }

    /// Feeds `log` to every party in order and returns the messages they
    /// submit in answer (round 2 when `log` is a whole round 1).
    fn submissions(
        parties: &mut [(PartyId, Dkg)],
        log: &[Posted],
        rng: &mut ChaCha20Rng,
    ) -> Vec<Posted> {
        let mut out = Vec::new();
        for posted in log {
            for (p, d) in parties.iter_mut() {
                for o in d.on_message(posted, rng).unwrap() {
                    if let DkgOutput::Submit { round, message } = o {
                        out.push(Posted {
                            round,
                            from: *p,
                            message,
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn an_accusation_with_the_real_key_over_a_good_share_is_false() {
        for s in Scheme::ALL {
            let c = ctx(s, 3, 2);
            let mut rng = ChaCha20Rng::seed_from_u64(7);
            let mut parties: Vec<(PartyId, Dkg)> = Vec::new();
            let mut log = Vec::new();
            for p in c.participants.clone() {
                let (d, m) = Dkg::start(c.clone(), p, &mut rng).unwrap();
                parties.push((p, d));
                log.push(Posted {
                    round: 1,
                    from: p,
                    message: m,
                });
            }
            let proof = parties[0].1.false_accusation_proof(PartyId(2)).unwrap();
            let round2 = submissions(&mut parties, &log, &mut rng);
            log.extend(round2);
            assert_eq!(
                check_blame(&c, &log, PartyId(1), PartyId(2), &proof),
                Ok(BlameVerdict::FalseAccusation)
            );
            // Party 3 cannot reuse party 1's key to accuse party 2.
            assert_eq!(
                check_blame(&c, &log, PartyId(3), PartyId(2), &proof),
                Ok(BlameVerdict::FalseAccusation)
            );
            assert_eq!(
                check_blame(&c, &log, PartyId(1), PartyId(1), &proof),
                Err(BlameError::Parties {
                    accuser: PartyId(1),
                    culprit: PartyId(1)
                })
            );
            assert_eq!(
                check_blame(&c, &log, PartyId(1), PartyId(2), b"junk"),
                Err(BlameError::MalformedProof)
            );
            assert_eq!(
                check_blame(&c, &log[..1], PartyId(1), PartyId(2), &proof),
                Err(BlameError::LogIncomplete("the culprit's round-1 message"))
            );
        }
    }

    /// Feeds a full honest round 1 to a fresh party 1 of a 3-party DKG, with
    /// party 2's round-1 message replaced by `bad`; returns party 1's outputs.
    fn feed_round1_with(s: Scheme, bad: RoundMessage) -> (Vec<DkgOutput>, Vec<Posted>, SessionCtx) {
        let c = ctx(s, 3, 2);
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let (mut d1, m1) = Dkg::start(c.clone(), PartyId(1), &mut rng).unwrap();
        let (_, _m2) = Dkg::start(c.clone(), PartyId(2), &mut rng).unwrap();
        let (_, m3) = Dkg::start(c.clone(), PartyId(3), &mut rng).unwrap();
        let log = vec![
            Posted {
                round: 1,
                from: PartyId(1),
                message: m1,
            },
            Posted {
                round: 1,
                from: PartyId(2),
                message: bad,
            },
            Posted {
                round: 1,
                from: PartyId(3),
                message: m3,
            },
        ];
        let mut outs = Vec::new();
        for p in &log {
            outs.extend(d1.on_message(p, &mut rng).unwrap());
        }
        (outs, log, c)
    }

    fn expect_public_blame(s: Scheme, bad: RoundMessage, want: BlameKind) {
        let (outs, log, c) = feed_round1_with(s, bad);
        let [DkgOutput::Blame {
            culprit,
            kind,
            proof,
        }] = outs.as_slice()
        else {
            panic!("expected one blame, got {outs:?}");
        };
        assert_eq!((*culprit, *kind), (PartyId(2), want));
        assert_eq!(
            check_blame(&c, &log, PartyId(1), PartyId(2), proof),
            Ok(BlameVerdict::Culprit(want))
        );
    }

    fn honest_round1(s: Scheme, p: u16, seed: u64) -> Round1Wire {
        let c = ctx(s, 3, 2);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (_, m) = Dkg::start(c, PartyId(p), &mut rng).unwrap();
        decode(m.broadcast.as_deref().unwrap(), "t").unwrap()
    }

    #[test]
    fn malformed_round1_broadcasts_are_publicly_blamed() {
        for s in Scheme::ALL {
            let other = if s == Scheme::Ed25519 {
                Scheme::Secp256k1Tr
            } else {
                Scheme::Ed25519
            };
            expect_public_blame(
                s,
                RoundMessage::broadcast(vec![1, 2, 3]),
                BlameKind::MalformedRound1,
            );
            expect_public_blame(s, RoundMessage::default(), BlameKind::MalformedRound1);
            // Wrong ciphersuite: a well-formed broadcast of the other scheme.
            let foreign = encode(&honest_round1(other, 2, 3)).unwrap();
            assert!(matches!(
                decode_round1_broadcast(s, &foreign),
                Err(EngineError::WrongCiphersuite { .. })
            ));
            expect_public_blame(
                s,
                RoundMessage::broadcast(foreign),
                BlameKind::MalformedRound1,
            );
            // Mis-keyed: a key for a non-participant, a missing key, a low-order key.
            let mut w = honest_round1(s, 2, 3);
            let k = *w.recipient_keys.values().next().unwrap();
            w.recipient_keys.insert(PartyId(9), k);
            expect_public_blame(
                s,
                RoundMessage::broadcast(encode(&w).unwrap()),
                BlameKind::MalformedRound1,
            );
            let mut w = honest_round1(s, 2, 3);
            w.recipient_keys.remove(&PartyId(1));
            expect_public_blame(
                s,
                RoundMessage::broadcast(encode(&w).unwrap()),
                BlameKind::MalformedRound1,
            );
            let mut w = honest_round1(s, 2, 3);
            w.recipient_keys.insert(PartyId(1), [0; 32]);
            expect_public_blame(
                s,
                RoundMessage::broadcast(encode(&w).unwrap()),
                BlameKind::MalformedRound1,
            );
            // Direct parts in round 1.
            let mut m = RoundMessage::broadcast(encode(&honest_round1(s, 2, 3)).unwrap());
            m.direct.insert(PartyId(1), vec![0]);
            expect_public_blame(s, m, BlameKind::MalformedRound1);
            // Party 3's package (its proof of knowledge names party 3) posted by party 2.
            let mut w = honest_round1(s, 3, 4);
            w.recipient_keys = honest_round1(s, 2, 3).recipient_keys;
            expect_public_blame(
                s,
                RoundMessage::broadcast(encode(&w).unwrap()),
                BlameKind::InvalidProofOfKnowledge,
            );
        }
    }

    #[test]
    fn log_level_violations_are_typed_errors_and_change_nothing() {
        let c = ctx(Scheme::Ed25519, 3, 2);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (mut d1, m1) = Dkg::start(c.clone(), PartyId(1), &mut rng).unwrap();
        let (_, m2) = Dkg::start(c.clone(), PartyId(2), &mut rng).unwrap();
        let p2 = Posted {
            round: 1,
            from: PartyId(2),
            message: m2.clone(),
        };
        assert_eq!(d1.on_message(&p2, &mut rng), Ok(vec![]));
        assert_eq!(
            d1.on_message(&p2, &mut rng),
            Err(EngineError::DuplicateMessage {
                from: PartyId(2),
                round: 1
            })
        );
        let stranger = Posted {
            round: 1,
            from: PartyId(4),
            message: m2.clone(),
        };
        assert_eq!(
            d1.on_message(&stranger, &mut rng),
            Err(EngineError::NotAParticipant(PartyId(4)))
        );
        let later = Posted {
            round: 3,
            from: PartyId(3),
            message: m2.clone(),
        };
        assert_eq!(
            d1.on_message(&later, &mut rng),
            Err(EngineError::UnknownRound {
                from: PartyId(3),
                round: 3
            })
        );
        let big = Posted {
            round: 1,
            from: PartyId(3),
            message: RoundMessage::broadcast(vec![0; crate::MAX_PART_BYTES + 1]),
        };
        assert!(matches!(
            d1.on_message(&big, &mut rng),
            Err(EngineError::Oversized { .. })
        ));
        let forged_me = Posted {
            round: 1,
            from: PartyId(1),
            message: m2,
        };
        assert_eq!(
            d1.on_message(&forged_me, &mut rng),
            Err(EngineError::OwnMessageMismatch { round: 1 })
        );
        let early_me = Posted {
            round: 2,
            from: PartyId(1),
            message: RoundMessage::default(),
        };
        assert_eq!(
            d1.on_message(&early_me, &mut rng),
            Err(EngineError::OwnMessageMismatch { round: 2 })
        );
        assert_eq!(d1.missing(1), vec![PartyId(1), PartyId(3)]);
        let me = Posted {
            round: 1,
            from: PartyId(1),
            message: m1,
        };
        assert_eq!(d1.on_message(&me, &mut rng), Ok(vec![]));
        assert!(!d1.is_finished());
        assert!(!format!("{d1:?}").contains("secret"));
    }

    #[test]
    fn bad_contexts_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let c = ctx(Scheme::Ed25519, 3, 2);
        assert!(matches!(
            Dkg::start(c.clone(), PartyId(4), &mut rng),
            Err(EngineError::InvalidContext(
                crate::ContextProblem::NotAParticipant
            ))
        ));
        let mut c1 = c;
        c1.threshold = 1;
        assert!(matches!(
            Dkg::start(c1, PartyId(1), &mut rng),
            Err(EngineError::InvalidContext(
                crate::ContextProblem::ThresholdOutOfRange
            ))
        ));
    }

    #[test]
    fn misaddressed_and_undecryptable_round2_parts_are_blamed_with_proof() {
        for s in Scheme::ALL {
            let c = ctx(s, 3, 2);
            let mut rng = ChaCha20Rng::seed_from_u64(21);
            let mut parties: Vec<(PartyId, Dkg)> = Vec::new();
            let mut log = Vec::new();
            for p in c.participants.clone() {
                let (d, m) = Dkg::start(c.clone(), p, &mut rng).unwrap();
                parties.push((p, d));
                log.push(Posted {
                    round: 1,
                    from: p,
                    message: m,
                });
            }
            let mut round2 = BTreeMap::new();
            for posted in &log {
                for (p, d) in parties.iter_mut() {
                    for o in d.on_message(posted, &mut rng).unwrap() {
                        if let DkgOutput::Submit { message, .. } = o {
                            round2.insert(*p, message);
                        }
                    }
                }
            }
            // Case A: party 2 swaps its two ciphertexts (each is then sealed
            // to the wrong key and binding): undecryptable for both.
            let mut swapped = round2.clone();
            let m = swapped.get_mut(&PartyId(2)).unwrap();
            let a = m.direct.remove(&PartyId(1)).unwrap();
            let b = m.direct.remove(&PartyId(3)).unwrap();
            m.direct.insert(PartyId(1), b);
            m.direct.insert(PartyId(3), a);
            let mut log_a = log.clone();
            log_a.extend(swapped.into_iter().map(|(p, m)| Posted {
                round: 2,
                from: p,
                message: m,
            }));
            // Case B: party 2 omits party 3's part.
            let mut missing = round2.clone();
            missing
                .get_mut(&PartyId(2))
                .unwrap()
                .direct
                .remove(&PartyId(3));
            let mut log_b = log.clone();
            log_b.extend(missing.into_iter().map(|(p, m)| Posted {
                round: 2,
                from: p,
                message: m,
            }));

            // Party 2's own engine refuses the tampered message as not its own.
            for (p, d) in parties.iter_mut() {
                let mut outs = Vec::new();
                for posted in &log_a[3..] {
                    match d.on_message(posted, &mut rng) {
                        Ok(o) => outs.extend(o),
                        Err(e) => assert_eq!(
                            (*p, e),
                            (PartyId(2), EngineError::OwnMessageMismatch { round: 2 })
                        ),
                    }
                }
                if *p == PartyId(2) {
                    continue;
                }
                let [DkgOutput::Blame {
                    culprit,
                    kind,
                    proof,
                }] = outs.as_slice()
                else {
                    panic!("party {p:?}: expected one blame, got {outs:?}");
                };
                assert_eq!(
                    (*culprit, *kind),
                    (PartyId(2), BlameKind::UndecryptableShare)
                );
                assert_eq!(
                    check_blame(&c, &log_a, *p, PartyId(2), proof),
                    Ok(BlameVerdict::Culprit(BlameKind::UndecryptableShare))
                );
                // The same reveal over the honest log is a false accusation.
                let mut honest = log.clone();
                honest.extend(round2.iter().map(|(p, m)| Posted {
                    round: 2,
                    from: *p,
                    message: m.clone(),
                }));
                assert_eq!(
                    check_blame(&c, &honest, *p, PartyId(2), proof),
                    Ok(BlameVerdict::FalseAccusation)
                );
                assert!(d.is_finished());
            }
            let public = encode(&BlameProofWire {
                version: WIRE_VERSION,
                evidence: Evidence::Public,
            })
            .unwrap();
            assert_eq!(
                check_blame(&c, &log_b, PartyId(1), PartyId(2), &public),
                Ok(BlameVerdict::Culprit(BlameKind::MissingOrMisaddressedShare))
            );
        }
    }

    #[test]
    fn refresh_blame_uses_refresh_commitments_and_domain() {
        for s in Scheme::ALL {
            let c = ctx(s, 3, 2);
            let done = completed(&run(&c, &[], 31));
            let mut rng = ChaCha20Rng::seed_from_u64(32);
            let mut parties: Vec<(PartyId, Dkg)> = Vec::new();
            let mut log = Vec::new();
            for p in c.participants.clone() {
                let (d, m) = Dkg::start_refresh(c.clone(), p, &done[&p].1, &mut rng).unwrap();
                parties.push((p, d));
                log.push(Posted {
                    round: 1,
                    from: p,
                    message: m,
                });
            }
            let proof = parties[0].1.false_accusation_proof(PartyId(2)).unwrap();
            let round2 = submissions(&mut parties, &log, &mut rng);
            let mut honest = log.clone();
            honest.extend(round2.iter().cloned());
            // Party 2's share to party 1 is valid under its refresh commitment.
            assert_eq!(
                check_refresh_blame(&c, &honest, PartyId(1), PartyId(2), &proof),
                Ok(BlameVerdict::FalseAccusation)
            );
            // Read as a DKG log the same messages are malformed (t - 1 commitments).
            assert_eq!(
                check_blame(&c, &honest, PartyId(1), PartyId(2), &proof),
                Ok(BlameVerdict::Culprit(BlameKind::MalformedRound1))
            );
            // A swapped ciphertext is undecryptable, proven with the reveal.
            let mut tampered = log.clone();
            for p in &round2 {
                let mut p = p.clone();
                if p.from == PartyId(2) {
                    let a = p.message.direct.remove(&PartyId(1)).unwrap();
                    let b = p.message.direct.remove(&PartyId(3)).unwrap();
                    p.message.direct.insert(PartyId(1), b);
                    p.message.direct.insert(PartyId(3), a);
                }
                tampered.push(p);
            }
            assert_eq!(
                check_refresh_blame(&c, &tampered, PartyId(1), PartyId(2), &proof),
                Ok(BlameVerdict::Culprit(BlameKind::UndecryptableShare))
            );
            // All three complete with the old group key.
            for posted in &round2 {
                for (p, d) in parties.iter_mut() {
                    for o in d.on_message(posted, &mut rng).unwrap() {
                        if let DkgOutput::Complete {
                            group_public_key, ..
                        } = o
                        {
                            assert_eq!(group_public_key, done[p].0);
                        }
                    }
                }
            }
            assert!(parties.iter().all(|(_, d)| d.is_finished()));
            // A share of another party, or another threshold, is refused.
            let wrong = Dkg::start_refresh(c.clone(), PartyId(1), &done[&PartyId(2)].1, &mut rng);
            assert!(matches!(
                wrong,
                Err(EngineError::InvalidContext(
                    crate::ContextProblem::KeyShareMismatch
                ))
            ));
            let mut c3 = c.clone();
            c3.threshold = 3;
            let wrong = Dkg::start_refresh(c3, PartyId(1), &done[&PartyId(1)].1, &mut rng);
            assert!(matches!(
                wrong,
                Err(EngineError::InvalidContext(
                    crate::ContextProblem::KeyShareMismatch
                ))
            ));
        }
    }
}
