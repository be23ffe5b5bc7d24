//! Which measurement an attestation record establishes, read the same way
//! by every party and by the offline auditor (a pure function of the
//! evidence bytes), for the audit log's `decided_under` references.
//!
//! This is the glue between the two cores: it reads attestation's formats
//! and implements the firmware ledger's [`MeasurementSource`]. It lives in
//! the host because attestation knows nothing of the audit log and the
//! firmware nothing of TPM formats. The daemon's ledger and
//! `quorate audit verify` both call it, so they read a record alike.

use quorate_attestation::eventlog::{EventLog, QuorateEvent};
use quorate_attestation::evidence::Evidence;
use quorate_attestation::pcr::PcrIndex;
use quorate_firmware::audit::entry::{Measurement, MeasurementSource};
use quorate_firmware::types::{PartyId, Sha256Digest};

/// Reads a [`Measurement`] out of encoded [`Evidence`]: the value the
/// measurement PCR (the PCR the log's executable event extends) replays to
/// from the event log, and the SHA-256 of the event log bytes. Whether the
/// evidence is *valid* is the verifier's question
/// ([`quorate_attestation::verify::verify`]); this only says what it claims.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvidenceMeasurements;

impl MeasurementSource for EvidenceMeasurements {
    fn measurement(&self, _author: PartyId, evidence: &[u8]) -> Option<Measurement> {
        measurement_of_evidence(evidence)
    }
}

/// The measurement encoded evidence claims; `None` when it does not
/// decode, has no executable event, or its log does not replay.
pub fn measurement_of_evidence(evidence: &[u8]) -> Option<Measurement> {
    let ev = Evidence::from_bytes(evidence).ok()?;
    let log = EventLog::parse(&ev.event_log).ok()?;
    let pcr = log
        .events
        .iter()
        .find(|e| matches!(e.quorate(), Some(QuorateEvent::Executable(_))))
        .and_then(|e| u8::try_from(e.pcr_index).ok())
        .and_then(PcrIndex::new)?;
    let replayed = log.replay_sha256().ok()?;
    Some(Measurement {
        pcr: *replayed.get(&pcr)?,
        event_log: Sha256Digest::of(&ev.event_log),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_attestation::evidence::Freshness;
    use quorate_attestation::soft::SoftTpm;
    use ring::rand::SystemRandom;

    #[test]
    fn reads_the_launch_measurement_and_refuses_garbage() {
        let rng = SystemRandom::new();
        let exe = Sha256Digest::of(b"coordinator");
        let cfg = Sha256Digest::of(b"config");
        let mut tpm = SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &exe, &cfg, 3).unwrap();
        let ev = tpm
            .evidence(
                &rng,
                &Freshness::Nonce(vec![1; 32]),
                &Sha256Digest::of(b"tls"),
                &[PcrIndex::DEFAULT_MEASUREMENT],
            )
            .unwrap();
        let bytes = ev.to_bytes();
        let m = EvidenceMeasurements
            .measurement(PartyId(1), &bytes)
            .unwrap();
        assert_eq!(m.pcr, tpm.pcrs[&PcrIndex::DEFAULT_MEASUREMENT]);
        assert_eq!(m.event_log, Sha256Digest::of(&ev.event_log));
        // Another executable, another measurement.
        let mut other =
            SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &cfg, &cfg, 3).unwrap();
        let ev2 = other
            .evidence(
                &rng,
                &Freshness::Nonce(vec![1; 32]),
                &Sha256Digest::of(b"tls"),
                &[PcrIndex::DEFAULT_MEASUREMENT],
            )
            .unwrap();
        assert_ne!(measurement_of_evidence(&ev2.to_bytes()).unwrap().pcr, m.pcr);
        assert_eq!(measurement_of_evidence(b"garbage"), None);
        assert_eq!(measurement_of_evidence(&bytes[..bytes.len() / 2]), None);
        let mut no_exe = ev.clone();
        let mut log = EventLog::parse(&no_exe.event_log).unwrap();
        log.events
            .retain(|e| !matches!(e.quorate(), Some(QuorateEvent::Executable(_))));
        no_exe.event_log = log.to_bytes();
        assert_eq!(measurement_of_evidence(&no_exe.to_bytes()), None);
    }
}
