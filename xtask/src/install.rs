//! `install`: put staprun and stapio where the build-time defaults point.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::prepare::{STAPDEV, STAPSYS, STAPUSR};

const STAPRUN: &str = "usr/bin/staprun";
const STAPIO: &str = "usr/libexec/staprun/stapio";

/// gid of `name` in /etc/group under `root`.
fn group_gid(root: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(root.join("etc/group"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1).and_then(|g| g.parse().ok()))?
        })
}

fn copy(src: &Path, dst: &Path, mode: u32, gid: u32, as_root: bool) -> Result<()> {
    let parent = dst.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    // Write a new file and rename it into place, so a running copy is never modified.
    let tmp = dst.with_extension("xtask-new");
    fs::copy(src, &tmp).map_err(|e| format!("copy {} to {}: {e}", src.display(), tmp.display()))?;
    if as_root {
        chown(&tmp, Some(0), Some(gid)).map_err(|e| format!("chown {}: {e}", tmp.display()))?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    fs::rename(&tmp, dst).map_err(|e| format!("rename to {}: {e}", dst.display()))?;
    eprintln!("xtask: installed {} mode {mode:o}", dst.display());
    Ok(())
}

pub fn install(destdir: Option<&Path>) -> Result<()> {
    let root = destdir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let as_root = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if destdir.is_none() && !as_root {
        return Err("installing into / needs root (or pass --destdir DIR)".into());
    }
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "staprun", "-p", "stapio"])
        .current_dir(crate::prepare::workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !st.success() {
        return Err(format!("building staprun/stapio failed ({st})"));
    }
    if destdir.is_none() {
        for (name, gid) in [
            ("stapusr", STAPUSR),
            ("stapsys", STAPSYS),
            ("stapdev", STAPDEV),
        ] {
            if group_gid(&root, name).is_none() {
                let gid_s = gid.to_string();
                let ok = Command::new("groupadd")
                    .args(["--system", "--gid", &gid_s, name])
                    .status()
                    .is_ok_and(|s| s.success())
                    || Command::new("groupadd")
                        .args(["--system", name])
                        .status()
                        .is_ok_and(|s| s.success());
                if !ok {
                    return Err(format!("cannot create group {name} (groupadd failed)"));
                }
            }
        }
    }
    let stapusr = group_gid(&root, "stapusr").unwrap_or(STAPUSR);
    let bin = vm::target_dir().join("release");
    copy(&bin.join("stapio"), &root.join(STAPIO), 0o755, 0, as_root)?;
    // Mode last: chown clears set-id bits, so the 04110 is applied after it.
    copy(
        &bin.join("staprun"),
        &root.join(STAPRUN),
        0o4110,
        stapusr,
        as_root,
    )?;
    Ok(())
}
