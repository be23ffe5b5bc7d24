//! Test helpers: a cluster of parties with ring P-256 software keys that
//! sign batches the way the TPM does in production.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::batch::{BatchBody, SignedBatch};
use crate::crypto::{PublicKey, Signature};
use crate::types::{ClusterId, PartyId, Sha256Digest};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::collections::BTreeMap;

/// A test cluster: parties P1..Pn with software keys.
pub struct Cluster {
    /// The cluster id.
    pub id: ClusterId,
    /// Public keys by party.
    pub keys: BTreeMap<PartyId, PublicKey>,
    pairs: BTreeMap<PartyId, EcdsaKeyPair>,
    rng: SystemRandom,
}

impl Cluster {
    /// A cluster of `n` parties with fresh keys.
    pub fn new(n: u32) -> Self {
        let rng = SystemRandom::new();
        let mut keys = BTreeMap::new();
        let mut pairs = BTreeMap::new();
        for i in 1..=n {
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let kp =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            keys.insert(
                PartyId(i),
                PublicKey(kp.public_key().as_ref().try_into().unwrap()),
            );
            pairs.insert(PartyId(i), kp);
        }
        Cluster {
            id: ClusterId(Sha256Digest::of(format!("test cluster of {n}").as_bytes())),
            keys,
            pairs,
            rng,
        }
    }

    /// `bytes` signed with `signer`'s key.
    pub fn sign(&self, signer: u32, bytes: &[u8]) -> Signature {
        let sig = self.pairs[&PartyId(signer)].sign(&self.rng, bytes).unwrap();
        Signature(sig.as_ref().try_into().unwrap())
    }

    /// A batch of encoded operations signed by `author`.
    pub fn batch(&self, author: u32, seq: u64, ops: Vec<Vec<u8>>) -> SignedBatch {
        let body = BatchBody {
            cluster: self.id,
            author: PartyId(author),
            seq,
            ops,
        };
        let signature = self.sign(author, &body.signing_bytes());
        SignedBatch { body, signature }
    }

    /// One single-operation batch per `(author, body)`, each signed by its
    /// author with the author's next sequence number from `seq`.
    pub fn op_batches(
        &self,
        seq: &mut BTreeMap<u32, u64>,
        ops: Vec<(u32, crate::sessions::ops::OpBody)>,
    ) -> Vec<SignedBatch> {
        ops.into_iter()
            .map(|(author, body)| {
                let s = seq.entry(author).or_insert(0);
                *s += 1;
                let bytes = crate::sessions::ops::Operation {
                    author: PartyId(author),
                    body,
                }
                .encode();
                self.batch(author, *s, vec![bytes])
            })
            .collect()
    }
}
