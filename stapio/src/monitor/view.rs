//! What the monitor shows and how the keys change it: monitor.c's key
//! bindings (`h` in the monitor lists them), as a pure state machine.
#![forbid(unsafe_code)]

use std::cmp::Ordering;

use super::status::{Probe, Value};

/// The longest probe index `t` takes (monitor.c's `MAX_INDEX_LEN`).
pub const MAX_INDEX_LEN: usize = 5;

/// The probe table's sort column; `s` moves to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Index,
    State,
    Hits,
    Min,
    Avg,
    Max,
    Name,
}

impl SortKey {
    pub const ALL: [SortKey; 7] = [
        SortKey::Index,
        SortKey::State,
        SortKey::Hits,
        SortKey::Min,
        SortKey::Avg,
        SortKey::Max,
        SortKey::Name,
    ];

    /// The column's position in a row.
    pub fn column(self) -> usize {
        SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    fn next(self) -> SortKey {
        SortKey::ALL[(self.column() + 1) % SortKey::ALL.len()]
    }

    /// Index, state and name ascending; hits and times largest first.
    pub fn compare(self, a: &Probe, b: &Probe) -> Ordering {
        let num = |v: &Value| v.number();
        match self {
            SortKey::Index => num(&a.index).cmp(&num(&b.index)),
            SortKey::State => a.state.text().cmp(&b.state.text()),
            SortKey::Hits => num(&b.hits).cmp(&num(&a.hits)),
            SortKey::Min => num(&b.min).cmp(&num(&a.min)),
            SortKey::Avg => num(&b.avg).cmp(&num(&a.avg)),
            SortKey::Max => num(&b.max).cmp(&num(&a.max)),
            SortKey::Name => a.name.text().cmp(&b.name.text()),
        }
    }
}

/// The probes in the order of `key` (a stable sort).
pub fn sorted(probes: &[Probe], key: SortKey) -> Vec<&Probe> {
    let mut v: Vec<&Probe> = probes.iter().collect();
    v.sort_by(|a, b| key.compare(a, b));
    v
}

/// Which window the scrolling keys move (Tab switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pane {
    Status,
    #[default]
    Output,
}

/// What the bottom line of the status window says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Normal,
    /// `t`: typing the index of a probe to switch on or off.
    Insert(String),
    /// The module has ended (its end probes ran); `q` leaves.
    Exited,
}

/// A key, as the terminal layer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Tab,
    Enter,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// ^C (the terminal is in raw mode: no SIGINT).
    Interrupt,
    /// ^\ (no SIGQUIT either).
    Quit,
}

/// What a key asks of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this to the module's `monitor_control`.
    Control(String),
    /// Leave: unload the module (after `q` on the EXITED screen).
    Leave,
    /// As SIGINT.
    Interrupt,
    /// As SIGQUIT: detach, the module stays loaded.
    Detach,
}

/// The sizes the last drawing had, for scrolling by pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extent {
    pub probes: usize,
    /// Probe rows the status window shows.
    pub probe_rows: usize,
    pub lines: usize,
    /// Rows of the output window.
    pub output_rows: usize,
}

/// The monitor's state apart from the data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    pub sort: SortKey,
    pub pane: Pane,
    pub mode: Mode,
    pub help: bool,
    pub status_hidden: bool,
    /// First probe row shown.
    pub probe_scroll: usize,
    /// Output lines hidden below the window (0: the newest is shown).
    pub output_scroll: usize,
}

impl View {
    /// The module sent its final EXIT.
    pub fn exited(&mut self) {
        self.mode = Mode::Exited;
    }

    /// Apply one key.
    pub fn key(&mut self, key: Key, e: Extent) -> Option<Action> {
        match key {
            Key::Interrupt => return Some(Action::Interrupt),
            Key::Quit => return Some(Action::Detach),
            _ => {}
        }
        if let Mode::Insert(typed) = &mut self.mode {
            return match key {
                Key::Enter => self.send_index(),
                _ if typed.len() >= MAX_INDEX_LEN => self.send_index(),
                Key::Backspace => {
                    typed.pop();
                    None
                }
                Key::Char(c) => {
                    typed.push(c);
                    None
                }
                _ => None,
            };
        }
        let status = self.pane == Pane::Status;
        let output_page = e.output_rows.saturating_sub(1).max(1);
        let probe_page = e.probe_rows.max(1);
        match key {
            Key::Tab => {
                self.pane = if status { Pane::Output } else { Pane::Status };
            }
            Key::Char('j') | Key::Down => self.scroll(status, 1, -1),
            Key::Char('k') | Key::Up => self.scroll(status, -1, 1),
            Key::PageDown => self.scroll(status, probe_page as isize, -(output_page as isize)),
            Key::PageUp => self.scroll(status, -(probe_page as isize), output_page as isize),
            Key::Home if status => self.probe_scroll = 0,
            Key::Home => self.output_scroll = e.lines.saturating_sub(e.output_rows),
            Key::End if status => self.probe_scroll = e.probes.saturating_sub(1),
            Key::End => self.output_scroll = 0,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('c') => return Some(Action::Control("clear".into())),
            Key::Char('r') => return Some(Action::Control("resume".into())),
            Key::Char('p') => return Some(Action::Control("pause".into())),
            Key::Char('q') if self.mode == Mode::Exited => return Some(Action::Leave),
            Key::Char('q') => return Some(Action::Control("quit".into())),
            Key::Char('t') if self.mode == Mode::Normal => self.mode = Mode::Insert(String::new()),
            Key::Char('h') => self.help = !self.help,
            Key::Char('x') => self.status_hidden = !self.status_hidden,
            _ => {}
        }
        None
    }

    fn scroll(&mut self, status: bool, probes: isize, output: isize) {
        if status {
            self.probe_scroll = self.probe_scroll.saturating_add_signed(probes);
        } else {
            self.output_scroll = self.output_scroll.saturating_add_signed(output);
        }
    }

    fn send_index(&mut self) -> Option<Action> {
        let typed = match std::mem::take(&mut self.mode) {
            Mode::Insert(t) => t,
            other => {
                self.mode = other;
                return None;
            }
        };
        Some(Action::Control(typed))
    }

    /// Keep the scroll positions within what there is to show.
    pub fn clamp(&mut self, e: Extent) {
        self.probe_scroll = self.probe_scroll.min(e.probes.saturating_sub(1));
        self.output_scroll = self
            .output_scroll
            .min(e.lines.saturating_sub(e.output_rows));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent() -> Extent {
        Extent {
            probes: 10,
            probe_rows: 4,
            lines: 100,
            output_rows: 11,
        }
    }

    #[test]
    fn keys_that_talk_to_the_module() {
        let mut v = View::default();
        let e = extent();
        assert_eq!(
            v.key(Key::Char('p'), e),
            Some(Action::Control("pause".into()))
        );
        assert_eq!(
            v.key(Key::Char('r'), e),
            Some(Action::Control("resume".into()))
        );
        assert_eq!(
            v.key(Key::Char('c'), e),
            Some(Action::Control("clear".into()))
        );
        assert_eq!(
            v.key(Key::Char('q'), e),
            Some(Action::Control("quit".into()))
        );
        assert_eq!(v.key(Key::Interrupt, e), Some(Action::Interrupt));
        assert_eq!(v.key(Key::Quit, e), Some(Action::Detach));
        // After the module's EXIT, q leaves.
        v.exited();
        assert_eq!(v.key(Key::Char('q'), e), Some(Action::Leave));
    }

    #[test]
    fn s_rotates_the_sort_column() {
        let mut v = View::default();
        let mut seen = vec![v.sort];
        for _ in 0..7 {
            assert_eq!(v.key(Key::Char('s'), extent()), None);
            seen.push(v.sort);
        }
        assert_eq!(&seen[..7], SortKey::ALL);
        assert_eq!(seen[7], SortKey::Index);
    }

    #[test]
    fn t_takes_a_probe_index() {
        let mut v = View::default();
        let e = extent();
        v.key(Key::Char('t'), e);
        assert_eq!(v.mode, Mode::Insert(String::new()));
        v.key(Key::Char('1'), e);
        v.key(Key::Char('9'), e);
        v.key(Key::Backspace, e);
        v.key(Key::Char('2'), e);
        // q is typed, not obeyed, while the prompt is open.
        assert_eq!(v.key(Key::Enter, e), Some(Action::Control("12".into())));
        assert_eq!(v.mode, Mode::Normal);
        // At MAX_INDEX_LEN characters the next key sends them.
        v.key(Key::Char('t'), e);
        for c in "12345".chars() {
            assert_eq!(v.key(Key::Char(c), e), None);
        }
        assert_eq!(
            v.key(Key::Char('9'), e),
            Some(Action::Control("12345".into()))
        );
    }

    #[test]
    fn scrolling_moves_the_active_window() {
        let mut v = View::default();
        let e = extent();
        // The output window first: up shows older lines.
        v.key(Key::Up, e);
        v.key(Key::Char('k'), e);
        assert_eq!(v.output_scroll, 2);
        v.key(Key::PageDown, e);
        assert_eq!(v.output_scroll, 0);
        v.key(Key::Home, e);
        assert_eq!(v.output_scroll, 89);
        v.key(Key::End, e);
        assert_eq!(v.output_scroll, 0);
        v.key(Key::Tab, e);
        assert_eq!(v.pane, Pane::Status);
        v.key(Key::Char('j'), e);
        v.key(Key::PageDown, e);
        assert_eq!(v.probe_scroll, 5);
        v.key(Key::End, e);
        assert_eq!(v.probe_scroll, 9);
        v.key(Key::Home, e);
        v.key(Key::Up, e);
        assert_eq!(v.probe_scroll, 0);
        v.probe_scroll = 50;
        v.output_scroll = 500;
        v.clamp(e);
        assert_eq!((v.probe_scroll, v.output_scroll), (9, 89));
        v.key(Key::Char('h'), e);
        v.key(Key::Char('x'), e);
        assert!(v.help && v.status_hidden);
    }

    #[test]
    fn sort_orders() {
        use super::super::status::parse;
        let s = parse(super::super::status::tests::SAMPLE.as_bytes()).unwrap();
        let names =
            |k| -> Vec<String> { sorted(&s.probes, k).iter().map(|p| p.name.text()).collect() };
        assert_eq!(names(SortKey::Hits)[0], "timer.ms(100)");
        assert_eq!(names(SortKey::Index)[0], "begin");
        assert_eq!(names(SortKey::Name)[0], "begin");
        assert_eq!(names(SortKey::State)[0], "kernel.function(\"vfs_read\")");
        assert_eq!(names(SortKey::Max)[2], "kernel.function(\"vfs_read\")");
    }
}
