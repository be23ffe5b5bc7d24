//! Split views: what `quorate audit verify` remembers between runs and
//! compares across bundles (issue 17 point 7).
//!
//! One bundle proves its own history consistent. A quorum that
//! equivocates can still show one auditor one history and another a
//! different one; only comparing views finds that. Two sources of views:
//!
//! - several bundles given at once (exports of several parties): every
//!   certified checkpoint of each is compared with the log of every other
//!   bundle that reaches its size — the root of that log's first *size*
//!   leaves must be the checkpoint's root;
//! - the verifier's state file (`--state FILE`), which keeps per cluster the
//!   last certified checkpoint verified (its signed note is kept as the
//!   evidence): the next bundle must reach it and have its root at its size,
//!   as a Go sumdb client demands of the next tree it sees.
//!
//! Each inconsistency is a [`Fork`]: the two checkpoints (or checkpoint and
//! log) with the parties whose cosignatures certify each side. Their
//! signatures over conflicting roots are the proof of misbehaviour.
//!
//! Only bundles that verified on their own are compared (their entries
//! match their checkpoints), so a bundle's leaves stand for its
//! checkpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::Path;

use quorate_firmware::audit::checkpoint::{SignedCheckpoint, SignerRole};
use quorate_firmware::audit::merkle::{leaf_hash, CompactTree};
use quorate_firmware::types::{ClusterId, PartyId, Sha256Digest};
use serde::{Deserialize, Serialize};

use super::bundle::{BundleError, BundleReader, Section};

/// Format number of the state file.
pub const STATE_FORMAT: u32 = 1;

/// A certified checkpoint as a bundle (or the state) shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointView {
    /// Tree size.
    pub size: u64,
    /// Root at that size.
    pub root: Sha256Digest,
    /// Parties whose cosignature lines it carries (verified by the bundle's
    /// own check before views are compared).
    pub cosigners: BTreeSet<PartyId>,
    /// Where it was seen: a bundle's path, or the state file.
    pub source: String,
    /// The signed note.
    pub note: String,
}

/// What one verified bundle contributes: its cluster, its certified
/// checkpoints and the leaf hashes of its entries.
#[derive(Clone, Debug)]
pub struct BundleLog {
    /// The bundle's path (for reports).
    pub source: String,
    /// Its cluster.
    pub cluster: ClusterId,
    /// Its certified checkpoints, in bundle order.
    pub checkpoints: Vec<CheckpointView>,
    leaves: Vec<Sha256Digest>,
}

impl BundleLog {
    /// Reads `input` (a bundle that verified) for its views. Memory: 32
    /// bytes per entry plus the checkpoints.
    pub fn read<R: Read>(source: &str, input: R) -> Result<BundleLog, BundleError> {
        let mut r = BundleReader::new(input)?;
        let mut cluster = None;
        let mut checkpoints = Vec::new();
        let mut leaves = Vec::new();
        while let Some(s) = r.next_section()? {
            match s {
                Section::Header(h) => cluster = Some(h.cluster),
                Section::Checkpoint(bytes) => {
                    // Parsed and certified by the bundle's own check; a note
                    // that does not parse here is skipped, not compared.
                    if let Ok(cp) = SignedCheckpoint::parse(&bytes) {
                        let origin = cp.checkpoint.origin.clone();
                        checkpoints.push(CheckpointView {
                            size: cp.checkpoint.size.0,
                            root: cp.checkpoint.root,
                            cosigners: cp
                                .signatures
                                .iter()
                                .filter_map(|l| l.signer(&origin))
                                .filter(|(_, role)| *role == SignerRole::Cosign)
                                .map(|(p, _)| p)
                                .collect(),
                            source: source.to_string(),
                            note: String::from_utf8_lossy(&bytes).into_owned(),
                        });
                    }
                }
                Section::Entry(e) => leaves.push(leaf_hash(&e)),
                _ => {}
            }
        }
        Ok(BundleLog {
            source: source.to_string(),
            cluster: cluster.unwrap_or(ClusterId(Sha256Digest::default())),
            checkpoints,
            leaves,
        })
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The roots of this log's first `s` leaves for each `s` in `sizes`
    /// within the log, in one pass.
    pub fn roots_at(&self, sizes: &BTreeSet<u64>) -> BTreeMap<u64, Sha256Digest> {
        let mut out = BTreeMap::new();
        let mut tree = CompactTree::new();
        if sizes.contains(&0) {
            out.insert(0, tree.root());
        }
        for (i, leaf) in self.leaves.iter().enumerate() {
            tree.push_leaf_hash(*leaf);
            let n = i as u64 + 1;
            if sizes.contains(&n) {
                out.insert(n, tree.root());
            }
        }
        out
    }

    /// The checkpoint that certifies this log at `size` or beyond (the
    /// smallest), for naming who vouches for it.
    fn certifying(&self, size: u64) -> Option<&CheckpointView> {
        self.checkpoints
            .iter()
            .filter(|c| c.size >= size)
            .min_by_key(|c| c.size)
    }

    /// The largest certified checkpoint.
    pub fn latest(&self) -> Option<&CheckpointView> {
        self.checkpoints.iter().max_by_key(|c| c.size)
    }
}

/// Two certified views of one cluster's log that cannot both be true.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    /// The cluster.
    pub cluster: ClusterId,
    /// The checkpoint whose root the other view contradicts.
    pub checkpoint: CheckpointView,
    /// What the other view has at that size.
    pub other_root: Sha256Digest,
    /// Where the other view is.
    pub other_source: String,
    /// Who certified the other view (the cosigners of its checkpoint at or
    /// beyond that size).
    pub other_cosigners: BTreeSet<PartyId>,
}

fn parties(s: &BTreeSet<PartyId>) -> String {
    if s.is_empty() {
        return "nobody".into();
    }
    s.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Fork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FORK of cluster {}: at size {} {} shows root {} certified by {}, but {} has root {} there, certified by {}; the parties that signed both sides equivocated",
            self.cluster.0,
            self.checkpoint.size,
            self.checkpoint.source,
            self.checkpoint.root,
            parties(&self.checkpoint.cosigners),
            self.other_source,
            self.other_root,
            parties(&self.other_cosigners),
        )
    }
}

/// Compares every certified checkpoint of every log with every other log of
/// the same cluster that reaches its size.
pub fn find_forks(logs: &[BundleLog]) -> Vec<Fork> {
    let mut forks = Vec::new();
    for (j, other) in logs.iter().enumerate() {
        let sizes: BTreeSet<u64> = logs
            .iter()
            .enumerate()
            .filter(|(i, l)| *i != j && l.cluster == other.cluster)
            .flat_map(|(_, l)| l.checkpoints.iter().map(|c| c.size))
            .filter(|s| *s <= other.size())
            .collect();
        let roots = other.roots_at(&sizes);
        for (i, log) in logs.iter().enumerate() {
            if i == j || log.cluster != other.cluster {
                continue;
            }
            for c in &log.checkpoints {
                let Some(root) = roots.get(&c.size) else {
                    continue;
                };
                if *root != c.root {
                    forks.push(Fork {
                        cluster: log.cluster,
                        checkpoint: c.clone(),
                        other_root: *root,
                        other_source: other.source.clone(),
                        other_cosigners: other
                            .certifying(c.size)
                            .map(|v| v.cosigners.clone())
                            .unwrap_or_default(),
                    });
                }
            }
        }
    }
    forks
}

/// What the verifier remembers of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Tree size of the last certified checkpoint verified.
    pub size: u64,
    /// Its root, hex.
    pub root: String,
    /// Its signed note (the cosignatures are the evidence if a later
    /// bundle contradicts it).
    pub note: String,
    /// Where it came from.
    pub source: String,
}

/// The state file of `quorate audit verify --state FILE`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierStateFile {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// Cluster id (hex) -> what was last verified.
    pub clusters: BTreeMap<String, Remembered>,
}

/// Why the state file cannot be used or a bundle contradicts it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file cannot be read, parsed or written.
    #[error("state file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The bundle ends before the remembered checkpoint: consistency with
    /// it cannot be checked.
    #[error("{source_name} ends at {size} entries, before the checkpoint of size {remembered} of cluster {cluster} this verifier already holds ({from}): its consistency with it cannot be checked; export a newer bundle")]
    Behind {
        /// The cluster, hex.
        cluster: String,
        /// The bundle.
        source_name: String,
        /// Its entries.
        size: u64,
        /// The remembered size.
        remembered: u64,
        /// Where the remembered checkpoint came from.
        from: String,
    },
    /// The bundle's log contradicts the remembered checkpoint.
    #[error("FORK of cluster {}: the checkpoint of size {} verified earlier ({}) has root {}, but {} has root {} there, certified by {}", .0.cluster, .0.size, .0.from, .0.remembered, .0.source_name, .0.found, .0.signers)]
    Fork(Box<StateFork>),
}

/// The two sides of a contradiction with the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFork {
    /// The cluster, hex.
    pub cluster: String,
    /// The size.
    pub size: u64,
    /// Remembered root, hex.
    pub remembered: String,
    /// The bundle's root at that size.
    pub found: Sha256Digest,
    /// The bundle.
    pub source_name: String,
    /// Where the remembered checkpoint came from.
    pub from: String,
    /// Cosigners of the bundle's checkpoint covering that size.
    pub signers: String,
}

impl VerifierStateFile {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<VerifierStateFile, StateError> {
        let err = |reason: String| StateError::File {
            path: path.display().to_string(),
            reason,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(VerifierStateFile {
                    format: STATE_FORMAT,
                    clusters: BTreeMap::new(),
                })
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let s: VerifierStateFile =
            serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        if s.format != STATE_FORMAT {
            return Err(err(format!(
                "format {} (this build reads {STATE_FORMAT})",
                s.format
            )));
        }
        Ok(s)
    }

    /// Writes `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| StateError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        crate::fsutil::write_atomic(path, &json).map_err(|e| StateError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Checks `log` against what is remembered of its cluster.
    pub fn check(&self, log: &BundleLog) -> Result<(), StateError> {
        let key = log.cluster.0.to_string();
        let Some(r) = self.clusters.get(&key) else {
            return Ok(());
        };
        if log.size() < r.size {
            return Err(StateError::Behind {
                cluster: key,
                source_name: log.source.clone(),
                size: log.size(),
                remembered: r.size,
                from: r.source.clone(),
            });
        }
        let roots = log.roots_at(&BTreeSet::from([r.size]));
        let found = roots.get(&r.size).copied().unwrap_or_default();
        if found.to_string() != r.root {
            return Err(StateError::Fork(Box::new(StateFork {
                cluster: key,
                size: r.size,
                remembered: r.root.clone(),
                found,
                source_name: log.source.clone(),
                from: r.source.clone(),
                signers: parties(
                    &log.certifying(r.size)
                        .map(|c| c.cosigners.clone())
                        .unwrap_or_default(),
                ),
            })));
        }
        Ok(())
    }

    /// Remembers `log`'s latest certified checkpoint if it is beyond what
    /// is remembered (call after [`VerifierStateFile::check`] passed).
    pub fn remember(&mut self, log: &BundleLog) {
        let Some(c) = log.latest() else {
            return;
        };
        let key = log.cluster.0.to_string();
        if self.clusters.get(&key).is_some_and(|r| r.size >= c.size) {
            return;
        }
        self.format = STATE_FORMAT;
        self.clusters.insert(
            key,
            Remembered {
                size: c.size,
                root: c.root.to_string(),
                note: c.note.clone(),
                source: c.source.clone(),
            },
        );
    }
}

/// The outcome of `quorate audit verify` over one or more bundles.
#[derive(Debug, Default)]
pub struct MultiReport {
    /// Each bundle's own report, with its path.
    pub bundles: Vec<(String, super::check::Verification)>,
    /// Inconsistent certified views across the bundles.
    pub forks: Vec<Fork>,
    /// A contradiction with, or a problem of, the state file.
    pub state: Option<String>,
    /// Whether the state file was updated.
    pub remembered: bool,
}

impl MultiReport {
    /// True when every bundle verified, no fork was found and the state
    /// agreed.
    pub fn is_ok(&self) -> bool {
        self.bundles.iter().all(|(_, v)| v.is_ok()) && self.forks.is_empty() && self.state.is_none()
    }
}

impl fmt::Display for MultiReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let many = self.bundles.len() > 1;
        for (path, v) in &self.bundles {
            if many {
                writeln!(f, "== {path}")?;
            }
            write!(f, "{v}")?;
        }
        if many {
            writeln!(
                f,
                "views              {} bundles compared, {} forks",
                self.bundles.len(),
                self.forks.len()
            )?;
        }
        for fork in &self.forks {
            writeln!(f, "{fork}")?;
        }
        if let Some(s) = &self.state {
            writeln!(f, "state              {s}")?;
        } else if self.remembered {
            writeln!(
                f,
                "state              updated with the latest certified checkpoint"
            )?;
        }
        if many || self.state.is_some() {
            writeln!(
                f,
                "result             {}",
                if self.is_ok() { "OK" } else { "FAILED" }
            )?;
        }
        Ok(())
    }
}

/// Verifies each bundle in `paths` on its own (see
/// [`super::check::verify_bundle_with`]), then compares their certified
/// views ([`find_forks`]) and, with `state`, checks each against what the
/// state file remembers and records the latest checkpoint of each cluster
/// when everything passed.
pub fn verify_many(
    paths: &[std::path::PathBuf],
    policy: &quorate_attestation::policy::Policy,
    policy_text: &[u8],
    opts: &super::check::VerifyOptions,
    state: Option<&Path>,
) -> MultiReport {
    let mut out = MultiReport::default();
    let mut logs = Vec::new();
    for p in paths {
        let name = p.display().to_string();
        let v = match std::fs::File::open(p) {
            Ok(f) => super::check::verify_bundle_with(
                std::io::BufReader::new(f),
                policy,
                policy_text,
                opts,
            ),
            Err(e) => super::check::Verification {
                problem: Some(super::check::BundleProblem {
                    location: "bundle".into(),
                    message: format!("cannot open {name}: {e}"),
                }),
                ..Default::default()
            },
        };
        if v.is_ok() {
            match std::fs::File::open(p)
                .map_err(BundleError::Io)
                .and_then(|f| BundleLog::read(&name, std::io::BufReader::new(f)))
            {
                Ok(l) => logs.push(l),
                Err(e) => out.state = Some(format!("cannot re-read {name}: {e}")),
            }
        }
        out.bundles.push((name, v));
    }
    out.forks = find_forks(&logs);
    let Some(path) = state else {
        return out;
    };
    let mut st = match VerifierStateFile::load(path) {
        Ok(s) => s,
        Err(e) => {
            out.state = Some(e.to_string());
            return out;
        }
    };
    for l in &logs {
        if let Err(e) = st.check(l) {
            out.state = Some(e.to_string());
            return out;
        }
    }
    if out.is_ok() {
        for l in &logs {
            st.remember(l);
        }
        match st.save(path) {
            Ok(()) => out.remembered = true,
            Err(e) => out.state = Some(e.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::Fixture;

    fn log_of(f: &Fixture, name: &str) -> BundleLog {
        BundleLog::read(name, f.bundle().as_slice()).unwrap()
    }

    /// `log` with its leaves from `from` on replaced: the history a
    /// colluding quorum certifies for another auditor (its checkpoints at
    /// or beyond `from` carry the new roots, signed by `signers`).
    fn forked(log: &BundleLog, from: usize, signers: &[u32]) -> BundleLog {
        let mut b = log.clone();
        b.source = "forked.qab".into();
        for (i, l) in b.leaves.iter_mut().enumerate().skip(from) {
            *l = Sha256Digest::of(format!("other {i}").as_bytes());
        }
        let sizes: BTreeSet<u64> = b.checkpoints.iter().map(|c| c.size).collect();
        let roots = b.roots_at(&sizes);
        for c in &mut b.checkpoints {
            c.source = b.source.clone();
            if c.size as usize > from {
                c.root = roots[&c.size];
                c.cosigners = signers.iter().map(|p| PartyId(*p)).collect();
            }
        }
        b
    }

    #[test]
    fn a_split_view_across_two_bundles_is_reported_naming_the_signers() {
        let f = Fixture::honest();
        assert!(f.verify().is_ok());
        let a = log_of(&f, "p1.qab");
        assert!(a.checkpoints.len() >= 2 && a.size() > 0);
        // Two exports of the same history agree.
        assert_eq!(find_forks(&[a.clone(), log_of(&f, "p2.qab")]), vec![]);
        // A history that agrees up to the first checkpoint and differs after.
        let first = a.checkpoints.iter().map(|c| c.size).min().unwrap() as usize;
        let b = forked(&a, first, &[2, 3]);
        let forks = find_forks(&[a.clone(), b.clone()]);
        assert!(!forks.is_empty());
        let text = forks[0].to_string();
        assert!(text.starts_with("FORK of cluster"), "{text}");
        assert!(
            text.contains("P1, P2, P3") && text.contains("P2, P3"),
            "{text}"
        );
        // Checkpoints before the divergence are consistent on both sides.
        assert!(forks.iter().all(|k| k.checkpoint.size as usize > first));
    }

    #[test]
    fn the_state_file_remembers_the_latest_checkpoint_and_demands_consistency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let f = Fixture::honest();
        let a = log_of(&f, "p1.qab");
        let mut st = VerifierStateFile::load(&path).unwrap();
        st.check(&a).unwrap();
        st.remember(&a);
        st.save(&path).unwrap();
        let st = VerifierStateFile::load(&path).unwrap();
        let r = &st.clusters[&a.cluster.0.to_string()];
        assert_eq!(r.size, a.latest().unwrap().size);
        assert!(r.note.contains("/P1/vote"));
        // The same log again passes.
        st.check(&a).unwrap();
        // A log that differs before the remembered size is a fork.
        let b = forked(&a, 1, &[1, 2]);
        match st.check(&b) {
            Err(StateError::Fork(k)) => assert_eq!(k.size, r.size),
            other => panic!("expected a fork, got {other:?}"),
        }
        // A log that ends before it cannot be checked.
        let mut short = a.clone();
        short.leaves.truncate(1);
        assert!(matches!(st.check(&short), Err(StateError::Behind { .. })));
        // A file of another format is refused.
        std::fs::write(&path, b"{\"format\": 9, \"clusters\": {}}").unwrap();
        assert!(VerifierStateFile::load(&path).is_err());
    }

    #[test]
    fn verify_many_checks_each_bundle_and_updates_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::honest();
        let p1 = dir.path().join("p1.qab");
        std::fs::write(&p1, f.bundle()).unwrap();
        let state = dir.path().join("state.json");
        let opts = crate::audit::check::VerifyOptions::default();
        let r = verify_many(
            &[p1.clone(), p1.clone()],
            &f.policy,
            &f.policy_text,
            &opts,
            Some(&state),
        );
        assert!(r.is_ok(), "{r}");
        assert!(r.remembered && state.exists());
        assert!(r.to_string().contains("2 bundles compared, 0 forks"), "{r}");
        // A corrupt bundle fails and leaves the state as it was.
        let before = std::fs::read(&state).unwrap();
        let mut bytes = f.bundle();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        let bad = dir.path().join("bad.qab");
        std::fs::write(&bad, bytes).unwrap();
        let r = verify_many(&[bad], &f.policy, &f.policy_text, &opts, Some(&state));
        assert!(!r.is_ok());
        assert_eq!(std::fs::read(&state).unwrap(), before);
    }
}
