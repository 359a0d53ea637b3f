#!/usr/bin/python3
"""A qrexec stand-in for the simulated Qubes (tests/sim/README.md).

Models QubesOS/qubes-core-qrexec (snapshot b2822df, version 4.4.2, for Qubes 4.3) and, where
they differ, tag v4.2.25 (Qubes 4.2): QREXEC_SIM_VERSION=4.2|4.3 (default 4.3) selects one. Every
behaviour below names the upstream file it imitates (tests/sim/README.md has file:line). Nothing
here is upstream code: it is written from reading it.

Three roles, as in real Qubes:
  * client  ("qrexec-client-vm", agent/qrexec-client-vm.c + libqrexec/process_io.c) runs in the
    calling qube, relays its stdio to the service and returns the remote exit status;
  * daemon  ("dom0": daemon/qrexec-daemon.c + qrexec/policy/parser.py) knows which qube a
    request came from by the socket it arrived on (the vchan of real Qubes), evaluates the policy,
    starts the service in the target qube and forwards its exit status;
  * agent-exec (agent/qrexec-agent.c + libqrexec/exec.c) runs inside the target qube's
    namespaces, finds the service by qrexec's lookup order and execs it with the QREXEC_* env.
Flat mode (no namespaces, no root) does all three in the client process: see README.
"""

import errno
import fcntl
import json
import os
import resource
import pathlib
import select
import signal
import socket
import subprocess
import sys
import threading
import time

# libqrexec/qrexec.h
EXIT_SERVICE_NOT_FOUND = 127
EXIT_REQUEST_REFUSED = 126
EXIT_PROBLEM = 125
# agent/qrexec-client-vm.c: its own failures exit(1), usage(argv[0], 2); process_io.c returns
# remote_status still -1 (exit 255) when the vchan closes before the exit code.
EXIT_CLIENT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONNECTION_LOST = 255
MAX_SERVICE_NAME_LEN = 65000
NAME_MAX = 255
QREXEC_SERVICE_PATH = ("/run/qubes-rpc", "/usr/local/etc/qubes-rpc", "/etc/qubes-rpc")
# v4.2.25 libqrexec/qrexec.h QREXEC_SERVICE_PATH (and the multiplexer's default): no /run
QREXEC_SERVICE_PATH_42 = ("/usr/local/etc/qubes-rpc", "/etc/qubes-rpc")
VERSIONS = ("4.2", "4.3")

# qrexec/__init__.py
RPCNAME_ALLOWED = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-._")
FILENAME_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")
POLICYSUFFIX = ".policy"

# Where the sim puts things inside a qube (namespace mode); see tests/sim/README.md.
QUBE_SIM_DIR = "/run/qubes-sim"           # holds qrexec.sock (this qube's "vchan") and name
QUBE_SIM_LIB = "/usr/lib/qubes-sim"       # this file and the client launcher, in every qube
SERVICE_PATH = "/usr/local/bin:/usr/bin:/bin"
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15
# The qube's default_user: qrexec services run as this user unless the policy says user=.
DEFAULT_USER = "user"
MAX_REQUEST_LINE = 70000

PROG = "qrexec-client-vm"


class Refused(Exception):
    """The request is denied (policy or invalid request): exit 126."""


class QrexecProblem(Exception):
    """A failure of the client itself (cannot reach qrexec, bad setup): exit 1."""


def sim_version():
    """QREXEC_SIM_VERSION: 4.3 (default) or 4.2; anything else is a setup error."""
    v = os.environ.get("QREXEC_SIM_VERSION", "4.3") or "4.3"
    if v not in VERSIONS:
        raise QrexecProblem(f"QREXEC_SIM_VERSION={v!r}: must be 4.2 or 4.3")
    return v


# ---------------------------------------------------------------------------------------------
# Policy: the 4.1+ format of /etc/qubes/policy.d (qrexec/policy/parser.py)
# ---------------------------------------------------------------------------------------------

def is_dom0(token):
    """parser.py is_dom0()."""
    return token in ("@adminvm", "dom0")


class Rule:
    """One policy line: `service +arg|* source target action [params]` (parser.py Rule)."""

    def __init__(self, fields, where):
        self.where = where
        if len(fields) < 5:
            raise PolicyError(where, "wrong number of fields")
        service, argument, source, target, action, *params = fields
        # parser.py validate_service_and_argument()
        self.service = None if service == "*" else service
        if self.service is not None:
            bad = set(self.service) - (RPCNAME_ALLOWED - {"+"})
            if bad:
                raise PolicyError(where, f"service {service!r} contains invalid characters")
        self.argument = None if argument == "*" else argument
        if self.argument is not None:
            if set(self.argument) - RPCNAME_ALLOWED:
                raise PolicyError(where, f"argument {argument!r} contains invalid characters")
            if not self.argument.startswith("+"):
                raise PolicyError(where, f"argument {argument!r} does not start with +")
            if self.service is None:
                raise PolicyError(where, "only * argument allowed for * service")
        self.source = check_token(source, "source", where)
        self.target = check_token(target, "target", where)
        if action not in ("allow", "deny", "ask"):
            raise PolicyError(where, f"invalid action: {action}")
        self.action = action
        self.params = {}
        for param in params:
            if "=" not in param:
                raise PolicyError(where, f"invalid action parameter syntax: {param!r}")
            key, value = param.split("=", 1)
            if key in self.params:
                raise PolicyError(where, f"parameter given twice: {key!r}")
            allowed = {"allow": ("target", "user", "notify", "autostart"),
                       "deny": ("notify",),
                       "ask": ("target", "default_target", "user", "notify", "autostart")}
            if key not in allowed[action]:
                raise PolicyError(where, f"invalid parameters for action {action}: {params}")
            if key in ("notify", "autostart") and value not in ("yes", "no"):
                raise PolicyError(where, f"{key!r} is {value!r}, but can be only 'yes' or 'no'")
            self.params[key] = value
        if "target" in self.params:
            check_token(self.params["target"], "redirect", where)
        # parser.py Rule.__init__: "allow action for @default rule must specify target= option"
        if self.target == "@default" and action == "allow" and "target" not in self.params:
            raise PolicyError(where, "allow action for @default rule must specify target= option")

    def matches(self, service, argument, source, target, system):
        """parser.py Rule.is_match()."""
        return ((self.service is None or self.service == service)
                and (self.argument is None or self.argument == argument)
                and token_matches(self.source, source, system)
                and token_matches(self.target, target, system))


class PolicyError(Exception):
    def __init__(self, where, msg):
        super().__init__(f"{where}: {msg}")


# Token table of doc/multifile-policy.markdown (reference §2.1).
def check_token(tok, column, where):
    if tok == "*" and column in ("source", "target"):
        return tok
    if tok.startswith("@"):
        ok = {"source": ("@adminvm", "@anyvm", "@tag:", "@type:", "@dispvm:"),
              "target": ("@adminvm", "@anyvm", "@default", "@dispvm", "@tag:", "@type:"),
              "redirect": ("@adminvm", "@dispvm")}[column]
        if not any(tok == o or (o.endswith(":") and tok.startswith(o) and len(tok) > len(o))
                   or (o == "@dispvm" and tok.startswith("@dispvm:")) for o in ok):
            raise PolicyError(where, f"invalid {column} token {tok!r}")
        return tok
    if not tok or set(tok) - RPCNAME_ALLOWED - {"-"}:
        raise PolicyError(where, f"invalid {column} {tok!r}")
    return tok


def token_matches(tok, other, system):
    """VMToken.match and subclasses in parser.py."""
    if tok == "*":                                   # WildcardVM: anything, dom0 included
        return True
    if tok == "@anyvm":                              # AnyVM: anything but dom0
        return not is_dom0(other)
    if is_dom0(tok):                                 # AdminVM: dom0 and @adminvm commute
        return is_dom0(other)
    if tok.startswith("@tag:"):                      # TagVM
        return other in system and tok[5:] in system[other]["tags"]
    if tok.startswith("@type:"):                     # TypeVM
        return other in system and tok[6:] == system[other]["type"]
    return tok == other                              # literal names, @default, @dispvm...


class Policy:
    def __init__(self, dirs):
        self.rules = []
        self.error = None
        try:
            self._load(dirs)
        except (PolicyError, OSError) as err:
            # A file that does not parse makes every call fail (policy daemon cannot load it).
            self.error = str(err)
            self.rules = []

    def _load(self, dirs):
        # parser.py AbstractFileSystemLoader.load_policy_dirs + filter_filepaths: files ending
        # in .policy, not starting with '.', invalid names reject everything, first directory
        # wins for a base name, all files sorted by name (C locale: plain code point order).
        seen = {}
        for d in dirs:
            names = []
            for p in sorted(pathlib.Path(d).iterdir()):
                if p.is_file() and p.suffix == POLICYSUFFIX and not p.name.startswith("."):
                    names.append(p)
            for p in names:
                if set(p.name) - FILENAME_ALLOWED:
                    raise PolicyError(p, "invalid filename")
            for p in names:
                seen.setdefault(p.name, p)
        for name in sorted(seen):
            path = seen[name]
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    where = f"{path}:{lineno}"
                    if line.startswith("!"):
                        directive = line.split()[0]
                        if directive == "!compat-4.0":
                            continue     # old-format files are not simulated; none exist here
                        raise PolicyError(where, f"{directive} is not simulated")
                    self.rules.append(Rule(line.split(), where))

    def evaluate(self, service, argument, source, target, system):
        """Return (target qube, user, rule location) or raise Refused.

        parser.py Request (empty or unknown target becomes @default), AbstractPolicy
        .find_matching_rule (first match wins, none = deny) and Allow.evaluate.
        """
        if self.error:
            raise Refused(f"policy does not load: {self.error}")
        if target == "":
            target = "@default"
        if not target.startswith("@") and not is_dom0(target) and target not in system:
            target = "@default"                      # IntendedTarget.verify()
        for rule in self.rules:
            if rule.matches(service, argument, source, target, system):
                break
        else:
            raise Refused("no matching rule found")
        if rule.action == "deny":
            raise Refused(f"denied by {rule.where}")
        if rule.action == "ask":
            raise Refused(f"'ask' at {rule.where}: no user to ask in the simulation")
        actual = rule.params.get("target", target)
        if actual == "@default":
            raise Refused(f"policy define 'allow' action at {rule.where} but no target is "
                          "specified by caller or policy")
        if actual.startswith("@dispvm"):
            raise Refused(f"{rule.where}: disposables are not simulated")
        if actual == "@adminvm":
            actual = "dom0"
        if actual != "dom0" and actual not in system:
            raise Refused(f"{rule.where}: target {actual} does not exist")
        return actual, rule.params.get("user"), rule.where


def policy_dirs():
    env = os.environ.get("QREXEC_SIM_POLICY_DIR")
    if env:
        return [d for d in env.split(":") if d]
    return [str(pathlib.Path(__file__).resolve().parent.parent.parent / "policy")]


def load_system(qubes_dir):
    """The qubes that exist: one directory each under qubes_dir (see README, 'qube roots')."""
    system = {"dom0": {"type": "AdminVM", "tags": set()}}
    for p in sorted(pathlib.Path(qubes_dir).iterdir()):
        if not p.is_dir() or p.name == "dom0":
            continue
        meta = p / ".qubes-sim"
        qtype, tags = "AppVM", set()
        if (meta / "type").is_file():
            qtype = (meta / "type").read_text().strip()
        if (meta / "tags").is_file():
            tags = set((meta / "tags").read_text().split())
        system[p.name] = {"type": qtype, "tags": tags,
                          "start_fails": (meta / "start-fails").exists()}
    return system


def start_target(system, actual):
    """daemon/qrexec-daemon-common.c qrexec_execute_vm(): a target qubesd cannot start makes
    the daemon's child exit QREXEC_EXIT_PROBLEM, which reap_children() (qrexec-daemon.c) turns
    into MSG_SERVICE_REFUSED: the caller sees 126 'Request refused', as for a policy denial."""
    if system.get(actual, {}).get("start_fails"):
        raise Refused(f"qubesd could not start VM {actual} (.qubes-sim/start-fails)")


def sanitize_name(name, extra):
    """daemon/qrexec-daemon.c sanitize_name(): bytes outside the charset become '_'."""
    allowed = RPCNAME_ALLOWED - {"+"} | set(extra)
    return "".join(c if c in allowed else "_" for c in name)


def parse_request(service_desc, target):
    """What qrexec-client-vm + qrexec-daemon do with the caller's two strings."""
    target = target.replace("$", "@")                # convert_target_name_keyword()
    target = sanitize_name(target, "@:")
    if len(service_desc.encode()) > MAX_SERVICE_NAME_LEN:
        raise QrexecProblem("service name too long")
    desc = sanitize_name(service_desc, "+")
    if not desc or desc.startswith("+"):             # validate_service_name()
        raise Refused("invalid service name")
    if "+" not in desc:
        desc += "+"                                  # "pretend that an empty argument was given"
    service, arg = desc.split("+", 1)
    return desc, service, "+" + arg, target


# ---------------------------------------------------------------------------------------------
# Service lookup and exec (libqrexec/exec.c find_qrexec_service, find_file, exec_qubes_rpc2)
# ---------------------------------------------------------------------------------------------

def find_service(root, desc, dirs=QREXEC_SERVICE_PATH):
    """Full descriptor in every directory first, then the bare service name in every directory.

    `root` prefixes each directory ("/" inside a qube, the qube root in flat mode). Both
    versions' agents check this way before starting anything (127 if nothing is found); 4.2
    then lets the multiplexer choose the file (MULTIPLEXER_42)."""
    service = desc.split("+", 1)[0]
    for name in (desc, service):
        if len(name.encode()) > NAME_MAX:
            continue                                 # find_file(): "cannot possibly exist"
        for d in dirs:
            path = os.path.join(root, d.lstrip("/"), name)
            try:
                os.lstat(path)
            except FileNotFoundError:
                continue
            try:
                os.stat(path)                        # a dangling symlink is not a service
            except FileNotFoundError:
                continue
            return path
    return None


def service_env(base, desc, source):
    """exec_qubes_rpc2(): QREXEC_* for a call from a VM to a VM.

    For a VM target the daemon sends `QUBESRPC service+arg source` with no target fields
    (qrexec/tools/qrexec_policy_exec.py), so QREXEC_REQUESTED_TARGET_TYPE is empty and neither
    QREXEC_REQUESTED_TARGET nor QREXEC_REQUESTED_TARGET_KEYWORD is set; those exist only for
    calls to dom0."""
    env = {k: v for k, v in base.items()
           if not k.startswith("QREXEC_") or k.startswith("QREXEC_SIM_")}
    env["QREXEC_REQUESTED_TARGET_TYPE"] = ""
    env["QREXEC_SERVICE_FULL_NAME"] = desc
    env["QREXEC_REMOTE_DOMAIN"] = source
    env["QREXEC_SERVICE_ARGUMENT"] = desc.split("+", 1)[1]
    return env


def service_argv(path, desc):
    arg = desc.split("+", 1)[1]
    return [path, arg] if arg else [path]


def service_dirs(version):
    return QREXEC_SERVICE_PATH_42 if version == "4.2" else QREXEC_SERVICE_PATH


# How a service is started (README "How a service starts"). Both scripts are the sim's own,
# written to do what the upstream code does; they run with "$1..." as below and never
# interpolate a value into shell text.
#
# 4.3 without the fork server: qrexec-agent.c do_exec() (PAM session, setsid) calls
# libqrexec/exec.c exec_qubes_rpc2(..., use_shell=true): /bin/sh -lc SCRIPT sh PROGRAM
# FULL_NAME SOURCE ARG: a login shell (reads /etc/profile and ~/.profile) that then sets the
# QREXEC_* variables and execs the program. Anything the login files print to stdout goes to
# the caller before the service's first byte.
WRAPPER_43 = (
    'set -e\n'
    'unset QREXEC_SERVICE_FULL_NAME QREXEC_REMOTE_DOMAIN QREXEC_REQUESTED_TARGET_TYPE \\\n'
    '    QREXEC_SERVICE_ARGUMENT QREXEC_REQUESTED_TARGET QREXEC_REQUESTED_TARGET_KEYWORD\n'
    'export QREXEC_SERVICE_FULL_NAME="$2" QREXEC_REMOTE_DOMAIN="$3" \\\n'
    '    QREXEC_REQUESTED_TARGET_TYPE= QREXEC_SERVICE_ARGUMENT="$4"\n'
    'if [ -n "$4" ]; then exec "$1" "$4"; fi\n'
    'exec "$1"\n')
# 4.2: v4.2.25 libqrexec/exec.c exec_qubes_rpc_if_requested() runs lib/qubes-rpc-multiplexer
# (#!/bin/sh -l, so also a login shell) with FULL_NAME SOURCE; it picks the file itself: for
# each directory of /usr/local/etc/qubes-rpc:/etc/qubes-rpc, FULL_NAME then the bare service,
# first non-empty file (test -s) wins; with none it execs the last candidate and fails.
MULTIPLEXER_42 = (
    'set -f\n'
    'unset QREXEC_REQUESTED_TARGET QREXEC_REQUESTED_TARGET_KEYWORD QREXEC_SERVICE_ARGUMENT\n'
    'export QREXEC_REQUESTED_TARGET_TYPE= QREXEC_REMOTE_DOMAIN="$2" QREXEC_SERVICE_FULL_NAME="$1"\n'
    'export QREXEC_SERVICE_ARGUMENT="${1#*+}"\n'
    'for dir in "${QREXEC_SIM_ROOT-}/usr/local/etc/qubes-rpc" "${QREXEC_SIM_ROOT-}/etc/qubes-rpc"; do\n'
    '    file=$dir/$1\n'
    '    if [ -s "$file" ]; then break; fi\n'
    '    file=$dir/${1%%+*}\n'
    '    if [ -s "$file" ]; then break; fi\n'
    'done\n'
    'exec "$file" ${QREXEC_SERVICE_ARGUMENT:+"$QREXEC_SERVICE_ARGUMENT"}\n')
# Flat mode has no login of its own: the shell reads the qube root's login files instead of the
# host's (sh -l would read the host's /etc/profile and the caller's ~/.profile).
FLAT_LOGIN = ('for f in "$QREXEC_SIM_ROOT/etc/profile" "$QREXEC_SIM_ROOT/home/user/.profile"; do\n'
              '    if [ -r "$f" ]; then . "$f"; fi\n'
              'done\n')


def fork_server_mode():
    """QREXEC_SIM_FORK_SERVER=1 (4.3 only): the qube's user session runs qrexec-fork-server
    (qrexec-agent.c handle_server_exec_request_do tries it first, libqrexec/exec.c
    qrexec_cmd_use_fork_server); it execs the service directly in the session's environment
    (qrexec-fork-server.c do_exec, exec_qubes_rpc2(..., false)): no login shell, no setsid."""
    return os.environ.get("QREXEC_SIM_FORK_SERVER") == "1"


def start_argv(path, desc, source, version, flat, fork_server):
    """Return (argv, setsid) that start the service found at `path`."""
    arg = desc.split("+", 1)[1]
    shell = ["/bin/sh", "-c"] if flat else ["/bin/sh", "-lc"]
    login = FLAT_LOGIN if flat else ""
    if version == "4.2":
        return shell + [login + MULTIPLEXER_42, "qubes-rpc-multiplexer", desc, source], True
    if fork_server:
        return service_argv(path, desc), False
    return shell + [login + WRAPPER_43, "sh", path, desc, source, arg], True


def reset_signals():
    # Python ignores SIGPIPE/SIGXFSZ; a service must start with default dispositions.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def agent_exec(desc, source, user, version, logfd, fork_server):
    """Runs inside the target qube (namespace mode) with fds 0/1/2 already set: become the
    service user, start the service (start_argv) and exit with its status.

    qrexec-agent.c do_exec(): the service runs as the policy's user= or the qube's default user
    ("user"), with HOME, USER, LOGNAME and SHELL from its passwd entry, cwd = its home, in a new
    session (setsid). The sim adds XDG_RUNTIME_DIR=/run/user/UID when that directory exists
    (pam_systemd's doing in a Qubes session; an inference, see README). This process plays
    do_exec()'s PAM parent: it closes its stdio and exits with the service's status; killed, it
    plays a qrexec-agent that died mid-call (the daemon then closes the call without a status)."""
    import pwd                                       # pylint: disable=import-outside-toplevel
    import ctypes                                    # pylint: disable=import-outside-toplevel
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, b"qrexec-agent", 0, 0, 0)    # tests find it with qube-pids
    # the agent's own messages go to its log (the daemon writes them to the qube's log), never
    # to the service's stderr, which the caller sees
    os.set_inheritable(logfd, False)
    agent_log = os.fdopen(logfd, "w", buffering=1)
    path = find_service("/", desc, service_dirs(version))
    if path is None:
        print(f"qrexec-agent: Service not found: {desc}", file=agent_log)
        os._exit(EXIT_SERVICE_NOT_FOUND)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        print(f"qrexec-agent: user {user} does not exist", file=agent_log)
        os._exit(EXIT_PROBLEM)
    env = dict(os.environ)
    env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell)
    run = f"/run/user/{pw.pw_uid}"
    if os.path.isdir(run) and os.stat(run).st_uid == pw.pw_uid:
        env["XDG_RUNTIME_DIR"] = run
    if pw.pw_uid != os.getuid():
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    try:
        os.chdir(pw.pw_dir)                          # qrexec-agent.c: chdir(pw->pw_dir)
    except OSError:
        os.chdir("/")
    # Like qrexec-agent, stay the parent of the service (not exec it ourselves), and be the
    # subreaper of its process tree, so processes that end before it are reaped here and their
    # CPU time is part of what the daemon's wait4() sees (benchmarks). The call's end does not
    # wait for leftovers, only for the service's fds (the daemon's side, process_io.c).
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    argv, new_session = start_argv(path, desc, source, version, flat=False,
                                   fork_server=fork_server)
    pid = os.fork()
    if pid == 0:
        reset_signals()
        if new_session:
            os.setsid()
        try:
            os.execve(argv[0], argv, env)
        except FileNotFoundError:
            os._exit(EXIT_SERVICE_NOT_FOUND)
        except OSError as err:
            print(f"qrexec-agent: execve {argv[0]}: {err.strerror}", file=agent_log)
            os._exit(EXIT_PROBLEM)
    # our copies of the service's stdio must not keep its sockets or stderr pipe open
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _pid, status = os.waitpid(pid, 0)
    try:
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    except ChildProcessError:
        pass
    os._exit(wait_code(status))


def wait_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def service_fds():
    """libqrexec/exec.c do_fork_exec(): two AF_UNIX socketpairs and a pipe.

    Returns ((svc_stdin, our_stdin_end), (svc_stdout, our_stdout_end), (err_r, err_w))."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    return (a, b), (c, d), (r, w)


# libqrexec/replace.c do_replace_chars(): what -t/-T (or a terminal) filter
_KEEP = set(range(0x20, 0x7f)) | {ord(c) for c in "\t\n\r\b\a"}
FILTER_TABLE = bytes(c if c in _KEEP else ord("_") for c in range(256))


def replace_chars(data, on):
    return data.translate(FILTER_TABLE) if on else data


class StderrPump:
    """The service's stderr (process_io.c FD_STDERR + libqrexec/open_logger.c in 4.3; the
    multiplexer's tee in 4.2): every chunk goes to the caller as it comes (`forward`) and to
    the target qube's log, one tagged line at a time. Runs until the pipe's EOF, which comes
    only when every process holding the write end closed it (no time limit), or until stop()
    (the caller went away: process_io.c closes its read end, later writes get EPIPE)."""

    def __init__(self, fd, logfile, tag, forward):
        self.fd, self.logfile, self.tag, self.forward = fd, logfile, tag, forward
        self.partial = b""
        self.log = open(logfile, "ab", buffering=0)   # pylint: disable=consider-using-with

    def _lines(self, data, final=False):
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S ").encode()
        for line in lines:
            self.log.write(stamp + self.tag + b": " + line + b"\n")

    def feed(self):
        """Read once; False at EOF."""
        try:
            data = os.read(self.fd, BUF)
        except OSError:
            data = b""
        if not data:
            self.stop()
            return False
        self._lines(data)
        if self.forward is not None:
            try:
                self.forward(data)
            except OSError:
                self.forward = None            # the caller is gone: the log still gets it
        return True

    def stop(self):
        if self.fd is not None:
            self._lines(b"", final=True)
            os.close(self.fd)
            self.fd = None
            self.log.close()

    def run(self):
        while self.feed():
            pass


def log_stderr(fd, logfile, tag):
    """A service's stderr to its qube's log only, in a thread (for callers that do not pass it
    on: see StderrPump for what qrexec does with a VM's call)."""
    t = threading.Thread(target=StderrPump(fd, logfile, tag, None).run, daemon=True)
    t.start()
    return t


def copy_lines(fd, logfile):
    """The agent's own messages (agent_exec's log fd) into the qube's log."""
    with os.fdopen(fd, "rb") as src:
        for line in src:
            log_line(logfile, line.decode(errors="replace").rstrip("\n"))


def log_line(logfile, text):
    with open(logfile, "a", encoding="utf-8") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + text + "\n")


# ---------------------------------------------------------------------------------------------
# The client relay (libqrexec/process_io.c, client side, with the agent's half-close)
# ---------------------------------------------------------------------------------------------

BUF = 1 << 16


def _copy(src, dst, filt=False):
    """Copy src to dst until EOF; return 'eof' or 'dst-gone'. `filt`: replace_chars().

    Plain read/write, as process_io.c does. Not splice(2): a splice from a pipe into a socket
    that blocks holds the pipe's lock, so the process writing into that pipe blocks even when
    poll() said the pipe was writable (a deadlock with a single-threaded caller such as
    ssh's ProxyCommand handling or Python's communicate())."""
    while True:
        try:
            data = os.read(src, BUF)
        except OSError:                  # ECONNRESET: the writer died; EBADF: closed by us
            return "eof"
        if not data:
            return "eof"
        view = memoryview(replace_chars(data, filt))
        while view:
            try:
                n = os.write(dst, view)
            except OSError:
                return "dst-gone"
            view = view[n:]


def _splice_copy(src, dst):
    """QREXEC_SIM_DATA=splice (benchmarks only): _copy's contract with splice(2) through a private
    1 MiB pipe, no byte through this process. Real qrexec copies each byte into and out of the
    vchan ring in both qubes; this path costs less than that, so that a benchmark measures the
    chain, not the stand-in's Python loop. Blocking splices are safe here: the only pipe held
    locked while a splice sleeps is the private one. Returns None when splice is refused before
    any byte moved (a tty, say): the caller copies instead."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        moved = False
        while True:
            try:
                n = os.splice(src, w, cap)
            except OSError as err:
                if not moved and err.errno == errno.EINVAL:
                    return None
                return "eof"                 # ECONNRESET: the writer died; EBADF: closed by us
            if n == 0:
                return "eof"
            moved = True
            while n:
                try:
                    n -= os.splice(r, dst, n)
                except OSError:
                    return "dst-gone"
    finally:
        os.close(r)
        os.close(w)


def _copy_data(src, dst, filt=False):
    """_copy, or _splice_copy when QREXEC_SIM_DATA=splice and no filtering is asked for."""
    if not filt and os.environ.get("QREXEC_SIM_DATA") == "splice":
        how = _splice_copy(src, dst)
        if how is not None:
            return how
    return _copy(src, dst, filt)


def _drain(src):
    """Read and drop until EOF (remote.c: data for a closed fd is discarded)."""
    try:
        while os.read(src, BUF):
            pass
    except OSError:
        pass


def close_stdio(fd, how):
    """process_io.c close_stdio(): shutdown() a socket that is not one of our fds 0-2, else
    close it (a non-socket is closed too)."""
    if fd > 2:
        dup = os.dup(fd)
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
        else:
            try:
                sock.shutdown(how)
            except OSError:
                pass             # ENOTCONN: the peer is gone already, harmless
            finally:
                sock.close()
            return
    try:
        os.close(fd)
    except OSError:
        pass


class Relay:
    """Moves bytes between the caller's side and the service's socketpairs.

    up:   caller stdin (or local program) -> service stdin socket; at EOF the service's stdin
          gets shutdown(SHUT_WR) (agent close_stdin on a socket) and our source is closed. If
          the service no longer reads (closed its stdin or exited), the agent shuts its stdin
          and discards the rest (remote.c:85-87,100-105; process_io.c:314-315): the caller's
          writes keep succeeding until the exit code arrives (stop_up).
    down: service stdout socket -> caller stdout; at EOF our fd 1 is closed (client
          close_stdin on an inherited fd <= 2) or the local program's socket half-closed. If the
          caller no longer reads, fd 1 is closed and later data is dropped; the service's stdout
          is not shut (remote.c:84-87,100-105; process_io.c:329-331).
    When the remote exit status arrives, the caller's input is no longer read (REMOTE_EXITED).
    """

    def __init__(self, up_src, up_dst, down_src, down_dst, filter_stdout=False):
        self.up_src, self.up_dst = up_src, up_dst
        self.down_src, self.down_dst = down_src, down_dst
        self.filter_stdout = filter_stdout
        self.down_done = threading.Event()
        self.up_lock = threading.Lock()
        self.up_closed = False

    def start(self):
        threading.Thread(target=self._up, daemon=True).start()
        threading.Thread(target=self._down, daemon=True).start()

    def _up(self):
        how = _copy_data(self.up_src, self.up_dst)
        close_stdio(self.up_dst, socket.SHUT_WR)
        if how == "dst-gone":
            _drain(self.up_src)
        self.stop_up()

    def stop_up(self):
        """Stop reading the caller's input (its EOF, or REMOTE_EXITED: close_stdout(), which
        closes fd 0 or shuts a local program's socket)."""
        with self.up_lock:
            if self.up_closed:
                return
            self.up_closed = True
            if self.up_src <= 2:
                # close(0) with the other thread maybe still in read(0): put /dev/null there so
                # the fd number is not reused while that thread may read it again
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, self.up_src)
                os.close(null)
            else:
                close_stdio(self.up_src, socket.SHUT_RD)

    def _down(self):
        how = _copy_data(self.down_src, self.down_dst, self.filter_stdout)
        close_stdio(self.down_dst, socket.SHUT_WR)
        if how == "dst-gone":
            _drain(self.down_src)
        self.down_done.set()

    def abort(self):
        """The connection is gone (vchan closed before an exit code): process_io.c:245-255,
        380-384 end both directions at once."""
        for fd in (self.up_dst, self.down_src):
            close_stdio(fd, socket.SHUT_RDWR)
        self.stop_up()


def start_local_program(argv):
    """qrexec-client-vm local_program: its stdin/stdout are socketpairs (qrexec-client-vm.c:296-333)."""
    in_ours, in_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out_ours, out_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    saved = (os.dup(0), os.dup(1))
    env["SAVED_FD_0"], env["SAVED_FD_1"] = str(saved[0]), str(saved[1])
    proc = subprocess.Popen(argv, stdin=in_theirs.fileno(), stdout=out_theirs.fileno(),
                            env=env, close_fds=True, pass_fds=saved)
    in_theirs.close()
    out_theirs.close()
    for fd in saved:
        os.close(fd)
    # remote data goes to the program's stdin; its stdout goes to the service
    return proc, out_ours.detach(), in_ours.detach()


def finish(remote_status, local_proc):
    """process_io.c: a non-zero remote status wins, else the local program's (or 0)."""
    if local_proc is not None:
        local = local_proc.wait()
        local = 128 - local if local < 0 else local
        if remote_status:
            return remote_status
        return local
    return remote_status


# ---------------------------------------------------------------------------------------------
# Flat mode: everything in the client process, qubes are plain directories
# ---------------------------------------------------------------------------------------------

def flat_qubes_dir():
    d = os.environ.get("QREXEC_SIM_QUBES")
    if not d:
        raise QrexecProblem("flat mode needs QREXEC_SIM_QUBES (a directory of qube roots) "
                            "and QREXEC_SIM_SOURCE (the calling qube); see tests/sim/README.md")
    return d


def flat_call(target, service_desc, local_argv, opts):
    version = sim_version()
    qubes_dir = flat_qubes_dir()
    source = os.environ.get("QREXEC_SIM_SOURCE", "")
    system = load_system(qubes_dir)
    if source not in system or source == "dom0":
        raise QrexecProblem(f"QREXEC_SIM_SOURCE={source!r} is not a qube under {qubes_dir}")
    desc, service, arg, target = parse_request(service_desc, target)
    actual, _user, where = Policy(policy_dirs()).evaluate(service, arg, source, target, system)
    start_target(system, actual)
    root = os.path.join(qubes_dir, actual)
    logfile = qube_log(root)
    log_line(logfile, f"qrexec: {desc} from {source} allowed by {where}")
    path = find_service(root, desc, service_dirs(version))
    if path is None:
        log_line(logfile, f"qrexec-agent: Service not found: {desc}")
        return EXIT_SERVICE_NOT_FOUND
    (svc_in, our_in), (svc_out, our_out), (err_r, err_w) = service_fds()
    env = service_env(os.environ, desc, source)
    env["QREXEC_SIM_SOURCE"] = actual        # nested calls made by the service come from it
    env["QREXEC_SIM_ROOT"] = root
    argv, new_session = start_argv(path, desc, source, version, flat=True,
                                   fork_server=fork_server_mode())
    try:
        proc = subprocess.Popen(argv, stdin=svc_in.fileno(), stdout=svc_out.fileno(),
                                stderr=err_w, env=env, cwd=root, close_fds=True,
                                start_new_session=new_session)
    except FileNotFoundError:
        return EXIT_SERVICE_NOT_FOUND
    except OSError as err:
        log_line(logfile, f"qrexec-agent: execve {argv[0]}: {err.strerror}")
        return EXIT_PROBLEM
    svc_in.close()
    svc_out.close()
    os.close(err_w)
    # the service's stderr reaches our stderr (MSG_DATA_STDERR, remote.c:109-122) and the log
    pump = StderrPump(err_r, logfile, f"{desc}-{source}".encode(),
                      lambda data: write_all(2, replace_chars(data, opts["filter_stderr"])))
    pump_thread = threading.Thread(target=pump.run, daemon=True)
    pump_thread.start()

    def wait_remote():
        # process_io.c:220-228: the exit code is sent once the service exited and its stdout
        # and stderr are closed, however long a process it left behind keeps them open
        status = os.waitpid(proc.pid, 0)[1]
        pump_thread.join()
        return wait_code(status)
    return run_client_relay(our_in.detach(), our_out.detach(), local_argv, wait_remote, opts)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def qube_log(root):
    d = os.path.join(root, "var", "log", "qubes")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, "qrexec-services.log")


def run_client_relay(svc_in, svc_out, local_argv, wait_remote, opts=None):
    opts = opts or {"filter_stdout": False, "filter_stderr": False}
    local_proc = None
    if local_argv:
        local_proc, up_src, down_dst = start_local_program(local_argv)
    else:
        up_src, down_dst = 0, 1
    relay = Relay(up_src, svc_in, svc_out, down_dst, opts["filter_stdout"])
    relay.start()
    remote = wait_remote()
    if remote is None:
        # the connection closed before an exit code: remote_status stays -1, exit 255
        # (process_io.c:245-255,400-401), after the local program (if any) ended
        relay.abort()
        if local_proc is not None:
            local_proc.wait()
        return EXIT_CONNECTION_LOST
    # REMOTE_EXITED: stop reading local input; wait for the rest of the service's stdout.
    relay.stop_up()
    relay.down_done.wait()
    return finish(remote, local_proc)


# ---------------------------------------------------------------------------------------------
# Namespace mode: client <-> daemon over the qube's socket, service in the target's namespaces
# ---------------------------------------------------------------------------------------------

def read_line(sock, limit):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > limit:
            raise QrexecProblem("protocol line too long")
    return buf


def ns_call(target, service_desc, local_argv, opts):
    sock_path = os.path.join(QUBE_SIM_DIR, "qrexec.sock")
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ctl.connect(sock_path)
    except OSError as err:
        raise QrexecProblem(f"cannot connect to the simulated qrexec daemon: {err}") from err
    ctl.sendall(json.dumps({"target": target, "service": service_desc}).encode() + b"\n")
    # first reply carries the two socket ends and the stderr channel (SCM_RIGHTS) when the call
    # is allowed
    msg, fds, _flags, _addr = socket.recv_fds(ctl, 4096, 3)
    if not msg:
        # the real client reads 0 bytes from the agent's trigger socket: refused
        raise Refused("simulated qrexec daemon closed the connection")
    reply = json.loads(msg.split(b"\n", 1)[0])
    if reply.get("result") == "refused":
        raise Refused(reply.get("reason", ""))
    if reply.get("result") == "exit":            # e.g. service not found: no fds
        return reply["code"]
    if reply.get("result") != "ok" or len(fds) != 3:
        raise QrexecProblem(f"bad reply from the simulated qrexec daemon: {reply}")
    svc_in, svc_out, err_in = fds
    rest = msg.split(b"\n", 1)[1]
    # MSG_DATA_STDERR: written to our stderr, filtered with -T or when it is a terminal
    err_thread = threading.Thread(target=copy_stderr, args=(err_in, opts["filter_stderr"]),
                                  daemon=True)
    err_thread.start()

    def wait_remote():
        buf = rest
        while b"\n" not in buf:
            chunk = ctl.recv(4096)
            if not chunk:
                return None                      # vchan closed before the exit code
            buf += chunk
        # the daemon sends the code after the service's stderr ended: all of it is ours
        err_thread.join()
        return json.loads(buf.split(b"\n", 1)[0])["code"]

    code = run_client_relay(svc_in, svc_out, local_argv, wait_remote, opts)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        ctl.sendall(json.dumps({"cpu": [usage.ru_utime, usage.ru_stime]}).encode() + b"\n")
    except OSError:
        pass
    return code


def copy_stderr(fd, filt):
    try:
        while True:
            data = os.read(fd, BUF)
            if not data:
                break
            write_all(2, replace_chars(data, filt))
    except OSError:
        pass                                     # our stderr is gone: drop (remote.c:118-120)
    finally:
        os.close(fd)


def client_main(argv):
    args = argv[1:]
    # qrexec-client-vm.c main(): -t/-T turn escape filtering on (:185-190), the --no-* options
    # off; unset, it is on for stdout when that is a terminal and no local program runs, and
    # for stderr when that is a terminal (:248-253)
    filt = {"filter_stdout": None, "filter_stderr": None}
    long_opts = {"--filter-escape-chars-stdout": ("filter_stdout", True),
                 "--filter-escape-chars-stderr": ("filter_stderr", True),
                 "--no-filter-escape-chars-stdout": ("filter_stdout", False),
                 "--no-filter-escape-chars-stderr": ("filter_stderr", False)}
    while args and args[0].startswith("-") and args[0] != "--":
        opt = args.pop(0)
        if opt in long_opts:
            key, value = long_opts[opt]
            filt[key] = value
            continue
        if opt.startswith("--buffer-size"):
            if "=" not in opt:
                args.pop(0)
            continue
        if len(opt) > 1 and set(opt[1:]) <= {"t", "T"}:
            for c in opt[1:]:
                filt["filter_stdout" if c == "t" else "filter_stderr"] = True
            continue
        print(f"{PROG}: option {opt} is not simulated", file=sys.stderr)
        return EXIT_USAGE
    if args and args[0] == "--":
        args.pop(0)
    if len(args) < 2:
        print(f"usage: {PROG} [options] target_vmname service[+arg] [local_program [args]]",
              file=sys.stderr)
        return EXIT_USAGE
    target, service_desc, local_argv = args[0], args[1], args[2:]
    if local_argv and not local_argv[0].startswith("/"):
        print(f"{PROG}: local program must be a full path (in the simulation)", file=sys.stderr)
        return EXIT_USAGE
    if filt["filter_stdout"] is None:
        filt["filter_stdout"] = not local_argv and os.isatty(1)
    if filt["filter_stderr"] is None:
        filt["filter_stderr"] = os.isatty(2)
    try:
        if os.environ.get("QREXEC_SIM_QUBES"):
            return flat_call(target, service_desc, local_argv, filt)
        if os.path.exists(os.path.join(QUBE_SIM_DIR, "qrexec.sock")):
            return ns_call(target, service_desc, local_argv, filt)
        raise QrexecProblem("not inside a simulated qube and QREXEC_SIM_QUBES is not set")
    except Refused as err:
        if os.environ.get("QREXEC_SIM_DEBUG"):
            print(f"{PROG}: {err}", file=sys.stderr)
        print("Request refused", file=sys.stderr)
        return EXIT_REQUEST_REFUSED
    except QrexecProblem as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_CLIENT_FAILURE


# -- daemon ("dom0") ---------------------------------------------------------------------------

class Daemon:
    """One listening socket per qube; which socket a request arrives on says who sent it."""

    def __init__(self, state):
        self.state = pathlib.Path(state)
        self.qubes_dir = self.state / "roots"
        self.pdirs = [str(self.state / "dom0" / "etc" / "qubes" / "policy.d")]
        self.version = sim_version()
        self.fork_server = fork_server_mode()

    def keeper_pid(self, qube):
        return int((self.state / "qubes" / qube / "pid").read_text())

    def serve(self, qubes):
        socks = []
        for q in qubes:
            d = self.state / "qubes" / q / "sim"
            d.mkdir(parents=True, exist_ok=True)
            path = d / "qrexec.sock"
            if path.exists():
                path.unlink()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(path))
            os.chmod(path, 0o666)        # any user of the qube may call qrexec-client-vm
            s.listen(64)
            socks.append((q, s))
        for q, s in socks:
            threading.Thread(target=self._accept, args=(q, s), daemon=True).start()
        (self.state / "daemon.ready").write_text(str(os.getpid()))
        while True:                      # until the teardown's SIGTERM
            time.sleep(3600)

    def _accept(self, source, lsock):
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=self._handle, args=(source, conn), daemon=True).start()

    def _handle(self, source, conn):
        with conn:
            try:
                line = read_line(conn, MAX_REQUEST_LINE)
                if line is None:
                    return
                req = json.loads(line)
                code = self._run(source, req["target"], req["service"], conn)
                if code is None:
                    return                   # nothing more to send (or no one to send it to)
            except Refused as err:
                conn.sendall(json.dumps({"result": "refused", "reason": str(err)}).encode()
                             + b"\n")
                self._log("dom0", f"qrexec: refused call from {source}: {err}")
                return
            except (QrexecProblem, ValueError, KeyError, OSError) as err:
                self._log("dom0", f"qrexec: call from {source} failed: {err}")
                return
            try:
                conn.sendall(json.dumps({"code": code}).encode() + b"\n")
                # the client reports its own CPU (the simulated qrexec's relay cost) last
                line = read_line(conn, 4096)
                if line:
                    cpu = json.loads(line)["cpu"]
                    self._log("dom0", f"qrexec: client {source} cpu "
                              f"{float(cpu[0]):.3f}+{float(cpu[1]):.3f}")
            except (OSError, ValueError, KeyError, TypeError, QrexecProblem):
                pass

    def _log(self, qube, text):
        if qube == "dom0":
            log_line(str(self.state / "dom0.log"), text)
        else:
            log_line(qube_log(str(self.qubes_dir / qube)), text)

    def _run(self, source, target, service_desc, conn):
        desc, service, arg, target = parse_request(service_desc, target)
        system = load_system(self.qubes_dir)
        actual, user, where = Policy(self.pdirs).evaluate(service, arg, source, target, system)
        user = user or DEFAULT_USER
        self._log("dom0", f"qrexec: {desc} from {source} to {actual} (user {user}) allowed "
                  f"by {where}")
        if actual == "dom0":
            conn.sendall(b'{"result": "exit", "code": 127}\n')
            return None
        start_target(system, actual)
        pid = self.keeper_pid(actual)
        try:
            os.kill(pid, 0)
        except ProcessLookupError as err:
            raise Refused(f"qube {actual} is not running (its keeper {pid} is gone)") from err
        root = str(self.qubes_dir / actual)
        logfile = qube_log(root)
        (svc_in, our_in), (svc_out, our_out), (err_r, err_w) = service_fds()
        log_r, log_w = os.pipe()
        env = service_env({"LANG": "C.UTF-8", "PATH": SERVICE_PATH}, desc, source)
        argv = ["nsenter", f"--target={pid}", "--mount", "--net", "--uts", "--",
                "/usr/bin/python3", "-I", f"{QUBE_SIM_LIB}/qrexec_sim.py", "agent-exec",
                desc, source, user, self.version, str(log_w), "1" if self.fork_server else "0"]
        proc = subprocess.Popen(argv, stdin=svc_in.fileno(), stdout=svc_out.fileno(),
                                stderr=err_w, env=env, close_fds=True, pass_fds=(log_w,))
        svc_in.close()
        svc_out.close()
        os.close(err_w)
        os.close(log_w)
        threading.Thread(target=copy_lines, args=(log_r, logfile), daemon=True).start()
        fwd_r, fwd_w = os.pipe()
        socket.send_fds(conn, [b'{"result": "ok"}\n'],
                        [our_in.fileno(), our_out.fileno(), fwd_r])
        our_in.close()
        our_out.close()
        os.close(fwd_r)
        pump = StderrPump(err_r, logfile, f"{desc}-{source}".encode(),
                          lambda data: write_all(fwd_w, data))
        try:
            status, usage, why = self._serve_call(proc, pump, conn)
        finally:
            pump.stop()
            os.close(fwd_w)
        if why:
            self._log(actual, f"qrexec: {desc} from {source}: {why}")
            return None
        # CPU of the service and every descendant it waited for (benchmarks read this line)
        self._log(actual, f"qrexec: {desc} from {source} exit {wait_code(status)} "
                  f"cpu {usage.ru_utime:.3f}+{usage.ru_stime:.3f}")
        return wait_code(status)

    @staticmethod
    def _serve_call(proc, pump, conn):
        """The target agent's side of process_io.c for one call, until the exit code can be
        sent: the agent process has exited and the service's stderr reached EOF, however long
        that takes (:220-228; stdout EOF is the client's to see). Returns (status, rusage, why):
        `why` is set when the call ends without an exit code: the caller went away (the stderr
        pipe is closed, :245-255,380-384) or the agent was killed (the connection closes)."""
        pidfd = os.pidfd_open(proc.pid)
        err_fd = pump.fd
        poller = select.poll()
        for fd in (err_fd, conn.fileno(), pidfd):
            poller.register(fd, select.POLLIN)
        status = usage = why = None
        try:
            while status is None or pump.fd is not None:
                for fd, _ev in poller.poll():
                    if fd == pidfd:
                        poller.unregister(pidfd)
                        _pid, status, usage = os.wait4(proc.pid, 0)
                        if os.WIFSIGNALED(status) and why is None:
                            why = f"qrexec-agent killed by signal {os.WTERMSIG(status)}"
                        if why and pump.fd is not None:
                            poller.unregister(err_fd)
                            pump.stop()
                    elif fd == conn.fileno():
                        # before the exit code the client sends nothing: readable = gone
                        poller.unregister(fd)
                        why = "the caller went away; service stdio closed"
                        if pump.fd is not None:
                            poller.unregister(err_fd)
                            pump.stop()
                    elif fd == err_fd and pump.fd is not None and not pump.feed():
                        poller.unregister(err_fd)
        finally:
            os.close(pidfd)
        return status, usage, why


# -- dom0 as the caller (qvm-run --service in the simulated dom0, tests/sim/qvm_sim.py) -------

ROOT_SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def dom0_call(state, target, service_desc, user, prefix=b""):
    """qrexec-client -d TARGET USER:QUBESRPC SERVICE dom0, as qvm-run runs it: calls
    made by dom0 are not subject to the policy; the service runs in the target as USER with
    QREXEC_REMOTE_DOMAIN=dom0, its stderr goes to the caller and the target's log; PREFIX goes to the
    service's stdin before the caller's stdin (qvm-run's prefix_data, the shell command line of
    qubes.VMShell); returns its exit status."""
    desc, _service, _arg, _target = parse_request(service_desc, target)
    root = os.path.join(state, "roots", target)
    logfile = qube_log(root)
    with open(os.path.join(state, "qubes", target, "pid"), encoding="utf-8") as f:
        pid = int(f.read().strip())
    (svc_in, our_in), (svc_out, our_out), (err_r, err_w) = service_fds()
    # qrexec-agent runs a service under PAM through `/bin/sh -lc` (agent/qrexec-agent.c); a
    # Debian login shell gives root the sbin directories too (/etc/profile)
    path = ROOT_SERVICE_PATH if user == "root" else SERVICE_PATH
    env = service_env({"LANG": "C.UTF-8", "PATH": path}, desc, "dom0")
    argv = ["nsenter", f"--target={pid}", "--mount", "--net", "--uts", "--",
            "/usr/bin/python3", "-I", f"{QUBE_SIM_LIB}/qrexec_sim.py", "agent-exec",
            desc, "dom0", user]
    log_line(logfile, f"qrexec: {desc} from dom0 (user {user})")
    proc = subprocess.Popen(argv, stdin=svc_in.fileno(), stdout=svc_out.fileno(),
                            stderr=err_w, env=env, close_fds=True)
    svc_in.close()
    svc_out.close()
    os.close(err_w)
    # the service's stderr reaches qvm-run's stderr (qrexec-client -d: MSG_DATA_STDERR,
    # remote.c:109-122; unfiltered: the sim's qvm-run callers never ask for filtering) and the log
    pump = StderrPump(err_r, logfile, f"{desc}-dom0".encode(), lambda data: write_all(2, data))
    logger = threading.Thread(target=pump.run, daemon=True)
    logger.start()
    if prefix:
        our_in.sendall(prefix)
    code = run_client_relay(our_in.detach(), our_out.detach(), [],
                            lambda: wait_code(os.waitpid(proc.pid, 0)[1]))
    logger.join(timeout=2)
    log_line(logfile, f"qrexec: {desc} from dom0 exit {code}")
    return code


def main(argv):
    name = os.path.basename(argv[0])
    if name == "qrexec-client-vm":
        return client_main(argv)
    if len(argv) == 8 and argv[1] == "agent-exec":
        agent_exec(argv[2], argv[3], argv[4], argv[5], int(argv[6]), argv[7] == "1")
    if len(argv) == 5 and argv[1] == "agent-exec":
        # short form (DESC SOURCE USER): the version from QREXEC_SIM_VERSION, agent messages
        # on stderr
        agent_exec(argv[2], argv[3], argv[4], sim_version(), os.dup(2), fork_server_mode())
    if len(argv) >= 3 and argv[1] == "daemon":
        return Daemon(argv[2]).serve(argv[3:])
    if len(argv) == 6 and argv[1] == "policy-eval":
        # policy-eval SOURCE TARGET SERVICE+ARG QUBES_DIR: print the decision (for tests/tools)
        try:
            _d, service, arg, target = parse_request(argv[4], argv[3])
            actual, user, where = Policy(policy_dirs()).evaluate(
                service, arg, argv[2], target, load_system(argv[5]))
            print(f"allow target={actual} user={user or ''} rule={where}")
            return 0
        except Refused as err:
            print(f"deny {err}")
            return EXIT_REQUEST_REFUSED
    if len(argv) >= 2 and argv[1] == "client":
        return client_main([PROG] + argv[2:])
    print("usage: qrexec_sim.py client|daemon STATE QUBE...|agent-exec DESC SOURCE USER VERSION FD FS|"
          "policy-eval SOURCE TARGET SERVICE+ARG QUBES_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
