//! sys-backup-mnt to dom0: the lines the job writes on stdout while it runs, and dom0's strict
//! reader for them. Everything the disposable sends is hostile (it parses untrusted
//! filesystems): lines are bounded, parsed against a fixed grammar, and text is reduced to
//! printable ASCII before anyone prints it.
//!
//! ```text
//! phase mount|create|unmount|prune|compact|state|list|restore|check|spot
//! progress BYTES                         bytes of the volume read so far
//! stats ORIGINAL DEDUPLICATED COMPRESSED FILES
//! warning TEXT
//! error TEXT
//! data HEX                             list, info, check, spot: a piece of borg's --json output, hex (dom0 joins
//!                                       the pieces, bounded, and parses them strictly)
//! reason link|lock|cache-lock|passphrase|repository|space|mount|other
//!                                       why the last step failed (a category only: dom0 words
//!                                       its own message and retries only link and lock)
//! done ok|failed
//! chunk N                              export only: N (1..=MAX_CHUNK) raw bytes of the tar stream
//!                                       follow the newline; dom0 counts them and passes them on
//!                                       to the target qube without looking at them
//! ```
//!
//! `chunk` frames are recognised only by a splitter made with `LineSplitter::with_chunks` (the
//! export op); for every other op a `chunk` line is malformed like any unknown line.

use std::fmt;
use std::io::Read;

/// Longest line (with its newline) dom0 accepts.
pub const MAX_LINE: usize = 512;
/// Longest text of a `warning`/`error` line.
pub const MAX_TEXT: usize = 400;
/// Largest number accepted (borg's sizes are far below).
pub const MAX_NUMBER: u64 = 1 << 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    State,
    Mount,
    Create,
    Unmount,
    Prune,
    Compact,
    List,
    Restore,
    Check,
    Spot,
}

const PHASES: &[(&str, Phase)] = &[
    ("state", Phase::State),
    ("mount", Phase::Mount),
    ("create", Phase::Create),
    ("unmount", Phase::Unmount),
    ("prune", Phase::Prune),
    ("compact", Phase::Compact),
    ("list", Phase::List),
    ("restore", Phase::Restore),
    ("check", Phase::Check),
    ("spot", Phase::Spot),
];

impl Phase {
    pub fn as_str(self) -> &'static str {
        PHASES
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(s, _)| *s)
            .unwrap_or("?")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub original: u64,
    pub deduplicated: u64,
    pub compressed: u64,
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Phase(Phase),
    Progress(u64),
    Stats(Stats),
    Warning(String),
    Error(String),
    /// A piece of borg's `--json` output (at most MAX_DATA bytes per line).
    Data(Vec<u8>),
    /// Why the step failed, as a category (sent before its `error`).
    Reason(Reason),
    Done(bool),
    /// Export: a piece of the tar stream (a `chunk N` frame's bytes, possibly split in pieces
    /// as they arrive). Never parsed.
    Chunk(Vec<u8>),
}

/// Why a job failed, as far as the job can tell from borg's exit status and messages. dom0
/// trusts it only as a category: a lying job can at most get itself retried a bounded number
/// of times, or not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The link to the borg server: connection refused, reset, timed out, closed, not responding.
    Link,
    /// The repository's lock on the server is held by someone else (`--lock-wait` ran out).
    Lock,
    /// borg's local cache lock in the state volume is held.
    CacheLock,
    /// The passphrase (or key file) does not open the repository.
    Passphrase,
    /// No repository there, not a repository, path not allowed.
    Repository,
    /// The server's disk or quota is full.
    Space,
    /// The qube's volume could not be mounted.
    Mount,
    /// Anything else (including borg killed by a signal).
    Other,
}

const REASONS: &[(&str, Reason)] = &[
    ("link", Reason::Link),
    ("lock", Reason::Lock),
    ("cache-lock", Reason::CacheLock),
    ("passphrase", Reason::Passphrase),
    ("repository", Reason::Repository),
    ("space", Reason::Space),
    ("mount", Reason::Mount),
    ("other", Reason::Other),
];

impl Reason {
    pub fn as_str(self) -> &'static str {
        REASONS
            .iter()
            .find(|(_, r)| *r == self)
            .map(|(s, _)| *s)
            .unwrap_or("other")
    }
    /// Worth another attempt a little later: the link or a lock may come back by itself.
    pub fn is_transient(self) -> bool {
        matches!(self, Reason::Link | Reason::Lock | Reason::CacheLock)
    }
}

/// Largest `chunk` frame.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Most bytes in one `data` line (hex doubles them).
pub const MAX_DATA: usize = 240;

/// Printable ASCII only (space to `~`), at most MAX_TEXT bytes: anything else becomes `?`.
/// Used on the job side before sending and on dom0's side before printing.
pub fn sanitize(text: &[u8], max: usize) -> String {
    let mut s: String = text
        .iter()
        .take(max)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if text.len() > max {
        s.push_str("...");
    }
    s
}

/// One event as a line (with its newline).
pub fn encode(ev: &Event) -> Vec<u8> {
    let s = match ev {
        Event::Phase(p) => format!("phase {}", p.as_str()),
        Event::Progress(n) => format!("progress {}", n.min(&MAX_NUMBER)),
        Event::Stats(s) => format!(
            "stats {} {} {} {}",
            s.original.min(MAX_NUMBER),
            s.deduplicated.min(MAX_NUMBER),
            s.compressed.min(MAX_NUMBER),
            s.files.min(MAX_NUMBER)
        ),
        Event::Warning(t) => format!("warning {}", sanitize(t.as_bytes(), MAX_TEXT)),
        Event::Error(t) => format!("error {}", sanitize(t.as_bytes(), MAX_TEXT)),
        Event::Done(ok) => format!("done {}", if *ok { "ok" } else { "failed" }),
        Event::Reason(r) => format!("reason {}", r.as_str()),
        Event::Chunk(d) => {
            let d = &d[..d.len().min(MAX_CHUNK)];
            let mut v = format!("chunk {}\n", d.len()).into_bytes();
            v.extend_from_slice(d);
            return v;
        }
        Event::Data(d) => {
            let mut s = String::from("data ");
            for b in d.iter().take(MAX_DATA) {
                s += &format!("{b:02x}");
            }
            s
        }
    };
    let mut v = s.into_bytes();
    v.push(b'\n');
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// The line was longer than MAX_LINE (the rest up to its newline is dropped).
    TooLong,
    /// Not one of the known lines; carries a sanitized prefix for the log.
    Malformed(String),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong => {
                write!(f, "the backup job sent a line longer than {MAX_LINE} bytes")
            }
            LineError::Malformed(s) => write!(f, "the backup job sent an unexpected line: {s}"),
        }
    }
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n <= MAX_NUMBER)
}

/// Parses one line (without its newline).
pub fn decode(untrusted_line: &[u8]) -> Result<Event, LineError> {
    let bad = || LineError::Malformed(sanitize(untrusted_line, 80));
    if untrusted_line.len() >= MAX_LINE {
        return Err(LineError::TooLong);
    }
    let sp = memchr::memchr(b' ', untrusted_line).ok_or_else(bad)?;
    let (key, raw_rest) = (&untrusted_line[..sp], &untrusted_line[sp + 1..]);
    // Text lines keep any bytes (sanitized); every other line is ASCII.
    match key {
        b"warning" => return Ok(Event::Warning(sanitize(raw_rest, MAX_TEXT))),
        b"error" => return Ok(Event::Error(sanitize(raw_rest, MAX_TEXT))),
        _ => {}
    }
    let key = std::str::from_utf8(key).map_err(|_| bad())?;
    let rest = std::str::from_utf8(raw_rest).map_err(|_| bad())?;
    match key {
        "phase" => PHASES
            .iter()
            .find(|(n, _)| *n == rest)
            .map(|(_, p)| Event::Phase(*p))
            .ok_or_else(bad),
        "progress" => number(rest).map(Event::Progress).ok_or_else(bad),
        "stats" => {
            let f: Vec<&str> = rest.split(' ').collect();
            if f.len() != 4 {
                return Err(bad());
            }
            let n: Option<Vec<u64>> = f.iter().map(|s| number(s)).collect();
            let n = n.ok_or_else(bad)?;
            Ok(Event::Stats(Stats {
                original: n[0],
                deduplicated: n[1],
                compressed: n[2],
                files: n[3],
            }))
        }
        "data" => {
            let h = rest.as_bytes();
            if h.is_empty() || h.len() % 2 != 0 || h.len() > 2 * MAX_DATA {
                return Err(bad());
            }
            let nib = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            h.chunks(2)
                .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
                .collect::<Option<Vec<u8>>>()
                .map(Event::Data)
                .ok_or_else(bad)
        }
        "reason" => REASONS
            .iter()
            .find(|(n, _)| *n == rest)
            .map(|(_, r)| Event::Reason(*r))
            .ok_or_else(bad),
        "done" => match rest {
            "ok" => Ok(Event::Done(true)),
            "failed" => Ok(Event::Done(false)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Splits a byte stream into bounded lines: bytes are pushed in as they arrive, complete lines
/// come out; a line longer than MAX_LINE is reported once as `TooLong` and skipped up to its
/// newline, so memory stays bounded whatever the job sends.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    skipping: bool,
    /// `chunk N` frames accepted (export).
    chunks: bool,
    /// Raw bytes still to come of the current chunk.
    raw_left: usize,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A splitter that also accepts `chunk N` frames and hands their bytes out as
    /// `Event::Chunk` pieces.
    pub fn with_chunks() -> Self {
        LineSplitter {
            chunks: true,
            ..Self::default()
        }
    }

    /// A finished `chunk N` header: the count, when this splitter takes chunks and N is valid.
    fn chunk_header(&self) -> Option<Result<usize, LineError>> {
        let rest = self.buf.strip_prefix(b"chunk ".as_slice())?;
        if !self.chunks {
            return None;
        }
        let n = std::str::from_utf8(rest)
            .ok()
            .and_then(number)
            .filter(|n| (1..=MAX_CHUNK as u64).contains(n));
        Some(
            n.map(|n| n as usize)
                .ok_or_else(|| LineError::Malformed(sanitize(&self.buf, 80))),
        )
    }

    /// Feeds bytes; returns the decoded lines completed by them.
    pub fn push(&mut self, untrusted_bytes: &[u8]) -> Vec<Result<Event, LineError>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < untrusted_bytes.len() {
            if self.raw_left > 0 {
                let n = self.raw_left.min(untrusted_bytes.len() - i);
                out.push(Ok(Event::Chunk(untrusted_bytes[i..i + n].to_vec())));
                self.raw_left -= n;
                i += n;
                continue;
            }
            let b = untrusted_bytes[i];
            i += 1;
            if b == b'\n' {
                if self.skipping {
                    self.skipping = false;
                } else {
                    match self.chunk_header() {
                        Some(Ok(n)) => self.raw_left = n,
                        Some(Err(e)) => out.push(Err(e)),
                        None => out.push(decode(&self.buf)),
                    }
                }
                self.buf.clear();
            } else if !self.skipping {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    out.push(Err(LineError::TooLong));
                    self.buf.clear();
                    self.skipping = true;
                }
            }
        }
        out
    }

    /// At end of stream: a last line without newline, or a chunk cut short, is an error (a job
    /// always ends lines and frames).
    pub fn finish(&mut self) -> Option<LineError> {
        if self.raw_left > 0 {
            let e = LineError::Malformed(format!(
                "the stream ended {} bytes short of a chunk",
                self.raw_left
            ));
            self.raw_left = 0;
            return Some(e);
        }
        if self.buf.is_empty() || self.skipping {
            return None;
        }
        let e = LineError::Malformed(sanitize(&self.buf, 80));
        self.buf.clear();
        Some(e)
    }
}

/// Reads a whole stream through a `LineSplitter` (tests and simple callers).
pub fn read_all<R: Read>(r: &mut R) -> std::io::Result<Vec<Result<Event, LineError>>> {
    let mut sp = LineSplitter::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend(sp.push(&buf[..n]));
    }
    if let Some(e) = sp.finish() {
        out.push(Err(e));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let evs = [
            Event::Phase(Phase::Create),
            Event::Progress(123456789),
            Event::Stats(Stats {
                original: 10,
                deduplicated: 5,
                compressed: 4,
                files: 3,
            }),
            Event::Warning("file changed".into()),
            Event::Error("borg failed: rc 2".into()),
            Event::Done(true),
            Event::Done(false),
            Event::Reason(Reason::Link),
            Event::Reason(Reason::CacheLock),
        ];
        for ev in evs {
            let line = encode(&ev);
            assert_eq!(decode(&line[..line.len() - 1]), Ok(ev));
        }
    }

    #[test]
    fn escape_sequences_in_text_never_reach_the_terminal() {
        let ev = decode(b"error \x1b]0;owned\x07\x1b[2J\xc2\x9b31m\r\x08ok").unwrap();
        let Event::Error(t) = ev else { panic!() };
        assert!(t.bytes().all(|b| (0x20..0x7f).contains(&b)), "{t:?}");
        assert!(!t.contains('\x1b'));
    }

    #[test]
    fn huge_lines_are_dropped_with_bounded_memory() {
        let mut sp = LineSplitter::new();
        let mut res = Vec::new();
        for _ in 0..1000 {
            res.extend(sp.push(&[b'A'; 10_000]));
            assert!(sp.buf.len() < MAX_LINE);
        }
        res.extend(sp.push(b"\nprogress 5\n"));
        assert_eq!(res, vec![Err(LineError::TooLong), Ok(Event::Progress(5))]);
    }

    #[test]
    fn lies_and_garbage_are_refused() {
        for bad in [
            &b"progress -1"[..],
            b"progress 99999999999999999999",
            b"progress 1e9",
            b"progress  5",
            b"stats 1 2 3",
            b"stats 1 2 3 4 5",
            b"done maybe",
            b"phase rm",
            b"reason",
            b"reason transient",
            b"reason link ",
            b"PROGRESS 1",
            b"progress",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(decode(bad), Err(LineError::Malformed(_))),
                "{:?}",
                bad
            );
        }
        assert!(decode(format!("progress {}", MAX_NUMBER + 1).as_bytes()).is_err());
    }

    #[test]
    fn every_phase_and_data_round_trip() {
        for (name, phase) in PHASES {
            assert_eq!(phase.as_str(), *name);
            let line = encode(&Event::Phase(*phase));
            assert_eq!(line, format!("phase {name}\n").into_bytes());
            assert_eq!(decode(&line[..line.len() - 1]), Ok(Event::Phase(*phase)));
        }
        let all: Vec<u8> = (0..=255).collect();
        for piece in all.chunks(MAX_DATA) {
            let line = encode(&Event::Data(piece.to_vec()));
            assert_eq!(
                decode(&line[..line.len() - 1]),
                Ok(Event::Data(piece.to_vec()))
            );
        }
        assert_eq!(encode(&Event::Data(vec![0x0f, 0xa0])), b"data 0fa0\n");
    }

    #[test]
    fn data_lines_hold_1_to_240_bytes_of_lowercase_hex() {
        let hex = |n: usize| format!("data {}", "ab".repeat(n));
        assert_eq!(
            decode(hex(MAX_DATA).as_bytes()),
            Ok(Event::Data(vec![0xab; MAX_DATA]))
        );
        for bad in [
            hex(MAX_DATA + 1),
            hex(0),
            "data abc".into(),
            "data AB".into(),
            "data 0g".into(),
            "data :0".into(),
        ] {
            assert!(
                matches!(decode(bad.as_bytes()), Err(LineError::Malformed(_))),
                "{bad}"
            );
        }
        // The job never sends more than MAX_DATA bytes in one line.
        let line = encode(&Event::Data(vec![1; MAX_DATA + 1]));
        assert_eq!(line.len(), "data \n".len() + 2 * MAX_DATA);
    }

    #[test]
    fn numbers_up_to_2_pow_60_and_19_digits_are_accepted() {
        assert_eq!(
            decode(format!("progress {MAX_NUMBER}").as_bytes()),
            Ok(Event::Progress(MAX_NUMBER))
        );
        assert_eq!(
            decode(b"progress 0000000000000000005"),
            Ok(Event::Progress(5)),
            "19 digits"
        );
        assert!(
            matches!(
                decode(b"progress 00000000000000000005"),
                Err(LineError::Malformed(_))
            ),
            "20 digits"
        );
        assert!(matches!(
            decode(format!("progress {}", MAX_NUMBER + 1).as_bytes()),
            Err(LineError::Malformed(_))
        ));
        assert_eq!(
            decode(format!("stats 1 2 3 {MAX_NUMBER}").as_bytes()),
            Ok(Event::Stats(Stats {
                original: 1,
                deduplicated: 2,
                compressed: 3,
                files: MAX_NUMBER
            }))
        );
        assert!(matches!(
            decode(format!("stats 1 2 3 {}", MAX_NUMBER + 1).as_bytes()),
            Err(LineError::Malformed(_))
        ));
    }

    #[test]
    fn the_job_clamps_numbers_to_the_bound() {
        assert_eq!(
            encode(&Event::Progress(u64::MAX)),
            format!("progress {MAX_NUMBER}\n").into_bytes()
        );
        let s = Stats {
            original: u64::MAX,
            deduplicated: u64::MAX,
            compressed: u64::MAX,
            files: u64::MAX,
        };
        let m = MAX_NUMBER;
        assert_eq!(
            encode(&Event::Stats(s)),
            format!("stats {m} {m} {m} {m}\n").into_bytes()
        );
    }

    #[test]
    fn text_is_cut_at_its_limit_and_marked() {
        assert_eq!(sanitize(b"abc", 3), "abc");
        assert_eq!(sanitize(b"abcd", 3), "abc...");
        assert_eq!(sanitize(b" ~\x7f\x1f", 9), " ~??");
        let long = "w".repeat(MAX_TEXT + 1);
        assert_eq!(
            encode(&Event::Warning(long)),
            format!("warning {}...\n", "w".repeat(MAX_TEXT)).into_bytes()
        );
        assert_eq!(
            decode(format!("error {}", "e".repeat(MAX_TEXT)).as_bytes()),
            Ok(Event::Error("e".repeat(MAX_TEXT)))
        );
    }

    #[test]
    fn a_line_of_511_bytes_is_read_and_512_is_too_long() {
        let line = |len: usize| format!("warning {}", "w".repeat(len - 8)).into_bytes();
        let want = Event::Warning(format!("{}...", "w".repeat(MAX_TEXT)));
        assert_eq!(decode(&line(MAX_LINE - 1)), Ok(want.clone()));
        assert_eq!(decode(&line(MAX_LINE)), Err(LineError::TooLong));
        let mut sp = LineSplitter::new();
        let mut stream = line(MAX_LINE - 1);
        stream.push(b'\n');
        stream.extend(line(MAX_LINE));
        stream.extend(b"\ndone ok\n");
        assert_eq!(
            sp.push(&stream),
            vec![Ok(want), Err(LineError::TooLong), Ok(Event::Done(true))]
        );
        assert_eq!(sp.finish(), None);
    }

    #[test]
    fn a_stream_ending_with_a_newline_has_no_leftover() {
        assert_eq!(LineSplitter::new().finish(), None);
        let r = read_all(&mut &b"progress 1\ndone failed\n"[..]).unwrap();
        assert_eq!(r, vec![Ok(Event::Progress(1)), Ok(Event::Done(false))]);
        // A too-long last line without newline was already reported once.
        let r = read_all(&mut &[b'x'; MAX_LINE + 10][..]).unwrap();
        assert_eq!(r, vec![Err(LineError::TooLong)]);
    }

    #[test]
    fn line_errors_tell_the_user_what_the_job_sent() {
        assert_eq!(
            LineError::TooLong.to_string(),
            "the backup job sent a line longer than 512 bytes"
        );
        assert_eq!(
            LineError::Malformed("x".into()).to_string(),
            "the backup job sent an unexpected line: x"
        );
        assert_eq!(
            decode(b"progress \x1bx"),
            Err(LineError::Malformed("progress ?x".into()))
        );
    }

    #[test]
    fn chunks_pass_through_whole_whatever_their_bytes_and_however_they_arrive() {
        let payload: Vec<u8> = b"progress 9\n\x1b[2J\nchunk 3\ndone ok\n\0\xff"
            .iter()
            .cycle()
            .take(1000)
            .copied()
            .collect();
        let mut stream = encode(&Event::Phase(Phase::Restore));
        stream.extend(encode(&Event::Chunk(payload.clone())));
        stream.extend(encode(&Event::Chunk(b"x".to_vec())));
        stream.extend(encode(&Event::Done(true)));
        for step in [1, 7, 4096] {
            let mut sp = LineSplitter::with_chunks();
            let (mut data, mut other) = (Vec::new(), Vec::new());
            for piece in stream.chunks(step) {
                for ev in sp.push(piece) {
                    match ev {
                        Ok(Event::Chunk(d)) => data.extend(d),
                        x => other.push(x),
                    }
                }
            }
            assert_eq!(sp.finish(), None);
            assert_eq!(data.len(), 1001, "step {step}");
            assert_eq!(&data[..1000], &payload[..]);
            assert_eq!(
                other,
                vec![Ok(Event::Phase(Phase::Restore)), Ok(Event::Done(true))]
            );
        }
    }

    #[test]
    fn chunk_frames_are_refused_where_not_expected_and_bounded_where_they_are() {
        // Another op: a chunk line is malformed and its bytes are read as lines.
        let r = read_all(&mut &b"chunk 2\nab\ndone ok\n"[..]).unwrap();
        assert!(matches!(r[0], Err(LineError::Malformed(_))));
        assert_eq!(r[2], Ok(Event::Done(true)));
        for bad in [
            "chunk 0\n".to_string(),
            format!("chunk {}\n", MAX_CHUNK + 1),
            "chunk -1\n".into(),
            "chunk 1 2\n".into(),
        ] {
            let mut sp = LineSplitter::with_chunks();
            let r = sp.push(bad.as_bytes());
            assert!(matches!(r[..], [Err(LineError::Malformed(_))]), "{bad}");
        }
        let mut sp = LineSplitter::with_chunks();
        assert_eq!(
            sp.push(b"chunk 10\nabc"),
            vec![Ok(Event::Chunk(b"abc".to_vec()))]
        );
        assert!(
            matches!(sp.finish(), Some(LineError::Malformed(m)) if m.contains("7 bytes short"))
        );
    }

    #[test]
    fn unterminated_last_line_is_reported() {
        let r = read_all(&mut &b"progress 1\nprogress 2"[..]).unwrap();
        assert_eq!(r[0], Ok(Event::Progress(1)));
        assert!(matches!(r[1], Err(LineError::Malformed(_))));
    }
}
