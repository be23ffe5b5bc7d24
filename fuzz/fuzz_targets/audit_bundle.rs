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
    let mut bytes = honest.clone();
    let mut changed = false;
    for edit in data.chunks_exact(5).take(4) {
        let at = u32::from_le_bytes([edit[0], edit[1], edit[2], edit[3]]) as usize % bytes.len();
        if edit[4] != 0 {
            bytes[at] ^= edit[4];
            changed = changed || bytes[at] != honest[at];
        }
    }
    if changed && bytes != *honest {
        let v = verify_bundle(bytes.as_slice(), &f.policy, &f.policy_text);
        assert!(!v.is_ok(), "a changed bundle verified:\n{v}");
    }
});
