//! A party's local policy: whether *this* party approves an operation that
//! awaits its verdict.
//!
//! [`evaluate`] is a pure function of the policy, the party's id, the
//! decided state and the operation: it reads no clock (rates are counted
//! over block time) and touches nothing. It returns the `Verdict` operation
//! the host should post in its next batch, or says the operator (manual
//! approval) or the attestation verifier must decide first.
//!
//! The deterministic rules were already checked by the machine when the
//! operation was decided; the local policy adds what one party may refuse
//! on its own: keys it does not sign with, schemes it does not run,
//! initiators it does not serve, more sessions per hour than it allows.

use super::machine::{OpKind, OpRecord, OpStatus, SessionMachine};
use super::ops::{
    Blob, Decision, KeyId, OpBody, OpId, Operation, Reason, ReasonCode, SessionSpec, VerdictOp,
};
use crate::types::{Height, PartyId};
use serde::{Deserialize, Serialize};

/// One hour of block time, in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// A party's local policy, embedded in the host's TOML configuration
/// (`[policy]`). Absent lists mean "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalPolicy {
    /// Hold every operation that passes the policy for the operator, who
    /// approves or rejects it through the API.
    pub manual_approval: bool,
    /// Group keys this party signs with.
    pub allowed_keys: Option<Vec<KeyId>>,
    /// Schemes this party runs key generations for.
    pub allowed_schemes: Option<Vec<String>>,
    /// Parties whose session requests this party serves.
    pub allowed_initiators: Option<Vec<PartyId>>,
    /// Most key generations this party approves per hour of block time.
    pub max_keygens_per_hour: Option<u32>,
    /// Most signings this party approves per hour of block time.
    pub max_signings_per_hour: Option<u32>,
}

/// What the host should do about an operation awaiting this party's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDecision {
    /// Post this `Verdict` operation in the next batch.
    Post(Operation),
    /// The policy allows it but requires the operator's decision; post
    /// [`verdict`] once they decide.
    Manual {
        /// The operation to decide.
        target: OpId,
    },
    /// Attestation evidence: verify it (quorate-attestation), then post
    /// [`verdict`] with the result.
    VerifyAttestation {
        /// The attestation record.
        target: OpId,
        /// Whose evidence.
        subject: PartyId,
        /// The height whose block hash the quote must bind.
        binds_height: Height,
        /// The evidence bytes.
        evidence: Blob,
    },
    /// Nothing to do: unknown, not pending, not a voter, or already voted.
    Nothing,
}

/// Builds `me`'s verdict operation on `target`.
pub fn verdict(me: PartyId, target: OpId, decision: Decision) -> Operation {
    Operation {
        author: me,
        body: OpBody::Verdict(VerdictOp { target, decision }),
    }
}

fn reject(code: ReasonCode, text: String) -> Decision {
    Decision::Reject(Reason { code, text })
}

/// Decides `me`'s verdict on `target` under `policy`, from the decided state
/// in `machine`. The operation's payload is taken from `op`: the machine
/// keeps session parameters but not attestation evidence, so the host passes
/// the decoded operation it saw in the block (for sessions, `None` is fine).
pub fn evaluate(
    policy: &LocalPolicy,
    me: PartyId,
    machine: &SessionMachine,
    target: OpId,
    op: Option<&Operation>,
) -> PolicyDecision {
    let Some(rec) = machine.operation(&target) else {
        return PolicyDecision::Nothing;
    };
    let votes = rec.approval.as_ref().is_some_and(|a| a.voters.contains(&me));
    if rec.status != OpStatus::Pending || !votes || rec.verdicts.contains_key(&me) {
        return PolicyDecision::Nothing;
    }
    if rec.kind == OpKind::AttestationRecord {
        return match op.map(|o| &o.body) {
            Some(OpBody::AttestationRecord(a)) if op.is_some_and(|o| o.author == rec.author) => {
                PolicyDecision::VerifyAttestation {
                    target,
                    subject: rec.author,
                    binds_height: a.binds_height,
                    evidence: a.evidence.clone(),
                }
            }
            _ => PolicyDecision::Nothing,
        };
    }
    let Some(session) = rec.session.and_then(|sid| machine.session(&sid)) else {
        return PolicyDecision::Nothing;
    };
    let decision = session_decision(policy, me, machine, rec, &session.spec);
    match decision {
        Decision::Approve if policy.manual_approval => PolicyDecision::Manual { target },
        d => PolicyDecision::Post(verdict(me, target, d)),
    }
}

fn session_decision(
    policy: &LocalPolicy,
    me: PartyId,
    machine: &SessionMachine,
    rec: &OpRecord,
    spec: &SessionSpec,
) -> Decision {
    if let Some(allowed) = &policy.allowed_initiators {
        if !allowed.contains(&rec.author) {
            return reject(
                ReasonCode::InitiatorNotAllowed,
                format!("{me} does not serve session requests from {}", rec.author),
            );
        }
    }
    let limit = match spec {
        SessionSpec::Keygen(k) => {
            if let Some(allowed) = &policy.allowed_schemes {
                if !allowed.iter().any(|s| *s == k.scheme) {
                    return reject(
                        ReasonCode::SchemeNotAllowed,
                        format!("{me} does not run scheme {}", k.scheme),
                    );
                }
            }
            policy.max_keygens_per_hour
        }
        SessionSpec::Signing(s) => {
            if let Some(allowed) = &policy.allowed_keys {
                if !allowed.contains(&s.key) {
                    return reject(
                        ReasonCode::KeyNotAllowed,
                        format!("{me} does not sign with key {}", s.key),
                    );
                }
            }
            policy.max_signings_per_hour
        }
    };
    if let Some(limit) = limit {
        let used = approved_in_hour_before(me, machine, rec);
        if used >= u64::from(limit) {
            return reject(
                ReasonCode::RateLimited,
                format!("{me} allows {limit} per hour; {used} already in the last hour"),
            );
        }
    }
    Decision::Approve
}

/// Requests of the same kind decided in the hour of block time before
/// `rec` (by decided order), that passed the rules and that `me` did not
/// reject. Counted over the decided log, so the answer does not depend on
/// when the host asks, and two requests in one block cannot both take the
/// last slot.
fn approved_in_hour_before(me: PartyId, machine: &SessionMachine, rec: &OpRecord) -> u64 {
    let t = rec.position.time_ms;
    let count = machine
        .state()
        .ops
        .values()
        .filter(|o| {
            o.kind == rec.kind
                && o.approval.is_some()
                && o.position.ordinal < rec.position.ordinal
                && t.saturating_sub(o.position.time_ms) < HOUR_MS
                && !matches!(o.verdicts.get(&me), Some(Decision::Reject(_)))
        })
        .count();
    u64::try_from(count).unwrap_or(u64::MAX)
}
