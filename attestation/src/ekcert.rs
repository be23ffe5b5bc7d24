//! EK certificate chains: the TPM manufacturer's (in tests, swtpm's local
//! CA's) certificate for the endorsement key, checked up to a configured
//! root through intermediates. Parsing with x509-parser, signatures with
//! ring: ECDSA P-256/P-384 with SHA-256/384 and RSA PKCS#1 v1.5 with
//! SHA-256/384/512.
//!
//! What a valid chain proves: a CA the verifier trusts vouched that this EK
//! public key belongs to a TPM it made. It says nothing by itself about the
//! AK: the AK is bound to that EK by credential activation at enrollment
//! (host side; see `credential` for the verifier's half), so a peer's AK
//! is trusted because the enrolled AK could decrypt a challenge sealed to
//! this certified EK.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// Longest chain walked (leaf, intermediates, root).
pub const MAX_CHAIN_DEPTH: usize = 8;

/// Why an EK certificate chain was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EkError {
    /// A certificate is not valid DER X.509.
    #[error("{which}: not a DER X.509 certificate ({reason})")]
    Malformed {
        /// Which certificate ("EK certificate", "intermediate 0", "root 1").
        which: String,
        /// The parser's complaint.
        reason: String,
    },
    /// No intermediate or configured root is named as this certificate's issuer.
    #[error("certificate \"{subject}\" is issued by \"{issuer}\", which is neither a configured EK root nor a supplied intermediate")]
    UnknownIssuer {
        /// The certificate's subject.
        subject: String,
        /// Its issuer.
        issuer: String,
    },
    /// A certificate's signature does not verify under its issuer's key.
    #[error(
        "certificate \"{subject}\": signature does not verify under issuer \"{issuer}\"'s key"
    )]
    BadSignature {
        /// The certificate's subject.
        subject: String,
        /// Its issuer.
        issuer: String,
    },
    /// The signature algorithm or the issuer's key type is not supported.
    #[error("certificate \"{subject}\": unsupported signature algorithm {algorithm} for the issuer's key")]
    UnsupportedAlgorithm {
        /// The certificate's subject.
        subject: String,
        /// The signature algorithm OID.
        algorithm: String,
    },
    /// An issuer in the chain is not a CA.
    #[error("certificate \"{subject}\" signs other certificates but is not a CA (basicConstraints cA is not set)")]
    NotACa {
        /// The intermediate's subject.
        subject: String,
    },
    /// A certificate is outside its validity period at the verifier's time.
    #[error("certificate \"{subject}\" is valid from {not_before} to {not_after}, not at unix time {now}")]
    NotValidAt {
        /// The certificate's subject.
        subject: String,
        /// Start of validity (unix seconds).
        not_before: i64,
        /// End of validity (unix seconds).
        not_after: i64,
        /// The verifier's time (unix seconds).
        now: i64,
    },
    /// The chain is longer than [`MAX_CHAIN_DEPTH`].
    #[error("EK certificate chain longer than {MAX_CHAIN_DEPTH}")]
    ChainTooLong,
}

/// What a verified EK chain established.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkChainInfo {
    /// The EK certificate's issuer (distinguished name, RFC 4514 style).
    pub issuer: String,
    /// The subject of the configured root the chain ends at.
    pub root: String,
    /// The EK's SubjectPublicKeyInfo, DER.
    #[serde(with = "serde_bytes")]
    pub ek_spki: Vec<u8>,
    /// Certificates walked, leaf first, root last.
    pub depth: usize,
}

/// The SubjectPublicKeyInfo (DER) of a certificate, without checking its
/// chain: what a verifier compares with a key it already trusts (the EK an
/// enrollment activated), or `None` if the bytes are not one certificate.
pub fn certificate_spki(der: &[u8]) -> Option<Vec<u8>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert.public_key().raw.to_vec()),
        _ => None,
    }
}

fn parse<'a>(der: &'a [u8], which: String) -> Result<X509Certificate<'a>, EkError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(EkError::Malformed {
            which,
            reason: format!("{} trailing bytes", rest.len()),
        }),
        Err(e) => Err(EkError::Malformed {
            which,
            reason: e.to_string(),
        }),
    }
}

fn algorithm_for(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Option<&'static dyn VerificationAlgorithm> {
    let sig = &cert.signature_algorithm.algorithm;
    let key = &issuer.public_key().algorithm;
    let curve: Option<Oid<'_>> = if key.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        key.parameters.as_ref().and_then(|p| p.as_oid().ok())
    } else {
        None
    };
    let is_rsa = key.algorithm == OID_PKCS1_RSAENCRYPTION;
    let p256 = curve.as_ref() == Some(&OID_EC_P256);
    let p384 = curve.as_ref() == Some(&OID_NIST_EC_P384);
    if *sig == OID_SIG_ECDSA_WITH_SHA256 && p256 {
        Some(&signature::ECDSA_P256_SHA256_ASN1)
    } else if *sig == OID_SIG_ECDSA_WITH_SHA384 && p256 {
        Some(&signature::ECDSA_P256_SHA384_ASN1)
    } else if *sig == OID_SIG_ECDSA_WITH_SHA256 && p384 {
        Some(&signature::ECDSA_P384_SHA256_ASN1)
    } else if *sig == OID_SIG_ECDSA_WITH_SHA384 && p384 {
        Some(&signature::ECDSA_P384_SHA384_ASN1)
    } else if *sig == OID_PKCS1_SHA256WITHRSA && is_rsa {
        Some(&signature::RSA_PKCS1_2048_8192_SHA256)
    } else if *sig == OID_PKCS1_SHA384WITHRSA && is_rsa {
        Some(&signature::RSA_PKCS1_2048_8192_SHA384)
    } else if *sig == OID_PKCS1_SHA512WITHRSA && is_rsa {
        Some(&signature::RSA_PKCS1_2048_8192_SHA512)
    } else {
        None
    }
}

/// Checks that `issuer`'s key signed `cert`.
fn check_signature(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), EkError> {
    let alg = algorithm_for(cert, issuer).ok_or_else(|| EkError::UnsupportedAlgorithm {
        subject: cert.subject().to_string(),
        algorithm: cert.signature_algorithm.algorithm.to_id_string(),
    })?;
    UnparsedPublicKey::new(alg, &issuer.public_key().subject_public_key.data)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| EkError::BadSignature {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
        })
}

fn check_time(cert: &X509Certificate<'_>, now: Option<i64>) -> Result<(), EkError> {
    let Some(now) = now else { return Ok(()) };
    let v = cert.validity();
    let ok = ASN1Time::from_timestamp(now)
        .map(|t| v.is_valid_at(t))
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(EkError::NotValidAt {
            subject: cert.subject().to_string(),
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
            now,
        })
    }
}

/// Verifies the EK certificate `leaf` up to one of `roots` (DER), through
/// any of `intermediates` (DER, any order). With `now` (unix seconds) every
/// certificate walked must be valid at that time. A root is trusted as
/// configured: its own signature is not checked.
pub fn verify_ek_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: Option<i64>,
) -> Result<EkChainInfo, EkError> {
    let leaf_cert = parse(leaf, "EK certificate".into())?;
    let inter: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .enumerate()
        .map(|(i, d)| parse(d, format!("intermediate {i}")))
        .collect::<Result<_, _>>()?;
    let root_certs: Vec<X509Certificate<'_>> = roots
        .iter()
        .enumerate()
        .map(|(i, d)| parse(d, format!("root {i}")))
        .collect::<Result<_, _>>()?;
    check_time(&leaf_cert, now)?;
    let mut current = &leaf_cert;
    for depth in 1..MAX_CHAIN_DEPTH {
        let issuer_name = current.issuer().as_raw();
        let mut bad_signature = None;
        for root in root_certs
            .iter()
            .filter(|r| r.subject().as_raw() == issuer_name)
        {
            match check_signature(current, root) {
                Ok(()) => {
                    check_time(root, now)?;
                    return Ok(EkChainInfo {
                        issuer: leaf_cert.issuer().to_string(),
                        root: root.subject().to_string(),
                        ek_spki: leaf_cert.public_key().raw.to_vec(),
                        depth: depth + 1,
                    });
                }
                Err(e) => bad_signature = Some(e),
            }
        }
        let mut next = None;
        for cand in inter.iter().filter(|c| c.subject().as_raw() == issuer_name) {
            match check_signature(current, cand) {
                Ok(()) => {
                    next = Some(cand);
                    break;
                }
                Err(e) => bad_signature = Some(e),
            }
        }
        match next {
            Some(cand) => {
                if !cand.is_ca() {
                    return Err(EkError::NotACa {
                        subject: cand.subject().to_string(),
                    });
                }
                check_time(cand, now)?;
                current = cand;
            }
            None => {
                return Err(bad_signature.unwrap_or_else(|| EkError::UnknownIssuer {
                    subject: current.subject().to_string(),
                    issuer: current.issuer().to_string(),
                }))
            }
        }
    }
    Err(EkError::ChainTooLong)
}

/// Decodes every certificate in `text`: PEM blocks ("-----BEGIN
/// CERTIFICATE-----"), or else one certificate as hex DER.
pub fn certificates_from_text(text: &str) -> Result<Vec<Vec<u8>>, String> {
    if text.contains("-----BEGIN") {
        let mut out = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
            let pem = pem.map_err(|e| format!("bad PEM: {e}"))?;
            if pem.label == "CERTIFICATE" {
                out.push(pem.contents);
            }
        }
        if out.is_empty() {
            return Err("no CERTIFICATE block in the PEM text".into());
        }
        Ok(out)
    } else {
        let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(clean)
            .map(|d| vec![d])
            .map_err(|e| format!("neither PEM nor hex DER: {e}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    }

    /// A root (P-384, ECDSA-SHA384), an intermediate (P-256, signed with
    /// SHA-384 by the root) and an EK certificate (P-384 key, signed with
    /// ECDSA-SHA256 by the intermediate), as DER.
    pub(crate) fn ecdsa_chain_named(ca: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let root_params = ca_params(&format!("{ca} EK root"));
        let root = root_params.self_signed(&root_key).unwrap();
        let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let inter_params = ca_params(&format!("{ca} EK intermediate"));
        let inter = inter_params
            .signed_by(&inter_key, &Issuer::from_params(&root_params, &root_key))
            .unwrap();
        let ek_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut ek_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ek_params.distinguished_name.push(DnType::CommonName, "EK");
        let ek = ek_params
            .signed_by(&ek_key, &Issuer::from_params(&inter_params, &inter_key))
            .unwrap();
        (root.der().to_vec(), inter.der().to_vec(), ek.der().to_vec())
    }

    /// [`ecdsa_chain_named`] with the CA named "test".
    pub(crate) fn ecdsa_chain() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        ecdsa_chain_named("test")
    }

    #[test]
    fn ecdsa_chain_verifies_through_the_intermediate() {
        let (root, inter, leaf) = ecdsa_chain();
        let info = verify_ek_chain(
            &leaf,
            std::slice::from_ref(&inter),
            std::slice::from_ref(&root),
            None,
        )
        .unwrap();
        assert_eq!(info.depth, 3);
        assert!(info.root.contains("test EK root"));
        // Intermediate as a trusted root directly: depth 2.
        assert_eq!(
            verify_ek_chain(&leaf, &[], std::slice::from_ref(&inter), None)
                .unwrap()
                .depth,
            2
        );
        // Missing intermediate.
        assert!(matches!(
            verify_ek_chain(&leaf, &[], std::slice::from_ref(&root), None),
            Err(EkError::UnknownIssuer { .. })
        ));
    }

    #[test]
    fn tampered_or_garbage_certificates_are_rejected() {
        let (root, inter, leaf) = ecdsa_chain();
        // Flip a bit inside the TBS (the subject CN "EK" sits near the end of TBS).
        let pos = leaf.windows(2).rposition(|w| w == b"EK").unwrap();
        let mut bad = leaf.clone();
        bad[pos] ^= 0x01;
        assert!(matches!(
            verify_ek_chain(
                &bad,
                std::slice::from_ref(&inter),
                std::slice::from_ref(&root),
                None
            ),
            Err(EkError::BadSignature { .. })
        ));
        assert!(matches!(
            verify_ek_chain(
                &leaf[..leaf.len() - 3],
                std::slice::from_ref(&inter),
                std::slice::from_ref(&root),
                None
            ),
            Err(EkError::Malformed { .. })
        ));
        assert!(matches!(
            verify_ek_chain(&leaf, &[vec![1, 2, 3]], std::slice::from_ref(&root), None),
            Err(EkError::Malformed { .. })
        ));
        // A CA with the same names but another key: the signature check fails.
        let (_, twin_inter, twin_leaf) = ecdsa_chain();
        assert!(matches!(
            verify_ek_chain(&twin_leaf, &[twin_inter], &[root], None),
            Err(EkError::BadSignature { .. })
        ));
    }

    #[test]
    fn an_intermediate_that_is_not_a_ca_is_refused() {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca_params("root");
        let root = root_params.self_signed(&root_key).unwrap();
        let mid_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut mid_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        mid_params
            .distinguished_name
            .push(DnType::CommonName, "not a ca");
        let mid = mid_params
            .signed_by(&mid_key, &Issuer::from_params(&root_params, &root_key))
            .unwrap();
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&leaf_key, &Issuer::from_params(&mid_params, &mid_key))
            .unwrap();
        assert!(matches!(
            verify_ek_chain(
                leaf.der(),
                &[mid.der().to_vec()],
                &[root.der().to_vec()],
                None
            ),
            Err(EkError::NotACa { .. })
        ));
    }

    #[test]
    fn pem_and_hex_roots_decode() {
        let (root, _, _) = ecdsa_chain();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64_lines(&root)
        );
        assert_eq!(certificates_from_text(&pem).unwrap(), vec![root.clone()]);
        assert_eq!(
            certificates_from_text(&hex::encode(&root)).unwrap(),
            vec![root]
        );
        assert!(certificates_from_text("zz").is_err());
    }

    proptest::proptest! {
        #[test]
        fn chain_parser_never_panics(
            leaf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            root in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let _ = verify_ek_chain(&leaf, std::slice::from_ref(&root), std::slice::from_ref(&root), Some(0));
            let _ = certificates_from_text(&String::from_utf8_lossy(&leaf));
        }

        #[test]
        fn flipped_bytes_in_a_real_chain_never_panic(pos in 0usize..2000, bit in 0u8..8) {
            let leaf = include_bytes!("../tests/vectors/ek_cert_ecc.der");
            let inter = include_bytes!("../tests/vectors/ek_intermediate.der").to_vec();
            let root = include_bytes!("../tests/vectors/ek_root.der").to_vec();
            let mut bad = leaf.to_vec();
            let i = pos % bad.len();
            bad[i] ^= 1 << bit;
            // The TBS is signed, so a flip there must fail; elsewhere (DER
            // framing, the signature) it must fail or change nothing.
            let r = verify_ek_chain(&bad, std::slice::from_ref(&inter), std::slice::from_ref(&root), None);
            if let Ok(info) = r {
                let good = verify_ek_chain(leaf, &[inter], &[root], None).unwrap();
                proptest::prop_assert_eq!(info, good);
            }
        }
    }

    fn base64_lines(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
