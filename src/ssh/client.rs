//! qubes-ssh-client: borg's `BORG_RSH` in sys-backup-mnt. Vets borg's command line, calls
//! `qrexec-client-vm TARGET qubes-borg.Ssh+NAME`, sends the request header and relays, reading the
//! service's status line first. Protocol: docs/PROTOCOL.md.

use qubes_borg::borg_argv::{self, BorgArgv};
use qubes_borg::child;
use qubes_borg::header;
use qubes_borg::relay::{self, Fd, FirstLine, Flow, LineVerdict, RelayError};
use qubes_borg::status::{exit, Status, MAX_STATUS};
use qubes_borg::validate;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};

const PROG: &str = "qubes-ssh-client";
const SERVICE: &str = "qubes-borg.Ssh";
const DEFAULT_QREXEC: &str = "/usr/bin/qrexec-client-vm";
const DEFAULT_TARGET: &str = "@default";

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
  --help, --version
Environment:
  QUBES_SSH_CLIENT_TARGET   qrexec target, as --target
  QUBES_SSH_CLIENT_QREXEC   path of qrexec-client-vm (tests; default /usr/bin/qrexec-client-vm)

Exit codes:
  0-255 the remote borg serve's exit status, as ssh reports it (255: ssh failed in sys-backup:
        connection refused, host key mismatch, authentication failure)
  64    the command line is not one borg builds (refused before any qrexec call)
  68    sys-backup has no destination NAME
  69    sys-backup could not reach the split-SSH key set of NAME
  70/71 internal error / cannot start a program (here or in sys-backup)
  76    protocol error: the service sent no valid status line (versions differ?), or the
        request header was refused as malformed
  77    sys-backup refused the request (option, remote path, port or user not allowed)
  78    sys-backup's configuration of NAME is missing parts, malformed or unsafe
  125   qrexec failed (target qube not running, ...)
  126   the dom0 qrexec policy refused qubes-borg.Ssh+NAME from this qube
  127   the target qube has no qubes-borg.Ssh service (qubes-borg not installed there)
";

/// Report one line and return the exit code.
fn die(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "{PROG}: {msg}");
    ExitCode::from(code)
}

/// Report one line while borg's stdout pipe is still open, then give borg time to read it.
///
/// borg 1.x polls ssh's stdout and stderr together and, when both are readable at once,
/// handles stdout's EOF first and stops ("Connection closed by remote host") without ever
/// printing the stderr line (`borgbackup/borg:src/borg/remote.py`, `call_many`: the loop over
/// `select()`'s readable fds, stdout before stderr). So the line must be readable on its own
/// for a moment before stdout closes. Only when stderr is a pipe or socket (a program reads it).
fn die_before_eof(stdout: OwnedFd, code: u8, msg: impl std::fmt::Display) -> ExitCode {
    let ret = die(code, msg);
    let is_stream = nix::sys::stat::fstat(std::io::stderr().as_fd())
        .map(|st| {
            let fmt = st.st_mode & libc::S_IFMT;
            fmt == libc::S_IFIFO || fmt == libc::S_IFSOCK
        })
        .unwrap_or(false);
    if is_stream {
        std::thread::sleep(std::time::Duration::from_millis(STDERR_GRACE_MS));
    }
    drop(stdout);
    ret
}

/// How long an error line stays alone on stderr before stdout's EOF (see `die_before_eof`).
/// borg's poll loop wakes as soon as stderr is readable, so this only has to cover scheduling.
const STDERR_GRACE_MS: u64 = 500;

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

struct Cli {
    target: String,
    argv: BorgArgv,
}

fn parse_cli(args: Vec<OsString>) -> Result<Result<Cli, ExitCode>, String> {
    let mut target = None;
    let mut words = Vec::with_capacity(args.len());
    for (i, a) in args.into_iter().enumerate() {
        let a = a
            .into_string()
            .map_err(|_| format!("refusing word {}: not valid UTF-8", i + 1))?;
        words.push(a);
    }
    // Our own options come first and are all `--long` words; borg's words never start so.
    let mut start = 0;
    while let Some(w) = words.get(start) {
        if w == "--help" {
            print!("{HELP}");
            return Ok(Err(ExitCode::SUCCESS));
        } else if w == "--version" {
            println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
            return Ok(Err(ExitCode::SUCCESS));
        } else if let Some(t) = w.strip_prefix("--target=") {
            target = Some(t.to_string());
        } else {
            break;
        }
        start += 1;
    }
    let argv = borg_argv::parse(&words[start..]).map_err(|e| e.to_string())?;
    let target = target
        .or_else(|| std::env::var("QUBES_SSH_CLIENT_TARGET").ok())
        .unwrap_or_else(|| DEFAULT_TARGET.to_string());
    check_target(&target)?;
    Ok(Ok(Cli { target, argv }))
}

fn main() -> ExitCode {
    let cli = match parse_cli(std::env::args_os().skip(1).collect()) {
        Ok(Ok(c)) => c,
        Ok(Err(code)) => return code,
        Err(m) => {
            return die(
                exit::USAGE,
                format!("{m}; expected BORG_RSH=qubes-ssh-client with a repository ssh://NAME/./repo (see --help)"),
            )
        }
    };
    let name = cli.argv.name.clone();
    let call = format!("{SERVICE}+{name}");
    let qrexec = std::env::var_os("QUBES_SSH_CLIENT_QREXEC")
        .unwrap_or_else(|| OsString::from(DEFAULT_QREXEC));

    let (stdin, stdout) = match relay::take_stdio() {
        Ok(p) => p,
        Err(e) => return die(exit::OSERR, format!("cannot take stdin/stdout: {e}")),
    };
    let mut child = match Command::new(&qrexec)
        .arg(&cli.target)
        .arg(&call)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return die(
                exit::OSERR,
                format!(
                    "cannot run {}: {e}",
                    std::path::Path::new(&qrexec).display()
                ),
            )
        }
    };
    let mut cin = child.stdin.take().expect("piped");
    let cout = child.stdout.take().expect("piped");

    // The header goes out first; if the service is gone already, the status (or qrexec's
    // exit code) says why, so a write error here is not reported by itself.
    let _ = cin.write_all(&header::encode(&cli.argv));

    let mut status: Option<Status> = None;
    let mut bad_line: Option<String> = None;
    let mut on_line = |line: &[u8]| match Status::decode(line) {
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
    };
    let up = Flow::new(Fd::Owned(stdin), Fd::Owned(OwnedFd::from(cin)));
    let mut down = Flow::new(Fd::Owned(OwnedFd::from(cout)), stdout.as_fd());
    down.first_line = Some(FirstLine {
        max: MAX_STATUS,
        on_line: &mut on_line,
    });
    let result = relay::relay(up, down);

    let code = match child.wait() {
        Ok(st) => child::status_code(st).unwrap_or(exit::SOFTWARE),
        Err(e) => {
            return die_before_eof(
                stdout,
                exit::SOFTWARE,
                format!("waiting for qrexec-client-vm: {e}"),
            )
        }
    };

    if let Some(m) = bad_line {
        return die_before_eof(stdout, exit::PROTOCOL, format!("{call}: {m}"));
    }
    match (result, status) {
        (Ok(_), Some(Status::Ok)) => ExitCode::from(code),
        (_, Some(Status::Err { code, message, .. })) => {
            die_before_eof(stdout, code, format!("{name}: {message}"))
        }
        (Err(RelayError::LineEof { got: 0, .. }), None) => die_before_eof(
            stdout,
            match code {
                exit::QREXEC_REFUSED | exit::QREXEC_FAILED | exit::QREXEC_NOT_FOUND => code,
                _ => exit::PROTOCOL,
            },
            qrexec_message(code, &cli.target, &call),
        ),
        (Err(e), _) => die_before_eof(stdout, exit::PROTOCOL, format!("{call}: {e}")),
        (Ok(_), None) => die_before_eof(
            stdout,
            exit::PROTOCOL,
            format!("{call}: the service ended without a status line (exit {code})"),
        ),
    }
}

/// Explain qrexec-client-vm's own exit codes (qubes-core-qrexec: agent/qrexec-client-vm.rst,
/// libqrexec/qrexec.h).
fn qrexec_message(code: u8, target: &str, call: &str) -> String {
    match code {
        exit::QREXEC_REFUSED => format!(
            "qrexec policy refused {call} from this qube (target {target}); allow it in dom0's /etc/qubes/policy.d"
        ),
        exit::QREXEC_FAILED => format!(
            "qrexec could not run {call} (target {target}): is the target qube running? see dom0's journal"
        ),
        exit::QREXEC_NOT_FOUND => format!(
            "the target qube has no {} service: install qubes-borg in sys-backup's template",
            call.split('+').next().unwrap_or(call)
        ),
        _ => format!(
            "{call} closed the connection without a status line (qrexec-client-vm exit {code}); see sys-backup's journal"
        ),
    }
}
