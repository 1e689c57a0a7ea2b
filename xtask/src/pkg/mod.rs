//! The packaging tooling: man pages and completions (`dist`), the .deb (`deb`), `install` and
//! `uninstall`, and the package next to Debian's systemtap-runtime in a chroot (`deb-test`).

pub mod deb;
pub mod debtest;
pub mod dist;
pub mod install;
