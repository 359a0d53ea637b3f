//! sys-backup: `qubes-ssh-service`, the `qubes-borg.Ssh` qrexec service (the library:
//! `qubes_borg::ssh::service`).

use qubes_borg::exit;
use qubes_borg::relay;
use qubes_borg::ssh::service::{self, ServiceEnv, PROG};
use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--help" || a == "-h") {
        print!("{}", service::help());
        return ExitCode::SUCCESS;
    }
    let env = ServiceEnv::from_vars(std::env::vars_os());
    let (stdin, stdout) = match relay::take_stdio() {
        Ok(p) => p,
        Err(e) => {
            let source = service::log_source(&env);
            eprintln!("{PROG}: source={source} outcome=internal: cannot take stdin/stdout: {e}");
            return ExitCode::from(exit::OSERR);
        }
    };
    let code = service::serve(&args, &env, stdin, stdout, &mut std::io::stderr());
    ExitCode::from(code)
}
