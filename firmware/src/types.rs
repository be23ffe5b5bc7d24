//! Newtypes shared by every part of the firmware: parties, heights, digests,
//! the cluster's identity and its fault model.
//!
//! Digests and the cluster and epoch ids live in the leaf crate
//! `quorate-types` (attestation uses them too) and are re-exported here.
//! `PartyId` and `Height` stay: the consensus context implements
//! malachite's `Address` and `Height` traits for them, which the orphan
//! rule allows only in the crate that defines the type or the trait.

use serde::{Deserialize, Serialize};
use std::fmt;

pub use quorate_types::{ClusterId, Epoch, Sha256Digest};

/// A party's identity in the cluster (P1..Pn). Never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartyId(pub u32);

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

/// A consensus height: the index of a decided block, starting at 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How many faulty parties the cluster is configured to tolerate, which fixes
/// the quorum size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultModel {
    /// Quorum floor(2n/3)+1; tolerates f = floor((n-1)/3) Byzantine parties.
    #[default]
    Byzantine,
    /// Quorum n: every party must sign; any one crash halts progress.
    Unanimous,
    /// Quorum floor(n/2)+1: crash-tolerant; relies on attested code not
    /// equivocating (TPM-signed equivocation is still detected and proved).
    Majority,
}

impl FaultModel {
    /// The number of parties whose votes decide, for a cluster of `n` parties.
    pub fn quorum(self, n: usize) -> usize {
        match self {
            FaultModel::Byzantine => 2 * n / 3 + 1,
            FaultModel::Unanimous => n,
            FaultModel::Majority => n / 2 + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_sizes_match_the_design() {
        assert_eq!(FaultModel::Byzantine.quorum(3), 3);
        assert_eq!(FaultModel::Byzantine.quorum(4), 3);
        assert_eq!(FaultModel::Byzantine.quorum(7), 5);
        assert_eq!(FaultModel::Unanimous.quorum(4), 4);
        assert_eq!(FaultModel::Majority.quorum(3), 2);
        assert_eq!(FaultModel::Majority.quorum(4), 3);
        assert_eq!(FaultModel::Majority.quorum(7), 4);
    }
}
