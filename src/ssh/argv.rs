//! sys-backup-mnt and sys-backup: strict parser of the command line borg gives its `BORG_RSH`
//! program.
//!
//! borg 1.2 and 1.4 build it the same way (`borgbackup/borg:src/borg/remote.py`,
//! `RemoteRepository.ssh_cmd()` and `borg_cmd()`, identical on the 1.2-maint and 1.4-maint
//! branches):
//!
//! ```text
//! BORG_RSH [-p PORT] [USER@]HOST REMOTE_PATH serve [--debug|--info|--error|--critical]
//!          [--debug-topic=TOPIC]... [--storage-quota=BYTES]
//! ```
//!
//! * `-p PORT` only when the repository URL has a port, as two words.
//! * `USER@` only when the URL has a user.
//! * `REMOTE_PATH` is `--remote-path`, else `$BORG_REMOTE_PATH`, else `borg`.
//! * No log option means "warning" (the default); borg never sends `--warning`.
//! * A debug topic is sent only if it contains `repository`; a topic without a dot is prefixed
//!   with `borg.debug.`.
//! * `--storage-quota=` carries the parsed quota in bytes (an integer), only when non-zero.
//!
//! This parser accepts exactly that shape, in that order, and nothing else. The same parser
//! reads the request header in the service (`header.rs`), so the client and the service can
//! never disagree about what is allowed.

use crate::validate::{self, Invalid};
use std::fmt;

/// Most `--debug-topic=` options accepted (borg sends one per `--debug-topic` the user gave).
pub const MAX_DEBUG_TOPICS: usize = 8;
/// Longest debug topic.
pub const MAX_TOPIC: usize = 64;

/// The log level option borg passes to `borg serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Error,
    Critical,
}

impl LogLevel {
    pub fn option(self) -> &'static str {
        match self {
            LogLevel::Debug => "--debug",
            LogLevel::Info => "--info",
            LogLevel::Error => "--error",
            LogLevel::Critical => "--critical",
        }
    }
    fn from_option(s: &str) -> Option<Self> {
        Some(match s {
            "--debug" => LogLevel::Debug,
            "--info" => LogLevel::Info,
            "--error" => LogLevel::Error,
            "--critical" => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// The vetted options of `borg serve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeOptions {
    pub log_level: Option<LogLevel>,
    pub debug_topics: Vec<String>,
    pub storage_quota: Option<u64>,
}

impl ServeOptions {
    /// The options as words, in borg's order. Every word is shell-safe (allowlisted bytes).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(l) = self.log_level {
            v.push(l.option().to_string());
        }
        for t in &self.debug_topics {
            v.push(format!("--debug-topic={t}"));
        }
        if let Some(q) = self.storage_quota {
            v.push(format!("--storage-quota={q}"));
        }
        v
    }
}

/// A parsed, vetted `BORG_RSH` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorgArgv {
    pub port: Option<u16>,
    pub user: Option<String>,
    /// The destination name (borg's "host").
    pub name: String,
    /// The remote path borg asked for (`borg` unless `--remote-path`/`BORG_REMOTE_PATH`).
    pub remote_path: String,
    pub serve: ServeOptions,
}

impl BorgArgv {
    /// The command line as words, in borg's order (what `parse` accepts back).
    pub fn to_words(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(p) = self.port {
            v.push("-p".to_string());
            v.push(p.to_string());
        }
        match &self.user {
            Some(u) => v.push(format!("{u}@{}", self.name)),
            None => v.push(self.name.clone()),
        }
        v.push(self.remote_path.clone());
        v.push("serve".to_string());
        v.extend(self.serve.to_args());
        v
    }
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgvError {
    /// Nothing after the program's own options.
    Empty,
    /// A word that is not where borg would put it. Position is 1-based among borg's words.
    Unexpected { pos: usize, word: String },
    /// The line ended before `what`.
    Missing(&'static str),
    /// A word is in the right place but its value is not allowed.
    Invalid { pos: usize, err: Invalid },
    /// A word is not valid UTF-8.
    NotUtf8 { pos: usize },
    /// A second log level option, or too many debug topics, or a second quota.
    Repeated { pos: usize, word: String },
}

impl fmt::Display for ArgvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgvError::Empty => write!(
                f,
                "no command line: expected borg's \"[-p PORT] [USER@]NAME borg serve [OPTIONS]\""
            ),
            ArgvError::Unexpected { pos, word } => write!(
                f,
                "refusing word {pos} '{}': not part of the 'borg serve' command line borg builds",
                validate::printable(word.as_bytes(), 80)
            ),
            ArgvError::Missing(what) => write!(f, "command line ends before {what}"),
            ArgvError::Invalid { pos, err } => write!(f, "refusing word {pos}: {err}"),
            ArgvError::NotUtf8 { pos } => write!(f, "refusing word {pos}: not valid UTF-8"),
            ArgvError::Repeated { pos, word } => write!(
                f,
                "refusing word {pos} '{}': repeated or too many",
                validate::printable(word.as_bytes(), 80)
            ),
        }
    }
}

impl std::error::Error for ArgvError {}

/// Parse borg's words (everything after the program name and the program's own options).
pub fn parse<S: AsRef<str>>(untrusted_words: &[S]) -> Result<BorgArgv, ArgvError> {
    let untrusted_words: Vec<&str> = untrusted_words.iter().map(|w| w.as_ref()).collect();
    if untrusted_words.is_empty() {
        return Err(ArgvError::Empty);
    }
    let mut i = 0;
    let unexpected = |i: usize| ArgvError::Unexpected {
        pos: i + 1,
        word: untrusted_words[i].to_string(),
    };
    let invalid = |i: usize, err: Invalid| ArgvError::Invalid { pos: i + 1, err };

    // [-p PORT]
    let mut port = None;
    if untrusted_words[0] == "-p" {
        let p = untrusted_words
            .get(1)
            .ok_or(ArgvError::Missing("the port after -p"))?;
        port = Some(validate::port(p).map_err(|e| invalid(1, e))?);
        i = 2;
    } else if untrusted_words[0].starts_with('-') {
        return Err(unexpected(0));
    }

    // [USER@]NAME
    let target = *untrusted_words
        .get(i)
        .ok_or(ArgvError::Missing("the destination name"))?;
    if target.starts_with('-') {
        return Err(unexpected(i));
    }
    let (user, name) = match target.split_once('@') {
        Some((u, n)) => {
            validate::user(u).map_err(|e| invalid(i, e))?;
            (Some(u.to_string()), n)
        }
        None => (None, target),
    };
    validate::name("destination name", name).map_err(|e| invalid(i, e))?;
    i += 1;

    // REMOTE_PATH
    let rp = *untrusted_words
        .get(i)
        .ok_or(ArgvError::Missing("the remote borg path"))?;
    validate::path_word("remote borg path", rp).map_err(|e| invalid(i, e))?;
    i += 1;

    // serve
    match untrusted_words.get(i) {
        None => return Err(ArgvError::Missing("'serve'")),
        Some(&"serve") => i += 1,
        Some(_) => return Err(unexpected(i)),
    }

    // Options, in borg's order: level, topics, quota.
    let mut serve = ServeOptions::default();
    let mut stage = 0; // 0: nothing yet, 1: after the level or a topic, 2: after the quota
    while i < untrusted_words.len() {
        let w = untrusted_words[i];
        let repeated = || ArgvError::Repeated {
            pos: i + 1,
            word: w.to_string(),
        };
        if let Some(level) = LogLevel::from_option(w) {
            if stage > 0 {
                return Err(repeated());
            }
            serve.log_level = Some(level);
            stage = 1;
        } else if let Some(topic) = w.strip_prefix("--debug-topic=") {
            if stage > 1 {
                return Err(unexpected(i));
            }
            if serve.debug_topics.len() >= MAX_DEBUG_TOPICS {
                return Err(repeated());
            }
            check_topic(topic).map_err(|e| invalid(i, e))?;
            serve.debug_topics.push(topic.to_string());
            stage = 1;
        } else if let Some(q) = w.strip_prefix("--storage-quota=") {
            if stage > 1 {
                return Err(repeated());
            }
            serve.storage_quota = Some(check_quota(q).map_err(|e| invalid(i, e))?);
            stage = 2;
        } else {
            return Err(unexpected(i));
        }
        i += 1;
    }

    Ok(BorgArgv {
        port,
        user,
        name: name.to_string(),
        remote_path: rp.to_string(),
        serve,
    })
}

/// A debug topic as borg forwards it: `[A-Za-z0-9_.]`, starts with a letter, contains
/// `repository` (borg forwards no other topic to the server).
fn check_topic(t: &str) -> Result<(), Invalid> {
    validate::check_word("debug topic", t, MAX_TOPIC, |b| {
        b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
    })?;
    if !t.as_bytes()[0].is_ascii_alphabetic() {
        return Err(Invalid {
            what: "debug topic",
            why: "does not start with a letter",
        });
    }
    if !t.contains("repository") {
        return Err(Invalid {
            what: "debug topic",
            why: "is not a repository topic (borg forwards only those)",
        });
    }
    Ok(())
}

/// A storage quota as borg forwards it: the byte count, decimal, no leading zero, non-zero.
fn check_quota(q: &str) -> Result<u64, Invalid> {
    let bad = Invalid {
        what: "storage quota",
        why: "is not a byte count (1 to 20 decimal digits, no leading zero)",
    };
    if q.len() > 20 || !q.bytes().all(|b| b.is_ascii_digit()) || q.starts_with('0') {
        return Err(bad);
    }
    // An empty quota passes the checks above and fails here, with the same message.
    q.parse::<u64>().map_err(|_| bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<BorgArgv, ArgvError> {
        parse(&s.split(' ').collect::<Vec<_>>())
    }

    #[test]
    fn full_borg_shape_round_trips() {
        let a = p("-p 2222 bob@nas borg serve --debug --debug-topic=borg.debug.repository --debug-topic=repository.compaction --storage-quota=5000000000").unwrap();
        assert_eq!(a.port, Some(2222));
        assert_eq!(a.user.as_deref(), Some("bob"));
        assert_eq!(a.name, "nas");
        assert_eq!(a.remote_path, "borg");
        assert_eq!(a.serve.log_level, Some(LogLevel::Debug));
        assert_eq!(a.serve.debug_topics.len(), 2);
        assert_eq!(a.serve.storage_quota, Some(5_000_000_000));
        assert_eq!(parse(&a.to_words()).unwrap(), a);
    }

    #[test]
    fn options_out_of_borg_order_are_refused() {
        assert!(p("nas borg serve --storage-quota=100000000 --info").is_err());
        assert!(p("nas borg serve --debug-topic=borg.debug.repository --debug").is_err());
        assert!(p("nas borg serve --info --info").is_err());
        assert!(p("nas borg serve --info --debug").is_err());
        assert!(p("nas borg serve --storage-quota=100000000 --storage-quota=100000000").is_err());
    }

    #[test]
    fn values_are_vetted() {
        assert!(p("nas borg serve --debug-topic=cache").is_err());
        assert!(p("nas borg serve --debug-topic=repository;id").is_err());
        assert!(p("nas borg serve --storage-quota=10G").is_err());
        assert!(p("nas borg serve --storage-quota=0").is_err());
        assert!(p("nas borg serve --warning").is_err());
        assert!(p("nas borg serve --umask=077").is_err());
        assert!(p("-p 0 nas borg serve").is_err());
        assert!(p("-p").is_err());
        assert!(p("a@b@nas borg serve").is_err());
        assert!(p("nas borg").is_err());
        assert!(p("nas").is_err());
    }

    fn err(s: &str) -> ArgvError {
        p(s).unwrap_err()
    }

    fn unexpected(pos: usize, word: &str) -> ArgvError {
        ArgvError::Unexpected {
            pos,
            word: word.into(),
        }
    }

    fn invalid_why(s: &str) -> (usize, &'static str, &'static str) {
        match err(s) {
            ArgvError::Invalid { pos, err } => (pos, err.what, err.why),
            other => panic!("want Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_log_level_borg_sends_is_accepted_and_round_trips() {
        for (opt, level) in [
            ("--debug", LogLevel::Debug),
            ("--info", LogLevel::Info),
            ("--error", LogLevel::Error),
            ("--critical", LogLevel::Critical),
        ] {
            let a = p(&format!("nas borg serve {opt}")).unwrap();
            assert_eq!(a.serve.log_level, Some(level), "{opt}");
            assert_eq!(level.option(), opt);
            assert_eq!(a.to_words(), ["nas", "borg", "serve", opt]);
        }
        assert_eq!(p("nas borg serve").unwrap().serve, ServeOptions::default());
    }

    #[test]
    fn a_storage_quota_is_plain_decimal_without_sign_or_leading_zero() {
        let quota = |q: &str| p(&format!("nas borg serve --storage-quota={q}"));
        assert_eq!(quota("1").unwrap().serve.storage_quota, Some(1));
        assert_eq!(
            quota("18446744073709551615").unwrap().serve.storage_quota,
            Some(u64::MAX)
        );
        for bad in [
            "+5",
            "+0",
            "-5",
            "0",
            "05",
            "",
            "5\t",
            "0x10",
            "18446744073709551616",
            "100000000000000000000",
        ] {
            assert_eq!(
                invalid_why(&format!("nas borg serve --storage-quota={bad}")),
                (
                    4,
                    "storage quota",
                    "is not a byte count (1 to 20 decimal digits, no leading zero)"
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_debug_topic_after_the_quota_is_refused() {
        assert_eq!(
            err("nas borg serve --storage-quota=1 --debug-topic=repository"),
            unexpected(5, "--debug-topic=repository")
        );
        assert!(p("nas borg serve --debug-topic=repository --storage-quota=1").is_ok());
    }

    #[test]
    fn a_log_level_after_a_topic_or_a_second_quota_is_a_repeat() {
        assert_eq!(
            err("nas borg serve --debug-topic=repository --info"),
            ArgvError::Repeated {
                pos: 5,
                word: "--info".into()
            }
        );
        assert_eq!(
            err("nas borg serve --info --error"),
            ArgvError::Repeated {
                pos: 5,
                word: "--error".into()
            }
        );
        assert_eq!(
            err("nas borg serve --storage-quota=1 --storage-quota=2"),
            ArgvError::Repeated {
                pos: 5,
                word: "--storage-quota=2".into()
            }
        );
    }

    #[test]
    fn at_most_eight_debug_topics_of_at_most_64_bytes() {
        let topics = |n: usize| vec!["--debug-topic=repository"; n].join(" ");
        assert_eq!(
            p(&format!("nas borg serve {}", topics(MAX_DEBUG_TOPICS)))
                .unwrap()
                .serve
                .debug_topics
                .len(),
            MAX_DEBUG_TOPICS
        );
        assert_eq!(
            err(&format!("nas borg serve {}", topics(MAX_DEBUG_TOPICS + 1))),
            ArgvError::Repeated {
                pos: 4 + MAX_DEBUG_TOPICS,
                word: "--debug-topic=repository".into()
            }
        );
        let long = format!("repository{}", "x".repeat(MAX_TOPIC - 10));
        assert!(p(&format!("nas borg serve --debug-topic={long}")).is_ok());
        assert_eq!(
            invalid_why(&format!("nas borg serve --debug-topic={long}x")),
            (4, "debug topic", "is too long")
        );
    }

    #[test]
    fn a_debug_topic_starts_with_a_letter_and_names_the_repository() {
        for bad in ["_repository", "1repository", ".repository"] {
            assert_eq!(
                invalid_why(&format!("nas borg serve --debug-topic={bad}")),
                (4, "debug topic", "does not start with a letter"),
                "{bad}"
            );
        }
        assert_eq!(
            invalid_why("nas borg serve --debug-topic=borg.debug.cache"),
            (
                4,
                "debug topic",
                "is not a repository topic (borg forwards only those)"
            )
        );
        assert_eq!(
            invalid_why("nas borg serve --debug-topic=repository-x"),
            (4, "debug topic", "contains a character that is not allowed")
        );
        assert!(p("nas borg serve --debug-topic=Z_9.repository").is_ok());
    }

    #[test]
    fn each_missing_part_is_named() {
        assert_eq!(parse::<&str>(&[]), Err(ArgvError::Empty));
        assert_eq!(err("-p"), ArgvError::Missing("the port after -p"));
        assert_eq!(err("-p 22"), ArgvError::Missing("the destination name"));
        assert_eq!(err("nas"), ArgvError::Missing("the remote borg path"));
        assert_eq!(err("nas borg"), ArgvError::Missing("'serve'"));
    }

    #[test]
    fn words_out_of_place_are_refused_at_their_position() {
        assert_eq!(
            err("-oProxyCommand=x nas borg serve"),
            unexpected(1, "-oProxyCommand=x")
        );
        assert_eq!(err("-p 22 -oX borg serve"), unexpected(3, "-oX"));
        assert_eq!(err("nas borg list"), unexpected(3, "list"));
        assert_eq!(err("-p 22 nas borg serve --info x"), unexpected(7, "x"));
        assert_eq!(
            err("nas borg serve --umask=077"),
            unexpected(4, "--umask=077")
        );
    }

    #[test]
    fn user_port_name_and_path_values_are_checked_where_they_stand() {
        assert_eq!(
            invalid_why("-p 0 nas borg serve"),
            (2, "port", "has a leading zero")
        );
        assert_eq!(
            invalid_why("-p 22 b;id@nas borg serve"),
            (3, "user", "contains a character that is not allowed")
        );
        assert_eq!(invalid_why("@nas borg serve"), (1, "user", "is empty"));
        assert_eq!(
            invalid_why("u@.nas borg serve"),
            (1, "destination name", "starts with '.'")
        );
        assert_eq!(
            invalid_why("nas ../borg serve"),
            (2, "remote borg path", "contains a '..' component")
        );
        let a = p("-p 1 a.b-c_d@nas /opt/borg-1.4/bin/borg serve").unwrap();
        assert_eq!((a.port, a.user.as_deref()), (Some(1), Some("a.b-c_d")));
        assert_eq!(a.remote_path, "/opt/borg-1.4/bin/borg");
    }

    #[test]
    fn errors_tell_what_was_refused() {
        assert_eq!(
            ArgvError::Empty.to_string(),
            "no command line: expected borg's \"[-p PORT] [USER@]NAME borg serve [OPTIONS]\""
        );
        assert_eq!(
            err("nas borg list").to_string(),
            "refusing word 3 'list': not part of the 'borg serve' command line borg builds"
        );
        assert_eq!(
            err("nas borg").to_string(),
            "command line ends before 'serve'"
        );
        assert_eq!(
            err("-p 0 nas borg serve").to_string(),
            "refusing word 2: port has a leading zero"
        );
        assert_eq!(
            ArgvError::NotUtf8 { pos: 2 }.to_string(),
            "refusing word 2: not valid UTF-8"
        );
        assert_eq!(
            err("nas borg serve --info --info\x1b").to_string(),
            "refusing word 5 '--info?': not part of the 'borg serve' command line borg builds"
        );
        assert_eq!(
            err("nas borg serve --info --info").to_string(),
            "refusing word 5 '--info': repeated or too many"
        );
    }
}
