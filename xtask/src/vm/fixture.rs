//! kmod-fixture, the test modules, built for a guest kernel into target/vm-cache/kmod/KV
//! (`make modules` against the kernel's headers, on the host or in the trixie chroot).

use std::fs;
use std::path::{Path, PathBuf};

use crate::chroot::Chroot;
use crate::cmd::{self, cmd, workspace_root};
use crate::error::{Result, bail};
use crate::files;
use crate::vm::kernel::aptstate;

pub const FIXTURE_MODULES: &[&str] = &["pmod", "pmod5", "fixture_a", "fixture_b", "plainmod"];

/// Where kbuild runs for a kernel.
pub enum Builder {
    /// `make -C HEADERS` on the host.
    Host(PathBuf),
    /// `make -C /usr/src/linux-headers-KV` in the trixie chroot.
    Chroot(PathBuf),
}

/// Builds kmod-fixture into target/vm-cache/kmod/KV (in the chroot: in /root/staprun-kmod/KV
/// there, the .ko files then copied out, each through a temporary file). A module that is not
/// whole or not for KV afterwards (make takes a .ko cut short by an interrupted build as up to
/// date) is removed and made again, once.
pub fn build_fixture(cache: &Path, kver: &str, builder: &Builder) -> Result<PathBuf> {
    let dir = make_fixture(cache, kver, builder)?;
    let bad: Vec<&str> = FIXTURE_MODULES
        .iter()
        .copied()
        .filter(|m| !fixtures_built_one(&dir, m, kver))
        .collect();
    if bad.is_empty() {
        return Ok(dir);
    }
    eprintln!(
        "xtask: {bad:?} in {} are not whole modules for {kver}: building them again",
        dir.display()
    );
    for m in &bad {
        let _ = fs::remove_file(dir.join(format!("{m}.ko")));
        if let Builder::Chroot(root) = builder {
            let _ = fs::remove_file(
                root.join("root/staprun-kmod")
                    .join(kver)
                    .join(format!("{m}.ko")),
            );
        }
    }
    let dir = make_fixture(cache, kver, builder)?;
    match FIXTURE_MODULES
        .iter()
        .find(|m| !fixtures_built_one(&dir, m, kver))
    {
        None => Ok(dir),
        Some(m) => bail!(
            "kmod-fixture: {}/{m}.ko is not a whole module built for {kver}",
            dir.display()
        ),
    }
}

fn fixtures_built_one(dir: &Path, m: &str, kver: &str) -> bool {
    fs::read(dir.join(format!("{m}.ko"))).is_ok_and(|b| aptstate::module_built_for(&b, kver))
}

/// One `make modules` of kmod-fixture for KV (see [`build_fixture`]).
fn make_fixture(cache: &Path, kver: &str, builder: &Builder) -> Result<PathBuf> {
    let src = workspace_root().join("kmod-fixture");
    let dir = cache.join("kmod").join(kver);
    files::mkdir(&dir)?;
    let build_dir = match builder {
        Builder::Host(_) => dir.clone(),
        Builder::Chroot(root) => root.join("root/staprun-kmod").join(kver),
    };
    files::mkdir(&build_dir)?;
    for p in files::read_dir(&src)? {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".c") || name.ends_with(".h") || name == "Kbuild" || name == "Makefile" {
            let dst = build_dir.join(&name);
            // Copy only on change so make's timestamps stay meaningful.
            if fs::read(&p).ok() != fs::read(&dst).ok() {
                files::copy(&p, &dst)?;
            }
        }
    }
    let sh = cmd::shell()?;
    let (out, headers) = match builder {
        Builder::Host(headers) => {
            let m = format!("M={}", build_dir.display());
            (
                cmd::capture(cmd!(sh, "make -C {headers} {m} modules"))?,
                headers.display().to_string(),
            )
        }
        Builder::Chroot(root) => {
            let h = format!("/usr/src/linux-headers-{kver}");
            let m = format!("M=/root/staprun-kmod/{kver}");
            (
                Chroot::new(root).capture(&["make", "-C", &h, &m, "modules"])?,
                format!("{h} in {}", root.display()),
            )
        }
    };
    let log = format!("{}{}", out.stdout, out.stderr);
    if !out.status.success() {
        bail!("building kmod-fixture against {headers} failed:\n{log}");
    }
    if log.contains("warning:") {
        eprintln!("{log}");
    }
    for m in FIXTURE_MODULES {
        let ko = build_dir.join(format!("{m}.ko"));
        if !ko.is_file() {
            bail!(
                "kmod-fixture build produced no {m}.ko in {}",
                build_dir.display()
            );
        }
        if build_dir != dir {
            files::copy_atomic(&ko, &dir.join(format!("{m}.ko")))?;
        }
    }
    Ok(dir)
}

/// Every fixture module in `dir` is a whole module built for `kver`.
pub fn fixtures_built(dir: &Path, kver: &str) -> bool {
    FIXTURE_MODULES
        .iter()
        .all(|m| fixtures_built_one(dir, m, kver))
}
