//! Messages for the user's terminal (stderr): module out-of-band text,
//! warnings and errors, with the `ERROR:`/`WARNING:` tags optionally
//! coloured as SystemTap's default `SYSTEMTAP_COLORS` does.
#![forbid(unsafe_code)]

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use stap_common::cli::ColorMode;

const ERROR_COLOR: &str = "01;31";
const WARNING_COLOR: &str = "00;35";

/// A cloneable, thread-safe stderr (or a test buffer).
#[derive(Clone)]
pub struct Diag {
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
    color: bool,
}

impl std::fmt::Debug for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diag").field("color", &self.color).finish()
    }
}

impl Diag {
    pub fn new(sink: Box<dyn Write + Send>, color: bool) -> Self {
        Diag {
            sink: Arc::new(Mutex::new(sink)),
            color,
        }
    }

    /// The process's stderr; `auto` colours when it is a terminal and
    /// `TERM` is not `dumb`.
    pub fn stderr(mode: ColorMode) -> Self {
        let color = match mode {
            ColorMode::Never => false,
            ColorMode::Always => true,
            ColorMode::Auto => {
                io::stderr().is_terminal()
                    && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
            }
        };
        Diag::new(Box::new(io::stderr()), color)
    }

    /// Write `text` as it is, in one write.
    pub fn raw(&self, text: &str) {
        let mut s = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        // Nothing sensible to do if stderr itself fails.
        let _ = s.write_all(text.as_bytes()).and_then(|()| s.flush());
    }

    fn tagged(&self, tag: &str, color: &str, rest: &str) {
        let mut line = if self.color {
            format!("\x1b[{color}m{tag}\x1b[m {rest}")
        } else {
            format!("{tag} {rest}")
        };
        if !line.ends_with('\n') {
            line.push('\n');
        }
        self.raw(&line);
    }

    pub fn warn(&self, msg: &str) {
        self.tagged("WARNING:", WARNING_COLOR, msg);
    }

    pub fn error(&self, msg: &str) {
        self.tagged("ERROR:", ERROR_COLOR, msg);
    }

    /// Module text that may start with the protocol's `WARNING: ` or
    /// `ERROR: ` tag: printed as sent, with the tag coloured.
    pub fn module_text(&self, text: &str) {
        if let Some(rest) = text.strip_prefix("WARNING: ") {
            self.tagged("WARNING:", WARNING_COLOR, rest);
        } else if let Some(rest) = text.strip_prefix("ERROR: ") {
            self.tagged("ERROR:", ERROR_COLOR, rest);
        } else {
            self.raw(text);
        }
    }
}

/// A shared in-memory writer, for tests and benchmarks in place of
/// stdout or stderr.
#[derive(Clone, Default, Debug)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
