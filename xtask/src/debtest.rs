//! `deb-test`: the package next to Debian's systemtap-runtime and systemtap, with the real dpkg
//! and apt, in a Debian bookworm chroot (the diversion scheme is in docs/packaging.md).
//!
//! ```text
//! target/deb-chroot/bookworm/       debootstrap --variant=minbase (cached, never changed; built in
//!                                   .bookworm.tmp-PID and renamed into place when complete)
//! target/deb-chroot/run-PID/        this run's copy of it (removed when the run passes)
//! target/deb-chroot/run-PID.log     every command run in the copy, with its output
//! target/deb-chroot/apt-archives/   the copies' /var/cache/apt/archives (downloads are kept)
//! ```
//!
//! Every command in a chroot runs in a mount namespace of its own (unshare), in which /proc and
//! the archive directory are mounted: the mounts end with the command, also when it fails or is
//! killed, so nothing stays mounted on the host (the last check says so).
//!
//! The steps (each prints one line per check and stops at the first mismatch):
//! 1. without systemtap-runtime: install ours, purge it;
//! 2. systemtap-runtime from the archive (its staprun's bytes, mode, owner and statoverride are
//!    recorded), then ours with `apt-get install ./staprun-rs_*.deb`;
//! 3. `apt-get install --reinstall systemtap-runtime`; ours reinstalled; a newer version of ours;
//! 4. remove ours; install and purge; the same with an administrator's override that takes the
//!    setuid bit away from the C staprun; the override a purged systemtap-runtime leaves behind;
//!    systemtap-runtime configured before ours in one dpkg run;
//! 5. `apt-get install systemtap` (the translator) with ours installed;
//! 6. the unit staprun@.service (checked at every install above: the packaged bytes, 0644
//!    root:root; gone at every remove and purge) with systemd installed in the chroot:
//!    `systemd-analyze verify` of an instance configured with the packaged example drop-in, and
//!    `systemctl enable`/`disable` of it (systemd is not running there: nothing is started).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::Result;
use crate::deb;
use crate::prepare::{Apt, is_root, output};

const SUITE: &str = "bookworm";
/// Written into a base chroot when it is complete; a new recipe needs a new text.
const STAMP: &str = ".staprun-rs-deb-test";
const STAMP_TEXT: &str = "debootstrap --variant=minbase bookworm; 90staprun-rs-deb-test v1\n";
const APT_CONF: &str = "etc/apt/apt.conf.d/90staprun-rs-deb-test";
/// Root runs apt's downloads (the archive directory is the host's), no recommends, no pty.
const APT_CONF_TEXT: &str = "APT::Sandbox::User \"root\";\nAPT::Install-Recommends \"false\";\n\
                             Dpkg::Use-Pty \"false\";\nAcquire::Retries \"3\";\n";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

const BIN: &str = "/usr/bin/staprun";
const BIN_C: &str = "/usr/bin/staprun.systemtap";
const MAN: &str = "/usr/share/man/man8/staprun.8.gz";
const MAN_C: &str = "/usr/share/man/man8/staprun.systemtap.8.gz";
const STAPIO: &str = "/usr/libexec/staprun/stapio";
const STATE_DIR: &str = "/var/lib/staprun-rs";
const UNIT: &str = "/lib/systemd/system/staprun@.service";
const EXAMPLE: &str = "/usr/share/doc/staprun-rs/examples/staprun@pmod.service.d/override.conf";
const DIVERSIONS: [&str; 2] = [
    "diversion of /usr/bin/staprun to /usr/bin/staprun.systemtap by staprun-rs",
    "diversion of /usr/share/man/man8/staprun.8.gz to /usr/share/man/man8/staprun.systemtap.8.gz by staprun-rs",
];

pub(crate) fn top_dir() -> PathBuf {
    vm::target_dir().join("deb-chroot")
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))
}

/// Mount points at or under `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    let mut v: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| *m == d || m.starts_with(&format!("{d}/")))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

/// Removes a tree, unmounting first anything mounted in it and never crossing into another file
/// system.
pub(crate) fn remove_tree(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    for m in mounts_under(p) {
        eprintln!("xtask: umount -l {m} (left mounted by an earlier run)");
        output(Command::new("umount").arg("-l").arg(&m))?;
    }
    output(Command::new("rm").args(["-rf", "--one-file-system"]).arg(p)).map(|_| ())
}

/// Removes what runs that are no longer alive left (their copies, logs, partial chroots).
fn clean_stale(top: &Path) -> Result<()> {
    let me = std::process::id();
    for e in fs::read_dir(top).map_err(|e| format!("read {}: {e}", top.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(rest) = name
            .strip_prefix("run-")
            .or_else(|| name.strip_prefix(&format!(".{SUITE}.tmp-")))
        else {
            continue;
        };
        let pid: u32 = rest.trim_end_matches(".log").parse().unwrap_or(0);
        if pid == me || (pid != 0 && Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        remove_tree(&p)?;
    }
    Ok(())
}

/// Commands run in a chroot, each in a mount namespace of its own with /proc (and, for the
/// test copies, the shared apt archive directory) mounted; clean environment.
pub(crate) struct Chroot {
    pub(crate) root: PathBuf,
    pub(crate) archives: Option<PathBuf>,
    pub(crate) log: Option<fs::File>,
}

impl Chroot {
    pub(crate) fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-ec",
            r#"root=$1 archives=$2
shift 2
mount -t proc proc "$root/proc"
if [ -n "$archives" ]; then mount --bind "$archives" "$root/var/cache/apt/archives"; fi
exec chroot "$root" "$@""#,
            "sh",
        ])
        .arg(&self.root)
        .arg(self.archives.as_deref().unwrap_or(Path::new("")))
        .args([
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LC_ALL=C.UTF-8",
            "DEBIAN_FRONTEND=noninteractive",
        ])
        .args(argv)
        .stdin(Stdio::null());
        c
    }

    /// `sh -ec SCRIPT` in the chroot: stdout, or an error with the end of both outputs.
    pub(crate) fn sh(&mut self, script: &str) -> Result<String> {
        let out = self
            .command(&["sh", "-ec", script])
            .output()
            .map_err(|e| format!("cannot run unshare/chroot: {e}"))?;
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(f, "$ {script}\n{so}{se}[{}]\n", out.status);
        }
        if out.status.success() {
            return Ok(so.into_owned());
        }
        let all = format!("{so}{se}");
        let lines: Vec<&str> = all.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Err(format!(
            "`{script}` in {} failed ({}):\n{tail}",
            self.root.display(),
            out.status
        ))
    }
}

/// Why `root` is not a usable base chroot, if it is not.
fn base_broken(root: &Path) -> Option<String> {
    if fs::read_to_string(root.join(STAMP)).ok().as_deref() != Some(STAMP_TEXT) {
        return Some(format!("no {STAMP} of this recipe"));
    }
    for f in [
        "usr/bin/dpkg",
        "usr/bin/apt-get",
        "usr/bin/dpkg-divert",
        "usr/bin/dpkg-statoverride",
        "usr/bin/stat",
        APT_CONF,
    ] {
        if !root.join(f).is_file() {
            return Some(format!("{f} missing"));
        }
    }
    if !fs::read_to_string(root.join("etc/os-release"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "VERSION_CODENAME=bookworm"))
    {
        return Some("not bookworm".into());
    }
    let mut ch = Chroot {
        root: root.to_path_buf(),
        archives: None,
        log: None,
    };
    match ch.sh("dpkg --audit; dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' | grep -E '^.i.* (staprun-rs|systemtap.*)$' || true") {
        Ok(s) if s.trim().is_empty() => None,
        Ok(s) => Some(format!("dpkg state: {}", s.trim())),
        Err(e) => Some(e),
    }
}

fn apt_lists_present() -> bool {
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    })
}

/// The cached base chroot, (re)built with debootstrap when missing or broken.
pub(crate) fn base_chroot(top: &Path) -> Result<PathBuf> {
    let base = top.join(SUITE);
    let why = if base.exists() {
        match base_broken(&base) {
            None => {
                eprintln!("xtask: reusing the chroot {}", base.display());
                return Ok(base);
            }
            Some(why) => why,
        }
    } else {
        "missing".to_owned()
    };
    eprintln!("xtask: building the chroot {} ({why})", base.display());
    let mut apt = Apt { updated: false };
    if vm::which("debootstrap").is_none() || !Path::new(KEYRING).is_file() {
        if !apt_lists_present() {
            apt.update()?;
        }
        apt.install(
            &[
                "debootstrap".to_owned(),
                "debian-archive-keyring".to_owned(),
            ],
            "debootstrap missing",
        )?;
    }
    let mirror = crate::prepare::bookworm_mirror()?;
    let tmp = top.join(format!(".{SUITE}.tmp-{}", std::process::id()));
    let mut attempt = 1;
    loop {
        remove_tree(&tmp)?;
        eprintln!(
            "xtask: debootstrap --variant=minbase {SUITE} {} {mirror}",
            tmp.display()
        );
        // In a mount namespace too: the /proc and /sys debootstrap mounts end with it.
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "debootstrap",
            "--variant=minbase",
        ]);
        if Path::new(KEYRING).is_file() {
            cmd.arg(format!("--keyring={KEYRING}"));
        }
        cmd.arg(SUITE).arg(&tmp).arg(&mirror);
        match output(&mut cmd) {
            Ok(_) => break,
            Err(e) if attempt < 2 => {
                eprintln!("xtask: debootstrap failed, once more: {e}");
                attempt += 1;
            }
            Err(e) => {
                remove_tree(&tmp)?;
                return Err(format!("debootstrap: {e}"));
            }
        }
    }
    fs::write(tmp.join(APT_CONF), APT_CONF_TEXT).map_err(|e| format!("write {APT_CONF}: {e}"))?;
    // The packages debootstrap leaves in the archive directory: every copy would carry them.
    output(
        Command::new("find")
            .arg(tmp.join("var/cache/apt/archives"))
            .args(["-maxdepth", "1", "-name", "*.deb", "-delete"]),
    )?;
    fs::write(tmp.join(STAMP), STAMP_TEXT).map_err(|e| format!("write {STAMP}: {e}"))?;
    if let Some(why) = base_broken(&tmp) {
        return Err(format!(
            "the new chroot {} is not usable: {why}",
            tmp.display()
        ));
    }
    remove_tree(&base)?;
    if let Err(e) = fs::rename(&tmp, &base) {
        // Another run may have put its own in place meanwhile.
        remove_tree(&tmp)?;
        if base_broken(&base).is_some() {
            return Err(format!("rename to {}: {e}", base.display()));
        }
    }
    Ok(base)
}

/// Mode (with the set-id bits), owner and group, as `stat` prints them in the chroot.
#[derive(Clone, PartialEq, Eq)]
struct Meta {
    mode: u32,
    user: String,
    group: String,
}

impl Meta {
    fn new(mode: u32, user: &str, group: &str) -> Meta {
        Meta {
            mode,
            user: user.to_owned(),
            group: group.to_owned(),
        }
    }
}

impl std::fmt::Display for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o} {}:{}", self.mode, self.user, self.group)
    }
}

/// As Display: the check lines show modes in octal.
impl Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What dpkg and the file system say about the paths the package is about.
#[derive(Debug)]
struct Snap {
    files: BTreeMap<String, Option<Meta>>,
    /// `dpkg-divert --list` lines naming staprun.
    diversions: Vec<String>,
    /// path -> "USER GROUP MODE" from `dpkg-statoverride --list`.
    overrides: BTreeMap<String, String>,
    /// package -> (`${db:Status-Abbrev}` without blanks, version), absent when dpkg does not
    /// know it.
    status: BTreeMap<String, (String, String)>,
}

const SNAP_SCRIPT: &str = r#"
for f in /usr/bin/staprun /usr/bin/staprun.systemtap /usr/share/man/man8/staprun.8.gz \
         /usr/share/man/man8/staprun.systemtap.8.gz /usr/libexec/staprun/stapio /var/lib/staprun-rs \
         /lib/systemd/system/staprun@.service; do
    if [ -e "$f" ]; then echo "F $(stat -c '%a %U %G' "$f") $f"; else echo "F - - - $f"; fi
done
dpkg-divert --list | sed 's/^/D /'
dpkg-statoverride --list | sed 's/^/O /'
for p in staprun-rs systemtap-runtime systemtap; do
    echo "P $p $(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$p" 2>/dev/null || true)"
done
"#;

impl Snap {
    fn take(ch: &mut Chroot) -> Result<Snap> {
        let out = ch.sh(SNAP_SCRIPT)?;
        let mut s = Snap {
            files: BTreeMap::new(),
            diversions: Vec::new(),
            overrides: BTreeMap::new(),
            status: BTreeMap::new(),
        };
        for l in out.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["F", "-", "-", "-", path] => {
                    s.files.insert((*path).to_owned(), None);
                }
                ["F", mode, user, group, path] => {
                    let mode = u32::from_str_radix(mode, 8)
                        .map_err(|e| format!("stat mode {mode:?} of {path}: {e}"))?;
                    s.files
                        .insert((*path).to_owned(), Some(Meta::new(mode, user, group)));
                }
                ["D", ..] if l.contains("staprun") => s.diversions.push(l[2..].to_owned()),
                ["O", user, group, mode, path] => {
                    s.overrides
                        .insert((*path).to_owned(), format!("{user} {group} {mode}"));
                }
                ["P", pkg, st, version] if !st.starts_with('u') && !st.starts_with('p') => {
                    s.status
                        .insert((*pkg).to_owned(), ((*st).to_owned(), (*version).to_owned()));
                }
                _ => {}
            }
        }
        s.diversions.sort();
        Ok(s)
    }

    fn meta(&self, path: &str) -> Option<Meta> {
        self.files.get(path).cloned().flatten()
    }

    fn status(&self, pkg: &str) -> &str {
        self.status.get(pkg).map_or("not installed", |(s, _)| s)
    }
}

/// The C staprun as systemtap-runtime installed it.
struct Theirs {
    bin: Vec<u8>,
    meta: Meta,
    statoverride: Option<String>,
    man: Vec<u8>,
}

/// The test run: the chroot copy, the packaged files, the check counter.
struct Run {
    ch: Chroot,
    /// The packaged staprun, stapio, staprun(8) and unit (from the staged tree).
    bin: Vec<u8>,
    stapio: Vec<u8>,
    man: Vec<u8>,
    unit: Vec<u8>,
    deb: String,
    newer: String,
    newer_version: String,
    checks: usize,
}

impl Run {
    fn check(&mut self, name: &str, ok: bool, detail: &str) -> Result<()> {
        self.checks += 1;
        let n = self.checks;
        if ok {
            println!("deb-test: {n:>3} ok    {name}: {detail}");
            Ok(())
        } else {
            println!("deb-test: {n:>3} FAIL  {name}: {detail}");
            Err(format!("check {n} `{name}` failed: {detail}"))
        }
    }

    fn check_eq<T: PartialEq + Debug>(&mut self, name: &str, got: &T, want: &T) -> Result<()> {
        let detail = if got == want {
            format!("{got:?}")
        } else {
            format!("got {got:?}, want {want:?}")
        };
        self.check(name, got == want, &detail)
    }

    fn same_bytes(&mut self, name: &str, path: &str, want: &[u8], what: &str) -> Result<()> {
        let got = fs::read(self.ch.root.join(&path[1..])).ok();
        let detail = match &got {
            Some(g) if g == want => format!("{path}: {} bytes, {what}", g.len()),
            Some(g) => format!("{path}: {} bytes, not {what}", g.len()),
            None => format!("{path} missing"),
        };
        self.check(name, got.as_deref() == Some(want), &detail)
    }

    fn sh(&mut self, script: &str) -> Result<String> {
        self.ch.sh(script)
    }

    /// Our staprun, stapio and staprun(8) in place, the C ones (if `theirs`) at the diverted
    /// names, exactly as recorded; without them, `parked` is the override on the diverted name.
    fn expect_ours(
        &mut self,
        step: &str,
        theirs: Option<&Theirs>,
        parked: Option<&str>,
    ) -> Result<()> {
        let s = Snap::take(&mut self.ch)?;
        let bin = self.bin.clone();
        self.same_bytes(
            &format!("{step}: /usr/bin/staprun is ours"),
            BIN,
            &bin,
            "the packaged staprun",
        )?;
        self.check_eq(
            &format!("{step}: /usr/bin/staprun mode"),
            &s.meta(BIN),
            &Some(Meta::new(0o4110, "root", "stapusr")),
        )?;
        self.check_eq(
            &format!("{step}: statoverride of /usr/bin/staprun"),
            &s.overrides.get(BIN).cloned(),
            &Some("root stapusr 4110".to_owned()),
        )?;
        let stapio = self.stapio.clone();
        self.same_bytes(
            &format!("{step}: stapio is ours"),
            STAPIO,
            &stapio,
            "the packaged stapio",
        )?;
        self.check_eq(
            &format!("{step}: stapio mode"),
            &s.meta(STAPIO),
            &Some(Meta::new(0o755, "root", "root")),
        )?;
        let man = self.man.clone();
        self.same_bytes(
            &format!("{step}: staprun(8) is ours"),
            MAN,
            &man,
            "the packaged page",
        )?;
        let unit = self.unit.clone();
        self.same_bytes(
            &format!("{step}: staprun@.service"),
            UNIT,
            &unit,
            "the packaged unit",
        )?;
        self.check_eq(
            &format!("{step}: staprun@.service mode"),
            &s.meta(UNIT),
            &Some(Meta::new(0o644, "root", "root")),
        )?;
        self.check_eq(
            &format!("{step}: dpkg-divert --list"),
            &s.diversions,
            &DIVERSIONS.map(str::to_owned).to_vec(),
        )?;
        self.check_eq(
            &format!("{step}: staprun-rs installed"),
            &s.status("staprun-rs"),
            &"ii",
        )?;
        match theirs {
            Some(t) => {
                self.check_eq(
                    &format!("{step}: systemtap-runtime still installed"),
                    &s.status("systemtap-runtime"),
                    &"ii",
                )?;
                self.same_bytes(
                    &format!("{step}: C staprun at {BIN_C}"),
                    BIN_C,
                    &t.bin,
                    "systemtap-runtime's staprun",
                )?;
                let got = s.meta(BIN_C);
                self.check_eq(
                    &format!("{step}: C staprun mode as recorded"),
                    &got,
                    &Some(t.meta.clone()),
                )?;
                let added = got.as_ref().map_or(0, |m| m.mode & !t.meta.mode);
                self.check(
                    &format!("{step}: C staprun gained no mode bit"),
                    added == 0,
                    &format!("bits not in the recorded {:04o}: {added:04o}", t.meta.mode),
                )?;
                self.check_eq(
                    &format!("{step}: C statoverride parked on {BIN_C}"),
                    &s.overrides.get(BIN_C).cloned(),
                    &t.statoverride,
                )?;
                self.same_bytes(
                    &format!("{step}: C staprun(8) at staprun.systemtap.8.gz"),
                    MAN_C,
                    &t.man,
                    "systemtap-runtime's page",
                )?;
            }
            None => {
                self.check_eq(
                    &format!("{step}: no file at the diverted names"),
                    &(s.meta(BIN_C), s.meta(MAN_C)),
                    &(None, None),
                )?;
                self.check_eq(
                    &format!("{step}: statoverride of {BIN_C}"),
                    &s.overrides.get(BIN_C).map(String::as_str),
                    &parked,
                )?;
            }
        }
        Ok(())
    }

    /// Ours gone (`status`: "rc" after remove, "not installed" after purge), the C staprun
    /// back at /usr/bin/staprun exactly as recorded.
    fn expect_theirs_back(&mut self, step: &str, t: &Theirs, status: &str) -> Result<()> {
        let s = Snap::take(&mut self.ch)?;
        self.same_bytes(
            &format!("{step}: /usr/bin/staprun is the C staprun again"),
            BIN,
            &t.bin,
            "systemtap-runtime's staprun",
        )?;
        self.check_eq(
            &format!("{step}: C staprun mode as recorded"),
            &s.meta(BIN),
            &Some(t.meta.clone()),
        )?;
        self.check_eq(
            &format!("{step}: statoverride of /usr/bin/staprun as recorded"),
            &s.overrides.get(BIN).cloned(),
            &t.statoverride,
        )?;
        self.same_bytes(
            &format!("{step}: staprun(8) is the C one again"),
            MAN,
            &t.man,
            "systemtap-runtime's page",
        )?;
        self.check_eq(
            &format!("{step}: nothing at the diverted names, no diversion"),
            &(
                s.meta(BIN_C),
                s.meta(MAN_C),
                s.overrides.get(BIN_C).cloned(),
                s.diversions.clone(),
            ),
            &(None, None, None, Vec::new()),
        )?;
        self.check_eq(
            &format!("{step}: stapio, {STATE_DIR} and the unit gone"),
            &(s.meta(STAPIO), s.meta(STATE_DIR), s.meta(UNIT)),
            &(None, None, None),
        )?;
        self.check_eq(
            &format!("{step}: packages"),
            &(s.status("staprun-rs"), s.status("systemtap-runtime")),
            &(status, "ii"),
        )
    }

    /// Records the C staprun and its page as they are at /usr/bin/staprun.
    fn record_theirs(&mut self, step: &str) -> Result<Theirs> {
        let s = Snap::take(&mut self.ch)?;
        let meta = s
            .meta(BIN)
            .ok_or_else(|| format!("{step}: systemtap-runtime left no {BIN}"))?;
        let t = Theirs {
            bin: read(&self.ch.root.join(&BIN[1..]))?,
            meta,
            statoverride: s.overrides.get(BIN).cloned(),
            man: read(&self.ch.root.join(&MAN[1..]))?,
        };
        self.check(
            &format!("{step}: C staprun recorded"),
            t.bin != self.bin,
            &format!(
                "{} bytes, {}, statoverride {}",
                t.bin.len(),
                t.meta,
                t.statoverride.as_deref().unwrap_or("none")
            ),
        )?;
        Ok(t)
    }

    fn apt(&mut self, args: &str) -> Result<String> {
        self.sh(&format!(
            "cd /tmp && apt-get -y -q -o DPkg::Lock::Timeout=120 {args}"
        ))
    }

    fn scenario(&mut self) -> Result<()> {
        let (deb, newer, newer_version) = (
            self.deb.clone(),
            self.newer.clone(),
            self.newer_version.clone(),
        );
        self.apt("update")?;

        // 1. No systemtap-runtime: the package installs and purges as it always did.
        let step = "1 ours alone";
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(step, None, None)?;
        let groups = self.sh("getent group stapusr stapsys stapdev | cut -d: -f1")?;
        self.check_eq(
            &format!("{step}: groups"),
            &groups.split_whitespace().collect::<Vec<_>>(),
            &vec!["stapusr", "stapsys", "stapdev"],
        )?;
        let step = "1 ours purged";
        self.apt("purge staprun-rs")?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}: files gone"),
            &[BIN, BIN_C, MAN, MAN_C, STAPIO, STATE_DIR, UNIT].map(|p| s.meta(p)),
            &[None, None, None, None, None, None, None],
        )?;
        self.check_eq(
            &format!("{step}: no diversion, no statoverride"),
            &(s.diversions.clone(), s.overrides.get(BIN).cloned()),
            &(Vec::new(), None),
        )?;
        self.check_eq(
            &format!("{step}: staprun-rs"),
            &s.status("staprun-rs"),
            &"not installed",
        )?;

        // 2. systemtap-runtime from the archive, then ours next to it.
        let step = "2 systemtap-runtime";
        self.apt("install systemtap-runtime")?;
        let theirs = self.record_theirs(step)?;
        let step = "2 ours next to systemtap-runtime";
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(step, Some(&theirs), None)?;

        // 3. Reinstalling either keeps ours in place; so does a newer version of ours.
        self.apt("install --reinstall systemtap-runtime")?;
        self.expect_ours("3 systemtap-runtime reinstalled", Some(&theirs), None)?;
        self.apt(&format!("install --reinstall ./{deb}"))?;
        self.expect_ours("3 ours reinstalled", Some(&theirs), None)?;
        let step = "3 ours upgraded";
        self.apt(&format!("install ./{newer}"))?;
        self.expect_ours(step, Some(&theirs), None)?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}: version"),
            &s.status.get("staprun-rs").map(|(_, v)| v.clone()),
            &Some(newer_version.clone()),
        )?;

        // 4. Remove, purge: the C staprun comes back as it was.
        self.apt("remove staprun-rs")?;
        self.expect_theirs_back("4 ours removed", &theirs, "rc")?;
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours("4 ours installed again", Some(&theirs), None)?;
        self.apt("purge staprun-rs")?;
        self.expect_theirs_back("4 ours purged", &theirs, "not installed")?;

        // An administrator took the setuid bit away from the C staprun: dpkg gives the C file
        // the override of /usr/bin/staprun (ours) on every unpack, and our trigger takes it back.
        let step = "4 C staprun without setuid";
        self.sh("dpkg-statoverride --remove /usr/bin/staprun || true
             dpkg-statoverride --update --add root root 0755 /usr/bin/staprun")?;
        let admin = self.record_theirs(step)?;
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(&format!("{step}, ours installed"), Some(&admin), None)?;
        self.apt("install --reinstall systemtap-runtime")?;
        self.expect_ours(
            &format!("{step}, systemtap-runtime reinstalled"),
            Some(&admin),
            None,
        )?;
        self.apt("purge staprun-rs")?;
        self.expect_theirs_back(&format!("{step}, ours purged"), &admin, "not installed")?;

        // systemtap-runtime purged (it has no postrm): its override stays, without a file. Ours
        // parks it, and gives it back.
        let step = "4 override left by a purged systemtap-runtime";
        self.sh("dpkg-statoverride --remove /usr/bin/staprun
             dpkg-statoverride --update --add root stapusr 4754 /usr/bin/staprun")?;
        self.apt("purge systemtap-runtime")?;
        let s = Snap::take(&mut self.ch)?;
        let leftover = s.overrides.get(BIN).cloned();
        self.check_eq(
            &format!("{step}: {BIN} gone, its override left"),
            &(s.meta(BIN), leftover.as_deref()),
            &(None, theirs.statoverride.as_deref()),
        )?;
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(
            &format!("{step}, ours installed"),
            None,
            leftover.as_deref(),
        )?;
        self.apt("purge staprun-rs")?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}, ours purged: files gone, the override back"),
            &(
                [BIN, BIN_C, MAN, MAN_C, STAPIO, STATE_DIR, UNIT].map(|p| s.meta(p)),
                s.overrides.get(BIN).cloned(),
                s.overrides.get(BIN_C).cloned(),
                s.diversions.clone(),
            ),
            &(
                [None, None, None, None, None, None, None],
                leftover,
                None,
                Vec::new(),
            ),
        )?;

        // Both unpacked in one run, systemtap-runtime configured first: its postinst registers
        // its override on /usr/bin/staprun, which our postinst parks.
        let step = "4 one dpkg run, systemtap-runtime configured first";
        self.sh("for f in /usr/bin/staprun /usr/bin/stapbpf; do
                 if dpkg-statoverride --list $f >/dev/null; then dpkg-statoverride --remove $f; fi
             done")?;
        self.sh(&format!(
            "cd /tmp
             dpkg --unpack ./{deb}
             dpkg --unpack /var/cache/apt/archives/systemtap-runtime_*.deb
             dpkg --configure systemtap-runtime
             dpkg --configure staprun-rs"
        ))?;
        self.expect_ours(step, Some(&theirs), None)?;
        self.apt("purge staprun-rs")?;
        self.expect_theirs_back(&format!("{step}, ours purged"), &theirs, "not installed")?;

        // 5. The translator (depends on systemtap-runtime) next to ours.
        let step = "5 systemtap";
        self.apt(&format!("install ./{deb}"))?;
        let sim = self.apt("-s install systemtap")?;
        let removes: Vec<&str> = sim.lines().filter(|l| l.starts_with("Remv ")).collect();
        self.check(
            &format!("{step}: apt-get -s install systemtap removes nothing"),
            removes.is_empty() && sim.lines().any(|l| l.starts_with("Inst systemtap ")),
            &if removes.is_empty() {
                format!(
                    "{} packages to install",
                    sim.lines().filter(|l| l.starts_with("Inst ")).count()
                )
            } else {
                removes.join("; ")
            },
        )?;
        let t = Instant::now();
        self.apt("install systemtap")?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}: installed"),
            &(
                s.status("systemtap"),
                s.status("systemtap-runtime"),
                s.status("staprun-rs"),
            ),
            &("ii", "ii", "ii"),
        )?;
        println!(
            "deb-test:       (apt-get install systemtap took {:.1}s)",
            t.elapsed().as_secs_f64()
        );
        self.expect_ours(step, Some(&theirs), None)?;
        self.unit_with_systemd()
    }

    /// Step 6: the unit, read by the real systemd tools of bookworm (systemd is installed in
    /// the chroot but not running: `systemd-analyze verify` loads the unit offline, `systemctl
    /// enable` only makes links).
    fn unit_with_systemd(&mut self) -> Result<()> {
        let step = "6 staprun@.service";
        self.apt("install systemd")?;
        let version = self.sh("systemctl --version | head -n 1")?;
        println!("deb-test:       ({})", version.trim());
        // A stapusr member, and the packaged example drop-in naming them.
        self.sh(&format!(
            "getent passwd alice >/dev/null || useradd --create-home --groups stapusr alice
             mkdir -p /etc/systemd/system/staprun@pmod.service.d
             cp {EXAMPLE} /etc/systemd/system/staprun@pmod.service.d/override.conf"
        ))?;
        let verify =
            self.sh("systemd-analyze verify --man=no staprun@pmod.service 2>&1; echo \"exit $?\"")?;
        self.check_eq(
            &format!("{step}: systemd-analyze verify staprun@pmod.service (example drop-in)"),
            &verify.trim(),
            &"exit 0",
        )?;
        // What systemd runs comes from the template and the drop-in together.
        let shown = self.sh(
            "grep -h -E '^(User|ExecStart|ExecStartPre|KillMode|WantedBy)=' \
                 /lib/systemd/system/staprun@.service \
                 /etc/systemd/system/staprun@pmod.service.d/override.conf | cut -c1-72",
        )?;
        let lines: Vec<&str> = shown.lines().collect();
        self.check(
            &format!("{step}: ExecStart, the root guard, KillMode=mixed, User=alice"),
            lines.iter().any(|l| {
                l.starts_with("ExecStart=/usr/bin/staprun $STAPRUN_OPTIONS -- /lib/modules/%v/")
            }) && lines
                .iter()
                .any(|l| l.starts_with("ExecStartPre=/bin/sh -c"))
                && lines.contains(&"KillMode=mixed")
                && lines.contains(&"User=alice")
                && lines.contains(&"WantedBy=multi-user.target"),
            &format!("{lines:?}"),
        )?;
        let link = "/etc/systemd/system/multi-user.target.wants/staprun@pmod.service";
        self.sh("systemctl enable staprun@pmod.service")?;
        let enabled = self.sh(&format!(
            "systemctl is-enabled staprun@pmod.service; readlink {link}"
        ))?;
        self.check_eq(
            &format!("{step}: systemctl enable staprun@pmod (WantedBy=multi-user.target)"),
            &enabled.lines().collect::<Vec<_>>(),
            &vec!["enabled", UNIT],
        )?;
        self.sh("systemctl disable staprun@pmod.service")?;
        let disabled = self.sh(&format!(
            "systemctl is-enabled staprun@pmod.service || true; test ! -e {link} && echo 'no link'"
        ))?;
        self.check_eq(
            &format!("{step}: systemctl disable staprun@pmod"),
            &disabled.lines().collect::<Vec<_>>(),
            &vec!["disabled", "no link"],
        )
    }
}

/// A copy of `deb` with the version `VERSION+debtest1`, written to `dir`.
fn newer_deb(deb: &Path, dir: &Path) -> Result<(String, String)> {
    let x = dir.join("repack");
    remove_tree(&x)?;
    output(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&x))?;
    let control = x.join("DEBIAN/control");
    let text =
        fs::read_to_string(&control).map_err(|e| format!("read {}: {e}", control.display()))?;
    let old = format!("Version: {}\n", stap_common::VERSION);
    let version = format!("{}+debtest1", stap_common::VERSION);
    if !text.contains(&old) {
        return Err(format!("{} has no {old:?}", control.display()));
    }
    fs::write(
        &control,
        text.replace(&old, &format!("Version: {version}\n")),
    )
    .map_err(|e| format!("write {}: {e}", control.display()))?;
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().replace(stap_common::VERSION, &version))
        .unwrap_or_default();
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&x)
            .arg(dir.join(&name)),
    )?;
    remove_tree(&x)?;
    Ok((name, version))
}

/// `cargo xtask deb-test`.
pub fn deb_test() -> Result<()> {
    let t0 = Instant::now();
    if !is_root() {
        return Err("deb-test needs root (debootstrap, chroot, dpkg in the chroot)".into());
    }
    let deb = deb::deb()?;
    let t_deb = t0.elapsed();
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let stage = deb::stage_dir(&arch);
    let top = top_dir();
    fs::create_dir_all(&top).map_err(|e| format!("mkdir {}: {e}", top.display()))?;
    let top = fs::canonicalize(&top).map_err(|e| format!("{}: {e}", top.display()))?;
    clean_stale(&top)?;
    let base = base_chroot(&top)?;
    let pid = std::process::id();
    let work = top.join(format!("run-{pid}"));
    output(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&base)
            .arg(&work),
    )?;
    let t_chroot = t0.elapsed();
    let archives = top.join("apt-archives");
    fs::create_dir_all(archives.join("partial"))
        .map_err(|e| format!("mkdir {}: {e}", archives.display()))?;
    let deb_name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    fs::copy(&deb, work.join("tmp").join(&deb_name))
        .map_err(|e| format!("copy {}: {e}", deb.display()))?;
    let (newer, newer_version) = newer_deb(&deb, &work.join("tmp"))?;
    let log_path = top.join(format!("run-{pid}.log"));
    let log =
        fs::File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let mut run = Run {
        ch: Chroot {
            root: work.clone(),
            archives: Some(archives),
            log: Some(log),
        },
        bin: read(&stage.join("usr/bin/staprun"))?,
        stapio: read(&stage.join("usr/libexec/staprun/stapio"))?,
        man: read(&stage.join("usr/share/man/man8/staprun.8.gz"))?,
        unit: read(&stage.join(deb::UNIT_DIR).join(crate::install::UNIT_NAME))?,
        deb: deb_name,
        newer,
        newer_version,
        checks: 0,
    };
    let result = run.scenario().and_then(|()| {
        let left = mounts_under(&top);
        run.check(
            "no mount left under target/deb-chroot",
            left.is_empty(),
            &format!("{left:?}"),
        )
    });
    eprintln!(
        "xtask: deb-test wall time {:.1}s (deb {:.1}s, chroot {:.1}s, checks {:.1}s)",
        t0.elapsed().as_secs_f64(),
        t_deb.as_secs_f64(),
        (t_chroot - t_deb).as_secs_f64(),
        (t0.elapsed() - t_chroot).as_secs_f64()
    );
    match result {
        Ok(()) => {
            println!(
                "deb-test: all {} checks passed (commands and output: {})",
                run.checks,
                log_path.display()
            );
            remove_tree(&work)
        }
        Err(e) => Err(format!(
            "{e}\n(the chroot is left in {}, every command and its output in {})",
            work.display(),
            log_path.display()
        )),
    }
}
