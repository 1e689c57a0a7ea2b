//! `dist`: staprun(8), stapio(8) and staprun's bash/zsh/fish completions, generated from the
//! one clap definition (`stap_common::cli::command`) into target/dist/.
//!
//! ```text
//! target/dist/man/staprun.8  stapio.8                 roff, checked with groff when present
//! target/dist/completions/bash/staprun  zsh/_staprun  fish/staprun.fish
//! ```
//!
//! Only the short options are shown: staprun and stapio parse SystemTap's getopt string
//! (`cli::normalize`); the long names in the clap definition are its internal canonical form
//! and are not accepted on the command line. Options the definition hides (`-t`) are
//! shown. stapio gets no completions: users do not run it (staprun executes it).

use std::path::{Path, PathBuf};

use clap::ValueHint;
use clap_complete::Shell;
use stap_common::cli::{self, Program};

use crate::cmd::{self, cmd};
use crate::error::{Error, Result, bail};
use crate::files;

/// The option letters each program accepts, from the one option table
/// (`stap_common::cli::OPTIONS`); the man page must document every one.
pub fn option_letters(program: Program) -> String {
    cli::options(program).map(|o| o.short).collect()
}

/// Build-time paths of the two programs (`STAPRUN_PATH`, `STAPIO_PATH`) for an install prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub prefix: PathBuf,
    pub staprun: PathBuf,
    pub stapio: PathBuf,
}

impl Paths {
    pub fn for_prefix(prefix: &Path) -> Self {
        Paths {
            prefix: prefix.to_path_buf(),
            staprun: prefix.join("bin/staprun"),
            stapio: prefix.join("libexec/staprun/stapio"),
        }
    }

    /// The compiled-in defaults of staprun and stapio.
    pub fn is_default(&self) -> bool {
        self.prefix == Path::new("/usr")
    }

    /// Where the man pages and completions go, relative to the root of the install.
    pub fn data_files(&self) -> Vec<(PathBuf, DataFile)> {
        let p = self.prefix.strip_prefix("/").unwrap_or(&self.prefix);
        // Debian's zsh searches vendor-completions under /usr, site-functions under /usr/local.
        let zsh = if self.is_default() {
            "share/zsh/vendor-completions/_staprun"
        } else {
            "share/zsh/site-functions/_staprun"
        };
        vec![
            (
                p.join("share/man/man8/staprun.8.gz"),
                DataFile::Man(Program::Staprun),
            ),
            (
                p.join("share/man/man8/stapio.8.gz"),
                DataFile::Man(Program::Stapio),
            ),
            (
                p.join("share/bash-completion/completions/staprun"),
                DataFile::Completion(Shell::Bash),
            ),
            (p.join(zsh), DataFile::Completion(Shell::Zsh)),
            (
                p.join("share/fish/vendor_completions.d/staprun.fish"),
                DataFile::Completion(Shell::Fish),
            ),
        ]
    }
}

/// A generated file.
#[derive(Clone, Copy, Debug)]
pub enum DataFile {
    Man(Program),
    Completion(Shell),
}

impl DataFile {
    /// The file's bytes (man pages gzip-compressed, as installed).
    pub fn render(self, paths: &Paths) -> Result<Vec<u8>> {
        match self {
            DataFile::Man(p) => gzip(&man_page(p, paths)?),
            DataFile::Completion(shell) => Ok(completion(shell)),
        }
    }
}

/// The clap definition as users see it: short options only, nothing hidden, value hints and
/// `-C`'s three values (presentation only: the programs parse with `cli::parse`).
pub fn user_facing(program: Program) -> clap::Command {
    let mut cmd = cli::command(program).mut_args(|a| {
        let hint = match a.get_id().as_str() {
            "module" | "output" | "uprobes" => Some(ValueHint::FilePath),
            "command" => Some(ValueHint::CommandString),
            _ => None,
        };
        let mut a = a.long(None).hide(false);
        if a.get_id() == "color" {
            a = a.value_parser(["never", "auto", "always"]);
        }
        match hint {
            Some(h) => a.value_hint(h),
            None => a,
        }
    });
    cmd.build();
    cmd
}

fn completion(shell: Shell) -> Vec<u8> {
    let mut cmd = user_facing(Program::Staprun);
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "staprun", &mut out);
    out
}

/// Roff for `\-` and other escapes in our own text is written by hand below; values from the
/// build (paths) contain no roff specials other than `-`.
fn roff_path(p: &Path) -> String {
    p.display().to_string().replace('-', "\\-")
}

const STAPRUN_DESCRIPTION: &str = r#".PP
\fBstaprun\fR is the setuid\-root half of SystemTap's runtime. It decides whether the invoking
user may load the kernel module \fIMODULE\fR (built by \fBstap \-p4\fR), loads it, sends the
privileged setup messages, drops root for good and executes \fBstapio\fR(8) as the user, which
prints the module's output and at the end runs \fBstaprun \-d\fR to unload it.
.PP
\fIMODULE\fR is a path if it contains a slash, \fINAME\fB.ko\fR in the current directory, or else
\fINAME\fR in the blessed directory \fI/lib/modules/$(uname \-r)/systemtap\fR.
Options follow getopt rules: short options only, bundled flags (\fB\-vvL\fR), attached or separate
values (\fB\-b4\fR, \fB\-b 4\fR), \fB\-u\fR takes its optional \fIPATH\fR only attached
(\fB\-u/path/uprobes.ko\fR), and \fB\-\-\fR ends the options.
Module options are \fIname\fB=\fIvalue\fR words after \fIMODULE\fR.
"#;

const STAPRUN_SECURITY: &str = r#".SH SECURITY
\fBstaprun\fR is installed mode \fB04110\fR, owner \fBroot\fR, group \fBstapusr\fR: only root
and members of \fBstapusr\fR can execute it. It decides from the caller's \fIreal\fR user id and
groups:
.TP
.B root
may load any module, from any path.
.TP
.BR stapdev " member (with " stapusr ")"
may load any module, from any path.
.TP
.BR stapsys " or " stapusr " member only"
may load only modules in the blessed directory \fI/lib/modules/$(uname \-r)/systemtap\fR.
.TP
anyone else
nothing.
.PP
For a \fBstapusr\fR or \fBstapsys\fR caller every one of these must hold, and a refusal names
the rule that failed:
.IP \(bu 2
the blessed directory is owned by root and not world writable; if it is group writable, its
group is root's or \fBstapdev\fR's. The two layouts are \fB755 root:root\fR (only root publishes
modules) and \fB775 root:stapdev\fR (members of stapdev publish modules);
.IP \(bu 2
every directory on the way to it, from \fI/\fR, is owned by root and writable by nobody but root;
.IP \(bu 2
the module's parent directory is the blessed directory itself, and its name opens there with
\fBO_NOFOLLOW\fR (a symbolic link in the blessed directory is refused);
.IP \(bu 2
the module is a regular file, not world writable, not group writable unless its group is root's
or stapdev's, and owned by root or, in the \fB775 root:stapdev\fR layout, by a current member of
stapdev. (The C staprun refuses modules not owned by root.)
.PP
The decision is made on open file descriptors, and the bytes read from the descriptor that was
checked are the bytes given to \fBinit_module\fR(2) (\fB\-R\fR renames the module in that copy).
Nothing outside the blessed directory is opened for a stapusr or stapsys caller.
\fB\-u\fR (load uprobes.ko) is for root and stapdev only.
Signed modules are not supported: modules are authorized by the rules above only.
.SS Unloading
\fBstaprun \-d\fR \fINAME\fR (or \fB\-d '*'\fR, every such module) unloads only a SystemTap module
whose control file the real user may open read\-write and that no stapio holds open; any other
module is refused and stays loaded.
.SS Start-up hygiene
The environment is cleared at start; stapio gets only \fBTERM\fR, \fBLANG\fR, \fBLANGUAGE\fR,
\fBLC_*\fR, a safe \fBTZ\fR, \fBPATH\fR, \fBHOME\fR, \fBUSER\fR, \fBLOGNAME\fR,
\fBSYSTEMTAP_COLORS\fR, \fBCOLUMNS\fR and \fBLINES\fR. No override variable
(\fBSYSTEMTAP_STAPIO\fR, \fBSYSTEMTAP_STAPRUN\fR, \fBSYSTEMTAP_RUNTIME\fR,
\fBMODPROBE_OPTIONS\fR, \fBLD_*\fR) is honoured. \fB\-F\fR is refused.
stapio is executed from a path fixed when staprun was built: \fI@STAPIO@\fR; it must be a regular
file owned by root and writable only by root.
.SS Explaining a decision
.B staprun \-\-explain
.I MODULE
.PP
prints whether the caller may load \fIMODULE\fR and the rule that decides, in plain words, and
loads nothing. It must be the first argument. Exit status 0 if the load would be allowed, 1 if
not.
.SS Audit trail
Every module staprun loads, every load the rules above refuse, and every module
\fBstaprun \-d\fR unloads is logged with \fBsyslog\fR(3), facility \fBauthpriv\fR, identity
\fBstaprun\fR, one line each, as \fIkey\fB=\fIvalue\fR words (paths and free text quoted).
Usage errors, \fB\-A\fR, refused unloads and \fB\-\-explain\fR are not logged.
.PP
.EX
LOAD user="alice" uid=1001 class=stapusr module=pmod path="/lib/modules/6.1.0\-28\-amd64/systemtap/pmod.ko" sha256=\fIhex\fR rule="BlessedModule"
DENY user="alice" uid=1001 class=stapusr path="/tmp/pmod.ko" reason="\fIthe rule, in words\fR"
UNLOAD user="alice" uid=1001 class=stapusr module=pmod
.EE
.PP
\fBsha256\fR is the digest of the bytes given to the kernel (compare with \fBsha256sum\fR of the
module file). LOAD and UNLOAD are logged at priority notice, DENY at warning. With systemd:
\fBjournalctl \-t staprun\fR; with rsyslog, \fI/var/log/auth.log\fR.
.SH EXIT STATUS
1 for usage errors and when staprun is not setuid root; 255 when staprun refuses or fails
(including \fB\-d\fR and \fB\-\-explain\fR errors). After a load the status is stapio's: 0
when the run ended normally or detached, 1 when the module reported an error, its probes failed to
start, the \fB\-c\fR command failed or stapio itself failed. \fB\-\-explain\fR: 0 allowed, 1 not.
.SH FILES
.TP
.I @STAPRUN@
this program (mode 04110 root:stapusr).
.TP
.I @STAPIO@
stapio, executed after the load.
.TP
.I /lib/modules/$(uname \-r)/systemtap
the blessed directory: modules stapusr members may load.
.SH SEE ALSO
.BR stapio (8),
.BR stap (1),
.BR syslog (3),
.BR dpkg\-statoverride (1)
"#;

const STAPIO_DESCRIPTION: &str = r#".PP
\fBstapio\fR runs as the user after \fBstaprun\fR(8) has loaded a SystemTap module and dropped
privilege. It talks to the module over its control file and per\-CPU relay files, prints the
script's output (or writes it to \fB\-o\fR \fIFILE\fR), handles \fB\-c\fR, \fB\-x\fR, \fB\-L\fR,
\fB\-A\fR and the signals, and at the end runs \fI@STAPRUN@\fR \fB\-d\fR (a path fixed when
stapio was built) to unload the module.
.PP
stapio is not setuid and is normally not run by hand: \fBstaprun\fR executes it with the options
it was given and \fB\-F\fR \fIFD\fR, a descriptor of the module's directory opened by staprun.
Options follow getopt rules, as for \fBstaprun\fR(8): short options only.
"#;

const STAPIO_TAIL: &str = r#".SH FILES
.TP
.I @STAPIO@
this program (mode 0755 root:root).
.TP
.I @STAPRUN@
staprun, run with \fB\-d\fR to unload the module.
.SH SEE ALSO
.BR staprun (8),
.BR stap (1)
"#;

/// staprun(8) or stapio(8), as roff.
pub fn man_page(program: Program, paths: &Paths) -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(user_facing(program))
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("staprun-rs {}", stap_common::VERSION));
    let fill = |s: &str| {
        s.replace("@STAPIO@", &roff_path(&paths.stapio))
            .replace("@STAPRUN@", &roff_path(&paths.staprun))
    };
    let mut w = Vec::new();
    let e = |e: std::io::Error| format!("rendering {}(8): {e}", program.name());
    man.render_title(&mut w).map_err(e)?;
    man.render_name_section(&mut w).map_err(e)?;
    man.render_synopsis_section(&mut w).map_err(e)?;
    man.render_description_section(&mut w).map_err(e)?;
    let (desc, tail) = match program {
        Program::Staprun => (STAPRUN_DESCRIPTION, STAPRUN_SECURITY),
        Program::Stapio => (STAPIO_DESCRIPTION, STAPIO_TAIL),
    };
    w.extend_from_slice(fill(desc).as_bytes());
    let mut opts = Vec::new();
    man.render_options_section(&mut opts).map_err(e)?;
    // clap writes an optional value as `-u[=<PATH>]`; getopt takes it attached: `-uPATH`.
    let opts = String::from_utf8_lossy(&opts).into_owned();
    let clap_u = "\\fB\\-u\\fR[=\\fI<PATH>\\fR]";
    if !opts.contains(clap_u) {
        bail!(
            "{}(8): clap_mangen no longer writes {clap_u:?} for -u; update xtask/src/pkg/dist.rs",
            program.name()
        );
    }
    w.extend_from_slice(
        opts.replace(clap_u, "\\fB\\-u\\fR[\\fIPATH\\fR]")
            .as_bytes(),
    );
    w.extend_from_slice(fill(tail).as_bytes());
    man.render_version_section(&mut w).map_err(e)?;
    Ok(w)
}

/// `gzip -9n` (reproducible: no name, no time stamp), as Debian wants man pages.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let sh = cmd::shell()?;
    // Binary output: xshell's Output as it is, not `cmd::capture` (text).
    let out = cmd!(sh, "gzip -9n -c")
        .stdin(data)
        .ignore_status()
        .output()?;
    if !out.status.success() {
        return Err(Error::Failed {
            cmd: "gzip -9n -c".into(),
            status: out.status,
            tail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// Renders a man page with groff (if installed: warnings are errors) and checks that it
/// documents every option letter. Returns the rendered text (or the roff source without groff).
pub fn check_man(program: Program, roff: &[u8]) -> Result<String> {
    let name = program.name();
    let text = if vm::which("groff").is_some() {
        let sh = cmd::shell()?;
        // Plain text: no SGR, bold, underline or overstrike.
        let out = cmd::capture(
            cmd!(sh, "groff -man -Tutf8 -ww -P-cbou")
                .env("LC_ALL", "C.UTF-8")
                .stdin(roff),
        )?;
        if !out.status.success() || !out.stderr.trim().is_empty() {
            bail!(
                "groff -man -ww {name}.8 failed ({}): {}",
                out.status,
                out.stderr.trim()
            );
        }
        // groff renders `\-` as U+2212 and hyphens as U+2010 in UTF-8.
        out.stdout.replace(['\u{2212}', '\u{2010}'], "-")
    } else {
        String::from_utf8_lossy(roff).replace("\\-", "-")
    };
    let missing: Vec<char> = option_letters(program)
        .chars()
        .filter(|c| !text.contains(&format!("-{c}")))
        .collect();
    if !missing.is_empty() {
        bail!("{name}(8) does not document options {missing:?}");
    }
    let mut want = vec!["SYNOPSIS", "DESCRIPTION", "OPTIONS", "FILES"];
    if program == Program::Staprun {
        want.extend(["SECURITY", "--explain", "blessed", "LOAD", "DENY", "UNLOAD"]);
    }
    if let Some(w) = want.iter().find(|w| !text.contains(*w)) {
        bail!("{name}(8) has no {w:?}");
    }
    if text.contains("--verbose") {
        bail!("{name}(8) shows long options, which the programs do not accept");
    }
    Ok(text)
}

pub fn dist_dir() -> PathBuf {
    vm::target_dir().join("dist")
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        files::mkdir(d)?;
    }
    files::write(path, data)
}

/// The `staprun.fleet` Ansible collection (ansible/) as target/dist/staprun-fleet-VERSION.tar.gz,
/// built by `ansible-galaxy collection build`. ansible-core is installed with apt when
/// `ansible-galaxy` is missing (as root; otherwise this fails, naming the command to run).
pub fn collection() -> Result<PathBuf> {
    if vm::which("ansible-galaxy").is_none() {
        let mut apt = crate::apt::Apt { updated: false };
        apt.install(
            &["ansible-core".to_owned()],
            "ansible-galaxy missing (the fleet collection tarball)",
        )?;
        if vm::which("ansible-galaxy").is_none() {
            bail!("ansible-galaxy is still missing after installing ansible-core");
        }
    }
    let src = cmd::workspace_root().join("ansible");
    let version = files::read_to_string(&src.join("galaxy.yml"))?
        .lines()
        .find_map(|l| l.strip_prefix("version:"))
        .map(|v| v.trim().to_owned())
        .ok_or("ansible/galaxy.yml has no version")?;
    let out = dist_dir();
    files::mkdir(&out)?;
    let tarball = out.join(format!("staprun-fleet-{version}.tar.gz"));
    let sh = cmd::shell()?;
    cmd::output(cmd!(
        sh,
        "ansible-galaxy collection build --force --output-path {out} {src}"
    ))?;
    if !tarball.is_file() {
        bail!("ansible-galaxy did not write {}", tarball.display());
    }
    eprintln!("xtask: {}", tarball.display());
    Ok(tarball)
}

/// `cargo xtask dist`: man pages (checked), completions and the fleet collection into
/// target/dist/.
pub fn dist(paths: &Paths) -> Result<()> {
    let out = dist_dir();
    for program in [Program::Staprun, Program::Stapio] {
        let roff = man_page(program, paths)?;
        // Written first, so a page that fails the check can be looked at.
        let p = out.join("man").join(format!("{}.8", program.name()));
        write(&p, &roff)?;
        let text = check_man(program, &roff)?;
        eprintln!(
            "xtask: {} ({} lines rendered, every option letter documented)",
            p.display(),
            text.lines().count()
        );
    }
    for (shell, file) in [
        (Shell::Bash, "bash/staprun"),
        (Shell::Zsh, "zsh/_staprun"),
        (Shell::Fish, "fish/staprun.fish"),
    ] {
        let data = completion(shell);
        if data.is_empty() {
            bail!("empty {shell} completion");
        }
        let p = out.join("completions").join(file);
        write(&p, &data)?;
        eprintln!("xtask: {}", p.display());
    }
    collection()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_facing_has_every_letter_and_no_long_option() {
        for p in [Program::Staprun, Program::Stapio] {
            let cmd = user_facing(p);
            let shorts: String = cmd.get_arguments().filter_map(|a| a.get_short()).collect();
            for c in option_letters(p).chars() {
                assert!(shorts.contains(c), "{c} missing for {}", p.name());
            }
            assert!(cmd.get_arguments().all(|a| a.get_long().is_none()));
        }
    }

    #[test]
    fn prefix_paths() {
        let p = Paths::for_prefix(Path::new("/usr/local"));
        assert_eq!(p.stapio, Path::new("/usr/local/libexec/staprun/stapio"));
        assert!(!p.is_default());
        assert!(Paths::for_prefix(Path::new("/usr")).is_default());
    }
}
