//! The C staprun/stapio of each SystemTap generation (the reference the compat suite compares
//! ours with), their shared libraries, and their place in the compat initramfs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{C_STAPIO, C_STAPRUN};
use crate::apt::Apt;
use crate::cmd::{self, cmd};
use crate::error::{Error, Result, bail};
use crate::files::{self, mkdir, read};
use crate::vm::STAPUSR;
use crate::vm::cpio::Entry;

/// The C staprun/stapio of one generation: host paths of their files, and the
/// shared libraries they need as (path in the guest, host file).
pub(super) struct CTools {
    pub(super) version: String,
    pub(super) staprun: PathBuf,
    pub(super) stapio: PathBuf,
    pub(super) libs: Vec<(String, PathBuf)>,
}

/// The 4.x reference: Debian bookworm's systemtap-runtime, of the host translator's version.
pub(super) fn c_reference(apt: &mut Apt, cache: &Path) -> Result<CTools> {
    let sh = cmd::shell()?;
    let format = "${Version}";
    let version = cmd::output(cmd!(sh, "dpkg-query -W -f {format} systemtap-runtime"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or("systemtap-runtime is not installed on this host (it comes with systemtap)")?;
    let root = cache.join("compat").join(format!("c-{version}"));
    let staprun = root.join("usr/bin/staprun");
    let stapio = root.join(C_STAPIO);
    if !(staprun.is_file() && stapio.is_file()) {
        let debs = cache.join("debs");
        mkdir(&debs)?;
        let file_version = version.replace(':', "%3a");
        let deb = debs.join(format!("systemtap-runtime_{file_version}_amd64.deb"));
        if !deb.is_file() {
            let pkg = format!("systemtap-runtime={version}");
            let in_debs = cmd::shell_in(&debs)?;
            let download = || cmd::output(cmd!(in_debs, "apt-get download -q {pkg}"));
            if download().is_err() {
                apt.update()?;
                download()?;
            }
        }
        if !deb.is_file() {
            bail!("apt-get download left no {}", deb.display());
        }
        let tmp = cache.join("compat").join(format!(".c-{version}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        mkdir(&tmp)?;
        cmd::output(cmd!(sh, "dpkg-deb -x {deb} {tmp}"))?;
        // dpkg-deb -x keeps the set-user-ID bit: the host copy must not be a setuid binary.
        let tmp_staprun = tmp.join("usr/bin/staprun");
        cmd::run(cmd!(sh, "chmod 0755 {tmp_staprun}"))?;
        let _ = fs::remove_dir_all(&root);
        files::rename(&tmp, &root)?;
        for p in [&staprun, &stapio] {
            if !p.is_file() {
                bail!("{} has no {}", deb.display(), p.display());
            }
        }
    }
    let mut libs = Vec::new();
    for bin in [&staprun, &stapio] {
        let text = cmd::output(cmd!(sh, "ldd {bin}"))?;
        for lib in ldd_paths(&text, bin)? {
            let file = PathBuf::from(&lib);
            libs.push((lib, file));
        }
    }
    Ok(CTools {
        version,
        staprun,
        stapio,
        libs,
    })
}

/// Paths `ldd` names (the program interpreter included).
pub(super) fn ldd_paths(text: &str, bin: &Path) -> Result<Vec<String>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            bail!(
                "ldd {}: {line} (install systemtap-runtime's dependencies)",
                bin.display()
            );
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim().split(" (").next().unwrap_or("").trim(),
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            libs.push(path.to_owned());
        }
    }
    Ok(libs)
}

/// The file `path` names inside `root`, following symbolic links as if `root` were `/`.
pub(super) fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let mut p = PathBuf::from(path);
    for _ in 0..40 {
        let rel = p.strip_prefix("/").unwrap_or(&p).to_path_buf();
        let host = root.join(&rel);
        let meta = fs::symlink_metadata(&host).map_err(|e| Error::io("stat", &host, e))?;
        if !meta.file_type().is_symlink() {
            return Ok(host);
        }
        let target = fs::read_link(&host).map_err(|e| Error::io("readlink", &host, e))?;
        p = if target.is_absolute() {
            target
        } else {
            Path::new("/")
                .join(rel.parent().unwrap_or(Path::new("")))
                .join(target)
        };
    }
    bail!("{path}: too many symbolic links in {}", root.display())
}

const MULTIARCH: &str = "lib/x86_64-linux-gnu";

/// The C tools, their libraries and the modules, under `prefix` ("" or "c5/") in the guest.
pub(super) fn c_tools_entries(
    prefix: &str,
    c: &CTools,
    mods: &BTreeMap<String, PathBuf>,
    e: &mut Vec<Entry>,
) -> Result<()> {
    for d in [
        "compat",
        "compat/mods",
        "opt",
        "opt/c",
        "opt/c/usr",
        "opt/c/usr/bin",
        "usr/lib/systemtap",
        MULTIARCH,
        "lib64",
    ] {
        e.push(Entry::dir(&format!("{prefix}{d}"), 0o755));
    }
    e.push(
        Entry::file(&format!("{prefix}{C_STAPRUN}"), 0o4110, read(&c.staprun)?).owner(0, STAPUSR),
    );
    e.push(Entry::file(
        &format!("{prefix}{C_STAPIO}"),
        0o755,
        read(&c.stapio)?,
    ));
    let mut seen = std::collections::BTreeSet::new();
    for (lib, file) in &c.libs {
        if !seen.insert(lib.clone()) {
            continue;
        }
        let lib = Path::new(lib);
        let name = lib
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("bad library path {}", lib.display()))?;
        let dir = lib.parent().and_then(Path::to_str).unwrap_or_default();
        if ![
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
        ]
        .contains(&dir)
        {
            bail!(
                "{}: library outside the multiarch directories; extend xtask/src/vm/compat/ctools.rs",
                lib.display()
            );
        }
        let target = format!("{MULTIARCH}/{name}");
        if dir == "/lib64" {
            e.push(Entry::symlink(
                &format!("{prefix}lib64/{name}"),
                &format!("/{target}"),
            ));
        }
        e.push(Entry::file(
            &format!("{prefix}{target}"),
            0o755,
            read(file)?,
        ));
    }
    for (name, path) in mods {
        e.push(Entry::file(
            &format!("{prefix}compat/mods/{name}.ko"),
            0o644,
            read(path)?,
        ));
    }
    // A library named both as interpreter and as a dependency: keep the first.
    let mut paths = std::collections::BTreeSet::new();
    e.retain(|x| paths.insert(x.path.clone()));
    Ok(())
}

/// [`c_tools_entries`] of the 5.x generation under /c5, with the mount points the guest agent
/// binds the outer directories to.
pub(super) fn c5_entries(
    c: &CTools,
    mods: &BTreeMap<String, PathBuf>,
    e: &mut Vec<Entry>,
) -> Result<()> {
    for d in ["c5", "c5/usr", "c5/usr/lib", "c5/lib", "c5/lib/modules"] {
        e.push(Entry::dir(d, 0o755));
    }
    for d in vm::C5_MOUNTS {
        e.push(Entry::dir(&format!("c5/{d}"), 0o755));
    }
    c_tools_entries("c5/", c, mods, e)
}
