//! The effect handler: what the driver does for each `Effect` malachite's
//! core yields inside `process!`, and the signature and certificate
//! checks the core asks for.

use super::{Ctx, Io, Persist, TimerKind};
use crate::consensus::context::{
    round_i64, Block, BlockHash, SignedBytes, Step as MsgStep, CONSENSUS_DOMAIN,
};
use crate::consensus::wire::{
    polka_from_mc, proposal_from_mc, round_cert_from_mc, vote_from_mc, wal_record_of, PeerMessage,
};
use crate::crypto::Signature;
use crate::types::{Height, PartyId, Sha256Digest};
use malachitebft_core_consensus as mcc;
use malachitebft_core_consensus::{Effect, Resumable, Resume};
use malachitebft_core_types as mc;
use malachitebft_core_types::{NilOrVal, Round, Validity, ValueOrigin};
use std::collections::BTreeSet;

use super::signing::PLACEHOLDER;

impl Io {
    fn verify_consensus_sig(&mut self, sb: SignedBytes, sig: &Signature) -> bool {
        let bytes = sb.encode();
        if *sig == PLACEHOLDER {
            return sb.signer == self.cfg.me && self.own.contains_key(&Sha256Digest::of(&bytes));
        }
        match self.cfg.parties.key_of(sb.signer).copied() {
            Some(k) => self.cache.verify(&k, &bytes, sig),
            None => false,
        }
    }

    fn sb(
        &self,
        h: Height,
        round: Round,
        step: MsgStep,
        value: NilOrVal<BlockHash>,
        signer: PartyId,
    ) -> SignedBytes {
        SignedBytes {
            domain: CONSENSUS_DOMAIN.to_string(),
            cluster: self.cfg.cluster,
            epoch: self.cfg.epoch,
            height: h,
            round: round_i64(round),
            step,
            value: match value {
                NilOrVal::Nil => None,
                NilOrVal::Val(v) => Some(v),
            },
            pol_round: -1,
            signer,
        }
    }

    fn count_cert(
        &mut self,
        entries: Vec<(SignedBytes, Signature)>,
        threshold: mc::ThresholdParam,
    ) -> Result<(), mc::CertificateError<Ctx>> {
        let mut seen = BTreeSet::new();
        for (sb, sig) in entries {
            let signer = sb.signer;
            if !self.cfg.parties.contains(signer) {
                return Err(mc::CertificateError::UnknownValidator(signer));
            }
            if !seen.insert(signer) {
                return Err(mc::CertificateError::DuplicateVote(signer));
            }
            if !self.verify_consensus_sig(sb, &sig) {
                return Err(mc::CertificateError::VerificationError(None));
            }
        }
        let total = self.cfg.parties.len() as u64;
        let signed = seen.len() as u64;
        if !threshold.is_met(signed, total) {
            return Err(mc::CertificateError::NotEnoughVotingPower {
                signed,
                total,
                expected: threshold.min_expected(total),
            });
        }
        Ok(())
    }

    fn commit_entries(
        &self,
        h: Height,
        round: Round,
        value: BlockHash,
        sigs: impl Iterator<Item = (PartyId, Signature)>,
    ) -> Vec<(SignedBytes, Signature)> {
        sigs.map(|(p, s)| {
            (
                self.sb(h, round, MsgStep::Precommit, NilOrVal::Val(value), p),
                s,
            )
        })
        .collect()
    }

    pub(super) fn on_effect(&mut self, effect: Effect<Ctx>) -> Resume<Ctx> {
        match effect {
            Effect::CancelAllTimeouts(r) => {
                self.cancel_core_timers();
                r.resume_with(())
            }
            Effect::CancelTimeout(t, r) => {
                self.cancel_where(|k| *k == TimerKind::Core(t));
                r.resume_with(())
            }
            Effect::ScheduleTimeout(t, r) => {
                self.cancel_where(|k| *k == TimerKind::Core(t));
                let ms = u64::try_from(self.cfg.timeouts.duration_for(t).as_millis())
                    .unwrap_or(u64::MAX);
                self.schedule(TimerKind::Core(t), ms);
                r.resume_with(())
            }
            Effect::StartRound(_, _, _, _, r) => {
                self.want_value = None;
                r.resume_with(())
            }
            Effect::PublishConsensusMsg(m, r) => {
                let msg = match m {
                    mcc::SignedConsensusMsg::Vote(v) => PeerMessage::Vote(vote_from_mc(&v)),
                    mcc::SignedConsensusMsg::Proposal(p) => {
                        PeerMessage::Proposal(proposal_from_mc(&p))
                    }
                };
                self.publish(msg);
                r.resume_with(())
            }
            Effect::PublishLivenessMsg(m, r) => {
                let msg = match m {
                    mcc::LivenessMsg::Vote(v) => PeerMessage::Vote(vote_from_mc(&v)),
                    mcc::LivenessMsg::PolkaCertificate(c) => PeerMessage::Polka(polka_from_mc(&c)),
                    mcc::LivenessMsg::SkipRoundCertificate(c) => {
                        PeerMessage::RoundCert(round_cert_from_mc(&c))
                    }
                };
                self.publish(msg);
                r.resume_with(())
            }
            Effect::RepublishVote(v, r) => {
                self.publish(PeerMessage::Vote(vote_from_mc(&v)));
                r.resume_with(())
            }
            Effect::RepublishRoundCertificate(c, r) => {
                self.publish(PeerMessage::RoundCert(round_cert_from_mc(&c)));
                r.resume_with(())
            }
            Effect::GetValue(h, round, _, r) => {
                self.want_value = Some((h, round));
                r.resume_with(())
            }
            Effect::RestreamProposal(.., r) => r.resume_with(()),
            Effect::CertVerifiedSyncValue(resp, proposer, r) => {
                if let Ok(block) = Block::from_bytes(&resp.value_bytes) {
                    self.queue.push_back(mcc::Input::ProposedValue(
                        mcc::ProposedValue {
                            height: resp.certificate.height,
                            round: resp.certificate.round,
                            valid_round: Round::Nil,
                            proposer,
                            value: block,
                            validity: Validity::Valid,
                        },
                        ValueOrigin::Sync,
                    ));
                }
                r.resume_with(())
            }
            Effect::CertRejectedSyncValue(.., r) => r.resume_with(()),
            Effect::Decide(_, _, r) => r.resume_with(()),
            Effect::Finalize(cert, _, _, r) => {
                self.finalized = Some(cert);
                r.resume_with(())
            }
            Effect::SignVote(vote, r) => {
                let sb = vote.signed_bytes(&self.ctx);
                let sig = self.sign(sb);
                r.resume_with(mc::SignedMessage::new(vote, sig))
            }
            Effect::SignProposal(p, r) => {
                let sb = p.signed_bytes(&self.ctx);
                let sig = self.sign(sb);
                r.resume_with(mc::SignedMessage::new(p, sig))
            }
            Effect::VerifySignature(m, _pk, r) => {
                let sb = match &m.message {
                    mcc::ConsensusMsg::Vote(v) => v.signed_bytes(&self.ctx),
                    mcc::ConsensusMsg::Proposal(p) => p.signed_bytes(&self.ctx),
                };
                let ok = self.verify_consensus_sig(sb, &m.signature);
                r.resume_with(ok)
            }
            Effect::VerifyCommitCertificate(c, _, tp, r) => {
                let e = self.commit_entries(
                    c.height,
                    c.round,
                    c.value_id,
                    c.commit_signatures.iter().map(|s| (s.address, s.signature)),
                );
                let res = self.count_cert(e, tp.quorum);
                r.resume_with(res)
            }
            Effect::VerifyExtendedCommitCertificate(c, _, tp, _, r) => {
                let e = self.commit_entries(
                    c.height,
                    c.round,
                    c.value_id,
                    c.commit_signatures.iter().map(|s| (s.address, s.signature)),
                );
                let res = self.count_cert(e, tp.quorum);
                r.resume_with(res)
            }
            Effect::VerifyPolkaCertificate(c, _, tp, r) => {
                let e = c
                    .polka_signatures
                    .iter()
                    .map(|s| {
                        (
                            self.sb(
                                c.height,
                                c.round,
                                MsgStep::Prevote,
                                NilOrVal::Val(c.value_id),
                                s.address,
                            ),
                            s.signature,
                        )
                    })
                    .collect();
                let res = self.count_cert(e, tp.quorum);
                r.resume_with(res)
            }
            Effect::VerifyRoundCertificate(c, _, tp, r) => {
                let e = c
                    .round_signatures
                    .iter()
                    .map(|s| {
                        let step = if s.vote_type == mc::VoteType::Precommit {
                            MsgStep::Precommit
                        } else {
                            MsgStep::Prevote
                        };
                        (
                            self.sb(c.height, c.round, step, s.value_id, s.address),
                            s.signature,
                        )
                    })
                    .collect();
                let th = match c.cert_type {
                    mc::RoundCertificateType::Skip => tp.honest,
                    mc::RoundCertificateType::Precommit => tp.quorum,
                };
                let res = self.count_cert(e, th);
                r.resume_with(res)
            }
            Effect::WalAppend(h, input, r) => {
                if let Some(record) = wal_record_of(&input) {
                    self.step
                        .persist
                        .push(Persist::WalAppend { height: h, record });
                }
                r.resume_with(())
            }
            Effect::ExtendVote(.., r) => r.resume_with(None),
            Effect::VerifyVoteExtension(.., r) => r.resume_with(Ok(())),
        }
    }
}
