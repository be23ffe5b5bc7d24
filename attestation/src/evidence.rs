//! The evidence bundle a party sends (or commits to the log) to prove what
//! it runs, its postcard encoding, and the qualifying data its quote binds.

use crate::pcr::PcrValue;
use crate::tpm::TpmName;
use quorate_types::{Epoch, Sha256Digest};
use serde::{Deserialize, Serialize};

/// Version of the evidence encoding this crate writes and reads.
pub const EVIDENCE_VERSION: u16 = 1;
/// Domain tag that starts the quote's qualifying data.
pub const QUALIFYING_DATA_TAG: &[u8] = b"quorate/attestation/v1/quote\0";
/// Largest encoded evidence accepted (EK chains and logs are small).
pub const MAX_EVIDENCE_BYTES: usize = 1 << 20;

/// Marshalled TPMS_ATTEST and the TPMT_SIGNATURE over it, as the TPM
/// returned them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SignedAttest {
    /// TPMS_ATTEST bytes (what was signed).
    #[serde(with = "serde_bytes")]
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Everything a verifier needs to check one party's attestation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// TPM2_Quote by the AK over the SHA-256 bank of the measurement PCR
    /// (and the configuration PCR and PCRs 0-7, 10 when the policy asks).
    pub quote: SignedAttest,
    /// The SHA-256 value of every PCR the quote selects, in selection order.
    pub pcr_values: Vec<PcrValue>,
    /// The TCG crypto-agile event log of the measured launch.
    #[serde(with = "serde_bytes")]
    pub event_log: Vec<u8>,
    /// The AK's TPMT_PUBLIC.
    #[serde(with = "serde_bytes")]
    pub ak_public: Vec<u8>,
    /// The EK certificate (DER), when the TPM holds one.
    pub ek_certificate: Option<serde_bytes::ByteBuf>,
    /// Intermediate CA certificates (DER) for the EK certificate.
    pub ek_chain: Vec<serde_bytes::ByteBuf>,
    /// The vote key's TPMT_PUBLIC.
    #[serde(with = "serde_bytes")]
    pub vote_key_public: Vec<u8>,
    /// TPM2_Certify of the vote key by the AK.
    pub vote_key_certify: SignedAttest,
    /// SHA-256 of the party's TLS public key (SubjectPublicKeyInfo DER).
    pub tls_key_hash: Sha256Digest,
}

/// Why evidence bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The encoding is larger than [`MAX_EVIDENCE_BYTES`].
    #[error("evidence of {size} bytes exceeds the {MAX_EVIDENCE_BYTES}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The version is not one this verifier reads.
    #[error("evidence version {found}, this verifier reads version {EVIDENCE_VERSION}")]
    Version {
        /// The version found.
        found: u16,
    },
    /// The bytes are not a postcard-encoded evidence bundle.
    #[error("evidence is not a valid postcard encoding: {0}")]
    Postcard(String),
    /// Bytes follow the bundle.
    #[error("{0} trailing bytes after the evidence bundle")]
    TrailingBytes(usize),
}

impl Evidence {
    /// The versioned encoding: postcard of the version (u16) then the bundle.
    pub fn to_bytes(&self) -> Vec<u8> {
        // postcard serialisation into a Vec cannot fail for these types
        // (no maps with non-string keys, no unsized sequences); fall back to
        // an empty body, which decoding rejects, rather than panic.
        postcard::to_stdvec(&(EVIDENCE_VERSION, self)).unwrap_or_default()
    }

    /// Decodes [`Evidence::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Evidence, DecodeError> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(DecodeError::TooLarge { size: bytes.len() });
        }
        let (version, rest): (u16, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Postcard(e.to_string()))?;
        if version != EVIDENCE_VERSION {
            return Err(DecodeError::Version { found: version });
        }
        let (ev, rest): (Evidence, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| DecodeError::Postcard(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(ev)
    }
}

/// What makes a quote fresh: a verifier's nonce (joining) or the epoch and
/// the latest committed block hash (periodic, one quote for every peer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Freshness {
    /// A nonce chosen by the verifier (at most 64 bytes).
    Nonce(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The attestation epoch and the hash of the block that opened it.
    Epoch {
        /// The epoch.
        epoch: Epoch,
        /// The latest committed block hash when the epoch began.
        block_hash: Sha256Digest,
    },
}

/// The quote's qualifying data:
/// `SHA-256(QUALIFYING_DATA_TAG || freshness || tls_key_hash || u16 len || vote key Name)`,
/// where freshness is `0x01 || u32 len || nonce` or
/// `0x02 || epoch (u64 BE) || block hash`. The host passes it to TPM2_Quote;
/// tpm2_checkquote takes its hex as `-q`.
pub fn qualifying_data(
    freshness: &Freshness,
    tls_key_hash: &Sha256Digest,
    vote_key_name: &TpmName,
) -> Sha256Digest {
    let mut f = Vec::new();
    match freshness {
        Freshness::Nonce(n) => {
            f.push(1);
            f.extend_from_slice(&u32::try_from(n.len()).unwrap_or(u32::MAX).to_be_bytes());
            f.extend_from_slice(n);
        }
        Freshness::Epoch { epoch, block_hash } => {
            f.push(2);
            f.extend_from_slice(&epoch.0.to_be_bytes());
            f.extend_from_slice(block_hash.as_bytes());
        }
    }
    let name = vote_key_name.as_bytes();
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes();
    Sha256Digest::of_parts(&[QUALIFYING_DATA_TAG, &f, tls_key_hash.as_bytes(), &len, name])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcr::PcrIndex;
    use proptest::prelude::*;

    fn sample() -> Evidence {
        Evidence {
            quote: SignedAttest {
                attest: vec![1, 2],
                signature: vec![3],
            },
            pcr_values: vec![PcrValue {
                index: PcrIndex::DEFAULT_MEASUREMENT,
                value: Sha256Digest([4; 32]),
            }],
            event_log: vec![5; 10],
            ak_public: vec![6],
            ek_certificate: Some(serde_bytes::ByteBuf::from(vec![7])),
            ek_chain: vec![serde_bytes::ByteBuf::from(vec![8])],
            vote_key_public: vec![9],
            vote_key_certify: SignedAttest {
                attest: vec![10],
                signature: vec![11],
            },
            tls_key_hash: Sha256Digest([12; 32]),
        }
    }

    #[test]
    fn evidence_round_trips_and_rejects_other_versions() {
        let e = sample();
        let b = e.to_bytes();
        assert_eq!(Evidence::from_bytes(&b).unwrap(), e);
        let mut v2 = b.clone();
        v2[0] = 2;
        assert_eq!(
            Evidence::from_bytes(&v2),
            Err(DecodeError::Version { found: 2 })
        );
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            Evidence::from_bytes(&long),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            Evidence::from_bytes(&b[..b.len() - 1]),
            Err(DecodeError::Postcard(_))
        ));
    }

    #[test]
    fn qualifying_data_binds_every_input() {
        let name = TpmName(vec![0, 0x0b, 1]);
        let tls = Sha256Digest([1; 32]);
        let base = qualifying_data(&Freshness::Nonce(vec![1, 2, 3]), &tls, &name);
        assert_ne!(
            base,
            qualifying_data(&Freshness::Nonce(vec![1, 2, 4]), &tls, &name)
        );
        assert_ne!(
            base,
            qualifying_data(
                &Freshness::Nonce(vec![1, 2, 3]),
                &Sha256Digest([2; 32]),
                &name
            )
        );
        assert_ne!(
            base,
            qualifying_data(
                &Freshness::Nonce(vec![1, 2, 3]),
                &tls,
                &TpmName(vec![0, 0x0b, 2])
            )
        );
        let e1 = qualifying_data(
            &Freshness::Epoch {
                epoch: Epoch(1),
                block_hash: Sha256Digest([0; 32]),
            },
            &tls,
            &name,
        );
        let e2 = qualifying_data(
            &Freshness::Epoch {
                epoch: Epoch(2),
                block_hash: Sha256Digest([0; 32]),
            },
            &tls,
            &name,
        );
        assert_ne!(e1, e2);
        let mut pre = QUALIFYING_DATA_TAG.to_vec();
        pre.extend_from_slice(&[1, 0, 0, 0, 3, 1, 2, 3]);
        pre.extend_from_slice(&[1; 32]);
        pre.extend_from_slice(&[0, 3, 0, 0x0b, 1]);
        assert_eq!(base, Sha256Digest::of(&pre));
    }

    proptest! {
        #[test]
        fn evidence_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Evidence::from_bytes(&bytes);
        }
    }
}
