//! sys-backup-mnt and sys-backup: the status line that the `qubes-borg.Ssh` service sends to
//! `qubes-ssh-client` (service -> client), once, as the first bytes of its stdout. See
//! docs/PROTOCOL.md.
//!
//! ```text
//! LF "qubes-ssh/1" LF                   the mark (MARK), then one of:
//! OK LF                                 ssh is running; borg serve's bytes follow
//! ERR SP CODE SP CLASS SP MESSAGE LF    nothing follows; the service exits with CODE
//! ```
//!
//! The mark is there because qrexec may start the service through a login shell (Qubes 4.3
//! without the fork server: `/bin/sh -lc`; 4.2: the `#!/bin/sh -l` multiplexer), so whatever
//! the target's login scripts print comes first on the same stdout. The client skips it (see
//! [`Line::of`]); the leading LF ends a last line the scripts left without one.
//!
//! `OK` goes out just before ssh's first output byte (or when ssh ends cleanly without any);
//! `ERR` goes out instead of it when the request is refused or ssh fails before writing
//! anything. At most `MAX_STATUS` bytes, printable ASCII. CODE is 1..=255 and is also the exit
//! status of the client. CLASS is one lower-case word (`[a-z-]`) for scripts and tests.

use crate::validate;
use std::fmt;

/// Longest status line, including the LF.
pub const MAX_STATUS: usize = 512;
/// What the service writes just before its status line.
pub const MARK: &[u8] = b"\nqubes-ssh/1\n";
/// The mark and the status line the service sends when ssh is up.
pub const OK_WIRE: &[u8] = b"\nqubes-ssh/1\nOK\n";
/// How the service's own log line starts: its last line on stderr, which qrexec delivers to the
/// client too. The client takes it for "the service ended" (qrexec sends the exit status after
/// all of the service's stderr); the service never passes on another line starting so.
pub const LOG_PREFIX: &str = "qubes-ssh-service: source=";
/// At most this much output from the target may come before the mark.
pub const MAX_BEFORE_MARK: usize = 64 * 1024;

/// A line the client reads before the status line, by what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// An empty line (the LF that starts the mark).
    Blank,
    /// The mark: the next line is the status line.
    Mark,
    /// Anything else: output of the target's login scripts (or a part of a long line of it).
    Other,
}

impl Line {
    pub fn of(untrusted_line: &[u8]) -> Line {
        match untrusted_line {
            b"\n" => Line::Blank,
            _ if untrusted_line == &MARK[1..] => Line::Mark,
            _ => Line::Other,
        }
    }
}

/// The client's count of what came before the mark: the target's login scripts may print, but
/// not without bound.
#[derive(Debug, Default)]
pub struct BeforeMark {
    seen: usize,
}

impl BeforeMark {
    /// What `untrusted_line` is, or `None` once more than `MAX_BEFORE_MARK` bytes (this line
    /// included) came before the mark.
    pub fn line(&mut self, untrusted_line: &[u8]) -> Option<Line> {
        self.seen += untrusted_line.len();
        if self.seen > MAX_BEFORE_MARK {
            return None;
        }
        Some(Line::of(untrusted_line))
    }
}

/// What went wrong, as one word on the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrClass {
    /// The request header was malformed, too long, too slow or cut short.
    Header,
    /// The request asked for something not allowed.
    Refused,
    /// No configuration for this name.
    UnknownDestination,
    /// The destination configuration is broken.
    Config,
    /// The split-SSH agent could not be set up.
    Agent,
    /// The vault could not lend the key (agent down, key not loaded, frozen, call refused).
    Vault,
    /// Something failed inside the service.
    Internal,
    /// ssh: the server's host key does not match the pinned keys.
    HostKey,
    /// ssh: the server refused our key.
    Auth,
    /// ssh: TCP connection refused.
    ConnectionRefused,
    /// ssh: name resolution, timeout, unreachable network.
    Network,
    /// The remote command (borg) was not found or could not run.
    RemoteCommand,
    /// ssh failed for another reason.
    Ssh,
    /// ssh failed during the session (keep-alive timeout, connection closed); only in the
    /// service's log line, never a status line (the stream had started).
    ConnectionLost,
    /// A class this client does not know (newer service).
    Other,
}

const CLASSES: &[(ErrClass, &str)] = &[
    (ErrClass::Header, "header"),
    (ErrClass::Refused, "refused"),
    (ErrClass::UnknownDestination, "unknown-destination"),
    (ErrClass::Config, "config"),
    (ErrClass::Agent, "agent"),
    (ErrClass::Vault, "vault"),
    (ErrClass::Internal, "internal"),
    (ErrClass::HostKey, "host-key"),
    (ErrClass::Auth, "auth"),
    (ErrClass::ConnectionRefused, "connection-refused"),
    (ErrClass::Network, "network"),
    (ErrClass::RemoteCommand, "remote-command"),
    (ErrClass::Ssh, "ssh"),
    (ErrClass::ConnectionLost, "connection-lost"),
    (ErrClass::Other, "other"),
];

impl ErrClass {
    pub fn as_str(self) -> &'static str {
        CLASSES
            .iter()
            .find(|(c, _)| *c == self)
            .map(|(_, s)| *s)
            .unwrap_or("other")
    }
    fn parse(s: &str) -> ErrClass {
        CLASSES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(c, _)| *c)
            .unwrap_or(ErrClass::Other)
    }
}

/// A status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    Err {
        code: u8,
        class: ErrClass,
        message: String,
    },
}

impl Status {
    /// The mark and this status line, as the service writes them.
    pub fn wire(&self) -> Vec<u8> {
        let mut v = MARK.to_vec();
        v.extend(self.encode());
        v
    }

    /// An error status. `code` 0 is raised to 1 (an error never reports success); the message
    /// is made printable and cut so that the line fits `MAX_STATUS`.
    pub fn err(code: u8, class: ErrClass, message: &str) -> Status {
        let room = MAX_STATUS - "ERR 255  \n".len() - class.as_str().len();
        Status::Err {
            code: code.max(1),
            class,
            message: validate::printable(message.as_bytes(), room - 3),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Status::Ok => OK_WIRE[MARK.len()..].to_vec(),
            Status::Err {
                code,
                class,
                message,
            } => format!("ERR {code} {} {message}\n", class.as_str()).into_bytes(),
        }
    }

    /// Decode a line (with its LF) as read by the client.
    pub fn decode(untrusted_line: &[u8]) -> Result<Status, StatusError> {
        if untrusted_line.len() > MAX_STATUS {
            return Err(StatusError::TooLong);
        }
        let untrusted_body = match untrusted_line.split_last() {
            Some((b'\n', untrusted_body)) => untrusted_body,
            _ => {
                return Err(StatusError::Malformed(validate::printable(
                    untrusted_line,
                    80,
                )))
            }
        };
        if untrusted_body == b"OK" {
            return Ok(Status::Ok);
        }
        let malformed = || StatusError::Malformed(validate::printable(untrusted_body, 80));
        let rest = untrusted_body.strip_prefix(b"ERR ").ok_or_else(malformed)?;
        // The message is shown to the user: keep it printable whatever the service sent.
        let rest = validate::printable(rest, MAX_STATUS);
        let mut parts = rest.splitn(3, ' ');
        let code = parts.next().ok_or_else(malformed)?;
        let class = parts.next().ok_or_else(malformed)?;
        let message = parts.next().unwrap_or("").to_string();
        if code.is_empty() || code.len() > 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let code: u8 = match code.parse::<u16>() {
            Ok(n @ 1..=255) => n as u8,
            _ => return Err(malformed()),
        };
        if class.is_empty() || !class.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(malformed());
        }
        Ok(Status::Err {
            code,
            class: ErrClass::parse(class),
            message,
        })
    }
}

/// A status line the client could not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusError {
    TooLong,
    Malformed(String),
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::TooLong => write!(
                f,
                "status line from the service is longer than {MAX_STATUS} bytes"
            ),
            StatusError::Malformed(s) => write!(f, "malformed status line from the service: '{s}'"),
        }
    }
}

impl std::error::Error for StatusError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_and_err_round_trip() {
        assert_eq!(Status::decode(&Status::Ok.encode()), Ok(Status::Ok));
        let e = Status::err(255, ErrClass::HostKey, "host key of nas does not match");
        assert_eq!(
            e.encode(),
            b"ERR 255 host-key host key of nas does not match\n"
        );
        assert_eq!(Status::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn the_mark_and_what_comes_before_it() {
        assert_eq!(Status::Ok.wire(), OK_WIRE);
        assert_eq!(Line::of(b"\n"), Line::Blank);
        assert_eq!(Line::of(b"qubes-ssh/1\n"), Line::Mark);
        for other in [
            &b"OK\n"[..],
            b"Welcome\n",
            b"qubes-ssh/1",
            b"qubes-ssh/1 OK\n",
            b"no-lf",
        ] {
            assert_eq!(Line::of(other), Line::Other, "{other:?}");
        }
    }

    #[test]
    fn err_messages_are_bounded_and_printable() {
        let e = Status::err(77, ErrClass::Refused, &"\x1b".repeat(2000));
        let line = e.encode();
        assert!(line.len() <= MAX_STATUS);
        assert!(!line[..line.len() - 1]
            .iter()
            .any(|b| !(0x20..=0x7e).contains(b)));
    }

    #[test]
    fn decode_refuses_what_the_service_must_not_send() {
        for bad in [
            &b"OK"[..],
            b"ok\n",
            b"ERR\n",
            b"ERR 0 x y\n",
            b"ERR 256 x y\n",
            b"ERR 12a x y\n",
            b"ERR 1 X y\n",
            b"BORGDATA\n",
        ] {
            assert!(Status::decode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Status::decode(b"ERR 9 future-class text \x07\n"),
            Ok(Status::Err {
                code: 9,
                class: ErrClass::Other,
                message: "text ?".into()
            })
        );
    }

    #[test]
    fn every_class_has_its_own_word_and_reads_back() {
        for (class, word) in CLASSES {
            assert_eq!(class.as_str(), *word);
            assert_eq!(ErrClass::parse(word), *class, "{word}");
        }
        assert_eq!(ErrClass::parse("no-such-class"), ErrClass::Other);
    }

    #[test]
    fn the_longest_error_line_is_exactly_max_status_and_code_0_becomes_1() {
        let e = Status::err(255, ErrClass::ConnectionRefused, &"m".repeat(2000));
        assert_eq!(e.encode().len(), MAX_STATUS);
        assert_eq!(Status::decode(&e.encode()), Ok(e));
        let short = Status::err(0, ErrClass::Ssh, "x");
        assert_eq!(short.encode(), b"ERR 1 ssh x\n");
    }

    #[test]
    fn decode_takes_max_status_bytes_and_refuses_one_more() {
        let line = |n: usize| {
            let mut l = b"ERR 5 ssh ".to_vec();
            l.resize(n - 1, b'm');
            l.push(b'\n');
            l
        };
        assert!(matches!(
            Status::decode(&line(MAX_STATUS)),
            Ok(Status::Err { code: 5, .. })
        ));
        assert_eq!(
            Status::decode(&line(MAX_STATUS + 1)),
            Err(StatusError::TooLong)
        );
    }

    #[test]
    fn decode_refuses_each_malformed_field_alone() {
        let malformed = |l: &[u8]| match Status::decode(l) {
            Err(StatusError::Malformed(s)) => s,
            other => panic!("want Malformed for {l:?}, got {other:?}"),
        };
        assert_eq!(malformed(b"ERR 0001 ssh x\n"), "ERR 0001 ssh x");
        assert_eq!(malformed(b"ERR 1 ss_h x\n"), "ERR 1 ss_h x");
        assert_eq!(malformed(b"ERR 1  x\n"), "ERR 1  x");
        assert_eq!(malformed(b"ERR 1\n"), "ERR 1");
        assert_eq!(malformed(b"ERR  ssh x\n"), "ERR  ssh x");
        assert_eq!(malformed(b"ERR +1 ssh x\n"), "ERR +1 ssh x");
        assert_eq!(malformed(b"OK\x1b\n"), "OK?");
        assert_eq!(malformed(b"OK"), "OK");
        assert_eq!(
            Status::decode(b"ERR 001 ssh\n"),
            Ok(Status::Err {
                code: 1,
                class: ErrClass::Ssh,
                message: String::new()
            })
        );
    }

    #[test]
    fn status_errors_tell_what_was_wrong() {
        assert_eq!(
            StatusError::TooLong.to_string(),
            "status line from the service is longer than 512 bytes"
        );
        assert_eq!(
            StatusError::Malformed("x".into()).to_string(),
            "malformed status line from the service: 'x'"
        );
    }

    #[test]
    fn at_most_64_kib_may_come_before_the_mark() {
        let mut b = BeforeMark::default();
        let line = [b"x".repeat(1023), b"\n".to_vec()].concat();
        for _ in 0..63 {
            assert_eq!(b.line(&line), Some(Line::Other));
        }
        let mut last = b"y".repeat(1024 - MARK.len() - 1);
        last.push(b'\n');
        assert_eq!(b.line(&last), Some(Line::Other));
        assert_eq!(b.line(b"\n"), Some(Line::Blank));
        // 65536 bytes so far, the mark included: taken.
        assert_eq!(b.line(&MARK[1..]), Some(Line::Mark));
        assert_eq!(63 * 1024 + last.len() + MARK.len(), MAX_BEFORE_MARK);
        // One byte more: refused.
        assert_eq!(b.line(b"\n"), None);
    }
}
