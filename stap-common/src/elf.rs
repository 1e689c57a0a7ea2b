//! A bounds-checked reader for the few ELF facts staprun needs from a
//! module image: the module name in `.gnu.linkonce.this_module` (for `-R`),
//! the kernel release in `.modinfo`'s `vermagic=` and the `.stap_privilege`
//! section. Nothing here trusts the input.
#![forbid(unsafe_code)]

use thiserror::Error;

/// Offset of `name` in the kernel's `struct module` on 64-bit
/// (`enum module_state state; struct list_head list; char name[56]`).
pub const THIS_MODULE_NAME_OFFSET: usize = 24;
pub const THIS_MODULE_NAME_LEN: usize = 56;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf,
    #[error("ELF header or section table out of bounds")]
    Truncated,
    #[error("section {0} not found")]
    NoSection(&'static str),
    #[error("the module name in .gnu.linkonce.this_module is not plain text")]
    BadName,
    #[error("the vermagic in .modinfo does not start with a kernel release in plain text")]
    BadVermagic,
}

/// `N` bytes at `at`, or `Truncated`.
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::Truncated)
}
fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    bytes_at(b, at).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    bytes_at(b, at).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    bytes_at(b, at).map(u64::from_le_bytes)
}
fn usize_of(v: u64) -> Result<usize, ElfError> {
    usize::try_from(v).map_err(|_| ElfError::Truncated)
}

/// Section `(file offset, size)` by name: the first one of that name.
pub fn find_section(image: &[u8], name: &'static str) -> Result<(usize, usize), ElfError> {
    find_section_where(image, name, false)
}

/// `SHF_ALLOC`: the section is part of the loaded module.
const SHF_ALLOC: u64 = 0x2;

/// Section `(file offset, size)` by name; with `alloc_only`, the first
/// `SHF_ALLOC` one, as the kernel's module loader picks it.
fn find_section_where(
    image: &[u8],
    name: &'static str,
    alloc_only: bool,
) -> Result<(usize, usize), ElfError> {
    if image.len() < 64 || image[..4] != *b"\x7fELF" || image[4] != 2 || image[5] != 1 {
        return Err(ElfError::NotElf);
    }
    let shoff = usize_of(u64_at(image, 0x28)?)?;
    let shentsize = usize::from(u16_at(image, 0x3a)?);
    let shnum = usize::from(u16_at(image, 0x3c)?);
    let shstrndx = usize::from(u16_at(image, 0x3e)?);
    if shentsize < 64 || shstrndx >= shnum {
        return Err(ElfError::Truncated);
    }
    let sh = |i: usize| -> Result<usize, ElfError> {
        let at = shoff
            .checked_add(i.checked_mul(shentsize).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        if at.checked_add(64).is_none_or(|end| end > image.len()) {
            return Err(ElfError::Truncated);
        }
        Ok(at)
    };
    let strtab = sh(shstrndx)?;
    let str_off = usize_of(u64_at(image, strtab + 0x18)?)?;
    let str_size = usize_of(u64_at(image, strtab + 0x20)?)?;
    let strs = image
        .get(str_off..str_off.checked_add(str_size).ok_or(ElfError::Truncated)?)
        .ok_or(ElfError::Truncated)?;
    for i in 0..shnum {
        let at = sh(i)?;
        let name_off = u32_at(image, at)? as usize;
        let Some(rest) = strs.get(name_off..) else {
            continue;
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes()
            && (!alloc_only || u64_at(image, at + 0x08)? & SHF_ALLOC != 0)
        {
            let off = usize_of(u64_at(image, at + 0x18)?)?;
            let size = usize_of(u64_at(image, at + 0x20)?)?;
            if off.checked_add(size).is_none_or(|e| e > image.len()) {
                return Err(ElfError::Truncated);
            }
            return Ok((off, size));
        }
    }
    Err(ElfError::NoSection(name))
}

/// Where the module name lives in the image: `(offset, current name)`.
pub fn module_name(image: &[u8]) -> Result<(usize, String), ElfError> {
    // The kernel takes the name from the first SHF_ALLOC section of this
    // name; a section of the same name that is not loaded is ignored.
    let (off, size) = find_section_where(image, ".gnu.linkonce.this_module", true)?;
    if size < THIS_MODULE_NAME_OFFSET + THIS_MODULE_NAME_LEN {
        return Err(ElfError::Truncated);
    }
    let at = off + THIS_MODULE_NAME_OFFSET;
    let field = &image[at..at + THIS_MODULE_NAME_LEN];
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    // No lossy repair: a replaced byte would make the name longer than
    // the field it must be written back into (`-R`).
    let name = std::str::from_utf8(&field[..end]).map_err(|_| ElfError::BadName)?;
    if !name.is_ascii() {
        return Err(ElfError::BadName);
    }
    Ok((at, name.to_string()))
}

/// The module's `vermagic=` string, as the kernel's `get_modinfo` finds it:
/// the first `key=value` entry of that key in the first `SHF_ALLOC`
/// `.modinfo` section (entries are NUL-terminated strings; runs of NULs
/// between them are padding). `Ok(None)`: no `.modinfo`, or no `vermagic`
/// entry in it. A value that is not UTF-8, or whose first word (the kernel
/// release) is empty, is [`ElfError::BadVermagic`].
pub fn vermagic(image: &[u8]) -> Result<Option<String>, ElfError> {
    let (off, size) = match find_section_where(image, ".modinfo", true) {
        Ok(s) => s,
        Err(ElfError::NoSection(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let modinfo = &image[off..off + size];
    let Some(value) = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"vermagic="))
    else {
        return Ok(None);
    };
    let text = std::str::from_utf8(value).map_err(|_| ElfError::BadVermagic)?;
    if vermagic_release(text).is_none() {
        return Err(ElfError::BadVermagic);
    }
    Ok(Some(text.to_string()))
}

/// The kernel release a vermagic string names: its first word, up to the
/// first space (`6.1.0-57-cloud-amd64` in `6.1.0-57-cloud-amd64 SMP
/// mod_unload modversions `), as the kernel's `same_magic` splits it.
/// `None` when that word is empty or not printable ASCII.
pub fn vermagic_release(vermagic: &str) -> Option<&str> {
    let release = vermagic.split(' ').next().unwrap_or("");
    (!release.is_empty() && release.bytes().all(|b| b.is_ascii_graphic())).then_some(release)
}

/// A `.modinfo` section for a module built for kernel `release`, for
/// [`build_test_module`]'s `extra` (what kbuild writes, cut down to the
/// entries staprun reads).
#[cfg(any(test, feature = "sim"))]
pub fn test_modinfo(release: &str) -> Vec<u8> {
    format!("license=GPL\0vermagic={release} SMP preempt mod_unload modversions \0").into_bytes()
}

/// The privilege a module says it needs (`.stap_privilege`, an `int`).
/// Missing: `None`.
pub fn required_privilege(image: &[u8]) -> Option<i32> {
    let (off, size) = find_section(image, ".stap_privilege").ok()?;
    if size < 4 {
        return None;
    }
    Some(i32::from_le_bytes(image[off..off + 4].try_into().ok()?))
}

/// Build a minimal relocatable ELF64 image with the given sections, for
/// tests, benchmarks and the simulated kernel. The module name goes into a
/// `.gnu.linkonce.this_module` section laid out like the kernel's.
#[cfg(any(test, feature = "sim"))]
pub fn build_test_module(name: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut this_module = vec![0u8; 0x380];
    this_module[THIS_MODULE_NAME_OFFSET..THIS_MODULE_NAME_OFFSET + name.len().min(55)]
        .copy_from_slice(&name.as_bytes()[..name.len().min(55)]);
    let mut sections: Vec<(String, Vec<u8>)> =
        vec![(".gnu.linkonce.this_module".into(), this_module)];
    for (n, d) in extra {
        sections.push(((*n).to_string(), d.to_vec()));
    }
    // Layout: header, section data, shstrtab, section headers.
    let mut out = vec![0u8; 64];
    let mut offsets = Vec::new();
    for (_, d) in &sections {
        offsets.push(out.len());
        out.extend_from_slice(d);
    }
    let mut shstr = vec![0u8];
    let mut name_offs = Vec::new();
    for (n, _) in &sections {
        name_offs.push(shstr.len());
        shstr.extend_from_slice(n.as_bytes());
        shstr.push(0);
    }
    let shstr_name = shstr.len();
    shstr.extend_from_slice(b".shstrtab\0");
    let shstr_off = out.len();
    out.extend_from_slice(&shstr);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let shoff = out.len();
    let shnum = sections.len() + 2;
    out.extend_from_slice(&[0u8; 64]); // null section
    let sh = |name: usize, typ: u32, off: usize, size: usize, out: &mut Vec<u8>| {
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&u32::try_from(name).unwrap_or(0).to_le_bytes());
        h[4..8].copy_from_slice(&typ.to_le_bytes());
        if typ == 1 {
            h[8..16].copy_from_slice(&SHF_ALLOC.to_le_bytes());
        }
        h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
        out.extend_from_slice(&h);
    };
    for (i, (_, d)) in sections.iter().enumerate() {
        sh(name_offs[i], 1, offsets[i], d.len(), &mut out);
    }
    sh(shstr_name, 3, shstr_off, shstr.len(), &mut out);
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    out[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&u16::try_from(shnum).unwrap_or(0).to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&u16::try_from(shnum - 1).unwrap_or(0).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_builds() {
        let img = build_test_module("pmod", &[(".stap_privilege", &2i32.to_le_bytes())]);
        let (at, name) = module_name(&img).unwrap();
        assert_eq!(name, "pmod");
        assert_eq!(&img[at..at + 4], b"pmod");
        assert_eq!(required_privilege(&img), Some(2));
        assert_eq!(required_privilege(&build_test_module("x", &[])), None);
    }

    /// A `.gnu.linkonce.this_module` section that is not SHF_ALLOC, placed
    /// before the real one, is ignored by the kernel: its name must be too.
    #[test]
    fn the_name_comes_from_the_allocated_section_only() {
        let mut decoy = vec![0u8; 0x380];
        decoy[THIS_MODULE_NAME_OFFSET..THIS_MODULE_NAME_OFFSET + 5].copy_from_slice(b"decoy");
        let mut img = build_test_module("pmod", &[(".gnu.linkonce.this_module", &decoy)]);
        let shoff = u64_at(&img, 0x28).unwrap() as usize;
        // Swap section headers 1 (real) and 2 (decoy); the decoy loses SHF_ALLOC.
        let (a, b) = (shoff + 64, shoff + 128);
        let real: Vec<u8> = img[a..a + 64].to_vec();
        let fake: Vec<u8> = img[b..b + 64].to_vec();
        img[a..a + 64].copy_from_slice(&fake);
        img[b..b + 64].copy_from_slice(&real);
        img[a + 8..a + 16].copy_from_slice(&0u64.to_le_bytes());
        let (first, _) = find_section(&img, ".gnu.linkonce.this_module").unwrap();
        assert_eq!(&img[first + THIS_MODULE_NAME_OFFSET..][..5], b"decoy");
        assert_eq!(module_name(&img).unwrap().1, "pmod");
        // With no allocated one at all, there is no module name.
        img[b + 8..b + 16].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(
            module_name(&img),
            Err(ElfError::NoSection(".gnu.linkonce.this_module"))
        );
    }

    #[test]
    fn non_ascii_names_are_refused() {
        let mut img = build_test_module("pmod", &[]);
        let (at, _) = module_name(&img).unwrap();
        img[at] = 0xff;
        assert_eq!(module_name(&img), Err(ElfError::BadName));
        img[at] = 0xc3;
        img[at + 1] = 0xa9;
        assert_eq!(module_name(&img), Err(ElfError::BadName));
    }

    const REL: &str = "6.1.0-57-cloud-amd64";

    /// Section header `i` of an image made by `build_test_module` (1 is
    /// `.gnu.linkonce.this_module`, the extras follow in order).
    fn shdr(img: &[u8], i: usize) -> usize {
        u64_at(img, 0x28).unwrap() as usize + 64 * i
    }

    #[test]
    fn vermagic_names_the_release() {
        let img = build_test_module("pmod", &[(".modinfo", &test_modinfo(REL))]);
        let v = vermagic(&img).unwrap().unwrap();
        assert_eq!(v, format!("{REL} SMP preempt mod_unload modversions "));
        assert_eq!(vermagic_release(&v), Some(REL));
        // The kernel's first entry of the key wins; another key that ends
        // in "vermagic" is not it; NUL padding between entries is skipped.
        let info = b"\0\0xvermagic=9.9.9 \0\0\0vermagic=6.1.0-1-amd64 SMP \0vermagic=7.0.0 \0";
        let img = build_test_module("pmod", &[(".modinfo", info)]);
        assert_eq!(
            vermagic(&img).unwrap().as_deref(),
            Some("6.1.0-1-amd64 SMP ")
        );
        // A value running into the end of the section is read to there.
        let img = build_test_module("pmod", &[(".modinfo", b"vermagic=6.1.0-1-amd64")]);
        assert_eq!(vermagic(&img).unwrap().as_deref(), Some("6.1.0-1-amd64"));
    }

    #[test]
    fn no_modinfo_or_no_vermagic_is_none() {
        assert_eq!(vermagic(&build_test_module("pmod", &[])), Ok(None));
        let img = build_test_module("pmod", &[(".modinfo", b"license=GPL\0author=x\0")]);
        assert_eq!(vermagic(&img), Ok(None));
        let img = build_test_module("pmod", &[(".modinfo", b"")]);
        assert_eq!(vermagic(&img), Ok(None));
        // A .modinfo that is not SHF_ALLOC is not the one the kernel reads.
        let mut img = build_test_module("pmod", &[(".modinfo", &test_modinfo(REL))]);
        let at = shdr(&img, 2);
        img[at + 8..at + 16].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(vermagic(&img), Ok(None));
    }

    #[test]
    fn garbage_vermagic_is_refused_not_trusted() {
        for bad in [
            &b"vermagic=\0"[..],
            b"vermagic= SMP mod_unload \0",
            b"vermagic=6.1.0-\xff-amd64 SMP \0",
            b"vermagic=6.1.0\x01-amd64 SMP \0",
            b"vermagic=\xc3\xa9 SMP \0",
        ] {
            let img = build_test_module("pmod", &[(".modinfo", bad)]);
            assert_eq!(vermagic(&img), Err(ElfError::BadVermagic), "{bad:?}");
        }
        assert_eq!(vermagic(b"hello"), Err(ElfError::NotElf));
        // A .modinfo that claims to run past the end of the file.
        let mut img = build_test_module("pmod", &[(".modinfo", &test_modinfo(REL))]);
        let at = shdr(&img, 2);
        img[at + 0x20..at + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(vermagic(&img), Err(ElfError::Truncated));
        img[at + 0x18..at + 0x20].copy_from_slice(&u64::MAX.to_le_bytes());
        img[at + 0x20..at + 0x28].copy_from_slice(&8u64.to_le_bytes());
        assert_eq!(vermagic(&img), Err(ElfError::Truncated));
        // Cut anywhere: an error or an answer, never a panic; with the
        // section table cut off, always an error.
        let img = build_test_module("pmod", &[(".modinfo", &test_modinfo(REL))]);
        let table = u64_at(&img, 0x28).unwrap() as usize;
        for cut in 0..img.len() {
            let r = vermagic(&img[..cut]);
            if cut < table + 64 {
                assert!(r.is_err(), "cut at {cut}: {r:?}");
            }
        }
        assert_eq!(vermagic_release(""), None);
        assert_eq!(vermagic_release(" 6.1"), None);
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        assert_eq!(module_name(b"hello"), Err(ElfError::NotElf));
        let mut img = build_test_module("pmod", &[]);
        // Point the section table past the end.
        img[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(module_name(&img), Err(ElfError::Truncated));
        let img = build_test_module("pmod", &[]);
        for cut in [64, 100, img.len() - 1] {
            assert!(module_name(&img[..cut]).is_err());
        }
    }
}
