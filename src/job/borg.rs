//! sys-backup-mnt: borg's command lines and environment for one job, and the small readers
//! for borg's `--log-json` / `--json` output.
//!
//! Secrets never go into argv or the environment: the passphrase reaches borg through an
//! inherited pipe named by `BORG_PASSPHRASE_FD`, a key file through a 0600 file on tmpfs named by
//! `BORG_KEY_FILE`.

use super::spec::{Create, Export, Keep, Mode};

/// What borg uses as its remote shell: the qubes-borg.Ssh client (`qubes-ssh-client NAME ...`).
pub const BORG_RSH: &str = "qubes-ssh-client";
/// A fixed host id: every disposable is the same "host" for borg's locks.
pub const BORG_HOST_ID: &str = "qubes-borg@sys-backup-mnt";

/// Environment for every borg run (besides BORG_PASSPHRASE_FD and BORG_KEY_FILE).
pub fn env(base_dir: &str, files_cache_suffix: Option<&str>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("BORG_RSH", BORG_RSH),
        ("BORG_HOST_ID", BORG_HOST_ID),
        ("BORG_BASE_DIR", base_dir),
        // Refuse, never ask: nobody answers in a disposable.
        ("BORG_RELOCATED_REPO_ACCESS_IS_OK", "no"),
        ("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "no"),
        ("BORG_CHECK_I_KNOW_WHAT_I_AM_DOING", "NO"),
        ("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING", "NO"),
        ("BORG_DISPLAY_PASSPHRASE", "no"),
        ("LANG", "C.UTF-8"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(s) = files_cache_suffix {
        // One files cache per qube: all qubes are mounted at the same path.
        v.push(("BORG_FILES_CACHE_SUFFIX".into(), s.into()));
    }
    v
}

/// `--lock-wait=N` after borg's subcommand (`argv[1]`), when `lock_wait` is set: borg waits
/// that long for a lock (the repository's on the server, the cache's here) instead of 1 s.
pub fn with_lock_wait(mut argv: Vec<String>, lock_wait: Option<u32>) -> Vec<String> {
    if let Some(w) = lock_wait {
        argv.insert(2.min(argv.len()), format!("--lock-wait={w}"));
    }
    argv
}

/// `borg create` for one qube. Files mode runs in the mount point and archives `.`; image mode
/// archives the device itself (`--read-special`).
pub fn create_argv(repo: &str, c: &Create) -> Vec<String> {
    let mut v: Vec<String> = ["borg", "create", "--json", "--progress", "--log-json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(format!("--compression={}", c.compression));
    if !c.settings.is_empty() {
        v.push(format!("--comment={}", c.settings.join("\n")));
    }
    match c.mode {
        Mode::Files => {
            v.push("--one-file-system".into());
            v.push("--numeric-ids".into());
            for e in &c.excludes {
                v.push(format!("--exclude={e}"));
            }
            v.push(format!("{repo}::{}", c.archive));
            v.push(".".into());
        }
        Mode::Image => {
            v.push("--read-special".into());
            v.push(format!("{repo}::{}", c.archive));
            v.push(c.device.clone());
        }
    }
    with_lock_wait(v, c.lock_wait)
}

/// The glob matching exactly this qube's archives (`QUBE-YYYY-MM-DDT...`), so pruning `work`
/// never touches `work-web`'s archives.
pub fn archive_glob(qube: &str) -> String {
    format!("{qube}-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*")
}

pub fn prune_argv(repo: &str, qube: &str, keep: &Keep) -> Vec<String> {
    let mut v: Vec<String> = vec!["borg".into(), "prune".into(), "--log-json".into()];
    v.push(format!("--glob-archives={}", archive_glob(qube)));
    if let Some(w) = &keep.within {
        v.push(format!("--keep-within={w}"));
    }
    for (k, n) in &keep.counts {
        let name = match k.as_str() {
            "last" => "last".to_string(),
            s => s.to_string(),
        };
        v.push(format!("--keep-{name}={n}"));
    }
    v.push(repo.into());
    v
}

/// `borg extract` of a files-mode archive into the current directory (the fresh target fs):
/// owners by number (the qube's uids), holes kept.
pub fn extract_argv(repo: &str, archive: &str) -> Vec<String> {
    vec![
        "borg".into(),
        "extract".into(),
        "--log-json".into(),
        "--numeric-ids".into(),
        "--sparse".into(),
        format!("{repo}::{archive}"),
    ]
}

/// `borg extract --stdout` of an image-mode archive's one file (`dev/xvdi`, as create stored
/// the device path).
pub fn extract_image_argv(repo: &str, archive: &str, device: &str) -> Vec<String> {
    extract_stdout_argv(repo, archive, device.trim_start_matches('/').into())
}

/// `borg extract --stdout` of one item (`item`: as borg is to read it) of an archive.
fn extract_stdout_argv(repo: &str, archive: &str, item: String) -> Vec<String> {
    vec![
        "borg".into(),
        "extract".into(),
        "--log-json".into(),
        "--stdout".into(),
        format!("{repo}::{archive}"),
        item,
    ]
}

/// `borg export-tar` of some paths of a files-mode archive to stdout (`-`). Each path is given
/// as `pp:PATH`: a path prefix, never read as a pattern style or an option.
pub fn export_tar_argv(repo: &str, e: &Export) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "borg".into(),
        "export-tar".into(),
        "--log-json".into(),
        format!("{repo}::{}", e.archive),
        "-".into(),
    ];
    v.extend(e.paths.iter().map(|p| format!("pp:{p}")));
    v
}

/// Every archive name qubes-borg makes: `QUBE-YYYY-MM-DDT...`.
pub const ANY_QUBE_GLOB: &str = "*-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*";

/// `borg info --json` of one qube's archives (or every qube's): names, times, statistics and
/// the comment (the qube's settings) in one JSON document on stdout.
pub fn info_argv(repo: &str, qube: Option<&str>) -> Vec<String> {
    let glob = match qube {
        Some(q) => archive_glob(q),
        None => ANY_QUBE_GLOB.to_string(),
    };
    vec![
        "borg".into(),
        "info".into(),
        "--json".into(),
        "--log-json".into(),
        format!("--glob-archives={glob}"),
        repo.into(),
    ]
}

/// `borg info --json` of one archive.
pub fn info_archive_argv(repo: &str, archive: &str) -> Vec<String> {
    vec![
        "borg".into(),
        "info".into(),
        "--json".into(),
        "--log-json".into(),
        format!("{repo}::{archive}"),
    ]
}

/// `borg check` of the repository and every archive (`--verify-data`: decrypt and verify every
/// chunk, which reads the whole repository from the server). `--info`: borg's "Analyzing
/// archive NAME" lines tell which archive a problem belongs to.
pub fn check_argv(repo: &str, verify_data: bool) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "borg".into(),
        "check".into(),
        "--info".into(),
        "--log-json".into(),
    ];
    if verify_data {
        v.push("--verify-data".into());
    }
    v.push(repo.into());
    v
}

/// The listing the spot check samples from: one NUL-ended record per item (paths may hold
/// any byte but NUL); times in UTC (the job sets TZ=UTC for it).
pub const SPOT_FORMAT: &str = "{type} {mode} {isomtime} {isoctime} {path}{NUL}";

pub fn spot_list_argv(repo: &str, archive: &str) -> Vec<String> {
    vec![
        "borg".into(),
        "list".into(),
        "--log-json".into(),
        format!("--format={SPOT_FORMAT}"),
        format!("{repo}::{archive}"),
    ]
}

/// One file of an archive on stdout. The `pp:` prefix makes the path literal (a file named
/// `re:...` or `-x` is never a pattern or an option).
pub fn spot_extract_argv(repo: &str, archive: &str, path: &str) -> Vec<String> {
    extract_stdout_argv(repo, archive, format!("pp:{path}"))
}

pub fn compact_argv(repo: &str) -> Vec<String> {
    vec![
        "borg".into(),
        "compact".into(),
        "--log-json".into(),
        repo.into(),
    ]
}

/// `borg init` of a new repository (`--encryption` keyfile-blake2 or repokey-blake2).
pub fn init_argv(repo: &str, enc: super::spec::Encryption) -> Vec<String> {
    vec![
        "borg".into(),
        "init".into(),
        "--log-json".into(),
        format!("--encryption={}", enc.as_str()),
        repo.into(),
    ]
}

/// `borg key export` (`--paper`: the printable form) of the repository's key to `file`.
pub fn key_export_argv(repo: &str, paper: bool, file: &str) -> Vec<String> {
    let mut v: Vec<String> = vec!["borg".into(), "key".into(), "export".into()];
    v.push("--log-json".into());
    if paper {
        v.push("--paper".into());
    }
    v.push(repo.into());
    v.push(file.into());
    v
}

/// The number after `"KEY": ` in a JSON text (borg's flat log lines and --json output),
/// without a JSON parser: the text comes from borg in the same qube; a wrong value only
/// shows a wrong number.
pub fn json_number(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let at = text.find(&pat)? + pat.len();
    let rest = text[at..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The string after `"KEY": "` up to its closing quote (escapes kept as written).
pub fn json_string(text: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let at = text.find(&pat)? + pat.len();
    let rest = text[at..].trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut esc = false;
    for c in rest.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == '"' {
            return Some(out);
        } else {
            out.push(c);
        }
    }
    None
}

/// Longest line read from borg's `--log-json` stderr (a longer one is read as several).
pub const MAX_LOG_LINE: u64 = 64 * 1024;

/// One line of borg's `--log-json` stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// `archive_progress`: the bytes read so far (`original_size`), when the line holds them.
    Progress(Option<u64>),
    /// `progress_percent` or `progress_message`: nothing the job passes on.
    Status,
    /// A log message; any other line (not JSON, a remote's text) has an empty `level` and
    /// itself, trimmed, as `message`.
    Message {
        level: String,
        message: String,
        /// borg's `msgid`, as written (may be empty).
        msgid: Option<String>,
    },
}

impl LogLine {
    pub fn parse(text: &str) -> LogLine {
        if text.contains("\"archive_progress\"") {
            return LogLine::Progress(json_number(text, "original_size"));
        }
        if text.contains("\"progress_percent\"") || text.contains("\"progress_message\"") {
            return LogLine::Status;
        }
        LogLine::Message {
            level: json_string(text, "levelname").unwrap_or_default(),
            message: json_string(text, "message").unwrap_or_else(|| text.trim().to_string()),
            msgid: json_string(text, "msgid"),
        }
    }
}

/// Whether a log level is an error (`ERROR` or `CRITICAL`).
pub fn is_error(level: &str) -> bool {
    level == "ERROR" || level == "CRITICAL"
}

/// borg's stderr read line by line (each at most MAX_LOG_LINE bytes) up to its end or the
/// first read error.
pub fn log_lines<R: std::io::Read>(stderr: R) -> LogLines<R> {
    LogLines {
        reader: std::io::BufReader::new(stderr),
        line: Vec::new(),
    }
}

pub struct LogLines<R> {
    reader: std::io::BufReader<R>,
    line: Vec<u8>,
}

impl<R: std::io::Read> Iterator for LogLines<R> {
    type Item = LogLine;

    fn next(&mut self) -> Option<LogLine> {
        use std::io::{BufRead, Read};
        self.line.clear();
        match (&mut self.reader)
            .take(MAX_LOG_LINE)
            .read_until(b'\n', &mut self.line)
        {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(LogLine::parse(&String::from_utf8_lossy(&self.line))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::spec::KeepKind;

    fn create(mode: Mode) -> Create {
        Create {
            qube: "work".into(),
            archive: "work-2026-11-29T18:00:00Z".into(),
            mode,
            device: "/dev/xvdi".into(),
            compression: "zstd,3".into(),
            excludes: vec!["sh:home/*/.cache".into()],
            settings: vec![],
            lock_wait: None,
        }
    }

    #[test]
    fn files_mode_archives_the_mount_point_with_excludes() {
        let v = create_argv("ssh://b/./r", &create(Mode::Files));
        assert_eq!(
            v[..5],
            ["borg", "create", "--json", "--progress", "--log-json"]
        );
        assert!(v.contains(&"--exclude=sh:home/*/.cache".to_string()));
        assert!(v.contains(&"--one-file-system".to_string()));
        assert_eq!(
            v[v.len() - 2..],
            ["ssh://b/./r::work-2026-11-29T18:00:00Z", "."]
        );
    }

    #[test]
    fn lock_wait_goes_right_after_the_subcommand() {
        let mut c = create(Mode::Files);
        c.lock_wait = Some(45);
        let v = create_argv("ssh://b/./r", &c);
        assert_eq!(v[..3], ["borg", "create", "--lock-wait=45"]);
        assert!(!create_argv("ssh://b/./r", &create(Mode::Files))
            .iter()
            .any(|a| a.starts_with("--lock-wait")));
    }

    #[test]
    fn image_mode_reads_the_device_and_never_mounts() {
        let v = create_argv("ssh://b/./r", &create(Mode::Image));
        assert!(v.contains(&"--read-special".to_string()));
        assert_eq!(v.last().unwrap(), "/dev/xvdi");
        assert!(!v.iter().any(|a| a.starts_with("--exclude")));
    }

    #[test]
    fn prune_is_limited_to_one_qubes_archives() {
        let keep = Keep {
            within: Some("2d".into()),
            counts: vec![(KeepKind::Daily, 7)],
        };
        let v = prune_argv("ssh://b/./r", "work", &keep);
        assert_eq!(
            v,
            [
                "borg",
                "prune",
                "--log-json",
                "--glob-archives=work-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*",
                "--keep-within=2d",
                "--keep-daily=7",
                "ssh://b/./r"
            ]
        );
    }

    #[test]
    fn spot_paths_are_literal_and_check_reads_data_only_when_asked() {
        let v = spot_extract_argv("ssh://b/./r", "w-2026-11-29T18:00:00Z", "-x re:.*");
        assert_eq!(v[v.len() - 1], "pp:-x re:.*");
        assert!(v.contains(&"--stdout".to_string()));
        assert!(!check_argv("ssh://b/./r", false).contains(&"--verify-data".to_string()));
        assert_eq!(
            check_argv("ssh://b/./r", true),
            [
                "borg",
                "check",
                "--info",
                "--log-json",
                "--verify-data",
                "ssh://b/./r"
            ]
        );
        assert_eq!(
            info_archive_argv("ssh://b/./r", "w-2026-11-29T18:00:00Z")[4],
            "ssh://b/./r::w-2026-11-29T18:00:00Z"
        );
    }

    #[test]
    fn an_image_is_extracted_to_stdout_as_the_device_path_create_stored() {
        assert_eq!(
            extract_image_argv("ssh://b/./r", "w-2026-11-29T18:00:00Z", "/dev/xvdi"),
            [
                "borg",
                "extract",
                "--log-json",
                "--stdout",
                "ssh://b/./r::w-2026-11-29T18:00:00Z",
                "dev/xvdi"
            ]
        );
    }

    #[test]
    fn export_paths_reach_borg_as_path_prefixes_after_the_archive_and_stdout() {
        let e = Export {
            archive: "work-2026-11-29T18:00:00Z".into(),
            paths: vec!["home/user/a b".into(), "re:x".into()],
        };
        assert_eq!(
            export_tar_argv("ssh://b/./r", &e),
            [
                "borg",
                "export-tar",
                "--log-json",
                "ssh://b/./r::work-2026-11-29T18:00:00Z",
                "-",
                "pp:home/user/a b",
                "pp:re:x"
            ]
        );
    }

    #[test]
    fn no_secret_in_environment() {
        for (k, _) in env("/run/x", Some("work")) {
            assert!(
                !k.contains("PASSPHRASE") || k == "BORG_DISPLAY_PASSPHRASE",
                "{k}"
            );
        }
    }

    #[test]
    fn json_fields_are_read_from_borg_output() {
        let line =
            r#"{"type": "archive_progress", "original_size": 1234, "nfiles": 5, "path": "a\"b"}"#;
        assert_eq!(json_number(line, "original_size"), Some(1234));
        assert_eq!(json_number(line, "nfiles"), Some(5));
        assert_eq!(json_string(line, "path").as_deref(), Some("a\"b"));
        assert_eq!(json_number(line, "missing"), None);
    }

    fn message(level: &str, message: &str, msgid: Option<&str>) -> LogLine {
        LogLine::Message {
            level: level.into(),
            message: message.into(),
            msgid: msgid.map(String::from),
        }
    }

    #[test]
    fn log_lines_tell_progress_status_and_messages_apart() {
        let stderr = concat!(
            "{\"type\": \"archive_progress\", \"original_size\": 77, \"nfiles\": 1}\n",
            "{\"type\": \"archive_progress\", \"finished\": true}\n",
            "{\"type\": \"progress_percent\", \"message\": \"3%\"}\n",
            "{\"type\": \"progress_message\", \"message\": \"x\"}\n",
            "{\"type\": \"log_message\", \"levelname\": \"ERROR\", \"msgid\": \"Repository.DoesNotExist\", \"message\": \"no repo\"}\n",
            "  Remote: ssh: connect to host b: refused  \n",
            "last line without newline",
        );
        let lines: Vec<LogLine> = log_lines(stderr.as_bytes()).collect();
        assert_eq!(
            lines,
            [
                LogLine::Progress(Some(77)),
                LogLine::Progress(None),
                LogLine::Status,
                LogLine::Status,
                message("ERROR", "no repo", Some("Repository.DoesNotExist")),
                message("", "Remote: ssh: connect to host b: refused", None),
                message("", "last line without newline", None),
            ]
        );
        assert!(is_error("ERROR") && is_error("CRITICAL"));
        assert!(!is_error("WARNING") && !is_error(""));
    }

    #[test]
    fn a_log_line_longer_than_64_kib_is_read_in_pieces() {
        let long = format!("{}\nnext\n", "a".repeat(MAX_LOG_LINE as usize + 5));
        let lines: Vec<LogLine> = log_lines(long.as_bytes()).collect();
        assert_eq!(
            lines,
            [
                message("", &"a".repeat(MAX_LOG_LINE as usize), None),
                message("", "aaaaa", None),
                message("", "next", None),
            ]
        );
    }
}
