//! Private, durable files beside the ledger: snapshots, checkpoints and
//! cursors that hold state derived from the log (and sometimes secrets), so
//! they are created with mode 0600 in 0700 directories and replaced
//! atomically (a fsynced temporary file renamed into place).

use std::io::Write;
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Writes `parts` to `dir/name` through a temporary file `dir/name.tmp`
/// (mode 0600), fsynced and renamed into place. The rename is durable once
/// the caller fsyncs `dir` ([`sync_dir`]): one fsync can follow many files.
pub fn write_private(dir: &Path, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    for p in parts {
        f.write_all(p)?;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

/// Fsyncs a directory, so renames and removals in it are durable (a no-op
/// where directories cannot be opened as files).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces the file at `path` with `parts`, atomically and durably: its
/// directory is created (0700) if missing, the file written with
/// [`write_private`] and the directory fsynced.
pub fn write_private_file(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    create_private_dir(dir)?;
    write_private(dir, name, parts)?;
    sync_dir(dir)
}
