//! # quorate-host
//!
//! The shell around the firmware: the `quorate` daemon and CLI. It owns the
//! TPM (one thread holds the `tss_esapi::Context`), storage, sockets and
//! timers, feeds the firmware its inputs and carries out its outputs.
//!
//! - [`tpm`]: the TPM owner thread, key store, swtpm spawner, `--tpm` parsing.
//! - [`init`]: `quorate init`, provisioning a party's data dir.
//! - [`net`]: peer transport, mutual TLS pinned to enrollment bundles.
//! - [`store`]: the redb database of decided blocks, WAL, sign guard, outbox.
//! - [`api`], [`client`]: the local HTTP API and its Rust client.
//! - [`dev`]: `quorate dev`, a local cluster in one command.

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod fsutil;
pub mod init;
pub mod net;
pub mod store;
pub mod tpm;
