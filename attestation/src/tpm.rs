//! TPM 2.0 public areas (TPMT_PUBLIC), object Names and TPM signatures
//! (TPMT_SIGNATURE), parsed from their marshalled bytes and verified with
//! ring.
//!
//! The bytes are what the TPM (or tss-esapi's `Public::marshall()` and
//! `Signature::marshall()`) produces. Parsers accept exactly one structure
//! and reject trailing bytes, so one byte string has one meaning.

use crate::wire::{to_hex, AlgId, ParseError, Reader, Writer};
use quorate_types::{PublicKey, Signature};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest ECC coordinate or signature scalar accepted (P-521: 66 bytes).
pub const MAX_ECC_PARAMETER: usize = 66;
/// Largest RSA modulus or signature accepted (4096 bits).
pub const MAX_RSA_BYTES: usize = 512;
/// Largest digest accepted (SHA-512).
pub const MAX_DIGEST: usize = 64;

/// Object attributes (TPMA_OBJECT, TPM 2.0 Part 2 §8.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ObjectAttributes(pub u32);

macro_rules! attr_bits {
    ($( $(#[$doc:meta])* $konst:ident = $bit:expr, $getter:ident, $label:expr; )*) => {
        impl ObjectAttributes {
            $( $(#[$doc])* pub const $konst: ObjectAttributes = ObjectAttributes(1 << $bit);
               $(#[$doc])* pub fn $getter(self) -> bool { self.0 & (1 << $bit) != 0 } )*
            const LABELS: &'static [(u32, &'static str)] = &[$( (1 << $bit, $label) ),*];
        }
    };
}

attr_bits! {
    /// fixedTPM: the object cannot be duplicated out of this TPM.
    FIXED_TPM = 1, fixed_tpm, "fixedTPM";
    /// stClear: the object's context is lost on TPM Reset and Restart.
    ST_CLEAR = 2, st_clear, "stClear";
    /// fixedParent: the object cannot be moved to another parent.
    FIXED_PARENT = 4, fixed_parent, "fixedParent";
    /// sensitiveDataOrigin: the TPM generated the private part.
    SENSITIVE_DATA_ORIGIN = 5, sensitive_data_origin, "sensitiveDataOrigin";
    /// userWithAuth: the USER role may use the authValue (not only the policy).
    USER_WITH_AUTH = 6, user_with_auth, "userWithAuth";
    /// adminWithPolicy: ADMIN role actions need the policy.
    ADMIN_WITH_POLICY = 7, admin_with_policy, "adminWithPolicy";
    /// noDA: the object is not subject to dictionary-attack protection.
    NO_DA = 10, no_da, "noDA";
    /// encryptedDuplication: duplication needs an inner wrapper.
    ENCRYPTED_DUPLICATION = 11, encrypted_duplication, "encryptedDuplication";
    /// restricted: the key only signs TPM-generated structures (or only
    /// decrypts TPM-formatted blobs).
    RESTRICTED = 16, restricted, "restricted";
    /// decrypt: the key may decrypt.
    DECRYPT = 17, decrypt, "decrypt";
    /// sign (also "encrypt" for symmetric keys): the key may sign.
    SIGN = 18, sign, "sign";
    /// x509sign: the key may sign X.509 TBS structures.
    X509_SIGN = 19, x509_sign, "x509sign";
}

impl ObjectAttributes {
    /// Whether every bit of `other` is set here.
    pub fn contains(self, other: ObjectAttributes) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for ObjectAttributes {
    type Output = ObjectAttributes;
    fn bitor(self, rhs: Self) -> Self {
        ObjectAttributes(self.0 | rhs.0)
    }
}

impl fmt::Display for ObjectAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)?;
        let mut sep = " (";
        for (bit, label) in Self::LABELS {
            if self.0 & bit != 0 {
                write!(f, "{sep}{label}")?;
                sep = "|";
            }
        }
        let known: u32 = Self::LABELS.iter().fold(0, |a, (b, _)| a | b);
        if self.0 & !known != 0 {
            write!(f, "{sep}reserved {:#x}", self.0 & !known)?;
            sep = "|";
        }
        if sep == "|" {
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectAttributes({self})")
    }
}

/// A TPM_ECC_CURVE identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EccCurve(pub u16);

impl EccCurve {
    /// TPM_ECC_NIST_P256.
    pub const NIST_P256: EccCurve = EccCurve(0x0003);
    /// TPM_ECC_NIST_P384.
    pub const NIST_P384: EccCurve = EccCurve(0x0004);
    /// TPM_ECC_NIST_P521.
    pub const NIST_P521: EccCurve = EccCurve(0x0005);

    /// Coordinate size in bytes for the NIST curves this crate handles.
    pub fn coordinate_size(self) -> Option<usize> {
        match self {
            EccCurve::NIST_P256 => Some(32),
            EccCurve::NIST_P384 => Some(48),
            EccCurve::NIST_P521 => Some(66),
            _ => None,
        }
    }
}

impl fmt::Display for EccCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EccCurve::NIST_P256 => write!(f, "NIST P-256"),
            EccCurve::NIST_P384 => write!(f, "NIST P-384"),
            EccCurve::NIST_P521 => write!(f, "NIST P-521"),
            EccCurve(c) => write!(f, "curve {c:#06x}"),
        }
    }
}

impl fmt::Debug for EccCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// TPMT_SYM_DEF_OBJECT: the symmetric algorithm of a storage key, or NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SymDefObject {
    /// The algorithm (TPM_ALG_NULL for none).
    pub algorithm: AlgId,
    /// Key size in bits (0 when NULL).
    pub key_bits: u16,
    /// Block mode (TPM_ALG_NULL when the algorithm is NULL).
    pub mode: AlgId,
}

impl SymDefObject {
    /// No symmetric algorithm.
    pub const NULL: SymDefObject = SymDefObject {
        algorithm: AlgId::NULL,
        key_bits: 0,
        mode: AlgId::NULL,
    };
    /// AES-128-CFB, the usual storage-key and EK choice.
    pub const AES_128_CFB: SymDefObject = SymDefObject {
        algorithm: AlgId::AES,
        key_bits: 128,
        mode: AlgId::CFB,
    };

    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let algorithm = r.alg("TPMT_SYM_DEF_OBJECT.algorithm")?;
        match algorithm {
            AlgId::NULL => Ok(SymDefObject::NULL),
            AlgId::AES | AlgId::SM4 | AlgId::CAMELLIA => {
                let key_bits = r.u16("TPMT_SYM_DEF_OBJECT.keyBits")?;
                let mode = r.alg("TPMT_SYM_DEF_OBJECT.mode")?;
                Ok(SymDefObject {
                    algorithm,
                    key_bits,
                    mode,
                })
            }
            alg => Err(ParseError::UnsupportedAlgorithm {
                what: "TPMT_SYM_DEF_OBJECT.algorithm",
                alg,
            }),
        }
    }

    fn write(&self, w: &mut Writer) {
        w.u16(self.algorithm.0);
        if self.algorithm != AlgId::NULL {
            w.u16(self.key_bits).u16(self.mode.0);
        }
    }
}

/// An asymmetric or KDF scheme with its hash (TPMT_ECC_SCHEME,
/// TPMT_RSA_SCHEME, TPMT_KDF_SCHEME), or NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scheme {
    /// The scheme (TPM_ALG_NULL for none: the key may be used with any).
    pub scheme: AlgId,
    /// Its hash (TPM_ALG_NULL when the scheme is NULL or takes no hash).
    pub hash: AlgId,
    /// ECDAA commit count (0 otherwise).
    pub count: u16,
}

impl Scheme {
    /// No scheme.
    pub const NULL: Scheme = Scheme {
        scheme: AlgId::NULL,
        hash: AlgId::NULL,
        count: 0,
    };
    /// ECDSA with SHA-256.
    pub const ECDSA_SHA256: Scheme = Scheme {
        scheme: AlgId::ECDSA,
        hash: AlgId::SHA256,
        count: 0,
    };

    fn parse(
        r: &mut Reader<'_>,
        what: &'static str,
        allowed: &[AlgId],
    ) -> Result<Self, ParseError> {
        let scheme = r.alg(what)?;
        if scheme == AlgId::NULL {
            return Ok(Scheme::NULL);
        }
        if !allowed.contains(&scheme) {
            return Err(ParseError::UnsupportedAlgorithm { what, alg: scheme });
        }
        if scheme == AlgId::RSAES {
            return Ok(Scheme {
                scheme,
                hash: AlgId::NULL,
                count: 0,
            });
        }
        let hash = r.alg(what)?;
        let count = if scheme == AlgId::ECDAA {
            r.u16(what)?
        } else {
            0
        };
        Ok(Scheme {
            scheme,
            hash,
            count,
        })
    }

    fn write(&self, w: &mut Writer) {
        w.u16(self.scheme.0);
        if self.scheme != AlgId::NULL && self.scheme != AlgId::RSAES {
            w.u16(self.hash.0);
            if self.scheme == AlgId::ECDAA {
                w.u16(self.count);
            }
        }
    }
}

const ECC_SCHEMES: &[AlgId] = &[
    AlgId::ECDSA,
    AlgId::ECDH,
    AlgId::ECDAA,
    AlgId::SM2,
    AlgId::ECSCHNORR,
    AlgId::ECMQV,
];
const RSA_SCHEMES: &[AlgId] = &[AlgId::RSASSA, AlgId::RSAES, AlgId::RSAPSS, AlgId::OAEP];
const KDF_SCHEMES: &[AlgId] = &[
    AlgId::MGF1,
    AlgId::KDF1_SP800_56A,
    AlgId::KDF2,
    AlgId::KDF1_SP800_108,
];

/// TPMS_ECC_PARMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EccParms {
    /// Symmetric algorithm for a storage (parent) key; NULL otherwise.
    pub symmetric: SymDefObject,
    /// Signing or key-exchange scheme.
    pub scheme: Scheme,
    /// The curve.
    pub curve: EccCurve,
    /// Key-derivation scheme.
    pub kdf: Scheme,
}

/// TPMS_RSA_PARMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RsaParms {
    /// Symmetric algorithm for a storage (parent) key; NULL otherwise.
    pub symmetric: SymDefObject,
    /// Signing or encryption scheme.
    pub scheme: Scheme,
    /// Modulus size in bits.
    pub key_bits: u16,
    /// Public exponent (0 means 65537).
    pub exponent: u32,
}

/// The algorithm-specific parameters and public value of a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublicKeyParams {
    /// An elliptic-curve key and its public point.
    Ecc {
        /// Its parameters.
        parms: EccParms,
        /// X coordinate, big-endian, as marshalled.
        x: Vec<u8>,
        /// Y coordinate, big-endian, as marshalled.
        y: Vec<u8>,
    },
    /// An RSA key and its modulus.
    Rsa {
        /// Its parameters.
        parms: RsaParms,
        /// The modulus, big-endian.
        modulus: Vec<u8>,
    },
}

/// A TPM Name: nameAlg (2 bytes, big-endian) followed by the hash of the
/// object's TPMT_PUBLIC under that algorithm. Shown as hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TpmName(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl TpmName {
    /// The Name's bytes (as TPM commands and TPMS_ATTEST carry them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The Name's hash algorithm, if it has one (a handle-Name has not).
    pub fn alg(&self) -> Option<AlgId> {
        let b = self.0.get(..2)?;
        let alg = AlgId(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
        (alg.digest_size()? + 2 == self.0.len()).then_some(alg)
    }

    /// Computes `nameAlg || H_nameAlg(data)`; `None` if ring lacks the hash.
    pub fn compute(name_alg: AlgId, data: &[u8]) -> Option<TpmName> {
        let d = ring::digest::digest(name_alg.ring_digest()?, data);
        let mut v = Vec::with_capacity(2 + d.as_ref().len());
        v.extend_from_slice(&name_alg.0.to_be_bytes());
        v.extend_from_slice(d.as_ref());
        Some(TpmName(v))
    }

    /// The qualified name of a child of the object whose qualified name is
    /// `self`: `nameAlg || H(parentQN || childName)` (Part 1 §16.6).
    pub fn qualify(&self, child: &TpmName) -> Option<TpmName> {
        let alg = child.alg()?;
        let mut data = self.0.clone();
        data.extend_from_slice(&child.0);
        TpmName::compute(alg, &data)
    }
}

impl fmt::Display for TpmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for TpmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TpmName({self})")
    }
}

/// A parsed TPMT_PUBLIC (ECC or RSA), keeping its exact bytes for the Name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TpmtPublic {
    raw: Vec<u8>,
    object_type: AlgId,
    name_alg: AlgId,
    attributes: ObjectAttributes,
    auth_policy: Vec<u8>,
    params: PublicKeyParams,
    name: TpmName,
}

impl fmt::Debug for TpmtPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmtPublic")
            .field("type", &self.object_type)
            .field("name_alg", &self.name_alg)
            .field("attributes", &self.attributes)
            .field("auth_policy", &to_hex(&self.auth_policy))
            .field("params", &self.params)
            .field("name", &self.name)
            .finish()
    }
}

impl TpmtPublic {
    /// Parses a marshalled TPMT_PUBLIC. ECC and RSA keys are accepted; the
    /// nameAlg must be SHA-1, SHA-256, SHA-384 or SHA-512 (so the Name can be
    /// computed); trailing bytes are rejected.
    pub fn parse(bytes: &[u8]) -> Result<TpmtPublic, ParseError> {
        let mut r = Reader::new(bytes);
        let object_type = r.alg("TPMT_PUBLIC.type")?;
        let name_alg = r.alg("TPMT_PUBLIC.nameAlg")?;
        if name_alg.ring_digest().is_none() {
            return Err(ParseError::UnsupportedAlgorithm {
                what: "TPMT_PUBLIC.nameAlg",
                alg: name_alg,
            });
        }
        let attributes = ObjectAttributes(r.u32("TPMT_PUBLIC.objectAttributes")?);
        let auth_policy = r.tpm2b(MAX_DIGEST, "TPMT_PUBLIC.authPolicy")?.to_vec();
        let params = match object_type {
            AlgId::ECC => {
                let symmetric = SymDefObject::parse(&mut r)?;
                let scheme = Scheme::parse(&mut r, "TPMS_ECC_PARMS.scheme", ECC_SCHEMES)?;
                let curve = EccCurve(r.u16("TPMS_ECC_PARMS.curveID")?);
                let kdf = Scheme::parse(&mut r, "TPMS_ECC_PARMS.kdf", KDF_SCHEMES)?;
                let x = r.tpm2b(MAX_ECC_PARAMETER, "TPMT_PUBLIC.unique.x")?.to_vec();
                let y = r.tpm2b(MAX_ECC_PARAMETER, "TPMT_PUBLIC.unique.y")?.to_vec();
                PublicKeyParams::Ecc {
                    parms: EccParms {
                        symmetric,
                        scheme,
                        curve,
                        kdf,
                    },
                    x,
                    y,
                }
            }
            AlgId::RSA => {
                let symmetric = SymDefObject::parse(&mut r)?;
                let scheme = Scheme::parse(&mut r, "TPMS_RSA_PARMS.scheme", RSA_SCHEMES)?;
                let key_bits = r.u16("TPMS_RSA_PARMS.keyBits")?;
                let exponent = r.u32("TPMS_RSA_PARMS.exponent")?;
                let modulus = r.tpm2b(MAX_RSA_BYTES, "TPMT_PUBLIC.unique.rsa")?.to_vec();
                PublicKeyParams::Rsa {
                    parms: RsaParms {
                        symmetric,
                        scheme,
                        key_bits,
                        exponent,
                    },
                    modulus,
                }
            }
            alg => {
                return Err(ParseError::UnsupportedAlgorithm {
                    what: "TPMT_PUBLIC.type",
                    alg,
                })
            }
        };
        r.finish("TPMT_PUBLIC")?;
        let name = TpmName::compute(name_alg, bytes).ok_or(ParseError::UnsupportedAlgorithm {
            what: "TPMT_PUBLIC.nameAlg",
            alg: name_alg,
        })?;
        Ok(TpmtPublic {
            raw: bytes.to_vec(),
            object_type,
            name_alg,
            attributes,
            auth_policy,
            params,
            name,
        })
    }

    /// Parses a TPM2B_PUBLIC (a u16 size followed by a TPMT_PUBLIC).
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<TpmtPublic, ParseError> {
        let mut r = Reader::new(bytes);
        let inner = r.tpm2b(usize::from(u16::MAX), "TPM2B_PUBLIC")?;
        r.finish("TPM2B_PUBLIC")?;
        TpmtPublic::parse(inner)
    }

    /// Marshals an ECC public area (what a TPM would return for a key made
    /// from this template) and parses it back. Used for templates, software
    /// test keys and known-answer tests.
    pub fn new_ecc(
        name_alg: AlgId,
        attributes: ObjectAttributes,
        auth_policy: &[u8],
        parms: EccParms,
        x: &[u8],
        y: &[u8],
    ) -> Result<TpmtPublic, ParseError> {
        let mut w = Writer::new();
        w.u16(AlgId::ECC.0)
            .u16(name_alg.0)
            .u32(attributes.0)
            .tpm2b(auth_policy);
        parms.symmetric.write(&mut w);
        parms.scheme.write(&mut w);
        w.u16(parms.curve.0);
        parms.kdf.write(&mut w);
        w.tpm2b(x).tpm2b(y);
        TpmtPublic::parse(&w.into_vec())
    }

    /// Builds the public area of a P-256 ECDSA-SHA256 signing key with the
    /// given attributes and policy, around an uncompressed point.
    pub fn new_p256_signing(
        attributes: ObjectAttributes,
        auth_policy: &[u8],
        point: &PublicKey,
    ) -> Result<TpmtPublic, ParseError> {
        let parms = EccParms {
            symmetric: SymDefObject::NULL,
            scheme: Scheme::ECDSA_SHA256,
            curve: EccCurve::NIST_P256,
            kdf: Scheme::NULL,
        };
        // A PublicKey is 65 bytes by type: 0x04 || X (32) || Y (32).
        let (x, y) = point
            .0
            .get(1..)
            .and_then(|c| c.split_at_checked(32))
            .unwrap_or_default();
        TpmtPublic::new_ecc(AlgId::SHA256, attributes, auth_policy, parms, x, y)
    }

    /// The exact marshalled bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The key type (TPM_ALG_ECC or TPM_ALG_RSA).
    pub fn object_type(&self) -> AlgId {
        self.object_type
    }

    /// The Name algorithm.
    pub fn name_alg(&self) -> AlgId {
        self.name_alg
    }

    /// The object attributes.
    pub fn object_attributes(&self) -> ObjectAttributes {
        self.attributes
    }

    /// The authPolicy digest (empty when the object has none).
    pub fn auth_policy(&self) -> &[u8] {
        &self.auth_policy
    }

    /// The algorithm parameters and public value.
    pub fn params(&self) -> &PublicKeyParams {
        &self.params
    }

    /// The ECC parameters, if this is an ECC key.
    pub fn ecc_parms(&self) -> Option<&EccParms> {
        match &self.params {
            PublicKeyParams::Ecc { parms, .. } => Some(parms),
            PublicKeyParams::Rsa { .. } => None,
        }
    }

    /// The object's Name: nameAlg || H_nameAlg(TPMT_PUBLIC bytes).
    pub fn name(&self) -> &TpmName {
        &self.name
    }

    /// The uncompressed SEC1 point (0x04 || X || Y) of an ECC key on `curve`,
    /// coordinates left-padded to the curve size.
    pub fn ecc_point(&self, curve: EccCurve) -> Result<Vec<u8>, KeyError> {
        let (parms, x, y) = match &self.params {
            PublicKeyParams::Ecc { parms, x, y } => (parms, x, y),
            PublicKeyParams::Rsa { .. } => {
                return Err(KeyError::NotEcc {
                    found: self.object_type,
                })
            }
        };
        if parms.curve != curve {
            return Err(KeyError::WrongCurve {
                expected: curve,
                found: parms.curve,
            });
        }
        let size = curve.coordinate_size().ok_or(KeyError::WrongCurve {
            expected: curve,
            found: parms.curve,
        })?;
        let mut out = vec![0u8; 1 + 2 * size];
        if let Some(first) = out.first_mut() {
            *first = 0x04;
        }
        left_pad_into(out.get_mut(1..1 + size).unwrap_or_default(), x).ok_or(
            KeyError::CoordinateTooLong {
                size: x.len(),
                max: size,
            },
        )?;
        left_pad_into(out.get_mut(1 + size..).unwrap_or_default(), y).ok_or(
            KeyError::CoordinateTooLong {
                size: y.len(),
                max: size,
            },
        )?;
        Ok(out)
    }

    /// The uncompressed 65-byte point of a P-256 key.
    pub fn ecc_p256_point(&self) -> Result<PublicKey, KeyError> {
        let v = self.ecc_point(EccCurve::NIST_P256)?;
        let mut p = [0u8; 65];
        if v.len() != p.len() {
            return Err(KeyError::CoordinateTooLong {
                size: v.len(),
                max: p.len(),
            });
        }
        p.copy_from_slice(&v);
        Ok(PublicKey(p))
    }
}

/// Copies `src` (big-endian, leading zeros allowed) right-aligned into `dst`.
fn left_pad_into(dst: &mut [u8], src: &[u8]) -> Option<()> {
    let first = src.iter().position(|b| *b != 0).unwrap_or(src.len());
    let src = src.get(first..)?;
    let start = dst.len().checked_sub(src.len())?;
    dst.get_mut(start..)?.copy_from_slice(src);
    Some(())
}

/// Why a public area is not the key a check needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is not an ECC key.
    #[error("expected an ECC key, found type {found}")]
    NotEcc {
        /// Its type.
        found: AlgId,
    },
    /// The key is on another curve.
    #[error("expected a key on {expected}, found {found}")]
    WrongCurve {
        /// The curve needed.
        expected: EccCurve,
        /// The key's curve.
        found: EccCurve,
    },
    /// A coordinate is longer than the curve allows.
    #[error("ECC coordinate of {size} bytes exceeds the curve's {max}")]
    CoordinateTooLong {
        /// Its size (after leading zeros).
        size: usize,
        /// The curve's coordinate size.
        max: usize,
    },
}

/// A parsed TPMT_SIGNATURE.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TpmSignature {
    /// An ECC signature (ECDSA, ECSCHNORR, SM2 or ECDAA): r and s.
    Ecc {
        /// The signature scheme.
        scheme: AlgId,
        /// The hash the TPM signed with.
        hash: AlgId,
        /// r, big-endian.
        r: Vec<u8>,
        /// s, big-endian.
        s: Vec<u8>,
    },
    /// An RSA signature (RSASSA or RSAPSS).
    Rsa {
        /// The signature scheme.
        scheme: AlgId,
        /// The hash the TPM signed with.
        hash: AlgId,
        /// The signature value.
        sig: Vec<u8>,
    },
}

impl fmt::Debug for TpmSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmSignature::Ecc { scheme, hash, r, s } => {
                write!(
                    f,
                    "TpmSignature::Ecc({scheme}, {hash}, r={}, s={})",
                    to_hex(r),
                    to_hex(s)
                )
            }
            TpmSignature::Rsa { scheme, hash, sig } => {
                write!(
                    f,
                    "TpmSignature::Rsa({scheme}, {hash}, {} bytes)",
                    sig.len()
                )
            }
        }
    }
}

impl TpmSignature {
    /// Parses a marshalled TPMT_SIGNATURE; trailing bytes are rejected.
    pub fn parse(bytes: &[u8]) -> Result<TpmSignature, ParseError> {
        let mut r = Reader::new(bytes);
        let scheme = r.alg("TPMT_SIGNATURE.sigAlg")?;
        let sig = match scheme {
            AlgId::ECDSA | AlgId::ECSCHNORR | AlgId::SM2 | AlgId::ECDAA => {
                let hash = r.alg("TPMS_SIGNATURE_ECC.hash")?;
                let rr = r
                    .tpm2b(MAX_ECC_PARAMETER, "TPMS_SIGNATURE_ECC.signatureR")?
                    .to_vec();
                let ss = r
                    .tpm2b(MAX_ECC_PARAMETER, "TPMS_SIGNATURE_ECC.signatureS")?
                    .to_vec();
                TpmSignature::Ecc {
                    scheme,
                    hash,
                    r: rr,
                    s: ss,
                }
            }
            AlgId::RSASSA | AlgId::RSAPSS => {
                let hash = r.alg("TPMS_SIGNATURE_RSA.hash")?;
                let sig = r.tpm2b(MAX_RSA_BYTES, "TPMS_SIGNATURE_RSA.sig")?.to_vec();
                TpmSignature::Rsa { scheme, hash, sig }
            }
            alg => {
                return Err(ParseError::UnsupportedAlgorithm {
                    what: "TPMT_SIGNATURE.sigAlg",
                    alg,
                })
            }
        };
        r.finish("TPMT_SIGNATURE")?;
        Ok(sig)
    }

    /// An ECDSA-SHA256 TPMT_SIGNATURE from a fixed r||s signature (how a
    /// software signer produces evidence in tests).
    pub fn from_ecdsa_p256(sig: &Signature) -> TpmSignature {
        // A Signature is 64 bytes by type: r (32) || s (32).
        let (r, s) = sig.0.split_at_checked(32).unwrap_or_default();
        TpmSignature::Ecc {
            scheme: AlgId::ECDSA,
            hash: AlgId::SHA256,
            r: r.to_vec(),
            s: s.to_vec(),
        }
    }

    /// The marshalled TPMT_SIGNATURE.
    pub fn marshal(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            TpmSignature::Ecc { scheme, hash, r, s } => {
                w.u16(scheme.0).u16(hash.0).tpm2b(r).tpm2b(s);
            }
            TpmSignature::Rsa { scheme, hash, sig } => {
                w.u16(scheme.0).u16(hash.0).tpm2b(sig);
            }
        }
        w.into_vec()
    }

    /// The 64-byte r||s form of an ECDSA P-256 signature with SHA-256 (r and
    /// s left-padded to 32 bytes).
    pub fn to_p256_fixed(&self) -> Result<Signature, SignatureError> {
        match self {
            TpmSignature::Ecc {
                scheme: AlgId::ECDSA,
                hash: AlgId::SHA256,
                r,
                s,
            } => Signature::from_r_s(r, s).ok_or(SignatureError::ScalarTooLong),
            TpmSignature::Ecc {
                scheme: AlgId::ECDSA,
                hash,
                ..
            }
            | TpmSignature::Rsa { hash, .. }
                if *hash != AlgId::SHA256 =>
            {
                Err(SignatureError::UnsupportedHash { found: *hash })
            }
            TpmSignature::Ecc { scheme, .. } | TpmSignature::Rsa { scheme, .. } => {
                Err(SignatureError::UnsupportedScheme { found: *scheme })
            }
        }
    }
}

/// Why a TPM signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The key cannot make this kind of signature.
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
    /// The signature is not ECDSA.
    #[error("expected an ECDSA signature, found scheme {found}")]
    UnsupportedScheme {
        /// The scheme found.
        found: AlgId,
    },
    /// The signature's hash is not SHA-256.
    #[error("expected a SHA-256 signature, found hash {found}")]
    UnsupportedHash {
        /// The hash found.
        found: AlgId,
    },
    /// The key is restricted to a scheme other than ECDSA-SHA256.
    #[error("the key's scheme is {scheme} with {hash}, not ECDSA with SHA-256")]
    KeySchemeMismatch {
        /// The key's scheme.
        scheme: AlgId,
        /// The key's scheme hash.
        hash: AlgId,
    },
    /// r or s is longer than 32 bytes.
    #[error("ECDSA r or s longer than 32 bytes")]
    ScalarTooLong,
    /// The signature does not verify under the key.
    #[error("ECDSA P-256 signature does not verify under the key")]
    Invalid,
}

/// Verifies a TPM ECDSA P-256 / SHA-256 signature over `message` (ring
/// hashes the message) under the ECC key `public`.
pub fn verify_ecdsa_p256(
    public: &TpmtPublic,
    message: &[u8],
    sig: &TpmSignature,
) -> Result<(), SignatureError> {
    let point = public.ecc_p256_point()?;
    if let Some(parms) = public.ecc_parms() {
        if parms.scheme != Scheme::NULL
            && (parms.scheme.scheme != AlgId::ECDSA || parms.scheme.hash != AlgId::SHA256)
        {
            return Err(SignatureError::KeySchemeMismatch {
                scheme: parms.scheme.scheme,
                hash: parms.scheme.hash,
            });
        }
    }
    let fixed = sig.to_p256_fixed()?;
    point
        .verify(message, &fixed)
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// A software P-256 key standing in for a TPM key in unit tests.
    pub(crate) fn soft_key() -> (EcdsaKeyPair, PublicKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut p = [0u8; 65];
        p.copy_from_slice(kp.public_key().as_ref());
        (kp, PublicKey(p))
    }

    pub(crate) fn soft_sign(kp: &EcdsaKeyPair, msg: &[u8]) -> TpmSignature {
        let sig = kp.sign(&SystemRandom::new(), msg).unwrap();
        let mut s = [0u8; 64];
        s.copy_from_slice(sig.as_ref());
        TpmSignature::from_ecdsa_p256(&Signature(s))
    }

    fn attrs() -> ObjectAttributes {
        ObjectAttributes::FIXED_TPM
            | ObjectAttributes::FIXED_PARENT
            | ObjectAttributes::SENSITIVE_DATA_ORIGIN
            | ObjectAttributes::USER_WITH_AUTH
            | ObjectAttributes::NO_DA
            | ObjectAttributes::SIGN
    }

    #[test]
    fn ecc_public_round_trips_and_names() {
        let (_, pk) = soft_key();
        let p = TpmtPublic::new_p256_signing(attrs(), &[7u8; 32], &pk).unwrap();
        let again = TpmtPublic::parse(p.as_bytes()).unwrap();
        assert_eq!(p, again);
        assert_eq!(again.ecc_p256_point().unwrap(), pk);
        assert_eq!(again.auth_policy(), &[7u8; 32]);
        let a = again.object_attributes();
        assert!(
            a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin() && a.no_da() && a.sign()
        );
        assert!(!a.restricted() && !a.decrypt());
        let name = again.name();
        assert_eq!(name.as_bytes().len(), 34);
        assert_eq!(&name.as_bytes()[..2], &[0x00, 0x0b]);
        assert_eq!(
            &name.as_bytes()[2..],
            ring::digest::digest(&ring::digest::SHA256, p.as_bytes()).as_ref()
        );
        assert_eq!(name.to_string().len(), 68);
        assert_eq!(name.alg(), Some(AlgId::SHA256));
    }

    #[test]
    fn trailing_and_truncated_bytes_are_rejected() {
        let (_, pk) = soft_key();
        let p = TpmtPublic::new_p256_signing(attrs(), &[], &pk).unwrap();
        let mut long = p.as_bytes().to_vec();
        long.push(0);
        assert!(matches!(
            TpmtPublic::parse(&long),
            Err(ParseError::TrailingBytes { .. })
        ));
        for cut in 0..p.as_bytes().len() {
            assert!(matches!(
                TpmtPublic::parse(&p.as_bytes()[..cut]),
                Err(ParseError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn short_coordinates_are_left_padded() {
        let (_, pk) = soft_key();
        let parms = EccParms {
            symmetric: SymDefObject::NULL,
            scheme: Scheme::ECDSA_SHA256,
            curve: EccCurve::NIST_P256,
            kdf: Scheme::NULL,
        };
        let mut x = pk.0[1..33].to_vec();
        x[0] = 0;
        let p =
            TpmtPublic::new_ecc(AlgId::SHA256, attrs(), &[], parms, &x[1..], &pk.0[33..]).unwrap();
        let point = p.ecc_p256_point().unwrap();
        assert_eq!(&point.0[1..33], &x[..]);
    }

    #[test]
    fn signature_verifies_and_any_flip_fails() {
        let (kp, pk) = soft_key();
        let p = TpmtPublic::new_p256_signing(attrs(), &[], &pk).unwrap();
        let sig = soft_sign(&kp, b"hello");
        let bytes = sig.marshal();
        let parsed = TpmSignature::parse(&bytes).unwrap();
        assert_eq!(parsed, sig);
        verify_ecdsa_p256(&p, b"hello", &parsed).unwrap();
        assert_eq!(
            verify_ecdsa_p256(&p, b"hellp", &parsed),
            Err(SignatureError::Invalid)
        );
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let bad = TpmSignature::parse(&bad).unwrap();
        assert_eq!(
            verify_ecdsa_p256(&p, b"hello", &bad),
            Err(SignatureError::Invalid)
        );
        let (_, other) = soft_key();
        let q = TpmtPublic::new_p256_signing(attrs(), &[], &other).unwrap();
        assert_eq!(
            verify_ecdsa_p256(&q, b"hello", &parsed),
            Err(SignatureError::Invalid)
        );
        assert_eq!(parsed.to_p256_fixed().unwrap().0.len(), 64);
    }

    #[test]
    fn wrong_hash_and_scheme_are_named() {
        let (kp, pk) = soft_key();
        let p = TpmtPublic::new_p256_signing(attrs(), &[], &pk).unwrap();
        let TpmSignature::Ecc { r, s, .. } = soft_sign(&kp, b"m") else {
            unreachable!()
        };
        let sha1 = TpmSignature::Ecc {
            scheme: AlgId::ECDSA,
            hash: AlgId::SHA1,
            r: r.clone(),
            s: s.clone(),
        };
        assert_eq!(
            verify_ecdsa_p256(&p, b"m", &sha1),
            Err(SignatureError::UnsupportedHash { found: AlgId::SHA1 })
        );
        let schnorr = TpmSignature::Ecc {
            scheme: AlgId::ECSCHNORR,
            hash: AlgId::SHA256,
            r,
            s,
        };
        assert_eq!(
            verify_ecdsa_p256(&p, b"m", &schnorr),
            Err(SignatureError::UnsupportedScheme {
                found: AlgId::ECSCHNORR
            })
        );
    }

    #[test]
    fn attributes_display_lists_flags() {
        let s = (ObjectAttributes::RESTRICTED | ObjectAttributes::SIGN).to_string();
        assert_eq!(s, "0x00050000 (restricted|sign)");
    }

    proptest! {
        #[test]
        fn public_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TpmtPublic::parse(&bytes);
            let _ = TpmtPublic::parse_tpm2b(&bytes);
        }

        #[test]
        fn public_parser_never_panics_on_ecc_prefix(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![0x00, 0x23, 0x00, 0x0b];
            bytes.extend_from_slice(&tail);
            if let Ok(p) = TpmtPublic::parse(&bytes) {
                let _ = p.ecc_p256_point();
                prop_assert_eq!(p.as_bytes(), &bytes[..]);
            }
        }

        #[test]
        fn signature_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(s) = TpmSignature::parse(&bytes) {
                prop_assert_eq!(s.marshal(), bytes);
                let _ = s.to_p256_fixed();
            }
        }
    }
}
