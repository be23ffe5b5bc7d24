//! Threshold signing with the built-in engine: ROAST run from the decided
//! log.
//!
//! Every party that holds a share of the key (its public part is enough)
//! runs a [`mpc::Roast`] observer for each signing session of a built-in
//! scheme, fed the same inputs in the same order: the session's decided
//! messages, and attempt deadlines judged on BLOCK time only. When a
//! decided block's time reaches (time of the block that started the open
//! attempt) + the session's `round_ms`, the deadline is applied BEFORE the
//! block's messages. So every party computes the same attempts, suspects,
//! culprits and signature, and `GET /v1/sessions/{id}` shows them
//! identically everywhere.
//!
//! A candidate that holds a sealed share also runs a [`mpc::Signer`]: the
//! daemon unseals the share in the TPM off the event loop, then
//! [`SignEngine::share_unsealed`] starts the signer (its round-1
//! commitments go to the outbox) and feeds it the inputs buffered so far.
//!
//! Nonces: they live only in the signer's memory. "Nonce used"
//! ([`mpc::SignOutput::NonceUsed`]) is persisted in the store BEFORE the
//! share that used it is queued ([`SignAction::NonceUsed`] precedes the
//! share's [`SignAction::Submit`], and the daemon carries actions out in
//! order). A daemon restarted during a signing session never starts a
//! signer for it again: its nonces are gone, so a commitment of its in the
//! log can never be answered, and ROAST suspects it and moves on.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tracing::{info, warn};

use quorate_firmware::sessions::machine::{Event, Phase, Session, SessionMachine};
use quorate_firmware::sessions::ops::{
    Blob, KeyId, OpBody, SessionId, SessionResult, SessionSpec, SigningSpec,
};
use quorate_firmware::types::{ClusterId, PartyId};
use quorate_mpc as mpc;
use zeroize::Zeroizing;

use crate::engine::{posted, SignFault, StoredShare};

/// The store key recording which of this party's nonces of a signing
/// session are used (the rounds whose commitments they belong to).
pub fn nonce_used_key(session: &SessionId) -> String {
    format!("mpc/nonce-used/{}", hex::encode(session.0.as_bytes()))
}

/// What the daemon must do for signing.
#[derive(Debug)]
pub enum SignAction {
    /// Queue this operation (authored by this party) in the outbox.
    Submit(OpBody),
    /// Unseal this share in the TPM, then call
    /// [`SignEngine::share_unsealed`].
    Unseal {
        /// The signing session.
        session: SessionId,
    },
    /// Persist, before the next action, that the nonce committed in round
    /// `slot` of `session` is used.
    NonceUsed {
        /// The signing session.
        session: SessionId,
        /// The round of the used nonce's commitments.
        slot: u32,
    },
}

/// One proven culprit, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CulpritView {
    /// The culprit.
    pub party: u16,
    /// `invalid_share` or `malformed`.
    pub kind: &'static str,
    /// The offending share or message, lowercase hex (public: it was
    /// posted in the log).
    pub proof: String,
}

/// One ROAST attempt, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttemptView {
    /// From 1.
    pub attempt: u32,
    /// The round that carries its shares.
    pub round: u32,
    /// The height of the block that started it.
    pub started_height: u64,
    /// The t selected signers, ascending.
    pub signers: Vec<u16>,
    /// Selected signers that missed its deadline.
    pub suspects: Vec<u16>,
    /// Selected signers proven to have posted an invalid share.
    pub culprits: Vec<CulpritView>,
    /// `open`, `signed`, `timed_out` or `blamed`.
    pub outcome: &'static str,
}

/// A message the engine refused (the firmware accepted it: it is in the
/// log), with the reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RefusedView {
    /// The sender.
    pub from: u32,
    /// The round.
    pub round: u32,
    /// Why.
    pub reason: String,
}

/// The ROAST coordinator's record of a signing session, identical at every
/// party that observes it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SignView {
    /// The 64-byte signature, lowercase hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The 32-byte key the signature verifies under, lowercase hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifying_key: Option<String>,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptView>,
    /// Candidates proven malicious while posting commitments.
    pub culprits: Vec<CulpritView>,
    /// Messages the engine refused.
    pub refused: Vec<RefusedView>,
    /// Why no signature can be produced, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

enum Input {
    Deadline(u32),
    Message(mpc::Posted),
}

enum SignerState {
    /// Not a candidate, no share, or restarted: observe only.
    None,
    /// Unsealing: inputs wait here.
    Pending(Vec<Input>),
    /// Running.
    Running(Box<mpc::Signer>),
}

struct Run {
    ctx: mpc::SigningCtx,
    round_ms: u64,
    roast: mpc::Roast,
    /// The open attempt and the block time it started.
    open: Option<(u32, u64)>,
    candidate: bool,
    signer: SignerState,
    result_posted: bool,
    /// Digests of the messages this process posted, by round: a decided
    /// message of ours that is not among them was posted by an earlier run
    /// of this daemon (a crash, or a store restored from a backup), whose
    /// nonces are gone.
    posted: BTreeMap<u32, [u8; 32]>,
}

/// True when `p` is this party's message that this process did not post.
fn posted_elsewhere(me: PartyId, posted: &BTreeMap<u32, [u8; 32]>, p: &mpc::Posted) -> bool {
    u32::from(p.from.0) == me.0
        && posted.get(&p.round) != Some(&crate::engine::digest_of(&p.message))
}

/// Signing sessions of the built-in engine at this party.
pub struct SignEngine {
    me: PartyId,
    cluster: ClusterId,
    schemes: BTreeSet<mpc::Scheme>,
    fault: SignFault,
    runs: BTreeMap<SessionId, Run>,
    views: BTreeMap<SessionId, SignView>,
    rng: rand_core::OsRng,
}

impl std::fmt::Debug for SignEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignEngine")
            .field("me", &self.me)
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

fn blame_kind(k: mpc::SignBlameKind) -> &'static str {
    match k {
        mpc::SignBlameKind::InvalidShare => "invalid_share",
        _ => "malformed",
    }
}

fn failure_label(f: mpc::SignFailure) -> &'static str {
    match f {
        mpc::SignFailure::TooManyAttempts => "too_many_attempts",
        _ => "not_enough_honest",
    }
}

fn short(session: &SessionId) -> String {
    hex::encode(session.0.as_bytes())
}

/// The signing context of `s`, given the key's public key package.
pub fn signing_ctx(
    cluster: &ClusterId,
    s: &Session,
    spec: &SigningSpec,
    public_key_package: Vec<u8>,
) -> Option<mpc::SigningCtx> {
    let scheme = mpc::Scheme::from_label(&s.scheme)?;
    let candidates = crate::engine::mpc_parties(&s.participants)?;
    let taproot = match &spec.taproot {
        None => None,
        Some(t) => Some(mpc::TaprootTweak {
            merkle_root: match &t.merkle_root {
                None => None,
                Some(b) => Some(<[u8; 32]>::try_from(b.0.as_slice()).ok()?),
            },
        }),
    };
    Some(mpc::SigningCtx {
        cluster_id: *cluster.0.as_bytes(),
        session_id: *s.id.0.as_bytes(),
        scheme,
        candidates,
        threshold: s.threshold,
        message: spec.message_digest.0.clone(),
        taproot,
        public_key_package,
    })
}

/// The public key package in a stored share's public part.
fn public_key_package(stored: &StoredShare) -> Option<Vec<u8>> {
    let scheme = mpc::Scheme::from_label(&stored.scheme)?;
    let share = mpc::KeyShare {
        scheme,
        secret: Zeroizing::new(Vec::new()),
        public: stored.public.clone(),
    };
    share.public_key_package().ok()
}

impl SignEngine {
    /// A signing engine for `me`; `fault` (dev only) makes it misbehave on
    /// purpose.
    pub fn new(
        me: PartyId,
        cluster: ClusterId,
        schemes: BTreeSet<mpc::Scheme>,
        fault: SignFault,
    ) -> Self {
        SignEngine {
            me,
            cluster,
            schemes,
            fault,
            runs: BTreeMap::new(),
            views: BTreeMap::new(),
            rng: rand_core::OsRng,
        }
    }

    /// The coordinator's record of a signing session, if this party
    /// observes it.
    pub fn view(&self, session: &SessionId) -> Option<&SignView> {
        self.views.get(session)
    }

    /// Drops what is kept of a finished session (its view was stored when
    /// the session machine retired it).
    pub fn forget(&mut self, session: &SessionId) {
        self.views.remove(session);
        self.runs.remove(session);
    }

    /// The earliest block time (ms) at which an open attempt's deadline
    /// is due (see [`SessionMachine::next_deadline`] for the machine's).
    pub fn next_deadline(&self) -> Option<u64> {
        self.runs
            .values()
            .filter_map(|r| r.open.map(|(_, t0)| t0.saturating_add(r.round_ms)))
            .min()
    }

    /// Signing sessions being run (for status).
    pub fn running(&self) -> usize {
        self.runs.len()
    }

    /// After a decided block (`live`), or while replaying the log at start
    /// (`!live`: the observers catch up, nothing is posted and no signer is
    /// started). `stored` finds this party's stored share of a key.
    /// `catching_up`: the block is history this party is catching up on;
    /// a session that starts in it is only observed.
    pub fn on_block(
        &mut self,
        machine: &SessionMachine,
        time_ms: u64,
        events: &[Event],
        stored: &dyn Fn(&KeyId) -> Option<StoredShare>,
        live: bool,
        catching_up: bool,
    ) -> Vec<SignAction> {
        let mut out = Vec::new();
        let height = machine.height().0;
        // Deadlines first, judged on this block's time, before any of its
        // messages: the same at every party.
        let due: Vec<(SessionId, u32)> = self
            .runs
            .iter()
            .filter_map(|(sid, r)| {
                let (attempt, t0) = r.open?;
                (time_ms >= t0.saturating_add(r.round_ms)).then_some((*sid, attempt))
            })
            .collect();
        for (sid, attempt) in due {
            self.input(
                sid,
                Input::Deadline(mpc::share_round(attempt)),
                height,
                time_ms,
                live,
                &mut out,
            );
        }
        for ev in events {
            match ev {
                Event::SessionStarted { session } => {
                    self.start(machine, *session, stored, live, catching_up, &mut out)
                }
                Event::Message { session, op, .. } => {
                    if !self.runs.contains_key(session) {
                        continue;
                    }
                    let p = machine
                        .session(session)
                        .and_then(|s| s.messages.iter().find(|m| m.op == *op))
                        .and_then(posted);
                    if let Some(p) = p {
                        self.input(*session, Input::Message(p), height, time_ms, live, &mut out);
                    }
                }
                Event::SessionCompleted { session, .. } | Event::SessionFailed { session, .. } => {
                    // Dropping the signer zeroizes its nonces and share.
                    let had_run = self.runs.remove(session).is_some();
                    if had_run && live {
                        info!(session = %short(session), "signing session ended; its nonces are erased");
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn start(
        &mut self,
        machine: &SessionMachine,
        sid: SessionId,
        stored: &dyn Fn(&KeyId) -> Option<StoredShare>,
        live: bool,
        catching_up: bool,
        out: &mut Vec<SignAction>,
    ) {
        let Some(s) = machine.session(&sid) else {
            return;
        };
        let SessionSpec::Signing(spec) = &s.spec else {
            return;
        };
        let Some(scheme) = mpc::Scheme::from_label(&s.scheme) else {
            return;
        };
        if !self.schemes.contains(&scheme) {
            return;
        }
        // Only a holder of the key knows its public key package.
        let Some(share) = stored(&spec.key) else {
            if live && s.participants.contains(&self.me) {
                warn!(session = %short(&sid), "a candidate signer without a stored share of the key: it cannot sign or observe");
            }
            return;
        };
        let Some(pkp) = public_key_package(&share) else {
            warn!(session = %short(&sid), "the stored key share's public part does not decode");
            return;
        };
        let candidate = s.participants.contains(&self.me);
        let view = self.views.entry(sid).or_default();
        let ctx = signing_ctx(&self.cluster, s, spec, pkp);
        let roast = match ctx.clone().map(mpc::Roast::new) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                view.failure = Some(format!("engine: {e}"));
                if live && candidate {
                    warn!(session = %short(&sid), error = %e, "the signing session's parameters are refused; aborting it");
                    out.push(SignAction::Submit(crate::engine::abort_op(
                        sid,
                        format!("engine: {e}"),
                    )));
                }
                return;
            }
            None => {
                view.failure = Some("engine: the taproot merkle root is not 32 bytes".into());
                if live && candidate {
                    out.push(SignAction::Submit(crate::engine::abort_op(
                        sid,
                        "engine: the taproot merkle root is not 32 bytes".into(),
                    )));
                }
                return;
            }
        };
        let Some(ctx) = ctx else {
            return;
        };
        if live && candidate && catching_up {
            warn!(session = %short(&sid), "a signing session started while this party catches up: it observes without signing (an earlier run may have committed in it)");
        }
        let signer = if live && candidate && !catching_up {
            info!(session = %short(&sid), "signing session started: unsealing the key share");
            out.push(SignAction::Unseal { session: sid });
            SignerState::Pending(Vec::new())
        } else {
            SignerState::None
        };
        self.runs.insert(
            sid,
            Run {
                ctx,
                round_ms: s.round_ms,
                roast,
                open: None,
                candidate,
                signer,
                result_posted: s.results.contains_key(&self.me),
                posted: BTreeMap::new(),
            },
        );
    }

    fn input(
        &mut self,
        sid: SessionId,
        input: Input,
        height: u64,
        time_ms: u64,
        live: bool,
        out: &mut Vec<SignAction>,
    ) {
        let Some(run) = self.runs.get_mut(&sid) else {
            return;
        };
        let view = self.views.entry(sid).or_default();
        let events = match &input {
            Input::Deadline(round) => Ok(run.roast.on_deadline(*round)),
            Input::Message(p) => run.roast.on_message(p),
        };
        match events {
            Ok(events) => {
                for e in events {
                    record(run, view, e, height, time_ms);
                }
            }
            Err(e) => {
                if let Input::Message(p) = &input {
                    view.refused.push(RefusedView {
                        from: u32::from(p.from.0),
                        round: p.round,
                        reason: e.to_string(),
                    });
                    if live {
                        warn!(session = %short(&sid), from = p.from.0, round = p.round, error = %e, "the signing engine refused a decided message");
                    }
                }
            }
        }
        if live && run.candidate && !run.result_posted {
            if let Some(sig) = &view.signature {
                if let Ok(bytes) = hex::decode(sig) {
                    run.result_posted = true;
                    info!(session = %short(&sid), "ROAST produced the signature; posting it as the result");
                    out.push(SignAction::Submit(OpBody::SessionResult(SessionResult {
                        session: sid,
                        result: Blob(bytes),
                    })));
                }
            }
        }
        if let Input::Message(p) = &input {
            if !matches!(run.signer, SignerState::None) && posted_elsewhere(self.me, &run.posted, p)
            {
                // Dropping the signer erases its nonces.
                warn!(session = %short(&sid), round = p.round, "a message of this party that this process did not post is in the log (an earlier run, or a store restored from a backup): observing the session without signing");
                run.signer = SignerState::None;
            }
        }
        match &mut run.signer {
            SignerState::None => {}
            SignerState::Pending(buf) => buf.push(input),
            SignerState::Running(signer) => {
                let outputs = feed(signer, &input, &mut self.rng);
                emit(sid, self.fault, outputs, &mut run.posted, out);
            }
        }
    }

    /// The share of a candidate is unsealed: start its signer, post its
    /// round-1 commitments, and feed it what was decided meanwhile.
    pub fn share_unsealed(
        &mut self,
        sid: SessionId,
        res: Result<(Zeroizing<Vec<u8>>, StoredShare), String>,
    ) -> Vec<SignAction> {
        let mut out = Vec::new();
        let Some(run) = self.runs.get_mut(&sid) else {
            return out;
        };
        let SignerState::Pending(buf) = std::mem::replace(&mut run.signer, SignerState::None)
        else {
            return out;
        };
        let earlier = buf
            .iter()
            .any(|i| matches!(i, Input::Message(p) if posted_elsewhere(self.me, &run.posted, p)));
        if earlier {
            warn!(session = %short(&sid), "this party already posted in this session in an earlier run (a crash, or a store restored from a backup): its nonces are gone, so it observes without signing");
            return out;
        }
        let (secret, stored) = match res {
            Ok(x) => x,
            Err(e) => {
                warn!(session = %short(&sid), error = %e, "unsealing the key share failed; this party does not sign");
                return out;
            }
        };
        let me = match u16::try_from(self.me.0) {
            Ok(m) => mpc::PartyId(m),
            Err(_) => return out,
        };
        let started = mpc::KeyShare::from_parts(run.ctx.scheme, &secret, &stored.public)
            .and_then(|share| mpc::Signer::start(run.ctx.clone(), me, &share, &mut self.rng));
        drop(secret);
        let (mut signer, round1) = match started {
            Ok(x) => x,
            Err(e) => {
                warn!(session = %short(&sid), error = %e, "the signer could not start; this party does not sign");
                return out;
            }
        };
        info!(session = %short(&sid), "signer started: posting its commitments");
        run.posted
            .insert(mpc::SIGN_ROUND_COMMIT, crate::engine::digest_of(&round1));
        out.push(SignAction::Submit(crate::engine::message_op(
            sid,
            mpc::SIGN_ROUND_COMMIT,
            round1,
        )));
        for input in &buf {
            let outputs = feed(&mut signer, input, &mut self.rng);
            emit(sid, self.fault, outputs, &mut run.posted, &mut out);
        }
        run.signer = SignerState::Running(Box::new(signer));
        out
    }

    /// After a restart (the log replayed): post the signature as the result
    /// of open signing sessions where this candidate has not yet, unless
    /// `queued` (already in the outbox). No signer is started again.
    pub fn on_restart(
        &mut self,
        machine: &SessionMachine,
        queued: &BTreeSet<SessionId>,
    ) -> Vec<SignAction> {
        let mut out = Vec::new();
        for (sid, run) in &mut self.runs {
            let Some(s) = machine.session(sid) else {
                continue;
            };
            if !matches!(s.phase, Phase::Active { .. }) || !run.candidate {
                continue;
            }
            if s.results.contains_key(&self.me) || queued.contains(sid) {
                run.result_posted = true;
                continue;
            }
            if let Some(sig) = self.views.get(sid).and_then(|v| v.signature.as_ref()) {
                if let Ok(bytes) = hex::decode(sig) {
                    run.result_posted = true;
                    out.push(SignAction::Submit(OpBody::SessionResult(SessionResult {
                        session: *sid,
                        result: Blob(bytes),
                    })));
                }
            } else {
                warn!(session = %short(sid), "restarted during a signing session: its nonces were erased, so this party observes it without signing");
            }
        }
        out
    }
}

fn record(run: &mut Run, view: &mut SignView, e: mpc::RoastEvent, height: u64, time_ms: u64) {
    match e {
        mpc::RoastEvent::AttemptStarted { attempt, signers } => {
            run.open = Some((attempt, time_ms));
            view.attempts.push(AttemptView {
                attempt,
                round: mpc::share_round(attempt),
                started_height: height,
                signers: signers.keys().map(|p| p.0).collect(),
                suspects: Vec::new(),
                culprits: Vec::new(),
                outcome: "open",
            });
        }
        mpc::RoastEvent::Suspected { attempt, parties } => {
            close(run, attempt);
            if let Some(a) = view.attempts.iter_mut().find(|a| a.attempt == attempt) {
                a.suspects = parties.iter().map(|p| p.0).collect();
                a.outcome = "timed_out";
            }
        }
        mpc::RoastEvent::Blame {
            culprit,
            kind,
            attempt,
            proof,
        } => {
            let c = CulpritView {
                party: culprit.0,
                kind: blame_kind(kind),
                proof: hex::encode(proof),
            };
            match view.attempts.iter_mut().find(|a| a.attempt == attempt) {
                Some(a) if attempt > 0 => {
                    close(run, attempt);
                    a.culprits.push(c);
                    if a.outcome == "open" {
                        a.outcome = "blamed";
                    }
                }
                _ => view.culprits.push(c),
            }
        }
        mpc::RoastEvent::Signature {
            attempt,
            signature,
            verifying_key,
        } => {
            close(run, attempt);
            if let Some(a) = view.attempts.iter_mut().find(|a| a.attempt == attempt) {
                a.outcome = "signed";
            }
            view.signature = Some(hex::encode(signature));
            view.verifying_key = Some(hex::encode(verifying_key));
        }
        mpc::RoastEvent::Failed(f) => {
            run.open = None;
            view.failure = Some(failure_label(f).into());
        }
    }
}

fn close(run: &mut Run, attempt: u32) {
    if run.open.is_some_and(|(a, _)| a == attempt) {
        run.open = None;
    }
}

fn feed(
    signer: &mut mpc::Signer,
    input: &Input,
    rng: &mut rand_core::OsRng,
) -> Vec<mpc::SignOutput> {
    let res = match input {
        Input::Deadline(round) => signer.on_round_deadline(*round, rng),
        Input::Message(p) => signer.on_message(p, rng),
    };
    // The observer already recorded any refusal.
    res.unwrap_or_default()
}

fn emit(
    sid: SessionId,
    fault: SignFault,
    outputs: Vec<mpc::SignOutput>,
    posted: &mut BTreeMap<u32, [u8; 32]>,
    out: &mut Vec<SignAction>,
) {
    for o in outputs {
        match o {
            mpc::SignOutput::NonceUsed { slot, .. } => {
                out.push(SignAction::NonceUsed { session: sid, slot })
            }
            mpc::SignOutput::Submit { round, mut message } => {
                if round > mpc::SIGN_ROUND_COMMIT {
                    match fault {
                        SignFault::None => {}
                        SignFault::CorruptShares => {
                            warn!(session = %short(&sid), round, "dev fault: posting a corrupted signature share");
                            mpc::Signer::corrupt_next_share(&mut message);
                        }
                        SignFault::WithholdShares => {
                            warn!(session = %short(&sid), round, "dev fault: withholding this signature share");
                            continue;
                        }
                    }
                }
                info!(session = %short(&sid), round, "posting a signature share");
                posted.insert(round, crate::engine::digest_of(&message));
                out.push(SignAction::Submit(crate::engine::message_op(
                    sid, round, message,
                )))
            }
            mpc::SignOutput::CannotSign { attempt, error } => {
                warn!(session = %short(&sid), attempt, error = %error, "selected but cannot sign: a suspect for this attempt");
            }
            mpc::SignOutput::Roast(_) => {}
        }
    }
}
