//! A fault-injecting TCP proxy for the test kit: latency, jitter, loss (as
//! stalls and connection resets) and partitions, switchable while a test
//! runs. This machine's kernel has no `netem` qdisc, so the faults are made
//! in userspace, on the byte streams between parties.
//!
//! The proxy has one listener per destination party (a [`Route`]); a party
//! dials another party's advertised address, which is that listener, and
//! the proxy connects on to the real one. The dialing party is known by the
//! source address of its connection (each party has its own address, see
//! [`crate::netns`]); a connection from an address that is no party's is
//! refused.
//!
//! Each direction of a connection is a pump: a reader stamps every chunk it
//! reads with the time it may leave (now + half the RTT ± half the jitter,
//! never before the chunk ahead of it, so bytes stay in order), and a
//! writer sends it at that time. What each fault does:
//!
//! - **Latency and jitter** ([`FaultNet::set_latency`]): as above, in both
//!   directions, so a request and its answer take the RTT.
//! - **Stalls** ([`Loss::stall_chance`]): a chunk is held [`Loss::stall`]
//!   longer, and the stream behind it with it — what a lost segment and its
//!   retransmission look like to the application.
//! - **Resets** ([`Loss::reset_chance`]): the proxy aborts the connection
//!   with an RST on both sides (zero linger), as a middlebox or a peer
//!   reboot does.
//! - **Partitions** ([`FaultNet::partition`], [`FaultNet::cut`]): a cut link
//!   is a black hole. Data already in flight is held (the sender's buffers
//!   fill and it blocks, as over a dead route), a new connection is held
//!   before the proxy connects on, and nothing is lost or reset: after
//!   [`FaultNet::heal`] the held bytes flow on, as TCP resumes after a short
//!   outage. Whether a party notices the outage is up to its own timers.
//!
//! The control handle ([`FaultNet`]) is used from the test's runtime; the
//! pumps run on the [`NsThread`](crate::netns::NsThread) the proxy was
//! started on (in the lab's hub namespace).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Chunks a pump holds in flight before it stops reading (back-pressure).
const IN_FLIGHT_CHUNKS: usize = 64;
/// Largest chunk a pump reads at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// How long a new connection over a cut link is held before it is dropped.
const HOLD_NEW_MAX: Duration = Duration::from_secs(60);

/// One proxied destination: connections to `listen` go on to `upstream`,
/// the real listener of party `to`.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The party behind it.
    pub to: u32,
    /// The advertised address (the proxy listens here).
    pub listen: SocketAddr,
    /// The party's real listener.
    pub upstream: SocketAddr,
}

/// Loss, as the application sees it over TCP. Chances are per chunk read
/// (one chunk is one `read` of up to 16 KiB, usually one consensus frame).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Loss {
    /// Chance (0..=1) that a chunk, and the stream behind it, is held
    /// [`Loss::stall`] longer.
    pub stall_chance: f64,
    /// How long a stall lasts.
    pub stall: Duration,
    /// Chance (0..=1) that the connection is reset (RST both ways) instead
    /// of forwarding the chunk.
    pub reset_chance: f64,
}

/// What the proxy has done so far (counters since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from a party.
    pub connections: u64,
    /// Connections refused: the source address is no party's.
    pub refused: u64,
    /// Bytes forwarded (both directions).
    pub bytes: u64,
    /// Chunks forwarded.
    pub chunks: u64,
    /// Chunks (or new connections) that waited at a cut link.
    pub held: u64,
    /// Chunks stalled by loss.
    pub stalls: u64,
    /// Connections reset, by loss or by [`FaultNet::reset`].
    pub resets: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
    chunks: AtomicU64,
    held: AtomicU64,
    stalls: AtomicU64,
    resets: AtomicU64,
}

#[derive(Debug, Default)]
struct Faults {
    rtt: Duration,
    jitter: Duration,
    loss: Loss,
    /// Cut links, each as (lower id, higher id).
    cut: BTreeSet<(u32, u32)>,
}

#[derive(Debug)]
struct Shared {
    faults: Mutex<Faults>,
    /// Bumped on every change of `faults`, to wake pumps held at a cut.
    changed: watch::Sender<u64>,
    /// Source address -> party.
    sources: HashMap<IpAddr, u32>,
    /// Every party the proxy knows (sources and destinations).
    parties: BTreeSet<u32>,
    rng: Mutex<u64>,
    counters: Counters,
    /// Live connections by id: their link, and how to reset them.
    live: Mutex<HashMap<u64, LiveConn>>,
    next_conn: AtomicU64,
}

/// A connection the proxy is forwarding.
#[derive(Debug)]
struct LiveConn {
    /// Its link, as (lower id, higher id).
    link: (u32, u32),
    /// Notified to reset it.
    kill: Arc<tokio::sync::Notify>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn link(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

/// What ended a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The sender closed its side; everything was forwarded.
    Eof,
    /// A socket failed (the other end reset or went away).
    Broken,
    /// Loss chose to reset the connection.
    Reset,
}

/// One draw of the faults for a chunk.
struct Draw {
    delay: Duration,
    stalled: bool,
    reset: bool,
}

impl Shared {
    fn next_random(&self) -> u64 {
        // splitmix64: plenty for fault draws, and no dependency.
        let mut s = lock(&self.rng);
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform draw in [0, 1).
    fn unit(&self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn draw(&self) -> Draw {
        let (rtt, jitter, loss) = {
            let f = lock(&self.faults);
            (f.rtt, f.jitter, f.loss)
        };
        // Half the RTT each way, jittered by ±jitter/2 around it.
        let half = rtt.as_secs_f64() / 2.0;
        let j = jitter.as_secs_f64() * (self.unit() - 0.5);
        let mut delay = Duration::from_secs_f64((half + j).max(0.0));
        let stalled = loss.stall_chance > 0.0 && self.unit() < loss.stall_chance;
        if stalled {
            delay += loss.stall;
        }
        let reset = loss.reset_chance > 0.0 && self.unit() < loss.reset_chance;
        Draw {
            delay,
            stalled,
            reset,
        }
    }

    fn is_cut(&self, a: u32, b: u32) -> bool {
        lock(&self.faults).cut.contains(&link(a, b))
    }

    /// Waits until the link between `a` and `b` is up; true if it waited.
    async fn wait_link(&self, a: u32, b: u32) -> bool {
        // Subscribe before looking, so that a heal between the look and
        // the wait is not missed.
        let mut rx = self.changed.subscribe();
        let mut held = false;
        while self.is_cut(a, b) {
            if !held {
                held = true;
                self.counters.held.fetch_add(1, Ordering::Relaxed);
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        held
    }

    fn update(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.faults));
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// The control handle of a running proxy. Cheap to clone; the proxy runs
/// until the thread it was started on stops.
#[derive(Debug, Clone)]
pub struct FaultNet {
    shared: Arc<Shared>,
}

impl FaultNet {
    /// Binds every route's listener on `thread` (so in its namespace) and
    /// starts proxying. `sources` tells which party each source address is.
    /// No faults at first: every link up, no latency, no loss.
    pub async fn start(
        thread: &crate::netns::NsThread,
        routes: &[Route],
        sources: HashMap<IpAddr, u32>,
    ) -> anyhow::Result<FaultNet> {
        let mut seed = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| anyhow::anyhow!("no randomness for the proxy's fault draws"))?;
        let parties = sources
            .values()
            .copied()
            .chain(routes.iter().map(|r| r.to))
            .collect();
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            changed: watch::channel(0).0,
            sources,
            parties,
            rng: Mutex::new(u64::from_le_bytes(seed)),
            counters: Counters::default(),
            live: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        for r in routes {
            let addr = r.listen;
            let listener = thread
                .spawn(async move { TcpListener::bind(addr).await })
                .await??;
            thread.spawn(serve(shared.clone(), listener, *r));
        }
        Ok(FaultNet { shared })
    }

    /// Sets the round-trip time added to every link (half each way) and
    /// its jitter (each direction varies uniformly by ±jitter/2).
    pub fn set_latency(&self, rtt: Duration, jitter: Duration) {
        self.shared.update(|f| {
            f.rtt = rtt;
            f.jitter = jitter;
        });
    }

    /// Sets the loss on every link ([`Loss::default`]: none).
    pub fn set_loss(&self, loss: Loss) {
        self.shared.update(|f| f.loss = loss);
    }

    /// Splits the parties into `groups`: every link between two groups is
    /// cut, links inside a group are up. A party in no group is cut off
    /// from every other. Replaces any earlier cuts.
    pub fn partition(&self, groups: &[&[u32]]) {
        let group_of = |p: u32| groups.iter().position(|g| g.contains(&p));
        let all: Vec<u32> = self.shared.parties.iter().copied().collect();
        let mut cut = BTreeSet::new();
        for (i, a) in all.iter().enumerate() {
            for b in all.iter().skip(i + 1) {
                let same = matches!((group_of(*a), group_of(*b)), (Some(x), Some(y)) if x == y);
                if !same {
                    cut.insert(link(*a, *b));
                }
            }
        }
        self.shared.update(|f| f.cut = cut);
    }

    /// Cuts party `id` off from every other party (adds to existing cuts).
    pub fn isolate(&self, id: u32) {
        let others: Vec<u32> = self
            .shared
            .parties
            .iter()
            .copied()
            .filter(|p| *p != id)
            .collect();
        self.shared.update(|f| {
            for o in others {
                f.cut.insert(link(id, o));
            }
        });
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub fn cut(&self, a: u32, b: u32) {
        self.shared.update(|f| {
            f.cut.insert(link(a, b));
        });
    }

    /// Restores the link between `a` and `b`.
    pub fn restore(&self, a: u32, b: u32) {
        self.shared.update(|f| {
            f.cut.remove(&link(a, b));
        });
    }

    /// Restores every link (latency and loss stay as set).
    pub fn heal(&self) {
        self.shared.update(|f| f.cut.clear());
    }

    /// Resets (RST both ways) every live connection between `a` and `b`
    /// now, whether the link is cut or not; returns how many. The parties
    /// redial as after any connection loss.
    pub fn reset(&self, a: u32, b: u32) -> usize {
        let live = lock(&self.shared.live);
        let mut n = 0;
        for c in live.values() {
            if c.link == link(a, b) {
                c.kill.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Whether the link between `a` and `b` is cut.
    pub fn is_cut(&self, a: u32, b: u32) -> bool {
        self.shared.is_cut(a, b)
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: get(&c.connections),
            refused: get(&c.refused),
            bytes: get(&c.bytes),
            chunks: get(&c.chunks),
            held: get(&c.held),
            stalls: get(&c.stalls),
            resets: get(&c.resets),
        }
    }
}

async fn serve(shared: Arc<Shared>, listener: TcpListener, route: Route) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match shared.sources.get(&peer.ip()).copied() {
            Some(from) => {
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(shared.clone(), inbound, from, route));
            }
            None => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                drop(inbound);
            }
        }
    }
}

async fn connection(shared: Arc<Shared>, mut a: TcpStream, from: u32, route: Route) {
    // Over a cut link a new connection goes nowhere until the link is up.
    if tokio::time::timeout(HOLD_NEW_MAX, shared.wait_link(from, route.to))
        .await
        .is_err()
    {
        return;
    }
    let Ok(mut b) = TcpStream::connect(route.upstream).await else {
        return;
    };
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let kill = Arc::new(tokio::sync::Notify::new());
    lock(&shared.live).insert(
        id,
        LiveConn {
            link: link(from, route.to),
            kill: kill.clone(),
        },
    );
    let outcome = {
        let (ar, aw) = a.split();
        let (br, bw) = b.split();
        tokio::select! {
            o = pump(&shared, from, route.to, ar, bw) => o,
            o = pump(&shared, route.to, from, br, aw) => o,
            _ = kill.notified() => Outcome::Reset,
        }
    };
    lock(&shared.live).remove(&id);
    if outcome == Outcome::Reset {
        shared.counters.resets.fetch_add(1, Ordering::Relaxed);
        // Zero linger: closing sends an RST instead of a FIN.
        let _ = a.set_zero_linger();
        let _ = b.set_zero_linger();
    }
}

/// Forwards `r` to `w` with the faults of the link `from`–`to`.
async fn pump(
    shared: &Shared,
    from: u32,
    to: u32,
    mut r: ReadHalf<'_>,
    mut w: WriteHalf<'_>,
) -> Outcome {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let reader = async move {
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) => return Outcome::Eof,
                Ok(n) => n,
                Err(_) => return Outcome::Broken,
            };
            let d = shared.draw();
            if d.reset {
                return Outcome::Reset;
            }
            if d.stalled {
                shared.counters.stalls.fetch_add(1, Ordering::Relaxed);
            }
            // Never before the chunk ahead: the stream stays in order.
            let due = (Instant::now() + d.delay).max(last_due);
            last_due = due;
            let chunk = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
            if tx.send((due, chunk)).await.is_err() {
                return Outcome::Broken;
            }
        }
        // Every `return` drops `tx`, which lets the writer drain and finish.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            shared.wait_link(from, to).await;
            if w.write_all(&chunk).await.is_err() {
                return Outcome::Broken;
            }
            shared.counters.chunks.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = w.shutdown().await;
        Outcome::Eof
    };
    tokio::pin!(writer);
    tokio::select! {
        o = reader => match o {
            // Forward what is still in flight, then end.
            Outcome::Eof => writer.await,
            other => other,
        },
        o = &mut writer => o,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::netns::NsThread;
    use std::net::Ipv4Addr;

    /// An echo server on loopback, and a proxy in front of it for party 2,
    /// with 127.0.0.2 as party 1 and 127.0.0.3 as party 3.
    async fn echo_behind_proxy(thread: &NsThread) -> (FaultNet, SocketAddr) {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let listen = crate::cluster::free_addr();
        let sources = HashMap::from([
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 1),
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), 3),
        ]);
        let route = Route {
            to: 2,
            listen,
            upstream,
        };
        let net = FaultNet::start(thread, &[route], sources).await.unwrap();
        (net, listen)
    }

    async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((src, 0))).unwrap();
        s.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn latency_delays_both_directions_and_jitter_keeps_the_bytes_in_order() {
        let thread = NsThread::enter(None).unwrap();
        let (net, addr) = echo_behind_proxy(&thread).await;
        net.set_latency(Duration::from_millis(100), Duration::from_millis(40));
        let mut c = connect_from([127, 0, 0, 2], addr).await;
        let sent: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let t = std::time::Instant::now();
        for piece in sent.chunks(40) {
            c.write_all(piece).await.unwrap();
        }
        let mut got = vec![0u8; sent.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent, "bytes were lost or reordered");
        // Each way takes at least RTT/2 - jitter/2 = 30 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );
        // The writer counts a chunk after writing it, so the count may
        // trail the bytes the client has read by a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while net.stats().bytes < 2 * sent.len() as u64 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = net.stats();
        assert_eq!(s.connections, 1);
        assert_eq!(s.bytes, 2 * sent.len() as u64);
    }

    #[tokio::test]
    async fn a_cut_link_holds_bytes_until_healed_and_strangers_are_refused() {
        let thread = NsThread::enter(None).unwrap();
        let (net, addr) = echo_behind_proxy(&thread).await;
        let mut c = connect_from([127, 0, 0, 2], addr).await;
        c.write_all(b"before").await.unwrap();
        let mut b = [0u8; 6];
        c.read_exact(&mut b).await.unwrap();
        net.partition(&[&[1], &[2, 3]]);
        assert!(net.is_cut(1, 2) && net.is_cut(1, 3) && !net.is_cut(2, 3));
        c.write_all(b"during").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(700), c.read_exact(&mut b)).await;
        assert!(waited.is_err(), "bytes crossed a cut link");
        net.heal();
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"during");
        assert!(net.stats().held >= 1);
        // An address that is no party's gets no connection through.
        let mut stranger = connect_from([127, 0, 0, 9], addr).await;
        let mut one = [0u8; 1];
        let r = stranger.read(&mut one).await;
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert_eq!(net.stats().refused, 1);
    }

    #[tokio::test]
    async fn a_reset_chance_of_one_resets_the_connection() {
        let thread = NsThread::enter(None).unwrap();
        let (net, addr) = echo_behind_proxy(&thread).await;
        net.set_loss(Loss {
            reset_chance: 1.0,
            ..Loss::default()
        });
        let mut c = connect_from([127, 0, 0, 3], addr).await;
        c.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        let r = c.read(&mut one).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
        assert_eq!(net.stats().resets, 1);
        assert_eq!(net.stats().bytes, 0);
    }

    #[tokio::test]
    async fn reset_aborts_the_live_connections_of_one_link_only() {
        let thread = NsThread::enter(None).unwrap();
        let (net, addr) = echo_behind_proxy(&thread).await;
        let mut c1 = connect_from([127, 0, 0, 2], addr).await;
        let mut c3 = connect_from([127, 0, 0, 3], addr).await;
        let mut b = [0u8; 2];
        for c in [&mut c1, &mut c3] {
            c.write_all(b"up").await.unwrap();
            c.read_exact(&mut b).await.unwrap();
        }
        assert_eq!(net.reset(1, 2), 1);
        let r = c1.read(&mut b).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
        // The other link's connection still carries bytes.
        c3.write_all(b"ok").await.unwrap();
        c3.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ok");
        assert_eq!(net.stats().resets, 1);
        assert_eq!(net.reset(1, 2), 0);
    }

    #[tokio::test]
    async fn a_stall_chance_of_one_stalls_every_chunk() {
        let thread = NsThread::enter(None).unwrap();
        let (net, addr) = echo_behind_proxy(&thread).await;
        net.set_loss(Loss {
            stall_chance: 1.0,
            stall: Duration::from_millis(150),
            reset_chance: 0.0,
        });
        let mut c = connect_from([127, 0, 0, 2], addr).await;
        let t = std::time::Instant::now();
        c.write_all(b"slow").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"slow");
        // Stalled once each way.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(net.stats().stalls >= 2);
    }

    #[test]
    fn a_partition_cuts_exactly_the_links_between_groups() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let thread = NsThread::enter(None).unwrap();
        rt.block_on(async {
            let sources = (1..=5)
                .map(|i| (IpAddr::V4(Ipv4Addr::new(127, 0, 1, i as u8)), i))
                .collect();
            let net = FaultNet::start(&thread, &[], sources).await.unwrap();
            net.partition(&[&[1, 2], &[3, 4]]);
            for (a, b, cut) in [
                (1, 2, false),
                (3, 4, false),
                (1, 3, true),
                (2, 4, true),
                (5, 1, true),
                (5, 4, true),
            ] {
                assert_eq!(net.is_cut(a, b), cut, "{a}-{b}");
                assert_eq!(net.is_cut(b, a), cut, "{b}-{a}");
            }
            net.heal();
            assert!(!net.is_cut(1, 3));
            net.isolate(2);
            assert!(net.is_cut(2, 1) && net.is_cut(2, 5) && !net.is_cut(1, 5));
            net.restore(2, 1);
            assert!(!net.is_cut(1, 2) && net.is_cut(2, 3));
        });
    }
}
