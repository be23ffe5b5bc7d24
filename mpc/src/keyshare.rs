//! A party's long-lived key share, split for sealing: a small secret part
//! for the TPM and a public part that may be stored in the clear.

use std::fmt;

use frost_core::keys::{KeyPackage, PublicKeyPackage, SigningShare, VerifyingShare};
use frost_core::VerifyingKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::EngineError;
use crate::suite::{Ed, Suite, Tr};
use crate::wire::{decode, encode, Versioned, WIRE_VERSION};
use crate::{PartyId, Scheme};

/// A party's key share.
///
/// `secret` is the 32-byte frost signing share (well under the 128-byte
/// limit of a TPM sealed data object); `public` is the engine's encoding of
/// the party id, its verifying share, the group verifying key, `min_signers`
/// and the whole public key package, which may be stored in the clear.
/// [`KeyShare::from_parts`] checks that the two halves belong together.
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyShare {
    /// The scheme the share is for.
    pub scheme: Scheme,
    /// The serialized signing share (32 bytes); zeroized on drop.
    pub secret: Zeroizing<Vec<u8>>,
    /// The public part (see the type's doc).
    pub public: Vec<u8>,
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyShare")
            .field("scheme", &self.scheme)
            .field("secret", &"<redacted>")
            .field("public_len", &self.public.len())
            .finish()
    }
}

/// The public half's encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PublicShareWire {
    version: u8,
    scheme: u8,
    party: PartyId,
    verifying_share: Vec<u8>,
    verifying_key: Vec<u8>,
    min_signers: u16,
    public_key_package: Vec<u8>,
}

impl Versioned for PublicShareWire {
    fn version(&self) -> u8 {
        self.version
    }
}

/// A key share decoded for one ciphersuite.
pub(crate) struct Decoded<C: Suite> {
    /// Whose share.
    pub party: PartyId,
    /// frost's key package (holds the secret; zeroized on drop by frost).
    pub key_package: KeyPackage<C>,
    /// The group's public key package.
    pub public_key_package: PublicKeyPackage<C>,
}

impl KeyShare {
    /// Rebuilds a key share from its sealed secret and its public part,
    /// refusing halves that do not belong together (the verifying share
    /// must be secret·G and appear in the public key package).
    pub fn from_parts(
        scheme: Scheme,
        secret: &[u8],
        public: &[u8],
    ) -> Result<KeyShare, EngineError> {
        let share = KeyShare {
            scheme,
            secret: Zeroizing::new(secret.to_vec()),
            public: public.to_vec(),
        };
        match scheme {
            Scheme::Ed25519 => share.decode::<Ed>().map(|_| ())?,
            Scheme::Secp256k1Tr => share.decode::<Tr>().map(|_| ())?,
        }
        Ok(share)
    }

    /// The party the share belongs to.
    pub fn party(&self) -> Result<PartyId, EngineError> {
        Ok(decode::<PublicShareWire>(&self.public, "public key share")?.party)
    }

    /// The public key package (frost's serialization), for a signing session.
    pub fn public_key_package(&self) -> Result<Vec<u8>, EngineError> {
        Ok(decode::<PublicShareWire>(&self.public, "public key share")?.public_key_package)
    }

    /// The 32-byte group public key (see [`crate::group_public_key`]).
    pub fn group_public_key(&self) -> Result<Vec<u8>, EngineError> {
        crate::group_public_key(self.scheme, &self.public_key_package()?)
    }

    /// Builds the share from frost's DKG output.
    pub(crate) fn from_frost<C: Suite>(
        party: PartyId,
        key_package: &KeyPackage<C>,
        public_key_package: &PublicKeyPackage<C>,
    ) -> Result<KeyShare, EngineError> {
        let wire = PublicShareWire {
            version: WIRE_VERSION,
            scheme: C::SCHEME.tag(),
            party,
            verifying_share: key_package.verifying_share().serialize()?,
            verifying_key: key_package.verifying_key().serialize()?,
            min_signers: *key_package.min_signers(),
            public_key_package: public_key_package.serialize()?,
        };
        Ok(KeyShare {
            scheme: C::SCHEME,
            secret: Zeroizing::new(key_package.signing_share().serialize()),
            public: encode(&wire)?,
        })
    }

    /// Decodes and cross-checks both halves for ciphersuite `C`.
    pub(crate) fn decode<C: Suite>(&self) -> Result<Decoded<C>, EngineError> {
        if self.scheme != C::SCHEME {
            return Err(EngineError::WrongCiphersuite {
                what: "key share",
                expected: C::SCHEME.label(),
            });
        }
        let wire: PublicShareWire = decode(&self.public, "public key share")?;
        C::SCHEME.expect_tag(wire.scheme, "key share")?;
        let bad = |what| EngineError::Malformed { what };
        let signing_share =
            SigningShare::<C>::deserialize(&self.secret).map_err(|_| bad("signing share"))?;
        let verifying_share = VerifyingShare::<C>::deserialize(&wire.verifying_share)
            .map_err(|_| bad("verifying share"))?;
        let verifying_key = VerifyingKey::<C>::deserialize(&wire.verifying_key)
            .map_err(|_| bad("group verifying key"))?;
        let public_key_package = PublicKeyPackage::<C>::deserialize(&wire.public_key_package)
            .map_err(|_| bad("public key package"))?;
        let identifier = wire.party.identifier::<C>()?;
        if VerifyingShare::<C>::from(signing_share) != verifying_share {
            return Err(EngineError::KeyShare(
                "the secret does not match the verifying share",
            ));
        }
        if public_key_package.verifying_shares().get(&identifier) != Some(&verifying_share) {
            return Err(EngineError::KeyShare(
                "the verifying share is not in the public key package",
            ));
        }
        if *public_key_package.verifying_key() != verifying_key {
            return Err(EngineError::KeyShare(
                "the group key differs from the public key package's",
            ));
        }
        if public_key_package.min_signers() != Some(wire.min_signers) {
            return Err(EngineError::KeyShare(
                "min_signers differs from the public key package's",
            ));
        }
        let key_package = KeyPackage::new(
            identifier,
            signing_share,
            verifying_share,
            verifying_key,
            wire.min_signers,
        );
        Ok(Decoded {
            party: wire.party,
            key_package,
            public_key_package,
        })
    }
}
