//! Monitor mode (`-M INTERVAL`, `stap --monitor=INTERVAL`): a live screen in
//! place of the plain output, as the C stapio's `monitor.c` draws it.
//!
//! A module built with `stap --monitor` has two more files in its
//! directory: `monitor_status` (its uptime, uid, memory, name, global
//! variables and, per probe, index, state, hits and min/avg/max time),
//! formatted when opened, and `monitor_control`, to which stapio writes
//! `clear` (reset the globals), `pause`/`resume` (every probe off/on),
//! `quit` (the script calls `exit()`) or a probe index (that probe off/on).
//!
//! The session's main loop calls [`Monitor::step`] on every turn (at least
//! every [`POLL`]): the keys typed are applied ([`view`]), the status file
//! is read again every INTERVAL seconds and after every key, and the
//! screen is drawn ([`render`]). The script's output and the module's
//! messages go to the output window ([`history`]) instead of stdout and
//! stderr. When the module ends (its EXIT), the screen says so and `q`
//! leaves; the session then unloads the module as on any normal end.
#![forbid(unsafe_code)]

pub mod history;
pub mod render;
pub mod status;
pub mod term;
pub mod view;

use std::time::{Duration, Instant};

use stap_common::kernel::ModuleDir;

pub use history::History;
pub use status::Status;
pub use term::{Screen, ScriptedScreen, TermScreen};
pub use view::{Action, Extent, Key, View};

/// How often, at most, the session's loop waits before the next step.
pub const POLL: Duration = Duration::from_millis(100);

/// What the session does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// `q` after the module ended: finish and unload.
    Leave,
    /// ^C: as SIGINT.
    Interrupt,
    /// ^\: as SIGQUIT (detach).
    Detach,
}

/// The monitor: its screen, what it shows, and the last status read.
pub struct Monitor {
    interval: Duration,
    screen: Box<dyn Screen>,
    history: History,
    view: View,
    status: Option<Status>,
    last_read: Option<Instant>,
    extent: Extent,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("interval", &self.interval)
            .field("view", &self.view)
            .finish()
    }
}

impl Monitor {
    /// A monitor that reads the status every `interval` seconds, draws on
    /// `screen` and shows `history` (which the relay output is written to).
    pub fn new(interval_secs: u32, history: History, screen: Box<dyn Screen>) -> Monitor {
        Monitor {
            interval: Duration::from_secs(u64::from(interval_secs.max(1))),
            screen,
            history,
            view: View::default(),
            status: None,
            last_read: None,
            extent: Extent::default(),
        }
    }

    /// Module text (its messages) for the output window.
    pub fn remember(&self, text: &str) {
        self.history.push(text);
        if !text.ends_with('\n') {
            self.history.push("\n");
        }
    }

    /// The module sent its final EXIT: say so; `q` now leaves.
    pub fn exited(&mut self) {
        self.view.exited();
        self.last_read = None;
    }

    /// Keys, the status file when due, the screen.
    pub fn step(&mut self, dir: &dyn ModuleDir) -> Step {
        let keys = match self.screen.keys() {
            Ok(k) => k,
            // The terminal is gone: as a hang-up.
            Err(_) => return Step::Interrupt,
        };
        let mut typed = false;
        for key in keys {
            typed = true;
            match self.view.key(key, self.extent) {
                None => {}
                Some(Action::Control(cmd)) => {
                    if let Err(e) = dir.write_monitor_control(&cmd) {
                        self.history.push_line(&format!(
                            "stapio: cannot write {cmd:?} to monitor_control: {e}"
                        ));
                    }
                }
                Some(Action::Leave) => return Step::Leave,
                Some(Action::Interrupt) => return Step::Interrupt,
                Some(Action::Detach) => return Step::Detach,
            }
        }
        let due = self.last_read.is_none_or(|t| t.elapsed() >= self.interval);
        if !self.view.status_hidden && (typed || due) {
            self.read_status(dir);
        }
        self.view.clamp(self.extent);
        let model = render::Model {
            status: self.status.as_ref(),
            view: &self.view,
            history: &self.history,
        };
        if let Ok(e) = self.screen.draw(&model) {
            self.extent = e;
        }
        Step::Continue
    }

    /// Read `monitor_status` again. Nothing read (the file is busy, or
    /// gone at the end) keeps what is shown; what does not parse is
    /// "(data not available)", as in monitor.c.
    fn read_status(&mut self, dir: &dyn ModuleDir) {
        self.last_read = Some(Instant::now());
        if let Ok(bytes) = dir.read_monitor_status(status::MAX_STATUS)
            && !bytes.is_empty()
        {
            self.status = status::parse(&bytes).ok();
        }
    }

    /// Give the terminal back.
    pub fn close(mut self) {
        self.screen.restore();
    }
}
