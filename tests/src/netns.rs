//! Network namespaces for system tests that cross a real network boundary.
//!
//! A [`NetLab`] is one hub namespace holding a Linux bridge, and one
//! namespace per party, each joined to the bridge by a veth pair:
//!
//! ```text
//!   party ns p1: eth0 10.77.0.1 ─veth─ vp1 ┐
//!   party ns p2: eth0 10.77.0.2 ─veth─ vp2 ┼─ br0 10.77.0.254  (hub ns)
//!   ...                                    ┘
//! ```
//!
//! Every address lives inside namespaces the lab made, so the subnet never
//! meets the machine's own networks and labs of parallel tests (each with
//! its own names) cannot see one another. Nothing is added to the root
//! namespace: the veths are created inside the hub and moved straight into
//! the party namespaces.
//!
//! Test code reaches into a namespace through an [`NsThread`]: a thread
//! that has joined the namespace with `setns(2)` and drives a current-thread
//! tokio runtime. A socket belongs to the namespace of the thread that made
//! it, so listeners and connections made by tasks spawned there live in
//! that namespace, while the rest of the test stays in the root namespace.
//!
//! Dropping a lab stops its threads and deletes its namespaces (the veths
//! and the bridge go with them), also when a test fails. A lab left behind
//! by a killed test process is deleted by the next lab made on the machine
//! (its names carry the pid of the process that made it).
//!
//! Needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and iproute2's `ip`.

use anyhow::{anyhow, bail, Context as _};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every namespace name a lab makes: `qnf<pid>-<n>-...`.
const NAME_PREFIX: &str = "qnf";

/// The bridge's address in the hub namespace; the proxies listen on it.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);

/// Party `id`'s address on the lab's bridge (`10.77.0.<id>`, 1 ≤ id ≤ 253).
pub fn party_ip(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, id.clamp(1, 253) as u8)
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process may make network namespaces (root, with `ip`).
/// Tests that need them fail with this reason when it is `Err`.
pub fn available() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!(
            "network namespaces need root (uid {uid}); run the netfault tests as root, as CI does"
        );
    }
    ip(&["-V"]).context("iproute2's `ip` is needed (apt-get install iproute2)")
}

/// One network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes namespace `name` with its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Deletes the namespaces of labs whose process is gone (a test killed
/// before its drop guards ran).
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A thread inside a network namespace, driving a current-thread tokio
/// runtime: sockets made by tasks [spawned](NsThread::spawn) on it belong to
/// that namespace. Dropping it stops the runtime (its tasks are dropped,
/// their sockets closed) and joins the thread.
#[derive(Debug)]
pub struct NsThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsThread {
    /// Starts a thread that joins namespace `ns` (`None`: stays in the
    /// namespace of the calling thread, for tests on loopback).
    pub fn enter(ns: Option<&Netns>) -> anyhow::Result<NsThread> {
        let path = ns.map(|n| format!("/var/run/netns/{}", n.name()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                let setup = || -> anyhow::Result<tokio::runtime::Runtime> {
                    if let Some(path) = &path {
                        let f = std::fs::File::open(path).with_context(|| path.clone())?;
                        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                            .with_context(|| format!("setns into {path}"))?;
                    }
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                };
                match setup() {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        let _ = rt.block_on(stop_rx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| anyhow!("the namespace thread died while starting"))??;
        Ok(NsThread {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on this thread, inside its namespace. The returned handle
    /// can be awaited from any runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Its runtime's handle.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A hub namespace with a bridge and one namespace per party, each on the
/// bridge through a veth pair (see the module doc). Dropped: threads
/// stopped, namespaces deleted.
#[derive(Debug)]
pub struct NetLab {
    // Field order is drop order: threads leave the namespaces before the
    // namespaces are deleted.
    /// A thread in the hub namespace (where the fault proxy runs).
    pub hub_thread: NsThread,
    /// One thread per party namespace, in id order.
    pub party_threads: Vec<NsThread>,
    /// The party namespaces, in id order (index 0 is party 1).
    pub parties: Vec<Netns>,
    /// The hub namespace.
    pub hub: Netns,
}

impl NetLab {
    /// Makes a lab for parties `1..=n` (n ≤ 253).
    pub fn create(n: u32) -> anyhow::Result<NetLab> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        available()?;
        if n == 0 || n > 253 {
            bail!("a lab holds 1 to 253 parties, not {n}");
        }
        sweep_stale();
        let base = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let hub = Netns::create(&format!("{base}-h"))?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["addr", "add", &format!("{HUB_IP}/24"), "dev", "br0"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut parties = Vec::new();
        for id in 1..=n {
            let ns = Netns::create(&format!("{base}-p{id}"))?;
            let hub_end = format!("vp{id}");
            hub.ip(&[
                "link",
                "add",
                &hub_end,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            hub.ip(&["link", "set", &hub_end, "master", "br0", "up"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", party_ip(id)),
                "dev",
                "eth0",
            ])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            parties.push(ns);
        }
        let hub_thread = NsThread::enter(Some(&hub))?;
        let party_threads = parties
            .iter()
            .map(|ns| NsThread::enter(Some(ns)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(NetLab {
            hub_thread,
            party_threads,
            parties,
            hub,
        })
    }

    /// Party `id`'s namespace.
    pub fn party(&self, id: u32) -> anyhow::Result<&Netns> {
        self.parties
            .get((id as usize).wrapping_sub(1))
            .ok_or_else(|| anyhow!("no party {id} in the lab"))
    }

    /// The thread inside party `id`'s namespace.
    pub fn party_thread(&self, id: u32) -> anyhow::Result<&NsThread> {
        self.party_threads
            .get((id as usize).wrapping_sub(1))
            .ok_or_else(|| anyhow!("no party {id} in the lab"))
    }
}

/// Forwards connections made to `listener` (a loopback listener of the
/// caller's namespace) to `target`, connecting from `thread`'s namespace:
/// how a test in the root namespace reaches a party's API inside its own.
/// Runs until `thread` stops.
pub fn forward(thread: &NsThread, listener: std::net::TcpListener, target: std::net::SocketAddr) {
    thread.spawn(async move {
        if listener.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn parties_reach_the_hub_over_the_bridge_and_the_lab_is_deleted_on_drop() {
        let lab = NetLab::create(2).unwrap();
        let names: Vec<String> = lab
            .parties
            .iter()
            .map(|n| n.name().to_string())
            .chain([lab.hub.name().to_string()])
            .collect();
        // A listener on the bridge address in the hub...
        let l = lab
            .hub_thread
            .spawn(async { tokio::net::TcpListener::bind((HUB_IP, 7999)).await })
            .await
            .unwrap()
            .unwrap();
        let server = lab.hub_thread.spawn(async move {
            let (mut s, from) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
            from.ip()
        });
        // ...answers party 2 from its own namespace, where it is 10.77.0.2.
        let echoed = lab
            .party_thread(2)
            .unwrap()
            .spawn(async {
                let mut c = tokio::net::TcpStream::connect((HUB_IP, 7999)).await?;
                c.write_all(b"ping").await?;
                let mut b = [0u8; 4];
                c.read_exact(&mut b).await?;
                std::io::Result::Ok(b)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echoed, b"ping");
        assert_eq!(server.await.unwrap(), std::net::IpAddr::V4(party_ip(2)));
        drop(lab);
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        for n in &names {
            assert!(!list.contains(n.as_str()), "{n} was left behind: {list}");
        }
    }
}
