//! Development machine: dom0 `qvm-backup-borg restore` against the fake Qubes: the exact call sequences (list, create
//! with the saved settings, tag while restoring, read-write attach, the job, cleanup, untag),
//! refusing to overwrite, and what an interrupted restore leaves visible.

use qubes_borg::dom0::command::restore::{restore, RestoreOptions, RESTORING_TAG};
use qubes_borg::dom0::config::Config;
use qubes_borg::dom0::qubes::{Fake, Reply};
use qubes_borg::dom0::session::Outcome;
use qubes_borg::job::progress::{encode, Event, Phase};
use qubes_borg::job::spec::{self, Mode, Op, Restore};

use crate::support::dom0::{
    captured, cfg, job, job_raw, job_sending, loop_file, repository_job, secrets, tmp, volume_ids,
    Round, JOB, LS, REFLINK,
};

const ARCHIVE: &str = "work-2026-11-29T18:00:00Z";

/// The list job's reply: one archive of work with these settings lines.
fn listing(settings: &[&str]) -> Reply {
    let comment = settings.join("\\n");
    let json = format!(
        r#"{{"archives": [{{"name": "{ARCHIVE}", "comment": "{comment}", "stats": {{"compressed_size": 1, "deduplicated_size": 1, "nfiles": 1, "original_size": 1}}}}]}}"#
    );
    job_sending(Phase::List, json.as_bytes(), true)
}

/// The list job in a fresh disposable: one archive of work with these settings lines.
fn expect_list(f: &mut Fake, settings: &[&str]) {
    repository_job(f, listing(settings));
}

/// From the size check to the job's teardown, for TARGET on a file-reflink pool: its volume
/// on loop3 attached read-write, borg's state on loop4.
fn expect_fill(f: &mut Fake, target: &str, job_reply: Reply, resize: bool) {
    f.expect(
        &format!("qvm-volume info {target}:private size"),
        Reply::ok("1073741824\n"),
    );
    if resize {
        f.expect(
            &format!("qvm-volume resize {target}:private 2147483648"),
            Reply::ok(""),
        );
    }
    volume_ids(f, target, "varlibqubes");
    f.expect("qvm-pool info varlibqubes", Reply::ok(REFLINK));
    loop_file(f, target, "loop3", true);
    Round {
        rw: true,
        ..Round::state("loop4").volume("loop3")
    }
    .job(f, job_reply);
}

const SETTINGS: &[&str] = &[
    "qubes-borg-settings/1",
    "class=AppVM",
    "mode=files",
    "private-size=2147483648",
    "pref.template=debian-12",
    "pref.label=purple",
    "pref.netvm=sys-firewall",
    "pref.memory=600",
    "feature.service.cups=1",
    "tag=borg-e2e",
];

const QUBES: &str = "dom0|AdminVM|Running|False\ndebian-12|TemplateVM|Halted|False\nsys-firewall|AppVM|Running|False\nwork|AppVM|Halted|True\n";

fn opts(archive: Option<&str>, as_name: Option<&str>, replace: bool) -> RestoreOptions {
    RestoreOptions {
        qube: "work".into(),
        archive: archive.map(String::from),
        as_name: as_name.map(String::from),
        replace,
    }
}

fn run(c: &Config, o: &RestoreOptions, f: &mut Fake) -> (Outcome, String, String) {
    captured(|out, err| restore(c, o, &secrets(b"pw"), f, out, err))
}

#[test]
fn a_new_qube_is_created_with_its_settings_filled_read_write_and_untagged_at_the_end() {
    let d = tmp("restore-new");
    let t = "work-restored-20261129";
    let mut f = Fake::default();
    expect_list(&mut f, SETTINGS);
    f.expect(LS, Reply::ok(QUBES))
        .expect(
            &format!("qvm-create --class AppVM --template debian-12 --label purple {t}"),
            Reply::ok(""),
        )
        .expect(&format!("qvm-tags {t} add {RESTORING_TAG}"), Reply::ok(""))
        .expect(&format!("qvm-prefs {t} netvm sys-firewall"), Reply::ok(""))
        .expect(&format!("qvm-prefs {t} memory 600"), Reply::ok(""))
        .expect(&format!("qvm-features {t} service.cups 1"), Reply::ok(""))
        .expect(&format!("qvm-tags {t} add borg-e2e"), Reply::ok(""));
    expect_fill(
        &mut f,
        t,
        job(
            &[Event::Phase(Phase::Restore), Event::Phase(Phase::Unmount)],
            true,
        ),
        true,
    );
    f.expect(&format!("qvm-tags {t} del {RESTORING_TAG}"), Reply::ok(""));
    let (r, out, err) = run(&cfg(&d, ""), &opts(None, None, false), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert_eq!(
        out,
        format!("restored {ARCHIVE} (files mode) as qube {t}\n")
    );
    let s = spec::decode(&mut &f.requests[1][..]).unwrap();
    assert_eq!(
        s.op,
        Op::Restore(Restore {
            archive: ARCHIVE.into(),
            mode: Mode::Files,
            device: "/dev/xvdi".into()
        })
    );
    assert_eq!(s.state_device.as_deref(), Some("/dev/xvdj"));
}

#[test]
fn a_missing_template_or_netvm_gives_a_warning_and_the_default() {
    let d = tmp("restore-missing");
    let t = "old";
    let mut f = Fake::default();
    expect_list(
        &mut f,
        &[
            "qubes-borg-settings/1",
            "mode=image",
            "private-size=1073741824",
            "pref.template=fedora-38",
            "pref.netvm=sys-gone",
            "pref.label=blue",
        ],
    );
    f.expect(LS, Reply::ok(QUBES))
        .expect(
            &format!("qvm-create --class AppVM --label blue {t}"),
            Reply::ok(""),
        )
        .expect(&format!("qvm-tags {t} add {RESTORING_TAG}"), Reply::ok(""));
    expect_fill(&mut f, t, job(&[], true), false);
    f.expect(&format!("qvm-tags {t} del {RESTORING_TAG}"), Reply::ok(""));
    let (r, out, err) = run(&cfg(&d, ""), &opts(Some(ARCHIVE), Some(t), false), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(err.contains("template fedora-38 no longer exists"), "{err}");
    assert!(err.contains("netvm sys-gone no longer exists"), "{err}");
    assert!(out.contains("(image mode)"));
    let s = spec::decode(&mut &f.requests[1][..]).unwrap();
    assert!(matches!(
        s.op,
        Op::Restore(Restore {
            mode: Mode::Image,
            ..
        })
    ));
}

#[test]
fn an_existing_qube_is_never_touched_without_replace() {
    let d = tmp("restore-exists");
    let mut f = Fake::default();
    expect_list(&mut f, SETTINGS);
    f.expect(LS, Reply::ok(QUBES));
    let (r, out, err) = run(&cfg(&d, ""), &opts(None, Some("work"), false), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(out.is_empty());
    assert!(
        err.contains("qube work exists: nothing was changed"),
        "{err}"
    );
    assert!(!err.contains(RESTORING_TAG), "{err}");
    assert!(f.expected.is_empty());
}

#[test]
fn replace_refuses_a_running_qube() {
    let d = tmp("restore-running");
    let mut f = Fake::default();
    expect_list(&mut f, SETTINGS);
    f.expect(LS, Reply::ok(QUBES));
    let (r, _, err) = run(
        &cfg(&d, ""),
        &opts(None, Some("sys-firewall"), true),
        &mut f,
    );
    assert_eq!(r, Outcome::Failed);
    assert!(
        err.contains("sys-firewall is running: shut it down first"),
        "{err}"
    );
    assert!(f.expected.is_empty());
}

#[test]
fn replace_of_a_halted_qube_overwrites_its_private_volume_and_applies_what_differs() {
    let d = tmp("restore-replace");
    let mut f = Fake::default();
    expect_list(&mut f, SETTINGS);
    f.expect(LS, Reply::ok(QUBES))
        .expect(&format!("qvm-tags work add {RESTORING_TAG}"), Reply::ok(""))
        .expect(
            "qvm-prefs work",
            Reply::ok("include_in_backups  D  True\nklass               -  AppVM\nlabel               -  blue\nmemory              D  400\nname                -  work\nnetvm               -  sys-firewall\ntemplate            -  debian-12\n"),
        )
        // template and netvm are as saved: not set again
        .expect("qvm-prefs work label purple", Reply::ok(""))
        .expect("qvm-prefs work memory 600", Reply::fail(1, "qvm-prefs: error: too much\n"))
        .expect("qvm-features work", Reply::ok("service.cups  0\n"))
        .expect("qvm-features work service.cups 1", Reply::ok(""))
        .expect("qvm-tags work list", Reply::ok(&format!("{RESTORING_TAG}\nborg-e2e\n")));
    expect_fill(&mut f, "work", job(&[], true), true);
    f.expect(&format!("qvm-tags work del {RESTORING_TAG}"), Reply::ok(""));
    let (r, out, err) = run(&cfg(&d, ""), &opts(None, Some("work"), true), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(!f.calls.iter().any(|c| c[0] == "qvm-create"));
    assert_eq!(
        out,
        format!("changed work: label blue -> purple\nchanged work: feature service.cups 0 -> 1\nrestored {ARCHIVE} (files mode) as qube work\n")
    );
    assert!(err.contains("work: memory not set: qvm-prefs work memory 600 failed (exit 1): qvm-prefs: error: too much"), "{err}");
}

#[test]
fn replace_with_settings_already_as_saved_changes_none_and_keeps_a_missing_template() {
    let d = tmp("restore-replace-same");
    let mut f = Fake::default();
    expect_list(
        &mut f,
        &[
            "qubes-borg-settings/1",
            "class=StandaloneVM",
            "mode=files",
            "private-size=1073741824",
            "pref.template=fedora-38",
            "pref.label=blue",
        ],
    );
    f.expect(LS, Reply::ok(QUBES))
        .expect(&format!("qvm-tags work add {RESTORING_TAG}"), Reply::ok(""))
        .expect(
            "qvm-prefs work",
            Reply::ok("label     -  blue\ntemplate  -  debian-12\n"),
        )
        .expect("qvm-features work", Reply::ok(""))
        .expect("qvm-tags work list", Reply::ok(""));
    expect_fill(&mut f, "work", job(&[], true), false);
    f.expect(&format!("qvm-tags work del {RESTORING_TAG}"), Reply::ok(""));
    let (r, out, err) = run(&cfg(&d, ""), &opts(None, Some("work"), true), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(
        out.starts_with("settings of work already as saved: none changed\n"),
        "{out}"
    );
    assert!(
        err.contains("template fedora-38 does not exist: work keeps debian-12"),
        "{err}"
    );
    assert!(
        err.contains("work is of class AppVM, the archived qube of class StandaloneVM"),
        "{err}"
    );
}

#[test]
fn a_failed_restore_leaves_the_tag_and_says_so() {
    let d = tmp("restore-fail");
    let t = "work-restored-20261129";
    let mut f = Fake::default();
    expect_list(
        &mut f,
        &[
            "qubes-borg-settings/1",
            "mode=files",
            "private-size=1073741824",
            "pref.label=red",
        ],
    );
    f.expect(LS, Reply::ok(QUBES))
        .expect(
            &format!("qvm-create --class AppVM --label red {t}"),
            Reply::ok(""),
        )
        .expect(&format!("qvm-tags {t} add {RESTORING_TAG}"), Reply::ok(""));
    expect_fill(
        &mut f,
        t,
        job(
            &[Event::Error(
                "borg extract failed (exit 2): Connection closed".into(),
            )],
            false,
        ),
        false,
    );
    let (r, out, err) = run(&cfg(&d, ""), &opts(None, None, false), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(out.is_empty());
    assert!(err.contains("restore FAILED: borg extract failed"), "{err}");
    assert!(
        err.contains(&format!("qube {t} carries the tag {RESTORING_TAG}")),
        "{err}"
    );
    assert!(!f
        .calls
        .iter()
        .any(|c| c.get(2).map(String::as_str) == Some("del")));
}

#[test]
fn an_archive_without_settings_or_an_unknown_archive_is_refused_before_any_change() {
    for (settings, archive, why) in [
        (&[][..], None, "no qubes-borg-settings/1 settings"),
        (
            SETTINGS,
            Some("work-2020-01-01T00:00:00Z"),
            "no archive work-2020-01-01T00:00:00Z",
        ),
        (
            &["qubes-borg-settings/1", "pref.label=red"][..],
            None,
            "the settings name no mode",
        ),
    ] {
        let d = tmp("restore-nosettings");
        let mut f = Fake::default();
        expect_list(&mut f, settings);
        let (r, _, err) = run(&cfg(&d, ""), &opts(archive, None, false), &mut f);
        assert_eq!(r, Outcome::Failed);
        assert!(err.contains(why), "{err}");
        assert!(f.expected.is_empty());
    }
}

// ---- restore QUBE --path P... --into TARGET ------------------------------------------------

use qubes_borg::dom0::command::restore_into::{restore_into, unpack_argv, IntoOptions};
use qubes_borg::job::spec::Export;

const LS_INTO: &str = "dom0|AdminVM|Running|False\ndebian-12|TemplateVM|Halted|False\nvault|AppVM|Running|True\nwork|AppVM|Halted|True\n";

fn into_opts(target: &str) -> IntoOptions {
    IntoOptions {
        qube: "work".into(),
        archive: None,
        paths: vec!["home/user/Documents".into(), "home/user/notes.txt".into()],
        target: target.into(),
    }
}

fn run_into(c: &Config, o: &IntoOptions, f: &mut Fake) -> (Outcome, String, String) {
    captured(|out, err| restore_into(c, o, &secrets(b"pw"), f, out, err, false))
}

/// The qvm-run into vault, as one expected-call line (the command line, one argument with
/// spaces, is matched by `*` and checked word for word by the first test).
const UNPACK: &str = "qvm-run --pass-io --no-autostart --no-gui --no-color-output --no-color-stderr --no-filter-escape-chars vault *";

/// The export job's stdout: frames of `data` in pieces of at most 1000 bytes, then `done`.
fn export_reply(data: &[u8], extra: &[u8], ok: bool) -> Reply {
    let mut out = encode(&Event::Phase(Phase::Restore));
    for piece in data.chunks(1000) {
        out.extend(encode(&Event::Chunk(piece.to_vec())));
    }
    out.extend_from_slice(extra);
    out.extend(encode(&Event::Done(ok)));
    job_raw(out, ok)
}

/// From the start of the export's disposable to its teardown, with `unpack` as TARGET's answer.
fn expect_export(f: &mut Fake, job_reply: Reply, unpack: Reply) {
    let round = Round::state("loop5");
    round.open(f);
    f.expect(UNPACK, unpack).expect(JOB, job_reply);
    round.close(f);
}

fn stream() -> Vec<u8> {
    // A tar stream is binary: NULs, newlines, escape bytes, things that look like lines.
    (0..5000u32)
        .map(|i| (i * 7 % 256) as u8)
        .chain(b"\ndone ok\nchunk 5\nerror x\n\x1b[2J".iter().copied())
        .collect()
}

#[test]
fn files_go_from_the_export_job_unread_into_the_running_target() {
    let d = tmp("restore-into");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok(LS_INTO));
    expect_list(&mut f, SETTINGS);
    expect_export(&mut f, export_reply(&stream(), b"", true), Reply::ok(""));
    let (r, out, err) = run_into(&cfg(&d, ""), &into_opts("vault"), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert_eq!(f.inflows.borrow().len(), 1);
    assert!(
        f.inflows.borrow()[0] == stream(),
        "the bytes reaching the target differ from the job's stream"
    );
    assert_eq!(
        out,
        format!("restored 2 path(s) of {ARCHIVE} into vault:~/QubesIncoming/borg-restore/{ARCHIVE}/ (4.9 KiB)\n")
    );
    let s = spec::decode(&mut &f.requests[1][..]).unwrap();
    assert_eq!(
        s.op,
        Op::Export(Export {
            archive: ARCHIVE.into(),
            paths: vec!["home/user/Documents".into(), "home/user/notes.txt".into()],
        })
    );
    assert_eq!(s.state_device.as_deref(), Some("/dev/xvdj"));
    // TARGET's command line: constants but for the checked archive name; no --user (its
    // default user), no --service (qubes.VMShell: bash reads it, tar reads the rest of stdin).
    let run = f
        .calls
        .iter()
        .find(|c| c[0] == "qvm-run" && c[7] == "vault")
        .unwrap();
    assert_eq!(
        run.last().unwrap(),
        "umask 077 && mkdir -p -- ~/QubesIncoming/borg-restore/'work-2026-11-29T18:00:00Z' && exec tar --extract --file=- --preserve-permissions --no-same-owner --keep-old-files --directory ~/QubesIncoming/borg-restore/'work-2026-11-29T18:00:00Z'"
    );
    assert_eq!(run[..], unpack_argv("vault", ARCHIVE).unwrap()[..]);
}

#[test]
fn hostile_job_output_is_contained_and_never_reaches_the_target_or_the_terminal() {
    let d = tmp("restore-into-hostile");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok(LS_INTO));
    expect_list(&mut f, SETTINGS);
    let extra = [
        &b"warning \x1b]0;owned\x07\x1b[2J evil\n"[..],
        b"chunk 99999999\n",
        b"chunk 0\n",
        b"noise from a profile\n",
        &[b'A'; 3000],
        b"\n",
    ]
    .concat();
    expect_export(
        &mut f,
        export_reply(b"tar-bytes", &extra, true),
        Reply::ok(""),
    );
    let (r, _, err) = run_into(&cfg(&d, ""), &into_opts("vault"), &mut f);
    // The stream itself arrived whole: the job's garbage lines are reported, not forwarded.
    assert_eq!(r, Outcome::Ok, "{err}");
    assert_eq!(f.inflows.borrow()[0], b"tar-bytes");
    assert!(err.contains("unexpected line: chunk 99999999"), "{err}");
    assert!(
        err.contains("1 more malformed lines from the job ignored"),
        "{err}"
    );
    assert!(
        err.chars().all(|c| c == '\n' || !c.is_control()),
        "control characters printed: {err:?}"
    );
}

#[test]
fn a_stream_cut_inside_a_chunk_or_a_failed_job_is_a_failure_that_says_what_arrived() {
    let d = tmp("restore-into-cut");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok(LS_INTO));
    expect_list(&mut f, SETTINGS);
    let mut cut = encode(&Event::Chunk(vec![1u8; 100]));
    cut.truncate(50);
    let reply = Reply {
        code: 1,
        stdout: cut,
        stderr: b"borg: Connection closed".to_vec(),
        interrupt: false,
    };
    expect_export(
        &mut f,
        reply,
        Reply::fail(2, "tar: Unexpected EOF in archive\n"),
    );
    let (r, out, err) = run_into(&cfg(&d, ""), &into_opts("vault"), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(out.is_empty());
    assert!(err.contains("bytes short of a chunk"), "{err}");
    assert!(
        err.contains(&format!(
            "what arrived is in vault:~/QubesIncoming/borg-restore/{ARCHIVE}/ (incomplete)"
        )),
        "{err}"
    );
}

#[test]
fn a_target_that_refuses_the_stream_fails_the_restore_with_its_sanitized_message() {
    let d = tmp("restore-into-tarfail");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok(LS_INTO));
    expect_list(&mut f, SETTINGS);
    expect_export(
        &mut f,
        export_reply(b"tar-bytes", b"", true),
        Reply::fail(2, "tar: home/user/x: Cannot open: File exists\x1b[2J\n"),
    );
    let (r, out, err) = run_into(&cfg(&d, ""), &into_opts("vault"), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(out.is_empty());
    assert!(
        err.contains(
            "unpacking in vault failed (exit 2): tar: home/user/x: Cannot open: File exists?[2J"
        ),
        "{err}"
    );
}

#[test]
fn a_target_not_running_or_dom0_or_missing_is_refused_before_any_job() {
    for (target, why, calls) in [
        ("work", "qube work is halted: start it first", 1),
        ("gone", "no qube gone", 1),
        ("dom0", "dom0 cannot receive files", 0),
        ("sys-backup-mnt", "sys-backup-mnt cannot receive files", 0),
    ] {
        let d = tmp("restore-into-refused");
        let mut f = Fake::default();
        if calls == 1 {
            f.expect(LS, Reply::ok(LS_INTO));
        }
        let (r, out, err) = run_into(&cfg(&d, ""), &into_opts(target), &mut f);
        assert_eq!(r, Outcome::Failed, "{target}");
        assert!(out.is_empty());
        assert!(err.contains(why), "{target}: {err}");
        assert_eq!(f.calls.len(), calls, "{target}: {:?}", f.calls);
    }
}

#[test]
fn an_image_mode_archive_is_refused_before_the_export() {
    let d = tmp("restore-into-image");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok(LS_INTO));
    expect_list(&mut f, &["qubes-borg-settings/1", "mode=image"]);
    let (r, _, err) = run_into(&cfg(&d, ""), &into_opts("vault"), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty());
    assert!(err.contains("is an image-mode archive"), "{err}");
    assert!(f.inflows.borrow().is_empty());
}

#[test]
fn hostile_path_arguments_are_refused_by_the_program_before_anything_runs() {
    for bad in [
        "../etc",
        "home/../../root",
        "/etc/shadow",
        "a;rm -rf ~",
        "$(id)",
        "-x",
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_qvm-backup-borg"))
            .args(["restore", "work", "--path", bad, "--into", "vault"])
            .args(["--config", "/nonexistent/backup.conf"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(64), "{bad}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(&format!("path '{bad}'")), "{bad}: {e}");
    }
}

#[test]
fn a_standalone_or_template_archive_is_created_with_its_class_and_a_warning_about_its_root() {
    for (class, settings_template, create, warn) in [
        (
            "StandaloneVM",
            None,
            "qvm-create --class StandaloneVM --label green old",
            "old: StandaloneVM with an EMPTY root volume",
        ),
        (
            "StandaloneVM",
            Some("debian-12"),
            "qvm-create --class StandaloneVM --template debian-12 --label green old",
            "old: StandaloneVM, its root volume cloned from template debian-12",
        ),
        (
            "TemplateVM",
            Some("debian-12"),
            "qvm-create --class TemplateVM --label green old",
            "old: TemplateVM with an EMPTY root volume",
        ),
    ] {
        let d = tmp("restore-classes");
        let mut f = Fake::default();
        let class_line = format!("class={class}");
        let template_line = settings_template.map(|t| format!("pref.template={t}"));
        let mut settings = vec![
            "qubes-borg-settings/1",
            &class_line,
            "mode=files",
            "private-size=1073741824",
            "pref.label=green",
        ];
        if let Some(t) = &template_line {
            settings.push(t);
        }
        expect_list(&mut f, &settings);
        f.expect(LS, Reply::ok(QUBES))
            .expect(create, Reply::ok(""))
            .expect(&format!("qvm-tags old add {RESTORING_TAG}"), Reply::ok(""));
        expect_fill(&mut f, "old", job(&[], true), false);
        f.expect(&format!("qvm-tags old del {RESTORING_TAG}"), Reply::ok(""));
        let (r, out, err) = run(&cfg(&d, ""), &opts(None, Some("old"), false), &mut f);
        assert_eq!(r, Outcome::Ok, "{class}: {err}");
        assert!(
            f.expected.is_empty(),
            "{class}: calls not made: {:?}",
            f.expected
        );
        assert!(err.contains(warn), "{class}: {err}");
        assert!(out.contains("as qube old"), "{out}");
        if class == "TemplateVM" {
            assert!(
                err.contains("template debian-12 in the settings ignored"),
                "{err}"
            );
        }
    }
}
