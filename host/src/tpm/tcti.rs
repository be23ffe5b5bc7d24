//! Parsing `--tpm`: which TPM a party uses.
//!
//! Accepted forms:
//! - `swtpm:host=127.0.0.1,port=P` — a swtpm listening on TCP port P (its
//!   control port must be P + 1);
//! - `device:/dev/tpmrm0` — a kernel TPM device (use the resource manager
//!   `tpmrm0`, not `tpm0`, when other processes share the TPM);
//! - `spawn` — start a private swtpm whose state lives in the data dir.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A TCTI we can connect to: the subset of TCTIs Quorate supports, in a form
/// we can both probe (with a deadline) and hand to tss-esapi.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tcti {
    /// A swtpm (or any TPM simulator speaking the swtpm protocol) on TCP.
    Swtpm {
        /// Address of the TPM command port (IP literal or `localhost`).
        host: String,
        /// TPM command port; the control port is `port + 1`.
        port: u16,
    },
    /// A TPM character device.
    Device {
        /// Path of the device node, e.g. `/dev/tpmrm0`.
        path: PathBuf,
    },
}

/// What `--tpm` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TpmTarget {
    /// Connect to an existing TPM through this TCTI.
    Tcti(Tcti),
    /// Start a private swtpm with its state in `DATA_DIR/swtpm/`.
    Spawn,
}

/// Why a `--tpm` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TctiParseError {
    /// Not one of the accepted forms.
    #[error(
        "unsupported TPM `{0}`: use `swtpm:host=127.0.0.1,port=P`, `device:/dev/tpmrm0` or `spawn`"
    )]
    Unsupported(String),
    /// A swtpm TCTI without a port, or with one that is not a number in 1..=65534.
    #[error(
        "TPM `{0}`: the swtpm TCTI needs `port=P` with P in 1..=65534 (the control port is P + 1)"
    )]
    BadPort(String),
    /// A swtpm TCTI whose host is neither an IP address nor `localhost`.
    #[error("TPM `{0}`: host must be an IP address or `localhost`")]
    BadHost(String),
    /// An option the swtpm TCTI does not take (e.g. `path=`: tss-esapi 7.7 drops it).
    #[error("TPM `{tcti}`: unknown option `{option}` (the swtpm TCTI takes host= and port=; Unix sockets are not supported)")]
    UnknownOption {
        /// The whole value given.
        tcti: String,
        /// The option not understood.
        option: String,
    },
    /// `device:` without a path.
    #[error("TPM `{0}`: give the device path, e.g. `device:/dev/tpmrm0`")]
    MissingDevicePath(String),
}

impl FromStr for TpmTarget {
    type Err = TctiParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "spawn" {
            return Ok(TpmTarget::Spawn);
        }
        s.parse().map(TpmTarget::Tcti)
    }
}

impl FromStr for Tcti {
    type Err = TctiParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("device:") {
            if path.is_empty() {
                return Err(TctiParseError::MissingDevicePath(s.to_owned()));
            }
            return Ok(Tcti::Device {
                path: PathBuf::from(path),
            });
        }
        let opts = match s.strip_prefix("swtpm:") {
            Some(o) => o,
            None if s == "swtpm" => "",
            None => return Err(TctiParseError::Unsupported(s.to_owned())),
        };
        let mut host = String::from("127.0.0.1");
        let mut port = None;
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("host", h)) => {
                    if h != "localhost" && h.parse::<IpAddr>().is_err() {
                        return Err(TctiParseError::BadHost(s.to_owned()));
                    }
                    host = h.to_owned();
                }
                Some(("port", p)) => match p.parse::<u16>() {
                    Ok(p) if (1..u16::MAX).contains(&p) => port = Some(p),
                    _ => return Err(TctiParseError::BadPort(s.to_owned())),
                },
                _ => {
                    return Err(TctiParseError::UnknownOption {
                        tcti: s.to_owned(),
                        option: opt.to_owned(),
                    })
                }
            }
        }
        let port = port.ok_or_else(|| TctiParseError::BadPort(s.to_owned()))?;
        Ok(Tcti::Swtpm { host, port })
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tcti::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
            Tcti::Device { path } => write!(f, "device:{}", path.display()),
        }
    }
}

impl fmt::Display for TpmTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmTarget::Tcti(t) => t.fmt(f),
            TpmTarget::Spawn => f.write_str("spawn"),
        }
    }
}

impl Tcti {
    /// The swtpm TCTI for a TPM on loopback port `port`.
    pub fn swtpm_loopback(port: u16) -> Self {
        Tcti::Swtpm {
            host: "127.0.0.1".to_owned(),
            port,
        }
    }

    /// The tss-esapi name-conf for this TCTI.
    pub fn to_name_conf(&self) -> Result<tss_esapi::tcti_ldr::TctiNameConf, tss_esapi::Error> {
        tss_esapi::tcti_ldr::TctiNameConf::from_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!("spawn".parse::<TpmTarget>(), Ok(TpmTarget::Spawn));
        assert_eq!(
            "swtpm:host=127.0.0.1,port=2321".parse::<TpmTarget>(),
            Ok(TpmTarget::Tcti(Tcti::swtpm_loopback(2321)))
        );
        assert_eq!(
            "swtpm:port=4000,host=::1".parse::<Tcti>(),
            Ok(Tcti::Swtpm {
                host: "::1".into(),
                port: 4000
            })
        );
        assert_eq!(
            "device:/dev/tpmrm0".parse::<Tcti>(),
            Ok(Tcti::Device {
                path: "/dev/tpmrm0".into()
            })
        );
    }

    #[test]
    fn display_round_trips_and_feeds_tss_esapi() {
        for s in ["swtpm:host=127.0.0.1,port=2321", "device:/dev/tpmrm0"] {
            let t: Tcti = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
            assert!(t.to_name_conf().is_ok());
        }
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        let e = "mssim:port=1".parse::<TpmTarget>().unwrap_err();
        assert!(matches!(e, TctiParseError::Unsupported(_)));
        assert!(e.to_string().contains("mssim:port=1"));
        assert!(matches!(
            "swtpm:host=127.0.0.1".parse::<Tcti>(),
            Err(TctiParseError::BadPort(_))
        ));
        assert!(matches!(
            "swtpm:port=65535".parse::<Tcti>(),
            Err(TctiParseError::BadPort(_))
        ));
        assert!(matches!(
            "swtpm:port=x".parse::<Tcti>(),
            Err(TctiParseError::BadPort(_))
        ));
        assert!(matches!(
            "swtpm:host=evil host,port=1".parse::<Tcti>(),
            Err(TctiParseError::BadHost(_))
        ));
        assert!(matches!(
            "swtpm:path=/tmp/sock,port=1".parse::<Tcti>(),
            Err(TctiParseError::UnknownOption { .. })
        ));
        assert!(matches!(
            "device:".parse::<Tcti>(),
            Err(TctiParseError::MissingDevicePath(_))
        ));
    }
}
