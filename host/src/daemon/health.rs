//! Watching for consensus failures: the gauges the alerting rules need
//! (`deploy/quorate.rules.yml`), and an [`EventLog::alert`] plus a
//! structured log line for each failure this party observes.
//!
//! | alert (event kind)     | when                                                        |
//! |------------------------|-------------------------------------------------------------|
//! | `consensus_stalled`    | no decision for [`STALL_AFTER`] while work is pending       |
//! | `consensus_resumed`    | the first decision after a stall                            |
//! | `sign_refused`         | the double-sign guard refused a signature                   |
//! | `equivocation`         | a decided block records equivocation evidence               |
//! | `peer_refused`         | a peer's attestation was refused (it is excluded)           |
//! | `checkpoint_fork`      | a peer cosigned another root for a checkpoint size          |
//! | `consensus_halted`     | the driver halted (the daemon stops; systemd restarts it)   |
//!
//! [`EventLog::alert`]: super::events::EventLog::alert

use super::events::Severity;
use quorate_firmware::consensus::Block;
use quorate_firmware::types::PartyId;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// No decision for this long while operations or batches wait: stalled
/// (`QUORATE_STALL_AFTER_SECS` in the daemon's environment overrides it).
pub const STALL_AFTER: Duration = Duration::from_secs(60);
/// The environment variable that overrides [`STALL_AFTER`] (whole seconds, > 0).
pub const STALL_AFTER_ENV: &str = "QUORATE_STALL_AFTER_SECS";
/// How often the runtime's tick refreshes the health gauges.
const EVERY: Duration = Duration::from_secs(1);

/// A change in the chain's liveness, as [`Watch::liveness`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Work has waited `for_ms` without a decision.
    Stalled {
        /// Milliseconds since the last decision (or the start).
        for_ms: u64,
    },
    /// A decision came after a stall.
    Resumed,
}

/// What the watcher remembers between ticks (no I/O: the runtime feeds it).
#[derive(Debug)]
pub struct Watch {
    stalled: bool,
    stall_after: Duration,
    last_check: Option<Instant>,
    uncertified_since: Option<Instant>,
}

impl Default for Watch {
    /// A watcher with [`STALL_AFTER`], or the whole seconds in
    /// `$QUORATE_STALL_AFTER_SECS` when that is a positive number.
    fn default() -> Self {
        let secs = std::env::var(STALL_AFTER_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0);
        Watch::new(secs.map_or(STALL_AFTER, Duration::from_secs))
    }
}

impl Watch {
    /// A watcher calling the chain stalled after `stall_after` without a
    /// decision while work is pending.
    pub fn new(stall_after: Duration) -> Self {
        Watch {
            stalled: false,
            stall_after,
            last_check: None,
            uncertified_since: None,
        }
    }

    /// At `now_ms`, the last decision (or the start) at `last_decision_ms`,
    /// `pending` whether operations or batches wait: the change to report,
    /// at most once per stall.
    pub fn liveness(
        &mut self,
        now_ms: u64,
        last_decision_ms: u64,
        pending: bool,
    ) -> Option<Liveness> {
        let quiet_ms = now_ms.saturating_sub(last_decision_ms);
        let quiet = quiet_ms >= self.stall_after.as_millis() as u64;
        match (self.stalled, quiet && pending) {
            (false, true) => {
                self.stalled = true;
                Some(Liveness::Stalled { for_ms: quiet_ms })
            }
            // Resumed only by a decision: work merely drained (say, by a
            // restart elsewhere) without one is not progress seen here.
            (true, _) if !quiet => {
                self.stalled = false;
                Some(Liveness::Resumed)
            }
            _ => None,
        }
    }

    /// How long an open checkpoint has lacked a quorum, given whether one
    /// is `waiting` at `now`.
    pub fn uncertified_for(&mut self, now: Instant, waiting: bool) -> Duration {
        if !waiting {
            self.uncertified_since = None;
            return Duration::ZERO;
        }
        now.saturating_duration_since(*self.uncertified_since.get_or_insert(now))
    }

    fn due(&mut self, now: Instant) -> bool {
        if self
            .last_check
            .is_some_and(|t| now.duration_since(t) < EVERY)
        {
            return false;
        }
        self.last_check = Some(now);
        true
    }
}

impl super::Runtime {
    /// On the tick (at most once per second): refresh the gauges the
    /// driver and the audit log know, and raise the alerts they show.
    pub(super) fn health_tick(&mut self) {
        let now = Instant::now();
        if !self.health.due(now) {
            return;
        }
        let m = self.metrics.clone();
        m.attestation_enforced
            .store(self.attest.admission.enforced(), Ordering::Relaxed);
        let pending_batches = self.driver.pending_batches() as u64;
        m.pending_batches.store(pending_batches, Ordering::Relaxed);
        m.core_errors
            .store(self.driver.core_errors(), Ordering::Relaxed);
        for (p, n) in self.driver.block_requests_dropped() {
            m.block_requests_dropped.set(p.0, *n);
        }
        let net = self.net.stats();
        m.peer_handshakes_pending
            .store(net.pending as u64, Ordering::Relaxed);
        m.peer_handshakes_evicted
            .store(net.handshakes_evicted, Ordering::Relaxed);
        m.peer_admission_timeouts
            .store(net.admission_timeouts, Ordering::Relaxed);
        for (p, n) in &net.send_dropped {
            m.peer_frames_dropped.set(p.0, *n);
        }
        let refusals = self.driver.sign_refusals();
        let before = m.sign_refusals.swap(refusals, Ordering::Relaxed);
        if refusals > before {
            self.events.alert(
                "sign_refused",
                Severity::Critical,
                "the double-sign guard refused to sign: the WAL or the sign-guard state was lost or rolled back",
                serde_json::json!({"refusals": refusals, "new": refusals - before, "height": self.driver.height().0}),
            );
        }
        let (head, _) = self.audit.app_state();
        m.log_size.store(head.size, Ordering::Relaxed);
        let waited = self.health.uncertified_for(now, self.audit.book.waiting());
        m.checkpoint_uncertified_secs
            .store(waited.as_secs(), Ordering::Relaxed);
        let outbox = self.store.outbox_len().unwrap_or(0);
        let pending = outbox > 0 || pending_batches > 0;
        match self
            .health
            .liveness(super::now_ms(), m.last_decision_ms(), pending)
        {
            Some(Liveness::Stalled { for_ms }) => {
                self.events.alert(
                    "consensus_stalled",
                    Severity::Critical,
                    "no decision while work is pending",
                    serde_json::json!({
                        "seconds_without_decision": for_ms / 1000,
                        "outbox": outbox,
                        "pending_batches": pending_batches,
                        "height": self.driver.chain().height.0,
                        "peers_connected": self.peers_up.len(),
                    }),
                );
            }
            Some(Liveness::Resumed) => {
                self.events.alert(
                    "consensus_resumed",
                    Severity::Warning,
                    "decisions resumed after a stall",
                    serde_json::json!({"height": self.driver.chain().height.0}),
                );
            }
            None => {}
        }
    }

    /// A block was decided live: note the time, count and report the
    /// equivocation evidence it records.
    pub(super) fn decided_health(&mut self, block: &Block) {
        self.metrics.decided_now();
        for ev in block.evidence() {
            let (voter, height, round, step) = ev.key();
            self.metrics.equivocations.add(voter.0, 1);
            self.events.alert(
                "equivocation",
                Severity::Critical,
                "a decided block records equivocation evidence: a party signed two conflicting votes",
                serde_json::json!({
                    "party": voter.0,
                    "vote_height": height.0,
                    "round": round,
                    "step": format!("{step:?}").to_lowercase(),
                    "block_height": block.header().height.0,
                }),
            );
        }
    }

    /// A peer's attestation was refused (it is being excluded).
    pub(super) fn refusal_noted(&mut self, peer: PartyId, reason: &str) {
        self.metrics.peer_refusals.add(peer.0, 1);
        let reason: String = reason.chars().take(400).collect();
        self.events.alert(
            "peer_refused",
            Severity::Warning,
            "a peer's attestation was refused; it is excluded for a while",
            serde_json::json!({"peer": peer.0, "reason": reason}),
        );
    }

    /// A peer cosigned another root for a checkpoint size.
    pub(super) fn fork_noted(&mut self, peer: PartyId, error: &str) {
        self.metrics
            .checkpoint_forks
            .fetch_add(1, Ordering::Relaxed);
        self.events.alert(
            "checkpoint_fork",
            Severity::Critical,
            "AUDIT LOG FORK: a peer signed another root for the same size",
            serde_json::json!({"peer": peer.0, "error": error}),
        );
    }

    /// The driver halted: the daemon is about to stop.
    pub(super) fn halted_noted(&mut self, why: &str) {
        self.events.alert(
            "consensus_halted",
            Severity::Critical,
            "consensus halted; the daemon stops",
            serde_json::json!({"reason": why, "height": self.driver.chain().height.0}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_reported_once_and_resumes_only_on_a_decision() {
        let mut w = Watch::new(Duration::from_secs(60));
        // Quiet but idle: no stall.
        assert_eq!(w.liveness(100_000, 0, false), None);
        // Pending but recent: no stall.
        assert_eq!(w.liveness(59_000, 0, true), None);
        assert_eq!(
            w.liveness(61_000, 0, true),
            Some(Liveness::Stalled { for_ms: 61_000 })
        );
        assert_eq!(w.liveness(90_000, 0, true), None, "reported once");
        // The work drained without a decision: still stalled.
        assert_eq!(w.liveness(95_000, 0, false), None);
        assert_eq!(w.liveness(96_000, 95_500, true), Some(Liveness::Resumed));
        assert_eq!(w.liveness(97_000, 95_500, true), None);
        assert_eq!(
            w.liveness(200_000, 95_500, true),
            Some(Liveness::Stalled { for_ms: 104_500 })
        );
    }

    #[test]
    fn uncertified_time_counts_from_the_first_waiting_tick() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        assert_eq!(w.uncertified_for(t0, false), Duration::ZERO);
        assert_eq!(w.uncertified_for(t0, true), Duration::ZERO);
        let later = t0 + Duration::from_secs(42);
        assert_eq!(w.uncertified_for(later, true), Duration::from_secs(42));
        assert_eq!(w.uncertified_for(later, false), Duration::ZERO);
        assert_eq!(w.uncertified_for(later, true), Duration::ZERO);
    }

    #[test]
    fn the_gauges_refresh_at_most_once_a_second() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        assert!(w.due(t0));
        assert!(!w.due(t0 + Duration::from_millis(500)));
        assert!(w.due(t0 + Duration::from_millis(1000)));
    }
}
