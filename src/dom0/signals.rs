//! dom0: SIGINT, SIGTERM and SIGHUP are blocked and read from a signalfd, so that
//! `qvm-backup-borg` notices them between steps and while the job runs, and cleans up
//! before it exits (children start with an empty signal mask: std's `Command` resets it).

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub struct Signals {
    fd: SignalFd,
    seen: Option<Signal>,
}

impl Signals {
    /// Blocks the signals in this thread (call before starting other threads) and opens the fd.
    pub fn install() -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd, seen: None })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True once a signal has arrived (reads pending ones without blocking).
    pub fn check(&mut self) -> bool {
        while let Ok(Some(info)) = self.fd.read_signal() {
            if self.seen.is_none() {
                self.seen = Signal::try_from(info.ssi_signo as i32).ok();
            }
        }
        self.seen.is_some()
    }

    pub fn which(&self) -> Option<Signal> {
        self.seen
    }
}
