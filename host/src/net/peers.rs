//! The connection manager: one TLS connection per peer, dialed by the party
//! with the lower id and accepted by the other, redialed with backoff when it
//! drops. Inbound frames arrive as [`NetEvent`]s tagged with the peer whose
//! enrolled certificate authenticated the connection and the connection's
//! [`ConnId`].
//!
//! Bounds, so that neither strangers nor a member can exhaust this party:
//!
//! - inbound connections not yet authenticated hold one of
//!   [`NetConfig::max_pending`] slots ([`NetConfig::max_pending_per_ip`]
//!   per source address, see [`super::pending`]), each for at most
//!   [`NetConfig::handshake_timeout`];
//! - an authenticated connection whose peer the daemon has not admitted
//!   ([`PeerNet::admit`]) within [`NetConfig::admission_timeout`] is closed;
//! - each connection's send and receive queues are bounded in frames and in
//!   bytes ([`NetConfig::send_queue_bytes`], [`NetConfig::recv_queue_bytes`]):
//!   a frame that does not fit the send queue is dropped and counted, and a
//!   full receive queue stops reading from the socket (TCP flow control then
//!   holds the sender).

use super::frame::{read_body, read_frame, read_len, write_frame, FrameError};
use super::pending::PendingSlots;
use super::tls::{client_config, server_config, PeerCerts, TlsIdentity};
use quorate_firmware::types::PartyId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

/// The first frame an acceptor sends once it has accepted a dialer's
/// certificate; the dialer counts the connection as up only after it.
const WELCOME: &[u8] = b"quorate-welcome/v1";

/// What a queued frame costs beyond its bytes (its buffer and queue
/// entry), so that a flood of empty frames is bounded too.
const FRAME_OVERHEAD: usize = 64;

/// Default cap on inbound connections not yet authenticated.
pub const DEFAULT_MAX_PENDING: usize = 16;
/// Default cap on those from one source address.
pub const DEFAULT_MAX_PENDING_PER_IP: usize = 4;
/// Default time an authenticated peer has to be admitted.
pub const DEFAULT_ADMISSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Default byte bound of each connection's send queue and receive queue.
pub const DEFAULT_QUEUE_BYTES: usize = 32 * 1024 * 1024;

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
    /// Bytes queued for sending per connection before new frames are
    /// dropped (each frame counted as its length plus a small overhead);
    /// never less than one largest frame.
    pub send_queue_bytes: usize,
    /// Bytes received per connection and not yet handled by the daemon
    /// before reading from the socket pauses; never less than one largest
    /// frame.
    pub recv_queue_bytes: usize,
    /// First redial delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest redial delay.
    pub backoff_max: Duration,
    /// Longest the TLS handshake and welcome of one connection may take;
    /// an inbound connection holds a pending slot at most this long.
    pub handshake_timeout: Duration,
    /// Inbound connections not yet authenticated, at most (a newcomer
    /// evicts an older one beyond it, see [`super::pending`]).
    pub max_pending: usize,
    /// ...of which at most this many from one source address.
    pub max_pending_per_ip: usize,
    /// An authenticated connection whose peer is not admitted
    /// ([`PeerNet::admit`]) within this long is closed.
    pub admission_timeout: Duration,
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
            send_queue_bytes: DEFAULT_QUEUE_BYTES,
            recv_queue_bytes: DEFAULT_QUEUE_BYTES,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_per_ip: DEFAULT_MAX_PENDING_PER_IP,
            admission_timeout: DEFAULT_ADMISSION_TIMEOUT,
        }
    }

    /// A queue's byte bound: as configured, but room for one largest frame.
    fn queue_bytes(&self, configured: usize) -> usize {
        configured
            .max(frame_cost(self.max_frame) as usize)
            .min(Semaphore::MAX_PERMITS)
    }
}

/// What a frame of `len` bytes costs in a queue's byte budget.
fn frame_cost(len: usize) -> u32 {
    u32::try_from(len.saturating_add(FRAME_OVERHEAD)).unwrap_or(u32::MAX)
}

/// Which connection of a peer an event is about: connections are numbered
/// in the order they come up, so a late event of a replaced connection can
/// be told from the current one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A frame received from a peer. Until it is dropped it holds its share of
/// the connection's receive budget ([`NetConfig::recv_queue_bytes`]).
#[derive(Debug)]
pub struct Inbound {
    bytes: Vec<u8>,
    _budget: OwnedSemaphorePermit,
}

impl std::ops::Deref for Inbound {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// What the transport reports to the daemon. A connection's `Up` comes
/// before any of its frames.
#[derive(Debug)]
pub enum NetEvent {
    /// An authenticated connection to this peer is up (replacing any
    /// earlier one).
    Up(PartyId, ConnId),
    /// This connection to this peer closed, with the reason.
    Down(PartyId, ConnId, String),
    /// A frame from this peer on this connection.
    Frame(PartyId, ConnId, Inbound),
}

/// Counters of the bounds at work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Inbound connections not yet authenticated, now.
    pub pending: usize,
    /// Unauthenticated connections closed to make room for newer ones.
    pub handshakes_evicted: u64,
    /// Authenticated connections closed because their peer was not
    /// admitted within [`NetConfig::admission_timeout`].
    pub admission_timeouts: u64,
    /// Frames not queued because the peer's send queue was full (frames or
    /// bytes), per peer.
    pub send_dropped: BTreeMap<PartyId, u64>,
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

type Outbound = (Arc<[u8]>, OwnedSemaphorePermit);

struct Conn {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    send_budget: Arc<Semaphore>,
    admitted: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    closed: Arc<Notify>,
}

struct Inner {
    cfg: NetConfig,
    identity: TlsIdentity,
    peers: Arc<PeerCerts>,
    conns: Mutex<HashMap<PartyId, Conn>>,
    excluded: Mutex<HashSet<PartyId>>,
    /// Inbound handshakes in progress; dropping a slot's sender ends its
    /// handshake.
    pending: Mutex<PendingSlots<oneshot::Sender<()>>>,
    admission_timeouts: AtomicU64,
    send_dropped: Mutex<BTreeMap<PartyId, u64>>,
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
        let pending = PendingSlots::new(cfg.max_pending, cfg.max_pending_per_ip);
        let inner = Arc::new(Inner {
            cfg,
            identity,
            peers,
            conns: Mutex::new(HashMap::new()),
            excluded: Mutex::new(HashSet::new()),
            pending: Mutex::new(pending),
            admission_timeouts: AtomicU64::new(0),
            send_dropped: Mutex::new(BTreeMap::new()),
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
            Some(c) => queue(&self.inner, to, c, frame),
            None => false,
        }
    }

    /// As [`PeerNet::send`], only if `conn` is still the peer's connection:
    /// for answers that belong to the connection that asked.
    pub fn send_on(&self, to: PartyId, conn: ConnId, frame: Arc<[u8]>) -> bool {
        let conns = lock(&self.inner.conns);
        match conns.get(&to) {
            Some(c) if c.id == conn.0 => queue(&self.inner, to, c, frame),
            _ => false,
        }
    }

    /// Queues a frame for every connected peer; returns how many took it.
    pub fn broadcast(&self, frame: Arc<[u8]>) -> usize {
        let conns = lock(&self.inner.conns);
        conns
            .iter()
            .filter(|(p, c)| queue(&self.inner, **p, c, frame.clone()))
            .count()
    }

    /// The peers with a live connection.
    pub fn connected(&self) -> Vec<PartyId> {
        let mut v: Vec<_> = lock(&self.inner.conns).keys().copied().collect();
        v.sort();
        v
    }

    /// The daemon admitted `peer` on connection `conn`: it is no longer
    /// closed at [`NetConfig::admission_timeout`]. False if `conn` is not
    /// the peer's connection any more.
    pub fn admit(&self, peer: PartyId, conn: ConnId) -> bool {
        match lock(&self.inner.conns).get(&peer) {
            Some(c) if c.id == conn.0 => {
                c.admitted.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
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

    /// Closes connection `conn` of `peer` if it is still the current one.
    pub fn disconnect_conn(&self, peer: PartyId, conn: ConnId, reason: &str) {
        close(&self.inner, peer, Some(conn.0), reason);
    }

    /// The counters of the transport's bounds.
    pub fn stats(&self) -> NetStats {
        let (pending, handshakes_evicted) = {
            let p = lock(&self.inner.pending);
            (p.len(), p.evicted())
        };
        NetStats {
            pending,
            handshakes_evicted,
            admission_timeouts: self.inner.admission_timeouts.load(Ordering::Relaxed),
            send_dropped: lock(&self.inner.send_dropped).clone(),
        }
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
        // Ends every handshake in progress.
        *lock(&self.inner.pending) = PendingSlots::new(
            self.inner.cfg.max_pending,
            self.inner.cfg.max_pending_per_ip,
        );
    }
}

/// Queues `frame` on `c` if its send queue has room in frames and bytes;
/// counts a drop otherwise.
fn queue(inner: &Inner, to: PartyId, c: &Conn, frame: Arc<[u8]>) -> bool {
    let queued = c
        .send_budget
        .clone()
        .try_acquire_many_owned(frame_cost(frame.len()))
        .ok()
        .is_some_and(|permit| c.tx.try_send((frame, permit)).is_ok());
    if !queued {
        let mut d = lock(&inner.send_dropped);
        let n = d.entry(to).or_insert(0);
        *n = n.saturating_add(1);
    }
    queued
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
        let ev = NetEvent::Down(peer, ConnId(c.id), reason.to_string());
        // Delivered even when the queue is momentarily full (the daemon
        // ignores a Down of a connection already replaced).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let events = inner.events.clone();
                rt.spawn(async move {
                    let _ = events.send(ev).await;
                });
            }
            Err(_) => {
                let _ = inner.events.try_send(ev);
            }
        }
    }
}

/// Registers an authenticated stream for `peer`, replacing any older one.
fn register<S>(inner: &Arc<Inner>, peer: PartyId, stream: S) -> Arc<Notify>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = ConnId(id);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Outbound>(inner.cfg.queue_len.max(1));
    let send_budget = Arc::new(Semaphore::new(
        inner.cfg.queue_bytes(inner.cfg.send_queue_bytes),
    ));
    let recv_budget = Arc::new(Semaphore::new(
        inner.cfg.queue_bytes(inner.cfg.recv_queue_bytes),
    ));
    let admitted = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(Notify::new());
    // The reader announces the connection only once it is registered, so
    // the daemon's first send reaches this connection, and its Up precedes
    // its frames.
    let (registered_tx, registered) = oneshot::channel::<()>();
    let writer = {
        let inner = inner.clone();
        tokio::spawn(async move {
            while let Some((frame, permit)) = rx.recv().await {
                if let Err(e) = write_frame(&mut wr, &frame).await {
                    close(&inner, peer, Some(id), &format!("write failed: {e}"));
                    return;
                }
                drop(permit);
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
            if registered.await.is_err()
                || inner.events.send(NetEvent::Up(peer, conn)).await.is_err()
            {
                return;
            }
            loop {
                let len = match read_len(&mut rd, inner.cfg.max_frame).await {
                    Ok(len) => len,
                    Err(e) => {
                        if matches!(e, FrameError::TooLarge { .. }) {
                            warn!(peer = %peer, error = %e, "peer sent an oversized frame; closing");
                        }
                        close(&inner, peer, Some(id), &e.to_string());
                        return;
                    }
                };
                // Room for the frame before reading it: a full queue stops
                // reading (never fails: the budget is never closed, and it
                // holds a largest frame).
                let Ok(permit) = recv_budget
                    .clone()
                    .acquire_many_owned(frame_cost(len))
                    .await
                else {
                    return;
                };
                let bytes = match read_body(&mut rd, len).await {
                    Ok(b) => b,
                    Err(e) => {
                        close(&inner, peer, Some(id), &e.to_string());
                        return;
                    }
                };
                let frame = Inbound {
                    bytes,
                    _budget: permit,
                };
                if inner
                    .events
                    .send(NetEvent::Frame(peer, conn, frame))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let watchdog = {
        let inner = inner.clone();
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let limit = inner.cfg.admission_timeout;
            tokio::time::sleep(limit).await;
            if !admitted.load(Ordering::Relaxed) {
                inner.admission_timeouts.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %peer, secs = limit.as_secs(), "peer not admitted in time; closing its connection");
                close(
                    &inner,
                    peer,
                    Some(id),
                    &format!("not admitted within {} s", limit.as_secs()),
                );
            }
        })
    };
    let old = lock(&inner.conns).insert(
        peer,
        Conn {
            id,
            tx,
            send_budget,
            admitted,
            tasks: vec![writer, reader, watchdog],
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
    let _ = registered_tx.send(());
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
        // A pending slot first: the newcomer always gets one, an older
        // pending connection may lose its own (dropping its sender ends it).
        let (evict_tx, evicted) = oneshot::channel::<()>();
        let (slot, gone) = lock(&inner.pending).admit(addr.ip(), evict_tx);
        if !gone.is_empty() {
            debug!(%addr, evicted = gone.len(), "pending connection cap reached; closed the oldest");
        }
        drop(gone);
        let inner = inner.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = SlotGuard {
                inner: inner.clone(),
                id: slot,
            };
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(
                inner.cfg.handshake_timeout,
                authenticate(&inner, &acceptor, tcp, addr),
            );
            tokio::select! {
                biased;
                _ = evicted => debug!(%addr, "pending connection evicted"),
                res = handshake => match res {
                    Ok(Some((p, tls))) => {
                        info!(%addr, peer = %p, "peer connected (inbound)");
                        register(&inner, p, tls);
                    }
                    Ok(None) => {}
                    Err(_) => warn!(%addr, "refused a peer connection: TLS handshake timed out"),
                },
            }
        });
    }
}

/// Frees a pending slot when its handshake task ends, however it ends.
struct SlotGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.inner.pending).release(self.id);
    }
}

/// The TLS handshake and welcome of an inbound connection: the peer it
/// authenticated, or `None` (logged) when it is refused.
async fn authenticate(
    inner: &Arc<Inner>,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Option<(PartyId, tokio_rustls::server::TlsStream<TcpStream>)> {
    let mut tls = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            warn!(%addr, error = %e, "refused a peer connection: TLS handshake failed");
            return None;
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
            warn!(%addr, "refused a connection presenting our own certificate");
            None
        }
        Some(p) if is_excluded(inner, p) => {
            warn!(%addr, peer = %p, "refused a connection from an excluded peer");
            None
        }
        Some(p) => {
            // Tell the dialer it was accepted: in TLS 1.3 a client
            // finishes its handshake before the server has checked
            // the client's certificate, so only this frame proves it.
            let welcome = async {
                write_frame(&mut tls, WELCOME).await?;
                tokio::io::AsyncWriteExt::flush(&mut tls).await?;
                Ok::<_, FrameError>(())
            };
            match welcome.await {
                Ok(()) => Some((p, tls)),
                Err(_) => {
                    warn!(%addr, peer = %p, "peer left before it was welcomed");
                    None
                }
            }
        }
        None => {
            warn!(%addr, "refused a connection with no enrolled certificate");
            None
        }
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
