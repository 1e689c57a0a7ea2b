//! `fleet-test`: the `staprun.fleet` Ansible collection (ansible/) run for real with Debian's
//! `ansible-core` from this host against three Debian bookworm guests under QEMU, two kernel
//! releases and both layouts (docs/fleet.md, last section).
//!
//! ```text
//! target/fleet-guest/root/           the guests' root: a copy of the Debian guest's
//!                                    (debian.rs) plus sshd, python3-apt, sudo, networkd and a
//!                                    second kernel (the generic flavour of the same ABI);
//!                                    STAMP names the recipe, the base root and the key
//! target/fleet-guest/fleet.img       its ext4 image, the guests' backing file
//! target/fleet-guest/vmlinuz-REL, initrd-REL   each release's kernel and initramfs
//! target/fleet-test/id_ed25519       the controller's ssh key (root's authorized key in the image)
//! target/fleet-test/stap-runtime/    the SystemTap 4.8 runtime, patched for bookworm's kernels
//! target/fleet-test/collections/     the collection, installed from target/dist's tarball
//! target/fleet-test/work/            inventory, ansible.cfg, script, package, builds/, results/
//! target/vm-logs/fleet-*.log         every playbook run, and each guest's console
//! ```
//!
//! The build host is this host (`ansible_connection: local`): it has SystemTap 4.8 and the
//! headers of both releases, and `stap -p4` only compiles (compiling in a TCG guest takes
//! minutes per module). No module is ever loaded into this host's kernel.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::apt::{self, Apt};
use crate::chroot::{Chroot, remove_tree};
use crate::cmd::{self, cmd};
use crate::error::{Context as _, Error, Result, bail};
use crate::files;
use crate::pkg::{deb, dist};
use crate::vm::{compat, debian};

/// Written into the root when it is complete; a new recipe needs a new text.
const STAMP: &str = ".staprun-rs-fleet-guest";
const RECIPE: &str = "fleet recipe 1";
const MODULE: &str = "fleet_hello";
/// What the example script prints, line by line.
const HELLO: [&str; 6] = [
    "fleet_hello: begin",
    "fleet_hello: tick 1",
    "fleet_hello: tick 2",
    "fleet_hello: tick 3",
    "fleet_hello: tick 4",
    "fleet_hello: end after 4 ticks",
];

fn guest_dir() -> PathBuf {
    vm::target_dir().join("fleet-guest")
}

fn test_dir() -> PathBuf {
    vm::target_dir().join("fleet-test")
}

fn log_path(name: &str) -> PathBuf {
    vm::target_dir()
        .join("vm-logs")
        .join(format!("fleet-{name}.log"))
}

/// The generic flavour of a cloud release (same ABI, another `uname -r`).
fn generic_of(kver: &str) -> Result<String> {
    match kver.strip_suffix("-cloud-amd64") {
        Some(abi) => Ok(format!("{abi}-amd64")),
        None => bail!("fleet-test needs a bookworm cloud kernel as the first release, not {kver}"),
    }
}

/// The controller's tools: ansible-core, QEMU, ssh, SystemTap and the headers of both releases.
fn host_tools(apt: &mut Apt, releases: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for (tool, pkg) in [
        ("ansible-playbook", "ansible-core"),
        ("ansible-galaxy", "ansible-core"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mkfs.ext4", "e2fsprogs"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("patch", "patch"),
        ("stap", "systemtap"),
    ] {
        if vm::which(tool).is_none() && !missing.iter().any(|m| m == pkg) {
            missing.push(pkg.to_owned());
        }
    }
    for r in releases {
        let p = format!("linux-headers-{r}");
        if !apt::dpkg_installed(&p) {
            missing.push(p);
        }
    }
    if !missing.is_empty() {
        apt.update()?;
        apt.install(&missing, "fleet-test: controller tools missing")?;
    }
    for tool in ["ansible-playbook", "ansible-galaxy", "stap", "ssh"] {
        if vm::which(tool).is_none() {
            bail!("fleet-test: {tool} is still missing after apt");
        }
    }
    Ok(())
}

/// The controller's key pair (made once; its public half is in the image).
fn key() -> Result<(PathBuf, String)> {
    let d = test_dir();
    files::mkdir(&d)?;
    let k = d.join("id_ed25519");
    let pubk = d.join("id_ed25519.pub");
    if !k.is_file() || !pubk.is_file() {
        let _ = fs::remove_file(&k);
        let _ = fs::remove_file(&pubk);
        let sh = cmd::shell()?;
        cmd::output(cmd!(
            sh,
            "ssh-keygen -q -t ed25519 -N '' -C staprun-fleet-test -f {k}"
        ))?;
    }
    Ok((k, files::read_to_string(&pubk)?.trim().to_owned()))
}

/// The SystemTap 4.8 runtime for the build host's `stap -R`: the installed one, patched like
/// the Debian guest's when bookworm's headers renamed `task_work_cancel()`.
fn stap_runtime(kver: &str) -> Result<PathBuf> {
    let src = Path::new("/usr/share/systemtap/runtime");
    let dir = test_dir().join("stap-runtime");
    let ok = dir.join(".fleet-ok");
    if ok.is_file() {
        return Ok(dir);
    }
    let tmp = test_dir().join(format!(".stap-runtime.tmp-{}", std::process::id()));
    remove_tree(&tmp)?;
    let sh = cmd::shell()?;
    cmd::output(cmd!(sh, "cp -a {src} {tmp}"))?;
    let headers = ["source", "build"]
        .iter()
        .map(|d| PathBuf::from(format!("/lib/modules/{kver}/{d}/include/linux/task_work.h")))
        .filter_map(|p| fs::read_to_string(p).ok())
        .any(|t| t.contains("task_work_cancel_func("));
    let used =
        files::read_to_string(&tmp.join("stp_task_work.c"))?.contains("task_work_cancel_func");
    if headers && !used {
        compat::apply_task_work_patch(&tmp)?;
        eprintln!("xtask: fleet: the build host's SystemTap 4.8 runtime copy is patched");
    }
    files::write(&tmp.join(".fleet-ok"), b"")?;
    remove_tree(&dir)?;
    files::rename(&tmp, &dir)?;
    Ok(dir)
}

const NETWORK: &str = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n";

/// The guests' root: the Debian guest's, plus what a fleet host needs.
fn root(kver: &str, generic: &str, pubkey: &str) -> Result<PathBuf> {
    let base = debian::guest_root(kver)?;
    let base_stamp = files::read_to_string(&base.join(debian::STAMP))?;
    let want = format!("{RECIPE}; generic {generic}; base {base_stamp}; key {pubkey}\n");
    let d = guest_dir();
    files::mkdir(&d)?;
    let root = d.join("root");
    if fs::read_to_string(root.join(STAMP)).ok().as_deref() == Some(want.as_str()) {
        eprintln!("xtask: fleet: reusing the guest root {}", root.display());
        return Ok(root);
    }
    if let Ok(rd) = fs::read_dir(&d) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = n.strip_prefix(".root.tmp-")
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                remove_tree(&e.path())?;
            }
        }
    }
    let t0 = Instant::now();
    let tmp = d.join(format!(".root.tmp-{}", std::process::id()));
    remove_tree(&tmp)?;
    let sh = cmd::shell()?;
    cmd::output(cmd!(sh, "cp -a {base} {tmp}"))?;
    let _ = fs::remove_file(tmp.join(debian::STAMP));
    let archives = crate::pkg::debtest::top_dir().join("apt-archives");
    files::mkdir(&archives)?;
    let mut ch = Chroot {
        root: tmp.clone(),
        archives: Some(archives),
        log: fs::File::create(d.join("build.log")).ok(),
    };
    eprintln!("xtask: fleet: adding sshd, python3-apt, sudo and linux-image-{generic}");
    ch.sh(&format!(
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
apt-get update -q
apt-get install -y -q --no-install-recommends openssh-server python3 python3-apt sudo \
  linux-image-{generic}
rm -f /usr/sbin/policy-rc.d; apt-get clean
systemctl mask vmtest.service >/dev/null 2>&1 || rm -f /etc/systemd/system/multi-user.target.wants/vmtest.service
systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
install -d -m 0700 /root/.ssh
echo fleet > /etc/hostname"
    ))?;
    files::write(&tmp.join("etc/systemd/network/10-fleet.network"), NETWORK)?;
    files::write(
        &tmp.join("root/.ssh/authorized_keys"),
        format!("{pubkey}\n"),
    )?;
    files::write(
        &tmp.join("etc/ssh/sshd_config.d/fleet.conf"),
        "PermitRootLogin prohibit-password\nUseDNS no\n",
    )?;
    let required = [
        format!("boot/vmlinuz-{kver}"),
        format!("boot/initrd.img-{kver}"),
        format!("boot/vmlinuz-{generic}"),
        format!("boot/initrd.img-{generic}"),
        "usr/sbin/sshd".to_owned(),
        "usr/bin/python3".to_owned(),
        "usr/bin/sudo".to_owned(),
    ];
    debian::finish_root(&tmp, &root, STAMP, &want, &required, "fleet guest root", t0)?;
    Ok(root)
}

/// The ext4 image of the root (rebuilt when the root is newer), and each release's kernel and
/// initramfs.
fn image(root: &Path, releases: &[&str]) -> Result<PathBuf> {
    let d = guest_dir();
    let img = d.join("fleet.img");
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((mtime(&img), mtime(&root.join(STAMP))), (Some(i), Some(r)) if i > r);
    if !fresh {
        let tmp = d.join(format!(".fleet.tmp-{}.img", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let sh = cmd::shell()?;
        cmd::output(cmd!(sh, "mkfs.ext4 -q -F -L vmroot -d {root} {tmp} 6G"))?;
        files::rename(&tmp, &img)?;
    }
    for r in releases {
        files::copy(
            &root.join(format!("boot/vmlinuz-{r}")),
            &d.join(format!("vmlinuz-{r}")),
        )?;
        files::copy(
            &root.join(format!("boot/initrd.img-{r}")),
            &d.join(format!("initrd-{r}")),
        )?;
    }
    Ok(img)
}

/// One guest: its inventory name, kernel, layout and forwarded ssh port.
struct Guest {
    name: &'static str,
    kernel: String,
    layout: &'static str,
    port: u16,
    qemu: Option<Child>,
}

/// The booted guests; dropping it ends their QEMUs (by their own process ids).
struct Fleet {
    guests: Vec<Guest>,
    key: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for g in &mut self.guests {
            if let Some(mut c) = g.qemu.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Msg(format!("bind 127.0.0.1:0: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Msg(format!("local_addr: {e}")))
}

impl Fleet {
    fn boot(
        art: &vm::Artifacts,
        img: &Path,
        key: &Path,
        plan: &[(&'static str, String, &'static str)],
    ) -> Result<Fleet> {
        let mut fleet = Fleet {
            guests: Vec::new(),
            key: key.to_path_buf(),
        };
        let d = guest_dir();
        let sh = cmd::shell()?;
        let accel = if art.accel == "kvm" { "kvm" } else { "tcg" };
        for (name, kernel, layout) in plan {
            let disk = d.join(format!("disk-{name}.qcow2"));
            let _ = fs::remove_file(&disk);
            cmd::output(cmd!(
                sh,
                "qemu-img create -q -f qcow2 -F raw -b {img} {disk}"
            ))?;
            let port = free_port()?;
            let console = log_path(&format!("guest-{name}"));
            files::mkdir(console.parent().unwrap_or(Path::new(".")))?;
            let append = format!(
                "console=ttyS0 root=/dev/vda rw systemd.hostname={name} net.ifnames=0 panic=-1"
            );
            let child = Command::new("qemu-system-x86_64")
                .args(["-accel", accel, "-cpu", &art.cpu, "-smp", "1", "-m", "1024"])
                .args(["-nographic", "-no-reboot", "-monitor", "none"])
                .arg("-serial")
                .arg(format!("file:{}", console.display()))
                .arg("-kernel")
                .arg(d.join(format!("vmlinuz-{kernel}")))
                .arg("-initrd")
                .arg(d.join(format!("initrd-{kernel}")))
                .args(["-append", &append])
                .arg("-drive")
                .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
                .args([
                    "-netdev",
                    &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
                    "-device",
                    "virtio-net-pci,netdev=n0",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| Error::Msg(format!("cannot start qemu-system-x86_64: {e}")))?;
            eprintln!(
                "xtask: fleet: {name}: kernel {kernel}, layout {layout}, ssh 127.0.0.1:{port}"
            );
            fleet.guests.push(Guest {
                name,
                kernel: kernel.clone(),
                layout,
                port,
                qemu: Some(child),
            });
        }
        let t0 = Instant::now();
        for i in 0..fleet.guests.len() {
            loop {
                if let Some(c) = fleet.guests[i].qemu.as_mut()
                    && let Ok(Some(st)) = c.try_wait()
                {
                    bail!(
                        "{}: QEMU ended ({st}) before sshd answered; see {}",
                        fleet.guests[i].name,
                        log_path(&format!("guest-{}", fleet.guests[i].name)).display()
                    );
                }
                if let Ok(out) = fleet.ssh(i, "uname -r")
                    && out.trim() == fleet.guests[i].kernel
                {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(600) {
                    bail!(
                        "{}: no ssh on 127.0.0.1:{} after 600 s",
                        fleet.guests[i].name,
                        fleet.guests[i].port
                    );
                }
                std::thread::sleep(Duration::from_secs(3));
            }
        }
        eprintln!(
            "xtask: fleet: {} guests up (sshd answers) in {:.1}s",
            fleet.guests.len(),
            t0.elapsed().as_secs_f64()
        );
        Ok(fleet)
    }

    /// `sh -c SCRIPT` as root on guest `i`: its stdout.
    fn ssh(&self, i: usize, script: &str) -> Result<String> {
        let g = &self.guests[i];
        let sh = cmd::shell()?;
        let key = &self.key;
        let port = g.port.to_string();
        cmd::output(cmd!(
            sh,
            "ssh -q -i {key} -p {port} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 root@127.0.0.1 {script}"
        ))
    }

    /// Which guests have one of `names` in /proc/modules.
    fn loaded(&self, names: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (i, g) in self.guests.iter().enumerate() {
            let mods = self.ssh(i, "cat /proc/modules")?;
            for l in mods.lines() {
                let m = l.split_whitespace().next().unwrap_or("");
                if names.contains(&m) {
                    out.push(format!("{}: {m}", g.name));
                }
            }
        }
        Ok(out)
    }

    fn assert_nothing_loaded(&self, when: &str) -> Result<()> {
        let l = self.loaded(&[MODULE, "evil"])?;
        if !l.is_empty() {
            bail!("{when}: module left loaded: {}", l.join(", "));
        }
        check(&format!(
            "{when}: no module loaded on any guest (/proc/modules)"
        ));
        Ok(())
    }
}

fn check(what: &str) {
    eprintln!("xtask: fleet: ok: {what}");
}

/// The controller's working directory and the environment of every ansible command.
struct Controller {
    work: PathBuf,
    env: Vec<(String, String)>,
    runs: usize,
}

/// One playbook run: its exit status and output.
struct Played {
    ok: bool,
    text: String,
    secs: f64,
}

impl Played {
    /// Whether the output says `what`, wherever the YAML callback folded its lines.
    fn says(&self, what: &str) -> bool {
        let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        words(&self.text).contains(&words(what))
    }

    /// PLAY RECAP: host -> (ok, changed, unreachable, failed).
    fn recap(&self) -> BTreeMap<String, [u32; 4]> {
        let mut m = BTreeMap::new();
        let Some(at) = self.text.find("PLAY RECAP") else {
            return m;
        };
        for l in self.text[at..].lines().skip(1) {
            let Some((host, rest)) = l.split_once(" : ") else {
                continue;
            };
            let get = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u32::MAX)
            };
            m.insert(
                host.trim().to_owned(),
                [
                    get("ok="),
                    get("changed="),
                    get("unreachable="),
                    get("failed="),
                ],
            );
        }
        m
    }

    fn recap_text(&self) -> String {
        self.text
            .find("PLAY RECAP")
            .map(|at| self.text[at..].trim_end().to_owned())
            .unwrap_or_else(|| "(no PLAY RECAP)".to_owned())
    }
}

impl Controller {
    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new("ansible-playbook");
        c.current_dir(&self.work)
            .args(["-i", "inventory.yml", "staprun.fleet.example"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        c
    }

    fn play(&mut self, name: &str, args: &[&str]) -> Result<Played> {
        self.runs += 1;
        let log = log_path(&format!("{:02}-{name}", self.runs));
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        eprintln!(
            "xtask: fleet: ansible-playbook staprun.fleet.example {} (log {})",
            args.join(" "),
            log.display()
        );
        let t0 = Instant::now();
        // The output goes to the log as it comes (tail -f it), then is read back.
        files::write(
            &log,
            format!(
                "$ ansible-playbook -i inventory.yml staprun.fleet.example {}\n",
                args.join(" ")
            ),
        )?;
        let open = || {
            fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .map_err(|e| Error::io("open", &log, e))
        };
        let status = self
            .command(&args)
            .stdout(open()?)
            .stderr(open()?)
            .status()
            .map_err(|e| Error::Msg(format!("cannot run ansible-playbook: {e}")))?;
        let secs = t0.elapsed().as_secs_f64();
        let text = files::read_to_string(&log)?;
        let mut f = open()?;
        let _ = writeln!(f, "[{status} in {secs:.1}s]");
        eprintln!("xtask: fleet:   {status} in {secs:.1}s");
        Ok(Played {
            ok: status.success(),
            text,
            secs,
        })
    }
}

fn inventory(work: &Path, fleet: &Fleet, runtime: &Path) -> String {
    let w = work.display();
    let mut s = format!(
        "# Generated by cargo xtask fleet-test: the example inventory, on this run's guests.
all:
  vars:
    ansible_user: root
    ansible_python_interpreter: /usr/bin/python3
    staprun_fleet_controller_dir: {w}
    staprun_fleet_module: {MODULE}
    staprun_fleet_script: {w}/fleet_hello.stp
    staprun_fleet_deb: {w}/staprun-rs.deb
    staprun_fleet_users:
      - name: alice
        groups: [stapusr]
      - name: bob
        groups: [stapusr, stapdev]
    staprun_fleet_check_user: alice
    staprun_fleet_run_user: alice
    staprun_fleet_run_seconds: 30
  children:
    staprun_build:
      hosts:
        build:
          ansible_connection: local
          ansible_become: false
          staprun_fleet_build_root: {w}/build-root
          staprun_fleet_stap_args: [-R, {}]
    staprun_fleet:
      hosts:
",
        runtime.display()
    );
    for g in &fleet.guests {
        s.push_str(&format!(
            "        {}:\n          ansible_host: 127.0.0.1\n          ansible_port: {}\n          staprun_fleet_layout: \"{}\"\n",
            g.name, g.port, g.layout
        ));
    }
    s
}

fn ansible_cfg(key: &Path, cp: &Path, facts: &Path) -> String {
    format!(
        "[defaults]
interpreter_python = /usr/bin/python3
host_key_checking = False
forks = 10
private_key_file = {}
callback_result_format = yaml
timeout = 60
# Facts are gathered once per host and kept for the later runs (the kernels do not change).
gathering = smart
fact_caching = jsonfile
fact_caching_connection = {}

[ssh_connection]
pipelining = True
control_path_dir = {}
ssh_args = -o ControlMaster=auto -o ControlPersist=120s -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no
",
        key.display(),
        facts.display(),
        cp.display()
    )
}

/// `fleet-test`.
pub fn fleet_test(opts: &crate::vm::Options) -> Result<()> {
    let t0 = Instant::now();
    let art = crate::vm::prepare(opts)?;
    let kver = art.kver.clone();
    let generic = generic_of(&kver)?;
    let releases = [kver.as_str(), generic.as_str()];
    let mut apt = Apt { updated: false };
    host_tools(&mut apt, &releases)?;
    let deb = deb::deb()?;
    let tarball = dist::collection()?;
    let (key, pubkey) = key()?;
    let runtime = stap_runtime(&kver)?;
    let root = root(&kver, &generic, &pubkey)?;
    let img = image(&root, &releases)?;
    let prep = t0.elapsed();
    eprintln!("xtask: fleet: prepared in {:.1}s", prep.as_secs_f64());

    // The controller: the collection installed under target/, a working directory.
    let td = test_dir();
    let work = td.join("work");
    remove_tree(&work)?;
    files::mkdir(&work)?;
    let colls = td.join("collections");
    remove_tree(&colls)?;
    let sh = cmd::shell()?;
    cmd::output(cmd!(
        sh,
        "ansible-galaxy collection install --force -p {colls} {tarball}"
    ))?;
    let ex = cmd::workspace_root().join("ansible/examples");
    files::copy(&ex.join("fleet_hello.stp"), &work.join("fleet_hello.stp"))?;
    files::copy(&deb, &work.join("staprun-rs.deb"))?;
    let cp = td.join("cp");
    files::mkdir(&cp)?;
    let home = td.join("ansible-home");
    files::mkdir(&home)?;
    let stap_home = td.join("stap-home");
    files::mkdir(&stap_home)?;
    let facts = td.join("facts");
    remove_tree(&facts)?;
    files::write(&work.join("ansible.cfg"), ansible_cfg(&key, &cp, &facts))?;

    let plan = [
        ("web1", kver.clone(), "755"),
        ("web2", generic.clone(), "775"),
        ("db1", generic.clone(), "755"),
    ];
    let fleet = Fleet::boot(&art, &img, &key, &plan)?;
    files::write(
        &work.join("inventory.yml"),
        inventory(&work, &fleet, &runtime),
    )?;
    let s = |p: &Path| p.display().to_string();
    let mut ctl = Controller {
        work: work.clone(),
        env: vec![
            ("ANSIBLE_CONFIG".into(), s(&work.join("ansible.cfg"))),
            ("ANSIBLE_COLLECTIONS_PATH".into(), s(&colls)),
            ("ANSIBLE_HOME".into(), s(&home)),
            ("ANSIBLE_NOCOLOR".into(), "1".into()),
            ("SYSTEMTAP_DIR".into(), s(&stap_home)),
        ],
        runs: 0,
    };
    let r = scenarios(&mut ctl, &fleet, &kver, &generic);
    drop(fleet);
    eprintln!(
        "xtask: fleet-test wall time {:.1}s (prepare {:.1}s, guests and playbooks {:.1}s)",
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64(),
        (t0.elapsed() - prep).as_secs_f64()
    );
    r.context("fleet-test failed")
}

fn expect_recap(p: &Played, hosts: &[&str], what: &str, changed0: bool) -> Result<()> {
    let recap = p.recap();
    for h in hosts {
        let Some([_, changed, unreachable, failed]) = recap.get(*h) else {
            bail!(
                "{what}: {h} missing from the PLAY RECAP:\n{}",
                p.recap_text()
            );
        };
        if *unreachable != 0 || *failed != 0 || (changed0 && *changed != 0) {
            bail!(
                "{what}: {h}: changed={changed} unreachable={unreachable} failed={failed}:\n{}",
                p.recap_text()
            );
        }
    }
    Ok(())
}

fn scenarios(ctl: &mut Controller, fleet: &Fleet, cloud: &str, generic: &str) -> Result<()> {
    let all: Vec<&str> = fleet.guests.iter().map(|g| g.name).collect();
    let on_generic: Vec<&str> = fleet
        .guests
        .iter()
        .filter(|g| g.kernel == generic)
        .map(|g| g.name)
        .collect();

    // 1. Hosts whose kernel has no build: only the cloud release is built.
    let p = ctl.play(
        "no-build",
        &[
            "--tags",
            "setup,build,publish",
            "-e",
            &format!("{{\"staprun_fleet_build_kernels\": [\"{cloud}\"]}}"),
        ],
    )?;
    if p.ok {
        bail!(
            "a publish with no build for {generic} succeeded:\n{}",
            p.recap_text()
        );
    }
    for h in &on_generic {
        let want = format!("{h}: {MODULE}: no build for kernel {generic}");
        if !p.says(&want) {
            bail!("the run without a {generic} build does not say {want:?} (see its log)");
        }
    }
    expect_recap(&p, &["web1", "build"], "no-build run", false)?;
    check(&format!(
        "hosts without a build named with their release: {} ({generic})",
        on_generic.join(", ")
    ));
    fleet.assert_nothing_loaded("after the no-build run")?;

    // 2. The whole example playbook.
    let p = ctl.play("example", &[])?;
    if !p.ok {
        bail!("the example playbook failed:\n{}", p.recap_text());
    }
    let mut hosts = all.clone();
    hosts.push("build");
    expect_recap(&p, &hosts, "example run", false)?;
    let results = ctl.work.join("results");
    for g in &fleet.guests {
        let out = files::read_to_string(&results.join(g.name).join(format!("{MODULE}.out")))?;
        let got: Vec<&str> = out.lines().collect();
        if got != HELLO {
            bail!(
                "{}: results/{}/{MODULE}.out is not the module's output: {got:?}",
                g.name,
                g.name
            );
        }
        let st = files::read_to_string(&results.join(g.name).join(format!("{MODULE}.status.yml")))?;
        let has = |k: &str, v: &str| {
            st.lines().any(|l| {
                l.strip_prefix(k)
                    .is_some_and(|r| r.trim().trim_matches('\'').trim_matches('"') == v)
            })
        };
        if !has("exit_status:", "0") || !has("left_loaded:", "false") || !has("kernel:", &g.kernel)
        {
            bail!("{}: status.yml: {st}", g.name);
        }
        if !st.contains("LOAD ") || !st.contains("UNLOAD") {
            bail!("{}: status.yml has no LOAD/UNLOAD audit line: {st}", g.name);
        }
    }
    check(
        "results/HOST/fleet_hello.out is the script's six lines on every guest; status: exit 0, LOAD and UNLOAD audit lines, not left loaded",
    );
    fleet.assert_nothing_loaded("after the example run")?;
    let transcript: Vec<&str> = p
        .text
        .lines()
        .filter(|l| l.starts_with("PLAY [") || l.contains("Name every host") || l.contains("msg:"))
        .collect();
    eprintln!(
        "xtask: fleet: transcript of the example run ({:.1}s):\n{}\n{}",
        p.secs,
        transcript.join("\n"),
        p.recap_text()
    );

    // 3. Idempotence: setup, build and publish again change nothing.
    let p = ctl.play("again", &["--tags", "setup,build,publish"])?;
    if !p.ok {
        bail!("the second setup,build,publish failed:\n{}", p.recap_text());
    }
    expect_recap(&p, &hosts, "second setup,build,publish", true)?;
    check("a second setup,build,publish reports changed=0 on every host");

    // 4. --check --diff of the whole playbook.
    let p = ctl.play("check-diff", &["--check", "--diff"])?;
    if !p.ok {
        bail!("--check --diff failed:\n{}", p.recap_text());
    }
    expect_recap(&p, &hosts, "--check --diff", true)?;
    check("--check --diff of the whole playbook: no failure, changed=0");
    fleet.assert_nothing_loaded("after --check --diff")?;

    // 5. A stapusr member cannot load an unpublished module through the run variables.
    for (i, g) in fleet.guests.iter().enumerate() {
        let ko = ctl
            .work
            .join("builds")
            .join(MODULE)
            .join(&g.kernel)
            .join(format!("{MODULE}.ko"));
        let sh = cmd::shell()?;
        let key = &fleet.key;
        let port = g.port.to_string();
        let place = "cat > /home/alice/evil.ko && chown alice: /home/alice/evil.ko && cp /home/alice/evil.ko /tmp/evil.ko && chown alice: /tmp/evil.ko";
        cmd::output(
            cmd!(sh, "ssh -q -i {key} -p {port} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1 {place}")
                .stdin(files::read(&ko)?),
        )?;
        let _ = i;
    }
    let t_evil = fleet.ssh(0, "date +%s")?.trim().to_owned();
    for (name, extra, want) in [
        (
            "evil-alice",
            "{\"staprun_fleet_module\": \"evil\"}",
            "may not load evil",
        ),
        (
            "evil-bob",
            "{\"staprun_fleet_module\": \"evil\", \"staprun_fleet_run_user\": \"bob\"}",
            "may not load evil",
        ),
        (
            "evil-path",
            "{\"staprun_fleet_module\": \"/home/alice/evil.ko\"}",
            "refused: staprun_fleet_module must be a module name",
        ),
        (
            "evil-root",
            "{\"staprun_fleet_run_user\": \"root\"}",
            "refused: staprun_fleet_module must be a module name",
        ),
    ] {
        let p = ctl.play(name, &["--tags", "run", "-e", extra])?;
        if p.ok {
            bail!("{name}: the run play accepted {extra}");
        }
        let recap = p.recap();
        for h in &all {
            if recap.get(*h).is_none_or(|r| r[3] == 0) {
                bail!("{name}: {h} did not fail with {extra}:\n{}", p.recap_text());
            }
        }
        if !p.says(want) {
            bail!("{name}: the refusal does not say {want:?} (see its log)");
        }
        fleet.assert_nothing_loaded(&format!("{name} refused"))?;
    }
    for (i, g) in fleet.guests.iter().enumerate() {
        let query = "journalctl -q --no-pager -o cat SYSLOG_IDENTIFIER=staprun _UID=0";
        // The query finds the example run's lines (so an empty answer means something).
        let before = fleet.ssh(i, query)?;
        if !before
            .lines()
            .any(|l| l.starts_with("LOAD ") && l.contains("module=fleet_hello"))
        {
            bail!(
                "{}: the journal query finds no LOAD line of the example run",
                g.name
            );
        }
        let lines = fleet.ssh(i, &format!("{query} --since=@{t_evil}"))?;
        if let Some(l) = lines
            .lines()
            .find(|l| (l.starts_with("LOAD") || l.starts_with("LOADING")) && l.contains("evil"))
        {
            bail!("{}: staprun loaded evil: {l}", g.name);
        }
    }
    check(
        "module=evil (as alice, as bob of stapdev), a path and user root: refused on every guest, no LOAD line, nothing loaded",
    );

    // 6. An interrupted run: ansible-playbook killed while the module runs; the time limit
    //    on the host ends it (stapio runs the end probes and unloads).
    let limit = 45u64;
    let extra = format!(
        "{{\"staprun_fleet_module_params\": [\"ticks=-1000000\"], \"staprun_fleet_run_seconds\": {limit}}}"
    );
    ctl.runs += 1;
    let log = log_path(&format!("{:02}-interrupted", ctl.runs));
    let logf = fs::File::create(&log).map_err(|e| Error::io("create", &log, e))?;
    let logf2 = logf.try_clone().map_err(|e| Error::io("dup", &log, e))?;
    eprintln!(
        "xtask: fleet: ansible-playbook --tags run -e '{extra}', to be killed (log {})",
        log.display()
    );
    let mut child = ctl
        .command(&["--tags".into(), "run".into(), "-e".into(), extra.clone()])
        .stdout(logf)
        .stderr(logf2)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Msg(format!("cannot run ansible-playbook: {e}")))?;
    let t_run = Instant::now();
    let pgid = child.id();
    let all_loaded = loop {
        let l = fleet.loaded(&[MODULE])?;
        if l.len() == fleet.guests.len() {
            break true;
        }
        if t_run.elapsed() > Duration::from_secs(300) || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let sh = cmd::shell()?;
    let target = format!("-{pgid}");
    let _ = cmd::output(cmd!(sh, "kill -KILL -- {target}"));
    let _ = child.wait();
    if !all_loaded {
        bail!(
            "the interrupted run: {MODULE} was not loaded on every guest (see {})",
            log.display()
        );
    }
    let killed_at = t_run.elapsed();
    check(&format!(
        "ansible-playbook killed (SIGKILL, its process group) {:.0}s into the run, {MODULE} loaded on every guest",
        killed_at.as_secs_f64()
    ));
    // Every module was loaded before the kill: the limit (then SIGKILL 30 s later and the
    // run script's `staprun -d`) ends it on each guest, plus a margin for a busy host.
    let deadline = killed_at + Duration::from_secs(limit + 30 + 120);
    loop {
        let l = fleet.loaded(&[MODULE])?;
        if l.is_empty() {
            break;
        }
        if t_run.elapsed() > deadline {
            bail!(
                "after the interrupted run, still loaded {:.0}s after the kill: {}",
                (t_run.elapsed() - killed_at).as_secs_f64(),
                l.join(", ")
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    for (i, g) in fleet.guests.iter().enumerate() {
        let out = fleet.ssh(
            i,
            &format!("cat /var/lib/staprun-fleet/runs/{MODULE}/{MODULE}.out"),
        )?;
        if !out.lines().any(|l| l.starts_with("fleet_hello: end after")) {
            bail!(
                "{}: the interrupted run's output has no end line: {out:?}",
                g.name
            );
        }
    }
    check(&format!(
        "interrupted run: unloaded on every guest at the time limit ({:.0}s after the start; limit {limit}s), the end probe ran",
        t_run.elapsed().as_secs_f64()
    ));
    fleet.assert_nothing_loaded("after the interrupted run")?;

    // 7. Withdraw, twice.
    let p = ctl.play("withdraw", &["--tags", "withdraw"])?;
    if !p.ok {
        bail!("withdraw failed:\n{}", p.recap_text());
    }
    expect_recap(&p, &all, "withdraw", false)?;
    for (i, g) in fleet.guests.iter().enumerate() {
        let left = fleet.ssh(
            i,
            &format!("ls /lib/modules/*/systemtap/ | grep -c {MODULE} || true"),
        )?;
        if left.trim() != "0" {
            bail!(
                "{}: {MODULE}.ko is still in a blessed directory after withdraw",
                g.name
            );
        }
        let explain = fleet.ssh(
            i,
            &format!("runuser -u alice -- staprun --explain {MODULE} >/dev/null 2>&1; echo $?"),
        )?;
        if explain.trim() == "0" {
            bail!(
                "{}: staprun --explain still says alice may load {MODULE}",
                g.name
            );
        }
    }
    let p = ctl.play("withdraw-again", &["--tags", "withdraw"])?;
    if !p.ok {
        bail!("the second withdraw failed:\n{}", p.recap_text());
    }
    expect_recap(&p, &all, "second withdraw", true)?;
    check(
        "withdraw removed fleet_hello.ko from every blessed directory of every guest; again: changed=0",
    );
    fleet.assert_nothing_loaded("at the end")?;
    Ok(())
}

/// The collection's host-side checks (no guests): the vermagic reader's unit tests and the
/// local smoke test (ansible/tests/local/run_smoke.py), with Debian's python3 and
/// ansible-core (installed with apt when missing). A skipped unit test fails the stage: every
/// test must have run (the real-module test reads the fixture `pmod.ko` vm-prepare builds).
pub fn host_checks() -> Result<()> {
    let python = Path::new("/usr/bin/python3");
    if vm::which("ansible-playbook").is_none() || !python.is_file() {
        let mut apt = Apt { updated: false };
        apt.install(
            &["ansible-core".to_owned(), "python3".to_owned()],
            "the fleet collection's checks need Debian's ansible-core",
        )?;
    }
    if vm::which("ansible-playbook").is_none() || !python.is_file() {
        bail!("ansible-playbook or /usr/bin/python3 still missing after installing ansible-core");
    }
    let sh = cmd::workspace_shell()?;
    let unit = cmd::capture(cmd!(
        sh,
        "{python} -m unittest discover -s ansible/tests/unit -v"
    ))?;
    let unit_text = format!("{}{}", unit.stdout, unit.stderr);
    if !unit.status.success() {
        return Err(unit.failure(cmd::tail(&unit_text, 25)));
    }
    if let Some(l) = unit_text.lines().find(|l| l.contains("skipped")) {
        bail!("ansible unit tests: a test was skipped: {l}");
    }
    let ran = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("Ran "))
        .unwrap_or("? tests");
    eprintln!("xtask: ansible/tests/unit: ran {ran}, none skipped");
    let smoke = cmd::capture(cmd!(sh, "{python} ansible/tests/local/run_smoke.py"))?;
    let smoke_text = format!("{}{}", smoke.stdout, smoke.stderr);
    let summary = smoke_text
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("no summary line")
        .to_owned();
    if !smoke.status.success() || !summary.ends_with(" 0 failed") {
        let failed: Vec<&str> = smoke_text
            .lines()
            .filter(|l| l.starts_with("FAILED"))
            .collect();
        bail!(
            "ansible/tests/local/run_smoke.py: {summary}: {}",
            failed.join(" | ")
        );
    }
    eprintln!("xtask: ansible/tests/local/run_smoke.py: {summary}");
    Ok(())
}
