//! Running host programs (through xshell: cwd, env, stdin bytes, captured output, status
//! checks), and what xtask knows about the host it runs on.
//!
//! Every program gets /dev/null as its stdin unless bytes are given. Three ways to run one:
//! [`run`] (output on the terminal; a failure names the command and its exit code),
//! [`output`] (stdout returned; a failure shows the end of its stderr) and [`capture`] (both
//! outputs and the status, for callers that judge them themselves).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

pub use xshell::cmd;
use xshell::{Cmd, Shell};

use crate::error::{Error, Result};

/// A shell in xtask's current directory.
pub fn shell() -> Result<Shell> {
    Ok(Shell::new()?)
}

/// A shell whose commands run in `dir`.
pub fn shell_in(dir: &Path) -> Result<Shell> {
    let sh = Shell::new()?;
    sh.change_dir(dir);
    Ok(sh)
}

/// `$CARGO` (the cargo that runs xtask) or `cargo`.
pub fn cargo(sh: &Shell) -> Cmd<'_> {
    sh.cmd(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with its output on the terminal.
pub fn run(cmd: Cmd<'_>) -> Result<()> {
    Ok(cmd.quiet().run()?)
}

/// Runs `cmd`, returning its stdout; a failure shows the command, its status and the last 15
/// lines of its stderr.
pub fn output(cmd: Cmd<'_>) -> Result<String> {
    capture(cmd)?.check_stderr(15).map(|c| c.stdout)
}

/// What a program printed, and how it ended.
pub struct Captured {
    /// The command line, as error messages show it.
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    /// The program's failure: its command, status and `tail`.
    pub fn failure(&self, tail: String) -> Error {
        Error::Failed {
            cmd: self.cmd.clone(),
            status: self.status,
            tail,
        }
    }

    /// Itself if the program succeeded, else its failure with the last `n` lines of stderr.
    pub fn check_stderr(self, n: usize) -> Result<Captured> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(self.failure(tail(&self.stderr, n)))
        }
    }
}

/// Runs `cmd` capturing both outputs; only a program that cannot be started is an error.
pub fn capture(cmd: Cmd<'_>) -> Result<Captured> {
    let shown = cmd.to_string();
    let out = cmd.quiet().ignore_status().output()?;
    Ok(Captured {
        cmd: shown,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `cmd` with its stderr on the terminal (progress lines), returning its status and
/// captured stdout.
pub fn stdout_and_status(cmd: Cmd<'_>) -> Result<(ExitStatus, String)> {
    let shown = cmd.to_string();
    let out = Command::from(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Msg(format!("cannot run `{shown}`: {e}")))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = manifest
        .canonicalize()
        .unwrap_or_else(|_| manifest.to_path_buf());
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// A shell whose commands run in the workspace's root directory.
pub fn workspace_shell() -> Result<Shell> {
    shell_in(&workspace_root())
}

/// Whether xtask runs with effective uid 0.
pub fn is_root() -> bool {
    // /proc/self/status "Uid:" real effective saved fs
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs one named step, printing whether it passed and how long it took.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_status_and_stdin() {
        let sh = shell().unwrap();
        let word = "hello world";
        assert_eq!(output(cmd!(sh, "echo {word}")).unwrap(), "hello world\n");
        let e = output(cmd!(sh, "sh -c 'echo out; echo err >&2; exit 3'"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "`sh -c \"echo out; echo err >&2; exit 3\"` failed (exit status: 3):\nerr"
        );
        let c = capture(cmd!(sh, "cat").stdin("bytes in")).unwrap();
        assert!(c.status.success());
        assert_eq!(c.stdout, "bytes in");
        let e = run(cmd!(sh, "false")).unwrap_err().to_string();
        assert!(e.contains("`false`"), "{e}");
        let (st, out) = stdout_and_status(cmd!(sh, "sh -c 'echo x; exit 1'")).unwrap();
        assert_eq!((st.code(), out.as_str()), (Some(1), "x\n"));
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }
}
