//! dom0: `qvm-backup-borg`, backups of qubes with borg (docs/USAGE.md): `backup`, `list`,
//! `restore`, `info`, `check`, `init`. `dom0::cli` parses the command line, `dom0::program`
//! sets up what the command needs and turns its outcome into the exit status.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::Path;

use qubes_borg::dom0::cli::{self, Command, USAGE};
use qubes_borg::dom0::command::{backup, check, info, init, list, restore, restore_into};
use qubes_borg::dom0::program::{self, confirm_on_tty, finish, now, Needs, Setup};
use qubes_borg::exit::{self, Program};

fn die(code: u8, msg: &str) -> ! {
    eprintln!("qvm-backup-borg: {msg}");
    std::process::exit(code.into())
}

fn setup(config: &Path, needs: Needs) -> Setup {
    program::setup(config, needs, &mut std::io::stderr())
        .unwrap_or_else(|f| die(f.code, &f.message))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = cli::parse(&args).unwrap_or_else(|e| die(exit::USAGE, &e));
    let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
    let tty = std::io::stderr().is_terminal();
    let code = match command {
        Command::Help => {
            print!(
                "{USAGE}\nExit status:\n{}",
                exit::help(Program::QvmBackupBorg)
            );
            exit::OK
        }
        Command::Backup { config, opts } => {
            let needs = if opts.dry_run {
                Needs::Nothing
            } else {
                Needs::LockAndSecrets
            };
            let mut s = setup(&config, needs);
            let o = backup::backup(&s.cfg, &opts, &s.secrets, &mut s.q, out, err, tty, now());
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
            .unwrap_or_else(|e| match e {
                init::PrepareError::NotConfirmed(m) => die(exit::FAILED, &m),
                init::PrepareError::Failed(m) => die(exit::CONFIG, &m),
            });
            let mut s = setup(&config, Needs::Lock);
            match init::init(&s.cfg, &opts, &mut s.q, &mut confirm_on_tty, out, err, now) {
                init::InitOutcome::Done(o) => finish(o, s),
                init::InitOutcome::HostKeyRefused => exit::REFUSED,
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
            let o = restore_into::restore_into(&s.cfg, &opts, &s.secrets, &mut s.q, out, err, tty);
            finish(o, s)
        }
    };
    std::process::exit(code.into())
}
