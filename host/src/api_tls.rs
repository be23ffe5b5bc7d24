//! Optional TLS on the party API listener, and how a client trusts it.
//!
//! The API is plain HTTP on loopback unless `[party]` turns TLS on, one of
//! two ways:
//! - `api_tls = true`: the daemon uses (making it at first start, or when
//!   `quorate dev --api-tls` provisions the party) an ECDSA P-256 key and a
//!   self-signed certificate for `localhost`, `127.0.0.1`, `::1` and the
//!   listen address, kept in `DATA_DIR/api-tls.crt.pem` and
//!   `DATA_DIR/api-tls.key.pem` (0600), and logs the certificate's SHA-256
//!   fingerprint. A client pins that fingerprint ([`ServerTrust::Pinned`])
//!   or takes the PEM as its CA file (`curl --cacert`, [`ServerTrust::Roots`]).
//! - `api_tls_cert` and `api_tls_key`: PEM files (a chain and its key) from
//!   the operator's own CA; clients trust that CA.
//!
//! TLS 1.2 and 1.3 (rustls with the ring provider, as the peer transport),
//! no client certificates: the bearer token still authenticates every
//! request. A client that speaks plain HTTP to a TLS listener is answered
//! with a plain `400` JSON body saying to use `https://`, and the
//! connection is closed; the daemon is not disturbed by it.

use quorate_firmware::types::Sha256Digest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// File name of the API's self-signed certificate (PEM) in the data dir.
pub const API_CERT_FILE: &str = "api-tls.crt.pem";
/// File name of the API's TLS key (PEM, mode 0600) in the data dir.
pub const API_KEY_FILE: &str = "api-tls.key.pem";
/// How long a client may take to send its first byte and finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the API's TLS could not be set up or a TLS connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiTlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file did not hold what it should.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the certificate and key files exists.
    #[error("{present} exists but {missing} does not: remove {present} to make a new self-signed certificate, or restore {missing}")]
    HalfPair {
        /// The file that exists.
        present: PathBuf,
        /// The one that does not.
        missing: PathBuf,
    },
    /// Key or certificate generation failed.
    #[error("generating the API's TLS key and certificate failed: {0}")]
    Generate(String),
    /// rustls refused the key, certificate or configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    /// A certificate fingerprint was not 32 bytes of hex.
    #[error("`{0}` is not a SHA-256 certificate fingerprint (64 hex digits, colons allowed)")]
    BadFingerprint(String),
    /// The client spoke plain HTTP (or something else) to the TLS listener.
    #[error("the client did not start a TLS handshake (plain HTTP to an https listener?)")]
    NotTls,
    /// The client did not finish the handshake in [`HANDSHAKE_TIMEOUT`].
    #[error("the TLS handshake timed out")]
    Timeout,
    /// The handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// The SHA-256 of a certificate's DER encoding: what a client pins. The
/// same value `openssl x509 -noout -fingerprint -sha256` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertFingerprint(pub Sha256Digest);

impl CertFingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of_der(cert_der: &[u8]) -> Self {
        CertFingerprint(Sha256Digest::of(cert_der))
    }

    /// The fingerprint of the first certificate in a PEM file.
    pub fn of_pem_file(path: &Path) -> Result<Self, ApiTlsError> {
        let chain = read_chain(path)?;
        chain
            .first()
            .map(|c| Self::of_der(c.as_ref()))
            .ok_or_else(|| ApiTlsError::Pem {
                path: path.to_owned(),
                reason: "holds no certificate".into(),
            })
    }
}

impl std::fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for CertFingerprint {
    type Err = ApiTlsError;

    /// 64 hex digits, upper or lower case, optionally separated by colons.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ApiTlsError::BadFingerprint(s.to_string());
        let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
        let raw = hex::decode(digits).map_err(|_| bad())?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| bad())?;
        Ok(CertFingerprint(Sha256Digest(bytes)))
    }
}

/// The API listener's certificate chain and key.
pub struct ApiTlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ApiTlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTlsIdentity")
            .field("fingerprint", &self.fingerprint().map(|f| f.to_string()))
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ApiTlsError + '_ {
    move |source| ApiTlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, ApiTlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiTlsError::Pem {
            path: path.to_owned(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(ApiTlsError::Pem {
            path: path.to_owned(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(chain)
}

impl ApiTlsIdentity {
    /// Reads a PEM certificate chain (leaf first) and its PEM private key
    /// (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ApiTlsError> {
        let chain = read_chain(cert)?;
        let pem = std::fs::read(key).map_err(io_err(key))?;
        let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ApiTlsError::Pem {
            path: key.to_owned(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        Ok(ApiTlsIdentity {
            chain,
            key: key_der,
        })
    }

    /// The self-signed identity in `data_dir`, made (and saved) if there is
    /// none yet, for `localhost`, `127.0.0.1`, `::1` and `listen`'s address.
    pub fn load_or_generate(data_dir: &Path, listen: SocketAddr) -> Result<Self, ApiTlsError> {
        let cert = data_dir.join(API_CERT_FILE);
        let key = data_dir.join(API_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, true) => return Self::from_pem_files(&cert, &key),
            (true, false) => {
                return Err(ApiTlsError::HalfPair {
                    present: cert,
                    missing: key,
                })
            }
            (false, true) => {
                return Err(ApiTlsError::HalfPair {
                    present: key,
                    missing: cert,
                })
            }
            (false, false) => {}
        }
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let ip = listen.ip();
        if !ip.is_unspecified() && !ip.is_loopback() {
            names.push(ip.to_string());
        }
        let gen = |e: rcgen::Error| ApiTlsError::Generate(e.to_string());
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen)?;
        let mut params = rcgen::CertificateParams::new(names).map_err(gen)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Quorate party API");
        // Pinned (or taken as its own CA): the validity is not what is checked.
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let signed = params.self_signed(&pair).map_err(gen)?;
        crate::fsutil::write_private(&key, pair.serialize_pem().as_bytes())
            .map_err(io_err(&key))?;
        crate::fsutil::write_atomic(&cert, signed.pem().as_bytes()).map_err(io_err(&cert))?;
        Self::from_pem_files(&cert, &key)
    }

    /// The leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> Option<CertFingerprint> {
        self.chain
            .first()
            .map(|c| CertFingerprint::of_der(c.as_ref()))
    }

    /// The rustls server configuration (HTTP/1.1 by ALPN, no client
    /// certificates).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, ApiTlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The API's TLS as `[party]` configures it: `None` for plain HTTP, else
/// the acceptor and the certificate's fingerprint (for the log and clients).
pub fn acceptor_for(
    party: &crate::config::PartySection,
) -> Result<Option<(tokio_rustls::TlsAcceptor, Option<CertFingerprint>)>, ApiTlsError> {
    let identity = match (&party.api_tls_cert, &party.api_tls_key) {
        (Some(cert), Some(key)) => ApiTlsIdentity::from_pem_files(cert, key)?,
        _ if party.api_tls => ApiTlsIdentity::load_or_generate(&party.data_dir, party.api_listen)?,
        _ => return Ok(None),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config()?);
    Ok(Some((acceptor, identity.fingerprint())))
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Accepts one API connection over TLS. A client that does not start with
/// a TLS handshake record (plain HTTP) gets a `400` JSON answer in plain
/// text saying to use `https://`, and the connection is closed.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    mut stream: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, ApiTlsError> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| ApiTlsError::Timeout)?
        .map_err(ApiTlsError::Handshake)?;
    if n == 0 || first != [TLS_HANDSHAKE_RECORD] {
        if n > 0 {
            let body = serde_json::json!({
                "status": 400,
                "field": null,
                "reason": "this API listens with TLS: use https:// (see DATA_DIR/api-tls.crt.pem for its certificate)",
            })
            .to_string();
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            // Best effort: the client may already be gone. Read what it sent
            // (a little, briefly) before closing, so that unread bytes do not
            // make the close a reset that could destroy the answer in flight.
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                stream.write_all(answer.as_bytes()).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                let mut left = 64 * 1024usize;
                while left > 0 {
                    match stream.read(&mut sink).await? {
                        0 => break,
                        n => left = left.saturating_sub(n),
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
        }
        return Err(ApiTlsError::NotTls);
    }
    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| ApiTlsError::Timeout)?
        .map_err(ApiTlsError::Handshake)
}

/// How an API client authenticates the server's certificate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerTrust {
    /// Exactly the certificate with this fingerprint (a self-signed one).
    Pinned(CertFingerprint),
    /// Any certificate chaining to one of these roots, for the name dialed.
    Roots(Vec<CertificateDer<'static>>),
}

impl ServerTrust {
    /// Trusts the certificates in a PEM CA file (for a self-signed API
    /// certificate, the certificate itself).
    pub fn ca_file(path: &Path) -> Result<Self, ApiTlsError> {
        Ok(ServerTrust::Roots(read_chain(path)?))
    }

    /// The rustls client configuration for this trust.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, ApiTlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()?;
        let mut cfg = match self {
            ServerTrust::Pinned(fp) => builder
                .dangerous()
                .with_custom_certificate_verifier(crate::net::tls::pinned_server_verifier(fp.0))
                .with_no_client_auth(),
            ServerTrust::Roots(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c.clone())?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The TLS name a client checks for `addr` when it trusts roots (its IP
/// address; the self-signed certificate lists the loopback addresses).
pub fn server_name_of(addr: SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let fp = CertFingerprint::of_der(b"cert");
        let hex = fp.to_string();
        assert_eq!(hex.parse::<CertFingerprint>().unwrap(), fp);
        let colons = hex
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.parse::<CertFingerprint>().unwrap(), fp);
        assert!("abcd".parse::<CertFingerprint>().is_err());
        assert!("zz".repeat(32).parse::<CertFingerprint>().is_err());
    }

    #[test]
    fn the_self_signed_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:8700".parse().unwrap();
        let a = ApiTlsIdentity::load_or_generate(dir.path(), listen).unwrap();
        let b = ApiTlsIdentity::load_or_generate(dir.path(), listen).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            CertFingerprint::of_pem_file(&dir.path().join(API_CERT_FILE)).unwrap(),
            a.fingerprint().unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(API_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        a.server_config().unwrap();
        // The certificate names the loopback addresses, so it also serves
        // as its own CA file for a client checking names.
        let pem = std::fs::read(dir.path().join(API_CERT_FILE)).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", san.value.general_names);
        assert!(text.contains("localhost"), "{text}");
        assert!(
            text.contains("127.0.0.1") || text.contains("[127, 0, 0, 1]"),
            "{text}"
        );
    }

    #[test]
    fn half_a_pair_or_garbage_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:8700".parse().unwrap();
        std::fs::write(dir.path().join(API_CERT_FILE), "x").unwrap();
        let e = ApiTlsIdentity::load_or_generate(dir.path(), listen).unwrap_err();
        assert!(matches!(e, ApiTlsError::HalfPair { .. }), "{e}");
        std::fs::write(dir.path().join(API_KEY_FILE), "y").unwrap();
        let e = ApiTlsIdentity::load_or_generate(dir.path(), listen).unwrap_err();
        assert!(e.to_string().contains(API_CERT_FILE), "{e}");
        assert!(ServerTrust::ca_file(&dir.path().join("missing.pem")).is_err());
    }

    #[tokio::test]
    async fn a_pinned_client_talks_to_the_listener_and_a_wrong_pin_or_plain_http_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let id = ApiTlsIdentity::load_or_generate(dir.path(), addr).unwrap();
        let fp = id.fingerprint().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config().unwrap());
        let server = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..4 {
                let (s, _) = listener.accept().await.unwrap();
                match accept(&acceptor, s).await {
                    Ok(mut tls) => {
                        let mut b = [0u8; 4];
                        let ok = tls.read_exact(&mut b).await.is_ok();
                        let _ = tls.write_all(&b).await;
                        let _ = tls.shutdown().await;
                        outcomes.push(if ok { "echo" } else { "handshake-only" });
                    }
                    Err(ApiTlsError::NotTls) => outcomes.push("not-tls"),
                    Err(_) => outcomes.push("refused"),
                }
            }
            outcomes
        });
        async fn ping(trust: ServerTrust, addr: SocketAddr) -> std::io::Result<[u8; 4]> {
            let cfg = trust.client_config().unwrap();
            let tcp = TcpStream::connect(addr).await?;
            let mut s = tokio_rustls::TlsConnector::from(cfg)
                .connect(server_name_of(addr), tcp)
                .await?;
            s.write_all(b"ping").await?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await?;
            Ok(b)
        }
        assert_eq!(&ping(ServerTrust::Pinned(fp), addr).await.unwrap(), b"ping");
        let ca = ServerTrust::ca_file(&dir.path().join(API_CERT_FILE)).unwrap();
        assert_eq!(&ping(ca, addr).await.unwrap(), b"ping");
        let wrong = CertFingerprint::of_der(b"another certificate");
        assert!(ping(ServerTrust::Pinned(wrong), addr).await.is_err());
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        plain.read_to_string(&mut answer).await.unwrap();
        drop(plain);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("https://"), "{answer}");
        let outcomes = server.await.unwrap();
        assert_eq!(outcomes, ["echo", "echo", "refused", "not-tls"]);
    }
}
