//! ECDSA P-256 public keys and signatures, verified with ring, and
//! constant-time comparison. The firmware never holds a private key:
//! signing is an effect its driver carries out with the party's
//! TPM-resident vote key.
//!
//! They live in the leaf crate `quorate-types` (attestation uses them too)
//! and are re-exported here.

pub use quorate_types::{ct_eq, PublicKey, Signature, SignatureError};
