//! Constant-time comparison of secrets and digests.

/// Whether `a` and `b` hold the same bytes, in time that depends only on
/// their lengths (which are not secret): for credential answers, digests
/// and policy values an attacker may be probing.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_unequal_and_length_mismatch() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"\x80", b"\x00"));
    }
}
