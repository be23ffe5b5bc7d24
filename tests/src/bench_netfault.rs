//! Network rows of the `make bench` table: commit latency of a 4-party
//! cluster whose parties each run in their own network namespace, every
//! peer link through the fault proxy ([`crate::netcluster`]), at 0 ms and
//! 50 ms RTT; and the time an isolated party takes to catch up once its
//! links are healed. Needs root (network namespaces); without it the rows
//! are left out with a note on stderr.

use crate::bench::{percentile, Row};
use crate::netcluster::NetCluster;
use std::time::{Duration, Instant};

const AREA: &str = "network";
/// Operations timed one after another at each RTT.
const SAMPLES: usize = 30;
/// Blocks the isolated party falls behind before it is healed.
const BEHIND: u64 = 10;

fn keygen() -> serde_json::Value {
    serde_json::json!({"type": "create_session", "session": {"kind": "keygen",
        "participants": [1, 2, 3, 4], "threshold": 2, "scheme": "frost-secp256k1",
        "deadline_secs": 600}})
}

/// Submits one operation to party `id` and waits until it is decided there.
async fn decide_one(c: &NetCluster, id: u32) -> anyhow::Result<Duration> {
    let client = c.client(id)?;
    let t = Instant::now();
    let r = client.submit_json(&keygen()).await?;
    loop {
        let v = client.operation(&r.id).await?;
        if v.get("decided") == Some(&serde_json::Value::Bool(true)) {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "operation {} not decided: {v}",
            r.id
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn time_to_heal(c: &NetCluster, reset: bool) -> anyhow::Result<Duration> {
    c.net().isolate(4);
    if reset {
        for o in 1..=3 {
            c.net().reset(4, o);
        }
    }
    let start = c.client(1)?.status().await?.height;
    while c.client(1)?.status().await?.height < start + BEHIND {
        decide_one(c, 1).await?;
    }
    let target = c.client(1)?.status().await?.height;
    let t = Instant::now();
    c.net().heal();
    let p4 = c.client(4)?;
    while p4.status().await?.height < target {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "party 4 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(t.elapsed())
}

/// Appends the network rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    if let Err(e) = crate::netns::available() {
        eprintln!("bench: network rows skipped: {e:#}");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure(rows))
}

async fn measure(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut c = NetCluster::provision(4, "byzantine").await?;
    c.start_connected(Duration::from_secs(60)).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for rtt_ms in [0u64, 50] {
        c.net()
            .set_latency(Duration::from_millis(rtt_ms), Duration::ZERO);
        // One warm-up operation per RTT.
        decide_one(&c, 1).await?;
        let mut lat = Vec::with_capacity(SAMPLES);
        for k in 0..SAMPLES {
            lat.push(decide_one(&c, k as u32 % 4 + 1).await?);
        }
        let note = format!(
            "n=4 byzantine, a namespace each, proxied links, {SAMPLES} keygens one at a time, submit -> decided at the submitting party"
        );
        rows.push(Row::new(
            AREA,
            format!("commit latency at {rtt_ms} ms RTT, p50"),
            ms(percentile(&mut lat, 50.0)),
            "ms",
            note,
        ));
        rows.push(Row::new(
            AREA,
            format!("commit latency at {rtt_ms} ms RTT, p99"),
            ms(percentile(&mut lat, 99.0)),
            "ms",
            "",
        ));
    }
    // Time to heal: party 4 is cut off while the others decide BEHIND
    // blocks, then healed; timed until it reaches their height. Once with
    // its connections held through the cut (a black hole, as a short
    // outage is to TCP), once with them reset as well (it must redial).
    for reset in [false, true] {
        let t = time_to_heal(&c, reset).await?;
        rows.push(Row::new(
            AREA,
            format!(
                "time to heal, {BEHIND} blocks behind, {}",
                if reset {
                    "connections reset"
                } else {
                    "connections held"
                }
            ),
            ms(t),
            "ms",
            "50 ms RTT; heal -> the isolated party's height reaches the others'",
        ));
    }
    for id in 1..=4 {
        c.stop(id)?;
    }
    Ok(())
}
