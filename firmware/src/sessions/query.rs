//! Read-only views the host serves over its HTTP API: a session's state, an
//! operation's status with its verdicts, a session's messages by round, and
//! results. Every view is a function of the decided state only, so every
//! party serves the same answer at the same height.

use super::machine::{
    AttestationStanding, GroupKey, OpRecord, Phase, ProvenMisbehaviour, Session, SessionMachine,
    StoredMessage,
};
use super::ops::{Blob, KeyId, OpId, SessionId};
use crate::types::{Height, PartyId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A session's results: the agreed one, if any, and what each participant
/// posted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResults {
    /// The session.
    pub session: SessionId,
    /// Its phase label (`active`, `completed`, `failed`, ...).
    pub phase: String,
    /// The agreed result, once completed.
    pub agreed: Option<Blob>,
    /// Each participant's posted result.
    pub posted: BTreeMap<PartyId, Blob>,
}

impl SessionMachine {
    /// The last applied height (0 at genesis).
    pub fn height(&self) -> Height {
        self.state().height
    }

    /// The last applied block time (ms).
    pub fn time_ms(&self) -> u64 {
        self.state().time_ms
    }

    /// A session, with its parameters, phase, messages and results.
    pub fn session(&self, id: &SessionId) -> Option<&Session> {
        self.state().sessions.get(id)
    }

    /// Every session, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.state().sessions.values()
    }

    /// An operation's status, kind, position and verdicts.
    pub fn operation(&self, id: &OpId) -> Option<&OpRecord> {
        self.state().ops.get(id)
    }

    /// A session's messages in decided order, optionally only of `round`,
    /// optionally as `party` should read them: its own messages whole, and
    /// of the others' the broadcast part and the point-to-point part
    /// addressed to it (messages with neither are left out). `None` if there
    /// is no such session.
    pub fn messages(
        &self,
        id: &SessionId,
        round: Option<u32>,
        party: Option<PartyId>,
    ) -> Option<Vec<StoredMessage>> {
        Some(messages_of(self.session(id)?, round, party))
    }

    /// A session's results. `None` if there is no such session.
    pub fn results(&self, id: &SessionId) -> Option<SessionResults> {
        Some(results_of(self.session(id)?))
    }

    /// A group key from a completed key generation.
    pub fn key(&self, id: &KeyId) -> Option<&GroupKey> {
        self.state().keys.get(id)
    }

    /// Every group key, in id order.
    pub fn keys(&self) -> impl Iterator<Item = &GroupKey> {
        self.state().keys.values()
    }

    /// The earliest block time (ms) at which a block changes something
    /// by time alone: a pending operation's approval deadline, an open
    /// session's overall deadline, or a lockstep session's round deadline
    /// (each passes at the first millisecond after it). `None` when
    /// nothing waits on time. Costs one pass over the pending operations
    /// and open sessions, not over history.
    pub fn next_deadline(&self) -> Option<u64> {
        let st = self.state();
        let approvals = st
            .pending
            .iter()
            .filter_map(|id| st.ops.get(id)?.approval.as_ref().map(|a| a.deadline_ms));
        let sessions = st.open_sessions.iter().filter_map(|sid| {
            let s = st.sessions.get(sid)?;
            match s.phase {
                Phase::Active {
                    round_started_ms, ..
                } if !s.has_open_rounds() => Some(
                    s.deadline_ms
                        .min(round_started_ms.saturating_add(s.round_ms)),
                ),
                Phase::Active { .. } => Some(s.deadline_ms),
                _ => None,
            }
        });
        approvals.chain(sessions).min().map(|t| t.saturating_add(1))
    }

    /// Operations awaiting `party`'s verdict (it votes on them and has not
    /// posted one), in decided order.
    pub fn awaiting_verdict_from(&self, party: PartyId) -> Vec<OpId> {
        let mut v: Vec<&OpRecord> = self
            .state()
            .pending
            .iter()
            .filter_map(|id| self.state().ops.get(id))
            .filter(|r| {
                r.approval
                    .as_ref()
                    .is_some_and(|a| a.voters.contains(&party))
                    && !r.verdicts.contains_key(&party)
            })
            .collect();
        v.sort_by_key(|r| r.position.ordinal);
        v.into_iter().map(|r| r.id).collect()
    }

    /// The last decided batch seq of `party` (a proposer should not include
    /// a batch of that party with a seq at or below it: it would be rejected
    /// as a replay).
    pub fn last_seq(&self, party: PartyId) -> Option<u64> {
        self.state().last_seq.get(&party).copied()
    }

    /// Proven misbehaviour, in decided order.
    pub fn misbehaviour(&self) -> &[ProvenMisbehaviour] {
        &self.state().misbehaviour
    }

    /// A party's attestation standing.
    pub fn attestation(&self, party: PartyId) -> Option<&AttestationStanding> {
        self.state().attestation.get(&party)
    }
}

/// `s`'s messages in decided order, optionally only of `round`, optionally
/// as `party` should read them: its own messages whole, and of the others'
/// the broadcast part and the point-to-point part addressed to it (messages
/// with neither are left out).
pub fn messages_of(s: &Session, round: Option<u32>, party: Option<PartyId>) -> Vec<StoredMessage> {
    s.messages
        .iter()
        .filter(|m| round.is_none_or(|r| m.round == r))
        .filter_map(|m| match party {
            None => Some(m.clone()),
            Some(p) if m.from == p => Some(m.clone()),
            Some(p) => {
                let direct: Vec<_> = m.direct.iter().filter(|d| d.to == p).cloned().collect();
                (m.broadcast.is_some() || !direct.is_empty()).then(|| StoredMessage {
                    direct,
                    ..m.clone()
                })
            }
        })
        .collect()
}

/// `s`'s results: the agreed one, if any, and what each participant posted.
pub fn results_of(s: &Session) -> SessionResults {
    SessionResults {
        session: s.id,
        phase: s.phase.label().to_string(),
        agreed: match &s.phase {
            Phase::Completed { result, .. } => Some(result.clone()),
            _ => None,
        },
        posted: s.results.clone(),
    }
}
