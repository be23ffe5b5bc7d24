//! TPMS_ATTEST and TPMT_SIGNATURE parsers: never panic; what parses
//! re-marshals to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_attestation::{TpmSignature, TpmsAttest};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = TpmsAttest::parse(data) {
        assert_eq!(a.marshal(), data);
    }
    if let Ok(s) = TpmSignature::parse(data) {
        assert_eq!(s.marshal(), data);
        let _ = s.to_p256_fixed();
    }
});
