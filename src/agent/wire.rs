//! ssh-backup: framing and field parsing of the SSH agent protocol, with hard bounds.
//!
//! Modelled on draft-miller-ssh-agent (message layout) and OpenSSH
//! (`openssh-portable:authfd.h` for the message numbers, `ssh-agent.c` for
//! `AGENT_MAX_LEN`, `authfd.c` for `MAX_AGENT_REPLY_LEN`). Every frame is
//! `uint32 length || byte type || contents`, big endian, and `length` counts
//! the type byte and the contents.

use std::fmt;
use std::io::{self, Read, Write};

/// Largest frame body (type byte + contents) accepted in either direction.
/// OpenSSH's agent drops a client whose message length exceeds 256 KiB
/// (`AGENT_MAX_LEN`), and its client refuses longer replies
/// (`MAX_AGENT_REPLY_LEN`); we use the same limit both ways.
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;

// Message numbers (draft-miller-ssh-agent section 5.1; OpenSSH authfd.h).
pub const SSH_AGENT_FAILURE: u8 = 5;
pub const SSH_AGENT_SUCCESS: u8 = 6;
pub const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
pub const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
pub const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
pub const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
pub const SSH_AGENTC_ADD_IDENTITY: u8 = 17;
pub const SSH_AGENTC_REMOVE_IDENTITY: u8 = 18;
pub const SSH_AGENTC_REMOVE_ALL_IDENTITIES: u8 = 19;
pub const SSH_AGENTC_ADD_SMARTCARD_KEY: u8 = 20;
pub const SSH_AGENTC_REMOVE_SMARTCARD_KEY: u8 = 21;
pub const SSH_AGENTC_LOCK: u8 = 22;
pub const SSH_AGENTC_UNLOCK: u8 = 23;
pub const SSH_AGENTC_ADD_ID_CONSTRAINED: u8 = 25;
pub const SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
pub const SSH_AGENTC_EXTENSION: u8 = 27;

/// Why a frame could not be read. Every variant means "close the connection".
#[derive(Debug)]
pub enum WireError {
    /// The peer closed the stream in the middle of a frame.
    Truncated { got: usize, wanted: usize },
    /// A frame announced more than [`MAX_MESSAGE_LEN`] bytes.
    TooLong(u32),
    /// A frame announced zero bytes (no message type).
    Empty,
    /// Reading or writing failed.
    Io(io::Error),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { got, wanted } => write!(
                f,
                "connection closed inside a frame ({got} of {wanted} bytes received)"
            ),
            WireError::TooLong(n) => write!(
                f,
                "frame of {n} bytes announced, more than the {MAX_MESSAGE_LEN}-byte limit"
            ),
            WireError::Empty => write!(f, "frame of length 0 (no message type)"),
            WireError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

/// Read as many bytes as fit in `buf`, stopping early only at EOF. Returns
/// the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Read one frame into `body` (replacing its content): the type byte and
/// the contents, without the length prefix. Returns `Ok(false)` on a clean
/// EOF before the first byte of a frame. Never reads past the frame end.
pub fn read_frame(r: &mut impl Read, body: &mut Vec<u8>) -> Result<bool, WireError> {
    let mut len = [0u8; 4];
    let got = read_full(r, &mut len)?;
    if got == 0 {
        return Ok(false);
    }
    if got < 4 {
        return Err(WireError::Truncated { got, wanted: 4 });
    }
    let n = u32::from_be_bytes(len);
    if n == 0 {
        return Err(WireError::Empty);
    }
    if n as usize > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong(n));
    }
    body.clear();
    body.resize(n as usize, 0);
    let got = read_full(r, body)?;
    if got < body.len() {
        return Err(WireError::Truncated {
            got: 4 + got,
            wanted: 4 + body.len(),
        });
    }
    Ok(true)
}

/// Write one frame (length prefix + `body`) in a single write call where
/// the kernel allows, and flush.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    assert!(!body.is_empty() && body.len() <= MAX_MESSAGE_LEN);
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()
}

/// A malformed field inside a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Cursor over the fields of a message (RFC 4251 section 5 encodings).
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, ParseError> {
        let (&b, rest) = self.rest.split_first().ok_or(ParseError("short byte"))?;
        self.rest = rest;
        Ok(b)
    }

    pub fn u32(&mut self) -> Result<u32, ParseError> {
        if self.rest.len() < 4 {
            return Err(ParseError("short uint32"));
        }
        let (n, rest) = self.rest.split_at(4);
        self.rest = rest;
        Ok(u32::from_be_bytes([n[0], n[1], n[2], n[3]]))
    }

    /// A `string`: uint32 length then that many bytes, at most `max`.
    pub fn string(&mut self, max: usize) -> Result<&'a [u8], ParseError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(ParseError("string longer than allowed"));
        }
        if n > self.rest.len() {
            return Err(ParseError("string runs past the end of the message"));
        }
        let (s, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(s)
    }

    /// A `boolean`, strictly 0 or 1.
    pub fn boolean(&mut self) -> Result<bool, ParseError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ParseError("boolean other than 0 or 1")),
        }
    }

    /// Fail unless every byte was consumed.
    pub fn finish(&self) -> Result<(), ParseError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ParseError("trailing bytes after the last field"))
        }
    }
}

/// Append a `string` field.
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn reads_consecutive_frames_and_clean_eof() {
        let mut data = frame(&[11]);
        data.extend(frame(&[13, 1, 2, 3]));
        let mut r = &data[..];
        let mut body = Vec::new();
        assert!(read_frame(&mut r, &mut body).unwrap());
        assert_eq!(body, [11]);
        assert!(read_frame(&mut r, &mut body).unwrap());
        assert_eq!(body, [13, 1, 2, 3]);
        assert!(!read_frame(&mut r, &mut body).unwrap());
    }

    #[test]
    fn truncated_length_and_body_are_errors() {
        let mut body = Vec::new();
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r, &mut body),
            Err(WireError::Truncated { got: 2, wanted: 4 })
        ));
        let data = [0, 0, 0, 5, 11, 0];
        let mut r = &data[..];
        assert!(matches!(
            read_frame(&mut r, &mut body),
            Err(WireError::Truncated { got: 6, wanted: 9 })
        ));
    }

    #[test]
    fn oversized_and_empty_frames_are_refused_without_reading_body() {
        let mut body = Vec::new();
        let data = ((MAX_MESSAGE_LEN as u32) + 1).to_be_bytes();
        let mut r = &data[..];
        assert!(matches!(
            read_frame(&mut r, &mut body),
            Err(WireError::TooLong(_))
        ));
        assert!(body.capacity() < 1024, "no allocation for a refused frame");
        let mut r: &[u8] = &[0, 0, 0, 0, 11];
        assert!(matches!(
            read_frame(&mut r, &mut body),
            Err(WireError::Empty)
        ));
        // Exactly the limit is accepted.
        let mut data = (MAX_MESSAGE_LEN as u32).to_be_bytes().to_vec();
        data.resize(4 + MAX_MESSAGE_LEN, 7);
        let mut r = &data[..];
        assert!(read_frame(&mut r, &mut body).unwrap());
        assert_eq!(body.len(), MAX_MESSAGE_LEN);
    }

    #[test]
    fn reader_bounds_strings_and_booleans() {
        let mut m = Vec::new();
        put_string(&mut m, b"abc");
        m.push(1);
        m.push(2);
        let mut r = Reader::new(&m);
        assert_eq!(r.string(3).unwrap(), b"abc");
        assert!(r.boolean().unwrap());
        assert!(r.boolean().is_err());
        r.finish().unwrap();

        let mut r = Reader::new(&m);
        assert!(r.string(2).is_err(), "max is enforced");
        let data = [0, 0, 0, 9, 1, 2];
        let mut r = Reader::new(&data);
        assert!(r.string(100).is_err(), "length past the end");
        let mut r = Reader::new(&[0, 0]);
        assert!(r.u32().is_err());
        let r = Reader::new(&[0]);
        assert!(r.finish().is_err());
    }

    /// Fails once with an error of kind `first`, then reads the bytes of `data`.
    struct Flaky<'a> {
        first: Option<io::ErrorKind>,
        data: &'a [u8],
    }

    impl Read for Flaky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(kind) = self.first.take() {
                return Err(io::Error::new(kind, "flaky"));
            }
            self.data.read(buf)
        }
    }

    #[test]
    fn interrupted_read_is_retried() {
        let data = frame(&[11]);
        let mut r = Flaky {
            first: Some(io::ErrorKind::Interrupted),
            data: &data,
        };
        let mut body = Vec::new();
        assert!(read_frame(&mut r, &mut body).unwrap());
        assert_eq!(body, [11]);
    }

    #[test]
    fn read_error_other_than_interrupted_is_reported() {
        let data = frame(&[11]);
        let mut r = Flaky {
            first: Some(io::ErrorKind::ConnectionReset),
            data: &data,
        };
        let mut body = Vec::new();
        assert!(matches!(
            read_frame(&mut r, &mut body),
            Err(WireError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn write_frame_prefixes_the_body_length() {
        let mut out = Vec::new();
        write_frame(&mut out, &[12, 0, 0, 0, 0]).unwrap();
        assert_eq!(out, [0, 0, 0, 5, 12, 0, 0, 0, 0]);
        // Exactly the limit is written.
        let mut out = Vec::new();
        write_frame(&mut out, &vec![7; MAX_MESSAGE_LEN]).unwrap();
        assert_eq!(out.len(), 4 + MAX_MESSAGE_LEN);
        assert_eq!(out[..4], (MAX_MESSAGE_LEN as u32).to_be_bytes());
    }

    #[test]
    #[should_panic]
    fn write_frame_refuses_an_empty_body() {
        write_frame(&mut Vec::new(), &[]).unwrap();
    }

    #[test]
    #[should_panic]
    fn write_frame_refuses_a_body_over_the_limit() {
        write_frame(&mut Vec::new(), &vec![7; MAX_MESSAGE_LEN + 1]).unwrap();
    }

    #[test]
    fn uint32_and_string_may_end_exactly_at_the_message_end() {
        let mut r = Reader::new(&[1, 2, 3, 4]);
        assert_eq!(r.u32(), Ok(0x0102_0304));
        assert!(r.is_empty());
        let mut m = Vec::new();
        put_string(&mut m, b"abc");
        let mut r = Reader::new(&m);
        assert!(!r.is_empty());
        assert_eq!(r.string(3), Ok(&b"abc"[..]));
        assert!(r.is_empty());
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn reader_errors_say_which_field_is_wrong() {
        assert_eq!(Reader::new(&[]).u8(), Err(ParseError("short byte")));
        assert_eq!(
            Reader::new(&[0, 0, 1]).u32(),
            Err(ParseError("short uint32"))
        );
        assert_eq!(
            Reader::new(&[0, 0, 0, 4, 1])
                .string(3)
                .unwrap_err()
                .to_string(),
            "string longer than allowed"
        );
        assert_eq!(
            Reader::new(&[0, 0, 0, 2, 1])
                .string(3)
                .unwrap_err()
                .to_string(),
            "string runs past the end of the message"
        );
        assert_eq!(
            Reader::new(&[0]).boolean(),
            Ok(false),
            "0 is the boolean false"
        );
        assert_eq!(
            Reader::new(&[2]).boolean(),
            Err(ParseError("boolean other than 0 or 1"))
        );
    }

    #[test]
    fn frame_errors_tell_what_happened() {
        assert_eq!(
            WireError::Truncated { got: 6, wanted: 9 }.to_string(),
            "connection closed inside a frame (6 of 9 bytes received)"
        );
        assert_eq!(
            WireError::TooLong(300_000).to_string(),
            "frame of 300000 bytes announced, more than the 262144-byte limit"
        );
        assert_eq!(
            WireError::Empty.to_string(),
            "frame of length 0 (no message type)"
        );
        let e: WireError = io::Error::new(io::ErrorKind::BrokenPipe, "pipe gone").into();
        assert_eq!(e.to_string(), "pipe gone");
    }
}
