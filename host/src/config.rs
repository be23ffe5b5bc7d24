//! The party's configuration file (`quorate run --config party.toml`).
//!
//! One TOML file with two halves:
//! - `[party]`: this party's own settings (id, data dir, TPM, listen
//!   addresses, local approval policy). Differs at every party.
//! - `[cluster]`: what every party must hold identically (members, their
//!   addresses and enrollment bundles, fault model, session rules, the
//!   reference-value policy). Its **canonical form** — the parsed values,
//!   with every referenced file replaced by the SHA-256 of its contents,
//!   encoded with postcard — is what measured launch extends into the TPM,
//!   and its digest is the [`ClusterId`] bound into every signed message.
//!   Two parties whose `[cluster]` halves differ in any value cannot
//!   exchange a single valid vote.
//!
//! Relative paths are resolved against the directory of the config file.
//! Unknown keys are errors (a typo must not silently fall back to a
//! default), and every error names the key and what is wrong with it.

use quorate_attestation::policy::Policy;
use quorate_firmware::audit::checkpoint::CheckpointPolicy;
use quorate_firmware::sessions::machine::SessionRules;
use quorate_firmware::sessions::policy::LocalPolicy;
use quorate_firmware::types::{ClusterId, Epoch, FaultModel, PartyId, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::tpm::TpmTarget;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or a value has the wrong type or an unknown key
    /// (the message names the key, line and column).
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config {path}: `{key}` {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The offending key, e.g. `cluster.parties[2].id`.
        key: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// The whole file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// This party's own settings.
    pub party: PartySection,
    /// What every party must hold identically.
    pub cluster: ClusterSection,
}

/// `[party]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartySection {
    /// This party's id; must be listed in `cluster.parties`.
    pub id: u32,
    /// The data dir made by `quorate init`.
    pub data_dir: PathBuf,
    /// The TPM: `spawn`, `swtpm:host=H,port=P` or `device:/dev/tpmrm0`.
    #[serde(default = "default_tpm")]
    pub tpm: String,
    /// Where to listen for peers (defaults to this party's `address` in
    /// `cluster.parties`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Where the local HTTP API listens (loopback by default).
    #[serde(default = "default_api")]
    pub api_listen: SocketAddr,
    /// Serve the API over TLS with a self-signed certificate kept in the
    /// data dir (`api-tls.crt.pem`, made at first start); clients pin its
    /// fingerprint. See [`crate::api_tls`].
    #[serde(default)]
    pub api_tls: bool,
    /// Serve the API over TLS with this PEM certificate chain (with
    /// `api_tls_key`), e.g. from the operator's own CA.
    #[serde(default)]
    pub api_tls_cert: Option<PathBuf>,
    /// The PEM private key of `api_tls_cert`.
    #[serde(default)]
    pub api_tls_key: Option<PathBuf>,
    /// Development mode: measurement in PCR 23, which software can reset.
    /// Never on a production server.
    #[serde(default)]
    pub dev: bool,
    /// This party's own approval rules (allowed keys, rate limits, manual approval).
    #[serde(default)]
    pub local_policy: LocalPolicy,
    /// The built-in MPC engine: which schemes this daemon runs itself.
    #[serde(default)]
    pub engine: crate::engine::EngineConfig,
    /// Start-up double-sign check (CometBFT ADR-051): when the sign-guard
    /// state is missing or older than the chain's last height signed by this
    /// party, sign nothing until this many heights are decided without it
    /// (0 disables the check). See [`crate::sign_watch`].
    #[serde(default = "default_double_sign_heights")]
    pub double_sign_check_heights: u64,
    /// ...or until no block was decided for this many seconds (a cluster
    /// that cannot decide without this party).
    #[serde(default = "default_double_sign_idle")]
    pub double_sign_check_idle_secs: u64,
    /// Bounds on what strangers and peers can make this party hold.
    #[serde(default)]
    pub net: NetSection,
    /// Backpressure: operations accepted through the API and not yet
    /// decided (the outbox) at most; beyond, `POST /v1/operations` answers
    /// 429 with `Retry-After` and accepts nothing. The daemon's own
    /// operations (verdicts, MPC rounds) are queued regardless.
    #[serde(default = "default_max_outbox_ops")]
    pub max_outbox_ops: u64,
}

/// 50,000 operations: about a dozen full batches (4,096 operations each),
/// a few seconds of decisions at saturation, and some 10 MB of redb.
fn default_max_outbox_ops() -> u64 {
    50_000
}

/// `[party.net]`: resource bounds of the peer transport (docs/PROTOCOL.md,
/// Part III, "Resource bounds"). Local settings: parties may differ.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetSection {
    /// Inbound peer connections not yet authenticated (TCP accepted, TLS
    /// handshake or welcome not done), at most; a newcomer beyond it
    /// closes an older one.
    #[serde(default = "default_max_pending")]
    pub max_pending_connections: usize,
    /// ...of which at most this many from one source address.
    #[serde(default = "default_max_pending_per_ip")]
    pub max_pending_per_ip: usize,
    /// Seconds the TLS handshake and welcome of one connection may take
    /// (how long a pending connection can hold its slot).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Seconds an authenticated peer has to pass attestation before its
    /// connection is closed (it may reconnect). Must exceed what answering
    /// a challenge takes on the slowest TPM of the cluster, times the
    /// number of peers (each TPM answers one challenge per peer at a time).
    #[serde(default = "default_admission_timeout")]
    pub admission_timeout_secs: u64,
    /// Bytes queued for sending to one peer before further frames are
    /// dropped; at least one largest frame (2 × `max_block_bytes` + 64 KiB).
    #[serde(default = "default_queue_bytes")]
    pub send_queue_bytes: u64,
    /// Bytes received from one peer and not yet handled before reading
    /// from it pauses; at least one largest frame.
    #[serde(default = "default_queue_bytes")]
    pub recv_queue_bytes: u64,
    /// Block requests (catch-up) of one peer answered per second once its
    /// burst is spent; the rest are dropped and counted.
    #[serde(default = "default_block_requests_per_sec")]
    pub block_requests_per_sec: u32,
    /// Block requests of one peer answered back to back.
    #[serde(default = "default_block_requests_burst")]
    pub block_requests_burst: u32,
    /// Decided blocks kept in memory to answer catch-up requests (and for
    /// the start-up double-sign watch); older ones are read from the store.
    #[serde(default = "default_recent_blocks")]
    pub recent_blocks: usize,
}

impl Default for NetSection {
    fn default() -> Self {
        NetSection {
            max_pending_connections: default_max_pending(),
            max_pending_per_ip: default_max_pending_per_ip(),
            handshake_timeout_secs: default_handshake_timeout(),
            admission_timeout_secs: default_admission_timeout(),
            send_queue_bytes: default_queue_bytes(),
            recv_queue_bytes: default_queue_bytes(),
            block_requests_per_sec: default_block_requests_per_sec(),
            block_requests_burst: default_block_requests_burst(),
            recent_blocks: default_recent_blocks(),
        }
    }
}

fn default_max_pending() -> usize {
    crate::net::peers::DEFAULT_MAX_PENDING
}

fn default_max_pending_per_ip() -> usize {
    crate::net::peers::DEFAULT_MAX_PENDING_PER_IP
}

fn default_handshake_timeout() -> u64 {
    10
}

fn default_admission_timeout() -> u64 {
    crate::net::peers::DEFAULT_ADMISSION_TIMEOUT.as_secs()
}

fn default_queue_bytes() -> u64 {
    crate::net::peers::DEFAULT_QUEUE_BYTES as u64
}

fn default_block_requests_per_sec() -> u32 {
    quorate_firmware::consensus::sync::BLOCK_SERVE_PER_SEC
}

fn default_recent_blocks() -> usize {
    1024
}

fn default_block_requests_burst() -> u32 {
    quorate_firmware::consensus::sync::BLOCK_SERVE_BURST
}

impl ClusterSection {
    /// The largest frame a peer may send: two blocks (a proposal with its
    /// block, or a block response with its certificate) and 64 KiB.
    pub fn max_frame_bytes(&self) -> usize {
        (self.max_block_bytes as usize)
            .saturating_mul(2)
            .saturating_add(64 * 1024)
    }
}

/// On by default (CometBFT's `double_sign_check_height` is off by
/// default; a party here only watches when its guard state is lost or
/// behind its own chain, which a correct restart never is).
fn default_double_sign_heights() -> u64 {
    3
}

fn default_double_sign_idle() -> u64 {
    10
}

fn default_tpm() -> String {
    "spawn".into()
}

fn default_api() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8700))
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// A human name for the cluster (part of its identity).
    pub name: String,
    /// The membership epoch.
    #[serde(default)]
    pub epoch: u64,
    /// `byzantine` (default), `unanimous` or `majority`.
    #[serde(default)]
    pub fault_model: FaultModel,
    /// Each party commits an AttestationRecord every this many heights.
    #[serde(default = "default_attest_every")]
    pub attestation_every: u64,
    /// Largest block, in bytes.
    #[serde(default = "default_block_bytes")]
    pub max_block_bytes: u32,
    /// Audit log: issue a checkpoint once this many entries accumulated
    /// since the last one (0: only by time).
    #[serde(default = "default_checkpoint_entries")]
    pub checkpoint_every_entries: u64,
    /// Audit log: issue a checkpoint once this many seconds of block time
    /// passed with new entries (0: only by count).
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_every_secs: u64,
    /// The reference-value policy peers' evidence is checked against
    /// (written by `quorate measure`). Optional only in dev mode.
    #[serde(default)]
    pub reference_policy: Option<PathBuf>,
    /// Session rules (approval per kind, size limits, deadlines).
    #[serde(default)]
    pub sessions: SessionRules,
    /// Every party, this one included.
    pub parties: Vec<PartyEntry>,
    /// Outside C2SP tlog-witnesses each party submits its certified
    /// checkpoints to (their cosignatures are added to the stored notes).
    /// Not part of the cluster id: auditors choose the witnesses they trust
    /// (`quorate audit verify --witness`).
    #[serde(default)]
    pub witnesses: Vec<WitnessEntry>,
}

/// One `[[cluster.witnesses]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEntry {
    /// Its submission prefix, `http://host:port[/prefix]`.
    pub url: String,
    /// Its C2SP verifier key, `name+keyid+base64(0x04 || Ed25519 key)`.
    pub key: String,
}

impl ClusterSection {
    /// The configured witnesses, keys parsed (checked by [`Config::parse`]).
    pub fn witness_list(&self) -> Vec<crate::audit::witness::Witness> {
        self.witnesses
            .iter()
            .filter_map(|w| {
                crate::audit::witness::WitnessKey::parse(&w.key)
                    .ok()
                    .map(|key| crate::audit::witness::Witness {
                        url: w.url.clone(),
                        key,
                    })
            })
            .collect()
    }
}

fn default_attest_every() -> u64 {
    100
}

fn default_block_bytes() -> u32 {
    1 << 20
}

fn default_checkpoint_entries() -> u64 {
    64
}

fn default_checkpoint_secs() -> u64 {
    10
}

/// One `[[cluster.parties]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartyEntry {
    /// The party's id (1..).
    pub id: u32,
    /// Where the party listens for peers (host:port).
    pub address: String,
    /// Its enrollment bundle (enrollment.json from its `quorate init`).
    pub enrollment: PathBuf,
    /// The record `quorate enroll complete` wrote when this party's AK was
    /// activated against its EK (credential activation). Required for
    /// every party outside dev mode: `quorate run` checks it matches the
    /// enrollment and pins the activated AK. Not part of the cluster id
    /// (each party's operator verifies the others' TPMs itself).
    #[serde(default)]
    pub enrollment_record: Option<PathBuf>,
}

/// A validated configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The file's values with paths resolved.
    pub file: ConfigFile,
    /// This party.
    pub me: PartyId,
    /// The TPM to use.
    pub tpm: TpmTarget,
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// The encoded cluster identity (measured rules and file digests).
    pub canonical: Vec<u8>,
    /// SHA-256 of the canonical form: the cluster's identity.
    pub cluster_id: ClusterId,
}

/// The measured form of `[cluster]`: its rules, with no keys and no file
/// contents, so it can be known before any party is provisioned (the vote
/// key's PolicyPCR covers it) and does not change when a key is rotated.
#[derive(Debug, Serialize)]
struct MeasuredRules<'a> {
    domain: &'static str,
    name: &'a str,
    epoch: u64,
    fault_model: FaultModel,
    attestation_every: u64,
    max_block_bytes: u32,
    checkpoint_every_entries: u64,
    checkpoint_every_secs: u64,
    sessions: &'a SessionRules,
    parties: Vec<(u32, &'a str)>,
}

/// Domain tag of [`ClusterIdentity`]. Version 2 added the fault model and
/// the epoch in clear (issue 17): every cluster id changed with it.
pub const CLUSTER_ID_DOMAIN: &str = "quorate/cluster-id/v2";

/// The cluster's identity: the measured rules plus the digests of every
/// enrollment bundle and of the reference policy. Its postcard encoding
/// hashes to the cluster id; the audit bundle carries it so an auditor can
/// bind the enrollments to that id.
///
/// The rules an offline verifier applies are in it in clear, not only
/// inside the `rules` digest: the fault model (which sets the certificate
/// and cosignature quorum) and the epoch (which attestation records bind).
/// Every signature in a bundle names the cluster id, so a bundle header
/// that states another fault model or epoch than these is refused — two
/// colluders of three cannot present a history by claiming `majority`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// [`CLUSTER_ID_DOMAIN`].
    pub domain: String,
    /// The fault model (also inside `rules`).
    pub fault_model: FaultModel,
    /// The membership epoch (also inside `rules`).
    pub epoch: u64,
    /// [`ClusterSection::measured_digest`].
    pub rules: Sha256Digest,
    /// SHA-256 of the reference policy file, if any.
    pub reference_policy: Option<Sha256Digest>,
    /// (party id, SHA-256 of its enrollment.json), in party order.
    pub enrollments: Vec<(u32, Sha256Digest)>,
}

impl ClusterSection {
    /// When the audit log is checkpointed: part of the measured rules, so
    /// every party issues checkpoints for the same tree sizes.
    pub fn checkpoint_policy(&self) -> CheckpointPolicy {
        CheckpointPolicy {
            every_entries: self.checkpoint_every_entries,
            every_ms: self.checkpoint_every_secs.saturating_mul(1000),
        }
    }

    /// The digest of the cluster's rules: what measured launch extends into
    /// the measurement PCR after the executable, and what a reference policy
    /// names as `expected_config`. Reads no files.
    pub fn measured_digest(&self) -> Sha256Digest {
        let mut parties: Vec<(u32, &str)> = self
            .parties
            .iter()
            .map(|p| (p.id, p.address.as_str()))
            .collect();
        parties.sort();
        let rules = MeasuredRules {
            domain: "quorate/cluster-rules/v1",
            name: &self.name,
            epoch: self.epoch,
            fault_model: self.fault_model,
            attestation_every: self.attestation_every,
            max_block_bytes: self.max_block_bytes,
            checkpoint_every_entries: self.checkpoint_every_entries,
            checkpoint_every_secs: self.checkpoint_every_secs,
            sessions: &self.sessions,
            parties,
        };
        // Plain data into a growable buffer: encoding cannot fail.
        Sha256Digest::of(&postcard::to_stdvec(&rules).unwrap_or_default())
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The measured digest of the `[cluster]` rules of a config file,
    /// without reading the files it references (for `quorate init
    /// --config`, before any enrollment exists), and whether it is in dev mode.
    pub fn measured_digest_of_file(path: &Path) -> Result<(Sha256Digest, bool), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file = Self::parse_file(&text, path)?;
        Ok((file.cluster.measured_digest(), file.party.dev))
    }

    fn parse_file(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Parses and validates config text; `path` names it in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: shown.clone(),
            key: key.to_string(),
            reason,
        };
        let mut file = Self::parse_file(text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        if file.party.id == 0 {
            return Err(invalid(
                "party.id",
                "must be 1 or more (parties are numbered from 1)".into(),
            ));
        }
        file.party.data_dir = resolve(&file.party.data_dir);
        match (&file.party.api_tls_cert, &file.party.api_tls_key) {
            (Some(c), Some(k)) => {
                file.party.api_tls_cert = Some(resolve(c));
                file.party.api_tls_key = Some(resolve(k));
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "party.api_tls_cert",
                    "and `party.api_tls_key` go together: set both (a PEM chain and its key), or neither".into(),
                ))
            }
        }
        let tpm: TpmTarget = file
            .party
            .tpm
            .parse()
            .map_err(|e| invalid("party.tpm", format!("is not understood: {e}")))?;
        let net = &file.party.net;
        for (key, v) in [
            (
                "party.net.max_pending_connections",
                net.max_pending_connections as u64,
            ),
            (
                "party.net.max_pending_per_ip",
                net.max_pending_per_ip as u64,
            ),
            (
                "party.net.handshake_timeout_secs",
                net.handshake_timeout_secs,
            ),
            (
                "party.net.admission_timeout_secs",
                net.admission_timeout_secs,
            ),
            (
                "party.net.block_requests_per_sec",
                u64::from(net.block_requests_per_sec),
            ),
            (
                "party.net.block_requests_burst",
                u64::from(net.block_requests_burst),
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if file.party.max_outbox_ops == 0 {
            return Err(invalid(
                "party.max_outbox_ops",
                "must be at least 1 (operations): 0 would refuse every submission".into(),
            ));
        }
        if net.max_pending_per_ip > net.max_pending_connections {
            return Err(invalid(
                "party.net.max_pending_per_ip",
                format!(
                    "({}) must not exceed party.net.max_pending_connections ({})",
                    net.max_pending_per_ip, net.max_pending_connections
                ),
            ));
        }
        let frame = file.cluster.max_frame_bytes() as u64;
        for (key, v) in [
            ("party.net.send_queue_bytes", net.send_queue_bytes),
            ("party.net.recv_queue_bytes", net.recv_queue_bytes),
        ] {
            if v < frame {
                return Err(invalid(
                    key,
                    format!("({v}) must hold at least one largest frame: {frame} bytes (2 × cluster.max_block_bytes + 64 KiB)"),
                ));
            }
        }
        if file.cluster.name.trim().is_empty() {
            return Err(invalid("cluster.name", "must not be empty".into()));
        }
        if file.cluster.attestation_every == 0 {
            return Err(invalid(
                "cluster.attestation_every",
                "must be at least 1 (heights)".into(),
            ));
        }
        if file.cluster.checkpoint_every_entries == 0 && file.cluster.checkpoint_every_secs == 0 {
            return Err(invalid(
                "cluster.checkpoint_every_entries",
                "and cluster.checkpoint_every_secs are both 0: the audit log would never be checkpointed".into(),
            ));
        }
        if file.cluster.max_block_bytes < 4096 {
            return Err(invalid(
                "cluster.max_block_bytes",
                "must be at least 4096".into(),
            ));
        }
        if file.cluster.parties.is_empty() {
            return Err(invalid(
                "cluster.parties",
                "must list every party, this one included".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in file.cluster.parties.iter_mut().enumerate() {
            if p.id == 0 {
                return Err(invalid(
                    &format!("cluster.parties[{i}].id"),
                    "must be 1 or more".into(),
                ));
            }
            if !seen.insert(p.id) {
                return Err(invalid(
                    &format!("cluster.parties[{i}].id"),
                    format!("{} is listed twice", p.id),
                ));
            }
            if p.address
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return Err(invalid(
                    &format!("cluster.parties[{i}].address"),
                    format!("`{}` is not host:port", p.address),
                ));
            }
            p.enrollment = resolve(&p.enrollment);
            p.enrollment_record = p.enrollment_record.as_deref().map(resolve);
        }
        for (i, w) in file.cluster.witnesses.iter().enumerate() {
            if let Err(e) = crate::audit::witness::WitnessKey::parse(&w.key) {
                return Err(invalid(
                    &format!("cluster.witnesses[{i}].key"),
                    e.to_string(),
                ));
            }
            if !w.url.starts_with("http://") {
                return Err(invalid(
                    &format!("cluster.witnesses[{i}].url"),
                    format!("`{}` is not an http:// URL", w.url),
                ));
            }
        }
        let me = file
            .cluster
            .parties
            .iter()
            .find(|p| p.id == file.party.id)
            .ok_or_else(|| {
                invalid(
                    "party.id",
                    format!("{} is not listed in cluster.parties", file.party.id),
                )
            })?;
        let listen = match file.party.listen {
            Some(a) => a,
            None => me.address.parse().map_err(|_| {
                invalid(
                    "party.listen",
                    format!("is not set and this party's address `{}` is not an IP:port; set party.listen", me.address),
                )
            })?,
        };
        if let Some(p) = &file.cluster.reference_policy {
            file.cluster.reference_policy = Some(resolve(p));
        } else if !file.party.dev {
            return Err(invalid(
                "cluster.reference_policy",
                "is required outside dev mode: write one with `quorate measure` and list it here"
                    .into(),
            ));
        }
        let (canonical, cluster_id) = canonical_cluster(&file.cluster, &shown)?;
        Ok(Config {
            path: path.to_path_buf(),
            me: PartyId(file.party.id),
            tpm,
            listen,
            canonical,
            cluster_id,
            file,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.file.cluster.epoch)
    }

    /// Reads the cluster's reference-value policy (`cluster.reference_policy`;
    /// none in dev mode without one). A party with `dev = false` refuses a
    /// policy with `dev = true`: such a policy lets the measurement live in a
    /// PCR any process can reset, so one dev party would make the whole
    /// cluster's attestation worthless. The error names the file.
    pub fn reference_policy(&self) -> Result<Option<Policy>, ConfigError> {
        let Some(path) = &self.file.cluster.reference_policy else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            path: self.path.display().to_string(),
            key: "cluster.reference_policy".into(),
            reason,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let policy =
            Policy::from_toml(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        if policy.dev && !self.file.party.dev {
            return Err(invalid(format!(
                "{} is a development policy (dev = true: the measurement may be in a resettable PCR) \
                 and this party runs with dev = false: write a production policy with \
                 `quorate measure` (without --dev) for every party",
                path.display()
            )));
        }
        Ok(Some(policy))
    }
}

/// What `quorate run` says at start about the strength of the cluster's
/// rules (issue 17 point 5): one line per caveat that applies, for the
/// operator to read in the log.
pub fn trust_caveats(cfg: &Config, policy: Option<&Policy>) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.file.cluster.fault_model == FaultModel::Majority {
        out.push(
            "fault_model = majority tolerates crashed parties only, not Byzantine ones: its safety \
             rests on the attested code never equivocating, and against a party's own root the \
             attestation is only as strong as the measured boot / IMA PCRs its policy requires"
                .to_string(),
        );
    }
    match policy {
        Some(p) if p.required_pcrs.is_empty() => out.push(
            "the reference policy requires no platform PCRs (0-7, 10): root on a party's own \
             server can fake its measured launch; write the policy with \
             `quorate measure --required-pcrs` on a reference machine"
                .to_string(),
        ),
        Some(_) => {}
        None => out.push(
            "no reference policy: peers are admitted on their TLS certificate alone (dev mode)"
                .to_string(),
        ),
    }
    if cfg.file.party.dev {
        out.push(
            "DEV MODE: the measurement is in PCR 23, which any process can reset: this party's \
             attestation proves nothing"
                .to_string(),
        );
    }
    out
}

/// Computes the cluster's identity from its measured rules and the digests
/// of the files it references (enrollments, reference policy), and returns
/// the encoded identity with its digest.
fn canonical_cluster(c: &ClusterSection, shown: &str) -> Result<(Vec<u8>, ClusterId), ConfigError> {
    let digest_file = |key: String, p: &Path| -> Result<Sha256Digest, ConfigError> {
        std::fs::read(p)
            .map(|b| Sha256Digest::of(&b))
            .map_err(|e| ConfigError::Invalid {
                path: shown.to_string(),
                key,
                reason: format!("cannot read {}: {e}", p.display()),
            })
    };
    let mut enrollments = Vec::with_capacity(c.parties.len());
    for (i, p) in c.parties.iter().enumerate() {
        enrollments.push((
            p.id,
            digest_file(format!("cluster.parties[{i}].enrollment"), &p.enrollment)?,
        ));
    }
    enrollments.sort_by_key(|p| p.0);
    let reference_policy = match &c.reference_policy {
        Some(p) => Some(digest_file("cluster.reference_policy".into(), p)?),
        None => None,
    };
    let identity = ClusterIdentity {
        domain: CLUSTER_ID_DOMAIN.to_string(),
        fault_model: c.fault_model,
        epoch: c.epoch,
        rules: c.measured_digest(),
        reference_policy,
        enrollments,
    };
    let bytes = postcard::to_stdvec(&identity).map_err(|e| ConfigError::Invalid {
        path: shown.to_string(),
        key: "cluster".into(),
        reason: format!("cannot be encoded: {e}"),
    })?;
    let id = ClusterId(Sha256Digest::of(&bytes));
    Ok((bytes, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn sample(dir: &Path, extra_party: &str, extra_cluster: &str) -> String {
        for i in 1..=3 {
            write(dir, &format!("e{i}.json"), &format!("{{\"party\": {i}}}"));
        }
        write(dir, "policy.toml", "allowed = []\n");
        format!(
            r#"
[party]
id = 1
data_dir = "p1"
tpm = "swtpm:host=127.0.0.1,port=2321"
{extra_party}

[cluster]
name = "test"
reference_policy = "policy.toml"
{extra_cluster}

[[cluster.parties]]
id = 1
address = "127.0.0.1:7001"
enrollment = "e1.json"

[[cluster.parties]]
id = 2
address = "127.0.0.1:7002"
enrollment = "e2.json"

[[cluster.parties]]
id = 3
address = "127.0.0.1:7003"
enrollment = "e3.json"
"#
        )
    }

    #[test]
    fn a_valid_file_resolves_paths_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let c = Config::parse(&sample(dir.path(), "", ""), &path).unwrap();
        assert_eq!(c.me, PartyId(1));
        assert_eq!(c.listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(c.file.party.data_dir, dir.path().join("p1"));
        assert_eq!(c.file.cluster.fault_model, FaultModel::Byzantine);
        assert_eq!(
            c.file.cluster.parties[2].enrollment,
            dir.path().join("e3.json")
        );
    }

    #[test]
    fn the_cluster_id_ignores_party_settings_and_formatting_but_not_cluster_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let text = sample(dir.path(), "", "");
        let a = Config::parse(&text, &path).unwrap();
        let b = Config::parse(
            &sample(dir.path(), "api_listen = \"127.0.0.1:9999\"", "epoch = 0"),
            &path,
        )
        .unwrap();
        assert_eq!(a.cluster_id, b.cluster_id);
        let c =
            Config::parse(&sample(dir.path(), "", "fault_model = \"majority\""), &path).unwrap();
        assert_ne!(a.cluster_id, c.cluster_id);
        // A changed enrollment bundle changes the identity.
        write(dir.path(), "e2.json", "{\"party\": 2, \"x\": 1}");
        let d = Config::parse(&text, &path).unwrap();
        assert_ne!(a.cluster_id, d.cluster_id);
        // ...but not the measured rules, which the vote key is bound to.
        assert_eq!(
            a.file.cluster.measured_digest(),
            d.file.cluster.measured_digest()
        );
        assert_ne!(
            a.file.cluster.measured_digest(),
            c.file.cluster.measured_digest()
        );
        // The checkpoint policy is a cluster rule: measured, with defaults.
        assert_eq!(
            a.file.cluster.checkpoint_policy(),
            CheckpointPolicy {
                every_entries: 64,
                every_ms: 10_000
            }
        );
        let e = Config::parse(&sample(dir.path(), "", "checkpoint_every_secs = 3"), &path).unwrap();
        assert_eq!(e.file.cluster.checkpoint_policy().every_ms, 3_000);
        assert_ne!(
            a.file.cluster.measured_digest(),
            e.file.cluster.measured_digest()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let cases: Vec<(String, &str)> = vec![
            (sample(dir.path(), "colour = \"red\"", ""), "colour"),
            (
                sample(dir.path(), "", "fault_model = \"sometimes\""),
                "fault_model",
            ),
            (
                sample(dir.path(), "", "attestation_every = 0"),
                "cluster.attestation_every",
            ),
            (
                sample(
                    dir.path(),
                    "",
                    "checkpoint_every_entries = 0\ncheckpoint_every_secs = 0",
                ),
                "cluster.checkpoint_every_entries",
            ),
            (
                sample(dir.path(), "", "").replace("id = 2", "id = 3"),
                "cluster.parties[2].id",
            ),
            (
                sample(dir.path(), "", "").replace("127.0.0.1:7002", "nowhere"),
                "cluster.parties[1].address",
            ),
            (
                sample(dir.path(), "", "").replace("e3.json", "missing.json"),
                "cluster.parties[2].enrollment",
            ),
            (
                sample(dir.path(), "", "").replace(
                    "tpm = \"swtpm:host=127.0.0.1,port=2321\"",
                    "tpm = \"tpm-over-carrier-pigeon\"",
                ),
                "party.tpm",
            ),
            (
                sample(dir.path(), "", "").replace("[party]\nid = 1", "[party]\nid = 9"),
                "party.id",
            ),
            (
                sample(dir.path(), "", "").replace("reference_policy = \"policy.toml\"", ""),
                "cluster.reference_policy",
            ),
            (
                sample(dir.path(), "", "").replace("[party]\nid = 1", "[party]\nid = \"one\""),
                "id",
            ),
            (
                sample(dir.path(), "api_tls_cert = \"api.pem\"", ""),
                "party.api_tls_cert",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text, &path).unwrap_err().to_string();
            assert!(err.contains(key), "error `{err}` does not name `{key}`");
        }
    }

    #[test]
    fn net_bounds_have_defaults_parse_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let d = Config::parse(&sample(dir.path(), "", ""), &path).unwrap();
        let n = &d.file.party.net;
        assert_eq!((n.max_pending_connections, n.max_pending_per_ip), (16, 4));
        assert_eq!(
            (n.handshake_timeout_secs, n.admission_timeout_secs),
            (10, 30)
        );
        assert_eq!(
            (n.send_queue_bytes, n.recv_queue_bytes),
            (32 << 20, 32 << 20)
        );
        assert_eq!(
            (n.block_requests_per_sec, n.block_requests_burst),
            (32, 128)
        );
        let c = Config::parse(
            &sample(
                dir.path(),
                "[party.net]\nmax_pending_connections = 8\nmax_pending_per_ip = 2\nadmission_timeout_secs = 60",
                "",
            ),
            &path,
        )
        .unwrap();
        assert_eq!(c.file.party.net.max_pending_per_ip, 2);
        assert_eq!(c.file.party.net.admission_timeout_secs, 60);
        // Local settings: not part of the cluster's identity.
        assert_eq!(c.cluster_id, d.cluster_id);
        for (extra, key) in [
            ("max_pending_per_ip = 0", "party.net.max_pending_per_ip"),
            ("max_pending_per_ip = 17", "party.net.max_pending_per_ip"),
            (
                "admission_timeout_secs = 0",
                "party.net.admission_timeout_secs",
            ),
            ("send_queue_bytes = 65536", "party.net.send_queue_bytes"),
            ("block_requests_burst = 0", "party.net.block_requests_burst"),
            ("max_pending = 3", "max_pending"),
        ] {
            let text = sample(dir.path(), &format!("[party.net]\n{extra}"), "");
            let err = Config::parse(&text, &path).unwrap_err().to_string();
            assert!(err.contains(key), "error `{err}` does not name `{key}`");
        }
    }

    #[test]
    fn the_outbox_bound_has_a_default_parses_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let d = Config::parse(&sample(dir.path(), "", ""), &path).unwrap();
        assert_eq!(d.file.party.max_outbox_ops, 50_000);
        let c = Config::parse(&sample(dir.path(), "max_outbox_ops = 8", ""), &path).unwrap();
        assert_eq!(c.file.party.max_outbox_ops, 8);
        // A local setting: not part of the cluster's identity.
        assert_eq!(c.cluster_id, d.cluster_id);
        let err = Config::parse(&sample(dir.path(), "max_outbox_ops = 0", ""), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("party.max_outbox_ops"), "{err}");
    }

    #[test]
    fn api_tls_files_resolve_against_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let c = Config::parse(&sample(dir.path(), "", ""), &path).unwrap();
        assert!(!c.file.party.api_tls && c.file.party.api_tls_cert.is_none());
        let text = sample(
            dir.path(),
            "api_tls_cert = \"tls/api.pem\"\napi_tls_key = \"/etc/q/api.key\"",
            "",
        );
        let c = Config::parse(&text, &path).unwrap();
        assert_eq!(
            c.file.party.api_tls_cert,
            Some(dir.path().join("tls/api.pem"))
        );
        assert_eq!(
            c.file.party.api_tls_key,
            Some(PathBuf::from("/etc/q/api.key"))
        );
    }

    #[test]
    fn a_production_party_refuses_a_dev_policy_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let text = sample(dir.path(), "", "");
        let exe = "11".repeat(32);
        let cfg = "22".repeat(32);
        let prod = format!("allowed_executables = [\"{exe}\"]\nexpected_config = \"{cfg}\"\n");
        write(dir.path(), "policy.toml", &prod);
        let c = Config::parse(&text, &path).unwrap();
        assert!(!c.reference_policy().unwrap().unwrap().dev);
        let dev = format!("dev = true\nmeasurement_pcr = 23\n{prod}");
        write(dir.path(), "policy.toml", &dev);
        let c = Config::parse(&text, &path).unwrap();
        let err = c.reference_policy().unwrap_err().to_string();
        assert!(
            err.contains("policy.toml") && err.contains("development policy"),
            "{err}"
        );
        // A dev party may use it.
        let text = sample(dir.path(), "dev = true", "");
        write(dir.path(), "policy.toml", &dev);
        let c = Config::parse(&text, &path).unwrap();
        assert!(c.reference_policy().unwrap().unwrap().dev);
    }

    #[test]
    fn majority_and_a_policy_without_platform_pcrs_are_called_out_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let policy = Policy::new(vec![Sha256Digest::of(b"exe")], Sha256Digest::of(b"rules"));
        let c = Config::parse(&sample(dir.path(), "", ""), &path).unwrap();
        let lines = trust_caveats(&c, Some(&policy));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("--required-pcrs"));
        let c =
            Config::parse(&sample(dir.path(), "", "fault_model = \"majority\""), &path).unwrap();
        let mut anchored = policy.clone();
        crate::measure::require(
            &mut anchored,
            vec![quorate_attestation::policy::RequiredPcr {
                index: quorate_attestation::pcr::PcrIndex::new(0).unwrap(),
                value: quorate_attestation::policy::HexDigest(Sha256Digest::of(b"fw")),
            }],
        );
        let lines = trust_caveats(&c, Some(&anchored));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("crashed parties only"), "{lines:?}");
        assert!(trust_caveats(&c, Some(&policy)).len() == 2);
    }

    #[test]
    fn dev_mode_may_omit_the_reference_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let text =
            sample(dir.path(), "dev = true", "").replace("reference_policy = \"policy.toml\"", "");
        assert!(Config::parse(&text, &path).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = Config::parse(&s, Path::new("/nonexistent/party.toml"));
        }
    }
}
