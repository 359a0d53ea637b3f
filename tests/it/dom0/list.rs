//! Development machine: dom0 `qvm-backup-borg list` against the fake Qubes: the exact calls (a fresh disposable with
//! borg's state, everything undone), the request the job gets, and what the job sends back
//! (borg's JSON in `data` lines) checked before anything is printed.

use qubes_borg::dom0::command::list::list;
use qubes_borg::dom0::config::Config;
use qubes_borg::dom0::qubes::Fake;
use qubes_borg::dom0::session::Outcome;
use qubes_borg::job::progress::{decode, encode, Event, Phase, MAX_DATA};
use qubes_borg::job::spec::{self, List, Op};

use crate::support::dom0::{captured, cfg, job, job_sending, repository_job, secrets, tmp};

fn run(c: &Config, qube: Option<&str>, f: &mut Fake) -> (Outcome, String, String) {
    captured(|out, err| list(c, qube, &secrets(b"pw"), f, out, err))
}

/// The list job in a fresh disposable, sending `json`.
fn expect_listing(f: &mut Fake, json: &[u8]) {
    repository_job(f, job_sending(Phase::List, json, true));
}

fn info(names: &[&str]) -> Vec<u8> {
    let a: Vec<String> = names
        .iter()
        .map(|n| format!(r#"{{"name": "{n}", "comment": "", "stats": {{"compressed_size": 1, "deduplicated_size": 2048, "nfiles": 7, "original_size": 5242880}}}}"#))
        .collect();
    format!(
        r#"{{"archives": [{}], "repository": {{"id": "ab"}}}}"#,
        a.join(", ")
    )
    .into_bytes()
}

#[test]
fn list_of_one_qube_runs_the_job_in_a_fresh_disposable_and_prints_checked_rows() {
    let d = tmp("list-one");
    let mut f = Fake::default();
    expect_listing(
        &mut f,
        &info(&["work-2026-11-29T18:00:00Z", "work-2026-11-28T18:00:00Z"]),
    );
    let (r, out, err) = run(&cfg(&d, ""), Some("work"), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    let s = spec::decode(&mut &f.requests[0][..]).unwrap();
    assert_eq!(
        s.op,
        Op::List(List {
            qube: Some("work".into())
        })
    );
    assert_eq!(s.state_device.as_deref(), Some("/dev/xvdj"));
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 4, "{out}");
    assert!(rows[3].starts_with("Settings saved with work-2026-11-29T18:00:00Z: none"));
    assert!(rows[1].starts_with("work") && rows[1].contains("2026-11-28T18:00:00Z"));
    assert!(
        rows[2].contains("5.0 MiB") || rows[2].contains("5.2 MB"),
        "{out}"
    );
    assert!(rows[2].ends_with("work-2026-11-29T18:00:00Z"));
}

#[test]
fn a_hostile_listing_prints_no_control_characters_and_says_what_was_left_out() {
    let d = tmp("list-hostile");
    let mut f = Fake::default();
    let json = info(&[
        "work-2026-11-29T18:00:00Z",
        "\\u001b]0;owned\\u0007-2026-11-29T18:00:00Z",
        "work-2026-11-29T18:00:00Z\\n",
    ]);
    expect_listing(&mut f, &json);
    let (r, out, err) = run(&cfg(&d, ""), None, &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        err.contains("2 archive entries did not pass the checks"),
        "{err}"
    );
    assert!(!out
        .chars()
        .chain(err.chars())
        .any(|c| c.is_control() && c != '\n'));
}

#[test]
fn malformed_json_fails_and_everything_is_undone() {
    let d = tmp("list-malformed");
    let mut f = Fake::default();
    expect_listing(&mut f, b"{\"archives\": [");
    let (r, out, err) = run(&cfg(&d, ""), None, &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(out.is_empty());
    assert!(
        err.contains("list FAILED: borg info output: malformed JSON"),
        "{err}"
    );
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
}

#[test]
fn a_failing_job_fails_the_list_with_its_error() {
    let d = tmp("list-fail");
    let mut f = Fake::default();
    repository_job(
        &mut f,
        job(
            &[Event::Error(
                "borg info failed (exit 2): Repository does not exist".into(),
            )],
            false,
        ),
    );
    let (r, _, err) = run(&cfg(&d, ""), Some("work"), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(err.contains("Repository does not exist"), "{err}");
    assert!(f.expected.is_empty());
}

#[test]
fn data_lines_round_trip_and_refuse_bad_hex() {
    let bytes: Vec<u8> = (0..=255u8).take(MAX_DATA).collect();
    let line = encode(&Event::Data(bytes.clone()));
    assert_eq!(decode(&line[..line.len() - 1]), Ok(Event::Data(bytes)));
    for bad in [
        &b"data "[..],
        b"data 0",
        b"data 0g",
        b"data 0A",
        b"data 00 11",
    ] {
        assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    let long = format!("data {}", "00".repeat(MAX_DATA + 1));
    assert!(decode(long.as_bytes()).is_err());
}

#[test]
fn list_requests_round_trip_and_refuse_other_ops_keys() {
    for qube in [None, Some("work".to_string())] {
        let s = spec::Spec {
            repository: "ssh://borgbase/./repo".into(),
            state_device: None,
            passphrase: b"pw".to_vec(),
            key_file: None,
            op: Op::List(List { qube }),
        };
        let b = spec::encode(&s);
        assert_eq!(spec::decode(&mut &b[..]).unwrap(), s);
    }
    let two =
        b"qubes-borg-job/1\nop list\nrepository ssh://b/./r\nqube a\nqube b\npassphrase 0\n\nend\n";
    assert!(spec::decode(&mut &two[..]).is_err());
    let dev = b"qubes-borg-job/1\nop list\nrepository ssh://b/./r\ndevice /dev/xvdi\npassphrase 0\n\nend\n";
    assert!(spec::decode(&mut &dev[..]).is_err());
}

#[test]
fn settings_travel_to_borg_as_the_archive_comment() {
    let c = spec::Create {
        qube: "work".into(),
        archive: "work-2026-11-29T18:00:00Z".into(),
        mode: spec::Mode::Files,
        device: "/dev/xvdi".into(),
        compression: "lz4".into(),
        excludes: vec![],
        settings: vec!["qubes-borg-settings/1".into(), "pref.label=red".into()],
        lock_wait: None,
    };
    let argv = qubes_borg::job::borg::create_argv("ssh://b/./r", &c);
    assert!(argv.contains(&"--comment=qubes-borg-settings/1\npref.label=red".to_string()));
    // A setting line with a control character never reaches the job.
    let bad = b"qubes-borg-job/1\nop create\nrepository ssh://b/./r\nqube w\narchive w-2026-11-29T18:00:00Z\nmode files\ndevice /dev/xvdi\ncompression lz4\nsetting a=\x1b[2J\npassphrase 0\n\nend\n";
    assert!(spec::decode(&mut &bad[..]).is_err());
}

#[test]
fn the_settings_of_the_newest_archive_are_shown_checked() {
    let d = tmp("list-settings");
    let mut f = Fake::default();
    let comment = "qubes-borg-settings/1\\nclass=AppVM\\npref.netvm=dom0\\npref.label=blue\\nfeature.x=\\u001b[2J\\ntag=t1";
    let json = format!(
        r#"{{"archives": [{{"name": "work-2026-11-29T18:00:00Z", "comment": "{comment}", "stats": {{"compressed_size": 1, "deduplicated_size": 1, "nfiles": 1, "original_size": 1}}}}]}}"#
    );
    expect_listing(&mut f, json.as_bytes());
    let (r, out, err) = run(&cfg(&d, ""), Some("work"), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    let shown: Vec<&str> = out.lines().skip(2).collect();
    assert_eq!(
        shown,
        [
            "Settings saved with work-2026-11-29T18:00:00Z:",
            "  class=AppVM",
            "  pref.label=blue",
            "  tag=t1"
        ],
        "{out}"
    );
    assert!(err.contains("dom0 cannot be a netvm"), "{err}");
    assert!(err.contains("(control character): feature.x=?[2J"), "{err}");
    assert!(!err.contains('\x1b'));
}
