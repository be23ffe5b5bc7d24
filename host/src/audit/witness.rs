//! Outside witnesses (issue 17 point 8): C2SP tlog-witness and
//! tlog-cosignature `cosignature/v1`.
//!
//! A quorum of parties can sign two histories; a witness — an outside
//! service keyed by Ed25519 — cosigns a checkpoint only if it is
//! consistent with the last one it cosigned for that log (it is handed a
//! consistency proof), so a split view shown to two auditors who both
//! require a witness's cosignature is caught by the witness.
//!
//! - **Submitting** (`POST <prefix>/add-checkpoint`, [`add_checkpoint_body`],
//!   [`submit`]): `old <size>`, up to 63 base64 consistency-proof lines, a
//!   blank line, the signed checkpoint. 200 answers with cosignature lines
//!   ([`parse_response`]); 409 with `text/x.tlog.size` says which size the
//!   witness holds (the daemon then re-submits from it).
//! - **Cosignatures** ([`verify_cosignature`]): the line `— <name>
//!   base64(key ID || u64 timestamp BE || Ed25519 signature)`, key ID
//!   `SHA-256(name || "\n" || 0x04 || public key)[:4]`, over `cosignature/v1\n
//!   time <timestamp>\n` followed by the checkpoint's note text.
//! - **Keys** are C2SP signed-note verifier keys ([`WitnessKey::parse`]):
//!   `<name>+<key ID hex>+base64(0x04 || 32-byte Ed25519 key)`.
//!
//! The parsers here take outside bytes: typed errors, bounded sizes, never
//! a panic (fuzz target `witness_request`).

use std::collections::BTreeSet;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use quorate_firmware::audit::checkpoint::{Checkpoint, NoteSignature, SignedCheckpoint};
use quorate_firmware::types::Sha256Digest;
use ring::signature::{UnparsedPublicKey, ED25519};

/// Signature type byte of Ed25519 `cosignature/v1` (C2SP signed-note).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// Most consistency-proof lines a request may carry (C2SP tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;
/// Largest add-checkpoint request or response body read.
pub const MAX_BODY: usize = 256 * 1024;
/// Largest timestamp a cosignature may carry (2^63 - 1).
const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// Why a witness key, request, response or cosignature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// A verifier key is not `<name>+<hex key ID>+<base64 key>`.
    #[error("witness key {0:?} is not <name>+<key ID hex>+<base64(0x04 || Ed25519 key)>")]
    BadKey(String),
    /// A verifier key's ID is not the one its name and key give.
    #[error("witness key {name}: key ID {found} is not {expected}, the ID of that name and key")]
    KeyIdMismatch {
        /// The key's name.
        name: String,
        /// Its stated ID, hex.
        found: String,
        /// The computed ID, hex.
        expected: String,
    },
    /// A cosignature line's bytes are not timestamp and signature.
    #[error("cosignature of {0}: not an 8-byte timestamp and a 64-byte Ed25519 signature")]
    MalformedCosignature(String),
    /// A timestamp beyond 2^63 - 1.
    #[error("cosignature of {0}: timestamp beyond 2^63 - 1")]
    BadTimestamp(String),
    /// The signature does not verify under the witness key.
    #[error("cosignature of witness {0} does not verify: forged, or over another checkpoint")]
    BadCosignature(String),
    /// An add-checkpoint request does not parse.
    #[error("add-checkpoint request: {0}")]
    BadRequest(&'static str),
    /// The checkpoint in a request or response does not parse.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Fewer witnesses cosigned than required.
    #[error(
        "{got} of the configured witnesses cosigned the checkpoint of size {size}, {need} required"
    )]
    NoQuorum {
        /// Tree size.
        size: u64,
        /// Valid witness cosignatures.
        got: usize,
        /// Required.
        need: usize,
    },
    /// The witness could not be reached or answered with an error status.
    #[error("witness {url}: {reason}")]
    Http {
        /// Its URL.
        url: String,
        /// What happened.
        reason: String,
    },
}

/// A witness's verifier key.
#[derive(Clone, PartialEq, Eq)]
pub struct WitnessKey {
    /// Its name (the key name of its signature lines).
    pub name: String,
    /// The Ed25519 public key.
    pub key: [u8; 32],
}

impl fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.vkey())
    }
}

impl WitnessKey {
    /// The key ID: `SHA-256(name || "\n" || 0x04 || key)[:4]`.
    pub fn key_id(&self) -> [u8; 4] {
        let d = Sha256Digest::of_parts(&[
            self.name.as_bytes(),
            b"\n",
            &[ALG_COSIGNATURE_V1],
            &self.key,
        ]);
        let mut id = [0u8; 4];
        id.copy_from_slice(&d.0[..4]);
        id
    }

    /// The verifier key string.
    pub fn vkey(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(&self.key);
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(raw)
        )
    }

    /// Parses a verifier key `<name>+<hex key ID>+<base64(0x04 || key)>`
    /// and checks its ID.
    pub fn parse(s: &str) -> Result<WitnessKey, WitnessError> {
        let bad = || WitnessError::BadKey(s.chars().take(200).collect());
        // The name has no '+'; the base64 key may.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if name.is_empty()
            || name.len() > 256
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '+')
        {
            return Err(bad());
        }
        let raw = B64.decode(b64).map_err(|_| bad())?;
        let (alg, key) = raw.split_first().ok_or_else(bad)?;
        if *alg != ALG_COSIGNATURE_V1 {
            return Err(bad());
        }
        let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
        let k = WitnessKey {
            name: name.to_string(),
            key,
        };
        let id = hex::decode(id).map_err(|_| bad())?;
        if id.as_slice() != k.key_id() {
            let expected = hex::encode(k.key_id());
            return Err(WitnessError::KeyIdMismatch {
                name: k.name,
                found: hex::encode(&id),
                expected,
            });
        }
        Ok(k)
    }
}

/// The message a `cosignature/v1` signs: the header and timestamp lines,
/// then the checkpoint's note text.
pub fn cosigned_message(checkpoint: &Checkpoint, timestamp: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(checkpoint.body().as_bytes());
    m
}

/// Verifies `line` as `key`'s cosignature of `checkpoint`; returns its
/// timestamp. The caller has matched the line's name and key ID to `key`.
pub fn verify_cosignature(
    line: &NoteSignature,
    key: &WitnessKey,
    checkpoint: &Checkpoint,
) -> Result<u64, WitnessError> {
    let (ts, sig) = line
        .signature
        .split_first_chunk::<8>()
        .filter(|(_, sig)| sig.len() == 64)
        .ok_or_else(|| WitnessError::MalformedCosignature(key.name.clone()))?;
    let ts = u64::from_be_bytes(*ts);
    if ts > MAX_TIMESTAMP {
        return Err(WitnessError::BadTimestamp(key.name.clone()));
    }
    UnparsedPublicKey::new(&ED25519, &key.key)
        .verify(&cosigned_message(checkpoint, ts), sig)
        .map_err(|_| WitnessError::BadCosignature(key.name.clone()))?;
    Ok(ts)
}

/// The configured witnesses whose cosignatures of `cp` verify. A line with
/// a configured witness's name and key ID that does not verify is an error
/// (a forgery); lines of other signers are ignored, as signed-note says.
pub fn cosigned_by(
    cp: &SignedCheckpoint,
    keys: &[WitnessKey],
) -> Result<BTreeSet<String>, WitnessError> {
    let mut out = BTreeSet::new();
    for line in &cp.signatures {
        for k in keys {
            if line.name == k.name && line.key_id == k.key_id() {
                verify_cosignature(line, k, &cp.checkpoint)?;
                out.insert(k.name.clone());
            }
        }
    }
    Ok(out)
}

/// Requires `need` of `keys` to have cosigned `cp` ([`cosigned_by`]).
pub fn require_witnesses(
    cp: &SignedCheckpoint,
    keys: &[WitnessKey],
    need: usize,
) -> Result<BTreeSet<String>, WitnessError> {
    let got = cosigned_by(cp, keys)?;
    if got.len() < need {
        return Err(WitnessError::NoQuorum {
            size: cp.checkpoint.size.0,
            got: got.len(),
            need,
        });
    }
    Ok(got)
}

/// Signs `checkpoint` as the witness `name` with `key` at `timestamp`
/// (what a witness does; the test suite's minimal witness uses it).
pub fn cosign(
    key: &ring::signature::Ed25519KeyPair,
    name: &str,
    checkpoint: &Checkpoint,
    timestamp: u64,
) -> NoteSignature {
    use ring::signature::KeyPair as _;
    let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap_or([0; 32]);
    let wk = WitnessKey {
        name: name.to_string(),
        key: public,
    };
    let mut sig = timestamp.to_be_bytes().to_vec();
    sig.extend_from_slice(key.sign(&cosigned_message(checkpoint, timestamp)).as_ref());
    NoteSignature {
        name: name.to_string(),
        key_id: wk.key_id(),
        signature: sig,
    }
}

/// An add-checkpoint request body.
pub fn add_checkpoint_body(old: u64, proof: &[Sha256Digest], note: &str) -> String {
    let mut s = format!("old {old}\n");
    for h in proof {
        s.push_str(&B64.encode(h.0));
        s.push('\n');
    }
    s.push('\n');
    s.push_str(note);
    s
}

/// A parsed add-checkpoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the client believes the witness holds.
    pub old: u64,
    /// The consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<Sha256Digest>,
    /// The signed checkpoint.
    pub checkpoint: SignedCheckpoint,
}

/// Parses an add-checkpoint request body; typed errors, never a panic.
pub fn parse_add_checkpoint(body: &[u8]) -> Result<AddCheckpoint, WitnessError> {
    use WitnessError::BadRequest as Bad;
    if body.len() > MAX_BODY {
        return Err(Bad("body too large"));
    }
    let text = std::str::from_utf8(body).map_err(|_| Bad("not UTF-8"))?;
    let (first, rest) = text.split_once('\n').ok_or(Bad("no old size line"))?;
    let old = first
        .strip_prefix("old ")
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .filter(|d| *d == "0" || !d.starts_with('0'))
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or(Bad("the first line is not `old <decimal size>`"))?;
    let mut proof = Vec::new();
    let mut rest = rest;
    loop {
        let (line, after) = rest
            .split_once('\n')
            .ok_or(Bad("no blank line before the checkpoint"))?;
        rest = after;
        if line.is_empty() {
            break;
        }
        if proof.len() == MAX_PROOF_LINES {
            return Err(Bad("more than 63 consistency proof lines"));
        }
        let raw = B64
            .decode(line)
            .map_err(|_| Bad("a proof line is not base64"))?;
        let h: [u8; 32] = raw
            .try_into()
            .map_err(|_| Bad("a proof line is not a 32-byte hash"))?;
        proof.push(Sha256Digest(h));
    }
    let checkpoint = SignedCheckpoint::parse(rest.as_bytes())
        .map_err(|e| WitnessError::Checkpoint(e.to_string()))?;
    if old > checkpoint.checkpoint.size.0 {
        return Err(Bad("the old size exceeds the checkpoint's size"));
    }
    Ok(AddCheckpoint {
        old,
        proof,
        checkpoint,
    })
}

/// Parses a 200 answer's signature lines as lines of `checkpoint` (the
/// answer appended to the note text, as the spec suggests).
pub fn parse_response(
    checkpoint: &Checkpoint,
    body: &[u8],
) -> Result<Vec<NoteSignature>, WitnessError> {
    if body.len() > MAX_BODY {
        return Err(WitnessError::BadRequest("response too large"));
    }
    let mut note = checkpoint.body().into_bytes();
    note.push(b'\n');
    note.extend_from_slice(body);
    SignedCheckpoint::parse(&note)
        .map(|c| c.signatures)
        .map_err(|e| WitnessError::Checkpoint(e.to_string()))
}

/// What a witness answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Cosigned: its signature lines (not yet verified).
    Cosigned(Vec<NoteSignature>),
    /// 409: it holds a checkpoint of this size; submit again from it.
    Conflict(u64),
}

/// Submits `note` (the checkpoint `checkpoint`, signed) with the
/// consistency `proof` from `old` to the witness at `url`
/// (`http://host:port[/prefix]`; plain HTTP: the cosignature, not the
/// channel, is what is trusted).
pub async fn submit(
    url: &str,
    old: u64,
    proof: &[Sha256Digest],
    checkpoint: &Checkpoint,
    note: &str,
) -> Result<Submitted, WitnessError> {
    use http_body_util::{BodyExt, Full};
    let err = |reason: String| WitnessError::Http {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| err("only http:// witness URLs are supported".into()))?;
    let (authority, prefix) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let path = format!("{}/add-checkpoint", prefix.trim_end_matches('/'));
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| err("connect timed out".into()))?
    .map_err(|e| err(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| err(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::post(&path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(bytes::Bytes::from(add_checkpoint_body(
            old, proof, note,
        ))))
        .map_err(|e| err(e.to_string()))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| err("no answer within 10 s".into()))?
        .map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .to_bytes();
    match status.as_u16() {
        200 => parse_response(checkpoint, &body).map(Submitted::Cosigned),
        409 => {
            let size = std::str::from_utf8(&body)
                .ok()
                .and_then(|s| s.strip_suffix('\n'))
                .and_then(|s| s.parse::<u64>().ok());
            match size {
                Some(n) => Ok(Submitted::Conflict(n)),
                None => Err(err(
                    "409 Conflict: the root differs from the one it cosigned at this size".into(),
                )),
            }
        }
        s => Err(err(format!(
            "answered {s}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ))),
    }
}

/// One configured witness: where to submit and the key its lines verify
/// under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    /// Its submission prefix (`http://host:port[/prefix]`).
    pub url: String,
    /// Its verifier key.
    pub key: WitnessKey,
}

/// What a submission task reports back.
type Report = (usize, u64, Result<Submitted, WitnessError>);

/// The daemon's side of the witness protocol: after each certified
/// checkpoint it submits the stored note with a consistency proof from the
/// size each witness is known to hold, re-submits once from the size a 409
/// names, verifies the cosignatures that come back and adds them to the
/// stored note (so exports carry them). Submissions run as tasks; their
/// results are applied by [`Submitter::poll`] on the daemon's tick.
pub struct Submitter {
    witnesses: Vec<Witness>,
    /// Per witness: the size it is known to hold.
    known: Vec<u64>,
    /// (witness, size, old) submissions made, to re-submit at most once.
    tried: BTreeSet<(usize, u64, u64)>,
    /// Cosignature lines added per size (the latest few), put back if a
    /// fuller note from the parties replaces the stored one.
    added: std::collections::BTreeMap<u64, Vec<NoteSignature>>,
    tx: tokio::sync::mpsc::UnboundedSender<Report>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Report>,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submitter")
            .field("witnesses", &self.witnesses)
            .field("known", &self.known)
            .finish()
    }
}

impl Submitter {
    /// A submitter for `witnesses` (none: it does nothing).
    pub fn new(witnesses: Vec<Witness>) -> Submitter {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Submitter {
            known: vec![0; witnesses.len()],
            witnesses,
            tried: BTreeSet::new(),
            added: std::collections::BTreeMap::new(),
            tx,
            rx,
        }
    }

    /// The certified checkpoint `cp` was stored: submit it to every witness.
    pub fn certified(&mut self, store: &crate::store::Store, cp: &SignedCheckpoint) {
        if let Some(lines) = self.added.get(&cp.checkpoint.size.0) {
            let mut fuller = cp.clone();
            for l in lines {
                if !fuller
                    .signatures
                    .iter()
                    .any(|x| x.name == l.name && x.key_id == l.key_id)
                {
                    fuller.signatures.push(l.clone());
                }
            }
            if fuller != *cp {
                if let Err(e) = store.put_checkpoint(cp.checkpoint.size, &fuller.format()) {
                    tracing::warn!(error = %e, "cannot keep the witness cosignatures");
                }
            }
        }
        for i in 0..self.witnesses.len() {
            self.send(store, i, cp);
        }
    }

    fn send(&mut self, store: &crate::store::Store, i: usize, cp: &SignedCheckpoint) {
        let (Some(w), Some(old)) = (self.witnesses.get(i), self.known.get(i).copied()) else {
            return;
        };
        let size = cp.checkpoint.size.0;
        if old > size || !self.tried.insert((i, size, old)) {
            return;
        }
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            match store.consistency_proof(
                quorate_firmware::audit::merkle::TreeSize(old),
                cp.checkpoint.size,
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(witness = %w.url, error = %e, "no consistency proof for the witness");
                    return;
                }
            }
        };
        let url = w.url.clone();
        let note = cp.format();
        let checkpoint = cp.checkpoint.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = submit(&url, old, &proof, &checkpoint, &note).await;
            let _ = tx.send((i, size, r));
        });
    }

    /// Applies the answers received since the last call: verified
    /// cosignatures are added to the stored note of their size; a 409
    /// re-submits from the size the witness holds. Returns how many
    /// cosignatures were added.
    pub fn poll(&mut self, store: &crate::store::Store) -> usize {
        let mut added = 0;
        while let Ok((i, size, r)) = self.rx.try_recv() {
            let Some(w) = self.witnesses.get(i).cloned() else {
                continue;
            };
            let stored = match store.checkpoint(quorate_firmware::audit::merkle::TreeSize(size)) {
                Ok(Some(n)) => n,
                _ => continue,
            };
            let Ok(mut cp) = SignedCheckpoint::parse(stored.as_bytes()) else {
                continue;
            };
            match r {
                Ok(Submitted::Cosigned(lines)) => {
                    let mine: Vec<NoteSignature> = lines
                        .into_iter()
                        .filter(|l| l.name == w.key.name && l.key_id == w.key.key_id())
                        .collect();
                    let mut ok = false;
                    for l in mine {
                        match verify_cosignature(&l, &w.key, &cp.checkpoint) {
                            Ok(_) => {
                                cp.signatures
                                    .retain(|x| !(x.name == l.name && x.key_id == l.key_id));
                                cp.signatures.push(l.clone());
                                let kept = self.added.entry(size).or_default();
                                kept.retain(|x| x.name != l.name);
                                kept.push(l);
                                while self.added.len() > 16 {
                                    self.added.pop_first();
                                }
                                ok = true;
                            }
                            Err(e) => {
                                tracing::warn!(witness = %w.url, error = %e, "witness cosignature refused")
                            }
                        }
                    }
                    if ok {
                        if let Some(k) = self.known.get_mut(i) {
                            *k = (*k).max(size);
                        }
                        match store.put_checkpoint(cp.checkpoint.size, &cp.format()) {
                            Ok(()) => {
                                added += 1;
                                tracing::info!(witness = %w.key.name, size, "checkpoint cosigned by a witness");
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot store the witness cosignature")
                            }
                        }
                    }
                }
                Ok(Submitted::Conflict(held)) => {
                    if let Some(k) = self.known.get_mut(i) {
                        *k = held;
                    }
                    self.send(store, i, &cp);
                }
                Err(e) => tracing::warn!(witness = %w.url, error = %e, "witness submission failed"),
            }
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_firmware::audit::merkle::TreeSize;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn witness(name: &str) -> (Ed25519KeyPair, WitnessKey) {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = WitnessKey {
            name: name.into(),
            key: kp.public_key().as_ref().try_into().unwrap(),
        };
        (kp, key)
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "quorate/abc".into(),
            size: TreeSize(8),
            root: Sha256Digest::of(b"root"),
            extensions: vec![],
        }
    }

    #[test]
    fn a_cosignature_verifies_and_a_forged_one_does_not() {
        let (kp, key) = witness("witness.example/w1");
        let cp = checkpoint();
        let line = cosign(&kp, &key.name, &cp, 1_679_315_147);
        assert_eq!(line.key_id, key.key_id());
        assert_eq!(verify_cosignature(&line, &key, &cp), Ok(1_679_315_147));
        // Another checkpoint, another timestamp, a flipped bit, another key.
        let mut other = cp.clone();
        other.size = TreeSize(9);
        assert!(matches!(
            verify_cosignature(&line, &key, &other),
            Err(WitnessError::BadCosignature(_))
        ));
        let mut l = line.clone();
        l.signature[7] ^= 1;
        assert!(verify_cosignature(&l, &key, &cp).is_err());
        let mut l = line.clone();
        l.signature[40] ^= 1;
        assert!(verify_cosignature(&l, &key, &cp).is_err());
        let (_, stranger) = witness("witness.example/w1");
        assert!(verify_cosignature(&line, &stranger, &cp).is_err());
        l = line.clone();
        l.signature.truncate(70);
        assert!(matches!(
            verify_cosignature(&l, &key, &cp),
            Err(WitnessError::MalformedCosignature(_))
        ));
        // A quorum over a signed note: a forged line of a configured witness
        // is an error, an unknown signer is ignored.
        let (kp2, key2) = witness("witness.example/w2");
        let signed = SignedCheckpoint {
            checkpoint: cp.clone(),
            signatures: vec![line.clone(), cosign(&kp2, &key2.name, &cp, 5)],
        };
        let both = [key.clone(), key2.clone()];
        assert_eq!(require_witnesses(&signed, &both, 2).unwrap().len(), 2);
        assert!(matches!(
            require_witnesses(&signed, std::slice::from_ref(&key), 2),
            Err(WitnessError::NoQuorum {
                got: 1,
                need: 2,
                ..
            })
        ));
        let mut forged = signed.clone();
        forged.signatures[1].signature[20] ^= 1;
        assert!(matches!(
            require_witnesses(&forged, &both, 1),
            Err(WitnessError::BadCosignature(_))
        ));
    }

    #[test]
    fn the_spec_example_message_and_vkeys_round_trip() {
        let cp = Checkpoint {
            origin: "example.com/behind-the-sofa".into(),
            size: TreeSize(20_852_163),
            root: Sha256Digest(
                B64.decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
                    .unwrap()
                    .try_into()
                    .unwrap(),
            ),
            extensions: vec![],
        };
        assert_eq!(
            String::from_utf8(cosigned_message(&cp, 1_679_315_147)).unwrap(),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
        // Many keys: base64 key material containing '+' must round-trip.
        for _ in 0..64 {
            let (_, k) = witness("witness.example.com/w1");
            assert_eq!(WitnessKey::parse(&k.vkey()).unwrap(), k);
        }
        let (_, key) = witness("witness.example.com/w1");
        let v = key.vkey();
        let (head, tail) = v.split_at(key.name.len() + 1);
        let mut id = tail[..8].to_string();
        id.replace_range(0..1, if &id[0..1] == "0" { "1" } else { "0" });
        assert!(matches!(
            WitnessKey::parse(&format!("{head}{id}{}", &tail[8..])),
            Err(WitnessError::KeyIdMismatch { .. })
        ));
        for bad in ["", "a+b", "n+00000000+AAAA", "+00+AA==", "n+zz+BA=="] {
            assert!(WitnessKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn add_checkpoint_requests_round_trip_and_malformed_ones_are_refused() {
        let (kp, key) = witness("w");
        let cp = checkpoint();
        let note = SignedCheckpoint {
            checkpoint: cp.clone(),
            signatures: vec![cosign(&kp, &key.name, &cp, 1)],
        }
        .format();
        let proof = vec![Sha256Digest::of(b"a"), Sha256Digest::of(b"b")];
        let body = add_checkpoint_body(4, &proof, &note);
        let r = parse_add_checkpoint(body.as_bytes()).unwrap();
        assert_eq!(
            (r.old, r.proof, r.checkpoint.format()),
            (4, proof, note.clone())
        );
        for bad in [
            "".to_string(),
            format!("old 04\n\n{note}"),
            format!("old 9\n\n{note}"),
            format!("old 4\nnot-base64!\n\n{note}"),
            format!("old 4\n{}\n\n{note}", B64.encode([1u8; 31])),
            format!("new 4\n\n{note}"),
            format!("old 4\n{note}"),
            format!(
                "old 0\n{}\n{note}",
                format!("{}\n", B64.encode([0u8; 32])).repeat(64)
            ),
        ] {
            assert!(parse_add_checkpoint(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // A response is signature lines of the checkpoint.
        let line = cosign(&kp, &key.name, &cp, 3);
        let resp = SignedCheckpoint {
            checkpoint: cp.clone(),
            signatures: vec![line.clone()],
        }
        .format();
        let lines = resp.split_once("\n\n").unwrap().1;
        assert_eq!(parse_response(&cp, lines.as_bytes()).unwrap(), vec![line]);
        assert!(parse_response(&cp, b"garbage\n").is_err());
        assert!(parse_response(&cp, b"").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_daemon_submits_to_a_witness_with_consistency_proofs_and_stores_its_cosignatures() {
        use crate::audit::test_witness::TestWitness;
        use quorate_firmware::audit::checkpoint::{cosignature, origin_for};
        use quorate_firmware::audit::merkle::{CompactTree, LeafIndex};
        use quorate_firmware::crypto::{PublicKey, Signature};
        use quorate_firmware::types::{ClusterId, PartyId};
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let vote = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = PublicKey(vote.public_key().as_ref().try_into().unwrap());
        let origin = origin_for(&ClusterId(Sha256Digest::of(b"witness test")));
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), "p").unwrap();
        let mut tree = CompactTree::new();
        let mut roots = std::collections::BTreeMap::new();
        let entries: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut nodes = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            nodes.extend(tree.append(e).1);
            roots.insert(i as u64 + 1, tree.root());
        }
        store.append_log(LeafIndex(0), &entries, &nodes).unwrap();
        let signed = |size: u64, root: Sha256Digest| {
            let checkpoint = Checkpoint {
                origin: origin.clone(),
                size: TreeSize(size),
                root,
                extensions: vec![],
            };
            let sig = vote.sign(&rng, &checkpoint.cosign_message()).unwrap();
            let line = cosignature(
                &origin,
                PartyId(1),
                &public,
                &Signature(sig.as_ref().try_into().unwrap()),
            );
            SignedCheckpoint {
                checkpoint,
                signatures: vec![line],
            }
        };
        let w = TestWitness::start("witness.test/w1").unwrap();
        w.trust(
            &origin,
            std::collections::BTreeMap::from([(PartyId(1), public)]),
        );
        let witness = Witness {
            url: w.url(),
            key: w.key(),
        };
        let wait_for = |sub: &mut Submitter, n: usize| {
            let mut got = 0;
            for _ in 0..500 {
                got += sub.poll(&store);
                if got >= n {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!(
                "no cosignature within 5 s; witness answered {:?}",
                w.answered()
            );
        };
        let mut sub = Submitter::new(vec![witness.clone()]);
        for size in [100u64, 300] {
            let cp = signed(size, roots[&size]);
            store.put_checkpoint(TreeSize(size), &cp.format()).unwrap();
            sub.certified(&store, &cp);
            wait_for(&mut sub, 1);
            let stored = store.checkpoint(TreeSize(size)).unwrap().unwrap();
            let stored = SignedCheckpoint::parse(stored.as_bytes()).unwrap();
            assert_eq!(require_witnesses(&stored, &[w.key()], 1).unwrap().len(), 1);
            // The parties' own line is still there.
            assert_eq!(stored.signatures.len(), 2);
        }
        assert_eq!(w.latest(&origin), Some((300, roots[&300])));
        // Another party's daemon, not knowing the witness's size: 409, then
        // from the size the witness holds.
        let mut other = Submitter::new(vec![witness.clone()]);
        other.certified(&store, &signed(300, roots[&300]));
        wait_for(&mut other, 1);
        assert_eq!(w.answered(), vec![200, 200, 409, 200]);
        // A forked checkpoint of the same size, and one of a larger size
        // with a proof from another tree: the witness refuses both.
        let fork = signed(300, Sha256Digest::of(b"fork"));
        let r = submit(&w.url(), 300, &[], &fork.checkpoint, &fork.format()).await;
        assert!(matches!(r, Err(WitnessError::Http { .. })), "{r:?}");
        let ahead = signed(400, Sha256Digest::of(b"ahead"));
        let proof = store
            .consistency_proof(TreeSize(100), TreeSize(300))
            .unwrap();
        let r = submit(&w.url(), 300, &proof, &ahead.checkpoint, &ahead.format()).await;
        assert!(
            matches!(&r, Err(WitnessError::Http { reason, .. }) if reason.contains("422")),
            "{r:?}"
        );
        // A log it does not know, and one signed by an untrusted key.
        let mut foreign = signed(300, roots[&300]);
        foreign.checkpoint.origin = "quorate/other".into();
        let r = submit(&w.url(), 0, &[], &foreign.checkpoint, &foreign.format()).await;
        assert!(
            matches!(&r, Err(WitnessError::Http { reason, .. }) if reason.contains("404")),
            "{r:?}"
        );
        let mut untrusted = signed(300, roots[&300]);
        untrusted.signatures[0].signature[10] ^= 1;
        let r = submit(
            &w.url(),
            300,
            &[],
            &untrusted.checkpoint,
            &untrusted.format(),
        )
        .await;
        assert!(
            matches!(&r, Err(WitnessError::Http { reason, .. }) if reason.contains("403")),
            "{r:?}"
        );
        // A forged witness line in a note is refused by the verifier.
        let stored = store.checkpoint(TreeSize(300)).unwrap().unwrap();
        let mut forged = SignedCheckpoint::parse(stored.as_bytes()).unwrap();
        forged.signatures[1].signature[30] ^= 1;
        assert!(matches!(
            cosigned_by(&forged, &[w.key()]),
            Err(WitnessError::BadCosignature(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_requests_and_keys_never_panic(b in proptest::collection::vec(0u8.., 0..400), s in ".{0,120}") {
            let _ = parse_add_checkpoint(&b);
            let _ = parse_response(&checkpoint(), &b);
            let _ = WitnessKey::parse(&s);
        }
    }
}
