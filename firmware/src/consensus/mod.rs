//! Consensus: malachite's BFT core (Tendermint) driven for Quorate.
//!
//! * [`context`]: malachite's `Context` — blocks of signed batches, votes,
//!   proposals, the party set, signed bytes, quorum thresholds.
//! * [`driver`]: the sans-IO driver the host and the simulator share
//!   (`driver/{mempool, signing, validate, effects}.rs`, as malachite
//!   splits its handlers).
//! * [`validate`]: block validity, the one home of its rules, used by the
//!   driver and by the offline verifier.
//! * [`sign_guard`]: refuses to sign regressions and conflicts.
//! * [`certificate`]: commit certificates and equivocation evidence.
//! * [`sync`]: catch-up of parties that fell behind.
//! * [`wire`]: peer messages and WAL records.
//!
//! See `docs/PROTOCOL.md` for the rules and their safety argument.

pub mod certificate;
pub mod context;
pub mod driver;
pub mod sign_guard;
pub mod sync;
pub mod wire;

pub use certificate::{verify_commit_certificate, CertificateError, CommitCertificate};
pub use context::{Block, BlockHash, BlockHeader, Equivocation, LogHead, Party, PartySet};
pub use driver::validate;
pub use driver::{
    block_response_frame, Action, BadBatch, ChainState, ConsensusDriver, DecidedBlock,
    DriverConfig, DriverError, Input, InvalidBlock, PeerFault, Persist, Restored, SignRequestId,
    Step, TimerId,
};
