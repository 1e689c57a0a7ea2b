//! staprun: sanitize the process -> parse -> decide -> load -> hand over.
//! This is the only place that prints.
#![forbid(unsafe_code)]

use std::ffi::{CString, OsString};
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
use staprun::{Context, StaprunError, audit, blessed_dir_for, env, load, unload};

/// stapio's path, fixed at build time (`STAPIO_PATH`); never from the
/// environment at run time.
const STAPIO_PATH: &str = match option_env!("STAPIO_PATH") {
    Some(p) => p,
    None => "/usr/libexec/staprun/stapio",
};

const TERM_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn main() {
    // Start-up hygiene, before looking at anything the caller gave us.
    let captured: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    sys::clear_environment();
    let hygiene = sys::ensure_std_fds()
        .and_then(|()| sys::cloexec_from_3())
        .and_then(|()| sys::unblock_all_signals())
        // Signals that would end us during a load are held, and looked
        // at around the load (a pending one unloads and exits).
        .and_then(|()| sys::mask_signals(&TERM_SIGNALS, true))
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
    let kernel = LinuxKernel;
    let sysgroups = SystemGroups;
    let ctx = Context {
        kernel: &kernel,
        groups: &sysgroups,
        blessed_dir: blessed_dir_for(&release),
        real_uid: ids.ruid,
        class,
        pid: std::process::id(),
        interrupted: &interrupted,
        warn: &warn,
    };

    let uname = sys::user_name(ids.ruid);
    let who = audit::who(ids.ruid, uname.as_deref(), &class.to_string());
    if opts.delete {
        let gone = unload::unload(&ctx, module_name.as_ref().map_or("*", ModName::as_str))?;
        for m in gone {
            sys::syslog_authpriv(libc::LOG_NOTICE, &audit::unload_line(&who, &m));
        }
        return Ok(0);
    }
    let stapio = check_stapio(Path::new(STAPIO_PATH))?;
    let (name, dir) = if opts.attach {
        let name = module_name.ok_or(StaprunError::BadName("'*' is only for -d".into()))?;
        let dir = load::attach(&ctx, &name)?;
        (name, dir)
    } else {
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
    let err = hand_over(&ctx, &opts, &name, dir.as_ref(), &stapio, captured, ids);
    Err(err)
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
    let kernel = LinuxKernel;
    let sysgroups = SystemGroups;
    let ctx = Context {
        kernel: &kernel,
        groups: &sysgroups,
        blessed_dir: blessed,
        real_uid: ids.ruid,
        class,
        pid: std::process::id(),
        interrupted: &interrupted,
        warn: &warn,
    };
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
/// Returns only on failure.
fn hand_over(
    ctx: &Context<'_>,
    opts: &Options,
    name: &ModName,
    dir: &dyn ModuleDir,
    stapio: &Path,
    captured: Vec<(String, String)>,
    ids: sys::Ids,
) -> StaprunError {
    let loaded_by_us = !opts.attach;
    let undo = |e: StaprunError| {
        if loaded_by_us {
            let _ = ctx.kernel.delete_module(name.as_str());
        }
        e
    };
    let fd = dir.raw_fd();
    if let Some(fd) = fd
        && let Err(e) = sys::set_cloexec(fd, false)
    {
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

    if interrupted() {
        return undo(StaprunError::Interrupted {
            module: name.to_string(),
        });
    }
    if let Err(e) = sys::drop_privileges_for_good(ids.ruid, ids.rgid) {
        return undo(StaprunError::Drop(e));
    }
    // Signals still held are delivered to stapio once it has set up its
    // handlers; it unblocks them.
    let e = sys::execve(&path, &argv, &envp);
    StaprunError::Exec {
        path: stapio.to_path_buf(),
        source: e,
    }
}
