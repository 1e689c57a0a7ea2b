//! The deb-test scenario: steps 1 to 6 of the module documentation.

use std::time::Instant;

use super::checks::Run;
use super::snap::Snap;
use super::{BIN, BIN_C, EXAMPLE, MAN, MAN_C, STAPIO, STATE_DIR, UNIT};
use crate::error::Result;

impl Run {
    pub(super) fn scenario(&mut self) -> Result<()> {
        let (deb, newer, newer_version) = (
            self.deb.clone(),
            self.newer.clone(),
            self.newer_version.clone(),
        );
        self.apt("update")?;

        // 1. No systemtap-runtime: the package installs and purges as it always did.
        let step = "1 ours alone";
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(step, None, None)?;
        let groups = self.sh("getent group stapusr stapsys stapdev | cut -d: -f1")?;
        self.check_eq(
            &format!("{step}: groups"),
            &groups.split_whitespace().collect::<Vec<_>>(),
            &vec!["stapusr", "stapsys", "stapdev"],
        )?;
        let step = "1 ours purged";
        self.apt("purge staprun-rs")?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}: files gone"),
            &[BIN, BIN_C, MAN, MAN_C, STAPIO, STATE_DIR, UNIT].map(|p| s.meta(p)),
            &[None, None, None, None, None, None, None],
        )?;
        self.check_eq(
            &format!("{step}: no diversion, no statoverride"),
            &(s.diversions.clone(), s.overrides.get(BIN).cloned()),
            &(Vec::new(), None),
        )?;
        self.check_eq(
            &format!("{step}: staprun-rs"),
            &s.status("staprun-rs"),
            &"not installed",
        )?;

        // 2. systemtap-runtime from the archive, then ours next to it.
        let step = "2 systemtap-runtime";
        self.apt("install systemtap-runtime")?;
        let theirs = self.record_theirs(step)?;
        let step = "2 ours next to systemtap-runtime";
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(step, Some(&theirs), None)?;

        // 3. Reinstalling either keeps ours in place; so does a newer version of ours.
        self.apt("install --reinstall systemtap-runtime")?;
        self.expect_ours("3 systemtap-runtime reinstalled", Some(&theirs), None)?;
        self.apt(&format!("install --reinstall ./{deb}"))?;
        self.expect_ours("3 ours reinstalled", Some(&theirs), None)?;
        let step = "3 ours upgraded";
        self.apt(&format!("install ./{newer}"))?;
        self.expect_ours(step, Some(&theirs), None)?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}: version"),
            &s.status.get("staprun-rs").map(|(_, v)| v.clone()),
            &Some(newer_version.clone()),
        )?;

        // 4. Remove, purge: the C staprun comes back as it was.
        self.apt("remove staprun-rs")?;
        self.expect_theirs_back("4 ours removed", &theirs, "rc")?;
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours("4 ours installed again", Some(&theirs), None)?;
        self.apt("purge staprun-rs")?;
        self.expect_theirs_back("4 ours purged", &theirs, "not installed")?;

        // An administrator took the setuid bit away from the C staprun: dpkg gives the C file
        // the override of /usr/bin/staprun (ours) on every unpack, and our trigger takes it back.
        let step = "4 C staprun without setuid";
        self.sh("dpkg-statoverride --remove /usr/bin/staprun || true
             dpkg-statoverride --update --add root root 0755 /usr/bin/staprun")?;
        let admin = self.record_theirs(step)?;
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(&format!("{step}, ours installed"), Some(&admin), None)?;
        self.apt("install --reinstall systemtap-runtime")?;
        self.expect_ours(
            &format!("{step}, systemtap-runtime reinstalled"),
            Some(&admin),
            None,
        )?;
        self.apt("purge staprun-rs")?;
        self.expect_theirs_back(&format!("{step}, ours purged"), &admin, "not installed")?;

        // systemtap-runtime purged (it has no postrm): its override stays, without a file. Ours
        // parks it, and gives it back.
        let step = "4 override left by a purged systemtap-runtime";
        self.sh("dpkg-statoverride --remove /usr/bin/staprun
             dpkg-statoverride --update --add root stapusr 4754 /usr/bin/staprun")?;
        self.apt("purge systemtap-runtime")?;
        let s = Snap::take(&mut self.ch)?;
        let leftover = s.overrides.get(BIN).cloned();
        self.check_eq(
            &format!("{step}: {BIN} gone, its override left"),
            &(s.meta(BIN), leftover.as_deref()),
            &(None, theirs.statoverride.as_deref()),
        )?;
        self.apt(&format!("install ./{deb}"))?;
        self.expect_ours(
            &format!("{step}, ours installed"),
            None,
            leftover.as_deref(),
        )?;
        self.apt("purge staprun-rs")?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}, ours purged: files gone, the override back"),
            &(
                [BIN, BIN_C, MAN, MAN_C, STAPIO, STATE_DIR, UNIT].map(|p| s.meta(p)),
                s.overrides.get(BIN).cloned(),
                s.overrides.get(BIN_C).cloned(),
                s.diversions.clone(),
            ),
            &(
                [None, None, None, None, None, None, None],
                leftover,
                None,
                Vec::new(),
            ),
        )?;

        // Both unpacked in one run, systemtap-runtime configured first: its postinst registers
        // its override on /usr/bin/staprun, which our postinst parks.
        let step = "4 one dpkg run, systemtap-runtime configured first";
        self.sh("for f in /usr/bin/staprun /usr/bin/stapbpf; do
                 if dpkg-statoverride --list $f >/dev/null; then dpkg-statoverride --remove $f; fi
             done")?;
        self.sh(&format!(
            "cd /tmp
             dpkg --unpack ./{deb}
             dpkg --unpack /var/cache/apt/archives/systemtap-runtime_*.deb
             dpkg --configure systemtap-runtime
             dpkg --configure staprun-rs"
        ))?;
        self.expect_ours(step, Some(&theirs), None)?;
        self.apt("purge staprun-rs")?;
        self.expect_theirs_back(&format!("{step}, ours purged"), &theirs, "not installed")?;

        // 5. The translator (depends on systemtap-runtime) next to ours.
        let step = "5 systemtap";
        self.apt(&format!("install ./{deb}"))?;
        let sim = self.apt("-s install systemtap")?;
        let removes: Vec<&str> = sim.lines().filter(|l| l.starts_with("Remv ")).collect();
        self.check(
            &format!("{step}: apt-get -s install systemtap removes nothing"),
            removes.is_empty() && sim.lines().any(|l| l.starts_with("Inst systemtap ")),
            &if removes.is_empty() {
                format!(
                    "{} packages to install",
                    sim.lines().filter(|l| l.starts_with("Inst ")).count()
                )
            } else {
                removes.join("; ")
            },
        )?;
        let t = Instant::now();
        self.apt("install systemtap")?;
        let s = Snap::take(&mut self.ch)?;
        self.check_eq(
            &format!("{step}: installed"),
            &(
                s.status("systemtap"),
                s.status("systemtap-runtime"),
                s.status("staprun-rs"),
            ),
            &("ii", "ii", "ii"),
        )?;
        println!(
            "deb-test:       (apt-get install systemtap took {:.1}s)",
            t.elapsed().as_secs_f64()
        );
        self.expect_ours(step, Some(&theirs), None)?;
        self.unit_with_systemd()
    }

    /// Step 6: the unit, read by the real systemd tools of bookworm (systemd is installed in
    /// the chroot but not running: `systemd-analyze verify` loads the unit offline, `systemctl
    /// enable` only makes links).
    fn unit_with_systemd(&mut self) -> Result<()> {
        let step = "6 staprun@.service";
        self.apt("install systemd")?;
        let version = self.sh("systemctl --version | head -n 1")?;
        println!("deb-test:       ({})", version.trim());
        // A stapusr member, and the packaged example drop-in naming them.
        self.sh(&format!(
            "getent passwd alice >/dev/null || useradd --create-home --groups stapusr alice
             mkdir -p /etc/systemd/system/staprun@pmod.service.d
             cp {EXAMPLE} /etc/systemd/system/staprun@pmod.service.d/override.conf"
        ))?;
        let verify =
            self.sh("systemd-analyze verify --man=no staprun@pmod.service 2>&1; echo \"exit $?\"")?;
        self.check_eq(
            &format!("{step}: systemd-analyze verify staprun@pmod.service (example drop-in)"),
            &verify.trim(),
            &"exit 0",
        )?;
        // What systemd runs comes from the template and the drop-in together.
        let shown = self.sh(
            "grep -h -E '^(User|ExecStart|ExecStartPre|KillMode|WantedBy)=' \
                 /lib/systemd/system/staprun@.service \
                 /etc/systemd/system/staprun@pmod.service.d/override.conf | cut -c1-72",
        )?;
        let lines: Vec<&str> = shown.lines().collect();
        self.check(
            &format!("{step}: ExecStart, the root guard, KillMode=mixed, User=alice"),
            lines.iter().any(|l| {
                l.starts_with("ExecStart=/usr/bin/staprun $STAPRUN_OPTIONS -- /lib/modules/%v/")
            }) && lines
                .iter()
                .any(|l| l.starts_with("ExecStartPre=/bin/sh -c"))
                && lines.contains(&"KillMode=mixed")
                && lines.contains(&"User=alice")
                && lines.contains(&"WantedBy=multi-user.target"),
            &format!("{lines:?}"),
        )?;
        let link = "/etc/systemd/system/multi-user.target.wants/staprun@pmod.service";
        self.sh("systemctl enable staprun@pmod.service")?;
        let enabled = self.sh(&format!(
            "systemctl is-enabled staprun@pmod.service; readlink {link}"
        ))?;
        self.check_eq(
            &format!("{step}: systemctl enable staprun@pmod (WantedBy=multi-user.target)"),
            &enabled.lines().collect::<Vec<_>>(),
            &vec!["enabled", UNIT],
        )?;
        self.sh("systemctl disable staprun@pmod.service")?;
        let disabled = self.sh(&format!(
            "systemctl is-enabled staprun@pmod.service || true; test ! -e {link} && echo 'no link'"
        ))?;
        self.check_eq(
            &format!("{step}: systemctl disable staprun@pmod"),
            &disabled.lines().collect::<Vec<_>>(),
            &vec!["disabled", "no link"],
        )
    }
}
