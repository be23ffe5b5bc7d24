//! Peer transport: mutual TLS over TCP, pinned to enrolled certificates,
//! carrying length-prefixed frames. What the frames mean is the daemon's
//! business; this layer only guarantees who sent them.

pub mod frame;
pub mod peers;
pub mod tls;

pub use peers::{NetConfig, NetEvent, PeerNet, PeerSpec};
