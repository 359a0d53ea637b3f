//! sys-backup-mnt and sys-backup: the stdio relay: moves bytes in both
//! directions at once between two pairs of file descriptors, with splice(2) on
//! the data path and poll(2) to wait.
//!
//! Design notes (the pitfalls and their sources: docs/SOURCES.md, "Relay"):
//! * Every fd is made nonblocking (O_NONBLOCK plus SPLICE_F_NONBLOCK), so no
//!   call ever blocks the loop; flags are restored when the relay is done
//!   with an fd (fd 0/1 may be a terminal shared with a shell).
//! * A direction with a pipe at either end splices directly; a direction
//!   whose ends are both sockets/files goes through an intermediate pipe
//!   (grown to 1 MiB with F_SETPIPE_SZ when allowed; EPERM is tolerated).
//!   A pipe handed to the relay (fd 0/1 from borg's subprocess: 64 KiB) is
//!   grown the same way, so one wake-up moves up to 1 MiB, not 64 KiB. A
//!   socket the relay writes to gets SO_SNDBUF 1 MiB (capped by the kernel
//!   at net.core.wmem_max; never shrunk) for the same reason.
//! * A direction keeps splicing while bytes move (a splice that moved one
//!   pipe's worth is not a short read) and goes back to poll on EAGAIN, or
//!   after a small message (< 4 KiB: interactive traffic, src is empty).
//!   splice's EAGAIN does not say which side blocked, so the relay counts
//!   the bytes its pipe holds (non-empty: dst is full; empty: src is
//!   empty), and for a direct splice blames the side poll did not vouch for,
//!   or, after bytes moved, the side that blocked last time.
//! * A direction splice refuses (EINVAL: tty, O_APPEND file) falls back to
//!   read/write through one fixed 64 KiB buffer.
//! * Half-close is exact: EOF on src is passed on only after dst got every
//!   byte, and only for that direction (shutdown(SHUT_WR) on a socket, close
//!   on an owned pipe). No timer ever ends a flow.
//! * A flow also ends when nobody reads its dst (EPIPE, or POLLERR/POLLHUP
//!   on dst): then its src is no longer read (an owned src is closed, a
//!   socket src gets shutdown(SHUT_RD)), so a writer there is told too.
//! * SIGPIPE must be ignored in the calling process (the Rust runtime does
//!   this for every binary); EPIPE is the signal.
//! * No heap allocation inside the loop; memory is fixed at setup.

mod command;
mod fallback;
mod fd;
mod flow;
mod listen;
mod pipe;
mod signals;

use std::fmt;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub use command::{run_command, run_connect, take_stdio, Error};
pub use fd::Fd;
pub use listen::{run_listen, ListenOptions};
pub use pipe::{grow_pipe, PIPE_SIZE};
pub use signals::die_of;

use fd::FlagTable;
use flow::{FlowState, Step, Want};

/// One direction of a relay: bytes from `src` to `dst`, in order, until EOF
/// on src (or until nobody reads dst).
pub struct Flow<'a> {
    pub src: Fd<'a>,
    pub dst: Fd<'a>,
    /// Written to dst once, just before the first byte from src is
    /// forwarded. Not written if src reaches EOF without producing a byte.
    pub preamble: &'a [u8],
    /// If set: before forwarding, read one line from src (up to and
    /// including b'\n', at most `max` bytes), never reading a byte past the
    /// newline, and hand it to the callback. The line is consumed, not
    /// forwarded. `Skip` drops it and reads the next one the same way. A
    /// line reaching `max` bytes without its newline goes to the callback as
    /// it is: `Skip` drops it too (the rest is read as a new line), anything
    /// else is a `LineTooLong` error. EOF before the newline: error.
    pub first_line: Option<FirstLine<'a>>,
    /// At EOF on src: true => pass EOF on to dst once it got every byte
    /// (shutdown(SHUT_WR) on a socket; close if dst is `Fd::Owned`; a
    /// borrowed non-socket dst stays open until the caller drops it).
    /// false => leave dst open for the caller to write more.
    pub eof_to_dst: bool,
}

impl<'a> Flow<'a> {
    /// A plain flow: no preamble, no first line, EOF passed on.
    pub fn new(src: impl Into<Fd<'a>>, dst: impl Into<Fd<'a>>) -> Self {
        Flow {
            src: src.into(),
            dst: dst.into(),
            preamble: b"",
            first_line: None,
            eof_to_dst: true,
        }
    }
}

pub struct FirstLine<'a> {
    pub max: usize,
    pub on_line: &'a mut dyn FnMut(&[u8]) -> LineVerdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineVerdict {
    /// Line accepted: forward the rest of src.
    Forward,
    /// End the whole relay now.
    Stop,
    /// Not the line we wait for: drop it and read another first line.
    Skip,
}

/// How a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    /// EOF on src, every byte delivered.
    Eof,
    /// Nobody reads dst any more (EPIPE, POLLERR/POLLHUP).
    DstGone,
    /// The first-line callback said Stop (for the other flow too).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes delivered to dst, preamble and first line not counted.
    pub up_bytes: u64,
    pub down_bytes: u64,
    pub stopped_by_line: bool,
    pub up_end: FlowEnd,
    pub down_end: FlowEnd,
}

/// Which flow an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

/// What the relay was doing when a system call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Setup,
    ReadSrc,
    WriteDst,
    Splice,
    Poll,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RelayError {
    Io {
        dir: Dir,
        op: Op,
        errno: Errno,
    },
    LineTooLong {
        dir: Dir,
        max: usize,
    },
    LineEof {
        dir: Dir,
        got: usize,
    },
    /// `Options::stop` became readable (a signal arrived, say).
    Interrupted,
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::Up => "upstream (stdin side)",
            Dir::Down => "downstream (stdout side)",
        })
    }
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::Io { dir, op, errno } => {
                let what = match op {
                    Op::Setup => "setting up",
                    Op::ReadSrc => "reading",
                    Op::WriteDst => "writing",
                    Op::Splice => "splicing",
                    Op::Poll => "waiting (poll)",
                };
                write!(f, "{what} {dir} failed: {}", errno.desc())
            }
            RelayError::LineTooLong { dir, max } => write!(
                f,
                "{dir}: the first line is longer than {max} bytes; the peer is not speaking the expected protocol"
            ),
            RelayError::LineEof { dir, got } => write!(
                f,
                "{dir}: the stream ended after {got} bytes, before the first line was complete; see the peer's log"
            ),
            RelayError::Interrupted => f.write_str("interrupted by a signal"),
        }
    }
}

impl std::error::Error for RelayError {}

/// Extra knobs for `relay_with`.
#[derive(Default, Clone, Copy)]
pub struct Options<'a> {
    /// When this fd becomes readable (a signalfd, say), the relay stops and
    /// returns `RelayError::Interrupted` (flags restored, fds dropped).
    pub stop: Option<BorrowedFd<'a>>,
}

/// Relay both flows at once; returns when both are done (or the first-line
/// callback said Stop). The fds' file status flags are restored, and owned
/// fds closed, before it returns, on success or error.
pub fn relay<'a>(up: Flow<'a>, down: Flow<'a>) -> Result<Stats, RelayError> {
    relay_with(up, down, Options::default())
}

pub fn relay_with<'a>(
    up: Flow<'a>,
    down: Flow<'a>,
    opts: Options<'_>,
) -> Result<Stats, RelayError> {
    let mut table = FlagTable::new();
    let up = FlowState::new(Dir::Up, up, &mut table)?;
    let down = match FlowState::new(Dir::Down, down, &mut table) {
        Ok(d) => d,
        Err(e) => {
            let mut up = up;
            up.release_all(&mut table);
            return Err(e);
        }
    };
    let mut engine = Engine {
        table,
        flows: [up, down],
    };
    engine.run(opts)
}

struct Engine<'a> {
    table: FlagTable,
    flows: [FlowState<'a>; 2],
}

impl Drop for Engine<'_> {
    fn drop(&mut self) {
        for f in self.flows.iter_mut().rev() {
            f.release_all(&mut self.table);
        }
    }
}

/// Readiness of one flow after a poll.
#[derive(Clone, Copy, Default)]
struct Ready {
    src: bool,
    dst: bool,
    dst_gone: bool,
}

impl Engine<'_> {
    fn stats(&self, stopped: bool) -> Stats {
        let end = |f: &FlowState| f.ended.unwrap_or(FlowEnd::Stopped);
        Stats {
            up_bytes: self.flows[0].bytes,
            down_bytes: self.flows[1].bytes,
            stopped_by_line: stopped,
            up_end: end(&self.flows[0]),
            down_end: end(&self.flows[1]),
        }
    }

    fn run(&mut self, opts: Options<'_>) -> Result<Stats, RelayError> {
        let mut wants = [Want::default(); 2];
        let mut go = [true, true];
        loop {
            for i in 0..2 {
                if !go[i] {
                    continue;
                }
                match self.flows[i].step(&mut self.table)? {
                    Step::Blocked(w) => wants[i] = w,
                    Step::Done => {}
                    Step::StopRelay => return Ok(self.stats(true)),
                }
            }
            if self.flows.iter().all(|f| f.ended.is_some()) {
                return Ok(self.stats(false));
            }
            let (ready, stop) = self.wait(&wants, opts.stop)?;
            if stop {
                return Err(RelayError::Interrupted);
            }
            for i in 0..2 {
                let r = ready[i];
                let f = &mut self.flows[i];
                go[i] = false;
                if f.ended.is_some() {
                    continue;
                }
                if r.dst_gone {
                    f.dst_gone(&mut self.table);
                    continue;
                }
                f.src_ready = r.src;
                f.dst_ready = r.dst;
                go[i] = r.src || r.dst;
            }
        }
    }

    /// One poll(2) over what the flows wait for. dst is always in the set
    /// (with no events when not wanted) so that POLLERR/POLLHUP report a
    /// vanished reader even while the flow waits for src; src is only in it
    /// when wanted (a hung-up src nobody wants to read would wake us forever).
    fn wait(
        &self,
        wants: &[Want; 2],
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<([Ready; 2], bool), RelayError> {
        // Up to 2 fds per flow plus the stop fd, on the stack.
        let mut idx: [[Option<usize>; 2]; 2] = [[None; 2]; 2];
        let mut n = 0;
        let mut spec: [Option<(BorrowedFd<'_>, PollFlags)>; 5] = [None; 5];
        let mut push = |fd, ev: PollFlags| {
            spec[n] = Some((fd, ev));
            n += 1;
            n - 1
        };
        for (i, f) in self.flows.iter().enumerate() {
            if f.ended.is_some() {
                continue;
            }
            if wants[i].src_in {
                if let Some(src) = f.src_fd() {
                    idx[i][0] = Some(push(src, PollFlags::POLLIN));
                }
            }
            if let Some(dst) = f.dst_fd() {
                let ev = if wants[i].dst_out {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::empty()
                };
                idx[i][1] = Some(push(dst, ev));
            }
        }
        let stop_idx = stop.map(|s| push(s, PollFlags::POLLIN));
        let Some(filler) = spec[0] else {
            return Ok(([Ready::default(); 2], false));
        };
        let mut fds: [PollFd<'_>; 5] = std::array::from_fn(|k| {
            let (fd, ev) = spec[k].unwrap_or(filler);
            PollFd::new(fd, ev)
        });
        loop {
            match poll(&mut fds[..n], PollTimeout::NONE) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(RelayError::Io {
                        dir: Dir::Up,
                        op: Op::Poll,
                        errno: e,
                    })
                }
            }
        }
        let rev = |k: Option<usize>| {
            k.and_then(|k| fds[k].revents())
                .unwrap_or(PollFlags::empty())
        };
        let mut ready = [Ready::default(); 2];
        for i in 0..2 {
            let s = rev(idx[i][0]);
            let d = rev(idx[i][1]);
            if s.contains(PollFlags::POLLNVAL) || d.contains(PollFlags::POLLNVAL) {
                return Err(RelayError::Io {
                    dir: if i == 0 { Dir::Up } else { Dir::Down },
                    op: Op::Poll,
                    errno: Errno::EBADF,
                });
            }
            ready[i] = Ready {
                src: !s.is_empty(),
                dst: d.contains(PollFlags::POLLOUT),
                dst_gone: d.intersects(PollFlags::POLLERR | PollFlags::POLLHUP),
            };
        }
        let stop = !rev(stop_idx).is_empty();
        Ok((ready, stop))
    }
}
