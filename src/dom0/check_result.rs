//! dom0: reads what a `check` job sends back (job ops `check` and `spot`): hostile input,
//! parsed strictly and bounded; every path kept is sanitized printable ASCII.

use crate::dom0::archives;
use crate::job::progress::sanitize;

/// Most archive names (from borg's messages) and paths (per kind) dom0 takes from a job.
pub const MAX_NAMED: usize = 20;
/// Longest path shown.
pub const MAX_PATH_SHOWN: usize = 200;

/// What `borg check` found, as the job reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoResult {
    pub ok: bool,
    /// Archives borg was analyzing when it logged a problem (checked names).
    pub archives: Vec<String>,
}

/// Reads the check job's result: `repository ok|errors`, then `archive NAME` lines.
pub fn parse_repo_result(untrusted: &[u8]) -> Result<RepoResult, String> {
    let text = std::str::from_utf8(untrusted).map_err(|_| "check result is not text")?;
    let mut lines = text.lines();
    let ok = match lines.next() {
        Some("repository ok") => true,
        Some("repository errors") => false,
        _ => return Err("check result: no repository line".into()),
    };
    let mut archives = Vec::new();
    for l in lines {
        let name = l
            .strip_prefix("archive ")
            .filter(|n| archives::split_name(n).is_some())
            .ok_or_else(|| {
                format!(
                    "check result: unexpected line '{}'",
                    sanitize(l.as_bytes(), 80)
                )
            })?;
        if archives.len() >= MAX_NAMED {
            continue;
        }
        if !archives.iter().any(|a| a == name) {
            archives.push(name.to_string());
        }
    }
    Ok(RepoResult { ok, archives })
}

/// What one spot check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpotResult {
    pub checked: u64,
    pub matched: u64,
    pub changed: u64,
    pub mismatched: u64,
    /// Some of the changed files (sanitized, bounded).
    pub changed_paths: Vec<String>,
    /// (why, path) of some mismatched files.
    pub mismatch_paths: Vec<(String, String)>,
}

/// Reads the spot job's result (format in `job::spot`'s comment), strictly: every count once,
/// counts that add up and are at most `asked`, at most MAX_NAMED paths of each kind.
pub fn parse_spot_result(untrusted: &[u8], asked: u32) -> Result<SpotResult, String> {
    let bad = |l: &str| {
        format!(
            "spot result: unexpected line '{}'",
            sanitize(l.as_bytes(), 80)
        )
    };
    let text = std::str::from_utf8(untrusted).map_err(|_| "spot result is not text")?;
    let mut counts: [Option<u64>; 4] = [None; 4];
    let mut r = SpotResult::default();
    for l in text.lines() {
        let (key, rest) = l.split_once(' ').ok_or_else(|| bad(l))?;
        let slot = ["checked", "matched", "changed-count", "mismatch-count"]
            .iter()
            .position(|k| *k == key);
        if let Some(i) = slot {
            let n = (rest.len() <= 6 && rest.bytes().all(|b| b.is_ascii_digit()))
                .then(|| rest.parse::<u64>().ok())
                .flatten()
                .filter(|n| *n <= u64::from(asked))
                .ok_or_else(|| bad(l))?;
            if counts[i].replace(n).is_some() {
                return Err(bad(l));
            }
            continue;
        }
        match key {
            "changed" if r.changed_paths.len() < MAX_NAMED => r
                .changed_paths
                .push(sanitize(rest.as_bytes(), MAX_PATH_SHOWN)),
            "mismatch" if r.mismatch_paths.len() < MAX_NAMED => {
                let (why, path) = rest.split_once(' ').ok_or_else(|| bad(l))?;
                if !["content", "mode", "unreadable"].contains(&why) {
                    return Err(bad(l));
                }
                r.mismatch_paths
                    .push((why.to_string(), sanitize(path.as_bytes(), MAX_PATH_SHOWN)));
            }
            _ => return Err(bad(l)),
        }
    }
    let [Some(c), Some(m), Some(ch), Some(mm)] = counts else {
        return Err("spot result: a count is missing".into());
    };
    if m + ch + mm != c
        || (r.changed_paths.len() as u64) > ch
        || (r.mismatch_paths.len() as u64) > mm
    {
        return Err("spot result: the counts do not add up".into());
    }
    (r.checked, r.matched, r.changed, r.mismatched) = (c, m, ch, mm);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_results_are_read_strictly() {
        let r =
            parse_repo_result(b"repository errors\narchive work-2026-11-29T18:00:00Z\n").unwrap();
        assert!(!r.ok);
        assert_eq!(r.archives, ["work-2026-11-29T18:00:00Z"]);
        assert!(parse_repo_result(b"repository ok\n").unwrap().ok);
        for bad in [
            &b""[..],
            b"repository fine\n",
            b"repository ok\narchive ../x\n",
            b"repository ok\narchive w\x1b[2J-2026-11-29T18:00:00Z\n",
            b"repository ok\nrm -rf /\n",
        ] {
            assert!(
                parse_repo_result(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn spot_results_must_add_up_and_name_few_printable_paths() {
        let ok = b"checked 3\nmatched 1\nchanged-count 1\nmismatch-count 1\nchanged home/a\nmismatch content home/\x1b[2Jb\n";
        let r = parse_spot_result(ok, 20).unwrap();
        assert_eq!(
            (r.checked, r.matched, r.changed, r.mismatched),
            (3, 1, 1, 1)
        );
        assert_eq!(
            r.mismatch_paths,
            [("content".to_string(), "home/?[2Jb".to_string())]
        );
        for bad in [
            &b"checked 3\nmatched 1\nchanged-count 1\nmismatch-count 0\n"[..],
            b"checked 30\nmatched 30\nchanged-count 0\nmismatch-count 0\n",
            b"checked 1\nmatched 1\nchanged-count 0\n",
            b"checked 1\nchecked 1\nmatched 1\nchanged-count 0\nmismatch-count 0\n",
            b"checked 1\nmatched 0\nchanged-count 0\nmismatch-count 1\nmismatch evil home/a\n",
            b"checked 0\nmatched 0\nchanged-count 0\nmismatch-count 0\nchanged home/a\n",
            b"checked -1\nmatched 0\nchanged-count 0\nmismatch-count 0\n",
        ] {
            assert!(
                parse_spot_result(bad, 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut many = String::from("checked 20\nmatched 0\nchanged-count 0\nmismatch-count 20\n");
        for i in 0..25 {
            many += &format!("mismatch content f{i}\n");
        }
        // More names than counted: refused.
        assert!(parse_spot_result(many.as_bytes(), 20).is_err());
    }

    #[test]
    fn repository_results_keep_each_archive_once_and_at_most_max_named() {
        let r = parse_repo_result(
            b"repository errors\narchive a-2026-11-29T18:00:00Z\narchive a-2026-11-29T18:00:00Z\narchive b-2026-11-29T18:00:00Z\n",
        )
        .unwrap();
        assert_eq!(
            r.archives,
            ["a-2026-11-29T18:00:00Z", "b-2026-11-29T18:00:00Z"]
        );
        let mut many = String::from("repository errors\n");
        for i in 0..(MAX_NAMED + 5) {
            many += &format!("archive q{i}-2026-11-29T18:00:00Z\n");
        }
        let r = parse_repo_result(many.as_bytes()).unwrap();
        assert_eq!(r.archives.len(), MAX_NAMED);
        assert_eq!(
            r.archives[MAX_NAMED - 1],
            format!("q{}-2026-11-29T18:00:00Z", MAX_NAMED - 1)
        );
    }

    const COUNTS_OK: &str = "matched 0\nchanged-count 0\nmismatch-count 0\n";

    #[test]
    fn spot_counts_are_plain_digits_of_at_most_six() {
        for bad in ["checked +0", "checked 0000000"] {
            let e = parse_spot_result(format!("{bad}\n{COUNTS_OK}").as_bytes(), 20)
                .err()
                .unwrap();
            assert_eq!(e, format!("spot result: unexpected line '{bad}'"));
        }
        let r = parse_spot_result(format!("checked 000000\n{COUNTS_OK}").as_bytes(), 20).unwrap();
        assert_eq!(r.checked, 0);
    }

    fn named(kind: &str, n: usize) -> String {
        let (changed, mismatched) = if kind == "changed" { (n, 0) } else { (0, n) };
        let mut s = format!(
            "checked {n}\nmatched 0\nchanged-count {changed}\nmismatch-count {mismatched}\n"
        );
        for i in 0..n {
            s += &match kind {
                "changed" => format!("changed f{i}\n"),
                _ => format!("mismatch mode f{i}\n"),
            };
        }
        s
    }

    #[test]
    fn spot_results_name_at_most_max_named_paths_of_each_kind() {
        let r = parse_spot_result(named("changed", MAX_NAMED).as_bytes(), 100).unwrap();
        assert_eq!(r.changed_paths.len(), MAX_NAMED);
        let r = parse_spot_result(named("mismatch", MAX_NAMED).as_bytes(), 100).unwrap();
        assert_eq!(r.mismatch_paths.len(), MAX_NAMED);
        assert_eq!(
            parse_spot_result(named("changed", MAX_NAMED + 1).as_bytes(), 100)
                .err()
                .unwrap(),
            format!("spot result: unexpected line 'changed f{MAX_NAMED}'")
        );
        assert_eq!(
            parse_spot_result(named("mismatch", MAX_NAMED + 1).as_bytes(), 100)
                .err()
                .unwrap(),
            format!("spot result: unexpected line 'mismatch mode f{MAX_NAMED}'")
        );
    }

    #[test]
    fn spot_results_name_no_more_mismatches_than_counted() {
        let e = parse_spot_result(
            b"checked 1\nmatched 1\nchanged-count 0\nmismatch-count 0\nmismatch content a\n",
            20,
        )
        .err()
        .unwrap();
        assert_eq!(e, "spot result: the counts do not add up");
        let e = parse_spot_result(
            b"checked 1\nmatched 1\nchanged-count 0\nmismatch-count 0\nchanged a\n",
            20,
        )
        .err()
        .unwrap();
        assert_eq!(e, "spot result: the counts do not add up");
        let e = parse_spot_result(
            b"checked 3\nmatched 1\nchanged-count 1\nmismatch-count 0\n",
            20,
        )
        .err()
        .unwrap();
        assert_eq!(e, "spot result: the counts do not add up");
    }
}
