//! Local time (`localtime_r`, `strftime`: libc's, as they read the time
//! zone database and `TZ`).

use std::ffi::{CStr, CString};
use std::io;

use super::einval;

/// `strftime` of `fmt` in local time at `t` (seconds since the epoch).
pub fn strftime_local(fmt: &str, t: i64) -> io::Result<String> {
    let c = CString::new(fmt).map_err(|_| einval())?;
    // SAFETY: a zeroed tm is valid and localtime_r fills it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let tt: libc::time_t = t;
    // SAFETY: valid pointers to locals.
    if unsafe { libc::localtime_r(&tt, &mut tm) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf has buf.len() bytes; c and tm are valid.
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c.as_ptr(), &tm) };
    if n == 0 && !fmt.is_empty() {
        return Err(io::Error::other("strftime result empty or too long"));
    }
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| io::Error::from_raw_os_error(libc::EILSEQ))
}

/// Local time zone: (seconds east of UTC, abbreviation), from `localtime_r`.
pub fn local_timezone(t: i64) -> (i64, String) {
    // SAFETY: a zeroed tm is valid; localtime_r fills it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() || tm.tm_zone.is_null() {
        return (0, "UTC".into());
    }
    // SAFETY: tm_zone points to a NUL-terminated static string set by libc.
    let name = unsafe { CStr::from_ptr(tm.tm_zone) }
        .to_string_lossy()
        .into_owned();
    (tm.tm_gmtoff, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_that_do_not_depend_on_the_zone() {
        assert_eq!(strftime_local("%s", 1_700_000_000).unwrap(), "1700000000");
        assert_eq!(strftime_local("", 0).unwrap(), "");
        assert_eq!(strftime_local("plain %%", 0).unwrap(), "plain %");
        let e = strftime_local("a\0b", 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        // Past the 4 KiB buffer.
        assert!(strftime_local(&"%Y".repeat(1100), 0).is_err());
    }

    /// In a child with `TZ` set (POSIX zone strings: no tz database needed),
    /// as the zone is process-wide state.
    #[test]
    fn fixed_zones_in_a_child() {
        match std::env::var("STAP_SYS_TZ_CHILD").as_deref() {
            Ok("UTC0") => {
                let s = strftime_local("%Y-%m-%d %H:%M:%S %Z", 86_400 + 3_661).unwrap();
                assert_eq!(s, "1970-01-02 01:01:01 UTC");
                assert_eq!(local_timezone(0), (0, "UTC".to_string()));
            }
            Ok("EST5") => {
                let s = strftime_local("%Y-%m-%d %H:%M %Z", 0).unwrap();
                assert_eq!(s, "1969-12-31 19:00 EST");
                assert_eq!(local_timezone(0), (-5 * 3600, "EST".to_string()));
            }
            _ => {
                for tz in ["UTC0", "EST5"] {
                    crate::sys::tests::run_test_in_child(
                        "sys::time::tests::fixed_zones_in_a_child",
                        &[("STAP_SYS_TZ_CHILD", tz), ("TZ", tz)],
                    );
                }
            }
        }
    }
}
