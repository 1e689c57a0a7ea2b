//! Trixie and trixie-backports kernels (7.x): image, headers and gcc-14 come from a
//! debootstrapped trixie chroot (target/vm-cache/chroot-trixie), in which the fixture is built.

use std::fs;
use std::path::Path;

use super::image::{find_deb, kernel_image};
use super::{KernelSource, Suite, complete_kernels, depends_abi};
use crate::apt::{self, Apt, host_apt_sources};
use crate::chroot::Chroot;
use crate::cmd::{self, cmd, is_root};
use crate::error::{Context as _, Result, bail};
use crate::files;

const CHROOT: &str = "chroot-trixie";
const CHROOT_SOURCES: &str = "etc/apt/sources.list.d/staprun-vmtest-trixie-backports.sources";
/// Where packages are downloaded inside the chroot (moved to target/vm-cache/debs after).
const CHROOT_DEBS: &str = "var/cache/staprun-vmtest";

fn is_trixie_root(d: &Path) -> bool {
    d.join("usr/bin/apt-get").is_file()
        && fs::read_to_string(d.join("etc/os-release"))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == "VERSION_CODENAME=trixie"))
}

/// The debootstrapped trixie chroot with trixie-backports in its apt sources; commands run in
/// it through [`crate::chroot::Chroot`].
pub struct TrixieChroot {
    pub ch: Chroot,
    pub(super) updated: bool,
}

impl TrixieChroot {
    /// target/vm-cache/chroot-trixie, or a trixie chroot another task made under
    /// target/vm-cache (any directory with "trixie" in its name), or a new
    /// `debootstrap --variant=minbase trixie` on the host's Debian mirror.
    pub(super) fn open(apt: &mut Apt, cache: &Path) -> Result<TrixieChroot> {
        let mine = cache.join(CHROOT);
        let root = if is_trixie_root(&mine) {
            mine
        } else if let Some(other) = fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("trixie"))
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    && is_trixie_root(p)
            })
            .min()
        {
            eprintln!("xtask: reusing the trixie chroot {}", other.display());
            other
        } else {
            if !is_root() {
                bail!("the 7.x kernels need a trixie chroot: run as root");
            }
            if vm::which("debootstrap").is_none() {
                apt.install(&["debootstrap".to_owned()], "debootstrap missing")?;
            }
            let (uri, _) = apt::debian_mirror(&host_apt_sources())?;
            let tmp = cache.join(format!(".{CHROOT}.tmp-{}", std::process::id()));
            eprintln!(
                "xtask: debootstrap --variant=minbase trixie {} {uri}",
                tmp.display()
            );
            let sh = cmd::shell()?;
            cmd::output(cmd!(sh, "debootstrap --variant=minbase trixie {tmp} {uri}"))
                .note(|| format!("partial chroot left in {}", tmp.display()))?;
            files::rename(&tmp, &mine)?;
            mine
        };
        let mut ch = TrixieChroot {
            ch: Chroot::new(&root),
            updated: false,
        };
        ch.sources()?;
        Ok(ch)
    }

    /// `TOOL -q -o DPkg::Lock::Timeout=600 ARGS...` in the chroot: its stdout.
    fn apt(&self, tool: &str, args: &[&str]) -> Result<String> {
        let mut all = vec![tool, "-q", "-o", "DPkg::Lock::Timeout=600"];
        all.extend_from_slice(args);
        self.ch.output(&all)
    }

    pub(super) fn update(&mut self) -> Result<()> {
        if !self.updated {
            eprintln!("xtask: apt-get update (in {})", self.ch.root.display());
            self.apt("apt-get", &["update", "-qq"])?;
            self.updated = true;
        }
        Ok(())
    }

    /// trixie-backports next to the trixie entry debootstrap wrote, on the same mirror.
    fn sources(&mut self) -> Result<()> {
        let path = self.ch.root.join(CHROOT_SOURCES);
        if path.is_file() {
            return Ok(());
        }
        let (uri, _) = apt::debian_mirror(&host_apt_sources())?;
        let text = format!(
            "# Written by `cargo xtask vm-prepare --kernel 7` (staprun-rs): guest kernels.\n\
             Types: deb\nURIs: {uri}\nSuites: trixie-backports\nComponents: main\n"
        );
        files::write_atomic(&path, text)?;
        self.updated = false;
        self.update()
    }

    /// The kernel ABI `meta` depends on, from the chroot's lists as they are.
    fn listed(&self, meta: &str) -> Option<String> {
        self.apt("apt-cache", &["depends", meta])
            .ok()
            .and_then(|t| depends_abi(&t))
    }

    fn install(&mut self, pkgs: &[&str]) -> Result<()> {
        eprintln!(
            "xtask: apt-get install {} (in {})",
            pkgs.join(" "),
            self.ch.root.display()
        );
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend_from_slice(pkgs);
        // Captured (shown only on failure) so that `matrix` output stays a table.
        if self.apt("apt-get", &args).is_ok() {
            return Ok(());
        }
        self.update()?;
        self.apt("apt-get", &args).map(|_| ())
    }

    /// linux-headers-KV (with gcc-14, kbuild and pahole), make and binutils in the chroot.
    fn headers(&mut self, kver: &str) -> Result<()> {
        if !chroot_headers_ready(&self.ch.root, kver) {
            self.install(&[&format!("linux-headers-{kver}"), "make", "binutils"])?;
        }
        Ok(())
    }

    /// `apt-get download PKG` in the chroot, the .deb moved to `debs`.
    fn download(&mut self, pkg: &str, debs: &Path) -> Result<()> {
        let script = format!(
            "mkdir -p /{CHROOT_DEBS} && cd /{CHROOT_DEBS} && rm -f -- \"$0\"_*.deb && exec apt-get download -q -o APT::Sandbox::User=root \"$0\""
        );
        let run = |c: &TrixieChroot| c.ch.output(&["sh", "-ec", &script, pkg]);
        if run(self).is_err() {
            self.update()?;
            run(self)?;
        }
        let dir = self.ch.root.join(CHROOT_DEBS);
        let deb = find_deb(&dir, pkg)
            .ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))?;
        let name = deb.file_name().unwrap_or_default();
        files::copy_atomic(&deb, &debs.join(name))?;
        let _ = fs::remove_file(&deb);
        Ok(())
    }
}

/// The headers of `kver` are installed in the trixie chroot at `root`, with make and as.
pub(super) fn chroot_headers_ready(root: &Path, kver: &str) -> bool {
    root.join("usr/src")
        .join(format!("linux-headers-{kver}"))
        .join("Makefile")
        .is_file()
        && root.join("usr/bin/make").is_file()
        && root.join("usr/bin/as").exists()
}

/// Trixie kernels: apt in the trixie chroot.
pub(super) struct ChrootKernels<'a> {
    pub(super) ch: &'a mut TrixieChroot,
    pub(super) cache: &'a Path,
    pub(super) meta: String,
}

impl KernelSource for ChrootKernels<'_> {
    fn listed(&mut self) -> Option<String> {
        self.ch.listed(&self.meta)
    }
    fn fresh(&self) -> bool {
        self.ch.updated
    }
    fn update(&mut self) -> Result<()> {
        self.ch.update()
    }
    fn fetch(&mut self, kver: &str) -> Result<()> {
        self.ch.headers(kver)?;
        let ch = &mut *self.ch;
        kernel_image(self.cache, kver, &mut |pkg, debs| ch.download(pkg, debs)).map(|_| ())
    }
    fn complete(&mut self) -> Vec<String> {
        complete_kernels(self.cache, Suite::Trixie, Some(&self.ch.ch.root))
    }
}
