//! The option table: one row per option, from which the clap definition,
//! getopt's letters, the long names, the parse into [`Options`] and the
//! argv staprun hands to stapio are all derived.

use clap::{Arg, ArgAction, Command};

use super::{CliError, ColorMode, Options, Program, parse_pid, parse_remote, parse_rotation};

/// How an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// A flag (`-L`); counted for `-v`.
    Nothing,
    /// A value, attached or separate (`-b4`, `-b 4`).
    Value(&'static str),
    /// `-u[PATH]`: a value only when attached.
    OptionalAttached(&'static str),
}

/// Stores the (last) occurrence of an option; flags get `None`.
type Set = fn(&mut Options, Option<&str>) -> Result<(), CliError>;
/// Appends an option, as stapio must get it, to an argv.
type Emit = fn(&Options, &mut Vec<String>);

/// One option: everything about it is in its row of [`OPTIONS`].
pub struct Opt {
    pub short: char,
    pub long: &'static str,
    pub takes: Takes,
    pub help: &'static str,
    /// Accepted but not shown in the help.
    pub hidden: bool,
    /// Only this program accepts it (`-F`: stapio).
    pub only: Option<Program>,
    /// Another spelling of that option (`-t` of `-x`): whichever of the two
    /// comes later on the command line wins, as with getopt.
    pub same_as: Option<char>,
    pub(super) set: Set,
    pub(super) emit: Emit,
}

fn ignore(_: &mut Options, _: Option<&str>) -> Result<(), CliError> {
    Ok(())
}

fn not_forwarded(_: &Options, _: &mut Vec<String>) {}

impl Opt {
    const fn new(short: char, long: &'static str, takes: Takes, help: &'static str) -> Opt {
        Opt {
            short,
            long,
            takes,
            help,
            hidden: false,
            only: None,
            same_as: None,
            set: ignore,
            emit: not_forwarded,
        }
    }
    const fn flag(short: char, long: &'static str, help: &'static str) -> Opt {
        Opt::new(short, long, Takes::Nothing, help)
    }
    const fn value(short: char, long: &'static str, name: &'static str, help: &'static str) -> Opt {
        Opt::new(short, long, Takes::Value(name), help)
    }
    const fn sets(mut self, set: Set) -> Opt {
        self.set = set;
        self
    }
    const fn emits(mut self, emit: Emit) -> Opt {
        self.emit = emit;
        self
    }
    const fn hidden(mut self) -> Opt {
        self.hidden = true;
        self
    }
    const fn only(mut self, program: Program) -> Opt {
        self.only = Some(program);
        self
    }
    const fn same_as(mut self, short: char) -> Opt {
        self.same_as = Some(short);
        self
    }

    pub fn accepted_by(&self, program: Program) -> bool {
        self.only.is_none_or(|p| p == program)
    }

    fn arg(&self) -> Arg {
        let a = Arg::new(self.long)
            .short(self.short)
            .long(self.long)
            .help(self.help)
            .hide(self.hidden);
        match self.takes {
            Takes::Nothing if self.short == 'v' => a.action(ArgAction::Count),
            Takes::Nothing => a.action(ArgAction::SetTrue),
            Takes::Value(name) => a
                .value_name(name)
                .action(ArgAction::Append)
                .num_args(1)
                .allow_hyphen_values(true),
            Takes::OptionalAttached(name) => {
                a.num_args(0..=1).require_equals(true).value_name(name)
            }
        }
    }
}

fn on(flag: &mut bool) -> Result<(), CliError> {
    *flag = true;
    Ok(())
}

fn text(field: &mut Option<String>, v: Option<&str>) -> Result<(), CliError> {
    *field = v.map(str::to_owned);
    Ok(())
}

/// A number accepted by `ok`, or the error `bad` names.
fn number<T: std::str::FromStr + Copy>(
    v: Option<&str>,
    ok: impl Fn(T) -> bool,
    bad: fn(String) -> CliError,
) -> Result<T, CliError> {
    let s = v.unwrap_or_default();
    s.parse()
        .ok()
        .filter(|n| ok(*n))
        .ok_or_else(|| bad(s.to_string()))
}

fn emit_value(a: &mut Vec<String>, short: char, v: Option<String>) {
    if let Some(v) = v {
        a.extend([format!("-{short}"), v]);
    }
}

fn emit_flag(a: &mut Vec<String>, short: char, on: bool) {
    if on {
        a.push(format!("-{short}"));
    }
}

fn set_target_pid(o: &mut Options, v: Option<&str>) -> Result<(), CliError> {
    let p = v.unwrap_or_default();
    o.target_pid = Some(parse_pid(p).ok_or_else(|| CliError::TargetPid(p.to_string()))?);
    Ok(())
}

fn set_color(o: &mut Options, v: Option<&str>) -> Result<(), CliError> {
    o.color = match v.unwrap_or_default() {
        "never" => ColorMode::Never,
        "auto" => ColorMode::Auto,
        "always" => ColorMode::Always,
        c => return Err(CliError::Color(c.to_string())),
    };
    Ok(())
}

fn emit_rotation(o: &Options, a: &mut Vec<String>) {
    let v = o.rotation.map(|r| match (r.bytes >> 20, r.keep) {
        (mb, 0) => mb.to_string(),
        (mb, keep) => format!("{mb},{keep}"),
    });
    emit_value(a, 'S', v);
}

/// `-T`'s help: the default depends on the module's generation, as with
/// the C tools (4.8: none, 5.x: [`super::DEFAULT_READER_TIMEOUT_MS`]; a
/// unit test keeps the two in step).
pub(super) const T_HELP: &str = "Relay reader poll timeout in ms (default: 200 for SystemTap 5.x modules; none for 4.x ones, whose readers wake only for data)";

/// The option set of both programs, in the order of the help text (and of
/// the argv handed to stapio). SystemTap's getopt string is
/// `ALu::vihb:t:dc:o:x:N:S:DwRr:VT:C:M:`, stapio's adds `F:`.
pub static OPTIONS: [Opt; 23] = [
    Opt::flag('v', "verbose", "Verbose mode (repeatable)")
        .emits(|o, a| a.extend((0..o.verbose).map(|_| "-v".to_string()))),
    Opt::flag('V', "version", "Print the version and exit"),
    Opt::flag('h', "help", "Print this help and exit"),
    Opt::flag(
        'w',
        "suppress-warnings",
        "Suppress warnings from the module",
    )
    .sets(|o, _| on(&mut o.suppress_warnings))
    .emits(|o, a| emit_flag(a, 'w', o.suppress_warnings)),
    Opt::new(
        'u',
        "uprobes",
        Takes::OptionalAttached("PATH"),
        "Load uprobes.ko first (from PATH if attached: -uPATH)",
    )
    .sets(|o, v| {
        o.uprobes = Some(v.map(str::to_owned));
        Ok(())
    }),
    Opt::value(
        'c',
        "command",
        "CMD",
        "Run CMD and exit when it does; its pid is target()",
    )
    .sets(|o, v| text(&mut o.target_cmd, v))
    .emits(|o, a| emit_value(a, 'c', o.target_cmd.clone())),
    Opt::value('x', "target", "PID", "Set target() to PID")
        .sets(set_target_pid)
        .emits(|o, a| emit_value(a, 'x', o.target_pid.map(|p| p.to_string()))),
    Opt::value('t', "target-pid", "PID", "Same as -x")
        .hidden()
        .same_as('x')
        .sets(set_target_pid),
    Opt::value('N', "namespaces-pid", "PID", "Target namespaces of PID")
        .sets(|o, v| {
            let p = number(v, |n: i32| n > 0, CliError::NamespacesPid)?;
            o.namespaces_pid = Some(p);
            Ok(())
        })
        .emits(|o, a| emit_value(a, 'N', o.namespaces_pid.map(|p| p.to_string()))),
    Opt::value(
        'o',
        "output",
        "FILE",
        "Send output to FILE (strftime formats allowed)",
    )
    .sets(|o, v| text(&mut o.outfile, v))
    .emits(|o, a| emit_value(a, 'o', o.outfile.clone())),
    Opt::value(
        'b',
        "buffer",
        "MB",
        "Relay buffer size per CPU in MiB (1-4095)",
    )
    .sets(|o, v| {
        let mb = number(v, |n: u32| (1..=4095).contains(&n), CliError::BufferSize)?;
        o.buffer_size_mb = Some(mb);
        Ok(())
    })
    .emits(|o, a| emit_value(a, 'b', o.buffer_size_mb.map(|b| b.to_string()))),
    Opt::flag(
        'L',
        "load-only",
        "Load the module and start the probes, then detach",
    )
    .sets(|o, _| on(&mut o.load_only))
    .emits(|o, a| emit_flag(a, 'L', o.load_only)),
    Opt::flag('A', "attach", "Attach to an already loaded module")
        .sets(|o, _| on(&mut o.attach))
        .emits(|o, a| emit_flag(a, 'A', o.attach)),
    Opt::value('C', "color", "WHEN", "Colour errors: never, auto or always")
        .sets(set_color)
        .emits(|o, a| emit_value(a, 'C', Some(o.color.as_str().to_string()))),
    Opt::value(
        'M',
        "monitor",
        "INTERVAL",
        "Monitor mode, refresh every INTERVAL s",
    )
    .sets(|o, v| {
        let s = number(v, |n: u32| n >= 1, CliError::MonitorInterval)?;
        o.monitor_interval = Some(s);
        Ok(())
    })
    .emits(|o, a| emit_value(a, 'M', o.monitor_interval.map(|m| m.to_string()))),
    Opt::flag(
        'd',
        "delete",
        "Unload MODULE (or '*': every unused module of yours)",
    )
    .sets(|o, _| on(&mut o.delete)),
    Opt::flag('D', "daemon", "Run in the background (needs -o)")
        .sets(|o, _| on(&mut o.daemon))
        .emits(|o, a| emit_flag(a, 'D', o.daemon)),
    Opt::flag(
        'R',
        "rename",
        "Rename the module to a unique name before loading",
    )
    .sets(|o, _| on(&mut o.rename)),
    Opt::value('r', "remote", "ID:URI", "Remote id and URI").sets(|o, v| {
        let r = v.unwrap_or_default();
        o.remote = Some(parse_remote(r).ok_or_else(|| CliError::RemoteId(r.to_string()))?);
        Ok(())
    }),
    Opt::value(
        'S',
        "size",
        "MB[,N]",
        "Rotate output at MB MiB, keep N files (needs -o)",
    )
    .sets(|o, v| {
        let s = v.unwrap_or_default();
        o.rotation = Some(parse_rotation(s).ok_or_else(|| CliError::FileSize(s.to_string()))?);
        Ok(())
    })
    .emits(emit_rotation),
    Opt::value('T', "timeout", "MS", T_HELP)
        .sets(|o, v| {
            o.reader_timeout_ms = Some(number(v, |n: u32| n >= 1, CliError::ReaderTimeout)?);
            Ok(())
        })
        .emits(|o, a| emit_value(a, 'T', o.reader_timeout_ms.map(|t| t.to_string()))),
    Opt::flag(
        'i',
        "stdin",
        "Forward standard input to the module (probe input.char, input.line)",
    )
    .sets(|o, _| on(&mut o.read_stdin))
    .emits(|o, a| emit_flag(a, 'i', o.read_stdin)),
    // staprun passes its own fd (Options::to_args's `relay_fd`).
    Opt::value('F', "relay-fd", "FD", "Pre-opened module directory fd")
        .only(Program::Stapio)
        .sets(|o, v| {
            o.relay_fd = Some(number(v, |n: i32| n >= 0, CliError::RelayFd)?);
            Ok(())
        }),
];

/// The clap definition, built from [`OPTIONS`]: the single source of the
/// help text, the man pages and the shell completions.
pub fn command(program: Program) -> Command {
    let cmd = Command::new(program.name())
        .version(crate::VERSION)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .about(match program {
            Program::Staprun => "Load a SystemTap module, check the caller's right to, and run it",
            Program::Stapio => "Talk to a loaded SystemTap module and print its output",
        })
        .override_usage(format!(
            "{} [OPTIONS] MODULE [MODULE-OPTIONS]",
            program.name()
        ))
        .after_help(match program {
            Program::Staprun => {
                "Whether you may load a module, and which rule decides, without loading it:\n  staprun --explain MODULE"
            }
            Program::Stapio => "stapio is started by staprun; it is not run by hand.",
        });
    let operands = [
        Arg::new("module")
            .value_name("MODULE")
            .help("Module path (with '/'), NAME.ko in the current directory, or NAME in /lib/modules/$(uname -r)/systemtap"),
        Arg::new("module_options")
            .value_name("NAME=VALUE")
            .num_args(0..)
            .help("Module options"),
    ];
    // Shared options, the operands, then the options of one program only
    // (the order the help text has always had).
    let (shared, own): (Vec<&Opt>, Vec<&Opt>) = options(program).partition(|o| o.only.is_none());
    cmd.args(shared.iter().map(|o| o.arg()))
        .args(operands)
        .args(own.iter().map(|o| o.arg()))
}

/// The options `program` accepts.
pub fn options(program: Program) -> impl Iterator<Item = &'static Opt> {
    OPTIONS.iter().filter(move |o| o.accepted_by(program))
}

/// `program`'s option letters in getopt's notation (`b:` takes a value,
/// `u::` an optional attached one).
pub fn getopt_letters(program: Program) -> String {
    options(program)
        .map(|o| match o.takes {
            Takes::Nothing => o.short.to_string(),
            Takes::Value(_) => format!("{}:", o.short),
            Takes::OptionalAttached(_) => format!("{}::", o.short),
        })
        .collect()
}

pub(super) fn by_short(program: Program, c: char) -> Option<&'static Opt> {
    options(program).find(|o| o.short == c)
}

pub(super) fn by_long(long: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.long == long)
}
