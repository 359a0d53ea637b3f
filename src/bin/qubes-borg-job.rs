//! sys-backup-mnt: the `qubes-borg.BackupJob` qrexec service (started by dom0's
//! `qvm-backup-borg` with `qvm-run --service`): request on stdin, progress lines on stdout.
#![forbid(unsafe_code)]

use qubes_borg::exit::{self, Program};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--help") {
        print!(
            "usage: qubes-borg-job   (the qubes-borg.BackupJob service; dom0's qvm-backup-borg sends\n\
             the request on stdin, see docs/USAGE.md)\nExit status:\n{}",
            exit::help(Program::BackupJob)
        );
        std::process::exit(exit::OK.into());
    }
    let code =
        qubes_borg::job::run::run(&mut std::io::stdin().lock(), &mut std::io::stdout().lock());
    std::process::exit(code.into());
}
