//! dom0: `qvm-backup-borg`, backups of qubes with borg (docs/USAGE.md).
//! `qvm-backup-borg backup [--config FILE] [--dry-run] [--shutdown] [QUBE...]`
//! `qvm-backup-borg list [--config FILE] [QUBE]`
//! `qvm-backup-borg restore [--config FILE] QUBE [--archive A] [--as NAME] [--replace]`
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;

use qubes_borg::dom0::config;
use qubes_borg::dom0::run::{self, Options, Outcome, Secrets};
use qubes_borg::dom0::{lock, qubes::Real, secrets, signals::Signals};

use qubes_borg::exit::{self, Program};

const EXIT_OK: u8 = exit::OK;
const EXIT_FAILED: u8 = exit::FAILED;
const EXIT_USAGE: u8 = exit::USAGE;
const EXIT_CONFIG: u8 = exit::CONFIG;
const EXIT_LOCKED: u8 = exit::TEMPFAIL;

const USAGE: &str =
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
  volume of an existing halted qube NAME.";

fn help() -> String {
    format!(
        "{USAGE}\nExit status:\n{}",
        exit::help(Program::QvmBackupBorg)
    )
}

fn die(code: u8, msg: &str) -> ! {
    eprintln!("qvm-backup-borg: {msg}");
    std::process::exit(code.into())
}

/// Exits with the status of `outcome` (as `backup` does).
fn finish(outcome: Outcome, q: &Real) -> ! {
    let signal = q
        .signals
        .as_ref()
        .and_then(|s| s.which())
        .map(|s| s as i32 as u8);
    let code = match outcome {
        Outcome::Ok => EXIT_OK,
        Outcome::Failed | Outcome::NoPlan => EXIT_FAILED,
        Outcome::Interrupted => exit::SIGNALED + signal.unwrap_or(nix::libc::SIGINT as u8),
    };
    std::process::exit(code.into())
}

/// `list [--config FILE] [QUBE]`
fn list_main(args: &[String]) -> ! {
    let mut config_path = PathBuf::from(config::DEFAULT_PATH);
    let mut qube: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                config_path = it
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| die(EXIT_USAGE, "--config needs a file"))
            }
            "--help" | "-h" => {
                print!("{}", help());
                std::process::exit(EXIT_OK.into())
            }
            s if s.starts_with('-') => die(EXIT_USAGE, &format!("unknown option {s}\n{USAGE}")),
            s => {
                if let Err(w) = qubes_borg::job::spec::check_qube(s) {
                    die(EXIT_USAGE, &format!("qube name '{s}' {w}"));
                }
                if qube.replace(s.to_string()).is_some() {
                    die(EXIT_USAGE, "list takes at most one qube");
                }
            }
        }
    }
    let cfg = config::load(&config_path).unwrap_or_else(|e| die(EXIT_CONFIG, &e.to_string()));
    let signals = Signals::install()
        .unwrap_or_else(|e| die(exit::OSERR, &format!("cannot set up signal handling: {e}")));
    let lock = lock::acquire(&cfg.run_dir).unwrap_or_else(|e| die(EXIT_LOCKED, &e.to_string()));
    let sec = secrets::load(&cfg).unwrap_or_else(|e| die(EXIT_CONFIG, &e));
    let mut q = Real {
        signals: Some(signals),
    };
    let outcome = qubes_borg::dom0::list::list(
        &cfg,
        qube.as_deref(),
        &sec,
        &mut q,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    drop(lock);
    finish(outcome, &q)
}

/// `restore [--config FILE] QUBE [--archive A] [--as NAME] [--replace]`
fn restore_main(args: &[String]) -> ! {
    use qubes_borg::dom0::restore::{restore, RestoreOptions};
    let mut config_path = PathBuf::from(config::DEFAULT_PATH);
    let (mut qube, mut archive, mut as_name, mut replace) = (None, None, None, false);
    let mut it = args.iter();
    let check = |what: &str, s: &str| {
        if let Err(w) = qubes_borg::job::spec::check_qube(s) {
            die(EXIT_USAGE, &format!("{what} '{s}' {w}"));
        }
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                config_path = it
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| die(EXIT_USAGE, "--config needs a file"))
            }
            "--archive" => {
                let v = it
                    .next()
                    .unwrap_or_else(|| die(EXIT_USAGE, "--archive needs a name"));
                if qubes_borg::job::spec::check_archive(v).is_err() {
                    die(EXIT_USAGE, &format!("archive name '{v}' is not valid"));
                }
                archive = Some(v.clone());
            }
            "--as" => {
                let v = it
                    .next()
                    .unwrap_or_else(|| die(EXIT_USAGE, "--as needs a qube name"));
                check("qube name", v);
                as_name = Some(v.clone());
            }
            "--replace" => replace = true,
            "--help" | "-h" => {
                print!("{}", help());
                std::process::exit(EXIT_OK.into())
            }
            s if s.starts_with('-') => die(EXIT_USAGE, &format!("unknown option {s}\n{USAGE}")),
            s => {
                check("qube name", s);
                if qube.replace(s.to_string()).is_some() {
                    die(EXIT_USAGE, "restore takes one qube");
                }
            }
        }
    }
    let qube = qube.unwrap_or_else(|| die(EXIT_USAGE, &format!("restore needs a qube\n{USAGE}")));
    let cfg = config::load(&config_path).unwrap_or_else(|e| die(EXIT_CONFIG, &e.to_string()));
    let signals = Signals::install()
        .unwrap_or_else(|e| die(exit::OSERR, &format!("cannot set up signal handling: {e}")));
    let lock = lock::acquire(&cfg.run_dir).unwrap_or_else(|e| die(EXIT_LOCKED, &e.to_string()));
    let sec = secrets::load(&cfg).unwrap_or_else(|e| die(EXIT_CONFIG, &e));
    let mut q = Real {
        signals: Some(signals),
    };
    let opts = RestoreOptions {
        qube,
        archive,
        as_name,
        replace,
    };
    let outcome = restore(
        &cfg,
        &opts,
        &sec,
        &mut q,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    drop(lock);
    finish(outcome, &q)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("list") {
        list_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("restore") {
        restore_main(&args[1..]);
    }
    if args.first().map(String::as_str) != Some("backup") {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            print!("{}", help());
            std::process::exit(EXIT_OK.into());
        }
        die(
            EXIT_USAGE,
            &format!("expected a command (backup, list, restore)\n{USAGE}"),
        );
    }
    let mut config_path = PathBuf::from(config::DEFAULT_PATH);
    let mut opts = Options {
        dry_run: false,
        shutdown: false,
        qubes: vec![],
    };
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                config_path = it
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| die(EXIT_USAGE, "--config needs a file"))
            }
            "--dry-run" => opts.dry_run = true,
            "--shutdown" => opts.shutdown = true,
            "--help" | "-h" => {
                print!("{}", help());
                std::process::exit(EXIT_OK.into())
            }
            s if s.starts_with('-') => die(EXIT_USAGE, &format!("unknown option {s}\n{USAGE}")),
            s => {
                if let Err(w) = qubes_borg::job::spec::check_qube(s) {
                    die(EXIT_USAGE, &format!("qube name '{s}' {w}"));
                }
                opts.qubes.push(s.to_string())
            }
        }
    }
    let cfg = config::load(&config_path).unwrap_or_else(|e| die(EXIT_CONFIG, &e.to_string()));
    // Signals first: every thread and child started later sees them blocked/reset.
    let signals = Signals::install()
        .unwrap_or_else(|e| die(exit::OSERR, &format!("cannot set up signal handling: {e}")));
    let lock = if opts.dry_run {
        None
    } else {
        Some(lock::acquire(&cfg.run_dir).unwrap_or_else(|e| die(EXIT_LOCKED, &e.to_string())))
    };
    if let Some(p) = lock.as_ref().and_then(|l| l.stale_pid) {
        eprintln!("qvm-backup-borg: note: lock of an earlier run (pid {p}) was stale; that run ended without cleaning up, its leftovers are undone now");
    }
    let sec = if opts.dry_run {
        Secrets {
            passphrase: vec![],
            key_file: None,
        }
    } else {
        secrets::load(&cfg).unwrap_or_else(|e| die(EXIT_CONFIG, &e))
    };
    let mut q = Real {
        signals: Some(signals),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tty = std::io::stderr().is_terminal();
    let outcome = run::backup(
        &cfg,
        &opts,
        &sec,
        &mut q,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        tty,
        now,
    );
    drop(lock);
    finish(outcome, &q)
}
