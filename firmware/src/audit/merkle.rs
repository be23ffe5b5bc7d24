//! The RFC 6962 / RFC 9162 Merkle tree over audit entries.
//!
//! Leaf hash `SHA-256(0x00 || entry)`, interior node `SHA-256(0x01 || left ||
//! right)`, the empty tree `SHA-256("")`. Three parts:
//!
//! - [`CompactTree`]: the append-only frontier (one hash per set bit of the
//!   size, at most 64), enough to give the root after every append. Each
//!   append reports the perfect nodes it completed, for the host to store.
//! - [`NodeStore`]: where the host keeps those nodes (redb in the daemon,
//!   [`MemoryNodeStore`] in tests and the offline verifier); proofs for any
//!   `(index, size)` and `(old, new)` are built from it with
//!   O(log² n) lookups ([`inclusion_proof`], [`consistency_proof`]).
//! - Standalone verifiers, [`verify_inclusion`] and [`verify_consistency`],
//!   transcribing RFC 9162 sections 2.1.3.2 and 2.1.4.2.

use crate::types::Sha256Digest;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of leaves in a tree (an RFC 6962 tree size).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TreeSize(pub u64);

impl fmt::Display for TreeSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Index of a leaf (an audit entry), from 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LeafIndex(pub u64);

impl fmt::Display for LeafIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The address of a perfect subtree: `level` 0 is a leaf; the node at
/// `(level, index)` covers leaves `index << level .. (index + 1) << level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Height above the leaves.
    pub level: u8,
    /// Position among the nodes of that level.
    pub index: u64,
}

/// `SHA-256(0x00 || data)`: the hash of a leaf.
pub fn leaf_hash(data: &[u8]) -> Sha256Digest {
    Sha256Digest::of_parts(&[&[0x00], data])
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Sha256Digest, right: &Sha256Digest) -> Sha256Digest {
    Sha256Digest::of_parts(&[&[0x01], left.as_bytes(), right.as_bytes()])
}

/// `SHA-256("")`: the root of the empty tree.
pub fn empty_root() -> Sha256Digest {
    Sha256Digest::of(&[])
}

/// The root of the tree whose leaf hashes are `leaves` (RFC 6962 MTH),
/// computed by appending them to a [`CompactTree`].
pub fn root_of(leaves: &[Sha256Digest]) -> Sha256Digest {
    let mut t = CompactTree::new();
    for l in leaves {
        t.push_leaf_hash(*l);
    }
    t.root()
}

/// The append-only frontier of the tree: the roots of the perfect subtrees
/// that the binary decomposition of the size splits the tree into, largest
/// first. Serializable, so the host can persist it beside the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactTree {
    size: u64,
    /// `(level, hash)`, levels strictly decreasing; one per set bit of `size`.
    frontier: Vec<(u8, Sha256Digest)>,
}

/// A perfect node completed by an append: store it for proofs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    /// Where it is.
    pub id: NodeId,
    /// Its hash.
    pub hash: Sha256Digest,
}

/// A frontier that does not describe a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrontierError {
    /// The levels do not match the binary decomposition of the size.
    #[error("frontier of {got} hashes does not match tree size {size}: the stored tree state is corrupt; rebuild it from the leaf hashes")]
    Mismatch {
        /// The claimed size.
        size: u64,
        /// How many hashes were given.
        got: usize,
    },
}

impl CompactTree {
    /// The empty tree.
    pub fn new() -> Self {
        CompactTree::default()
    }

    /// Rebuilds the frontier of a tree of `size` leaves from its store.
    pub fn from_store<S: NodeStore + ?Sized>(
        store: &S,
        size: TreeSize,
    ) -> Result<Self, ProofError> {
        let mut frontier = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size.0 & (1u64 << level) != 0 {
                let id = NodeId {
                    level,
                    index: start >> level,
                };
                frontier.push((level, get_node(store, id)?));
                start += 1u64 << level;
            }
        }
        Ok(CompactTree {
            size: size.0,
            frontier,
        })
    }

    /// Builds a tree from its size and frontier hashes (largest subtree
    /// first), as persisted.
    pub fn from_parts(size: TreeSize, hashes: Vec<Sha256Digest>) -> Result<Self, FrontierError> {
        let levels: Vec<u8> = (0..64u8)
            .rev()
            .filter(|l| size.0 & (1u64 << l) != 0)
            .collect();
        if levels.len() != hashes.len() {
            return Err(FrontierError::Mismatch {
                size: size.0,
                got: hashes.len(),
            });
        }
        Ok(CompactTree {
            size: size.0,
            frontier: levels.into_iter().zip(hashes).collect(),
        })
    }

    /// The frontier hashes, largest subtree first.
    pub fn frontier(&self) -> impl Iterator<Item = &Sha256Digest> {
        self.frontier.iter().map(|(_, h)| h)
    }

    /// The number of leaves.
    pub fn size(&self) -> TreeSize {
        TreeSize(self.size)
    }

    /// Appends an entry (its encoded bytes); returns the leaf's index and
    /// the nodes completed, the leaf itself first.
    pub fn append(&mut self, entry: &[u8]) -> (LeafIndex, Vec<NewNode>) {
        let mut nodes = Vec::with_capacity(2);
        let index = self.append_with(leaf_hash(entry), |n| nodes.push(n));
        (index, nodes)
    }

    /// Appends a leaf hash; returns its index. The cheap form for callers
    /// that keep no node store.
    pub fn push_leaf_hash(&mut self, leaf: Sha256Digest) -> LeafIndex {
        self.append_with(leaf, |_| {})
    }

    /// Appends a leaf hash, calling `created` with each completed node
    /// (the leaf first, then each interior node it completes, upwards).
    pub fn append_with(
        &mut self,
        leaf: Sha256Digest,
        mut created: impl FnMut(NewNode),
    ) -> LeafIndex {
        let index = self.size;
        created(NewNode {
            id: NodeId { level: 0, index },
            hash: leaf,
        });
        let mut level = 0u8;
        let mut hash = leaf;
        while let Some(&(l, left)) = self.frontier.last() {
            if l != level {
                break;
            }
            self.frontier.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            created(NewNode {
                id: NodeId {
                    level,
                    index: index >> level,
                },
                hash,
            });
        }
        self.frontier.push((level, hash));
        // A log cannot reach 2^64 entries; saturate rather than wrap.
        self.size = self.size.saturating_add(1);
        LeafIndex(index)
    }

    /// The root hash of the current tree.
    pub fn root(&self) -> Sha256Digest {
        let mut it = self.frontier.iter().rev();
        let Some((_, last)) = it.next() else {
            return empty_root();
        };
        let mut acc = *last;
        for (_, h) in it {
            acc = node_hash(h, &acc);
        }
        acc
    }
}

/// A store failure reported by a [`NodeStore`] (a local fault, not a peer's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node store failed: {0}")]
pub struct StoreError(pub String);

/// Where the perfect nodes of the tree live. The host implements it over
/// its database, storing every [`NewNode`] that [`CompactTree::append`]
/// reports; only nodes of complete subtrees are ever asked for.
pub trait NodeStore {
    /// The hash of a perfect node, or `None` if it is not stored.
    fn node(&self, id: NodeId) -> Result<Option<Sha256Digest>, StoreError>;
}

/// An in-memory [`NodeStore`]: every level as a vector.
#[derive(Clone, Debug, Default)]
pub struct MemoryNodeStore {
    levels: Vec<Vec<Sha256Digest>>,
    tree: CompactTree,
}

impl MemoryNodeStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryNodeStore::default()
    }

    /// Appends a leaf hash, storing every node it completes.
    pub fn push_leaf_hash(&mut self, leaf: Sha256Digest) -> LeafIndex {
        let levels = &mut self.levels;
        self.tree.append_with(leaf, |n| {
            let l = usize::from(n.id.level);
            while levels.len() <= l {
                levels.push(Vec::new());
            }
            if let Some(v) = levels.get_mut(l) {
                v.push(n.hash);
            }
        })
    }

    /// Appends an entry (its encoded bytes).
    pub fn append(&mut self, entry: &[u8]) -> LeafIndex {
        self.push_leaf_hash(leaf_hash(entry))
    }

    /// The tree as it stands.
    pub fn tree(&self) -> &CompactTree {
        &self.tree
    }

    /// The number of leaves.
    pub fn size(&self) -> TreeSize {
        self.tree.size()
    }

    /// The current root.
    pub fn root(&self) -> Sha256Digest {
        self.tree.root()
    }

    /// The root of the tree's first `size` leaves.
    pub fn root_at(&self, size: TreeSize) -> Result<Sha256Digest, ProofError> {
        if size > self.size() {
            return Err(ProofError::BeyondTree {
                size,
                have: self.size(),
            });
        }
        subtree_root(self, 0, size.0)
    }
}

impl NodeStore for MemoryNodeStore {
    fn node(&self, id: NodeId) -> Result<Option<Sha256Digest>, StoreError> {
        let level = self.levels.get(usize::from(id.level));
        Ok(level
            .and_then(|v| usize::try_from(id.index).ok().and_then(|i| v.get(i)))
            .copied())
    }
}

/// A [`NodeStore`] whose memory is bounded by the leaves since a mark: it
/// keeps the frontier of the tree at the mark and every node created after
/// it. That is enough for the consistency proof from the marked size to the
/// current one (its old-side hashes are the marked tree's frontier nodes,
/// its new-side hashes lie wholly after the mark), so a verifier streaming a
/// long log holds only the entries between two checkpoints.
#[derive(Clone, Debug, Default)]
pub struct WindowNodeStore {
    tree: CompactTree,
    mark: TreeSize,
    /// The frontier at the mark.
    frontier: Vec<NewNode>,
    /// Per level: the index of the first node created since the mark, and
    /// the nodes from it on (each level's nodes are created in index order).
    levels: Vec<(u64, Vec<Sha256Digest>)>,
}

impl WindowNodeStore {
    /// An empty tree, marked at size 0.
    pub fn new() -> Self {
        WindowNodeStore::default()
    }

    /// Appends a leaf hash.
    pub fn push_leaf_hash(&mut self, leaf: Sha256Digest) -> LeafIndex {
        let levels = &mut self.levels;
        self.tree.append_with(leaf, |n| {
            let l = usize::from(n.id.level);
            while levels.len() <= l {
                levels.push((n.id.index, Vec::new()));
            }
            if let Some((base, v)) = levels.get_mut(l) {
                if v.is_empty() {
                    *base = n.id.index;
                }
                v.push(n.hash);
            }
        })
    }

    /// The tree as it stands.
    pub fn tree(&self) -> &CompactTree {
        &self.tree
    }

    /// The size at the mark.
    pub fn mark(&self) -> TreeSize {
        self.mark
    }

    /// Moves the mark to the current size, forgetting every node but the
    /// current frontier.
    pub fn set_mark(&mut self) {
        self.levels.clear();
        self.frontier.clear();
        let mut start = 0u64;
        for (level, hash) in &self.tree.frontier {
            self.frontier.push(NewNode {
                id: NodeId {
                    level: *level,
                    index: start >> level,
                },
                hash: *hash,
            });
            start += 1u64 << level;
        }
        self.mark = self.tree.size();
    }

    /// The consistency proof from the marked size to the current size.
    pub fn consistency_from_mark(&self) -> Result<Vec<Sha256Digest>, ProofError> {
        consistency_proof(self, self.mark, self.tree.size())
    }
}

impl NodeStore for WindowNodeStore {
    fn node(&self, id: NodeId) -> Result<Option<Sha256Digest>, StoreError> {
        if let Some((base, v)) = self.levels.get(usize::from(id.level)) {
            if let Some(h) = id
                .index
                .checked_sub(*base)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| v.get(o))
            {
                return Ok(Some(*h));
            }
        }
        Ok(self.frontier.iter().find(|n| n.id == id).map(|n| n.hash))
    }
}

/// A proof that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf is not in a tree of that size.
    #[error("leaf {index} is not in a tree of size {size}: ask for an index below the size")]
    IndexOutOfRange {
        /// The leaf.
        index: LeafIndex,
        /// The tree size.
        size: TreeSize,
    },
    /// Consistency asked from a larger to a smaller tree, or from the empty tree.
    #[error("no consistency proof from size {old} to size {new}: need 0 < old <= new")]
    BadRange {
        /// The old size.
        old: TreeSize,
        /// The new size.
        new: TreeSize,
    },
    /// The tree asked about is larger than the log.
    #[error("tree size {size} exceeds the log's {have} entries")]
    BeyondTree {
        /// The size asked about.
        size: TreeSize,
        /// The log's size.
        have: TreeSize,
    },
    /// A node the proof needs is not in the store.
    #[error("node (level {}, index {}) is missing from the store: the log's node table is incomplete; rebuild it from the leaves", .0.level, .0.index)]
    MissingNode(NodeId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn get_node<S: NodeStore + ?Sized>(store: &S, id: NodeId) -> Result<Sha256Digest, ProofError> {
    store.node(id)?.ok_or(ProofError::MissingNode(id))
}

/// The largest power of two strictly below `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `start .. start + n`, where `start` is a multiple of the
/// largest power of two not above `n` (true of every range the RFC 6962
/// recursions visit). `n = 0` gives the empty root.
fn subtree_root<S: NodeStore + ?Sized>(
    store: &S,
    start: u64,
    n: u64,
) -> Result<Sha256Digest, ProofError> {
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() {
        let level = n.trailing_zeros() as u8;
        return get_node(
            store,
            NodeId {
                level,
                index: start >> level,
            },
        );
    }
    let k = split_point(n);
    let left = subtree_root(store, start, k)?;
    let right = subtree_root(store, start + k, n - k)?;
    Ok(node_hash(&left, &right))
}

/// The RFC 6962 audit path `PATH(index, D[size])`, leaf side first: the
/// inclusion proof of leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof<S: NodeStore + ?Sized>(
    store: &S,
    index: LeafIndex,
    size: TreeSize,
) -> Result<Vec<Sha256Digest>, ProofError> {
    if index.0 >= size.0 {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut path = Vec::new();
    // Walk down from the root, collecting siblings; reverse at the end.
    let (mut start, mut n, mut m) = (0u64, size.0, index.0);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            path.push(subtree_root(store, start + k, n - k)?);
            n = k;
        } else {
            path.push(subtree_root(store, start, k)?);
            start += k;
            m -= k;
            n -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The RFC 6962 consistency proof `PROOF(old, D[new])`, smallest subtree
/// first, between the trees of the first `old` and `new` leaves.
/// `old == new` gives the empty proof.
pub fn consistency_proof<S: NodeStore + ?Sized>(
    store: &S,
    old: TreeSize,
    new: TreeSize,
) -> Result<Vec<Sha256Digest>, ProofError> {
    if old.0 == 0 || old.0 > new.0 {
        return Err(ProofError::BadRange { old, new });
    }
    let mut path = Vec::new();
    // SUBPROOF(m, D[start..start+n], complete), iteratively, root first.
    let (mut start, mut n, mut m, mut complete) = (0u64, new.0, old.0, true);
    loop {
        if m == n {
            if !complete {
                path.push(subtree_root(store, start, n)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            path.push(subtree_root(store, start + k, n - k)?);
            n = k;
        } else {
            path.push(subtree_root(store, start, k)?);
            start += k;
            m -= k;
            n -= k;
            complete = false;
        }
    }
    path.reverse();
    Ok(path)
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf.
        index: LeafIndex,
        /// The tree size.
        size: TreeSize,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has the wrong length for these tree sizes")]
    WrongLength,
    /// The old size exceeds the new one.
    #[error("old tree size {old} exceeds new tree size {new}: a log never shrinks")]
    Shrunk {
        /// The old size.
        old: TreeSize,
        /// The new size.
        new: TreeSize,
    },
    /// The recomputed root differs from the expected one.
    #[error("recomputed root {computed} differs from the expected root {expected}")]
    RootMismatch {
        /// What the proof leads to.
        computed: Sha256Digest,
        /// What was expected.
        expected: Sha256Digest,
    },
    /// The proof leads to another old root than the one given.
    #[error("proof does not reproduce the old root {expected} (got {computed})")]
    OldRootMismatch {
        /// What the proof leads to.
        computed: Sha256Digest,
        /// The given old root.
        expected: Sha256Digest,
    },
}

/// The root an inclusion proof leads to (RFC 9162 section 2.1.3.2).
pub fn root_from_inclusion(
    leaf: &Sha256Digest,
    index: LeafIndex,
    size: TreeSize,
    path: &[Sha256Digest],
) -> Result<Sha256Digest, VerifyError> {
    if index.0 >= size.0 {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index.0, size.0 - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return Err(VerifyError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(VerifyError::WrongLength);
    }
    Ok(r)
}

/// Verifies that `leaf` (a leaf hash) is at `index` of the tree of `size`
/// leaves with root `root` (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Sha256Digest,
    index: LeafIndex,
    size: TreeSize,
    path: &[Sha256Digest],
    root: &Sha256Digest,
) -> Result<(), VerifyError> {
    let computed = root_from_inclusion(leaf, index, size, path)?;
    if computed != *root {
        return Err(VerifyError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix
/// of the tree of `new` leaves with root `new_root` (RFC 9162 section
/// 2.1.4.2). Equal sizes need an empty proof and equal roots; the empty
/// old tree is a prefix of every tree (empty proof).
pub fn verify_consistency(
    old: TreeSize,
    old_root: &Sha256Digest,
    new: TreeSize,
    new_root: &Sha256Digest,
    proof: &[Sha256Digest],
) -> Result<(), VerifyError> {
    if old > new {
        return Err(VerifyError::Shrunk { old, new });
    }
    if old == new || old.0 == 0 {
        if !proof.is_empty() {
            return Err(VerifyError::WrongLength);
        }
        if old.0 == 0 {
            let e = empty_root();
            if *old_root != e {
                return Err(VerifyError::OldRootMismatch {
                    computed: e,
                    expected: *old_root,
                });
            }
            if new.0 == 0 && *new_root != e {
                return Err(VerifyError::RootMismatch {
                    computed: e,
                    expected: *new_root,
                });
            }
            return Ok(());
        }
        if old_root != new_root {
            return Err(VerifyError::RootMismatch {
                computed: *old_root,
                expected: *new_root,
            });
        }
        return Ok(());
    }
    let mut it = proof.iter();
    let first = if old.0.is_power_of_two() {
        *old_root
    } else {
        *it.next().ok_or(VerifyError::WrongLength)?
    };
    let (mut f, mut s) = (old.0 - 1, new.0 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in it {
        if s == 0 {
            return Err(VerifyError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(VerifyError::WrongLength);
    }
    if fr != *old_root {
        return Err(VerifyError::OldRootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(VerifyError::RootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The eight leaves of the RFC 6962 / Certificate Transparency test data.
    fn ct_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect()
    }

    /// MTH(D[n]) for n = 0..=8, as published with the CT test data.
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn d(h: &str) -> Sha256Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(&hex::decode(h).unwrap());
        Sha256Digest(out)
    }

    fn ct_store() -> MemoryNodeStore {
        let mut s = MemoryNodeStore::new();
        for l in ct_leaves() {
            s.append(&l);
        }
        s
    }

    /// Literal transcriptions of RFC 6962 section 2.1 (MTH, PATH, SUBPROOF)
    /// over leaf data, to check every (index, size) and (old, new).
    fn ref_mth(d: &[Vec<u8>]) -> Sha256Digest {
        match d.len() {
            0 => empty_root(),
            1 => leaf_hash(&d[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
            }
        }
    }
    fn ref_path(m: usize, d: &[Vec<u8>]) -> Vec<Sha256Digest> {
        if d.len() <= 1 {
            return vec![];
        }
        let k = split_point(d.len() as u64) as usize;
        if m < k {
            let mut p = ref_path(m, &d[..k]);
            p.push(ref_mth(&d[k..]));
            p
        } else {
            let mut p = ref_path(m - k, &d[k..]);
            p.push(ref_mth(&d[..k]));
            p
        }
    }
    fn ref_subproof(m: usize, d: &[Vec<u8>], complete: bool) -> Vec<Sha256Digest> {
        let n = d.len();
        if m == n {
            return if complete { vec![] } else { vec![ref_mth(d)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = ref_subproof(m, &d[..k], complete);
            p.push(ref_mth(&d[k..]));
            p
        } else {
            let mut p = ref_subproof(m - k, &d[k..], false);
            p.push(ref_mth(&d[..k]));
            p
        }
    }

    #[test]
    fn roots_match_the_published_vectors() {
        assert_eq!(empty_root(), d(CT_ROOTS[0]));
        let leaves = ct_leaves();
        let mut t = CompactTree::new();
        assert_eq!(t.root(), d(CT_ROOTS[0]));
        let s = ct_store();
        for (n, leaf) in leaves.iter().enumerate() {
            let (idx, nodes) = t.append(leaf);
            assert_eq!(idx, LeafIndex(n as u64));
            assert_eq!(nodes[0].hash, leaf_hash(leaf));
            assert_eq!(t.root(), d(CT_ROOTS[n + 1]), "size {}", n + 1);
            assert_eq!(
                s.root_at(TreeSize(n as u64 + 1)).unwrap(),
                d(CT_ROOTS[n + 1])
            );
            assert_eq!(ref_mth(&leaves[..=n]), d(CT_ROOTS[n + 1]));
        }
    }

    #[test]
    fn inclusion_proofs_match_the_published_vectors() {
        let s = ct_store();
        let cases: [(u64, u64, &[&str]); 5] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let leaves = ct_leaves();
        for (i, n, want) in cases {
            let got = inclusion_proof(&s, LeafIndex(i), TreeSize(n)).unwrap();
            let want: Vec<_> = want.iter().map(|h| d(h)).collect();
            assert_eq!(got, want, "PATH({i}, D[{n}])");
            verify_inclusion(
                &leaf_hash(&leaves[i as usize]),
                LeafIndex(i),
                TreeSize(n),
                &got,
                &d(CT_ROOTS[n as usize]),
            )
            .unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_the_published_vectors() {
        let s = ct_store();
        let cases: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in cases {
            let got = consistency_proof(&s, TreeSize(m), TreeSize(n)).unwrap();
            let want: Vec<_> = want.iter().map(|h| d(h)).collect();
            assert_eq!(got, want, "PROOF({m}, D[{n}])");
            verify_consistency(
                TreeSize(m),
                &d(CT_ROOTS[m as usize]),
                TreeSize(n),
                &d(CT_ROOTS[n as usize]),
                &got,
            )
            .unwrap();
        }
    }

    #[test]
    fn every_proof_up_to_eight_leaves_matches_the_rfc_definitions() {
        let leaves = ct_leaves();
        let s = ct_store();
        for n in 1..=8usize {
            let root = d(CT_ROOTS[n]);
            for m in 0..n {
                let p = inclusion_proof(&s, LeafIndex(m as u64), TreeSize(n as u64)).unwrap();
                assert_eq!(p, ref_path(m, &leaves[..n]), "PATH({m}, D[{n}])");
                let leaf = leaf_hash(&leaves[m]);
                verify_inclusion(&leaf, LeafIndex(m as u64), TreeSize(n as u64), &p, &root)
                    .unwrap();
                // Another index, another leaf, or a shorter path fails.
                if n > 1 {
                    let other = (m + 1) % n;
                    assert!(verify_inclusion(
                        &leaf,
                        LeafIndex(other as u64),
                        TreeSize(n as u64),
                        &p,
                        &root
                    )
                    .is_err());
                    let wrong = leaf_hash(&leaves[other]);
                    assert!(verify_inclusion(
                        &wrong,
                        LeafIndex(m as u64),
                        TreeSize(n as u64),
                        &p,
                        &root
                    )
                    .is_err());
                    assert!(verify_inclusion(
                        &leaf,
                        LeafIndex(m as u64),
                        TreeSize(n as u64),
                        &p[1..],
                        &root
                    )
                    .is_err());
                }
                let mut longer = p.clone();
                longer.push(root);
                assert!(verify_inclusion(
                    &leaf,
                    LeafIndex(m as u64),
                    TreeSize(n as u64),
                    &longer,
                    &root
                )
                .is_err());
            }
            assert!(inclusion_proof(&s, LeafIndex(n as u64), TreeSize(n as u64)).is_err());
            for old in 1..=n {
                let p = consistency_proof(&s, TreeSize(old as u64), TreeSize(n as u64)).unwrap();
                assert_eq!(
                    p,
                    ref_subproof(old, &leaves[..n], true),
                    "PROOF({old}, D[{n}])"
                );
                let old_root = d(CT_ROOTS[old]);
                verify_consistency(
                    TreeSize(old as u64),
                    &old_root,
                    TreeSize(n as u64),
                    &root,
                    &p,
                )
                .unwrap();
                if old < n {
                    // A wrong old root, a wrong new root, a truncated proof fail.
                    let other = d(CT_ROOTS[old - 1]);
                    assert!(verify_consistency(
                        TreeSize(old as u64),
                        &other,
                        TreeSize(n as u64),
                        &root,
                        &p
                    )
                    .is_err());
                    assert!(verify_consistency(
                        TreeSize(old as u64),
                        &old_root,
                        TreeSize(n as u64),
                        &other,
                        &p
                    )
                    .is_err());
                    assert!(verify_consistency(
                        TreeSize(old as u64),
                        &old_root,
                        TreeSize(n as u64),
                        &root,
                        &p[..p.len() - 1]
                    )
                    .is_err());
                }
            }
            verify_consistency(TreeSize(0), &empty_root(), TreeSize(n as u64), &root, &[]).unwrap();
        }
        assert!(consistency_proof(&s, TreeSize(0), TreeSize(3)).is_err());
        assert!(consistency_proof(&s, TreeSize(4), TreeSize(3)).is_err());
        assert!(verify_consistency(
            TreeSize(8),
            &d(CT_ROOTS[8]),
            TreeSize(6),
            &d(CT_ROOTS[6]),
            &[]
        )
        .is_err());
    }

    #[test]
    fn frontier_round_trips_through_parts_and_store() {
        let mut s = MemoryNodeStore::new();
        for i in 0..37u32 {
            s.append(&i.to_be_bytes());
            let t = CompactTree::from_store(&s, s.size()).unwrap();
            assert_eq!(&t, s.tree());
            let parts = CompactTree::from_parts(s.size(), t.frontier().copied().collect()).unwrap();
            assert_eq!(parts.root(), s.root());
        }
        assert!(CompactTree::from_parts(TreeSize(3), vec![]).is_err());
    }

    #[test]
    fn a_window_store_proves_consistency_from_its_mark() {
        for old in 1..=40u64 {
            for new in old..=40u64 {
                let mut full = MemoryNodeStore::new();
                let mut w = WindowNodeStore::new();
                for i in 0..new {
                    if i == old {
                        w.set_mark();
                    }
                    let l = leaf_hash(&i.to_be_bytes());
                    full.push_leaf_hash(l);
                    w.push_leaf_hash(l);
                }
                if old == new {
                    w.set_mark();
                }
                assert_eq!(w.mark(), TreeSize(old));
                assert_eq!(
                    w.consistency_from_mark().unwrap(),
                    consistency_proof(&full, TreeSize(old), TreeSize(new)).unwrap(),
                    "{old} -> {new}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn random_trees_prove_and_verify(n in 1u64..300, seed in any::<u64>()) {
            let mut s = MemoryNodeStore::new();
            for i in 0..n {
                s.append(&(seed ^ i).to_be_bytes());
            }
            let root = s.root();
            let i = seed % n;
            let p = inclusion_proof(&s, LeafIndex(i), TreeSize(n)).unwrap();
            let leaf = leaf_hash(&(seed ^ i).to_be_bytes());
            prop_assert!(verify_inclusion(&leaf, LeafIndex(i), TreeSize(n), &p, &root).is_ok());
            let old = 1 + (seed >> 8) % n;
            let c = consistency_proof(&s, TreeSize(old), TreeSize(n)).unwrap();
            let old_root = s.root_at(TreeSize(old)).unwrap();
            prop_assert!(verify_consistency(TreeSize(old), &old_root, TreeSize(n), &root, &c).is_ok());
        }

        #[test]
        fn verifiers_never_panic(i in any::<u64>(), n in any::<u64>(), m in any::<u64>(), len in 0usize..70) {
            let path = vec![empty_root(); len];
            let _ = verify_inclusion(&empty_root(), LeafIndex(i), TreeSize(n), &path, &empty_root());
            let _ = verify_consistency(TreeSize(m), &empty_root(), TreeSize(n), &empty_root(), &path);
        }
    }
}
