//! Mutual TLS between parties, pinned to the enrollment bundles.
//!
//! Each party makes a TLS key and self-signed certificate at `init` and lists
//! the certificate in its enrollment bundle. There is no CA: a connection is
//! accepted only if the peer presents exactly the certificate its enrollment
//! lists, and a dialer accepts only the certificate of the party it dialed.
//! The SHA-256 of the certificate's SubjectPublicKeyInfo is bound into the
//! party's attestation evidence, tying the TLS channel to the TPM quote.

use quorate_firmware::types::{PartyId, Sha256Digest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Errors making, loading or using a TLS identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Key or certificate generation failed.
    #[error("generating the TLS key and certificate failed: {0}")]
    Generate(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    /// The certificate's public key could not be found in its DER.
    #[error("the TLS certificate is not well-formed DER: {0}")]
    BadCertificate(String),
}

/// File names of the TLS identity inside the data dir.
pub const TLS_KEY_FILE: &str = "tls.key.der";
/// File name of the TLS certificate (DER) inside the data dir.
pub const TLS_CERT_FILE: &str = "tls.crt.der";

/// A party's TLS key and self-signed certificate.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Makes a fresh ECDSA P-256 key and a self-signed certificate naming the party.
    pub fn generate(party: PartyId) -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![format!("quorate-party-{}", party.0)])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Quorate party {}", party.0),
        );
        // Pinned, not chained to a CA: validity is long and not what is checked.
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(TlsIdentity {
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// Builds an identity from a DER certificate and a PKCS#8 DER key.
    pub fn from_der(cert: Vec<u8>, key_pkcs8: Vec<u8>) -> Self {
        TlsIdentity {
            cert: CertificateDer::from(cert),
            key_pkcs8,
        }
    }

    /// Writes the key (mode 0600) and certificate into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        crate::fsutil::write_private(&dir.join(TLS_KEY_FILE), &self.key_pkcs8).map_err(
            |source| TlsError::Io {
                path: dir.join(TLS_KEY_FILE).display().to_string(),
                source,
            },
        )?;
        crate::fsutil::write_atomic(&dir.join(TLS_CERT_FILE), self.cert.as_ref()).map_err(
            |source| TlsError::Io {
                path: dir.join(TLS_CERT_FILE).display().to_string(),
                source,
            },
        )
    }

    /// Reads the key and certificate written by [`TlsIdentity::save`].
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TlsError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(TlsIdentity::from_der(
            read(TLS_CERT_FILE)?,
            read(TLS_KEY_FILE)?,
        ))
    }

    /// The certificate (DER), as listed in the enrollment bundle.
    pub fn cert_der(&self) -> &[u8] {
        self.cert.as_ref()
    }

    /// SHA-256 of the certificate's SubjectPublicKeyInfo: the "TLS key hash"
    /// bound into attestation evidence.
    pub fn key_hash(&self) -> Result<Sha256Digest, TlsError> {
        spki_sha256(self.cert.as_ref())
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// SHA-256 of the SubjectPublicKeyInfo inside a DER X.509 certificate.
pub fn spki_sha256(cert_der: &[u8]) -> Result<Sha256Digest, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    Ok(Sha256Digest::of(cert.tbs_certificate.subject_pki.raw))
}

/// The crypto provider every Quorate TLS configuration uses (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The enrolled peers' certificates, by party.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts {
    by_party: HashMap<PartyId, Vec<u8>>,
}

impl PeerCerts {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a party's enrolled certificate.
    pub fn insert(&mut self, party: PartyId, cert_der: Vec<u8>) {
        self.by_party.insert(party, cert_der);
    }

    /// The party whose enrolled certificate is exactly `cert_der`.
    pub fn party_of(&self, cert_der: &[u8]) -> Option<PartyId> {
        self.by_party
            .iter()
            .find(|(_, c)| quorate_firmware::crypto::ct_eq(c, cert_der))
            .map(|(p, _)| *p)
    }

    /// A party's enrolled certificate.
    pub fn cert_of(&self, party: PartyId) -> Option<&[u8]> {
        self.by_party.get(&party).map(Vec::as_slice)
    }
}

/// Accepts a client only if it presents an enrolled peer's exact certificate.
#[derive(Debug)]
struct EnrolledClients {
    peers: Arc<PeerCerts>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for EnrolledClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.peers.party_of(end_entity.as_ref()) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts a server only if it presents the exact certificate expected:
/// the one whose DER has SHA-256 `expected` (the party dialed, or the
/// party's API certificate the client pinned).
#[derive(Debug)]
struct PinnedServer {
    expected: Sha256Digest,
    provider: Arc<CryptoProvider>,
}

/// A server-certificate verifier that accepts exactly the certificate whose
/// DER has SHA-256 `fingerprint` (names and validity are not checked: the
/// pin is the trust).
pub(crate) fn pinned_server_verifier(fingerprint: Sha256Digest) -> Arc<dyn ServerCertVerifier> {
    Arc::new(PinnedServer {
        expected: fingerprint,
        provider: provider(),
    })
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256Digest::of(end_entity.as_ref()) == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server configuration: TLS 1.3 only, client certificates mandatory and pinned.
pub fn server_config(
    identity: &TlsIdentity,
    peers: Arc<PeerCerts>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(EnrolledClients {
        peers,
        provider: provider.clone(),
    });
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key())?;
    Ok(Arc::new(cfg))
}

/// Client configuration for dialing one peer whose certificate is `expected`.
pub fn client_config(
    identity: &TlsIdentity,
    expected: Vec<u8>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = pinned_server_verifier(Sha256Digest::of(&expected));
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key())?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_hash_is_the_key_not_the_cert() {
        let id = TlsIdentity::generate(PartyId(1)).unwrap();
        let h = id.key_hash().unwrap();
        let key = rcgen::KeyPair::try_from(id.key_pkcs8.as_slice()).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(h, Sha256Digest::of(&key.subject_public_key_info()));
        assert!(spki_sha256(&id.cert_der()[..40]).is_err());
        assert!(spki_sha256(b"").is_err());
    }

    #[test]
    fn save_and_load_round_trip_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let id = TlsIdentity::generate(PartyId(2)).unwrap();
        id.save(dir.path()).unwrap();
        let back = TlsIdentity::load(dir.path()).unwrap();
        assert_eq!(back.cert_der(), id.cert_der());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(TLS_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn spki_parser_never_panics_on_garbage() {
        let id = TlsIdentity::generate(PartyId(3)).unwrap();
        let cert = id.cert_der().to_vec();
        for i in 0..cert.len() {
            let mut c = cert.clone();
            c[i] ^= 0xff;
            let _ = spki_sha256(&c);
            let _ = spki_sha256(&cert[..i]);
        }
    }
}
