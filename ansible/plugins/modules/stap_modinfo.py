#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: 2026 staprun-rs contributors
# SPDX-License-Identifier: GPL-2.0-or-later
"""Read a SystemTap (kernel) module's vermagic and name from the ELF file itself."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: stap_modinfo
short_description: Read the kernel release a SystemTap module was built for
version_added: "0.1.0"
description:
  - Reads a kernel module file (C(.ko), as C(stap -p4) writes it) and returns the
    C(vermagic=) entry of its C(.modinfo) section, the kernel release that entry names,
    and the module name the kernel will use (from C(.gnu.linkonce.this_module)).
  - The release is read from the module itself, never from its file or directory name.
    It is the first word of C(vermagic), which is what staprun compares with the running
    kernel's release (staprun refuses a module built for another release).
  - As the kernel does, only the first C(SHF_ALLOC) C(.modinfo) and
    C(.gnu.linkonce.this_module) sections count, and the first C(vermagic=) entry.
  - Pure Python (standard library only) on the node it runs on; nothing is loaded and
    nothing is changed, so it reports C(changed=false) and behaves the same in check mode.
author:
  - staprun-rs contributors
options:
  path:
    description:
      - The module file to read, on the node the task runs on (use C(delegate_to) to read a
        build on the controller).
    type: path
    required: true
  release:
    description:
      - When set, the task fails unless the module's vermagic names exactly this kernel
        release (for example C(6.1.0-28-amd64)).
    type: str
  name:
    description:
      - When set, the task fails unless the module's own name (the one C(staprun -d) and
        C(lsmod) use) is exactly this.
    type: str
attributes:
  check_mode:
    support: full
    description: Reads only; the same result in check mode.
  diff_mode:
    support: none
notes:
  - ELF32 and ELF64, either byte order, are read; staprun itself loads only 64-bit
    little-endian modules.
  - A module without a C(vermagic) entry is an error, as staprun refuses such a module.
  - staprun(8) describes the vermagic rule (C(man 8 staprun)).
"""

EXAMPLES = r"""
- name: Which kernel was this build made for? (on the controller)
  staprun.fleet.stap_modinfo:
    path: builds/pmod/6.1.0-28-amd64/pmod.ko
  delegate_to: localhost
  register: info

- name: Check a published module on the host against the running kernel
  staprun.fleet.stap_modinfo:
    path: "/lib/modules/{{ ansible_facts.kernel }}/systemtap/pmod.ko"
    release: "{{ ansible_facts.kernel }}"
    name: pmod
"""

RETURN = r"""
vermagic:
  description: The whole C(vermagic=) value.
  returned: success
  type: str
  sample: "6.1.0-28-amd64 SMP preempt mod_unload modversions "
release:
  description: The kernel release the module was built for (the first word of vermagic).
  returned: success
  type: str
  sample: 6.1.0-28-amd64
name:
  description: The module's name as the kernel sees it (empty if the module has no
    C(.gnu.linkonce.this_module) section).
  returned: success
  type: str
  sample: pmod
modinfo:
  description: The first value of every C(.modinfo) key (undecodable bytes escaped).
  returned: success
  type: dict
  sample: {"license": "GPL", "name": "pmod", "vermagic": "6.1.0-28-amd64 SMP preempt mod_unload modversions "}
sha256:
  description: SHA-256 of the file, as in staprun's C(LOAD) audit line.
  returned: success
  type: str
size:
  description: The file's size in bytes.
  returned: success
  type: int
"""

import hashlib
import struct

SHF_ALLOC = 0x2
SHT_NOBITS = 8
SHN_XINDEX = 0xFFFF


class ModinfoError(Exception):
    """The file is not a module whose vermagic can be read."""


class _Elf(object):
    def __init__(self, image):
        if len(image) < 16 or image[:4] != b"\x7fELF":
            raise ModinfoError("not an ELF file")
        cls, data = bytearray(image[4:6])
        if cls not in (1, 2) or data not in (1, 2):
            raise ModinfoError("unknown ELF class or byte order")
        self.image = image
        self.is64 = cls == 2
        self.end = "<" if data == 1 else ">"
        if self.is64:
            shoff = self._u(0x28, "Q")
            shentsize, shnum, shstrndx = (self._u(0x3A, "H"), self._u(0x3C, "H"),
                                          self._u(0x3E, "H"))
            min_entsize = 64
        else:
            shoff = self._u(0x20, "I")
            shentsize, shnum, shstrndx = (self._u(0x2E, "H"), self._u(0x30, "H"),
                                          self._u(0x32, "H"))
            min_entsize = 40
        if shentsize < min_entsize:
            raise ModinfoError("bad section header size")
        self.shoff, self.shentsize = shoff, shentsize
        if shnum == 0 and shoff != 0:
            shnum = self._header(0)["size"]  # extended numbering
        if shstrndx == SHN_XINDEX:
            shstrndx = self._header(0)["link"]
        if shstrndx >= shnum:
            raise ModinfoError("section name table index out of range")
        self.shnum = shnum
        self.strtab = self._data(self._header(shstrndx))

    def _u(self, at, fmt):
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.image):
            raise ModinfoError("ELF header or section table out of bounds")
        return struct.unpack_from(self.end + fmt, self.image, at)[0]

    def _header(self, i):
        at = self.shoff + i * self.shentsize
        if at + self.shentsize > len(self.image):
            raise ModinfoError("ELF header or section table out of bounds")
        if self.is64:
            return {"name": self._u(at, "I"), "type": self._u(at + 4, "I"),
                    "flags": self._u(at + 8, "Q"), "offset": self._u(at + 24, "Q"),
                    "size": self._u(at + 32, "Q"), "link": self._u(at + 40, "I")}
        return {"name": self._u(at, "I"), "type": self._u(at + 4, "I"),
                "flags": self._u(at + 8, "I"), "offset": self._u(at + 16, "I"),
                "size": self._u(at + 20, "I"), "link": self._u(at + 24, "I")}

    def _data(self, h):
        if h["type"] == SHT_NOBITS:
            return b""
        end = h["offset"] + h["size"]
        if end > len(self.image):
            raise ModinfoError("section data out of bounds")
        return self.image[h["offset"]:end]

    def section(self, name, alloc_only=True):
        """The data of the first section called `name` (SHF_ALLOC only, as the kernel's
        loader picks it), or None."""
        want = name.encode("ascii")
        for i in range(self.shnum):
            h = self._header(i)
            if h["name"] >= len(self.strtab):
                continue
            rest = self.strtab[h["name"]:]
            nul = rest.find(b"\0")
            if (rest if nul < 0 else rest[:nul]) != want:
                continue
            if alloc_only and not h["flags"] & SHF_ALLOC:
                continue
            return self._data(h)
        return None


def _text(value):
    return value.decode("utf-8", "backslashreplace")


def vermagic_release(vermagic):
    """The release a vermagic string names (its first word), or None if that word is empty
    or not printable ASCII (what staprun accepts)."""
    release = vermagic.split(" ", 1)[0]
    if release and all(0x21 <= ord(c) <= 0x7E for c in release):
        return release
    return None


def read_modinfo(image):
    """Facts about a module image (bytes): vermagic, release, name, modinfo.

    Raises ModinfoError when the file is not ELF, is truncated, or has no usable vermagic.
    """
    elf = _Elf(bytes(image))
    modinfo_data = elf.section(".modinfo")
    entries = {}
    vermagic_raw = None
    if modinfo_data is not None:
        for entry in modinfo_data.split(b"\0"):
            if not entry or b"=" not in entry:
                continue
            key, value = entry.split(b"=", 1)
            if key == b"vermagic" and vermagic_raw is None:
                vermagic_raw = value
            entries.setdefault(_text(key), _text(value))
    if vermagic_raw is None:
        raise ModinfoError("no vermagic in .modinfo: staprun refuses such a module")
    try:
        vermagic = vermagic_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModinfoError("the vermagic in .modinfo is not UTF-8 text")
    release = vermagic_release(vermagic)
    if release is None:
        raise ModinfoError("the vermagic in .modinfo does not start with a kernel release "
                           "in plain text")
    name = ""
    this_module = elf.section(".gnu.linkonce.this_module")
    if this_module is not None:
        off, length = (24, 56) if elf.is64 else (12, 60)
        if len(this_module) < off + length:
            raise ModinfoError(".gnu.linkonce.this_module is too short")
        field = this_module[off:off + length]
        nul = field.find(b"\0")
        name = _text(field if nul < 0 else field[:nul])
    return {"vermagic": vermagic, "release": release, "name": name, "modinfo": entries}


def read_file(path):
    """read_modinfo of a file, plus its sha256 and size."""
    with open(path, "rb") as f:
        image = f.read()
    facts = read_modinfo(image)
    facts["sha256"] = hashlib.sha256(image).hexdigest()
    facts["size"] = len(image)
    return facts


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            release=dict(type="str"),
            name=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        facts = read_file(path)
    except (IOError, OSError) as e:
        module.fail_json(msg="cannot read %s: %s" % (path, e))
    except ModinfoError as e:
        module.fail_json(msg="%s: %s" % (path, e))
    want = module.params["release"]
    if want is not None and facts["release"] != want:
        module.fail_json(
            msg="%s is built for kernel %s (vermagic %r), not %s"
            % (path, facts["release"], facts["vermagic"], want), **facts)
    want = module.params["name"]
    if want is not None and facts["name"] != want:
        module.fail_json(msg="%s holds the module %r, not %r" % (path, facts["name"], want),
                         **facts)
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
