//! sys-backup-mnt and sys-backup: terminating signals as an fd the relay loop
//! can poll (signalfd), so the relay can restore fd 0/1's flags before it dies
//! of the signal.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{raise, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub(crate) const TERMINATING: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// SIGINT, SIGTERM, SIGHUP (and SIGCHLD when asked) blocked in this thread
/// (and in threads it starts later) and readable from fds: `fd` for the
/// terminating ones, `chld` for SIGCHLD. Children started by `child::spawn`
/// get an empty signal mask (std resets it before exec).
pub(crate) struct Signals {
    fd: SignalFd,
    chld: Option<SignalFd>,
}

impl Signals {
    pub(crate) fn block(with_chld: bool) -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        for s in TERMINATING {
            set.add(s);
        }
        let flags = SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC;
        let fd = SignalFd::with_flags(&set, flags)?;
        let mut chld = None;
        if with_chld {
            let mut c = SigSet::empty();
            c.add(Signal::SIGCHLD);
            chld = Some(SignalFd::with_flags(&c, flags)?);
            set.add(Signal::SIGCHLD);
        }
        set.thread_block()?;
        Ok(Signals { fd, chld })
    }

    /// The SIGCHLD fd (when asked for); readable after a child changed state.
    pub(crate) fn chld_fd(&self) -> Option<BorrowedFd<'_>> {
        self.chld.as_ref().map(|c| c.as_fd())
    }

    /// Forget SIGCHLDs received so far.
    pub(crate) fn drain_chld(&self) {
        if let Some(c) = &self.chld {
            while let Ok(Some(_)) = c.read_signal() {}
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next pending terminating signal, if any.
    pub(crate) fn next(&self) -> Option<Signal> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }
}

/// Die of `sig` (its default action), as if it had never been caught: raise
/// it while it is blocked, then unblock it. Returns only if that did not kill
/// us (the signal is ignored); the caller then exits with 128+N.
pub fn die_of(sig: Signal) {
    let mut one = SigSet::empty();
    one.add(sig);
    let _ = raise(sig);
    let _ = one.thread_unblock();
}
