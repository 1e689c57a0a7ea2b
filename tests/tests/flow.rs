//! The whole flow on the host: staprun decides, loads and sets up the module
//! as alice (real uid 1001, effective 0), hands the module directory and its
//! argv to stapio, which runs as alice (euid 1001) and ends with the same
//! `staprun -d` rule. Real files with real owners; the simulated kernel.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use stap_common::cli::{self, Program};
use stap_common::elf::build_test_module;
use stap_common::ids::{Gid, Pid, Uid};
use stap_common::kernel::KernelOps;
use stap_common::kernel::sim::{Event, Script, SimKernel};
use stap_common::modname::ModName;
use stap_common::protocol::{Generation, Request};
use stapio::diag::Diag;
use stapio::signals::Signals;
use stapio::{Config, Error, Outcome, Session, Streams};
use staprun::facts::GroupDb;
use staprun::handover::ExecPlan;
use staprun::policy::Class;
use staprun::{Context, load, unload};

const ALICE: u32 = 1001;
const SAM: u32 = 1003;

struct Groups;
impl GroupDb for Groups {
    fn stapdev_gid(&self) -> Option<u32> {
        Some(158)
    }
    fn is_stapdev_member(&self, _: u32) -> bool {
        false
    }
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Tree(PathBuf);
impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tree(tag: &str) -> Tree {
    assert!(
        stap_common::sys::current_uid_is_root(),
        "these tests chown files and must run as root (CI does)"
    );
    let base = PathBuf::from(format!("/run/staprun-flow-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let blessed = base.join("lib/modules/K/systemtap");
    fs::create_dir_all(&blessed).unwrap();
    for d in [
        "",
        "lib",
        "lib/modules",
        "lib/modules/K",
        "lib/modules/K/systemtap",
    ] {
        let p = base.join(d);
        chown(&p, Some(0), Some(0)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let m = blessed.join("pmod.ko");
    // Built for the running kernel, as staprun requires.
    let release = stap_common::sys::kernel_release().unwrap();
    let info = stap_common::elf::test_modinfo(&release);
    fs::write(&m, build_test_module("pmod", &[(".modinfo", &info)])).unwrap();
    chown(&m, Some(0), Some(0)).unwrap();
    fs::set_permissions(&m, fs::Permissions::from_mode(0o644)).unwrap();
    Tree(base)
}

fn no() -> bool {
    false
}

fn ctx<'a>(
    k: &'a SimKernel,
    t: &Tree,
    uid: u32,
    class: Class,
    warn: &'a dyn Fn(&str),
) -> Context<'a> {
    Context {
        kernel: k,
        groups: &Groups,
        blessed_dir: t.0.join("lib/modules/K/systemtap"),
        real_uid: Uid::from_raw(uid),
        real_gid: Gid::ROOT,
        lookup_ids: None,
        window: &staprun::NoWindow,
        audit: &staprun::no_audit,
        class,
        pid: Pid::from_raw(77),
        interrupted: &no,
        warn,
    }
}

fn flow(g: Generation) {
    let t = tree(&format!("{g:?}"));
    let k = SimKernel::new(2);
    k.set_default_script(Script {
        generation: g,
        records_per_cpu: 20,
        end: vec!["end probe fired".into()],
        ..Script::default()
    });
    let warn = |_: &str| {};
    // staprun, setuid: real uid alice, effective root.
    k.set_caller(ALICE, 0);
    let argv: Vec<OsString> = ["-b", "2", "pmod", "x=1"]
        .iter()
        .map(OsString::from)
        .collect();
    let opts = cli::parse(Program::Staprun, &argv).unwrap();
    let loaded = load::load(&ctx(&k, &t, ALICE, Class::Stapusr, &warn), &opts).unwrap();
    assert_eq!(loaded.generation, g);
    // The hand-over: staprun's plan for executing stapio, with the
    // caller's environment filtered.
    let captured = vec![
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("LD_PRELOAD".to_string(), "/tmp/evil.so".to_string()),
        ("SYSTEMTAP_STAPIO".to_string(), "/tmp/evil".to_string()),
        ("JAVA_HOME".to_string(), "/opt/jdk".to_string()),
        ("TMPDIR".to_string(), "/tmp/evil-tmp".to_string()),
    ];
    let stapio_path = std::path::Path::new("/usr/libexec/staprun/stapio");
    let plan = ExecPlan::stapio(stapio_path, &opts, &loaded.name, Some(7), captured);
    assert_eq!(plan.path.to_str().unwrap(), stapio_path.to_str().unwrap());
    let env = plan.env();
    assert!(env.contains(&("LANG".into(), "C.UTF-8".into())), "{env:?}");
    assert!(
        env.contains(&("SYSTEMTAP_MODULE".into(), "pmod".into())),
        "{env:?}"
    );
    assert!(
        env.iter()
            .all(|(k, _)| k != "LD_PRELOAD" && k != "SYSTEMTAP_STAPIO")
    );
    // stapio's own environment is the allowlist: JAVA_HOME is not in it,
    // but it reaches stapio's children (`-c`, `system()`), and what glibc
    // removes for a setuid program, or an override variable, reaches
    // nothing (not even renamed).
    assert!(env.iter().all(|(k, _)| k != "JAVA_HOME" && k != "TMPDIR"));
    assert!(env.iter().all(|(_, v)| !v.contains("evil")), "{env:?}");
    let children = stapio::target::child_env_of(
        env.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    for want in [
        "LANG=C.UTF-8",
        "JAVA_HOME=/opt/jdk",
        "SYSTEMTAP_MODULE=pmod",
        "SYSTEMTAP_VERBOSE=0",
    ] {
        assert!(
            children.contains(&OsString::from(want)),
            "{want}: {children:?}"
        );
    }
    assert_eq!(children.len(), 4, "{children:?}");
    let args = plan.args();
    assert_eq!(args[0], stapio_path.to_str().unwrap());
    let stapio_argv: Vec<OsString> = args[1..].iter().map(OsString::from).collect();
    let sopts = cli::parse(Program::Stapio, &stapio_argv).unwrap();
    assert_eq!(sopts.relay_fd, Some(7));
    assert_eq!(sopts.buffer_size_mb, Some(2));
    let name = cli::resolve_module(&sopts.module, std::path::Path::new("/"))
        .unwrap()
        .name;
    let cfg = Config::from_options(&sopts, name, std::path::Path::new("/tmp"));
    // stapio: privilege dropped.
    k.set_caller(ALICE, ALICE);
    let out = Buf::default();
    let err = Buf::default();
    let streams = Streams {
        stdout: Box::new(out.clone()),
        diag: Diag::new(Box::new(err.clone()), false),
    };
    let session = Session::connect(cfg, &k, loaded.dir, streams, Signals::new()).unwrap();
    // While stapio holds the module, another stapusr cannot unload it,
    // and neither can alice herself (it is attached).
    k.set_caller(SAM, 0);
    assert!(unload::unload(&ctx(&k, &t, SAM, Class::Stapsys, &warn), "pmod").is_err());
    k.set_caller(ALICE, 0);
    assert!(unload::unload(&ctx(&k, &t, ALICE, Class::Stapusr, &warn), "pmod").is_err());
    k.set_caller(ALICE, ALICE);
    // The end: stapio runs `staprun -d pmod`, i.e. the unload rule as alice.
    let unloader = |m: &ModName| {
        k.set_caller(ALICE, 0);
        let r = unload::unload(&ctx(&k, &t, ALICE, Class::Stapusr, &warn), m.as_str())
            .map(|_| ())
            .map_err(|e| Error::Unload {
                module: m.clone(),
                detail: e.to_string(),
            });
        k.set_caller(ALICE, ALICE);
        r
    };
    let outcome = session.run(&unloader).unwrap();
    assert_eq!(
        outcome,
        Outcome::Finished { failed: false },
        "stderr: {}",
        err.text()
    );
    let text = out.text();
    assert!(text.starts_with("hello from begin\n"), "{text}");
    assert!(text.ends_with("end probe fired\n"), "{text}");
    assert_eq!(text.lines().count(), 1 + 2 * 20 + 1);
    assert!(!k.is_loaded("pmod"));
    // Who sent what, with which effective uid.
    let sent: Vec<(u32, Request)> = k
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Request { euid, req, .. } => Some((euid, req)),
            _ => None,
        })
        .collect();
    let privileged = |r: &Request| {
        matches!(
            r,
            Request::PrivilegeCredentials { .. }
                | Request::Relocation { .. }
                | Request::TzInfo { .. }
        )
    };
    assert!(
        sent.iter()
            .filter(|(_, r)| privileged(r))
            .all(|(u, _)| *u == 0),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .filter(|(_, r)| !privileged(r))
            .all(|(u, _)| *u == ALICE),
        "{sent:?}"
    );
    let kinds: Vec<&Request> = sent
        .iter()
        .map(|(_, r)| r)
        .filter(|r| !matches!(r, Request::Relocation { .. }))
        .collect();
    assert_eq!(
        kinds,
        vec![
            &Request::PrivilegeCredentials { mask: 0xe },
            &Request::TzInfo {
                gmtoff: kinds_tz(&sent),
                name: tz_name(&sent)
            },
            &Request::Ready,
            &Request::Bulk,
            &Request::Start { target: 0 },
            &Request::Exit,
        ]
    );
    let params = k.events().iter().find_map(|e| match e {
        Event::Loaded { params, owner, .. } => Some((params.clone(), *owner)),
        _ => None,
    });
    assert_eq!(params, Some(("x=1 _stp_bufsize=2".to_string(), ALICE)));
}

fn kinds_tz(sent: &[(u32, Request)]) -> i64 {
    sent.iter()
        .find_map(|(_, r)| {
            if let Request::TzInfo { gmtoff, .. } = r {
                Some(*gmtoff)
            } else {
                None
            }
        })
        .unwrap_or(i64::MIN)
}

fn tz_name(sent: &[(u32, Request)]) -> String {
    sent.iter()
        .find_map(|(_, r)| {
            if let Request::TzInfo { name, .. } = r {
                Some(name.clone())
            } else {
                None
            }
        })
        .unwrap_or_default()
}

#[test]
fn staprun_to_stapio_to_unload_4x() {
    flow(Generation::V4);
}

#[test]
fn staprun_to_stapio_to_unload_5x() {
    flow(Generation::V5);
}
