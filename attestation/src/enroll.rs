//! Enrollment, verifier side: binding a party's AK to its EK by credential
//! activation before its evidence is trusted (issue 3 point 5).
//!
//! 1. The party sends an [`EnrollmentRequest`]: its EK public area, EK
//!    certificate and chain (when the TPM has them) and its AK public area.
//! 2. The verifier calls [`challenge`] with its [`EnrollRules`] (the EK
//!    roots it trusts; [`EnrollRules::from_policy`] takes them from the
//!    cluster's reference policy): it checks the EK is a TPM storage
//!    key, is the key the certificate certifies, and the certificate chains
//!    to a configured root; checks the AK's attributes; and seals a fresh
//!    credential to (EK, AK Name) with [`make_credential`]. It keeps the
//!    [`PendingEnrollment`] (which holds the credential: keep it private)
//!    and sends the [`MadeCredential`].
//! 3. The party's TPM runs TPM2_ActivateCredential and returns the
//!    credential; [`PendingEnrollment::complete`] compares it in constant
//!    time and yields the [`VerifierState`] that pins the AK for every later
//!    [`verify`](crate::verify::verify).

use crate::credential::{ek_matches_certificate, make_credential, CredentialError, MadeCredential};
use crate::ekcert::{verify_ek_chain, EkChainInfo, EkError};
use crate::policy::{Policy, PolicyError};
use crate::tpm::{ObjectAttributes, TpmName, TpmtPublic};
use crate::verify::{VerifierState, AK_FORBIDDEN, AK_REQUIRED};
use crate::wire::ParseError;
use serde::{Deserialize, Serialize};

/// What a party sends to be enrolled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRequest {
    /// The EK's TPMT_PUBLIC.
    #[serde(with = "serde_bytes")]
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER), when the TPM has one.
    pub ek_certificate: Option<serde_bytes::ByteBuf>,
    /// Intermediate CA certificates (DER).
    pub ek_chain: Vec<serde_bytes::ByteBuf>,
    /// The AK's TPMT_PUBLIC.
    #[serde(with = "serde_bytes")]
    pub ak_public: Vec<u8>,
}

/// What a verifier requires of an enrollment: the EK roots it trusts and
/// whether an EK certificate (chaining to one of them) is mandatory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnrollRules {
    /// Trusted EK root CA certificates (DER).
    pub ek_roots: Vec<Vec<u8>>,
    /// Refuse an EK without a certificate chaining to `ek_roots`.
    pub require_ek_certificate: bool,
    /// Refuse an AK without noDA.
    pub require_ak_no_da: bool,
}

impl EnrollRules {
    /// The rules of a reference-value policy (its `ek_roots`,
    /// `require_ek_certificate` and `require_ak_no_da`), after checking it.
    pub fn from_policy(policy: &Policy) -> Result<EnrollRules, PolicyError> {
        policy.check()?;
        Ok(EnrollRules {
            ek_roots: policy.ek_root_ders()?,
            require_ek_certificate: policy.require_ek_certificate,
            require_ak_no_da: policy.require_ak_no_da,
        })
    }
}

/// A challenge sent and not yet answered. Holds the expected credential:
/// store it where only the verifier can read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnrollment {
    /// The AK Name the credential is sealed to.
    pub ak_name: TpmName,
    /// The EK's Name.
    pub ek_name: TpmName,
    /// The credential the TPM must give back.
    #[serde(with = "serde_bytes")]
    pub credential: Vec<u8>,
    /// Whether the EK's certificate chained to a configured root.
    pub ek_certified: bool,
    /// The chain found, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_chain: Option<EkChainInfo>,
}

/// Why enrollment failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The verifier's policy is unusable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The EK public area does not parse.
    #[error("EK public area is malformed: {0}")]
    MalformedEk(ParseError),
    /// The AK public area does not parse.
    #[error("AK public area is malformed: {0}")]
    MalformedAk(ParseError),
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
    /// The policy requires an EK certificate and none was sent.
    #[error("the policy requires an EK certificate; the request carries none")]
    EkCertificateMissing,
    /// The EK certificate does not chain to a configured root.
    #[error("EK certificate: {0}")]
    EkCertificate(EkError),
    /// The EK public area is not the key the certificate certifies.
    #[error("the EK public area (Name {ek_name}) is not the key its certificate (issued by \"{issuer}\") certifies")]
    EkNotCertified {
        /// The EK's Name.
        ek_name: TpmName,
        /// The certificate's issuer.
        issuer: String,
    },
    /// The credential could not be made for this EK.
    #[error("credential: {0}")]
    Credential(#[from] CredentialError),
    /// The party's answer is not the credential.
    #[error("the answer to the credential challenge is wrong: the AK {ak_name} is not in the TPM holding this EK")]
    WrongAnswer {
        /// The AK Name challenged.
        ak_name: TpmName,
    },
}

/// Checks an enrollment request and makes its credential challenge.
/// `credential` (the secret, e.g. 32 random bytes) and `ephemeral` (the
/// ECDH scalar: 32 bytes for a P-256 EK, 48 for P-384) come from the
/// caller's OS RNG. With `now` (unix seconds) certificate validity is
/// checked too.
pub fn challenge(
    request: &EnrollmentRequest,
    rules: &EnrollRules,
    credential: &[u8],
    ephemeral: &[u8],
    now: Option<i64>,
) -> Result<(PendingEnrollment, MadeCredential), EnrollError> {
    if rules.require_ek_certificate && rules.ek_roots.is_empty() {
        return Err(EnrollError::Policy(PolicyError::NoRoots));
    }
    let ek = TpmtPublic::parse(&request.ek_public).map_err(EnrollError::MalformedEk)?;
    let ak = TpmtPublic::parse(&request.ak_public).map_err(EnrollError::MalformedAk)?;
    let mut required = AK_REQUIRED;
    if rules.require_ak_no_da {
        required = required | ObjectAttributes::NO_DA;
    }
    let found = ak.object_attributes();
    if !found.contains(required) || found.0 & AK_FORBIDDEN.0 != 0 {
        return Err(EnrollError::AkAttributes {
            found,
            required,
            forbidden: AK_FORBIDDEN,
        });
    }
    let roots = &rules.ek_roots;
    let chain: Option<EkChainInfo> = match &request.ek_certificate {
        None if rules.require_ek_certificate => return Err(EnrollError::EkCertificateMissing),
        None => None,
        Some(_) if roots.is_empty() => None,
        Some(cert) => {
            let inter: Vec<Vec<u8>> = request.ek_chain.iter().map(|c| c.to_vec()).collect();
            Some(verify_ek_chain(cert, &inter, roots, now).map_err(EnrollError::EkCertificate)?)
        }
    };
    if let Some(info) = &chain {
        if !ek_matches_certificate(&ek, &info.ek_spki) {
            return Err(EnrollError::EkNotCertified {
                ek_name: ek.name().clone(),
                issuer: info.issuer.clone(),
            });
        }
    }
    let made = make_credential(&ek, ak.name(), credential, ephemeral)?;
    let pending = PendingEnrollment {
        ak_name: ak.name().clone(),
        ek_name: ek.name().clone(),
        credential: credential.to_vec(),
        ek_certified: chain.is_some(),
        ek_chain: chain,
    };
    Ok((pending, made))
}

impl PendingEnrollment {
    /// Checks the party's answer (the credential its TPM recovered) and
    /// returns the verifier state that pins its AK.
    pub fn complete(&self, answer: &[u8]) -> Result<VerifierState, EnrollError> {
        if !quorate_types::ct_eq(&self.credential, answer) {
            return Err(EnrollError::WrongAnswer {
                ak_name: self.ak_name.clone(),
            });
        }
        Ok(VerifierState {
            enrolled_ak: Some(self.ak_name.clone()),
            enrolled_vote_key: None,
            last_clock: None,
        })
    }
}

/// What a completed enrollment binds (the record `quorate enroll complete`
/// writes): the AK Name that credential activation proved to live in the
/// TPM holding this EK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivatedAk {
    /// The AK Name the credential was sealed to and recovered for.
    pub ak_name: TpmName,
    /// The EK it was sealed to.
    pub ek_public: TpmtPublic,
}

/// Why verified evidence is not tied to a party's activated AK and EK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationMismatch {
    /// The evidence's AK is another key than the one activated at
    /// enrollment: e.g. a software key beside a genuine EK certificate.
    #[error("the evidence's AK {found} is not the AK {activated} that credential activation bound to this party's EK: it proves nothing about a TPM")]
    AkNotActivated {
        /// The AK Name enrollment activated.
        activated: TpmName,
        /// The evidence's AK Name.
        found: TpmName,
    },
    /// The evidence carries an EK certificate for another key than the EK
    /// the AK was activated against (copied from another TPM).
    #[error("the evidence's EK certificate certifies another key than the EK (Name {ek_name}) this party's AK was activated against")]
    EkCertificateForAnotherKey {
        /// The activated EK's Name.
        ek_name: TpmName,
    },
    /// The evidence's EK certificate does not parse.
    #[error("the evidence's EK certificate is not one DER certificate")]
    MalformedEkCertificate,
}

impl ActivatedAk {
    /// Checks that evidence whose AK Name is `ak_name` (from
    /// [`crate::verify::AttestationResult::ak_name`]) and which carries
    /// `ek_certificate` belongs to this activation: the same AK, and any EK
    /// certificate is for the activated EK. Run it after
    /// [`crate::verify::verify`] succeeded.
    pub fn check(
        &self,
        ak_name: &TpmName,
        ek_certificate: Option<&[u8]>,
    ) -> Result<(), ActivationMismatch> {
        if *ak_name != self.ak_name {
            return Err(ActivationMismatch::AkNotActivated {
                activated: self.ak_name.clone(),
                found: ak_name.clone(),
            });
        }
        if let Some(cert) = ek_certificate {
            let spki = crate::ekcert::certificate_spki(cert)
                .ok_or(ActivationMismatch::MalformedEkCertificate)?;
            if !ek_matches_certificate(&self.ek_public, &spki) {
                return Err(ActivationMismatch::EkCertificateForAnotherKey {
                    ek_name: self.ek_public.name().clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soft::SoftTpm;
    use crate::verify::verify;
    use crate::{Freshness, PcrIndex};
    use quorate_types::Sha256Digest;
    use ring::rand::SystemRandom;

    macro_rules! vector {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/vectors/",
                $name
            ))
            .as_slice()
        };
    }

    fn tpm2b_inner(b: &[u8]) -> Vec<u8> {
        TpmtPublic::parse_tpm2b(b).unwrap().as_bytes().to_vec()
    }

    fn request() -> EnrollmentRequest {
        EnrollmentRequest {
            ek_public: tpm2b_inner(vector!("ek_ecc384.pub")),
            ek_certificate: Some(serde_bytes::ByteBuf::from(
                vector!("ek_cert_ecc.der").to_vec(),
            )),
            ek_chain: vec![serde_bytes::ByteBuf::from(
                vector!("ek_intermediate.der").to_vec(),
            )],
            ak_public: tpm2b_inner(vector!("ak.pub")),
        }
    }

    fn rules() -> EnrollRules {
        let mut p = Policy::new(vec![Sha256Digest([1; 32])], Sha256Digest([2; 32]));
        p.ek_roots = vec![hex::encode(vector!("ek_root.der"))];
        p.require_ek_certificate = true;
        EnrollRules::from_policy(&p).unwrap()
    }

    #[test]
    fn a_required_certificate_needs_roots() {
        let rules = EnrollRules {
            require_ek_certificate: true,
            ..EnrollRules::default()
        };
        assert_eq!(
            challenge(&request(), &rules, &[5; 32], &[3; 48], None),
            Err(EnrollError::Policy(PolicyError::NoRoots))
        );
        // Without roots and without the requirement, the EK is challenged
        // uncertified.
        let (pending, _) = challenge(
            &request(),
            &EnrollRules::default(),
            &[5; 32],
            &[3; 48],
            None,
        )
        .unwrap();
        assert!(!pending.ek_certified && pending.ek_chain.is_none());
    }

    #[test]
    fn certified_ek_is_challenged_and_the_right_answer_pins_the_ak() {
        let (pending, made) = challenge(&request(), &rules(), &[5; 32], &[3; 48], None).unwrap();
        assert!(pending.ek_certified);
        assert_eq!(pending.ak_name.as_bytes(), vector!("ak.name"));
        assert!(!made.credential_blob.is_empty());
        assert_eq!(
            pending.complete(&[5; 31]),
            Err(EnrollError::WrongAnswer {
                ak_name: pending.ak_name.clone()
            })
        );
        assert!(matches!(
            pending.complete(&[6; 32]),
            Err(EnrollError::WrongAnswer { .. })
        ));
        let state = pending.complete(&[5; 32]).unwrap();
        assert_eq!(state.enrolled_ak.as_ref(), Some(&pending.ak_name));
    }

    #[test]
    fn an_ek_that_is_not_the_certified_key_is_refused() {
        let mut req = request();
        req.ek_public = tpm2b_inner(vector!("cred_ek256.pub"));
        assert!(matches!(
            challenge(&req, &rules(), &[5; 32], &[3; 32], None),
            Err(EnrollError::EkNotCertified { .. })
        ));
        let mut req = request();
        req.ek_certificate = None;
        assert_eq!(
            challenge(&req, &rules(), &[5; 32], &[3; 48], None),
            Err(EnrollError::EkCertificateMissing)
        );
        let mut req = request();
        req.ek_chain.clear();
        assert!(matches!(
            challenge(&req, &rules(), &[5; 32], &[3; 48], None),
            Err(EnrollError::EkCertificate(EkError::UnknownIssuer { .. }))
        ));
    }

    #[test]
    fn a_non_restricted_ak_is_refused() {
        let rng = SystemRandom::new();
        let mut tpm = SoftTpm::launch(
            &rng,
            PcrIndex::DEFAULT_MEASUREMENT,
            &[1; 32].into_digest(),
            &[2; 32].into_digest(),
            1,
        )
        .unwrap();
        tpm.replace_ak(&rng, ObjectAttributes::SIGN | ObjectAttributes::FIXED_TPM)
            .unwrap();
        let mut req = request();
        req.ak_public = tpm.ak_public.as_bytes().to_vec();
        assert!(matches!(
            challenge(&req, &rules(), &[5; 32], &[3; 48], None),
            Err(EnrollError::AkAttributes { .. })
        ));
    }

    #[test]
    fn the_pinned_ak_is_then_enforced_by_verify() {
        let rng = SystemRandom::new();
        let (exe, cfg) = ([1; 32].into_digest(), [2; 32].into_digest());
        let mut tpm = SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &exe, &cfg, 1).unwrap();
        let mut req = request();
        req.ak_public = tpm.ak_public.as_bytes().to_vec();
        let (pending, _) = challenge(&req, &rules(), &[5; 32], &[3; 48], None).unwrap();
        let mut state = pending.complete(&[5; 32]).unwrap();
        let pol = Policy::new(vec![exe], cfg);
        let fresh = Freshness::Nonce(vec![1]);
        let ev = tpm
            .evidence(&rng, &fresh, &Sha256Digest([3; 32]), &pol.quoted_pcrs())
            .unwrap();
        verify(&ev, &fresh, &pol, &mut state).unwrap();
        let mut other =
            SoftTpm::launch(&rng, PcrIndex::DEFAULT_MEASUREMENT, &exe, &cfg, 1).unwrap();
        let ev = other
            .evidence(&rng, &fresh, &Sha256Digest([3; 32]), &pol.quoted_pcrs())
            .unwrap();
        assert!(matches!(
            verify(&ev, &fresh, &pol, &mut state),
            Err(crate::verify::AttestationError::AkNotEnrolled { .. })
        ));
    }

    trait IntoDigest {
        fn into_digest(self) -> Sha256Digest;
    }
    impl IntoDigest for [u8; 32] {
        fn into_digest(self) -> Sha256Digest {
            Sha256Digest(self)
        }
    }
}
