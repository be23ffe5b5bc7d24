//! Producing attestation evidence with the party's TPM: the quote of the
//! measurement PCR (and any other PCRs a policy asks for) with Quorate's
//! qualifying data, the event log, the AK and the vote key with its
//! certification. The attestation crate verifies it.

use std::fs;
use std::path::{Path, PathBuf};

use quorate_attestation::evidence::{qualifying_data, Evidence, Freshness, SignedAttest};
use quorate_attestation::pcr::{PcrIndex, PcrValue};
use quorate_attestation::tpm::TpmtPublic;
use quorate_firmware::types::Sha256Digest;

use crate::launch::EVENT_LOG_FILE;
use crate::tpm::{KeyRole, KeyStore, TpmError, TpmHandle};

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// A file of the data dir is missing or malformed.
    #[error("{}: {reason}", path.display())]
    DataDir {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Produces evidence for the party in `data_dir` (measured launch done, AK
/// set on `tpm`). `pcrs` lists the PCRs to quote besides the measurement
/// PCR (e.g. 0-7 and 10 when the verifier's policy requires them).
pub async fn produce_evidence(
    tpm: &TpmHandle,
    data_dir: &Path,
    measurement_pcr: PcrIndex,
    extra_pcrs: &[PcrIndex],
    freshness: &Freshness,
    tls_key_hash: &Sha256Digest,
) -> Result<Evidence, EvidenceError> {
    let store = KeyStore::new(data_dir);
    let vote = store.load(KeyRole::Vote)?;
    let ak = store.load(KeyRole::Ak)?;
    let vote_public = vote.tpmt_public()?;
    let vote_name = TpmtPublic::parse(&vote_public)
        .map_err(|e| EvidenceError::DataDir {
            path: store.dir().join("vote.pub"),
            reason: e.to_string(),
        })?
        .name()
        .clone();
    let log_path = data_dir.join(EVENT_LOG_FILE);
    let event_log = fs::read(&log_path).map_err(|e| EvidenceError::DataDir {
        path: log_path.clone(),
        reason: format!("{e} (run the measured launch first)"),
    })?;

    let (ek_certificate, ek_chain) = ek_certificates(data_dir)?;

    let mut pcrs: Vec<PcrIndex> = vec![measurement_pcr];
    pcrs.extend(extra_pcrs.iter().filter(|p| **p != measurement_pcr));
    pcrs.sort();
    pcrs.dedup();

    let certify = tpm.certify_vote_key(Vec::new()).await?;
    let qd = qualifying_data(freshness, tls_key_hash, &vote_name);
    let indices: Vec<u8> = pcrs.iter().map(|p| p.get()).collect();
    let quote = tpm.quote(indices, qd.0.to_vec()).await?;
    // The owner serialises TPM commands and nothing else extends these
    // PCRs, so the values read now are the ones quoted (the verifier
    // checks them against the quote's digest anyway).
    let mut pcr_values = Vec::with_capacity(pcrs.len());
    for p in &pcrs {
        pcr_values.push(PcrValue {
            index: *p,
            value: Sha256Digest(tpm.pcr_read(p.get()).await?),
        });
    }
    Ok(Evidence {
        quote: SignedAttest {
            attest: quote.attest,
            signature: quote.signature,
        },
        pcr_values,
        event_log,
        ak_public: ak.tpmt_public()?,
        ek_certificate: ek_certificate.map(serde_bytes::ByteBuf::from),
        ek_chain: ek_chain
            .into_iter()
            .map(serde_bytes::ByteBuf::from)
            .collect(),
        vote_key_public: vote_public,
        vote_key_certify: SignedAttest {
            attest: certify.attest,
            signature: certify.signature,
        },
        tls_key_hash: *tls_key_hash,
    })
}

/// The EK certificate and its intermediates recorded in the party's
/// enrollment (read from the TPM's NV at `quorate init`); none for a party
/// whose enrollment records no EK (provisioned before EK certificates were
/// read, or without an enrollment file).
fn ek_certificates(data_dir: &Path) -> Result<crate::init::EkCertificates, EvidenceError> {
    let path = data_dir.join(crate::init::ENROLLMENT_FILE);
    if !path.exists() {
        return Ok((None, Vec::new()));
    }
    let bad = |reason: String| EvidenceError::DataDir {
        path: path.clone(),
        reason,
    };
    let e = crate::init::Enrollment::load(&path).map_err(|e| bad(e.to_string()))?;
    match &e.ek {
        None => Ok((None, Vec::new())),
        Some(ek) => ek.certificates().map_err(|e| bad(e.to_string())),
    }
}
