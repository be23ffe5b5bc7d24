//! The MPC engine's decoders (round-1 broadcast, sealed share, signing
//! messages, key share), `check_blame` with an arbitrary proof over a real
//! log, and `Dkg::on_message` / `Signer::on_message` fed arbitrary round
//! messages from a participant after a real round 1: never panic; every
//! refusal is a typed error or a blame.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use quorate_mpc::{
    check_blame, decode_round1_broadcast, decode_sealed_share, decode_signing_message, Dkg, DkgOutput, KeyShare,
    PartyId, Posted, RoundMessage, Scheme, SessionCtx, Signer, SigningCtx,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn ctx(scheme: Scheme) -> SessionCtx {
    SessionCtx {
        cluster_id: [1; 32],
        session_id: [2; 32],
        scheme,
        participants: vec![PartyId(1), PartyId(2), PartyId(3)],
        threshold: 2,
    }
}

/// Splits fuzz bytes into a round message: a broadcast and direct parts.
fn message(data: &[u8]) -> RoundMessage {
    let mut parts = data.split(|b| *b == 0xFF);
    let broadcast = parts.next().filter(|b| !b.is_empty()).map(<[u8]>::to_vec);
    let mut direct = BTreeMap::new();
    for (i, p) in parts.enumerate().take(4) {
        direct.insert(PartyId(i as u16 + 1), p.to_vec());
    }
    RoundMessage { broadcast, direct }
}

/// Party 1's DKG after an honest round 1, with the round-1 log.
fn after_round1(scheme: Scheme) -> (Dkg, Vec<Posted>, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let c = ctx(scheme);
    let mut log = Vec::new();
    let mut first = None;
    for p in c.participants.clone() {
        let (d, m) = Dkg::start(c.clone(), p, &mut rng).unwrap();
        if first.is_none() {
            first = Some(d);
        }
        log.push(Posted { round: 1, from: p, message: m });
    }
    let mut d = first.unwrap();
    for p in &log {
        d.on_message(p, &mut rng).unwrap();
    }
    (d, log, rng)
}

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else { return };
    let scheme = if selector & 1 == 0 { Scheme::Ed25519 } else { Scheme::Secp256k1Tr };
    match selector >> 1 & 7 {
        0 => {
            let _ = decode_round1_broadcast(scheme, rest);
        }
        1 => {
            let _ = decode_sealed_share(rest);
        }
        2 => {
            let _ = decode_signing_message(scheme, rest);
        }
        3 => {
            let (secret, public) = rest.split_at(rest.len().min(32));
            let _ = KeyShare::from_parts(scheme, secret, public);
        }
        4 => {
            // A fresh party 1 fed an arbitrary round-1 message from party 2.
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            let (mut d, _) = Dkg::start(ctx(scheme), PartyId(1), &mut rng).unwrap();
            let _ = d.on_message(&Posted { round: 1, from: PartyId(2), message: message(rest) }, &mut rng);
        }
        5 => {
            // After an honest round 1: arbitrary round-2 message from party 2,
            // then check_blame of every blame the engine emits.
            let (mut d, mut log, mut rng) = after_round1(scheme);
            let posted = Posted { round: 2, from: PartyId(2), message: message(rest) };
            if let Ok(outs) = d.on_message(&posted, &mut rng) {
                log.push(posted);
                for o in outs {
                    if let DkgOutput::Blame { culprit, proof, .. } = o {
                        let _ = check_blame(&ctx(scheme), &log, PartyId(1), culprit, &proof);
                    }
                }
            }
        }
        6 => {
            // check_blame with an arbitrary proof over a real round-1 log.
            let (_, log, _) = after_round1(scheme);
            let _ = check_blame(&ctx(scheme), &log, PartyId(1), PartyId(2), rest);
        }
        _ => {
            // A signer (after a real key generation, its commitments decided)
            // fed an arbitrary signing message from party 2 in round 1 or 2.
            let shares = &keys()[usize::from(scheme == Scheme::Secp256k1Tr)];
            let c = SigningCtx {
                cluster_id: [1; 32],
                session_id: [3; 32],
                scheme,
                candidates: vec![PartyId(1), PartyId(2), PartyId(3)],
                threshold: 2,
                message: vec![0; 32],
                taproot: None,
                public_key_package: shares[0].public_key_package().unwrap(),
            };
            let mut rng = ChaCha20Rng::seed_from_u64(3);
            let (mut s1, m1) = Signer::start(c.clone(), PartyId(1), &shares[0], &mut rng).unwrap();
            let (_, m3) = Signer::start(c, PartyId(3), &shares[2], &mut rng).unwrap();
            s1.on_message(&Posted { round: 1, from: PartyId(1), message: m1 }, &mut rng).unwrap();
            let round = u32::from(rest.first().copied().unwrap_or(0) & 1) + 1;
            let _ = s1.on_message(&Posted { round, from: PartyId(2), message: message(rest) }, &mut rng);
            let _ = s1.on_message(&Posted { round: 1, from: PartyId(3), message: m3 }, &mut rng);
        }
    }
});

/// One 2-of-3 key per scheme, generated once.
fn keys() -> &'static [Vec<KeyShare>; 2] {
    static K: OnceLock<[Vec<KeyShare>; 2]> = OnceLock::new();
    K.get_or_init(|| [keygen(Scheme::Ed25519), keygen(Scheme::Secp256k1Tr)])
}

fn keygen(scheme: Scheme) -> Vec<KeyShare> {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let c = ctx(scheme);
    let mut parties = Vec::new();
    let mut log = Vec::new();
    for p in c.participants.clone() {
        let (d, m) = Dkg::start(c.clone(), p, &mut rng).unwrap();
        parties.push((p, d));
        log.push(Posted { round: 1, from: p, message: m });
    }
    let mut shares = Vec::new();
    let mut i = 0;
    while i < log.len() {
        let posted = log[i].clone();
        for (p, d) in parties.iter_mut() {
            for o in d.on_message(&posted, &mut rng).unwrap() {
                match o {
                    DkgOutput::Submit { round, message } => log.push(Posted { round, from: *p, message }),
                    DkgOutput::Complete { share, .. } => shares.push(share),
                    DkgOutput::Blame { .. } => unreachable!("honest key generation"),
                }
            }
        }
        i += 1;
    }
    shares
}
