//! The signature bytes of an audit-log checkpoint's `<origin>/P<n>/tpm`
//! note line: the issuer's TPM quote whose qualifying data is the
//! checkpoint's hash (`Checkpoint::quote_qualifying_data` in the firmware),
//! with the PCR values it quotes.

use crate::evidence::SignedAttest;
use crate::pcr::PcrValue;
use serde::{Deserialize, Serialize};

/// Version byte in front of a [`CheckpointQuote`]'s encoding.
pub const CHECKPOINT_QUOTE_VERSION: u8 = 1;

/// Largest encoded [`CheckpointQuote`] accepted.
pub const MAX_CHECKPOINT_QUOTE_BYTES: usize = 8 * 1024;

/// A TPM2_Quote over a checkpoint, as carried in its note line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointQuote {
    /// TPMS_ATTEST and the AK's TPMT_SIGNATURE over it.
    pub quote: SignedAttest,
    /// The SHA-256 value of every quoted PCR, in selection order.
    pub pcr_values: Vec<PcrValue>,
}

/// Why checkpoint quote bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointQuoteError {
    /// No bytes.
    #[error("checkpoint quote is empty")]
    Empty,
    /// Too large.
    #[error("checkpoint quote of {0} bytes exceeds the {MAX_CHECKPOINT_QUOTE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Unknown format version.
    #[error(
        "checkpoint quote format version {0} is unknown (expected {CHECKPOINT_QUOTE_VERSION})"
    )]
    UnknownVersion(u8),
    /// Not a valid encoding.
    #[error("checkpoint quote does not decode: {0}")]
    Malformed(String),
    /// Bytes after the encoding.
    #[error("checkpoint quote has {0} trailing bytes")]
    TrailingBytes(usize),
}

impl CheckpointQuote {
    /// Version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CHECKPOINT_QUOTE_VERSION];
        // Serialising plain owned data into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes untrusted bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<CheckpointQuote, CheckpointQuoteError> {
        let (&version, rest) = bytes.split_first().ok_or(CheckpointQuoteError::Empty)?;
        if bytes.len() > MAX_CHECKPOINT_QUOTE_BYTES {
            return Err(CheckpointQuoteError::TooLarge(bytes.len()));
        }
        if version != CHECKPOINT_QUOTE_VERSION {
            return Err(CheckpointQuoteError::UnknownVersion(version));
        }
        let (q, tail) = postcard::take_from_bytes::<CheckpointQuote>(rest)
            .map_err(|e| CheckpointQuoteError::Malformed(e.to_string()))?;
        if !tail.is_empty() {
            return Err(CheckpointQuoteError::TrailingBytes(tail.len()));
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcr::PcrIndex;
    use proptest::prelude::*;
    use quorate_types::Sha256Digest;

    fn sample() -> CheckpointQuote {
        CheckpointQuote {
            quote: SignedAttest {
                attest: vec![0xff, 0x54, 0x43, 0x47, 1, 2, 3],
                signature: vec![0, 0x18, 9, 9],
            },
            pcr_values: vec![PcrValue {
                index: PcrIndex::DEFAULT_MEASUREMENT,
                value: Sha256Digest::of(b"pcr"),
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_bad_framing() {
        let q = sample();
        let b = q.encode();
        assert_eq!(b[0], CHECKPOINT_QUOTE_VERSION);
        assert_eq!(CheckpointQuote::decode(&b), Ok(q));
        assert_eq!(
            CheckpointQuote::decode(&[]),
            Err(CheckpointQuoteError::Empty)
        );
        let mut v = b.clone();
        v[0] = 7;
        assert_eq!(
            CheckpointQuote::decode(&v),
            Err(CheckpointQuoteError::UnknownVersion(7))
        );
        let mut t = b.clone();
        t.push(0);
        assert_eq!(
            CheckpointQuote::decode(&t),
            Err(CheckpointQuoteError::TrailingBytes(1))
        );
        assert!(matches!(
            CheckpointQuote::decode(&b[..b.len() - 1]),
            Err(CheckpointQuoteError::Malformed(_))
        ));
        let big = vec![CHECKPOINT_QUOTE_VERSION; MAX_CHECKPOINT_QUOTE_BYTES + 1];
        assert!(matches!(
            CheckpointQuote::decode(&big),
            Err(CheckpointQuoteError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = CheckpointQuote::decode(&bytes);
        }
    }
}
