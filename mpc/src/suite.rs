//! The bridge from [`Scheme`] to frost's generic ciphersuites: the engine's
//! protocol code is written once, generic over [`Suite`], and dispatched on
//! the scheme at the public API.

use frost_core::{Ciphersuite, VerifyingKey};

use crate::error::EngineError;
use crate::Scheme;

/// frost-ed25519's ciphersuite.
pub(crate) type Ed = frost_ed25519::Ed25519Sha512;
/// frost-secp256k1-tr's ciphersuite.
pub(crate) type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

/// A frost ciphersuite the engine runs.
pub(crate) trait Suite: Ciphersuite + 'static {
    /// The engine's name for it.
    const SCHEME: Scheme;

    /// The 32-byte key that signatures verify under: Ed25519's compressed
    /// point, or secp256k1's x-only (BIP-340) key.
    fn group_key_bytes(vk: &VerifyingKey<Self>) -> Result<Vec<u8>, EngineError>;
}

impl Suite for Ed {
    const SCHEME: Scheme = Scheme::Ed25519;

    fn group_key_bytes(vk: &VerifyingKey<Self>) -> Result<Vec<u8>, EngineError> {
        Ok(vk.serialize()?)
    }
}

impl Suite for Tr {
    const SCHEME: Scheme = Scheme::Secp256k1Tr;

    fn group_key_bytes(vk: &VerifyingKey<Self>) -> Result<Vec<u8>, EngineError> {
        // SEC1 compressed: one parity byte, then the 32-byte x coordinate.
        let sec1 = vk.serialize()?;
        match sec1.as_slice() {
            [_parity, x @ ..] if x.len() == 32 => Ok(x.to_vec()),
            _ => Err(EngineError::Malformed {
                what: "secp256k1 verifying key",
            }),
        }
    }
}
