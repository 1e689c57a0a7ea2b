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
//!
//! Which kernel, whatever state apt's lists are in (fresh, stale, empty): see
//! [`crate::aptstate`]. A kernel prepared completely before is used without apt-get; when a
//! kernel resolved from lists not updated in this run cannot be fetched, the lists are updated
//! and the kernel resolved again. Every file and directory of the cache is written under a
//! temporary name (`.NAME.tmp-PID`) and renamed into place when complete, so an interrupted run
//! leaves nothing that a later one takes as done; the next run removes such leftovers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;
use crate::aptstate::{self, Failure, Next, Situation, Want, has_prefix};
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

/// `apt-get update`, with `opts` (`-o` options; none for the host's own lists).
fn apt_update(opts: &[String]) -> Result<()> {
    eprintln!("xtask: apt-get update");
    status(Command::new("apt-get").args(opts).args([
        "update",
        "-qq",
        "-o",
        "DPkg::Lock::Timeout=600",
    ]))
}

/// The host's apt lists directory (`Dir::State::Lists`).
fn host_lists_dir() -> PathBuf {
    output(Command::new("apt-config").args(["shell", "D", "Dir::State::Lists/d"]))
        .ok()
        .and_then(|s| {
            let v = s.trim().strip_prefix("D='")?.strip_suffix('\'')?.to_owned();
            (!v.is_empty()).then(|| PathBuf::from(v))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/apt/lists"))
}

/// Whether an apt lists directory holds no package index (a fresh machine, or lists removed).
fn lists_empty_in(dir: &Path) -> bool {
    let names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    aptstate::lists_empty(names.iter().map(String::as_str))
}

/// An earlier dpkg run was interrupted (dpkg then refuses to go on until `dpkg --configure -a`).
fn dpkg_interrupted() -> bool {
    fs::read_dir("/var/lib/dpkg/updates")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
}

impl Apt {
    pub fn update(&mut self) -> Result<()> {
        if !self.updated {
            apt_update(&[])?;
            self.updated = true;
        }
        Ok(())
    }

    /// Installs packages as root, or fails with the one command to run. Empty lists are
    /// updated first; a failed install is tried again after `dpkg --configure -a` when an
    /// earlier dpkg run was interrupted, and after `apt-get update` (stale lists: 404s).
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
        if lists_empty_in(&host_lists_dir()) {
            self.update()?;
        }
        if try_install().is_ok() {
            return Ok(());
        }
        if dpkg_interrupted() {
            eprintln!("xtask: an earlier dpkg run was interrupted: dpkg --configure -a");
            status(
                Command::new("dpkg")
                    .args(["--configure", "-a"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            if try_install().is_ok() {
                return Ok(());
            }
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

/// The suite a kernel ABI comes from: `+deb13` or major >= 7: trixie; `6.1.*`: bookworm;
/// otherwise bookworm-backports.
fn abi_suite(kver: &str) -> Suite {
    if kver.contains("deb13") || major(kver) >= 7 {
        Suite::Trixie
    } else if kver.starts_with("6.1.") {
        Suite::Bookworm
    } else {
        Suite::BookwormBackports
    }
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
        return Ok(Wanted::Abi {
            kver: w.to_owned(),
            suite: abi_suite(w),
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

/// A deb822 sources list of the host's `bookworm-updates` and `bookworm-security` entries
/// (main only), for a bookworm chroot that needs the point-release and security packages the
/// host has (its kernel's headers): no mirror is named in this code.
pub fn bookworm_update_sources() -> Result<String> {
    let mut text = String::new();
    for s in host_apt_sources() {
        let suites: Vec<&String> = s
            .suites
            .iter()
            .filter(|x| *x == "bookworm-updates" || *x == "bookworm-security")
            .collect();
        if suites.is_empty() || s.uris.is_empty() {
            continue;
        }
        text.push_str(&format!(
            "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\n",
            s.uris.join(" "),
            suites
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        if let Some(k) = &s.signed_by {
            text.push_str(&format!("Signed-By: {k}\n"));
        }
        text.push('\n');
    }
    if text.is_empty() {
        return Err(
            "no bookworm-updates or bookworm-security entry in the host's apt sources".into(),
        );
    }
    Ok(text)
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
    // Never half written: a cut-off stanza would break apt for everyone on the host.
    write_atomic(ours, text)?;
    apt.updated = false;
    apt.update()
}

/// apt on the host as the guest kernel's preparation uses it: `apt-cache depends`,
/// `apt-get update` and `apt-get download`. With `lists`, apt reads and updates that lists
/// directory instead of the host's (and writes no package cache): tests point it at a copy of
/// the host's lists, so the host's apt state is never touched.
struct HostApt<'a> {
    apt: &'a mut Apt,
    lists: Option<PathBuf>,
}

impl<'a> HostApt<'a> {
    fn new(apt: &'a mut Apt) -> Self {
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

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(self.opts());
        c
    }

    fn update(&mut self) -> Result<()> {
        if !self.apt.updated {
            apt_update(&self.opts())?;
            self.apt.updated = true;
        }
        Ok(())
    }

    fn lists_empty(&self) -> bool {
        lists_empty_in(&self.lists.clone().unwrap_or_else(host_lists_dir))
    }

    /// The kernel ABI `meta` depends on, from the lists as they are (nothing is updated):
    /// `None` when they do not know `meta`.
    fn listed(&self, meta: &str) -> Option<String> {
        output(self.cmd("apt-cache").args(["depends", meta]))
            .ok()
            .and_then(|t| depends_abi(&t))
    }

    /// `apt-cache depends PKG`, updating the lists first when they are empty, and once more
    /// (as root) when they do not know PKG.
    fn depends(&mut self, pkg: &str) -> Result<String> {
        if self.lists_empty() && is_root() {
            self.update()?;
        }
        let query = |h: &HostApt| output(h.cmd("apt-cache").args(["depends", pkg]));
        match query(self) {
            Ok(s) if !s.trim().is_empty() => Ok(s),
            r if is_root() && !self.apt.updated => {
                self.update()?;
                query(self).map_err(|e| format!("{e} (and before the update: {r:?})"))
            }
            r => r,
        }
    }

    /// `apt-get download PKG` into `debs`: into a temporary directory first, the .deb then
    /// renamed into `debs`, so a .deb there is always whole (an interrupted download leaves
    /// only a temporary directory, removed by a later run). No retry here: when the lists
    /// were stale, the caller updates them and resolves the kernel again.
    fn download(&mut self, pkg: &str, debs: &Path) -> Result<()> {
        let tmp = debs.join(aptstate::tmp_name("download", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
        let got = output(
            self.cmd("apt-get")
                .args(["download", "-q", pkg])
                .current_dir(&tmp),
        )
        .and_then(|_| {
            let deb = find_deb(&tmp, pkg)
                .ok_or_else(|| format!("apt-get download {pkg} left no .deb"))?;
            let to = debs.join(deb.file_name().unwrap_or_default());
            fs::rename(&deb, &to).map_err(|e| format!("rename to {}: {e}", to.display()))
        });
        let _ = fs::remove_dir_all(&tmp);
        got
    }
}

/// Writes `path` through a temporary file renamed into place: it is never seen half written.
fn write_atomic(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    let tmp = tmp_beside(path);
    fs::write(&tmp, data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("rename to {}: {e}", path.display())
    })
}

/// Copies `from` to `to` through a temporary file renamed into place.
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = tmp_beside(to);
    fs::copy(from, &tmp).map_err(|e| format!("copy {}: {e}", from.display()))?;
    fs::rename(&tmp, to).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("rename to {}: {e}", to.display())
    })
}

/// `DIR/.NAME.tmp-PID` for `DIR/NAME`.
fn tmp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(aptstate::tmp_name(&name, std::process::id()))
}

/// Removes what interrupted runs left in the cache: temporary files and directories
/// ([`aptstate::tmp_name`]) whose process is gone, and the `.KV.tmp` directories of
/// earlier versions of this code. Only in directories that hold unpacked packages, built
/// modules and downloads (never a chroot, which may hold mounts).
fn sweep_interrupted(cache: &Path) {
    let mut dirs = vec![
        cache.join("debs"),
        cache.join("kernel"),
        cache.join("headers"),
    ];
    dirs.extend(
        fs::read_dir(cache.join("kmod"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let gone = |name: &str| {
        aptstate::tmp_owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for d in &dirs {
        let legacy = d.ends_with("kernel") || d.ends_with("headers");
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if gone(&name) || (legacy && name.starts_with('.') && name.ends_with(".tmp")) {
                let p = e.path();
                eprintln!(
                    "xtask: removing {} (left by an interrupted run)",
                    p.display()
                );
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }
    // Files only at the top (initramfs and env files written through temporary names, and
    // the `initramfs-KV.cpio.tmp` of earlier versions).
    for e in fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (gone(&name) || name.ends_with(".cpio.tmp")) && e.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = fs::remove_file(e.path());
        }
    }
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
        write_atomic(&path, text)?;
        self.updated = false;
        self.update()
    }

    /// The kernel ABI `meta` depends on, from the chroot's lists as they are.
    fn listed(&self, meta: &str) -> Option<String> {
        output(&mut self.apt_cmd("apt-cache", &["depends", meta]))
            .ok()
            .and_then(|t| depends_abi(&t))
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
        if !chroot_headers_ready(&self.root, kver) {
            self.install(&[&format!("linux-headers-{kver}"), "make", "binutils"])?;
        }
        Ok(())
    }

    /// `apt-get download PKG` in the chroot, the .deb moved to `debs`.
    fn download(&mut self, pkg: &str, debs: &Path) -> Result<()> {
        let script = format!(
            "mkdir -p /{CHROOT_DEBS} && cd /{CHROOT_DEBS} && rm -f -- \"$0\"_*.deb && exec apt-get download -q -o APT::Sandbox::User=root \"$0\""
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
        copy_atomic(&deb, &debs.join(name))?;
        let _ = fs::remove_file(&deb);
        Ok(())
    }
}

/// The headers of `kver` are installed in the trixie chroot at `root`, with make and as.
fn chroot_headers_ready(root: &Path, kver: &str) -> bool {
    root.join("usr/src")
        .join(format!("linux-headers-{kver}"))
        .join("Makefile")
        .is_file()
        && root.join("usr/bin/make").is_file()
        && root.join("usr/bin/as").exists()
}

/// Where the guest kernels of one suite come from, as [`settle`] sees them (the decisions are
/// [`aptstate::next`]'s).
trait KernelSource {
    /// The newest kernel the apt lists name, read as they are (nothing is updated).
    fn listed(&mut self) -> Option<String>;
    /// Whether the lists were updated in this run.
    fn fresh(&self) -> bool;
    fn update(&mut self) -> Result<()>;
    /// Fetches (downloads, installs, unpacks) what kernel `kver` still lacks: its image and
    /// headers. Each part already there is not fetched again.
    fn fetch(&mut self, kver: &str) -> Result<()>;
    /// The kernels of this suite prepared completely (see [`kernel_complete`]).
    fn complete(&mut self) -> Vec<String>;
}

/// Settles which kernel of a suite to use, and fetches what it lacks: a complete prepared
/// kernel is used without apt-get; stale lists are updated and the kernel resolved again when
/// a fetch fails; empty lists are updated first (see [`aptstate`]). `what` names the wanted
/// kernel in messages.
fn settle(src: &mut dyn KernelSource, want: &Want, what: &str) -> Result<String> {
    let mut failed: Vec<Failure> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut update_failed = false;
    // Every fetch or update adds a fact; the decisions end well within this bound.
    for _ in 0..8 {
        let complete = src.complete();
        let listed = match want {
            Want::Exact(_) => None,
            Want::Newest { .. } => src.listed(),
        };
        let fresh = src.fresh();
        let s = Situation {
            want,
            listed: listed.as_deref(),
            fresh,
            cached: &complete,
            failed: &failed,
            update_failed,
        };
        match aptstate::next(&s) {
            Next::Reuse(k) => {
                eprintln!("xtask: guest kernel {k}: prepared already (no apt-get needed)");
                return Ok(k);
            }
            Next::Fallback { kver, because } => {
                eprintln!("xtask: WARNING: {because}: using the kernel prepared before, {kver}");
                return Ok(kver);
            }
            Next::Fetch(k) => {
                let lists = if fresh {
                    "apt lists updated in this run"
                } else {
                    "apt lists as they were"
                };
                eprintln!("xtask: guest kernel {k} ({lists}): fetching what is missing");
                match src.fetch(&k) {
                    Ok(()) => return Ok(k),
                    Err(e) => {
                        eprintln!("xtask: fetching kernel {k} failed: {e}");
                        errors.push(format!("{k}: {}", gist(&e)));
                        failed.push(Failure { kver: k, fresh });
                    }
                }
            }
            Next::Update => {
                if let Err(e) = src.update() {
                    eprintln!("xtask: apt-get update failed: {e}");
                    errors.push(format!("apt-get update: {}", gist(&e)));
                    update_failed = true;
                }
            }
            Next::Fail(why) => {
                let root = if is_root() {
                    ""
                } else {
                    " (not root: apt-get update and install need root)"
                };
                let seen = if errors.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", errors.join("; "))
                };
                return Err(format!("cannot prepare {what}: {why}{root}{seen}"));
            }
        }
    }
    Err(format!(
        "cannot prepare {what}: no decision after 8 steps [{}]",
        errors.join("; ")
    ))
}

/// The line of a (multi-line) command error that says what went wrong: apt's last `E:` line,
/// else the first line.
fn gist(e: &str) -> &str {
    e.lines()
        .rev()
        .find(|l| l.starts_with("E: "))
        .or_else(|| e.lines().next())
        .unwrap_or("")
}

/// Bookworm and bookworm-backports kernels: apt on the host.
struct HostKernels<'a, 'b> {
    host: HostApt<'a>,
    cache: &'b Path,
    suite: Suite,
    /// linux-image-cloud-amd64[/SUITE]
    meta: String,
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

/// Trixie kernels: apt in the trixie chroot.
struct ChrootKernels<'a> {
    ch: &'a mut Chroot,
    cache: &'a Path,
    meta: String,
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
        complete_kernels(self.cache, Suite::Trixie, Some(&self.ch.root))
    }
}

/// The kernels of `suite` under target/vm-cache/kernel that are prepared completely.
fn complete_kernels(cache: &Path, suite: Suite, chroot: Option<&Path>) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(cache.join("kernel"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|k| !k.starts_with('.') && abi_suite(k) == suite)
        .filter(|k| kernel_complete(cache, k, suite, chroot))
        .collect();
    out.sort_by(|a, b| aptstate::abi_cmp(a, b));
    out
}

/// A kernel is prepared completely when its image is unpacked
/// (target/vm-cache/kernel/KV), its headers are there (bookworm: the linux-headers-KV package
/// installed, not just some of its files; bookworm-backports: unpacked, with the marker and the
/// tools they need installed; trixie: installed in the chroot) and the fixture modules are built
/// for it (whole ELF files whose vermagic names KV). Nothing of it needs apt then.
fn kernel_complete(cache: &Path, kver: &str, suite: Suite, chroot: Option<&Path>) -> bool {
    vmlinuz_in(&cache.join("kernel").join(kver), kver).is_some()
        && match suite {
            Suite::Bookworm => bookworm_headers_ready(kver),
            Suite::BookwormBackports => backports_headers_ready(cache, kver),
            Suite::Trixie => chroot.is_some_and(|r| chroot_headers_ready(r, kver)),
        }
        && fixtures_built(&cache.join("kmod").join(kver), kver)
}

/// Every fixture module in `dir` is a whole module built for `kver`.
fn fixtures_built(dir: &Path, kver: &str) -> bool {
    FIXTURE_MODULES
        .iter()
        .all(|m| fixtures_built_one(dir, m, kver))
}

/// What vm-prepare asked for: the suite, the rule, what it is called in messages.
fn wanted_kernel(wanted: Option<&str>) -> Result<(Suite, Want, String)> {
    Ok(match parse_wanted(wanted)? {
        Wanted::Abi { kver, suite } => {
            let what = format!("linux-image-{kver}");
            (suite, Want::Exact(kver), what)
        }
        Wanted::Newest {
            suite,
            apt_suite,
            prefix,
        } => {
            let meta = match apt_suite {
                Some(s) => format!("linux-image-cloud-amd64/{s}"),
                None => "linux-image-cloud-amd64".to_owned(),
            };
            (suite, Want::Newest { prefix }, meta)
        }
    })
}

/// The guest kernel for `--kernel` (see [`settle`]), with where its fixture is built (opening
/// the trixie chroot, or adding bookworm-backports to the host's apt sources, when that suite
/// needs it).
fn guest_kernel(
    apt: &mut Apt,
    cache: &Path,
    wanted: Option<&str>,
) -> Result<(String, Suite, Builder)> {
    let (suite, want, meta) = wanted_kernel(wanted)?;
    let what = match &want {
        Want::Exact(_) => meta.clone(),
        Want::Newest { .. } => format!("the newest {meta} (or pass --kernel ABI)"),
    };
    if suite == Suite::Trixie {
        let mut ch = step("trixie chroot", || Chroot::open(apt, cache))?;
        let kver = settle(
            &mut ChrootKernels {
                ch: &mut ch,
                cache,
                meta,
            },
            &want,
            &what,
        )?;
        return Ok((kver, suite, Builder::Chroot(ch.root)));
    }
    let kver = settle(
        &mut HostKernels {
            host: HostApt::new(apt),
            cache,
            suite,
            meta,
        },
        &want,
        &what,
    )?;
    let hdrs = if suite == Suite::Bookworm {
        PathBuf::from(format!("/usr/src/linux-headers-{kver}"))
    } else {
        backports_headers_root(cache, &kver).join(format!("usr/src/linux-headers-{kver}"))
    };
    Ok((kver, suite, Builder::Host(hdrs)))
}

/// The linux-headers-KV package is installed on the host (dpkg says so: an install cut short
/// leaves files but no "install ok installed").
fn bookworm_headers_ready(kver: &str) -> bool {
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
        return Err(format!(
            "{} still missing after installing linux-headers-{kver}",
            dir.display()
        ));
    }
    Ok(dir)
}

/// target/vm-cache/headers/KV.
fn backports_headers_root(cache: &Path, kver: &str) -> PathBuf {
    cache.join("headers").join(kver)
}

/// Marker files in target/vm-cache/headers/KV: the packages unpacked there (written last, in
/// the temporary directory, before it is renamed into place), and the host tools they need
/// (written once those are installed).
const UNPACKED: &str = ".unpacked";
const TOOLS: &str = ".tools";

/// A bookworm-backports kernel's headers are unpacked, and the tools they need installed.
fn backports_headers_ready(cache: &Path, kver: &str) -> bool {
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
        fs::create_dir_all(&debs).map_err(|e| format!("mkdir {}: {e}", debs.display()))?;
        let tmp = cache
            .join("headers")
            .join(aptstate::tmp_name(kver, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
        let unpacked = (|| {
            for pkg in &debs_wanted {
                unpack_deb(&debs, pkg, &tmp, &mut |p, d| host.download(p, d))?;
            }
            let mk = tmp
                .join("usr/src")
                .join(format!("linux-headers-{kver}"))
                .join("Makefile");
            let text =
                fs::read_to_string(&mk).map_err(|e| format!("read {}: {e}", mk.display()))?;
            let fixed = text.replace("/usr/src/", &format!("{}/usr/src/", root.display()));
            fs::write(&mk, fixed).map_err(|e| format!("write {}: {e}", mk.display()))?;
            fs::write(tmp.join(UNPACKED), debs_wanted.join("\n"))
                .map_err(|e| format!("write marker: {e}"))?;
            let _ = fs::remove_dir_all(&root);
            fs::rename(&tmp, &root).map_err(|e| format!("rename to {}: {e}", root.display()))
        })();
        if unpacked.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        unpacked?;
    }
    write_atomic(&root.join(TOOLS), tools.join("\n"))?;
    Ok(dir)
}

/// The kernel image in an unpacked image package: boot/vmlinuz-KV (6.x) or
/// usr/lib/modules/KV/vmlinuz (7.x's linux-binary-KV).
fn vmlinuz_in(root: &Path, kver: &str) -> Option<PathBuf> {
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
fn unpack_deb(
    debs: &Path,
    pkg: &str,
    into: &Path,
    fetch: &mut dyn FnMut(&str, &Path) -> Result<()>,
) -> Result<()> {
    let unpack = |deb: &Path| output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into));
    if let Some(deb) = find_deb(debs, pkg) {
        match unpack(&deb) {
            Ok(_) => return Ok(()),
            Err(e) => {
                eprintln!(
                    "xtask: {} does not unpack, fetching it again: {}",
                    deb.display(),
                    e.lines().last().unwrap_or("")
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
fn kernel_image(
    cache: &Path,
    kver: &str,
    fetch: &mut dyn FnMut(&str, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = cache.join("kernel").join(kver);
    if let Some(v) = vmlinuz_in(&root, kver) {
        return Ok(v);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("mkdir {}: {e}", debs.display()))?;
    let tmp = cache
        .join("kernel")
        .join(aptstate::tmp_name(kver, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    let got = (|| {
        for pkg in [
            format!("linux-image-{kver}"),
            format!("linux-binary-{kver}"),
        ] {
            unpack_deb(&debs, &pkg, &tmp, fetch)?;
            if vmlinuz_in(&tmp, kver).is_some() {
                let _ = fs::remove_dir_all(&root);
                fs::rename(&tmp, &root)
                    .map_err(|e| format!("rename to {}: {e}", root.display()))?;
                return vmlinuz_in(&root, kver)
                    .ok_or_else(|| format!("{} vanished", root.display()));
            }
        }
        Err(format!(
            "neither linux-image-{kver} nor linux-binary-{kver} holds boot/vmlinuz-{kver} or usr/lib/modules/{kver}/vmlinuz"
        ))
    })();
    if got.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    got
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
/// there, the .ko files then copied out, each through a temporary file). A module that is not
/// whole or not for KV afterwards (make takes a .ko cut short by an interrupted build as up to
/// date) is removed and made again, once.
fn build_fixture(cache: &Path, kver: &str, builder: &Builder) -> Result<PathBuf> {
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
        Some(m) => Err(format!(
            "kmod-fixture: {}/{m}.ko is not a whole module built for {kver}",
            dir.display()
        )),
    }
}

fn fixtures_built_one(dir: &Path, m: &str, kver: &str) -> bool {
    fs::read(dir.join(format!("{m}.ko"))).is_ok_and(|b| aptstate::module_built_for(&b, kver))
}

/// One `make modules` of kmod-fixture for KV (see [`build_fixture`]).
fn make_fixture(cache: &Path, kver: &str, builder: &Builder) -> Result<PathBuf> {
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
            copy_atomic(&ko, &dir.join(format!("{m}.ko")))?;
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

pub fn release_bin(name: &str) -> PathBuf {
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
    let tmp = tmp_beside(out);
    let mut f = std::io::BufWriter::new(
        fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?,
    );
    // A write error (or one only seen at the flush) never renames a cut-off archive into place.
    let written = cpio::write(&mut f, &e)
        .and_then(|()| std::io::Write::flush(&mut f))
        .map_err(|e| format!("write {}: {e}", tmp.display()));
    drop(f);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
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
    sweep_interrupted(&cache);
    let mut apt = Apt { updated: false };
    step("host tools", || host_tools(&mut apt))?;
    let wanted = opts
        .kernel
        .clone()
        .or_else(|| std::env::var(vm::KERNEL_VAR).ok());
    let (kver, suite, builder) = step("guest kernel (image and headers)", || {
        guest_kernel(&mut apt, &cache, wanted.as_deref())
    })?;
    eprintln!("xtask: guest kernel {kver} ({})", suite.name());
    let vmlinuz = vmlinuz_in(&cache.join("kernel").join(&kver), &kver).ok_or_else(|| {
        format!(
            "internal: no kernel image under {}",
            cache.join("kernel").join(&kver).display()
        )
    })?;
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
    write_atomic(&env_path, &env)?;
    if suite == Suite::Bookworm {
        write_atomic(&cache.join(vm::ENV_FILE), &env)?;
    }
    eprintln!(
        "xtask: vm-prepare done in {:.1}s -> {}",
        t0.elapsed().as_secs_f64(),
        env_path.display()
    );
    Ok(art)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel images only, through a [`HostApt`] that may read another lists directory:
    /// nothing is installed on the host.
    struct ImageOnly<'a, 'b> {
        host: HostApt<'a>,
        cache: &'b Path,
    }

    impl KernelSource for ImageOnly<'_, '_> {
        fn listed(&mut self) -> Option<String> {
            self.host.listed("linux-image-cloud-amd64")
        }
        fn fresh(&self) -> bool {
            self.host.apt.updated
        }
        fn update(&mut self) -> Result<()> {
            self.host.update()
        }
        fn fetch(&mut self, kver: &str) -> Result<()> {
            let host = &mut self.host;
            kernel_image(self.cache, kver, &mut |p, d| host.download(p, d)).map(|_| ())
        }
        fn complete(&mut self) -> Vec<String> {
            fs::read_dir(self.cache.join("kernel"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|k| vmlinuz_in(&self.cache.join("kernel").join(k), k).is_some())
                .collect()
        }
    }

    fn resolve(lists: &Path, cache: &Path) -> (Result<String>, bool) {
        let mut apt = Apt { updated: false };
        let mut src = ImageOnly {
            host: HostApt {
                apt: &mut apt,
                lists: Some(lists.to_path_buf()),
            },
            cache,
        };
        let r = settle(&mut src, &Want::Newest { prefix: None }, "test kernel");
        (r, apt.updated)
    }

    /// (name, size, modification time) of every file in the host's lists directory.
    fn lists_state(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.modified().ok()?,
                ))
            })
            .collect();
        v.sort();
        v
    }

    /// A Release file as an older one: every index hash zeroed.
    fn stale_release(text: &str) -> String {
        text.lines()
            .map(|l| {
                let hash = l
                    .strip_prefix(' ')
                    .and_then(|r| r.split_once(' '))
                    .map(|(h, _)| h)
                    .filter(|h| {
                        [32, 40, 64].contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit())
                    });
                match hash {
                    Some(h) => l.replacen(h, &"0".repeat(h.len()), 1),
                    None => l.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    /// The issue, for real: lists months old name a cloud kernel whose packages are gone
    /// from the mirror (404). The host's lists are copied to a temporary directory and the
    /// current ABI rewritten in them to an older one, so apt resolves and tries to download
    /// that; then the lists (that copy only) must be updated and the kernel resolved again.
    /// Then: empty lists with the kernel prepared use it without apt; empty lists without it
    /// are updated first. The host's own lists are compared before and after.
    ///
    /// Needs root, the network and a bookworm host:
    /// `cargo test -p xtask -- --ignored --nocapture stale_empty_and_fresh_lists_for_real`.
    #[test]
    #[ignore = "needs root, the network and a bookworm host"]
    fn stale_empty_and_fresh_lists_for_real() {
        assert!(
            is_root(),
            "run as root (apt-get update into a temporary lists directory)"
        );
        let host_lists = host_lists_dir();
        let before = lists_state(&host_lists);
        let base = std::env::temp_dir().join(format!("xtask-stale-lists-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (lists, cache) = (base.join("lists"), base.join("cache"));
        fs::create_dir_all(lists.join("partial")).unwrap();
        let mut apt = Apt { updated: false };
        let current = HostApt::new(&mut apt)
            .listed("linux-image-cloud-amd64")
            .expect("the host's lists name a cloud kernel");
        // 6.1.0-57-cloud-amd64 -> 6.1.0-48-cloud-amd64
        let (head, rest) = current.split_once('-').unwrap();
        let (n, tail) = rest.split_once('-').unwrap();
        let n: u32 = n.parse().unwrap();
        let stale = format!("{head}-{}-{tail}", n.saturating_sub(9));
        eprintln!("current {current}, stale lists will name {stale}");
        for e in fs::read_dir(&host_lists).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if !name.contains("_Packages") && !name.ends_with("Release") {
                continue;
            }
            let (plain, text) = match name.rsplit_once('.') {
                Some((stem, z @ ("lz4" | "gz" | "xz"))) => {
                    let tool = match z {
                        "lz4" => "lz4",
                        "gz" => "gzip",
                        _ => "xz",
                    };
                    let t = output(Command::new(tool).arg("-dc").arg(&p)).unwrap();
                    (stem.to_owned(), t)
                }
                _ => (name.clone(), fs::read_to_string(&p).unwrap()),
            };
            let text = if plain.contains("_Packages") {
                text.replace(&current, &stale)
            } else {
                // Old Release files list other index hashes (apt takes an index whose hash
                // did not change between the old and the new Release file as up to date).
                stale_release(&text)
            };
            fs::write(lists.join(plain), text).unwrap();
        }
        let stale_view = HostApt {
            apt: &mut Apt { updated: false },
            lists: Some(lists.clone()),
        }
        .listed("linux-image-cloud-amd64");
        assert_eq!(stale_view.as_deref(), Some(stale.as_str()));

        // Stale lists: 404, update, resolve again.
        let (r, updated) = resolve(&lists, &cache);
        assert_eq!(r.as_deref(), Ok(current.as_str()), "{r:?}");
        assert!(updated);
        assert!(vmlinuz_in(&cache.join("kernel").join(&current), &current).is_some());
        let leftovers: Vec<_> = ["kernel", "debs"]
            .iter()
            .flat_map(|d| fs::read_dir(cache.join(d)).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Empty lists, kernel prepared: used without apt (the lists stay empty).
        let empty = base.join("empty-lists");
        fs::create_dir_all(empty.join("partial")).unwrap();
        let (r, updated) = resolve(&empty, &cache);
        assert_eq!(r.as_deref(), Ok(current.as_str()), "{r:?}");
        assert!(!updated && lists_empty_in(&empty));

        // Empty lists, nothing prepared (the .deb is kept): updated first.
        fs::remove_dir_all(cache.join("kernel")).unwrap();
        let (r, updated) = resolve(&empty, &cache);
        assert_eq!(r.as_deref(), Ok(current.as_str()), "{r:?}");
        assert!(updated && !lists_empty_in(&empty));

        assert_eq!(before, lists_state(&host_lists), "the host's lists changed");
        let _ = fs::remove_dir_all(&base);
    }
}
