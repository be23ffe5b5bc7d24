//! The peer transport on loopback: pinned mutual TLS, frames, limits, reconnects.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_firmware::types::PartyId;
use quorate_host::net::tls::TlsIdentity;
use quorate_host::net::ConnId;
use quorate_host::net::{NetConfig, NetEvent, PeerNet, PeerSpec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::Receiver;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct Cluster {
    nets: Vec<PeerNet>,
    events: Vec<Receiver<NetEvent>>,
    certs: Vec<Vec<u8>>,
    addrs: Vec<SocketAddr>,
}

async fn cluster(n: u32) -> Cluster {
    cluster_with(n, |_| {}).await
}

async fn cluster_with(n: u32, tweak: impl Fn(&mut NetConfig)) -> Cluster {
    let ids: Vec<TlsIdentity> = (1..=n)
        .map(|i| TlsIdentity::generate(PartyId(i)).unwrap())
        .collect();
    let certs: Vec<Vec<u8>> = ids.iter().map(|i| i.cert_der().to_vec()).collect();
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let mut nets = Vec::new();
    let mut events = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let peers = (0..n as usize)
            .filter(|j| *j != i)
            .map(|j| PeerSpec {
                party: PartyId(j as u32 + 1),
                addr: addrs[j].to_string(),
                cert_der: certs[j].clone(),
            })
            .collect();
        let mut cfg = NetConfig::new(PartyId(i as u32 + 1), addrs[i], peers);
        cfg.max_frame = 1024;
        cfg.backoff_max = Duration::from_millis(200);
        tweak(&mut cfg);
        let (net, rx) = PeerNet::start(cfg, id).await.unwrap();
        nets.push(net);
        events.push(rx);
    }
    Cluster {
        nets,
        events,
        certs,
        addrs,
    }
}

async fn wait_connected(net: &PeerNet, want: usize) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while net.connected().len() < want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("peers did not connect");
}

async fn next_frame(rx: &mut Receiver<NetEvent>) -> (PartyId, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rx.recv().await.expect("event stream ended") {
                NetEvent::Frame(p, _, f) => return (p, f.to_vec()),
                _ => continue,
            }
        }
    })
    .await
    .expect("no frame arrived")
}

#[tokio::test]
async fn three_parties_exchange_authenticated_frames() {
    let mut c = cluster(3).await;
    for net in &c.nets {
        wait_connected(net, 2).await;
    }
    assert_eq!(c.nets[0].broadcast(Arc::from(&b"from one"[..])), 2);
    for k in [1, 2] {
        assert_eq!(
            next_frame(&mut c.events[k]).await,
            (PartyId(1), b"from one".to_vec())
        );
    }
    assert!(c.nets[2].send(PartyId(2), Arc::from(&b"three to two"[..])));
    assert_eq!(
        next_frame(&mut c.events[1]).await,
        (PartyId(3), b"three to two".to_vec())
    );
    for n in &c.nets {
        n.shutdown();
    }
}

#[tokio::test]
async fn a_certificate_not_in_the_enrollment_is_refused() {
    let c = cluster(2).await;
    wait_connected(&c.nets[0], 1).await;
    // A stranger who knows party 1's address and party 2's certificate, but
    // not party 1's key, presents its own certificate: party 2 must refuse it.
    let stranger = TlsIdentity::generate(PartyId(1)).unwrap();
    let peers = vec![PeerSpec {
        party: PartyId(2),
        addr: c.addrs[1].to_string(),
        cert_der: c.certs[1].clone(),
    }];
    let mut cfg = NetConfig::new(PartyId(1), free_addr(), peers);
    cfg.backoff_max = Duration::from_millis(100);
    let (rogue, _rx) = PeerNet::start(cfg, stranger).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        rogue.connected().is_empty(),
        "the stranger's connection was accepted"
    );
    // The genuine party 1 is still connected.
    assert_eq!(c.nets[1].connected(), vec![PartyId(1)]);
    rogue.shutdown();
    for n in &c.nets {
        n.shutdown();
    }
}

#[tokio::test]
async fn a_dialer_refuses_a_server_that_is_not_the_party_it_dialed() {
    // Party 1 is configured with party 2's address but a certificate that is
    // not the one the server there presents.
    let c = cluster(2).await;
    let impostor_cert = TlsIdentity::generate(PartyId(2))
        .unwrap()
        .cert_der()
        .to_vec();
    let me = TlsIdentity::generate(PartyId(1)).unwrap();
    let peers = vec![PeerSpec {
        party: PartyId(2),
        addr: c.addrs[1].to_string(),
        cert_der: impostor_cert,
    }];
    let (dialer, _rx) = PeerNet::start(NetConfig::new(PartyId(1), free_addr(), peers), me)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(dialer.connected().is_empty());
    dialer.shutdown();
    for n in &c.nets {
        n.shutdown();
    }
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection_and_it_recovers() {
    let mut c = cluster(2).await;
    wait_connected(&c.nets[0], 1).await;
    assert!(c.nets[0].send(PartyId(2), Arc::from(vec![0u8; 4096])));
    let down = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(NetEvent::Down(p, _, why)) = c.events[1].recv().await {
                return (p, why);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(down.0, PartyId(1));
    assert!(down.1.contains("exceeds"), "{}", down.1);
    // Party 1 redials and frames flow again.
    wait_connected(&c.nets[0], 1).await;
    wait_connected(&c.nets[1], 1).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !c.nets[0].send(PartyId(2), Arc::from(&b"after"[..])) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        next_frame(&mut c.events[1]).await,
        (PartyId(1), b"after".to_vec())
    );
    for n in &c.nets {
        n.shutdown();
    }
}

#[tokio::test]
async fn plain_tcp_garbage_is_refused_without_harm() {
    let mut c = cluster(2).await;
    wait_connected(&c.nets[1], 1).await;
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(c.addrs[1]).await.unwrap();
        let _ = s.write_all(&[0xffu8; 300]).await;
    }
    assert!(c.nets[0].send(PartyId(2), Arc::from(&b"still here"[..])));
    assert_eq!(
        next_frame(&mut c.events[1]).await,
        (PartyId(1), b"still here".to_vec())
    );
    for n in &c.nets {
        n.shutdown();
    }
}

#[tokio::test]
async fn an_excluded_peer_is_disconnected_and_kept_out() {
    let c = cluster(2).await;
    wait_connected(&c.nets[1], 1).await;
    c.nets[1].exclude(PartyId(1), "attestation failed");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.nets[1].connected().is_empty());
    c.nets[1].readmit(PartyId(1));
    wait_connected(&c.nets[1], 1).await;
    for n in &c.nets {
        n.shutdown();
    }
}

/// Whether the server closed this client socket (EOF or reset), without
/// waiting.
fn closed_by_server(s: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_scan_holds_at_most_the_pending_caps_and_a_real_peer_still_gets_in() {
    let mut c = cluster(2).await;
    wait_connected(&c.nets[1], 1).await;
    // A scanner on the peers' own address (loopback) opens a hundred
    // connections and never starts a handshake.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(c.addrs[1]).await.unwrap());
    }
    // Party 2 keeps at most four of them (one source address), closing the
    // older ones as newer ones arrive, long before the handshake timeout.
    tokio::time::timeout(Duration::from_secs(10), async {
        while idle.iter().filter(|s| closed_by_server(s)).count() < 96 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the pending connections were not capped");
    let stats = c.nets[1].stats();
    assert!(stats.pending <= 4, "{stats:?}");
    assert!(stats.handshakes_evicted >= 96, "{stats:?}");
    assert!(idle.iter().skip(96).all(|s| !closed_by_server(s)));
    // The scan goes on, a new idle connection every 20 ms, while party 1
    // has to reconnect: it still gets in.
    let addr = c.addrs[1];
    let scan = tokio::spawn(async move {
        let mut held = std::collections::VecDeque::new();
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                held.push_back(s);
            }
            if held.len() > 8 {
                held.pop_front();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    c.nets[1].disconnect(PartyId(1), "test: reconnect under a port scan");
    tokio::time::sleep(Duration::from_millis(50)).await;
    wait_connected(&c.nets[1], 1).await;
    wait_connected(&c.nets[0], 1).await;
    assert!(c.nets[0].send(PartyId(2), Arc::from(&b"through the scan"[..])));
    assert_eq!(
        next_frame(&mut c.events[1]).await,
        (PartyId(1), b"through the scan".to_vec())
    );
    assert!(c.nets[1].stats().pending <= 4);
    scan.abort();
    for n in &c.nets {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_admitted_in_time_is_disconnected_and_an_admitted_one_stays() {
    // Party 1 gives its peer a second to be admitted (party 2 the default).
    let mut c = cluster_with(2, |cfg| {
        if cfg.me == PartyId(1) {
            cfg.admission_timeout = Duration::from_secs(1);
        }
    })
    .await;
    // Nobody admits: party 1 closes its connection after a second.
    let why = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(NetEvent::Down(_, _, why)) = c.events[0].recv().await {
                return why;
            }
        }
    })
    .await
    .expect("an unadmitted connection stayed open");
    assert!(why.contains("not admitted within 1 s"), "{why}");
    assert!(c.nets[0].stats().admission_timeouts >= 1);
    // Both sides now admit every connection that comes up: it stays.
    let mut ups = Vec::new();
    for (i, mut rx) in std::mem::take(&mut c.events).into_iter().enumerate() {
        let net = c.nets[i].clone();
        let (tx, up) = tokio::sync::mpsc::unbounded_channel::<(PartyId, ConnId)>();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let NetEvent::Up(p, conn) = ev {
                    net.admit(p, conn);
                    let _ = tx.send((p, conn));
                }
            }
        });
        ups.push(up);
    }
    let (peer, conn) = tokio::time::timeout(Duration::from_secs(10), ups[0].recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer, PartyId(2));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        c.nets[0].send_on(peer, conn, Arc::from(&b"still up"[..])),
        "the admitted connection {conn} was closed"
    );
    for n in &c.nets {
        n.shutdown();
    }
}

/// Current-thread runtime: the writer cannot drain between the sends, so
/// what the queue takes is exactly what its byte bound allows.
#[tokio::test]
async fn the_send_queue_is_bounded_in_bytes_and_drops_are_counted() {
    let mut c = cluster_with(2, |cfg| cfg.send_queue_bytes = 3000).await;
    wait_connected(&c.nets[0], 1).await;
    wait_connected(&c.nets[1], 1).await;
    let frame: Arc<[u8]> = Arc::from(vec![5u8; 1000]);
    let taken = (0..10)
        .filter(|_| c.nets[0].send(PartyId(2), frame.clone()))
        .count();
    // 1000 bytes and a 64-byte overhead each: two fit in 3000 bytes.
    assert_eq!(taken, 2);
    assert_eq!(c.nets[0].stats().send_dropped.get(&PartyId(2)), Some(&8));
    for _ in 0..2 {
        assert_eq!(next_frame(&mut c.events[1]).await.1.len(), 1000);
    }
    // Drained: the queue takes frames again.
    assert!(c.nets[0].send(PartyId(2), Arc::from(&b"again"[..])));
    assert_eq!(next_frame(&mut c.events[1]).await.1, b"again");
    for n in &c.nets {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_receive_queue_stops_reading_until_frames_are_handled() {
    let mut c = cluster_with(2, |cfg| cfg.recv_queue_bytes = 3000).await;
    wait_connected(&c.nets[0], 1).await;
    wait_connected(&c.nets[1], 1).await;
    for i in 0..10u8 {
        // Retried: the sender's own queue may be momentarily full.
        while !c.nets[0].send(PartyId(2), Arc::from(vec![i; 1000])) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Party 2's daemon has not handled anything: two frames are queued, the
    // rest wait in the socket.
    let mut held = Vec::new();
    while let Ok(ev) = c.events[1].try_recv() {
        if let NetEvent::Frame(_, _, f) = ev {
            held.push(f);
        }
    }
    assert_eq!(held.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        c.events[1].try_recv().is_err(),
        "read past the receive bound"
    );
    assert_eq!(held[0][0], 0);
    // Handling them frees the room: the rest arrive, in order.
    drop(held);
    for i in 2..10u8 {
        let (_, f) = next_frame(&mut c.events[1]).await;
        assert_eq!(f[0], i);
        // next_frame copies and drops the frame: room for the next.
    }
    for n in &c.nets {
        n.shutdown();
    }
}
