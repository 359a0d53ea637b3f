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
}
