//! Every qube: growing a pipe's buffer with F_SETPIPE_SZ, shared by `child` (the pipes to a
//! started command) and the relay (its intermediate pipes).

use std::os::fd::AsFd;

use nix::fcntl::{fcntl, FcntlArg};

/// Size we ask for: 1 MiB is the default `/proc/sys/fs/pipe-max-size`, so an
/// unprivileged process gets it unless its pipe budget is spent. coreutils'
/// cat uses 512 KiB for the same job (docs/SOURCES.md, "Relay").
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
