//! The sign guard: refuses to sign a regression or a conflicting message, so
//! that a party never equivocates, even across crashes.
//!
//! The state is the last signed (height, round, value) per step kind
//! (proposal, prevote, precommit). The driver persists it, durably, *before*
//! the corresponding sign request leaves (see the persistence contract in
//! [`crate::consensus::driver`]), and restores it on restart. Modelled on
//! tmkms' `chain/state.rs`.

use crate::consensus::context::{BlockHash, Step};
use crate::types::Height;
use serde::{Deserialize, Serialize};

/// What was last signed for one step kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSigned {
    /// Height.
    pub height: Height,
    /// Round.
    pub round: i64,
    /// The value (None = nil).
    pub value: Option<BlockHash>,
}

/// Why the guard refused to sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignGuardError {
    /// The request is for an earlier (height, round) than one already signed.
    #[error("refusing to sign {step:?} at {height}/{round}: already signed {last:?} (regression)")]
    Regression {
        /// Step kind.
        step: Step,
        /// Requested height.
        height: Height,
        /// Requested round.
        round: i64,
        /// What was signed before.
        last: LastSigned,
    },
    /// Another value was already signed at the same (height, round, step).
    #[error("refusing to sign {step:?} at {height}/{round} for {value:?}: already signed {last:?} (conflict)")]
    Conflict {
        /// Step kind.
        step: Step,
        /// Requested height.
        height: Height,
        /// Requested round.
        round: i64,
        /// Requested value.
        value: Option<BlockHash>,
        /// What was signed before.
        last: LastSigned,
    },
    /// The persisted state does not decode.
    #[error("the persisted sign-guard state is corrupt: restore it from backup; never reset it while the cluster runs")]
    Corrupt,
}

/// The guard's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignGuard {
    proposal: Option<LastSigned>,
    prevote: Option<LastSigned>,
    precommit: Option<LastSigned>,
}

/// Outcome of a successful check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardDecision {
    /// New (height, round): the state advanced and must be persisted before
    /// the signature is requested.
    Advanced,
    /// Exactly what was signed before (e.g. after a restart): signing again
    /// is harmless; the state did not change.
    SameAsBefore,
}

impl SignGuard {
    fn slot(&mut self, step: Step) -> &mut Option<LastSigned> {
        match step {
            Step::Proposal => &mut self.proposal,
            Step::Prevote => &mut self.prevote,
            Step::Precommit => &mut self.precommit,
        }
    }

    /// The last signed message of `step`.
    pub fn last(&self, step: Step) -> Option<LastSigned> {
        match step {
            Step::Proposal => self.proposal,
            Step::Prevote => self.prevote,
            Step::Precommit => self.precommit,
        }
    }

    /// Checks and records a request to sign `value` at (height, round, step).
    pub fn check_and_record(
        &mut self,
        step: Step,
        height: Height,
        round: i64,
        value: Option<BlockHash>,
    ) -> Result<GuardDecision, SignGuardError> {
        let slot = self.slot(step);
        if let Some(last) = *slot {
            match (height, round).cmp(&(last.height, last.round)) {
                std::cmp::Ordering::Less => {
                    return Err(SignGuardError::Regression {
                        step,
                        height,
                        round,
                        last,
                    })
                }
                std::cmp::Ordering::Equal => {
                    if last.value == value {
                        return Ok(GuardDecision::SameAsBefore);
                    }
                    return Err(SignGuardError::Conflict {
                        step,
                        height,
                        round,
                        value,
                        last,
                    });
                }
                std::cmp::Ordering::Greater => {}
            }
        }
        *slot = Some(LastSigned {
            height,
            round,
            value,
        });
        Ok(GuardDecision::Advanced)
    }

    /// The persisted form.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Restores the persisted form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignGuardError> {
        postcard::from_bytes(bytes).map_err(|_| SignGuardError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Sha256Digest;

    fn h(b: u8) -> Option<BlockHash> {
        Some(BlockHash(Sha256Digest([b; 32])))
    }

    #[test]
    fn refuses_conflicts_and_regressions_across_restarts() {
        let mut g = SignGuard::default();
        assert_eq!(
            g.check_and_record(Step::Prevote, Height(2), 0, h(1)),
            Ok(GuardDecision::Advanced)
        );
        assert_eq!(
            g.check_and_record(Step::Prevote, Height(2), 0, h(1)),
            Ok(GuardDecision::SameAsBefore)
        );
        assert!(matches!(
            g.check_and_record(Step::Prevote, Height(2), 0, None),
            Err(SignGuardError::Conflict { .. })
        ));
        // Another step kind is independent.
        assert!(g
            .check_and_record(Step::Precommit, Height(2), 0, None)
            .is_ok());
        let mut restored = SignGuard::from_bytes(&g.to_bytes()).unwrap();
        assert!(matches!(
            restored.check_and_record(Step::Prevote, Height(2), 0, h(2)),
            Err(SignGuardError::Conflict { .. })
        ));
        assert!(matches!(
            restored.check_and_record(Step::Prevote, Height(1), 5, h(1)),
            Err(SignGuardError::Regression { .. })
        ));
        assert_eq!(
            restored.check_and_record(Step::Prevote, Height(2), 1, None),
            Ok(GuardDecision::Advanced)
        );
        assert_eq!(
            SignGuard::from_bytes(&[9, 9, 9]),
            Err(SignGuardError::Corrupt)
        );
    }
}
