//! # quorate-types
//!
//! The vocabulary that Quorate's firmware (consensus, sessions, audit log)
//! and its attestation verifier share: SHA-256 digests, ECDSA P-256 public
//! keys and signatures, the cluster and epoch ids, and constant-time
//! comparison. It is a leaf: it depends on nothing of ours and on nothing
//! that does I/O, so an auditor can build `quorate-attestation` without the
//! consensus engine.
//!
//! Every type here serializes (serde) to a fixed shape, and signed bytes
//! are built from those shapes by postcard: changing a derive or a
//! `serde` attribute here changes what every party signs. The known-answer
//! tests at the bottom of each module pin the encodings.
//!
//! Types that implement the consensus engine's traits (`PartyId` as
//! malachite's `Address`, `Height` as its `Height`) stay in
//! `quorate-firmware`: Rust's orphan rule lets only the crate that defines
//! a type or the trait write that impl, and this crate must not depend on
//! malachite.

mod ct;
mod digest;
mod ids;
mod keys;

pub use ct::ct_eq;
pub use digest::Sha256Digest;
pub use ids::{ClusterId, Epoch};
pub use keys::{PublicKey, Signature, SignatureError};
