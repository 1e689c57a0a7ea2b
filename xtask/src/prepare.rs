//! `vm-prepare`: everything a guest test needs, cached under target/vm-cache.
//!
//! ```text
//! target/vm-cache/debs/linux-image-KV_*.deb          apt-get download
//! target/vm-cache/kernel/KV/boot/vmlinuz-KV          dpkg-deb -x (no /boot changes)
//! target/vm-cache/kmod/KV/{pmod,pmod5,fixture_a,fixture_b,plainmod}.ko
//! target/vm-cache/initramfs-KV.cpio                  newc, written here
//! target/vm-cache/vm-test.env                        kver=, kernel=, initrd=, accel=
//! ```
//! Headers: the matching `linux-headers-KV` package is installed with apt-get
//! (its Makefiles name absolute /usr/src paths, so it is not relocated).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;
use crate::cpio::{self, Entry};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const STAPUSR: u32 = 156;
pub const STAPSYS: u32 = 157;
pub const STAPDEV: u32 = 158;

#[derive(clap::Args, Clone, Debug)]
#[group(id = "vm_options")]
pub struct Options {
    /// Guest kernel: an ABI (6.1.0-57-cloud-amd64, 6.12.95+deb12-cloud-amd64, 7.3.4+deb13-cloud-amd64)
    /// or an alias for the newest of a suite: 6.1 (bookworm), 6.12 (bookworm-backports), 7
    /// (trixie-backports). Default: $VMTEST_KERNEL, else the newest bookworm cloud kernel.
    #[arg(long, value_name = "VERSION")]
    pub kernel: Option<String>,
    /// Build the initramfs without staprun/stapio (only scenario infra_boot can then pass).
    #[arg(long)]
    pub infra_only: bool,
}

pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = manifest
        .canonicalize()
        .unwrap_or_else(|_| manifest.to_path_buf());
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

pub fn is_root() -> bool {
    // /proc/self/status "Uid:" real effective saved fs
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command, returning stdout; on failure the error names the command and shows stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({st})"))
    }
}

pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t0 = Instant::now();
    let r = f();
    eprintln!(
        "xtask: {name}: {} ({:.1}s)",
        if r.is_ok() { "ok" } else { "FAILED" },
        t0.elapsed().as_secs_f64()
    );
    r
}

pub struct Apt {
    pub updated: bool,
}

impl Apt {
    pub fn update(&mut self) -> Result<()> {
        if !self.updated {
            eprintln!("xtask: apt-get update");
            status(Command::new("apt-get").args([
                "update",
                "-qq",
                "-o",
                "DPkg::Lock::Timeout=600",
            ]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// Installs packages as root, or fails with the one command to run.
    pub fn install(&mut self, pkgs: &[String], why: &str) -> Result<()> {
        let line = format!(
            "apt-get install -y --no-install-recommends {}",
            pkgs.join(" ")
        );
        if !is_root() {
            return Err(format!("{why}: run as root: {line}"));
        }
        eprintln!("xtask: {why}: {line}");
        let try_install = || {
            status(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(["-o", "DPkg::Lock::Timeout=600"])
                    .args(pkgs)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        };
        if try_install().is_ok() {
            return Ok(());
        }
        self.update()?;
        try_install().map_err(|e| format!("{why}: {e}"))
    }
}

/// True when an ELF file has no program interpreter (i.e. is statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let b = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return Err(format!("{} is not a 64-bit ELF file", path.display()));
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = usize::try_from(u64at(0x20)).map_err(|_| "bad ELF".to_owned())?;
    let (phentsize, phnum) = (u16at(0x36), u16at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            return Err(format!("{}: truncated program headers", path.display()));
        }
        if u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

fn host_tools(apt: &mut Apt) -> Result<()> {
    let mut missing = Vec::new();
    for (cmd, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("make", "make"),
        ("gcc-12", "gcc-12"),
    ] {
        if vm::which(cmd).is_none() {
            missing.push(pkg.to_owned());
        }
    }
    if !matches!(is_static_elf(Path::new("/bin/busybox")), Ok(true)) {
        missing.push("busybox-static".to_owned());
    }
    for cmd in ["apt-get", "apt-cache", "dpkg-deb"] {
        if vm::which(cmd).is_none() {
            return Err(format!(
                "{cmd} not found: vm-prepare needs a Debian (bookworm) host"
            ));
        }
    }
    if !missing.is_empty() {
        apt.install(&missing, "host tools missing")?;
    }
    if !matches!(is_static_elf(Path::new("/bin/busybox")), Ok(true)) {
        return Err("/bin/busybox is not a static binary: install busybox-static".into());
    }
    Ok(())
}

/// Where a guest kernel comes from, and where the fixture modules are built for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Debian bookworm (with bookworm-security), the default: headers installed on the host with
    /// apt (`/usr/src/linux-headers-KV`), fixture built with the host's gcc-12.
    Bookworm,
    /// bookworm-backports (6.12): image and headers fetched with `apt-get download` on the host
    /// (a sources list of our own is added). The headers are unpacked under
    /// target/vm-cache/headers/KV, not installed: their package depends on the kernel image
    /// package, which apt would install into the host's /boot. Built with the host's gcc-12.
    BookwormBackports,
    /// trixie and trixie-backports (7.x): image, headers and gcc-14 come from a debootstrapped
    /// trixie chroot (target/vm-cache/chroot-trixie), in which the fixture is built.
    Trixie,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::BookwormBackports => "bookworm-backports",
            Suite::Trixie => "trixie(-backports) chroot",
        }
    }
}

/// `--kernel` aliases: each names the newest cloud kernel of one suite.
pub const KERNEL_ALIASES: &[(&str, &str)] = &[
    ("6.1", "bookworm"),
    ("6.12", "bookworm-backports"),
    ("7", "trixie-backports"),
];

/// What `--kernel` (or `VMTEST_KERNEL`) asked for.
enum Wanted {
    /// The newest cloud kernel of an apt suite (None: apt's candidate, bookworm's), whose ABI
    /// must start with `prefix` (followed by `.`, `-` or `+`).
    Newest {
        suite: Suite,
        apt_suite: Option<&'static str>,
        prefix: Option<String>,
    },
    /// An exact ABI, e.g. 6.12.95+deb12-cloud-amd64.
    Abi { kver: String, suite: Suite },
}

fn major(v: &str) -> u32 {
    v.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn has_prefix(kver: &str, prefix: &str) -> bool {
    kver.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+']))
}

fn parse_wanted(wanted: Option<&str>) -> Result<Wanted> {
    let w = wanted
        .map(|s| s.trim().trim_start_matches("linux-image-"))
        .filter(|s| !s.is_empty());
    let Some(w) = w else {
        return Ok(Wanted::Newest {
            suite: Suite::Bookworm,
            apt_suite: None,
            prefix: None,
        });
    };
    if w.contains(['-', '+']) {
        let suite = if w.contains("deb13") || major(w) >= 7 {
            Suite::Trixie
        } else if w.starts_with("6.1.") {
            Suite::Bookworm
        } else {
            Suite::BookwormBackports
        };
        return Ok(Wanted::Abi {
            kver: w.to_owned(),
            suite,
        });
    }
    let newest = |suite, apt_suite| Wanted::Newest {
        suite,
        apt_suite,
        prefix: Some(w.to_owned()),
    };
    match w {
        "6.1" => Ok(newest(Suite::Bookworm, None)),
        "6.12" => Ok(newest(Suite::BookwormBackports, Some("bookworm-backports"))),
        _ if w.chars().all(|c| c.is_ascii_digit() || c == '.') && major(w) >= 7 => {
            Ok(newest(Suite::Trixie, Some("trixie-backports")))
        }
        _ => Err(format!(
            "--kernel {w}: neither a kernel ABI (e.g. 6.12.95+deb12-cloud-amd64) nor an alias ({})",
            KERNEL_ALIASES
                .iter()
                .map(|(a, s)| format!("{a} = newest of {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The kernel ABI named by the `Depends: linux-image-KV` line of `apt-cache depends`.
fn depends_abi(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Depends: linux-image-")
            .map(|k| k.trim().to_owned())
    })
}

/// The `Depends:` package names of `apt-cache depends` output (alternatives included,
/// virtual packages left out).
fn depends_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.starts_with('<'))
        .collect()
}

/// One `deb` entry of the host's apt sources.
struct AptSource {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// The `deb` entries of /etc/apt/sources.list and sources.list.d (one-line and deb822 forms).
fn host_apt_sources() -> Vec<AptSource> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let mut fields = std::collections::BTreeMap::new();
                for l in stanza.lines() {
                    if l.starts_with('#') || l.starts_with(char::is_whitespace) {
                        continue;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let words = |k: &str| -> Vec<String> {
                    fields
                        .get(k)
                        .map(|v| v.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default()
                };
                if !words("types").iter().any(|t| t == "deb")
                    || fields.get("enabled").is_some_and(|e| e == "no")
                {
                    continue;
                }
                out.push(AptSource {
                    uris: words("uris"),
                    suites: words("suites"),
                    signed_by: fields.get("signed-by").filter(|s| !s.is_empty()).cloned(),
                });
            }
        } else if name.ends_with(".list") || name.ends_with("sources.list") {
            for l in text.lines() {
                let l = l.split('#').next().unwrap_or("").trim();
                let Some(rest) = l.strip_prefix("deb ") else {
                    continue;
                };
                let (opts, rest) = match rest.trim_start().strip_prefix('[') {
                    Some(r) => r.split_once(']').unwrap_or(("", r)),
                    None => ("", rest),
                };
                let mut w = rest.split_whitespace();
                let (Some(uri), Some(suite)) = (w.next(), w.next()) else {
                    continue;
                };
                out.push(AptSource {
                    uris: vec![uri.to_owned()],
                    suites: vec![suite.to_owned()],
                    signed_by: opts
                        .split_whitespace()
                        .find_map(|o| o.strip_prefix("signed-by="))
                        .map(str::to_owned),
                });
            }
        }
    }
    out
}

/// The Debian archive the host's apt uses for bookworm (URI and Signed-By): other suites are
/// fetched from the same place, so no mirror is named in this code.
fn debian_mirror(sources: &[AptSource]) -> Result<(String, Option<String>)> {
    sources
        .iter()
        .find(|s| s.suites.iter().any(|x| x == "bookworm"))
        .and_then(|s| s.uris.first().map(|u| (u.clone(), s.signed_by.clone())))
        .ok_or_else(|| {
            "no `deb` entry for suite bookworm in /etc/apt/sources.list{,.d}: cannot tell which Debian mirror to use".into()
        })
}

/// The Debian mirror the host's apt uses for bookworm (for debootstrap).
pub fn bookworm_mirror() -> Result<String> {
    debian_mirror(&host_apt_sources()).map(|(uri, _)| uri)
}

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
    let (uri, signed_by) = debian_mirror(&sources)?;
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
        return Err(format!(
            "bookworm-backports is not in apt's sources: run as root (writes {BPO_SOURCES})"
        ));
    }
    eprintln!("xtask: writing {BPO_SOURCES} ({uri})");
    fs::write(ours, text).map_err(|e| format!("write {BPO_SOURCES}: {e}"))?;
    apt.updated = false;
    apt.update()
}

/// `apt-cache depends PKG` on the host, with one `apt-get update` (as root) on failure.
fn host_depends(apt: &mut Apt, pkg: &str) -> Result<String> {
    let query = || output(Command::new("apt-cache").args(["depends", pkg]));
    match query() {
        Ok(s) if !s.trim().is_empty() => Ok(s),
        r if is_root() => {
            apt.update()?;
            query().map_err(|e| format!("{e} (and before the update: {r:?})"))
        }
        r => r,
    }
}

/// `apt-get download PKG` into `debs` on the host, with one `apt-get update` on failure.
fn host_download(apt: &mut Apt, pkg: &str, debs: &Path) -> Result<()> {
    let download = || {
        output(
            Command::new("apt-get")
                .args(["download", "-q", pkg])
                .current_dir(debs),
        )
    };
    if let Err(e) = download() {
        if !is_root() {
            return Err(format!(
                "apt-get download {pkg} failed (try `apt-get update` as root): {e}"
            ));
        }
        apt.update()?;
        download()?;
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|s| s.trim() == "install ok installed")
}

/// The newest `PKG_*.deb` in `dir`.
fn find_deb(dir: &Path, pkg: &str) -> Option<PathBuf> {
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

const CHROOT: &str = "chroot-trixie";
const CHROOT_SOURCES: &str = "etc/apt/sources.list.d/staprun-vmtest-trixie-backports.sources";
/// Where packages are downloaded inside the chroot (moved to target/vm-cache/debs after).
const CHROOT_DEBS: &str = "var/cache/staprun-vmtest";

fn is_trixie_root(d: &Path) -> bool {
    d.join("usr/bin/apt-get").is_file()
        && fs::read_to_string(d.join("etc/os-release"))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == "VERSION_CODENAME=trixie"))
}

/// A command run in `root` by chroot(8), in a mount namespace of its own in which /proc is
/// mounted (objtool and apt read it), so no mount outlives the command; clean environment.
fn in_chroot(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-ec",
        r#"mount -t proc proc "$0/proc"; exec chroot "$0" "$@""#,
    ])
    .arg(root)
    .args([
        "env",
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root",
        "LC_ALL=C.UTF-8",
        "DEBIAN_FRONTEND=noninteractive",
    ])
    .args(args);
    c
}

/// The debootstrapped trixie chroot with trixie-backports in its apt sources.
pub struct Chroot {
    pub root: PathBuf,
    updated: bool,
}

impl Chroot {
    /// target/vm-cache/chroot-trixie, or a trixie chroot another task made under
    /// target/vm-cache (any directory with "trixie" in its name), or a new
    /// `debootstrap --variant=minbase trixie` on the host's Debian mirror.
    fn open(apt: &mut Apt, cache: &Path) -> Result<Chroot> {
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
                return Err("the 7.x kernels need a trixie chroot: run as root".into());
            }
            if vm::which("debootstrap").is_none() {
                apt.install(&["debootstrap".to_owned()], "debootstrap missing")?;
            }
            let (uri, _) = debian_mirror(&host_apt_sources())?;
            let tmp = cache.join(format!(".{CHROOT}.tmp-{}", std::process::id()));
            eprintln!(
                "xtask: debootstrap --variant=minbase trixie {} {uri}",
                tmp.display()
            );
            output(
                Command::new("debootstrap")
                    .args(["--variant=minbase", "trixie"])
                    .arg(&tmp)
                    .arg(&uri),
            )
            .map_err(|e| format!("{e} (partial chroot left in {})", tmp.display()))?;
            fs::rename(&tmp, &mine).map_err(|e| format!("rename to {}: {e}", mine.display()))?;
            mine
        };
        let mut ch = Chroot {
            root,
            updated: false,
        };
        ch.sources()?;
        Ok(ch)
    }

    fn apt_cmd(&self, tool: &str, args: &[&str]) -> Command {
        let mut all = vec![tool, "-q", "-o", "DPkg::Lock::Timeout=600"];
        all.extend_from_slice(args);
        in_chroot(&self.root, &all)
    }

    fn update(&mut self) -> Result<()> {
        if !self.updated {
            eprintln!("xtask: apt-get update (in {})", self.root.display());
            output(&mut self.apt_cmd("apt-get", &["update", "-qq"]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// trixie-backports next to the trixie entry debootstrap wrote, on the same mirror.
    fn sources(&mut self) -> Result<()> {
        let path = self.root.join(CHROOT_SOURCES);
        if path.is_file() {
            return Ok(());
        }
        let (uri, _) = debian_mirror(&host_apt_sources())?;
        let text = format!(
            "# Written by `cargo xtask vm-prepare --kernel 7` (staprun-rs): guest kernels.\n\
             Types: deb\nURIs: {uri}\nSuites: trixie-backports\nComponents: main\n"
        );
        fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        self.updated = false;
        self.update()
    }

    fn depends(&mut self, pkg: &str) -> Result<String> {
        let query = |c: &Chroot| output(&mut c.apt_cmd("apt-cache", &["depends", pkg]));
        match query(self) {
            Ok(s) if !s.trim().is_empty() => Ok(s),
            _ => {
                self.update()?;
                query(self)
            }
        }
    }

    fn install(&mut self, pkgs: &[&str]) -> Result<()> {
        eprintln!(
            "xtask: apt-get install {} (in {})",
            pkgs.join(" "),
            self.root.display()
        );
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend_from_slice(pkgs);
        // Captured (shown only on failure) so that `matrix` output stays a table.
        if output(&mut self.apt_cmd("apt-get", &args)).is_ok() {
            return Ok(());
        }
        self.update()?;
        output(&mut self.apt_cmd("apt-get", &args)).map(|_| ())
    }

    /// linux-headers-KV (with gcc-14, kbuild and pahole), make and binutils in the chroot.
    fn headers(&mut self, kver: &str) -> Result<()> {
        let hdr = format!("linux-headers-{kver}");
        let have = self
            .root
            .join("usr/src")
            .join(&hdr)
            .join("Makefile")
            .is_file()
            && self.root.join("usr/bin/make").is_file()
            && self.root.join("usr/bin/as").exists();
        if !have {
            self.install(&[&hdr, "make", "binutils"])?;
        }
        Ok(())
    }

    /// `apt-get download PKG` in the chroot, the .deb moved to `debs`.
    fn download(&mut self, pkg: &str, debs: &Path) -> Result<()> {
        let script = format!(
            "mkdir -p /{CHROOT_DEBS} && cd /{CHROOT_DEBS} && exec apt-get download -q -o APT::Sandbox::User=root \"$0\""
        );
        let run = |c: &Chroot| output(&mut in_chroot(&c.root, &["sh", "-ec", &script, pkg]));
        if run(self).is_err() {
            self.update()?;
            run(self)?;
        }
        let dir = self.root.join(CHROOT_DEBS);
        let deb = find_deb(&dir, pkg)
            .ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))?;
        let name = deb.file_name().unwrap_or_default();
        fs::copy(&deb, debs.join(name)).map_err(|e| format!("copy {}: {e}", deb.display()))?;
        let _ = fs::remove_file(&deb);
        Ok(())
    }
}

/// Resolves `--kernel` to an ABI and the suite it comes from (opening the trixie chroot,
/// or adding bookworm-backports to the host's apt sources, when that suite needs it).
fn resolve_kernel(
    apt: &mut Apt,
    cache: &Path,
    wanted: Option<&str>,
) -> Result<(String, Suite, Option<Chroot>)> {
    let wanted = parse_wanted(wanted)?;
    let suite = match &wanted {
        Wanted::Newest { suite, .. } | Wanted::Abi { suite, .. } => *suite,
    };
    let mut chroot = match suite {
        Suite::Trixie => Some(step("trixie chroot", || Chroot::open(apt, cache))?),
        Suite::BookwormBackports => {
            host_backports(apt)?;
            None
        }
        Suite::Bookworm => None,
    };
    let kver = match wanted {
        Wanted::Abi { kver, .. } => kver,
        Wanted::Newest {
            apt_suite, prefix, ..
        } => {
            let meta = match apt_suite {
                Some(s) => format!("linux-image-cloud-amd64/{s}"),
                None => "linux-image-cloud-amd64".to_owned(),
            };
            let text = match chroot.as_mut() {
                Some(ch) => ch.depends(&meta),
                None => host_depends(apt, &meta),
            }
            .map_err(|e| format!("cannot resolve the newest {meta} (pass --kernel ABI): {e}"))?;
            let kver = depends_abi(&text)
                .ok_or_else(|| format!("`apt-cache depends {meta}` names no linux-image-KV"))?;
            if let Some(p) = prefix.filter(|p| !has_prefix(&kver, p)) {
                return Err(format!(
                    "--kernel {p}: the newest {meta} is {kver}, not a {p} kernel"
                ));
            }
            kver
        }
    };
    Ok((kver, suite, chroot))
}

fn headers(apt: &mut Apt, kver: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/usr/src/linux-headers-{kver}"));
    if !dir.join("Makefile").is_file() {
        apt.install(
            &[format!("linux-headers-{kver}")],
            &format!("kernel headers for {kver} missing"),
        )?;
    }
    if !dir.join("Makefile").is_file() {
        return Err(format!(
            "{} still missing after installing linux-headers-{kver}",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Headers of a bookworm-backports kernel, unpacked (not installed) under
/// target/vm-cache/headers/KV: linux-headers-KV, its -common and its linux-kbuild package.
/// Their one absolute path (the `include /usr/src/...-common/Makefile` line) is rewritten;
/// the tools they need (gcc-12, pahole for the modules' BTF, ...) are installed with apt.
fn unpacked_headers(apt: &mut Apt, cache: &Path, kver: &str) -> Result<PathBuf> {
    let root = cache.join("headers").join(kver);
    let dir = root.join("usr/src").join(format!("linux-headers-{kver}"));
    let done = root.join(".unpacked");
    let hdr = format!("linux-headers-{kver}");
    let deps = depends_names(&host_depends(apt, &hdr)?);
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
            depends_names(&host_depends(apt, kb)?)
                .into_iter()
                .filter(|d| !d.starts_with("linux-")),
        );
    }
    tools.sort();
    tools.dedup();
    let missing: Vec<String> = tools.into_iter().filter(|t| !dpkg_installed(t)).collect();
    if !missing.is_empty() {
        apt.install(&missing, &format!("tools the {kver} headers need"))?;
    }
    if done.is_file() && dir.join("Makefile").is_file() {
        return Ok(dir);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("mkdir {}: {e}", debs.display()))?;
    let tmp = cache.join("headers").join(format!(".{kver}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    for pkg in &debs_wanted {
        if find_deb(&debs, pkg).is_none() {
            host_download(apt, pkg, &debs)?;
        }
        let deb = find_deb(&debs, pkg)
            .ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    }
    let mk = tmp
        .join("usr/src")
        .join(format!("linux-headers-{kver}"))
        .join("Makefile");
    let text = fs::read_to_string(&mk).map_err(|e| format!("read {}: {e}", mk.display()))?;
    let fixed = text.replace("/usr/src/", &format!("{}/usr/src/", root.display()));
    fs::write(&mk, fixed).map_err(|e| format!("write {}: {e}", mk.display()))?;
    fs::write(tmp.join(".unpacked"), debs_wanted.join("\n"))
        .map_err(|e| format!("write marker: {e}"))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root).map_err(|e| format!("rename to {}: {e}", root.display()))?;
    Ok(dir)
}

/// The guest kernel: `linux-image-KV` (6.x: boot/vmlinuz-KV) or, when that is only a meta
/// package (7.x), `linux-binary-KV` (usr/lib/modules/KV/vmlinuz), fetched with `fetch` into
/// target/vm-cache/debs and unpacked with dpkg-deb under target/vm-cache/kernel/KV.
fn kernel_image(
    cache: &Path,
    kver: &str,
    fetch: &mut dyn FnMut(&str, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = cache.join("kernel").join(kver);
    let vmlinuz_in = |r: &Path| {
        [
            r.join("boot").join(format!("vmlinuz-{kver}")),
            r.join("usr/lib/modules").join(kver).join("vmlinuz"),
        ]
        .into_iter()
        .find(|p| p.is_file())
    };
    if let Some(v) = vmlinuz_in(&root) {
        return Ok(v);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("mkdir {}: {e}", debs.display()))?;
    let tmp = cache.join("kernel").join(format!(".{kver}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    for pkg in [
        format!("linux-image-{kver}"),
        format!("linux-binary-{kver}"),
    ] {
        if find_deb(&debs, &pkg).is_none() {
            fetch(&pkg, &debs)?;
        }
        let deb = find_deb(&debs, &pkg)
            .ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        if vmlinuz_in(&tmp).is_some() {
            let _ = fs::remove_dir_all(&root);
            fs::rename(&tmp, &root).map_err(|e| format!("rename to {}: {e}", root.display()))?;
            return vmlinuz_in(&root).ok_or_else(|| format!("{} vanished", root.display()));
        }
    }
    Err(format!(
        "neither linux-image-{kver} nor linux-binary-{kver} holds boot/vmlinuz-{kver} or usr/lib/modules/{kver}/vmlinuz"
    ))
}

pub const FIXTURE_MODULES: &[&str] = &["pmod", "pmod5", "fixture_a", "fixture_b", "plainmod"];

/// Where kbuild runs for a kernel.
enum Builder {
    /// `make -C HEADERS` on the host.
    Host(PathBuf),
    /// `make -C /usr/src/linux-headers-KV` in the trixie chroot.
    Chroot(PathBuf),
}

/// Builds kmod-fixture into target/vm-cache/kmod/KV (in the chroot: in /root/staprun-kmod/KV
/// there, the .ko files then copied out).
fn build_fixture(cache: &Path, kver: &str, builder: &Builder) -> Result<PathBuf> {
    let src = workspace_root().join("kmod-fixture");
    let dir = cache.join("kmod").join(kver);
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let build_dir = match builder {
        Builder::Host(_) => dir.clone(),
        Builder::Chroot(root) => root.join("root/staprun-kmod").join(kver),
    };
    fs::create_dir_all(&build_dir).map_err(|e| format!("mkdir {}: {e}", build_dir.display()))?;
    for e in fs::read_dir(&src).map_err(|e| format!("read {}: {e}", src.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".c") || name.ends_with(".h") || name == "Kbuild" || name == "Makefile" {
            let dst = build_dir.join(&name);
            // Copy only on change so make's timestamps stay meaningful.
            if fs::read(&p).ok() != fs::read(&dst).ok() {
                fs::copy(&p, &dst).map_err(|e| format!("copy {}: {e}", p.display()))?;
            }
        }
    }
    let (mut cmd, headers) = match builder {
        Builder::Host(headers) => {
            let mut c = Command::new("make");
            c.arg("-C")
                .arg(headers)
                .arg(format!("M={}", build_dir.display()))
                .arg("modules");
            (c, headers.display().to_string())
        }
        Builder::Chroot(root) => {
            let h = format!("/usr/src/linux-headers-{kver}");
            let m = format!("M=/root/staprun-kmod/{kver}");
            (
                in_chroot(root, &["make", "-C", &h, &m, "modules"]),
                format!("{h} in {}", root.display()),
            )
        }
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "building kmod-fixture against {headers} failed:\n{log}"
        ));
    }
    if log.contains("warning:") {
        eprintln!("{log}");
    }
    for m in FIXTURE_MODULES {
        let ko = build_dir.join(format!("{m}.ko"));
        if !ko.is_file() {
            return Err(format!(
                "kmod-fixture build produced no {m}.ko in {}",
                build_dir.display()
            ));
        }
        if build_dir != dir {
            fs::copy(&ko, dir.join(format!("{m}.ko")))
                .map_err(|e| format!("copy {}: {e}", ko.display()))?;
        }
    }
    Ok(dir)
}

fn cargo_static(packages: &[&str], extra: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(extra)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(workspace_root());
    status(&mut cmd)
}

fn release_bin(name: &str) -> PathBuf {
    vm::target_dir().join(TARGET).join("release").join(name)
}

fn static_binary(name: &str) -> Result<Vec<u8>> {
    let p = release_bin(name);
    if !is_static_elf(&p)? {
        return Err(format!(
            "{} is dynamically linked; it must be built with -C target-feature=+crt-static",
            p.display()
        ));
    }
    fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))
}

fn passwd() -> String {
    let mut s = String::from("root:x:0:0:root:/root:/bin/sh\n");
    for (name, uid) in [
        ("alice", 1001),
        ("bob", 1002),
        ("sam", 1003),
        ("carol", 1004),
    ] {
        s.push_str(&format!(
            "{name}:x:{uid}:{uid}:{name}:/home/{name}:/bin/sh\n"
        ));
    }
    s.push_str("nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
    s
}

fn group() -> String {
    format!(
        "root:x:0:\nstapusr:x:{STAPUSR}:alice,bob,sam\nstapsys:x:{STAPSYS}:sam\nstapdev:x:{STAPDEV}:bob\n\
         alice:x:1001:\nbob:x:1002:\nsam:x:1003:\ncarol:x:1004:\nnogroup:x:65534:\n"
    )
}

struct Image {
    agent: Vec<u8>,
    product: Option<(Vec<u8>, Vec<u8>)>,
    kmod_dir: PathBuf,
}

fn initramfs(img: &Image, out: &Path) -> Result<()> {
    let mut e = vec![Entry::dir(".", 0o755)];
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/libexec",
        "usr/libexec/staprun",
        "usr/lib",
        "etc",
        "dev",
        "proc",
        "sys",
        "run",
        "lib",
        "lib/modules",
        "var",
        "fixtures",
        "home",
    ] {
        e.push(Entry::dir(d, 0o755));
    }
    e.push(Entry::dir("tmp", 0o1777));
    e.push(Entry::dir("root", 0o700));
    for (name, uid) in [
        ("alice", 1001),
        ("bob", 1002),
        ("sam", 1003),
        ("carol", 1004),
    ] {
        e.push(Entry::dir(&format!("home/{name}"), 0o700).owner(uid, uid));
    }
    e.push(Entry::chardev("dev/console", 0o600, 5, 1));
    e.push(Entry::chardev("dev/null", 0o666, 1, 3));
    e.push(Entry::file("etc/passwd", 0o644, passwd().into_bytes()));
    e.push(Entry::file("etc/group", 0o644, group().into_bytes()));
    e.push(Entry::file("etc/hostname", 0o644, b"vmtest\n".to_vec()));

    let busybox = fs::read("/bin/busybox").map_err(|e| format!("read /bin/busybox: {e}"))?;
    e.push(Entry::file("bin/busybox", 0o755, busybox));
    let list = output(Command::new("/bin/busybox").arg("--list-full"))?;
    let mut seen = std::collections::BTreeSet::new();
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let applet = applet.trim_start_matches('/');
        if applet == "bin/busybox"
            || applet == "init"
            || applet == "linuxrc"
            || !seen.insert(applet.to_owned())
        {
            continue;
        }
        let parent = Path::new(applet)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("");
        if !["bin", "sbin", "usr/bin", "usr/sbin"].contains(&parent) {
            continue;
        }
        e.push(Entry::symlink(applet, "/bin/busybox"));
    }
    e.push(Entry::file("init", 0o755, img.agent.clone()));
    if let Some((staprun, stapio)) = &img.product {
        e.push(Entry::file("usr/bin/staprun", 0o4110, staprun.clone()).owner(0, STAPUSR));
        e.push(Entry::file(
            "usr/libexec/staprun/stapio",
            0o755,
            stapio.clone(),
        ));
    }
    for m in FIXTURE_MODULES {
        let p = img.kmod_dir.join(format!("{m}.ko"));
        let data = fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        e.push(Entry::file(&format!("fixtures/{m}.ko"), 0o644, data));
    }
    let tmp = out.with_extension("cpio.tmp");
    let mut f = std::io::BufWriter::new(
        fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?,
    );
    cpio::write(&mut f, &e).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, out).map_err(|e| format!("rename {}: {e}", out.display()))
}

fn probe_accel(art: &vm::Artifacts) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    if !has_virt || !Path::new("/dev/kvm").exists() {
        return "tcg".into();
    }
    let mut kvm = art.clone();
    kvm.accel = "kvm".into();
    let mut spec = vm::BootSpec::new("boot");
    spec.timeout = Duration::from_secs(30);
    // One boot: a probe that fails is not retried.
    match vm::boot_once(&kvm, &spec) {
        Ok(run) if run.assert_passed().is_ok() => "kvm".into(),
        _ => {
            eprintln!("xtask: KVM probe boot failed; using TCG");
            "tcg".into()
        }
    }
}

/// The QEMU CPU model for a kernel under TCG. 6.12 gets `max,cx16=off`: with CMPXCHG16B,
/// QEMU 7.2's TCG (bookworm's) corrupts EFLAGS in 6.12's SLUB fast path (a per-CPU
/// `cmpxchg16b %gs:`), and most boots die early in a double fault or an exc_debug WARN
/// (6 of 8 boots with `max`, 0 of 10 with `max,cx16=off`; 6.1 and 7.x boot fine with `max`).
fn tcg_cpu(kver: &str) -> &'static str {
    if has_prefix(kver, "6.12") {
        "max,cx16=off"
    } else {
        "max"
    }
}

/// Runs every preparation step. Returns the artifacts the tests will use.
pub fn prepare(opts: &Options) -> Result<vm::Artifacts> {
    let t0 = Instant::now();
    let cache = vm::cache_dir();
    fs::create_dir_all(&cache).map_err(|e| format!("mkdir {}: {e}", cache.display()))?;
    let mut apt = Apt { updated: false };
    step("host tools", || host_tools(&mut apt))?;
    let wanted = opts
        .kernel
        .clone()
        .or_else(|| std::env::var(vm::KERNEL_VAR).ok());
    let (kver, suite, chroot) = step("resolve kernel", || {
        resolve_kernel(&mut apt, &cache, wanted.as_deref())
    })?;
    eprintln!("xtask: guest kernel {kver} ({})", suite.name());
    let (builder, vmlinuz) = match (suite, chroot) {
        (Suite::Trixie, Some(mut ch)) => {
            step("kernel headers", || ch.headers(&kver))?;
            let vmlinuz = step("kernel image", || {
                kernel_image(&cache, &kver, &mut |pkg, debs| ch.download(pkg, debs))
            })?;
            (Builder::Chroot(ch.root), vmlinuz)
        }
        (Suite::Trixie, None) => return Err("internal: no trixie chroot".into()),
        (s, _) => {
            let hdrs = step("kernel headers", || {
                if s == Suite::Bookworm {
                    headers(&mut apt, &kver)
                } else {
                    unpacked_headers(&mut apt, &cache, &kver)
                }
            })?;
            let vmlinuz = step("kernel image", || {
                kernel_image(&cache, &kver, &mut |pkg, debs| {
                    host_download(&mut apt, pkg, debs)
                })
            })?;
            (Builder::Host(hdrs), vmlinuz)
        }
    };
    let kmod_dir = step("kmod-fixture", || build_fixture(&cache, &kver, &builder))?;
    step("vm-agent (static)", || {
        cargo_static(&["vm"], &["--bin", "vm-agent"])
    })?;
    let agent = static_binary("vm-agent")?;
    let product = if opts.infra_only {
        eprintln!("xtask: --infra-only: staprun/stapio left out of the initramfs");
        None
    } else {
        step("staprun + stapio (static)", || {
            cargo_static(&["staprun", "stapio"], &[]).map_err(|e| {
                format!("the product binaries staprun/stapio do not build (yet?): {e}; the guest tests need them (use --infra-only to test only the harness)")
            })
        })?;
        let missing: Vec<String> = ["staprun", "stapio"]
            .iter()
            .map(|n| release_bin(n))
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "product binaries missing after the build: {}: packages staprun/stapio must produce binaries `staprun` and `stapio`",
                missing.join(", ")
            ));
        }
        Some((static_binary("staprun")?, static_binary("stapio")?))
    };
    let initrd = cache.join(format!("initramfs-{kver}.cpio"));
    step("initramfs", || {
        initramfs(
            &Image {
                agent,
                product,
                kmod_dir,
            },
            &initrd,
        )
    })?;
    let mut art = vm::Artifacts {
        kver: kver.clone(),
        kernel: vmlinuz,
        initrd,
        accel: "tcg".into(),
        cpu: tcg_cpu(&kver).into(),
        product: !opts.infra_only,
    };
    art.accel = probe_accel(&art);
    let env = format!(
        "kver={}\nkernel={}\ninitrd={}\naccel={}\ncpu={}\nproduct={}\n",
        art.kver,
        art.kernel.display(),
        art.initrd.display(),
        art.accel,
        art.cpu,
        if opts.infra_only { "no" } else { "yes" }
    );
    // Every kernel gets its own env file (VMTEST_KERNEL selects it); vm-test.env, which the
    // tests read by default, only ever names the default suite's kernel.
    let env_path = cache.join(vm::kernel_env_name(&kver));
    fs::write(&env_path, &env).map_err(|e| format!("write {}: {e}", env_path.display()))?;
    if suite == Suite::Bookworm {
        let default = cache.join(vm::ENV_FILE);
        fs::write(&default, &env).map_err(|e| format!("write {}: {e}", default.display()))?;
    }
    eprintln!(
        "xtask: vm-prepare done in {:.1}s -> {}",
        t0.elapsed().as_secs_f64(),
        env_path.display()
    );
    Ok(art)
}
