//! HPKE (RFC 9180) for the point-to-point parts: base mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
//!
//! The context bytes ([`share_context`]) are used as BOTH the HPKE `info`
//! (so the key schedule differs per context) and the AEAD associated data
//! (so a ciphertext moved to another context fails authentication even if
//! someone reused a key). They bind: a domain tag, the cluster id, the
//! session id, the round, the sender, the recipient and the scheme label.

use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::EngineError;
use crate::wire::{decode_sealed, encode, SealedWire, WIRE_VERSION};
use crate::{PartyId, Scheme};

type Kem = hpke::kem::X25519HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;
type Kdf = hpke::kdf::HkdfSha256;

/// An X25519 recipient secret (zeroized on drop by x25519-dalek).
pub(crate) type RecipientSecret = <Kem as hpke::Kem>::PrivateKey;

/// Domain tag of DKG round-2 shares.
pub(crate) const DKG_SHARE_DOMAIN: &[u8] = b"quorate-mpc/v1/dkg-share";
/// Domain tag of refresh round-2 shares.
pub(crate) const REFRESH_SHARE_DOMAIN: &[u8] = b"quorate-mpc/v1/refresh-share";

/// The parameters one ciphertext is bound to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShareBinding<'a> {
    /// Which protocol ([`DKG_SHARE_DOMAIN`] or [`REFRESH_SHARE_DOMAIN`]).
    pub domain: &'a [u8],
    /// Cluster id.
    pub cluster_id: &'a [u8; 32],
    /// Session id.
    pub session_id: &'a [u8; 32],
    /// Protocol round of the message carrying the ciphertext.
    pub round: u32,
    /// Author of the ciphertext.
    pub sender: PartyId,
    /// The one party that can open it.
    pub recipient: PartyId,
    /// The session's scheme.
    pub scheme: Scheme,
}

/// The context bytes: length-prefixed domain, then fixed-width fields,
/// then the length-prefixed scheme label. Unambiguous by construction.
pub(crate) fn share_context(b: &ShareBinding<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(u8::try_from(b.domain.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(b.domain);
    out.extend_from_slice(b.cluster_id);
    out.extend_from_slice(b.session_id);
    out.extend_from_slice(&b.round.to_be_bytes());
    out.extend_from_slice(&b.sender.0.to_be_bytes());
    out.extend_from_slice(&b.recipient.0.to_be_bytes());
    let label = b.scheme.label().as_bytes();
    out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(label);
    out
}

/// A fresh recipient key pair: the secret and its 32-byte public key.
pub(crate) fn generate_recipient<R: RngCore + CryptoRng>(
    rng: &mut R,
) -> (RecipientSecret, [u8; 32]) {
    let (sk, pk) = Kem::gen_keypair(rng);
    let mut out = [0u8; 32];
    out.copy_from_slice(&pk.to_bytes());
    (sk, out)
}

/// The public key of a recipient secret.
pub(crate) fn public_of(sk: &RecipientSecret) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Kem::sk_to_pk(sk).to_bytes());
    out
}

/// The 32 secret bytes (revealed only in a blame proof).
pub(crate) fn secret_bytes(sk: &RecipientSecret) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&sk.to_bytes());
    out
}

/// A recipient secret from 32 bytes (a revealed blame key).
pub(crate) fn secret_from_bytes(bytes: &[u8; 32]) -> Result<RecipientSecret, EngineError> {
    RecipientSecret::from_bytes(bytes).map_err(|_| EngineError::Malformed {
        what: "X25519 secret key",
    })
}

/// Whether a published X25519 key is usable: not a low-order point (whose
/// Diffie-Hellman output is all zeros, which HPKE rejects). A pure function
/// of the key, so every party and the auditor decide it identically.
pub(crate) fn key_is_contributory(pk: &[u8; 32]) -> bool {
    let probe = x25519_dalek::StaticSecret::from([0x42u8; 32]);
    probe
        .diffie_hellman(&x25519_dalek::PublicKey::from(*pk))
        .was_contributory()
}

/// Seals `plaintext` to `recipient_pk` under `binding`; returns the wire
/// bytes of the sealed part.
pub(crate) fn seal<R: RngCore + CryptoRng>(
    rng: &mut R,
    recipient_pk: &[u8; 32],
    binding: &ShareBinding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, EngineError> {
    let pk =
        <Kem as hpke::Kem>::PublicKey::from_bytes(recipient_pk).map_err(|_| EngineError::Seal)?;
    let context = share_context(binding);
    let (encapped, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem, R>(
        &OpModeS::Base,
        &pk,
        &context,
        plaintext,
        &context,
        rng,
    )
    .map_err(|_| EngineError::Seal)?;
    let mut enc = [0u8; 32];
    enc.copy_from_slice(&encapped.to_bytes());
    encode(&SealedWire {
        version: WIRE_VERSION,
        encapped_key: enc,
        ciphertext,
    })
}

/// Why a sealed part did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenFault {
    /// The part is not a sealed-share encoding.
    Malformed,
    /// It decodes but does not decrypt/authenticate under this key and context.
    Undecryptable,
}

/// Opens a sealed part with `sk` under `binding`.
pub(crate) fn open(
    sk: &RecipientSecret,
    binding: &ShareBinding<'_>,
    wire: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenFault> {
    let sealed = decode_sealed(wire).map_err(|_| OpenFault::Malformed)?;
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.encapped_key)
        .map_err(|_| OpenFault::Malformed)?;
    let context = share_context(binding);
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        sk,
        &encapped,
        &context,
        &sealed.ciphertext,
        &context,
    )
    .map(Zeroizing::new)
    .map_err(|_| OpenFault::Undecryptable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha_06::rand_core::SeedableRng;
    use rand_chacha_06::ChaCha20Rng;

    fn binding(round: u32, sender: u16, recipient: u16) -> ShareBinding<'static> {
        ShareBinding {
            domain: DKG_SHARE_DOMAIN,
            cluster_id: &[7; 32],
            session_id: &[9; 32],
            round,
            sender: PartyId(sender),
            recipient: PartyId(recipient),
            scheme: Scheme::Ed25519,
        }
    }

    #[test]
    fn seal_opens_only_under_the_same_binding_and_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (sk, pk) = generate_recipient(&mut rng);
        assert_eq!(public_of(&sk), pk);
        let wire = seal(&mut rng, &pk, &binding(2, 1, 2), b"share").unwrap();
        assert!(!wire.windows(5).any(|w| w == b"share"), "plaintext leaked");
        assert_eq!(&**open(&sk, &binding(2, 1, 2), &wire).unwrap(), b"share");
        for other in [binding(3, 1, 2), binding(2, 3, 2), binding(2, 1, 3)] {
            assert_eq!(open(&sk, &other, &wire), Err(OpenFault::Undecryptable));
        }
        let (sk2, _) = generate_recipient(&mut rng);
        assert_eq!(
            open(&sk2, &binding(2, 1, 2), &wire),
            Err(OpenFault::Undecryptable)
        );
        assert_eq!(
            open(&sk, &binding(2, 1, 2), &wire[..10]),
            Err(OpenFault::Malformed)
        );
        let revealed = secret_from_bytes(&secret_bytes(&sk)).unwrap();
        assert_eq!(
            &**open(&revealed, &binding(2, 1, 2), &wire).unwrap(),
            b"share"
        );
    }

    #[test]
    fn low_order_keys_are_not_contributory() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (_, pk) = generate_recipient(&mut rng);
        assert!(key_is_contributory(&pk));
        assert!(!key_is_contributory(&[0u8; 32]));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(!key_is_contributory(&one));
    }

    #[test]
    fn contexts_differ_per_field() {
        let base = share_context(&binding(2, 1, 2));
        assert_ne!(base, share_context(&binding(2, 2, 1)));
        let mut b = binding(2, 1, 2);
        b.scheme = Scheme::Secp256k1Tr;
        assert_ne!(base, share_context(&b));
        b = binding(2, 1, 2);
        b.domain = REFRESH_SHARE_DOMAIN;
        assert_ne!(base, share_context(&b));
    }
}
