//! Counters and histograms behind `GET /metrics` (Prometheus text format).
//!
//! The daemon updates them with atomic operations from the event loop and
//! the TPM tasks; the API renders them together with the height and peer
//! states it reads from the status. `deploy/quorate.rules.yml` alerts on
//! them and `deploy/grafana-dashboard.json` shows them; docs/HOST.md lists
//! every metric with what it means.

use crate::daemon::status::StatusView;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(self.counts.iter()) {
            if s <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (b, c) in BUCKETS.iter().zip(self.counts.iter()) {
            out.push_str(&format!(
                "{name}_bucket{{le=\"{b}\"}} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        let n = self.count();
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {n}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n{name}_count {n}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
    }
}

/// A counter per party id (a `party` or `peer` label).
#[derive(Debug, Default)]
pub struct PerParty(Mutex<BTreeMap<u32, u64>>);

impl PerParty {
    /// Adds `n` to `party`'s count.
    pub fn add(&self, party: u32, n: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(party).or_insert(0);
        *c = c.saturating_add(n);
    }

    /// Sets `party`'s count (for counts kept elsewhere, copied here).
    pub fn set(&self, party: u32, n: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(party, n);
    }

    /// `party`'s count.
    pub fn get(&self, party: u32) -> u64 {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&party).copied().unwrap_or(0)
    }

    /// Renders one line per party seen, and one `0` line per party of
    /// `known` not seen (so `increase()` sees the first event).
    fn render(&self, name: &str, help: &str, label: &str, known: &[u32], out: &mut String) {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        let mut all: BTreeMap<u32, u64> = known.iter().map(|p| (*p, 0)).collect();
        all.extend(m.iter().map(|(p, c)| (*p, *c)));
        for (p, c) in all {
            out.push_str(&format!("{name}{{{label}=\"{p}\"}} {c}\n"));
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Blocks decided since start (replayed blocks not counted).
    pub decisions: AtomicU64,
    /// Operations in blocks decided since start.
    pub decided_ops: AtomicU64,
    /// Operations accepted through the API since start.
    pub accepted_ops: AtomicU64,
    /// Operations the API refused since start because the outbox was full
    /// (`party.max_outbox_ops`; answered 429 with `Retry-After`).
    pub backpressure_refused_ops: AtomicU64,
    /// `party.max_outbox_ops`: the outbox size at which the API refuses.
    pub outbox_limit: AtomicU64,
    /// Sessions the session machine holds in memory (open ones, and
    /// finished ones not yet retired).
    pub machine_sessions: AtomicU64,
    /// Operation records the session machine holds in memory.
    pub machine_ops: AtomicU64,
    /// From first signing an own batch to seeing it decided.
    pub commit_latency: Histogram,
    /// One TPM signature (vote or batch).
    pub tpm_sign_latency: Histogram,
    /// API requests answered, by status class.
    pub api_requests: [AtomicU64; 5],
    /// Audit entries appended since start (replayed ones not counted).
    pub log_entries: AtomicU64,
    /// Time spent building and storing audit entries, in microseconds.
    pub log_append_micros: AtomicU64,
    /// Audit checkpoints certified by a quorum and stored.
    pub checkpoints_certified: AtomicU64,
    /// Issuing this party's checkpoint lines (TPM quote and cosignature).
    pub checkpoint_issue_latency: Histogram,
    /// Consensus signatures refused: by the sign guard, or withheld by the
    /// start-up double-sign watch (`crate::sign_watch`).
    pub signatures_refused: AtomicU64,
    /// Signatures the sign guard refused since start (the driver's count:
    /// should stay 0; a refusal means the WAL or the guard was lost or
    /// rolled back and the party was about to double-sign).
    pub sign_refusals: AtomicU64,
    /// Inputs the consensus core refused with an error since start.
    pub core_errors: AtomicU64,
    /// Batches (own and peers') waiting in the driver to be decided.
    pub pending_batches: AtomicU64,
    /// Equivocation evidence in blocks decided since start, by offender.
    pub equivocations: PerParty,
    /// Attestation refusals since start, by peer.
    pub peer_refusals: PerParty,
    /// Challenge frames not answered since start, by peer: a second
    /// challenge on one connection (docs/PROTOCOL.md, Part III).
    pub challenges_dropped: PerParty,
    /// Block requests not answered since start because the peer had spent
    /// its answer budget, by peer (copied from the driver).
    pub block_requests_dropped: PerParty,
    /// Frames to a peer dropped because its send queue was full (frames or
    /// bytes), by peer (copied from the transport).
    pub peer_frames_dropped: PerParty,
    /// Inbound connections not yet authenticated, now.
    pub peer_handshakes_pending: AtomicU64,
    /// Unauthenticated connections closed to make room for newer ones.
    pub peer_handshakes_evicted: AtomicU64,
    /// Authenticated connections closed because the peer was not admitted
    /// in time.
    pub peer_admission_timeouts: AtomicU64,
    /// TPM signing operations that failed (and were retried).
    pub tpm_errors: AtomicU64,
    /// Peer checkpoint notes signing another root for a size we hold
    /// (a fork of the audit log).
    pub checkpoint_forks: AtomicU64,
    /// Entries in the audit log now.
    pub log_size: AtomicU64,
    /// Tree size of the latest certified checkpoint stored.
    pub checkpoint_certified_size: AtomicU64,
    /// For how long (seconds) an open checkpoint has lacked a quorum; 0
    /// when none is waiting.
    pub checkpoint_uncertified_secs: AtomicU64,
    /// Whether peers must attest (the cluster has a reference policy).
    pub attestation_enforced: AtomicBool,
    started_ms: u64,
    last_decision_ms: AtomicU64,
    last_certified_ms: AtomicU64,
    data_dir: Option<PathBuf>,
    batch_started: Mutex<Option<(u64, Instant)>>,
}

impl Default for Metrics {
    /// Metrics of a daemon starting now, with no data dir to report on.
    fn default() -> Self {
        let now = now_ms();
        Metrics {
            decisions: AtomicU64::new(0),
            decided_ops: AtomicU64::new(0),
            accepted_ops: AtomicU64::new(0),
            backpressure_refused_ops: AtomicU64::new(0),
            outbox_limit: AtomicU64::new(0),
            machine_sessions: AtomicU64::new(0),
            machine_ops: AtomicU64::new(0),
            commit_latency: Histogram::default(),
            tpm_sign_latency: Histogram::default(),
            api_requests: Default::default(),
            log_entries: AtomicU64::new(0),
            log_append_micros: AtomicU64::new(0),
            checkpoints_certified: AtomicU64::new(0),
            checkpoint_issue_latency: Histogram::default(),
            sign_refusals: AtomicU64::new(0),
            signatures_refused: AtomicU64::new(0),
            core_errors: AtomicU64::new(0),
            pending_batches: AtomicU64::new(0),
            equivocations: PerParty::default(),
            peer_refusals: PerParty::default(),
            challenges_dropped: PerParty::default(),
            block_requests_dropped: PerParty::default(),
            peer_frames_dropped: PerParty::default(),
            peer_handshakes_pending: AtomicU64::new(0),
            peer_handshakes_evicted: AtomicU64::new(0),
            peer_admission_timeouts: AtomicU64::new(0),
            tpm_errors: AtomicU64::new(0),
            checkpoint_forks: AtomicU64::new(0),
            log_size: AtomicU64::new(0),
            checkpoint_certified_size: AtomicU64::new(0),
            checkpoint_uncertified_secs: AtomicU64::new(0),
            attestation_enforced: AtomicBool::new(false),
            started_ms: now,
            last_decision_ms: AtomicU64::new(now),
            last_certified_ms: AtomicU64::new(now),
            data_dir: None,
            batch_started: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Metrics of a daemon starting now whose data dir is `data_dir` (its
    /// file system's free space is reported).
    pub fn new(data_dir: &Path) -> Self {
        Metrics {
            data_dir: Some(data_dir.to_path_buf()),
            ..Metrics::default()
        }
    }

    /// A block was decided now.
    pub fn decided_now(&self) {
        self.last_decision_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// When this daemon last saw a decision (ms since the Unix epoch), or
    /// when it started if it has seen none.
    pub fn last_decision_ms(&self) -> u64 {
        self.last_decision_ms.load(Ordering::Relaxed)
    }

    /// The certified checkpoint of `size` was stored now.
    pub fn checkpoint_certified(&self, size: u64) {
        self.checkpoints_certified.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_certified_size
            .fetch_max(size, Ordering::Relaxed);
        self.last_certified_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// An own batch with `seq` is being signed for the first time.
    pub fn batch_started(&self, seq: u64) {
        let mut g = self.batch_started.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|(s, _)| s != seq) {
            *g = Some((seq, Instant::now()));
        }
    }

    /// An own batch with `seq` was decided.
    pub fn batch_decided(&self, seq: u64) {
        let mut g = self.batch_started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, at)) = *g {
            if s <= seq {
                self.commit_latency.observe(at.elapsed());
                *g = None;
            }
        }
    }

    /// Counts `n` audit entries built and stored in `took`.
    pub fn log_append(&self, n: usize, took: Duration) {
        self.log_entries.fetch_add(n as u64, Ordering::Relaxed);
        self.log_append_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts an API answer.
    pub fn api_answered(&self, status: u16) {
        let class = usize::from(status / 100).saturating_sub(1);
        if let Some(c) = self.api_requests.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Renders every metric, with the gauges read from the status `s`.
    pub fn render(&self, s: &StatusView) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let secs = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
        out.push_str(&format!(
            "# HELP quorate_build_info The running version.\n# TYPE quorate_build_info gauge\nquorate_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ));
        gauge(
            &mut out,
            "quorate_party",
            "This party's id.",
            "gauge",
            s.party.to_string(),
        );
        gauge(
            &mut out,
            "quorate_start_time_seconds",
            "When this daemon started (Unix time).",
            "gauge",
            secs(self.started_ms),
        );
        gauge(
            &mut out,
            "quorate_height",
            "The last decided height.",
            "gauge",
            s.height.to_string(),
        );
        gauge(
            &mut out,
            "quorate_decisions_total",
            "Blocks decided since start.",
            "counter",
            load(&self.decisions),
        );
        gauge(
            &mut out,
            "quorate_last_decision_timestamp_seconds",
            "When this daemon last saw a block decided, or its start time if none yet (Unix time).",
            "gauge",
            secs(self.last_decision_ms()),
        );
        gauge(
            &mut out,
            "quorate_decided_operations_total",
            "Operations in blocks decided since start.",
            "counter",
            load(&self.decided_ops),
        );
        gauge(
            &mut out,
            "quorate_accepted_operations_total",
            "Operations accepted through the API since start.",
            "counter",
            load(&self.accepted_ops),
        );
        gauge(
            &mut out,
            "quorate_backpressure_refused_operations_total",
            "Operations the API refused (429) since start because the outbox was full.",
            "counter",
            load(&self.backpressure_refused_ops),
        );
        gauge(
            &mut out,
            "quorate_outbox_operations",
            "Accepted operations not yet decided.",
            "gauge",
            s.outbox.to_string(),
        );
        gauge(
            &mut out,
            "quorate_outbox_limit",
            "The outbox size at which the API refuses new operations (party.max_outbox_ops).",
            "gauge",
            load(&self.outbox_limit),
        );
        gauge(
            &mut out,
            "quorate_machine_sessions",
            "Sessions held in memory: open ones, and finished ones until they are retired to the store.",
            "gauge",
            load(&self.machine_sessions),
        );
        gauge(
            &mut out,
            "quorate_machine_operations",
            "Operation records held in memory: pending ones, and settled ones until they are retired to the store.",
            "gauge",
            load(&self.machine_ops),
        );
        gauge(
            &mut out,
            "quorate_pending_batches",
            "Batches (own and peers') waiting to be decided.",
            "gauge",
            load(&self.pending_batches),
        );
        gauge(
            &mut out,
            "quorate_peers",
            "Peers in the cluster configuration (not counting this party).",
            "gauge",
            s.peers.len().to_string(),
        );
        gauge(
            &mut out,
            "quorate_peers_connected",
            "Peers with a live authenticated connection.",
            "gauge",
            s.peers_connected.to_string(),
        );
        gauge(
            &mut out,
            "quorate_peers_attested",
            "Peers whose attestation verified.",
            "gauge",
            s.peers_attested.to_string(),
        );
        gauge(
            &mut out,
            "quorate_attestation_enforced",
            "1 if peers must attest (a reference policy is configured), 0 in dev mode.",
            "gauge",
            u8::from(self.attestation_enforced.load(Ordering::Relaxed)).to_string(),
        );
        let peer_lines =
            |out: &mut String,
             name: &str,
             help: &str,
             f: &dyn Fn(&crate::daemon::status::PeerStatus) -> bool| {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
                for p in &s.peers {
                    out.push_str(&format!(
                        "{name}{{peer=\"{}\"}} {}\n",
                        p.party,
                        u8::from(f(p))
                    ));
                }
            };
        peer_lines(
            &mut out,
            "quorate_peer_connected",
            "1 while the peer has a live authenticated connection.",
            &|p| p.connected,
        );
        peer_lines(
            &mut out,
            "quorate_peer_attested",
            "1 while the peer's attestation is verified.",
            &|p| p.attested,
        );
        let peers: Vec<u32> = s.peers.iter().map(|p| p.party).collect();
        self.peer_refusals.render(
            "quorate_peer_refusals_total",
            "Attestation refusals of a peer since start (each excludes it for a while).",
            "peer",
            &peers,
            &mut out,
        );
        self.challenges_dropped.render(
            "quorate_challenges_dropped_total",
            "Attestation challenges of a peer not answered since start (a second challenge on one connection).",
            "peer",
            &peers,
            &mut out,
        );
        self.block_requests_dropped.render(
            "quorate_block_requests_dropped_total",
            "Block requests of a peer not answered since start (its answer budget was spent).",
            "peer",
            &peers,
            &mut out,
        );
        self.peer_frames_dropped.render(
            "quorate_peer_frames_dropped_total",
            "Frames to a peer dropped since start because its send queue was full (frames or bytes).",
            "peer",
            &peers,
            &mut out,
        );
        gauge(
            &mut out,
            "quorate_peer_handshakes_pending",
            "Inbound peer connections not yet authenticated.",
            "gauge",
            load(&self.peer_handshakes_pending),
        );
        gauge(
            &mut out,
            "quorate_peer_handshakes_evicted_total",
            "Unauthenticated inbound connections closed to make room for newer ones (the pending caps).",
            "counter",
            load(&self.peer_handshakes_evicted),
        );
        gauge(
            &mut out,
            "quorate_peer_admission_timeouts_total",
            "Authenticated peer connections closed because the peer was not admitted in time.",
            "counter",
            load(&self.peer_admission_timeouts),
        );
        let mut members = peers.clone();
        members.push(s.party);
        members.sort_unstable();
        self.equivocations.render(
            "quorate_equivocation_evidence_total",
            "Equivocation evidence (two conflicting signed votes) in blocks decided since start, by offending party.",
            "party",
            &members,
            &mut out,
        );
        gauge(
            &mut out,
            "quorate_sign_refusals_total",
            "Signatures the double-sign guard refused since start (must stay 0).",
            "counter",
            load(&self.sign_refusals),
        );
        gauge(
            &mut out,
            "quorate_consensus_core_errors_total",
            "Consensus inputs refused with an error since start (dropped).",
            "counter",
            load(&self.core_errors),
        );
        self.commit_latency.render(
            "quorate_commit_latency_seconds",
            "From signing an own batch to seeing it decided.",
            &mut out,
        );
        self.tpm_sign_latency.render(
            "quorate_tpm_sign_latency_seconds",
            "One TPM signature (vote or batch).",
            &mut out,
        );
        gauge(
            &mut out,
            "quorate_tpm_errors_total",
            "TPM signatures that failed since start (retried).",
            "counter",
            load(&self.tpm_errors),
        );
        gauge(
            &mut out,
            "quorate_log_entries_total",
            "Audit entries appended since start.",
            "counter",
            load(&self.log_entries),
        );
        gauge(
            &mut out,
            "quorate_log_size",
            "Entries in the audit log.",
            "gauge",
            load(&self.log_size),
        );
        gauge(
            &mut out,
            "quorate_log_append_seconds_total",
            "Time spent building and storing audit entries.",
            "counter",
            (self.log_append_micros.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
        );
        gauge(
            &mut out,
            "quorate_checkpoints_certified_total",
            "Audit checkpoints certified by a quorum and stored since start.",
            "counter",
            load(&self.checkpoints_certified),
        );
        gauge(
            &mut out,
            "quorate_checkpoint_certified_size",
            "Tree size of the latest certified checkpoint stored since start (0: none yet).",
            "gauge",
            load(&self.checkpoint_certified_size),
        );
        gauge(
            &mut out,
            "quorate_checkpoint_last_certified_timestamp_seconds",
            "When a checkpoint was last certified here, or the start time if none yet (Unix time).",
            "gauge",
            secs(self.last_certified_ms.load(Ordering::Relaxed)),
        );
        gauge(
            &mut out,
            "quorate_checkpoint_uncertified_seconds",
            "For how long an open audit checkpoint has lacked a quorum of cosignatures (0: none waiting).",
            "gauge",
            load(&self.checkpoint_uncertified_secs),
        );
        gauge(
            &mut out,
            "quorate_checkpoint_forks_total",
            "Peer checkpoint notes signing another root for a size held here (an audit log fork).",
            "counter",
            load(&self.checkpoint_forks),
        );
        gauge(
            &mut out,
            "quorate_signatures_refused_total",
            "Consensus signatures refused by the sign guard or withheld by the start-up double-sign watch.",
            "counter",
            self.signatures_refused.load(Ordering::Relaxed).to_string(),
        );
        self.checkpoint_issue_latency.render(
            "quorate_checkpoint_issue_latency_seconds",
            "Issuing this party's checkpoint lines (TPM quote and cosignature).",
            &mut out,
        );
        if let Some((free, size)) = self.data_dir.as_deref().and_then(disk_space) {
            gauge(
                &mut out,
                "quorate_data_dir_free_bytes",
                "Bytes available to the daemon on the data dir's file system.",
                "gauge",
                free.to_string(),
            );
            gauge(
                &mut out,
                "quorate_data_dir_size_bytes",
                "Size of the data dir's file system in bytes.",
                "gauge",
                size.to_string(),
            );
        }
        out.push_str("# HELP quorate_api_requests_total API answers by status class.\n# TYPE quorate_api_requests_total counter\n");
        for (i, c) in self.api_requests.iter().enumerate() {
            out.push_str(&format!(
                "quorate_api_requests_total{{class=\"{}xx\"}} {}\n",
                i + 1,
                c.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// (available, total) bytes of the file system holding `dir`.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = u64::from(st.fragment_size() as u32).max(1);
    Some((
        (st.blocks_available() as u64).saturating_mul(frag),
        (st.blocks() as u64).saturating_mul(frag),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::PeerStatus;

    fn status(peers: &[(u32, bool, bool)]) -> StatusView {
        StatusView {
            party: 1,
            cluster: "c".into(),
            height: 7,
            state_root: "r".into(),
            peers_connected: peers.iter().filter(|p| p.1).count(),
            peers_attested: peers.iter().filter(|p| p.2).count(),
            peers: peers
                .iter()
                .map(|&(party, connected, attested)| PeerStatus {
                    party,
                    address: "127.0.0.1:1".into(),
                    connected,
                    attested,
                    attestation: String::new(),
                })
                .collect(),
            last_decision: None,
            outbox: 3,
            pid: 1,
            updated_ms: 0,
        }
    }

    /// The value of the sample `line` (name with labels) in `text`.
    fn sample(text: &str, line: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        let mut s = String::new();
        h.render("x", "help", &mut s);
        assert!(s.contains("x_bucket{le=\"0.005\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.5\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 2\n"), "{s}");
        assert!(s.contains("x_count 2\n"), "{s}");
    }

    #[test]
    fn commit_latency_counts_each_batch_once() {
        let m = Metrics::default();
        m.batch_started(4);
        m.batch_started(4); // a re-sign does not restart the clock
        m.batch_decided(4);
        m.batch_decided(4);
        assert_eq!(m.commit_latency.count(), 1);
        let text = m.render(&status(&[(2, true, false)]));
        assert_eq!(sample(&text, "quorate_height"), Some(7.0));
        assert_eq!(sample(&text, "quorate_peers_attested"), Some(0.0));
    }

    #[test]
    fn per_peer_series_and_zero_counters_for_every_member() {
        let m = Metrics::default();
        m.peer_refusals.add(3, 1);
        m.peer_refusals.add(3, 1);
        m.equivocations.add(2, 1);
        let text = m.render(&status(&[(2, true, true), (3, false, false)]));
        assert_eq!(
            sample(&text, "quorate_peer_connected{peer=\"2\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "quorate_peer_connected{peer=\"3\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "quorate_peer_attested{peer=\"3\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "quorate_peer_refusals_total{peer=\"2\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "quorate_peer_refusals_total{peer=\"3\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "quorate_equivocation_evidence_total{party=\"1\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "quorate_equivocation_evidence_total{party=\"2\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "quorate_peers"), Some(2.0));
        assert_eq!(sample(&text, "quorate_outbox_operations"), Some(3.0));
    }

    #[test]
    fn backpressure_is_counted_beside_the_outbox_and_its_limit() {
        let m = Metrics::default();
        m.outbox_limit.store(8, Ordering::Relaxed);
        m.backpressure_refused_ops.fetch_add(5, Ordering::Relaxed);
        let text = m.render(&status(&[(2, true, true)]));
        assert_eq!(
            sample(&text, "quorate_backpressure_refused_operations_total"),
            Some(5.0)
        );
        assert_eq!(sample(&text, "quorate_outbox_limit"), Some(8.0));
        assert_eq!(sample(&text, "quorate_outbox_operations"), Some(3.0));
    }

    #[test]
    fn checkpoint_and_decision_times_start_at_start_and_move() {
        let m = Metrics::default();
        let t0 = m.last_decision_ms();
        assert!(t0 >= m.started_ms);
        std::thread::sleep(Duration::from_millis(5));
        m.decided_now();
        assert!(m.last_decision_ms() > t0);
        m.checkpoint_certified(10);
        m.checkpoint_certified(4); // an older one stored late: size stays
        let text = m.render(&status(&[]));
        assert_eq!(
            sample(&text, "quorate_checkpoint_certified_size"),
            Some(10.0)
        );
        assert_eq!(
            sample(&text, "quorate_checkpoints_certified_total"),
            Some(2.0)
        );
    }

    #[test]
    fn disk_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        let text = m.render(&status(&[]));
        let free = sample(&text, "quorate_data_dir_free_bytes").unwrap();
        let size = sample(&text, "quorate_data_dir_size_bytes").unwrap();
        assert!(size > 0.0 && free <= size, "{free} {size}");
        // No data dir: no disk metrics rather than made-up ones.
        let text = Metrics::default().render(&status(&[]));
        assert_eq!(sample(&text, "quorate_data_dir_size_bytes"), None);
    }
}
