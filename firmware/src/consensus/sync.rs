//! Catch-up bookkeeping: which peers are ahead, and when to ask again.
//!
//! malachite's core drops messages of heights it has left and peers stop
//! rebroadcasting a height once they move on, so a party that falls behind
//! would stay behind. Parties announce their tip (last decided height)
//! periodically; a party behind asks a peer that is ahead for the block at
//! its height in progress; the answer (block + commit certificate) is
//! verified — certificate against the party set and quorum, block against
//! the chain — before it is fed to the core as a sync value.
//!
//! Answering costs the answerer a block copy and up to a block's bytes on
//! the wire, so answers are rationed per peer ([`ServeBudget`]): a member
//! that floods block requests gets a bounded rate of answers, and the rest
//! of its requests are dropped and counted.

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

/// Default burst of block responses per peer: enough to serve a whole
/// catch-up window of a short outage at network speed.
pub const BLOCK_SERVE_BURST: u32 = 128;
/// Default sustained block responses per peer per second, once its burst
/// is spent.
pub const BLOCK_SERVE_PER_SEC: u32 = 32;

/// A token bucket per peer for block responses: a peer holds at most
/// `burst` answers, one more every `1/per_sec` seconds; a request that
/// finds its peer's bucket empty is not answered.
#[derive(Debug, Clone)]
pub struct ServeBudget {
    per_sec: u32,
    burst: u32,
    /// Per peer: its tokens in thousandths, and when they were counted (ms).
    buckets: BTreeMap<PartyId, (u64, u64)>,
    /// Requests not answered, per peer, since start.
    dropped: BTreeMap<PartyId, u64>,
}

impl ServeBudget {
    /// A budget of `burst` answers per peer refilled at `per_sec` answers
    /// per second. A zero `burst` or `per_sec` is taken as 1: a peer must
    /// always be able to catch up, however slowly.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        ServeBudget {
            per_sec: per_sec.max(1),
            burst: burst.max(1),
            buckets: BTreeMap::new(),
            dropped: BTreeMap::new(),
        }
    }

    /// Whether to answer a block request from `p` at `now` (ms, never
    /// decreasing): takes a token if there is one, else counts a drop.
    pub fn take(&mut self, p: PartyId, now: u64) -> bool {
        let cap = u64::from(self.burst) * 1000;
        let (tokens, at) = self.buckets.entry(p).or_insert((cap, now));
        // per_sec answers per 1000 ms: per_sec thousandths per ms.
        let refill = now
            .saturating_sub(*at)
            .saturating_mul(u64::from(self.per_sec));
        *tokens = tokens.saturating_add(refill).min(cap);
        *at = now.max(*at);
        if *tokens >= 1000 {
            *tokens -= 1000;
            true
        } else {
            let d = self.dropped.entry(p).or_insert(0);
            *d = d.saturating_add(1);
            false
        }
    }

    /// Block requests not answered since start, per peer.
    pub fn dropped(&self) -> &BTreeMap<PartyId, u64> {
        &self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_answers_are_rationed_per_peer() {
        let mut b = ServeBudget::new(10, 3);
        let (p, q) = (PartyId(2), PartyId(3));
        // A burst of three, then nothing more at the same instant.
        assert!((0..3).all(|_| b.take(p, 1_000)));
        assert!(!b.take(p, 1_000));
        assert!(!b.take(p, 1_050));
        // Another peer has its own bucket.
        assert!(b.take(q, 1_050));
        // Ten per second: one more after 100 ms, not before.
        assert!(b.take(p, 1_100));
        assert!(!b.take(p, 1_150));
        // A long pause refills to the burst, not beyond.
        assert!((0..3).all(|_| b.take(p, 60_000)));
        assert!(!b.take(p, 60_000));
        assert_eq!(b.dropped().get(&p), Some(&4));
        assert_eq!(b.dropped().get(&q), None);
        // A flood of a thousand requests in one second gets burst + rate.
        let mut f = ServeBudget::new(10, 3);
        let served = (0..1000u64).filter(|i| f.take(p, 5_000 + i)).count();
        assert_eq!(served, 3 + 9, "served {served}");
        assert_eq!(f.dropped().get(&p), Some(&(1000 - 12)));
        // Zero is taken as one.
        let mut z = ServeBudget::new(0, 0);
        assert!(z.take(p, 0));
        assert!(!z.take(p, 999));
        assert!(z.take(p, 1_000));
    }

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
