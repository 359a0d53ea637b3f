//! dom0 and sys-backup-mnt: the request dom0 sends to one `qubes-borg.BackupJob` run, as data
//! on the job's stdin (never a command line built from names).
//!
//! Format (version 1): text lines `KEY VALUE`, the first `qubes-borg-job/1`, the last `end`.
//! Secrets are length-prefixed raw bytes: `passphrase N`, newline, N bytes, newline (the same
//! for `key-file N`). Every key, value, count and the whole request are bounded; unknown keys,
//! repeated single keys, missing keys and values outside their allowlist are refused.
//!
//! ```text
//! qubes-borg-job/1
//! op create                      create | prune | list | restore | init
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
//! (list: at most one `qube`, no other op keys: the archives of that qube, or of all qubes)
//! (restore: `archive`, `mode`, `device` (attached read-write): files mode makes a fresh ext4 on
//!  the device and extracts into it; image mode writes the archived image to the device)
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
}

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

/// Reads and checks one request. Reads nothing past `end`.
pub fn decode<R: Read>(r: &mut R) -> Result<Spec, SpecError> {
    let first = read_line(r)?.ok_or(SpecError::Truncated)?;
    if first != MAGIC.as_bytes() {
        return Err(SpecError::BadMagic);
    }
    let (mut op, mut repo, mut state, mut archive, mut mode, mut device, mut compression) =
        (None, None, None, None, None, None, None);
    let (mut passphrase, mut key_file) = (None, None);
    let mut encryption = None;
    let mut qubes: Vec<String> = Vec::new();
    let mut excludes = Vec::new();
    let mut settings: Vec<String> = Vec::new();
    let mut keep = Keep::default();
    let mut keep_lines = Vec::new();
    let mut n = 1;
    loop {
        n += 1;
        let raw = read_line(r)?.ok_or(SpecError::Truncated)?;
        let line = String::from_utf8(raw).map_err(|_| SpecError::Syntax(n))?;
        if line == "end" {
            break;
        }
        let (key, value) = line.split_once(' ').ok_or(SpecError::Syntax(n))?;
        match key {
            "op" => {
                let v = match value {
                    "create" => "create",
                    "prune" => "prune",
                    "list" => "list",
                    "restore" => "restore",
                    "init" => "init",
                    _ => {
                        return Err(SpecError::Invalid(
                            n,
                            "op",
                            "must be create, prune, list, restore or init".into(),
                        ))
                    }
                };
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
                keep_lines.push(n);
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
    let op = op.ok_or(SpecError::Missing("op"))?;
    if op != "init" && encryption.is_some() {
        return Err(SpecError::WrongOp(0, "encryption"));
    }
    let op = match op {
        "init" => init_op(
            encryption,
            key_file.is_some(),
            keep_lines.is_empty()
                && qubes.is_empty()
                && archive.is_none()
                && mode.is_none()
                && device.is_none()
                && compression.is_none()
                && excludes.is_empty()
                && settings.is_empty(),
        )?,
        "create" => {
            if let Some(&l) = keep_lines.first() {
                return Err(SpecError::WrongOp(l, "keep"));
            }
            if qubes.len() != 1 {
                return Err(SpecError::Missing("qube (exactly one)"));
            }
            Op::Create(Create {
                qube: qubes.remove(0),
                archive: archive.ok_or(SpecError::Missing("archive"))?,
                mode: mode.ok_or(SpecError::Missing("mode"))?,
                device: device.ok_or(SpecError::Missing("device"))?,
                compression: compression.ok_or(SpecError::Missing("compression"))?,
                excludes,
                settings,
            })
        }
        "restore" => {
            if let Some(&l) = keep_lines.first() {
                return Err(SpecError::WrongOp(l, "keep"));
            }
            if compression.is_some() || !excludes.is_empty() || !settings.is_empty() {
                return Err(SpecError::WrongOp(0, "compression/exclude/setting"));
            }
            if !qubes.is_empty() {
                return Err(SpecError::WrongOp(0, "qube"));
            }
            Op::Restore(Restore {
                archive: archive.ok_or(SpecError::Missing("archive"))?,
                mode: mode.ok_or(SpecError::Missing("mode"))?,
                device: device.ok_or(SpecError::Missing("device"))?,
            })
        }
        "list" => {
            if let Some(&l) = keep_lines.first() {
                return Err(SpecError::WrongOp(l, "keep"));
            }
            if archive.is_some()
                || mode.is_some()
                || device.is_some()
                || compression.is_some()
                || !excludes.is_empty()
                || !settings.is_empty()
            {
                return Err(SpecError::WrongOp(
                    0,
                    "archive/mode/device/compression/exclude/setting",
                ));
            }
            if qubes.len() > 1 {
                return Err(SpecError::Repeated(0, "qube"));
            }
            Op::List(List { qube: qubes.pop() })
        }
        _ => {
            if archive.is_some()
                || mode.is_some()
                || device.is_some()
                || compression.is_some()
                || !excludes.is_empty()
                || !settings.is_empty()
            {
                return Err(SpecError::WrongOp(
                    0,
                    "archive/mode/device/compression/exclude/setting",
                ));
            }
            if keep.is_empty() {
                return Err(SpecError::Missing("keep"));
            }
            if qubes.is_empty() {
                return Err(SpecError::Missing("qube"));
            }
            Op::Prune(Prune { qubes, keep })
        }
    };
    Ok(Spec {
        repository,
        state_device: state,
        passphrase,
        key_file,
        op,
    })
}

/// The `init` op: `encryption` required; no key file (init makes the key) and no other op key.
fn init_op(
    encryption: Option<Encryption>,
    key_file: bool,
    no_other: bool,
) -> Result<Op, SpecError> {
    if key_file {
        return Err(SpecError::WrongOp(0, "key-file"));
    }
    if !no_other {
        return Err(SpecError::WrongOp(
            0,
            "qube/keep/archive/mode/device/compression/exclude/setting",
        ));
    }
    Ok(Op::Init(Init {
        encryption: encryption.ok_or(SpecError::Missing("encryption"))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(
            replace("qube work", "qube -rf"),
            Err(SpecError::Invalid(_, "qube", _))
        ));
        assert!(matches!(
            replace("qube work", "qube ../x"),
            Err(SpecError::Invalid(_, "qube", _))
        ));
        assert!(matches!(
            replace("archive work-", "archive work/"),
            Err(SpecError::Invalid(_, "archive", _))
        ));
        assert!(matches!(
            replace("ssh://borgbase/./repo", "ssh://bo rg/x"),
            Err(SpecError::Invalid(_, "repository", _))
        ));
        assert!(matches!(
            replace("ssh://borgbase/./repo", "/local/repo"),
            Err(SpecError::Invalid(_, "repository", _))
        ));
        assert!(matches!(
            replace("compression zstd,3", "compression zstd;rm"),
            Err(SpecError::Invalid(_, "compression", _))
        ));
        assert!(matches!(
            replace("pp:rw/tmp x", "a\u{1b}[2J"),
            Err(SpecError::Invalid(_, "exclude", _))
        ));
        assert!(matches!(
            replace("mode files", "mode tar"),
            Err(SpecError::Invalid(_, "mode", _))
        ));
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
            SpecError::WrongOp(0, "key-file")
        );
        let bad = text.replace("op init", "op list");
        assert_eq!(
            decode(&mut bad.as_bytes()).unwrap_err(),
            SpecError::WrongOp(0, "encryption")
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
    fn oversized_or_short_secrets_are_refused() {
        assert_eq!(
            replace(
                "passphrase 30\n",
                &format!("passphrase {}\n", MAX_SECRET + 1)
            ),
            Err(SpecError::TooLong)
        );
        assert_eq!(
            replace("passphrase 30\n", "passphrase 1000\n"),
            Err(SpecError::Truncated)
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let d = format!("{:?}", create());
        assert!(!d.contains("pass word") && !d.contains("BORG_KEY"), "{d}");
    }
}
