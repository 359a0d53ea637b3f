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

    /// Days from 1970-01-01 to y-m-d counted one day at a time (the reference for parse_iso).
    fn civil_dates(from: i64, to: i64) -> Vec<(i64, i64, i64, i64)> {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let len = |y: i64, m: i64| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut days: i64 = (from..1970).map(|y| if leap(y) { 366 } else { 365 }).sum();
        days = -days;
        let mut out = Vec::new();
        for y in from..to {
            for m in 1..=12 {
                for d in 1..=len(y, m) {
                    out.push((y, m, d, days));
                    days += 1;
                }
            }
        }
        out
    }

    #[test]
    fn iso_dates_agree_with_counting_days_one_by_one() {
        // every day of the years around a century or era change, every 97th day between
        let around = [
            1899, 1900, 1901, 1969, 1970, 1999, 2000, 2001, 2099, 2100, 2399, 2400,
        ];
        let all = civil_dates(1896, 2404).into_iter().enumerate();
        for (i, (y, m, d, days)) in all.filter(|(i, (y, ..))| i % 97 == 0 || around.contains(y)) {
            let i = i as i64;
            let (hh, mm, ss) = (i % 24, (i * 7) % 60, (i * 13) % 61);
            let s = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
            assert_eq!(
                parse_iso(&s),
                Some(days * 86400 + hh * 3600 + mm * 60 + ss),
                "{s}"
            );
        }
    }

    #[test]
    fn iso_times_out_of_range_or_malformed_are_refused() {
        assert_eq!(parse_iso("2026-12-31T23:59:60"), Some(1_798_761_600));
        for bad in [
            "2026-00-29T21:46:05",
            "2026-11-00T21:46:05",
            "2026-11-32T21:46:05",
            "2026-11-29T24:46:05",
            "2026-11-29T21:60:05",
            "2026-11-29T21:46:61",
            "2026x11-29T21:46:05",
            "2026-11x29T21:46:05",
            "2026-11-29T21x46:05",
            "2026-11-29T21:46:0",
            "2026-11-29",
            "",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_with_a_bad_mode_or_an_overlong_path_are_not_sampled() {
        let rec = |mode: &str, path: &str| {
            parse_record(
                format!("- {mode} 2026-11-29T21:46:05 2026-11-29T21:46:05 {path}").as_bytes(),
            )
        };
        assert_eq!(rec("-rw-r--r-", "a"), None);
        assert_eq!(rec("-rw-r--r--x", "a"), None);
        assert_eq!(rec("-rw-r--r--", &"a".repeat(MAX_PATH + 1)), None);
        assert_eq!(
            rec("-rw-r--r--", &"a".repeat(MAX_PATH)).unwrap().path.len(),
            MAX_PATH
        );
        assert_eq!(rec("-rw-r--r--", "a").unwrap().ctime, 1_795_988_765);
    }

    #[test]
    fn every_file_type_and_special_bit_prints_like_ls() {
        for (m, s) in [
            (0o120777, "lrwxrwxrwx"),
            (0o020620, "crw--w----"),
            (0o060660, "brw-rw----"),
            (0o010644, "prw-r--r--"),
            (0o140755, "srwxr-xr-x"),
            (0o000644, "?rw-r--r--"),
            (0o104644, "-rwSr--r--"),
            (0o102755, "-rwxr-sr-x"),
            (0o101644, "-rw-r--r-T"),
            (0o100000, "----------"),
        ] {
            assert_eq!(mode_string(m), s, "{m:o}");
        }
    }

    #[test]
    fn dot_and_dot_dot_components_are_refused_before_any_open() {
        let d = tmpdir("dots");
        let root = d.to_str().unwrap();
        std::fs::write(d.join("home/user/real"), b"x").unwrap();
        for p in ["home/./user/real", "home/user/../user/real"] {
            assert_eq!(
                open_beneath(root, p).err().unwrap(),
                "path leaves the volume",
                "{p}"
            );
        }
        assert_eq!(open_beneath(root, "//").err().unwrap(), "empty path");
        assert!(open_beneath(root, "/home//user/real").is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_in_place_of_the_file_is_changed_and_the_archive_is_read_to_its_end() {
        let d = tmpdir("dir");
        let root = d.to_str().unwrap();
        // the directory's own mode and ctime: only its type differs from a regular file
        let e = entry_for(&d.join("home/user"), "home/user");
        let mut archived = &b"hello"[..];
        let f = open_beneath(root, "home/user").ok();
        assert!(f.is_some());
        assert_eq!(compare(&e, f, &mut archived), Verdict::Changed);
        assert!(archived.is_empty());
        let mut archived = &b"hello"[..];
        assert_eq!(compare(&e, None, &mut archived), Verdict::Changed);
        assert!(archived.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Yields `first` once, then `rest`.
    struct Flaky {
        first: Option<std::io::ErrorKind>,
        rest: &'static [u8],
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if let Some(k) = self.first.take() {
                return Err(k.into());
            }
            self.rest.read(buf)
        }
    }

    #[test]
    fn an_interrupted_read_is_retried_and_any_other_error_is_a_difference() {
        let mut a = Flaky {
            first: Some(std::io::ErrorKind::Interrupted),
            rest: b"hello",
        };
        assert!(same_bytes(&mut a, &mut &b"hello"[..]));
        let mut a = Flaky {
            first: Some(std::io::ErrorKind::Other),
            rest: b"hello",
        };
        assert!(!same_bytes(&mut a, &mut &b"hello"[..]));
    }

    #[test]
    fn the_volumes_file_is_opened_close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let d = tmpdir("cloexec");
        std::fs::write(d.join("home/user/real"), b"x").unwrap();
        let f = open_beneath(d.to_str().unwrap(), "home/user/real").unwrap();
        let fl = FdFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GETFD).unwrap());
        assert!(fl.contains(FdFlag::FD_CLOEXEC), "{fl:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
