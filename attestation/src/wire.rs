//! Big-endian TPM wire decoding and encoding (TPM 2.0 Part 2 marshalling):
//! a bounds-checked reader that never panics, and the matching writer.

use std::fmt;

/// Why bytes could not be parsed as the TPM structure they claim to be.
///
/// `what` names the field being read, so a message reads like
/// "TPMT_PUBLIC.unique.x: needs 32 bytes, 3 left".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input ended inside a field.
    #[error("{what}: truncated, needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A complete structure was followed by more bytes.
    #[error("{what}: {count} trailing bytes after a complete structure")]
    TrailingBytes {
        /// The structure that was complete.
        what: &'static str,
        /// How many bytes followed it.
        count: usize,
    },
    /// A sized field (TPM2B) is larger than the structure allows.
    #[error("{what}: size {size} exceeds the maximum {max}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// The size found.
        size: usize,
        /// The largest size accepted.
        max: usize,
    },
    /// An algorithm identifier that this crate does not handle in this field.
    #[error("{what}: unsupported algorithm {alg}")]
    UnsupportedAlgorithm {
        /// The field.
        what: &'static str,
        /// The identifier found.
        alg: AlgId,
    },
    /// A value outside the range the specification allows.
    #[error("{what}: invalid value {value:#x} (expected {expected})")]
    InvalidValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
}

/// A TPM_ALG_ID (TPM 2.0 Part 2, table 9). Shown as its name when known.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct AlgId(pub u16);

impl AlgId {
    /// TPM_ALG_RSA.
    pub const RSA: AlgId = AlgId(0x0001);
    /// TPM_ALG_SHA1.
    pub const SHA1: AlgId = AlgId(0x0004);
    /// TPM_ALG_HMAC.
    pub const HMAC: AlgId = AlgId(0x0005);
    /// TPM_ALG_AES.
    pub const AES: AlgId = AlgId(0x0006);
    /// TPM_ALG_MGF1.
    pub const MGF1: AlgId = AlgId(0x0007);
    /// TPM_ALG_KEYEDHASH.
    pub const KEYEDHASH: AlgId = AlgId(0x0008);
    /// TPM_ALG_XOR.
    pub const XOR: AlgId = AlgId(0x000A);
    /// TPM_ALG_SHA256.
    pub const SHA256: AlgId = AlgId(0x000B);
    /// TPM_ALG_SHA384.
    pub const SHA384: AlgId = AlgId(0x000C);
    /// TPM_ALG_SHA512.
    pub const SHA512: AlgId = AlgId(0x000D);
    /// TPM_ALG_NULL.
    pub const NULL: AlgId = AlgId(0x0010);
    /// TPM_ALG_SM3_256.
    pub const SM3_256: AlgId = AlgId(0x0012);
    /// TPM_ALG_SM4.
    pub const SM4: AlgId = AlgId(0x0013);
    /// TPM_ALG_RSASSA.
    pub const RSASSA: AlgId = AlgId(0x0014);
    /// TPM_ALG_RSAES.
    pub const RSAES: AlgId = AlgId(0x0015);
    /// TPM_ALG_RSAPSS.
    pub const RSAPSS: AlgId = AlgId(0x0016);
    /// TPM_ALG_OAEP.
    pub const OAEP: AlgId = AlgId(0x0017);
    /// TPM_ALG_ECDSA.
    pub const ECDSA: AlgId = AlgId(0x0018);
    /// TPM_ALG_ECDH.
    pub const ECDH: AlgId = AlgId(0x0019);
    /// TPM_ALG_ECDAA.
    pub const ECDAA: AlgId = AlgId(0x001A);
    /// TPM_ALG_SM2.
    pub const SM2: AlgId = AlgId(0x001B);
    /// TPM_ALG_ECSCHNORR.
    pub const ECSCHNORR: AlgId = AlgId(0x001C);
    /// TPM_ALG_ECMQV.
    pub const ECMQV: AlgId = AlgId(0x001D);
    /// TPM_ALG_KDF1_SP800_56A.
    pub const KDF1_SP800_56A: AlgId = AlgId(0x0020);
    /// TPM_ALG_KDF2.
    pub const KDF2: AlgId = AlgId(0x0021);
    /// TPM_ALG_KDF1_SP800_108.
    pub const KDF1_SP800_108: AlgId = AlgId(0x0022);
    /// TPM_ALG_ECC.
    pub const ECC: AlgId = AlgId(0x0023);
    /// TPM_ALG_SYMCIPHER.
    pub const SYMCIPHER: AlgId = AlgId(0x0025);
    /// TPM_ALG_CAMELLIA.
    pub const CAMELLIA: AlgId = AlgId(0x0026);
    /// TPM_ALG_CTR.
    pub const CTR: AlgId = AlgId(0x0040);
    /// TPM_ALG_OFB.
    pub const OFB: AlgId = AlgId(0x0041);
    /// TPM_ALG_CBC.
    pub const CBC: AlgId = AlgId(0x0042);
    /// TPM_ALG_CFB.
    pub const CFB: AlgId = AlgId(0x0043);
    /// TPM_ALG_ECB.
    pub const ECB: AlgId = AlgId(0x0044);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            AlgId::RSA => "RSA",
            AlgId::SHA1 => "SHA1",
            AlgId::HMAC => "HMAC",
            AlgId::AES => "AES",
            AlgId::MGF1 => "MGF1",
            AlgId::KEYEDHASH => "KEYEDHASH",
            AlgId::XOR => "XOR",
            AlgId::SHA256 => "SHA256",
            AlgId::SHA384 => "SHA384",
            AlgId::SHA512 => "SHA512",
            AlgId::NULL => "NULL",
            AlgId::SM3_256 => "SM3_256",
            AlgId::SM4 => "SM4",
            AlgId::RSASSA => "RSASSA",
            AlgId::RSAES => "RSAES",
            AlgId::RSAPSS => "RSAPSS",
            AlgId::OAEP => "OAEP",
            AlgId::ECDSA => "ECDSA",
            AlgId::ECDH => "ECDH",
            AlgId::ECDAA => "ECDAA",
            AlgId::SM2 => "SM2",
            AlgId::ECSCHNORR => "ECSCHNORR",
            AlgId::ECMQV => "ECMQV",
            AlgId::KDF1_SP800_56A => "KDF1_SP800_56A",
            AlgId::KDF2 => "KDF2",
            AlgId::KDF1_SP800_108 => "KDF1_SP800_108",
            AlgId::ECC => "ECC",
            AlgId::SYMCIPHER => "SYMCIPHER",
            AlgId::CAMELLIA => "CAMELLIA",
            AlgId::CTR => "CTR",
            AlgId::OFB => "OFB",
            AlgId::CBC => "CBC",
            AlgId::CFB => "CFB",
            AlgId::ECB => "ECB",
            _ => return None,
        })
    }

    /// The digest size of a hash algorithm, or `None` if this is not a hash
    /// this crate knows.
    pub fn digest_size(self) -> Option<usize> {
        match self {
            AlgId::SHA1 => Some(20),
            AlgId::SHA256 | AlgId::SM3_256 => Some(32),
            AlgId::SHA384 => Some(48),
            AlgId::SHA512 => Some(64),
            _ => None,
        }
    }

    /// The ring digest algorithm for this hash, when ring has one.
    pub(crate) fn ring_digest(self) -> Option<&'static ring::digest::Algorithm> {
        match self {
            AlgId::SHA1 => Some(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            AlgId::SHA256 => Some(&ring::digest::SHA256),
            AlgId::SHA384 => Some(&ring::digest::SHA384),
            AlgId::SHA512 => Some(&ring::digest::SHA512),
            _ => None,
        }
    }
}

impl fmt::Display for AlgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "TPM_ALG_{n} ({:#06x})", self.0),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

impl fmt::Debug for AlgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).ok_or(ParseError::Truncated {
            what,
            needed: n,
            available: self.remaining(),
        })?;
        let out = self.buf.get(self.pos..end).ok_or(ParseError::Truncated {
            what,
            needed: n,
            available: self.remaining(),
        })?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], ParseError> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        Ok(u8::from_be_bytes(self.array::<1>(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.array::<2>(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array::<4>(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array::<8>(what)?))
    }

    pub(crate) fn u16_le(&mut self, what: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.array::<2>(what)?))
    }

    pub(crate) fn u32_le(&mut self, what: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.array::<4>(what)?))
    }

    pub(crate) fn alg(&mut self, what: &'static str) -> Result<AlgId, ParseError> {
        Ok(AlgId(self.u16(what)?))
    }

    /// A TPM2B: a u16 size, then that many bytes, at most `max`.
    pub(crate) fn tpm2b(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        let size = usize::from(self.u16(what)?);
        if size > max {
            return Err(ParseError::TooLarge { what, size, max });
        }
        self.bytes(size, what)
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), ParseError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(ParseError::TrailingBytes { what, count }),
        }
    }
}

/// Big-endian TPM marshalling into a growing buffer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer::default()
    }
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// A TPM2B. Sizes above u16::MAX are truncated to fit, which callers
    /// rule out: every TPM2B this crate writes is at most 64 KiB by type.
    pub(crate) fn tpm2b(&mut self, b: &[u8]) -> &mut Self {
        let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.u16(n);
        self.buf
            .extend_from_slice(b.get(..usize::from(n)).unwrap_or(b));
        self
    }
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_and_trailing_bytes() {
        let mut r = Reader::new(&[0, 3, 1, 2]);
        assert_eq!(
            r.tpm2b(10, "f"),
            Err(ParseError::Truncated {
                what: "f",
                needed: 3,
                available: 2
            })
        );
        let mut r = Reader::new(&[0, 1, 9, 7]);
        assert_eq!(r.tpm2b(10, "f").unwrap(), &[9]);
        assert_eq!(
            r.finish("s"),
            Err(ParseError::TrailingBytes {
                what: "s",
                count: 1
            })
        );
        let mut r = Reader::new(&[0, 5]);
        assert_eq!(
            r.tpm2b(4, "f"),
            Err(ParseError::TooLarge {
                what: "f",
                size: 5,
                max: 4
            })
        );
    }

    #[test]
    fn writer_round_trips_through_reader() {
        let mut w = Writer::new();
        w.u16(0x1234).u32(0xdead_beef).u64(7).tpm2b(b"abc").u8(9);
        let v = w.into_vec();
        let mut r = Reader::new(&v);
        assert_eq!(r.u16("a").unwrap(), 0x1234);
        assert_eq!(r.u32("b").unwrap(), 0xdead_beef);
        assert_eq!(r.u64("c").unwrap(), 7);
        assert_eq!(r.tpm2b(8, "d").unwrap(), b"abc");
        assert_eq!(r.u8("e").unwrap(), 9);
        r.finish("all").unwrap();
    }

    #[test]
    fn alg_display_names_known_ids() {
        assert_eq!(AlgId::SHA256.to_string(), "TPM_ALG_SHA256 (0x000b)");
        assert_eq!(AlgId(0x7777).to_string(), "0x7777");
    }
}
