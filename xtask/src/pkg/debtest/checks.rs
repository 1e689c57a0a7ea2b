//! The checks of a deb-test run: one line per check, the run stops at the first mismatch.

use std::fmt::Debug;
use std::fs;

use super::snap::{Meta, Snap, Theirs};
use super::{BIN, BIN_C, DIVERSIONS, MAN, MAN_C, STAPIO, STATE_DIR, UNIT};
use crate::chroot::Chroot;
use crate::error::{Result, bail};
use crate::files;

/// The test run: the chroot copy, the packaged files, the check counter.
pub(super) struct Run {
    pub(super) ch: Chroot,
    /// The packaged staprun, stapio, staprun(8) and unit (from the staged tree).
    pub(super) bin: Vec<u8>,
    pub(super) stapio: Vec<u8>,
    pub(super) man: Vec<u8>,
    pub(super) unit: Vec<u8>,
    pub(super) deb: String,
    pub(super) newer: String,
    pub(super) newer_version: String,
    pub(super) checks: usize,
}

impl Run {
    pub(super) fn check(&mut self, name: &str, ok: bool, detail: &str) -> Result<()> {
        self.checks += 1;
        let n = self.checks;
        if ok {
            println!("deb-test: {n:>3} ok    {name}: {detail}");
            Ok(())
        } else {
            println!("deb-test: {n:>3} FAIL  {name}: {detail}");
            bail!("check {n} `{name}` failed: {detail}")
        }
    }

    pub(super) fn check_eq<T: PartialEq + Debug>(
        &mut self,
        name: &str,
        got: &T,
        want: &T,
    ) -> Result<()> {
        let detail = if got == want {
            format!("{got:?}")
        } else {
            format!("got {got:?}, want {want:?}")
        };
        self.check(name, got == want, &detail)
    }

    fn same_bytes(&mut self, name: &str, path: &str, want: &[u8], what: &str) -> Result<()> {
        let got = fs::read(self.ch.root.join(&path[1..])).ok();
        let detail = match &got {
            Some(g) if g == want => format!("{path}: {} bytes, {what}", g.len()),
            Some(g) => format!("{path}: {} bytes, not {what}", g.len()),
            None => format!("{path} missing"),
        };
        self.check(name, got.as_deref() == Some(want), &detail)
    }

    pub(super) fn sh(&mut self, script: &str) -> Result<String> {
        self.ch.sh(script)
    }

    /// Our staprun, stapio and staprun(8) in place, the C ones (if `theirs`) at the diverted
    /// names, exactly as recorded; without them, `parked` is the override on the diverted name.
    pub(super) fn expect_ours(
        &mut self,
        step: &str,
        theirs: Option<&Theirs>,
        parked: Option<&str>,
    ) -> Result<()> {
        let s = Snap::take(&mut self.ch)?;
        let bin = self.bin.clone();
        self.same_bytes(
            &format!("{step}: /usr/bin/staprun is ours"),
            BIN,
            &bin,
            "the packaged staprun",
        )?;
        self.check_eq(
            &format!("{step}: /usr/bin/staprun mode"),
            &s.meta(BIN),
            &Some(Meta::new(0o4110, "root", "stapusr")),
        )?;
        self.check_eq(
            &format!("{step}: statoverride of /usr/bin/staprun"),
            &s.overrides.get(BIN).cloned(),
            &Some("root stapusr 4110".to_owned()),
        )?;
        let stapio = self.stapio.clone();
        self.same_bytes(
            &format!("{step}: stapio is ours"),
            STAPIO,
            &stapio,
            "the packaged stapio",
        )?;
        self.check_eq(
            &format!("{step}: stapio mode"),
            &s.meta(STAPIO),
            &Some(Meta::new(0o755, "root", "root")),
        )?;
        let man = self.man.clone();
        self.same_bytes(
            &format!("{step}: staprun(8) is ours"),
            MAN,
            &man,
            "the packaged page",
        )?;
        let unit = self.unit.clone();
        self.same_bytes(
            &format!("{step}: staprun@.service"),
            UNIT,
            &unit,
            "the packaged unit",
        )?;
        self.check_eq(
            &format!("{step}: staprun@.service mode"),
            &s.meta(UNIT),
            &Some(Meta::new(0o644, "root", "root")),
        )?;
        self.check_eq(
            &format!("{step}: dpkg-divert --list"),
            &s.diversions,
            &DIVERSIONS.map(str::to_owned).to_vec(),
        )?;
        self.check_eq(
            &format!("{step}: staprun-rs installed"),
            &s.status("staprun-rs"),
            &"ii",
        )?;
        match theirs {
            Some(t) => {
                self.check_eq(
                    &format!("{step}: systemtap-runtime still installed"),
                    &s.status("systemtap-runtime"),
                    &"ii",
                )?;
                self.same_bytes(
                    &format!("{step}: C staprun at {BIN_C}"),
                    BIN_C,
                    &t.bin,
                    "systemtap-runtime's staprun",
                )?;
                let got = s.meta(BIN_C);
                self.check_eq(
                    &format!("{step}: C staprun mode as recorded"),
                    &got,
                    &Some(t.meta.clone()),
                )?;
                let added = got.as_ref().map_or(0, |m| m.mode & !t.meta.mode);
                self.check(
                    &format!("{step}: C staprun gained no mode bit"),
                    added == 0,
                    &format!("bits not in the recorded {:04o}: {added:04o}", t.meta.mode),
                )?;
                self.check_eq(
                    &format!("{step}: C statoverride parked on {BIN_C}"),
                    &s.overrides.get(BIN_C).cloned(),
                    &t.statoverride,
                )?;
                self.same_bytes(
                    &format!("{step}: C staprun(8) at staprun.systemtap.8.gz"),
                    MAN_C,
                    &t.man,
                    "systemtap-runtime's page",
                )?;
            }
            None => {
                self.check_eq(
                    &format!("{step}: no file at the diverted names"),
                    &(s.meta(BIN_C), s.meta(MAN_C)),
                    &(None, None),
                )?;
                self.check_eq(
                    &format!("{step}: statoverride of {BIN_C}"),
                    &s.overrides.get(BIN_C).map(String::as_str),
                    &parked,
                )?;
            }
        }
        Ok(())
    }

    /// Ours gone (`status`: "rc" after remove, "not installed" after purge), the C staprun
    /// back at /usr/bin/staprun exactly as recorded.
    pub(super) fn expect_theirs_back(
        &mut self,
        step: &str,
        t: &Theirs,
        status: &str,
    ) -> Result<()> {
        let s = Snap::take(&mut self.ch)?;
        self.same_bytes(
            &format!("{step}: /usr/bin/staprun is the C staprun again"),
            BIN,
            &t.bin,
            "systemtap-runtime's staprun",
        )?;
        self.check_eq(
            &format!("{step}: C staprun mode as recorded"),
            &s.meta(BIN),
            &Some(t.meta.clone()),
        )?;
        self.check_eq(
            &format!("{step}: statoverride of /usr/bin/staprun as recorded"),
            &s.overrides.get(BIN).cloned(),
            &t.statoverride,
        )?;
        self.same_bytes(
            &format!("{step}: staprun(8) is the C one again"),
            MAN,
            &t.man,
            "systemtap-runtime's page",
        )?;
        self.check_eq(
            &format!("{step}: nothing at the diverted names, no diversion"),
            &(
                s.meta(BIN_C),
                s.meta(MAN_C),
                s.overrides.get(BIN_C).cloned(),
                s.diversions.clone(),
            ),
            &(None, None, None, Vec::new()),
        )?;
        self.check_eq(
            &format!("{step}: stapio, {STATE_DIR} and the unit gone"),
            &(s.meta(STAPIO), s.meta(STATE_DIR), s.meta(UNIT)),
            &(None, None, None),
        )?;
        self.check_eq(
            &format!("{step}: packages"),
            &(s.status("staprun-rs"), s.status("systemtap-runtime")),
            &(status, "ii"),
        )
    }

    /// Records the C staprun and its page as they are at /usr/bin/staprun.
    pub(super) fn record_theirs(&mut self, step: &str) -> Result<Theirs> {
        let s = Snap::take(&mut self.ch)?;
        let meta = s
            .meta(BIN)
            .ok_or_else(|| format!("{step}: systemtap-runtime left no {BIN}"))?;
        let t = Theirs {
            bin: files::read(&self.ch.root.join(&BIN[1..]))?,
            meta,
            statoverride: s.overrides.get(BIN).cloned(),
            man: files::read(&self.ch.root.join(&MAN[1..]))?,
        };
        self.check(
            &format!("{step}: C staprun recorded"),
            t.bin != self.bin,
            &format!(
                "{} bytes, {}, statoverride {}",
                t.bin.len(),
                t.meta,
                t.statoverride.as_deref().unwrap_or("none")
            ),
        )?;
        Ok(t)
    }

    pub(super) fn apt(&mut self, args: &str) -> Result<String> {
        self.sh(&format!(
            "cd /tmp && apt-get -y -q -o DPkg::Lock::Timeout=120 {args}"
        ))
    }
}
