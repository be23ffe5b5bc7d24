//! Deterministic simulation over many seeds (see `quorate_firmware::sim`).
//! Each seed picks n in {3, 4, 7}, the fault model and the fault schedule.
//! A failing seed prints a one-line command that reproduces it.
//!
//! `QUORATE_SIM_SEEDS` sets how many seeds each test runs (default: 2,100 in
//! total); `make soak` sets it for 100,000.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_firmware::sim::{run_seed, SimConfig};

fn seeds_total() -> u64 {
    std::env::var("QUORATE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2100)
}

/// Runs every seed s in [0, total) with s % parts == part.
fn run_part(part: u64, parts: u64) {
    let base: u64 = std::env::var("QUORATE_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let total = seeds_total();
    let mut failures = Vec::new();
    let mut seed = base + part;
    while seed < base + total {
        if let Err(e) = run_seed(seed) {
            eprintln!("{e}");
            failures.push(seed);
            if failures.len() >= 5 {
                break;
            }
        }
        seed += parts;
    }
    assert!(
        failures.is_empty(),
        "failing seeds: {failures:?} (commands above)"
    );
}

#[test]
fn seeds_part_0() {
    run_part(0, 4);
}
#[test]
fn seeds_part_1() {
    run_part(1, 4);
}
#[test]
fn seeds_part_2() {
    run_part(2, 4);
}
#[test]
fn seeds_part_3() {
    run_part(3, 4);
}

/// Reproduces one seed: `QUORATE_SIM_SEED=<seed> cargo test -p quorate-firmware --features sim --test sim -- one_seed`.
#[test]
fn one_seed() {
    let Some(seed) = std::env::var("QUORATE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    println!("{:?}", SimConfig::from_seed(seed));
    match run_seed(seed) {
        Ok(r) => println!("seed {seed} passed: {r:?}"),
        Err(e) => panic!("{e}"),
    }
}
