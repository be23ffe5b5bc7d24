//! `quorate run`: the coordinator daemon.
//!
//! One task owns the firmware (the consensus driver and the session
//! machine) and runs the event loop; everything else talks to it through
//! channels:
//!
//! ```text
//!  peers (mTLS frames) ──┐                ┌── persist (redb), then:
//!  timers ───────────────┤                ├── send / broadcast (PeerNet)
//!  TPM signatures ───────┼─► event loop ──┼── sign requests (TPM owner thread)
//!  signed batches ───────┤  (driver +     ├── timers
//!  API commands ─────────┘   machine)     └── decided blocks → session machine
//! ```
//!
//! The persistence contract of the driver is honoured literally: every
//! `Step::persist` record is committed to redb (fsync) before any of the
//! step's actions is carried out, so a vote never leaves before the WAL
//! record that holds it, and the TPM is never asked to sign before the sign
//! guard that allows it is durable.
//!
//! Operations accepted from the API go to a durable outbox first; a batch
//! of them is assigned a sequence number (recorded durably) before the TPM
//! signs it, so after a crash the same batch is signed and submitted again
//! and nothing accepted is lost.

pub mod admission;
pub mod audit;
pub mod events;
pub mod health;
pub mod metrics;
pub mod status;

use crate::config::Config;
use crate::init::Enrollment;
use crate::net::tls::TlsIdentity;
use crate::net::{ConnId, NetConfig, NetEvent, PeerNet, PeerSpec};
use crate::store::Store;
use crate::tpm::{Swtpm, TpmHandle, TpmTarget};
use anyhow::{anyhow, bail, Context as _};
use quorate_firmware::batch::SignedBatch;
use quorate_firmware::consensus::{
    block_response_frame, Action, Block, ChainState, CommitCertificate, ConsensusDriver,
    DecidedBlock, DriverConfig, DriverError, Input, Party, PartySet, Persist, Restored,
    SignRequestId, Step, TimerId,
};
use quorate_firmware::crypto::Signature;
use quorate_firmware::sessions::machine::{BlockOutcome, MachineConfig};
use quorate_firmware::sessions::ops::{OpBody, OpId};
use quorate_firmware::sessions::policy::{self, PolicyDecision};
use quorate_firmware::sessions::{Operation, SessionMachine};
use quorate_firmware::types::{Height, PartyId};
use serde::{Deserialize, Serialize};
use status::{PeerStatus, StatusView};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// Largest batch of own operations, in encoded bytes.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Resubmit an undecided own batch after this long.
const BATCH_RESUBMIT: Duration = Duration::from_secs(5);

/// A request to the event loop.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// Accept operations authored by this party: all of them or none.
    Submit {
        /// What they do, in order.
        bodies: Vec<OpBody>,
        /// The client's `Idempotency-Key`, if it sent one (it covers the
        /// whole request).
        idempotency_key: Option<String>,
        /// Answered with one receipt per operation, in order, once they are
        /// durable.
        reply: oneshot::Sender<Result<Vec<Receipt>, SubmitRefused>>,
    },
    /// Read something from the decided state.
    Query {
        /// The question.
        query: Query,
        /// The answer, as JSON.
        reply: oneshot::Sender<Option<serde_json::Value>>,
    },
}

/// Read-only questions the API asks the event loop.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Query {
    /// The daemon's status.
    Status,
    /// An operation by receipt id or operation id (hex).
    Operation(String),
    /// A session by id (hex), with its results.
    Session(String),
    /// A session's messages (hex id), optionally of one round only.
    Messages {
        /// The session id, hex.
        session: String,
        /// Only this round.
        round: Option<u32>,
    },
    /// Decided blocks from `from` (at most `limit`), with their certificates.
    Blocks {
        /// The first height.
        from: u64,
        /// At most this many.
        limit: usize,
    },
    /// The audit log: checkpoint, entries, proofs.
    Log(audit::LogQuery),
    /// Whether a session request passes the rules against the current
    /// decided state: `{"ok": true}` or `{"rule": NAME, "reason": TEXT}`.
    CheckSession(Box<quorate_firmware::sessions::ops::SessionSpec>),
}

/// Why an operation of this party was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The daemon cannot take it now (storage error, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// This party already signed a different operation for the same slot
    /// (one message per session round, one result per session, one verdict
    /// per operation): a second would be proof of equivocation against it.
    #[error("this party already posted a different {slot}: {existing}")]
    SlotTaken {
        /// The slot, in words.
        slot: String,
        /// The operation that holds it (receipt id, or where it was decided).
        existing: String,
    },
    /// The `Idempotency-Key` was used before for a different request.
    #[error("the idempotency key was used for a different request ({existing})")]
    KeyReused {
        /// The receipt of the request it was used for.
        existing: String,
    },
    /// Backpressure: the outbox holds as many accepted, undecided
    /// operations as `party.max_outbox_ops` allows (or the request's would
    /// take it past that). Nothing was accepted; the same request later is.
    #[error(
        "the outbox holds {queued} accepted operations not yet decided, and party.max_outbox_ops is {limit}: \
         nothing was accepted; retry later"
    )]
    OutboxFull {
        /// Operations in the outbox now.
        queued: u64,
        /// `party.max_outbox_ops`.
        limit: u64,
    },
    /// The request has more new operations than the outbox can ever hold.
    #[error(
        "{ops} new operations in one request can never fit: party.max_outbox_ops is {limit}; send fewer at a time"
    )]
    NeverFits {
        /// New operations in the request.
        ops: usize,
        /// `party.max_outbox_ops`.
        limit: u64,
    },
}

/// A refused submission: why, and which operation of the request it was
/// about (`None`: the request as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{error}", index.map(|i| format!("operations[{i}]: ")).unwrap_or_default())]
pub struct SubmitRefused {
    /// The operation's index in the request.
    pub index: Option<usize>,
    /// Why.
    pub error: SubmitError,
}

/// What the daemon records of an accepted operation under its slot, and of
/// an accepted request under its idempotency key: the digest of the
/// operation's bytes (of the request's operations) and the receipt(s).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuardRecord {
    digest: [u8; 32],
    receipt: String,
    /// Every receipt of a request of several operations, in order
    /// (`receipt` is the first); empty for one operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    receipts: Vec<String>,
}

impl GuardRecord {
    /// The receipts of the request it guards, in order.
    fn receipts(self) -> Vec<String> {
        if self.receipts.is_empty() {
            vec![self.receipt]
        } else {
            self.receipts
        }
    }
}

/// The store key of this party's guard for `slot`.
fn slot_guard(slot: &quorate_firmware::sessions::ops::Slot) -> String {
    let bytes = postcard::to_allocvec(slot).unwrap_or_default();
    format!(
        "guard/slot/{}",
        hex::encode(quorate_firmware::types::Sha256Digest::of(&bytes).as_bytes())
    )
}

/// The store key of an idempotency key's guard.
fn idempotency_guard(key: &str) -> String {
    format!(
        "guard/idem/{}",
        hex::encode(quorate_firmware::types::Sha256Digest::of(key.as_bytes()).as_bytes())
    )
}

/// A slot in words, for errors.
fn slot_words(slot: &quorate_firmware::sessions::ops::Slot) -> String {
    use quorate_firmware::sessions::ops::Slot;
    match slot {
        Slot::Message { session, round } => format!(
            "round-{round} message in session {}",
            hex::encode(session.0.as_bytes())
        ),
        Slot::Result { session } => {
            format!("result of session {}", hex::encode(session.0.as_bytes()))
        }
        Slot::Verdict { target } => {
            format!("verdict on operation {}", hex::encode(target.0.as_bytes()))
        }
    }
}

/// The answer to an accepted submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The receipt id: stable, usable with `GET /v1/operations/{id}`.
    pub id: String,
}

/// A handle for the API and the CLI to talk to a running daemon.
#[derive(Clone, Debug)]
pub struct DaemonHandle {
    tx: mpsc::Sender<Command>,
    events: Arc<events::EventLog>,
    metrics: Arc<metrics::Metrics>,
}

impl DaemonHandle {
    /// Submits an operation; returns once it is durable in the outbox.
    pub async fn submit(
        &self,
        body: OpBody,
        idempotency_key: Option<String>,
    ) -> Result<Receipt, SubmitError> {
        let receipts = self
            .submit_all(vec![body], idempotency_key)
            .await
            .map_err(|r| r.error)?;
        receipts
            .into_iter()
            .next()
            .ok_or_else(|| SubmitError::Unavailable("no receipt for the operation".into()))
    }

    /// Submits several operations, all or none; returns their receipts, in
    /// order, once every one is durable in the outbox (one transaction).
    pub async fn submit_all(
        &self,
        bodies: Vec<OpBody>,
        idempotency_key: Option<String>,
    ) -> Result<Vec<Receipt>, SubmitRefused> {
        let down = || SubmitRefused {
            index: None,
            error: SubmitError::Unavailable("the daemon is shutting down".into()),
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit {
                bodies,
                idempotency_key,
                reply,
            })
            .await
            .map_err(|_| down())?;
        rx.await.map_err(|_| down())?
    }

    /// The decided-event log (for `GET /v1/events`).
    pub fn events(&self) -> &events::EventLog {
        &self.events
    }

    /// The daemon's metrics (for `GET /metrics`).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// Asks a read-only question.
    pub async fn query(&self, query: Query) -> Option<serde_json::Value> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Query { query, reply }).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// A batch of own operations between "sequence assigned" and "decided".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct InFlight {
    seq: u64,
    /// Outbox sequence numbers of its operations, in batch order.
    outbox: Vec<u64>,
    /// The encoded operations, in batch order (so the same body is re-signed
    /// after a crash).
    ops: Vec<Vec<u8>>,
}

/// Where an accepted operation ended up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ReceiptRecord {
    op: Option<OpId>,
    height: Option<Height>,
}

use quorate_firmware::sessions::ops::SessionId;

use crate::engine::parse_session_id;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn enc<T: Serialize>(v: &T) -> anyhow::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| anyhow!("encoding failed: {e}"))
}

fn dec<'a, T: Deserialize<'a>>(what: &str, b: &'a [u8]) -> anyhow::Result<T> {
    postcard::from_bytes(b).map_err(|e| anyhow!("stored {what} is corrupt: {e}"))
}

/// Loads every party's enrollment and builds the party set.
pub fn party_set(cfg: &Config) -> anyhow::Result<(PartySet, BTreeMap<PartyId, Enrollment>)> {
    let mut parties = Vec::new();
    let mut enrollments = BTreeMap::new();
    for (i, p) in cfg.file.cluster.parties.iter().enumerate() {
        let e = Enrollment::load(&p.enrollment)
            .with_context(|| format!("cluster.parties[{i}].enrollment"))?;
        if e.party_id.0 != p.id {
            bail!(
                "cluster.parties[{i}].enrollment: {} is the enrollment of {}, not of party {}",
                p.enrollment.display(),
                e.party_id,
                p.id
            );
        }
        parties.push(Party {
            id: e.party_id,
            vote_key: e.vote_public_key()?,
        });
        enrollments.insert(e.party_id, e);
    }
    let set = PartySet::new(parties).map_err(|e| anyhow!("cluster.parties: {e}"))?;
    Ok((set, enrollments))
}

/// Runs the daemon until `shutdown` resolves. Returns an error if it cannot
/// start or must halt (the error says why).
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
    handle_out: Option<oneshot::Sender<DaemonHandle>>,
) -> anyhow::Result<()> {
    let data_dir = cfg.file.party.data_dir.clone();
    let me = cfg.me;
    info!(party = %me, cluster = %cfg.cluster_id.0, data_dir = %data_dir.display(), "starting");
    let (parties, enrollments) = party_set(&cfg)?;
    // Outside dev mode every party's AK must have been activated against its
    // EK (`quorate enroll complete`): admission pins what the records bind.
    let activated = crate::enroll_cli::enrollment_records(&cfg)?;
    let own = enrollments
        .get(&me)
        .ok_or_else(|| anyhow!("party.id: {me} has no enrollment"))?;
    let store_lost = store_lost(&data_dir);
    let fresh = !data_dir.join(crate::store::DB_FILE).exists();
    let store = Store::open(&data_dir, &format!("{me} of cluster {}", cfg.cluster_id.0))?;
    if store_lost {
        warn!(
            "the store was lost ({} is new, but this data dir had one): replaying the chain from height 1; receipts given out before are gone (look operations up by op id), and key shares sealed in the lost store cannot be recovered",
            crate::store::DB_FILE
        );
        // Receipt ids of this store start far above any the lost one gave
        // out (it would have needed a million receipts per millisecond).
        store.start_outbox_seq_at(now_ms().saturating_mul(1_000_000).max(1))?;
    }
    if fresh || !data_dir.join(STORE_CREATED_FILE).exists() {
        mark_store_created(&data_dir)?;
    }
    // What `quorate audit export --data-dir` needs to name the cluster.
    crate::audit::export::ExportParams::from_config(&cfg)?
        .save(&data_dir)
        .with_context(|| format!("writing {}", crate::audit::export::PARAMS_FILE))?;

    // The TPM: a private swtpm (kept for the daemon's life) or a TCTI.
    let swtpm = match &cfg.tpm {
        TpmTarget::Spawn => {
            let dir = data_dir.join(crate::init::SWTPM_DIR);
            Swtpm::reclaim_orphan(&dir);
            Some(Swtpm::spawn(&dir)?)
        }
        _ => None,
    };
    let tcti = match (&cfg.tpm, &swtpm) {
        (_, Some(s)) => s.tcti(),
        (TpmTarget::Tcti(t), None) => t.clone(),
        _ => bail!("party.tpm: unsupported TPM target"),
    };
    let tpm = TpmHandle::open_party(&data_dir, &tcti).await?;
    let key = tpm.vote_public_key().await?;
    if key != own.vote_public_key()? {
        bail!(
            "the vote key loaded from {} is not the one in this party's enrollment; \
             re-run `quorate init` or fix cluster.parties",
            data_dir.display()
        );
    }

    // Measured launch, once per TPM boot, for a party provisioned with an
    // attestation key (`quorate init --config`): without it the PolicyPCR
    // vote key cannot sign anyway.
    let dev = cfg.file.party.dev;
    let measurement_pcr = if dev {
        quorate_attestation::pcr::PcrIndex::DEV_MEASUREMENT
    } else {
        quorate_attestation::pcr::PcrIndex::DEFAULT_MEASUREMENT
    };
    let attests = own.ak.is_some();
    if attests {
        let exe = std::path::Path::new("/proc/self/exe");
        let m = crate::launch::Measurement {
            pcr: measurement_pcr,
            executable: crate::launch::file_digest(exe)
                .with_context(|| format!("hashing the running executable {}", exe.display()))?,
            config: cfg.file.cluster.measured_digest(),
        };
        let report = crate::launch::measured_launch(&tpm, &data_dir, &m, dev)
            .await
            .context("measured launch refused")?;
        info!(
            pcr = measurement_pcr.get(),
            executable = %m.executable,
            config = %m.config,
            outcome = ?report.outcome,
            "measured launch"
        );
    } else {
        warn!("this party has no attestation key (provisioned without --config): it cannot prove what it runs");
    }
    let policy = match cfg.reference_policy()? {
        Some(p) => Some(p),
        None => {
            warn!(
                "DEV MODE: no reference policy; peers are admitted on their TLS certificate alone"
            );
            None
        }
    };
    for caveat in crate::config::trust_caveats(&cfg, policy.as_ref()) {
        warn!("{caveat}");
    }
    let policy_pcrs = policy.as_ref().map(|p| p.quoted_pcrs()).unwrap_or_default();
    let admission = admission::Admission::new(policy, me, &enrollments).with_activated(activated);

    // Peers.
    let identity = TlsIdentity::load(&data_dir)?;
    let tls_key_hash = identity.key_hash()?;
    let mut peers = Vec::new();
    for p in &cfg.file.cluster.parties {
        if p.id == me.0 {
            continue;
        }
        let e = enrollments
            .get(&PartyId(p.id))
            .ok_or_else(|| anyhow!("cluster.parties: party {} has no enrollment", p.id))?;
        let cert = hex::decode(&e.tls_cert)
            .map_err(|err| anyhow!("{}: tls_cert is not hex: {err}", p.enrollment.display()))?;
        peers.push(PeerSpec {
            party: PartyId(p.id),
            addr: p.address.clone(),
            cert_der: cert,
        });
    }
    let mut net_cfg = NetConfig::new(me, cfg.listen, peers);
    net_cfg.max_frame = cfg.file.cluster.max_frame_bytes();
    let bounds = &cfg.file.party.net;
    net_cfg.max_pending = bounds.max_pending_connections;
    net_cfg.max_pending_per_ip = bounds.max_pending_per_ip;
    net_cfg.handshake_timeout = Duration::from_secs(bounds.handshake_timeout_secs);
    net_cfg.admission_timeout = Duration::from_secs(bounds.admission_timeout_secs);
    net_cfg.send_queue_bytes = usize::try_from(bounds.send_queue_bytes).unwrap_or(usize::MAX);
    net_cfg.recv_queue_bytes = usize::try_from(bounds.recv_queue_bytes).unwrap_or(usize::MAX);
    let (net, net_rx) = PeerNet::start(net_cfg, identity).await?;
    info!(listen = %net.local_addr(), "listening for peers");

    let mut dcfg = DriverConfig::new(
        cfg.cluster_id,
        cfg.epoch(),
        me,
        parties.clone(),
        cfg.file.cluster.fault_model,
    );
    dcfg.max_block_bytes = cfg.file.cluster.max_block_bytes as usize;
    dcfg.block_serve_per_sec = cfg.file.party.net.block_requests_per_sec;
    dcfg.block_serve_burst = cfg.file.party.net.block_requests_burst;
    dcfg.recent_blocks = cfg.file.party.net.recent_blocks.max(1);
    // The daemon keeps the audit log: the driver waits for its head.
    dcfg.app_state = true;
    let quote_pcrs = attests.then(|| {
        let mut p = vec![measurement_pcr];
        p.extend(policy_pcrs.iter().copied());
        p.sort();
        p.dedup();
        p
    });
    let (book, issuer) = audit::setup(&cfg, &enrollments, quote_pcrs)?;
    let book = book.with_quote_policy(admission.policy().cloned());
    let mcfg = MachineConfig {
        cluster: cfg.cluster_id,
        fault_model: cfg.file.cluster.fault_model,
        members: parties
            .parties()
            .iter()
            .map(|p| (p.id, p.vote_key))
            .collect(),
        rules: cfg.file.cluster.sessions,
    };

    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let api_addr = cfg.file.party.api_listen;
    let api_tls = crate::api_tls::acceptor_for(&cfg.file.party).context("party.api_tls")?;
    let attest = AttestCtx {
        admission,
        tls_key_hash,
        measurement_pcr,
        attests,
    };
    let mut rt = Runtime::start(
        cfg,
        (store, store_lost),
        tpm.clone(),
        net.clone(),
        dcfg,
        mcfg,
        attest,
        (book, issuer),
    )?;
    rt.metrics
        .outbox_limit
        .store(rt.cfg.file.party.max_outbox_ops, Ordering::Relaxed);
    let handle = DaemonHandle {
        tx: cmd_tx,
        events: rt.events.clone(),
        metrics: rt.metrics.clone(),
    };
    let token = crate::api::load_or_create_token(&data_dir)
        .with_context(|| format!("{}", data_dir.join(crate::api::TOKEN_FILE).display()))?;
    let api_listener = crate::api::bind(api_addr)
        .await
        .with_context(|| format!("party.api_listen: cannot listen on {api_addr}"))?;
    let (api_tls, api_cert) = api_tls.map_or((None, None), |(a, f)| (Some(a), f));
    match &api_cert {
        Some(fp) => info!(api = %api_addr, cert_sha256 = %fp, "API listening with TLS (https)"),
        None if api_tls.is_some() => info!(api = %api_addr, "API listening with TLS (https)"),
        None => info!(api = %api_addr, "API listening"),
    }
    let api = tokio::spawn(crate::api::serve(
        api_listener,
        handle.clone(),
        token,
        api_tls,
    ));
    if let Some(out) = handle_out {
        let _ = out.send(handle);
    }
    let result = rt.event_loop(net_rx, cmd_rx, shutdown).await;
    info!("stopping");
    api.abort();
    net.shutdown();
    if let Err(e) = tpm.close().await {
        warn!(error = %e, "closing the TPM failed");
    }
    drop(swtpm); // TPM2_Shutdown and stop, for a spawned swtpm
    result
}

/// What the runtime needs for attestation.
struct AttestCtx {
    admission: admission::Admission,
    tls_key_hash: quorate_firmware::types::Sha256Digest,
    measurement_pcr: quorate_attestation::pcr::PcrIndex,
    /// Whether this party can produce evidence (it has an AK).
    attests: bool,
}

/// How long a peer whose evidence failed stays excluded before it may try again.
const EXCLUSION: Duration = Duration::from_secs(30);

struct Runtime {
    attest: AttestCtx,
    /// Decoded AttestationRecord operations of other parties awaiting this
    /// party's verdict (the session machine keeps no evidence).
    records: BTreeMap<OpId, Operation>,
    record_tx: mpsc::UnboundedSender<(Height, Result<Vec<u8>, String>)>,
    record_rx: mpsc::UnboundedReceiver<(Height, Result<Vec<u8>, String>)>,
    evidence_tx: mpsc::UnboundedSender<(PartyId, ConnId, Result<Vec<u8>, String>)>,
    evidence_rx: mpsc::UnboundedReceiver<(PartyId, ConnId, Result<Vec<u8>, String>)>,
    /// Challenges being answered (one per connection, one per peer at a time).
    answers: admission::Answers<ConnId>,
    readmit: BTreeMap<PartyId, Instant>,
    cfg: Config,
    me: PartyId,
    store: Store,
    tpm: TpmHandle,
    net: PeerNet,
    driver: ConsensusDriver,
    machine: SessionMachine,
    timers: BTreeMap<TimerId, Instant>,
    sign_tx: mpsc::UnboundedSender<(SignRequestId, Vec<u8>, Result<Signature, String>)>,
    sign_rx: mpsc::UnboundedReceiver<(SignRequestId, Vec<u8>, Result<Signature, String>)>,
    batch_tx: mpsc::UnboundedSender<(u64, Result<SignedBatch, String>)>,
    batch_rx: mpsc::UnboundedReceiver<(u64, Result<SignedBatch, String>)>,
    in_flight: Option<InFlight>,
    /// The signed in-flight batch and when it was last submitted.
    in_flight_signed: Option<(SignedBatch, Instant)>,
    /// A TPM signature over the in-flight batch is under way.
    signing_batch: bool,
    /// Verdict targets already queued in the outbox or in flight.
    verdicts_queued: HashSet<OpId>,
    /// Connected peers and their current connection: events of any other
    /// connection (a replaced one) are ignored.
    peers_up: BTreeMap<PartyId, ConnId>,
    last: Option<status::LastDecision>,
    status_dirty: bool,
    events: Arc<events::EventLog>,
    metrics: Arc<metrics::Metrics>,
    health: health::Watch,
    /// The audit log (ledger and checkpoints) and the checkpoint issuer.
    audit: audit::AuditLog,
    issuer: audit::Issuer,
    /// The log head to hand the driver once the decided block's step is done.
    app_state: Option<(quorate_firmware::consensus::LogHead, bool)>,
    /// The built-in MPC engine's participants.
    engine: crate::engine::Engine,
    seal_tx: mpsc::UnboundedSender<(SessionId, Result<crate::engine::StoredShare, String>)>,
    seal_rx: mpsc::UnboundedReceiver<(SessionId, Result<crate::engine::StoredShare, String>)>,
    /// The built-in engine's signing sessions (ROAST).
    signing: crate::signing::SignEngine,
    unseal_tx: mpsc::UnboundedSender<(SessionId, UnsealResult)>,
    unseal_rx: mpsc::UnboundedReceiver<(SessionId, UnsealResult)>,
    /// The start-up double-sign check (ADR-051).
    sign_watch: crate::sign_watch::DoubleSignWatch,
    /// Sign requests held back while it watches, signed when it ends.
    withheld: Vec<(SignRequestId, Vec<u8>)>,
    /// Views of retired records on their way to the store.
    retired_views: RetiredViews,
}

/// The start-up double-sign watch of this party, from its guard and the
/// stored certificates of the `recent` blocks.
/// The file in the data dir that records when this party's store was
/// created; a data dir that has it but no store lost its store.
const STORE_CREATED_FILE: &str = "store-created";

/// Whether the data dir had a store that is gone (its record is there, the
/// database file is not).
fn store_lost(data_dir: &std::path::Path) -> bool {
    data_dir.join(STORE_CREATED_FILE).exists() && !data_dir.join(crate::store::DB_FILE).exists()
}

/// Records that the store was created now (one line per creation).
fn mark_store_created(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = data_dir.join(STORE_CREATED_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "created {} ms", now_ms())?;
    f.sync_all()?;
    Ok(())
}

fn start_watch(
    cfg: &Config,
    guard: &quorate_firmware::consensus::sign_guard::SignGuard,
    tip: Height,
    recent: &[DecidedBlock],
) -> crate::sign_watch::DoubleSignWatch {
    let chain_signed = recent
        .iter()
        .filter(|d| d.certificate.signatures.iter().any(|(p, _)| *p == cfg.me))
        .map(|d| d.block.header().height)
        .max();
    let w = crate::sign_watch::DoubleSignWatch::at_start(
        guard
            .last(quorate_firmware::consensus::context::Step::Precommit)
            .map(|l| l.height),
        tip,
        chain_signed,
        cfg.file.party.double_sign_check_heights,
        cfg.file
            .party
            .double_sign_check_idle_secs
            .saturating_mul(1000),
        now_ms(),
    );
    if let Some(r) = w.reason() {
        warn!(
            reason = %r,
            heights = cfg.file.party.double_sign_check_heights,
            "double-sign check: signing nothing until the cluster decides without this party"
        );
    }
    w
}

/// A share unsealed for signing: the secret and its stored record.
type UnsealResult = Result<(zeroize::Zeroizing<Vec<u8>>, crate::engine::StoredShare), String>;

impl Runtime {
    #[allow(clippy::too_many_arguments)]
    fn start(
        cfg: Config,
        (store, store_lost): (Store, bool),
        tpm: TpmHandle,
        net: PeerNet,
        dcfg: DriverConfig,
        mcfg: MachineConfig,
        attest: AttestCtx,
        (mut book, issuer): (audit::CheckpointBook, audit::Issuer),
    ) -> anyhow::Result<Runtime> {
        let me = cfg.me;
        // Restore what the driver told us to persist.
        let chain: ChainState = match store.meta("chain")? {
            Some(b) => dec("chain state", &b)?,
            None => ChainState::default(),
        };
        let tip = store.tip()?;
        if tip != chain.height.0 {
            bail!(
                "the store's last block is {tip} but its chain state is at {}",
                chain.height.0
            );
        }
        let keep = dcfg.recent_blocks.max(1) as u64;
        let from = tip.saturating_sub(keep - 1).max(1);
        let mut recent = Vec::new();
        for sb in store.decided_range(from, keep as usize)? {
            recent.push(DecidedBlock {
                block: Block::from_bytes(&sb.block)
                    .map_err(|e| anyhow!("stored block {} is corrupt: {e}", sb.height))?,
                certificate: dec("certificate", &sb.cert)?,
            });
        }
        let sign_guard: quorate_firmware::consensus::sign_guard::SignGuard = match store.guard()? {
            Some(b) => dec("sign guard", &b)?,
            None => Default::default(),
        };
        let sign_watch = if store_lost {
            let w = crate::sign_watch::DoubleSignWatch::after_store_loss(
                cfg.file.party.double_sign_check_heights,
                cfg.file
                    .party
                    .double_sign_check_idle_secs
                    .saturating_mul(1000),
                quorate_firmware::consensus::validate::BLOCK_TIME_AHEAD_MS,
                now_ms(),
            );
            if let Some(r) = w.reason() {
                warn!(reason = %r, heights = cfg.file.party.double_sign_check_heights,
                    "double-sign check: signing nothing until the cluster decides without this party");
            }
            w
        } else {
            start_watch(&cfg, &sign_guard, Height(tip), &recent)
        };
        let mut wal = Vec::new();
        for e in store.wal_entries(tip + 1)? {
            wal.push(dec("WAL record", &e)?);
        }
        // The session machine and the audit log are rebuilt first (the
        // driver's restored state needs the log head); until then a fresh
        // driver stands in, its first step discarded (nothing acts on it).
        let (placeholder, _) = ConsensusDriver::new(dcfg.clone(), now_ms());
        if let Some((size, _)) = store.latest_checkpoint()? {
            book.set_latest_certified(size);
        }

        // Rebuild the session state by replaying every decided block.
        let machine = SessionMachine::new(mcfg)
            .map_err(|e| anyhow!("cluster: {e}"))?
            .with_judge(Arc::new(crate::engine::MpcJudge));
        let engine_cfg = &cfg.file.party.engine;
        let engine = crate::engine::Engine::new(
            me,
            cfg.cluster_id,
            engine_cfg.parsed_schemes()?,
            engine_cfg.parsed_fault(cfg.file.party.dev)?,
        );
        let (seal_tx, seal_rx) = mpsc::unbounded_channel();
        let signing = crate::signing::SignEngine::new(
            me,
            cfg.cluster_id,
            engine_cfg.parsed_schemes()?,
            engine_cfg.sign_fault(cfg.file.party.dev),
        );
        let (unseal_tx, unseal_rx) = mpsc::unbounded_channel();
        // An empty value means "none in flight" (cleared when decided).
        let in_flight: Option<InFlight> = match store.meta("in_flight")? {
            Some(b) if !b.is_empty() => Some(dec("in-flight batch", &b)?),
            _ => None,
        };
        let metrics = Arc::new(metrics::Metrics::new(&cfg.file.party.data_dir));
        let (sign_tx, sign_rx) = mpsc::unbounded_channel();
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let (evidence_tx, evidence_rx) = mpsc::unbounded_channel();
        let (record_tx, record_rx) = mpsc::unbounded_channel();
        let mut rt = Runtime {
            attest,
            records: BTreeMap::new(),
            record_tx,
            record_rx,
            evidence_tx,
            evidence_rx,
            answers: admission::Answers::default(),
            readmit: BTreeMap::new(),
            cfg,
            me,
            store,
            tpm,
            net,
            driver: placeholder,
            machine,
            timers: BTreeMap::new(),
            sign_tx,
            sign_rx,
            batch_tx,
            batch_rx,
            in_flight,
            in_flight_signed: None,
            signing_batch: false,
            verdicts_queued: HashSet::new(),
            peers_up: BTreeMap::new(),
            last: None,
            status_dirty: true,
            events: Arc::default(),
            metrics,
            health: health::Watch::default(),
            audit: audit::AuditLog::new(book),
            issuer,
            app_state: None,
            engine,
            seal_tx,
            seal_rx,
            signing,
            unseal_tx,
            unseal_rx,
            sign_watch,
            withheld: Vec::new(),
            retired_views: RetiredViews::default(),
        };
        let mut h = 1;
        while h <= tip {
            for sb in rt.store.decided_range(h, 256)? {
                let block = Block::from_bytes(&sb.block)
                    .map_err(|e| anyhow!("stored block {} is corrupt: {e}", sb.height))?;
                let outcome = rt.apply(&block, true)?;
                // The ROAST observers catch up (nothing is posted).
                rt.signing_block(block.header().time_ms, &outcome.events, false)?;
                h = sb.height + 1;
            }
        }
        let (log_head, log_pending) = rt.audit.app_state();
        info!(
            height = tip,
            wal = wal.len(),
            log_size = log_head.size,
            "restoring consensus state"
        );
        let (driver, first) = ConsensusDriver::restore(
            dcfg,
            Restored {
                chain,
                recent,
                sign_guard,
                wal,
                log_head,
                log_pending,
            },
            now_ms(),
        )?;
        rt.driver = driver;
        rt.resume_checkpoints()?;
        // What is already queued (the outbox survives restarts): verdict
        // targets, and sessions with a result or abort of ours.
        let mut sessions_queued = BTreeSet::new();
        for (_, bytes) in rt.store.outbox()? {
            match Operation::decode(&bytes).map(|o| o.body) {
                Ok(OpBody::Verdict(v)) => {
                    rt.verdicts_queued.insert(v.target);
                }
                Ok(OpBody::SessionResult(r)) => {
                    sessions_queued.insert(r.session);
                }
                Ok(OpBody::AbortSession(a)) => {
                    sessions_queued.insert(a.session);
                }
                _ => {}
            }
        }
        rt.post_verdicts()?;
        rt.erase_unused_shares()?;
        rt.engine_restart(&sessions_queued)?;
        rt.set_wake();
        rt.execute(first)?;
        info!(height = tip, state_root = %rt.machine.state_root(), "state restored");
        Ok(rt)
    }

    async fn event_loop(
        &mut self,
        mut net_rx: mpsc::Receiver<NetEvent>,
        mut cmd_rx: mpsc::Receiver<Command>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = Instant::now() - Duration::from_secs(10);
        loop {
            let next_timer = self.timers.values().min().copied();
            let timer = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                Some(ev) = net_rx.recv() => match ev {
                    NetEvent::Frame(from, conn, bytes) => {
                        // A replaced connection's last frames are stale.
                        if self.peers_up.get(&from) == Some(&conn) {
                            self.peer_frame(from, conn, &bytes)?;
                        }
                    }
                    NetEvent::Up(p, conn) => {
                        self.checkpoint_peer_up(p)?;
                        self.peers_up.insert(p, conn);
                        self.status_dirty = true;
                        let mut nonce = vec![0u8; 32];
                        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
                            bail!("no randomness for attestation nonces");
                        }
                        match self.attest.admission.connected(p, nonce) {
                            Some(ch) => {
                                self.net.send_on(p, conn, Arc::from(ch.encode()));
                            }
                            // Dev mode: admitted on TLS alone.
                            None => {
                                self.net.admit(p, conn);
                            }
                        }
                    }
                    NetEvent::Down(p, conn, why) => {
                        if self.peers_up.get(&p) == Some(&conn) {
                            debug!(peer = %p, reason = %why, "peer down");
                            self.peers_up.remove(&p);
                            self.attest.admission.disconnected(p);
                            self.status_dirty = true;
                        }
                    }
                },
                Some((peer, conn, res)) = self.evidence_rx.recv() => {
                    let frame = match res {
                        Ok(bytes) => admission::PeerFrame::Evidence(bytes),
                        Err(e) => {
                            warn!(peer = %peer, error = %e, "cannot produce attestation evidence");
                            admission::PeerFrame::CannotAttest(e)
                        }
                    };
                    // Only to the connection that asked: its nonce is bound in.
                    self.net.send_on(peer, conn, Arc::from(frame.encode()));
                    if let Some((next, nonce)) = self.answers.answered(peer) {
                        self.answer_challenge(peer, next, nonce);
                    }
                }
                Some((req, bytes, res)) = self.sign_rx.recv() => match res {
                    Ok(signature) => self.input(Input::SignatureReady { request: req, signature })?,
                    Err(e) => {
                        self.metrics.tpm_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "TPM signing failed; retrying in 1 s");
                        self.spawn_sign(req, bytes, Duration::from_secs(1));
                    }
                },
                Some((seq, res)) = self.batch_rx.recv() => self.batch_signed(seq, res)?,
                Some((session, res)) = self.seal_rx.recv() => self.share_sealed(session, res)?,
                Some((session, res)) = self.unseal_rx.recv() => {
                    let refresh = self.machine.session(&session).map(|s| s.spec.kind())
                        == Some(quorate_firmware::sessions::ops::SessionKind::Refresh);
                    if refresh {
                        let actions = self.engine.refresh_unsealed(&self.machine, session, res);
                        self.engine_actions(actions)?;
                    } else {
                        let actions = self.signing.share_unsealed(session, res);
                        self.signing_actions(actions)?;
                    }
                }
                Some((size, res)) = self.issuer.rx.recv() => self.checkpoint_signed(size, res)?,
                Some((h, res)) = self.record_rx.recv() => match res {
                    Ok(evidence) => {
                        let body = OpBody::AttestationRecord(quorate_firmware::sessions::ops::AttestationRecord {
                            binds_height: h,
                            evidence: quorate_firmware::sessions::ops::Blob(evidence),
                        });
                        self.queue(body)?;
                        info!(height = h.0, "epoch attestation record queued");
                    }
                    Err(e) => warn!(height = h.0, error = %e, "cannot produce the epoch attestation record"),
                },
                Some(cmd) = cmd_rx.recv() => self.command(cmd)?,
                _ = timer => {
                    let now = Instant::now();
                    let due: Vec<TimerId> = self.timers.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
                    for id in due {
                        self.timers.remove(&id);
                        self.input(Input::TimeoutFired(id))?;
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let due: Vec<PartyId> = self.readmit.iter().filter(|(_, t)| **t <= now).map(|(p, _)| *p).collect();
                    for p in due {
                        self.readmit.remove(&p);
                        self.attest.admission.retry(p);
                        self.net.readmit(p);
                    }
                    self.input(Input::Tick)?;
                    if self.sign_watch.tick(now_ms()) == crate::sign_watch::WatchEvent::Ended {
                        info!("double-sign check passed (nothing decided while watching): signing resumes");
                        self.release_withheld();
                    }
                    self.maybe_batch()?;
                    if self.retired_views.due() {
                        self.retired_views.flush(&self.store)?;
                    }
                    self.checkpoint_tick();
                    self.health_tick();
                    if self.status_dirty || last_status.elapsed() > Duration::from_secs(2) {
                        self.write_status();
                        last_status = Instant::now();
                    }
                }
            }
            // Adaptive batching: when no own batch is in flight, whatever
            // waits in the outbox is signed at once (an idle party does
            // not wait for the tick); while one is in flight, operations
            // gather and go out together once it is decided.
            if self.in_flight.is_none() && !self.signing_batch && self.store.outbox_len()? > 0 {
                self.maybe_batch()?;
            }
        }
        self.retired_views.flush(&self.store)?;
        self.write_status();
        Ok(())
    }

    fn input(&mut self, input: Input) -> anyhow::Result<()> {
        let peer = match &input {
            Input::Peer { from, .. } => Some(*from),
            _ => None,
        };
        match self.driver.handle(now_ms(), input) {
            Ok(step) => self.execute(step),
            Err(DriverError::Halted(why)) => {
                self.halted_noted(&why);
                error!(reason = %why, "consensus halted");
                Err(anyhow!("consensus halted: {why}"))
            }
            Err(DriverError::Corrupt(why)) => {
                Err(anyhow!("persisted consensus state is corrupt: {why}"))
            }
            Err(e) => {
                // A local fault with this input (the TPM's signature did not
                // verify): drop it, stay up.
                warn!(peer = ?peer, error = %e, "input refused");
                Ok(())
            }
        }
    }

    /// Handles one frame from an authenticated peer on its connection `conn`.
    fn peer_frame(&mut self, from: PartyId, conn: ConnId, bytes: &[u8]) -> anyhow::Result<()> {
        let frame = match admission::PeerFrame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                warn!(peer = %from, error = %e, "malformed frame; closing the connection");
                self.net
                    .disconnect_conn(from, conn, &format!("malformed frame: {e}"));
                return Ok(());
            }
        };
        match frame {
            admission::PeerFrame::Consensus(b) => {
                if self.attest.admission.admitted(from) {
                    self.input(Input::Peer { from, bytes: b })?;
                }
            }
            admission::PeerFrame::Challenge(nonce) => {
                if nonce.len() > admission::MAX_NONCE {
                    self.net
                        .disconnect_conn(from, conn, "oversized attestation nonce");
                    return Ok(());
                }
                match self.answers.challenge(from, conn, nonce) {
                    admission::ChallengeAction::Answer(nonce) => {
                        self.answer_challenge(from, conn, nonce)
                    }
                    admission::ChallengeAction::Held => {}
                    admission::ChallengeAction::Dropped => {
                        self.metrics.challenges_dropped.add(from.0, 1);
                        debug!(peer = %from, "a second attestation challenge on one connection; dropped");
                    }
                }
            }
            admission::PeerFrame::Evidence(b) => {
                match self.attest.admission.check_evidence(from, &b) {
                    Ok(r) => {
                        info!(peer = %from, executable = %r.executable, measurement = %r.measurement, "peer attested and admitted");
                        self.net.admit(from, conn);
                        self.status_dirty = true;
                    }
                    Err(reason) => self.refuse(from, &reason),
                }
            }
            admission::PeerFrame::Checkpoint(note) => {
                if self.attest.admission.admitted(from) {
                    self.checkpoint_frame(from, &note)?;
                }
            }
            admission::PeerFrame::CannotAttest(why) => {
                if self.attest.admission.enforced() {
                    let reason = format!("the peer cannot attest: {why}");
                    let _ = self.attest.admission.check_evidence(from, &[]);
                    self.refuse(from, &reason);
                }
            }
        }
        Ok(())
    }

    /// Produces evidence for `nonce` off the event loop (the TPM work waits
    /// in the owner's background lane) and answers connection `conn` with
    /// it; [`admission::Answers`] decides which challenges get here.
    fn answer_challenge(&mut self, peer: PartyId, conn: ConnId, nonce: Vec<u8>) {
        let tx = self.evidence_tx.clone();
        if !self.attest.attests {
            let _ = tx.send((
                peer,
                conn,
                Err(
                    "this party was provisioned without an attestation key (quorate init --config)"
                        .into(),
                ),
            ));
            return;
        }
        let evidence = self.evidence(quorate_attestation::evidence::Freshness::Nonce(nonce));
        tokio::spawn(async move {
            let _ = tx.send((peer, conn, evidence.await));
        });
    }

    fn refuse(&mut self, peer: PartyId, reason: &str) {
        self.refusal_noted(peer, reason);
        warn!(peer = %peer, reason, "peer's attestation refused; excluding it");
        self.net
            .exclude(peer, &format!("attestation refused: {reason}"));
        self.readmit.insert(peer, Instant::now() + EXCLUSION);
        self.status_dirty = true;
    }

    /// Carries out a step: persist everything durably, then act.
    fn execute(&mut self, step: Step) -> anyhow::Result<()> {
        for e in self.driver.take_sign_refusals() {
            self.metrics
                .signatures_refused
                .fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "the sign guard refused a signature");
        }
        // What peers sent that the driver refused: diagnostics (the input
        // was dropped; nothing to undo).
        for f in &step.faults {
            debug!(fault = %f, "peer input refused");
        }
        for p in &step.persist {
            match p {
                Persist::WalAppend { height, record } => {
                    self.store.wal_append(height.0, &enc(record)?)?
                }
                Persist::WalReset { height } => self.store.wal_reset(height.0)?,
                Persist::SignGuard(g) => self.store.put_guard(&enc(g)?)?,
                Persist::Decided { decided, chain } => self.store.put_decided(
                    decided.block.header().height.0,
                    &decided.block.to_bytes(),
                    &enc(&decided.certificate)?,
                    &enc(chain)?,
                )?,
            }
        }
        for a in step.actions {
            match a {
                Action::Send { to, bytes } => {
                    self.net.send(
                        to,
                        Arc::from(admission::PeerFrame::Consensus(bytes).encode()),
                    );
                }
                Action::Broadcast { bytes } => {
                    self.net
                        .broadcast(Arc::from(admission::PeerFrame::Consensus(bytes).encode()));
                }
                Action::ScheduleTimeout { id, after_ms } => {
                    self.timers
                        .insert(id, Instant::now() + Duration::from_millis(after_ms));
                }
                Action::CancelTimeout { id } => {
                    self.timers.remove(&id);
                }
                Action::Sign { request, bytes } => {
                    if self.sign_watch.may_sign() {
                        self.spawn_sign(request, bytes, Duration::ZERO)
                    } else {
                        self.metrics
                            .signatures_refused
                            .fetch_add(1, Ordering::Relaxed);
                        warn!("signature withheld: the start-up double-sign check is watching");
                        self.withheld.push((request, bytes));
                    }
                }
                Action::Decided(d) => {
                    self.decided(&d.block, &d.certificate)?;
                }
                Action::ServeStored { to, height } => self.serve_stored(to, height)?,
            }
        }
        // The decided block's audit step is stored: the driver may start
        // the next height with the log head.
        if let Some((head, pending)) = self.app_state.take() {
            match self.driver.set_app_state(now_ms(), head, pending) {
                Ok(step) => self.execute(step)?,
                Err(e) => bail!("consensus halted: {e}"),
            }
        }
        Ok(())
    }

    /// Answers a peer's block request for a decided block older than the
    /// ones the driver keeps, from the store (the driver rationed it).
    fn serve_stored(&mut self, to: PartyId, height: Height) -> anyhow::Result<()> {
        let Some(sb) = self.store.decided(height.0)? else {
            // The driver asks only for heights it decided, all of them
            // stored before it moved on: a gap is a corrupt store.
            bail!("decided block {height} is missing from the store");
        };
        let block = Block::from_bytes(&sb.block)
            .map_err(|e| anyhow!("stored block {height} is corrupt: {e}"))?;
        let frame = block_response_frame(block, dec("certificate", &sb.cert)?);
        self.net.send(
            to,
            Arc::from(admission::PeerFrame::Consensus(frame).encode()),
        );
        Ok(())
    }

    /// Signs what the double-sign watch held back.
    fn release_withheld(&mut self) {
        for (request, bytes) in std::mem::take(&mut self.withheld) {
            self.spawn_sign(request, bytes, Duration::ZERO);
        }
    }

    fn spawn_sign(&self, request: SignRequestId, bytes: Vec<u8>, delay: Duration) {
        let tpm = self.tpm.clone();
        let tx = self.sign_tx.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let t0 = Instant::now();
            let res = tpm
                .sign_consensus(bytes.clone())
                .await
                .map_err(|e| e.to_string());
            metrics.tpm_sign_latency.observe(t0.elapsed());
            let _ = tx.send((request, bytes, res));
        });
    }

    fn decided(&mut self, block: &Block, cert: &CommitCertificate) -> anyhow::Result<()> {
        let outcome = self.apply(block, false)?;
        let h = block.header();
        let ours = cert.signatures.iter().any(|(p, _)| *p == self.me);
        if self
            .sign_watch
            .on_decided(h.height, h.time_ms, ours, now_ms())?
            == crate::sign_watch::WatchEvent::Ended
        {
            info!(
                height = h.height.0,
                "double-sign check passed: signing resumes"
            );
            self.release_withheld();
        }
        self.last = Some(status::LastDecision {
            height: h.height.0,
            time_ms: h.time_ms,
            block_hash: hex::encode(block.hash().0.as_bytes()),
            operations: outcome.ops.len(),
            signers: cert.signatures.len(),
        });
        self.status_dirty = true;
        self.metrics.decisions.fetch_add(1, Ordering::Relaxed);
        self.decided_health(block);
        self.metrics
            .decided_ops
            .fetch_add(outcome.ops.len() as u64, Ordering::Relaxed);
        info!(height = h.height.0, ops = outcome.ops.len(), root = %outcome.state_root, "decided");
        let actions = self.engine.on_block(&self.machine, &outcome.events);
        self.engine_actions(actions)?;
        self.signing_block(h.time_ms, &outcome.events, true)?;
        if self.ends_a_refresh(&outcome.events) {
            self.erase_unused_shares()?;
        }
        self.set_wake();
        let every = self.cfg.file.cluster.attestation_every;
        if self.attest.attests && every > 0 && h.height.0 % every == 0 {
            self.spawn_epoch_record(h.height, block.hash().0);
        }
        self.post_verdicts()
    }

    /// Applies a decided block to the session machine and resolves our own
    /// batches in it. `replay` is true while rebuilding state at start.
    fn apply(&mut self, block: &Block, replay: bool) -> anyhow::Result<BlockOutcome> {
        let h = block.header();
        let outcome = self
            .machine
            .apply_block(h.height, h.time_ms, block.batches())
            .map_err(|e| anyhow!("applying block {}: {e}", h.height.0))?;
        self.store_retired(replay)?;
        self.events.push_block(&outcome);
        for (bi, b) in block.batches().iter().enumerate() {
            if b.body.author != self.me {
                for (oi, bytes) in b.body.ops.iter().enumerate() {
                    if let Ok(
                        op @ Operation {
                            body: OpBody::AttestationRecord(_),
                            ..
                        },
                    ) = Operation::decode(bytes)
                    {
                        let id = OpId::derive(
                            &self.cfg.cluster_id,
                            h.height,
                            bi as u32,
                            b.body.author,
                            b.body.seq,
                            oi as u32,
                        );
                        self.records.insert(id, op);
                    }
                }
                continue;
            }
            let Some(fl) = self.in_flight.clone() else {
                continue;
            };
            if b.body.seq < fl.seq {
                continue;
            }
            // Our in-flight batch (or, after a crash, the same sequence
            // number) is decided: record where its operations went.
            let mut receipts = Vec::with_capacity(fl.outbox.len());
            for (i, ob) in fl.outbox.iter().enumerate() {
                let op = OpId::derive(
                    &self.cfg.cluster_id,
                    h.height,
                    bi as u32,
                    self.me,
                    b.body.seq,
                    i as u32,
                );
                let rec = ReceiptRecord {
                    op: Some(op),
                    height: Some(h.height),
                };
                receipts.push((*ob, enc(&rec)?, hex::encode(op.0.as_bytes())));
            }
            self.store.own_batch_decided(&receipts)?;
            self.in_flight = None;
            self.in_flight_signed = None;
            self.metrics.batch_decided(b.body.seq);
            if !replay {
                debug!(seq = b.body.seq, ops = fl.outbox.len(), "own batch decided");
            }
        }
        self.audit_decided(block, &outcome, replay)?;
        Ok(outcome)
    }

    /// Queues an operation of this party's in the durable outbox. Not
    /// bounded by `party.max_outbox_ops`: the daemon's own operations
    /// (verdicts, MPC rounds, results, attestation records) are what lets
    /// the work already accepted finish.
    fn queue(&self, body: OpBody) -> anyhow::Result<()> {
        match self.push_own(vec![body], None, None) {
            Ok(_) => Ok(()),
            Err(SubmitRefused {
                error: SubmitError::Unavailable(e),
                ..
            }) => Err(anyhow::anyhow!(e)),
            Err(e) => {
                // A retry of something this party already signed: the one
                // in the log (or the outbox) stands.
                warn!(error = %e, "not queueing a second operation for a slot this party holds");
                Ok(())
            }
        }
    }

    /// Accepts operations of this party into the outbox, all of them or
    /// none, at most once per slot and per idempotency key, durably and in
    /// one transaction with their guard records. The same operation again
    /// gets its first receipt; a different one for a held slot is refused
    /// ([`SubmitError::SlotTaken`]), so this party never signs two
    /// operations that would prove it an equivocator. An idempotency key
    /// covers the whole request: the same operations in the same order get
    /// the first receipts. With `limit`, refused
    /// ([`SubmitError::OutboxFull`]) when the new operations would take
    /// the outbox past it. Returns one receipt per operation, in order.
    ///
    /// The guards are read before the write transaction: the event loop
    /// owns the only writer and handles one command at a time, so nothing
    /// changes them in between.
    fn push_own(
        &self,
        bodies: Vec<OpBody>,
        idempotency_key: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<Receipt>, SubmitRefused> {
        let whole = |error| SubmitRefused { index: None, error };
        let at = |index, error| SubmitRefused {
            index: Some(index),
            error,
        };
        let unavailable =
            |e: &dyn std::fmt::Display| whole(SubmitError::Unavailable(e.to_string()));
        let read_guard = |key: &str| -> Result<Option<GuardRecord>, SubmitRefused> {
            match self.store.meta(key).map_err(|e| unavailable(&e))? {
                Some(v) => serde_json::from_slice(&v)
                    .map(Some)
                    .map_err(|e| unavailable(&e)),
                None => Ok(None),
            }
        };
        let me = self.me.0;
        // Each operation encoded, with its slot guard and, when the slot is
        // held already, the receipt holding it (or why it cannot have it).
        struct Item {
            bytes: Vec<u8>,
            digest: [u8; 32],
            guard: Option<String>,
            words: String,
            held: Option<Result<String, SubmitError>>,
        }
        let mut items = Vec::with_capacity(bodies.len());
        for body in bodies {
            let slot = body.slot();
            let (guard, record, decided) = match &slot {
                Some(slot) => {
                    let key = slot_guard(slot);
                    let record = read_guard(&key)?;
                    let decided = match record {
                        Some(_) => None,
                        None => self
                            .decided_in_slot(slot, &body)
                            .map(|r| r.map(|(receipt, _)| receipt.id)),
                    };
                    (Some(key), record, decided)
                }
                None => (None, None, None),
            };
            let bytes = Operation {
                author: self.me,
                body,
            }
            .encode();
            let digest = *quorate_firmware::types::Sha256Digest::of(&bytes).as_bytes();
            let held = match (record, &slot) {
                // The firmware's slot rule (`sessions::slot`): the same
                // bytes are a repeat, answered with the first receipt;
                // other bytes are refused.
                (Some(rec), _)
                    if quorate_firmware::sessions::slot::check(
                        Some(&quorate_firmware::types::Sha256Digest(rec.digest)),
                        &quorate_firmware::types::Sha256Digest(digest),
                    ) == quorate_firmware::sessions::slot::SlotCheck::Repeat =>
                {
                    Some(Ok(rec.receipt))
                }
                (Some(rec), Some(slot)) => Some(Err(SubmitError::SlotTaken {
                    slot: slot_words(slot),
                    existing: rec.receipt,
                })),
                _ => decided,
            };
            items.push(Item {
                bytes,
                digest,
                guard,
                words: slot.as_ref().map(slot_words).unwrap_or_default(),
                held,
            });
        }
        // A request is named by the digest of its one operation (as before
        // bulk requests existed), or of all of them in order.
        let request_digest = match items.as_slice() {
            [one] => one.digest,
            all => {
                let mut b = b"quorate/bulk-request/v1".to_vec();
                all.iter().for_each(|it| b.extend_from_slice(&it.digest));
                *quorate_firmware::types::Sha256Digest::of(&b).as_bytes()
            }
        };
        if let Some(k) = idempotency_key {
            if let Some(rec) = read_guard(&idempotency_guard(k))? {
                if rec.digest != request_digest {
                    return Err(whole(SubmitError::KeyReused {
                        existing: rec.receipt,
                    }));
                }
                return Ok(rec
                    .receipts()
                    .into_iter()
                    .map(|id| Receipt { id })
                    .collect());
            }
        }
        let mut receipts: Vec<Option<String>> = Vec::with_capacity(items.len());
        let mut new: Vec<(usize, Item)> = Vec::new();
        let mut slots_here: BTreeMap<String, usize> = BTreeMap::new();
        for (i, mut it) in items.into_iter().enumerate() {
            if let Some(key) = &it.guard {
                if let Some(j) = slots_here.insert(key.clone(), i) {
                    return Err(at(
                        i,
                        SubmitError::SlotTaken {
                            slot: it.words.clone(),
                            existing: format!("operations[{j}] of this request"),
                        },
                    ));
                }
            }
            match it.held.take() {
                Some(Ok(receipt)) => receipts.push(Some(receipt)),
                Some(Err(e)) => return Err(at(i, e)),
                None => {
                    receipts.push(None);
                    new.push((i, it));
                }
            }
        }
        if let Some(limit) = limit.filter(|l| new.len() as u64 > *l) {
            return Err(whole(SubmitError::NeverFits {
                ops: new.len(),
                limit,
            }));
        }
        let ops: Vec<Vec<u8>> = new
            .iter_mut()
            .map(|(_, it)| std::mem::take(&mut it.bytes))
            .collect();
        // Fill in the receipts of the new operations from their sequence
        // numbers: every receipt then known.
        let complete = |seqs: &[u64]| -> Vec<String> {
            let mut all = receipts.clone();
            for ((i, ..), seq) in new.iter().zip(seqs) {
                if let Some(r) = all.get_mut(*i) {
                    *r = Some(format!("r{me}-{seq}"));
                }
            }
            all.into_iter().map(Option::unwrap_or_default).collect()
        };
        if new.is_empty() {
            return Ok(complete(&[]).into_iter().map(|id| Receipt { id }).collect());
        }
        let guards = |seqs: &[u64]| {
            let mut out = Vec::new();
            let record = |digest, receipt, receipts| {
                serde_json::to_vec(&GuardRecord {
                    digest,
                    receipt,
                    receipts,
                })
                .unwrap_or_default()
            };
            for ((_, it), seq) in new.iter().zip(seqs) {
                if let Some(key) = &it.guard {
                    out.push((
                        key.clone(),
                        record(it.digest, format!("r{me}-{seq}"), vec![]),
                    ));
                }
            }
            if let Some(k) = idempotency_key {
                let all = complete(seqs);
                let first = all.first().cloned().unwrap_or_default();
                let rest = if all.len() > 1 { all } else { vec![] };
                out.push((idempotency_guard(k), record(request_digest, first, rest)));
            }
            out
        };
        match self
            .store
            .outbox_push_all(&ops, limit, guards)
            .map_err(|e| unavailable(&e))?
        {
            crate::store::OutboxPush::Pushed(seqs) => Ok(complete(&seqs)
                .into_iter()
                .map(|id| Receipt { id })
                .collect()),
            crate::store::OutboxPush::Full { queued } => Err(whole(SubmitError::OutboxFull {
                queued,
                limit: limit.unwrap_or(queued),
            })),
        }
    }

    /// When the decided log already holds this party's operation in
    /// `slot` (decided before guard records existed, or by a store
    /// restored from a backup): the same `body` is answered as already
    /// done, a different one refused.
    fn decided_in_slot(
        &self,
        slot: &quorate_firmware::sessions::ops::Slot,
        body: &OpBody,
    ) -> Option<Result<(Receipt, u64), SubmitError>> {
        use quorate_firmware::sessions::ops::Slot;
        let (same, existing) = match (slot, body) {
            (Slot::Message { session, round }, OpBody::SessionMessage(m)) => {
                let d = self
                    .machine
                    .session(session)?
                    .messages
                    .iter()
                    .find(|d| d.from == self.me && d.round == *round)?;
                (
                    d.broadcast == m.broadcast && d.direct == m.direct,
                    hex::encode(d.op.0.as_bytes()),
                )
            }
            (Slot::Result { session }, OpBody::SessionResult(r)) => {
                let mine = self.machine.session(session)?.results.get(&self.me)?;
                (*mine == r.result, "its decided result".to_string())
            }
            (Slot::Verdict { target }, OpBody::Verdict(v)) => {
                let mine = self.machine.operation(target)?.verdicts.get(&self.me)?;
                (*mine == v.decision, "its decided verdict".to_string())
            }
            _ => return None,
        };
        Some(if same {
            Ok((Receipt { id: existing }, 0))
        } else {
            Err(SubmitError::SlotTaken {
                slot: slot_words(slot),
                existing,
            })
        })
    }

    /// Carries out the MPC engine's actions: operations go to the outbox;
    /// a finished key share is sealed by the TPM off the event loop.
    fn engine_actions(&mut self, actions: Vec<crate::engine::EngineAction>) -> anyhow::Result<()> {
        for a in actions {
            match a {
                crate::engine::EngineAction::Submit(body) => {
                    self.queue(body)?;
                }
                crate::engine::EngineAction::Unseal {
                    session,
                    share_session,
                } => self.unseal_share(session, share_session),
                crate::engine::EngineAction::Seal {
                    session,
                    share,
                    group_public_key,
                } => {
                    let tpm = self.tpm.clone();
                    let tx = self.seal_tx.clone();
                    let scheme = share.scheme.label().to_string();
                    tokio::spawn(async move {
                        let secret = share.secret.clone();
                        let res = tpm
                            .seal(secret)
                            .await
                            .map(|sealed| crate::engine::StoredShare {
                                scheme,
                                sealed,
                                public: share.public.clone(),
                                group_public_key,
                            })
                            .map_err(|e| e.to_string());
                        let _ = tx.send((session, res));
                    });
                }
            }
        }
        Ok(())
    }

    /// Tells the driver when the next deadline falls due, so an idle
    /// cluster still decides the block that applies it.
    fn set_wake(&mut self) {
        let wake = [self.machine.next_deadline(), self.signing.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        self.driver.set_wake_at(wake);
    }

    /// Runs the signing sessions' ROAST observers (and, when `live`, their
    /// signers) over a decided block.
    fn signing_block(
        &mut self,
        time_ms: u64,
        events: &[quorate_firmware::sessions::machine::Event],
        live: bool,
    ) -> anyhow::Result<()> {
        let store = &self.store;
        let machine = &self.machine;
        let stored = |key: &quorate_firmware::sessions::ops::KeyId| {
            let share_session = machine.key(key)?.share_session();
            crate::engine::load_share(store, &share_session).unwrap_or_else(|e| {
                warn!(error = %e, "reading this party's key share failed");
                None
            })
        };
        // A party far behind applies history: a signing that started there
        // may hold commitments of an earlier run of this daemon (a store
        // restored from a backup) further on, so it only observes.
        let catching_up = self.driver.far_behind();
        let actions =
            self.signing
                .on_block(&self.machine, time_ms, events, &stored, live, catching_up);
        if live {
            self.signing_actions(actions)?;
        }
        Ok(())
    }

    /// Carries out the signing engine's actions, in order: a "nonce used"
    /// record is written before the share that used it is queued.
    fn signing_actions(&mut self, actions: Vec<crate::signing::SignAction>) -> anyhow::Result<()> {
        for a in actions {
            match a {
                crate::signing::SignAction::Submit(body) => {
                    self.queue(body)?;
                }
                crate::signing::SignAction::NonceUsed { session, slot } => {
                    let key = crate::signing::nonce_used_key(&session);
                    let mut used: BTreeSet<u32> = match self.store.meta(&key)? {
                        Some(b) => dec("used nonces", &b)?,
                        None => BTreeSet::new(),
                    };
                    used.insert(slot);
                    self.store.set_meta(&key, &enc(&used)?)?;
                }
                crate::signing::SignAction::Unseal { session } => {
                    let Some(share_session) =
                        self.machine.session(&session).and_then(|s| match &s.spec {
                            quorate_firmware::sessions::ops::SessionSpec::Signing(sp) => {
                                self.machine.key(&sp.key).map(|k| k.share_session())
                            }
                            _ => None,
                        })
                    else {
                        continue;
                    };
                    self.unseal_share(session, share_session);
                }
            }
        }
        Ok(())
    }

    /// Unseals this party's share stored under `share_session` in the TPM,
    /// off the event loop, for `session` (a signing or a refresh); the
    /// result comes back on the unseal channel. Without a stored share the
    /// session gets an error, so it does not wait.
    fn unseal_share(&self, session: SessionId, share_session: SessionId) {
        let tx = self.unseal_tx.clone();
        let stored = match crate::engine::load_share(&self.store, &share_session) {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                let _ = tx.send((session, Err("this party holds no share of the key".into())));
                return;
            }
            Err(e) => {
                let _ = tx.send((session, Err(e.to_string())));
                return;
            }
        };
        let tpm = self.tpm.clone();
        tokio::spawn(async move {
            let res = tpm
                .unseal(stored.sealed.clone())
                .await
                .map(|secret| (secret, stored))
                .map_err(|e| e.to_string());
            let _ = tx.send((session, res));
        });
    }

    /// True when `events` end a share refresh (completed or failed).
    fn ends_a_refresh(&self, events: &[quorate_firmware::sessions::machine::Event]) -> bool {
        use quorate_firmware::sessions::machine::Event;
        events.iter().any(|e| match e {
            Event::SessionCompleted { session, .. } | Event::SessionFailed { session, .. } => {
                self.machine.session(session).map(|s| s.spec.kind())
                    == Some(quorate_firmware::sessions::ops::SessionKind::Refresh)
            }
            _ => false,
        })
    }

    /// Erases every stored key share that no longer signs: a share replaced
    /// by a completed refresh, or one from a key generation or refresh that
    /// failed. Kept: each key's current share, and shares of sessions still
    /// open (a refresh's new share waits for the refresh to complete).
    fn erase_unused_shares(&mut self) -> anyhow::Result<()> {
        let current: BTreeSet<SessionId> = self
            .machine
            .state()
            .keys
            .values()
            .map(|k| k.share_session())
            .collect();
        for (name, sid) in crate::engine::stored_shares(&self.store)? {
            let open = self
                .machine
                .session(&sid)
                .is_some_and(|s| s.phase.is_open());
            if current.contains(&sid) || open {
                continue;
            }
            self.store.remove_meta(&name)?;
            info!(session = %hex::encode(sid.0.as_bytes()), "erased a key share that no longer signs");
        }
        Ok(())
    }

    /// A key share is sealed: store it, then post the group key as this
    /// party's result (in that order, so a completed key always has its
    /// share here).
    fn share_sealed(
        &mut self,
        session: SessionId,
        res: Result<crate::engine::StoredShare, String>,
    ) -> anyhow::Result<()> {
        let body = match res {
            Ok(stored) => {
                crate::engine::store_share(&self.store, &session, &stored)?;
                info!(session = %hex::encode(session.0.as_bytes()), "key share sealed in the TPM; posting the group key");
                crate::engine::result_op(session, stored.group_public_key)
            }
            Err(e) => {
                error!(error = %e, "sealing a key share in the TPM failed; aborting the key generation");
                crate::engine::seal_failed_op(session, &e)
            }
        };
        self.queue(body)?;
        Ok(())
    }

    /// At start: key generations that were running lost their round
    /// secrets; re-post results whose share was sealed, abort the rest.
    /// `queued`: sessions that already have a result or abort of ours in
    /// the outbox.
    fn engine_restart(&mut self, queued: &BTreeSet<SessionId>) -> anyhow::Result<()> {
        let store = &self.store;
        let sealed = |sid: &SessionId| -> Option<Vec<u8>> {
            match crate::engine::load_share(store, sid) {
                Ok(s) => s.map(|s| s.group_public_key),
                Err(e) => {
                    warn!(error = %e, "reading this party's key share failed");
                    None
                }
            }
        };
        let actions = self.engine.on_restart(&self.machine, &sealed, queued);
        self.engine_actions(actions)?;
        let actions = self.signing.on_restart(&self.machine, queued);
        self.signing_actions(actions)
    }

    /// Queues this party's verdict on every operation awaiting it.
    fn post_verdicts(&mut self) -> anyhow::Result<()> {
        let policy = self.cfg.file.party.local_policy.clone();
        for target in self.machine.awaiting_verdict_from(self.me) {
            if self.verdicts_queued.contains(&target) {
                continue;
            }
            let record = self.records.get(&target).cloned();
            match policy::evaluate(&policy, self.me, &self.machine, target, record.as_ref()) {
                PolicyDecision::Post(op) => {
                    self.store.outbox_push(&op.encode())?;
                    self.verdicts_queued.insert(target);
                }
                PolicyDecision::Manual { target } => {
                    debug!(op = %hex::encode(target.0.as_bytes()), "awaiting the operator's verdict");
                }
                PolicyDecision::VerifyAttestation {
                    target,
                    subject,
                    binds_height,
                    evidence,
                } => {
                    let decision = self.judge_record(subject, binds_height, &evidence.0)?;
                    let op = policy::verdict(self.me, target, decision);
                    self.store.outbox_push(&op.encode())?;
                    self.verdicts_queued.insert(target);
                }
                PolicyDecision::Nothing => {}
            }
        }
        // Keep only the records still awaiting verdicts, and the verdicts
        // queued on operations still pending (the rest are settled: no
        // verdict is asked for them again).
        let pending = &self.machine.state().pending;
        self.verdicts_queued.retain(|id| pending.contains(id));
        let machine = &self.machine;
        self.records.retain(|id, _| {
            machine
                .operation(id)
                .is_some_and(|r| r.status == quorate_firmware::sessions::machine::OpStatus::Pending)
        });
        Ok(())
    }

    /// Evidence from this party's TPM for `fresh`, quoting the PCRs the
    /// policy names, encoded; to be awaited off the event loop.
    fn evidence(
        &self,
        fresh: quorate_attestation::evidence::Freshness,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send + 'static {
        let tpm = self.tpm.clone();
        let dir = self.cfg.file.party.data_dir.clone();
        let pcr = self.attest.measurement_pcr;
        let extra = self
            .attest
            .admission
            .policy()
            .map(|p| p.quoted_pcrs())
            .unwrap_or_default();
        let tls = self.attest.tls_key_hash;
        async move {
            crate::evidence::produce_evidence(&tpm, &dir, pcr, &extra, &fresh, &tls)
                .await
                .map(|e| e.to_bytes())
                .map_err(|e| e.to_string())
        }
    }

    /// Quotes with the epoch and the hash of block `height` bound in, and
    /// queues the evidence as this party's AttestationRecord: one quote
    /// serves every peer, and the log shows what code ran across history.
    fn spawn_epoch_record(
        &self,
        height: Height,
        block_hash: quorate_firmware::types::Sha256Digest,
    ) {
        let evidence = self.evidence(quorate_attestation::evidence::Freshness::Epoch {
            epoch: self.cfg.epoch(),
            block_hash,
        });
        let tx = self.record_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send((height, evidence.await));
        });
    }

    /// This party's verdict on `subject`'s epoch attestation record. A
    /// refusal also excludes the subject, as a failed admission does.
    fn judge_record(
        &mut self,
        subject: PartyId,
        binds_height: Height,
        evidence: &[u8],
    ) -> anyhow::Result<quorate_firmware::sessions::ops::Decision> {
        use quorate_firmware::sessions::ops::{Decision, Reason, ReasonCode};
        if !self.attest.admission.enforced() {
            // Dev mode without reference values: nothing to check against.
            return Ok(Decision::Approve);
        }
        let block_hash = match self.store.decided(binds_height.0)? {
            Some(sb) => {
                Block::from_bytes(&sb.block)
                    .map_err(|e| anyhow!("stored block {} is corrupt: {e}", binds_height.0))?
                    .hash()
                    .0
            }
            None => {
                return Ok(Decision::Reject(Reason {
                    code: ReasonCode::AttestationInvalid,
                    text: format!("binds height {} which is not decided here", binds_height.0),
                }))
            }
        };
        let fresh = quorate_attestation::evidence::Freshness::Epoch {
            epoch: self.cfg.epoch(),
            block_hash,
        };
        match self
            .attest
            .admission
            .check_record(subject, evidence, &fresh)
        {
            Ok(r) => {
                info!(peer = %subject, height = binds_height.0, executable = %r.executable, "epoch attestation record verified");
                Ok(Decision::Approve)
            }
            Err(reason) => {
                let text: String = reason.chars().take(400).collect();
                self.refuse(subject, &format!("epoch attestation record: {reason}"));
                Ok(Decision::Reject(Reason {
                    code: ReasonCode::AttestationInvalid,
                    text,
                }))
            }
        }
    }

    /// Starts signing a batch of outbox operations if none is in flight, or
    /// resubmits the in-flight one if it has not been decided for a while.
    fn maybe_batch(&mut self) -> anyhow::Result<()> {
        if let Some((batch, at)) = &self.in_flight_signed {
            if at.elapsed() > BATCH_RESUBMIT {
                let batch = batch.clone();
                self.in_flight_signed = Some((batch.clone(), Instant::now()));
                self.input(Input::SubmitBatch(batch))?;
            }
            return Ok(());
        }
        if let Some(fl) = &self.in_flight {
            if fl.seq > 0 && self.in_flight_signed.is_none() && !self.signing_batch {
                // After a restart: sign the recorded batch again.
                let fl = fl.clone();
                self.sign_batch(fl);
            }
            return Ok(());
        }
        // Split at both limits the validators enforce, so an accepted
        // operation is never decided as `too_many_ops`; read only that much.
        let head = self.store.outbox_head(
            quorate_firmware::sessions::ops::MAX_OPS_PER_BATCH,
            MAX_BATCH_BYTES,
        )?;
        if head.is_empty() {
            return Ok(());
        }
        let (outbox, ops) = head.into_iter().unzip();
        let mut fl = InFlight {
            seq: 0,
            outbox,
            ops,
        };
        let last = self.machine.last_seq(self.me).unwrap_or(0);
        let used: u64 = match self.store.meta("last_batch_seq")? {
            Some(b) => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
            None => 0,
        };
        fl.seq = last.max(used) + 1;
        // Durable before the TPM signs: after a crash the same batch is redone.
        self.store
            .set_meta("last_batch_seq", &fl.seq.to_be_bytes())?;
        self.store.set_meta("in_flight", &enc(&fl)?)?;
        self.in_flight = Some(fl.clone());
        self.sign_batch(fl);
        Ok(())
    }

    fn sign_batch(&mut self, fl: InFlight) {
        self.signing_batch = true;
        let body = quorate_firmware::batch::BatchBody {
            cluster: self.cfg.cluster_id,
            author: self.me,
            seq: fl.seq,
            ops: fl.ops.clone(),
        };
        let tpm = self.tpm.clone();
        let tx = self.batch_tx.clone();
        let metrics = self.metrics.clone();
        metrics.batch_started(fl.seq);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let res = tpm
                .sign_consensus(body.signing_bytes())
                .await
                .map(|signature| SignedBatch { body, signature })
                .map_err(|e| e.to_string());
            metrics.tpm_sign_latency.observe(t0.elapsed());
            let _ = tx.send((fl.seq, res));
        });
    }

    fn batch_signed(&mut self, seq: u64, res: Result<SignedBatch, String>) -> anyhow::Result<()> {
        self.signing_batch = false;
        match (res, &self.in_flight) {
            (Ok(batch), Some(fl)) if fl.seq == seq => {
                self.in_flight_signed = Some((batch.clone(), Instant::now()));
                self.input(Input::SubmitBatch(batch))
            }
            (Ok(_), _) => Ok(()), // decided meanwhile (a resubmission's twin)
            (Err(e), _) => {
                self.metrics.tpm_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "signing a batch failed; will retry");
                Ok(())
            }
        }
    }

    fn command(&mut self, cmd: Command) -> anyhow::Result<()> {
        match cmd {
            Command::Submit {
                bodies,
                idempotency_key,
                reply,
            } => {
                let n = bodies.len() as u64;
                let limit = self.cfg.file.party.max_outbox_ops;
                let res = self.push_own(bodies, idempotency_key.as_deref(), Some(limit));
                match &res {
                    Ok(_) => {
                        self.metrics.accepted_ops.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(SubmitRefused {
                        error: SubmitError::OutboxFull { .. },
                        ..
                    }) => {
                        self.metrics
                            .backpressure_refused_ops
                            .fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
                let _ = reply.send(res);
            }
            Command::Query { query, reply } => {
                let _ = reply.send(self.query(query));
            }
        }
        Ok(())
    }

    fn query(&self, q: Query) -> Option<serde_json::Value> {
        match q {
            Query::Status => serde_json::to_value(self.status()).ok(),
            Query::Operation(id) => self.operation_view(&id),
            Query::Session(id) => self.session_view(&id),
            Query::Messages { session, round } => self.messages_view(&session, round),
            Query::Blocks { from, limit } => self.blocks_view(from, limit),
            Query::CheckSession(spec) => Some(match self.machine.check_session(&spec) {
                Ok(_) => serde_json::json!({"ok": true}),
                Err(rule) => {
                    // The rule's snake_case name, as decided records carry it.
                    let name = match serde_json::to_value(&rule) {
                        Ok(serde_json::Value::String(n)) => n,
                        Ok(serde_json::Value::Object(m)) => {
                            m.keys().next().cloned().unwrap_or_default()
                        }
                        _ => String::new(),
                    };
                    serde_json::json!({"rule": name, "reason": rule.to_string()})
                }
            }),
            // Beyond the log: `null` (the API answers 404).
            Query::Log(q) => match audit::log_view(&self.store, q) {
                Ok(v) => Some(v.unwrap_or(serde_json::Value::Null)),
                Err(e) => {
                    warn!(error = %e, "reading the audit log failed");
                    None
                }
            },
        }
    }

    /// A session as `GET /v1/sessions/{id}` shows it: from memory while
    /// the session machine holds it, then from the view stored when it was
    /// retired.
    fn session_view(&self, id: &str) -> Option<serde_json::Value> {
        let sid = parse_session_id(id)?;
        let mut v = match self.machine.session(&sid) {
            Some(s) => self.session_value(s)?,
            None => self.retired_view(crate::store::Retired::Session, sid.0.as_bytes())?,
        };
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("height".into(), self.machine.height().0.into());
        }
        Some(v)
    }

    /// The stored view of a retired record, if any.
    fn retired_view(
        &self,
        kind: crate::store::Retired,
        id: &[u8; 32],
    ) -> Option<serde_json::Value> {
        if let Some(b) = self.retired_views.views.get(&(kind, *id)) {
            return serde_json::from_slice(b).ok();
        }
        match self.store.retired(kind, id) {
            Ok(Some(b)) => serde_json::from_slice(&b).ok(),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "reading a retired record failed");
                None
            }
        }
    }

    /// `s` as the API shows it (without the current height).
    fn session_value(
        &self,
        s: &quorate_firmware::sessions::machine::Session,
    ) -> Option<serde_json::Value> {
        use quorate_firmware::sessions::query::{messages_of, results_of};
        let mut v = serde_json::to_value(s).ok()?;
        if let serde_json::Value::Object(m) = &mut v {
            // As this party reads them: no one else's point-to-point parts.
            m.insert(
                "messages".into(),
                serde_json::to_value(messages_of(s, None, Some(self.me))).ok()?,
            );
            if let Some((gpk, key)) = crate::engine::key_view(&self.machine, s) {
                m.insert("group_public_key".into(), gpk.into());
                m.insert("key".into(), key.into());
            }
            if let Some(sv) = self.signing.view(&s.id) {
                if let Some(sig) = &sv.signature {
                    m.insert("signature".into(), sig.clone().into());
                }
                if let Some(vk) = &sv.verifying_key {
                    m.insert("verifying_key".into(), vk.clone().into());
                }
                m.insert("roast".into(), serde_json::to_value(sv).ok()?);
                m.insert("attempts".into(), serde_json::to_value(&sv.attempts).ok()?);
            }
            m.insert("phase_label".into(), s.phase.label().into());
            m.insert("results".into(), serde_json::to_value(results_of(s)).ok()?);
        }
        Some(v)
    }

    /// A session's messages (`GET /v1/sessions/{id}/messages`), from memory
    /// or from the view stored when the session was retired.
    fn messages_view(&self, session: &str, round: Option<u32>) -> Option<serde_json::Value> {
        let id = parse_session_id(session)?;
        let msgs = match self.machine.messages(&id, round, Some(self.me)) {
            Some(msgs) => serde_json::to_value(msgs).ok()?,
            None => {
                let v = self.retired_view(crate::store::Retired::Session, id.0.as_bytes())?;
                let all = v.get("messages")?.as_array()?;
                serde_json::Value::Array(
                    all.iter()
                        .filter(|m| {
                            round.is_none_or(|r| {
                                m.get("round").and_then(|x| x.as_u64()) == Some(u64::from(r))
                            })
                        })
                        .cloned()
                        .collect(),
                )
            }
        };
        Some(serde_json::json!({
            "session": session,
            "round": round,
            "height": self.machine.height().0,
            "messages": msgs,
        }))
    }

    /// Stores the API views of what the session machine retired (after
    /// each applied block). In the replay at start, only those not stored
    /// yet (a view written before a crash is kept as it was).
    fn store_retired(&mut self, replay: bool) -> anyhow::Result<()> {
        use crate::store::Retired as Kind;
        let retired = self.machine.take_retired();
        let st = self.machine.state();
        self.metrics
            .machine_sessions
            .store(st.sessions.len() as u64, Ordering::Relaxed);
        self.metrics
            .machine_ops
            .store(st.ops.len() as u64, Ordering::Relaxed);
        if retired.is_empty() {
            return Ok(());
        }
        let known = |rt: &Self, kind, id: &[u8; 32]| -> anyhow::Result<bool> {
            Ok(rt.retired_views.views.contains_key(&(kind, *id))
                || rt.store.has_retired(kind, id)?)
        };
        for rec in &retired.ops {
            let id = *rec.id.0.as_bytes();
            if replay && known(self, Kind::Op, &id)? {
                continue;
            }
            let view = serde_json::to_vec(&op_value(rec))?;
            self.retired_views.push(Kind::Op, id, view);
        }
        for s in &retired.sessions {
            let id = *s.id.0.as_bytes();
            if !(replay && known(self, Kind::Session, &id)?) {
                if let Some(v) = self.session_value(s) {
                    let view = serde_json::to_vec(&v)?;
                    self.retired_views.push(Kind::Session, id, view);
                }
            }
            self.signing.forget(&s.id);
        }
        if self.retired_views.views.len() >= RetiredViews::FLUSH_AT {
            self.retired_views.flush(&self.store)?;
        }
        Ok(())
    }

    fn blocks_view(&self, from: u64, limit: usize) -> Option<serde_json::Value> {
        let mut blocks = Vec::new();
        for sb in self.store.decided_range(from.max(1), limit).ok()? {
            let block = Block::from_bytes(&sb.block).ok()?;
            let cert: CommitCertificate = postcard::from_bytes(&sb.cert).ok()?;
            let h = block.header();
            blocks.push(serde_json::json!({
                "height": sb.height,
                "time_ms": h.time_ms,
                "hash": hex::encode(block.hash().0.as_bytes()),
                "parent": hex::encode(h.parent.0.as_bytes()),
                "proposer": h.proposer.0,
                "batches": block.batches().iter().map(|b| serde_json::json!({
                    "author": b.body.author.0,
                    "seq": b.body.seq,
                    "operations": b.body.ops.len(),
                })).collect::<Vec<_>>(),
                "certificate": {
                    "round": cert.round,
                    "block": hex::encode(cert.block.0.as_bytes()),
                    "signers": cert.signatures.iter().map(|(p, _)| p.0).collect::<Vec<_>>(),
                    "signatures": cert.signatures.iter().map(|(p, s)| serde_json::json!({
                        "party": p.0,
                        "signature": hex::encode(s.0),
                    })).collect::<Vec<_>>(),
                },
            }));
        }
        Some(serde_json::json!({
            "height": self.driver.chain().height.0,
            "blocks": blocks,
        }))
    }

    fn operation_view(&self, id: &str) -> Option<serde_json::Value> {
        let op = if let Some(rest) = id.strip_prefix(&format!("r{}-", self.me.0)) {
            let seq: u64 = rest.parse().ok()?;
            match self.store.meta(&format!("receipt/{seq}")).ok()? {
                Some(b) => postcard::from_bytes::<ReceiptRecord>(&b).ok()?.op?,
                None => {
                    // Accepted, not yet decided (still in the outbox).
                    let queued = self.store.outbox_contains(seq).ok()?;
                    return queued.then(|| {
                        serde_json::json!({"id": id, "status": "pending", "decided": false, "verdicts": []})
                    });
                }
            }
        } else {
            let bytes: [u8; 32] = hex::decode(id).ok()?.try_into().ok()?;
            OpId(quorate_firmware::types::Sha256Digest(bytes))
        };
        let mut v = match self.machine.operation(&op) {
            Some(rec) => op_value(rec),
            None => self.retired_view(crate::store::Retired::Op, op.0.as_bytes())?,
        };
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("id".into(), id.into());
        }
        Some(v)
    }

    fn status(&self) -> StatusView {
        let peers = self
            .cfg
            .file
            .cluster
            .parties
            .iter()
            .filter(|p| p.id != self.me.0)
            .map(|p| {
                let standing = self.attest.admission.standing(PartyId(p.id));
                let (attested, attestation) = match standing {
                    admission::Standing::Attested { executable, .. } => (
                        true,
                        format!(
                            "attested (executable {})",
                            executable.get(..16).unwrap_or(&executable)
                        ),
                    ),
                    admission::Standing::Pending => (false, "awaiting evidence".to_string()),
                    admission::Standing::Unchecked => (
                        false,
                        "admitted unchecked (dev: no reference policy)".to_string(),
                    ),
                    admission::Standing::Refused(r) => (false, format!("REFUSED: {r}")),
                };
                PeerStatus {
                    party: p.id,
                    address: p.address.clone(),
                    connected: self.peers_up.contains_key(&PartyId(p.id)),
                    attested,
                    attestation,
                }
            })
            .collect::<Vec<_>>();
        StatusView {
            party: self.me.0,
            cluster: self.cfg.cluster_id.0.to_string(),
            height: self.driver.chain().height.0,
            state_root: self.machine.state_root().to_string(),
            peers_connected: peers.iter().filter(|p| p.connected).count(),
            peers_attested: peers.iter().filter(|p| p.attested).count(),
            peers,
            last_decision: self.last.clone(),
            outbox: self.store.outbox_len().map_or(0, |n| n as usize),
            pid: std::process::id(),
            updated_ms: now_ms(),
        }
    }

    fn write_status(&mut self) {
        self.status_dirty = false;
        let s = self.status();
        let path = self.cfg.file.party.data_dir.join(status::STATUS_FILE);
        match serde_json::to_vec_pretty(&s) {
            Ok(b) => {
                if let Err(e) = crate::fsutil::write_atomic(&path, &b) {
                    warn!(error = %e, path = %path.display(), "cannot write status");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode status"),
        }
    }
}

/// Views of retired records not yet written to the store: written in one
/// transaction once [`RetiredViews::FLUSH_AT`] gather or a second passed
/// (one fsync per block would slow every height), read before the store.
#[derive(Debug, Default)]
struct RetiredViews {
    views: HashMap<(crate::store::Retired, [u8; 32]), Vec<u8>>,
    since: Option<Instant>,
}

impl RetiredViews {
    const FLUSH_AT: usize = 1024;

    fn push(&mut self, kind: crate::store::Retired, id: [u8; 32], view: Vec<u8>) {
        self.since.get_or_insert_with(Instant::now);
        self.views.insert((kind, id), view);
    }

    fn due(&self) -> bool {
        self.views.len() >= Self::FLUSH_AT
            || self
                .since
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
    }

    fn flush(&mut self, store: &Store) -> anyhow::Result<()> {
        if self.views.is_empty() {
            return Ok(());
        }
        let batch: Vec<_> = self.views.drain().map(|((k, id), v)| (k, id, v)).collect();
        self.since = None;
        store.put_retired(&batch)?;
        Ok(())
    }
}

/// An operation record as `GET /v1/operations/{id}` shows it (the caller
/// adds the `id` it was asked by).
fn op_value(rec: &quorate_firmware::sessions::machine::OpRecord) -> serde_json::Value {
    use quorate_firmware::sessions::machine::OpStatus;
    use quorate_firmware::sessions::ops::Decision;
    let verdicts: Vec<serde_json::Value> = rec
        .verdicts
        .iter()
        .map(|(p, d)| {
            let (approve, reason) = match d {
                Decision::Approve => (true, serde_json::Value::Null),
                Decision::Reject(r) => (false, serde_json::to_value(r).unwrap_or_default()),
            };
            serde_json::json!({"party": p.0, "approve": approve, "reason": reason})
        })
        .collect();
    let status = match &rec.status {
        OpStatus::Executed { .. } => "executed",
        OpStatus::Pending => "pending",
        _ => "rejected",
    };
    serde_json::json!({
        "op_id": hex::encode(rec.id.0.as_bytes()),
        "status": status,
        "decided": true,
        "record": serde_json::to_value(rec).unwrap_or_default(),
        "verdicts": verdicts,
    })
}
