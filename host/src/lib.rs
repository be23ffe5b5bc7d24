//! # quorate-host
//!
//! The shell around the firmware: the `quorate` daemon and CLI. It owns the
//! TPM (one thread holds the `tss_esapi::Context`), storage, sockets and
//! timers, feeds the firmware its inputs and carries out its outputs.
//!
//! - [`tpm`]: the TPM owner thread, key store, swtpm spawner, `--tpm` parsing.
//! - [`init`]: `quorate init`, provisioning a party's data dir.
//! - [`evidence`]: attestation evidence from the TPM (quote, certification, log).
//! - [`launch`]: the measured launch (PCR extends and the TCG event log).

pub mod evidence;
pub mod init;
pub mod launch;
pub mod tpm;
