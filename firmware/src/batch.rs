//! Operation batches: a party's pending operations, signed together with one
//! TPM signature so that the TPM does not limit how many operations a party
//! can submit. Consensus orders batches; the session state machine decodes
//! and applies the operations inside them.
//!
//! Until the session layer interprets them, operations are opaque bytes.

use crate::crypto::{PublicKey, Signature, SignatureError};
use crate::types::{ClusterId, PartyId, Sha256Digest};
use serde::{Deserialize, Serialize};

/// Domain tag of a batch's signed bytes.
pub const BATCH_DOMAIN: &str = "quorate/batch/v1";

/// The signed content of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchBody {
    /// The cluster this batch belongs to (prevents cross-cluster replay).
    pub cluster: ClusterId,
    /// The party that submitted and signed the batch.
    pub author: PartyId,
    /// The author's batch sequence number, strictly increasing per author;
    /// makes every batch unique and lets replays be refused.
    pub seq: u64,
    /// Encoded operations, in the author's submission order.
    pub ops: Vec<Vec<u8>>,
}

/// What is actually signed: the domain tag and the body.
#[derive(Serialize)]
struct SignedBatchBytes<'a> {
    domain: &'a str,
    body: &'a BatchBody,
}

impl BatchBody {
    /// The exact bytes the author's key signs: postcard of (domain, body).
    pub fn signing_bytes(&self) -> Vec<u8> {
        // Serialising plain data with owned buffers cannot fail.
        postcard::to_stdvec(&SignedBatchBytes {
            domain: BATCH_DOMAIN,
            body: self,
        })
        .unwrap_or_default()
    }
}

/// A batch with its author's signature.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedBatch {
    /// The signed content.
    pub body: BatchBody,
    /// The author's ECDSA P-256 signature over [`BatchBody::signing_bytes`].
    pub signature: Signature,
}

impl SignedBatch {
    /// Checks the batch signature once, under the author's key.
    pub fn verify(&self, author_key: &PublicKey) -> Result<(), SignatureError> {
        author_key.verify(&self.body.signing_bytes(), &self.signature)
    }

    /// A digest identifying this batch (over its encoding, signature included).
    pub fn id(&self) -> Sha256Digest {
        Sha256Digest::of(&postcard::to_stdvec(self).unwrap_or_default())
    }

    /// Size of the batch's encoding in bytes.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(usize::MAX)
    }
}
