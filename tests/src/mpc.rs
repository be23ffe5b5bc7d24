//! Helpers for the built-in MPC engine's sessions through a cluster, shared
//! by the system tests, `make demo` and `make bench`: the independent check
//! of a signature the cluster produced, the BIP-341 key-path tweak, reading
//! the session messages (and their sealed shares) out of an audit bundle,
//! and waiting for a session to end.
//!
//! The signature checks never use frost: Ed25519 signatures go to
//! ed25519-dalek (`verify_strict`), secp256k1-tr ones to k256's BIP-340
//! `schnorr` (a prehash verify: the cluster signs the 32-byte digest as
//! given), and the Taproot tweak is computed with k256's arithmetic.

// serde_json::Value indexing returns Null on a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use quorate_host::client::Client;
use serde_json::Value;

/// Checks `sig_hex` (64 bytes, lowercase hex) over `msg` under `key_hex`
/// (32 bytes) with a library other than frost: ed25519-dalek for
/// `frost-ed25519`, k256's BIP-340 verifier for `frost-secp256k1-tr`
/// (`msg` is then the 32-byte digest itself).
pub fn verify_independently(
    scheme: &str,
    key_hex: &str,
    msg: &[u8],
    sig_hex: &str,
) -> anyhow::Result<()> {
    let key = hex::decode(key_hex).with_context(|| format!("key {key_hex}"))?;
    let sig = hex::decode(sig_hex).with_context(|| format!("signature {sig_hex}"))?;
    if sig.len() != 64 {
        bail!("a signature is 64 bytes, not {}: {sig_hex}", sig.len());
    }
    if sig_hex != sig_hex.to_lowercase() {
        bail!("the signature is not lowercase hex: {sig_hex}");
    }
    match scheme {
        "frost-ed25519" => {
            let key: [u8; 32] = key
                .try_into()
                .map_err(|_| anyhow!("an Ed25519 key is 32 bytes: {key_hex}"))?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&key)
                .map_err(|e| anyhow!("not an Ed25519 point: {key_hex}: {e}"))?;
            let sig = ed25519_dalek::Signature::from_slice(&sig)
                .map_err(|e| anyhow!("not an Ed25519 signature: {e}"))?;
            vk.verify_strict(msg, &sig)
                .map_err(|e| anyhow!("ed25519-dalek rejects the signature: {e}"))
        }
        "frost-secp256k1-tr" => {
            use k256::schnorr::signature::hazmat::PrehashVerifier;
            let vk = k256::schnorr::VerifyingKey::from_bytes(&key)
                .map_err(|e| anyhow!("not a BIP-340 x-only key: {key_hex}: {e}"))?;
            let sig = k256::schnorr::Signature::try_from(sig.as_slice())
                .map_err(|e| anyhow!("not a BIP-340 signature: {e}"))?;
            vk.verify_prehash(msg, &sig)
                .map_err(|e| anyhow!("k256 rejects the BIP-340 signature: {e}"))
        }
        other => bail!("no independent verifier for scheme {other}"),
    }
}

/// The BIP-341 output key of x-only `internal_hex` tweaked by
/// `merkle_root` (none: a key-path-only output): `P + H_TapTweak(P ||
/// root)·G`, x-only, lowercase hex. Computed with k256 only, to check the
/// key a Taproot signing states it verifies under.
pub fn taproot_output_key(
    internal_hex: &str,
    merkle_root: Option<[u8; 32]>,
) -> anyhow::Result<String> {
    use k256::elliptic_curve::point::AffineCoordinates as _;
    use k256::elliptic_curve::PrimeField as _;
    use k256::sha2::{Digest as _, Sha256};
    let internal = hex::decode(internal_hex).with_context(|| format!("key {internal_hex}"))?;
    let p = k256::schnorr::VerifyingKey::from_bytes(&internal)
        .map_err(|e| anyhow!("not a BIP-340 x-only key: {internal_hex}: {e}"))?;
    let tag = Sha256::digest(b"TapTweak");
    let mut h = Sha256::new();
    h.update(tag);
    h.update(tag);
    h.update(&internal);
    if let Some(root) = merkle_root {
        h.update(root);
    }
    let t = Option::<k256::Scalar>::from(k256::Scalar::from_repr(h.finalize()))
        .ok_or_else(|| anyhow!("the tweak of {internal_hex} is not below the group order"))?;
    let q = k256::ProjectivePoint::from(*p.as_affine()) + k256::ProjectivePoint::GENERATOR * t;
    Ok(hex::encode(q.to_affine().x()))
}

/// Whether `bytes` is a frost round-2 package (a DKG secret share in the
/// clear) of `scheme`.
pub fn is_plain_round2(scheme: &str, bytes: &[u8]) -> bool {
    match scheme {
        "frost-ed25519" => frost_ed25519::keys::dkg::round2::Package::deserialize(bytes).is_ok(),
        _ => frost_secp256k1_tr::keys::dkg::round2::Package::deserialize(bytes).is_ok(),
    }
}

/// A session message as an audit bundle records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedMessage {
    /// The session, lowercase hex (as the API names it).
    pub session: String,
    /// The round.
    pub round: u32,
    /// The author.
    pub from: u32,
    /// Whether it has a broadcast part.
    pub broadcast: bool,
    /// Its point-to-point parts: (recipient, payload as logged).
    pub direct: Vec<(u32, Vec<u8>)>,
}

/// Every session message in audit bundle `bytes`, in log order, read from
/// the operations exactly as their batches signed them.
pub fn bundle_messages(bytes: &[u8]) -> anyhow::Result<Vec<LoggedMessage>> {
    use quorate_firmware::audit::entry::AuditEntry;
    use quorate_firmware::sessions::ops::{OpBody, Operation};
    use quorate_host::audit::bundle::{read_all, Section};
    let mut out = Vec::new();
    for section in read_all(bytes)? {
        let Section::Entry(e) = section else {
            continue;
        };
        let AuditEntry::Operation(op) = AuditEntry::decode(&e)? else {
            continue;
        };
        let OpBody::SessionMessage(m) = Operation::decode(&op.op_bytes)?.body else {
            continue;
        };
        out.push(LoggedMessage {
            session: hex::encode(m.session.0.as_bytes()),
            round: m.round,
            from: op.author.0,
            broadcast: m.broadcast.is_some(),
            direct: m
                .direct
                .iter()
                .map(|d| (d.to.0, d.payload.as_slice().to_vec()))
                .collect(),
        });
    }
    Ok(out)
}

/// The independent library [`verify_independently`] uses for `scheme`.
pub fn verifier_name(scheme: &str) -> &'static str {
    match scheme {
        "frost-ed25519" => "ed25519-dalek verify_strict",
        "frost-secp256k1-tr" => "k256 BIP-340 schnorr",
        _ => "none",
    }
}

/// Polls session `sid` at `c` until it has left the active phases
/// (`awaiting_approval`, `active`) and returns its view; an error after
/// `within`.
pub async fn session_end(c: &Client, sid: &str, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        // A party still catching up does not know the session yet.
        let s = match c.session(sid).await {
            Ok(s) => s,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let phase = s["phase_label"].as_str().unwrap_or_default();
        if phase != "active" && phase != "awaiting_approval" {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("session {sid} still {phase} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls operation `receipt` at `c` until it is decided (accepted, then
/// decided in a block) and returns its view; an error after `within`.
pub async fn decided(c: &Client, receipt: &str, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let v = c.operation(receipt).await?;
        if v["status"] != "pending" && v["status"] != "accepted" && !v["record"].is_null() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{receipt} not decided after {within:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls operation `receipt` at `c` until it is decided; returns the id of
/// the session it created (an error if it created none, e.g. rejected).
pub async fn created_session(
    c: &Client,
    receipt: &str,
    within: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let v = c.operation(receipt).await?;
        if v["decided"] == true {
            return v["record"]["session"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{receipt} created no session: {v}"));
        }
        if Instant::now() > deadline {
            bail!("{receipt} not decided after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_rfc8032_test_1_verifies_and_a_flipped_bit_does_not() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let pk = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let sig = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                   5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
        verify_independently("frost-ed25519", pk, b"", sig).unwrap();
        let bad = sig.replacen('e', "f", 1);
        assert!(verify_independently("frost-ed25519", pk, b"", &bad).is_err());
        assert!(verify_independently("frost-ed25519", pk, b"x", sig).is_err());
    }

    #[test]
    fn bip340_vector_0_verifies_as_a_prehash() {
        // BIP-340 test vector 0 (secret key 3, message all zero).
        let pk = "f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";
        let sig = "e907831f80848d1069a5371b402410364bdf1c5f8307b0084c55f1ce2dca8215\
                   25f66a4a85ea8b71e482a74f382d2ce5ebeee8fdb2172f477df4900d310536c0";
        verify_independently("frost-secp256k1-tr", pk, &[0u8; 32], sig).unwrap();
        assert!(verify_independently("frost-secp256k1-tr", pk, &[1u8; 32], sig).is_err());
    }

    #[test]
    fn bip341_key_path_tweak_matches_the_wallet_test_vector() {
        // BIP-341 wallet-test-vectors.json, scriptPubKey[0]: no script tree.
        let internal = "d6889cb081036e0faefa3a35157ad71086b123b2b144b649798b494c300a961d";
        let tweaked = "53a1f6e454df1aa2776a2814a721372d6258050de330b3c6d10ee8f4e0dda343";
        assert_eq!(taproot_output_key(internal, None).unwrap(), tweaked);
    }

    #[test]
    fn a_plaintext_round2_package_is_recognised() {
        let mut share = [7u8; 32];
        share[31] = 0;
        let pkg = frost_ed25519::keys::dkg::round2::Package::new(
            frost_ed25519::keys::SigningShare::deserialize(&share).unwrap(),
        )
        .serialize()
        .unwrap();
        assert!(is_plain_round2("frost-ed25519", &pkg));
        assert!(!is_plain_round2("frost-ed25519", &[0xa5; 85]));
    }

    #[test]
    fn uppercase_hex_and_unknown_schemes_are_refused() {
        let pk = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let sig = "E5564300C360AC729086E2CC806E828A84877F1EB8E5D974D873E06522490155\
                   5FB8821590A33BACC61E39701CF9B46BD25BF5F0595BBE24655141438E7A100B";
        assert!(verify_independently("frost-ed25519", pk, b"", sig).is_err());
        assert!(verify_independently("frost-p256", pk, b"", &sig.to_lowercase()).is_err());
    }
}
