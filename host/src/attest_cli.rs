//! `quorate attest` and `quorate verify`: attestation evidence by hand, for
//! operators and auditors, and its export in the file forms tpm2-tools read.

use anyhow::{anyhow, bail, Context as _};
use quorate_attestation::evidence::{Evidence, Freshness};
use quorate_attestation::pcr::PcrValue;
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
    w("quote.pcrs", &tpm2_tools_pcrs(&e.pcr_values)?)?;
    w("eventlog.bin", &e.event_log)?;
    // tpm2_checkquote -q takes the quote's extraData: Quorate's qualifying
    // data (derived from the nonce), not the nonce itself.
    let quote = quorate_attestation::attest::TpmsAttest::parse(&e.quote.attest)
        .map_err(|err| anyhow!("quote: {err}"))?;
    w(
        "qualifying_data.hex",
        format!("{}\n", hex::encode(&quote.extra_data)).as_bytes(),
    )?;
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

/// TPM2_ALG_SHA256.
const ALG_SHA256: u16 = 0x000b;
/// TPML_PCR_SELECTION.pcrSelections[TPM2_NUM_PCR_BANKS] in tpm2-tss.
const TSS_PCR_BANKS: usize = 16;
/// TPML_DIGEST.digests[8] in tpm2-tss.
const TSS_DIGESTS: usize = 8;
/// TPM2B_DIGEST.buffer[sizeof(TPMU_HA)] in tpm2-tss.
const TSS_DIGEST_BUFFER: usize = 64;

/// The "pcrs" file `tpm2_quote -o` writes and `tpm2_checkquote -f` reads
/// (tpm2-tools 5, the default `-F serialized` form: in-memory tpm2-tss
/// structures, little-endian): a `TPML_PCR_SELECTION` (u32 count, then 16
/// `TPMS_PCR_SELECTION` slots of hash u16, sizeofSelect u8, pcrSelect[4],
/// one byte of padding), a u32 count of `TPML_DIGEST`s, then that many
/// `TPML_DIGEST`s (u32 count, 8 slots of `TPM2B_DIGEST`: size u16,
/// buffer[64]), holding the values in selection order, 8 per list. The
/// layout was checked byte for byte against `tpm2_quote -o` output.
pub fn tpm2_tools_pcrs(values: &[PcrValue]) -> anyhow::Result<Vec<u8>> {
    let mut sorted: Vec<&PcrValue> = values.iter().collect();
    sorted.sort_by_key(|v| v.index);
    let mut select = [0u8; 4];
    for v in &sorted {
        let i = usize::from(v.index.get());
        let byte = select
            .get_mut(i / 8)
            .ok_or_else(|| anyhow!("PCR {i} out of range"))?;
        *byte |= 1 << (i % 8);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&ALG_SHA256.to_le_bytes());
    out.push(3);
    out.extend_from_slice(&select);
    out.push(0);
    out.resize(4 + TSS_PCR_BANKS * 8, 0);
    let lists: Vec<&[&PcrValue]> = sorted.chunks(TSS_DIGESTS).collect();
    let count = u32::try_from(lists.len()).map_err(|_| anyhow!("too many PCRs"))?;
    out.extend_from_slice(&count.to_le_bytes());
    for list in lists {
        let n = u32::try_from(list.len()).map_err(|_| anyhow!("too many PCRs"))?;
        out.extend_from_slice(&n.to_le_bytes());
        for slot in 0..TSS_DIGESTS {
            let mut d = [0u8; 2 + TSS_DIGEST_BUFFER];
            if let Some(v) = list.get(slot) {
                let (size, buf) = d.split_at_mut(2);
                size.copy_from_slice(&32u16.to_le_bytes());
                let (digest, _) = buf.split_at_mut(32);
                digest.copy_from_slice(v.value.as_bytes());
            }
            out.extend_from_slice(&d);
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_attestation::pcr::PcrIndex;
    use quorate_firmware::types::Sha256Digest;

    #[test]
    fn pcrs_file_has_the_tpm2_tools_layout() {
        let v = |i: u8, b: u8| PcrValue {
            index: PcrIndex::new(i).unwrap(),
            value: Sha256Digest([b; 32]),
        };
        // Two PCRs: one TPML_DIGEST (what `tpm2_quote -l sha256:15,23 -o` wrote, 668 bytes).
        let f = tpm2_tools_pcrs(&[v(23, 2), v(15, 1)]).unwrap();
        assert_eq!(f.len(), 668);
        assert_eq!(&f[..12], &[1, 0, 0, 0, 0x0b, 0, 3, 0, 0x80, 0x80, 0, 0]);
        assert_eq!(&f[132..140], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&f[140..142], &[32, 0]);
        assert_eq!(&f[142..174], &[1; 32]);
        assert_eq!(&f[206..208], &[32, 0]);
        assert_eq!(&f[208..240], &[2; 32]);
        // Ten PCRs: two lists, 8 then 2.
        let ten: Vec<PcrValue> = (0..8).chain([10, 15]).map(|i| v(i, i)).collect();
        let f = tpm2_tools_pcrs(&ten).unwrap();
        assert_eq!(f.len(), 132 + 4 + 2 * (4 + 8 * 66));
        assert_eq!(&f[132..140], &[2, 0, 0, 0, 8, 0, 0, 0]);
        assert_eq!(&f[7..10], &[0xff, 0x84, 0]);
        assert_eq!(&f[668..672], &[2, 0, 0, 0]);
    }
}
