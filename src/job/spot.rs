//! sys-backup-mnt: the spot check's parts that need no borg: picking random files of an archive
//! listing (reservoir sampling with getrandom, bounded memory), opening the same path on the
//! mounted volume without following symlinks, comparing, and the result text sent to dom0.
//!
//! A file is `matched` when its content and mode equal the archive's. When they differ, the
//! volume's ctime (which every write, chmod or touch sets) says why: a ctime other than the
//! archived one means the file was `changed` since the archive (normal use of the qube); the
//! same ctime means nothing changed the file through the filesystem, so the difference is a
//! `mismatch` (the archive or the volume does not hold what it should). A file gone from the
//! volume, or no longer a regular file, counts as changed. Times are compared to the second.
//!
//! Result text (inside `data` lines; dom0 parses it strictly):
//! ```text
//! checked N
//! matched N
//! changed-count N
//! mismatch-count N
//! changed PATH            at most MAX_NAMED lines of each kind, PATH printable ASCII
//! mismatch WHY PATH       WHY: content | mode | unreadable (borg could not extract it)
//! ```

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode as StatMode;

use super::progress::sanitize;

/// Most paths of each kind named in the result.
pub const MAX_NAMED: usize = 20;
/// Longest path (as sent) in the result.
pub const MAX_PATH_SHOWN: usize = 200;
/// Longest path taken from the listing (longer entries are not sampled).
pub const MAX_PATH: usize = 4096;

/// One regular file of the archive listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// `-rw-r--r--` as borg prints it.
    pub mode: String,
    /// Seconds since the epoch (UTC).
    pub mtime: i64,
    pub ctime: i64,
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` (UTC) to seconds since the epoch.
pub fn parse_iso(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

/// One record of `borg list --format '{type} {mode} {isomtime} {isoctime} {path}'` (without
/// its NUL): a regular file, or None for anything else.
pub fn parse_record(rec: &[u8]) -> Option<Entry> {
    let s = std::str::from_utf8(rec).ok()?;
    let mut it = s.splitn(5, ' ');
    let (t, mode, m, c, path) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    if t != "-" || mode.len() != 10 || path.is_empty() || path.len() > MAX_PATH {
        return None;
    }
    Some(Entry {
        path: path.to_string(),
        mode: mode.to_string(),
        mtime: parse_iso(m)?,
        ctime: parse_iso(c)?,
    })
}

/// Keeps a uniform random choice of at most `k` of the items pushed.
pub struct Reservoir<T> {
    k: usize,
    seen: u64,
    pub items: Vec<T>,
}

impl<T> Reservoir<T> {
    pub fn new(k: usize) -> Self {
        Reservoir {
            k,
            seen: 0,
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, x: T) {
        self.seen += 1;
        if self.items.len() < self.k {
            self.items.push(x);
            return;
        }
        let j = random_below(self.seen);
        if (j as usize) < self.k {
            self.items[j as usize] = x;
        }
    }
}

/// A random number in 0..n (n > 0), from getrandom. If getrandom fails the choice falls back
/// to 0 (the first slot), which biases the sample but never breaks the check.
fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0;
    }
    // The modulo bias is below 2^-40 for listings of fewer than 2^24 files.
    u64::from_le_bytes(b) % n
}

/// `st_mode` as `ls -l` shows it (what borg's `{mode}` prints).
pub fn mode_string(m: u32) -> String {
    let kind = match m & 0o170000 {
        0o100000 => '-',
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '?',
    };
    let mut s = String::from(kind);
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: bool, sp: bool, on: char, off: char| match (x, sp) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(m & 0o100 != 0, m & 0o4000 != 0, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(m & 0o010 != 0, m & 0o2000 != 0, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(m & 0o001 != 0, m & 0o1000 != 0, 't', 'T'));
    s
}

/// Opens `rel` below `root` without following any symlink (each directory with O_NOFOLLOW,
/// the file too): a hostile volume cannot point the comparison outside itself.
pub fn open_beneath(root: &str, rel: &str) -> Result<File, String> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let mut dir: OwnedFd = File::open(root).map_err(|e| e.to_string())?.into();
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err("empty path".into());
    };
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err("path leaves the volume".into());
    }
    for p in dirs {
        dir = openat(&dir, *p, flags | OFlag::O_DIRECTORY, StatMode::empty())
            .map_err(|e| e.desc().to_string())?;
    }
    // O_NONBLOCK: a fifo in place of the file must not block the job.
    let f = openat(&dir, *last, flags | OFlag::O_NONBLOCK, StatMode::empty())
        .map_err(|e| e.desc().to_string())?;
    Ok(File::from(f))
}

/// How one file compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Matched,
    Changed,
    /// content | mode
    Mismatch(&'static str),
}

/// Compares the archived content (read from `archived`) and `e`'s mode and times with the
/// volume's file `f` (None: gone or unreadable). Reads `archived` to its end in any case.
pub fn compare(e: &Entry, f: Option<File>, archived: &mut dyn Read) -> Verdict {
    let Some(mut f) = f else {
        drain(archived);
        return Verdict::Changed;
    };
    let meta = match f.metadata() {
        Ok(m) if m.file_type().is_file() => m,
        _ => {
            drain(archived);
            return Verdict::Changed;
        }
    };
    let same_content = same_bytes(archived, &mut f);
    let same_mode = mode_string(meta.mode()) == e.mode;
    if same_content && same_mode {
        return Verdict::Matched;
    }
    if meta.ctime() != e.ctime {
        return Verdict::Changed;
    }
    Verdict::Mismatch(if same_content { "mode" } else { "content" })
}

fn drain(r: &mut dyn Read) {
    let _ = std::io::copy(r, &mut std::io::sink());
}

/// True when both streams hold the same bytes; `a` is always read to its end.
fn same_bytes(a: &mut dyn Read, b: &mut dyn Read) -> bool {
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut same = true;
    loop {
        let n = match a.read(&mut ba) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        if same {
            same = b.read_exact(&mut bb[..n]).is_ok() && ba[..n] == bb[..n];
        }
    }
    // The volume's file must end where the archived one ends.
    same && matches!(b.read(&mut bb[..1]), Ok(0))
}

/// The counts and names of one spot check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub checked: u64,
    pub matched: u64,
    pub changed: Vec<String>,
    pub mismatched: Vec<(&'static str, String)>,
}

impl Tally {
    pub fn add(&mut self, path: &str, v: Verdict) {
        self.checked += 1;
        match v {
            Verdict::Matched => self.matched += 1,
            Verdict::Changed => self.changed.push(path.to_string()),
            Verdict::Mismatch(w) => self.mismatched.push((w, path.to_string())),
        }
    }

    /// The result text (see the top of this file).
    pub fn text(&self) -> String {
        let mut s = format!(
            "checked {}\nmatched {}\nchanged-count {}\nmismatch-count {}\n",
            self.checked,
            self.matched,
            self.changed.len(),
            self.mismatched.len()
        );
        for p in self.changed.iter().take(MAX_NAMED) {
            s += &format!("changed {}\n", sanitize(p.as_bytes(), MAX_PATH_SHOWN));
        }
        for (w, p) in self.mismatched.iter().take(MAX_NAMED) {
            s += &format!("mismatch {w} {}\n", sanitize(p.as_bytes(), MAX_PATH_SHOWN));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_are_read_as_utc_seconds() {
        assert_eq!(parse_iso("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_iso("2026-11-29T21:46:05.682448"), Some(1_795_988_765));
        assert_eq!(parse_iso("2000-03-01T00:00:01"), Some(951_868_801));
        assert_eq!(parse_iso("2026-13-29T21:46:05"), None);
        assert_eq!(parse_iso("2026-11-29 21:46:05"), None);
        assert_eq!(parse_iso("+026-11-29T21:46:05"), None);
    }

    #[test]
    fn only_regular_files_with_sane_fields_are_sampled() {
        let e = parse_record(
            b"- -rw-r--r-- 2026-11-29T21:46:05.682448 2026-11-29T21:46:06.000001 home/user/a b",
        )
        .unwrap();
        assert_eq!(e.path, "home/user/a b");
        assert_eq!(e.mode, "-rw-r--r--");
        assert_eq!(e.ctime - e.mtime, 1);
        for bad in [
            &b"d drwxr-xr-x 2026-11-29T21:46:05 2026-11-29T21:46:05 home"[..],
            b"l lrwxrwxrwx 2026-11-29T21:46:05 2026-11-29T21:46:05 x",
            b"- -rw-r--r-- 2026-11-29T21:46:05 2026-11-29T21:46:05 ",
            b"- -rw-r--r-- yesterday 2026-11-29T21:46:05 x",
            b"- -rw-r--r--",
            b"- -rw-r--r-- 2026-11-29T21:46:05 2026-11-29T21:46:05 \xff",
        ] {
            assert_eq!(
                parse_record(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn modes_print_like_ls() {
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
    }

    #[test]
    fn the_reservoir_keeps_k_items_and_every_item_can_be_chosen() {
        let mut hits = [0u32; 10];
        for _ in 0..400 {
            let mut r = Reservoir::new(3);
            for i in 0..10 {
                r.push(i);
            }
            assert_eq!(r.items.len(), 3);
            for i in r.items {
                hits[i] += 1;
            }
        }
        // Each item is kept with probability 3/10: 120 of 400 expected.
        assert!(hits.iter().all(|&h| (50..200).contains(&h)), "{hits:?}");
        let mut small = Reservoir::new(5);
        small.push(1);
        assert_eq!(small.items, [1]);
    }

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("qb-spot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("home/user")).unwrap();
        d
    }

    fn entry_for(path: &std::path::Path, rel: &str) -> Entry {
        let m = std::fs::metadata(path).unwrap();
        Entry {
            path: rel.into(),
            mode: mode_string(m.mode()),
            mtime: m.mtime(),
            ctime: m.ctime(),
        }
    }

    #[test]
    fn verdicts_tell_changed_files_from_mismatches() {
        let d = tmpdir("verdict");
        let root = d.to_str().unwrap();
        let p = d.join("home/user/f");
        std::fs::write(&p, b"hello").unwrap();
        let e = entry_for(&p, "home/user/f");
        let open = || open_beneath(root, "home/user/f").ok();
        assert_eq!(compare(&e, open(), &mut &b"hello"[..]), Verdict::Matched);
        // Same ctime, other bytes: the archive and the volume disagree about an unchanged file.
        assert_eq!(
            compare(&e, open(), &mut &b"hellO"[..]),
            Verdict::Mismatch("content")
        );
        assert_eq!(
            compare(&e, open(), &mut &b"hello!"[..]),
            Verdict::Mismatch("content")
        );
        assert_eq!(
            compare(&e, open(), &mut &b"hell"[..]),
            Verdict::Mismatch("content")
        );
        let mut other_mode = e.clone();
        other_mode.mode = "-rwxr--r--".into();
        assert_eq!(
            compare(&other_mode, open(), &mut &b"hello"[..]),
            Verdict::Mismatch("mode")
        );
        // A ctime other than the archived one: changed since the archive.
        let mut older = e.clone();
        older.ctime -= 100;
        assert_eq!(
            compare(&older, open(), &mut &b"hellO"[..]),
            Verdict::Changed
        );
        assert_eq!(compare(&e, None, &mut &b"x"[..]), Verdict::Changed);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_and_dot_dot_on_the_volume_are_not_followed() {
        let d = tmpdir("links");
        let root = d.to_str().unwrap();
        std::fs::write(d.join("home/user/real"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("home/user/f")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("home/etc")).unwrap();
        assert!(open_beneath(root, "home/user/real").is_ok());
        assert!(open_beneath(root, "home/user/f").is_err());
        assert!(open_beneath(root, "home/etc/passwd").is_err());
        assert!(open_beneath(root, "home/../../etc/passwd").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_result_names_are_bounded_and_printable() {
        let mut t = Tally::default();
        for i in 0..(MAX_NAMED + 5) {
            t.add(&format!("a\x1b[2J{i}\n"), Verdict::Mismatch("content"));
        }
        t.add("ok", Verdict::Matched);
        let s = t.text();
        assert!(s.starts_with("checked 26\nmatched 1\nchanged-count 0\nmismatch-count 25\n"));
        assert_eq!(
            s.lines().filter(|l| l.starts_with("mismatch ")).count(),
            MAX_NAMED
        );
        assert!(s.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
    }
}
