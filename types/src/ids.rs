//! Ids of the cluster and of its membership epochs.

use crate::Sha256Digest;
use serde::{Deserialize, Serialize};

/// A membership epoch: the party set and keys are fixed within an epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// The cluster's identity: a digest of its canonical configuration, bound
/// into every signed message so signatures cannot be replayed across clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub Sha256Digest);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() -> Result<(), postcard::Error> {
        // An epoch is a varint; a cluster id is its digest's 32 bytes.
        assert_eq!(postcard::to_stdvec(&Epoch(1))?, [1]);
        assert_eq!(postcard::to_stdvec(&Epoch(300))?, [0xac, 0x02]);
        let id = ClusterId(Sha256Digest::of(b"cluster"));
        assert_eq!(postcard::to_stdvec(&id)?, id.0.as_bytes());
        Ok(())
    }
}
