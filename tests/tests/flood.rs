//! System tests of the peer port's bounds (issue 15, points 4 and 8): a
//! member flooding attestation challenges, and strangers holding
//! connections that never authenticate. Real daemons, each with its own
//! swtpm, on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_firmware::types::PartyId;
use quorate_host::daemon::admission::PeerFrame;
use quorate_host::net::{tls::TlsIdentity, NetConfig, PeerNet};
use quorate_tests::cluster::TestCluster;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Submits `n` key generations among `participants` to party `id`.
async fn submit(c: &TestCluster, id: u32, participants: &[u32], n: usize) -> Vec<String> {
    let op = json!({"type": "create_session", "session": {"kind": "keygen",
        "participants": participants, "threshold": 2, "scheme": "frost-secp256k1",
        "deadline_secs": 600}});
    let mut out = Vec::new();
    for k in 0..n {
        let r = c.client(id).unwrap().submit_json(&op).await;
        out.push(
            r.unwrap_or_else(|e| panic!("submit {k} to party {id}: {e}"))
                .id,
        );
    }
    out
}

/// The value of the sample `series` in the metrics `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn metric(c: &TestCluster, id: u32, series: &str) -> f64 {
    let text = c.client(id).unwrap().metrics().await.unwrap();
    sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Party `id`'s TPM signatures so far: (count, total seconds).
async fn signatures(c: &TestCluster, id: u32) -> (f64, f64) {
    (
        metric(c, id, "quorate_tpm_sign_latency_seconds_count").await,
        metric(c, id, "quorate_tpm_sign_latency_seconds_sum").await,
    )
}

/// Mean seconds per signature between two readings of [`signatures`].
fn mean(from: (f64, f64), to: (f64, f64)) -> f64 {
    let n = to.0 - from.0;
    assert!(n > 0.0, "no signatures between {from:?} and {to:?}");
    (to.1 - from.1) / n
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A member that never attests floods the others with challenges: they
/// answer one per connection, keep deciding, and their vote signatures do
/// not queue behind evidence (mean signing time under 10× the mean of the
/// same cluster without the flood, or a quarter second on a loaded
/// machine: an unbounded evidence queue puts it at seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_challenges_neither_stalls_consensus_nor_slows_its_votes() {
    let mut c = TestCluster::provision_attested(4, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=4 {
        c.wait_api(id, Duration::from_secs(60)).await.unwrap();
    }
    wait_for(
        "every party attested",
        Duration::from_secs(90),
        async || {
            c.statuses(&[1, 2, 3, 4])
                .await
                .is_ok_and(|s| s.iter().all(|s| s.peers_attested == 3))
        },
    )
    .await;

    // Baseline: work with every party honest.
    let before = signatures(&c, 1).await;
    submit(&c, 1, &[1, 2, 3], 4).await;
    c.wait_quiescent(&[1, 2, 3, 4], Duration::from_secs(120))
        .await
        .unwrap();
    let baseline = mean(before, signatures(&c, 1).await);

    // Party 4's daemon stops; something holding its TLS key takes its place
    // and floods every party that connects with challenges.
    c.stop(4).unwrap();
    let p4 = &c.parties[3];
    let identity = TlsIdentity::load(&p4.data_dir).unwrap();
    let specs = c
        .parties
        .iter()
        .filter(|p| p.id != 4)
        .map(|p| {
            let e =
                quorate_host::init::Enrollment::load(&p.data_dir.join("enrollment.json")).unwrap();
            quorate_host::net::PeerSpec {
                party: PartyId(p.id),
                addr: p.peer.to_string(),
                cert_der: hex::decode(e.tls_cert).unwrap(),
            }
        })
        .collect();
    let mut cfg = NetConfig::new(PartyId(4), p4.peer, specs);
    cfg.admission_timeout = Duration::from_secs(3600);
    let (rogue, mut rx) = PeerNet::start(cfg, identity).await.unwrap();
    // It reads what it is sent (never answering a challenge).
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let flooder = rogue.clone();
    let flood = tokio::spawn(async move {
        let mut k = 0u64;
        loop {
            let mut nonce = vec![0u8; 32];
            nonce[..8].copy_from_slice(&k.to_be_bytes());
            flooder.broadcast(Arc::from(PeerFrame::Challenge(nonce).encode()));
            k += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    for id in 1..=3 {
        wait_for(
            "the flood to reach every party",
            Duration::from_secs(60),
            async || {
                let text = c.client(id).unwrap().metrics().await.unwrap();
                sample(&text, "quorate_challenges_dropped_total{peer=\"4\"}")
                    .is_some_and(|n| n >= 100.0)
            },
        )
        .await;
    }

    // The other three keep deciding, with votes signed as fast as before.
    let height = c.client(1).unwrap().status().await.unwrap().height;
    let during = signatures(&c, 1).await;
    let receipts = submit(&c, 1, &[1, 2, 3], 4).await;
    let s = c
        .wait_quiescent(&[1, 2, 3], Duration::from_secs(120))
        .await
        .unwrap();
    assert!(s[0].height > height, "no height decided during the flood");
    let flooded = mean(during, signatures(&c, 1).await);
    let dropped = metric(&c, 1, "quorate_challenges_dropped_total{peer=\"4\"}").await;
    flood.abort();
    drain.abort();
    rogue.shutdown();
    for r in &receipts {
        let v = c.client(1).unwrap().operation(r).await.unwrap();
        assert_eq!(v["decided"], true, "{v}");
    }
    for id in 1..=3 {
        assert!(c.running(id), "party {id} died:\n{}", c.log(id));
        assert_eq!(
            metric(&c, id, "quorate_peer_attested{peer=\"4\"}").await,
            0.0,
            "the flooder was admitted"
        );
    }
    let bound = (10.0 * baseline).max(0.25);
    println!(
        "mean TPM signature: {:.1} ms without the flood, {:.1} ms during it ({dropped} challenges dropped at party 1)",
        baseline * 1e3,
        flooded * 1e3
    );
    assert!(
        flooded <= bound,
        "signatures slowed from {baseline:.4} s to {flooded:.4} s under the challenge flood"
    );
}

/// Strangers open connections to the peer ports and never finish a TLS
/// handshake, from eight addresses and from the peers' own: each daemon
/// holds at most its caps of them, a restarted party gets back in, and the
/// cluster keeps deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_scan_leaves_the_cluster_deciding_and_a_restarted_peer_gets_in() {
    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let first = submit(&c, 1, &[1, 2, 3], 2).await;
    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(120))
        .await
        .unwrap();

    // Parties 2 and 3 accept party 1's connections; scan their ports.
    let targets = [c.parties[1].peer, c.parties[2].peer];
    let scan = tokio::spawn(async move {
        let mut held = std::collections::VecDeque::new();
        let mut k = 0u32;
        loop {
            for t in targets {
                // Eight other loopback addresses at full speed, the peers'
                // own address one in eight times; some send half a TLS
                // record header and stall.
                let src = if k % 8 == 0 { 1 } else { 2 + (k % 8) as u8 };
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                if sock
                    .bind(std::net::SocketAddr::from(([127, 0, 0, src], 0)))
                    .is_err()
                {
                    continue;
                }
                if let Ok(Ok(mut s)) =
                    tokio::time::timeout(Duration::from_secs(1), sock.connect(t)).await
                {
                    if k % 3 == 0 {
                        use tokio::io::AsyncWriteExt;
                        let _ = s.write_all(&[0x16, 0x03, 0x01]).await;
                    }
                    held.push_back(s);
                }
                if held.len() > 200 {
                    held.pop_front();
                }
                k = k.wrapping_add(1);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    for id in [2, 3] {
        wait_for(
            "the scan to fill the caps",
            Duration::from_secs(60),
            async || {
                let text = c.client(id).unwrap().metrics().await.unwrap();
                sample(&text, "quorate_peer_handshakes_evicted_total").is_some_and(|n| n >= 50.0)
            },
        )
        .await;
    }

    // Party 1 restarts during the scan and dials both again.
    c.stop(1).unwrap();
    c.start(1).unwrap();
    c.wait_api(1, Duration::from_secs(30)).await.unwrap();
    wait_for(
        "party 1 to reconnect",
        Duration::from_secs(90),
        async || {
            c.client(1)
                .unwrap()
                .status()
                .await
                .is_ok_and(|s| s.peers_connected == 2)
        },
    )
    .await;
    let second = submit(&c, 1, &[1, 2, 3], 2).await;
    let third = submit(&c, 3, &[1, 2, 3], 2).await;
    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(120))
        .await
        .unwrap();
    for id in [2, 3] {
        let pending = metric(&c, id, "quorate_peer_handshakes_pending").await;
        assert!(
            pending <= 16.0,
            "party {id} holds {pending} pending connections"
        );
    }
    scan.abort();
    for (id, rs) in [(1, &first), (1, &second), (3, &third)] {
        for r in rs {
            let v = c.client(id).unwrap().operation(r).await.unwrap();
            assert_eq!(v["decided"], true, "{v}");
        }
    }
}
