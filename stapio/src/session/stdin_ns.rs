//! The session's side of `-i` (standard input to the module's `__stdin`,
//! [`crate::stdin`]) and of `-N` with a 5.1+ module (`STP_MNT_NS_FDS`,
//! [`crate::ns`]): when each step happens in the lifecycle.

use std::os::fd::{AsFd, OwnedFd};

use stap_common::protocol::MsgKind;
use stap_common::sys;

use super::{Ending, Session, State};
use crate::error::Error;
use crate::ns::MountNamespaces;
use crate::stdin::{End, Forwarder};

/// What a session holds for `-i` and `-N`.
#[derive(Debug, Default)]
pub(super) struct StdinNs {
    /// Standard input (a descriptor of it), until forwarding starts.
    source: Option<OwnedFd>,
    /// The terminal on stdin, switched to keys as typed.
    keys: Option<sys::KeyInput>,
    forwarder: Option<Forwarder>,
    /// Forwarding has ended (end of file, or it could not start).
    settled: bool,
    /// `-N` with a 5.1+ module: the namespaces named in `STP_MNT_NS_FDS`.
    mount_ns: Option<MountNamespaces>,
}

impl Session<'_> {
    /// Forward `source` instead of standard input with `-i` (tests).
    pub fn set_input(&mut self, source: OwnedFd) {
        self.stdin_ns.source = Some(source);
    }

    /// The start of the main loop (C: `read_stdin_setup`): take standard
    /// input, and switch a terminal to keys as typed.
    pub(super) fn input_setup(&mut self) -> Result<(), Error> {
        if !self.cfg.read_stdin {
            return Ok(());
        }
        let source = match self.stdin_ns.source.take() {
            Some(fd) => fd,
            None => std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::Setup)?,
        };
        self.stdin_ns.keys = sys::keys_as_typed(source.as_fd()).map_err(Error::Terminal)?;
        self.stdin_ns.source = Some(source);
        Ok(())
    }

    /// Every turn of the main loop once the probes run: open `__stdin` as
    /// soon as the module has it and start forwarding; notice the end of
    /// standard input (C restores the terminal then).
    pub(super) fn input_turn(&mut self) -> Option<Ending> {
        if !self.cfg.read_stdin || self.stdin_ns.settled || self.state != State::Running {
            return None;
        }
        if let Some(f) = &self.stdin_ns.forwarder {
            let done = f.finished()?;
            self.stdin_ns.forwarder = None;
            self.stdin_ns.settled = true;
            self.verbose(2, &format!("standard input: {done:?}"));
            self.restore_terminal();
            return None;
        }
        let dir = self.dir.as_ref()?;
        match dir.open_input(&self.cfg.module) {
            Ok(sink) => {
                let Some(source) = self.stdin_ns.source.take() else {
                    self.stdin_ns.settled = true;
                    return None;
                };
                self.verbose(2, "forwarding standard input to __stdin");
                match Forwarder::start(source, sink) {
                    Ok(f) => self.stdin_ns.forwarder = Some(f),
                    Err(e) => {
                        self.stdin_ns.settled = true;
                        return Some(self.fail(Error::Thread(e)));
                    }
                }
            }
            // Not there (yet): no input probes, or not started.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                self.stdin_ns.settled = true;
                return Some(self.fail(Error::InputOpen { source }));
            }
        }
        None
    }

    /// The end of the session: stop forwarding (never waiting on stdin),
    /// restore the terminal.
    pub(super) fn input_end(&mut self) {
        if let Some(f) = self.stdin_ns.forwarder.take() {
            let done = f.stop();
            if done.end == End::StillRunning {
                self.verbose(1, "the standard input thread is still writing; left to end");
            } else {
                self.verbose(2, &format!("standard input: {done:?}"));
            }
        }
        self.stdin_ns.source = None;
        self.restore_terminal();
    }

    fn restore_terminal(&mut self) {
        if let Some(keys) = self.stdin_ns.keys.take()
            && let Err(e) = keys.restore()
        {
            self.diag
                .warn(&format!("Failed to restore the terminal: {e}"));
        }
    }

    /// After `STP_NAMESPACES_PID`, before `STP_START`: with a 5.1+ module,
    /// open the two mount namespaces and send `STP_MNT_NS_FDS`. A 4.x
    /// module never gets it; a 5.0 module refuses it (EINVAL) and runs
    /// without it.
    pub(super) fn send_mount_namespaces(&mut self, pid: i32) -> Result<(), Error> {
        if !self.generation.defines(MsgKind::MntNsFds) {
            return Ok(());
        }
        let ns = MountNamespaces::open(pid)?;
        match self.send(ns.request(), "STP_MNT_NS_FDS") {
            Ok(()) => {
                self.stdin_ns.mount_ns = Some(ns);
                Ok(())
            }
            Err(Error::Send { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                self.verbose(
                    1,
                    "the module does not know STP_MNT_NS_FDS (SystemTap 5.0): \
                     no mount namespace switching",
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The end of a `-N` session: close the target's namespace; the
    /// original one if the unloading child must return to it.
    pub(super) fn mount_ns_for_unload(&mut self) -> Option<OwnedFd> {
        self.stdin_ns.mount_ns.take().and_then(MountNamespaces::end)
    }
}
