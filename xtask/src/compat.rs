//! `compat-prepare`: real SystemTap modules and the C staprun/stapio, for the
//! side-by-side guest tests (`vm/tests/compat.rs`, guest side
//! `vm/src/bin/vm-agent/compat.rs`, documented in docs/compat.md).
//!
//! ```text
//! target/vm-cache/stap/runtime-VER-KEY/            copy of /usr/share/systemtap/runtime, patched
//!                                                  with compat/runtime-4.8-*.patch when needed
//! target/vm-cache/stap/KVER/NAME-KEY.ko            stap -p4 -r KVER -R RUNTIME -m NAME OPTS compat/X.stp
//! target/vm-cache/stap/home/                       SYSTEMTAP_DIR of those builds (stap's own cache)
//! target/vm-cache/debs/systemtap-runtime_*.deb     apt-get download (the C reference)
//! target/vm-cache/compat/c-VERSION/                dpkg-deb -x of it
//! target/vm-cache/compat/initramfs-compat-KVER.cpio  vm-prepare's initramfs + a second cpio archive
//! target/vm-cache/compat.env                       initrd=, modules=, stap=, c_version=
//! ```
//!
//! KEY hashes everything a module depends on (script text, stap options, translator version, runtime
//! patch, kernel release and the headers' Module.symvers), so a rerun rebuilds nothing.
//!
//! The second archive adds (the kernel unpacks concatenated newc archives in order):
//!
//! ```text
//! /opt/c/usr/bin/staprun      04110 root:stapusr   the C staprun (bind-mounted over /usr/bin/staprun
//!                                                  by the guest for C runs, see docs/compat.md)
//! /usr/lib/systemtap/stapio   0755                 the C stapio, at its build-time PKGLIBDIR path
//! /lib/x86_64-linux-gnu/...   0755                 their shared libraries, as `ldd` names them
//! /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
//! /compat/mods/NAME.ko        0644                 the modules (the guest copies them where needed)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use crate::Result;
use crate::cpio::{self, Entry};
use crate::prepare::{self, Apt, STAPUSR, output, status, step};

/// The file `compat-prepare` writes last (in the vm cache directory).
pub const ENV_FILE: &str = "compat.env";
/// Where the C staprun lives in the guest image.
pub const C_STAPRUN: &str = "opt/c/usr/bin/staprun";
/// The C stapio's build-time path (`PKGLIBDIR "/stapio"`, Debian's pkglibexecdir).
pub const C_STAPIO: &str = "usr/lib/systemtap/stapio";
const RUNTIME_SRC: &str = "/usr/share/systemtap/runtime";
const PATCH_4_8: &str = "runtime-4.8-task_work_cancel_func.patch";
/// Parallel `stap -p4` runs (each keeps one core busy compiling one big C file).
const JOBS: usize = 2;

#[derive(clap::Args, Clone, Debug)]
#[group(id = "compat_options")]
pub struct Options {
    #[command(flatten)]
    pub vm: prepare::Options,
    /// Leave out the SystemTap 5.x generation (trixie chroot, /c5 in the guest).
    #[arg(long)]
    pub no_stap5: bool,
}

/// One module to build: `// compat-build: NAME [OPTIONS...]` in a compat/*.stp script
/// (default: the file stem, no options).
#[derive(Clone, Debug)]
struct Build {
    name: String,
    script: PathBuf,
    options: Vec<String>,
}

fn compat_dir() -> PathBuf {
    prepare::workspace_root().join("compat")
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// FNV-1a, 64 bits: a stable cache key (not a security boundary).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        self
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

fn builds() -> Result<Vec<Build>> {
    let dir = compat_dir();
    let mut scripts: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "stp"))
        .collect();
    scripts.sort();
    let mut out: Vec<Build> = Vec::new();
    for script in scripts {
        let text = String::from_utf8_lossy(&read(&script)?).into_owned();
        let mut declared = false;
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("// compat-build:") else {
                continue;
            };
            let mut words = rest.split_whitespace().map(str::to_owned);
            let name = words
                .next()
                .ok_or_else(|| format!("{}: empty compat-build line", script.display()))?;
            out.push(Build {
                name,
                script: script.clone(),
                options: words.collect(),
            });
            declared = true;
        }
        if !declared {
            let stem = script
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            out.push(Build {
                name: stem,
                script: script.clone(),
                options: Vec::new(),
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for b in &out {
        if !b
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || b.name.len() > 55
        {
            return Err(format!(
                "{}: module name {:?} must be [A-Za-z0-9_], at most 55 characters",
                b.script.display(),
                b.name
            ));
        }
        if !seen.insert(b.name.clone()) {
            return Err(format!("module {} is declared twice in compat/", b.name));
        }
    }
    Ok(out)
}

/// `stap -V` says e.g. "Systemtap translator/driver (version 4.8/0.188, Debian version 4.8-2)".
fn stap_version() -> Result<(String, String)> {
    // stap creates $SYSTEMTAP_DIR (default ~/.systemtap) even for -V: keep it in the cache.
    let home = vm::cache_dir().join("stap").join("home");
    mkdir(&home)?;
    let out = Command::new("stap")
        .arg("-V")
        .env("SYSTEMTAP_DIR", &home)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run stap -V: {e}"))?;
    parse_stap_version(&out, "`stap -V`")
}

/// The version and the first line of `stap -V` (4.8 prints it on stderr,
/// 5.1 on stdout).
fn parse_stap_version(out: &std::process::Output, what: &str) -> Result<(String, String)> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let line = text.lines().next().unwrap_or_default().trim().to_owned();
    let version = line
        .split("(version ")
        .nth(1)
        .and_then(|r| r.split(['/', ',', ')']).next())
        .map(str::to_owned)
        .ok_or_else(|| format!("cannot parse {what}: {line:?}"))?;
    Ok((version, line))
}

fn host_stap(apt: &mut Apt) -> Result<(String, String)> {
    let mut missing = Vec::new();
    if vm::which("stap").is_none() {
        missing.push("systemtap".to_owned());
    }
    if vm::which("patch").is_none() {
        missing.push("patch".to_owned());
    }
    if !missing.is_empty() {
        apt.install(&missing, "SystemTap translator missing")?;
    }
    let (version, line) = stap_version()?;
    if !version.starts_with("4.") {
        return Err(format!(
            "compat-prepare expects Debian bookworm's SystemTap 4.x translator, found {line:?}"
        ));
    }
    Ok((version, line))
}

/// The headers declare the renamed function but the runtime still calls the old one.
fn needs_task_work_patch(kver: &str, runtime: &Path) -> Result<bool> {
    let modules = PathBuf::from(format!("/lib/modules/{kver}"));
    let header = ["source", "build"]
        .iter()
        .map(|d| modules.join(d).join("include/linux/task_work.h"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no include/linux/task_work.h under {}/{{source,build}}: are linux-headers-{kver} installed?",
                modules.display()
            )
        })?;
    let decl = String::from_utf8_lossy(&read(&header)?).contains("task_work_cancel_func(");
    let used = String::from_utf8_lossy(&read(&runtime.join("stp_task_work.c"))?)
        .contains("task_work_cancel_func");
    Ok(decl && !used)
}

/// Applies compat/runtime-4.8-task_work_cancel_func.patch to the SystemTap 4.8 runtime in `dir`.
pub fn apply_task_work_patch(dir: &Path) -> Result<()> {
    let patch_path = compat_dir().join(PATCH_4_8);
    let out = Command::new("patch")
        .args([
            "-p1",
            "--forward",
            "--batch",
            "--no-backup-if-mismatch",
            "-d",
        ])
        .arg(dir)
        .stdin(
            fs::File::open(&patch_path)
                .map_err(|e| format!("open {}: {e}", patch_path.display()))?,
        )
        .output()
        .map_err(|e| format!("cannot run patch: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "compat/{PATCH_4_8} does not apply to {}: {}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A runtime directory for `stap -R`: the installed one, or a patched copy.
fn runtime(cache: &Path, kver: &str, version: &str) -> Result<(PathBuf, String)> {
    let src = Path::new(RUNTIME_SRC);
    if !needs_task_work_patch(kver, src)? {
        return Ok((src.to_path_buf(), "stock".into()));
    }
    if !version.starts_with("4.8") {
        return Err(format!(
            "the guest kernel renamed task_work_cancel() but compat/{PATCH_4_8} is for SystemTap 4.8, not {version}"
        ));
    }
    let patch_path = compat_dir().join(PATCH_4_8);
    let patch = read(&patch_path)?;
    let key = Fnv::new()
        .add(version.as_bytes())
        .add(&patch)
        .add(&read(&src.join("stp_task_work.c"))?)
        .hex();
    let stap = cache.join("stap");
    let dir = stap.join(format!("runtime-{version}-{key}"));
    if dir.join(".compat-ok").is_file() {
        return Ok((dir, key));
    }
    mkdir(&stap)?;
    let tmp = stap.join(format!(".runtime-{key}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    status(Command::new("cp").arg("-a").arg(src).arg(&tmp))?;
    apply_task_work_patch(&tmp).map_err(|e| format!("{e} ({RUNTIME_SRC})"))?;
    fs::write(tmp.join(".compat-ok"), b"").map_err(|e| format!("write marker: {e}"))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(|e| format!("rename to {}: {e}", dir.display()))?;
    eprintln!(
        "xtask: runtime {} patched with compat/{PATCH_4_8}",
        dir.display()
    );
    Ok((dir, key))
}

/// Which `stap` builds the modules.
#[derive(Clone, Debug)]
enum Translator {
    /// The host's (bookworm, 4.8) with this runtime directory (`stap -R`).
    Host { runtime: PathBuf },
    /// The one installed in a chroot (trixie, 5.x), with its own runtime.
    Chroot { root: PathBuf },
}

struct BuildEnv {
    kver: String,
    translator: Translator,
    /// Everything but the script that a module depends on.
    key_base: Vec<u8>,
    out_dir: PathBuf,
    home: PathBuf,
    work: PathBuf,
}

fn module_path(env: &BuildEnv, b: &Build) -> Result<PathBuf> {
    let key = Fnv::new()
        .add(&env.key_base)
        .add(b.name.as_bytes())
        .add(b.options.join("\u{1}").as_bytes())
        .add(&read(&b.script)?)
        .hex();
    Ok(env.out_dir.join(format!("{}-{key}.ko", b.name)))
}

fn build_one(env: &BuildEnv, b: &Build, dest: &Path) -> Result<()> {
    let work = env.work.join(&b.name);
    let _ = fs::remove_dir_all(&work);
    mkdir(&work)?;
    let t0 = Instant::now();
    let mut cmd = match &env.translator {
        Translator::Host { runtime } => {
            let mut c = Command::new("stap");
            c.args(["-p4", "-r", &env.kver])
                .arg("-R")
                .arg(runtime)
                .args(["-m", &b.name])
                .args(&b.options)
                .arg(&b.script)
                .env("SYSTEMTAP_DIR", &env.home)
                .current_dir(&work);
            c
        }
        Translator::Chroot { root } => {
            // The script is copied in; paths below are the chroot's.
            fs::copy(&b.script, work.join("script.stp"))
                .map_err(|e| format!("copy {}: {e}", b.script.display()))?;
            let inner = |p: &Path| -> Result<String> {
                p.strip_prefix(root)
                    .map(|r| format!("/{}", r.display()))
                    .map_err(|_| format!("{} is outside {}", p.display(), root.display()))
            };
            let mut line = format!(
                "cd {} && exec stap -p4 -r {} -m {}",
                inner(&work)?,
                env.kver,
                b.name
            );
            for o in &b.options {
                if o.contains('\'') {
                    return Err(format!("{}: option {o:?} has a quote", b.script.display()));
                }
                line.push_str(&format!(" '{o}'"));
            }
            line.push_str(" script.stp");
            let mut c = Command::new("chroot");
            c.arg(root)
                .args([
                    "/usr/bin/env",
                    "-i",
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root",
                ])
                .arg(format!("SYSTEMTAP_DIR={}", inner(&env.home)?))
                .args(["/bin/sh", "-c", &line]);
            c
        }
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run stap: {e}"))?;
    let built = work.join(format!("{}.ko", b.name));
    if !out.status.success() || !built.is_file() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "stap -p4 -m {} {} failed ({}):\n{}",
            b.name,
            b.script.display(),
            out.status,
            tail.join("\n")
        ));
    }
    fs::rename(&built, dest).map_err(|e| format!("rename to {}: {e}", dest.display()))?;
    let _ = fs::remove_dir_all(&work);
    eprintln!(
        "xtask: built {} ({:.1}s)",
        dest.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds (or finds in the cache) every module; returns name -> .ko path.
/// `runtime_key` identifies the runtime (patch) the translator uses.
fn modules(
    cache: &Path,
    kver: &str,
    stap_line: &str,
    translator: Translator,
    runtime_key: &str,
) -> Result<BTreeMap<String, PathBuf>> {
    let stap = cache.join("stap");
    let symvers = PathBuf::from(format!("/lib/modules/{kver}/build/Module.symvers"));
    let mut base = Fnv::new();
    base.add(b"compat-modules-v1")
        .add(stap_line.as_bytes())
        .add(runtime_key.as_bytes())
        .add(kver.as_bytes())
        .add(&read(&symvers)?);
    let (out_dir, home, work) = match &translator {
        Translator::Host { .. } => (stap.join(kver), stap.join("home"), stap.join("work")),
        Translator::Chroot { root } => (
            stap.join(kver).join("stap5"),
            root.join("stap-home"),
            root.join("work"),
        ),
    };
    let env = BuildEnv {
        kver: kver.to_owned(),
        translator,
        key_base: base.hex().into_bytes(),
        out_dir,
        home,
        work,
    };
    for d in [&env.out_dir, &env.home, &env.work] {
        mkdir(d)?;
    }
    let mut result = BTreeMap::new();
    let mut todo = Vec::new();
    for b in builds()? {
        let dest = module_path(&env, &b)?;
        // Drop stale builds of this module.
        if let Ok(rd) = fs::read_dir(&env.out_dir) {
            for e in rd.flatten() {
                let p = e.path();
                let n = e.file_name().to_string_lossy().into_owned();
                if p != dest
                    && n.strip_prefix(&format!("{}-", b.name))
                        .is_some_and(|k| k.len() == 19 && k.ends_with(".ko"))
                {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        if !dest.is_file() {
            todo.push((b.clone(), dest.clone()));
        }
        result.insert(b.name.clone(), dest);
    }
    if !todo.is_empty() {
        eprintln!(
            "xtask: building {} SystemTap module(s) for {kver}, {JOBS} at a time (about 30 s each)",
            todo.len()
        );
    }
    let queue = Mutex::new(todo);
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..JOBS {
            s.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some((b, dest)) = next else { break };
                    if let Err(e) = build_one(&env, &b, &dest) {
                        if let Ok(mut v) = errors.lock() {
                            v.push(e);
                        }
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    if !errors.is_empty() {
        return Err(errors.join("\n\n"));
    }
    Ok(result)
}

/// The C staprun/stapio of one generation: host paths of their files, and the
/// shared libraries they need as (path in the guest, host file).
struct CTools {
    version: String,
    staprun: PathBuf,
    stapio: PathBuf,
    libs: Vec<(String, PathBuf)>,
}

/// The 4.x reference: Debian bookworm's systemtap-runtime, of the host translator's version.
fn c_reference(apt: &mut Apt, cache: &Path) -> Result<CTools> {
    let version =
        output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "systemtap-runtime"]))
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or("systemtap-runtime is not installed on this host (it comes with systemtap)")?;
    let root = cache.join("compat").join(format!("c-{version}"));
    let staprun = root.join("usr/bin/staprun");
    let stapio = root.join(C_STAPIO);
    if !(staprun.is_file() && stapio.is_file()) {
        let debs = cache.join("debs");
        mkdir(&debs)?;
        let file_version = version.replace(':', "%3a");
        let deb = debs.join(format!("systemtap-runtime_{file_version}_amd64.deb"));
        if !deb.is_file() {
            let pkg = format!("systemtap-runtime={version}");
            let download = || {
                output(
                    Command::new("apt-get")
                        .args(["download", "-q", &pkg])
                        .current_dir(&debs),
                )
            };
            if download().is_err() {
                apt.update()?;
                download()?;
            }
        }
        if !deb.is_file() {
            return Err(format!("apt-get download left no {}", deb.display()));
        }
        let tmp = cache.join("compat").join(format!(".c-{version}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        mkdir(&tmp)?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        // dpkg-deb -x keeps the set-user-ID bit: the host copy must not be a setuid binary.
        status(
            Command::new("chmod")
                .arg("0755")
                .arg(tmp.join("usr/bin/staprun")),
        )?;
        let _ = fs::remove_dir_all(&root);
        fs::rename(&tmp, &root).map_err(|e| format!("rename to {}: {e}", root.display()))?;
        for p in [&staprun, &stapio] {
            if !p.is_file() {
                return Err(format!("{} has no {}", deb.display(), p.display()));
            }
        }
    }
    let mut libs = Vec::new();
    for bin in [&staprun, &stapio] {
        let text = output(Command::new("ldd").arg(bin))?;
        for lib in ldd_paths(&text, bin)? {
            let file = PathBuf::from(&lib);
            libs.push((lib, file));
        }
    }
    Ok(CTools {
        version,
        staprun,
        stapio,
        libs,
    })
}

/// Paths `ldd` names (the program interpreter included).
fn ldd_paths(text: &str, bin: &Path) -> Result<Vec<String>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            return Err(format!(
                "ldd {}: {line} (install systemtap-runtime's dependencies)",
                bin.display()
            ));
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim().split(" (").next().unwrap_or("").trim(),
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            libs.push(path.to_owned());
        }
    }
    Ok(libs)
}

/// The file `path` names inside `root`, following symbolic links as if `root` were `/`.
fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let mut p = PathBuf::from(path);
    for _ in 0..40 {
        let rel = p.strip_prefix("/").unwrap_or(&p).to_path_buf();
        let host = root.join(&rel);
        let meta = fs::symlink_metadata(&host)
            .map_err(|e| format!("{} in {}: {e}", p.display(), root.display()))?;
        if !meta.file_type().is_symlink() {
            return Ok(host);
        }
        let target =
            fs::read_link(&host).map_err(|e| format!("readlink {}: {e}", host.display()))?;
        p = if target.is_absolute() {
            target
        } else {
            Path::new("/")
                .join(rel.parent().unwrap_or(Path::new("")))
                .join(target)
        };
    }
    Err(format!(
        "{path}: too many symbolic links in {}",
        root.display()
    ))
}

const MULTIARCH: &str = "lib/x86_64-linux-gnu";

/// The C tools, their libraries and the modules, under `prefix` ("" or "c5/") in the guest.
fn c_tools_entries(
    prefix: &str,
    c: &CTools,
    mods: &BTreeMap<String, PathBuf>,
    e: &mut Vec<Entry>,
) -> Result<()> {
    for d in [
        "compat",
        "compat/mods",
        "opt",
        "opt/c",
        "opt/c/usr",
        "opt/c/usr/bin",
        "usr/lib/systemtap",
        MULTIARCH,
        "lib64",
    ] {
        e.push(Entry::dir(&format!("{prefix}{d}"), 0o755));
    }
    e.push(
        Entry::file(&format!("{prefix}{C_STAPRUN}"), 0o4110, read(&c.staprun)?).owner(0, STAPUSR),
    );
    e.push(Entry::file(
        &format!("{prefix}{C_STAPIO}"),
        0o755,
        read(&c.stapio)?,
    ));
    let mut seen = std::collections::BTreeSet::new();
    for (lib, file) in &c.libs {
        if !seen.insert(lib.clone()) {
            continue;
        }
        let lib = Path::new(lib);
        let name = lib
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("bad library path {}", lib.display()))?;
        let dir = lib.parent().and_then(Path::to_str).unwrap_or_default();
        if ![
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
        ]
        .contains(&dir)
        {
            return Err(format!(
                "{}: library outside the multiarch directories; extend xtask/src/compat.rs",
                lib.display()
            ));
        }
        let target = format!("{MULTIARCH}/{name}");
        if dir == "/lib64" {
            e.push(Entry::symlink(
                &format!("{prefix}lib64/{name}"),
                &format!("/{target}"),
            ));
        }
        e.push(Entry::file(
            &format!("{prefix}{target}"),
            0o755,
            read(file)?,
        ));
    }
    for (name, path) in mods {
        e.push(Entry::file(
            &format!("{prefix}compat/mods/{name}.ko"),
            0o644,
            read(path)?,
        ));
    }
    // A library named both as interpreter and as a dependency: keep the first.
    let mut paths = std::collections::BTreeSet::new();
    e.retain(|x| paths.insert(x.path.clone()));
    Ok(())
}

fn c5_entries(c: &CTools, mods: &BTreeMap<String, PathBuf>, e: &mut Vec<Entry>) -> Result<()> {
    for d in ["c5", "c5/usr", "c5/usr/lib", "c5/lib", "c5/lib/modules"] {
        e.push(Entry::dir(d, 0o755));
    }
    for d in vm::C5_MOUNTS {
        e.push(Entry::dir(&format!("c5/{d}"), 0o755));
    }
    c_tools_entries("c5/", c, mods, e)
}

/// What `--include` puts in the trixie chroot: the 5.x translator and the
/// compiler the bookworm kernel headers name (`CC = gcc-12`).
const TRIXIE_PACKAGES: &str = "systemtap,gcc-12,make";
const TRIXIE_MIRROR: &str = "http://deb.debian.org/debian";

/// The SystemTap 5.x generation: translator, modules and C tools from trixie.
struct Stap5 {
    version: String,
    mods: BTreeMap<String, PathBuf>,
    c: CTools,
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
    output(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={TRIXIE_PACKAGES}")])
            .arg("trixie")
            .arg(&tmp)
            .arg(&mirror),
    )?;
    fs::write(tmp.join(".compat-ok"), TRIXIE_PACKAGES).map_err(|e| format!("write marker: {e}"))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root).map_err(|e| format!("rename to {}: {e}", root.display()))?;
    Ok(root)
}

/// Copies the guest kernel's headers (build, source and kbuild trees, at their
/// own absolute paths) and the /lib/modules/KVER links into the chroot.
fn trixie_headers(root: &Path, kver: &str) -> Result<()> {
    let modules = PathBuf::from(format!("/lib/modules/{kver}"));
    let canon = |p: &Path| fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
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
    for dir in [&build, &source, &kbuild] {
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        let dest = root.join(rel);
        let _ = fs::remove_dir_all(&dest);
        let parent = dest.parent().ok_or("no parent")?;
        mkdir(parent)?;
        status(Command::new("cp").arg("-a").arg(dir).arg(parent))?;
    }
    let links = resolve_dir_in_root(root, &format!("/lib/modules/{kver}"))?;
    mkdir(&links)?;
    for (name, target) in [("build", &build), ("source", &source)] {
        let l = links.join(name);
        let _ = fs::remove_file(&l);
        std::os::unix::fs::symlink(target, &l)
            .map_err(|e| format!("symlink {}: {e}", l.display()))?;
    }
    fs::write(&marker, key).map_err(|e| format!("write {}: {e}", marker.display()))
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

fn stap5(apt: &mut Apt, cache: &Path, kver: &str) -> Result<Stap5> {
    let root = step("trixie chroot", || trixie_root(apt, cache))?;
    step("kernel headers in the chroot", || {
        trixie_headers(&root, kver)
    })?;
    let out = Command::new("chroot")
        .arg(&root)
        .args(["stap", "-V"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run chroot stap -V: {e}"))?;
    let (version, line) = parse_stap_version(&out, "the chroot's `stap -V`")?;
    eprintln!("xtask: chroot: {line}");
    if !version.starts_with('5') {
        return Err(format!(
            "the trixie chroot has SystemTap {version}, not 5.x"
        ));
    }
    let runtime = root.join("usr/share/systemtap/runtime");
    if needs_task_work_patch(kver, &runtime)? {
        return Err(format!(
            "SystemTap {version}'s runtime does not call task_work_cancel_func, which {kver} needs"
        ));
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
    let c_version = output(Command::new("chroot").arg(&root).args([
        "dpkg-query",
        "-W",
        "-f",
        "${Version}",
        "systemtap-runtime",
    ]))?
    .trim()
    .to_owned();
    let mut libs = Vec::new();
    for bin in ["/usr/bin/staprun", "/usr/lib/systemtap/stapio"] {
        let text = output(Command::new("chroot").arg(&root).args(["ldd", bin]))?;
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

fn image(base: &Path, extras: &[Entry], out: &Path) -> Result<()> {
    let mut bytes = read(base)?;
    cpio::write(&mut bytes, extras).map_err(|e| format!("cpio: {e}"))?;
    let tmp = out.with_extension("cpio.tmp");
    fs::write(&tmp, &bytes).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, out).map_err(|e| format!("rename {}: {e}", out.display()))
}

/// vm-prepare, then the modules, the C reference and the compat initramfs.
/// Returns the artifacts with that initramfs in place of vm-prepare's.
pub fn prepare(opts: &Options) -> Result<vm::Artifacts> {
    let art = prepare::prepare(&opts.vm)?;
    if !art.product {
        return Err("compat-prepare needs our staprun/stapio: drop --infra-only".into());
    }
    let t0 = Instant::now();
    let cache = vm::cache_dir();
    let mut apt = Apt { updated: false };
    let (version, line) = step("host SystemTap", || host_stap(&mut apt))?;
    eprintln!("xtask: {line}");
    let (rt, rt_key) = step("SystemTap runtime", || runtime(&cache, &art.kver, &version))?;
    let mods = step("SystemTap modules", || {
        modules(
            &cache,
            &art.kver,
            &line,
            Translator::Host {
                runtime: rt.clone(),
            },
            &rt_key,
        )
    })?;
    let c = step("C staprun/stapio", || c_reference(&mut apt, &cache))?;
    let five = if opts.no_stap5 {
        None
    } else {
        Some(stap5(&mut apt, &cache, &art.kver)?)
    };
    let dir = cache.join("compat");
    mkdir(&dir)?;
    let initrd = dir.join(format!("initramfs-compat-{}.cpio", art.kver));
    step("compat initramfs", || {
        let mut extras = Vec::new();
        c_tools_entries("", &c, &mods, &mut extras)?;
        if let Some(f) = &five {
            c5_entries(&f.c, &f.mods, &mut extras)?;
        }
        image(&art.initrd, &extras, &initrd)
    })?;
    let names: Vec<&str> = mods.keys().map(String::as_str).collect();
    let mut env = format!(
        "kver={}\ninitrd={}\nmodules={}\nstap={version}\nc_version={}\n",
        art.kver,
        initrd.display(),
        names.join(","),
        c.version
    );
    match &five {
        Some(f) => env.push_str(&format!(
            "stap5={}\nc5_version={}\n",
            f.version, f.c.version
        )),
        None => env.push_str("stap5=no\n"),
    }
    let env_path = cache.join(ENV_FILE);
    fs::write(&env_path, env).map_err(|e| format!("write {}: {e}", env_path.display()))?;
    eprintln!(
        "xtask: compat-prepare done in {:.1}s (after vm-prepare) -> {}",
        t0.elapsed().as_secs_f64(),
        env_path.display()
    );
    Ok(vm::Artifacts { initrd, ..art })
}
