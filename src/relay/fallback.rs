//! sys-backup-mnt and sys-backup: the read(2)/write(2) path: used for a
//! direction splice refuses (a tty, a character device, an O_APPEND file:
//! EINVAL), and for the first chunk of a flow that has a preamble to write
//! before it. One fixed buffer per flow.

use nix::errno::Errno;
use nix::unistd::{read, write};

use super::fd::FlagTable;
use super::flow::{blocked, dst_gone_errno, FlowState, StepResult};
use super::Op;

impl FlowState<'_> {
    /// One read or one write. The buffer is written out (after the preamble,
    /// if one is due) before anything more is read.
    pub(crate) fn copy_once(&mut self, t: &mut FlagTable) -> StepResult {
        if self.start < self.end {
            let Some(dst) = self.dst_fd() else {
                return Ok(None);
            };
            let preamble = self.pre_off < self.preamble.len();
            let data = if preamble {
                &self.preamble[self.pre_off..]
            } else {
                &self.buf[self.start..self.end]
            };
            match write(dst, data) {
                Ok(n) if preamble => self.pre_off += n,
                Ok(n) => {
                    self.start += n;
                    self.bytes += n as u64;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                }
                Err(Errno::EAGAIN) => return blocked(false, true),
                Err(Errno::EINTR) => {}
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
        // Bytes left in our intermediate pipe (splice into dst was refused
        // after they got there) go first.
        let held = self.pipe.as_ref().map_or(0, |p| p.held);
        let r = if held > 0 {
            let want = held.min(self.buf.len());
            match self.pipe.as_ref() {
                Some(p) => read(&p.r, &mut self.buf[..want]),
                None => return Ok(None),
            }
        } else {
            match self.src.as_ref() {
                Some(src) => read(src.as_fd(), &mut self.buf[..]),
                None => return Ok(None),
            }
        };
        match r {
            Ok(0) if held > 0 => return Err(self.err(Op::ReadSrc, Errno::EIO)),
            Ok(0) => self.eof = true,
            Ok(n) => {
                if let Some(p) = self.pipe.as_mut().filter(|_| held > 0) {
                    p.held -= n;
                } else {
                    self.short = n < self.buf.len();
                }
                self.start = 0;
                self.end = n;
            }
            Err(Errno::EAGAIN) if held == 0 => return blocked(true, false),
            // A terminal whose other side hung up: read(2) says EIO; that is
            // the end of its input, as for any program reading a tty.
            Err(Errno::EIO) if held == 0 && self.src_is_tty() => self.eof = true,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(self.err(Op::ReadSrc, e)),
        }
        Ok(None)
    }
}
