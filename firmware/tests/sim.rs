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

/// An equivocating party is caught: its two conflicting votes are committed
/// as evidence, and the honest parties still agree.
#[test]
fn equivocation_is_committed_as_evidence() {
    use quorate_firmware::sim::{run, Byzantine};
    use quorate_firmware::types::FaultModel;
    let mut found = false;
    for seed in 0..20 {
        let mut cfg = SimConfig::clean(seed, 4, FaultModel::Byzantine, 6, 1);
        cfg.byzantine = vec![(1, Byzantine::Equivocate)];
        cfg.sequential = false;
        let r = run(cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        if r.evidence_blocks > 0 {
            found = true;
            break;
        }
    }
    assert!(found, "no equivocation evidence was ever committed");
}

/// Garbage from a peer is a typed error for the driver, never a panic.
#[test]
fn garbage_frames_are_refused() {
    use quorate_firmware::consensus::{ConsensusDriver, DriverConfig, Input, PeerFault};
    use quorate_firmware::sim::{cluster, party_set};
    use quorate_firmware::types::{Epoch, FaultModel, PartyId};
    let cfg = DriverConfig::new(
        cluster(),
        Epoch(0),
        PartyId(1),
        party_set(4),
        FaultModel::Byzantine,
    );
    let (mut d, _) = ConsensusDriver::new(cfg, 1_000);
    let mut x: u64 = 7;
    for len in 0..300usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect();
        // Refused in the step's faults (or, rarely, valid): never an Err.
        d.handle(
            2_000,
            Input::Peer {
                from: PartyId(2),
                bytes,
            },
        )
        .unwrap();
    }
    for stranger in [PartyId(9), PartyId(1)] {
        let step = d
            .handle(
                3_000,
                Input::Peer {
                    from: stranger,
                    bytes: vec![],
                },
            )
            .unwrap();
        assert_eq!(step.faults, vec![PeerFault::UnknownPeer(stranger)]);
    }
    assert_eq!(d.chain().height.0, 0);
}

/// An idle cluster decides nothing and signs nothing; one batch later makes
/// exactly one block.
#[test]
fn idle_cluster_signs_nothing() {
    use quorate_firmware::sim::run;
    use quorate_firmware::types::FaultModel;
    for n in [3usize, 4, 7] {
        let mut cfg = SimConfig::clean(3, n, FaultModel::Byzantine, 0, 1);
        // A "partition" with everyone on one side: no fault, but the run
        // lasts 20 simulated seconds.
        cfg.partition = Some((0, 20_000, vec![true; n]));
        let r = run(cfg).unwrap();
        assert_eq!((r.heights, r.signatures), (0, 0), "n={n}");
        assert!(r.sim_ms >= 20_000);
        let cfg = SimConfig::clean(3, n, FaultModel::Byzantine, 1, 1);
        let r = run(cfg).unwrap();
        assert_eq!(r.heights, 1, "n={n}");
    }
}

/// The same seed gives the same run, byte for byte (checked on seeds with
/// every kind of fault).
#[test]
fn runs_are_reproducible() {
    for seed in [1u64, 3, 5, 7, 11, 61] {
        let a = format!("{:?}", run_seed(seed));
        let b = format!("{:?}", run_seed(seed));
        assert_eq!(a, b, "seed {seed} is not reproducible");
    }
}

/// A party down while the others decide many heights catches up from their
/// blocks and certificates after it restarts.
#[test]
fn restarted_party_catches_up_many_heights() {
    use quorate_firmware::sim::run;
    use quorate_firmware::types::FaultModel;
    for (n, model) in [(4usize, FaultModel::Byzantine), (7, FaultModel::Majority)] {
        let mut cfg = SimConfig::clean(9, n, model, 30, 2);
        cfg.crash = Some((n - 1, 50, 20_000));
        let r = run(cfg).unwrap_or_else(|e| panic!("n={n}: {e}"));
        // One batch per block, sequential: 30 blocks, and the run may end
        // before or after the carrier block that certifies the 30th.
        assert!((30..=31).contains(&r.heights), "n={n}: {}", r.heights);
    }
}

/// The named adversary models, each over its own seeds, one line per model:
/// seeds run and violations of agreement, validity, no double sign,
/// liveness after heal, the fairness bound, idleness, block time, evidence
/// of a split view committed everywhere, and no correct party proven to
/// have signed two operations for one slot. Each model runs
/// `QUORATE_SIM_SEEDS` / 500 seeds (200 each at the soak's 100,000, 4 at
/// the default 2,100 of `make test`), or `QUORATE_SIM_MODEL_SEEDS`.
#[test]
fn seeds_part_models() {
    use quorate_firmware::sim::{run, Byzantine, SimConfig};
    let per_model = std::env::var("QUORATE_SIM_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (seeds_total() / 500).max(4));
    let columns = [
        ("agreement", "agreement violated"),
        ("validity", "validity violated"),
        ("double_sign", "signed two different"),
        ("liveness", "liveness violated"),
        ("fairness", "fairness violated"),
        ("idle", "idle violated"),
        ("block_time", "block time violated"),
        ("evidence", "evidence violated"),
        ("exclusion", "exclusion violated"),
    ];
    let mut failures = Vec::new();
    for (name, model) in Byzantine::MODELS {
        let mut counts = [0u64; 10];
        let mut max_wait = 0;
        for seed in 0..per_model {
            let cfg = SimConfig::model(seed, model);
            match run(cfg.clone()) {
                Ok(r) => max_wait = max_wait.max(r.max_wait_heights),
                Err(e) => {
                    let col = columns
                        .iter()
                        .position(|(_, m)| e.contains(m))
                        .unwrap_or(columns.len());
                    counts[col] += 1;
                    if failures.len() < 5 {
                        eprintln!("model {name} seed {seed} failed: {e}\n  config: {cfg:?}");
                    }
                    failures.push((name, seed));
                }
            }
        }
        let cols: Vec<String> = columns
            .iter()
            .zip(counts)
            .map(|((c, _), k)| format!("{c} {k}"))
            .collect();
        println!(
            "model {name:<24} seeds {per_model:>5}  {}  other {}  (max wait {max_wait} heights)",
            cols.join("  "),
            counts[columns.len()]
        );
    }
    assert!(failures.is_empty(), "failing (model, seed): {failures:?}");
}

/// A party down for many more heights than the others keep in memory
/// rejoins: its block requests are answered from the others' stores, and
/// it agrees with them on every height (odd seeds keep 2 blocks in memory).
#[test]
fn a_party_down_longer_than_the_kept_blocks_catches_up_from_the_store() {
    use quorate_firmware::sim::run;
    use quorate_firmware::types::FaultModel;
    for seed in [1u64, 3] {
        let mut cfg = SimConfig::clean(seed, 4, FaultModel::Byzantine, 30, 1);
        cfg.crash = Some((3, 50, 60_000));
        let r = run(cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(r.heights >= 30, "seed {seed}: {r:?}");
        assert!(r.served_from_store > 0, "seed {seed}: {r:?}");
    }
}

/// A party down for thousands of heights rejoins from the others' stores:
/// 5,000 heights in `make soak` (the figure, release build), 300 in
/// `make test` (`QUORATE_SIM_OUTAGE_HEIGHTS` sets it).
#[test]
fn a_party_down_for_thousands_of_heights_rejoins() {
    use quorate_firmware::sim::run;
    use quorate_firmware::types::FaultModel;
    let heights: usize = std::env::var("QUORATE_SIM_OUTAGE_HEIGHTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut cfg = SimConfig::clean(1, 4, FaultModel::Byzantine, heights, 1);
    // Down from the start until long after the last batch (heights take
    // up to about 500 simulated ms each).
    cfg.crash = Some((3, 50, 100 + heights as u64 * 1_000));
    let r = run(cfg).unwrap();
    println!("outage of {heights} heights: {r:?}");
    assert!(r.heights >= heights as u64, "{r:?}");
    // Every block it missed came from a store (2 are kept in memory).
    assert!(r.served_from_store + 2 >= heights as u64, "{r:?}");
}

/// A split view: the equivocator shows each half of its peers a different
/// vote, so no correct party receives both from it. Relayed votes meet at
/// the correct parties, and every one of them commits the evidence (the
/// model fails the run otherwise); agreement holds.
#[test]
fn split_view_equivocation_is_committed_at_every_correct_party() {
    use quorate_firmware::sim::{run, Byzantine};
    for seed in 0..6 {
        let cfg = SimConfig::model(seed, Byzantine::SplitView);
        assert!(cfg.require_evidence);
        let r = run(cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(r.evidence_blocks > 0, "seed {seed}: {r:?}");
        assert!(r.votes_relayed > 0, "seed {seed}: {r:?}");
    }
}

/// Correct parties retry operations for slots they hold (an engine retry
/// with fresh randomness, a manual verdict racing the automatic one):
/// their slot guard refuses the second, different operation, so a framer
/// holding every batch never has proof against them. Without the guard
/// the same runs hand it that proof.
#[test]
fn conflicting_retries_never_frame_a_correct_party() {
    use quorate_firmware::sim::{run, Byzantine};
    let mut refused = 0;
    let mut framed = 0;
    for seed in 0..6 {
        let cfg = SimConfig::model(seed, Byzantine::Framer);
        assert!(cfg.retries && cfg.slot_guard);
        let r = run(cfg.clone()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        refused += r.retries_refused;
        let mut unguarded = cfg;
        unguarded.slot_guard = false;
        if let Err(e) = run(unguarded) {
            assert!(e.contains("exclusion violated"), "seed {seed}: {e}");
            framed += 1;
        }
    }
    assert!(refused > 0, "no retry was ever refused");
    assert!(framed > 0, "without the guard no retry framed anyone");
}
