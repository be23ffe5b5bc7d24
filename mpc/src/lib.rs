//! # quorate-mpc: the sans-IO MPC engine
//!
//! FROST (RFC 9591, the Zcash Foundation's frost-core 3.0) run through
//! Quorate's decided log, for two ciphersuites: `frost-ed25519` and
//! `frost-secp256k1-tr` (BIP-340/341). The crate has no I/O, no clock, no
//! threads and no global RNG: every input is an argument (the session's
//! decided messages in log order, local secrets, an injected
//! `&mut (impl RngCore + CryptoRng)`), every output a value the host
//! carries out. Given the same RNG and log, it computes the same outputs.
//!
//! ## Data flow (key generation)
//! 1. The host decides `create_session` and builds a [`SessionCtx`]
//!    (cluster id, session id, scheme, ascending participants, threshold).
//! 2. [`Dkg::start`] runs frost `dkg::part1` and draws one fresh X25519
//!    recipient key per other participant; it returns my round-1
//!    [`RoundMessage`] (broadcast only), which the host posts as ONE operation.
//! 3. The host feeds every decided session message, in log order, with its
//!    authenticated author ([`Posted::from`], the batch signer), to
//!    [`Dkg::on_message`]. frost's maps are keyed by that author, never by a
//!    field inside a message.
//! 4. Once round-1 broadcasts from ALL participants are in: frost `part2`;
//!    the engine returns [`DkgOutput::Submit`] for round 2: no broadcast,
//!    `direct[j]` = HPKE seal of frost's `round2::Package` for j, to the key
//!    j published for me.
//! 5. Once all round-2 messages are in: open mine, check each against its
//!    sender's commitment, frost `part3`: [`DkgOutput::Complete`] with the
//!    32-byte group key ([`group_public_key`]) and my [`KeyShare`]. The host
//!    seals the share in its TPM first, then posts the group key as my
//!    result. The session executes only when all participants posted the
//!    same key (agreed completion, ZF frost issue 577): the firmware's rule.
//!
//! ## HPKE binding
//! RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305. The context bytes are used as BOTH `info` and AAD:
//! `len(domain) ‖ domain ‖ cluster_id ‖ session_id ‖ round (u32 BE) ‖
//! sender (u16 BE) ‖ recipient (u16 BE) ‖ len(label) ‖ scheme label`, domain
//! `quorate-mpc/v1/dkg-share`. A ciphertext therefore opens only for the
//! one recipient, in the one session, round, direction and scheme it was
//! made for. The log keeps only ciphertext; recipient secrets live only in
//! the engine's memory and are zeroized once round 2 is processed (or the
//! session fails), so a later compromise reveals no old share.
//!
//! ## Blame rules
//! Each rule is decided by ONE function, shared by [`Dkg`] and [`check_blame`].
//!
//! - Round 1 is public: a broadcast that does not decode, is for another
//!   ciphersuite, carries direct parts, has a commitment of length ≠ t, or
//!   does not publish exactly one non-low-order key per other participant is
//!   [`BlameKind::MalformedRound1`]; a failing proof of knowledge is
//!   [`BlameKind::InvalidProofOfKnowledge`]. Every party names the same
//!   culprits; the proof is a tag.
//! - Round-2 addressing is public: a broadcast part, or direct parts for
//!   any set other than exactly the other participants, is
//!   [`BlameKind::MissingOrMisaddressedShare`].
//! - A share that does not open, or opens to something that is not a frost
//!   share, is [`BlameKind::UndecryptableShare`]; one that fails the
//!   commitment check is [`BlameKind::InvalidSecretShare`]. The recipient
//!   proves it by revealing its X25519 secret for THAT sender only (keys are
//!   per sender, so the reveal opens exactly one ciphertext).
//!   [`check_blame`] checks the revealed secret against the key the accuser
//!   published for that sender, opens the culprit's ciphertext and checks
//!   the share against the culprit's round-1 commitment: a bad share proves
//!   the culprit; a good one (or a key that is not the published one) proves
//!   a [`BlameVerdict::FalseAccusation`].
//! - Missing a round is omission: the host reports [`Dkg::missing`] at the
//!   deadline as suspects, never as proven.
//!
//! ## Share refresh
//! [`Dkg::start_refresh`] runs the same two rounds over each party's
//! current [`KeyShare`] with frost's `refresh_dkg_*`: commitments to a zero
//! constant term (t − 1 entries; frost checks no proof of knowledge there),
//! HPKE domain `quorate-mpc/v1/refresh-share`, the same addressing and share
//! rules, checked by [`check_refresh_blame`]. [`DkgOutput::Complete`] carries
//! the new share under the unchanged group key (the engine refuses any
//! other). The host seals the new share and erases the old one once the
//! session executes. `min_signers` cannot change.
//!
//! ## Signing and ROAST (see [`Signer`], [`Roast`])
//! - Round 1: each candidate posts frost `round1::commit` commitments.
//!   Round `1 + k` ([`share_round`]): attempt k's shares, each carrying the
//!   signer's fresh commitments for a later attempt. Broadcast only.
//! - The coordinator is a pure function of the decided log and decided
//!   deadlines, so every party (and any observer) computes the same attempts:
//!   an attempt starts whenever none is open and `t` responsive, non-malicious
//!   candidates have fresh commitments; it takes the FIRST `t` in log order.
//! - Every share is checked with frost `verify_signature_share`. An invalid
//!   (or undecodable) share proves its author malicious, with the share as
//!   proof, and closes the attempt; the author is never selected again. A
//!   selected signer missing the attempt's deadline is suspected
//!   ([`RoastEvent::Suspected`]) and the attempt closes; a later valid share
//!   returns anyone to the pool. At most `n − t + 1` attempts start; the
//!   first attempt with `t` valid shares is aggregated: the signature, the
//!   same 64 bytes at every party, with the key it verifies under.
//! - secp256k1-tr: BIP-340 over exactly 32 bytes. frost-secp256k1-tr 3.0's
//!   DKG key is already the BIP-341 output key for an empty script tree;
//!   [`TaprootTweak`] adds a further key-path tweak (merkle root none or
//!   given), and [`RoastEvent::Signature`] names the tweaked key.
//! - Nonces are single-use and live only in the [`Signer`]'s memory. The
//!   signer emits [`SignOutput::NonceUsed`] BEFORE the [`SignOutput::Submit`]
//!   carrying the share; the host persists the mark first. Nothing else of
//!   the signing state is persisted, so a crash or a backup restore cannot
//!   bring a nonce back: [`Signer::restore`] has no nonces and refuses every
//!   selection ([`SignOutput::CannotSign`]); ROAST goes on without it.
//!
//! ## Proof obligations (what the host and firmware must guarantee)
//! - A party's message for one round enters the log as ONE operation.
//! - [`Posted::from`] is the authenticated batch signer.
//! - Every party feeds the same decided messages in the same order.
//! - The share is sealed (TPM) before the group key is posted.
//! - Round deadlines are decided events, fed to [`Roast::on_deadline`] /
//!   [`Signer::on_round_deadline`] at the same log position at every party.
//! - `NonceUsed` is durable before the share it precedes leaves the process.
//! - The engine's errors for log-level violations (non-participant,
//!   repeat, unknown round, oversized) should be rule violations in the
//!   firmware too, so they never reach the log.

mod dkg;
mod error;
mod keyshare;
mod seal;
mod sign;
mod suite;
mod types;
mod wire;

pub use dkg::{
    check_blame, check_refresh_blame, decode_round1_broadcast, BlameKind, BlameVerdict, Dkg,
    DkgFault, DkgOutput, DKG_ROUND_1, DKG_ROUND_2,
};
pub use error::{BlameError, ContextProblem, EngineError};
pub use keyshare::KeyShare;
pub use sign::{
    decode_signing_message, share_round, Roast, RoastEvent, SignBlameKind, SignFailure, SignOutput,
    Signer, SigningCtx, TaprootTweak, SIGN_ROUND_COMMIT,
};
pub use types::{
    PartyId, Posted, RoundMessage, Scheme, SessionCtx, MAX_PARTICIPANTS, MAX_PART_BYTES,
};

/// Decodes one sealed direct part's envelope (version, encapsulated key,
/// ciphertext) without opening it: for tools and the fuzzer; [`Dkg`] applies
/// the same decoder before decrypting.
pub fn decode_sealed_share(bytes: &[u8]) -> Result<(), EngineError> {
    wire::decode_sealed(bytes).map(|_| ())
}

/// The group public key that signatures verify under, as the session result
/// bytes: 32 bytes for both schemes (Ed25519: the compressed point;
/// secp256k1-tr: the x-only BIP-340 key). `public_key_package` is frost's
/// `PublicKeyPackage::serialize()` bytes for `scheme`.
pub fn group_public_key(scheme: Scheme, public_key_package: &[u8]) -> Result<Vec<u8>, EngineError> {
    fn for_suite<C: suite::Suite>(bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
        let pkp = frost_core::keys::PublicKeyPackage::<C>::deserialize(bytes).map_err(|_| {
            EngineError::Malformed {
                what: "public key package",
            }
        })?;
        C::group_key_bytes(pkp.verifying_key())
    }
    match scheme {
        Scheme::Ed25519 => for_suite::<suite::Ed>(public_key_package),
        Scheme::Secp256k1Tr => for_suite::<suite::Tr>(public_key_package),
    }
}
