//! The real process: who the caller is, the privileged window, and the
//! system calls of the hand-over. Each operation (`run`, `--explain`,
//! `--undo-start`, `-d`) builds one [`Context`] for the real system and
//! calls the library; `main.rs` only sanitizes, calls [`run`] and prints.

use std::cell::Cell;
use std::ffi::{CStr, OsString};
use std::io::{self, IsTerminal as _};
use std::path::{Path, PathBuf};

use stap_common::cli::{self, Options, Program};
use stap_common::ids::{Gid, Uid};
use stap_common::kernel::ModuleDir;
use stap_common::kernel::linux::LinuxKernel;
use stap_common::modname::ModName;
use stap_common::sys;

use crate::creds::{StapGroups, classify};
use crate::facts::SystemGroups;
use crate::handover::{ExecPlan, UNDO_START, UndoGuard};
use crate::policy::Class;
use crate::{Context, StaprunError, Window, audit, blessed_dir_for, load, unload};

/// stapio's path, fixed at build time (`STAPIO_PATH`); never from the
/// environment at run time.
pub const STAPIO_PATH: &str = match option_env!("STAPIO_PATH") {
    Some(p) => p,
    None => "/usr/libexec/staprun/stapio",
};

/// Our own path (`STAPRUN_PATH`, as stapio has it): when stapio cannot be
/// executed, staprun executes itself as `staprun --undo-start MODULE`.
pub const STAPRUN_PATH: &str = match option_env!("STAPRUN_PATH") {
    Some(p) => p,
    None => "/usr/bin/staprun",
};

/// The signals that interrupt a load (it unloads and exits); stapio
/// unblocks them once its handlers are set.
pub const TERM_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// How main prints what is not the final result: warnings, and an error
/// that is followed by more work (a failed exec of stapio, before the undo).
pub struct Report<'a> {
    pub warn: &'a dyn Fn(&str),
    pub error: &'a dyn Fn(&StaprunError),
}

/// What main prints (or not) when an operation succeeds.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Print this on stdout and exit with this status (help, version,
    /// `--explain`).
    Print(String, i32),
    /// Exit with this status.
    Exit(i32),
}

/// Start-up hygiene, before looking at anything the caller gave: returns
/// the captured environment (cleared from the process).
pub fn sanitize() -> Result<Vec<(String, String)>, StaprunError> {
    let captured: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    sys::clear_environment();
    sys::ensure_std_fds()
        .and_then(|()| sys::cloexec_from_3())
        // Every signal is held (SIGKILL and SIGSTOP cannot be; the
        // privileged window keeps the caller from sending them). A pending
        // INT/TERM/HUP/QUIT is looked at around the load (it unloads and
        // exits); the mask is set back before stapio runs.
        .and_then(|()| sys::block_all_signals())
        .and_then(|()| sys::set_signal(libc::SIGPIPE, sys::Disposition::Ignore))
        .and_then(|()| sys::set_signal(libc::SIGUSR2, sys::Disposition::Ignore))
        // A writer opening the module breaks our read lease with SIGIO.
        .and_then(|()| sys::set_signal(libc::SIGIO, sys::Disposition::Ignore))
        .map_err(StaprunError::Setup)?;
    Ok(captured)
}

fn interrupted() -> bool {
    !sys::pending_signals(&TERM_SIGNALS).is_empty()
}

/// Resource limits that would let the kernel itself kill or stop us in
/// the window (SIGXCPU/SIGKILL past the CPU limits): lifted for the window,
/// put back after the privilege drop.
const WINDOW_LIMITS: [sys::Resource; 2] = [sys::Resource::Cpu, sys::Resource::Rttime];

/// The real privileged window (see [`Window`]).
pub struct RealWindow {
    caller: Uid,
    closed: Cell<bool>,
    limits: Cell<[Option<(u64, u64)>; 2]>,
}

impl RealWindow {
    pub fn new(caller: Uid) -> Self {
        RealWindow {
            caller,
            closed: Cell::new(false),
            limits: Cell::new([None; 2]),
        }
    }

    /// After the drop: the caller's own CPU limits again (lowering a
    /// limit needs no privilege).
    fn restore_limits(&self) -> io::Result<()> {
        for (res, saved) in WINDOW_LIMITS.iter().zip(self.limits.get()) {
            if let Some((soft, hard)) = saved {
                sys::set_rlimit(*res, soft, hard)?;
            }
        }
        Ok(())
    }
}

impl Window for RealWindow {
    fn close(&self) -> io::Result<()> {
        sys::set_real_uid(Uid::ROOT)?;
        if !self.closed.replace(true) {
            let mut saved = [None; 2];
            for (i, res) in WINDOW_LIMITS.iter().enumerate() {
                let old = sys::get_rlimit(*res)?;
                sys::set_rlimit(*res, libc::RLIM_INFINITY, libc::RLIM_INFINITY)?;
                saved[i] = Some(old);
            }
            self.limits.set(saved);
        }
        Ok(())
    }

    fn init_as_caller(&self, f: &mut dyn FnMut() -> io::Result<()>) -> io::Result<()> {
        sys::set_real_uid(self.caller)?;
        let r = f();
        // Out of the caller's reach again before anything else; a process
        // that cannot do that must not go on.
        if let Err(e) = sys::set_real_uid(Uid::ROOT) {
            // The one message not printed by main: there is no going on.
            eprintln!("staprun: ERROR: cannot make the real uid root again: {e}");
            std::process::abort();
        }
        r
    }
}

/// Who is calling: the ids (effective root is required), the privilege
/// class from the real uid and groups, and the kernel release.
pub struct Caller {
    pub ids: sys::Ids,
    pub class: Class,
    pub release: String,
}

impl Caller {
    pub fn current() -> Result<Caller, StaprunError> {
        let ids = sys::ids().map_err(StaprunError::Setup)?;
        if !ids.euid.is_root() {
            let nnp = if sys::no_new_privs() {
                " (no_new_privs is set, so the setuid bit is ignored)"
            } else {
                ""
            };
            return Err(StaprunError::NotSetuidRoot { nnp });
        }
        let mut groups = sys::groups().map_err(StaprunError::Setup)?;
        groups.push(ids.rgid);
        let class = classify(ids.ruid, &groups, StapGroups::from_system());
        let release = sys::kernel_release().map_err(StaprunError::Setup)?;
        Ok(Caller {
            ids,
            class,
            release,
        })
    }

    /// `user=NAME uid=N class=C` for the audit lines.
    pub fn who(&self) -> String {
        let name = sys::user_name(self.ids.ruid);
        audit::who(self.ids.ruid, name.as_deref(), &self.class.to_string())
    }

    /// File-system ids for resolving the caller's module path: the
    /// caller's own unless root or stapdev (who may load from anywhere).
    fn lookup_ids(&self) -> Option<(Uid, Gid)> {
        (!self.class.may_load_anything()).then_some((self.ids.ruid, self.ids.rgid))
    }
}

static KERNEL: LinuxKernel = LinuxKernel;
static GROUPS: SystemGroups = SystemGroups;

/// The real system's context for a caller.
fn context<'a>(
    caller: &Caller,
    window: &'a dyn Window,
    audit: &'a dyn Fn(&audit::Event<'_>),
    warn: &'a dyn Fn(&str),
) -> Context<'a> {
    Context {
        kernel: &KERNEL,
        groups: &GROUPS,
        blessed_dir: blessed_dir_for(&caller.release),
        real_uid: caller.ids.ruid,
        real_gid: caller.ids.rgid,
        class: caller.class,
        lookup_ids: caller.lookup_ids(),
        window,
        audit,
        pid: sys::getpid(),
        interrupted: &interrupted,
        warn,
    }
}

/// The identity of staprun's syslog records.
const SYSLOG_IDENT: &CStr = c"staprun";

/// The audit sink of the real program: syslog, AUTHPRIV, ident staprun.
fn syslog_sink(who: &str) -> impl Fn(&audit::Event<'_>) + '_ {
    move |e: &audit::Event<'_>| {
        sys::syslog(SYSLOG_IDENT, libc::LOG_AUTHPRIV, e.priority(), &e.line(who))
    }
}

/// staprun with argv (without argv\[0\]) and the captured environment;
/// `warn` prints a warning. Returns only what main must print or the error;
/// a successful hand-over does not return (stapio runs in our place).
pub fn run(
    args: &[OsString],
    captured: Vec<(String, String)>,
    report: &Report<'_>,
) -> Result<Outcome, StaprunError> {
    match args.first().and_then(|a| a.to_str()) {
        Some("--explain") => return explain(&args[1..], report.warn),
        Some(UNDO_START) => return undo_start(&args[1..], report.warn),
        _ => {}
    }
    let opts = cli::parse(Program::Staprun, args)?;
    if opts.help {
        let help = cli::command(Program::Staprun).render_help();
        return Ok(Outcome::Print(format!("{help}\n"), 0));
    }
    if opts.version {
        return Ok(Outcome::Print(
            format!(
                "Systemtap module loader/runner (staprun {}, for SystemTap 4.x and 5.x modules)\n",
                stap_common::VERSION
            ),
            0,
        ));
    }
    // Resolve the name early so a bad MODULE is a usage error even when
    // we are not setuid (as in the C staprun).
    let module_name = if opts.delete && opts.module == "*" {
        None
    } else {
        Some(cli::resolve_module(&opts.module, Path::new("/"))?.name)
    };

    let caller = Caller::current()?;
    let who = caller.who();
    let window = RealWindow::new(caller.ids.ruid);
    let sink = syslog_sink(&who);
    let ctx = context(&caller, &window, &sink, report.warn);

    if opts.delete {
        // Checked and done out of the caller's reach: stopped between the
        // checks and delete_module, a -d could be aimed at a module of
        // the same name loaded meanwhile.
        window.close().map_err(StaprunError::Setup)?;
        unload::unload(&ctx, module_name.as_ref().map_or("*", ModName::as_str))?;
        return Ok(Outcome::Exit(0));
    }
    // What stapio would refuse (monitor mode without a terminal) is
    // refused before anything is loaded or attached.
    if let Some(why) = opts.stapio_refuses(std::io::stdout().is_terminal()) {
        return Err(StaprunError::Unsupported(why.to_string()));
    }
    let stapio = check_stapio(Path::new(STAPIO_PATH))?;
    let (guard, dir) = if opts.attach {
        let name = module_name.ok_or(StaprunError::BadName("'*' is only for -d".into()))?;
        let dir = load::attach(&ctx, &name)?;
        window.close().map_err(StaprunError::Setup)?;
        (UndoGuard::new(&ctx, name, false), dir)
    } else {
        // As the C staprun: no module is loaded in FIPS mode.
        if sys::fips_enabled() {
            return Err(StaprunError::Fips);
        }
        let loaded = load::load(&ctx, &opts)?;
        (UndoGuard::new(&ctx, loaded.name, true), loaded.dir)
    };
    let plan = Handover {
        opts: &opts,
        stapio: &stapio,
        captured,
        caller: &caller,
        report,
    };
    Err(hand_over(guard, &window, dir, plan))
}

/// stapio must be a root-owned regular file that only root can change.
pub fn check_stapio(path: &Path) -> Result<PathBuf, StaprunError> {
    let bad = |reason: String| StaprunError::Stapio {
        path: path.to_path_buf(),
        reason,
    };
    let fd = sys::open(path.as_os_str(), libc::O_PATH).map_err(|e| bad(e.to_string()))?;
    let st = sys::fstat(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| bad(e.to_string()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(bad("not a regular file".into()));
    }
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(bad(
            "it must be owned by root and writable only by root".into()
        ));
    }
    Ok(path.to_path_buf())
}

/// Drop privilege for good and exec stapio with the module directory fd.
/// Returns only on failure. A failure before the drop unloads the module
/// (the guard, through the `-d` checks); after the drop, when stapio
/// cannot be executed, staprun executes itself as
/// `staprun --undo-start MODULE`.
struct Handover<'a> {
    opts: &'a Options,
    stapio: &'a Path,
    captured: Vec<(String, String)>,
    caller: &'a Caller,
    report: &'a Report<'a>,
}

fn hand_over(
    guard: UndoGuard<'_, '_>,
    window: &RealWindow,
    dir: Box<dyn ModuleDir>,
    h: Handover<'_>,
) -> StaprunError {
    let Handover {
        opts,
        stapio,
        captured,
        caller,
        report,
    } = h;
    let name = guard.name().clone();
    let fd = dir.raw_fd();
    if let Some(fd) = fd
        && let Err(e) = sys::set_cloexec(fd, false)
    {
        drop(dir);
        return guard.fail(StaprunError::Setup(e));
    }
    let plan = ExecPlan::stapio(stapio, opts, &name, fd, captured);
    let undo_plan = ExecPlan::undo_start(Path::new(STAPRUN_PATH), &name);
    if interrupted() {
        drop(dir);
        return guard.fail(StaprunError::Interrupted {
            module: name.to_string(),
        });
    }
    // Going back to the caller's real uid counts the caller's processes
    // against RLIMIT_NPROC, and over it the kernel fails the next execve
    // (of stapio, and of staprun to undo the load). The limit is lifted
    // for the drop and put back at once: stapio then runs under it, and
    // its own failure to start can still undo the load.
    let nproc = sys::get_rlimit(sys::Resource::Nproc);
    let lifted = nproc.as_ref().is_ok_and(|_| {
        sys::set_rlimit(
            sys::Resource::Nproc,
            libc::RLIM_INFINITY,
            libc::RLIM_INFINITY,
        )
        .is_ok()
    });
    if let Err(e) = sys::drop_privileges_for_good(caller.ids.ruid, caller.ids.rgid) {
        drop(dir);
        return guard.fail(StaprunError::Drop(e));
    }
    let loaded_by_us = guard.disarm();
    if let (true, Ok((soft, hard))) = (lifted, nproc) {
        let _ = sys::set_rlimit(sys::Resource::Nproc, soft, hard);
    }
    let _ = window.restore_limits();
    // stapio unblocks the terminating signals once its handlers are set;
    // everything else is delivered normally again.
    let _ = sys::set_signal_mask(&TERM_SIGNALS);
    let exec = StaprunError::Exec {
        path: stapio.to_path_buf(),
        source: sys::execve(&plan.path, &plan.argv, &plan.envp),
    };
    if !loaded_by_us {
        return exec;
    }
    (report.error)(&exec);
    drop(dir);
    let source = sys::execve(&undo_plan.path, &undo_plan.argv, &undo_plan.envp);
    StaprunError::Undone {
        error: Box::new(StaprunError::Exec {
            path: PathBuf::from(STAPRUN_PATH),
            source,
        }),
        undo: format!("module '{name}' was left loaded; unload it with 'staprun -d {name}'"),
    }
}

/// `staprun --undo-start MODULE`, executed by stapio (or by staprun
/// itself) when stapio could not start: unload MODULE through the checks
/// of `staprun -d`, log it, and fail.
fn undo_start(args: &[OsString], warn: &dyn Fn(&str)) -> Result<Outcome, StaprunError> {
    let [module] = args else {
        return Err(StaprunError::Usage(cli::CliError::Clap(format!(
            "usage: staprun {UNDO_START} MODULE"
        ))));
    };
    let module = module
        .to_str()
        .ok_or_else(|| cli::CliError::NotUtf8(module.clone()))?;
    let name = ModName::new(module).map_err(|e| StaprunError::BadName(e.to_string()))?;
    let caller = Caller::current()?;
    let who = caller.who();
    let window = RealWindow::new(caller.ids.ruid);
    let sink = syslog_sink(&who);
    let ctx = context(&caller, &window, &sink, warn);
    window.close().map_err(StaprunError::Setup)?;
    Err(unload::undo_start(&ctx, &name))
}

/// `staprun --explain MODULE`: say, without loading anything, whether the
/// caller may load MODULE and which rule decides. Exit 0 if allowed, 1 if
/// not.
fn explain(args: &[OsString], warn: &dyn Fn(&str)) -> Result<Outcome, StaprunError> {
    let [module] = args else {
        return Err(StaprunError::Usage(cli::CliError::Clap(
            "usage: staprun --explain MODULE".into(),
        )));
    };
    let module = module
        .to_str()
        .ok_or_else(|| cli::CliError::NotUtf8(module.clone()))?;
    let caller = Caller::current()?;
    let target = cli::resolve_module(module, &blessed_dir_for(&caller.release))?;
    let ctx = context(&caller, &crate::NoWindow, &crate::no_audit, warn);
    let (allowed, text) = load::explain(&ctx, &target.path)?;
    let who = format!("uid {} ({})", caller.ids.ruid, caller.class);
    let verdict = if allowed { "may" } else { "may not" };
    Ok(Outcome::Print(
        format!("{who} {verdict} load {}: {text}\n", target.path.display()),
        if allowed { 0 } else { 1 },
    ))
}
