#!/usr/bin/python3
"""Tests of the qrexec stand-in in flat mode (no root, no namespaces).

Run: python3 -m unittest tests/sim/test_qrexec.py (tests/e2e/run runs it too).
Each test names the qrexec behaviour it proves (qubes-core-qrexec sources cited in qrexec_sim.py).
"""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
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

    def call(self, source, target, service, stdin=b"", local=(), timeout=60, env=None):
        e = dict(os.environ)
        e.update({"QREXEC_SIM_QUBES": str(self.qubes), "QREXEC_SIM_SOURCE": source,
                  "QREXEC_SIM_POLICY_DIR": str(self.policy),
                  "PATH": str(HERE) + ":" + os.environ.get("PATH", "/usr/bin:/bin")})
        e.update(env or {})
        return subprocess.run([CLIENT, target, service, *local], input=stdin,
                              capture_output=True, env=e, timeout=timeout, check=False)


ALLOW_ALL = "svc.Echo * @anyvm @default allow target=sys-backup\n"


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

    def test_lookup_prefers_service_plus_arg_in_any_dir_over_bare_service(self):
        self.sim.service("sys-backup", "svc.L", "echo run-bare\n", where="run/qubes-rpc")
        self.sim.service("sys-backup", "svc.L+a", "echo etc-plus-arg\n", where="etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.L+a").stdout,
                         b"etc-plus-arg\n")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.L+b").stdout, b"run-bare\n")

    def test_lookup_order_of_directories(self):
        self.sim.service("sys-backup", "svc.D", "echo etc\n", where="etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.D").stdout, b"etc\n")
        self.sim.service("sys-backup", "svc.D", "echo local\n", where="usr/local/etc/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.D").stdout, b"local\n")
        self.sim.service("sys-backup", "svc.D", "echo run\n", where="run/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.D").stdout, b"run\n")

    def test_no_argument_descriptor_gets_a_trailing_plus(self):
        # "svc.P+" (the descriptor of a call without argument) is looked up before "svc.P"
        self.sim.service("sys-backup", "svc.P+", "echo plus\n")
        self.sim.service("sys-backup", "svc.P", "echo bare\n", where="run/qubes-rpc")
        self.assertEqual(self.sim.call("work", "sys-backup", "svc.P").stdout, b"plus\n")

    def test_argument_is_argv1_and_qrexec_environment(self):
        self.sim.service("sys-backup", "svc.Env", """\
            echo "argc=$# argv1=${1-}"
            env | grep '^QREXEC_' | sort
            """)
        r = self.sim.call("sys-backup-mnt", "@default", "svc.Env+borgbase")
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(r.stdout.decode().splitlines(), [
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

    def test_service_stderr_goes_to_target_log_never_to_caller(self):
        self.sim.service("sys-backup", "svc.Err", "echo secret-diagnostic >&2; echo out\n")
        r = self.sim.call("work", "sys-backup", "svc.Err")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"out\n", b""))
        self.assertIn("svc.Err+-work: secret-diagnostic", self.sim.log("sys-backup"))
        self.assertNotIn("secret-diagnostic", self.sim.log("work"))

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

    def test_flat_mode_without_source_is_a_qrexec_problem(self):
        r = self.sim.call("", "sys-backup", "svc.X")
        self.assertEqual(r.returncode, 125)


if __name__ == "__main__":
    unittest.main()
