//! Shared helpers for Quorate's system tests and the `make bench` and
//! `make demo` binaries.
//!
//! Each area of the system contributes a `bench_*` module whose `run`
//! function appends rows to the table printed by `quorate-bench`.

pub mod bench;
pub mod bench_attestation;
pub mod bench_audit;
pub mod bench_audit_daemon;
pub mod bench_cluster;
pub mod bench_consensus;
pub mod bench_mpc;
pub mod bench_netfault;
pub mod bench_signing;
pub mod bench_tpm;
pub mod cluster;
pub mod mpc;
pub mod netcluster;
pub mod netns;
pub mod proxy;
pub mod tpm_proxy;
