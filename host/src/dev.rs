//! `quorate dev`: a local development cluster in one command.
//!
//! Provisions N parties in `DIR` (each with its own spawned swtpm, as
//! `quorate init --tpm spawn` does), writes their `party.toml` with free
//! loopback ports and `dev = true`, starts each as a child `quorate run`,
//! waits until every API answers, and writes `DIR/cluster.json` (each
//! party's id, API URL, token file, pid). It then supervises: a party that
//! dies (a crash, or `kill -9` in a demo) is restarted from its data dir
//! after a delay, so it catches up. SIGINT or SIGTERM stops every party with
//! SIGTERM (each sends TPM2_Shutdown and stops its swtpm) and leaves no
//! process behind.
//!
//! Re-running `quorate dev` on a `DIR` it already provisioned starts the
//! same cluster again (same keys, same history).
//!
//! With `--api-tls` every party serves its API over TLS with a self-signed
//! certificate made at provisioning; `cluster.json` then lists `https://`
//! URLs with each certificate's file and SHA-256 fingerprint, and
//! [`DevCluster::client`] pins it.
//!
//! Ports: each party's API and peer ports are chosen once, at provisioning,
//! outside the kernel's ephemeral port range ([`free_loopback_addr`]), so
//! that no outgoing connection and no `bind(0)` (a spawned swtpm's, say)
//! can take one while its party is down or not yet started.
//!
//! A file `DIR/partyN.exe`, when present as party N is (re)started, is run
//! instead of the cluster's `quorate` (the demo uses it to show that a
//! modified executable is refused); `cluster.json` names the executable
//! each party runs.
//!
//! The last party of a dev cluster has a local policy that only runs FROST
//! key generations, so that a request for another scheme shows a rejection
//! with its reason (the demo uses it).

use crate::client::Client;
use crate::init::InitOptions;
use crate::tpm::TpmTarget;
use anyhow::{anyhow, bail, Context as _};
use quorate_firmware::types::PartyId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// File name of the cluster description in the dev dir.
pub const CLUSTER_FILE: &str = "cluster.json";
/// The schemes the last party of a dev cluster runs key generations for:
/// the built-in engine's two and the FROST labels external engines use.
pub const DEV_ALLOWED_SCHEMES: [&str; 4] = [
    "frost-ed25519",
    "frost-secp256k1-tr",
    "frost-secp256k1",
    "frost-p256",
];

/// Options of `quorate dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// How many parties.
    pub parties: u32,
    /// The cluster's directory.
    pub dir: PathBuf,
    /// `byzantine`, `unanimous` or `majority`.
    pub fault_model: String,
    /// Restart a party that died after this long (`None`: do not).
    pub restart_after: Option<Duration>,
    /// The `quorate` binary the parties run.
    pub bin: PathBuf,
    /// Serve every party's API over TLS (self-signed, pinned).
    pub api_tls: bool,
}

/// One party as `cluster.json` describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevParty {
    /// Its id.
    pub id: u32,
    /// Its API base URL (`http://127.0.0.1:P`, or `https://` with TLS).
    pub api_url: String,
    /// Its API address.
    pub api_addr: SocketAddr,
    /// The file holding its API bearer token.
    pub token_file: PathBuf,
    /// With TLS: the API's self-signed certificate (PEM; a CA file for
    /// `curl --cacert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_cert: Option<PathBuf>,
    /// With TLS: the SHA-256 fingerprint of that certificate, to pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_cert_sha256: Option<String>,
    /// Its peer (mTLS) address.
    pub peer_addr: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its party.toml.
    pub config: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The pid of its running `quorate run` (0 while stopped).
    pub pid: u32,
    /// How many times it was (re)started.
    pub starts: u32,
    /// The executable its current (or last) run uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<PathBuf>,
}

impl DevParty {
    /// The file whose presence makes the supervisor run it instead of the
    /// cluster's `quorate` when this party is (re)started.
    pub fn exe_override(&self, dir: &Path) -> PathBuf {
        dir.join(format!("party{}.exe", self.id))
    }
}

/// `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevCluster {
    /// The directory.
    pub dir: PathBuf,
    /// The fault model.
    pub fault_model: String,
    /// The pid of the `quorate dev` supervising the parties.
    pub supervisor_pid: u32,
    /// The parties, in id order.
    pub parties: Vec<DevParty>,
}

impl DevCluster {
    /// Reads `DIR/cluster.json`.
    pub fn read(dir: &Path) -> anyhow::Result<DevCluster> {
        let path = dir.join(CLUSTER_FILE);
        let b = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("{}", path.display()))
    }

    /// An API client for party `id`.
    pub fn client(&self, id: u32) -> anyhow::Result<Client> {
        let p = self
            .parties
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| anyhow!("no party {id} in the cluster"))?;
        let token = std::fs::read_to_string(&p.token_file)
            .with_context(|| format!("{}", p.token_file.display()))?;
        let client = Client::new(p.api_addr, token.trim());
        match &p.api_cert_sha256 {
            None => Ok(client),
            Some(fp) => {
                let pin = fp
                    .parse()
                    .with_context(|| format!("party {id}'s api_cert_sha256"))?;
                Ok(client.with_tls(&crate::api_tls::ServerTrust::Pinned(pin))?)
            }
        }
    }

    fn write(&self) -> anyhow::Result<()> {
        let b = serde_json::to_vec_pretty(self)?;
        crate::fsutil::write_atomic(&self.dir.join(CLUSTER_FILE), &b)
            .with_context(|| format!("{}", self.dir.join(CLUSTER_FILE).display()))
    }

    /// A human-readable rendering.
    pub fn render(&self) -> String {
        let mut s = format!(
            "dev cluster in {} ({} parties, {})\n",
            self.dir.display(),
            self.parties.len(),
            self.fault_model
        );
        s.push_str("  party  API                     token file\n");
        for p in &self.parties {
            s.push_str(&format!(
                "  P{:<5} {:<23} {}\n",
                p.id,
                p.api_url,
                p.token_file.display()
            ));
        }
        s.push_str(&format!(
            "  written to {}\n  try: curl -H \"Authorization: Bearer $(cat {})\" {}/v1/status\n",
            self.dir.join(CLUSTER_FILE).display(),
            self.parties
                .first()
                .map(|p| p.token_file.display().to_string())
                .unwrap_or_default(),
            self.parties
                .first()
                .map(|p| p.api_url.clone())
                .unwrap_or_default()
        ));
        s
    }
}

/// The lowest port [`free_loopback_addr`] hands out.
const LOWEST_PORT: u16 = 10_000;

/// The kernel's ephemeral port range (`ip_local_port_range`), the ports it
/// gives to `bind(0)` and outgoing connections.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A loopback address whose port is free now, lies outside the kernel's
/// ephemeral range (so no outgoing connection and no `bind(0)` can take it
/// before its owner binds it, however long that takes), and was not handed
/// out before by this process. Falls back to a kernel-chosen port when the
/// ephemeral range leaves no room.
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let (lo, hi) = ephemeral_range();
    let below = lo.saturating_sub(LOWEST_PORT);
    let above = u16::MAX.saturating_sub(hi.max(LOWEST_PORT));
    let room = u32::from(below) + u32::from(above);
    let rng = ring::rand::SystemRandom::new();
    if room > 0 {
        for _ in 0..512 {
            let mut r = [0u8; 4];
            if ring::rand::SecureRandom::fill(&rng, &mut r).is_err() {
                break;
            }
            let k = u32::from_le_bytes(r) % room;
            let port = if k < u32::from(below) {
                LOWEST_PORT.saturating_add(k as u16)
            } else {
                hi.max(LOWEST_PORT)
                    .saturating_add(1)
                    .saturating_add((k - u32::from(below)) as u16)
            };
            let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(&port) {
                continue;
            }
            if let Ok(l) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
                seen.push(port);
                return l.local_addr();
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Provisions the parties (or reuses an earlier provisioning of `dir`) and
/// writes their configs; returns the cluster description, nothing started.
pub async fn provision(opts: &DevOptions) -> anyhow::Result<DevCluster> {
    if opts.parties == 0 {
        bail!("--parties: at least 1");
    }
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("{}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    if let Ok(existing) = DevCluster::read(&dir) {
        let tls = existing.parties.iter().all(|p| p.api_cert_sha256.is_some());
        if existing.parties.len() == opts.parties as usize && tls != opts.api_tls {
            eprintln!(
                "note: the cluster in {} was provisioned {} API TLS; keeping that",
                dir.display(),
                if tls { "with" } else { "without" }
            );
        }
        if existing.parties.len() == opts.parties as usize {
            eprintln!(
                "reusing the cluster provisioned in {} (delete the directory for a new one)",
                dir.display()
            );
            return Ok(existing);
        }
        bail!(
            "{} holds a cluster of {} parties, not {}: use another --dir",
            dir.display(),
            existing.parties.len(),
            opts.parties
        );
    }
    let mut parties = Vec::new();
    for id in 1..=opts.parties {
        let data_dir = dir.join(format!("p{id}"));
        let api_addr = free_loopback_addr()?;
        let scheme = if opts.api_tls { "https" } else { "http" };
        parties.push(DevParty {
            id,
            api_url: format!("{scheme}://{api_addr}"),
            api_addr,
            token_file: data_dir.join(crate::api::TOKEN_FILE),
            api_cert: None,
            api_cert_sha256: None,
            peer_addr: free_loopback_addr()?,
            config: dir.join(format!("party{id}.toml")),
            log: dir.join(format!("party{id}.log")),
            data_dir,
            pid: 0,
            starts: 0,
            exe: None,
        });
    }
    let mut members = String::new();
    for p in &parties {
        members.push_str(&format!(
            "\n[[cluster.parties]]\nid = {}\naddress = \"{}\"\nenrollment = \"p{}/enrollment.json\"\nenrollment_record = \"{}\"\n",
            p.id, p.peer_addr, p.id, record_file(p.id)
        ));
    }
    for p in &parties {
        let policy = if p.id == opts.parties && opts.parties > 1 {
            format!(
                "\n# A dev-cluster example of a local policy: this party only runs\n# FROST key generations and rejects others with the reason.\n[party.local_policy]\nallowed_schemes = [{}]\n",
                DEV_ALLOWED_SCHEMES
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        let tls = if opts.api_tls {
            "api_tls = true                # self-signed, in p*/api-tls.crt.pem\n"
        } else {
            ""
        };
        // Every peer dials from loopback: the per-address cap on pending
        // handshakes must hold all of them at once, or starts churn.
        let peers = (opts.parties as usize).saturating_sub(1);
        let net = if peers > crate::net::peers::DEFAULT_MAX_PENDING_PER_IP {
            format!(
                "\n# All peers connect from loopback: room for every one of them at once.\n[party.net]\nmax_pending_per_ip = {peers}\nmax_pending_connections = {}\n",
                peers.max(crate::net::peers::DEFAULT_MAX_PENDING)
            )
        } else {
            String::new()
        };
        let text = format!(
            "# Written by `quorate dev`: a development party (PCR 23 measurement).\n[party]\nid = {}\ndata_dir = \"p{}\"\ntpm = \"spawn\"\napi_listen = \"{}\"\n{tls}dev = true\n{policy}{net}\n[cluster]\nname = \"dev\"\nfault_model = \"{}\"\nreference_policy = \"policy.toml\"\n{members}",
            p.id, p.id, p.api_addr, opts.fault_model
        );
        // Check it parses as the daemon will read it.
        let _: crate::config::ConfigFile = toml::from_str(&text)
            .map_err(|e| anyhow!("the dev config of party {} is invalid: {e}", p.id))?;
        std::fs::write(&p.config, text).with_context(|| format!("{}", p.config.display()))?;
    }
    // Provision every party for measured launch: an AK, and a vote key bound
    // to this executable and the cluster's rules (PCR 23: dev mode); then the
    // reference policy approving exactly this executable.
    let first = parties
        .first()
        .ok_or_else(|| anyhow!("a cluster needs a party"))?;
    let (rules, _) = crate::config::Config::measured_digest_of_file(&first.config)?;
    let executable = crate::launch::file_digest(Path::new("/proc/self/exe"))
        .context("hashing the running executable")?;
    let measurement = crate::launch::Measurement {
        pcr: quorate_attestation::pcr::PcrIndex::DEV_MEASUREMENT,
        executable,
        config: rules,
    };
    let ca_dir = dir.join(EK_CA_DIR);
    let mut ek_root = None;
    for p in &parties {
        eprintln!(
            "provisioning party {} (its own swtpm with EK certificates from the local CA, measured launch) ...",
            p.id
        );
        // As a TPM vendor would: an EK certificate chaining to a CA root.
        let ca = crate::tpm::Swtpm::manufacture_with_ek_certificates(
            &p.data_dir.join(crate::init::SWTPM_DIR),
            &ca_dir,
        )
        .with_context(|| format!("manufacturing party {}'s swtpm", p.id))?;
        let chain = crate::enroll_cli::read_roots(&ca.intermediate_pem)?;
        crate::init::init_with_ek_chain(
            &InitOptions {
                data_dir: p.data_dir.clone(),
                party_id: PartyId(p.id),
                tpm: TpmTarget::Spawn,
                force: false,
            },
            Some(crate::init::MeasuredInit {
                measurement,
                dev: true,
            }),
            &chain,
        )
        .await
        .with_context(|| format!("provisioning party {}", p.id))?;
        ek_root = Some(ca.root_pem);
    }
    let ek_root = ek_root.ok_or_else(|| anyhow!("a cluster needs a party"))?;
    // Enroll every party as its peers' operators would: challenge its EK
    // and AK, let its TPM activate the credential, record the result.
    for p in &parties {
        let record = enroll_party(&dir, p, &ek_root).await?;
        eprint!("{}", record.render());
    }
    if opts.api_tls {
        // Made now (the daemon would make the same at its first start) so
        // that cluster.json can name the fingerprint to pin at once.
        for p in &mut parties {
            let id = crate::api_tls::ApiTlsIdentity::load_or_generate(&p.data_dir, p.api_addr)
                .with_context(|| format!("party {}'s API certificate", p.id))?;
            p.api_cert = Some(p.data_dir.join(crate::api_tls::API_CERT_FILE));
            p.api_cert_sha256 = id.fingerprint().map(|f| f.to_string());
        }
    }
    let mut policy = quorate_attestation::policy::Policy::new(vec![executable], rules);
    policy.dev = true;
    policy.require_ek_certificate = true;
    policy.ek_roots =
        vec![std::fs::read_to_string(&ek_root).with_context(|| format!("{}", ek_root.display()))?];
    policy.measurement_pcr = quorate_attestation::pcr::PcrIndex::DEV_MEASUREMENT;
    std::fs::write(dir.join("policy.toml"), policy.to_toml()?)
        .with_context(|| format!("{}", dir.join("policy.toml").display()))?;
    let cluster = DevCluster {
        dir,
        fault_model: opts.fault_model.clone(),
        supervisor_pid: std::process::id(),
        parties,
    };
    cluster.write()?;
    Ok(cluster)
}

/// Where the dev cluster's local EK CA (root and issuer) lives.
pub const EK_CA_DIR: &str = "ek-ca";

/// The enrollment record of party `id`, relative to the dev dir.
fn record_file(id: u32) -> String {
    format!("enroll/p{id}.enrolled.json")
}

/// The whole enrollment of party `p` (`quorate enroll challenge`, `quorate
/// activate`, `quorate enroll complete`), requiring an EK certificate that
/// chains to `ek_root`; writes the record its config lists.
async fn enroll_party(
    dir: &Path,
    p: &DevParty,
    ek_root: &Path,
) -> anyhow::Result<crate::enroll_cli::EnrollmentRecord> {
    let work = dir.join("enroll");
    std::fs::create_dir_all(&work).with_context(|| format!("{}", work.display()))?;
    let challenge = work.join(format!("p{}.challenge.json", p.id));
    let state = work.join(format!("p{}.state.json", p.id));
    let answer = work.join(format!("p{}.answer.json", p.id));
    crate::enroll_cli::make_challenge(&crate::enroll_cli::ChallengeOptions {
        enrollment: p.data_dir.join(crate::init::ENROLLMENT_FILE),
        out: challenge.clone(),
        state: state.clone(),
        ek_roots: vec![ek_root.to_path_buf()],
        policy: None,
        require_ek_certificate: true,
    })
    .with_context(|| format!("enrolling party {}", p.id))?;
    crate::enroll_cli::activate(&p.data_dir, &TpmTarget::Spawn, &challenge, &answer)
        .await
        .with_context(|| format!("party {} answering its enrollment challenge", p.id))?;
    let record = crate::enroll_cli::complete(&state, &answer, Some(&dir.join(record_file(p.id))))
        .with_context(|| format!("completing the enrollment of party {}", p.id))?;
    // The state holds the credential: not needed once the record is written.
    let _ = std::fs::remove_file(&state);
    Ok(record)
}

/// How long the parties may take to answer on their APIs after the start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `quorate dev` until `shutdown` resolves: provision, start,
/// describe, supervise, stop. A party that exits is restarted after
/// `restart_after` from the start on, so a daemon that fails while the
/// cluster comes up does not hold the others up.
pub async fn run(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut cluster = provision(&opts).await?;
    cluster.supervisor_pid = std::process::id();
    let mut children: Vec<Option<Child>> = Vec::new();
    for p in cluster.parties.iter_mut() {
        match start(&opts.bin, &cluster.dir, p) {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                stop_all(&cluster_view(&opts, &[]), &mut children);
                return Err(e);
            }
        }
    }
    if let Err(e) = cluster.write() {
        stop_all(&cluster, &mut children);
        return Err(e);
    }
    tokio::pin!(shutdown);
    let started = Instant::now();
    let mut announced = false;
    let mut died: Vec<Option<Instant>> = vec![None; children.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let mut changed = false;
        for (i, slot) in children.iter_mut().enumerate() {
            let (Some(p), Some(d)) = (cluster.parties.get_mut(i), died.get_mut(i)) else {
                continue;
            };
            if let Some(c) = slot {
                if let Ok(Some(status)) = c.try_wait() {
                    eprintln!(
                        "party {} (pid {}) exited: {status}; see {}",
                        p.id,
                        p.pid,
                        p.log.display()
                    );
                    *slot = None;
                    p.pid = 0;
                    *d = Some(Instant::now());
                    changed = true;
                }
            }
            if slot.is_none() {
                if let (Some(at), Some(after)) = (*d, opts.restart_after) {
                    if at.elapsed() >= after {
                        eprintln!("restarting party {} from {}", p.id, p.data_dir.display());
                        match start(&opts.bin, &cluster.dir, p) {
                            Ok(c) => *slot = Some(c),
                            Err(e) => eprintln!("cannot restart party {}: {e:#}", p.id),
                        }
                        *d = None;
                        changed = true;
                    }
                }
            }
        }
        if changed {
            if let Err(e) = cluster.write() {
                eprintln!("cannot update cluster.json: {e:#}");
            }
        }
        if !announced {
            match all_up(&cluster).await {
                None => {
                    println!("{}", cluster.render());
                    println!("Ctrl-C stops the cluster.");
                    announced = true;
                }
                Some(p) if started.elapsed() > STARTUP_TIMEOUT => {
                    stop_all(&cluster, &mut children);
                    bail!(
                        "party {}'s API did not come up at {} within {STARTUP_TIMEOUT:?}; see {}",
                        p.id,
                        p.api_url,
                        p.log.display()
                    );
                }
                Some(_) => {}
            }
        }
    }
    eprintln!("stopping the cluster ...");
    stop_all(&cluster, &mut children);
    for p in &mut cluster.parties {
        p.pid = 0;
    }
    let _ = cluster.write();
    eprintln!("stopped");
    Ok(())
}

/// A cluster description with no parties (for stopping what was started
/// before the description was complete).
fn cluster_view(opts: &DevOptions, parties: &[DevParty]) -> DevCluster {
    DevCluster {
        dir: opts.dir.clone(),
        fault_model: opts.fault_model.clone(),
        supervisor_pid: std::process::id(),
        parties: parties.to_vec(),
    }
}

/// Starts party `p`: `quorate run` from `bin`, or from its override
/// executable in `dir` if there is one.
fn start(bin: &Path, dir: &Path, p: &mut DevParty) -> anyhow::Result<Child> {
    // A party killed with SIGKILL leaves its swtpm running: stop it first.
    kill_orphan_swtpms(&p.data_dir.join(crate::init::SWTPM_DIR));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .with_context(|| format!("{}", p.log.display()))?;
    let over = p.exe_override(dir);
    let exe = if over.exists() {
        eprintln!(
            "party {} runs {} instead of {}",
            p.id,
            over.display(),
            bin.display()
        );
        over
    } else {
        bin.to_path_buf()
    };
    let child = Command::new(&exe)
        .arg("run")
        .arg("--config")
        .arg(&p.config)
        .env("TSS2_LOG", "all+none")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} run", exe.display()))?;
    p.pid = child.id();
    p.starts += 1;
    p.exe = Some(exe);
    Ok(child)
}

/// `None` when every party's API answers; else the first that does not.
async fn all_up(cluster: &DevCluster) -> Option<&DevParty> {
    for p in &cluster.parties {
        let up = match cluster.client(p.id) {
            Ok(c) => c.status().await.is_ok(),
            Err(_) => false,
        };
        if !up {
            return Some(p);
        }
    }
    None
}

fn stop_all(cluster: &DevCluster, children: &mut [Option<Child>]) {
    for c in children.iter().flatten() {
        send_signal(c.id(), "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for slot in children.iter_mut() {
        if let Some(c) = slot {
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        *slot = None;
    }
    for p in &cluster.parties {
        kill_orphan_swtpms(&p.data_dir.join(crate::init::SWTPM_DIR));
    }
}

fn send_signal(pid: u32, sig: &str) {
    // kill(1): the workspace forbids unsafe code, so no libc::kill.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops every swtpm whose command line names `state_dir` (one that a
/// SIGKILLed daemon of this cluster left running).
pub fn kill_orphan_swtpms(state_dir: &Path) {
    let needle = state_dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("swtpm") && cmd.contains(&needle) {
            send_signal(pid, "KILL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let (lo, hi) = ephemeral_range();
        assert!(lo <= hi);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let a = free_loopback_addr().unwrap();
            assert!(a.ip().is_loopback());
            let p = a.port();
            assert!(seen.insert(p), "port {p} handed out twice");
            if lo > LOWEST_PORT || hi < u16::MAX {
                assert!(p < lo || p > hi, "{p} is in the ephemeral range {lo}-{hi}");
                assert!(p >= LOWEST_PORT);
            }
            // Free: it can be bound.
            std::net::TcpListener::bind(a).unwrap();
        }
    }
}
