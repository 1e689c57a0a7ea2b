//! A tiny SystemTap control/relay client, for exercising the fixture module
//! without staprun/stapio (scenario `infra_boot`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;

/// Message numbers relative to STP_START (4.x: base 0, 5.x: base 0x50).
pub mod msg {
    pub const START: u32 = 0;
    pub const EXIT: u32 = 1;
    pub const OOB_DATA: u32 = 2;
    pub const TRANSPORT: u32 = 4;
    pub const CONNECT: u32 = 5;
    pub const BULK: u32 = 7;
    pub const READY: u32 = 8;
    pub const REALTIME_DATA: u32 = 12;
    pub const REQUEST_EXIT: u32 = 13;
    pub const TZINFO: u32 = 14;
    pub const PRIVILEGE_CREDENTIALS: u32 = 15;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gen {
    V4,
    V5,
}

impl Gen {
    pub fn base(self) -> u32 {
        match self {
            Gen::V4 => 0,
            Gen::V5 => 0x50,
        }
    }

    pub fn header_len(self) -> usize {
        match self {
            Gen::V4 => 8,
            Gen::V5 => 12,
        }
    }
}

pub const MAGIC: [u8; 4] = [0xF0, 0x9F, 0xA9, 0xBA];

/// The control channel `.cmd`, opened non-blocking.
pub struct Ctl {
    f: File,
    pub generation: Gen,
}

impl Ctl {
    pub fn open(module: &str, generation: Gen) -> io::Result<Ctl> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/systemtap/{module}/.cmd"))?;
        Ok(Ctl { f, generation })
    }

    /// Writes `type + payload` in one write; returns the kernel's count.
    pub fn send(&mut self, rel_type: u32, payload: &[u8]) -> io::Result<usize> {
        self.send_raw(rel_type + self.generation.base(), payload)
    }

    pub fn send_raw(&mut self, abs_type: u32, payload: &[u8]) -> io::Result<usize> {
        let mut b = abs_type.to_ne_bytes().to_vec();
        b.extend_from_slice(payload);
        self.f.write(&b)
    }

    /// A raw write of `bytes` (for short-write checks).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.f.write(bytes)
    }

    /// One message (absolute type, payload) or `Ok(None)` when the queue is empty.
    pub fn recv_with(&mut self, bufsize: usize) -> io::Result<Option<(u32, Vec<u8>)>> {
        let mut b = vec![0u8; bufsize];
        match self.f.read(&mut b) {
            Ok(n) if n >= 4 => {
                let t = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                Ok(Some((t, b[4..n].to_vec())))
            }
            Ok(n) => Err(io::Error::other(format!("short control read of {n} bytes"))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn recv(&mut self) -> io::Result<Option<(u32, Vec<u8>)>> {
        self.recv_with(8192)
    }

    /// Relative type of an absolute one (None if outside this generation's range).
    pub fn rel(&self, abs: u32) -> Option<u32> {
        abs.checked_sub(self.generation.base())
            .filter(|r| *r < 0x20)
    }
}

/// One relay record.
#[derive(Debug, Clone)]
pub struct Record {
    pub cpu: usize,
    pub seq: u32,
    pub data: Vec<u8>,
}

/// Parses the concatenated bytes of one trace file. Errors on bad framing.
pub fn parse_records(cpu: usize, bytes: &[u8], generation: Gen) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    let h = generation.header_len();
    while i < bytes.len() {
        if bytes.len() - i < h {
            return Err(format!("cpu {cpu}: truncated header at offset {i}"));
        }
        let mut p = i;
        if generation == Gen::V5 {
            if bytes[i..i + 4] != MAGIC {
                return Err(format!(
                    "cpu {cpu}: bad magic at offset {i}: {:02x?}",
                    &bytes[i..i + 4]
                ));
            }
            p += 4;
        }
        let word =
            |o: usize| u32::from_ne_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let seq = word(p);
        let len = word(p + 4) as usize;
        if len == 0 || len > 128 * 1024 || i + h + len > bytes.len() {
            return Err(format!("cpu {cpu}: bad pdu_len {len} at offset {i}"));
        }
        out.push(Record {
            cpu,
            seq,
            data: bytes[i + h..i + h + len].to_vec(),
        });
        i += h + len;
    }
    Ok(out)
}

/// The per-CPU relay files, opened non-blocking.
pub struct Relay {
    files: Vec<File>,
    pub bytes: Vec<Vec<u8>>,
}

impl Relay {
    pub fn open(module: &str) -> io::Result<Relay> {
        let mut files = Vec::new();
        for cpu in 0.. {
            let path = format!("/proc/systemtap/{module}/trace{cpu}");
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(f) => files.push(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        let n = files.len();
        Ok(Relay {
            files,
            bytes: vec![Vec::new(); n],
        })
    }

    pub fn cpus(&self) -> usize {
        self.files.len()
    }

    /// Reads whatever is available from every CPU's file.
    pub fn poll(&mut self) -> io::Result<usize> {
        let mut total = 0;
        let mut buf = vec![0u8; 64 * 1024];
        for (i, f) in self.files.iter_mut().enumerate() {
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.bytes[i].extend_from_slice(&buf[..n]);
                        total += n;
                    }
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENODATA)
                            || e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(total)
    }
}
