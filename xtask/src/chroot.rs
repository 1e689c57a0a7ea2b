//! The one way xtask runs commands in a Debian chroot (deb-test's bookworm copies, the Debian
//! guest's root, vm-prepare's trixie chroot), and removing such trees.
//!
//! Every command runs in a mount namespace of its own (unshare) in which /proc (objtool and apt
//! read it) and, for the deb-test copies, the shared apt archive directory are mounted: the
//! mounts end with the command, also when it fails or is killed, so nothing stays mounted on
//! the host. The environment is clean (`env -i`).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use xshell::{Cmd, Shell};

use crate::cmd::{self, Captured, cmd};
use crate::error::Result;

/// Mounts /proc (and the archive directory, when `$2` names one) and chroots into `$1`.
const ENTER: &str = r#"root=$1 archives=$2
shift 2
mount -t proc proc "$root/proc"
if [ -n "$archives" ]; then mount --bind "$archives" "$root/var/cache/apt/archives"; fi
exec chroot "$root" "$@""#;

/// The environment of every command in a chroot.
const ENV: [&str; 5] = [
    "-i",
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LC_ALL=C.UTF-8",
    "DEBIAN_FRONTEND=noninteractive",
];

/// A chroot to run commands in.
pub struct Chroot {
    pub root: PathBuf,
    /// Mounted over the chroot's /var/cache/apt/archives for each command.
    pub archives: Option<PathBuf>,
    /// Every [`Chroot::sh`] script, with its output and status, is appended here.
    pub log: Option<fs::File>,
}

impl Chroot {
    pub fn new(root: &Path) -> Chroot {
        Chroot {
            root: root.to_path_buf(),
            archives: None,
            log: None,
        }
    }

    /// `argv` in the chroot.
    pub fn cmd<'a>(&self, sh: &'a Shell, argv: &[&str]) -> Cmd<'a> {
        let root = &self.root;
        let archives = self.archives.as_deref().unwrap_or(Path::new(""));
        cmd!(
            sh,
            "unshare --mount --propagation private -- sh -ec {ENTER} sh {root} {archives} env {ENV...} {argv...}"
        )
    }

    /// `argv` in the chroot: its stdout, or an error with the end of its stderr.
    pub fn output(&self, argv: &[&str]) -> Result<String> {
        let sh = cmd::shell()?;
        cmd::output(self.cmd(&sh, argv))
    }

    /// `argv` in the chroot, both outputs captured.
    pub fn capture(&self, argv: &[&str]) -> Result<Captured> {
        let sh = cmd::shell()?;
        cmd::capture(self.cmd(&sh, argv))
    }

    /// `sh -ec SCRIPT` in the chroot, logged: stdout, or an error with the end of both outputs.
    pub fn sh(&mut self, script: &str) -> Result<String> {
        let out = self.capture(&["sh", "-ec", script])?;
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(
                f,
                "$ {script}\n{}{}[{}]\n",
                out.stdout, out.stderr, out.status
            );
        }
        if out.status.success() {
            return Ok(out.stdout);
        }
        let all = format!("{}{}", out.stdout, out.stderr);
        Err(format!(
            "`{script}` in {} failed ({}):\n{}",
            self.root.display(),
            out.status,
            cmd::tail(&all, 20)
        )
        .into())
    }
}

/// Mount points at or under `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
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
pub fn remove_tree(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    let sh = cmd::shell()?;
    for m in mounts_under(p) {
        eprintln!("xtask: umount -l {m} (left mounted by an earlier run)");
        cmd::output(cmd!(sh, "umount -l {m}"))?;
    }
    cmd::output(cmd!(sh, "rm -rf --one-file-system {p}")).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line deb-test and vm-prepare ran before they shared this runner.
    #[test]
    fn the_command_enters_a_mount_namespace_and_a_clean_environment() {
        let sh = cmd::shell().unwrap();
        let mut ch = Chroot::new(Path::new("/c"));
        let plain = ch.cmd(&sh, &["apt-get", "update"]).to_string();
        assert!(
            plain.starts_with("unshare --mount --propagation private -- sh -ec \"root=$1"),
            "{plain}"
        );
        assert!(
            plain.ends_with(
                "\" sh /c  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive apt-get update"
            ),
            "{plain}"
        );
        ch.archives = Some(PathBuf::from("/a"));
        let bound = ch.cmd(&sh, &["true"]).to_string();
        assert!(bound.contains("\" sh /c /a env -i "), "{bound}");
    }

    /// For real, in deb-test's base chroot: /proc is mounted for the command and gone after.
    /// `cargo test -p xtask -- --ignored runs_in_the_base_chroot` (as root, after a deb-test).
    #[test]
    #[ignore = "needs root and target/deb-chroot/bookworm (cargo xtask deb-test)"]
    fn runs_in_the_base_chroot() {
        let root = vm::target_dir().join("deb-chroot/bookworm");
        let mut ch = Chroot::new(&root);
        let out = ch
            .output(&[
                "sh",
                "-c",
                "grep ^VERSION_CODENAME= /etc/os-release; ls /proc/self/fd | wc -l; echo $HOME",
            ])
            .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "VERSION_CODENAME=bookworm");
        assert_eq!(lines[2], "/root");
        let e = ch
            .sh("echo to-stdout; echo to-stderr >&2; exit 7")
            .unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("exit status: 7") && e.contains("to-stdout\nto-stderr"),
            "{e}"
        );
        assert!(mounts_under(&root).is_empty());
    }
}
