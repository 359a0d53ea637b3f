//! Every qube: the exit codes of every qubes-borg program, in one table with their meanings.
//!
//! The programs return these constants; their `--help` texts print [`help`] for their rows, and
//! the tables in README.md, docs/PROTOCOL.md and docs/SPLIT-SSH.md list the same rows (the test
//! `exit_codes` in tests/it keeps them equal). Numbers follow sysexits.h where one fits, so they
//! are recognisable; 125/126/127 are what shells, env(1) and qrexec-client-vm use, 255 is ssh's.
//! One number can mean different things in different programs (125 from qubes-relay is not 125
//! from qubes-ssh-client): each row belongs to one program.

use std::fmt;

/// Success (qubes-agent-filter: the client closed the connection; qubes-relay: `--connect`,
/// `--listen` ended cleanly).
pub const OK: u8 = 0;
/// qvm-backup-borg: some qube, the prune or a cleanup failed, or nothing could be backed up
/// (the other qubes still ran); qubes-borg-job: a step failed (its `error` lines say which).
pub const FAILED: u8 = 1;
/// sysexits EX_USAGE: a command line or service argument that is not accepted.
pub const USAGE: u8 = 64;
/// sysexits EX_DATAERR: the agent client broke the SSH agent protocol (qubes-agent-filter).
pub const DATAERR: u8 = 65;
/// sysexits EX_NOHOST: sys-backup has no configuration for this destination name.
pub const UNKNOWN_DESTINATION: u8 = 68;
/// sysexits EX_UNAVAILABLE: the split-SSH agent for the destination's key set could not be set up.
pub const AGENT: u8 = 69;
/// sysexits EX_SOFTWARE: internal error (should not happen).
pub const SOFTWARE: u8 = 70;
/// sysexits EX_OSERR: could not start a program (qrexec-client-vm, ssh) or create a temporary file.
pub const OSERR: u8 = 71;
/// sysexits EX_IOERR: reading from or writing to the agent client failed (qubes-agent-filter).
pub const IOERR: u8 = 74;
/// sysexits EX_TEMPFAIL: another qvm-backup-borg run holds the lock; try again later.
pub const TEMPFAIL: u8 = 75;
/// sysexits EX_PROTOCOL: the other side did not speak the qubes-borg.Ssh protocol (bad header,
/// bad status line, early close).
pub const PROTOCOL: u8 = 76;
/// sysexits EX_NOPERM: the request is well-formed but not allowed (option, remote path, port,
/// user).
pub const REFUSED: u8 = 77;
/// sysexits EX_CONFIG: configuration missing parts, malformed or unsafe.
pub const CONFIG: u8 = 78;
/// qrexec-client-vm: the target's qrexec agent could not start the service (user, PAM, exec;
/// libqrexec/qrexec.h QREXEC_EXIT_PROBLEM, sent by the target's agent).
pub const QREXEC_FAILED: u8 = 125;
/// qrexec-client-vm: the call was refused (QREXEC_EXIT_REQUEST_REFUSED): by the dom0 policy, or
/// because dom0 could not start the target qube (qrexec reports both so).
pub const QREXEC_REFUSED: u8 = 126;
/// qrexec-client-vm: the service is not installed in the target qube
/// (QREXEC_EXIT_SERVICE_NOT_FOUND).
pub const QREXEC_NOT_FOUND: u8 = 127;
/// qubes-relay itself failed (usage, I/O, connect, listen), as env(1) reports its own failure.
pub const RELAY_FAILED: u8 = 125;
/// The command was found but could not be executed (as shells report it).
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (as shells report it).
pub const NOT_FOUND: u8 = 127;
/// Killed by signal N: `SIGNALED + N` (as shells report it).
pub const SIGNALED: u8 = 128;
/// ssh's own failure (connection, host key, authentication).
pub const SSH: u8 = 255;
/// qrexec-client-vm: the connection closed before an exit status came (the target qube or its
/// qrexec agent died; libqrexec/process_io.c returns -1).
pub const QREXEC_LOST: u8 = 255;

/// The programs that exit with these codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    SshClient,
    SshService,
    AgentFilter,
    Relay,
    BackupJob,
    QvmBackupBorg,
}

impl Program {
    pub const ALL: [Program; 6] = [
        Program::SshClient,
        Program::SshService,
        Program::AgentFilter,
        Program::Relay,
        Program::BackupJob,
        Program::QvmBackupBorg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::SshClient => "qubes-ssh-client",
            Program::SshService => "qubes-ssh-service",
            Program::AgentFilter => "qubes-agent-filter",
            Program::Relay => "qubes-relay",
            Program::BackupJob => "qubes-borg-job",
            Program::QvmBackupBorg => "qvm-backup-borg",
        }
    }
}

/// The code column of a row: one number, or a range or pattern in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Is(u8),
    Text(&'static str),
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::Is(n) => write!(f, "{n}"),
            Code::Text(t) => f.write_str(t),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub program: Program,
    pub code: Code,
    pub meaning: &'static str,
}

const fn row(program: Program, code: u8, meaning: &'static str) -> Row {
    Row {
        program,
        code: Code::Is(code),
        meaning,
    }
}

const fn text(program: Program, code: &'static str, meaning: &'static str) -> Row {
    Row {
        program,
        code: Code::Text(code),
        meaning,
    }
}

use Program::{AgentFilter, BackupJob, QvmBackupBorg, Relay, SshClient, SshService};

/// Every exit code of every program, in the order the help texts and docs list them.
pub const TABLE: &[Row] = &[
    text(SshClient, "0-255", "after the session started: the remote borg serve's exit status as ssh reports it (255: ssh failed, or the qrexec connection was lost; the message says which)"),
    row(SshClient, SSH, "ssh failed in sys-backup before any data (connection refused, host key not pinned, authentication, network), or the qrexec connection to the target qube was lost (the message says which)"),
    row(SshClient, USAGE, "the command line is not one borg builds (refused before any qrexec call)"),
    row(SshClient, UNKNOWN_DESTINATION, "sys-backup has no destination NAME"),
    row(SshClient, AGENT, "the split-SSH key set of NAME could not be reached from sys-backup"),
    row(SshClient, SOFTWARE, "internal error (here or in sys-backup)"),
    row(SshClient, OSERR, "cannot start a program or create temporary files (here or in sys-backup)"),
    row(SshClient, PROTOCOL, "protocol error: malformed request header or status line, or the peer closed early (versions differ?)"),
    row(SshClient, REFUSED, "sys-backup refused the request (option, remote path, port or user not allowed)"),
    row(SshClient, CONFIG, "sys-backup's configuration of NAME is missing parts, malformed or unsafe"),
    row(SshClient, QREXEC_FAILED, "the target qube's qrexec agent could not start qubes-borg.Ssh (service user, PAM, exec)"),
    row(SshClient, QREXEC_REFUSED, "qrexec refused qubes-borg.Ssh+NAME: the dom0 policy does not allow it from this qube, or the target qube could not be started (qrexec does not say which)"),
    row(SshClient, QREXEC_NOT_FOUND, "the target qube has no qubes-borg.Ssh service (qubes-borg not installed there)"),
    text(SshService, "0-255", "ssh's exit status once ssh ran (255: ssh failed; else the remote borg serve's)"),
    row(SshService, UNKNOWN_DESTINATION, "unknown destination (no NAME.conf)"),
    row(SshService, AGENT, "split-SSH agent unavailable"),
    row(SshService, SOFTWARE, "internal error"),
    row(SshService, OSERR, "cannot start ssh or create temporary files"),
    row(SshService, PROTOCOL, "malformed, over-long, slow or cut-short request header"),
    row(SshService, REFUSED, "request not allowed (destination name, option, remote path, port, user)"),
    row(SshService, CONFIG, "destination configuration missing parts, malformed or unsafe"),
    row(AgentFilter, OK, "the client closed the connection"),
    row(AgentFilter, USAGE, "bad service argument or environment (not started by qrexec?)"),
    row(AgentFilter, DATAERR, "the client broke the protocol (framing, size, per-connection limits)"),
    row(AgentFilter, IOERR, "reading from or writing to the client failed"),
    row(AgentFilter, CONFIG, "the backup public key or server.conf is missing, unsafe or malformed (run qubes-borg-keygen NAME)"),
    text(Relay, "0-255", "-- CMD: CMD's exit status (128+N: CMD was killed by signal N)"),
    row(Relay, OK, "--connect, --listen: success (--listen exits 0 on SIGTERM/SIGINT/SIGHUP)"),
    row(Relay, RELAY_FAILED, "qubes-relay itself failed: usage, I/O error, cannot connect or listen (one line on stderr)"),
    row(Relay, CANNOT_EXECUTE, "CMD was found but could not be executed"),
    row(Relay, NOT_FOUND, "CMD was not found"),
    text(Relay, "128+N", "qubes-relay was killed by signal N (after restoring its stdin/stdout flags)"),
    row(BackupJob, OK, "the step dom0 asked for is done (its last line is done ok)"),
    row(BackupJob, FAILED, "a step failed: mount, borg, unmount (its error lines say which)"),
    row(BackupJob, PROTOCOL, "the request from dom0 was malformed or refused (versions differ?)"),
    row(QvmBackupBorg, OK, "every planned qube was backed up (and pruned, when configured)"),
    row(QvmBackupBorg, FAILED, "a qube, the prune or a cleanup failed (the other qubes still ran), or nothing could be planned"),
    row(QvmBackupBorg, USAGE, "the command line is not accepted"),
    row(QvmBackupBorg, OSERR, "cannot set up signal handling"),
    row(QvmBackupBorg, TEMPFAIL, "another qvm-backup-borg run holds the lock (the message gives its pid)"),
    row(QvmBackupBorg, REFUSED, "init: the server's host key was not confirmed or does not match --host-key-fingerprint (nothing pinned)"),
    row(QvmBackupBorg, CONFIG, "backup.conf or a secret file is missing, malformed or not root-only (file:line: key)"),
    text(QvmBackupBorg, "128+N", "interrupted by signal N (SIGINT, SIGTERM, SIGHUP) after undoing everything it set up"),
];

/// The rows of one program, in table order.
pub fn rows(program: Program) -> impl Iterator<Item = &'static Row> {
    TABLE.iter().filter(move |r| r.program == program)
}

/// Width of a `--help` line.
const HELP_WIDTH: usize = 79;

/// The exit-code lines of `program`'s `--help`: `  CODE  MEANING`, wrapped at 79 columns with
/// the meaning's continuation lines indented under it.
pub fn help(program: Program) -> String {
    let width = rows(program)
        .map(|r| r.code.to_string().len())
        .max()
        .unwrap_or(0);
    let indent = 2 + width + 2;
    let mut out = String::new();
    for r in rows(program) {
        let mut line = format!("  {:<width$}  ", r.code.to_string());
        let mut first = true;
        for word in r.meaning.split(' ') {
            if !first && line.len() + 1 + word.len() > HELP_WIDTH {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(indent);
                first = true;
            }
            if !first {
                line.push(' ');
            }
            line.push_str(word);
            first = false;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_program_lists_each_number_once() {
        for p in Program::ALL {
            let mut seen = Vec::new();
            for r in rows(p) {
                if let Code::Is(n) = r.code {
                    assert!(!seen.contains(&n), "{} lists {n} twice", p.name());
                    seen.push(n);
                }
            }
            assert!(rows(p).count() > 0, "{} has no rows", p.name());
        }
    }

    #[test]
    fn every_program_of_the_table_is_in_program_all() {
        for r in TABLE {
            assert!(Program::ALL.contains(&r.program), "{r:?}");
        }
    }

    #[test]
    fn help_lists_every_row_and_wraps_at_79_columns() {
        for p in Program::ALL {
            let h = help(p);
            for line in h.lines() {
                assert!(line.len() <= HELP_WIDTH, "{line:?}");
            }
            let joined = h.split_whitespace().collect::<Vec<_>>().join(" ");
            for r in rows(p) {
                assert!(
                    joined.contains(&format!("{} {}", r.code, r.meaning)),
                    "{r:?}"
                );
            }
        }
    }
}
