//! The screens the monitor draws on: the real terminal (crossterm, raw
//! mode, the alternate screen), and a scripted one on ratatui's
//! `TestBackend` for tests.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratatui::backend::{Backend, TestBackend};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::{DefaultTerminal, Terminal};

use super::render::{Model, draw};
use super::view::{Extent, Key};

/// Where the monitor draws and reads keys.
pub trait Screen: Send {
    /// The keys typed since the last call, without waiting.
    fn keys(&mut self) -> io::Result<Vec<Key>>;
    /// Draw `model`; returns the sizes scrolling needs.
    fn draw(&mut self, model: &Model<'_>) -> io::Result<Extent>;
    /// Give the terminal back (idempotent).
    fn restore(&mut self);
}

/// A test terminal's rows as text.
pub(crate) fn screen_rows(terminal: &Terminal<TestBackend>) -> Vec<String> {
    let buf = terminal.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn draw_on<B: Backend>(t: &mut Terminal<B>, model: &Model<'_>) -> io::Result<Extent> {
    let mut extent = Extent::default();
    t.draw(|f| extent = draw(f, model))?;
    Ok(extent)
}

/// The terminal on stdout: raw mode, alternate screen, hidden cursor;
/// ratatui's panic hook puts it back if stapio panics.
pub struct TermScreen {
    terminal: Option<DefaultTerminal>,
}

impl TermScreen {
    pub fn open() -> io::Result<TermScreen> {
        let terminal = ratatui::try_init()?;
        Ok(TermScreen {
            terminal: Some(terminal),
        })
    }
}

/// A crossterm key as a monitor key (curses' names for them).
fn key_of(code: KeyCode, mods: KeyModifiers) -> Option<Key> {
    let ctrl = mods.contains(KeyModifiers::CONTROL);
    Some(match code {
        KeyCode::Char('c') if ctrl => Key::Interrupt,
        KeyCode::Char('\\') | KeyCode::Char('4') if ctrl => Key::Quit,
        KeyCode::Char(c) if !ctrl => Key::Char(c),
        KeyCode::Tab => Key::Tab,
        KeyCode::Enter => Key::Enter,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

impl Screen for TermScreen {
    fn keys(&mut self) -> io::Result<Vec<Key>> {
        let mut keys = Vec::new();
        while event::poll(Duration::ZERO)? {
            if let Event::Key(k) = event::read()?
                && k.kind != KeyEventKind::Release
                && let Some(key) = key_of(k.code, k.modifiers)
            {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn draw(&mut self, model: &Model<'_>) -> io::Result<Extent> {
        match self.terminal.as_mut() {
            Some(t) => draw_on(t, model),
            None => Ok(Extent::default()),
        }
    }

    fn restore(&mut self) {
        if self.terminal.take().is_some() {
            let _ = ratatui::try_restore();
        }
    }
}

impl Drop for TermScreen {
    fn drop(&mut self) {
        self.restore();
    }
}

/// A screen for tests: keys given in advance, one batch per step; the
/// drawn buffer is readable through [`ScriptedScreen::rows`] from a clone.
#[derive(Clone)]
pub struct ScriptedScreen {
    inner: Arc<Mutex<Scripted>>,
}

struct Scripted {
    terminal: Terminal<TestBackend>,
    batches: VecDeque<Vec<Key>>,
    draws: usize,
    restored: bool,
}

impl ScriptedScreen {
    /// A `width` x `height` screen that types `batches`, one per step.
    pub fn new(width: u16, height: u16, batches: Vec<Vec<Key>>) -> io::Result<ScriptedScreen> {
        Ok(ScriptedScreen {
            inner: Arc::new(Mutex::new(Scripted {
                terminal: Terminal::new(TestBackend::new(width, height))?,
                batches: batches.into(),
                draws: 0,
                restored: false,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scripted> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The screen's rows as text.
    pub fn rows(&self) -> Vec<String> {
        screen_rows(&self.lock().terminal)
    }

    /// How many times it was drawn.
    pub fn draws(&self) -> usize {
        self.lock().draws
    }

    /// Whether the monitor gave it back.
    pub fn restored(&self) -> bool {
        self.lock().restored
    }

    /// More keys, for the steps after those already given.
    pub fn type_keys(&self, keys: Vec<Key>) {
        self.lock().batches.push_back(keys);
    }
}

impl Screen for ScriptedScreen {
    fn keys(&mut self) -> io::Result<Vec<Key>> {
        Ok(self.lock().batches.pop_front().unwrap_or_default())
    }

    fn draw(&mut self, model: &Model<'_>) -> io::Result<Extent> {
        let mut s = self.lock();
        s.draws += 1;
        draw_on(&mut s.terminal, model)
    }

    fn restore(&mut self) {
        self.lock().restored = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossterm_keys_map_to_curses_keys() {
        let none = KeyModifiers::NONE;
        assert_eq!(key_of(KeyCode::Char('q'), none), Some(Key::Char('q')));
        assert_eq!(
            key_of(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::Interrupt)
        );
        assert_eq!(
            key_of(KeyCode::Char('\\'), KeyModifiers::CONTROL),
            Some(Key::Quit)
        );
        assert_eq!(key_of(KeyCode::PageDown, none), Some(Key::PageDown));
        assert_eq!(key_of(KeyCode::F(1), none), None);
    }
}
