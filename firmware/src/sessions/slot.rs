//! The once-per-slot rule: a party signs at most one operation per
//! [`Slot`] (one message per session round, one result per session, one
//! verdict per operation). Two different signed operations of one author
//! for one slot prove misbehaviour (`MisbehaviourProof::ConflictingOps`)
//! and exclude the author, so a correct party must never sign a second
//! one, even when its MPC engine retries a round with fresh randomness or
//! its operator's manual verdict races the automatic one.
//!
//! Two halves of one rule live here so that they cannot drift:
//! [`conflict`], what the session machine accepts as proof, and
//! [`SlotGuard`], what the daemon checks before it accepts an operation
//! of its own (it answers 409 with the operation that holds the slot).
//! Pure: the host keeps the guard's records in its store, in the same
//! transaction as its outbox; the simulator keeps them in memory.

use super::ops::{OpBody, Operation, Slot};
use crate::types::Sha256Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The slot two operations of one author both occupy, if they differ:
/// signed, they prove that author an equivocator.
pub fn conflict(a: &OpBody, b: &OpBody) -> Option<Slot> {
    match (a.slot(), b.slot()) {
        (Some(x), Some(y)) if x == y && a != b => Some(x),
        _ => None,
    }
}

/// What the guard says of an operation of this party.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotCheck {
    /// Of no once-only kind, or its slot is free: sign it, and record it.
    Free,
    /// The very operation that holds its slot: already accepted; answer
    /// with its receipt and sign nothing new.
    Repeat,
    /// A different operation holds its slot: refuse (409).
    Taken,
}

/// Checks an operation whose encoding digests to `candidate` against the
/// digest of the one holding its slot, `held`. Operations are canonically
/// encoded with their author, so one author's two operations have the
/// same digest exactly when they are the same operation.
pub fn check(held: Option<&Sha256Digest>, candidate: &Sha256Digest) -> SlotCheck {
    match held {
        None => SlotCheck::Free,
        Some(h) if h == candidate => SlotCheck::Repeat,
        Some(_) => SlotCheck::Taken,
    }
}

/// The slots this party holds, each with the digest of its operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotGuard {
    held: BTreeMap<Slot, Sha256Digest>,
}

impl SlotGuard {
    /// An empty guard.
    pub fn new() -> Self {
        SlotGuard::default()
    }

    /// Checks `op` ([`check`]) and, if its slot was free, records it as
    /// the slot's holder. The caller signs `op` only on
    /// [`SlotCheck::Free`], and must make the record durable before it does.
    pub fn claim(&mut self, op: &Operation) -> SlotCheck {
        let Some(slot) = op.body.slot() else {
            return SlotCheck::Free;
        };
        let digest = Sha256Digest::of(&op.encode());
        let verdict = check(self.held.get(&slot), &digest);
        if verdict == SlotCheck::Free {
            self.held.insert(slot, digest);
        }
        verdict
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::ops::{
        Blob, Decision, OpId, Reason, ReasonCode, SessionId, SessionMessage, VerdictOp,
    };
    use crate::types::PartyId;

    fn message(round: u32, payload: &[u8]) -> Operation {
        Operation {
            author: PartyId(2),
            body: OpBody::SessionMessage(SessionMessage {
                session: SessionId(Sha256Digest::of(b"slot test")),
                round,
                broadcast: Some(Blob(payload.to_vec())),
                direct: Vec::new(),
            }),
        }
    }

    fn verdict(decision: Decision) -> Operation {
        Operation {
            author: PartyId(2),
            body: OpBody::Verdict(VerdictOp {
                target: OpId(Sha256Digest::of(b"target")),
                decision,
            }),
        }
    }

    /// An engine retry of a round with fresh randomness, and a manual
    /// reject racing the automatic approval, are refused; the very same
    /// operation again is a repeat; other slots stay free.
    #[test]
    fn a_second_different_operation_for_a_held_slot_is_refused() {
        let mut g = SlotGuard::new();
        assert_eq!(g.claim(&message(1, b"first")), SlotCheck::Free);
        assert_eq!(g.claim(&message(1, b"first")), SlotCheck::Repeat);
        assert_eq!(g.claim(&message(1, b"retry")), SlotCheck::Taken);
        assert_eq!(g.claim(&message(2, b"retry")), SlotCheck::Free);
        assert_eq!(g.claim(&verdict(Decision::Approve)), SlotCheck::Free);
        let manual = Decision::Reject(Reason {
            code: ReasonCode::OperatorRejected,
            text: "no".into(),
        });
        assert_eq!(g.claim(&verdict(manual)), SlotCheck::Taken);
        assert_eq!(g.len(), 3);
    }

    /// What the guard refuses is exactly what would be a proof.
    #[test]
    fn the_guard_refuses_exactly_the_conflicts() {
        let a = message(1, b"a");
        let b = message(1, b"b");
        let c = message(2, b"b");
        assert!(conflict(&a.body, &b.body).is_some());
        assert!(conflict(&a.body, &a.body).is_none());
        assert!(conflict(&b.body, &c.body).is_none());
        let mut g = SlotGuard::new();
        g.claim(&a);
        assert_eq!(
            g.claim(&b) == SlotCheck::Taken,
            conflict(&a.body, &b.body).is_some()
        );
        assert_eq!(
            g.claim(&c) == SlotCheck::Taken,
            conflict(&a.body, &c.body).is_some()
        );
    }
}
