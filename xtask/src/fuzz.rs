//! `cargo xtask fuzz [--seconds N]`: build the cargo-fuzz targets in fuzz/
//! and run each for a bounded time on its checked-in corpus (a smoke run in
//! `cargo xtask test`; longer runs by hand). cargo-fuzz needs nightly
//! features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Instant;

use crate::Result;

pub const TARGETS: [&str; 4] = ["control_decode", "relay_parse", "cli_parse", "elf_read"];

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    let st = cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err("cannot install cargo-fuzz (cargo install cargo-fuzz)".into())
    }
}

/// Run every target for `seconds`; any crash fails.
pub fn run(seconds: u32) -> Result<()> {
    ensure_cargo_fuzz()?;
    let dir = crate::prepare::workspace_root().join("fuzz");
    for t in TARGETS {
        let t0 = Instant::now();
        // New inputs go to a scratch corpus (first directory); the
        // checked-in one is only read.
        let corpus = dir.join("corpus").join(t);
        let scratch = crate::prepare::workspace_root()
            .join("target/fuzz-scratch")
            .join(t);
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        let out = cargo()
            .current_dir(&dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "-O", t])
            .arg(&scratch)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-max_len=65536",
            ])
            .output()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let done = log
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
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            for l in tail.into_iter().rev() {
                eprintln!("  {l}");
            }
            return Err(format!(
                "fuzz target {t} failed (see the crash above; artifacts in fuzz/artifacts/{t})"
            ));
        }
    }
    Ok(())
}
