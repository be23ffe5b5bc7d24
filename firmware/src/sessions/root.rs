//! The state root, maintained incrementally.
//!
//! Hashing the whole state after every block costs time in proportion to
//! everything ever decided (measured: 60 ms per block at 5,000 sessions).
//! Instead, the two collections that grow without bound — operation records
//! and sessions — are leaves of binary Merkle trees indexed by their decided
//! order (an operation's ordinal, a session's index), and only the leaves a
//! block changed, and their ancestors, are rehashed. Everything else (the
//! header: heights, seqs, pending and open sets, keys, misbehaviour,
//! attestation) is small and is hashed whole.
//!
//! root = SHA-256(domain || config digest || SHA-256(header) || ops tree root
//! || sessions tree root). Leaves are SHA-256(0x00 || postcard(record)),
//! inner nodes SHA-256(0x01 || left || right), a missing right child is the
//! all-zero digest, the root of an empty tree is SHA-256 of nothing, and a
//! one-leaf tree's root is its leaf.

use crate::types::Sha256Digest;
use serde::Serialize;
use std::collections::BTreeSet;

const LEAF: &[u8] = &[0x00];
const NODE: &[u8] = &[0x01];

/// Hash of a leaf holding `value`'s postcard encoding.
pub(crate) fn leaf<T: Serialize>(value: &T) -> Sha256Digest {
    let bytes = postcard::to_stdvec(value).unwrap_or_default();
    Sha256Digest::of_parts(&[LEAF, &bytes])
}

/// A binary Merkle tree over leaves addressed by index, updated in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MerkleTree {
    /// levels[0] are the leaves; the last level has at most one node.
    levels: Vec<Vec<Sha256Digest>>,
}

impl MerkleTree {
    /// A tree over `leaves`, in index order.
    pub(crate) fn from_leaves(leaves: Vec<Sha256Digest>) -> Self {
        let mut t = MerkleTree::default();
        t.update(leaves.into_iter().enumerate());
        t
    }

    /// The leaves, in index order.
    pub(crate) fn leaves(&self) -> &[Sha256Digest] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// Number of leaves.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Sets the given leaves and rehashes their ancestors only. Each change
    /// replaces an existing leaf or appends one right after the last (give
    /// new leaves in ascending order); one that would leave a gap is ignored (a
    /// well-formed state has none, and ignoring it keeps a corrupt snapshot
    /// from forcing a huge allocation; its root simply differs).
    pub(crate) fn update(&mut self, changes: impl IntoIterator<Item = (usize, Sha256Digest)>) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        let mut dirty = BTreeSet::new();
        if let Some(leaves) = self.levels.first_mut() {
            for (i, h) in changes {
                if i == leaves.len() {
                    leaves.push(h);
                    dirty.insert(i);
                } else if let Some(slot) = leaves.get_mut(i) {
                    *slot = h;
                    dirty.insert(i);
                }
            }
        }
        let mut k = 0;
        while self.levels.get(k).is_some_and(|l| l.len() > 1) {
            let width = self.levels.get(k).map_or(0, Vec::len);
            if self.levels.len() == k + 1 {
                self.levels.push(Vec::new());
            }
            let parents: BTreeSet<usize> = dirty.iter().map(|i| i / 2).collect();
            let mut computed = Vec::with_capacity(parents.len());
            if let Some(level) = self.levels.get(k) {
                for p in &parents {
                    let left = level.get(2 * p).copied().unwrap_or_default();
                    let right = level.get(2 * p + 1).copied().unwrap_or_default();
                    computed.push((*p, Sha256Digest::of_parts(&[NODE, &left.0, &right.0])));
                }
            }
            if let Some(up) = self.levels.get_mut(k + 1) {
                up.resize(width.div_ceil(2), Sha256Digest::default());
                for (p, h) in computed {
                    if let Some(slot) = up.get_mut(p) {
                        *slot = h;
                    }
                }
            }
            dirty = parents;
            k += 1;
        }
    }

    /// The root.
    pub(crate) fn root(&self) -> Sha256Digest {
        match self.levels.iter().rev().find(|l| !l.is_empty()) {
            Some(top) if top.len() == 1 => top.first().copied().unwrap_or_default(),
            _ => Sha256Digest::of(&[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> Sha256Digest {
        Sha256Digest::of(&[i])
    }
    fn node(l: Sha256Digest, r: Sha256Digest) -> Sha256Digest {
        Sha256Digest::of_parts(&[NODE, &l.0, &r.0])
    }

    #[test]
    fn known_shapes() {
        let mut t = MerkleTree::default();
        assert_eq!(t.root(), Sha256Digest::of(&[]));
        t.update([(0, h(0))]);
        assert_eq!(t.root(), h(0));
        t.update([(1, h(1))]);
        assert_eq!(t.root(), node(h(0), h(1)));
        t.update([(2, h(2))]);
        let z = Sha256Digest::default();
        assert_eq!(t.root(), node(node(h(0), h(1)), node(h(2), z)));
        t.update([(0, h(9))]);
        assert_eq!(t.root(), node(node(h(9), h(1)), node(h(2), z)));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn incremental_equals_from_scratch() {
        let mut inc = MerkleTree::default();
        let mut leaves = Vec::new();
        for step in 0..200u32 {
            let mut changes = vec![(leaves.len(), h(step as u8))];
            leaves.push(h(step as u8));
            if step % 3 == 0 {
                let i = (step as usize * 7) % leaves.len();
                leaves[i] = h(step.wrapping_mul(31) as u8);
                changes.push((i, leaves[i]));
            }
            inc.update(changes);
            let mut fresh = MerkleTree::default();
            fresh.update(leaves.iter().copied().enumerate());
            assert_eq!(inc.root(), fresh.root(), "step {step}");
        }
    }
}
