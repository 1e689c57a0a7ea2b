//! A writer for the `newc` cpio format the kernel unpacks as initramfs.

use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::files;

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// One archive member.
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub data: Vec<u8>,
    /// (major, minor) for device nodes.
    pub rdev: (u32, u32),
}

impl Entry {
    pub fn dir(path: &str, perm: u32) -> Self {
        Entry {
            path: path.into(),
            mode: S_IFDIR | perm,
            uid: 0,
            gid: 0,
            data: Vec::new(),
            rdev: (0, 0),
        }
    }

    pub fn file(path: &str, perm: u32, data: Vec<u8>) -> Self {
        Entry {
            path: path.into(),
            mode: S_IFREG | perm,
            uid: 0,
            gid: 0,
            data,
            rdev: (0, 0),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Entry {
            path: path.into(),
            mode: S_IFLNK | 0o777,
            uid: 0,
            gid: 0,
            data: target.as_bytes().to_vec(),
            rdev: (0, 0),
        }
    }

    pub fn chardev(path: &str, perm: u32, major: u32, minor: u32) -> Self {
        Entry {
            path: path.into(),
            mode: S_IFCHR | perm,
            uid: 0,
            gid: 0,
            data: Vec::new(),
            rdev: (major, minor),
        }
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

fn pad4(w: &mut impl Write, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])
}

fn header(w: &mut impl Write, ino: u32, e: &Entry, name: &str) -> io::Result<()> {
    let nlink = if e.mode & 0o170000 == S_IFDIR { 2 } else { 1 };
    let filesize = u32::try_from(e.data.len())
        .map_err(|_| io::Error::other("cpio member larger than 4 GiB"))?;
    let namesize =
        u32::try_from(name.len() + 1).map_err(|_| io::Error::other("cpio name too long"))?;
    let fields = [
        ino, e.mode, e.uid, e.gid, nlink, 0, /* mtime */
        filesize, 0, 0, /* dev major/minor */
        e.rdev.0, e.rdev.1, namesize, 0, /* check */
    ];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + name.len() + 1)
}

/// Writes all entries (in order; parents must come before children) and the trailer.
pub fn write(w: &mut impl Write, entries: &[Entry]) -> io::Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let ino = u32::try_from(i + 1).map_err(|_| io::Error::other("too many cpio members"))?;
        header(w, ino, e, e.path.trim_start_matches('/'))?;
        w.write_all(&e.data)?;
        pad4(w, e.data.len())?;
    }
    let trailer = Entry::file("TRAILER!!!", 0, Vec::new());
    let mut t = trailer;
    t.mode = 0;
    header(w, 0, &t, "TRAILER!!!")?;
    w.flush()
}

/// The archive at `base` with `extras` appended as a second archive (the kernel unpacks
/// concatenated newc archives in order, later members adding to or replacing earlier ones).
pub fn append(base: &Path, extras: &[Entry]) -> Result<Vec<u8>> {
    let mut bytes = files::read(base)?;
    write(&mut bytes, extras).map_err(|e| Error::io("append to", base, e))?;
    Ok(bytes)
}
