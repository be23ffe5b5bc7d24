//! The attested audit log: entries, their Merkle tree, checkpoints and the
//! offline verifier core.
//!
//! Data flow:
//!
//! 1. After each decided block is applied to the session machine, every
//!    party calls [`entry::EntryBuilder::build_block`] with the block's
//!    header fields, the machine's [`crate::sessions::BlockOutcome`], the
//!    canonical signers of its commit certificate and its batches. The
//!    entries it returns are identical at every party.
//! 2. The host appends each entry's bytes to its [`merkle::CompactTree`]
//!    (storing the [`merkle::NewNode`]s it reports, for proofs) and keeps the
//!    entries themselves.
//! 3. When [`checkpoint::CheckpointPolicy::due`] says so, the host builds a
//!    [`checkpoint::Checkpoint`], has its TPM quote
//!    [`checkpoint::Checkpoint::quote_qualifying_data`], and peers cosign with
//!    their vote keys over [`checkpoint::Checkpoint::cosign_message`]
//!    ([`checkpoint::cosignature`], [`checkpoint::check_cosignatures`]).
//! 4. Anyone verifies an exported log with [`verify::verify_log`], plugging
//!    quote and certificate checks in through [`verify::EvidenceChecker`].
//!
//! The formats and what verification proves are in `docs/AUDIT.md`.

pub mod checkpoint;
pub mod entry;
pub mod ledger;
pub mod merkle;
pub mod verify;
