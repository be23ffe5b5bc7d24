//! Checkpoints of the audit log in the C2SP `tlog-checkpoint` text format,
//! signed as C2SP signed notes.
//!
//! ```text
//! quorate/<cluster id hex>
//! 1234
//! <base64 root hash>
//! [extension lines]
//!
//! — quorate/<cluster id hex>/P1/tpm <base64(key id || TPM quote signature)>
//! — quorate/<cluster id hex>/P2/vote <base64(key id || ECDSA P-256 r||s)>
//! ```
//!
//! Two kinds of signature line, told apart by the key name's last segment:
//!
//! - `/P<n>/tpm`: party n's TPM quote over its PCRs whose qualifying data is
//!   [`Checkpoint::quote_qualifying_data`]. Its bytes are opaque here (the
//!   host encodes the TPMS_ATTEST and its signature); the attestation crate
//!   verifies them, plugged in by the host.
//! - `/P<n>/vote`: party n's cosignature with its vote key, ECDSA P-256 over
//!   [`Checkpoint::cosign_message`], verified here.
//!
//! Key IDs follow the C2SP recommendation, `SHA-256(name || 0x0A || type ||
//! public key)[:4]`, with type `0xff` followed by a Quorate identifier
//! string, as the specification reserves for types it does not assign.
//! A checkpoint is *certified* once cosignatures of a quorum of parties
//! ([`FaultModel::quorum`]) verify.

use crate::crypto::{PublicKey, Signature};
use crate::types::{ClusterId, FaultModel, PartyId, Sha256Digest};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::merkle::TreeSize;

/// Domain tag prefixed to the note text for the TPM quote's qualifying data.
pub const QUOTE_DOMAIN: &[u8] = b"quorate/audit/checkpoint-quote/v1\n";
/// Domain tag prefixed to the note text for cosignatures.
pub const COSIGN_DOMAIN: &[u8] = b"quorate/audit/checkpoint-cosign/v1\n";
/// Signature type identifier of TPM quote lines (after the `0xff` byte).
pub const QUOTE_SIG_TYPE: &[u8] = b"quorate-tpm-quote-v1";
/// Signature type identifier of cosignature lines (after the `0xff` byte).
pub const COSIGN_SIG_TYPE: &[u8] = b"quorate-ecdsa-p256-cosign-v1";
/// Largest signed checkpoint accepted by the parser, in bytes.
pub const MAX_CHECKPOINT_BYTES: usize = 128 * 1024;
/// Most signature lines accepted (C2SP requires at least 16).
pub const MAX_SIGNATURES: usize = 256;
/// Most extension lines accepted.
pub const MAX_EXTENSIONS: usize = 32;

/// The checkpoint's origin line for a cluster: `quorate/<cluster id hex>`.
pub fn origin_for(cluster: &ClusterId) -> String {
    format!("quorate/{}", cluster.0)
}

/// A checkpoint body: origin, tree size, root hash and extension lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Identifies the log (see [`origin_for`]).
    pub origin: String,
    /// Number of entries.
    pub size: TreeSize,
    /// The Merkle root over them.
    pub root: Sha256Digest,
    /// Optional extension lines (non-empty, no newline).
    pub extensions: Vec<String>,
}

/// What a signature line says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SignerRole {
    /// A TPM quote (`…/P<n>/tpm`).
    Quote,
    /// A vote-key cosignature (`…/P<n>/vote`).
    Cosign,
}

/// One signature line of a signed note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The 4-byte key ID.
    pub key_id: [u8; 4],
    /// The signature bytes after the key ID.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A checkpoint with its signature lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// The body.
    pub checkpoint: Checkpoint,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

/// Text that is not a well-formed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Over [`MAX_CHECKPOINT_BYTES`].
    #[error("checkpoint of {0} bytes exceeds the {MAX_CHECKPOINT_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not UTF-8.
    #[error("checkpoint is not UTF-8")]
    NotUtf8,
    /// A control character other than newline.
    #[error("checkpoint contains a control character other than newline")]
    ControlCharacter,
    /// No blank line separates the text from its signatures.
    #[error("no blank line separates the checkpoint text from its signatures")]
    NoSignatureBlock,
    /// The text has fewer than three lines.
    #[error("checkpoint text needs an origin, a tree size and a root hash line")]
    MissingLine,
    /// The origin line is empty.
    #[error("empty origin line")]
    EmptyOrigin,
    /// The size line is not a canonical decimal number.
    #[error("tree size line {0:?} is not a decimal number without leading zeros")]
    BadSize(String),
    /// The root line is not base64 of 32 bytes.
    #[error("root hash line is not the base64 encoding of 32 bytes")]
    BadRoot,
    /// An empty extension line.
    #[error("empty extension line in the checkpoint text")]
    EmptyExtension,
    /// Too many extension lines.
    #[error("more than {MAX_EXTENSIONS} extension lines")]
    TooManyExtensions,
    /// A signature line does not start with an em dash and a space.
    #[error("signature line {0} does not start with \"— \"")]
    BadSignatureLine(usize),
    /// A key name is empty or contains a space or a plus.
    #[error("signature line {0} has an invalid key name")]
    BadKeyName(usize),
    /// A signature is not base64 of at least five bytes.
    #[error("signature line {0} is not base64 of a key ID and a signature")]
    BadSignature(usize),
    /// No signature lines.
    #[error("checkpoint has no signatures")]
    NoSignatures,
    /// Too many signature lines.
    #[error("more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, extensions, each ending in
    /// a newline. This is what every signature covers.
    pub fn body(&self) -> String {
        let mut s = String::with_capacity(128);
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            "{}\n{}\n{}\n",
            self.origin,
            self.size.0,
            B64.encode(self.root.0)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// The TPM quote's qualifying data (`extraData`):
    /// `SHA-256(QUOTE_DOMAIN || body)`.
    pub fn quote_qualifying_data(&self) -> Sha256Digest {
        Sha256Digest::of_parts(&[QUOTE_DOMAIN, self.body().as_bytes()])
    }

    /// The bytes a cosigner signs with its vote key: `COSIGN_DOMAIN || body`.
    pub fn cosign_message(&self) -> Vec<u8> {
        let mut m = COSIGN_DOMAIN.to_vec();
        m.extend_from_slice(self.body().as_bytes());
        m
    }

    /// Parses the note text (with its final newline).
    pub fn parse_body(text: &str) -> Result<Self, ParseError> {
        let inner = text.strip_suffix('\n').ok_or(ParseError::MissingLine)?;
        let mut lines = inner.split('\n');
        let origin = lines.next().ok_or(ParseError::MissingLine)?;
        if origin.is_empty() {
            return Err(ParseError::EmptyOrigin);
        }
        let size_line = lines.next().ok_or(ParseError::MissingLine)?;
        let size = parse_decimal(size_line)
            .ok_or_else(|| ParseError::BadSize(size_line.chars().take(32).collect()))?;
        let root_line = lines.next().ok_or(ParseError::MissingLine)?;
        let root_bytes = B64.decode(root_line).map_err(|_| ParseError::BadRoot)?;
        let root: [u8; 32] = root_bytes.try_into().map_err(|_| ParseError::BadRoot)?;
        let mut extensions = Vec::new();
        for l in lines {
            if l.is_empty() {
                return Err(ParseError::EmptyExtension);
            }
            if extensions.len() == MAX_EXTENSIONS {
                return Err(ParseError::TooManyExtensions);
            }
            extensions.push(l.to_owned());
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size: TreeSize(size),
            root: Sha256Digest(root),
            extensions,
        })
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

impl NoteSignature {
    /// The key name's party and role, if it follows Quorate's naming
    /// (`<origin>/P<n>/tpm` or `<origin>/P<n>/vote`) for this origin.
    pub fn signer(&self, origin: &str) -> Option<(PartyId, SignerRole)> {
        let rest = self.name.strip_prefix(origin)?.strip_prefix("/P")?;
        let (num, role) = rest.split_once('/')?;
        let role = match role {
            "tpm" => SignerRole::Quote,
            "vote" => SignerRole::Cosign,
            _ => return None,
        };
        let id = parse_decimal(num).and_then(|n| u32::try_from(n).ok())?;
        (id != 0).then_some((PartyId(id), role))
    }
}

impl SignedCheckpoint {
    /// The signed note text.
    pub fn format(&self) -> String {
        let mut s = self.checkpoint.body();
        s.push('\n');
        for sig in &self.signatures {
            let mut raw = sig.key_id.to_vec();
            raw.extend_from_slice(&sig.signature);
            s.push_str("\u{2014} ");
            s.push_str(&sig.name);
            s.push(' ');
            s.push_str(&B64.encode(raw));
            s.push('\n');
        }
        s
    }

    /// Parses a signed checkpoint; typed errors, never a panic.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_CHECKPOINT_BYTES {
            return Err(ParseError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ParseError::ControlCharacter);
        }
        // The text ends at the last blank line.
        let split = text.rfind("\n\n").ok_or(ParseError::NoSignatureBlock)?;
        let (body, sigs) = (
            text.get(..split + 1).ok_or(ParseError::NoSignatureBlock)?,
            text.get(split + 2..).ok_or(ParseError::NoSignatureBlock)?,
        );
        let checkpoint = Checkpoint::parse_body(body)?;
        let sigs = sigs.strip_suffix('\n').ok_or(ParseError::NoSignatures)?;
        let mut signatures = Vec::new();
        for (i, line) in sigs.split('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(ParseError::TooManySignatures);
            }
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(ParseError::BadSignatureLine(i))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(ParseError::BadSignatureLine(i))?;
            if !valid_key_name(name) {
                return Err(ParseError::BadKeyName(i));
            }
            let raw = B64.decode(b64).map_err(|_| ParseError::BadSignature(i))?;
            if raw.len() < 5 {
                return Err(ParseError::BadSignature(i));
            }
            let (id, sig) = raw.split_at(4);
            let key_id: [u8; 4] = id.try_into().map_err(|_| ParseError::BadSignature(i))?;
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id,
                signature: sig.to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(ParseError::NoSignatures);
        }
        Ok(SignedCheckpoint {
            checkpoint,
            signatures,
        })
    }
}

/// The key name of party `party`'s line of role `role` under `origin`.
pub fn key_name(origin: &str, party: PartyId, role: SignerRole) -> String {
    let r = match role {
        SignerRole::Quote => "tpm",
        SignerRole::Cosign => "vote",
    };
    format!("{origin}/P{}/{r}", party.0)
}

fn key_id(name: &str, sig_type: &[u8], public: &[u8]) -> [u8; 4] {
    let d = Sha256Digest::of_parts(&[name.as_bytes(), b"\n", &[0xff], sig_type, public]);
    [d.0[0], d.0[1], d.0[2], d.0[3]]
}

/// Key ID of a cosignature line: `SHA-256(name || 0x0A || 0xff ||
/// COSIGN_SIG_TYPE || vote key (65-byte SEC1))[:4]`.
pub fn cosign_key_id(name: &str, vote_key: &PublicKey) -> [u8; 4] {
    key_id(name, COSIGN_SIG_TYPE, &vote_key.0)
}

/// Key ID of a quote line: `SHA-256(name || 0x0A || 0xff ||
/// QUOTE_SIG_TYPE || AK public area (TPM2B_PUBLIC bytes))[:4]`.
pub fn quote_key_id(name: &str, ak_public: &[u8]) -> [u8; 4] {
    key_id(name, QUOTE_SIG_TYPE, ak_public)
}

/// The cosignature line of `party` whose vote key made `sig` over
/// [`Checkpoint::cosign_message`].
pub fn cosignature(
    origin: &str,
    party: PartyId,
    vote_key: &PublicKey,
    sig: &Signature,
) -> NoteSignature {
    let name = key_name(origin, party, SignerRole::Cosign);
    NoteSignature {
        key_id: cosign_key_id(&name, vote_key),
        name,
        signature: sig.0.to_vec(),
    }
}

/// The quote line of `party`: `quote` is the host's encoding of the TPM
/// quote (attestation data and its AK signature).
pub fn quote_signature(
    origin: &str,
    party: PartyId,
    ak_public: &[u8],
    quote: Vec<u8>,
) -> NoteSignature {
    let name = key_name(origin, party, SignerRole::Quote);
    NoteSignature {
        key_id: quote_key_id(&name, ak_public),
        name,
        signature: quote,
    }
}

/// Why a checkpoint is not certified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CosignError {
    /// The checkpoint is for another log.
    #[error("checkpoint origin {got:?} is not this log's {want:?}")]
    WrongOrigin {
        /// Its origin.
        got: String,
        /// The expected origin.
        want: String,
    },
    /// A line names a party outside the party set.
    #[error("checkpoint carries a signature line of {0}, which is not a party")]
    NotAParty(PartyId),
    /// A line names a party but its key ID is not that party's key.
    #[error("signature line of {0} has a key ID that does not match its vote key")]
    WrongKeyId(PartyId),
    /// A party's cosignature does not verify.
    #[error("cosignature of {0} does not verify over this checkpoint")]
    BadCosignature(PartyId),
    /// Fewer valid cosignatures than the quorum.
    #[error("checkpoint has valid cosignatures of {got} parties, a quorum is {need}")]
    NoQuorum {
        /// Distinct parties whose cosignatures verified.
        got: usize,
        /// The quorum.
        need: usize,
    },
}

/// Checks one cosignature line of `party` (vote key `key`): its key ID and
/// its signature over `msg`, the checkpoint's [`Checkpoint::cosign_message`].
pub fn verify_cosignature(
    line: &NoteSignature,
    party: PartyId,
    key: &PublicKey,
    msg: &[u8],
) -> Result<(), CosignError> {
    if line.key_id != cosign_key_id(&line.name, key) {
        return Err(CosignError::WrongKeyId(party));
    }
    let sig: [u8; 64] = line
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| CosignError::BadCosignature(party))?;
    key.verify(msg, &Signature(sig))
        .map_err(|_| CosignError::BadCosignature(party))
}

/// The outcome of checking a checkpoint's cosignatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certified {
    /// Parties whose cosignatures verified.
    pub cosigners: BTreeSet<PartyId>,
    /// Parties with a quote line (not verified here), with its index in
    /// [`SignedCheckpoint::signatures`].
    pub quotes: Vec<(PartyId, usize)>,
}

/// Checks the cosignatures of `cp` against the party set and returns who
/// cosigned and where the quote lines are. Lines in Quorate's naming for a
/// non-party, with a wrong key ID, or that fail to verify are errors (they
/// are what a forger produces); other names are ignored, as C2SP requires.
pub fn check_cosignatures(
    cp: &SignedCheckpoint,
    origin: &str,
    parties: &BTreeMap<PartyId, PublicKey>,
    fault_model: FaultModel,
) -> Result<Certified, CosignError> {
    if cp.checkpoint.origin != origin {
        return Err(CosignError::WrongOrigin {
            got: cp.checkpoint.origin.clone(),
            want: origin.to_owned(),
        });
    }
    let msg = cp.checkpoint.cosign_message();
    let mut cosigners = BTreeSet::new();
    let mut quotes = Vec::new();
    for (i, s) in cp.signatures.iter().enumerate() {
        let Some((party, role)) = s.signer(origin) else {
            continue;
        };
        let key = parties.get(&party).ok_or(CosignError::NotAParty(party))?;
        match role {
            SignerRole::Quote => quotes.push((party, i)),
            SignerRole::Cosign => {
                verify_cosignature(s, party, key, &msg)?;
                cosigners.insert(party);
            }
        }
    }
    let need = fault_model.quorum(parties.len());
    if cosigners.len() < need {
        return Err(CosignError::NoQuorum {
            got: cosigners.len(),
            need,
        });
    }
    Ok(Certified { cosigners, quotes })
}

/// When to issue a checkpoint: after every `every_entries` new entries, or
/// once `every_ms` of block time has passed with new entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    /// K: new entries that force a checkpoint (0 disables the rule).
    pub every_entries: u64,
    /// T: block time in ms after which new entries are checkpointed (0 disables).
    pub every_ms: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_entries: 1024,
            every_ms: 60_000,
        }
    }
}

impl CheckpointPolicy {
    /// Whether a checkpoint is due after a block, given the last
    /// checkpoint's `(size, block time)` (`None` before the first) and the
    /// tree size and block time now. Evaluated at block boundaries on
    /// decided values only, so every party agrees. Never due without new
    /// entries.
    pub fn due(&self, last: Option<(TreeSize, u64)>, size: TreeSize, time_ms: u64) -> bool {
        let (last_size, last_time) = last.unwrap_or((TreeSize(0), 0));
        if size <= last_size {
            return false;
        }
        if last.is_none() {
            return true;
        }
        let grown = size.0 - last_size.0;
        (self.every_entries > 0 && grown >= self.every_entries)
            || (self.every_ms > 0 && time_ms.saturating_sub(last_time) >= self.every_ms)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// Software vote keys for P1..Pn.
    pub(crate) struct Keys {
        pub pairs: BTreeMap<PartyId, EcdsaKeyPair>,
        pub public: BTreeMap<PartyId, PublicKey>,
        rng: SystemRandom,
    }

    impl Keys {
        pub fn new(n: u32) -> Self {
            let rng = SystemRandom::new();
            let mut pairs = BTreeMap::new();
            let mut public = BTreeMap::new();
            for i in 1..=n {
                let pk =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
                let kp =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk.as_ref(), &rng)
                        .unwrap();
                public.insert(
                    PartyId(i),
                    PublicKey(kp.public_key().as_ref().try_into().unwrap()),
                );
                pairs.insert(PartyId(i), kp);
            }
            Keys { pairs, public, rng }
        }

        pub fn cosign(&self, origin: &str, p: u32, cp: &Checkpoint) -> NoteSignature {
            let sig = self.pairs[&PartyId(p)]
                .sign(&self.rng, &cp.cosign_message())
                .unwrap();
            cosignature(
                origin,
                PartyId(p),
                &self.public[&PartyId(p)],
                &Signature(sig.as_ref().try_into().unwrap()),
            )
        }
    }

    fn sample() -> Checkpoint {
        Checkpoint {
            origin: origin_for(&ClusterId(Sha256Digest::of(b"cluster"))),
            size: TreeSize(1234),
            root: Sha256Digest::of(b"root"),
            extensions: vec!["height 77".into()],
        }
    }

    #[test]
    fn formats_and_parses_a_signed_checkpoint() {
        let keys = Keys::new(3);
        let cp = sample();
        let o = cp.origin.clone();
        let signed = SignedCheckpoint {
            signatures: vec![
                quote_signature(&o, PartyId(1), b"ak public", vec![0xAB; 90]),
                keys.cosign(&o, 1, &cp),
                keys.cosign(&o, 2, &cp),
                keys.cosign(&o, 3, &cp),
            ],
            checkpoint: cp.clone(),
        };
        let text = signed.format();
        assert!(text.starts_with(&format!(
            "{o}\n1234\n{}\nheight 77\n\n\u{2014} {o}/P1/tpm ",
            B64.encode(cp.root.0)
        )));
        let parsed = SignedCheckpoint::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed, signed);
        let c = check_cosignatures(&parsed, &o, &keys.public, FaultModel::Byzantine).unwrap();
        assert_eq!(c.cosigners.len(), 3);
        assert_eq!(c.quotes, vec![(PartyId(1), 0)]);
        assert_eq!(
            cp.quote_qualifying_data(),
            Sha256Digest::of_parts(&[QUOTE_DOMAIN, cp.body().as_bytes()])
        );
    }

    #[test]
    fn the_documented_example_parses_and_its_key_ids_follow_c2sp() {
        // The example of docs/AUDIT.md; its key IDs were computed
        // independently (Python hashlib) as SHA-256(name || 0x0A || 0xff ||
        // type || public key)[:4] with public keys b"AK" and b"K2".
        let o = "quorate/fffc83407ae833bd197a97b32e685dae2e7ee51ac92a49f5e70ba34c1e60cbae";
        let text = format!(
            "{o}\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n\
             \u{2014} {o}/P1/tpm yqDF5wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJic=\n\
             \u{2014} {o}/P2/vote vUb4MAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJic=\n"
        );
        let cp = SignedCheckpoint::parse(text.as_bytes()).unwrap();
        assert_eq!(cp.checkpoint.size, TreeSize(8));
        assert_eq!(
            cp.checkpoint.root.to_string(),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        assert_eq!(
            cp.signatures[0].signer(o),
            Some((PartyId(1), SignerRole::Quote))
        );
        assert_eq!(
            cp.signatures[1].signer(o),
            Some((PartyId(2), SignerRole::Cosign))
        );
        assert_eq!(
            cp.signatures[0].key_id,
            quote_key_id(&cp.signatures[0].name, b"AK")
        );
        assert_eq!(cp.signatures[0].key_id, [0xca, 0xa0, 0xc5, 0xe7]);
        assert_eq!(
            cp.signatures[1].key_id,
            key_id(&cp.signatures[1].name, COSIGN_SIG_TYPE, b"K2")
        );
        assert_eq!(cp.signatures[1].key_id, [0xbd, 0x46, 0xf8, 0x30]);
        assert_eq!(cp.format(), text);
    }

    #[test]
    fn cosignature_failures_are_named() {
        let keys = Keys::new(4);
        let cp = sample();
        let o = cp.origin.clone();
        let mut signed = SignedCheckpoint {
            signatures: vec![keys.cosign(&o, 1, &cp), keys.cosign(&o, 2, &cp)],
            checkpoint: cp.clone(),
        };
        assert_eq!(
            check_cosignatures(&signed, &o, &keys.public, FaultModel::Byzantine),
            Err(CosignError::NoQuorum { got: 2, need: 3 })
        );
        // A signature by a non-party.
        let outsider = Keys::new(5);
        signed.signatures.push(outsider.cosign(&o, 5, &cp));
        assert_eq!(
            check_cosignatures(&signed, &o, &keys.public, FaultModel::Byzantine),
            Err(CosignError::NotAParty(PartyId(5)))
        );
        // P3's name with another key.
        signed.signatures.pop();
        signed.signatures.push(outsider.cosign(&o, 3, &cp));
        assert_eq!(
            check_cosignatures(&signed, &o, &keys.public, FaultModel::Byzantine),
            Err(CosignError::WrongKeyId(PartyId(3)))
        );
        // P3's signature over another checkpoint.
        signed.signatures.pop();
        let other = Checkpoint {
            size: TreeSize(1235),
            ..cp.clone()
        };
        let mut s = keys.cosign(&o, 3, &other);
        s.name = key_name(&o, PartyId(3), SignerRole::Cosign);
        signed.signatures.push(s);
        assert_eq!(
            check_cosignatures(&signed, &o, &keys.public, FaultModel::Byzantine),
            Err(CosignError::BadCosignature(PartyId(3)))
        );
        // Unknown names are ignored; the right one certifies.
        signed.signatures.pop();
        signed.signatures.push(NoteSignature {
            name: "witness.example/w1".into(),
            key_id: [1, 2, 3, 4],
            signature: vec![0; 64],
        });
        signed.signatures.push(keys.cosign(&o, 3, &cp));
        assert!(check_cosignatures(&signed, &o, &keys.public, FaultModel::Byzantine).is_ok());
        assert!(matches!(
            check_cosignatures(
                &signed,
                "quorate/other",
                &keys.public,
                FaultModel::Byzantine
            ),
            Err(CosignError::WrongOrigin { .. })
        ));
    }

    #[test]
    fn malformed_checkpoints_get_their_own_errors() {
        let root = B64.encode([7u8; 32]);
        let sig = format!("\u{2014} a/P1/vote {}\n", B64.encode([1u8; 70]));
        let cases: Vec<(String, ParseError)> = vec![
            ("a\n1\n".into(), ParseError::NoSignatureBlock),
            (
                format!("a\n01\n{root}\n\n{sig}"),
                ParseError::BadSize("01".into()),
            ),
            (
                format!("a\n-1\n{root}\n\n{sig}"),
                ParseError::BadSize("-1".into()),
            ),
            (format!("a\n1\nAAAA\n\n{sig}"), ParseError::BadRoot),
            (format!("\n1\n{root}\n\n{sig}"), ParseError::EmptyOrigin),
            (format!("a\n1\n{root}\n\n"), ParseError::NoSignatures),
            (
                format!("a\n1\n{root}\n\n- a/P1/vote AAAAAAAA\n"),
                ParseError::BadSignatureLine(0),
            ),
            (
                format!("a\n1\n{root}\n\n\u{2014} a+b AAAAAAAA\n"),
                ParseError::BadKeyName(0),
            ),
            (
                format!("a\n1\n{root}\n\n\u{2014} a AAAA\n"),
                ParseError::BadSignature(0),
            ),
            (
                format!("a\n1\n{root}\n\n\u{2014} a !!!\n"),
                ParseError::BadSignature(0),
            ),
            (
                format!("a\n1\n{root}\r\n\n{sig}"),
                ParseError::ControlCharacter,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                SignedCheckpoint::parse(text.as_bytes()),
                Err(want),
                "{text:?}"
            );
        }
        assert_eq!(
            SignedCheckpoint::parse(&[0xff, 0xfe]),
            Err(ParseError::NotUtf8)
        );
        assert!(SignedCheckpoint::parse(
            format!("a\n18446744073709551615\n{root}\n\n{sig}").as_bytes()
        )
        .is_ok());
        assert!(SignedCheckpoint::parse(
            format!("a\n18446744073709551616\n{root}\n\n{sig}").as_bytes()
        )
        .is_err());
    }

    #[test]
    fn the_policy_checkpoints_every_k_entries_or_t_ms_with_new_entries() {
        let p = CheckpointPolicy {
            every_entries: 10,
            every_ms: 5_000,
        };
        assert!(!p.due(None, TreeSize(0), 100));
        assert!(p.due(None, TreeSize(1), 100));
        let last = Some((TreeSize(5), 1_000));
        assert!(!p.due(last, TreeSize(5), 99_000));
        assert!(!p.due(last, TreeSize(14), 5_999));
        assert!(p.due(last, TreeSize(15), 1_001));
        assert!(p.due(last, TreeSize(6), 6_000));
        let k_only = CheckpointPolicy {
            every_entries: 10,
            every_ms: 0,
        };
        assert!(!k_only.due(last, TreeSize(6), u64::MAX));
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SignedCheckpoint::parse(&bytes);
        }

        #[test]
        fn parsing_mutated_checkpoints_never_panics_and_round_trips(
            pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()
        ) {
            let cp = sample();
            let signed = SignedCheckpoint {
                signatures: vec![quote_signature(&cp.origin, PartyId(2), b"ak", vec![5; 40])],
                checkpoint: cp,
            };
            let mut text = signed.format().into_bytes();
            let i = pos % text.len();
            text[i] = byte;
            text.truncate(cut % (text.len() + 1));
            if let Ok(p) = SignedCheckpoint::parse(&text) {
                prop_assert_eq!(p.format().into_bytes(), text);
            }
        }
    }
}
