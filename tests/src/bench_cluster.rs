//! `make bench` cluster rows (issue 16, point 6): real `quorate` daemons,
//! each with its own swtpm, driven through the API at saturation.
//!
//! For each cluster size (n = 1, 3, 4, 7) a fresh cluster is provisioned
//! ([`TestCluster::provision`]) and many client tasks submit keygen
//! `create_session` operations (`POST /v1/operations`) to the parties in
//! turn, as fast as the API accepts them. Each session is one operation plus
//! one verdict per party, so n + 1 decided operations. The rows report:
//!
//! - **throughput**: sessions executed per second, from the first submit to
//!   the last session executed (seen on party 1's event stream), and
//!   decided operations per second (`quorate_decided_operations_total` at
//!   party 1 over the same interval);
//! - **latency** submit → executed, p50 and p99: the submit time against the
//!   time the height that executed the session (`record.status` of
//!   `GET /v1/operations/{receipt}`) first appeared on the submitting
//!   party's event stream;
//! - **TPM signatures per decided operation**, per party
//!   (`quorate_tpm_sign_latency_seconds_count`, summed over parties, / n,
//!   over the decided operations);
//! - **RSS and CPU** of the daemon processes (`/proc/PID/status` VmRSS,
//!   sampled every 250 ms, and `/proc/PID/stat` utime + stime in USER_HZ =
//!   100 ticks/s), during the load and, once the cluster is quiescent, over
//!   the next [`Config::idle`] (10 s by default).
//!
//! Then: the cost of decentralization (n = 4 against n = 1, as ratios), the
//! n = 4 cluster again after a history of sessions, and n = 4 with each
//! daemon's TPM behind [`crate::tpm_proxy`] emulating a discrete hardware
//! TPM (200 ms per signature). The goals stand beside the figures.
//! Nothing here asserts a timing.
//!
//! Environment (defaults keep the area at a few minutes on 2 cores):
//! `QUORATE_BENCH_SESSIONS` (500 per run), `QUORATE_BENCH_CLIENTS` (32
//! concurrent client tasks), `QUORATE_BENCH_CLUSTER_SIZES` ("1,3,4,7"),
//! `QUORATE_BENCH_HISTORY` (2000: sessions decided at n = 4 before the
//! history row, the goal is 100,000), `QUORATE_BENCH_HW_SESSIONS`
//! (300), `QUORATE_BENCH_HW_SIGN_MS` (200), `QUORATE_BENCH_IDLE_SECS` (10).

use crate::bench::{percentile, Row};
use crate::cluster::TestCluster;
use crate::tpm_proxy::{LatencyModel, TpmProxy};
use anyhow::{anyhow, Context as _};
use quorate_host::client::{Client, ClientError};
use quorate_host::tpm::Swtpm;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AREA: &str = "cluster";
/// Largest burst submitted at once while building history (the daemon's
/// outbox takes every verdict too: n + 1 operations per session).
const HISTORY_CHUNK: usize = 2000;
/// Receipts looked up for the latency percentiles at most (evenly spread).
const LATENCY_SAMPLES: usize = 2000;
/// /proc/PID/stat counts CPU time in USER_HZ, 100 on Linux.
const TICKS_PER_SEC: f64 = 100.0;

/// What one run does; from the environment, see the module docs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sessions per measured run.
    pub sessions: usize,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Cluster sizes.
    pub sizes: Vec<u32>,
    /// Sessions of history (fresh run included) before the history row.
    pub history: usize,
    /// Sessions for the emulated hardware TPM row.
    pub hw_sessions: usize,
    /// The emulated signature latency.
    pub hw_sign: Duration,
    /// How long idle CPU is measured for.
    pub idle: Duration,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

impl Config {
    /// The configuration from `QUORATE_BENCH_*` variables.
    pub fn from_env() -> Config {
        let sizes = std::env::var("QUORATE_BENCH_CLUSTER_SIZES")
            .ok()
            .map(|s| {
                s.split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .filter(|n| (1..=16).contains(n))
                    .collect::<Vec<u32>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![1, 3, 4, 7]);
        Config {
            sessions: env_num("QUORATE_BENCH_SESSIONS", 500).max(1) as usize,
            clients: env_num("QUORATE_BENCH_CLIENTS", 32).clamp(1, 1024) as usize,
            sizes,
            history: env_num("QUORATE_BENCH_HISTORY", 2000) as usize,
            hw_sessions: env_num("QUORATE_BENCH_HW_SESSIONS", 300).max(1) as usize,
            hw_sign: Duration::from_millis(env_num("QUORATE_BENCH_HW_SIGN_MS", 200)),
            idle: Duration::from_secs(env_num("QUORATE_BENCH_IDLE_SECS", 10).max(1)),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Sessions accepted by the API.
    pub accepted: usize,
    /// Of those, executed (the rest rejected, or not done in time).
    pub executed: usize,
    /// Of those accepted, rejected.
    pub rejected: usize,
    /// Submissions refused for good (not 429/503, which are retried).
    pub submit_errors: usize,
    /// 429/503 answers (each retried).
    pub backpressure: usize,
    /// Whether every accepted session was done before the deadline.
    pub completed: bool,
    /// First submit to last session done.
    pub elapsed: Duration,
    /// First submit to last receipt (the API's accept rate).
    pub submitted: Duration,
    /// Sessions executed per second.
    pub sessions_per_s: f64,
    /// Decided operations per second at party 1.
    pub ops_per_s: f64,
    /// Submit → executed.
    pub p50: Duration,
    /// Submit → executed.
    pub p99: Duration,
    /// Latency samples behind the percentiles.
    pub samples: usize,
    /// TPM signatures per decided operation, per party.
    pub sigs_per_op: f64,
    /// Largest RSS of any daemon during the load (MiB).
    pub rss_peak_mib: f64,
    /// Largest RSS of any daemon at the end of the idle window (MiB).
    pub rss_idle_mib: f64,
    /// Mean CPU per daemon during the load (% of one core).
    pub cpu_load_pct: f64,
    /// Largest CPU of any daemon over the idle window (% of one core).
    pub idle_cpu_pct: f64,
}

/// Appends the cluster rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let cfg = Config::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut by_n: HashMap<u32, Measured> = HashMap::new();
    for &n in &cfg.sizes {
        let mut c = TestCluster::provision(n, "byzantine")?;
        c.start_all()?;
        let m = rt.block_on(async {
            wait_up(&c).await?;
            let m = measure(
                &c,
                cfg.sessions,
                cfg.clients,
                cfg.idle,
                true,
                MEASURED_DEADLINE_SECS,
            )
            .await?;
            push_rows(rows, &format!("n={n}"), n, &m, &cfg, "swtpm");
            if n == 4 && cfg.history > cfg.sessions {
                history_rows(rows, &c, &m, &cfg).await?;
            }
            anyhow::Ok(m)
        })?;
        by_n.insert(n, m);
        drop(c);
    }
    if let (Some(one), Some(four)) = (by_n.get(&1), by_n.get(&4)) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        rows.push(Row::new(
            AREA,
            "cost of decentralization: decided ops/s, n=4 / n=1",
            ratio(four.ops_per_s, one.ops_per_s),
            "ratio",
            format!(
                "{:.0} against {:.0} ops/s (n=4 decides 5 ops per session, n=1 2)",
                four.ops_per_s, one.ops_per_s
            ),
        ));
        rows.push(Row::new(
            AREA,
            "cost of decentralization: sessions/s, n=4 / n=1",
            ratio(four.sessions_per_s, one.sessions_per_s),
            "ratio",
            format!(
                "{:.0} against {:.0} sessions/s",
                four.sessions_per_s, one.sessions_per_s
            ),
        ));
        rows.push(Row::new(
            AREA,
            "cost of decentralization: p50 latency, n=4 / n=1",
            ratio(ms(four.p50), ms(one.p50)),
            "ratio",
            format!("{:.0} ms against {:.0} ms", ms(four.p50), ms(one.p50)),
        ));
    }
    hardware_rows(rows, &rt, &cfg)?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn wait_up(c: &TestCluster) -> anyhow::Result<()> {
    let n = c.parties.len() as u32;
    for id in 1..=n {
        c.wait_api(id, Duration::from_secs(60)).await?;
    }
    // Every party connected to every other before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c.statuses(&(1..=n).collect::<Vec<_>>()).await?;
        if s.iter().all(|x| x.peers_connected + 1 >= n as usize) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("peers did not connect: {s:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn push_rows(rows: &mut Vec<Row>, label: &str, n: u32, m: &Measured, cfg: &Config, tpm: &str) {
    let done = if m.completed {
        String::new()
    } else {
        format!(
            ", NOT all done in time ({} of {})",
            m.executed + m.rejected,
            m.accepted
        )
    };
    let goal_ops = match (n, tpm) {
        (4, "swtpm") => "; goal >= 10,000 at n=4 on swtpm",
        (4, _) => "; goal >= 5,000 with 200 ms signatures",
        _ => "",
    };
    rows.push(Row::new(
        AREA,
        format!("{label}: sessions/s at saturation"),
        m.sessions_per_s,
        "sess/s",
        format!(
            "{tpm}; {} keygen sessions from {} clients in {:.1} s (all accepted after {:.1} s); {} rejected, {} refused, {} x 429/503{done}",
            m.accepted,
            cfg.clients,
            m.elapsed.as_secs_f64(),
            m.submitted.as_secs_f64(),
            m.rejected,
            m.submit_errors,
            m.backpressure
        ),
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: decided ops/s"),
        m.ops_per_s,
        "ops/s",
        format!("{} ops per session{goal_ops}", n + 1),
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: submit -> executed, p50"),
        ms(m.p50),
        "ms",
        format!("{} receipts looked up", m.samples),
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: submit -> executed, p99"),
        ms(m.p99),
        "ms",
        "",
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: TPM signatures per decided op"),
        m.sigs_per_op,
        "sig/op",
        "per party (votes, proposals, batches, checkpoints)",
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: daemon RSS, peak under load"),
        m.rss_peak_mib,
        "MiB",
        format!(
            "largest daemon; {:.0} MiB after the idle window; goal <= 256 MiB",
            m.rss_idle_mib
        ),
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: daemon CPU under load"),
        m.cpu_load_pct,
        "% core",
        "mean per daemon (2 cores shared by all daemons, their swtpms and the clients)",
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: daemon CPU idle"),
        m.idle_cpu_pct,
        "% core",
        format!(
            "busiest daemon, {} s once quiescent after the load; goal < 1 %",
            cfg.idle.as_secs()
        ),
    ));
}

/// Builds history on the running n = 4 cluster, then measures again.
async fn history_rows(
    rows: &mut Vec<Row>,
    c: &TestCluster,
    fresh: &Measured,
    cfg: &Config,
) -> anyhow::Result<()> {
    let mut decided = cfg.sessions;
    let t = Instant::now();
    while decided < cfg.history {
        let chunk = HISTORY_CHUNK.min(cfg.history - decided);
        let m = measure(
            c,
            chunk,
            cfg.clients,
            Duration::ZERO,
            false,
            HISTORY_DEADLINE_SECS,
        )
        .await?;
        decided += m.accepted;
        if m.accepted == 0 {
            break;
        }
    }
    let built = t.elapsed();
    // The last chunk's deadlines pass (an idle cluster decides a block at
    // each), so every history session has finished.
    tokio::time::sleep(Duration::from_secs(u64::from(HISTORY_DEADLINE_SECS) + 2)).await;
    let m = measure(
        c,
        cfg.sessions,
        cfg.clients,
        cfg.idle,
        true,
        MEASURED_DEADLINE_SECS,
    )
    .await?;
    let label = format!("n=4 after {decided} sessions");
    let scaled = if cfg.history < 100_000 {
        format!(
            "history of {decided} sessions (QUORATE_BENCH_HISTORY; the goal names 100,000, too long for the default run), built in {:.0} s",
            built.as_secs_f64()
        )
    } else {
        format!("history built in {:.0} s", built.as_secs_f64())
    };
    rows.push(Row::new(
        AREA,
        format!("{label}: decided ops/s"),
        m.ops_per_s,
        "ops/s",
        scaled,
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: sessions/s"),
        m.sessions_per_s,
        "sess/s",
        format!("{} rejected, {} x 429/503", m.rejected, m.backpressure),
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: p50 latency"),
        ms(m.p50),
        "ms",
        format!("p99 {:.0} ms", ms(m.p99)),
    ));
    // What party 1's session machine holds now: the measured run's open
    // sessions and what finished in the last heights, not the history.
    let held = match c.client(1)?.metrics().await {
        Ok(t) => format!(
            "{:.0} sessions and {:.0} operation records in memory at party 1",
            metric(&t, "quorate_machine_sessions"),
            metric(&t, "quorate_machine_operations")
        ),
        Err(e) => format!("metrics unreadable: {e}"),
    };
    rows.push(Row::new(
        AREA,
        format!("{label}: daemon RSS, peak"),
        m.rss_peak_mib,
        "MiB",
        format!(
            "after the idle window {:.0} MiB ({held}); goal <= 256 MiB",
            m.rss_idle_mib
        ),
    ));
    rows.push(Row::new(
        AREA,
        format!("{label}: daemon CPU idle"),
        m.idle_cpu_pct,
        "% core",
        "goal < 1 %",
    ));
    let ratio = if fresh.ops_per_s > 0.0 {
        m.ops_per_s / fresh.ops_per_s
    } else {
        0.0
    };
    rows.push(Row::new(
        AREA,
        "history cost: decided ops/s with history / fresh",
        ratio,
        "ratio",
        "goal >= 0.70 (history costing < 30 %)",
    ));
    Ok(())
}

/// The n = 4 row with every TPM behind the latency proxy.
fn hardware_rows(
    rows: &mut Vec<Row>,
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
) -> anyhow::Result<()> {
    let n = 4usize;
    let dir = tempfile::Builder::new()
        .prefix("quorate-bench-hwtpm-")
        .tempdir()?;
    let mut tpms = Vec::new();
    let mut proxies = Vec::new();
    let model = LatencyModel::discrete_tpm().with_sign(cfg.hw_sign);
    for id in 1..=n {
        let tpm = Swtpm::spawn(&dir.path().join(format!("swtpm{id}")))?;
        proxies.push(TpmProxy::start(tpm.port(), model.clone())?);
        tpms.push(tpm);
    }
    // `quorate init` on the bare swtpm (provisioning is not measured), the
    // daemon on the proxy in front of it.
    let init: Vec<String> = tpms
        .iter()
        .map(|t| format!("swtpm:host=127.0.0.1,port={}", t.port()))
        .collect();
    let run: Vec<String> = proxies.iter().map(TpmProxy::tcti).collect();
    let mut c = TestCluster::provision_on_tpms("byzantine", &init, &run)?;
    c.start_all()?;
    let signs_before: u64 = proxies
        .iter()
        .map(|p| p.stats().signs.load(Ordering::Relaxed))
        .sum();
    let m = rt.block_on(async {
        wait_up(&c).await?;
        measure(
            &c,
            cfg.hw_sessions,
            cfg.clients,
            cfg.idle,
            true,
            MEASURED_DEADLINE_SECS,
        )
        .await
    })?;
    let signs: u64 = proxies
        .iter()
        .map(|p| p.stats().signs.load(Ordering::Relaxed))
        .sum::<u64>()
        - signs_before;
    let (frame_errors, upstream_errors): (u64, u64) = proxies
        .iter()
        .map(|p| {
            let st = p.stats();
            (
                st.frame_errors.load(Ordering::Relaxed),
                st.upstream_errors.load(Ordering::Relaxed),
            )
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    let label = format!("n=4, emulated hw TPM ({} ms sign)", cfg.hw_sign.as_millis());
    let tpm = format!(
        "swtpm behind tests/src/tpm_proxy.rs ({signs} TPM2_Sign through the proxies, {frame_errors} framing and {upstream_errors} swtpm errors)"
    );
    push_rows(rows, &label, 4, &m, cfg, &tpm);
    drop(c);
    drop(proxies);
    for mut t in tpms {
        let _ = t.stop();
    }
    Ok(())
}

/// A key generation request for a scheme no built-in engine runs, so the
/// session, once approved, stays active until `deadline_secs` pass (the
/// measured runs use 600 s; history uses [`HISTORY_DEADLINE_SECS`], so it
/// is finished sessions, not open ones).
fn keygen(n: u32, deadline_secs: u32) -> Value {
    let all: Vec<u32> = (1..=n).collect();
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": all,
        "threshold": n.min(2), "scheme": "frost-secp256k1", "deadline_secs": deadline_secs}})
}

/// Deadline of the measured runs' sessions (they stay open throughout).
const MEASURED_DEADLINE_SECS: u32 = 600;

/// Deadline of the history's sessions: long enough to be approved in a
/// burst of [`HISTORY_CHUNK`], short enough that history is finished
/// sessions (failed at their deadline, then retired from memory), as a
/// long-running cluster's history is.
const HISTORY_DEADLINE_SECS: u32 = 10;

/// A sample of one metric line (`name value`) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// (decided operations at party 1, TPM signatures summed over parties).
async fn counters(clients: &[Client]) -> anyhow::Result<(f64, f64)> {
    let mut decided = 0.0;
    let mut signs = 0.0;
    for (i, c) in clients.iter().enumerate() {
        let text = c.metrics().await?;
        if i == 0 {
            decided = metric(&text, "quorate_decided_operations_total");
        }
        signs += metric(&text, "quorate_tpm_sign_latency_seconds_count");
    }
    Ok((decided, signs))
}

/// utime + stime of `pid`, in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14, stime 15.
            let u: u64 = f.get(11)?.parse().ok()?;
            let s: u64 = f.get(12)?.parse().ok()?;
            Some(u + s)
        })
        .unwrap_or(0)
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// What the event readers saw.
#[derive(Debug, Default)]
struct Seen {
    /// When each height first appeared, per party (index 0 is party 1).
    heights: Vec<HashMap<u64, Instant>>,
    /// Create-session operations done (executed or rejected) at party 1.
    done: usize,
    /// Of those, rejected.
    rejected: usize,
    /// When the last one was done.
    last_done: Option<Instant>,
    /// Whether a reader missed events (a `gap`, or its stream ended).
    gap: bool,
}

fn height_of(id: &str) -> Option<u64> {
    id.split_once(':')?.0.parse().ok()
}

fn is_create(kind: &Value) -> bool {
    kind.as_str().is_some_and(|k| k.starts_with("create_"))
}

/// Reads party `index + 1`'s event stream into `seen` until aborted.
async fn read_events(client: Client, index: usize, seen: Arc<Mutex<Seen>>, ready: Arc<AtomicBool>) {
    let Ok(mut stream) = client.events(None).await else {
        if let Ok(mut s) = seen.lock() {
            s.gap = true;
        }
        ready.store(true, Ordering::Relaxed);
        return;
    };
    ready.store(true, Ordering::Relaxed);
    loop {
        let ev = match stream.next().await {
            Ok(Some(ev)) => ev,
            _ => {
                if let Ok(mut s) = seen.lock() {
                    s.gap = true;
                }
                return;
            }
        };
        let now = Instant::now();
        let Ok(mut s) = seen.lock() else { return };
        if ev.event == "gap" {
            s.gap = true;
            continue;
        }
        if let Some(h) = height_of(&ev.id) {
            if let Some(map) = s.heights.get_mut(index) {
                map.entry(h).or_insert(now);
            }
        }
        if index != 0 {
            continue;
        }
        // `data` is {"id", "kind", "time_ms", "data"}; the outcome or
        // session event is its inner `data`.
        let inner = ev.data.get("data").unwrap_or(&Value::Null);
        let finished = match ev.event.as_str() {
            "operation" if inner.get("kind").is_some_and(is_create) => {
                let status = inner.get("status").unwrap_or(&Value::Null);
                if status.get("rejected").is_some() {
                    s.rejected += 1;
                    true
                } else {
                    status.get("executed").is_some()
                }
            }
            "executed" => true,
            "rejected" => {
                s.rejected += 1;
                true
            }
            _ => false,
        };
        if finished {
            s.done += 1;
            s.last_done = Some(now);
        }
    }
}

/// Submits `body` to `client`, retrying on backpressure (429/503) and on
/// connection errors; returns the receipt, or None if refused for good.
async fn submit(client: &Client, body: &Value, backpressure: &AtomicUsize) -> Option<String> {
    for attempt in 0..600u32 {
        match client.submit_json(body).await {
            Ok(r) => return Some(r.id),
            Err(ClientError::Status { status, .. })
                if status.as_u16() == 429 || status.as_u16() == 503 =>
            {
                backpressure.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(ClientError::Connect { .. }) if attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return None,
        }
    }
    None
}

/// One measured burst of `sessions` keygen sessions on a running cluster.
/// With `full`, also the latency lookups and the idle window.
pub async fn measure(
    c: &TestCluster,
    sessions: usize,
    clients: usize,
    idle: Duration,
    full: bool,
    deadline_secs: u32,
) -> anyhow::Result<Measured> {
    let n = c.parties.len() as u32;
    let ids: Vec<u32> = (1..=n).collect();
    let api: Vec<Client> = ids
        .iter()
        .map(|id| c.client(*id))
        .collect::<anyhow::Result<_>>()?;
    let pids: Vec<u32> = ids.iter().filter_map(|id| c.pid(*id)).collect();

    let seen = Arc::new(Mutex::new(Seen {
        heights: vec![HashMap::new(); n as usize],
        ..Seen::default()
    }));
    let mut readers = Vec::new();
    for (i, cl) in api.iter().enumerate() {
        let ready = Arc::new(AtomicBool::new(false));
        readers.push(tokio::spawn(read_events(
            cl.clone(),
            i,
            seen.clone(),
            ready.clone(),
        )));
        while !ready.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let (decided0, signs0) = counters(&api).await?;
    let cpu0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let rss_peak = Arc::new(Mutex::new(0.0f64));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pids, peak, on) = (pids.clone(), rss_peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                let r = pids.iter().map(|p| rss_mib(*p)).fold(0.0, f64::max);
                if let Ok(mut m) = peak.lock() {
                    *m = m.max(r);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let backpressure = Arc::new(AtomicUsize::new(0));
    let body = keygen(n, deadline_secs);
    let mut tasks = Vec::new();
    for _ in 0..clients.min(sessions) {
        let (next, refused, bp) = (next.clone(), refused.clone(), backpressure.clone());
        let (api, body) = (api.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= sessions {
                    return mine;
                }
                let i = k % api.len();
                let Some(cl) = api.get(i) else { return mine };
                let at = Instant::now();
                match submit(cl, &body, &bp).await {
                    Some(r) => mine.push((i, r, at)),
                    None => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut receipts: Vec<(usize, String, Instant)> = Vec::new();
    for t in tasks {
        receipts.extend(t.await.context("a client task failed")?);
    }
    let accepted = receipts.len();
    let submitted = started.elapsed();

    // Wait until every accepted session is done at party 1.
    let deadline = Instant::now() + Duration::from_secs(60 + (accepted as u64) / 5);
    let completed = loop {
        let (done, gap) = {
            let s = seen.lock().map_err(|_| anyhow!("event reader panicked"))?;
            (s.done, s.gap)
        };
        if done >= accepted {
            break true;
        }
        if gap {
            // Events were missed: count the rest from the status instead.
            c.wait_quiescent(&ids, Duration::from_secs(300)).await?;
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (done, rejected, last_done) = {
        let s = seen.lock().map_err(|_| anyhow!("event reader panicked"))?;
        (s.done, s.rejected, s.last_done)
    };
    let end = last_done.filter(|_| completed).unwrap_or_else(Instant::now);
    let (decided1, signs1) = counters(&api).await?;
    let cpu1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let elapsed = end
        .saturating_duration_since(started)
        .max(Duration::from_millis(1));
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let secs = elapsed.as_secs_f64();
    let load_secs = started.elapsed().as_secs_f64().max(1e-3);
    let cpu_load_pct = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b.saturating_sub(*a)) as f64 / TICKS_PER_SEC / load_secs * 100.0)
        .sum::<f64>()
        / pids.len().max(1) as f64;
    let decided = (decided1 - decided0).max(0.0);
    let executed = done.saturating_sub(rejected).min(accepted);
    let mut m = Measured {
        accepted,
        executed,
        rejected,
        submit_errors: refused.load(Ordering::Relaxed),
        backpressure: backpressure.load(Ordering::Relaxed),
        completed,
        elapsed,
        submitted,
        sessions_per_s: executed as f64 / secs,
        ops_per_s: decided / secs,
        sigs_per_op: if decided > 0.0 {
            (signs1 - signs0) / f64::from(n) / decided
        } else {
            0.0
        },
        rss_peak_mib: rss_peak.lock().map(|g| *g).unwrap_or(0.0),
        cpu_load_pct,
        ..Measured::default()
    };

    // Let the trailing verdicts land, then measure the idle window.
    c.wait_quiescent(&ids, Duration::from_secs(300)).await?;
    if full {
        let idle0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
        let t = Instant::now();
        tokio::time::sleep(idle).await;
        let idle_secs = t.elapsed().as_secs_f64();
        m.idle_cpu_pct = pids
            .iter()
            .zip(&idle0)
            .map(|(p, a)| {
                cpu_ticks(*p).saturating_sub(*a) as f64 / TICKS_PER_SEC / idle_secs * 100.0
            })
            .fold(0.0, f64::max);
        m.rss_idle_mib = pids.iter().map(|p| rss_mib(*p)).fold(0.0, f64::max);
    }
    for r in readers {
        r.abort();
    }
    if full {
        let (mut lat, samples) = latencies(&api, &receipts, &seen).await;
        m.samples = samples;
        m.p50 = percentile(&mut lat, 50.0);
        m.p99 = percentile(&mut lat, 99.0);
    }
    Ok(m)
}

/// Submit → executed for up to [`LATENCY_SAMPLES`] receipts, evenly spread.
async fn latencies(
    api: &[Client],
    receipts: &[(usize, String, Instant)],
    seen: &Mutex<Seen>,
) -> (Vec<Duration>, usize) {
    let step = receipts.len().div_ceil(LATENCY_SAMPLES).max(1);
    let mut out = Vec::new();
    for (party, receipt, at) in receipts.iter().step_by(step) {
        let Some(cl) = api.get(*party) else { continue };
        let Ok(v) = cl.operation(receipt).await else {
            continue;
        };
        let Some(h) = v
            .pointer("/record/status/executed/height")
            .and_then(Value::as_u64)
        else {
            continue;
        };
        let when = seen
            .lock()
            .ok()
            .and_then(|s| s.heights.get(*party).and_then(|m| m.get(&h)).copied());
        if let Some(w) = when {
            out.push(w.saturating_duration_since(*at));
        }
    }
    let n = out.len();
    (out, n)
}
