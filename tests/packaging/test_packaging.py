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

import fcntl
import hashlib
import json
import os
import re
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


class Minion:
    """A salt-call --local setup that sees the formula as Qubes' dom0 does after installing
    qubes-borg-dom0: file_roots has the installed formula dir, pillar_roots the installed
    pillar dir, and the top files are the installed init.top files (qubesctl top.enable links
    them into the merged top; here they are the top.sls)."""

    def __init__(self, name, minion_id, grains=None, pillar=None):
        self.dir = os.path.join(Env.work, "salt", name)
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
                 "--log-level=quiet"] + list(args), check=False)
        try:
            data = json.loads(p.stdout)["local"] if p.stdout.strip() else None
        except ValueError:
            data = None
        if check and (p.returncode != 0 or data is None or is_render_error(data)):
            raise AssertionError("salt-call %s failed (%d):\n%s\n%s"
                                 % (" ".join(args), p.returncode, p.stdout[-6000:], p.stderr[-3000:]))
        return p.returncode, data, p.stdout + p.stderr


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
        self.assertRegex(default, r"(?m)^Source1:\s+qubes-borg-%s-vendor\.tar\.gz$" % re.escape(VERSION))
        self.assertRegex(default, r"(?m)^BuildRequires:\s+cargo")
        self.assertRegex(default, r"(?m)^BuildRequires:\s+rust")
        self.assertNotIn("cargo build", prebuilt)
        self.assertIn("find /x -maxdepth 1 -type f -perm -u+x -exec install -m 0755 {} target/release/", prebuilt)
        self.assertNotRegex(prebuilt, r"(?m)^Source1:")
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
        for dep in ("borgbackup", "openssh-clients", "qubes-core-agent-qrexec"):
            self.assertIn(dep, vm)
        dom0 = set(rpm_query(Env.dom0_rpm, "--requires").split("\n"))
        for dep in ("qubes-mgmt-salt", "qubes-mgmt-salt-dom0-qvm", "qubes-core-qrexec-dom0"):
            self.assertIn(dep, dom0)
        self.assertEqual(rpm_query(Env.dom0_rpm, "--qf", "%{ARCH}"), "x86_64")
        self.assertEqual(rpm_query(Env.vm_rpm, "--qf", "%{ARCH}"), "x86_64")


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
        self.assertEqual(sorted(sls), ["clone", "create", "init", "install", "policy"])
        self.assertEqual(sorted(tops), [s + ".top" for s in sorted(sls)], "every .sls has a .top")
        for s in sls:
            minion = tpl if s == "install" else self.dom0
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
        clone = state_args(hs, "qubes-borg-template")
        self.assertEqual((clone["fun"], clone["args"]["name"], clone["args"]["source"]),
                         ("clone", "tpl-qubes-borg", "fedora-43-minimal"))

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

    def test_template_top_installs_the_vm_package_in_the_template(self):
        tpl = Minion("tpl", "tpl-qubes-borg", grains={"os_family": "RedHat", "os": "Fedora"})
        _, top, _ = tpl.call("state.show_top")
        self.assertEqual(top, {"base": ["qubes-borg.install"]})
        _, hs, _ = tpl.call("state.show_highstate")
        pkg = state_args(hs, "qubes-borg-package")
        self.assertEqual((pkg["module"], pkg["fun"], pkg["args"]["name"]), ("pkg", "installed", "qubes-borg"))
        self.assertNotIn("fromrepo", pkg["args"])
        extra = state_args(hs, "qubes-borg-template-packages")
        self.assertEqual(extra["args"]["pkgs"], ["qubes-core-agent-networking"])
        self.assertFalse([s for s in hs if state_args(hs, s)["module"] == "qvm"], "no qvm.* in a template")
        # Another qube gets nothing from this formula.
        other = Minion("other", "work", grains={"os_family": "RedHat", "os": "Fedora"})
        _, top, _ = other.call("state.show_top")
        self.assertEqual(top, {})

    def test_install_state_does_nothing_in_dom0(self):
        _, data, _ = self.dom0.call("state.show_sls", "qubes-borg.install")
        self.assertEqual(data, {})

    def test_template_package_from_a_copied_rpm_or_a_named_repository(self):
        rpm = "/home/user/QubesIncoming/dom0/qubes-borg-%s-1.fc43.x86_64.rpm" % VERSION
        t = Minion("tpl-rpm", "tpl-qubes-borg", grains={"os_family": "RedHat", "os": "Fedora"},
                   pillar="qubes-borg:\n  template:\n    rpm: %s\n    packages: []\n" % rpm)
        _, hs, _ = t.call("state.show_highstate")
        self.assertEqual(state_args(hs, "qubes-borg-package")["args"]["sources"], [{"qubes-borg": rpm}])
        self.assertNotIn("qubes-borg-template-packages", hs)
        t = Minion("tpl-repo", "tpl-qubes-borg", grains={"os_family": "RedHat", "os": "Fedora"},
                   pillar="qubes-borg:\n  template:\n    fromrepo: qubes-borg-local\n")
        _, hs, _ = t.call("state.show_highstate")
        self.assertEqual(state_args(hs, "qubes-borg-package")["args"]["fromrepo"], "qubes-borg-local")

    def test_non_fedora_template_fails_with_a_message(self):
        t = Minion("tpl-debian", "tpl-qubes-borg", grains={"os_family": "Debian", "os": "Debian"})
        _, hs, _ = t.call("state.show_highstate")
        self.assertEqual(list(hs), ["qubes-borg-template-not-fedora"])
        s = state_args(hs, "qubes-borg-template-not-fedora")
        self.assertEqual((s["module"], s["fun"]), ("test", "fail_without_changes"))
        self.assertIn("ships RPMs only", s["args"]["name"])

    def test_pillar_renames_the_qubes_the_template_and_the_policy(self):
        d = Minion("renamed-dom0", "dom0", pillar=RENAMED_PILLAR)
        _, hs, _ = d.call("state.show_highstate")
        self.assertEqual(state_args(hs, "qubes-borg-template")["args"]["source"], "fedora-42-minimal")
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

    def check_policy_in_simulated_qrexec(self, policy):
        """The rendered policy, with the packaged default deny, in the project's qrexec stand-in
        (tests/sim, flat mode): the renamed qubes reach each other, the default names do not."""
        base = os.path.join(Env.work, "sim")
        pol = os.path.join(base, "policy")
        write(os.path.join(pol, "70-qubes-borg.policy"), policy)
        shutil.copy(os.path.join(REPO, "policy", "80-qubes-borg.policy"), pol)
        qubes = os.path.join(base, "qubes")
        echo = os.path.join(base, "echo-service")
        write(echo, "#!/bin/sh\nexec cat\n")  # the argument (argv[1]) is not a file to cat
        os.chmod(echo, 0o755)
        for q in ("backup-mnt", "backup-net", "backup-vault", "sys-backup-mnt", "sys-backup", "ssh-backup"):
            os.makedirs(os.path.join(qubes, q, "etc", "qubes-rpc"))
            for svc in ("qubes-borg.Ssh", "qubes-borg.SshAgent"):
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

    def test_invalid_pillar_stops_the_render_with_a_message(self):
        cases = {
            "space": ("sys-backup:\n    name: bad name", "sys-backup: invalid qube name"),
            "newline": ('sys-backup:\n    name: "bad\\n"', "sys-backup: invalid qube name"),
            "too long": ("ssh-backup:\n    name: " + "v" * 32, "ssh-backup: invalid qube name"),
            "reserved -dm": ("sys-backup-mnt:\n    name: mnt-dm", "sys-backup-mnt: invalid qube name"),
            "duplicate": ("ssh-backup:\n    name: sys-backup", "is used twice"),
            "label": ("sys-backup:\n    label: pink", "unknown label"),
            "clone of itself": ("template:\n    name: fedora-43-minimal", "name and source are both"),
            "relative rpm": ("template:\n    rpm: qubes-borg.rpm", "rpm must be an absolute path"),
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
