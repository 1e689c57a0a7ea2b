//! `cargo xtask test` (every check, as CI runs it) and `cargo xtask install`.
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::Result;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(crate::prepare::workspace_root());
    c
}

fn step(name: &str, mut cmd: Command) -> Result<f64> {
    let t0 = Instant::now();
    eprintln!("xtask test: == {name}: {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{name}: cannot run: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("xtask test: == {name}: {status} in {secs:.1}s");
    if status.success() { Ok(secs) } else { Err(format!("{name} failed ({status})")) }
}

/// Every check: format, lints, host tests, the pipeline benchmark (figures
/// only), then the VM suite on a real kernel.
pub fn test(opts: &crate::prepare::Options) -> Result<()> {
    let t0 = Instant::now();
    let mut times = Vec::new();
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    times.push(("fmt", step("fmt", c)?));
    let mut c = cargo();
    c.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    times.push(("clippy", step("clippy", c)?));
    let mut c = cargo();
    c.args(["nextest", "run", "--workspace", "--exclude", "vm", "--no-fail-fast"]);
    times.push(("host tests", step("host tests", c)?));
    let mut c = cargo();
    c.args(["bench", "-p", "stapio", "--bench", "pipeline"]);
    times.push(("benchmark", step("benchmark (figures only)", c)?));
    let t = Instant::now();
    crate::prepare::prepare(opts)?;
    times.push(("vm-prepare", t.elapsed().as_secs_f64()));
    let mut c = cargo();
    c.args(["nextest", "run", "-p", "vm", "--test", "vm", "--no-fail-fast"]);
    times.push(("vm tests", step("vm tests", c)?));
    for (n, s) in &times {
        eprintln!("xtask test: {n:<12} {s:>7.1}s");
    }
    eprintln!("xtask test: all passed in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct InstallOptions {
    /// Installation prefix (staprun goes to PREFIX/bin, stapio to PREFIX/libexec/staprun).
    #[arg(long, default_value = "/usr")]
    pub prefix: PathBuf,
    /// Stage into this directory instead of the live system (no root needed; owners are not set).
    #[arg(long)]
    pub destdir: Option<PathBuf>,
}

/// Build with the install paths fixed at build time and install with the
/// modes the security model needs.
pub fn install(o: &InstallOptions) -> Result<()> {
    let root = o.destdir.is_none();
    if root && !is_root() {
        return Err("install needs root (or give --destdir DIR to stage the files)".into());
    }
    let staprun_path = o.prefix.join("bin/staprun");
    let stapio_path = o.prefix.join("libexec/staprun/stapio");
    let mut c = cargo();
    c.args(["build", "--release", "-p", "staprun", "-p", "stapio"])
        .env("STAPRUN_PATH", &staprun_path)
        .env("STAPIO_PATH", &stapio_path);
    step("build", c)?;
    let target = crate::prepare::workspace_root().join("target/release");
    let dest = |p: &Path| match &o.destdir {
        Some(d) => d.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_path_buf(),
    };
    let gid = if root { Some(ensure_group("stapusr")?) } else { None };
    if root {
        ensure_group("stapsys")?;
        ensure_group("stapdev")?;
    }
    for (bin, path, mode) in [("stapio", &stapio_path, 0o755), ("staprun", &staprun_path, 0o4110)] {
        let d = dest(path);
        std::fs::create_dir_all(d.parent().ok_or("bad path")?).map_err(|e| format!("{}: {e}", d.display()))?;
        let tmp = d.with_extension("new");
        std::fs::copy(target.join(bin), &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        if root {
            let g = if bin == "staprun" { gid } else { Some(0) };
            std::os::unix::fs::chown(&tmp, Some(0), g).map_err(|e| format!("chown {}: {e}", tmp.display()))?;
        }
        let m = if root { mode } else { mode & 0o777 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m)).map_err(|e| format!("{e}"))?;
        std::fs::rename(&tmp, &d).map_err(|e| format!("{}: {e}", d.display()))?;
        println!("installed {} (mode {:o})", d.display(), m);
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn ensure_group(name: &str) -> Result<u32> {
    let lookup = || -> Option<u32> {
        let o = Command::new("getent").args(["group", name]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).split(':').nth(2)?.trim().parse().ok()
    };
    if let Some(g) = lookup() {
        return Ok(g);
    }
    let st = Command::new("groupadd").args(["--system", name]).status().map_err(|e| format!("groupadd: {e}"))?;
    if !st.success() {
        return Err(format!("cannot create group {name}"));
    }
    lookup().ok_or_else(|| format!("group {name} missing after groupadd"))
}
