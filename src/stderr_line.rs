//! sys-backup and sys-backup-mnt (shared): makes another program's stderr safe to show, one
//! bounded line at a time (ssh's in sys-backup, the service's that qrexec delivers in
//! sys-backup-mnt).
//!
//! qrexec sends a service's stderr to the caller (4.3: `MSG_DATA_STDERR`; 4.2: the
//! multiplexer's tee) and qrexec-client-vm writes it unfiltered unless its stderr is a
//! terminal. Under borg that stderr is a pipe: borg reads it and prints each line as
//! `Remote: LINE` (or, for a line starting with `{`, decodes it as one of borg serve's JSON log
//! records and prints its message). So whatever a hostile server or sys-backup writes must be
//! made harmless before it gets there: [`sanitize`] keeps printable ASCII only (others become
//! `?`, CR is dropped) and, in a JSON-looking line, turns every escape that would decode to a
//! control or non-ASCII character (`\b`, `\f`, `\r`, `\uXXXX` outside 0x20..=0x7e) into `?`.
//! [`copy_lines`] applies it to a stream, line by line, with a length bound.

use std::io::{Read, Write};

/// Longest line passed on (bytes, before sanitizing); the rest of a longer line is dropped.
pub const MAX_LINE: usize = 4096;

/// Printable ASCII only; in a line that starts with `{`, JSON escapes of control and non-ASCII
/// characters are neutralized too (borg decodes such lines).
pub fn sanitize(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    let json = line.first() == Some(&b'{');
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        i += 1;
        match b {
            b'\r' => {}
            b'\\' if json && i < line.len() => {
                let e = line[i];
                i += 1;
                match e {
                    b'u' => {
                        let hex = line
                            .get(i..i + 4)
                            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                            .and_then(|h| std::str::from_utf8(h).ok());
                        match hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
                            Some(v) if (0x20..=0x7e).contains(&v) => {
                                out.push_str("\\u");
                                out.push_str(hex.unwrap_or_default());
                            }
                            Some(_) => out.push('?'),
                            None => {
                                out.push('?');
                                continue;
                            }
                        }
                        i += 4;
                    }
                    b'"' | b'\\' | b'/' | b'n' | b't' => {
                        out.push('\\');
                        out.push(e as char);
                    }
                    _ => out.push('?'),
                }
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push('?'),
        }
    }
    out
}

/// Copy `src` to `dst` until EOF, one line at a time: each line (without its LF, cut to
/// `MAX_LINE` bytes) is sanitized, given to `each`, and what `each` returns is written with an
/// LF (`None` drops the line). A cut line is marked `...` and, so that borg never takes a cut
/// JSON record for a whole one, loses a leading `{`. Write errors end the copy silently (the
/// reader is gone).
pub fn copy_lines<R: Read, W: Write>(
    mut src: R,
    mut dst: W,
    mut each: impl FnMut(String) -> Option<String>,
) {
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    let mut emit = |line: &mut Vec<u8>, cut: &mut bool, dst: &mut W| -> bool {
        let mut text = sanitize(line);
        if *cut {
            if text.starts_with('{') {
                text.replace_range(..1, "(");
            }
            text.push_str("...");
        }
        line.clear();
        *cut = false;
        match each(text) {
            Some(t) => writeln!(dst, "{t}").and_then(|_| dst.flush()).is_ok(),
            None => true,
        }
    };
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                if !emit(&mut line, &mut cut, &mut dst) {
                    return;
                }
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() || cut {
        emit(&mut line, &mut cut, &mut dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_non_ascii_bytes_never_pass() {
        assert_eq!(sanitize(b"a\x1b[31mb\x07\tc\r\xc3\xa9"), "a?[31mb??c??");
    }

    #[test]
    fn json_escapes_that_decode_to_control_characters_are_neutralized() {
        let line = br#"{"message": "x\u001b]0;t\u0007 \u00e9 \u0041 \b\f\r\n\t\\u001b \" \/"}"#;
        assert_eq!(
            sanitize(line),
            r#"{"message": "x?]0;t? ? \u0041 ???\n\t\\u001b \" \/"}"#
        );
        // not a JSON-looking line: backslashes are plain text
        assert_eq!(sanitize(br"a \u001b"), r"a \u001b");
        // a broken escape at the end cannot smuggle anything
        assert_eq!(sanitize(br#"{"m": "\u00"#), r#"{"m": "?00"#);
        assert_eq!(sanitize(br#"{"m": "\u+041"#), r#"{"m": "?+041"#);
    }

    #[test]
    fn copy_lines_is_line_by_line_bounded_and_marks_cut_lines() {
        let mut input = b"one\x1b\r\n".to_vec();
        input.extend(std::iter::repeat(b'x').take(MAX_LINE + 10));
        input.extend(b"\n{");
        input.extend(std::iter::repeat(b'y').take(MAX_LINE + 1));
        input.extend(b"\ndrop me\nlast-no-lf");
        let mut out = Vec::new();
        copy_lines(&input[..], &mut out, |l| (l != "drop me").then_some(l));
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "one?");
        assert_eq!(lines[1], format!("{}...", "x".repeat(MAX_LINE)));
        assert_eq!(lines[2], format!("({}...", "y".repeat(MAX_LINE - 1)));
        assert_eq!(lines[3], "last-no-lf");
        assert_eq!(lines.len(), 4);
    }
}
