//! stapio: refuse setuid, parse, open the module directory, connect,
//! (daemonize), run, unload. The only place that prints the final error.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::ffi::OsString;
use std::io::{IsTerminal as _, Write};
use std::path::Path;

use stap_common::cli::{self, ColorMode, Program};
use stap_common::kernel::linux::{LinuxKernel, LinuxModuleDir};
use stap_common::kernel::{KernelOps, ModuleDir};
use stap_common::modname::ModName;
use stap_common::sys;

use stapio::diag::Diag;
use stapio::monitor::{History, Monitor, TermScreen};
use stapio::session::{StaprunUnloader, Unloader as _};
use stapio::signals::{self, Signals};
use stapio::{Config, Error, Session, Streams};

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut color = ColorMode::Auto;
    let mut undo = None;
    // Set once stapio has daemonized (-D): from then on its messages,
    // these last ones too, go to syslog.
    let daemonized = Cell::new(false);
    let code = match run(&args, &mut color, &mut undo, &daemonized) {
        Ok(code) => code,
        Err(Error::Usage(e)) => {
            eprintln!("stapio: {e}");
            eprintln!("Try 'stapio -h' for more information.");
            1
        }
        Err(e) => {
            diag(color, &daemonized).error(&e.to_string());
            1
        }
    };
    // `staprun -d` could not be started (no processes, no memory): this
    // process becomes `staprun --undo-start MODULE` instead.
    if let Some((unloader, name)) = undo {
        let e = StaprunUnloader::exec_undo(&unloader, &name);
        diag(color, &daemonized).error(&format!(
            "cannot run staprun to unload {name}: {e}; unload it with 'staprun -d {name}'"
        ));
        std::process::exit(1);
    }
    std::process::exit(code);
}

/// Where a last message goes: stderr, or syslog once daemonized.
fn diag(color: ColorMode, daemonized: &Cell<bool>) -> Diag {
    if daemonized.get() {
        Diag::syslog()
    } else {
        Diag::stderr(color)
    }
}

type Undo = Option<(StaprunUnloader, ModName)>;

fn run(
    args: &[OsString],
    color: &mut ColorMode,
    undo: &mut Undo,
    daemonized: &Cell<bool>,
) -> Result<i32, Error> {
    let ids = sys::ids().map_err(Error::Setup)?;
    if ids.ruid != ids.euid || ids.rgid != ids.egid {
        return Err(Error::Setuid {
            ruid: ids.ruid,
            euid: ids.euid,
            rgid: ids.rgid,
            egid: ids.egid,
        });
    }
    sys::ensure_std_fds().map_err(Error::Setup)?;
    let opts = cli::parse(Program::Stapio, args)?;
    if opts.help {
        let help = cli::command(Program::Stapio).render_help();
        print!("{help}");
        let _ = std::io::stdout().flush();
        return Ok(0);
    }
    if opts.version {
        println!(
            "Systemtap module I/O (stapio {}, for SystemTap 4.x and 5.x modules)",
            stap_common::VERSION
        );
        return Ok(0);
    }
    *color = opts.color;
    if let Some(why) = opts.stapio_refuses(std::io::stdout().is_terminal()) {
        return Err(Error::MonitorRefused(why));
    }
    if opts.delete {
        return Err(Error::DeleteUnsupported);
    }
    // The name only: stapio never loads anything.
    let name = cli::resolve_module(&opts.module, Path::new("/"))?.name;
    let unloader = StaprunUnloader::new(opts.verbose, opts.color);
    let found = Cell::new(opts.relay_fd.is_some());
    let result = start(&opts, &name, &unloader, &found, daemonized);
    // A stapio that could not start leaves nothing loaded (a module it
    // attached to with -A is not its to unload; one that is not there
    // needs nothing).
    if result.is_err() && found.get() && !opts.attach && !unloader.attempted() {
        let _ = unloader.unload(&name);
    }
    if unloader.spawn_failed() {
        *undo = Some((unloader, name));
    }
    result
}

/// Everything from the module directory to the end of the run.
fn start(
    opts: &cli::Options,
    name: &ModName,
    unloader: &StaprunUnloader,
    found: &Cell<bool>,
    daemonized: &Cell<bool>,
) -> Result<i32, Error> {
    let kernel = LinuxKernel;
    let dir: Box<dyn ModuleDir> = match opts.relay_fd {
        Some(fd) => {
            let owned =
                sys::adopt_inherited_fd(fd).map_err(|source| Error::RelayDirFd { fd, source })?;
            Box::new(
                LinuxModuleDir::from_fd(owned)
                    .map_err(|source| Error::RelayDirFd { fd, source })?,
            )
        }
        None => kernel
            .open_module_dir(name)
            .map_err(|source| Error::ModuleDir {
                module: name.clone(),
                source,
            })?,
    };
    found.set(true);
    let signals = Signals::new();
    signals::install(signals.clone()).map_err(Error::Setup)?;
    let cwd = std::env::current_dir().map_err(Error::Setup)?;
    let cfg = Config::from_options(opts, name.clone(), &cwd);
    let diag = Diag::stderr(opts.color);
    // -M: the script's output goes to the monitor's output window.
    let history = opts.monitor_interval.map(|_| History::new());
    let stdout: Box<dyn Write + Send> = match &history {
        Some(h) => Box::new(h.writer()),
        None => Box::new(std::io::stdout()),
    };
    let streams = Streams {
        stdout,
        diag: diag.clone(),
    };
    let mut session = Session::connect(cfg, &kernel, dir, streams, signals)?;
    if let (Some(interval), Some(history)) = (opts.monitor_interval, &history) {
        let screen = TermScreen::open().map_err(Error::Monitor)?;
        let monitor = Monitor::new(interval, history.clone(), Box::new(screen));
        session = session.with_monitor(monitor, history);
    }
    if opts.daemon {
        sys::daemonize().map_err(Error::Daemon)?;
        // The caller's shell has its prompt back: from here on, the
        // module's ERROR/WARNING text and stapio's own messages go to
        // syslog (ident "stapio", facility daemon), as with the C stapio.
        // The session holds a clone of `diag`, so it follows.
        diag.use_syslog();
        daemonized.set(true);
        println!("{}", sys::getpid());
        let _ = std::io::stdout().flush();
        // stdin too, as the C stapio closes it: a daemon reads nothing
        // from the terminal (with -i, its module gets end of file).
        sys::redirect_to_dev_null(&[0, 1, 2]).map_err(Error::Daemon)?;
    }
    let outcome = session.run(unloader)?;
    Ok(outcome.exit_code())
}
