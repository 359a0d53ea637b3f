#!/usr/bin/python3
"""A qrexec stand-in for the simulated Qubes (tests/sim/README.md).

Models QubesOS/qubes-core-qrexec (snapshot b2822df, version 4.4.2); every behaviour below names
the upstream file it imitates. Nothing here is upstream code: it is written from reading it.

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

import json
import os
import resource
import pathlib
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
MAX_SERVICE_NAME_LEN = 65000
NAME_MAX = 255
QREXEC_SERVICE_PATH = ("/run/qubes-rpc", "/usr/local/etc/qubes-rpc", "/etc/qubes-rpc")

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
ORPHAN_WAIT = 2.0
# The qube's default_user: qrexec services run as this user unless the policy says user=.
DEFAULT_USER = "user"
MAX_REQUEST_LINE = 70000

PROG = "qrexec-client-vm"


class Refused(Exception):
    """The request is denied (policy or invalid request): exit 126."""


class QrexecProblem(Exception):
    """Any other qrexec failure: exit 125."""


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
        system[p.name] = {"type": qtype, "tags": tags}
    return system


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

def find_service(root, desc):
    """Full descriptor in every directory first, then the bare service name in every directory.

    `root` prefixes each directory ("/" inside a qube, the qube root in flat mode)."""
    service = desc.split("+", 1)[0]
    for name in (desc, service):
        if len(name.encode()) > NAME_MAX:
            continue                                 # find_file(): "cannot possibly exist"
        for d in QREXEC_SERVICE_PATH:
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


def reset_signals():
    # Python ignores SIGPIPE/SIGXFSZ; a service must start with default dispositions.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def agent_exec(desc, source, user):
    """Runs inside the target qube (namespace mode) with fds 0/1/2 already set: become the
    service user, exec the service.

    qrexec-agent.c: the service runs as the policy's user= or the qube's default user ("user"),
    with HOME, USER, LOGNAME and SHELL from its passwd entry and cwd = its home. The sim adds
    XDG_RUNTIME_DIR=/run/user/UID when that directory exists (pam_systemd's doing in a Qubes
    session; an inference, see README)."""
    import pwd                                       # pylint: disable=import-outside-toplevel
    path = find_service("/", desc)
    if path is None:
        print(f"qrexec-agent: Service not found: {desc}", file=sys.stderr)
        os._exit(EXIT_SERVICE_NOT_FOUND)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        print(f"qrexec-agent: no such user {user!r}", file=sys.stderr)
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
    # subreaper of its process tree, so processes it leaves behind are reaped here and their
    # CPU time is part of what the daemon's wait4() sees (benchmarks). Their lifetime is not
    # tied to the call: we wait for them at most ORPHAN_WAIT seconds after the service exits.
    import ctypes                                    # pylint: disable=import-outside-toplevel
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        reset_signals()
        try:
            os.execve(path, service_argv(path, desc), env)
        except FileNotFoundError:
            os._exit(EXIT_SERVICE_NOT_FOUND)
        except OSError as err:
            print(f"qrexec-agent: execve {path}: {err.strerror}", file=sys.stderr)
            os._exit(EXIT_PROBLEM)
    # our copies of the service's stdio must not keep its sockets or stderr pipe open
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _pid, status = os.waitpid(pid, 0)
    deadline = time.monotonic() + ORPHAN_WAIT
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.02)
        except ChildProcessError:
            break
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


def log_stderr(fd, logfile, tag):
    """Copy a service's stderr pipe to its qube's log, one tagged line at a time (like
    journald's `<service>-<source>` identifier under the old multiplexer)."""
    def run():
        with os.fdopen(fd, "rb") as src, open(logfile, "ab", buffering=0) as dst:
            for line in src:
                dst.write(time.strftime("%Y-%m-%dT%H:%M:%S ").encode() + tag + b": " + line
                          + (b"" if line.endswith(b"\n") else b"\n"))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def log_line(logfile, text):
    with open(logfile, "a", encoding="utf-8") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + text + "\n")


# ---------------------------------------------------------------------------------------------
# The client relay (libqrexec/process_io.c, client side, with the agent's half-close)
# ---------------------------------------------------------------------------------------------

BUF = 1 << 16


def _copy(src, dst):
    """Copy src to dst until EOF; return 'eof' or 'dst-gone'.

    Plain read/write, as process_io.c does. Not splice(2): a splice from a pipe into a socket
    that blocks holds the pipe's lock, so the process writing into that pipe blocks even when
    poll() said the pipe was writable (a deadlock with a single-threaded caller such as
    ssh's ProxyCommand handling or Python's communicate())."""
    while True:
        try:
            data = os.read(src, BUF)
        except ConnectionResetError:
            return "eof"
        if not data:
            return "eof"
        view = memoryview(data)
        while view:
            try:
                n = os.write(dst, view)
            except (BrokenPipeError, ConnectionResetError):
                return "dst-gone"
            view = view[n:]


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
          gets shutdown(SHUT_WR) (agent close_stdin on a socket) and our source is closed;
    down: service stdout socket -> caller stdout; at EOF our fd 1 is closed (client
          close_stdin on an inherited fd <= 2) or the local program's socket half-closed.
    When the remote exit status arrives, the caller's input is no longer read (REMOTE_EXITED).
    """

    def __init__(self, up_src, up_dst, down_src, down_dst):
        self.up_src, self.up_dst = up_src, up_dst
        self.down_src, self.down_dst = down_src, down_dst
        self.down_done = threading.Event()
        self.bytes_lock = threading.Lock()

    def start(self):
        threading.Thread(target=self._up, daemon=True).start()
        threading.Thread(target=self._down, daemon=True).start()

    def _up(self):
        try:
            _copy(self.up_src, self.up_dst)
        except OSError:
            pass
        close_stdio(self.up_dst, socket.SHUT_WR)
        close_stdio(self.up_src, socket.SHUT_RD)

    def _down(self):
        try:
            how = _copy(self.down_src, self.down_dst)
        except OSError:
            how = "dst-gone"
        if how == "dst-gone":
            close_stdio(self.down_src, socket.SHUT_RD)   # the service gets EPIPE
        close_stdio(self.down_dst, socket.SHUT_WR)
        self.down_done.set()


def start_local_program(argv):
    """qrexec-client-vm local_program: its stdin/stdout are socketpairs (reference §2.5)."""
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


def flat_call(target, service_desc, local_argv):
    qubes_dir = flat_qubes_dir()
    source = os.environ.get("QREXEC_SIM_SOURCE", "")
    system = load_system(qubes_dir)
    if source not in system or source == "dom0":
        raise QrexecProblem(f"QREXEC_SIM_SOURCE={source!r} is not a qube under {qubes_dir}")
    desc, service, arg, target = parse_request(service_desc, target)
    actual, _user, where = Policy(policy_dirs()).evaluate(service, arg, source, target, system)
    root = os.path.join(qubes_dir, actual)
    logfile = qube_log(root)
    log_line(logfile, f"qrexec: {desc} from {source} allowed by {where}")
    path = find_service(root, desc)
    if path is None:
        log_line(logfile, f"qrexec-agent: Service not found: {desc}")
        return EXIT_SERVICE_NOT_FOUND
    (svc_in, our_in), (svc_out, our_out), (err_r, err_w) = service_fds()
    env = service_env(os.environ, desc, source)
    env["QREXEC_SIM_SOURCE"] = actual        # nested calls made by the service come from it
    env["QREXEC_SIM_ROOT"] = root
    try:
        proc = subprocess.Popen(service_argv(path, desc), stdin=svc_in.fileno(),
                                stdout=svc_out.fileno(), stderr=err_w, env=env, cwd=root,
                                close_fds=True)
    except FileNotFoundError:
        return EXIT_SERVICE_NOT_FOUND
    except OSError as err:
        log_line(logfile, f"qrexec-agent: execve {path}: {err.strerror}")
        return EXIT_PROBLEM
    svc_in.close()
    svc_out.close()
    os.close(err_w)
    logger = log_stderr(err_r, logfile, f"{desc}-{source}".encode())
    code = run_client_relay(our_in.detach(), our_out.detach(), local_argv,
                            lambda: wait_code(os.waitpid(proc.pid, 0)[1]))
    # the service has exited: let its last stderr lines reach the log before we exit (a
    # process it left behind may hold the pipe open, so do not wait for that forever)
    logger.join(timeout=2)
    return code


def qube_log(root):
    d = os.path.join(root, "var", "log", "qubes")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, "qrexec-services.log")


def run_client_relay(svc_in, svc_out, local_argv, wait_remote):
    local_proc = None
    if local_argv:
        local_proc, up_src, down_dst = start_local_program(local_argv)
    else:
        up_src, down_dst = 0, 1
    relay = Relay(up_src, svc_in, svc_out, down_dst)
    relay.start()
    remote = wait_remote()
    # REMOTE_EXITED: stop reading local input; wait for the rest of the service's stdout.
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


def ns_call(target, service_desc, local_argv):
    sock_path = os.path.join(QUBE_SIM_DIR, "qrexec.sock")
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ctl.connect(sock_path)
    except OSError as err:
        raise QrexecProblem(f"cannot connect to the simulated qrexec daemon: {err}") from err
    ctl.sendall(json.dumps({"target": target, "service": service_desc}).encode() + b"\n")
    # first reply carries the two socket ends (SCM_RIGHTS) when the call is allowed
    msg, fds, _flags, _addr = socket.recv_fds(ctl, 4096, 2)
    if not msg:
        raise QrexecProblem("simulated qrexec daemon closed the connection")
    reply = json.loads(msg.split(b"\n", 1)[0])
    if reply.get("result") == "refused":
        raise Refused(reply.get("reason", ""))
    if reply.get("result") == "exit":            # e.g. service not found: no fds
        return reply["code"]
    if reply.get("result") != "ok" or len(fds) != 2:
        raise QrexecProblem(f"bad reply from the simulated qrexec daemon: {reply}")
    svc_in, svc_out = fds
    rest = msg.split(b"\n", 1)[1]

    def wait_remote():
        buf = rest
        while b"\n" not in buf:
            chunk = ctl.recv(4096)
            if not chunk:
                # vchan closed before the exit code: qrexec failure
                return EXIT_PROBLEM
            buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])["code"]

    code = run_client_relay(svc_in, svc_out, local_argv, wait_remote)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        ctl.sendall(json.dumps({"cpu": [usage.ru_utime, usage.ru_stime]}).encode() + b"\n")
    except OSError:
        pass
    return code


def client_main(argv):
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] != "--":
        opt = args.pop(0)
        if opt in ("-t", "-T", "--no-filter-escape-chars-stdout",
                   "--no-filter-escape-chars-stderr", "--filter-escape-chars-stdout",
                   "--filter-escape-chars-stderr"):
            continue             # escape filtering only applies to ttys; not simulated
        if opt.startswith("--buffer-size"):
            if "=" not in opt:
                args.pop(0)
            continue
        print(f"{PROG}: option {opt} is not simulated", file=sys.stderr)
        return 1
    if args and args[0] == "--":
        args.pop(0)
    if len(args) < 2:
        print(f"usage: {PROG} [options] target_vmname service[+arg] [local_program [args]]",
              file=sys.stderr)
        return 1
    target, service_desc, local_argv = args[0], args[1], args[2:]
    if local_argv and not local_argv[0].startswith("/"):
        print(f"{PROG}: local program must be a full path", file=sys.stderr)
        return 1
    try:
        if os.environ.get("QREXEC_SIM_QUBES"):
            return flat_call(target, service_desc, local_argv)
        if os.path.exists(os.path.join(QUBE_SIM_DIR, "qrexec.sock")):
            return ns_call(target, service_desc, local_argv)
        raise QrexecProblem("not inside a simulated qube and QREXEC_SIM_QUBES is not set")
    except Refused as err:
        if os.environ.get("QREXEC_SIM_DEBUG"):
            print(f"{PROG}: {err}", file=sys.stderr)
        print("Request refused", file=sys.stderr)
        return EXIT_REQUEST_REFUSED
    except QrexecProblem as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_PROBLEM


# -- daemon ("dom0") ---------------------------------------------------------------------------

class Daemon:
    """One listening socket per qube; which socket a request arrives on says who sent it."""

    def __init__(self, state):
        self.state = pathlib.Path(state)
        self.qubes_dir = self.state / "roots"
        self.pdirs = [str(self.state / "dom0" / "etc" / "qubes" / "policy.d")]

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
        root = str(self.qubes_dir / actual)
        logfile = qube_log(root)
        (svc_in, our_in), (svc_out, our_out), (err_r, err_w) = service_fds()
        env = service_env({"LANG": "C.UTF-8", "PATH": SERVICE_PATH}, desc, source)
        pid = self.keeper_pid(actual)
        argv = ["nsenter", f"--target={pid}", "--mount", "--net", "--uts", "--",
                "/usr/bin/python3", "-I", f"{QUBE_SIM_LIB}/qrexec_sim.py", "agent-exec",
                desc, source, user]
        proc = subprocess.Popen(argv, stdin=svc_in.fileno(), stdout=svc_out.fileno(),
                                stderr=err_w, env=env, close_fds=True)
        svc_in.close()
        svc_out.close()
        os.close(err_w)
        logger = log_stderr(err_r, logfile, f"{desc}-{source}".encode())
        socket.send_fds(conn, [b'{"result": "ok"}\n'], [our_in.fileno(), our_out.fileno()])
        our_in.close()
        our_out.close()
        _pid, status, usage = os.wait4(proc.pid, 0)
        # as qrexec-agent, send the exit code only after the service's stderr reached EOF
        # (process_io.c waits for all fds); bounded, a leftover process may hold the pipe
        logger.join(timeout=2)
        # CPU of the service and every descendant it waited for (benchmarks read this line)
        self._log(actual, f"qrexec: {desc} from {source} exit {wait_code(status)} "
                  f"cpu {usage.ru_utime:.3f}+{usage.ru_stime:.3f}")
        return wait_code(status)


# -- dom0 as the caller (qvm-run --service in the simulated dom0, tests/sim/qvm_sim.py) -------

ROOT_SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def dom0_call(state, target, service_desc, user):
    """qrexec-client -d TARGET USER:QUBESRPC SERVICE dom0, as qvm-run --service runs it: calls
    made by dom0 are not subject to the policy; the service runs in the target as USER with
    QREXEC_REMOTE_DOMAIN=dom0, its stderr goes to the target's log; returns its exit status."""
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
    logger = log_stderr(err_r, logfile, f"{desc}-dom0".encode())
    code = run_client_relay(our_in.detach(), our_out.detach(), [],
                            lambda: wait_code(os.waitpid(proc.pid, 0)[1]))
    logger.join(timeout=2)
    log_line(logfile, f"qrexec: {desc} from dom0 exit {code}")
    return code


def main(argv):
    name = os.path.basename(argv[0])
    if name == "qrexec-client-vm":
        return client_main(argv)
    if len(argv) == 5 and argv[1] == "agent-exec":
        agent_exec(argv[2], argv[3], argv[4])
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
    print("usage: qrexec_sim.py client|daemon STATE QUBE...|agent-exec DESC SOURCE|"
          "policy-eval SOURCE TARGET SERVICE+ARG QUBES_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
