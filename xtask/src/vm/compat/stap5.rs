//! The SystemTap 5.x generation: translator, modules and C tools from a debootstrapped trixie
//! root (target/vm-cache/trixie-root), /c5 in the guest.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::ctools::{CTools, ldd_paths, resolve_in_root};
use super::stap::{Fnv, Translator, modules, needs_task_work_patch, parse_stap_version};
use crate::apt::Apt;
use crate::cmd::{self, cmd, step};
use crate::error::{Error, Result, bail};
use crate::files::{self, mkdir, read};

/// What `--include` puts in the trixie chroot: the 5.x translator and the
/// compiler the bookworm kernel headers name (`CC = gcc-12`).
const TRIXIE_PACKAGES: &str = "systemtap,gcc-12,make";
const TRIXIE_MIRROR: &str = "http://deb.debian.org/debian";

/// The SystemTap 5.x generation: translator, modules and C tools from trixie.
pub(super) struct Stap5 {
    pub(super) version: String,
    pub(super) mods: BTreeMap<String, PathBuf>,
    pub(super) c: CTools,
}

/// target/vm-cache/trixie-root: `debootstrap --variant=minbase` of trixie.
fn trixie_root(apt: &mut Apt, cache: &Path) -> Result<PathBuf> {
    let root = cache.join("trixie-root");
    let marker = root.join(".compat-ok");
    if fs::read_to_string(&marker).is_ok_and(|m| m.trim() == TRIXIE_PACKAGES) {
        return Ok(root);
    }
    if vm::which("debootstrap").is_none() {
        apt.install(&["debootstrap".to_owned()], "debootstrap missing")?;
    }
    let mirror = std::env::var("COMPAT_TRIXIE_MIRROR").unwrap_or_else(|_| TRIXIE_MIRROR.to_owned());
    let tmp = cache.join("trixie-root.tmp");
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "xtask: debootstrap --variant=minbase --include={TRIXIE_PACKAGES} trixie {} {mirror} (about a minute)",
        tmp.display()
    );
    let sh = cmd::shell()?;
    let include = format!("--include={TRIXIE_PACKAGES}");
    cmd::output(cmd!(
        sh,
        "debootstrap --variant=minbase {include} trixie {tmp} {mirror}"
    ))?;
    files::write(&tmp.join(".compat-ok"), TRIXIE_PACKAGES)?;
    let _ = fs::remove_dir_all(&root);
    files::rename(&tmp, &root)?;
    Ok(root)
}

/// Copies the guest kernel's headers (build, source and kbuild trees, at their
/// own absolute paths) and the /lib/modules/KVER links into the chroot.
fn trixie_headers(root: &Path, kver: &str) -> Result<()> {
    let modules = PathBuf::from(format!("/lib/modules/{kver}"));
    let canon = |p: &Path| fs::canonicalize(p).map_err(|e| Error::io("resolve", p, e));
    let build = canon(&modules.join("build"))?;
    let source = canon(&modules.join("source"))?;
    let kbuild = canon(&build.join("scripts"))?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("kbuild scripts have no parent")?;
    let key = Fnv::new()
        .add(&read(&build.join("Module.symvers"))?)
        .add(build.to_string_lossy().as_bytes())
        .hex();
    let marker = root.join(format!(".headers-{kver}"));
    if fs::read_to_string(&marker).is_ok_and(|m| m == key) {
        return Ok(());
    }
    let sh = cmd::shell()?;
    for dir in [&build, &source, &kbuild] {
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        let dest = root.join(rel);
        let _ = fs::remove_dir_all(&dest);
        let parent = dest.parent().ok_or("no parent")?;
        mkdir(parent)?;
        cmd::run(cmd!(sh, "cp -a {dir} {parent}"))?;
    }
    let links = resolve_dir_in_root(root, &format!("/lib/modules/{kver}"))?;
    mkdir(&links)?;
    for (name, target) in [("build", &build), ("source", &source)] {
        let l = links.join(name);
        let _ = fs::remove_file(&l);
        std::os::unix::fs::symlink(target, &l).map_err(|e| Error::io("symlink", &l, e))?;
    }
    files::write(&marker, key)
}

/// A directory path inside `root` that may not exist yet, with the existing
/// leading part resolved as `resolve_in_root` does (trixie's /lib is a link to usr/lib).
fn resolve_dir_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let mut head = PathBuf::from("/");
    let mut rest = Vec::new();
    let p = Path::new(path);
    for c in p.components().skip(1) {
        rest.push(c.as_os_str().to_owned());
    }
    let mut resolved = root.to_path_buf();
    while let Some(c) = (!rest.is_empty()).then(|| rest.remove(0)) {
        head.push(&c);
        match resolve_in_root(root, &head.to_string_lossy()) {
            Ok(h) => resolved = h,
            Err(_) => {
                resolved.push(&c);
                for r in &rest {
                    resolved.push(r);
                }
                return Ok(resolved);
            }
        }
    }
    Ok(resolved)
}

/// The 5.x translator in the trixie root, the modules it builds, and its C tools.
pub(super) fn stap5(apt: &mut Apt, cache: &Path, kver: &str) -> Result<Stap5> {
    let root = step("trixie chroot", || trixie_root(apt, cache))?;
    step("kernel headers in the chroot", || {
        trixie_headers(&root, kver)
    })?;
    // Plain chroot(8), no mount namespace: as the modules are built (see `stap::build_one`).
    let sh = cmd::shell()?;
    let out = cmd::capture(cmd!(sh, "chroot {root} stap -V"))?;
    let (version, line) = parse_stap_version(&out, "the chroot's `stap -V`")?;
    eprintln!("xtask: chroot: {line}");
    if !version.starts_with('5') {
        bail!("the trixie chroot has SystemTap {version}, not 5.x");
    }
    let runtime = root.join("usr/share/systemtap/runtime");
    if needs_task_work_patch(kver, &runtime)? {
        bail!(
            "SystemTap {version}'s runtime does not call task_work_cancel_func, which {kver} needs"
        );
    }
    let mods = step("SystemTap 5.x modules", || {
        modules(
            cache,
            kver,
            &line,
            Translator::Chroot { root: root.clone() },
            "trixie",
        )
    })?;
    let format = "${Version}";
    let c_version = cmd::output(cmd!(
        sh,
        "chroot {root} dpkg-query -W -f {format} systemtap-runtime"
    ))?
    .trim()
    .to_owned();
    let mut libs = Vec::new();
    for bin in ["/usr/bin/staprun", "/usr/lib/systemtap/stapio"] {
        let text = cmd::output(cmd!(sh, "chroot {root} ldd {bin}"))?;
        for lib in ldd_paths(&text, Path::new(bin))? {
            let file = resolve_in_root(&root, &lib)?;
            libs.push((lib, file));
        }
    }
    Ok(Stap5 {
        version,
        mods,
        c: CTools {
            version: c_version,
            staprun: resolve_in_root(&root, "/usr/bin/staprun")?,
            stapio: resolve_in_root(&root, "/usr/lib/systemtap/stapio")?,
            libs,
        },
    })
}
