//! sys-backup-mnt and sys-backup: file descriptors handed to the relay:
//! borrowed or owned, what kind they are, and their O_NONBLOCK flag (set while
//! relaying, restored afterwards).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{shutdown, Shutdown};
use nix::sys::stat::{fstat, SFlag};
use std::os::fd::AsRawFd;

/// An end of a flow. `Owned` lets the relay close it as soon as its flow is
/// over (the only way to give EOF to a pipe's reader, or to tell a pipe's
/// writer that nobody reads any more). `Borrowed` stays open until the caller
/// drops it; a borrowed socket is still half-closed with shutdown(2).
#[derive(Debug)]
pub enum Fd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl Fd<'_> {
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Fd::Borrowed(b) => *b,
            Fd::Owned(o) => o.as_fd(),
        }
    }
}

impl<'a> From<BorrowedFd<'a>> for Fd<'a> {
    fn from(fd: BorrowedFd<'a>) -> Self {
        Fd::Borrowed(fd)
    }
}

impl From<OwnedFd> for Fd<'_> {
    fn from(fd: OwnedFd) -> Self {
        Fd::Owned(fd)
    }
}

/// What an fd is, as far as splice(2) cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Pipe,
    Socket,
    File,
    /// tty, character device, anything else: read/write only.
    Other,
}

pub(crate) fn kind_of(fd: BorrowedFd<'_>) -> Kind {
    match fstat(fd) {
        Ok(st) => {
            let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if fmt == SFlag::S_IFIFO {
                Kind::Pipe
            } else if fmt == SFlag::S_IFSOCK {
                Kind::Socket
            } else if fmt == SFlag::S_IFREG {
                Kind::File
            } else {
                Kind::Other
            }
        }
        Err(_) => Kind::Other,
    }
}

/// Grow a socket's send buffer to `want` bytes (the kernel caps it at
/// `net.core.wmem_max`, then doubles it for its bookkeeping), never shrink
/// it. Failure is not an error: the socket stays as it was.
pub(crate) fn grow_sndbuf(fd: BorrowedFd<'_>, want: usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt::SndBuf};
    if getsockopt(&fd, SndBuf).is_ok_and(|have| have < want) {
        let _ = setsockopt(&fd, SndBuf, &want);
    }
}

/// shutdown(2) that ignores "not connected" (the peer may already be gone).
pub(crate) fn shut(fd: BorrowedFd<'_>, how: Shutdown) {
    let _ = shutdown(fd.as_raw_fd(), how);
}

/// Saved file status flags of the fds the relay made nonblocking, grouped by
/// (device, inode) so that two fds sharing one open file description (fd 0
/// and fd 1 both on one terminal, say) are restored once, when the last of
/// them is released, to the flags seen before the relay touched either.
pub(crate) struct FlagTable {
    slots: [Option<Saved>; 4],
}

#[derive(Clone, Copy)]
struct Saved {
    dev: u64,
    ino: u64,
    orig: OFlag,
    users: u8,
    changed: bool,
}

impl FlagTable {
    pub(crate) fn new() -> Self {
        FlagTable { slots: [None; 4] }
    }

    /// Make `fd` nonblocking; returns the slot to pass to `release`.
    pub(crate) fn acquire(&mut self, fd: BorrowedFd<'_>) -> Result<usize, Errno> {
        let st = fstat(fd)?;
        let (dev, ino) = (st.st_dev, st.st_ino);
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(s, Some(s) if s.dev == dev && s.ino == ino))
        {
            if let Some(s) = self.slots[i].as_mut() {
                s.users += 1;
            }
            return Ok(i);
        }
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(Errno::EMFILE)?;
        let orig = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        let changed = !orig.contains(OFlag::O_NONBLOCK);
        if changed {
            fcntl(fd, FcntlArg::F_SETFL(orig | OFlag::O_NONBLOCK))?;
        }
        self.slots[i] = Some(Saved {
            dev,
            ino,
            orig,
            users: 1,
            changed,
        });
        Ok(i)
    }

    /// One user of the slot is done with `fd` (which must still be open).
    pub(crate) fn release(&mut self, slot: usize, fd: BorrowedFd<'_>) {
        if let Some(s) = self.slots[slot].as_mut() {
            s.users -= 1;
            if s.users == 0 {
                if s.changed {
                    let _ = fcntl(fd, FcntlArg::F_SETFL(s.orig));
                }
                self.slots[slot] = None;
            }
        }
    }
}
