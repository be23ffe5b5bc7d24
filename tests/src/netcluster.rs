//! A test cluster across real network separation: each party's daemon (and
//! the swtpm it spawns) runs in its own network namespace of a
//! [`NetLab`], and every peer link goes through the fault-injecting proxy
//! ([`FaultNet`]) in the lab's hub namespace.
//!
//! Addresses, per party `i`:
//!
//! | what                         | where                       | namespace |
//! |------------------------------|-----------------------------|-----------|
//! | peer listener (`party.listen`) | `10.77.0.i:7000`          | party i   |
//! | advertised `address` (proxy) | `10.77.0.254:(7000 + i)`    | hub       |
//! | API (`api_listen`)           | `127.0.0.1:8080`            | party i   |
//! | API as the test reaches it   | a free `127.0.0.1` port     | root      |
//! | swtpm (spawned by the daemon)| a free `127.0.0.1` port     | party i   |
//!
//! A party dials another's advertised address, so every consensus byte
//! crosses the bridge twice and the proxy once; the proxy knows the dialer
//! by its source address. The test reaches each API through a loopback
//! forwarder whose far side connects from inside the party's namespace.
//! No address outside the lab and loopback is ever used.
//!
//! [`NetCluster`] dereferences to the [`TestCluster`] it wraps (start,
//! stop, kill, clients, statuses, [`TestCluster::wait_quiescent`]); its
//! parties are provisioned as there (`quorate init --tpm spawn`, in the root
//! namespace: provisioning only writes the swtpm state), then their configs
//! are rewritten to the lab's addresses.
//!
//! Dropped (also on a failed test): daemons stopped, swtpms killed, the
//! lab's threads stopped and its namespaces deleted, in that order.

use crate::cluster::TestCluster;
use crate::netns::{forward, party_ip, NetLab, HUB_IP};
use crate::proxy::{FaultNet, Route};
use anyhow::{anyhow, bail};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Each party's real peer listener port, on its bridge address.
pub const PEER_PORT: u16 = 7000;
/// Each party's API port on the loopback of its own namespace.
pub const API_PORT: u16 = 8080;

/// Party `id`'s advertised peer address: the proxy's listener for it.
pub fn advertised(id: u32) -> SocketAddr {
    SocketAddr::from((HUB_IP, PEER_PORT.saturating_add(id as u16)))
}

/// Party `id`'s real peer listener (inside its namespace).
pub fn real_listener(id: u32) -> SocketAddr {
    SocketAddr::from((party_ip(id), PEER_PORT))
}

/// A cluster whose parties are network-separated; see the module doc.
#[derive(Debug)]
pub struct NetCluster {
    // Field order is drop order: the daemons stop before the lab goes.
    cluster: TestCluster,
    net: FaultNet,
    lab: NetLab,
}

/// What a party holds, to compare parties: equal views mean one history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyView {
    /// Decided height.
    pub height: u64,
    /// The hash of every decided block, heights 1..=height.
    pub block_hashes: Vec<String>,
    /// The state root after the last block.
    pub state_root: String,
    /// Entries in the audit log.
    pub log_size: u64,
    /// The latest certified checkpoint: its size and root (hex).
    pub checkpoint: Option<(u64, String)>,
}

impl NetCluster {
    /// Makes a lab for `n` parties, provisions them with `fault_model`,
    /// rewrites their configs to the lab's addresses and starts the proxy
    /// (no faults yet). Nothing is started.
    pub async fn provision(n: u32, fault_model: &str) -> anyhow::Result<NetCluster> {
        let lab = NetLab::create(n)?;
        let mut cluster = TestCluster::provision(n, fault_model)?;
        let mut routes = Vec::new();
        let mut sources = HashMap::new();
        let old: Vec<(SocketAddr, SocketAddr)> =
            cluster.parties.iter().map(|p| (p.peer, p.api)).collect();
        for p in &mut cluster.parties {
            let mut text = std::fs::read_to_string(&p.config)?;
            for (id, (peer, _)) in (1u32..).zip(&old) {
                text = replace_once(
                    &text,
                    &format!("address = \"{peer}\""),
                    &format!("address = \"{}\"", advertised(id)),
                )?;
            }
            text = replace_once(
                &text,
                &format!("api_listen = \"{}\"", p.api),
                &format!("api_listen = \"127.0.0.1:{API_PORT}\""),
            )?;
            text = replace_once(
                &text,
                "[party]\n",
                &format!("[party]\nlisten = \"{}\"\n", real_listener(p.id)),
            )?;
            std::fs::write(&p.config, text)?;
            p.netns = Some(lab.party(p.id)?.name().to_string());
            p.peer = advertised(p.id);
            // The test reaches the API through a root-namespace loopback
            // port forwarded into the party's namespace.
            let l = std::net::TcpListener::bind(crate::cluster::free_addr())?;
            p.api = l.local_addr()?;
            forward(
                lab.party_thread(p.id)?,
                l,
                SocketAddr::from(([127, 0, 0, 1], API_PORT)),
            );
            routes.push(Route {
                to: p.id,
                listen: advertised(p.id),
                upstream: real_listener(p.id),
            });
            sources.insert(IpAddr::V4(party_ip(p.id)), p.id);
        }
        let net = FaultNet::start(&lab.hub_thread, &routes, sources).await?;
        Ok(NetCluster { cluster, net, lab })
    }

    /// The fault controls of every peer link.
    pub fn net(&self) -> &FaultNet {
        &self.net
    }

    /// The lab (namespaces and their threads).
    pub fn lab(&self) -> &NetLab {
        &self.lab
    }

    /// Starts every party and waits until each API answers and each party
    /// has every peer connected.
    pub async fn start_connected(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.cluster.start_all()?;
        let ids: Vec<u32> = self.ids();
        for id in &ids {
            self.cluster.wait_api(*id, timeout).await?;
        }
        self.wait_connected(&ids, timeout).await
    }

    /// Every party's id.
    pub fn ids(&self) -> Vec<u32> {
        self.cluster.parties.iter().map(|p| p.id).collect()
    }

    /// Waits until each of `ids` has every other party connected.
    pub async fn wait_connected(&self, ids: &[u32], timeout: Duration) -> anyhow::Result<()> {
        let want = self.cluster.parties.len().saturating_sub(1);
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.cluster.statuses(ids).await;
            if let Ok(s) = &s {
                if s.iter().all(|x| x.peers_connected == want) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("parties {ids:?} did not all connect: {s:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Party `id`'s view: height, every block hash, state root, audit log
    /// size and latest certified checkpoint.
    pub async fn view(&self, id: u32) -> anyhow::Result<PartyView> {
        let c = self.cluster.client(id)?;
        let s = c.status().await?;
        let mut block_hashes = Vec::new();
        while (block_hashes.len() as u64) < s.height {
            let from = block_hashes.len() as u64 + 1;
            let page = c.blocks(from, 100).await?;
            let blocks = page
                .get("blocks")
                .and_then(|b| b.as_array())
                .ok_or_else(|| anyhow!("party {id}: no blocks in {page}"))?;
            if blocks.is_empty() {
                bail!("party {id} serves no block at height {from}");
            }
            for b in blocks {
                if block_hashes.len() as u64 >= s.height {
                    break;
                }
                let h = b
                    .get("hash")
                    .and_then(|h| h.as_str())
                    .ok_or_else(|| anyhow!("party {id}: a block without a hash: {b}"))?;
                block_hashes.push(h.to_string());
            }
        }
        let cp = c.log_checkpoint().await.ok();
        let field = |k: &str| cp.as_ref().and_then(|v| v.get(k).cloned());
        let checkpoint = match (field("size"), field("root")) {
            (Some(size), Some(root)) => size.as_u64().zip(root.as_str().map(str::to_string)),
            _ => None,
        };
        let log_size = field("log_size").and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(PartyView {
            height: s.height,
            block_hashes,
            state_root: s.state_root,
            log_size,
            checkpoint,
        })
    }

    /// Waits until `ids` are quiescent and hold equal views (the same
    /// blocks, state root, audit log and checkpoint); returns that view.
    pub async fn wait_same_view(
        &self,
        ids: &[u32],
        timeout: Duration,
    ) -> anyhow::Result<PartyView> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.cluster.wait_quiescent(ids, left).await?;
            let mut views = Vec::new();
            for id in ids {
                views.push(self.view(*id).await);
            }
            let views: Vec<PartyView> = views.into_iter().collect::<anyhow::Result<_>>()?;
            if let Some(first) = views.first() {
                if views.iter().all(|v| v == first) {
                    return Ok(first.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("parties {ids:?} hold different views: {views:#?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    if !text.contains(from) {
        bail!("the party config has no `{from}` to rewrite:\n{text}");
    }
    Ok(text.replacen(from, to, 1))
}

impl std::ops::Deref for NetCluster {
    type Target = TestCluster;
    fn deref(&self) -> &TestCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for NetCluster {
    fn deref_mut(&mut self) -> &mut TestCluster {
        &mut self.cluster
    }
}
