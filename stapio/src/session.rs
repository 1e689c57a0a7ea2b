//! The stapio lifecycle, as an explicit state machine over the
//! `KernelOps`/`ModuleDir` boundary, so host tests drive it through the
//! simulated kernel.
//!
//! ```text
//! connect: open .cmd, learn the generation (READY), fork -c (held)
//! run:     AwaitTransport --TRANSPORT--> Starting --START ok--> Running
//!          (-A: straight to Running, no START)      \--START fail--> end
//!          Running --REQUEST_EXIT | signal | -c exit--> Exiting --EXIT--> end
//!          -L after START, SIGQUIT: Detached (module stays loaded)
//! end:     close relays (drain), close .cmd, unload through `Unloader`
//! ```
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use stap_common::cli::Options;
use stap_common::kernel::{Control, KernelOps, ModuleDir, Relay};
use stap_common::modname::ModName;
use stap_common::protocol::{self, DecodeError, Generation, Notice, Request};
use stap_common::sys::{self, ChildStatus, ExecSpec};

use crate::diag::Diag;
use crate::error::Error;
use crate::output::Naming;
use crate::relay::{Close, Pump, PumpConfig};
use crate::signals::{self, Signals};
use crate::target::Target;
pub use crate::unloader::{STAPRUN_PATH, StaprunUnloader, Unloader};

/// How long the main loop waits for a control message before looking at
/// signals and the child again (the C stapio's pselect timeout).
pub const CONTROL_POLL: Duration = Duration::from_millis(500);
/// How long the serial merge waits for a missing sequence number.
pub const MERGE_GAP: Duration = Duration::from_secs(2);
/// Distinct warnings remembered for de-duplication.
pub const MAX_STORED_WARNINGS: usize = 1024;

/// Everything the session needs from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub module: ModName,
    pub verbose: u32,
    pub suppress_warnings: bool,
    pub target_cmd: Option<String>,
    pub target_pid: i32,
    pub namespaces_pid: Option<i32>,
    pub load_only: bool,
    pub attach: bool,
    pub read_stdin: bool,
    pub naming: Naming,
    /// `-T`; `None` (not given): as the C tools of the module's
    /// generation ([`reader_timeout_for`]).
    pub reader_timeout: Option<Duration>,
    pub control_poll: Duration,
    pub merge_gap: Duration,
    pub pin_readers: bool,
}

impl Config {
    /// From parsed options; `-o` is made absolute against `cwd`.
    pub fn from_options(o: &Options, module: ModName, cwd: &Path) -> Config {
        Config {
            module,
            verbose: o.verbose,
            suppress_warnings: o.suppress_warnings,
            target_cmd: o.target_cmd.clone(),
            target_pid: o.target_pid.unwrap_or(0),
            namespaces_pid: o.namespaces_pid,
            load_only: o.load_only,
            attach: o.attach,
            read_stdin: o.read_stdin,
            naming: Naming {
                pattern: o
                    .absolute_outfile(cwd)
                    .map(|p| p.to_string_lossy().into_owned()),
                rotation: o.rotation,
            },
            reader_timeout: o
                .reader_timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
            control_poll: CONTROL_POLL,
            merge_gap: MERGE_GAP,
            pin_readers: true,
        }
    }

    /// Defaults for `module` (no options given), as a starting point.
    pub fn new(module: ModName) -> Config {
        Config {
            module,
            verbose: 0,
            suppress_warnings: false,
            target_cmd: None,
            target_pid: 0,
            namespaces_pid: None,
            load_only: false,
            attach: false,
            read_stdin: false,
            naming: Naming {
                pattern: None,
                rotation: None,
            },
            reader_timeout: None,
            control_poll: CONTROL_POLL,
            merge_gap: MERGE_GAP,
            pin_readers: true,
        }
    }
}

/// The readers' poll timeout: `-T` if given, else the C tools' default
/// for the module's generation: none for 4.x (the 4.8 readers wait in
/// `ppoll` without a timeout), 200 ms for 5.x. `None`: the readers wake
/// only for data, a stop, or a SIGUSR2 (bulk-mode rotation).
pub fn reader_timeout_for(given: Option<Duration>, generation: Generation) -> Option<Duration> {
    given.or(match generation {
        Generation::V4 => None,
        Generation::V5 => Some(Duration::from_millis(u64::from(
            stap_common::cli::DEFAULT_READER_TIMEOUT_MS,
        ))),
    })
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The module was unloaded. `failed`: the module reported an ERROR,
    /// its probes failed to start, or the `-c` command failed.
    Finished { failed: bool },
    /// Detached (-L, SIGQUIT): the module stays loaded.
    Detached,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Finished { failed: true } => 1,
            Outcome::Finished { failed: false } | Outcome::Detached => 0,
        }
    }
}

/// Where the session writes: serial output without `-o`, and messages.
pub struct Streams {
    pub stdout: Box<dyn Write + Send>,
    pub diag: Diag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// READY sent; waiting for the module's TRANSPORT.
    AwaitTransport,
    /// START sent; waiting for its reply.
    Starting,
    Running,
    /// EXIT sent; waiting for the module's EXIT.
    Exiting,
}

/// How the main loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Finish,
    /// An error ended the run: the module may still be writing, so the
    /// relays are read for a bounded time only, then it is unloaded.
    Failed,
    Detach,
    /// A third interrupt: tear down without draining.
    Abort,
}

/// A connected stapio session.
pub struct Session<'k> {
    cfg: Config,
    kernel: &'k dyn KernelOps,
    dir: Option<Box<dyn ModuleDir>>,
    control: Option<Box<dyn Control>>,
    generation: Generation,
    state: State,
    target: Option<Target>,
    pump: Option<Pump>,
    stdout: Option<Box<dyn Write + Send>>,
    diag: Diag,
    signals: Arc<Signals>,
    warnings_seen: HashSet<String>,
    warnings_full: bool,
    malformed: u64,
    error_detected: bool,
    target_failed: bool,
    interrupts_seen: u32,
    pump_failure_handled: bool,
    error: Option<Error>,
    /// `-i` and `-N` (5.1+): [`stdin_ns`].
    stdin_ns: stdin_ns::StdinNs,
    /// `-M`: [`monitor_mode`].
    monitor: Option<monitor_mode::Attached>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("module", &self.cfg.module)
            .field("generation", &self.generation)
            .field("state", &self.state)
            .finish()
    }
}

impl<'k> Session<'k> {
    /// Open `.cmd`, learn the module's protocol generation by sending
    /// READY in each numbering until one is accepted, and fork the `-c`
    /// command (held).
    pub fn connect(
        cfg: Config,
        kernel: &'k dyn KernelOps,
        dir: Box<dyn ModuleDir>,
        streams: Streams,
        signals: Arc<Signals>,
    ) -> Result<Session<'k>, Error> {
        dir.real_user_may_use_control()
            .map_err(|source| Error::ControlOpen {
                module: cfg.module.clone(),
                source,
            })?;
        let mut control = dir.open_control().map_err(|source| Error::ControlOpen {
            module: cfg.module.clone(),
            source,
        })?;
        let generation = detect_generation(control.as_mut(), &cfg.module)?;
        if cfg.verbose >= 2 {
            streams.diag.raw(&format!(
                "stapio: module {} speaks the {generation} control protocol\n",
                cfg.module
            ));
        }
        let target = match (&cfg.target_cmd, cfg.attach) {
            (Some(cmd), false) => Some(Target::spawn(cmd, cfg.read_stdin)?),
            _ => None,
        };
        Ok(Session {
            cfg,
            kernel,
            dir: Some(dir),
            control: Some(control),
            generation,
            state: State::AwaitTransport,
            target,
            pump: None,
            stdout: Some(streams.stdout),
            diag: streams.diag,
            signals,
            warnings_seen: HashSet::new(),
            warnings_full: false,
            malformed: 0,
            error_detected: false,
            target_failed: false,
            interrupts_seen: 0,
            pump_failure_handled: false,
            error: None,
            stdin_ns: Default::default(),
            monitor: None,
        })
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The `-c` child's pid (0 without `-c`).
    pub fn target_pid(&self) -> i32 {
        self.target
            .as_ref()
            .map_or(self.cfg.target_pid, |t| t.pid().as_raw())
    }

    /// The main loop, then the end: close, and unload unless detaching.
    /// An `Err` comes back after the unload step has run.
    pub fn run(mut self, unloader: &dyn Unloader) -> Result<Outcome, Error> {
        let ending = self.main_loop();
        self.teardown(ending, unloader)
    }

    fn verbose(&self, level: u32, msg: &str) {
        if self.cfg.verbose >= level {
            self.diag.raw(&format!("stapio: {msg}\n"));
        }
    }

    /// Remember the first error; the run then ends (with unload).
    fn fail(&mut self, e: Error) -> Ending {
        self.error.get_or_insert(e);
        Ending::Failed
    }

    fn send(&mut self, req: Request, what: &'static str) -> Result<(), Error> {
        let bytes = req.encode(self.generation).map_err(|e| Error::Send {
            what,
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let control = self.control.as_mut().ok_or(Error::ControlEof)?;
        control
            .send(&bytes)
            .map_err(|source| Error::Send { what, source })
    }

    /// Ask the module to run its end probes (idempotent in the module).
    fn send_exit(&mut self) {
        if let Err(e) = self.send(Request::Exit, "STP_EXIT") {
            self.verbose(1, &e.to_string());
        }
        self.state = State::Exiting;
    }

    fn main_loop(&mut self) -> Ending {
        if let Err(e) = self.input_setup() {
            return self.fail(e);
        }
        if self.cfg.attach {
            if let Err(e) = self.start_relays() {
                return self.fail(e);
            }
            self.state = State::Running;
        }
        let mut buf = vec![0u8; protocol::READ_BUFFER];
        loop {
            if let Some(end) = self.check_events() {
                return end;
            }
            let Some(control) = self.control.as_mut() else {
                return self.fail(Error::ControlEof);
            };
            match control.recv(&mut buf) {
                Ok(0) => return self.fail(Error::ControlEof),
                Ok(n) => {
                    if let Some(end) = self.dispatch(&buf[..n]) {
                        return end;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let poll = self.cfg.control_poll;
                    match control.wait(poll) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return self.fail(Error::Recv(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The module drops a message too big for our buffer.
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                    self.report_malformed(&format!("a message was lost ({e})"));
                }
                Err(e) => return self.fail(Error::Recv(e)),
            }
        }
    }

    /// Signals, the relay threads' health and the `-c` child.
    fn check_events(&mut self) -> Option<Ending> {
        if let Some(end) = self.monitor_turn() {
            return Some(end);
        }
        if let Some(end) = self.input_turn() {
            return Some(end);
        }
        if let Some(p) = self.pump.as_mut() {
            p.wake_for_rotation();
        }
        if self.signals.detach_requested() {
            return Some(Ending::Detach);
        }
        let n = self.signals.interrupts();
        if n > self.interrupts_seen {
            self.interrupts_seen = n;
            if self.cfg.load_only {
                return Some(Ending::Detach);
            }
            self.verbose(2, &format!("interrupt {n}: sending STP_EXIT"));
            self.send_exit();
            if n > 2 {
                return Some(Ending::Abort);
            }
            // Monitor mode ends at once (the C stapio does not wait there).
            if self.monitoring() {
                return Some(Ending::Finish);
            }
        }
        if !self.pump_failure_handled && self.pump.as_ref().is_some_and(Pump::failed) {
            // The output failed (e.g. disk full): end the script; the error
            // itself is collected when the pump closes.
            self.pump_failure_handled = true;
            self.send_exit();
        }
        let child_signal = self.signals.take_child();
        if let Some(t) = self.target.as_mut()
            && (child_signal || !t.exited())
            && let Some(status) = t.poll_exit()
        {
            match status {
                ChildStatus::Exited(0) => {}
                ChildStatus::Exited(code) => {
                    self.diag
                        .warn(&format!("Child process exited with status {code}"));
                    self.target_failed = true;
                }
                ChildStatus::Signaled(sig) => {
                    self.diag.warn(&format!(
                        "Child process exited with signal {sig} ({})",
                        signals::describe(sig)
                    ));
                    self.target_failed = true;
                }
            }
            self.send_exit();
        }
        None
    }

    fn dispatch(&mut self, msg: &[u8]) -> Option<Ending> {
        let notice = match Notice::decode(self.generation, msg) {
            Ok(n) => n,
            Err(DecodeError::UnknownType(t)) => {
                self.report_malformed(&format!("Ignored message of type {t}"));
                return None;
            }
            Err(e) => {
                self.report_malformed(&format!("Ignored malformed control message: {e}"));
                return None;
            }
        };
        match notice {
            Notice::Transport => return self.on_transport(),
            Notice::Start { res } => return self.on_start(res),
            Notice::OobData(text) => self.on_oob(&text),
            Notice::System(cmd) => self.on_system(&cmd),
            Notice::RequestExit => {
                self.verbose(2, "got STP_REQUEST_EXIT");
                self.send_exit();
            }
            Notice::Exit => {
                self.verbose(2, "got STP_EXIT");
                if self.monitor_exited() {
                    return None;
                }
                return Some(Ending::Finish);
            }
            Notice::RealtimeData(_) => {
                self.report_malformed("Ignored transport v1 data message");
            }
        }
        None
    }

    /// Unknown, malformed or oversized messages: never trusted; reported
    /// once (every time, with detail, under -v).
    fn report_malformed(&mut self, detail: &str) {
        self.malformed += 1;
        if self.cfg.verbose > 0 {
            self.diag.warn(detail);
        } else if self.malformed == 1 {
            self.diag.warn(&format!(
                "{detail} (further bad control messages are ignored silently; use -v to see them)"
            ));
        }
    }

    fn on_transport(&mut self) -> Option<Ending> {
        if self.state != State::AwaitTransport {
            self.verbose(1, "ignoring a repeated STP_TRANSPORT");
            return None;
        }
        if !self.cfg.load_only
            && let Err(e) = self.start_relays()
        {
            return Some(self.fail(e));
        }
        if let Some(pid) = self.cfg.namespaces_pid
            && let Err(e) = self
                .send(Request::NamespacesPid { target: pid }, "STP_NAMESPACES_PID")
                .and_then(|()| self.send_mount_namespaces(pid))
        {
            return Some(self.fail(e));
        }
        let target = self.target_pid();
        if let Err(e) = self.send(Request::Start { target }, "STP_START") {
            return Some(self.fail(e));
        }
        if self.cfg.load_only {
            return Some(Ending::Detach);
        }
        self.state = State::Starting;
        None
    }

    fn on_start(&mut self, res: i32) -> Option<Ending> {
        self.verbose(2, &format!("systemtap_module_init() returned {res}"));
        if res != 0 {
            if let Some(t) = self.target.as_mut() {
                t.kill();
            }
            return Some(self.fail(Error::StartFailed { res }));
        }
        if self.state == State::Starting {
            self.state = State::Running;
        }
        // The begin probes may have printed: read it now.
        if let Some(p) = self.pump.as_mut() {
            p.kick();
        }
        if let Some(pid) = self.target.as_ref().map(Target::pid) {
            self.verbose(1, &format!("releasing pid {pid}"));
        }
        if let Some(t) = self.target.as_mut() {
            if let Err(e) = t.release() {
                return Some(self.fail(e));
            }
        }
        None
    }

    fn on_oob(&mut self, text: &str) {
        if text.starts_with("WARNING: ") {
            if self.cfg.suppress_warnings {
                return;
            }
            if self.cfg.verbose == 0 && !self.warnings_full {
                if self.warnings_seen.contains(text) {
                    return;
                }
                if self.warnings_seen.len() < MAX_STORED_WARNINGS {
                    self.warnings_seen.insert(text.to_string());
                } else {
                    self.warnings_full = true;
                    self.diag.module_text(text);
                    self.diag.raw("WARNING deduplication table full\n");
                    return;
                }
            }
            self.diag.module_text(text);
        } else if text.starts_with("ERROR: ") {
            self.diag.module_text(text);
            self.error_detected = true;
        } else {
            self.diag.raw(text);
        }
    }

    /// The module's `system()`: `sh -c CMD` as the user, not waited for.
    fn on_system(&mut self, cmd: &str) {
        self.verbose(2, &format!("system {cmd}"));
        let spec = ExecSpec::new(
            std::ffi::OsStr::new("/bin/sh"),
            ["sh", "-c", cmd],
            crate::target::child_env(),
        );
        if let Err(e) = spec.and_then(|s| sys::spawn_detached(&s)) {
            self.diag
                .error(&format!("Couldn't run system command '{cmd}': {e}"));
        }
    }

    /// Learn bulk mode, open the relay files and start the pump.
    fn start_relays(&mut self) -> Result<(), Error> {
        let bulk = match self.send(Request::Bulk, "STP_BULK") {
            Ok(()) => true,
            Err(Error::Send { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => false,
            Err(e) => return Err(e),
        };
        let ncpus = self.kernel.possible_cpus().max(1);
        let mut relays: Vec<(usize, Box<dyn Relay>)> = Vec::new();
        let dir = self.dir.as_ref().ok_or(Error::ControlEof)?;
        for cpu in 0..ncpus {
            match dir.open_relay(cpu) {
                Ok(Some(r)) => relays.push((cpu, r)),
                Ok(None) => {}
                Err(source) => return Err(Error::RelayOpen { cpu, source }),
            }
        }
        if relays.is_empty() {
            return Err(Error::NoRelay {
                module: self.cfg.module.clone(),
                last: ncpus - 1,
            });
        }
        self.verbose(
            2,
            &format!(
                "{} relay files, {} mode",
                relays.len(),
                if bulk { "bulk" } else { "serial" }
            ),
        );
        let cfg = PumpConfig {
            generation: self.generation,
            bulk,
            attach: self.cfg.attach,
            reader_timeout: reader_timeout_for(self.cfg.reader_timeout, self.generation),
            merge_gap: self.cfg.merge_gap,
            naming: self.cfg.naming.clone(),
            pin: self.cfg.pin_readers,
        };
        let pump = Pump::start(relays, &cfg, self.stdout.take(), self.signals.clone())?;
        self.pump = Some(pump);
        Ok(())
    }

    fn teardown(mut self, ending: Ending, unloader: &dyn Unloader) -> Result<Outcome, Error> {
        self.monitor_end();
        self.input_end();
        if let Some(pump) = self.pump.take() {
            let how = match ending {
                Ending::Abort => Close::Kill,
                Ending::Detach | Ending::Failed => Close::Detach,
                _ => Close::Drain,
            };
            let (stats, err) = pump.close(how);
            if let Some(w) = stats.loss_warning() {
                self.diag.warn(&w);
            }
            if let Some(e) = err {
                self.error.get_or_insert(e);
            }
            self.verbose(
                2,
                &format!(
                    "{} records, {} bytes; CPU: readers {:.3} s, merger {:.3} s",
                    stats.records,
                    stats.bytes,
                    stats.reader_cpu.as_secs_f64(),
                    stats.merger_cpu.as_secs_f64()
                ),
            );
        }
        // Close .cmd and the directory: the module may now be unloaded (or
        // attached again).
        self.control = None;
        self.dir = None;
        if ending == Ending::Detach {
            self.diag.raw(&format!(
                "\nDisconnecting from systemtap module.\nTo reconnect, type \"staprun -A {}\"\n",
                self.cfg.module
            ));
            return Ok(Outcome::Detached);
        }
        // Reap the -c command if it has ended; one never released is
        // killed when the session is dropped (it never runs), one still
        // running is left alone, as the C stapio does.
        if let Some(t) = self.target.as_mut()
            && !t.exited()
        {
            t.poll_exit();
        }
        let orig_mount_ns = self.mount_ns_for_unload();
        if let Err(e) = unloader.unload_in_mount_ns(&self.cfg.module, orig_mount_ns) {
            self.error.get_or_insert(e);
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(Outcome::Finished {
                failed: self.error_detected || self.target_failed,
            }),
        }
    }
}

/// Send READY in each generation's numbering until the module accepts
/// one (it answers EINVAL to a type it does not know).
fn detect_generation(control: &mut dyn Control, module: &ModName) -> Result<Generation, Error> {
    for g in Generation::probe_order() {
        let ready = Request::Ready.encode(g).map_err(|e| Error::Send {
            what: "STP_READY",
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        match control.send(&ready) {
            Ok(()) => return Ok(g),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(source) => {
                return Err(Error::Send {
                    what: "STP_READY",
                    source,
                });
            }
        }
    }
    Err(Error::UnknownGeneration {
        module: module.clone(),
    })
}

mod monitor_mode;
mod stdin_ns;
#[cfg(test)]
mod tests;
