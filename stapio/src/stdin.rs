//! `-i`: the user's standard input, forwarded to the module's `__stdin`
//! for `probe input.char` / `probe input.line` scripts.
//!
//! What the C stapio does (monitor.c `read_stdin_setup` / `redirect_stdin`,
//! the same in 4.8 and 5.1), and ours with it:
//!
//! * when the main loop starts, a terminal on stdin is switched to
//!   non-canonical mode without echo (keys reach `input.char` as typed);
//!   it is restored at the end ([`stap_common::sys::keys_as_typed`]);
//! * `/proc/systemtap/MOD/__stdin` is opened write-only as soon as it
//!   exists: the module makes it when its probes start (C retries every
//!   2 ms from the start of the main loop; we try when the probes have
//!   started, then on every turn of the main loop). A module without input
//!   probes never has it, and then nothing is read from stdin;
//! * every byte of stdin is written with a `write()` of its own: the tapset
//!   runs the probes once per write, and `input.line` completes a line only
//!   on a write that is exactly `"\n"`;
//! * a failed write is ignored, and reading goes on;
//! * at end of file, forwarding stops; the module is not told and runs on
//!   until it exits (a partial last line is never delivered).
//!
//! Ours runs on a thread that waits on stdin and on a wake-up pipe, so the
//! end of the session stops it: stapio ends even while stdin stays open.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use stap_common::kernel::ModuleInput;
use stap_common::sys;

/// How long the end of a session waits for the forwarding thread (it wakes
/// at once unless the module is slow to take a byte); then it is left to
/// end with the process.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// How forwarding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Standard input reached end of file.
    Eof,
    /// The session ended first.
    Stopped,
    /// Reading standard input failed (the errno).
    ReadError(i32),
    /// The thread had not finished within [`STOP_WAIT`].
    StillRunning,
}

/// What was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    pub bytes: u64,
    /// Writes the module refused (ignored, as the C stapio does).
    pub failed_writes: u64,
    pub end: End,
}

/// The running forwarder.
#[derive(Debug)]
pub struct Forwarder {
    wake: OwnedFd,
    done: mpsc::Receiver<Forwarded>,
}

impl Forwarder {
    /// Forward `source` (a descriptor of stdin) to `sink` on a new thread.
    pub fn start(source: OwnedFd, sink: Box<dyn ModuleInput>) -> io::Result<Forwarder> {
        let (wake_rd, wake) = sys::pipe_nonblocking()?;
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("stapio-stdin".into())
            .spawn(move || {
                let _ = tx.send(forward(&source, sink, &wake_rd));
            })?;
        Ok(Forwarder { wake, done })
    }

    /// Whether forwarding has ended by itself (end of file, read error).
    pub fn finished(&self) -> Option<Forwarded> {
        self.done.try_recv().ok()
    }

    /// Stop forwarding and say what was forwarded. Never waits more than
    /// [`STOP_WAIT`].
    pub fn stop(self) -> Forwarded {
        let _ = sys::write(self.wake.as_fd(), b"x");
        self.done.recv_timeout(STOP_WAIT).unwrap_or(Forwarded {
            bytes: 0,
            failed_writes: 0,
            end: End::StillRunning,
        })
    }
}

fn forward(source: &OwnedFd, mut sink: Box<dyn ModuleInput>, wake: &OwnedFd) -> Forwarded {
    let mut out = Forwarded {
        bytes: 0,
        failed_writes: 0,
        end: End::Eof,
    };
    let mut buf = [0u8; 512];
    loop {
        let (data, woken) =
            match sys::poll_in_or_wake(source.as_fd(), wake.as_fd(), Duration::from_secs(3600)) {
                Ok(r) => r,
                Err(e) => {
                    out.end = End::ReadError(e.raw_os_error().unwrap_or(libc::EIO));
                    return out;
                }
            };
        if woken {
            out.end = End::Stopped;
            return out;
        }
        if !data {
            continue;
        }
        let n = match sys::read(source.as_fd(), &mut buf) {
            Ok(0) => return out,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => {
                out.end = End::ReadError(e.raw_os_error().unwrap_or(libc::EIO));
                return out;
            }
        };
        for &b in &buf[..n] {
            match sink.send_byte(b) {
                Ok(()) => out.bytes += 1,
                Err(_) => out.failed_writes += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>, bool);

    impl ModuleInput for Sink {
        fn send_byte(&mut self, byte: u8) -> io::Result<()> {
            if self.1 && byte == b'!' {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.0.lock().unwrap().push(byte);
            Ok(())
        }
    }

    fn wait_for(f: &Forwarder) -> Forwarded {
        for _ in 0..500 {
            if let Some(r) = f.finished() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the forwarder did not finish");
    }

    #[test]
    fn forwards_until_end_of_file() {
        let (rd, wr) = sys::pipe_nonblocking().unwrap();
        let sink = Sink::default();
        let f = Forwarder::start(rd, Box::new(sink.clone())).unwrap();
        sys::write(wr.as_fd(), b"ab\n").unwrap();
        drop(wr);
        let r = wait_for(&f);
        assert_eq!(r.end, End::Eof);
        assert_eq!(r.bytes, 3);
        assert_eq!(*sink.0.lock().unwrap(), b"ab\n");
    }

    #[test]
    fn failed_writes_are_skipped_and_reading_goes_on() {
        let (rd, wr) = sys::pipe_nonblocking().unwrap();
        let sink = Sink(Arc::default(), true);
        let f = Forwarder::start(rd, Box::new(sink.clone())).unwrap();
        sys::write(wr.as_fd(), b"a!b").unwrap();
        drop(wr);
        let r = wait_for(&f);
        assert_eq!((r.bytes, r.failed_writes, r.end), (2, 1, End::Eof));
        assert_eq!(*sink.0.lock().unwrap(), b"ab");
    }

    #[test]
    fn stop_ends_it_while_stdin_stays_open() {
        let (rd, wr) = sys::pipe_nonblocking().unwrap();
        let f = Forwarder::start(rd, Box::new(Sink::default())).unwrap();
        let t = std::time::Instant::now();
        let r = f.stop();
        assert_eq!(r.end, End::Stopped);
        assert!(t.elapsed() < STOP_WAIT, "{:?}", t.elapsed());
        drop(wr);
    }
}
