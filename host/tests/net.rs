//! The peer transport on loopback: pinned mutual TLS, frames, limits, reconnects.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_firmware::types::PartyId;
use quorate_host::net::tls::TlsIdentity;
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
                NetEvent::Frame(p, f) => return (p, f),
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
            if let Some(NetEvent::Down(p, why)) = c.events[1].recv().await {
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
