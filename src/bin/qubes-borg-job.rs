//! sys-backup-mnt: the `qubes-borg.BackupJob` qrexec service (started by dom0's
//! `qvm-backup-borg` with `qvm-run --service`): request on stdin, progress lines on stdout.
#![forbid(unsafe_code)]

fn main() {
    let code =
        qubes_borg::job::run::run(&mut std::io::stdin().lock(), &mut std::io::stdout().lock());
    std::process::exit(code.into());
}
