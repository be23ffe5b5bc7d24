//! Slots for inbound connections that have not yet authenticated (TCP
//! accepted, TLS handshake and welcome not done).
//!
//! Anyone who can reach the peer port can open such a connection, so they
//! are capped: at most `max_total` at once, and at most `max_per_ip` from
//! one source address. A cap that refused newcomers would let whoever got
//! there first keep a real peer out for as long as it holds its
//! connections open; so a newcomer is always taken and an older pending
//! connection closed instead:
//!
//! - when the newcomer's source is at `max_per_ip`, that source's oldest;
//! - else, when all `max_total` slots are taken, the oldest of the source
//!   holding the most slots (the oldest such source on a tie).
//!
//! A peer dialing from an address of its own therefore holds its one slot
//! until every other source is down to one as well: flooding from a few
//! addresses only evicts the flooder's own connections. A peer sharing its
//! source address with a flooder (NAT, or loopback in tests) gets in when
//! its handshake completes before `max_per_ip` newer connections from that
//! address arrive. Every slot is also freed when its handshake times out.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// The pending connections, oldest first, each with what closes it.
#[derive(Debug)]
pub(super) struct PendingSlots<H> {
    max_total: usize,
    max_per_ip: usize,
    next: u64,
    /// By arrival: the source address and the closing handle.
    slots: BTreeMap<u64, (IpAddr, H)>,
    evicted: u64,
}

impl<H> PendingSlots<H> {
    /// Slots for `max_total` connections, `max_per_ip` per source (each at
    /// least 1).
    pub(super) fn new(max_total: usize, max_per_ip: usize) -> Self {
        PendingSlots {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            next: 0,
            slots: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Takes a slot for a new connection from `ip` closed by `handle`;
    /// returns its id and the handles of the connections evicted to make
    /// room (see the module docs for which).
    pub(super) fn admit(&mut self, ip: IpAddr, handle: H) -> (u64, Vec<H>) {
        let ip = ip.to_canonical();
        let mut out = Vec::new();
        while self.count(ip) >= self.max_per_ip {
            match self.oldest_of(ip).and_then(|id| self.slots.remove(&id)) {
                Some((_, h)) => out.push(h),
                None => break,
            }
        }
        while self.slots.len() >= self.max_total {
            match self
                .busiest_source()
                .and_then(|src| self.oldest_of(src))
                .and_then(|id| self.slots.remove(&id))
            {
                Some((_, h)) => out.push(h),
                None => break,
            }
        }
        self.evicted = self.evicted.saturating_add(out.len() as u64);
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.slots.insert(id, (ip, handle));
        (id, out)
    }

    /// Frees slot `id` (its connection authenticated, failed or timed out);
    /// nothing if it was evicted.
    pub(super) fn release(&mut self, id: u64) {
        self.slots.remove(&id);
    }

    /// Connections pending now.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Connections evicted since start.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    fn count(&self, ip: IpAddr) -> usize {
        self.slots.values().filter(|(a, _)| *a == ip).count()
    }

    fn oldest_of(&self, ip: IpAddr) -> Option<u64> {
        self.slots
            .iter()
            .find(|(_, (a, _))| *a == ip)
            .map(|(id, _)| *id)
    }

    /// The source holding the most slots; on a tie, the one whose oldest
    /// slot is oldest.
    fn busiest_source(&self) -> Option<IpAddr> {
        let mut counts: HashMap<IpAddr, (usize, u64)> = HashMap::new();
        for (id, (ip, _)) in &self.slots {
            counts.entry(*ip).or_insert((0, *id)).0 += 1;
        }
        counts
            .into_iter()
            .max_by(|(_, (n1, first1)), (_, (n2, first2))| n1.cmp(n2).then(first2.cmp(first1)))
            .map(|(ip, _)| ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_source_at_its_cap_loses_its_oldest_connection() {
        let mut p = PendingSlots::new(16, 4);
        for k in 0..4 {
            assert!(p.admit(ip(1), k).1.is_empty());
        }
        assert_eq!(p.admit(ip(1), 4).1, vec![0]);
        assert_eq!(p.admit(ip(1), 5).1, vec![1]);
        assert_eq!(p.len(), 4);
        assert_eq!(p.evicted(), 2);
        // Another source is unaffected.
        assert!(p.admit(ip(2), 100).1.is_empty());
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn when_full_the_busiest_source_loses_its_oldest_and_a_lone_peer_stays() {
        let mut p = PendingSlots::new(6, 4);
        // The real peer's handshake from its own address.
        let (_peer, _) = p.admit(ip(9), "peer");
        // A flooder from two addresses fills the rest.
        for h in ["a0", "b0", "a1", "b1", "a2"] {
            let src = if h.starts_with('a') { ip(1) } else { ip(2) };
            assert!(p.admit(src, h).1.is_empty());
        }
        assert_eq!(p.len(), 6);
        // Every newcomer, from anywhere, evicts the flooder's oldest.
        assert_eq!(p.admit(ip(3), "c0").1, vec!["a0"]);
        assert_eq!(p.admit(ip(2), "b2").1, vec!["b0"]);
        for k in 0..50 {
            let src = ip(1 + (k % 3) as u8);
            let out = p.admit(src, "x").1;
            assert_eq!(out.len(), 1);
            assert_ne!(out, vec!["peer"], "the lone peer was evicted");
        }
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn released_slots_make_room_and_evicted_ones_release_harmlessly() {
        let mut p = PendingSlots::new(2, 2);
        let (a, _) = p.admit(ip(1), 'a');
        let (b, _) = p.admit(ip(2), 'b');
        p.release(a);
        assert!(p.admit(ip(3), 'c').1.is_empty());
        // Full again: the oldest of the tied sources goes ('b').
        assert_eq!(p.admit(ip(4), 'd').1, vec!['b']);
        p.release(b);
        assert_eq!(p.len(), 2);
        // Zero caps are taken as one.
        let mut z = PendingSlots::new(0, 0);
        assert!(z.admit(ip(1), 1).1.is_empty());
        assert_eq!(z.admit(ip(2), 2).1, vec![1]);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_source() {
        let mut p = PendingSlots::new(16, 1);
        let v4 = IpAddr::from([192, 0, 2, 7]);
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        p.admit(v4, 1);
        assert_eq!(p.admit(mapped, 2).1, vec![1]);
    }
}
