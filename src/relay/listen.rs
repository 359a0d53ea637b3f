//! sys-backup: `qubes-relay --listen PATH -- CMD ARGS`: a drop-in for
//! `socat UNIX-LISTEN:PATH,fork EXEC:CMD`. Each connection gets its own CMD
//! (on pipes) and its own relay thread; the socket is removed on exit.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::getppid;

use super::command::Error;
use super::signals::Signals;
use super::{relay, Flow};
use crate::child::{self, SpawnOptions};

#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// Exit (as on SIGTERM: socket removed) when the parent process dies,
    /// via prctl(PR_SET_PDEATHSIG), so no listener outlives its owner.
    /// Linux sends it when the *thread* that started us exits: start the
    /// listener from a thread that lives as long as its owner (the main
    /// thread, say).
    pub die_with_parent: bool,
    /// Remove a stale socket at PATH before binding (only a socket is
    /// removed; anything else at PATH is an error).
    pub unlink_early: bool,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            die_with_parent: false,
            unlink_early: false,
            max_connections: 64,
        }
    }
}

/// Serve until SIGTERM/SIGINT/SIGHUP (or the parent's death with
/// `die_with_parent`); then remove the socket and return Ok. The socket is
/// created with the process umask; the caller sets the directory and mode.
/// Connections still open at that moment are closed (their commands see EOF
/// on stdin and EPIPE on stdout).
pub fn run_listen(path: &Path, argv: &[OsString], opts: &ListenOptions) -> Result<(), Error> {
    if argv.is_empty() {
        return Err(Error::Usage("--listen needs a command after --".into()));
    }
    let parent = getppid();
    if opts.die_with_parent {
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| Error::Setup {
            what: "prctl(PR_SET_PDEATHSIG)",
            err: e.into(),
        })?;
        // The parent may have died before prctl: then nobody will signal us.
        if getppid() != parent {
            return Ok(());
        }
    }
    // Blocked in every thread started below; each connection's command
    // gets an empty mask (child::spawn).
    let sigs = Signals::block(true).map_err(|e| Error::Setup {
        what: "blocking signals",
        err: e.into(),
    })?;
    let listen_err = |err: io::Error| Error::Listen {
        path: path.to_path_buf(),
        err,
    };
    if opts.unlink_early {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(listen_err)?,
            Ok(_) => return Err(listen_err(io::Error::from(Errno::EEXIST))),
            Err(_) => {}
        }
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    let ours = std::fs::symlink_metadata(path)
        .map(|m| (m.st_dev(), m.st_ino()))
        .ok();
    let res = serve(&listener, argv, opts, &sigs);
    // Remove the socket only if it is still the one we created.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if Some((m.st_dev(), m.st_ino())) == ours {
            let _ = std::fs::remove_file(path);
        }
    }
    res
}

fn serve(
    listener: &UnixListener,
    argv: &[OsString],
    opts: &ListenOptions,
    sigs: &Signals,
) -> Result<(), Error> {
    listener.set_nonblocking(true).map_err(|err| Error::Setup {
        what: "listening socket",
        err,
    })?;
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigs.fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Setup {
                    what: "waiting for connections",
                    err: e.into(),
                })
            }
        }
        sigs.drain_chld();
        if sigs.next().is_some() {
            return Ok(());
        }
        loop {
            let conn = match listener.accept() {
                Ok((c, _)) => OwnedFd::from(c),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED, EMFILE, ...: report, keep serving.
                Err(e) => {
                    eprintln!("qubes-relay: accepting a connection failed: {e}");
                    break;
                }
            };
            if active.load(Ordering::SeqCst) >= opts.max_connections {
                eprintln!(
                    "qubes-relay: {} connections open already; closing a new one",
                    opts.max_connections
                );
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let argv = argv.to_vec();
            let active2 = Arc::clone(&active);
            let spawned = std::thread::Builder::new()
                .name("relay-conn".into())
                .stack_size(256 << 10)
                .spawn(move || {
                    serve_one(conn, &argv);
                    active2.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                active.fetch_sub(1, Ordering::SeqCst);
                eprintln!("qubes-relay: cannot start a thread for a connection: {e}");
            }
        }
    }
}

/// One connection: its own command, relayed both ways, then reaped.
fn serve_one(conn: OwnedFd, argv: &[OsString]) {
    let mut child = match child::spawn(argv, SpawnOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qubes-relay: {e}");
            return;
        }
    };
    let (Some(cin), Some(cout)) = (child.stdin.take(), child.stdout.take()) else {
        return;
    };
    if let Err(e) = relay(Flow::new(conn.as_fd(), cin), Flow::new(cout, conn.as_fd())) {
        eprintln!("qubes-relay: connection: relay failed: {e}");
        child.terminate();
    }
    drop(conn);
    // A failed command says why (its exit status), for whoever reads our stderr: in sys-backup
    // the agent socket's owner tells a refused or failed qrexec call to the vault from a
    // login the server refused (its agent component).
    if let Ok(code @ 1..) = child.wait_code() {
        eprintln!("{}{code}", child::EXIT_REPORT_PREFIX);
    }
}
