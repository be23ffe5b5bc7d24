//! Shared simulation harness: a "consensus" that decides pending messages
//! in a seeded random order and feeds each to every party.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, dead_code)]

use std::collections::BTreeMap;

use quorate_mpc::{Dkg, DkgFault, DkgOutput, KeyShare, PartyId, Posted, Scheme, SessionCtx};
use rand_chacha_06::rand_core::{RngCore, SeedableRng};
use rand_chacha_06::ChaCha20Rng;

pub fn ctx(scheme: Scheme, n: u16, t: u16) -> SessionCtx {
    SessionCtx {
        cluster_id: [1; 32],
        session_id: [2; 32],
        scheme,
        participants: (1..=n).map(PartyId).collect(),
        threshold: t,
    }
}

/// Runs a DKG with a random decided order; returns the log and each party's outputs.
pub fn run_dkg(
    ctx: &SessionCtx,
    fault: Option<(PartyId, DkgFault)>,
    seed: u64,
) -> (Vec<Posted>, BTreeMap<PartyId, Vec<DkgOutput>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut parties = BTreeMap::new();
    let mut pending = Vec::new();
    for &p in &ctx.participants {
        let (d, m) = match fault {
            Some((f, kind)) if f == p => {
                Dkg::start_with_fault(ctx.clone(), p, kind, &mut rng).unwrap()
            }
            _ => Dkg::start(ctx.clone(), p, &mut rng).unwrap(),
        };
        parties.insert(p, d);
        pending.push(Posted {
            round: 1,
            from: p,
            message: m,
        });
    }
    let mut log = Vec::new();
    let mut outputs: BTreeMap<PartyId, Vec<DkgOutput>> = BTreeMap::new();
    while !pending.is_empty() {
        let i = (rng.next_u64() % pending.len() as u64) as usize;
        let decided = pending.swap_remove(i);
        for (p, d) in parties.iter_mut() {
            for out in d.on_message(&decided, &mut rng).unwrap() {
                if let DkgOutput::Submit { round, message } = &out {
                    pending.push(Posted {
                        round: *round,
                        from: *p,
                        message: message.clone(),
                    });
                }
                outputs.entry(*p).or_default().push(out);
            }
        }
        log.push(decided);
    }
    (log, outputs)
}

pub fn shares(
    outputs: &BTreeMap<PartyId, Vec<DkgOutput>>,
) -> BTreeMap<PartyId, (Vec<u8>, KeyShare)> {
    outputs
        .iter()
        .filter_map(|(p, outs)| {
            outs.iter().find_map(|o| match o {
                DkgOutput::Complete {
                    group_public_key,
                    share,
                } => Some((*p, (group_public_key.clone(), share.clone()))),
                _ => None,
            })
        })
        .collect()
}

/// A completed honest DKG's shares.
pub fn keygen(scheme: Scheme, n: u16, t: u16, seed: u64) -> BTreeMap<PartyId, (Vec<u8>, KeyShare)> {
    let (_, outputs) = run_dkg(&ctx(scheme, n, t), None, seed);
    let s = shares(&outputs);
    assert_eq!(s.len(), usize::from(n));
    s
}

/// Runs a share refresh over `old` shares with a random decided order;
/// returns the log and each party's outputs.
pub fn run_refresh(
    ctx: &SessionCtx,
    old: &BTreeMap<PartyId, (Vec<u8>, KeyShare)>,
    seed: u64,
) -> (Vec<Posted>, BTreeMap<PartyId, Vec<DkgOutput>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut parties = BTreeMap::new();
    let mut pending = Vec::new();
    for &p in &ctx.participants {
        let (d, m) = Dkg::start_refresh(ctx.clone(), p, &old[&p].1, &mut rng).unwrap();
        parties.insert(p, d);
        pending.push(Posted {
            round: 1,
            from: p,
            message: m,
        });
    }
    let mut log = Vec::new();
    let mut outputs: BTreeMap<PartyId, Vec<DkgOutput>> = BTreeMap::new();
    while !pending.is_empty() {
        let i = (rng.next_u64() % pending.len() as u64) as usize;
        let decided = pending.swap_remove(i);
        for (p, d) in parties.iter_mut() {
            for out in d.on_message(&decided, &mut rng).unwrap() {
                if let DkgOutput::Submit { round, message } = &out {
                    pending.push(Posted {
                        round: *round,
                        from: *p,
                        message: message.clone(),
                    });
                }
                outputs.entry(*p).or_default().push(out);
            }
        }
        log.push(decided);
    }
    (log, outputs)
}
