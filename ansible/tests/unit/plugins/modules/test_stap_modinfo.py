# -*- coding: utf-8 -*-
# Copyright: 2026 staprun-rs contributors
# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests of the vermagic reader (plugins/modules/stap_modinfo.py).

Run from the repository: python3 -m unittest discover -s ansible/tests/unit -v
Needs only the standard library; the tests of the module's Ansible entry point run when
ansible-core is importable and are skipped otherwise.
"""

from __future__ import absolute_import, division, print_function

import glob
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_PATH = os.path.normpath(
    os.path.join(HERE, "..", "..", "..", "..", "plugins", "modules", "stap_modinfo.py"))
_spec = importlib.util.spec_from_file_location("stap_modinfo", MODULE_PATH)
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)

SHF_ALLOC = 0x2
SHT_PROGBITS = 1
SHT_STRTAB = 3
SHT_NOBITS = 8

VERMAGIC = "6.1.0-28-amd64 SMP preempt mod_unload modversions "


def this_module(name, is64=True):
    """A .gnu.linkonce.this_module laid out like the kernel's struct module."""
    off = 24 if is64 else 12
    data = bytearray(0x380)
    raw = name.encode("ascii")[:55]
    data[off:off + len(raw)] = raw
    return bytes(data)


def modinfo(release="6.1.0-28-amd64", extra=b""):
    return (b"license=GPL\0\0\0" + extra +
            ("vermagic=%s SMP preempt mod_unload modversions \0" % release).encode()
            + b"name=pmod\0")


def build_elf(sections, is64=True, little=True):
    """A relocatable ELF image holding `sections`: (name, data, flags[, type]) tuples."""
    e = "<" if little else ">"
    ehsize, shentsize = (64, 64) if is64 else (52, 40)
    out = bytearray(ehsize)
    placed = []
    for sec in sections:
        name, data, flags = sec[:3]
        stype = sec[3] if len(sec) > 3 else SHT_PROGBITS
        placed.append((name, len(out), len(data), flags, stype))
        out += data
    shstr = bytearray(b"\0")
    name_offs = []
    for name, *_ in placed:
        name_offs.append(len(shstr))
        shstr += name.encode() + b"\0"
    name_offs.append(len(shstr))
    shstr += b".shstrtab\0"
    shstr_off = len(out)
    out += shstr
    while len(out) % 8:
        out += b"\0"
    shoff = len(out)
    headers = [(0, 0, 0, 0, 0)]
    for (name, off, size, flags, stype), noff in zip(placed, name_offs):
        headers.append((noff, stype, flags, off, size))
    headers.append((name_offs[-1], SHT_STRTAB, 0, shstr_off, len(shstr)))
    for noff, stype, flags, off, size in headers:
        if is64:
            out += struct.pack(e + "IIQQQQIIQQ", noff, stype, flags, 0, off, size, 0, 0, 1, 0)
        else:
            out += struct.pack(e + "IIIIIIIIII", noff, stype, flags, 0, off, size, 0, 0, 1, 0)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1]) + b"\0" * 9
    out[:16] = ident
    if is64:
        struct.pack_into(e + "HHIQQQIHHHHHH", out, 16, 1, 62, 1, 0, 0, shoff, 0, ehsize, 0,
                         0, shentsize, len(headers), len(headers) - 1)
    else:
        struct.pack_into(e + "HHIIIIIHHHHHH", out, 16, 1, 3, 1, 0, 0, shoff, 0, ehsize, 0,
                         0, shentsize, len(headers), len(headers) - 1)
    return bytes(out)


def module_image(name="pmod", release="6.1.0-28-amd64", **kw):
    return build_elf([(".gnu.linkonce.this_module", this_module(name, kw.get("is64", True)),
                       SHF_ALLOC | 0x1),
                      (".modinfo", modinfo(release), SHF_ALLOC)], **kw)


class ReadModinfo(unittest.TestCase):
    def test_release_name_and_entries(self):
        facts = sm.read_modinfo(module_image())
        self.assertEqual(facts["release"], "6.1.0-28-amd64")
        self.assertEqual(facts["vermagic"], VERMAGIC)
        self.assertEqual(facts["name"], "pmod")
        self.assertEqual(facts["modinfo"]["license"], "GPL")

    def test_release_comes_from_the_module_not_the_file_name(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "6.1.0-99-amd64-pmod.ko")
            with open(path, "wb") as f:
                f.write(module_image(release="6.1.0-28-amd64"))
            self.assertEqual(sm.read_file(path)["release"], "6.1.0-28-amd64")

    def test_elf32_and_big_endian(self):
        for is64 in (True, False):
            for little in (True, False):
                facts = sm.read_modinfo(module_image(name="m32", is64=is64, little=little))
                self.assertEqual((facts["release"], facts["name"]), ("6.1.0-28-amd64", "m32"))

    def test_first_vermagic_entry_counts(self):
        img = build_elf([(".modinfo", modinfo("6.1.0-1-amd64") + modinfo("6.1.0-2-amd64"),
                          SHF_ALLOC)])
        self.assertEqual(sm.read_modinfo(img)["release"], "6.1.0-1-amd64")

    def test_modinfo_that_is_not_loaded_is_ignored(self):
        # A .modinfo section without SHF_ALLOC is not what the kernel reads.
        img = build_elf([(".modinfo", modinfo("6.6.6-evil"), 0),
                         (".modinfo", modinfo("6.1.0-28-amd64"), SHF_ALLOC)])
        self.assertEqual(sm.read_modinfo(img)["release"], "6.1.0-28-amd64")
        only_unloaded = build_elf([(".modinfo", modinfo("6.6.6-evil"), 0)])
        with self.assertRaisesRegex(sm.ModinfoError, "no vermagic"):
            sm.read_modinfo(only_unloaded)

    def test_other_sections_holding_vermagic_text_are_ignored(self):
        img = build_elf([(".rodata", b"vermagic=6.6.6-evil SMP\0", SHF_ALLOC),
                         (".modinfo", modinfo(), SHF_ALLOC)])
        self.assertEqual(sm.read_modinfo(img)["release"], "6.1.0-28-amd64")

    def test_no_modinfo_or_no_vermagic_is_an_error(self):
        with self.assertRaisesRegex(sm.ModinfoError, "no vermagic"):
            sm.read_modinfo(build_elf([(".text", b"\x90" * 16, SHF_ALLOC)]))
        with self.assertRaisesRegex(sm.ModinfoError, "no vermagic"):
            sm.read_modinfo(build_elf([(".modinfo", b"license=GPL\0", SHF_ALLOC)]))

    def test_bad_vermagic_is_an_error(self):
        for bad in (b"vermagic=\xff SMP\0", b"vermagic= SMP\0", b"vermagic=\0",
                    b"vermagic=6.1\x01x SMP\0"):
            img = build_elf([(".modinfo", bad, SHF_ALLOC)])
            with self.assertRaises(sm.ModinfoError, msg=bad):
                sm.read_modinfo(img)

    def test_not_elf_and_truncated(self):
        with self.assertRaisesRegex(sm.ModinfoError, "not an ELF"):
            sm.read_modinfo(b"#!/bin/sh\necho hi\n")
        with self.assertRaisesRegex(sm.ModinfoError, "not an ELF"):
            sm.read_modinfo(b"")
        img = module_image()
        for cut in (20, 64, len(img) // 2, len(img) - 1):
            with self.assertRaises(sm.ModinfoError, msg=cut):
                sm.read_modinfo(img[:cut])

    def test_section_data_out_of_bounds(self):
        img = bytearray(build_elf([(".modinfo", modinfo(), SHF_ALLOC)]))
        shoff = struct.unpack_from("<Q", img, 0x28)[0]
        struct.pack_into("<Q", img, shoff + 64 + 32, 1 << 40)  # .modinfo sh_size
        with self.assertRaisesRegex(sm.ModinfoError, "out of bounds"):
            sm.read_modinfo(bytes(img))

    def test_nobits_modinfo_is_empty(self):
        img = build_elf([(".modinfo", b"", SHF_ALLOC, SHT_NOBITS)])
        with self.assertRaisesRegex(sm.ModinfoError, "no vermagic"):
            sm.read_modinfo(img)

    def test_module_without_this_module_has_empty_name(self):
        img = build_elf([(".modinfo", modinfo(), SHF_ALLOC)])
        self.assertEqual(sm.read_modinfo(img)["name"], "")

    def test_vermagic_release(self):
        self.assertEqual(sm.vermagic_release(VERMAGIC), "6.1.0-28-amd64")
        self.assertEqual(sm.vermagic_release("6.1.0"), "6.1.0")
        self.assertIsNone(sm.vermagic_release(" 6.1.0"))
        self.assertIsNone(sm.vermagic_release("6.1.\u00e90 SMP"))

    def test_read_file_sha256_and_size(self):
        img = module_image()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "pmod.ko")
            with open(path, "wb") as f:
                f.write(img)
            facts = sm.read_file(path)
        self.assertEqual(facts["sha256"], hashlib.sha256(img).hexdigest())
        self.assertEqual(facts["size"], len(img))


def real_modules():
    """Real SystemTap modules a previous `cargo xtask` run left (read only), if any."""
    repo = os.path.normpath(os.path.join(HERE, "..", "..", "..", "..", ".."))
    roots = [os.environ.get("STAP_MODINFO_REAL_KO_DIR", ""), os.path.join(repo, "target")]
    found = []
    for root in filter(None, roots):
        found += glob.glob(os.path.join(root, "debian-guest", "share", "*.ko"))
        found += glob.glob(os.path.join(root, "vm-cache", "kmod", "*", "pmod.ko"))
    return sorted(set(found))


class RealModule(unittest.TestCase):
    def test_real_module(self):
        paths = real_modules()
        if not paths:
            self.skipTest("no real .ko under target/ (run cargo xtask vm-prepare)")
        for path in paths:
            facts = sm.read_file(path)
            self.assertEqual(facts["name"], "pmod", path)
            self.assertRegex(facts["release"], r"^\d+\.\d+", path)
            self.assertTrue(facts["vermagic"].startswith(facts["release"] + " "), path)
            # The same answer as the kernel's tools where they are installed.
            try:
                out = subprocess.run(["modinfo", "-F", "vermagic", path],
                                     capture_output=True, text=True, check=True).stdout
            except (OSError, subprocess.CalledProcessError):
                continue
            self.assertEqual(out.strip(), facts["vermagic"].strip(), path)


try:
    import ansible.module_utils.basic  # noqa: F401
    HAVE_ANSIBLE = True
except ImportError:
    HAVE_ANSIBLE = False


@unittest.skipUnless(HAVE_ANSIBLE, "ansible-core is not importable by this python")
class AnsibleEntryPoint(unittest.TestCase):
    """Runs the module as Ansible would (a JSON args file), in and out of check mode."""

    def run_module(self, args):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"ANSIBLE_MODULE_ARGS": args}, f)
        try:
            p = subprocess.run([sys.executable, MODULE_PATH, f.name],
                               capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        return p.returncode, json.loads(p.stdout)

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "pmod.ko")
        with open(self.path, "wb") as f:
            f.write(module_image())
        self.before = os.stat(self.path)

    def tearDown(self):
        after = os.stat(self.path)
        self.assertEqual((after.st_mtime_ns, after.st_size),
                         (self.before.st_mtime_ns, self.before.st_size))
        self.dir.cleanup()

    def test_reads_in_and_out_of_check_mode(self):
        for check in (False, True):
            rc, res = self.run_module({"path": self.path, "_ansible_check_mode": check})
            self.assertEqual(rc, 0, res)
            self.assertFalse(res["changed"])
            self.assertEqual(res["release"], "6.1.0-28-amd64")
            self.assertEqual(res["name"], "pmod")

    def test_release_and_name_expectations(self):
        rc, res = self.run_module({"path": self.path, "release": "6.1.0-28-amd64",
                                   "name": "pmod"})
        self.assertEqual(rc, 0, res)
        rc, res = self.run_module({"path": self.path, "release": "6.1.0-99-amd64"})
        self.assertNotEqual(rc, 0)
        self.assertIn("built for kernel 6.1.0-28-amd64", res["msg"])
        self.assertIn("not 6.1.0-99-amd64", res["msg"])
        rc, res = self.run_module({"path": self.path, "name": "other"})
        self.assertNotEqual(rc, 0)
        self.assertIn("'pmod', not 'other'", res["msg"])

    def test_missing_and_not_a_module(self):
        rc, res = self.run_module({"path": os.path.join(self.dir.name, "nope.ko")})
        self.assertNotEqual(rc, 0)
        self.assertIn("cannot read", res["msg"])
        junk = os.path.join(self.dir.name, "junk.ko")
        with open(junk, "wb") as f:
            f.write(b"not a module")
        rc, res = self.run_module({"path": junk})
        self.assertNotEqual(rc, 0)
        self.assertIn("not an ELF file", res["msg"])


if __name__ == "__main__":
    unittest.main()
