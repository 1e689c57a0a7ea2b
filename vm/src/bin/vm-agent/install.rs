//! The package and the install, in a guest (`cargo xtask vm-install-test`, vm/tests/install.rs).
//!
//! The image is the vm-prepare initramfs plus /dist (the .deb and the test stubs of
//! packaging/test-stubs), the host's ld.so/libc/libgcc_s (the packaged binaries are dynamically
//! linked, as Debian builds them) and /usr/local from `cargo xtask install --prefix /usr/local
//! --layout 775 --destdir`.
//!
//! Real: the .deb as built, unpacked by busybox `dpkg-deb -x`/`-e`; its postinst and postrm run
//! unchanged under busybox sh with the arguments Debian's dpkg passes (`configure`, `purge`);
//! staprun/stapio from the package; the kernel; syslog through busybox syslogd.
//! Stubbed: `dpkg-statoverride`, `addgroup` and `getent` (packaging/test-stubs/README.md); the
//! removal of the package's files before `postrm purge` is done here, as dpkg would.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::{
    self, ALICE, BOB, END, HELLO, Out, ROOT, Reporter, STAPDEV, STAPUSR, Scenario, blessed_dir,
    install_fixture, rmmod, run, run_as, sha256_file,
};

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("install_deb", install_deb),
    ("install_prefix", install_prefix),
];

const DEB: &str = "/dist/staprun-rs.deb";
const CALLS: &str = "/tmp/stub-calls.log";
const MESSAGES: &str = "/tmp/messages";
const CONTROL: &str = "/tmp/DEBIAN";
const STUB_PATH: &str = "/dist/stubs:/usr/sbin:/usr/bin:/sbin:/bin";

fn log_out(r: &mut Reporter, prompt: &str, out: &Out) {
    r.log(prompt);
    for l in out.stdout.lines() {
        r.log(&format!("  {l}"));
    }
    for l in out.stderr.lines() {
        r.log(&format!("  [stderr] {l}"));
    }
    r.log(&format!("  [exit {:?}]", out.code));
}

fn root(argv: &[&str]) -> Out {
    run_as(&ROOT, argv, &[])
}

/// A maintainer script run as dpkg runs it: `sh SCRIPT ARG`, as root, stubs first on PATH.
fn maintainer_script(r: &mut Reporter, script: &str, arg: &str) -> Out {
    let path = format!("{CONTROL}/{script}");
    let out = run(
        harness::command_as(&ROOT, &["/bin/sh", &path, arg], &[("PATH", STUB_PATH)]),
        Duration::from_secs(30),
    );
    log_out(r, &format!("# {script} {arg}"), &out);
    out
}

/// busybox syslogd writing to MESSAGES; killed on drop.
struct Syslogd(Option<harness::Running>);

impl Drop for Syslogd {
    fn drop(&mut self) {
        if let Some(mut s) = self.0.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

fn start_syslogd(r: &mut Reporter) -> Syslogd {
    let _ = fs::remove_file("/dev/log");
    let _ = fs::remove_file(MESSAGES);
    let mut cmd = std::process::Command::new("/bin/busybox");
    cmd.args(["syslogd", "-n", "-O", MESSAGES]);
    let s = harness::spawn(cmd).ok();
    let up = s.is_some()
        && harness::wait_until(Duration::from_secs(5), || Path::new("/dev/log").exists());
    r.check(
        "syslogd_listening_on_dev_log",
        up,
        "busybox syslogd -n -O /tmp/messages",
    );
    Syslogd(s)
}

/// The staprun lines syslogd wrote, once `want` is among them (or after 5 s).
fn staprun_log(want: &str) -> Vec<String> {
    let read = || {
        fs::read_to_string(MESSAGES)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" staprun["))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    harness::wait_until(Duration::from_secs(5), || {
        read().iter().any(|l| l.contains(want))
    });
    read()
}

/// LOAD, DENY and UNLOAD lines for alice's runs of `module` from `dir`.
fn check_audit(r: &mut Reporter, tag: &str, module_path: &Path, denied_path: Option<&str>) {
    let lines = staprun_log("UNLOAD ");
    r.log(&format!("# staprun lines in {MESSAGES}:"));
    for l in &lines {
        r.log(&format!("  {l}"));
    }
    let sha = sha256_file(module_path);
    let load = format!(
        "LOAD user=\"alice\" uid=1001 class=\"stapusr\" module=pmod path=\"{}\" sha256={sha} rule=\"BlessedModule\"",
        module_path.display()
    );
    let found = lines
        .iter()
        .any(|l| l.contains("authpriv.notice") && l.ends_with(&load));
    r.check(
        &format!("{tag}_audit_load_line"),
        found && sha.len() == 64,
        format!("want authpriv.notice ... {load}"),
    );
    if let Some(p) = denied_path {
        let deny = format!("DENY user=\"alice\" uid=1001 class=\"stapusr\" path=\"{p}\" reason=");
        r.check(
            &format!("{tag}_audit_deny_line"),
            lines
                .iter()
                .any(|l| l.contains("authpriv.warn") && l.contains(&deny)),
            format!("want authpriv.warn ... {deny}\"...\""),
        );
    }
    let unload = "UNLOAD user=\"alice\" uid=1001 class=\"stapusr\" module=pmod";
    r.check(
        &format!("{tag}_audit_unload_line"),
        lines
            .iter()
            .any(|l| l.contains("authpriv.notice") && l.ends_with(unload)),
        format!("want authpriv.notice ... {unload}"),
    );
}

/// alice runs `staprun pmod` to its end; the module must be gone after.
fn alice_runs(r: &mut Reporter, tag: &str, staprun: &str) {
    let out = harness::run(
        harness::command_as(&ALICE, &[staprun, "pmod"], &[]),
        Duration::from_secs(60),
    );
    log_out(r, &format!("alice$ {staprun} pmod"), &out);
    let ok = out.code == Some(0) && out.stdout.contains(HELLO) && out.stdout.contains(END);
    r.check(&format!("{tag}_alice_runs_pmod"), ok, out.summary());
    r.check(
        &format!("{tag}_pmod_unloaded"),
        !harness::is_loaded("pmod"),
        "pmod not in /proc/modules after the run",
    );
    if harness::is_loaded("pmod") {
        let _ = rmmod("pmod");
    }
}

fn remove_image_product(r: &mut Reporter) {
    for p in ["/usr/bin/staprun", "/usr/libexec/staprun/stapio"] {
        let _ = fs::remove_file(p);
        r.check(
            &format!("image_copy_removed {p}"),
            !Path::new(p).exists(),
            "the vm-prepare (static) copy is gone",
        );
    }
}

fn is_dynamic(path: &str) -> bool {
    fs::read(path).is_ok_and(|b| b.windows(27).any(|w| w == b"/lib64/ld-linux-x86-64.so.2"))
}

fn calls() -> Vec<String> {
    fs::read_to_string(CALLS)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn install_deb(r: &mut Reporter) {
    if !r.check("deb_present", Path::new(DEB).is_file(), DEB) {
        return;
    }
    let _ = fs::write(
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\n",
    );
    let info = root(&["/bin/busybox", "dpkg-deb", "-f", DEB]);
    log_out(r, &format!("# dpkg-deb -f {DEB}"), &info);
    let field = |name: &str| {
        info.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_default()
            .to_owned()
    };
    r.check_eq("deb_package", field("Package"), "staprun-rs".to_owned());
    // It coexists with systemtap-runtime (a diversion of /usr/bin/staprun,
    // see docs/packaging.md; tested with real dpkg by `cargo xtask deb-test`).
    r.check_eq("deb_no_conflicts", field("Conflicts"), String::new());
    r.check(
        "deb_depends",
        field("Depends").contains("libc6") && field("Depends").contains("adduser"),
        field("Depends"),
    );

    // A system without our programs, the stapdev group or the blessed directory.
    remove_image_product(r);
    let _ = fs::remove_dir_all(blessed_dir());
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    let without: String = group
        .lines()
        .filter(|l| !l.starts_with("stapdev:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let _ = fs::write("/etc/group", without);
    let _ = fs::remove_file(CALLS);

    // Unpack, as dpkg does before configuring.
    let x = root(&["/bin/busybox", "dpkg-deb", "-x", DEB, "/"]);
    r.check("deb_unpacked", x.code == Some(0), x.summary());
    let e = root(&["/bin/busybox", "dpkg-deb", "-e", DEB, CONTROL]);
    r.check("deb_control_extracted", e.code == Some(0), e.summary());
    r.check_eq(
        "unpacked_staprun_0755_root_root",
        harness::stat("/usr/bin/staprun"),
        Some((0o755, 0, 0)),
    );
    r.check(
        "packaged_staprun_is_dynamically_linked",
        is_dynamic("/usr/bin/staprun") && is_dynamic("/usr/libexec/staprun/stapio"),
        "PT_INTERP /lib64/ld-linux-x86-64.so.2",
    );

    let out = maintainer_script(r, "postinst", "configure");
    r.check(
        "postinst_configure_exit_0",
        out.code == Some(0),
        out.summary(),
    );
    let c = calls();
    r.log("# stub calls:");
    for l in &c {
        r.log(&format!("  {l}"));
    }
    let has = |s: &str| c.iter().any(|l| l == s);
    r.check(
        "postinst_creates_only_missing_group",
        has("addgroup --system stapdev")
            && !has("addgroup --system stapusr")
            && !has("addgroup --system stapsys"),
        format!("{c:?}"),
    );
    r.check(
        "postinst_stapdev_group_exists",
        fs::read_to_string("/etc/group")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("stapdev:")),
        "/etc/group",
    );
    r.check(
        "postinst_statoverride_add",
        has("dpkg-statoverride --update --add root stapusr 4110 /usr/bin/staprun"),
        format!("{c:?}"),
    );
    r.check_eq(
        "staprun_04110_root_stapusr",
        harness::stat("/usr/bin/staprun"),
        Some((0o4110, 0, STAPUSR)),
    );
    r.check_eq(
        "stapio_0755_root_root",
        harness::stat("/usr/libexec/staprun/stapio"),
        Some((0o755, 0, 0)),
    );
    r.check_eq(
        "postinst_blessed_dir_755_root_root",
        harness::stat(blessed_dir()),
        Some((0o755, 0, 0)),
    );

    // Reconfiguring keeps the override that is there.
    let again = maintainer_script(r, "postinst", "configure");
    let adds = calls().iter().filter(|l| l.contains("--add")).count();
    r.check(
        "postinst_again_keeps_override",
        again.code == Some(0) && adds == 1,
        format!("exit {:?}, {adds} --add call(s)", again.code),
    );

    for (p, needle) in [
        ("/usr/share/man/man8/staprun.8.gz", "SECURITY"),
        ("/usr/share/man/man8/stapio.8.gz", "stapio"),
    ] {
        let out = root(&["/bin/busybox", "zcat", p]);
        r.check(
            &format!("man_page {p}"),
            out.code == Some(0) && out.stdout.contains(needle),
            format!("zcat {p}: {needle}"),
        );
    }
    for p in [
        "/usr/share/bash-completion/completions/staprun",
        "/usr/share/zsh/vendor-completions/_staprun",
        "/usr/share/fish/vendor_completions.d/staprun.fish",
    ] {
        r.check(&format!("completion {p}"), Path::new(p).is_file(), p);
    }

    // The administrator publishes pmod; alice (stapusr) runs it with the packaged binaries.
    let syslogd = start_syslogd(r);
    let ko = blessed_dir().join("pmod.ko");
    let published = install_fixture("pmod", &ko, 0o644, 0, 0);
    r.check(
        "admin_publishes_pmod",
        published.is_ok(),
        format!("{published:?}"),
    );
    let explain = run_as(&ALICE, &["/usr/bin/staprun", "--explain", "pmod"], &[]);
    log_out(r, "alice$ staprun --explain pmod", &explain);
    r.check(
        "alice_explain_allowed",
        explain.code == Some(0),
        explain.summary(),
    );
    alice_runs(r, "deb", "/usr/bin/staprun");
    let denied = run_as(&ALICE, &["/usr/bin/staprun", "/fixtures/pmod.ko"], &[]);
    log_out(r, "alice$ staprun /fixtures/pmod.ko", &denied);
    r.check(
        "alice_refused_outside_blessed_dir",
        denied.code == Some(255) && denied.stderr.contains("Permission denied"),
        denied.summary(),
    );
    check_audit(r, "deb", &ko, Some("/fixtures/pmod.ko"));
    drop(syslogd);

    // Purge: dpkg removes the files, then runs postrm purge.
    let list = root(&["/bin/busybox", "dpkg-deb", "-c", DEB]);
    for l in list.stdout.lines().filter(|l| l.starts_with('-')) {
        if let Some(p) = l.split_whitespace().last() {
            let _ = fs::remove_file(p.trim_start_matches('.'));
        }
    }
    let out = maintainer_script(r, "postrm", "purge");
    r.check("postrm_purge_exit_0", out.code == Some(0), out.summary());
    r.check(
        "postrm_purge_removes_statoverride",
        calls()
            .iter()
            .any(|l| l == "dpkg-statoverride --remove /usr/bin/staprun")
            && !fs::read_to_string("/var/lib/dpkg/statoverride")
                .unwrap_or_default()
                .contains("/usr/bin/staprun"),
        format!("{:?}", calls()),
    );
    r.check(
        "purge_keeps_blessed_dir",
        blessed_dir().is_dir(),
        blessed_dir().display().to_string(),
    );
}

pub fn install_prefix(r: &mut Reporter) {
    let staprun = "/usr/local/bin/staprun";
    let stapio = "/usr/local/libexec/staprun/stapio";
    r.check_eq(
        "installed_staprun_04110_root_stapusr",
        harness::stat(staprun),
        Some((0o4110, 0, STAPUSR)),
    );
    r.check_eq(
        "installed_stapio_0755_root_root",
        harness::stat(stapio),
        Some((0o755, 0, 0)),
    );
    for p in [
        "/usr/local/share/man/man8/staprun.8.gz",
        "/usr/local/share/man/man8/stapio.8.gz",
        "/usr/local/share/bash-completion/completions/staprun",
        "/usr/local/share/zsh/site-functions/_staprun",
        "/usr/local/share/fish/vendor_completions.d/staprun.fish",
    ] {
        r.check(&format!("installed {p}"), Path::new(p).is_file(), p);
    }
    let _ = fs::write("/etc/nsswitch.conf", "passwd: files\ngroup: files\n");
    // Without /usr/bin/staprun and /usr/libexec/staprun/stapio, a run that works used the
    // /usr/local paths compiled in (staprun -> stapio, and stapio -> staprun -d).
    remove_image_product(r);
    // The 775 root:stapdev layout: bob (stapdev) publishes, alice (stapusr) runs.
    let d = blessed_dir();
    let layout = root(&["/bin/chown", "root:stapdev", &d.display().to_string()]).code == Some(0)
        && root(&["/bin/chmod", "775", &d.display().to_string()]).code == Some(0);
    r.check_eq(
        "blessed_dir_775_root_stapdev",
        (layout, harness::stat(&d)),
        (true, Some((0o775, 0, STAPDEV))),
    );
    let ko = d.join("pmod.ko");
    let cp = run_as(
        &BOB,
        &["/bin/cp", "/fixtures/pmod.ko", &ko.display().to_string()],
        &[],
    );
    r.check(
        "bob_publishes_pmod",
        cp.code == Some(0) && harness::stat(&ko).is_some_and(|s| s.1 == BOB.uid),
        cp.summary(),
    );
    let syslogd = start_syslogd(r);
    alice_runs(r, "prefix", staprun);
    let lines = staprun_log("UNLOAD ");
    r.log(&format!("# staprun lines in {MESSAGES}:"));
    for l in &lines {
        r.log(&format!("  {l}"));
    }
    let sha = sha256_file(&ko);
    r.check(
        "prefix_audit_load_line",
        lines.iter().any(|l| {
            l.contains("LOAD user=\"alice\"")
                && l.contains(&format!("sha256={sha}"))
                && l.contains("rule=\"BlessedModule\"")
        }),
        format!("LOAD ... sha256={sha}"),
    );
    r.check(
        "prefix_audit_unload_line",
        lines
            .iter()
            .any(|l| l.ends_with("UNLOAD user=\"alice\" uid=1001 class=\"stapusr\" module=pmod")),
        "UNLOAD by /usr/local/bin/staprun -d",
    );
    drop(syslogd);
}
