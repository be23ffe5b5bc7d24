//! Enrollment by credential activation, as three commands (issue 3 point 5):
//!
//! 1. Verifier: `quorate enroll challenge --enrollment FILE --out CHALLENGE
//!    --state STATE [--ek-root CA.pem]... [--policy policy.toml]` checks the
//!    party's enrollment (AK attributes; the EK certificate's chain to a
//!    trusted root and that it certifies the enrolled EK), seals a fresh
//!    random credential to (EK, AK Name) in software, writes the challenge
//!    for the party and keeps the credential in the private state file.
//! 2. Party: `quorate activate --data-dir DIR --tpm T --challenge CHALLENGE
//!    --out ANSWER`: its TPM recovers the credential with
//!    TPM2_ActivateCredential, which succeeds only in the TPM holding that
//!    EK's private key and an object with exactly that AK Name.
//! 3. Verifier: `quorate enroll complete --state STATE --answer ANSWER
//!    [--out RECORD]` compares in constant time and writes the record of a
//!    verified enrollment: the AK Name is now bound to the (certified) EK.
//!
//! The file formats are JSON with a `format` number.

use std::fs;
use std::path::{Path, PathBuf};

use quorate_attestation::credential::{ephemeral_len, MadeCredential};
use quorate_attestation::ekcert::{certificates_from_text, EkChainInfo};
use quorate_attestation::enroll::{challenge, EnrollError, EnrollRules, EnrollmentRequest};
use quorate_attestation::policy::Policy;
use quorate_attestation::tpm::TpmtPublic;
use quorate_attestation::{ActivatedAk, PendingEnrollment};
use quorate_firmware::types::{PartyId, Sha256Digest};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::init::{Enrollment, InitError, ENROLLMENT_FILE};
use crate::tpm::keys::write_file_mode;
use crate::tpm::{resolve_target, KeyStore, SwtpmError, TpmError, TpmHandle, TpmTarget};

/// Format number of the challenge, state, answer and record files.
pub const ENROLL_FORMAT: u32 = 1;
/// Size of the random credential sealed in a challenge.
const CREDENTIAL_BYTES: usize = 32;
/// Domain tag of a challenge's id.
const CHALLENGE_ID_TAG: &[u8] = b"quorate/enroll/v1/challenge\0";

/// The challenge the verifier sends to the party (not secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeFile {
    /// [`ENROLL_FORMAT`].
    pub format: u32,
    /// The party challenged.
    pub party_id: PartyId,
    /// The AK Name the credential is sealed to, hex.
    pub ak_name: String,
    /// The Name of the EK it is encrypted to, hex.
    pub ek_name: String,
    /// TPM2B_ID_OBJECT contents, hex.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET contents, hex.
    pub secret: String,
}

impl ChallengeFile {
    /// The challenge's id: SHA-256 over everything it says, so an answer
    /// names the exact challenge it answers.
    pub fn id(&self) -> Sha256Digest {
        Sha256Digest::of_parts(&[
            CHALLENGE_ID_TAG,
            &self.party_id.0.to_be_bytes(),
            self.ak_name.as_bytes(),
            b"\0",
            self.ek_name.as_bytes(),
            b"\0",
            self.credential_blob.as_bytes(),
            b"\0",
            self.secret.as_bytes(),
        ])
    }
}

/// What the verifier keeps until the answer comes (secret: 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeState {
    /// [`ENROLL_FORMAT`].
    pub format: u32,
    /// The party challenged.
    pub party_id: PartyId,
    /// The enrollment file challenged.
    pub enrollment: PathBuf,
    /// SHA-256 of that file's bytes, hex.
    pub enrollment_sha256: String,
    /// [`ChallengeFile::id`] of the challenge sent, hex.
    pub challenge_id: String,
    /// The expected credential and what was checked.
    pub pending: PendingEnrollment,
}

/// The party's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerFile {
    /// [`ENROLL_FORMAT`].
    pub format: u32,
    /// The answering party.
    pub party_id: PartyId,
    /// The id of the challenge answered, hex.
    pub challenge_id: String,
    /// The credential the TPM recovered, hex.
    pub credential: String,
}

/// The record of a verified enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRecord {
    /// [`ENROLL_FORMAT`].
    pub format: u32,
    /// The party.
    pub party_id: PartyId,
    /// SHA-256 of the enrollment file verified, hex.
    pub enrollment_sha256: String,
    /// The AK Name now bound to the EK, hex.
    pub ak_name: String,
    /// The EK's Name, hex.
    pub ek_name: String,
    /// Whether the EK certificate chained to a trusted root.
    pub ek_certified: bool,
    /// The EK certificate's issuer, when certified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_issuer: Option<String>,
    /// The trusted root the chain ends at, when certified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_root: Option<String>,
}

impl EnrollmentRecord {
    /// A readable summary.
    pub fn render(&self) -> String {
        let ek = match (&self.ek_issuer, &self.ek_root) {
            (Some(issuer), Some(root)) => {
                format!("certified (issuer \"{issuer}\", chain to trusted root \"{root}\")")
            }
            _ => "NOT certified (no EK certificate chained to a trusted root: the TPM's \
                  genuineness rests on this enrollment alone)"
                .to_string(),
        };
        format!(
            "OK: enrollment of {} verified: its AK lives in the TPM holding its EK\n  AK Name     {}\n  EK Name     {}\n  EK          {}\n  enrollment  sha256 {}\n",
            self.party_id, self.ak_name, self.ek_name, ek, self.enrollment_sha256
        )
    }
}

/// Why a step of the enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollFlowError {
    /// A file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The enrollment file is unusable.
    #[error(transparent)]
    Enrollment(#[from] InitError),
    /// The enrollment has no AK or no EK (provisioned without `--config`,
    /// or by a build that did not record the EK).
    #[error("enrollment of {party}: no {what}; re-provision the party with `quorate init --config ... --force` to enroll it")]
    NotEnrollable {
        /// The party.
        party: PartyId,
        /// What is missing.
        what: &'static str,
    },
    /// The verifier's checks or the credential failed.
    #[error("enrollment of {party} refused")]
    Refused {
        /// The party.
        party: PartyId,
        /// Why.
        #[source]
        source: EnrollError,
    },
    /// The challenge names another party or AK than this data dir holds.
    #[error("the challenge is for {what} {expected}, but this data dir holds {found}: it was made for another party")]
    NotForUs {
        /// "party" or "AK Name" or "EK Name".
        what: &'static str,
        /// What the challenge names.
        expected: String,
        /// What this party has.
        found: String,
    },
    /// The TPM refused to activate the credential.
    #[error("the TPM refused the challenge: it was not sealed to this TPM's EK for this AK, or it was modified in transit")]
    ActivationRefused(#[source] TpmError),
    /// The answer is for another challenge.
    #[error("the answer is for challenge {found}, but {state} holds challenge {expected}")]
    OtherChallenge {
        /// The state file.
        state: PathBuf,
        /// The challenge id the state expects.
        expected: String,
        /// The one the answer names.
        found: String,
    },
    /// The TPM could not be used.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The private swtpm could not be started.
    #[error(transparent)]
    Swtpm(#[from] SwtpmError),
    /// The OS random number generator failed.
    #[error("the OS random number generator failed")]
    Random,
}

fn file_err(path: &Path) -> impl FnOnce(String) -> EnrollFlowError + '_ {
    move |reason| EnrollFlowError::File {
        path: path.to_owned(),
        reason,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EnrollFlowError> {
    fs::read(path).map_err(|e| file_err(path)(e.to_string()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EnrollFlowError> {
    let bytes = read(path)?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| file_err(path)(e.to_string()))?;
    let format = v.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(ENROLL_FORMAT)) {
        return Err(file_err(path)(format!(
            "format {} (this build reads {ENROLL_FORMAT})",
            format.map_or_else(|| "missing".to_string(), |f| f.to_string())
        )));
    }
    serde_json::from_value(v).map_err(|e| file_err(path)(e.to_string()))
}

fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), EnrollFlowError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|e| file_err(path)(e.to_string()))?;
    json.push(b'\n');
    write_file_mode(path, &json, mode).map_err(|e| file_err(path)(e.to_string()))
}

fn unhex(path: &Path, field: &str, s: &str) -> Result<Vec<u8>, EnrollFlowError> {
    hex::decode(s).map_err(|e| file_err(path)(format!("{field}: not hex: {e}")))
}

/// Reads trusted EK roots from a file: PEM certificates, hex DER, or one
/// binary DER certificate.
pub fn read_roots(path: &Path) -> Result<Vec<Vec<u8>>, EnrollFlowError> {
    let bytes = read(path)?;
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes]);
    }
    let text = String::from_utf8(bytes).map_err(|e| file_err(path)(e.to_string()))?;
    certificates_from_text(&text).map_err(file_err(path))
}

/// The enrollment request of a party's enrollment file.
pub fn enrollment_request(e: &Enrollment) -> Result<EnrollmentRequest, EnrollFlowError> {
    let path = PathBuf::from(ENROLLMENT_FILE);
    let ak = e.ak.as_ref().ok_or(EnrollFlowError::NotEnrollable {
        party: e.party_id,
        what: "attestation key",
    })?;
    let ek = e.ek.as_ref().ok_or(EnrollFlowError::NotEnrollable {
        party: e.party_id,
        what: "endorsement key",
    })?;
    let (cert, chain) = ek
        .certificates()
        .map_err(|err| file_err(&path)(format!("ek certificates: {err}")))?;
    Ok(EnrollmentRequest {
        ek_public: unhex(&path, "ek.tpmt_public", &ek.tpmt_public)?,
        ek_certificate: cert.map(serde_bytes::ByteBuf::from),
        ek_chain: chain.into_iter().map(serde_bytes::ByteBuf::from).collect(),
        ak_public: unhex(&path, "ak.tpmt_public", &ak.tpmt_public)?,
    })
}

/// What `quorate enroll challenge` takes.
#[derive(Debug, Clone)]
pub struct ChallengeOptions {
    /// The party's enrollment.json.
    pub enrollment: PathBuf,
    /// Where the challenge for the party goes.
    pub out: PathBuf,
    /// Where the verifier's private state goes (0600).
    pub state: PathBuf,
    /// Trusted EK roots (files: PEM, hex DER or DER).
    pub ek_roots: Vec<PathBuf>,
    /// A reference policy whose `ek_roots` and requirements apply too.
    pub policy: Option<PathBuf>,
    /// Refuse an EK without a certificate chaining to a trusted root.
    pub require_ek_certificate: bool,
}

/// `quorate enroll challenge`: returns the state written (its
/// `pending.ek_chain` tells whether the EK certificate verified).
pub fn make_challenge(opts: &ChallengeOptions) -> Result<ChallengeState, EnrollFlowError> {
    let bytes = read(&opts.enrollment)?;
    let e = Enrollment::load(&opts.enrollment)?;
    let request = enrollment_request(&e)?;
    let mut rules = match &opts.policy {
        Some(p) => {
            let text = fs::read_to_string(p).map_err(|err| file_err(p)(err.to_string()))?;
            let policy = Policy::from_toml(&text).map_err(|err| file_err(p)(err.to_string()))?;
            EnrollRules::from_policy(&policy).map_err(|err| file_err(p)(err.to_string()))?
        }
        None => EnrollRules::default(),
    };
    for r in &opts.ek_roots {
        rules.ek_roots.extend(read_roots(r)?);
    }
    rules.require_ek_certificate |= opts.require_ek_certificate;

    let refused = |source| EnrollFlowError::Refused {
        party: e.party_id,
        source,
    };
    let ek = TpmtPublic::parse(&request.ek_public)
        .map_err(|err| refused(EnrollError::MalformedEk(err)))?;
    let eph_len = ephemeral_len(&ek).ok_or_else(|| {
        refused(EnrollError::Credential(
            quorate_attestation::CredentialError::UnsupportedKey(format!(
                "EK type {} with nameAlg {}",
                ek.object_type(),
                ek.name_alg()
            )),
        ))
    })?;
    let rng = ring::rand::SystemRandom::new();
    let mut credential = [0u8; CREDENTIAL_BYTES];
    rng.fill(&mut credential)
        .map_err(|_| EnrollFlowError::Random)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok());
    // A random ECDH scalar is out of range with negligible probability;
    // draw again if it is.
    let mut last = None;
    let mut made = None;
    for _ in 0..4 {
        let mut eph = vec![0u8; eph_len];
        rng.fill(&mut eph).map_err(|_| EnrollFlowError::Random)?;
        match challenge(&request, &rules, &credential, &eph, now) {
            Ok(ok) => {
                made = Some(ok);
                break;
            }
            Err(EnrollError::Credential(
                c @ quorate_attestation::CredentialError::BadEphemeral { .. },
            )) => last = Some(EnrollError::Credential(c)),
            Err(other) => return Err(refused(other)),
        }
    }
    let (pending, made): (PendingEnrollment, MadeCredential) = match (made, last) {
        (Some(m), _) => m,
        (None, Some(err)) => return Err(refused(err)),
        (None, None) => return Err(EnrollFlowError::Random),
    };
    let file = ChallengeFile {
        format: ENROLL_FORMAT,
        party_id: e.party_id,
        ak_name: hex::encode(pending.ak_name.as_bytes()),
        ek_name: hex::encode(pending.ek_name.as_bytes()),
        credential_blob: hex::encode(&made.credential_blob),
        secret: hex::encode(&made.secret),
    };
    let state = ChallengeState {
        format: ENROLL_FORMAT,
        party_id: e.party_id,
        enrollment: opts.enrollment.clone(),
        enrollment_sha256: Sha256Digest::of(&bytes).to_string(),
        challenge_id: file.id().to_string(),
        pending,
    };
    write_json(&opts.state, &state, 0o600)?;
    write_json(&opts.out, &file, 0o644)?;
    Ok(state)
}

/// `quorate activate`: the party's TPM answers a challenge. Opens the TPM
/// (`tpm`, for the party in `data_dir`), checks the challenge names this
/// party, its AK and its EK, runs TPM2_ActivateCredential and writes the
/// answer to `out`.
pub async fn activate(
    data_dir: &Path,
    tpm: &TpmTarget,
    challenge_path: &Path,
    out: &Path,
) -> Result<AnswerFile, EnrollFlowError> {
    let c: ChallengeFile = read_json(challenge_path)?;
    let e = Enrollment::load(&data_dir.join(ENROLLMENT_FILE))?;
    if c.party_id != e.party_id {
        return Err(EnrollFlowError::NotForUs {
            what: "party",
            expected: c.party_id.to_string(),
            found: e.party_id.to_string(),
        });
    }
    let ours = |what: &'static str, theirs: &str, ours: Option<&str>| match ours {
        Some(o) if o == theirs => Ok(()),
        o => Err(EnrollFlowError::NotForUs {
            what,
            expected: theirs.to_string(),
            found: o.unwrap_or("none").to_string(),
        }),
    };
    ours(
        "AK Name",
        &c.ak_name,
        e.ak.as_ref().map(|a| a.name.as_str()),
    )?;
    let manifest = KeyStore::new(data_dir).manifest()?;
    ours("EK Name", &c.ek_name, manifest.ek_name.as_deref())?;
    let id = unhex(challenge_path, "credential_blob", &c.credential_blob)?;
    let secret = unhex(challenge_path, "secret", &c.secret)?;

    let (swtpm, tcti) = resolve_target(tpm, data_dir)?;
    let handle = TpmHandle::open_party(data_dir, &tcti).await?;
    let res = handle.activate_credential(id, secret).await;
    handle.close().await?;
    drop(swtpm);
    let credential = res.map_err(|err| match err {
        err @ TpmError::Tss { .. } => EnrollFlowError::ActivationRefused(err),
        other => EnrollFlowError::Tpm(other),
    })?;
    let answer = AnswerFile {
        format: ENROLL_FORMAT,
        party_id: e.party_id,
        challenge_id: c.id().to_string(),
        credential: hex::encode(credential),
    };
    write_json(out, &answer, 0o644)?;
    Ok(answer)
}

/// `quorate enroll complete`: checks the answer against the state and, on
/// success, writes the record to `out` (if given) and returns it.
pub fn complete(
    state_path: &Path,
    answer_path: &Path,
    out: Option<&Path>,
) -> Result<EnrollmentRecord, EnrollFlowError> {
    let state: ChallengeState = read_json(state_path)?;
    let answer: AnswerFile = read_json(answer_path)?;
    if answer.challenge_id != state.challenge_id {
        return Err(EnrollFlowError::OtherChallenge {
            state: state_path.to_owned(),
            expected: state.challenge_id,
            found: answer.challenge_id,
        });
    }
    let credential = unhex(answer_path, "credential", &answer.credential)?;
    state
        .pending
        .complete(&credential)
        .map_err(|source| EnrollFlowError::Refused {
            party: state.party_id,
            source,
        })?;
    let chain: Option<&EkChainInfo> = state.pending.ek_chain.as_ref();
    let record = EnrollmentRecord {
        format: ENROLL_FORMAT,
        party_id: state.party_id,
        enrollment_sha256: state.enrollment_sha256.clone(),
        ak_name: hex::encode(state.pending.ak_name.as_bytes()),
        ek_name: hex::encode(state.pending.ek_name.as_bytes()),
        ek_certified: state.pending.ek_certified,
        ek_issuer: chain.map(|c| c.issuer.clone()),
        ek_root: chain.map(|c| c.root.clone()),
    };
    if let Some(out) = out {
        write_json(out, &record, 0o644)?;
    }
    Ok(record)
}

/// Why `quorate run` refuses a party's enrollment record (or its absence).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Outside dev mode every party needs a record.
    #[error("{party} has no enrollment record (cluster.parties[{index}].enrollment_record): outside dev mode its AK must be proven to live in its TPM. Run `quorate enroll challenge --enrollment {enrollment}` ..., `quorate activate` on {party}, then `quorate enroll complete --out FILE`, and set enrollment_record = FILE")]
    Missing {
        /// The party.
        party: PartyId,
        /// Its index in `cluster.parties`.
        index: usize,
        /// Its enrollment file.
        enrollment: String,
    },
    /// The record cannot be read or parsed.
    #[error("the enrollment record of {party}: {source}")]
    Unreadable {
        /// The party.
        party: PartyId,
        /// Why.
        #[source]
        source: EnrollFlowError,
    },
    /// The record is for another party or another enrollment.
    #[error("the enrollment record {record} of {party} does not match its enrollment: {what} is {in_record} in the record but {in_enrollment} in {enrollment}; run `quorate enroll complete` for {party}'s current enrollment")]
    Mismatch {
        /// The party.
        party: PartyId,
        /// The record file.
        record: String,
        /// The enrollment file.
        enrollment: String,
        /// Which field differs.
        what: &'static str,
        /// The record's value.
        in_record: String,
        /// The enrollment's value.
        in_enrollment: String,
    },
    /// The enrollment cannot be activated (no AK or EK).
    #[error(transparent)]
    Enrollment(#[from] EnrollFlowError),
}

/// Checks `record` (the file `quorate enroll complete` wrote) against the
/// party's enrollment file `enrollment` (whose bytes are `enrollment_bytes`,
/// parsed as `e`): same party, same enrollment file (SHA-256), the AK and EK
/// Names the record activated are the enrollment's — recomputed from their
/// public areas, not taken from the `name` fields. Returns what the record
/// binds, for admission to pin.
pub fn check_record(
    record_path: &Path,
    enrollment_path: &Path,
    enrollment_bytes: &[u8],
    e: &Enrollment,
) -> Result<ActivatedAk, RecordError> {
    let party = e.party_id;
    let r: EnrollmentRecord =
        read_json(record_path).map_err(|source| RecordError::Unreadable { party, source })?;
    let request = enrollment_request(e)?;
    let mismatch = |what, in_record: String, in_enrollment: String| RecordError::Mismatch {
        party,
        record: record_path.display().to_string(),
        enrollment: enrollment_path.display().to_string(),
        what,
        in_record,
        in_enrollment,
    };
    if r.party_id != party {
        return Err(mismatch(
            "the party",
            r.party_id.to_string(),
            party.to_string(),
        ));
    }
    let digest = Sha256Digest::of(enrollment_bytes).to_string();
    if r.enrollment_sha256 != digest {
        return Err(mismatch(
            "the enrollment's SHA-256",
            r.enrollment_sha256,
            digest,
        ));
    }
    let bad = |field: &str, err: quorate_attestation::ParseError| RecordError::Unreadable {
        party,
        source: file_err(enrollment_path)(format!("{field}: {err}")),
    };
    let ak = TpmtPublic::parse(&request.ak_public).map_err(|x| bad("ak.tpmt_public", x))?;
    let ek = TpmtPublic::parse(&request.ek_public).map_err(|x| bad("ek.tpmt_public", x))?;
    let ak_name = hex::encode(ak.name().as_bytes());
    if r.ak_name != ak_name {
        return Err(mismatch("the AK Name", r.ak_name, ak_name));
    }
    let ek_name = hex::encode(ek.name().as_bytes());
    if r.ek_name != ek_name {
        return Err(mismatch("the EK Name", r.ek_name, ek_name));
    }
    Ok(ActivatedAk {
        ak_name: ak.name().clone(),
        ek_public: ek,
    })
}

/// The start-up check of `quorate run`: every party's enrollment record
/// ([`check_record`]), required outside dev mode; in dev mode a record is
/// checked when one is listed. Returns the activated AK of each party that
/// has a record.
pub fn enrollment_records(
    cfg: &crate::config::Config,
) -> Result<std::collections::BTreeMap<PartyId, ActivatedAk>, RecordError> {
    let mut out = std::collections::BTreeMap::new();
    for (index, p) in cfg.file.cluster.parties.iter().enumerate() {
        let party = PartyId(p.id);
        let Some(record) = &p.enrollment_record else {
            if cfg.file.party.dev {
                continue;
            }
            return Err(RecordError::Missing {
                party,
                index,
                enrollment: p.enrollment.display().to_string(),
            });
        };
        let bytes =
            read(&p.enrollment).map_err(|source| RecordError::Unreadable { party, source })?;
        let e = Enrollment::from_json(&bytes).map_err(|m| RecordError::Unreadable {
            party,
            source: file_err(&p.enrollment)(m),
        })?;
        out.insert(party, check_record(record, &p.enrollment, &bytes, &e)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge_file() -> ChallengeFile {
        ChallengeFile {
            format: ENROLL_FORMAT,
            party_id: PartyId(2),
            ak_name: "000b01".into(),
            ek_name: "000c02".into(),
            credential_blob: "aa".into(),
            secret: "bb".into(),
        }
    }

    #[test]
    fn the_challenge_id_covers_every_field() {
        let base = challenge_file().id();
        let mut c = challenge_file();
        c.party_id = PartyId(3);
        assert_ne!(c.id(), base);
        let mut c = challenge_file();
        c.ak_name = "000b02".into();
        assert_ne!(c.id(), base);
        let mut c = challenge_file();
        c.secret = "bc".into();
        assert_ne!(c.id(), base);
        // Field boundaries are delimited.
        let mut c = challenge_file();
        c.credential_blob = "aab".into();
        c.secret = "b".into();
        assert_ne!(c.id(), base);
    }

    #[test]
    fn files_of_another_format_are_refused_with_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        let mut v = serde_json::to_value(challenge_file()).unwrap();
        v["format"] = serde_json::json!(7);
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = read_json::<ChallengeFile>(&p).unwrap_err().to_string();
        assert!(err.contains("format 7"), "{err}");
        write_json(&p, &challenge_file(), 0o644).unwrap();
        assert_eq!(read_json::<ChallengeFile>(&p).unwrap(), challenge_file());
    }
}
