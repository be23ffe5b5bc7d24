//! Durable storage of one party, in a redb database in the data dir.
//!
//! redb commits are ACID and crash-safe (copy-on-write B-trees, fsync on
//! commit), so what a method has returned `Ok` for survives `kill -9` and
//! power loss. The store keeps bytes; the firmware's types are encoded by the
//! daemon. What must be durable before what is the firmware's persistence
//! contract (docs/PROTOCOL.md); this module only makes each call durable.
//!
//! Tables:
//! - `meta`: identity of the store (party id, cluster id) and small counters;
//! - `blocks`: height -> decided block bytes; `certs`: height -> its commit
//!   certificate bytes (stored in the same transaction as the block);
//! - `wal`: (height, index) -> consensus write-ahead entries of the current
//!   height, dropped once that height is decided;
//! - `guard`: the sign guard's state (last signed height/round/step/value);
//! - `outbox`: operations accepted from the API and not yet decided, by a
//!   local sequence number, so an accepted operation is never lost;
//! - `log_entries`: leaf index -> encoded audit entry; `log_nodes`: (level,
//!   index) -> hash of every perfect node of the audit tree (leaves
//!   included), written together in one transaction per ledger step;
//! - `checkpoints`: tree size -> certified signed checkpoint (note text);
//!   `own_checkpoint_lines`: tree size -> this party's own signature lines
//!   for a checkpoint not yet certified (a signed note with only them), so a
//!   restarted party resends rather than re-quotes;
//! - `retired_ops`, `retired_sessions`: id -> the API view (JSON) of an
//!   operation or session the session machine retired from memory
//!   (`RETIRE_AFTER_HEIGHTS` after it finished). The daemon writes them in
//!   batches (at most a second late); a view lost in a crash is written
//!   again when the replay at start retires the record again.

use quorate_firmware::audit::merkle::{
    self, CompactTree, LeafIndex, NewNode, NodeId, NodeStore, ProofError, TreeSize,
};
use quorate_firmware::types::Sha256Digest;
use redb::{
    Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const CERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("certs");
const WAL: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("wal");
const GUARD: TableDefinition<&str, &[u8]> = TableDefinition::new("guard");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const LOG_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("log_entries");
const LOG_NODES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("log_nodes");
const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("checkpoints");
const OWN_LINES: TableDefinition<u64, &str> = TableDefinition::new("own_checkpoint_lines");
const RETIRED_OPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retired_ops");
const RETIRED_SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retired_sessions");

/// Which kind of retired record (see [`Store::put_retired`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retired {
    /// An operation record, by op id.
    Op,
    /// A session, by session id.
    Session,
}

impl Retired {
    fn table(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        match self {
            Retired::Op => RETIRED_OPS,
            Retired::Session => RETIRED_SESSIONS,
        }
    }
}

/// redb's page cache, per open database. redb's default is 1 GiB, and the
/// cache fills with what is read and written, so a daemon's resident memory
/// grew with the size of its store (with history); 64 MiB keeps the hot
/// pages (the tip, the outbox, recent log nodes) and bounds the rest.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most entries one [`Store::entries`] call returns.
pub const MAX_ENTRIES_PAGE: u64 = 1024;

/// Storage failures. All are local faults (disk, corruption), never a peer's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb reported an error (I/O, corruption, or a database in use by
    /// another process).
    #[error("storage error in {path}: {source}")]
    Db {
        /// The database file.
        path: String,
        /// What redb reported.
        source: Box<redb::Error>,
    },
    /// The store belongs to another party or cluster.
    #[error("{path} holds the data of {found}, not {expected}; point --data-dir at this party's own directory")]
    WrongIdentity {
        /// The database file.
        path: String,
        /// What this process expected.
        expected: String,
        /// What the store holds.
        found: String,
    },
    /// Decided blocks must be stored in height order without gaps.
    #[error("cannot store block {height}: the last stored block is {tip}")]
    OutOfOrder {
        /// The height offered.
        height: u64,
        /// The highest stored height (0 if none).
        tip: u64,
    },
    /// Audit entries must be appended at the end of the log, without gaps.
    #[error("cannot append audit entries from leaf {first}: the log holds {size} entries")]
    LogGap {
        /// The first index offered.
        first: LeafIndex,
        /// The log's size.
        size: TreeSize,
    },
    /// Replaying the decided blocks produced another entry than the one
    /// stored: the stored log and the stored blocks disagree.
    #[error("audit entry {index} rebuilt from the stored blocks differs from the stored entry: the data dir is corrupt or was written by another version; restore it from a peer's export")]
    LogMismatch {
        /// The entry's index.
        index: LeafIndex,
    },
    /// A proof or root could not be built from the stored tree.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A write through a handle opened with [`Store::open_read_only`].
    #[error("{path} is open read-only (beside the running daemon); this operation writes")]
    ReadOnly {
        /// The database file.
        path: String,
    },
}

/// A decided block as stored: its height, encoded block and certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    /// The block's height.
    pub height: u64,
    /// The encoded block.
    pub block: Vec<u8>,
    /// The encoded commit certificate.
    pub cert: Vec<u8>,
}

/// A party's database.
pub struct Store {
    db: Handle,
    path: String,
}

/// The daemon's writer, or a reader beside it (redb's single-writer mode
/// lets other processes open the file read-only and follow its commits).
enum Handle {
    Writer(Database),
    Reader(ReadOnlyDatabase),
}

impl Handle {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Handle::Writer(db) => db.begin_read(),
            Handle::Reader(db) => db.begin_read(),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The file name of the database inside the data dir.
pub const DB_FILE: &str = "quorate.redb";

/// Takes the next outbox sequence number: a counter that never goes back,
/// so a sequence number (and the receipt id made from it) is never reused,
/// even once the outbox has drained.
fn next_outbox_seq(meta: &mut redb::Table<&str, &[u8]>) -> Result<u64, redb::Error> {
    let next = meta
        .get("outbox_next")?
        .and_then(|v| v.value().try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(1);
    meta.insert(
        "outbox_next",
        next.saturating_add(1).to_be_bytes().as_slice(),
    )?;
    Ok(next)
}

/// What [`Store::outbox_push_all`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxPush {
    /// Pushed, with these outbox sequence numbers (in the order given).
    Pushed(Vec<u64>),
    /// Nothing written: the outbox holds `queued` operations, and the new
    /// ones would take it past the limit.
    Full {
        /// Operations in the outbox now.
        queued: u64,
    },
}

impl Store {
    /// Opens (or creates) the database `DB_FILE` in `data_dir`, and checks
    /// or records that it belongs to `identity` (e.g. "party 1 of cluster ab12..").
    pub fn open(data_dir: &Path, identity: &str) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let shown = path.display().to_string();
        let db = Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| db_err(&shown, e))?;
        let store = Store {
            db: Handle::Writer(db),
            path: shown,
        };
        store.write(|tx| {
            for t in [BLOCKS, CERTS, OUTBOX, LOG_ENTRIES] {
                tx.open_table(t)?;
            }
            tx.open_table(LOG_NODES)?;
            tx.open_table(CHECKPOINTS)?;
            tx.open_table(OWN_LINES)?;
            tx.open_table(RETIRED_OPS)?;
            tx.open_table(RETIRED_SESSIONS)?;
            tx.open_table(WAL)?;
            tx.open_table(GUARD)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        match store.meta("identity")? {
            Some(found) if found != identity.as_bytes() => Err(StoreError::WrongIdentity {
                path: store.path.clone(),
                expected: identity.to_string(),
                found: String::from_utf8_lossy(&found).into_owned(),
            }),
            Some(_) => Ok(store),
            None => {
                store.set_meta("identity", identity.as_bytes())?;
                Ok(store)
            }
        }
    }

    /// Opens `DB_FILE` in `data_dir` read-only, beside the daemon that
    /// writes it (or without one), for exports and inspection. Reads see
    /// the daemon's latest commit; writes fail with [`StoreError::ReadOnly`].
    pub fn open_read_only(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let shown = path.display().to_string();
        let db = Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .set_cache_size(CACHE_BYTES)
            .open_read_only(&path)
            .map_err(|e| db_err(&shown, e))?;
        Ok(Store {
            db: Handle::Reader(db),
            path: shown,
        })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.write_if(|tx| f(tx).map(|out| (out, true)))
    }

    /// [`Store::write`] for a transaction that may decide to write nothing:
    /// `f` returns whether to commit; otherwise the transaction is aborted
    /// (no commit, no fsync).
    fn write_if<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(T, bool), redb::Error>,
    ) -> Result<T, StoreError> {
        let Handle::Writer(db) = &self.db else {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        };
        let run = || -> Result<T, redb::Error> {
            let tx = db.begin_write()?;
            let (out, commit) = f(&tx)?;
            if commit {
                tx.commit()?;
            } else {
                tx.abort()?;
            }
            Ok(out)
        };
        run().map_err(|e| db_err(&self.path, e))
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let run = || -> Result<T, redb::Error> {
            let tx = self.db.begin_read()?;
            f(&tx)
        };
        run().map_err(|e| db_err(&self.path, e))
    }

    /// A small metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| Ok(tx.open_table(META)?.get(key)?.map(|v| v.value().to_vec())))
    }

    /// Sets a small metadata value, durably.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(META)?.insert(key, value)?;
            Ok(())
        })
    }

    /// Removes a metadata value, durably (no error when absent).
    pub fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(META)?.remove(key)?;
            Ok(())
        })
    }

    /// The metadata keys that start with `prefix`, ascending.
    pub fn meta_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            let table = tx.open_table(META)?;
            let mut out = Vec::new();
            for row in table.range(prefix..)? {
                let (k, _) = row?;
                let k = k.value();
                if !k.starts_with(prefix) {
                    break;
                }
                out.push(k.to_string());
            }
            Ok(out)
        })
    }

    /// The highest decided height stored (0 when none).
    pub fn tip(&self) -> Result<u64, StoreError> {
        self.read(|tx| {
            Ok(tx
                .open_table(BLOCKS)?
                .last()?
                .map(|(k, _)| k.value())
                .unwrap_or(0))
        })
    }

    /// Stores decided block `height` with its certificate and the chain state
    /// after it (meta key `chain`), and drops the WAL entries of that height
    /// and below, in one durable transaction.
    /// Heights must follow the tip; storing the tip again with the same
    /// bytes is a no-op (a replay after a crash).
    pub fn put_decided(
        &self,
        height: u64,
        block: &[u8],
        cert: &[u8],
        chain: &[u8],
    ) -> Result<(), StoreError> {
        let mut out_of_order = None;
        self.write(|tx| {
            let mut blocks = tx.open_table(BLOCKS)?;
            let tip = blocks.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            if height <= tip {
                return Ok(());
            }
            if height != tip + 1 {
                out_of_order = Some(tip);
                return Ok(());
            }
            blocks.insert(height, block)?;
            tx.open_table(CERTS)?.insert(height, cert)?;
            tx.open_table(META)?.insert("chain", chain)?;
            let mut wal = tx.open_table(WAL)?;
            wal.retain_in((0, 0)..=(height, u64::MAX), |_, _| false)?;
            Ok(())
        })?;
        match out_of_order {
            Some(tip) => Err(StoreError::OutOfOrder { height, tip }),
            None => Ok(()),
        }
    }

    /// Decided block `height` and its certificate.
    pub fn decided(&self, height: u64) -> Result<Option<StoredBlock>, StoreError> {
        self.read(|tx| {
            let b = tx
                .open_table(BLOCKS)?
                .get(height)?
                .map(|v| v.value().to_vec());
            let c = tx
                .open_table(CERTS)?
                .get(height)?
                .map(|v| v.value().to_vec());
            Ok(b.zip(c).map(|(block, cert)| StoredBlock {
                height,
                block,
                cert,
            }))
        })
    }

    /// Decided blocks from `from` (inclusive), at most `limit` of them.
    pub fn decided_range(&self, from: u64, limit: usize) -> Result<Vec<StoredBlock>, StoreError> {
        self.read(|tx| {
            let blocks = tx.open_table(BLOCKS)?;
            let certs = tx.open_table(CERTS)?;
            let mut out = Vec::new();
            for item in blocks.range(from..)?.take(limit) {
                let (k, v) = item?;
                let h = k.value();
                let c = certs
                    .get(h)?
                    .map(|c| c.value().to_vec())
                    .unwrap_or_default();
                out.push(StoredBlock {
                    height: h,
                    block: v.value().to_vec(),
                    cert: c,
                });
            }
            Ok(out)
        })
    }

    /// Appends a consensus WAL entry for `height`, durably.
    pub fn wal_append(&self, height: u64, entry: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut wal = tx.open_table(WAL)?;
            let next = wal
                .range((height, 0)..=(height, u64::MAX))?
                .next_back()
                .transpose()?
                .map(|(k, _)| k.value().1 + 1)
                .unwrap_or(0);
            wal.insert((height, next), entry)?;
            Ok(())
        })
    }

    /// Drops every WAL entry of heights below `height`, durably.
    pub fn wal_reset(&self, height: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut wal = tx.open_table(WAL)?;
            wal.retain_in((0, 0)..(height, 0), |_, _| false)?;
            Ok(())
        })
    }

    /// The WAL entries of `height`, in append order.
    pub fn wal_entries(&self, height: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|tx| {
            let wal = tx.open_table(WAL)?;
            let mut out = Vec::new();
            for item in wal.range((height, 0)..=(height, u64::MAX))? {
                out.push(item?.1.value().to_vec());
            }
            Ok(out)
        })
    }

    /// Replaces the sign guard's state, durably. Call before the signature
    /// it authorises may leave the process.
    pub fn put_guard(&self, state: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(GUARD)?.insert("state", state)?;
            Ok(())
        })
    }

    /// Forgets the sign guard's state, as a data dir restored from a
    /// backup taken before the guard was written would have it. For
    /// recovery drills and tests: a daemon started on such a store watches
    /// the chain before it signs ([`crate::sign_watch`]).
    pub fn clear_guard(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(GUARD)?.remove("state")?;
            Ok(())
        })
    }

    /// Starts the outbox sequence (and so the receipt ids made from it) at
    /// `next`, unless one was already taken. For a store that replaces a
    /// lost one: receipts the lost store gave out must never name another
    /// operation.
    pub fn start_outbox_seq_at(&self, next: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            if meta.get("outbox_next")?.is_none() {
                meta.insert("outbox_next", next.to_be_bytes().as_slice())?;
            }
            Ok(())
        })
    }

    /// The sign guard's state, if any was stored.
    pub fn guard(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .open_table(GUARD)?
                .get("state")?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Records an accepted operation durably and returns its local sequence number.
    pub fn outbox_push(&self, op: &[u8]) -> Result<u64, StoreError> {
        self.write(|tx| {
            let seq = next_outbox_seq(&mut tx.open_table(META)?)?;
            tx.open_table(OUTBOX)?.insert(seq, op)?;
            Ok(seq)
        })
    }

    /// Pushes `ops` into the outbox, in order, with the metadata entries
    /// `guards` makes from their sequence numbers (slot and idempotency
    /// guards), in one transaction: all or nothing, so a crash never leaves
    /// an operation without its guards or half a request. With `limit`,
    /// nothing is written when the outbox would then hold more than
    /// `limit` operations ([`OutboxPush::Full`]).
    pub fn outbox_push_all(
        &self,
        ops: &[Vec<u8>],
        limit: Option<u64>,
        guards: impl FnOnce(&[u64]) -> Vec<(String, Vec<u8>)>,
    ) -> Result<OutboxPush, StoreError> {
        self.write_if(|tx| {
            let mut outbox = tx.open_table(OUTBOX)?;
            // O(1): redb keeps each table's length in its root.
            let queued = outbox.len()?;
            if let Some(limit) = limit {
                if queued.saturating_add(ops.len() as u64) > limit {
                    // Refused: nothing to commit (and no fsync per refusal).
                    return Ok((OutboxPush::Full { queued }, false));
                }
            }
            let mut meta = tx.open_table(META)?;
            let mut seqs = Vec::with_capacity(ops.len());
            for op in ops {
                let seq = next_outbox_seq(&mut meta)?;
                outbox.insert(seq, op.as_slice())?;
                seqs.push(seq);
            }
            for (key, value) in guards(&seqs) {
                meta.insert(key.as_str(), value.as_slice())?;
            }
            Ok((OutboxPush::Pushed(seqs), true))
        })
    }

    /// How many operations the outbox holds (O(1)).
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        self.read(|tx| Ok(tx.open_table(OUTBOX)?.len()?))
    }

    /// Whether the outbox still holds operation `seq`.
    pub fn outbox_contains(&self, seq: u64) -> Result<bool, StoreError> {
        self.read(|tx| Ok(tx.open_table(OUTBOX)?.get(seq)?.is_some()))
    }

    /// The oldest operations of the outbox, in acceptance order: at most
    /// `max_ops`, and no more than `max_bytes` in all (but always the first
    /// one, whatever its size). Reads only those, so building a batch does
    /// not cost more as the outbox grows.
    pub fn outbox_head(
        &self,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(OUTBOX)?;
            let mut out = Vec::new();
            let mut size = 0usize;
            for item in t.iter()? {
                if out.len() >= max_ops {
                    break;
                }
                let (k, v) = item?;
                let v = v.value();
                if size.saturating_add(v.len()) > max_bytes && !out.is_empty() {
                    break;
                }
                size = size.saturating_add(v.len());
                out.push((k.value(), v.to_vec()));
            }
            Ok(out)
        })
    }

    /// Every operation still in the outbox, in acceptance order.
    pub fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Records where this party's decided batch went, in one durable
    /// transaction: for each outbox sequence number its receipt record
    /// (`receipt/<seq>`) and the reverse index from its op id (`op/<hex>`),
    /// then removes those operations from the outbox and clears the
    /// in-flight batch (`in_flight` set to empty). One fsync per decided
    /// batch, not two per operation.
    pub fn own_batch_decided(&self, receipts: &[(u64, Vec<u8>, String)]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            let mut outbox = tx.open_table(OUTBOX)?;
            for (seq, record, op_hex) in receipts {
                meta.insert(format!("receipt/{seq}").as_str(), record.as_slice())?;
                meta.insert(
                    format!("op/{op_hex}").as_str(),
                    seq.to_be_bytes().as_slice(),
                )?;
                outbox.remove(*seq)?;
            }
            meta.insert("in_flight", [].as_slice())?;
            Ok(())
        })
    }

    /// Stores the views of retired records, `(kind, id, view)`, in one
    /// transaction.
    pub fn put_retired(&self, views: &[(Retired, [u8; 32], Vec<u8>)]) -> Result<(), StoreError> {
        if views.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut ops = tx.open_table(RETIRED_OPS)?;
            let mut sessions = tx.open_table(RETIRED_SESSIONS)?;
            for (kind, id, view) in views {
                let t = match kind {
                    Retired::Op => &mut ops,
                    Retired::Session => &mut sessions,
                };
                t.insert(id.as_slice(), view.as_slice())?;
            }
            Ok(())
        })
    }

    /// The stored view of a retired record.
    pub fn retired(&self, kind: Retired, id: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .open_table(kind.table())?
                .get(id.as_slice())?
                .map(|v| v.value().to_vec()))
        })
    }

    /// True when a view of this retired record is stored.
    pub fn has_retired(&self, kind: Retired, id: &[u8; 32]) -> Result<bool, StoreError> {
        self.read(|tx| Ok(tx.open_table(kind.table())?.get(id.as_slice())?.is_some()))
    }

    /// Removes outbox entries (once their operations are decided).
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(OUTBOX)?;
            for s in seqs {
                t.remove(*s)?;
            }
            Ok(())
        })
    }

    /// Appends one ledger step — the encoded entries from leaf `first` on
    /// and the tree nodes they completed — in one durable transaction.
    /// Idempotent for a replay at start: entries already stored are
    /// compared byte for byte (a difference is [`StoreError::LogMismatch`])
    /// and only the new ones written. Returns the log's size after it.
    pub fn append_log(
        &self,
        first: LeafIndex,
        encoded: &[Vec<u8>],
        nodes: &[NewNode],
    ) -> Result<TreeSize, StoreError> {
        // A replay of a step wholly stored: compare in a read transaction,
        // without the write transaction's fsync (start-up replays every
        // block).
        let mut mismatch = None;
        let stored = self.read(|tx| {
            let entries = tx.open_table(LOG_ENTRIES)?;
            let size = entries.len()?;
            let end = first.0.saturating_add(encoded.len() as u64);
            if end > size {
                return Ok(None);
            }
            for (i, bytes) in (first.0..).zip(encoded) {
                let same = entries
                    .get(i)?
                    .is_some_and(|v| v.value() == bytes.as_slice());
                if !same {
                    mismatch = Some(LeafIndex(i));
                    break;
                }
            }
            Ok(Some(TreeSize(size)))
        })?;
        if let Some(index) = mismatch {
            return Err(StoreError::LogMismatch { index });
        }
        if let Some(size) = stored {
            return Ok(size);
        }
        let mut refused = None;
        let size = self.write(|tx| {
            let mut entries = tx.open_table(LOG_ENTRIES)?;
            let size = entries.len()?;
            if first.0 > size {
                refused = Some(StoreError::LogGap {
                    first,
                    size: TreeSize(size),
                });
                return Ok(size);
            }
            for (i, bytes) in (first.0..).zip(encoded) {
                if i < size {
                    let same = entries
                        .get(i)?
                        .is_some_and(|v| v.value() == bytes.as_slice());
                    if !same {
                        refused = Some(StoreError::LogMismatch {
                            index: LeafIndex(i),
                        });
                        return Ok(size);
                    }
                } else {
                    entries.insert(i, bytes.as_slice())?;
                }
            }
            let mut table = tx.open_table(LOG_NODES)?;
            for n in nodes {
                table.insert((n.id.level, n.id.index), n.hash.0.as_slice())?;
            }
            Ok(entries.len()?)
        })?;
        match refused {
            Some(e) => Err(e),
            None => Ok(TreeSize(size)),
        }
    }

    /// The number of audit entries stored.
    pub fn log_size(&self) -> Result<TreeSize, StoreError> {
        self.read(|tx| Ok(TreeSize(tx.open_table(LOG_ENTRIES)?.len()?)))
    }

    /// The encoded audit entries `start .. end` (end exclusive, clamped to
    /// the log), at most [`MAX_ENTRIES_PAGE`] of them.
    pub fn entries(&self, start: LeafIndex, end: LeafIndex) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = end.0.min(start.0.saturating_add(MAX_ENTRIES_PAGE));
        self.read(|tx| {
            let t = tx.open_table(LOG_ENTRIES)?;
            let mut out = Vec::new();
            if start.0 < end {
                for item in t.range(start.0..end)? {
                    out.push(item?.1.value().to_vec());
                }
            }
            Ok(out)
        })
    }

    /// The leaf hashes of entries `start .. end`, as [`Store::entries`].
    pub fn leaf_hashes(
        &self,
        start: LeafIndex,
        end: LeafIndex,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        let end = end.0.min(start.0.saturating_add(MAX_ENTRIES_PAGE));
        self.read(|tx| {
            let t = tx.open_table(LOG_NODES)?;
            let mut out = Vec::new();
            if start.0 < end {
                for item in t.range((0u8, start.0)..(0u8, end))? {
                    out.push(digest_of(item?.1.value()));
                }
            }
            Ok(out)
        })
    }

    /// The RFC 6962 inclusion proof of leaf `index` in the tree of the
    /// first `size` entries, from the stored nodes (one read transaction).
    pub fn inclusion_proof(
        &self,
        index: LeafIndex,
        size: TreeSize,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        self.with_nodes(size, |nodes| merkle::inclusion_proof(nodes, index, size))
    }

    /// The RFC 6962 consistency proof between the trees of the first `old`
    /// and `new` entries.
    pub fn consistency_proof(
        &self,
        old: TreeSize,
        new: TreeSize,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        self.with_nodes(new, |nodes| merkle::consistency_proof(nodes, old, new))
    }

    /// The root of the tree of the first `size` entries.
    pub fn root_at(&self, size: TreeSize) -> Result<Sha256Digest, StoreError> {
        self.with_nodes(size, |nodes| {
            Ok(CompactTree::from_store(nodes, size)?.root())
        })
    }

    /// Runs `f` over the node table in one read transaction, after checking
    /// that `size` does not exceed the log.
    fn with_nodes<T>(
        &self,
        size: TreeSize,
        f: impl FnOnce(&NodeTable) -> Result<T, ProofError>,
    ) -> Result<T, StoreError> {
        let mut proof = None;
        let out = self.read(|tx| {
            let have = TreeSize(tx.open_table(LOG_ENTRIES)?.len()?);
            if size > have {
                proof = Some(ProofError::BeyondTree { size, have });
                return Ok(None);
            }
            let nodes = NodeTable(tx.open_table(LOG_NODES)?);
            match f(&nodes) {
                Ok(v) => Ok(Some(v)),
                Err(e) => {
                    proof = Some(e);
                    Ok(None)
                }
            }
        })?;
        match (out, proof) {
            (Some(v), _) => Ok(v),
            (None, Some(e)) => Err(StoreError::Proof(e)),
            // Unreachable: `None` is returned only with `proof` set.
            (None, None) => Err(StoreError::Proof(ProofError::BeyondTree {
                size,
                have: TreeSize(0),
            })),
        }
    }

    /// Stores a certified signed checkpoint of tree size `size` (its note
    /// text), durably, replacing one of the same size (e.g. with more lines).
    pub fn put_checkpoint(&self, size: TreeSize, note: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(CHECKPOINTS)?.insert(size.0, note)?;
            tx.open_table(OWN_LINES)?
                .retain_in(0..=size.0, |_, _| false)?;
            Ok(())
        })
    }

    /// The certified checkpoint of tree size `size`, if stored.
    pub fn checkpoint(&self, size: TreeSize) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .open_table(CHECKPOINTS)?
                .get(size.0)?
                .map(|v| v.value().to_string()))
        })
    }

    /// The certified checkpoint of the largest tree size, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<(TreeSize, String)>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .open_table(CHECKPOINTS)?
                .last()?
                .map(|(k, v)| (TreeSize(k.value()), v.value().to_string())))
        })
    }

    /// Every certified checkpoint (signed note text), oldest first.
    pub fn checkpoints(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(CHECKPOINTS)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                out.push(item?.1.value().to_string());
            }
            Ok(out)
        })
    }

    /// Records this party's own signature lines for the uncertified
    /// checkpoint of size `size` (a signed note with only those lines).
    pub fn put_own_lines(&self, size: TreeSize, note: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(OWN_LINES)?.insert(size.0, note)?;
            Ok(())
        })
    }

    /// This party's stored own lines for uncertified checkpoints, by size.
    pub fn own_lines(&self) -> Result<Vec<(TreeSize, String)>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(OWN_LINES)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((TreeSize(k.value()), v.value().to_string()));
            }
            Ok(out)
        })
    }
}

/// The node table seen through one read transaction: a [`NodeStore`].
pub struct NodeTable(redb::ReadOnlyTable<(u8, u64), &'static [u8]>);

impl NodeStore for NodeTable {
    fn node(&self, id: NodeId) -> Result<Option<Sha256Digest>, merkle::StoreError> {
        self.0
            .get((id.level, id.index))
            .map(|v| v.map(|v| digest_of(v.value())))
            .map_err(|e| merkle::StoreError(e.to_string()))
    }
}

/// The store as a [`NodeStore`] (one read transaction per node; the proof
/// helpers on [`Store`] use one transaction for a whole proof).
impl NodeStore for Store {
    fn node(&self, id: NodeId) -> Result<Option<Sha256Digest>, merkle::StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| merkle::StoreError(e.to_string()))?;
        let t = tx
            .open_table(LOG_NODES)
            .map_err(|e| merkle::StoreError(e.to_string()))?;
        NodeTable(t).node(id)
    }
}

/// A stored hash; anything but 32 bytes (never written) reads as zeros,
/// which no proof verifies against.
fn digest_of(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(bytes.try_into().unwrap_or([0; 32]))
}

fn db_err(path: &str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_string(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_handle_follows_the_writer_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let w = Store::open(dir.path(), "party 1").unwrap();
        w.put_decided(1, b"b1", b"c1", b"chain").unwrap();
        let r = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(r.tip().unwrap(), 1);
        w.put_decided(2, b"b2", b"c2", b"chain").unwrap();
        assert_eq!(r.decided_range(1, 10).unwrap().len(), 2);
        assert!(matches!(
            r.set_meta("x", b"y"),
            Err(StoreError::ReadOnly { .. })
        ));
    }

    #[test]
    fn a_decided_own_batch_records_its_receipts_and_leaves_the_outbox_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "party 1").unwrap();
        let seqs: Vec<u64> = (0..3).map(|i| s.outbox_push(&[i as u8]).unwrap()).collect();
        s.set_meta("in_flight", b"batch").unwrap();
        let receipts: Vec<(u64, Vec<u8>, String)> = seqs[..2]
            .iter()
            .map(|q| (*q, vec![*q as u8; 4], format!("{q:064x}")))
            .collect();
        s.own_batch_decided(&receipts).unwrap();
        assert_eq!(s.outbox_len().unwrap(), 1);
        assert!(s.outbox_contains(seqs[2]).unwrap());
        for (q, rec, hex) in &receipts {
            assert_eq!(s.meta(&format!("receipt/{q}")).unwrap().as_ref(), Some(rec));
            assert_eq!(
                s.meta(&format!("op/{hex}")).unwrap(),
                Some(q.to_be_bytes().to_vec())
            );
        }
        assert_eq!(s.meta("in_flight").unwrap(), Some(Vec::new()));
    }

    #[test]
    fn a_push_writes_every_operation_and_its_guards_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "party 1").unwrap();
        let guards = |seqs: &[u64]| -> Vec<(String, Vec<u8>)> {
            seqs.iter()
                .map(|q| (format!("guard/{q}"), format!("seq {q}").into_bytes()))
                .collect()
        };
        let ops = vec![b"op1".to_vec(), b"op2".to_vec()];
        assert_eq!(
            s.outbox_push_all(&ops, None, guards).unwrap(),
            OutboxPush::Pushed(vec![1, 2])
        );
        assert_eq!(s.meta("guard/2").unwrap(), Some(b"seq 2".to_vec()));
        assert_eq!(s.outbox_len().unwrap(), 2);
        assert!(s.outbox_contains(2).unwrap());
        // The sequence counter is shared with unguarded pushes.
        assert_eq!(s.outbox_push(b"op3").unwrap(), 3);
        assert!(!s.outbox_contains(4).unwrap());
    }

    #[test]
    fn a_push_past_the_limit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "party 1").unwrap();
        let none = |_: &[u64]| Vec::new();
        let two = vec![b"a".to_vec(), b"b".to_vec()];
        assert_eq!(
            s.outbox_push_all(&two, Some(3), none).unwrap(),
            OutboxPush::Pushed(vec![1, 2])
        );
        // Two more would make four: refused whole, guards included.
        let guard = |_: &[u64]| vec![("guard/x".to_string(), b"x".to_vec())];
        assert_eq!(
            s.outbox_push_all(&two, Some(3), guard).unwrap(),
            OutboxPush::Full { queued: 2 }
        );
        assert_eq!(s.meta("guard/x").unwrap(), None);
        assert_eq!(s.outbox_len().unwrap(), 2);
        // One fits, exactly up to the limit; then nothing more does.
        let one = vec![b"c".to_vec()];
        assert_eq!(
            s.outbox_push_all(&one, Some(3), none).unwrap(),
            OutboxPush::Pushed(vec![3])
        );
        assert_eq!(
            s.outbox_push_all(&one, Some(3), none).unwrap(),
            OutboxPush::Full { queued: 3 }
        );
        // Once decided operations leave, there is room again; the counter
        // did not move for the refused pushes.
        s.outbox_remove(&[1]).unwrap();
        assert_eq!(
            s.outbox_push_all(&one, Some(3), none).unwrap(),
            OutboxPush::Pushed(vec![4])
        );
    }

    #[test]
    fn the_outbox_head_reads_one_batch_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "party 1").unwrap();
        for i in 0..10u8 {
            s.outbox_push(&[i; 10]).unwrap();
        }
        let seqs = |v: Vec<(u64, Vec<u8>)>| v.into_iter().map(|(q, _)| q).collect::<Vec<_>>();
        assert_eq!(seqs(s.outbox_head(3, 1000).unwrap()), vec![1, 2, 3]);
        // At most 25 bytes: two of ten bytes each.
        assert_eq!(seqs(s.outbox_head(100, 25).unwrap()), vec![1, 2]);
        // The first operation always, whatever its size.
        assert_eq!(seqs(s.outbox_head(100, 5).unwrap()), vec![1]);
        s.outbox_remove(&[1, 2]).unwrap();
        let head = s.outbox_head(2, 1000).unwrap();
        assert_eq!(head, vec![(3, vec![2u8; 10]), (4, vec![3u8; 10])]);
        assert_eq!(s.outbox_len().unwrap(), 8);
    }

    #[test]
    fn blocks_are_stored_in_order_with_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "party 1").unwrap();
        assert_eq!(s.tip().unwrap(), 0);
        s.put_decided(1, b"b1", b"c1", b"chain").unwrap();
        s.put_decided(2, b"b2", b"c2", b"chain").unwrap();
        s.put_decided(2, b"b2", b"c2", b"chain").unwrap(); // replay: no-op
        assert!(matches!(
            s.put_decided(4, b"b4", b"c4", b"chain"),
            Err(StoreError::OutOfOrder { height: 4, tip: 2 })
        ));
        assert_eq!(s.tip().unwrap(), 2);
        assert_eq!(
            s.decided(1).unwrap(),
            Some(StoredBlock {
                height: 1,
                block: b"b1".to_vec(),
                cert: b"c1".to_vec()
            })
        );
        assert_eq!(s.decided(3).unwrap(), None);
        let r = s.decided_range(2, 10).unwrap();
        assert_eq!(
            r,
            vec![StoredBlock {
                height: 2,
                block: b"b2".to_vec(),
                cert: b"c2".to_vec()
            }]
        );
    }

    #[test]
    fn wal_is_per_height_and_dropped_on_decision() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "p").unwrap();
        s.wal_append(1, b"a").unwrap();
        s.wal_append(1, b"b").unwrap();
        s.wal_append(2, b"x").unwrap();
        assert_eq!(
            s.wal_entries(1).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        s.put_decided(1, b"b1", b"c1", b"chain").unwrap();
        assert!(s.wal_entries(1).unwrap().is_empty());
        assert_eq!(s.wal_entries(2).unwrap(), vec![b"x".to_vec()]);
    }

    #[test]
    fn state_survives_reopen_and_identity_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), "party 1").unwrap();
            s.put_guard(b"guard-1").unwrap();
            assert_eq!(s.outbox_push(b"op-a").unwrap(), 1);
            assert_eq!(s.outbox_push(b"op-b").unwrap(), 2);
            s.outbox_remove(&[1, 2]).unwrap();
            // Sequence numbers are never reused once the outbox drains.
            assert_eq!(s.outbox_push(b"op-b").unwrap(), 3);
            s.put_decided(1, b"b1", b"c1", b"chain").unwrap();
        }
        let s = Store::open(dir.path(), "party 1").unwrap();
        assert_eq!(s.guard().unwrap(), Some(b"guard-1".to_vec()));
        assert_eq!(s.outbox().unwrap(), vec![(3, b"op-b".to_vec())]);
        assert_eq!(s.tip().unwrap(), 1);
        drop(s);
        let err = Store::open(dir.path(), "party 2").unwrap_err();
        assert!(err.to_string().contains("party 1"), "{err}");
    }

    /// Builds `n` entries and the ledger-like steps that append them, in
    /// chunks of `chunk`.
    type Step = (LeafIndex, Vec<Vec<u8>>, Vec<NewNode>);

    fn steps(n: u64, chunk: usize) -> (Vec<Vec<u8>>, Vec<Step>) {
        let entries: Vec<Vec<u8>> = (0..n).map(|i| format!("entry {i}").into_bytes()).collect();
        let mut tree = CompactTree::new();
        let mut out = Vec::new();
        for c in entries.chunks(chunk) {
            let first = LeafIndex(tree.size().0);
            let mut nodes = Vec::new();
            for e in c {
                nodes.extend(tree.append(e).1);
            }
            out.push((first, c.to_vec(), nodes));
        }
        (entries, out)
    }

    #[test]
    fn log_steps_append_once_and_replays_are_compared() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "p").unwrap();
        let (entries, steps) = steps(10, 3);
        for (first, enc, nodes) in &steps {
            s.append_log(*first, enc, nodes).unwrap();
        }
        assert_eq!(s.log_size().unwrap(), TreeSize(10));
        // A replay of every step stores nothing new.
        for (first, enc, nodes) in &steps {
            assert_eq!(s.append_log(*first, enc, nodes).unwrap(), TreeSize(10));
        }
        assert_eq!(s.entries(LeafIndex(0), LeafIndex(100)).unwrap(), entries);
        assert_eq!(
            s.entries(LeafIndex(4), LeafIndex(6)).unwrap(),
            entries[4..6].to_vec()
        );
        assert!(s.entries(LeafIndex(6), LeafIndex(4)).unwrap().is_empty());
        let leaves = s.leaf_hashes(LeafIndex(0), LeafIndex(10)).unwrap();
        let want: Vec<_> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
        assert_eq!(leaves, want);
        // A replay that rebuilds another entry is refused, loudly.
        let (first, mut enc, nodes) = steps[1].clone();
        enc[1] = b"forged".to_vec();
        assert!(matches!(
            s.append_log(first, &enc, &nodes),
            Err(StoreError::LogMismatch {
                index: LeafIndex(4)
            })
        ));
        // A step beyond the end leaves a gap: refused.
        assert!(matches!(
            s.append_log(LeafIndex(11), &[b"x".to_vec()], &[]),
            Err(StoreError::LogGap { .. })
        ));
        assert_eq!(s.log_size().unwrap(), TreeSize(10));
    }

    #[test]
    fn proofs_from_the_store_verify_against_its_roots() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "p").unwrap();
        let (entries, steps) = steps(37, 5);
        for (first, enc, nodes) in &steps {
            s.append_log(*first, enc, nodes).unwrap();
        }
        let mut mem = merkle::MemoryNodeStore::new();
        for e in &entries {
            mem.append(e);
        }
        for size in 1..=37u64 {
            let root = s.root_at(TreeSize(size)).unwrap();
            assert_eq!(root, mem.root_at(TreeSize(size)).unwrap());
            for index in [0, size / 2, size - 1] {
                let path = s.inclusion_proof(LeafIndex(index), TreeSize(size)).unwrap();
                merkle::verify_inclusion(
                    &merkle::leaf_hash(&entries[index as usize]),
                    LeafIndex(index),
                    TreeSize(size),
                    &path,
                    &root,
                )
                .unwrap();
            }
            for old in [1, size / 3 + 1, size] {
                let proof = s.consistency_proof(TreeSize(old), TreeSize(size)).unwrap();
                let old_root = s.root_at(TreeSize(old)).unwrap();
                merkle::verify_consistency(TreeSize(old), &old_root, TreeSize(size), &root, &proof)
                    .unwrap();
            }
        }
        assert_eq!(s.root_at(TreeSize(0)).unwrap(), merkle::empty_root());
        assert!(matches!(
            s.inclusion_proof(LeafIndex(3), TreeSize(38)),
            Err(StoreError::Proof(ProofError::BeyondTree { .. }))
        ));
        assert!(matches!(
            s.inclusion_proof(LeafIndex(5), TreeSize(5)),
            Err(StoreError::Proof(ProofError::IndexOutOfRange { .. }))
        ));
        assert!(matches!(
            s.consistency_proof(TreeSize(6), TreeSize(5)),
            Err(StoreError::Proof(ProofError::BadRange { .. }))
        ));
        // The store itself is a NodeStore too.
        let path = merkle::inclusion_proof(&s, LeafIndex(7), TreeSize(20)).unwrap();
        assert_eq!(path, s.inclusion_proof(LeafIndex(7), TreeSize(20)).unwrap());
    }

    #[test]
    fn checkpoints_and_own_lines_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), "p").unwrap();
            assert_eq!(s.latest_checkpoint().unwrap(), None);
            s.put_own_lines(TreeSize(4), "own 4").unwrap();
            s.put_own_lines(TreeSize(9), "own 9").unwrap();
            s.put_checkpoint(TreeSize(4), "cp 4").unwrap();
            s.put_checkpoint(TreeSize(2), "cp 2").unwrap();
            // Certifying size 4 drops own lines up to it.
            assert_eq!(
                s.own_lines().unwrap(),
                vec![(TreeSize(9), "own 9".to_string())]
            );
        }
        let s = Store::open(dir.path(), "p").unwrap();
        assert_eq!(s.checkpoints().unwrap(), vec!["cp 2", "cp 4"]);
        assert_eq!(
            s.latest_checkpoint().unwrap(),
            Some((TreeSize(4), "cp 4".to_string()))
        );
        assert_eq!(s.checkpoint(TreeSize(2)).unwrap().as_deref(), Some("cp 2"));
        s.put_checkpoint(TreeSize(4), "cp 4 with more lines")
            .unwrap();
        assert_eq!(
            s.checkpoint(TreeSize(4)).unwrap().as_deref(),
            Some("cp 4 with more lines")
        );
        assert_eq!(s.checkpoint(TreeSize(3)).unwrap(), None);
    }
}
