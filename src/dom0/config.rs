//! dom0: `/etc/qubes-borg/backup.conf`, the configuration of `qvm-backup-borg`.
//!
//! Format: `key = value` lines, `#` comments, and `[qube NAME]` sections for per-qube keys.
//! One table (`KEYS`) says which keys exist, where, and how many times; every error names the
//! file, the line and the key. See docs/USAGE.md for the meaning of each key.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::job::spec::{self, Keep, KeepKind, Mode};

pub const DEFAULT_PATH: &str = "/etc/qubes-borg/backup.conf";
/// Largest configuration file.
pub const MAX_FILE: u64 = 256 * 1024;

/// Excludes applied to every files-mode qube unless `default_excludes = no`: caches and
/// trash, which borg would otherwise store every day. Paths are relative to the private
/// volume's root (`home/` is the qube's /home, `rw/`-less because the volume *is* /rw).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "sh:home/*/.cache",
    "sh:home/*/.local/share/Trash",
    "sh:home/*/.mozilla/firefox/*/cache2",
    "sh:home/*/.config/chromium/*/Cache",
    "sh:lost+found",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Global,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Once,
    Many,
}

const KEYS: &[(&str, Where, Count)] = &[
    ("repository", Where::Global, Count::Once),
    ("admin_repository", Where::Global, Count::Once),
    ("qubes", Where::Global, Count::Many),
    ("tag", Where::Global, Count::Many),
    ("exclude_qubes", Where::Global, Count::Many),
    ("compression", Where::Both, Count::Once),
    ("mode", Where::Both, Count::Once),
    ("exclude", Where::Both, Count::Many),
    ("default_excludes", Where::Both, Count::Once),
    ("keep_within", Where::Global, Count::Once),
    ("keep_last", Where::Global, Count::Once),
    ("keep_hourly", Where::Global, Count::Once),
    ("keep_daily", Where::Global, Count::Once),
    ("keep_weekly", Where::Global, Count::Once),
    ("keep_monthly", Where::Global, Count::Once),
    ("keep_yearly", Where::Global, Count::Once),
    ("passphrase_file", Where::Global, Count::Once),
    ("key_file", Where::Global, Count::Once),
    ("disposable", Where::Global, Count::Once),
    ("persistent_state", Where::Global, Count::Once),
    ("state_image", Where::Global, Count::Once),
    ("state_size_mib", Where::Global, Count::Once),
    ("shutdown_timeout", Where::Global, Count::Once),
    ("run_dir", Where::Global, Count::Once),
    ("lock_wait", Where::Global, Count::Once),
    ("retries", Where::Global, Count::Once),
    ("retry_delay", Where::Global, Count::Once),
];

/// Most `retries`.
pub const MAX_RETRIES: u32 = 10;
/// Longest `retry_delay`, and longest wait before any one retry (the delay doubles).
pub const MAX_RETRY_DELAY: u32 = 3600;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QubeConfig {
    pub mode: Option<Mode>,
    pub compression: Option<String>,
    pub excludes: Vec<String>,
    pub default_excludes: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub repository: String,
    pub admin_repository: Option<String>,
    /// Explicit list (empty: every qube with include_in_backups).
    pub qubes: Vec<String>,
    pub tags: Vec<String>,
    pub exclude_qubes: Vec<String>,
    pub compression: String,
    pub mode: Mode,
    pub excludes: Vec<String>,
    pub default_excludes: bool,
    pub keep: Keep,
    pub passphrase_file: PathBuf,
    pub key_file: Option<PathBuf>,
    pub disposable: String,
    pub persistent_state: bool,
    pub state_image: PathBuf,
    pub state_size_mib: u64,
    pub shutdown_timeout: u32,
    pub run_dir: PathBuf,
    pub per_qube: Vec<(String, QubeConfig)>,
    /// borg's `--lock-wait`: seconds to wait for the repository's lock.
    pub lock_wait: u32,
    /// More attempts for a qube after a transient failure (link, lock).
    pub retries: u32,
    /// Seconds before the first retry; doubled for each next one.
    pub retry_delay: u32,
}

impl Config {
    pub fn qube(&self, name: &str) -> Option<&QubeConfig> {
        self.per_qube
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Io {
        file: PathBuf,
        err: String,
    },
    Unsafe {
        file: PathBuf,
        why: String,
    },
    Line {
        file: PathBuf,
        line: usize,
        key: String,
        why: String,
    },
    Missing {
        file: PathBuf,
        key: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { file, err } => write!(f, "{}: {err}", file.display()),
            ConfigError::Unsafe { file, why } => write!(
                f,
                "{}: {why}; it holds backup settings: chown root:root and chmod 0600 it",
                file.display()
            ),
            ConfigError::Line {
                file,
                line,
                key,
                why,
            } => {
                write!(f, "{}:{line}: {key}: {why}", file.display())
            }
            ConfigError::Missing { file, key } => {
                write!(
                    f,
                    "{}: '{key}' is required (see docs/USAGE.md)",
                    file.display()
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses the file; it must be a regular file (not a symbolic link) owned by root
/// (or by the caller), not writable by group or others, at most `MAX_FILE` bytes.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use crate::safe_path::{read_trusted, FileError, Trusted, NOT_WRITABLE_BY_OTHERS};
    let me = nix::unistd::geteuid().as_raw();
    let owners = &[0, me];
    let trusted = Trusted {
        owners,
        forbidden_mode: NOT_WRITABLE_BY_OTHERS,
        max_len: MAX_FILE,
        check_dir: false,
    };
    let text = read_trusted(path, &trusted).map_err(|e| match e {
        FileError::NotFound(file) => ConfigError::Io {
            file,
            err: "does not exist".into(),
        },
        FileError::Unsafe(u) => ConfigError::Unsafe {
            file: u.path,
            why: u.why,
        },
        FileError::Io { path, err } => ConfigError::Io {
            file: path,
            err: err.to_string(),
        },
    })?;
    parse(path, &text)
}

fn yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => Err("must be yes or no".into()),
    }
}

fn abs_path(v: &str) -> Result<PathBuf, String> {
    if !v.starts_with('/') || v.contains("/../") || v.ends_with("/..") {
        return Err("must be an absolute path without '..'".into());
    }
    Ok(PathBuf::from(v))
}

fn number(v: &str, max: u64) -> Result<u64, String> {
    // Digits only: `str::parse` alone would also take a leading '+'.
    Some(v)
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or(format!("must be a number from 1 to {max}"))
}

fn names(v: &str) -> Result<Vec<String>, String> {
    v.split_whitespace()
        .map(|q| {
            spec::check_qube(q)
                .map(|_| q.to_string())
                .map_err(|w| format!("'{q}' {w}"))
        })
        .collect()
}

/// Parses the text of the file at `path`.
pub fn parse(path: &Path, text: &[u8]) -> Result<Config, ConfigError> {
    let file = path.to_path_buf();
    let text = std::str::from_utf8(text).map_err(|_| ConfigError::Io {
        file: file.clone(),
        err: "not UTF-8 text".into(),
    })?;
    let mut c = Config {
        path: file.clone(),
        repository: String::new(),
        admin_repository: None,
        qubes: vec![],
        tags: vec![],
        exclude_qubes: vec![],
        compression: "zstd,3".into(),
        mode: Mode::Files,
        excludes: vec![],
        default_excludes: true,
        keep: Keep::default(),
        passphrase_file: "/etc/qubes-borg/passphrase".into(),
        key_file: None,
        disposable: "sys-backup-mnt".into(),
        persistent_state: true,
        state_image: "/var/lib/qubes-borg/state.img".into(),
        state_size_mib: 4096,
        shutdown_timeout: 120,
        run_dir: "/run/qubes-borg".into(),
        per_qube: vec![],
        lock_wait: 60,
        retries: 2,
        retry_delay: 30,
    };
    let mut seen: Vec<(Option<String>, &str)> = Vec::new();
    let mut section: Option<String> = None;
    let mut have_repo = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |key: &str, why: String| ConfigError::Line {
            file: file.clone(),
            line,
            key: key.to_string(),
            why,
        };
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.chars().any(|ch| ch.is_control() && ch != '\t') {
            return Err(err("(line)", "contains a control character".into()));
        }
        if let Some(inner) = l.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| err("(section)", "expected [qube NAME]".into()))?;
            let name = inner
                .strip_prefix("qube ")
                .ok_or_else(|| err("(section)", "expected [qube NAME]".into()))?
                .trim();
            spec::check_qube(name)
                .map_err(|w| err("(section)", format!("qube name '{name}' {w}")))?;
            if c.per_qube.iter().any(|(n, _)| n == name) {
                return Err(err("(section)", format!("[qube {name}] given twice")));
            }
            c.per_qube.push((name.to_string(), QubeConfig::default()));
            section = Some(name.to_string());
            continue;
        }
        let (key, value) = l.split_once('=').ok_or_else(|| {
            err(
                l.split_whitespace().next().unwrap_or(""),
                "expected 'key = value'".into(),
            )
        })?;
        let (key, value) = (key.trim(), value.trim());
        let Some(&(k, whr, count)) = KEYS.iter().find(|(k, _, _)| *k == key) else {
            return Err(err(
                key,
                "unknown key (see docs/USAGE.md for the list)".into(),
            ));
        };
        if let (Where::Global, Some(q)) = (whr, &section) {
            return Err(err(
                key,
                format!("not allowed in [qube {q}]; put it before the first section"),
            ));
        }
        if count == Count::Once {
            if seen.contains(&(section.clone(), k)) {
                return Err(err(key, "given twice".into()));
            }
            seen.push((section.clone(), k));
        }
        if value.is_empty() {
            return Err(err(key, "has no value".into()));
        }
        let e = |why: String| err(key, why);
        if let Some(q) = &section {
            let qc = &mut c
                .per_qube
                .iter_mut()
                .find(|(n, _)| n == q)
                .expect("section exists")
                .1;
            match k {
                "mode" => {
                    qc.mode =
                        Some(Mode::parse(value).ok_or_else(|| e("must be files or image".into()))?)
                }
                "compression" => {
                    spec::check_compression(value).map_err(|w| e(w.into()))?;
                    qc.compression = Some(value.into())
                }
                "exclude" => {
                    spec::check_pattern(value).map_err(|w| e(w.into()))?;
                    qc.excludes.push(value.into())
                }
                "default_excludes" => qc.default_excludes = Some(yes_no(value).map_err(e)?),
                _ => unreachable!("KEYS lists only these as per-qube"),
            }
            continue;
        }
        match k {
            "repository" => {
                spec::check_repository(value)
                    .map_err(|w| e(format!("{w} (expected ssh://DESTINATION/PATH)")))?;
                c.repository = value.into();
                have_repo = true;
            }
            "admin_repository" => {
                spec::check_repository(value)
                    .map_err(|w| e(format!("{w} (expected ssh://DESTINATION/PATH)")))?;
                c.admin_repository = Some(value.into());
            }
            "qubes" => c.qubes.extend(names(value).map_err(e)?),
            "tag" => c.tags.extend(names(value).map_err(e)?),
            "exclude_qubes" => c.exclude_qubes.extend(names(value).map_err(e)?),
            "compression" => {
                spec::check_compression(value).map_err(|w| e(w.into()))?;
                c.compression = value.into()
            }
            "mode" => {
                c.mode = Mode::parse(value).ok_or_else(|| e("must be files or image".into()))?
            }
            "exclude" => {
                spec::check_pattern(value).map_err(|w| e(w.into()))?;
                c.excludes.push(value.into())
            }
            "default_excludes" => c.default_excludes = yes_no(value).map_err(e)?,
            "keep_within" => {
                spec::check_within(value).map_err(|w| e(w.into()))?;
                c.keep.within = Some(value.into())
            }
            "passphrase_file" => c.passphrase_file = abs_path(value).map_err(e)?,
            "key_file" => c.key_file = Some(abs_path(value).map_err(e)?),
            "disposable" => {
                spec::check_qube(value).map_err(|w| e(w.into()))?;
                c.disposable = value.into()
            }
            "persistent_state" => c.persistent_state = yes_no(value).map_err(e)?,
            "state_image" => c.state_image = abs_path(value).map_err(e)?,
            "state_size_mib" => c.state_size_mib = number(value, 1 << 20).map_err(e)?,
            "shutdown_timeout" => c.shutdown_timeout = number(value, 3600).map_err(e)? as u32,
            "run_dir" => c.run_dir = abs_path(value).map_err(e)?,
            "lock_wait" => {
                c.lock_wait = number(value, spec::MAX_LOCK_WAIT as u64).map_err(e)? as u32
            }
            "retries" => {
                c.retries = if value == "0" {
                    0
                } else {
                    number(value, MAX_RETRIES as u64)
                        .map_err(|_| e(format!("must be a number from 0 to {MAX_RETRIES}")))?
                        as u32
                }
            }
            "retry_delay" => {
                c.retry_delay = number(value, MAX_RETRY_DELAY as u64).map_err(e)? as u32
            }
            other => {
                let kind = other
                    .strip_prefix("keep_")
                    .and_then(KeepKind::parse)
                    .expect("KEYS lists keep_*");
                let n = number(value, spec::MAX_KEEP as u64).map_err(e)?;
                c.keep.counts.push((kind, n as u32));
            }
        }
    }
    if !have_repo {
        return Err(ConfigError::Missing {
            file,
            key: "repository",
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/qubes-borg/backup.conf"), text.as_bytes())
    }

    fn line_err(text: &str) -> (usize, String, String) {
        match p(text).unwrap_err() {
            ConfigError::Line { line, key, why, .. } => (line, key, why),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn full_example_parses() {
        let c = p("# comment\nrepository = ssh://borgbase/./repo\nadmin_repository = ssh://borgbase-admin/./repo\n\
                   qubes = work personal\ntag = backup\nexclude_qubes = untrusted\ncompression = lz4\nexclude = sh:home/*/Downloads\n\
                   keep_daily = 7\nkeep_within = 2d\npersistent_state = no\n\n[qube vault]\nmode = image\n[qube work]\nexclude = pp:home/user/tmp\ndefault_excludes = no\n")
            .unwrap();
        assert_eq!(c.repository, "ssh://borgbase/./repo");
        assert_eq!(c.qubes, ["work", "personal"]);
        assert_eq!(c.tags, ["backup"]);
        assert_eq!(c.exclude_qubes, ["untrusted"]);
        assert_eq!(c.keep.counts, [(KeepKind::Daily, 7)]);
        assert_eq!(c.keep.within.as_deref(), Some("2d"));
        assert!(!c.persistent_state);
        assert_eq!(c.qube("vault").unwrap().mode, Some(Mode::Image));
        assert_eq!(c.qube("work").unwrap().excludes, ["pp:home/user/tmp"]);
        assert_eq!(c.qube("work").unwrap().default_excludes, Some(false));
    }

    #[test]
    fn defaults_need_only_a_repository() {
        let c = p("repository = ssh://b/./r\n").unwrap();
        assert_eq!(c.mode, Mode::Files);
        assert!(c.default_excludes && c.persistent_state && c.qubes.is_empty());
        assert_eq!(c.disposable, "sys-backup-mnt");
    }

    #[test]
    fn errors_name_the_line_and_key() {
        assert_eq!(line_err("repository = ssh://b/./r\n\ncolour = red\n").0, 3);
        assert_eq!(
            line_err("repository = ssh://b/./r\ncolour = red\n").1,
            "colour"
        );
        let (l, k, w) = line_err("repository = ssh://b/./r\nkeep_daily = seven\n");
        assert_eq!((l, k.as_str()), (2, "keep_daily"));
        assert!(w.contains("number"), "{w}");
        let (_, k, w) = line_err("repository = ssh://b/./r\nrepository = ssh://c/./r\n");
        assert_eq!((k.as_str(), w.as_str()), ("repository", "given twice"));
        assert_eq!(line_err("repository = /local/repo\n").1, "repository");
        assert_eq!(
            line_err("repository = ssh://b/./r\nqubes = work ../etc\n").1,
            "qubes"
        );
        assert_eq!(
            line_err("repository = ssh://b/./r\n[qube work]\nrepository = ssh://c/./r\n").1,
            "repository"
        );
        assert_eq!(
            line_err("repository = ssh://b/./r\n[vm work]\n").1,
            "(section)"
        );
        assert_eq!(line_err("repository = ssh://b/./r\nmode = tar\n").1, "mode");
        assert_eq!(
            line_err("repository = ssh://b/./r\npassphrase_file = etc/pass\n").1,
            "passphrase_file"
        );
        assert_eq!(
            line_err("repository = ssh://b/./r\nexclude = a\x1b[2J\n").1,
            "(line)"
        );
        assert_eq!(line_err("repository\n").1, "repository");
        let msg = p("repository = ssh://b/./r\ncolour = red\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("/etc/qubes-borg/backup.conf:2: colour: unknown key"),
            "{msg}"
        );
    }

    #[test]
    fn retry_and_lock_wait_settings_are_bounded() {
        let c = p("repository = ssh://b/./r\n").unwrap();
        assert_eq!((c.lock_wait, c.retries, c.retry_delay), (60, 2, 30));
        let c =
            p("repository = ssh://b/./r\nlock_wait = 5\nretries = 0\nretry_delay = 2\n").unwrap();
        assert_eq!((c.lock_wait, c.retries, c.retry_delay), (5, 0, 2));
        for (line, key) in [
            ("lock_wait = 0", "lock_wait"),
            ("lock_wait = 3601", "lock_wait"),
            ("retries = 11", "retries"),
            ("retries = -1", "retries"),
            ("retry_delay = 0", "retry_delay"),
            ("retry_delay = 3601", "retry_delay"),
        ] {
            let (l, k, _) = line_err(&format!("repository = ssh://b/./r\n{line}\n"));
            assert_eq!((l, k.as_str()), (2, key), "{line}");
        }
    }

    #[test]
    fn missing_repository_is_an_error() {
        let e = p("# nothing\n").unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Missing {
                key: "repository",
                ..
            }
        ));
    }

    const BASE: &str = "repository = ssh://b/./r\n";

    /// The key and reason of the error for BASE plus `line` (the error must be on line 2).
    fn bad_line(line: &str) -> (String, String) {
        let (n, key, why) = line_err(&format!("{BASE}{line}\n"));
        assert_eq!(n, 2, "{line}");
        (key, why)
    }

    #[test]
    fn every_global_key_is_read() {
        let c = p("repository = ssh://b/./r\n\
                   mode = image\n\
                   default_excludes = false\n\
                   keep_last = 1\nkeep_hourly = 2\nkeep_daily = 3\nkeep_weekly = 4\n\
                   keep_monthly = 5\nkeep_yearly = 100000\n\
                   passphrase_file = /root/pass\nkey_file = /root/key\n\
                   disposable = backup-dvm\npersistent_state = 0\n\
                   state_image = /var/img\nstate_size_mib = 1048576\n\
                   shutdown_timeout = 3600\nrun_dir = /run/x\n\
                   exclude = a\nexclude = b\nqubes = q1\nqubes = q2 q3\n\
                   \tcompression\t=\tlz4\t\n")
        .unwrap();
        assert_eq!(c.mode, Mode::Image);
        assert!(!c.default_excludes && !c.persistent_state);
        assert_eq!(
            c.keep.counts,
            [
                (KeepKind::Last, 1),
                (KeepKind::Hourly, 2),
                (KeepKind::Daily, 3),
                (KeepKind::Weekly, 4),
                (KeepKind::Monthly, 5),
                (KeepKind::Yearly, 100_000)
            ]
        );
        assert_eq!(c.passphrase_file, Path::new("/root/pass"));
        assert_eq!(c.key_file.as_deref(), Some(Path::new("/root/key")));
        assert_eq!(c.disposable, "backup-dvm");
        assert_eq!(c.state_image, Path::new("/var/img"));
        assert_eq!(c.state_size_mib, 1 << 20);
        assert_eq!(c.shutdown_timeout, 3600);
        assert_eq!(c.run_dir, Path::new("/run/x"));
        assert_eq!(c.excludes, ["a", "b"]);
        assert_eq!(c.qubes, ["q1", "q2", "q3"]);
        assert_eq!(c.compression, "lz4");
        assert_eq!(c.admin_repository, None);
    }

    #[test]
    fn yes_and_no_have_three_spellings_each() {
        for (v, want) in [
            ("yes", true),
            ("true", true),
            ("1", true),
            ("no", false),
            ("false", false),
            ("0", false),
        ] {
            let c = p(&format!("{BASE}persistent_state = {v}\n")).unwrap();
            assert_eq!(c.persistent_state, want, "{v}");
        }
        assert_eq!(
            bad_line("persistent_state = on"),
            ("persistent_state".into(), "must be yes or no".into())
        );
    }

    #[test]
    fn numbers_are_bounded_at_both_ends() {
        for (key, max) in [
            ("state_size_mib", 1u64 << 20),
            ("shutdown_timeout", 3600),
            ("keep_weekly", 100_000),
        ] {
            let want = (key.to_string(), format!("must be a number from 1 to {max}"));
            assert_eq!(bad_line(&format!("{key} = 0")), want);
            assert_eq!(bad_line(&format!("{key} = {}", max + 1)), want);
            assert_eq!(bad_line(&format!("{key} = -1")), want);
            assert_eq!(bad_line(&format!("{key} = +1")), want);
            p(&format!("{BASE}{key} = 1\n")).unwrap();
            p(&format!("{BASE}{key} = {max}\n")).unwrap();
        }
    }

    #[test]
    fn paths_must_be_absolute_without_dot_dot() {
        for key in ["passphrase_file", "key_file", "state_image", "run_dir"] {
            for bad in ["etc/x", "/etc/../x", "/etc/.."] {
                assert_eq!(
                    bad_line(&format!("{key} = {bad}")),
                    (key.into(), "must be an absolute path without '..'".into()),
                    "{key} = {bad}"
                );
            }
            p(&format!("{BASE}{key} = /etc/..x/x..\n")).unwrap();
        }
    }

    #[test]
    fn each_global_value_is_checked() {
        for (line, key) in [
            ("admin_repository = ssh://b", "admin_repository"),
            ("tag = -x", "tag"),
            ("exclude_qubes = a/b", "exclude_qubes"),
            ("compression = LZ4", "compression"),
            ("exclude = a\tb", "exclude"),
            ("keep_within = 7", "keep_within"),
            ("disposable = -dvm", "disposable"),
            ("default_excludes = maybe", "default_excludes"),
            ("keep_yearly = x", "keep_yearly"),
            ("mode = tar", "mode"),
            ("qubes =", "qubes"),
        ] {
            assert_eq!(bad_line(line).0, key, "{line}");
        }
        assert_eq!(bad_line("qubes =").1, "has no value");
    }

    #[test]
    fn per_qube_sections_take_only_per_qube_keys_once_each() {
        let c = p(&format!(
            "{BASE}mode = files\n[qube a]\nmode = image\ncompression = lz4\nexclude = x\nexclude = y\n\
             default_excludes = yes\n[qube  b ]\nmode = files\n"
        ))
        .unwrap();
        assert_eq!(
            c.qube("a"),
            Some(&QubeConfig {
                mode: Some(Mode::Image),
                compression: Some("lz4".into()),
                excludes: vec!["x".into(), "y".into()],
                default_excludes: Some(true),
            })
        );
        assert_eq!(c.qube("b").unwrap().mode, Some(Mode::Files));
        assert_eq!(c.qube("c"), None);
        assert_eq!(c.mode, Mode::Files);
        let in_section = |line: &str| {
            let (n, key, why) = line_err(&format!("{BASE}[qube a]\n{line}\n"));
            assert_eq!(n, 3, "{line}");
            (key, why)
        };
        assert_eq!(
            line_err(&format!("{BASE}[qube a]\nmode = image\nmode = files\n")),
            (4, "mode".into(), "given twice".into()),
            "once per section"
        );
        assert_eq!(
            in_section("keep_daily = 7"),
            (
                "keep_daily".into(),
                "not allowed in [qube a]; put it before the first section".into()
            )
        );
        for (line, key) in [
            ("mode = tar", "mode"),
            ("compression = zstd;x", "compression"),
            ("exclude = a\tb", "exclude"),
            ("default_excludes = 2", "default_excludes"),
        ] {
            assert_eq!(in_section(line).0, key, "{line}");
        }
    }

    #[test]
    fn section_headers_are_checked() {
        for bad in ["[qube work", "[vm work]", "[qube -x]", "[qube ]"] {
            assert_eq!(bad_line(bad).0, "(section)", "{bad}");
        }
        let (n, key, why) = line_err(&format!("{BASE}[qube a]\n[qube a]\n"));
        assert_eq!(
            (n, key.as_str(), why.as_str()),
            (3, "(section)", "[qube a] given twice")
        );
    }

    #[test]
    fn tabs_are_white_space_but_other_control_characters_are_refused() {
        p(&format!("{BASE}mode\t=\tfiles\n")).unwrap();
        assert_eq!(
            bad_line("mode = files\u{7f}"),
            ("(line)".into(), "contains a control character".into())
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_refused() {
        let e = parse(Path::new("/c"), b"repository = ssh://b/./r\n# \xff\n").unwrap_err();
        assert_eq!(
            e,
            ConfigError::Io {
                file: "/c".into(),
                err: "not UTF-8 text".into()
            }
        );
    }

    #[test]
    fn errors_tell_the_user_what_to_do() {
        let f = PathBuf::from("/etc/c");
        assert_eq!(
            ConfigError::Io {
                file: f.clone(),
                err: "gone".into()
            }
            .to_string(),
            "/etc/c: gone"
        );
        assert_eq!(
            ConfigError::Unsafe {
                file: f.clone(),
                why: "is owned by uid 1000, not by root".into()
            }
            .to_string(),
            "/etc/c: is owned by uid 1000, not by root; it holds backup settings: chown root:root and chmod 0600 it"
        );
        assert_eq!(
            ConfigError::Missing {
                file: f,
                key: "repository"
            }
            .to_string(),
            "/etc/c: 'repository' is required (see docs/USAGE.md)"
        );
    }

    /// A fresh directory for one test's files.
    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("qubes-borg-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    fn write(path: &Path, text: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn unsafe_why(path: &Path) -> String {
        match load(path) {
            Err(ConfigError::Unsafe { why, .. }) => why,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn load_reads_a_private_file_of_up_to_256_kib() {
        let d = scratch("size");
        let f = d.join("backup.conf");
        let mut text = BASE.as_bytes().to_vec();
        text.resize(256 * 1024 - 1, b'#');
        text.push(b'\n');
        write(&f, &text, 0o600);
        assert_eq!(load(&f).unwrap().repository, "ssh://b/./r");
        text.insert(0, b'\n');
        write(&f, &text, 0o600);
        assert_eq!(unsafe_why(&f), "is larger than 262144 bytes");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn load_refuses_a_file_others_may_write() {
        let d = scratch("mode");
        let f = d.join("backup.conf");
        for mode in [0o644, 0o640, 0o604] {
            write(&f, BASE.as_bytes(), mode);
            assert!(load(&f).is_ok(), "{mode:o}");
        }
        for mode in [0o620, 0o602, 0o660] {
            write(&f, BASE.as_bytes(), mode);
            assert_eq!(
                unsafe_why(&f),
                "is writable by group or others (chmod go-w)",
                "{mode:o}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn load_refuses_a_file_owned_by_another_user() {
        let d = scratch("owner");
        let f = d.join("backup.conf");
        write(&f, BASE.as_bytes(), 0o600);
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 0 { 1000 } else { 0 };
        if std::os::unix::fs::chown(&f, Some(other), None).is_err() {
            eprintln!("skipped: cannot chown (not root)");
            return;
        }
        let not_root = if me == 0 { "" } else { " or uid" };
        assert!(
            unsafe_why(&f).starts_with(&format!("is owned by uid {other}, not by root{not_root}")),
            "{}",
            unsafe_why(&f)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn load_refuses_what_is_not_a_regular_file() {
        let d = scratch("kind");
        assert_eq!(unsafe_why(&d), "is not a regular file");
        assert!(matches!(
            load(&d.join("missing")),
            Err(ConfigError::Io { err, .. }) if err == "does not exist"
        ));
        let link = d.join("link.conf");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert_eq!(unsafe_why(&link), "is a symbolic link");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/backup.conf")).unwrap();
        p(std::str::from_utf8(&text).unwrap()).unwrap();
    }
}
