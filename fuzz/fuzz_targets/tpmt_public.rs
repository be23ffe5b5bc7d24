//! TPMT_PUBLIC / TPM2B_PUBLIC parsers and the accessors a verifier calls.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_attestation::{EccCurve, PcrSelection, TpmtPublic};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TpmtPublic::parse(data) {
        assert_eq!(p.as_bytes(), data);
        let _ = p.ecc_p256_point();
        let _ = p.ecc_point(EccCurve::NIST_P384);
        let _ = p.name().to_string();
        let _ = p.object_attributes().to_string();
    }
    let _ = TpmtPublic::parse_tpm2b(data);
    if let Ok(s) = PcrSelection::parse(data) {
        assert_eq!(s.marshal(), data);
    }
});
