//! Counters and histograms behind `GET /metrics` (Prometheus text format).
//!
//! The daemon updates them with atomic operations from the event loop and
//! the TPM tasks; the API renders them together with the height and peer
//! counts it reads from the status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Blocks decided since start (replayed blocks not counted).
    pub decisions: AtomicU64,
    /// Operations in blocks decided since start.
    pub decided_ops: AtomicU64,
    /// Operations accepted through the API since start.
    pub accepted_ops: AtomicU64,
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
    batch_started: Mutex<Option<(u64, Instant)>>,
}

impl Metrics {
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

    /// Renders every metric, with the gauges the caller read from the status.
    pub fn render(
        &self,
        party: u32,
        height: u64,
        peers_connected: usize,
        peers_attested: usize,
        outbox: usize,
    ) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        gauge(
            &mut out,
            "quorate_party",
            "This party's id.",
            "gauge",
            party.to_string(),
        );
        gauge(
            &mut out,
            "quorate_height",
            "The last decided height.",
            "gauge",
            height.to_string(),
        );
        gauge(
            &mut out,
            "quorate_decisions_total",
            "Blocks decided since start.",
            "counter",
            self.decisions.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "quorate_decided_operations_total",
            "Operations in blocks decided since start.",
            "counter",
            self.decided_ops.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "quorate_accepted_operations_total",
            "Operations accepted through the API since start.",
            "counter",
            self.accepted_ops.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "quorate_outbox_operations",
            "Accepted operations not yet decided.",
            "gauge",
            outbox.to_string(),
        );
        gauge(
            &mut out,
            "quorate_peers_connected",
            "Peers with a live authenticated connection.",
            "gauge",
            peers_connected.to_string(),
        );
        gauge(
            &mut out,
            "quorate_peers_attested",
            "Peers whose attestation verified.",
            "gauge",
            peers_attested.to_string(),
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
            "quorate_log_entries_total",
            "Audit entries appended since start.",
            "counter",
            self.log_entries.load(Ordering::Relaxed).to_string(),
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
            "Audit checkpoints certified by a quorum and stored.",
            "counter",
            self.checkpoints_certified
                .load(Ordering::Relaxed)
                .to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = m.render(1, 7, 2, 0, 0);
        assert!(text.contains("quorate_height 7\n"));
        assert!(text.contains("quorate_peers_attested 0\n"));
    }
}
