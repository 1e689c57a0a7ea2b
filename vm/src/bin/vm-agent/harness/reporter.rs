//! The result channel: `VMTEST ...` lines on the second serial port (see the `vm` crate docs
//! for the line format).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;

/// Writes `VMTEST ...` lines to the second serial port and the console.
pub struct Reporter {
    out: Option<File>,
    pub failures: usize,
    pub checks: usize,
}

impl Reporter {
    pub fn open() -> Self {
        let out = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/ttyS1")
            .ok();
        Reporter {
            out,
            failures: 0,
            checks: 0,
        }
    }

    pub fn line(&mut self, text: &str) {
        for l in text.lines() {
            let l = format!("VMTEST {l}\n");
            if let Some(o) = self.out.as_mut() {
                let _ = o.write_all(l.as_bytes());
            }
            // The console only gets the lines worth seeing next to kernel messages.
            if !l.starts_with("VMTEST CHECK PASS") && !l.starts_with("VMTEST LOG") {
                let _ = io::stdout().write_all(l.as_bytes());
            }
        }
    }

    pub fn log(&mut self, text: &str) {
        for l in text.lines() {
            self.line(&format!("LOG {l}"));
        }
        if text.is_empty() {
            self.line("LOG");
        }
    }

    /// Records one check; returns `ok` so callers can branch on it.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl AsRef<str>) -> bool {
        self.checks += 1;
        if !ok {
            self.failures += 1;
        }
        let mut detail = detail.as_ref().replace('\n', "\\n");
        // Keep the report readable: a failing check shows its beginning
        // and its end (the full output is in the console log).
        if detail.len() > 1500 {
            let head: String = detail.chars().take(700).collect();
            let tail: String = detail
                .chars()
                .rev()
                .take(700)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            detail = format!("{head} ...[{} bytes]... {tail}", detail.len());
        }
        self.line(&format!(
            "CHECK {} {name} :: {detail}",
            if ok { "PASS" } else { "FAIL" }
        ));
        ok
    }

    pub fn check_eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        name: &str,
        got: T,
        want: T,
    ) -> bool {
        let ok = got == want;
        self.check(name, ok, format!("got {got:?}, want {want:?}"))
    }
}
