//! Development machine: dom0 `qvm-backup-borg check` and `info` against the fake Qubes: the
//! exact calls (borg check in a fresh disposable, the listing, then each qube's committed
//! volume attached read-only for the spot check, everything undone), the requests the job gets,
//! and hostile job results contained (refused, bounded, no control characters printed).

use qubes_borg::dom0::command::check::{check, CheckOptions};
use qubes_borg::dom0::command::info::info;
use qubes_borg::dom0::config::Config;
use qubes_borg::dom0::qubes::{Fake, Reply};
use qubes_borg::dom0::session::Outcome;
use qubes_borg::job::progress::{Event, Phase};
use qubes_borg::job::spec::{self, Check, Info, List, Op, Spot};

use crate::support::dom0::{
    captured, cfg, job, job_sending, loop_file, repository_job, secrets, tmp, volume_ids, Round,
    LS, REFLINK,
};

const NEWEST: &str = "work-2026-11-29T18:00:00Z";

const FILES: &str = "qubes-borg-settings/1\\nclass=AppVM\\nmode=files\\npref.label=red";
const IMAGE: &str = "qubes-borg-settings/1\\nclass=AppVM\\nmode=image\\npref.label=red";

fn listing(entries: &[(&str, &str)]) -> Vec<u8> {
    let a: Vec<String> = entries
        .iter()
        .map(|(n, comment)| format!(r#"{{"name": "{n}", "comment": "{comment}", "duration": 3.5, "stats": {{"compressed_size": 1, "deduplicated_size": 2048, "nfiles": 7, "original_size": 5242880}}}}"#))
        .collect();
    format!(r#"{{"archives": [{}]}}"#, a.join(", ")).into_bytes()
}

/// The calls of one qube's spot check (file-reflink pool, halted) around `job`.
fn expect_spot(f: &mut Fake, qube: &str, job: Reply) {
    volume_ids(f, qube, "varlibqubes");
    f.expect("qvm-pool info varlibqubes", Reply::ok(REFLINK));
    loop_file(f, qube, "loop3", false);
    Round::state("loop8").volume("loop3").job(f, job);
}

/// The check job and the list job (sending one archive of work), each in a fresh disposable.
fn expect_check_and_list(f: &mut Fake) {
    repository_job(f, job_sending(Phase::Check, b"repository ok\n", true));
    repository_job(
        f,
        job_sending(Phase::List, &listing(&[(NEWEST, FILES)]), true),
    );
}

fn run_check(c: &Config, opts: &CheckOptions, f: &mut Fake) -> (Outcome, String, String) {
    captured(|out, err| check(c, opts, &secrets(b"pw"), f, out, err))
}

fn opts(qubes: &[&str]) -> CheckOptions {
    CheckOptions {
        verify_data: false,
        spot: 20,
        qubes: qubes.iter().map(|s| s.to_string()).collect(),
    }
}

fn printable(s: &str) -> bool {
    s.chars().all(|c| c == '\n' || (' '..='~').contains(&c))
}

const SPOT_OK: &[u8] =
    b"checked 3\nmatched 2\nchanged-count 1\nmismatch-count 0\nchanged home/user/notes\n";

#[test]
fn check_runs_borg_check_then_compares_each_qubes_newest_archive_with_its_volume() {
    let d = tmp("check-ok");
    let mut f = Fake::default();
    repository_job(&mut f, job_sending(Phase::Check, b"repository ok\n", true));
    repository_job(
        &mut f,
        job_sending(
            Phase::List,
            &listing(&[
                ("work-2026-11-28T18:00:00Z", FILES),
                (NEWEST, FILES),
                ("vault-2026-11-29T18:00:00Z", IMAGE),
                ("gone-2026-11-29T18:00:00Z", FILES),
            ]),
            true,
        ),
    );
    f.expect(
        LS,
        Reply::ok("dom0|AdminVM|Running|False\nwork|AppVM|Halted|True\nvault|AppVM|Halted|True\n"),
    );
    expect_spot(&mut f, "work", job_sending(Phase::Spot, SPOT_OK, true));
    let (r, out, err) = run_check(&cfg(&d, ""), &opts(&[]), &mut f);
    assert_eq!(r, Outcome::Ok, "{out}\n{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    let ops: Vec<Op> = f
        .requests
        .iter()
        .map(|q| spec::decode(&mut &q[..]).unwrap().op)
        .collect();
    assert_eq!(
        ops,
        [
            Op::Check(Check { verify_data: false }),
            Op::List(List { qube: None }),
            Op::Spot(Spot {
                archive: NEWEST.into(),
                device: "/dev/xvdi".into(),
                count: 20
            }),
        ]
    );
    assert!(out.contains("repository (borg check): ok\n"), "{out}");
    assert!(
        out.contains(&format!("work: {NEWEST}: 3 files checked, 2 matched, 1 changed since the archive, 0 mismatched: ok\n")),
        "{out}"
    );
    assert!(
        out.contains("  changed since the archive: home/user/notes\n"),
        "{out}"
    );
    assert!(
        out.contains("vault: vault-2026-11-29T18:00:00Z: not spot-checked (image mode"),
        "{out}"
    );
    assert!(
        err.contains("gone: has archives but no longer exists"),
        "{err}"
    );
}

#[test]
fn borg_problems_and_spot_mismatches_fail_and_are_named_per_qube() {
    let d = tmp("check-bad");
    let mut f = Fake::default();
    repository_job(
        &mut f,
        job_sending(
            Phase::Check,
            format!("repository errors\narchive {NEWEST}\n").as_bytes(),
            true,
        ),
    );
    repository_job(
        &mut f,
        job_sending(Phase::List, &listing(&[(NEWEST, FILES)]), true),
    );
    expect_spot(
        &mut f,
        "work",
        job_sending(
            Phase::Spot,
            b"checked 2\nmatched 0\nchanged-count 0\nmismatch-count 2\nmismatch content home/user/a\nmismatch unreadable home/user/b\n",
            true,
        ),
    );
    let mut o = opts(&["work"]);
    o.verify_data = true;
    let (r, out, err) = run_check(&cfg(&d, ""), &o, &mut f);
    assert_eq!(r, Outcome::Failed, "{out}\n{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    let first = spec::decode(&mut &f.requests[0][..]).unwrap().op;
    assert_eq!(first, Op::Check(Check { verify_data: true }));
    assert!(
        out.contains("repository (borg check --verify-data): PROBLEMS FOUND"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "work: borg check reported problems in archive {NEWEST}\n"
        )),
        "{out}"
    );
    assert!(out.contains("2 mismatched: MISMATCH\n"), "{out}");
    assert!(out.contains("  MISMATCH (content): home/user/a\n"), "{out}");
    assert!(
        out.contains("  MISMATCH (unreadable): home/user/b\n"),
        "{out}"
    );
}

#[test]
fn a_check_job_that_fails_is_a_failed_check_and_the_spot_check_still_runs() {
    let d = tmp("check-jobfail");
    let mut f = Fake::default();
    repository_job(
        &mut f,
        job(
            &[
                Event::Phase(Phase::Check),
                Event::Error("borg check could not run (exit status: 2)".into()),
            ],
            false,
        ),
    );
    repository_job(
        &mut f,
        job_sending(Phase::List, &listing(&[(NEWEST, FILES)]), true),
    );
    expect_spot(&mut f, "work", job_sending(Phase::Spot, SPOT_OK, true));
    let (r, out, err) = run_check(&cfg(&d, ""), &opts(&["work"]), &mut f);
    assert_eq!(r, Outcome::Failed, "{out}\n{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(
        out.contains("repository (borg check): FAILED: borg check could not run"),
        "{out}"
    );
    assert!(
        out.contains("work: work-2026-11-29T18:00:00Z: 3 files checked"),
        "{out}"
    );
}

#[test]
fn hostile_spot_results_are_refused_and_nothing_unprintable_is_shown() {
    let d = tmp("check-hostile");
    let hostile: [&[u8]; 4] = [
        // Counts that do not add up (claims success while hiding a mismatch).
        b"checked 3\nmatched 3\nchanged-count 0\nmismatch-count 1\nmismatch content x\n",
        // More files than asked for.
        b"checked 999\nmatched 999\nchanged-count 0\nmismatch-count 0\n",
        // An unknown line with escape sequences.
        b"checked 1\nmatched 1\nchanged-count 0\nmismatch-count 0\n\x1b]0;owned\x07\x1b[2J\n",
        // Not text.
        b"\xff\xfe",
    ];
    for data in hostile {
        let mut f = Fake::default();
        expect_check_and_list(&mut f);
        expect_spot(&mut f, "work", job_sending(Phase::Spot, data, true));
        let (r, out, err) = run_check(&cfg(&d, ""), &opts(&["work"]), &mut f);
        assert_eq!(r, Outcome::Failed, "{out}\n{err}");
        assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
        assert!(
            out.contains("work: work-2026-11-29T18:00:00Z: spot check FAILED: spot result"),
            "{out}"
        );
        assert!(printable(&out) && printable(&err), "{out:?}\n{err:?}");
    }
    // Escape sequences inside names are shown as '?', names are bounded.
    let mut f = Fake::default();
    expect_check_and_list(&mut f);
    let long = "x".repeat(5000);
    let data = format!("checked 2\nmatched 0\nchanged-count 1\nmismatch-count 1\nchanged a\x1b[2J\nmismatch mode {long}\n");
    expect_spot(
        &mut f,
        "work",
        job_sending(Phase::Spot, data.as_bytes(), true),
    );
    let (r, out, err) = run_check(&cfg(&d, ""), &opts(&["work"]), &mut f);
    assert_eq!(r, Outcome::Failed, "{out}\n{err}");
    assert!(
        out.contains("  changed since the archive: a?[2J\n"),
        "{out}"
    );
    assert!(out.lines().all(|l| l.len() < 300), "{out}");
    assert!(printable(&out) && printable(&err));
}

#[test]
fn a_named_qube_without_archives_fails_and_spot_zero_skips_the_volume() {
    let d = tmp("check-none");
    let mut f = Fake::default();
    expect_check_and_list(&mut f);
    let (r, out, _) = run_check(&cfg(&d, ""), &opts(&["vault"]), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(
        out.contains("vault: FAILED: no archive in the repository"),
        "{out}"
    );
    assert!(f.expected.is_empty());

    let mut f = Fake::default();
    expect_check_and_list(&mut f);
    let mut o = opts(&["work"]);
    o.spot = 0;
    let (r, out, err) = run_check(&cfg(&d, ""), &o, &mut f);
    assert_eq!(r, Outcome::Ok, "{out}\n{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
}

fn run_info(c: &Config, archive: &str, f: &mut Fake) -> (Outcome, String, String) {
    captured(|out, err| info(c, archive, &secrets(b"pw"), f, out, err))
}

#[test]
fn info_asks_borg_about_one_archive_and_prints_its_details_and_settings() {
    let d = tmp("check-info");
    let mut f = Fake::default();
    repository_job(
        &mut f,
        job_sending(Phase::List, &listing(&[(NEWEST, FILES)]), true),
    );
    let (r, out, err) = run_info(&cfg(&d, ""), NEWEST, &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert_eq!(
        spec::decode(&mut &f.requests[0][..]).unwrap().op,
        Op::Info(Info {
            archive: NEWEST.into()
        })
    );
    for want in [
        "Archive:       work-2026-11-29T18:00:00Z\n",
        "Qube:          work\n",
        "Date (UTC):    2026-11-29T18:00:00Z\n",
        "Original size: 5.0 MiB (5242880 bytes)\n",
        "Files:         7\n",
        "Duration:      0:00:04\n",
        "Settings saved with work-2026-11-29T18:00:00Z:\n",
        "  mode=files\n",
        "  pref.label=red\n",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
}

#[test]
fn info_refuses_an_answer_about_another_archive_or_a_hostile_one() {
    let d = tmp("check-info-hostile");
    for json in [
        listing(&[("work-2026-11-28T18:00:00Z", FILES)]),
        listing(&[("work-2026-11-29T18:00:00Z\\u001b[2J", FILES)]),
        b"{\"archives\": [".to_vec(),
    ] {
        let mut f = Fake::default();
        repository_job(&mut f, job_sending(Phase::List, &json, true));
        let (r, out, err) = run_info(&cfg(&d, ""), NEWEST, &mut f);
        assert_eq!(r, Outcome::Failed, "{out}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("info FAILED"), "{err}");
        assert!(printable(&err), "{err:?}");
        assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    }
}
