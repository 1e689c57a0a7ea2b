//! stapio: runs as the invoking user, talks to a loaded SystemTap module
//! over its control channel, and copies its relay output to stdout or
//! files. See [`session`] for the lifecycle.
#![forbid(unsafe_code)]

pub mod diag;
pub mod error;
pub mod framing;
pub mod merge;
pub mod monitor;
pub mod ns;
pub mod output;
pub mod relay;
pub mod session;
pub mod signals;
pub mod stdin;
pub mod target;
pub mod unloader;

pub use error::Error;
pub use session::{Config, Outcome, Session, Streams, Unloader};
