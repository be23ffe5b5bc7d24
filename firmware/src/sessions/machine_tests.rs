//! Tests of the session state machine: the original scenarios, one test per
//! rule, and property tests over random operation histories.

use super::*;
use crate::sessions::ops::{
    AbortSession, AttestationRecord, Blob, CreateSession, Decision, Evidence, KeygenSpec,
    MisbehaviourProof, OpBody, Operation, Reason, ReasonCode, SessionMessage, SessionResult,
    SigningSpec, VerdictOp,
};
use crate::sessions::testkit::Cluster;

/// A cluster whose every party runs its own machine; each block is applied
/// to all of them and they must agree on every outcome and root.
pub(crate) struct Net {
    pub c: Cluster,
    pub machines: Vec<SessionMachine>,
    pub time_ms: u64,
    seq: BTreeMap<u32, u64>,
}

impl Net {
    pub fn new(n: u32) -> Self {
        Self::with(n, FaultModel::Byzantine, SessionRules::default())
    }

    pub fn with(n: u32, fault_model: FaultModel, rules: SessionRules) -> Self {
        let c = Cluster::new(n);
        let config = MachineConfig {
            cluster: c.id,
            fault_model,
            members: c.keys.clone(),
            rules,
        };
        let machines = (0..n)
            .map(|_| SessionMachine::new(config.clone()).unwrap())
            .collect();
        Net {
            c,
            machines,
            time_ms: 1_700_000_000_000,
            seq: BTreeMap::new(),
        }
    }

    pub fn m(&self) -> &SessionMachine {
        &self.machines[0]
    }

    /// A batch of `author`'s operations with its next seq.
    pub fn batch(&mut self, author: u32, bodies: Vec<OpBody>) -> SignedBatch {
        let ops = bodies
            .into_iter()
            .map(|body| {
                Operation {
                    author: PartyId(author),
                    body,
                }
                .encode()
            })
            .collect();
        self.raw(author, ops)
    }

    /// A batch of raw encoded operations with `author`'s next seq.
    pub fn raw(&mut self, author: u32, ops: Vec<Vec<u8>>) -> SignedBatch {
        let seq = self.seq.entry(author).or_insert(0);
        *seq += 1;
        self.c.batch(author, *seq, ops)
    }

    /// Applies a block one second after the previous one.
    pub fn block(&mut self, batches: Vec<SignedBatch>) -> BlockOutcome {
        self.block_after(1_000, batches)
    }

    /// Applies a block `dt_ms` after the previous one to every machine and
    /// checks they agree.
    pub fn block_after(&mut self, dt_ms: u64, batches: Vec<SignedBatch>) -> BlockOutcome {
        self.time_ms += dt_ms;
        let height = Height(self.m().height().0 + 1);
        let mut outs: Vec<BlockOutcome> = self
            .machines
            .iter_mut()
            .map(|m| m.apply_block(height, self.time_ms, &batches).unwrap())
            .collect();
        let first = outs.remove(0);
        for o in &outs {
            assert_eq!(o, &first, "parties diverged");
        }
        let root = self.m().state_root();
        assert_eq!(root, first.state_root);
        for m in &self.machines {
            assert_eq!(m.state_root(), root);
        }
        // The incrementally maintained root equals one computed from scratch.
        assert_eq!(self.m().full_state_root(), root, "incremental root drifted");
        first
    }

    /// One op by `author` in its own block; returns (op id, status).
    pub fn one(&mut self, author: u32, body: OpBody) -> (OpId, OpStatus) {
        let b = self.batch(author, vec![body]);
        let out = self.block(vec![b]);
        (out.ops[0].op, out.ops[0].status.clone())
    }

    /// Every party in `who` approves `target`, in one block.
    pub fn approve_all(&mut self, target: OpId, who: &[u32]) -> BlockOutcome {
        let batches = who
            .iter()
            .map(|p| self.batch(*p, vec![approve(target)]))
            .collect();
        self.block(batches)
    }

    /// Runs a key generation among `participants` to completion with
    /// group key `pk`; returns the key id.
    pub fn completed_keygen(&mut self, participants: &[u32], t: u16, pk: &[u8]) -> KeyId {
        self.completed_keygen_with(participants, t, pk, "frost-secp256k1")
    }

    /// [`Net::completed_keygen`] of a key of `scheme`.
    pub fn completed_keygen_with(
        &mut self,
        participants: &[u32],
        t: u16,
        pk: &[u8],
        scheme: &str,
    ) -> KeyId {
        let all: Vec<u32> = (1..=self.machines.len() as u32).collect();
        let mut create = keygen(participants, t);
        if let OpBody::CreateSession(CreateSession {
            session: SessionSpec::Keygen(k),
        }) = &mut create
        {
            k.scheme = scheme.into();
        }
        let (op, _) = self.one(participants[0], create);
        self.approve_all(op, &all);
        let sid = SessionId::from_op(&op);
        let b: Vec<_> = participants
            .iter()
            .map(|p| self.batch(*p, vec![broadcast(sid, 1, &[*p as u8])]))
            .collect();
        self.block(b);
        let b: Vec<_> = participants
            .iter()
            .map(|p| self.batch(*p, vec![result(sid, pk)]))
            .collect();
        self.block(b);
        let key = KeyId::of_session(&sid);
        assert!(self.m().key(&key).is_some());
        key
    }
}

pub(crate) fn keygen(participants: &[u32], threshold: u16) -> OpBody {
    OpBody::CreateSession(CreateSession {
        session: SessionSpec::Keygen(KeygenSpec {
            participants: participants.iter().map(|p| PartyId(*p)).collect(),
            threshold,
            scheme: "frost-secp256k1".into(),
            deadline_secs: 120,
            round_secs: Some(30),
        }),
    })
}

pub(crate) fn signing(key: KeyId, signers: &[u32]) -> OpBody {
    OpBody::CreateSession(CreateSession {
        session: SessionSpec::Signing(SigningSpec {
            key,
            message_digest: Blob(vec![7; 32]),
            signers: signers.iter().map(|p| PartyId(*p)).collect(),
            deadline_secs: 120,
            round_secs: None,
            taproot: None,
        }),
    })
}

pub(crate) fn approve(target: OpId) -> OpBody {
    OpBody::Verdict(VerdictOp {
        target,
        decision: Decision::Approve,
    })
}

pub(crate) fn reject(target: OpId, text: &str) -> OpBody {
    OpBody::Verdict(VerdictOp {
        target,
        decision: Decision::Reject(Reason {
            code: ReasonCode::OperatorRejected,
            text: text.into(),
        }),
    })
}

pub(crate) fn broadcast(session: SessionId, round: u32, payload: &[u8]) -> OpBody {
    OpBody::SessionMessage(SessionMessage {
        session,
        round,
        broadcast: Some(Blob(payload.to_vec())),
        direct: Vec::new(),
    })
}

fn direct(session: SessionId, round: u32, to: u32, payload: &[u8]) -> OpBody {
    directs(session, round, &[(to, payload)])
}

/// One message with point-to-point parts only.
fn directs(session: SessionId, round: u32, parts: &[(u32, &[u8])]) -> OpBody {
    OpBody::SessionMessage(SessionMessage {
        session,
        round,
        broadcast: None,
        direct: parts
            .iter()
            .map(|(to, payload)| crate::sessions::ops::DirectPart {
                to: PartyId(*to),
                payload: Blob(payload.to_vec()),
            })
            .collect(),
    })
}

pub(crate) fn result(session: SessionId, r: &[u8]) -> OpBody {
    OpBody::SessionResult(SessionResult {
        session,
        result: Blob(r.to_vec()),
    })
}

fn rule(status: &OpStatus) -> &RuleViolation {
    match status {
        OpStatus::Rejected { reasons, .. } => match reasons.as_slice() {
            [RejectReason::Rule(v)] => v,
            other => panic!("expected one rule violation, got {other:?}"),
        },
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn phase(net: &Net, sid: SessionId) -> Phase {
    net.m().session(&sid).unwrap().phase.clone()
}

fn failure(net: &Net, sid: SessionId) -> Failure {
    match phase(net, sid) {
        Phase::Failed(f) => f,
        other => panic!("expected failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The original scenarios
// ---------------------------------------------------------------------------

#[test]
fn all_three_parties_approve_a_keygen_start() {
    let mut net = Net::new(3);
    let (op, status) = net.one(1, keygen(&[1, 2, 3], 2));
    assert_eq!(status, OpStatus::Pending);
    let sid = SessionId::from_op(&op);
    assert_eq!(phase(&net, sid), Phase::AwaitingApproval);
    assert_eq!(net.m().awaiting_verdict_from(PartyId(2)), vec![op]);

    // Two approvals are not enough under the default unanimous policy.
    let b1 = net.batch(1, vec![approve(op)]);
    let b2 = net.batch(2, vec![approve(op)]);
    net.block(vec![b1, b2]);
    assert_eq!(net.m().operation(&op).unwrap().status, OpStatus::Pending);

    let b3 = net.batch(3, vec![approve(op)]);
    let out = net.block(vec![b3]);
    let h = net.m().height();
    assert_eq!(
        net.m().operation(&op).unwrap().status,
        OpStatus::Executed { height: h }
    );
    assert!(out.events.contains(&Event::SessionStarted { session: sid }));
    assert!(matches!(phase(&net, sid), Phase::Active { round: 1, .. }));
    let verdicts = &net.m().operation(&op).unwrap().verdicts;
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.values().all(Decision::is_approve));
    assert!(net.m().awaiting_verdict_from(PartyId(2)).is_empty());
}

#[test]
fn one_party_rejects_another_partys_request_which_is_recorded_and_not_executed() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    let sid = SessionId::from_op(&op);
    let b1 = net.batch(1, vec![approve(op)]);
    let b3 = net.batch(
        3,
        vec![reject(op, "P3's operator did not ask for this key")],
    );
    let out = net.block(vec![b1, b3]);
    let rec = net.m().operation(&op).unwrap();
    match &rec.status {
        OpStatus::Rejected { reasons, .. } => assert_eq!(
            reasons,
            &vec![RejectReason::Verdict {
                party: PartyId(3),
                reason: Reason {
                    code: ReasonCode::OperatorRejected,
                    text: "P3's operator did not ask for this key".into()
                }
            }]
        ),
        other => panic!("not rejected: {other:?}"),
    }
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, Event::Rejected { op: o, .. } if *o == op)));
    assert!(matches!(phase(&net, sid), Phase::NotApproved { .. }));
    // Not executed: the session never starts and takes no messages.
    let b = net.batch(1, vec![broadcast(sid, 1, b"x")]);
    let out = net.block(vec![b]);
    assert_eq!(rule(&out.ops[0].status), &RuleViolation::SessionNotActive);
    // A late approval changes nothing but is recorded; a late rejection's
    // reason joins the others.
    let before = net.m().operation(&op).unwrap().status.clone();
    let (_, st) = net.one(2, approve(op));
    assert!(matches!(st, OpStatus::Executed { .. }));
    let rec = net.m().operation(&op).unwrap();
    assert_eq!(rec.status, before);
    assert!(rec.verdicts[&PartyId(2)].is_approve());
    assert!(matches!(phase(&net, sid), Phase::NotApproved { .. }));
    let (_, st) = net.one(2, reject(op, "again"));
    assert_eq!(rule(&st), &RuleViolation::AlreadyVoted(PartyId(2)));
}

#[test]
fn one_party_rejects_another_partys_attestation_response() {
    let mut net = Net::new(3);
    net.block(vec![]);
    let (op, st) = net.one(
        2,
        OpBody::AttestationRecord(AttestationRecord {
            binds_height: Height(1),
            evidence: Blob(vec![1, 2, 3]),
        }),
    );
    assert_eq!(st, OpStatus::Pending);
    // The subject does not vote on its own evidence.
    let (_, st) = net.one(2, approve(op));
    assert_eq!(rule(&st), &RuleViolation::NotAVoter(PartyId(2)));
    let b = net.batch(
        1,
        vec![OpBody::Verdict(VerdictOp {
            target: op,
            decision: Decision::Reject(Reason {
                code: ReasonCode::AttestationInvalid,
                text: "PCR 15 does not match".into(),
            }),
        })],
    );
    net.block(vec![b]);
    assert!(matches!(
        net.m().operation(&op).unwrap().status,
        OpStatus::Rejected { .. }
    ));
    assert!(net.m().attestation(PartyId(2)).unwrap().excluded.is_some());
    assert!(net.m().is_excluded(PartyId(2)));
    let (_, st) = net.one(1, keygen(&[1, 2], 2));
    assert_eq!(rule(&st), &RuleViolation::Excluded(PartyId(2)));
    // A later accepted record readmits it.
    let (op2, _) = net.one(
        2,
        OpBody::AttestationRecord(AttestationRecord {
            binds_height: Height(4),
            evidence: Blob(vec![4]),
        }),
    );
    net.approve_all(op2, &[1, 3]);
    assert!(!net.m().is_excluded(PartyId(2)));
    assert!(net.m().attestation(PartyId(2)).unwrap().accepted.is_some());
}

// ---------------------------------------------------------------------------
// One test per rule
// ---------------------------------------------------------------------------

#[test]
fn full_keygen_then_signing_with_broadcast_and_direct_rounds() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    // Round 1: broadcasts.
    let b: Vec<_> = (1..=3)
        .map(|p| net.batch(p, vec![broadcast(sid, 1, &[p as u8])]))
        .collect();
    let out = net.block(b);
    assert!(out.events.contains(&Event::RoundAdvanced {
        session: sid,
        round: 2
    }));
    // Round 2: each sends one message with a part for each other participant.
    let b: Vec<_> = (1..=3u32)
        .map(|p| {
            let payloads: Vec<(u32, Vec<u8>)> = (1..=3u32)
                .filter(|q| *q != p)
                .map(|q| (q, vec![p as u8, q as u8]))
                .collect();
            let parts: Vec<(u32, &[u8])> =
                payloads.iter().map(|(q, v)| (*q, v.as_slice())).collect();
            net.batch(p, vec![directs(sid, 2, &parts)])
        })
        .collect();
    net.block(b);
    assert!(matches!(phase(&net, sid), Phase::Active { round: 3, .. }));
    // P2 reads its own message whole and, of the others', the part for it.
    let mine = net.m().messages(&sid, Some(2), Some(PartyId(2))).unwrap();
    assert_eq!(mine.len(), 3);
    for m in &mine {
        if m.from == PartyId(2) {
            assert_eq!(m.direct.len(), 2);
        } else {
            assert_eq!(m.direct.len(), 1);
            assert_eq!(m.direct[0].to, PartyId(2));
            assert_eq!(m.direct[0].payload.0, vec![m.from.0 as u8, 2]);
        }
    }
    let b: Vec<_> = (1..=3)
        .map(|p| net.batch(p, vec![result(sid, b"GPK")]))
        .collect();
    let out = net.block(b);
    assert!(out.events.contains(&Event::SessionCompleted {
        session: sid,
        result: Blob(b"GPK".to_vec())
    }));
    let key = KeyId::of_session(&sid);
    let gk = net.m().key(&key).unwrap();
    assert_eq!(gk.public_key.0, b"GPK");
    assert_eq!(gk.threshold, 2);
    assert_eq!(
        net.m().results(&sid).unwrap().agreed,
        Some(Blob(b"GPK".to_vec()))
    );

    // Signing with the key: quorum policy (Byzantine n=3 quorum is 3).
    let (sop, st) = net.one(2, signing(key, &[1, 3]));
    assert_eq!(st, OpStatus::Pending);
    net.approve_all(sop, &[1, 2, 3]);
    let ssid = SessionId::from_op(&sop);
    assert_eq!(net.m().session(&ssid).unwrap().scheme, "frost-secp256k1");
    let b: Vec<_> = [1, 3]
        .iter()
        .map(|p| net.batch(*p, vec![broadcast(ssid, 1, b"commit")]))
        .collect();
    net.block(b);
    let b: Vec<_> = [1, 3]
        .iter()
        .map(|p| net.batch(*p, vec![result(ssid, b"SIG")]))
        .collect();
    net.block(b);
    assert!(matches!(phase(&net, ssid), Phase::Completed { .. }));
}

#[test]
fn parameters_are_recorded_once_so_an_initiator_cannot_tell_parties_different_thresholds() {
    let mut net = Net::new(3);
    // The initiator signs two requests with the same seq: threshold 2 meant
    // for one party, threshold 1 for another.
    let two = Operation {
        author: PartyId(1),
        body: keygen(&[1, 2, 3], 2),
    };
    let one = Operation {
        author: PartyId(1),
        body: keygen(&[1, 2, 3], 1),
    };
    let for_p2 = net.c.batch(1, 1, vec![two.encode()]);
    let for_p3 = net.c.batch(1, 1, vec![one.encode()]);
    // Consensus decides one of them; every party applies the same block.
    let out = net.block(vec![for_p2.clone()]);
    let sid = SessionId::from_op(&out.ops[0].op);
    for m in &net.machines {
        let s = m.session(&sid).unwrap();
        assert_eq!(s.threshold, 2);
        assert_eq!(s.participants, vec![PartyId(1), PartyId(2), PartyId(3)]);
    }
    // The other can never be decided: its seq is spent (validators refuse
    // a block carrying it; were it decided, it would leave no record).
    let out = net.block(vec![for_p3.clone()]);
    assert!(out.ops.is_empty());
    assert_eq!(net.m().session(&sid).unwrap().threshold, 2);
    // And the pair is a proof of equivocation anyone can post.
    let (_, st) = net.one(
        2,
        OpBody::Evidence(Evidence {
            proof: MisbehaviourProof::ConflictingBatches {
                first: Box::new(for_p2),
                second: Box::new(for_p3),
            },
        }),
    );
    assert!(matches!(st, OpStatus::Executed { .. }));
    assert_eq!(net.m().misbehaviour()[0].party, PartyId(1));
    assert_eq!(
        net.m().misbehaviour()[0].conflict,
        Conflict::Batches { seq: 1 }
    );
    // P1's open session fails, naming it as proven.
    let f = failure(&net, sid);
    assert_eq!(f.proven_misbehaviour, vec![PartyId(1)]);
    assert!(f.omission_suspects.is_empty());
}

#[test]
fn only_a_party_may_post_its_own_operations() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    // P1 slips in a verdict claiming to be P2's.
    let forged = Operation {
        author: PartyId(2),
        body: approve(op),
    };
    let b = net.raw(1, vec![forged.encode()]);
    assert!(matches!(
        super::super::ops::verify_batch(&b, &net.c.id, &net.c.keys),
        Err(super::super::ops::BatchError::AuthorMismatch { .. })
    ));
    let out = net.block(vec![b]);
    assert!(out.ops.is_empty(), "a refused batch leaves no record");
    assert!(net.m().operation(&op).unwrap().verdicts.is_empty());
    // A batch claiming another signer fails signature verification.
    let mut b = net.batch(1, vec![approve(op)]);
    b.body.author = PartyId(2);
    assert_eq!(
        super::super::ops::verify_batch(&b, &net.c.id, &net.c.keys),
        Err(super::super::ops::BatchError::BadSignature(PartyId(2)))
    );
    // Outsiders cannot post at all.
    let mut b = net.batch(1, vec![approve(op)]);
    b.body.author = PartyId(9);
    let out = net.block(vec![b]);
    assert!(out.ops.is_empty());
    // Non-participants cannot post messages or results.
    let (op, _) = net.one(1, keygen(&[1, 2], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    let (_, st) = net.one(3, broadcast(sid, 1, b"m"));
    assert_eq!(rule(&st), &RuleViolation::NotAParticipant(PartyId(3)));
    let (_, st) = net.one(3, result(sid, b"r"));
    assert_eq!(rule(&st), &RuleViolation::NotAParticipant(PartyId(3)));
}

#[test]
fn messages_only_in_an_active_session_its_current_round_once_per_party() {
    let mut net = Net::new(3);
    let unknown = SessionId(Sha256Digest::of(b"nothing"));
    let (_, st) = net.one(1, broadcast(unknown, 1, b"m"));
    assert_eq!(rule(&st), &RuleViolation::UnknownSession(unknown));
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    let sid = SessionId::from_op(&op);
    let (_, st) = net.one(1, broadcast(sid, 1, b"early"));
    assert_eq!(rule(&st), &RuleViolation::SessionNotActive);
    net.approve_all(op, &[1, 2, 3]);
    let (_, st) = net.one(1, broadcast(sid, 2, b"ahead"));
    assert_eq!(rule(&st), &RuleViolation::WrongRound { got: 2, current: 1 });
    let (_, st) = net.one(1, broadcast(sid, 1, b"once"));
    assert!(matches!(st, OpStatus::Executed { .. }));
    let (_, st) = net.one(1, broadcast(sid, 1, b"twice"));
    assert_eq!(rule(&st), &RuleViolation::DuplicateMessage);
    let (_, st) = net.one(1, direct(sid, 1, 1, b"to self"));
    assert_eq!(rule(&st), &RuleViolation::BadRecipient(PartyId(1)));
    let (_, st) = net.one(1, direct(sid, 1, 7, b"to outsider"));
    assert_eq!(rule(&st), &RuleViolation::BadRecipient(PartyId(7)));
    let (_, st) = net.one(2, directs(sid, 1, &[(3, b"b"), (1, b"a")]));
    assert_eq!(rule(&st), &RuleViolation::UnorderedParts(PartyId(1)));
    let (_, st) = net.one(2, directs(sid, 1, &[(3, b"a"), (3, b"b")]));
    assert_eq!(rule(&st), &RuleViolation::UnorderedParts(PartyId(3)));
    let (_, st) = net.one(2, directs(sid, 1, &[]));
    assert_eq!(rule(&st), &RuleViolation::EmptyMessage);
    let big = vec![0u8; SessionRules::default().max_payload_bytes as usize + 1];
    let (_, st) = net.one(2, broadcast(sid, 1, &big));
    assert!(matches!(rule(&st), RuleViolation::TooLarge { .. }));
    // Finish round 1; a late round-1 message is refused.
    let b2 = net.batch(2, vec![broadcast(sid, 1, b"2")]);
    let b3 = net.batch(3, vec![broadcast(sid, 1, b"3")]);
    net.block(vec![b2, b3]);
    let (_, st) = net.one(1, direct(sid, 1, 2, b"late"));
    assert_eq!(rule(&st), &RuleViolation::WrongRound { got: 1, current: 2 });
    assert_eq!(net.m().messages(&sid, Some(1), None).unwrap().len(), 3);
}

#[test]
fn a_broadcast_is_seen_identically_by_every_party() {
    let mut net = Net::new(4);
    let (op, _) = net.one(1, keygen(&[1, 2, 3, 4], 3));
    net.approve_all(op, &[1, 2, 3, 4]);
    let sid = SessionId::from_op(&op);
    let b = net.batch(2, vec![broadcast(sid, 1, b"commitment of P2")]);
    net.block(vec![b]);
    let views: Vec<Vec<StoredMessage>> = (1..=4)
        .map(|p| {
            net.machines[p as usize - 1]
                .messages(&sid, Some(1), Some(PartyId(p)))
                .unwrap()
        })
        .collect();
    assert_eq!(views[0].len(), 1);
    assert_eq!(
        views[0][0].broadcast.as_ref().map(|b| b.0.clone()),
        Some(b"commitment of P2".to_vec())
    );
    for v in &views {
        assert_eq!(v, &views[0]);
    }
}

#[test]
fn a_participant_that_misses_a_round_deadline_is_named_a_suspect_of_omission() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    let b1 = net.batch(1, vec![broadcast(sid, 1, b"1")]);
    let b2 = net.batch(2, vec![broadcast(sid, 1, b"2")]);
    net.block(vec![b1, b2]);
    // Within the 30 s round: still active.
    net.block_after(20_000, vec![]);
    assert!(matches!(phase(&net, sid), Phase::Active { round: 1, .. }));
    // P3's message arrives after the deadline: the deadline fires first.
    let b3 = net.batch(3, vec![broadcast(sid, 1, b"3")]);
    let out = net.block_after(20_000, vec![b3]);
    assert_eq!(rule(&out.ops[0].status), &RuleViolation::SessionNotActive);
    let f = failure(&net, sid);
    assert_eq!(f.reason, FailureReason::RoundTimeout { round: 1 });
    assert_eq!(f.omission_suspects, vec![PartyId(3)]);
    assert!(f.proven_misbehaviour.is_empty());
}

#[test]
fn the_overall_deadline_names_who_has_no_result() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    // Keep rounds moving within their deadlines, but never finish.
    for r in 1..=4u32 {
        let b: Vec<_> = (1..=3)
            .map(|p| net.batch(p, vec![broadcast(sid, r, b"m")]))
            .collect();
        net.block_after(25_000, b);
    }
    let b = net.batch(1, vec![result(sid, b"K")]);
    net.block_after(1_000, vec![b]);
    net.block_after(1_000_000, vec![]);
    let f = failure(&net, sid);
    assert_eq!(f.reason, FailureReason::DeadlinePassed);
    assert_eq!(f.omission_suspects, vec![PartyId(2), PartyId(3)]);
}

#[test]
fn proven_misbehaviour_is_kept_apart_from_omission() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    // P2 signs a round-1 broadcast that is decided, and a conflicting one it
    // shows someone else off the log.
    let decided = net.batch(2, vec![broadcast(sid, 1, b"to everyone")]);
    net.block(vec![decided.clone()]);
    let shown = net.c.batch(
        2,
        99,
        vec![Operation {
            author: PartyId(2),
            body: broadcast(sid, 1, b"something else"),
        }
        .encode()],
    );
    let proof = |first: SignedBatch, second: SignedBatch| {
        OpBody::Evidence(Evidence {
            proof: MisbehaviourProof::ConflictingOps {
                first: Box::new(first),
                first_op: 0,
                second: Box::new(second),
                second_op: 0,
            },
        })
    };
    // Not a conflict: the same statement twice.
    let (_, st) = net.one(1, proof(decided.clone(), decided.clone()));
    assert!(matches!(rule(&st), RuleViolation::InvalidProof(_)));
    // A forged signature proves nothing.
    let mut forged = shown.clone();
    forged.signature.0[5] ^= 1;
    let (_, st) = net.one(1, proof(decided.clone(), forged));
    assert!(matches!(rule(&st), RuleViolation::InvalidProof(_)));
    assert!(matches!(phase(&net, sid), Phase::Active { .. }));

    let (eop, st) = net.one(3, proof(decided.clone(), shown.clone()));
    assert!(matches!(st, OpStatus::Executed { .. }));
    let f = failure(&net, sid);
    assert_eq!(f.reason, FailureReason::Misbehaviour);
    assert_eq!(f.proven_misbehaviour, vec![PartyId(2)]);
    assert!(f.omission_suspects.is_empty());
    let rec = &net.m().misbehaviour()[0];
    assert_eq!(rec.reported_by, PartyId(3));
    assert_eq!(rec.op, eop);
    // Recorded once; the party is excluded from new sessions.
    let (_, st) = net.one(1, proof(shown, decided));
    assert_eq!(rule(&st), &RuleViolation::AlreadyProven);
    let (_, st) = net.one(1, keygen(&[1, 2], 2));
    assert_eq!(rule(&st), &RuleViolation::Excluded(PartyId(2)));
}

#[test]
fn results_that_disagree_fail_the_session_and_name_who() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    let b: Vec<_> = (1..=3)
        .map(|p| net.batch(p, vec![broadcast(sid, 1, b"m")]))
        .collect();
    net.block(b);
    let b1 = net.batch(1, vec![result(sid, b"K")]);
    let b2 = net.batch(2, vec![result(sid, b"K")]);
    let b3 = net.batch(3, vec![result(sid, b"K'")]);
    net.block(vec![b1, b2, b3]);
    let f = failure(&net, sid);
    assert_eq!(f.reason, FailureReason::ResultsDisagree);
    assert_eq!(f.dissenters, vec![PartyId(3)]);
    assert_eq!(f.results.len(), 3);
    assert_eq!(f.results[2].digest, Sha256Digest::of(b"K'"));
    assert!(net.m().key(&KeyId::of_session(&sid)).is_none());
    // A second result from the same party is refused even while active.
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    net.one(1, result(sid, b"K"));
    let (_, st) = net.one(1, result(sid, b"K2"));
    assert_eq!(rule(&st), &RuleViolation::DuplicateResult(PartyId(1)));
}

#[test]
fn signing_only_with_a_completed_key() {
    let mut net = Net::new(3);
    let nokey = KeyId(Sha256Digest::of(b"no such key"));
    let (_, st) = net.one(1, signing(nokey, &[1, 2]));
    assert_eq!(rule(&st), &RuleViolation::UnknownKey(nokey));
    // A key generation that is active but not completed is no key.
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let pending_key = KeyId::of_session(&SessionId::from_op(&op));
    let (_, st) = net.one(1, signing(pending_key, &[1, 2]));
    assert_eq!(rule(&st), &RuleViolation::UnknownKey(pending_key));

    let key = net.completed_keygen(&[1, 2], 2, b"PK");
    let (_, st) = net.one(1, signing(key, &[1]));
    assert_eq!(
        rule(&st),
        &RuleViolation::TooFewSigners {
            signers: 1,
            threshold: 2
        }
    );
    let (_, st) = net.one(1, signing(key, &[1, 3]));
    assert_eq!(rule(&st), &RuleViolation::NotAKeyHolder(PartyId(3)));
    let (_, st) = net.one(1, signing(key, &[1, 2, 1]));
    assert_eq!(rule(&st), &RuleViolation::DuplicateParty(PartyId(1)));
    let (_, st) = net.one(3, signing(key, &[2, 1]));
    assert_eq!(st, OpStatus::Pending);
}

#[test]
fn a_session_id_derives_from_the_decided_operation() {
    let mut net = Net::new(3);
    // The same request twice, by the same party, in one block.
    let b = net.batch(1, vec![keygen(&[1, 2, 3], 2), keygen(&[1, 2, 3], 2)]);
    let seq = b.body.seq;
    let out = net.block(vec![b]);
    let h = net.m().height();
    for (i, o) in out.ops.iter().enumerate() {
        assert_eq!(
            o.op,
            OpId::derive(&net.c.id, h, 0, PartyId(1), seq, i as u32)
        );
        assert!(net.m().session(&SessionId::from_op(&o.op)).is_some());
    }
    assert_ne!(
        SessionId::from_op(&out.ops[0].op),
        SessionId::from_op(&out.ops[1].op)
    );
}

#[test]
fn quorum_policy_executes_with_a_quorum_and_records_the_dissent() {
    // Majority fault model: 2 of 3.
    let mut net = Net::with(3, FaultModel::Majority, SessionRules::default());
    let key = net.completed_keygen(&[1, 2, 3], 2, b"PK");
    let (op, _) = net.one(1, signing(key, &[1, 2]));
    let b1 = net.batch(1, vec![approve(op)]);
    let b3 = net.batch(3, vec![reject(op, "not today")]);
    net.block(vec![b1, b3]);
    assert_eq!(net.m().operation(&op).unwrap().status, OpStatus::Pending);
    net.one(2, approve(op));
    let rec = net.m().operation(&op).unwrap();
    assert!(matches!(rec.status, OpStatus::Executed { .. }));
    assert!(!rec.verdicts[&PartyId(3)].is_approve());
    // Keygen stays unanimous under the same fault model.
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2]);
    assert_eq!(net.m().operation(&op).unwrap().status, OpStatus::Pending);
}

#[test]
fn a_pending_operation_is_rejected_at_its_deadline() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2]);
    let out = net.block_after(200_000, vec![]);
    let OpStatus::Rejected { reasons, .. } = &net.m().operation(&op).unwrap().status else {
        panic!("not rejected");
    };
    assert!(matches!(reasons[0], RejectReason::Deadline { .. }));
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, Event::Rejected { .. })));
    let (_, st) = net.one(3, reject(op, "too late"));
    assert!(matches!(st, OpStatus::Executed { .. }));
    let OpStatus::Rejected { reasons, .. } = &net.m().operation(&op).unwrap().status else {
        panic!("not rejected");
    };
    assert_eq!(reasons.len(), 2);
    assert!(matches!(
        reasons[1],
        RejectReason::Verdict {
            party: PartyId(3),
            ..
        }
    ));
}

#[test]
fn verdict_rules() {
    let mut net = Net::new(3);
    let nothing = OpId(Sha256Digest::of(b"x"));
    let (_, st) = net.one(1, approve(nothing));
    assert_eq!(rule(&st), &RuleViolation::UnknownOperation(nothing));
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.one(2, approve(op));
    let (_, st) = net.one(2, reject(op, "changed my mind"));
    assert_eq!(rule(&st), &RuleViolation::AlreadyVoted(PartyId(2)));
    // Only operations that need approval take verdicts.
    let (vop, _) = net.one(1, approve(op));
    let (_, st) = net.one(3, approve(vop));
    assert_eq!(rule(&st), &RuleViolation::NotVotable(vop));
    let (_, st) = net.one(3, reject(op, &"x".repeat(300)));
    assert_eq!(rule(&st), &RuleViolation::TextTooLong);
}

#[test]
fn parameter_rules() {
    let mut net = Net::new(3);
    let cases: Vec<(OpBody, RuleViolation)> = vec![
        (
            keygen(&[1, 2, 3], 0),
            RuleViolation::BadThreshold {
                threshold: 0,
                parties: 3,
            },
        ),
        (
            keygen(&[1, 2, 3], 4),
            RuleViolation::BadThreshold {
                threshold: 4,
                parties: 3,
            },
        ),
        (
            keygen(&[1, 2, 2], 2),
            RuleViolation::DuplicateParty(PartyId(2)),
        ),
        (keygen(&[1, 5], 2), RuleViolation::NotAMember(PartyId(5))),
    ];
    for (body, want) in cases {
        let (_, st) = net.one(1, body);
        assert_eq!(rule(&st), &want);
    }
    let mut bad_scheme = keygen(&[1, 2], 2);
    if let OpBody::CreateSession(CreateSession {
        session: SessionSpec::Keygen(k),
    }) = &mut bad_scheme
    {
        k.scheme = "FROST secp256k1".into();
    }
    let (_, st) = net.one(1, bad_scheme);
    assert_eq!(rule(&st), &RuleViolation::BadScheme);
    let mut long = keygen(&[1, 2], 2);
    if let OpBody::CreateSession(CreateSession {
        session: SessionSpec::Keygen(k),
    }) = &mut long
    {
        k.deadline_secs = 10 * 24 * 3600;
    }
    let (_, st) = net.one(1, long);
    assert!(matches!(rule(&st), RuleViolation::BadDeadline { .. }));
}

#[test]
fn abort_rules() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    let abort = |session| {
        OpBody::AbortSession(AbortSession {
            session,
            reason: Reason {
                code: ReasonCode::EngineFailure,
                text: "engine crashed".into(),
            },
        })
    };
    let (_, st) = net.one(3, abort(sid));
    assert_eq!(rule(&st), &RuleViolation::MayNotAbort(PartyId(3)));
    let (_, st) = net.one(2, abort(sid));
    assert!(matches!(st, OpStatus::Executed { .. }));
    let f = failure(&net, sid);
    assert!(matches!(
        f.reason,
        FailureReason::Aborted { by: PartyId(2), .. }
    ));
    let (_, st) = net.one(1, abort(sid));
    assert_eq!(rule(&st), &RuleViolation::SessionNotActive);
    // Aborting before approval rejects the request with the reason.
    let (op, _) = net.one(1, keygen(&[1, 2], 2));
    net.one(1, abort(SessionId::from_op(&op)));
    let OpStatus::Rejected { reasons, .. } = &net.m().operation(&op).unwrap().status else {
        panic!("not rejected");
    };
    assert!(matches!(
        reasons[0],
        RejectReason::Aborted { by: PartyId(1), .. }
    ));
}

/// A batch that breaks the batch rules (validators refuse any block
/// carrying one) leaves no trace if it is decided anyway: no record, no
/// audit entry, no sequence number, nothing counted. Before, every one of
/// its operations became a rejected record: one signed batch of a million
/// empty operations, a million records at every party.
#[test]
fn a_batch_that_breaks_the_rules_leaves_no_record() {
    let mut net = Net::new(3);
    let count = net.m().state().op_count;
    let root = net.m().state_root();
    let garbage = net.raw(1, vec![vec![], vec![9, 9, 9], vec![1, 0xff, 0xff, 0xff]]);
    let too_many = net.raw(2, vec![vec![]; super::super::ops::MAX_OPS_PER_BATCH + 1]);
    let (op, _) = net.one(3, keygen(&[1, 2, 3], 2));
    let mut wrong = net.batch(3, vec![approve(op)]);
    wrong.body.cluster = ClusterId(Sha256Digest::of(b"other"));
    let count = count + 1;
    let out = net.block(vec![garbage, too_many, wrong]);
    assert!(out.ops.is_empty());
    assert_eq!(net.m().state().op_count, count);
    assert_eq!(net.m().last_seq(PartyId(1)), None);
    assert_eq!(net.m().last_seq(PartyId(2)), None);
    assert_ne!(
        net.m().state_root(),
        root,
        "only the keygen changed the state"
    );
    // The authors' next good batches apply as usual.
    let (_, st) = net.one(1, approve(op));
    assert!(matches!(st, OpStatus::Pending | OpStatus::Executed { .. }));
}

#[test]
fn replays_are_ignored_not_fatal() {
    let mut net = Net::new(3);
    let b = net.batch(1, vec![keygen(&[1, 2, 3], 2)]);
    let out = net.block(vec![b.clone()]);
    assert_eq!(out.ops.len(), 1);
    let before = net.m().encode_state();
    let out = net.block(vec![b]);
    assert!(out.ops.is_empty());
    assert_eq!(net.m().sessions().count(), 1);
    assert_ne!(net.m().encode_state(), before, "only height and time moved");
}

#[test]
fn a_batch_twice_in_one_block_applies_once_and_overwrites_nothing() {
    let mut net = Net::new(3);
    let b = net.batch(1, vec![keygen(&[1, 2, 3], 2)]);
    let twin = net.c.batch(
        1,
        b.body.seq,
        vec![Operation {
            author: PartyId(1),
            body: keygen(&[1, 2, 3], 1),
        }
        .encode()],
    );
    let out = net.block(vec![b.clone(), b, twin]);
    assert_eq!(out.ops.len(), 1);
    assert_eq!(out.ops[0].status, OpStatus::Pending);
    assert_eq!(
        net.m().operation(&out.ops[0].op).unwrap().status,
        OpStatus::Pending
    );
    assert_eq!(net.m().sessions().count(), 1);
}

#[test]
fn blocks_out_of_order_are_refused_and_change_nothing() {
    let mut net = Net::new(3);
    net.block(vec![]);
    let before = net.m().encode_state();
    let m = &mut net.machines[0];
    assert_eq!(
        m.apply_block(Height(3), net.time_ms + 1, &[]),
        Err(ApplyError::HeightOutOfOrder {
            got: Height(3),
            last: Height(1)
        })
    );
    assert!(matches!(
        m.apply_block(Height(2), net.time_ms, &[]),
        Err(ApplyError::TimeNotIncreasing { .. })
    ));
    assert_eq!(m.encode_state(), before);
}

#[test]
fn finished_records_leave_memory_without_changing_roots_or_outcomes() {
    // Party 3's machine keeps everything; the others retire. `block` checks
    // every block's outcome and root are the same at all three, and that
    // the incremental root equals one computed afresh.
    let mut net = Net::new(3);
    let config = net.m().config().clone();
    net.machines[2] = SessionMachine::new(config.clone())
        .unwrap()
        .keeping_everything();
    let mut retired_ops = 0;
    let mut retired_sessions = 0;
    let mut first_key = None;
    for i in 0..12u8 {
        let key = net.completed_keygen(&[1, 2, 3], 2, &[i; 33]);
        first_key.get_or_insert(key);
        // Rejected and executed operations of no session, too.
        let (op, _) = net.one(2, keygen(&[1, 2, 3], 2));
        let b = net.batch(3, vec![reject(op, "no")]);
        net.block(vec![b]);
        let r = net.machines[0].take_retired();
        assert!(net.machines[2].take_retired().is_empty());
        assert!(net.machines[0].take_retired().is_empty());
        retired_ops += r.ops.len();
        retired_sessions += r.sessions.len();
        for rec in &r.ops {
            let at = rec.status.finished_at().expect("only settled ops retire");
            assert!(at.0 + RETIRE_AFTER_HEIGHTS <= net.m().height().0);
        }
    }
    for _ in 0..RETIRE_AFTER_HEIGHTS + 1 {
        net.block(vec![]);
        let r = net.machines[0].take_retired();
        retired_ops += r.ops.len();
        retired_sessions += r.sessions.len();
    }
    let all = &net.machines[2].state();
    let kept = &net.machines[0].state();
    // Everything finished long enough ago is gone, nothing else.
    assert_eq!(retired_sessions, all.sessions.len());
    assert_eq!(retired_ops, all.ops.len());
    assert!(kept.ops.is_empty() && kept.sessions.is_empty());
    assert_eq!(kept.session_count, all.sessions.len() as u64);
    // Keys stay; their key generations are retired.
    assert_eq!(kept.keys, all.keys);
    assert!(net.m().session(&first_key.unwrap().session()).is_none());
    // A snapshot of the retiring machine restores to the same root and
    // continues as the machine that kept everything.
    let restored = SessionMachine::restore(config, &net.m().encode_state()).unwrap();
    assert_eq!(restored.state_root(), net.machines[2].state_root());
    assert_eq!(restored.full_state_root(), restored.state_root());
    net.machines[1] = restored;
    net.completed_keygen(&[1, 2, 3], 2, &[99; 33]);
}

#[test]
fn a_late_verdict_is_recorded_until_its_operation_retires_and_refused_after() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    // Two of three approve: executed, party 3 has not voted.
    net.approve_all(op, &[1, 2]);
    let late = net.batch(3, vec![approve(op)]);
    let o = net.block(vec![late]);
    assert_eq!(o.ops[0].status, OpStatus::Executed { height: o.height });
    assert!(net
        .m()
        .operation(&op)
        .unwrap()
        .verdicts
        .contains_key(&PartyId(3)));
    for _ in 0..RETIRE_AFTER_HEIGHTS {
        net.block(vec![]);
    }
    assert!(net.m().operation(&op).is_none());
    let b = net.batch(3, vec![reject(op, "too late")]);
    let o = net.block(vec![b]);
    assert!(matches!(
        &o.ops[0].status,
        OpStatus::Rejected { reasons, .. }
            if reasons == &vec![RejectReason::Rule(RuleViolation::UnknownOperation(op))]
    ));
}

#[test]
fn a_snapshot_restores_to_the_same_root_and_continues_identically() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2]);
    let snap = net.m().encode_state();
    let config = net.m().config().clone();
    let mut restored = SessionMachine::restore(config.clone(), &snap).unwrap();
    assert_eq!(restored.state_root(), net.m().state_root());
    let b = net.batch(3, vec![approve(op)]);
    let t = net.time_ms + 1_000;
    let h = Height(net.m().height().0 + 1);
    let a = restored
        .apply_block(h, t, std::slice::from_ref(&b))
        .unwrap();
    let o = net.block(vec![b]);
    assert_eq!(a, o);
    assert!(matches!(
        SessionMachine::restore(config, &snap[..snap.len() / 2]),
        Err(RestoreError::Malformed(_))
    ));
}

#[test]
fn outcomes_and_state_serialize_for_storage_and_for_json() {
    let mut net = Net::new(3);
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    let b: Vec<_> = (1..=3).map(|p| net.batch(p, vec![approve(op)])).collect();
    let out = net.block(b);
    let bytes = postcard::to_stdvec(&out).unwrap();
    assert_eq!(postcard::from_bytes::<BlockOutcome>(&bytes).unwrap(), out);
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["ops"][0]["kind"], "verdict");
    let sid = SessionId::from_op(&op);
    let session = serde_json::to_value(net.m().session(&sid).unwrap()).unwrap();
    assert_eq!(session["spec"]["kind"], "keygen");
    assert_eq!(session["id"], sid.to_string());
    let rec = serde_json::to_value(net.m().operation(&op).unwrap()).unwrap();
    assert_eq!(rec["verdicts"]["2"], "approve");
    assert!(serde_json::to_string(net.m().state()).is_ok());
}

#[test]
fn different_rules_give_different_roots() {
    let c = Cluster::new(3);
    let mk = |rules| {
        SessionMachine::new(MachineConfig {
            cluster: c.id,
            fault_model: FaultModel::Byzantine,
            members: c.keys.clone(),
            rules,
        })
        .unwrap()
    };
    let a = mk(SessionRules::default());
    let b = mk(SessionRules {
        max_rounds: 3,
        ..SessionRules::default()
    });
    assert_ne!(a.state_root(), b.state_root());
    assert_eq!(
        SessionMachine::new(MachineConfig {
            cluster: c.id,
            fault_model: FaultModel::Byzantine,
            members: BTreeMap::new(),
            rules: SessionRules::default(),
        })
        .err(),
        Some(ConfigError::NoMembers)
    );
}

// ---------------------------------------------------------------------------
// Property tests over random histories
// ---------------------------------------------------------------------------

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// An abstract action; indices are resolved against the state when the
    /// history is built, so random histories reach deep states.
    #[derive(Clone, Debug)]
    enum Action {
        Keygen {
            author: u32,
            parts: u8,
            t: u16,
            deadline: u32,
        },
        Signing {
            author: u32,
            key: usize,
            signers: u8,
        },
        Verdict {
            author: u32,
            target: usize,
            approve: bool,
        },
        AllApprove {
            target: usize,
        },
        Message {
            author: u32,
            session: usize,
            round: u32,
            to: u32,
            len: usize,
        },
        AllBroadcast {
            session: usize,
        },
        Result {
            author: u32,
            session: usize,
            value: u8,
        },
        AllResult {
            session: usize,
            odd_one: Option<u32>,
        },
        Abort {
            author: u32,
            session: usize,
        },
        Attest {
            author: u32,
        },
        Garbage {
            author: u32,
            bytes: Vec<u8>,
        },
        Replay {
            batch: usize,
        },
        Equivocate {
            author: u32,
            session: usize,
        },
        /// The block carries its first batch twice.
        Duplicate,
        /// Everyone does the next step an honest run of a session needs.
        Drive {
            session: usize,
            rounds: u32,
        },
    }

    fn action() -> impl Strategy<Value = Action> {
        let p = 1u32..=3;
        prop_oneof![
            6 => (0usize..4, 1u32..4).prop_map(|(session, rounds)| Action::Drive { session, rounds }),
            3 => (p.clone(), prop_oneof![3 => Just(7u8), 1 => 1u8..8], 0u16..4, prop_oneof![3 => Just(150u32), 1 => 1u32..200])
                .prop_map(|(author, parts, t, deadline)| Action::Keygen { author, parts, t, deadline }),
            2 => (p.clone(), 0usize..4, 1u8..8)
                .prop_map(|(author, key, signers)| Action::Signing { author, key, signers }),
            2 => (p.clone(), 0usize..8, any::<bool>())
                .prop_map(|(author, target, approve)| Action::Verdict { author, target, approve }),
            2 => (0usize..8).prop_map(|target| Action::AllApprove { target }),
            2 => (p.clone(), 0usize..4, 0u32..4, 0u32..4, 0usize..40)
                .prop_map(|(author, session, round, to, len)| Action::Message { author, session, round, to, len }),
            2 => (0usize..4).prop_map(|session| Action::AllBroadcast { session }),
            2 => (p.clone(), 0usize..4, 0u8..2)
                .prop_map(|(author, session, value)| Action::Result { author, session, value }),
            2 => (0usize..4, proptest::option::of(1u32..=3))
                .prop_map(|(session, odd_one)| Action::AllResult { session, odd_one }),
            1 => (p.clone(), 0usize..4).prop_map(|(author, session)| Action::Abort { author, session }),
            1 => p.clone().prop_map(|author| Action::Attest { author }),
            1 => (p.clone(), proptest::collection::vec(any::<u8>(), 0..12))
                .prop_map(|(author, bytes)| Action::Garbage { author, bytes }),
            1 => Just(Action::Duplicate),
            1 => (0usize..8).prop_map(|batch| Action::Replay { batch }),
            1 => (p, 0usize..4).prop_map(|(author, session)| Action::Equivocate { author, session }),
        ]
    }

    fn pick<T: Clone>(v: &[T], i: usize) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            v.get(i % v.len()).cloned()
        }
    }

    fn members(mask: u8) -> Vec<u32> {
        (1..=3u32).filter(|p| mask & (1 << (p - 1)) != 0).collect()
    }

    /// Turns actions into batches against the current state of `net`.
    fn batches_for(net: &mut Net, actions: &[Action], history: &[SignedBatch]) -> Vec<SignedBatch> {
        let m = net.m();
        let pending: Vec<OpId> = m.state().pending.iter().copied().collect();
        let sessions: Vec<SessionId> = m.state().sessions.keys().copied().collect();
        let keys: Vec<KeyId> = m.state().keys.keys().copied().collect();
        let rounds: BTreeMap<SessionId, u32> = m
            .sessions()
            .map(|s| match s.phase {
                Phase::Active { round, .. } => (s.id, round),
                _ => (s.id, 1),
            })
            .collect();
        let parts: BTreeMap<SessionId, Vec<u32>> = m
            .sessions()
            .map(|s| (s.id, s.participants.iter().map(|p| p.0).collect()))
            .collect();
        let open: Vec<(SessionId, Phase, OpId)> = m
            .state()
            .open_sessions
            .iter()
            .filter_map(|sid| m.session(sid).map(|s| (s.id, s.phase.clone(), s.create_op)))
            .collect();
        let current_round = |sid: &SessionId| rounds.get(sid).copied().unwrap_or(1);
        let participants = |sid: &SessionId| parts.get(sid).cloned().unwrap_or_default();
        let height = m.height();
        let mut out: Vec<(u32, Vec<OpBody>)> = Vec::new();
        let mut raw: Vec<SignedBatch> = Vec::new();
        for a in actions {
            match a.clone() {
                Action::Keygen {
                    author,
                    parts,
                    t,
                    deadline,
                } => {
                    let mut body = keygen(&members(parts), t);
                    if let OpBody::CreateSession(CreateSession {
                        session: SessionSpec::Keygen(k),
                    }) = &mut body
                    {
                        k.deadline_secs = deadline;
                    }
                    out.push((author, vec![body]));
                }
                Action::Signing {
                    author,
                    key,
                    signers,
                } => {
                    let key = pick(&keys, key).unwrap_or(KeyId(Sha256Digest::of(b"none")));
                    out.push((author, vec![signing(key, &members(signers))]));
                }
                Action::Verdict {
                    author,
                    target,
                    approve: yes,
                } => {
                    if let Some(t) = pick(&pending, target) {
                        out.push((author, vec![if yes { approve(t) } else { reject(t, "no") }]));
                    }
                }
                Action::AllApprove { target } => {
                    if let Some(t) = pick(&pending, target) {
                        for p in 1..=3 {
                            out.push((p, vec![approve(t)]));
                        }
                    }
                }
                Action::Message {
                    author,
                    session,
                    round,
                    to,
                    len,
                } => {
                    if let Some(sid) = pick(&sessions, session) {
                        let r = current_round(&sid) + round.saturating_sub(1);
                        let body = if to == 0 {
                            broadcast(sid, r, &vec![7; len])
                        } else {
                            direct(sid, r, to, &vec![7; len])
                        };
                        out.push((author, vec![body]));
                    }
                }
                Action::AllBroadcast { session } => {
                    if let Some(sid) = pick(&sessions, session) {
                        let r = current_round(&sid);
                        for p in participants(&sid) {
                            out.push((p, vec![broadcast(sid, r, &[p as u8])]));
                        }
                    }
                }
                Action::Result {
                    author,
                    session,
                    value,
                } => {
                    if let Some(sid) = pick(&sessions, session) {
                        out.push((author, vec![result(sid, &[value])]));
                    }
                }
                Action::AllResult { session, odd_one } => {
                    if let Some(sid) = pick(&sessions, session) {
                        for p in participants(&sid) {
                            let v = if Some(p) == odd_one { 2 } else { 1 };
                            out.push((p, vec![result(sid, &[v])]));
                        }
                    }
                }
                Action::Abort { author, session } => {
                    if let Some(sid) = pick(&sessions, session) {
                        out.push((
                            author,
                            vec![OpBody::AbortSession(AbortSession {
                                session: sid,
                                reason: Reason {
                                    code: ReasonCode::Other,
                                    text: "stop".into(),
                                },
                            })],
                        ));
                    }
                }
                Action::Attest { author } => out.push((
                    author,
                    vec![OpBody::AttestationRecord(AttestationRecord {
                        binds_height: height,
                        evidence: Blob(vec![author as u8]),
                    })],
                )),
                Action::Drive { session, rounds } => {
                    if let Some((sid, phase, op)) = pick(&open, session) {
                        match phase {
                            Phase::AwaitingApproval => {
                                for p in 1..=3 {
                                    out.push((p, vec![approve(op)]));
                                }
                            }
                            Phase::Active { round, .. } if round <= rounds => {
                                for p in participants(&sid) {
                                    out.push((p, vec![broadcast(sid, round, &[p as u8])]));
                                }
                            }
                            Phase::Active { .. } => {
                                for p in participants(&sid) {
                                    out.push((p, vec![result(sid, b"group key")]));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Action::Duplicate => {}
                Action::Garbage { author, bytes } => raw.push(net.raw(author, vec![bytes])),
                Action::Replay { batch } => {
                    if let Some(b) = pick(history, batch) {
                        raw.push(b);
                    }
                }
                Action::Equivocate { author, session } => {
                    if let Some(sid) = pick(&sessions, session) {
                        let r = current_round(&sid);
                        let a = net.batch(author, vec![broadcast(sid, r, b"A")]);
                        let b = net.c.batch(
                            author,
                            1 << 40,
                            vec![Operation {
                                author: PartyId(author),
                                body: broadcast(sid, r, b"B"),
                            }
                            .encode()],
                        );
                        raw.push(a.clone());
                        out.push((
                            1,
                            vec![OpBody::Evidence(Evidence {
                                proof: MisbehaviourProof::ConflictingOps {
                                    first: Box::new(a),
                                    first_op: 0,
                                    second: Box::new(b),
                                    second_op: 0,
                                },
                            })],
                        ));
                    }
                }
            }
        }
        let mut batches = raw;
        for (author, bodies) in out {
            let b = net.batch(author, bodies);
            batches.push(b);
        }
        if actions.iter().any(|a| matches!(a, Action::Duplicate)) {
            if let Some(first) = batches.first().cloned() {
                batches.push(first);
            }
        }
        batches
    }

    fn check_invariants(m: &SessionMachine) {
        let s = m.state();
        for (id, rec) in &s.ops {
            assert_eq!(rec.id, *id);
            let is_pending = rec.status == OpStatus::Pending;
            assert_eq!(
                is_pending,
                s.pending.contains(id),
                "pending set out of sync"
            );
            if is_pending {
                assert!(rec.approval.is_some());
            }
            if let Some(a) = &rec.approval {
                for p in rec.verdicts.keys() {
                    assert!(a.voters.contains(p), "verdict from a non-voter");
                }
            } else {
                assert!(rec.verdicts.is_empty());
            }
        }
        for (sid, sess) in &s.sessions {
            assert_eq!(sess.phase.is_open(), s.open_sessions.contains(sid));
            assert_eq!(*sid, SessionId::from_op(&sess.create_op));
            // A settled creating operation may have been retired before
            // its session finished; a pending one never is.
            let create = s.ops.get(&sess.create_op).map(|r| &r.status);
            match &sess.phase {
                Phase::AwaitingApproval => assert_eq!(create, Some(&OpStatus::Pending)),
                Phase::Active { round, .. } => {
                    assert!(create.is_none_or(|c| matches!(c, OpStatus::Executed { .. })));
                    assert!(*round >= 1 && *round <= m.config().rules.max_rounds + 1);
                }
                Phase::Completed { result, .. } if sess.has_open_rounds() => {
                    // A signing completes once `threshold` participants
                    // posted the same result; a dissenter does not block it.
                    let agreeing = sess.results.values().filter(|r| *r == result).count();
                    assert!(agreeing >= usize::from(sess.threshold));
                }
                Phase::Completed { result, .. } => {
                    assert_eq!(sess.results.len(), sess.participants.len());
                    assert!(sess.results.values().all(|r| r == result));
                    if sess.spec.kind() == SessionKind::Keygen {
                        assert_eq!(&s.keys[&KeyId::of_session(sid)].public_key, result);
                    }
                }
                Phase::NotApproved { .. } => {
                    assert!(create.is_none_or(|c| matches!(c, OpStatus::Rejected { .. })));
                    assert!(sess.messages.is_empty() && sess.results.is_empty());
                }
                Phase::Failed(f) => {
                    for p in f
                        .omission_suspects
                        .iter()
                        .chain(&f.proven_misbehaviour)
                        .chain(&f.dissenters)
                    {
                        assert!(sess.participants.contains(p));
                    }
                }
            }
            let mut slots = BTreeSet::new();
            for msg in &sess.messages {
                assert!(sess.participants.contains(&msg.from));
                assert!(
                    slots.insert((msg.round, msg.from)),
                    "duplicate message slot"
                );
            }
            for p in sess.results.keys() {
                assert!(sess.participants.contains(p));
            }
        }
        for (kid, key) in &s.keys {
            // Its key generation completed (and may since have been retired).
            if let Some(sess) = s.sessions.get(&kid.session()) {
                assert!(matches!(sess.phase, Phase::Completed { .. }));
            }
            assert!(usize::from(key.threshold) <= key.participants.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        #[test]
        fn random_histories_replay_identically_and_keep_invariants(
            blocks in proptest::collection::vec(
                (prop_oneof![5 => 1u64..8_000, 1 => 8_000u64..200_000], proptest::collection::vec(action(), 0..6)),
                1..32,
            )
        ) {
            let mut net = Net::new(3);
            let mut history: Vec<SignedBatch> = Vec::new();
            let mut decided: Vec<(Height, u64, Vec<SignedBatch>)> = Vec::new();
            let mut roots = Vec::new();
            let mut states = Vec::new();
            for (dt, actions) in &blocks {
                let batches = batches_for(&mut net, actions, &history);
                // Batches that break the rules or replay leave no record.
                let mut last: BTreeMap<PartyId, u64> = BTreeMap::new();
                let mut expected = 0;
                for b in &batches {
                    let a = b.body.author;
                    let prev = last.get(&a).copied().or_else(|| net.m().last_seq(a)).unwrap_or(0);
                    if b.body.seq > prev && crate::sessions::verify_batch(b, &net.c.id, &net.c.keys).is_ok() {
                        last.insert(a, b.body.seq);
                        expected += b.body.ops.len();
                    }
                }
                let out = net.block_after(*dt, batches.clone());
                check_invariants(net.m());
                prop_assert_eq!(out.ops.len(), expected);
                decided.push((net.m().height(), net.time_ms, batches.clone()));
                history.extend(batches);
                roots.push(out.state_root);
                states.push(net.m().encode_state());
            }
            // Deterministic replay from genesis on a fresh machine.
            let mut fresh = SessionMachine::new(net.m().config().clone()).unwrap();
            for (i, (h, t, batches)) in decided.iter().enumerate() {
                let out = fresh.apply_block(*h, *t, batches).unwrap();
                prop_assert_eq!(out.state_root, roots[i]);
                prop_assert_eq!(&fresh.encode_state(), &states[i]);
            }
        }
    }
}

/// A judge for the blame tests: the proof's first byte decides (1: the
/// accused is guilty, 2: the accusation is false, anything else: malformed),
/// and it only judges sessions of the scheme `frost-secp256k1`.
struct ByteJudge;

impl crate::sessions::machine::BlameJudge for ByteJudge {
    fn judges(&self, scheme: &str) -> bool {
        scheme == "frost-secp256k1"
    }
    fn judge(
        &self,
        _cluster: &crate::types::ClusterId,
        session: &Session,
        _accuser: PartyId,
        _accused: PartyId,
        proof: &[u8],
    ) -> Result<crate::sessions::machine::BlameFinding, String> {
        assert!(
            !session.messages.is_empty(),
            "the judge sees the decided messages"
        );
        match proof.first() {
            Some(1) => Ok(crate::sessions::machine::BlameFinding::CulpritProven {
                kind: "invalid_secret_share".into(),
            }),
            Some(2) => Ok(crate::sessions::machine::BlameFinding::FalseAccusation),
            _ => Err("proof is malformed".into()),
        }
    }
}

fn blame(session: SessionId, culprit: u32, proof: &[u8]) -> OpBody {
    OpBody::Blame(crate::sessions::ops::BlameOp {
        session,
        culprit: PartyId(culprit),
        proof: Blob(proof.to_vec()),
    })
}

/// A running 3-party key generation whose round 1 is decided.
fn session_in_round_2(net: &mut Net) -> SessionId {
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    let b: Vec<_> = (1..=3)
        .map(|p| net.batch(p, vec![broadcast(sid, 1, &[p as u8])]))
        .collect();
    net.block(b);
    sid
}

#[test]
fn blame_without_a_judge_for_the_scheme_is_refused_and_convicts_no_one() {
    let mut net = Net::new(3);
    let sid = session_in_round_2(&mut net);
    let (_, st) = net.one(2, blame(sid, 1, &[1]));
    assert_eq!(
        rule(&st),
        &RuleViolation::UnjudgeableScheme("frost-secp256k1".into())
    );
    assert!(matches!(phase(&net, sid), Phase::Active { round: 2, .. }));
}

#[test]
fn a_proven_blame_fails_the_session_naming_the_culprit_and_a_false_one_the_accuser() {
    for (proof, convicted) in [(1u8, 1u32), (2, 2)] {
        let mut net = Net::new(3);
        for m in &mut net.machines {
            m.set_judge(std::sync::Arc::new(ByteJudge));
        }
        let sid = session_in_round_2(&mut net);
        // Blaming oneself or an outsider is refused before any judging.
        let (_, st) = net.one(2, blame(sid, 2, &[1]));
        assert_eq!(rule(&st), &RuleViolation::BadCulprit(PartyId(2)));
        let (_, st) = net.one(2, blame(sid, 9, &[1]));
        assert_eq!(rule(&st), &RuleViolation::BadCulprit(PartyId(9)));
        // A malformed proof is refused and the session goes on.
        let (_, st) = net.one(2, blame(sid, 1, &[0]));
        assert!(matches!(rule(&st), RuleViolation::InvalidBlame(_)));
        assert!(matches!(phase(&net, sid), Phase::Active { round: 2, .. }));
        let (op, st) = net.one(2, blame(sid, 1, &[proof]));
        assert!(matches!(st, OpStatus::Executed { .. }));
        let f = failure(&net, sid);
        assert_eq!(f.proven_misbehaviour, vec![PartyId(convicted)]);
        assert!(f.omission_suspects.is_empty());
        let FailureReason::Blame {
            accuser,
            accused,
            finding,
            op: blame_op,
        } = &f.reason
        else {
            panic!("expected a blame failure, got {:?}", f.reason)
        };
        assert_eq!((*accuser, *accused), (PartyId(2), PartyId(1)));
        assert_eq!(*blame_op, op);
        let expected = if proof == 1 {
            "invalid_secret_share"
        } else {
            "false_accusation"
        };
        assert_eq!(finding, expected);
        // Every party's machine reached the same state.
        let root = net.machines[0].state_root();
        assert!(net.machines.iter().all(|m| m.state_root() == root));
    }
}

#[test]
fn a_signing_session_has_open_rounds_and_completes_once_threshold_signers_agree() {
    let mut net = Net::new(4);
    let key = net.completed_keygen(&[1, 2, 3, 4], 3, b"GPK");
    let (op, _) = net.one(1, signing(key, &[1, 2, 3, 4]));
    net.approve_all(op, &[1, 2, 3, 4]);
    let sid = SessionId::from_op(&op);
    // Round 1 from three candidates only; P4 stalls.
    let b: Vec<_> = (1..=3)
        .map(|p| net.batch(p, vec![broadcast(sid, 1, &[p as u8])]))
        .collect();
    net.block(b);
    // Rounds do not advance in lockstep, and no round deadline fails the
    // session while P4 stalls (past the 60 s default round length).
    net.block_after(61_000, vec![]);
    assert!(matches!(phase(&net, sid), Phase::Active { .. }));
    // Any later round is open, once per sender; round 0 and rounds past
    // the limit are refused.
    let (_, st) = net.one(2, broadcast(sid, 3, b"attempt 2 share"));
    assert!(matches!(st, OpStatus::Executed { .. }), "{st:?}");
    let (_, st) = net.one(2, broadcast(sid, 3, b"again"));
    assert_eq!(rule(&st), &RuleViolation::DuplicateMessage);
    let (_, st) = net.one(2, broadcast(sid, 0, b"zero"));
    assert!(matches!(
        rule(&st),
        RuleViolation::WrongRound { got: 0, .. }
    ));
    let max = SessionRules::default().max_rounds;
    let (_, st) = net.one(2, broadcast(sid, max + 1, b"late"));
    assert_eq!(rule(&st), &RuleViolation::RoundLimit(max + 1));
    // A dissenting result does not block; `threshold` equal results complete.
    let (_, st) = net.one(4, result(sid, b"forged"));
    assert!(matches!(st, OpStatus::Executed { .. }));
    let b: Vec<_> = (1..=2)
        .map(|p| net.batch(p, vec![result(sid, b"SIG")]))
        .collect();
    net.block(b);
    assert!(matches!(phase(&net, sid), Phase::Active { .. }));
    let b3 = net.batch(3, vec![result(sid, b"SIG")]);
    let out = net.block(vec![b3]);
    assert!(out.events.contains(&Event::SessionCompleted {
        session: sid,
        result: Blob(b"SIG".to_vec())
    }));
    let root = net.machines[0].state_root();
    assert!(net.machines.iter().all(|m| m.state_root() == root));
}

#[test]
fn a_signing_session_with_a_bad_taproot_root_is_refused() {
    let mut net = Net::new(3);
    let key = net.completed_keygen(&[1, 2, 3], 2, b"GPK");
    let OpBody::CreateSession(CreateSession {
        session: SessionSpec::Signing(mut spec),
    }) = signing(key, &[1, 2, 3])
    else {
        panic!("signing() builds a signing session")
    };
    spec.taproot = Some(crate::sessions::ops::TaprootSpec {
        merkle_root: Some(Blob(vec![1; 31])),
    });
    let (_, st) = net.one(
        1,
        OpBody::CreateSession(CreateSession {
            session: SessionSpec::Signing(spec),
        }),
    );
    assert_eq!(rule(&st), &RuleViolation::BadMerkleRoot(31));
}

#[test]
fn built_in_schemes_refuse_a_digest_or_tweak_they_cannot_sign() {
    let mut net = Net::new(3);
    let tr = net.completed_keygen_with(&[1, 2, 3], 2, b"GPK-TR", "frost-secp256k1-tr");
    let ed = net.completed_keygen_with(&[1, 2, 3], 2, b"GPK-ED", "frost-ed25519");
    let spec = |key, digest: Vec<u8>, taproot| {
        let OpBody::CreateSession(CreateSession {
            session: SessionSpec::Signing(mut spec),
        }) = signing(key, &[1, 2, 3])
        else {
            panic!("signing() builds a signing session")
        };
        spec.message_digest = Blob(digest);
        spec.taproot = taproot;
        OpBody::CreateSession(CreateSession {
            session: SessionSpec::Signing(spec),
        })
    };
    let (_, st) = net.one(1, spec(tr, vec![1; 31], None));
    assert_eq!(
        rule(&st),
        &RuleViolation::DigestLengthForScheme {
            scheme: "frost-secp256k1-tr".into(),
            len: 31,
            expected: 32
        }
    );
    let tweak = Some(crate::sessions::ops::TaprootSpec { merkle_root: None });
    let (_, st) = net.one(1, spec(ed, vec![1; 40], tweak.clone()));
    assert_eq!(
        rule(&st),
        &RuleViolation::TaprootForScheme("frost-ed25519".into())
    );
    // What each scheme signs is accepted.
    let (_, st) = net.one(1, spec(tr, vec![1; 32], tweak));
    assert!(!matches!(st, OpStatus::Rejected { .. }), "{st:?}");
    let (_, st) = net.one(1, spec(ed, vec![1; 40], None));
    assert!(!matches!(st, OpStatus::Rejected { .. }), "{st:?}");
}

#[test]
fn next_deadline_names_the_earliest_time_driven_change() {
    let mut net = Net::new(3);
    assert_eq!(net.m().next_deadline(), None, "nothing waits on time");
    let (op, _) = net.one(1, keygen(&[1, 2, 3], 2));
    let approval = net.m().operation(&op).unwrap().approval.clone().unwrap();
    assert_eq!(net.m().next_deadline(), Some(approval.deadline_ms + 1));
    net.approve_all(op, &[1, 2, 3]);
    let sid = SessionId::from_op(&op);
    let s = net.m().session(&sid).unwrap().clone();
    let Phase::Active {
        round_started_ms, ..
    } = s.phase
    else {
        panic!("approved: {:?}", s.phase)
    };
    // Lockstep key generation: its round deadline (30 s) comes before the
    // session's (120 s).
    assert_eq!(
        net.m().next_deadline(),
        Some(round_started_ms + s.round_ms + 1)
    );
    assert!(round_started_ms + s.round_ms < s.deadline_ms);
}

fn refresh(key: KeyId) -> OpBody {
    OpBody::CreateSession(CreateSession {
        session: SessionSpec::Refresh(crate::sessions::ops::RefreshSpec {
            key,
            deadline_secs: 120,
            round_secs: None,
        }),
    })
}

#[test]
fn a_refresh_keeps_the_group_key_and_moves_the_current_shares() {
    let mut net = Net::new(3);
    let key = net.completed_keygen_with(&[1, 2, 3], 2, b"GPK", "frost-ed25519");
    assert_eq!(net.m().key(&key).unwrap().share_session(), key.session());

    // Unknown key.
    let ghost = KeyId(Sha256Digest::of(b"no such key"));
    let (_, st) = net.one(1, refresh(ghost));
    assert_eq!(rule(&st), &RuleViolation::UnknownKey(ghost));

    // A refresh takes every holder, at the key's threshold.
    let (op, _) = net.one(2, refresh(key));
    let sid = SessionId::from_op(&op);
    {
        let s = net.m().session(&sid).unwrap();
        assert_eq!(s.participants, vec![PartyId(1), PartyId(2), PartyId(3)]);
        assert_eq!((s.threshold, s.scheme.as_str()), (2, "frost-ed25519"));
    }
    // Unanimous by default: two approvals do not start it.
    net.approve_all(op, &[1, 2]);
    assert_eq!(
        net.m().session(&sid).unwrap().phase,
        Phase::AwaitingApproval
    );
    net.approve_all(op, &[3]);
    let phase = net.m().session(&sid).unwrap().phase.clone();
    assert!(matches!(phase, Phase::Active { .. }), "{phase:?}");

    // While it runs, neither a signing nor a second refresh of the key starts.
    let (_, st) = net.one(1, signing(key, &[1, 2, 3]));
    assert_eq!(rule(&st), &RuleViolation::KeyBusy { key, session: sid });
    let (_, st) = net.one(3, refresh(key));
    assert_eq!(rule(&st), &RuleViolation::KeyBusy { key, session: sid });

    // Lockstep rounds like a key generation.
    let b: Vec<_> = [1u32, 2, 3]
        .iter()
        .map(|p| net.batch(*p, vec![broadcast(sid, 1, &[*p as u8])]))
        .collect();
    net.block(b);
    // A result other than the group key is refused: a refresh keeps the key.
    let (_, st) = net.one(1, result(sid, b"ANOTHER KEY"));
    assert_eq!(rule(&st), &RuleViolation::RefreshChangedKey);
    let b: Vec<_> = [1u32, 2, 3]
        .iter()
        .map(|p| net.batch(*p, vec![result(sid, b"GPK")]))
        .collect();
    net.block(b);
    assert!(matches!(
        net.m().session(&sid).unwrap().phase,
        Phase::Completed { .. }
    ));
    let k = net.m().key(&key).unwrap();
    assert_eq!(k.public_key.as_slice(), b"GPK");
    assert_eq!(k.share_session(), sid, "the refreshed shares sign now");

    // The key is free again: a signing starts.
    let (_, st) = net.one(1, signing(key, &[1, 2, 3]));
    assert!(!matches!(st, OpStatus::Rejected { .. }), "{st:?}");
    // ... and a refresh is refused while it is open.
    let (_, st) = net.one(2, refresh(key));
    assert!(matches!(rule(&st), RuleViolation::KeyBusy { .. }));
}
