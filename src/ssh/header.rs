//! sys-backup-mnt and sys-backup: the request header that `qubes-ssh-client` sends to the
//! `qubes-borg.Ssh` service (client -> service), once, before borg's own bytes. See
//! docs/PROTOCOL.md.
//!
//! ```text
//! qubes-ssh/1 SP WORD (SP WORD)* LF
//! ```
//!
//! The words are borg's `BORG_RSH` command line after the host (`argv::BorgArgv::to_words`):
//! `[-p PORT] [USER@]NAME REMOTE_PATH serve [OPTIONS]`. At most `MAX_HEADER` bytes including
//! the LF; printable ASCII only; words separated by exactly one space. The service parses the
//! words with the same strict parser the client used.

use super::argv::{self as borg_argv, ArgvError, BorgArgv};
use crate::validate;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::fmt;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

/// First word of the header: protocol name and version.
pub const MAGIC: &str = "qubes-ssh/1";
/// Longest header, including the final LF.
pub const MAX_HEADER: usize = 1024;

/// Encode a vetted command line as a header line.
pub fn encode(argv: &BorgArgv) -> Vec<u8> {
    let mut s = String::from(MAGIC);
    for w in argv.to_words() {
        s.push(' ');
        s.push_str(&w);
    }
    s.push('\n');
    s.into_bytes()
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// More than `MAX_HEADER` bytes without a LF.
    TooLong,
    /// The peer closed its side after `got` bytes, before the LF.
    Eof { got: usize },
    /// No complete header within the time limit.
    Timeout { ms: u128 },
    /// Reading failed.
    Io(Errno),
    /// A byte that is not printable ASCII (control character, NUL, non-ASCII) at `offset`.
    BadByte { offset: usize, byte: u8 },
    /// The first word is not `MAGIC`.
    BadMagic(String),
    /// The words are not a command line borg builds.
    Argv(ArgvError),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooLong => write!(f, "request header longer than {MAX_HEADER} bytes"),
            HeaderError::Eof { got } => {
                write!(f, "client closed the connection after {got} bytes, before the end of the request header")
            }
            HeaderError::Timeout { ms } => {
                write!(f, "no complete request header within {} s", *ms as f64 / 1000.0)
            }
            HeaderError::Io(e) => write!(f, "reading the request header: {e}"),
            HeaderError::BadByte { offset, byte } => write!(
                f,
                "request header has a forbidden byte 0x{byte:02x} at offset {offset} (control character, NUL or non-ASCII)"
            ),
            HeaderError::BadMagic(m) => write!(
                f,
                "request header does not start with '{MAGIC}' (got '{}'): client and service versions differ?",
                validate::printable(m.as_bytes(), 40)
            ),
            HeaderError::Argv(e) => write!(f, "request {e}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Decode one header line (with its final LF).
pub fn decode(untrusted_line: &[u8]) -> Result<BorgArgv, HeaderError> {
    if untrusted_line.len() > MAX_HEADER {
        return Err(HeaderError::TooLong);
    }
    let untrusted_body = match untrusted_line.split_last() {
        Some((b'\n', untrusted_body)) => untrusted_body,
        _ => {
            return Err(HeaderError::Eof {
                got: untrusted_line.len(),
            })
        }
    };
    if let Some(offset) = untrusted_body
        .iter()
        .position(|&b| !(0x20..=0x7e).contains(&b))
    {
        return Err(HeaderError::BadByte {
            offset,
            byte: untrusted_body[offset],
        });
    }
    // Printable ASCII is valid UTF-8.
    let untrusted_body = std::str::from_utf8(untrusted_body).expect("printable ASCII");
    let mut words = untrusted_body.split(' ');
    let magic = words.next().unwrap_or("");
    if magic != MAGIC {
        return Err(HeaderError::BadMagic(magic.to_string()));
    }
    let rest: Vec<&str> = words.collect();
    borg_argv::parse(&rest).map_err(HeaderError::Argv)
}

/// Read one header line from `fd`, one byte at a time so that not a single byte after the LF is
/// consumed (the rest of the stream belongs to borg serve). Gives up after `MAX_HEADER` bytes
/// without LF, at EOF, or when `timeout` passes.
pub fn read_line(fd: BorrowedFd<'_>, timeout: Duration) -> Result<Vec<u8>, HeaderError> {
    // `Instant + Duration` panics on overflow; a timeout too long to represent never expires.
    let deadline = Instant::now().checked_add(timeout);
    let mut line = Vec::with_capacity(128);
    loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return Err(HeaderError::Timeout {
                ms: timeout.as_millis(),
            });
        }
        let ms = PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128))
            .unwrap_or(PollTimeout::MAX);
        let mut pfd = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut pfd, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(HeaderError::Io(e)),
        }
        let mut b = [0u8; 1];
        match nix::unistd::read(fd, &mut b) {
            Ok(0) => return Err(HeaderError::Eof { got: line.len() }),
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Ok(line);
                }
                if line.len() >= MAX_HEADER {
                    return Err(HeaderError::TooLong);
                }
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(HeaderError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn encode_then_decode_is_identity() {
        let a = borg_argv::parse(&["-p", "23", "u@nas", "borg", "serve", "--info"]).unwrap();
        let h = encode(&a);
        assert_eq!(h, b"qubes-ssh/1 -p 23 u@nas borg serve --info\n");
        assert_eq!(decode(&h).unwrap(), a);
    }

    #[test]
    fn decode_refuses_control_bytes_magic_and_double_spaces() {
        assert!(matches!(
            decode(b"qubes-ssh/1 nas borg serve\t\n"),
            Err(HeaderError::BadByte { byte: b'\t', .. })
        ));
        assert!(matches!(
            decode(b"qubes-ssh/1 nas\0 borg serve\n"),
            Err(HeaderError::BadByte { byte: 0, .. })
        ));
        assert!(matches!(
            decode(b"qubes-ssh/2 nas borg serve\n"),
            Err(HeaderError::BadMagic(_))
        ));
        assert!(matches!(
            decode(b"qubes-ssh/1 nas  borg serve\n"),
            Err(HeaderError::Argv(_))
        ));
        assert!(matches!(
            decode(b"qubes-ssh/1 nas borg serve"),
            Err(HeaderError::Eof { .. })
        ));
    }

    #[test]
    fn read_line_stops_at_newline_and_leaves_the_rest_unread() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"qubes-ssh/1 nas borg serve\nBORGDATA")
            .unwrap();
        let line = read_line(b.as_fd(), Duration::from_secs(5)).unwrap();
        assert_eq!(line, b"qubes-ssh/1 nas borg serve\n");
        let mut rest = [0u8; 8];
        nix::unistd::read(b.as_fd(), &mut rest).unwrap();
        assert_eq!(&rest, b"BORGDATA");
    }

    #[test]
    fn read_line_takes_any_timeout_without_panicking() {
        let (a, b) = UnixStream::pair().unwrap();
        // What QUBES_SSH_SERVICE_HEADER_TIMEOUT_MS=18446744073709551615 gives the service.
        for t in [Duration::MAX, Duration::from_millis(u64::MAX)] {
            (&a).write_all(b"qubes-ssh/1 nas borg serve\n").unwrap();
            assert_eq!(
                read_line(b.as_fd(), t).unwrap(),
                b"qubes-ssh/1 nas borg serve\n"
            );
        }
    }

    #[test]
    fn read_line_bounds_length_and_time() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[b'x'; MAX_HEADER + 10]).unwrap();
        assert_eq!(
            read_line(b.as_fd(), Duration::from_secs(5)),
            Err(HeaderError::TooLong)
        );
        let (_a, b) = UnixStream::pair().unwrap();
        let t = Instant::now();
        assert!(matches!(
            read_line(b.as_fd(), Duration::from_millis(200)),
            Err(HeaderError::Timeout { .. })
        ));
        assert!(t.elapsed() >= Duration::from_millis(200));
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"qubes").unwrap();
        drop(a);
        assert_eq!(
            read_line(b.as_fd(), Duration::from_secs(5)),
            Err(HeaderError::Eof { got: 5 })
        );
    }
}
