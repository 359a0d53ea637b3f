//! sys-backup-mnt: `qubes-ssh-client`, borg's `BORG_RSH`. Vets borg's command line, calls
//! `qrexec-client-vm TARGET qubes-borg.Ssh+NAME`, sends the request header and relays, reading the
//! service's status line first. Protocol: docs/PROTOCOL.md.

use super::argv::{self, BorgArgv};
use super::header;
use super::status::{BeforeMark, ErrClass, Line, Status, LOG_PREFIX, MAX_BEFORE_MARK, MAX_STATUS};
use crate::child;
use crate::exit::{self, Program};
use crate::relay::{self, Fd, FirstLine, Flow, LineVerdict, RelayError};
use crate::stderr_line;
use crate::validate;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

pub const PROG: &str = "qubes-ssh-client";
pub const SERVICE: &str = "qubes-borg.Ssh";
pub const DEFAULT_QREXEC: &str = "/usr/bin/qrexec-client-vm";
pub const DEFAULT_TARGET: &str = "@default";
/// How long the client waits for sys-backup's status line by default. It comes once ssh is
/// logged in and borg serve answered (ssh's ConnectTimeout is 30 s), or after a dom0
/// confirmation dialog for an admin key set, which waits for the user.
pub const DEFAULT_STATUS_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest `--status-timeout` (a day).
pub const MAX_STATUS_TIMEOUT_SECS: u64 = 86_400;

const HELP: &str = "\
qubes-ssh-client: borg's ssh replacement in a network-less qube (qubes-borg).

Usage (set by borg, not typed):
  export BORG_RSH=qubes-ssh-client      # or: BORG_RSH='qubes-ssh-client --target=sys-backup'
  borg create ssh://NAME/./repo::archive ...
borg then runs: qubes-ssh-client [-p PORT] [USER@]NAME REMOTE_PATH serve [OPTIONS]

NAME is a destination configured in sys-backup (/etc/qubes-borg/destinations/NAME.conf). The
call goes to qrexec-client-vm TARGET qubes-borg.Ssh+NAME; the dom0 policy decides where it lands.
Host, user, port, remote borg path and keys come from sys-backup's configuration; a user, port
or remote path in the repository URL must agree with it (better: leave them out).

Options (before borg's words):
  --target=QUBE     qrexec target (default @default; env QUBES_SSH_CLIENT_TARGET)
  --status-timeout=SECONDS
                    give up (exit 76) when sys-backup sent no status line within SECONDS
                    (1-86400, default 300: covers ssh's 30 s connect timeout and a dom0
                    confirmation dialog for an admin key set)
  --help, --version
Environment:
  QUBES_SSH_CLIENT_TARGET   qrexec target, as --target
qrexec-client-vm is /usr/bin/qrexec-client-vm.

Exit codes:
";

/// The `--help` text; its exit codes come from `crate::exit`.
pub fn help() -> String {
    format!("{HELP}{}", exit::help(Program::SshClient))
}

/// How long an error line stays alone on stderr before stdout's EOF (see `hold_before_eof`).
/// borg's poll loop wakes as soon as stderr is readable, so this only has to cover scheduling.
const STDERR_GRACE_MS: u64 = 500;

/// What the command line asks for.
pub enum Cli {
    Run(Request),
    Help,
    Version,
}

/// A vetted call: the qrexec target and borg's command line.
pub struct Request {
    pub target: String,
    pub argv: BorgArgv,
    /// Longest wait for the status line.
    pub status_timeout: Duration,
}

/// The command line was refused (exit code `exit::USAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; expected BORG_RSH=qubes-ssh-client with a repository ssh://NAME/./repo (see --help)",
            self.0
        )
    }
}

impl std::error::Error for UsageError {}

/// The qrexec target: `@default`, `@dispvm`, `@dispvm:NAME` or a qube name.
fn check_target(t: &str) -> Result<(), String> {
    let vm = |s: &str| validate::name("target qube", s).map_err(|e| e.to_string());
    match t {
        "@default" | "@dispvm" => Ok(()),
        _ if t.starts_with("@dispvm:") => vm(&t["@dispvm:".len()..]),
        _ if t.len() > 31 => Err("target qube name is longer than 31 characters".into()),
        _ => vm(t),
    }
}

/// Parse our own options (all `--long` words, first; borg's words never start so), then borg's
/// words. `env_target` is `QUBES_SSH_CLIENT_TARGET`, used when there is no `--target=`.
pub fn parse_cli(args: Vec<OsString>, env_target: Option<String>) -> Result<Cli, UsageError> {
    let mut target = None;
    let mut status_timeout = DEFAULT_STATUS_TIMEOUT;
    let mut words = Vec::with_capacity(args.len());
    for (i, a) in args.into_iter().enumerate() {
        let a = a
            .into_string()
            .map_err(|_| UsageError(format!("refusing word {}: not valid UTF-8", i + 1)))?;
        words.push(a);
    }
    let mut start = 0;
    while let Some(w) = words.get(start) {
        if w == "--help" {
            return Ok(Cli::Help);
        } else if w == "--version" {
            return Ok(Cli::Version);
        } else if let Some(t) = w.strip_prefix("--target=") {
            target = Some(t.to_string());
        } else if let Some(t) = w.strip_prefix("--status-timeout=") {
            let ok = !t.is_empty() && t.len() <= 5 && t.bytes().all(|b| b.is_ascii_digit());
            match t.parse::<u64>() {
                Ok(n @ 1..=MAX_STATUS_TIMEOUT_SECS) if ok && !t.starts_with('0') => {
                    status_timeout = Duration::from_secs(n)
                }
                _ => {
                    return Err(UsageError(format!(
                        "--status-timeout needs a number of seconds from 1 to {MAX_STATUS_TIMEOUT_SECS}"
                    )))
                }
            }
        } else {
            break;
        }
        start += 1;
    }
    let argv = argv::parse(&words[start..]).map_err(|e| UsageError(e.to_string()))?;
    let target = target
        .or(env_target)
        .unwrap_or_else(|| DEFAULT_TARGET.to_string());
    check_target(&target).map_err(UsageError)?;
    Ok(Cli::Run(Request {
        target,
        argv,
        status_timeout,
    }))
}

/// Why a call failed; `exit_code` is the client's exit status.
#[derive(Debug)]
pub enum ClientError {
    /// qrexec-client-vm could not be started.
    Start {
        program: PathBuf,
        err: std::io::Error,
    },
    /// Waiting for qrexec-client-vm failed.
    Wait(std::io::Error),
    /// The service sent a line that is not a status line.
    BadStatus { call: String, message: String },
    /// The service refused the request or ssh failed (the `ERR` line).
    Service {
        name: String,
        code: u8,
        message: String,
    },
    /// No byte came back: qrexec-client-vm's own exit code says why.
    Qrexec {
        code: u8,
        target: String,
        call: String,
    },
    /// The relay failed.
    Relay { call: String, err: RelayError },
    /// The service ended without a status line.
    NoStatus { call: String, code: u8 },
    /// qrexec-client-vm exited 255 and the service's last log line never came: the connection
    /// closed before an exit status (the target qube stopped or its qrexec agent died).
    Lost { call: String, target: String },
    /// No status line came within the status timeout.
    StatusTimeout { call: String, secs: u64 },
    /// The session ran, then ssh in sys-backup failed (exit 255); the service's log line says
    /// why (connection lost: keep-alive timeout, closed, reset).
    SessionLost {
        name: String,
        code: u8,
        message: String,
    },
}

impl ClientError {
    /// The exit code of `qubes-ssh-client` for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Start { .. } => exit::OSERR,
            ClientError::Wait(_) => exit::SOFTWARE,
            ClientError::Service { code, .. } | ClientError::SessionLost { code, .. } => *code,
            ClientError::Qrexec { code, .. } => match *code {
                exit::QREXEC_REFUSED | exit::QREXEC_FAILED | exit::QREXEC_NOT_FOUND => *code,
                _ => exit::PROTOCOL,
            },
            ClientError::BadStatus { .. }
            | ClientError::Relay { .. }
            | ClientError::NoStatus { .. }
            | ClientError::StatusTimeout { .. } => exit::PROTOCOL,
            ClientError::Lost { .. } => exit::QREXEC_LOST,
        }
    }

    /// Whether the message must be readable on stderr before borg sees stdout's EOF (every
    /// error after qrexec-client-vm started; see `hold_before_eof`).
    pub fn before_eof(&self) -> bool {
        !matches!(self, ClientError::Start { .. })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Start { program, err } => {
                write!(f, "cannot run {}: {err}", program.display())
            }
            ClientError::Wait(e) => write!(f, "waiting for qrexec-client-vm: {e}"),
            ClientError::BadStatus { call, message } => write!(f, "{call}: {message}"),
            ClientError::Service { name, message, .. }
            | ClientError::SessionLost { name, message, .. } => write!(f, "{name}: {message}"),
            ClientError::Qrexec { code, target, call } => {
                f.write_str(&qrexec_message(*code, target, call))
            }
            ClientError::Relay { call, err } => write!(f, "{call}: {err}"),
            ClientError::NoStatus { call, code } => write!(
                f,
                "{call}: the service ended without a status line (exit {code})"
            ),
            ClientError::Lost { call, target } => write!(
                f,
                "{call}: the qrexec connection to the target qube ({target}) was lost before the service ended: the qube stopped or crashed, or its qrexec agent died (not an ssh failure); check that the qube runs and its journal"
            ),
            ClientError::StatusTimeout { call, secs } => write!(
                f,
                "{call}: no status line from sys-backup within {secs} s; gave up (see sys-backup's journal; --status-timeout=SECONDS waits longer)"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// Make the call: run `qrexec` (qrexec-client-vm) for `req`, send the header, relay `stdin` and
/// `stdout` (borg's pipes) through it, reading the service's status line first. Returns the
/// exit status to pass on (the remote borg serve's, as ssh reports it).
///
/// Both stay open when this returns: after an error the caller prints it and holds (see
/// `hold_before_eof`) before closing them. A closed stdin would fail borg's next write with
/// EPIPE, and borg (still sending during a backup) would end on that before it read the line.
pub fn run(
    req: &Request,
    qrexec: &Path,
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
) -> Result<u8, ClientError> {
    let name = req.argv.name.clone();
    let call = format!("{SERVICE}+{name}");
    let mut child = Command::new(qrexec)
        .arg(&req.target)
        .arg(&call)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| ClientError::Start {
            program: qrexec.to_path_buf(),
            err,
        })?;
    let mut cin = child.stdin.take().expect("piped");
    let cout = child.stdout.take().expect("piped");
    let cerr = child.stderr.take().expect("piped");

    // qrexec delivers the service's stderr (ssh's and borg serve's messages, the service's
    // own log line last) on qrexec-client-vm's stderr: pass it on to borg one sanitized line
    // at a time; the service's log line only says that the service ended (qrexec sends the exit
    // status after all of it), its content is the ERR line's or of no interest.
    let service_log: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let ended = Arc::clone(&service_log);
    let stderr_thread = std::thread::spawn(move || {
        stderr_line::copy_lines(cerr, std::io::stderr(), |line| {
            if line.starts_with(LOG_PREFIX) {
                *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
                None
            } else {
                Some(line)
            }
        })
    });

    // The header goes out first; if the service is gone already, the status (or qrexec's
    // exit code) says why, so a write error here is not reported by itself.
    let _ = cin.write_all(&header::encode(&req.argv));

    // The status line must come within the timeout: a timer fd stops the relay otherwise, and
    // the status line (after the mark) disarms it.
    let timer = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    )
    .and_then(|t| {
        t.set(
            Expiration::OneShot(TimeSpec::from_duration(req.status_timeout)),
            TimerSetTimeFlags::empty(),
        )
        .map(|_| t)
    })
    .map_err(|e| ClientError::Wait(std::io::Error::from(e)))?;
    let mut status: Option<Status> = None;
    let mut bad_line: Option<String> = None;
    // Before the mark: whatever the target's login scripts printed (shown, bounded), then the
    // mark, then the status line (docs/PROTOCOL.md).
    let mut marked = false;
    let mut before_mark = BeforeMark::default();
    let mut on_line = |untrusted_line: &[u8]| {
        if !marked {
            let Some(kind) = before_mark.line(untrusted_line) else {
                bad_line = Some(format!(
                    "more than {MAX_BEFORE_MARK} bytes came before the status line (login scripts in the target qube printing?)"
                ));
                return LineVerdict::Stop;
            };
            match kind {
                Line::Blank => {}
                Line::Mark => marked = true,
                Line::Other => {
                    let line = untrusted_line.strip_suffix(b"\n").unwrap_or(untrusted_line);
                    let _ = writeln!(
                        std::io::stderr(),
                        "{PROG}: {name}: the target printed before the service started (login scripts?): {}",
                        stderr_line::sanitize(line)
                    );
                }
            }
            return LineVerdict::Skip;
        }
        let _ = timer.unset(); // the status line came: no more time limit
        match Status::decode(untrusted_line) {
            Ok(Status::Ok) => {
                status = Some(Status::Ok);
                LineVerdict::Forward
            }
            Ok(s) => {
                status = Some(s);
                LineVerdict::Stop
            }
            Err(e) => {
                bad_line = Some(e.to_string());
                LineVerdict::Stop
            }
        }
    };
    let up = Flow::new(stdin, Fd::Owned(OwnedFd::from(cin)));
    let mut down = Flow::new(Fd::Owned(OwnedFd::from(cout)), stdout);
    down.first_line = Some(FirstLine {
        max: MAX_STATUS,
        on_line: &mut on_line,
    });
    let result = relay::relay_with(
        up,
        down,
        relay::Options {
            stop: Some(timer.as_fd()),
        },
    );
    if matches!(result, Err(RelayError::Interrupted)) && status.is_none() && bad_line.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ClientError::StatusTimeout {
            call,
            secs: req.status_timeout.as_secs(),
        });
    }

    let code = match child.wait() {
        Ok(st) => child::status_code(st).unwrap_or(exit::SOFTWARE),
        Err(e) => return Err(ClientError::Wait(e)),
    };
    // qrexec-client-vm has exited: its stderr is at EOF, every line of it is out
    let _ = stderr_thread.join();
    let service_log = service_log.lock().unwrap_or_else(|p| p.into_inner()).take();
    let lost = code == exit::QREXEC_LOST && service_log.is_none();

    if let Some(message) = bad_line {
        return Err(ClientError::BadStatus { call, message });
    }
    if lost && !matches!(status, Some(Status::Err { .. })) {
        return Err(ClientError::Lost {
            call,
            target: req.target.clone(),
        });
    }
    match (result, status) {
        (Ok(_), Some(Status::Ok)) => match service_log.as_deref().and_then(session_lost) {
            Some(message) if code == 255 => Err(ClientError::SessionLost {
                name,
                code,
                message,
            }),
            _ => Ok(code),
        },
        (_, Some(Status::Err { code, message, .. })) => Err(ClientError::Service {
            name,
            code,
            message,
        }),
        (Err(RelayError::LineEof { got: 0, .. }), None) => Err(ClientError::Qrexec {
            code,
            target: req.target.clone(),
            call,
        }),
        (Err(err), _) => Err(ClientError::Relay { call, err }),
        (Ok(_), None) => Err(ClientError::NoStatus { call, code }),
    }
}

/// The reason in the service's log line (its last stderr line, already sanitized) when ssh
/// failed during the session: `qubes-ssh-service: source=Q destination=N
/// outcome=connection-lost exit=255 up=U down=D: MESSAGE` gives MESSAGE (bounded).
pub fn session_lost(untrusted_log_line: &str) -> Option<String> {
    let rest = untrusted_log_line.strip_prefix(LOG_PREFIX)?;
    let (fields, untrusted_message) = rest.split_once(": ")?;
    let class = ErrClass::ConnectionLost.as_str();
    if !fields
        .split(' ')
        .any(|f| f.strip_prefix("outcome=") == Some(class))
    {
        return None;
    }
    Some(validate::printable(untrusted_message.as_bytes(), 300))
}

/// Give borg time to read an error line on `stderr` while its stdout pipe is still open (call
/// after printing the line, before closing stdout).
///
/// borg 1.x polls ssh's stdout and stderr together and, when both are readable at once,
/// handles stdout's EOF first and stops ("Connection closed by remote host") without ever
/// printing the stderr line (`borgbackup/borg:src/borg/remote.py`, `call_many`: the loop over
/// `select()`'s readable fds, stdout before stderr). So the line must be readable on its own
/// for a moment before stdout closes. Only when stderr is a pipe or socket (a program reads it).
pub fn hold_before_eof(stderr: BorrowedFd<'_>) {
    let is_stream = nix::sys::stat::fstat(stderr.as_fd())
        .map(|st| {
            let fmt = st.st_mode & libc::S_IFMT;
            fmt == libc::S_IFIFO || fmt == libc::S_IFSOCK
        })
        .unwrap_or(false);
    if is_stream {
        std::thread::sleep(std::time::Duration::from_millis(STDERR_GRACE_MS));
    }
}

/// Explain qrexec-client-vm's own exit codes (qubes-core-qrexec at b2822df and v4.2.25:
/// libqrexec/qrexec.h; 126 from daemon/qrexec-daemon.c reap_children() for a policy denial and
/// for a target qubesd cannot start alike; 125 only from the target's agent; 1 and 2 from
/// agent/qrexec-client-vm.c itself).
fn qrexec_message(code: u8, target: &str, call: &str) -> String {
    match code {
        exit::QREXEC_REFUSED => format!(
            "qrexec refused {call} from this qube (target {target}): either the dom0 policy does not allow it or the target qube could not be started (qrexec does not say which); check dom0's /etc/qubes/policy.d and that the target qube starts (qvm-start, dom0's journal)"
        ),
        exit::QREXEC_FAILED => format!(
            "the qrexec agent of the target qube ({target}) could not start {call} (service user, PAM or exec failure); see that qube's journal"
        ),
        exit::QREXEC_NOT_FOUND => format!(
            "the target qube has no {} service: install qubes-borg in sys-backup's template",
            call.split('+').next().unwrap_or(call)
        ),
        1 | 2 => format!(
            "qrexec-client-vm failed in this qube (exit {code}, its message is above): is qrexec working here?"
        ),
        _ => format!(
            "{call} closed the connection without a status line (qrexec-client-vm exit {code}); see sys-backup's journal"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn our_options_come_before_borgs_words_and_the_environment_is_the_fallback() {
        let borg = ["nas", "borg", "serve"];
        let Ok(Cli::Run(r)) = parse_cli(args(&borg), None) else {
            panic!("plain call refused")
        };
        assert_eq!(
            (r.target.as_str(), r.argv.name.as_str()),
            ("@default", "nas")
        );
        let Ok(Cli::Run(r)) = parse_cli(args(&borg), Some("sys-backup".into())) else {
            panic!("env target refused")
        };
        assert_eq!(r.target, "sys-backup");
        let with_flag = ["--target=@dispvm:backup-dvm", "nas", "borg", "serve"];
        let Ok(Cli::Run(r)) = parse_cli(args(&with_flag), Some("sys-backup".into())) else {
            panic!("--target refused")
        };
        assert_eq!(r.target, "@dispvm:backup-dvm");
        assert!(matches!(
            parse_cli(args(&["--help", "x"]), None),
            Ok(Cli::Help)
        ));
        assert!(matches!(
            parse_cli(args(&["--version"]), None),
            Ok(Cli::Version)
        ));
    }

    #[test]
    fn status_timeout_defaults_to_300_s_and_is_bounded() {
        let borg = ["nas", "borg", "serve"];
        let Ok(Cli::Run(r)) = parse_cli(args(&borg), None) else {
            panic!("plain call refused")
        };
        assert_eq!(r.status_timeout, Duration::from_secs(300));
        for (t, secs) in [("1", 1), ("600", 600), ("86400", 86_400)] {
            let a = [&format!("--status-timeout={t}")[..], "nas", "borg", "serve"];
            let Ok(Cli::Run(r)) = parse_cli(args(&a), None) else {
                panic!("{t} refused")
            };
            assert_eq!(r.status_timeout, Duration::from_secs(secs));
        }
        for t in [
            "0",
            "",
            "86401",
            "-1",
            "+5",
            "010",
            "1e3",
            "99999999999999999999",
        ] {
            let a = [&format!("--status-timeout={t}")[..], "nas", "borg", "serve"];
            assert!(parse_cli(args(&a), None).is_err(), "{t:?} accepted");
        }
    }

    #[test]
    fn bad_targets_and_words_are_usage_errors_that_say_what_to_do() {
        for target in ["-x", "a;b", "_x", &"q".repeat(32), "@dispvm:", "@anyvm"] {
            let e = parse_cli(args(&["nas", "borg", "serve"]), Some(target.into()))
                .err()
                .unwrap_or_else(|| panic!("target {target:?} accepted"));
            assert!(e.to_string().ends_with("(see --help)"), "{e}");
        }
        let e = parse_cli(args(&["-oProxyCommand=x", "nas", "borg", "serve"]), None);
        assert!(e.is_err());
    }

    #[test]
    fn qrexec_codes_keep_their_number_and_anything_else_is_a_protocol_error() {
        let q = |code| ClientError::Qrexec {
            code,
            target: "@default".into(),
            call: "qubes-borg.Ssh+nas".into(),
        };
        for code in [
            exit::QREXEC_FAILED,
            exit::QREXEC_REFUSED,
            exit::QREXEC_NOT_FOUND,
        ] {
            assert_eq!(q(code).exit_code(), code);
        }
        assert_eq!(q(0).exit_code(), exit::PROTOCOL);
        assert_eq!(q(1).exit_code(), exit::PROTOCOL);
        // 126 is a policy refusal or a target dom0 could not start: the message names both
        let refused = q(exit::QREXEC_REFUSED).to_string();
        assert!(
            refused.contains("the dom0 policy does not allow it"),
            "{refused}"
        );
        assert!(refused.contains("could not be started"), "{refused}");
        assert!(q(exit::QREXEC_FAILED)
            .to_string()
            .contains("qrexec agent of the target"));
        let lost = ClientError::Lost {
            call: "qubes-borg.Ssh+nas".into(),
            target: "@default".into(),
        };
        assert_eq!(lost.exit_code(), exit::QREXEC_LOST);
        assert!(lost.to_string().contains("not an ssh failure"), "{lost}");
    }

    #[test]
    fn the_reason_of_a_session_lost_in_sys_backup_comes_from_the_services_log_line() {
        let line = "qubes-ssh-service: source=sys-backup-mnt destination=nas outcome=connection-lost exit=255 up=9 down=7: connection lost: no answer for 60 s";
        assert_eq!(
            session_lost(line).as_deref(),
            Some("connection lost: no answer for 60 s")
        );
        for other in [
            "qubes-ssh-service: source=x destination=nas outcome=ok exit=255 up=1 down=1",
            "qubes-ssh-service: source=x destination=nas outcome=ssh exit=255 up=1 down=0: x",
            "ssh: qubes-ssh-service: source=x outcome=connection-lost exit=255: x",
            "qubes-ssh-service: source=x destination=nas outcome=connection-lostx exit=255: x",
        ] {
            assert_eq!(session_lost(other), None, "{other}");
        }
        let long = format!(
            "{}: {}",
            &line[..line.find(": c").unwrap()],
            "y".repeat(5000)
        );
        assert!(session_lost(&long).unwrap().len() <= 303);
    }
}
