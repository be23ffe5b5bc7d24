//! The `quorate` command.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use quorate_firmware::types::PartyId;
use std::path::Path;

use quorate_attestation::pcr::PcrIndex;
use quorate_host::init::{init_with_ek_chain, InitOptions, MeasuredInit};
use quorate_host::launch::{file_digest, Measurement};
use quorate_host::tpm::TpmTarget;

/// Quorate: a BFT coordinator for MPC parties, with TPM-held vote keys.
#[derive(Debug, Parser)]
#[command(name = "quorate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Provision a party: TPM keys, key blobs and enrollment.json in DATA_DIR.
    Init {
        /// The party's data dir (created 0700 if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// The party's id, 1..n.
        #[arg(long)]
        party_id: u32,
        /// The TPM: `swtpm:host=127.0.0.1,port=P` (control port P+1),
        /// `device:/dev/tpmrm0`, or `spawn` (a private swtpm with its state
        /// in DATA_DIR/swtpm/).
        #[arg(long)]
        tpm: TpmTarget,
        /// Re-provision a data dir that already holds a party (new vote key).
        #[arg(long)]
        force: bool,
        /// The cluster configuration file. With it, `init` also makes an
        /// attestation key and binds the vote key (PolicyPCR) to the
        /// measurement of this executable and this configuration, and
        /// performs the measured launch of this TPM boot.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The measurement PCR (15; 23 only with --dev).
        #[arg(long, default_value_t = 15)]
        pcr: u8,
        /// Dev mode: allows the resettable PCR 23 (attestation then proves nothing).
        #[arg(long)]
        dev: bool,
        /// The EK certificate's intermediate CA certificates (PEM), recorded
        /// in the enrollment beside the certificate read from the TPM.
        #[arg(long)]
        ek_chain: Option<PathBuf>,
    },
    /// Enrollment by credential activation, verifier side: `challenge`, then
    /// (after the party's `quorate activate`) `complete`.
    Enroll {
        #[command(subcommand)]
        step: EnrollStep,
    },
    /// Answer an enrollment challenge with this party's TPM
    /// (TPM2_ActivateCredential).
    Activate {
        /// The party's data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// The party's TPM (as for `init`).
        #[arg(long)]
        tpm: TpmTarget,
        /// The challenge (from `quorate enroll challenge`).
        #[arg(long)]
        challenge: PathBuf,
        /// Where to write the answer.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the coordinator daemon.
    Run {
        /// The party's configuration (party.toml).
        #[arg(long)]
        config: PathBuf,
        /// Log format: `text` or `json`.
        #[arg(long, default_value = "text")]
        log_format: LogFormat,
    },
    /// Print a reference-value policy (TOML) for `--exe` under `--config`:
    /// the executable's digest and the measured configuration digest.
    Measure {
        /// The coordinator executable to approve.
        #[arg(long)]
        exe: PathBuf,
        /// The party configuration whose [cluster] rules are measured.
        #[arg(long)]
        config: PathBuf,
        /// Also require this machine's measured-boot and IMA PCRs (0-7 and
        /// 10, SHA-256 bank, read from --tpm): without them root on a party's
        /// own server can fake the measured launch.
        #[arg(long)]
        required_pcrs: bool,
        /// The TPM whose PCRs --required-pcrs reads.
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tpm: TpmTarget,
    },
    /// Write attestation evidence for a verifier's nonce (runs the measured
    /// launch first if this TPM boot has none). Not while the daemon runs
    /// with `tpm = "spawn"`: it owns that TPM.
    Attest {
        /// The party configuration (its data dir, TPM and cluster rules).
        #[arg(long)]
        config: PathBuf,
        /// The verifier's nonce, hex (1 to 64 bytes).
        #[arg(long)]
        nonce: String,
        /// Where to write the evidence (postcard).
        #[arg(long)]
        out: PathBuf,
        /// Also write quote.msg, quote.sig, quote.pcrs, ak.pub.pem,
        /// qualifying_data.hex and eventlog.bin here, for
        /// `tpm2_checkquote -u ak.pub.pem -m quote.msg -s quote.sig -f quote.pcrs -g sha256 -q QD`
        /// (QD from qualifying_data.hex) and `tpm2_eventlog eventlog.bin`.
        #[arg(long)]
        tpm2_tools_dir: Option<PathBuf>,
    },
    /// Verify attestation evidence against a party's enrollment, a reference
    /// policy and the nonce it must bind. Exit status 1 when refused.
    Verify {
        /// The evidence file (from `quorate attest`).
        #[arg(long)]
        evidence: PathBuf,
        /// The party's enrollment.json.
        #[arg(long)]
        enrollment: PathBuf,
        /// The reference policy (from `quorate measure`).
        #[arg(long)]
        policy: PathBuf,
        /// The nonce the verifier chose, hex.
        #[arg(long)]
        nonce: String,
    },
    /// Start a local development cluster: N parties, each with its own
    /// swtpm, on loopback; writes DIR/cluster.json; Ctrl-C stops it.
    Dev {
        /// How many parties.
        #[arg(long, default_value_t = 3)]
        parties: u32,
        /// The cluster's directory (reused if it already holds one).
        #[arg(long)]
        dir: PathBuf,
        /// `byzantine`, `unanimous` or `majority`.
        #[arg(long, default_value = "byzantine")]
        fault_model: String,
        /// Restart a party that died after this many seconds (0: never).
        #[arg(long, default_value_t = 3)]
        restart_after_secs: u64,
        /// Serve each party's API over TLS (a self-signed certificate per
        /// party; cluster.json lists https URLs and the fingerprints to pin).
        #[arg(long)]
        api_tls: bool,
    },
    /// The audit log: export a bundle, verify one offline.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Show a party's status: height, peers and their attestation, last decision.
    Status {
        /// The party's data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Packaging only: write a man page per (sub)command and the bash, zsh
    /// and fish completions into OUT_DIR (see `make package`).
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write `man/*.1` and `completions/*`.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum EnrollStep {
    /// Check a party's enrollment.json (AK, EK certificate chain) and seal
    /// a fresh credential to its EK and AK Name.
    Challenge {
        /// The party's enrollment.json.
        #[arg(long)]
        enrollment: PathBuf,
        /// Where to write the challenge for the party.
        #[arg(long)]
        out: PathBuf,
        /// Where to keep the secret state until the answer (0600).
        #[arg(long)]
        state: PathBuf,
        /// A trusted EK root CA certificate (PEM or DER); repeatable.
        #[arg(long)]
        ek_root: Vec<PathBuf>,
        /// A reference policy whose ek_roots and requirements apply too.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Refuse an EK without a certificate chaining to a trusted root.
        #[arg(long)]
        require_ek_cert: bool,
    },
    /// Check the party's answer; prints and records the verified enrollment.
    Complete {
        /// The state file `challenge` wrote.
        #[arg(long)]
        state: PathBuf,
        /// The party's answer (from `quorate activate`).
        #[arg(long)]
        answer: PathBuf,
        /// Where to write the record of the verified enrollment (JSON).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write the party's log as a self-contained bundle: cluster, every
    /// enrollment, certified checkpoints, blocks with certificates, entries.
    /// Works while the daemon runs (the store is opened read-only).
    Export {
        /// The party's data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
        /// Read the cluster from this party configuration instead of
        /// DATA_DIR/audit-params.bin (written by the daemon at start).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Verify bundles offline (no TPM, no network) against a reference
    /// policy, and compare their certified checkpoints (a fork names its
    /// signers); prints a report, exit status 1 on any problem.
    Verify {
        /// A bundle (from `quorate audit export`); repeat for bundles of
        /// several parties.
        #[arg(long, required = true)]
        bundle: Vec<PathBuf>,
        /// Remember the last verified checkpoint of each cluster in this
        /// file and require the next bundles to be consistent with it.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The reference-value policy (from `quorate measure`).
        #[arg(long)]
        policy: PathBuf,
        /// Accept a development policy (dev = true); refused without it.
        #[arg(long)]
        allow_dev: bool,
        /// An outside witness's verifier key (C2SP vkey,
        /// `name+keyid+base64`); repeat for several.
        #[arg(long)]
        witness: Vec<String>,
        /// How many of the --witness keys must have cosigned the latest
        /// checkpoint.
        #[arg(long, default_value_t = 0)]
        witness_quorum: usize,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A marker the system tests change by one byte to make a "modified
/// executable": same behaviour, different measurement.
#[used]
static MEASUREMENT_MARKER: [u8; 32] = *b"quorate-measurement-marker:00000";

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; no backtrace for operators.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    // libtss2 prints every TPM error to stderr, expected ones too (e.g.
    // flushing handles a TPM restart already dropped). Quiet it unless the
    // operator asked for its logs. Set before any thread starts.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    let cli = Cli::parse();
    let (default_level, json) = match &cli.command {
        Command::Run { log_format, .. } => ("info", matches!(log_format, LogFormat::Json)),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        {
            use std::io::IsTerminal;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init();
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            party_id,
            tpm,
            force,
            config,
            pcr,
            dev,
            ek_chain,
        } => {
            let ek_chain = match &ek_chain {
                Some(p) => quorate_host::enroll_cli::read_roots(p)?,
                None => Vec::new(),
            };
            let opts = InitOptions {
                data_dir,
                party_id: PartyId(party_id),
                tpm,
                force,
            };
            let measured = match config {
                None => None,
                Some(config) => {
                    let pcr = PcrIndex::new(pcr)
                        .with_context(|| format!("--pcr {pcr}: PCRs are 0..=23"))?;
                    let exe = Path::new("/proc/self/exe");
                    let executable = file_digest(exe).with_context(|| {
                        format!("hashing the running executable {}", exe.display())
                    })?;
                    // The measured form of the configuration: the cluster's
                    // rules (see config.rs), known before any enrollment.
                    let (config, config_dev) =
                        quorate_host::config::Config::measured_digest_of_file(&config)?;
                    // A dev-mode config measures into PCR 23 unless told otherwise.
                    let dev = dev || config_dev;
                    let pcr = if config_dev && pcr == PcrIndex::DEFAULT_MEASUREMENT {
                        PcrIndex::DEV_MEASUREMENT
                    } else {
                        pcr
                    };
                    Some(MeasuredInit {
                        measurement: Measurement {
                            pcr,
                            executable,
                            config,
                        },
                        dev,
                    })
                }
            };
            let report = init_with_ek_chain(&opts, measured, &ek_chain).await?;
            let e = &report.enrollment;
            println!(
                "provisioned party {} in {}",
                e.party_id,
                opts.data_dir.display()
            );
            println!("  vote key Name  {}", e.vote_key.name);
            println!("  vote key point {}", e.vote_key.point);
            println!("  enrollment     {}", report.enrollment_path.display());
            println!("  key blobs      {} (0600)", report.keys_dir.display());
            if let Some(ak) = &e.ak {
                println!("  AK Name        {}", ak.name);
            }
            if let Some(ek) = &e.ek {
                let cert = if ek.certificate.is_some() {
                    format!(
                        "with its certificate and {} intermediate(s)",
                        ek.chain.len()
                    )
                } else {
                    "no EK certificate in this TPM".to_string()
                };
                println!("  EK             {} ({cert})", ek.template);
            }
            if let Some(d) = &report.swtpm_dir {
                println!("  swtpm state    {}", d.display());
            }
            Ok(())
        }
        Command::Enroll { step } => match step {
            EnrollStep::Challenge {
                enrollment,
                out,
                state,
                ek_root,
                policy,
                require_ek_cert,
            } => {
                let opts = quorate_host::enroll_cli::ChallengeOptions {
                    enrollment,
                    out,
                    state,
                    ek_roots: ek_root,
                    policy,
                    require_ek_certificate: require_ek_cert,
                };
                let s = quorate_host::enroll_cli::make_challenge(&opts)?;
                println!(
                    "challenge for {} written to {} (send it to the party; keep {} private)",
                    s.party_id,
                    opts.out.display(),
                    opts.state.display()
                );
                match &s.pending.ek_chain {
                    Some(c) => println!(
                        "  EK certificate verified: issuer \"{}\", trusted root \"{}\"",
                        c.issuer, c.root
                    ),
                    None => println!(
                        "  EK certificate NOT verified (none in the enrollment, or no --ek-root given)"
                    ),
                }
                Ok(())
            }
            EnrollStep::Complete { state, answer, out } => {
                let r = quorate_host::enroll_cli::complete(&state, &answer, out.as_deref())?;
                print!("{}", r.render());
                if let Some(out) = &out {
                    println!("  record      {}", out.display());
                }
                Ok(())
            }
        },
        Command::Activate {
            data_dir,
            tpm,
            challenge,
            out,
        } => {
            let a = quorate_host::enroll_cli::activate(&data_dir, &tpm, &challenge, &out).await?;
            println!(
                "challenge {} answered by {}'s TPM; answer written to {}",
                a.challenge_id,
                a.party_id,
                out.display()
            );
            Ok(())
        }
        Command::Run { config, .. } => {
            let cfg = quorate_host::config::Config::load(&config)?;
            quorate_host::daemon::run(cfg, shutdown_signal(), None).await
        }
        Command::Dev {
            parties,
            dir,
            fault_model,
            restart_after_secs,
            api_tls,
        } => {
            let opts = quorate_host::dev::DevOptions {
                parties,
                dir,
                fault_model,
                restart_after: (restart_after_secs > 0)
                    .then(|| std::time::Duration::from_secs(restart_after_secs)),
                bin: std::env::current_exe().context("locating the quorate binary")?,
                api_tls,
            };
            quorate_host::dev::run(opts, shutdown_signal()).await
        }
        Command::Attest {
            config,
            nonce,
            out,
            tpm2_tools_dir,
        } => {
            quorate_host::attest_cli::attest(&config, &nonce, &out, tpm2_tools_dir.as_deref())
                .await?;
            println!("evidence written to {}", out.display());
            Ok(())
        }
        Command::Verify {
            evidence,
            enrollment,
            policy,
            nonce,
        } => {
            let report = quorate_host::attest_cli::verify(&evidence, &enrollment, &policy, &nonce)?;
            print!("{report}");
            Ok(())
        }
        Command::Measure {
            exe,
            config,
            required_pcrs,
            tpm,
        } => {
            let executable = file_digest(&exe)
                .with_context(|| format!("--exe {}: cannot read it", exe.display()))?;
            let (config_digest, dev) =
                quorate_host::config::Config::measured_digest_of_file(&config)?;
            let mut policy =
                quorate_attestation::policy::Policy::new(vec![executable], config_digest);
            if dev {
                policy.dev = true;
                policy.measurement_pcr = PcrIndex::DEV_MEASUREMENT;
            }
            if required_pcrs {
                let pcrs = quorate_host::measure::platform_pcrs(&tpm)
                    .await
                    .context("--required-pcrs")?;
                quorate_host::measure::require(&mut policy, pcrs);
            }
            print!("{}", policy.to_toml()?);
            Ok(())
        }
        Command::Audit { command } => audit(command),
        Command::GenerateDocs { out_dir } => generate_docs(&out_dir),
        Command::Status { data_dir, json } => {
            use quorate_host::daemon::status::StatusView;
            let s = StatusView::read(&data_dir).with_context(|| {
                format!(
                    "no status in {} (has `quorate run` been started with this data dir?)",
                    data_dir.display()
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.render());
                if !s.daemon_alive() {
                    println!(
                        "daemon     NOT RUNNING (pid {} has exited; this is its last status)",
                        s.pid
                    );
                }
            }
            Ok(())
        }
    }
}

/// `quorate audit ...`.
fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Export {
            data_dir,
            out,
            config,
        } => {
            let s = quorate_host::audit::export::export(&data_dir, config.as_deref(), &out)?;
            println!(
                "wrote {}: {} parties, {} checkpoints, {} blocks, {} entries",
                out.display(),
                s.enrollments,
                s.checkpoints,
                s.blocks,
                s.entries
            );
            Ok(())
        }
        AuditCommand::Verify {
            bundle,
            state,
            policy,
            allow_dev,
            witness,
            witness_quorum,
        } => {
            let text =
                std::fs::read(&policy).with_context(|| format!("--policy {}", policy.display()))?;
            let parsed = quorate_attestation::policy::Policy::from_toml(
                std::str::from_utf8(&text).context("--policy is not UTF-8")?,
            )
            .with_context(|| format!("--policy {}", policy.display()))?;
            let witnesses = witness
                .iter()
                .map(|w| quorate_host::audit::witness::WitnessKey::parse(w))
                .collect::<Result<Vec<_>, _>>()
                .context("--witness")?;
            let opts = quorate_host::audit::check::VerifyOptions {
                allow_dev,
                witnesses,
                witness_quorum,
            };
            let v = quorate_host::audit::views::verify_many(
                &bundle,
                &parsed,
                &text,
                &opts,
                state.as_deref(),
            );
            print!("{v}");
            if v.is_ok() {
                Ok(())
            } else {
                std::process::exit(1);
            }
        }
    }
}

/// `quorate generate-docs`: the man pages and completions come from the
/// very command definition this binary parses, so they cannot drift from
/// it (a build script would need that definition outside main.rs).
fn generate_docs(out_dir: &Path) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    let man = out_dir.join("man");
    let completions = out_dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "quorate", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    println!(
        "man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
