//! Threshold signing through the decided log, robust to stalling and
//! cheating signers: ROAST (Ruffing et al., CCS 2022) with the coordinator
//! as a pure function of the log, so every party computes the same attempts
//! and the same signature.
//!
//! Rounds: round 1 carries each candidate's first commitments; round
//! `1 + k` carries the signature shares of attempt `k`, each with the
//! signer's fresh commitments for a later attempt (ROAST's "respond and
//! re-enter the pool"). Every message is broadcast-only.
//!
//! The coordinator ([`Roast`]): the pool is the fresh commitments of
//! responsive, non-malicious candidates in log order. Whenever no attempt
//! is open and the pool holds `t` parties, attempt `k` starts with the
//! FIRST `t` of them; the signing package is those commitments and the
//! message. Each share is checked with frost's `verify_signature_share`:
//! an invalid one makes its author a proven culprit (the share is the
//! proof), excluded for good, and closes the attempt; a selected signer
//! that misses the attempt's deadline is a suspect and the attempt closes.
//! A later valid share from anyone returns them to the pool. The first
//! attempt with `t` valid shares is aggregated: that is the signature. At
//! most `n − t + 1` attempts start.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use frost_core::keys::{KeyPackage, PublicKeyPackage};
use frost_core::round1::{SigningCommitments, SigningNonces};
use frost_core::round2::SignatureShare;
use frost_core::{Identifier, SigningPackage};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::error::{ContextProblem, EngineError};
use crate::keyshare::KeyShare;
use crate::suite::{Ed, Suite, Tr};
use crate::types::validate_parties;
use crate::wire::{decode, encode, Versioned, WIRE_VERSION};
use crate::{PartyId, Posted, RoundMessage, Scheme};

/// Round of the candidates' first commitments.
pub const SIGN_ROUND_COMMIT: u32 = 1;

/// The round that carries attempt `attempt`'s shares (attempts count from 1).
pub fn share_round(attempt: u32) -> u32 {
    attempt.saturating_add(1)
}

/// A BIP-341 key-path tweak for secp256k1-tr.
///
/// frost-secp256k1-tr 3.0 already returns DKG keys tweaked for an empty
/// script tree (Q = P + H_TapTweak(P)·G), and that Q is the session's
/// group key; signing with `taproot: None` signs under Q. `Some(tweak)`
/// additionally tweaks Q by `merkle_root` (none, or the given root), and
/// the signature then verifies under the key [`SignOutput::Signature`]
/// states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaprootTweak {
    /// The script tree's merkle root, or `None` for no script path.
    pub merkle_root: Option<[u8; 32]>,
}

/// A signing session's decided parameters, identical at every party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningCtx {
    /// The cluster's id.
    pub cluster_id: [u8; 32],
    /// The session id.
    pub session_id: [u8; 32],
    /// The key's scheme.
    pub scheme: Scheme,
    /// The candidate signers, strictly ascending; may exceed the threshold.
    pub candidates: Vec<PartyId>,
    /// The key's `min_signers`: every attempt uses exactly this many.
    pub threshold: u16,
    /// Ed25519: the bytes to sign; secp256k1-tr: exactly the 32-byte digest.
    pub message: Vec<u8>,
    /// `None`: sign under the group key as generated; see [`TaprootTweak`].
    pub taproot: Option<TaprootTweak>,
    /// frost's `PublicKeyPackage::serialize()` of the key (from
    /// [`KeyShare::public_key_package`]).
    pub public_key_package: Vec<u8>,
}

impl SigningCtx {
    /// Checks the parameters (the one rule the engine and the host's
    /// precheck share).
    pub fn validate(&self) -> Result<(), EngineError> {
        validate_parties(&self.candidates, self.threshold)?;
        match self.scheme {
            Scheme::Secp256k1Tr if self.message.len() != 32 => {
                Err(EngineError::InvalidContext(ContextProblem::MessageLength))
            }
            Scheme::Ed25519 if self.taproot.is_some() => Err(EngineError::InvalidContext(
                ContextProblem::TweakWithoutTaproot,
            )),
            _ => Ok(()),
        }
    }

    /// The most attempts ROAST needs with at most n − t faulty candidates.
    pub fn max_attempts(&self) -> u32 {
        let n = u32::try_from(self.candidates.len()).unwrap_or(u32::MAX);
        n.saturating_sub(u32::from(self.threshold))
            .saturating_add(1)
    }
}

/// What a proven signing culprit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignBlameKind {
    /// Its commitments or share do not decode (or are for another scheme).
    Malformed,
    /// Its share fails `verify_signature_share` for the attempt's package.
    InvalidShare,
}

/// Why a signing session gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignFailure {
    /// `n − t + 1` attempts started without a signature.
    TooManyAttempts,
    /// Fewer than `t` candidates are not proven malicious.
    NotEnoughHonest,
}

/// What the coordinator decided, identically at every party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoastEvent {
    /// Attempt `attempt` starts: `signers` (ascending) post their shares in
    /// round [`share_round`]`(attempt)`.
    AttemptStarted {
        /// Attempt number, from 1.
        attempt: u32,
        /// The t selected signers, with the round whose commitments of
        /// theirs the package uses.
        signers: BTreeMap<PartyId, u32>,
    },
    /// Selected signers missed the attempt's deadline (omission: suspected).
    Suspected {
        /// The attempt.
        attempt: u32,
        /// Who did not answer.
        parties: Vec<PartyId>,
    },
    /// A proven culprit; `proof` is the offending message part.
    Blame {
        /// The culprit.
        culprit: PartyId,
        /// What it did.
        kind: SignBlameKind,
        /// The attempt concerned (0: its first commitments).
        attempt: u32,
        /// The offending share or commitment bytes, as posted.
        proof: Vec<u8>,
    },
    /// The signature: 64 bytes, identical at every party.
    Signature {
        /// The attempt that produced it.
        attempt: u32,
        /// Ed25519 `R ‖ s` or BIP-340 `r ‖ s`.
        signature: Vec<u8>,
        /// The 32-byte key it verifies under (x-only for secp256k1-tr,
        /// tweaked if the session asked for a tweak).
        verifying_key: Vec<u8>,
    },
    /// The session cannot produce a signature.
    Failed(SignFailure),
}

/// What a [`Signer`] asks its host to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignOutput {
    /// Post this as my message for `round`.
    Submit {
        /// The round.
        round: u32,
        /// The message (broadcast only).
        message: RoundMessage,
    },
    /// Persist "the nonce committed in round `slot` is used" BEFORE carrying
    /// out the `Submit` that follows it in the same output list.
    NonceUsed {
        /// The round whose commitments the used nonce belongs to.
        slot: u32,
        /// The attempt it signs.
        attempt: u32,
    },
    /// I was selected but cannot sign (used or lost nonce): a suspect now.
    CannotSign {
        /// The attempt.
        attempt: u32,
        /// Why ([`EngineError::NonceReused`] or [`EngineError::NoNonce`]).
        error: EngineError,
    },
    /// A coordinator decision (the same at every party).
    Roast(RoastEvent),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignWire {
    version: u8,
    scheme: u8,
    body: SignBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum SignBody {
    /// frost `SigningCommitments::serialize()`.
    Commit(Vec<u8>),
    /// An attempt's share, plus fresh commitments for a later attempt.
    Share {
        attempt: u32,
        share: Vec<u8>,
        next: Vec<u8>,
    },
}

impl Versioned for SignWire {
    fn version(&self) -> u8 {
        self.version
    }
}

/// Decodes a signing message's broadcast for `scheme` (for tools and the
/// fuzzer; [`Roast`] applies the same decoder).
pub fn decode_signing_message(scheme: Scheme, bytes: &[u8]) -> Result<(), EngineError> {
    fn check<C: Suite>(bytes: &[u8]) -> Result<(), EngineError> {
        match decode_wire::<C>(bytes)? {
            SignBody::Commit(c) => decode_commitments::<C>(&c).map(|_| ()),
            SignBody::Share { share, next, .. } => {
                decode_share::<C>(&share)?;
                decode_commitments::<C>(&next).map(|_| ())
            }
        }
    }
    match scheme {
        Scheme::Ed25519 => check::<Ed>(bytes),
        Scheme::Secp256k1Tr => check::<Tr>(bytes),
    }
}

fn decode_wire<C: Suite>(bytes: &[u8]) -> Result<SignBody, EngineError> {
    let w: SignWire = decode(bytes, "signing message")?;
    C::SCHEME.expect_tag(w.scheme, "signing message")?;
    Ok(w.body)
}

fn decode_commitments<C: Suite>(b: &[u8]) -> Result<SigningCommitments<C>, EngineError> {
    SigningCommitments::<C>::deserialize(b).map_err(|_| EngineError::Malformed {
        what: "signing commitments",
    })
}

fn decode_share<C: Suite>(b: &[u8]) -> Result<SignatureShare<C>, EngineError> {
    SignatureShare::<C>::deserialize(b).map_err(|_| EngineError::Malformed {
        what: "signature share",
    })
}

fn encode_msg<C: Suite>(body: SignBody) -> Result<RoundMessage, EngineError> {
    Ok(RoundMessage::broadcast(encode(&SignWire {
        version: WIRE_VERSION,
        scheme: C::SCHEME.tag(),
        body,
    })?))
}

struct Attempt<C: Suite> {
    signers: BTreeMap<PartyId, u32>,
    package: SigningPackage<C>,
    shares: BTreeMap<Identifier<C>, SignatureShare<C>>,
    open: bool,
}

struct RoastCore<C: Suite> {
    ctx: SigningCtx,
    pkp: PublicKeyPackage<C>,
    seen: BTreeSet<(PartyId, u32)>,
    /// (party, commitments, round they were posted in), in log order.
    pool: Vec<(PartyId, SigningCommitments<C>, u32)>,
    malicious: BTreeSet<PartyId>,
    attempts: Vec<Attempt<C>>,
    finished: bool,
}

impl<C: Suite> RoastCore<C> {
    fn new(ctx: SigningCtx) -> Result<Self, EngineError> {
        ctx.validate()?;
        let pkp = PublicKeyPackage::<C>::deserialize(&ctx.public_key_package)
            .map_err(|_| EngineError::InvalidContext(ContextProblem::PublicKeyPackage))?;
        let (pkp, _) = C::tweak(pkp, None, ctx.taproot.as_ref())?;
        if pkp.min_signers() != Some(ctx.threshold) {
            return Err(EngineError::InvalidContext(
                ContextProblem::ThresholdOutOfRange,
            ));
        }
        for c in &ctx.candidates {
            if !pkp.verifying_shares().contains_key(&c.identifier::<C>()?) {
                return Err(EngineError::InvalidContext(
                    ContextProblem::PublicKeyPackage,
                ));
            }
        }
        Ok(RoastCore {
            ctx,
            pkp,
            seen: BTreeSet::new(),
            pool: Vec::new(),
            malicious: BTreeSet::new(),
            attempts: Vec::new(),
            finished: false,
        })
    }

    fn blame(
        &mut self,
        culprit: PartyId,
        kind: SignBlameKind,
        attempt: u32,
        proof: Vec<u8>,
    ) -> RoastEvent {
        self.malicious.insert(culprit);
        self.pool.retain(|(p, _, _)| *p != culprit);
        RoastEvent::Blame {
            culprit,
            kind,
            attempt,
            proof,
        }
    }

    fn add_to_pool(&mut self, p: PartyId, c: SigningCommitments<C>, round: u32) {
        if !self.malicious.contains(&p) && !self.pool.iter().any(|(q, _, _)| *q == p) {
            self.pool.push((p, c, round));
        }
    }

    fn on_message(&mut self, posted: &Posted) -> Result<Vec<RoastEvent>, EngineError> {
        let from = posted.from;
        if self.ctx.candidates.binary_search(&from).is_err() {
            return Err(EngineError::NotAParticipant(from));
        }
        let round = posted.round;
        if round == 0 || usize::try_from(round).unwrap_or(usize::MAX) > self.attempts.len() + 1 {
            return Err(EngineError::UnknownRound { from, round });
        }
        if round > SIGN_ROUND_COMMIT {
            let attempt = self.attempts.get(round as usize - 2);
            if !attempt.is_some_and(|a| a.signers.contains_key(&from)) {
                return Err(EngineError::NotSelected {
                    from,
                    attempt: round - 1,
                });
            }
        }
        if !self.seen.insert((from, round)) {
            return Err(EngineError::DuplicateMessage { from, round });
        }
        posted.message.check_sizes()?;
        let mut events = Vec::new();
        if self.finished || self.malicious.contains(&from) {
            return Ok(events);
        }
        let raw = posted.message.broadcast.clone().unwrap_or_default();
        let body = match (&posted.message.broadcast, posted.message.direct.is_empty()) {
            (Some(b), true) => decode_wire::<C>(b).ok(),
            _ => None,
        };
        let attempt_no = round - 1;
        match body {
            Some(SignBody::Commit(c)) if round == SIGN_ROUND_COMMIT => {
                match decode_commitments::<C>(&c) {
                    Ok(c) => self.add_to_pool(from, c, round),
                    Err(_) => events.push(self.blame(from, SignBlameKind::Malformed, 0, raw)),
                }
            }
            Some(SignBody::Share {
                attempt,
                share,
                next,
            }) if round > SIGN_ROUND_COMMIT && attempt == attempt_no => {
                match (decode_share::<C>(&share), decode_commitments::<C>(&next)) {
                    (Ok(s), Ok(n)) => {
                        events.extend(self.on_share(from, attempt_no, s, n, round, share)?)
                    }
                    _ => {
                        events.push(self.blame(from, SignBlameKind::Malformed, attempt_no, raw));
                        self.close(attempt_no);
                    }
                }
            }
            _ => {
                events.push(self.blame(from, SignBlameKind::Malformed, attempt_no, raw));
                self.close(attempt_no);
            }
        }
        events.extend(self.advance());
        Ok(events)
    }

    fn close(&mut self, attempt: u32) {
        if let Some(a) = attempt
            .checked_sub(1)
            .and_then(|i| self.attempts.get_mut(i as usize))
        {
            a.open = false;
        }
    }

    fn on_share(
        &mut self,
        from: PartyId,
        attempt_no: u32,
        share: SignatureShare<C>,
        next: SigningCommitments<C>,
        round: u32,
        share_bytes: Vec<u8>,
    ) -> Result<Vec<RoastEvent>, EngineError> {
        let id = from.identifier::<C>()?;
        let Some(attempt) = self.attempts.get_mut(attempt_no as usize - 1) else {
            return Ok(Vec::new());
        };
        let vs = self.pkp.verifying_shares().get(&id).copied();
        let ok = vs.is_some_and(|vs| {
            frost_core::verify_signature_share(
                id,
                &vs,
                &share,
                &attempt.package,
                self.pkp.verifying_key(),
            )
            .is_ok()
        });
        if !ok {
            attempt.open = false;
            return Ok(vec![self.blame(
                from,
                SignBlameKind::InvalidShare,
                attempt_no,
                share_bytes,
            )]);
        }
        attempt.shares.insert(id, share);
        let mut events = Vec::new();
        if attempt.shares.len() == attempt.signers.len() {
            let sig = frost_core::aggregate(&attempt.package, &attempt.shares, &self.pkp)?;
            let signature = sig.serialize()?;
            let verifying_key = C::group_key_bytes(self.pkp.verifying_key())?;
            self.finished = true;
            events.push(RoastEvent::Signature {
                attempt: attempt_no,
                signature,
                verifying_key,
            });
        }
        self.add_to_pool(from, next, round);
        Ok(events)
    }

    fn on_deadline(&mut self, round: u32) -> Vec<RoastEvent> {
        let mut events = Vec::new();
        if self.finished || round <= SIGN_ROUND_COMMIT {
            return events;
        }
        let attempt_no = round - 1;
        if let Some(a) = self.attempts.get_mut(attempt_no as usize - 1) {
            if a.open {
                a.open = false;
                let parties: Vec<PartyId> = a
                    .signers
                    .keys()
                    .copied()
                    .filter(|p| {
                        p.identifier::<C>()
                            .map(|id| !a.shares.contains_key(&id))
                            .unwrap_or(true)
                    })
                    .collect();
                events.push(RoastEvent::Suspected {
                    attempt: attempt_no,
                    parties,
                });
            }
        }
        events.extend(self.advance());
        events
    }

    /// Starts the next attempt when none is open and t are ready.
    fn advance(&mut self) -> Vec<RoastEvent> {
        if self.finished || self.attempts.last().is_some_and(|a| a.open) {
            return Vec::new();
        }
        let honest = self
            .ctx
            .candidates
            .iter()
            .filter(|p| !self.malicious.contains(p))
            .count();
        if honest < usize::from(self.ctx.threshold) {
            self.finished = true;
            return vec![RoastEvent::Failed(SignFailure::NotEnoughHonest)];
        }
        if self.pool.len() < usize::from(self.ctx.threshold) {
            return Vec::new();
        }
        let number = u32::try_from(self.attempts.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        if number > self.ctx.max_attempts() {
            self.finished = true;
            return vec![RoastEvent::Failed(SignFailure::TooManyAttempts)];
        }
        let chosen: Vec<_> = self.pool.drain(..usize::from(self.ctx.threshold)).collect();
        let mut commitments = BTreeMap::new();
        let mut signers = BTreeMap::new();
        for (p, c, r) in chosen {
            // Candidates were checked to be non-zero ids in new().
            if let Ok(id) = p.identifier::<C>() {
                commitments.insert(id, c);
                signers.insert(p, r);
            }
        }
        let package = SigningPackage::new(commitments, &self.ctx.message);
        self.attempts.push(Attempt {
            signers: signers.clone(),
            package,
            shares: BTreeMap::new(),
            open: true,
        });
        vec![RoastEvent::AttemptStarted {
            attempt: number,
            signers,
        }]
    }
}

/// The ROAST coordinator as a pure function of the decided log (and the
/// decided deadlines): every party computes the same attempts.
pub struct Roast {
    inner: RoastInner,
}

enum RoastInner {
    Ed(Box<RoastCore<Ed>>),
    Tr(Box<RoastCore<Tr>>),
}

impl fmt::Debug for Roast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Roast").finish_non_exhaustive()
    }
}

impl Roast {
    /// A coordinator for the session.
    pub fn new(ctx: SigningCtx) -> Result<Roast, EngineError> {
        Ok(Roast {
            inner: match ctx.scheme {
                Scheme::Ed25519 => RoastInner::Ed(Box::new(RoastCore::new(ctx)?)),
                Scheme::Secp256k1Tr => RoastInner::Tr(Box::new(RoastCore::new(ctx)?)),
            },
        })
    }

    /// Feeds one decided message. Log-level violations (a non-candidate, a
    /// round that is not open, a share from a signer not selected for that
    /// attempt's package, a repeat, an oversized part) are typed errors that
    /// change nothing; bad content from a candidate is a proven
    /// [`RoastEvent::Blame`].
    pub fn on_message(&mut self, posted: &Posted) -> Result<Vec<RoastEvent>, EngineError> {
        match &mut self.inner {
            RoastInner::Ed(c) => c.on_message(posted),
            RoastInner::Tr(c) => c.on_message(posted),
        }
    }

    /// Feeds a decided deadline for `round`.
    pub fn on_deadline(&mut self, round: u32) -> Vec<RoastEvent> {
        match &mut self.inner {
            RoastInner::Ed(c) => c.on_deadline(round),
            RoastInner::Tr(c) => c.on_deadline(round),
        }
    }
}

/// One candidate signer: its key share, its live nonces (memory only) and
/// its own replica of the coordinator.
///
/// Nonce safety: nonces exist only in this struct's memory and are
/// zeroized (frost's `SigningNonces` is zeroize-on-drop) once used. The
/// only persisted signing state is the set of "used" slots
/// ([`SignOutput::NonceUsed`], persisted before the share leaves). A signer
/// rebuilt with [`Signer::restore`] has no nonces at all, so neither a crash
/// nor a restored backup can bring a nonce back; it refuses every
/// selection ([`SignOutput::CannotSign`]) and ROAST carries on without it.
pub struct Signer {
    inner: SignerInner,
}

enum SignerInner {
    Ed(Box<SignerCore<Ed>>),
    Tr(Box<SignerCore<Tr>>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let me = match &self.inner {
            SignerInner::Ed(c) => c.me,
            SignerInner::Tr(c) => c.me,
        };
        f.debug_struct("Signer")
            .field("me", &me)
            .finish_non_exhaustive()
    }
}

struct SignerCore<C: Suite> {
    me: PartyId,
    key_package: KeyPackage<C>,
    roast: RoastCore<C>,
    nonces: BTreeMap<u32, SigningNonces<C>>,
    used: BTreeSet<u32>,
}

impl<C: Suite> SignerCore<C> {
    fn new(
        ctx: SigningCtx,
        me: PartyId,
        share: &KeyShare,
        used: BTreeSet<u32>,
    ) -> Result<Self, EngineError> {
        if ctx.candidates.binary_search(&me).is_err() {
            return Err(EngineError::InvalidContext(ContextProblem::NotAParticipant));
        }
        let decoded = share.decode::<C>()?;
        if decoded.party != me || decoded.public_key_package.serialize()? != ctx.public_key_package
        {
            return Err(EngineError::InvalidContext(
                ContextProblem::KeyShareMismatch,
            ));
        }
        let (_, kp) = C::tweak(
            decoded.public_key_package.clone(),
            Some(decoded.key_package),
            ctx.taproot.as_ref(),
        )?;
        let key_package = kp.ok_or(EngineError::InvalidContext(
            ContextProblem::KeyShareMismatch,
        ))?;
        Ok(SignerCore {
            me,
            key_package,
            roast: RoastCore::new(ctx)?,
            nonces: BTreeMap::new(),
            used,
        })
    }

    fn commit<R: RngCore + CryptoRng>(
        &mut self,
        slot: u32,
        rng: &mut R,
    ) -> Result<Vec<u8>, EngineError> {
        let (nonces, commitments) =
            frost_core::round1::commit(self.key_package.signing_share(), rng);
        self.nonces.insert(slot, nonces);
        Ok(commitments.serialize()?)
    }

    fn react<R: RngCore + CryptoRng>(
        &mut self,
        events: Vec<RoastEvent>,
        rng: &mut R,
    ) -> Result<Vec<SignOutput>, EngineError> {
        let mut out = Vec::new();
        for e in events {
            if let RoastEvent::AttemptStarted { attempt, signers } = &e {
                if let Some(slot) = signers.get(&self.me).copied() {
                    out.push(SignOutput::Roast(e.clone()));
                    out.extend(self.sign(*attempt, slot, rng)?);
                    continue;
                }
            }
            out.push(SignOutput::Roast(e));
        }
        Ok(out)
    }

    fn sign<R: RngCore + CryptoRng>(
        &mut self,
        attempt: u32,
        slot: u32,
        rng: &mut R,
    ) -> Result<Vec<SignOutput>, EngineError> {
        if self.used.contains(&slot) {
            return Ok(vec![SignOutput::CannotSign {
                attempt,
                error: EngineError::NonceReused { attempt },
            }]);
        }
        // Removing the nonce from the map is what makes it single-use; it is
        // zeroized when dropped at the end of this function.
        let Some(nonces) = self.nonces.remove(&slot) else {
            return Ok(vec![SignOutput::CannotSign {
                attempt,
                error: EngineError::NoNonce { attempt },
            }]);
        };
        self.used.insert(slot);
        let package = self
            .roast
            .attempts
            .get(attempt as usize - 1)
            .map(|a| a.package.clone())
            .ok_or(EngineError::NoNonce { attempt })?;
        let share = frost_core::round2::sign(&package, &nonces, &self.key_package)?;
        drop(nonces);
        let round = share_round(attempt);
        let next = self.commit(round, rng)?;
        let message = encode_msg::<C>(SignBody::Share {
            attempt,
            share: share.serialize(),
            next,
        })?;
        Ok(vec![
            SignOutput::NonceUsed { slot, attempt },
            SignOutput::Submit { round, message },
        ])
    }
}

impl Signer {
    /// Joins the session: draws my first nonces and returns my round-1
    /// commitments message.
    pub fn start<R: RngCore + CryptoRng>(
        ctx: SigningCtx,
        me: PartyId,
        share: &KeyShare,
        rng: &mut R,
    ) -> Result<(Signer, RoundMessage), EngineError> {
        fn go<C: Suite, R: RngCore + CryptoRng>(
            ctx: SigningCtx,
            me: PartyId,
            share: &KeyShare,
            rng: &mut R,
        ) -> Result<(Box<SignerCore<C>>, RoundMessage), EngineError> {
            let mut core = SignerCore::<C>::new(ctx, me, share, BTreeSet::new())?;
            let c = core.commit(SIGN_ROUND_COMMIT, rng)?;
            Ok((Box::new(core), encode_msg::<C>(SignBody::Commit(c))?))
        }
        if share.scheme != ctx.scheme {
            return Err(EngineError::InvalidContext(
                ContextProblem::KeyShareMismatch,
            ));
        }
        Ok(match ctx.scheme {
            Scheme::Ed25519 => {
                let (c, m) = go::<Ed, R>(ctx, me, share, rng)?;
                (
                    Signer {
                        inner: SignerInner::Ed(c),
                    },
                    m,
                )
            }
            Scheme::Secp256k1Tr => {
                let (c, m) = go::<Tr, R>(ctx, me, share, rng)?;
                (
                    Signer {
                        inner: SignerInner::Tr(c),
                    },
                    m,
                )
            }
        })
    }

    /// Rebuilds a signer after a restart (or from a backup) from the
    /// persisted "used" slots. It has no nonces (they never leave memory),
    /// so it refuses every selection; feed it the log to follow the
    /// coordinator and learn the signature.
    pub fn restore(
        ctx: SigningCtx,
        me: PartyId,
        share: &KeyShare,
        used: BTreeSet<u32>,
    ) -> Result<Signer, EngineError> {
        if share.scheme != ctx.scheme {
            return Err(EngineError::InvalidContext(
                ContextProblem::KeyShareMismatch,
            ));
        }
        Ok(Signer {
            inner: match ctx.scheme {
                Scheme::Ed25519 => {
                    SignerInner::Ed(Box::new(SignerCore::new(ctx, me, share, used)?))
                }
                Scheme::Secp256k1Tr => {
                    SignerInner::Tr(Box::new(SignerCore::new(ctx, me, share, used)?))
                }
            },
        })
    }

    /// Feeds one decided message (every candidate's, mine included).
    pub fn on_message<R: RngCore + CryptoRng>(
        &mut self,
        posted: &Posted,
        rng: &mut R,
    ) -> Result<Vec<SignOutput>, EngineError> {
        match &mut self.inner {
            SignerInner::Ed(c) => {
                let e = c.roast.on_message(posted)?;
                c.react(e, rng)
            }
            SignerInner::Tr(c) => {
                let e = c.roast.on_message(posted)?;
                c.react(e, rng)
            }
        }
    }

    /// Feeds a decided deadline for `round`.
    pub fn on_round_deadline<R: RngCore + CryptoRng>(
        &mut self,
        round: u32,
        rng: &mut R,
    ) -> Result<Vec<SignOutput>, EngineError> {
        match &mut self.inner {
            SignerInner::Ed(c) => {
                let e = c.roast.on_deadline(round);
                c.react(e, rng)
            }
            SignerInner::Tr(c) => {
                let e = c.roast.on_deadline(round);
                c.react(e, rng)
            }
        }
    }

    /// TEST-ONLY (dev mode, the cheating-signer system test): corrupts the
    /// share inside a share message I am about to post, so that it decodes
    /// but fails `verify_signature_share`. Other messages are left as they are.
    pub fn corrupt_next_share(message: &mut RoundMessage) {
        if let Some(b) = message.broadcast.as_mut() {
            if let Ok(mut w) = decode::<SignWire>(b, "t") {
                let little_endian = w.scheme == Scheme::Ed25519.tag();
                if let SignBody::Share { share, .. } = &mut w.body {
                    // Flip the lowest bit of the scalar: still canonical, now wrong.
                    let low = if little_endian {
                        share.first_mut()
                    } else {
                        share.last_mut()
                    };
                    if let Some(x) = low {
                        *x ^= 1;
                    }
                }
                if let Ok(e) = encode(&w) {
                    *b = e;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test helpers: a failure is the test failing
mod tests {
    use super::*;
    use frost_core::keys::IdentifierList;
    use rand_chacha_06::rand_core::SeedableRng;
    use rand_chacha_06::ChaCha20Rng;

    /// Dealer-generated shares (fast; the DKG has its own tests).
    fn dealt<C: Suite>(n: u16, t: u16) -> (Vec<KeyShare>, Vec<u8>) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (secret_shares, pkp) =
            frost_core::keys::generate_with_dealer::<C, _>(n, t, IdentifierList::Default, &mut rng)
                .unwrap();
        let mut shares = Vec::new();
        for p in 1..=n {
            let id = PartyId(p).identifier::<C>().unwrap();
            let kp = KeyPackage::try_from(secret_shares[&id].clone()).unwrap();
            shares.push(KeyShare::from_frost(PartyId(p), &kp, &pkp).unwrap());
        }
        (shares, pkp.serialize().unwrap())
    }

    fn sctx(scheme: Scheme, n: u16, t: u16, pkp: Vec<u8>) -> SigningCtx {
        SigningCtx {
            cluster_id: [1; 32],
            session_id: [2; 32],
            scheme,
            candidates: (1..=n).map(PartyId).collect(),
            threshold: t,
            message: vec![3; 32],
            taproot: None,
            public_key_package: pkp,
        }
    }

    #[test]
    fn context_rules() {
        let (_, pkp) = dealt::<Ed>(3, 2);
        let c = sctx(Scheme::Ed25519, 3, 2, pkp);
        assert_eq!(c.max_attempts(), 2);
        assert_eq!(share_round(1), 2);
        let mut bad = c.clone();
        bad.taproot = Some(TaprootTweak { merkle_root: None });
        assert_eq!(
            bad.validate(),
            Err(EngineError::InvalidContext(
                ContextProblem::TweakWithoutTaproot
            ))
        );
        let mut bad = c.clone();
        bad.threshold = 3;
        assert!(matches!(
            Roast::new(bad),
            Err(EngineError::InvalidContext(
                ContextProblem::ThresholdOutOfRange
            ))
        ));
        let mut bad = c.clone();
        bad.public_key_package = vec![1, 2, 3];
        assert!(matches!(
            Roast::new(bad),
            Err(EngineError::InvalidContext(
                ContextProblem::PublicKeyPackage
            ))
        ));
        let mut bad = c;
        bad.candidates.push(PartyId(9));
        assert!(matches!(
            Roast::new(bad),
            Err(EngineError::InvalidContext(
                ContextProblem::PublicKeyPackage
            ))
        ));
        let (_, tr_pkp) = dealt::<Tr>(3, 2);
        let mut short = sctx(Scheme::Secp256k1Tr, 3, 2, tr_pkp);
        short.message = vec![0; 33];
        assert_eq!(
            short.validate(),
            Err(EngineError::InvalidContext(ContextProblem::MessageLength))
        );
    }

    #[test]
    fn two_coordinators_fed_the_same_log_agree_and_a_wrong_key_share_is_refused() {
        let (shares, pkp) = dealt::<Tr>(4, 3);
        let c = sctx(Scheme::Secp256k1Tr, 4, 3, pkp);
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut signers = Vec::new();
        let mut pending = Vec::new();
        for (i, share) in shares.iter().enumerate() {
            let p = PartyId(u16::try_from(i).unwrap() + 1);
            let (s, m) = Signer::start(c.clone(), p, share, &mut rng).unwrap();
            signers.push((p, s));
            pending.push(Posted {
                round: 1,
                from: p,
                message: m,
            });
        }
        let (mut a, mut b) = (
            Roast::new(c.clone()).unwrap(),
            Roast::new(c.clone()).unwrap(),
        );
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        while let Some(posted) = pending.pop() {
            ea.extend(a.on_message(&posted).unwrap());
            eb.extend(b.on_message(&posted).unwrap());
            for (p, s) in signers.iter_mut() {
                for o in s.on_message(&posted, &mut rng).unwrap() {
                    if let SignOutput::Submit { round, message } = o {
                        pending.insert(
                            0,
                            Posted {
                                round,
                                from: *p,
                                message,
                            },
                        );
                    }
                }
            }
        }
        assert_eq!(ea, eb);
        assert!(matches!(
            ea.last(),
            Some(RoastEvent::Signature { attempt: 1, .. })
        ));
        // Share 2 presented as party 1's.
        assert!(matches!(
            Signer::start(c.clone(), PartyId(1), &shares[1], &mut rng),
            Err(EngineError::InvalidContext(
                ContextProblem::KeyShareMismatch
            ))
        ));
        let mut ed = c;
        ed.scheme = Scheme::Ed25519;
        assert!(Signer::start(ed, PartyId(1), &shares[0], &mut rng).is_err());
    }

    #[test]
    fn signing_wire_is_strict_and_scheme_tagged() {
        let (shares, pkp) = dealt::<Ed>(2, 2);
        let c = sctx(Scheme::Ed25519, 2, 2, pkp);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (_, m) = Signer::start(c, PartyId(1), &shares[0], &mut rng).unwrap();
        let b = m.broadcast.clone().unwrap();
        assert_eq!(decode_signing_message(Scheme::Ed25519, &b), Ok(()));
        assert!(matches!(
            decode_signing_message(Scheme::Secp256k1Tr, &b),
            Err(EngineError::WrongCiphersuite { .. })
        ));
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            decode_signing_message(Scheme::Ed25519, &long),
            Err(EngineError::Malformed { .. })
        ));
        // Corrupting touches only share messages.
        let mut same = m.clone();
        Signer::corrupt_next_share(&mut same);
        assert_eq!(same, m);
    }
}
