//! The verifier: every check a peer applies to another party's evidence
//! before trusting its vote key (DESIGN.md "Trust model", issue 3 point 4).
//!
//! Checks, in order; the first failure is returned, each as its own
//! [`AttestationError`] variant naming what was expected and what was found:
//! 1. the policy is usable;
//! 2. the AK public parses, is ECC P-256, is the enrolled AK (when pinned) and
//!    has restricted, fixedTPM, fixedParent, sensitiveDataOrigin and sign set,
//!    decrypt clear (noDA when the policy asks);
//! 3. the quote is a TPM-made (magic) TPM_ST_ATTEST_QUOTE, signed by the AK;
//! 4. the vote key public parses (and is the enrolled one, when pinned);
//! 5. the quote's qualifying data is
//!    [`qualifying_data`](crate::evidence::qualifying_data) of the expected
//!    freshness, the TLS key hash and the vote key's Name;
//! 6. the quote covers exactly the policy's PCRs in the SHA-256 bank, the
//!    supplied PCR values match that selection and hash to its pcrDigest;
//! 7. the event log parses and replays (SHA-256 bank) to the quoted values
//!    of the measurement and configuration PCRs;
//! 8. each Quorate event's digest equals its payload; the measurement PCR
//!    holds exactly "executable" then (in the same or the configuration PCR)
//!    "config", nothing else; the boot record names the quote's resetCount;
//! 9. the executable digest is approved and the configuration is expected;
//! 10. required platform PCRs hold their reference values;
//! 11. the vote key's TPM2_Certify is a TPM-made certify by the same AK,
//!     over the vote key's Name; the vote key is a P-256 signing key with
//!     fixedTPM, fixedParent, sensitiveDataOrigin, sign, and neither
//!     userWithAuth, decrypt nor restricted; its authPolicy is PolicyPCR over
//!     the measurement PCR's (verified) value;
//! 12. the EK certificate chains to a configured root (required or not, per
//!     policy);
//! 13. the TPM clock has moved forward since this verifier's last success
//!     for this party (resetCount, then restartCount, then clock).
//!
//! On success the verifier state records the quote's clock.

use crate::attest::{
    Attested, ClockInfo, TpmsAttest, TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY,
    TPM_ST_ATTEST_QUOTE,
};
use crate::ekcert::{verify_ek_chain, EkChainInfo, EkError};
use crate::eventlog::{
    EventLog, EventType, QuorateEvent, ReplayError, SpecIdError, TAG_CONFIG, TAG_EXECUTABLE,
};
use crate::evidence::{qualifying_data, Evidence, Freshness};
use crate::pcr::{measurement_policy, pcr_composite_digest, PcrIndex, PcrSelection, PcrValue};
use crate::policy::{Policy, PolicyError};
use crate::tpm::{
    verify_ecdsa_p256, KeyError, ObjectAttributes, SignatureError, TpmName, TpmSignature,
    TpmtPublic,
};
use crate::wire::{to_hex, AlgId, ParseError};
use quorate_types::{PublicKey, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Attributes an AK must have.
pub const AK_REQUIRED: ObjectAttributes = ObjectAttributes(
    ObjectAttributes::RESTRICTED.0
        | ObjectAttributes::FIXED_TPM.0
        | ObjectAttributes::FIXED_PARENT.0
        | ObjectAttributes::SENSITIVE_DATA_ORIGIN.0
        | ObjectAttributes::SIGN.0,
);
/// Attributes an AK must not have.
pub const AK_FORBIDDEN: ObjectAttributes = ObjectAttributes::DECRYPT;
/// Attributes a vote key must have.
pub const VOTE_KEY_REQUIRED: ObjectAttributes = ObjectAttributes(
    ObjectAttributes::FIXED_TPM.0
        | ObjectAttributes::FIXED_PARENT.0
        | ObjectAttributes::SENSITIVE_DATA_ORIGIN.0
        | ObjectAttributes::SIGN.0,
);
/// Attributes a vote key must not have: userWithAuth would let the
/// authValue bypass the PCR policy.
pub const VOTE_KEY_FORBIDDEN: ObjectAttributes = ObjectAttributes(
    ObjectAttributes::USER_WITH_AUTH.0
        | ObjectAttributes::DECRYPT.0
        | ObjectAttributes::RESTRICTED.0,
);

/// Which signed structure a failure concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// The PCR quote.
    Quote,
    /// The vote key's certification.
    Certify,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Structure::Quote => "quote",
            Structure::Certify => "vote-key certification",
        })
    }
}

/// Hex of a byte string, for messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(empty)")
        } else {
            f.write_str(&to_hex(&self.0))
        }
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why evidence was rejected. All but [`AttestationError::Policy`] are the
/// peer's fault (bad, stale or forged evidence); the peer should be
/// excluded and the message recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The verifier's own policy is unusable (local configuration fault).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The AK's TPMT_PUBLIC does not parse.
    #[error("AK public area is malformed: {0}")]
    MalformedAkPublic(ParseError),
    /// The AK is not an ECC P-256 key.
    #[error("AK is not an ECDSA P-256 key: {0}")]
    AkKeyType(KeyError),
    /// The AK is not the one enrolled for this party.
    #[error("AK is not the enrolled one: expected Name {expected}, found {found}")]
    AkNotEnrolled {
        /// The enrolled AK Name.
        expected: TpmName,
        /// The evidence's AK Name.
        found: TpmName,
    },
    /// The AK lacks required attributes or has forbidden ones.
    #[error("AK attributes {found}: must have {required}, must not have {forbidden}")]
    AkAttributes {
        /// What the AK has.
        found: ObjectAttributes,
        /// What it must have.
        required: ObjectAttributes,
        /// What it must not have.
        forbidden: ObjectAttributes,
    },
    /// A TPMS_ATTEST does not parse.
    #[error("{which} TPMS_ATTEST is malformed: {error}")]
    MalformedAttest {
        /// Quote or certify.
        which: Structure,
        /// The parse error.
        error: ParseError,
    },
    /// A TPMS_ATTEST was not made by a TPM (magic is not TPM_GENERATED_VALUE).
    #[error(
        "{which} magic: expected {:#010x} (TPM_GENERATED_VALUE), found {found:#010x}",
        TPM_GENERATED_VALUE
    )]
    BadMagic {
        /// Quote or certify.
        which: Structure,
        /// The magic found.
        found: u32,
    },
    /// A TPMS_ATTEST has the wrong type.
    #[error("{which} type: expected {expected:#06x}, found {found:#06x}")]
    WrongAttestType {
        /// Quote or certify.
        which: Structure,
        /// The type needed.
        expected: u16,
        /// The type found.
        found: u16,
    },
    /// A TPMT_SIGNATURE does not parse.
    #[error("{which} signature is malformed: {error}")]
    MalformedSignature {
        /// Quote or certify.
        which: Structure,
        /// The parse error.
        error: ParseError,
    },
    /// A signature does not verify under the AK.
    #[error("{which} signature by AK {ak}: {error}")]
    BadSignature {
        /// Quote or certify.
        which: Structure,
        /// The AK's Name.
        ak: TpmName,
        /// Why.
        error: SignatureError,
    },
    /// The vote key's TPMT_PUBLIC does not parse.
    #[error("vote key public area is malformed: {0}")]
    MalformedVoteKeyPublic(ParseError),
    /// The vote key is not the one enrolled for this party.
    #[error("vote key is not the enrolled one: expected Name {expected}, found {found}")]
    VoteKeyNotEnrolled {
        /// The enrolled Name.
        expected: TpmName,
        /// The evidence's Name.
        found: TpmName,
    },
    /// The quote's qualifying data is not the expected one (stale or foreign
    /// nonce or epoch, another TLS key or vote key).
    #[error("quote qualifying data: expected {expected} (from the expected nonce/epoch, the TLS key hash {tls_key_hash} and the vote key Name), found {found}")]
    QualifyingDataMismatch {
        /// What it should be.
        expected: Hex,
        /// What the quote carries.
        found: Hex,
        /// The TLS key hash it was computed with.
        tls_key_hash: Sha256Digest,
    },
    /// The quote selects another bank or other PCRs than the policy's.
    #[error("quote PCR selection: expected SHA-256 PCRs {expected:?}, found {found:?}")]
    PcrSelectionMismatch {
        /// The selection the policy needs.
        expected: Vec<PcrIndex>,
        /// What the quote selects.
        found: PcrSelection,
    },
    /// The PCR values in the evidence do not match the quote's selection.
    #[error("PCR values supplied for {found:?}, but the quote selects {expected:?}")]
    PcrValuesMismatch {
        /// The PCRs the quote selects.
        expected: Vec<PcrIndex>,
        /// The PCRs values were supplied for.
        found: Vec<PcrIndex>,
    },
    /// The supplied PCR values do not hash to the quote's pcrDigest.
    #[error("quote pcrDigest: the supplied PCR values hash to {expected}, the quote says {found}")]
    PcrDigestMismatch {
        /// Hash of the supplied values.
        expected: Hex,
        /// The quote's pcrDigest.
        found: Hex,
    },
    /// The event log does not parse.
    #[error("event log is malformed: {0}")]
    MalformedEventLog(ParseError),
    /// The event log's Spec ID header is not exactly the one Quorate's
    /// measured launch writes (an unmeasured byte was changed).
    #[error("event log header: {0}")]
    EventLogHeader(SpecIdError),
    /// The event log cannot be replayed.
    #[error("event log: {0}")]
    EventLogReplay(ReplayError),
    /// A quoted PCR does not equal the replay of the log.
    #[error("{pcr}: the event log replays to {replayed}, the quote holds {quoted}")]
    PcrReplayMismatch {
        /// The PCR.
        pcr: PcrIndex,
        /// The replayed value.
        replayed: Sha256Digest,
        /// The quoted value.
        quoted: Sha256Digest,
    },
    /// A Quorate event's digest is not the digest its data records.
    #[error("event {index}: its SHA-256 digest is {digest}, but its data records {data}")]
    EventDigestMismatch {
        /// Position after the header.
        index: usize,
        /// The digest extended.
        digest: Hex,
        /// The digest in its data.
        data: Hex,
    },
    /// A Quorate-tagged event is malformed.
    #[error("event {index}: malformed Quorate event ({reason})")]
    MalformedEvent {
        /// Position after the header.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An event that does not belong where it is.
    #[error("event {index} ({event_type} in PCR {pcr}): expected {expected}")]
    UnexpectedEvent {
        /// Position after the header.
        index: usize,
        /// Its PCR.
        pcr: u32,
        /// Its type.
        event_type: EventType,
        /// What was expected there.
        expected: &'static str,
    },
    /// A required event is absent.
    #[error("event log lacks the {what} event")]
    MissingEvent {
        /// Which event.
        what: &'static str,
    },
    /// The log belongs to another TPM boot than the quote.
    #[error("event log was recorded in TPM boot resetCount={log}, the quote was made in resetCount={quote}")]
    LogFromAnotherBoot {
        /// The log's boot record.
        log: u32,
        /// The quote's resetCount.
        quote: u32,
    },
    /// The measured executable is not approved.
    #[error("executable digest {found} is not approved (allowed: {allowed:?})")]
    ExecutableNotAllowed {
        /// The measured digest.
        found: Sha256Digest,
        /// The approved digests.
        allowed: Vec<Sha256Digest>,
    },
    /// The measured configuration is not the expected one.
    #[error("configuration digest: expected {expected}, found {found}")]
    ConfigMismatch {
        /// The policy's digest.
        expected: Sha256Digest,
        /// The measured digest.
        found: Sha256Digest,
    },
    /// A platform PCR does not hold its required value.
    #[error("{pcr}: expected {expected}, quoted {found}")]
    RequiredPcrMismatch {
        /// The PCR.
        pcr: PcrIndex,
        /// The policy's value.
        expected: Sha256Digest,
        /// The quoted value.
        found: Sha256Digest,
    },
    /// The certify was signed by another key than the quote.
    #[error("vote-key certification signer: expected {expected} (the quote's), found {found}")]
    CertifySignerMismatch {
        /// The quote's qualifiedSigner.
        expected: TpmName,
        /// The certify's qualifiedSigner.
        found: TpmName,
    },
    /// The certify is about another object.
    #[error("vote-key certification covers Name {found}, expected the vote key's {expected}")]
    CertifiedNameMismatch {
        /// The vote key's Name.
        expected: TpmName,
        /// The certified Name.
        found: TpmName,
    },
    /// The vote key is not a P-256 key.
    #[error("vote key is not an ECDSA P-256 key: {0}")]
    VoteKeyType(KeyError),
    /// The vote key's attributes are wrong.
    #[error("vote key attributes {found}: must have {required}, must not have {forbidden}")]
    VoteKeyAttributes {
        /// What it has.
        found: ObjectAttributes,
        /// What it must have.
        required: ObjectAttributes,
        /// What it must not have.
        forbidden: ObjectAttributes,
    },
    /// The vote key's authPolicy is not PolicyPCR over the measurement.
    #[error("vote key authPolicy: expected {expected} (PolicyPCR over {pcr} = {measurement}), found {found}")]
    VoteKeyPolicyMismatch {
        /// The expected policy digest.
        expected: Hex,
        /// The key's authPolicy.
        found: Hex,
        /// The measurement PCR.
        pcr: PcrIndex,
        /// Its verified value.
        measurement: Sha256Digest,
    },
    /// The policy requires an EK certificate and the evidence has none.
    #[error("the policy requires an EK certificate chaining to a configured root; the evidence carries none")]
    EkCertificateMissing,
    /// The EK certificate chain is not valid.
    #[error("EK certificate: {0}")]
    EkCertificate(EkError),
    /// The TPM's resetCount went backwards.
    #[error("TPM resetCount went backwards: last seen {last}, now {found}")]
    ResetCountRolledBack {
        /// Last accepted.
        last: u32,
        /// In this quote.
        found: u32,
    },
    /// The TPM's restartCount went backwards within one boot.
    #[error("TPM restartCount went backwards within resetCount {reset_count}: last seen {last}, now {found}")]
    RestartCountRolledBack {
        /// The boot.
        reset_count: u32,
        /// Last accepted.
        last: u32,
        /// In this quote.
        found: u32,
    },
    /// The TPM clock went backwards within one boot.
    #[error("TPM clock went backwards: last seen {last} ms, now {found} ms")]
    ClockRolledBack {
        /// Last accepted.
        last: u64,
        /// In this quote.
        found: u64,
    },
    /// The quote was made at the same TPM time as one already accepted.
    #[error("quote replayed: its TPM clock ({clock}) equals the last accepted quote's")]
    QuoteReplayed {
        /// Its clock info.
        clock: ClockInfo,
    },
}

/// What a verifier remembers about one party between verifications.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierState {
    /// The AK Name enrolled for this party (bound to its EK by credential
    /// activation); evidence with another AK is rejected. `None` accepts any
    /// AK that passes the other checks (trust on first use).
    pub enrolled_ak: Option<TpmName>,
    /// The vote key Name enrolled for this party, if pinned.
    pub enrolled_vote_key: Option<TpmName>,
    /// The clock info of the last evidence accepted.
    pub last_clock: Option<ClockInfo>,
}

/// What accepted evidence establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationResult {
    /// The measurement PCR.
    pub measurement_pcr: PcrIndex,
    /// Its quoted (and replayed) value.
    pub measurement: Sha256Digest,
    /// SHA-256 of the event log bytes.
    pub event_log_digest: Sha256Digest,
    /// The measured executable's SHA-256.
    pub executable: Sha256Digest,
    /// The measured configuration digest.
    pub config: Sha256Digest,
    /// The AK's Name.
    pub ak_name: TpmName,
    /// The vote key's Name.
    pub vote_key_name: TpmName,
    /// The vote key's public point, for verifying its votes.
    pub vote_key: PublicKey,
    /// The TPM clock when it quoted.
    pub clock_info: ClockInfo,
    /// The TPM firmware version.
    pub firmware_version: u64,
    /// The EK chain, if the evidence carried one and roots are configured.
    pub ek_chain: Option<EkChainInfo>,
    /// Whether the AK was the enrolled one ([`VerifierState::enrolled_ak`]).
    /// When false the AK's attributes are unproven claims: nothing signs
    /// an AK's public area, only its enrolled Name binds it.
    pub ak_pinned: bool,
}

/// Verifies `evidence` against `freshness`, `policy` and what this verifier
/// saw last (`state`, updated on success). Certificate validity periods are
/// not checked; see [`verify_at`].
pub fn verify(
    evidence: &Evidence,
    freshness: &Freshness,
    policy: &Policy,
    state: &mut VerifierState,
) -> Result<AttestationResult, AttestationError> {
    verify_at(evidence, freshness, policy, state, None)
}

/// [`verify`], also checking every EK chain certificate is valid at
/// `now_unix` (seconds) when given.
pub fn verify_at(
    evidence: &Evidence,
    freshness: &Freshness,
    policy: &Policy,
    state: &mut VerifierState,
    now_unix: Option<i64>,
) -> Result<AttestationResult, AttestationError> {
    use AttestationError as E;
    policy.check()?;

    // 2. The AK.
    let ak = TpmtPublic::parse(&evidence.ak_public).map_err(E::MalformedAkPublic)?;
    ak.ecc_p256_point().map_err(E::AkKeyType)?;
    if let Some(expected) = &state.enrolled_ak {
        if expected != ak.name() {
            return Err(E::AkNotEnrolled {
                expected: expected.clone(),
                found: ak.name().clone(),
            });
        }
    }
    let mut ak_required = AK_REQUIRED;
    if policy.require_ak_no_da {
        ak_required = ak_required | ObjectAttributes::NO_DA;
    }
    check_attributes(ak.object_attributes(), ak_required, AK_FORBIDDEN).map_err(
        |(found, required, forbidden)| E::AkAttributes {
            found,
            required,
            forbidden,
        },
    )?;

    // 3. The quote.
    let quote = signed_attest(
        &ak,
        &evidence.quote.attest,
        &evidence.quote.signature,
        Structure::Quote,
    )?;
    let Attested::Quote {
        pcr_select,
        pcr_digest,
    } = &quote.attested
    else {
        return Err(E::WrongAttestType {
            which: Structure::Quote,
            expected: TPM_ST_ATTEST_QUOTE,
            found: quote.attest_type,
        });
    };

    // 4. The vote key.
    let vote = TpmtPublic::parse(&evidence.vote_key_public).map_err(E::MalformedVoteKeyPublic)?;
    if let Some(expected) = &state.enrolled_vote_key {
        if expected != vote.name() {
            return Err(E::VoteKeyNotEnrolled {
                expected: expected.clone(),
                found: vote.name().clone(),
            });
        }
    }

    // 5. Qualifying data.
    let expected_qd = qualifying_data(freshness, &evidence.tls_key_hash, vote.name());
    if !quorate_types::ct_eq(expected_qd.as_bytes(), &quote.extra_data) {
        return Err(E::QualifyingDataMismatch {
            expected: Hex(expected_qd.as_bytes().to_vec()),
            found: Hex(quote.extra_data.clone()),
            tls_key_hash: evidence.tls_key_hash,
        });
    }

    // 6. PCR selection, values, digest.
    let wanted = policy.quoted_pcrs();
    if *pcr_select != PcrSelection::sha256(&wanted) {
        let same_bits = pcr_select.banks.len() == 1
            && pcr_select
                .banks
                .first()
                .map(|b| b.hash == crate::wire::AlgId::SHA256 && b.pcrs() == wanted)
                == Some(true);
        if !same_bits {
            return Err(E::PcrSelectionMismatch {
                expected: wanted,
                found: pcr_select.clone(),
            });
        }
    }
    let supplied: Vec<PcrIndex> = evidence.pcr_values.iter().map(|v| v.index).collect();
    if supplied != wanted {
        return Err(E::PcrValuesMismatch {
            expected: wanted,
            found: supplied,
        });
    }
    check_pcr_digest(&evidence.pcr_values, pcr_digest)
        .map_err(|(expected, found)| E::PcrDigestMismatch { expected, found })?;
    let quoted = |pcr: PcrIndex| {
        evidence
            .pcr_values
            .iter()
            .find(|v| v.index == pcr)
            .map(|v| v.value)
    };

    // 7. Event log replay against the quoted measurement PCRs.
    let log = EventLog::parse(&evidence.event_log).map_err(E::MalformedEventLog)?;
    log.spec_id
        .check_quorate(AlgId::SHA256)
        .map_err(E::EventLogHeader)?;
    let replayed = log.replay_sha256().map_err(E::EventLogReplay)?;
    let mpcr = policy.measurement_pcr;
    let cpcr = policy.config_pcr();
    for pcr in [mpcr, cpcr] {
        let q = quoted(pcr).unwrap_or_default();
        let r = replayed
            .get(&pcr)
            .copied()
            .unwrap_or_else(|| crate::eventlog::reset_value(pcr));
        if q != r {
            return Err(E::PcrReplayMismatch {
                pcr,
                replayed: r,
                quoted: q,
            });
        }
    }

    // 8. The events themselves.
    let measured = check_events(&log, mpcr, cpcr, quote.clock_info.reset_count)?;

    // 9. Reference values.
    if !policy
        .allowed_executables
        .iter()
        .any(|a| a.0 == measured.executable)
    {
        return Err(E::ExecutableNotAllowed {
            found: measured.executable,
            allowed: policy.allowed_executables.iter().map(|a| a.0).collect(),
        });
    }
    if policy.expected_config.0 != measured.config {
        return Err(E::ConfigMismatch {
            expected: policy.expected_config.0,
            found: measured.config,
        });
    }

    // 10. Platform PCRs.
    for req in &policy.required_pcrs {
        let found = quoted(req.index).unwrap_or_default();
        if found != req.value.0 {
            return Err(E::RequiredPcrMismatch {
                pcr: req.index,
                expected: req.value.0,
                found,
            });
        }
    }

    // 11. The vote key and its certification.
    let certify = signed_attest(
        &ak,
        &evidence.vote_key_certify.attest,
        &evidence.vote_key_certify.signature,
        Structure::Certify,
    )?;
    let Attested::Certify { name, .. } = &certify.attested else {
        return Err(E::WrongAttestType {
            which: Structure::Certify,
            expected: TPM_ST_ATTEST_CERTIFY,
            found: certify.attest_type,
        });
    };
    if certify.qualified_signer != quote.qualified_signer {
        return Err(E::CertifySignerMismatch {
            expected: quote.qualified_signer.clone(),
            found: certify.qualified_signer.clone(),
        });
    }
    if name != vote.name() {
        return Err(E::CertifiedNameMismatch {
            expected: vote.name().clone(),
            found: name.clone(),
        });
    }
    let vote_point = vote.ecc_p256_point().map_err(E::VoteKeyType)?;
    check_attributes(
        vote.object_attributes(),
        VOTE_KEY_REQUIRED,
        VOTE_KEY_FORBIDDEN,
    )
    .map_err(|(found, required, forbidden)| E::VoteKeyAttributes {
        found,
        required,
        forbidden,
    })?;
    let measurement = quoted(mpcr).unwrap_or_default();
    let expected_policy = measurement_policy(mpcr, &measurement);
    if !quorate_types::ct_eq(expected_policy.as_bytes(), vote.auth_policy()) {
        return Err(E::VoteKeyPolicyMismatch {
            expected: Hex(expected_policy.as_bytes().to_vec()),
            found: Hex(vote.auth_policy().to_vec()),
            pcr: mpcr,
            measurement,
        });
    }

    // 12. EK certificate chain.
    let roots = policy.ek_root_ders()?;
    let ek_chain = match (&evidence.ek_certificate, roots.is_empty()) {
        (None, _) if policy.require_ek_certificate => return Err(E::EkCertificateMissing),
        (Some(cert), false) => {
            let inter: Vec<Vec<u8>> = evidence.ek_chain.iter().map(|c| c.to_vec()).collect();
            Some(verify_ek_chain(cert, &inter, &roots, now_unix).map_err(E::EkCertificate)?)
        }
        _ => None,
    };

    // 13. Clock.
    check_clock(state.last_clock.as_ref(), &quote.clock_info)?;

    state.last_clock = Some(quote.clock_info);
    Ok(AttestationResult {
        measurement_pcr: mpcr,
        measurement,
        event_log_digest: Sha256Digest::of(&evidence.event_log),
        executable: measured.executable,
        config: measured.config,
        ak_name: ak.name().clone(),
        vote_key_name: vote.name().clone(),
        vote_key: vote_point,
        clock_info: quote.clock_info,
        firmware_version: quote.firmware_version,
        ek_chain,
        ak_pinned: state.enrolled_ak.is_some(),
    })
}

/// Checks that `values` are the quoted ones: their composite digest equals
/// the quote's `pcr_digest`. On mismatch returns (computed, quoted).
pub(crate) fn check_pcr_digest(values: &[PcrValue], pcr_digest: &[u8]) -> Result<(), (Hex, Hex)> {
    let values: Vec<Sha256Digest> = values.iter().map(|v| v.value).collect();
    let composite = pcr_composite_digest(&values);
    if quorate_types::ct_eq(composite.as_bytes(), pcr_digest) {
        Ok(())
    } else {
        Err((Hex(composite.as_bytes().to_vec()), Hex(pcr_digest.to_vec())))
    }
}

type AttrMismatch = (ObjectAttributes, ObjectAttributes, ObjectAttributes);

fn check_attributes(
    found: ObjectAttributes,
    required: ObjectAttributes,
    forbidden: ObjectAttributes,
) -> Result<(), AttrMismatch> {
    if found.contains(required) && found.0 & forbidden.0 == 0 {
        Ok(())
    } else {
        Err((found, required, forbidden))
    }
}

/// Parses a TPMS_ATTEST, checks magic, type and its signature by `ak`.
pub(crate) fn signed_attest(
    ak: &TpmtPublic,
    attest: &[u8],
    sig: &[u8],
    which: Structure,
) -> Result<TpmsAttest, AttestationError> {
    use AttestationError as E;
    let parsed = TpmsAttest::parse(attest).map_err(|error| match error {
        ParseError::InvalidValue {
            what: "TPMS_ATTEST.type",
            value,
            ..
        } => E::WrongAttestType {
            which,
            expected: if which == Structure::Quote {
                TPM_ST_ATTEST_QUOTE
            } else {
                TPM_ST_ATTEST_CERTIFY
            },
            found: u16::try_from(value).unwrap_or(u16::MAX),
        },
        error => E::MalformedAttest { which, error },
    })?;
    if parsed.magic != TPM_GENERATED_VALUE {
        return Err(E::BadMagic {
            which,
            found: parsed.magic,
        });
    }
    let expected = if which == Structure::Quote {
        TPM_ST_ATTEST_QUOTE
    } else {
        TPM_ST_ATTEST_CERTIFY
    };
    if parsed.attest_type != expected {
        return Err(E::WrongAttestType {
            which,
            expected,
            found: parsed.attest_type,
        });
    }
    let sig = TpmSignature::parse(sig).map_err(|error| E::MalformedSignature { which, error })?;
    verify_ecdsa_p256(ak, attest, &sig).map_err(|error| E::BadSignature {
        which,
        ak: ak.name().clone(),
        error,
    })?;
    Ok(parsed)
}

struct Measured {
    executable: Sha256Digest,
    config: Sha256Digest,
}

/// Checks every event of the log against Quorate's launch sequence.
fn check_events(
    log: &EventLog,
    mpcr: PcrIndex,
    cpcr: PcrIndex,
    quote_reset: u32,
) -> Result<Measured, AttestationError> {
    use AttestationError as E;
    let mut executable = None;
    let mut config = None;
    let mut boot = None;
    let in_ours = |pcr: u32| pcr == u32::from(mpcr.get()) || pcr == u32::from(cpcr.get());
    for (index, e) in log.events.iter().enumerate() {
        if e.event_type == EventType::NO_ACTION
            && e.digests.iter().any(|(_, d)| d.iter().any(|b| *b != 0))
        {
            return Err(E::MalformedEvent {
                index,
                reason: "EV_NO_ACTION event with a nonzero digest",
            });
        }
        // Quorate-tagged events: the digest extended must be the payload.
        if let Some((tag @ (TAG_EXECUTABLE | TAG_CONFIG), payload)) = e.quorate_tag() {
            let digest = e.sha256();
            let payload_digest: Option<[u8; 32]> = payload.try_into().ok();
            let Some(p) = payload_digest else {
                return Err(E::MalformedEvent {
                    index,
                    reason: "payload is not a 32-byte SHA-256 digest",
                });
            };
            if digest.map(|d| d.0) != Some(p) {
                return Err(E::EventDigestMismatch {
                    index,
                    digest: Hex(digest.map(|d| d.0.to_vec()).unwrap_or_default()),
                    data: Hex(p.to_vec()),
                });
            }
            let d = Sha256Digest(p);
            let (pcr, expected) = if tag == TAG_EXECUTABLE {
                (
                    mpcr,
                    "the executable event first, once, in the measurement PCR",
                )
            } else {
                (
                    cpcr,
                    "the configuration event once, after the executable, in the configuration PCR",
                )
            };
            let order_ok = tag == TAG_EXECUTABLE && config.is_none()
                || tag == TAG_CONFIG && executable.is_some();
            let slot_free = if tag == TAG_EXECUTABLE {
                executable.is_none()
            } else {
                config.is_none()
            };
            if e.pcr_index != u32::from(pcr.get()) || !slot_free || !order_ok {
                return Err(E::UnexpectedEvent {
                    index,
                    pcr: e.pcr_index,
                    event_type: e.event_type,
                    expected,
                });
            }
            if tag == TAG_EXECUTABLE {
                executable = Some(d);
            } else {
                config = Some(d);
            }
            continue;
        }
        match e.quorate() {
            Some(QuorateEvent::Boot { reset_count }) => {
                if boot.is_some() || executable.is_some() {
                    return Err(E::UnexpectedEvent {
                        index,
                        pcr: e.pcr_index,
                        event_type: e.event_type,
                        expected: "one boot record, before the measurements",
                    });
                }
                boot = Some(reset_count);
            }
            _ if e.event_type == EventType::NO_ACTION => {}
            _ if in_ours(e.pcr_index) => {
                return Err(E::UnexpectedEvent {
                    index,
                    pcr: e.pcr_index,
                    event_type: e.event_type,
                    expected:
                        "only Quorate executable and configuration events in the measurement PCRs",
                })
            }
            _ => {}
        }
    }
    let boot = boot.ok_or(E::MissingEvent {
        what: "boot record (TPM resetCount)",
    })?;
    if boot != quote_reset {
        return Err(E::LogFromAnotherBoot {
            log: boot,
            quote: quote_reset,
        });
    }
    let executable = executable.ok_or(E::MissingEvent {
        what: "executable measurement",
    })?;
    let config = config.ok_or(E::MissingEvent {
        what: "configuration measurement",
    })?;
    Ok(Measured { executable, config })
}

/// Checks the quote's clock moved forward from the last accepted one.
fn check_clock(last: Option<&ClockInfo>, now: &ClockInfo) -> Result<(), AttestationError> {
    use AttestationError as E;
    let Some(last) = last else { return Ok(()) };
    if now.reset_count < last.reset_count {
        return Err(E::ResetCountRolledBack {
            last: last.reset_count,
            found: now.reset_count,
        });
    }
    if now.reset_count > last.reset_count {
        return Ok(());
    }
    if now.restart_count < last.restart_count {
        return Err(E::RestartCountRolledBack {
            reset_count: now.reset_count,
            last: last.restart_count,
            found: now.restart_count,
        });
    }
    if now.restart_count > last.restart_count {
        return Ok(());
    }
    if now.clock < last.clock {
        return Err(E::ClockRolledBack {
            last: last.clock,
            found: now.clock,
        });
    }
    if now.clock == last.clock {
        return Err(E::QuoteReplayed { clock: *now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{ClockInfo, TpmsAttest};
    use crate::eventlog::{LogEvent, SpecIdEvent};
    use crate::evidence::SignedAttest;
    use crate::pcr::PcrValue;
    use crate::policy::{HexDigest, RequiredPcr};
    use crate::soft::{SoftTpm, SOFT_AK_ATTRIBUTES, SOFT_VOTE_ATTRIBUTES};
    use crate::wire::AlgId;
    use quorate_types::Epoch;
    use ring::rand::SystemRandom;

    const PCR: PcrIndex = PcrIndex::DEFAULT_MEASUREMENT;
    const EXE: Sha256Digest = Sha256Digest([1; 32]);
    const CONFIG: Sha256Digest = Sha256Digest([2; 32]);
    const TLS: Sha256Digest = Sha256Digest([3; 32]);

    struct Fx {
        rng: SystemRandom,
        tpm: SoftTpm,
        policy: Policy,
        fresh: Freshness,
    }

    impl Fx {
        fn new() -> Fx {
            Fx::launch(&EXE, &CONFIG, 3)
        }
        fn launch(exe: &Sha256Digest, config: &Sha256Digest, reset: u32) -> Fx {
            let rng = SystemRandom::new();
            let tpm = SoftTpm::launch(&rng, PCR, exe, config, reset).unwrap();
            Fx {
                rng,
                tpm,
                policy: Policy::new(vec![EXE], CONFIG),
                fresh: Freshness::Nonce(vec![0xAB; 16]),
            }
        }
        fn evidence(&mut self) -> Evidence {
            self.tpm
                .evidence(&self.rng, &self.fresh, &TLS, &self.policy.quoted_pcrs())
                .unwrap()
        }
        fn verify(&self, ev: &Evidence) -> Result<AttestationResult, AttestationError> {
            verify(ev, &self.fresh, &self.policy, &mut VerifierState::default())
        }
        fn reject(&self, ev: &Evidence) -> AttestationError {
            self.verify(ev).unwrap_err()
        }
        /// Rebuilds the log from events and the PCR from their replay.
        fn relaunch_with(&mut self, events: Vec<LogEvent>) {
            self.tpm.log.events = events;
            for (pcr, v) in self.tpm.log.replay_sha256().unwrap() {
                self.tpm.pcrs.insert(pcr, v);
            }
        }
        fn resign(&self, attest: &TpmsAttest) -> SignedAttest {
            self.tpm.sign_attest(&self.rng, attest).unwrap()
        }
    }

    #[test]
    fn valid_evidence_verifies_and_reports_the_measurement() {
        let mut fx = Fx::new();
        let ev = fx.evidence();
        let mut state = VerifierState {
            enrolled_ak: Some(fx.tpm.ak_public.name().clone()),
            enrolled_vote_key: Some(fx.tpm.vote_public.name().clone()),
            last_clock: None,
        };
        let r = verify(&ev, &fx.fresh, &fx.policy, &mut state).unwrap();
        assert_eq!(r.executable, EXE);
        assert_eq!(r.config, CONFIG);
        assert_eq!(r.measurement, fx.tpm.pcrs[&PCR]);
        assert_eq!(r.event_log_digest, Sha256Digest::of(&ev.event_log));
        assert_eq!(r.vote_key, fx.tpm.vote_public.ecc_p256_point().unwrap());
        assert_eq!(&r.ak_name, fx.tpm.ak_public.name());
        assert!(r.ak_pinned);
        let unpinned = fx.evidence();
        assert!(!fx.verify(&unpinned).unwrap().ak_pinned);
        assert_eq!(state.last_clock, Some(r.clock_info));
        // A later quote from the same TPM passes against the updated state.
        let ev2 = fx.evidence();
        verify(&ev2, &fx.fresh, &fx.policy, &mut state).unwrap();
        // Through the encoding too.
        let ev3 = Evidence::from_bytes(&fx.evidence().to_bytes()).unwrap();
        verify(&ev3, &fx.fresh, &fx.policy, &mut state).unwrap();
    }

    #[test]
    fn epoch_freshness_verifies_and_binds_the_epoch() {
        let mut fx = Fx::new();
        fx.fresh = Freshness::Epoch {
            epoch: Epoch(7),
            block_hash: Sha256Digest([9; 32]),
        };
        let ev = fx.evidence();
        fx.verify(&ev).unwrap();
        fx.fresh = Freshness::Epoch {
            epoch: Epoch(8),
            block_hash: Sha256Digest([9; 32]),
        };
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::QualifyingDataMismatch { .. }
        ));
    }

    #[test]
    fn changed_executable_is_not_allowed() {
        let mut exe = EXE;
        exe.0[31] ^= 1;
        let mut fx = Fx::launch(&exe, &CONFIG, 3);
        let ev = fx.evidence();
        assert!(
            matches!(fx.reject(&ev), AttestationError::ExecutableNotAllowed { found, .. } if found == exe)
        );
    }

    #[test]
    fn another_config_is_rejected() {
        let mut fx = Fx::launch(&EXE, &Sha256Digest([4; 32]), 3);
        let ev = fx.evidence();
        let e = fx.reject(&ev);
        assert!(matches!(e, AttestationError::ConfigMismatch { .. }), "{e}");
        assert!(
            e.to_string().contains(&CONFIG.to_string()) && e.to_string().contains(&"04".repeat(32))
        );
    }

    #[test]
    fn stale_nonce_and_foreign_tls_key_are_rejected() {
        let mut fx = Fx::new();
        let ev = fx.evidence();
        fx.fresh = Freshness::Nonce(vec![0xAC; 16]);
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::QualifyingDataMismatch { .. }
        ));
        fx.fresh = Freshness::Nonce(vec![0xAB; 16]);
        let mut other_tls = ev.clone();
        other_tls.tls_key_hash = Sha256Digest([5; 32]);
        assert!(matches!(
            fx.reject(&other_tls),
            AttestationError::QualifyingDataMismatch { .. }
        ));
    }

    #[test]
    fn replayed_quote_is_rejected() {
        let mut fx = Fx::new();
        let ev = fx.evidence();
        let mut state = VerifierState::default();
        verify(&ev, &fx.fresh, &fx.policy, &mut state).unwrap();
        let e = verify(&ev, &fx.fresh, &fx.policy, &mut state).unwrap_err();
        assert!(matches!(e, AttestationError::QuoteReplayed { .. }), "{e}");
    }

    #[test]
    fn clock_and_counter_rollbacks_are_rejected() {
        let mut fx = Fx::new();
        let ev = fx.evidence();
        let now = TpmsAttest::parse(&ev.quote.attest).unwrap().clock_info;
        let run = |last: ClockInfo| {
            let mut state = VerifierState {
                last_clock: Some(last),
                ..Default::default()
            };
            let r = verify(&ev, &fx.fresh, &fx.policy, &mut state);
            (r, state)
        };
        let (r, state) = run(ClockInfo {
            clock: now.clock + 1,
            ..now
        });
        assert!(matches!(r, Err(AttestationError::ClockRolledBack { .. })));
        assert_eq!(
            state.last_clock.unwrap().clock,
            now.clock + 1,
            "state unchanged on failure"
        );
        let (r, _) = run(ClockInfo {
            reset_count: now.reset_count + 1,
            clock: 0,
            ..now
        });
        assert!(matches!(
            r,
            Err(AttestationError::ResetCountRolledBack { .. })
        ));
        let (r, _) = run(ClockInfo {
            restart_count: now.restart_count + 1,
            clock: 0,
            ..now
        });
        assert!(matches!(
            r,
            Err(AttestationError::RestartCountRolledBack { .. })
        ));
        // A reboot (higher resetCount) may reset the clock.
        let (r, _) = run(ClockInfo {
            reset_count: now.reset_count - 1,
            clock: now.clock + 1000,
            ..now
        });
        assert!(r.is_ok());
    }

    #[test]
    fn quote_by_another_tpms_ak_is_rejected() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        let other = Fx::new();
        let enrolled = fx.tpm.ak_public.name().clone();
        ev.ak_public = other.tpm.ak_public.as_bytes().to_vec();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::BadSignature {
                which: Structure::Quote,
                error: SignatureError::Invalid,
                ..
            }
        ));
        let mut state = VerifierState {
            enrolled_ak: Some(enrolled),
            ..Default::default()
        };
        let e = verify(&ev, &fx.fresh, &fx.policy, &mut state).unwrap_err();
        assert!(matches!(e, AttestationError::AkNotEnrolled { .. }), "{e}");
    }

    #[test]
    fn ak_without_the_required_attributes_is_rejected() {
        for (drop, add) in [
            (ObjectAttributes::RESTRICTED, ObjectAttributes(0)),
            (ObjectAttributes::FIXED_TPM, ObjectAttributes(0)),
            (ObjectAttributes::FIXED_PARENT, ObjectAttributes(0)),
            (ObjectAttributes::SENSITIVE_DATA_ORIGIN, ObjectAttributes(0)),
            (ObjectAttributes(0), ObjectAttributes::DECRYPT),
        ] {
            let mut fx = Fx::new();
            fx.tpm
                .replace_ak(
                    &fx.rng,
                    ObjectAttributes((SOFT_AK_ATTRIBUTES.0 & !drop.0) | add.0),
                )
                .unwrap();
            let ev = fx.evidence();
            let e = fx.reject(&ev);
            assert!(matches!(e, AttestationError::AkAttributes { .. }), "{e}");
        }
        let mut fx = Fx::new();
        fx.policy.require_ak_no_da = true;
        fx.tpm
            .replace_ak(
                &fx.rng,
                ObjectAttributes(SOFT_AK_ATTRIBUTES.0 & !ObjectAttributes::NO_DA.0),
            )
            .unwrap();
        let ev = fx.evidence();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::AkAttributes { .. }
        ));
    }

    #[test]
    fn vote_key_with_no_or_another_policy_is_rejected() {
        for policy in [
            vec![],
            vec![7u8; 32],
            measurement_policy(PcrIndex::new(16).unwrap(), &Sha256Digest([0; 32]))
                .0
                .to_vec(),
        ] {
            let mut fx = Fx::new();
            fx.tpm
                .replace_vote_key(&fx.rng, SOFT_VOTE_ATTRIBUTES, &policy)
                .unwrap();
            let ev = fx.evidence();
            let e = fx.reject(&ev);
            assert!(
                matches!(e, AttestationError::VoteKeyPolicyMismatch { .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn vote_key_usable_without_its_policy_is_rejected() {
        let mut fx = Fx::new();
        let policy = fx.tpm.vote_public.auth_policy().to_vec();
        let attrs = SOFT_VOTE_ATTRIBUTES | ObjectAttributes::USER_WITH_AUTH;
        fx.tpm.replace_vote_key(&fx.rng, attrs, &policy).unwrap();
        let ev = fx.evidence();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::VoteKeyAttributes { .. }
        ));
        let mut fx = Fx::new();
        let attrs = ObjectAttributes(SOFT_VOTE_ATTRIBUTES.0 & !ObjectAttributes::FIXED_TPM.0);
        fx.tpm.replace_vote_key(&fx.rng, attrs, &policy).unwrap();
        let ev = fx.evidence();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::VoteKeyAttributes { .. }
        ));
    }

    #[test]
    fn removed_event_breaks_the_replay() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        let mut log = EventLog::parse(&ev.event_log).unwrap();
        log.events.pop();
        ev.event_log = log.to_bytes();
        let e = fx.reject(&ev);
        assert!(
            matches!(e, AttestationError::PcrReplayMismatch { pcr: PCR, .. }),
            "{e}"
        );
        // Removed from the log and the PCR alike: the config is missing.
        let mut fx = Fx::new();
        let events = fx.tpm.log.events[..2].to_vec();
        fx.relaunch_with(events);
        let ev = fx.evidence();
        assert_eq!(
            fx.reject(&ev),
            AttestationError::MissingEvent {
                what: "configuration measurement"
            }
        );
    }

    #[test]
    fn every_changed_byte_of_the_event_log_header_is_refused() {
        let mut fx = Fx::new();
        let good = fx.evidence();
        fx.verify(&good).unwrap();
        let header = EventLog::new_sha256().header_bytes().len();
        assert_eq!(
            good.event_log[..header],
            EventLog::new_sha256().header_bytes()
        );
        for i in 0..header {
            for bit in [0x01u8, 0x80] {
                let mut ev = good.clone();
                ev.event_log[i] ^= bit;
                let e = fx.reject(&ev);
                assert!(
                    matches!(
                        e,
                        AttestationError::MalformedEventLog(_)
                            | AttestationError::EventLogHeader(_)
                    ),
                    "byte {i} bit {bit:#x}: {e}"
                );
            }
        }
        // Each header field has its own error.
        type Case = (Box<dyn Fn(&mut SpecIdEvent)>, fn(&SpecIdError) -> bool);
        let cases: Vec<Case> = vec![
            (Box::new(|h| h.platform_class = 1), |e| {
                matches!(e, SpecIdError::PlatformClass { found: 1 })
            }),
            (Box::new(|h| h.spec_version_minor = 1), |e| {
                matches!(e, SpecIdError::SpecVersion { major: 2, minor: 1 })
            }),
            (Box::new(|h| h.spec_errata = 2), |e| {
                matches!(e, SpecIdError::SpecErrata { found: 2 })
            }),
            (Box::new(|h| h.uintn_size = 1), |e| {
                matches!(e, SpecIdError::UintnSize { found: 1 })
            }),
            (Box::new(|h| h.algorithms.push((AlgId::SHA1, 20))), |e| {
                matches!(e, SpecIdError::Algorithms { .. })
            }),
            (
                Box::new(|h| h.algorithms.insert(0, (AlgId::SHA384, 48))),
                |e| matches!(e, SpecIdError::Algorithms { .. }),
            ),
            (Box::new(|h| h.vendor_info = vec![0]), |e| {
                matches!(e, SpecIdError::VendorInfo { len: 1 })
            }),
        ];
        for (mutate, want) in cases {
            let mut log = EventLog::parse(&good.event_log).unwrap();
            mutate(&mut log.spec_id);
            let mut ev = good.clone();
            ev.event_log = log.to_bytes();
            match fx.reject(&ev) {
                AttestationError::EventLogHeader(h) => assert!(want(&h), "{h}"),
                other => panic!("expected a header error, got {other}"),
            }
        }
    }

    #[test]
    fn reordered_events_are_rejected() {
        let mut fx = Fx::new();
        let mut events = fx.tpm.log.events.clone();
        events.swap(1, 2);
        fx.relaunch_with(events);
        let ev = fx.evidence();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::UnexpectedEvent { index: 1, .. }
        ));
    }

    #[test]
    fn altered_event_data_or_digest_is_rejected() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        let mut log = EventLog::parse(&ev.event_log).unwrap();
        let last = log.events[1].data.len() - 1;
        log.events[1].data[last] ^= 1;
        ev.event_log = log.to_bytes();
        let e = fx.reject(&ev);
        assert!(
            matches!(e, AttestationError::EventDigestMismatch { index: 1, .. }),
            "{e}"
        );

        let mut log = EventLog::parse(&fx.evidence().event_log).unwrap();
        log.events[2].digests[0].1[0] ^= 1;
        let mut ev = fx.evidence();
        ev.event_log = log.to_bytes();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::PcrReplayMismatch { .. }
        ));
    }

    #[test]
    fn foreign_event_in_the_measurement_pcr_is_rejected() {
        let mut fx = Fx::new();
        let mut events = fx.tpm.log.events.clone();
        events.push(LogEvent {
            pcr_index: 15,
            event_type: EventType::IPL,
            digests: vec![(AlgId::SHA256, vec![8; 32])],
            data: b"something else".to_vec(),
        });
        fx.relaunch_with(events);
        let ev = fx.evidence();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::UnexpectedEvent { index: 3, .. }
        ));
    }

    #[test]
    fn log_from_another_boot_or_without_boot_record_is_rejected() {
        let mut fx = Fx::new();
        let mut events = fx.tpm.log.events.clone();
        events[0] = LogEvent::boot(2);
        fx.relaunch_with(events.clone());
        let ev = fx.evidence();
        assert_eq!(
            fx.reject(&ev),
            AttestationError::LogFromAnotherBoot { log: 2, quote: 3 }
        );
        events.remove(0);
        fx.relaunch_with(events);
        let ev = fx.evidence();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::MissingEvent { .. }
        ));
    }

    #[test]
    fn wrong_pcr_bank_or_selection_is_rejected() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        let mut q = TpmsAttest::parse(&ev.quote.attest).unwrap();
        if let Attested::Quote { pcr_select, .. } = &mut q.attested {
            pcr_select.banks[0].hash = AlgId::SHA1;
        }
        ev.quote = fx.resign(&q);
        let e = fx.reject(&ev);
        assert!(
            matches!(e, AttestationError::PcrSelectionMismatch { .. }),
            "{e}"
        );
        // Quoting only PCR 16 (not the measurement PCR).
        let mut ev = fx.evidence();
        let qd = qualifying_data(&fx.fresh, &TLS, fx.tpm.vote_public.name());
        let (quote, values) = fx
            .tpm
            .quote(&fx.rng, &[PcrIndex::new(16).unwrap()], qd.as_bytes())
            .unwrap();
        ev.quote = quote;
        ev.pcr_values = values;
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::PcrSelectionMismatch { .. }
        ));
    }

    #[test]
    fn pcr_values_that_do_not_match_the_quote_are_rejected() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        ev.pcr_values[0].value.0[0] ^= 1;
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::PcrDigestMismatch { .. }
        ));
        let mut ev = fx.evidence();
        ev.pcr_values.push(PcrValue {
            index: PcrIndex::new(0).unwrap(),
            value: Sha256Digest([0; 32]),
        });
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::PcrValuesMismatch { .. }
        ));
    }

    #[test]
    fn required_platform_pcr_is_checked() {
        let mut fx = Fx::new();
        let pcr0 = PcrIndex::new(0).unwrap();
        fx.tpm.pcrs.insert(pcr0, Sha256Digest([6; 32]));
        fx.policy.required_pcrs.push(RequiredPcr {
            index: pcr0,
            value: HexDigest(Sha256Digest([6; 32])),
        });
        let ev = fx.evidence();
        fx.verify(&ev).unwrap();
        fx.tpm.pcrs.insert(pcr0, Sha256Digest([7; 32]));
        let ev = fx.evidence();
        assert!(
            matches!(fx.reject(&ev), AttestationError::RequiredPcrMismatch { pcr, .. } if pcr == pcr0)
        );
    }

    #[test]
    fn bad_magic_and_wrong_types_are_rejected() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        let mut q = TpmsAttest::parse(&ev.quote.attest).unwrap();
        q.magic = 0xff54_4348;
        ev.quote = fx.resign(&q);
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::BadMagic {
                which: Structure::Quote,
                ..
            }
        ));
        let mut ev = fx.evidence();
        ev.quote = ev.vote_key_certify.clone();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::WrongAttestType {
                which: Structure::Quote,
                ..
            }
        ));
        let mut ev = fx.evidence();
        ev.vote_key_certify = ev.quote.clone();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::WrongAttestType {
                which: Structure::Certify,
                ..
            }
        ));
    }

    #[test]
    fn flipped_signature_bits_are_rejected() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        let n = ev.quote.signature.len();
        ev.quote.signature[n - 1] ^= 1;
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::BadSignature {
                which: Structure::Quote,
                ..
            }
        ));
        let mut ev = fx.evidence();
        ev.quote.attest[20] ^= 1;
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::BadSignature {
                which: Structure::Quote,
                ..
            }
        ));
        let mut ev = fx.evidence();
        let n = ev.vote_key_certify.signature.len();
        ev.vote_key_certify.signature[n - 1] ^= 1;
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::BadSignature {
                which: Structure::Certify,
                ..
            }
        ));
    }

    #[test]
    fn certification_of_another_key_or_by_another_ak_is_rejected() {
        let mut fx = Fx::new();
        let mut ev = fx.evidence();
        let other = fx.tpm.ak_public.clone();
        ev.vote_key_certify = fx.tpm.certify(&fx.rng, &other).unwrap();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::CertifiedNameMismatch { .. }
        ));
        let mut ev = fx.evidence();
        let mut foreign = Fx::new();
        let vote = fx.tpm.vote_public.clone();
        ev.vote_key_certify = foreign.tpm.certify(&foreign.rng, &vote).unwrap();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::BadSignature {
                which: Structure::Certify,
                ..
            }
        ));
        // Signed by our AK but claiming another signer.
        let mut ev = fx.evidence();
        let mut c = TpmsAttest::parse(&ev.vote_key_certify.attest).unwrap();
        c.qualified_signer = TpmName(vec![0, 0x0b, 1, 2]);
        ev.vote_key_certify = fx.resign(&c);
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::CertifySignerMismatch { .. }
        ));
    }

    #[test]
    fn pinned_vote_key_is_enforced() {
        let mut fx = Fx::new();
        let ev = fx.evidence();
        let mut state = VerifierState {
            enrolled_vote_key: Some(TpmName(vec![0, 0x0b, 0])),
            ..Default::default()
        };
        let e = verify(&ev, &fx.fresh, &fx.policy, &mut state).unwrap_err();
        assert!(matches!(e, AttestationError::VoteKeyNotEnrolled { .. }));
    }

    #[test]
    fn truncated_or_garbage_fields_are_rejected() {
        let mut fx = Fx::new();
        let good = fx.evidence();
        type Mutation = Box<dyn Fn(&mut Evidence)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|e| e.quote.attest.truncate(10)), "quote attest"),
            (
                Box::new(|e| e.quote.signature = vec![0xde, 0xad]),
                "quote signature",
            ),
            (Box::new(|e| e.ak_public.truncate(30)), "ak public"),
            (
                Box::new(|e| e.vote_key_public = vec![1, 2, 3]),
                "vote public",
            ),
            (Box::new(|e| e.event_log = b"garbage".to_vec()), "event log"),
            (
                Box::new(|e| e.vote_key_certify.attest.push(0)),
                "certify attest",
            ),
            (
                Box::new(|e| e.vote_key_certify.signature.clear()),
                "certify signature",
            ),
        ];
        for (mutate, what) in cases {
            let mut ev = good.clone();
            mutate(&mut ev);
            let e = fx.reject(&ev);
            let ok = match what {
                "quote attest" => matches!(
                    e,
                    AttestationError::MalformedAttest {
                        which: Structure::Quote,
                        ..
                    }
                ),
                "quote signature" => matches!(
                    e,
                    AttestationError::MalformedSignature {
                        which: Structure::Quote,
                        ..
                    }
                ),
                "ak public" => matches!(e, AttestationError::MalformedAkPublic(_)),
                "vote public" => matches!(e, AttestationError::MalformedVoteKeyPublic(_)),
                "event log" => matches!(e, AttestationError::MalformedEventLog(_)),
                "certify attest" => matches!(
                    e,
                    AttestationError::MalformedAttest {
                        which: Structure::Certify,
                        ..
                    }
                ),
                "certify signature" => {
                    matches!(
                        e,
                        AttestationError::MalformedSignature {
                            which: Structure::Certify,
                            ..
                        }
                    )
                }
                _ => false,
            };
            assert!(ok, "{what}: {e}");
        }
        let bytes = good.to_bytes();
        assert!(Evidence::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn ek_certificate_requirements_are_enforced() {
        let mut fx = Fx::new();
        let (root, inter, leaf) = crate::ekcert::tests::ecdsa_chain();
        fx.policy.ek_roots = vec![hex::encode(&root)];
        fx.policy.require_ek_certificate = true;
        let mut ev = fx.evidence();
        assert_eq!(fx.reject(&ev), AttestationError::EkCertificateMissing);
        ev.ek_certificate = Some(serde_bytes::ByteBuf::from(leaf.clone()));
        ev.ek_chain = vec![serde_bytes::ByteBuf::from(inter.clone())];
        let r = fx.verify(&ev).unwrap();
        assert_eq!(r.ek_chain.unwrap().depth, 3);
        // A certificate from a CA the policy does not know.
        let (_, other_inter, other_leaf) = crate::ekcert::tests::ecdsa_chain_named("rogue");
        ev.ek_certificate = Some(serde_bytes::ByteBuf::from(other_leaf));
        ev.ek_chain = vec![serde_bytes::ByteBuf::from(other_inter)];
        let e = fx.reject(&ev);
        assert!(
            matches!(
                e,
                AttestationError::EkCertificate(EkError::UnknownIssuer { .. })
            ),
            "{e}"
        );
    }

    #[test]
    fn resettable_measurement_pcr_needs_dev_mode() {
        let mut fx = Fx::new();
        fx.policy.measurement_pcr = PcrIndex::DEV_MEASUREMENT;
        let ev = fx.evidence();
        assert!(matches!(
            fx.reject(&ev),
            AttestationError::Policy(PolicyError::ResettablePcr { .. })
        ));
    }

    #[test]
    fn no_single_byte_change_anywhere_changes_what_is_accepted() {
        let mut fx = Fx::new();
        let ev = fx.evidence();
        let pinned = VerifierState {
            enrolled_ak: Some(fx.tpm.ak_public.name().clone()),
            ..Default::default()
        };
        let good = verify(&ev, &fx.fresh, &fx.policy, &mut pinned.clone()).unwrap();
        let bytes = ev.to_bytes();
        let mut accepted_changes = 0;
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                let Ok(changed) = Evidence::from_bytes(&b) else {
                    continue;
                };
                if let Ok(r) = verify(&changed, &fx.fresh, &fx.policy, &mut pinned.clone()) {
                    accepted_changes += 1;
                    assert_eq!(
                        (
                            r.measurement,
                            r.executable,
                            r.config,
                            &r.ak_name,
                            r.vote_key,
                            r.clock_info
                        ),
                        (
                            good.measurement,
                            good.executable,
                            good.config,
                            &good.ak_name,
                            good.vote_key,
                            good.clock_info
                        ),
                        "byte {i} mask {mask:#x}"
                    );
                }
            }
        }
        // Only informational log-header bytes may change without rejection.
        assert!(accepted_changes < 40, "{accepted_changes} changes accepted");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        #[test]
        fn one_flipped_bit_anywhere_in_the_evidence_is_never_accepted(pos in 0usize..100_000, bit in 0u8..8) {
            let mut fx = Fx::new();
            let ev = fx.evidence();
            let mut bytes = ev.to_bytes();
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
            // As in production, the AK is pinned by enrollment: the AK public's
            // attributes and policy are not covered by any signature, only by
            // its Name (an unpinned verifier accepts a rewritten AK public).
            let pinned = VerifierState { enrolled_ak: Some(fx.tpm.ak_public.name().clone()), ..Default::default() };
            let good = verify(&ev, &fx.fresh, &fx.policy, &mut pinned.clone()).unwrap();
            if let Ok(changed) = Evidence::from_bytes(&bytes) {
                // A flip may land where it means nothing (an informational
                // field of the log header); then nothing the verifier reports
                // about the party may differ.
                if let Ok(r) = verify(&changed, &fx.fresh, &fx.policy, &mut pinned.clone()) {
                    proptest::prop_assert_eq!(
                        (r.measurement, r.executable, r.config, r.ak_name, r.vote_key, r.clock_info),
                        (good.measurement, good.executable, good.config, good.ak_name, good.vote_key, good.clock_info),
                        "byte {} bit {}", i, bit
                    );
                }
            }
        }
    }

    #[test]
    fn dev_mode_pcr_23_verifies() {
        let rng = SystemRandom::new();
        let mut tpm = SoftTpm::launch(&rng, PcrIndex::DEV_MEASUREMENT, &EXE, &CONFIG, 1).unwrap();
        let mut policy = Policy::new(vec![EXE], CONFIG);
        policy.measurement_pcr = PcrIndex::DEV_MEASUREMENT;
        policy.dev = true;
        let fresh = Freshness::Nonce(vec![1]);
        let ev = tpm
            .evidence(&rng, &fresh, &TLS, &policy.quoted_pcrs())
            .unwrap();
        let r = verify(&ev, &fresh, &policy, &mut VerifierState::default()).unwrap();
        assert_eq!(r.measurement_pcr, PcrIndex::DEV_MEASUREMENT);
    }
}
