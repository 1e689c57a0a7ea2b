//! File system operations whose errors name the operation and the path ([`Error::Io`]), and
//! writes that are never seen half done (a temporary name renamed into place).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(|e| Error::io("read", p, e))
}

pub fn read_to_string(p: &Path) -> Result<String> {
    fs::read_to_string(p).map_err(|e| Error::io("read", p, e))
}

pub fn write(p: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    fs::write(p, data).map_err(|e| Error::io("write", p, e))
}

/// `mkdir -p`.
pub fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| Error::io("mkdir", p, e))
}

pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("rename to", to, e))
}

pub fn copy(from: &Path, to: &Path) -> Result<u64> {
    fs::copy(from, to).map_err(|e| Error::io("copy", from, e))
}

pub fn create(p: &Path) -> Result<fs::File> {
    fs::File::create(p).map_err(|e| Error::io("create", p, e))
}

/// The paths in a directory (unsorted).
pub fn read_dir(p: &Path) -> Result<Vec<PathBuf>> {
    fs::read_dir(p)
        .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| Error::io("read", p, e))
}

/// `DIR/.NAME.tmp-PID` for `DIR/NAME`.
pub fn tmp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(crate::vm::kernel::aptstate::tmp_name(
        &name,
        std::process::id(),
    ))
}

/// Writes `path` through a temporary file renamed into place: it is never seen half written.
pub fn write_atomic(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    let tmp = tmp_beside(path);
    write(&tmp, data)?;
    rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Copies `from` to `to` through a temporary file renamed into place.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = tmp_beside(to);
    copy(from, &tmp)?;
    rename(&tmp, to).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}
