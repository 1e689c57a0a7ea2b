//! xtask's one error type. Every task returns [`Result`]; `main` prints the error once.
//!
//! A failed program says which command it was, how it ended and the end of its output
//! ([`Error::Failed`], or xshell's own message for programs whose output went to the terminal);
//! a failed file operation says what was done to which path ([`Error::Io`]). Callers add what
//! they were doing with [`Context::context`] and where they left things with [`Context::note`].

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started, or failed with its output on the terminal (xshell's
    /// message names the command and its exit code or signal).
    #[error(transparent)]
    Shell(#[from] xshell::Error),
    /// A program whose output was captured failed: the command, its status and the end of what
    /// it printed.
    #[error("`{cmd}` failed ({status}):\n{tail}")]
    Failed {
        cmd: String,
        status: ExitStatus,
        tail: String,
    },
    /// A file system operation (`op`: read, write, mkdir, rename to, ...) on `path`.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Machine-readable output that does not (de)serialize.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// What was being done, then what went wrong.
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
    /// What went wrong, then a note on it (e.g. where a partial result was left).
    #[error("{source} ({note})")]
    Note { source: Box<Error>, note: String },
    /// Anything else, in words.
    #[error("{0}")]
    Msg(String),
}

impl Error {
    /// A file system error on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Msg(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Error {
        Error::Msg(s.to_owned())
    }
}

/// Context for any result whose error converts into an [`Error`].
pub trait Context<T> {
    /// `CONTEXT: error`.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// `CONTEXT: error`, the context computed only on failure.
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
    /// `error (NOTE)`, the note computed only on failure.
    fn note(self, note: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context.into(),
            source: Box::new(e.into()),
        })
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context(),
            source: Box::new(e.into()),
        })
    }

    fn note(self, note: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Note {
            source: Box::new(e.into()),
            note: note(),
        })
    }
}

/// Returns early with an [`Error::Msg`] made by `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Msg(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_before() {
        let e: Result<()> = Err(Error::io(
            "read",
            "/x/y",
            io::Error::from(io::ErrorKind::NotFound),
        ));
        let e = e.context("host tools").unwrap_err();
        assert_eq!(e.to_string(), "host tools: read /x/y: entity not found");
        let e: Result<()> = Err("debootstrap failed".into());
        let e = e.note(|| "partial chroot left in /t".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "debootstrap failed (partial chroot left in /t)"
        );
    }
}
