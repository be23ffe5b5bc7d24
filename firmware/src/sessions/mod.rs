//! Operations and MPC sessions: the coordinator's rules.
//!
//! Consensus orders [`crate::batch::SignedBatch`]es into blocks; this module
//! gives the operations inside them their meaning. Data flow:
//!
//! 1. The host turns a request (JSON from its API) into an [`ops::OpBody`],
//!    wraps it in an [`ops::Operation`] with its own party id, encodes it
//!    ([`ops::Operation::encode`]: a version byte, then postcard) and signs
//!    its pending operations as one batch.
//! 2. Consensus checks each batch with [`ops::verify_batch`] (one signature
//!    per batch, every operation's author is the signer) and decides blocks.
//! 3. Every party applies each decided block to its
//!    [`machine::SessionMachine`], which executes, leaves pending or rejects
//!    each operation with its reasons, reports events and a state root.
//! 4. For each operation awaiting its verdict, the host asks
//!    [`policy::evaluate`] (its local policy) and posts the verdict it
//!    returns in its next batch, or holds it for its operator.
//! 5. The host serves [`query`] views over the machine's state.
//!
//! The rules and their reasons are in `docs/PROTOCOL.md`, Part II.

pub mod approval;
pub mod machine;
pub mod ops;
pub mod policy;
pub mod query;
mod root;
pub mod slot;

#[cfg(test)]
pub(crate) mod testkit;

pub use machine::{BlockOutcome, MachineConfig, SessionMachine, SessionRules};
pub use ops::{verify_batch, OpBody, Operation};
