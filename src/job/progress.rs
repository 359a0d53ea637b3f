//! sys-backup-mnt to dom0: the lines the job writes on stdout while it runs, and dom0's strict
//! reader for them. Everything the disposable sends is hostile (it parses untrusted
//! filesystems): lines are bounded, parsed against a fixed grammar, and text is reduced to
//! printable ASCII before anyone prints it.
//!
//! ```text
//! phase mount|create|unmount|prune|compact|state|list|restore|check|spot|init
//! progress BYTES                         bytes of the volume read so far
//! stats ORIGINAL DEDUPLICATED COMPRESSED FILES
//! warning TEXT
//! error TEXT
//! data HEX                             list, info, check, spot: a piece of borg's --json output, hex (dom0 joins
//!                                       the pieces, bounded, and parses them strictly);
//!                                       init: pieces of an `InitResult` (below)
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
    Init,
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
    ("init", Phase::Init),
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

/// What the `init` op sends back in its `data` pieces, joined:
///
/// ```text
/// qubes-borg-init/1 created|exists
/// key-file N        keyfile mode, created only: the key file's N bytes, then LF
/// export N          created only: `borg key export`, N bytes, then LF
/// paper N           created only: `borg key export --paper`, N bytes, then LF
/// end
/// ```
///
/// dom0 reads it with `InitResult::parse`: every part bounded (MAX_KEY_TEXT), keys in the form
/// borg writes them (`BORG_KEY` + 64 hex digits, then base64 lines), the paper key printable
/// ASCII lines; anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitResult {
    /// False: a repository was already there and was left alone (nothing else follows).
    pub created: bool,
    pub key_file: Option<Vec<u8>>,
    pub export: Vec<u8>,
    pub paper: Vec<u8>,
}

pub const INIT_MAGIC: &str = "qubes-borg-init/1";
/// Largest key file or export accepted (borg's are about 1 KiB; the paper form about 3 KiB).
pub const MAX_KEY_TEXT: usize = 16 * 1024;

impl InitResult {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = format!(
            "{INIT_MAGIC} {}\n",
            if self.created { "created" } else { "exists" }
        )
        .into_bytes();
        let mut part = |name: &str, b: &[u8]| {
            v.extend_from_slice(format!("{name} {}\n", b.len()).as_bytes());
            v.extend_from_slice(b);
            v.push(b'\n');
        };
        if self.created {
            if let Some(k) = &self.key_file {
                part("key-file", k);
            }
            part("export", &self.export);
            part("paper", &self.paper);
        }
        v.extend_from_slice(b"end\n");
        v
    }

    /// Strict reader of what the (untrusted) job sent; `keyfile`: whether a key file must come.
    pub fn parse(untrusted: &[u8], keyfile: bool) -> Result<InitResult, String> {
        fn line<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
            let n = memchr::memchr(b'\n', rest).ok_or("the init job's answer ends early")?;
            let (l, r) = rest.split_at(n);
            *rest = &r[1..];
            Ok(l)
        }
        let mut rest = untrusted;
        let first = line(&mut rest)?;
        let created = if first == format!("{INIT_MAGIC} created").as_bytes() {
            true
        } else if first == format!("{INIT_MAGIC} exists").as_bytes() {
            false
        } else {
            return Err("the init job's answer does not start as expected".into());
        };
        let mut r = InitResult {
            created,
            key_file: None,
            export: vec![],
            paper: vec![],
        };
        if created {
            let mut names: Vec<&str> = vec![];
            if keyfile {
                names.push("key-file");
            }
            names.extend(["export", "paper"]);
            for name in names {
                let head = line(&mut rest)?;
                let len = std::str::from_utf8(head)
                    .ok()
                    .and_then(|h| h.strip_prefix(name))
                    .and_then(|h| h.strip_prefix(' '))
                    .and_then(number)
                    .filter(|n| (1..=MAX_KEY_TEXT as u64).contains(n))
                    .ok_or_else(|| format!("the init job's answer has no valid '{name}' part"))?
                    as usize;
                let body = rest
                    .get(..len + 1)
                    .filter(|b| b[len] == b'\n')
                    .ok_or_else(|| format!("the init job's '{name}' part is cut short"))?;
                let body = body[..len].to_vec();
                rest = &rest[len + 1..];
                let checked = if name == "paper" {
                    check_paper_key(&body)
                } else {
                    check_key_text(&body)
                };
                checked.map_err(|why| format!("the init job's '{name}' part {why}"))?;
                match name {
                    "key-file" => r.key_file = Some(body),
                    "export" => r.export = body,
                    _ => r.paper = body,
                }
            }
        }
        if line(&mut rest)? != b"end" || !rest.is_empty() {
            return Err("the init job's answer does not end as expected".into());
        }
        Ok(r)
    }
}

/// A borg key as borg writes it (key file, `borg key export`): `BORG_KEY` and the repository
/// id (64 lowercase hex digits), then base64 lines, each ending in LF.
pub fn check_key_text(b: &[u8]) -> Result<(), &'static str> {
    let text = std::str::from_utf8(b).map_err(|_| "is not text")?;
    let body = text
        .strip_suffix('\n')
        .ok_or("does not end with a newline")?;
    let mut lines = body.split('\n');
    let head = lines.next().unwrap_or("");
    let id = head
        .strip_prefix("BORG_KEY ")
        .ok_or("does not start with BORG_KEY")?;
    if id.len() != 64
        || !id
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err("has no valid repository id");
    }
    let mut any = false;
    for l in lines {
        if l.is_empty()
            || l.len() > 256
            || !l
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
        {
            return Err("has a line that is not base64");
        }
        any = true;
    }
    if any {
        Ok(())
    } else {
        Err("holds no key")
    }
}

/// The paper form: printable ASCII lines (at most 256 bytes each), each ending in LF.
pub fn check_paper_key(b: &[u8]) -> Result<(), &'static str> {
    if !b.ends_with(b"\n") || !b.windows(9).any(|w| w == b"BORG PAPE") {
        return Err("is not borg's paper key");
    }
    for l in b[..b.len() - 1].split(|&c| c == b'\n') {
        if l.len() > 256 || !l.iter().all(|c| (0x20..0x7f).contains(c)) {
            return Err("has a line that is not printable text");
        }
    }
    Ok(())
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

    fn key() -> Vec<u8> {
        format!(
            "BORG_KEY {}\nhqlhbGdvcml0aG2m\nc2hhMjU2pGRhdGHa=\n",
            "ab12".repeat(16)
        )
        .into_bytes()
    }

    fn created() -> InitResult {
        InitResult {
            created: true,
            key_file: Some(key()),
            export: key(),
            paper: b"To restore key use borg key import --paper /path/to/repo\n\nBORG PAPER KEY v1\nid: 31 / b161a6\n".to_vec(),
        }
    }

    #[test]
    fn init_result_round_trips_and_exists_carries_nothing() {
        let r = created();
        assert_eq!(InitResult::parse(&r.encode(), true), Ok(r));
        let exists = InitResult {
            created: false,
            key_file: None,
            export: vec![],
            paper: vec![],
        };
        assert_eq!(InitResult::parse(&exists.encode(), true), Ok(exists));
    }

    #[test]
    fn hostile_init_results_are_refused() {
        let good = created().encode();
        let cases: Vec<Vec<u8>> = vec![
            // no key file although keyfile mode: parsed as keyfile=true below
            InitResult {
                key_file: None,
                ..created()
            }
            .encode(),
            // terminal escapes in the paper key
            InitResult {
                paper: b"BORG PAPER KEY v1\n\x1b]0;x\x07\n".to_vec(),
                ..created()
            }
            .encode(),
            // not a borg key
            InitResult {
                export: b"ssh-ed25519 AAAA\n".to_vec(),
                ..created()
            }
            .encode(),
            InitResult {
                key_file: Some(b"BORG_KEY 12\nabc\n".to_vec()),
                ..created()
            }
            .encode(),
            // trailing bytes, wrong magic, a length past the end, a huge length
            [good.clone(), b"x".to_vec()].concat(),
            String::from_utf8(good.clone())
                .unwrap()
                .replacen("qubes-borg-init/1", "qubes-borg-init/2", 1)
                .into_bytes(),
            b"qubes-borg-init/1 created\nkey-file 999\nBORG_KEY\n".to_vec(),
            b"qubes-borg-init/1 created\nkey-file 99999999999\n".to_vec(),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(InitResult::parse(c, true).is_err(), "case {i} accepted");
        }
        // repokey mode: a key-file part is not expected
        assert!(InitResult::parse(&good, false).is_err());
    }
}
