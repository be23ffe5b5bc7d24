//! Approval policies: how many parties' verdicts an operation needs before it
//! executes, and when it can no longer get them.
//!
//! The voters of an operation are every member of the cluster (for an
//! attestation record: every member but its subject, who cannot vouch for
//! itself). Each voter posts one verdict. With `unanimous` every voter must
//! approve, so one rejection rejects; with `quorum` the fault model's quorum
//! of the voters must approve, and the operation is rejected as soon as so
//! many voters rejected that the quorum is out of reach. Either way every
//! rejection's reason stays recorded with the operation.

use crate::sessions::ops::{Decision, SessionKind};
use crate::types::{FaultModel, PartyId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many approvals an operation kind needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalPolicy {
    /// Every voter approves.
    Unanimous,
    /// The cluster fault model's quorum of the voters approves.
    Quorum,
}

/// The approval policy of each approvable operation kind. Part of the
/// cluster's canonical configuration: every party must use the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalRules {
    /// Starting a key generation (default `unanimous`: a key binds everyone
    /// who holds a share).
    pub keygen: ApprovalPolicy,
    /// Starting a signing (default `quorum`).
    pub signing: ApprovalPolicy,
    /// Accepting a party's attestation evidence (default `quorum`).
    pub attestation: ApprovalPolicy,
    /// Starting a share refresh (default `unanimous`, like a key
    /// generation: it changes every holder's share).
    pub refresh: ApprovalPolicy,
}

impl Default for ApprovalRules {
    fn default() -> Self {
        ApprovalRules {
            keygen: ApprovalPolicy::Unanimous,
            signing: ApprovalPolicy::Quorum,
            attestation: ApprovalPolicy::Quorum,
            refresh: ApprovalPolicy::Unanimous,
        }
    }
}

impl ApprovalRules {
    /// The policy for a session of `kind`.
    pub fn for_session(&self, kind: SessionKind) -> ApprovalPolicy {
        match kind {
            SessionKind::Keygen => self.keygen,
            SessionKind::Signing => self.signing,
            SessionKind::Refresh => self.refresh,
        }
    }
}

/// Where a tally stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tally {
    /// Enough approvals: execute.
    Approved,
    /// The needed approvals can no longer be reached: reject.
    Rejected,
    /// Still open.
    Open,
}

/// The number of approvals `policy` needs out of `voters` voters.
pub fn needed(policy: ApprovalPolicy, fault_model: FaultModel, voters: usize) -> usize {
    match policy {
        ApprovalPolicy::Unanimous => voters,
        ApprovalPolicy::Quorum => fault_model.quorum(voters).min(voters),
    }
}

/// Tallies the verdicts cast by `voters` (verdicts from anyone else are
/// ignored; the machine refuses them before they get here).
pub fn tally(
    policy: ApprovalPolicy,
    fault_model: FaultModel,
    voters: &BTreeSet<PartyId>,
    verdicts: &BTreeMap<PartyId, Decision>,
) -> Tally {
    let need = needed(policy, fault_model, voters.len());
    let (mut yes, mut no) = (0usize, 0usize);
    for (p, d) in verdicts {
        if voters.contains(p) {
            if d.is_approve() {
                yes += 1;
            } else {
                no += 1;
            }
        }
    }
    if yes >= need {
        Tally::Approved
    } else if voters.len().saturating_sub(no) < need {
        Tally::Rejected
    } else {
        Tally::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::ops::{Reason, ReasonCode};

    fn voters(n: u32) -> BTreeSet<PartyId> {
        (1..=n).map(PartyId).collect()
    }
    fn reject() -> Decision {
        Decision::Reject(Reason {
            code: ReasonCode::Other,
            text: String::new(),
        })
    }

    #[test]
    fn unanimous_needs_everyone_and_one_rejection_decides() {
        let v = voters(3);
        let mut d = BTreeMap::new();
        d.insert(PartyId(1), Decision::Approve);
        d.insert(PartyId(2), Decision::Approve);
        assert_eq!(
            tally(ApprovalPolicy::Unanimous, FaultModel::Byzantine, &v, &d),
            Tally::Open
        );
        d.insert(PartyId(3), Decision::Approve);
        assert_eq!(
            tally(ApprovalPolicy::Unanimous, FaultModel::Byzantine, &v, &d),
            Tally::Approved
        );
        d.insert(PartyId(3), reject());
        assert_eq!(
            tally(ApprovalPolicy::Unanimous, FaultModel::Byzantine, &v, &d),
            Tally::Rejected
        );
    }

    #[test]
    fn quorum_rejects_once_out_of_reach() {
        // n = 4, Byzantine quorum 3: one rejection leaves it open, two close it.
        let v = voters(4);
        let mut d = BTreeMap::new();
        d.insert(PartyId(1), reject());
        assert_eq!(
            tally(ApprovalPolicy::Quorum, FaultModel::Byzantine, &v, &d),
            Tally::Open
        );
        d.insert(PartyId(2), Decision::Approve);
        d.insert(PartyId(3), Decision::Approve);
        assert_eq!(
            tally(ApprovalPolicy::Quorum, FaultModel::Byzantine, &v, &d),
            Tally::Open
        );
        d.insert(PartyId(4), Decision::Approve);
        assert_eq!(
            tally(ApprovalPolicy::Quorum, FaultModel::Byzantine, &v, &d),
            Tally::Approved
        );
        let mut d = BTreeMap::new();
        d.insert(PartyId(1), reject());
        d.insert(PartyId(2), reject());
        assert_eq!(
            tally(ApprovalPolicy::Quorum, FaultModel::Byzantine, &v, &d),
            Tally::Rejected
        );
        // Majority quorum of 4 is 3 as well; of 3 it is 2.
        let v3 = voters(3);
        let mut d = BTreeMap::new();
        d.insert(PartyId(1), Decision::Approve);
        d.insert(PartyId(2), Decision::Approve);
        assert_eq!(
            tally(ApprovalPolicy::Quorum, FaultModel::Majority, &v3, &d),
            Tally::Approved
        );
    }

    #[test]
    fn outsiders_do_not_count() {
        let v = voters(2);
        let mut d = BTreeMap::new();
        d.insert(PartyId(7), Decision::Approve);
        d.insert(PartyId(8), Decision::Approve);
        assert_eq!(
            tally(ApprovalPolicy::Quorum, FaultModel::Majority, &v, &d),
            Tally::Open
        );
    }

    #[test]
    fn default_rules_follow_the_design() {
        let r = ApprovalRules::default();
        assert_eq!(
            r.for_session(SessionKind::Keygen),
            ApprovalPolicy::Unanimous
        );
        assert_eq!(r.for_session(SessionKind::Signing), ApprovalPolicy::Quorum);
    }
}
