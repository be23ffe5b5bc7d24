//! Test fixture: a party with its own swtpm on free ports in a temp dir.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code
)]

use quorate_host::tpm::owner::CreatedKey;
use quorate_host::tpm::{KeySpec, Swtpm, TpmHandle};
use tempfile::TempDir;

/// A swtpm, a TPM owner with a freshly created and loaded vote key. Field
/// order is drop order: the owner closes before swtpm stops, and the temp
/// dir goes last.
pub struct Party {
    pub tpm: TpmHandle,
    pub swtpm: Swtpm,
    pub key: CreatedKey,
    pub dir: TempDir,
}

impl Party {
    pub async fn new() -> Party {
        let dir = tempfile::tempdir().unwrap();
        let swtpm = Swtpm::spawn(&dir.path().join("swtpm")).unwrap();
        let tpm = TpmHandle::open(&swtpm.tcti()).await.unwrap();
        let key = tpm.create_vote_key(KeySpec::vote_password()).await.unwrap();
        tpm.load_vote_key(key.blob.clone(), Some(key.srk_name.clone()))
            .await
            .unwrap();
        Party {
            tpm,
            swtpm,
            key,
            dir,
        }
    }
}

/// Runs `program` with `args` (and `TPM2TOOLS_TCTI` = `tcti` if given,
/// libtss2's logging off), killing it if it runs past `limit`: a guard
/// against a hung test, not a timing assertion.
pub fn run_guarded(
    program: &str,
    args: &[&str],
    tcti: Option<&str>,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("TSS2_LOG", "all+none")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = tcti {
        cmd.env("TPM2TOOLS_TCTI", t);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{program} {args:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs the `quorate` binary under test (see [`run_guarded`]).
pub fn quorate(args: &[&str]) -> std::process::Output {
    run_guarded(
        env!("CARGO_BIN_EXE_quorate"),
        args,
        None,
        std::time::Duration::from_secs(120),
    )
}
