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
    let votes = rec
        .approval
        .as_ref()
        .is_some_and(|a| a.voters.contains(&me));
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
                if !allowed.contains(&k.scheme) {
                    return reject(
                        ReasonCode::SchemeNotAllowed,
                        format!("{me} does not run scheme {}", k.scheme),
                    );
                }
            }
            policy.max_keygens_per_hour
        }
        SessionSpec::Signing(s) => {
            if let Err(d) = key_allowed(
                policy,
                s.key,
                format!("{me} does not sign with key {}", s.key),
            ) {
                return d;
            }
            policy.max_signings_per_hour
        }
        SessionSpec::Refresh(r) => {
            if let Err(d) = key_allowed(
                policy,
                r.key,
                format!("{me} does not refresh key {}", r.key),
            ) {
                return d;
            }
            None
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

/// Refuses (with `why`) a key outside `allowed_keys`.
fn key_allowed(policy: &LocalPolicy, key: KeyId, why: String) -> Result<(), Decision> {
    match &policy.allowed_keys {
        Some(allowed) if !allowed.contains(&key) => Err(reject(ReasonCode::KeyNotAllowed, why)),
        _ => Ok(()),
    }
}

/// Requests of the same kind decided in the hour of block time before
/// `rec` (by decided order), that passed the rules and that `me` did not
/// reject. Counted over the decided log, so the answer does not depend on
/// when the host asks, and two requests in one block cannot both take the
/// last slot.
fn approved_in_hour_before(me: PartyId, machine: &SessionMachine, rec: &OpRecord) -> u64 {
    let t = rec.position.time_ms;
    let counts = |kind: OpKind, ordinal: u64, time_ms: u64, rejected: bool| {
        kind == rec.kind
            && ordinal < rec.position.ordinal
            && t.saturating_sub(time_ms) < HOUR_MS
            && !rejected
    };
    // Those still in memory, and those retired from it (each once).
    let live = machine
        .state()
        .ops
        .values()
        .filter(|o| {
            o.approval.is_some()
                && counts(
                    o.kind,
                    o.position.ordinal,
                    o.position.time_ms,
                    matches!(o.verdicts.get(&me), Some(Decision::Reject(_))),
                )
        })
        .count();
    let retired = machine
        .retired_requests()
        .filter(|m| counts(m.kind, m.ordinal, m.time_ms, m.rejected_by.contains(&me)))
        .count();
    u64::try_from(live.saturating_add(retired)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::machine::tests::{approve, keygen, reject as reject_op, signing, Net};
    use crate::sessions::ops::{AttestationRecord, SessionId};

    fn decision(d: PolicyDecision) -> Decision {
        match d {
            PolicyDecision::Post(Operation {
                body: OpBody::Verdict(v),
                ..
            }) => v.decision,
            other => panic!("expected a verdict, got {other:?}"),
        }
    }

    fn code(d: PolicyDecision) -> ReasonCode {
        match decision(d) {
            Decision::Reject(r) => r.code,
            Decision::Approve => panic!("expected a rejection"),
        }
    }

    #[test]
    fn approves_by_default_and_names_itself_as_author() {
        let mut net = Net::new(3);
        let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
        let d = evaluate(&LocalPolicy::default(), PartyId(2), net.m(), op, None);
        let PolicyDecision::Post(v) = d else {
            panic!("no verdict")
        };
        assert_eq!(v.author, PartyId(2));
        assert_eq!(v.body, approve(op));
    }

    #[test]
    fn refuses_schemes_initiators_and_keys_it_does_not_allow() {
        let mut net = Net::new(3);
        let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
        let p = LocalPolicy {
            allowed_schemes: Some(vec!["frost-ed25519".into()]),
            ..LocalPolicy::default()
        };
        assert_eq!(
            code(evaluate(&p, PartyId(2), net.m(), op, None)),
            ReasonCode::SchemeNotAllowed
        );
        let p = LocalPolicy {
            allowed_initiators: Some(vec![PartyId(3)]),
            ..LocalPolicy::default()
        };
        assert_eq!(
            code(evaluate(&p, PartyId(2), net.m(), op, None)),
            ReasonCode::InitiatorNotAllowed
        );

        let key = net.completed_keygen(&[1, 2, 3], 2, b"PK");
        let (sop, _) = net.one(1, signing(key, &[1, 2]));
        let other = KeyId(crate::types::Sha256Digest::of(b"other"));
        let p = LocalPolicy {
            allowed_keys: Some(vec![other]),
            ..LocalPolicy::default()
        };
        assert_eq!(
            code(evaluate(&p, PartyId(2), net.m(), sop, None)),
            ReasonCode::KeyNotAllowed
        );
        let p = LocalPolicy {
            allowed_keys: Some(vec![key]),
            ..LocalPolicy::default()
        };
        assert_eq!(
            decision(evaluate(&p, PartyId(2), net.m(), sop, None)),
            Decision::Approve
        );
    }

    #[test]
    fn rate_limits_count_over_block_time_and_decided_order() {
        let mut net = Net::new(3);
        let p = LocalPolicy {
            max_keygens_per_hour: Some(1),
            ..LocalPolicy::default()
        };
        // Two requests in one block: only the first fits the limit.
        let b = net.batch(1, vec![keygen(&[1, 2, 3], 2), keygen(&[1, 2, 3], 2)]);
        let out = net.block(vec![b]);
        let (first, second) = (out.ops[0].op, out.ops[1].op);
        assert_eq!(
            decision(evaluate(&p, PartyId(2), net.m(), first, None)),
            Decision::Approve
        );
        assert_eq!(
            code(evaluate(&p, PartyId(2), net.m(), second, None)),
            ReasonCode::RateLimited
        );
        // The answer does not change with when the host asks (while the
        // request is still pending).
        net.block_after(100_000, vec![]);
        assert_eq!(
            code(evaluate(&p, PartyId(2), net.m(), second, None)),
            ReasonCode::RateLimited
        );
        // Still counted once the first request left memory (P2 rejects the
        // second, which then uses none of P2's quota).
        net.one(2, reject_op(second, "rate limited"));
        let b = net.batch(3, vec![approve(first)]);
        net.block(vec![b]);
        let b = net.batch(1, vec![approve(first)]);
        net.block(vec![b]);
        let b = net.batch(2, vec![approve(first)]);
        net.block(vec![b]);
        for _ in 0..=crate::sessions::machine::RETIRE_AFTER_HEIGHTS {
            net.block(vec![]);
        }
        assert!(net.m().operation(&first).is_none(), "retired");
        let (third, _) = net.one(3, keygen(&[1, 2, 3], 2));
        assert_eq!(
            code(evaluate(&p, PartyId(2), net.m(), third, None)),
            ReasonCode::RateLimited
        );
        // A request decided more than an hour later fits again.
        net.block_after(HOUR_MS, vec![]);
        let (late, _) = net.one(3, keygen(&[1, 2, 3], 2));
        assert_eq!(
            decision(evaluate(&p, PartyId(2), net.m(), late, None)),
            Decision::Approve
        );
    }

    #[test]
    fn requests_this_party_rejected_do_not_use_its_quota() {
        let mut net = Net::new(3);
        let p = LocalPolicy {
            max_keygens_per_hour: Some(1),
            ..LocalPolicy::default()
        };
        let (first, _) = net.one(1, keygen(&[1, 2, 3], 2));
        net.one(2, reject_op(first, "no"));
        let (second, _) = net.one(1, keygen(&[1, 2, 3], 2));
        assert_eq!(
            decision(evaluate(&p, PartyId(2), net.m(), second, None)),
            Decision::Approve
        );
        // P3 did not reject the first one, so for P3 the quota is used.
        let (third, _) = net.one(1, keygen(&[1, 2, 3], 2));
        assert_eq!(
            code(evaluate(&p, PartyId(3), net.m(), third, None)),
            ReasonCode::RateLimited
        );
    }

    #[test]
    fn manual_approval_holds_what_the_policy_allows_but_rejects_what_it_does_not() {
        let mut net = Net::new(3);
        let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
        let p = LocalPolicy {
            manual_approval: true,
            ..LocalPolicy::default()
        };
        assert_eq!(
            evaluate(&p, PartyId(2), net.m(), op, None),
            PolicyDecision::Manual { target: op }
        );
        let p = LocalPolicy {
            manual_approval: true,
            allowed_initiators: Some(vec![PartyId(3)]),
            ..LocalPolicy::default()
        };
        assert_eq!(
            code(evaluate(&p, PartyId(2), net.m(), op, None)),
            ReasonCode::InitiatorNotAllowed
        );
    }

    #[test]
    fn nothing_to_do_when_not_pending_not_a_voter_or_already_voted() {
        let mut net = Net::new(3);
        let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
        net.one(2, approve(op));
        let p = LocalPolicy::default();
        assert_eq!(
            evaluate(&p, PartyId(2), net.m(), op, None),
            PolicyDecision::Nothing
        );
        assert_eq!(
            evaluate(&p, PartyId(9), net.m(), op, None),
            PolicyDecision::Nothing
        );
        let (vop, _) = net.one(3, approve(op));
        assert_eq!(
            evaluate(&p, PartyId(1), net.m(), vop, None),
            PolicyDecision::Nothing
        );
        let unknown = OpId(crate::types::Sha256Digest::of(b"?"));
        assert_eq!(
            evaluate(&p, PartyId(1), net.m(), unknown, None),
            PolicyDecision::Nothing
        );
        let _ = SessionId::from_op(&op);
    }

    #[test]
    fn attestation_records_go_to_the_verifier() {
        let mut net = Net::new(3);
        net.block(vec![]);
        let body = OpBody::AttestationRecord(AttestationRecord {
            binds_height: Height(1),
            evidence: Blob(vec![0xee; 8]),
        });
        let (op, _) = net.one(2, body.clone());
        let seen = Operation {
            author: PartyId(2),
            body,
        };
        let d = evaluate(
            &LocalPolicy::default(),
            PartyId(1),
            net.m(),
            op,
            Some(&seen),
        );
        assert_eq!(
            d,
            PolicyDecision::VerifyAttestation {
                target: op,
                subject: PartyId(2),
                binds_height: Height(1),
                evidence: Blob(vec![0xee; 8]),
            }
        );
        // The subject does not judge itself.
        assert_eq!(
            evaluate(
                &LocalPolicy::default(),
                PartyId(2),
                net.m(),
                op,
                Some(&seen)
            ),
            PolicyDecision::Nothing
        );
    }

    /// Each party's host runs its policy on what awaits its verdict and
    /// posts the verdicts in the next block, as the daemon will.
    fn drive_verdicts(net: &mut Net, policies: &[LocalPolicy]) {
        let mut batches = Vec::new();
        for (i, policy) in policies.iter().enumerate() {
            let me = PartyId(i as u32 + 1);
            let ops: Vec<OpBody> = net
                .m()
                .awaiting_verdict_from(me)
                .into_iter()
                .filter_map(|t| match evaluate(policy, me, net.m(), t, None) {
                    PolicyDecision::Post(op) => Some(op.body),
                    _ => None,
                })
                .collect();
            if !ops.is_empty() {
                batches.push(net.batch(me.0, ops));
            }
        }
        net.block(batches);
    }

    #[test]
    fn hosts_running_their_policies_approve_or_reject_with_the_reason() {
        let mut net = Net::new(3);
        let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
        drive_verdicts(
            &mut net,
            &[
                LocalPolicy::default(),
                LocalPolicy::default(),
                LocalPolicy::default(),
            ],
        );
        assert!(matches!(
            net.m().operation(&op).unwrap().status,
            OpStatus::Executed { .. }
        ));
        assert_eq!(net.m().last_seq(PartyId(3)), Some(1));

        let strict = LocalPolicy {
            allowed_schemes: Some(vec!["frost-ed25519".into()]),
            ..LocalPolicy::default()
        };
        let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
        drive_verdicts(
            &mut net,
            &[LocalPolicy::default(), LocalPolicy::default(), strict],
        );
        let rec = net.m().operation(&op).unwrap();
        let OpStatus::Rejected { reasons, .. } = &rec.status else {
            panic!("not rejected: {:?}", rec.status);
        };
        assert!(matches!(
            &reasons[..],
            [crate::sessions::machine::RejectReason::Verdict { party: PartyId(3), reason }]
                if reason.code == ReasonCode::SchemeNotAllowed
        ));
    }

    #[test]
    fn config_shape_is_strict() {
        let p: LocalPolicy = serde_json::from_str(
            r#"{"manual_approval": true, "max_signings_per_hour": 10, "allowed_schemes": ["frost-secp256k1"]}"#,
        )
        .unwrap();
        assert!(p.manual_approval);
        assert_eq!(p.max_signings_per_hour, Some(10));
        assert!(serde_json::from_str::<LocalPolicy>(r#"{"manual_aproval": true}"#).is_err());
    }
}
