//! The connection manager: one TLS connection per peer, dialed by the party
//! with the lower id and accepted by the other, redialed with backoff when it
//! drops. Inbound frames arrive as [`NetEvent`]s tagged with the peer whose
//! enrolled certificate authenticated the connection.

use super::frame::{read_frame, write_frame, FrameError};
use super::tls::{client_config, server_config, PeerCerts, TlsIdentity};
use quorate_firmware::types::PartyId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

/// The first frame an acceptor sends once it has accepted a dialer's
/// certificate; the dialer counts the connection as up only after it.
const WELCOME: &[u8] = b"quorate-welcome/v1";

/// A peer as the configuration lists it.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// The peer's party id.
    pub party: PartyId,
    /// Where it listens (host:port).
    pub addr: String,
    /// Its enrolled TLS certificate (DER).
    pub cert_der: Vec<u8>,
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// This party.
    pub me: PartyId,
    /// Address to listen on for peers.
    pub listen: SocketAddr,
    /// Every other party.
    pub peers: Vec<PeerSpec>,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Frames queued per peer before new ones are dropped.
    pub queue_len: usize,
    /// First redial delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest redial delay.
    pub backoff_max: Duration,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl NetConfig {
    /// Settings with sensible defaults for the given party, address and peers.
    pub fn new(me: PartyId, listen: SocketAddr, peers: Vec<PeerSpec>) -> Self {
        NetConfig {
            me,
            listen,
            peers,
            max_frame: super::frame::DEFAULT_MAX_FRAME,
            queue_len: 4096,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What the transport reports to the daemon.
#[derive(Debug)]
pub enum NetEvent {
    /// An authenticated connection to this peer is up.
    Up(PartyId),
    /// The connection to this peer closed, with the reason.
    Down(PartyId, String),
    /// A frame from this peer.
    Frame(PartyId, Vec<u8>),
}

/// Errors starting the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<Arc<[u8]>>,
    tasks: Vec<JoinHandle<()>>,
    closed: Arc<Notify>,
}

struct Inner {
    cfg: NetConfig,
    identity: TlsIdentity,
    peers: Arc<PeerCerts>,
    conns: Mutex<HashMap<PartyId, Conn>>,
    excluded: Mutex<HashSet<PartyId>>,
    events: mpsc::Sender<NetEvent>,
    next_id: AtomicU64,
}

/// Handle to the running transport. Dropping every handle does not stop the
/// background tasks; call [`PeerNet::shutdown`].
#[derive(Clone)]
pub struct PeerNet {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    background: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked while holding it; the
    // maps stay consistent (every update is a single insert or remove).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerNet {
    /// Binds the listener, starts dialing the peers this party dials, and
    /// returns the handle with the stream of events.
    pub async fn start(
        cfg: NetConfig,
        identity: TlsIdentity,
    ) -> Result<(PeerNet, mpsc::Receiver<NetEvent>), NetError> {
        let mut certs = PeerCerts::new();
        for p in &cfg.peers {
            certs.insert(p.party, p.cert_der.clone());
        }
        let peers = Arc::new(certs);
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| NetError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| NetError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let acceptor = TlsAcceptor::from(server_config(&identity, peers.clone())?);
        let (events, rx) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            cfg,
            identity,
            peers,
            conns: Mutex::new(HashMap::new()),
            excluded: Mutex::new(HashSet::new()),
            events,
            next_id: AtomicU64::new(1),
        });
        let mut background = vec![tokio::spawn(accept_loop(inner.clone(), listener, acceptor))];
        for peer in inner.cfg.peers.iter().filter(|p| p.party > inner.cfg.me) {
            background.push(tokio::spawn(dial_loop(inner.clone(), peer.clone())?));
        }
        Ok((
            PeerNet {
                inner,
                local_addr,
                background: Arc::new(Mutex::new(background)),
            },
            rx,
        ))
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a frame for one peer. Returns false if the peer is not
    /// connected or its queue is full (the frame is dropped; consensus
    /// retransmits what matters).
    pub fn send(&self, to: PartyId, frame: Arc<[u8]>) -> bool {
        let conns = lock(&self.inner.conns);
        match conns.get(&to) {
            Some(c) => c.tx.try_send(frame).is_ok(),
            None => false,
        }
    }

    /// Queues a frame for every connected peer; returns how many took it.
    pub fn broadcast(&self, frame: Arc<[u8]>) -> usize {
        let conns = lock(&self.inner.conns);
        conns
            .values()
            .filter(|c| c.tx.try_send(frame.clone()).is_ok())
            .count()
    }

    /// The peers with a live connection.
    pub fn connected(&self) -> Vec<PartyId> {
        let mut v: Vec<_> = lock(&self.inner.conns).keys().copied().collect();
        v.sort();
        v
    }

    /// Closes the connection to `peer` and refuses it (inbound and outbound)
    /// until [`PeerNet::readmit`]. Used when a peer's attestation fails.
    pub fn exclude(&self, peer: PartyId, reason: &str) {
        lock(&self.inner.excluded).insert(peer);
        close(&self.inner, peer, None, reason);
    }

    /// Allows an excluded peer to connect again.
    pub fn readmit(&self, peer: PartyId) {
        lock(&self.inner.excluded).remove(&peer);
    }

    /// Closes `peer`'s current connection (it may reconnect).
    pub fn disconnect(&self, peer: PartyId, reason: &str) {
        close(&self.inner, peer, None, reason);
    }

    /// Stops listening, dialing and every connection.
    pub fn shutdown(&self) {
        for t in lock(&self.background).drain(..) {
            t.abort();
        }
        let parties: Vec<_> = lock(&self.inner.conns).keys().copied().collect();
        for p in parties {
            close(&self.inner, p, None, "shutting down");
        }
    }
}

fn is_excluded(inner: &Inner, p: PartyId) -> bool {
    lock(&inner.excluded).contains(&p)
}

/// Removes the connection of `peer` (only connection `only_id` if given).
fn close(inner: &Inner, peer: PartyId, only_id: Option<u64>, reason: &str) {
    let removed = {
        let mut conns = lock(&inner.conns);
        match conns.get(&peer) {
            Some(c) if only_id.is_none_or(|id| id == c.id) => conns.remove(&peer),
            _ => None,
        }
    };
    if let Some(c) = removed {
        for t in &c.tasks {
            t.abort();
        }
        c.closed.notify_waiters();
        c.closed.notify_one();
        info!(peer = %peer, reason, "peer connection closed");
        let _ = inner
            .events
            .try_send(NetEvent::Down(peer, reason.to_string()));
    }
}

/// Registers an authenticated stream for `peer`, replacing any older one.
fn register<S>(inner: &Arc<Inner>, peer: PartyId, stream: S) -> Arc<Notify>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(inner.cfg.queue_len);
    let closed = Arc::new(Notify::new());
    let writer = {
        let inner = inner.clone();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if let Err(e) = write_frame(&mut wr, &frame).await {
                    close(&inner, peer, Some(id), &format!("write failed: {e}"));
                    return;
                }
                if rx.is_empty() {
                    if let Err(e) = tokio::io::AsyncWriteExt::flush(&mut wr).await {
                        close(&inner, peer, Some(id), &format!("write failed: {e}"));
                        return;
                    }
                }
            }
        })
    };
    let reader = {
        let inner = inner.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut rd, inner.cfg.max_frame).await {
                    Ok(frame) => {
                        if inner
                            .events
                            .send(NetEvent::Frame(peer, frame))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        if matches!(e, FrameError::TooLarge { .. }) {
                            warn!(peer = %peer, error = %e, "peer sent an oversized frame; closing");
                        }
                        close(&inner, peer, Some(id), &e.to_string());
                        return;
                    }
                }
            }
        })
    };
    let old = lock(&inner.conns).insert(
        peer,
        Conn {
            id,
            tx,
            tasks: vec![writer, reader],
            closed: closed.clone(),
        },
    );
    if let Some(old) = old {
        for t in &old.tasks {
            t.abort();
        }
        old.closed.notify_one();
        debug!(peer = %peer, "replaced an older connection");
    }
    let _ = inner.events.try_send(NetEvent::Up(peer));
    closed
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let inner = inner.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(inner.cfg.handshake_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(%addr, error = %e, "refused a peer connection: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    warn!(%addr, "refused a peer connection: TLS handshake timed out");
                    return;
                }
            };
            let party = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| inner.peers.party_of(c.as_ref()));
            match party {
                Some(p) if p == inner.cfg.me => {
                    warn!(%addr, "refused a connection presenting our own certificate")
                }
                Some(p) if is_excluded(&inner, p) => {
                    warn!(%addr, peer = %p, "refused a connection from an excluded peer")
                }
                Some(p) => {
                    // Tell the dialer it was accepted: in TLS 1.3 a client
                    // finishes its handshake before the server has checked
                    // the client's certificate, so only this frame proves it.
                    let mut tls = tls;
                    let welcome = async {
                        write_frame(&mut tls, WELCOME).await?;
                        tokio::io::AsyncWriteExt::flush(&mut tls).await?;
                        Ok::<_, FrameError>(())
                    };
                    match tokio::time::timeout(inner.cfg.handshake_timeout, welcome).await {
                        Ok(Ok(())) => {
                            info!(%addr, peer = %p, "peer connected (inbound)");
                            register(&inner, p, tls);
                        }
                        _ => warn!(%addr, peer = %p, "peer left before it was welcomed"),
                    }
                }
                None => warn!(%addr, "refused a connection with no enrolled certificate"),
            }
        });
    }
}

fn dial_loop(
    inner: Arc<Inner>,
    peer: PeerSpec,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, NetError> {
    let connector = TlsConnector::from(client_config(&inner.identity, peer.cert_der.clone())?);
    Ok(async move {
        let mut backoff = inner.cfg.backoff_min;
        loop {
            if is_excluded(&inner, peer.party) {
                tokio::time::sleep(inner.cfg.backoff_max).await;
                continue;
            }
            match dial(&inner, &connector, &peer).await {
                Ok(closed) => {
                    backoff = inner.cfg.backoff_min;
                    closed.notified().await;
                }
                Err(e) => {
                    debug!(peer = %peer.party, addr = %peer.addr, error = %e, "dial failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(inner.cfg.backoff_max);
                }
            }
        }
    })
}

async fn dial(
    inner: &Arc<Inner>,
    connector: &TlsConnector,
    peer: &PeerSpec,
) -> Result<Arc<Notify>, String> {
    let fut = async {
        let tcp = TcpStream::connect(&peer.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name =
            rustls::pki_types::ServerName::try_from("quorate-peer").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        // The server accepted our certificate only if it welcomes us.
        match read_frame(&mut tls, WELCOME.len()).await {
            Ok(f) if f == WELCOME => Ok(tls),
            Ok(_) => Err("the peer sent something other than its welcome".to_string()),
            Err(e) => Err(format!("the peer did not accept us: {e}")),
        }
    };
    let tls = tokio::time::timeout(inner.cfg.handshake_timeout, fut)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())??;
    info!(peer = %peer.party, addr = %peer.addr, "peer connected (outbound)");
    Ok(register(inner, peer.party, tls))
}
