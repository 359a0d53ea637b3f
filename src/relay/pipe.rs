//! sys-backup-mnt and sys-backup: the relay's intermediate pipe, for a
//! direction whose ends are both non-pipes (growing a pipe: `crate::pipe`).

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

pub use crate::pipe::{grow_pipe, PIPE_SIZE};

/// An intermediate pipe, both ends nonblocking and close-on-exec.
pub(crate) struct Pipe {
    pub(crate) r: OwnedFd,
    pub(crate) w: OwnedFd,
    /// Bytes it holds right now (splice's EAGAIN does not say which side
    /// blocked; this count does: non-empty means the destination is full).
    pub(crate) held: usize,
    pub(crate) cap: usize,
}

impl Pipe {
    pub(crate) fn new() -> Result<Pipe, Errno> {
        let (r, w) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let cap = grow_pipe(&w, PIPE_SIZE);
        Ok(Pipe { r, w, held: 0, cap })
    }
}
