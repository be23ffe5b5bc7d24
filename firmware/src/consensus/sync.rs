//! Catch-up bookkeeping: which peers are ahead, and when to ask again.
//!
//! malachite's core drops messages of heights it has left and peers stop
//! rebroadcasting a height once they move on, so a party that falls behind
//! would stay behind. Parties announce their tip (last decided height)
//! periodically; a party behind asks a peer that is ahead for the block at
//! its height in progress; the answer (block + commit certificate) is
//! verified — certificate against the party set and quorum, block against
//! the chain — before it is fed to the core as a sync value.

use crate::types::{Height, PartyId};
use malachitebft_core_consensus::PeerId;
use std::collections::BTreeMap;

/// The libp2p-style peer id malachite's sync inputs need: an identity
/// multihash of the party id.
pub fn peer_id_of(p: PartyId) -> PeerId {
    let b = p.0.to_be_bytes();
    let mut bytes = vec![0x00u8, b.len() as u8];
    bytes.extend_from_slice(&b);
    // An identity multihash of 4 bytes always parses; fall back to the
    // all-zero identity if the library ever disagrees.
    PeerId::from_bytes(&bytes).unwrap_or_else(|_| {
        PeerId::from_bytes(&[0x00, 0x00]).unwrap_or_else(|_| std::process::abort())
    })
}

/// What we know of peers' progress.
#[derive(Debug, Default, Clone)]
pub struct CatchUp {
    tips: BTreeMap<PartyId, Height>,
    last_request: Option<(Height, u64)>,
    rotation: usize,
    active: Height,
}

impl CatchUp {
    /// A peer announced (or implied) its last decided height.
    pub fn note_tip(&mut self, p: PartyId, h: Height) {
        let e = self.tips.entry(p).or_default();
        *e = (*e).max(h);
    }

    /// A peer is working on height `h` (so it decided `h - 1`).
    pub fn note_active(&mut self, p: PartyId, h: Height) {
        self.note_tip(p, Height(h.0.saturating_sub(1)));
        self.active = self.active.max(h);
    }

    /// A verified signed message shows that some member works at or past `h`.
    pub fn mark_active(&mut self, h: Height) {
        self.active = self.active.max(h);
    }

    /// Whether a peer sent a signed message for height `h` (so there is work
    /// at `h` even if its batches have not reached us yet).
    pub fn peer_active_at(&self, h: Height) -> bool {
        self.active >= h
    }

    /// Whether some peer decided beyond `ours`.
    pub fn peer_ahead(&self, ours: Height) -> bool {
        self.tips.values().any(|h| *h > ours)
    }

    /// A peer that decided beyond `ours`; successive calls rotate among
    /// them, so one peer that lies about its tip cannot stall catch-up.
    pub fn a_peer_ahead_of(&mut self, ours: Height) -> Option<PartyId> {
        let ahead: Vec<PartyId> = self
            .tips
            .iter()
            .filter(|(_, h)| **h > ours)
            .map(|(p, _)| *p)
            .collect();
        if ahead.is_empty() {
            return None;
        }
        self.rotation = self.rotation.wrapping_add(1);
        ahead.get(self.rotation % ahead.len()).copied()
    }

    /// Whether to send a request for `h` now (at most one per interval).
    pub fn should_request(&mut self, h: Height, now: u64, interval: u64) -> bool {
        match self.last_request {
            Some((lh, t)) if lh == h && now < t.saturating_add(interval / 2) => false,
            _ => {
                self.last_request = Some((h, now));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_peers_ahead_and_rate_limits() {
        let mut c = CatchUp::default();
        assert!(!c.peer_ahead(Height(3)));
        c.note_tip(PartyId(2), Height(5));
        assert!(c.peer_ahead(Height(3)));
        assert_eq!(c.a_peer_ahead_of(Height(3)), Some(PartyId(2)));
        c.note_tip(PartyId(3), Height(9));
        let a = c.a_peer_ahead_of(Height(3));
        let b = c.a_peer_ahead_of(Height(3));
        assert_ne!(a, b);
        assert!(!c.peer_ahead(Height(9)));
        assert!(c.should_request(Height(4), 0, 1000));
        assert!(!c.should_request(Height(4), 100, 1000));
        assert!(c.should_request(Height(4), 600, 1000));
        assert_ne!(peer_id_of(PartyId(1)), peer_id_of(PartyId(2)));
    }
}
