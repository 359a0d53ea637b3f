//! sys-backup: `qubes-ssh-service`, the `qubes-borg.Ssh` qrexec service (the library:
//! `qubes_borg::ssh::service`).

use qubes_borg::exit;
use qubes_borg::relay;
use qubes_borg::ssh::service::{self, ServiceEnv, PROG};
use qubes_borg::tempdir;
use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    // First, before any thread: a terminating signal removes this connection's directory.
    if let Err(e) = tempdir::cleanup_on_signals() {
        eprintln!("{PROG}: outcome=internal: cannot set up signal handling: {e}");
        return ExitCode::from(exit::OSERR);
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let env = ServiceEnv::from_vars(std::env::vars_os());
    // Help only outside qrexec: under qrexec the caller chooses argv[1], and "--help" is
    // refused and logged like any other bad destination name.
    let under_qrexec = env.remote_domain.is_some() || env.untrusted_service_argument.is_some();
    if !under_qrexec && args.len() == 1 && (args[0] == "--help" || args[0] == "-h") {
        print!("{}", service::help());
        return ExitCode::SUCCESS;
    }
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
