//! Round 2, item 5: POSIX ACLs.

use std::io;
use std::path::{Path, PathBuf};

use super::{chmod, cstr};
use crate::attacks::common::{check_nothing_loaded, full_run, log_out, refused, sr};
use crate::harness::{
    self, ALICE, Reporter, STAPDEV, blessed_dir, product_installed, publish, sys,
};

const ACL_XATTR: &str = "system.posix_acl_access";
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const UNDEF: u32 = u32::MAX;
/// (tag, id, permission bits).
type AclEntry = (u16, u32, u16);

/// An access ACL: owner rwx, owning group r-x, the named `extra` entries,
/// mask rwx, other r-x.
fn acl_bytes(extra: &[(u16, u32, u16)]) -> Vec<u8> {
    let mut e = vec![(ACL_USER_OBJ, UNDEF, 7u16), (ACL_GROUP_OBJ, UNDEF, 5)];
    e.extend(extra.iter().map(|&(t, id, p)| (t, id, p)));
    e.push((ACL_MASK, UNDEF, 7));
    e.push((ACL_OTHER, UNDEF, 5));
    e.sort_by_key(|&(t, id, _)| (t, id));
    let mut v = 2u32.to_le_bytes().to_vec();
    for (t, id, p) in e {
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&p.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn set_acl(p: &Path, extra: &[(u16, u32, u16)]) -> io::Result<()> {
    sys::setxattr(&cstr(p), &cstr(ACL_XATTR), &acl_bytes(extra))
}

fn clear_acl(p: &Path, mode: u32) {
    let _ = sys::removexattr(&cstr(p), &cstr(ACL_XATTR));
    let _ = chmod(p, mode);
}

pub(crate) fn acl(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    let module = publish("pmod");
    let blessed = blessed_dir();
    let parent = blessed.parent().map(Path::to_path_buf).unwrap_or_default();
    let supported = set_acl(&module, &[(ACL_USER, ALICE.uid, 4)]);
    if !r.check("acl_supported", supported.is_ok(), format!("{supported:?}")) {
        return;
    }
    // A read-only grant is harmless.
    let out = sr(&ALICE, &["pmod"]);
    r.check("read_only_acl_runs", full_run(&out), out.summary());
    clear_acl(&module, 0o644);
    let cases: &[(&str, &PathBuf, u32, AclEntry)] = &[
        (
            "module_user_alice_rw",
            &module,
            0o644,
            (ACL_USER, ALICE.uid, 6),
        ),
        (
            "blessed_dir_user_alice_rwx",
            &blessed,
            0o755,
            (ACL_USER, ALICE.uid, 7),
        ),
        (
            "blessed_dir_group_alice_rwx",
            &blessed,
            0o755,
            (ACL_GROUP, ALICE.gid, 7),
        ),
        (
            "ancestor_user_alice_rwx",
            &parent,
            0o755,
            (ACL_USER, ALICE.uid, 7),
        ),
    ];
    for (tag, path, mode, entry) in cases {
        let set = set_acl(path, &[*entry]);
        let st = harness::stat(path);
        r.log(&format!(
            "{tag}: acl on {} ({set:?}), stat {st:?}",
            path.display()
        ));
        let out = sr(&ALICE, &["pmod"]);
        log_out(r, &format!("alice$ staprun pmod ({tag})"), &out);
        r.check(
            &format!("{tag}_refused_naming_acl"),
            refused(&out) && out.stderr.contains("ACL") && out.stderr.contains("alice"),
            out.summary(),
        );
        let ex = sr(&ALICE, &["--explain", "pmod"]);
        r.check(
            &format!("{tag}_explain_agrees"),
            ex.code == Some(1) && ex.stdout.contains("ACL"),
            ex.summary(),
        );
        check_nothing_loaded(r, tag, &[]);
        clear_acl(path, *mode);
    }
    // Write granted to stapdev (the 775 root:stapdev layout's publishers) is allowed.
    let set = set_acl(&blessed, &[(ACL_GROUP, STAPDEV, 7)]);
    r.log(&format!("stapdev acl on the blessed dir: {set:?}"));
    let out = sr(&ALICE, &["pmod"]);
    r.check("stapdev_group_acl_runs", full_run(&out), out.summary());
    clear_acl(&blessed, 0o755);
    check_nothing_loaded(r, "end", &[]);
}
