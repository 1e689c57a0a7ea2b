//! Messages for the user's terminal (stderr): module out-of-band text,
//! warnings and errors, with the `ERROR:`/`WARNING:` tags coloured as the
//! C stapio colours them (`-C`, `TERM`, `SYSTEMTAP_COLORS`: see
//! `stap_common::color`).
//!
//! A daemon (`stapio -D`) has no terminal: [`Diag::use_syslog`] sends
//! every message from then on to syslog instead (ident `stapio`, facility
//! `daemon`, as the C stapio's `switch_syslog`), one record per line, at
//! `LOG_ERR` for errors, `LOG_WARNING` for warnings and `LOG_INFO` for
//! other text. The switch applies to every clone of the `Diag`, so the
//! session, which holds a clone, follows it.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use stap_common::cli::ColorMode;
use stap_common::color::Palette;

/// The syslog identity of stapio's messages once it runs as a daemon.
pub const SYSLOG_IDENT: &std::ffi::CStr = c"stapio";
/// Their syslog facility (the C stapio's `LOG_DAEMON`).
pub const SYSLOG_FACILITY: libc::c_int = libc::LOG_DAEMON;

/// How serious a message is, for syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `ERROR:` lines: the module's and stapio's own errors.
    Error,
    /// `WARNING:` lines.
    Warning,
    /// Anything else: untagged module text, `-v` progress, the detach notice.
    Info,
}

impl Priority {
    /// The `<syslog.h>` level.
    pub fn level(self) -> libc::c_int {
        match self {
            Priority::Error => libc::LOG_ERR,
            Priority::Warning => libc::LOG_WARNING,
            Priority::Info => libc::LOG_INFO,
        }
    }

    /// The priority of a line written without one: by its tag.
    pub fn of_line(line: &str) -> Priority {
        if line.starts_with("ERROR:") {
            Priority::Error
        } else if line.starts_with("WARNING") {
            Priority::Warning
        } else {
            Priority::Info
        }
    }
}

/// Receives one log record: its priority and one line of text (no
/// newline, never empty).
pub type LogFn = Box<dyn FnMut(Priority, &str) + Send>;

enum Sink {
    /// A terminal, a file or a test buffer: text as it is.
    Stream(Box<dyn Write + Send>),
    /// Syslog (or a test's stand-in): one record per line, never coloured.
    Log(LogFn),
}

struct Inner {
    sink: Sink,
    palette: Palette,
}

/// A cloneable, thread-safe stderr (or a test buffer, or syslog).
#[derive(Clone)]
pub struct Diag {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Diag")
            .field("color", &inner.palette.is_colored())
            .field("syslog", &matches!(inner.sink, Sink::Log(_)))
            .finish()
    }
}

/// Send one record to syslog as stapio (ident `stapio`, facility daemon).
pub fn syslog_record(priority: Priority, line: &str) {
    stap_common::sys::syslog(SYSLOG_IDENT, SYSLOG_FACILITY, priority.level(), line);
}

impl Diag {
    /// `color`: the default palette (`SYSTEMTAP_COLORS` unset), or none.
    pub fn new(sink: Box<dyn Write + Send>, color: bool) -> Self {
        let palette = if color {
            Palette::from_colors(None)
        } else {
            Palette::none()
        };
        Diag::with_palette(sink, palette)
    }

    pub fn with_palette(sink: Box<dyn Write + Send>, palette: Palette) -> Self {
        Diag {
            inner: Arc::new(Mutex::new(Inner {
                sink: Sink::Stream(sink),
                palette,
            })),
        }
    }

    /// Messages as log records handed to `log` (syslog, or a test's
    /// recorder).
    pub fn with_log(log: LogFn) -> Self {
        Diag {
            inner: Arc::new(Mutex::new(Inner {
                sink: Sink::Log(log),
                palette: Palette::none(),
            })),
        }
    }

    /// Messages to syslog (ident `stapio`, facility daemon).
    pub fn syslog() -> Self {
        Diag::with_log(Box::new(syslog_record))
    }

    /// The process's stderr, coloured as the C stapio would: `always`,
    /// or `auto` when it is a terminal and `TERM` is not `dumb`, in the
    /// colours of `SYSTEMTAP_COLORS` (stapio's environment is staprun's
    /// allowlist, which keeps both).
    pub fn stderr(mode: ColorMode) -> Self {
        let term = std::env::var("TERM").ok();
        let colors = std::env::var("SYSTEMTAP_COLORS").ok();
        let palette = Palette::for_stderr(mode, term.as_deref(), colors.as_deref());
        Diag::with_palette(Box::new(io::stderr()), palette)
    }

    /// From now on, this `Diag` and all its clones hand their messages to
    /// `log`, uncoloured.
    pub fn use_log(&self, log: LogFn) {
        let mut inner = self.lock();
        inner.sink = Sink::Log(log);
        inner.palette = Palette::none();
    }

    /// From now on, this `Diag` and all its clones write to syslog (for
    /// `-D`, once stderr is /dev/null).
    pub fn use_syslog(&self) {
        self.use_log(Box::new(syslog_record));
    }

    /// Whether messages go to a log rather than a stream.
    pub fn is_log(&self) -> bool {
        matches!(self.lock().sink, Sink::Log(_))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write `text`: to a stream as it is, in one write; to a log, one
    /// record per non-empty line, at `priority` or, without one, at the
    /// priority its own tag gives each line.
    fn emit(&self, priority: Option<Priority>, text: &str) {
        let mut inner = self.lock();
        match &mut inner.sink {
            // Nothing sensible to do if stderr itself fails.
            Sink::Stream(s) => {
                let _ = s.write_all(text.as_bytes()).and_then(|()| s.flush());
            }
            Sink::Log(log) => {
                for line in text.lines() {
                    let line = line.trim_end_matches('\r');
                    if line.trim().is_empty() {
                        continue;
                    }
                    log(priority.unwrap_or_else(|| Priority::of_line(line)), line);
                }
            }
        }
    }

    /// Write `text` as it is, in one write (to a log: line by line, each
    /// at the priority of its tag).
    pub fn raw(&self, text: &str) {
        self.emit(None, text);
    }

    fn tagged(&self, priority: Priority, rest: &str) {
        let tag = {
            let inner = self.lock();
            match priority {
                Priority::Error => inner.palette.error_tag(),
                _ => inner.palette.warning_tag(),
            }
        };
        let mut line = format!("{tag} {rest}");
        if !line.ends_with('\n') {
            line.push('\n');
        }
        self.emit(Some(priority), &line);
    }

    pub fn warn(&self, msg: &str) {
        self.tagged(Priority::Warning, msg);
    }

    pub fn error(&self, msg: &str) {
        self.tagged(Priority::Error, msg);
    }

    /// Module text that may start with the protocol's `WARNING: ` or
    /// `ERROR: ` tag: printed as sent, with the tag coloured.
    pub fn module_text(&self, text: &str) {
        if let Some(rest) = text.strip_prefix("WARNING: ") {
            self.warn(rest);
        } else if let Some(rest) = text.strip_prefix("ERROR: ") {
            self.error(rest);
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

/// Log records kept in memory, for tests in place of syslog.
#[derive(Clone, Default, Debug)]
pub struct LogRecords(pub Arc<Mutex<Vec<(Priority, String)>>>);

impl LogRecords {
    pub fn new() -> Self {
        Self::default()
    }

    /// A [`LogFn`] appending to these records.
    pub fn sink(&self) -> LogFn {
        let records = self.clone();
        Box::new(move |p, line| {
            records
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((p, line.to_owned()));
        })
    }

    pub fn records(&self) -> Vec<(Priority, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(p: Priority, s: &str) -> (Priority, String) {
        (p, s.to_owned())
    }

    #[test]
    fn priorities_are_the_syslog_levels() {
        assert_eq!(Priority::Error.level(), libc::LOG_ERR);
        assert_eq!(Priority::Warning.level(), libc::LOG_WARNING);
        assert_eq!(Priority::Info.level(), libc::LOG_INFO);
        assert_eq!(SYSLOG_FACILITY, libc::LOG_DAEMON);
        assert_eq!(SYSLOG_IDENT.to_str(), Ok("stapio"));
    }

    #[test]
    fn module_errors_and_warnings_become_err_and_warning_records() {
        let log = LogRecords::new();
        let d = Diag::with_log(log.sink());
        d.module_text("ERROR: division by zero near identifier 'x'\n");
        d.module_text("WARNING: Missing unwind data\n");
        d.module_text("plain module text\n");
        d.error("stapio's own error");
        d.warn("stapio's own warning");
        assert_eq!(
            log.records(),
            vec![
                rec(
                    Priority::Error,
                    "ERROR: division by zero near identifier 'x'"
                ),
                rec(Priority::Warning, "WARNING: Missing unwind data"),
                rec(Priority::Info, "plain module text"),
                rec(Priority::Error, "ERROR: stapio's own error"),
                rec(Priority::Warning, "WARNING: stapio's own warning"),
            ]
        );
    }

    #[test]
    fn one_record_per_line_empty_lines_dropped() {
        let log = LogRecords::new();
        let d = Diag::with_log(log.sink());
        d.raw("\nDisconnecting from systemtap module.\nTo reconnect, type \"staprun -A pmod\"\n");
        // A multi-line error keeps its priority on every line.
        d.module_text("ERROR: first\nsecond\r\n\n");
        d.raw("WARNING deduplication table full\n");
        d.raw("no newline at the end");
        assert_eq!(
            log.records(),
            vec![
                rec(Priority::Info, "Disconnecting from systemtap module."),
                rec(Priority::Info, "To reconnect, type \"staprun -A pmod\""),
                rec(Priority::Error, "ERROR: first"),
                rec(Priority::Error, "second"),
                rec(Priority::Warning, "WARNING deduplication table full"),
                rec(Priority::Info, "no newline at the end"),
            ]
        );
    }

    #[test]
    fn switching_to_a_log_affects_every_clone_and_drops_colour() {
        let buf = SharedBuf::new();
        let d = Diag::new(Box::new(buf.clone()), true);
        let held = d.clone();
        held.error("before");
        assert_eq!(buf.text(), "\x1b[01;31m\x1b[KERROR:\x1b[m\x1b[K before\n");
        assert!(!held.is_log());
        let log = LogRecords::new();
        d.use_log(log.sink());
        assert!(held.is_log());
        held.error("after");
        held.module_text("WARNING: w\n");
        assert_eq!(
            buf.text(),
            "\x1b[01;31m\x1b[KERROR:\x1b[m\x1b[K before\n",
            "nothing more"
        );
        assert_eq!(
            log.records(),
            vec![
                rec(Priority::Error, "ERROR: after"),
                rec(Priority::Warning, "WARNING: w")
            ]
        );
    }

    #[test]
    fn stream_output_is_unchanged() {
        let buf = SharedBuf::new();
        let d = Diag::new(Box::new(buf.clone()), false);
        d.module_text("ERROR: e\n");
        d.module_text("WARNING: w");
        d.raw("text");
        assert_eq!(buf.text(), "ERROR: e\nWARNING: w\ntext");
    }

    /// The escape sequences of the C stapio's `print_stderr`, in the
    /// colours of `SYSTEMTAP_COLORS`.
    #[test]
    fn tags_in_the_palettes_colours() {
        let buf = SharedBuf::new();
        let d = Diag::new(Box::new(buf.clone()), true);
        d.module_text("WARNING: w\n");
        d.module_text("ERROR: e\n");
        assert_eq!(
            buf.text(),
            "\x1b[00;33m\x1b[KWARNING:\x1b[m\x1b[K w\n\x1b[01;31m\x1b[KERROR:\x1b[m\x1b[K e\n"
        );
        let buf = SharedBuf::new();
        let d = Diag::with_palette(
            Box::new(buf.clone()),
            Palette::from_colors(Some("warning=01;35:error=04")),
        );
        d.warn("w");
        d.error("e");
        d.raw("plain\n");
        assert_eq!(
            buf.text(),
            "\x1b[01;35m\x1b[KWARNING:\x1b[m\x1b[K w\n\x1b[04m\x1b[KERROR:\x1b[m\x1b[K e\nplain\n"
        );
    }
}
