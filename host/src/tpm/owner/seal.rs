//! Sealed data objects: small secrets (an MPC key share) that only this TPM,
//! while the measured coordinator runs, can open.
//!
//! A secret is sealed as a TPM keyed-hash object with sensitive data,
//! created under the storage root key with the vote key's authorisation:
//! the same `authPolicy` (TPM2_PolicyPCR over the measurement PCR) when the
//! vote key has one, so a sealed share unseals only while the PCR holds the
//! approved executable's measurement, and only on the TPM that made it
//! (fixedTPM, fixedParent). What leaves the TPM is the public area and the
//! private area wrapped under the SRK: storing them on disk reveals nothing.
//! TPM2B_SENSITIVE_DATA holds at most 128 bytes; the secrets sealed here
//! are 32-byte FROST signing shares.

use serde::{Deserialize, Serialize};
use tss_esapi::{
    attributes::ObjectAttributesBuilder,
    interface_types::session_handles::AuthSession,
    interface_types::{algorithm::HashingAlgorithm, algorithm::PublicAlgorithm},
    structures::{
        Digest, KeyedHashScheme, Private, Public, PublicBuilder, PublicKeyedHashParameters,
        SensitiveData,
    },
    traits::{Marshall, UnMarshall},
};
use zeroize::Zeroizing;

use super::super::keys::{self, KeyAuth};
use super::super::TpmError;
use super::{sha256_selection, Owner, TpmHandle};
use tss_esapi::structures::Digest as PolicyDigest;

/// Largest secret a sealed data object holds (TPM2B_SENSITIVE_DATA).
pub const MAX_SEALED_BYTES: usize = 128;

/// A sealed secret as stored: the TPM's public area and its SRK-wrapped
/// private area, plus how it is authorised. Opaque to anyone without the
/// TPM that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob {
    /// The marshalled TPMT_PUBLIC of the sealed object.
    #[serde(with = "serde_bytes")]
    pub public: Vec<u8>,
    /// The private area, encrypted under the SRK (TPM2B_PRIVATE contents).
    #[serde(with = "serde_bytes")]
    pub private: Vec<u8>,
    /// The authorisation the object was sealed with (the vote key's).
    pub auth: KeyAuth,
}

fn sealed_template(auth: &KeyAuth) -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_user_with_auth(matches!(auth, KeyAuth::Password))
        .build()
        .map_err(TpmError::tss("build the sealed object's attributes"))?;
    let mut builder = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default());
    if let KeyAuth::PolicyPcr { digest, .. } = auth {
        builder = builder.with_auth_policy(
            PolicyDigest::try_from(digest.to_vec())
                .map_err(TpmError::tss("set the sealed object's authPolicy"))?,
        );
    }
    builder
        .build()
        .map_err(TpmError::tss("build the sealed object's template"))
}

impl Owner {
    fn vote_key_auth(&self) -> Result<KeyAuth, TpmError> {
        Ok(self
            .vote
            .as_ref()
            .ok_or(TpmError::NoVoteKey)?
            .blob
            .spec
            .auth
            .clone())
    }

    fn seal(&mut self, secret: &[u8]) -> Result<SealedBlob, TpmError> {
        if secret.is_empty() || secret.len() > MAX_SEALED_BYTES {
            return Err(TpmError::SealSize(secret.len()));
        }
        let auth = self.vote_key_auth()?;
        let template = sealed_template(&auth)?;
        let data = SensitiveData::try_from(secret.to_vec())
            .map_err(TpmError::tss("wrap the secret to seal"))?;
        // The SRK needs a slot beside the loaded vote key: free the AK's.
        self.unload_ak();
        let ctx = self.ctx()?;
        let (srk, _) = keys::create_srk(ctx)?;
        let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.create(srk, template, None, Some(data), None, None)
        });
        keys::flush(ctx, srk.into());
        let res = res.map_err(TpmError::tss("TPM2_Create of the sealed object"))?;
        Ok(SealedBlob {
            public: res
                .out_public
                .marshall()
                .map_err(TpmError::tss("marshal the sealed object's public area"))?,
            private: res.out_private.value().to_vec(),
            auth,
        })
    }

    fn unseal(&mut self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let public = Public::unmarshall(&blob.public)
            .map_err(TpmError::tss("parse the sealed object's public area"))?;
        let private = Private::try_from(blob.private.clone())
            .map_err(TpmError::tss("parse the sealed object's private area"))?;
        // Loading needs the SRK and then the object beside the vote key.
        self.unload_ak();
        let ctx = self.ctx()?;
        let (srk, _) = keys::create_srk(ctx)?;
        let loaded = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.load(srk, private, public)
        });
        keys::flush(ctx, srk.into());
        let handle = loaded.map_err(TpmError::tss(
            "load the sealed object (made on another TPM, or under another SRK?)",
        ))?;
        let res = self.unseal_loaded(handle, &blob.auth);
        if let Some(ctx) = self.ctx.as_mut() {
            keys::flush(ctx, handle.into());
        }
        res
    }

    fn unseal_loaded(
        &mut self,
        handle: tss_esapi::handles::KeyHandle,
        auth: &KeyAuth,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let session = match auth {
            KeyAuth::Password => AuthSession::Password,
            KeyAuth::PolicyPcr { pcr, .. } => {
                let ps = self.policy_session()?;
                let sel = sha256_selection(*pcr)?;
                self.ctx()?
                    .policy_pcr(ps, Digest::default(), sel)
                    .map_err(TpmError::tss("TPM2_PolicyPCR for the sealed object"))?;
                AuthSession::from(ps)
            }
        };
        let res = self
            .ctx()?
            .execute_with_session(Some(session), |c| c.unseal(handle.into()));
        match res {
            Ok(data) => Ok(Zeroizing::new(data.value().to_vec())),
            Err(e) => {
                // A failed authorisation leaves the policy digest extended.
                if let Some(ps) = self.policy_session.take() {
                    if let Some(ctx) = self.ctx.as_mut() {
                        keys::flush(ctx, tss_esapi::handles::SessionHandle::from(ps).into());
                    }
                }
                Err(TpmError::tss(
                    "TPM2_Unseal (the measurement PCR no longer holds the approved value?)",
                )(e))
            }
        }
    }
}

impl TpmHandle {
    /// Seals `secret` (1..=128 bytes) to this TPM under the vote key's
    /// authorisation. Nothing of the secret is in the returned blob.
    pub async fn seal(&self, secret: Zeroizing<Vec<u8>>) -> Result<SealedBlob, TpmError> {
        self.run(move |o| o.with_recovery("sealing", |o| o.seal(&secret)))
            .await
    }

    /// Opens a blob [`TpmHandle::seal`] made on this TPM; fails on another
    /// TPM, or while the measurement PCR does not hold the approved value.
    pub async fn unseal(&self, blob: SealedBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.run(move |o| o.with_recovery("unsealing", |o| o.unseal(&blob)))
            .await
    }
}
