//! `make demo`: starts a local dev cluster (`quorate dev`) and walks
//! through the mission in a few screens, through the party API only (the
//! Rust client): real FROST keys made and used by the daemons' built-in
//! engines, each signature checked here by a library other than frost.
//! Prints how long each step took; exits 0 only when every step did what
//! it says.
// serde_json::Value indexing returns Null on a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use anyhow::{anyhow, bail, Context as _};
use quorate_host::client::Client;
use quorate_host::dev::DevCluster;
use quorate_tests::mpc::{
    is_plain_round2, session_end, taproot_output_key, verifier_name, verify_independently,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PARTIES: u32 = 4;
/// The schemes of the daemons' built-in FROST engine.
const SCHEMES: [&str; 2] = ["frost-ed25519", "frost-secp256k1-tr"];
/// The per-round deadline of the demo's signing sessions, in seconds: how
/// long ROAST waits for a selected signer's share before trying others.
const ROUND_SECS: u64 = 3;

/// How long `quorate dev` waits before restarting a party that died, in
/// seconds.
const RESTART_SECS: u64 = 8;

/// A key the cluster generated.
#[derive(Debug, Clone)]
struct Key {
    scheme: &'static str,
    /// The key id a signing names (the key generation's session id), hex.
    id: String,
    /// The group public key every participant computed, hex.
    group_key: String,
}

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
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keygen(participants: &[u32], scheme: &str) -> Value {
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": participants,
        "threshold": 3, "scheme": scheme, "deadline_secs": 600, "round_secs": 60}})
}

/// A signing by all four parties as candidates (ROAST picks 3 of them).
fn signing(key: &Key, msg: &[u8], taproot: Option<Value>) -> Value {
    let mut s = json!({"kind": "signing", "key": key.id, "message_digest": hex::encode(msg),
        "signers": [1, 2, 3, 4], "deadline_secs": 600, "round_secs": ROUND_SECS});
    if let Some(t) = taproot {
        s["taproot"] = t;
    }
    json!({"type": "create_session", "session": s})
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
        // Longer than a signing attempt's deadline: a signer killed
        // mid-signing comes back only after ROAST has moved on without it.
        .args(["--restart-after-secs", &RESTART_SECS.to_string()])
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

async fn step_keygen(d: &Demo) -> anyhow::Result<(Outcome, Vec<Key>)> {
    screen(
        2,
        "All parties approve a key generation, and a real key is made",
        "P1's MPC engine asks for a 3-of-4 FROST key generation for each built-in scheme\n(POST /v1/operations). Consensus orders the request; each party's daemon judges it\nby its local policy and posts a verdict; when every participant approves, the\nsession starts: every daemon's built-in engine runs the two DKG rounds through the\nlog, seals its key share in its TPM and posts the group key it computed.",
    );
    let p1 = d.client(1)?;
    let mut keys = Vec::new();
    let mut failures = Vec::new();
    for scheme in SCHEMES {
        let req = keygen(&[1, 2, 3, 4], scheme);
        println!("    POST /v1/operations {req}");
        let t0 = Instant::now();
        let r = p1.submit_json(&req).await?;
        println!("    → 202 {{\"id\": \"{}\"}}", r.id);
        let v = settled(&p1, &r.id, Duration::from_secs(60)).await?;
        println!("    GET /v1/operations/{} → status {}", r.id, v["status"]);
        print_verdicts(&v);
        let approvals = v["verdicts"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["approve"] == true).count())
            .unwrap_or(0);
        let sid = v["record"]["session"].as_str().unwrap_or_default();
        if v["status"] != "executed" || approvals != PARTIES as usize || sid.is_empty() {
            failures.push(format!(
                "{scheme}: expected executed with {PARTIES} approvals"
            ));
            continue;
        }
        let mut views = Vec::new();
        for id in 1..=PARTIES {
            views.push(session_end(&d.client(id)?, sid, Duration::from_secs(120)).await?);
        }
        let took = t0.elapsed();
        for (i, s) in views.iter().enumerate() {
            println!(
                "    P{}: {} — group key {}",
                i + 1,
                s["phase_label"].as_str().unwrap_or("?"),
                s["group_public_key"].as_str().unwrap_or("none")
            );
        }
        let gpk = views[0]["group_public_key"].as_str().unwrap_or_default();
        let key = views[0]["key"].as_str().unwrap_or_default();
        let agreed = views.iter().all(|s| {
            s["phase_label"] == "completed"
                && s["group_public_key"] == gpk
                && s["key"] == key
                && gpk.len() == 64
        });
        if !agreed || key != sid {
            failures.push(format!(
                "{scheme}: the parties did not all complete with one key"
            ));
            continue;
        }
        println!(
            "    {scheme}: key {}… made in {:.1} s; the same group key at all {PARTIES} parties",
            short(key),
            took.as_secs_f64()
        );
        println!();
        keys.push(Key {
            scheme,
            id: key.to_string(),
            group_key: gpk.to_string(),
        });
    }
    Ok(if failures.is_empty() {
        (
            verdict(
                Outcome::Pass,
                &format!(
                    "all {PARTIES} parties approved; a 3-of-4 key for each of {} made and agreed",
                    SCHEMES.join(", ")
                ),
            ),
            keys,
        )
    } else {
        (verdict(Outcome::Fail, &failures.join("; ")), keys)
    })
}

/// Submits `req` at `c` and shows that it is answered 422 naming `rule`
/// (the API's session-rule check), never accepted.
async fn refused_at_once(c: &Client, req: &Value, what: &str, rule: &str) -> anyhow::Result<bool> {
    match c.submit_json(req).await {
        Err(quorate_host::client::ClientError::Status { status, body }) => {
            println!("    {what} → {status} {body}");
            Ok(status.as_u16() == 422 && body.contains(rule))
        }
        Ok(r) => {
            println!("    {what} → accepted as {} (expected 422)", r.id);
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

async fn step_rejected(d: &Demo, keys: &[Key]) -> anyhow::Result<Outcome> {
    screen(
        3,
        "A conflicting request is rejected, with its reason",
        "P4's operator runs only FROST schemes ([party.local_policy] allowed_schemes).\nP1 asks for a key generation with another scheme: consensus orders it and P4's\nverdict refuses it, on record. P2 asks to sign with a key that no key generation\never produced, and P3 asks the secp256k1-tr key to sign 31 bytes (BIP-340 signs a\n32-byte digest): the session rules refuse both, so the daemon answers 422 naming\nthe rule before accepting (consensus would refuse them the same way).",
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
    let sign = json!({"type": "create_session", "session": {"kind": "signing", "key": "ee".repeat(32),
        "message_digest": "11".repeat(32), "signers": [1, 2, 3], "deadline_secs": 60}});
    // The daemon checks the session rules against its decided state before
    // it accepts: a request consensus would refuse is answered 422 at once.
    let unknown_ok = refused_at_once(
        &d.client(2)?,
        &sign,
        "signing with an unknown key",
        "unknown_key",
    )
    .await?;
    let short_ok = match keys.iter().find(|k| k.scheme == "frost-secp256k1-tr") {
        Some(k) => {
            refused_at_once(
                &d.client(3)?,
                &signing(k, &[0x11; 31], None),
                "secp256k1-tr signing of 31 bytes",
                "digest_length_for_scheme",
            )
            .await?
        }
        None => false,
    };
    Ok(if policy_ok && unknown_ok && short_ok {
        verdict(
            Outcome::Pass,
            "the scheme refused by P4's policy, on record; the unknown key and the short digest refused before acceptance, naming the rule",
        )
    } else {
        verdict(Outcome::Fail, "a request that should be refused was not")
    })
}

/// The point-to-point parts of session `sid` that party `id` is shown:
/// (sender, recipient, payload).
async fn direct_parts(d: &Demo, id: u32, sid: &str) -> anyhow::Result<Vec<(u64, u64, Vec<u8>)>> {
    let m = d.client(id)?.messages(sid, None).await?;
    let mut out = Vec::new();
    for msg in m["messages"].as_array().cloned().unwrap_or_default() {
        for part in msg["direct"].as_array().cloned().unwrap_or_default() {
            out.push((
                msg["from"].as_u64().unwrap_or(0),
                part["to"].as_u64().unwrap_or(0),
                hex::decode(part["payload"].as_str().unwrap_or_default())?,
            ));
        }
    }
    Ok(out)
}

fn view_digest(v: &Value) -> String {
    quorate_firmware::types::Sha256Digest::of(v.to_string().as_bytes()).to_string()
}

async fn step_messages(d: &Demo, keys: &[Key]) -> anyhow::Result<Outcome> {
    screen(
        4,
        "Round messages are broadcast and seen identically by all",
        "In round 1 each engine posted its FROST package to all (commitments, proof of\nknowledge); in round 2 one secret share per other participant, each sealed with\nHPKE to its recipient. Every party reads the rounds back (GET /v1/sessions/{id}/\nmessages?round=N): round 1 is the same at every party; of round 2 every party sees\nthe same operations in the same order, and only the sealed shares addressed to it.",
    );
    if keys.len() != SCHEMES.len() {
        return Ok(verdict(Outcome::Fail, "no key generation to read back"));
    }
    let mut ok = true;
    for key in keys {
        println!("    {} key generation {}…", key.scheme, short(&key.id));
        let mut round1 = Vec::new();
        let mut order2 = Vec::new();
        for id in 1..=PARTIES {
            let c = d.client(id)?;
            let m1 = c.messages(&key.id, Some(1)).await?["messages"].clone();
            let m2 = c.messages(&key.id, Some(2)).await?["messages"].clone();
            let ops2: Vec<Value> = m2
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| json!([m["op"], m["height"], m["from"]]))
                .collect();
            let parts = direct_parts(d, id, &key.id).await?;
            let to_me = parts
                .iter()
                .filter(|(f, t, _)| *f != u64::from(id) && *t == u64::from(id))
                .count();
            let own = parts.iter().filter(|(f, _, _)| *f == u64::from(id)).count();
            let stray = parts
                .iter()
                .filter(|(f, t, _)| *f != u64::from(id) && *t != u64::from(id))
                .count();
            let clear = parts
                .iter()
                .filter(|(_, _, p)| p.len() <= 32 + 16 || is_plain_round2(key.scheme, p))
                .count();
            println!(
                "      P{id}: round 1 {} broadcasts, view {}…; round 2 {} operations, order {}…; {to_me} sealed shares to it, {own} of its own, {stray} for others, {clear} in the clear",
                m1.as_array().map(Vec::len).unwrap_or(0),
                short(&view_digest(&m1)),
                ops2.len(),
                short(&view_digest(&Value::Array(ops2.clone()))),
            );
            ok &= m1.as_array().map(Vec::len) == Some(PARTIES as usize)
                && ops2.len() == PARTIES as usize
                && to_me == PARTIES as usize - 1
                && own == PARTIES as usize - 1
                && stray == 0
                && clear == 0;
            round1.push(m1);
            order2.push(ops2);
        }
        ok &= round1.windows(2).all(|w| w[0] == w[1]) && order2.windows(2).all(|w| w[0] == w[1]);
    }
    Ok(if ok {
        verdict(
            Outcome::Pass,
            "every party holds the same messages in the same order; each share is ciphertext, shown only to its recipient",
        )
    } else {
        verdict(
            Outcome::Fail,
            "the parties' views differ, or a share is misaddressed or in the clear",
        )
    })
}

/// Creates a signing at P1 and returns its session id once decided.
async fn create_signing(d: &Demo, req: &Value) -> anyhow::Result<String> {
    let p1 = d.client(1)?;
    let r = p1.submit_json(req).await?;
    let v = settled(&p1, &r.id, Duration::from_secs(60)).await?;
    v["record"]["session"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the signing {} opened no session: {v}", r.id))
}

/// Each of `ids`' view of session `sid` once it has ended.
async fn ended_at(d: &Demo, ids: &[u32], sid: &str) -> anyhow::Result<Vec<Value>> {
    let mut views = Vec::new();
    for id in ids {
        views.push(session_end(&d.client(*id)?, sid, Duration::from_secs(90)).await?);
    }
    Ok(views)
}

/// Whether every view shows the same completed signature, key, attempts,
/// ROAST record and messages.
fn identical(views: &[Value]) -> bool {
    let Some(first) = views.first() else {
        return false;
    };
    views.iter().all(|v| {
        v["phase_label"] == "completed"
            && v["signature"].is_string()
            && [
                "signature",
                "verifying_key",
                "attempts",
                "roast",
                "messages",
            ]
            .iter()
            .all(|f| v[*f] == first[*f])
    })
}

fn party_list(v: &Value) -> String {
    let ids: Vec<String> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| format!("P{p}"))
        .collect();
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(",")
    }
}

fn print_attempts(v: &Value) {
    for a in v["attempts"].as_array().cloned().unwrap_or_default() {
        let mut why = String::new();
        if a["suspects"].as_array().is_some_and(|s| !s.is_empty()) {
            why.push_str(&format!(
                "; dropped: {} (no share by the round deadline, {ROUND_SECS} s of block time)",
                party_list(&a["suspects"])
            ));
        }
        for c in a["culprits"].as_array().cloned().unwrap_or_default() {
            why.push_str(&format!("; culprit P{}: {}", c["party"], c["kind"]));
        }
        println!(
            "      attempt {} (round {}, from height {}): signers {} → {}{why}",
            a["attempt"],
            a["round"],
            a["started_height"],
            party_list(&a["signers"]),
            a["outcome"].as_str().unwrap_or("?")
        );
    }
}

/// One signing of `msg` with `key`: checked to be identical at every party
/// and verified independently under the key it must verify under. Returns
/// whether all held.
async fn sign_and_verify(
    d: &Demo,
    key: &Key,
    what: &str,
    msg: &[u8],
    taproot: Option<Value>,
) -> anyhow::Result<bool> {
    println!("    {}: sign {what}", key.scheme);
    let t0 = Instant::now();
    let tweaked = taproot.is_some();
    let sid = create_signing(d, &signing(key, msg, taproot)).await?;
    let views = ended_at(d, &[1, 2, 3, 4], &sid).await?;
    let took = t0.elapsed();
    let v = &views[0];
    print_attempts(v);
    let same = identical(&views);
    let sig = v["signature"].as_str().unwrap_or_default();
    let vk = v["verifying_key"].as_str().unwrap_or_default();
    let expected_vk = if tweaked {
        taproot_output_key(&key.group_key, None)?
    } else {
        key.group_key.clone()
    };
    println!(
        "      session {}…: {} at P1..P4 in {:.1} s; signature {}… ({} bytes), {}",
        short(&sid),
        v["phase_label"].as_str().unwrap_or("?"),
        took.as_secs_f64(),
        short(sig),
        sig.len() / 2,
        if same {
            "identical at all 4 parties"
        } else {
            "NOT the same at every party"
        }
    );
    if tweaked {
        println!(
            "      verifying key {}… = group key {}… + H_TapTweak(group key)·G (computed here with k256: {})",
            short(vk),
            short(&key.group_key),
            if vk == expected_vk { "equal" } else { "DIFFERENT" }
        );
    }
    let checked = verify_independently(key.scheme, &expected_vk, msg, sig);
    println!(
        "      {} under {}: {}",
        verifier_name(key.scheme),
        if tweaked {
            "the tweaked key"
        } else {
            "the group key"
        },
        match &checked {
            Ok(()) => "valid".to_string(),
            Err(e) => format!("INVALID: {e:#}"),
        }
    );
    Ok(same && vk == expected_vk && checked.is_ok())
}

async fn step_signing(d: &Demo, keys: &[Key]) -> anyhow::Result<Outcome> {
    screen(
        5,
        "Each key signs, and another library verifies the signature",
        "P1 asks each key to sign, all four parties as candidates. Every daemon runs the\nROAST coordinator from the decided log (so all compute the same attempts); the\nfirst 3 candidates to commit sign. The signature is checked here with a library\nother than frost: ed25519-dalek for Ed25519 (over the message's bytes), k256's\nBIP-340 verifier for secp256k1-tr (over a 32-byte digest), once under the group\nkey and once under its Taproot key-path tweak.",
    );
    let (Some(ed), Some(tr)) = (
        keys.iter().find(|k| k.scheme == "frost-ed25519"),
        keys.iter().find(|k| k.scheme == "frost-secp256k1-tr"),
    ) else {
        return Ok(verdict(Outcome::Fail, "no keys to sign with"));
    };
    let text = b"Quorate demo: pay 1 BTC to bc1q-demo at height 900000";
    let digest = quorate_firmware::types::Sha256Digest::of(b"a Bitcoin transaction's sighash").0;
    let mut ok = sign_and_verify(
        d,
        ed,
        &format!(
            "the {} bytes \"{}\"",
            text.len(),
            String::from_utf8_lossy(text)
        ),
        text,
        None,
    )
    .await?;
    println!();
    ok &= sign_and_verify(
        d,
        tr,
        &format!("the 32-byte digest {}…", short(&hex::encode(digest))),
        &digest,
        None,
    )
    .await?;
    println!();
    ok &= sign_and_verify(
        d,
        tr,
        "the same digest under the BIP-341 key-path tweak (taproot, no script tree)",
        &digest,
        Some(json!({"merkle_root": null})),
    )
    .await?;
    Ok(if ok {
        verdict(
            Outcome::Pass,
            "three signatures, each the same at every party and valid under an independent verifier",
        )
    } else {
        verdict(
            Outcome::Fail,
            "a signature differed between parties or did not verify",
        )
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

/// What the mid-signing kill left for the catch-up step.
struct Killed {
    party: u32,
    /// Its pid before the kill.
    pid: u32,
    /// P1's height when it was killed.
    height: u64,
    /// The signing it was killed in.
    session: String,
}

/// One signing by all four candidates in which the first candidate other
/// than P1 whose commitments are decided is killed at once. Returns who
/// was killed and every surviving party's view of the ended session.
async fn sign_killing_a_signer(
    d: &Demo,
    key: &Key,
    msg: &[u8],
) -> anyhow::Result<(Killed, Vec<u32>, Vec<Value>)> {
    let p1 = d.client(1)?;
    let t0 = Instant::now();
    let r = p1.submit_json(&signing(key, msg, None)).await?;
    let sid = quorate_tests::mpc::created_session(&p1, &r.id, Duration::from_secs(60)).await?;
    // Poll tightly: the kill must land before the victim's share leaves it
    // (the share is computed and queued as soon as an attempt selects it).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (victim, committed) = loop {
        let m = p1.messages(&sid, Some(1)).await?;
        let committed: Vec<u64> = m["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["from"].as_u64())
            .collect();
        if let Some(v) = committed.iter().copied().find(|p| *p != 1) {
            break (u32::try_from(v)?, committed);
        }
        if Instant::now() > deadline {
            bail!("no candidate committed within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let pid = d.pid(victim);
    signal(pid, "KILL")?;
    let at_kill = t0.elapsed();
    let height = p1.status().await?.height;
    println!(
        "    session {}…: commitments of {} decided; kill -9 {pid} (P{victim}) {:.2} s after the request",
        short(&sid),
        committed
            .iter()
            .map(|p| format!("P{p}"))
            .collect::<Vec<_>>()
            .join(","),
        at_kill.as_secs_f64()
    );
    let survivors: Vec<u32> = (1..=PARTIES).filter(|p| *p != victim).collect();
    let views = ended_at(d, &survivors, &sid).await?;
    println!(
        "    GET /v1/sessions/{}…: {} after {:.1} s; attempts (the same at {}):",
        short(&sid),
        views[0]["phase_label"].as_str().unwrap_or("?"),
        t0.elapsed().as_secs_f64(),
        survivors
            .iter()
            .map(|p| format!("P{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_attempts(&views[0]);
    Ok((
        Killed {
            party: victim,
            pid,
            height,
            session: sid,
        },
        survivors,
        views,
    ))
}

async fn step_kill_signer(d: &mut Demo, keys: &[Key]) -> anyhow::Result<(Outcome, Option<Killed>)> {
    screen(
        6,
        "A signer is killed mid-signing; ROAST finishes with the others",
        &format!("P1 asks the Ed25519 key to sign, all four parties as candidates. The first one\nother than P1 whose commitments are decided is killed with SIGKILL at once: ROAST\nselects the first 3 candidates that committed, so it is selected, and dead, it\nposts no share. At the attempt's deadline ({ROUND_SECS} s of block time) every party's ROAST\ncoordinator drops it as a suspect and opens a new attempt with responsive\ncandidates, which signs."),
    );
    let Some(key) = keys.iter().find(|k| k.scheme == "frost-ed25519") else {
        return Ok((verdict(Outcome::Fail, "no Ed25519 key"), None));
    };
    // The kill races the victim's share (sent in the block after its
    // commitments); six tries make losing every race rare.
    const TRIES: u32 = 6;
    for try_no in 1..=TRIES {
        let msg = format!("Quorate demo: signed although a signer died (try {try_no})");
        let (killed, survivors, views) = sign_killing_a_signer(d, key, msg.as_bytes()).await?;
        let victim = killed.party;
        let v = &views[0];
        let attempts = v["attempts"].as_array().cloned().unwrap_or_default();
        let dropped = attempts.iter().find(|a| {
            a["outcome"] == "timed_out"
                && a["suspects"]
                    .as_array()
                    .is_some_and(|s| s.contains(&json!(victim)))
        });
        let signed = attempts.iter().find(|a| a["outcome"] == "signed");
        let with_victim = signed.is_some_and(|a| {
            a["signers"]
                .as_array()
                .is_some_and(|s| s.contains(&json!(victim)))
        });
        if with_victim && try_no < TRIES {
            // Its share was on its way before the kill (the attempt opened
            // in the block that carried its commitments).
            println!(
                "    P{victim}'s share was out before the kill, and signed: try again once P{victim} is back."
            );
            if wait_caught_up(d, &killed).await?.is_none() {
                return Ok((
                    verdict(
                        Outcome::Fail,
                        &format!("P{victim} did not come back within 90 s"),
                    ),
                    Some(killed),
                ));
            }
            println!();
            continue;
        }
        let sig = v["signature"].as_str().unwrap_or_default();
        let checked = verify_independently(key.scheme, &key.group_key, msg.as_bytes(), sig);
        let same = identical(&views);
        println!(
            "    signature {}…, {} at the {} running parties; {}: {}",
            short(sig),
            if same { "identical" } else { "NOT the same" },
            survivors.len(),
            verifier_name(key.scheme),
            if checked.is_ok() { "valid" } else { "INVALID" }
        );
        let o = if !same || checked.is_err() || signed.is_none() {
            verdict(
                Outcome::Fail,
                "ROAST did not finish with one valid signature at every running party",
            )
        } else if with_victim {
            verdict(
                Outcome::Fail,
                &format!(
                    "in {TRIES} tries, the killed signer's share was always out before the kill"
                ),
            )
        } else if let Some(a) = dropped {
            verdict(
                Outcome::Pass,
                &format!(
                    "P{victim} was dropped as a suspect at attempt {}'s deadline; {} signed without it",
                    a["attempt"],
                    party_list(&signed.map(|a| a["signers"].clone()).unwrap_or_default())
                ),
            )
        } else {
            verdict(
                Outcome::Pass,
                &format!(
                    "P{victim} was never selected; {} signed without it",
                    party_list(&signed.map(|a| a["signers"].clone()).unwrap_or_default())
                ),
            )
        };
        return Ok((o, Some(killed)));
    }
    Ok((verdict(Outcome::Fail, "no try"), None))
}

/// Waits until the killed party runs again (a new pid) and every party is
/// at the same height and state root; returns those, or `None` after 90 s.
async fn wait_caught_up(d: &mut Demo, k: &Killed) -> anyhow::Result<Option<(u32, u64, String)>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        d.reload()?;
        let new_pid = d.pid(k.party);
        let all = heights(d, &[1, 2, 3, 4]).await;
        let agree = all.iter().all(|h| h.is_some()) && all.windows(2).all(|w| w[0] == w[1]);
        if new_pid != 0 && new_pid != k.pid && agree {
            let (h, root) = all[0].clone().unwrap_or_default();
            return Ok(Some((new_pid, h, root)));
        }
        if Instant::now() > deadline {
            println!("    statuses: {all:?}");
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn step_catch_up(d: &mut Demo, killed: Option<Killed>) -> anyhow::Result<Outcome> {
    screen(
        7,
        "The killed party restarts and catches up",
        &format!("`quorate dev` restarts the killed daemon from its data dir (its swtpm too) {RESTART_SECS} s\nafter it died; it replays its store and fetches the blocks it missed from its peers.\nReplaying the log, it computes the signing it died in exactly as the others did.\n(It never signs in that session again: its nonces died with it.)"),
    );
    let Some(k) = killed else {
        return Ok(verdict(Outcome::Fail, "no party was killed"));
    };
    let victim = k.party;
    let Some((new_pid, h, root)) = wait_caught_up(d, &k).await? else {
        return Ok(verdict(
            Outcome::Fail,
            &format!("P{victim} did not catch up within 90 s"),
        ));
    };
    println!(
        "    P{victim} restarted (pid {new_pid}): at height {h} (P1 was at {} when it was killed), state root {}… like every party",
        k.height,
        short(&root)
    );
    let mine = d.client(victim)?.session(&k.session).await?;
    let theirs = d.client(1)?.session(&k.session).await?;
    let same = identical(&[theirs, mine.clone()]);
    println!(
        "    P{victim}'s view of the signing it was killed in: {}, signature {}…, {}",
        mine["phase_label"].as_str().unwrap_or("?"),
        short(mine["signature"].as_str().unwrap_or("")),
        if same {
            "attempts and signature the same as P1's"
        } else {
            "NOT the same as P1's"
        }
    );
    Ok(if h > k.height && same {
        verdict(
            Outcome::Pass,
            &format!("P{victim} caught up on the blocks decided without it, the signing included"),
        )
    } else if !same {
        verdict(
            Outcome::Fail,
            "the restarted party's view of the signing differs",
        )
    } else {
        verdict(
            Outcome::Fail,
            "nothing was decided while the party was down",
        )
    })
}

/// Returns the refresh sessions (their round 2 carries sealed shares).
async fn step_refresh(
    d: &Demo,
    keys: &[Key],
) -> anyhow::Result<(Outcome, Vec<(&'static str, String)>)> {
    screen(
        8,
        "The shares are refreshed; the group key stays, and signs",
        "P1 asks for a share refresh of each key (proactive security): every holder deals\na sharing of zero in the same two rounds as a key generation, and adds what it\nreceives to its share. Every share changes and is sealed again in the TPM; the\ngroup key does not. Then each key signs again, and the signature is checked under\nthe unchanged group key.",
    );
    let mut sessions = Vec::new();
    if keys.len() != SCHEMES.len() {
        return Ok((verdict(Outcome::Fail, "no keys to refresh"), sessions));
    }
    let p1 = d.client(1)?;
    let mut ok = true;
    for key in keys {
        let req = json!({"type": "create_session", "session": {"kind": "refresh",
            "key": key.id, "deadline_secs": 600, "round_secs": 60}});
        println!("    POST /v1/operations {req}");
        let t0 = Instant::now();
        let r = match p1.submit_json(&req).await {
            Ok(r) => r,
            Err(e) => {
                println!("    → refused: {e}");
                ok = false;
                continue;
            }
        };
        let v = settled(&p1, &r.id, Duration::from_secs(60)).await?;
        println!("    → {} {}", r.id, v["status"]);
        print_verdicts(&v);
        let Some(sid) = v["record"]["session"].as_str() else {
            println!("      {}", v["record"]["status"]);
            ok = false;
            continue;
        };
        sessions.push((key.scheme, sid.to_string()));
        let views = ended_at(d, &[1, 2, 3, 4], sid).await?;
        let took = t0.elapsed();
        for (i, s) in views.iter().enumerate() {
            println!(
                "      P{}: refresh {}…: {}, result {}",
                i + 1,
                short(sid),
                s["phase_label"].as_str().unwrap_or("?"),
                s["phase"]["completed"]["result"].as_str().unwrap_or("none")
            );
        }
        let same_key = views.iter().all(|s| {
            s["phase_label"] == "completed"
                && s["phase"]["completed"]["result"] == key.group_key.as_str()
                && s["group_public_key"] == key.group_key.as_str()
                && s["key"] == key.id.as_str()
        });
        println!(
            "      {} in {:.1} s: the result {} the group key {}…",
            key.scheme,
            took.as_secs_f64(),
            if same_key { "equals" } else { "DIFFERS FROM" },
            short(&key.group_key)
        );
        ok &= same_key;
        if same_key {
            let msg: Vec<u8> = match key.scheme {
                "frost-ed25519" => b"Quorate demo: signed with refreshed shares".to_vec(),
                _ => quorate_firmware::types::Sha256Digest::of(b"signed with refreshed shares")
                    .0
                    .to_vec(),
            };
            ok &= sign_and_verify(d, key, "after the refresh", &msg, None).await?;
        }
        println!();
    }
    let o = if ok {
        verdict(
            Outcome::Pass,
            "each refresh ended with the unchanged group key, and the refreshed shares sign under it",
        )
    } else {
        verdict(
            Outcome::Fail,
            "a refresh did not keep the group key, or its signing failed",
        )
    };
    Ok((o, sessions))
}

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
        9,
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
    let r = p1.submit_json(&keygen(&[1, 3, 4], "frost-ed25519")).await?;
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

/// Every decided block party `c` holds, page by page.
async fn all_blocks(c: &Client) -> anyhow::Result<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let from = out.len() as u64 + 1;
        let page = c.blocks(from, quorate_host::api::MAX_BLOCKS).await?;
        let blocks = page["blocks"].as_array().cloned().unwrap_or_default();
        let n = blocks.len();
        out.extend(blocks);
        if n < quorate_host::api::MAX_BLOCKS {
            return Ok(out);
        }
    }
}

/// Whether `b` is certified by a quorum for itself.
fn certified(b: &Value) -> bool {
    b["certificate"]["signers"]
        .as_array()
        .is_some_and(|s| s.len() >= 3)
        && b["certificate"]["block"] == b["hash"]
}

async fn step_history(d: &Demo) -> anyhow::Result<Outcome> {
    screen(
        10,
        "The decided history, with its certificates",
        "Every decided block links to its parent and carries a commit certificate: the\nTPM-signed precommits of a quorum (GET /v1/blocks). Shown: the first and the last\nblocks; every block is checked, at every party.",
    );
    let p1 = d.client(1)?;
    let blocks = all_blocks(&p1).await?;
    println!("    height  proposer  batches  ops  signers       hash");
    let mut ok = !blocks.is_empty();
    let mut parent: Option<String> = None;
    const SHOWN: usize = 6;
    for (i, b) in blocks.iter().enumerate() {
        let ops: u64 = b["batches"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["operations"].as_u64()).sum())
            .unwrap_or(0);
        let signers = b["certificate"]["signers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let hash = b["hash"].as_str().unwrap_or("");
        if i < SHOWN || i + SHOWN >= blocks.len() {
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
                short(hash)
            );
        } else if i == SHOWN {
            println!(
                "       ...  ({} more blocks, each checked)",
                blocks.len().saturating_sub(2 * SHOWN)
            );
        }
        ok &= certified(b);
        if let Some(p) = &parent {
            ok &= b["parent"].as_str() == Some(p.as_str());
        }
        parent = Some(hash.to_string());
    }
    // Every party holds the same chain. Each assembled its own certificate
    // from the precommits that reached it first, so the signer sets may
    // differ; each must still be a quorum for the same block.
    let chain = |v: &[Value]| -> Vec<(Value, Value, Value)> {
        v.iter()
            .map(|b| (b["height"].clone(), b["hash"].clone(), b["parent"].clone()))
            .collect()
    };
    let mut same = true;
    for id in 2..=PARTIES {
        let other = all_blocks(&d.client(id)?).await?;
        let n = blocks.len().min(other.len());
        same &= n > 0 && chain(&blocks).get(..n) == chain(&other).get(..n);
        same &= other.iter().all(certified);
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

/// Reads every session message out of the exported bundle and shows that
/// no point-to-point part is in the clear: the key generations' and
/// refreshes' round 2 has no broadcast part, and its sealed parts are
/// exactly those the parties were shown; no part anywhere in the export
/// decodes as a frost round-2 package (a secret share).
async fn no_plaintext_in(
    d: &Demo,
    bundle: &[u8],
    sealed: &[(&'static str, String)],
) -> anyhow::Result<bool> {
    let logged = quorate_tests::mpc::bundle_messages(bundle)?;
    let all_parts: Vec<&Vec<u8>> = logged
        .iter()
        .flat_map(|m| m.direct.iter().map(|(_, p)| p))
        .collect();
    let clear = all_parts
        .iter()
        .filter(|p| SCHEMES.iter().any(|s| is_plain_round2(s, p)))
        .count();
    let mut exported = BTreeSet::new();
    let mut round2_broadcasts = 0;
    for m in logged
        .iter()
        .filter(|m| sealed.iter().any(|(_, s)| *s == m.session))
    {
        round2_broadcasts += usize::from(m.round == 2 && m.broadcast);
        for (to, p) in &m.direct {
            exported.insert((
                m.session.clone(),
                u64::from(m.from),
                u64::from(*to),
                p.clone(),
            ));
        }
    }
    let mut shown = BTreeSet::new();
    for (_, sid) in sealed {
        for id in 1..=PARTIES {
            for (from, to, p) in direct_parts(d, id, sid).await? {
                shown.insert((sid.clone(), from, to, p));
            }
        }
    }
    let expected = sealed.len() * (PARTIES as usize) * (PARTIES as usize - 1);
    println!(
        "    No point-to-point plaintext in the export ({} bytes, {} session messages read from it):",
        bundle.len(),
        logged.len()
    );
    println!(
        "      {} key generations and refreshes: {} sealed shares in round 2, {} broadcast parts; {}",
        sealed.len(),
        exported.len(),
        round2_broadcasts,
        if exported == shown {
            "the same ciphertexts the parties were shown"
        } else {
            "NOT the ciphertexts the parties were shown"
        }
    );
    println!(
        "      point-to-point parts in the whole export: {}; decoding as a FROST share package (plaintext): {clear}",
        all_parts.len()
    );
    Ok(exported.len() == expected && exported == shown && round2_broadcasts == 0 && clear == 0)
}

async fn step_audit(d: &Demo, sealed: &[(&'static str, String)]) -> anyhow::Result<Outcome> {
    screen(
        11,
        "The audit log, verified offline, with no share in the clear",
        "Every decided operation is an entry of a Merkle log identical at every party;\ncheckpoints are TPM-quoted and cosigned by a quorum. An auditor exports a\nparty's log (quorate audit export, beside the running daemon) and checks it\nwith no TPM and no network (quorate audit verify --policy policy.toml). The export
holds every decided operation, the sealed DKG shares included: it is searched for
any share in the clear.",
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
    let no_plaintext = no_plaintext_in(d, &std::fs::read(&bundle)?, sealed).await?;
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
    Ok(if good && caught && no_plaintext {
        verdict(
            Outcome::Pass,
            "the exported log verifies offline; a one-byte change is caught; it holds the shares sealed only",
        )
    } else if !no_plaintext {
        verdict(
            Outcome::Fail,
            "the export lacks a sealed share, or holds a share in the clear",
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

/// A finished step: its summary line, outcome and wall time.
struct StepResult {
    name: &'static str,
    outcome: Outcome,
    took: Duration,
}

/// Records a step that started at `t0` and prints its wall time.
fn timed(results: &mut Vec<StepResult>, name: &'static str, outcome: Outcome, t0: Instant) {
    let took = t0.elapsed();
    println!("  ⏱ {:.1} s", took.as_secs_f64());
    results.push(StepResult {
        name,
        outcome,
        took,
    });
}

async fn demo(d: &mut Demo, results: &mut Vec<StepResult>) -> anyhow::Result<()> {
    let t = Instant::now();
    let o = step_attestation(d).await?;
    timed(results, "parties attest each other", o, t);

    let t = Instant::now();
    let (o, keys) = step_keygen(d).await?;
    timed(
        results,
        "all approve; a 3-of-4 key per scheme is made",
        o,
        t,
    );

    let t = Instant::now();
    let o = step_rejected(d, &keys).await?;
    timed(results, "a conflicting request is rejected", o, t);

    let t = Instant::now();
    let o = step_messages(d, &keys).await?;
    timed(results, "round messages seen identically", o, t);

    let t = Instant::now();
    let o = step_signing(d, &keys).await?;
    timed(results, "each key signs; verified independently", o, t);

    let t = Instant::now();
    let (o, killed) = step_kill_signer(d, &keys).await?;
    timed(results, "a signer killed mid-signing; ROAST finishes", o, t);

    let t = Instant::now();
    let o = step_catch_up(d, killed).await?;
    timed(results, "the killed party restarts and catches up", o, t);

    let t = Instant::now();
    let (o, refreshes) = step_refresh(d, &keys).await?;
    timed(results, "a refresh keeps the group key, which signs", o, t);

    let t = Instant::now();
    let o = step_modified(d).await?;
    timed(results, "a modified executable is refused", o, t);

    let t = Instant::now();
    let o = step_history(d).await?;
    timed(results, "decided history with certificates", o, t);

    let t = Instant::now();
    let mut sealed: Vec<(&'static str, String)> =
        keys.iter().map(|k| (k.scheme, k.id.clone())).collect();
    sealed.extend(refreshes);
    let o = step_audit(d, &sealed).await?;
    timed(
        results,
        "the audit log verifies offline; no plaintext share",
        o,
        t,
    );
    Ok(())
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
    let started = Instant::now();
    let mut d = start(&dir).await?;
    let up = started.elapsed();
    let mut results = Vec::new();
    let run = demo(&mut d, &mut results).await;
    if let Err(e) = print_metrics(&d).await {
        println!("  (metrics unavailable: {e:#})");
    }
    let t = Instant::now();
    let clean = stop(&mut d);
    let down = t.elapsed();
    println!();
    println!("━━━ Summary {}", "━".repeat(60));
    println!(
        "  {:<9} {:>7}  cluster provisioned and started",
        "",
        format!("{:.1} s", up.as_secs_f64())
    );
    let mut ok = true;
    for r in &results {
        let tag = match r.outcome {
            Outcome::Pass => "✔ PASS",
            Outcome::Fail => "✘ FAIL",
        };
        println!(
            "  {tag:<9} {:>7}  {}",
            format!("{:.1} s", r.took.as_secs_f64()),
            r.name
        );
        ok &= r.outcome != Outcome::Fail;
    }
    if let Err(e) = &run {
        println!("  ✘ FAIL    the demo stopped: {e:#}");
        ok = false;
    }
    println!(
        "  {:<9} {:>7}  clean shutdown (every daemon sent TPM2_Shutdown and stopped its swtpm; no stray process)",
        if clean { "✔ PASS" } else { "✘ FAIL" },
        format!("{:.1} s", down.as_secs_f64())
    );
    ok &= clean;
    println!(
        "  {:<9} {:>7}  in all",
        "",
        format!("{:.1} s", started.elapsed().as_secs_f64())
    );
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
