//! sys-backup-mnt and sys-backup: one direction of the relay: the per-direction
//! state machine. `step` moves bytes until something would block and says what
//! to wait for; it never blocks and never allocates.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};
use nix::sys::socket::Shutdown;
use nix::unistd::read;

use super::fd::{grow_sndbuf, kind_of, shut, Fd, FlagTable, Kind};
use super::pipe::{grow_pipe, Pipe, PIPE_SIZE};
use super::{Dir, FirstLine, Flow, FlowEnd, LineVerdict, Op, RelayError};

/// Bytes asked of one splice when no pipe of ours bounds it.
const CHUNK: usize = 1 << 20;
/// The read/write buffer (fallback mode and the preamble stage).
pub(crate) const BUF: usize = 64 << 10;
/// A direct splice that moved fewer bytes than this was a small message
/// (one page): src is taken to be empty.
const SMALL: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One end is a pipe: splice src -> dst directly.
    Direct,
    /// Neither end is a pipe: splice src -> our pipe -> dst.
    Piped,
    /// splice refused (tty, O_APPEND file, ...): read(2)/write(2).
    Copy,
}

/// What a blocked flow waits for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Want {
    pub(crate) src_in: bool,
    pub(crate) dst_out: bool,
}

pub(crate) enum Step {
    Blocked(Want),
    Done,
    StopRelay,
}

pub(crate) struct FlowState<'a> {
    pub(crate) dir: Dir,
    pub(crate) src: Option<Fd<'a>>,
    pub(crate) dst: Option<Fd<'a>>,
    pub(crate) src_slot: usize,
    pub(crate) dst_slot: usize,
    src_kind: Kind,
    dst_kind: Kind,
    pub(crate) mode: Mode,
    pub(crate) pipe: Option<Pipe>,
    pub(crate) buf: Box<[u8]>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) preamble: &'a [u8],
    pub(crate) pre_off: usize,
    first_line: Option<FirstLine<'a>>,
    line: Vec<u8>,
    eof_to_dst: bool,
    pub(crate) eof: bool,
    /// The last read from src returned less than asked: src is most likely
    /// empty now, so wait for poll instead of asking again (saves an
    /// EAGAIN syscall per message on interactive traffic).
    pub(crate) short: bool,
    pub(crate) ended: Option<FlowEnd>,
    pub(crate) bytes: u64,
    /// Readiness poll(2) reported before this step (for splice's EAGAIN).
    pub(crate) src_ready: bool,
    pub(crate) dst_ready: bool,
    /// Direct mode: the last EAGAIN was dst being full (see `direct_blocked`).
    dst_full_guess: bool,
}

pub(crate) type StepResult = Result<Option<Step>, RelayError>;

pub(crate) fn blocked(src_in: bool, dst_out: bool) -> StepResult {
    Ok(Some(Step::Blocked(Want { src_in, dst_out })))
}

/// errno values on a write/splice that mean "nobody reads dst any more".
pub(crate) fn dst_gone_errno(e: Errno) -> bool {
    matches!(e, Errno::EPIPE | Errno::ECONNRESET)
}

impl<'a> FlowState<'a> {
    pub(crate) fn new(dir: Dir, flow: Flow<'a>, table: &mut FlagTable) -> Result<Self, RelayError> {
        let setup = |e| RelayError::Io {
            dir,
            op: Op::Setup,
            errno: e,
        };
        let src_kind = kind_of(flow.src.as_fd());
        let dst_kind = kind_of(flow.dst.as_fd());
        let mode = if src_kind == Kind::Other || dst_kind == Kind::Other {
            Mode::Copy
        } else if src_kind == Kind::Pipe || dst_kind == Kind::Pipe {
            Mode::Direct
        } else {
            Mode::Piped
        };
        // A pipe handed to us (fd 0/1 from borg's subprocess: 64 KiB) is
        // grown like the pipes we create: each wake-up then moves up to 1 MiB
        // instead of 64 KiB. Refused growth (EPERM) leaves it as it was.
        for (kind, fd) in [(src_kind, flow.src.as_fd()), (dst_kind, flow.dst.as_fd())] {
            if kind == Kind::Pipe {
                grow_pipe(fd, PIPE_SIZE);
            }
        }
        // A socket we write to takes as many bytes per wake-up as its send
        // buffer holds (208 KiB by default): ask for 1 MiB, as for pipes.
        if dst_kind == Kind::Socket {
            grow_sndbuf(flow.dst.as_fd(), PIPE_SIZE);
        }
        let pipe = match mode {
            Mode::Piped => Some(Pipe::new().map_err(setup)?),
            _ => None,
        };
        let line = match &flow.first_line {
            Some(fl) => Vec::with_capacity(fl.max),
            None => Vec::new(),
        };
        let src_slot = table.acquire(flow.src.as_fd()).map_err(setup)?;
        let dst_slot = match table.acquire(flow.dst.as_fd()) {
            Ok(s) => s,
            Err(e) => {
                table.release(src_slot, flow.src.as_fd());
                return Err(setup(e));
            }
        };
        Ok(FlowState {
            dir,
            src: Some(flow.src),
            dst: Some(flow.dst),
            src_slot,
            dst_slot,
            src_kind,
            dst_kind,
            mode,
            pipe,
            // vec![0; n] is calloc: pages never touched stay out of the RSS.
            buf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            preamble: flow.preamble,
            pre_off: 0,
            first_line: flow.first_line,
            line,
            eof_to_dst: flow.eof_to_dst,
            eof: false,
            short: false,
            ended: None,
            bytes: 0,
            src_ready: false,
            dst_ready: false,
            dst_full_guess: false,
        })
    }

    pub(crate) fn src_fd(&self) -> Option<BorrowedFd<'_>> {
        self.src.as_ref().map(Fd::as_fd)
    }

    pub(crate) fn dst_fd(&self) -> Option<BorrowedFd<'_>> {
        self.dst.as_ref().map(Fd::as_fd)
    }

    pub(crate) fn src_is_tty(&self) -> bool {
        self.src_kind == Kind::Other
            && self
                .src_fd()
                .is_some_and(|fd| nix::unistd::isatty(fd).unwrap_or(false))
    }

    pub(crate) fn err(&self, op: Op, errno: Errno) -> RelayError {
        RelayError::Io {
            dir: self.dir,
            op,
            errno,
        }
    }

    /// Move bytes until blocked or done.
    pub(crate) fn step(&mut self, t: &mut FlagTable) -> Result<Step, RelayError> {
        if self.ended.is_some() {
            return Ok(Step::Done);
        }
        if self.first_line.is_some() {
            if let Some(s) = self.read_first_line()? {
                return Ok(s);
            }
        }
        loop {
            let staging = self.pre_off < self.preamble.len() || self.start < self.end;
            let r = if staging {
                self.copy_once(t)?
            } else {
                match self.mode {
                    Mode::Copy => self.copy_once(t)?,
                    Mode::Piped => self.piped_once(t)?,
                    Mode::Direct => self.direct_once(t)?,
                }
            };
            if let Some(s) = r {
                self.src_ready = false;
                self.dst_ready = false;
                return Ok(s);
            }
        }
    }

    /// Read the first line one byte at a time, so that not one byte past the
    /// newline leaves src. None: line accepted, go on forwarding.
    fn read_first_line(&mut self) -> StepResult {
        let max = self.first_line.as_ref().map_or(0, |f| f.max);
        loop {
            if self.line.len() >= max {
                let fl = self.first_line.as_mut().expect("first line stage");
                if (fl.on_line)(&self.line) == LineVerdict::Skip {
                    self.line.clear();
                    continue;
                }
                return Err(RelayError::LineTooLong { dir: self.dir, max });
            }
            let mut b = [0u8; 1];
            let Some(src) = self.src_fd() else {
                return Ok(Some(Step::Done));
            };
            match read(src, &mut b) {
                Ok(0) => {
                    return Err(RelayError::LineEof {
                        dir: self.dir,
                        got: self.line.len(),
                    })
                }
                Ok(_) => {
                    self.line.push(b[0]);
                    if b[0] == b'\n' {
                        let fl = self.first_line.as_mut().expect("first line stage");
                        let verdict = (fl.on_line)(&self.line);
                        if verdict == LineVerdict::Skip {
                            self.line.clear();
                            continue;
                        }
                        self.first_line = None;
                        return match verdict {
                            LineVerdict::Forward => Ok(None),
                            _ => {
                                self.ended = Some(FlowEnd::Stopped);
                                Ok(Some(Step::StopRelay))
                            }
                        };
                    }
                }
                Err(Errno::EAGAIN) => return blocked(true, false),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(self.err(Op::ReadSrc, e)),
            }
        }
    }

    /// Splice through our intermediate pipe: drain it first, then refill.
    fn piped_once(&mut self, t: &mut FlagTable) -> StepResult {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK;
        let (held, cap) = match &self.pipe {
            Some(p) => (p.held, p.cap),
            None => return Err(self.err(Op::Setup, Errno::EINVAL)),
        };
        if held > 0 {
            let (Some(p), Some(dst)) = (self.pipe.as_ref(), self.dst_fd()) else {
                return Ok(Some(Step::Done));
            };
            match splice(&p.r, None, dst, None, held, flags) {
                Ok(0) => return Err(self.err(Op::WriteDst, Errno::EIO)),
                Ok(n) => {
                    if let Some(p) = self.pipe.as_mut() {
                        p.held -= n;
                    }
                    self.bytes += n as u64;
                }
                // The pipe holds bytes, so EAGAIN can only mean dst is full.
                Err(Errno::EAGAIN) => return blocked(false, true),
                Err(Errno::EINTR) => {}
                Err(Errno::EINVAL) => self.mode = Mode::Copy,
                Err(e) if dst_gone_errno(e) => return Ok(Some(self.dst_gone(t))),
                Err(e) => return Err(self.err(Op::WriteDst, e)),
            }
            return Ok(None);
        }
        if self.eof {
            return Ok(Some(self.finish_eof(t)));
        }
        if std::mem::take(&mut self.short) {
            return blocked(true, false);
        }
        let (Some(p), Some(src)) = (self.pipe.as_ref(), self.src_fd()) else {
            return Ok(Some(Step::Done));
        };
        match splice(src, None, &p.w, None, cap, flags) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                // Only a small message means src is empty; a socket's
                // splice returns what it holds, far less than our pipe
                // takes, and more may be there already.
                self.short = n < SMALL;
                if let Some(p) = self.pipe.as_mut() {
                    p.held += n;
                }
            }
            // The pipe is empty, so EAGAIN can only mean src is empty.
            Err(Errno::EAGAIN) => return blocked(true, false),
            Err(Errno::EINTR) => {}
            Err(Errno::EINVAL) => self.mode = Mode::Copy,
            Err(e) => return Err(self.err(Op::ReadSrc, e)),
        }
        Ok(None)
    }

    /// Splice src -> dst (one of them a pipe), again and again while bytes
    /// move: a splice that moved less than asked (one 64 KiB pipe's worth,
    /// say) is not a reason to go back to poll, EAGAIN is.
    fn direct_once(&mut self, t: &mut FlagTable) -> StepResult {
        if self.eof {
            return Ok(Some(self.finish_eof(t)));
        }
        let (Some(src), Some(dst)) = (self.src_fd(), self.dst_fd()) else {
            return Ok(Some(Step::Done));
        };
        match splice(src, None, dst, None, CHUNK, SpliceFFlags::SPLICE_F_NONBLOCK) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                self.bytes += n as u64;
                // What poll said before is used up now.
                self.src_ready = false;
                self.dst_ready = false;
                // A small message (interactive traffic): src is most likely
                // empty; wait for it without the EAGAIN splice (if it is not
                // empty, poll returns at once, at the same cost).
                if n < SMALL {
                    self.dst_full_guess = false;
                    return blocked(true, false);
                }
            }
            Err(Errno::EAGAIN) => return self.direct_blocked(),
            Err(Errno::EINTR) => {}
            Err(Errno::EINVAL) => self.mode = Mode::Copy,
            Err(e) if dst_gone_errno(e) => return Ok(Some(self.dst_gone(t))),
            Err(e) => return Err(self.err(Op::Splice, e)),
        }
        Ok(None)
    }

    /// A direct splice said EAGAIN, which does not say which side blocked.
    /// Nothing moved since poll vouched for src: dst is full. Nothing moved
    /// since poll vouched for dst only: src is empty. Otherwise (bytes moved
    /// first, or no poll yet) guess the side that blocked last time: a
    /// transfer is usually limited by the same side throughout. A wrong
    /// guess costs one poll that returns at once, never a sleep or a spin:
    /// the side waited for is ready, the next EAGAIN is then decided above.
    fn direct_blocked(&mut self) -> StepResult {
        let dst_full = match (self.src_ready, self.dst_ready) {
            (true, _) => true,
            (false, true) => false,
            (false, false) => self.dst_full_guess,
        };
        self.dst_full_guess = dst_full;
        if dst_full {
            blocked(false, true)
        } else {
            blocked(true, false)
        }
    }

    /// src reached EOF and every byte reached dst.
    pub(crate) fn finish_eof(&mut self, t: &mut FlagTable) -> Step {
        if self.eof_to_dst {
            if let Some(dst) = self.dst_fd() {
                if self.dst_kind == Kind::Socket {
                    shut(dst, Shutdown::Write);
                }
            }
            self.close_dst(t);
        }
        self.close_src(t);
        self.pipe = None;
        self.ended = Some(FlowEnd::Eof);
        Step::Done
    }

    /// Nobody reads dst any more: stop reading src and tell its writer.
    pub(crate) fn dst_gone(&mut self, t: &mut FlagTable) -> Step {
        if let Some(src) = self.src_fd() {
            if self.src_kind == Kind::Socket {
                shut(src, Shutdown::Read);
            }
        }
        self.close_src(t);
        self.close_dst(t);
        self.pipe = None;
        self.start = 0;
        self.end = 0;
        self.ended = Some(FlowEnd::DstGone);
        Step::Done
    }

    /// Close src now if we own it (a borrowed fd stays open until the caller
    /// drops it); its flags are restored first.
    fn close_src(&mut self, t: &mut FlagTable) {
        if matches!(self.src, Some(Fd::Owned(_))) {
            if let Some(fd) = self.src.take() {
                t.release(self.src_slot, fd.as_fd());
            }
        }
    }

    fn close_dst(&mut self, t: &mut FlagTable) {
        if matches!(self.dst, Some(Fd::Owned(_))) {
            if let Some(fd) = self.dst.take() {
                t.release(self.dst_slot, fd.as_fd());
            }
        }
    }

    /// Release (and drop) whatever the flow still holds.
    pub(crate) fn release_all(&mut self, t: &mut FlagTable) {
        if let Some(fd) = self.dst.take() {
            t.release(self.dst_slot, fd.as_fd());
        }
        if let Some(fd) = self.src.take() {
            t.release(self.src_slot, fd.as_fd());
        }
    }
}
