//! # quorate-host
//!
//! The shell around the firmware: the `quorate` daemon and CLI. It owns the
//! TPM (one thread holds the `tss_esapi::Context`), storage, sockets and
//! timers, feeds the firmware its inputs and carries out its outputs.
//!
//! - [`tpm`]: the TPM owner thread, key store, swtpm spawner, `--tpm` parsing.
//! - [`init`]: `quorate init`, provisioning a party's data dir.
//! - [`launch`]: the measured launch (PCR extends and the TCG event log).
//! - [`evidence`]: attestation evidence from the TPM (quote, certification, log).
//! - [`config`]: the party's configuration file and the cluster's identity.
//! - [`net`]: peer transport, mutual TLS pinned to enrollment bundles.
//! - [`store`]: the redb database of decided blocks, WAL, sign guard, outbox.
//! - [`daemon`]: `quorate run`, the event loop driving the firmware.
//! - [`api`], [`api_tls`], [`client`]: the party's local HTTP API, its optional TLS, and its client.
//! - [`dev`]: `quorate dev`, a local cluster in one command.
//! - [`audit`]: `quorate audit export` / `verify`: the audit bundle and its offline check.
//! - [`measurement`]: the measurement an attestation record claims, for the audit ledger.

pub mod api;
pub mod api_tls;
pub mod attest_cli;
pub mod audit;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod engine;
pub mod enroll_cli;
pub mod evidence;
pub mod fsutil;
pub mod init;
pub mod launch;
pub mod measure;
pub mod measurement;
pub mod net;
pub mod sign_watch;
pub mod signing;
pub mod store;
pub mod tpm;
