//! Every qube (shared): starting the command a relay talks to: argv as given
//! (PATH lookup like execvp, never a shell), stdin and stdout as pipes we own,
//! stderr inherited (or redirected). posix_spawnp(3) with an empty signal mask
//! and SIGPIPE (and the terminating signals) at their default action, whatever
//! the relay set for itself: the relay ignores SIGPIPE and blocks SIGINT,
//! SIGTERM, SIGHUP and SIGCHLD to read them from a signalfd, and both would
//! otherwise survive exec (qrexec resets SIGPIPE for services the same way,
//! QubesOS/qubes-core-qrexec:libqrexec/exec.c).

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// How `qubes-relay --listen` reports, on its stderr, a connection's command that exited with a
/// non-zero status: this, then the status (sys-backup reads it to tell a refused qrexec call to
/// the vault from a failed login).
pub const EXIT_REPORT_PREFIX: &str = "qubes-relay: connection: command exited with status ";
use nix::unistd::{pipe2, Pid};

use crate::exit::{CANNOT_EXECUTE, NOT_FOUND, RELAY_FAILED, SIGNALED};
use crate::pipe::{grow_pipe, PIPE_SIZE};

/// Where the child's stderr goes.
#[derive(Debug, Default)]
pub enum StderrTo {
    #[default]
    Inherit,
    Null,
    Fd(OwnedFd),
}

#[derive(Debug)]
pub struct SpawnOptions {
    pub stderr: StderrTo,
    /// Grow the child's stdin/stdout pipes to this many bytes (F_SETPIPE_SZ;
    /// refused growth is ignored). 0: leave them as the kernel made them.
    pub pipe_size: usize,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        SpawnOptions {
            stderr: StderrTo::Inherit,
            pipe_size: PIPE_SIZE,
        }
    }
}

#[derive(Debug)]
pub enum SpawnError {
    /// argv was empty.
    NoCommand,
    NotFound {
        program: OsString,
        err: io::Error,
    },
    CannotExecute {
        program: OsString,
        err: io::Error,
    },
    Other {
        program: OsString,
        err: io::Error,
    },
}

impl SpawnError {
    /// As shells and env(1) report it: 127 not found, 126 cannot execute,
    /// 125 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            SpawnError::NotFound { .. } => NOT_FOUND,
            SpawnError::CannotExecute { .. } => CANNOT_EXECUTE,
            _ => RELAY_FAILED,
        }
    }
}

/// An I/O error's text as errno's short description ("No such file or directory").
pub(crate) fn desc(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => err.to_string(),
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NoCommand => f.write_str("no command given"),
            SpawnError::NotFound { program, err }
            | SpawnError::CannotExecute { program, err }
            | SpawnError::Other { program, err } => {
                write!(
                    f,
                    "cannot start '{}': {}",
                    program.to_string_lossy(),
                    desc(err)
                )
            }
        }
    }
}

impl std::error::Error for SpawnError {}

/// A started command. `stdin`/`stdout` are our ends of its pipes; take them
/// (they are closed when dropped). Dropping a `Child` neither waits for nor
/// kills it (reap it with `wait_code`).
#[derive(Debug)]
pub struct Child {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pid: Pid,
    reaped: Option<u8>,
}

/// Exit code as shells report it: the code, or 128+N after signal N.
/// None while it has not exited.
pub fn exit_code(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, c) => Some(c as u8),
        WaitStatus::Signaled(_, s, _) => Some(SIGNALED.wrapping_add(s as i32 as u8)),
        _ => None,
    }
}

/// The same for a `std::process::ExitStatus` (a program spawned with `std::process::Command`).
pub fn status_code(status: std::process::ExitStatus) -> Option<u8> {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .map(|c| c as u8)
        .or_else(|| status.signal().map(|s| SIGNALED.wrapping_add(s as u8)))
}

fn cstr(s: &OsStr, program: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Other {
        program: program.to_os_string(),
        err: io::Error::from(Errno::EINVAL),
    })
}

pub fn spawn(argv: &[OsString], opts: SpawnOptions) -> Result<Child, SpawnError> {
    let program = argv.first().ok_or(SpawnError::NoCommand)?;
    let other = |e: Errno| SpawnError::Other {
        program: program.clone(),
        err: io::Error::from(e),
    };
    let args = argv
        .iter()
        .map(|a| cstr(a, program))
        .collect::<Result<Vec<_>, _>>()?;
    let env = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstr(&kv, program)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Ours: stdin_w, stdout_r. Its: stdin_r, stdout_w (close-on-exec here,
    // dup2'ed onto 0 and 1 in the child, which clears the flag there).
    let (stdin_r, stdin_w) = pipe2(OFlag::O_CLOEXEC).map_err(other)?;
    let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC).map_err(other)?;
    let mut fa = PosixSpawnFileActions::init().map_err(other)?;
    fa.add_dup2(stdin_r.as_raw_fd(), 0).map_err(other)?;
    fa.add_dup2(stdout_w.as_raw_fd(), 1).map_err(other)?;
    let null;
    match &opts.stderr {
        StderrTo::Inherit => {}
        StderrTo::Null => {
            null = nix::fcntl::open(
                "/dev/null",
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(other)?;
            fa.add_dup2(null.as_raw_fd(), 2).map_err(other)?;
        }
        StderrTo::Fd(fd) => fa.add_dup2(fd.as_raw_fd(), 2).map_err(other)?,
    }
    let mut attr = PosixSpawnAttr::init().map_err(other)?;
    attr.set_sigmask(&SigSet::empty()).map_err(other)?;
    let mut dfl = SigSet::empty();
    for s in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        dfl.add(s);
    }
    attr.set_sigdefault(&dfl).map_err(other)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(other)?;
    let pid = posix_spawnp(&args[0], &fa, &attr, &args, &env)
        .map_err(|e| classify(program, io::Error::from(e)))?;
    drop((stdin_r, stdout_w));
    if opts.pipe_size > 0 {
        grow_pipe(&stdin_w, opts.pipe_size);
        grow_pipe(&stdout_r, opts.pipe_size);
    }
    Ok(Child {
        stdin: Some(stdin_w),
        stdout: Some(stdout_r),
        pid,
        reaped: None,
    })
}

fn classify(program: &OsStr, err: io::Error) -> SpawnError {
    let program = program.to_os_string();
    match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => SpawnError::NotFound { program, err },
        Some(Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR | Errno::EPERM | Errno::ETXTBSY) => {
            SpawnError::CannotExecute { program, err }
        }
        _ => SpawnError::Other { program, err },
    }
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    fn wait_inner(&mut self, flags: Option<WaitPidFlag>) -> io::Result<Option<u8>> {
        if let Some(c) = self.reaped {
            return Ok(Some(c));
        }
        loop {
            match waitpid(self.pid, flags) {
                Ok(st) => {
                    let c = exit_code(st);
                    if c.is_some() || flags.is_some() {
                        self.reaped = c;
                        return Ok(c);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Wait for it; its exit code, or 128+N if signal N killed it.
    pub fn wait_code(&mut self) -> io::Result<u8> {
        self.wait_inner(None).map(|c| c.unwrap_or(RELAY_FAILED))
    }

    /// Like `wait_code`, without blocking: None while it runs.
    pub fn try_wait_code(&mut self) -> io::Result<Option<u8>> {
        self.wait_inner(Some(WaitPidFlag::WNOHANG))
    }

    /// Send SIGTERM unless it has been reaped already.
    pub fn terminate(&mut self) {
        if self.reaped.is_none() {
            let _ = kill(self.pid, Signal::SIGTERM);
        }
    }
}
