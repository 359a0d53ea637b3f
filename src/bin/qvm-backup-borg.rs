//! dom0: `qvm-backup-borg`, backups of qubes with borg (docs/USAGE.md): `backup`, `list`,
//! `restore`, `info`, `check`, `init`. The command line is parsed by `dom0::cli`; this program
//! loads what each command needs (configuration, signal handling, the lock, the secrets), runs it
//! and maps the outcome to an exit status.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::Path;

use qubes_borg::dom0::cli::{self, Command, USAGE};
use qubes_borg::dom0::config::{self, Config};
use qubes_borg::dom0::lock::{self, Lock};
use qubes_borg::dom0::run::{Outcome, Secrets};
use qubes_borg::dom0::{
    check, info, init, list, qubes::Real, restore, restore_into, run, secrets, signals::Signals,
};
use qubes_borg::exit::{self, Program};

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

/// What every command that touches the repository sets up first, in this order: signals
/// before anything else starts (every thread and child sees them blocked/reset).
struct Setup {
    cfg: Config,
    q: Real,
    lock: Option<Lock>,
    secrets: Secrets,
}

/// How much a command sets up: a dry run changes nothing, so it neither takes the lock nor
/// reads the secrets; `init` takes the lock but makes the secrets itself.
#[derive(PartialEq)]
enum Needs {
    Nothing,
    Lock,
    LockAndSecrets,
}

fn setup(config_path: &Path, needs: Needs) -> Setup {
    let cfg = config::load(config_path).unwrap_or_else(|e| die(exit::CONFIG, &e.to_string()));
    let signals = Signals::install()
        .unwrap_or_else(|e| die(exit::OSERR, &format!("cannot set up signal handling: {e}")));
    let lock = (needs != Needs::Nothing).then(|| {
        lock::acquire(&cfg.run_dir).unwrap_or_else(|e| die(exit::TEMPFAIL, &e.to_string()))
    });
    if let Some(p) = lock.as_ref().and_then(|l| l.stale_pid) {
        eprintln!("qvm-backup-borg: note: lock of an earlier run (pid {p}) was stale; that run ended without cleaning up, its leftovers are undone now");
    }
    let secrets = if needs == Needs::LockAndSecrets {
        secrets::load(&cfg).unwrap_or_else(|e| die(exit::CONFIG, &e))
    } else {
        Secrets {
            passphrase: vec![],
            key_file: None,
        }
    };
    let q = Real {
        signals: Some(signals),
    };
    Setup {
        cfg,
        q,
        lock,
        secrets,
    }
}

/// `init`'s questions, answered on the terminal (no terminal: no).
fn confirm_on_tty(question: &str) -> bool {
    use std::io::{BufRead, Read, Write};
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        eprintln!("qvm-backup-borg: {question} (no terminal to ask on: use --yes)");
        return false;
    };
    let _ = write!(&tty, "{question} [y/N] ");
    let mut line = String::new();
    let _ = std::io::BufReader::new((&tty).take(256)).read_line(&mut line);
    matches!(line.trim(), "y" | "Y" | "yes" | "YES")
}

/// Seconds since the epoch (archive names, backup_timestamp, file backups).
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Exits with the status of `outcome`, releasing the lock first.
fn finish(outcome: Outcome, s: Setup) -> ! {
    drop(s.lock);
    let signal =
        s.q.signals
            .as_ref()
            .and_then(|s| s.which())
            .map(|s| s as i32 as u8);
    let code = match outcome {
        Outcome::Ok => exit::OK,
        Outcome::Failed | Outcome::NoPlan => exit::FAILED,
        Outcome::Interrupted => exit::SIGNALED + signal.unwrap_or(nix::libc::SIGINT as u8),
    };
    std::process::exit(code.into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = cli::parse(&args).unwrap_or_else(|e| die(exit::USAGE, &e));
    let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
    match command {
        Command::Help => {
            print!("{}", help());
            std::process::exit(exit::OK.into())
        }
        Command::Backup { config, opts } => {
            let needs = if opts.dry_run {
                Needs::Nothing
            } else {
                Needs::LockAndSecrets
            };
            let mut s = setup(&config, needs);
            let tty = std::io::stderr().is_terminal();
            let o = run::backup(&s.cfg, &opts, &s.secrets, &mut s.q, out, err, tty, now());
            finish(o, s)
        }
        Command::List { config, qube } => {
            let mut s = setup(&config, Needs::LockAndSecrets);
            let o = list::list(&s.cfg, qube.as_deref(), &s.secrets, &mut s.q, out, err);
            finish(o, s)
        }
        Command::Init { config, opts } => {
            let now = now();
            init::prepare_config(
                &config,
                opts.repository.as_deref(),
                opts.yes,
                &mut confirm_on_tty,
                err,
                now,
            )
            .unwrap_or_else(|e| die(exit::CONFIG, &e));
            let mut s = setup(&config, Needs::Lock);
            match init::init(&s.cfg, &opts, &mut s.q, &mut confirm_on_tty, out, err, now) {
                init::InitOutcome::Done(o) => finish(o, s),
                init::InitOutcome::HostKeyRefused => {
                    drop(s.lock);
                    std::process::exit(exit::REFUSED.into())
                }
            }
        }
        Command::Restore { config, opts } => {
            let mut s = setup(&config, Needs::LockAndSecrets);
            let o = restore::restore(&s.cfg, &opts, &s.secrets, &mut s.q, out, err);
            finish(o, s)
        }
        Command::Info { config, archive } => {
            let mut s = setup(&config, Needs::LockAndSecrets);
            let o = info::info(&s.cfg, &archive, &s.secrets, &mut s.q, out, err);
            finish(o, s)
        }
        Command::Check { config, opts } => {
            let mut s = setup(&config, Needs::LockAndSecrets);
            let o = check::check(&s.cfg, &opts, &s.secrets, &mut s.q, out, err);
            finish(o, s)
        }
        Command::RestoreInto { config, opts } => {
            let mut s = setup(&config, Needs::LockAndSecrets);
            let tty = std::io::stderr().is_terminal();
            let o = restore_into::restore_into(&s.cfg, &opts, &s.secrets, &mut s.q, out, err, tty);
            finish(o, s)
        }
    }
}
