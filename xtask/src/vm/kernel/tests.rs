//! The kernel resolution against the host's real apt (ignored: needs root and the network).

use std::fs;
use std::path::Path;

use super::aptstate::Want;
use super::host::HostApt;
use super::image::kernel_image;
use super::{KernelSource, settle, vmlinuz_in};
use crate::apt::{Apt, host_lists_dir, lists_empty_in};
use crate::cmd::{self, cmd, is_root};
use crate::error::Result;

/// Kernel images only, through a [`HostApt`] that may read another lists directory:
/// nothing is installed on the host.
struct ImageOnly<'a, 'b> {
    host: HostApt<'a>,
    cache: &'b Path,
}

impl KernelSource for ImageOnly<'_, '_> {
    fn listed(&mut self) -> Option<String> {
        self.host.listed("linux-image-cloud-amd64")
    }
    fn fresh(&self) -> bool {
        self.host.apt.updated
    }
    fn update(&mut self) -> Result<()> {
        self.host.update()
    }
    fn fetch(&mut self, kver: &str) -> Result<()> {
        let host = &mut self.host;
        kernel_image(self.cache, kver, &mut |p, d| host.download(p, d)).map(|_| ())
    }
    fn complete(&mut self) -> Vec<String> {
        fs::read_dir(self.cache.join("kernel"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|k| vmlinuz_in(&self.cache.join("kernel").join(k), k).is_some())
            .collect()
    }
}

fn resolve(lists: &Path, cache: &Path) -> (Result<String>, bool) {
    let mut apt = Apt { updated: false };
    let mut src = ImageOnly {
        host: HostApt {
            apt: &mut apt,
            lists: Some(lists.to_path_buf()),
        },
        cache,
    };
    let r = settle(&mut src, &Want::Newest { prefix: None }, "test kernel");
    (r, apt.updated)
}

/// (name, size, modification time) of every file in the host's lists directory.
fn lists_state(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().ok()?,
            ))
        })
        .collect();
    v.sort();
    v
}

/// A Release file as an older one: every index hash zeroed.
fn stale_release(text: &str) -> String {
    text.lines()
        .map(|l| {
            let hash = l
                .strip_prefix(' ')
                .and_then(|r| r.split_once(' '))
                .map(|(h, _)| h)
                .filter(|h| {
                    [32, 40, 64].contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit())
                });
            match hash {
                Some(h) => l.replacen(h, &"0".repeat(h.len()), 1),
                None => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The issue, for real: lists months old name a cloud kernel whose packages are gone
/// from the mirror (404). The host's lists are copied to a temporary directory and the
/// current ABI rewritten in them to an older one, so apt resolves and tries to download
/// that; then the lists (that copy only) must be updated and the kernel resolved again.
/// Then: empty lists with the kernel prepared use it without apt; empty lists without it
/// are updated first. The host's own lists are compared before and after.
///
/// Needs root, the network and a bookworm host:
/// `cargo test -p xtask -- --ignored --nocapture stale_empty_and_fresh_lists_for_real`.
#[test]
#[ignore = "needs root, the network and a bookworm host"]
fn stale_empty_and_fresh_lists_for_real() {
    assert!(
        is_root(),
        "run as root (apt-get update into a temporary lists directory)"
    );
    let host_lists = host_lists_dir();
    let before = lists_state(&host_lists);
    let base = std::env::temp_dir().join(format!("xtask-stale-lists-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let (lists, cache) = (base.join("lists"), base.join("cache"));
    fs::create_dir_all(lists.join("partial")).unwrap();
    let mut apt = Apt { updated: false };
    let current = HostApt::new(&mut apt)
        .listed("linux-image-cloud-amd64")
        .expect("the host's lists name a cloud kernel");
    // 6.1.0-57-cloud-amd64 -> 6.1.0-48-cloud-amd64
    let (head, rest) = current.split_once('-').unwrap();
    let (n, tail) = rest.split_once('-').unwrap();
    let n: u32 = n.parse().unwrap();
    let stale = format!("{head}-{}-{tail}", n.saturating_sub(9));
    eprintln!("current {current}, stale lists will name {stale}");
    for e in fs::read_dir(&host_lists).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if !name.contains("_Packages") && !name.ends_with("Release") {
            continue;
        }
        let (plain, text) = match name.rsplit_once('.') {
            Some((stem, z @ ("lz4" | "gz" | "xz"))) => {
                let tool = match z {
                    "lz4" => "lz4",
                    "gz" => "gzip",
                    _ => "xz",
                };
                let sh = cmd::shell().unwrap();
                let t = cmd::output(cmd!(sh, "{tool} -dc {p}")).unwrap();
                (stem.to_owned(), t)
            }
            _ => (name.clone(), fs::read_to_string(&p).unwrap()),
        };
        let text = if plain.contains("_Packages") {
            text.replace(&current, &stale)
        } else {
            // Old Release files list other index hashes (apt takes an index whose hash
            // did not change between the old and the new Release file as up to date).
            stale_release(&text)
        };
        fs::write(lists.join(plain), text).unwrap();
    }
    let stale_view = HostApt {
        apt: &mut Apt { updated: false },
        lists: Some(lists.clone()),
    }
    .listed("linux-image-cloud-amd64");
    assert_eq!(stale_view.as_deref(), Some(stale.as_str()));

    // Stale lists: 404, update, resolve again.
    let (r, updated) = resolve(&lists, &cache);
    assert_eq!(r.as_ref().ok(), Some(&current), "{r:?}");
    assert!(updated);
    assert!(vmlinuz_in(&cache.join("kernel").join(&current), &current).is_some());
    let leftovers: Vec<_> = ["kernel", "debs"]
        .iter()
        .flat_map(|d| fs::read_dir(cache.join(d)).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Empty lists, kernel prepared: used without apt (the lists stay empty).
    let empty = base.join("empty-lists");
    fs::create_dir_all(empty.join("partial")).unwrap();
    let (r, updated) = resolve(&empty, &cache);
    assert_eq!(r.as_ref().ok(), Some(&current), "{r:?}");
    assert!(!updated && lists_empty_in(&empty));

    // Empty lists, nothing prepared (the .deb is kept): updated first.
    fs::remove_dir_all(cache.join("kernel")).unwrap();
    let (r, updated) = resolve(&empty, &cache);
    assert_eq!(r.as_ref().ok(), Some(&current), "{r:?}");
    assert!(updated && !lists_empty_in(&empty));

    assert_eq!(before, lists_state(&host_lists), "the host's lists changed");
    let _ = fs::remove_dir_all(&base);
}
