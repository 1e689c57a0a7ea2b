//! Which guest kernel a run uses, and fetching what it lacks: its image (unpacked under
//! target/vm-cache/kernel/KV) and headers (bookworm: installed on the host with apt;
//! bookworm-backports: unpacked under target/vm-cache/headers/KV; trixie: installed in a
//! debootstrapped chroot).
//!
//! Which kernel, whatever state apt's lists are in (fresh, stale, empty): see [`aptstate`]. A
//! kernel prepared completely before is used without apt-get; when a kernel resolved from lists
//! not updated in this run cannot be fetched, the lists are updated and the kernel resolved
//! again.

pub mod aptstate;
mod host;
mod image;
#[cfg(test)]
mod tests;
mod trixie;

use std::fs;
use std::path::{Path, PathBuf};

use crate::apt::Apt;
use crate::cmd::{is_root, step};
use crate::error::{Result, bail};
use aptstate::{Failure, Next, Situation, Want};
pub use image::vmlinuz_in;

use super::fixture::{Builder, fixtures_built};
use host::{
    HostApt, HostKernels, backports_headers_ready, backports_headers_root, bookworm_headers_ready,
};
use trixie::{ChrootKernels, TrixieChroot, chroot_headers_ready};

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
        _ => bail!(
            "--kernel {w}: neither a kernel ABI (e.g. 6.12.95+deb12-cloud-amd64) nor an alias ({})",
            KERNEL_ALIASES
                .iter()
                .map(|(a, s)| format!("{a} = newest of {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
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
                        errors.push(format!("{k}: {}", gist(&e.to_string())));
                        failed.push(Failure { kver: k, fresh });
                    }
                }
            }
            Next::Update => {
                if let Err(e) = src.update() {
                    eprintln!("xtask: apt-get update failed: {e}");
                    errors.push(format!("apt-get update: {}", gist(&e.to_string())));
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
                bail!("cannot prepare {what}: {why}{root}{seen}");
            }
        }
    }
    bail!(
        "cannot prepare {what}: no decision after 8 steps [{}]",
        errors.join("; ")
    )
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
pub fn guest_kernel(
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
        let mut ch = step("trixie chroot", || TrixieChroot::open(apt, cache))?;
        let kver = settle(
            &mut ChrootKernels {
                ch: &mut ch,
                cache,
                meta,
            },
            &want,
            &what,
        )?;
        return Ok((kver, suite, Builder::Chroot(ch.ch.root)));
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
