//! staprun's decision, load, setup and unload logic on the host: real files
//! and directories with real owners and modes in a temporary tree (needs
//! root to chown; fails loudly otherwise), and the simulated kernel.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use stap_common::cli::{self, Program};
use stap_common::elf::{build_test_module, test_modinfo};
use stap_common::ids::{Gid, Pid, Uid};
use stap_common::kernel::KernelOps;
use stap_common::kernel::sim::{Event, Faults, Script, SimKernel};
use stap_common::protocol::{Generation, Request};

use staprun::facts::GroupDb;
use staprun::handover::UndoGuard;
use staprun::policy::Class;
use staprun::{Context, StaprunError, audit, load, unload};

const STAPDEV_GID: u32 = 158;
const ALICE: u32 = 1001; // stapusr
const BOB: u32 = 1002; // stapdev
const SAM: u32 = 1003; // stapsys
const CAROL: u32 = 1004; // none

struct Groups;
impl GroupDb for Groups {
    fn stapdev_gid(&self) -> Option<u32> {
        Some(STAPDEV_GID)
    }
    fn is_stapdev_member(&self, uid: u32) -> bool {
        uid == BOB
    }
}

fn require_root() {
    assert!(
        stap_common::sys::current_uid_is_root(),
        "these tests chown files and must run as root (CI does); run them as root"
    );
}

static N: AtomicUsize = AtomicUsize::new(0);

/// A fresh tree under /run (root-owned, 755 all the way up), so the walk
/// from `/` sees only trusted directories unless a test makes one bad.
struct Tree {
    base: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        require_root();
        let base = PathBuf::from(format!(
            "/run/staprun-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("lib/modules/K/systemtap")).unwrap();
        fs::create_dir_all(base.join("elsewhere")).unwrap();
        for d in [
            "",
            "lib",
            "lib/modules",
            "lib/modules/K",
            "lib/modules/K/systemtap",
            "elsewhere",
        ] {
            set(&base.join(d), 0o755, 0, 0);
        }
        Tree { base }
    }
    fn blessed(&self) -> PathBuf {
        self.base.join("lib/modules/K/systemtap")
    }
    /// A module built for the running kernel (its vermagic names the
    /// release staprun reads from /proc).
    fn module(&self, dir: &Path, name: &str, mode: u32, uid: u32, gid: u32) -> PathBuf {
        self.module_for(&running(), dir, name, mode, uid, gid)
    }
    fn module_for(
        &self,
        release: &str,
        dir: &Path,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> PathBuf {
        let p = dir.join(format!("{name}.ko"));
        let info = test_modinfo(release);
        fs::write(&p, build_test_module(name, &[(".modinfo", &info)])).unwrap();
        set(&p, mode, uid, gid);
        p
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// The running kernel's release, as staprun reads it.
fn running() -> String {
    stap_common::sys::kernel_release().unwrap()
}

/// Another release of the same length (one digit changed).
fn other_release() -> String {
    let mut r = running().into_bytes();
    let at = r.iter().position(u8::is_ascii_digit).unwrap_or(0);
    r[at] = if r[at] == b'9' { b'8' } else { b'9' };
    String::from_utf8(r).unwrap()
}

fn set(p: &Path, mode: u32, uid: u32, gid: u32) {
    chown(p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn no() -> bool {
    false
}

/// A context on `kernel` for `uid` in `class`, loading from `blessed_dir`:
/// no privileged window, no audit, never interrupted, warnings dropped.
fn ctx(kernel: &SimKernel, blessed_dir: PathBuf, uid: u32, class: Class) -> Context<'_> {
    Context {
        kernel,
        groups: &Groups,
        blessed_dir,
        real_uid: Uid::from_raw(uid),
        real_gid: Gid::ROOT,
        lookup_ids: None,
        window: &staprun::NoWindow,
        audit: &staprun::no_audit,
        class,
        pid: Pid::from_raw(1),
        interrupted: &no,
        warn: &ignore,
    }
}

fn ignore(_: &str) {}

struct Run {
    kernel: SimKernel,
    warnings: RefCell<Vec<String>>,
    /// The audit lines of every load and unload, as `who` did them.
    audit: RefCell<Vec<String>>,
}

impl Run {
    fn new() -> Run {
        Run {
            kernel: SimKernel::new(2),
            warnings: RefCell::new(Vec::new()),
            audit: RefCell::new(Vec::new()),
        }
    }
    fn load(
        &self,
        tree: &Tree,
        class: Class,
        uid: u32,
        args: &[&str],
    ) -> Result<load::Loaded, StaprunError> {
        self.kernel.set_caller(uid, 0);
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let opts = cli::parse(Program::Staprun, &args)?;
        let warn = |m: &str| self.warnings.borrow_mut().push(m.to_string());
        let audit = |e: &audit::Event<'_>| self.audit.borrow_mut().push(e.line("who"));
        let ctx = Context {
            pid: Pid::from_raw(4242),
            warn: &warn,
            audit: &audit,
            ..ctx(&self.kernel, tree.blessed(), uid, class)
        };
        load::load(&ctx, &opts)
    }
    fn unload(&self, class: Class, uid: u32, name: &str) -> Result<Vec<String>, StaprunError> {
        self.kernel.set_caller(uid, 0);
        let audit = |e: &audit::Event<'_>| self.audit.borrow_mut().push(e.line("who"));
        let ctx = Context {
            audit: &audit,
            ..ctx(&self.kernel, PathBuf::from("/nonexistent"), uid, class)
        };
        unload::unload(&ctx, name)
    }
}

/// One row of the permission table: how the module is placed.
#[derive(Debug, Clone, Copy)]
enum Row {
    Blessed,
    Elsewhere,
    SymlinkOut,
    DirWorldWritable,
    DirNotRootOwned,
    FileWorldWritable,
    FileOwnedByNonStapdev,
    StapdevLayoutPublishedByBob,
    StapdevLayoutOwnedByAlice,
    DirGroupWritableOtherGroup,
    UntrustedParentDir,
}

/// Build the row; return the MODULE argument to pass.
fn setup(tree: &Tree, row: Row) -> String {
    let b = tree.blessed();
    let e = tree.base.join("elsewhere");
    match row {
        Row::Blessed => {
            tree.module(&b, "pmod", 0o644, 0, 0);
        }
        Row::Elsewhere => {
            let p = tree.module(&e, "pmod", 0o644, 0, 0);
            return p.display().to_string();
        }
        Row::SymlinkOut => {
            let p = tree.module(&e, "pmod", 0o644, 0, 0);
            symlink(&p, b.join("pmod.ko")).unwrap();
        }
        Row::DirWorldWritable => {
            tree.module(&b, "pmod", 0o644, 0, 0);
            set(&b, 0o777, 0, 0);
        }
        Row::DirNotRootOwned => {
            tree.module(&b, "pmod", 0o644, 0, 0);
            set(&b, 0o755, ALICE, 0);
        }
        Row::FileWorldWritable => {
            tree.module(&b, "pmod", 0o666, 0, 0);
        }
        Row::FileOwnedByNonStapdev => {
            tree.module(&b, "pmod", 0o644, ALICE, 0);
        }
        Row::StapdevLayoutPublishedByBob => {
            set(&b, 0o775, 0, STAPDEV_GID);
            tree.module(&b, "pmod", 0o664, BOB, STAPDEV_GID);
        }
        Row::StapdevLayoutOwnedByAlice => {
            set(&b, 0o775, 0, STAPDEV_GID);
            tree.module(&b, "pmod", 0o644, ALICE, STAPDEV_GID);
        }
        Row::DirGroupWritableOtherGroup => {
            set(&b, 0o775, 0, 100);
            tree.module(&b, "pmod", 0o644, 0, 0);
        }
        Row::UntrustedParentDir => {
            tree.module(&b, "pmod", 0o644, 0, 0);
            set(&tree.base.join("lib/modules"), 0o757, 0, 0);
        }
    }
    // The bare name resolves to <blessed>/pmod.ko.
    "pmod".into()
}

/// Expected outcome: true = loads.
fn expected(class: Class, row: Row) -> bool {
    match class {
        Class::None => false,
        Class::Root | Class::Stapdev => true,
        Class::Stapusr | Class::Stapsys => {
            matches!(row, Row::Blessed | Row::StapdevLayoutPublishedByBob)
        }
    }
}

const ROWS: [Row; 11] = [
    Row::Blessed,
    Row::Elsewhere,
    Row::SymlinkOut,
    Row::DirWorldWritable,
    Row::DirNotRootOwned,
    Row::FileWorldWritable,
    Row::FileOwnedByNonStapdev,
    Row::StapdevLayoutPublishedByBob,
    Row::StapdevLayoutOwnedByAlice,
    Row::DirGroupWritableOtherGroup,
    Row::UntrustedParentDir,
];

const CLASSES: [(Class, u32); 5] = [
    (Class::Root, 0),
    (Class::Stapdev, BOB),
    (Class::Stapsys, SAM),
    (Class::Stapusr, ALICE),
    (Class::None, CAROL),
];

#[test]
fn permission_table() {
    let mut table = String::new();
    let mut failures = Vec::new();
    for row in ROWS {
        for (class, uid) in CLASSES {
            let tree = Tree::new();
            let arg = setup(&tree, row);
            let run = Run::new();
            let r = run.load(&tree, class, uid, &[&arg]);
            let loaded = run.kernel.is_loaded("pmod");
            let ok = r.is_ok();
            table.push_str(&format!(
                "{row:?} / {class}: {}\n",
                match &r {
                    Ok(_) => "loaded".to_string(),
                    Err(e) => format!("refused: {e}"),
                }
            ));
            if ok != expected(class, row) || ok != loaded {
                failures.push(format!("{row:?} as {class}: got {r:?}, loaded={loaded}"));
            }
            if let Err(e) = &r {
                // Denials name the rule.
                let msg = e.to_string();
                assert!(
                    msg.contains("Permission denied") || msg.contains("not"),
                    "{msg}"
                );
            }
        }
    }
    println!("{table}");
    assert!(
        failures.is_empty(),
        "permission table mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn explain_agrees_with_load_on_every_row() {
    for row in ROWS {
        for (class, uid) in CLASSES {
            let tree = Tree::new();
            let arg = setup(&tree, row);
            let run = Run::new();
            run.kernel.set_caller(uid, 0);
            let ctx = ctx(&run.kernel, tree.blessed(), uid, class);
            let path = cli::resolve_module(&arg, &tree.blessed()).unwrap().path;
            let (allowed, text) = load::explain(&ctx, &path).unwrap();
            assert_eq!(allowed, expected(class, row), "{row:?} as {class}: {text}");
            assert!(!text.is_empty());
            // Nothing was loaded by explaining.
            assert!(run.kernel.events().is_empty());
        }
    }
}

#[test]
fn denials_name_the_rule() {
    let cases: [(Row, &str); 8] = [
        (Row::Elsewhere, "may load modules only from"),
        (Row::SymlinkOut, "symbolic link"),
        (Row::DirWorldWritable, "must not be world writable"),
        (Row::DirNotRootOwned, "must be owned by root"),
        (Row::FileWorldWritable, "must not be world writable"),
        (Row::FileOwnedByNonStapdev, "owned by uid 1001"),
        (Row::DirGroupWritableOtherGroup, "writable by group 100"),
        (
            Row::UntrustedParentDir,
            "must be owned by root and not writable by others",
        ),
    ];
    for (row, text) in cases {
        let tree = Tree::new();
        let arg = setup(&tree, row);
        let run = Run::new();
        let e = run.load(&tree, Class::Stapusr, ALICE, &[&arg]).unwrap_err();
        assert!(e.to_string().contains(text), "{row:?}: {e}");
    }
    let tree = Tree::new();
    let run = Run::new();
    let e = run.load(&tree, Class::None, CAROL, &["pmod"]).unwrap_err();
    assert!(e.to_string().contains("not a member of stapusr"), "{e}");
}

#[test]
fn stapusr_gets_nothing_opened_outside_the_blessed_dir() {
    // A FIFO elsewhere would block or a device would act if opened as
    // root; for stapusr nothing outside is opened at all.
    let tree = Tree::new();
    let fifo = tree.base.join("elsewhere/x.ko");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let run = Run::new();
    let e = run
        .load(&tree, Class::Stapusr, ALICE, &[fifo.to_str().unwrap()])
        .unwrap_err();
    assert!(e.to_string().contains("may load modules only from"), "{e}");
    // Root is refused a FIFO without blocking: it is not a regular file.
    let e = run
        .load(&tree, Class::Root, 0, &[fifo.to_str().unwrap()])
        .unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn a_module_open_for_writing_is_not_loaded() {
    let tree = Tree::new();
    let p = tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    // Someone (root, or a stapdev member in the 775 layout) is writing it.
    let writer = fs::OpenOptions::new().append(true).open(&p).unwrap();
    let run = Run::new();
    let e = run
        .load(&tree, Class::Stapusr, ALICE, &["pmod"])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("kept changing while it was being read"),
        "{e}"
    );
    assert!(run.kernel.loaded().is_empty());
    // Once the writer is done, it loads.
    drop(writer);
    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
}

#[test]
fn no_existence_oracle_for_stapusr() {
    let tree = Tree::new();
    let secret = tree.base.join("elsewhere/secret");
    fs::create_dir(&secret).unwrap();
    set(&secret, 0o700, 0, 0);
    let run = Run::new();
    let there = run
        .load(
            &tree,
            Class::Stapusr,
            ALICE,
            &[secret.join("x.ko").to_str().unwrap()],
        )
        .unwrap_err();
    let nowhere = tree.base.join("elsewhere/nosuchdir/x.ko");
    let absent = run
        .load(&tree, Class::Stapusr, ALICE, &[nowhere.to_str().unwrap()])
        .unwrap_err();
    // The same rule answers both.
    for e in [&there, &absent] {
        assert!(e.to_string().contains("may load modules only from"), "{e}");
    }
    // Root is told what is wrong.
    let e = run
        .load(&tree, Class::Root, 0, &[nowhere.to_str().unwrap()])
        .unwrap_err();
    assert!(e.to_string().contains("No such file"), "{e}");
}

#[test]
fn paths_into_the_blessed_dir_and_hard_links() {
    let tree = Tree::new();
    let p = tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let run = Run::new();
    // A full path to the blessed module is fine.
    run.load(&tree, Class::Stapusr, ALICE, &[p.to_str().unwrap()])
        .unwrap();
    run.kernel.delete_module("pmod").unwrap();
    // A path with .. that lands in the blessed dir is the same directory.
    let dotted = tree
        .base
        .join("elsewhere/../lib/modules/K/systemtap/pmod.ko");
    run.load(&tree, Class::Stapusr, ALICE, &[dotted.to_str().unwrap()])
        .unwrap();
    run.kernel.delete_module("pmod").unwrap();
    // A hard link to it from elsewhere is elsewhere.
    let link = tree.base.join("elsewhere/pmod.ko");
    fs::hard_link(&p, &link).unwrap();
    assert!(
        run.load(&tree, Class::Stapusr, ALICE, &[link.to_str().unwrap()])
            .is_err()
    );
    // /proc/self/fd paths are elsewhere too.
    let f = fs::File::open(&p).unwrap();
    let via_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    assert!(run.load(&tree, Class::Stapusr, ALICE, &[&via_fd]).is_err());
    assert!(!run.kernel.is_loaded("pmod"));
}

#[test]
fn setup_messages_in_order_with_the_right_generation() {
    for (g, script) in [
        (Generation::V4, None),
        (
            Generation::V5,
            Some(Script {
                generation: Generation::V5,
                ..Script::default()
            }),
        ),
    ] {
        let tree = Tree::new();
        tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
        let run = Run::new();
        if let Some(s) = script {
            run.kernel.set_default_script(s);
        }
        let loaded = run
            .load(
                &tree,
                Class::Stapusr,
                ALICE,
                &["-b", "4", "-r", "1:ssh://h", "pmod", "x=1"],
            )
            .unwrap();
        assert_eq!(loaded.generation, g);
        // The audit hash is of the bytes loaded (here: the file unchanged).
        let bytes = fs::read(tree.blessed().join("pmod.ko")).unwrap();
        assert_eq!(loaded.sha256, staprun::audit::sha256_hex(&bytes));
        let reqs = run.kernel.requests("pmod");
        assert!(
            matches!(reqs[0], Request::PrivilegeCredentials { mask: 0xe }),
            "{reqs:?}"
        );
        assert!(matches!(reqs[1], Request::Relocation { .. }), "{reqs:?}");
        let tz = reqs
            .iter()
            .position(|r| matches!(r, Request::TzInfo { .. }))
            .unwrap();
        assert!(
            matches!(reqs[tz + 1], Request::RemoteId { id: 1, .. }),
            "{reqs:?}"
        );
        // The module is owned by the real user, with the options passed.
        assert_eq!(run.kernel.owner_of("pmod"), Some(ALICE));
        let params = run.kernel.events().iter().find_map(|e| match e {
            Event::Loaded { params, .. } => Some(params.clone()),
            _ => None,
        });
        assert_eq!(params.as_deref(), Some("x=1 _stp_bufsize=4"));
    }
}

#[test]
fn reserved_module_options_are_refused() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let run = Run::new();
    let e = run
        .load(&tree, Class::Stapusr, ALICE, &["pmod", "_stp_uid=0"])
        .unwrap_err();
    assert!(matches!(e, StaprunError::ReservedOption(_)), "{e}");
    assert!(!run.kernel.is_loaded("pmod"));
}

#[test]
fn second_load_gives_rename_guidance_and_r_renames() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod_long_name", 0o644, 0, 0);
    let run = Run::new();
    run.load(&tree, Class::Stapusr, ALICE, &["pmod_long_name"])
        .unwrap();
    let e = run
        .load(&tree, Class::Stapusr, ALICE, &["pmod_long_name"])
        .unwrap_err();
    assert!(e.to_string().contains("File exists"), "{e}");
    assert_eq!(
        e.hint().as_deref(),
        Some("Rerun with staprun option '-R' to rename this module.")
    );
    let l = run
        .load(&tree, Class::Stapusr, ALICE, &["-R", "pmod_long_name"])
        .unwrap();
    assert_eq!(l.name.as_str(), "pmod_long_4242");
    // Renamed in memory: the loaded bytes differ from the file's.
    let file = fs::read(tree.blessed().join("pmod_long_name.ko")).unwrap();
    assert_ne!(l.sha256, staprun::audit::sha256_hex(&file));
    assert!(run.kernel.is_loaded("pmod_long_4242") && run.kernel.is_loaded("pmod_long_name"));
    // As in the C staprun, a name exactly as long as "_<pid>" becomes it.
    tree.module(&tree.blessed(), "abcde", 0o644, 0, 0);
    let l = run
        .load(&tree, Class::Stapusr, ALICE, &["-R", "abcde"])
        .unwrap();
    assert_eq!(l.name.as_str(), "_4242");
    // A name too short to rename: warning, loaded under its own name.
    tree.module(&tree.blessed(), "ab", 0o644, 0, 0);
    let l = run
        .load(&tree, Class::Stapusr, ALICE, &["-R", "ab"])
        .unwrap();
    assert_eq!(l.name.as_str(), "ab");
    assert!(
        run.warnings
            .borrow()
            .iter()
            .any(|w| w.contains("too short for renaming"))
    );
}

#[test]
fn load_errors_leave_nothing_loaded() {
    for errno in [
        libc::ENOEXEC,
        libc::EINVAL,
        libc::EKEYREJECTED,
        libc::ENOMEM,
        libc::EPERM,
    ] {
        let tree = Tree::new();
        tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
        let run = Run::new();
        run.kernel.set_faults(Faults {
            load_errno: Some(errno),
            ..Faults::default()
        });
        let e = run.load(&tree, Class::Root, 0, &["pmod"]).unwrap_err();
        assert!(e.to_string().starts_with("Couldn't insert module"), "{e}");
        assert!(run.kernel.loaded().is_empty());
    }
    // A failure after the load is undone through the checks of -d, never
    // by name alone: a control channel someone holds (EBUSY) means a
    // stapio is attached, and that module is left alone.
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let run = Run::new();
    run.kernel.set_faults(Faults {
        control_busy: true,
        ..Faults::default()
    });
    let e = run.load(&tree, Class::Root, 0, &["pmod"]).unwrap_err();
    assert!(e.to_string().contains("it was left loaded"), "{e}");
    assert!(e.to_string().contains("a stapio is attached"), "{e}");
    assert_eq!(run.kernel.loaded(), ["pmod"]);
    // Not an ELF file: refused before any load.
    let p = tree.blessed().join("junk.ko");
    fs::write(&p, b"not a module").unwrap();
    set(&p, 0o644, 0, 0);
    let run = Run::new();
    let e = run.load(&tree, Class::Root, 0, &["junk"]).unwrap_err();
    assert!(matches!(e, StaprunError::NotAModule { .. }), "{e}");
    assert!(run.kernel.events().is_empty());
}

/// A module built for another kernel release is refused before
/// `init_module`, for every caller (it is no permission rule), with both
/// releases in one line; `--explain` says it; so for a module without
/// vermagic. A caller the rules refuse hears the rule, not this.
#[test]
fn a_module_for_another_kernel_is_refused_for_everyone() {
    let (mine, other) = (running(), other_release());
    let e = |tree: &Tree| tree.base.join("elsewhere");
    for (class, uid) in [
        (Class::Root, 0),
        (Class::Stapdev, BOB),
        (Class::Stapsys, SAM),
        (Class::Stapusr, ALICE),
    ] {
        for from_elsewhere in [false, true] {
            if from_elsewhere && !class.may_load_anything() {
                continue;
            }
            let tree = Tree::new();
            let dir = if from_elsewhere {
                e(&tree)
            } else {
                tree.blessed()
            };
            let p = tree.module_for(&other, &dir, "pmod", 0o644, 0, 0);
            let arg = if from_elsewhere {
                p.display().to_string()
            } else {
                "pmod".to_string()
            };
            let run = Run::new();
            let err = run.load(&tree, class, uid, &[&arg]).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, StaprunError::WrongKernel { .. })
                    && msg.contains(&mine)
                    && msg.contains(&other)
                    && !msg.contains('\n'),
                "{class}: {msg}"
            );
            assert_eq!(err.exit_code(), 1);
            assert!(run.kernel.events().is_empty(), "{class}: the kernel saw it");
            let ctx = ctx(&run.kernel, tree.blessed(), uid, class);
            let (allowed, text) = load::explain(&ctx, &p).unwrap();
            assert!(
                !allowed && text.contains(&mine) && text.contains(&other),
                "{class}: {text}"
            );
            // The module built for this kernel loads.
            tree.module(&dir, "pmod", 0o644, 0, 0);
            run.load(&tree, class, uid, &[&arg]).unwrap();
            assert!(run.kernel.is_loaded("pmod"));
        }
    }
    // No vermagic: refused up front as well.
    let tree = Tree::new();
    let p = tree.blessed().join("pmod.ko");
    fs::write(&p, build_test_module("pmod", &[])).unwrap();
    set(&p, 0o644, 0, 0);
    let run = Run::new();
    let err = run.load(&tree, Class::Root, 0, &["pmod"]).unwrap_err();
    assert!(
        matches!(
            &err,
            StaprunError::WrongKernel {
                mismatch: load::KernelMismatch::NoRelease,
                ..
            }
        ),
        "{err}"
    );
    assert!(run.kernel.events().is_empty());
    // The permission rules come first: carol hears that she is in no
    // group, alice that the module is not in the blessed directory.
    let tree = Tree::new();
    let p = tree.module_for(&other, &e(&tree), "pmod", 0o644, 0, 0);
    let arg = p.display().to_string();
    let run = Run::new();
    for (class, uid) in [(Class::None, CAROL), (Class::Stapusr, ALICE)] {
        let err = run.load(&tree, class, uid, &[&arg]).unwrap_err();
        assert!(matches!(err, StaprunError::Denied { .. }), "{class}: {err}");
    }
}

#[test]
fn interrupted_load_leaves_nothing() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let kernel = SimKernel::new(1);
    kernel.set_caller(ALICE, 0);
    let calls = std::cell::Cell::new(0);
    // The signal arrives after the load, during setup.
    let interrupted = || {
        calls.set(calls.get() + 1);
        calls.get() > 1
    };
    let warn = |_: &str| {};
    let ctx = alice_ctx(&kernel, &tree, &interrupted, &warn);
    let opts = cli::parse(Program::Staprun, &[OsString::from("pmod")]).unwrap();
    let e = load::load(&ctx, &opts).unwrap_err();
    assert!(
        matches!(&e, StaprunError::Undone { error, undo }
            if matches!(**error, StaprunError::Interrupted { .. }) && undo == "it has been unloaded"),
        "{e}"
    );
    assert!(
        kernel
            .events()
            .iter()
            .any(|e| matches!(e, Event::Loaded { .. }))
    );
    assert!(!kernel.is_loaded("pmod"));
}

/// ALICE (stapusr) loading from `tree`'s blessed directory on `kernel`.
fn alice_ctx<'a>(
    kernel: &'a SimKernel,
    tree: &Tree,
    interrupted: &'a dyn Fn() -> bool,
    warn: &'a dyn Fn(&str),
) -> Context<'a> {
    Context {
        interrupted,
        warn,
        ..ctx(kernel, tree.blessed(), ALICE, Class::Stapusr)
    }
}

/// Between staprun's load and its setup, the module of that name became
/// someone else's (ours unloaded, another user's loaded): the simulated
/// kernel records the loader as BOB while the caller is ALICE. No
/// privileged message goes to it and the undo, through the checks of -d,
/// leaves it loaded.
#[test]
fn a_module_that_is_not_ours_gets_nothing_and_stays() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let kernel = SimKernel::new(1);
    kernel.set_caller(BOB, 0);
    let no = || false;
    let warn = |_: &str| {};
    let ctx = alice_ctx(&kernel, &tree, &no, &warn);
    let opts = cli::parse(Program::Staprun, &[OsString::from("pmod")]).unwrap();
    let e = load::load(&ctx, &opts).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("belongs to uid") && text.contains("it was left loaded"),
        "{text}"
    );
    assert!(kernel.is_loaded("pmod"));
    assert!(
        !kernel
            .events()
            .iter()
            .any(|e| matches!(e, Event::Request { .. } | Event::RequestRejected { .. })),
        "{:?}",
        kernel.events()
    );
}

#[test]
fn unload_rule() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let run = Run::new();
    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    run.kernel.add_other_module("ext4");
    // Not a SystemTap module: refused, still loaded.
    let e = run.unload(Class::Root, 0, "ext4").unwrap_err();
    assert!(
        e.to_string().contains("no SystemTap control directory"),
        "{e}"
    );
    assert!(run.kernel.is_loaded("ext4"));
    // Another user's module: refused.
    let e = run.unload(Class::Stapsys, SAM, "pmod").unwrap_err();
    assert!(e.to_string().contains("belongs to another user"), "{e}");
    // Attached: refused.
    let dir = run
        .kernel
        .open_module_dir(&stap_common::modname::ModName::new("pmod").unwrap())
        .unwrap();
    let ctl = dir.open_control().unwrap();
    let e = run.unload(Class::Stapusr, ALICE, "pmod").unwrap_err();
    assert!(e.to_string().contains("attached"), "{e}");
    assert!(run.kernel.is_loaded("pmod"));
    drop(ctl);
    // Names that could be paths are refused up front.
    assert!(matches!(
        run.unload(Class::Root, 0, "../x"),
        Err(StaprunError::BadName(_))
    ));
    // The owner may unload it; then it is gone.
    run.unload(Class::Stapusr, ALICE, "pmod").unwrap();
    assert!(!run.kernel.is_loaded("pmod"));
    // Root may unload anyone's SystemTap module.
    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    run.unload(Class::Root, 0, "pmod").unwrap();
    // '*' removes only the caller's unused ones.
    tree.module(&tree.blessed(), "other", 0o644, 0, 0);
    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    run.load(&tree, Class::Stapsys, SAM, &["other"]).unwrap();
    let gone = run.unload(Class::Stapusr, ALICE, "*").unwrap();
    assert_eq!(gone, vec!["pmod".to_string()]);
    assert!(run.kernel.is_loaded("other") && run.kernel.is_loaded("ext4"));
}

#[test]
fn attach_rule() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let run = Run::new();
    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    let name = stap_common::modname::ModName::new("pmod").unwrap();
    let as_ = |uid, class| ctx(&run.kernel, tree.blessed(), uid, class);
    run.kernel.set_caller(SAM, 0);
    let e = load::attach(&as_(SAM, Class::Stapsys), &name)
        .err()
        .expect("sam may not attach");
    assert!(e.to_string().contains("another user"), "{e}");
    run.kernel.set_caller(ALICE, 0);
    assert!(load::attach(&as_(ALICE, Class::Stapusr), &name).is_ok());
}

#[test]
fn uprobes_needs_stapdev() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let up = tree.module(&tree.blessed(), "uprobes", 0o644, 0, 0);
    let run = Run::new();
    let arg = format!("-u{}", up.display());
    let e = run
        .load(&tree, Class::Stapusr, ALICE, &[&arg, "pmod"])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("only root and stapdev may load uprobes.ko"),
        "{e}"
    );
    assert!(run.kernel.loaded().is_empty());
    run.load(&tree, Class::Stapdev, BOB, &[&arg, "pmod"])
        .unwrap();
    assert!(run.kernel.is_loaded("uprobes") && run.kernel.is_loaded("pmod"));
}

/// Every load, denial and unload is on record, in order, with the hash of
/// the bytes loaded.
#[test]
fn the_audit_trail_of_a_load_a_denial_and_an_unload() {
    let tree = Tree::new();
    let path = tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let sha = audit::sha256_hex(&fs::read(&path).unwrap());
    let run = Run::new();
    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    run.load(&tree, Class::None, CAROL, &["pmod"]).unwrap_err();
    run.unload(Class::Stapusr, ALICE, "pmod").unwrap();
    let lines = run.audit.borrow().clone();
    let kinds: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(kinds, ["LOADING", "LOAD", "DENY", "UNLOAD"], "{lines:#?}");
    assert!(
        lines[0].contains(&sha) && lines[1].contains(&sha),
        "{lines:#?}"
    );
    assert!(lines[1].contains("rule=\"BlessedModule\""), "{lines:#?}");
    assert!(lines[2].contains("not a member of stapusr"), "{lines:#?}");
    assert_eq!(lines[3], "UNLOAD who module=pmod");
}

/// The hand-over's guard: dropped or failed, it unloads (through the -d
/// checks) what this staprun loaded; disarmed at the privilege drop, or
/// for a module it only attached to, it leaves the module alone.
#[test]
fn the_undo_guard_unloads_unless_disarmed() {
    let tree = Tree::new();
    tree.module(&tree.blessed(), "pmod", 0o644, 0, 0);
    let run = Run::new();
    let name = stap_common::modname::ModName::new("pmod").unwrap();
    let alice = ctx(&run.kernel, tree.blessed(), ALICE, Class::Stapusr);

    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    drop(UndoGuard::new(&alice, name.clone(), true));
    assert!(!run.kernel.is_loaded("pmod"), "dropped: unloaded");

    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    let e = UndoGuard::new(&alice, name.clone(), true).fail(StaprunError::Fips);
    assert!(
        matches!(&e, StaprunError::Undone { undo, .. } if undo == "it has been unloaded"),
        "{e}"
    );
    assert!(!run.kernel.is_loaded("pmod"), "failed: unloaded");

    run.load(&tree, Class::Stapusr, ALICE, &["pmod"]).unwrap();
    assert!(UndoGuard::new(&alice, name.clone(), true).disarm());
    assert!(run.kernel.is_loaded("pmod"), "disarmed: left for stapio");

    // Attached, not loaded by this staprun: never unloaded.
    let e = UndoGuard::new(&alice, name.clone(), false).fail(StaprunError::Fips);
    assert!(matches!(e, StaprunError::Fips), "{e}");
    assert!(run.kernel.is_loaded("pmod"));

    // Another user's module: the -d checks keep it.
    let sam = ctx(&run.kernel, tree.blessed(), SAM, Class::Stapsys);
    run.kernel.set_caller(SAM, 0);
    let e = UndoGuard::new(&sam, name, true).fail(StaprunError::Fips);
    assert!(e.to_string().contains("it was left loaded"), "{e}");
    assert!(run.kernel.is_loaded("pmod"));
}
