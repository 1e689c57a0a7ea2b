//! The SystemTap modules of the compat suite: `stap -p4` of compat/*.stp for the guest
//! kernel, with the host's 4.x translator (its runtime patched when the kernel needs it) or the
//! trixie chroot's 5.x one, cached under target/vm-cache/stap by a key of everything a module
//! depends on.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::compat_dir;
use crate::apt::Apt;
use crate::cmd::{self, Captured, cmd};
use crate::error::{Context as _, Result, bail};
use crate::files::{self, mkdir, read};

const RUNTIME_SRC: &str = "/usr/share/systemtap/runtime";
const PATCH_4_8: &str = "runtime-4.8-task_work_cancel_func.patch";
/// Parallel `stap -p4` runs (each keeps one core busy compiling one big C file).
const JOBS: usize = 2;

/// One module to build: `// compat-build: NAME [OPTIONS...]` in a compat/*.stp script
/// (default: the file stem, no options).
#[derive(Clone, Debug)]
pub(super) struct Build {
    name: String,
    script: PathBuf,
    options: Vec<String>,
}

/// FNV-1a, 64 bits: a stable cache key (not a security boundary).
pub(super) struct Fnv(u64);

impl Fnv {
    pub(super) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(super) fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        self
    }

    pub(super) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The modules compat/*.stp declares.
fn builds() -> Result<Vec<Build>> {
    let mut scripts: Vec<PathBuf> = files::read_dir(&compat_dir())?
        .into_iter()
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
            bail!(
                "{}: module name {:?} must be [A-Za-z0-9_], at most 55 characters",
                b.script.display(),
                b.name
            );
        }
        if !seen.insert(b.name.clone()) {
            bail!("module {} is declared twice in compat/", b.name);
        }
    }
    Ok(out)
}

/// `stap -V` says e.g. "Systemtap translator/driver (version 4.8/0.188, Debian version 4.8-2)".
fn stap_version() -> Result<(String, String)> {
    // stap creates $SYSTEMTAP_DIR (default ~/.systemtap) even for -V: keep it in the cache.
    let home = vm::cache_dir().join("stap").join("home");
    mkdir(&home)?;
    let sh = cmd::shell()?;
    let out = cmd::capture(cmd!(sh, "stap -V").env("SYSTEMTAP_DIR", &home))?;
    parse_stap_version(&out, "`stap -V`")
}

/// The version and the first line of `stap -V` (4.8 prints it on stderr,
/// 5.1 on stdout).
pub(super) fn parse_stap_version(out: &Captured, what: &str) -> Result<(String, String)> {
    let text = format!("{}{}", out.stderr, out.stdout);
    let line = text.lines().next().unwrap_or_default().trim().to_owned();
    let version = line
        .split("(version ")
        .nth(1)
        .and_then(|r| r.split(['/', ',', ')']).next())
        .map(str::to_owned)
        .ok_or_else(|| format!("cannot parse {what}: {line:?}"))?;
    Ok((version, line))
}

/// The host's SystemTap translator (installed if missing): its version and `stap -V` line.
pub(super) fn host_stap(apt: &mut Apt) -> Result<(String, String)> {
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
        bail!("compat-prepare expects Debian bookworm's SystemTap 4.x translator, found {line:?}");
    }
    Ok((version, line))
}

/// The headers declare the renamed function but the runtime still calls the old one.
pub(super) fn needs_task_work_patch(kver: &str, runtime: &Path) -> Result<bool> {
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
    let patch = read(&compat_dir().join(PATCH_4_8))?;
    let sh = cmd::shell()?;
    let out = cmd::capture(
        cmd!(
            sh,
            "patch -p1 --forward --batch --no-backup-if-mismatch -d {dir}"
        )
        .stdin(patch),
    )?;
    if !out.status.success() {
        bail!(
            "compat/{PATCH_4_8} does not apply to {}: {}{}",
            dir.display(),
            out.stdout,
            out.stderr
        );
    }
    Ok(())
}

/// A runtime directory for `stap -R`: the installed one, or a patched copy.
pub(super) fn runtime(cache: &Path, kver: &str, version: &str) -> Result<(PathBuf, String)> {
    let src = Path::new(RUNTIME_SRC);
    if !needs_task_work_patch(kver, src)? {
        return Ok((src.to_path_buf(), "stock".into()));
    }
    if !version.starts_with("4.8") {
        bail!(
            "the guest kernel renamed task_work_cancel() but compat/{PATCH_4_8} is for SystemTap 4.8, not {version}"
        );
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
    let sh = cmd::shell()?;
    cmd::run(cmd!(sh, "cp -a {src} {tmp}"))?;
    apply_task_work_patch(&tmp).note(|| RUNTIME_SRC.to_owned())?;
    files::write(&tmp.join(".compat-ok"), b"")?;
    let _ = fs::remove_dir_all(&dir);
    files::rename(&tmp, &dir)?;
    eprintln!(
        "xtask: runtime {} patched with compat/{PATCH_4_8}",
        dir.display()
    );
    Ok((dir, key))
}

/// Which `stap` builds the modules.
#[derive(Clone, Debug)]
pub(super) enum Translator {
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
    let sh = cmd::shell_in(&work)?;
    let (kver, name, options, script) = (&env.kver, &b.name, &b.options, &b.script);
    let stap = match &env.translator {
        Translator::Host { runtime } => cmd!(
            sh,
            "stap -p4 -r {kver} -R {runtime} -m {name} {options...} {script}"
        )
        .env("SYSTEMTAP_DIR", &env.home),
        Translator::Chroot { root } => {
            // The script is copied in; paths below are the chroot's.
            files::copy(&b.script, &work.join("script.stp"))?;
            let inner = |p: &Path| -> Result<String> {
                Ok(p.strip_prefix(root)
                    .map(|r| format!("/{}", r.display()))
                    .map_err(|_| format!("{} is outside {}", p.display(), root.display()))?)
            };
            let mut line = format!(
                "cd {} && exec stap -p4 -r {} -m {}",
                inner(&work)?,
                env.kver,
                b.name
            );
            for o in &b.options {
                if o.contains('\'') {
                    bail!("{}: option {o:?} has a quote", b.script.display());
                }
                line.push_str(&format!(" '{o}'"));
            }
            line.push_str(" script.stp");
            let home = format!("SYSTEMTAP_DIR={}", inner(&env.home)?);
            // Plain chroot(8), no mount namespace: stap -p4 needs no /proc.
            cmd!(
                sh,
                "chroot {root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root {home} /bin/sh -c {line}"
            )
        }
    };
    let out = cmd::capture(stap)?;
    let built = work.join(format!("{}.ko", b.name));
    if !out.status.success() || !built.is_file() {
        bail!(
            "stap -p4 -m {} {} failed ({}):\n{}",
            b.name,
            b.script.display(),
            out.status,
            cmd::tail(&out.stderr, 25)
        );
    }
    files::rename(&built, dest)?;
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
pub(super) fn modules(
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
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("{}", errors.join("\n\n"));
    }
    Ok(result)
}
