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
//!   local sequence number, so an accepted operation is never lost.

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const CERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("certs");
const WAL: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("wal");
const GUARD: TableDefinition<&str, &[u8]> = TableDefinition::new("guard");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

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

impl Store {
    /// Opens (or creates) the database `DB_FILE` in `data_dir`, and checks
    /// or records that it belongs to `identity` (e.g. "party 1 of cluster ab12..").
    pub fn open(data_dir: &Path, identity: &str) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let shown = path.display().to_string();
        let db = Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .create(&path)
            .map_err(|e| db_err(&shown, e))?;
        let store = Store {
            db: Handle::Writer(db),
            path: shown,
        };
        store.write(|tx| {
            for t in [BLOCKS, CERTS, OUTBOX] {
                tx.open_table(t)?;
            }
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
        let Handle::Writer(db) = &self.db else {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        };
        let run = || -> Result<T, redb::Error> {
            let tx = db.begin_write()?;
            let out = f(&tx)?;
            tx.commit()?;
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
            // A counter that never goes back, so a sequence number (and the
            // receipt id made from it) is never reused, even once the
            // outbox has drained.
            let mut meta = tx.open_table(META)?;
            let next = meta
                .get("outbox_next")?
                .and_then(|v| v.value().try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(1);
            meta.insert(
                "outbox_next",
                next.saturating_add(1).to_be_bytes().as_slice(),
            )?;
            tx.open_table(OUTBOX)?.insert(next, op)?;
            Ok(next)
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
}
