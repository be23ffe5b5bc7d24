//! TPM rows of the `make bench` table: signatures per second and latency
//! through the host's TPM owner (sequential, concurrent, load-per-use),
//! `tpm2_sign` in a loop against the same swtpm and key, their ratio, and
//! ring verifications per second.
#![allow(clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use quorate_attestation::tpm::{verify_ecdsa_p256, TpmSignature, TpmtPublic};
use quorate_firmware::types::PartyId;
use quorate_host::init::{init, Enrollment, InitOptions, ENROLLMENT_FILE};
use quorate_host::tpm::{KeyRole, KeyStore, Swtpm, Tcti, TpmHandle, TpmTarget};

use crate::bench::{percentile, Row};

const SEQUENTIAL: usize = 2000;
const CONCURRENT_TASKS: usize = 16;
const CONCURRENT_TOTAL: usize = 4000;
const LOAD_PER_USE: usize = 300;
const TPM2_SIGN_RUNS: usize = 200;
const RING_VERIFIES: usize = 20_000;
/// Persistent handle the tpm2-tools run uses for the same vote key.
const PERSISTENT: &str = "0x81000100";

/// A party provisioned (`init`) on a private swtpm in a temporary
/// directory, with a runtime to drive its TPM owner.
pub struct BenchParty {
    /// The party's data dir.
    pub data: std::path::PathBuf,
    /// Its swtpm's TCTI.
    pub tcti: Tcti,
    /// A two-worker runtime.
    pub rt: tokio::runtime::Runtime,
    /// Its enrollment.
    pub enrollment: Enrollment,
    swtpm: Swtpm,
    tmp: tempfile::TempDir,
}

impl BenchParty {
    /// Spawns the swtpm and provisions party 1 on it.
    pub fn provision() -> anyhow::Result<BenchParty> {
        let tmp = tempfile::tempdir()?;
        let swtpm = Swtpm::spawn(&tmp.path().join("swtpm"))?;
        let tcti = swtpm.tcti();
        let data = tmp.path().join("party");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(init(&InitOptions {
            data_dir: data.clone(),
            party_id: PartyId(1),
            tpm: TpmTarget::Tcti(tcti.clone()),
            force: false,
        }))?;
        let enrollment = Enrollment::load(&data.join(ENROLLMENT_FILE))?;
        Ok(BenchParty {
            data,
            tcti,
            rt,
            enrollment,
            swtpm,
            tmp,
        })
    }

    /// The temporary directory holding it all.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Stops the swtpm (TPM2_Shutdown) and removes the directory.
    pub fn finish(self) {
        drop(self.swtpm);
    }
}

/// Appends the TPM rows.
pub fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let party = BenchParty::provision()?;
    let (data, tcti, enrollment) = (
        party.data.clone(),
        party.tcti.clone(),
        party.enrollment.clone(),
    );
    let rt = &party.rt;
    let point = enrollment.vote_public_key()?;
    let msg = |i: usize| format!("bench message {i}").into_bytes();
    let note = "swtpm 0.7, ECDSA P-256, 2 cores shared";

    // --- through our owner ---
    let owner_rate = rt.block_on(async {
        let tpm = TpmHandle::open_party(&data, &tcti).await?;
        for i in 0..20 {
            tpm.sign(msg(i)).await?;
        }
        // Sequential: one caller, one request in flight.
        let mut lat = Vec::with_capacity(SEQUENTIAL);
        let start = Instant::now();
        for i in 0..SEQUENTIAL {
            let t = Instant::now();
            let sig = tpm.sign(msg(i)).await?;
            lat.push(t.elapsed());
            if i % 97 == 0 {
                point.verify(&msg(i), &sig).context("owner signature")?;
            }
        }
        let seq_rate = SEQUENTIAL as f64 / start.elapsed().as_secs_f64();
        push_rate_rows(
            rows,
            "sign via TPM owner, sequential",
            seq_rate,
            &mut lat,
            note,
        );

        // Concurrent: many tasks share the one owner (requests queue).
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for t in 0..CONCURRENT_TASKS {
            let tpm = tpm.clone();
            set.spawn(async move {
                let mut lat = Vec::new();
                for i in (t..CONCURRENT_TOTAL).step_by(CONCURRENT_TASKS) {
                    let t0 = Instant::now();
                    tpm.sign(format!("bench message {i}").into_bytes()).await?;
                    lat.push(t0.elapsed());
                }
                Ok::<_, quorate_host::tpm::TpmError>(lat)
            });
        }
        let mut lat = Vec::with_capacity(CONCURRENT_TOTAL);
        while let Some(r) = set.join_next().await {
            lat.extend(r??);
        }
        let conc_rate = CONCURRENT_TOTAL as f64 / start.elapsed().as_secs_f64();
        push_rate_rows(
            rows,
            &format!("sign via TPM owner, {CONCURRENT_TASKS} tasks"),
            conc_rate,
            &mut lat,
            "latency includes queueing behind the other tasks",
        );

        // Load per use: SRK re-created + key loaded + sign, each time.
        let blob = KeyStore::new(&data).load(KeyRole::Vote)?;
        let mut lat = Vec::with_capacity(LOAD_PER_USE);
        let start = Instant::now();
        for i in 0..LOAD_PER_USE {
            let t = Instant::now();
            tpm.load_vote_key(blob.clone(), None).await?;
            tpm.sign(msg(i)).await?;
            lat.push(t.elapsed());
        }
        let lpu_rate = LOAD_PER_USE as f64 / start.elapsed().as_secs_f64();
        push_rate_rows(
            rows,
            "sign with load per use (CreatePrimary+Load+Sign)",
            lpu_rate,
            &mut lat,
            "why the owner keeps the vote key loaded",
        );
        tpm.close().await?;
        Ok::<_, anyhow::Error>(seq_rate)
    })?;

    // --- tpm2_sign, one process per signature, same swtpm, same key ---
    let tools_rate = tpm2_sign_loop(rows, &tcti, &data, party.dir(), &enrollment)?;
    rows.push(Row::new(
        "tpm",
        "ratio: owner sequential / tpm2_sign loop",
        owner_rate / tools_rate,
        "x",
        "same swtpm, same key blobs",
    ));

    // --- ring verification ---
    let sig = rt.block_on(async {
        let tpm = TpmHandle::open_party(&data, &tcti).await?;
        let s = tpm.sign(msg(0)).await?;
        tpm.close().await?;
        Ok::<_, anyhow::Error>(s)
    })?;
    let m = msg(0);
    let start = Instant::now();
    for _ in 0..RING_VERIFIES {
        point.verify(&m, &sig).context("ring verify")?;
    }
    rows.push(Row::new(
        "tpm",
        "ring ECDSA P-256 verify",
        RING_VERIFIES as f64 / start.elapsed().as_secs_f64(),
        "ops/s",
        "one core",
    ));
    // --- measured launch: PolicyPCR-bound vote key, quotes, evidence ---
    measured_rows(rows, rt, &tcti, &party.dir().join("measured"), owner_rate)?;
    party.finish();
    Ok(())
}

const POLICY_SIGNS: usize = 1000;
const QUOTES: usize = 300;
const EVIDENCE_VERIFIES: usize = 300;

/// Rows for the measured party: signing with the PolicyPCR-bound vote key
/// (beside the unbound rate), quotes per second, evidence verifications.
fn measured_rows(
    rows: &mut Vec<Row>,
    rt: &tokio::runtime::Runtime,
    tcti: &Tcti,
    data: &Path,
    unbound_rate: f64,
) -> anyhow::Result<()> {
    use quorate_attestation::evidence::Freshness;
    use quorate_attestation::pcr::PcrIndex;
    use quorate_attestation::policy::Policy;
    use quorate_attestation::verify::{verify, VerifierState};
    use quorate_firmware::types::Sha256Digest;
    use quorate_host::init::{init_with, MeasuredInit};
    use quorate_host::launch::{measured_launch, Measurement};

    let m = Measurement {
        pcr: PcrIndex::DEFAULT_MEASUREMENT,
        executable: Sha256Digest::of(b"bench executable"),
        config: Sha256Digest::of(b"bench config"),
    };
    rt.block_on(async {
        init_with(
            &InitOptions {
                data_dir: data.to_owned(),
                party_id: PartyId(2),
                tpm: TpmTarget::Tcti(tcti.clone()),
                force: false,
            },
            Some(MeasuredInit {
                measurement: m,
                dev: false,
            }),
        )
        .await?;
        let tpm = TpmHandle::open_party(data, tcti).await?;
        measured_launch(&tpm, data, &m, false).await?;

        let mut lat = Vec::with_capacity(POLICY_SIGNS);
        let start = Instant::now();
        for i in 0..POLICY_SIGNS {
            let t = Instant::now();
            tpm.sign(format!("policy {i}").into_bytes()).await?;
            lat.push(t.elapsed());
        }
        let rate = POLICY_SIGNS as f64 / start.elapsed().as_secs_f64();
        push_rate_rows(
            rows,
            "sign, PolicyPCR-bound vote key, sequential",
            rate,
            &mut lat,
            "PolicyPCR + Sign on a reused policy session",
        );
        rows.push(Row::new(
            "tpm",
            "ratio: unbound / PolicyPCR-bound signing",
            unbound_rate / rate,
            "x",
            "cost of binding the key to the measurement",
        ));

        let mut lat = Vec::with_capacity(QUOTES);
        let start = Instant::now();
        for i in 0..QUOTES {
            let t = Instant::now();
            let qd = Sha256Digest::of(&i.to_be_bytes()).0.to_vec();
            tpm.quote(vec![m.pcr.get()], qd).await?;
            lat.push(t.elapsed());
        }
        push_rate_rows(
            rows,
            "quote (PCR 15) via TPM owner",
            QUOTES as f64 / start.elapsed().as_secs_f64(),
            &mut lat,
            "AK kept loaded after first use",
        );

        let nonce = Freshness::Nonce(vec![7; 32]);
        let tls = Sha256Digest::of(b"bench tls key");
        let ev =
            quorate_host::evidence::produce_evidence(&tpm, data, m.pcr, &[], &nonce, &tls).await?;
        let policy = Policy::new(vec![m.executable], m.config);
        let start = Instant::now();
        for _ in 0..EVIDENCE_VERIFIES {
            verify(&ev, &nonce, &policy, &mut VerifierState::default())?;
        }
        rows.push(Row::new(
            "attestation",
            "evidence verification (quote, certify, log replay, policy)",
            EVIDENCE_VERIFIES as f64 / start.elapsed().as_secs_f64(),
            "ops/s",
            "real swtpm evidence, no EK chain, one core",
        ));
        tpm.close().await?;
        Ok::<_, anyhow::Error>(())
    })
}

fn push_rate_rows(rows: &mut Vec<Row>, what: &str, rate: f64, lat: &mut [Duration], note: &str) {
    rows.push(Row::new("tpm", what, rate, "ops/s", note));
    rows.push(Row::new(
        "tpm",
        format!("{what} p50"),
        ms(percentile(lat, 50.0)),
        "ms",
        "",
    ));
    rows.push(Row::new(
        "tpm",
        format!("{what} p99"),
        ms(percentile(lat, 99.0)),
        "ms",
        "",
    ));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Loads the party's own blobs with tpm2-tools (under an SRK made by
/// `tpm2_createprimary` from the same template), persists the key, and
/// times `tpm2_sign` in a loop. Returns signatures per second.
fn tpm2_sign_loop(
    rows: &mut Vec<Row>,
    tcti: &Tcti,
    data: &Path,
    work: &Path,
    enrollment: &Enrollment,
) -> anyhow::Result<f64> {
    let tcti_s = tcti.to_string();
    let tool = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", &tcti_s)
            .env("TSS2_LOG", "all+none")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} (install tpm2-tools: make deps)", args[0]))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let p = |name: &str| work.join(name).display().to_string();
    let keys = data.join("keys");
    let (srk, key, msg, sig) = (p("srk.ctx"), p("vote.ctx"), p("msg"), p("sig"));
    // Without a resource manager each tool leaves its objects loaded: flush
    // between steps (swtpm has three slots).
    tool(&["tpm2_flushcontext", "-t"])?;
    tool(&[
        "tpm2_createprimary",
        "-Q",
        "-C",
        "o",
        "-G",
        "ecc256:null:aes128cfb",
        "-a",
        "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
        "-c",
        &srk,
    ])?;
    tool(&["tpm2_flushcontext", "-t"])?;
    tool(&[
        "tpm2_load",
        "-Q",
        "-C",
        &srk,
        "-u",
        &keys.join("vote.pub").display().to_string(),
        "-r",
        &keys.join("vote.priv").display().to_string(),
        "-c",
        &key,
    ])?;
    tool(&["tpm2_flushcontext", "-t"])?;
    tool(&["tpm2_evictcontrol", "-Q", "-C", "o", "-c", &key, PERSISTENT])?;
    tool(&["tpm2_flushcontext", "-t"])?;
    std::fs::write(&msg, b"bench message")?;

    let sign = [
        "tpm2_sign",
        "-c",
        PERSISTENT,
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-o",
        &sig,
        &msg,
    ];
    for _ in 0..5 {
        tool(&sign)?;
    }
    let mut lat = Vec::with_capacity(TPM2_SIGN_RUNS);
    let start = Instant::now();
    for _ in 0..TPM2_SIGN_RUNS {
        let t = Instant::now();
        tool(&sign)?;
        lat.push(t.elapsed());
    }
    let rate = TPM2_SIGN_RUNS as f64 / start.elapsed().as_secs_f64();
    // The tool signed with the party's key: its TPMT_SIGNATURE verifies
    // under the enrolled TPMT_PUBLIC.
    let public = TpmtPublic::parse(&hex::decode(&enrollment.vote_key.tpmt_public)?)?;
    let raw = std::fs::read(&sig)?;
    verify_ecdsa_p256(&public, b"bench message", &TpmSignature::parse(&raw)?)
        .context("tpm2_sign's signature does not verify under the enrolled key")?;
    tool(&["tpm2_evictcontrol", "-Q", "-C", "o", "-c", PERSISTENT])?;
    push_rate_rows(
        rows,
        "tpm2_sign in a loop (process per signature)",
        rate,
        &mut lat,
        "tpm2-tools 5.4, persistent handle, same key",
    );
    Ok(rate)
}
