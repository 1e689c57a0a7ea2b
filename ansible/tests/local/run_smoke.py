#!/usr/bin/env python3
"""Local smoke test of the collection, without guests: builds the collection tarball,
installs it in a scratch directory, then runs host_setup (blessed directories only),
publish and withdraw against three local "hosts" whose module trees are scratch
directories, and the run role's variable checks. Needs ansible-core on PATH (Debian
bookworm's 2.14, or a venv); nothing outside a temporary directory is written.

    python3 ansible/tests/local/run_smoke.py

Prints one line per check and "N passed, N failed" at the end.
"""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION = os.path.normpath(os.path.join(HERE, "..", ".."))
A, B, C = "6.1.0-901-fleet", "6.1.0-902-fleet", "6.1.0-903-fleet"
RESULTS = {"passed": 0, "failed": 0}


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    print(("ok     " if cond else "FAILED ") + what, flush=True)
    return cond


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Smoke(object):
    def __init__(self, work):
        self.work = work
        self.scratch = os.path.join(work, "scratch")
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(work, "coll"),
                        FLEET_SMOKE_SCRATCH=self.scratch, ANSIBLE_STDOUT_CALLBACK="default",
                        ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_NOCOLOR="1",
                        ANSIBLE_RETRY_FILES_ENABLED="False",
                        # Not on this machine: our package, groups and users.
                        ANSIBLE_SKIP_TAGS="staprun_fleet_package,staprun_fleet_users")

    def sh(self, *argv):
        subprocess.run(argv, check=True, env=self.env, stdout=subprocess.DEVNULL)

    def play(self, playbook, *args):
        p = subprocess.run(["ansible-playbook", "-i", os.path.join(HERE, "inventory.yml"),
                            os.path.join(HERE, playbook)] + list(args),
                           env=self.env, capture_output=True, text=True)
        # The PLAY RECAP: "hostA : ok=9 changed=0 unreachable=0 failed=0 ..."
        stats = {}
        recap = p.stdout.split("PLAY RECAP", 1)[-1] if "PLAY RECAP" in p.stdout else ""
        for line in recap.splitlines():
            if " : " not in line:
                continue
            host, counts = line.split(" : ", 1)
            stats[host.strip()] = {k: int(v) for k, v in
                                   (w.split("=", 1) for w in counts.split() if "=" in w)}
        if not stats:
            print(p.stdout[-3000:], p.stderr[-3000:])
        return p.returncode, {"stats": stats}, p.stdout + p.stderr

    def blessed(self, host, rel):
        return os.path.join(self.scratch, host, "lib", "modules", rel, "systemtap")

    def published(self, host, rel):
        return os.path.join(self.blessed(host, rel), "fleet_hello.ko")

    def build(self, dirname):
        return os.path.join(self.scratch, "builds", "fleet_hello", dirname, "fleet_hello.ko")


def changed(out, host):
    return out["stats"].get(host, {}).get("changed", -1)


def failures(out, host):
    return out["stats"].get(host, {}).get("failed", -1)


def main():
    work = tempfile.mkdtemp(prefix="fleet-smoke.")
    try:
        run(Smoke(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


def run(s):
    s.sh("ansible-galaxy", "collection", "build", COLLECTION, "--output-path",
         os.path.join(s.work, "dist"))
    tarball = os.path.join(s.work, "dist", "staprun-fleet-0.1.0.tar.gz")
    check(os.path.exists(tarball), "ansible-galaxy collection build writes " +
          os.path.basename(tarball))
    s.sh("ansible-galaxy", "collection", "install", tarball, "-p", os.path.join(s.work, "coll"))
    p = subprocess.run(["ansible-playbook", "--syntax-check", "-i",
                        os.path.join(COLLECTION, "examples", "inventory.yml"),
                        os.path.join(COLLECTION, "playbooks", "example.yml")],
                       env=s.env, capture_output=True, text=True)
    check(p.returncode == 0, "ansible-playbook --syntax-check playbooks/example.yml"
          + ("" if p.returncode == 0 else ": " + p.stderr[-500:]))
    for kind, name in [("module", "staprun.fleet.stap_modinfo")] + [
            ("role", "staprun.fleet." + r)
            for r in ("host_setup", "build", "publish", "run", "withdraw")]:
        p = subprocess.run(["ansible-doc", "-t", kind, name], env=s.env,
                           capture_output=True, text=True)
        check(p.returncode == 0 and name.upper() in p.stdout.upper(),
              "ansible-doc -t %s %s" % (kind, name))
    subprocess.run([sys.executable, os.path.join(HERE, "make_fixtures.py"), s.scratch],
                   check=True)
    # A's module is stored under B's name and B's under A's.
    img_a, img_b = sha(s.build(B)), sha(s.build(A))

    rc, out, text = s.play("smoke.yml")
    check(rc != 0, "first run: the play fails (hostC has no build)")
    check(failures(out, "hostC") == 1 and failures(out, "hostA") == 0
          and failures(out, "hostB") == 0, "first run: only hostC fails")
    check("hostC: fleet_hello: no build for kernel %s" % C in text,
          "hostC is named with its release")
    for host, rel in (("hostA", A), ("hostB", A), ("hostB", B), ("hostC", C)):
        st = os.stat(s.blessed(host, rel))
        check(stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0 and st.st_gid == 0,
              "blessed directory %s/%s is 755 root:root" % (host, rel))
    for host, rel, want in (("hostA", A, img_a), ("hostB", A, img_a), ("hostB", B, img_b)):
        path = s.published(host, rel)
        ok = os.path.exists(path) and sha(path) == want
        check(ok, "%s/%s got the build whose vermagic names %s (not the one named so)"
              % (host, rel, rel))
        if ok:
            st = os.stat(path)
            check(stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0,
                  "%s/%s: 0644 root" % (host, rel))
    check(not os.path.exists(s.published("hostC", C)), "hostC got nothing")

    rc, out, _ = s.play("smoke.yml")
    check(all(changed(out, h) == 0 for h in ("hostA", "hostB", "hostC")),
          "second run: nothing changed (%s)" % out["stats"])
    rc, out, _ = s.play("smoke.yml", "--check", "--diff")
    check(all(changed(out, h) == 0 for h in ("hostA", "hostB", "hostC")),
          "--check --diff: nothing changed")
    rc, out, text = s.play("smoke.yml", "-e", "staprun_fleet_missing_build=report")
    check(rc == 0 and failures(out, "hostC") == 0,
          "missing_build=report: the play goes on (rc %d)" % rc)
    check("hostC: fleet_hello: no build for kernel %s" % C in text,
          "missing_build=report: hostC is still named")

    subprocess.run([sys.executable, os.path.join(HERE, "make_fixtures.py"), s.scratch,
                    "--rebuild-b"], check=True)
    new_b = sha(s.build(A))
    rc, out, text = s.play("smoke.yml", "--check", "--diff")
    check(changed(out, "hostB") == 1 and changed(out, "hostA") == 0,
          "a new build of %s: --check shows one change on hostB only" % B)
    check(sha(s.published("hostB", B)) == img_b, "--check changed no file")
    rc, out, _ = s.play("smoke.yml")
    check(changed(out, "hostB") == 1 and sha(s.published("hostB", B)) == new_b,
          "the new build is published on hostB")
    rc, out, _ = s.play("smoke.yml")
    check(changed(out, "hostB") == 0, "and a re-run changes nothing")

    rc, out, _ = s.play("smoke.yml", "--tags", "withdraw", "--check")
    check(changed(out, "hostB") == 1 and os.path.exists(s.published("hostB", B)),
          "withdraw --check: would change, removes nothing")
    rc, out, _ = s.play("smoke.yml", "--tags", "withdraw")
    check(rc == 0 and not any(os.path.exists(s.published(h, r)) for h, r in
                              (("hostA", A), ("hostB", A), ("hostB", B))),
          "withdraw removes the module from every blessed directory")
    check(os.path.isdir(s.blessed("hostB", B)), "withdraw keeps the blessed directories")
    rc, out, _ = s.play("smoke.yml", "--tags", "withdraw")
    check(all(changed(out, h) == 0 for h in ("hostA", "hostB", "hostC")),
          "withdraw again: nothing changed")

    good = {"staprun_fleet_module": "fleet_hello", "staprun_fleet_run_user": "alice",
            "staprun_fleet_module_params": ["interval=5", "label=a%b"]}
    rc, out, text = s.play("validate.yml", "-e", json.dumps(good))
    check(rc == 0, "run role: plain name, user and parameters pass the checks")
    rc, out, text = s.play("validate.yml", "-e", json.dumps(
        dict(good, staprun_fleet_run_mode="service")))
    check(rc == 0, "run role: the same pass for the service")
    hostile = [
        {"staprun_fleet_module": "../../../tmp/evil"},
        {"staprun_fleet_module": "/home/alice/evil.ko"},
        {"staprun_fleet_module": "evil.ko"},
        {"staprun_fleet_module": "-u"},
        {"staprun_fleet_module": "pmod\n"},
        {"staprun_fleet_module": "pmod /tmp/evil"},
        {"staprun_fleet_module": ""},
        {"staprun_fleet_module": ["pmod"]},
        {"staprun_fleet_module": "x" * 56},
        {"staprun_fleet_run_user": "root"},
        {"staprun_fleet_run_user": "-alice"},
        {"staprun_fleet_run_user": ""},
        {"staprun_fleet_module_params": ["-u /tmp/evil.ko"]},
        {"staprun_fleet_module_params": ["-u"]},
        {"staprun_fleet_module_params": ["/tmp/evil.ko"]},
        {"staprun_fleet_module_params": ["_stp_target=1"]},
        {"staprun_fleet_module_params": ["a=b\nc"]},
        {"staprun_fleet_module_params": "a=1"},
        {"staprun_fleet_module_params": ["a=b c"], "staprun_fleet_run_mode": "service"},
        {"staprun_fleet_module_params": ["a=\"b"], "staprun_fleet_run_mode": "service"},
        {"staprun_fleet_run_mode": "shell"},
        {"staprun_fleet_run_seconds": "10; rm -rf /"},
        {"staprun_fleet_run_seconds": -1},
    ]
    for bad in hostile:
        vals = dict(good, **bad)
        rc, out, _ = s.play("validate.yml", "-e", json.dumps(vals))
        check(rc != 0, "run role refuses %s" % json.dumps(bad))


if __name__ == "__main__":
    sys.exit(main())
