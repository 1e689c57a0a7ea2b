#!/usr/bin/env python3
"""Scratch trees for smoke.yml: fake hosts' /lib/modules and fake builds (tiny ELF modules
from the unit tests' builder). Builds are stored under misleading directory names, so a
publish that trusted names instead of vermagic would put the wrong one in place.

    make_fixtures.py SCRATCH [--rebuild-b]
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "unit", "plugins", "modules"))
import test_stap_modinfo as t  # noqa: E402

REL_A, REL_B, REL_C = "6.1.0-901-fleet", "6.1.0-902-fleet", "6.1.0-903-fleet"


def write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def main():
    scratch = sys.argv[1]
    extra = b"srcversion=rebuilt\0" if "--rebuild-b" in sys.argv else b""
    # hostA runs A; hostB runs B and will boot A; hostC runs C (no build).
    for host, rels in (("hostA", [REL_A]), ("hostB", [REL_A, REL_B]), ("hostC", [REL_C])):
        for rel in rels:
            write(os.path.join(scratch, host, "lib", "modules", rel, "modules.builtin"), b"")
    builds = os.path.join(scratch, "builds", "fleet_hello")
    img_a = t.build_elf([(".gnu.linkonce.this_module", t.this_module("fleet_hello"), 3),
                         (".modinfo", t.modinfo(REL_A), 2)])
    img_b = t.build_elf([(".gnu.linkonce.this_module", t.this_module("fleet_hello"), 3),
                         (".modinfo", t.modinfo(REL_B, extra), 2)])
    # Misleading names: A's build sits in a directory named after B, and B's after A.
    write(os.path.join(builds, REL_B, "fleet_hello.ko"), img_a)
    write(os.path.join(builds, REL_A, "fleet_hello.ko"), img_b)


if __name__ == "__main__":
    main()
