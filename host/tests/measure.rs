//! `quorate measure --required-pcrs` on a real swtpm: the policy it writes
//! requires PCRs 0-7 and 10 with the values this TPM holds, so evidence
//! from a machine whose measured boot differs is refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_attestation::pcr::{extend_sha256, PcrIndex};
use quorate_attestation::policy::Policy;
use quorate_firmware::types::Sha256Digest;
use quorate_host::tpm::{Swtpm, TpmHandle};

mod common;
use common::quorate;

#[tokio::test(flavor = "multi_thread")]
async fn measure_required_pcrs_pins_the_machines_boot_pcrs() {
    let tmp = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::spawn(&tmp.path().join("tpm")).unwrap();
    let tcti = swtpm.tcti().to_string();
    // Something measured into PCR 10 (as IMA would) and PCR 4 (a boot loader).
    let tpm = TpmHandle::open(&swtpm.tcti()).await.unwrap();
    let ima = Sha256Digest::of(b"ima boot_aggregate");
    tpm.pcr_extend(10, ima.0).await.unwrap();
    tpm.pcr_extend(4, Sha256Digest::of(b"grub").0)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in [0u8, 1, 2, 3, 4, 5, 6, 7, 10] {
        expected.push((i, Sha256Digest(tpm.pcr_read(i).await.unwrap())));
    }
    tpm.close().await.unwrap();
    assert_eq!(expected[8].1, extend_sha256(&Sha256Digest::default(), &ima));

    let cfg = tmp.path().join("party.toml");
    std::fs::write(
        &cfg,
        "[party]\nid = 1\ndata_dir = \"p1\"\n\n[cluster]\nname = \"m\"\nreference_policy = \"policy.toml\"\n\n[[cluster.parties]]\nid = 1\naddress = \"127.0.0.1:1\"\nenrollment = \"e.json\"\n",
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_quorate");
    let out = quorate(&[
        "measure",
        "--exe",
        exe,
        "--config",
        cfg.to_str().unwrap(),
        "--required-pcrs",
        "--tpm",
        &tcti,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = Policy::from_toml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let got: Vec<(u8, Sha256Digest)> = policy
        .required_pcrs
        .iter()
        .map(|r| (r.index.get(), r.value.0))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(policy.measurement_pcr, PcrIndex::DEFAULT_MEASUREMENT);
    // Without the flag, no platform PCRs are required.
    let out = quorate(&["measure", "--exe", exe, "--config", cfg.to_str().unwrap()]);
    let plain = Policy::from_toml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert!(plain.required_pcrs.is_empty());
    // spawn has no measured boot to read.
    let out = quorate(&[
        "measure",
        "--exe",
        exe,
        "--config",
        cfg.to_str().unwrap(),
        "--required-pcrs",
        "--tpm",
        "spawn",
    ]);
    assert!(!out.status.success());
    drop(swtpm);
}
