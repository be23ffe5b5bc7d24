//! # quorate-firmware
//!
//! The measured coordinator core of Quorate: the part whose integrity peers
//! verify, because it is the part that decides. It is sans-IO: it takes bytes,
//! events and the current time as arguments and returns what its driver must
//! do (send, persist, sign, schedule a timeout, commit). It never touches a
//! socket, a file, a clock, a thread or the TPM, so every run is reproducible
//! from its inputs and can be driven by the deterministic simulator as well as
//! by the daemon in `quorate-host`.
//!
//! Data flow: the host feeds [`batch::SignedBatch`]es (operations signed by
//! their author's TPM key) and peer messages into the consensus driver; the
//! consensus core orders batches into blocks; each decided block is applied,
//! in order, to the session state machine; the audit log hashes every outcome.
//!
//! Shared vocabulary lives in [`types`] and [`crypto`].

pub mod audit;
pub mod batch;
pub mod consensus;
pub mod crypto;
pub mod sessions;
#[cfg(feature = "sim")]
pub mod sim;
pub mod types;
