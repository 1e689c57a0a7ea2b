//! `staprun -d`: unload only a SystemTap module that the real user owns and
//! that nobody is attached to (the CVE-2010-4171 rule).
#![forbid(unsafe_code)]

use std::time::Duration;

use stap_common::ids::Uid;
use stap_common::modname::ModName;

use crate::Context;
use crate::audit::Event;
use crate::error::StaprunError;
use crate::policy::Class;

/// Unload `name`, or with `"*"` every unused SystemTap module of the caller.
pub fn unload(ctx: &Context<'_>, name: &str) -> Result<Vec<String>, StaprunError> {
    if name == "*" {
        let mut done = Vec::new();
        for m in ctx.kernel.systemtap_modules().unwrap_or_default() {
            let Ok(n) = ModName::new(&m) else { continue };
            // Modules that are not ours or are attached are left alone.
            if unload_one(ctx, &n).is_ok() {
                (ctx.audit)(&Event::Unload { module: &m });
                done.push(m);
            }
        }
        return Ok(done);
    }
    let n = ModName::new(name).map_err(|e| StaprunError::BadName(e.to_string()))?;
    unload_one(ctx, &n)?;
    (ctx.audit)(&Event::Unload { module: name });
    Ok(vec![name.to_string()])
}

/// `staprun --undo-start MODULE`: unload a module whose stapio could not
/// start, through the checks of `staprun -d`, and fail with
/// [`StaprunError::StartFailed`].
pub fn undo_start(ctx: &Context<'_>, name: &ModName) -> StaprunError {
    if let Err(e) = unload_one(ctx, name) {
        return e;
    }
    (ctx.audit)(&Event::Undo {
        module: name.as_str(),
    });
    StaprunError::StartFailed {
        module: name.to_string(),
    }
}

/// Undo a load of this staprun's after a failure: through the very checks
/// of `staprun -d` (the caller's own module, nobody attached), never by
/// name alone. Returns what happened, in words, for the error message.
pub fn undo(ctx: &Context<'_>, name: &ModName) -> String {
    match unload_one(ctx, name) {
        Ok(()) => "it has been unloaded".into(),
        Err(e) => format!("it was left loaded ({e})"),
    }
}

fn unload_one(ctx: &Context<'_>, name: &ModName) -> Result<(), StaprunError> {
    let refuse = |reason: &str| StaprunError::NotUnloadable {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if ctx.class == Class::None {
        return Err(refuse(
            "you are not root and not a member of stapusr, stapsys or stapdev",
        ));
    }
    let dir = ctx.kernel.open_module_dir(name).map_err(|_| {
        refuse("it has no SystemTap control directory (not a SystemTap module, or not loaded)")
    })?;
    // The C rule (may the real user open .cmd read-write?), and, since the
    // real uid is root inside the privileged window, the owner of .cmd
    // compared with the caller's uid itself.
    dir.real_user_may_use_control()
        .map_err(|_| refuse("its control channel belongs to another user"))?;
    let owner = dir
        .control_owner()
        .map_err(|e| refuse(&format!("its control channel cannot be examined ({e})")))?;
    if !ctx.real_uid.is_root() && Uid::from_raw(owner) != ctx.real_uid {
        return Err(refuse("its control channel belongs to another user"));
    }
    match dir.open_control() {
        Ok(c) => drop(c),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(refuse("a stapio is attached to it (stop that first)"));
        }
        Err(e) => {
            return Err(refuse(&format!(
                "its control channel cannot be opened ({e})"
            )));
        }
    }
    drop(dir);
    let mut last = None;
    for i in 0..5u64 {
        match ctx.kernel.delete_module(name.as_str()) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {
                std::thread::sleep(Duration::from_millis(100 * (i + 1)));
                last = Some(e);
            }
            Err(e) => {
                return Err(StaprunError::Unload {
                    name: name.to_string(),
                    source: e,
                });
            }
        }
    }
    Err(StaprunError::Unload {
        name: name.to_string(),
        source: last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EAGAIN)),
    })
}
