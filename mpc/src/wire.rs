//! The engine's own wire structs: postcard, each starting with a version
//! byte, decoded strictly (no trailing bytes, bounded sizes). frost's own
//! packages travel inside as frost's `serialize()` bytes, which carry
//! frost's ciphersuite header.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::EngineError;
use crate::{PartyId, MAX_PART_BYTES};

/// Version of every struct in this module.
pub(crate) const WIRE_VERSION: u8 = 1;

/// Encodes a wire struct.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    postcard::to_allocvec(value).map_err(|_| EngineError::Malformed {
        what: "engine wire struct",
    })
}

/// Decodes a wire struct strictly: bounded size, the whole input consumed,
/// the version byte checked by the caller through [`Versioned`].
pub(crate) fn decode<T: DeserializeOwned + Versioned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, EngineError> {
    if bytes.len() > MAX_PART_BYTES {
        return Err(EngineError::Oversized {
            len: bytes.len(),
            limit: MAX_PART_BYTES,
        });
    }
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|_| EngineError::Malformed { what })?;
    if !rest.is_empty() || value.version() != WIRE_VERSION {
        return Err(EngineError::Malformed { what });
    }
    Ok(value)
}

/// A wire struct with a leading version byte.
pub(crate) trait Versioned {
    /// The version byte it carried.
    fn version(&self) -> u8;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u8 {
                self.version
            }
        }
    )*};
}

/// A DKG (or refresh) round-1 broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Round1Wire {
    /// [`WIRE_VERSION`].
    pub version: u8,
    /// The scheme's tag ([`crate::Scheme`]).
    pub scheme: u8,
    /// frost's `round1::Package::serialize()` bytes.
    pub frost_package: Vec<u8>,
    /// For each OTHER participant j: the X25519 key j must seal its round-2
    /// share for the author to. One key per sender, so revealing one secret
    /// in a blame opens exactly one ciphertext.
    pub recipient_keys: BTreeMap<PartyId, [u8; 32]>,
}

/// One HPKE-sealed direct part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SealedWire {
    /// [`WIRE_VERSION`].
    pub version: u8,
    /// The HPKE encapsulated key (X25519 ephemeral public key).
    pub encapped_key: [u8; 32],
    /// ChaCha20-Poly1305 ciphertext with its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// A blame proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlameProofWire {
    /// [`WIRE_VERSION`].
    pub version: u8,
    /// The accuser's evidence.
    pub evidence: Evidence,
}

/// What a blame proof carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Evidence {
    /// The fault is visible in the log itself (round 1, or a missing or
    /// misaddressed round-2 part): nothing to reveal.
    Public,
    /// The accuser's X25519 secret for the culprit's ciphertext (and only
    /// that one), so anyone can open it and check the share.
    RevealedKey([u8; 32]),
}

versioned!(Round1Wire, SealedWire, BlameProofWire);

/// Decodes a sealed direct part.
pub(crate) fn decode_sealed(bytes: &[u8]) -> Result<SealedWire, EngineError> {
    decode(bytes, "sealed share")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_decoding_refuses_trailing_bytes_bad_versions_and_truncation() {
        let w = SealedWire {
            version: WIRE_VERSION,
            encapped_key: [3; 32],
            ciphertext: vec![1, 2, 3],
        };
        let bytes = encode(&w).unwrap();
        assert_eq!(decode_sealed(&bytes).unwrap(), w);
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode_sealed(&long),
            Err(EngineError::Malformed { .. })
        ));
        assert!(matches!(
            decode_sealed(&bytes[..bytes.len() - 1]),
            Err(EngineError::Malformed { .. })
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            decode_sealed(&v2),
            Err(EngineError::Malformed { .. })
        ));
        assert!(matches!(
            decode_sealed(&vec![1; MAX_PART_BYTES + 1]),
            Err(EngineError::Oversized { .. })
        ));
    }
}
