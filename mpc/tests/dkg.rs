//! Full key generations through the engine, both schemes, then a FROST
//! signing straight from the produced key shares, verified by frost and by
//! an independent library (ed25519-dalek; k256's BIP-340 `schnorr`).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test helpers: a failure is the test failing

use std::collections::BTreeMap;

mod common;

use quorate_mpc::{check_blame, BlameKind, BlameVerdict, DkgFault, DkgOutput, PartyId, Scheme};
use rand_chacha_06::rand_core::SeedableRng;
use rand_chacha_06::ChaCha20Rng;

use common::{ctx, run_dkg as run, shares};

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
