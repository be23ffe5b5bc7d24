//! Makes a TPM2_MakeCredential blob in software, in the file format
//! `tpm2_activatecredential -i` reads. Used by tests/vectors/generate.sh to
//! check interop against a real (software) TPM.
//!
//! Usage: make_credential EK_TPM2B_PUBLIC AK_NAME CREDENTIAL_HEX EPHEMERAL_HEX OUT
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use quorate_attestation::credential::make_credential;
use quorate_attestation::{TpmName, TpmtPublic};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, ek, name, credential, ephemeral, out] = args.as_slice() else {
        return Err(
            "usage: make_credential EK_TPM2B_PUBLIC AK_NAME CREDENTIAL_HEX EPHEMERAL_HEX OUT"
                .into(),
        );
    };
    let ek = TpmtPublic::parse_tpm2b(&std::fs::read(ek)?)?;
    let name = TpmName(std::fs::read(name)?);
    let made = make_credential(
        &ek,
        &name,
        &hex::decode(credential)?,
        &hex::decode(ephemeral)?,
    )?;
    std::fs::write(out, made.to_tpm2_tools_file())?;
    Ok(())
}
