//! The auditor's side of the attested audit log: the bundle format
//! ([`bundle`]), `quorate audit export` ([`export`]) and `quorate audit
//! verify` ([`check`]), which runs the firmware's offline verifier with the
//! host's certificate, batch-signature, quote and attestation checks.
//!
//! Data flow: the daemon's store -> [`export::export_store`] -> a bundle
//! file -> [`check::verify_bundle`] (no TPM, no network) -> a
//! [`check::Verification`] printed as the report. `docs/AUDIT.md`
//! describes the format and what each check proves.

pub mod bundle;
pub mod check;
pub mod export;
#[cfg(any(test, feature = "testkit"))]
pub mod test_witness;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod views;
pub mod witness;
