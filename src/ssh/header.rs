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

    /// A valid header of exactly `n` bytes (806 + 1..=255): the longest words borg can send,
    /// with the remote path making up the rest.
    fn valid_header_of_len(n: usize) -> Vec<u8> {
        let argv = |rp: String| BorgArgv {
            port: Some(65535),
            user: Some("u".repeat(32)),
            name: "n".repeat(64),
            remote_path: rp,
            serve: borg_argv::ServeOptions {
                log_level: Some(borg_argv::LogLevel::Critical),
                debug_topics: vec![format!("repository{}", "x".repeat(54)); 8],
                storage_quota: Some(u64::MAX),
            },
        };
        let fixed = encode(&argv(String::new())).len();
        let h = encode(&argv("b".repeat(n - fixed)));
        assert_eq!(h.len(), n);
        h
    }

    #[test]
    fn decode_takes_a_header_of_max_header_bytes_and_refuses_one_more() {
        let at_limit = valid_header_of_len(MAX_HEADER);
        assert_eq!(encode(&decode(&at_limit).unwrap()), at_limit);
        // Valid in every other way: only its length is wrong.
        let over = valid_header_of_len(MAX_HEADER + 1);
        assert!(borg_argv::parse(
            &std::str::from_utf8(&over[12..over.len() - 1])
                .unwrap()
                .split(' ')
                .collect::<Vec<_>>()
        )
        .is_ok());
        assert_eq!(decode(&over), Err(HeaderError::TooLong));
    }

    #[test]
    fn decode_refuses_del_and_non_ascii_but_takes_space_and_tilde() {
        assert_eq!(
            decode(b"qubes-ssh/1 nas borg serve\x7f\n"),
            Err(HeaderError::BadByte {
                offset: 26,
                byte: 0x7f
            })
        );
        assert_eq!(
            decode(b"qubes-ssh/1 n\xc3\xa9s borg serve\n"),
            Err(HeaderError::BadByte {
                offset: 13,
                byte: 0xc3
            })
        );
        assert_eq!(
            decode(b"qubes-ssh/1 nas ~/borg serve\n"),
            Err(HeaderError::Argv(ArgvError::Invalid {
                pos: 2,
                err: validate::Invalid {
                    what: "remote borg path",
                    why: "contains a character that is not allowed"
                }
            }))
        );
        assert_eq!(
            decode(b"qubes-ssh/1\n"),
            Err(HeaderError::Argv(ArgvError::Empty))
        );
        assert_eq!(decode(b"\n"), Err(HeaderError::BadMagic(String::new())));
    }

    #[test]
    fn read_line_refuses_a_line_whose_lf_would_be_byte_max_header_plus_one() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut long = vec![b'x'; MAX_HEADER];
        long.push(b'\n');
        a.write_all(&long).unwrap();
        assert_eq!(
            read_line(b.as_fd(), Duration::from_secs(5)),
            Err(HeaderError::TooLong)
        );
        // Exactly MAX_HEADER bytes with the LF: taken.
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&long[1..]).unwrap();
        assert_eq!(
            read_line(b.as_fd(), Duration::from_secs(5)).unwrap().len(),
            MAX_HEADER
        );
    }

    #[test]
    fn header_errors_tell_what_was_wrong() {
        assert_eq!(
            HeaderError::TooLong.to_string(),
            "request header longer than 1024 bytes"
        );
        assert_eq!(
            HeaderError::Eof { got: 5 }.to_string(),
            "client closed the connection after 5 bytes, before the end of the request header"
        );
        assert_eq!(
            HeaderError::Timeout { ms: 1500 }.to_string(),
            "no complete request header within 1.5 s"
        );
        assert_eq!(
            HeaderError::Io(Errno::EIO).to_string(),
            format!("reading the request header: {}", Errno::EIO)
        );
        assert_eq!(
            HeaderError::BadByte { offset: 3, byte: 7 }.to_string(),
            "request header has a forbidden byte 0x07 at offset 3 (control character, NUL or non-ASCII)"
        );
        assert_eq!(
            HeaderError::BadMagic("x\ty".into()).to_string(),
            "request header does not start with 'qubes-ssh/1' (got 'x?y'): client and service versions differ?"
        );
        assert_eq!(
            HeaderError::Argv(ArgvError::Missing("'serve'")).to_string(),
            "request command line ends before 'serve'"
        );
    }
}
