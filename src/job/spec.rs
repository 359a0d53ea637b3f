//! dom0 and sys-backup-mnt: the request dom0 sends to one `qubes-borg.BackupJob` run, as data
//! on the job's stdin (never a command line built from names).
//!
//! Format (version 1): text lines `KEY VALUE`, the first `qubes-borg-job/1`, the last `end`.
//! Secrets are length-prefixed raw bytes: `passphrase N`, newline, N bytes, newline (the same
//! for `key-file N`). Every key, value, count and the whole request are bounded; unknown keys,
//! repeated single keys, missing keys and values outside their allowlist are refused. Which op
//! takes which key, and how often: one table, `OP_KEYS`.
//!
//! ```text
//! qubes-borg-job/1
//! op create                      create | prune | list | restore | info | check | spot | export | init
//! repository ssh://borgbase/./repo
//! state-device /dev/xvdj         optional: borg's persistent state (cache, security dir)
//! qube work                      create: the qube; prune: once per qube (QUBE-* archives)
//! archive work-2026-11-29T18:00:00Z   create only
//! mode files                     create only: files | image
//! device /dev/xvdi               create only
//! compression zstd,3             create only
//! exclude sh:home/*/.cache       create only, repeatable
//! setting pref.label=red         create only, repeatable: the lines of the archive's comment
//! keep daily 7                   prune only, repeatable: within|last|hourly|daily|weekly|monthly|yearly
//! lock-wait 60                   create and prune, optional: borg --lock-wait, 1..=3600 seconds
//! (list: at most one `qube`, no other op keys: the archives of that qube, or of all qubes)
//! (restore: `archive`, `mode`, `device` (attached read-write): files mode makes a fresh ext4 on
//!  the device and extracts into it; image mode writes the archived image to the device)
//! (info: `archive` only: borg info --json of that one archive)
//! verify-data yes                check only, optional: borg check --verify-data (reads all data)
//! (check: no other op keys: borg check of the repository and every archive)
//! spot 20                        spot only: how many files (1..=MAX_SPOT) of `archive` to
//!                                 compare with the volume on `device` (mounted read-only)
//! (export: `archive` and 1..=MAX_PATHS `path` lines (`check_restore_path`: relative, no `.`/`..`
//!  component, allowlisted bytes); the job sends `borg export-tar` of those paths as `chunk`
//!  frames on its stdout (job::progress), which dom0 passes on without parsing)
//! path home/user/Documents       export only, repeatable
//! encryption keyfile-blake2      init only (required): keyfile-blake2 | repokey-blake2; no other
//!                                op keys and no key-file (init makes the key)
//! passphrase 11
//! <11 bytes>
//! key-file 0                     optional (keyfile mode): the key file's bytes
//! end
//! ```

use std::fmt;
use std::io::Read;

use crate::validate;

pub const MAGIC: &str = "qubes-borg-job/1";
/// Longest line of the request (not counting secret bytes).
pub const MAX_LINE: usize = 4096;
/// Longest exclude pattern.
pub const MAX_PATTERN: usize = 1024;
/// Most exclude patterns.
pub const MAX_EXCLUDES: usize = 256;
/// Most files one spot check compares.
pub const MAX_SPOT: u32 = 1000;
/// Most qubes in one prune request.
pub const MAX_QUBES: usize = 1024;
/// Largest passphrase or key file.
pub const MAX_SECRET: usize = 64 * 1024;
/// Longest repository URL.
pub const MAX_REPOSITORY: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mount the volume read-only and back up its files.
    Files,
    /// Back up the raw volume (no filesystem is parsed).
    Image,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Files => "files",
            Mode::Image => "image",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "files" => Some(Mode::Files),
            "image" => Some(Mode::Image),
            _ => None,
        }
    }
}

/// Retention, as borg prune's `--keep-*` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    /// `--keep-within`: digits followed by one of `HdwmyY`.
    pub within: Option<String>,
    /// (`last`|`hourly`|`daily`|`weekly`|`monthly`|`yearly`, count)
    pub counts: Vec<(KeepKind, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepKind {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

pub const KEEP_KINDS: &[(&str, KeepKind)] = &[
    ("last", KeepKind::Last),
    ("hourly", KeepKind::Hourly),
    ("daily", KeepKind::Daily),
    ("weekly", KeepKind::Weekly),
    ("monthly", KeepKind::Monthly),
    ("yearly", KeepKind::Yearly),
];

impl KeepKind {
    pub fn as_str(self) -> &'static str {
        KEEP_KINDS
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(s, _)| *s)
            .unwrap_or("last")
    }
    pub fn parse(s: &str) -> Option<KeepKind> {
        KEEP_KINDS.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }
}

impl Keep {
    pub fn is_empty(&self) -> bool {
        self.within.is_none() && self.counts.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub qube: String,
    pub archive: String,
    pub mode: Mode,
    pub device: String,
    pub compression: String,
    pub excludes: Vec<String>,
    /// The qube's settings (dom0's `metadata` text, one line each), stored as the comment.
    pub settings: Vec<String>,
    /// borg's `--lock-wait` (seconds): how long to wait for the repository's lock.
    pub lock_wait: Option<u32>,
}

/// Longest `lock-wait`.
pub const MAX_LOCK_WAIT: u32 = 3600;

/// Most `setting` lines.
pub const MAX_SETTINGS: usize = 256;
/// Most bytes of all `setting` lines together.
pub const MAX_SETTINGS_BYTES: usize = 16 * 1024;

/// A setting line: printable ASCII, 1..=1024 bytes.
pub fn check_setting(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 1024 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("must be 1 to 1024 printable ASCII bytes");
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    pub qubes: Vec<String>,
    pub keep: Keep,
    /// borg's `--lock-wait` (seconds).
    pub lock_wait: Option<u32>,
}

/// `list`: the archives (with their statistics and comments) of one qube, or of every qube.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub qube: Option<String>,
}

/// `restore`: the archive's contents onto the (read-write) device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub archive: String,
    pub mode: Mode,
    pub device: String,
}

/// `info`: borg's details of one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub archive: String,
}

/// `check`: borg's repository and archive checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verify_data: bool,
}

/// `spot`: `count` random files of `archive` compared with the volume on `device` (read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spot {
    pub archive: String,
    pub device: String,
    pub count: u32,
}

/// `export`: files and folders of a files-mode archive as a tar stream (`borg export-tar`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub archive: String,
    /// Paths in the archive (`home/user/Documents`), each checked by `check_restore_path`.
    pub paths: Vec<String>,
}

/// Most `path` lines of one export.
pub const MAX_PATHS: usize = 64;
/// Longest path.
pub const MAX_PATH: usize = 1024;

/// A path inside a files-mode archive (as borg stores it: relative to the private volume's
/// root, `home/user/...`): 1..=MAX_PATH bytes of `[A-Za-z0-9 ._+,=@%~#:()&'!-]` and `/`, not
/// absolute, no empty, `.` or `..` component (a trailing `/` is allowed), not starting with
/// `-`. It reaches borg only as `pp:PATH` (a path prefix, never a pattern or an option).
pub fn check_restore_path(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > MAX_PATH {
        return Err("must be 1 to 1024 bytes");
    }
    if s.starts_with('/') {
        return Err("must be relative to the qube's private volume (e.g. home/user/Documents)");
    }
    if s.starts_with('-') {
        return Err("must not start with -");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" ._+,=@%~#:()&'!-/".contains(&b))
    {
        return Err("may hold only A-Z a-z 0-9 / space and ._+,=@%~#:()&'!-");
    }
    let body = s.strip_suffix('/').unwrap_or(s);
    if body
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must not have an empty, . or .. component");
    }
    Ok(())
}

/// `init`: a new repository (left alone if one exists), then its key exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    pub encryption: Encryption,
}

/// borg init's `--encryption` modes qubes-borg offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// The key lives in a file (kept in dom0), never in the repository.
    KeyfileBlake2,
    /// The key is stored in the repository, protected by the passphrase.
    RepokeyBlake2,
}

impl Encryption {
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::KeyfileBlake2 => "keyfile-blake2",
            Encryption::RepokeyBlake2 => "repokey-blake2",
        }
    }
    pub fn parse(s: &str) -> Option<Encryption> {
        match s {
            "keyfile-blake2" => Some(Encryption::KeyfileBlake2),
            "repokey-blake2" => Some(Encryption::RepokeyBlake2),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create(Create),
    Prune(Prune),
    List(List),
    Restore(Restore),
    Info(Info),
    Check(Check),
    Spot(Spot),
    Export(Export),
    Init(Init),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Spec {
    pub repository: String,
    pub state_device: Option<String>,
    pub passphrase: Vec<u8>,
    pub key_file: Option<Vec<u8>>,
    pub op: Op,
}

impl fmt::Debug for Spec {
    // Never print the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("repository", &self.repository)
            .field("state_device", &self.state_device)
            .field("passphrase", &"<hidden>")
            .field("key_file", &self.key_file.as_ref().map(|_| "<hidden>"))
            .field("op", &self.op)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    Read(String),
    TooLong,
    BadMagic,
    Truncated,
    Syntax(usize),
    UnknownKey(usize, String),
    Repeated(usize, &'static str),
    Invalid(usize, &'static str, String),
    Missing(&'static str),
    WrongOp(usize, &'static str),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Read(e) => write!(f, "cannot read the job request: {e}"),
            SpecError::TooLong => write!(f, "job request: a line or value is too long"),
            SpecError::BadMagic => write!(f, "job request: not a {MAGIC} request (versions differ between dom0 and the template?)"),
            SpecError::Truncated => f.write_str("job request: ends before 'end'"),
            SpecError::Syntax(n) => write!(f, "job request line {n}: not 'KEY VALUE'"),
            SpecError::UnknownKey(n, k) => write!(f, "job request line {n}: unknown key '{}'", k.escape_debug()),
            SpecError::Repeated(n, k) => write!(f, "job request line {n}: '{k}' given twice"),
            SpecError::Invalid(n, k, why) => write!(f, "job request line {n}: {k}: {why}"),
            SpecError::Missing(k) => write!(f, "job request: '{k}' missing"),
            SpecError::WrongOp(n, k) => write!(f, "job request line {n}: '{k}' does not belong to this op"),
        }
    }
}

impl std::error::Error for SpecError {}

/// A block device the job may touch: exactly `/dev/xvd[i-z]` (frontends dom0 attaches with
/// `frontend-dev`; xvda..xvdd are the qube's own disks).
pub fn check_device(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    if b.len() == 9 && s.starts_with("/dev/xvd") && (b'i'..=b'z').contains(&b[8]) {
        Ok(())
    } else {
        Err("must be /dev/xvdi .. /dev/xvdz")
    }
}

/// `ssh://NAME/PATH` with NAME a qubes-borg.Ssh destination name and PATH of `[A-Za-z0-9._/~-]`.
pub fn check_repository(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_REPOSITORY {
        return Err("is too long");
    }
    let rest = s.strip_prefix("ssh://").ok_or("must start with ssh://")?;
    let (name, path) = rest.split_once('/').ok_or("must be ssh://NAME/PATH")?;
    validate::name("destination", name).map_err(|e| e.why)?;
    if path.is_empty()
        || !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/~-".contains(&b))
    {
        return Err("path may hold only A-Z a-z 0-9 . _ / ~ -");
    }
    Ok(())
}

/// Archive names: `[A-Za-z0-9._:+-]`, 1..=200 bytes, not starting with `-`.
pub fn check_archive(s: &str) -> Result<(), &'static str> {
    validate::check_word("archive", s, 200, |b| {
        b.is_ascii_alphanumeric() || b"._:+-".contains(&b)
    })
    .map_err(|e| e.why)
}

/// Qube names as Qubes allows them (`[A-Za-z0-9_.-]`, not starting with `-` or `.`), up to 31
/// bytes (qubes-core-admin `validate_name`).
pub fn check_qube(s: &str) -> Result<(), &'static str> {
    if s.len() > 31 {
        return Err("is longer than 31 characters");
    }
    validate::name("qube", s).map_err(|e| e.why)
}

/// borg compression spec: `[a-z0-9,]`, up to 32 bytes (`auto,zstd,10`, `lz4`, `none`).
pub fn check_compression(s: &str) -> Result<(), &'static str> {
    validate::check_word("compression", s, 32, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b','
    })
    .map_err(|e| e.why)
}

/// Exclude patterns: printable (no control characters), 1..=MAX_PATTERN bytes.
pub fn check_pattern(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > MAX_PATTERN {
        return Err("must be 1 to 1024 bytes");
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("contains a control character");
    }
    Ok(())
}

/// `--keep-within` interval: 1..=6 digits then one of `HdwmyY`.
pub fn check_within(s: &str) -> Result<(), &'static str> {
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    if num.is_empty()
        || num.len() > 6
        || !num.bytes().all(|b| b.is_ascii_digit())
        || !["H", "d", "w", "m", "y", "Y"].contains(&unit)
    {
        return Err("must be a number followed by H, d, w, m or y (e.g. 7d)");
    }
    Ok(())
}

/// Largest `keep` count.
pub const MAX_KEEP: u32 = 100_000;

fn push_secret(out: &mut Vec<u8>, key: &str, bytes: &[u8]) {
    out.extend_from_slice(format!("{key} {}\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.push(b'\n');
}

/// The request as bytes (the caller checked its values; `decode` checks them again).
pub fn encode(spec: &Spec) -> Vec<u8> {
    let mut s = format!("{MAGIC}\n");
    let op = match &spec.op {
        Op::Create(_) => "create",
        Op::Prune(_) => "prune",
        Op::List(_) => "list",
        Op::Restore(_) => "restore",
        Op::Info(_) => "info",
        Op::Check(_) => "check",
        Op::Spot(_) => "spot",
        Op::Export(_) => "export",
        Op::Init(_) => "init",
    };
    s += &format!("op {op}\nrepository {}\n", spec.repository);
    if let Some(d) = &spec.state_device {
        s += &format!("state-device {d}\n");
    }
    match &spec.op {
        Op::Create(c) => {
            s += &format!(
                "qube {}\narchive {}\nmode {}\ndevice {}\ncompression {}\n",
                c.qube,
                c.archive,
                c.mode.as_str(),
                c.device,
                c.compression
            );
            for e in &c.excludes {
                s += &format!("exclude {e}\n");
            }
            for l in &c.settings {
                s += &format!("setting {l}\n");
            }
            if let Some(w) = c.lock_wait {
                s += &format!("lock-wait {w}\n");
            }
        }
        Op::Prune(p) => {
            for q in &p.qubes {
                s += &format!("qube {q}\n");
            }
            if let Some(w) = &p.keep.within {
                s += &format!("keep within {w}\n");
            }
            for (k, n) in &p.keep.counts {
                s += &format!("keep {} {n}\n", k.as_str());
            }
            if let Some(w) = p.lock_wait {
                s += &format!("lock-wait {w}\n");
            }
        }
        Op::List(l) => {
            if let Some(q) = &l.qube {
                s += &format!("qube {q}\n");
            }
        }
        Op::Restore(r) => {
            s += &format!(
                "archive {}\nmode {}\ndevice {}\n",
                r.archive,
                r.mode.as_str(),
                r.device
            );
        }
        Op::Info(i) => s += &format!("archive {}\n", i.archive),
        Op::Check(c) => {
            if c.verify_data {
                s += "verify-data yes\n";
            }
        }
        Op::Spot(p) => {
            s += &format!(
                "archive {}\ndevice {}\nspot {}\n",
                p.archive, p.device, p.count
            )
        }
        Op::Export(e) => {
            s += &format!("archive {}\n", e.archive);
            for p in &e.paths {
                s += &format!("path {p}\n");
            }
        }
        Op::Init(i) => s += &format!("encryption {}\n", i.encryption.as_str()),
    }
    let mut out = s.into_bytes();
    push_secret(&mut out, "passphrase", &spec.passphrase);
    if let Some(k) = &spec.key_file {
        push_secret(&mut out, "key-file", k);
    }
    out.extend_from_slice(b"end\n");
    out
}

/// Reads one line (without its newline), at most MAX_LINE bytes, one byte at a time so that
/// nothing after the request is consumed.
fn read_line<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, SpecError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => {
                return Ok(if line.is_empty() {
                    None
                } else {
                    Err(SpecError::Truncated)?
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SpecError::Read(e.to_string())),
        }
        if byte[0] == b'\n' {
            return Ok(Some(line));
        }
        if line.len() >= MAX_LINE {
            return Err(SpecError::TooLong);
        }
        line.push(byte[0]);
    }
}

fn read_secret<R: Read>(r: &mut R, n: usize, len: &str) -> Result<Vec<u8>, SpecError> {
    let count: usize = parse_count(len).ok_or(SpecError::Invalid(
        n,
        "secret",
        "length is not a number".into(),
    ))?;
    if count > MAX_SECRET {
        return Err(SpecError::TooLong);
    }
    let mut buf = vec![0u8; count + 1];
    r.read_exact(&mut buf).map_err(|_| SpecError::Truncated)?;
    if buf.pop() != Some(b'\n') {
        return Err(SpecError::Invalid(
            n,
            "secret",
            "not followed by a newline".into(),
        ));
    }
    Ok(buf)
}

fn parse_count(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn set<T>(slot: &mut Option<T>, v: T, n: usize, key: &'static str) -> Result<(), SpecError> {
    if slot.is_some() {
        return Err(SpecError::Repeated(n, key));
    }
    *slot = Some(v);
    Ok(())
}

fn check(
    n: usize,
    key: &'static str,
    v: &str,
    f: fn(&str) -> Result<(), &'static str>,
) -> Result<String, SpecError> {
    f(v).map_err(|why| SpecError::Invalid(n, key, why.to_string()))?;
    Ok(v.to_string())
}

/// How many lines of a key an op takes: at least `.0`, at most `.1`.
type Times = (usize, usize);
const OPTIONAL: Times = (0, 1);
const ONE: Times = (1, 1);
const ANY: Times = (0, usize::MAX);
const SOME: Times = (1, usize::MAX);

/// An op's keys and how often it takes each.
type Keys = &'static [(&'static str, Times)];

/// Keys every op takes, each at most once (`op`, `repository` and `passphrase` required).
const COMMON_KEYS: &[&str] = &["op", "repository", "state-device", "passphrase"];

/// Each op and the other keys it takes, how often (repeatable keys are also bounded while
/// they are read: MAX_QUBES, MAX_EXCLUDES, MAX_SETTINGS, MAX_PATHS, one `keep` per kind). A key
/// not in its op's row is refused; a missing one is reported in this order.
const OP_KEYS: &[(&str, Keys)] = &[
    (
        "create",
        &[
            ("qube", ONE),
            ("archive", ONE),
            ("mode", ONE),
            ("device", ONE),
            ("compression", ONE),
            ("exclude", ANY),
            ("setting", ANY),
            ("lock-wait", OPTIONAL),
            ("key-file", OPTIONAL),
        ],
    ),
    (
        "prune",
        &[
            ("keep", SOME),
            ("qube", SOME),
            ("lock-wait", OPTIONAL),
            ("key-file", OPTIONAL),
        ],
    ),
    ("list", &[("qube", OPTIONAL), ("key-file", OPTIONAL)]),
    (
        "restore",
        &[
            ("archive", ONE),
            ("mode", ONE),
            ("device", ONE),
            ("key-file", OPTIONAL),
        ],
    ),
    ("info", &[("archive", ONE), ("key-file", OPTIONAL)]),
    (
        "check",
        &[("verify-data", OPTIONAL), ("key-file", OPTIONAL)],
    ),
    (
        "spot",
        &[
            ("archive", ONE),
            ("device", ONE),
            ("spot", ONE),
            ("key-file", OPTIONAL),
        ],
    ),
    (
        "export",
        &[("path", SOME), ("archive", ONE), ("key-file", OPTIONAL)],
    ),
    // No key file: init makes the key.
    ("init", &[("encryption", ONE)]),
];

/// `must be create, prune, ... or init`.
fn op_choices() -> String {
    let names: Vec<&str> = OP_KEYS.iter().map(|(name, _)| *name).collect();
    let (last, rest) = names.split_last().expect("ops");
    format!("must be {} or {last}", rest.join(", "))
}

/// The key as the table spells it, when some op takes it.
fn known_key(key: &str) -> Option<&'static str> {
    COMMON_KEYS
        .iter()
        .copied()
        .chain(
            OP_KEYS
                .iter()
                .flat_map(|(_, keys)| keys.iter().map(|(k, _)| *k)),
        )
        .find(|k| *k == key)
}

/// Checks the key lines of a request (`seen`: key and line number of each, in order) against
/// what its op takes (`OP_KEYS`): the first key the op does not take, then the first line
/// beyond a key's most, then the first key missing.
fn check_keys(op: &str, seen: &[(&'static str, usize)]) -> Result<(), SpecError> {
    let takes = OP_KEYS
        .iter()
        .find(|(name, _)| *name == op)
        .map_or(&[][..], |(_, keys)| keys);
    let lines = |key: &'static str| seen.iter().filter(move |(k, _)| *k == key).map(|(_, n)| *n);
    for &(key, n) in seen {
        if !COMMON_KEYS.contains(&key) && !takes.iter().any(|(k, _)| *k == key) {
            return Err(SpecError::WrongOp(n, key));
        }
    }
    for &(key, (_, most)) in takes {
        if let Some(n) = lines(key).nth(most) {
            return Err(SpecError::Repeated(n, key));
        }
    }
    for &(key, (least, _)) in takes {
        if lines(key).count() < least {
            return Err(SpecError::Missing(key));
        }
    }
    Ok(())
}

/// The value of a key `check_keys` found.
fn need<T>(v: Option<T>, key: &'static str) -> Result<T, SpecError> {
    v.ok_or(SpecError::Missing(key))
}

/// Reads and checks one request. Reads nothing past `end`.
pub fn decode<R: Read>(r: &mut R) -> Result<Spec, SpecError> {
    let first = read_line(r)?.ok_or(SpecError::Truncated)?;
    if first != MAGIC.as_bytes() {
        return Err(SpecError::BadMagic);
    }
    let (mut op, mut repo, mut state, mut archive, mut mode, mut device, mut compression) =
        (None, None, None, None, None, None, None);
    let (mut passphrase, mut key_file) = (None, None);
    let (mut verify_data, mut spot_count) = (None, None);
    let mut encryption = None;
    let mut qubes: Vec<String> = Vec::new();
    let mut excludes = Vec::new();
    let mut settings: Vec<String> = Vec::new();
    let mut keep = Keep::default();
    let mut lock_wait: Option<u32> = None;
    let mut paths: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut n = 1;
    loop {
        n += 1;
        let raw = read_line(r)?.ok_or(SpecError::Truncated)?;
        let line = String::from_utf8(raw).map_err(|_| SpecError::Syntax(n))?;
        if line == "end" {
            break;
        }
        let (key, value) = line.split_once(' ').ok_or(SpecError::Syntax(n))?;
        let key = known_key(key)
            .ok_or_else(|| SpecError::UnknownKey(n, key.chars().take(32).collect()))?;
        seen.push((key, n));
        match key {
            "op" => {
                let v = OP_KEYS
                    .iter()
                    .map(|(name, _)| *name)
                    .find(|name| *name == value)
                    .ok_or_else(|| SpecError::Invalid(n, "op", op_choices()))?;
                set(&mut op, v, n, "op")?
            }
            "repository" => set(
                &mut repo,
                check(n, "repository", value, check_repository)?,
                n,
                "repository",
            )?,
            "state-device" => set(
                &mut state,
                check(n, "state-device", value, check_device)?,
                n,
                "state-device",
            )?,
            "qube" => {
                if qubes.len() >= MAX_QUBES {
                    return Err(SpecError::TooLong);
                }
                qubes.push(check(n, "qube", value, check_qube)?)
            }
            "archive" => set(
                &mut archive,
                check(n, "archive", value, check_archive)?,
                n,
                "archive",
            )?,
            "mode" => set(
                &mut mode,
                Mode::parse(value).ok_or(SpecError::Invalid(
                    n,
                    "mode",
                    "must be files or image".into(),
                ))?,
                n,
                "mode",
            )?,
            "device" => set(
                &mut device,
                check(n, "device", value, check_device)?,
                n,
                "device",
            )?,
            "compression" => set(
                &mut compression,
                check(n, "compression", value, check_compression)?,
                n,
                "compression",
            )?,
            "exclude" => {
                if excludes.len() >= MAX_EXCLUDES {
                    return Err(SpecError::TooLong);
                }
                excludes.push(check(n, "exclude", value, check_pattern)?)
            }
            "setting" => {
                let total: usize = settings.iter().map(|l| l.len() + 1).sum();
                if settings.len() >= MAX_SETTINGS || total + value.len() > MAX_SETTINGS_BYTES {
                    return Err(SpecError::TooLong);
                }
                settings.push(check(n, "setting", value, check_setting)?)
            }
            "keep" => {
                let (kind, v) = value.split_once(' ').ok_or(SpecError::Syntax(n))?;
                if kind == "within" {
                    let w = check(n, "keep within", v, check_within)?;
                    set(&mut keep.within, w, n, "keep within")?;
                } else {
                    let k = KeepKind::parse(kind).ok_or(SpecError::Invalid(
                        n,
                        "keep",
                        "unknown kind".into(),
                    ))?;
                    let c = parse_count(v)
                        .filter(|c| (1..=MAX_KEEP as usize).contains(c))
                        .ok_or(SpecError::Invalid(
                            n,
                            "keep",
                            "count must be 1..100000".into(),
                        ))?;
                    if keep.counts.iter().any(|(x, _)| *x == k) {
                        return Err(SpecError::Repeated(n, "keep"));
                    }
                    keep.counts.push((k, c as u32));
                }
            }
            "lock-wait" => {
                let w = parse_count(value)
                    .filter(|w| (1..=MAX_LOCK_WAIT as usize).contains(w))
                    .ok_or(SpecError::Invalid(
                        n,
                        "lock-wait",
                        "must be 1..3600 seconds".into(),
                    ))?;
                set(&mut lock_wait, w as u32, n, "lock-wait")?
            }
            "verify-data" => {
                if value != "yes" {
                    return Err(SpecError::Invalid(n, "verify-data", "must be yes".into()));
                }
                set(&mut verify_data, true, n, "verify-data")?
            }
            "spot" => {
                let c = parse_count(value)
                    .filter(|c| (1..=MAX_SPOT as usize).contains(c))
                    .ok_or(SpecError::Invalid(
                        n,
                        "spot",
                        format!("must be 1..{MAX_SPOT}"),
                    ))?;
                set(&mut spot_count, c as u32, n, "spot")?
            }
            "path" => {
                if paths.len() >= MAX_PATHS {
                    return Err(SpecError::TooLong);
                }
                paths.push(check(n, "path", value, check_restore_path)?)
            }
            "encryption" => set(
                &mut encryption,
                Encryption::parse(value).ok_or(SpecError::Invalid(
                    n,
                    "encryption",
                    "must be keyfile-blake2 or repokey-blake2".into(),
                ))?,
                n,
                "encryption",
            )?,
            "passphrase" => {
                let s = read_secret(r, n, value)?;
                set(&mut passphrase, s, n, "passphrase")?
            }
            "key-file" => {
                let s = read_secret(r, n, value)?;
                set(&mut key_file, s, n, "key-file")?
            }
            _ => return Err(SpecError::UnknownKey(n, key.chars().take(32).collect())),
        }
    }
    let repository = repo.ok_or(SpecError::Missing("repository"))?;
    let passphrase = passphrase.ok_or(SpecError::Missing("passphrase"))?;
    let op_name = op.ok_or(SpecError::Missing("op"))?;
    check_keys(op_name, &seen)?;
    let op = match op_name {
        "create" => Op::Create(Create {
            qube: need(qubes.pop(), "qube")?,
            archive: need(archive, "archive")?,
            mode: need(mode, "mode")?,
            device: need(device, "device")?,
            compression: need(compression, "compression")?,
            excludes,
            settings,
            lock_wait,
        }),
        "list" => Op::List(List { qube: qubes.pop() }),
        "restore" => Op::Restore(Restore {
            archive: need(archive, "archive")?,
            mode: need(mode, "mode")?,
            device: need(device, "device")?,
        }),
        "info" => Op::Info(Info {
            archive: need(archive, "archive")?,
        }),
        "check" => Op::Check(Check {
            verify_data: verify_data.unwrap_or(false),
        }),
        "spot" => Op::Spot(Spot {
            archive: need(archive, "archive")?,
            device: need(device, "device")?,
            count: need(spot_count, "spot")?,
        }),
        "export" => Op::Export(Export {
            archive: need(archive, "archive")?,
            paths,
        }),
        "init" => Op::Init(Init {
            encryption: need(encryption, "encryption")?,
        }),
        // The only op left in OP_KEYS.
        _ => Op::Prune(Prune {
            qubes,
            keep,
            lock_wait,
        }),
    };
    Ok(Spec {
        repository,
        state_device: state,
        passphrase,
        key_file,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line number of the first line of `create()`'s request that starts with `prefix`.
    fn line_of(prefix: &str) -> usize {
        let text = String::from_utf8_lossy(&encode(&create())).into_owned();
        1 + text
            .lines()
            .position(|l| l.starts_with(prefix))
            .expect("line in the request")
    }

    fn create() -> Spec {
        Spec {
            repository: "ssh://borgbase/./repo".into(),
            state_device: Some("/dev/xvdj".into()),
            passphrase: b"pass word\nwith newline\0and nul".to_vec(),
            key_file: Some(b"BORG_KEY 1234\nabc\n".to_vec()),
            op: Op::Create(Create {
                qube: "work".into(),
                archive: "work-2026-11-29T18:00:00Z".into(),
                mode: Mode::Files,
                device: "/dev/xvdi".into(),
                compression: "zstd,3".into(),
                excludes: vec!["sh:home/*/.cache".into(), "pp:rw/tmp x".into()],
                settings: vec!["qubes-borg-settings/1".into(), "pref.label=red".into()],
                lock_wait: Some(60),
            }),
        }
    }

    #[test]
    fn create_request_round_trips_with_binary_secrets() {
        let s = create();
        let bytes = encode(&s);
        let mut r = &bytes[..];
        assert_eq!(decode(&mut r).unwrap(), s);
        assert!(r.is_empty());
    }

    #[test]
    fn prune_request_round_trips() {
        let s = Spec {
            repository: "ssh://admin/./repo".into(),
            state_device: None,
            passphrase: b"p".to_vec(),
            key_file: None,
            op: Op::Prune(Prune {
                qubes: vec!["a".into(), "b".into()],
                keep: Keep {
                    within: Some("2d".into()),
                    counts: vec![(KeepKind::Daily, 7), (KeepKind::Monthly, 6)],
                },
                lock_wait: None,
            }),
        };
        let bytes = encode(&s);
        assert_eq!(decode(&mut &bytes[..]).unwrap(), s);
    }

    #[test]
    fn decode_reads_nothing_after_end() {
        let mut bytes = encode(&create());
        bytes.extend_from_slice(b"trailing");
        let mut r = &bytes[..];
        decode(&mut r).unwrap();
        assert_eq!(r, b"trailing");
    }

    fn replace(from: &str, to: &str) -> Result<Spec, SpecError> {
        let text = String::from_utf8_lossy(&encode(&create())).replace(from, to);
        decode(&mut text.as_bytes())
    }

    #[test]
    fn devices_other_than_xvdi_to_xvdz_are_refused() {
        for bad in [
            "/dev/xvda",
            "/dev/xvdh",
            "/dev/sda",
            "/dev/xvdi1",
            "/dev/../dev/xvdi",
            "xvdi",
        ] {
            assert!(
                matches!(
                    replace("device /dev/xvdi", &format!("device {bad}")),
                    Err(SpecError::Invalid(_, "device", _))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn hostile_values_are_refused() {
        for (from, to, key) in [
            ("qube work", "qube -rf", "qube"),
            ("qube work", "qube ../x", "qube"),
            ("archive work-", "archive work/", "archive"),
            ("ssh://borgbase/./repo", "ssh://bo rg/x", "repository"),
            ("ssh://borgbase/./repo", "/local/repo", "repository"),
            ("compression zstd,3", "compression zstd;rm", "compression"),
            ("pp:rw/tmp x", "a\u{1b}[2J", "exclude"),
            ("mode files", "mode tar", "mode"),
        ] {
            assert!(
                matches!(replace(from, to), Err(SpecError::Invalid(_, k, _)) if k == key),
                "{to}"
            );
        }
    }

    #[test]
    fn init_request_round_trips_and_takes_no_key_file_or_other_op_keys() {
        let mut spec = create();
        spec.key_file = None;
        spec.op = Op::Init(Init {
            encryption: Encryption::KeyfileBlake2,
        });
        let bytes = encode(&spec);
        assert_eq!(decode(&mut &bytes[..]).unwrap(), spec);
        let text = String::from_utf8_lossy(&bytes).to_string();
        let bad = text.replace("keyfile-blake2", "none");
        assert!(matches!(
            decode(&mut bad.as_bytes()),
            Err(SpecError::Invalid(_, "encryption", _))
        ));
        let bad = text.replace("encryption keyfile-blake2\n", "");
        assert_eq!(
            decode(&mut bad.as_bytes()).unwrap_err(),
            SpecError::Missing("encryption")
        );
        let bad = text.replace("encryption", "qube work\nencryption");
        assert!(matches!(
            decode(&mut bad.as_bytes()),
            Err(SpecError::WrongOp(..))
        ));
        // a key file with init, and encryption with another op
        let mut with_key = spec.clone();
        with_key.key_file = Some(b"BORG_KEY 00\n".to_vec());
        assert_eq!(
            decode(&mut &encode(&with_key)[..]).unwrap_err(),
            SpecError::WrongOp(7, "key-file")
        );
        let bad = text.replace("op init", "op list");
        assert_eq!(
            decode(&mut bad.as_bytes()).unwrap_err(),
            SpecError::WrongOp(5, "encryption")
        );
    }

    #[test]
    fn structure_errors_are_refused() {
        assert_eq!(
            replace(MAGIC, "qubes-borg-job/2").unwrap_err(),
            SpecError::BadMagic
        );
        assert!(matches!(
            replace("mode files\n", "mode files\nmode image\n"),
            Err(SpecError::Repeated(_, "mode"))
        ));
        assert!(matches!(
            replace("mode files\n", "frobnicate 1\n"),
            Err(SpecError::UnknownKey(_, _))
        ));
        assert!(matches!(
            replace("mode files\n", ""),
            Err(SpecError::Missing("mode"))
        ));
        assert!(matches!(
            replace("mode files\n", "keep daily 7\n"),
            Err(SpecError::WrongOp(_, "keep"))
        ));
        assert_eq!(replace("end\n", ""), Err(SpecError::Truncated));
        let long = format!("exclude {}\n", "a".repeat(MAX_LINE));
        assert_eq!(
            replace("mode files\n", &format!("mode files\n{long}")),
            Err(SpecError::TooLong)
        );
    }

    #[test]
    fn lock_wait_is_bounded() {
        for bad in ["0", "3601", "-1", "60s", ""] {
            assert!(
                matches!(
                    replace("lock-wait 60\n", &format!("lock-wait {bad}\n")),
                    Err(SpecError::Invalid(_, "lock-wait", _))
                ),
                "{bad}"
            );
        }
        let Op::Create(c) = replace("lock-wait 60\n", "lock-wait 3600\n").unwrap().op else {
            panic!()
        };
        assert_eq!(c.lock_wait, Some(3600));
    }

    #[test]
    fn lock_wait_belongs_to_create_and_prune_only() {
        let text = String::from_utf8_lossy(&encode(&export()))
            .replace("path rw/config\n", "path rw/config\nlock-wait 60\n");
        assert_eq!(
            decode(&mut text.as_bytes()),
            Err(SpecError::WrongOp(7, "lock-wait"))
        );
    }

    #[test]
    fn oversized_or_short_secrets_are_refused() {
        assert_eq!(
            replace(
                "passphrase 30\n",
                &format!("passphrase {}\n", 64 * 1024 + 1)
            ),
            Err(SpecError::TooLong)
        );
        assert_eq!(
            replace("passphrase 30\n", "passphrase 1000\n"),
            Err(SpecError::Truncated)
        );
    }

    fn round_trip(op: Op) -> Spec {
        let s = Spec {
            repository: "ssh://borgbase/./repo".into(),
            state_device: None,
            passphrase: b"p".to_vec(),
            key_file: None,
            op,
        };
        let bytes = encode(&s);
        assert_eq!(decode(&mut &bytes[..]).unwrap(), s);
        s
    }

    #[test]
    fn info_check_and_spot_requests_round_trip() {
        round_trip(Op::Info(Info {
            archive: "work-2026-11-29T18:00:00Z".into(),
        }));
        round_trip(Op::Check(Check { verify_data: true }));
        round_trip(Op::Check(Check { verify_data: false }));
        round_trip(Op::Spot(Spot {
            archive: "work-2026-11-29T18:00:00Z".into(),
            device: "/dev/xvdi".into(),
            count: MAX_SPOT,
        }));
    }

    #[test]
    fn info_check_and_spot_refuse_foreign_or_out_of_range_keys() {
        let spot = String::from_utf8(encode(&round_trip(Op::Spot(Spot {
            archive: "work-2026-11-29T18:00:00Z".into(),
            device: "/dev/xvdi".into(),
            count: 5,
        }))))
        .unwrap();
        let dec = |t: String| decode(&mut t.as_bytes());
        assert!(matches!(
            dec(spot.replace("spot 5", "spot 0")),
            Err(SpecError::Invalid(_, "spot", _))
        ));
        assert!(matches!(
            dec(spot.replace("spot 5", &format!("spot {}", MAX_SPOT + 1))),
            Err(SpecError::Invalid(_, "spot", _))
        ));
        assert!(matches!(
            dec(spot.replace("device /dev/xvdi", "device /dev/xvda")),
            Err(SpecError::Invalid(_, "device", _))
        ));
        assert!(matches!(
            dec(spot.replace("spot 5\n", "")),
            Err(SpecError::Missing("spot"))
        ));
        assert!(matches!(
            dec(spot
                .replace("op spot", "op check")
                .replace("archive work-2026-11-29T18:00:00Z\ndevice /dev/xvdi\n", "")),
            Err(SpecError::WrongOp(4, "spot"))
        ));
        assert!(matches!(
            dec(spot.replace("op spot", "op info").replace("spot 5\n", "")),
            Err(SpecError::WrongOp(_, "device"))
        ));
        assert!(matches!(
            dec(spot.replace("spot 5\n", "spot 5\nverify-data yes\n")),
            Err(SpecError::WrongOp(_, "verify-data"))
        ));
        assert!(matches!(
            dec(spot.replace("spot 5\n", "spot 5\nqube work\n")),
            Err(SpecError::WrongOp(_, _))
        ));
        let check = spot.replace("op spot", "op check").replace(
            "archive work-2026-11-29T18:00:00Z\ndevice /dev/xvdi\nspot 5\n",
            "verify-data no\n",
        );
        assert!(matches!(
            dec(check),
            Err(SpecError::Invalid(_, "verify-data", _))
        ));
    }

    fn export() -> Spec {
        Spec {
            repository: "ssh://borgbase/./repo".into(),
            state_device: None,
            passphrase: b"p".to_vec(),
            key_file: None,
            op: Op::Export(Export {
                archive: "work-2026-11-29T18:00:00Z".into(),
                paths: vec!["home/user/My Documents/".into(), "rw/config".into()],
            }),
        }
    }

    #[test]
    fn export_request_round_trips() {
        let s = export();
        assert_eq!(decode(&mut &encode(&s)[..]).unwrap(), s);
    }

    #[test]
    fn export_paths_outside_the_allowlist_are_refused() {
        for bad in [
            "/etc/shadow",
            "../x",
            "home/../../x",
            "home/./x",
            "home//x",
            "home/..",
            "-x",
            "",
            "a*b",
            "a?b",
            "a[b]",
            "a\\b",
            "a\tb",
            "a\u{1b}[2J",
            "a$(id)",
            "a`id`",
            "a;b",
            "a\"b",
            "a|b",
            "a<b",
            "\u{e9}t\u{e9}",
        ] {
            assert!(check_restore_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_restore_path(&"a".repeat(MAX_PATH + 1)).is_err());
        for good in [
            "home/user",
            "home/user/",
            "a b/c (1).txt",
            "x/.hidden",
            "a..b",
        ] {
            assert_eq!(check_restore_path(good), Ok(()), "{good:?}");
        }
        let text = String::from_utf8_lossy(&encode(&export())).replace("rw/config", "../x");
        assert!(matches!(
            decode(&mut text.as_bytes()),
            Err(SpecError::Invalid(_, "path", _))
        ));
        let many: String = (0..=MAX_PATHS).map(|i| format!("path p{i}\n")).collect();
        let text = String::from_utf8_lossy(&encode(&export())).replace("path rw/config\n", &many);
        assert_eq!(decode(&mut text.as_bytes()), Err(SpecError::TooLong));
    }

    #[test]
    fn path_belongs_to_export_only_and_export_needs_one() {
        assert!(matches!(
            replace("mode files\n", "mode files\npath home\n"),
            Err(SpecError::WrongOp(_, "path"))
        ));
        let text = String::from_utf8_lossy(&encode(&export()))
            .replace("path home/user/My Documents/\n", "")
            .replace("path rw/config\n", "");
        assert_eq!(
            decode(&mut text.as_bytes()),
            Err(SpecError::Missing("path"))
        );
        let text = String::from_utf8_lossy(&encode(&export()))
            .replace("path rw/config\n", "path rw/config\nmode files\n");
        assert!(matches!(
            decode(&mut text.as_bytes()),
            Err(SpecError::WrongOp(..))
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let d = format!("{:?}", create());
        assert!(!d.contains("pass word") && !d.contains("BORG_KEY"), "{d}");
        assert!(
            d.contains("ssh://borgbase/./repo") && d.contains("passphrase: \"<hidden>\""),
            "{d}"
        );
    }

    fn round_trips(s: &Spec) -> Result<(), SpecError> {
        let bytes = encode(s);
        assert_eq!(decode(&mut &bytes[..])?, *s);
        Ok(())
    }

    fn with_create(f: impl FnOnce(&mut Create)) -> Spec {
        let mut s = create();
        let Op::Create(c) = &mut s.op else {
            unreachable!()
        };
        f(c);
        s
    }

    fn prune() -> Spec {
        Spec {
            repository: "ssh://admin/./repo".into(),
            state_device: None,
            passphrase: b"p".to_vec(),
            key_file: None,
            op: Op::Prune(Prune {
                qubes: vec!["work".into()],
                keep: Keep {
                    within: None,
                    counts: vec![(KeepKind::Daily, 7)],
                },
                lock_wait: None,
            }),
        }
    }

    /// The prune request with `from` replaced by `to` in its text.
    fn prune_with(from: &str, to: &str) -> Result<Spec, SpecError> {
        let text = String::from_utf8_lossy(&encode(&prune())).replace(from, to);
        assert_ne!(text, String::from_utf8_lossy(&encode(&prune())), "{from}");
        decode(&mut text.as_bytes())
    }

    fn restore() -> Spec {
        Spec {
            repository: "ssh://borgbase/./repo".into(),
            state_device: Some("/dev/xvdj".into()),
            passphrase: b"p".to_vec(),
            key_file: None,
            op: Op::Restore(Restore {
                archive: "work-2026-11-29T18:00:00Z".into(),
                mode: Mode::Image,
                device: "/dev/xvdz".into(),
            }),
        }
    }

    fn restore_with(from: &str, to: &str) -> Result<Spec, SpecError> {
        let text = String::from_utf8_lossy(&encode(&restore())).replace(from, to);
        decode(&mut text.as_bytes())
    }

    fn list(qube: Option<&str>) -> Spec {
        Spec {
            op: Op::List(List {
                qube: qube.map(String::from),
            }),
            ..prune()
        }
    }

    fn list_with(from: &str, to: &str) -> Result<Spec, SpecError> {
        let text = String::from_utf8_lossy(&encode(&list(Some("work")))).replace(from, to);
        decode(&mut text.as_bytes())
    }

    #[test]
    fn image_mode_restore_and_list_requests_round_trip() {
        round_trips(&with_create(|c| c.mode = Mode::Image)).unwrap();
        round_trips(&restore()).unwrap();
        round_trips(&list(Some("work"))).unwrap();
        round_trips(&list(None)).unwrap();
        round_trips(&Spec {
            key_file: Some(vec![]),
            ..prune()
        })
        .unwrap();
    }

    #[test]
    fn every_keep_kind_round_trips_and_either_kind_of_keep_is_enough() {
        for (name, kind) in KEEP_KINDS {
            assert_eq!(kind.as_str(), *name);
            assert_eq!(KeepKind::parse(name), Some(*kind));
            let mut s = prune();
            let Op::Prune(p) = &mut s.op else {
                unreachable!()
            };
            p.keep.counts = vec![(*kind, 3)];
            round_trips(&s).unwrap();
        }
        let mut s = prune();
        let Op::Prune(p) = &mut s.op else {
            unreachable!()
        };
        p.keep = Keep {
            within: Some("7d".into()),
            counts: vec![],
        };
        round_trips(&s).unwrap();
    }

    #[test]
    fn keep_counts_are_bounded_from_1_to_100000() {
        let bad = |v: &str| {
            assert_eq!(
                prune_with("keep daily 7\n", &format!("keep daily {v}\n")),
                Err(SpecError::Invalid(
                    5,
                    "keep",
                    "count must be 1..100000".into()
                )),
                "{v}"
            )
        };
        bad("0");
        bad("100001");
        bad("-1");
        bad("7x");
        let Op::Prune(p) = prune_with("keep daily 7\n", "keep daily 100000\n")
            .unwrap()
            .op
        else {
            panic!()
        };
        assert_eq!(p.keep.counts, [(KeepKind::Daily, 100_000)]);
        let Op::Prune(p) = prune_with("keep daily 7\n", "keep daily 1\n").unwrap().op else {
            panic!()
        };
        assert_eq!(p.keep.counts, [(KeepKind::Daily, 1)]);
    }

    #[test]
    fn keep_lines_are_checked_one_fault_each() {
        assert_eq!(
            prune_with("keep daily 7\n", "keep daily 7\nkeep daily 8\n"),
            Err(SpecError::Repeated(6, "keep"))
        );
        assert_eq!(
            prune_with(
                "keep daily 7\n",
                "keep daily 7\nkeep within 2d\nkeep within 3d\n"
            ),
            Err(SpecError::Repeated(7, "keep within"))
        );
        assert_eq!(
            prune_with("keep daily 7\n", "keep fortnightly 7\n"),
            Err(SpecError::Invalid(5, "keep", "unknown kind".into()))
        );
        assert_eq!(
            prune_with("keep daily 7\n", "keep daily\n"),
            Err(SpecError::Syntax(5))
        );
        assert!(matches!(
            prune_with("keep daily 7\n", "keep daily 7\nkeep within 7\n"),
            Err(SpecError::Invalid(6, "keep within", _))
        ));
    }

    #[test]
    fn a_keep_is_empty_only_without_within_and_without_counts() {
        assert!(Keep::default().is_empty());
        let within = Keep {
            within: Some("7d".into()),
            counts: vec![],
        };
        assert!(!within.is_empty());
        let counts = Keep {
            within: None,
            counts: vec![(KeepKind::Daily, 1)],
        };
        assert!(!counts.is_empty());
    }

    #[test]
    fn keep_within_is_1_to_6_digits_and_a_unit() {
        for ok in ["1H", "7d", "2w", "6m", "1y", "1Y", "999999d"] {
            assert_eq!(check_within(ok), Ok(()), "{ok}");
        }
        for bad in ["", "d", "7", "1000000d", "7x", "7 d", "-7d", "+7d", "7dd"] {
            assert!(check_within(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prune_needs_keep_and_qubes() {
        assert_eq!(
            prune_with("keep daily 7\n", ""),
            Err(SpecError::Missing("keep"))
        );
        assert_eq!(
            prune_with("qube work\n", ""),
            Err(SpecError::Missing("qube"))
        );
    }

    #[test]
    fn a_prune_request_holds_at_most_1024_qubes() {
        let qubes = |n: usize| (0..n).map(|i| format!("qube q{i}\n")).collect::<String>();
        let Op::Prune(p) = prune_with("qube work\n", &qubes(MAX_QUBES)).unwrap().op else {
            panic!()
        };
        assert_eq!(p.qubes.len(), MAX_QUBES);
        assert_eq!(
            prune_with("qube work\n", &qubes(MAX_QUBES + 1)),
            Err(SpecError::TooLong)
        );
    }

    #[test]
    fn create_needs_exactly_one_qube_and_each_of_its_keys() {
        assert_eq!(
            replace("qube work\n", "qube work\nqube other\n"),
            Err(SpecError::Repeated(line_of("qube ") + 1, "qube"))
        );
        assert_eq!(replace("qube work\n", ""), Err(SpecError::Missing("qube")));
        for (line, key) in [
            ("archive work-2026-11-29T18:00:00Z\n", "archive"),
            ("device /dev/xvdi\n", "device"),
            ("compression zstd,3\n", "compression"),
            ("repository ssh://borgbase/./repo\n", "repository"),
            ("op create\n", "op"),
        ] {
            assert_eq!(replace(line, ""), Err(SpecError::Missing(key)), "{key}");
        }
        let text = String::from_utf8_lossy(&encode(&create())).into_owned();
        let at = text.find("passphrase 30\n").unwrap();
        let without = format!("{}end\n", &text[..at]);
        assert_eq!(
            decode(&mut without.as_bytes()),
            Err(SpecError::Missing("passphrase"))
        );
        // Without the optional keys the request is still complete.
        let s = replace("state-device /dev/xvdj\n", "").unwrap();
        assert_eq!(s.state_device, None);
    }

    #[test]
    fn restore_refuses_create_and_prune_keys() {
        assert_eq!(
            restore_with("mode image\n", "mode image\nkeep daily 7\n"),
            Err(SpecError::WrongOp(7, "keep"))
        );
        for extra in ["compression lz4\n", "exclude x\n", "setting x\n"] {
            assert_eq!(
                restore_with("mode image\n", &format!("mode image\n{extra}")),
                Err(SpecError::WrongOp(7, extra.split(' ').next().unwrap())),
                "{extra}"
            );
        }
        assert_eq!(
            restore_with("mode image\n", "mode image\nqube work\n"),
            Err(SpecError::WrongOp(7, "qube"))
        );
        for (line, key) in [
            ("archive work-2026-11-29T18:00:00Z\n", "archive"),
            ("mode image\n", "mode"),
            ("device /dev/xvdz\n", "device"),
        ] {
            assert_eq!(restore_with(line, ""), Err(SpecError::Missing(key)));
        }
    }

    #[test]
    fn list_takes_at_most_one_qube() {
        assert_eq!(
            list_with("qube work\n", "qube work\nqube other\n"),
            Err(SpecError::Repeated(5, "qube"))
        );
        assert_eq!(
            list_with("qube work\n", "qube work\nkeep daily 7\n"),
            Err(SpecError::WrongOp(5, "keep"))
        );
    }

    #[test]
    fn single_keys_given_twice_are_refused() {
        for line in [
            "op create\n",
            "repository ssh://borgbase/./repo\n",
            "state-device /dev/xvdj\n",
            "archive work-2026-11-29T18:00:00Z\n",
            "device /dev/xvdi\n",
            "compression zstd,3\n",
        ] {
            let key = line.split(' ').next().unwrap();
            assert!(
                matches!(replace(line, &format!("{line}{line}")), Err(SpecError::Repeated(_, k)) if k == key),
                "{key}"
            );
        }
        let text =
            String::from_utf8_lossy(&encode(&create())).replace("end\n", "key-file 1\nx\nend\n");
        assert_eq!(
            decode(&mut text.as_bytes()),
            // Line numbers count key lines only (a secret's bytes are no line): passphrase,
            // key-file, then the second key-file where `end` was.
            Err(SpecError::Repeated(line_of("passphrase") + 2, "key-file"))
        );
        let text =
            String::from_utf8_lossy(&encode(&create())).replace("end\n", "passphrase 1\nx\nend\n");
        assert!(matches!(
            decode(&mut text.as_bytes()),
            Err(SpecError::Repeated(_, "passphrase"))
        ));
    }

    #[test]
    fn lines_that_are_not_key_value_are_refused() {
        assert_eq!(
            replace("mode files\n", "modefiles\n"),
            Err(SpecError::Syntax(7))
        );
        assert_eq!(
            replace("mode files\n", "mode \u{e9}\n").unwrap_err(),
            SpecError::Invalid(7, "mode", "must be files or image".into())
        );
        let mut bytes = encode(&create());
        let at = bytes.windows(5).position(|w| w == b"files").unwrap();
        bytes[at] = 0xff;
        assert_eq!(decode(&mut &bytes[..]), Err(SpecError::Syntax(7)));
        assert_eq!(
            replace("op create\n", "op delete\n"),
            Err(SpecError::Invalid(
                2,
                "op",
                "must be create, prune, list, restore, info, check, spot, export or init".into()
            ))
        );
        assert!(matches!(
            replace("state-device /dev/xvdj\n", "state-device /dev/xvda\n"),
            Err(SpecError::Invalid(4, "state-device", _))
        ));
        assert_eq!(decode(&mut &b""[..]), Err(SpecError::Truncated));
        assert_eq!(
            decode(&mut &b"qubes-borg-job/1"[..]),
            Err(SpecError::Truncated),
            "a line without its newline"
        );
    }

    #[test]
    fn a_line_of_4096_bytes_is_read_and_one_more_is_too_long() {
        let key = |len: usize| format!("frobnicate {}", "a".repeat(len - 11));
        let line = key(MAX_LINE);
        assert_eq!(line.len(), MAX_LINE);
        assert_eq!(
            replace("mode files\n", &format!("{line}\n")),
            Err(SpecError::UnknownKey(7, "frobnicate".into()))
        );
        assert_eq!(
            replace("mode files\n", &format!("{}\n", key(MAX_LINE + 1))),
            Err(SpecError::TooLong)
        );
    }

    #[test]
    fn read_is_retried_when_interrupted() {
        struct Interrupting<'a>(&'a [u8], bool);
        impl Read for Interrupting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
                self.0.read(buf)
            }
        }
        let bytes = encode(&create());
        assert_eq!(decode(&mut Interrupting(&bytes, false)).unwrap(), create());
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        assert_eq!(
            decode(&mut Failing),
            Err(SpecError::Read("disk on fire".into()))
        );
    }

    #[test]
    fn secrets_up_to_64_kib_are_accepted() {
        round_trips(&Spec {
            passphrase: vec![b'\n'; 64 * 1024],
            key_file: Some(vec![0; 64 * 1024]),
            ..create()
        })
        .unwrap();
        round_trips(&Spec {
            passphrase: vec![],
            ..create()
        })
        .unwrap();
    }

    #[test]
    fn secret_lengths_are_up_to_9_digits() {
        let s = replace("passphrase 30\n", "passphrase 000000030\n").unwrap();
        assert_eq!(s.passphrase, create().passphrase);
        for bad in ["0000000030", "", "3O", "-30", "+30"] {
            assert_eq!(
                replace("passphrase 30\n", &format!("passphrase {bad}\n")),
                Err(SpecError::Invalid(
                    line_of("passphrase"),
                    "secret",
                    "length is not a number".into()
                )),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_not_followed_by_a_newline_is_refused() {
        assert_eq!(
            replace("passphrase 30\n", "passphrase 29\n"),
            Err(SpecError::Invalid(
                line_of("passphrase"),
                "secret",
                "not followed by a newline".into()
            ))
        );
    }

    #[test]
    fn excludes_are_limited_in_count_and_length() {
        let pats = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>();
        round_trips(&with_create(|c| c.excludes = pats(MAX_EXCLUDES))).unwrap();
        assert_eq!(
            round_trips(&with_create(|c| c.excludes = pats(MAX_EXCLUDES + 1))),
            Err(SpecError::TooLong)
        );
        round_trips(&with_create(|c| c.excludes = vec!["x".repeat(MAX_PATTERN)])).unwrap();
        assert_eq!(
            check_pattern(&"x".repeat(MAX_PATTERN + 1)),
            Err("must be 1 to 1024 bytes")
        );
        assert_eq!(check_pattern(""), Err("must be 1 to 1024 bytes"));
        assert_eq!(
            check_pattern("a\u{85}b"),
            Err("contains a control character")
        );
    }

    #[test]
    fn settings_are_limited_in_count_length_and_total_size() {
        round_trips(&with_create(|c| {
            c.settings = vec!["s".into(); MAX_SETTINGS]
        }))
        .unwrap();
        assert_eq!(
            round_trips(&with_create(
                |c| c.settings = vec!["s".into(); MAX_SETTINGS + 1]
            )),
            Err(SpecError::TooLong)
        );
        // 15 lines of 1023 bytes + newline, then one of 1024: exactly MAX_SETTINGS_BYTES.
        let mut full = vec!["s".repeat(1023); 15];
        full.push("s".repeat(1024));
        round_trips(&with_create(|c| c.settings = full)).unwrap();
        // 16 lines of 1023 bytes + newline fill it; one more byte is too much.
        let mut over = vec!["s".repeat(1023); 16];
        over.push("s".into());
        assert_eq!(
            round_trips(&with_create(|c| c.settings = over)),
            Err(SpecError::TooLong)
        );
        assert_eq!(check_setting(&"s".repeat(1024)), Ok(()));
        for bad in [
            "s".repeat(1025),
            String::new(),
            "a\tb".into(),
            "\u{e9}".into(),
        ] {
            assert_eq!(
                check_setting(&bad),
                Err("must be 1 to 1024 printable ASCII bytes"),
                "{bad:?}"
            );
        }
        assert_eq!(check_setting(" ~"), Ok(()));
    }

    #[test]
    fn names_and_urls_are_bounded() {
        assert_eq!(check_qube(&"q".repeat(31)), Ok(()));
        assert_eq!(
            check_qube(&"q".repeat(32)),
            Err("is longer than 31 characters")
        );
        let repo = |len: usize| format!("ssh://b/{}", "r".repeat(len - 8));
        assert_eq!(check_repository(&repo(MAX_REPOSITORY)), Ok(()));
        assert_eq!(
            check_repository(&repo(MAX_REPOSITORY + 1)),
            Err("is too long")
        );
        assert_eq!(
            check_repository("ssh://b/"),
            Err("path may hold only A-Z a-z 0-9 . _ / ~ -")
        );
        assert_eq!(check_repository("ssh://b"), Err("must be ssh://NAME/PATH"));
        assert_eq!(check_repository("ssh://b/~user/a_b-c.d"), Ok(()));
        assert_eq!(check_archive(&"a".repeat(200)), Ok(()));
        assert!(check_archive(&"a".repeat(201)).is_err());
        assert_eq!(check_archive("a._:+-Z9"), Ok(()));
        assert_eq!(check_compression(&"z".repeat(32)), Ok(()));
        assert!(check_compression(&"z".repeat(33)).is_err());
        assert_eq!(check_compression("auto,zstd,10"), Ok(()));
        assert!(check_compression("Zstd").is_err());
        assert_eq!(check_device("/dev/xvdi"), Ok(()));
        assert_eq!(check_device("/dev/xvdz"), Ok(()));
        assert!(check_device("/dev/xvd{").is_err());
        assert!(check_device("/dex/xvdi").is_err());
    }

    #[test]
    fn errors_say_where_and_what() {
        for (e, want) in [
            (
                SpecError::Read("gone".into()),
                "cannot read the job request: gone",
            ),
            (
                SpecError::TooLong,
                "job request: a line or value is too long",
            ),
            (SpecError::Truncated, "job request: ends before 'end'"),
            (SpecError::Syntax(3), "job request line 3: not 'KEY VALUE'"),
            (
                SpecError::UnknownKey(4, "a\nb".into()),
                "job request line 4: unknown key 'a\\nb'",
            ),
            (
                SpecError::Repeated(5, "mode"),
                "job request line 5: 'mode' given twice",
            ),
            (
                SpecError::Invalid(6, "qube", "is empty".into()),
                "job request line 6: qube: is empty",
            ),
            (SpecError::Missing("op"), "job request: 'op' missing"),
            (
                SpecError::WrongOp(7, "keep"),
                "job request line 7: 'keep' does not belong to this op",
            ),
        ] {
            assert_eq!(e.to_string(), want);
        }
        assert!(SpecError::BadMagic.to_string().contains(MAGIC));
    }

    /// One valid request of each op (in OP_KEYS' order), each holding every key its op takes:
    /// repeatable ones once, a key file where the op takes one.
    fn every_op() -> Vec<Spec> {
        let archive = || "work-2026-11-29T18:00:00Z".to_string();
        let spec = |op| Spec {
            repository: "ssh://borgbase/./repo".into(),
            state_device: Some("/dev/xvdj".into()),
            passphrase: b"p".to_vec(),
            key_file: Some(b"k".to_vec()),
            op,
        };
        vec![
            spec(Op::Create(Create {
                qube: "work".into(),
                archive: archive(),
                mode: Mode::Files,
                device: "/dev/xvdi".into(),
                compression: "lz4".into(),
                excludes: vec!["x".into()],
                settings: vec!["s".into()],
                lock_wait: Some(5),
            })),
            spec(Op::Prune(Prune {
                qubes: vec!["work".into()],
                keep: Keep {
                    within: None,
                    counts: vec![(KeepKind::Daily, 7)],
                },
                lock_wait: Some(5),
            })),
            spec(Op::List(List {
                qube: Some("work".into()),
            })),
            spec(Op::Restore(Restore {
                archive: archive(),
                mode: Mode::Files,
                device: "/dev/xvdi".into(),
            })),
            spec(Op::Info(Info { archive: archive() })),
            spec(Op::Check(Check { verify_data: true })),
            spec(Op::Spot(Spot {
                archive: archive(),
                device: "/dev/xvdi".into(),
                count: 3,
            })),
            spec(Op::Export(Export {
                archive: archive(),
                paths: vec!["home".into()],
            })),
            Spec {
                key_file: None,
                ..spec(Op::Init(Init {
                    encryption: Encryption::RepokeyBlake2,
                }))
            },
        ]
    }

    /// A valid line of each key (a secret with its bytes), with a value no request of
    /// `every_op()` holds.
    const OTHER: &[(&str, &str)] = &[
        ("op", "op list"),
        ("repository", "repository ssh://other/./repo"),
        ("state-device", "state-device /dev/xvdk"),
        ("passphrase", "passphrase 1\nq"),
        ("key-file", "key-file 1\nl"),
        ("qube", "qube other"),
        ("archive", "archive other-2026-11-29T18:00:00Z"),
        ("mode", "mode image"),
        ("device", "device /dev/xvdl"),
        ("compression", "compression none"),
        ("exclude", "exclude y"),
        ("setting", "setting t"),
        ("keep", "keep weekly 4"),
        ("lock-wait", "lock-wait 9"),
        ("verify-data", "verify-data yes"),
        ("spot", "spot 4"),
        ("path", "path rw"),
        ("encryption", "encryption keyfile-blake2"),
    ];

    fn other(key: &str) -> String {
        let (_, line) = OTHER.iter().find(|(k, _)| *k == key).expect(key);
        line.to_string()
    }

    /// A request's entries: its key lines, a secret's bytes joined to its line, without the
    /// first line and `end`. Entry `i` is on line `i + 2` (a secret's bytes are no line).
    fn entries(s: &Spec) -> Vec<String> {
        let text = String::from_utf8(encode(s)).unwrap();
        let mut lines = text.lines().skip(1);
        let mut out = Vec::new();
        while let Some(l) = lines.next().filter(|l| *l != "end") {
            if l.starts_with("passphrase ") || l.starts_with("key-file ") {
                out.push(format!("{l}\n{}", lines.next().unwrap()));
            } else {
                out.push(l.to_string());
            }
        }
        out
    }

    fn decode_entries(e: &[String]) -> Result<Spec, SpecError> {
        let text = format!("{MAGIC}\n{}\nend\n", e.join("\n"));
        decode(&mut text.as_bytes())
    }

    fn key_of(entry: &str) -> &str {
        entry.split(' ').next().unwrap()
    }

    /// Each op's sample request and its row of OP_KEYS.
    fn every_op_and_its_keys() -> Vec<(Spec, &'static str, Keys)> {
        let ops = every_op();
        assert_eq!(ops.len(), OP_KEYS.len());
        ops.into_iter()
            .zip(OP_KEYS)
            .map(|(s, (name, keys))| {
                assert!(entries(&s).contains(&format!("op {name}")), "{name}");
                (s, *name, *keys)
            })
            .collect()
    }

    #[test]
    fn every_op_of_the_table_has_a_request_that_round_trips() {
        for (s, name, _) in every_op_and_its_keys() {
            assert_eq!(decode_entries(&entries(&s)), Ok(s), "{name}");
        }
        assert_eq!(
            OTHER.iter().map(|(k, _)| known_key(k)).collect::<Vec<_>>(),
            OTHER.iter().map(|(k, _)| Some(*k)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn each_op_refuses_every_key_it_does_not_take_on_the_keys_line() {
        for (s, name, keys) in every_op_and_its_keys() {
            let mut refused = 0;
            for (key, _) in OTHER {
                if COMMON_KEYS.contains(key) || keys.iter().any(|(k, _)| k == key) {
                    continue;
                }
                let mut e = entries(&s);
                e.push(other(key));
                assert_eq!(
                    decode_entries(&e),
                    Err(SpecError::WrongOp(e.len() + 1, key)),
                    "{name} {key}"
                );
                refused += 1;
            }
            assert_eq!(
                refused,
                OTHER.len() - COMMON_KEYS.len() - keys.len(),
                "{name}"
            );
        }
    }

    #[test]
    fn each_op_refuses_a_request_without_a_key_it_needs() {
        for (s, name, keys) in every_op_and_its_keys() {
            let needed = ["op", "repository", "passphrase"].into_iter().chain(
                keys.iter()
                    .filter(|(_, (least, _))| *least > 0)
                    .map(|(k, _)| *k),
            );
            for key in needed {
                let e: Vec<String> = entries(&s)
                    .into_iter()
                    .filter(|l| key_of(l) != key)
                    .collect();
                assert_eq!(
                    decode_entries(&e),
                    Err(SpecError::Missing(key)),
                    "{name} {key}"
                );
            }
        }
    }

    #[test]
    fn each_op_refuses_a_single_key_given_twice_and_takes_a_repeatable_one_again() {
        for (s, name, keys) in every_op_and_its_keys() {
            let common = COMMON_KEYS.iter().map(|k| (*k, ONE));
            for (key, (_, most)) in common.chain(keys.iter().copied()) {
                let mut e = entries(&s);
                if most > 1 {
                    e.push(other(key));
                    assert!(decode_entries(&e).is_ok(), "{name} {key}");
                    continue;
                }
                while e.iter().filter(|l| key_of(l) == key).count() < 2 {
                    e.push(other(key));
                }
                assert_eq!(
                    decode_entries(&e),
                    Err(SpecError::Repeated(e.len() + 1, key)),
                    "{name} {key}"
                );
            }
        }
    }
}
