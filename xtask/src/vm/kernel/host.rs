//! Bookworm and bookworm-backports kernels: apt on the host. Bookworm's headers are installed
//! with apt (`/usr/src/linux-headers-KV`: their Makefiles name absolute /usr/src paths, so they
//! are not relocated); bookworm-backports' are unpacked under target/vm-cache/headers/KV.

use std::fs;
use std::path::{Path, PathBuf};

use xshell::{Cmd, Shell};

use super::image::{find_deb, kernel_image, unpack_deb};
use super::{KernelSource, Suite, aptstate, complete_kernels, depends_abi, depends_names};
use crate::apt::{self, Apt, dpkg_installed, host_apt_sources};
use crate::cmd::{self, is_root};
use crate::error::{Context as _, Result, bail};
use crate::files;

const BPO_SOURCES: &str = "/etc/apt/sources.list.d/staprun-vmtest-bookworm-backports.sources";

/// Makes bookworm-backports known to the host's apt: a sources list of our own on the mirror
/// the host uses for bookworm (backports are NotAutomatic: nothing comes from there unless
/// asked for by name), then `apt-get update` when it was new.
fn host_backports(apt: &mut Apt) -> Result<()> {
    let sources = host_apt_sources();
    let ours = Path::new(BPO_SOURCES);
    if !ours.exists()
        && sources
            .iter()
            .any(|s| s.suites.iter().any(|x| x == "bookworm-backports"))
    {
        return Ok(()); // configured by the host's administrator
    }
    let (uri, signed_by) = apt::debian_mirror(&sources)?;
    let text = format!(
        "# Written by `cargo xtask vm-prepare --kernel 6.12` (staprun-rs): guest kernels for the VM\n\
         # tests (apt-get download only; backports are NotAutomatic).\n\
         Types: deb\nURIs: {uri}\nSuites: bookworm-backports\nComponents: main\n{}",
        signed_by
            .map(|s| format!("Signed-By: {s}\n"))
            .unwrap_or_default()
    );
    if fs::read_to_string(ours).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    if !is_root() {
        bail!("bookworm-backports is not in apt's sources: run as root (writes {BPO_SOURCES})");
    }
    eprintln!("xtask: writing {BPO_SOURCES} ({uri})");
    // Never half written: a cut-off stanza would break apt for everyone on the host.
    files::write_atomic(ours, text)?;
    apt.updated = false;
    apt.update()
}

/// apt on the host as the guest kernel's preparation uses it: `apt-cache depends`,
/// `apt-get update` and `apt-get download`. With `lists`, apt reads and updates that lists
/// directory instead of the host's (and writes no package cache): tests point it at a copy of
/// the host's lists, so the host's apt state is never touched.
pub(super) struct HostApt<'a> {
    pub(super) apt: &'a mut Apt,
    pub(super) lists: Option<PathBuf>,
}

impl<'a> HostApt<'a> {
    pub(super) fn new(apt: &'a mut Apt) -> Self {
        HostApt { apt, lists: None }
    }

    fn opts(&self) -> Vec<String> {
        let Some(d) = &self.lists else {
            return Vec::new();
        };
        [
            format!("Dir::State::Lists={}", d.display()),
            "Dir::Cache::pkgcache=".into(),
            "Dir::Cache::srcpkgcache=".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect()
    }

    /// `TOOL -o ...` reading (and updating) the lists this apt works on.
    fn cmd<'s>(&self, sh: &'s Shell, tool: &str) -> Cmd<'s> {
        sh.cmd(tool).args(self.opts())
    }

    /// `apt-cache depends PKG`.
    fn apt_cache_depends(&self, pkg: &str) -> Result<String> {
        let sh = cmd::shell()?;
        cmd::output(self.cmd(&sh, "apt-cache").args(["depends", pkg]))
    }

    pub(super) fn update(&mut self) -> Result<()> {
        if !self.apt.updated {
            apt::apt_update(&self.opts())?;
            self.apt.updated = true;
        }
        Ok(())
    }

    fn lists_empty(&self) -> bool {
        apt::lists_empty_in(&self.lists.clone().unwrap_or_else(apt::host_lists_dir))
    }

    /// The kernel ABI `meta` depends on, from the lists as they are (nothing is updated):
    /// `None` when they do not know `meta`.
    pub(super) fn listed(&self, meta: &str) -> Option<String> {
        self.apt_cache_depends(meta)
            .ok()
            .and_then(|t| depends_abi(&t))
    }

    /// `apt-cache depends PKG`, updating the lists first when they are empty, and once more
    /// (as root) when they do not know PKG.
    fn depends(&mut self, pkg: &str) -> Result<String> {
        if self.lists_empty() && is_root() {
            self.update()?;
        }
        match self.apt_cache_depends(pkg) {
            Ok(s) if !s.trim().is_empty() => Ok(s),
            r if is_root() && !self.apt.updated => {
                self.update()?;
                let before = match r {
                    Ok(_) => "no output".to_owned(),
                    Err(e) => e.to_string(),
                };
                self.apt_cache_depends(pkg)
                    .note(|| format!("and before the update: {before}"))
            }
            r => r,
        }
    }

    /// `apt-get download PKG` into `debs`: into a temporary directory first, the .deb then
    /// renamed into `debs`, so a .deb there is always whole (an interrupted download leaves
    /// only a temporary directory, removed by a later run). No retry here: when the lists
    /// were stale, the caller updates them and resolves the kernel again.
    pub(super) fn download(&mut self, pkg: &str, debs: &Path) -> Result<()> {
        let tmp = debs.join(aptstate::tmp_name("download", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        files::mkdir(&tmp)?;
        let sh = cmd::shell_in(&tmp)?;
        let got =
            cmd::output(self.cmd(&sh, "apt-get").args(["download", "-q", pkg])).and_then(|_| {
                let deb = find_deb(&tmp, pkg)
                    .ok_or_else(|| format!("apt-get download {pkg} left no .deb"))?;
                files::rename(&deb, &debs.join(deb.file_name().unwrap_or_default()))
            });
        let _ = fs::remove_dir_all(&tmp);
        got
    }
}

/// Bookworm and bookworm-backports kernels: apt on the host.
pub(super) struct HostKernels<'a, 'b> {
    pub(super) host: HostApt<'a>,
    pub(super) cache: &'b Path,
    pub(super) suite: Suite,
    /// linux-image-cloud-amd64[/SUITE]
    pub(super) meta: String,
}

impl KernelSource for HostKernels<'_, '_> {
    fn listed(&mut self) -> Option<String> {
        self.host.listed(&self.meta)
    }
    fn fresh(&self) -> bool {
        self.host.apt.updated
    }
    fn update(&mut self) -> Result<()> {
        if self.suite == Suite::BookwormBackports {
            host_backports(self.host.apt)?;
        }
        self.host.update()
    }
    fn fetch(&mut self, kver: &str) -> Result<()> {
        if self.suite == Suite::BookwormBackports {
            host_backports(self.host.apt)?;
            unpacked_headers(&mut self.host, self.cache, kver)?;
        } else {
            headers(self.host.apt, kver)?;
        }
        let host = &mut self.host;
        kernel_image(self.cache, kver, &mut |pkg, debs| host.download(pkg, debs)).map(|_| ())
    }
    fn complete(&mut self) -> Vec<String> {
        complete_kernels(self.cache, self.suite, None)
    }
}

/// The linux-headers-KV package is installed on the host (dpkg says so: an install cut short
/// leaves files but no "install ok installed").
pub(super) fn bookworm_headers_ready(kver: &str) -> bool {
    Path::new(&format!("/usr/src/linux-headers-{kver}/Makefile")).is_file()
        && dpkg_installed(&format!("linux-headers-{kver}"))
}

fn headers(apt: &mut Apt, kver: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/usr/src/linux-headers-{kver}"));
    if !bookworm_headers_ready(kver) {
        apt.install(
            &[format!("linux-headers-{kver}")],
            &format!("kernel headers for {kver} missing"),
        )?;
    }
    if !dir.join("Makefile").is_file() {
        bail!(
            "{} still missing after installing linux-headers-{kver}",
            dir.display()
        );
    }
    Ok(dir)
}

/// target/vm-cache/headers/KV.
pub(super) fn backports_headers_root(cache: &Path, kver: &str) -> PathBuf {
    cache.join("headers").join(kver)
}

/// Marker files in target/vm-cache/headers/KV: the packages unpacked there (written last, in
/// the temporary directory, before it is renamed into place), and the host tools they need
/// (written once those are installed).
const UNPACKED: &str = ".unpacked";
const TOOLS: &str = ".tools";

/// A bookworm-backports kernel's headers are unpacked, and the tools they need installed.
pub(super) fn backports_headers_ready(cache: &Path, kver: &str) -> bool {
    let root = backports_headers_root(cache, kver);
    root.join(UNPACKED).is_file()
        && root
            .join(format!("usr/src/linux-headers-{kver}/Makefile"))
            .is_file()
        && fs::read_to_string(root.join(TOOLS))
            .is_ok_and(|t| t.lines().filter(|l| !l.is_empty()).all(dpkg_installed))
}

/// Headers of a bookworm-backports kernel, unpacked (not installed) under
/// target/vm-cache/headers/KV: linux-headers-KV, its -common and its linux-kbuild package.
/// Their one absolute path (the `include /usr/src/...-common/Makefile` line) is rewritten;
/// the tools they need (gcc-12, pahole for the modules' BTF, ...) are installed with apt.
fn unpacked_headers(host: &mut HostApt, cache: &Path, kver: &str) -> Result<PathBuf> {
    let root = backports_headers_root(cache, kver);
    let dir = root.join("usr/src").join(format!("linux-headers-{kver}"));
    if backports_headers_ready(cache, kver) {
        return Ok(dir);
    }
    let done = root.join(UNPACKED);
    let hdr = format!("linux-headers-{kver}");
    let deps = depends_names(&host.depends(&hdr)?);
    let mut debs_wanted = vec![hdr.clone()];
    debs_wanted.extend(
        deps.iter()
            .filter(|d| d.starts_with("linux-headers-") || d.starts_with("linux-kbuild-"))
            .cloned(),
    );
    let mut tools: Vec<String> = deps
        .iter()
        .filter(|d| !d.starts_with("linux-"))
        .cloned()
        .collect();
    for kb in debs_wanted
        .iter()
        .filter(|d| d.starts_with("linux-kbuild-"))
    {
        tools.extend(
            depends_names(&host.depends(kb)?)
                .into_iter()
                .filter(|d| !d.starts_with("linux-")),
        );
    }
    tools.sort();
    tools.dedup();
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| !dpkg_installed(t))
        .cloned()
        .collect();
    if !missing.is_empty() {
        host.apt
            .install(&missing, &format!("tools the {kver} headers need"))?;
    }
    if !(done.is_file() && dir.join("Makefile").is_file()) {
        let debs = cache.join("debs");
        files::mkdir(&debs)?;
        let tmp = cache
            .join("headers")
            .join(aptstate::tmp_name(kver, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        files::mkdir(&tmp)?;
        let unpacked = (|| {
            for pkg in &debs_wanted {
                unpack_deb(&debs, pkg, &tmp, &mut |p, d| host.download(p, d))?;
            }
            let mk = tmp
                .join("usr/src")
                .join(format!("linux-headers-{kver}"))
                .join("Makefile");
            let text = files::read_to_string(&mk)?;
            let fixed = text.replace("/usr/src/", &format!("{}/usr/src/", root.display()));
            files::write(&mk, fixed)?;
            files::write(&tmp.join(UNPACKED), debs_wanted.join("\n"))?;
            let _ = fs::remove_dir_all(&root);
            files::rename(&tmp, &root)
        })();
        if unpacked.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        unpacked?;
    }
    files::write_atomic(&root.join(TOOLS), tools.join("\n"))?;
    Ok(dir)
}
