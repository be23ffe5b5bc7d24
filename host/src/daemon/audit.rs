//! The audit log in the daemon: checkpoints issued, exchanged and certified.
//!
//! Every decided block feeds the firmware's ledger (in `mod.rs`, beside the
//! session machine); its step is stored by [`crate::store::Store::append_log`]
//! and the tree head handed back to the consensus driver. After each step
//! [`CheckpointBook::after_block`] evaluates the cluster's
//! [`CheckpointPolicy`] on decided values only, so every party opens a
//! checkpoint for the same tree sizes. For each one this party
//!
//! 1. quotes the note text with its TPM (qualifying data
//!    [`Checkpoint::quote_qualifying_data`], the measurement PCR and the
//!    PCRs the reference policy selects) and cosigns it with its vote key
//!    over [`Checkpoint::cosign_message`] ([`issue_lines`]);
//! 2. stores those lines (`own_checkpoint_lines`) before sending them, then
//!    sends them to every peer as a signed note holding only its own lines
//!    ([`super::admission::PeerFrame::Checkpoint`]);
//! 3. collects peers' lines for the same note text, each checked as it
//!    arrives (cosignatures against the vote keys, quotes against the
//!    enrolled AKs), and once a quorum of cosignatures verifies
//!    ([`check_cosignatures`]) stores the certified signed note with every
//!    line it has.
//!
//! Nothing here blocks consensus: a checkpoint that lacks lines waits in
//! memory (at most [`MAX_OPEN`] of them), lines are re-sent on reconnect
//! and every [`RESEND_EVERY`], and a party that receives lines for a size it
//! has already certified answers with the certified note, so a restarted
//! party catches up. Lines for sizes not open here are dropped; only a
//! quorum of valid cosignatures makes anything durable, so a peer (and
//! a non-party, which cannot even connect) cannot make us store anything.
//!
//! The vote key signs `"quorate/audit/checkpoint-cosign/v1\n" || note`,
//! whose first byte (`q`) is never the first byte of a consensus message
//! or a batch (the postcard length of their domain strings, 0x14 and 0x10):
//! a cosignature can never be replayed as a vote, and the consensus sign
//! guard, which rules over consensus messages only, is not involved.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quorate_attestation::attest::{Attested, TpmsAttest};
use quorate_attestation::evidence::SignedAttest;
use quorate_attestation::pcr::{pcr_composite_digest, PcrIndex, PcrValue};
use quorate_attestation::tpm::{verify_ecdsa_p256, TpmSignature, TpmtPublic};
use quorate_firmware::audit::checkpoint::{
    check_cosignatures, cosign_key_id, cosignature, quote_key_id, quote_signature, Checkpoint,
    CheckpointPolicy, NoteSignature, SignedCheckpoint, SignerRole,
};
use quorate_firmware::audit::merkle::TreeSize;
use quorate_firmware::crypto::{PublicKey, Signature};
use quorate_firmware::types::{FaultModel, PartyId, Sha256Digest};
use serde::{Deserialize, Serialize};

use crate::tpm::{TpmError, TpmHandle};

/// Most checkpoints collected at once; the oldest uncertified one is
/// dropped beyond it (its lines can no longer certify it here).
pub const MAX_OPEN: usize = 8;
/// How often this party re-sends its lines of checkpoints still short of a
/// quorum.
pub const RESEND_EVERY: Duration = Duration::from_secs(5);
/// TPM_GENERATED_VALUE: the magic of a TPMS_ATTEST the TPM made.
const TPM_GENERATED: u32 = 0xff54_4347;

/// The signature bytes of a `/tpm` line: the TPM quote over the checkpoint
/// and the PCR values it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointQuote {
    /// TPMS_ATTEST and the AK's TPMT_SIGNATURE.
    pub quote: SignedAttest,
    /// The quoted PCRs' SHA-256 values, in selection order.
    pub pcr_values: Vec<PcrValue>,
}

impl CheckpointQuote {
    /// The encoding carried in the note line.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a line's bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match postcard::take_from_bytes::<CheckpointQuote>(bytes) {
            Ok((q, [])) => Ok(q),
            Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// TPM2B_PUBLIC (big-endian u16 size, then the TPMT_PUBLIC): the AK bytes a
/// quote line's key ID covers (docs/AUDIT.md).
pub fn ak_tpm2b(tpmt_public: &[u8]) -> Vec<u8> {
    let len = u16::try_from(tpmt_public.len()).unwrap_or(u16::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(tpmt_public);
    out
}

/// Checks a quote line's bytes: a TPM-generated quote whose AK signature
/// verifies under `ak_tpmt` (TPMT_PUBLIC), whose qualifying data is the
/// checkpoint's, and whose PCR digest matches the PCR values carried.
pub fn verify_quote(
    ak_tpmt: &[u8],
    qualifying_data: &Sha256Digest,
    bytes: &[u8],
) -> Result<(), String> {
    let q = CheckpointQuote::decode(bytes).map_err(|e| format!("malformed quote: {e}"))?;
    let ak = TpmtPublic::parse(ak_tpmt).map_err(|e| format!("enrolled AK: {e}"))?;
    let sig = TpmSignature::parse(&q.quote.signature).map_err(|e| format!("signature: {e}"))?;
    verify_ecdsa_p256(&ak, &q.quote.attest, &sig)
        .map_err(|e| format!("AK signature does not verify: {e}"))?;
    let attest = TpmsAttest::parse(&q.quote.attest).map_err(|e| format!("TPMS_ATTEST: {e}"))?;
    if attest.magic != TPM_GENERATED {
        return Err("the attestation was not generated by a TPM".into());
    }
    if !quorate_firmware::crypto::ct_eq(&attest.extra_data, qualifying_data.as_bytes()) {
        return Err("qualifying data is not this checkpoint's".into());
    }
    let Attested::Quote { pcr_digest, .. } = &attest.attested else {
        return Err("not a quote".into());
    };
    let values: Vec<Sha256Digest> = q.pcr_values.iter().map(|v| v.value).collect();
    if pcr_composite_digest(&values).as_bytes().as_slice() != pcr_digest.as_slice() {
        return Err("PCR values do not match the quoted digest".into());
    }
    Ok(())
}

/// This party's lines for `cp`: a TPM quote (when `quote_pcrs` is given:
/// the party has an AK) and the vote-key cosignature.
pub async fn issue_lines(
    tpm: &TpmHandle,
    me: PartyId,
    vote_key: PublicKey,
    ak_tpmt: Option<Vec<u8>>,
    quote_pcrs: &[PcrIndex],
    cp: &Checkpoint,
) -> Result<Vec<NoteSignature>, TpmError> {
    let mut lines = Vec::with_capacity(2);
    if let Some(ak) = ak_tpmt {
        let indices: Vec<u8> = quote_pcrs.iter().map(|p| p.get()).collect();
        let quote = tpm
            .quote(indices, cp.quote_qualifying_data().0.to_vec())
            .await?;
        let mut pcr_values = Vec::with_capacity(quote_pcrs.len());
        for p in quote_pcrs {
            pcr_values.push(PcrValue {
                index: *p,
                value: Sha256Digest(tpm.pcr_read(p.get()).await?),
            });
        }
        let bytes = CheckpointQuote {
            quote: SignedAttest {
                attest: quote.attest,
                signature: quote.signature,
            },
            pcr_values,
        }
        .encode();
        lines.push(quote_signature(&cp.origin, me, &ak_tpm2b(&ak), bytes));
    }
    let sig = tpm.sign(cp.cosign_message()).await?;
    lines.push(cosignature(&cp.origin, me, &vote_key, &sig));
    Ok(lines)
}

/// A checkpoint being collected.
#[derive(Debug, Clone)]
struct Open {
    checkpoint: Checkpoint,
    /// Verified lines by signer and role.
    lines: BTreeMap<(PartyId, SignerRole), NoteSignature>,
    /// Whether this party's own lines are in.
    own: bool,
    /// Whether a quorum certified it (and it is stored).
    certified: bool,
    /// Peers that were sent our lines in answer to theirs.
    answered: BTreeSet<PartyId>,
}

impl Open {
    fn signed(&self) -> SignedCheckpoint {
        SignedCheckpoint {
            checkpoint: self.checkpoint.clone(),
            signatures: self.lines.values().cloned().collect(),
        }
    }
}

/// What to do after a peer's note.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Received {
    /// Newly certified (or certified with more lines): store it.
    pub store: Option<SignedCheckpoint>,
    /// Send this note back to the sender (our lines, or a certified note).
    pub answer: Option<String>,
    /// The sender sent lines for a size this party already certified and
    /// no longer collects: answer with the stored certified note.
    pub answer_stored: Option<TreeSize>,
}

/// A peer's note that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Not a signed checkpoint.
    #[error("malformed checkpoint note: {0}")]
    Malformed(String),
    /// Another log.
    #[error("checkpoint of another log ({0})")]
    WrongOrigin(String),
    /// The same size with another root: a fork, or a corrupt peer.
    #[error("checkpoint of size {size} has root {theirs}, this party's log has {ours}: the logs have forked")]
    Fork {
        /// The size.
        size: TreeSize,
        /// Our root.
        ours: Sha256Digest,
        /// Theirs.
        theirs: Sha256Digest,
    },
    /// A line names a party that is not one.
    #[error("line of {0}, which is not a party")]
    NotAParty(PartyId),
    /// A line does not verify.
    #[error("line of {party} ({role:?}) does not verify: {reason}")]
    BadLine {
        /// Whose.
        party: PartyId,
        /// Which kind.
        role: SignerRole,
        /// Why.
        reason: String,
    },
}

/// The checkpoint schedule and the lines collected for open checkpoints.
/// Pure: no I/O; the daemon stores and sends what it says.
#[derive(Debug)]
pub struct CheckpointBook {
    origin: String,
    me: PartyId,
    parties: BTreeMap<PartyId, PublicKey>,
    /// Enrolled AK TPMT_PUBLIC of each party that has one.
    aks: BTreeMap<PartyId, Vec<u8>>,
    fault_model: FaultModel,
    policy: CheckpointPolicy,
    /// The last checkpoint point, `(size, block time)`: decided values only.
    last: Option<(TreeSize, u64)>,
    open: BTreeMap<TreeSize, Open>,
    /// The largest certified size stored.
    latest: Option<TreeSize>,
}

impl CheckpointBook {
    /// A book for `me` in a cluster of `parties` (vote keys) with enrolled
    /// AKs `aks`, whose log origin is `origin`.
    pub fn new(
        origin: String,
        me: PartyId,
        parties: BTreeMap<PartyId, PublicKey>,
        aks: BTreeMap<PartyId, Vec<u8>>,
        fault_model: FaultModel,
        policy: CheckpointPolicy,
    ) -> Self {
        CheckpointBook {
            origin,
            me,
            parties,
            aks,
            fault_model,
            policy,
            last: None,
            open: BTreeMap::new(),
            latest: None,
        }
    }

    /// Records that the certified checkpoint of `size` is stored (at start).
    pub fn set_latest_certified(&mut self, size: TreeSize) {
        self.latest = self.latest.max(Some(size));
    }

    /// The largest certified size.
    pub fn latest_certified(&self) -> Option<TreeSize> {
        self.latest
    }

    /// Whether a certified note needs a quote line: when any party has an AK.
    fn needs_quote(&self) -> bool {
        !self.aks.is_empty()
    }

    /// After a ledger step: the tree now has `size` entries with `root`,
    /// the block's time is `time_ms`. Returns the checkpoint to issue if
    /// the policy says one is due (and opens it for collection).
    pub fn after_block(
        &mut self,
        size: TreeSize,
        root: Sha256Digest,
        time_ms: u64,
    ) -> Option<Checkpoint> {
        if !self.policy.due(self.last, size, time_ms) {
            return None;
        }
        self.last = Some((size, time_ms));
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions: Vec::new(),
        };
        if self.latest.is_some_and(|l| l >= size) {
            // Certified before a restart: nothing to collect.
            return None;
        }
        self.open.insert(
            size,
            Open {
                checkpoint: cp.clone(),
                lines: BTreeMap::new(),
                own: false,
                certified: false,
                answered: BTreeSet::new(),
            },
        );
        // Bound memory: drop the oldest beyond MAX_OPEN.
        while self.open.len() > MAX_OPEN {
            self.open.pop_first();
        }
        Some(cp)
    }

    /// The open checkpoint of `size`, if any.
    pub fn open(&self, size: TreeSize) -> Option<&Checkpoint> {
        self.open.get(&size).map(|o| &o.checkpoint)
    }

    /// Adds this party's own lines (issued now, or loaded from the store at
    /// start). Returns the certified note if they complete a quorum.
    pub fn add_own(
        &mut self,
        size: TreeSize,
        lines: Vec<NoteSignature>,
    ) -> Option<SignedCheckpoint> {
        let me = self.me;
        let open = self.open.get_mut(&size)?;
        for l in lines {
            if let Some((p, role)) = l.signer(&self.origin) {
                if p == me {
                    open.lines.insert((p, role), l);
                }
            }
        }
        open.own = true;
        self.try_certify(size)
    }

    /// This party's lines of checkpoint `size` as a signed note.
    pub fn own_note(&self, size: TreeSize) -> Option<String> {
        let open = self.open.get(&size)?;
        let signatures: Vec<NoteSignature> = open
            .lines
            .iter()
            .filter(|((p, _), _)| *p == self.me)
            .map(|(_, l)| l.clone())
            .collect();
        (!signatures.is_empty()).then(|| {
            SignedCheckpoint {
                checkpoint: open.checkpoint.clone(),
                signatures,
            }
            .format()
        })
    }

    /// Notes to re-send: for every open checkpoint, our own lines while it
    /// lacks a quorum, the certified note once it has one.
    pub fn resend(&self) -> Vec<String> {
        self.open
            .iter()
            .filter(|(_, o)| o.own)
            .filter_map(|(size, o)| {
                if o.certified {
                    Some(o.signed().format())
                } else {
                    self.own_note(*size)
                }
            })
            .collect()
    }

    /// Whether some open checkpoint still lacks a quorum.
    pub fn waiting(&self) -> bool {
        self.open.values().any(|o| !o.certified)
    }

    /// A peer's note: keeps the lines that verify for a checkpoint open
    /// here with the same text.
    pub fn receive(&mut self, from: PartyId, text: &[u8]) -> Result<Received, Refused> {
        let note = SignedCheckpoint::parse(text).map_err(|e| Refused::Malformed(e.to_string()))?;
        if note.checkpoint.origin != self.origin {
            return Err(Refused::WrongOrigin(
                note.checkpoint.origin.chars().take(80).collect(),
            ));
        }
        let size = note.checkpoint.size;
        let Some(open) = self.open.get(&size) else {
            let mut r = Received::default();
            if self.latest.is_some_and(|l| l >= size) {
                r.answer_stored = Some(size);
            }
            return Ok(r);
        };
        if open.checkpoint != note.checkpoint {
            return Err(Refused::Fork {
                size,
                ours: open.checkpoint.root,
                theirs: note.checkpoint.root,
            });
        }
        let qd = open.checkpoint.quote_qualifying_data();
        let msg = open.checkpoint.cosign_message();
        let mut fresh = Vec::new();
        for line in &note.signatures {
            let Some((party, role)) = line.signer(&self.origin) else {
                continue; // another kind of signer: ignored, as signed-note says
            };
            let key = self.parties.get(&party).ok_or(Refused::NotAParty(party))?;
            if open.lines.contains_key(&(party, role)) {
                continue; // one line per signer and role: the first that verified
            }
            let bad = |reason: &str| Refused::BadLine {
                party,
                role,
                reason: reason.to_string(),
            };
            match role {
                SignerRole::Cosign => {
                    if line.key_id != cosign_key_id(&line.name, key) {
                        return Err(bad("key ID is not the party's vote key"));
                    }
                    let sig: [u8; 64] = line
                        .signature
                        .as_slice()
                        .try_into()
                        .map_err(|_| bad("not a 64-byte signature"))?;
                    key.verify(&msg, &Signature(sig))
                        .map_err(|_| bad("signature does not verify"))?;
                }
                SignerRole::Quote => {
                    let ak = self
                        .aks
                        .get(&party)
                        .ok_or_else(|| bad("the party has no enrolled AK"))?;
                    if line.key_id != quote_key_id(&line.name, &ak_tpm2b(ak)) {
                        return Err(bad("key ID is not the party's AK"));
                    }
                    verify_quote(ak, &qd, &line.signature).map_err(|e| bad(&e))?;
                }
            }
            fresh.push(((party, role), line.clone()));
        }
        let mut out = Received::default();
        let Some(open) = self.open.get_mut(&size) else {
            return Ok(out);
        };
        let had_sender = open.lines.keys().any(|(p, _)| *p == from);
        let added = !fresh.is_empty();
        for (k, l) in fresh {
            open.lines.insert(k, l);
        }
        // Answer a sender we have not heard from with what we have, once:
        // it may have missed our lines (it was behind, or restarted).
        if open.own && !had_sender && open.answered.insert(from) {
            out.answer = if open.certified {
                Some(open.signed().format())
            } else {
                self.own_note(size)
            };
        }
        if added {
            let was = self.open.get(&size).is_some_and(|o| o.certified);
            out.store = self.try_certify(size);
            if was && out.store.is_none() {
                // Certified already; more lines: store the fuller note.
                out.store = self.open.get(&size).map(Open::signed);
            }
        }
        Ok(out)
    }

    /// Certifies `size` if its lines hold a quorum of cosignatures (and a
    /// quote line, in an attested cluster). Returns it the first time.
    fn try_certify(&mut self, size: TreeSize) -> Option<SignedCheckpoint> {
        let needs_quote = self.needs_quote();
        let open = self.open.get(&size)?;
        if open.certified {
            return None;
        }
        let signed = open.signed();
        let ok = check_cosignatures(&signed, &self.origin, &self.parties, self.fault_model).ok()?;
        if needs_quote && ok.quotes.is_empty() {
            return None;
        }
        if let Some(o) = self.open.get_mut(&size) {
            o.certified = true;
        }
        self.latest = self.latest.max(Some(size));
        // Older uncertified checkpoints are superseded: the newer one's
        // consistency with them is what a verifier checks anyway.
        let keep = self.open.split_off(&size);
        self.open = keep;
        Some(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_firmware::audit::checkpoint::{key_name, origin_for};
    use quorate_firmware::types::ClusterId;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    struct Party {
        id: PartyId,
        key: EcdsaKeyPair,
        public: PublicKey,
    }

    fn parties(n: u32) -> Vec<Party> {
        let rng = SystemRandom::new();
        (1..=n)
            .map(|i| {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
                let key = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .unwrap();
                let public = PublicKey(key.public_key().as_ref().try_into().unwrap());
                Party {
                    id: PartyId(i),
                    key,
                    public,
                }
            })
            .collect()
    }

    fn origin() -> String {
        origin_for(&ClusterId(Sha256Digest::of(b"audit test")))
    }

    fn book(ps: &[Party], me: u32) -> CheckpointBook {
        CheckpointBook::new(
            origin(),
            PartyId(me),
            ps.iter().map(|p| (p.id, p.public)).collect(),
            BTreeMap::new(),
            FaultModel::Byzantine,
            CheckpointPolicy {
                every_entries: 4,
                every_ms: 10_000,
            },
        )
    }

    fn cosign(p: &Party, cp: &Checkpoint) -> NoteSignature {
        let rng = SystemRandom::new();
        let sig = p.key.sign(&rng, &cp.cosign_message()).unwrap();
        cosignature(
            &cp.origin,
            p.id,
            &p.public,
            &Signature(sig.as_ref().try_into().unwrap()),
        )
    }

    fn note(cp: &Checkpoint, lines: Vec<NoteSignature>) -> Vec<u8> {
        SignedCheckpoint {
            checkpoint: cp.clone(),
            signatures: lines,
        }
        .format()
        .into_bytes()
    }

    #[test]
    fn every_party_opens_the_same_checkpoints_from_decided_values() {
        let ps = parties(4);
        let (mut a, mut b) = (book(&ps, 1), book(&ps, 2));
        let root = Sha256Digest::of(b"root");
        let mut opened = Vec::new();
        // (size, time): first non-empty tree, then every 4 entries or 10 s.
        for (size, t) in [(0, 1), (2, 2), (3, 3), (6, 4), (7, 15_000), (8, 15_001)] {
            let x = a.after_block(TreeSize(size), root, t);
            let y = b.after_block(TreeSize(size), root, t);
            assert_eq!(x, y);
            if let Some(cp) = x {
                opened.push(cp.size.0);
            }
        }
        assert_eq!(opened, vec![2, 6, 7]);
    }

    #[test]
    fn a_quorum_of_cosignatures_certifies_and_late_lines_are_kept() {
        let ps = parties(4);
        let mut b = book(&ps, 1);
        let cp = b
            .after_block(TreeSize(5), Sha256Digest::of(b"r"), 1)
            .unwrap();
        assert_eq!(b.add_own(TreeSize(5), vec![cosign(&ps[0], &cp)]), None);
        assert!(b.own_note(TreeSize(5)).unwrap().contains("/P1/vote"));
        // P2's lines: not yet a quorum (3 of 4); P2 is answered with ours.
        let r = b
            .receive(PartyId(2), &note(&cp, vec![cosign(&ps[1], &cp)]))
            .unwrap();
        assert_eq!(r.store, None);
        assert!(r.answer.unwrap().contains("/P1/vote"));
        // P3's line completes the quorum.
        let r = b
            .receive(PartyId(3), &note(&cp, vec![cosign(&ps[2], &cp)]))
            .unwrap();
        let stored = r.store.unwrap();
        assert_eq!(stored.signatures.len(), 3);
        check_cosignatures(&stored, &origin(), &b.parties, FaultModel::Byzantine).unwrap();
        assert_eq!(b.latest_certified(), Some(TreeSize(5)));
        assert!(!b.waiting());
        // A late P4 line makes a fuller note to store; P4 gets the certified one.
        let r = b
            .receive(PartyId(4), &note(&cp, vec![cosign(&ps[3], &cp)]))
            .unwrap();
        assert_eq!(r.store.unwrap().signatures.len(), 4);
        assert_eq!(
            SignedCheckpoint::parse(r.answer.unwrap().as_bytes())
                .unwrap()
                .signatures
                .len(),
            4
        );
        // The same lines again change nothing.
        let r = b
            .receive(PartyId(4), &note(&cp, vec![cosign(&ps[3], &cp)]))
            .unwrap();
        assert_eq!(r, Received::default());
    }

    #[test]
    fn forged_foreign_and_forked_notes_are_refused_and_store_nothing() {
        let ps = parties(4);
        let mut b = book(&ps, 1);
        let cp = b
            .after_block(TreeSize(5), Sha256Digest::of(b"r"), 1)
            .unwrap();
        b.add_own(TreeSize(5), vec![cosign(&ps[0], &cp)]);
        // A cosignature over another checkpoint, in P2's name.
        let mut other = cp.clone();
        other.root = Sha256Digest::of(b"other");
        let mut forged = cosign(&ps[1], &other);
        assert!(matches!(
            b.receive(PartyId(2), &note(&cp, vec![forged.clone()])),
            Err(Refused::BadLine { .. })
        ));
        // P3 signing in P2's name: wrong key ID.
        forged = cosign(&ps[2], &cp);
        forged.name = key_name(&cp.origin, PartyId(2), SignerRole::Cosign);
        assert!(matches!(
            b.receive(PartyId(3), &note(&cp, vec![forged])),
            Err(Refused::BadLine { .. })
        ));
        // A line in the name of party 9.
        let outsider = parties(9).pop().unwrap();
        assert!(matches!(
            b.receive(PartyId(2), &note(&cp, vec![cosign(&outsider, &cp)])),
            Err(Refused::NotAParty(PartyId(9)))
        ));
        // The same size with another root: a fork.
        assert!(matches!(
            b.receive(PartyId(2), &note(&other, vec![cosign(&ps[1], &other)])),
            Err(Refused::Fork { .. })
        ));
        // Another log, and garbage.
        let mut foreign = cp.clone();
        foreign.origin = "quorate/other".into();
        assert!(matches!(
            b.receive(PartyId(2), &note(&foreign, vec![cosign(&ps[1], &foreign)])),
            Err(Refused::WrongOrigin(_))
        ));
        assert!(matches!(
            b.receive(PartyId(2), b"\xff\x00"),
            Err(Refused::Malformed(_))
        ));
        // Sizes not open here are dropped, and nothing was certified.
        let mut far = cp.clone();
        far.size = TreeSize(1_000_000);
        assert_eq!(
            b.receive(PartyId(2), &note(&far, vec![cosign(&ps[1], &far)]))
                .unwrap(),
            Received::default()
        );
        assert_eq!(b.latest_certified(), None);
        assert!(b.waiting());
    }

    #[test]
    fn a_party_behind_is_answered_and_memory_stays_bounded() {
        let ps = parties(4);
        let mut b = book(&ps, 1);
        let root = Sha256Digest::of(b"r");
        let mut first = None;
        for i in 0..(MAX_OPEN as u64 + 3) {
            let cp = b.after_block(TreeSize(4 * (i + 1)), root, i).unwrap();
            first.get_or_insert(cp);
        }
        assert_eq!(b.open.len(), MAX_OPEN);
        let first = first.unwrap();
        assert_eq!(b.open(first.size), None);
        // A certified size that is no longer open: the sender is answered
        // from the store.
        b.set_latest_certified(TreeSize(4));
        let r = b
            .receive(PartyId(2), &note(&first, vec![cosign(&ps[1], &first)]))
            .unwrap();
        assert_eq!(r.answer_stored, Some(TreeSize(4)));
        // Certifying a size drops the older open ones.
        let size = TreeSize(4 * (MAX_OPEN as u64));
        let cp = b.open(size).unwrap().clone();
        b.add_own(size, vec![cosign(&ps[0], &cp)]);
        b.receive(PartyId(2), &note(&cp, vec![cosign(&ps[1], &cp)]))
            .unwrap();
        let r = b
            .receive(PartyId(3), &note(&cp, vec![cosign(&ps[2], &cp)]))
            .unwrap();
        assert!(r.store.is_some());
        assert!(b.open.keys().all(|s| *s >= size));
        assert_eq!(b.resend().len(), 1);
    }

    #[test]
    fn cosignatures_never_share_a_prefix_with_consensus_or_batch_messages() {
        use quorate_firmware::batch::BatchBody;
        use quorate_firmware::consensus::context::{SignedBytes, Step, CONSENSUS_DOMAIN};
        use quorate_firmware::types::{Epoch, Height};
        let cluster = ClusterId(Sha256Digest::of(b"c"));
        let cp = Checkpoint {
            origin: origin_for(&cluster),
            size: TreeSize(1),
            root: Sha256Digest::of(b"r"),
            extensions: Vec::new(),
        };
        let vote = SignedBytes {
            domain: CONSENSUS_DOMAIN.to_string(),
            cluster,
            epoch: Epoch(0),
            height: Height(1),
            round: 0,
            step: Step::Precommit,
            value: None,
            pol_round: -1,
            signer: PartyId(1),
        }
        .encode();
        let batch = BatchBody {
            cluster,
            author: PartyId(1),
            seq: 1,
            ops: vec![],
        }
        .signing_bytes();
        let cosign = cp.cosign_message();
        assert_eq!(cosign.first(), Some(&b'q'));
        assert_ne!(vote.first(), cosign.first());
        assert_ne!(batch.first(), cosign.first());
    }
}
