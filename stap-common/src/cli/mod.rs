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

use thiserror::Error;

use crate::modname::{ModName, ModNameError};

mod table;
pub use table::{OPTIONS, Opt, Takes, command, getopt_letters, options};
use table::{by_long, by_short};

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
    /// `-T`, when given; without it the readers wait as the C tools of
    /// the module's generation do (see [`DEFAULT_READER_TIMEOUT_MS`]).
    pub reader_timeout_ms: Option<u32>,
    pub read_stdin: bool,
    /// `-F fd` (stapio only).
    pub relay_fd: Option<i32>,
    /// MODULE as given.
    pub module: String,
    /// `name=value` module options, in order.
    pub module_options: Vec<String>,
}

/// The reader poll timeout in milliseconds when `-T` is not given, for a
/// SystemTap 5.x module (the 5.x C tools' `reader_timeout_ms = 200`). For a
/// 4.x module there is none: the 4.x C tools' readers wait in `ppoll`
/// without a timeout, woken only by data or by a signal.
pub const DEFAULT_READER_TIMEOUT_MS: u32 = 200;

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
    /// a module behind. `stdout_is_terminal`: monitor mode (`-M`) draws
    /// its screen on standard output and reads keys from the terminal.
    pub fn stapio_refuses(&self, stdout_is_terminal: bool) -> Option<&'static str> {
        self.monitor_interval?;
        if self.daemon {
            Some("monitor mode (-M) cannot run in the background (-D)")
        } else if self.read_stdin {
            Some("monitor mode (-M) reads the keyboard; it cannot forward standard input (-i)")
        } else if !stdout_is_terminal {
            Some("monitor mode needs a terminal (-M draws on standard output, which is not one)")
        } else {
            None
        }
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
mod tests;
