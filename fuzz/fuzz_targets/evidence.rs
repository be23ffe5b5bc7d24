//! The evidence decoder and the whole verifier on arbitrary bytes, and on
//! valid evidence with one fuzzer-chosen byte of one field replaced (so the
//! verifier's deeper checks are reached): never panic, never accept a
//! changed quote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_attestation::soft::SoftTpm;
use quorate_attestation::{verify, Evidence, Freshness, PcrIndex, Policy, VerifierState};
use quorate_firmware::types::Sha256Digest;
use std::sync::OnceLock;

const EXE: Sha256Digest = Sha256Digest([1; 32]);
const CONFIG: Sha256Digest = Sha256Digest([2; 32]);

fn valid() -> &'static (Evidence, Policy, Freshness) {
    static V: OnceLock<(Evidence, Policy, Freshness)> = OnceLock::new();
    V.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let mut tpm =
            SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &EXE, &CONFIG, 1).unwrap();
        let policy = Policy::new(vec![EXE], CONFIG);
        let fresh = Freshness::Nonce(vec![7; 16]);
        let ev = tpm
            .evidence(&rng, &fresh, &Sha256Digest([3; 32]), &policy.quoted_pcrs())
            .unwrap();
        (ev, policy, fresh)
    })
}

fuzz_target!(|data: &[u8]| {
    let (good, policy, fresh) = valid();
    if let Ok(ev) = Evidence::from_bytes(data) {
        let _ = verify(&ev, fresh, policy, &mut VerifierState::default());
    }
    // Structured mutation: data = [field, position (2 bytes), value].
    if let [field, hi, lo, value, ..] = *data {
        let mut ev = good.clone();
        let pos = usize::from(u16::from_be_bytes([hi, lo]));
        let target: &mut Vec<u8> = match field % 7 {
            0 => &mut ev.quote.attest,
            1 => &mut ev.quote.signature,
            2 => &mut ev.event_log,
            3 => &mut ev.ak_public,
            4 => &mut ev.vote_key_public,
            5 => &mut ev.vote_key_certify.attest,
            _ => &mut ev.vote_key_certify.signature,
        };
        let at = pos % target.len().max(1);
        if let Some(b) = target.get_mut(at) {
            let changed = *b != value;
            *b = value;
            let r = verify(&ev, fresh, policy, &mut VerifierState::default());
            if changed && field % 7 <= 1 {
                assert!(r.is_err(), "a changed quote verified");
            }
        }
    }
});
