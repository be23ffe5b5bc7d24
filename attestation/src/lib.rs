//! # quorate-attestation
//!
//! TPM evidence formats and their verification, in pure Rust with ring, so
//! that an auditor with no TPM and no C library can check what a Quorate
//! party's TPM produced: TPMT_PUBLIC and object Names, TPM ECDSA signatures,
//! TPMS_ATTEST (quotes and certifications), PolicyPCR digests, the TCG event
//! log, reference-value policies and EK certificate chains.
//!
//! Nothing here performs I/O: every function takes bytes and returns a typed
//! result; no input, however malformed, makes it panic.

pub mod tpm;
pub mod wire;

pub use tpm::{
    verify_ecdsa_p256, EccCurve, EccParms, KeyError, ObjectAttributes, PublicKeyParams, RsaParms,
    Scheme, SignatureError, SymDefObject, TpmName, TpmSignature, TpmtPublic,
};
pub use wire::{AlgId, ParseError};
