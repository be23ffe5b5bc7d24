//! The Debian package, installed for real: cargo-deb packages the `quorate`
//! binary this test run already built (no release build: the package is
//! the same but for the binary's profile), dpkg installs it on this machine
//! (CI runs as root), and the test checks what an operator relies on — the
//! binary, `man quorate-run`, the `quorate` user in group `tss`,
//! `/var/lib/quorate` 0700, the example config (valid: `quorate measure`
//! reads it), the hardened unit (`systemd-analyze verify` where present),
//! the completions, the rules and dashboard — then that a party can be
//! provisioned as the `quorate` user, and that remove and purge leave
//! nothing behind.
//!
//! It changes the machine's package database, so it serialises itself with
//! every other run of it (an exclusive lock on
//! `/run/lock/quorate-package-test.lock`), purges a package left by a
//! killed run first, and undoes what it did (the package, and the `quorate`
//! user if it created it) also when it fails. Cost on 2 cores: about 10 s
//! (strip and pack 4 s, dpkg 6 s).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_tests::cluster::quorate_bin;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LOCK: &str = "/run/lock/quorate-package-test.lock";
const UNIT_DIRS: [&str; 2] = ["/usr/lib/systemd/system", "/lib/systemd/system"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "quorate"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// dpkg with `args`, retried while another package manager holds the lock.
fn dpkg(args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("dpkg");
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        panic!("dpkg {args:?} failed: {err}");
    }
}

/// Undoes the installation when dropped (also on a failed assertion).
struct Installed {
    created_user: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if installed() || Path::new("/var/lib/quorate").exists() {
            let _ = Command::new("dpkg").args(["--purge", "quorate"]).output();
        }
        if self.created_user && user_exists("quorate") {
            let _ = Command::new("userdel").arg("quorate").output();
        }
    }
}

/// Builds the .deb from the already built binary into `dir`.
fn build_deb(dir: &Path) -> PathBuf {
    let bin = quorate_bin().expect("the quorate binary");
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    // cargo-deb reads target/release/quorate (see host/Cargo.toml); a link
    // to the test profile's binary stands in (cargo-deb strips a copy).
    let staged = release.join("quorate");
    if std::fs::hard_link(&bin, &staged).is_err() {
        std::fs::copy(&bin, &staged).unwrap();
    }
    run(Command::new(&staged)
        .arg("generate-docs")
        .arg("--out-dir")
        .arg(release.join("quorate-docs")));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let deb = dir.join("quorate.deb");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let probe = Command::new(&cargo).args(["deb", "--version"]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: `make tools` (or `cargo install cargo-deb --locked`)"
    );
    run(Command::new(&cargo)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args([
            "deb",
            "-p",
            "quorate-host",
            "--no-build",
            "--fast",
            "--strip",
            "-o",
        ])
        .arg(&deb));
    deb
}

#[test]
fn the_package_installs_a_hardened_service_and_purges_cleanly() {
    assert!(
        is_root(),
        "installing the package needs root (CI runs as root): run this test as root"
    );
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .unwrap();
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the package test");
    if installed() {
        dpkg(&["--purge", "quorate"]); // left by a killed run
    }
    let created_user = !user_exists("quorate");
    let dir = tempfile::Builder::new()
        .prefix("quorate-package-")
        .tempdir()
        .unwrap();
    let deb = build_deb(dir.path());
    let info = stdout(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: quorate"), "{info}");
    assert!(
        info.contains("libtss2-esys"),
        "shared library dependencies: {info}"
    );

    let guard = Installed { created_user };
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(installed());

    // The binary and its man pages.
    let version = stdout(Command::new("/usr/bin/quorate").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("quorate {}", env!("CARGO_PKG_VERSION"))
    );
    let man = stdout(
        Command::new("man")
            .args(["-P", "cat", "quorate-run"])
            .env("MANWIDTH", "80"),
    );
    assert!(
        man.contains("quorate-run") && man.contains("--config"),
        "{man}"
    );
    for page in [
        "quorate",
        "quorate-init",
        "quorate-audit-export",
        "quorate-enroll-challenge",
    ] {
        let path = stdout(Command::new("man").args(["-w", page]));
        assert!(
            path.trim().ends_with(&format!("{page}.1")) || path.contains(page),
            "{path}"
        );
    }
    assert!(
        !Path::new("/usr/share/man/man1/quorate-generate-docs.1").exists(),
        "the hidden packaging command has no man page"
    );
    for f in [
        "/usr/share/bash-completion/completions/quorate",
        "/usr/share/zsh/vendor-completions/_quorate",
        "/usr/share/fish/vendor_completions.d/quorate.fish",
        "/usr/share/quorate/prometheus/quorate.rules.yml",
        "/usr/share/quorate/grafana/quorate.json",
    ] {
        assert!(Path::new(f).is_file(), "{f} missing");
    }
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/quorate").unwrap();
    assert!(
        bash.contains("--log-format"),
        "completion knows `run`'s options"
    );

    // The user, its state dir, the config dir.
    let id = stdout(Command::new("id").arg("quorate"));
    assert!(id.contains("(tss)"), "quorate is in group tss: {id}");
    let uid: u32 = stdout(Command::new("id").args(["-u", "quorate"]))
        .trim()
        .parse()
        .unwrap();
    let state = std::fs::metadata("/var/lib/quorate").unwrap();
    assert!(state.is_dir());
    assert_eq!(state.permissions().mode() & 0o7777, 0o700);
    assert_eq!(state.uid(), uid);
    let example = "/etc/quorate/party.toml.example";
    assert!(Path::new(example).is_file());
    // The example is a valid configuration (unknown keys would be errors).
    let policy = stdout(Command::new("/usr/bin/quorate").args([
        "measure",
        "--exe",
        "/usr/bin/quorate",
        "--config",
        example,
    ]));
    assert!(policy.contains("expected_config"), "{policy}");

    // The unit.
    let unit_path = UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join("quorate.service"))
        .find(|p| p.is_file())
        .expect("quorate.service installed");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let directives: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "User=quorate",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "DeviceAllow=/dev/tpmrm0 rw",
        "SupplementaryGroups=tss",
        "StateDirectory=quorate",
        "StateDirectoryMode=0700",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecStart=/usr/bin/quorate run --config /etc/quorate/party.toml",
    ] {
        assert!(
            directives.contains(&want),
            "{want} missing from the unit:\n{unit}"
        );
    }
    if let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        // verify exits 0 on ignored directives but names them on stderr.
        let complaints: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("quorate.service"))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify: {err}"
        );
    }

    // A party provisioned as the service user, in the packaged state dir.
    let out = run(Command::new("runuser")
        .args([
            "-u",
            "quorate",
            "--",
            "/usr/bin/quorate",
            "init",
            "--data-dir",
            "/var/lib/quorate",
            "--party-id",
            "1",
            "--tpm",
            "spawn",
        ])
        .env("TSS2_LOG", "all+none"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("provisioned party P1"));
    let blobs = std::fs::metadata("/var/lib/quorate/keys").unwrap();
    assert_eq!(blobs.uid(), uid, "key blobs belong to the service user");
    quorate_host::dev::kill_orphan_swtpms(Path::new("/var/lib/quorate"));

    // Remove keeps the configuration and the state; purge removes them.
    dpkg(&["--remove", "quorate"]);
    assert!(!Path::new("/usr/bin/quorate").exists());
    assert!(!unit_path.exists());
    assert!(Path::new(example).exists(), "remove keeps conffiles");
    assert!(
        Path::new("/var/lib/quorate/enrollment.json").exists(),
        "remove keeps the party"
    );
    dpkg(&["--purge", "quorate"]);
    assert!(!installed());
    for gone in ["/etc/quorate", "/var/lib/quorate"] {
        assert!(!Path::new(gone).exists(), "{gone} survived the purge");
    }
    drop(guard);
    if created_user {
        assert!(
            !user_exists("quorate"),
            "the user this test created is removed"
        );
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
