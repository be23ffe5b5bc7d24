//! `quorate audit export`: writes a party's log as an audit bundle.
//!
//! It reads the party's store directly. The daemon opens its database in
//! redb's single-writer mode, so the export opens it read-only beside a
//! running daemon (or without one): one command, whether the daemon runs or
//! not. What names the cluster (its identity, epoch, fault model and every
//! party's enrollment) the daemon writes to `DIR/audit-params.bin` when it
//! starts ([`ExportParams::save`]); `--config` reads it from the party's
//! configuration instead.
//!
//! Consistency while the daemon writes: the export reads the certified
//! checkpoints first, then the log size, then the entries up to it, and
//! blocks up to the one after the last entry's block (whose header carries
//! that block's canonical certificate). Every checkpoint is then within the
//! exported entries, and every exported block's entries are exported.

use super::bundle::{BundleBlock, BundleEnd, BundleError, BundleHeader, BundleWriter, Section};
use crate::config::Config;
use crate::store::{Store, StoreError};
use quorate_firmware::audit::entry::AuditEntry;
use quorate_firmware::audit::merkle::LeafIndex;
use quorate_firmware::types::Height;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;

/// File in the data dir holding [`ExportParams`].
pub const PARAMS_FILE: &str = "audit-params.bin";
/// Entries read from the store per call.
const ENTRY_PAGE: u64 = 1024;
/// Blocks read from the store per call.
const BLOCK_PAGE: usize = 256;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store could not be read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The bundle could not be written.
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// The cluster parameters are missing or unreadable.
    #[error("{path}: {reason}; start the daemon once with this data dir (it writes the file), or pass --config")]
    Params {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An enrollment file of the configuration cannot be read.
    #[error("{path}: {reason}")]
    Enrollment {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store's log is inconsistent with its blocks (a local fault).
    #[error("the store is inconsistent: {0}")]
    Inconsistent(String),
}

/// What names the cluster in a bundle: the header (without its exporter)
/// and every party's enrollment.json bytes, in party order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportParams {
    /// The bundle header (its `exporter` is this party).
    pub header: BundleHeader,
    /// Every party's enrollment.json, byte for byte.
    pub enrollments: Vec<serde_bytes::ByteBuf>,
}

impl ExportParams {
    /// From a loaded configuration (reads every enrollment file).
    pub fn from_config(cfg: &Config) -> Result<ExportParams, ExportError> {
        let mut parties: Vec<_> = cfg.file.cluster.parties.iter().collect();
        parties.sort_by_key(|p| p.id);
        let mut enrollments = Vec::with_capacity(parties.len());
        for p in parties {
            let bytes = std::fs::read(&p.enrollment).map_err(|e| ExportError::Enrollment {
                path: p.enrollment.display().to_string(),
                reason: e.to_string(),
            })?;
            enrollments.push(serde_bytes::ByteBuf::from(bytes));
        }
        Ok(ExportParams {
            header: BundleHeader {
                cluster: cfg.cluster_id,
                epoch: cfg.epoch(),
                fault_model: cfg.file.cluster.fault_model,
                identity: cfg.canonical.clone(),
                exporter: cfg.me,
            },
            enrollments,
        })
    }

    /// Writes `DIR/audit-params.bin` (atomically).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = postcard::to_stdvec(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&data_dir.join(PARAMS_FILE), &bytes)
    }

    /// Reads `DIR/audit-params.bin`.
    pub fn load(data_dir: &Path) -> Result<ExportParams, ExportError> {
        let path = data_dir.join(PARAMS_FILE);
        let err = |reason: String| ExportError::Params {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        postcard::from_bytes(&bytes).map_err(|e| err(format!("does not decode: {e}")))
    }
}

/// What an export wrote.
pub type ExportSummary = BundleEnd;

/// Writes `store`'s log as a bundle to `out`.
pub fn export_store<W: Write>(
    store: &Store,
    params: &ExportParams,
    out: W,
) -> Result<ExportSummary, ExportError> {
    let mut w = BundleWriter::new(out)?;
    w.write(&Section::Header(params.header.clone()))?;
    for e in &params.enrollments {
        w.write(&Section::Enrollment(e.to_vec()))?;
    }
    for cp in store.checkpoints()? {
        w.write(&Section::Checkpoint(cp.into_bytes()))?;
    }
    let size = store.log_size()?.0;
    let tip = store.tip()?;
    let mut next = 0u64;
    let mut queue: VecDeque<(Height, Vec<u8>)> = VecDeque::new();
    // Refills the queue; returns the height of the first queued entry.
    let mut peek =
        |queue: &mut VecDeque<(Height, Vec<u8>)>| -> Result<Option<Height>, ExportError> {
            if queue.is_empty() && next < size {
                let end = next.saturating_add(ENTRY_PAGE).min(size);
                // The store may return a shorter page than asked; none is a gap.
                for bytes in store.entries(LeafIndex(next), LeafIndex(end))? {
                    let e = AuditEntry::decode(&bytes).map_err(|e| {
                        ExportError::Inconsistent(format!("entry {} does not decode: {e}", next))
                    })?;
                    queue.push_back((e.block().height, bytes));
                    next += 1;
                }
                if queue.is_empty() {
                    return Err(ExportError::Inconsistent(format!(
                        "the log holds {size} entries but entry {next} is missing"
                    )));
                }
            }
            Ok(queue.front().map(|(h, _)| *h))
        };
    let mut last_with_entries: Option<u64> = None;
    let mut from = 1u64;
    'blocks: while from <= tip {
        let page = store.decided_range(from, BLOCK_PAGE)?;
        if page.is_empty() {
            break;
        }
        for b in page {
            if b.height > tip {
                break 'blocks;
            }
            // Blocks after the one whose header certifies the last entries'
            // block may have entries the log size read above excludes.
            let more = peek(&mut queue)?.is_some();
            if !more && last_with_entries.is_some_and(|l| b.height > l + 1) {
                break 'blocks;
            }
            w.write(&Section::Block(BundleBlock {
                height: Height(b.height),
                block: b.block,
                cert: b.cert,
            }))?;
            while let Some(h) = peek(&mut queue)? {
                if h.0 != b.height {
                    break;
                }
                if let Some((_, bytes)) = queue.pop_front() {
                    w.write(&Section::Entry(bytes))?;
                    last_with_entries = Some(b.height);
                }
            }
            from = b.height + 1;
        }
    }
    if let Some(h) = peek(&mut queue)? {
        return Err(ExportError::Inconsistent(format!(
            "entry {} names block {h}, which is not stored after block {}",
            next - queue.len() as u64,
            from.saturating_sub(1)
        )));
    }
    let (end, mut out) = w.finish()?;
    out.flush().map_err(BundleError::Io)?;
    Ok(end)
}

/// `quorate audit export`: opens `data_dir`'s store read-only and writes
/// the bundle to `out` (through a temporary file, renamed when complete).
pub fn export(
    data_dir: &Path,
    config: Option<&Path>,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    let params = match config {
        Some(c) => {
            let cfg = Config::load(c).map_err(|e| ExportError::Params {
                path: c.display().to_string(),
                reason: e.to_string(),
            })?;
            ExportParams::from_config(&cfg)?
        }
        None => ExportParams::load(data_dir)?,
    };
    let store = Store::open_read_only(data_dir)?;
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(BundleError::Io)?;
    let summary = export_store(&store, &params, std::io::BufWriter::new(file))?;
    std::fs::rename(&tmp, out).map_err(BundleError::Io)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::check::verify_bundle;
    use crate::audit::testkit::Fixture;

    #[test]
    fn a_store_exports_beside_its_writer_and_the_bundle_verifies() {
        let mut f = Fixture::new(3);
        for _ in 0..4 {
            f.block(vec![]);
        }
        let dir = tempfile::tempdir().unwrap();
        let writer = Store::open(dir.path(), "P1").unwrap();
        for (b, _) in &f.blocks {
            writer
                .put_decided(b.height.0, &b.block, &b.cert, b"chain")
                .unwrap();
        }
        let params = ExportParams {
            header: f.header.clone(),
            enrollments: f
                .enrollments
                .iter()
                .map(|e| serde_bytes::ByteBuf::from(e.clone()))
                .collect(),
        };
        params.save(dir.path()).unwrap();
        assert_eq!(ExportParams::load(dir.path()).unwrap(), params);
        let out = dir.path().join("log.qab");
        // The writer keeps the database open, as the daemon does.
        let end = export(dir.path(), None, &out).unwrap();
        assert_eq!((end.enrollments, end.blocks, end.entries), (3, 4, 0));
        let bytes = std::fs::read(&out).unwrap();
        let v = verify_bundle(bytes.as_slice(), &f.policy, &f.policy_text);
        assert!(v.is_ok(), "{v}");
        assert_eq!(v.host.blocks, 4);
        assert_eq!(v.host.canonical_certificates, 3);
        drop(writer);
        // No parameters: the error says how to get them.
        let empty = tempfile::tempdir().unwrap();
        let err = export(empty.path(), None, &out).unwrap_err();
        assert!(err.to_string().contains("--config"), "{err}");
    }
}
