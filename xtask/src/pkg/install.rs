//! `install` and `uninstall`: staprun 04110 root:stapusr and stapio 0755 at the paths fixed at
//! build time (`STAPRUN_PATH`, `STAPIO_PATH`, from `--prefix`), the stapusr/stapsys/stapdev
//! groups, the blessed directory for the running kernel, man pages and completions, and the
//! systemd unit `staprun@.service` for the prefixes systemd searches (/usr, /usr/local).

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown};
use std::path::{Path, PathBuf};

use super::dist::{self, Paths};
use crate::cmd::{self, cmd, is_root, workspace_root};
use crate::error::{Context as _, Error, Result, bail};
use crate::files;
use crate::vm::{STAPDEV, STAPSYS, STAPUSR};

/// The SystemTap groups, with the gids Fedora/RHEL register for them (tried first, and used
/// for a `--destdir` tree without an etc/group of its own; the test image uses them too).
pub const GROUPS: [(&str, u32); 3] = [
    ("stapusr", STAPUSR),
    ("stapsys", STAPSYS),
    ("stapdev", STAPDEV),
];

/// Layout of the blessed directory `/lib/modules/$(uname -r)/systemtap`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 755 root:root: only root publishes modules.
    #[value(name = "755")]
    RootOnly,
    /// 775 root:stapdev: members of stapdev publish modules.
    #[value(name = "775")]
    Stapdev,
}

#[derive(clap::Args, Clone, Debug)]
#[group(id = "install_options")]
pub struct Options {
    /// Installation prefix: staprun goes to PREFIX/bin, stapio to PREFIX/libexec/staprun, and
    /// both are built with these paths compiled in.
    #[arg(long, value_name = "DIR", default_value = "/usr")]
    pub prefix: PathBuf,
    /// Stage under DIR instead of / (for packagers; no group is created, ownership is set
    /// only when run as root).
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// Blessed directory layout: 755 (root:root) or 775 (root:stapdev). Without it a missing
    /// directory is created 755 and an existing one is left as it is.
    #[arg(long, value_enum, value_name = "755|775")]
    pub layout: Option<Layout>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct UninstallOptions {
    /// The prefix given to install.
    #[arg(long, value_name = "DIR", default_value = "/usr")]
    pub prefix: PathBuf,
    /// The destdir given to install.
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
}

/// gid of `name` in `root`/etc/group.
pub fn group_gid(root: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(root.join("etc/group"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1).and_then(|g| g.parse().ok()))?
        })
}

/// Writes `data` to `dst` through a temporary file renamed into place (a running copy is never
/// modified); ownership (when `owner` is given) before the mode, as chown clears set-id bits.
pub fn put(dst: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    files::mkdir(dst.parent().unwrap_or(Path::new("/")))?;
    let tmp = dst.with_extension("xtask-new");
    files::write(&tmp, data)?;
    if let Some((uid, gid)) = owner {
        chown(&tmp, Some(uid), Some(gid)).map_err(|e| Error::io("chown", &tmp, e))?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", &tmp, e))?;
    files::rename(&tmp, dst)?;
    let own = owner.map_or(String::new(), |(u, g)| format!(" {u}:{g}"));
    eprintln!("xtask: installed {} {mode:04o}{own}", dst.display());
    Ok(())
}

/// The unit template as shipped (packaging/systemd/staprun@.service): it runs `/usr/bin/staprun`.
pub const UNIT_SOURCE: &str = "packaging/systemd/staprun@.service";
/// The unit's file name.
pub const UNIT_NAME: &str = "staprun@.service";
/// The staprun path the unit template names (on its ExecStart= and ExecStopPost= lines).
const UNIT_STAPRUN: &str = "/usr/bin/staprun";

/// Where `install` puts the unit, relative to the root of the install: `PREFIX/lib/systemd/system`
/// for the two prefixes whose unit directory systemd searches (/usr/lib/systemd/system and
/// /usr/local/lib/systemd/system); None for any other prefix (systemd would not find it there).
pub fn unit_path(paths: &Paths) -> Option<PathBuf> {
    let p = paths.prefix.strip_prefix("/").unwrap_or(&paths.prefix);
    [Path::new("/usr"), Path::new("/usr/local")]
        .contains(&paths.prefix.as_path())
        .then(|| p.join("lib/systemd/system").join(UNIT_NAME))
}

/// The unit template's text for `paths`: it runs `paths.staprun` in place of `/usr/bin/staprun`.
pub fn unit_text(paths: &Paths) -> Result<Vec<u8>> {
    let src = workspace_root().join(UNIT_SOURCE);
    let text = files::read_to_string(&src)?;
    let runs = |t: &str, path: &str| {
        t.lines()
            .filter(|l| l.starts_with("ExecStart=") || l.starts_with("ExecStopPost="))
            .filter(|l| l.contains(path))
            .count()
    };
    if runs(&text, UNIT_STAPRUN) != 2 {
        bail!(
            "{}: expected ExecStart= and ExecStopPost= to run {UNIT_STAPRUN}",
            src.display()
        );
    }
    let staprun = paths.staprun.display().to_string();
    Ok(text.replace(UNIT_STAPRUN, &staprun).into_bytes())
}

/// After a change to the unit files of the running system: `systemctl daemon-reload` when systemd
/// is the init system (advisory: systemd also finds a new unit file by itself).
fn reload_systemd() {
    if !Path::new("/run/systemd/system").is_dir() || vm::which("systemctl").is_none() {
        return;
    }
    match cmd::shell().and_then(|sh| cmd::run(cmd!(sh, "systemctl daemon-reload"))) {
        Ok(()) => eprintln!("xtask: systemctl daemon-reload"),
        Err(e) => eprintln!("xtask: systemctl daemon-reload failed ({e}); run it by hand"),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Builds staprun and stapio (release) with `paths` compiled in; returns the directory holding
/// them. The default prefix builds exactly what `cargo build --release` builds; another prefix
/// builds in its own target directory so the two never overwrite each other.
pub fn build(paths: &Paths) -> Result<PathBuf> {
    let sh = cmd::workspace_shell()?;
    let cargo = cmd::cargo(&sh)
        .args(["build", "--release", "-p", "staprun", "-p", "stapio"])
        .env_remove("STAPIO_PATH")
        .env_remove("STAPRUN_PATH");
    let (cargo, bin) = if paths.is_default() {
        (cargo, vm::target_dir().join("release"))
    } else {
        let tag: String = paths
            .prefix
            .display()
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = dist::dist_dir().join(format!("build{tag}"));
        let cargo = cargo
            .arg("--target-dir")
            .arg(&dir)
            .env("STAPIO_PATH", &paths.stapio)
            .env("STAPRUN_PATH", &paths.staprun);
        (cargo, dir.join("release"))
    };
    eprintln!(
        "xtask: building staprun/stapio with STAPIO_PATH={} STAPRUN_PATH={}",
        paths.stapio.display(),
        paths.staprun.display()
    );
    cmd::run(cargo).context("building staprun/stapio")?;
    // The paths must really be inside the binaries.
    for (bin_name, other) in [("staprun", &paths.stapio), ("stapio", &paths.staprun)] {
        let p = bin.join(bin_name);
        if !contains(&files::read(&p)?, other.as_os_str().as_encoded_bytes()) {
            bail!(
                "{} does not contain the path {}",
                p.display(),
                other.display()
            );
        }
    }
    Ok(bin)
}

/// The root of the install (`/` or the destdir) joined with an absolute path.
fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

/// Creates the missing SystemTap groups with `groupadd --system` (the registered gid first).
fn ensure_groups() -> Result<()> {
    for (name, gid) in GROUPS {
        if group_gid(Path::new("/"), name).is_some() {
            continue;
        }
        let how = format!("groupadd --system {name}");
        if vm::which("groupadd").is_none() {
            bail!(
                "group {name} is missing and groupadd is not installed: create it ({how}, or addgroup --system {name})"
            );
        }
        let sh = cmd::shell()?;
        let gid = gid.to_string();
        let ok = cmd::run(cmd!(sh, "groupadd --system --gid {gid} {name}")).is_ok()
            || cmd::run(cmd!(sh, "groupadd --system {name}")).is_ok();
        if !ok {
            bail!("cannot create group {name}: `{how}` failed");
        }
        eprintln!(
            "xtask: created group {name} (gid {})",
            group_gid(Path::new("/"), name).unwrap_or(0)
        );
    }
    Ok(())
}

/// gid of a SystemTap group for the install: from the target's etc/group, else the registered one.
fn gid_for(root: &Path, name: &str) -> u32 {
    group_gid(root, name).unwrap_or_else(|| {
        GROUPS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, g)| *g)
    })
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> Result<String> {
    files::read_to_string(Path::new("/proc/sys/kernel/osrelease")).map(|s| s.trim().to_owned())
}

/// Creates (or, with an explicit layout, sets) `/lib/modules/$(uname -r)/systemtap`.
fn blessed_dir(root: &Path, layout: Option<Layout>, as_root: bool) -> Result<()> {
    let rel = kernel_release()?;
    let dir = under(
        root,
        &PathBuf::from(format!("/lib/modules/{rel}/systemtap")),
    );
    let existed = dir.is_dir();
    if existed && layout.is_none() {
        let m = fs::metadata(&dir).map_err(|e| Error::io("stat", &dir, e))?;
        eprintln!(
            "xtask: {} exists ({:o} {}:{}), left as it is (pass --layout 755|775 to set it)",
            dir.display(),
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        );
        return Ok(());
    }
    files::mkdir(&dir)?;
    let (mode, gid) = match layout.unwrap_or(Layout::RootOnly) {
        Layout::RootOnly => (0o755, 0),
        Layout::Stapdev => (0o775, gid_for(root, "stapdev")),
    };
    if as_root {
        chown(&dir, Some(0), Some(gid)).map_err(|e| Error::io("chown", &dir, e))?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", &dir, e))?;
    eprintln!(
        "xtask: {} {} {mode:o} 0:{gid}",
        if existed { "set" } else { "created" },
        dir.display()
    );
    Ok(())
}

/// The package that owns `path` on this system, if dpkg knows one.
fn dpkg_owner(path: &Path) -> Option<String> {
    vm::which("dpkg-query")?;
    let sh = cmd::shell().ok()?;
    let out = cmd::output(cmd!(sh, "dpkg-query -S {path}")).ok()?;
    out.lines()
        .next()
        .and_then(|l| l.split(':').next())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn check_target(opts_prefix: &Path, destdir: Option<&Path>) -> Result<(PathBuf, bool)> {
    if !opts_prefix.is_absolute() {
        bail!("--prefix must be absolute, not {}", opts_prefix.display());
    }
    let as_root = is_root();
    if destdir.is_none() && !as_root {
        bail!("installing into / needs root: run it as root, or stage with --destdir DIR");
    }
    Ok((
        destdir.map_or_else(|| PathBuf::from("/"), Path::to_path_buf),
        as_root,
    ))
}

/// Writes the binaries, man pages and completions under `root`. The package uses this too
/// (`staprun_mode` 0755 there: dpkg-statoverride sets 04110 root:stapusr in postinst).
pub fn stage(
    root: &Path,
    paths: &Paths,
    bin: &Path,
    staprun_mode: u32,
    owners: Option<(u32, u32)>,
) -> Result<()> {
    let root_owned = owners.map(|_| (0, 0));
    put(
        &under(root, &paths.stapio),
        &files::read(&bin.join("stapio"))?,
        0o755,
        root_owned,
    )?;
    for (rel, file) in paths.data_files() {
        put(&root.join(rel), &file.render(paths)?, 0o644, root_owned)?;
    }
    // Last, so a failed install leaves no runnable staprun without its stapio.
    put(
        &under(root, &paths.staprun),
        &files::read(&bin.join("staprun"))?,
        staprun_mode,
        owners,
    )
}

pub fn install(opts: &Options) -> Result<()> {
    let (root, as_root) = check_target(&opts.prefix, opts.destdir.as_deref())?;
    let paths = Paths::for_prefix(&opts.prefix);
    if opts.destdir.is_none() {
        for p in [&paths.staprun, &paths.stapio] {
            if let Some(pkg) = dpkg_owner(p) {
                bail!(
                    "{} belongs to the package {pkg}: remove it first (apt remove {pkg}), or install elsewhere with --prefix /usr/local",
                    p.display()
                );
            }
        }
    }
    let bin = build(&paths)?;
    if opts.destdir.is_none() {
        ensure_groups()?;
    }
    let owners = as_root.then(|| (0, gid_for(&root, "stapusr")));
    if !as_root {
        eprintln!(
            "xtask: not root: files are staged with your ownership; staprun must end up 04110 root:stapusr"
        );
    }
    stage(&root, &paths, &bin, 0o4110, owners)?;
    match unit_path(&paths) {
        Some(rel) => {
            put(
                &root.join(rel),
                &unit_text(&paths)?,
                0o644,
                as_root.then_some((0, 0)),
            )?;
            if opts.destdir.is_none() {
                reload_systemd();
            }
        }
        None => eprintln!(
            "xtask: systemd does not look for units under {}: staprun@.service not installed (to use it, install {UNIT_SOURCE} as /etc/systemd/system/{UNIT_NAME} with its ExecStart= and ExecStopPost= naming {})",
            paths.prefix.display(),
            paths.staprun.display()
        ),
    }
    blessed_dir(&root, opts.layout, as_root)?;
    let libexec = paths.stapio.parent().unwrap_or(Path::new("/"));
    if as_root {
        // Directories we may have created: root-owned, 0755.
        for d in [libexec, &paths.prefix.join("bin")] {
            let d = under(&root, d);
            let _ = chown(&d, Some(0), Some(0));
        }
    }
    if opts.destdir.is_none() {
        let st = fs::metadata(&paths.staprun).map_err(|e| Error::io("stat", &paths.staprun, e))?;
        if st.mode() & 0o7777 != 0o4110 || st.uid() != 0 {
            bail!(
                "{} ended up {:o} {}:{} (the file system may be mounted nosuid or not support set-id bits)",
                paths.staprun.display(),
                st.mode() & 0o7777,
                st.uid(),
                st.gid()
            );
        }
        eprintln!(
            "xtask: done; add users to stapusr (usermod -aG stapusr USER) and publish modules in /lib/modules/$(uname -r)/systemtap"
        );
    }
    Ok(())
}

pub fn uninstall(opts: &UninstallOptions) -> Result<()> {
    let (root, _) = check_target(&opts.prefix, opts.destdir.as_deref())?;
    let paths = Paths::for_prefix(&opts.prefix);
    if opts.destdir.is_none() {
        for p in [&paths.staprun, &paths.stapio] {
            if let Some(pkg) = dpkg_owner(p) {
                bail!(
                    "{} belongs to the package {pkg}: use apt remove {pkg}",
                    p.display()
                );
            }
        }
    }
    let mut files = vec![under(&root, &paths.staprun), under(&root, &paths.stapio)];
    files.extend(
        paths
            .data_files()
            .into_iter()
            .map(|(rel, _)| root.join(rel)),
    );
    let unit = unit_path(&paths).map(|rel| root.join(rel));
    files.extend(unit.clone());
    for f in files {
        match fs::remove_file(&f) {
            Ok(()) => eprintln!("xtask: removed {}", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &f, e)),
        }
    }
    let libexec = under(&root, paths.stapio.parent().unwrap_or(Path::new("/")));
    if fs::remove_dir(&libexec).is_ok() {
        eprintln!("xtask: removed {}", libexec.display());
    }
    if opts.destdir.is_none() && unit.is_some() {
        reload_systemd();
        eprintln!(
            "xtask: instances of staprun@.service that were enabled keep their symbolic links in /etc/systemd/system/*.wants (systemctl disable staprun@NAME removes one)"
        );
    }
    eprintln!(
        "xtask: kept the stapusr/stapsys/stapdev groups and /lib/modules/*/systemtap (they may hold users and modules)"
    );
    Ok(())
}

/// For `cargo xtask test`: install into a fresh destdir (prefix /usr/local, layout 775), check
/// every file and mode, uninstall, check that the files are gone.
pub fn check_destdir_install() -> Result<()> {
    let d = dist::dist_dir().join("install-check");
    let _ = fs::remove_dir_all(&d);
    let prefix = PathBuf::from("/usr/local");
    install(&Options {
        prefix: prefix.clone(),
        destdir: Some(d.clone()),
        layout: Some(Layout::Stapdev),
    })?;
    let paths = Paths::for_prefix(&prefix);
    let as_root = is_root();
    let mode = |p: &Path| -> Result<(u32, u32, u32)> {
        let m = fs::metadata(p).map_err(|e| Error::io("stat", p, e))?;
        Ok((m.mode() & 0o7777, m.uid(), m.gid()))
    };
    let mut want = vec![
        (
            under(&d, &paths.staprun),
            (0o4110, 0, gid_for(&d, "stapusr")),
        ),
        (under(&d, &paths.stapio), (0o755, 0, 0)),
        (
            under(
                &d,
                Path::new(&format!("/lib/modules/{}/systemtap", kernel_release()?)),
            ),
            (0o775, 0, gid_for(&d, "stapdev")),
        ),
    ];
    for (rel, _) in paths.data_files() {
        want.push((d.join(rel), (0o644, 0, 0)));
    }
    let unit = d.join(unit_path(&paths).ok_or("no unit path for /usr/local")?);
    want.push((unit.clone(), (0o644, 0, 0)));
    let text = files::read_to_string(&unit)?;
    let exec = format!(
        "ExecStart={} $STAPRUN_OPTIONS -- /lib/modules/%v/systemtap/%i.ko $MODULE_PARAMS",
        paths.staprun.display()
    );
    if !text.lines().any(|l| l == exec) || text.contains(UNIT_STAPRUN) {
        bail!(
            "{}: no line {exec:?}, or {UNIT_STAPRUN} still named",
            unit.display()
        );
    }
    for (p, (m, uid, gid)) in &want {
        let got = mode(p)?;
        let ok = if as_root {
            got == (*m, *uid, *gid)
        } else {
            got.0 == *m
        };
        if !ok {
            bail!(
                "{}: got {:o} {}:{}, want {m:o} {uid}:{gid}",
                p.display(),
                got.0,
                got.1,
                got.2
            );
        }
    }
    uninstall(&UninstallOptions {
        prefix,
        destdir: Some(d.clone()),
    })?;
    for (p, _) in want.iter().take(2).chain(want.iter().skip(3)) {
        if p.exists() {
            bail!("{} still there after uninstall", p.display());
        }
    }
    let _ = fs::remove_dir_all(&d);
    eprintln!(
        "xtask: install/uninstall into a destdir: {} files checked",
        want.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_lookup() {
        let d = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("etc/group"), "root:x:0:\nstapusr:x:990:alice\n").unwrap();
        assert_eq!(group_gid(&d, "stapusr"), Some(990));
        assert_eq!(gid_for(&d, "stapusr"), 990);
        assert_eq!(gid_for(&d, "stapdev"), STAPDEV);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_unit_goes_where_systemd_looks_and_runs_the_prefix_staprun() {
        let usr = Paths::for_prefix(Path::new("/usr"));
        assert_eq!(
            unit_path(&usr),
            Some(PathBuf::from("usr/lib/systemd/system/staprun@.service"))
        );
        let local = Paths::for_prefix(Path::new("/usr/local"));
        assert_eq!(
            unit_path(&local),
            Some(PathBuf::from(
                "usr/local/lib/systemd/system/staprun@.service"
            ))
        );
        assert_eq!(unit_path(&Paths::for_prefix(Path::new("/opt/stap"))), None);
        let shipped = fs::read(workspace_root().join(UNIT_SOURCE)).unwrap();
        assert_eq!(unit_text(&usr).unwrap(), shipped, "/usr: as shipped");
        let text = String::from_utf8(unit_text(&local).unwrap()).unwrap();
        assert!(!text.contains("/usr/bin/staprun"));
        assert!(text.lines().any(|l| l.starts_with(
            "ExecStart=/usr/local/bin/staprun $STAPRUN_OPTIONS -- /lib/modules/%v/systemtap/%i.ko"
        )));
        assert!(
            text.lines()
                .any(|l| l.starts_with("ExecStopPost=-/bin/sh -c")
                    && l.contains("exec /usr/local/bin/staprun -d -- "))
        );
    }

    /// The properties docs/admin.md and the guest test rely on.
    #[test]
    fn the_unit_template_runs_as_a_configured_user_and_stops_cleanly() {
        let text = fs::read_to_string(workspace_root().join(UNIT_SOURCE)).unwrap();
        let settings: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .collect();
        for want in [
            "Type=exec",
            "KillMode=mixed",
            "SyslogIdentifier=staprun@%i",
            "LogsDirectory=staprun/%i",
            "WantedBy=multi-user.target",
        ] {
            assert!(settings.contains(&want), "{want} missing");
        }
        // Never root by accident: no User= of its own, and a refusal when run as root.
        assert!(!settings.iter().any(|l| l.starts_with("User=")));
        assert!(settings.iter().any(|l| l.starts_with("ExecStartPre=")
            && l.contains("id -u")
            && l.contains("exit 1")));
        // staprun is set-user-ID: nothing that implies no_new_privs, no capability granted.
        for banned in [
            "NoNewPrivileges=",
            "DynamicUser=",
            "PrivateDevices=",
            "ProtectKernelModules=",
            "ProtectKernelTunables=",
            "ProtectKernelLogs=",
            "ProtectClock=",
            "ProtectHostname=",
            "LockPersonality=",
            "MemoryDenyWriteExecute=",
            "RestrictAddressFamilies=",
            "RestrictNamespaces=",
            "RestrictRealtime=",
            "RestrictSUIDSGID=",
            "SystemCallFilter=",
            "SystemCallArchitectures=",
            "SystemCallLog=",
            "AmbientCapabilities=",
            "CapabilityBoundingSet=",
        ] {
            assert!(
                !settings.iter().any(|l| l.starts_with(banned)),
                "{banned} must not be set"
            );
        }
    }

    #[test]
    fn under_joins_absolute_paths() {
        assert_eq!(
            under(Path::new("/d"), Path::new("/usr/bin/staprun")),
            Path::new("/d/usr/bin/staprun")
        );
    }
}
