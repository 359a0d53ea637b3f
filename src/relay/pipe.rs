//! Pipes the relay creates or tunes: the intermediate pipe of a direction
//! whose ends are both non-pipes, and growing a pipe with F_SETPIPE_SZ.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

/// Size we ask for: 1 MiB is the default `/proc/sys/fs/pipe-max-size`, so an
/// unprivileged process gets it unless its pipe budget is spent. coreutils'
/// cat uses 512 KiB for the same job (relay-perf.md section 2.3).
pub const PIPE_SIZE: usize = 1 << 20;

/// Try to grow `fd`'s pipe to `want` bytes. Failure is not an error: EPERM
/// (over pipe-max-size or over the user's pipe-user-pages-soft budget) and
/// EBUSY leave the pipe as it was. Returns the capacity the pipe ends up with
/// (64 KiB assumed when even F_GETPIPE_SZ fails).
pub fn grow_pipe<F: AsFd>(fd: F, want: usize) -> usize {
    let want_c = i32::try_from(want).unwrap_or(i32::MAX);
    match fcntl(fd.as_fd(), FcntlArg::F_SETPIPE_SZ(want_c)) {
        Ok(n) if n > 0 => n as usize,
        _ => match fcntl(fd.as_fd(), FcntlArg::F_GETPIPE_SZ) {
            Ok(n) if n > 0 => n as usize,
            _ => 1 << 16,
        },
    }
}

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
