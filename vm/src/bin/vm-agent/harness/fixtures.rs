//! The fixture modules (`/fixtures/*.ko`), the blessed directory they are published in,
//! module images (reading, placing, renaming, hashing), and loading and unloading them by
//! hand (without staprun).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::processes::{Out, run};
use super::sys::{self, Creds};
use super::users::{ROOT, User, run_as};

pub const FIXTURES: &str = "/fixtures";

/// Fixture modules shipped in /fixtures; none may stay loaded after a scenario.
pub const FIXTURE_MODULES: &[&str] = &["pmod", "pmod5", "fixture_a", "fixture_b", "plainmod"];

/// The first and the last line a complete run of `pmod` (or `pmod5`) prints.
pub const HELLO: &str = "pmod: hello from begin";
pub const END: &str = "pmod: end";

/// /lib/modules/$(uname -r)/systemtap.
pub fn blessed_dir() -> PathBuf {
    PathBuf::from(format!("/lib/modules/{}/systemtap", sys::kernel_release()))
}

/// /lib/modules/$(uname -r)/systemtap, 755 root:root, empty.
pub fn prepare_blessed_dir() -> Result<(), String> {
    let d = blessed_dir();
    fs::create_dir_all(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    for p in [d.parent().unwrap_or(&d), &d] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", p.display()))?;
        chown(p, Some(0), Some(0)).map_err(|e| format!("chown {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Copies fixture `name`.ko to `dir/file_name` with mode and owner.
pub fn install_fixture(name: &str, dest: &Path, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    fs::copy(Path::new(FIXTURES).join(format!("{name}.ko")), dest)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
    chown(dest, Some(uid), Some(gid))
}

/// The image of fixture `name` (empty if it cannot be read).
pub fn fixture(name: &str) -> Vec<u8> {
    fs::read(Path::new(FIXTURES).join(format!("{name}.ko"))).unwrap_or_default()
}

/// Writes `bytes` to `path` with `mode`, owned by `owner`.
pub fn put(path: impl AsRef<Path>, bytes: &[u8], mode: u32, owner: &User) -> io::Result<()> {
    let path = path.as_ref();
    fs::write(path, bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown(path, Some(owner.uid), Some(owner.gid))
}

pub fn mkdir(path: impl AsRef<Path>, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    let path = path.as_ref();
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown(path, Some(uid), Some(gid))
}

/// Root-owned 0644 copy of fixture `name` in the blessed directory.
pub fn publish(name: &str) -> PathBuf {
    let p = blessed_dir().join(format!("{name}.ko"));
    let _ = put(&p, &fixture(name), 0o644, &ROOT);
    p
}

/// (mode & 0o7777, uid, gid) of a path, without following a final symlink.
pub fn stat(path: impl AsRef<Path>) -> Option<(u32, u32, u32)> {
    fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
}

/// SHA-256 of `bytes`, lower-case hex (as staprun's audit lines give it).
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of the file at `path`; empty if it cannot be read.
pub fn sha256_file(path: &Path) -> String {
    fs::read(path).map(|b| sha256(&b)).unwrap_or_default()
}

/// A copy of a module image whose name (the `name` field of `struct module` in
/// `.gnu.linkonce.this_module`, offset 24 on x86_64, 56 bytes) is `new`.
pub fn renamed(image: &[u8], new: &str) -> Result<Vec<u8>, String> {
    const FIELD: usize = 24;
    const LEN: usize = 56;
    let num = |o: usize, n: usize| -> Result<usize, String> {
        let b = image.get(o..o + n).ok_or("truncated ELF")?;
        usize::try_from(b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
            .map_err(|e| e.to_string())
    };
    if image.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    if new.len() >= LEN {
        return Err(format!("module name {new:?} too long"));
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (num(0x28, 8)?, num(0x3a, 2)?, num(0x3c, 2)?, num(0x3e, 2)?);
    let sec = |i: usize| -> Result<(usize, usize, usize), String> {
        let h = shoff + i * shentsize;
        Ok((num(h, 4)?, num(h + 0x18, 8)?, num(h + 0x20, 8)?))
    };
    let (_, stroff, _) = sec(shstrndx)?;
    for i in 0..shnum {
        let (name, off, size) = sec(i)?;
        let n = image
            .get(stroff + name..)
            .ok_or("section name out of the file")?;
        let end = n
            .iter()
            .position(|b| *b == 0)
            .ok_or("unterminated section name")?;
        if &n[..end] != b".gnu.linkonce.this_module" || size < FIELD + LEN {
            continue;
        }
        let mut out = image.to_vec();
        let field = out
            .get_mut(off + FIELD..off + FIELD + LEN)
            .ok_or("section out of the file")?;
        field.fill(0);
        field[..new.len()].copy_from_slice(new.as_bytes());
        return Ok(out);
    }
    Err("no .gnu.linkonce.this_module section".into())
}

/// Loads the module at `path` with `creds` (`/init --insmod`), as a setuid loader would.
pub fn insmod_as(creds: Creds, path: &Path, params: &[&str]) -> Out {
    let mut cmd = std::process::Command::new("/init");
    cmd.arg("--insmod").arg(path).args(params);
    sys::set_creds(&mut cmd, creds);
    run(cmd, Duration::from_secs(30))
}

pub fn rmmod(name: &str) -> Out {
    run_as(&ROOT, &["/sbin/rmmod", name], &[])
}

/// Names of the loaded modules, from /proc/modules.
pub fn loaded_modules() -> Vec<String> {
    fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

pub fn is_loaded(name: &str) -> bool {
    loaded_modules().iter().any(|m| m == name)
}

/// The fixture modules that are loaded.
pub fn fixtures_loaded() -> Vec<String> {
    loaded_modules()
        .into_iter()
        .filter(|m| FIXTURE_MODULES.contains(&m.as_str()))
        .collect()
}

/// The `seq=` values of the fixture's record lines ("cpu=C n=N seq=S ..."),
/// in output order.
pub fn record_seqs<T: std::str::FromStr>(text: &str) -> Vec<T> {
    text.lines()
        .filter(|l| l.starts_with("cpu="))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("seq="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}
