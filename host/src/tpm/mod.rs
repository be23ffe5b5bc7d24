//! The party's TPM: one owner thread holds the `tss_esapi::Context`; the
//! rest of the host talks to it through a cloneable [`TpmHandle`].
//!
//! - [`tcti`]: what `--tpm` names (a swtpm on TCP, a device, or `spawn`).
//! - [`swtpm`]: a private swtpm process (tests, demo, `--tpm spawn`).
//! - [`keys`]: key templates, blobs on disk, create/load under the SRK.
//! - [`owner`]: the owner thread and [`TpmHandle`] (sign, provision, load).
//!
//! Data flow for a signature: an async task calls [`TpmHandle::sign`] (or
//! [`TpmHandle::sign_consensus`] for votes, proposals and batches); the
//! request crosses one of two lanes to the owner thread (consensus
//! signatures ahead of attestation evidence and all else), which hashes nothing
//! itself (the digest is computed on the caller's side), runs TPM2_Sign with
//! the loaded vote key, and replies through a oneshot. If the TPM was
//! restarted or the connection broke, the owner reconnects, re-creates the
//! SRK from its template, reloads the vote key from its blobs and retries once.

pub mod keys;
pub mod owner;
pub mod swtpm;
pub mod tcti;

pub use keys::{EkTemplate, KeyAuth, KeyBlob, KeyRole, KeySpec, KeyStore};
pub use owner::{Priority, SealedBlob, TpmHandle, TpmSigned, MAX_SEALED_BYTES};
pub use swtpm::{EkCa, Swtpm, SwtpmError};
pub use tcti::{Tcti, TctiParseError, TpmTarget};

use std::path::{Path, PathBuf};

/// Resolves `--tpm` for the party whose data dir is `data_dir`: a TCTI as
/// given, or for `spawn` a private swtpm with its state in
/// `DATA_DIR/swtpm/` (started here; keep the returned [`Swtpm`] alive as long
/// as the TPM is used, and drop it after closing the [`TpmHandle`]).
pub fn resolve_target(
    target: &TpmTarget,
    data_dir: &Path,
) -> Result<(Option<Swtpm>, Tcti), SwtpmError> {
    match target {
        TpmTarget::Tcti(t) => Ok((None, t.clone())),
        TpmTarget::Spawn => {
            let s = Swtpm::spawn(&data_dir.join(SPAWNED_SWTPM_DIR))?;
            let t = s.tcti();
            Ok((Some(s), t))
        }
    }
}

/// Subdirectory of the data dir holding a spawned swtpm's state.
pub const SPAWNED_SWTPM_DIR: &str = "swtpm";

/// A failure of the TPM layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TPM named by the TCTI cannot be reached.
    #[error("cannot reach the TPM at `{tcti}`: {reason}")]
    Connect {
        /// The TCTI, as the operator wrote it.
        tcti: String,
        /// What failed.
        reason: String,
    },
    /// The TPM did not answer in time.
    #[error("the TPM at `{tcti}` did not answer within {secs} s")]
    Timeout {
        /// The TCTI.
        tcti: String,
        /// The deadline, in seconds.
        secs: u64,
    },
    /// A TPM command (or the TSS library) failed.
    #[error("TPM: {op} failed: {source}{}", rc.map(|rc| format!(" (response code {rc:#x})")).unwrap_or_default())]
    Tss {
        /// What we were doing.
        op: &'static str,
        /// The raw TSS2_RC, when there is one.
        rc: Option<u32>,
        /// The tss-esapi error.
        #[source]
        source: tss_esapi::Error,
    },
    /// Reading or writing a file of the key store failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key store file is malformed or inconsistent.
    #[error("key store file {}: {reason}", path.display())]
    Store {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key blobs were made on another TPM (or its owner seed was cleared).
    #[error("the key blobs were made under storage root key {expected}, but this TPM's is {found}: \
             this is not the TPM the party was provisioned on (or its owner hierarchy was cleared); \
             re-provision with `quorate init --force`")]
    WrongTpm {
        /// The SRK Name recorded in the manifest, hex.
        expected: String,
        /// The SRK Name this TPM produced, hex.
        found: String,
    },
    /// A key that must be ECC P-256 is not.
    #[error("the key is not an ECC NIST P-256 key")]
    NotP256,
    /// The TPM returned a signature that is not ECDSA over P-256.
    #[error("the TPM returned a signature that is not ECDSA P-256")]
    BadSignature,
    /// Signing was asked for before a vote key was loaded.
    #[error("no vote key is loaded (provision the party with `quorate init`)")]
    NoVoteKey,
    /// No attestation key was set (provision with `quorate init`).
    #[error("no attestation key is set (provision the party with `quorate init`)")]
    NoAk,
    /// A PCR index outside 0..=23.
    #[error("PCR {0} does not exist (0..=23)")]
    BadPcr(u8),
    /// A secret to seal is empty or larger than a sealed data object holds.
    #[error("cannot seal {0} bytes: a TPM sealed data object holds 1..=128 bytes")]
    SealSize(usize),
    /// The owner thread is gone (closed, or it panicked).
    #[error("the TPM owner thread has stopped")]
    OwnerGone,
}

impl TpmError {
    /// An adapter for `map_err` that records what was being done.
    pub fn tss(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
        move |source| TpmError::Tss {
            op,
            rc: raw_rc(&source),
            source,
        }
    }

    /// An adapter for `map_err` on file operations.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TpmError + '_ {
        move |source| TpmError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether a reconnect and reload may cure this: the connection broke,
    /// the TPM restarted (objects gone, or not started), or a handle is
    /// unknown. Policy failures, bad parameters and the like are not.
    pub fn is_recoverable(&self) -> bool {
        match self {
            TpmError::Connect { .. } | TpmError::Timeout { .. } => true,
            TpmError::Tss { rc: Some(rc), .. } => rc_is_recoverable(*rc),
            _ => false,
        }
    }
}

/// TSS2_RC layers (bits 16..24) of the TCTI, SAPI and ESAPI: failures there
/// are communication or ESYS-state failures, not TPM verdicts.
const LAYER_TCTI: u32 = 10;
const LAYER_SYS: u32 = 8;
const LAYER_ESYS: u32 = 7;
const LAYER_TPM: u32 = 0;

fn rc_is_recoverable(rc: u32) -> bool {
    let layer = (rc >> 16) & 0xff;
    if layer == LAYER_TCTI || layer == LAYER_SYS || layer == LAYER_ESYS {
        return true;
    }
    if layer != LAYER_TPM {
        return false;
    }
    let code = rc & 0xffff;
    if code & 0x80 != 0 {
        // Format one: TPM_RC_HANDLE (0x0B) on any handle means "no such object".
        return code & 0x3f == 0x0b;
    }
    matches!(
        code,
        0x100 // TPM_RC_INITIALIZE: TPM restarted without TPM2_Startup
        | 0x902 // TPM_RC_OBJECT_MEMORY
        | 0x906 // TPM_RC_OBJECT_HANDLES
        | 0x908 // TPM_RC_YIELDED
        | 0x90a // TPM_RC_TESTING
        | 0x910
            ..=0x91e // TPM_RC_REFERENCE_H0..S6: handle refers to nothing loaded
        | 0x922 // TPM_RC_RETRY
    )
}

/// The raw TSS2_RC of a tss-esapi error. tss-esapi 7.7 keeps it private but
/// shows it in the Display of the format-zero/one code (`source()`), as
/// `Response code value: 0x…`.
pub fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    let tss_esapi::Error::Tss2Error(code) = e else {
        return None;
    };
    let inner = std::error::Error::source(code)?.to_string();
    let hex = inner.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::constants::response_code::Tss2ResponseCode;

    fn err(rc: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc))
    }

    #[test]
    fn raw_rc_recovers_the_code() {
        for rc in [0xa000a, 0x921, 0x18b, 0x99d, 0x70001] {
            assert_eq!(raw_rc(&err(rc)), Some(rc));
        }
        let wrapper = tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam);
        assert_eq!(raw_rc(&wrapper), None);
    }

    #[test]
    fn classifies_recoverable_codes() {
        let rec = |rc| TpmError::tss("x")(err(rc)).is_recoverable();
        assert!(rec(0xa000a)); // TCTI IO error
        assert!(rec(0x8000b)); // SAPI: malformed response from a broken link
        assert!(rec(0x18b)); // TPM_RC_HANDLE, handle 1
        assert!(rec(0x910)); // TPM_RC_REFERENCE_H0
        assert!(rec(0x100)); // TPM_RC_INITIALIZE
        assert!(!rec(0x99d)); // TPM_RC_POLICY_FAIL, session 1
        assert!(!rec(0x921)); // TPM_RC_LOCKOUT
        assert!(!rec(0x1c4)); // TPM_RC_VALUE, parameter 1
    }

    #[test]
    fn error_message_names_the_operation_and_code() {
        let e = TpmError::tss("create the key")(err(0x921));
        let s = e.to_string();
        assert!(s.contains("create the key") && s.contains("0x921"), "{s}");
    }
}
