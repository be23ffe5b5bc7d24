//! The reference-value policy a verifier applies: which PCR holds the
//! measurement, which executables and configuration are approved, which
//! platform PCR values are required, which EK roots are trusted.
//!
//! It is TOML-friendly (digests are hex strings), for example:
//!
//! ```toml
//! measurement_pcr = 15
//! allowed_executables = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! expected_config = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
//! require_ek_certificate = true
//! ek_roots = ["""-----BEGIN CERTIFICATE-----
//! ...
//! -----END CERTIFICATE-----"""]
//!
//! [[required_pcrs]]
//! index = 0
//! value = "..."
//! ```

use crate::ekcert::certificates_from_text;
use crate::pcr::PcrIndex;
use quorate_types::Sha256Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A SHA-256 digest written as 64 hex characters in policy files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexDigest(pub Sha256Digest);

impl fmt::Display for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for HexDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for HexDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s.trim()).map_err(serde::de::Error::custom)?;
        let arr: [u8; 32] = v.as_slice().try_into().map_err(|_| {
            serde::de::Error::custom(format!("expected 32 bytes of hex, found {}", v.len()))
        })?;
        Ok(HexDigest(Sha256Digest(arr)))
    }
}

impl From<Sha256Digest> for HexDigest {
    fn from(d: Sha256Digest) -> Self {
        HexDigest(d)
    }
}

/// A platform PCR value the policy requires (measured boot / IMA anchors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredPcr {
    /// The PCR (SHA-256 bank).
    pub index: PcrIndex,
    /// The value it must hold.
    pub value: HexDigest,
}

fn default_measurement_pcr() -> PcrIndex {
    PcrIndex::DEFAULT_MEASUREMENT
}

/// Reference values and trust anchors for verifying evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The PCR the coordinator's measurements are extended into (15; 23 only
    /// with `dev = true`).
    #[serde(default = "default_measurement_pcr")]
    pub measurement_pcr: PcrIndex,
    /// The PCR the configuration digest is extended into, when not the
    /// measurement PCR (then it is quoted and checked but not bound into the
    /// vote key's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_pcr: Option<PcrIndex>,
    /// SHA-256 digests of approved coordinator executables.
    pub allowed_executables: Vec<HexDigest>,
    /// The digest of the expected canonical cluster configuration.
    pub expected_config: HexDigest,
    /// Platform PCR values (0-7, 10) that must be quoted with these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_pcrs: Vec<RequiredPcr>,
    /// Trusted EK root CA certificates: PEM text or hex DER, one entry each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ek_roots: Vec<String>,
    /// Whether evidence without an EK certificate chaining to `ek_roots` is
    /// rejected.
    #[serde(default)]
    pub require_ek_certificate: bool,
    /// Whether the AK must have noDA set.
    #[serde(default)]
    pub require_ak_no_da: bool,
    /// Development mode: allows the resettable PCR 23 as measurement PCR.
    #[serde(default)]
    pub dev: bool,
}

/// Why a policy cannot be used (a local configuration fault, not a peer's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The measurement PCR can be reset at locality 0 but dev mode is off.
    #[error("policy: {pcr} can be reset by any process at locality 0; use it only with dev = true (PCR 15 is the production default)")]
    ResettablePcr {
        /// The PCR configured.
        pcr: PcrIndex,
    },
    /// No executable is approved.
    #[error("policy: allowed_executables is empty, so no evidence could ever pass")]
    NoExecutables,
    /// A required PCR is listed twice or collides with the measurement PCRs.
    #[error("policy: {pcr} is listed twice among the measurement and required PCRs")]
    DuplicatePcr {
        /// The PCR.
        pcr: PcrIndex,
    },
    /// An EK root entry is neither PEM nor hex DER.
    #[error("policy: ek_roots[{index}]: {reason}")]
    BadRoot {
        /// Its position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// An EK certificate is required but no root is configured.
    #[error("policy: require_ek_certificate is set but ek_roots is empty")]
    NoRoots,
    /// The TOML text does not parse as a policy.
    #[error("policy: {0}")]
    Syntax(String),
}

impl Policy {
    /// A policy approving `executables` and `config` in PCR 15, with no
    /// platform PCRs and no EK requirement.
    pub fn new(executables: Vec<Sha256Digest>, config: Sha256Digest) -> Policy {
        Policy {
            measurement_pcr: PcrIndex::DEFAULT_MEASUREMENT,
            config_pcr: None,
            allowed_executables: executables.into_iter().map(HexDigest).collect(),
            expected_config: HexDigest(config),
            required_pcrs: Vec::new(),
            ek_roots: Vec::new(),
            require_ek_certificate: false,
            require_ak_no_da: false,
            dev: false,
        }
    }

    /// Parses a TOML policy and checks it.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let p: Policy = toml_from_str(text)?;
        p.check()?;
        Ok(p)
    }

    /// The policy as TOML text, which [`Policy::from_toml`] reads back.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        toml::to_string(self).map_err(|e| PolicyError::Syntax(e.to_string()))
    }

    /// The PCR holding the configuration digest.
    pub fn config_pcr(&self) -> PcrIndex {
        self.config_pcr.unwrap_or(self.measurement_pcr)
    }

    /// Every PCR the quote must cover, ascending, without repeats.
    pub fn quoted_pcrs(&self) -> Vec<PcrIndex> {
        let mut v = vec![self.measurement_pcr, self.config_pcr()];
        v.extend(self.required_pcrs.iter().map(|r| r.index));
        v.sort();
        v.dedup();
        v
    }

    /// Checks the policy is usable.
    pub fn check(&self) -> Result<(), PolicyError> {
        for pcr in [self.measurement_pcr, self.config_pcr()] {
            if (16..=23).contains(&pcr.get()) && !self.dev {
                return Err(PolicyError::ResettablePcr { pcr });
            }
        }
        if self.allowed_executables.is_empty() {
            return Err(PolicyError::NoExecutables);
        }
        let mut seen = vec![self.measurement_pcr];
        if let Some(c) = self.config_pcr {
            if seen.contains(&c) && c != self.measurement_pcr {
                return Err(PolicyError::DuplicatePcr { pcr: c });
            }
            seen.push(c);
        }
        for r in &self.required_pcrs {
            if seen.contains(&r.index) {
                return Err(PolicyError::DuplicatePcr { pcr: r.index });
            }
            seen.push(r.index);
        }
        if self.require_ek_certificate && self.ek_roots.is_empty() {
            return Err(PolicyError::NoRoots);
        }
        self.ek_root_ders().map(|_| ())
    }

    /// The EK roots as DER certificates.
    pub fn ek_root_ders(&self) -> Result<Vec<Vec<u8>>, PolicyError> {
        let mut out = Vec::new();
        for (index, text) in self.ek_roots.iter().enumerate() {
            let certs = certificates_from_text(text)
                .map_err(|reason| PolicyError::BadRoot { index, reason })?;
            out.extend(certs);
        }
        Ok(out)
    }
}

fn toml_from_str(text: &str) -> Result<Policy, PolicyError> {
    toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_round_trips_through_toml() {
        let mut p = Policy::new(
            vec![Sha256Digest([1; 32]), Sha256Digest([2; 32])],
            Sha256Digest([3; 32]),
        );
        p.required_pcrs.push(RequiredPcr {
            index: PcrIndex::new(0).unwrap(),
            value: HexDigest(Sha256Digest([4; 32])),
        });
        let text = p.to_toml().unwrap();
        assert!(text.contains(&"01".repeat(32)), "{text}");
        let back = Policy::from_toml(&text).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            back.quoted_pcrs(),
            vec![PcrIndex::new(0).unwrap(), PcrIndex::new(15).unwrap()]
        );
    }

    #[test]
    fn defaults_apply_and_bad_policies_are_refused() {
        let text = format!(
            "allowed_executables = [\"{}\"]\nexpected_config = \"{}\"\n",
            "aa".repeat(32),
            "bb".repeat(32)
        );
        let p = Policy::from_toml(&text).unwrap();
        assert_eq!(p.measurement_pcr, PcrIndex::DEFAULT_MEASUREMENT);
        assert!(!p.require_ek_certificate);
        let dev = format!("measurement_pcr = 23\n{text}");
        assert!(matches!(
            Policy::from_toml(&dev),
            Err(PolicyError::ResettablePcr { .. })
        ));
        assert!(Policy::from_toml(&format!("dev = true\n{dev}")).is_ok());
        let short = "allowed_executables = [\"abcd\"]\nexpected_config = \"00\"\n";
        assert!(matches!(
            Policy::from_toml(short),
            Err(PolicyError::Syntax(_))
        ));
        let none = format!(
            "allowed_executables = []\nexpected_config = \"{}\"\n",
            "bb".repeat(32)
        );
        assert_eq!(Policy::from_toml(&none), Err(PolicyError::NoExecutables));
        let roots = format!("require_ek_certificate = true\n{text}");
        assert_eq!(Policy::from_toml(&roots), Err(PolicyError::NoRoots));
        let typo = format!("measurment_pcr = 15\n{text}");
        assert!(matches!(
            Policy::from_toml(&typo),
            Err(PolicyError::Syntax(_))
        ));
    }
}
