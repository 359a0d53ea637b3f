//! ssh-backup: qubes-agent-filter, the `qubes-borg.SshAgent+NAME` service.
//! See `qubes_borg::agent::service` and docs/SPLIT-SSH.md.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::AsFd;
use std::process::ExitCode;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use qubes_borg::agent::service::{self, StderrEvents, PROG};
use qubes_borg::exit::{self, Program};

const HELP: &str = "\
Usage: qubes-agent-filter NAME
The qubes-borg.SshAgent+NAME qrexec service of ssh-backup (installed as
/etc/qubes-rpc/qubes-borg.SshAgent). Speaks the SSH agent protocol on stdin/stdout
and passes to the ssh-agent of key set NAME only: 'list keys' (answered with
the backup key alone) and 'sign' for an SSH login with the backup key. Every
other request is answered with SSH_AGENT_FAILURE without reaching the agent.

NAME: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit
(from argv[1] or QREXEC_SERVICE_ARGUMENT). The caller's qube comes from
QREXEC_REMOTE_DOMAIN (set by qrexec).

Files:
  ~/.ssh/qubes-borg/NAME/id_ed25519.pub   the backup key (QUBES_BORG_KEY_DIR)
  /run/qubes-borg-agent/NAME/agent.sock    its ssh-agent (QUBES_BORG_AGENT_RUNDIR)
Each signature is logged to stderr (the journal) with the calling qube and,
if notify-send exists, shown as a desktop notification
(QUBES_BORG_NOTIFY=0 turns that off).

Exit codes:
";

/// qrexec hands us socketpairs; make sure they block (a caller may leave
/// O_NONBLOCK set) and take our own descriptors for them.
fn stdio() -> std::io::Result<(File, File)> {
    let input = std::io::stdin().as_fd().try_clone_to_owned()?;
    let output = std::io::stdout().as_fd().try_clone_to_owned()?;
    for fd in [&input, &output] {
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    }
    Ok((File::from(input), File::from(output)))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--help" || a == "-h") {
        print!("{HELP}{}", exit::help(Program::AgentFilter));
        return ExitCode::SUCCESS;
    }
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let home = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir);
    let run = || -> Result<service::Summary, service::FilterError> {
        let cfg = service::config_from(&args, &env, home)?;
        let key = service::load_key(&cfg.public_key)?;
        let (input, output) = stdio().map_err(service::FilterError::Client)?;
        let notify = std::env::var_os("QUBES_BORG_NOTIFY").map_or(true, |v| v != "0");
        let mut events = StderrEvents { notify };
        service::serve(
            &cfg,
            &key,
            &mut BufReader::new(input),
            &mut BufWriter::new(output),
            &mut events,
        )
    };
    match run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
