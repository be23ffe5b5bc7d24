//! The audit bundle reader and the whole offline verifier on arbitrary
//! bytes, and on a valid bundle (a real three-party log with software TPMs)
//! with fuzzer-chosen bytes changed: never panic, never accept a change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_host::audit::bundle::read_all;
use quorate_host::audit::check::verify_bundle;
use quorate_host::audit::testkit::Fixture;
use std::sync::OnceLock;

fn valid() -> &'static (Vec<u8>, Fixture) {
    static V: OnceLock<(Vec<u8>, Fixture)> = OnceLock::new();
    V.get_or_init(|| {
        let f = Fixture::honest();
        (f.bundle(), f)
    })
}

fuzz_target!(|data: &[u8]| {
    let (honest, f) = valid();
    let _ = read_all(data);
    let _ = verify_bundle(data, &f.policy, &f.policy_text);
    // Up to four (position, xor) edits of the honest bundle.
    // The header section's fault model and exporter are not bound by any
    // signature (docs/AUDIT.md, known limit): changes there need not fail.
    let header_end = 23 + 5 + u32::from_be_bytes([honest[24], honest[25], honest[26], honest[27]]) as usize;
    let mut bytes = honest.clone();
    for edit in data.chunks_exact(5).take(4) {
        let at = u32::from_le_bytes([edit[0], edit[1], edit[2], edit[3]]) as usize % bytes.len();
        bytes[at] ^= edit[4];
    }
    let outside_header = bytes
        .iter()
        .zip(honest.iter())
        .enumerate()
        .any(|(i, (a, b))| a != b && i >= header_end);
    if outside_header {
        let v = verify_bundle(bytes.as_slice(), &f.policy, &f.policy_text);
        assert!(!v.is_ok(), "a changed bundle verified:\n{v}");
    }
});
