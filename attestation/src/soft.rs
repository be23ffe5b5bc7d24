//! A software stand-in for a party's TPM, producing evidence with the exact
//! TPM formats: for unit tests, fuzz seeds and benches, never for
//! production (its keys live in memory). Randomness comes in as an argument.
//!
//! It performs Quorate's measured launch into its own PCRs and event log,
//! holds an AK (restricted, fixedTPM, fixedParent, sensitiveDataOrigin,
//! sign, noDA) and a vote key bound by PolicyPCR to the measurement, and
//! quotes and certifies with the AK as TPM2_Quote and TPM2_Certify would.

use crate::attest::{Attested, ClockInfo, TpmsAttest, TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_QUOTE};
use crate::eventlog::{EventLog, LogEvent};
use crate::evidence::{qualifying_data, Evidence, Freshness, SignedAttest};
use crate::pcr::{
    extend_sha256, measurement_policy, pcr_composite_digest, PcrIndex, PcrSelection, PcrValue,
};
use crate::tpm::{ObjectAttributes, TpmName, TpmSignature, TpmtPublic};
use quorate_types::{PublicKey, Sha256Digest, Signature};
use ring::rand::SecureRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::collections::BTreeMap;

/// Why the software TPM could not act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SoftTpmError {
    /// Key generation or signing failed in ring.
    #[error("software TPM crypto failure: {0}")]
    Crypto(&'static str),
    /// A public area could not be built.
    #[error("software TPM public area: {0}")]
    Public(#[from] crate::wire::ParseError),
}

/// AK attributes a real Quorate AK has.
pub const SOFT_AK_ATTRIBUTES: ObjectAttributes = ObjectAttributes(
    ObjectAttributes::FIXED_TPM.0
        | ObjectAttributes::FIXED_PARENT.0
        | ObjectAttributes::SENSITIVE_DATA_ORIGIN.0
        | ObjectAttributes::USER_WITH_AUTH.0
        | ObjectAttributes::NO_DA.0
        | ObjectAttributes::RESTRICTED.0
        | ObjectAttributes::SIGN.0,
);
/// Vote key attributes a real Quorate vote key has.
pub const SOFT_VOTE_ATTRIBUTES: ObjectAttributes = ObjectAttributes(
    ObjectAttributes::FIXED_TPM.0
        | ObjectAttributes::FIXED_PARENT.0
        | ObjectAttributes::SENSITIVE_DATA_ORIGIN.0
        | ObjectAttributes::NO_DA.0
        | ObjectAttributes::SIGN.0,
);

/// A P-256 key pair generated from `rng`, with its uncompressed point.
pub fn generate_p256(rng: &dyn SecureRandom) -> Result<(EcdsaKeyPair, PublicKey), SoftTpmError> {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
        .map_err(|_| SoftTpmError::Crypto("P-256 key generation"))?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng)
        .map_err(|_| SoftTpmError::Crypto("P-256 key decoding"))?;
    let point: [u8; 65] = kp
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| SoftTpmError::Crypto("P-256 point size"))?;
    Ok((kp, PublicKey(point)))
}

/// ECDSA P-256 SHA-256 signature as a TPMT_SIGNATURE.
pub fn sign_tpm(
    kp: &EcdsaKeyPair,
    rng: &dyn SecureRandom,
    message: &[u8],
) -> Result<Vec<u8>, SoftTpmError> {
    let sig = kp
        .sign(rng, message)
        .map_err(|_| SoftTpmError::Crypto("ECDSA signing"))?;
    let fixed: [u8; 64] = sig
        .as_ref()
        .try_into()
        .map_err(|_| SoftTpmError::Crypto("signature size"))?;
    Ok(TpmSignature::from_ecdsa_p256(&Signature(fixed)).marshal())
}

/// A software TPM after Quorate's measured launch.
pub struct SoftTpm {
    ak: EcdsaKeyPair,
    /// The AK's public area.
    pub ak_public: TpmtPublic,
    /// The AK's qualified name as reported in qualifiedSigner (a stand-in:
    /// the real value depends on the EK's hierarchy).
    pub qualified_signer: TpmName,
    /// The vote key's public area (its private half is never needed here).
    pub vote_public: TpmtPublic,
    /// SHA-256 bank PCR values.
    pub pcrs: BTreeMap<PcrIndex, Sha256Digest>,
    /// The event log of the launch.
    pub log: EventLog,
    /// The TPM clock.
    pub clock: ClockInfo,
    /// Firmware version reported in attestations.
    pub firmware_version: u64,
}

impl SoftTpm {
    /// Boots a software TPM (resetCount `reset_count`), measures
    /// `executable` then `config` into `pcr`, makes an AK and a vote key
    /// bound to the resulting PCR value.
    pub fn launch(
        rng: &dyn SecureRandom,
        pcr: PcrIndex,
        executable: &Sha256Digest,
        config: &Sha256Digest,
        reset_count: u32,
    ) -> Result<SoftTpm, SoftTpmError> {
        let mut log = EventLog::new_sha256();
        log.events.push(LogEvent::boot(reset_count));
        log.events.push(LogEvent::executable(pcr, executable));
        log.events.push(LogEvent::config(pcr, config));
        let mut pcrs = BTreeMap::new();
        let v = extend_sha256(&extend_sha256(&Sha256Digest::default(), executable), config);
        pcrs.insert(pcr, v);
        let (ak, ak_point) = generate_p256(rng)?;
        let ak_public = TpmtPublic::new_p256_signing(SOFT_AK_ATTRIBUTES, &[], &ak_point)?;
        let (_, vote_point) = generate_p256(rng)?;
        let policy = measurement_policy(pcr, &v);
        let vote_public =
            TpmtPublic::new_p256_signing(SOFT_VOTE_ATTRIBUTES, policy.as_bytes(), &vote_point)?;
        let qualified_signer =
            TpmName::compute(crate::wire::AlgId::SHA256, ak_public.name().as_bytes())
                .ok_or(SoftTpmError::Crypto("qualified name"))?;
        Ok(SoftTpm {
            ak,
            ak_public,
            qualified_signer,
            vote_public,
            pcrs,
            log,
            clock: ClockInfo {
                clock: 1_000,
                reset_count,
                restart_count: 0,
                safe: true,
            },
            firmware_version: 0x2023_0001,
        })
    }

    /// Replaces the AK with a fresh one carrying `attributes`.
    pub fn replace_ak(
        &mut self,
        rng: &dyn SecureRandom,
        attributes: ObjectAttributes,
    ) -> Result<(), SoftTpmError> {
        let (ak, point) = generate_p256(rng)?;
        self.ak = ak;
        self.ak_public = TpmtPublic::new_p256_signing(attributes, &[], &point)?;
        Ok(())
    }

    /// Replaces the vote key with a fresh one with `attributes` and `auth_policy`.
    pub fn replace_vote_key(
        &mut self,
        rng: &dyn SecureRandom,
        attributes: ObjectAttributes,
        auth_policy: &[u8],
    ) -> Result<(), SoftTpmError> {
        let (_, point) = generate_p256(rng)?;
        self.vote_public = TpmtPublic::new_p256_signing(attributes, auth_policy, &point)?;
        Ok(())
    }

    /// Signs `attest` with the AK, as the TPM signs what it generated.
    pub fn sign_attest(
        &self,
        rng: &dyn SecureRandom,
        attest: &TpmsAttest,
    ) -> Result<SignedAttest, SoftTpmError> {
        let bytes = attest.marshal();
        let signature = sign_tpm(&self.ak, rng, &bytes)?;
        Ok(SignedAttest {
            attest: bytes,
            signature,
        })
    }

    /// TPM2_Quote over the SHA-256 `pcrs` with `extra_data`; advances the clock.
    pub fn quote(
        &mut self,
        rng: &dyn SecureRandom,
        pcrs: &[PcrIndex],
        extra_data: &[u8],
    ) -> Result<(SignedAttest, Vec<PcrValue>), SoftTpmError> {
        self.clock.clock += 10;
        let selection = PcrSelection::sha256(pcrs);
        let values: Vec<PcrValue> = selection
            .slots()
            .into_iter()
            .map(|(_, index)| PcrValue {
                index,
                value: self.pcrs.get(&index).copied().unwrap_or_default(),
            })
            .collect();
        let digest = pcr_composite_digest(&values.iter().map(|v| v.value).collect::<Vec<_>>());
        let attest = TpmsAttest::new(
            TPM_ST_ATTEST_QUOTE,
            self.qualified_signer.clone(),
            extra_data.to_vec(),
            self.clock,
            self.firmware_version,
            Attested::Quote {
                pcr_select: selection,
                pcr_digest: digest.as_bytes().to_vec(),
            },
        );
        Ok((self.sign_attest(rng, &attest)?, values))
    }

    /// TPM2_Certify of `object` by the AK.
    pub fn certify(
        &mut self,
        rng: &dyn SecureRandom,
        object: &TpmtPublic,
    ) -> Result<SignedAttest, SoftTpmError> {
        self.clock.clock += 10;
        let attest = TpmsAttest::new(
            TPM_ST_ATTEST_CERTIFY,
            self.qualified_signer.clone(),
            Vec::new(),
            self.clock,
            self.firmware_version,
            Attested::Certify {
                name: object.name().clone(),
                qualified_name: object.name().clone(),
            },
        );
        self.sign_attest(rng, &attest)
    }

    /// Complete evidence: quote of `pcrs` with Quorate's qualifying data,
    /// the log, the AK, the vote key and its certification.
    pub fn evidence(
        &mut self,
        rng: &dyn SecureRandom,
        freshness: &Freshness,
        tls_key_hash: &Sha256Digest,
        pcrs: &[PcrIndex],
    ) -> Result<Evidence, SoftTpmError> {
        let vote_public = self.vote_public.clone();
        let vote_key_certify = self.certify(rng, &vote_public)?;
        let qd = qualifying_data(freshness, tls_key_hash, vote_public.name());
        let (quote, pcr_values) = self.quote(rng, pcrs, qd.as_bytes())?;
        Ok(Evidence {
            quote,
            pcr_values,
            event_log: self.log.to_bytes(),
            ak_public: self.ak_public.as_bytes().to_vec(),
            ek_certificate: None,
            ek_chain: Vec::new(),
            vote_key_public: vote_public.as_bytes().to_vec(),
            vote_key_certify,
            tls_key_hash: *tls_key_hash,
        })
    }
}
