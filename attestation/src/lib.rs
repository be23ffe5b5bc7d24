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

pub mod attest;
pub mod checkpoint;
pub mod checkpoint_verify;
pub mod credential;
pub mod ekcert;
pub mod enroll;
pub mod eventlog;
pub mod evidence;
pub mod pcr;
pub mod policy;
#[cfg(any(test, feature = "soft-tpm"))]
pub mod soft;
pub mod tpm;
pub mod verify;
pub mod wire;

pub use attest::{Attested, ClockInfo, TpmsAttest};
pub use credential::{
    ek_matches_certificate, ephemeral_len, make_credential, CredentialError, MadeCredential,
};
pub use ekcert::{verify_ek_chain, EkChainInfo, EkError};
pub use enroll::{
    challenge, ActivatedAk, ActivationMismatch, EnrollError, EnrollRules, EnrollmentRequest,
    PendingEnrollment,
};
pub use eventlog::{EventLog, EventType, LogEvent, QuorateEvent, ReplayError, SpecIdEvent};
pub use evidence::{qualifying_data, DecodeError, Evidence, Freshness, SignedAttest};
pub use pcr::{
    expected_measurement, measurement_policy, policy_pcr_digest, PcrIndex, PcrSelection, PcrValue,
};
pub use policy::{HexDigest, Policy, PolicyError, RequiredPcr};
pub use tpm::{
    verify_ecdsa_p256, EccCurve, EccParms, KeyError, ObjectAttributes, PublicKeyParams, RsaParms,
    Scheme, SignatureError, SymDefObject, TpmName, TpmSignature, TpmtPublic,
};
pub use verify::{verify, verify_at, AttestationError, AttestationResult, VerifierState};
pub use wire::{AlgId, ParseError};
