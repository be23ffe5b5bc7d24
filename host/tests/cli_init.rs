//! `quorate init` as an operator runs it: the real binary, a real swtpm.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Read;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use quorate_attestation::tpm::TpmtPublic;
use quorate_host::init::{Enrollment, ENROLLMENT_FILE};
use quorate_host::tpm::{swtpm::free_port_pair, Swtpm, Tcti, TpmError, TpmHandle};

mod common;
use common::quorate;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_provisions_then_refuses_a_provisioned_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::spawn(&tmp.path().join("tpm")).unwrap();
    let dir = tmp.path().join("party");
    let d = dir.to_str().unwrap();
    let tcti = swtpm.tcti().to_string();

    let out = quorate(&["init", "--data-dir", d, "--party-id", "2", "--tpm", &tcti]);
    assert!(out.status.success(), "{}", stderr(&out));

    let e = Enrollment::load(&dir.join(ENROLLMENT_FILE)).unwrap();
    assert_eq!(e.party_id.0, 2);
    let tpmt = TpmtPublic::parse(&hex::decode(&e.vote_key.tpmt_public).unwrap()).unwrap();
    assert_eq!(hex::encode(tpmt.name().as_bytes()), e.vote_key.name);
    let attrs = tpmt.object_attributes();
    assert!(attrs.fixed_tpm() && attrs.fixed_parent() && attrs.sensitive_data_origin());
    assert!(attrs.no_da() && attrs.sign() && !attrs.decrypt() && !attrs.restricted());
    for f in ["keys/vote.pub", "keys/vote.priv", "keys/manifest.json"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&dir), 0o700);
    let before = std::fs::read(dir.join("keys/vote.priv")).unwrap();

    // Again: refused, naming the dir and --force; nothing changed.
    let out = quorate(&["init", "--data-dir", d, "--party-id", "2", "--tpm", &tcti]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(d) && err.contains("--force") && err.contains("already provisioned"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("keys/vote.priv")).unwrap(), before);

    // --force re-provisions: a new key.
    let out = quorate(&[
        "init",
        "--data-dir",
        d,
        "--party-id",
        "2",
        "--tpm",
        &tcti,
        "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let e2 = Enrollment::load(&dir.join(ENROLLMENT_FILE)).unwrap();
    assert_ne!(e2.vote_key.name, e.vote_key.name);
}

#[test]
fn tcti_pointing_at_nothing_fails_naming_it() {
    let port = free_port_pair().unwrap();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("p");
    let out = quorate(&[
        "init",
        "--data-dir",
        d.to_str().unwrap(),
        "--party-id",
        "1",
        "--tpm",
        &tcti,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&tcti), "{err}");
    assert!(!d.join(ENROLLMENT_FILE).exists());

    let out = quorate(&[
        "init",
        "--data-dir",
        d.to_str().unwrap(),
        "--party-id",
        "1",
        "--tpm",
        "device:/dev/quorate-no-such-tpm",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("device:/dev/quorate-no-such-tpm"),
        "{}",
        stderr(&out)
    );

    let out = quorate(&[
        "init",
        "--data-dir",
        d.to_str().unwrap(),
        "--party-id",
        "1",
        "--tpm",
        "mssim",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mssim"), "{}", stderr(&out));
}

/// Something accepts connections but never answers: the owner gives up at
/// its deadline with an error naming the TCTI instead of hanging.
#[tokio::test]
async fn silent_peer_times_out_naming_the_tcti() {
    // Bind both ports of a free pair; another test may take one of them
    // between the probe and the bind, so try a few pairs.
    let (port, listeners) = (0..20)
        .find_map(|_| {
            let port = free_port_pair().ok()?;
            let a = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
            let b = std::net::TcpListener::bind(("127.0.0.1", port + 1)).ok()?;
            Some((port, [a, b]))
        })
        .expect("no free port pair");
    let mut held = Vec::new();
    for l in listeners {
        held.push(std::thread::spawn(move || {
            let mut conns = Vec::new();
            for c in l.incoming().take(8) {
                let mut c = c.unwrap();
                let mut buf = [0u8; 64];
                let _ = c.set_read_timeout(Some(Duration::from_millis(10)));
                let _ = c.read(&mut buf);
                conns.push(c); // keep open, never reply
            }
        }));
    }
    let tcti = Tcti::swtpm_loopback(port);
    let err = TpmHandle::open_with_timeout(&tcti, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TpmError::Timeout { .. } | TpmError::Connect { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&tcti.to_string()), "{err}");
}

#[test]
fn spawn_keeps_the_tpm_state_in_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("party");
    let d = dir.to_str().unwrap();
    let out = quorate(&["init", "--data-dir", d, "--party-id", "1", "--tpm", "spawn"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("swtpm").is_dir());
    // The swtpm was stopped on exit: its pid file names a process that is gone
    // or the file was removed.
    let e = Enrollment::load(&dir.join(ENROLLMENT_FILE)).unwrap();

    // A later start on the same state finds the same TPM: the blobs load
    // (the SRK Name matches) and signatures verify under the enrolled key.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let swtpm = Swtpm::spawn(&dir.join("swtpm")).unwrap();
        let tpm = TpmHandle::open_party(&dir, &swtpm.tcti()).await.unwrap();
        let sig = tpm.sign(b"after restart".to_vec()).await.unwrap();
        e.vote_public_key()
            .unwrap()
            .verify(b"after restart", &sig)
            .unwrap();
        tpm.close().await.unwrap();
    });

    // A different TPM refuses the blobs with a clear error.
    rt.block_on(async {
        let other = Swtpm::spawn(&tmp.path().join("other")).unwrap();
        let err = TpmHandle::open_party(&dir, &other.tcti())
            .await
            .unwrap_err();
        assert!(matches!(err, TpmError::WrongTpm { .. }), "{err}");
    });
}
