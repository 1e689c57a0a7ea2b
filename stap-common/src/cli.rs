//! The command line shared by `staprun` and `stapio`.
//!
//! Both programs accept SystemTap's getopt string
//! `ALu::vihb:t:dc:o:x:N:S:DwRr:VT:C:M:` (stapio also `F:`), with GNU getopt
//! behaviour: bundled short flags (`-vvL`), attached or separate values
//! (`-b4`, `-b 4`), `-u` whose value is optional and only ever attached
//! (`-u/path`), options anywhere before `--` (argument permutation), and `--`
//! ending option processing. [`normalize`] turns such an argv into a
//! canonical form that the clap definition in [`command`] parses; clap gives
//! the help text, the man page and the completions one source of truth.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};
use thiserror::Error;

use crate::modname::{ModName, ModNameError};

/// Which program is parsing: they share options except `-F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Staprun,
    Stapio,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Staprun => "staprun",
            Program::Stapio => "stapio",
        }
    }
}

/// Largest number of module options, as in the C implementation.
pub const MAX_MODULE_OPTIONS: usize = 64;

/// A usage error: printed as one line, exit status 1.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CliError {
    #[error("invalid option '-{0}'")]
    UnknownOption(String),
    #[error("option '-{0}' requires an argument")]
    MissingValue(char),
    #[error("argument is not valid UTF-8: {0:?}")]
    NotUtf8(OsString),
    #[error("Invalid buffer size '{0}' (should be 1-4095)")]
    BufferSize(String),
    #[error("Invalid target process id '{0}'")]
    TargetPid(String),
    #[error("Invalid target namespaces pid '{0}' (should be > 0)")]
    NamespacesPid(String),
    #[error("Invalid file size option '{0}'")]
    FileSize(String),
    #[error("Cannot process remote id option '{0}'")]
    RemoteId(String),
    #[error("Invalid reader timeout value '{0}' (should be >= 1)")]
    ReaderTimeout(String),
    #[error("Invalid option '{0}' for -C")]
    Color(String),
    #[error("Invalid monitor interval '{0}'")]
    MonitorInterval(String),
    #[error("Invalid file descriptor option '{0}'")]
    RelayFd(String),
    #[error("Relay basedir -F option is invalid for staprun")]
    RelayFdForStaprun,
    #[error("You can't specify the '-{0}' and '-{1}' options together")]
    Exclusive(char, char),
    #[error("You have to specify output FILE with '-{0}' option")]
    NeedsOutput(char),
    #[error("You can't specify module options with '-A'")]
    AttachWithOptions,
    #[error("Too many module options (at most {MAX_MODULE_OPTIONS})")]
    TooManyModuleOptions,
    #[error("Module option '{0}' is not of the form name=value")]
    BadModuleOption(String),
    #[error("need a module name or path")]
    MissingModule,
    #[error("Module name {0}")]
    ModuleName(#[from] ModNameError),
    #[error("{0}")]
    Clap(String),
}

/// `-C` colour mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorMode {
    Never,
    #[default]
    Auto,
    Always,
}

impl ColorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ColorMode::Never => "never",
            ColorMode::Auto => "auto",
            ColorMode::Always => "always",
        }
    }
}

/// `-S size[,N]`: rotate at `bytes`, keep `keep` files (0 = all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub bytes: u64,
    pub keep: u32,
}

/// `-r ID:URI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub id: i32,
    pub uri: String,
}

/// What the user asked for, validated. Shared by both programs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    pub verbose: u32,
    pub version: bool,
    pub help: bool,
    pub suppress_warnings: bool,
    /// `-u` or `-uPATH`.
    pub uprobes: Option<Option<String>>,
    pub target_cmd: Option<String>,
    pub target_pid: Option<i32>,
    pub namespaces_pid: Option<i32>,
    /// `-o` exactly as given (made absolute by [`Options::absolute_outfile`]).
    pub outfile: Option<String>,
    pub buffer_size_mb: Option<u32>,
    pub load_only: bool,
    pub attach: bool,
    pub color: ColorMode,
    pub monitor_interval: Option<u32>,
    pub delete: bool,
    pub daemon: bool,
    pub rename: bool,
    pub remote: Option<Remote>,
    pub rotation: Option<Rotation>,
    pub reader_timeout_ms: u32,
    pub read_stdin: bool,
    /// `-F fd` (stapio only).
    pub relay_fd: Option<i32>,
    /// MODULE as given.
    pub module: String,
    /// `name=value` module options, in order.
    pub module_options: Vec<String>,
}

/// Default `-T` (reader poll timeout) in milliseconds.
pub const DEFAULT_READER_TIMEOUT_MS: u32 = 200;

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

/// One option: everything about it is in its row of [`OPTIONS`]. The clap
/// definition, getopt's letters, the long names, the parse into
/// [`Options`] and the argv staprun hands to stapio are all derived from
/// the table.
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
    /// Store the (last) occurrence into the options; flags get `None`.
    set: fn(&mut Options, Option<&str>) -> Result<(), CliError>,
    /// Append this option, as stapio must get it, to an argv.
    emit: fn(&Options, &mut Vec<String>),
}

impl Opt {
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
        ));
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

fn by_short(program: Program, c: char) -> Option<&'static Opt> {
    options(program).find(|o| o.short == c)
}

fn by_long(long: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.long == long)
}

fn nothing(_: &Options, _: &mut Vec<String>) {}

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

fn number<T: std::str::FromStr>(v: Option<&str>) -> Option<T> {
    v.and_then(|s| s.parse().ok())
}

fn set_target_pid(o: &mut Options, v: Option<&str>) -> Result<(), CliError> {
    let p = v.unwrap_or_default();
    o.target_pid = Some(parse_pid(p).ok_or_else(|| CliError::TargetPid(p.to_string()))?);
    Ok(())
}

/// The option set of both programs, in the order of the help text (and of
/// the argv handed to stapio). SystemTap's getopt string is
/// `ALu::vihb:t:dc:o:x:N:S:DwRr:VT:C:M:`, stapio's adds `F:`.
pub static OPTIONS: [Opt; 23] = [
    Opt {
        short: 'v',
        long: "verbose",
        takes: Takes::Nothing,
        help: "Verbose mode (repeatable)",
        hidden: false,
        only: None,
        same_as: None,
        set: |_, _| Ok(()),
        emit: |o, a| a.extend((0..o.verbose).map(|_| "-v".to_string())),
    },
    Opt {
        short: 'V',
        long: "version",
        takes: Takes::Nothing,
        help: "Print the version and exit",
        hidden: false,
        only: None,
        same_as: None,
        set: |_, _| Ok(()),
        emit: nothing,
    },
    Opt {
        short: 'h',
        long: "help",
        takes: Takes::Nothing,
        help: "Print this help and exit",
        hidden: false,
        only: None,
        same_as: None,
        set: |_, _| Ok(()),
        emit: nothing,
    },
    Opt {
        short: 'w',
        long: "suppress-warnings",
        takes: Takes::Nothing,
        help: "Suppress warnings from the module",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, _| {
            o.suppress_warnings = true;
            Ok(())
        },
        emit: |o, a| emit_flag(a, 'w', o.suppress_warnings),
    },
    Opt {
        short: 'u',
        long: "uprobes",
        takes: Takes::OptionalAttached("PATH"),
        help: "Load uprobes.ko first (from PATH if attached: -uPATH)",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| {
            o.uprobes = Some(v.map(str::to_owned));
            Ok(())
        },
        emit: nothing,
    },
    Opt {
        short: 'c',
        long: "command",
        takes: Takes::Value("CMD"),
        help: "Run CMD and exit when it does; its pid is target()",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| {
            o.target_cmd = v.map(str::to_owned);
            Ok(())
        },
        emit: |o, a| emit_value(a, 'c', o.target_cmd.clone()),
    },
    Opt {
        short: 'x',
        long: "target",
        takes: Takes::Value("PID"),
        help: "Set target() to PID",
        hidden: false,
        only: None,
        same_as: None,
        set: set_target_pid,
        emit: |o, a| emit_value(a, 'x', o.target_pid.map(|p| p.to_string())),
    },
    Opt {
        short: 't',
        long: "target-pid",
        takes: Takes::Value("PID"),
        help: "Same as -x",
        hidden: true,
        only: None,
        same_as: Some('x'),
        set: set_target_pid,
        emit: nothing,
    },
    Opt {
        short: 'N',
        long: "namespaces-pid",
        takes: Takes::Value("PID"),
        help: "Target namespaces of PID",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| {
            let p = v.unwrap_or_default();
            match parse_pid(p) {
                Some(n) if n > 0 => o.namespaces_pid = Some(n),
                _ => return Err(CliError::NamespacesPid(p.to_string())),
            }
            Ok(())
        },
        emit: |o, a| emit_value(a, 'N', o.namespaces_pid.map(|p| p.to_string())),
    },
    Opt {
        short: 'o',
        long: "output",
        takes: Takes::Value("FILE"),
        help: "Send output to FILE (strftime formats allowed)",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| {
            o.outfile = v.map(str::to_owned);
            Ok(())
        },
        emit: |o, a| emit_value(a, 'o', o.outfile.clone()),
    },
    Opt {
        short: 'b',
        long: "buffer",
        takes: Takes::Value("MB"),
        help: "Relay buffer size per CPU in MiB (1-4095)",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| match number::<u32>(v) {
            Some(n) if (1..=4095).contains(&n) => {
                o.buffer_size_mb = Some(n);
                Ok(())
            }
            _ => Err(CliError::BufferSize(v.unwrap_or_default().to_string())),
        },
        emit: |o, a| emit_value(a, 'b', o.buffer_size_mb.map(|b| b.to_string())),
    },
    Opt {
        short: 'L',
        long: "load-only",
        takes: Takes::Nothing,
        help: "Load the module and start the probes, then detach",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, _| {
            o.load_only = true;
            Ok(())
        },
        emit: |o, a| emit_flag(a, 'L', o.load_only),
    },
    Opt {
        short: 'A',
        long: "attach",
        takes: Takes::Nothing,
        help: "Attach to an already loaded module",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, _| {
            o.attach = true;
            Ok(())
        },
        emit: |o, a| emit_flag(a, 'A', o.attach),
    },
    Opt {
        short: 'C',
        long: "color",
        takes: Takes::Value("WHEN"),
        help: "Colour errors: never, auto or always",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| {
            o.color = match v.unwrap_or_default() {
                "never" => ColorMode::Never,
                "auto" => ColorMode::Auto,
                "always" => ColorMode::Always,
                c => return Err(CliError::Color(c.to_string())),
            };
            Ok(())
        },
        emit: |o, a| emit_value(a, 'C', Some(o.color.as_str().to_string())),
    },
    Opt {
        short: 'M',
        long: "monitor",
        takes: Takes::Value("INTERVAL"),
        help: "Monitor mode, refresh every INTERVAL s",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| match number::<u32>(v) {
            Some(n) if n >= 1 => {
                o.monitor_interval = Some(n);
                Ok(())
            }
            _ => Err(CliError::MonitorInterval(v.unwrap_or_default().to_string())),
        },
        emit: |o, a| emit_value(a, 'M', o.monitor_interval.map(|m| m.to_string())),
    },
    Opt {
        short: 'd',
        long: "delete",
        takes: Takes::Nothing,
        help: "Unload MODULE (or '*': every unused module of yours)",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, _| {
            o.delete = true;
            Ok(())
        },
        emit: nothing,
    },
    Opt {
        short: 'D',
        long: "daemon",
        takes: Takes::Nothing,
        help: "Run in the background (needs -o)",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, _| {
            o.daemon = true;
            Ok(())
        },
        emit: |o, a| emit_flag(a, 'D', o.daemon),
    },
    Opt {
        short: 'R',
        long: "rename",
        takes: Takes::Nothing,
        help: "Rename the module to a unique name before loading",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, _| {
            o.rename = true;
            Ok(())
        },
        emit: nothing,
    },
    Opt {
        short: 'r',
        long: "remote",
        takes: Takes::Value("ID:URI"),
        help: "Remote id and URI",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| {
            let r = v.unwrap_or_default();
            o.remote = Some(parse_remote(r).ok_or_else(|| CliError::RemoteId(r.to_string()))?);
            Ok(())
        },
        emit: nothing,
    },
    Opt {
        short: 'S',
        long: "size",
        takes: Takes::Value("MB[,N]"),
        help: "Rotate output at MB MiB, keep N files (needs -o)",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| {
            let s = v.unwrap_or_default();
            o.rotation = Some(parse_rotation(s).ok_or_else(|| CliError::FileSize(s.to_string()))?);
            Ok(())
        },
        emit: |o, a| {
            let v = o.rotation.map(|r| match (r.bytes >> 20, r.keep) {
                (mb, 0) => mb.to_string(),
                (mb, keep) => format!("{mb},{keep}"),
            });
            emit_value(a, 'S', v);
        },
    },
    Opt {
        short: 'T',
        long: "timeout",
        takes: Takes::Value("MS"),
        help: "Relay reader poll timeout in ms (default 200)",
        hidden: false,
        only: None,
        same_as: None,
        set: |o, v| match number::<u32>(v) {
            Some(n) if n >= 1 => {
                o.reader_timeout_ms = n;
                Ok(())
            }
            _ => Err(CliError::ReaderTimeout(v.unwrap_or_default().to_string())),
        },
        emit: |o, a| {
            let t = o.reader_timeout_ms;
            emit_value(
                a,
                'T',
                (t != DEFAULT_READER_TIMEOUT_MS).then(|| t.to_string()),
            );
        },
    },
    Opt {
        short: 'i',
        long: "stdin",
        takes: Takes::Nothing,
        help: "Forward standard input to the module",
        hidden: true,
        only: None,
        same_as: None,
        set: |o, _| {
            o.read_stdin = true;
            Ok(())
        },
        emit: |o, a| emit_flag(a, 'i', o.read_stdin),
    },
    Opt {
        short: 'F',
        long: "relay-fd",
        takes: Takes::Value("FD"),
        help: "Pre-opened module directory fd",
        hidden: false,
        only: Some(Program::Stapio),
        same_as: None,
        set: |o, v| match number::<i32>(v) {
            Some(n) if n >= 0 => {
                o.relay_fd = Some(n);
                Ok(())
            }
            _ => Err(CliError::RelayFd(v.unwrap_or_default().to_string())),
        },
        // staprun passes its own fd (Options::to_args's `relay_fd`).
        emit: nothing,
    },
];
/// GNU getopt, reduced to a canonical argv: every option as
/// `--long=value` (or `--long`), then `--`, then the operands in order.
/// `-F` given to staprun is reported as [`CliError::RelayFdForStaprun`].
pub fn normalize(program: Program, args: &[String]) -> Result<Vec<String>, CliError> {
    let mut opts = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            operands.push(arg.clone());
            continue;
        }
        // Long forms of the same options (what `-h` shows), `--name` or
        // `--name=value`; the C tools have only the short ones.
        if let Some(long) = arg.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or("");
            match by_long(name) {
                Some(o) if !o.accepted_by(program) => return Err(CliError::RelayFdForStaprun),
                Some(o) if matches!(o.takes, Takes::Value(_)) && !long.contains('=') => {
                    if i < args.len() {
                        i += 1;
                        opts.push(format!("--{name}={}", args[i - 1]));
                    } else {
                        return Err(CliError::MissingValue(o.short));
                    }
                }
                Some(_) => opts.push(arg.clone()),
                None => return Err(CliError::UnknownOption(format!("-{long}"))),
            }
            continue;
        }
        // A cluster of short options.
        let chars: Vec<char> = arg[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            j += 1;
            let opt = match by_short(program, c) {
                Some(o) => o,
                None if c == 'F' => return Err(CliError::RelayFdForStaprun),
                None => return Err(CliError::UnknownOption(c.to_string())),
            };
            let long = opt.long;
            match opt.takes {
                Takes::Nothing => opts.push(format!("--{long}")),
                Takes::OptionalAttached(_) => {
                    let rest: String = chars[j..].iter().collect();
                    j = chars.len();
                    if rest.is_empty() {
                        opts.push(format!("--{long}"));
                    } else {
                        opts.push(format!("--{long}={rest}"));
                    }
                }
                Takes::Value(_) => {
                    let rest: String = chars[j..].iter().collect();
                    j = chars.len();
                    let v = if !rest.is_empty() {
                        rest
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(CliError::MissingValue(c));
                    };
                    opts.push(format!("--{long}={v}"));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(opts.len() + operands.len() + 2);
    out.push(program.name().to_string());
    out.extend(opts);
    out.push("--".to_string());
    out.extend(operands);
    Ok(out)
}

/// Parse a whole argv (without argv\[0\]) for `program`.
///
/// `-h` and `-V` are reported through [`Options::help`] and
/// [`Options::version`] before any other validation, as getopt's callers
/// exit on them at once.
pub fn parse(program: Program, raw: &[OsString]) -> Result<Options, CliError> {
    let args = raw
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_owned)
                .ok_or_else(|| CliError::NotUtf8(a.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let canonical = normalize(program, &args)?;
    let m = command(program)
        .try_get_matches_from(&canonical)
        .map_err(|e| CliError::Clap(first_line(&e.to_string())))?;

    let mut o = Options {
        verbose: u32::from(m.get_count("verbose")),
        version: m.get_flag("version"),
        help: m.get_flag("help"),
        reader_timeout_ms: DEFAULT_READER_TIMEOUT_MS,
        ..Options::default()
    };
    if o.help || o.version {
        return Ok(o);
    }
    // The last occurrence of each option, in the table's order (which is
    // also the order the values are validated in).
    let last_index = |o: &Opt| m.indices_of(o.long).and_then(Iterator::max);
    for opt in options(program) {
        // -v, -V and -h are read above.
        if matches!(opt.short, 'v' | 'V' | 'h') {
            continue;
        }
        let present = match opt.takes {
            Takes::Nothing => m.get_flag(opt.long),
            Takes::OptionalAttached(_) => m.value_source(opt.long).is_some(),
            Takes::Value(_) => m.contains_id(opt.long),
        };
        if !present {
            continue;
        }
        // Of two spellings of one option, the later one wins.
        let later_spelling = options(program).any(|other| {
            (other.same_as == Some(opt.short) || opt.same_as == Some(other.short))
                && last_index(other) > last_index(opt)
        });
        if later_spelling {
            continue;
        }
        let value = match opt.takes {
            Takes::Nothing => None,
            _ => m
                .get_many::<String>(opt.long)
                .and_then(|mut v| v.next_back().cloned()),
        };
        (opt.set)(&mut o, value.as_deref())?;
    }
    check_exclusions(&o)?;

    let mut operands: Vec<String> = Vec::new();
    if let Some(module) = m.get_one::<String>("module") {
        operands.push(module.clone());
    }
    if let Some(rest) = m.get_many::<String>("module_options") {
        operands.extend(rest.cloned());
    }
    let mut operands = operands.into_iter();
    o.module = operands.next().ok_or(CliError::MissingModule)?;
    o.module_options = operands.collect();
    if o.attach && !o.module_options.is_empty() {
        return Err(CliError::AttachWithOptions);
    }
    if o.module_options.len() > MAX_MODULE_OPTIONS {
        return Err(CliError::TooManyModuleOptions);
    }
    for opt in &o.module_options {
        validate_module_option(opt)?;
    }
    Ok(o)
}

/// The mutual-exclusion rules of SystemTap's `parse_args`, in its order.
fn check_exclusions(o: &Options) -> Result<(), CliError> {
    if o.attach && o.load_only {
        return Err(CliError::Exclusive('A', 'L'));
    }
    if o.attach && o.buffer_size_mb.is_some() {
        return Err(CliError::Exclusive('A', 'b'));
    }
    if o.attach && o.target_cmd.is_some() {
        return Err(CliError::Exclusive('A', 'c'));
    }
    if o.attach && o.target_pid.is_some_and(|p| p != 0) {
        return Err(CliError::Exclusive('A', 'x'));
    }
    if o.target_cmd.is_some() && o.target_pid.is_some_and(|p| p != 0) {
        return Err(CliError::Exclusive('c', 'x'));
    }
    if o.daemon && o.load_only {
        return Err(CliError::Exclusive('D', 'L'));
    }
    if o.daemon && o.delete {
        return Err(CliError::Exclusive('D', 'd'));
    }
    if o.daemon && o.target_cmd.is_some() {
        return Err(CliError::Exclusive('D', 'c'));
    }
    if o.daemon && o.outfile.is_none() {
        return Err(CliError::NeedsOutput('D'));
    }
    if o.outfile.is_none() && o.rotation.is_some_and(|r| r.bytes != 0) {
        return Err(CliError::NeedsOutput('S'));
    }
    Ok(())
}

/// A module option must be `name=value` with a plain parameter name, and
/// may not set the parameters staprun itself owns.
fn validate_module_option(opt: &str) -> Result<(), CliError> {
    let bad = || CliError::BadModuleOption(opt.to_string());
    let (name, _) = opt.split_once('=').ok_or_else(bad)?;
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || opt.contains(['\n', '\0'])
    {
        return Err(bad());
    }
    Ok(())
}

fn parse_pid(s: &str) -> Option<i32> {
    s.trim().parse::<i32>().ok().filter(|p| *p >= 0)
}

fn parse_remote(s: &str) -> Option<Remote> {
    let (id, uri) = s.split_once(':')?;
    let id: i32 = id.parse().ok()?;
    if id < 0 || uri.is_empty() || uri.len() >= crate::protocol::REMOTE_URI_LEN {
        return None;
    }
    Some(Remote {
        id,
        uri: uri.to_string(),
    })
}

fn parse_rotation(s: &str) -> Option<Rotation> {
    let (size, keep) = match s.split_once(',') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let mb: u64 = size.parse().ok()?;
    let keep: u32 = match keep {
        Some(k) => k.parse().ok()?,
        None => 0,
    };
    Some(Rotation {
        bytes: mb.checked_mul(1 << 20)?,
        keep,
    })
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Where MODULE points, as SystemTap's `parse_modpath` resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePath {
    /// The path to open (absolute or relative to the cwd).
    pub path: PathBuf,
    /// The module name: the basename up to its last '.'.
    pub name: ModName,
}

/// Resolve MODULE: a path if it contains `/`; `NAME.ko` in the cwd; else
/// `<blessed_dir>/NAME.ko`, where `blessed_dir` is
/// `/lib/modules/$(uname -r)/systemtap` in the real program.
pub fn resolve_module(module: &str, blessed_dir: &Path) -> Result<ModulePath, CliError> {
    if module.is_empty() {
        return Err(CliError::MissingModule);
    }
    let path = if module.contains('/') || module.ends_with(".ko") {
        PathBuf::from(module)
    } else {
        blessed_dir.join(format!("{module}.ko"))
    };
    let base = module.rsplit('/').next().unwrap_or(module);
    let stem = match base.rfind('.') {
        Some(i) => &base[..i],
        None => base,
    };
    let name = ModName::new(stem)?;
    Ok(ModulePath { path, name })
}

impl Options {
    /// Why stapio would refuse to run with these options, if it would.
    /// staprun asks before it loads anything, so such a run never leaves
    /// a module behind.
    pub fn stapio_refuses(&self) -> Option<&'static str> {
        self.monitor_interval
            .is_some()
            .then_some("monitor mode (-M) is not supported by this stapio")
    }

    /// `-o` made absolute against `cwd` (SystemTap's `get_abspath`).
    pub fn absolute_outfile(&self, cwd: &Path) -> Option<PathBuf> {
        self.outfile.as_ref().map(|f| {
            let p = Path::new(f);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            }
        })
    }

    /// Rebuild an argv that, parsed again, gives the same options; used to
    /// hand staprun's command line to stapio. `module` replaces MODULE
    /// (a `-R` renamed module), and `relay_fd` is appended as `-F`.
    pub fn to_args(&self, module: &str, relay_fd: Option<i32>) -> Vec<String> {
        let mut a = Vec::new();
        for opt in &OPTIONS {
            (opt.emit)(self, &mut a);
        }
        if let Some(fd) = relay_fd {
            a.extend(["-F".into(), fd.to_string()]);
        }
        a.push("--".into());
        a.push(module.to_string());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(program: Program, args: &[&str]) -> Result<Options, CliError> {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(program, &v)
    }
    fn sr(args: &[&str]) -> Result<Options, CliError> {
        p(Program::Staprun, args)
    }

    #[test]
    fn bundled_flags_and_attached_values() {
        let o = sr(&["-vvwL", "-b4", "m.ko"]).unwrap();
        assert_eq!(o.verbose, 2);
        assert!(o.suppress_warnings && o.load_only);
        assert_eq!(o.buffer_size_mb, Some(4));
        let o = sr(&["-vb", "7", "m.ko"]).unwrap();
        assert_eq!((o.verbose, o.buffer_size_mb), (1, Some(7)));
        let o = sr(&["-Lvo/tmp/f", "m.ko"]).unwrap();
        assert_eq!(o.outfile.as_deref(), Some("/tmp/f"));
    }

    #[test]
    fn uprobes_value_is_optional_and_only_attached() {
        let o = sr(&["-u", "m.ko"]).unwrap();
        assert_eq!(o.uprobes, Some(None));
        assert_eq!(o.module, "m.ko");
        let o = sr(&["-u/x/uprobes.ko", "m.ko"]).unwrap();
        assert_eq!(o.uprobes, Some(Some("/x/uprobes.ko".into())));
        let o = sr(&["-vu", "m.ko"]).unwrap();
        assert_eq!((o.verbose, o.uprobes.clone()), (1, Some(None)));
        assert_eq!(sr(&["m.ko"]).unwrap().uprobes, None);
    }

    #[test]
    fn permutation_and_double_dash() {
        let o = sr(&["m.ko", "-v", "a=1", "-w", "b=2"]).unwrap();
        assert_eq!(o.verbose, 1);
        assert!(o.suppress_warnings);
        assert_eq!(o.module_options, vec!["a=1", "b=2"]);
        // After --, an option-looking word is an operand (and then not
        // a valid module option).
        assert_eq!(
            sr(&["--", "m.ko", "-v"]).unwrap_err(),
            CliError::BadModuleOption("-v".into())
        );
        let o = sr(&["-v", "--", "-odd.ko"]).unwrap();
        assert_eq!(o.module, "-odd.ko");
    }

    #[test]
    fn values_may_look_like_options() {
        let o = sr(&["-c", "-x", "m.ko"]).unwrap();
        assert_eq!(o.target_cmd.as_deref(), Some("-x"));
        let o = sr(&["-o", "-v", "m.ko"]).unwrap();
        assert_eq!(o.outfile.as_deref(), Some("-v"));
    }

    #[test]
    fn long_forms_shown_by_help_are_accepted() {
        let o = sr(&[
            "--verbose",
            "--buffer",
            "4",
            "--output=/tmp/f",
            "--uprobes",
            "m.ko",
        ])
        .unwrap();
        assert_eq!((o.verbose, o.buffer_size_mb), (1, Some(4)));
        assert_eq!(o.outfile.as_deref(), Some("/tmp/f"));
        assert_eq!(o.uprobes, Some(None));
        assert_eq!(o.module, "m.ko");
        assert_eq!(
            sr(&["--relay-fd=3", "m"]).unwrap_err(),
            CliError::RelayFdForStaprun
        );
        assert!(matches!(
            sr(&["--bogus", "m"]),
            Err(CliError::UnknownOption(_))
        ));
        assert_eq!(sr(&["--buffer"]).unwrap_err(), CliError::MissingValue('b'));
        assert_eq!(
            p(Program::Stapio, &["--relay-fd", "3", "m"])
                .unwrap()
                .relay_fd,
            Some(3)
        );
    }

    #[test]
    fn f_is_rejected_by_staprun_and_accepted_by_stapio() {
        assert_eq!(
            sr(&["-F3", "m.ko"]).unwrap_err(),
            CliError::RelayFdForStaprun
        );
        assert_eq!(
            sr(&["-vF", "3", "m.ko"]).unwrap_err(),
            CliError::RelayFdForStaprun
        );
        let o = p(Program::Stapio, &["-F3", "m.ko"]).unwrap();
        assert_eq!(o.relay_fd, Some(3));
        assert!(matches!(
            p(Program::Stapio, &["-F", "-1", "m"]),
            Err(CliError::RelayFd(_))
        ));
    }

    #[test]
    fn unknown_and_missing() {
        assert_eq!(
            sr(&["-q", "m.ko"]).unwrap_err(),
            CliError::UnknownOption("q".into())
        );
        assert_eq!(
            sr(&["m.ko", "-b"]).unwrap_err(),
            CliError::MissingValue('b')
        );
        assert_eq!(sr(&[]).unwrap_err(), CliError::MissingModule);
        assert_eq!(sr(&["-v"]).unwrap_err(), CliError::MissingModule);
    }

    #[test]
    fn help_and_version_win() {
        assert!(sr(&["-h"]).unwrap().help);
        assert!(sr(&["-V", "-b", "0"]).unwrap().version);
    }

    /// SystemTap's parseko cases cmdline09-21: each must be refused.
    #[test]
    fn parseko_cases_fail() {
        let long = "stap_1234567890123456789012345678901234567890123456789012345678901234567890";
        let cases: &[(&str, &[&str])] = &[
            ("cmdline09", &[long]),
            ("cmdline10", &["-b", "0", "m.ko"]),
            ("cmdline11", &["-L", "-A", "m.ko"]),
            ("cmdline12", &["-A", "-b", "2", "m.ko"]),
            ("cmdline13", &["-A", "-c", "bash", "m.ko"]),
            ("cmdline14", &["-A", "-x", "100", "m.ko"]),
            ("cmdline16", &["-c", "/bin/ls", "-x", "100", "m.ko"]),
            ("cmdline17", &["-L", "-D", "-o", "f", "m.ko"]),
            ("cmdline18", &["-d", "-D", "-o", "f", "m.ko"]),
            ("cmdline19", &["-c", "ls", "-D", "-o", "f", "m.ko"]),
            ("cmdline20", &["-D", "m.ko"]),
            ("cmdline21", &["-S", "1,1", "m.ko"]),
        ];
        for (name, args) in cases {
            let r =
                sr(args).and_then(|o| resolve_module(&o.module, Path::new("/blessed")).map(|_| o));
            assert!(r.is_err(), "{name}: {args:?} was accepted");
        }
        assert_eq!(
            sr(&["-L", "-A", "m.ko"]).unwrap_err(),
            CliError::Exclusive('A', 'L')
        );
        assert_eq!(sr(&["-D", "m.ko"]).unwrap_err(), CliError::NeedsOutput('D'));
        assert_eq!(
            sr(&["-S", "1,1", "m.ko"]).unwrap_err(),
            CliError::NeedsOutput('S')
        );
    }

    #[test]
    fn option_values_are_validated() {
        assert!(matches!(
            sr(&["-b", "4096", "m"]),
            Err(CliError::BufferSize(_))
        ));
        assert!(matches!(
            sr(&["-b", "x", "m"]),
            Err(CliError::BufferSize(_))
        ));
        assert_eq!(sr(&["-b", "4095", "m"]).unwrap().buffer_size_mb, Some(4095));
        assert!(matches!(
            sr(&["-T", "0", "m"]),
            Err(CliError::ReaderTimeout(_))
        ));
        assert!(matches!(
            sr(&["-C", "sometimes", "m"]),
            Err(CliError::Color(_))
        ));
        assert!(matches!(
            sr(&["-N", "0", "m"]),
            Err(CliError::NamespacesPid(_))
        ));
        assert!(matches!(sr(&["-r", "x", "m"]), Err(CliError::RemoteId(_))));
        assert!(matches!(sr(&["-r", "1:", "m"]), Err(CliError::RemoteId(_))));
        assert_eq!(
            sr(&["-r", "3:ssh://h", "m"]).unwrap().remote,
            Some(Remote {
                id: 3,
                uri: "ssh://h".into()
            })
        );
        assert!(matches!(
            sr(&["-S", "1x", "-o", "f", "m"]),
            Err(CliError::FileSize(_))
        ));
        assert_eq!(
            sr(&["-S", "2,5", "-o", "f", "m"]).unwrap().rotation,
            Some(Rotation {
                bytes: 2 << 20,
                keep: 5
            })
        );
        assert!(matches!(
            sr(&["-x", "abc", "m"]),
            Err(CliError::TargetPid(_))
        ));
        assert_eq!(sr(&["-t", "5", "m"]).unwrap().target_pid, Some(5));
        assert_eq!(
            sr(&["-x", "5", "-t", "6", "m"]).unwrap().target_pid,
            Some(6)
        );
        assert_eq!(
            sr(&["-t", "6", "-x", "5", "m"]).unwrap().target_pid,
            Some(5)
        );
        assert_eq!(
            sr(&["-A", "m", "a=1"]).unwrap_err(),
            CliError::AttachWithOptions
        );
        assert!(matches!(
            sr(&["m", "noequals"]),
            Err(CliError::BadModuleOption(_))
        ));
        assert!(matches!(
            sr(&["m", "a/b=1"]),
            Err(CliError::BadModuleOption(_))
        ));
    }

    #[test]
    fn too_many_module_options() {
        let mut v = vec!["m".to_string()];
        for i in 0..=MAX_MODULE_OPTIONS {
            v.push(format!("o{i}=1"));
        }
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        assert_eq!(sr(&v).unwrap_err(), CliError::TooManyModuleOptions);
    }

    #[test]
    fn module_resolution() {
        let b = Path::new("/lib/modules/K/systemtap");
        let m = resolve_module("pmod", b).unwrap();
        assert_eq!(m.path, b.join("pmod.ko"));
        assert_eq!(m.name.as_str(), "pmod");
        let m = resolve_module("pmod.ko", b).unwrap();
        assert_eq!(m.path, PathBuf::from("pmod.ko"));
        let m = resolve_module("/tmp/x/abc.ko", b).unwrap();
        assert_eq!(
            (m.path, m.name.as_str()),
            (PathBuf::from("/tmp/x/abc.ko"), "abc")
        );
        let m = resolve_module("./d/abc", b).unwrap();
        assert_eq!(m.name.as_str(), "abc");
        // 56 characters is the limit (64 - sizeof(unsigned long)).
        let ok = "a".repeat(56);
        assert!(resolve_module(&ok, b).is_ok());
        assert!(resolve_module(&"a".repeat(57), b).is_err());
        assert!(resolve_module("bad\nname", b).is_err());
        assert!(resolve_module("..", b).is_err());
    }

    #[test]
    fn the_table_has_systemtaps_getopt_letters() {
        // The C tools' getopt strings, as sets of (letter, kind).
        let kinds = |g: &str| {
            let mut v: Vec<(char, usize)> = Vec::new();
            for c in g.chars() {
                match (c, v.last_mut()) {
                    (':', Some(last)) => last.1 += 1,
                    _ => v.push((c, 0)),
                }
            }
            v.sort();
            v
        };
        let c_staprun = "ALu::vihb:t:dc:o:x:N:S:DwRr:VT:C:M:";
        assert_eq!(kinds(&getopt_letters(Program::Staprun)), kinds(c_staprun));
        assert_eq!(
            kinds(&getopt_letters(Program::Stapio)),
            kinds(&format!("{c_staprun}F:"))
        );
        // Every long name is unique, and every letter.
        for (i, a) in OPTIONS.iter().enumerate() {
            for b in &OPTIONS[i + 1..] {
                assert!(a.short != b.short && a.long != b.long, "{}", a.long);
            }
        }
    }

    #[test]
    fn to_args_is_every_forwarded_option_in_order() {
        let o = sr(&[
            "-vv", "-w", "-x", "42", "-N", "5", "-o", "out", "-b", "4", "-C", "always", "-M", "2",
            "-D", "-S", "3,2", "-T", "50", "-i", "-u", "-R", "-r", "1:x", "m.ko", "a=1",
        ])
        .unwrap();
        assert_eq!(
            o.to_args("m", Some(4)),
            [
                "-v", "-v", "-w", "-x", "42", "-N", "5", "-o", "out", "-b", "4", "-C", "always",
                "-M", "2", "-D", "-S", "3,2", "-T", "50", "-i", "-F", "4", "--", "m"
            ]
        );
        let o = sr(&["-c", "ls", "-L", "-S", "3", "-o", "x", "m.ko"]).unwrap();
        assert_eq!(
            o.to_args("m", None),
            [
                "-c", "ls", "-o", "x", "-L", "-C", "auto", "-S", "3", "--", "m"
            ]
        );
        let o = sr(&["-A", "m"]).unwrap();
        assert_eq!(o.to_args("m", None), ["-A", "-C", "auto", "--", "m"]);
    }

    #[test]
    fn the_later_of_t_and_x_wins() {
        assert_eq!(
            sr(&["-t", "1", "-x", "2", "m"]).unwrap().target_pid,
            Some(2)
        );
        assert_eq!(
            sr(&["-x", "2", "-t", "1", "m"]).unwrap().target_pid,
            Some(1)
        );
        // The loser is not even validated, as with getopt's last-wins.
        assert_eq!(
            sr(&["-x", "bad", "-t", "1", "m"]).unwrap().target_pid,
            Some(1)
        );
        assert_eq!(
            sr(&["-t", "1", "-x", "bad", "m"]).unwrap_err(),
            CliError::TargetPid("bad".into())
        );
    }

    #[test]
    fn to_args_round_trips() {
        let o = sr(&[
            "-vv", "-w", "-c", "ls -l", "-o", "out", "-S", "3,2", "-T", "50", "-L", "m.ko",
        ])
        .unwrap();
        let args = o.to_args("m_123", Some(4));
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        let back = parse(Program::Stapio, &v).unwrap();
        assert_eq!(back.verbose, 2);
        assert_eq!(back.target_cmd.as_deref(), Some("ls -l"));
        assert_eq!(back.rotation, o.rotation);
        assert_eq!(back.reader_timeout_ms, 50);
        assert_eq!(back.relay_fd, Some(4));
        assert_eq!(back.module, "m_123");
        assert!(back.load_only && back.suppress_warnings);
    }
}
