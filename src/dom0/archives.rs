//! dom0: the archives of the repository, read from `borg info --json` output that the list job
//! sent from the disposable (hostile): every archive is checked against qubes-borg's own naming
//! (`QUBE-YYYY-MM-DDTHH:MM:SSZ`, QUBE a valid qube name), numbers are bounded, the comment (the
//! qube's settings, `metadata`) is bounded; anything else is left out and counted.

use super::display::human;
use super::json::{self, Value};
use crate::job::progress::MAX_NUMBER;
use crate::job::spec;

/// Longest archive comment accepted (the settings of one qube).
pub const MAX_COMMENT: usize = 16 * 1024;
/// Most archives accepted in one listing.
pub const MAX_ARCHIVES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub qube: String,
    /// `QUBE-YYYY-MM-DDTHH:MM:SSZ`
    pub name: String,
    /// `YYYY-MM-DDTHH:MM:SSZ` (UTC, from the name: when the backup was made)
    pub date: String,
    pub original: u64,
    pub compressed: u64,
    pub deduplicated: u64,
    pub files: u64,
    /// The archive's comment as borg returned it (parse it with `metadata::parse`).
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    /// Sorted by qube, then date.
    pub archives: Vec<Archive>,
    /// Entries left out because they did not pass the checks.
    pub ignored: usize,
}

/// `YYYY-MM-DDTHH:MM:SSZ` with digits where digits belong and plausible ranges.
pub fn check_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 20 {
        return false;
    }
    let shape = b"dddd-dd-ddTdd:dd:ddZ";
    if !b.iter().zip(shape).all(|(c, p)| {
        if *p == b'd' {
            c.is_ascii_digit()
        } else {
            c == p
        }
    }) {
        return false;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    (1..=12).contains(&n(5..7))
        && (1..=31).contains(&n(8..10))
        && n(11..13) <= 23
        && n(14..16) <= 59
        && n(17..19) <= 60
}

/// Splits `QUBE-YYYY-MM-DDTHH:MM:SSZ` into (QUBE, date), or None if it is not of that form.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.len() < 22 || !name.is_ascii() {
        return None;
    }
    let (q, rest) = name.split_at(name.len() - 21);
    let date = rest.strip_prefix('-')?;
    (spec::check_qube(q).is_ok() && check_date(date)).then_some((q, date))
}

fn archive(v: &Value, only: Option<&str>) -> Option<Archive> {
    let name = v.get("name")?.as_str()?;
    let (qube, date) = split_name(name)?;
    if only.is_some_and(|o| o != qube) {
        return None;
    }
    let stats = v.get("stats")?;
    let n = |k: &str| stats.get(k)?.as_u64(MAX_NUMBER);
    let comment = match v.get("comment") {
        None => String::new(),
        Some(c) => c.as_str()?.to_string(),
    };
    if comment.len() > MAX_COMMENT {
        return None;
    }
    Some(Archive {
        qube: qube.into(),
        name: name.into(),
        date: date.into(),
        original: n("original_size")?,
        compressed: n("compressed_size")?,
        deduplicated: n("deduplicated_size")?,
        files: n("nfiles")?,
        comment,
    })
}

/// Reads `borg info --json` output. `only`: keep only this qube's archives. Fails only when the
/// document as a whole is unusable; single bad entries are counted in `ignored`.
pub fn parse_info(untrusted_json: &[u8], only: Option<&str>) -> Result<Listing, String> {
    let v = json::parse(untrusted_json).map_err(|e| format!("borg info output: {e}"))?;
    let list = v
        .get("archives")
        .and_then(Value::as_array)
        .ok_or("borg info output: no archive list")?;
    if list.len() > MAX_ARCHIVES {
        return Err("borg info output: too many archives".into());
    }
    let mut out = Listing::default();
    for a in list {
        match archive(a, only) {
            Some(x) if !out.archives.iter().any(|y| y.name == x.name) => out.archives.push(x),
            _ => out.ignored += 1,
        }
    }
    out.archives
        .sort_by(|a, b| (&a.qube, &a.date).cmp(&(&b.qube, &b.date)));
    Ok(out)
}

/// The table `qvm-backup-borg list` prints (only checked values: no control characters).
pub fn table(l: &Listing) -> String {
    let mut s = format!(
        "{:<31} {:<20} {:>10} {:>12} {:>9}  {}\n",
        "QUBE", "DATE (UTC)", "ORIGINAL", "DEDUPLICATED", "FILES", "ARCHIVE"
    );
    for a in &l.archives {
        s += &format!(
            "{:<31} {:<20} {:>10} {:>12} {:>9}  {}\n",
            a.qube,
            a.date,
            human(a.original),
            human(a.deduplicated),
            a.files,
            a.name
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, extra: &str) -> String {
        format!(
            r#"{{"name": "{name}", "start": "2026-11-29T19:42:44.000000", "duration": 0.09,
               "limits": {{"max_archive_size": 2.4e-05}}, "comment": "class=AppVM\nlabel=red",
               "stats": {{"compressed_size": 46, "deduplicated_size": 523, "nfiles": 1,
               "original_size": 3000000{extra}}}}}"#
        )
    }

    fn doc(entries: &[String]) -> Vec<u8> {
        format!(
            r#"{{"archives": [{}], "encryption": {{"mode": "repokey"}}}}"#,
            entries.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn lists_archives_sorted_with_sizes_and_comment() {
        let d = doc(&[
            entry("work-2026-11-29T18:00:00Z", ""),
            entry("personal-2026-11-28T18:00:00Z", ""),
            entry("work-2026-11-28T18:00:00Z", ""),
        ]);
        let l = parse_info(&d, None).unwrap();
        let names: Vec<&str> = l.archives.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "personal-2026-11-28T18:00:00Z",
                "work-2026-11-28T18:00:00Z",
                "work-2026-11-29T18:00:00Z"
            ]
        );
        let a = &l.archives[2];
        assert_eq!(
            (a.qube.as_str(), a.date.as_str()),
            ("work", "2026-11-29T18:00:00Z")
        );
        assert_eq!((a.original, a.deduplicated, a.files), (3_000_000, 523, 1));
        assert_eq!(a.comment, "class=AppVM\nlabel=red");
        let t = table(&l);
        assert!(t.contains("work-2026-11-29T18:00:00Z"), "{t}");
        assert_eq!(t.lines().count(), 4);
    }

    #[test]
    fn only_the_asked_qubes_archives() {
        let d = doc(&[
            entry("work-2026-11-29T18:00:00Z", ""),
            entry("work-web-2026-11-29T18:00:00Z", ""),
        ]);
        let l = parse_info(&d, Some("work")).unwrap();
        assert_eq!(l.archives.len(), 1);
        assert_eq!(l.archives[0].name, "work-2026-11-29T18:00:00Z");
        assert_eq!(l.ignored, 1);
    }

    #[test]
    fn hostile_entries_are_left_out_and_counted() {
        let d = doc(&[
            entry("work-2026-11-29T18:00:00Z", ""),
            // control characters / terminal escapes in the name
            entry("wo\\u001b[2Jrk-2026-11-29T18:00:00Z", ""),
            entry("work\\n-2026-11-29T18:00:00Z", ""),
            // not our naming
            entry("-rf-2026-11-29T18:00:00Z", ""),
            entry("work-2026-13-29T18:00:00Z", ""),
            entry("work-2026-11-29 18:00:00Z", ""),
            entry("work", ""),
            entry(&format!("{}-2026-11-29T18:00:00Z", "a".repeat(40)), ""),
            // duplicate
            entry("work-2026-11-29T18:00:00Z", ""),
            // numbers: negative, fraction, beyond the bound, string
            r#"{"name": "a-2026-11-29T18:00:00Z", "stats": {"compressed_size": -1, "deduplicated_size": 1, "nfiles": 1, "original_size": 1}}"#.into(),
            r#"{"name": "b-2026-11-29T18:00:00Z", "stats": {"compressed_size": 1.5, "deduplicated_size": 1, "nfiles": 1, "original_size": 1}}"#.into(),
            r#"{"name": "c-2026-11-29T18:00:00Z", "stats": {"compressed_size": 1, "deduplicated_size": 1, "nfiles": 1, "original_size": 99999999999999999999}}"#.into(),
            r#"{"name": "d-2026-11-29T18:00:00Z", "stats": {"compressed_size": "1", "deduplicated_size": 1, "nfiles": 1, "original_size": 1}}"#.into(),
            r#"{"name": "e-2026-11-29T18:00:00Z"}"#.into(),
            r#"{"name": 5}"#.into(),
            r#""x""#.into(),
            // huge comment
            format!(r#"{{"name": "f-2026-11-29T18:00:00Z", "comment": "{}", "stats": {{"compressed_size": 1, "deduplicated_size": 1, "nfiles": 1, "original_size": 1}}}}"#, "x".repeat(MAX_COMMENT + 1)),
        ]);
        let l = parse_info(&d, None).unwrap();
        assert_eq!(l.archives.len(), 1, "{:?}", l.archives);
        assert_eq!(l.ignored, 16);
        assert!(table(&l)
            .chars()
            .all(|c| c == '\n' || (' '..='~').contains(&c)));
    }

    #[test]
    fn unusable_documents_fail_with_a_reason() {
        assert!(parse_info(b"", None).unwrap_err().contains("malformed"));
        assert!(parse_info(b"{\"archives\": 5}", None)
            .unwrap_err()
            .contains("no archive list"));
        assert!(parse_info(b"[1]", None).is_err());
    }

    #[test]
    fn each_date_field_is_checked_at_both_ends() {
        for ok in [
            "2026-01-01T00:00:00Z",
            "2026-12-31T23:59:60Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(check_date(ok), "{ok}");
        }
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T00:00:61Z",
            "2026-01-01T00:00:00ZZ",
            "2026-01-01T00:00:0Z",
            "2026-01-01 00:00:00Z",
            "2026/01/01T00:00:00Z",
            "2026-01-01T00-00:00Z",
            "2026-01-01T00:00:00z",
        ] {
            assert!(!check_date(bad), "{bad}");
        }
    }

    #[test]
    fn the_shortest_archive_name_is_a_one_letter_qube() {
        assert_eq!(
            split_name("a-2026-11-29T18:00:00Z"),
            Some(("a", "2026-11-29T18:00:00Z"))
        );
        assert_eq!(split_name("a2026-11-29T18:00:00Z"), None);
        assert_eq!(split_name("\u{e9}-2026-11-29T18:00:00Z"), None);
        assert_eq!(split_name("work_2026-11-29T18:00:00Z"), None);
        assert_eq!(split_name("work-2026-11-29T18:00:00"), None);
    }

    #[test]
    fn an_archive_without_comment_has_an_empty_one() {
        let d = doc(&[r#"{"name": "a-2026-11-29T18:00:00Z", "stats": {"compressed_size": 2, "deduplicated_size": 3, "nfiles": 4, "original_size": 1}}"#.into()]);
        let l = parse_info(&d, None).unwrap();
        assert_eq!(
            l.archives,
            [Archive {
                qube: "a".into(),
                name: "a-2026-11-29T18:00:00Z".into(),
                date: "2026-11-29T18:00:00Z".into(),
                original: 1,
                compressed: 2,
                deduplicated: 3,
                files: 4,
                comment: String::new(),
            }]
        );
        assert_eq!(l.ignored, 0);
    }

    #[test]
    fn a_comment_of_16_kib_is_kept_and_one_byte_more_left_out() {
        let with_comment = |len: usize| {
            format!(
                r#"{{"name": "a-2026-11-29T18:00:00Z", "comment": "{}", "stats": {{"compressed_size": 1, "deduplicated_size": 1, "nfiles": 1, "original_size": 1}}}}"#,
                "x".repeat(len)
            )
        };
        let l = parse_info(&doc(&[with_comment(16 * 1024)]), None).unwrap();
        assert_eq!(l.archives[0].comment.len(), 16 * 1024);
        let l = parse_info(&doc(&[with_comment(16 * 1024 + 1)]), None).unwrap();
        assert_eq!((l.archives.len(), l.ignored), (0, 1));
    }

    #[test]
    fn a_listing_of_100000_entries_is_read_and_more_refused() {
        let zeros = |n: usize| doc(&vec!["0".to_string(); n]);
        let l = parse_info(&zeros(MAX_ARCHIVES), None).unwrap();
        assert_eq!((l.archives.len(), l.ignored), (0, MAX_ARCHIVES));
        assert!(parse_info(&zeros(MAX_ARCHIVES + 1), None)
            .unwrap_err()
            .contains("too many"));
    }

    #[test]
    fn dates_are_checked() {
        assert!(check_date("2026-11-29T18:00:00Z"));
        for bad in [
            "2026-11-29T18:00:00",
            "2026-00-29T18:00:00Z",
            "2026-11-32T18:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T18:60:00Z",
            "2026-1a-29T18:00:00Z",
            "٢٠٢٦-11-29T18:00:00Z",
        ] {
            assert!(!check_date(bad), "{bad}");
        }
        assert_eq!(
            split_name("my-qube-2026-11-29T18:00:00Z"),
            Some(("my-qube", "2026-11-29T18:00:00Z"))
        );
        assert_eq!(split_name("-2026-11-29T18:00:00Z"), None);
    }
}
