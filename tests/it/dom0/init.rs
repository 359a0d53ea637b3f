//! Development machine: dom0 `qvm-backup-borg init` against the fake Qubes: the exact calls (a
//! fresh disposable with borg's state, everything undone), the request (op init, no key file),
//! the key and its exports written root-only from a strictly checked answer, backup.conf's diff
//! shown and confirmed, an existing repository left alone, hostile answers refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use qubes_borg::dom0::config::{load, Config};
use qubes_borg::dom0::init::{init, InitOptions};
use qubes_borg::dom0::qubes::{Fake, Reply};
use qubes_borg::dom0::run::Outcome;
use qubes_borg::job::progress::{encode, Event, InitResult, Phase, MAX_DATA};
use qubes_borg::job::spec::{self, Encryption, Init, Op};

const JOB: &str = "qvm-run --user root --pass-io --no-gui --no-color-output --no-color-stderr --service sys-backup-mnt qubes-borg.BackupJob";
const NOW: u64 = 1_790_000_000;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qb-init-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// backup.conf in `dir` (0600) with its run dir, state image and passphrase file there.
fn write_cfg(dir: &Path, extra: &str) -> Config {
    let p = dir.join("backup.conf");
    std::fs::write(
        &p,
        format!(
            "repository = ssh://borgbase/./repo\nrun_dir = {d}/run\nstate_image = {d}/state.img\nstate_size_mib = 1\npassphrase_file = {d}/passphrase\n{extra}[qube work]\nmode = image\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    load(&p).unwrap()
}

fn key(id: &str) -> Vec<u8> {
    format!(
        "BORG_KEY {}\nhqlhbGdvcml0aG2mc2hhMjU2pGRhdGHaAZ6O\n+Dr5RGG6HBNnn3tOMGgDSjyHcV3dZcbI7C==\n",
        id.repeat(64 / id.len())
    )
    .into_bytes()
}

const PAPER: &[u8] = b"To restore key use borg key import --paper /path/to/repo\n\nBORG PAPER KEY v1\nid: 31 / b161a6 67de3e e42652 / 8e6b43 5c24b1 - e2\n 1: 86a961 6c676f 726974 686da6 736861 323536 - 14\n";

fn created(keyfile: bool) -> InitResult {
    InitResult {
        created: true,
        key_file: keyfile.then(|| key("ab")),
        export: key("ab"),
        paper: PAPER.to_vec(),
    }
}

fn job_sending(data: &[u8], ok: bool) -> Reply {
    let mut out = encode(&Event::Phase(Phase::Init));
    for piece in data.chunks(MAX_DATA) {
        out.extend(encode(&Event::Data(piece.to_vec())));
    }
    out.extend(encode(&Event::Done(ok)));
    Reply {
        code: if ok { 0 } else { 1 },
        stdout: out,
        stderr: vec![],
        interrupt: false,
    }
}

fn expect_calls(f: &mut Fake, job: Reply) {
    f.expect(
        "qvm-shutdown --wait --timeout 120 sys-backup-mnt",
        Reply::ok(""),
    )
    .expect("qvm-start sys-backup-mnt", Reply::ok(""))
    .expect("losetup --find --show *", Reply::ok("/dev/loop8\n"))
    .expect(
        "qvm-block attach --option frontend-dev=xvdj sys-backup-mnt dom0:loop8",
        Reply::ok(""),
    )
    .expect(JOB, job)
    .expect("qvm-block detach sys-backup-mnt dom0:loop8", Reply::ok(""))
    .expect("losetup --detach /dev/loop8", Reply::ok(""))
    .expect(
        "qvm-shutdown --wait --timeout 120 sys-backup-mnt",
        Reply::ok(""),
    );
}

fn run(
    c: &Config,
    opts: &InitOptions,
    f: &mut Fake,
    answer: bool,
) -> (Outcome, String, String, Vec<String>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut asked = Vec::new();
    let mut confirm = |q: &str| {
        asked.push(q.to_string());
        answer
    };
    let r = init(c, opts, f, &mut confirm, &mut out, &mut err, NOW);
    (
        r,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
        asked,
    )
}

fn opts(enc: Encryption, yes: bool) -> InitOptions {
    InitOptions {
        encryption: enc,
        yes,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_of_a_fresh_repository_keeps_the_key_in_dom0_root_only_and_sets_key_file() {
    let d = tmp("fresh");
    let c = write_cfg(&d, "");
    let mut f = Fake::default();
    expect_calls(&mut f, job_sending(&created(true).encode(), true));
    let (r, out, err, asked) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, true);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    // the request: op init in keyfile mode, no key file, the new passphrase
    let s = spec::decode(&mut &f.requests[0][..]).unwrap();
    assert_eq!(
        s.op,
        Op::Init(Init {
            encryption: Encryption::KeyfileBlake2
        })
    );
    assert_eq!(s.key_file, None);
    assert_eq!(s.state_device.as_deref(), Some("/dev/xvdj"));
    let pass = std::fs::read(d.join("passphrase")).unwrap();
    assert_eq!(pass, [&s.passphrase[..], b"\n"].concat());
    assert_eq!(s.passphrase.len(), 43);
    // the diff was shown, the question asked, the line added before the [qube] section
    assert_eq!(asked.len(), 1, "{asked:?}");
    let key_path = d.join("key");
    assert!(
        err.contains(&format!("+key_file = {}", key_path.display())),
        "{err}"
    );
    let conf = std::fs::read_to_string(d.join("backup.conf")).unwrap();
    assert!(
        conf.contains(&format!("key_file = {}\n[qube work]", key_path.display())),
        "{conf}"
    );
    assert_eq!(
        load(&d.join("backup.conf")).unwrap().key_file,
        Some(key_path.clone())
    );
    // key and exports: the bytes the job sent, 0600
    assert_eq!(std::fs::read(&key_path).unwrap(), key("ab"));
    assert_eq!(
        std::fs::read(d.join("repository-key.export")).unwrap(),
        key("ab")
    );
    assert_eq!(
        std::fs::read(d.join("repository-key.paper.txt")).unwrap(),
        PAPER
    );
    for p in [
        "key",
        "passphrase",
        "repository-key.export",
        "repository-key.paper.txt",
        "backup.conf",
    ] {
        assert_eq!(mode(&d.join(p)), 0o600, "{p}");
    }
    assert!(out.contains("KEEP A COPY OFFLINE"), "{out}");
    assert!(out.contains("nobody can read the archives"), "{out}");
}

#[test]
fn an_existing_repository_is_left_alone_and_nothing_is_written() {
    let d = tmp("exists");
    let c = write_cfg(&d, "");
    std::fs::write(d.join("passphrase"), "old-pass\n").unwrap();
    std::fs::set_permissions(d.join("passphrase"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut f = Fake::default();
    let exists = InitResult {
        created: false,
        key_file: None,
        export: vec![],
        paper: vec![],
    };
    expect_calls(&mut f, job_sending(&exists.encode(), true));
    let (r, out, err, _) = run(&c, &opts(Encryption::RepokeyBlake2, false), &mut f, false);
    assert_eq!(r, Outcome::Ok, "{err}");
    let s = spec::decode(&mut &f.requests[0][..]).unwrap();
    assert_eq!(s.passphrase, b"old-pass");
    assert!(
        out.contains("already exists") && out.contains("left alone"),
        "{out}"
    );
    assert!(!d.join("key").exists());
    assert!(!d.join("repository-key.export").exists());
    assert_eq!(std::fs::read(d.join("passphrase")).unwrap(), b"old-pass\n");
}

#[test]
fn not_confirming_the_config_change_stops_before_any_call() {
    let d = tmp("declined");
    let c = write_cfg(&d, "");
    let before = std::fs::read(d.join("backup.conf")).unwrap();
    let mut f = Fake::default();
    let (r, _, err, asked) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, false);
    assert_eq!(r, Outcome::Failed);
    assert_eq!(asked.len(), 1);
    assert!(f.calls.is_empty(), "{:?}", f.calls);
    assert!(err.contains("not confirmed"), "{err}");
    assert_eq!(std::fs::read(d.join("backup.conf")).unwrap(), before);
    assert!(!d.join("passphrase").exists());
}

#[test]
fn hostile_answers_from_the_job_are_refused_and_nothing_is_written() {
    let escapes = InitResult {
        paper: b"BORG PAPER KEY v1\n\x1b]0;owned\x07\n".to_vec(),
        ..created(true)
    }
    .encode();
    let not_a_key = InitResult {
        key_file: Some(b"ssh-ed25519 AAAA\n".to_vec()),
        ..created(true)
    }
    .encode();
    let repokey_answer_in_keyfile_mode = created(false).encode();
    let trailing = [created(true).encode(), b"end\n".to_vec()].concat();
    for (i, data) in [escapes, not_a_key, repokey_answer_in_keyfile_mode, trailing]
        .iter()
        .enumerate()
    {
        let d = tmp(&format!("hostile{i}"));
        let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
        let mut f = Fake::default();
        expect_calls(&mut f, job_sending(data, true));
        let (r, _, err, asked) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, false);
        assert_eq!(r, Outcome::Failed, "case {i}: {err}");
        assert!(asked.is_empty(), "key_file set: nothing to confirm");
        assert!(err.contains("init FAILED: the init job"), "case {i}: {err}");
        assert!(!err.contains('\x1b'));
        for p in [
            "k",
            "passphrase",
            "repository-key.export",
            "repository-key.paper.txt",
        ] {
            assert!(!d.join(p).exists(), "case {i}: {p} written");
        }
    }
}

#[test]
fn a_failed_init_job_reports_its_error_and_writes_nothing() {
    let d = tmp("failed");
    let c = write_cfg(&d, "");
    let mut f = Fake::default();
    let mut job = job_sending(b"", false);
    job.stdout = [
        encode(&Event::Phase(Phase::Init)),
        encode(&Event::Error(
            "borg init failed (exit 2): Connection closed by remote host".into(),
        )),
        encode(&Event::Done(false)),
    ]
    .concat();
    expect_calls(&mut f, job);
    let (r, _, err, _) = run(&c, &opts(Encryption::KeyfileBlake2, true), &mut f, false);
    assert_eq!(r, Outcome::Failed);
    assert!(err.contains("init FAILED: borg init failed"), "{err}");
    assert!(!d.join("passphrase").exists());
    assert!(!d.join("key").exists());
}

#[test]
fn a_different_key_file_already_there_is_kept_aside() {
    let d = tmp("aside");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    std::fs::write(d.join("k"), key("cd")).unwrap();
    let mut f = Fake::default();
    expect_calls(&mut f, job_sending(&created(true).encode(), true));
    let (r, _, err, _) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, false);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert_eq!(std::fs::read(d.join("k")).unwrap(), key("ab"));
    assert_eq!(
        std::fs::read(d.join(format!("k.old-{NOW}"))).unwrap(),
        key("cd")
    );
    assert!(err.contains("kept as"), "{err}");
}
