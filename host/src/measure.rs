//! `quorate measure`: the reference-value policy for an executable and a
//! cluster's rules, optionally anchored in the running machine's measured
//! boot (issue 17 point 5).
//!
//! A self-measuring coordinator proves only which executable it *started*
//! as: root on the party's own server can extend the measurement PCR with
//! approved digests from other code. What stops that is measured boot and
//! IMA — firmware, boot loader and kernel in PCRs 0–7, the IMA log in
//! PCR 10 — required by the policy. `--required-pcrs` reads those PCRs
//! (SHA-256 bank) from this machine's TPM, so that a policy written on a
//! reference machine requires the same platform state of every party.

use quorate_attestation::pcr::PcrIndex;
use quorate_attestation::policy::{HexDigest, Policy, RequiredPcr};
use quorate_firmware::types::Sha256Digest;

use crate::tpm::{TpmHandle, TpmTarget};

/// The platform PCRs `--required-pcrs` pins: measured boot (0–7) and IMA (10).
pub const PLATFORM_PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 10];

/// Reads [`PLATFORM_PCRS`] from the TPM at `tpm` as required PCRs.
pub async fn platform_pcrs(tpm: &TpmTarget) -> anyhow::Result<Vec<RequiredPcr>> {
    let tcti = match tpm {
        TpmTarget::Tcti(t) => t.clone(),
        TpmTarget::Spawn => anyhow::bail!(
            "--tpm spawn has no measured boot: read the PCRs of the machine's TPM (device:/dev/tpmrm0)"
        ),
    };
    let handle = TpmHandle::open(&tcti).await?;
    let mut out = Vec::with_capacity(PLATFORM_PCRS.len());
    for i in PLATFORM_PCRS {
        let value = handle.pcr_read(i).await;
        let index = PcrIndex::new(i).ok_or_else(|| anyhow::anyhow!("PCR {i}"))?;
        out.push(RequiredPcr {
            index,
            value: HexDigest(Sha256Digest(value?)),
        });
    }
    handle.close().await?;
    Ok(out)
}

/// Adds `required` to `policy`, replacing any it already pins for the same
/// PCRs.
pub fn require(policy: &mut Policy, required: Vec<RequiredPcr>) {
    policy
        .required_pcrs
        .retain(|r| !required.iter().any(|n| n.index == r.index));
    policy.required_pcrs.extend(required);
    policy.required_pcrs.sort_by_key(|r| r.index);
}
