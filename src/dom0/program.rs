//! dom0: what every `qvm-backup-borg` command sets up before it runs (configuration, signal
//! handling, the lock, the secrets: only what it needs) and how its outcome becomes the
//! program's exit status.

use std::path::Path;

use super::config::{self, Config};
use super::lock::{self, Lock};
use super::qubes::Real;
use super::secrets;
use super::session::{Outcome, Secrets};
use super::signals::Signals;
use crate::exit;

/// A command's set-up: signals are installed before anything else starts (every thread and
/// child sees them blocked/reset).
pub struct Setup {
    pub cfg: Config,
    pub q: Real,
    pub lock: Option<Lock>,
    pub secrets: Secrets,
}

/// How much a command sets up: a dry run changes nothing, so it neither takes the lock nor
/// reads the secrets; `init` takes the lock but makes the secrets itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Needs {
    Nothing,
    Lock,
    LockAndSecrets,
}

/// Why a command could not start: the exit status and the message for the user.
#[derive(Debug)]
pub struct Fatal {
    pub code: u8,
    pub message: String,
}

fn fatal(code: u8, message: impl Into<String>) -> Fatal {
    Fatal {
        code,
        message: message.into(),
    }
}

/// Loads the configuration at `config_path` and sets up what `needs` asks for. A stale lock
/// of a crashed run is taken over with a note on `err`.
pub fn setup(
    config_path: &Path,
    needs: Needs,
    err: &mut dyn std::io::Write,
) -> Result<Setup, Fatal> {
    let cfg = config::load(config_path).map_err(|e| fatal(exit::CONFIG, e.to_string()))?;
    let signals = Signals::install()
        .map_err(|e| fatal(exit::OSERR, format!("cannot set up signal handling: {e}")))?;
    let lock = match needs {
        Needs::Nothing => None,
        Needs::Lock | Needs::LockAndSecrets => {
            Some(lock::acquire(&cfg.run_dir).map_err(|e| fatal(exit::TEMPFAIL, e.to_string()))?)
        }
    };
    if let Some(p) = lock.as_ref().and_then(|l| l.stale_pid) {
        let _ = writeln!(err, "qvm-backup-borg: note: lock of an earlier run (pid {p}) was stale; that run ended without cleaning up, its leftovers are undone now");
    }
    let secrets = if needs == Needs::LockAndSecrets {
        secrets::load(&cfg).map_err(|e| fatal(exit::CONFIG, e))?
    } else {
        Secrets {
            passphrase: vec![],
            key_file: None,
        }
    };
    let q = Real {
        signals: Some(signals),
    };
    Ok(Setup {
        cfg,
        q,
        lock,
        secrets,
    })
}

/// The exit status for `outcome`; the lock is released here. An interrupted run exits with
/// 128 + the signal that stopped it (SIGINT when none was recorded).
pub fn finish(outcome: Outcome, s: Setup) -> u8 {
    drop(s.lock);
    let signal =
        s.q.signals
            .as_ref()
            .and_then(|s| s.which())
            .map(|s| s as i32 as u8);
    exit_code(outcome, signal)
}

fn exit_code(outcome: Outcome, signal: Option<u8>) -> u8 {
    match outcome {
        Outcome::Ok => exit::OK,
        Outcome::Failed | Outcome::NoPlan => exit::FAILED,
        Outcome::Interrupted => exit::SIGNALED + signal.unwrap_or(nix::libc::SIGINT as u8),
    }
}

/// A yes/no question asked on the terminal (`init`); no terminal, or anything but yes: no.
pub fn confirm_on_tty(question: &str) -> bool {
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
    is_yes(&line)
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim(), "y" | "Y" | "yes" | "YES")
}

/// Seconds since the epoch (archive names, backup_timestamp, file backups).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_run_exits_with_128_plus_its_signal() {
        assert_eq!(
            exit_code(Outcome::Interrupted, Some(15)),
            exit::SIGNALED + 15
        );
        assert_eq!(
            exit_code(Outcome::Interrupted, None),
            exit::SIGNALED + nix::libc::SIGINT as u8
        );
    }

    #[test]
    fn a_failed_or_empty_run_exits_failed_and_a_good_one_ok() {
        assert_eq!(exit_code(Outcome::Ok, None), exit::OK);
        assert_eq!(exit_code(Outcome::Failed, None), exit::FAILED);
        assert_eq!(exit_code(Outcome::NoPlan, None), exit::FAILED);
    }

    #[test]
    fn only_an_explicit_yes_confirms() {
        for yes in ["y\n", "Y", " yes ", "YES\n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "ye", "y y", "oui"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
