//! Output files: `-o` naming (strftime), `-S size[,N]` rotation, SIGUSR2
//! switching, and the per-CPU names of bulk mode.
//!
//! | mode   | `-o F`, no `-S`           | `-o F -S ..`        | no `-o`        |
//! |--------|---------------------------|---------------------|----------------|
//! | serial | `F`, then `F.1`, `F.2`..  | `F.0`, `F.1`, ..    | stdout         |
//! | bulk   | `F_<cpu>`, then `F_cpu<cpu>.1` .. | `F_cpu<cpu>.0`, .. | `stpd_cpu<cpu>` |
//!
//! `F` is expanded with strftime(3) in local time when each file is
//! opened. `/dev/null` is never renamed. With `-S size,N` only the newest
//! N files are kept.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use stap_common::cli::Rotation;
use stap_common::sys;

use crate::error::Error;

/// Buffer of each output writer.
pub const WRITE_BUFFER: usize = 256 * 1024;
/// Pieces at least this large bypass the output buffer.
const DIRECT_WRITE: usize = 64 * 1024;

/// What `-o`, `-S` and the transfer mode say about file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// `-o`, already absolute.
    pub pattern: Option<String>,
    pub rotation: Option<Rotation>,
}

/// Which stream a file carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Serial,
    Bulk { cpu: usize },
}

impl Naming {
    fn size_limit(&self) -> Option<u64> {
        self.rotation.map(|r| r.bytes).filter(|b| *b > 0)
    }

    fn keep(&self) -> usize {
        self.rotation.map_or(0, |r| r.keep as usize)
    }

    /// The first file number: numbered from 0 with `-S`, else unnumbered.
    fn first_number(&self) -> Option<u32> {
        self.size_limit().map(|_| 0)
    }

    /// The name of file `fnum` (`None`: the unnumbered first file) of
    /// `stream`, opened at time `t`. `None` when there is no file (serial
    /// output without `-o` goes to stdout).
    pub fn file_name(
        &self,
        stream: Stream,
        fnum: Option<u32>,
        t: i64,
    ) -> Result<Option<PathBuf>, Error> {
        let Some(pattern) = &self.pattern else {
            return Ok(match stream {
                Stream::Serial => None,
                Stream::Bulk { cpu } => Some(PathBuf::from(format!("stpd_cpu{cpu}"))),
            });
        };
        if pattern == "/dev/null" {
            return Ok(Some(PathBuf::from("/dev/null")));
        }
        let base = sys::strftime_local(pattern, t).map_err(|source| Error::OutputName {
            pattern: pattern.clone(),
            source,
        })?;
        let name = match (stream, fnum) {
            (Stream::Serial, None) => base,
            (Stream::Serial, Some(n)) => format!("{base}.{n}"),
            (Stream::Bulk { cpu }, None) => format!("{base}_{cpu}"),
            (Stream::Bulk { cpu }, Some(n)) => format!("{base}_cpu{cpu}.{n}"),
        };
        Ok(Some(PathBuf::from(name)))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Open as the C stapio does: `O_CREAT|O_TRUNC|O_WRONLY|O_CLOEXEC`, 0666
/// before the umask.
fn create(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| Error::OutputOpen {
            path: path.to_path_buf(),
            source,
        })
}

enum Sink {
    Stdout(BufWriter<Box<dyn Write + Send>>),
    File(BufWriter<File>),
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
        }
    }
}

/// `write_all` for a list of slices: writev until every byte is written.
fn write_all_vectored(w: &mut dyn Write, parts: &[IoSlice<'_>]) -> io::Result<()> {
    let mut owned: Vec<IoSlice<'_>> = parts.iter().filter(|p| !p.is_empty()).copied().collect();
    let mut bufs = &mut owned[..];
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One output stream with its rotation state.
pub struct Output {
    naming: Naming,
    stream: Stream,
    sink: Sink,
    /// Current file (None: stdout).
    path: Option<PathBuf>,
    fnum: Option<u32>,
    written: u64,
    /// Files opened, oldest first (for `-S size,N`).
    history: VecDeque<PathBuf>,
    rotations_seen: u64,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("stream", &self.stream)
            .field("path", &self.path)
            .field("fnum", &self.fnum)
            .field("written", &self.written)
            .finish()
    }
}

impl Output {
    /// Open the first file of `stream`. `stdout` is used for serial output
    /// without `-o`. `rotations_seen` is the SIGUSR2 count at start.
    pub fn open(
        naming: Naming,
        stream: Stream,
        stdout: Option<Box<dyn Write + Send>>,
        rotations_seen: u64,
    ) -> Result<Output, Error> {
        let fnum = naming.first_number();
        let path = naming.file_name(stream, fnum, now())?;
        let sink = match &path {
            Some(p) => Sink::File(BufWriter::with_capacity(WRITE_BUFFER, create(p)?)),
            None => Sink::Stdout(BufWriter::with_capacity(
                WRITE_BUFFER,
                stdout.unwrap_or_else(|| Box::new(io::stdout())),
            )),
        };
        let mut history = VecDeque::new();
        if let Some(p) = &path {
            history.push_back(p.clone());
        }
        Ok(Output {
            naming,
            stream,
            sink,
            path,
            fnum,
            written: 0,
            history,
            rotations_seen,
        })
    }

    /// The file being written (None: stdout).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn what(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "stdout".into(),
        }
    }

    fn write_error(&self, source: io::Error) -> Error {
        Error::OutputWrite {
            what: self.what(),
            source,
        }
    }

    /// The `-S` size that applies to this stream (none on stdout).
    fn limit(&self) -> Option<u64> {
        self.path.as_ref()?;
        self.naming.size_limit()
    }

    /// Whether files switch at a size (`-S`): then every record must be
    /// written on its own, so that a switch falls between records.
    pub fn size_limited(&self) -> bool {
        self.limit().is_some()
    }

    /// Write bytes, counted in the current file. A large piece goes
    /// straight to the file (after what is buffered) instead of through
    /// the buffer.
    fn write_bytes(&mut self, data: &[u8]) -> Result<(), Error> {
        let r = match &mut self.sink {
            Sink::File(w) if data.len() >= DIRECT_WRITE => {
                w.flush().and_then(|()| w.get_mut().write_all(data))
            }
            Sink::File(w) => w.write_all(data),
            Sink::Stdout(w) => w.write_all(data),
        };
        if let Err(e) = r {
            return Err(self.write_error(e));
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Write the pieces in order, after what is buffered, with as few
    /// writev calls as the kernel allows (no -S: the caller writes record
    /// by record when files switch at a size).
    pub fn write_vectored(&mut self, parts: &[IoSlice<'_>]) -> Result<(), Error> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let r = match &mut self.sink {
            Sink::File(w) => w
                .flush()
                .and_then(|()| write_all_vectored(w.get_mut(), parts)),
            Sink::Stdout(w) => w
                .flush()
                .and_then(|()| write_all_vectored(w.get_mut(), parts)),
        };
        if let Err(e) = r {
            return Err(self.write_error(e));
        }
        self.written += total as u64;
        Ok(())
    }

    /// Write one record (its pieces, e.g. header and payload, together),
    /// switching files first when it would pass the `-S` size.
    pub fn write_record(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if let Some(limit) = self.limit()
            && self.written > 0
            && self.written + len > limit
        {
            self.switch()?;
        }
        for p in parts {
            self.write_bytes(p)?;
        }
        Ok(())
    }

    /// Write records that lie back to back in `data`, `lens` their
    /// lengths in order (summing to `data.len()`): the same bytes and file
    /// switches as [`Output::write_record`] for each, in as few writes as
    /// possible (a `-S` switch still falls between two records).
    pub fn write_records(
        &mut self,
        data: &[u8],
        lens: impl IntoIterator<Item = usize>,
    ) -> Result<(), Error> {
        let Some(limit) = self.limit() else {
            return self.write_bytes(data);
        };
        // data[start..cur]: records taken but not written yet.
        let (mut start, mut cur) = (0, 0);
        for len in lens {
            let before = self.written + (cur - start) as u64;
            if before > 0 && before + len as u64 > limit {
                self.write_bytes(&data[start..cur])?;
                self.switch()?;
                start = cur;
            }
            cur += len;
        }
        debug_assert_eq!(cur, data.len());
        self.write_bytes(&data[start..cur])
    }

    /// Switch files if SIGUSR2 arrived since the last look (`count` is the
    /// number of SIGUSR2 so far). Without `-o` there is nothing to switch.
    pub fn check_rotation(&mut self, count: u64) -> Result<(), Error> {
        if count > self.rotations_seen {
            self.rotations_seen = count;
            if self.naming.pattern.is_some() {
                self.switch()?;
            }
        }
        Ok(())
    }

    /// Close the current file and open the next number.
    pub fn switch(&mut self) -> Result<(), Error> {
        self.flush()?;
        let next = self.fnum.map_or(1, |n| n + 1);
        let path = self
            .naming
            .file_name(self.stream, Some(next), now())?
            .ok_or_else(|| self.write_error(io::Error::other("no file to switch")))?;
        let file = create(&path)?;
        self.sink = Sink::File(BufWriter::with_capacity(WRITE_BUFFER, file));
        self.fnum = Some(next);
        self.written = 0;
        self.path = Some(path.clone());
        if path != Path::new("/dev/null") {
            self.history.push_back(path);
        }
        let keep = self.naming.keep();
        while keep > 0 && self.history.len() > keep {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::OutputRemove { path: old, source }),
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        self.sink.writer().flush().map_err(|e| self.write_error(e))
    }

    /// Flush and close (files are closed when dropped).
    pub fn finish(mut self) -> Result<(), Error> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most 3 bytes per call, vectored or not.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(3);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut left = 3;
            for b in bufs {
                let n = b.len().min(left);
                self.0.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Ok(3 - left)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_survive_short_writes_and_empty_pieces() {
        let mut w = Trickle(Vec::new());
        let parts = [
            IoSlice::new(b"hello "),
            IoSlice::new(b""),
            IoSlice::new(b"w"),
            IoSlice::new(b"orld\n"),
        ];
        write_all_vectored(&mut w, &parts).unwrap();
        assert_eq!(w.0, b"hello world\n");
    }

    fn naming(pattern: Option<&str>, rotation: Option<(u64, u32)>) -> Naming {
        Naming {
            pattern: pattern.map(str::to_string),
            rotation: rotation.map(|(bytes, keep)| Rotation { bytes, keep }),
        }
    }

    fn name(n: &Naming, s: Stream, f: Option<u32>) -> Option<String> {
        n.file_name(s, f, 0)
            .unwrap()
            .map(|p| p.display().to_string())
    }

    #[test]
    fn names_follow_the_c_stapio() {
        let plain = naming(Some("/t/out"), None);
        assert_eq!(
            name(&plain, Stream::Serial, None).as_deref(),
            Some("/t/out")
        );
        assert_eq!(
            name(&plain, Stream::Serial, Some(1)).as_deref(),
            Some("/t/out.1")
        );
        assert_eq!(
            name(&plain, Stream::Bulk { cpu: 3 }, None).as_deref(),
            Some("/t/out_3")
        );
        assert_eq!(
            name(&plain, Stream::Bulk { cpu: 3 }, Some(2)).as_deref(),
            Some("/t/out_cpu3.2")
        );
        let none = naming(None, None);
        assert_eq!(name(&none, Stream::Serial, None), None);
        assert_eq!(
            name(&none, Stream::Bulk { cpu: 1 }, None).as_deref(),
            Some("stpd_cpu1")
        );
        let null = naming(Some("/dev/null"), Some((1 << 20, 2)));
        assert_eq!(
            name(&null, Stream::Serial, Some(4)).as_deref(),
            Some("/dev/null")
        );
        assert_eq!(null.first_number(), Some(0));
        assert_eq!(plain.first_number(), None);
    }

    #[test]
    fn strftime_is_applied() {
        let n = naming(Some("/t/out-%Y"), None);
        let got = name(&n, Stream::Serial, None).unwrap();
        assert!(
            got.starts_with("/t/out-19") || got.starts_with("/t/out-20"),
            "{got}"
        );
    }

    /// `write_records` makes the same files, split at the same record
    /// boundaries, as `write_record` for each record.
    #[test]
    fn write_records_splits_like_write_record() {
        let lens = [30usize, 50, 40, 1, 99, 100, 150, 7, 7, 7, 60, 41];
        let data: Vec<u8> = lens
            .iter()
            .enumerate()
            .flat_map(|(i, n)| std::iter::repeat_n(b'a' + i as u8, *n))
            .collect();
        let base = std::env::temp_dir().join(format!("stapio-out-{}", std::process::id()));
        let run = |sub: &str, limit: Option<(u64, u32)>, whole: bool| {
            let d = base.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            let n = naming(Some(&format!("{}/f", d.display())), limit);
            let mut o = Output::open(n, Stream::Bulk { cpu: 0 }, None, 0).unwrap();
            if whole {
                o.write_records(&data[..], lens).unwrap();
            } else {
                let mut at = 0;
                for l in lens {
                    o.write_record(&[&data[at..at + l]]).unwrap();
                    at += l;
                }
            }
            o.finish().unwrap();
            let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().into_string().unwrap(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
            files.sort();
            files
        };
        for (i, limit) in [None, Some((100, 0)), Some((150, 3)), Some((1, 0))]
            .into_iter()
            .enumerate()
        {
            let a = run(&format!("{i}-each"), limit, false);
            let b = run(&format!("{i}-whole"), limit, true);
            assert_eq!(a, b, "{limit:?}");
            if limit.is_some() {
                assert!(a.len() > 1, "{limit:?}: rotated");
            }
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
