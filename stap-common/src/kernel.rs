//! The `KernelOps` boundary: every kernel operation staprun and stapio make
//! on a SystemTap module goes through these traits, implemented for real
//! in [`linux`] and simulated in `sim` (feature `sim`: tests and benchmarks only).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use crate::modname::ModName;

pub mod linux;
/// The simulated kernel: host tests and benchmarks only, never in the
/// programs (feature `sim`).
#[cfg(any(test, feature = "sim"))]
pub mod sim;

/// Where a module's control and relay files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/proc/systemtap/MOD/` (the default since SystemTap 4.5).
    Procfs,
    /// `/sys/kernel/debug/systemtap/MOD/`.
    Debugfs,
}

/// One relocation message's content: module, symbol or section, address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocation {
    pub module: String,
    pub symbol: String,
    pub address: u64,
}

/// Module load, unload and discovery.
pub trait KernelOps: Send + Sync {
    /// `init_module(2)` on an in-memory image (the bytes that were checked).
    fn init_module(&self, image: &[u8], params: &str) -> io::Result<()>;
    /// `delete_module(2)` with `O_NONBLOCK`.
    fn delete_module(&self, name: &str) -> io::Result<()>;
    /// Whether the kernel lists `name` as loaded.
    fn is_loaded(&self, name: &str) -> bool;
    /// Open the module's transport directory (debugfs if it has one there,
    /// else procfs). Fails with ENOENT when it is not a SystemTap module.
    fn open_module_dir(&self, name: &ModName) -> io::Result<Box<dyn ModuleDir>>;
    /// Names of the SystemTap modules present (for `staprun -d '*'`).
    fn systemtap_modules(&self) -> io::Result<Vec<String>>;
    /// The relocations staprun sends after a load: kernel symbols and
    /// module sections (best effort; missing sources give fewer entries).
    fn relocations(&self) -> Vec<Relocation>;
    /// Number of CPUs whose relay files to look for.
    fn possible_cpus(&self) -> usize;
}

/// A module's transport directory, held open.
pub trait ModuleDir: Send + Sync {
    fn transport(&self) -> Transport;
    /// The CVE-2010-4171 rule, part one: may the **real** user open `.cmd`
    /// for reading and writing (`faccessat` without `AT_EACCESS`)?
    fn real_user_may_use_control(&self) -> io::Result<()>;
    /// The owner (uid) of `.cmd`: the real uid of whoever called
    /// `init_module` for this module.
    fn control_owner(&self) -> io::Result<u32>;
    /// Open `.cmd` read-write. The module allows one opener: EBUSY when
    /// another process has it (an attached module).
    fn open_control(&self) -> io::Result<Box<dyn Control>>;
    /// Open `trace<cpu>`; `Ok(None)` when that CPU has no relay file.
    fn open_relay(&self, cpu: usize) -> io::Result<Option<Box<dyn Relay>>>;
    /// The directory's file descriptor, to hand to stapio (`-F`); `None`
    /// in the simulation.
    fn raw_fd(&self) -> Option<RawFd>;
    /// The module's standard input, `__stdin` (stapio `-i`), opened for
    /// writing: the procfs file of `probe input.char` / `input.line`
    /// (tapset `input.stp`: `procfs("__stdin").write`), always in
    /// `/proc/systemtap/MODULE/`, whatever the transport (C: monitor.c
    /// `redirect_stdin`). The module makes it when its probes start: ENOENT
    /// before that, and for a module without input probes.
    fn open_input(&self, module: &ModName) -> io::Result<Box<dyn ModuleInput>> {
        let _ = module;
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }
    /// Monitor mode (`stap --monitor`, stapio `-M`): the module's
    /// `monitor_status` file (the module formats it when it is opened),
    /// read whole up to `limit` bytes; empty while another process has
    /// it open. ENOENT for a module built without `--monitor`.
    fn read_monitor_status(&self, limit: usize) -> io::Result<Vec<u8>> {
        let _ = limit;
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }
    /// Monitor mode: one write of `command` to the module's
    /// `monitor_control` file (`clear`, `pause`, `resume`, `quit`, or a
    /// probe index to toggle). ENOENT for a module built without `--monitor`.
    fn write_monitor_control(&self, command: &str) -> io::Result<()> {
        let _ = command;
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }
}

/// The monitor-mode files a `stap --monitor` module adds to its directory.
pub const MONITOR_STATUS: &str = "monitor_status";
pub const MONITOR_CONTROL: &str = "monitor_control";

/// The control channel: one message per read, one per write.
pub trait Control: Send {
    /// Write one whole message. Errors carry the module's errno (EINVAL
    /// for a type it does not know, EPERM for a privileged one).
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Read one message without blocking: `ErrorKind::WouldBlock` if none.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Wait up to `timeout` for a message; true if one may be read.
    fn wait(&mut self, timeout: Duration) -> io::Result<bool>;
}

/// The module's `__stdin`, open for writing.
pub trait ModuleInput: Send {
    /// Write one byte, in one `write()`: each write fires the module's
    /// input probes once with what was written (`input.line` assembles its
    /// lines from one-byte writes, as the C stapio makes them).
    fn send_byte(&mut self, byte: u8) -> io::Result<()>;
}

/// The file name of the module's standard input (`-i`).
pub const STDIN_FILE: &str = "__stdin";

/// One CPU's relay file.
pub trait Relay: Send {
    /// Read without blocking: `Ok(0)` or `WouldBlock` when empty.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Wait up to `timeout` for data.
    fn wait(&mut self, timeout: Duration) -> io::Result<bool>;
    /// Wait up to `timeout` for data, or until `wake` (the read end of a
    /// pipe) is readable; true if data may be read. Relays without a file
    /// descriptor look at `wake` every few milliseconds.
    fn wait_or_wake(&mut self, timeout: Duration, wake: BorrowedFd<'_>) -> io::Result<bool> {
        const SLICE: Duration = Duration::from_millis(5);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.wait(left.min(SLICE))? {
                return Ok(!left.is_zero());
            }
            if crate::sys::poll_one(wake, libc::POLLIN, Duration::ZERO)? {
                return Ok(false);
            }
        }
    }
}

/// Text for the errno values `init_module` returns, as SystemTap's
/// `moderror` gives them, else the system's own text.
pub fn module_error_text(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ENOEXEC) => "Invalid module format".into(),
        Some(libc::ENOENT) => "Unknown symbol in module".into(),
        Some(libc::ESRCH) => "Module has wrong symbol version".into(),
        Some(libc::EINVAL) => "Invalid parameters".into(),
        Some(libc::EEXIST) => "File exists".into(),
        Some(libc::EKEYREJECTED) => {
            "Key was rejected by service (module signature required)".into()
        }
        Some(n) => io::Error::from_raw_os_error(n)
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or("")
            .to_string(),
        None => err.to_string(),
    }
}
