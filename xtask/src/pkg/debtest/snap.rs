//! What dpkg and the file system say in the chroot about the paths the package is about.

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::chroot::Chroot;
use crate::error::Result;

/// Mode (with the set-id bits), owner and group, as `stat` prints them in the chroot.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) mode: u32,
    user: String,
    group: String,
}

impl Meta {
    pub(super) fn new(mode: u32, user: &str, group: &str) -> Meta {
        Meta {
            mode,
            user: user.to_owned(),
            group: group.to_owned(),
        }
    }
}

impl std::fmt::Display for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o} {}:{}", self.mode, self.user, self.group)
    }
}

/// As Display: the check lines show modes in octal.
impl Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What dpkg and the file system say about the paths the package is about.
#[derive(Debug)]
pub(super) struct Snap {
    files: BTreeMap<String, Option<Meta>>,
    /// `dpkg-divert --list` lines naming staprun.
    pub(super) diversions: Vec<String>,
    /// path -> "USER GROUP MODE" from `dpkg-statoverride --list`.
    pub(super) overrides: BTreeMap<String, String>,
    /// package -> (`${db:Status-Abbrev}` without blanks, version), absent when dpkg does not
    /// know it.
    pub(super) status: BTreeMap<String, (String, String)>,
}

const SNAP_SCRIPT: &str = r#"
for f in /usr/bin/staprun /usr/bin/staprun.systemtap /usr/share/man/man8/staprun.8.gz \
         /usr/share/man/man8/staprun.systemtap.8.gz /usr/libexec/staprun/stapio /var/lib/staprun-rs \
         /lib/systemd/system/staprun@.service; do
    if [ -e "$f" ]; then echo "F $(stat -c '%a %U %G' "$f") $f"; else echo "F - - - $f"; fi
done
dpkg-divert --list | sed 's/^/D /'
dpkg-statoverride --list | sed 's/^/O /'
for p in staprun-rs systemtap-runtime systemtap; do
    echo "P $p $(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$p" 2>/dev/null || true)"
done
"#;

impl Snap {
    pub(super) fn take(ch: &mut Chroot) -> Result<Snap> {
        let out = ch.sh(SNAP_SCRIPT)?;
        let mut s = Snap {
            files: BTreeMap::new(),
            diversions: Vec::new(),
            overrides: BTreeMap::new(),
            status: BTreeMap::new(),
        };
        for l in out.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["F", "-", "-", "-", path] => {
                    s.files.insert((*path).to_owned(), None);
                }
                ["F", mode, user, group, path] => {
                    let mode = u32::from_str_radix(mode, 8)
                        .map_err(|e| format!("stat mode {mode:?} of {path}: {e}"))?;
                    s.files
                        .insert((*path).to_owned(), Some(Meta::new(mode, user, group)));
                }
                ["D", ..] if l.contains("staprun") => s.diversions.push(l[2..].to_owned()),
                ["O", user, group, mode, path] => {
                    s.overrides
                        .insert((*path).to_owned(), format!("{user} {group} {mode}"));
                }
                ["P", pkg, st, version] if !st.starts_with('u') && !st.starts_with('p') => {
                    s.status
                        .insert((*pkg).to_owned(), ((*st).to_owned(), (*version).to_owned()));
                }
                _ => {}
            }
        }
        s.diversions.sort();
        Ok(s)
    }

    pub(super) fn meta(&self, path: &str) -> Option<Meta> {
        self.files.get(path).cloned().flatten()
    }

    pub(super) fn status(&self, pkg: &str) -> &str {
        self.status.get(pkg).map_or("not installed", |(s, _)| s)
    }
}

/// The C staprun as systemtap-runtime installed it.
pub(super) struct Theirs {
    pub(super) bin: Vec<u8>,
    pub(super) meta: Meta,
    pub(super) statoverride: Option<String>,
    pub(super) man: Vec<u8>,
}
