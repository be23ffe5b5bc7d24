//! Test kit: a real multi-party log built with the firmware's session
//! machine and audit ledger, software vote keys and software TPMs (exact
//! TPM formats: quotes, certifications, event logs), written as an audit
//! bundle. For the host's tamper tests and `make bench`; never in the
//! shipped binary (it needs the attestation crate's `soft-tpm` feature).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::bundle::{BundleBlock, BundleHeader, BundleWriter, Section};
use super::check::{verify_bundle, Verification};
use crate::init::{EnrolledKey, Enrollment};
use crate::measurement::EvidenceMeasurements;
use quorate_attestation::evidence::Freshness;
use quorate_attestation::pcr::{measurement_policy, PcrIndex};
use quorate_attestation::policy::Policy;
use quorate_attestation::soft::{SoftTpm, SOFT_VOTE_ATTRIBUTES};
use quorate_attestation::tpm::TpmtPublic;
use quorate_firmware::audit::checkpoint::{cosignature, quote_signature, SignedCheckpoint};
use quorate_firmware::audit::checkpoint::{origin_for, Checkpoint};
use quorate_firmware::audit::ledger::Ledger;
use quorate_firmware::audit::merkle::MemoryNodeStore;
use quorate_firmware::batch::{BatchBody, SignedBatch};
use quorate_firmware::consensus::certificate::precommit_bytes;
use quorate_firmware::consensus::certificate::CommitCertificate;
use quorate_firmware::consensus::context::Block;
use quorate_firmware::consensus::context::{BlockContents, BlockHash, BlockHeader};
use quorate_firmware::crypto::{PublicKey, Signature};
use quorate_firmware::sessions::machine::{MachineConfig, SessionMachine, SessionRules};
use quorate_firmware::sessions::ops::{AttestationRecord, Blob, Decision, VerdictOp};
use quorate_firmware::sessions::ops::{OpBody, OpId, Operation};
use quorate_firmware::types::{ClusterId, Epoch, FaultModel};
use quorate_firmware::types::{Height, PartyId, Sha256Digest};
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use std::collections::BTreeMap;

/// One party: its software vote key and software TPM.
pub struct Party {
    /// The vote key pair.
    pub vote: EcdsaKeyPair,
    /// Its public point.
    pub vote_key: PublicKey,
    /// Its TPM (AK, measured launch).
    pub tpm: SoftTpm,
    /// Its TLS key hash (bound into its evidence).
    pub tls: Sha256Digest,
    /// Its last batch sequence number.
    pub seq: u64,
}

/// A cluster, its log so far, and everything a bundle holds.
pub struct Fixture {
    /// Randomness for keys and signatures.
    pub rng: SystemRandom,
    /// The parties.
    pub parties: BTreeMap<PartyId, Party>,
    /// The reference policy every party's launch satisfies.
    pub policy: Policy,
    /// Its TOML text (the cluster identity commits to its digest).
    pub policy_text: Vec<u8>,
    /// The bundle header.
    pub header: BundleHeader,
    /// Every enrollment.json.
    pub enrollments: Vec<Vec<u8>>,
    /// The session machine, fed every block.
    pub machine: SessionMachine,
    /// The audit ledger, fed every block as a party's daemon feeds it.
    pub ledger: Ledger,
    /// Canonical certificates of this height carry two signatures, one
    /// short of the quorum (for tamper tests).
    pub short_commit_at: Option<u64>,
    /// The Merkle tree of the entries.
    pub tree: MemoryNodeStore,
    /// Each block with its entries.
    pub blocks: Vec<(BundleBlock, Vec<Vec<u8>>)>,
    /// Certified checkpoints (signed notes).
    pub checkpoints: Vec<Vec<u8>>,
    /// Block hashes by height - 1.
    pub hashes: Vec<Sha256Digest>,
}

/// An ECDSA P-256 signature by a software key.
pub fn sign(kp: &EcdsaKeyPair, rng: &SystemRandom, msg: &[u8]) -> Signature {
    Signature(kp.sign(rng, msg).unwrap().as_ref().try_into().unwrap())
}

impl Fixture {
    /// A cluster of `n` parties with an empty log.
    pub fn new(n: u32) -> Fixture {
        let rng = SystemRandom::new();
        let exe = Sha256Digest::of(b"quorate");
        let cfg = Sha256Digest::of(b"rules");
        let policy = Policy::new(vec![exe], cfg);
        let policy_text = policy.to_toml().unwrap().into_bytes();
        let pcr = PcrIndex::DEFAULT_MEASUREMENT;
        let mut parties = BTreeMap::new();
        let mut enrollments = Vec::new();
        let mut listed = Vec::new();
        for i in 1..=n {
            let (vote, vote_key) = quorate_attestation::soft::generate_p256(&rng).unwrap();
            let mut tpm = SoftTpm::launch(&rng, pcr, &exe, &cfg, 1).unwrap();
            let m = tpm.pcrs[&pcr];
            tpm.vote_public = TpmtPublic::new_p256_signing(
                SOFT_VOTE_ATTRIBUTES,
                measurement_policy(pcr, &m).as_bytes(),
                &vote_key,
            )
            .unwrap();
            let tls = Sha256Digest::of(format!("tls {i}").as_bytes());
            let key = |p: &TpmtPublic| EnrolledKey {
                tpmt_public: hex::encode(p.as_bytes()),
                name: hex::encode(p.name().as_bytes()),
                point: hex::encode(p.ecc_p256_point().unwrap().0),
            };
            let e = Enrollment {
                format: crate::init::ENROLLMENT_FORMAT,
                party_id: PartyId(i),
                vote_key: key(&tpm.vote_public),
                tls_cert: String::new(),
                tls_key_hash: hex::encode(tls.0),
                ak: Some(key(&tpm.ak_public)),
                ek: None,
            };
            let json = serde_json::to_vec_pretty(&e).unwrap();
            listed.push((i, Sha256Digest::of(&json)));
            enrollments.push(json);
            parties.insert(
                PartyId(i),
                Party {
                    vote,
                    vote_key,
                    tpm,
                    tls,
                    seq: 0,
                },
            );
        }
        let identity = postcard::to_stdvec(&crate::config::ClusterIdentity {
            domain: crate::config::CLUSTER_ID_DOMAIN.to_string(),
            fault_model: FaultModel::Byzantine,
            epoch: 0,
            rules: cfg,
            reference_policy: Some(Sha256Digest::of(&policy_text)),
            enrollments: listed,
        })
        .unwrap();
        let cluster = ClusterId(Sha256Digest::of(&identity));
        let machine = SessionMachine::new(MachineConfig {
            cluster,
            fault_model: FaultModel::Byzantine,
            members: parties.iter().map(|(p, x)| (*p, x.vote_key)).collect(),
            rules: SessionRules::default(),
        })
        .unwrap();
        Fixture {
            rng,
            parties,
            policy,
            policy_text,
            header: BundleHeader {
                cluster,
                epoch: Epoch(0),
                fault_model: FaultModel::Byzantine,
                identity,
                exporter: PartyId(1),
            },
            enrollments,
            machine,
            ledger: Ledger::new(),
            short_commit_at: None,
            tree: MemoryNodeStore::new(),
            blocks: Vec::new(),
            checkpoints: Vec::new(),
            hashes: Vec::new(),
        }
    }

    /// The last decided height.
    pub fn height(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Evidence of `p` binding the latest block.
    pub fn evidence(&mut self, p: u32) -> OpBody {
        let h = self.height();
        let fresh = Freshness::Epoch {
            epoch: self.header.epoch,
            block_hash: self.hashes.last().copied().unwrap_or_default(),
        };
        let pcrs = self.policy.quoted_pcrs();
        let party = self.parties.get_mut(&PartyId(p)).unwrap();
        let ev = party
            .tpm
            .evidence(&self.rng, &fresh, &party.tls.clone(), &pcrs)
            .unwrap();
        OpBody::AttestationRecord(AttestationRecord {
            binds_height: Height(h),
            evidence: Blob(ev.to_bytes()),
        })
    }

    /// A block of one batch per (author, ops), decided by every party.
    pub fn block(&mut self, ops: Vec<(u32, Vec<OpBody>)>) {
        let height = Height(self.height() + 1);
        let time = 1_700_000_000_000 + height.0 * 1000;
        let mut batches = Vec::new();
        for (author, bodies) in ops {
            let party = self.parties.get_mut(&PartyId(author)).unwrap();
            party.seq += 1;
            let body = BatchBody {
                cluster: self.header.cluster,
                author: PartyId(author),
                seq: party.seq,
                ops: bodies
                    .into_iter()
                    .map(|b| {
                        Operation {
                            author: PartyId(author),
                            body: b,
                        }
                        .encode()
                    })
                    .collect(),
            };
            let signature = sign(&party.vote, &self.rng, &body.signing_bytes());
            batches.push(SignedBatch { body, signature });
        }
        let last_commit = self.blocks.last().map(|(b, _)| {
            let signers = if Some(b.height.0) == self.short_commit_at {
                2
            } else {
                3
            };
            let hash = BlockHash(self.hashes[b.height.0 as usize - 1]);
            self.certificate(b.height, hash, signers)
        });
        let block = Block::new(BlockContents {
            header: BlockHeader {
                height,
                time_ms: time,
                parent: BlockHash(self.hashes.last().copied().unwrap_or_default()),
                proposer: PartyId((height.0 % 3 + 1) as u32),
                last_commit,
                log: self.ledger.head(),
            },
            batches: batches.clone(),
            evidence: vec![],
        });
        let cert = self.certificate(height, block.hash(), 3);
        let outcome = self.machine.apply_block(height, time, &batches).unwrap();
        let step = self
            .ledger
            .on_decided(
                &block,
                &outcome,
                self.machine.state(),
                &EvidenceMeasurements,
            )
            .unwrap();
        // The entries of the previous block, now that this one carries
        // its canonical certificate.
        for e in &step.encoded {
            self.tree.append(e);
        }
        if let Some((_, es)) = self.blocks.last_mut() {
            es.extend(step.encoded);
        } else {
            assert!(step.encoded.is_empty());
        }
        self.hashes.push(block.hash().0);
        self.blocks.push((
            BundleBlock {
                height,
                block: block.to_bytes(),
                cert: postcard::to_stdvec(&cert).unwrap(),
            },
            Vec::new(),
        ));
    }

    /// A certificate of `signers` parties (the first ones) for a block.
    pub fn certificate(
        &self,
        height: Height,
        hash: BlockHash,
        signers: usize,
    ) -> CommitCertificate {
        CommitCertificate {
            height,
            round: 0,
            block: hash,
            signatures: self
                .parties
                .iter()
                .take(signers)
                .map(|(p, x)| {
                    let msg = precommit_bytes(
                        self.header.cluster,
                        self.header.epoch,
                        height,
                        0,
                        hash,
                        *p,
                    );
                    (*p, sign(&x.vote, &self.rng, &msg))
                })
                .collect(),
        }
    }

    /// A checkpoint of the tree now, quoted by `issuer`, cosigned by all.
    pub fn checkpoint(&mut self, issuer: u32) -> Checkpoint {
        let cp = Checkpoint {
            origin: origin_for(&self.header.cluster),
            size: self.tree.size(),
            root: self.tree.root(),
            extensions: vec![],
        };
        let signed = self.sign_checkpoint(&cp, issuer);
        self.checkpoints.push(signed);
        cp
    }

    /// `cp` quoted by `issuer`'s TPM and cosigned by every party.
    pub fn sign_checkpoint(&mut self, cp: &Checkpoint, issuer: u32) -> Vec<u8> {
        let origin = cp.origin.clone();
        let pcrs = self.policy.quoted_pcrs();
        let qd = cp.quote_qualifying_data();
        let p = self.parties.get_mut(&PartyId(issuer)).unwrap();
        let (q, values) = p.tpm.quote(&self.rng, &pcrs, qd.as_bytes()).unwrap();
        let mut sigs = vec![quote_signature(
            &origin,
            PartyId(issuer),
            &crate::daemon::audit::ak_tpm2b(p.tpm.ak_public.as_bytes()),
            quorate_attestation::checkpoint::CheckpointQuote {
                quote: q,
                pcr_values: values,
            }
            .encode(),
        )];
        for (id, x) in &self.parties {
            let s = sign(&x.vote, &self.rng, &cp.cosign_message());
            sigs.push(cosignature(&origin, *id, &x.vote_key, &s));
        }
        SignedCheckpoint {
            checkpoint: cp.clone(),
            signatures: sigs,
        }
        .format()
        .into_bytes()
    }

    /// A three-party history: attestation records, their approvals, a
    /// later record, with checkpoints along the way and at the end.
    pub fn honest() -> Fixture {
        Fixture::honest_with(|_| {})
    }

    /// [`Fixture::honest`] with `tune` applied to the empty cluster first.
    pub fn honest_with(tune: impl FnOnce(&mut Fixture)) -> Fixture {
        let mut f = Fixture::new(3);
        tune(&mut f);
        f.block(vec![(1, vec![]), (2, vec![])]);
        let records = vec![
            (1, vec![f.evidence(1)]),
            (2, vec![f.evidence(2)]),
            (3, vec![f.evidence(3)]),
        ];
        f.block(records);
        let ids: Vec<OpId> = (1..=3)
            .map(|p| {
                OpId::derive(
                    &f.header.cluster,
                    Height(2),
                    p - 1,
                    PartyId(p),
                    f.parties[&PartyId(p)].seq,
                    0,
                )
            })
            .collect();
        let approve = |t: OpId| {
            OpBody::Verdict(VerdictOp {
                target: t,
                decision: Decision::Approve,
            })
        };
        f.block(vec![
            (1, ids.iter().map(|t| approve(*t)).collect()),
            (2, ids.iter().map(|t| approve(*t)).collect()),
            (3, ids.iter().map(|t| approve(*t)).collect()),
        ]);
        f.checkpoint(1);
        let rec = f.evidence(2);
        f.block(vec![(2, vec![rec])]);
        f.checkpoint(2);
        // A carrier block: it certifies block 4, whose entries follow.
        f.block(vec![]);
        f.checkpoint(3);
        f
    }

    /// [`Fixture::honest`] followed by `blocks` blocks of one batch per
    /// party with `ops` operations each (verdicts on operations that do not
    /// exist, which the machine rejects: cheap to apply, full-size
    /// entries), checkpointed every `every` blocks and at the end.
    pub fn bulk(blocks: u64, ops: usize, every: u64) -> Fixture {
        let mut f = Fixture::honest();
        let ids: Vec<u32> = f.parties.keys().map(|p| p.0).collect();
        for b in 0..blocks {
            let batches = ids
                .iter()
                .map(|p| {
                    let bodies = (0..ops)
                        .map(|i| {
                            OpBody::Verdict(VerdictOp {
                                target: OpId(Sha256Digest::of(format!("{b}/{p}/{i}").as_bytes())),
                                decision: Decision::Approve,
                            })
                        })
                        .collect();
                    (*p, bodies)
                })
                .collect();
            f.block(batches);
            if every > 0 && (b + 1) % every == 0 {
                f.checkpoint(ids[(b as usize) % ids.len()]);
            }
        }
        // A carrier block brings the last block's entries; checkpoint the tail.
        f.block(vec![]);
        let last = f
            .checkpoints
            .last()
            .and_then(|c| SignedCheckpoint::parse(c).ok())
            .map(|s| s.checkpoint.size);
        if last != Some(f.tree.size()) {
            f.checkpoint(1);
        }
        f
    }

    /// The bundle of everything so far.
    pub fn bundle(&self) -> Vec<u8> {
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.write(&Section::Header(self.header.clone())).unwrap();
        for e in &self.enrollments {
            w.write(&Section::Enrollment(e.clone())).unwrap();
        }
        for c in &self.checkpoints {
            w.write(&Section::Checkpoint(c.clone())).unwrap();
        }
        for (b, es) in &self.blocks {
            w.write(&Section::Block(b.clone())).unwrap();
            for e in es {
                w.write(&Section::Entry(e.clone())).unwrap();
            }
        }
        w.finish().unwrap().1
    }

    /// Verifies [`Fixture::bundle`] against the policy.
    pub fn verify(&self) -> Verification {
        verify_bundle(self.bundle().as_slice(), &self.policy, &self.policy_text)
    }
}
