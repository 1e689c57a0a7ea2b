//! The terminal on standard input, for stapio's `-i`: as the C stapio does
//! (`monitor.c` `read_stdin_setup`), a terminal is switched to non-canonical
//! mode without echo, so that each key reaches the module's `probe
//! input.char` as it is typed; ours puts the saved settings back at the end
//! (C sets `ICANON|ECHO` again, whatever they were before). All through
//! rustix's termios calls.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::termios::{LocalModes, OptionalActions, Termios};

/// A terminal whose settings were changed; dropping it restores them.
#[derive(Debug)]
pub struct KeyInput {
    tty: OwnedFd,
    saved: Termios,
}

/// If `fd` is a terminal, switch it to non-canonical mode without echo
/// (`ISIG` stays: ^C still interrupts) and return the guard that restores
/// it; `Ok(None)` when `fd` is not a terminal.
pub fn keys_as_typed(fd: BorrowedFd<'_>) -> io::Result<Option<KeyInput>> {
    if !rustix::termios::isatty(fd) {
        return Ok(None);
    }
    let saved = rustix::termios::tcgetattr(fd)?;
    let mut raw = saved.clone();
    raw.local_modes
        .remove(LocalModes::ICANON | LocalModes::ECHO);
    rustix::termios::tcsetattr(fd, OptionalActions::Now, &raw)?;
    Ok(Some(KeyInput {
        tty: fd.try_clone_to_owned()?,
        saved,
    }))
}

impl KeyInput {
    /// Put the saved settings back now.
    pub fn restore(self) -> io::Result<()> {
        let r = self.apply();
        std::mem::forget(self);
        r
    }

    fn apply(&self) -> io::Result<()> {
        Ok(rustix::termios::tcsetattr(
            self.tty.as_fd(),
            OptionalActions::Now,
            &self.saved,
        )?)
    }
}

impl Drop for KeyInput {
    fn drop(&mut self) {
        let _ = self.apply();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_is_not_a_terminal_and_is_left_alone() {
        let (r, _w) = crate::sys::pipe_nonblocking().unwrap();
        assert!(keys_as_typed(r.as_fd()).unwrap().is_none());
    }
}
