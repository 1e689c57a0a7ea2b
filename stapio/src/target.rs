//! The target process: `-x PID`, or `-c CMD` forked and held before `exec`
//! until the module's probes have started.
//!
//! The C stapio splits CMD with `wordexp(3)` and `execvp`s the words,
//! falling back to `sh -c CMD` when CMD has shell metacharacters. We do
//! the same for the common case: CMD made only of plain words (letters,
//! digits and `_-./:=,+@%^`) whose first word is found on `PATH` is run
//! directly, so the target pid is the command's own; anything else
//! (quotes, `$`, globs, redirections, `;`, builtins) is run with
//! `/bin/sh -c CMD`. The hold is a pipe rather than SIGUSR1: the child
//! blocks reading it, starts when stapio writes a byte, and exits with
//! status 1 without running anything if stapio closes it first.
//!
//! The environment of the command (and of the module's `system()`
//! commands) is [`child_env`]: the set staprun handed over for them, not
//! stapio's own.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use stap_common::child_env;
use stap_common::ids::Pid;
use stap_common::sys::{self, ChildStatus, ExecSpec};

use crate::error::Error;

/// The environment of stapio's children (the `-c` command, `system()`
/// commands), as `NAME=value` entries: the set staprun handed over
/// (`stap_common::child_env`: the caller's environment minus the secure
/// list and the override variables), or, in a stapio started without one,
/// stapio's own environment.
pub fn child_env() -> Vec<OsString> {
    child_env_of(std::env::vars_os())
}

/// [`child_env`] for the environment `own`.
pub fn child_env_of(own: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<OsString> {
    let own: Vec<(OsString, OsString)> = own.into_iter().collect();
    let vars = child_env::decode(own.iter().cloned()).unwrap_or(own);
    vars.into_iter()
        .map(|(mut k, v)| {
            k.push("=");
            k.push(v);
            k
        })
        .collect()
}

/// How a `-c` command will be executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub path: PathBuf,
    pub argv: Vec<OsString>,
}

fn plain_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-./:=,+@%^".contains(c)
}

fn find_on_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let default = OsString::from("/usr/local/bin:/usr/bin:/bin");
    let var = path_var.map_or(default, OsStr::to_os_string);
    std::env::split_paths(&var)
        .map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".").join(name)
            } else {
                d.join(name)
            }
        })
        .find(|p| is_exec(p))
}

/// Decide how to run CMD (see the module documentation).
pub fn plan(cmd: &str, read_stdin: bool, path_var: Option<&OsStr>) -> Plan {
    let words: Vec<&str> = cmd.split_ascii_whitespace().collect();
    let simple = !words.is_empty()
        && cmd
            .chars()
            .all(|c| plain_word_char(c) || c.is_ascii_whitespace())
        // An assignment prefix (`A=b cmd`) is the shell's business.
        && !words[0].contains('=');
    if simple && let Some(path) = find_on_path(words[0], path_var) {
        return Plan {
            path,
            argv: words.iter().map(OsString::from).collect(),
        };
    }
    // With -i the module owns stdin; keep the command off it (as the C
    // stapio does for the `sh -c` case).
    let script = if read_stdin {
        format!("{cmd} < /dev/null")
    } else {
        cmd.to_string()
    };
    Plan {
        path: PathBuf::from("/bin/sh"),
        argv: vec!["sh".into(), "-c".into(), script.into()],
    }
}

/// The `-c` child.
#[derive(Debug)]
pub struct Target {
    pid: Pid,
    gate: Option<OwnedFd>,
    status: Option<ChildStatus>,
}

impl Target {
    /// Fork CMD, held until [`Target::release`].
    pub fn spawn(cmd: &str, read_stdin: bool) -> Result<Target, Error> {
        // The command is looked up on its own PATH, as execvp in the child does.
        let env = child_env();
        let path_var = env
            .iter()
            .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
            .map(OsStr::from_bytes);
        let p = plan(cmd, read_stdin, path_var);
        let spawn_err = |source| Error::TargetSpawn {
            cmd: cmd.to_string(),
            source,
        };
        let spec = ExecSpec::new(p.path.as_os_str(), &p.argv, &env).map_err(spawn_err)?;
        let (pid, gate) = sys::spawn_held(&spec).map_err(spawn_err)?;
        Ok(Target {
            pid,
            gate: Some(gate),
            status: None,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Let the command run (the probes have started).
    pub fn release(&mut self) -> Result<(), Error> {
        if let Some(gate) = self.gate.take() {
            let n = sys::write(std::os::fd::AsFd::as_fd(&gate), b"g").map_err(|source| {
                Error::TargetRelease {
                    pid: self.pid,
                    source,
                }
            })?;
            if n != 1 {
                return Err(Error::TargetRelease {
                    pid: self.pid,
                    source: std::io::Error::other("short write"),
                });
            }
        }
        Ok(())
    }

    /// The exit status, once (a non-blocking wait).
    pub fn poll_exit(&mut self) -> Option<ChildStatus> {
        if self.status.is_some() {
            return None;
        }
        match sys::waitpid(self.pid, true) {
            Ok(Some(s)) => {
                self.status = Some(s);
                Some(s)
            }
            Ok(None) => None,
            // ECHILD: someone else reaped it; treat as gone.
            Err(_) => {
                let s = ChildStatus::Exited(0);
                self.status = Some(s);
                Some(s)
            }
        }
    }

    pub fn exited(&self) -> bool {
        self.status.is_some()
    }

    /// SIGKILL and reap (the probes failed to start).
    pub fn kill(&mut self) {
        self.gate = None;
        if self.status.is_none() {
            let _ = sys::kill(self.pid, libc::SIGKILL);
            if let Ok(Some(s)) = sys::waitpid(self.pid, false) {
                self.status = Some(s);
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // A child never released must not run, nor linger as a zombie.
        if self.gate.is_some() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_run_directly_others_through_sh() {
        let path = Some(OsStr::new("/usr/bin:/bin"));
        let p = plan("true", false, path);
        assert!(p.path.ends_with("true"), "{p:?}");
        assert_eq!(p.argv, vec![OsString::from("true")]);
        let p = plan("sleep 1", false, path);
        assert_eq!(p.argv.len(), 2);
        for shelly in [
            "echo $HOME",
            "a; b",
            "ls *",
            "x=1 true",
            "echo 'q'",
            "exit 3",
        ] {
            let p = plan(shelly, false, path);
            assert_eq!(p.path, PathBuf::from("/bin/sh"), "{shelly}");
            assert_eq!(p.argv[2], OsString::from(shelly));
        }
        let p = plan("echo 'q'", true, path);
        assert_eq!(p.argv[2], OsString::from("echo 'q' < /dev/null"));
        // Not found on PATH: the shell reports it.
        let p = plan("no-such-command-xyz", false, path);
        assert_eq!(p.path, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn children_get_the_handed_over_set_not_stapios_own() {
        let os = |v: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
            v.iter().map(|(k, v)| (k.into(), v.into())).collect()
        };
        let own = os(&[
            ("PATH", "/usr/bin"),
            ("SYSTEMTAP_VERBOSE", "0"),
            ("STAPRUN_CHILD_ENV", "1"),
            ("STAPRUN_CHILD_ENV_PATH", "/usr/bin"),
            ("STAPRUN_CHILD_ENV_JAVA_HOME", "/x"),
        ]);
        assert_eq!(
            child_env_of(own),
            vec![OsString::from("PATH=/usr/bin"), "JAVA_HOME=/x".into()]
        );
        // Started by hand: its own environment.
        assert_eq!(
            child_env_of(os(&[("PATH", "/bin"), ("X", "a=b")])),
            vec![OsString::from("PATH=/bin"), "X=a=b".into()]
        );
    }
}
