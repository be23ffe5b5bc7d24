//! The bridge from [`Scheme`] to frost's generic ciphersuites: the engine's
//! protocol code is written once, generic over [`Suite`], and dispatched on
//! the scheme at the public API.

use frost_core::keys::{KeyPackage, PublicKeyPackage};
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

    /// Applies a signing session's Taproot tweak (secp256k1-tr only) to the
    /// public key package and, for a signer, its key package.
    fn tweak(
        pkp: PublicKeyPackage<Self>,
        kp: Option<KeyPackage<Self>>,
        taproot: Option<&crate::TaprootTweak>,
    ) -> Result<(PublicKeyPackage<Self>, Option<KeyPackage<Self>>), EngineError>;
}

impl Suite for Ed {
    const SCHEME: Scheme = Scheme::Ed25519;

    fn group_key_bytes(vk: &VerifyingKey<Self>) -> Result<Vec<u8>, EngineError> {
        Ok(vk.serialize()?)
    }

    fn tweak(
        pkp: PublicKeyPackage<Self>,
        kp: Option<KeyPackage<Self>>,
        taproot: Option<&crate::TaprootTweak>,
    ) -> Result<(PublicKeyPackage<Self>, Option<KeyPackage<Self>>), EngineError> {
        match taproot {
            None => Ok((pkp, kp)),
            Some(_) => Err(EngineError::InvalidContext(
                crate::ContextProblem::TweakWithoutTaproot,
            )),
        }
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

    fn tweak(
        pkp: PublicKeyPackage<Self>,
        kp: Option<KeyPackage<Self>>,
        taproot: Option<&crate::TaprootTweak>,
    ) -> Result<(PublicKeyPackage<Self>, Option<KeyPackage<Self>>), EngineError> {
        use frost_secp256k1_tr::keys::Tweak;
        match taproot {
            None => Ok((pkp, kp)),
            Some(t) => {
                let root = t.merkle_root.as_ref().map(|r| r.as_slice());
                Ok((pkp.tweak(root), kp.map(|k| k.tweak(root))))
            }
        }
    }
}
