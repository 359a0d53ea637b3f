#!/usr/bin/env python3
"""Packaging tests for qubes-borg: the RPMs and the Salt formula (tests/packaging/README.md).

Run by tests/packaging/run (in `make test`). What is real here: `make dist`, rpmbuild of both
specs from that tarball (with the prebuilt release binaries, `--with prebuilt`), rpm queries of
the built packages, rpmlint, and Salt from PyPI (`salt-call --local`) rendering the formula as
installed by `make install-dom0`. What is not: the qvm.* states (they exist only in dom0, so
the tests render states without running them) and Fedora's systemd scriptlet macros (Debian's
rpm has no systemd-rpm-macros, so the scriptlets come from the spec's fallback definitions).

Environment: QUBES_BORG_TEST_CACHE (Salt venv and pip cache, default build/cache),
QUBES_BORG_TEST_KEEP=1 (keep the work directory), QUBES_BORG_TEST_RPM_FROM_SOURCE=0 (skip the
second build of the VM package the Fedora way, cargo in %build from vendored crates: ~40 s).
"""

import base64
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VERSION = open(os.path.join(REPO, "version")).read().strip()
SALT_VERSION = "3006.29"  # LTS line; newer releases pin a certifi that PyPI's mirror here lacks
CACHE = os.path.abspath(os.environ.get("QUBES_BORG_TEST_CACHE") or os.path.join(REPO, "build", "cache"))
RELEASE = os.path.join(REPO, "target", "release")

FORMULA_DIR = "/srv/formulas/base/qubes-borg-formula"
PILLAR_DIR = "/srv/pillar/base/qubes-borg"
POLICY = os.path.join(REPO, "policy", "70-qubes-borg.policy")

# nodegroups and file_roots as qubes-mgmt-salt's etc/salt/minion.d/f_defaults.conf sets them
# (QubesOS/qubes-mgmt-salt; docs/SOURCES.md, "Packaging and Salt conventions").
QUBES_F_DEFAULTS = """\
file_roots:
  base:
    - /srv/salt
  user:
    - /srv/user_salt
nodegroups:
  dom0: dom0
  vm: '* and not dom0'
"""


class Env:
    """Everything the tests look at, made once (setUpModule)."""

    work = None
    vm_rpm = dom0_rpm = None
    topdir = None
    salt_call = salt_python = None
    timings = {}


def run(cmd, check=True, env=None, cwd=REPO, input=None):
    p = subprocess.run(cmd, cwd=cwd, env=env, input=input, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(
            "command failed (%d): %s\n--- stdout\n%s\n--- stderr\n%s"
            % (p.returncode, " ".join(cmd), p.stdout[-4000:], p.stderr[-4000:])
        )
    return p


def timed(name, fn):
    t = time.monotonic()
    fn()
    Env.timings[name] = time.monotonic() - t


def build_rpms(topdir, prebuilt):
    env = dict(os.environ)
    env["RPM_TOPDIR"] = topdir
    env["RPMBUILD_FLAGS"] = "--nodeps"  # the BuildRequires are Fedora packages, not installed here
    if prebuilt:
        env["RPM_PREBUILT"] = "1"
    else:
        env.pop("RPM_PREBUILT", None)
    run(["rpm/build-rpms", "build"], env=env)
    vm = os.path.join(topdir, "RPMS", "x86_64", "qubes-borg-%s-1.x86_64.rpm" % VERSION)
    dom0 = os.path.join(topdir, "RPMS", "x86_64", "qubes-borg-dom0-%s-1.x86_64.rpm" % VERSION)
    return vm, dom0


def extract(rpm, dest):
    os.makedirs(dest)
    cpio = subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], cwd=dest, input=cpio, check=True)


def salt_venv():
    """Salt from PyPI in a venv under CACHE, made once (a lock serialises parallel runs)."""
    venv = os.path.join(CACHE, "salt-%s" % SALT_VERSION)
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".salt.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(venv, ".complete")):
            shutil.rmtree(venv, ignore_errors=True)
            run(["/usr/bin/python3", "-m", "venv", venv])
            run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                 "--cache-dir", os.path.join(CACHE, "pip"), "salt==%s" % SALT_VERSION])
            open(os.path.join(venv, ".complete"), "w").close()
    return os.path.join(venv, "bin", "salt-call"), os.path.join(venv, "bin", "python")


def setUpModule():
    Env.work = tempfile.mkdtemp(prefix="qubes-borg-pkg.")
    timed("make dist", lambda: run(["make", "-s", "dist"]))
    Env.tarball = os.path.join(REPO, "build", "qubes-borg-%s.tar.gz" % VERSION)
    shutil.copy(Env.tarball, os.path.join(Env.work, "dist.tar.gz"))
    Env.topdir = os.path.join(Env.work, "rpm")

    def rpms():
        Env.vm_rpm, Env.dom0_rpm = build_rpms(Env.topdir, prebuilt=True)

    timed("rpmbuild (prebuilt)", rpms)
    Env.vm_root = os.path.join(Env.work, "install-vm")
    Env.dom0_root = os.path.join(Env.work, "install-dom0")
    run(["make", "-s", "install-vm", "DESTDIR=" + Env.vm_root, "CARGO=true"])
    run(["make", "-s", "install-dom0", "DESTDIR=" + Env.dom0_root])
    Env.vm_x = os.path.join(Env.work, "payload-vm")
    Env.dom0_x = os.path.join(Env.work, "payload-dom0")
    extract(Env.vm_rpm, Env.vm_x)
    extract(Env.dom0_rpm, Env.dom0_x)

    def deb():
        env = dict(os.environ, DEB_PREBUILT="1", DPKG_BUILDPACKAGE_FLAGS="-d")
        out = run(["debian/build-deb", "build"], env=env).stdout.strip().splitlines()[-1]
        Env.deb = os.path.join(Env.work, os.path.basename(out))
        shutil.copy(os.path.join(REPO, out), Env.deb)

    timed("dpkg-buildpackage (prebuilt)", deb)
    Env.deb_x = os.path.join(Env.work, "payload-deb")
    run(["dpkg-deb", "-x", Env.deb, Env.deb_x])

    def venv():
        Env.salt_call, Env.salt_python = salt_venv()

    timed("salt venv", venv)


def cleanup():
    """Run by main() whatever happened (tearDownModule is skipped when setUpModule fails)."""
    if Env.work and not os.environ.get("QUBES_BORG_TEST_KEEP"):
        shutil.rmtree(Env.work, ignore_errors=True)
    elif Env.work:
        print("kept", Env.work, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# rpm helpers


def rpm_files(rpm):
    """{path: (mode, user, group, flags)} of a package, rpm-generated build-id links left out."""
    qf = "[%{FILENAMES}\t%{FILEMODES}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\t%{FILEFLAGS:fflags}\n]"
    out = run(["rpm", "-qp", "--qf", qf, rpm]).stdout
    files = {}
    for line in out.splitlines():
        path, mode, user, group, flags = line.split("\t")
        if path.startswith("/usr/lib/.build-id"):
            continue  # rpm adds these links for every ELF file (not part of make install)
        files[path] = (int(mode) & 0o177777, user, group, flags)
    return files


def tree(root):
    """{path: mode} for everything under root (paths as installed, without root)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out["/" + os.path.relpath(full, root)] = os.lstat(full).st_mode
    return out


def doc_or_license(flags):
    return "d" in flags or "l" in flags


def rpm_query(rpm, *args):
    return run(["rpm", "-qp"] + list(args) + [rpm]).stdout


def build_id(path):
    out = run(["readelf", "-n", path]).stdout
    m = re.search(r"Build ID: ([0-9a-f]+)", out)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Salt helpers


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# Stand-ins for the two dom0 tools owner.jinja runs, with the exit codes of the real ones
# (qubes-core-admin-client v4.3.34 qubesadmin/tools/qvm_check.py: 0 exists, 1 not;
# qvm_tags.py `list TAG`: 0 tagged, 1 not, and the parser's exit 2 for "no such domain").
# The qubes and their tags come from the JSON file $QUBES_BORG_FAKE_QUBES; every call is
# appended to $QUBES_BORG_FAKE_QUBES.calls.
FAKE_QVM = r"""#!/usr/bin/python3
import json, os, sys
world = json.load(open(os.environ["QUBES_BORG_FAKE_QUBES"]))
tool = os.path.basename(sys.argv[0])
with open(os.environ["QUBES_BORG_FAKE_QUBES"] + ".calls", "a") as log:
    log.write(json.dumps([tool] + sys.argv[1:]) + "\n")
args = sys.argv[1:]
if tool == "qvm-check":
    assert args[0] == "--quiet" and len(args) == 2, args
    sys.exit(0 if args[1] in world else 1)
assert tool == "qvm-tags" and len(args) == 3 and args[1] == "list", args
if args[0] not in world:
    sys.stderr.write("qvm-tags: error: no such domain: %r\n" % args[0])
    sys.exit(2)
sys.exit(0 if args[2] in world[args[0]] else 1)
"""


class Minion:
    """A salt-call --local setup that sees the formula as Qubes' dom0 does after installing
    qubes-borg-dom0: file_roots has the installed formula dir, pillar_roots the installed
    pillar dir, and the top files are the installed init.top files (qubesctl top.enable links
    them into the merged top; here they are the top.sls). `qubes`: the qubes that exist in
    this dom0, {name: [tags]} (default: none), seen through the fake qvm-check/qvm-tags."""

    def __init__(self, name, minion_id, grains=None, pillar=None, qubes=None):
        self.dir = os.path.join(Env.work, "salt", name)
        fakebin = os.path.join(self.dir, "bin")
        for tool in ("qvm-check", "qvm-tags"):
            write(os.path.join(fakebin, tool), FAKE_QVM)
            os.chmod(os.path.join(fakebin, tool), 0o755)
        self.world = os.path.join(self.dir, "qubes.json")
        write(self.world, json.dumps(qubes or {}))
        self.env = dict(os.environ, PATH=fakebin + ":" + os.environ["PATH"], QUBES_BORG_FAKE_QUBES=self.world)
        formula = Env.dom0_root + FORMULA_DIR
        top = os.path.join(self.dir, "top")
        ptop = os.path.join(self.dir, "pillar-top")
        write(os.path.join(top, "top.sls"), open(os.path.join(formula, "qubes-borg", "init.top")).read())
        write(os.path.join(ptop, "top.sls"), open(Env.dom0_root + PILLAR_DIR + "/init.top").read())
        roots = [ptop, Env.dom0_root + "/srv/pillar/base"]
        if pillar is not None:
            # The user's edited /srv/pillar/base/qubes-borg/init.sls.
            own = os.path.join(self.dir, "pillar")
            write(os.path.join(own, "qubes-borg", "init.sls"), pillar)
            roots = [ptop, own]
        conf = {
            "id": minion_id,
            "file_client": "local",
            "root_dir": os.path.join(self.dir, "root"),
            "file_roots": {"base": [formula, top]},
            "pillar_roots": {"base": roots},
            "nodegroups": {"dom0": "dom0", "vm": "* and not dom0"},
            "grains": dict({"nodename": minion_id}, **(grains or {})),
            "log_level_logfile": "quiet",
        }
        write(os.path.join(self.dir, "conf", "minion"), json.dumps(conf, indent=1))

    def call(self, *args, check=True):
        p = run([Env.salt_call, "--local", "-c", os.path.join(self.dir, "conf"), "--out=json",
                 "--log-level=quiet"] + list(args), check=False, env=self.env)
        try:
            data = json.loads(p.stdout)["local"] if p.stdout.strip() else None
        except ValueError:
            data = None
        if check and (p.returncode != 0 or data is None or is_render_error(data)):
            raise AssertionError("salt-call %s failed (%d):\n%s\n%s"
                                 % (" ".join(args), p.returncode, p.stdout[-6000:], p.stderr[-3000:]))
        return p.returncode, data, p.stdout + p.stderr

    def qvm_calls(self):
        path = self.world + ".calls"
        return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def is_render_error(data):
    return isinstance(data, list) and any(isinstance(x, str) for x in data)


def state_args(highstate, state_id):
    """{'module': 'qvm', 'fun': 'vm', 'args': {...}} of one state of show_highstate/show_sls."""
    st = highstate[state_id]
    mods = [k for k in st if not k.startswith("__")]
    assert len(mods) == 1, st
    mod = mods[0]
    fun = [x for x in st[mod] if isinstance(x, str)][0]
    args = {}
    for x in st[mod]:
        if isinstance(x, dict):
            args.update(x)
    return {"module": mod, "fun": fun, "args": args, "sls": st.get("__sls__")}


def flat(items):
    """[{'a': 1}, {'b': 2}] -> {'a': 1, 'b': 2} (qvm.vm sub-action lists)."""
    out = {}
    for x in items:
        out.update(x)
    return out


def qube(highstate, state_id):
    s = state_args(highstate, state_id)
    assert (s["module"], s["fun"]) == ("qvm", "vm"), s
    a = s["args"]
    return {
        "name": a["name"],
        "present": flat(a.get("present", [])),
        "prefs": flat(a.get("prefs", [])),
        "features": flat(a.get("features", [])),
        "tags": flat(a.get("tags", [])),
        "require": a.get("require", []),
    }


RENAMED_PILLAR = """\
qubes-borg:
  template:
    name: fedora-backup
    source: fedora-42-minimal
  sys-backup-mnt-dvm:
    name: backup-mnt-dvm
  sys-backup-mnt:
    name: backup-mnt
    label: purple
  sys-backup:
    name: backup-net
    netvm: sys-whonix
  ssh-backup:
    name: backup-vault
"""


# ---------------------------------------------------------------------------------------------


class SourceTarball(unittest.TestCase):
    def test_dist_tarball_holds_the_tracked_files_under_a_versioned_directory(self):
        tracked = set(run(["git", "ls-files"]).stdout.split("\n")) - {""}
        tracked = {f for f in tracked if os.path.lexists(os.path.join(REPO, f))}
        with tarfile.open(Env.tarball) as t:
            names = {m.name for m in t.getmembers() if not m.isdir()}
        prefix = "qubes-borg-%s/" % VERSION
        self.assertTrue(all(n.startswith(prefix) for n in names), sorted(names)[:5])
        self.assertEqual({n[len(prefix):] for n in names}, tracked)

    def test_dist_tarball_is_reproducible(self):
        out = os.path.join(Env.work, "dist-again")
        run(["rpm/make-dist", out])
        again = os.path.join(out, "qubes-borg-%s.tar.gz" % VERSION)
        digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
        self.assertEqual(digest(again), digest(os.path.join(Env.work, "dist.tar.gz")))


class Specs(unittest.TestCase):
    def spec(self, name):
        return open(os.path.join(Env.topdir, "SPECS", name + ".spec")).read()

    def test_specs_take_version_from_the_version_file_with_release_1_dist(self):
        for name in ("qubes-borg", "qubes-borg-dom0"):
            spec = self.spec(name)
            self.assertRegex(spec, r"(?m)^Version:\s+%s$" % re.escape(VERSION))
            self.assertRegex(spec, r"(?m)^Release:\s+1%\{\?dist\}$")
            self.assertRegex(spec, r"(?m)^License:\s+GPL-2\.0-or-later$")
            self.assertNotRegex(spec, r"@[A-Z]+@", name + ": placeholder left")
        for rpm, name in ((Env.vm_rpm, "qubes-borg"), (Env.dom0_rpm, "qubes-borg-dom0")):
            self.assertEqual(rpm_query(rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{LICENSE}"),
                             "%s %s 1 GPL-2.0-or-later" % (name, VERSION))

    def test_vm_spec_compiles_with_cargo_unless_built_with_prebuilt(self):
        spec = os.path.join(Env.topdir, "SPECS", "qubes-borg.spec")
        default = run(["rpmspec", "-P", spec]).stdout
        prebuilt = run(["rpmspec", "-P", "--with", "prebuilt", "--define", "prebuilt_dir /x", spec]).stdout

        # (rpmspec -P leaves out the %build line itself, so look at the whole parsed spec.)
        self.assertIn("\ncargo build --release --locked --offline\n", default)
        self.assertNotIn("-exec install -m 0755 {} target/release/", default)
        self.assertRegex(default, r"(?m)^Source100:\s+https://static\.crates\.io/crates/\S+\.crate$")
        self.assertRegex(default, r"\nbash rpm/unpack-crates vendor \S+qubes-borg-%s\.tar\.gz' .*\.crate'" % re.escape(VERSION))
        self.assertRegex(default, r"(?m)^BuildRequires:\s+cargo")
        self.assertRegex(default, r"(?m)^BuildRequires:\s+rust")
        self.assertNotIn("cargo build", prebuilt)
        self.assertIn("find /x -maxdepth 1 -type f -perm -u+x -exec install -m 0755 {} target/release/", prebuilt)
        self.assertNotRegex(prebuilt, r"(?m)^Source1[0-9]*:")
        self.assertNotIn("bash rpm/unpack-crates", prebuilt)
        for text in (default, prebuilt):
            self.assertIn("make install-vm DESTDIR=", text)
        self.assertIn("make install-dom0 DESTDIR=", run(
            ["rpmspec", "-P", os.path.join(Env.topdir, "SPECS", "qubes-borg-dom0.spec")]).stdout)

    @unittest.skipIf(os.environ.get("QUBES_BORG_TEST_RPM_FROM_SOURCE") == "0",
                     "QUBES_BORG_TEST_RPM_FROM_SOURCE=0: no compile inside rpmbuild")
    def test_vm_package_builds_from_source_with_vendored_crates(self):
        topdir = os.path.join(Env.work, "rpm-from-source")
        vm, _ = build_rpms(topdir, prebuilt=False)
        self.assertEqual(set(rpm_files(vm)), set(rpm_files(Env.vm_rpm)))
        # The programs compiled inside rpmbuild work: the relay carries data through a child.
        payload = os.path.join(Env.work, "payload-from-source")
        extract(vm, payload)
        p = run([payload + "/usr/bin/qubes-relay", "--", "/bin/cat"], input="from source\n")
        self.assertEqual(p.stdout, "from source\n")


class Builderv2(unittest.TestCase):
    def test_crate_lists_match_cargo_lock(self):
        # Spec Source100..., .qubesbuilder files and crates/*.sha256: what rpm/update-crates writes.
        p = run(["rpm/update-crates", "--check"], check=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        lock = open(os.path.join(REPO, "Cargo.lock")).read()
        sums = re.findall(r'name = "([^"]+)"\nversion = "([^"]+)"\nsource = "registry[^"]*"\nchecksum = "([0-9a-f]+)"', lock)
        self.assertGreater(len(sums), 5)
        for name, version, sha in sums:
            self.assertEqual(open(os.path.join(REPO, "crates", "%s-%s.crate.sha256" % (name, version))).read().strip(), sha)

    def test_qubesbuilder_names_the_specs_and_debian_dir(self):
        script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
        q = json.loads(run([Env.salt_python, "-c", script, os.path.join(REPO, ".qubesbuilder")]).stdout)
        self.assertEqual(q["host"]["rpm"]["build"], ["rpm/qubes-borg-dom0.spec"])
        self.assertEqual(q["vm"]["rpm"]["build"], ["rpm/qubes-borg.spec"])
        self.assertEqual(q["vm"]["deb"]["build"], ["debian"])
        for spec in q["host"]["rpm"]["build"] + q["vm"]["rpm"]["build"]:
            self.assertTrue(os.path.isfile(os.path.join(REPO, spec + ".in")), spec)  # builderv2 renders .in
        self.assertIs(q["source"]["create-archive"], True)
        for f in q["source"]["files"]:
            self.assertTrue(f["url"].startswith("https://static.crates.io/crates/"), f)
            self.assertTrue(os.path.isfile(os.path.join(REPO, f["sha256"])), f)


class FileLists(unittest.TestCase):
    def check_matches_install(self, rpm, root):
        packaged = {p: v for p, v in rpm_files(rpm).items() if not doc_or_license(v[3])}
        installed = tree(root)
        pfiles = {p for p, v in packaged.items() if not stat.S_ISDIR(v[0])}
        ifiles = {p for p, m in installed.items() if not stat.S_ISDIR(m)}
        self.assertEqual(sorted(ifiles - pfiles), [], "installed by make but not packaged")
        self.assertEqual(sorted(pfiles - ifiles), [], "packaged but not installed by make")
        for p in sorted(pfiles):
            self.assertEqual(oct(stat.S_IMODE(packaged[p][0])), oct(stat.S_IMODE(installed[p])), p)
            self.assertEqual(stat.S_IFMT(packaged[p][0]), stat.S_IFMT(installed[p]), p)
        return packaged, installed

    def test_vm_rpm_packages_exactly_what_install_vm_installs(self):
        self.check_matches_install(Env.vm_rpm, Env.vm_root)

    def test_dom0_rpm_packages_exactly_what_install_dom0_installs(self):
        self.check_matches_install(Env.dom0_rpm, Env.dom0_root)

    def test_packaged_files_have_the_installed_content(self):
        for root, payload in ((Env.vm_root, Env.vm_x), (Env.dom0_root, Env.dom0_x)):
            for p, mode in tree(root).items():
                if not stat.S_ISREG(mode):
                    continue
                mine, theirs = root + p, payload + p
                data = open(mine, "rb").read()
                if data[:4] == b"\x7fELF":
                    # rpmbuild strips the programs; the build ID shows it is the same build.
                    self.assertEqual(build_id(theirs), build_id(os.path.join(RELEASE, os.path.basename(p))), p)
                    self.assertNotIn(".symtab", run(["readelf", "-S", theirs]).stdout, p + " not stripped")
                else:
                    self.assertEqual(open(theirs, "rb").read(), data, p)

    def test_rpms_own_their_own_directories_and_no_system_directory(self):
        for rpm, root in ((Env.vm_rpm, Env.vm_root), (Env.dom0_rpm, Env.dom0_root)):
            files = rpm_files(rpm)
            owned = {p for p, v in files.items() if stat.S_ISDIR(v[0]) and not p.startswith("/usr/share/")}
            ours = {p for p, m in tree(root).items() if stat.S_ISDIR(m) and "qubes-borg" in p}
            self.assertEqual(owned, ours, rpm)


class Metadata(unittest.TestCase):
    def test_dom0_policy_files_are_noreplace_config_0664_root_qubes(self):
        files = rpm_files(Env.dom0_rpm)
        for name in ("70-qubes-borg.policy", "80-qubes-borg.policy"):
            mode, user, group, flags = files["/etc/qubes/policy.d/" + name]
            self.assertEqual((oct(stat.S_IMODE(mode)), user, group), ("0o664", "root", "qubes"), name)
            self.assertEqual(sorted(flags), ["c", "n"], name)

    def test_dom0_user_settings_are_noreplace_config_and_formula_files_are_not(self):
        files = rpm_files(Env.dom0_rpm)
        for p in (PILLAR_DIR + "/init.sls", "/etc/salt/minion.d/formula-qubes-borg.conf"):
            self.assertEqual(sorted(files[p][3]), ["c", "n"], p)
        for p, v in files.items():
            if p.startswith(FORMULA_DIR + "/") or p == PILLAR_DIR + "/init.top":
                self.assertEqual(v[3], "", p)
        for p in (FORMULA_DIR, PILLAR_DIR):
            self.assertEqual(oct(stat.S_IMODE(files[p][0])), "0o750", p)

    def test_dom0_scriptlets_only_enable_the_pillar_top_and_never_apply_states(self):
        scripts = rpm_query(Env.dom0_rpm, "--scripts")
        post = scripts.split("postinstall scriptlet")[1].split("scriptlet")[0]
        self.assertIn("qubesctl top.enable qubes-borg pillar=true", post)
        self.assertNotRegex(scripts, r"state\.(apply|sls|highstate)|qvm-|dnf|qubes-dom0-update")
        preun = scripts.split("preuninstall scriptlet")[1]
        self.assertIn('if [ "$1" -eq 0 ]', preun)
        self.assertIn("top.disable", preun)

    def test_vm_scriptlets_preset_and_disable_the_agent_unit(self):
        scripts = rpm_query(Env.vm_rpm, "--scripts")
        self.assertRegex(scripts, r"postinstall scriptlet.*\n.*systemctl --no-reload preset qubes-borg-agent@\.service")
        self.assertRegex(scripts, r"preuninstall scriptlet.*\n.*disable --now qubes-borg-agent@\.service")

    def test_packages_require_what_the_qubes_run(self):
        vm = set(rpm_query(Env.vm_rpm, "--requires").split("\n"))
        for dep in ("borgbackup", "openssh-clients", "qubes-core-qrexec-vm", "qubes-core-agent"):
            self.assertIn(dep, vm)
        self.assertNotIn("qubes-core-agent-qrexec", vm, "the legacy provide, not the package")
        dom0 = set(rpm_query(Env.dom0_rpm, "--requires").split("\n"))
        for dep in ("qubes-mgmt-salt", "qubes-mgmt-salt-dom0-qvm", "qubes-core-qrexec-dom0"):
            self.assertIn(dep, dom0)
        self.assertEqual(rpm_query(Env.dom0_rpm, "--qf", "%{ARCH}"), "x86_64")
        self.assertEqual(rpm_query(Env.vm_rpm, "--qf", "%{ARCH}"), "x86_64")


class DebianPackage(unittest.TestCase):
    """The .deb of debian/ (make deb), built here with the prebuilt programs (build profile
    pkg.qubes-borg.prebuilt) by Debian 12's dpkg-buildpackage and debhelper with -d: the
    Build-Depends cargo/rustc >= 1.80 are Debian 13's, so this machine's cargo is rustup's."""

    def test_deb_payload_is_exactly_what_install_vm_installs(self):
        deb = {p: m for p, m in tree(Env.deb_x).items() if not p.startswith("/usr/share/doc")}
        mine = tree(Env.vm_root)
        files = lambda t: {p for p, m in t.items() if not stat.S_ISDIR(m)}
        self.assertEqual(sorted(files(deb) ^ files(mine)), [], "files in only one of .deb / make install-vm")
        for p in sorted(files(mine)):
            self.assertEqual(oct(deb[p]), oct(mine[p]), p)
            data = open(Env.vm_root + p, "rb").read()
            if data[:4] == b"\x7fELF":
                # dh_strip strips; the build ID shows it is the same build.
                self.assertEqual(build_id(Env.deb_x + p), build_id(os.path.join(RELEASE, os.path.basename(p))), p)
            else:
                self.assertEqual(open(Env.deb_x + p, "rb").read(), data, p)
        self.assertEqual(set(deb) - set(mine) - files(deb), {"/usr/share"} & set(deb),
                         "no directory beyond install-vm's but /usr/share (doc)")

    def test_deb_metadata_and_maintainer_scripts(self):
        f = lambda field: run(["dpkg-deb", "--field", Env.deb, field]).stdout.strip()
        self.assertEqual((f("Package"), f("Version"), f("Architecture")), ("qubes-borg", VERSION + "-1", "amd64"))
        deps = [d.strip().split(" ")[0] for d in f("Depends").split(",")]
        for dep in ("borgbackup", "openssh-client", "qubes-core-qrexec", "qubes-core-agent", "libc6"):
            self.assertIn(dep, deps)
        ctrl = os.path.join(Env.work, "deb-control")
        run(["dpkg-deb", "-e", Env.deb, ctrl])
        post = open(os.path.join(ctrl, "postinst")).read()
        # The systemd preset is applied on first install, as the RPM's %systemd_post does.
        self.assertIn('if [ "$1" = "configure" ] && [ -z "$2" ]; then\n    systemctl --no-reload preset qubes-borg-agent@.service', post)
        self.assertIn("systemctl --no-reload disable --now qubes-borg-agent@.service",
                      open(os.path.join(ctrl, "prerm")).read())
        self.assertNotIn("/usr/share/lintian", run(["dpkg-deb", "-c", Env.deb]).stdout)

    @unittest.skipUnless(os.environ.get("QUBES_BORG_TEST_DEB_FROM_SOURCE") == "1",
                         "QUBES_BORG_TEST_DEB_FROM_SOURCE=1 builds the .deb with cargo (~2-3 min)")
    def test_deb_builds_from_source_with_the_crates_of_cargo_lock(self):
        out = os.path.join(Env.work, "deb-from-source")
        os.makedirs(out)
        shutil.copy(Env.tarball, out)
        deb = run(["debian/build-deb", out], env=dict(os.environ, DPKG_BUILDPACKAGE_FLAGS="-d")).stdout.strip().splitlines()[-1]
        x = os.path.join(Env.work, "deb-from-source-x")
        run(["dpkg-deb", "-x", deb, x])
        self.assertEqual(set(tree(x)), set(tree(Env.deb_x)))
        p = run([x + "/usr/bin/qubes-relay", "--", "/bin/cat"], input="from source\n")
        self.assertEqual(p.stdout, "from source\n")

    def test_deb_source_version_is_the_version_file(self):
        v = run(["dpkg-parsechangelog", "-l", "debian/changelog", "-S", "Version"]).stdout.strip()
        self.assertEqual(v, VERSION + "-1")

    ALLOW = os.path.join(REPO, "tests", "packaging", "lintian-allow")

    def lintian(self):
        p = run(["lintian", "--pedantic", Env.deb], check=False)
        return [l for l in p.stdout.splitlines() if re.match(r"[EWIPX]: ", l)]

    def allow(self):
        return [l for l in open(self.ALLOW).read().splitlines() if l and not l.startswith("#")]

    def test_lintian_reports_nothing_outside_the_allowlist(self):
        findings = self.lintian()
        self.assertEqual([l for l in findings if not any(re.search(a, l) for a in self.allow())], [])
        for a in self.allow():
            self.assertTrue(any(re.search(a, l) for l in findings), "allowlist entry matches nothing: " + a)


# The real dnf and apt-get are replaced by stand-ins that install package files into a private
# rpm database / dpkg admin dir with the real rpm and dpkg, and log their argv; the script under
# test (salt/qubes-borg/files/template-packages, taken from the rendered state) runs for real.
FAKE_DNF = r"""#!/bin/sh
echo "dnf $*" >> "$FAKE_LOG"
for a in "$@"; do
    case "$a" in
        -*|install) ;;
        */*.rpm) rpm -U --justdb --nodeps --noscripts "$a" ;;
        *) rpm -U --justdb --nodeps --noscripts "$FAKE_REPO/$a"-[0-9]*.rpm ;;
    esac
done
"""
FAKE_RPM = """#!/bin/sh
exec /usr/bin/rpm --dbpath "$FAKE_DB" "$@"
"""
FAKE_APT = r"""#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
for a in "$@"; do
    case "$a" in
        -*|install) ;;
        */*.deb) dpkg --admindir="$FAKE_DB" --instdir="$FAKE_ROOT" --force-depends -i "$a" >/dev/null ;;
        *) dpkg --admindir="$FAKE_DB" --instdir="$FAKE_ROOT" --force-depends -i "$FAKE_REPO/$a".deb >/dev/null ;;
    esac
done
"""
FAKE_DPKG_QUERY = """#!/bin/sh
exec /usr/bin/dpkg-query --admindir="$FAKE_DB" "$@"
"""


def tiny_rpm(outdir, name, version):
    top = os.path.join(Env.work, "tiny-rpm")
    spec = os.path.join(top, "%s-%s.spec" % (name, version))
    write(spec, "Name: %s\nVersion: %s\nRelease: 1\nSummary: t\nLicense: none\nBuildArch: x86_64\n"
                "%%description\nt\n%%files\n" % (name, version))
    run(["rpmbuild", "-bb", "--define", "_topdir " + top, "--define", "_rpmdir " + outdir,
         "--define", "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm", spec])
    return os.path.join(outdir, "%s-%s-1.x86_64.rpm" % (name, version))


def tiny_deb(outdir, name, version, filename=None):
    root = os.path.join(Env.work, "tiny-deb", name + version)
    write(os.path.join(root, "DEBIAN", "control"),
          "Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n" % (name, version))
    out = os.path.join(outdir, filename or "%s_%s_all.deb" % (name, version))
    run(["dpkg-deb", "--root-owner-group", "-b", root, out])
    return out


class TemplatePackageScript(unittest.TestCase):
    """qubes-borg.install's script, as rendered for the template, run against real rpm/dpkg
    databases: installs, upgrades from the package directory, and changes nothing the second time."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=Env.work, prefix="tplpkg.")
        self.bin, self.repo, self.pkgdir, self.db = (os.path.join(self.dir, d) for d in ("bin", "repo", "pkgs", "db"))
        for d in (self.bin, self.repo, self.pkgdir, self.db):
            os.makedirs(d)
        self.log = os.path.join(self.dir, "log")

    def tool(self, name, text):
        write(os.path.join(self.bin, name), text)
        os.chmod(os.path.join(self.bin, name), 0o755)

    def script(self, os_family):
        t = Minion("tplpkg-" + os_family, "tpl-qubes-borg", grains={"os_family": os_family, "os": os_family},
                   pillar="qubes-borg:\n  template:\n    fromrepo: borg-local\n")
        _, hs, _ = t.call("state.show_highstate")
        return state_args(hs, "qubes-borg-package")["args"]

    def apply(self, state, extra_env):
        open(self.log, "w").close()
        env = dict(os.environ, PATH=self.bin + ":/usr/sbin:/usr/bin:/sbin:/bin", FAKE_LOG=self.log, FAKE_REPO=self.repo,
                   FAKE_DB=self.db, **state["env"])
        env["QUBES_BORG_PKGDIR"] = self.pkgdir
        env.update(extra_env)
        p = run([state["shell"], "-c", state["name"]], env=env)
        last = shlex.split(p.stdout.strip().splitlines()[-1])  # Salt's stateful line
        kv = dict(x.split("=", 1) for x in last)
        return kv["changed"], kv["comment"], open(self.log).read().splitlines()

    def test_rpm_template_install_upgrade_and_no_change_on_reapply(self):
        state = self.script("RedHat")
        self.tool("dnf", FAKE_DNF)
        self.tool("rpm", FAKE_RPM)
        run(["/usr/bin/rpm", "--dbpath", self.db, "--initdb"])
        tiny_rpm(self.repo, "qubes-borg", "0.1.0")
        tiny_rpm(self.repo, "qubes-core-agent-networking", "4.3.0")
        q = lambda: run([os.path.join(self.bin, "rpm"), "-q", "--qf", "%{VERSION}", "qubes-borg"],
                        env=dict(os.environ, FAKE_DB=self.db)).stdout
        # Empty package directory: the repositories (with the pillar's extra repository).
        changed, _, calls = self.apply(state, {})
        self.assertEqual(changed, "yes")
        self.assertEqual(calls, ["dnf install -y --enablerepo=borg-local qubes-borg",
                                 "dnf install -y --enablerepo=borg-local qubes-core-agent-networking"])
        self.assertEqual(q(), "0.1.0")
        self.assertEqual(self.apply(state, {})[::2], ("no", []), "second apply: nothing to do")
        # A package copied into the directory: that exact file, an upgrade.
        shutil.copy(Env.vm_rpm, self.pkgdir)
        changed, comment, calls = self.apply(state, {})
        self.assertEqual((changed, calls), ("yes", ["dnf install -y --enablerepo=borg-local %s/%s"
                                                    % (self.pkgdir, os.path.basename(Env.vm_rpm))]))
        self.assertIn("qubes-borg 0.1.0-1 -> %s-1" % VERSION, comment)
        self.assertEqual(q(), VERSION)
        self.assertEqual(self.apply(state, {})[::2], ("no", []))
        # Newer next to older: the newest by version (0.10.0 > 0.9.0 > VERSION), no pillar edit.
        tiny_rpm(self.pkgdir, "qubes-borg", "0.9.0")
        tiny_rpm(self.pkgdir, "qubes-borg", "0.10.0")
        changed, _, calls = self.apply(state, {})
        self.assertEqual(calls, ["dnf install -y --enablerepo=borg-local %s/qubes-borg-0.10.0-1.x86_64.rpm" % self.pkgdir])
        self.assertEqual(q(), "0.10.0")
        self.assertEqual(self.apply(state, {})[::2], ("no", []))

    def test_deb_template_install_upgrade_and_no_change_on_reapply(self):
        state = self.script("Debian")
        self.tool("apt-get", FAKE_APT)
        self.tool("dpkg-query", FAKE_DPKG_QUERY)
        root = os.path.join(self.dir, "root")
        os.makedirs(os.path.join(self.db, "updates"))
        os.makedirs(os.path.join(self.db, "info"))
        open(os.path.join(self.db, "status"), "w").close()
        os.makedirs(root)
        tiny_deb(self.repo, "qubes-borg", "0.1.0", "qubes-borg.deb")
        tiny_deb(self.repo, "qubes-core-agent-networking", "4.3.0", "qubes-core-agent-networking.deb")
        # No dnf on this PATH: the script picks apt.
        self.assertFalse(os.path.exists(os.path.join(self.bin, "dnf")))
        changed, _, calls = self.apply(state, {"FAKE_ROOT": root})
        self.assertEqual(changed, "yes")
        self.assertEqual(calls, ["apt-get install -y qubes-borg", "apt-get install -y qubes-core-agent-networking"])
        self.assertEqual(self.apply(state, {"FAKE_ROOT": root})[::2], ("no", []))
        # (Packages without maintainer scripts: dpkg cannot run scripts in a root it is not in.)
        tiny_deb(self.pkgdir, "qubes-borg", "0.9.0-1")
        new = tiny_deb(self.pkgdir, "qubes-borg", "0.10.0-1")
        changed, comment, calls = self.apply(state, {"FAKE_ROOT": root})
        self.assertEqual((changed, calls), ("yes", ["apt-get install -y %s" % new]))
        self.assertIn("qubes-borg 0.1.0 -> 0.10.0-1", comment)
        self.assertEqual(self.apply(state, {"FAKE_ROOT": root})[::2], ("no", []))


class Rpmlint(unittest.TestCase):
    CONFIG = os.path.join(REPO, "tests", "packaging", "rpmlint.toml")

    def lint(self, *config):
        specs = [os.path.join(Env.topdir, "SPECS", n + ".spec") for n in ("qubes-borg", "qubes-borg-dom0")]
        p = run(["rpmlint"] + list(config) + specs + [Env.vm_rpm, Env.dom0_rpm], check=False)
        findings = [l for l in p.stdout.splitlines() if re.search(r": [EW]: ", l)]
        return p, findings

    def test_rpmlint_reports_nothing_outside_the_allowlist(self):
        p, findings = self.lint("-c", self.CONFIG)
        self.assertEqual(findings, [])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("2 packages and 2 specfiles checked; 0 errors, 0 warnings", p.stdout)

    def test_rpmlint_allowlist_has_no_stale_entry(self):
        _, findings = self.lint()
        src = open(self.CONFIG).read()
        filters = re.findall(r"^\s+'(.*)',$", src, re.M)
        self.assertGreater(len(filters), 5)
        for f in filters:
            self.assertTrue(any(re.search(f, l) for l in findings), "allowlist entry matches nothing: " + f)


class SaltFormula(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dom0 = Minion("dom0", "dom0")

    def test_formula_layout_is_what_FORMULA_says(self):
        script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
        f = json.loads(run([Env.salt_python, "-c", script, os.path.join(REPO, "salt", "FORMULA")]).stdout)
        self.assertEqual(f["formula_dir"], FORMULA_DIR)
        self.assertEqual(f["pillar_dir"], PILLAR_DIR)
        base = Env.dom0_root + f["formula_dir"] + "/" + f["top_level_dir"]
        self.assertTrue(os.path.isfile(base + "/init.sls"))
        self.assertTrue(os.path.isfile(base + "/init.top"))
        for top in f["pillar-tops"]["base"]["enable"]:
            self.assertTrue(os.path.isfile(Env.dom0_root + f["pillar_dir"] + "/init.top"), top)
        self.assertTrue(os.path.isfile(Env.dom0_root + f["minion-conf"]))
        self.assertEqual(f["package-name"], "qubes-borg-dom0")

    def test_minion_dropin_adds_the_formula_to_qubes_file_roots(self):
        conf = os.path.join(Env.work, "salt", "minion-conf")
        write(os.path.join(conf, "minion"), "# main config: the drop-ins do the work\n")
        write(os.path.join(conf, "minion.d", "f_defaults.conf"), QUBES_F_DEFAULTS)
        shutil.copy(Env.dom0_root + "/etc/salt/minion.d/formula-qubes-borg.conf", os.path.join(conf, "minion.d"))
        script = ("import json, sys, salt.config; o = salt.config.minion_config(sys.argv[1]); "
                  "print(json.dumps(o['file_roots']))")
        roots = json.loads(run([Env.salt_python, "-c", script, os.path.join(conf, "minion")]).stdout)
        self.assertEqual(sorted(roots["base"]), sorted(["/srv/salt", FORMULA_DIR]))
        self.assertEqual(roots["user"], ["/srv/user_salt"])

    def test_every_sls_and_top_file_renders(self):
        formula = Env.dom0_root + FORMULA_DIR + "/qubes-borg"
        tpl = Minion("tpl-render", "tpl-qubes-borg", grains={"os_family": "RedHat", "os": "Fedora"})
        names = sorted(os.listdir(formula))
        sls = [n[:-4] for n in names if n.endswith(".sls")]
        tops = [n for n in names if n.endswith(".top")]
        self.assertEqual(sorted(sls), ["clone", "config", "create", "destination", "init", "install", "policy",
                                       "refuse"])
        sb = Minion("sb-render", "sys-backup", grains={"os_family": "RedHat", "os": "Fedora"},
                    pillar="qubes-borg:\n  server:\n    host: h.example\n    user: u\n"
                           "    host_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl']\n")
        # refuse.sls is only included by the others (when a qube is foreign); no top of its own.
        self.assertEqual(sorted(tops), [s + ".top" for s in sorted(sls) if s != "refuse"], "every .sls has a .top")
        for s in sls:
            minion = tpl if s == "install" else sb if s == "destination" else self.dom0
            state = "qubes-borg" if s == "init" else "qubes-borg." + s
            _, data, _ = minion.call("state.show_sls", state)
            self.assertIsInstance(data, dict, s)
            self.assertTrue(data, s + " renders to no state")
        for t in tops:
            _, data, _ = self.dom0.call("slsutil.renderer", "salt://qubes-borg/" + t)
            self.assertEqual(list(data), ["base"], t)
            state = "qubes-borg" if t == "init.top" else "qubes-borg." + t[:-4]
            self.assertIn(state, [x for v in data["base"].values() for x in v if isinstance(x, str)], t)
        pillar = Env.dom0_root + PILLAR_DIR
        for f in ("init.sls", "init.top"):
            _, data, _ = self.dom0.call("slsutil.renderer", os.path.join(pillar, f))
            self.assertIsInstance(data, dict, f)
        _, data, _ = self.dom0.call("pillar.items")
        self.assertEqual(data["qubes-borg"], {}, "the shipped pillar sets nothing: map.jinja has the defaults")

    def test_dom0_highstate_creates_the_qubes_with_the_right_prefs(self):
        _, top, _ = self.dom0.call("state.show_top")
        self.assertEqual(top, {"base": ["qubes-borg"]})
        _, hs, _ = self.dom0.call("state.show_highstate")

        src = state_args(hs, "qubes-borg-template-source")
        self.assertEqual((src["fun"], src["args"]["name"]), ("template_installed", "fedora-43-minimal"))
        clone = state_args(hs, "qubes-borg-template-clone")
        self.assertEqual((clone["fun"], clone["args"]["name"], clone["args"]["source"]),
                         ("clone", "tpl-qubes-borg", "fedora-43-minimal"))
        tpl = qube(hs, "qubes-borg-template")
        self.assertEqual((tpl["name"], tpl["tags"]["add"]), ("tpl-qubes-borg", ["qubes-borg"]))
        self.assertIn({"qvm": "qubes-borg-template-clone"}, tpl["require"])
        self.assertFalse([x for x in hs if x.startswith("qubes-borg-refuse-")])

        dvm = qube(hs, "qubes-borg-sys-backup-mnt-dvm")
        self.assertEqual(dvm["name"], "sys-backup-mnt-dvm")
        self.assertEqual(dvm["prefs"]["template"], "tpl-qubes-borg")
        self.assertIs(dvm["prefs"]["template_for_dispvms"], True)
        self.assertEqual(dvm["prefs"]["netvm"], "")
        self.assertNotIn("class", dvm["present"])

        mnt = qube(hs, "qubes-borg-sys-backup-mnt")
        self.assertEqual(mnt["name"], "sys-backup-mnt")
        self.assertEqual(mnt["present"]["class"], "DispVM")
        self.assertEqual(mnt["present"]["template"], "sys-backup-mnt-dvm")
        self.assertEqual(mnt["prefs"]["template"], "sys-backup-mnt-dvm")
        self.assertEqual(mnt["prefs"]["netvm"], "")
        self.assertIn({"qvm": "qubes-borg-sys-backup-mnt-dvm"}, mnt["require"])

        net = qube(hs, "qubes-borg-sys-backup")
        self.assertEqual(net["name"], "sys-backup")
        self.assertEqual(net["prefs"]["netvm"], "*default*")
        self.assertEqual(net["prefs"]["template"], "tpl-qubes-borg")
        self.assertNotIn("class", net["present"])

        vault = qube(hs, "qubes-borg-ssh-backup")
        self.assertEqual(vault["name"], "ssh-backup")
        self.assertEqual(vault["prefs"]["netvm"], "")
        self.assertEqual(vault["prefs"]["label"], "black")
        self.assertEqual(vault["features"]["enable"], ["service.qubes-borg-agent"])

        for sid in ("qubes-borg-sys-backup-mnt-dvm", "qubes-borg-sys-backup", "qubes-borg-ssh-backup"):
            self.assertIn({"qvm": "qubes-borg-template"}, qube(hs, sid)["require"], sid)
            self.assertEqual(qube(hs, sid)["tags"]["add"], ["qubes-borg"], sid)
        # Nothing runs in dom0 that the template should do.
        self.assertFalse([s for s in hs if state_args(hs, s)["module"] == "pkg"])

    def test_policy_state_writes_the_packaged_policy_unchanged_for_default_names(self):
        _, hs, _ = self.dom0.call("state.show_sls", "qubes-borg.policy")
        pol = state_args(hs, "qubes-borg-policy")
        self.assertEqual((pol["module"], pol["fun"]), ("file", "managed"))
        a = pol["args"]
        self.assertEqual((a["name"], a["user"], a["group"], a["mode"]),
                         ("/etc/qubes/policy.d/70-qubes-borg.policy", "root", "qubes", "0664"))
        self.assertEqual(a["contents"], open(POLICY).read())

    def package_state(self, minion):
        _, hs, _ = minion.call("state.show_highstate")
        st = state_args(hs, "qubes-borg-package")
        self.assertEqual((st["module"], st["fun"]), ("cmd", "run"))
        return hs, st["args"]

    def test_template_top_installs_the_vm_package_in_the_template(self):
        tpl = Minion("tpl", "tpl-qubes-borg", grains={"os_family": "RedHat", "os": "Fedora"})
        _, top, _ = tpl.call("state.show_top")
        self.assertEqual(top, {"base": ["qubes-borg.install"]})
        hs, a = self.package_state(tpl)
        # The shipped script, run by bash, reporting its own changes (stateful), no file name.
        script = open(os.path.join(REPO, "salt", "qubes-borg", "files", "template-packages")).read()
        self.assertEqual(a["name"], script.rstrip("\n"))  # Jinja's import_text drops the last newline
        self.assertEqual((a["shell"], a["stateful"]), ("/bin/bash", True))
        self.assertEqual(a["env"], {"QUBES_BORG_PKGDIR": "/var/lib/qubes-borg/packages",
                                    "QUBES_BORG_PACKAGES": "qubes-core-agent-networking",
                                    "QUBES_BORG_ENABLEREPO": ""})
        d = state_args(hs, "qubes-borg-package-dir")
        self.assertEqual((d["fun"], d["args"]["name"], d["args"]["mode"]),
                         ("directory", "/var/lib/qubes-borg/packages", "0755"))
        self.assertFalse([s for s in hs if state_args(hs, s)["module"] in ("qvm", "pkg")],
                         "no qvm.* in a template, no Salt pkg module")
        # Another qube gets nothing from this formula.
        other = Minion("other", "work", grains={"os_family": "RedHat", "os": "Fedora"})
        _, top, _ = other.call("state.show_top")
        self.assertEqual(top, {})

    def test_install_state_does_nothing_in_dom0(self):
        _, data, _ = self.dom0.call("state.show_sls", "qubes-borg.install")
        self.assertEqual(data, {})

    def test_template_package_repository_and_extra_packages_from_the_pillar(self):
        t = Minion("tpl-repo", "tpl-qubes-borg", grains={"os_family": "RedHat", "os": "Fedora"},
                   pillar="qubes-borg:\n  template:\n    fromrepo: qubes-borg-local\n"
                          "    packages: [qubes-core-agent-networking, vim-minimal]\n")
        _, a = self.package_state(t)
        self.assertEqual(a["env"]["QUBES_BORG_ENABLEREPO"], "qubes-borg-local")
        self.assertEqual(a["env"]["QUBES_BORG_PACKAGES"], "qubes-core-agent-networking vim-minimal")

    def test_debian_template_gets_the_same_package_state(self):
        t = Minion("tpl-debian", "tpl-qubes-borg", grains={"os_family": "Debian", "os": "Debian"})
        _, a = self.package_state(t)
        self.assertEqual(a["name"], open(os.path.join(REPO, "salt", "qubes-borg", "files", "template-packages")).read().rstrip("\n"))

    def test_other_distributions_fail_with_a_message(self):
        t = Minion("tpl-arch", "tpl-qubes-borg", grains={"os_family": "Arch", "os": "Arch"})
        _, hs, _ = t.call("state.show_highstate")
        self.assertEqual(list(hs), ["qubes-borg-template-unsupported"])
        s = state_args(hs, "qubes-borg-template-unsupported")
        self.assertEqual((s["module"], s["fun"]), ("test", "fail_without_changes"))
        self.assertIn("Fedora (RPM) and Debian (.deb) only", s["args"]["name"])

    # --- who owns the qubes (owner.jinja, refuse.sls)

    def test_existing_qube_the_formula_did_not_create_is_refused(self):
        # An AppVM sys-backup and a StandaloneVM ssh-backup of the user's, no qubes-borg tag.
        m = Minion("foreign", "dom0", qubes={"sys-backup": ["audit"], "ssh-backup": [],
                                              "fedora-43-minimal": []})
        _, hs, _ = m.call("state.show_highstate")
        self.assertEqual(sorted(hs), ["qubes-borg-refuse-ssh-backup", "qubes-borg-refuse-sys-backup"],
                         "nothing but the refusals: no clone, no qube, no policy")
        for role in ("sys-backup", "ssh-backup"):
            st = state_args(hs, "qubes-borg-refuse-" + role)
            self.assertEqual((st["module"], st["fun"]), ("test", "fail_without_changes"))
            msg = st["args"]["name"]
            self.assertIn("a qube named %s already exists and was not created by this formula" % role, msg)
            self.assertIn("no qubes-borg tag", msg)
            self.assertIn("nothing was changed", msg)
            self.assertIn("/srv/pillar/base/qubes-borg/init.sls (qubes-borg: %s:name: NEW-NAME)" % role, msg)
        # Each part alone refuses too (the policy would otherwise grant a foreign qube the services).
        for sls in ("qubes-borg.clone", "qubes-borg.create", "qubes-borg.policy"):
            _, data, _ = m.call("state.show_sls", sls)
            self.assertEqual(sorted(data), ["qubes-borg-refuse-ssh-backup", "qubes-borg-refuse-sys-backup"], sls)
        # The checks are read-only and name only the formula's qubes.
        calls = m.qvm_calls()
        self.assertTrue(calls)
        for c in calls:
            self.assertIn(c[0], ("qvm-check", "qvm-tags"))
            self.assertIn(c[-1] if c[0] == "qvm-check" else c[1],
                          ("tpl-qubes-borg", "sys-backup-mnt-dvm", "sys-backup-mnt", "sys-backup", "ssh-backup"))
        # A renamed role is no longer in the way.
        m = Minion("foreign-renamed", "dom0", qubes={"sys-backup": [], "ssh-backup": []},
                   pillar="qubes-borg:\n  sys-backup:\n    name: borg-net\n  ssh-backup:\n    name: borg-vault\n")
        _, hs, _ = m.call("state.show_highstate")
        self.assertFalse([x for x in hs if x.startswith("qubes-borg-refuse-") and x != "qubes-borg-refuse-nothing"])
        self.assertEqual(qube(hs, "qubes-borg-sys-backup")["name"], "borg-net")

    def test_foreign_template_of_the_dedicated_name_is_refused(self):
        m = Minion("foreign-tpl", "dom0", qubes={"tpl-qubes-borg": []})
        _, hs, _ = m.call("state.show_highstate")
        self.assertEqual(list(hs), ["qubes-borg-refuse-template"])
        self.assertIn("(qubes-borg: template:name: NEW-NAME)", state_args(hs, "qubes-borg-refuse-template")["args"]["name"])

    def test_own_qubes_are_adopted_and_the_source_template_is_not_reinstalled(self):
        # Everything made by an earlier run (tagged); the source template was deleted since.
        own = {n: ["qubes-borg"] for n in ("tpl-qubes-borg", "sys-backup-mnt-dvm", "sys-backup-mnt",
                                          "sys-backup", "ssh-backup")}
        m = Minion("own", "dom0", qubes=own)
        _, hs, _ = m.call("state.show_highstate")
        self.assertNotIn("qubes-borg-template-source", hs, "no qvm.template_installed of a deleted source")
        self.assertNotIn("qubes-borg-template-clone", hs)
        self.assertEqual(qube(hs, "qubes-borg-template")["require"], [])
        for sid in ("qubes-borg-sys-backup-mnt-dvm", "qubes-borg-sys-backup-mnt", "qubes-borg-sys-backup",
                    "qubes-borg-ssh-backup"):
            q = qube(hs, sid)
            self.assertEqual(q["tags"]["add"], ["qubes-borg"], sid)
            self.assertIn("netvm", q["prefs"], sid + ": prefs are enforced on its own qubes")
        self.assertEqual(state_args(hs, "qubes-borg-policy")["args"]["contents"], open(POLICY).read())
        self.assertFalse([x for x in hs if x.startswith("qubes-borg-refuse-") and x != "qubes-borg-refuse-nothing"])

    def test_default_source_template_follows_the_qubes_release(self):
        for osrelease, source in (("4.2", "fedora-42-minimal"), ("4.2.4", "fedora-42-minimal"),
                                  ("4.3", "fedora-43-minimal"), ("4.3.1", "fedora-43-minimal")):
            m = Minion("release-" + osrelease, "dom0", grains={"osrelease": osrelease})
            _, data, _ = m.call("state.show_sls", "qubes-borg.clone")
            self.assertEqual(state_args(data, "qubes-borg-template-source")["args"]["name"], source, osrelease)
            self.assertEqual(state_args(data, "qubes-borg-template-clone")["args"]["source"], source, osrelease)

    def test_debian_source_template_from_the_pillar(self):
        m = Minion("debian-source", "dom0", pillar="qubes-borg:\n  template:\n    source: debian-13-minimal\n")
        _, hs, _ = m.call("state.show_highstate")
        self.assertEqual(state_args(hs, "qubes-borg-template-source")["args"]["name"], "debian-13-minimal")
        self.assertEqual(state_args(hs, "qubes-borg-template-clone")["args"]["source"], "debian-13-minimal")
        self.assertEqual(qube(hs, "qubes-borg-sys-backup")["prefs"]["template"], "tpl-qubes-borg")

    def test_pillar_renames_the_qubes_the_template_and_the_policy(self):
        d = Minion("renamed-dom0", "dom0", pillar=RENAMED_PILLAR)
        _, hs, _ = d.call("state.show_highstate")
        self.assertEqual(state_args(hs, "qubes-borg-template-clone")["args"]["source"], "fedora-42-minimal")
        mnt = qube(hs, "qubes-borg-sys-backup-mnt")
        self.assertEqual((mnt["name"], mnt["present"]["template"], mnt["present"]["class"], mnt["prefs"]["label"]),
                         ("backup-mnt", "backup-mnt-dvm", "DispVM", "purple"))
        self.assertEqual(qube(hs, "qubes-borg-sys-backup-mnt-dvm")["prefs"]["template"], "fedora-backup")
        self.assertEqual(qube(hs, "qubes-borg-sys-backup")["prefs"]["netvm"], "sys-whonix")
        self.assertEqual(qube(hs, "qubes-borg-ssh-backup")["name"], "backup-vault")
        policy = state_args(hs, "qubes-borg-policy")["args"]["contents"]
        rules = [l.split() for l in policy.splitlines() if l.strip() and not l.startswith("#")]
        self.assertEqual(rules, [
            ["qubes-borg.Ssh", "*", "backup-mnt", "@default", "allow", "target=backup-net"],
            ["qubes-borg.Ssh", "*", "backup-mnt", "backup-net", "allow"],
            ["qubes-borg.SshAgent", "+default", "backup-net", "@default", "allow", "target=backup-vault"],
            ["qubes-borg.SshAgent", "+default", "backup-net", "backup-vault", "allow"],
            ["qubes-borg.SshAgent", "+admin", "backup-net", "@default", "ask",
             "target=backup-vault", "default_target=backup-vault"],
            ["qubes-borg.SshAgent", "+admin", "backup-net", "backup-vault", "ask",
             "target=backup-vault", "default_target=backup-vault"],
        ])
        # Comments are carried over unchanged.
        comments = lambda text: [l for l in text.splitlines() if l.startswith("#")]
        self.assertEqual(comments(policy), comments(open(POLICY).read()))
        # The renamed template's top gives it the package.
        t = Minion("renamed-tpl", "fedora-backup", grains={"os_family": "RedHat", "os": "Fedora"},
                   pillar=RENAMED_PILLAR)
        _, top, _ = t.call("state.show_top")
        self.assertEqual(top, {"base": ["qubes-borg.install"]})
        self.check_policy_in_simulated_qrexec(policy)

    SERVER_PILLAR = """\
qubes-borg:
  server:
    destination: borgbase
    host: xyz123.repo.borgbase.com
    user: xyz123
    port: 2222
    host_keys:
      - ssh-ed25519 %s
    agent: ""
    path: ./repo
  backup:
    timer: true
    options:
      keep_daily: 7
      qubes: [work, vault]
      default_excludes: false
"""

    def test_pillar_server_writes_the_destination_in_sys_backup_and_backup_conf_in_dom0(self):
        key = base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(range(32))).decode()
        pillar = self.SERVER_PILLAR % key
        d = Minion("server-dom0", "dom0", pillar=pillar)
        _, hs, _ = d.call("state.show_highstate")
        conf = state_args(hs, "qubes-borg-backup-conf")["args"]
        self.assertEqual((conf["name"], conf["mode"], conf["user"]), ("/etc/qubes-borg/backup.conf", "0600", "root"))
        body = [l for l in conf["contents"].splitlines() if not l.startswith("#")]
        self.assertEqual(body, ["repository = ssh://borgbase/./repo", "default_excludes = no",
                                "keep_daily = 7", "qubes = work", "qubes = vault"])
        timer = state_args(hs, "qubes-borg-timer")
        self.assertEqual((timer["module"], timer["fun"], timer["args"]["name"], timer["args"]["enable"]),
                         ("service", "running", "qvm-backup-borg.timer", True))
        # sys-backup gets the destination (its top), written to the bind-dirs copy of /etc/qubes-borg.
        sb = Minion("server-sys-backup", "sys-backup", grains={"os_family": "RedHat", "os": "Fedora"}, pillar=pillar)
        _, top, _ = sb.call("state.show_top")
        self.assertEqual(top, {"base": ["qubes-borg.destination"]})
        _, hs, _ = sb.call("state.show_highstate")
        dest = state_args(hs, "qubes-borg-destination")["args"]
        self.assertEqual((dest["name"], dest["mode"], dest["user"]),
                         ("/rw/bind-dirs/etc/qubes-borg/destinations/borgbase.conf", "0644", "root"))
        self.assertEqual([l for l in dest["contents"].splitlines() if not l.startswith("#")],
                         ["host = xyz123.repo.borgbase.com", "user = xyz123", "port = 2222",
                          "host-key = ssh-ed25519 " + key])
        # The real qubes-ssh-service accepts the file and runs ssh to that server. Its paths are
        # fixed (/etc/qubes-borg/destinations, /usr/bin/ssh): the test shows its files there in a
        # private mount namespace (tests/it/support/overlay-ns).
        ov = os.path.join(Env.work, "dest-ov")
        write(os.path.join(ov, "etc", "qubes-borg", "destinations", "borgbase.conf"), dest["contents"])
        argv_file = os.path.join(Env.work, "dest-ssh-argv")
        ssh = os.path.join(ov, "usr-bin", "ssh")
        write(ssh, "#!/bin/sh\nprintf '%%s\\n' \"$@\" > %s\n" % argv_file)
        os.chmod(ssh, 0o755)
        env = dict(os.environ, QREXEC_REMOTE_DOMAIN="sys-backup-mnt")
        p = run([os.path.join(REPO, "tests", "it", "support", "overlay-ns"),
                 os.path.join(ov, "etc") + "=/etc", os.path.join(ov, "usr-bin") + "=/usr/bin", "--",
                 os.path.join(RELEASE, "qubes-ssh-service"), "borgbase"], check=False, env=env,
                input="qubes-ssh/1 borgbase borg serve\n")
        # The status line follows the service's mark line (docs/PROTOCOL.md).
        self.assertTrue(p.stdout.startswith("\nqubes-ssh/1\nOK\n"), p.stdout + p.stderr)
        argv = open(argv_file).read().split("\n")
        self.assertIn("xyz123.repo.borgbase.com", argv)
        self.assertEqual(argv[argv.index("-p") + 1], "2222")
        # No server: nothing written anywhere, and sys-backup gets no top.
        _, hs, _ = self.dom0.call("state.show_sls", "qubes-borg.config")
        self.assertEqual(list(hs), ["qubes-borg-config-none"])
        _, top, _ = Minion("no-server-sb", "sys-backup", grains={"os_family": "RedHat", "os": "Fedora"}).call("state.show_top")
        self.assertEqual(top, {})

    def test_pillar_server_values_cannot_add_lines_or_keys(self):
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        base = "qubes-borg:\n  server:\n    host: h.example\n    user: u\n    host_keys: ['%s']\n" % key
        cases = {
            "host newline": (base.replace("h.example", '"h.example\\nagent = x"'), "server: host"),
            "user": (base.replace("user: u", "user: 'u x'"), "server: user"),
            "no keys": (base.replace("['%s']" % key, "[]"), "server: host_keys must list"),
            "key newline": (base.replace("'%s'" % key, '"%s\\nidentity-file = /x"' % key), "host_keys: not"),
            "destination": (base + "    destination: ../x\n", "server: destination"),
            "option key": (base + "  backup:\n    options:\n      repository: ssh://x/y\n", "options: unknown key"),
            "option newline": (base + "  backup:\n    options:\n      keep_daily: \"7\\nqubes = dom0\"\n",
                               "not a one-line value"),
        }
        for what, (pillar, message) in cases.items():
            m = Minion("bad-server-" + what.replace(" ", "-"), "dom0", pillar=pillar)
            rc, _, out = m.call("state.show_sls", "qubes-borg.config", check=False)
            self.assertNotEqual(rc, 0, what)
            self.assertIn(message, out, what)

    def check_policy_in_simulated_qrexec(self, policy):
        """The rendered policy, with the packaged default deny, in the project's qrexec stand-in
        (tests/sim, flat mode): the renamed qubes reach each other, the default names do not."""
        base = os.path.join(Env.work, "sim")
        pol = os.path.join(base, "policy")
        write(os.path.join(pol, "70-qubes-borg.policy"), policy)
        shutil.copy(os.path.join(REPO, "policy", "80-qubes-borg.policy"), pol)
        # A split-SSH user's own rules (Qubes' split-SSH guide: qubes.SshAgent from work to vault).
        write(os.path.join(pol, "50-config-splitssh.policy"),
              "qubes.SshAgent  *  work  @default  allow target=vault\n"
              "qubes.SshAgent  *  work  vault  allow\n")
        qubes = os.path.join(base, "qubes")
        echo = os.path.join(base, "echo-service")
        write(echo, "#!/bin/sh\nexec cat\n")  # the argument (argv[1]) is not a file to cat
        os.chmod(echo, 0o755)
        for q in ("backup-mnt", "backup-net", "backup-vault", "sys-backup-mnt", "sys-backup", "ssh-backup",
                  "work", "vault"):
            os.makedirs(os.path.join(qubes, q, "etc", "qubes-rpc"))
            for svc in ("qubes-borg.Ssh", "qubes-borg.SshAgent", "qubes.SshAgent"):
                os.symlink(echo, os.path.join(qubes, q, "etc", "qubes-rpc", svc))

        def call(source, service):
            env = dict(os.environ, QREXEC_SIM_QUBES=qubes, QREXEC_SIM_SOURCE=source, QREXEC_SIM_POLICY_DIR=pol)
            p = run([os.path.join(REPO, "tests", "sim", "qrexec-client-vm"), "@default", service],
                    check=False, env=env, input="ping\n")
            return p.returncode, p.stdout

        self.assertEqual(call("backup-mnt", "qubes-borg.Ssh+borgbase"), (0, "ping\n"))
        self.assertEqual(call("backup-net", "qubes-borg.SshAgent+default"), (0, "ping\n"))
        self.assertEqual(call("sys-backup-mnt", "qubes-borg.Ssh+borgbase")[0], 126)
        self.assertEqual(call("sys-backup", "qubes-borg.SshAgent+default")[0], 126)
        self.assertEqual(call("backup-mnt", "qubes-borg.SshAgent+default")[0], 126)
        # The admin key set asks in dom0; the stand-in has no user to ask and refuses.
        self.assertEqual(call("backup-net", "qubes-borg.SshAgent+admin")[0], 126)
        # The user's split-SSH keeps working, and gives no way into the backup services.
        self.assertEqual(call("work", "qubes.SshAgent"), (0, "ping\n"))
        self.assertEqual(call("work", "qubes-borg.SshAgent+default")[0], 126)
        self.assertEqual(call("backup-net", "qubes.SshAgent")[0], 126)

    def test_invalid_pillar_stops_the_render_with_a_message(self):
        cases = {
            "space": ("sys-backup:\n    name: bad name", "sys-backup: invalid qube name"),
            "newline": ('sys-backup:\n    name: "bad\\n"', "sys-backup: invalid qube name"),
            "too long": ("ssh-backup:\n    name: " + "v" * 32, "ssh-backup: invalid qube name"),
            "reserved -dm": ("sys-backup-mnt:\n    name: mnt-dm", "sys-backup-mnt: invalid qube name"),
            "duplicate": ("ssh-backup:\n    name: sys-backup", "is used twice"),
            "label": ("sys-backup:\n    label: pink", "unknown label"),
            "clone of itself": ("template:\n    name: fedora-43-minimal", "name and source are both"),
            "rpm path (gone)": ("template:\n    rpm: /home/user/qubes-borg.rpm", "rpm is no longer used"),
            "fromrepo": ("template:\n    fromrepo: 'a b'", "fromrepo must be a dnf repository id"),
            "package": ("template:\n    packages: ['-oops']", "packages: not a package name"),
            "netvm none": ('sys-backup:\n    netvm: ""', 'sys-backup: netvm must be'),
        }
        for what, (yaml, message) in cases.items():
            m = Minion("bad-" + what.replace(" ", "-"), "dom0", pillar="qubes-borg:\n  " + yaml + "\n")
            rc, data, out = m.call("state.show_sls", "qubes-borg", check=False)
            self.assertNotEqual(rc, 0, what)
            self.assertIn("qubes-borg pillar: ", out, what)
            self.assertIn(message, out, what)


# ---------------------------------------------------------------------------------------------


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    if len(sys.argv) > 1:
        suite = unittest.TestSuite(
            t for group in suite for t in group if any(a in t.id() for a in sys.argv[1:]))
    try:
        result = unittest.TextTestRunner(verbosity=2).run(suite)
    finally:
        cleanup()
    for name, secs in Env.timings.items():
        print("  %s: %.1f s" % (name, secs))
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = max(0, result.testsRun - failed - len(result.skipped))  # a setUpModule error runs none
    print("packaging: %d passed, %d failed, %d skipped" % (passed, failed, len(result.skipped)))
    sys.exit(1 if failed or result.testsRun == 0 else 0)


if __name__ == "__main__":
    main()
