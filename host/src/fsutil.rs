//! Small filesystem helpers: atomic writes and private (0600) files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync dir),
/// with the given Unix mode on the new file.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a private file (mode 0600) atomically.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, data, 0o600)
}

/// Writes a public file (mode 0644) atomically.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, data, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_file_names_in_the_current_dir_work() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_private(&p, b"x").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        // A bare file name has an empty parent: the current directory.
        let here = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir.path()).unwrap();
        let r = write_atomic(Path::new("b.bin"), b"y");
        std::env::set_current_dir(here).unwrap();
        r.unwrap();
        assert_eq!(std::fs::read(dir.path().join("b.bin")).unwrap(), b"y");
    }
}
