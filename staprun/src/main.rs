//! staprun: sanitize the process -> parse -> decide -> load -> hand over.
//! This is the only place that prints.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use stap_common::cli::{self, Options, Program};
use stap_common::kernel::ModuleDir;
use stap_common::kernel::linux::LinuxKernel;
use stap_common::modname::ModName;
use stap_common::sys;

use staprun::creds::{StapGroups, classify};
use staprun::facts::SystemGroups;
use staprun::{Context, StaprunError, Window, audit, blessed_dir_for, env, load, unload};

/// stapio's path, fixed at build time (`STAPIO_PATH`); never from the
/// environment at run time.
const STAPIO_PATH: &str = match option_env!("STAPIO_PATH") {
    Some(p) => p,
    None => "/usr/libexec/staprun/stapio",
};

/// Our own path (`STAPRUN_PATH`, as stapio has it): when stapio cannot be
/// executed, staprun executes itself as `staprun --undo-start MODULE`.
const STAPRUN_PATH: &str = match option_env!("STAPRUN_PATH") {
    Some(p) => p,
    None => "/usr/bin/staprun",
};

/// `staprun --undo-start MODULE`: `staprun -d MODULE` (the same checks)
/// for a module whose stapio could not start; exits 1.
const UNDO_START: &str = "--undo-start";

/// Resource limits that would let the kernel itself kill or stop us in
/// the window (SIGXCPU/SIGKILL past the CPU limits): lifted for the window,
/// put back after the privilege drop.
const WINDOW_LIMITS: [libc::__rlimit_resource_t; 2] = [libc::RLIMIT_CPU, libc::RLIMIT_RTTIME];

/// The real privileged window (see [`staprun::Window`]).
struct RealWindow {
    caller: u32,
    closed: Cell<bool>,
    limits: Cell<[Option<(u64, u64)>; 2]>,
}

impl RealWindow {
    fn new(caller: u32) -> Self {
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
        sys::set_real_uid(0)?;
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
        if let Err(e) = sys::set_real_uid(0) {
            eprintln!("staprun: ERROR: cannot make the real uid root again: {e}");
            std::process::abort();
        }
        r
    }
}

fn audit_sink<'a>(who: &'a str) -> impl Fn(&audit::Event<'_>) + 'a {
    move |e: &audit::Event<'_>| {
        let prio = match e {
            audit::Event::Loading { .. } => libc::LOG_NOTICE,
            audit::Event::LoadFailed { .. } => libc::LOG_WARNING,
        };
        sys::syslog_authpriv(prio, &audit::event_line(who, e));
    }
}

const TERM_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn main() {
    // Start-up hygiene, before looking at anything the caller gave us.
    let captured: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    sys::clear_environment();
    let hygiene = sys::ensure_std_fds()
        .and_then(|()| sys::cloexec_from_3())
        // Every signal is held (SIGKILL and SIGSTOP cannot be; the
        // privileged window keeps the caller from sending them). A pending
        // INT/TERM/HUP/QUIT is looked at around the load (it unloads and
        // exits); the mask is set back before stapio runs.
        .and_then(|()| sys::block_all_signals())
        .and_then(|()| sys::set_signal(libc::SIGPIPE, sys::Disposition::Ignore))
        .and_then(|()| sys::set_signal(libc::SIGUSR2, sys::Disposition::Ignore))
        // A writer opening the module breaks our read lease with SIGIO.
        .and_then(|()| sys::set_signal(libc::SIGIO, sys::Disposition::Ignore));
    let result = hygiene
        .map_err(StaprunError::Setup)
        .and_then(|()| run(captured));
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("staprun: ERROR: {e}");
            if let Some(h) = e.hint() {
                eprintln!("staprun: ERROR: {h}");
            }
            std::process::exit(e.exit_code());
        }
    }
}

static WARNED: AtomicBool = AtomicBool::new(false);

fn warn(msg: &str) {
    WARNED.store(true, Ordering::Relaxed);
    eprintln!("staprun: WARNING: {msg}");
}

fn interrupted() -> bool {
    !sys::pending_signals(&TERM_SIGNALS).is_empty()
}

fn run(captured: Vec<(String, String)>) -> Result<i32, StaprunError> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--explain") {
        return explain(&args[1..]);
    }
    if args.first().is_some_and(|a| a == UNDO_START) {
        return undo_start(&args[1..]);
    }
    let opts = cli::parse(Program::Staprun, &args)?;
    if opts.help {
        let help = cli::command(Program::Staprun).render_help();
        println!("{help}");
        return Ok(0);
    }
    if opts.version {
        println!(
            "Systemtap module loader/runner (staprun {}, for SystemTap 4.x and 5.x modules)",
            stap_common::VERSION
        );
        return Ok(0);
    }
    // Resolve the name early so a bad MODULE is a usage error even when
    // we are not setuid (as in the C staprun).
    let module_name = if opts.delete && opts.module == "*" {
        None
    } else {
        Some(cli::resolve_module(&opts.module, Path::new("/"))?.name)
    };

    let (ids, class, release) = caller()?;
    let uname = sys::user_name(ids.ruid);
    let who = audit::who(ids.ruid, uname.as_deref(), &class.to_string());
    let window = RealWindow::new(ids.ruid);
    let sink = audit_sink(&who);
    let ctx = context(&ids, class, &release, &window, &sink);

    if opts.delete {
        // Checked and done out of the caller's reach: stopped between the
        // checks and delete_module, a -d could be aimed at a module of
        // the same name loaded meanwhile.
        window.close().map_err(StaprunError::Setup)?;
        let gone = unload::unload(&ctx, module_name.as_ref().map_or("*", ModName::as_str))?;
        for m in gone {
            sys::syslog_authpriv(libc::LOG_NOTICE, &audit::unload_line(&who, &m));
        }
        return Ok(0);
    }
    let stapio = check_stapio(Path::new(STAPIO_PATH))?;
    let (name, dir) = if opts.attach {
        let name = module_name.ok_or(StaprunError::BadName("'*' is only for -d".into()))?;
        if let Some(why) = opts.stapio_refuses() {
            return Err(StaprunError::Unsupported(why.to_string()));
        }
        let dir = load::attach(&ctx, &name)?;
        window.close().map_err(StaprunError::Setup)?;
        (name, dir)
    } else {
        // As the C staprun: no module is loaded in FIPS mode.
        if sys::fips_enabled() {
            return Err(StaprunError::Fips);
        }
        let loaded = match load::load(&ctx, &opts) {
            Ok(l) => l,
            Err(e) => {
                if let StaprunError::Denied { path, reason } = &e {
                    let line = audit::deny_line(&who, &path.display().to_string(), reason);
                    sys::syslog_authpriv(libc::LOG_WARNING, &line);
                }
                return Err(e);
            }
        };
        let line = audit::load_line(
            &who,
            loaded.name.as_str(),
            &loaded.path,
            &loaded.sha256,
            &format!("{:?}", loaded.rule),
        );
        sys::syslog_authpriv(libc::LOG_NOTICE, &line);
        (loaded.name, loaded.dir)
    };
    let err = hand_over(&ctx, &window, &opts, &name, dir, &stapio, captured, ids);
    Err(err)
}

static KERNEL: LinuxKernel = LinuxKernel;
static GROUPS: SystemGroups = SystemGroups;

/// The real system's context for a caller.
fn context<'a>(
    ids: &sys::Ids,
    class: staprun::policy::Class,
    release: &str,
    window: &'a dyn Window,
    audit: &'a dyn Fn(&audit::Event<'_>),
) -> Context<'a> {
    Context {
        kernel: &KERNEL,
        groups: &GROUPS,
        blessed_dir: blessed_dir_for(release),
        real_uid: ids.ruid,
        real_gid: ids.rgid,
        class,
        lookup_ids: lookup_ids(ids, class),
        window,
        audit,
        pid: std::process::id(),
        interrupted: &interrupted,
        warn: &warn,
    }
}

/// File-system ids for resolving the caller's module path: the caller's
/// own unless root or stapdev (who may load from anywhere).
fn lookup_ids(ids: &sys::Ids, class: staprun::policy::Class) -> Option<(u32, u32)> {
    (!class.may_load_anything()).then_some((ids.ruid, ids.rgid))
}

/// `staprun --undo-start MODULE`, executed by stapio (or by staprun
/// itself) when stapio could not start: unload MODULE through the checks
/// of `staprun -d`, log it, and fail.
fn undo_start(args: &[OsString]) -> Result<i32, StaprunError> {
    let [module] = args else {
        return Err(StaprunError::Usage(cli::CliError::Clap(format!(
            "usage: staprun {UNDO_START} MODULE"
        ))));
    };
    let module = module
        .to_str()
        .ok_or_else(|| cli::CliError::NotUtf8(module.clone()))?;
    let name = ModName::new(module).map_err(|e| StaprunError::BadName(e.to_string()))?;
    let (ids, class, release) = caller()?;
    let uname = sys::user_name(ids.ruid);
    let who = audit::who(ids.ruid, uname.as_deref(), &class.to_string());
    let window = RealWindow::new(ids.ruid);
    let sink = audit_sink(&who);
    let ctx = context(&ids, class, &release, &window, &sink);
    window.close().map_err(StaprunError::Setup)?;
    unload::unload(&ctx, name.as_str())?;
    sys::syslog_authpriv(libc::LOG_NOTICE, &audit::undo_line(&who, name.as_str()));
    Err(StaprunError::StartFailed {
        module: name.to_string(),
    })
}

/// Who is calling: the ids (effective root is required), the privilege
/// class from the real uid and groups, and the kernel release.
fn caller() -> Result<(sys::Ids, staprun::policy::Class, String), StaprunError> {
    let ids = sys::ids().map_err(StaprunError::Setup)?;
    if ids.euid != 0 {
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
    Ok((ids, class, release))
}

/// `staprun --explain MODULE`: say, without loading anything, whether the
/// caller may load MODULE and which rule decides. Exit 0 if allowed, 1 if
/// not.
fn explain(args: &[OsString]) -> Result<i32, StaprunError> {
    let [module] = args else {
        return Err(StaprunError::Usage(cli::CliError::Clap(
            "usage: staprun --explain MODULE".into(),
        )));
    };
    let module = module
        .to_str()
        .ok_or_else(|| cli::CliError::NotUtf8(module.clone()))?;
    let (ids, class, release) = caller()?;
    let blessed = blessed_dir_for(&release);
    let target = cli::resolve_module(module, &blessed)?;
    let ctx = context(
        &ids,
        class,
        &release,
        &staprun::NoWindow,
        &staprun::no_audit,
    );
    let (allowed, text) = load::explain(&ctx, &target.path)?;
    let who = format!("uid {} ({})", ids.ruid, class);
    if allowed {
        println!("{who} may load {}: {text}", target.path.display());
        Ok(0)
    } else {
        println!("{who} may not load {}: {text}", target.path.display());
        Ok(1)
    }
}

/// stapio must be a root-owned regular file that only root can change.
fn check_stapio(path: &Path) -> Result<PathBuf, StaprunError> {
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
/// (through the `-d` checks); after the drop, when stapio cannot be
/// executed, staprun executes itself as `staprun --undo-start MODULE`.
#[allow(clippy::too_many_arguments)]
fn hand_over(
    ctx: &Context<'_>,
    window: &RealWindow,
    opts: &Options,
    name: &ModName,
    dir: Box<dyn ModuleDir>,
    stapio: &Path,
    captured: Vec<(String, String)>,
    ids: sys::Ids,
) -> StaprunError {
    let loaded_by_us = !opts.attach;
    let undo = |e: StaprunError| {
        if loaded_by_us {
            StaprunError::Undone {
                error: Box::new(e),
                undo: unload::undo(ctx, name),
            }
        } else {
            e
        }
    };
    let fd = dir.raw_fd();
    if let Some(fd) = fd
        && let Err(e) = sys::set_cloexec(fd, false)
    {
        drop(dir);
        return undo(StaprunError::Setup(e));
    }
    let mut argv = vec![stapio.as_os_str().to_os_string()];
    argv.extend(
        opts.to_args(name.as_str(), fd)
            .into_iter()
            .map(OsString::from),
    );
    let mut envp: Vec<(String, String)> = env::filter(captured);
    envp.push(("SYSTEMTAP_VERBOSE".into(), opts.verbose.to_string()));
    envp.push(("SYSTEMTAP_MODULE".into(), name.to_string()));
    let to_c = |s: OsString| CString::new(s.into_vec()).unwrap_or_default();
    let argv: Vec<CString> = argv.into_iter().map(to_c).collect();
    let envp: Vec<CString> = envp
        .into_iter()
        .map(|(k, v)| to_c(OsString::from(format!("{k}={v}"))))
        .collect();
    let path = to_c(stapio.as_os_str().to_os_string());
    let undo_path = to_c(OsString::from(STAPRUN_PATH));
    let undo_argv = [
        to_c(OsString::from(STAPRUN_PATH)),
        to_c(OsString::from(UNDO_START)),
        to_c(OsString::from(name.as_str())),
    ];

    if interrupted() {
        drop(dir);
        return undo(StaprunError::Interrupted {
            module: name.to_string(),
        });
    }
    // Going back to the caller's real uid counts the caller's processes
    // against RLIMIT_NPROC, and over it the kernel fails the next execve
    // (of stapio, and of staprun to undo the load). The limit is lifted
    // for the drop and put back at once: stapio then runs under it, and
    // its own failure to start can still undo the load.
    let nproc = sys::get_rlimit(libc::RLIMIT_NPROC);
    let lifted = nproc.as_ref().is_ok_and(|_| {
        sys::set_rlimit(libc::RLIMIT_NPROC, libc::RLIM_INFINITY, libc::RLIM_INFINITY).is_ok()
    });
    if let Err(e) = sys::drop_privileges_for_good(ids.ruid, ids.rgid) {
        drop(dir);
        return undo(StaprunError::Drop(e));
    }
    if let (true, Ok((soft, hard))) = (lifted, nproc) {
        let _ = sys::set_rlimit(libc::RLIMIT_NPROC, soft, hard);
    }
    let _ = window.restore_limits();
    // stapio unblocks the terminating signals once its handlers are set;
    // everything else is delivered normally again.
    let _ = sys::set_signal_mask(&TERM_SIGNALS);
    let e = sys::execve(&path, &argv, &envp);
    let exec = StaprunError::Exec {
        path: stapio.to_path_buf(),
        source: e,
    };
    if !loaded_by_us {
        return exec;
    }
    eprintln!("staprun: ERROR: {exec}");
    drop(dir);
    let e2 = sys::execve(&undo_path, &undo_argv, &[]);
    StaprunError::Undone {
        error: Box::new(StaprunError::Exec {
            path: PathBuf::from(STAPRUN_PATH),
            source: e2,
        }),
        undo: format!("module '{name}' was left loaded; unload it with 'staprun -d {name}'"),
    }
}
