//! Development machine: dom0's `qvm-backup-borg backup` against the fake Qubes: the exact
//! qvm-*/losetup call sequences, cleanup on every failure, one failing qube not stopping the
//! others, and what the job sends being contained.

use qubes_borg::dom0::command::backup::{backup, Options};
use qubes_borg::dom0::config::Config;
use qubes_borg::dom0::qubes::{Fake, Reply};
use qubes_borg::dom0::session::Outcome;
use qubes_borg::job::progress::{encode, Event, Phase, Stats};
use qubes_borg::job::spec::{self, Mode, Op};

use crate::support::dom0::{
    backup_attempt, backup_facts, captured, cfg, job, loop_file, secrets, settings, tmp, Round, LS,
    SHUTDOWN,
};

pub(super) const NOW: u64 = 1_795_970_096; // 2026-11-29T16:34:56Z

fn job_ok(original: u64) -> Reply {
    job(
        &[
            Event::Phase(Phase::State),
            Event::Phase(Phase::Mount),
            Event::Phase(Phase::Create),
            Event::Progress(original / 2),
            Event::Stats(Stats {
                original,
                deduplicated: 10,
                compressed: 20,
                files: 3,
            }),
            Event::Phase(Phase::Unmount),
        ],
        true,
    )
}

/// The backup_timestamp of a qube backed up.
pub(super) fn timestamp(f: &mut Fake, qube: &str) {
    f.expect(
        &format!("qvm-prefs {qube} backup_timestamp {NOW}"),
        Reply::ok(""),
    );
}

pub(super) fn opts() -> Options {
    Options {
        dry_run: false,
        shutdown: false,
        qubes: vec![],
    }
}

pub(super) fn run(c: &Config, o: &Options, f: &mut Fake) -> (Outcome, String, String) {
    captured(|out, err| backup(c, o, &secrets(b"correct horse"), f, out, err, false, NOW))
}

#[test]
fn one_halted_qube_in_files_mode_is_backed_up_with_the_exact_calls() {
    let d = tmp("backup-one");
    let c = cfg(&d, "");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("dom0|AdminVM|Running|False\nwork|AppVM|Halted|True\nsys-backup-mnt|DispVM|Halted|False\n"));
    backup_attempt(&mut f, "work", "loop7", "loop8", job_ok(5000));
    timestamp(&mut f, "work");
    let (r, out, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    // The request: create, the archive name, the attached devices, excludes, the passphrase.
    let s = spec::decode(&mut &f.requests[0][..]).unwrap();
    let Op::Create(cr) = &s.op else { panic!() };
    assert_eq!(cr.archive, "work-2026-11-29T16:34:56Z");
    assert_eq!(
        (cr.device.as_str(), s.state_device.as_deref()),
        ("/dev/xvdi", Some("/dev/xvdj"))
    );
    assert_eq!(cr.mode, Mode::Files);
    assert!(cr.excludes.contains(&"sh:home/*/.cache".to_string()));
    assert_eq!(s.passphrase, b"correct horse");
    // The qube's settings (explicitly set properties, mode, volume size) go with the archive.
    assert_eq!(
        cr.settings,
        [
            "qubes-borg-settings/1",
            "class=AppVM",
            "mode=files",
            "private-size=2000",
            "pref.label=red",
            "pref.template=debian-12"
        ]
    );
    assert!(
        out.contains("work-2026-11-29T16:34:56Z") && out.contains("4.9 KiB") && out.contains(" ok"),
        "{out}"
    );
    // The passphrase went only into the job's stdin, never into an argv.
    assert!(f
        .calls
        .iter()
        .flatten()
        .all(|a| !a.contains("correct horse")));
    assert!(
        !d.join("cleanup").exists()
            || std::fs::read_to_string(d.join("cleanup"))
                .unwrap()
                .is_empty()
    );
}

#[test]
fn lvm_thin_volumes_are_activated_and_looped_from_the_committed_lv() {
    let d = tmp("backup-lvm");
    let c = cfg(&d, "persistent_state = no\n[qube vault]\nmode = image\n");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("vault|AppVM|Running|True\n"))
        .expect("qvm-volume info vault:private pool", Reply::ok("lvm\n"))
        .expect(
            "qvm-volume info vault:private vid",
            Reply::ok("qubes_dom0/vm-vault-private\n"),
        )
        .expect("qvm-volume info vault:private size", Reply::ok("10\n"));
    settings(&mut f, "vault");
    f.expect("qvm-pool info lvm", Reply::ok("name          lvm\ndriver        lvm_thin\nthin_pool     vm-pool\nvolume_group  qubes_dom0\n"))
        .expect("lvchange --activate=y -- /dev/qubes_dom0/vm-vault-private", Reply::ok(""))
        .expect("losetup --read-only --find --show /dev/qubes_dom0/vm-vault-private", Reply::ok("/dev/loop0\n"));
    // persistent_state = no: nothing but the volume attached
    Round::default().volume("loop0").job(&mut f, job_ok(10));
    timestamp(&mut f, "vault");
    let (r, _, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(
        err.contains("vault is running: backing up its private volume as of its last start"),
        "{err}"
    );
    let s = spec::decode(&mut &f.requests[0][..]).unwrap();
    let Op::Create(cr) = &s.op else { panic!() };
    assert_eq!(
        (cr.mode, s.state_device.clone(), cr.excludes.len()),
        (Mode::Image, None, 0)
    );
    assert!(f.expected.is_empty());
}

#[test]
fn shutdown_option_stops_a_running_qube_and_starts_it_after_cleanup() {
    let d = tmp("backup-shut");
    let c = cfg(&d, "persistent_state = no\n");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("work|AppVM|Running|True\n"));
    backup_facts(&mut f, "work");
    f.expect("qvm-shutdown --wait --timeout 120 work", Reply::ok(""));
    loop_file(&mut f, "work", "loop1", false);
    Round::default().volume("loop1").job(&mut f, job_ok(10));
    f.expect("qvm-start work", Reply::ok(""));
    timestamp(&mut f, "work");
    let (r, _, err) = run(
        &c,
        &Options {
            shutdown: true,
            ..opts()
        },
        &mut f,
    );
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty());
}

#[test]
fn a_failing_attach_is_cleaned_up_and_the_next_qube_still_runs() {
    let d = tmp("backup-fail");
    let c = cfg(&d, "");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("a|AppVM|Halted|True\nb|AppVM|Halted|True\n"));
    // a: everything up to the private attach, which fails; then all undone.
    backup_facts(&mut f, "a");
    loop_file(&mut f, "a", "loop1", false);
    let state = Round::state("loop2");
    state.open(&mut f);
    f.expect(
        "qvm-block attach --ro --option frontend-dev=xvdi sys-backup-mnt dom0:loop1",
        Reply::fail(1, "Device already attached\x1b[31m"),
    );
    state.close(&mut f);
    f.expect("losetup --detach /dev/loop1", Reply::ok(""));
    backup_attempt(&mut f, "b", "loop1", "loop2", job_ok(5));
    timestamp(&mut f, "b");
    let (r, out, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty(), "{:?}", f.expected);
    assert!(
        out.contains("FAILED: qvm-block attach") && !out.contains('\x1b'),
        "{out}"
    );
    assert!(
        err.contains("b: archive b-2026-11-29T16:34:56Z done"),
        "{err}"
    );
}

#[test]
fn a_failed_job_fails_its_qube_and_hostile_output_is_contained() {
    let d = tmp("backup-hostile");
    let c = cfg(&d, "");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("work|AppVM|Halted|True\n"));
    let mut hostile = b"progress 99999999999\n\x1b]0;pwned\x07\n".to_vec();
    hostile.extend(vec![b'A'; 100_000]);
    for _ in 0..10_000 {
        hostile.extend(b"\nwarning flood");
    }
    hostile.extend(b"\nerror mount: wrong fs type \x1b[2J\x9b1m\nstats 1 2 3 4\ndone ok\n");
    let reply = Reply {
        code: 1,
        stdout: hostile,
        stderr: b"\x1b[31mred\x1b[0m".to_vec(),
        interrupt: false,
    };
    backup_attempt(&mut f, "work", "loop3", "loop4", reply);
    let (r, out, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty());
    for s in [&out, &err] {
        assert!(
            !s.contains('\x1b') && !s.contains('\x07') && !s.contains('\u{9b}'),
            "{s:?}"
        );
    }
    assert!(err.contains("longer than 512 bytes"), "{err}");
    assert!(
        err.lines().count() < 200,
        "a flood of warnings is cut short"
    );
    assert!(
        err.contains("more warnings from the job not shown"),
        "{err}"
    );
    assert!(out.contains("FAILED: mount: wrong fs type"), "{out}");
    assert!(
        !f.calls.iter().any(|c| c[0] == "qvm-prefs" && c.len() == 4),
        "no backup_timestamp for a failed qube"
    );
}

#[test]
fn an_interrupt_during_the_job_cleans_up_and_stops_the_run() {
    let d = tmp("backup-int");
    let c = cfg(&d, "");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("a|AppVM|Halted|True\nb|AppVM|Halted|True\n"));
    let interrupted = Reply {
        code: 0,
        stdout: encode(&Event::Progress(1)),
        stderr: vec![],
        interrupt: true,
    };
    backup_attempt(&mut f, "a", "loop1", "loop2", interrupted);
    let (r, _, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Interrupted, "{err}");
    assert!(f.expected.is_empty(), "{:?}", f.expected);
    assert!(
        !f.calls
            .iter()
            .any(|c| c.iter().any(|a| a.contains("b:private"))),
        "b was not started"
    );
}

#[test]
fn leftovers_of_a_killed_run_are_undone_first() {
    let d = tmp("backup-left");
    let c = cfg(&d, "");
    let ledger = "loop loop5\nshutdown sys-backup-mnt 120\ndetach sys-backup-mnt loop5\n";
    std::fs::write(d.join("cleanup"), ledger).unwrap();
    let mut f = Fake::default();
    f.expect("qvm-block detach sys-backup-mnt dom0:loop5", Reply::ok(""))
        .expect(SHUTDOWN, Reply::ok(""))
        .expect("losetup --detach /dev/loop5", Reply::ok(""))
        .expect(LS, Reply::ok("work|AppVM|Halted|False\n"));
    let (r, _, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::NoPlan, "{err}");
    assert!(f.expected.is_empty());
    assert!(
        err.contains("undoing 3 step(s) left by an interrupted run"),
        "{err}"
    );
    assert!(!d.join("cleanup").exists());
}

#[test]
fn a_dry_run_changes_nothing_not_even_another_runs_leftovers() {
    let d = tmp("backup-dry");
    let c = cfg(&d, "[qube vault]\nmode = image\n");
    let ledger = "loop loop5\n";
    std::fs::write(d.join("cleanup"), ledger).unwrap();
    let mut f = Fake::default();
    f.expect(
        LS,
        Reply::ok("work|AppVM|Running|True\nvault|AppVM|Halted|True\n"),
    );
    let dry = Options {
        dry_run: true,
        ..opts()
    };
    let (r, out, _) = run(&c, &dry, &mut f);
    assert_eq!(r, Outcome::Ok);
    assert_eq!(f.calls.len(), 1, "only qvm-ls: {:?}", f.calls);
    assert_eq!(std::fs::read_to_string(d.join("cleanup")).unwrap(), ledger);
    assert!(
        out.contains("vault                image  -> vault-2026-11-29T16:34:56Z"),
        "{out}"
    );
    assert!(out.contains("(running: as of its last start)"), "{out}");
}

/// One halted qube on a file-reflink pool backed up with no persistent state: every call up to
/// and including its backup_timestamp.
fn expect_one_qube_backed_up(f: &mut Fake) {
    f.expect(LS, Reply::ok("work|AppVM|Halted|True\n"));
    backup_facts(f, "work");
    loop_file(f, "work", "loop1", false);
    Round::default().volume("loop1").job(f, job_ok(1));
    timestamp(f, "work");
}

#[test]
fn prune_and_compact_run_in_a_fresh_disposable_with_the_admin_repository() {
    let d = tmp("backup-prune");
    let c = cfg(
        &d,
        "persistent_state = no\nadmin_repository = ssh://admin/./repo\nkeep_daily = 7\n",
    );
    let mut f = Fake::default();
    expect_one_qube_backed_up(&mut f);
    // the prune job: a disposable with nothing attached (persistent_state = no)
    Round::default().job(&mut f, job(&[], true));
    let (r, _, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty());
    let s = spec::decode(&mut &f.requests[1][..]).unwrap();
    assert_eq!(s.repository, "ssh://admin/./repo");
    let Op::Prune(p) = &s.op else { panic!() };
    assert_eq!(p.qubes, ["work"]);
}

#[test]
fn without_an_admin_repository_prune_is_skipped_with_a_note() {
    let d = tmp("backup-prune-skip");
    let c = cfg(&d, "persistent_state = no\nkeep_daily = 7\n");
    let mut f = Fake::default();
    expect_one_qube_backed_up(&mut f);
    let (r, _, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "no prune job: {:?}", f.expected);
    assert_eq!(f.requests.len(), 1, "only the backup job ran");
    assert!(
        err.contains("prune skipped: keep_* is set but admin_repository is not"),
        "{err}"
    );
}
