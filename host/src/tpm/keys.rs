//! The party's key store: TPM object templates, key blobs on disk, and the
//! TPM operations that create and load keys.
//!
//! Layout under the data dir (all files 0600, the `keys/` dir 0700):
//! ```text
//! keys/manifest.json   format, the SRK's Name, one entry per key
//! keys/vote.pub        the vote key's TPM2B_PUBLIC   (tpm2-tools `-u` format)
//! keys/vote.priv       the vote key's TPM2B_PRIVATE  (tpm2-tools `-r` format),
//!                      encrypted by the TPM under the SRK: useless elsewhere
//! ```
//! The storage root key (SRK) is never stored: it is an ECC P-256 primary in
//! the owner hierarchy, re-created from [`srk_template`] whenever a key must
//! be loaded (the same template on the same TPM gives the same key). The
//! manifest records the SRK's Name so that blobs brought to another TPM, or
//! a TPM whose owner seed was cleared, fail with a clear error.
//!
//! A key's template is a [`KeySpec`]: the role and how its use is
//! authorised. Today the vote key uses an empty password (userWithAuth);
//! binding it to the measured PCR is [`KeyAuth::PolicyPcr`] (a PolicyPCR
//! digest as `authPolicy`, userWithAuth clear), and the attestation key is
//! another [`KeyRole`]. Both are additions to this module, not rewrites.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tss_esapi::{
    attributes::ObjectAttributesBuilder,
    constants::CapabilityType,
    handles::{KeyHandle, ObjectHandle},
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
        resource_handles::Hierarchy,
        session_handles::AuthSession,
    },
    structures::{
        CapabilityData, Digest, EccPoint, EccScheme, HashScheme, Private, Public, PublicBuilder,
        PublicEccParametersBuilder, SymmetricDefinitionObject,
    },
    traits::Marshall,
    Context,
};

use quorate_firmware::crypto::PublicKey;

use super::TpmError;

/// File format version of `keys/manifest.json`.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyRole {
    /// The ECDSA P-256 key that signs votes, proposals and operation batches.
    Vote,
    /// The attestation key: restricted ECDSA P-256 signing key under the
    /// EK; quotes PCRs and certifies the vote key.
    Ak,
}

impl KeyRole {
    /// The file stem of this key's blobs in `keys/`.
    pub fn file_stem(self) -> &'static str {
        match self {
            KeyRole::Vote => "vote",
            KeyRole::Ak => "ak",
        }
    }
}

/// How the use of a key is authorised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum KeyAuth {
    /// Empty password (userWithAuth set): anyone who can reach the TPM and
    /// holds the blobs can use the key.
    Password,
    /// `authPolicy` = TPM2_PolicyPCR over the SHA-256 bank of one PCR
    /// holding an expected value; userWithAuth is clear, so the TPM signs
    /// only while the PCR holds that value.
    PolicyPcr {
        /// The PCR (the measurement PCR, 15 by default).
        pcr: u8,
        /// The policy digest (from `quorate_attestation::pcr::measurement_policy`), hex.
        #[serde(with = "hex::serde")]
        digest: [u8; 32],
    },
}

/// The template a key is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// What the key is for.
    pub role: KeyRole,
    /// How its use is authorised.
    pub auth: KeyAuth,
}

impl KeySpec {
    /// The vote key authorised by an empty password.
    pub fn vote_password() -> Self {
        KeySpec {
            role: KeyRole::Vote,
            auth: KeyAuth::Password,
        }
    }

    /// The vote key bound by PolicyPCR to `pcr` holding `value` (SHA-256 bank).
    pub fn vote_policy_pcr(
        pcr: quorate_attestation::pcr::PcrIndex,
        value: &quorate_firmware::types::Sha256Digest,
    ) -> Self {
        let digest = quorate_attestation::pcr::measurement_policy(pcr, value);
        KeySpec {
            role: KeyRole::Vote,
            auth: KeyAuth::PolicyPcr {
                pcr: pcr.get(),
                digest: digest.0,
            },
        }
    }

    /// The attestation key.
    pub fn ak() -> Self {
        KeySpec {
            role: KeyRole::Ak,
            auth: KeyAuth::Password,
        }
    }

    /// The TPMT_PUBLIC template for this key.
    pub fn template(&self) -> Result<Public, TpmError> {
        match self.role {
            KeyRole::Vote => vote_key_template(&self.auth),
            KeyRole::Ak => Err(TpmError::Store {
                path: PathBuf::from("(AK template)"),
                reason: "the AK is made by create_ak under the EK".into(),
            }),
        }
    }
}

/// Which TCG default EK template (EK Credential Profile 2.0, annex B) the
/// EK is made from. The AK lives under the EK whose certificate the TPM
/// holds, so that the certificate certifies the key credential activation
/// is sealed to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EkTemplate {
    /// Template L-2: ECC NIST P-256, SHA-256, AES-128-CFB, PolicyA
    /// (certificate at NV 0x01c0000a). The default when the TPM holds no
    /// EK certificate.
    #[default]
    EccP256,
    /// Template H-3: ECC NIST P-384, SHA-384, AES-256-CFB, PolicyB,
    /// userWithAuth (certificate at NV 0x01c00016; what swtpm_setup --ecc
    /// certifies).
    EccP384,
    /// Template L-1: RSA 2048, SHA-256, AES-128-CFB, PolicyA (certificate
    /// at NV 0x01c00002; nearly every TPM has it).
    Rsa2048,
}

impl EkTemplate {
    /// The order in which EK certificates are looked for.
    pub const PREFERENCE: [EkTemplate; 3] = [
        EkTemplate::EccP256,
        EkTemplate::EccP384,
        EkTemplate::Rsa2048,
    ];

    /// The NV index holding the certificate of the EK made from this template.
    pub fn certificate_nv_index(self) -> u32 {
        match self {
            EkTemplate::EccP256 => 0x01c0_000a,
            EkTemplate::EccP384 => 0x01c0_0016,
            EkTemplate::Rsa2048 => 0x01c0_0002,
        }
    }

    /// A human name.
    pub fn label(self) -> &'static str {
        match self {
            EkTemplate::EccP256 => "ECC NIST P-256 (TCG template L-2)",
            EkTemplate::EccP384 => "ECC NIST P-384 (TCG template H-3)",
            EkTemplate::Rsa2048 => "RSA 2048 (TCG template L-1)",
        }
    }

    /// Whether the template sets userWithAuth (high-range templates): the
    /// EK's USER role is then authorised by its (empty) password; otherwise
    /// by PolicySecret(endorsement).
    pub fn user_with_auth(self) -> bool {
        matches!(self, EkTemplate::EccP384)
    }

    fn selection(self) -> tss_esapi::abstraction::AsymmetricAlgorithmSelection {
        use tss_esapi::abstraction::AsymmetricAlgorithmSelection as S;
        match self {
            EkTemplate::EccP256 => S::Ecc(EccCurve::NistP256),
            EkTemplate::EccP384 => S::Ecc(EccCurve::NistP384),
            EkTemplate::Rsa2048 => {
                S::Rsa(tss_esapi::interface_types::key_bits::RsaKeyBits::Rsa2048)
            }
        }
    }

    fn create_op(self) -> &'static str {
        match self {
            EkTemplate::EccP256 => "create the endorsement key (ECC P-256 template L-2)",
            EkTemplate::EccP384 => "create the endorsement key (ECC P-384 template H-3)",
            EkTemplate::Rsa2048 => "create the endorsement key (RSA 2048 template L-1)",
        }
    }
}

impl std::fmt::Display for EkTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The SRK template: ECC P-256 restricted decryption key with AES-128-CFB,
/// fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA, empty
/// unique. The same key as
/// `tpm2_createprimary -C o -G ecc256:null:aes128cfb -a 'restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda'`.
pub fn srk_template() -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(TpmError::tss("build the SRK attributes"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(TpmError::tss("build the SRK parameters"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(TpmError::tss("build the SRK template"))
}

/// The vote key template: ECDSA P-256 with SHA-256, sign only
/// (not restricted, not decrypt), fixedTPM, fixedParent,
/// sensitiveDataOrigin, noDA; userWithAuth or an authPolicy per `auth`.
fn vote_key_template(auth: &KeyAuth) -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(matches!(auth, KeyAuth::Password))
        .with_no_da(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
        .map_err(TpmError::tss("build the vote key attributes"))?;
    let mut builder = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .build()
            .map_err(TpmError::tss("build the vote key parameters"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default());
    if let KeyAuth::PolicyPcr { digest, .. } = auth {
        builder = builder.with_auth_policy(
            Digest::try_from(digest.to_vec())
                .map_err(TpmError::tss("set the vote key's authPolicy"))?,
        );
    }
    builder
        .build()
        .map_err(TpmError::tss("build the vote key template"))
}

/// A key as the TPM gave it back: its public area and its private area
/// wrapped under the SRK.
#[derive(Debug, Clone)]
pub struct KeyBlob {
    /// What the key is for and how it is authorised.
    pub spec: KeySpec,
    /// The public area.
    pub public: Public,
    /// The private area, encrypted under the SRK.
    pub private: Private,
}

impl KeyBlob {
    /// The public area as a marshalled TPMT_PUBLIC (what the key's Name hashes).
    pub fn tpmt_public(&self) -> Result<Vec<u8>, TpmError> {
        self.public
            .marshall()
            .map_err(TpmError::tss("marshal the key's TPMT_PUBLIC"))
    }

    /// The key's Name: nameAlg (SHA-256, 0x000B) || SHA-256(TPMT_PUBLIC).
    pub fn name(&self) -> Result<Vec<u8>, TpmError> {
        let tpmt = self.tpmt_public()?;
        let mut name = vec![0x00, 0x0b];
        name.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &tpmt).as_ref());
        Ok(name)
    }

    /// The key's P-256 point, for keys that are ECC P-256.
    pub fn p256_point(&self) -> Result<PublicKey, TpmError> {
        match &self.public {
            Public::Ecc { unique, .. } => {
                let (x, y) = (unique.x().value(), unique.y().value());
                let mut xa = [0u8; 32];
                let mut ya = [0u8; 32];
                left_pad(&mut xa, x).ok_or(TpmError::NotP256)?;
                left_pad(&mut ya, y).ok_or(TpmError::NotP256)?;
                Ok(PublicKey::from_xy(&xa, &ya))
            }
            _ => Err(TpmError::NotP256),
        }
    }
}

fn left_pad(dst: &mut [u8; 32], src: &[u8]) -> Option<()> {
    let first = src.iter().position(|b| *b != 0).unwrap_or(src.len());
    let src = src.get(first..)?;
    let start = dst.len().checked_sub(src.len())?;
    dst.get_mut(start..)?.copy_from_slice(src);
    Some(())
}

/// One key in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestKey {
    /// Its template.
    pub spec: KeySpec,
    /// File name of the TPM2B_PUBLIC in `keys/`.
    pub public: String,
    /// File name of the TPM2B_PRIVATE in `keys/`.
    pub private: String,
    /// The key's Name, hex.
    pub name: String,
}

/// The hierarchy key a key's private blob is wrapped under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parent {
    /// The storage root key (owner hierarchy).
    Srk,
    /// The endorsement key (endorsement hierarchy; the AK).
    Ek,
}

/// `keys/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// File format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// Name (hex) of the SRK the blobs are wrapped under: identifies the TPM
    /// and its owner seed.
    pub srk_name: String,
    /// Name (hex) of the EK the AK is wrapped under, once there is an AK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_name: Option<String>,
    /// The TCG template that EK is re-created from (absent in manifests
    /// written before EK certificates were used: ECC P-256).
    #[serde(default)]
    pub ek_template: EkTemplate,
    /// The keys (the AK's parent is the EK, every other key's the SRK).
    pub keys: Vec<ManifestKey>,
}

/// The key store in a data dir.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// The key store of the party whose data dir is `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        KeyStore {
            dir: data_dir.join("keys"),
        }
    }

    /// The `keys/` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the manifest.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// Whether this store holds a manifest (a provisioned party).
    pub fn exists(&self) -> bool {
        self.manifest_path().exists()
    }

    /// Writes the blobs (0600) and then the manifest (atomically), replacing
    /// whatever was there.
    pub fn save(&self, srk_name: &[u8], keys: &[&KeyBlob]) -> Result<(), TpmError> {
        self.save_with_ak(srk_name, keys, None)
    }

    /// As [`KeyStore::save`], with the AK (and the Name of its parent EK).
    pub fn save_with_ak(
        &self,
        srk_name: &[u8],
        keys: &[&KeyBlob],
        ak: Option<(&KeyBlob, &[u8], EkTemplate)>,
    ) -> Result<(), TpmError> {
        let keys: Vec<&KeyBlob> = keys.iter().copied().chain(ak.map(|(b, _, _)| b)).collect();
        fs::DirBuilder::new()
            .recursive(true)
            .create(&self.dir)
            .map_err(TpmError::io(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(TpmError::io(&self.dir))?;
        let mut entries = Vec::new();
        for key in &keys {
            let stem = key.spec.role.file_stem();
            let public = format!("{stem}.pub");
            let private = format!("{stem}.priv");
            write_private_file(&self.dir.join(&public), &tpm2b(&key.tpmt_public()?)?)?;
            write_private_file(&self.dir.join(&private), &tpm2b(key.private.value())?)?;
            entries.push(ManifestKey {
                spec: key.spec.clone(),
                public,
                private,
                name: hex::encode(key.name()?),
            });
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            srk_name: hex::encode(srk_name),
            ek_name: ak.map(|(_, ek, _)| hex::encode(ek)),
            ek_template: ak.map(|(_, _, t)| t).unwrap_or_default(),
            keys: entries,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| TpmError::Store {
            path: self.manifest_path(),
            reason: e.to_string(),
        })?;
        write_private_file(&self.manifest_path(), &json)
    }

    /// Reads the manifest.
    pub fn manifest(&self) -> Result<Manifest, TpmError> {
        let path = self.manifest_path();
        let bytes = fs::read(&path).map_err(TpmError::io(&path))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| TpmError::Store {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(TpmError::Store {
                path,
                reason: format!("format {} (this build reads {MANIFEST_FORMAT})", m.format),
            });
        }
        Ok(m)
    }

    /// Reads the blobs of the key with `role`, checking them against the
    /// manifest's Name.
    pub fn load(&self, role: KeyRole) -> Result<KeyBlob, TpmError> {
        let m = self.manifest()?;
        let entry = m
            .keys
            .iter()
            .find(|k| k.spec.role == role)
            .ok_or_else(|| TpmError::Store {
                path: self.manifest_path(),
                reason: format!("no {} key listed", role.file_stem()),
            })?;
        let pub_path = self.dir.join(&entry.public);
        let priv_path = self.dir.join(&entry.private);
        let pub_bytes = read_tpm2b(&pub_path)?;
        let priv_bytes = read_tpm2b(&priv_path)?;
        let public =
            <Public as tss_esapi::traits::UnMarshall>::unmarshall(&pub_bytes).map_err(|e| {
                TpmError::Store {
                    path: pub_path.clone(),
                    reason: format!("not a TPMT_PUBLIC: {e}"),
                }
            })?;
        let private = Private::try_from(priv_bytes).map_err(|e| TpmError::Store {
            path: priv_path.clone(),
            reason: format!("not a TPM2B_PRIVATE: {e}"),
        })?;
        let blob = KeyBlob {
            spec: entry.spec.clone(),
            public,
            private,
        };
        if hex::encode(blob.name()?) != entry.name {
            return Err(TpmError::Store {
                path: pub_path,
                reason: "the public area does not match the Name in manifest.json".into(),
            });
        }
        Ok(blob)
    }
}

/// `u16` big-endian size || bytes.
fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>, TpmError> {
    let len = u16::try_from(bytes.len()).map_err(|_| TpmError::Store {
        path: PathBuf::new(),
        reason: format!("{} bytes do not fit a TPM2B", bytes.len()),
    })?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

fn read_tpm2b(path: &Path) -> Result<Vec<u8>, TpmError> {
    let bytes = fs::read(path).map_err(TpmError::io(path))?;
    let bad = |reason: &str| TpmError::Store {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let (size, rest) = bytes
        .split_first_chunk::<2>()
        .ok_or_else(|| bad("shorter than a TPM2B size"))?;
    if usize::from(u16::from_be_bytes(*size)) != rest.len() {
        return Err(bad("TPM2B size does not match the file length"));
    }
    Ok(rest.to_vec())
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file + rename).
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), TpmError> {
    write_file_mode(path, bytes, 0o600)
}

/// Writes `bytes` to `path` with `mode`, atomically (temp file, fsync, rename).
pub(crate) fn write_file_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TpmError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(TpmError::io(&tmp))?;
    // `mode` applies only when the file is created: enforce it on reuse too.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(TpmError::io(&tmp))?;
    f.write_all(bytes).map_err(TpmError::io(&tmp))?;
    f.sync_all().map_err(TpmError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(TpmError::io(path))
}

// ---- TPM operations (called only on the owner thread) ----

/// Flushes every transient object left loaded (by a crashed process, or
/// this one before a TPM restart). Returns how many were flushed.
pub(crate) fn flush_stale_transients(ctx: &mut Context) -> Result<usize, TpmError> {
    let (data, _more) = ctx
        .get_capability(
            CapabilityType::Handles,
            tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST,
            64,
        )
        .map_err(TpmError::tss("list transient handles"))?;
    let CapabilityData::Handles(list) = data else {
        return Ok(0);
    };
    let mut n = 0;
    for h in list.iter() {
        let obj = ctx
            .tr_from_tpm_public(*h)
            .map_err(TpmError::tss("open a stale transient handle"))?;
        ctx.flush_context(obj)
            .map_err(TpmError::tss("flush a stale transient handle"))?;
        n += 1;
    }
    Ok(n)
}

/// Creates the SRK (transient; the caller flushes it) and returns its
/// handle and Name.
pub(crate) fn create_srk(ctx: &mut Context) -> Result<(KeyHandle, Vec<u8>), TpmError> {
    let template = srk_template()?;
    let res = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(TpmError::tss(
            "create the storage root key (owner hierarchy)",
        ))?;
    let name = match ctx.tr_get_name(res.key_handle.into()) {
        Ok(n) => n.value().to_vec(),
        Err(e) => {
            flush(ctx, res.key_handle.into());
            return Err(TpmError::tss("read the SRK's Name")(e));
        }
    };
    Ok((res.key_handle, name))
}

/// Creates a key from `spec` under a fresh SRK; nothing stays loaded.
/// Returns the blob and the SRK's Name.
pub(crate) fn create_key(
    ctx: &mut Context,
    spec: &KeySpec,
) -> Result<(KeyBlob, Vec<u8>), TpmError> {
    let template = spec.template()?;
    let (srk, srk_name) = create_srk(ctx)?;
    let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.create(srk, template, None, None, None, None)
    });
    flush(ctx, srk.into());
    let res = res.map_err(TpmError::tss("create the key under the SRK"))?;
    Ok((
        KeyBlob {
            spec: spec.clone(),
            public: res.out_public,
            private: res.out_private,
        },
        srk_name,
    ))
}

/// Re-creates the SRK, checks its Name against `expected_srk_name` (if
/// given), loads `blob` under it and flushes the SRK. The returned handle
/// is the only object left loaded; the caller flushes it.
pub(crate) fn load_key(
    ctx: &mut Context,
    blob: &KeyBlob,
    expected_srk_name: Option<&[u8]>,
) -> Result<KeyHandle, TpmError> {
    let (srk, srk_name) = create_srk(ctx)?;
    if let Some(expected) = expected_srk_name {
        if expected != srk_name.as_slice() {
            flush(ctx, srk.into());
            return Err(TpmError::WrongTpm {
                expected: hex::encode(expected),
                found: hex::encode(&srk_name),
            });
        }
    }
    let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.load(srk, blob.private.clone(), blob.public.clone())
    });
    flush(ctx, srk.into());
    res.map_err(TpmError::tss("load the key blob under the SRK"))
}

/// Makes the AK's customisation: noDA on top of tss-esapi's AK template
/// (restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth; ECDSA/SHA-256, P-256).
struct NoDa;

impl tss_esapi::abstraction::KeyCustomization for NoDa {
    fn attributes(&self, b: ObjectAttributesBuilder) -> ObjectAttributesBuilder {
        b.with_no_da(true)
    }
}

/// Creates the EK from its TCG default template (transient; the caller
/// flushes it) and returns its handle and Name.
pub(crate) fn create_ek(
    ctx: &mut Context,
    template: EkTemplate,
) -> Result<(KeyHandle, Vec<u8>), TpmError> {
    let ek = tss_esapi::abstraction::ek::create_ek_object_2(ctx, template.selection(), None)
        .map_err(|e| TpmError::Tss {
            op: template.create_op(),
            rc: super::raw_rc(&e),
            source: e,
        })?;
    match ctx.tr_get_name(ek.into()) {
        Ok(n) => Ok((ek, n.value().to_vec())),
        Err(e) => {
            flush(ctx, ek.into());
            Err(TpmError::tss("read the EK's Name")(e))
        }
    }
}

/// The EK certificate (DER) the TPM holds in the NV index of `template`,
/// if that index is defined. Trailing padding after the DER is cut off.
pub(crate) fn read_ek_certificate(
    ctx: &mut Context,
    template: EkTemplate,
) -> Result<Option<Vec<u8>>, TpmError> {
    let index = template.certificate_nv_index();
    let (data, _more) = ctx
        .get_capability(CapabilityType::Handles, index, 1)
        .map_err(TpmError::tss("list NV indices"))?;
    let defined = matches!(&data, CapabilityData::Handles(list)
        if list.iter().any(|h| u32::from(*h) == index));
    if !defined {
        return Ok(None);
    }
    let bytes = tss_esapi::abstraction::ek::retrieve_ek_pubcert(ctx, template.selection())
        .map_err(TpmError::tss("read the EK certificate from NV"))?;
    Ok(Some(der_prefix(&bytes).to_vec()))
}

/// The EK the AK goes under: the first of [`EkTemplate::PREFERENCE`] whose
/// certificate the TPM holds (with that certificate), else ECC P-256
/// without one.
pub(crate) fn choose_ek(ctx: &mut Context) -> Result<(EkTemplate, Option<Vec<u8>>), TpmError> {
    for t in EkTemplate::PREFERENCE {
        if let Some(cert) = read_ek_certificate(ctx, t)? {
            return Ok((t, Some(cert)));
        }
    }
    Ok((EkTemplate::default(), None))
}

/// The bytes of the first DER element of `bytes` (NV indices may be
/// larger than the certificate they hold); all of `bytes` if its header
/// does not parse.
fn der_prefix(bytes: &[u8]) -> &[u8] {
    let len = match bytes {
        [0x30, n, ..] if *n < 0x80 => Some(2 + usize::from(*n)),
        [0x30, 0x81, n, ..] => Some(3 + usize::from(*n)),
        [0x30, 0x82, a, b, ..] => Some(4 + usize::from(u16::from_be_bytes([*a, *b]))),
        _ => None,
    };
    len.and_then(|l| bytes.get(..l)).unwrap_or(bytes)
}

/// Creates an AK under the EK of `template`; nothing stays loaded.
/// Returns the blob and the EK's Name.
pub(crate) fn create_ak(
    ctx: &mut Context,
    template: EkTemplate,
) -> Result<(KeyBlob, Vec<u8>), TpmError> {
    let (ek, ek_name) = create_ek(ctx, template)?;
    let res = tss_esapi::abstraction::ak::create_ak(
        ctx,
        ek,
        HashingAlgorithm::Sha256,
        tss_esapi::interface_types::algorithm::SignatureSchemeAlgorithm::EcDsa,
        None,
        NoDa,
    );
    flush(ctx, ek.into());
    let res = res.map_err(TpmError::tss("create the attestation key under the EK"))?;
    Ok((
        KeyBlob {
            spec: KeySpec::ak(),
            public: res.out_public,
            private: res.out_private,
        },
        ek_name,
    ))
}

/// Re-creates the EK of `template`, checks its Name (if given), loads the
/// AK under it (the EK's policy: PolicySecret(endorsement), with PolicyOR
/// for the high-range templates) and flushes the EK. The caller flushes
/// the AK.
pub(crate) fn load_ak(
    ctx: &mut Context,
    blob: &KeyBlob,
    template: EkTemplate,
    expected_ek_name: Option<&[u8]>,
) -> Result<KeyHandle, TpmError> {
    let (ek, ek_name) = create_ek(ctx, template)?;
    if let Some(expected) = expected_ek_name {
        if expected != ek_name.as_slice() {
            flush(ctx, ek.into());
            return Err(TpmError::WrongTpm {
                expected: hex::encode(expected),
                found: hex::encode(&ek_name),
            });
        }
    }
    let res = tss_esapi::abstraction::ak::load_ak(
        ctx,
        ek,
        None,
        blob.private.clone(),
        blob.public.clone(),
    );
    flush(ctx, ek.into());
    res.map_err(TpmError::tss("load the AK under the EK"))
}

/// Flushes a transient object, logging (not failing) if the TPM refuses:
/// used on cleanup paths where the object may already be gone.
pub(crate) fn flush(ctx: &mut Context, handle: ObjectHandle) {
    if let Err(e) = ctx.flush_context(handle) {
        tracing::debug!("flushing a transient handle: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_template_attributes() {
        let t = KeySpec::vote_password().template().unwrap();
        let a = t.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin());
        assert!(a.no_da() && a.sign_encrypt() && a.user_with_auth());
        assert!(!a.decrypt() && !a.restricted());
        assert!(t.auth_policy().is_empty());

        let policy = KeySpec {
            role: KeyRole::Vote,
            auth: KeyAuth::PolicyPcr {
                pcr: 15,
                digest: [7; 32],
            },
        }
        .template()
        .unwrap();
        assert!(!policy.object_attributes().user_with_auth());
        assert_eq!(policy.auth_policy().value(), &[7u8; 32]);
    }

    #[test]
    fn srk_template_is_a_nod_a_storage_key() {
        let a = srk_template().unwrap().object_attributes();
        assert!(a.restricted() && a.decrypt() && a.no_da() && a.fixed_tpm());
        assert!(!a.sign_encrypt());
    }

    #[test]
    fn tpm2b_files_round_trip_and_reject_bad_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.priv");
        write_private_file(&p, &tpm2b(b"hello").unwrap()).unwrap();
        assert_eq!(read_tpm2b(&p).unwrap(), b"hello");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(&p, [0, 9, 1]).unwrap();
        assert!(read_tpm2b(&p).is_err());
        fs::write(&p, [0]).unwrap();
        assert!(read_tpm2b(&p).is_err());
    }

    #[test]
    fn key_auth_serialises_readably() {
        let s = serde_json::to_string(&KeyAuth::Password).unwrap();
        assert_eq!(s, r#"{"kind":"password"}"#);
        let p = KeyAuth::PolicyPcr {
            pcr: 23,
            digest: [1; 32],
        };
        let back: KeyAuth = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
