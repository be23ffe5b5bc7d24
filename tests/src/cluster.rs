//! A local cluster of real `quorate` daemons for system tests: each party
//! provisioned with `quorate init --tpm spawn` (its own swtpm), its own
//! config, data dir and free ports, in one temporary directory that is
//! removed — processes and swtpm instances included — when the cluster is
//! dropped, also when a test fails.

use anyhow::{anyhow, bail, Context as _};
use quorate_host::client::Client;
use quorate_host::daemon::status::StatusView;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `quorate` binary: `$QUORATE_BIN`, or `quorate` beside the test
/// executable's profile directory (cargo builds it for `cargo test --workspace`).
pub fn quorate_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("QUORATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // A binary of this package (target/<profile>/quorate-bench) lies beside it.
    let beside = exe.with_file_name("quorate");
    if beside.exists() {
        return Ok(beside);
    }
    // target/<profile>/deps/<test> -> target/<profile>/quorate
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))?;
    let bin = profile_dir.join("quorate");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build -p quorate-host --bin quorate` (or `cargo test --workspace`) first, or set QUORATE_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A loopback address on a free port, outside the kernel's ephemeral range
/// (see [`quorate_host::dev::free_loopback_addr`]): nothing else takes it
/// between this choice and the daemon's bind.
pub fn free_addr() -> SocketAddr {
    quorate_host::dev::free_loopback_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Writes to `out` (mode 0755) a copy of the executable `bin` with one byte
/// changed in its measurement marker (`MEASUREMENT_MARKER` in the host's
/// main.rs): it behaves exactly as `bin`, but measures differently.
pub fn write_modified_binary(bin: &Path, out: &Path) -> anyhow::Result<()> {
    const MARKER: &[u8] = b"quorate-measurement-marker:00000";
    let mut bytes = std::fs::read(bin)?;
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .ok_or_else(|| anyhow!("the measurement marker is not in {}", bin.display()))?;
    if let Some(b) = bytes.get_mut(at + MARKER.len() - 1) {
        *b = b'1';
    }
    std::fs::write(out, bytes)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One party of a test cluster.
#[derive(Debug)]
pub struct TestParty {
    /// Its id.
    pub id: u32,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its party.toml.
    pub config: PathBuf,
    /// Its API address.
    pub api: SocketAddr,
    /// Its peer address.
    pub peer: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    /// Runs this executable instead of the cluster's (a modified build).
    pub binary: Option<PathBuf>,
    /// Runs its daemon inside this network namespace (`ip netns exec`),
    /// when set (see [`crate::netcluster`]).
    pub netns: Option<String>,
}

/// A cluster of daemons in a temporary directory.
#[derive(Debug)]
pub struct TestCluster {
    dir: tempfile::TempDir,
    /// The parties, in id order (index 0 is party 1).
    pub parties: Vec<TestParty>,
    bin: PathBuf,
}

impl TestCluster {
    /// Provisions `n` parties (each with its own spawned swtpm) and writes
    /// their configs with `fault_model`. Nothing is started yet. Dev mode,
    /// no attestation key, no reference policy: peers are admitted on TLS.
    pub fn provision(n: u32, fault_model: &str) -> anyhow::Result<TestCluster> {
        Self::provision_with(n, fault_model, false, None, None)
    }

    /// As [`TestCluster::provision`], each party on an existing TPM instead
    /// of a spawned one: party `i` (1-based) is initialised on
    /// `init_tpms[i - 1]` and its daemon runs on `run_tpms[i - 1]` (both
    /// `swtpm:host=H,port=P` forms). The two may differ, e.g. a swtpm for
    /// `quorate init` and a latency proxy in front of the same swtpm for
    /// `quorate run` (see [`crate::tpm_proxy`]). The caller owns the TPMs
    /// and keeps them running while the cluster is.
    pub fn provision_on_tpms(
        fault_model: &str,
        init_tpms: &[String],
        run_tpms: &[String],
    ) -> anyhow::Result<TestCluster> {
        if init_tpms.len() != run_tpms.len() || init_tpms.is_empty() {
            bail!(
                "one init and one run TPM per party (got {} and {})",
                init_tpms.len(),
                run_tpms.len()
            );
        }
        let tpms = init_tpms.iter().cloned().zip(run_tpms.iter().cloned());
        Self::provision_with(
            init_tpms.len() as u32,
            fault_model,
            false,
            None,
            Some(tpms.collect()),
        )
    }

    /// As [`TestCluster::provision`], with measured launch: each party gets
    /// an attestation key and a vote key bound to the measurement of the
    /// `quorate` binary and the cluster rules (PCR 23, dev mode), and the
    /// cluster a reference policy (`policy.toml`, from `quorate measure`)
    /// approving exactly that binary. Peers are admitted only on evidence.
    pub fn provision_attested(n: u32, fault_model: &str) -> anyhow::Result<TestCluster> {
        Self::provision_with(n, fault_model, true, None, None)
    }

    /// As [`TestCluster::provision_attested`], each party committing an
    /// epoch AttestationRecord every `every` heights.
    pub fn provision_attested_every(
        n: u32,
        fault_model: &str,
        every: u64,
    ) -> anyhow::Result<TestCluster> {
        Self::provision_with(n, fault_model, true, Some(every), None)
    }

    fn provision_with(
        n: u32,
        fault_model: &str,
        attested: bool,
        attest_every: Option<u64>,
        tpms: Option<Vec<(String, String)>>,
    ) -> anyhow::Result<TestCluster> {
        // (init, run) TPM of party `id`: spawned unless given.
        let tpm_of = |id: u32| -> (String, String) {
            tpms.as_ref()
                .and_then(|t| t.get(id as usize - 1).cloned())
                .unwrap_or_else(|| ("spawn".into(), "spawn".into()))
        };
        let bin = quorate_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("quorate-cluster-")
            .tempdir()?;
        let mut parties = Vec::new();
        for id in 1..=n {
            parties.push(TestParty {
                id,
                data_dir: dir.path().join(format!("p{id}")),
                config: dir.path().join(format!("party{id}.toml")),
                log: dir.path().join(format!("party{id}.log")),
                api: free_addr(),
                peer: free_addr(),
                child: None,
                binary: None,
                netns: None,
            });
        }
        let mut members = String::new();
        for p in &parties {
            members.push_str(&format!(
                "\n[[cluster.parties]]\nid = {}\naddress = \"{}\"\nenrollment = \"p{}/enrollment.json\"\n",
                p.id, p.peer, p.id
            ));
        }
        let every = attest_every
            .map(|k| format!("attestation_every = {k}\n"))
            .unwrap_or_default();
        let policy = if attested {
            "reference_policy = \"policy.toml\"\n"
        } else {
            ""
        };
        for p in &parties {
            let text = format!(
                "[party]\nid = {}\ndata_dir = \"p{}\"\ntpm = \"{}\"\napi_listen = \"{}\"\ndev = true\n\n[cluster]\nname = \"system-test\"\nfault_model = \"{fault_model}\"\n{policy}{every}{members}",
                p.id,
                p.id,
                tpm_of(p.id).1,
                p.api
            );
            std::fs::write(&p.config, text)?;
        }
        for p in &parties {
            let mut cmd = Command::new(&bin);
            cmd.args([
                "init",
                "--party-id",
                &p.id.to_string(),
                "--tpm",
                &tpm_of(p.id).0,
                "--data-dir",
            ])
            .arg(&p.data_dir)
            .env("TSS2_LOG", "all+none");
            if attested {
                cmd.arg("--config").arg(&p.config);
            }
            let out = cmd.output()?;
            if !out.status.success() {
                bail!(
                    "quorate init for party {} failed: {}",
                    p.id,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if attested {
            let first = parties.first().ok_or_else(|| anyhow!("no parties"))?;
            let out = Command::new(&bin)
                .arg("measure")
                .arg("--exe")
                .arg(&bin)
                .arg("--config")
                .arg(&first.config)
                .output()?;
            if !out.status.success() {
                bail!(
                    "quorate measure failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::fs::write(dir.path().join("policy.toml"), &out.stdout)?;
        }
        Ok(TestCluster { dir, parties, bin })
    }

    /// Writes a copy of the `quorate` binary with one byte changed (in a
    /// marker string, so it behaves the same) and returns its path.
    pub fn modified_binary(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("quorate-modified");
        write_modified_binary(&self.bin, &path)?;
        Ok(path)
    }

    /// Appends `text` (TOML, e.g. a `[party.engine]` table) to party
    /// `id`'s config; takes effect at its next start.
    pub fn append_config(&self, id: u32, text: &str) -> anyhow::Result<()> {
        let p = self
            .parties
            .get(id as usize - 1)
            .ok_or_else(|| anyhow!("no party {id}"))?;
        let mut cfg = std::fs::read_to_string(&p.config)?;
        cfg.push('\n');
        cfg.push_str(text);
        std::fs::write(&p.config, cfg)?;
        Ok(())
    }

    /// Runs `quorate audit export` on party `id`'s data dir (beside its
    /// running daemon, as an operator would) and returns the bundle's path.
    pub fn export_audit(&self, id: u32) -> anyhow::Result<PathBuf> {
        let p = self
            .parties
            .get(id as usize - 1)
            .ok_or_else(|| anyhow!("no party {id}"))?;
        let bundle = self.dir.path().join(format!("p{id}.bundle"));
        let out = Command::new(&self.bin)
            .args(["audit", "export", "--data-dir"])
            .arg(&p.data_dir)
            .arg("--out")
            .arg(&bundle)
            .output()?;
        if !out.status.success() {
            bail!(
                "quorate audit export of party {id} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(bundle)
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn party(&mut self, id: u32) -> anyhow::Result<&mut TestParty> {
        self.parties
            .get_mut(id as usize - 1)
            .ok_or_else(|| anyhow!("no party {id}"))
    }

    /// Starts party `id`'s daemon (which itself stops the swtpm an earlier,
    /// SIGKILLed run left behind).
    pub fn start(&mut self, id: u32) -> anyhow::Result<()> {
        let default_bin = self.bin.clone();
        let p = self.party(id)?;
        let bin = p.binary.clone().unwrap_or(default_bin);
        if p.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)?;
        let mut cmd = match &p.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&p.config)
            .env("TSS2_LOG", "all+none")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting quorate run")?;
        p.child = Some(child);
        Ok(())
    }

    /// Starts every party.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for id in 1..=self.parties.len() as u32 {
            self.start(id)?;
        }
        Ok(())
    }

    /// Kills party `id`'s daemon with SIGKILL (its swtpm survives, orphaned,
    /// as it would after a crash).
    pub fn kill9(&mut self, id: u32) -> anyhow::Result<()> {
        let p = self.party(id)?;
        if let Some(mut c) = p.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Stops party `id`'s daemon with SIGTERM and waits for it.
    pub fn stop(&mut self, id: u32) -> anyhow::Result<()> {
        let p = self.party(id)?;
        if let Some(c) = p.child.take() {
            stop_child(c);
        }
        Ok(())
    }

    /// The process id of party `id`'s daemon, while it runs.
    pub fn pid(&self, id: u32) -> Option<u32> {
        self.parties
            .get(id as usize - 1)
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
    }

    /// Whether party `id`'s daemon process is still running.
    pub fn running(&mut self, id: u32) -> bool {
        match self.party(id).ok().and_then(|p| p.child.as_mut()) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Party `id`'s log so far.
    pub fn log(&self, id: u32) -> String {
        self.parties
            .get(id as usize - 1)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// An API client for party `id`.
    pub fn client(&self, id: u32) -> anyhow::Result<Client> {
        let p = self
            .parties
            .get(id as usize - 1)
            .ok_or_else(|| anyhow!("no party {id}"))?;
        Ok(Client::from_data_dir(p.api, &p.data_dir)?)
    }

    /// Waits until party `id`'s API answers.
    pub async fn wait_api(&self, id: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(c) = self.client(id) {
                if c.status().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("party {id}'s API did not come up; log:\n{}", self.log(id));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The statuses of the given parties.
    pub async fn statuses(&self, ids: &[u32]) -> anyhow::Result<Vec<StatusView>> {
        let mut out = Vec::new();
        for id in ids {
            out.push(self.client(*id)?.status().await?);
        }
        Ok(out)
    }

    /// Waits until the given parties have empty outboxes and agree on
    /// height, state root and last block hash, and returns that status.
    pub async fn wait_quiescent(
        &self,
        ids: &[u32],
        timeout: Duration,
    ) -> anyhow::Result<Vec<StatusView>> {
        let deadline = Instant::now() + timeout;
        let mut stable = 0;
        loop {
            if let Ok(s) = self.statuses(ids).await {
                let agree = s.windows(2).all(|w| match w {
                    [a, b] => {
                        a.height == b.height
                            && a.state_root == b.state_root
                            && a.last_decision.as_ref().map(|d| &d.block_hash)
                                == b.last_decision.as_ref().map(|d| &d.block_hash)
                    }
                    _ => true,
                });
                if agree && s.iter().all(|x| x.outbox == 0) {
                    stable += 1;
                    // Quiet for a few polls: nothing more in flight.
                    if stable >= 5 {
                        return Ok(s);
                    }
                } else {
                    stable = 0;
                }
                if Instant::now() > deadline {
                    bail!("parties {ids:?} did not settle: {s:#?}");
                }
            } else if Instant::now() > deadline {
                bail!("parties {ids:?} did not answer");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn stop_child(mut c: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for p in &mut self.parties {
            if let Some(c) = p.child.take() {
                stop_child(c);
            }
        }
        // Any swtpm still running on a state dir under this cluster.
        quorate_host::dev::kill_orphan_swtpms(self.dir.path());
    }
}
