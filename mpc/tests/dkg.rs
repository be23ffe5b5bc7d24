//! Full key generations through the engine, both schemes, then a FROST
//! signing straight from the produced key shares, verified by frost and by
//! an independent library (ed25519-dalek; k256's BIP-340 `schnorr`).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test helpers: a failure is the test failing

use std::collections::BTreeMap;

use quorate_mpc::{
    check_blame, BlameKind, BlameVerdict, Dkg, DkgFault, DkgOutput, KeyShare, PartyId, Posted,
    Scheme, SessionCtx,
};
use rand_chacha_06::rand_core::{RngCore, SeedableRng};
use rand_chacha_06::ChaCha20Rng;

fn ctx(scheme: Scheme, n: u16, t: u16) -> SessionCtx {
    SessionCtx {
        cluster_id: [1; 32],
        session_id: [2; 32],
        scheme,
        participants: (1..=n).map(PartyId).collect(),
        threshold: t,
    }
}

/// Runs a DKG with a random decided order; returns the log and each party's outputs.
fn run(
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

fn shares(outputs: &BTreeMap<PartyId, Vec<DkgOutput>>) -> BTreeMap<PartyId, (Vec<u8>, KeyShare)> {
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

/// Signs `msg` with the first `t` shares using frost directly (not the
/// engine's signer), to show the generated key works.
macro_rules! frost_sign {
    ($frost:ident, $shares:expr, $t:expr, $msg:expr, $rng:expr) => {{
        use $frost as f;
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        let mut kps = BTreeMap::new();
        let mut pkp = None;
        for (p, (_, share)) in $shares.iter().take($t) {
            let id = f::Identifier::try_from(p.0).unwrap();
            let ss = f::keys::SigningShare::deserialize(&share.secret).unwrap();
            let pk = f::keys::PublicKeyPackage::deserialize(&share.public_key_package().unwrap())
                .unwrap();
            let kp = f::keys::KeyPackage::new(
                id,
                ss,
                f::keys::VerifyingShare::from(ss),
                *pk.verifying_key(),
                $t as u16,
            );
            let (n, c) = f::round1::commit(kp.signing_share(), $rng);
            nonces.insert(id, n);
            commitments.insert(id, c);
            kps.insert(id, kp);
            pkp = Some(pk);
        }
        let pkp = pkp.unwrap();
        let package = f::SigningPackage::new(commitments, $msg);
        let mut sig_shares = BTreeMap::new();
        for (id, kp) in &kps {
            sig_shares.insert(*id, f::round2::sign(&package, &nonces[id], kp).unwrap());
        }
        let sig = f::aggregate(&package, &sig_shares, &pkp).unwrap();
        pkp.verifying_key().verify($msg, &sig).unwrap();
        sig.serialize().unwrap()
    }};
}

#[test]
fn three_of_four_dkg_both_schemes_signs_and_verifies_independently() {
    for (seed, scheme) in [(1u64, Scheme::Ed25519), (2, Scheme::Secp256k1Tr)] {
        let c = ctx(scheme, 4, 3);
        let (log, outputs) = run(&c, None, seed);
        let done = shares(&outputs);
        assert_eq!(done.len(), 4, "{scheme:?}: all four complete");
        let key = done[&PartyId(1)].0.clone();
        assert!(done.values().all(|(k, _)| *k == key));
        assert_eq!(key.len(), 32);
        // No plaintext share in any round-2 part of the log.
        for posted in log.iter().filter(|p| p.round == 2) {
            for (to, ct) in &posted.message.direct {
                let secret = &done[to].1.secret;
                assert!(!ct.windows(secret.len()).any(|w| w == secret.as_slice()));
            }
        }
        let mut rng = ChaCha20Rng::seed_from_u64(seed + 100);
        match scheme {
            Scheme::Ed25519 => {
                let msg = b"quorate dkg smoke";
                let sig = frost_sign!(frost_ed25519, done, 3, msg, &mut rng);
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.clone().try_into().unwrap())
                    .unwrap();
                let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
                vk.verify_strict(msg, &sig).expect("ed25519-dalek verifies");
            }
            Scheme::Secp256k1Tr => {
                let digest = [0x42u8; 32];
                let sig = frost_sign!(frost_secp256k1_tr, done, 3, &digest, &mut rng);
                let vk = k256::schnorr::VerifyingKey::from_bytes(&key).unwrap();
                let sig = k256::schnorr::Signature::try_from(sig.as_slice()).unwrap();
                use k256::schnorr::signature::hazmat::PrehashVerifier;
                vk.verify_prehash(&digest, &sig)
                    .expect("k256 BIP-340 verifies");
            }
        }
    }
}

#[test]
fn seven_party_dkg_with_a_bad_dealer_names_it_with_proof() {
    for scheme in Scheme::ALL {
        let c = ctx(scheme, 7, 4);
        let (log, outputs) = run(&c, Some((PartyId(3), DkgFault::BadShareTo(PartyId(6)))), 9);
        let blames: Vec<_> = outputs
            .iter()
            .flat_map(|(p, outs)| outs.iter().map(move |o| (*p, o)))
            .filter_map(|(p, o)| match o {
                DkgOutput::Blame {
                    culprit,
                    kind,
                    proof,
                } => Some((p, *culprit, *kind, proof.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(blames.len(), 1);
        let (accuser, culprit, kind, proof) = &blames[0];
        assert_eq!(
            (*accuser, *culprit, *kind),
            (PartyId(6), PartyId(3), BlameKind::InvalidSecretShare)
        );
        // Every party (and an auditor) reaches the same verdict from the log.
        for _ in &c.participants {
            assert_eq!(
                check_blame(&c, &log, PartyId(6), PartyId(3), proof),
                Ok(BlameVerdict::Culprit(BlameKind::InvalidSecretShare))
            );
        }
        assert_eq!(
            shares(&outputs).len(),
            6,
            "everyone but the victim completes; the firmware's agreement rule fails the session"
        );
    }
}
