//! sys-backup and ssh-backup (any qube): qubes-relay, relays stdin/stdout to a command, a UNIX
//! socket, or serves a UNIX socket with a command per connection. A faster, exact replacement
//! for `socat - EXEC:...`, `socat - UNIX-CONNECT:...` and
//! `socat UNIX-LISTEN:...,fork EXEC:...` (see `--help`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use qubes_borg::exit::{self, Program};
use qubes_borg::relay::{self, Error, ListenOptions};

const HELP: &str = "\
Usage: qubes-relay [--] COMMAND [ARGS...]
       qubes-relay --connect PATH
       qubes-relay --listen PATH [--die-with-parent] [--unlink-early] -- COMMAND [ARGS...]

Relay bytes both ways at once with splice(2), exactly: no byte lost or
reordered, EOF passed on per direction (half-close), no timeout ever cuts a
stream.

  [--] COMMAND [ARGS...]
        Start COMMAND (PATH lookup, no shell) and relay our stdin to its stdin
        and its stdout to our stdout. Exit with its exit status.
        Replaces: socat - EXEC:'COMMAND ARGS'
  --connect PATH
        Relay stdin/stdout to the UNIX stream socket PATH.
        Replaces: socat - UNIX-CONNECT:PATH
  --listen PATH -- COMMAND [ARGS...]
        Create the UNIX stream socket PATH (mode from the umask), and for each
        connection start COMMAND and relay the connection to it. On SIGTERM,
        SIGINT or SIGHUP: remove PATH and exit 0.
        Replaces: socat UNIX-LISTEN:PATH,fork EXEC:'COMMAND ARGS'
    --die-with-parent   also exit (as on SIGTERM) when the parent process
                        dies (prctl PR_SET_PDEATHSIG; strictly: when the
                        parent thread that started qubes-relay exits)
    --unlink-early      remove a stale socket at PATH first
  -h, --help            this text
  -V, --version         the version

Exit status:
";

enum Mode {
    Command(Vec<OsString>),
    Connect(PathBuf),
    Listen(PathBuf, Vec<OsString>, ListenOptions),
    Help,
    Version,
}

fn parse(mut args: Vec<OsString>) -> Result<Mode, Error> {
    let usage = |m: &str| Error::Usage(m.to_string());
    if args.is_empty() {
        return Err(usage("no command given"));
    }
    let first = args[0].to_string_lossy().into_owned();
    match first.as_str() {
        "-h" | "--help" => Ok(Mode::Help),
        "-V" | "--version" => Ok(Mode::Version),
        "--" => {
            args.remove(0);
            if args.is_empty() {
                return Err(usage("no command given after --"));
            }
            Ok(Mode::Command(args))
        }
        "--connect" => {
            if args.len() != 2 {
                return Err(usage("--connect takes exactly one PATH"));
            }
            Ok(Mode::Connect(PathBuf::from(args.remove(1))))
        }
        "--listen" => {
            if args.len() < 2 {
                return Err(usage("--listen needs a PATH"));
            }
            let path = PathBuf::from(args[1].clone());
            let mut opts = ListenOptions::default();
            let mut i = 2;
            while i < args.len() {
                match args[i].to_str() {
                    Some("--die-with-parent") => opts.die_with_parent = true,
                    Some("--unlink-early") => opts.unlink_early = true,
                    Some("--") => break,
                    _ => {
                        return Err(Error::Usage(format!(
                            "unknown --listen option '{}'",
                            args[i].to_string_lossy()
                        )))
                    }
                }
                i += 1;
            }
            let argv: Vec<OsString> = args.split_off((i + 1).min(args.len()));
            if argv.is_empty() {
                return Err(usage("--listen needs -- COMMAND [ARGS...]"));
            }
            Ok(Mode::Listen(path, argv, opts))
        }
        f if f.starts_with('-') => Err(Error::Usage(format!("unknown option '{f}'"))),
        _ => Ok(Mode::Command(args)),
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let res = match parse(args) {
        Ok(Mode::Help) => {
            print!("{HELP}{}", exit::help(Program::Relay));
            return ExitCode::SUCCESS;
        }
        Ok(Mode::Version) => {
            println!("qubes-relay {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Mode::Command(argv)) => relay::run_command(&argv),
        Ok(Mode::Connect(path)) => relay::run_connect(&path).map(|()| 0),
        Ok(Mode::Listen(path, argv, opts)) => relay::run_listen(&path, &argv, &opts).map(|()| 0),
        Err(e) => Err(e),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(Error::Signal(sig)) => {
            relay::die_of(sig);
            ExitCode::from(exit::SIGNALED + sig as u8)
        }
        Err(e) => {
            eprintln!("qubes-relay: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
