//! `quorate attest` and `quorate verify`: attestation evidence by hand, for
//! operators and auditors, and its export in the file forms tpm2-tools read.

use anyhow::{anyhow, bail, Context as _};
use quorate_attestation::evidence::{Evidence, Freshness};
use quorate_attestation::policy::Policy;
use quorate_attestation::tpm::TpmtPublic;
use quorate_firmware::types::PartyId;
use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::daemon::admission::Admission;
use crate::init::Enrollment;
use crate::launch::{file_digest, measured_launch, Measurement};
use crate::net::tls::TlsIdentity;
use crate::tpm::{resolve_target, TpmHandle};

/// DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Parses a hex nonce (1 to 64 bytes).
pub fn parse_nonce(hex_nonce: &str) -> anyhow::Result<Vec<u8>> {
    let n = hex::decode(hex_nonce.trim()).map_err(|e| anyhow!("--nonce: not hex: {e}"))?;
    if n.is_empty() || n.len() > 64 {
        bail!("--nonce: {} bytes; give 1 to 64 bytes of hex", n.len());
    }
    Ok(n)
}

/// `quorate attest`: measured launch (if this TPM boot has none yet), then
/// evidence for `nonce`, written to `out`; with `tools_dir`, also
/// `quote.msg`, `quote.sig`, `ak.pub.pem` and `eventlog.bin` for
/// `tpm2_checkquote` and `tpm2_eventlog`.
pub async fn attest(
    config: &Path,
    nonce: &str,
    out: &Path,
    tools_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let nonce = parse_nonce(nonce)?;
    let cfg = Config::load(config)?;
    let dir = &cfg.file.party.data_dir;
    let (swtpm, tcti) = resolve_target(&cfg.tpm, dir)?;
    let tpm = TpmHandle::open_party(dir, &tcti).await?;
    let result = async {
        let dev = cfg.file.party.dev;
        let pcr = if dev {
            quorate_attestation::pcr::PcrIndex::DEV_MEASUREMENT
        } else {
            quorate_attestation::pcr::PcrIndex::DEFAULT_MEASUREMENT
        };
        let m = Measurement {
            pcr,
            executable: file_digest(Path::new("/proc/self/exe"))
                .context("hashing this executable")?,
            config: cfg.file.cluster.measured_digest(),
        };
        measured_launch(&tpm, dir, &m, dev)
            .await
            .context("measured launch refused")?;
        let tls = TlsIdentity::load(dir)?.key_hash()?;
        let evidence = crate::evidence::produce_evidence(
            &tpm,
            dir,
            pcr,
            &[],
            &Freshness::Nonce(nonce.clone()),
            &tls,
        )
        .await?;
        crate::fsutil::write_atomic(out, &evidence.to_bytes())
            .with_context(|| format!("--out {}", out.display()))?;
        if let Some(td) = tools_dir {
            export_tpm2_tools(&evidence, td)?;
        }
        anyhow::Ok(())
    }
    .await;
    tpm.close().await?;
    drop(swtpm);
    result
}

fn export_tpm2_tools(e: &Evidence, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--tpm2-tools-dir {}", dir.display()))?;
    let w = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .with_context(|| format!("writing {}", dir.join(name).display()))
    };
    w("quote.msg", &e.quote.attest)?;
    w("quote.sig", &e.quote.signature)?;
    w("eventlog.bin", &e.event_log)?;
    let ak = TpmtPublic::parse(&e.ak_public).map_err(|err| anyhow!("AK public area: {err}"))?;
    let point = ak
        .ecc_p256_point()
        .map_err(|err| anyhow!("AK public area: {err}"))?;
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(&point.0);
    let b64 = base64_encode(&spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    w("ak.pub.pem", pem.as_bytes())
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `quorate verify`: checks evidence against an enrollment, a policy and the
/// nonce it must bind. Returns a readable report, or the reason it failed.
pub fn verify(
    evidence: &Path,
    enrollment: &Path,
    policy: &Path,
    nonce: &str,
) -> anyhow::Result<String> {
    let nonce = parse_nonce(nonce)?;
    let bytes =
        std::fs::read(evidence).with_context(|| format!("--evidence {}", evidence.display()))?;
    let e = Enrollment::load(enrollment)?;
    let text = std::fs::read_to_string(policy)
        .with_context(|| format!("--policy {}", policy.display()))?;
    let policy =
        Policy::from_toml(&text).with_context(|| format!("--policy {}", policy.display()))?;
    let party = e.party_id;
    let mut enrollments = BTreeMap::new();
    enrollments.insert(party, e);
    let mut admission = Admission::new(Some(policy), PartyId(0), &enrollments);
    admission.connected(party, nonce);
    let r = admission
        .check_evidence(party, &bytes)
        .map_err(|reason| anyhow!("REFUSED: {reason}"))?;
    Ok(format!(
        "OK: {party}'s evidence verifies\n  measurement PCR {} = {}\n  executable       {}\n  configuration    {}\n  event log        {}\n  AK Name          {}{}\n  vote key Name    {}\n  TPM clock        reset {} restart {} clock {} ms\n",
        r.measurement_pcr.get(),
        r.measurement,
        r.executable,
        r.config,
        r.event_log_digest,
        r.ak_name,
        if r.ak_pinned { " (pinned by the enrollment)" } else { " (not pinned: trust on first use)" },
        r.vote_key_name,
        r.clock_info.reset_count,
        r.clock_info.restart_count,
        r.clock_info.clock,
    ))
}
