//! What `quorate status` and `GET /v1/status` report.
//!
//! The daemon rewrites `DIR/status.json` (atomically) whenever something an
//! operator cares about changes, and at least every two seconds; `quorate
//! status --data-dir DIR` reads it, and says so when the daemon that wrote it
//! is no longer running.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the status snapshot in the data dir.
pub const STATUS_FILE: &str = "status.json";

/// A peer as the operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its party id.
    pub party: u32,
    /// Its configured address.
    pub address: String,
    /// Whether an authenticated connection is up.
    pub connected: bool,
    /// Whether its attestation evidence verified.
    pub attested: bool,
    /// The attestation state in words (the failure reason, if any).
    pub attestation: String,
}

/// The most recent decided block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastDecision {
    /// Its height.
    pub height: u64,
    /// Its consensus time (ms since the Unix epoch).
    pub time_ms: u64,
    /// Its hash, hex.
    pub block_hash: String,
    /// How many operations it carried.
    pub operations: usize,
    /// How many precommit signatures its certificate holds.
    pub signers: usize,
}

/// The daemon's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    /// This party.
    pub party: u32,
    /// The cluster id (digest of the canonical cluster configuration), hex.
    pub cluster: String,
    /// The last decided height.
    pub height: u64,
    /// The session state root after it, hex.
    pub state_root: String,
    /// Peers with a live connection.
    pub peers_connected: usize,
    /// Peers whose attestation verified.
    pub peers_attested: usize,
    /// Every peer.
    pub peers: Vec<PeerStatus>,
    /// The last decision, if any.
    pub last_decision: Option<LastDecision>,
    /// Accepted operations not yet decided.
    pub outbox: usize,
    /// The daemon's process id.
    pub pid: u32,
    /// When this was written (ms since the Unix epoch).
    pub updated_ms: u64,
}

impl StatusView {
    /// Reads the snapshot from a data dir.
    pub fn read(data_dir: &Path) -> std::io::Result<StatusView> {
        let b = std::fs::read(data_dir.join(STATUS_FILE))?;
        serde_json::from_slice(&b)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Whether the process that wrote it is still alive.
    pub fn daemon_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// A human-readable rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "party      P{}\ncluster    {}\nheight     {}\nstate root {}\noutbox     {} operation(s) not yet decided\n",
            self.party, self.cluster, self.height, self.state_root, self.outbox
        );
        match &self.last_decision {
            Some(d) => out.push_str(&format!(
                "last block {} ({} ops, {} signatures, hash {})\n",
                d.height,
                d.operations,
                d.signers,
                d.block_hash.get(..16).unwrap_or(&d.block_hash)
            )),
            None => out.push_str("last block none since start\n"),
        }
        out.push_str(&format!(
            "peers      {} connected, {} attested\n",
            self.peers_connected, self.peers_attested
        ));
        for p in &self.peers {
            out.push_str(&format!(
                "  P{:<3} {:<22} {:<12} {}\n",
                p.party,
                p.address,
                if p.connected { "connected" } else { "down" },
                p.attestation
            ));
        }
        out
    }
}
