//! Development machine (tests): dom0's fake Qubes (`qubes::Fake`) set up step by step. Each
//! function here expects, in order, the calls `qvm-backup-borg` makes for one step of a run
//! (src/dom0/session.rs, src/dom0/job_call.rs) with the fake's answers; a [`Round`] is one job
//! in a fresh disposable with everything undone after it. A test then writes only the steps
//! it is about and what differs.

use std::path::{Path, PathBuf};

use qubes_borg::dom0::config::{parse, Config};
use qubes_borg::dom0::qubes::{Fake, Reply};
use qubes_borg::dom0::session::Secrets;
use qubes_borg::job::progress::{encode, Event, Phase, MAX_DATA};

/// The job in the disposable (job_call::job_argv).
pub const JOB: &str = "qvm-run --user root --pass-io --no-gui --no-color-output --no-color-stderr --service sys-backup-mnt qubes-borg.BackupJob";
/// The listing every command that picks qubes starts from.
pub const LS: &str = "qvm-ls --raw-data --fields NAME,CLASS,STATE,include_in_backups";
/// The disposable's shutdown (a leftover one before a run, and the undo step).
pub const SHUTDOWN: &str = "qvm-shutdown --wait --timeout 120 sys-backup-mnt";
/// `qvm-prefs QUBE` (all properties), as qvm_prefs.py prints them.
pub const PREFS: &str =
    "klass     -  AppVM\nlabel     -  red\nmemory    D  400\ntemplate  -  debian-12\n";
/// `qvm-pool info varlibqubes` of a file-reflink pool.
pub const REFLINK: &str = "name              varlibqubes\ndir_path          /var/lib/qubes\ndriver            file-reflink\nrevisions_to_keep 1\n";

/// A fresh directory `/tmp/qb-dom0-NAME-PID` (NAME unique among the dom0 tests).
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qb-dom0-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A configuration with its run dir and a 1 MiB state image in `dir`, plus `extra` lines.
pub fn cfg(dir: &Path, extra: &str) -> Config {
    parse(
        Path::new("test.conf"),
        format!("repository = ssh://borgbase/./repo\nrun_dir = {}\nstate_image = {}/state.img\nstate_size_mib = 1\n{extra}", dir.display(), dir.display()).as_bytes(),
    )
    .unwrap()
}

pub fn secrets(passphrase: &[u8]) -> Secrets {
    Secrets {
        passphrase: passphrase.to_vec(),
        key_file: None,
    }
}

/// Runs `command` with stdout and stderr captured: its result and both as text.
pub fn captured<R>(command: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> R) -> (R, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = command(&mut out, &mut err);
    (
        r,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// The job's answer: `stdout` as it is, exit 0 when `ok`, else 1.
pub fn job_raw(stdout: Vec<u8>, ok: bool) -> Reply {
    Reply {
        code: if ok { 0 } else { 1 },
        stdout,
        stderr: vec![],
        interrupt: false,
    }
}

/// The job's answer: `events`, then `done ok` (exit 0) or `done fail` (exit 1).
pub fn job(events: &[Event], ok: bool) -> Reply {
    let mut out: Vec<u8> = events.iter().flat_map(encode).collect();
    out.extend(encode(&Event::Done(ok)));
    job_raw(out, ok)
}

/// The job's answer: `phase`, then `data` in `data` lines, then `done`.
pub fn job_sending(phase: Phase, data: &[u8], ok: bool) -> Reply {
    let mut events = vec![Event::Phase(phase)];
    events.extend(data.chunks(MAX_DATA).map(|p| Event::Data(p.to_vec())));
    job(&events, ok)
}

/// A disposable left running is shut down first (session::stop_leftover_disposable).
pub fn stop_leftover(f: &mut Fake) {
    f.expect(SHUTDOWN, Reply::ok(""));
}

/// `qvm-volume info QUBE:private pool` and `vid`: its volume is appvms/QUBE/private on `pool`.
pub fn volume_ids(f: &mut Fake, qube: &str, pool: &str) {
    f.expect(
        &format!("qvm-volume info {qube}:private pool"),
        Reply::ok(&format!("{pool}\n")),
    )
    .expect(
        &format!("qvm-volume info {qube}:private vid"),
        Reply::ok(&format!("appvms/{qube}/private\n")),
    );
}

/// The settings saved with an archive: `qvm-prefs QUBE` ([`PREFS`]), no features, no tags.
pub fn settings(f: &mut Fake, qube: &str) {
    f.expect(&format!("qvm-prefs {qube}"), Reply::ok(PREFS))
        .expect(&format!("qvm-features {qube}"), Reply::ok(""))
        .expect(&format!("qvm-tags {qube} list"), Reply::ok(""));
}

/// A loop device `lp` on QUBE's committed image in /var/lib/qubes (read-only unless `rw`).
pub fn loop_file(f: &mut Fake, qube: &str, lp: &str, rw: bool) {
    let ro = if rw { "" } else { "--read-only " };
    f.expect(
        &format!("losetup {ro}--find --show /var/lib/qubes/appvms/{qube}/private.img"),
        Reply::ok(&format!("/dev/{lp}\n")),
    );
}

/// What `backup` reads of a halted qube in files mode before its loop device: the volume on
/// varlibqubes (file-reflink), its usage and size, its settings, the pool.
pub fn backup_facts(f: &mut Fake, qube: &str) {
    volume_ids(f, qube, "varlibqubes");
    f.expect(
        &format!("qvm-volume info {qube}:private usage"),
        Reply::ok("1000\n"),
    )
    .expect(
        &format!("qvm-volume info {qube}:private size"),
        Reply::ok("2000\n"),
    );
    settings(f, qube);
    f.expect("qvm-pool info varlibqubes", Reply::ok(REFLINK));
}

/// One job in a fresh disposable: started, borg's state image on loop `state` attached (a
/// persistent state), a qube's volume on loop `volume` attached (read-only unless `rw`), the
/// job, then every step undone in reverse (the volume's loop last: it was set up first).
#[derive(Clone, Copy, Default)]
pub struct Round<'a> {
    pub state: Option<&'a str>,
    pub volume: Option<&'a str>,
    pub rw: bool,
}

impl<'a> Round<'a> {
    /// A round with borg's state on `state` and nothing else attached.
    pub fn state(state: &'a str) -> Round<'a> {
        Round {
            state: Some(state),
            ..Round::default()
        }
    }

    /// This round with the qube's volume (on loop `volume`) attached read-only.
    pub fn volume(self, volume: &'a str) -> Round<'a> {
        Round {
            volume: Some(volume),
            ..self
        }
    }

    /// The disposable started, the state and the volume attached.
    pub fn open(&self, f: &mut Fake) {
        f.expect("qvm-start sys-backup-mnt", Reply::ok(""));
        if let Some(s) = self.state {
            f.expect("losetup --find --show *", Reply::ok(&format!("/dev/{s}\n")))
                .expect(
                    &format!("qvm-block attach --option frontend-dev=xvdj sys-backup-mnt dom0:{s}"),
                    Reply::ok(""),
                );
        }
        if let Some(v) = self.volume {
            let ro = if self.rw { "" } else { "--ro " };
            f.expect(
                &format!("qvm-block attach {ro}--option frontend-dev=xvdi sys-backup-mnt dom0:{v}"),
                Reply::ok(""),
            );
        }
    }

    /// Everything `open` (and the volume's loop device) set up, undone newest first.
    pub fn close(&self, f: &mut Fake) {
        if let Some(v) = self.volume {
            f.expect(
                &format!("qvm-block detach sys-backup-mnt dom0:{v}"),
                Reply::ok(""),
            );
        }
        if let Some(s) = self.state {
            f.expect(
                &format!("qvm-block detach sys-backup-mnt dom0:{s}"),
                Reply::ok(""),
            )
            .expect(&format!("losetup --detach /dev/{s}"), Reply::ok(""));
        }
        f.expect(SHUTDOWN, Reply::ok(""));
        if let Some(v) = self.volume {
            f.expect(&format!("losetup --detach /dev/{v}"), Reply::ok(""));
        }
    }

    /// `open`, the job answering `reply`, `close`.
    pub fn job(&self, f: &mut Fake, reply: Reply) {
        self.open(f);
        f.expect(JOB, reply);
        self.close(f);
    }
}

/// A job against the repository only (list, info, check, init: job_call::repository_data):
/// a leftover disposable stopped, then a round with borg's state on loop8.
pub fn repository_job(f: &mut Fake, reply: Reply) {
    stop_leftover(f);
    Round::state("loop8").job(f, reply);
}

/// One attempt at backing up a halted qube (see [`backup_facts`]) with its volume on loop
/// `lp` and borg's state on loop `state`, the job answering `reply`, everything undone.
pub fn backup_attempt(f: &mut Fake, qube: &str, lp: &str, state: &str, reply: Reply) {
    backup_facts(f, qube);
    loop_file(f, qube, lp, false);
    Round::state(state).volume(lp).job(f, reply);
}
