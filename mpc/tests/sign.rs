//! Signing sessions through the engine after a real DKG: both schemes, the
//! Taproot tweak, a silent candidate, a cheating candidate and a restored
//! signer; every signature checked by frost's own verify (inside the
//! engine's aggregate) and by an independent library.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // a failure is the test failing

use std::collections::{BTreeMap, BTreeSet};

mod common;

use proptest::prelude::*;
use quorate_mpc::{
    EngineError, KeyShare, PartyId, Posted, Roast, RoastEvent, Scheme, SignBlameKind, SignOutput,
    Signer, SigningCtx, TaprootTweak,
};
use rand_chacha_06::rand_core::{RngCore, SeedableRng};
use rand_chacha_06::ChaCha20Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    /// Posts its commitments, then never answers a selection.
    Silent,
    /// Posts an invalid share when selected.
    Cheat,
}

fn signing_ctx(
    scheme: Scheme,
    shares: &BTreeMap<PartyId, (Vec<u8>, KeyShare)>,
    t: u16,
    taproot: Option<TaprootTweak>,
) -> SigningCtx {
    let any = &shares.values().next().unwrap().1;
    SigningCtx {
        cluster_id: [1; 32],
        session_id: [3; 32],
        scheme,
        candidates: shares.keys().copied().collect(),
        threshold: t,
        message: match scheme {
            Scheme::Ed25519 => b"pay 1 coin to alice".to_vec(),
            Scheme::Secp256k1Tr => [0x5A; 32].to_vec(),
        },
        taproot,
        public_key_package: any.public_key_package().unwrap(),
    }
}

struct Outcome {
    /// Each party's signature event (attempt, signature, key).
    signatures: BTreeMap<PartyId, (u32, Vec<u8>, Vec<u8>)>,
    /// The observer's (a non-candidate's) coordinator events.
    observer: Vec<RoastEvent>,
    log: Vec<Posted>,
    nonce_marks: BTreeMap<PartyId, BTreeSet<u32>>,
}

/// Runs a signing session: a consensus decides pending messages in a
/// random order; when nothing is pending and no signature exists, it
/// decides the deadline of the open attempt's share round.
fn run_signing(
    ctx: &SigningCtx,
    shares: &BTreeMap<PartyId, (Vec<u8>, KeyShare)>,
    behaviour: &BTreeMap<PartyId, Behaviour>,
    seed: u64,
) -> Outcome {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut signers = BTreeMap::new();
    let mut pending = Vec::new();
    for (p, (_, share)) in shares {
        let (s, m) = Signer::start(ctx.clone(), *p, share, &mut rng).unwrap();
        signers.insert(*p, s);
        pending.push(Posted {
            round: 1,
            from: *p,
            message: m,
        });
    }
    let mut observer = Roast::new(ctx.clone()).unwrap();
    let mut observed = Vec::new();
    let mut log = Vec::new();
    let mut signatures = BTreeMap::new();
    let mut nonce_marks: BTreeMap<PartyId, BTreeSet<u32>> = BTreeMap::new();
    let mut open_round = None;
    let mut deadlines = 0;
    loop {
        let mut outputs = Vec::new();
        if pending.is_empty() {
            let Some(r) = open_round.take() else { break };
            if signatures.len() == shares.len() || deadlines > 10 {
                break;
            }
            deadlines += 1;
            for (p, s) in signers.iter_mut() {
                outputs.push((*p, s.on_round_deadline(r, &mut rng).unwrap()));
            }
            observed.extend(observer.on_deadline(r));
        } else {
            let i = (rng.next_u64() % pending.len() as u64) as usize;
            let decided: Posted = pending.swap_remove(i);
            for (p, s) in signers.iter_mut() {
                outputs.push((*p, s.on_message(&decided, &mut rng).unwrap()));
            }
            observed.extend(observer.on_message(&decided).unwrap());
            log.push(decided);
        }
        for (p, outs) in outputs {
            let mut persisted = None;
            for o in outs {
                match o {
                    SignOutput::NonceUsed { slot, .. } => {
                        assert!(
                            nonce_marks.entry(p).or_default().insert(slot),
                            "slot used twice"
                        );
                        persisted = Some(slot);
                    }
                    SignOutput::Submit { round, mut message } => {
                        assert!(persisted.is_some(), "a share left before NonceUsed");
                        match behaviour.get(&p).copied().unwrap_or(Behaviour::Honest) {
                            Behaviour::Honest => {}
                            Behaviour::Silent => continue,
                            Behaviour::Cheat => Signer::corrupt_next_share(&mut message),
                        }
                        pending.push(Posted {
                            round,
                            from: p,
                            message,
                        });
                    }
                    SignOutput::Roast(RoastEvent::AttemptStarted { attempt, .. }) => {
                        open_round = Some(attempt + 1)
                    }
                    SignOutput::Roast(RoastEvent::Signature {
                        attempt,
                        signature,
                        verifying_key,
                    }) => {
                        signatures.insert(p, (attempt, signature, verifying_key));
                    }
                    _ => {}
                }
            }
        }
    }
    Outcome {
        signatures,
        observer: observed,
        log,
        nonce_marks,
    }
}

fn verify_independently(scheme: Scheme, key: &[u8], msg: &[u8], sig: &[u8]) {
    assert_eq!(sig.len(), 64);
    match scheme {
        Scheme::Ed25519 => {
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.try_into().unwrap()).unwrap();
            vk.verify_strict(msg, &ed25519_dalek::Signature::from_slice(sig).unwrap())
                .expect("ed25519-dalek");
        }
        Scheme::Secp256k1Tr => {
            use k256::schnorr::signature::hazmat::PrehashVerifier;
            let vk = k256::schnorr::VerifyingKey::from_bytes(key).unwrap();
            vk.verify_prehash(msg, &k256::schnorr::Signature::try_from(sig).unwrap())
                .expect("k256 BIP-340");
        }
    }
}

fn one_signature(ctx: &SigningCtx, o: &Outcome) -> (u32, Vec<u8>, Vec<u8>) {
    assert_eq!(
        o.signatures.len(),
        ctx.candidates.len(),
        "every party learns the signature"
    );
    let first = o.signatures.values().next().unwrap().clone();
    assert!(
        o.signatures.values().all(|s| *s == first),
        "identical at every party"
    );
    let observer_sig = o.observer.iter().find_map(|e| match e {
        RoastEvent::Signature {
            attempt,
            signature,
            verifying_key,
        } => Some((*attempt, signature.clone(), verifying_key.clone())),
        _ => None,
    });
    assert_eq!(
        observer_sig.as_ref(),
        Some(&first),
        "a non-candidate computes the same"
    );
    verify_independently(ctx.scheme, &first.2, &ctx.message, &first.1);
    first
}

#[test]
fn honest_signing_both_schemes_and_taproot() {
    for (scheme, taproot) in [
        (Scheme::Ed25519, None),
        (Scheme::Secp256k1Tr, None),
        (
            Scheme::Secp256k1Tr,
            Some(TaprootTweak { merkle_root: None }),
        ),
        (
            Scheme::Secp256k1Tr,
            Some(TaprootTweak {
                merkle_root: Some([7; 32]),
            }),
        ),
    ] {
        let shares = common::keygen(scheme, 4, 3, 40);
        let ctx = signing_ctx(scheme, &shares, 3, taproot);
        let o = run_signing(&ctx, &shares, &BTreeMap::new(), 41);
        let (attempt, _, key) = one_signature(&ctx, &o);
        assert_eq!(attempt, 1);
        let group = &shares.values().next().unwrap().0;
        assert_eq!(
            &key == group,
            taproot.is_none(),
            "an untweaked signature verifies under the session's group key"
        );
    }
}

#[test]
fn a_silent_candidate_is_suspected_and_roast_finishes_within_two_deadlines() {
    for scheme in Scheme::ALL {
        let shares = common::keygen(scheme, 4, 3, 50);
        let ctx = signing_ctx(scheme, &shares, 3, None);
        let mut retried = 0;
        for silent in 1..=4u16 {
            let behaviour = BTreeMap::from([(PartyId(silent), Behaviour::Silent)]);
            let o = run_signing(&ctx, &shares, &behaviour, 51 + u64::from(silent));
            let (attempt, ..) = one_signature(&ctx, &o);
            let suspected: Vec<_> = o
                .observer
                .iter()
                .filter_map(|e| match e {
                    RoastEvent::Suspected { parties, .. } => Some(parties.clone()),
                    _ => None,
                })
                .collect();
            assert!(attempt <= 2, "at most one failed attempt");
            if attempt == 2 {
                assert_eq!(suspected, vec![vec![PartyId(silent)]]);
                retried += 1;
            } else {
                assert!(suspected.is_empty());
            }
        }
        assert!(
            retried >= 3,
            "3 of 4 are selected first, so at least 3 runs need a second attempt"
        );
    }
}

#[test]
fn a_cheating_candidate_is_named_with_its_share_and_the_signature_still_comes() {
    for scheme in Scheme::ALL {
        let shares = common::keygen(scheme, 5, 3, 60);
        let ctx = signing_ctx(scheme, &shares, 3, None);
        let mut caught = 0;
        for cheat in 1..=5u16 {
            let behaviour = BTreeMap::from([(PartyId(cheat), Behaviour::Cheat)]);
            let o = run_signing(&ctx, &shares, &behaviour, 61 + u64::from(cheat));
            let (attempt, ..) = one_signature(&ctx, &o);
            let blames: Vec<_> = o
                .observer
                .iter()
                .filter_map(|e| match e {
                    RoastEvent::Blame {
                        culprit,
                        kind,
                        proof,
                        ..
                    } => Some((*culprit, *kind, proof.clone())),
                    _ => None,
                })
                .collect();
            let selected_first = o.observer.iter().any(|e| {
                matches!(e, RoastEvent::AttemptStarted { attempt: 1, signers } if signers.contains_key(&PartyId(cheat)))
            });
            if selected_first {
                caught += 1;
                assert_eq!(blames.len(), 1);
                assert_eq!(
                    (blames[0].0, blames[0].1),
                    (PartyId(cheat), SignBlameKind::InvalidShare)
                );
                assert!(!blames[0].2.is_empty(), "the share is the proof");
                assert_eq!(attempt, 2);
                // The cheater is never selected again.
                assert!(!o.observer.iter().any(|e| {
                    matches!(e, RoastEvent::AttemptStarted { attempt: 2, signers } if signers.contains_key(&PartyId(cheat)))
                }));
            } else {
                assert!(blames.is_empty());
                assert_eq!(attempt, 1);
            }
        }
        assert!(
            caught >= 3,
            "{scheme:?}: 3 of 5 are selected first, so at least 3 runs catch the cheater"
        );
    }
}

#[test]
fn a_restored_signer_never_reuses_a_nonce() {
    let scheme = Scheme::Ed25519;
    let shares = common::keygen(scheme, 3, 2, 70);
    let ctx = signing_ctx(scheme, &shares, 2, None);
    let o = run_signing(&ctx, &shares, &BTreeMap::new(), 71);
    one_signature(&ctx, &o);
    // Party 1 restarts (or is restored from a backup) with its persisted marks
    // and replays the log: it follows the coordinator but posts no share.
    let (p, marks) = o
        .nonce_marks
        .iter()
        .next()
        .map(|(p, m)| (*p, m.clone()))
        .unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(72);
    for used in [marks.clone(), BTreeSet::new()] {
        let mut restored = Signer::restore(ctx.clone(), p, &shares[&p].1, used.clone()).unwrap();
        let mut refused = Vec::new();
        for posted in &o.log {
            for out in restored.on_message(posted, &mut rng).unwrap() {
                match out {
                    SignOutput::Submit { .. } | SignOutput::NonceUsed { .. } => {
                        panic!("a restored signer signed")
                    }
                    SignOutput::CannotSign { error, .. } => refused.push(error),
                    _ => {}
                }
            }
        }
        let want = if used.is_empty() {
            EngineError::NoNonce { attempt: 1 }
        } else {
            EngineError::NonceReused { attempt: 1 }
        };
        assert_eq!(refused, vec![want]);
    }
}

#[test]
fn bad_signing_input_is_refused_with_a_typed_reason() {
    let scheme = Scheme::Secp256k1Tr;
    let shares = common::keygen(scheme, 3, 2, 80);
    let mut ctx = signing_ctx(scheme, &shares, 2, None);
    let mut rng = ChaCha20Rng::seed_from_u64(81);
    // A digest of the wrong length.
    let mut short = ctx.clone();
    short.message = vec![1; 31];
    assert!(matches!(
        Roast::new(short),
        Err(EngineError::InvalidContext(
            quorate_mpc::ContextProblem::MessageLength
        ))
    ));
    // A signer outside the candidates.
    ctx.candidates = vec![PartyId(1), PartyId(2)];
    assert!(matches!(
        Signer::start(ctx.clone(), PartyId(3), &shares[&PartyId(3)].1, &mut rng),
        Err(EngineError::InvalidContext(
            quorate_mpc::ContextProblem::NotAParticipant
        ))
    ));
    let (mut s1, m1) =
        Signer::start(ctx.clone(), PartyId(1), &shares[&PartyId(1)].1, &mut rng).unwrap();
    let (_, m3) = Signer::start(
        signing_ctx(scheme, &shares, 2, None),
        PartyId(3),
        &shares[&PartyId(3)].1,
        &mut rng,
    )
    .unwrap();
    let p1 = Posted {
        round: 1,
        from: PartyId(1),
        message: m1.clone(),
    };
    s1.on_message(&p1, &mut rng).unwrap();
    // Commitments posted twice.
    assert_eq!(
        s1.on_message(&p1, &mut rng).err(),
        Some(EngineError::DuplicateMessage {
            from: PartyId(1),
            round: 1
        })
    );
    // A message from a non-candidate.
    let p3 = Posted {
        round: 1,
        from: PartyId(3),
        message: m3,
    };
    assert_eq!(
        s1.on_message(&p3, &mut rng).err(),
        Some(EngineError::NotAParticipant(PartyId(3)))
    );
    // A share for an attempt that has not started (another package).
    let early = Posted {
        round: 2,
        from: PartyId(1),
        message: m1,
    };
    assert!(s1.on_message(&early, &mut rng).is_err());
    // Party 2's garbage commitments: a proven, public blame.
    let junk = Posted {
        round: 1,
        from: PartyId(2),
        message: quorate_mpc::RoundMessage::broadcast(vec![9, 9]),
    };
    let outs = s1.on_message(&junk, &mut rng).unwrap();
    assert!(outs.iter().any(|o| matches!(
        o,
        SignOutput::Roast(RoastEvent::Blame {
            culprit: PartyId(2),
            kind: SignBlameKind::Malformed,
            ..
        })
    )));
    assert!(outs
        .iter()
        .any(|o| matches!(o, SignOutput::Roast(RoastEvent::Failed(_)))));
    assert!(
        quorate_mpc::decode_signing_message(Scheme::Ed25519, &p1.message.broadcast.unwrap())
            .is_err()
    );
}

#[test]
fn a_refresh_keeps_the_group_key_rotates_every_share_and_still_signs() {
    for scheme in Scheme::ALL {
        let old = common::keygen(scheme, 4, 3, 90);
        let group = old.values().next().unwrap().0.clone();
        let (log, outputs) = common::run_refresh(&common::ctx(scheme, 4, 3), &old, 91);
        let new = common::shares(&outputs);
        assert_eq!(new.len(), 4);
        for (p, (key, share)) in &new {
            assert_eq!(key, &group, "the group key is kept");
            assert_ne!(share.secret, old[p].1.secret, "the share is rotated");
        }
        // Round-2 refresh parts are sealed too.
        for posted in log.iter().filter(|p| p.round == 2) {
            for (to, ct) in &posted.message.direct {
                assert!(!ct.windows(32).any(|w| w == new[to].1.secret.as_slice()));
            }
        }
        let ctx = signing_ctx(scheme, &new, 3, None);
        let o = run_signing(&ctx, &new, &BTreeMap::new(), 92);
        let (_, _, key) = one_signature(&ctx, &o);
        assert_eq!(key, group);
        // Old and new shares do not mix: the old public key package differs.
        assert_ne!(old[&PartyId(1)].1.public, new[&PartyId(1)].1.public);
    }
}

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![Just(Scheme::Ed25519), Just(Scheme::Secp256k1Tr)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// With any n - t (or fewer) silent or cheating candidates and any
    /// decided order, ROAST ends with one signature, identical everywhere,
    /// within n - t + 1 attempts, naming exactly the cheaters it selected.
    #[test]
    fn roast_always_signs_despite_up_to_n_minus_t_faulty(
        s in scheme(),
        (n, t) in (2u16..=5).prop_flat_map(|n| (Just(n), 2u16..=n)),
        faults in proptest::collection::vec((any::<u16>(), any::<bool>()), 0..4),
        seed in any::<u64>(),
    ) {
        let shares = common::keygen(s, n, t, seed);
        let ctx = signing_ctx(s, &shares, t, None);
        let mut behaviour = BTreeMap::new();
        for (p, cheat) in faults.into_iter().take(usize::from(n - t)) {
            behaviour.insert(PartyId(p % n + 1), if cheat { Behaviour::Cheat } else { Behaviour::Silent });
        }
        let o = run_signing(&ctx, &shares, &behaviour, seed ^ 1);
        let (attempt, ..) = one_signature(&ctx, &o);
        prop_assert!(attempt <= ctx.max_attempts());
        for e in &o.observer {
            if let RoastEvent::Blame { culprit, .. } = e {
                prop_assert_eq!(behaviour.get(culprit), Some(&Behaviour::Cheat));
            }
            if let RoastEvent::Suspected { parties, .. } = e {
                for p in parties {
                    prop_assert_eq!(behaviour.get(p), Some(&Behaviour::Silent));
                }
            }
        }
    }
}
