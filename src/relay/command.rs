//! sys-backup-mnt and sys-backup: the `qubes-relay -- CMD` and `qubes-relay
//! --connect PATH` modes.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

use super::signals::Signals;
use super::{relay_with, Flow, Options, RelayError};
use crate::child::{self, desc, SpawnError, SpawnOptions};
use crate::exit;

/// Errors of the high-level modes; `exit_code` is the documented exit code (`crate::exit`).
#[derive(Debug)]
pub enum Error {
    /// Bad command line (message says what).
    Usage(String),
    Spawn(SpawnError),
    Relay(RelayError),
    /// `--connect PATH`: the socket would not take the connection.
    Connect {
        path: PathBuf,
        err: io::Error,
    },
    /// `--listen PATH`: creating/binding the socket failed.
    Listen {
        path: PathBuf,
        err: io::Error,
    },
    /// Setting up our own stdio, signals, waiting for the child.
    Setup {
        what: &'static str,
        err: io::Error,
    },
    /// A terminating signal arrived; the caller should die of it.
    Signal(Signal),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spawn(e) => e.exit_code(),
            Error::Signal(s) => 128 + *s as u8,
            _ => exit::RELAY_FAILED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m} (see --help)"),
            Error::Spawn(e) => e.fmt(f),
            Error::Relay(e) => write!(f, "relay failed: {e}"),
            Error::Connect { path, err } => {
                write!(f, "cannot connect to '{}': {}", path.display(), desc(err))
            }
            Error::Listen { path, err } => {
                write!(f, "cannot listen on '{}': {}", path.display(), desc(err))
            }
            Error::Setup { what, err } => write!(f, "{what}: {}", desc(err)),
            Error::Signal(s) => write!(f, "terminated by {s}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<RelayError> for Error {
    fn from(e: RelayError) -> Self {
        Error::Relay(e)
    }
}

fn setup(what: &'static str) -> impl Fn(Errno) -> Error {
    move |e| Error::Setup {
        what,
        err: io::Error::from(e),
    }
}

/// Take fd 0 and fd 1 for the relay: returns owned duplicates and points fd
/// 0 and fd 1 at /dev/null, so that the returned fds are this process's only
/// references and closing them gives EOF to a pipe's reader (or tells a
/// pipe's writer that nobody reads) at exactly the right moment.
pub fn take_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let stdin = io::stdin().as_fd().try_clone_to_owned()?;
    let stdout = io::stdout().as_fd().try_clone_to_owned()?;
    let null = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    Ok((stdin, stdout))
}

/// `qubes-relay -- CMD ARGS`: start CMD (PATH lookup, no shell) on pipes,
/// relay our stdin to its stdin and its stdout to our stdout, wait for it.
/// Returns its exit code, or 128+N if signal N killed it.
pub fn run_command(argv: &[OsString]) -> Result<u8, Error> {
    let sigs = Signals::block(true).map_err(setup("blocking signals"))?;
    let (stdin, stdout) = take_stdio().map_err(|err| Error::Setup {
        what: "taking stdin/stdout",
        err,
    })?;
    let mut child = child::spawn(argv, SpawnOptions::default()).map_err(Error::Spawn)?;
    let (Some(cin), Some(cout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Error::Setup {
            what: "child pipes",
            err: io::Error::from(Errno::EBADF),
        });
    };
    let res = relay_with(
        Flow::new(stdin, cin),
        Flow::new(cout, stdout),
        Options {
            stop: Some(sigs.fd()),
        },
    );
    match res {
        Ok(_) => {}
        Err(RelayError::Interrupted) => {
            let sig = sigs.next().unwrap_or(Signal::SIGTERM);
            return Err(Error::Signal(sig));
        }
        Err(e) => {
            // Our ends of its pipes are closed already; make sure it goes.
            child.terminate();
            let _ = wait_child(&mut child, &sigs);
            return Err(Error::Relay(e));
        }
    }
    wait_child(&mut child, &sigs)
}

/// Wait for the child, still answering SIGINT/SIGTERM/SIGHUP.
fn wait_child(child: &mut child::Child, sigs: &Signals) -> Result<u8, Error> {
    loop {
        match child.try_wait_code() {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => {}
            Err(err) => {
                return Err(Error::Setup {
                    what: "waiting for the command",
                    err,
                })
            }
        }
        let chld = sigs.chld_fd().unwrap_or(sigs.fd());
        let mut fds = [
            PollFd::new(sigs.fd(), PollFlags::POLLIN),
            PollFd::new(chld, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(setup("waiting for the command")(e)),
        }
        sigs.drain_chld();
        if let Some(sig) = sigs.next() {
            return Err(Error::Signal(sig));
        }
    }
}

/// `qubes-relay --connect PATH`: relay our stdin/stdout to a connected UNIX
/// stream socket.
pub fn run_connect(path: &Path) -> Result<(), Error> {
    let sigs = Signals::block(false).map_err(setup("blocking signals"))?;
    let sock = UnixStream::connect(path).map_err(|err| Error::Connect {
        path: path.to_path_buf(),
        err,
    })?;
    let sock = OwnedFd::from(sock);
    let (stdin, stdout) = take_stdio().map_err(|err| Error::Setup {
        what: "taking stdin/stdout",
        err,
    })?;
    let res = relay_with(
        Flow::new(stdin, sock.as_fd()),
        Flow::new(sock.as_fd(), stdout),
        Options {
            stop: Some(sigs.fd()),
        },
    );
    match res {
        Ok(_) => Ok(()),
        Err(RelayError::Interrupted) => Err(Error::Signal(sigs.next().unwrap_or(Signal::SIGTERM))),
        Err(e) => Err(Error::Relay(e)),
    }
}
