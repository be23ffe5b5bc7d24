//! `make demo`: starts a local dev cluster (`quorate dev`) and walks
//! through the mission in a few screens, through the party API only (the
//! Rust client). Exits 0 only when every step did what it says.
#![allow(clippy::indexing_slicing)]

use anyhow::{anyhow, bail, Context as _};
use quorate_host::client::Client;
use quorate_host::dev::DevCluster;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PARTIES: u32 = 4;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
}

fn screen(n: usize, title: &str, what: &str) {
    println!();
    println!(
        "━━━ {n}. {title} {}",
        "━".repeat(60usize.saturating_sub(title.len()))
    );
    for line in what.lines() {
        println!("  {line}");
    }
    println!();
}

fn verdict(o: Outcome, msg: &str) -> Outcome {
    let tag = match o {
        Outcome::Pass => "✔ PASS",
        Outcome::Fail => "✘ FAIL",
    };
    println!("  {tag}: {msg}");
    o
}

async fn settled(c: &Client, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = c.operation(id).await?;
        if v["status"] != "pending" {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("operation {id} still pending after {timeout:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Polls an operation until it is decided (ordered into a block), whatever
/// its status.
async fn decided(c: &Client, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = c.operation(id).await?;
        if v["decided"] == true {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("operation {id} not decided after {timeout:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn keygen(participants: &[u32], scheme: &str) -> Value {
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": participants,
        "threshold": 3, "scheme": scheme, "deadline_secs": 600}})
}

fn print_verdicts(v: &Value) {
    for x in v["verdicts"].as_array().cloned().unwrap_or_default() {
        let reason = match &x["reason"] {
            Value::Null => String::new(),
            r => format!(
                " — {}: {}",
                r["code"].as_str().unwrap_or("?"),
                r["text"].as_str().unwrap_or("")
            ),
        };
        println!(
            "    P{} {}{}",
            x["party"],
            if x["approve"] == true {
                "approves"
            } else {
                "REJECTS"
            },
            reason
        );
    }
}

struct Demo {
    dir: PathBuf,
    /// The `quorate` binary the cluster runs.
    bin: PathBuf,
    dev: Child,
    cluster: DevCluster,
}

impl Demo {
    fn client(&self, id: u32) -> anyhow::Result<Client> {
        self.cluster.client(id)
    }

    fn reload(&mut self) -> anyhow::Result<()> {
        self.cluster = DevCluster::read(&self.dir)?;
        Ok(())
    }

    fn pid(&self, id: u32) -> u32 {
        self.cluster
            .parties
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.pid)
            .unwrap_or(0)
    }
}

async fn start(dir: &Path) -> anyhow::Result<Demo> {
    // QUORATE_BIN, or `quorate` beside this binary (target/<profile>/).
    let bin = match std::env::var_os("QUORATE_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?
            .parent()
            .map(|p| p.join("quorate"))
            .ok_or_else(|| anyhow!("cannot locate the quorate binary"))?,
    };
    if !bin.exists() {
        bail!(
            "{} is missing: run `make build` (or set QUORATE_BIN)",
            bin.display()
        );
    }
    println!(
        "Starting a dev cluster: {} dev --parties {PARTIES} --dir {}",
        bin.display(),
        dir.display()
    );
    let dev = Command::new(&bin)
        .args(["dev", "--parties", &PARTIES.to_string(), "--dir"])
        .arg(dir)
        .args(["--restart-after-secs", "3"])
        .stdin(Stdio::null())
        .spawn()
        .context("starting quorate dev")?;
    let mut demo = Demo {
        dir: dir.to_path_buf(),
        bin: bin.clone(),
        dev,
        cluster: DevCluster {
            dir: dir.to_path_buf(),
            fault_model: String::new(),
            supervisor_pid: 0,
            parties: Vec::new(),
        },
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(Some(s)) = demo.dev.try_wait() {
            bail!("quorate dev exited: {s}");
        }
        if demo.reload().is_ok()
            && demo.cluster.parties.len() == PARTIES as usize
            && demo.cluster.parties.iter().all(|p| p.pid != 0)
        {
            let mut up = true;
            for id in 1..=PARTIES {
                up &= match demo.client(id) {
                    Ok(c) => c.status().await.is_ok(),
                    Err(_) => false,
                };
            }
            if up {
                return Ok(demo);
            }
        }
        if Instant::now() > deadline {
            bail!("the dev cluster did not come up in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn step_attestation(d: &Demo) -> anyhow::Result<Outcome> {
    screen(
        1,
        "The parties attest each other",
        "Each party reports, for every peer, whether its authenticated (mTLS) connection\nis up and whether its TPM attestation evidence verified (GET /v1/peers).",
    );
    // `quorate dev` enrolled every party by credential activation (EK
    // certificate from the local CA); admission pins the activated AKs.
    for id in 1..=PARTIES {
        let path = d.dir.join(format!("enroll/p{id}.enrolled.json"));
        let record: Option<quorate_host::enroll_cli::EnrollmentRecord> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match record {
            Some(r) if r.ek_certified => println!(
                "    P{id}: AK {}… activated against its certified EK (issuer \"{}\")",
                r.ak_name.get(..16).unwrap_or(&r.ak_name),
                r.ek_issuer.unwrap_or_default()
            ),
            _ => {
                return Ok(verdict(
                    Outcome::Fail,
                    &format!("P{id} has no enrollment record with a certified EK"),
                ))
            }
        }
    }
    // Give the peer connections and admissions a moment after the start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut up = true;
        for id in 1..=PARTIES {
            let s = d.client(id)?.status().await?;
            up &= s.peers_connected == PARTIES as usize - 1
                && s.peers_attested == PARTIES as usize - 1;
        }
        if up || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut all_attested = true;
    let mut all_connected = true;
    for id in 1..=PARTIES {
        let p = d.client(id)?.peers().await?;
        for peer in p["peers"].as_array().cloned().unwrap_or_default() {
            all_attested &= peer["attested"] == true;
            all_connected &= peer["connected"] == true;
            println!(
                "    P{id} sees P{}: {:<10} attested={:<5} {}",
                peer["party"],
                if peer["connected"] == true {
                    "connected"
                } else {
                    "DOWN"
                },
                peer["attested"],
                peer["attestation"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if all_attested && all_connected {
        verdict(Outcome::Pass, "every party attested every peer")
    } else if !all_connected {
        verdict(Outcome::Fail, "some peer connections are down")
    } else {
        verdict(Outcome::Fail, "not every peer's evidence verified")
    })
}

async fn step_keygen(d: &Demo) -> anyhow::Result<(Outcome, Option<String>)> {
    screen(
        2,
        "All parties approve a key generation",
        "P1's MPC engine asks for a 3-of-4 FROST key generation (POST /v1/operations).\nConsensus orders the request; each party's daemon judges it by its local policy\nand posts a verdict; when every participant approves, the session starts.",
    );
    let p1 = d.client(1)?;
    let req = keygen(&[1, 2, 3, 4], "frost-secp256k1");
    println!("    POST /v1/operations {req}");
    let r = p1.submit_json(&req).await?;
    println!("    → 202 {{\"id\": \"{}\"}}", r.id);
    let v = settled(&p1, &r.id, Duration::from_secs(60)).await?;
    println!("    GET /v1/operations/{} → status {}", r.id, v["status"]);
    print_verdicts(&v);
    let approvals = v["verdicts"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["approve"] == true).count())
        .unwrap_or(0);
    let session = v["record"]["session"].as_str().map(str::to_string);
    Ok(
        if v["status"] == "executed" && approvals == PARTIES as usize {
            (
                verdict(
                    Outcome::Pass,
                    &format!("all {PARTIES} parties approved; session opened"),
                ),
                session,
            )
        } else {
            (
                verdict(
                    Outcome::Fail,
                    &format!("expected executed with {PARTIES} approvals: {v}"),
                ),
                session,
            )
        },
    )
}

async fn step_rejected(d: &Demo) -> anyhow::Result<Outcome> {
    screen(
        3,
        "A conflicting request is rejected, with its reason",
        "P4's operator runs only FROST schemes ([party.local_policy] allowed_schemes).\nP1 asks for a key generation with another scheme; and P2 asks to sign with a key\nthat no key generation ever produced.",
    );
    let p1 = d.client(1)?;
    let r = p1
        .submit_json(&keygen(&[1, 2, 3, 4], "gg18-secp256k1"))
        .await?;
    let v = settled(&p1, &r.id, Duration::from_secs(60)).await?;
    println!("    keygen gg18-secp256k1 → {}", v["status"]);
    print_verdicts(&v);
    let policy_ok = v["status"] == "rejected"
        && v["verdicts"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["party"] == 4
                    && x["approve"] == false
                    && x["reason"]["code"] == "scheme_not_allowed"
            })
        });
    let p2 = d.client(2)?;
    let sign = json!({"type": "create_session", "session": {"kind": "signing", "key": "ee".repeat(32),
        "message_digest": "11".repeat(32), "signers": [1, 2, 3], "deadline_secs": 60}});
    // The daemon checks the session rules against its decided state before
    // it accepts: a request consensus would refuse is answered 422 at once.
    let unknown_ok = match p2.submit_json(&sign).await {
        Err(quorate_host::client::ClientError::Status { status, body }) => {
            println!("    signing with an unknown key → {status} {body}");
            status.as_u16() == 422 && body.contains("unknown_key")
        }
        Ok(r) => {
            println!(
                "    signing with an unknown key → accepted as {} (expected 422)",
                r.id
            );
            false
        }
        Err(e) => return Err(e.into()),
    };
    Ok(if policy_ok && unknown_ok {
        verdict(
            Outcome::Pass,
            "the scheme refused by P4's policy, on record; the unknown key refused before acceptance",
        )
    } else {
        verdict(Outcome::Fail, "a request that should be refused was not")
    })
}

async fn step_messages(d: &Demo, session: &str) -> anyhow::Result<Outcome> {
    screen(
        4,
        "Round messages are broadcast and seen identically by all",
        "Each party's MPC engine posts its round-1 message to all (session_message).\nEvery party then reads the round back (GET /v1/sessions/{id}/messages?round=1).",
    );
    let mut receipts = Vec::new();
    for id in 1..=PARTIES {
        let c = d.client(id)?;
        let payload = format!("{id:02x}{}", "c0ffee".repeat(8));
        let r = c
            .submit_json(
                &json!({"type": "session_message", "session": session, "round": 1,
                "broadcast": payload}),
            )
            .await?;
        receipts.push((c, r.id));
    }
    for (c, r) in &receipts {
        settled(c, r, Duration::from_secs(60)).await?;
    }
    let mut views = Vec::new();
    for id in 1..=PARTIES {
        let m = d.client(id)?.messages(session, Some(1)).await?;
        let msgs = m["messages"].clone();
        let digest = quorate_firmware::types::Sha256Digest::of(msgs.to_string().as_bytes());
        println!(
            "    P{id} sees {} round-1 messages, view digest {}",
            msgs.as_array().map(Vec::len).unwrap_or(0),
            &digest.to_string()[..16]
        );
        views.push(msgs);
    }
    let same = views.windows(2).all(|w| w[0] == w[1]);
    let full = views
        .first()
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() == PARTIES as usize);
    Ok(if same && full {
        verdict(
            Outcome::Pass,
            "every party holds the same messages in the same order",
        )
    } else {
        verdict(Outcome::Fail, "the parties' views differ")
    })
}

async fn heights(d: &Demo, ids: &[u32]) -> Vec<Option<(u64, String)>> {
    let mut out = Vec::new();
    for id in ids {
        let s = match d.client(*id) {
            Ok(c) => c.status().await.ok(),
            Err(_) => None,
        };
        out.push(s.map(|s| (s.height, s.state_root)));
    }
    out
}

async fn step_crash(d: &mut Demo) -> anyhow::Result<Outcome> {
    screen(
        5,
        "One party is killed and restarted, and catches up",
        "P3's daemon is killed with SIGKILL. A byzantine quorum of 3 of 4 keeps deciding.\n`quorate dev` restarts P3 from its data dir; it replays its store and fetches\nthe blocks it missed from its peers.",
    );
    let victim = 3u32;
    let pid = d.pid(victim);
    let before = d.client(victim)?.status().await?.height;
    println!("    kill -9 {pid}   (P3 at height {before})");
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    if !ok.success() {
        bail!("could not kill P3 (pid {pid})");
    }
    let p1 = d.client(1)?;
    let mut receipts = Vec::new();
    for _ in 0..3 {
        receipts.push(
            p1.submit_json(&keygen(&[1, 2, 4], "frost-ed25519"))
                .await?
                .id,
        );
    }
    for r in &receipts {
        let v = settled(&p1, r, Duration::from_secs(60)).await?;
        println!("    while P3 is down: {r} → {}", v["status"]);
    }
    let others = heights(d, &[1, 2, 4]).await;
    println!(
        "    heights of P1, P2, P4: {:?}",
        others
            .iter()
            .map(|h| h.as_ref().map(|x| x.0))
            .collect::<Vec<_>>()
    );
    // Wait for the restart and the catch-up.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        d.reload()?;
        let new_pid = d.pid(victim);
        let all = heights(d, &[1, 2, 3, 4]).await;
        let agree = all.iter().all(|h| h.is_some()) && all.windows(2).all(|w| w[0] == w[1]);
        if new_pid != 0 && new_pid != pid && agree {
            let (h, root) = all[0].clone().unwrap_or_default();
            println!("    P3 restarted (pid {new_pid}) and is at height {h}, state root {}… like every party", &root[..16.min(root.len())]);
            return Ok(if h > before {
                verdict(
                    Outcome::Pass,
                    "P3 caught up on the blocks decided without it",
                )
            } else {
                verdict(Outcome::Fail, "nothing was decided while P3 was down")
            });
        }
        if Instant::now() > deadline {
            println!("    statuses: {all:?}");
            return Ok(verdict(Outcome::Fail, "P3 did not catch up within 90 s"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends `sig` to `pid` with kill(1).
fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?;
    if !ok.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// Stops party `id` with SIGTERM and waits until `quorate dev` has started
/// it again (running `exe`, described as `what`) and its API answers.
async fn restart_party(d: &mut Demo, id: u32, exe: &Path, what: &str) -> anyhow::Result<()> {
    let old = d.pid(id);
    signal(old, "TERM")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        d.reload()?;
        let p = d.cluster.parties.iter().find(|p| p.id == id).cloned();
        if let Some(p) = p {
            let runs_exe = p
                .exe
                .as_deref()
                .is_some_and(|e| std::fs::canonicalize(e).ok() == std::fs::canonicalize(exe).ok());
            if p.pid != 0 && p.pid != old && runs_exe {
                if let Ok(c) = d.client(id) {
                    if c.status().await.is_ok() {
                        println!("    P{id} restarted under {what} (pid {})", p.pid);
                        return Ok(());
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!("party {id} did not come back under {}", exe.display());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Each of `viewers`' view of `target`: (attested, attestation text).
async fn views_of(d: &Demo, viewers: &[u32], target: u32) -> Vec<(u32, bool, String)> {
    let mut out = Vec::new();
    for id in viewers {
        let peers = match d.client(*id) {
            Ok(c) => c.peers().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let me = peers["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["party"] == target).cloned())
            .unwrap_or(Value::Null);
        out.push((
            *id,
            me["attested"] == true,
            me["attestation"].as_str().unwrap_or("unknown").to_string(),
        ));
    }
    out
}

fn short(hex: &str) -> &str {
    &hex[..16.min(hex.len())]
}

async fn step_modified(d: &mut Demo) -> anyhow::Result<Outcome> {
    screen(
        6,
        "A party running a modified executable is refused",
        "P2 is restarted, same TPM and data dir, under a copy of quorate with one byte\nchanged. Its measured launch extends that copy's digest into its PCR; its quote\nshows it, and the peers refuse it (the reference values approve one executable).\nThe other three still decide. Then P2 runs the real binary again (its TPM\nrebooted: PCRs only reset then), is re-admitted, catches up and casts the\nverdict it missed.",
    );
    let victim = 2u32;
    let others = [1u32, 3, 4];
    let modified = d
        .cluster
        .parties
        .iter()
        .find(|p| p.id == victim)
        .map(|p| p.exe_override(&d.cluster.dir))
        .ok_or_else(|| anyhow!("no party {victim}"))?;
    quorate_tests::cluster::write_modified_binary(&d.bin, &modified)?;
    let digest = |p: &Path| -> anyhow::Result<String> {
        Ok(quorate_firmware::types::Sha256Digest::of(&std::fs::read(p)?).to_string())
    };
    println!(
        "    approved   {}  sha256 {}…",
        d.bin.display(),
        short(&digest(&d.bin)?)
    );
    println!(
        "    modified   {}  sha256 {}…  (one byte of a marker string)",
        modified.display(),
        short(&digest(&modified)?)
    );
    restart_party(d, victim, &modified, "the modified executable").await?;

    // Every peer refuses P2's evidence, naming the executable.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let v = views_of(d, &others, victim).await;
        if v.iter()
            .all(|(_, att, text)| !att && text.contains("REFUSED"))
        {
            break Some(v);
        }
        if Instant::now() > deadline {
            for (id, _, text) in &v {
                println!("    P{id} sees P2: {text}");
            }
            break None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let Some(refused) = refused else {
        let _ = std::fs::remove_file(&modified);
        return Ok(verdict(
            Outcome::Fail,
            "the peers did not refuse the modified executable",
        ));
    };
    for (id, _, text) in &refused {
        println!("    P{id} sees P2: {text}");
    }
    let log = d
        .cluster
        .parties
        .first()
        .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
        .unwrap_or_default();
    if let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("attestation refused; excluding") && l.contains("peer=P2"))
    {
        let from = line.find("WARN").unwrap_or(0);
        println!("    P1's log: {}", line.get(from..).unwrap_or(line).trim());
    }
    let names_exe = refused.iter().all(|(_, _, t)| t.contains("executable"));

    // The three attested parties (a byzantine quorum of 3 of 4) decide
    // alone. A key generation needs every party's approval, so this one
    // stays pending until P2's verdict comes in.
    let p1 = d.client(1)?;
    let before = d.client(victim)?.status().await?.height;
    let r = p1
        .submit_json(&keygen(&[1, 3, 4], "frost-secp256k1"))
        .await?;
    let v = decided(&p1, &r.id, Duration::from_secs(60)).await?;
    let hs = heights(d, &[1, 2, 3, 4]).await;
    let h: Vec<Option<u64>> = hs.iter().map(|x| x.as_ref().map(|y| y.0)).collect();
    println!(
        "    without P2: P1's keygen {} decided at height {}, status {} (P2's approval is missing)",
        r.id, v["record"]["position"]["height"], v["status"]
    );
    println!("    heights of P1..P4: {h:?}");
    let decided_without = h.first().copied().flatten().unwrap_or(0) > before
        && h.get(1).copied().flatten() == Some(before);

    // The real binary again: P2's swtpm restarts with it (a TPM reboot, so
    // PCR 23 starts from zero), its launch measures the approved digest,
    // and the peers admit it once its 30 s exclusion is over.
    std::fs::remove_file(&modified)?;
    let bin = d.bin.clone();
    restart_party(d, victim, &bin, "the approved executable").await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let readmitted = loop {
        let v = views_of(d, &others, victim).await;
        let all = heights(d, &[1, 2, 3, 4]).await;
        let agree = all.iter().all(|h| h.is_some()) && all.windows(2).all(|w| w[0] == w[1]);
        if v.iter().all(|(_, att, _)| *att) && agree {
            for (id, _, text) in &v {
                println!("    P{id} sees P2: {text}");
            }
            let (h, _) = all[0].clone().unwrap_or_default();
            println!("    P2 caught up: every party at height {h}");
            break true;
        }
        if Instant::now() > deadline {
            for (id, _, text) in &v {
                println!("    P{id} sees P2: {text}");
            }
            println!("    heights: {all:?}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Back in, P2 judged the key generation it missed and approved it.
    let executed = if readmitted {
        let v = settled(&p1, &r.id, Duration::from_secs(60)).await?;
        println!("    {} → {}", r.id, v["status"]);
        print_verdicts(&v);
        v["status"] == "executed"
    } else {
        false
    };
    Ok(if names_exe && decided_without && readmitted && executed {
        verdict(
            Outcome::Pass,
            "the modified P2 was refused by every peer, the other three decided without it, and the approved P2 was re-admitted, caught up and approved",
        )
    } else if !names_exe {
        verdict(Outcome::Fail, "the refusal does not name the executable")
    } else if !decided_without {
        verdict(
            Outcome::Fail,
            "the cluster did not decide without the refused party (or the refused party decided)",
        )
    } else if !readmitted {
        verdict(
            Outcome::Fail,
            "P2 was not re-admitted under the approved executable within 120 s",
        )
    } else {
        verdict(
            Outcome::Fail,
            "the key generation decided without P2 did not execute with its approval",
        )
    })
}

async fn step_history(d: &Demo) -> anyhow::Result<Outcome> {
    screen(
        7,
        "The decided history, with its certificates",
        "Every decided block links to its parent and carries a commit certificate: the\nTPM-signed precommits of a quorum (GET /v1/blocks).",
    );
    let p1 = d.client(1)?;
    let b1 = p1.blocks(1, 256).await?;
    let blocks = b1["blocks"].as_array().cloned().unwrap_or_default();
    println!("    height  proposer  batches  ops  signers       hash");
    let mut ok = !blocks.is_empty();
    let mut parent: Option<String> = None;
    for b in &blocks {
        let ops: u64 = b["batches"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["operations"].as_u64()).sum())
            .unwrap_or(0);
        let signers = b["certificate"]["signers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let hash = b["hash"].as_str().unwrap_or("");
        println!(
            "    {:>6}  P{:<7}  {:>7}  {:>3}  {:<12}  {}…",
            b["height"].as_u64().unwrap_or(0),
            b["proposer"].as_u64().unwrap_or(0),
            b["batches"].as_array().map(Vec::len).unwrap_or(0),
            ops,
            signers
                .iter()
                .map(|s| format!("P{s}"))
                .collect::<Vec<_>>()
                .join(","),
            &hash[..16.min(hash.len())]
        );
        ok &= signers.len() >= 3 && b["certificate"]["block"] == b["hash"];
        if let Some(p) = &parent {
            ok &= b["parent"].as_str() == Some(p.as_str());
        }
        parent = Some(hash.to_string());
    }
    // Every party holds the same chain. Each assembled its own certificate
    // from the precommits that reached it first, so the signer sets may
    // differ; each must still be a quorum for the same block.
    let chain = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["blocks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| (b["height"].clone(), b["hash"].clone(), b["parent"].clone()))
            .collect()
    };
    let mut same = true;
    for id in 2..=PARTIES {
        let other = d.client(id)?.blocks(1, 256).await?;
        let n = chain(&b1).len().min(chain(&other).len());
        same &= chain(&b1).get(..n) == chain(&other).get(..n) && n > 0;
        same &= other["blocks"].as_array().is_some_and(|a| {
            a.iter().all(|b| {
                b["certificate"]["signers"]
                    .as_array()
                    .is_some_and(|s| s.len() >= 3)
                    && b["certificate"]["block"] == b["hash"]
            })
        });
    }
    Ok(if ok && same {
        verdict(
            Outcome::Pass,
            &format!(
                "{} blocks, hash-linked, each certified by a quorum, the same chain at every party",
                blocks.len()
            ),
        )
    } else {
        verdict(Outcome::Fail, "the history is not consistent")
    })
}

async fn step_audit(d: &Demo) -> anyhow::Result<Outcome> {
    screen(
        8,
        "The audit log, verified offline",
        "Every decided operation is an entry of a Merkle log identical at every party;\ncheckpoints are TPM-quoted and cosigned by a quorum. An auditor exports a\nparty's log (quorate audit export, beside the running daemon) and checks it\nwith no TPM and no network (quorate audit verify --policy policy.toml).",
    );
    // Wait for a certified checkpoint at P1 (the policy checkpoints every
    // 10 s of block time or 64 entries).
    let p1 = d.client(1)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let note = loop {
        if let Ok(v) = p1.log_checkpoint().await {
            if let Some(n) = v["note"].as_str() {
                break n.to_string();
            }
        }
        if Instant::now() > deadline {
            return Ok(verdict(
                Outcome::Fail,
                "no certified checkpoint within 60 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("    P1's latest certified checkpoint (a C2SP signed note):");
    for l in note.lines() {
        let shown: String = l.chars().take(100).collect();
        println!("      {shown}");
    }
    let bundle = d.dir.join("p2-audit.qab");
    let out = Command::new(&d.bin)
        .args(["audit", "export", "--data-dir"])
        .arg(d.dir.join("p2"))
        .arg("--out")
        .arg(&bundle)
        .output()?;
    if !out.status.success() {
        return Ok(verdict(
            Outcome::Fail,
            &format!("export failed: {}", String::from_utf8_lossy(&out.stderr)),
        ));
    }
    let verify = |path: &Path| {
        Command::new(&d.bin)
            .args(["audit", "verify", "--bundle"])
            .arg(path)
            .arg("--policy")
            .arg(d.dir.join("policy.toml"))
            .arg("--allow-dev")
            .output()
    };
    let out = verify(&bundle)?;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    println!("    $ quorate audit export --data-dir p2 --out p2-audit.qab");
    println!("    $ quorate audit verify --bundle p2-audit.qab --policy policy.toml --allow-dev");
    for l in report.lines() {
        println!("      {l}");
    }
    let good = out.status.success();
    // One flipped byte in the bundle is found.
    let mut bytes = std::fs::read(&bundle)?;
    let at = bytes.len() * 2 / 3;
    if let Some(b) = bytes.get_mut(at) {
        *b ^= 1;
    }
    let tampered = d.dir.join("p2-audit-tampered.qab");
    std::fs::write(&tampered, &bytes)?;
    let out = verify(&tampered)?;
    let bad_report = String::from_utf8_lossy(&out.stdout).to_string();
    let first_problem = bad_report
        .lines()
        .find(|l| l.starts_with("result"))
        .unwrap_or("")
        .to_string();
    println!("    The same bundle with one byte flipped (offset {at}):");
    println!("      {first_problem}");
    let caught = out.status.code() == Some(1);
    Ok(if good && caught {
        verdict(
            Outcome::Pass,
            "the exported log verifies offline; a one-byte change is caught",
        )
    } else {
        verdict(
            Outcome::Fail,
            "the audit bundle did not verify as it should",
        )
    })
}

/// Prints what P1's `/metrics` measured during the demo.
async fn print_metrics(d: &Demo) -> anyhow::Result<()> {
    let text = d.client(1)?.metrics().await?;
    let get = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    println!();
    println!("━━━ Measured at P1 (GET /metrics) {}", "━".repeat(38));
    println!(
        "  height {}, {} blocks decided since its start, {} operations accepted",
        get("quorate_height "),
        get("quorate_decisions_total "),
        get("quorate_accepted_operations_total ")
    );
    for (what, m) in [
        (
            "commit latency (own batch signed → decided)",
            "quorate_commit_latency_seconds",
        ),
        ("TPM signature latency", "quorate_tpm_sign_latency_seconds"),
    ] {
        let n = get(&format!("{m}_count "));
        let sum = get(&format!("{m}_sum "));
        if n > 0.0 {
            println!("  {what}: {n} samples, mean {:.1} ms", sum / n * 1000.0);
        }
    }
    Ok(())
}

fn stop(d: &mut Demo) -> bool {
    println!();
    println!("Stopping the cluster (SIGTERM to quorate dev) ...");
    let _ = Command::new("kill")
        .args(["-TERM", &d.dev.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Ok(Some(s)) = d.dev.try_wait() {
            break s.success();
        }
        if Instant::now() > deadline {
            let _ = d.dev.kill();
            let _ = d.dev.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Nothing of the cluster may survive: no daemon, no swtpm.
    let needle = d.dir.to_string_lossy().into_owned();
    let stray: Vec<String> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(&needle) && !c.contains("quorate-demo"))
                .collect()
        })
        .unwrap_or_default();
    for s in &stray {
        println!("    stray process: {s}");
    }
    exited && stray.is_empty()
}

async fn demo(d: &mut Demo) -> anyhow::Result<Vec<(&'static str, Outcome)>> {
    let mut results = vec![("parties attest each other", step_attestation(d).await?)];
    let (o, session) = step_keygen(d).await?;
    results.push(("all approve a key generation", o));
    results.push(("a conflicting request is rejected", step_rejected(d).await?));
    match session {
        Some(s) => results.push((
            "round messages seen identically",
            step_messages(d, &s).await?,
        )),
        None => results.push(("round messages seen identically", Outcome::Fail)),
    }
    results.push((
        "a killed party restarts and catches up",
        step_crash(d).await?,
    ));
    results.push(("a modified executable is refused", step_modified(d).await?));
    results.push(("decided history with certificates", step_history(d).await?));
    results.push(("the audit log verifies offline", step_audit(d).await?));
    Ok(results)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match real_main().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<bool> {
    let tmp = tempfile::Builder::new().prefix("quorate-demo-").tempdir()?;
    let dir = match std::env::var_os("QUORATE_DEMO_DIR") {
        Some(d) => PathBuf::from(d),
        None => tmp.path().to_path_buf(),
    };
    let mut d = start(&dir).await?;
    let results = demo(&mut d).await;
    if let Err(e) = print_metrics(&d).await {
        println!("  (metrics unavailable: {e:#})");
    }
    let clean = stop(&mut d);
    let results = results.map_err(|e| anyhow!("{e:#}"))?;
    println!();
    println!("━━━ Summary {}", "━".repeat(60));
    let mut ok = true;
    for (name, o) in &results {
        let tag = match o {
            Outcome::Pass => "✔ PASS   ",
            Outcome::Fail => "✘ FAIL   ",
        };
        println!("  {tag} {name}");
        ok &= *o != Outcome::Fail;
    }
    println!(
        "  {} clean shutdown (every daemon sent TPM2_Shutdown and stopped its swtpm; no stray process)",
        if clean { "✔ PASS   " } else { "✘ FAIL   " }
    );
    ok &= clean;
    println!();
    println!(
        "{}",
        if ok {
            "Every step did what it says."
        } else {
            "Some step FAILED."
        }
    );
    Ok(ok)
}
