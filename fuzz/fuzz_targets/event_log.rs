//! The TCG event-log parser and replay: never panic; what parses
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_attestation::EventLog;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = EventLog::parse(data) {
        assert_eq!(log.to_bytes(), data);
        let _ = log.replay_sha256();
        for e in &log.events {
            let _ = e.quorate();
        }
    }
});
