//! Signals as counters. The handlers only touch atomics; the main loop and
//! the output writers poll them. Tests call the same methods directly.
#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use stap_common::sys::{self, Disposition};

/// What has been asked of stapio by signals (or by a test).
#[derive(Debug, Default)]
pub struct Signals {
    interrupts: AtomicU32,
    detach: AtomicBool,
    rotations: AtomicU64,
    child: AtomicBool,
}

impl Signals {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// SIGINT, SIGTERM, SIGHUP: stop the script (a third one: stop now).
    pub fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::SeqCst);
    }

    /// SIGQUIT: detach, leaving the module loaded.
    pub fn detach(&self) {
        self.detach.store(true, Ordering::SeqCst);
    }

    /// SIGUSR2: switch to the next output file.
    pub fn rotate(&self) {
        self.rotations.fetch_add(1, Ordering::SeqCst);
    }

    /// SIGCHLD: a child changed state.
    pub fn child(&self) {
        self.child.store(true, Ordering::SeqCst);
    }

    pub fn interrupts(&self) -> u32 {
        self.interrupts.load(Ordering::SeqCst)
    }

    pub fn detach_requested(&self) -> bool {
        self.detach.load(Ordering::SeqCst)
    }

    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::SeqCst)
    }

    /// Whether SIGCHLD arrived since the last call.
    pub fn take_child(&self) -> bool {
        self.child.swap(false, Ordering::SeqCst)
    }
}

static PROCESS: OnceLock<Arc<Signals>> = OnceLock::new();

/// A handler that only records the signal in the process's [`Signals`]
/// (an atomic store: async-signal-safe).
macro_rules! handler {
    ($name:ident, $record:ident) => {
        extern "C" fn $name(_: libc::c_int) {
            if let Some(s) = PROCESS.get() {
                s.$record();
            }
        }
    };
}

handler!(on_interrupt, interrupt);
handler!(on_quit, detach);
handler!(on_usr2, rotate);
handler!(on_child, child);

/// Signals the main thread handles; other threads block them so that a
/// signal interrupts the main loop's wait.
pub const HANDLED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR2,
    libc::SIGCHLD,
];

/// Install the process's handlers, feeding `signals`.
pub fn install(signals: Arc<Signals>) -> io::Result<()> {
    PROCESS
        .set(signals)
        .map_err(|_| io::Error::other("signal handlers installed twice"))?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        sys::set_signal(sig, Disposition::Handler(on_interrupt))?;
    }
    sys::set_signal(libc::SIGQUIT, Disposition::Handler(on_quit))?;
    sys::set_signal(libc::SIGUSR2, Disposition::Handler(on_usr2))?;
    sys::set_signal(libc::SIGCHLD, Disposition::Handler(on_child))?;
    sys::set_signal(libc::SIGPIPE, Disposition::Ignore)?;
    // A caller's RLIMIT_FSIZE must make the write fail (EFBIG) and take
    // the output-error path, which unloads, rather than kill stapio.
    sys::set_signal(libc::SIGXFSZ, Disposition::Ignore)?;
    sys::unblock_all_signals()
}

/// In a helper thread: leave the handled signals to the main thread.
pub fn block_in_this_thread() {
    let _ = sys::mask_signals(&HANDLED, true);
}

/// `strsignal`-like names for the usual signals.
pub fn describe(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "Hangup",
        libc::SIGINT => "Interrupt",
        libc::SIGQUIT => "Quit",
        libc::SIGILL => "Illegal instruction",
        libc::SIGTRAP => "Trace/breakpoint trap",
        libc::SIGABRT => "Aborted",
        libc::SIGBUS => "Bus error",
        libc::SIGFPE => "Floating point exception",
        libc::SIGKILL => "Killed",
        libc::SIGUSR1 => "User defined signal 1",
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGUSR2 => "User defined signal 2",
        libc::SIGPIPE => "Broken pipe",
        libc::SIGALRM => "Alarm clock",
        libc::SIGTERM => "Terminated",
        _ => "Unknown signal",
    }
}
