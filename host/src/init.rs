//! `quorate init`: provision a party's data dir.
//!
//! Creates the storage root key and the vote key in the TPM, saves the key
//! blobs (0600) under `DIR/keys/`, and writes `DIR/enrollment.json`, the
//! public record peers enroll: party id, the vote key's TPMT_PUBLIC, its
//! Name and its P-256 point. A data dir that already holds a party is left
//! alone unless `--force` is given. With `--tpm spawn` the private swtpm
//! keeps its state in `DIR/swtpm/`, reused on every later start.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use quorate_firmware::crypto::PublicKey;
use quorate_firmware::types::PartyId;

use crate::launch::{measured_launch, LaunchError, Measurement};
use crate::tpm::keys::{write_file_mode, KeyStore};
use crate::tpm::{EkTemplate, KeySpec, SwtpmError, TpmError, TpmHandle, TpmTarget};

/// File format version of `enrollment.json`.
pub const ENROLLMENT_FORMAT: u32 = 1;
/// File name of the enrollment record in the data dir.
pub const ENROLLMENT_FILE: &str = "enrollment.json";
/// Subdirectory of the data dir holding a spawned swtpm's state.
pub const SWTPM_DIR: &str = crate::tpm::SPAWNED_SWTPM_DIR;

/// What `quorate init` was asked to do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The party's data dir (created 0700 if missing).
    pub data_dir: PathBuf,
    /// The party's id (P1..Pn; not zero).
    pub party_id: PartyId,
    /// Which TPM to use.
    pub tpm: TpmTarget,
    /// Re-provision a data dir that already holds a party.
    pub force: bool,
}

/// The vote key as peers enroll it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledKey {
    /// The marshalled TPMT_PUBLIC, hex.
    pub tpmt_public: String,
    /// Its Name (0x000B || SHA-256(TPMT_PUBLIC)), hex.
    pub name: String,
    /// The uncompressed P-256 point (0x04 || X || Y), hex.
    pub point: String,
}

/// `DIR/enrollment.json`: what a party shares with its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// File format version ([`ENROLLMENT_FORMAT`]).
    pub format: u32,
    /// The party's id.
    pub party_id: PartyId,
    /// Its TPM-resident vote key.
    pub vote_key: EnrolledKey,
    /// Its TLS certificate (DER, hex): peers accept exactly this one.
    pub tls_cert: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, hex: the TLS key
    /// hash bound into the party's attestation evidence.
    pub tls_key_hash: String,
    /// Its attestation key (restricted, under the EK), when provisioned
    /// for measured launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak: Option<EnrolledKey>,
    /// The endorsement key the AK lives under, with its certificate when
    /// the TPM has one: what `quorate enroll challenge` seals the
    /// credential-activation challenge to. Absent in enrollments written
    /// before EK certificates were read (they load; they cannot be
    /// challenged until re-provisioned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek: Option<EnrolledEk>,
}

/// An EK certificate (DER) if there is one, and its intermediates (DER).
pub type EkCertificates = (Option<Vec<u8>>, Vec<Vec<u8>>);

/// The party's endorsement key as peers enroll it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledEk {
    /// The TCG template it is made from.
    pub template: EkTemplate,
    /// Its marshalled TPMT_PUBLIC, hex.
    pub tpmt_public: String,
    /// Its Name, hex.
    pub name: String,
    /// Its certificate (DER, hex), read from the TPM's NV index for the
    /// template, when the TPM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Intermediate CA certificates (DER, hex), leaf-side first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl EnrolledEk {
    /// The certificate and the intermediates as DER.
    pub fn certificates(&self) -> Result<EkCertificates, hex::FromHexError> {
        let cert = self.certificate.as_deref().map(hex::decode).transpose()?;
        let chain = self
            .chain
            .iter()
            .map(hex::decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((cert, chain))
    }
}

/// Provisioning for measured launch: an AK, a vote key bound by PolicyPCR
/// to the PCR value this executable and configuration produce, and the
/// launch itself (so the new key can be checked by signing).
#[derive(Debug, Clone, Copy)]
pub struct MeasuredInit {
    /// What is measured, and into which PCR.
    pub measurement: Measurement,
    /// Dev mode (allows PCR 23).
    pub dev: bool,
}

impl Enrollment {
    /// Reads and checks an enrollment file: the Name and the point must
    /// match the TPMT_PUBLIC.
    pub fn load(path: &Path) -> Result<Enrollment, InitError> {
        let bad = |reason: String| InitError::Enrollment {
            path: path.to_owned(),
            reason,
        };
        let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
        Enrollment::from_json(&bytes).map_err(bad)
    }

    /// Parses and checks enrollment.json bytes (as [`Enrollment::load`]
    /// does), e.g. from an audit bundle; the error says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Enrollment, String> {
        let e: Enrollment = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if e.format != ENROLLMENT_FORMAT {
            return Err(format!(
                "format {} (this build reads {ENROLLMENT_FORMAT})",
                e.format
            ));
        }
        let tpmt =
            hex::decode(&e.vote_key.tpmt_public).map_err(|err| format!("tpmt_public: {err}"))?;
        let public = quorate_attestation::tpm::TpmtPublic::parse(&tpmt)
            .map_err(|err| format!("tpmt_public: {err}"))?;
        if hex::encode(public.name().as_bytes()) != e.vote_key.name {
            return Err("name does not match tpmt_public".into());
        }
        let point = public
            .ecc_p256_point()
            .map_err(|err| format!("tpmt_public: {err}"))?;
        if hex::encode(point.0) != e.vote_key.point {
            return Err("point does not match tpmt_public".into());
        }
        if let Some(ak) = &e.ak {
            let tpmt =
                hex::decode(&ak.tpmt_public).map_err(|err| format!("ak.tpmt_public: {err}"))?;
            let public = quorate_attestation::tpm::TpmtPublic::parse(&tpmt)
                .map_err(|err| format!("ak.tpmt_public: {err}"))?;
            if hex::encode(public.name().as_bytes()) != ak.name {
                return Err("ak.name does not match ak.tpmt_public".into());
            }
        }
        if let Some(ek) = &e.ek {
            let tpmt =
                hex::decode(&ek.tpmt_public).map_err(|err| format!("ek.tpmt_public: {err}"))?;
            let public = quorate_attestation::tpm::TpmtPublic::parse(&tpmt)
                .map_err(|err| format!("ek.tpmt_public: {err}"))?;
            if hex::encode(public.name().as_bytes()) != ek.name {
                return Err("ek.name does not match ek.tpmt_public".into());
            }
            ek.certificates()
                .map_err(|err| format!("ek certificates: {err}"))?;
        }
        Ok(e)
    }

    /// The vote key's point.
    pub fn vote_public_key(&self) -> Result<PublicKey, InitError> {
        let bytes = hex::decode(&self.vote_key.point).map_err(|e| InitError::Enrollment {
            path: PathBuf::from(ENROLLMENT_FILE),
            reason: format!("point: {e}"),
        })?;
        let arr: [u8; 65] = bytes.try_into().map_err(|_| InitError::Enrollment {
            path: PathBuf::from(ENROLLMENT_FILE),
            reason: "point is not 65 bytes".into(),
        })?;
        Ok(PublicKey(arr))
    }
}

/// Why `quorate init` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The data dir already holds a provisioned party.
    #[error("data dir {} is already provisioned ({what}); refusing to replace its keys. \
             Re-run with --force to re-provision (a new vote key, which peers must enroll again)", dir.display())]
    AlreadyProvisioned {
        /// The data dir.
        dir: PathBuf,
        /// What was found there (e.g. "party P2, enrollment.json").
        what: String,
    },
    /// Party id zero.
    #[error("party id must be 1 or more (parties are P1..Pn)")]
    ZeroPartyId,
    /// The data dir could not be created or written.
    #[error("data dir {}: {source}", dir.display())]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The private swtpm could not be started.
    #[error("--tpm spawn failed")]
    Swtpm(#[from] SwtpmError),
    /// A TPM operation failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The measured launch refused.
    #[error("measured launch refused")]
    Launch(#[from] LaunchError),
    /// An enrollment file is unreadable or inconsistent.
    #[error("enrollment file {}: {reason}", path.display())]
    Enrollment {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The fresh key's signature did not verify (the TPM or our conversion
    /// is broken): nothing was written.
    #[error(
        "self-check failed: a signature from the new vote key does not verify under its public key"
    )]
    SelfCheck,
}

/// What `quorate init` did.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The enrollment written.
    pub enrollment: Enrollment,
    /// Where it was written.
    pub enrollment_path: PathBuf,
    /// The key store directory.
    pub keys_dir: PathBuf,
    /// The swtpm state dir, with `--tpm spawn`.
    pub swtpm_dir: Option<PathBuf>,
}

/// What, if anything, makes `dir` a provisioned data dir.
pub fn provisioned(dir: &Path) -> Option<String> {
    let enrollment = dir.join(ENROLLMENT_FILE);
    if enrollment.exists() {
        return Some(match Enrollment::load(&enrollment) {
            Ok(e) => format!("party {}, {ENROLLMENT_FILE}", e.party_id),
            Err(_) => format!("{ENROLLMENT_FILE} present"),
        });
    }
    let store = KeyStore::new(dir);
    store
        .exists()
        .then(|| format!("key store {}", store.manifest_path().display()))
}

/// Provisions a party with a password-authorised vote key and no AK.
pub async fn init(opts: &InitOptions) -> Result<InitReport, InitError> {
    init_with(opts, None).await
}

/// Provisions a party: see the module docs. With `measured`, also an AK,
/// a PolicyPCR-bound vote key, and the measured launch of this TPM boot.
pub async fn init_with(
    opts: &InitOptions,
    measured: Option<MeasuredInit>,
) -> Result<InitReport, InitError> {
    init_with_ek_chain(opts, measured, &[]).await
}

/// As [`init_with`], recording `ek_chain` (the EK certificate's
/// intermediate CA certificates, DER: the TPM holds only the leaf) in the
/// enrollment beside the EK certificate.
pub async fn init_with_ek_chain(
    opts: &InitOptions,
    measured: Option<MeasuredInit>,
    ek_chain: &[Vec<u8>],
) -> Result<InitReport, InitError> {
    if opts.party_id.0 == 0 {
        return Err(InitError::ZeroPartyId);
    }
    let dir = &opts.data_dir;
    if !opts.force {
        if let Some(what) = provisioned(dir) {
            return Err(InitError::AlreadyProvisioned {
                dir: dir.clone(),
                what,
            });
        }
    }
    create_private_dir(dir)?;

    let (swtpm, tcti) = crate::tpm::resolve_target(&opts.tpm, dir)?;
    let result = provision(opts, &tcti, measured, ek_chain).await;
    // Stop a spawned swtpm (TPM2_Shutdown first) whatever happened.
    let swtpm_dir = swtpm.as_ref().map(|s| s.state_dir().to_owned());
    drop(swtpm);
    let (enrollment, enrollment_path, keys_dir) = result?;
    Ok(InitReport {
        enrollment,
        enrollment_path,
        keys_dir,
        swtpm_dir,
    })
}

async fn provision(
    opts: &InitOptions,
    tcti: &crate::tpm::Tcti,
    measured: Option<MeasuredInit>,
    ek_chain: &[Vec<u8>],
) -> Result<(Enrollment, PathBuf, PathBuf), InitError> {
    let tpm = TpmHandle::open(tcti).await?;
    let res = provision_with(opts, &tpm, measured, ek_chain).await;
    tpm.close().await?;
    res
}

async fn provision_with(
    opts: &InitOptions,
    tpm: &TpmHandle,
    measured: Option<MeasuredInit>,
    ek_chain: &[Vec<u8>],
) -> Result<(Enrollment, PathBuf, PathBuf), InitError> {
    let (spec, ak) = match &measured {
        None => (KeySpec::vote_password(), None),
        Some(mi) => {
            let m = &mi.measurement;
            let ak = tpm.create_ak().await?;
            tpm.set_ak(ak.blob.clone(), Some(ak.ek_name.clone()), ak.ek_template)
                .await?;
            (KeySpec::vote_policy_pcr(m.pcr, &m.expected_pcr()), Some(ak))
        }
    };
    let created = tpm.create_vote_key(spec).await?;
    let ours = created.blob.name()?;
    if ours != created.name {
        return Err(TpmError::Store {
            path: PathBuf::from("(new vote key)"),
            reason: format!(
                "the TPM reports Name {} but the public area hashes to {}",
                hex::encode(&created.name),
                hex::encode(&ours)
            ),
        }
        .into());
    }
    let point = created.blob.p256_point()?;

    // Self-check before anything is written: the key loads, signs, and the
    // signature verifies under the point we are about to publish. A
    // PolicyPCR-bound key signs only after the measured launch.
    tpm.load_vote_key(created.blob.clone(), Some(created.srk_name.clone()))
        .await?;
    if let Some(mi) = &measured {
        measured_launch(tpm, &opts.data_dir, &mi.measurement, mi.dev).await?;
        // The AK certifies the new key (checked by name).
        let cert = tpm.certify_vote_key(Vec::new()).await?;
        let attest = quorate_attestation::attest::TpmsAttest::parse(&cert.attest).map_err(|e| {
            TpmError::Store {
                path: PathBuf::from("(vote key certification)"),
                reason: e.to_string(),
            }
        })?;
        if !matches!(&attest.attested,
            quorate_attestation::attest::Attested::Certify { name, .. } if name.as_bytes() == created.name.as_slice())
        {
            return Err(InitError::SelfCheck);
        }
    }
    let probe = b"quorate init self-check".to_vec();
    let sig = tpm.sign(probe.clone()).await?;
    point
        .verify(&probe, &sig)
        .map_err(|_| InitError::SelfCheck)?;

    let store = KeyStore::new(&opts.data_dir);
    let tls = crate::net::tls::TlsIdentity::generate(opts.party_id)
        .and_then(|t| t.save(&opts.data_dir).map(|_| t))
        .map_err(|e| InitError::Enrollment {
            path: opts.data_dir.join(crate::net::tls::TLS_CERT_FILE),
            reason: e.to_string(),
        })?;
    let tls_key_hash = tls.key_hash().map_err(|e| InitError::Enrollment {
        path: opts.data_dir.join(crate::net::tls::TLS_CERT_FILE),
        reason: e.to_string(),
    })?;
    store.save_with_ak(
        &created.srk_name,
        &[&created.blob],
        ak.as_ref()
            .map(|a| (&a.blob, a.ek_name.as_slice(), a.ek_template)),
    )?;
    let enrolled_ak = match &ak {
        Some(a) => Some(EnrolledKey {
            tpmt_public: hex::encode(a.blob.tpmt_public()?),
            name: hex::encode(a.blob.name()?),
            point: hex::encode(a.blob.p256_point()?.0),
        }),
        None => None,
    };
    let enrolled_ek = ak.as_ref().map(|a| EnrolledEk {
        template: a.ek_template,
        tpmt_public: hex::encode(&a.ek_public),
        name: hex::encode(&a.ek_name),
        certificate: a.ek_certificate.as_ref().map(hex::encode),
        chain: if a.ek_certificate.is_some() {
            ek_chain.iter().map(hex::encode).collect()
        } else {
            Vec::new()
        },
    });

    let enrollment = Enrollment {
        format: ENROLLMENT_FORMAT,
        party_id: opts.party_id,
        vote_key: EnrolledKey {
            tpmt_public: hex::encode(created.blob.tpmt_public()?),
            name: hex::encode(&created.name),
            point: hex::encode(point.0),
        },
        tls_cert: hex::encode(tls.cert_der()),
        tls_key_hash: hex::encode(tls_key_hash.as_bytes()),
        ak: enrolled_ak,
        ek: enrolled_ek,
    };
    let path = opts.data_dir.join(ENROLLMENT_FILE);
    let mut json = serde_json::to_vec_pretty(&enrollment).map_err(|e| InitError::Enrollment {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    write_file_mode(&path, &json, 0o644)?;
    Ok((enrollment, path, store.dir().to_owned()))
}

fn create_private_dir(dir: &Path) -> Result<(), InitError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| InitError::DataDir {
            dir: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_zero_party_and_reports_provisioned_dirs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(provisioned(dir.path()).is_none());
        fs::write(dir.path().join(ENROLLMENT_FILE), b"{}").unwrap();
        assert!(provisioned(dir.path()).unwrap().contains(ENROLLMENT_FILE));

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let opts = InitOptions {
            data_dir: dir.path().to_owned(),
            party_id: PartyId(1),
            tpm: TpmTarget::Spawn,
            force: false,
        };
        let err = rt.block_on(init(&opts)).unwrap_err();
        assert!(matches!(err, InitError::AlreadyProvisioned { .. }));
        let msg = err.to_string();
        assert!(msg.contains("--force") && msg.contains(&dir.path().display().to_string()));
        let zero = InitOptions {
            party_id: PartyId(0),
            ..opts
        };
        assert!(matches!(
            rt.block_on(init(&zero)),
            Err(InitError::ZeroPartyId)
        ));
    }

    /// An enrollment written before the `ek` field (no EK) still loads; one
    /// whose EK Name does not follow from its public area does not.
    #[test]
    fn enrollments_without_an_ek_load_and_a_wrong_ek_name_is_refused() {
        let vector = |name: &str| {
            let b = fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../attestation/tests/vectors")
                    .join(name),
            )
            .unwrap();
            quorate_attestation::tpm::TpmtPublic::parse_tpm2b(&b).unwrap()
        };
        let vote = vector("vote.pub");
        let ek = vector("ek_ecc384.pub");
        let mut e = Enrollment {
            format: ENROLLMENT_FORMAT,
            party_id: PartyId(1),
            vote_key: EnrolledKey {
                tpmt_public: hex::encode(vote.as_bytes()),
                name: hex::encode(vote.name().as_bytes()),
                point: hex::encode(vote.ecc_p256_point().unwrap().0),
            },
            tls_cert: String::new(),
            tls_key_hash: String::new(),
            ak: None,
            ek: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(ENROLLMENT_FILE);
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("\"ek\""), "{json}");
        fs::write(&p, json).unwrap();
        assert_eq!(Enrollment::load(&p).unwrap(), e);
        e.ek = Some(EnrolledEk {
            template: EkTemplate::EccP384,
            tpmt_public: hex::encode(ek.as_bytes()),
            name: hex::encode(ek.name().as_bytes()),
            certificate: Some("3000".into()),
            chain: vec![],
        });
        fs::write(&p, serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(Enrollment::load(&p).unwrap(), e);
        if let Some(ek) = e.ek.as_mut() {
            ek.name = hex::encode(vote.name().as_bytes());
        }
        fs::write(&p, serde_json::to_vec(&e).unwrap()).unwrap();
        let err = Enrollment::load(&p).unwrap_err().to_string();
        assert!(err.contains("ek.name does not match"), "{err}");
    }

    #[test]
    fn enrollment_load_rejects_a_mismatched_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(ENROLLMENT_FILE);
        let e = Enrollment {
            format: ENROLLMENT_FORMAT,
            party_id: PartyId(1),
            vote_key: EnrolledKey {
                tpmt_public: "00".into(),
                name: "00".into(),
                point: "00".into(),
            },
            tls_cert: String::new(),
            tls_key_hash: String::new(),
            ak: None,
            ek: None,
        };
        fs::write(&p, serde_json::to_vec(&e).unwrap()).unwrap();
        assert!(Enrollment::load(&p).is_err());
    }
}
