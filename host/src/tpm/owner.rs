//! The one thread that owns the `tss_esapi::Context`, and [`TpmHandle`],
//! the cloneable async front the rest of the host uses.
//!
//! Every TPM command is blocking I/O (0.1–6 ms on swtpm, ~200 ms on a
//! hardware TPM) and the Context takes `&mut self`, so it lives on a
//! dedicated OS thread. Callers send a job into one of two bounded lanes
//! (which apply back-pressure) and await a oneshot reply: consensus
//! signatures in the consensus lane, which the owner always empties first,
//! everything else in the background lane ([`lanes`]). While running, only
//! the vote key is loaded (one of swtpm's three transient slots); the SRK is
//! re-created from its template and flushed whenever a key is loaded.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tss_esapi::{
    attributes::SessionAttributesBuilder,
    constants::{
        tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK},
        SessionType,
    },
    handles::{KeyHandle, PcrHandle, SessionHandle},
    interface_types::{
        algorithm::HashingAlgorithm,
        session_handles::{AuthSession, PolicySession},
    },
    structures::{
        Data, Digest, DigestValues, HashScheme, HashcheckTicket, PcrSelectionList, PcrSlot,
        SignatureScheme, SymmetricDefinition,
    },
    traits::Marshall,
    tss2_esys::TPMT_TK_HASHCHECK,
    Context,
};

use quorate_firmware::crypto::{PublicKey, Signature};

mod lanes;
mod seal;
pub use lanes::Priority;
pub use seal::{SealedBlob, MAX_SEALED_BYTES};

use super::keys::{self, EkTemplate, KeyAuth, KeyBlob, KeyRole, KeySpec, KeyStore};
use super::tcti::Tcti;
use super::TpmError;

/// How long connecting to the TPM (probe + ESYS initialisation + flushing
/// stale handles) may take before [`TpmHandle::open`] gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect timeout of the reachability probe of a swtpm TCTI.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Queued requests per lane before callers wait.
const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce(&mut Owner) + Send>;

/// A signature from the TPM with its raw form.
#[derive(Debug, Clone)]
pub struct TpmSigned {
    /// Fixed-form r || s, as the firmware verifies it.
    pub signature: Signature,
    /// The TPMT_SIGNATURE exactly as the TPM returned it (marshalled).
    pub tpmt_signature: Vec<u8>,
}

/// What [`TpmHandle::create_vote_key`] made.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The blobs to save.
    pub blob: KeyBlob,
    /// The Name of the SRK the private blob is wrapped under.
    pub srk_name: Vec<u8>,
    /// The Name the TPM computed for the key (checked against ours).
    pub name: Vec<u8>,
}

/// What [`TpmHandle::create_ak`] made.
#[derive(Debug, Clone)]
pub struct CreatedAk {
    /// The AK's blobs (wrapped under the EK).
    pub blob: KeyBlob,
    /// The Name of the EK it was created under.
    pub ek_name: Vec<u8>,
    /// The template of that EK.
    pub ek_template: EkTemplate,
    /// The EK's public area (marshalled TPMT_PUBLIC).
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) the TPM holds for that EK, if any.
    pub ek_certificate: Option<Vec<u8>>,
}

/// The AK as the owner keeps it: its blobs and the EK it is loaded under.
#[derive(Debug, Clone)]
struct AkSlot {
    blob: KeyBlob,
    ek_name: Option<Vec<u8>>,
    ek_template: EkTemplate,
}

/// A TPM2_Quote or TPM2_Certify: the exact signed bytes and the signature.
#[derive(Debug, Clone)]
pub struct AttestOutput {
    /// The marshalled TPMS_ATTEST the TPM signed.
    pub attest: Vec<u8>,
    /// The marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// clockInfo.resetCount (not obfuscated: the AK is in the endorsement
    /// hierarchy): how many times the TPM was reset (booted).
    pub reset_count: u32,
}

/// The async, cloneable front of the TPM owner thread. All clones talk to
/// the same thread; it stops when the last clone is dropped or on
/// [`TpmHandle::close`].
#[derive(Clone, Debug)]
pub struct TpmHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: lanes::Senders<Job>,
    tcti: Tcti,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// State of the owner thread; reachable only from jobs run on it.
pub struct Owner {
    tcti: Tcti,
    ctx: Option<Context>,
    vote: Option<VoteSlot>,
    ak: Option<AkSlot>,
    /// The AK while loaded: kept after first use (loading it costs an EK
    /// CreatePrimary and a policy session), flushed before any operation
    /// that needs two more transient slots.
    ak_handle: Option<KeyHandle>,
    policy_session: Option<PolicySession>,
    closing: bool,
}

struct VoteSlot {
    blob: KeyBlob,
    srk_name: Option<Vec<u8>>,
    handle: Option<KeyHandle>,
}

impl TpmHandle {
    /// Connects to the TPM at `tcti` on a new owner thread and flushes the
    /// transient objects a previous process left loaded. Fails within
    /// [`CONNECT_TIMEOUT`] with an error naming the TCTI if nothing answers.
    pub async fn open(tcti: &Tcti) -> Result<TpmHandle, TpmError> {
        Self::open_with_timeout(tcti, CONNECT_TIMEOUT).await
    }

    /// As [`TpmHandle::open`], with another connect deadline.
    pub async fn open_with_timeout(tcti: &Tcti, timeout: Duration) -> Result<TpmHandle, TpmError> {
        let (tx, rx) = lanes::lanes::<Job>(QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_tcti = tcti.clone();
        let thread = std::thread::Builder::new()
            .name("tpm-owner".into())
            .spawn(move || owner_main(thread_tcti, rx, ready_tx))
            .map_err(|e| TpmError::Connect {
                tcti: tcti.to_string(),
                reason: format!("cannot start the TPM owner thread: {e}"),
            })?;
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(TpmHandle {
                inner: Arc::new(Inner {
                    tx,
                    tcti: tcti.clone(),
                    thread: Mutex::new(Some(thread)),
                }),
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(TpmError::OwnerGone),
            // The thread is stuck inside the TSS library; it exits on its own
            // when the call returns (its job channel is closed by then).
            Err(_) => Err(TpmError::Timeout {
                tcti: tcti.to_string(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Opens the TPM and loads the vote key (and sets the AK, if the party
    /// has one) of the party whose data dir is `data_dir`, checking that
    /// this is the TPM it was provisioned on.
    pub async fn open_party(data_dir: &Path, tcti: &Tcti) -> Result<TpmHandle, TpmError> {
        let store = KeyStore::new(data_dir);
        let manifest = store.manifest()?;
        let srk_name = hex::decode(&manifest.srk_name).map_err(|e| TpmError::Store {
            path: store.manifest_path(),
            reason: format!("srk_name is not hex: {e}"),
        })?;
        let blob = store.load(KeyRole::Vote)?;
        let ak = if manifest.keys.iter().any(|k| k.spec.role == KeyRole::Ak) {
            let ek_name = match &manifest.ek_name {
                Some(n) => Some(hex::decode(n).map_err(|e| TpmError::Store {
                    path: store.manifest_path(),
                    reason: format!("ek_name is not hex: {e}"),
                })?),
                None => None,
            };
            Some((store.load(KeyRole::Ak)?, ek_name))
        } else {
            None
        };
        let tpm = TpmHandle::open(tcti).await?;
        tpm.load_vote_key(blob, Some(srk_name)).await?;
        if let Some((blob, ek_name)) = ak {
            tpm.set_ak(blob, ek_name, manifest.ek_template).await?;
        }
        Ok(tpm)
    }

    /// The TCTI this handle talks to.
    pub fn tcti(&self) -> &Tcti {
        &self.inner.tcti
    }

    /// Runs `f` on the owner thread in the background lane and returns its
    /// result. The building block of every TPM operation; `f` must flush
    /// what it loads.
    pub async fn run<T, F>(&self, f: F) -> Result<T, TpmError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Owner) -> Result<T, TpmError> + Send + 'static,
    {
        self.run_at(Priority::Background, f).await
    }

    /// As [`TpmHandle::run`], in the lane of `priority`.
    pub async fn run_at<T, F>(&self, priority: Priority, f: F) -> Result<T, TpmError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Owner) -> Result<T, TpmError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |owner: &mut Owner| {
            let _ = reply_tx.send(f(owner));
        });
        self.inner
            .tx
            .lane(priority)
            .send(job)
            .await
            .map_err(|_| TpmError::OwnerGone)?;
        reply_rx.await.map_err(|_| TpmError::OwnerGone)?
    }

    /// Creates a vote key from `spec` under the SRK (nothing stays loaded).
    pub async fn create_vote_key(&self, spec: KeySpec) -> Result<CreatedKey, TpmError> {
        self.run(move |o| {
            o.unload_ak();
            let ctx = o.ctx()?;
            let (blob, srk_name) = keys::create_key(ctx, &spec)?;
            // Ask the TPM for the Name (load under the SRK, read, flush) so a
            // wrong Name computation on our side cannot go unnoticed.
            let handle = keys::load_key(ctx, &blob, Some(&srk_name))?;
            let read = ctx.read_public(handle);
            keys::flush(ctx, handle.into());
            let (_, name, _) = read.map_err(TpmError::tss("read the new key's public area"))?;
            Ok(CreatedKey {
                blob,
                srk_name,
                name: name.value().to_vec(),
            })
        })
        .await
    }

    /// Loads `blob` as the vote key used by [`TpmHandle::sign`] (replacing
    /// any previous one). With `srk_name`, refuses a TPM whose SRK differs.
    pub async fn load_vote_key(
        &self,
        blob: KeyBlob,
        srk_name: Option<Vec<u8>>,
    ) -> Result<(), TpmError> {
        self.run(move |o| {
            o.unload_vote();
            o.unload_ak();
            let handle = keys::load_key(o.ctx()?, &blob, srk_name.as_deref())?;
            o.vote = Some(VoteSlot {
                blob,
                srk_name,
                handle: Some(handle),
            });
            Ok(())
        })
        .await
    }

    /// Creates an attestation key under the EK (nothing stays loaded). The
    /// EK is the one whose certificate the TPM holds (ECC P-256, else ECC
    /// P-384, else RSA 2048: [`EkTemplate::PREFERENCE`]), re-created from
    /// its TCG default template; with no EK certificate, ECC P-256.
    pub async fn create_ak(&self) -> Result<CreatedAk, TpmError> {
        self.run(|o| {
            o.unload_ak();
            let ctx = o.ctx()?;
            let (ek_template, ek_certificate) = keys::choose_ek(ctx)?;
            let ek_public = read_ek_public(ctx, ek_template)?;
            let (blob, ek_name) = keys::create_ak(ctx, ek_template)?;
            Ok(CreatedAk {
                blob,
                ek_name,
                ek_template,
                ek_public,
                ek_certificate,
            })
        })
        .await
    }

    /// Sets the AK used by [`TpmHandle::quote`] and
    /// [`TpmHandle::certify_vote_key`]; it is loaded per use under the EK
    /// made from `ek_template`. With `ek_name`, refuses a TPM whose EK
    /// differs.
    pub async fn set_ak(
        &self,
        blob: KeyBlob,
        ek_name: Option<Vec<u8>>,
        ek_template: EkTemplate,
    ) -> Result<(), TpmError> {
        self.run(move |o| {
            o.unload_ak();
            o.ak = Some(AkSlot {
                blob,
                ek_name,
                ek_template,
            });
            Ok(())
        })
        .await
    }

    /// The EK certificate (DER) the TPM holds for the AK's EK, if any.
    pub async fn ek_certificate(&self) -> Result<Option<Vec<u8>>, TpmError> {
        self.run(|o| {
            let template = o.ek_template();
            keys::read_ek_certificate(o.ctx()?, template)
        })
        .await
    }

    /// TPM2_Quote by the AK over the SHA-256 bank of `pcrs`, with
    /// `qualifying_data` (at most 64 bytes) as extraData.
    pub async fn quote(
        &self,
        pcrs: Vec<u8>,
        qualifying_data: Vec<u8>,
    ) -> Result<AttestOutput, TpmError> {
        self.run(move |o| o.with_recovery("quote", |o| o.quote(&pcrs, &qualifying_data)))
            .await
    }

    /// TPM2_Certify of the loaded vote key by the AK.
    pub async fn certify_vote_key(
        &self,
        qualifying_data: Vec<u8>,
    ) -> Result<AttestOutput, TpmError> {
        self.run(move |o| o.with_recovery("certify", |o| o.certify_vote(&qualifying_data)))
            .await
    }

    /// TPM2_ActivateCredential with the AK and the EK: returns the
    /// credential a verifier encrypted to this TPM's EK for the AK's Name
    /// (see [`Owner`]'s docs on the byte forms). Proves to the verifier that
    /// the AK lives in the same TPM as the EK.
    pub async fn activate_credential(
        &self,
        id_object: Vec<u8>,
        secret: Vec<u8>,
    ) -> Result<Vec<u8>, TpmError> {
        self.run(move |o| o.activate_credential(&id_object, &secret))
            .await
    }

    /// The EK's public area (marshalled TPMT_PUBLIC): what a verifier
    /// encrypts a credential-activation challenge to. Its Name is the one
    /// recorded as the AK's parent.
    pub async fn ek_public(&self) -> Result<Vec<u8>, TpmError> {
        self.run(|o| {
            o.unload_ak();
            let template = o.ek_template();
            read_ek_public(o.ctx()?, template)
        })
        .await
    }

    /// TPM2_MakeCredential by this TPM for its own EK and `object_name`:
    /// returns (credential blob, encrypted secret), the contents of
    /// TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET. For tests and tooling.
    pub async fn make_credential(
        &self,
        credential: Vec<u8>,
        object_name: Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        self.run(move |o| o.make_credential(&credential, &object_name))
            .await
    }

    /// The TPM's resetCount (from a quote by the AK: TPM2_ReadClock is not
    /// in tss-esapi 7.7).
    pub async fn reset_count(&self) -> Result<u32, TpmError> {
        Ok(self.quote(vec![0], Vec::new()).await?.reset_count)
    }

    /// Reads the SHA-256 bank value of `pcr`.
    pub async fn pcr_read(&self, pcr: u8) -> Result<[u8; 32], TpmError> {
        self.run(move |o| o.with_recovery("PCR read", |o| o.pcr_read(pcr)))
            .await
    }

    /// Extends the SHA-256 bank of `pcr` with `digest`.
    pub async fn pcr_extend(&self, pcr: u8, digest: [u8; 32]) -> Result<(), TpmError> {
        self.run(move |o| o.pcr_extend(pcr, &digest)).await
    }

    /// The loaded vote key's public point.
    pub async fn vote_public_key(&self) -> Result<PublicKey, TpmError> {
        self.run(|o| {
            o.vote
                .as_ref()
                .ok_or(TpmError::NoVoteKey)?
                .blob
                .p256_point()
        })
        .await
    }

    /// Signs `message` with the vote key: SHA-256 here, TPM2_Sign (ECDSA
    /// P-256) there. Survives a TPM restart or a broken connection: the
    /// owner reconnects, reloads the key from its blobs and retries once.
    pub async fn sign(&self, message: Vec<u8>) -> Result<Signature, TpmError> {
        Ok(self.sign_tpmt(message).await?.signature)
    }

    /// As [`TpmHandle::sign`], also returning the TPMT_SIGNATURE bytes.
    pub async fn sign_tpmt(&self, message: Vec<u8>) -> Result<TpmSigned, TpmError> {
        self.sign_at(Priority::Background, message).await
    }

    /// As [`TpmHandle::sign`] in the consensus lane: for votes, proposals
    /// and batches only, which then never wait behind attestation work.
    pub async fn sign_consensus(&self, message: Vec<u8>) -> Result<Signature, TpmError> {
        Ok(self.sign_at(Priority::Consensus, message).await?.signature)
    }

    async fn sign_at(&self, priority: Priority, message: Vec<u8>) -> Result<TpmSigned, TpmError> {
        let digest: [u8; 32] = sha256(&message);
        self.run_at(priority, move |o| o.sign_digest(&digest)).await
    }

    /// Flushes what is loaded, closes the TPM connection and joins the
    /// owner thread. Other clones get [`TpmError::OwnerGone`] afterwards.
    pub async fn close(&self) -> Result<(), TpmError> {
        let res = self
            .run(|o| {
                o.closing = true;
                Ok(())
            })
            .await;
        let thread = self
            .inner
            .thread
            .lock()
            .map_err(|_| TpmError::OwnerGone)?
            .take();
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|_| TpmError::OwnerGone)?
                .map_err(|_| TpmError::OwnerGone)?;
        }
        match res {
            Err(TpmError::OwnerGone) => Ok(()),
            other => other,
        }
    }
}

fn sha256(message: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, message);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn owner_main(tcti: Tcti, mut rx: lanes::Lanes<Job>, ready: oneshot::Sender<Result<(), TpmError>>) {
    // A runtime without I/O or timers, only to wait on both lanes at once;
    // jobs run outside it, on this thread.
    let waiter = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(TpmError::Connect {
                tcti: tcti.to_string(),
                reason: format!("cannot start the TPM owner's job queue: {e}"),
            }));
            return;
        }
    };
    let mut owner = Owner {
        tcti,
        ctx: None,
        vote: None,
        ak: None,
        ak_handle: None,
        policy_session: None,
        closing: false,
    };
    if let Err(e) = owner.reconnect() {
        let _ = ready.send(Err(e));
        return;
    }
    if ready.send(Ok(())).is_err() {
        owner.release();
        return;
    }
    while let Some(job) = waiter.block_on(rx.next()) {
        job(&mut owner);
        if owner.closing {
            break;
        }
    }
    owner.release();
}

impl Owner {
    /// The Context. Reconnects if an earlier recovery left none.
    pub fn ctx(&mut self) -> Result<&mut Context, TpmError> {
        if self.ctx.is_none() {
            self.reconnect()?;
        }
        self.ctx.as_mut().ok_or(TpmError::OwnerGone)
    }

    /// The TCTI this owner talks to.
    pub fn tcti(&self) -> &Tcti {
        &self.tcti
    }

    /// Drops the Context (flushing what it tracks), opens a fresh one and
    /// flushes stale transient objects.
    fn reconnect(&mut self) -> Result<(), TpmError> {
        if let Some(slot) = self.vote.as_mut() {
            slot.handle = None;
        }
        self.policy_session = None;
        self.ak_handle = None;
        // Dropping the old Context flushes the objects it tracks; on a
        // restarted TPM they are gone and those flushes fail harmlessly.
        self.ctx = None;
        let mut ctx = connect(&self.tcti)?;
        let n = keys::flush_stale_transients(&mut ctx)?;
        if n > 0 {
            tracing::info!(tcti = %self.tcti, "flushed {n} stale transient object(s)");
        }
        self.ctx = Some(ctx);
        Ok(())
    }

    fn unload_vote(&mut self) {
        if let Some(VoteSlot {
            handle: Some(h), ..
        }) = self.vote.take()
        {
            if let Some(ctx) = self.ctx.as_mut() {
                keys::flush(ctx, h.into());
            }
        }
    }

    /// The loaded vote key's handle, loading it from its blob if needed.
    fn vote_handle(&mut self) -> Result<KeyHandle, TpmError> {
        let slot = self.vote.as_ref().ok_or(TpmError::NoVoteKey)?;
        if let Some(h) = slot.handle {
            return Ok(h);
        }
        let (blob, srk) = (slot.blob.clone(), slot.srk_name.clone());
        let h = keys::load_key(self.ctx()?, &blob, srk.as_deref())?;
        if let Some(slot) = self.vote.as_mut() {
            slot.handle = Some(h);
        }
        Ok(h)
    }

    fn sign_digest(&mut self, digest: &[u8; 32]) -> Result<TpmSigned, TpmError> {
        self.with_recovery("signing", |o| o.try_sign_fresh_on_error(digest))
    }

    /// Runs an idempotent operation; if it fails because the connection
    /// broke or the TPM restarted, reconnects (objects are reloaded from
    /// their blobs on demand) and runs it once more. Never used for PCR
    /// extends: a lost reply does not prove the extend did not happen.
    pub fn with_recovery<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Owner) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        match f(self) {
            Err(e) if e.is_recoverable() => {
                tracing::warn!(tcti = %self.tcti, "TPM {what} failed ({e}); reconnecting and reloading keys");
                self.reconnect()?;
                f(self)
            }
            other => other,
        }
    }

    /// Signs; if that fails, drops the policy session: a failed
    /// authorisation leaves its policy digest extended, so reusing it would
    /// fail again even once the PCR is right.
    fn try_sign_fresh_on_error(&mut self, digest: &[u8; 32]) -> Result<TpmSigned, TpmError> {
        let res = self.try_sign(digest);
        if res.is_err() {
            if let Some(ps) = self.policy_session.take() {
                if let Some(ctx) = self.ctx.as_mut() {
                    keys::flush(ctx, SessionHandle::from(ps).into());
                }
            }
        }
        res
    }

    /// The policy session used for PolicyPCR-bound keys, started once and
    /// kept (continueSession) across signatures.
    fn policy_session(&mut self) -> Result<PolicySession, TpmError> {
        if let Some(s) = self.policy_session {
            return Ok(s);
        }
        let ctx = self.ctx()?;
        let s = start_session(ctx, SessionType::Policy, "start a policy session")?;
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .build();
        ctx.tr_sess_set_attributes(s, attrs, mask)
            .map_err(TpmError::tss("set the policy session's attributes"))?;
        let ps = PolicySession::try_from(s).map_err(TpmError::tss("policy session handle"))?;
        self.policy_session = Some(ps);
        Ok(ps)
    }

    /// The session that authorises use of the vote key: a password, or the
    /// policy session after TPM2_PolicyPCR with the PCR's current value.
    fn vote_auth(&mut self) -> Result<AuthSession, TpmError> {
        let auth = self
            .vote
            .as_ref()
            .ok_or(TpmError::NoVoteKey)?
            .blob
            .spec
            .auth
            .clone();
        match auth {
            KeyAuth::Password => Ok(AuthSession::Password),
            KeyAuth::PolicyPcr { pcr, .. } => {
                let ps = self.policy_session()?;
                let sel = sha256_selection(pcr)?;
                self.ctx()?
                    .policy_pcr(ps, Digest::default(), sel)
                    .map_err(TpmError::tss(
                        "TPM2_PolicyPCR on the vote key's policy session",
                    ))?;
                Ok(AuthSession::from(ps))
            }
        }
    }

    fn try_sign(&mut self, digest: &[u8; 32]) -> Result<TpmSigned, TpmError> {
        let key = self.vote_handle()?;
        let auth = self.vote_auth()?;
        let ctx = self.ctx()?;
        let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(TpmError::tss("build the null hashcheck ticket"))?;
        let digest = Digest::try_from(digest.to_vec()).map_err(TpmError::tss("wrap the digest"))?;
        let sig = ctx
            .execute_with_session(Some(auth), |c| {
                c.sign(
                    key,
                    digest,
                    SignatureScheme::EcDsa {
                        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                    },
                    validation,
                )
            })
            .map_err(TpmError::tss("TPM2_Sign with the vote key"))?;
        let tpmt_signature = sig
            .marshall()
            .map_err(TpmError::tss("marshal the TPMT_SIGNATURE"))?;
        let tss_esapi::structures::Signature::EcDsa(ecc) = sig else {
            return Err(TpmError::BadSignature);
        };
        let signature = Signature::from_r_s(ecc.signature_r().value(), ecc.signature_s().value())
            .ok_or(TpmError::BadSignature)?;
        Ok(TpmSigned {
            signature,
            tpmt_signature,
        })
    }

    /// Flushes the vote key, the AK and the policy session and closes the
    /// Context.
    fn release(&mut self) {
        self.unload_vote();
        self.unload_ak();
        if let (Some(ps), Some(ctx)) = (self.policy_session.take(), self.ctx.as_mut()) {
            keys::flush(ctx, SessionHandle::from(ps).into());
        }
        self.ctx = None;
    }

    /// Flushes the AK if it is loaded.
    fn unload_ak(&mut self) {
        if let (Some(h), Some(ctx)) = (self.ak_handle.take(), self.ctx.as_mut()) {
            keys::flush(ctx, h.into());
        }
    }

    /// Runs `f` with the AK loaded (loading it on first use).
    fn with_ak<T>(
        &mut self,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let ak = match self.ak_handle {
            Some(h) => h,
            None => {
                let slot = self.ak.clone().ok_or(TpmError::NoAk)?;
                let h = keys::load_ak(
                    self.ctx()?,
                    &slot.blob,
                    slot.ek_template,
                    slot.ek_name.as_deref(),
                )?;
                self.ak_handle = Some(h);
                h
            }
        };
        f(self.ctx()?, ak)
    }

    /// TPM2_Quote of the SHA-256 bank of `pcrs` by the AK.
    fn quote(&mut self, pcrs: &[u8], qualifying_data: &[u8]) -> Result<AttestOutput, TpmError> {
        let sel = sha256_selection_of(pcrs)?;
        let qd = Data::try_from(qualifying_data.to_vec())
            .map_err(TpmError::tss("qualifying data (at most 64 bytes)"))?;
        self.with_ak(|ctx, ak| {
            let (attest, sig) = ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.quote(ak, qd, SignatureScheme::Null, sel)
                })
                .map_err(TpmError::tss("TPM2_Quote with the AK"))?;
            attest_output(&attest, &sig)
        })
    }

    /// TPM2_Certify of the vote key by the AK.
    fn certify_vote(&mut self, qualifying_data: &[u8]) -> Result<AttestOutput, TpmError> {
        let vote = self.vote_handle()?;
        let qd = Data::try_from(qualifying_data.to_vec())
            .map_err(TpmError::tss("qualifying data (at most 64 bytes)"))?;
        self.with_ak(|ctx, ak| {
            let (attest, sig) = ctx
                .execute_with_sessions(
                    (
                        Some(AuthSession::Password),
                        Some(AuthSession::Password),
                        None,
                    ),
                    |c| c.certify(vote.into(), ak, qd, SignatureScheme::Null),
                )
                .map_err(TpmError::tss("TPM2_Certify of the vote key by the AK"))?;
            attest_output(&attest, &sig)
        })
    }
}

impl Owner {
    /// TPM2_ActivateCredential: the EK decrypts `secret`, checks that the
    /// credential was made for the AK's Name, and returns the credential.
    /// `id_object` and `secret` are the contents of TPM2B_ID_OBJECT and
    /// TPM2B_ENCRYPTED_SECRET (without their size fields).
    fn activate_credential(
        &mut self,
        id_object: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let slot = self.ak.as_ref().ok_or(TpmError::NoAk)?;
        let (ek_expected, template) = (slot.ek_name.clone(), slot.ek_template);
        let id = tss_esapi::structures::IdObject::try_from(id_object.to_vec())
            .map_err(TpmError::tss("credential blob (TPM2B_ID_OBJECT)"))?;
        let secret = tss_esapi::structures::EncryptedSecret::try_from(secret.to_vec())
            .map_err(TpmError::tss("encrypted secret (TPM2B_ENCRYPTED_SECRET)"))?;
        self.with_ak(|ctx, ak| {
            let (ek, ek_name) = keys::create_ek(ctx, template)?;
            if let Some(expected) = &ek_expected {
                if expected != &ek_name {
                    keys::flush(ctx, ek.into());
                    return Err(TpmError::WrongTpm {
                        expected: hex::encode(expected),
                        found: hex::encode(&ek_name),
                    });
                }
            }
            // The EK's USER role: its empty password for high-range
            // templates (userWithAuth), else PolicySecret(endorsement).
            let res = if template.user_with_auth() {
                ctx.execute_with_sessions(
                    (
                        Some(AuthSession::Password),
                        Some(AuthSession::Password),
                        None,
                    ),
                    |c| c.activate_credential(ak, ek, id, secret),
                )
                .map_err(TpmError::tss("TPM2_ActivateCredential"))
            } else {
                endorsement_policy_session(ctx).and_then(|ps| {
                    let r = ctx
                        .execute_with_sessions(
                            (
                                Some(AuthSession::Password),
                                Some(AuthSession::from(ps)),
                                None,
                            ),
                            |c| c.activate_credential(ak, ek, id, secret),
                        )
                        .map_err(TpmError::tss("TPM2_ActivateCredential"));
                    keys::flush(ctx, SessionHandle::from(ps).into());
                    r
                })
            };
            keys::flush(ctx, ek.into());
            Ok(res?.value().to_vec())
        })
    }

    /// TPM2_MakeCredential with this TPM's EK for an object Name: the
    /// verifier's half of credential activation, done by the TPM (for tests
    /// and tooling; verifiers use the attestation crate).
    fn make_credential(
        &mut self,
        credential: &[u8],
        object_name: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let credential = Digest::try_from(credential.to_vec())
            .map_err(TpmError::tss("credential (at most 64 bytes)"))?;
        let name = tss_esapi::structures::Name::try_from(object_name.to_vec())
            .map_err(TpmError::tss("object Name"))?;
        let template = self.ek_template();
        let ctx = self.ctx()?;
        let (ek, _) = keys::create_ek(ctx, template)?;
        let res = ctx
            .execute_without_session(|c| c.make_credential(ek, credential, name))
            .map_err(TpmError::tss("TPM2_MakeCredential"));
        keys::flush(ctx, ek.into());
        let (id, secret) = res?;
        Ok((id.value().to_vec(), secret.value().to_vec()))
    }
}

impl Owner {
    /// The template of the AK's EK (ECC P-256 while no AK is set).
    fn ek_template(&self) -> EkTemplate {
        self.ak.as_ref().map(|a| a.ek_template).unwrap_or_default()
    }
}

/// The public area (marshalled TPMT_PUBLIC) of the EK made from `template`.
fn read_ek_public(ctx: &mut Context, template: EkTemplate) -> Result<Vec<u8>, TpmError> {
    let (ek, _) = keys::create_ek(ctx, template)?;
    let read = ctx.read_public(ek);
    keys::flush(ctx, ek.into());
    let (public, _, _) = read.map_err(TpmError::tss("read the EK's public area"))?;
    public
        .marshall()
        .map_err(TpmError::tss("marshal the EK's TPMT_PUBLIC"))
}

/// Starts an unbound, unsalted session of `kind` (AES-128-CFB, SHA-256).
fn start_session(
    ctx: &mut Context,
    kind: SessionType,
    what: &'static str,
) -> Result<AuthSession, TpmError> {
    ctx.start_auth_session(
        None,
        None,
        None,
        kind,
        SymmetricDefinition::AES_128_CFB,
        HashingAlgorithm::Sha256,
    )
    .map_err(TpmError::tss(what))?
    .ok_or(TpmError::OwnerGone)
}

/// A policy session satisfying the EK's policy: PolicySecret(endorsement).
fn endorsement_policy_session(ctx: &mut Context) -> Result<PolicySession, TpmError> {
    let s = start_session(
        ctx,
        SessionType::Policy,
        "start a policy session for the EK",
    )?;
    let ps = PolicySession::try_from(s).map_err(TpmError::tss("policy session handle"))?;
    let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.policy_secret(
            ps,
            tss_esapi::handles::AuthHandle::Endorsement,
            Default::default(),
            Default::default(),
            Default::default(),
            None,
        )
    });
    if let Err(e) = res {
        keys::flush(ctx, SessionHandle::from(ps).into());
        return Err(TpmError::tss("TPM2_PolicySecret(endorsement)")(e));
    }
    Ok(ps)
}

fn attest_output(
    attest: &tss_esapi::structures::Attest,
    sig: &tss_esapi::structures::Signature,
) -> Result<AttestOutput, TpmError> {
    Ok(AttestOutput {
        attest: attest
            .marshall()
            .map_err(TpmError::tss("marshal the TPMS_ATTEST"))?,
        signature: sig
            .marshall()
            .map_err(TpmError::tss("marshal the TPMT_SIGNATURE"))?,
        reset_count: attest.clock_info().reset_count(),
    })
}

fn pcr_slot(pcr: u8) -> Result<PcrSlot, TpmError> {
    1u32.checked_shl(u32::from(pcr))
        .filter(|_| pcr < 24)
        .ok_or(TpmError::BadPcr(pcr))
        .and_then(|bit| PcrSlot::try_from(bit).map_err(|_| TpmError::BadPcr(pcr)))
}

fn sha256_selection_of(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|p| pcr_slot(*p))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionList::builder()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(TpmError::tss("build a PCR selection"))
}

fn sha256_selection(pcr: u8) -> Result<PcrSelectionList, TpmError> {
    sha256_selection_of(&[pcr])
}

fn pcr_handle(pcr: u8) -> Result<PcrHandle, TpmError> {
    if pcr >= 24 {
        return Err(TpmError::BadPcr(pcr));
    }
    PcrHandle::try_from(u32::from(pcr)).map_err(|_| TpmError::BadPcr(pcr))
}

impl Owner {
    /// Reads the SHA-256 bank value of `pcr`.
    pub fn pcr_read(&mut self, pcr: u8) -> Result<[u8; 32], TpmError> {
        let sel = sha256_selection(pcr)?;
        let (_, _, digests) = self
            .ctx()?
            .pcr_read(sel)
            .map_err(TpmError::tss("TPM2_PCR_Read"))?;
        let d = digests.value().first().ok_or(TpmError::BadPcr(pcr))?;
        <[u8; 32]>::try_from(d.value()).map_err(|_| TpmError::BadPcr(pcr))
    }

    /// Extends the SHA-256 bank of `pcr` with `digest` (the other banks are
    /// left alone: verifiers pin SHA-256).
    pub fn pcr_extend(&mut self, pcr: u8, digest: &[u8; 32]) -> Result<(), TpmError> {
        let handle = pcr_handle(pcr)?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(TpmError::tss("wrap the digest"))?,
        );
        self.ctx()?
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.pcr_extend(handle, values)
            })
            .map_err(TpmError::tss("TPM2_PCR_Extend"))
    }

    /// The policy digest a trial session computes for TPM2_PolicyPCR over
    /// the current value of `pcr` (to check software computations).
    pub fn trial_policy_pcr(&mut self, pcr: u8) -> Result<[u8; 32], TpmError> {
        let sel = sha256_selection(pcr)?;
        let ctx = self.ctx()?;
        let s = start_session(ctx, SessionType::Trial, "start a trial session")?;
        let ps = PolicySession::try_from(s).map_err(TpmError::tss("trial session handle"))?;
        let res = ctx
            .policy_pcr(ps, Digest::default(), sel)
            .and_then(|()| ctx.policy_get_digest(ps));
        keys::flush(ctx, SessionHandle::from(ps).into());
        let d = res.map_err(TpmError::tss("TPM2_PolicyPCR in a trial session"))?;
        <[u8; 32]>::try_from(d.value()).map_err(|_| TpmError::BadPcr(pcr))
    }
}

/// Opens a Context on `tcti`, first checking that something answers there:
/// the TSS library may otherwise retry for a long time.
fn connect(tcti: &Tcti) -> Result<Context, TpmError> {
    let fail = |reason: String| TpmError::Connect {
        tcti: tcti.to_string(),
        reason,
    };
    match tcti {
        Tcti::Swtpm { host, port } => {
            let ctrl = port
                .checked_add(1)
                .ok_or_else(|| fail("port 65535 leaves no room for the control port".into()))?;
            for (p, what) in [(*port, "TPM command"), (ctrl, "control (port + 1)")] {
                let addrs: Vec<_> = (host.as_str(), p)
                    .to_socket_addrs()
                    .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?
                    .collect();
                let ok = addrs
                    .iter()
                    .any(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok());
                if !ok {
                    return Err(fail(format!(
                        "nothing accepts connections on the {what} port {host}:{p}"
                    )));
                }
            }
        }
        Tcti::Device { path } => {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
        }
    }
    let conf = tcti
        .to_name_conf()
        .map_err(|e| fail(format!("the TSS library rejects it: {e}")))?;
    Context::new(conf).map_err(|e| fail(format!("ESYS initialisation failed: {e}")))
}
