//! Peer admission by attestation.
//!
//! A peer's TLS certificate proves which party it claims to be; its TPM
//! evidence proves what code it runs. When a connection comes up each side
//! sends the other a fresh nonce; the answer is evidence whose quote binds
//! that nonce, the peer's TLS key hash and its vote key Name. It is checked
//! against the cluster's reference-value policy, the peer's enrolled AK
//! (when the enrollment names one), vote key and TLS key. Until it passes,
//! the peer's consensus frames are dropped; when it fails, the connection
//! is closed, the peer excluded for a while, and the reason logged and shown
//! in the status.

use quorate_attestation::enroll::ActivatedAk;
use quorate_attestation::evidence::{Evidence, Freshness};
use quorate_attestation::policy::Policy;
use quorate_attestation::tpm::{TpmName, TpmtPublic};
use quorate_attestation::verify::{verify, AttestationResult, VerifierState};
use quorate_firmware::types::{PartyId, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::init::Enrollment;

/// Largest nonce accepted in a challenge.
pub const MAX_NONCE: usize = 64;

/// What parties send each other over their authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A consensus driver message.
    Consensus(#[serde(with = "serde_bytes")] Vec<u8>),
    /// "Prove what you run": a fresh nonce.
    Challenge(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Attestation evidence answering the sender's last challenge.
    Evidence(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The sender cannot produce evidence, and why.
    CannotAttest(String),
    /// An audit-log checkpoint as a C2SP signed note: the sender's own
    /// lines while it collects, or a certified note (docs/AUDIT.md).
    Checkpoint(String),
}

impl PeerFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a frame; never panics.
    pub fn decode(bytes: &[u8]) -> Result<PeerFrame, String> {
        match postcard::take_from_bytes::<PeerFrame>(bytes) {
            Ok((f, [])) => Ok(f),
            Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Which peers' challenges are being answered. Evidence costs this party's
/// TPM a certify, a quote and a PCR read per quoted PCR, so:
///
/// - one challenge is answered per connection: an honest verifier sends
///   exactly one, when the connection comes up, and a later one on the same
///   connection (whether or not the first is still being answered) is
///   dropped and counted. It is not answered from a cache: the quote binds
///   the nonce, so an answer to one nonce answers no other;
/// - at most one answer is produced per peer at a time: a challenge on a
///   newer connection while one for an older connection is in production
///   waits for it (only the newest such challenge is kept).
///
/// Generic over the connection id so the rules are tested without sockets.
#[derive(Debug)]
pub struct Answers<C> {
    /// Per peer: the connection whose challenge was taken last.
    taken: BTreeMap<PartyId, C>,
    /// Per peer with an answer in production: the newer connection's
    /// challenge waiting for it, if any.
    busy: BTreeMap<PartyId, Option<(C, Vec<u8>)>>,
}

impl<C> Default for Answers<C> {
    fn default() -> Self {
        Answers {
            taken: BTreeMap::new(),
            busy: BTreeMap::new(),
        }
    }
}

/// What to do with a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeAction {
    /// Produce evidence for this nonce now, for the connection that asked.
    Answer(Vec<u8>),
    /// Kept: produced once the peer's answer in production is done.
    Held,
    /// Dropped: this connection's challenge was already taken.
    Dropped,
}

impl<C: Copy + PartialEq> Answers<C> {
    /// A challenge from `peer` on its current connection `conn`.
    pub fn challenge(&mut self, peer: PartyId, conn: C, nonce: Vec<u8>) -> ChallengeAction {
        if self.taken.get(&peer) == Some(&conn) {
            return ChallengeAction::Dropped;
        }
        self.taken.insert(peer, conn);
        match self.busy.get_mut(&peer) {
            Some(waiting) => {
                *waiting = Some((conn, nonce));
                ChallengeAction::Held
            }
            None => {
                self.busy.insert(peer, None);
                ChallengeAction::Answer(nonce)
            }
        }
    }

    /// `peer`'s answer in production is done: the held challenge to answer
    /// next (it stays in production), if any.
    pub fn answered(&mut self, peer: PartyId) -> Option<(C, Vec<u8>)> {
        let next = self.busy.remove(&peer).flatten();
        if next.is_some() {
            self.busy.insert(peer, None);
        }
        next
    }
}

/// A peer's admission state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Connected, evidence not yet verified.
    Pending,
    /// Evidence verified.
    Attested {
        /// The measured executable's digest, hex.
        executable: String,
        /// The measurement PCR value, hex.
        measurement: String,
    },
    /// Admitted without evidence: no reference policy (dev mode only).
    Unchecked,
    /// Evidence refused, with the reason.
    Refused(String),
}

struct Peer {
    enrolled_tls: Option<Sha256Digest>,
    enrolled_vote_point: Option<[u8; 65]>,
    state: VerifierState,
    /// Verifier state for epoch attestation records, which are checked in
    /// decided order (their own clock sequence, apart from admission quotes).
    epoch_state: VerifierState,
    /// The AK credential activation bound to its EK (its enrollment
    /// record), when one is known.
    activated: Option<ActivatedAk>,
    nonce: Option<Vec<u8>>,
    standing: Standing,
}

/// Admission of every peer.
pub struct Admission {
    policy: Option<Policy>,
    peers: BTreeMap<PartyId, Peer>,
}

fn hex32(s: &str) -> Option<Sha256Digest> {
    hex::decode(s).ok()?.try_into().ok().map(Sha256Digest)
}

impl Admission {
    /// Admission against `policy` (none: admit on TLS alone, dev mode) for
    /// the peers enrolled in `enrollments` (this party excluded).
    pub fn new(
        policy: Option<Policy>,
        me: PartyId,
        enrollments: &BTreeMap<PartyId, Enrollment>,
    ) -> Self {
        let mut peers = BTreeMap::new();
        for (id, e) in enrollments {
            if *id == me {
                continue;
            }
            let name = |k: &crate::init::EnrolledKey| {
                hex::decode(&k.tpmt_public)
                    .ok()
                    .and_then(|b| TpmtPublic::parse(&b).ok())
                    .map(|p| p.name().clone())
            };
            let state = VerifierState {
                enrolled_ak: e.ak.as_ref().and_then(name),
                enrolled_vote_key: name(&e.vote_key),
                last_clock: None,
            };
            peers.insert(
                *id,
                Peer {
                    enrolled_tls: hex32(&e.tls_key_hash),
                    enrolled_vote_point: hex::decode(&e.vote_key.point)
                        .ok()
                        .and_then(|b| b.try_into().ok()),
                    epoch_state: state.clone(),
                    state,
                    activated: None,
                    nonce: None,
                    standing: Standing::Pending,
                },
            );
        }
        Admission { policy, peers }
    }

    /// Ties each peer's evidence to the AK its enrollment record activated
    /// against its EK ([`crate::enroll_cli::enrollment_records`]): the AK is
    /// pinned to that Name, and an EK certificate in the evidence must be
    /// for that EK. A software AK beside a genuine EK certificate copied
    /// from some TPM is refused.
    pub fn with_activated(mut self, activated: BTreeMap<PartyId, ActivatedAk>) -> Self {
        for (id, a) in activated {
            if let Some(p) = self.peers.get_mut(&id) {
                p.state.enrolled_ak = Some(a.ak_name.clone());
                p.epoch_state.enrolled_ak = Some(a.ak_name.clone());
                p.activated = Some(a);
            }
        }
        self
    }

    /// Whether a reference policy is enforced.
    pub fn enforced(&self) -> bool {
        self.policy.is_some()
    }

    /// The policy, if any.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// A connection to `peer` came up: returns the challenge to send, or
    /// `None` when no policy is enforced (then the peer is admitted).
    pub fn connected(&mut self, peer: PartyId, nonce: Vec<u8>) -> Option<PeerFrame> {
        let enforced = self.policy.is_some();
        let p = self.peers.get_mut(&peer)?;
        if !enforced {
            p.standing = Standing::Unchecked;
            return None;
        }
        p.standing = Standing::Pending;
        p.nonce = Some(nonce.clone());
        Some(PeerFrame::Challenge(nonce))
    }

    /// The connection to `peer` went down: it must attest again.
    pub fn disconnected(&mut self, peer: PartyId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if !matches!(p.standing, Standing::Refused(_)) {
                p.standing = Standing::Pending;
            }
            p.nonce = None;
        }
    }

    /// Whether `peer`'s consensus frames are accepted.
    pub fn admitted(&self, peer: PartyId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| matches!(p.standing, Standing::Attested { .. } | Standing::Unchecked))
    }

    /// `peer`'s standing.
    pub fn standing(&self, peer: PartyId) -> Standing {
        self.peers
            .get(&peer)
            .map(|p| p.standing.clone())
            .unwrap_or(Standing::Pending)
    }

    /// Checks `peer`'s evidence against the nonce sent to it. On success the
    /// peer is admitted; on failure the reason is returned (and recorded).
    pub fn check_evidence(
        &mut self,
        peer: PartyId,
        bytes: &[u8],
    ) -> Result<AttestationResult, String> {
        let policy = self.policy.clone();
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or_else(|| format!("{peer} is not enrolled"))?;
        let res = match p.nonce.clone() {
            Some(nonce) => check(
                policy.as_ref(),
                p.activated.as_ref(),
                &mut p.state,
                p.enrolled_tls,
                p.enrolled_vote_point,
                &Freshness::Nonce(nonce),
                bytes,
            ),
            None => Err("evidence arrived without a challenge outstanding".to_string()),
        };
        p.standing = match &res {
            Ok(r) => Standing::Attested {
                executable: r.executable.to_string(),
                measurement: r.measurement.to_string(),
            },
            Err(e) => Standing::Refused(e.clone()),
        };
        p.nonce = None;
        res
    }

    /// Checks the evidence of `peer`'s epoch attestation record, which must
    /// bind `freshness` (the epoch and the block hash it names). A failure
    /// refuses the peer as a failed admission does.
    pub fn check_record(
        &mut self,
        peer: PartyId,
        bytes: &[u8],
        freshness: &Freshness,
    ) -> Result<AttestationResult, String> {
        let policy = self.policy.clone();
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or_else(|| format!("{peer} is not enrolled"))?;
        let res = check(
            policy.as_ref(),
            p.activated.as_ref(),
            &mut p.epoch_state,
            p.enrolled_tls,
            p.enrolled_vote_point,
            freshness,
            bytes,
        );
        if let Err(e) = &res {
            p.standing = Standing::Refused(format!("epoch attestation record: {e}"));
        }
        res
    }

    /// Forgets a refusal so the peer may try again.
    pub fn retry(&mut self, peer: PartyId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.standing = Standing::Pending;
        }
    }
}

fn check(
    policy: Option<&Policy>,
    activated: Option<&ActivatedAk>,
    state: &mut VerifierState,
    enrolled_tls: Option<Sha256Digest>,
    enrolled_vote_point: Option<[u8; 65]>,
    freshness: &Freshness,
    bytes: &[u8],
) -> Result<AttestationResult, String> {
    let policy = policy.ok_or("no reference policy is configured")?;
    let evidence =
        Evidence::from_bytes(bytes).map_err(|e| format!("evidence does not decode: {e}"))?;
    // Check on a copy: the clock is remembered only when everything passes.
    let mut trial = state.clone();
    let result = verify(&evidence, freshness, policy, &mut trial).map_err(|e| e.to_string())?;
    if let Some(a) = activated {
        a.check(
            &result.ak_name,
            evidence.ek_certificate.as_ref().map(|c| c.as_slice()),
        )
        .map_err(|e| e.to_string())?;
    }
    match enrolled_tls {
        Some(t) if t == evidence.tls_key_hash => {}
        Some(t) => {
            return Err(format!(
                "the evidence binds TLS key {}, but the enrollment lists {t}",
                evidence.tls_key_hash
            ))
        }
        None => return Err("the enrollment lists no TLS key hash".into()),
    }
    if enrolled_vote_point != Some(result.vote_key.0) {
        return Err("the evidence's vote key is not the enrolled vote key".into());
    }
    *state = trial;
    Ok(result)
}

/// The vote key Name of an enrollment, for logs.
pub fn vote_key_name(e: &Enrollment) -> Option<TpmName> {
    hex::decode(&e.vote_key.tpmt_public)
        .ok()
        .and_then(|b| TpmtPublic::parse(&b).ok())
        .map(|p| p.name().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        for f in [
            PeerFrame::Consensus(vec![1, 2, 3]),
            PeerFrame::Challenge(vec![9; 32]),
            PeerFrame::Evidence(vec![]),
            PeerFrame::CannotAttest("no AK".into()),
        ] {
            assert_eq!(PeerFrame::decode(&f.encode()).unwrap(), f);
        }
        assert!(PeerFrame::decode(&[]).is_err());
        assert!(PeerFrame::decode(&[7, 1, 2]).is_err());
        let mut b = PeerFrame::Challenge(vec![1]).encode();
        b.push(0);
        assert!(PeerFrame::decode(&b).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(0u8.., 0..200)) {
            let _ = PeerFrame::decode(&b);
        }
    }

    #[test]
    fn one_challenge_per_connection_and_one_answer_in_production_per_peer() {
        use ChallengeAction::*;
        let mut a = Answers::<u64>::default();
        let (p, q) = (PartyId(2), PartyId(3));
        assert_eq!(a.challenge(p, 1, vec![1]), Answer(vec![1]));
        // A flood on the same connection: dropped while being answered...
        for _ in 0..100 {
            assert_eq!(a.challenge(p, 1, vec![9]), Dropped);
        }
        // ...another peer is answered independently...
        assert_eq!(a.challenge(q, 7, vec![7]), Answer(vec![7]));
        assert_eq!(a.answered(p), None);
        // ...and after the answer too.
        assert_eq!(a.challenge(p, 1, vec![9]), Dropped);
        // A new connection's challenge is answered.
        assert_eq!(a.challenge(p, 2, vec![2]), Answer(vec![2]));
        // Reconnecting while that is in production: only the newest waits.
        assert_eq!(a.challenge(p, 3, vec![3]), Held);
        assert_eq!(a.challenge(p, 4, vec![4]), Held);
        assert_eq!(a.challenge(p, 4, vec![5]), Dropped);
        assert_eq!(a.answered(p), Some((4, vec![4])));
        // That one is now in production: the next new connection waits.
        assert_eq!(a.challenge(p, 5, vec![6]), Held);
        assert_eq!(a.answered(p), Some((5, vec![6])));
        assert_eq!(a.answered(p), None);
        assert_eq!(a.challenge(p, 6, vec![8]), Answer(vec![8]));
    }

    #[test]
    fn without_a_policy_peers_are_admitted_unchecked_and_with_one_only_after_evidence() {
        let mut none = Admission {
            policy: None,
            peers: BTreeMap::new(),
        };
        none.peers.insert(
            PartyId(2),
            Peer {
                enrolled_tls: None,
                enrolled_vote_point: None,
                state: VerifierState::default(),
                epoch_state: VerifierState::default(),
                activated: None,
                nonce: None,
                standing: Standing::Pending,
            },
        );
        assert!(!none.admitted(PartyId(2)));
        assert_eq!(none.connected(PartyId(2), vec![1; 32]), None);
        assert!(none.admitted(PartyId(2)));

        let mut strict = Admission {
            policy: Some(Policy::new(
                vec![Sha256Digest::of(b"x")],
                Sha256Digest::of(b"c"),
            )),
            peers: none.peers,
        };
        assert!(matches!(
            strict.connected(PartyId(2), vec![1; 32]),
            Some(PeerFrame::Challenge(_))
        ));
        assert!(!strict.admitted(PartyId(2)));
        let err = strict
            .check_evidence(PartyId(2), b"not evidence")
            .unwrap_err();
        assert!(err.contains("decode"), "{err}");
        assert!(!strict.admitted(PartyId(2)));
        assert!(matches!(strict.standing(PartyId(2)), Standing::Refused(_)));
    }
}
