//! Data the host side and the guest agent share: the mount points of the
//! SystemTap 5.x C tools' tree and the Debian guest's table of `stap` runs.

/// Mount points of the guest's /c5 tree (SystemTap 5.x C tools, see the
/// compat suite): the image builder makes them, and the guest agent
/// bind-mounts the outer directories there before it chroots.
pub const C5_MOUNTS: &[&str] = &[
    "bin",
    "sbin",
    "etc",
    "usr/bin",
    "usr/sbin",
    "usr/libexec",
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "home",
    "root",
];

/// One `stap` run of the Debian guest's option scenario (`debian_stap_options`): bob runs
/// `stap ARGS -e 'SCRIPT'` once through our staprun and once through Debian's C staprun
/// (`SYSTEMTAP_STAPRUN` pointing at a shim that logs its argv and execs one or the other).
/// `cargo xtask debian-test` compiles the same command lines with `-p4` into bob's stap cache
/// when it builds the image, so the guest finds the modules there instead of compiling.
#[derive(Debug, Clone, Copy)]
pub struct StapRun {
    /// The stap option under test, as the docs table names it.
    pub option: &'static str,
    /// stap's arguments before `-e`.
    pub args: &'static str,
    pub script: &'static str,
}

const HELLO: &str = "probe begin { println(\"hello\") exit() }";
const WARN: &str = "probe begin { warn(\"careful\") println(\"after\") exit() }";
const TICK: &str = "probe timer.ms(300) { println(\"tick\") }";

pub const DEBIAN_STAP_RUNS: &[StapRun] = &[
    StapRun {
        option: "(none)",
        args: "",
        script: HELLO,
    },
    StapRun {
        option: "-vv",
        args: "-vv",
        script: HELLO,
    },
    StapRun {
        option: "(none), a warning",
        args: "",
        script: WARN,
    },
    StapRun {
        option: "-w",
        args: "-w",
        script: WARN,
    },
    StapRun {
        option: "-o FILE",
        args: "-o /tmp/stap-o.out",
        script: HELLO,
    },
    StapRun {
        option: "-c CMD",
        args: "-c 'echo from-cmd'",
        script: "probe end { println(\"end\") }",
    },
    StapRun {
        option: "-x PID",
        args: "-x 1",
        script: "probe begin { printf(\"target=%d\\n\", target()) exit() }",
    },
    StapRun {
        option: "-s MB",
        args: "-s 2",
        script: HELLO,
    },
    StapRun {
        option: "-o FILE -S SIZE,N",
        args: "-o /tmp/stap-s.out -S 1,2",
        script: HELLO,
    },
    StapRun {
        option: "--color=never",
        args: "--color=never",
        script: WARN,
    },
    StapRun {
        option: "-m NAME (no -R)",
        args: "-m stapopt_m",
        script: HELLO,
    },
    StapRun {
        option: "-F",
        args: "-F",
        script: TICK,
    },
    StapRun {
        option: "-F -o FILE",
        args: "-F -o /tmp/stap-d.out",
        script: TICK,
    },
    StapRun {
        option: "--monitor",
        args: "--monitor",
        script: HELLO,
    },
    StapRun {
        option: "--target-namespaces=PID",
        args: "--target-namespaces=1",
        script: HELLO,
    },
    StapRun {
        option: "--remote=direct://",
        args: "--remote=direct://",
        script: HELLO,
    },
];

/// The stap command line of a run (without `-p`), as bob types it.
pub fn stap_command(run: &StapRun) -> String {
    let args = if run.args.is_empty() {
        String::new()
    } else {
        format!("{} ", run.args)
    };
    format!("stap {args}-e '{}'", run.script)
}
