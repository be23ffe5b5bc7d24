//! Credential activation, verifier side: TPM2_MakeCredential computed in
//! software for an ECC or RSA endorsement key (TPM 2.0 Part 1 §24 "Credential
//! Protection", Part 3 §12.6), so `quorate enroll` can challenge a party
//! without a TPM of its own.
//!
//! The verifier picks a random credential and seals it to the party's EK
//! public key and the AK's Name. Only a TPM holding that EK's private key
//! *and* an object with that Name can recover it (TPM2_ActivateCredential),
//! so a correct answer proves the AK lives in the same TPM as the EK, which
//! the EK certificate chain ties to a manufacturer.
//!
//! Steps, with H the EK's nameAlg:
//! 1. ECDH with a fresh ephemeral key on the EK's curve: Z = x(d_e · Q_EK).
//! 2. seed = KDFe(H, Z, "IDENTITY", x(Q_e), x(Q_EK), |H|).
//! 3. symKey = KDFa(H, seed, "STORAGE", Name(AK), "", key bits of the EK's
//!    symmetric algorithm); encIdentity = AES-CFB(symKey, IV = 0,
//!    TPM2B_DIGEST(credential)).
//! 4. HMACkey = KDFa(H, seed, "INTEGRITY", "", "", |H|);
//!    outerHMAC = HMAC_H(HMACkey, encIdentity || Name(AK)).
//! 5. credentialBlob = TPM2B_DIGEST(outerHMAC) || encIdentity;
//!    secret = TPMS_ECC_POINT(Q_e).
//!
//! For an RSA EK, steps 1-2 are replaced by: seed = |H| random bytes,
//! secret = RSAES-OAEP(EK, seed, hash H, label "IDENTITY\0").
//!
//! The ephemeral private key comes in as an argument (this crate has no
//! randomness source): the caller draws it from the OS.

use crate::tpm::{ObjectAttributes, PublicKeyParams, TpmName, TpmtPublic};
use crate::wire::{AlgId, Writer};
use aes::cipher::{BlockEncrypt, KeyInit};
use ring::hmac;

/// Attributes an EK (a restricted decryption key in the TPM) must have.
pub const EK_REQUIRED: ObjectAttributes = ObjectAttributes(
    ObjectAttributes::FIXED_TPM.0
        | ObjectAttributes::FIXED_PARENT.0
        | ObjectAttributes::SENSITIVE_DATA_ORIGIN.0
        | ObjectAttributes::RESTRICTED.0
        | ObjectAttributes::DECRYPT.0,
);

/// Why a credential could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The EK is not an ECC key on P-256 or P-384.
    #[error("EK must be an ECC P-256 or P-384 key, found {0}")]
    UnsupportedKey(String),
    /// The EK's nameAlg is not SHA-256 or SHA-384.
    #[error("EK nameAlg must be SHA-256 or SHA-384, found {0}")]
    UnsupportedNameAlg(AlgId),
    /// The EK's symmetric algorithm is not AES-128/256-CFB.
    #[error("EK symmetric algorithm must be AES-128 or AES-256 in CFB mode, found {algorithm} {key_bits} {mode}")]
    UnsupportedSymmetric {
        /// The algorithm.
        algorithm: AlgId,
        /// Key size.
        key_bits: u16,
        /// Mode.
        mode: AlgId,
    },
    /// The EK is not a restricted decryption key resident in its TPM.
    #[error("EK attributes {found}: a storage EK must have {required}")]
    EkAttributes {
        /// What it has.
        found: ObjectAttributes,
        /// What it must have.
        required: ObjectAttributes,
    },
    /// The EK's point is not on its curve.
    #[error("EK public point is not a valid point on its curve")]
    BadEkPoint,
    /// The ephemeral secret is not a valid scalar for the curve.
    #[error(
        "ephemeral secret must be {expected} bytes forming a nonzero scalar below the curve order"
    )]
    BadEphemeral {
        /// Its required length.
        expected: usize,
    },
    /// The credential is empty or longer than the EK nameAlg's digest.
    #[error("credential must be 1..={max} bytes, found {found}")]
    CredentialSize {
        /// Its size.
        found: usize,
        /// The largest allowed.
        max: usize,
    },
}

/// A TPM2_MakeCredential result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT contents: TPM2B_DIGEST(outerHMAC) || encIdentity.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the marshalled ephemeral TPMS_ECC_POINT.
    pub secret: Vec<u8>,
}

impl MadeCredential {
    /// The file `tpm2_makecredential -o` writes and `tpm2_activatecredential
    /// -i` reads: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
    /// TPM2B_ENCRYPTED_SECRET.
    pub fn to_tpm2_tools_file(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(0xBADC_C0DE)
            .u32(1)
            .tpm2b(&self.credential_blob)
            .tpm2b(&self.secret);
        w.into_vec()
    }
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
}

impl Hash {
    fn size(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
        }
    }
    fn digest(self) -> &'static ring::digest::Algorithm {
        match self {
            Hash::Sha256 => &ring::digest::SHA256,
            Hash::Sha384 => &ring::digest::SHA384,
        }
    }
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha384 => hmac::HMAC_SHA384,
        }
    }
}

/// KDFa (Part 1 §11.4.10.2, SP 800-108 counter mode with HMAC):
/// `HMAC(key, i || label || 0x00 || context_u || context_v || bits)`.
fn kdfa(
    hash: Hash,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let bytes = usize::try_from(bits.div_ceil(8)).unwrap_or(usize::MAX);
    let k = hmac::Key::new(hash.hmac(), key);
    let mut out = Vec::with_capacity(bytes + hash.size());
    let mut i: u32 = 1;
    while out.len() < bytes {
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(&i.to_be_bytes());
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// KDFe (Part 1 §11.4.10.3, SP 800-56A concatenation KDF):
/// `H(i || Z || label || 0x00 || party_u || party_v)`.
fn kdfe(
    hash: Hash,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bytes: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + hash.size());
    let mut i: u32 = 1;
    while out.len() < bytes {
        let mut ctx = ring::digest::Context::new(hash.digest());
        ctx.update(&i.to_be_bytes());
        ctx.update(z);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(party_u);
        ctx.update(party_v);
        out.extend_from_slice(ctx.finish().as_ref());
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// AES-CFB128 encryption with a zero IV, as the TPM protects credentials.
fn aes_cfb_encrypt(key: &[u8], data: &mut [u8]) -> Option<()> {
    // Short-lived, one per credential: the size difference is irrelevant.
    #[allow(clippy::large_enum_variant)]
    enum Aes {
        A128(aes::Aes128),
        A256(aes::Aes256),
    }
    let cipher = match key.len() {
        16 => Aes::A128(aes::Aes128::new_from_slice(key).ok()?),
        32 => Aes::A256(aes::Aes256::new_from_slice(key).ok()?),
        _ => return None,
    };
    let mut feedback = [0u8; 16];
    for chunk in data.chunks_mut(16) {
        let mut block = aes::Block::from(feedback);
        match &cipher {
            Aes::A128(c) => c.encrypt_block(&mut block),
            Aes::A256(c) => c.encrypt_block(&mut block),
        }
        for (p, k) in chunk.iter_mut().zip(block.iter()) {
            *p ^= k;
        }
        let n = chunk.len();
        feedback
            .get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(chunk);
    }
    Some(())
}

/// The shared secret and the ephemeral public point of one ECDH.
struct Agreement {
    z: Vec<u8>,
    x: Vec<u8>,
    y: Vec<u8>,
}

/// Ephemeral ECDH on the EK's curve.
fn ecdh(
    curve_size: usize,
    ek_point: &[u8],
    ephemeral: &[u8],
) -> Result<Agreement, CredentialError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let bad_eph = CredentialError::BadEphemeral {
        expected: curve_size,
    };
    let (z, encoded) = match curve_size {
        32 => {
            let ek = p256::PublicKey::from_sec1_bytes(ek_point)
                .map_err(|_| CredentialError::BadEkPoint)?;
            let sk = p256::SecretKey::from_slice(ephemeral).map_err(|_| bad_eph.clone())?;
            let z = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), ek.as_affine());
            (
                z.raw_secret_bytes().to_vec(),
                sk.public_key().to_encoded_point(false).as_bytes().to_vec(),
            )
        }
        48 => {
            let ek = p384::PublicKey::from_sec1_bytes(ek_point)
                .map_err(|_| CredentialError::BadEkPoint)?;
            let sk = p384::SecretKey::from_slice(ephemeral).map_err(|_| bad_eph.clone())?;
            let z = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), ek.as_affine());
            (
                z.raw_secret_bytes().to_vec(),
                sk.public_key().to_encoded_point(false).as_bytes().to_vec(),
            )
        }
        _ => return Err(bad_eph),
    };
    let x = encoded
        .get(1..1 + curve_size)
        .ok_or(CredentialError::BadEkPoint)?
        .to_vec();
    let y = encoded
        .get(1 + curve_size..)
        .ok_or(CredentialError::BadEkPoint)?
        .to_vec();
    Ok(Agreement { z, x, y })
}

/// TPM2_MakeCredential for the EK `ek`, sealing `credential` (1 to
/// |nameAlg| bytes) to the object named `object_name` (the AK).
/// `ephemeral` must be fresh random bytes from the caller: for an ECC EK
/// the ephemeral private scalar (32 bytes for P-256, 48 for P-384); for an
/// RSA EK 2×|nameAlg| bytes (the seed, then the OAEP seed).
pub fn make_credential(
    ek: &TpmtPublic,
    object_name: &TpmName,
    credential: &[u8],
    ephemeral: &[u8],
) -> Result<MadeCredential, CredentialError> {
    let hash = match ek.name_alg() {
        AlgId::SHA256 => Hash::Sha256,
        AlgId::SHA384 => Hash::Sha384,
        other => return Err(CredentialError::UnsupportedNameAlg(other)),
    };
    let sym = match ek.params() {
        PublicKeyParams::Ecc { parms, .. } => parms.symmetric,
        PublicKeyParams::Rsa { parms, .. } => parms.symmetric,
        #[allow(unreachable_patterns)] // PublicKeyParams is non_exhaustive
        _ => {
            return Err(CredentialError::UnsupportedKey(format!(
                "type {}",
                ek.object_type()
            )))
        }
    };
    if sym.algorithm != AlgId::AES
        || sym.mode != AlgId::CFB
        || !(sym.key_bits == 128 || sym.key_bits == 256)
    {
        return Err(CredentialError::UnsupportedSymmetric {
            algorithm: sym.algorithm,
            key_bits: sym.key_bits,
            mode: sym.mode,
        });
    }
    if !ek.object_attributes().contains(EK_REQUIRED) {
        return Err(CredentialError::EkAttributes {
            found: ek.object_attributes(),
            required: EK_REQUIRED,
        });
    }
    if credential.is_empty() || credential.len() > hash.size() {
        return Err(CredentialError::CredentialSize {
            found: credential.len(),
            max: hash.size(),
        });
    }
    let (seed, secret) = match ek.params() {
        PublicKeyParams::Rsa { parms, modulus } => {
            rsa_seed(hash, modulus, parms.exponent, ephemeral)?
        }
        _ => ecc_seed(ek, hash, ephemeral)?,
    };
    let name = object_name.as_bytes();

    let mut enc_identity = Writer::new();
    enc_identity.tpm2b(credential);
    let mut enc_identity = enc_identity.into_vec();
    let sym_key = kdfa(hash, &seed, b"STORAGE", name, &[], u32::from(sym.key_bits));
    aes_cfb_encrypt(&sym_key, &mut enc_identity).ok_or(CredentialError::UnsupportedSymmetric {
        algorithm: sym.algorithm,
        key_bits: sym.key_bits,
        mode: sym.mode,
    })?;
    let hmac_key = kdfa(
        hash,
        &seed,
        b"INTEGRITY",
        &[],
        &[],
        u32::try_from(hash.size() * 8).unwrap_or(0),
    );
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hash.hmac(), &hmac_key));
    ctx.update(&enc_identity);
    ctx.update(name);
    let outer = ctx.sign();

    let mut blob = Writer::new();
    blob.tpm2b(outer.as_ref()).bytes(&enc_identity);
    Ok(MadeCredential {
        credential_blob: blob.into_vec(),
        secret,
    })
}

/// How many random bytes [`make_credential`] takes as `ephemeral` for this
/// EK: the ECDH scalar size for an ECC EK (32 for P-256, 48 for P-384),
/// 2×|nameAlg| for an RSA EK; `None` for an EK it cannot seal to.
pub fn ephemeral_len(ek: &TpmtPublic) -> Option<usize> {
    let hash = match ek.name_alg() {
        AlgId::SHA256 => Hash::Sha256,
        AlgId::SHA384 => Hash::Sha384,
        _ => return None,
    };
    match ek.params() {
        PublicKeyParams::Rsa { .. } => Some(2 * hash.size()),
        PublicKeyParams::Ecc { parms, .. } => parms
            .curve
            .coordinate_size()
            .filter(|s| *s == 32 || *s == 48),
        #[allow(unreachable_patterns)] // PublicKeyParams is non_exhaustive
        _ => None,
    }
}

/// ECC EK: seed from ephemeral ECDH and KDFe; the secret is the ephemeral point.
fn ecc_seed(
    ek: &TpmtPublic,
    hash: Hash,
    ephemeral: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    let parms = ek
        .ecc_parms()
        .ok_or_else(|| CredentialError::UnsupportedKey(format!("type {}", ek.object_type())))?;
    let size = parms
        .curve
        .coordinate_size()
        .filter(|s| *s == 32 || *s == 48)
        .ok_or_else(|| CredentialError::UnsupportedKey(parms.curve.to_string()))?;
    let point = ek
        .ecc_point(parms.curve)
        .map_err(|_| CredentialError::BadEkPoint)?;
    let ek_x = point.get(1..1 + size).ok_or(CredentialError::BadEkPoint)?;
    let Agreement {
        z,
        x: eph_x,
        y: eph_y,
    } = ecdh(size, &point, ephemeral)?;
    let seed = kdfe(hash, &z, b"IDENTITY", &eph_x, ek_x, hash.size());
    let mut secret = Writer::new();
    secret.tpm2b(&eph_x).tpm2b(&eph_y);
    Ok((seed, secret.into_vec()))
}

/// MGF1 (PKCS #1 B.2.1) with `hash`.
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.size());
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut ctx = ring::digest::Context::new(hash.digest());
        ctx.update(seed);
        ctx.update(&counter.to_be_bytes());
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// RSA EK: the seed is the first |H| bytes of `randomness`, encrypted with
/// RSAES-OAEP (hash = nameAlg, label "IDENTITY\0") using the next |H| bytes
/// as the OAEP seed. The public-key operation uses num-bigint (not constant
/// time; it runs on the verifier, over a seed used once).
fn rsa_seed(
    hash: Hash,
    modulus: &[u8],
    exponent: u32,
    randomness: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    use x509_parser::num_bigint::BigUint;
    let h = hash.size();
    let bad = CredentialError::BadEphemeral { expected: 2 * h };
    if randomness.len() != 2 * h {
        return Err(bad);
    }
    let (seed, oaep_seed) = randomness.split_at_checked(h).ok_or(bad)?;
    let n = BigUint::from_bytes_be(modulus);
    let k = modulus.iter().skip_while(|b| **b == 0).count();
    if k < 2 * h + 2 + seed.len() || n.bits() < 1024 {
        return Err(CredentialError::UnsupportedKey(format!(
            "RSA modulus of {k} bytes"
        )));
    }
    // EME-OAEP encoding (RFC 8017 §7.1.1).
    let l_hash = ring::digest::digest(hash.digest(), b"IDENTITY\0");
    let mut db = l_hash.as_ref().to_vec();
    // DB = lHash || PS || 0x01 || M, |DB| = k - h - 1, so |lHash || PS| = k - |M| - h - 2.
    db.resize(k - seed.len() - h - 2, 0);
    db.push(1);
    db.extend_from_slice(seed);
    let db_mask = mgf1(hash, oaep_seed, db.len());
    let masked_db: Vec<u8> = db.iter().zip(&db_mask).map(|(a, b)| a ^ b).collect();
    let seed_mask = mgf1(hash, &masked_db, h);
    let masked_seed: Vec<u8> = oaep_seed
        .iter()
        .zip(&seed_mask)
        .map(|(a, b)| a ^ b)
        .collect();
    let mut em = vec![0u8];
    em.extend_from_slice(&masked_seed);
    em.extend_from_slice(&masked_db);
    // EM must be exactly k bytes and, read as a number, below n (it starts
    // with 0x00); a malformed one is refused here, never sent to a TPM.
    if em.len() != k {
        return Err(CredentialError::UnsupportedKey(format!(
            "OAEP encoding of {} bytes for a {k}-byte modulus",
            em.len()
        )));
    }
    let e = BigUint::from(if exponent == 0 { 65_537 } else { exponent });
    let c = BigUint::from_bytes_be(&em).modpow(&e, &n).to_bytes_be();
    let mut secret = vec![0u8; k.saturating_sub(c.len())];
    secret.extend_from_slice(&c);
    Ok((seed.to_vec(), secret))
}

/// Checks the EK public area carries the same key as the EK certificate's
/// SubjectPublicKeyInfo (DER), so a challenge sealed to it reaches the
/// certified TPM.
pub fn ek_matches_certificate(ek: &TpmtPublic, spki_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey as Pk;
    let Ok((_, spki)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    match (ek.params(), spki.parsed()) {
        (PublicKeyParams::Ecc { parms, .. }, Ok(Pk::EC(point))) => ek
            .ecc_point(parms.curve)
            .map(|p| p.as_slice() == point.data())
            .unwrap_or(false),
        (PublicKeyParams::Rsa { modulus, .. }, Ok(Pk::RSA(rsa))) => {
            let strip = |b: &[u8]| {
                b.iter()
                    .skip_while(|x| **x == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            strip(modulus) == strip(rsa.modulus)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::{EccCurve, EccParms, Scheme, SymDefObject};
    use crate::wire::Reader;
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    fn ek_template(
        curve: EccCurve,
        name_alg: AlgId,
        key_bits: u16,
        x: &[u8],
        y: &[u8],
    ) -> TpmtPublic {
        let parms = EccParms {
            symmetric: SymDefObject {
                algorithm: AlgId::AES,
                key_bits,
                mode: AlgId::CFB,
            },
            scheme: Scheme::NULL,
            curve,
            kdf: Scheme::NULL,
        };
        TpmtPublic::new_ecc(
            name_alg,
            EK_REQUIRED | ObjectAttributes::ADMIN_WITH_POLICY,
            &[1; 32],
            parms,
            x,
            y,
        )
        .unwrap()
    }

    /// TPM2_ActivateCredential in software (P-256 EK), independent of the
    /// encryption path: decrypts with CFB decryption and checks the HMAC.
    fn activate_p256(
        ek_secret: &p256::SecretKey,
        name: &TpmName,
        made: &MadeCredential,
    ) -> Option<Vec<u8>> {
        let mut r = Reader::new(&made.secret);
        let x = r.tpm2b(66, "x").ok()?;
        let y = r.tpm2b(66, "y").ok()?;
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(x);
        sec1.extend_from_slice(y);
        let eph = p256::PublicKey::from_sec1_bytes(&sec1).ok()?;
        let z = p256::ecdh::diffie_hellman(ek_secret.to_nonzero_scalar(), eph.as_affine());
        let ek_pub = ek_secret.public_key().to_encoded_point(false);
        let seed = kdfe(
            Hash::Sha256,
            z.raw_secret_bytes(),
            b"IDENTITY",
            x,
            ek_pub.x()?,
            32,
        );
        let mut r = Reader::new(&made.credential_blob);
        let outer = r.tpm2b(64, "hmac").ok()?;
        let enc = r.bytes(r.remaining(), "enc").ok()?.to_vec();
        let hmac_key = kdfa(Hash::Sha256, &seed, b"INTEGRITY", &[], &[], 256);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
        let mut msg = enc.clone();
        msg.extend_from_slice(name.as_bytes());
        hmac::verify(&key, &msg, outer).ok()?;
        let sym = kdfa(Hash::Sha256, &seed, b"STORAGE", name.as_bytes(), &[], 128);
        let cipher = aes::Aes128::new_from_slice(&sym).ok()?;
        let mut plain = enc.clone();
        let mut feedback = [0u8; 16];
        for (i, chunk) in plain.chunks_mut(16).enumerate() {
            let mut block = aes::Block::from(feedback);
            cipher.encrypt_block(&mut block);
            let c: Vec<u8> = enc[i * 16..(i * 16 + chunk.len())].to_vec();
            for (p, k) in chunk.iter_mut().zip(block.iter()) {
                *p ^= k;
            }
            feedback[..c.len()].copy_from_slice(&c);
        }
        let mut r = Reader::new(&plain);
        let cred = r.tpm2b(64, "cred").ok()?.to_vec();
        r.finish("cred").ok()?;
        Some(cred)
    }

    #[test]
    fn software_activation_recovers_the_credential_only_for_the_right_name() {
        let ek_secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let p = ek_secret.public_key().to_encoded_point(false);
        let ek = ek_template(
            EccCurve::NIST_P256,
            AlgId::SHA256,
            128,
            p.x().unwrap(),
            p.y().unwrap(),
        );
        let name = TpmName::compute(AlgId::SHA256, b"some AK").unwrap();
        let made = make_credential(&ek, &name, b"the challenge secret", &[9u8; 32]).unwrap();
        assert_eq!(
            activate_p256(&ek_secret, &name, &made).unwrap(),
            b"the challenge secret"
        );
        let other = TpmName::compute(AlgId::SHA256, b"another AK").unwrap();
        assert!(activate_p256(&ek_secret, &other, &made).is_none());
        let wrong_ek = p256::SecretKey::from_slice(&[8u8; 32]).unwrap();
        assert!(activate_p256(&wrong_ek, &name, &made).is_none());
        // Deterministic for a given ephemeral scalar; different for another.
        assert_eq!(
            made,
            make_credential(&ek, &name, b"the challenge secret", &[9u8; 32]).unwrap()
        );
        assert_ne!(
            made,
            make_credential(&ek, &name, b"the challenge secret", &[10u8; 32]).unwrap()
        );
    }

    #[test]
    fn kdfa_matches_its_definition_for_multi_block_output() {
        // 48 bytes from SHA-256 needs two HMAC blocks, counter 1 then 2.
        let out = kdfa(Hash::Sha256, b"key", b"LBL", b"u", b"v", 384);
        let k = hmac::Key::new(hmac::HMAC_SHA256, b"key");
        let block = |i: u32| {
            let mut m = i.to_be_bytes().to_vec();
            m.extend_from_slice(b"LBL\0uv");
            m.extend_from_slice(&384u32.to_be_bytes());
            hmac::sign(&k, &m).as_ref().to_vec()
        };
        let mut want = block(1);
        want.extend_from_slice(&block(2)[..16]);
        assert_eq!(out, want);
    }

    #[test]
    fn unsuitable_eks_and_inputs_are_refused() {
        let ek_secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let p = ek_secret.public_key().to_encoded_point(false);
        let (x, y) = (p.x().unwrap().to_vec(), p.y().unwrap().to_vec());
        let name = TpmName::compute(AlgId::SHA256, b"ak").unwrap();
        let ek = ek_template(EccCurve::NIST_P256, AlgId::SHA256, 128, &x, &y);
        assert_eq!(
            make_credential(&ek, &name, &[0; 33], &[9; 32]),
            Err(CredentialError::CredentialSize { found: 33, max: 32 })
        );
        assert_eq!(
            make_credential(&ek, &name, &[1], &[0; 32]),
            Err(CredentialError::BadEphemeral { expected: 32 })
        );
        let mut bad_y = y.clone();
        bad_y[31] ^= 1;
        let off_curve = ek_template(EccCurve::NIST_P256, AlgId::SHA256, 128, &x, &bad_y);
        assert_eq!(
            make_credential(&off_curve, &name, &[1], &[9; 32]),
            Err(CredentialError::BadEkPoint)
        );
        let signing = TpmtPublic::new_p256_signing(
            ObjectAttributes::SIGN | ObjectAttributes::FIXED_TPM,
            &[],
            &quorate_types::PublicKey(p.as_bytes().try_into().unwrap()),
        )
        .unwrap();
        assert!(matches!(
            make_credential(&signing, &name, &[1], &[9; 32]),
            Err(CredentialError::UnsupportedSymmetric { .. })
        ));
    }
}
