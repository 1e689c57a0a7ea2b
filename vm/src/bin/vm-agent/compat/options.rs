//! Group `compat_options`: testsuite/parseko cmdline09-21 and helpout.

use crate::harness::{ALICE, Reporter, STAPRUN};

use super::ctx::{Ctx, exit_text, normalize};
use super::driver::{Case, run_group};

/// (case, arguments): each must fail (parseko.exp: a non-zero exit).
/// cmdline15 is a `stap` option test, not staprun's.
const PARSEKO: &[(&str, &[&str])] = &[
    (
        "cmdline09",
        &["stap_123456789012345678901234567890123456789012345678901234567890"],
    ),
    ("cmdline10", &["-b", "0", "fake_module"]),
    ("cmdline11", &["-L", "-A", "fake_module"]),
    ("cmdline12", &["-A", "-b", "2", "fake_module"]),
    ("cmdline13", &["-A", "-c", "bash", "fake_module"]),
    ("cmdline14", &["-A", "-x", "100", "fake_module"]),
    ("cmdline16", &["-c", "/bin/ls", "-x", "100", "fake_module"]),
    ("cmdline17", &["-L", "-D", "fake_module"]),
    ("cmdline18", &["-d", "-D", "fake_module"]),
    ("cmdline19", &["-c", "/bin/ls", "-D", "fake_module"]),
    ("cmdline20", &["-D", "fake_module"]),
    ("cmdline21", &["-S", "1,1", "fake_module"]),
];

fn parseko_args(case: &str) -> &'static [&'static str] {
    PARSEKO
        .iter()
        .find(|(n, _)| *n == case)
        .map_or(&[], |(_, a)| a)
}

fn parseko(c: &mut Ctx) {
    let args = parseko_args(c.case);
    let out = c.staprun(&ALICE, args);
    c.observe("run.exit", exit_text(&out));
    c.observe("run.stdout", normalize(&out.stdout));
    let error = first_error(&out.stderr);
    c.observe("run.error", error.clone().unwrap_or_default());
    c.check(
        "exit_nonzero",
        out.code.is_some_and(|x| x != 0),
        out.summary(),
    );
    c.check("says_why", error.is_some(), "an ERROR line on stderr");
}

/// The first `ERROR:` line, normalized, up to the end of its first sentence
/// (the C staprun explains some option conflicts in a second sentence).
fn first_error(stderr: &str) -> Option<String> {
    let n = normalize(stderr);
    let l = n.lines().find(|l| l.starts_with("ERROR: "))?;
    Some(l.split(".  ").next().unwrap_or(l).to_owned())
}

/// testsuite/systemtap.base/helpout.exp: `-V` and `-h` exit 0 with nothing on stderr.
fn helpout(c: &mut Ctx) {
    let stapio = c.imp.stapio();
    for (label, argv) in [
        ("staprun_V", [STAPRUN, "-V"]),
        ("staprun_h", [STAPRUN, "-h"]),
        ("stapio_V", [stapio, "-V"]),
        ("stapio_h", [stapio, "-h"]),
    ] {
        let out = c.command(&ALICE, &argv);
        c.observe(&format!("{label}.exit"), exit_text(&out));
        c.observe(
            &format!("{label}.stderr_empty"),
            out.stderr.is_empty().to_string(),
        );
        c.check(
            &format!("{label}_exit_0_stderr_empty"),
            out.code == Some(0) && out.stderr.is_empty(),
            out.summary(),
        );
    }
}

macro_rules! parseko_cases {
    ($($name:literal),*) => {
        &[$(Case { name: $name, f: parseko, modules: &[], c_fails: &[] }),*]
    };
}

const PARSEKO_CASES: &[Case] = parseko_cases!(
    "cmdline09",
    "cmdline10",
    "cmdline11",
    "cmdline12",
    "cmdline13",
    "cmdline14",
    "cmdline16",
    "cmdline17",
    "cmdline18",
    "cmdline19",
    "cmdline20",
    "cmdline21"
);

const HELPOUT: &[Case] = &[Case {
    name: "helpout",
    f: helpout,
    modules: &[],
    c_fails: &[],
}];

/// The group's cases: the parseko ones, then helpout.
pub(crate) fn cases() -> Vec<Case> {
    PARSEKO_CASES.iter().chain(HELPOUT).copied().collect()
}

pub(crate) fn compat_options(r: &mut Reporter) {
    run_group(r, &cases());
}
