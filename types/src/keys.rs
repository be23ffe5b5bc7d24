//! ECDSA P-256 public keys and signatures, verified with ring. Nothing here
//! holds a private key: a party signs with its TPM-resident vote key.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A P-256 public key as an uncompressed SEC1 point (0x04 || X || Y).
/// Encodes as a 65-byte byte string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "serde_bytes")] pub [u8; 65]);

/// An ECDSA P-256 signature in fixed form: r || s, each 32 bytes big-endian.
/// Encodes as a 64-byte byte string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_bytes")] pub [u8; 64]);

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature does not match the message under this key (forged,
    /// altered, or signed by another key).
    #[error("ECDSA P-256 signature does not verify under the claimed key")]
    Invalid,
}

impl PublicKey {
    /// Builds a key from its affine coordinates.
    pub fn from_xy(x: &[u8; 32], y: &[u8; 32]) -> Self {
        let mut p = [0u8; 65];
        p[0] = 0x04;
        p[1..33].copy_from_slice(x);
        p[33..].copy_from_slice(y);
        PublicKey(p)
    }

    /// Verifies `sig` over `message` (ring hashes the message with SHA-256).
    pub fn verify(&self, message: &[u8], sig: &Signature) -> Result<(), SignatureError> {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(message, &sig.0)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl Signature {
    /// Builds a fixed-form signature from big-endian r and s of any length up
    /// to 32 bytes (the TPM strips leading zeros). Returns `None` if either is
    /// longer than 32 bytes after stripping leading zeros.
    pub fn from_r_s(r: &[u8], s: &[u8]) -> Option<Self> {
        let mut out = [0u8; 64];
        put_left_padded(&mut out[..32], r)?;
        put_left_padded(&mut out[32..], s)?;
        Some(Signature(out))
    }
}

fn put_left_padded(dst: &mut [u8], src: &[u8]) -> Option<()> {
    let first = src.iter().position(|b| *b != 0).unwrap_or(src.len());
    let src = src.get(first..)?;
    let start = dst.len().checked_sub(src.len())?;
    dst.get_mut(start..)?.copy_from_slice(src);
    Some(())
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..9] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn keypair() -> (EcdsaKeyPair, PublicKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pk = PublicKey(kp.public_key().as_ref().try_into().unwrap());
        (kp, pk)
    }

    #[test]
    fn sign_verify_and_reject_tampering() {
        let (kp, pk) = keypair();
        let sig = kp.sign(&SystemRandom::new(), b"hello").unwrap();
        let sig = Signature(sig.as_ref().try_into().unwrap());
        assert!(pk.verify(b"hello", &sig).is_ok());
        assert_eq!(pk.verify(b"hellp", &sig), Err(SignatureError::Invalid));
        let mut bad = sig;
        bad.0[10] ^= 1;
        assert_eq!(pk.verify(b"hello", &bad), Err(SignatureError::Invalid));
    }

    #[test]
    fn r_s_padding() {
        let s = Signature::from_r_s(&[1, 2], &[0, 0, 3]).unwrap();
        assert_eq!(s.0[31], 2);
        assert_eq!(s.0[30], 1);
        assert_eq!(s.0[63], 3);
        assert!(Signature::from_r_s(&[1u8; 33], &[1]).is_none());
        assert!(Signature::from_r_s(&[0u8; 40], &[1]).is_some());
    }

    #[test]
    fn from_xy_is_uncompressed_sec1() {
        let pk = PublicKey::from_xy(&[1; 32], &[2; 32]);
        assert_eq!(pk.0[0], 0x04);
        assert_eq!(pk.0[1..33], [1; 32]);
        assert_eq!(pk.0[33..], [2; 32]);
    }

    #[test]
    fn postcard_round_trip() {
        let (_, pk) = keypair();
        let bytes = postcard::to_stdvec(&pk).unwrap();
        let back: PublicKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(pk, back);
        assert!(postcard::from_bytes::<PublicKey>(&bytes[..10]).is_err());
    }

    #[test]
    fn encodings_are_length_prefixed_byte_strings() {
        // What signed messages embed: a varint length, then the bytes.
        let pk = PublicKey::from_xy(&[1; 32], &[2; 32]);
        let bytes = postcard::to_stdvec(&pk).unwrap();
        assert_eq!(bytes[0], 65);
        assert_eq!(bytes[1..], pk.0);
        let sig = Signature([7; 64]);
        let bytes = postcard::to_stdvec(&sig).unwrap();
        assert_eq!(bytes[0], 64);
        assert_eq!(bytes[1..], sig.0);
    }
}
