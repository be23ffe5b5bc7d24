//! The C2SP tlog-witness parsers on arbitrary bytes: add-checkpoint
//! request bodies, witness responses (as signature lines of a checkpoint)
//! and verifier keys. Never panic; whatever parses as a request formats
//! back to a request that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_firmware::audit::checkpoint::Checkpoint;
use quorate_firmware::audit::merkle::TreeSize;
use quorate_firmware::types::Sha256Digest;
use quorate_host::audit::witness::{
    add_checkpoint_body, parse_add_checkpoint, parse_response, WitnessKey,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_add_checkpoint(data) {
        let again = add_checkpoint_body(r.old, &r.proof, &r.checkpoint.format());
        assert_eq!(parse_add_checkpoint(again.as_bytes()), Ok(r));
    }
    let cp = Checkpoint {
        origin: "quorate/fuzz".into(),
        size: TreeSize(1),
        root: Sha256Digest::of(b"fuzz"),
        extensions: vec![],
    };
    let _ = parse_response(&cp, data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = WitnessKey::parse(s) {
            assert_eq!(WitnessKey::parse(&k.vkey()), Ok(k));
        }
    }
});
