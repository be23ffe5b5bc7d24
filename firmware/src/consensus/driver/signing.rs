//! Asynchronous signing: the placeholder the core sees while the TPM
//! signs, the sign guard consulted before every request, and the
//! substitution of real signatures into held messages.

use super::{ConsensusDriver, DriverError, Io, OwnMessage, Persist, Refusal, SignRequestId};
use crate::consensus::context::{SignedBytes, Step as MsgStep, CONSENSUS_DOMAIN};
use crate::consensus::driver::Action;
use crate::consensus::sign_guard::GuardDecision;
use crate::consensus::wire::{PeerMessage, WalRecord};
use crate::consensus::BlockHash;
use crate::crypto::Signature;
use crate::types::{Height, Sha256Digest};

/// The all-zero placeholder the core sees until the TPM's signature arrives.
/// r = 0 is never a valid ECDSA signature, so it can never verify.
pub const PLACEHOLDER: Signature = Signature([0u8; 64]);

/// Refusal reasons kept between two [`ConsensusDriver::take_sign_refusals`].
pub(super) const MAX_REFUSALS_KEPT: usize = 64;

impl ConsensusDriver {
    pub(super) fn on_signature(
        &mut self,
        request: SignRequestId,
        sig: Signature,
    ) -> Result<(), Refusal> {
        let key = self
            .io
            .cfg
            .parties
            .key_of(self.io.cfg.me)
            .copied()
            .ok_or_else(|| DriverError::BadLocalSignature("we are not a member".into()))?;
        let Some(m) = self.io.own.get_mut(&request.0) else {
            // A late answer for a height already decided: harmless.
            return Ok(());
        };
        if m.signature.is_some() {
            return Ok(());
        }
        if !self.io.cache.verify(&key, &m.bytes, &sig) {
            return Err(DriverError::BadLocalSignature(
                "does not verify under our vote key".into(),
            )
            .into());
        }
        m.signature = Some(sig);
        let h = m.height;
        self.io.step.persist.push(Persist::WalAppend {
            height: h,
            record: WalRecord::OwnSignature {
                digest: request.0,
                signature: sig,
            },
        });
        let held = std::mem::take(&mut self.io.held);
        for (d, msg) in held {
            if d == request.0 {
                if let Some(msg) = self.io.patch(msg) {
                    self.io.broadcast(&msg);
                }
            } else {
                self.io.held.push((d, msg));
            }
        }
        self.try_complete_decision()
    }
}

impl Io {
    /// Replaces our placeholder signatures in an outgoing message by the real
    /// ones; `None` if one is not available yet (or was refused).
    pub(super) fn patch(&self, msg: PeerMessage) -> Option<PeerMessage> {
        let me = self.cfg.me;
        let real = |sb: SignedBytes| -> Option<Signature> {
            self.own
                .get(&Sha256Digest::of(&sb.encode()))
                .and_then(|m| m.signature)
        };
        let base = |h: Height, round: i64, step: MsgStep, value: Option<BlockHash>| SignedBytes {
            domain: CONSENSUS_DOMAIN.to_string(),
            cluster: self.cfg.cluster,
            epoch: self.cfg.epoch,
            height: h,
            round,
            step,
            value,
            pol_round: -1,
            signer: me,
        };
        match msg {
            PeerMessage::Vote(mut v) => {
                if v.signature == PLACEHOLDER {
                    v.signature = real(v.vote.signed_bytes(&self.ctx))?;
                }
                Some(PeerMessage::Vote(v))
            }
            PeerMessage::Proposal(mut p) => {
                if p.signature == PLACEHOLDER {
                    p.signature = real(p.proposal.signed_bytes(&self.ctx))?;
                }
                Some(PeerMessage::Proposal(p))
            }
            PeerMessage::Polka(mut c) => {
                for (party, sig) in c.signatures.iter_mut() {
                    if *party == me && *sig == PLACEHOLDER {
                        *sig = real(base(c.height, c.round, MsgStep::Prevote, Some(c.value)))?;
                    }
                }
                Some(PeerMessage::Polka(c))
            }
            PeerMessage::RoundCert(mut c) => {
                for s in c.signatures.iter_mut() {
                    if s.party == me && s.signature == PLACEHOLDER {
                        let step = if s.precommit {
                            MsgStep::Precommit
                        } else {
                            MsgStep::Prevote
                        };
                        s.signature = real(base(c.height, c.round, step, s.value))?;
                    }
                }
                Some(PeerMessage::RoundCert(c))
            }
            other => Some(other),
        }
    }

    /// Sends a message of ours now, or holds it until its signature is back.
    pub(super) fn publish(&mut self, msg: PeerMessage) {
        let pending_digest = match &msg {
            PeerMessage::Vote(v) if v.signature == PLACEHOLDER => {
                Some(Sha256Digest::of(&v.vote.signed_bytes(&self.ctx).encode()))
            }
            PeerMessage::Proposal(p) if p.signature == PLACEHOLDER => Some(Sha256Digest::of(
                &p.proposal.signed_bytes(&self.ctx).encode(),
            )),
            _ => None,
        };
        match self.patch(msg.clone()) {
            Some(m) => self.broadcast(&m),
            None => {
                if let Some(d) = pending_digest {
                    self.held.push((d, msg));
                }
                // Certificates carrying a pending signature of ours are
                // dropped: the core republishes them.
            }
        }
    }

    /// Registers one of our messages for signing: the guard first, then the
    /// request. Returns the signature the core should see.
    pub(super) fn sign(&mut self, sb: SignedBytes) -> Signature {
        let bytes = sb.encode();
        let digest = Sha256Digest::of(&bytes);
        if let Some(m) = self.own.get(&digest) {
            return m.signature.unwrap_or(PLACEHOLDER);
        }
        match self
            .guard
            .check_and_record(sb.step, sb.height, sb.round, sb.value)
        {
            Ok(decision) => {
                if decision == GuardDecision::Advanced {
                    self.step
                        .persist
                        .push(Persist::SignGuard(self.guard.clone()));
                }
                self.signatures_requested += 1;
                self.step.actions.push(Action::Sign {
                    request: SignRequestId(digest),
                    bytes: bytes.clone(),
                });
                self.own.insert(
                    digest,
                    OwnMessage {
                        bytes,
                        height: sb.height,
                        signature: None,
                    },
                );
            }
            Err(e) => {
                // Refused: the core sees a placeholder that is never
                // released, so the message never leaves this party.
                self.sign_refusals += 1;
                if self.refused.len() < MAX_REFUSALS_KEPT {
                    self.refused.push(e);
                }
            }
        }
        PLACEHOLDER
    }
}
