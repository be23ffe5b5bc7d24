//! The built-in MPC engine, run by the daemon for the schemes in
//! `[party.engine] schemes`.
//!
//! The engine itself ([`quorate_mpc`]) is sans-IO: it takes the decided
//! messages of a session in log order and returns what to post. This module
//! is the glue: after each decided block it starts a participant for every
//! key generation that began (this party taking part, its scheme enabled),
//! feeds it every decided message of the session, and turns its outputs into
//! operations for the outbox: round messages, blame claims, and — once the
//! key share is sealed in the TPM — the session result (the group public
//! key). External engines (any other scheme) keep using the API; the two
//! paths coexist because the firmware is scheme-agnostic.
//!
//! Secrets: a participant's ephemeral round secrets (its DKG secret packages
//! and HPKE decryption keys) live only in this process's memory and are
//! zeroized when the session ends. They are never persisted, so a daemon
//! restarted in the middle of a key generation cannot continue it: it aborts
//! the session, naming itself (a clean failure with blame, never a half key).
//! The finished key share leaves memory only sealed by the TPM
//! ([`crate::tpm::TpmHandle::seal`]), under the vote key's PolicyPCR.
//!
//! Blame is judged by [`MpcJudge`], which the session machine calls for
//! `Blame` operations: a pure function of the session's decided messages,
//! identical at every party.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use quorate_firmware::sessions::machine::{
    BlameFinding, BlameJudge, Event, Phase, Session, SessionMachine, StoredMessage,
};
use quorate_firmware::sessions::ops::{
    AbortSession, BlameOp, Blob, DirectPart, KeyId, OpBody, Reason, ReasonCode, SessionId,
    SessionKind, SessionMessage, SessionResult, SessionSpec,
};
use quorate_firmware::types::{ClusterId, PartyId};
use quorate_mpc as mpc;

use crate::tpm::SealedBlob;

/// `[party.engine]`: which schemes this daemon runs itself.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Scheme labels the built-in engine runs (`frost-ed25519`,
    /// `frost-secp256k1-tr`); sessions of any other scheme are left to an
    /// external engine through the API. Default: both.
    #[serde(default = "default_schemes")]
    pub schemes: Vec<String>,
    /// Development only (ignored unless `[party] dev = true`): misbehave on
    /// purpose, to show blame working. `bad_share_to:N` deals party N a
    /// corrupted (but well-encrypted) DKG share; `bad_signature_share`
    /// corrupts every signature share this party posts when signing;
    /// `withhold_signature_share` posts commitments but never a share.
    #[serde(default)]
    pub dev_fault: Option<String>,
}

fn default_schemes() -> Vec<String> {
    vec![
        mpc::Scheme::Ed25519.label().to_string(),
        mpc::Scheme::Secp256k1Tr.label().to_string(),
    ]
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            schemes: default_schemes(),
            dev_fault: None,
        }
    }
}

/// Why `[party.engine]` is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineConfigError {
    /// A scheme the built-in engine does not implement.
    #[error("[party.engine] schemes: `{0}` is not a built-in scheme (use frost-ed25519 or frost-secp256k1-tr; other schemes need an external engine)")]
    UnknownScheme(String),
    /// A `dev_fault` that does not parse.
    #[error("[party.engine] dev_fault: `{0}` is not understood (expected bad_share_to:N, bad_signature_share or withhold_signature_share)")]
    BadFault(String),
}

impl EngineConfig {
    /// The enabled schemes.
    pub fn parsed_schemes(&self) -> Result<BTreeSet<mpc::Scheme>, EngineConfigError> {
        self.schemes
            .iter()
            .map(|s| {
                mpc::Scheme::from_label(s)
                    .ok_or_else(|| EngineConfigError::UnknownScheme(s.clone()))
            })
            .collect()
    }

    /// The dev fault, if any (only in dev mode).
    pub fn parsed_fault(&self, dev: bool) -> Result<Option<mpc::DkgFault>, EngineConfigError> {
        let Some(f) = &self.dev_fault else {
            return Ok(None);
        };
        if f == BAD_SIGNATURE_SHARE || f == WITHHOLD_SIGNATURE_SHARE {
            return Ok(None);
        }
        let to = f
            .strip_prefix("bad_share_to:")
            .and_then(|n| n.parse::<u16>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| EngineConfigError::BadFault(f.clone()))?;
        if !dev {
            warn!("[party.engine] dev_fault is ignored: this party is not in dev mode");
            return Ok(None);
        }
        Ok(Some(mpc::DkgFault::BadShareTo(mpc::PartyId(to))))
    }
}

const BAD_SIGNATURE_SHARE: &str = "bad_signature_share";
const WITHHOLD_SIGNATURE_SHARE: &str = "withhold_signature_share";

/// How a party misbehaves when signing, on purpose (dev mode only), to
/// show ROAST working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignFault {
    /// Signs honestly.
    #[default]
    None,
    /// Corrupts every signature share it posts: the share fails
    /// verification and the party is named with the share as proof.
    CorruptShares,
    /// Posts its commitments but never a signature share: a stalling
    /// signer, suspected at the attempt's deadline.
    WithholdShares,
}

impl EngineConfig {
    /// The signing dev fault (only in dev mode).
    pub fn sign_fault(&self, dev: bool) -> SignFault {
        let fault = match self.dev_fault.as_deref() {
            Some(BAD_SIGNATURE_SHARE) => SignFault::CorruptShares,
            Some(WITHHOLD_SIGNATURE_SHARE) => SignFault::WithholdShares,
            _ => return SignFault::None,
        };
        if !dev {
            warn!("[party.engine] dev_fault is ignored: this party is not in dev mode");
            return SignFault::None;
        }
        fault
    }
}

/// A key share as stored: sealed by this party's TPM, with its public part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredShare {
    /// The scheme label.
    pub scheme: String,
    /// The 32-byte signing share, sealed (opaque without this TPM).
    pub sealed: SealedBlob,
    /// The share's public part (identifier, verifying share, group key).
    #[serde(with = "serde_bytes")]
    pub public: Vec<u8>,
    /// The group public key this party posts as its result.
    #[serde(with = "serde_bytes")]
    pub group_public_key: Vec<u8>,
}

/// The store key under which a session's sealed share is kept.
pub fn share_key(session: &SessionId) -> String {
    format!("mpc/share/{}", hex::encode(session.0.as_bytes()))
}

/// Stores this party's sealed share of the key made by `session`.
///
/// Encoded as JSON, not postcard: [`SealedBlob`]'s authorisation is an
/// internally tagged enum, which postcard cannot decode (an earlier
/// postcard encoding was written but could never be read back).
pub fn store_share(
    store: &crate::store::Store,
    session: &SessionId,
    share: &StoredShare,
) -> anyhow::Result<()> {
    store.set_meta(&share_key(session), &serde_json::to_vec(share)?)?;
    Ok(())
}

/// This party's sealed share of the key made by `session`, if it holds one.
pub fn load_share(
    store: &crate::store::Store,
    session: &SessionId,
) -> anyhow::Result<Option<StoredShare>> {
    match store.meta(&share_key(session))? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            anyhow::anyhow!(
                "the stored key share of {} is corrupt: {e}",
                hex::encode(session.0.as_bytes())
            )
        }),
    }
}

/// A session id from its 64 hex digits.
pub(crate) fn parse_session_id(id: &str) -> Option<SessionId> {
    let bytes: [u8; 32] = hex::decode(id).ok()?.try_into().ok()?;
    Some(SessionId(quorate_firmware::types::Sha256Digest(bytes)))
}

/// Every stored key share: `(store key, session)`.
pub fn stored_shares(store: &crate::store::Store) -> anyhow::Result<Vec<(String, SessionId)>> {
    let prefix = "mpc/share/";
    Ok(store
        .meta_keys(prefix)?
        .into_iter()
        .filter_map(|name| {
            let sid = parse_session_id(name.strip_prefix(prefix)?)?;
            Some((name, sid))
        })
        .collect())
}

/// What the daemon must do for the engine.
#[derive(Debug)]
pub enum EngineAction {
    /// Queue this operation (authored by this party) in the outbox.
    Submit(OpBody),
    /// Unseal this party's current share of a key being refreshed (stored
    /// under `share_session`), then call [`Engine::refresh_unsealed`].
    Unseal {
        /// The refresh session.
        session: SessionId,
        /// The session the current share is stored under.
        share_session: SessionId,
    },
    /// Seal `share` in the TPM, store it under [`share_key`], then submit
    /// `group_public_key` as the session's result.
    Seal {
        /// The key generation.
        session: SessionId,
        /// The share (secret part zeroized on drop).
        share: mpc::KeyShare,
        /// The result to post once sealed.
        group_public_key: Vec<u8>,
    },
}

/// The engine's runs in this daemon: one participant per open key
/// generation this party takes part in.
pub struct Engine {
    me: PartyId,
    cluster: ClusterId,
    schemes: BTreeSet<mpc::Scheme>,
    fault: Option<mpc::DkgFault>,
    runs: BTreeMap<SessionId, mpc::Dkg>,
    /// Digests of the round messages this process posted, per session and
    /// round: a decided message of ours that is not among them was posted
    /// by an earlier run of this daemon, whose secrets are gone.
    posted_here: BTreeMap<SessionId, BTreeMap<u32, [u8; 32]>>,
    rng: rand_core::OsRng,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .field("schemes", &self.schemes)
            .field("runs", &self.runs.len())
            .finish()
    }
}

/// Cluster party ids as the engine's (16-bit) ids; `None` if one is out
/// of range.
pub(crate) fn mpc_parties(parties: &[PartyId]) -> Option<Vec<mpc::PartyId>> {
    parties
        .iter()
        .map(|p| u16::try_from(p.0).ok().map(mpc::PartyId))
        .collect()
}

/// The engine's view of a session's parameters, when it is one the
/// built-in engine knows.
pub fn session_ctx(cluster: &ClusterId, s: &Session) -> Option<mpc::SessionCtx> {
    let scheme = mpc::Scheme::from_label(&s.scheme)?;
    let participants = mpc_parties(&s.participants)?;
    Some(mpc::SessionCtx {
        cluster_id: *cluster.0.as_bytes(),
        session_id: *s.id.0.as_bytes(),
        scheme,
        participants,
        threshold: s.threshold,
    })
}

/// A decided message as the engine reads it.
pub fn posted(m: &StoredMessage) -> Option<mpc::Posted> {
    let from = mpc::PartyId(u16::try_from(m.from.0).ok()?);
    let mut direct = BTreeMap::new();
    for d in &m.direct {
        direct.insert(
            mpc::PartyId(u16::try_from(d.to.0).ok()?),
            d.payload.0.clone(),
        );
    }
    Some(mpc::Posted {
        round: m.round,
        from,
        message: mpc::RoundMessage {
            broadcast: m.broadcast.as_ref().map(|b| b.0.clone()),
            direct,
        },
    })
}

/// A digest of a round message, to recognise this process's own posts.
pub(crate) fn digest_of(m: &mpc::RoundMessage) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    if let Some(b) = &m.broadcast {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    }
    for (to, d) in &m.direct {
        ctx.update(&to.0.to_be_bytes());
        ctx.update(&(d.len() as u64).to_be_bytes());
        ctx.update(d);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub(crate) fn message_op(session: SessionId, round: u32, m: mpc::RoundMessage) -> OpBody {
    OpBody::SessionMessage(SessionMessage {
        session,
        round,
        broadcast: m.broadcast.map(Blob),
        direct: m
            .direct
            .into_iter()
            .map(|(to, payload)| DirectPart {
                to: PartyId(u32::from(to.0)),
                payload: Blob(payload),
            })
            .collect(),
    })
}

pub(crate) fn abort_op(session: SessionId, text: String) -> OpBody {
    let mut text = text;
    text.truncate(quorate_firmware::sessions::ops::MAX_TEXT_BYTES);
    OpBody::AbortSession(AbortSession {
        session,
        reason: Reason {
            code: ReasonCode::EngineFailure,
            text,
        },
    })
}

impl Engine {
    /// An engine for `me` running `schemes`.
    pub fn new(
        me: PartyId,
        cluster: ClusterId,
        schemes: BTreeSet<mpc::Scheme>,
        fault: Option<mpc::DkgFault>,
    ) -> Self {
        Engine {
            me,
            cluster,
            schemes,
            fault,
            runs: BTreeMap::new(),
            posted_here: BTreeMap::new(),
            rng: rand_core::OsRng,
        }
    }

    /// Drops a session's participant (zeroizing its secrets) and what this
    /// process posted for it; true when there was a participant.
    fn forget(&mut self, sid: &SessionId) -> bool {
        self.posted_here.remove(sid);
        self.runs.remove(sid).is_some()
    }

    /// True when the built-in engine runs `s` (a key generation or a
    /// share refresh) at this party.
    fn runs_here(&self, s: &Session) -> bool {
        matches!(s.spec.kind(), SessionKind::Keygen | SessionKind::Refresh)
            && s.participants.contains(&self.me)
            && mpc::Scheme::from_label(&s.scheme).is_some_and(|sc| self.schemes.contains(&sc))
    }

    /// Open key generations this party runs (for status).
    pub fn running(&self) -> usize {
        self.runs.len()
    }

    /// What to do after a decided block (not during replay at start).
    pub fn on_block(&mut self, machine: &SessionMachine, events: &[Event]) -> Vec<EngineAction> {
        let mut actions = Vec::new();
        for ev in events {
            match ev {
                Event::SessionStarted { session } => self.start(machine, *session, &mut actions),
                Event::Message { session, op, .. } => {
                    self.feed(machine, *session, op, &mut actions)
                }
                Event::SessionCompleted { session, .. } | Event::SessionFailed { session, .. } => {
                    // Dropping the participant zeroizes its secrets.
                    let had_participant = self.forget(session);
                    if had_participant {
                        info!(session = %hex::encode(session.0.as_bytes()), "key generation or refresh ended; its round secrets are erased");
                    }
                }
                _ => {}
            }
        }
        actions
    }

    fn start(&mut self, machine: &SessionMachine, sid: SessionId, out: &mut Vec<EngineAction>) {
        let Some(s) = machine.session(&sid) else {
            return;
        };
        if !self.runs_here(s) {
            return;
        }
        if let SessionSpec::Refresh(r) = &s.spec {
            // The current share is sealed in the TPM: unseal it first.
            let Some(key) = machine.key(&r.key) else {
                return;
            };
            info!(session = %hex::encode(sid.0.as_bytes()), "share refresh started: unsealing the current share");
            out.push(EngineAction::Unseal {
                session: sid,
                share_session: key.share_session(),
            });
            return;
        }
        let (Some(ctx), Ok(me)) = (session_ctx(&self.cluster, s), u16::try_from(self.me.0)) else {
            return;
        };
        let started = match &self.fault {
            Some(f) => mpc::Dkg::start_with_fault(ctx, mpc::PartyId(me), *f, &mut self.rng),
            None => mpc::Dkg::start(ctx, mpc::PartyId(me), &mut self.rng),
        };
        self.begin(
            sid,
            started.map_err(|e| e.to_string()),
            "key generation",
            out,
        );
    }

    /// Keeps a started participant and posts its round 1, or aborts the
    /// session when it could not start; true when it runs.
    fn begin(
        &mut self,
        sid: SessionId,
        started: Result<(mpc::Dkg, mpc::RoundMessage), String>,
        what: &str,
        out: &mut Vec<EngineAction>,
    ) -> bool {
        match started {
            Ok((dkg, round1)) => {
                info!(session = %hex::encode(sid.0.as_bytes()), "{what} started: posting round 1");
                self.runs.insert(sid, dkg);
                self.posted_here
                    .entry(sid)
                    .or_default()
                    .insert(1, digest_of(&round1));
                out.push(EngineAction::Submit(message_op(sid, 1, round1)));
                true
            }
            Err(e) => {
                warn!(error = %e, "the MPC engine could not start a {what}");
                out.push(EngineAction::Submit(abort_op(sid, format!("engine: {e}"))));
                false
            }
        }
    }

    /// The current share of a key being refreshed is unsealed: start the
    /// refresh (posting its round 1) and feed it the round messages decided
    /// while the TPM worked.
    pub fn refresh_unsealed(
        &mut self,
        machine: &SessionMachine,
        sid: SessionId,
        res: Result<(zeroize::Zeroizing<Vec<u8>>, StoredShare), String>,
    ) -> Vec<EngineAction> {
        let mut out = Vec::new();
        let Some(s) = machine.session(&sid) else {
            return out;
        };
        if !matches!(s.phase, Phase::Active { .. }) || self.runs.contains_key(&sid) {
            return out;
        }
        let (Some(ctx), Ok(me)) = (session_ctx(&self.cluster, s), u16::try_from(self.me.0)) else {
            return out;
        };
        let started = res
            .map_err(|e| format!("unsealing the current share failed: {e}"))
            .and_then(|(secret, stored)| {
                mpc::KeyShare::from_parts(ctx.scheme, &secret, &stored.public)
                    .map_err(|e| e.to_string())
            })
            .and_then(|old| {
                mpc::Dkg::start_refresh(ctx, mpc::PartyId(me), &old, &mut self.rng)
                    .map_err(|e| e.to_string())
            });
        if self.begin(sid, started, "share refresh", &mut out) {
            let decided: Vec<_> = s.messages.iter().map(|m| m.op).collect();
            for op in decided {
                self.feed(machine, sid, &op, &mut out);
            }
        }
        out
    }

    fn feed(
        &mut self,
        machine: &SessionMachine,
        sid: SessionId,
        op: &quorate_firmware::sessions::ops::OpId,
        out: &mut Vec<EngineAction>,
    ) {
        if !self.runs.contains_key(&sid) {
            return;
        }
        let Some(s) = machine.session(&sid) else {
            return;
        };
        let Some(p) = s.messages.iter().find(|m| m.op == *op).and_then(posted) else {
            return;
        };
        if p.from.0 as u32 == self.me.0 {
            let ours = self
                .posted_here
                .get(&sid)
                .and_then(|r| r.get(&p.round))
                .is_some_and(|d| *d == digest_of(&p.message));
            if !ours {
                // An earlier run of this daemon posted it; its secrets are
                // gone, so this run cannot continue the key generation.
                self.forget(&sid);
                out.push(EngineAction::Submit(restarted_op(sid, self.me)));
                return;
            }
        }
        let Some(dkg) = self.runs.get_mut(&sid) else {
            return;
        };
        match dkg.on_message(&p, &mut self.rng) {
            Ok(outputs) => {
                for o in outputs {
                    match o {
                        mpc::DkgOutput::Submit { round, message } => {
                            self.posted_here
                                .entry(sid)
                                .or_default()
                                .insert(round, digest_of(&message));
                            out.push(EngineAction::Submit(message_op(sid, round, message)))
                        }
                        mpc::DkgOutput::Complete {
                            group_public_key,
                            share,
                        } => out.push(EngineAction::Seal {
                            session: sid,
                            share,
                            group_public_key,
                        }),
                        mpc::DkgOutput::Blame { culprit, proof, .. } => {
                            warn!(session = %hex::encode(sid.0.as_bytes()), culprit = culprit.0, "key generation: blaming a participant, with proof");
                            out.push(EngineAction::Submit(OpBody::Blame(BlameOp {
                                session: sid,
                                culprit: PartyId(u32::from(culprit.0)),
                                proof: Blob(proof),
                            })))
                        }
                    }
                }
            }
            Err(e @ mpc::EngineError::Oversized { .. }) => {
                // The firmware's payload limit is the cluster's, larger than
                // the engine's part limit: a decided message no engine will
                // read would stall the key generation until its deadline.
                // End it now, naming the sender.
                warn!(error = %e, from = p.from.0, "a decided round message is over the engine's part limit; aborting the key generation");
                self.forget(&sid);
                out.push(EngineAction::Submit(abort_op(
                    sid,
                    format!("P{}'s round-{} message: {e}", p.from.0, p.round),
                )));
            }
            Err(e) => {
                // A peer's malformed message is already public in the log;
                // the engine names it via Blame where it can.
                warn!(error = %e, "the MPC engine refused a decided message");
            }
        }
    }

    /// After a restart: the round secrets of any key generation that was
    /// running are gone (by design). For each open key generation this
    /// party takes part in: re-post the result if the share was already
    /// sealed (`sealed` says which), otherwise abort it naming this party.
    /// `queued` are sessions that already have a result or abort of ours in
    /// the outbox.
    pub fn on_restart(
        &mut self,
        machine: &SessionMachine,
        sealed: &dyn Fn(&SessionId) -> Option<Vec<u8>>,
        queued: &BTreeSet<SessionId>,
    ) -> Vec<EngineAction> {
        let mut out = Vec::new();
        let open: Vec<&Session> = machine
            .sessions()
            .filter(|s| matches!(s.phase, Phase::Active { .. }))
            .filter(|s| self.runs_here(s))
            .filter(|s| !s.results.contains_key(&self.me))
            .filter(|s| !queued.contains(&s.id))
            .collect();
        for s in open {
            match sealed(&s.id) {
                Some(gpk) => out.push(EngineAction::Submit(OpBody::SessionResult(SessionResult {
                    session: s.id,
                    result: Blob(gpk),
                }))),
                None => {
                    warn!(session = %hex::encode(s.id.0.as_bytes()), "restarted mid key generation: its round secrets were erased; aborting it");
                    out.push(EngineAction::Submit(restarted_op(s.id, self.me)));
                }
            }
        }
        out
    }
}

/// The abort of a key generation this daemon cannot continue because it
/// restarted: its round secrets were never persisted.
fn restarted_op(session: SessionId, me: PartyId) -> OpBody {
    abort_op(
        session,
        format!(
            "{me} restarted during the key generation; its round secrets are never persisted, so it cannot continue"
        ),
    )
}

/// The result operation for a sealed share.
pub fn result_op(session: SessionId, group_public_key: Vec<u8>) -> OpBody {
    OpBody::SessionResult(SessionResult {
        session,
        result: Blob(group_public_key),
    })
}

/// The abort operation when sealing failed.
pub fn seal_failed_op(session: SessionId, error: &str) -> OpBody {
    abort_op(
        session,
        format!("sealing the key share in the TPM failed: {error}"),
    )
}

/// The group public key and key id of a completed key generation, or of
/// the key a refresh is for, for the API: `(group_public_key hex, key id
/// hex)`.
pub fn key_view(machine: &SessionMachine, s: &Session) -> Option<(String, String)> {
    let id = match &s.spec {
        SessionSpec::Keygen(_) => KeyId::of_session(&s.id),
        SessionSpec::Refresh(r) => r.key,
        _ => return None,
    };
    let key = machine.key(&id)?;
    Some((
        hex::encode(key.public_key.as_slice()),
        hex::encode(key.id.0.as_bytes()),
    ))
}

/// The snake_case name of a finding, as the session's failure records it.
pub fn blame_label(kind: mpc::BlameKind) -> &'static str {
    match kind {
        mpc::BlameKind::MalformedRound1 => "malformed_round1",
        mpc::BlameKind::InvalidProofOfKnowledge => "invalid_proof_of_knowledge",
        mpc::BlameKind::MissingOrMisaddressedShare => "missing_or_misaddressed_share",
        mpc::BlameKind::UndecryptableShare => "undecryptable_share",
        mpc::BlameKind::InvalidSecretShare => "invalid_secret_share",
        _ => "protocol_violation",
    }
}

/// Judges `Blame` operations for the built-in schemes with the engine's
/// public checks ([`mpc::check_blame`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct MpcJudge;

impl BlameJudge for MpcJudge {
    fn judges(&self, scheme: &str) -> bool {
        mpc::Scheme::from_label(scheme).is_some()
    }

    fn judge(
        &self,
        cluster: &ClusterId,
        session: &Session,
        accuser: PartyId,
        accused: PartyId,
        proof: &[u8],
    ) -> Result<BlameFinding, String> {
        let check = match session.spec.kind() {
            SessionKind::Keygen => mpc::check_blame,
            SessionKind::Refresh => mpc::check_refresh_blame,
            _ => return Err("blame is judged for key generations and refreshes only".into()),
        };
        let ctx = session_ctx(cluster, session).ok_or("not a built-in scheme session")?;
        let log: Vec<mpc::Posted> = session.messages.iter().filter_map(posted).collect();
        let party = |p: PartyId| {
            u16::try_from(p.0)
                .map(mpc::PartyId)
                .map_err(|_| format!("{p} is out of range"))
        };
        match check(&ctx, &log, party(accuser)?, party(accused)?, proof) {
            Ok(mpc::BlameVerdict::Culprit(kind)) => Ok(BlameFinding::CulpritProven {
                kind: blame_label(kind).to_string(),
            }),
            Ok(mpc::BlameVerdict::FalseAccusation) => Ok(BlameFinding::FalseAccusation),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tpm::KeyAuth;

    #[test]
    fn a_stored_share_reads_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sid = SessionId(quorate_firmware::types::Sha256Digest::of(b"keygen"));
        let share = StoredShare {
            scheme: "frost-ed25519".into(),
            sealed: SealedBlob {
                public: vec![1, 2, 3],
                private: vec![4, 5],
                auth: KeyAuth::PolicyPcr {
                    pcr: 15,
                    digest: [7; 32],
                },
            },
            public: vec![9; 40],
            group_public_key: vec![8; 32],
        };
        {
            let store = crate::store::Store::open(dir.path(), "party 1").unwrap();
            assert!(load_share(&store, &sid).unwrap().is_none());
            store_share(&store, &sid, &share).unwrap();
        }
        let store = crate::store::Store::open(dir.path(), "party 1").unwrap();
        let back = load_share(&store, &sid).unwrap().unwrap();
        assert_eq!(back.sealed, share.sealed);
        assert_eq!(back.public, share.public);
        assert_eq!(back.group_public_key, share.group_public_key);
        // A damaged record is an error, not "no share".
        store.set_meta(&share_key(&sid), b"{not json").unwrap();
        assert!(load_share(&store, &sid).is_err());
    }
}
