//! Measured launch, once per TPM boot.
//!
//! The first start of the daemon after a TPM reset extends the measurement
//! PCR (15 by default; 23 only in dev mode) with the SHA-256 of its own
//! executable, then with the digest of the canonical cluster configuration,
//! and records both as TCG crypto-agile events (after a Spec ID header and a
//! boot record carrying the TPM's resetCount) in `DATA_DIR/eventlog.bin`.
//! A later start within the same TPM boot finds the log for this resetCount
//! and does not extend again. Whatever happens, the PCR must equal the
//! replay of the log, or the daemon refuses to start.
//!
//! Crash safety: the log is written (fsync, rename) *before* the extends.
//! A crash between them leaves the PCR at a prefix of the log's replay; the
//! next start finishes the missing extends. A PCR that matches no prefix
//! was extended by someone else: refused.

use std::fs;
use std::path::{Path, PathBuf};

use quorate_attestation::eventlog::{reset_value, EventLog, LogEvent, QuorateEvent};
use quorate_attestation::pcr::{extend_sha256, PcrIndex};
use quorate_firmware::types::Sha256Digest;

use crate::tpm::keys::write_file_mode;
use crate::tpm::{TpmError, TpmHandle};

/// File name of the event log in the data dir.
pub const EVENT_LOG_FILE: &str = "eventlog.bin";

/// What is measured, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// The measurement PCR.
    pub pcr: PcrIndex,
    /// SHA-256 of the coordinator executable.
    pub executable: Sha256Digest,
    /// Digest of the canonical cluster configuration.
    pub config: Sha256Digest,
}

impl Measurement {
    /// The PCR value after a measured launch from a TPM reset: what the vote
    /// key's PolicyPCR expects.
    pub fn expected_pcr(&self) -> Sha256Digest {
        let v1 = extend_sha256(&reset_value(self.pcr), &self.executable);
        extend_sha256(&v1, &self.config)
    }

    /// The event log a measured launch in TPM boot `reset_count` writes.
    pub fn event_log(&self, reset_count: u32) -> EventLog {
        let mut log = EventLog::new_sha256();
        log.events.push(LogEvent::boot(reset_count));
        log.events
            .push(LogEvent::executable(self.pcr, &self.executable));
        log.events.push(LogEvent::config(self.pcr, &self.config));
        log
    }
}

/// What the launch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchOutcome {
    /// First start in this TPM boot: the PCR was extended and the log written.
    Measured,
    /// This TPM boot was already measured with the same executable and
    /// configuration: nothing extended.
    AlreadyMeasured,
    /// An earlier launch in this boot was interrupted between writing the
    /// log and extending: the missing extends (this many) were done.
    Resumed(usize),
}

/// The result of a launch.
#[derive(Debug, Clone)]
pub struct LaunchReport {
    /// What was done.
    pub outcome: LaunchOutcome,
    /// The TPM's resetCount (the boot the log belongs to).
    pub reset_count: u32,
    /// The measurement PCR's value, equal to the log's replay.
    pub pcr_value: Sha256Digest,
    /// The log's path.
    pub log_path: PathBuf,
}

/// Why the launch refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// PCR 23 (resettable) or another non-default PCR without dev mode.
    #[error("measurement {pcr} is allowed only in dev mode (--dev); production uses PCR 15, which cannot be reset without a reboot")]
    NeedsDev {
        /// The PCR asked for.
        pcr: PcrIndex,
    },
    /// The log file cannot be read, parsed or written.
    #[error("event log {}: {reason}", path.display())]
    Log {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// This TPM boot was measured with another executable or configuration.
    #[error("this TPM boot (resetCount {reset_count}) already measured {what} {logged} into {pcr}, \
             but this start has {running}: the PCR cannot be rolled back; reboot the machine (TPM reset) to run it")]
    AlreadyMeasuredOther {
        /// "executable" or "configuration".
        what: &'static str,
        /// The PCR.
        pcr: PcrIndex,
        /// The TPM boot.
        reset_count: u32,
        /// The digest in the log.
        logged: Sha256Digest,
        /// The digest of this start.
        running: Sha256Digest,
    },
    /// The PCR does not replay from the log (nor from any prefix of it).
    #[error("{pcr} holds {found}, but the event log {} replays to {replayed}: \
             something else extended it or the log was altered; refusing to start", path.display())]
    PcrMismatch {
        /// The PCR.
        pcr: PcrIndex,
        /// Its value.
        found: Sha256Digest,
        /// The log's replay.
        replayed: Sha256Digest,
        /// The log.
        path: PathBuf,
    },
    /// No log for this boot, but the PCR is not at its reset value.
    #[error("{pcr} holds {found} although this TPM boot (resetCount {reset_count}) has no Quorate event log: \
             something else extended it; refusing to start (reboot to reset it)")]
    PcrNotFresh {
        /// The PCR.
        pcr: PcrIndex,
        /// Its value.
        found: Sha256Digest,
        /// The TPM boot.
        reset_count: u32,
    },
}

/// SHA-256 of a file (e.g. the executable: `/proc/self/exe`).
pub fn file_digest(path: &Path) -> std::io::Result<Sha256Digest> {
    Ok(Sha256Digest::of(&fs::read(path)?))
}

/// Runs the measured launch for the party in `data_dir` (see the module
/// docs). The TPM handle must have an AK set (for the resetCount).
pub async fn measured_launch(
    tpm: &TpmHandle,
    data_dir: &Path,
    m: &Measurement,
    dev: bool,
) -> Result<LaunchReport, LaunchError> {
    if m.pcr != PcrIndex::DEFAULT_MEASUREMENT {
        if !dev {
            return Err(LaunchError::NeedsDev { pcr: m.pcr });
        }
        tracing::warn!(
            pcr = m.pcr.get(),
            "DEV MODE: measuring into PCR {} instead of 15; this party's attestation proves nothing",
            m.pcr.get()
        );
    }
    let pcr = m.pcr.get();
    let path = data_dir.join(EVENT_LOG_FILE);
    let reset_count = tpm.reset_count().await?;
    let read_pcr = || async { Ok::<_, TpmError>(Sha256Digest(tpm.pcr_read(pcr).await?)) };

    let existing = read_log(&path)?;
    let outcome = match existing.filter(|(rc, _)| *rc == reset_count) {
        Some((_, log)) => {
            check_same_measurement(&log, m, reset_count, &path)?;
            let v0 = reset_value(m.pcr);
            let v1 = extend_sha256(&v0, &m.executable);
            let v2 = extend_sha256(&v1, &m.config);
            let found = read_pcr().await?;
            if found == v2 {
                LaunchOutcome::AlreadyMeasured
            } else if found == v1 {
                tpm.pcr_extend(pcr, m.config.0).await?;
                LaunchOutcome::Resumed(1)
            } else if found == v0 {
                tpm.pcr_extend(pcr, m.executable.0).await?;
                tpm.pcr_extend(pcr, m.config.0).await?;
                LaunchOutcome::Resumed(2)
            } else {
                return Err(LaunchError::PcrMismatch {
                    pcr: m.pcr,
                    found,
                    replayed: v2,
                    path,
                });
            }
        }
        None => {
            let found = read_pcr().await?;
            if found != reset_value(m.pcr) {
                return Err(LaunchError::PcrNotFresh {
                    pcr: m.pcr,
                    found,
                    reset_count,
                });
            }
            let bytes = m.event_log(reset_count).to_bytes();
            write_file_mode(&path, &bytes, 0o644).map_err(|e| LaunchError::Log {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            tpm.pcr_extend(pcr, m.executable.0).await?;
            tpm.pcr_extend(pcr, m.config.0).await?;
            LaunchOutcome::Measured
        }
    };

    // Whatever path was taken, the PCR must now replay from the log on disk.
    let log = read_log(&path)?
        .ok_or_else(|| LaunchError::Log {
            path: path.clone(),
            reason: "missing after the launch".into(),
        })?
        .1;
    let replayed = log
        .replay_sha256()
        .map_err(|e| LaunchError::Log {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .get(&m.pcr)
        .copied()
        .unwrap_or_else(|| reset_value(m.pcr));
    let found = read_pcr().await?;
    if found != replayed {
        return Err(LaunchError::PcrMismatch {
            pcr: m.pcr,
            found,
            replayed,
            path,
        });
    }
    Ok(LaunchReport {
        outcome,
        reset_count,
        pcr_value: found,
        log_path: path,
    })
}

/// The log and the resetCount of its boot record; `None` if there is no log.
fn read_log(path: &Path) -> Result<Option<(u32, EventLog)>, LaunchError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LaunchError::Log {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let bad = |reason: String| LaunchError::Log {
        path: path.to_owned(),
        reason,
    };
    let log = EventLog::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    let rc = log
        .events
        .iter()
        .find_map(|e| match e.quorate() {
            Some(QuorateEvent::Boot { reset_count }) => Some(reset_count),
            _ => None,
        })
        .ok_or_else(|| bad("no Quorate boot record (resetCount)".into()))?;
    Ok(Some((rc, log)))
}

/// The log of this boot must hold exactly this launch's events.
fn check_same_measurement(
    log: &EventLog,
    m: &Measurement,
    reset_count: u32,
    path: &Path,
) -> Result<(), LaunchError> {
    let extended: Vec<_> = log
        .events
        .iter()
        .filter(|e| !matches!(e.quorate(), Some(QuorateEvent::Boot { .. })))
        .collect();
    let bad = |reason: &str| LaunchError::Log {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let [exe, cfg] = extended.as_slice() else {
        return Err(bad(
            "expected exactly two measurement events (executable, configuration)",
        ));
    };
    if exe.pcr_index != u32::from(m.pcr.get()) || cfg.pcr_index != u32::from(m.pcr.get()) {
        return Err(bad("its events extend another PCR than the configured one"));
    }
    for (event, what, running) in [
        (exe, "executable", m.executable),
        (cfg, "configuration", m.config),
    ] {
        let logged = match (what, event.quorate()) {
            ("executable", Some(QuorateEvent::Executable(d))) => d,
            ("configuration", Some(QuorateEvent::Config(d))) => d,
            _ => {
                return Err(bad(
                    "its events are not Quorate measurement events in order",
                ))
            }
        };
        if event.sha256() != Some(logged) {
            return Err(bad("an event's digest differs from its data"));
        }
        if logged != running {
            return Err(LaunchError::AlreadyMeasuredOther {
                what,
                pcr: m.pcr,
                reset_count,
                logged,
                running,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_pcr_is_the_logs_replay() {
        let m = Measurement {
            pcr: PcrIndex::DEFAULT_MEASUREMENT,
            executable: Sha256Digest([1; 32]),
            config: Sha256Digest([2; 32]),
        };
        let log = m.event_log(4);
        let replay = log.replay_sha256().unwrap();
        assert_eq!(replay.get(&m.pcr), Some(&m.expected_pcr()));
        let parsed = EventLog::parse(&log.to_bytes()).unwrap();
        assert_eq!(parsed, log);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(EVENT_LOG_FILE);
        fs::write(&p, log.to_bytes()).unwrap();
        let (rc, back) = read_log(&p).unwrap().unwrap();
        assert_eq!(rc, 4);
        check_same_measurement(&back, &m, 4, &p).unwrap();
        let other = Measurement {
            executable: Sha256Digest([3; 32]),
            ..m
        };
        assert!(matches!(
            check_same_measurement(&back, &other, 4, &p),
            Err(LaunchError::AlreadyMeasuredOther {
                what: "executable",
                ..
            })
        ));
    }
}
