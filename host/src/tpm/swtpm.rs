//! A private swtpm process: one per party in tests, `make demo` and
//! `--tpm spawn`.
//!
//! The TPM listens on `127.0.0.1:P` and its control channel on
//! `127.0.0.1:P+1` (the swtpm TCTI derives the control port that way), with
//! its state in a directory that survives restarts, even SIGKILL. It starts
//! with `startup-clear` (every start is a TPM reboot: PCRs are reset, loaded
//! objects are gone). [`Swtpm::stop`] (also run on drop) sends
//! `TPM2_Shutdown(CLEAR)` first, so the TPM never records a disorderly
//! shutdown (which would count towards dictionary-attack lockout).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tcti::Tcti;

/// How long a fresh swtpm may take to open its ports.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping swtpm may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many free-port pairs to try before giving up (another process may
/// take a port between our probe and swtpm's bind).
const PORT_ATTEMPTS: usize = 20;
/// `TPM2_Shutdown(TPM_SU_CLEAR)`: tag NO_SESSIONS, size 12, TPM_CC_Shutdown.
const TPM2_SHUTDOWN_CLEAR: [u8; 12] = [
    0x80, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x45, 0x00, 0x00,
];
/// `TPM2_GetRandom(8)`: a harmless command proving the TPM answers.
const TPM2_GET_RANDOM_8: [u8; 12] = [
    0x80, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x7b, 0x00, 0x08,
];
/// swtpm control command CMD_SHUTDOWN: ends the swtpm process cleanly.
const CMD_SHUTDOWN: [u8; 4] = [0, 0, 0, 3];

/// Why a swtpm could not be started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwtpmError {
    /// The `swtpm` program could not be run.
    #[error("cannot run `swtpm` (install it with `make deps`, package `swtpm`): {0}")]
    NotInstalled(#[source] std::io::Error),
    /// The state directory could not be created.
    #[error("cannot create the swtpm state directory {dir}: {source}")]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No free pair of loopback ports P, P+1 was found.
    #[error("no free pair of loopback TCP ports (P, P+1) for swtpm: {0}")]
    NoPorts(#[source] std::io::Error),
    /// swtpm exited or did not open its ports in time.
    #[error("swtpm (state {dir}, port {port}) did not start: {reason}")]
    StartFailed {
        /// The state directory.
        dir: PathBuf,
        /// The TPM port.
        port: u16,
        /// What swtpm said, or what we observed.
        reason: String,
    },
    /// Waiting for or signalling the process failed.
    #[error("swtpm (port {port}): {source}")]
    Process {
        /// The TPM port.
        port: u16,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A running swtpm child process, stopped (with `TPM2_Shutdown`) on drop.
#[derive(Debug)]
pub struct Swtpm {
    state_dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    /// Starts a swtpm with its state in `state_dir` (created 0700 if missing,
    /// reused if it holds an earlier TPM) on a free loopback port pair.
    pub fn spawn(state_dir: &Path) -> Result<Swtpm, SwtpmError> {
        create_private_dir(state_dir)?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port_pair().map_err(SwtpmError::NoPorts)?;
            match Self::start(state_dir, port) {
                Ok(child) => {
                    return Ok(Swtpm {
                        state_dir: state_dir.to_owned(),
                        port,
                        child: Some(child),
                    })
                }
                // Lost a race for the port: try another pair.
                Err(e @ SwtpmError::StartFailed { .. }) if is_port_clash(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| SwtpmError::NoPorts(std::io::ErrorKind::AddrInUse.into())))
    }

    /// Stops a swtpm left running on `state_dir` by a daemon that died
    /// without stopping it (SIGKILL, power loss of the process): one whose
    /// pid file names a live swtpm on this state dir whose parent is no
    /// longer a `quorate` process. Returns whether one was stopped. A swtpm
    /// still owned by a running `quorate` is left alone (and [`Swtpm::spawn`]
    /// then refuses, naming it).
    pub fn reclaim_orphan(state_dir: &Path) -> bool {
        let Some(pid) = fs::read_to_string(state_dir.join("swtpm.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return false;
        };
        let cmdline = |pid: i32| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        };
        let cmd = cmdline(pid);
        if !cmd.contains("swtpm") || !cmd.contains(&*state_dir.to_string_lossy()) {
            return false;
        }
        // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
        let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_string()))
            .and_then(|rest| {
                rest.split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<i32>().ok())
            });
        if ppid.is_some_and(|pp| cmdline(pp).contains("quorate")) {
            return false;
        }
        tracing::warn!(pid, state = %state_dir.display(), "stopping the swtpm a crashed daemon left running");
        let target = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            // A zombie (exited, not yet reaped by its new parent) holds no lock.
            if fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if Path::new(&format!("/proc/{pid}/cmdline")).exists() && !cmdline(pid).is_empty() {
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Starts a swtpm on the given port (control port `port + 1`).
    pub fn spawn_on(state_dir: &Path, port: u16) -> Result<Swtpm, SwtpmError> {
        create_private_dir(state_dir)?;
        let child = Self::start(state_dir, port)?;
        Ok(Swtpm {
            state_dir: state_dir.to_owned(),
            port,
            child: Some(child),
        })
    }

    /// The TCTI that reaches this TPM.
    pub fn tcti(&self) -> Tcti {
        Tcti::swtpm_loopback(self.port)
    }

    /// The TPM command port (the control port is one above).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills swtpm with SIGKILL, without a TPM shutdown: a power cut. The
    /// state on disk survives; [`Swtpm::restart`] boots it again.
    pub fn kill_hard(&mut self) -> Result<(), SwtpmError> {
        if let Some(mut child) = self.child.take() {
            let port = self.port;
            child
                .kill()
                .map_err(|source| SwtpmError::Process { port, source })?;
            child
                .wait()
                .map_err(|source| SwtpmError::Process { port, source })?;
        }
        Ok(())
    }

    /// Starts swtpm again on the same state and ports (after
    /// [`Swtpm::kill_hard`] or [`Swtpm::stop`]); a running one is stopped first.
    pub fn restart(&mut self) -> Result<(), SwtpmError> {
        self.stop()?;
        // The old listening sockets may linger for a moment after the exit.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match Self::start(&self.state_dir, self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if is_port_clash(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `TPM2_Shutdown(CLEAR)`, asks swtpm to exit, and waits for it
    /// (killing it if it does not exit in time). Idempotent.
    pub fn stop(&mut self) -> Result<(), SwtpmError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let port = self.port;
        if let Err(e) = raw_exchange(port, &TPM2_SHUTDOWN_CLEAR, 10) {
            tracing::warn!(port, "TPM2_Shutdown before stopping swtpm failed: {e}");
        }
        if let Some(ctrl) = port.checked_add(1) {
            if let Err(e) = raw_exchange(ctrl, &CMD_SHUTDOWN, 4) {
                tracing::warn!(port, "swtpm CMD_SHUTDOWN failed: {e}");
            }
        }
        let _ = fs::remove_file(self.state_dir.join("swtpm.pid"));
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    child
                        .kill()
                        .map_err(|source| SwtpmError::Process { port, source })?;
                    child
                        .wait()
                        .map_err(|source| SwtpmError::Process { port, source })?;
                    return Ok(());
                }
                Err(source) => return Err(SwtpmError::Process { port, source }),
            }
        }
    }

    fn start(state_dir: &Path, port: u16) -> Result<Child, SwtpmError> {
        let fail = |reason: String| SwtpmError::StartFailed {
            dir: state_dir.to_owned(),
            port,
            reason,
        };
        let ctrl = port
            .checked_add(1)
            .ok_or_else(|| fail("port 65535 leaves no room for the control port".into()))?;
        let log = state_dir.join("swtpm.log");
        let stderr = fs::File::create(&log).map_err(|source| SwtpmError::StateDir {
            dir: state_dir.to_owned(),
            source,
        })?;
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(SwtpmError::NotInstalled)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let said = fs::read_to_string(&log).unwrap_or_default();
                let mut reason = format!("exited with {status}: {}", said.trim());
                if said.contains("lock") {
                    let pid = fs::read_to_string(state_dir.join("swtpm.pid")).unwrap_or_default();
                    reason.push_str(&format!(
                        " (another swtpm holds this state dir; the last one started here had pid {}: stop it first)",
                        pid.trim()
                    ));
                }
                return Err(fail(reason));
            }
            // swtpm opens its ports before it initialises (and locks) its
            // state, so only an answered TPM command proves it is up.
            if connects(ctrl) && raw_exchange(port, &TPM2_GET_RANDOM_8, 10).is_ok() {
                // Our own pid file, written only once this swtpm holds the
                // state (swtpm's --pid would be truncated by a second swtpm
                // that then fails on the state lock).
                let pid_file = state_dir.join("swtpm.pid");
                if let Err(e) = fs::write(&pid_file, format!("{}\n", child.id())) {
                    tracing::warn!("writing {}: {e}", pid_file.display());
                }
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "ports not open after {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The local CA that certified a manufactured swtpm's EKs.
#[derive(Debug, Clone)]
pub struct EkCa {
    /// The root CA certificate (PEM): what verifiers configure as EK root.
    pub root_pem: PathBuf,
    /// The intermediate (issuer) CA certificate (PEM): the EK chain.
    pub intermediate_pem: PathBuf,
}

impl Swtpm {
    /// Manufactures a fresh TPM state in `state_dir` the way a TPM vendor
    /// would: `swtpm_setup --createek --create-ek-cert --create-platform-cert
    /// --ecc --lock-nvram`, the EK certificates (RSA 2048 at NV 0x01c00002,
    /// ECC P-384 at 0x01c00016) signed by swtpm_localca's root and
    /// intermediate CA kept in `ca_dir` (created on first use, shared by
    /// every TPM manufactured with the same `ca_dir`). Only the SHA-256 PCR
    /// bank is active. Start the TPM with [`Swtpm::spawn`] on `state_dir`.
    pub fn manufacture_with_ek_certificates(
        state_dir: &Path,
        ca_dir: &Path,
    ) -> Result<EkCa, SwtpmError> {
        create_private_dir(state_dir)?;
        create_private_dir(ca_dir)?;
        let io = |dir: &Path| {
            let dir = dir.to_owned();
            move |source| SwtpmError::StateDir { dir, source }
        };
        let localca = ca_dir.join("swtpm-localca.conf");
        fs::write(
            &localca,
            format!(
                "statedir = {d}\nsigningkey = {d}/signkey.pem\nissuercert = {d}/issuercert.pem\ncertserial = {d}/certserial\n",
                d = ca_dir.display()
            ),
        )
        .map_err(io(ca_dir))?;
        let options = ca_dir.join("swtpm-localca.options");
        fs::write(
            &options,
            "--platform-manufacturer Quorate\n--platform-version 1.0\n--platform-model test\n",
        )
        .map_err(io(ca_dir))?;
        let setup = ca_dir.join("swtpm_setup.conf");
        fs::write(
            &setup,
            format!(
                "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                in_path("swtpm_localca").display(),
                localca.display(),
                options.display()
            ),
        )
        .map_err(io(ca_dir))?;
        let out = Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(state_dir)
            .arg("--config")
            .arg(&setup)
            .args([
                "--createek",
                "--create-ek-cert",
                "--create-platform-cert",
                "--ecc",
                "--lock-nvram",
                "--overwrite",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(SwtpmError::NotInstalled)?;
        if !out.status.success() {
            return Err(SwtpmError::StartFailed {
                dir: state_dir.to_owned(),
                port: 0,
                reason: format!(
                    "swtpm_setup (package swtpm-tools) failed with {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(EkCa {
            root_pem: ca_dir.join("swtpm-localca-rootca-cert.pem"),
            intermediate_pem: ca_dir.join("issuercert.pem"),
        })
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping swtpm: {e}");
        }
    }
}

/// `program` resolved through `PATH` (swtpm_setup runs its certificate
/// tool by absolute path); `program` itself when not found.
fn in_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

fn is_port_clash(e: &SwtpmError) -> bool {
    matches!(e, SwtpmError::StartFailed { reason, .. }
        if reason.contains("Address already in use") || reason.contains("ould not open"))
}

fn connects(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Sends one request on a fresh connection and reads a `min_reply`-byte reply.
fn raw_exchange(port: u16, request: &[u8], min_reply: usize) -> std::io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request)?;
    let mut reply = vec![0u8; min_reply];
    s.read_exact(&mut reply)?;
    Ok(())
}

/// A port P such that P and P+1 are both free on 127.0.0.1 right now.
pub fn free_port_pair() -> std::io::Result<u16> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    for _ in 0..64 {
        let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let p = a.local_addr()?.port();
        let Some(next) = p.checked_add(1) else {
            continue;
        };
        match TcpListener::bind((Ipv4Addr::LOCALHOST, next)) {
            Ok(_) => return Ok(p),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), SwtpmError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SwtpmError::StateDir {
            dir: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_pair_is_bindable() {
        let p = free_port_pair().unwrap();
        let _a = TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
        let _b = TcpListener::bind((Ipv4Addr::LOCALHOST, p + 1)).unwrap();
    }

    #[test]
    fn spawns_restarts_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("tpm");
        let mut tpm = Swtpm::spawn(&state).unwrap();
        let port = tpm.port();
        assert!(connects(port) && connects(port + 1));
        let pid: u32 = fs::read_to_string(state.join("swtpm.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(Some(pid), tpm.pid());
        tpm.kill_hard().unwrap();
        assert!(tpm.pid().is_none());
        tpm.restart().unwrap();
        assert_eq!(tpm.port(), port);
        assert!(connects(port));
        tpm.stop().unwrap();
        assert!(!connects(port));
        // The state was written and is reused by the next instance.
        assert!(fs::read_dir(&state).unwrap().count() >= 2);
    }

    #[test]
    fn a_second_swtpm_on_the_same_state_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let first = Swtpm::spawn(dir.path()).unwrap();
        let err = Swtpm::spawn(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("another swtpm holds this state dir"), "{msg}");
        assert!(msg.contains(&first.pid().unwrap().to_string()), "{msg}");
    }
}
