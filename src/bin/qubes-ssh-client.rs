//! sys-backup-mnt: `qubes-ssh-client`, borg's `BORG_RSH` (the library: `qubes_borg::ssh::client`).

use qubes_borg::exit;
use qubes_borg::relay;
use qubes_borg::ssh::client::{self, Cli, DEFAULT_QREXEC, PROG};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

/// Report one line and return the exit code.
fn die(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "{PROG}: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let env_target = std::env::var("QUBES_SSH_CLIENT_TARGET").ok();
    let req = match client::parse_cli(std::env::args_os().skip(1).collect(), env_target) {
        Ok(Cli::Run(req)) => req,
        Ok(Cli::Help) => {
            print!("{}", client::help());
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Version) => {
            println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => return die(exit::USAGE, e),
    };
    let (stdin, stdout) = match relay::take_stdio() {
        Ok(p) => p,
        Err(e) => return die(exit::OSERR, format!("cannot take stdin/stdout: {e}")),
    };
    match client::run(
        &req,
        Path::new(DEFAULT_QREXEC),
        stdin.as_fd(),
        stdout.as_fd(),
    ) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = die(e.exit_code(), &e);
            if e.before_eof() {
                client::hold_before_eof(std::io::stderr().as_fd());
            }
            drop(stdout);
            if e.before_eof() {
                // borg reads stdout's EOF ("Connection closed by remote host") before its next
                // write to us fails with EPIPE (a Broken pipe traceback).
                client::hold_before_eof(std::io::stderr().as_fd());
            }
            drop(stdin);
            code
        }
    }
}
