//! apt on the host: installing what a task needs (as root), `apt-get update`, and the host's
//! apt sources (which Debian mirror to fetch other suites from: no mirror is named in this code
//! unless the host names none).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cmd::{self, cmd, is_root};
use crate::error::{Context as _, Result, bail};
use crate::vm::kernel::aptstate;

pub struct Apt {
    pub updated: bool,
}

/// `apt-get update`, with `opts` (`-o` options; none for the host's own lists).
pub fn apt_update(opts: &[String]) -> Result<()> {
    eprintln!("xtask: apt-get update");
    let sh = cmd::shell()?;
    cmd::run(cmd!(
        sh,
        "apt-get {opts...} update -qq -o DPkg::Lock::Timeout=600"
    ))
}

/// The host's apt lists directory (`Dir::State::Lists`).
pub fn host_lists_dir() -> PathBuf {
    cmd::shell()
        .and_then(|sh| cmd::output(cmd!(sh, "apt-config shell D Dir::State::Lists/d")))
        .ok()
        .and_then(|s| {
            let v = s.trim().strip_prefix("D='")?.strip_suffix('\'')?.to_owned();
            (!v.is_empty()).then(|| PathBuf::from(v))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/apt/lists"))
}

/// Whether an apt lists directory holds no package index (a fresh machine, or lists removed).
pub fn lists_empty_in(dir: &Path) -> bool {
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
            bail!("{why}: run as root: {line}");
        }
        eprintln!("xtask: {why}: {line}");
        let sh = cmd::shell()?;
        let try_install = || {
            cmd::run(
                cmd!(
                    sh,
                    "apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 {pkgs...}"
                )
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
            cmd::run(cmd!(sh, "dpkg --configure -a").env("DEBIAN_FRONTEND", "noninteractive"))?;
            if try_install().is_ok() {
                return Ok(());
            }
        }
        self.update()?;
        try_install().context(why)
    }
}

/// Whether dpkg says `pkg` is installed.
pub fn dpkg_installed(pkg: &str) -> bool {
    cmd::shell()
        .and_then(|sh| {
            let format = "-f=${Status}";
            cmd::output(cmd!(sh, "dpkg-query -W {format} {pkg}"))
        })
        .is_ok_and(|s| s.trim() == "install ok installed")
}

/// One `deb` entry of the host's apt sources.
pub struct AptSource {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub signed_by: Option<String>,
}

/// The `deb` entries of /etc/apt/sources.list and sources.list.d (one-line and deb822 forms).
pub fn host_apt_sources() -> Vec<AptSource> {
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
                let mut fields = BTreeMap::new();
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
pub fn debian_mirror(sources: &[AptSource]) -> Result<(String, Option<String>)> {
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
