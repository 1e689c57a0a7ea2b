//! `KernelOps` on the running Linux kernel. The syscalls themselves are in
//! [`crate::sys`]; this file only composes them.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use super::{
    Control, KernelOps, MONITOR_CONTROL, MONITOR_STATUS, ModuleDir, ModuleInput, Relay, Relocation,
    STDIN_FILE, Transport,
};
use crate::modname::ModName;
use crate::sys;

pub const PROCFS_ROOT: &str = "/proc/systemtap";
pub const DEBUGFS_ROOT: &str = "/sys/kernel/debug/systemtap";

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxKernel;

impl LinuxKernel {
    fn open_dir(path: &Path) -> io::Result<OwnedFd> {
        sys::open(
            path.as_os_str(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
    }
}

/// Kernel symbols staprun relocates, as the C staprun sends them.
const KERNEL_SYMBOLS: [&str; 4] = [
    "_stext",
    "kallsyms_lookup_name",
    "kallsyms_on_each_symbol",
    "module_kallsyms_on_each_symbol",
];

impl KernelOps for LinuxKernel {
    fn init_module(&self, image: &[u8], params: &str) -> io::Result<()> {
        sys::init_module(image, params)
    }

    fn delete_module(&self, name: &str) -> io::Result<()> {
        sys::delete_module(name)
    }

    fn is_loaded(&self, name: &str) -> bool {
        let want = name.replace('-', "_");
        std::fs::read_to_string("/proc/modules")
            .map(|s| {
                s.lines()
                    .any(|l| l.split(' ').next() == Some(want.as_str()))
            })
            .unwrap_or(false)
    }

    fn open_module_dir(&self, name: &ModName) -> io::Result<Box<dyn ModuleDir>> {
        // debugfs first when it is really debugfs, as the C tools do.
        if let Ok(root) = Self::open_dir(Path::new(DEBUGFS_ROOT))
            && sys::fstatfs_type(root.as_fd()).ok() == Some(sys::DEBUGFS_MAGIC)
            && let Ok(fd) = sys::openat(
                root.as_fd(),
                OsStr::new(name.as_str()),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
        {
            return Ok(Box::new(LinuxModuleDir {
                fd,
                transport: Transport::Debugfs,
            }));
        }
        let root = Self::open_dir(Path::new(PROCFS_ROOT))?;
        let fd = sys::openat(
            root.as_fd(),
            OsStr::new(name.as_str()),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?;
        Ok(Box::new(LinuxModuleDir {
            fd,
            transport: Transport::Procfs,
        }))
    }

    fn systemtap_modules(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for root in [DEBUGFS_ROOT, PROCFS_ROOT] {
            if let Ok(rd) = std::fs::read_dir(root) {
                for e in rd.flatten() {
                    if let Some(n) = e.file_name().to_str()
                        && !names.iter().any(|x: &String| x == n)
                    {
                        names.push(n.to_string());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn relocations(&self) -> Vec<Relocation> {
        // With kptr_restrict=0, /sys/module/*/sections/* show unusable
        // addresses even to root; 1 shows real ones to root only. As the C
        // staprun does (BZ1552745), raise 0 to 1; never lower it. This runs
        // only after a permitted load.
        const KPTR: &str = "/proc/sys/kernel/kptr_restrict";
        if std::fs::read_to_string(KPTR).is_ok_and(|v| v.trim() == "0") {
            let _ = std::fs::write(KPTR, "1");
        }
        let mut out = Vec::new();
        if let Ok(ks) = std::fs::File::open("/proc/kallsyms") {
            // Streamed, and only as far as the last symbol wanted: the
            // kernel formats the file as it is read, and all of it takes
            // ten times longer than the part up to these symbols.
            let found = kallsyms_lookup(std::io::BufReader::with_capacity(64 << 10, ks));
            for (want, address) in KERNEL_SYMBOLS.iter().zip(found) {
                if let Some(address) = address {
                    out.push(Relocation {
                        module: "kernel".into(),
                        symbol: (*want).into(),
                        address,
                    });
                }
            }
            if Path::new("/sys/kernel/notes").exists() && !out.is_empty() {
                out.push(Relocation {
                    module: "kernel".into(),
                    symbol: ".note.gnu.build-id".into(),
                    address: 2,
                });
            }
        }
        if let Ok(mods) = std::fs::read_dir("/sys/module") {
            for m in mods.flatten() {
                let Ok(secs) = std::fs::read_dir(m.path().join("sections")) else {
                    continue;
                };
                let module = m.file_name().to_string_lossy().into_owned();
                for s in secs.flatten() {
                    let symbol = s.file_name().to_string_lossy().into_owned();
                    let Ok(text) = std::fs::read_to_string(s.path()) else {
                        continue;
                    };
                    let Some(hex) = text.trim().strip_prefix("0x") else {
                        continue;
                    };
                    let Ok(mut address) = u64::from_str_radix(hex, 16) else {
                        continue;
                    };
                    if symbol.contains("init.") {
                        address = 0;
                    }
                    out.push(Relocation {
                        module: module.clone(),
                        symbol,
                        address,
                    });
                }
            }
        }
        out
    }

    fn possible_cpus(&self) -> usize {
        std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| parse_cpu_list_max(s.trim()))
            .map(|m| m + 1)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .min(1024)
    }
}

/// The addresses of [`KERNEL_SYMBOLS`] (in that order) in a kallsyms
/// listing: the first line naming each as the kernel's own symbol (no
/// `[module]` field). Stops reading once all are found.
fn kallsyms_lookup(r: impl std::io::BufRead) -> [Option<u64>; KERNEL_SYMBOLS.len()] {
    let mut found = [None; KERNEL_SYMBOLS.len()];
    for line in r.split(b'\n') {
        let Ok(line) = line else { break };
        let Ok(l) = std::str::from_utf8(&line) else {
            continue;
        };
        let mut it = l.split_whitespace();
        let (Some(addr), Some(_kind), Some(sym), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        if let Some(i) = KERNEL_SYMBOLS.iter().position(|w| *w == sym)
            && found[i].is_none()
            && let Ok(a) = u64::from_str_radix(addr, 16)
        {
            found[i] = Some(a);
            if found.iter().all(Option::is_some) {
                break;
            }
        }
    }
    found
}

/// Highest CPU number in a list such as `0-3,8`.
pub fn parse_cpu_list_max(s: &str) -> Option<usize> {
    s.split(',')
        .filter_map(|part| part.rsplit('-').next()?.trim().parse::<usize>().ok())
        .max()
}

/// A module directory opened with `O_DIRECTORY|O_NOFOLLOW`.
#[derive(Debug)]
pub struct LinuxModuleDir {
    fd: OwnedFd,
    transport: Transport,
}

impl LinuxModuleDir {
    /// Wrap a directory fd passed from staprun (`-F`).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let transport = if sys::fstatfs_type(fd.as_fd())? == sys::DEBUGFS_MAGIC {
            Transport::Debugfs
        } else {
            Transport::Procfs
        };
        Ok(LinuxModuleDir { fd, transport })
    }
}

impl ModuleDir for LinuxModuleDir {
    fn transport(&self) -> Transport {
        self.transport
    }

    fn real_user_may_use_control(&self) -> io::Result<()> {
        sys::access_rw_as_real_user(self.fd.as_fd(), OsStr::new(".cmd"))
    }

    fn control_owner(&self) -> io::Result<u32> {
        sys::fstatat_nofollow(self.fd.as_fd(), OsStr::new(".cmd")).map(|st| st.st_uid)
    }

    fn open_control(&self) -> io::Result<Box<dyn Control>> {
        let fd = sys::openat(
            self.fd.as_fd(),
            OsStr::new(".cmd"),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOFOLLOW,
        )?;
        Ok(Box::new(LinuxControl { fd }))
    }

    fn open_relay(&self, cpu: usize) -> io::Result<Option<Box<dyn Relay>>> {
        let name = format!("trace{cpu}");
        match sys::openat(
            self.fd.as_fd(),
            OsStr::new(&name),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW,
        ) {
            Ok(fd) => Ok(Some(Box::new(LinuxRelay { fd }))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn open_input(&self, module: &ModName) -> io::Result<Box<dyn ModuleInput>> {
        let name = OsStr::new(STDIN_FILE);
        let flags = libc::O_WRONLY | libc::O_NOFOLLOW;
        let fd = match self.transport {
            Transport::Procfs => sys::openat(self.fd.as_fd(), name, flags)?,
            // procfs probe files are in /proc/systemtap/MOD/ even when the
            // transport is debugfs.
            Transport::Debugfs => {
                let root = LinuxKernel::open_dir(Path::new(PROCFS_ROOT))?;
                let dir = sys::openat(
                    root.as_fd(),
                    OsStr::new(module.as_str()),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                )?;
                sys::openat(dir.as_fd(), name, flags)?
            }
        };
        Ok(Box::new(LinuxInput { fd }))
    }

    fn read_monitor_status(&self, limit: usize) -> io::Result<Vec<u8>> {
        // O_NONBLOCK: the module lets one process open the file at a time
        // and makes the others wait; this one then reads nothing instead.
        let fd = self.monitor_file(MONITOR_STATUS, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        while out.len() < limit {
            let want = buf.len().min(limit - out.len());
            match sys::read(fd.as_fd(), &mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn write_monitor_control(&self, command: &str) -> io::Result<()> {
        let fd = self.monitor_file(MONITOR_CONTROL, libc::O_WRONLY)?;
        let n = sys::write(fd.as_fd(), command.as_bytes())?;
        if n == command.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to {MONITOR_CONTROL}: {n} of {}", command.len()),
            ))
        }
    }
}

impl LinuxModuleDir {
    /// A monitor file of the module. procfs probe files live in
    /// `/proc/systemtap/MOD/`, the transport directory of a procfs module;
    /// a debugfs transport directory does not have them.
    fn monitor_file(&self, name: &str, flags: i32) -> io::Result<OwnedFd> {
        match self.transport {
            Transport::Procfs => {
                sys::openat(self.fd.as_fd(), OsStr::new(name), flags | libc::O_NOFOLLOW)
            }
            Transport::Debugfs => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }
}

#[derive(Debug)]
struct LinuxControl {
    fd: OwnedFd,
}

impl Control for LinuxControl {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let n = sys::write(self.fd.as_fd(), msg)?;
        // Old runtimes answer len+4 for a whole message.
        if n == msg.len() || n == msg.len() + 4 {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short control write: {n} of {}", msg.len()),
            ))
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(self.fd.as_fd(), buf)
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        sys::poll_one(self.fd.as_fd(), libc::POLLIN, timeout)
    }
}

#[derive(Debug)]
struct LinuxInput {
    fd: OwnedFd,
}

impl ModuleInput for LinuxInput {
    fn send_byte(&mut self, byte: u8) -> io::Result<()> {
        match sys::write(self.fd.as_fd(), &[byte])? {
            1 => Ok(()),
            _ => Err(io::Error::from(io::ErrorKind::WriteZero)),
        }
    }
}

#[derive(Debug)]
struct LinuxRelay {
    fd: OwnedFd,
}

impl Relay for LinuxRelay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match sys::read(self.fd.as_fd(), buf) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(0),
            r => r,
        }
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        sys::poll_one(self.fd.as_fd(), libc::POLLIN, timeout)
    }

    fn wait_or_wake(&mut self, timeout: Duration, wake: BorrowedFd<'_>) -> io::Result<bool> {
        sys::poll_in_or_wake(self.fd.as_fd(), wake, timeout).map(|(data, _)| data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0-3"), Some(3));
        assert_eq!(parse_cpu_list_max("0-3,8,10-11"), Some(11));
        assert_eq!(parse_cpu_list_max(""), None);
    }

    #[test]
    fn kallsyms_lookup_takes_the_kernels_own_symbols_and_stops_when_done() {
        let text = "\
ffffffff81000000 T _stext
ffffffffc0001000 t kallsyms_lookup_name\t[fake]
ffffffff81100000 T kallsyms_lookup_name
ffffffff81100100 T kallsyms_on_each_symbol
ffffffff81200000 T module_kallsyms_on_each_symbol
ffffffff81300000 T _stext
this line is never read because everything was found above
";
        let mut read = 0usize;
        struct Counting<'a>(&'a [u8], &'a mut usize);
        impl std::io::Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                // one byte at a time, to count how far the lookup read
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                if buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = *first;
                self.0 = rest;
                *self.1 += 1;
                Ok(1)
            }
        }
        let r = std::io::BufReader::with_capacity(1, Counting(text.as_bytes(), &mut read));
        let got = kallsyms_lookup(r);
        assert_eq!(
            got,
            [
                Some(0xffffffff81000000),
                Some(0xffffffff81100000),
                Some(0xffffffff81100100),
                Some(0xffffffff81200000)
            ]
        );
        let end = text.find("ffffffff81300000").unwrap();
        assert!(
            read <= end,
            "read {read} bytes, the last wanted line ends at {end}"
        );
        // A symbol that is missing stays None and the whole listing is read.
        let got = kallsyms_lookup(std::io::Cursor::new(b"ffffffff81000000 T _stext\n"));
        assert_eq!(got, [Some(0xffffffff81000000), None, None, None]);
    }
}
