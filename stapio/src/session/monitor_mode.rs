//! The session's side of monitor mode (`-M`, [`crate::monitor`]): the
//! monitor steps on every turn of the main loop, the module's messages go
//! to its output window, the module's EXIT waits for `q`, and an interrupt
//! ends the run at once (as in the C stapio's main loop).
#![forbid(unsafe_code)]

use crate::diag::Diag;
use crate::monitor::{self, History, Monitor, Step};

use super::{Ending, Session};

/// A monitor attached to a session, and the session's own `Diag`, given
/// back when the screen is.
pub(super) struct Attached {
    monitor: Monitor,
    diag: Diag,
}

impl Session<'_> {
    /// Run with `monitor` on screen: the module's messages (and stapio's
    /// own, until the end) go to `history`, its output window; the loop
    /// turns at least every [`monitor::POLL`] to take keys.
    pub fn with_monitor(mut self, monitor: Monitor, history: &History) -> Self {
        let h = history.clone();
        let screen_diag = Diag::with_log(Box::new(move |_, line| h.push_line(line)));
        let diag = std::mem::replace(&mut self.diag, screen_diag);
        self.cfg.control_poll = self.cfg.control_poll.min(monitor::POLL);
        self.monitor = Some(Attached { monitor, diag });
        self
    }

    /// Every turn of the main loop: keys, status, screen.
    pub(super) fn monitor_turn(&mut self) -> Option<Ending> {
        let (Some(a), Some(dir)) = (self.monitor.as_mut(), self.dir.as_deref()) else {
            return None;
        };
        match a.monitor.step(dir) {
            Step::Continue => None,
            Step::Leave => Some(Ending::Finish),
            Step::Interrupt => {
                self.signals.interrupt();
                None
            }
            Step::Detach => {
                self.signals.detach();
                None
            }
        }
    }

    /// The module sent EXIT: with a monitor, the screen says so and the
    /// run goes on until `q` (true); without one, the run ends (false).
    pub(super) fn monitor_exited(&mut self) -> bool {
        match self.monitor.as_mut() {
            Some(a) => {
                a.monitor.exited();
                true
            }
            None => false,
        }
    }

    /// Whether a monitor is on screen.
    pub(super) fn monitoring(&self) -> bool {
        self.monitor.is_some()
    }

    /// The end: the terminal back to normal, messages to stderr again.
    pub(super) fn monitor_end(&mut self) {
        if let Some(a) = self.monitor.take() {
            a.monitor.close();
            self.diag = a.diag;
        }
    }
}
