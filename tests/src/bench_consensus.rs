//! Consensus rows of the `make bench` table: decisions per CPU-second of the
//! deterministic simulator (real ECDSA P-256 with ring, no TPM latency, no
//! network), and signatures per decided block.

use crate::bench::Row;
use quorate_firmware::sim::{run, SimConfig};
use quorate_firmware::types::FaultModel;
use std::time::Instant;

/// Appends the consensus rows.
pub fn run_bench(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for n in [4usize, 7] {
        for ops in [1usize, 1000] {
            let heights = if ops == 1 { 60 } else { 20 };
            let cfg = SimConfig::clean(1, n, FaultModel::Byzantine, heights, ops);
            let t = Instant::now();
            let r = run(cfg).map_err(|e| anyhow::anyhow!(e))?;
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            rows.push(Row::new(
                "consensus",
                format!("decisions/s n={n} ops/block={ops}"),
                r.heights as f64 / secs,
                "blocks/s",
                format!(
                    "one thread, {} heights, P-256 (ring verify, p256 sign), wall time",
                    r.heights
                ),
            ));
            rows.push(Row::new(
                "consensus",
                format!("signatures/block n={n} ops/block={ops}"),
                r.signatures as f64 / r.heights.max(1) as f64,
                "sigs",
                "vote-key signatures by all parties per decided block (proposal + prevotes + precommits)",
            ));
            rows.push(Row::new(
                "consensus",
                format!("verifications/block n={n} ops/block={ops}"),
                r.verifications as f64 / r.heights.max(1) as f64,
                "verifies",
                "ECDSA verifications by all parties per decided block after caching",
            ));
        }
    }
    Ok(())
}
