//! dom0: the command line of `qvm-backup-borg`, parsed into a `Command` (pure: the program acts
//! on it). One parser per subcommand; every qube and archive name is checked here.

use std::path::PathBuf;

use super::config;
use super::init::InitOptions;
use super::restore::RestoreOptions;
use super::run::Options;
use super::server::{check_fingerprint, ServerOptions};
use crate::job::spec;
use crate::validate;

pub const USAGE: &str =
    "usage: qvm-backup-borg backup [--config FILE] [--dry-run] [--shutdown] [QUBE...]
  Backs up the qubes chosen in /etc/qubes-borg/backup.conf (or the QUBEs named) with borg,
  through the disposable sys-backup-mnt. See docs/USAGE.md.
  --config FILE  another configuration file
  --dry-run      show the plan, change nothing
  --shutdown     shut running qubes down first (and start them again after)
usage: qvm-backup-borg list [--config FILE] [QUBE]
  Lists the archives (of QUBE, or of every qube) with their dates and sizes.
usage: qvm-backup-borg restore [--config FILE] QUBE [--archive A] [--as NAME] [--replace]
  Recreates QUBE from its newest archive (or A) as a new qube NAME (default
  QUBE-restored-YYYYMMDD) with its saved settings; --replace overwrites the private
  volume of an existing halted qube NAME.
usage: qvm-backup-borg init [--config FILE] [--encryption keyfile-blake2|repokey-blake2] [--yes]
         [--repository ssh://NAME/PATH] [--host HOST --user USER [--port N] [--key-set NAME] [--quota SIZE]
          [--host-key-fingerprint SHA256:...] [--admin]]
  First setup: with --host, makes the vault's key set and prints its authorized_keys line,
  pins the server's host key (fetched through sys-backup, confirmed) and writes the
  destination of backup.conf's repository in sys-backup; then initialises the repository
  (left alone if it exists); keyfile mode (default) keeps the key in dom0 (key_file); exports
  the key next to backup.conf. --repository writes backup.conf's repository (makes the file).
  --admin also the full-access key set `admin` (destination NAME-admin, admin_repository).
  --yes          change configuration files without asking";

/// What the command line asks for.
pub enum Command {
    Help,
    Backup {
        config: PathBuf,
        opts: Options,
    },
    List {
        config: PathBuf,
        qube: Option<String>,
    },
    Restore {
        config: PathBuf,
        opts: RestoreOptions,
    },
    Init {
        config: PathBuf,
        opts: InitOptions,
    },
}

/// Parses `args` (without the program name). `Err` is the message for a usage error.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let (cmd, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => {
            return Err(format!(
                "expected a command (backup, list, restore, init)\n{USAGE}"
            ))
        }
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    match cmd {
        "backup" => backup(rest),
        "list" => list(rest),
        "restore" => restore(rest),
        "init" => init(rest),
        "--help" | "-h" => Ok(Command::Help),
        _ => Err(format!(
            "expected a command (backup, list, restore, init)\n{USAGE}"
        )),
    }
}

/// Walks the arguments: `--config FILE` is taken here, every other option goes to `option`
/// (with the iterator, for its value), and every operand to `operand`.
struct Args<'a> {
    it: std::slice::Iter<'a, String>,
    config: PathBuf,
}

impl<'a> Args<'a> {
    fn new(args: &'a [String]) -> Self {
        Args {
            it: args.iter(),
            config: PathBuf::from(config::DEFAULT_PATH),
        }
    }

    /// The next option or operand; `--config` is consumed on the way.
    fn next(&mut self) -> Result<Option<&'a str>, String> {
        loop {
            match self.it.next().map(String::as_str) {
                Some("--config") => self.config = PathBuf::from(self.value("--config", "a file")?),
                other => return Ok(other),
            }
        }
    }

    /// The value of option `opt`.
    fn value(&mut self, opt: &str, what: &str) -> Result<&'a str, String> {
        self.it
            .next()
            .map(String::as_str)
            .ok_or_else(|| format!("{opt} needs {what}"))
    }
}

fn unknown(opt: &str) -> String {
    format!("unknown option {opt}\n{USAGE}")
}

/// A qube name from the command line.
fn qube(what: &str, s: &str) -> Result<String, String> {
    spec::check_qube(s).map_err(|w| format!("{what} '{s}' {w}"))?;
    Ok(s.to_string())
}

fn backup(args: &[String]) -> Result<Command, String> {
    let mut a = Args::new(args);
    let mut opts = Options {
        dry_run: false,
        shutdown: false,
        qubes: vec![],
    };
    while let Some(x) = a.next()? {
        match x {
            "--dry-run" => opts.dry_run = true,
            "--shutdown" => opts.shutdown = true,
            s if s.starts_with('-') => return Err(unknown(s)),
            s => opts.qubes.push(qube("qube name", s)?),
        }
    }
    Ok(Command::Backup {
        config: a.config,
        opts,
    })
}

fn list(args: &[String]) -> Result<Command, String> {
    let mut a = Args::new(args);
    let mut one = None;
    while let Some(x) = a.next()? {
        match x {
            s if s.starts_with('-') => return Err(unknown(s)),
            s => {
                if one.replace(qube("qube name", s)?).is_some() {
                    return Err("list takes at most one qube".into());
                }
            }
        }
    }
    Ok(Command::List {
        config: a.config,
        qube: one,
    })
}

fn restore(args: &[String]) -> Result<Command, String> {
    let mut a = Args::new(args);
    let (mut name, mut archive, mut as_name, mut replace) = (None, None, None, false);
    while let Some(x) = a.next()? {
        match x {
            "--archive" => {
                let v = a.value("--archive", "a name")?;
                if spec::check_archive(v).is_err() {
                    return Err(format!("archive name '{v}' is not valid"));
                }
                archive = Some(v.to_string());
            }
            "--as" => as_name = Some(qube("qube name", a.value("--as", "a qube name")?)?),
            "--replace" => replace = true,
            s if s.starts_with('-') => return Err(unknown(s)),
            s => {
                if name.replace(qube("qube name", s)?).is_some() {
                    return Err("restore takes one qube".into());
                }
            }
        }
    }
    let qube = name.ok_or_else(|| format!("restore needs a qube\n{USAGE}"))?;
    Ok(Command::Restore {
        config: a.config,
        opts: RestoreOptions {
            qube,
            archive,
            as_name,
            replace,
        },
    })
}

fn init(args: &[String]) -> Result<Command, String> {
    let mut a = Args::new(args);
    let mut opts = InitOptions {
        encryption: spec::Encryption::KeyfileBlake2,
        yes: false,
        server: None,
        repository: None,
    };
    let mut admin = false;
    let (mut host, mut user, mut port, mut key_set, mut quota, mut fingerprint) = (
        None,
        None,
        22u16,
        "default".to_string(),
        "1T".to_string(),
        None,
    );
    while let Some(x) = a.next()? {
        match x {
            "--repository" => {
                let v = a.value("--repository", "ssh://NAME/PATH")?;
                spec::check_repository(v).map_err(|e| format!("--repository {e}"))?;
                opts.repository = Some(v.to_string());
            }
            "--host" => {
                let v = a.value("--host", "a host name")?;
                validate::host(v).map_err(|e| format!("--host: {e}"))?;
                host = Some(v.to_string());
            }
            "--user" => {
                let v = a.value("--user", "a user name")?;
                validate::user(v).map_err(|e| format!("--user: {e}"))?;
                user = Some(v.to_string());
            }
            "--port" => {
                port = validate::port(a.value("--port", "a number")?)
                    .map_err(|e| format!("--port: {e}"))?;
            }
            "--key-set" => {
                let v = a.value("--key-set", "a name")?;
                validate::name("key set", v).map_err(|e| format!("--key-set: {e}"))?;
                key_set = v.to_string();
            }
            "--quota" => {
                let v = a.value("--quota", "a size")?;
                check_quota(v)?;
                quota = v.to_string();
            }
            "--host-key-fingerprint" => {
                let v = a.value("--host-key-fingerprint", "SHA256:...")?;
                check_fingerprint(v).map_err(|e| format!("--host-key-fingerprint {e}"))?;
                fingerprint = Some(v.to_string());
            }
            "--encryption" => {
                let v = a.value("--encryption", "a mode")?;
                opts.encryption = spec::Encryption::parse(v).ok_or_else(|| {
                    format!("--encryption must be keyfile-blake2 or repokey-blake2, not '{v}'")
                })?;
            }
            "--yes" => opts.yes = true,
            "--admin" => admin = true,
            s if s.starts_with('-') => return Err(unknown(s)),
            s => return Err(format!("init takes no operand ('{s}')")),
        }
    }
    opts.server = match (host, user) {
        (Some(host), Some(user)) => Some(ServerOptions {
            host,
            user,
            port,
            key_set,
            quota,
            fingerprint,
            admin,
        }),
        (None, None) if fingerprint.is_none() => None,
        _ => {
            return Err(
                "init: --host and --user go together (and --host-key-fingerprint needs them)"
                    .into(),
            )
        }
    };
    Ok(Command::Init {
        config: a.config,
        opts,
    })
}

/// borg's `--storage-quota`: 1-15 digits (no leading zero) and an optional K, M, G, T or P
/// (what qubes-borg-keygen accepts).
fn check_quota(v: &str) -> Result<(), String> {
    let digits = v.strip_suffix(['K', 'M', 'G', 'T', 'P']).unwrap_or(v);
    if digits.is_empty()
        || digits.len() > 15
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "--quota must be a whole number with an optional K, M, G, T or P (e.g. 500G), not '{v}'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn config_is_taken_anywhere_and_operands_are_checked_qube_names() {
        match parse(&args("backup work --config /tmp/b.conf --dry-run vault")).unwrap() {
            Command::Backup { config, opts } => {
                assert_eq!(config, PathBuf::from("/tmp/b.conf"));
                assert!(opts.dry_run && !opts.shutdown);
                assert_eq!(opts.qubes, ["work", "vault"]);
            }
            _ => panic!("not backup"),
        }
        let e = parse(&args("backup -- work")).err().unwrap();
        assert!(e.starts_with("unknown option --"), "{e}");
        let e = parse(&args("backup wo/rk")).err().unwrap();
        assert!(e.starts_with("qube name 'wo/rk'"), "{e}");
    }

    #[test]
    fn an_option_missing_its_value_is_a_usage_error() {
        assert_eq!(
            parse(&args("list --config")).err().unwrap(),
            "--config needs a file"
        );
        assert_eq!(
            parse(&args("restore work --as")).err().unwrap(),
            "--as needs a qube name"
        );
    }

    #[test]
    fn restore_takes_exactly_one_qube_and_a_valid_archive_name() {
        assert!(parse(&args("restore"))
            .err()
            .unwrap()
            .starts_with("restore needs a qube"));
        assert_eq!(
            parse(&args("restore a b")).err().unwrap(),
            "restore takes one qube"
        );
        let e = parse(&args("restore a --archive ../x")).err().unwrap();
        assert_eq!(e, "archive name '../x' is not valid");
        match parse(&args(
            "restore a --archive a-2026-11-29T18:00:00Z --as b --replace",
        ))
        .unwrap()
        {
            Command::Restore { opts, .. } => {
                assert_eq!(opts.qube, "a");
                assert_eq!(opts.archive.as_deref(), Some("a-2026-11-29T18:00:00Z"));
                assert_eq!(opts.as_name.as_deref(), Some("b"));
                assert!(opts.replace);
            }
            _ => panic!("not restore"),
        }
    }

    #[test]
    fn list_takes_at_most_one_qube_and_help_wins_anywhere() {
        assert_eq!(
            parse(&args("list a b")).err().unwrap(),
            "list takes at most one qube"
        );
        assert!(matches!(parse(&args("list a --help")), Ok(Command::Help)));
        assert!(matches!(parse(&args("--help")), Ok(Command::Help)));
        assert!(parse(&args(""))
            .err()
            .unwrap()
            .starts_with("expected a command"));
        assert!(parse(&args("frobnicate"))
            .err()
            .unwrap()
            .starts_with("expected a command"));
    }

    #[test]
    fn init_defaults_to_keyfile_mode_and_checks_the_encryption() {
        match parse(&args("init")).unwrap() {
            Command::Init { opts, .. } => {
                assert_eq!(opts.encryption, spec::Encryption::KeyfileBlake2);
                assert!(!opts.yes);
            }
            _ => panic!("not init"),
        }
        match parse(&args("init --encryption repokey-blake2 --yes")).unwrap() {
            Command::Init { opts, .. } => {
                assert_eq!(opts.encryption, spec::Encryption::RepokeyBlake2);
                assert!(opts.yes);
            }
            _ => panic!("not init"),
        }
        match parse(&args(
            "init --host 10.0.0.1 --user borg --port 23 --quota 500G --host-key-fingerprint SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ))
        .unwrap()
        {
            Command::Init { opts, .. } => {
                let s = opts.server.unwrap();
                assert_eq!((s.host.as_str(), s.user.as_str(), s.port), ("10.0.0.1", "borg", 23));
                assert_eq!((s.key_set.as_str(), s.quota.as_str()), ("default", "500G"));
                assert!(s.fingerprint.is_some());
            }
            _ => panic!("not init"),
        }
        for bad in [
            "init --host h",
            "init --user u",
            "init --host -oProxyCommand=x --user u",
            "init --host h --user u --quota 0G",
            "init --host h --user u --quota 5X",
            "init --host h --user u --host-key-fingerprint MD5:aa",
            "init --host h --user u --key-set ../x",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
        let e = parse(&args("init --encryption none")).err().unwrap();
        assert!(e.starts_with("--encryption must be"), "{e}");
        assert!(parse(&args("init x")).is_err());
    }
}
