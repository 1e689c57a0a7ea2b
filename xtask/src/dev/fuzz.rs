//! `cargo xtask fuzz [--seconds N]`: build the cargo-fuzz targets in fuzz/
//! and run each for a bounded time on its checked-in corpus (a smoke run in
//! `cargo xtask test`; longer runs by hand). cargo-fuzz needs nightly
//! features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.

use std::time::Instant;

use crate::cmd::{self, workspace_root};
use crate::error::{Context as _, Result, bail};
use crate::files;

pub const TARGETS: [&str; 4] = ["control_decode", "relay_parse", "cli_parse", "elf_read"];

fn ensure_cargo_fuzz() -> Result<()> {
    let sh = cmd::shell()?;
    let ok =
        cmd::capture(cmd::cargo(&sh).args(["fuzz", "--version"])).is_ok_and(|c| c.status.success());
    if ok {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    cmd::run(cmd::cargo(&sh).args(["install", "cargo-fuzz", "--locked"]))
        .context("cannot install cargo-fuzz (cargo install cargo-fuzz)")
}

/// Run every target for `seconds`; any crash fails.
pub fn run(seconds: u32) -> Result<()> {
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    let sh = cmd::shell_in(&dir)?;
    for t in TARGETS {
        let t0 = Instant::now();
        // New inputs go to a scratch corpus (first directory); the
        // checked-in one is only read.
        let corpus = dir.join("corpus").join(t);
        let scratch = workspace_root().join("target/fuzz-scratch").join(t);
        files::mkdir(&scratch)?;
        let out = cmd::capture(
            cmd::cargo(&sh)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["fuzz", "run", "-O", t])
                .arg(&scratch)
                .arg(&corpus)
                .args([
                    "--",
                    &format!("-max_total_time={seconds}"),
                    "-max_len=65536",
                ]),
        )?;
        let done = out
            .stderr
            .lines()
            .rfind(|l| l.contains("DONE"))
            .unwrap_or("")
            .trim()
            .to_string();
        eprintln!(
            "xtask: fuzz {t}: {done} ({:.0}s)",
            t0.elapsed().as_secs_f64()
        );
        if !out.status.success() {
            for l in cmd::tail(&out.stderr, 30).lines() {
                eprintln!("  {l}");
            }
            bail!("fuzz target {t} failed (see the crash above; artifacts in fuzz/artifacts/{t})");
        }
    }
    Ok(())
}
