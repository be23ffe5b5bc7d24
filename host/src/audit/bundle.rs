//! The audit bundle: one self-contained file holding everything an auditor
//! needs to check a party's log offline, written and read as a stream of
//! sections so that neither side holds the log in memory.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! MAGIC ("quorate-audit-bundle\n") || version (u16 = 1)
//! section*: tag (u8) || length (u32) || payload
//! ```
//!
//! Sections come in this order, each kind at most its limit:
//!
//! | tag | section | payload | count |
//! |---|---|---|---|
//! | 1 | header | postcard [`BundleHeader`] | exactly 1, first |
//! | 2 | enrollment | a party's `enrollment.json`, byte for byte | 1..=[`MAX_PARTIES`] |
//! | 3 | checkpoint | a certified checkpoint's signed note text | 0..=[`MAX_CHECKPOINTS`] |
//! | 4 | block | postcard [`BundleBlock`] (height, block, stored certificate) | any, heights 1, 2, 3, ... |
//! | 5 | entry | an encoded audit entry (the Merkle leaf) | any, after the block they belong to |
//! | 6 | end | postcard [`BundleEnd`] (the counts of every section) | exactly 1, last |
//!
//! Blocks and entries interleave: block *h*, then the entries whose
//! `block.height` is *h*. The end section's counts make a truncated or
//! spliced bundle an error rather than a shorter history. Attestation
//! evidence (quote, event log, certification) travels inside the entries
//! of the `AttestationRecord` operations that carried it.
//!
//! Every decoder is bounded (a section's length is checked against its
//! kind's limit before anything is allocated), returns a typed
//! [`BundleError`] and never panics.

use quorate_firmware::audit::checkpoint::MAX_CHECKPOINT_BYTES;
use quorate_firmware::audit::entry::MAX_ENTRY_BYTES;
use quorate_firmware::types::{ClusterId, Epoch, FaultModel, Height, PartyId};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 21] = b"quorate-audit-bundle\n";
/// The bundle format version this build writes and reads.
pub const BUNDLE_VERSION: u16 = 1;
/// Most parties (enrollment sections) a bundle may hold.
pub const MAX_PARTIES: u64 = 1024;
/// Most checkpoints a bundle may hold (the verifier keeps them in memory).
pub const MAX_CHECKPOINTS: u64 = 100_000;
/// Largest header section.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest enrollment section.
pub const MAX_ENROLLMENT_BYTES: usize = 64 * 1024;
/// Largest block section (block and certificate).
pub const MAX_BLOCK_SECTION_BYTES: usize = 64 * 1024 * 1024;

const TAG_HEADER: u8 = 1;
const TAG_ENROLLMENT: u8 = 2;
const TAG_CHECKPOINT: u8 = 3;
const TAG_BLOCK: u8 = 4;
const TAG_ENTRY: u8 = 5;
const TAG_END: u8 = 6;

/// The cluster the log belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleHeader {
    /// The cluster id (every signature in the bundle binds it).
    pub cluster: ClusterId,
    /// The membership epoch.
    pub epoch: Epoch,
    /// The fault model (certificate and cosignature quorums).
    pub fault_model: FaultModel,
    /// The cluster's canonical identity encoding (its SHA-256 is the
    /// cluster id; it lists the digest of every enrollment and of the
    /// reference policy the parties were configured with).
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// The party whose store was exported.
    pub exporter: PartyId,
}

/// A decided block as stored by the exporting party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBlock {
    /// Its height.
    pub height: Height,
    /// The encoded block (`Block::to_bytes`).
    #[serde(with = "serde_bytes")]
    pub block: Vec<u8>,
    /// The encoded commit certificate the exporter stored with it (the
    /// canonical one is in the next block's header).
    #[serde(with = "serde_bytes")]
    pub cert: Vec<u8>,
}

/// The closing section: how many of each section came before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleEnd {
    /// Enrollment sections.
    pub enrollments: u64,
    /// Checkpoint sections.
    pub checkpoints: u64,
    /// Block sections.
    pub blocks: u64,
    /// Entry sections.
    pub entries: u64,
}

/// One section of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Section {
    /// The cluster.
    Header(BundleHeader),
    /// A party's enrollment.json bytes.
    Enrollment(Vec<u8>),
    /// A certified checkpoint's signed note.
    Checkpoint(Vec<u8>),
    /// A decided block.
    Block(BundleBlock),
    /// An encoded audit entry.
    Entry(Vec<u8>),
    /// The counts.
    End(BundleEnd),
}

/// Why a bundle cannot be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading or writing the file failed (a local fault).
    #[error("bundle I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Not a bundle.
    #[error("not an audit bundle (the file does not start with the bundle magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error(
        "bundle format version {0} is unknown (this build reads {BUNDLE_VERSION}); upgrade quorate"
    )]
    UnknownVersion(u16),
    /// A section tag this build does not know.
    #[error("section {index}: unknown tag {tag}")]
    UnknownTag {
        /// Position of the section.
        index: u64,
        /// Its tag.
        tag: u8,
    },
    /// A section longer than its kind allows.
    #[error("section {index} ({kind}) is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Position of the section.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A section's payload does not decode.
    #[error("section {index} ({kind}) does not decode: {reason}")]
    Malformed {
        /// Position of the section.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// A section where it may not be.
    #[error("section {index}: {kind} out of place: {rule}")]
    Order {
        /// Position of the section.
        index: u64,
        /// Its kind.
        kind: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// More sections of a kind than allowed.
    #[error("more than {limit} {kind} sections")]
    TooMany {
        /// The kind.
        kind: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The file ends before the end section.
    #[error("the bundle is truncated: it ends after {sections} sections without its end section")]
    Truncated {
        /// Sections read.
        sections: u64,
    },
    /// The end section's counts disagree with what came before.
    #[error("the end section counts {claimed:?}, the bundle holds {found:?}: sections were removed or added")]
    CountMismatch {
        /// What the end section says.
        claimed: BundleEnd,
        /// What was read.
        found: BundleEnd,
    },
    /// Bytes after the end section.
    #[error("bytes follow the end section")]
    TrailingBytes,
}

fn kind_of(tag: u8) -> Option<(&'static str, usize)> {
    Some(match tag {
        TAG_HEADER => ("header", MAX_HEADER_BYTES),
        TAG_ENROLLMENT => ("enrollment", MAX_ENROLLMENT_BYTES),
        TAG_CHECKPOINT => ("checkpoint", MAX_CHECKPOINT_BYTES),
        TAG_BLOCK => ("block", MAX_BLOCK_SECTION_BYTES),
        TAG_ENTRY => ("entry", MAX_ENTRY_BYTES),
        TAG_END => ("end", 64),
        _ => return None,
    })
}

/// Where in the section order a writer or reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Start,
    Enrollments,
    Checkpoints,
    Body,
    Done,
}

/// Enforces the section order and counts, for the writer and the reader alike.
#[derive(Debug)]
struct Order {
    phase: Phase,
    counts: BundleEnd,
    sections: u64,
    last_height: u64,
    /// Whether an entry may follow (a block has been seen).
    in_block: bool,
}

impl Order {
    fn new() -> Self {
        Order {
            phase: Phase::Start,
            counts: BundleEnd::default(),
            sections: 0,
            last_height: 0,
            in_block: false,
        }
    }

    fn accept(&mut self, s: &Section) -> Result<(), BundleError> {
        let index = self.sections;
        let bad = |kind, rule| BundleError::Order { index, kind, rule };
        let next = match s {
            Section::Header(_) if self.phase == Phase::Start => Phase::Enrollments,
            Section::Header(_) => return Err(bad("header", "only the first section is a header")),
            _ if self.phase == Phase::Start => {
                return Err(bad("section", "the first section must be the header"))
            }
            Section::Enrollment(_) if self.phase == Phase::Enrollments => {
                self.counts.enrollments += 1;
                if self.counts.enrollments > MAX_PARTIES {
                    return Err(BundleError::TooMany {
                        kind: "enrollment",
                        limit: MAX_PARTIES,
                    });
                }
                Phase::Enrollments
            }
            Section::Enrollment(_) => {
                return Err(bad("enrollment", "enrollments follow the header"))
            }
            _ if self.counts.enrollments == 0 => {
                return Err(bad("section", "the bundle names no party"))
            }
            Section::Checkpoint(_) if self.phase <= Phase::Checkpoints => {
                self.counts.checkpoints += 1;
                if self.counts.checkpoints > MAX_CHECKPOINTS {
                    return Err(BundleError::TooMany {
                        kind: "checkpoint",
                        limit: MAX_CHECKPOINTS,
                    });
                }
                Phase::Checkpoints
            }
            Section::Checkpoint(_) => {
                return Err(bad("checkpoint", "checkpoints precede blocks and entries"))
            }
            Section::Block(b) if self.phase <= Phase::Body => {
                if b.height.0 != self.last_height.saturating_add(1) {
                    return Err(bad(
                        "block",
                        "blocks come at heights 1, 2, 3, ... without gaps",
                    ));
                }
                self.last_height = b.height.0;
                self.counts.blocks += 1;
                self.in_block = true;
                Phase::Body
            }
            Section::Entry(_) if self.phase <= Phase::Body && self.in_block => {
                self.counts.entries += 1;
                Phase::Body
            }
            Section::Entry(_) if self.phase <= Phase::Body => {
                return Err(bad("entry", "entries follow the block they belong to"))
            }
            Section::End(end) if self.phase < Phase::Done => {
                if *end != self.counts {
                    return Err(BundleError::CountMismatch {
                        claimed: *end,
                        found: self.counts,
                    });
                }
                Phase::Done
            }
            Section::Block(_) | Section::Entry(_) | Section::End(_) => {
                return Err(bad("section", "nothing follows the end section"))
            }
        };
        self.phase = next;
        self.sections += 1;
        Ok(())
    }
}

/// Writes a bundle section by section, enforcing the order.
pub struct BundleWriter<W: Write> {
    out: W,
    order: Order,
}

impl<W: Write> BundleWriter<W> {
    /// Starts a bundle: writes the magic and version.
    pub fn new(mut out: W) -> Result<Self, BundleError> {
        out.write_all(MAGIC)?;
        out.write_all(&BUNDLE_VERSION.to_be_bytes())?;
        Ok(BundleWriter {
            out,
            order: Order::new(),
        })
    }

    /// Writes one section. Order and size violations are refused before
    /// anything is written.
    pub fn write(&mut self, s: &Section) -> Result<(), BundleError> {
        let index = self.order.sections;
        let (tag, payload): (u8, std::borrow::Cow<'_, [u8]>) = match s {
            Section::Header(h) => (TAG_HEADER, encode(index, "header", h)?.into()),
            Section::Enrollment(b) => (TAG_ENROLLMENT, b.as_slice().into()),
            Section::Checkpoint(b) => (TAG_CHECKPOINT, b.as_slice().into()),
            Section::Block(b) => (TAG_BLOCK, encode(index, "block", b)?.into()),
            Section::Entry(b) => (TAG_ENTRY, b.as_slice().into()),
            Section::End(_) => {
                // The writer counts; a caller's counts are not trusted.
                let end = self.order.counts;
                (TAG_END, encode(index, "end", &end)?.into())
            }
        };
        let (kind, limit) = kind_of(tag).unwrap_or(("section", 0));
        if payload.len() > limit {
            return Err(BundleError::TooLarge {
                index,
                kind,
                len: payload.len() as u64,
                limit,
            });
        }
        let s = match s {
            Section::End(_) => Section::End(self.order.counts),
            _ => s.clone(),
        };
        self.order.accept(&s)?;
        let len = u32::try_from(payload.len()).map_err(|_| BundleError::TooLarge {
            index,
            kind,
            len: payload.len() as u64,
            limit,
        })?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&payload)?;
        Ok(())
    }

    /// Writes the end section and flushes; returns the counts and the writer.
    pub fn finish(mut self) -> Result<(BundleEnd, W), BundleError> {
        self.write(&Section::End(BundleEnd::default()))?;
        self.out.flush()?;
        Ok((self.order.counts, self.out))
    }
}

fn encode<T: Serialize>(index: u64, kind: &'static str, v: &T) -> Result<Vec<u8>, BundleError> {
    postcard::to_stdvec(v).map_err(|e| BundleError::Malformed {
        index,
        kind,
        reason: e.to_string(),
    })
}

fn decode<'a, T: Deserialize<'a>>(
    index: u64,
    kind: &'static str,
    bytes: &'a [u8],
) -> Result<T, BundleError> {
    let malformed = |reason: String| BundleError::Malformed {
        index,
        kind,
        reason,
    };
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

/// Reads a bundle section by section, enforcing the order, the limits and
/// the final counts.
pub struct BundleReader<R: Read> {
    input: R,
    order: Order,
}

impl<R: Read> BundleReader<R> {
    /// Checks the magic and version.
    pub fn new(mut input: R) -> Result<Self, BundleError> {
        let mut magic = [0u8; MAGIC.len()];
        read_exact_or(&mut input, &mut magic, BundleError::BadMagic)?;
        if &magic != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let mut v = [0u8; 2];
        read_exact_or(&mut input, &mut v, BundleError::BadMagic)?;
        let version = u16::from_be_bytes(v);
        if version != BUNDLE_VERSION {
            return Err(BundleError::UnknownVersion(version));
        }
        Ok(BundleReader {
            input,
            order: Order::new(),
        })
    }

    /// The next section, or `None` after the end section (then checks
    /// that nothing follows it).
    pub fn next_section(&mut self) -> Result<Option<Section>, BundleError> {
        let index = self.order.sections;
        if self.order.phase == Phase::Done {
            let mut one = [0u8; 1];
            return match self.input.read(&mut one) {
                Ok(0) => Ok(None),
                Ok(_) => Err(BundleError::TrailingBytes),
                Err(e) => Err(e.into()),
            };
        }
        let truncated = BundleError::Truncated { sections: index };
        let mut head = [0u8; 5];
        read_exact_or(&mut self.input, &mut head, truncated)?;
        let [tag, l0, l1, l2, l3] = head;
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        let (kind, limit) = kind_of(tag).ok_or(BundleError::UnknownTag { index, tag })?;
        if len as usize > limit {
            return Err(BundleError::TooLarge {
                index,
                kind,
                len: u64::from(len),
                limit,
            });
        }
        let mut payload = vec![0u8; len as usize];
        read_exact_or(
            &mut self.input,
            &mut payload,
            BundleError::Truncated { sections: index },
        )?;
        let s = match tag {
            TAG_HEADER => Section::Header(decode(index, kind, &payload)?),
            TAG_ENROLLMENT => Section::Enrollment(payload),
            TAG_CHECKPOINT => Section::Checkpoint(payload),
            TAG_BLOCK => Section::Block(decode(index, kind, &payload)?),
            TAG_ENTRY => Section::Entry(payload),
            _ => Section::End(decode(index, kind, &payload)?),
        };
        self.order.accept(&s)?;
        Ok(Some(s))
    }
}

/// `read_exact`, mapping a short read to `short`.
fn read_exact_or<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    short: BundleError,
) -> Result<(), BundleError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(short),
        Err(e) => Err(e.into()),
    }
}

/// Reads every section of `bytes` (for tests and the fuzz target).
pub fn read_all(bytes: &[u8]) -> Result<Vec<Section>, BundleError> {
    let mut r = BundleReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(s) = r.next_section()? {
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quorate_firmware::types::Sha256Digest;

    fn sample() -> Vec<Section> {
        vec![
            Section::Header(BundleHeader {
                cluster: ClusterId(Sha256Digest::of(b"c")),
                epoch: Epoch(0),
                fault_model: FaultModel::Byzantine,
                identity: b"identity".to_vec(),
                exporter: PartyId(1),
            }),
            Section::Enrollment(b"{\"p1\":1}".to_vec()),
            Section::Enrollment(b"{\"p2\":2}".to_vec()),
            Section::Checkpoint(b"origin\n1\nroot\n\n- sig\n".to_vec()),
            Section::Block(BundleBlock {
                height: Height(1),
                block: vec![1, 2, 3],
                cert: vec![4],
            }),
            Section::Entry(vec![1, 9, 9]),
            Section::Entry(vec![1, 8]),
            Section::Block(BundleBlock {
                height: Height(2),
                block: vec![5],
                cert: vec![6],
            }),
        ]
    }

    fn write(sections: &[Section]) -> Vec<u8> {
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        for s in sections {
            w.write(s).unwrap();
        }
        w.finish().unwrap().1
    }

    #[test]
    fn a_bundle_round_trips_with_its_counts() {
        let bytes = write(&sample());
        let back = read_all(&bytes).unwrap();
        let (last, body) = back.split_last().unwrap();
        assert_eq!(body, sample().as_slice());
        assert_eq!(
            *last,
            Section::End(BundleEnd {
                enrollments: 2,
                checkpoints: 1,
                blocks: 2,
                entries: 2
            })
        );
    }

    #[test]
    fn the_writer_refuses_sections_out_of_order() {
        let s = sample();
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        assert!(matches!(
            w.write(&s[1]),
            Err(BundleError::Order { index: 0, .. })
        ));
        w.write(&s[0]).unwrap();
        // A block before any enrollment.
        assert!(matches!(w.write(&s[4]), Err(BundleError::Order { .. })));
        w.write(&s[1]).unwrap();
        // An entry before any block.
        assert!(matches!(w.write(&s[5]), Err(BundleError::Order { .. })));
        w.write(&s[4]).unwrap();
        // A checkpoint after a block; a block that skips a height.
        assert!(matches!(w.write(&s[3]), Err(BundleError::Order { .. })));
        let skip = Section::Block(BundleBlock {
            height: Height(3),
            block: vec![],
            cert: vec![],
        });
        assert!(matches!(w.write(&skip), Err(BundleError::Order { .. })));
    }

    #[test]
    fn truncation_removal_and_trailing_bytes_are_errors() {
        let bytes = write(&sample());
        // Cut anywhere before the end: truncated (or, inside the magic, not a bundle).
        for cut in [3, MAGIC.len() + 2, MAGIC.len() + 5, bytes.len() - 1] {
            let r = read_all(&bytes[..cut]);
            assert!(
                matches!(
                    r,
                    Err(BundleError::Truncated { .. }) | Err(BundleError::BadMagic)
                ),
                "cut {cut}: {r:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(read_all(&longer), Err(BundleError::TrailingBytes)));
        // An entry section removed: the end's counts disagree.
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        let s = sample();
        for x in s.iter().filter(|x| **x != s[6]) {
            w.write(x).unwrap();
        }
        let mut forged = w.finish().unwrap().1;
        // Splice the honest end section (2 entries) onto the shorter body.
        let end_len = 5 + postcard::to_stdvec(&BundleEnd::default()).unwrap().len();
        let honest_end = bytes[bytes.len() - end_len..].to_vec();
        let n = forged.len();
        forged.truncate(n - end_len);
        forged.extend_from_slice(&honest_end);
        assert!(matches!(
            read_all(&forged),
            Err(BundleError::CountMismatch { .. })
        ));
        let mut bad = bytes.clone();
        bad[MAGIC.len() + 1] = 9;
        assert!(matches!(
            read_all(&bad),
            Err(BundleError::UnknownVersion(9))
        ));
    }

    #[test]
    fn an_oversized_section_is_refused_before_allocation() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&BUNDLE_VERSION.to_be_bytes());
        bytes.push(TAG_ENTRY);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_all(&bytes),
            Err(BundleError::TooLarge { kind: "entry", .. })
        ));
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&BUNDLE_VERSION.to_be_bytes());
        bytes.push(77);
        bytes.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            read_all(&bytes),
            Err(BundleError::UnknownTag { tag: 77, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_and_mutated_bundles_never_panic(
            junk in proptest::collection::vec(any::<u8>(), 0..256),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let _ = read_all(&junk);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&BUNDLE_VERSION.to_be_bytes());
            with_magic.extend_from_slice(&junk);
            let _ = read_all(&with_magic);
            let mut bytes = write(&sample());
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x | 1;
            }
            let _ = read_all(&bytes);
        }
    }
}
