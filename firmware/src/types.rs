//! Newtypes shared by every part of the firmware: parties, heights, digests,
//! the cluster's identity and its fault model.

use serde::{Deserialize, Serialize};
use std::fmt;

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

/// A membership epoch: the party set and keys are fixed within an epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// A SHA-256 digest. Equality is constant-time.
// Hash and Ord are derived over the bytes, consistent with the constant-time Eq.
#[allow(clippy::derived_hash_with_manual_eq)]
#[derive(Clone, Copy, Default, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Sha256Digest(out)
    }

    /// SHA-256 over the concatenation of `parts`, without copying them.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Sha256Digest(out)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for Sha256Digest {
    fn eq(&self, other: &Self) -> bool {
        crate::crypto::ct_eq(&self.0, &other.0)
    }
}
impl Eq for Sha256Digest {}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The cluster's identity: a digest of its canonical configuration, bound
/// into every signed message so signatures cannot be replayed across clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub Sha256Digest);

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

    #[test]
    fn digest_equality_and_display() {
        let a = Sha256Digest::of(b"abc");
        assert_eq!(
            a.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(a, Sha256Digest::of_parts(&[b"a", b"bc"]));
        assert_ne!(a, Sha256Digest::of(b"abd"));
    }
}
