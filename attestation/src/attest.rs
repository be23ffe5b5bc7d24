//! TPMS_ATTEST: what the TPM signs for TPM2_Quote and TPM2_Certify.

use crate::pcr::PcrSelection;
use crate::tpm::{TpmName, MAX_DIGEST};
use crate::wire::{to_hex, ParseError, Reader, Writer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// TPM_GENERATED_VALUE: the magic that starts every TPM-made TPMS_ATTEST.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_CERTIFY.
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// Largest TPM2B_NAME (nameAlg + SHA-512 digest).
const MAX_NAME: usize = 2 + 64;
/// Largest TPM2B_DATA (sizeof(TPMT_HA)).
const MAX_DATA: usize = 2 + 64;

/// TPMS_CLOCK_INFO: the TPM's clock and boot counters at signing time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was made (persistent).
    pub clock: u64,
    /// TPM Resets (reboots) since the TPM was cleared.
    pub reset_count: u32,
    /// TPM Restarts / Resumes since the last Reset.
    pub restart_count: u32,
    /// Whether `clock` is known not to have gone back since it was last
    /// reported (false after an unorderly shutdown).
    pub safe: bool,
}

impl fmt::Display for ClockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resetCount={} restartCount={} clock={}ms safe={}",
            self.reset_count, self.restart_count, self.clock, self.safe
        )
    }
}

/// The type-specific part of a TPMS_ATTEST this crate understands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attested {
    /// TPMS_QUOTE_INFO.
    Quote {
        /// The PCRs quoted.
        pcr_select: PcrSelection,
        /// Hash (with the signing scheme's hash) of their values.
        pcr_digest: Vec<u8>,
    },
    /// TPMS_CERTIFY_INFO.
    Certify {
        /// The certified object's Name.
        name: TpmName,
        /// The certified object's qualified name.
        qualified_name: TpmName,
    },
}

/// A parsed TPMS_ATTEST, keeping the exact signed bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TpmsAttest {
    raw: Vec<u8>,
    /// The magic (TPM_GENERATED_VALUE when the TPM made it).
    pub magic: u32,
    /// The structure tag (TPM_ST_ATTEST_*).
    pub attest_type: u16,
    /// The signing key's qualified name.
    pub qualified_signer: TpmName,
    /// The caller's qualifying data (nonce).
    pub extra_data: Vec<u8>,
    /// The TPM's clock and boot counters.
    pub clock_info: ClockInfo,
    /// Vendor-specific firmware version.
    pub firmware_version: u64,
    /// The quote or certify information.
    pub attested: Attested,
}

impl fmt::Debug for TpmsAttest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmsAttest")
            .field("magic", &format_args!("{:#010x}", self.magic))
            .field("type", &format_args!("{:#06x}", self.attest_type))
            .field("qualified_signer", &self.qualified_signer)
            .field("extra_data", &to_hex(&self.extra_data))
            .field("clock_info", &self.clock_info)
            .field(
                "firmware_version",
                &format_args!("{:#x}", self.firmware_version),
            )
            .field("attested", &self.attested)
            .finish()
    }
}

impl TpmsAttest {
    /// Parses a marshalled TPMS_ATTEST of type quote or certify. The magic is
    /// read but not checked here (the verifier reports it as its own
    /// failure); other attestation types are rejected; trailing bytes too.
    pub fn parse(bytes: &[u8]) -> Result<TpmsAttest, ParseError> {
        let mut r = Reader::new(bytes);
        let magic = r.u32("TPMS_ATTEST.magic")?;
        let attest_type = r.u16("TPMS_ATTEST.type")?;
        let qualified_signer = TpmName(r.tpm2b(MAX_NAME, "TPMS_ATTEST.qualifiedSigner")?.to_vec());
        let extra_data = r.tpm2b(MAX_DATA, "TPMS_ATTEST.extraData")?.to_vec();
        let clock = r.u64("TPMS_CLOCK_INFO.clock")?;
        let reset_count = r.u32("TPMS_CLOCK_INFO.resetCount")?;
        let restart_count = r.u32("TPMS_CLOCK_INFO.restartCount")?;
        let safe = match r.u8("TPMS_CLOCK_INFO.safe")? {
            0 => false,
            1 => true,
            v => {
                return Err(ParseError::InvalidValue {
                    what: "TPMS_CLOCK_INFO.safe",
                    value: u64::from(v),
                    expected: "0 or 1",
                })
            }
        };
        let firmware_version = r.u64("TPMS_ATTEST.firmwareVersion")?;
        let attested = match attest_type {
            TPM_ST_ATTEST_QUOTE => {
                let pcr_select = PcrSelection::read(&mut r)?;
                let pcr_digest = r.tpm2b(MAX_DIGEST, "TPMS_QUOTE_INFO.pcrDigest")?.to_vec();
                Attested::Quote {
                    pcr_select,
                    pcr_digest,
                }
            }
            TPM_ST_ATTEST_CERTIFY => {
                let name = TpmName(r.tpm2b(MAX_NAME, "TPMS_CERTIFY_INFO.name")?.to_vec());
                let qualified_name = TpmName(
                    r.tpm2b(MAX_NAME, "TPMS_CERTIFY_INFO.qualifiedName")?
                        .to_vec(),
                );
                Attested::Certify {
                    name,
                    qualified_name,
                }
            }
            other => {
                return Err(ParseError::InvalidValue {
                    what: "TPMS_ATTEST.type",
                    value: u64::from(other),
                    expected: "TPM_ST_ATTEST_QUOTE (0x8018) or TPM_ST_ATTEST_CERTIFY (0x8017)",
                })
            }
        };
        r.finish("TPMS_ATTEST")?;
        Ok(TpmsAttest {
            raw: bytes.to_vec(),
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            attested,
        })
    }

    /// The exact bytes the TPM signed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Marshals the fields (ignoring the stored bytes) as a TPM would. Used
    /// to build test evidence with a software signer, and for re-encoding.
    pub fn marshal(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.magic)
            .u16(self.attest_type)
            .tpm2b(self.qualified_signer.as_bytes())
            .tpm2b(&self.extra_data)
            .u64(self.clock_info.clock)
            .u32(self.clock_info.reset_count)
            .u32(self.clock_info.restart_count)
            .u8(u8::from(self.clock_info.safe))
            .u64(self.firmware_version);
        match &self.attested {
            Attested::Quote {
                pcr_select,
                pcr_digest,
            } => {
                pcr_select.write(&mut w);
                w.tpm2b(pcr_digest);
            }
            Attested::Certify {
                name,
                qualified_name,
            } => {
                w.tpm2b(name.as_bytes()).tpm2b(qualified_name.as_bytes());
            }
        }
        w.into_vec()
    }

    /// Builds a TPMS_ATTEST from fields (the stored bytes are its marshalling).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        attest_type: u16,
        qualified_signer: TpmName,
        extra_data: Vec<u8>,
        clock_info: ClockInfo,
        firmware_version: u64,
        attested: Attested,
    ) -> TpmsAttest {
        let mut a = TpmsAttest {
            raw: Vec::new(),
            magic: TPM_GENERATED_VALUE,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            attested,
        };
        a.raw = a.marshal();
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcr::PcrIndex;
    use proptest::prelude::*;

    fn sample_quote() -> TpmsAttest {
        TpmsAttest::new(
            TPM_ST_ATTEST_QUOTE,
            TpmName(vec![0, 0x0b, 1, 2, 3]),
            vec![9; 32],
            ClockInfo {
                clock: 1234,
                reset_count: 2,
                restart_count: 1,
                safe: true,
            },
            0x2019_1023_0016_3900,
            Attested::Quote {
                pcr_select: PcrSelection::sha256(&[PcrIndex::DEFAULT_MEASUREMENT]),
                pcr_digest: vec![7; 32],
            },
        )
    }

    #[test]
    fn quote_round_trips() {
        let q = sample_quote();
        let back = TpmsAttest::parse(q.as_bytes()).unwrap();
        assert_eq!(back, q);
        assert_eq!(back.magic, TPM_GENERATED_VALUE);
        assert_eq!(back.clock_info.reset_count, 2);
    }

    #[test]
    fn certify_round_trips() {
        let c = TpmsAttest::new(
            TPM_ST_ATTEST_CERTIFY,
            TpmName(vec![0, 0x0b, 5]),
            vec![],
            ClockInfo {
                clock: 1,
                reset_count: 0,
                restart_count: 0,
                safe: false,
            },
            0,
            Attested::Certify {
                name: TpmName(vec![0, 0x0b, 1]),
                qualified_name: TpmName(vec![0, 0x0b, 2]),
            },
        );
        assert_eq!(TpmsAttest::parse(c.as_bytes()).unwrap(), c);
    }

    #[test]
    fn bad_safe_flag_type_and_trailing_bytes_are_rejected() {
        let q = sample_quote();
        let mut b = q.as_bytes().to_vec();
        b.push(0);
        assert!(matches!(
            TpmsAttest::parse(&b),
            Err(ParseError::TrailingBytes { .. })
        ));
        let mut b = q.as_bytes().to_vec();
        b[4] = 0x80;
        b[5] = 0x14;
        assert!(matches!(
            TpmsAttest::parse(&b),
            Err(ParseError::InvalidValue {
                what: "TPMS_ATTEST.type",
                ..
            })
        ));
        // safe sits after magic(4) type(2) signer(2+5) extra(2+32) clock(8) counts(8).
        let mut b = q.as_bytes().to_vec();
        b[4 + 2 + 7 + 34 + 16] = 2;
        assert!(matches!(
            TpmsAttest::parse(&b),
            Err(ParseError::InvalidValue {
                what: "TPMS_CLOCK_INFO.safe",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn attest_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TpmsAttest::parse(&bytes);
        }

        #[test]
        fn attest_parser_never_panics_on_quote_prefix(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![0xff, 0x54, 0x43, 0x47, 0x80, 0x18];
            bytes.extend_from_slice(&tail);
            if let Ok(a) = TpmsAttest::parse(&bytes) {
                prop_assert_eq!(a.marshal(), bytes);
            }
        }
    }
}
