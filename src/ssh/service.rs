//! sys-backup: `qubes-ssh-service`, the `qubes-borg.Ssh` qrexec service (installed as
//! /usr/libexec/qubes-borg/qubes-ssh-service, run by /etc/qubes-rpc/qubes-borg.Ssh).
//!
//! Reads the request header from the caller, checks it against the root-owned destination
//! configuration, runs OpenSSH with a fixed safe option set, sends the status line and relays
//! borg's stream. Protocol and threat model: docs/PROTOCOL.md.

use super::command;
use super::destination::{self, ConfigError, Destination};
use super::header::{self, HeaderError};
use super::status::{ErrClass, Status, LOG_PREFIX, OK_WIRE};
use crate::agent::forward::{AgentSocket, AgentSocketOptions};
use crate::child;
use crate::exit::{self, Program};
use crate::relay::{self, Fd, Flow};
use crate::stderr_line;
use crate::tempdir::PrivateDir;
use crate::validate;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const PROG: &str = "qubes-ssh-service";
/// The ssh program.
pub const SSH: &str = "/usr/bin/ssh";
/// Default time the caller has to send the whole header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of ssh's stderr is kept to explain a failure.
const STDERR_KEEP: usize = 16 * 1024;
/// After a failed login, how long to wait for the last lines of the calls to the vault (they
/// say whether the vault failed, `agent::fault`); they normally come with the calls' end.
const VAULT_LINES_WAIT: Duration = Duration::from_secs(5);

const HELP: &str = "\
qubes-ssh-service: the qubes-borg.Ssh qrexec service of qubes-borg (runs in sys-backup).

Run by qrexec as /etc/qubes-rpc/qubes-borg.Ssh with the destination NAME as its argument
(qubes-borg.Ssh+NAME). Reads one request header from stdin, looks NAME up in
/etc/qubes-borg/destinations/NAME.conf, runs ssh to that destination only, and relays.
See docs/PROTOCOL.md for the protocol, the configuration format and the threat model.

Environment (set by qrexec):
  QREXEC_SERVICE_ARGUMENT   the destination NAME (also argv[1]; both must agree, valid UTF-8)
  QREXEC_REMOTE_DOMAIN      the calling qube, for the log
  XDG_RUNTIME_DIR           where the per-connection directory goes (else /tmp)
Fixed: /etc/qubes-borg/destinations (root-owned, and every directory above it), /usr/bin/ssh,
30 s for the request header. Under qrexec, --help is a bad destination name like any other.

Exit codes (also sent to the caller in the status line):
";

/// The `--help` text; its exit codes come from `crate::exit`.
pub fn help() -> String {
    format!("{HELP}{}", exit::help(Program::SshService))
}

/// What the service reads from its environment (set by qrexec). Nothing else in the
/// environment changes what it does: paths and limits are fixed (tests put their files at
/// those paths in a mount namespace).
#[derive(Debug, Clone, Default)]
pub struct ServiceEnv {
    /// `QREXEC_SERVICE_ARGUMENT`: the caller's service argument (the destination NAME), as
    /// given (a value that is not UTF-8 is refused, not ignored).
    pub untrusted_service_argument: Option<OsString>,
    /// `QREXEC_REMOTE_DOMAIN`: the calling qube (set by qrexec), for the log.
    pub remote_domain: Option<String>,
    /// `XDG_RUNTIME_DIR`: where the per-connection directory goes (else /tmp).
    pub runtime_dir: Option<String>,
    /// `HOME`, `USER`, `LOGNAME` as set: the only variables ssh gets besides PATH and LC_ALL.
    pub ssh_vars: Vec<(OsString, OsString)>,
}

impl ServiceEnv {
    /// Pick the service's variables out of a process environment (`std::env::vars_os()`).
    /// `QREXEC_REMOTE_DOMAIN` and `XDG_RUNTIME_DIR` that are not valid UTF-8 are treated as
    /// unset; the service argument is kept as given.
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> ServiceEnv {
        let mut env = ServiceEnv::default();
        let mut ssh_vars = Vec::new();
        for (k, v) in vars {
            let text = || v.clone().into_string().ok();
            match k.to_str() {
                Some("QREXEC_SERVICE_ARGUMENT") => env.untrusted_service_argument = Some(v.clone()),
                Some("QREXEC_REMOTE_DOMAIN") => env.remote_domain = text(),
                Some("XDG_RUNTIME_DIR") => env.runtime_dir = text(),
                _ => {}
            }
            if let Some(i) = ["HOME", "USER", "LOGNAME"].iter().position(|n| k == *n) {
                ssh_vars.push((i, k, v));
            }
        }
        ssh_vars.sort_by_key(|(i, _, _)| *i);
        env.ssh_vars = ssh_vars.into_iter().map(|(_, k, v)| (k, v)).collect();
        env
    }
}

/// Prefix of the per-connection directory (`qubes-ssh.PID.RANDOM`, `crate::tempdir`): removed
/// on return, on SIGTERM/SIGINT/SIGHUP (the program calls `tempdir::cleanup_on_signals`), and
/// swept by the next connection if the service was SIGKILLed.
pub const TEMP_PREFIX: &str = "qubes-ssh";

/// Where this connection's known_hosts goes: `$XDG_RUNTIME_DIR` if it is a plain absolute
/// path, else /tmp.
pub fn temp_base(runtime_dir: Option<&str>) -> PathBuf {
    match runtime_dir {
        Some(d) if d.starts_with('/') && validate::path_word("dir", d).is_ok() => PathBuf::from(d),
        _ => PathBuf::from("/tmp"),
    }
}

/// The outcome of one connection, for the status line, the log and the exit code.
struct Failure {
    code: u8,
    class: ErrClass,
    message: String,
}

fn fail(code: u8, class: ErrClass, message: impl Into<String>) -> Failure {
    Failure {
        code,
        class,
        message: message.into(),
    }
}

/// Write all of `bytes` to `fd`, waiting if the fd is non-blocking.
fn write_all_fd(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> nix::Result<()> {
    use nix::errno::Errno;
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                nix::poll::poll(&mut p, PollTimeout::from(10_000u16))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The destination name: argv[1] (qrexec's argument); QREXEC_SERVICE_ARGUMENT must agree.
fn destination_name(
    untrusted_args: &[OsString],
    untrusted_env: Option<&OsString>,
) -> Result<String, Failure> {
    let refuse = |m: &str| fail(exit::REFUSED, ErrClass::Refused, m);
    let untrusted_env = match untrusted_env.map(|v| v.to_str()) {
        None => None,
        Some(Some(v)) => Some(v),
        Some(None) => return Err(refuse("QREXEC_SERVICE_ARGUMENT is not valid UTF-8")),
    };
    let untrusted_arg = match untrusted_args {
        [] => untrusted_env.filter(|s| !s.is_empty()).map(str::to_string),
        [a] => Some(
            a.clone()
                .into_string()
                .map_err(|_| refuse("destination name is not valid UTF-8"))?,
        ),
        _ => return Err(refuse("more than one service argument")),
    };
    let Some(untrusted_name) = untrusted_arg else {
        return Err(refuse(
            "no destination name: call qubes-borg.Ssh+NAME (repository ssh://NAME/./repo)",
        ));
    };
    if let Some(env) = untrusted_env {
        if env != untrusted_name {
            return Err(refuse("argv[1] and QREXEC_SERVICE_ARGUMENT differ"));
        }
    }
    validate::name("destination name", &untrusted_name).map_err(|e| {
        fail(
            exit::REFUSED,
            ErrClass::Refused,
            format!(
                "{e} ('{}')",
                validate::printable(untrusted_name.as_bytes(), 80)
            ),
        )
    })?;
    Ok(untrusted_name)
}

/// Copy ssh's stderr to ours, one sanitized, bounded line at a time
/// ([`crate::stderr_line`]), and keep its first `STDERR_KEEP` bytes and its last line that is
/// not one of borg serve's JSON log records (ssh's own last word) to explain a failure.
///
/// Under qrexec our stderr goes to sys-backup's journal and to the caller, whose borg prints
/// each line as `Remote: ...` (a borg serve log record, a JSON line, is decoded by borg): so
/// the lines pass unprefixed, only a line that could pass for our own log line gets `ssh: `
/// in front.
fn drain_stderr(src: std::process::ChildStderr) -> (Vec<u8>, String) {
    struct Keep<R> {
        inner: R,
        kept: Vec<u8>,
    }
    impl<R: Read> Read for Keep<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            let room = STDERR_KEEP.saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&buf[..n.min(room)]);
            Ok(n)
        }
    }
    let mut src = Keep {
        inner: src,
        kept: Vec::new(),
    };
    let mut last = String::new();
    stderr_line::copy_lines(&mut src, std::io::stderr(), |l| {
        if !l.starts_with('{') && !l.trim().is_empty() {
            last.clone_from(&l);
        }
        Some(if l.starts_with(PROG) || l.starts_with(LOG_PREFIX) {
            format!("ssh: {l}")
        } else {
            l
        })
    });
    (src.kept, last)
}

struct Outcome {
    code: u8,
    up: u64,
    down: u64,
    /// `None`: OK status sent; `Some`: what went wrong (sent as the ERR line unless
    /// `stream_may_have_started`).
    failure: Option<Failure>,
    /// The relay failed after it may already have sent OK and data: an ERR line now would land
    /// inside borg's stream, so the failure is only logged and the exit status carries it.
    stream_may_have_started: bool,
}

/// Serve one connection: `stdin`/`stdout` are the caller's (qrexec's) stream, `args` the
/// service arguments (argv without argv\[0\]). Sends the status line, relays, writes one log
/// line to `log` and returns the exit status (also sent in an `ERR` line).
pub fn serve(
    untrusted_args: &[OsString],
    env: &ServiceEnv,
    stdin: OwnedFd,
    stdout: OwnedFd,
    log: &mut dyn Write,
) -> u8 {
    let source = log_source(env);
    let mut name_for_log = String::from("-");
    let outcome = run(untrusted_args, env, stdin, &stdout, &mut name_for_log);
    let (result, detail) = match &outcome.failure {
        None => ("ok".to_string(), String::new()),
        Some(f) => (f.class.as_str().to_string(), format!(": {}", f.message)),
    };
    if let Some(f) = outcome
        .failure
        .as_ref()
        .filter(|_| !outcome.stream_may_have_started)
    {
        // Best effort: the caller may be gone (early close, timeout).
        let _ = write_all_fd(
            stdout.as_fd(),
            &Status::err(f.code, f.class, &f.message).wire(),
        );
    }
    drop(stdout);
    let _ = writeln!(
        log,
        "{PROG}: source={source} destination={name_for_log} outcome={result} exit={} up={} down={}{detail}",
        outcome.code, outcome.up, outcome.down
    );
    outcome.code
}

/// The calling qube as the log shows it (printable, bounded).
pub fn log_source(env: &ServiceEnv) -> String {
    validate::printable(
        env.remote_domain.as_deref().unwrap_or_default().as_bytes(),
        64,
    )
}

fn refused(f: Failure) -> Outcome {
    Outcome {
        code: f.code,
        up: 0,
        down: 0,
        failure: Some(f),
        stream_may_have_started: false,
    }
}

fn run(
    untrusted_args: &[OsString],
    env: &ServiceEnv,
    stdin: OwnedFd,
    stdout: &OwnedFd,
    log_name: &mut String,
) -> Outcome {
    let name = match destination_name(untrusted_args, env.untrusted_service_argument.as_ref()) {
        Ok(n) => n,
        Err(f) => return refused(f),
    };
    *log_name = name.clone();

    // 1. The header: bounded, timed, not one byte past its LF.
    let untrusted_line = header::read_line(stdin.as_fd(), HEADER_TIMEOUT);
    let request = match untrusted_line.and_then(|l| header::decode(&l)) {
        Ok(r) => r,
        Err(e @ HeaderError::Argv(_)) => {
            return refused(fail(exit::REFUSED, ErrClass::Refused, e.to_string()))
        }
        Err(e) => return refused(fail(exit::PROTOCOL, ErrClass::Header, e.to_string())),
    };

    // 2. The destination, from root-owned configuration only (file, directory and every
    // directory above it).
    let dir = PathBuf::from(destination::DEFAULT_DIR);
    let dest = match destination::load(&dir, &name) {
        Ok(d) => d,
        Err(e @ ConfigError::NotFound { .. }) => {
            return refused(fail(
                exit::UNKNOWN_DESTINATION,
                ErrClass::UnknownDestination,
                e.to_string(),
            ))
        }
        Err(e) => return refused(fail(exit::CONFIG, ErrClass::Config, e.to_string())),
    };
    let config_path = destination::path_for(&dir, &name);
    let remote_command = match dest.remote_command(&request) {
        Ok(c) => c,
        Err(r) => return refused(fail(exit::REFUSED, ErrClass::Refused, r.0)),
    };

    // 3. Private known_hosts (and agent socket) for this connection.
    let tmp = match PrivateDir::create(&temp_base(env.runtime_dir.as_deref()), TEMP_PREFIX) {
        Ok(t) => t,
        Err(e) => {
            return refused(fail(
                exit::OSERR,
                ErrClass::Internal,
                format!("cannot create a temporary directory: {e}"),
            ))
        }
    };
    let known_hosts = tmp.path().join("known_hosts");
    if let Err(e) = write_private(&known_hosts, dest.known_hosts(&dest.name).as_bytes()) {
        return refused(fail(
            exit::OSERR,
            ErrClass::Internal,
            format!("cannot write {}: {e}", known_hosts.display()),
        ));
    }
    // Split SSH: a private agent socket for this connection only, forwarding to
    // qubes-borg.SshAgent+KEYSET (dom0 policy picks the vault). Dropped (socket removed) when this
    // function returns, after ssh has exited.
    let agent = match &dest.agent {
        Some(set) => match AgentSocket::start(set, &AgentSocketOptions::default()) {
            Ok(a) => Some(a),
            Err(e) => {
                return refused(fail(
                    exit::AGENT,
                    ErrClass::Agent,
                    format!("split-SSH key set '{set}' unavailable in sys-backup: {e}"),
                ))
            }
        },
        None => None,
    };

    // 4. ssh, without a shell, fixed options.
    let Some(argv) = command::argv(
        Path::new(SSH),
        &dest,
        &known_hosts,
        agent.as_ref().map(|a| a.path()),
        &remote_command,
    ) else {
        return refused(fail(
            exit::SOFTWARE,
            ErrClass::Internal,
            "temporary path is not usable in an ssh option",
        ));
    };
    run_ssh(
        &argv,
        &env.ssh_vars,
        &dest,
        &config_path,
        agent,
        stdin,
        stdout,
    )
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

fn run_ssh(
    argv: &[OsString],
    ssh_vars: &[(OsString, OsString)],
    dest: &Destination,
    config_path: &Path,
    agent: Option<AgentSocket>,
    stdin: OwnedFd,
    stdout: &OwnedFd,
) -> Outcome {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in ssh_vars {
        cmd.env(key, value);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return refused(fail(
                exit::OSERR,
                ErrClass::Internal,
                format!("cannot run {}: {e}", Path::new(&argv[0]).display()),
            ))
        }
    };
    let (cin, cout, cerr) = (
        child.stdin.take().expect("piped"),
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let stderr_thread = std::thread::spawn(move || drain_stderr(cerr));

    let up = Flow::new(Fd::Owned(stdin), Fd::Owned(OwnedFd::from(cin)));
    let mut down = Flow::new(Fd::Owned(OwnedFd::from(cout)), stdout.as_fd());
    down.preamble = OK_WIRE;
    down.eof_to_dst = false; // an ERR line may still have to go out
    let stats = relay::relay(up, down);

    let code = match child.wait() {
        Ok(st) => child::status_code(st).unwrap_or(exit::SOFTWARE),
        Err(_) => exit::SOFTWARE,
    };
    let (kept, last_line) = stderr_thread.join().unwrap_or_default();
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                code: exit::SOFTWARE,
                up: 0,
                down: 0,
                failure: Some(fail(
                    exit::SOFTWARE,
                    ErrClass::Internal,
                    format!("relay: {e}"),
                )),
                stream_may_have_started: true,
            }
        }
    };
    let mut outcome = Outcome {
        code,
        up: stats.up_bytes,
        down: stats.down_bytes,
        failure: None,
        stream_may_have_started: false,
    };
    if stats.down_bytes == 0 {
        // ssh wrote nothing, so no status line went out yet.
        if code == 0 {
            let _ = write_all_fd(stdout.as_fd(), OK_WIRE);
        } else {
            let (class, message) = command::classify(code, &kept, dest, config_path);
            // A login that failed because the vault could not lend the key is a vault fault,
            // not a key the server does not know (`agent::fault`).
            let vault = match (class, agent, dest.agent.as_deref()) {
                (ErrClass::Auth | ErrClass::Ssh, Some(a), Some(set)) => {
                    a.close_and_fault(VAULT_LINES_WAIT).map(|f| f.message(set))
                }
                _ => None,
            };
            outcome.failure = Some(match vault {
                Some(message) => {
                    outcome.code = exit::AGENT;
                    fail(exit::AGENT, ErrClass::Vault, message)
                }
                None => fail(code, class, message),
            });
        }
    } else if code == 255 {
        // ssh failed during the session: the status line (OK) went out long ago, so the reason
        // goes into the log line, which the client reads and shows (docs/PROTOCOL.md).
        if let Some((class, message)) = command::classify_lost(&last_line, dest) {
            outcome.failure = Some(fail(code, class, message));
            outcome.stream_may_have_started = true;
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn the_environment_is_read_once_and_ssh_gets_only_home_user_logname() {
        let env = ServiceEnv::from_vars(vars(&[
            ("LOGNAME", "l"),
            ("QREXEC_SERVICE_ARGUMENT", "nas"),
            ("QREXEC_REMOTE_DOMAIN", "sys-backup-mnt"),
            ("SSH_AUTH_SOCK", "/tmp/evil"),
            ("HOME", "/home/user"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            // Former test-only overrides: read by nothing.
            ("QUBES_SSH_SERVICE_CONFIG_DIR", "/tmp/evil"),
            ("QUBES_SSH_SERVICE_SSH", "/tmp/evil-ssh"),
            ("QUBES_SSH_SERVICE_HEADER_TIMEOUT_MS", "1"),
        ]));
        assert_eq!(
            env.untrusted_service_argument.as_deref(),
            Some(std::ffi::OsStr::new("nas"))
        );
        assert_eq!(log_source(&env), "sys-backup-mnt");
        assert_eq!(env.runtime_dir.as_deref(), Some("/run/user/1000"));
        assert_eq!(
            env.ssh_vars,
            vars(&[("HOME", "/home/user"), ("LOGNAME", "l")])
        );
    }

    #[test]
    fn the_destination_name_comes_from_argv_or_the_environment_and_both_must_agree() {
        let name = |a: &[&str], e: Option<&str>| {
            let a: Vec<OsString> = a.iter().map(OsString::from).collect();
            let e = e.map(OsString::from);
            destination_name(&a, e.as_ref()).map_err(|f| (f.code, f.message))
        };
        assert_eq!(name(&["nas"], None), Ok("nas".to_string()));
        assert_eq!(name(&[], Some("nas")), Ok("nas".to_string()));
        assert_eq!(name(&["nas"], Some("nas")), Ok("nas".to_string()));
        for (a, e) in [
            (&["nas"][..], Some("other")),
            (&[][..], None),
            (&[][..], Some("")),
            (&["a", "b"][..], None),
            (&["../etc"][..], None),
            (&["_x"][..], None),
        ] {
            let r = name(a, e);
            assert!(matches!(r, Err((exit::REFUSED, _))), "{a:?} {e:?}: {r:?}");
        }
        // A service argument that is not UTF-8 is refused, not taken as absent.
        use std::os::unix::ffi::OsStrExt;
        let bad = OsString::from(std::ffi::OsStr::from_bytes(b"n\xffas"));
        for a in [vec![], vec![OsString::from("nas")]] {
            let r = destination_name(&a, Some(&bad)).map_err(|f| (f.code, f.message));
            assert_eq!(
                r,
                Err((
                    exit::REFUSED,
                    "QREXEC_SERVICE_ARGUMENT is not valid UTF-8".to_string()
                ))
            );
        }
    }
}
