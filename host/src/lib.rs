//! # quorate-host
//!
//! The shell around the firmware: the `quorate` daemon and CLI. It owns the
//! TPM (one thread holds the `tss_esapi::Context`), storage, sockets and
//! timers, feeds the firmware its inputs and carries out its outputs.

pub mod fsutil;
pub mod net;
pub mod store;
