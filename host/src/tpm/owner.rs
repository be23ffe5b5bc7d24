//! The one thread that owns the `tss_esapi::Context`, and [`TpmHandle`],
//! the cloneable async front the rest of the host uses.
//!
//! Every TPM command is blocking I/O (0.1–6 ms on swtpm, ~200 ms on a
//! hardware TPM) and the Context takes `&mut self`, so it lives on a
//! dedicated OS thread. Callers send a job over a bounded channel (which
//! applies back-pressure) and await a oneshot reply. While running, only
//! the vote key is loaded (one of swtpm's three transient slots); the SRK is
//! re-created from its template and flushed whenever a key is loaded.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tss_esapi::{
    constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK},
    handles::KeyHandle,
    interface_types::{algorithm::HashingAlgorithm, session_handles::AuthSession},
    structures::{Digest, HashScheme, HashcheckTicket, SignatureScheme},
    traits::Marshall,
    tss2_esys::TPMT_TK_HASHCHECK,
    Context,
};

use quorate_firmware::crypto::{PublicKey, Signature};

use super::keys::{self, KeyAuth, KeyBlob, KeyRole, KeySpec, KeyStore};
use super::tcti::Tcti;
use super::TpmError;

/// How long connecting to the TPM (probe + ESYS initialisation + flushing
/// stale handles) may take before [`TpmHandle::open`] gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect timeout of the reachability probe of a swtpm TCTI.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Queued requests before callers wait.
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

/// The async, cloneable front of the TPM owner thread. All clones talk to
/// the same thread; it stops when the last clone is dropped or on
/// [`TpmHandle::close`].
#[derive(Clone, Debug)]
pub struct TpmHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Job>,
    tcti: Tcti,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// State of the owner thread; reachable only from jobs run on it.
pub struct Owner {
    tcti: Tcti,
    ctx: Option<Context>,
    vote: Option<VoteSlot>,
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
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
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

    /// Opens the TPM and loads the vote key of the party whose data dir is
    /// `data_dir`, checking that this is the TPM it was provisioned on.
    pub async fn open_party(data_dir: &Path, tcti: &Tcti) -> Result<TpmHandle, TpmError> {
        let store = KeyStore::new(data_dir);
        let manifest = store.manifest()?;
        let srk_name = hex::decode(&manifest.srk_name).map_err(|e| TpmError::Store {
            path: store.manifest_path(),
            reason: format!("srk_name is not hex: {e}"),
        })?;
        let blob = store.load(KeyRole::Vote)?;
        let tpm = TpmHandle::open(tcti).await?;
        tpm.load_vote_key(blob, Some(srk_name)).await?;
        Ok(tpm)
    }

    /// The TCTI this handle talks to.
    pub fn tcti(&self) -> &Tcti {
        &self.inner.tcti
    }

    /// Runs `f` on the owner thread and returns its result. The building
    /// block of every TPM operation; `f` must flush what it loads.
    pub async fn run<T, F>(&self, f: F) -> Result<T, TpmError>
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
            .send(job)
            .await
            .map_err(|_| TpmError::OwnerGone)?;
        reply_rx.await.map_err(|_| TpmError::OwnerGone)?
    }

    /// Creates a vote key from `spec` under the SRK (nothing stays loaded).
    pub async fn create_vote_key(&self, spec: KeySpec) -> Result<CreatedKey, TpmError> {
        self.run(move |o| {
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
        let digest: [u8; 32] = sha256(&message);
        self.run(move |o| o.sign_digest(&digest)).await
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

fn owner_main(
    tcti: Tcti,
    mut rx: mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<(), TpmError>>,
) {
    let mut owner = Owner {
        tcti,
        ctx: None,
        vote: None,
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
    while let Some(job) = rx.blocking_recv() {
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
        if let Some(slot) = &self.vote {
            if !matches!(slot.blob.spec.auth, KeyAuth::Password) {
                return Err(TpmError::PolicyKey);
            }
        }
        match self.try_sign(digest) {
            Err(e) if e.is_recoverable() => {
                tracing::warn!(tcti = %self.tcti, "TPM signing failed ({e}); reconnecting and reloading the vote key");
                self.reconnect()?;
                self.try_sign(digest)
            }
            other => other,
        }
    }

    fn try_sign(&mut self, digest: &[u8; 32]) -> Result<TpmSigned, TpmError> {
        let key = self.vote_handle()?;
        let ctx = self.ctx()?;
        let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(TpmError::tss("build the null hashcheck ticket"))?;
        let digest = Digest::try_from(digest.to_vec()).map_err(TpmError::tss("wrap the digest"))?;
        let sig = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
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

    /// Flushes the vote key and closes the Context.
    fn release(&mut self) {
        self.unload_vote();
        self.ctx = None;
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
