//! Read once, (rename), load those bytes, send the privileged setup
//! messages, and undo the load on any failure.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

use stap_common::cli::{Options, resolve_module};
use stap_common::elf;
use stap_common::ids::Uid;
use stap_common::kernel::{Control, ModuleDir, module_error_text};
use stap_common::modname::ModName;
use stap_common::protocol::{Generation, Request, privilege};

use crate::Context;
use crate::error::StaprunError;
use crate::facts::{self, read_image};
use crate::policy::{Class, Decision, Rule, decide};

/// Where `-u` without a path looks for uprobes.ko.
pub const DEFAULT_UPROBES: &str = "/usr/share/systemtap/runtime/uprobes/uprobes.ko";

/// A module that is loaded and set up, ready for stapio.
pub struct Loaded {
    pub name: ModName,
    pub generation: Generation,
    pub dir: Box<dyn ModuleDir>,
    /// The rule that allowed the load (for the audit line).
    pub rule: Rule,
    pub path: PathBuf,
    /// SHA-256 (hex) of the bytes given to `init_module`.
    pub sha256: String,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .finish()
    }
}

/// The decision alone, without loading anything (also `--explain`).
pub fn check(ctx: &Context<'_>, path: &Path) -> Result<(Decision, facts::Opened), StaprunError> {
    let opened = facts::gather(
        path,
        &ctx.blessed_dir,
        ctx.class,
        ctx.groups,
        ctx.lookup_ids,
    )?;
    Ok((decide(ctx.class, &opened.facts), opened))
}

/// For `--explain`: whether the caller may load `path`, and why, in plain
/// words. Loads nothing.
pub fn explain(ctx: &Context<'_>, path: &Path) -> Result<(bool, String), StaprunError> {
    if ctx.class == Class::None {
        return Ok((
            false,
            Rule::NotInAnyGroup.explain(&dummy_facts(), ctx.class),
        ));
    }
    let (decision, opened) = check(ctx, path)?;
    let rule = match decision {
        Decision::Allow(r) => r,
        Decision::Deny(r) => return Ok((false, r.explain(&opened.facts, ctx.class))),
    };
    // Allowed by the rules: the module's bytes may be read, and they must
    // be for this kernel, as for a load.
    let image = image_of(&opened, path)?;
    match built_for_running_kernel(&image, path) {
        Ok(()) => Ok((true, rule.explain(&opened.facts, ctx.class))),
        Err(StaprunError::WrongKernel { mismatch, .. }) => Ok((false, format!("it {mismatch}"))),
        Err(StaprunError::NotAModule { detail, .. }) => Ok((
            false,
            format!("it is not a loadable kernel module: {detail}"),
        )),
        Err(e) => Err(e),
    }
}

/// Why a module's bytes are not for the running kernel. Not a permission
/// rule (those are [`crate::policy`]'s, decided on facts about files): a
/// fact about the module, read from its bytes, which are read only once
/// the rules allow the caller to load it, so it is checked after the
/// decision and holds for every caller, root included. Its text follows
/// "module PATH " (the error) or "it " (`--explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelMismatch {
    /// Its `vermagic=` names another kernel release.
    OtherRelease { module: String, running: String },
    /// It has no `vermagic=` (or no `.modinfo`).
    NoRelease,
}

impl std::fmt::Display for KernelMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelMismatch::OtherRelease { module, running } => write!(
                f,
                "was built for kernel {module}, not for the running kernel {running}"
            ),
            KernelMismatch::NoRelease => f.write_str(
                "names no kernel release (no vermagic in its .modinfo): the kernel loads such a module only by force, which staprun never does",
            ),
        }
    }
}

/// The kernel release a module image was built for, against `running`
/// (pure; see [`built_for_running_kernel`]).
///
/// The release is the first word of the module's `vermagic=` (as the
/// kernel's `same_magic` splits it) and must equal the running release
/// exactly. The kernel itself, with `CONFIG_MODVERSIONS` (Debian's), skips
/// that word and compares the rest of vermagic and the symbol CRCs, so a
/// module built for another release can even load; a SystemTap module is
/// built for one kernel's headers and debuginfo (probe addresses, structure
/// layouts), and is refused here by name instead of failing in the kernel
/// ("Invalid module format") or, worse, loading.
///
/// A module with no vermagic is refused too: the kernel loads one only by
/// force (`try_to_force_load`: refused without `CONFIG_MODULE_FORCE_LOAD`,
/// with it, loaded and the kernel tainted `F`), staprun never forces a
/// load (`-F` is refused), and kbuild, which builds every SystemTap
/// module, always writes a vermagic. A vermagic that is not plain text is
/// not a module (`NotAModule`).
pub fn kernel_mismatch(
    image: &[u8],
    running: &str,
) -> Result<Option<KernelMismatch>, elf::ElfError> {
    let Some(v) = elf::vermagic(image)? else {
        return Ok(Some(KernelMismatch::NoRelease));
    };
    let module = elf::vermagic_release(&v).ok_or(elf::ElfError::BadVermagic)?;
    Ok((module != running).then(|| KernelMismatch::OtherRelease {
        module: module.to_string(),
        running: running.to_string(),
    }))
}

/// Refuse, before anything is loaded, a module not built for the running
/// kernel (its release from `/proc/sys/kernel/osrelease`).
pub fn built_for_running_kernel(image: &[u8], path: &Path) -> Result<(), StaprunError> {
    let running = stap_common::sys::kernel_release().map_err(StaprunError::Setup)?;
    match kernel_mismatch(image, &running) {
        Ok(None) => Ok(()),
        Ok(Some(mismatch)) => Err(StaprunError::WrongKernel {
            path: path.to_path_buf(),
            mismatch,
        }),
        Err(e) => Err(StaprunError::NotAModule {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// The module's bytes, read once from the descriptor that was checked.
fn image_of(opened: &facts::Opened, path: &Path) -> Result<Vec<u8>, StaprunError> {
    let fd = opened.file.as_ref().ok_or_else(|| StaprunError::Denied {
        path: path.to_path_buf(),
        reason: "the module could not be opened".into(),
    })?;
    read_image(fd, opened.size, path)
}

fn denied(ctx: &Context<'_>, rule: &Rule, opened: &facts::Opened) -> StaprunError {
    StaprunError::Denied {
        path: opened.facts.path.clone(),
        reason: rule.explain(&opened.facts, ctx.class),
    }
}

/// Read the module the decision allowed, and check that it was built for
/// the running kernel.
fn allowed_image(
    ctx: &Context<'_>,
    path: &Path,
) -> Result<(Vec<u8>, Rule, facts::Opened), StaprunError> {
    // Nothing is even opened for a caller in no SystemTap group.
    if ctx.class == Class::None {
        let reason = Rule::NotInAnyGroup.explain(&dummy_facts(), ctx.class);
        return Err(StaprunError::Denied {
            path: path.to_path_buf(),
            reason,
        });
    }
    let (decision, opened) = check(ctx, path)?;
    let rule = match decision {
        Decision::Allow(r) => r,
        Decision::Deny(r) => return Err(denied(ctx, &r, &opened)),
    };
    let image = image_of(&opened, path)?;
    built_for_running_kernel(&image, path)?;
    Ok((image, rule, opened))
}

/// Rename the module in the in-memory image to `<prefix>_<pid>`, keeping
/// its length. Returns the new name, or `None` (with a warning) if the
/// name is too short to rename.
pub fn rename_image(
    ctx: &Context<'_>,
    image: &mut [u8],
    path: &Path,
) -> Result<Option<String>, StaprunError> {
    let (at, old) = elf::module_name(image).map_err(|e| StaprunError::NotAModule {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let suffix = format!("_{}", ctx.pid);
    if old.len() < suffix.len() {
        (ctx.warn)(&format!(
            "Old module name '{old}' is too short for renaming, ignoring -R."
        ));
        return Ok(None);
    }
    let new = format!("{}{}", &old[..old.len() - suffix.len()], suffix);
    // `module_name` guarantees an ASCII name that fits its field; the new
    // name has the same length.
    let field = image
        .get_mut(at..at + new.len())
        .filter(|_| new.len() < elf::THIS_MODULE_NAME_LEN)
        .ok_or_else(|| StaprunError::NotAModule {
            path: path.to_path_buf(),
            detail: "module name field out of bounds".into(),
        })?;
    field.copy_from_slice(new.as_bytes());
    Ok(Some(new))
}

/// Bytes the kernel's parameter splitter (`next_arg`, with the kernel's
/// own `isspace`) takes as white space: ASCII space, `\t \n \v \f \r`,
/// and 0xA0 (Latin-1 no-break space, which occurs inside many UTF-8
/// characters: `à` is C3 A0).
pub fn kernel_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

/// The parameter string for `init_module`.
///
/// The kernel splits this string at its own white space (see
/// [`kernel_space`]), honouring double quotes, so every value holding such
/// a byte is quoted; a value with a double quote or a control character,
/// and a name that is not a parameter name (ASCII letters, digits, `_`,
/// `-`), are refused: one argument can never become two parameters (for
/// example `a=1 _stp_bufsize=4095`, or `a=à_stp_bufsize=4095`).
pub fn module_params(opts: &Options) -> Result<String, StaprunError> {
    let mut params: Vec<String> = Vec::new();
    for o in &opts.module_options {
        let (name, value) = o.split_once('=').unwrap_or((o.as_str(), ""));
        let bad = || StaprunError::Usage(stap_common::cli::CliError::BadModuleOption(o.clone()));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad());
        }
        if name.starts_with("_stp_") {
            return Err(StaprunError::ReservedOption(name.to_string()));
        }
        if value.contains('"') || value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad());
        }
        if value.bytes().any(kernel_space) || value.chars().any(char::is_whitespace) {
            params.push(format!("{name}=\"{value}\""));
        } else {
            params.push(o.clone());
        }
    }
    if let Some(b) = opts.buffer_size_mb {
        params.push(format!("_stp_bufsize={b}"));
    }
    Ok(params.join(" "))
}

fn load_uprobes(ctx: &Context<'_>, given: Option<&str>) -> Result<(), StaprunError> {
    if !ctx.class.may_load_anything() {
        let path = PathBuf::from(given.unwrap_or(DEFAULT_UPROBES));
        return Err(StaprunError::Denied {
            path,
            reason: Rule::UprobesNeedsStapdev.explain(&dummy_facts(), ctx.class),
        });
    }
    let path = PathBuf::from(given.unwrap_or(DEFAULT_UPROBES));
    let (image, _, _) = allowed_image(ctx, &path)?;
    ctx.window.close().map_err(StaprunError::Setup)?;
    match ctx
        .window
        .init_as_caller(&mut || ctx.kernel.init_module(&image, ""))
    {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(StaprunError::Insert {
            path,
            text: module_error_text(&e),
            exists: false,
        }),
    }
}

fn dummy_facts() -> crate::policy::ModuleFacts {
    crate::policy::ModuleFacts {
        path: PathBuf::new(),
        blessed_dir: PathBuf::new(),
        placement: crate::policy::Placement::Elsewhere,
        blessed: None,
        untrusted_ancestor: None,
        file: crate::policy::Stat {
            uid: 0,
            gid: 0,
            mode: 0,
        },
        kind: crate::policy::FileKind::Other,
        owner_is_stapdev: false,
        stapdev_gid: None,
        acl_writers: Vec::new(),
    }
}

/// Decide, read, load and set up the module named by `opts.module`; the
/// LOAD (or DENY) audit event is emitted here.
pub fn load(ctx: &Context<'_>, opts: &Options) -> Result<Loaded, StaprunError> {
    let loaded = load_checked(ctx, opts);
    match &loaded {
        Ok(l) => (ctx.audit)(&crate::audit::Event::Load {
            module: l.name.as_str(),
            path: &l.path,
            sha256: &l.sha256,
            rule: &l.rule,
        }),
        Err(StaprunError::Denied { path, reason }) => {
            (ctx.audit)(&crate::audit::Event::Denied { path, reason });
        }
        Err(_) => {}
    }
    loaded
}

fn load_checked(ctx: &Context<'_>, opts: &Options) -> Result<Loaded, StaprunError> {
    let target = resolve_module(&opts.module, &ctx.blessed_dir)?;
    let params = module_params(opts)?;
    if let Some(u) = &opts.uprobes {
        load_uprobes(ctx, u.as_deref())?;
    }
    let (mut image, rule, opened) = allowed_image(ctx, &target.path)?;
    // The decision is made: from here to the privilege drop the caller
    // cannot signal us.
    ctx.window.close().map_err(StaprunError::Setup)?;
    let path = target.path.clone();
    let not_module = |detail: String| StaprunError::NotAModule {
        path: path.clone(),
        detail,
    };
    let (_, inner) = elf::module_name(&image).map_err(|e| not_module(e.to_string()))?;
    let mut name = inner;
    if opts.rename
        && let Some(new) = rename_image(ctx, &mut image, &path)?
    {
        name = new;
    }
    let name = ModName::new(&name).map_err(|e| not_module(format!("its module name {e}")))?;
    if (ctx.interrupted)() {
        return Err(StaprunError::Interrupted {
            module: name.to_string(),
        });
    }
    let sha256 = crate::audit::sha256_hex(&image);
    // The attempt is on record before the kernel sees the bytes.
    (ctx.audit)(&crate::audit::Event::Loading {
        module: name.as_str(),
        path: &path,
        sha256: &sha256,
        rule: &rule,
    });
    // A module withdrawn from the blessed directory since the decision is
    // not loaded.
    if !facts::still_in_place(&opened) {
        (ctx.audit)(&crate::audit::Event::LoadFailed {
            module: name.as_str(),
            path: &path,
            error: "removed from the blessed directory before the load",
        });
        return Err(StaprunError::RemovedBeforeLoad { path });
    }
    drop(opened);
    let inserted = ctx
        .window
        .init_as_caller(&mut || ctx.kernel.init_module(&image, &params));
    if let Err(e) = inserted {
        let exists = e.raw_os_error() == Some(libc::EEXIST);
        let text = module_error_text(&e);
        (ctx.audit)(&crate::audit::Event::LoadFailed {
            module: name.as_str(),
            path: &path,
            error: &text,
        });
        return Err(StaprunError::Insert {
            path,
            text,
            exists: exists && !opts.rename,
        });
    }
    drop(image);
    // From here on, any failure unloads the module again, through the
    // checks of `staprun -d`.
    let setup = setup(ctx, opts, &name).and_then(|ok| {
        if (ctx.interrupted)() {
            Err(StaprunError::Interrupted {
                module: name.to_string(),
            })
        } else {
            Ok(ok)
        }
    });
    match setup {
        Ok((generation, dir)) => Ok(Loaded {
            name,
            generation,
            dir,
            rule,
            path,
            sha256,
        }),
        Err(e) => Err(StaprunError::Undone {
            error: Box::new(e),
            undo: crate::unload::undo(ctx, &name),
        }),
    }
}

fn after_load<'a>(
    module: &'a ModName,
    what: &'static str,
) -> impl Fn(io::Error) -> StaprunError + 'a {
    move |source| StaprunError::AfterLoad {
        module: module.to_string(),
        what,
        source,
    }
}

/// The privileged messages a freshly loaded module expects, in the C
/// staprun's order: credentials, relocations, time zone, remote id.
fn setup(
    ctx: &Context<'_>,
    opts: &Options,
    name: &ModName,
) -> Result<(Generation, Box<dyn ModuleDir>), StaprunError> {
    let dir = ctx
        .kernel
        .open_module_dir(name)
        .map_err(after_load(name, "opening its control directory"))?;
    // The module this process loaded has the caller (the real uid at
    // init_module) as the owner of its control file. Another one of the
    // same name (ours unloaded and someone else's loaded meanwhile) does
    // not get our privileged messages. The control file is opened once
    // and held for the whole setup.
    let owner = dir
        .control_owner()
        .map_err(after_load(name, "examining its control channel"))?;
    if Uid::from_raw(owner) != ctx.real_uid {
        return Err(StaprunError::NotOurModule {
            module: name.to_string(),
            owner,
        });
    }
    let mut ctl = dir
        .open_control()
        .map_err(after_load(name, "opening its control channel"))?;
    // Path-authorized and root/stapdev loads carry every privilege, as in
    // the C staprun. The module's answer tells its generation.
    let generation = probe_generation(ctl.as_mut(), privilege::ALL)
        .map_err(after_load(name, "sending credentials"))?
        .ok_or_else(|| StaprunError::UnknownGeneration {
            module: name.to_string(),
        })?;
    for r in ctx.kernel.relocations() {
        let req = Request::Relocation {
            module: r.module,
            reloc: r.symbol,
            address: r.address,
        };
        // Like the C staprun, a relocation the module refuses is skipped.
        if let Ok(bytes) = req.encode(generation) {
            let _ = ctl.send(&bytes);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let (gmtoff, zone) = stap_common::sys::local_timezone(now);
    let tz = Request::TzInfo {
        gmtoff: -gmtoff,
        name: zone,
    };
    ctl.send(&tz.encode(generation).unwrap_or_default())
        .map_err(after_load(name, "sending the time zone"))?;
    if let Some(r) = &opts.remote {
        let req = Request::RemoteId {
            id: r.id,
            uri: r.uri.clone(),
        };
        let bytes = req
            .encode(generation)
            .map_err(|e| after_load(name, "sending the remote id")(io::Error::other(e)))?;
        ctl.send(&bytes)
            .map_err(after_load(name, "sending the remote id"))?;
    }
    drop(ctl);
    Ok((generation, dir))
}

/// Send the credentials in each generation's numbering until the module
/// accepts one (it answers EINVAL to a type it does not know).
fn probe_generation(ctl: &mut dyn Control, mask: i32) -> io::Result<Option<Generation>> {
    for g in Generation::probe_order() {
        let bytes = Request::PrivilegeCredentials { mask }
            .encode(g)
            .map_err(io::Error::other)?;
        match ctl.send(&bytes) {
            Ok(()) => return Ok(Some(g)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// `-A`: check that the caller may attach to the loaded module `name`
/// (its control file is theirs and nobody holds it), and return its
/// directory for stapio.
pub fn attach(ctx: &Context<'_>, name: &ModName) -> Result<Box<dyn ModuleDir>, StaprunError> {
    let fail = |reason: String| StaprunError::Attach {
        name: name.to_string(),
        reason,
    };
    if ctx.class == Class::None {
        return Err(fail(Rule::NotInAnyGroup.explain(&dummy_facts(), ctx.class)));
    }
    let dir = ctx
        .kernel
        .open_module_dir(name)
        .map_err(|e| fail(format!("no loaded SystemTap module of that name ({e})")))?;
    dir.real_user_may_use_control()
        .map_err(|_| fail("its control channel belongs to another user".into()))?;
    match dir.open_control() {
        Ok(c) => drop(c),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(fail("another stapio is attached to it".into()));
        }
        Err(e) => return Err(fail(format!("cannot open its control channel ({e})"))),
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;

    use stap_common::cli::{self, Program};

    use super::*;

    fn params(args: &[&[u8]]) -> Result<String, StaprunError> {
        let mut v = vec![OsString::from("pmod")];
        v.extend(args.iter().map(|a| OsString::from_vec(a.to_vec())));
        module_params(&cli::parse(Program::Staprun, &v).map_err(StaprunError::Usage)?)
    }

    /// Whatever its bytes, one argument reaches the kernel as one
    /// parameter: split the result as the kernel's `next_arg` does.
    fn kernel_split(s: &str) -> Vec<String> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && kernel_space(b[i]) {
                i += 1;
            }
            let start = i;
            let mut quoted = false;
            while i < b.len() && (quoted || !kernel_space(b[i])) {
                if b[i] == b'"' {
                    quoted = !quoted;
                }
                i += 1;
            }
            if i > start {
                out.push(String::from_utf8_lossy(&b[start..i]).into_owned());
            }
        }
        out
    }

    #[test]
    fn every_value_stays_one_kernel_parameter() {
        for v in [
            &b"x=\xc3\xa0_stp_bufsize=4095"[..],
            b"x=a b",
            b"x=a\tb",
            b"x=true\xc2\xa0init_errno=5",
            b"x=plain",
        ] {
            let p = params(&[v]).unwrap();
            assert_eq!(kernel_split(&p).len(), 1, "{p:?}");
        }
        assert_eq!(params(&[b"x=\xc3\xa0y=1"]).unwrap(), "x=\"\u{e0}y=1\"");
        assert_eq!(params(&[b"x=1"]).unwrap(), "x=1");
    }

    #[test]
    fn only_modules_built_for_the_running_release_pass() {
        let module = |info: &[u8]| elf::build_test_module("pmod", &[(".modinfo", info)]);
        let running = "6.1.0-57-cloud-amd64";
        let mine = module(&elf::test_modinfo(running));
        assert_eq!(kernel_mismatch(&mine, running), Ok(None));
        let other = module(&elf::test_modinfo("6.1.0-58-cloud-amd64"));
        let m = kernel_mismatch(&other, running).unwrap().unwrap();
        assert_eq!(
            m.to_string(),
            "was built for kernel 6.1.0-58-cloud-amd64, not for the running kernel 6.1.0-57-cloud-amd64"
        );
        // The release is the whole first word: no prefix match either way.
        for r in ["6.1.0-57-cloud", "6.1.0-57-cloud-amd64x"] {
            let img = module(&elf::test_modinfo(r));
            assert!(
                matches!(
                    kernel_mismatch(&img, running),
                    Ok(Some(KernelMismatch::OtherRelease { .. }))
                ),
                "{r}"
            );
        }
        // No vermagic: refused (the kernel would load it only by force).
        for img in [
            elf::build_test_module("pmod", &[]),
            module(b"license=GPL\0"),
        ] {
            assert_eq!(
                kernel_mismatch(&img, running),
                Ok(Some(KernelMismatch::NoRelease))
            );
        }
        assert!(KernelMismatch::NoRelease.to_string().contains("by force"));
        // Garbage is not a module.
        assert_eq!(
            kernel_mismatch(&module(b"vermagic=\xff SMP\0"), running),
            Err(elf::ElfError::BadVermagic)
        );
        assert_eq!(
            kernel_mismatch(b"not a module", running),
            Err(elf::ElfError::NotElf)
        );
    }

    #[test]
    fn names_that_are_not_parameter_names_are_refused() {
        for v in [&b"x\xc3\xa0init_errno=5"[..], b"a b=1", b"=1", b"x.y=1"] {
            assert!(params(&[v]).is_err(), "{:?}", String::from_utf8_lossy(v));
        }
        assert!(matches!(
            params(&[b"_stp_bufsize=1"]),
            Err(StaprunError::ReservedOption(_))
        ));
    }
}
