//! Guest kernel images: fetched as packages into target/vm-cache/debs and unpacked with dpkg-deb
//! under target/vm-cache/kernel/KV (no /boot changes).

use std::fs;
use std::path::{Path, PathBuf};

use super::aptstate;
use crate::cmd::{self, cmd};
use crate::error::{Result, bail};
use crate::files;

/// The newest `PKG_*.deb` in `dir`.
pub fn find_deb(dir: &Path, pkg: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .max()
}

/// The kernel image in an unpacked image package: boot/vmlinuz-KV (6.x) or
/// usr/lib/modules/KV/vmlinuz (7.x's linux-binary-KV).
pub fn vmlinuz_in(root: &Path, kver: &str) -> Option<PathBuf> {
    [
        root.join("boot").join(format!("vmlinuz-{kver}")),
        root.join("usr/lib/modules").join(kver).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Unpacks PKG's .deb from `debs` into `into`, fetching it into `debs` first when it is not
/// there. A .deb there that dpkg-deb cannot unpack (cut short by a run of earlier code) is
/// fetched again.
pub(super) fn unpack_deb(
    debs: &Path,
    pkg: &str,
    into: &Path,
    fetch: &mut dyn FnMut(&str, &Path) -> Result<()>,
) -> Result<()> {
    let sh = cmd::shell()?;
    let unpack = |deb: &Path| cmd::output(cmd!(sh, "dpkg-deb -x {deb} {into}"));
    if let Some(deb) = find_deb(debs, pkg) {
        match unpack(&deb) {
            Ok(_) => return Ok(()),
            Err(e) => {
                eprintln!(
                    "xtask: {} does not unpack, fetching it again: {}",
                    deb.display(),
                    e.to_string().lines().last().unwrap_or("")
                );
                let _ = fs::remove_file(&deb);
            }
        }
    }
    fetch(pkg, debs)?;
    let deb = find_deb(debs, pkg)
        .ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))?;
    unpack(&deb).map(|_| ())
}

/// The guest kernel: `linux-image-KV` (6.x: boot/vmlinuz-KV) or, when that is only a meta
/// package (7.x), `linux-binary-KV` (usr/lib/modules/KV/vmlinuz), fetched with `fetch` into
/// target/vm-cache/debs and unpacked with dpkg-deb under target/vm-cache/kernel/KV (through a
/// temporary directory renamed into place once the image is in it).
pub(super) fn kernel_image(
    cache: &Path,
    kver: &str,
    fetch: &mut dyn FnMut(&str, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = cache.join("kernel").join(kver);
    if let Some(v) = vmlinuz_in(&root, kver) {
        return Ok(v);
    }
    let debs = cache.join("debs");
    files::mkdir(&debs)?;
    let tmp = cache
        .join("kernel")
        .join(aptstate::tmp_name(kver, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    files::mkdir(&tmp)?;
    let got = (|| -> Result<PathBuf> {
        for pkg in [
            format!("linux-image-{kver}"),
            format!("linux-binary-{kver}"),
        ] {
            unpack_deb(&debs, &pkg, &tmp, fetch)?;
            if vmlinuz_in(&tmp, kver).is_some() {
                let _ = fs::remove_dir_all(&root);
                files::rename(&tmp, &root)?;
                return Ok(vmlinuz_in(&root, kver)
                    .ok_or_else(|| format!("{} vanished", root.display()))?);
            }
        }
        bail!(
            "neither linux-image-{kver} nor linux-binary-{kver} holds boot/vmlinuz-{kver} or usr/lib/modules/{kver}/vmlinuz"
        )
    })();
    if got.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    got
}
