//! dom0: the command line of `qvm-backup-borg`, parsed into a `Command` (pure: the program acts
//! on it). One parser per subcommand; every qube and archive name is checked here.

use std::path::PathBuf;

use super::command::backup::Options;
use super::command::check::{CheckOptions, DEFAULT_SPOT};
use super::command::init::InitOptions;
use super::command::restore::RestoreOptions;
use super::command::restore_into::IntoOptions;
use super::config;
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
usage: qvm-backup-borg restore [--config FILE] QUBE --path P [--path P...] --into TARGET
                               [--archive A]
  Delivers the files and folders P (paths in the archive, e.g. home/user/Documents) of
  QUBE's newest archive (or A) into the running qube TARGET, under
  ~/QubesIncoming/borg-restore/ARCHIVE/ (nothing there is overwritten).
usage: qvm-backup-borg info [--config FILE] ARCHIVE
  Shows one archive: qube, date, sizes, files, duration and the settings saved with it.
usage: qvm-backup-borg check [--config FILE] [--verify-data] [--spot N] [QUBE...]
  borg's repository and archive checks, then N (default 20, 0 for none, at most 1000)
  random files of each qube's newest archive compared with its private volume.
  --verify-data  also decrypt and verify every chunk (reads the whole repository)
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
    Info {
        config: PathBuf,
        archive: String,
    },
    Check {
        config: PathBuf,
        opts: CheckOptions,
    },
    RestoreInto {
        config: PathBuf,
        opts: IntoOptions,
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
                "expected a command (backup, list, restore, info, check, init)\n{USAGE}"
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
        "info" => info(rest),
        "check" => check(rest),
        "init" => init(rest),
        "--help" | "-h" => Ok(Command::Help),
        _ => Err(format!(
            "expected a command (backup, list, restore, info, check, init)\n{USAGE}"
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
    let (mut paths, mut into): (Vec<String>, Option<String>) = (Vec::new(), None);
    while let Some(x) = a.next()? {
        match x {
            "--path" => {
                let v = a.value("--path", "a path in the archive")?;
                spec::check_restore_path(v).map_err(|w| {
                    format!(
                        "path '{}' {w}",
                        crate::job::progress::sanitize(v.as_bytes(), 80)
                    )
                })?;
                if paths.len() >= spec::MAX_PATHS {
                    return Err(format!("at most {} --path options", spec::MAX_PATHS));
                }
                paths.push(v.to_string());
            }
            "--into" => {
                if into
                    .replace(qube("qube name", a.value("--into", "a qube name")?)?)
                    .is_some()
                {
                    return Err("--into given twice".into());
                }
            }
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
    match (into, paths.is_empty()) {
        (Some(_), _) if as_name.is_some() || replace => {
            return Err(
                "--into delivers files into a running qube: it takes no --as or --replace".into(),
            )
        }
        (Some(target), false) => {
            return Ok(Command::RestoreInto {
                config: a.config,
                opts: IntoOptions {
                    qube,
                    archive,
                    paths,
                    target,
                },
            })
        }
        (Some(_), true) => return Err("--into needs at least one --path".into()),
        (None, false) => {
            return Err(
                "--path needs --into TARGET (the running qube to deliver the files to)".into(),
            )
        }
        (None, true) => {}
    }
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

fn info(args: &[String]) -> Result<Command, String> {
    let mut a = Args::new(args);
    let mut one = None;
    while let Some(x) = a.next()? {
        match x {
            s if s.starts_with('-') => return Err(unknown(s)),
            s => {
                if super::archives::split_name(s).is_none() {
                    return Err(format!(
                        "archive name '{s}' is not a qubes-borg archive (QUBE-YYYY-MM-DDTHH:MM:SSZ)"
                    ));
                }
                if one.replace(s.to_string()).is_some() {
                    return Err("info takes one archive".into());
                }
            }
        }
    }
    let archive = one.ok_or_else(|| format!("info needs an archive name\n{USAGE}"))?;
    Ok(Command::Info {
        config: a.config,
        archive,
    })
}

fn check(args: &[String]) -> Result<Command, String> {
    let mut a = Args::new(args);
    let mut opts = CheckOptions {
        verify_data: false,
        spot: DEFAULT_SPOT,
        qubes: vec![],
    };
    while let Some(x) = a.next()? {
        match x {
            "--verify-data" => opts.verify_data = true,
            "--spot" => {
                let v = a.value("--spot", "a number")?;
                opts.spot = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= spec::MAX_SPOT && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("--spot needs a number from 0 to {}", spec::MAX_SPOT))?;
            }
            s if s.starts_with('-') => return Err(unknown(s)),
            s => {
                let q = qube("qube name", s)?;
                if !opts.qubes.contains(&q) {
                    opts.qubes.push(q);
                }
            }
        }
    }
    Ok(Command::Check {
        config: a.config,
        opts,
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
    fn info_takes_one_qubes_borg_archive_name() {
        match parse(&args("info work-2026-11-29T18:00:00Z")).unwrap() {
            Command::Info { archive, .. } => assert_eq!(archive, "work-2026-11-29T18:00:00Z"),
            _ => panic!("not info"),
        }
        assert!(parse(&args("info"))
            .err()
            .unwrap()
            .starts_with("info needs an archive name"));
        assert!(parse(&args("info work"))
            .err()
            .unwrap()
            .contains("is not a qubes-borg archive"));
        assert_eq!(
            parse(&args("info a-2026-11-29T18:00:00Z b-2026-11-29T18:00:00Z"))
                .err()
                .unwrap(),
            "info takes one archive"
        );
    }

    #[test]
    fn check_options_are_bounded_and_qubes_checked() {
        match parse(&args("check --verify-data --spot 5 work vault work")).unwrap() {
            Command::Check { opts, .. } => {
                assert!(opts.verify_data);
                assert_eq!(opts.spot, 5);
                assert_eq!(opts.qubes, ["work", "vault"]);
            }
            _ => panic!("not check"),
        }
        match parse(&args("check")).unwrap() {
            Command::Check { opts, .. } => {
                assert!(!opts.verify_data && opts.qubes.is_empty());
                assert_eq!(opts.spot, DEFAULT_SPOT);
            }
            _ => panic!("not check"),
        }
        for bad in [
            "check --spot 1001",
            "check --spot -1",
            "check --spot +5",
            "check --spot x",
        ] {
            assert!(
                parse(&args(bad))
                    .err()
                    .unwrap()
                    .starts_with("--spot needs a number"),
                "{bad}"
            );
        }
        assert!(parse(&args("check wo/rk")).is_err());
    }

    #[test]
    fn restore_into_takes_paths_and_a_target_and_refuses_hostile_paths() {
        match parse(&args(
            "restore work --path home/user/a --into vault --path rw/config/ --archive work-2026-11-29T18:00:00Z",
        ))
        .unwrap()
        {
            Command::RestoreInto { opts, .. } => {
                assert_eq!(opts.qube, "work");
                assert_eq!(opts.paths, ["home/user/a", "rw/config/"]);
                assert_eq!(opts.target, "vault");
                assert_eq!(opts.archive.as_deref(), Some("work-2026-11-29T18:00:00Z"));
            }
            _ => panic!("not restore --into"),
        }
        for (bad, why) in [
            (
                "restore w --path ../etc --into v",
                "path '../etc' must not have",
            ),
            (
                "restore w --path home/../../x --into v",
                "path 'home/../../x' must not have",
            ),
            (
                "restore w --path /etc/shadow --into v",
                "path '/etc/shadow' must be relative",
            ),
            (
                "restore w --path a$(id) --into v",
                "path 'a$(id)' may hold only",
            ),
            ("restore w --path -rf --into v", "path '-rf' must not start"),
            ("restore w --path a --into ../v", "qube name '../v'"),
            ("restore w --path a", "--path needs --into"),
            ("restore w --into v", "--into needs at least one --path"),
            (
                "restore w --path a --into v --as x",
                "--into delivers files",
            ),
            (
                "restore w --path a --into v --replace",
                "--into delivers files",
            ),
            ("restore w --path a --into v --into u", "--into given twice"),
        ] {
            let e = parse(&args(bad)).err().unwrap();
            assert!(e.starts_with(why), "{bad}: {e}");
        }
        let e = parse(&[
            "restore".into(),
            "w".into(),
            "--path".into(),
            "a\u{1b}[2Jb".into(),
        ])
        .err()
        .unwrap();
        assert!(!e.contains('\u{1b}'), "{e:?}");
        let mut many = args("restore w --into v");
        for i in 0..=spec::MAX_PATHS {
            many.extend(["--path".to_string(), format!("p{i}")]);
        }
        assert!(parse(&many).err().unwrap().starts_with("at most 64"));
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

    #[test]
    fn every_command_names_an_unknown_option_as_such() {
        for cmd in [
            "list --frob",
            "restore work --frob",
            "info --frob",
            "check --frob",
            "init --frob",
        ] {
            let e = parse(&args(cmd)).err().unwrap();
            assert!(e.starts_with("unknown option --frob\n"), "{cmd}: {e}");
        }
    }

    #[test]
    fn init_takes_no_operand() {
        assert_eq!(
            parse(&args("init x")).err().unwrap(),
            "init takes no operand ('x')"
        );
    }

    #[test]
    fn a_host_key_fingerprint_without_host_and_user_is_refused() {
        let e = parse(&args(
            "init --host-key-fingerprint SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ))
        .err()
        .unwrap();
        assert!(e.starts_with("init: --host and --user go together"), "{e}");
    }

    fn quota(q: &str) -> Result<String, String> {
        match parse(&args(&format!("init --host h --user u --quota {q}")))? {
            Command::Init { opts, .. } => Ok(opts.server.unwrap().quota),
            _ => panic!("not init"),
        }
    }

    #[test]
    fn quota_is_one_to_fifteen_digits_and_an_optional_unit() {
        assert_eq!(quota("999999999999999").unwrap(), "999999999999999");
        assert_eq!(quota("1").unwrap(), "1");
        for bad in ["1000000000000000", "T", "0G", "5X", "1.5T"] {
            let e = quota(bad).err().unwrap();
            assert!(
                e.starts_with("--quota must be a whole number"),
                "{bad}: {e}"
            );
        }
    }
}
