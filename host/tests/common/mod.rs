//! Test fixture: a party with its own swtpm on free ports in a temp dir.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code
)]

use quorate_host::tpm::owner::CreatedKey;
use quorate_host::tpm::{KeySpec, Swtpm, TpmHandle};
use tempfile::TempDir;

/// A swtpm, a TPM owner with a freshly created and loaded vote key. Field
/// order is drop order: the owner closes before swtpm stops, and the temp
/// dir goes last.
pub struct Party {
    pub tpm: TpmHandle,
    pub swtpm: Swtpm,
    pub key: CreatedKey,
    pub dir: TempDir,
}

impl Party {
    pub async fn new() -> Party {
        let dir = tempfile::tempdir().unwrap();
        let swtpm = Swtpm::spawn(&dir.path().join("swtpm")).unwrap();
        let tpm = TpmHandle::open(&swtpm.tcti()).await.unwrap();
        let key = tpm.create_vote_key(KeySpec::vote_password()).await.unwrap();
        tpm.load_vote_key(key.blob.clone(), Some(key.srk_name.clone()))
            .await
            .unwrap();
        Party {
            tpm,
            swtpm,
            key,
            dir,
        }
    }
}
