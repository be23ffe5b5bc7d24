//! Verification of the TPM quote that signs an audit checkpoint (the
//! `<origin>/P<n>/tpm` line of a checkpoint's signed note).
//!
//! The issuer's TPM quoted its PCRs with qualifying data
//! `Checkpoint::quote_qualifying_data` (the checkpoint's hash), so one AK
//! signature binds the checkpoint and states which code the issuer ran when
//! it signed. [`verify_checkpoint_quote`] checks, with the issuer's enrolled
//! AK public area and a reference-value policy: the AK signature over the
//! TPMS_ATTEST, that it is a quote, that its qualifying data is the
//! checkpoint's hash, that the PCR values supplied are the ones quoted (the
//! composite digest), and that those values are what the policy approves:
//! the measurement PCR holds the launch measurement of an allowed
//! executable under the expected configuration, and every required PCR its
//! reference value.
//!
//! Unlike joining evidence, a checkpoint quote carries no event log: the
//! approved PCR values are computed from the policy (reset value, extended
//! with an allowed executable digest, then the configuration digest, as the
//! host's measured launch does).

use crate::attest::{Attested, ClockInfo, TPM_ST_ATTEST_QUOTE};
use crate::checkpoint::CheckpointQuote;
use crate::eventlog::reset_value;
use crate::pcr::{extend_sha256, PcrIndex, PcrSelection};
use crate::policy::{Policy, PolicyError};
use crate::tpm::{KeyError, TpmtPublic};
use crate::verify::{check_pcr_digest, signed_attest, AttestationError, Hex, Structure};
use crate::wire::{AlgId, ParseError};
use quorate_types::Sha256Digest;

/// What a verified checkpoint quote establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointQuoteResult {
    /// The measurement PCR's quoted value.
    pub measurement: Sha256Digest,
    /// The allowed executable whose launch it is.
    pub executable: Sha256Digest,
    /// The TPM clock when it quoted.
    pub clock_info: ClockInfo,
}

/// Why a checkpoint quote does not verify. All but
/// [`CheckpointVerifyError::Policy`] and
/// [`CheckpointVerifyError::MalformedAkPublic`] mean the quote is forged,
/// corrupt, over another checkpoint, or made by unapproved code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointVerifyError {
    /// The verifier's policy is unusable (a local configuration fault).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The enrolled AK public area does not parse (check the enrollment).
    #[error("the enrolled AK public area is malformed: {0}")]
    MalformedAkPublic(ParseError),
    /// The enrolled AK is not a P-256 signing key.
    #[error("the enrolled AK is not an ECC P-256 key: {0}")]
    AkKeyType(KeyError),
    /// The TPMS_ATTEST or its signature is malformed, not a quote, or not
    /// signed by the AK.
    #[error("{0}")]
    Attest(AttestationError),
    /// The quote signs another checkpoint.
    #[error("the quote's qualifying data {found} is not this checkpoint's hash {expected}: it signs another checkpoint")]
    QualifyingDataMismatch {
        /// The checkpoint's hash.
        expected: Hex,
        /// What the quote carries.
        found: Hex,
    },
    /// The quote does not select exactly the SHA-256 PCRs supplied.
    #[error("the quote selects {found:?}; the supplied PCR values are for {supplied:?}")]
    SelectionMismatch {
        /// The quote's selection.
        found: PcrSelection,
        /// The supplied PCRs.
        supplied: Vec<PcrIndex>,
    },
    /// The supplied PCR values are not the quoted ones.
    #[error("the supplied PCR values hash to {expected}, the quote signs {found}: they are not the quoted values")]
    PcrDigestMismatch {
        /// Composite digest of the supplied values.
        expected: Hex,
        /// The quote's PCR digest.
        found: Hex,
    },
    /// A PCR the policy needs is not quoted.
    #[error("PCR {0} is not quoted; the policy needs it")]
    PcrMissing(PcrIndex),
    /// The measurement PCR holds no approved launch measurement.
    #[error("quoted PCR {pcr} = {found} is not the launch measurement of any allowed executable under the expected configuration")]
    MeasurementNotApproved {
        /// The PCR.
        pcr: PcrIndex,
        /// Its quoted value.
        found: Sha256Digest,
    },
    /// The configuration PCR (when separate) holds another configuration.
    #[error("quoted configuration PCR {pcr} = {found}, the policy expects {expected}")]
    ConfigPcrMismatch {
        /// The PCR.
        pcr: PcrIndex,
        /// Expected.
        expected: Sha256Digest,
        /// Quoted.
        found: Sha256Digest,
    },
    /// A required platform PCR differs from its reference value.
    #[error("quoted PCR {pcr} = {found}, the policy requires {expected}")]
    RequiredPcrMismatch {
        /// The PCR.
        pcr: PcrIndex,
        /// Required.
        expected: Sha256Digest,
        /// Quoted.
        found: Sha256Digest,
    },
}

/// The measurement PCR value the host's measured launch produces for
/// `executable` under `policy` (with the configuration in the same PCR
/// unless the policy keeps it apart).
pub fn approved_measurement(policy: &Policy, executable: &Sha256Digest) -> Sha256Digest {
    let mpcr = policy.measurement_pcr;
    let v = extend_sha256(&reset_value(mpcr), executable);
    if policy.config_pcr() == mpcr {
        extend_sha256(&v, &policy.expected_config.0)
    } else {
        v
    }
}

/// Verifies a checkpoint's TPM quote ([`CheckpointQuote::decode`] of the
/// `/tpm` line's signature bytes): the TPMS_ATTEST, its AK signature and
/// the PCR values it covers, made by the AK whose TPMT_PUBLIC is
/// `ak_public` (from the issuer's enrollment), over `qualifying_data`
/// (`Checkpoint::quote_qualifying_data`), against `policy`.
pub fn verify_checkpoint_quote(
    ak_public: &[u8],
    quote: &CheckpointQuote,
    qualifying_data: &Sha256Digest,
    policy: &Policy,
) -> Result<CheckpointQuoteResult, CheckpointVerifyError> {
    use CheckpointVerifyError as E;
    policy.check()?;
    let clock_info = verify_checkpoint_quote_signature(ak_public, quote, qualifying_data)?;
    let pcr_values = quote.pcr_values.as_slice();
    let quoted = |pcr: PcrIndex| {
        pcr_values
            .iter()
            .find(|v| v.index == pcr)
            .map(|v| v.value)
            .ok_or(E::PcrMissing(pcr))
    };
    let mpcr = policy.measurement_pcr;
    let measurement = quoted(mpcr)?;
    let executable = policy
        .allowed_executables
        .iter()
        .map(|e| e.0)
        .find(|e| approved_measurement(policy, e) == measurement)
        .ok_or(E::MeasurementNotApproved {
            pcr: mpcr,
            found: measurement,
        })?;
    let cpcr = policy.config_pcr();
    if cpcr != mpcr {
        let expected = extend_sha256(&reset_value(cpcr), &policy.expected_config.0);
        let found = quoted(cpcr)?;
        if found != expected {
            return Err(E::ConfigPcrMismatch {
                pcr: cpcr,
                expected,
                found,
            });
        }
    }
    for req in &policy.required_pcrs {
        let found = quoted(req.index)?;
        if found != req.value.0 {
            return Err(E::RequiredPcrMismatch {
                pcr: req.index,
                expected: req.value.0,
                found,
            });
        }
    }
    Ok(CheckpointQuoteResult {
        measurement,
        executable,
        clock_info,
    })
}

/// The part of [`verify_checkpoint_quote`] that needs no reference policy:
/// the AK (TPMT_PUBLIC `ak_public`, a P-256 key) signed a TPM-generated
/// quote over `qualifying_data`, and the supplied PCR values are exactly the
/// quoted SHA-256 slots. It says nothing about *which* code ran: only a
/// daemon without a reference policy (dev mode) relies on it alone.
/// Returns the quote's clock.
pub fn verify_checkpoint_quote_signature(
    ak_public: &[u8],
    quote: &CheckpointQuote,
    qualifying_data: &Sha256Digest,
) -> Result<ClockInfo, CheckpointVerifyError> {
    use CheckpointVerifyError as E;
    let pcr_values = quote.pcr_values.as_slice();
    let quote = &quote.quote;
    let ak = TpmtPublic::parse(ak_public).map_err(E::MalformedAkPublic)?;
    ak.ecc_p256_point().map_err(E::AkKeyType)?;
    let attest =
        signed_attest(&ak, &quote.attest, &quote.signature, Structure::Quote).map_err(E::Attest)?;
    let Attested::Quote {
        pcr_select,
        pcr_digest,
    } = &attest.attested
    else {
        return Err(E::Attest(AttestationError::WrongAttestType {
            which: Structure::Quote,
            expected: TPM_ST_ATTEST_QUOTE,
            found: attest.attest_type,
        }));
    };
    if !quorate_types::ct_eq(qualifying_data.as_bytes(), &attest.extra_data) {
        return Err(E::QualifyingDataMismatch {
            expected: Hex(qualifying_data.as_bytes().to_vec()),
            found: Hex(attest.extra_data.clone()),
        });
    }
    // The supplied values must be exactly the quoted SHA-256 slots, in order.
    let slots = pcr_select.slots();
    let supplied: Vec<PcrIndex> = pcr_values.iter().map(|v| v.index).collect();
    let same = slots.len() == supplied.len()
        && slots
            .iter()
            .zip(&supplied)
            .all(|((alg, i), s)| *alg == AlgId::SHA256 && i == s);
    if !same {
        return Err(E::SelectionMismatch {
            found: pcr_select.clone(),
            supplied,
        });
    }
    check_pcr_digest(pcr_values, pcr_digest)
        .map_err(|(expected, found)| E::PcrDigestMismatch { expected, found })?;
    Ok(attest.clock_info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::SignedAttest;
    use crate::pcr::PcrValue;
    use crate::soft::SoftTpm;
    use ring::rand::SystemRandom;

    fn cq(q: &SignedAttest, v: &[PcrValue]) -> CheckpointQuote {
        CheckpointQuote {
            quote: q.clone(),
            pcr_values: v.to_vec(),
        }
    }

    fn setup() -> (SoftTpm, Policy, SystemRandom) {
        let rng = SystemRandom::new();
        let exe = Sha256Digest::of(b"quorate executable");
        let cfg = Sha256Digest::of(b"cluster rules");
        let tpm = SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &exe, &cfg, 3).unwrap();
        let policy = Policy::new(vec![Sha256Digest::of(b"older"), exe], cfg);
        (tpm, policy, rng)
    }

    #[test]
    fn a_quote_over_the_checkpoint_hash_by_approved_code_verifies() {
        let (mut tpm, policy, rng) = setup();
        let qd = Sha256Digest::of(b"checkpoint note text");
        let (q, values) = tpm
            .quote(&rng, &policy.quoted_pcrs(), qd.as_bytes())
            .unwrap();
        let ak = tpm.ak_public.as_bytes().to_vec();
        let r = verify_checkpoint_quote(&ak, &cq(&q, &values), &qd, &policy).unwrap();
        assert_eq!(r.executable, Sha256Digest::of(b"quorate executable"));
        assert_eq!(r.clock_info, tpm.clock);
        assert_eq!(
            r.measurement,
            approved_measurement(&policy, &r.executable),
            "the soft TPM's launch and the policy's computation agree"
        );
    }

    #[test]
    fn each_forgery_is_refused_with_its_own_error() {
        let (mut tpm, policy, rng) = setup();
        let qd = Sha256Digest::of(b"checkpoint note text");
        let pcrs = policy.quoted_pcrs();
        let (q, values) = tpm.quote(&rng, &pcrs, qd.as_bytes()).unwrap();
        let ak = tpm.ak_public.as_bytes().to_vec();
        // Another checkpoint.
        let other = Sha256Digest::of(b"another checkpoint");
        assert!(matches!(
            verify_checkpoint_quote(&ak, &cq(&q, &values), &other, &policy),
            Err(CheckpointVerifyError::QualifyingDataMismatch { .. })
        ));
        // Another PCR value supplied than quoted.
        let mut lied = values.clone();
        lied[0].value = Sha256Digest::of(b"approved-looking");
        assert!(matches!(
            verify_checkpoint_quote(&ak, &cq(&q, &lied), &qd, &policy),
            Err(CheckpointVerifyError::PcrDigestMismatch { .. })
        ));
        // A quote over another PCR value (unapproved code), honestly reported.
        tpm.pcrs
            .insert(policy.measurement_pcr, Sha256Digest::of(b"other code"));
        let (q2, v2) = tpm.quote(&rng, &pcrs, qd.as_bytes()).unwrap();
        assert!(matches!(
            verify_checkpoint_quote(&ak, &cq(&q2, &v2), &qd, &policy),
            Err(CheckpointVerifyError::MeasurementNotApproved { .. })
        ));
        // Another AK.
        let (other_tpm, _, _) = setup();
        let other_ak = other_tpm.ak_public.as_bytes().to_vec();
        assert!(matches!(
            verify_checkpoint_quote(&other_ak, &cq(&q, &values), &qd, &policy),
            Err(CheckpointVerifyError::Attest(
                AttestationError::BadSignature { .. }
            ))
        ));
        // Garbage never panics.
        let junk = SignedAttest {
            attest: vec![0xff; 7],
            signature: vec![1],
        };
        assert!(verify_checkpoint_quote(&ak, &cq(&junk, &values), &qd, &policy).is_err());
        assert!(matches!(
            verify_checkpoint_quote(&[1, 2], &cq(&q, &values), &qd, &policy),
            Err(CheckpointVerifyError::MalformedAkPublic(_))
        ));
        // Fewer values than quoted.
        assert!(matches!(
            verify_checkpoint_quote(&ak, &cq(&q, &[]), &qd, &policy),
            Err(CheckpointVerifyError::SelectionMismatch { .. })
        ));
    }
}
