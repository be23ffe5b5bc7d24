//! PCR indices, selections (TPML_PCR_SELECTION), the quote's PCR digest and
//! the PolicyPCR policy digest computed in software.

use crate::wire::{AlgId, ParseError, Reader, Writer};
use quorate_types::Sha256Digest;
use serde::{Deserialize, Serialize};
use std::fmt;

/// TPM_CC_PolicyPCR.
pub const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// Number of PCRs in a PC-client TPM (0..=23).
pub const PCR_COUNT: u8 = 24;
/// Size of a PCR selection bitmap for 24 PCRs (PCR_SELECT_MIN).
const SELECT_BYTES: usize = 3;
/// Largest bitmap accepted (PCR_SELECT_MAX on TPMs with up to 64 PCRs).
const MAX_SELECT_BYTES: usize = 8;
/// Most banks a selection may list (HASH_COUNT on any real TPM is below this).
const MAX_BANKS: u32 = 16;

/// A PCR index, 0..=23.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct PcrIndex(u8);

impl PcrIndex {
    /// The measurement PCR Quorate uses by default (not resettable at locality 0).
    pub const DEFAULT_MEASUREMENT: PcrIndex = PcrIndex(15);
    /// The development measurement PCR (resettable at locality 0: dev only).
    pub const DEV_MEASUREMENT: PcrIndex = PcrIndex(23);

    /// A PCR index, or `None` if it is 24 or more.
    pub const fn new(i: u8) -> Option<PcrIndex> {
        if i < PCR_COUNT {
            Some(PcrIndex(i))
        } else {
            None
        }
    }

    /// The index as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for PcrIndex {
    type Error = String;
    fn try_from(i: u8) -> Result<Self, String> {
        PcrIndex::new(i).ok_or_else(|| format!("PCR index {i} is out of range 0..=23"))
    }
}

impl From<PcrIndex> for u8 {
    fn from(p: PcrIndex) -> u8 {
        p.0
    }
}

impl fmt::Display for PcrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PCR {}", self.0)
    }
}

impl fmt::Debug for PcrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One bank's selection (TPMS_PCR_SELECTION).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PcrBankSelection {
    /// The bank's hash.
    pub hash: AlgId,
    /// The bitmap: bit `i % 8` of byte `i / 8` selects PCR `i`.
    pub select: Vec<u8>,
}

impl PcrBankSelection {
    /// Selected PCR indices below 24, ascending (higher bits are ignored
    /// here, and make `PcrSelection::parse` fail).
    pub fn pcrs(&self) -> Vec<PcrIndex> {
        let mut out = Vec::new();
        for (byte_i, byte) in self.select.iter().enumerate() {
            for bit in 0..8u8 {
                if byte & (1 << bit) != 0 {
                    if let Some(p) = u8::try_from(byte_i * 8)
                        .ok()
                        .and_then(|b| PcrIndex::new(b + bit))
                    {
                        out.push(p);
                    }
                }
            }
        }
        out
    }
}

impl fmt::Debug for PcrBankSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pcrs: Vec<u8> = self.pcrs().iter().map(|p| p.0).collect();
        write!(f, "{}:{pcrs:?}", self.hash)
    }
}

/// A TPML_PCR_SELECTION: banks and the PCRs selected in each, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct PcrSelection {
    /// The banks, in the order the TPM hashes them.
    pub banks: Vec<PcrBankSelection>,
}

impl PcrSelection {
    /// A SHA-256 selection of `pcrs` (one bank, 3-byte bitmap).
    pub fn sha256(pcrs: &[PcrIndex]) -> PcrSelection {
        let mut select = vec![0u8; SELECT_BYTES];
        for p in pcrs {
            if let Some(b) = select.get_mut(usize::from(p.0 / 8)) {
                *b |= 1 << (p.0 % 8);
            }
        }
        PcrSelection {
            banks: vec![PcrBankSelection {
                hash: AlgId::SHA256,
                select,
            }],
        }
    }

    /// Parses a TPML_PCR_SELECTION from `r`.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<PcrSelection, ParseError> {
        let count = r.u32("TPML_PCR_SELECTION.count")?;
        if count > MAX_BANKS {
            return Err(ParseError::TooLarge {
                what: "TPML_PCR_SELECTION.count",
                size: usize::try_from(count).unwrap_or(usize::MAX),
                max: MAX_BANKS as usize,
            });
        }
        let mut banks = Vec::new();
        for _ in 0..count {
            let hash = r.alg("TPMS_PCR_SELECTION.hash")?;
            let size = usize::from(r.u8("TPMS_PCR_SELECTION.sizeofSelect")?);
            if size > MAX_SELECT_BYTES {
                return Err(ParseError::TooLarge {
                    what: "TPMS_PCR_SELECTION.sizeofSelect",
                    size,
                    max: MAX_SELECT_BYTES,
                });
            }
            let select = r.bytes(size, "TPMS_PCR_SELECTION.pcrSelect")?.to_vec();
            if select.iter().skip(SELECT_BYTES).any(|b| *b != 0) {
                return Err(ParseError::InvalidValue {
                    what: "TPMS_PCR_SELECTION.pcrSelect",
                    value: 0,
                    expected: "only PCRs 0..=23 selected",
                });
            }
            banks.push(PcrBankSelection { hash, select });
        }
        Ok(PcrSelection { banks })
    }

    /// Parses a marshalled TPML_PCR_SELECTION (no trailing bytes).
    pub fn parse(bytes: &[u8]) -> Result<PcrSelection, ParseError> {
        let mut r = Reader::new(bytes);
        let s = PcrSelection::read(&mut r)?;
        r.finish("TPML_PCR_SELECTION")?;
        Ok(s)
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u32(u32::try_from(self.banks.len()).unwrap_or(u32::MAX));
        for b in &self.banks {
            w.u16(b.hash.0)
                .u8(u8::try_from(b.select.len()).unwrap_or(u8::MAX))
                .bytes(&b.select);
        }
    }

    /// The marshalled TPML_PCR_SELECTION.
    pub fn marshal(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_vec()
    }

    /// The (bank, PCR) pairs in the order the TPM concatenates their values.
    pub fn slots(&self) -> Vec<(AlgId, PcrIndex)> {
        self.banks
            .iter()
            .flat_map(|b| b.pcrs().into_iter().map(move |p| (b.hash, p)))
            .collect()
    }
}

/// A PCR's value in the SHA-256 bank.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PcrValue {
    /// Which PCR.
    pub index: PcrIndex,
    /// Its SHA-256 bank value.
    pub value: Sha256Digest,
}

impl fmt::Debug for PcrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.index, self.value)
    }
}

/// SHA-256 over the concatenation of PCR values, as a quote's pcrDigest (for
/// an AK signing with SHA-256) and PolicyPCR's pcrDigest are computed.
pub fn pcr_composite_digest(values: &[Sha256Digest]) -> Sha256Digest {
    let parts: Vec<&[u8]> = values.iter().map(|v| v.as_bytes().as_slice()).collect();
    Sha256Digest::of_parts(&parts)
}

/// The policy digest of a trial session that ran one
/// `TPM2_PolicyPCR(selection, pcrDigest)` from a fresh (all-zero) SHA-256
/// policy: `SHA256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION ||
/// SHA256(values in selection order))`.
pub fn policy_pcr_digest(selection: &PcrSelection, values: &[Sha256Digest]) -> Sha256Digest {
    let composite = pcr_composite_digest(values);
    Sha256Digest::of_parts(&[
        &[0u8; 32],
        &TPM_CC_POLICY_PCR.to_be_bytes(),
        &selection.marshal(),
        composite.as_bytes(),
    ])
}

/// The vote key's authPolicy for a single measurement PCR holding `value`.
pub fn measurement_policy(pcr: PcrIndex, value: &Sha256Digest) -> Sha256Digest {
    policy_pcr_digest(&PcrSelection::sha256(&[pcr]), &[*value])
}

/// SHA-256 PCR extend: `SHA256(old || digest)`.
pub fn extend_sha256(old: &Sha256Digest, digest: &Sha256Digest) -> Sha256Digest {
    Sha256Digest::of_parts(&[old.as_bytes(), digest.as_bytes()])
}

/// The value a PCR reset to zero holds after extending `digests` in order:
/// with `[sha256(executable), config digest]` this is the measurement a
/// vote key's PolicyPCR must expect (see [`measurement_policy`]).
pub fn expected_measurement(digests: &[Sha256Digest]) -> Sha256Digest {
    digests
        .iter()
        .fold(Sha256Digest([0; 32]), |acc, d| extend_sha256(&acc, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sha256_selection_encodes_like_the_tpm() {
        let s = PcrSelection::sha256(&[PcrIndex::new(15).unwrap(), PcrIndex::new(0).unwrap()]);
        assert_eq!(
            s.marshal(),
            vec![0, 0, 0, 1, 0x00, 0x0b, 3, 0x01, 0x80, 0x00]
        );
        let back = PcrSelection::parse(&s.marshal()).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.slots(),
            vec![(AlgId::SHA256, PcrIndex(0)), (AlgId::SHA256, PcrIndex(15))]
        );
    }

    #[test]
    fn policy_pcr_matches_its_definition() {
        let v = Sha256Digest([0x11; 32]);
        let sel = PcrSelection::sha256(&[PcrIndex(23)]);
        let mut pre = vec![0u8; 32];
        pre.extend_from_slice(&[0, 0, 1, 0x7f]);
        pre.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b, 3, 0, 0, 0x80]);
        pre.extend_from_slice(Sha256Digest::of(&[0x11; 32]).as_bytes());
        assert_eq!(policy_pcr_digest(&sel, &[v]), Sha256Digest::of(&pre));
        assert_eq!(measurement_policy(PcrIndex(23), &v), Sha256Digest::of(&pre));
        assert_ne!(measurement_policy(PcrIndex(15), &v), Sha256Digest::of(&pre));
    }

    #[test]
    fn expected_measurement_folds_extends() {
        let (a, b) = (Sha256Digest([1; 32]), Sha256Digest([2; 32]));
        assert_eq!(
            expected_measurement(&[a, b]),
            extend_sha256(&extend_sha256(&Sha256Digest([0; 32]), &a), &b)
        );
        assert_eq!(expected_measurement(&[]), Sha256Digest([0; 32]));
    }

    #[test]
    fn out_of_range_pcr_bits_are_rejected() {
        let bytes = [0, 0, 0, 1, 0, 0x0b, 4, 0, 0, 0, 1];
        assert!(matches!(
            PcrSelection::parse(&bytes),
            Err(ParseError::InvalidValue { .. })
        ));
        assert!(PcrIndex::new(24).is_none());
    }

    proptest! {
        #[test]
        fn selection_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(s) = PcrSelection::parse(&bytes) {
                prop_assert_eq!(s.marshal(), bytes);
            }
        }
    }
}
