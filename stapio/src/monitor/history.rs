//! The output window's lines: the script's output and the module's messages,
//! the last [`MAX_HISTORY`] lines (monitor.c keeps as many).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

/// Lines kept for the output window.
pub const MAX_HISTORY: usize = 8192;

#[derive(Debug, Default)]
struct Lines {
    lines: VecDeque<String>,
    /// The last line has no newline yet: more text continues it.
    open: bool,
}

/// Shared by the relay writer, the control loop and the screen.
#[derive(Debug, Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Lines>>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append text; a line ends at `\n`, text after the last one waits for
    /// the rest of its line.
    pub fn push(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut h = self.lock();
        let mut parts = text.split('\n').peekable();
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            if last && part.is_empty() {
                // The text ended with a newline.
                h.open = false;
                break;
            }
            if h.open {
                if let Some(l) = h.lines.back_mut() {
                    l.push_str(part);
                }
            } else {
                h.lines.push_back(part.to_string());
                if h.lines.len() > MAX_HISTORY {
                    h.lines.pop_front();
                }
            }
            h.open = last;
        }
    }

    /// Append one whole line (a message).
    pub fn push_line(&self, line: &str) {
        let mut h = self.lock();
        h.open = false;
        drop(h);
        self.push(line);
        self.push("\n");
    }

    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `n` lines ending `skip` lines before the newest, oldest first.
    pub fn tail(&self, n: usize, skip: usize) -> Vec<String> {
        let h = self.lock();
        let end = h.lines.len().saturating_sub(skip);
        let start = end.saturating_sub(n);
        h.lines.range(start..end).cloned().collect()
    }

    /// A writer for the relay output (serial mode's stdout).
    pub fn writer(&self) -> HistoryWriter {
        HistoryWriter {
            history: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// Relay output into the history. Bytes of a UTF-8 character split
/// between two writes wait for the rest.
#[derive(Debug)]
pub struct HistoryWriter {
    history: History,
    pending: Vec<u8>,
}

impl Write for HistoryWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Not UTF-8: shown with replacement characters.
            Err(_) => self.pending.len(),
        };
        let text: Vec<u8> = self.pending.drain(..valid).collect();
        self.history.push(&String::from_utf8_lossy(&text));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_join_across_writes_and_the_oldest_go() {
        let h = History::new();
        let mut w = h.writer();
        w.write_all(b"one\ntw").unwrap();
        w.write_all(b"o\nthree").unwrap();
        assert_eq!(h.tail(10, 0), ["one", "two", "three"]);
        h.push_line("WARNING: x");
        assert_eq!(h.tail(2, 0), ["three", "WARNING: x"]);
        assert_eq!(h.tail(2, 1), ["two", "three"]);
        for i in 0..MAX_HISTORY {
            h.push(&format!("{i}\n"));
        }
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h.tail(1, 0), [(MAX_HISTORY - 1).to_string()]);
    }

    #[test]
    fn a_split_utf8_character_waits_for_its_rest() {
        let h = History::new();
        let mut w = h.writer();
        let s = "é\n".as_bytes();
        w.write_all(&s[..1]).unwrap();
        w.write_all(&s[1..]).unwrap();
        assert_eq!(h.tail(1, 0), ["é"]);
    }
}
