//! Interoperability with tpm2-tools, both ways, on a real swtpm:
//! `tpm2_checkquote` accepts what `quorate attest --tpm2-tools-dir` exports
//! (quote, signature, PCR values, AK public key) and `tpm2_eventlog` parses
//! its event log; and our verifier accepts a quote `tpm2_quote` makes with
//! our AK (loaded by `tpm2_load` under the EK re-created by `tpm2_createek`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use quorate_attestation::evidence::{Evidence, Freshness};
use quorate_attestation::policy::Policy;
use quorate_attestation::tpm::TpmName;
use quorate_attestation::verify::{verify, AttestationError, VerifierState};
use quorate_host::init::{Enrollment, ENROLLMENT_FILE};
use quorate_host::tpm::Swtpm;

mod common;

/// Runs a program (tpm2-tools on `tcti`, or `quorate`).
fn run(program: &str, args: &[&str], tcti: Option<&str>) -> Output {
    common::run_guarded(program, args, tcti, Duration::from_secs(60))
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const QUORATE: &str = env!("CARGO_BIN_EXE_quorate");

#[test]
fn tpm2_tools_check_our_quote_and_our_verifier_checks_theirs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let swtpm = Swtpm::spawn(&root.join("tpm")).unwrap();
    let tcti = swtpm.tcti().to_string();
    let dir = root.join("p1");
    let config = root.join("party1.toml");
    std::fs::write(
        &config,
        format!(
            "[party]\nid = 1\ndata_dir = \"{}\"\ntpm = \"{tcti}\"\ndev = true\n\n[cluster]\nname = \"interop\"\n\n[[cluster.parties]]\nid = 1\naddress = \"127.0.0.1:1\"\nenrollment = \"{}\"\n",
            dir.display(),
            dir.join(ENROLLMENT_FILE).display()
        ),
    )
    .unwrap();
    ok(run(
        QUORATE,
        &[
            "init",
            "--data-dir",
            s(&dir),
            "--party-id",
            "1",
            "--tpm",
            &tcti,
            "--config",
            s(&config),
        ],
        None,
    ));
    let nonce = "00112233445566778899";
    let ev_path = root.join("evidence.bin");
    let tools = root.join("tools");
    ok(run(
        QUORATE,
        &[
            "attest",
            "--config",
            s(&config),
            "--nonce",
            nonce,
            "--out",
            s(&ev_path),
            "--tpm2-tools-dir",
            s(&tools),
        ],
        None,
    ));

    // tpm2_checkquote: signature, qualifying data, and the PCR values
    // against the quote's digest.
    let t = |n: &str| tools.join(n);
    let qd = std::fs::read_to_string(t("qualifying_data.hex")).unwrap();
    let checkquote = |pcrs: &Path, qd: &str| {
        run(
            "tpm2_checkquote",
            &[
                "-u",
                s(&t("ak.pub.pem")),
                "-m",
                s(&t("quote.msg")),
                "-s",
                s(&t("quote.sig")),
                "-f",
                s(pcrs),
                "-g",
                "sha256",
                "-q",
                qd.trim(),
            ],
            None,
        )
    };
    ok(checkquote(&t("quote.pcrs"), &qd));
    // It does check them: a wrong PCR value or another qualifying data fails.
    let mut pcrs = std::fs::read(t("quote.pcrs")).unwrap();
    pcrs[150] ^= 1;
    let bad_pcrs = root.join("bad.pcrs");
    std::fs::write(&bad_pcrs, &pcrs).unwrap();
    assert!(!checkquote(&bad_pcrs, &qd).status.success());
    assert!(!checkquote(&t("quote.pcrs"), &"ab".repeat(32))
        .status
        .success());

    // tpm2_eventlog parses our log and sees both measurements.
    let log = ok(run("tpm2_eventlog", &[s(&t("eventlog.bin"))], None));
    assert!(
        log.contains("EV_EVENT_TAG") && log.contains("EV_NO_ACTION"),
        "{log}"
    );

    // The other way: tpm2_quote with our AK. tpm2_createek re-creates the
    // EK (TCG template L-2, what the AK was made under without an EK
    // certificate), tpm2_load loads our AK blobs under it with the EK's
    // PolicySecret(endorsement), tpm2_quote quotes with our qualifying data.
    let ev = Evidence::from_bytes(&std::fs::read(&ev_path).unwrap()).unwrap();
    let e = Enrollment::load(&dir.join(ENROLLMENT_FILE)).unwrap();
    let w = |n: &str| root.join(n);
    let tt = Some(tcti.as_str());
    ok(run(
        "tpm2_createek",
        &["-c", s(&w("ek.ctx")), "-G", "ecc", "-u", s(&w("ek.pub"))],
        tt,
    ));
    // No resource manager: free swtpm's three object slots after each tool.
    ok(run("tpm2_flushcontext", &["-t"], tt));
    ok(run(
        "tpm2_startauthsession",
        &["--policy-session", "-S", s(&w("sess.ctx"))],
        tt,
    ));
    ok(run(
        "tpm2_policysecret",
        &["-S", s(&w("sess.ctx")), "-c", "e"],
        tt,
    ));
    ok(run(
        "tpm2_load",
        &[
            "-C",
            s(&w("ek.ctx")),
            "-P",
            &format!("session:{}", s(&w("sess.ctx"))),
            "-u",
            s(&dir.join("keys/ak.pub")),
            "-r",
            s(&dir.join("keys/ak.priv")),
            "-c",
            s(&w("ak.ctx")),
            "-n",
            s(&w("ak.name")),
        ],
        tt,
    ));
    ok(run("tpm2_flushcontext", &[s(&w("sess.ctx"))], tt));
    ok(run("tpm2_flushcontext", &["-t"], tt));
    let their_name = std::fs::read(w("ak.name")).unwrap();
    assert_eq!(hex::encode(&their_name), e.ak.as_ref().unwrap().name);
    ok(run(
        "tpm2_quote",
        &[
            "-c",
            s(&w("ak.ctx")),
            "-l",
            "sha256:23",
            "-q",
            qd.trim(),
            "-m",
            s(&w("their.msg")),
            "-s",
            s(&w("their.sig")),
            "-g",
            "sha256",
        ],
        tt,
    ));
    ok(run("tpm2_flushcontext", &["-t"], tt));

    let policy_text = ok(run(
        QUORATE,
        &["measure", "--exe", QUORATE, "--config", s(&config)],
        None,
    ));
    let policy = Policy::from_toml(&policy_text).unwrap();
    let fresh = Freshness::Nonce(hex::decode(nonce).unwrap());
    let pinned = || VerifierState {
        enrolled_ak: Some(TpmName(hex::decode(&e.ak.as_ref().unwrap().name).unwrap())),
        enrolled_vote_key: Some(TpmName(hex::decode(&e.vote_key.name).unwrap())),
        last_clock: None,
    };
    let mut theirs = ev.clone();
    theirs.quote.attest = std::fs::read(w("their.msg")).unwrap();
    theirs.quote.signature = std::fs::read(w("their.sig")).unwrap();
    assert_ne!(theirs.quote, ev.quote);
    let r = verify(&theirs, &fresh, &policy, &mut pinned()).unwrap();
    assert_eq!(
        hex::encode(r.ak_name.as_bytes()),
        e.ak.as_ref().unwrap().name
    );
    // Ours verifies too, and the same tpm2_quote under another nonce does not.
    verify(&ev, &fresh, &policy, &mut pinned()).unwrap();
    assert!(matches!(
        verify(&theirs, &Freshness::Nonce(vec![1]), &policy, &mut pinned()),
        Err(AttestationError::QualifyingDataMismatch { .. })
    ));
}
