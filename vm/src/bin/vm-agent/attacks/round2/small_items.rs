//! Round 2, item 8: smaller items.

use std::fs;
use std::path::Path;

use crate::attacks::common::{check_nothing_loaded, full_run, helper_run, log_out, refused, sr};
use crate::harness::{
    ALICE, ROOT, Reporter, STAPRUN, blessed_dir, fixture, product_installed, publish, put, sys,
};

/// A copy of a module with a decoy `.gnu.linkonce.this_module` section
/// (not SHF_ALLOC, so the kernel ignores it) placed before the real one
/// and naming `decoy`. The real section moves to the end of the section
/// table; relocation sections and symbols that referred to it follow.
pub fn with_decoy_name(image: &[u8], decoy: &str) -> Option<Vec<u8>> {
    let rd = |b: &[u8], o: usize, n: usize| -> Option<u64> {
        let s = b.get(o..o + n)?;
        Some(s.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
    };
    let us = |v: u64| usize::try_from(v).ok();
    if image.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return None;
    }
    let shoff = us(rd(image, 0x28, 8)?)?;
    let shentsize = us(rd(image, 0x3a, 2)?)?;
    let shnum = us(rd(image, 0x3c, 2)?)?;
    let shstrndx = us(rd(image, 0x3e, 2)?)?;
    let hdr = |i: usize| shoff + i * shentsize;
    let stroff = us(rd(image, hdr(shstrndx) + 0x18, 8)?)?;
    let real = (0..shnum).find(|&i| {
        let name = rd(image, hdr(i), 4).and_then(us).unwrap_or(usize::MAX);
        image
            .get(stroff + name..)
            .is_some_and(|n| n.starts_with(b".gnu.linkonce.this_module\0"))
    })?;
    let mut out = image.to_vec();
    // The decoy's bytes: the real section with another name.
    let (off, size) = (
        us(rd(image, hdr(real) + 0x18, 8)?)?,
        us(rd(image, hdr(real) + 0x20, 8)?)?,
    );
    let mut blob = image.get(off..off + size)?.to_vec();
    let field = blob.get_mut(24..24 + 56)?;
    field.fill(0);
    field
        .get_mut(..decoy.len())?
        .copy_from_slice(decoy.as_bytes());
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let blob_off = out.len();
    out.extend_from_slice(&blob);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    // New section table: the old one plus the real section at the end.
    let new_shoff = out.len();
    let mut table = image.get(shoff..shoff + shnum * shentsize)?.to_vec();
    let real_hdr = table[real * shentsize..(real + 1) * shentsize].to_vec();
    table.extend_from_slice(&real_hdr);
    let moved = shnum;
    {
        let d = &mut table[real * shentsize..(real + 1) * shentsize];
        d[4..8].copy_from_slice(&1u32.to_le_bytes()); // SHT_PROGBITS
        d[8..16].copy_from_slice(&0u64.to_le_bytes()); // flags: not SHF_ALLOC
        d[16..24].copy_from_slice(&0u64.to_le_bytes()); // addr
        d[24..32].copy_from_slice(&(blob_off as u64).to_le_bytes());
        d[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        d[40..48].copy_from_slice(&0u64.to_le_bytes()); // link, info
    }
    for i in 0..=shnum {
        let h = i * shentsize;
        let ty = rd(&table, h + 4, 4)?;
        let info = rd(&table, h + 44, 4)?;
        if (ty == 4 || ty == 9) && us(info)? == real {
            table[h + 44..h + 48].copy_from_slice(&(moved as u32).to_le_bytes());
        }
        if ty == 2 {
            // .symtab: st_shndx (u16 at +6) of every 24-byte symbol.
            let (so, ss) = (us(rd(&table, h + 24, 8)?)?, us(rd(&table, h + 32, 8)?)?);
            for s in (so..so + ss).step_by(24) {
                if us(rd(&out, s + 6, 2)?)? == real {
                    out[s + 6..s + 8].copy_from_slice(&(moved as u16).to_le_bytes());
                }
            }
        }
    }
    out.extend_from_slice(&table);
    out[0x28..0x30].copy_from_slice(&(new_shoff as u64).to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&u16::try_from(shnum + 1).ok()?.to_le_bytes());
    Some(out)
}

pub(crate) fn small_items(r: &mut Reporter) {
    if !product_installed(r) {
        return;
    }
    publish("pmod");
    let rel = sys::kernel_release();
    // UNAME26 makes uname(2) report 2.6.x: the blessed directory must not follow.
    let out = helper_run(
        &ALICE,
        &["personality", "0x0020000", STAPRUN, "--explain", "pmod"],
    );
    log_out(r, "alice$ setarch --uname-2.6 staprun --explain pmod", &out);
    r.check(
        "uname26_keeps_the_real_blessed_dir",
        out.code == Some(0) && out.stdout.contains(&rel),
        out.summary(),
    );
    let out = helper_run(&ALICE, &["personality", "0x0020000", STAPRUN, "pmod"]);
    r.check("uname26_load_runs", full_run(&out), out.summary());
    check_nothing_loaded(r, "uname26", &[]);
    // The name comes from the SHF_ALLOC .gnu.linkonce.this_module only.
    let decoy = with_decoy_name(&fixture("pmod"), "fixture_a");
    if r.check("decoy_built", decoy.is_some(), "") {
        let p = blessed_dir().join("pmod.ko");
        let _ = put(&p, &decoy.unwrap_or_default(), 0o644, &ROOT);
        let out = sr(&ALICE, &["pmod"]);
        log_out(
            r,
            "alice$ staprun pmod (decoy this_module section naming fixture_a)",
            &out,
        );
        r.check("decoy_name_ignored_runs", full_run(&out), out.summary());
        check_nothing_loaded(r, "decoy", &[]);
        publish("pmod");
    }
    // FIPS mode: the C staprun refuses to load; so do we.
    let fips = "/proc/sys/crypto/fips_enabled";
    let _ = fs::write("/run/fips-on", "1\n");
    let mounted =
        Path::new(fips).exists() && sys::mount("/run/fips-on", fips, "", libc::MS_BIND, "").is_ok();
    if r.check("fips_switch_mounted", mounted, fips) {
        let out = sr(&ALICE, &["pmod"]);
        log_out(r, "alice$ staprun pmod (fips_enabled=1)", &out);
        r.check(
            "fips_refused",
            refused(&out) && out.stderr.contains("FIPS"),
            out.summary(),
        );
        check_nothing_loaded(r, "fips", &[]);
        let _ = sys::umount(fips);
    }
    check_nothing_loaded(r, "end", &[]);
}
