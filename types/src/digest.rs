//! SHA-256 digests.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A SHA-256 digest. Equality is constant-time ([`crate::ct_eq`]); it
/// displays as 64 lowercase hex digits and encodes as its 32 bytes.
// Hash and Ord are derived over the bytes, consistent with the constant-time Eq.
#[allow(clippy::derived_hash_with_manual_eq)]
#[derive(Clone, Copy, Default, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Sha256Digest(out)
    }

    /// SHA-256 over the concatenation of `parts`, without copying them.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Sha256Digest(out)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for Sha256Digest {
    fn eq(&self, other: &Self) -> bool {
        crate::ct_eq(&self.0, &other.0)
    }
}
impl Eq for Sha256Digest {}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_equality_and_display() {
        let a = Sha256Digest::of(b"abc");
        assert_eq!(
            a.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(a, Sha256Digest::of_parts(&[b"a", b"bc"]));
        assert_ne!(a, Sha256Digest::of(b"abd"));
    }

    #[test]
    fn encodes_as_its_32_bytes() -> Result<(), postcard::Error> {
        let a = Sha256Digest::of(b"abc");
        let bytes = postcard::to_stdvec(&a)?;
        assert_eq!(bytes, a.as_bytes());
        assert_eq!(postcard::from_bytes::<Sha256Digest>(&bytes)?, a);
        Ok(())
    }
}
