//! syslog(3): one line at a time, with the caller's identity and facility.

use std::ffi::{CStr, CString};

/// Send one line to syslog with the identity `ident` (e.g. `c"staprun"`)
/// and the facility `facility` (e.g. `libc::LOG_AUTHPRIV`) at `priority`
/// (e.g. `libc::LOG_ERR`), with a constant format so the text is never
/// interpreted (a NUL in `line` becomes a space). `ident` is static
/// because `openlog` keeps the pointer; the facility is also given with
/// each record, so it holds even where another `openlog` of the process
/// chose another default.
pub fn syslog(ident: &'static CStr, facility: libc::c_int, priority: libc::c_int, line: &str) {
    let Ok(msg) = CString::new(line.replace('\0', " ")) else {
        return;
    };
    let priority = (priority & libc::LOG_PRIMASK) | (facility & libc::LOG_FACMASK);
    // SAFETY: `ident` is a static C string (openlog keeps the pointer);
    // the format is a constant "%s" and `msg` a valid C string.
    unsafe {
        libc::openlog(
            ident.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            facility & libc::LOG_FACMASK,
        );
        libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing to assert on without a syslog reader; it must neither
    /// panic nor choke on NULs, format directives or a missing /dev/log.
    #[test]
    fn logs_without_interpreting() {
        syslog(
            c"stap-sys-test",
            libc::LOG_USER,
            libc::LOG_DEBUG,
            "a %s %n \0 line",
        );
    }
}
