#!/usr/bin/python3
"""Tests of the qrexec stand-in in flat mode (no root, no namespaces).

Run: python3 -m unittest tests/sim/test_qrexec.py (tests/e2e/run runs it for QREXEC_SIM_VERSION
4.3 and 4.2). Each test names the qrexec behaviour it proves (qubes-core-qrexec sources cited in
qrexec_sim.py and tests/sim/README.md); tests of a behaviour that differs between versions set
the version themselves.
"""
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLIENT = str(HERE / "qrexec-client-vm")
sys.path.insert(0, str(HERE))
import qrexec_sim  # noqa: E402  pylint: disable=wrong-import-position


class Sim:
    """A throw-away flat simulation: qube roots + a policy dir."""

    def __init__(self, qubes=("sys-backup-mnt", "sys-backup", "ssh-backup", "work")):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="qsim-flat-"))
        self.qubes = self.dir / "qubes"
        self.policy = self.dir / "policy"
        self.policy.mkdir()
        for q in qubes:
            (self.qubes / q).mkdir(parents=True)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def set_policy(self, **files):
        for p in self.policy.iterdir():
            p.unlink()
        for name, text in files.items():
            if name.endswith("_policy"):
                name = name[:-len("_policy")] + ".policy"
            (self.policy / name.replace("_", "-")).write_text(textwrap.dedent(text))

    def service(self, qube, name, body, where="etc/qubes-rpc"):
        d = self.qubes / qube / where
        d.mkdir(parents=True, exist_ok=True)
        p = d / name
        p.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        p.chmod(0o755)
        return p

    def log(self, qube):
        p = self.qubes / qube / "var/log/qubes/qrexec-services.log"
        return p.read_text() if p.exists() else ""

    def env(self, source, env=None):
        e = dict(os.environ)
        e.update({"QREXEC_SIM_QUBES": str(self.qubes), "QREXEC_SIM_SOURCE": source,
                  "QREXEC_SIM_POLICY_DIR": str(self.policy),
                  "PATH": str(HERE) + ":" + os.environ.get("PATH", "/usr/bin:/bin")})
        e.update(env or {})
        return e

    def call(self, source, target, service, stdin=b"", local=(), timeout=60, env=None,
             opts=()):
        return subprocess.run([CLIENT, *opts, target, service, *local], input=stdin,
                              capture_output=True, env=self.env(source, env), timeout=timeout,
                              check=False)

    def popen(self, source, target, service, env=None, **kw):
        return subprocess.Popen([CLIENT, target, service], env=self.env(source, env), **kw)


ALLOW_ALL = "svc.Echo * @anyvm @default allow target=sys-backup\n"
V42 = {"QREXEC_SIM_VERSION": "4.2"}
V43 = {"QREXEC_SIM_VERSION": "4.3"}


class PolicyTests(unittest.TestCase):
    def setUp(self):
        self.sim = Sim()
        self.sim.service("sys-backup", "svc.Echo", "echo ran-in-sys-backup\n")
        self.sim.service("ssh-backup", "svc.Echo", "echo ran-in-ssh-backup\n")

    def tearDown(self):
        self.sim.cleanup()

    def assertRefused(self, r):
        self.assertEqual(r.returncode, 126, r)
        self.assertEqual(r.stderr, b"Request refused\n")
        self.assertEqual(r.stdout, b"")

    def test_no_matching_rule_is_deny(self):
        self.sim.set_policy(a_x_policy="other.Svc * @anyvm @anyvm allow\n")
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))

    def test_first_match_wins_across_files_in_c_locale_order(self):
        # "10-" sorts before "9-" in the C locale: the allow in 10-allow wins.
        self.sim.set_policy(**{"10_allow.policy": "svc.Echo * work sys-backup allow\n",
                               "9_deny.policy": "svc.Echo * work sys-backup deny\n"})
        r = self.sim.call("work", "sys-backup", "svc.Echo")
        self.assertEqual((r.returncode, r.stdout), (0, b"ran-in-sys-backup\n"), r)
        self.sim.set_policy(**{"10_deny.policy": "svc.Echo * work sys-backup deny\n",
                               "9_allow.policy": "svc.Echo * work sys-backup allow\n"})
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))

    def test_first_match_wins_within_a_file(self):
        self.sim.set_policy(a_policy="""\
            svc.Echo * work @anyvm deny
            svc.Echo * work sys-backup allow
            """)
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))

    def test_default_target_is_redirected_by_target_option(self):
        self.sim.set_policy(a_policy="svc.Echo * work @default allow target=ssh-backup\n")
        for target in ("@default", "", "$default"):
            r = self.sim.call("work", target, "svc.Echo")
            self.assertEqual((r.returncode, r.stdout), (0, b"ran-in-ssh-backup\n"), target)
        # a named target does not match the @default rule
        self.assertRefused(self.sim.call("work", "ssh-backup", "svc.Echo"))

    def test_unknown_target_name_is_treated_as_default(self):
        self.sim.set_policy(a_policy="svc.Echo * work @default allow target=ssh-backup\n")
        r = self.sim.call("work", "no-such-qube", "svc.Echo")
        self.assertEqual((r.returncode, r.stdout), (0, b"ran-in-ssh-backup\n"), r)

    def test_default_allow_without_target_option_is_a_policy_error(self):
        self.sim.set_policy(a_policy="svc.Echo * work @default allow\n"
                            "svc.Echo * work sys-backup allow\n")
        # the broken file makes every call fail, even the one a valid line allows
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))

    def test_anyvm_matches_any_qube_but_never_dom0(self):
        self.sim.set_policy(a_policy="svc.Echo * @anyvm @anyvm allow\n")
        r = self.sim.call("work", "sys-backup", "svc.Echo")
        self.assertEqual(r.returncode, 0, r)
        self.assertRefused(self.sim.call("work", "dom0", "svc.Echo"))
        self.assertRefused(self.sim.call("work", "@adminvm", "svc.Echo"))
        # but @anyvm does match the @default keyword; with allow it has no target: deny
        self.assertRefused(self.sim.call("work", "@default", "svc.Echo"))

    def test_literal_source_names_only_match_that_qube(self):
        self.sim.set_policy(a_policy="svc.Echo * sys-backup-mnt sys-backup allow\n")
        self.assertEqual(self.sim.call("sys-backup-mnt", "sys-backup", "svc.Echo").returncode, 0)
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))

    def test_tag_source_matches_tagged_qubes(self):
        meta = self.sim.qubes / "work" / ".qubes-sim"
        meta.mkdir()
        (meta / "tags").write_text("backup-client\n")
        self.sim.set_policy(a_policy="svc.Echo * @tag:backup-client sys-backup allow\n")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.Echo").returncode, 0)
        self.assertRefused(self.sim.call("sys-backup-mnt", "sys-backup", "svc.Echo"))

    def test_argument_matching(self):
        self.sim.set_policy(a_policy="""\
            svc.Echo +repo1 work sys-backup allow
            svc.Echo + work ssh-backup allow
            """)
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.Echo+repo1").returncode, 0)
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo+repo2"))
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))
        # a lone "+" in policy is the empty argument: matches the call without argument
        self.assertEqual(self.sim.call("work", "ssh-backup", "svc.Echo").returncode, 0)
        self.assertRefused(self.sim.call("work", "ssh-backup", "svc.Echo+x"))

    def test_wildcard_service_needs_wildcard_argument(self):
        self.sim.set_policy(a_policy="* * work sys-backup allow\n")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.Echo+a").returncode, 0)
        self.sim.set_policy(a_policy="* +a work sys-backup allow\n")
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo+a"))

    def test_invalid_policy_file_name_refuses_everything(self):
        self.sim.set_policy(a_policy="svc.Echo * work sys-backup allow\n")
        (self.sim.policy / "Bad-Name.policy").write_text("")
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))
        # ignored files: other suffix, leading dot
        (self.sim.policy / "Bad-Name.policy").unlink()
        (self.sim.policy / ".hidden.policy").write_text("garbage\n")
        (self.sim.policy / "notes.txt").write_text("garbage\n")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.Echo").returncode, 0)

    def test_deny_action_refuses(self):
        self.sim.set_policy(a_policy="svc.Echo * work sys-backup deny notify=no\n")
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Echo"))

    def test_refused_call_starts_no_service(self):
        marker = self.sim.dir / "ran"
        self.sim.service("sys-backup", "svc.Mark", f"touch {marker}\n")
        self.sim.set_policy(a_policy="svc.Mark * work sys-backup deny\n")
        self.assertRefused(self.sim.call("work", "sys-backup", "svc.Mark"))
        self.assertFalse(marker.exists())

    def test_project_policy_allows_only_the_backup_chain(self):
        dirs = [str(REPO / "policy")]
        system = qrexec_sim.load_system(self.sim.qubes)
        pol = qrexec_sim.Policy(dirs)
        self.assertIsNone(pol.error)

        def ev(src, tgt, svc):
            _d, s, a, t = qrexec_sim.parse_request(svc, tgt)
            try:
                return pol.evaluate(s, a, src, t, system)[0]
            except qrexec_sim.Refused:
                return "refused"
        self.assertEqual(ev("sys-backup-mnt", "@default", "qubes-borg.Ssh+borgbase"), "sys-backup")
        self.assertEqual(ev("sys-backup", "@default", "qubes-borg.SshAgent+default"), "ssh-backup")
        self.assertEqual(ev("work", "@default", "qubes-borg.Ssh+borgbase"), "refused")
        self.assertEqual(ev("sys-backup-mnt", "ssh-backup", "qubes-borg.Ssh+x"), "refused")
        self.assertEqual(ev("sys-backup-mnt", "@default", "qubes-borg.SshAgent+default"), "refused")
        self.assertEqual(ev("ssh-backup", "@default", "qubes-borg.Ssh+x"), "refused")
        self.assertEqual(ev("work", "@default", "qubes-borg.SshAgent"), "refused")
        self.assertEqual(ev("sys-backup", "@default", "qubes-borg.SshAgent+other"), "refused")
        self.assertEqual(ev("sys-backup-mnt", "@default", "qubes-borg.SshAgent+admin"), "refused")

    def test_project_policy_asks_for_the_admin_key_set(self):
        # qubes-borg.SshAgent+admin (full repository access) resolves to 'ask' with ssh-backup as
        # the only and preselected target (parser.py Ask.evaluate: target= limits the choice).
        # The stand-in has nobody to ask, so the call itself is refused (tests/sim/README.md).
        system = qrexec_sim.load_system(self.sim.qubes)
        pol = qrexec_sim.Policy([str(REPO / "policy")])
        self.assertIsNone(pol.error)
        for tgt in ("@default", "ssh-backup"):
            _d, s, a, t = qrexec_sim.parse_request("qubes-borg.SshAgent+admin", tgt)
            rule = next(r for r in pol.rules if r.matches(s, a, "sys-backup", t, system))
            self.assertEqual(rule.action, "ask", rule.where)
            self.assertIn("70-qubes-borg.policy", rule.where)
            self.assertEqual(rule.params.get("target"), "ssh-backup")
            self.assertEqual(rule.params.get("default_target"), "ssh-backup")
            with self.assertRaisesRegex(qrexec_sim.Refused, "'ask' at .*70-qubes-borg.policy"):
                pol.evaluate(s, a, "sys-backup", t, system)
        # The routine key set is still allowed without asking.
        _d, s, a, t = qrexec_sim.parse_request("qubes-borg.SshAgent+default", "@default")
        self.assertEqual(pol.evaluate(s, a, "sys-backup", t, system)[0], "ssh-backup")

    def test_project_policy_beside_a_split_ssh_users_rules(self):
        # A typical split-SSH user's own rules (30-user.policy, read before the project's files)
        # name qubes.SshAgent; the project's services have their own names, so neither set of
        # rules reaches the other's calls.
        user = self.sim.dir / "user-policy"
        user.mkdir()
        (user / "30-user.policy").write_text(
            "qubes.SshAgent  *  work    vault    allow\n"
            "qubes.SshAgent  *  @anyvm  @anyvm   ask default_target=vault\n"
            "qubes.SshAgent  *  @anyvm  @anyvm   deny\n")
        (self.sim.qubes / "vault").mkdir()
        system = qrexec_sim.load_system(self.sim.qubes)
        pol = qrexec_sim.Policy([str(user), str(REPO / "policy")])
        self.assertIsNone(pol.error)

        def ev(src, tgt, svc):
            _d, s, a, t = qrexec_sim.parse_request(svc, tgt)
            try:
                return pol.evaluate(s, a, src, t, system)[0]
            except qrexec_sim.Refused:
                return "refused"
        self.assertEqual(ev("sys-backup-mnt", "@default", "qubes-borg.Ssh+borgbase"), "sys-backup")
        self.assertEqual(ev("sys-backup", "@default", "qubes-borg.SshAgent+default"), "ssh-backup")
        self.assertEqual(ev("work", "vault", "qubes.SshAgent+id"), "vault")
        self.assertEqual(ev("work", "ssh-backup", "qubes-borg.SshAgent+default"), "refused")


class ServiceTests(unittest.TestCase):
    def setUp(self):
        self.sim = Sim()
        # @anyvm matches the @default keyword too, so the @default rule must come first
        self.sim.set_policy(a_policy="* * @anyvm @default allow target=sys-backup\n"
                            "* * @anyvm @anyvm allow\n")

    def tearDown(self):
        self.sim.cleanup()

    def test_missing_service_exits_127(self):
        r = self.sim.call("work", "sys-backup", "svc.Missing+x")
        self.assertEqual(r.returncode, 127, r)
        self.assertIn("Service not found: svc.Missing+x", self.sim.log("sys-backup"))

    def test_lookup_43_prefers_service_plus_arg_in_any_dir_over_bare_service(self):
        self.sim.service("sys-backup", "svc.L", "echo run-bare\n", where="run/qubes-rpc")
        self.sim.service("sys-backup", "svc.L+a", "echo etc-plus-arg\n", where="etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.L+a", env=V43).stdout,
                         b"etc-plus-arg\n")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.L+b", env=V43).stdout,
                         b"run-bare\n")

    def test_lookup_43_order_of_directories(self):
        self.sim.service("sys-backup", "svc.D", "echo etc\n", where="etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.D", env=V43).stdout, b"etc\n")
        self.sim.service("sys-backup", "svc.D", "echo local\n", where="usr/local/etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.D", env=V43).stdout,
                         b"local\n")
        self.sim.service("sys-backup", "svc.D", "echo run\n", where="run/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.D", env=V43).stdout, b"run\n")

    def test_lookup_42_is_per_directory_skips_empty_files_and_has_no_run(self):
        # v4.2.25: /usr/local/etc/qubes-rpc:/etc/qubes-rpc only; in each directory svc+arg then
        # svc; empty files skipped (the multiplexer's test -s). 4.3 answers differently.
        self.sim.service("sys-backup", "svc.L", "echo local-bare\n", where="usr/local/etc/qubes-rpc")
        self.sim.service("sys-backup", "svc.L+a", "echo etc-plus-arg\n", where="etc/qubes-rpc")
        self.sim.service("sys-backup", "svc.L+a", "echo run-plus-arg\n", where="run/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.L+a", env=V42).stdout,
                         b"local-bare\n")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.L+a", env=V43).stdout,
                         b"run-plus-arg\n")
        empty = self.sim.qubes / "sys-backup/usr/local/etc/qubes-rpc/svc.E+a"
        empty.write_bytes(b"")
        empty.chmod(0o755)
        self.sim.service("sys-backup", "svc.E+a", "echo etc\n", where="etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.E+a", env=V42).stdout,
                         b"etc\n")
        # 4.3 takes the empty file (the shell runs it as an empty script)
        r = self.sim.call("work", "sys-backup", "svc.E+a", env=V43)
        self.assertEqual((r.returncode, r.stdout), (0, b""), r)
        # only /run has it: 4.2 does not look there
        self.sim.service("sys-backup", "svc.R", "echo run\n", where="run/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.R", env=V42).returncode, 127)
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.R", env=V43).stdout, b"run\n")

    def test_no_argument_descriptor_gets_a_trailing_plus(self):
        # "svc.P+" (the descriptor of a call without argument) is looked up before "svc.P"
        self.sim.service("sys-backup", "svc.P+", "echo plus\n")
        self.sim.service("sys-backup", "svc.P", "echo bare\n", where="usr/local/etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.P", env=V43).stdout, b"plus\n")
        # 4.2: per directory, so /usr/local/etc's bare file comes before /etc's svc.P+
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.P", env=V42).stdout, b"bare\n")

    def test_argument_is_argv1_and_qrexec_environment(self):
        self.sim.service("sys-backup", "svc.Env", """\
            echo "argc=$# argv1=${1-}"
            env | grep '^QREXEC_' | sort
            """)
        r = self.sim.call("sys-backup-mnt", "@default", "svc.Env+borgbase")
        self.assertEqual(r.returncode, 0, r)
        lines = [x for x in r.stdout.decode().splitlines()
                 if not x.startswith("QREXEC_SIM_VERSION=")]
        self.assertEqual(lines, [
            "argc=1 argv1=borgbase",
            "QREXEC_REMOTE_DOMAIN=sys-backup-mnt",
            "QREXEC_REQUESTED_TARGET_TYPE=",
            "QREXEC_SERVICE_ARGUMENT=borgbase",
            "QREXEC_SERVICE_FULL_NAME=svc.Env+borgbase",
            "QREXEC_SIM_POLICY_DIR=" + str(self.sim.policy),
            "QREXEC_SIM_QUBES=" + str(self.sim.qubes),
            "QREXEC_SIM_ROOT=" + str(self.sim.qubes / "sys-backup"),
            "QREXEC_SIM_SOURCE=sys-backup",
        ])
        r = self.sim.call("work", "sys-backup", "svc.Env")
        lines = r.stdout.decode().splitlines()
        self.assertEqual(lines[0], "argc=0 argv1=")
        self.assertIn("QREXEC_SERVICE_ARGUMENT=", lines)
        self.assertIn("QREXEC_SERVICE_FULL_NAME=svc.Env+", lines)

    def test_bad_characters_in_names_are_replaced(self):
        self.sim.service("sys-backup", "svc.Env", 'echo "$QREXEC_SERVICE_FULL_NAME"\n')
        r = self.sim.call("work", "sys-backup", "svc.Env+a/b c")
        self.assertEqual(r.stdout, b"svc.Env+a_b_c\n")

    def test_service_fds_are_socketpairs_and_a_pipe(self):
        self.sim.service("sys-backup", "svc.Fds", """\
            stat -L -c %F /proc/self/fd/0 /proc/self/fd/1
            stat -L -c %F /proc/self/fd/2 >&2
            """)
        r = self.sim.call("work", "sys-backup", "svc.Fds")
        self.assertEqual(r.stdout, b"socket\nsocket\n")
        self.assertIn("fifo", self.sim.log("sys-backup"))

    def test_service_stderr_goes_to_the_caller_and_the_target_log(self):
        # 4.3: process_io.c sends it as MSG_DATA_STDERR and copies it to the logger
        # (open_logger.c); 4.2: the multiplexer tees it to both
        self.sim.service("sys-backup", "svc.Err", "echo diagnostic >&2; echo out\n")
        r = self.sim.call("work", "sys-backup", "svc.Err")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"out\n", b"diagnostic\n"))
        self.assertIn("svc.Err+-work: diagnostic", self.sim.log("sys-backup"))
        self.assertNotIn("diagnostic", self.sim.log("work"))

    def test_escape_filtering_only_with_t_and_T_when_not_a_terminal(self):
        self.sim.service("sys-backup", "svc.Esc",
                         "printf 'a\\033[31mb\\a\\t\\303\\251\\n'; "
                         "printf 'e\\033]0;x\\007\\n' >&2\n")
        r = self.sim.call("work", "sys-backup", "svc.Esc")
        self.assertEqual((r.stdout, r.stderr), (b"a\x1b[31mb\a\t\xc3\xa9\n", b"e\x1b]0;x\x07\n"))
        r = self.sim.call("work", "sys-backup", "svc.Esc", opts=["-t"])
        self.assertEqual((r.stdout, r.stderr), (b"a_[31mb\a\t__\n", b"e\x1b]0;x\x07\n"))
        r = self.sim.call("work", "sys-backup", "svc.Esc", opts=["-T"])
        self.assertEqual((r.stdout, r.stderr), (b"a\x1b[31mb\a\t\xc3\xa9\n", b"e_]0;x\a\n"))

    def test_caller_that_stops_reading_stdout_does_not_shut_the_service_stdout(self):
        # qrexec-client-vm closes its fd 1 and drops later data; the service's writes succeed
        self.sim.service("sys-backup", "svc.Big", """\
            sleep 0.5
            head -c 4000000 /dev/zero || { echo "service got EPIPE" >&2; exit 9; }
            echo "all written" >&2
            """)
        r_fd, w_fd = os.pipe()
        p = self.sim.popen("work", "sys-backup", "svc.Big", stdin=subprocess.DEVNULL,
                           stdout=w_fd, stderr=subprocess.PIPE)
        os.close(w_fd)
        os.close(r_fd)                   # the caller reads nothing
        err = p.stderr.read()
        p.stderr.close()
        self.assertEqual((p.wait(timeout=30), err), (0, b"all written\n"))

    def test_service_that_stops_reading_stdin_leaves_the_caller_writing_until_it_exits(self):
        # the agent shuts the service's stdin and discards the rest; the caller's writes succeed
        # until the exit code arrives (then its stdin is closed)
        self.sim.service("sys-backup", "svc.Deaf", "exec <&-; sleep 1.5; echo bye\n")
        p = self.sim.popen("work", "sys-backup", "svc.Deaf", stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE)
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 0.8:
            p.stdin.write(b"x" * 65536)      # BrokenPipeError here fails the test
            p.stdin.flush()
            sent += 65536
            time.sleep(0.02)
        self.assertGreater(sent, 1 << 20)
        out = p.stdout.read()
        p.stdout.close()
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass                              # after the exit code: fine
        self.assertEqual((p.wait(timeout=30), out), (0, b"bye\n"))

    def test_call_ends_only_when_every_holder_of_the_service_stderr_closed_it(self):
        # process_io.c:220-228: no time limit; a child still writing to fd 2 keeps the call open
        self.sim.service("sys-backup", "svc.Linger",
                         "(sleep 2.5; echo late >&2) </dev/null >/dev/null &\nexit 4\n")
        start = time.monotonic()
        r = self.sim.call("work", "sys-backup", "svc.Linger")
        self.assertGreaterEqual(time.monotonic() - start, 2.4)
        self.assertEqual((r.returncode, r.stderr), (4, b"late\n"))
        self.assertIn("svc.Linger+-work: late", self.sim.log("sys-backup"))

    def test_service_starts_in_a_new_session_through_a_login_shell(self):
        # 4.3 (no fork server): PAM child, setsid, /bin/sh -lc; 4.2: the #!/bin/sh -l
        # multiplexer. The login files run first; what they print reaches the caller.
        root = self.sim.qubes / "sys-backup"
        (root / "home/user").mkdir(parents=True)
        (root / "home/user/.profile").write_text("echo profile-noise\nexport PROFILE_RAN=yes\n")
        self.sim.service("sys-backup", "svc.S", """\
            read -r _pid _comm _state _ppid _pgrp sid _rest < /proc/$$/stat
            [ "$sid" = "$$" ] && echo session-leader
            echo "profile=${PROFILE_RAN-no} arg=$1 full=$QREXEC_SERVICE_FULL_NAME"
            """)
        for env in (V42, V43):
            r = self.sim.call("work", "sys-backup", "svc.S+a", env=env)
            self.assertEqual(r.stdout, b"profile-noise\nsession-leader\n"
                             b"profile=yes arg=a full=svc.S+a\n", (env, r))
        # 4.3 with the user's session running qrexec-fork-server: direct exec, no login files
        r = self.sim.call("work", "sys-backup", "svc.S+a",
                          env=dict(V43, QREXEC_SIM_FORK_SERVER="1"))
        self.assertEqual(r.stdout, b"profile=no arg=a full=svc.S+a\n", r)

    def test_a_profile_cannot_change_the_qrexec_variables(self):
        root = self.sim.qubes / "sys-backup"
        (root / "etc").mkdir(parents=True)
        (root / "etc/profile").write_text("export QREXEC_REMOTE_DOMAIN=forged\n")
        self.sim.service("sys-backup", "svc.V", 'echo "$QREXEC_REMOTE_DOMAIN"\n')
        for env in (V42, V43):
            self.assertEqual(self.sim.call("work", "sys-backup", "svc.V", env=env).stdout,
                             b"work\n", env)

    def test_target_that_cannot_start_is_refused_with_126(self):
        # qrexec_execute_vm() fails -> daemon child exits 125 -> MSG_SERVICE_REFUSED
        marker = self.sim.dir / "ran"
        self.sim.service("sys-backup", "svc.M", f"touch {marker}\n")
        (self.sim.qubes / "sys-backup/.qubes-sim").mkdir()
        (self.sim.qubes / "sys-backup/.qubes-sim/start-fails").write_text("")
        r = self.sim.call("work", "sys-backup", "svc.M")
        self.assertEqual((r.returncode, r.stderr), (126, b"Request refused\n"))
        self.assertFalse(marker.exists())

    def test_usage_errors_exit_2(self):
        r = subprocess.run([CLIENT, "only-target"], capture_output=True, check=False,
                           env=self.sim.env("work"))
        self.assertEqual(r.returncode, 2, r)
        r = subprocess.run([CLIENT, "--bogus", "a", "b"], capture_output=True, check=False,
                           env=self.sim.env("work"))
        self.assertEqual(r.returncode, 2, r)

    def test_remote_exit_status_is_returned(self):
        self.sim.service("sys-backup", "svc.Exit", 'exit "$1"\n')
        for code in (0, 1, 2, 3, 125, 255):
            r = self.sim.call("work", "sys-backup", f"svc.Exit+{code}")
            self.assertEqual(r.returncode, code)

    def test_service_killed_by_signal_gives_128_plus_n(self):
        self.sim.service("sys-backup", "svc.Kill", "kill -9 $$\n")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.Kill").returncode, 137)

    def test_eof_is_a_half_close_service_writes_after_stdin_eof(self):
        # The service reads stdin to EOF (it must see EOF while its stdout stays open), then
        # writes; every byte must arrive.
        self.sim.service("sys-backup", "svc.Count", """\
            n=$(wc -c)
            sleep 0.3
            echo "got $n"
            echo after-eof
            """)
        r = self.sim.call("work", "sys-backup", "svc.Count", stdin=b"x" * 100000)
        self.assertEqual((r.returncode, r.stdout), (0, b"got 100000\nafter-eof\n"), r)

    def test_caller_sees_stdout_eof_while_service_still_reads(self):
        # service closes stdout first, then consumes stdin: the caller's reader sees EOF on the
        # output and the exit status still arrives after the service ends.
        self.sim.service("sys-backup", "svc.CloseOut", """\
            echo early
            exec 1>&-
            cat >/dev/null
            exit 7
            """)
        r = self.sim.call("work", "sys-backup", "svc.CloseOut", stdin=b"y" * 10000)
        self.assertEqual((r.returncode, r.stdout), (7, b"early\n"))

    def test_remote_exit_stops_reading_caller_stdin(self):
        # The service exits without reading; the client must not wait for its own stdin's EOF.
        self.sim.service("sys-backup", "svc.Quick", "echo bye\n")
        e = dict(os.environ, QREXEC_SIM_QUBES=str(self.sim.qubes), QREXEC_SIM_SOURCE="work",
                 QREXEC_SIM_POLICY_DIR=str(self.sim.policy))
        p = subprocess.Popen([CLIENT, "sys-backup", "svc.Quick"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=e)
        out = p.stdout.read()
        code = p.wait(timeout=20)
        p.stdin.close()
        p.stdout.close()
        self.assertEqual((code, out), (0, b"bye\n"))

    def test_large_transfer_is_byte_exact_both_directions(self):
        self.sim.service("sys-backup", "svc.Cat", "exec cat\n")
        data = os.urandom(8 << 20) * 4
        r = self.sim.call("work", "sys-backup", "svc.Cat", stdin=data, timeout=120)
        self.assertEqual(r.returncode, 0)
        self.assertEqual(hashlib.sha256(r.stdout).digest(), hashlib.sha256(data).digest())

    def test_nested_call_from_service_comes_from_the_target_qube(self):
        self.sim.service("ssh-backup", "svc.Who", 'echo "$QREXEC_REMOTE_DOMAIN"\n')
        self.sim.service("sys-backup", "svc.Hop", "exec qrexec-client-vm ssh-backup svc.Who\n")
        r = self.sim.call("work", "sys-backup", "svc.Hop")
        self.assertEqual((r.returncode, r.stdout), (0, b"sys-backup\n"), self.sim.log("sys-backup"))

    def test_local_program_gets_socketpairs_and_remote_failure_wins(self):
        self.sim.service("sys-backup", "svc.Exit", 'cat; exit "$1"\n')
        prog = self.sim.dir / "local.sh"
        prog.write_text("#!/bin/sh\nstat -L -c %F /proc/self/fd/0 >&2\necho hi\nexit 4\n")
        prog.chmod(0o755)
        r = self.sim.call("work", "sys-backup", "svc.Exit+0", local=[str(prog)])
        self.assertEqual(r.returncode, 4, r)
        self.assertIn(b"socket", r.stderr)
        r = self.sim.call("work", "sys-backup", "svc.Exit+9", local=[str(prog)])
        self.assertEqual(r.returncode, 9, r)

    def test_client_side_failure_exits_1_not_125(self):
        # qrexec-client-vm.c: cannot reach the agent etc. -> exit(1); here: no source qube
        r = self.sim.call("", "sys-backup", "svc.X")
        self.assertEqual(r.returncode, 1, r)


class SpliceDataPathTests(unittest.TestCase):
    """QREXEC_SIM_DATA=splice (the data path tests/bench/chain uses): the client's relay keeps
    every data-path behaviour of the copy loop (same tests, run with it)."""

    def setUp(self):
        ServiceTests.setUp(self)
        os.environ["QREXEC_SIM_DATA"] = "splice"

    def tearDown(self):
        del os.environ["QREXEC_SIM_DATA"]
        self.sim.cleanup()

    test_large_transfer_is_byte_exact_both_directions = \
        ServiceTests.test_large_transfer_is_byte_exact_both_directions
    test_eof_is_a_half_close_service_writes_after_stdin_eof = \
        ServiceTests.test_eof_is_a_half_close_service_writes_after_stdin_eof
    test_caller_sees_stdout_eof_while_service_still_reads = \
        ServiceTests.test_caller_sees_stdout_eof_while_service_still_reads
    test_remote_exit_stops_reading_caller_stdin = \
        ServiceTests.test_remote_exit_stops_reading_caller_stdin
    test_caller_that_stops_reading_stdout_does_not_shut_the_service_stdout = \
        ServiceTests.test_caller_that_stops_reading_stdout_does_not_shut_the_service_stdout


if __name__ == "__main__":
    unittest.main()
