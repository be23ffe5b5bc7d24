//! The TCG crypto-agile event log (TCG PC Client Platform Firmware Profile,
//! §10): a TCG_PCR_EVENT header carrying the Spec ID event, then
//! TCG_PCR_EVENT2 entries. Parser, writer, Quorate's own events and replay
//! of the SHA-256 bank.
//!
//! All integers in the log are little-endian (unlike TPM structures).
//!
//! Quorate's measured-launch events:
//! * `EV_NO_ACTION` whose data is the 16-byte signature `"Quorate TPM Boot"`
//!   then the TPM's resetCount (u32 LE): which TPM boot the log belongs to;
//!   not extended into any PCR.
//! * `EV_EVENT_TAG` whose data is a TCG_PCClientTaggedEvent with tag
//!   [`TAG_EXECUTABLE`] or [`TAG_CONFIG`] and a 32-byte SHA-256 digest as its
//!   payload; the event's SHA-256 digest (the value extended) must equal that
//!   payload.

use crate::pcr::{extend_sha256, PcrIndex, PCR_COUNT};
use crate::wire::{AlgId, ParseError, Reader};
use quorate_types::Sha256Digest;
use std::collections::BTreeMap;
use std::fmt;

/// A TCG event type (TCG PC Client PFP, table 9).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType(pub u32);

impl EventType {
    /// EV_POST_CODE.
    pub const POST_CODE: EventType = EventType(0x1);
    /// EV_NO_ACTION: informational, never extended.
    pub const NO_ACTION: EventType = EventType(0x3);
    /// EV_SEPARATOR.
    pub const SEPARATOR: EventType = EventType(0x4);
    /// EV_EVENT_TAG: a TCG_PCClientTaggedEvent.
    pub const EVENT_TAG: EventType = EventType(0x6);
    /// EV_IPL.
    pub const IPL: EventType = EventType(0xD);
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            EventType::POST_CODE => "EV_POST_CODE",
            EventType::NO_ACTION => "EV_NO_ACTION",
            EventType::SEPARATOR => "EV_SEPARATOR",
            EventType::EVENT_TAG => "EV_EVENT_TAG",
            EventType::IPL => "EV_IPL",
            EventType(t) => return write!(f, "event type {t:#x}"),
        };
        write!(f, "{name}")
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Tagged-event ID of "the SHA-256 of the coordinator executable" ("QRT" 1).
pub const TAG_EXECUTABLE: u32 = 0x5152_5401;
/// Tagged-event ID of "the digest of the canonical cluster configuration".
pub const TAG_CONFIG: u32 = 0x5152_5402;
/// Signature of Quorate's EV_NO_ACTION boot record.
pub const BOOT_SIGNATURE: &[u8; 16] = b"Quorate TPM Boot";
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";
/// Most digests one event may carry.
const MAX_DIGESTS: u32 = 16;
/// Largest digest a Spec ID event may declare.
const MAX_DIGEST_SIZE: u16 = 64;

/// The Spec ID event (TCG_EfiSpecIDEvent) that opens a crypto-agile log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecIdEvent {
    /// Platform class (0 client, 1 server).
    pub platform_class: u32,
    /// Spec version minor.
    pub spec_version_minor: u8,
    /// Spec version major (2).
    pub spec_version_major: u8,
    /// Spec errata.
    pub spec_errata: u8,
    /// Size of UINTN (1: 32-bit, 2: 64-bit).
    pub uintn_size: u8,
    /// The banks the log carries digests for, with their digest sizes.
    pub algorithms: Vec<(AlgId, u16)>,
    /// Vendor information.
    pub vendor_info: Vec<u8>,
}

impl SpecIdEvent {
    /// A Spec ID event for a log with only the SHA-256 bank.
    pub fn sha256_only() -> SpecIdEvent {
        SpecIdEvent {
            platform_class: 0,
            spec_version_minor: 0,
            spec_version_major: 2,
            spec_errata: 0,
            uintn_size: 2,
            algorithms: vec![(AlgId::SHA256, 32)],
            vendor_info: Vec::new(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = SPEC_ID_SIGNATURE.to_vec();
        v.extend_from_slice(&self.platform_class.to_le_bytes());
        v.extend_from_slice(&[
            self.spec_version_minor,
            self.spec_version_major,
            self.spec_errata,
            self.uintn_size,
        ]);
        v.extend_from_slice(&u32_len(self.algorithms.len()).to_le_bytes());
        for (alg, size) in &self.algorithms {
            v.extend_from_slice(&alg.0.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
        }
        v.push(u8::try_from(self.vendor_info.len()).unwrap_or(u8::MAX));
        v.extend_from_slice(
            self.vendor_info
                .get(..usize::from(u8::MAX))
                .unwrap_or(&self.vendor_info),
        );
        v
    }

    fn decode(data: &[u8]) -> Result<SpecIdEvent, ParseError> {
        let mut r = Reader::new(data);
        let sig = r.bytes(16, "TCG_EfiSpecIDEvent.signature")?;
        if sig != SPEC_ID_SIGNATURE {
            return Err(ParseError::InvalidValue {
                what: "TCG_EfiSpecIDEvent.signature",
                value: 0,
                expected: "\"Spec ID Event03\" (a crypto-agile log)",
            });
        }
        let platform_class = r.u32_le("TCG_EfiSpecIDEvent.platformClass")?;
        let spec_version_minor = r.u8("TCG_EfiSpecIDEvent.specVersionMinor")?;
        let spec_version_major = r.u8("TCG_EfiSpecIDEvent.specVersionMajor")?;
        let spec_errata = r.u8("TCG_EfiSpecIDEvent.specErrata")?;
        let uintn_size = r.u8("TCG_EfiSpecIDEvent.uintnSize")?;
        let n = r.u32_le("TCG_EfiSpecIDEvent.numberOfAlgorithms")?;
        if n == 0 || n > MAX_DIGESTS {
            return Err(ParseError::InvalidValue {
                what: "TCG_EfiSpecIDEvent.numberOfAlgorithms",
                value: u64::from(n),
                expected: "1..=16",
            });
        }
        let mut algorithms = Vec::new();
        for _ in 0..n {
            let alg = AlgId(r.u16_le("TCG_EfiSpecIDEvent.digestSizes.algorithmId")?);
            let size = r.u16_le("TCG_EfiSpecIDEvent.digestSizes.digestSize")?;
            let known = alg
                .digest_size()
                .map(|s| usize::from(size) == s)
                .unwrap_or(true);
            if !known || size > MAX_DIGEST_SIZE || size == 0 {
                return Err(ParseError::InvalidValue {
                    what: "TCG_EfiSpecIDEvent.digestSizes.digestSize",
                    value: u64::from(size),
                    expected: "the algorithm's digest size",
                });
            }
            algorithms.push((alg, size));
        }
        let vendor_len = usize::from(r.u8("TCG_EfiSpecIDEvent.vendorInfoSize")?);
        let vendor_info = r
            .bytes(vendor_len, "TCG_EfiSpecIDEvent.vendorInfo")?
            .to_vec();
        r.finish("TCG_EfiSpecIDEvent")?;
        Ok(SpecIdEvent {
            platform_class,
            spec_version_minor,
            spec_version_major,
            spec_errata,
            uintn_size,
            algorithms,
            vendor_info,
        })
    }

    fn digest_size(&self, alg: AlgId) -> Option<usize> {
        self.algorithms
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, s)| usize::from(*s))
    }
}

/// Why a Spec ID header is not the one Quorate's measured launch writes
/// ([`SpecIdEvent::sha256_only`]). None of these bytes is measured into a
/// PCR, so nothing but this check stops a changed header from verifying:
/// every field must be exactly what the writer puts there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecIdError {
    /// platformClass is not 0 (client), what the host writes.
    #[error("Spec ID event: platformClass {found}, Quorate's log declares 0 (client)")]
    PlatformClass {
        /// The header's value.
        found: u32,
    },
    /// specVersion is not 2.0.
    #[error("Spec ID event: specVersion {major}.{minor}, a crypto-agile log is 2.0")]
    SpecVersion {
        /// specVersionMajor.
        major: u8,
        /// specVersionMinor.
        minor: u8,
    },
    /// specErrata is not 0.
    #[error("Spec ID event: specErrata {found}, Quorate's log declares 0")]
    SpecErrata {
        /// The header's value.
        found: u8,
    },
    /// uintnSize is not 2 (64-bit UINTN).
    #[error("Spec ID event: uintnSize {found}, Quorate's log declares 2 (UINT64)")]
    UintnSize {
        /// The header's value.
        found: u8,
    },
    /// The algorithm list is not exactly the quoted bank with its size.
    #[error("Spec ID event: the log declares banks {found:?}; the quote is over {bank} only, so the log must declare exactly [{bank} ({size} bytes)]")]
    Algorithms {
        /// (algorithm, digest size) as declared.
        found: Vec<(AlgId, u16)>,
        /// The quoted bank.
        bank: AlgId,
        /// Its digest size.
        size: u16,
    },
    /// The header carries vendor data Quorate's log does not declare.
    #[error("Spec ID event: {len} bytes of vendorInfo; Quorate's log carries none")]
    VendorInfo {
        /// vendorInfoSize.
        len: usize,
    },
}

impl SpecIdEvent {
    /// Checks that this header is exactly the one the host writes for a log
    /// of the `bank` digests ([`SpecIdEvent::sha256_only`] for SHA-256):
    /// platform class, spec version 2.0 and errata, uintnSize 2, the
    /// algorithm list (the quoted bank alone, with its digest size) and no
    /// vendor data. Each field has its own error.
    pub fn check_quorate(&self, bank: AlgId) -> Result<(), SpecIdError> {
        if self.platform_class != 0 {
            return Err(SpecIdError::PlatformClass {
                found: self.platform_class,
            });
        }
        if (self.spec_version_major, self.spec_version_minor) != (2, 0) {
            return Err(SpecIdError::SpecVersion {
                major: self.spec_version_major,
                minor: self.spec_version_minor,
            });
        }
        if self.spec_errata != 0 {
            return Err(SpecIdError::SpecErrata {
                found: self.spec_errata,
            });
        }
        if self.uintn_size != 2 {
            return Err(SpecIdError::UintnSize {
                found: self.uintn_size,
            });
        }
        let size = bank
            .digest_size()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        if self.algorithms != [(bank, size)] {
            return Err(SpecIdError::Algorithms {
                found: self.algorithms.clone(),
                bank,
                size,
            });
        }
        if !self.vendor_info.is_empty() {
            return Err(SpecIdError::VendorInfo {
                len: self.vendor_info.len(),
            });
        }
        Ok(())
    }
}

/// One TCG_PCR_EVENT2.
#[derive(Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// The PCR it was extended into (any u32: the log is outside input).
    pub pcr_index: u32,
    /// Its type.
    pub event_type: EventType,
    /// Its digests, one per bank, in log order.
    pub digests: Vec<(AlgId, Vec<u8>)>,
    /// Its event data.
    pub data: Vec<u8>,
}

impl fmt::Debug for LogEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LogEvent(PCR {}, {}, {} bytes",
            self.pcr_index,
            self.event_type,
            self.data.len()
        )?;
        if let Some(d) = self.sha256() {
            write!(f, ", sha256 {d}")?;
        }
        write!(f, ")")
    }
}

/// A Quorate measured-launch event, decoded from a [`LogEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuorateEvent {
    /// The SHA-256 of the coordinator executable.
    Executable(Sha256Digest),
    /// The digest of the canonical cluster configuration.
    Config(Sha256Digest),
    /// The TPM boot (resetCount) the measurements belong to.
    Boot {
        /// The TPM's resetCount when the log was started.
        reset_count: u32,
    },
}

impl LogEvent {
    /// The Quorate boot record: an EV_NO_ACTION event carrying `reset_count`.
    pub fn boot(reset_count: u32) -> LogEvent {
        let mut data = BOOT_SIGNATURE.to_vec();
        data.extend_from_slice(&reset_count.to_le_bytes());
        LogEvent {
            pcr_index: 0,
            event_type: EventType::NO_ACTION,
            digests: vec![(AlgId::SHA256, vec![0; 32])],
            data,
        }
    }

    fn tagged(pcr: PcrIndex, tag: u32, digest: &Sha256Digest) -> LogEvent {
        let mut data = tag.to_le_bytes().to_vec();
        data.extend_from_slice(&32u32.to_le_bytes());
        data.extend_from_slice(digest.as_bytes());
        LogEvent {
            pcr_index: u32::from(pcr.get()),
            event_type: EventType::EVENT_TAG,
            digests: vec![(AlgId::SHA256, digest.as_bytes().to_vec())],
            data,
        }
    }

    /// The event recording that `pcr` was extended with the executable's
    /// SHA-256 `digest`.
    pub fn executable(pcr: PcrIndex, digest: &Sha256Digest) -> LogEvent {
        LogEvent::tagged(pcr, TAG_EXECUTABLE, digest)
    }

    /// The event recording that `pcr` was extended with the configuration
    /// digest.
    pub fn config(pcr: PcrIndex, digest: &Sha256Digest) -> LogEvent {
        LogEvent::tagged(pcr, TAG_CONFIG, digest)
    }

    /// The event's SHA-256 bank digest, if it carries one of 32 bytes.
    pub fn sha256(&self) -> Option<Sha256Digest> {
        let (_, d) = self.digests.iter().find(|(a, _)| *a == AlgId::SHA256)?;
        let arr: [u8; 32] = d.as_slice().try_into().ok()?;
        Some(Sha256Digest(arr))
    }

    /// Decodes a Quorate event; `None` for any other event (including a
    /// Quorate-tagged event whose payload is malformed, which the verifier
    /// reports separately through [`LogEvent::quorate_tag`]).
    pub fn quorate(&self) -> Option<QuorateEvent> {
        if self.event_type == EventType::NO_ACTION {
            let rest = self.data.strip_prefix(BOOT_SIGNATURE.as_slice())?;
            let rc: [u8; 4] = rest.try_into().ok()?;
            return Some(QuorateEvent::Boot {
                reset_count: u32::from_le_bytes(rc),
            });
        }
        let (tag, payload) = self.quorate_tag()?;
        let d: [u8; 32] = payload.try_into().ok()?;
        match tag {
            TAG_EXECUTABLE => Some(QuorateEvent::Executable(Sha256Digest(d))),
            TAG_CONFIG => Some(QuorateEvent::Config(Sha256Digest(d))),
            _ => None,
        }
    }

    /// For an EV_EVENT_TAG event: its tag and payload, if well formed.
    pub fn quorate_tag(&self) -> Option<(u32, &[u8])> {
        if self.event_type != EventType::EVENT_TAG {
            return None;
        }
        let mut r = Reader::new(&self.data);
        let tag = r.u32_le("tag").ok()?;
        let size = usize::try_from(r.u32_le("size").ok()?).ok()?;
        let payload = r.bytes(size, "payload").ok()?;
        r.finish("tagged event").ok()?;
        Some((tag, payload))
    }

    /// The TCG_PCR_EVENT2 encoding, to append to a log file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.pcr_index.to_le_bytes());
        v.extend_from_slice(&self.event_type.0.to_le_bytes());
        v.extend_from_slice(&u32_len(self.digests.len()).to_le_bytes());
        for (alg, d) in &self.digests {
            v.extend_from_slice(&alg.0.to_le_bytes());
            v.extend_from_slice(d);
        }
        v.extend_from_slice(&u32_len(self.data.len()).to_le_bytes());
        v.extend_from_slice(&self.data);
        v
    }
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Why a log does not replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// An extended event has no digest for the bank being replayed.
    #[error(
        "event {index} (PCR {pcr}) has no SHA-256 digest; the log must carry the SHA-256 bank"
    )]
    MissingSha256 {
        /// Position of the event after the header (0-based).
        index: usize,
        /// Its PCR.
        pcr: u32,
    },
    /// An event names a PCR that does not exist.
    #[error("event {index} extends PCR {pcr}, which does not exist (0..=23)")]
    PcrOutOfRange {
        /// Position of the event after the header (0-based).
        index: usize,
        /// The PCR it names.
        pcr: u32,
    },
}

/// A parsed crypto-agile event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog {
    /// The Spec ID header.
    pub spec_id: SpecIdEvent,
    /// The TCG_PCR_EVENT2 entries, in order.
    pub events: Vec<LogEvent>,
}

impl EventLog {
    /// An empty log with a SHA-256-only Spec ID header.
    pub fn new_sha256() -> EventLog {
        EventLog {
            spec_id: SpecIdEvent::sha256_only(),
            events: Vec::new(),
        }
    }

    /// The header (TCG_PCR_EVENT with the Spec ID event), which starts a log
    /// file; events are appended after it with [`LogEvent::to_bytes`].
    pub fn header_bytes(&self) -> Vec<u8> {
        let data = self.spec_id.encode();
        let mut v = Vec::new();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&EventType::NO_ACTION.0.to_le_bytes());
        v.extend_from_slice(&[0u8; 20]);
        v.extend_from_slice(&u32_len(data.len()).to_le_bytes());
        v.extend_from_slice(&data);
        v
    }

    /// The whole log's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.header_bytes();
        for e in &self.events {
            v.extend_from_slice(&e.to_bytes());
        }
        v
    }

    /// Parses a log. Every event's digests must be for banks the header
    /// declares, with the declared sizes; nothing may follow the last event.
    pub fn parse(bytes: &[u8]) -> Result<EventLog, ParseError> {
        let mut r = Reader::new(bytes);
        let pcr = r.u32_le("TCG_PCR_EVENT.pcrIndex")?;
        let ty = r.u32_le("TCG_PCR_EVENT.eventType")?;
        let digest = r.bytes(20, "TCG_PCR_EVENT.digest")?;
        if pcr != 0 || ty != EventType::NO_ACTION.0 || digest.iter().any(|b| *b != 0) {
            return Err(ParseError::InvalidValue {
                what: "TCG_PCR_EVENT",
                value: u64::from(ty),
                expected: "an EV_NO_ACTION header on PCR 0 with a zero digest",
            });
        }
        let size = r.u32_le("TCG_PCR_EVENT.eventDataSize")?;
        let data = r.bytes(
            usize::try_from(size).unwrap_or(usize::MAX),
            "TCG_PCR_EVENT.event",
        )?;
        let spec_id = SpecIdEvent::decode(data)?;
        let mut events = Vec::new();
        while r.remaining() > 0 {
            let pcr_index = r.u32_le("TCG_PCR_EVENT2.pcrIndex")?;
            let event_type = EventType(r.u32_le("TCG_PCR_EVENT2.eventType")?);
            let count = r.u32_le("TCG_PCR_EVENT2.digests.count")?;
            if count > MAX_DIGESTS {
                return Err(ParseError::TooLarge {
                    what: "TCG_PCR_EVENT2.digests.count",
                    size: usize::try_from(count).unwrap_or(usize::MAX),
                    max: MAX_DIGESTS as usize,
                });
            }
            let mut digests = Vec::new();
            for _ in 0..count {
                let alg = AlgId(r.u16_le("TCG_PCR_EVENT2.digests.hashAlg")?);
                let size = spec_id
                    .digest_size(alg)
                    .ok_or(ParseError::UnsupportedAlgorithm {
                        what: "TCG_PCR_EVENT2.digests.hashAlg (not in the Spec ID header)",
                        alg,
                    })?;
                digests.push((
                    alg,
                    r.bytes(size, "TCG_PCR_EVENT2.digests.digest")?.to_vec(),
                ));
            }
            let size = r.u32_le("TCG_PCR_EVENT2.eventSize")?;
            let data = r
                .bytes(
                    usize::try_from(size).unwrap_or(usize::MAX),
                    "TCG_PCR_EVENT2.event",
                )?
                .to_vec();
            events.push(LogEvent {
                pcr_index,
                event_type,
                digests,
                data,
            });
        }
        Ok(EventLog { spec_id, events })
    }

    /// The resetCount of the TPM boot this log was started in (its Quorate
    /// boot record), if it has one: a daemon restarting within the same
    /// boot finds its measurements already in the PCR and must not extend
    /// again.
    pub fn boot_reset_count(&self) -> Option<u32> {
        self.events.iter().find_map(|e| match e.quorate() {
            Some(QuorateEvent::Boot { reset_count }) => Some(reset_count),
            _ => None,
        })
    }

    /// Replays the SHA-256 bank: the value each PCR named in the log would
    /// hold after all its events were extended in order, starting from the
    /// reset value (zero; all-ones for PCRs 17-22; PCR 0 starts at the
    /// locality a StartupLocality event records). EV_NO_ACTION events are
    /// not extended.
    pub fn replay_sha256(&self) -> Result<BTreeMap<PcrIndex, Sha256Digest>, ReplayError> {
        let mut pcrs: BTreeMap<PcrIndex, Sha256Digest> = BTreeMap::new();
        for (index, e) in self.events.iter().enumerate() {
            let pcr = u8::try_from(e.pcr_index)
                .ok()
                .and_then(PcrIndex::new)
                .ok_or(ReplayError::PcrOutOfRange {
                    index,
                    pcr: e.pcr_index,
                })?;
            if e.event_type == EventType::NO_ACTION {
                if let Some(rest) = e.data.strip_prefix(STARTUP_LOCALITY_SIGNATURE.as_slice()) {
                    if let (0, [locality]) = (e.pcr_index, rest) {
                        let mut init = [0u8; 32];
                        init[31] = *locality;
                        pcrs.entry(pcr).or_insert(Sha256Digest(init));
                    }
                }
                continue;
            }
            let d = e.sha256().ok_or(ReplayError::MissingSha256 {
                index,
                pcr: e.pcr_index,
            })?;
            let old = pcrs.get(&pcr).copied().unwrap_or_else(|| reset_value(pcr));
            pcrs.insert(pcr, extend_sha256(&old, &d));
        }
        Ok(pcrs)
    }
}

/// A PCR's value after TPM Reset (PC Client: 17-22 are all ones).
pub fn reset_value(pcr: PcrIndex) -> Sha256Digest {
    if (17..=22).contains(&pcr.get()) {
        Sha256Digest([0xff; 32])
    } else {
        Sha256Digest([0; 32])
    }
}

// PCR_COUNT is the bound PcrIndex::new enforces; keep the import honest.
const _: () = assert!(PCR_COUNT == 24);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EventLog {
        let mut log = EventLog::new_sha256();
        log.events.push(LogEvent::boot(7));
        log.events.push(LogEvent::executable(
            PcrIndex::DEFAULT_MEASUREMENT,
            &Sha256Digest([1; 32]),
        ));
        log.events.push(LogEvent::config(
            PcrIndex::DEFAULT_MEASUREMENT,
            &Sha256Digest([2; 32]),
        ));
        log
    }

    #[test]
    fn log_round_trips_and_replays() {
        let log = sample();
        let bytes = log.to_bytes();
        let back = EventLog::parse(&bytes).unwrap();
        assert_eq!(back, log);
        let pcrs = back.replay_sha256().unwrap();
        let expect = extend_sha256(
            &extend_sha256(&Sha256Digest([0; 32]), &Sha256Digest([1; 32])),
            &Sha256Digest([2; 32]),
        );
        assert_eq!(pcrs.get(&PcrIndex::DEFAULT_MEASUREMENT), Some(&expect));
        assert_eq!(pcrs.len(), 1, "the boot record is not extended");
        assert_eq!(back.boot_reset_count(), Some(7));
        assert_eq!(EventLog::new_sha256().boot_reset_count(), None);
        let kinds: Vec<_> = back.events.iter().map(|e| e.quorate()).collect();
        assert_eq!(
            kinds,
            vec![
                Some(QuorateEvent::Boot { reset_count: 7 }),
                Some(QuorateEvent::Executable(Sha256Digest([1; 32]))),
                Some(QuorateEvent::Config(Sha256Digest([2; 32]))),
            ]
        );
    }

    #[test]
    fn header_then_appended_events_equal_the_whole_log() {
        let log = sample();
        let mut bytes = log.header_bytes();
        for e in &log.events {
            bytes.extend_from_slice(&e.to_bytes());
        }
        assert_eq!(bytes, log.to_bytes());
    }

    #[test]
    fn truncation_and_foreign_banks_are_rejected() {
        let bytes = sample().to_bytes();
        for cut in [1usize, 20, 40, bytes.len() - 1] {
            assert!(EventLog::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut log = sample();
        log.events[1].digests.push((AlgId::SHA1, vec![0; 20]));
        assert!(matches!(
            EventLog::parse(&log.to_bytes()),
            Err(ParseError::UnsupportedAlgorithm {
                alg: AlgId::SHA1,
                ..
            })
        ));
    }

    #[test]
    fn a_sha1_only_event_cannot_be_replayed() {
        let mut log = sample();
        log.spec_id.algorithms.push((AlgId::SHA1, 20));
        log.events[1].digests = vec![(AlgId::SHA1, vec![0; 20])];
        let back = EventLog::parse(&log.to_bytes()).unwrap();
        assert_eq!(
            back.replay_sha256(),
            Err(ReplayError::MissingSha256 { index: 1, pcr: 15 })
        );
    }

    proptest! {
        #[test]
        fn log_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(l) = EventLog::parse(&bytes) {
                let _ = l.replay_sha256();
                for e in &l.events { let _ = e.quorate(); }
            }
        }

        #[test]
        fn log_parser_never_panics_after_a_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = EventLog::new_sha256().header_bytes();
            bytes.extend_from_slice(&tail);
            if let Ok(l) = EventLog::parse(&bytes) {
                let _ = l.replay_sha256();
                prop_assert_eq!(l.to_bytes(), bytes);
            }
        }
    }
}
