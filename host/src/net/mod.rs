//! Peer transport: mutual TLS over TCP, pinned to enrolled certificates,
//! carrying length-prefixed frames. What the frames mean is the daemon's
//! business; this layer only guarantees who sent them, and bounds what
//! strangers and peers can make it hold (pending handshakes, queues in
//! frames and bytes, time to admission).

pub mod frame;
pub mod peers;
mod pending;
pub mod tls;

pub use peers::{ConnId, Inbound, NetConfig, NetEvent, NetStats, PeerNet, PeerSpec};
