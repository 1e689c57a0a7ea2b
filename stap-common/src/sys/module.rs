//! Kernel modules and the running kernel: `init_module`, `delete_module`
//! (raw syscalls: no wrapper offers them), the release, FIPS mode.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsFd;

use super::{PROC_SUPER_MAGIC, einval, fstatfs_type, open, read};

/// `init_module(image, params)`.
pub fn init_module(image: &[u8], params: &str) -> io::Result<()> {
    let p = CString::new(params).map_err(|_| einval())?;
    // SAFETY: the image pointer and length describe a live slice; params is a C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len() as libc::c_ulong,
            p.as_ptr(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `delete_module(name, O_NONBLOCK)`.
pub fn delete_module(name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| einval())?;
    // SAFETY: valid C string.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, c.as_ptr(), libc::O_NONBLOCK) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Kernel release (`uname -r`).
pub fn kernel_release() -> io::Result<String> {
    // Not uname(2): the UNAME26 personality, which survives a setuid exec,
    // makes it report 2.6.x. procfs shows the running kernel's release.
    let fd = open(
        OsStr::new("/proc/sys/kernel/osrelease"),
        libc::O_RDONLY | libc::O_NOFOLLOW,
    )?;
    if fstatfs_type(fd.as_fd())? != PROC_SUPER_MAGIC {
        return Err(io::Error::other("/proc is not procfs"));
    }
    let mut buf = [0u8; 256];
    let n = read(fd.as_fd(), &mut buf)?;
    let text = std::str::from_utf8(&buf[..n])
        .map_err(|_| einval())?
        .trim_end_matches('\n');
    if text.is_empty() || text.contains(['/', '\0']) || text.starts_with('.') {
        return Err(io::Error::other("unusable kernel release in /proc"));
    }
    Ok(text.to_owned())
}

/// Whether the kernel runs in FIPS mode (`/proc/sys/crypto/fips_enabled`
/// is non-zero). A missing file means no.
pub fn fips_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/crypto/fips_enabled")
        .map(|s| s.trim() != "0" && !s.trim().is_empty())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_is_unames() {
        let r = kernel_release().unwrap();
        assert!(!r.is_empty());
        // uname(2) agrees unless a UNAME26 personality is in effect.
        let u = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap();
        assert!(u.status.success());
        assert_eq!(String::from_utf8(u.stdout).unwrap().trim_end(), r);
    }

    #[test]
    fn fips_matches_the_file() {
        let want = std::fs::read_to_string("/proc/sys/crypto/fips_enabled")
            .is_ok_and(|s| s.trim() != "0" && !s.trim().is_empty());
        assert_eq!(fips_enabled(), want);
    }

    /// Argument errors that stop before the kernel: nothing is loaded or
    /// unloaded.
    #[test]
    fn nul_arguments_are_refused() {
        let e = init_module(b"", "a\0b").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = delete_module("a\0b").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
