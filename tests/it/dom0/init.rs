//! Development machine: dom0 `qvm-backup-borg init` against the fake Qubes: the exact calls (a
//! fresh disposable with borg's state, everything undone), the request (op init, no key file),
//! the key and its exports written root-only from a strictly checked answer, backup.conf's diff
//! shown and confirmed, an existing repository left alone, hostile answers refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use qubes_borg::dom0::command::init::{init, InitOptions, InitOutcome};
use qubes_borg::dom0::config::{load, Config};
use qubes_borg::dom0::qubes::{Fake, Reply};
use qubes_borg::dom0::server::{self, ServerOptions};
use qubes_borg::dom0::session::Outcome;
use qubes_borg::job::progress::{Event, InitResult, Phase};
use qubes_borg::job::spec::{self, Encryption, Init, Op};

use crate::support::dom0::{captured, job, job_sending, repository_job, tmp};

const NOW: u64 = 1_790_000_000;

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

/// The init job in a fresh disposable, answering `result`.
fn expect_init(f: &mut Fake, result: &InitResult) {
    repository_job(f, job_sending(Phase::Init, &result.encode(), true));
}

fn run(
    c: &Config,
    opts: &InitOptions,
    f: &mut Fake,
    answer: bool,
) -> (InitOutcome, String, String, Vec<String>) {
    let mut asked = Vec::new();
    let mut confirm = |q: &str| {
        asked.push(q.to_string());
        answer
    };
    let (r, out, err) = captured(|out, err| init(c, opts, f, &mut confirm, out, err, NOW));
    (r, out, err, asked)
}

fn opts(enc: Encryption, yes: bool) -> InitOptions {
    InitOptions {
        encryption: enc,
        yes,
        server: None,
        repository: None,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_of_a_fresh_repository_keeps_the_key_in_dom0_root_only_and_sets_key_file() {
    let d = tmp("init-fresh");
    let c = write_cfg(&d, "");
    let mut f = Fake::default();
    expect_init(&mut f, &created(true));
    let (r, out, err, asked) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, true);
    assert_eq!(r, InitOutcome::Done(Outcome::Ok), "{err}");
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
    let d = tmp("init-exists");
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
    expect_init(&mut f, &exists);
    let (r, out, err, _) = run(&c, &opts(Encryption::RepokeyBlake2, false), &mut f, false);
    assert_eq!(r, InitOutcome::Done(Outcome::Ok), "{err}");
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
    let d = tmp("init-declined");
    let c = write_cfg(&d, "");
    let before = std::fs::read(d.join("backup.conf")).unwrap();
    let mut f = Fake::default();
    let (r, _, err, asked) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, false);
    assert_eq!(r, InitOutcome::Done(Outcome::Failed));
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
        let d = tmp(&format!("init-hostile{i}"));
        let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
        let mut f = Fake::default();
        repository_job(&mut f, job_sending(Phase::Init, data, true));
        let (r, _, err, asked) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, false);
        assert_eq!(r, InitOutcome::Done(Outcome::Failed), "case {i}: {err}");
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
    let d = tmp("init-failed");
    let c = write_cfg(&d, "");
    let mut f = Fake::default();
    repository_job(
        &mut f,
        job(
            &[
                Event::Phase(Phase::Init),
                Event::Error("borg init failed (exit 2): Connection closed by remote host".into()),
            ],
            false,
        ),
    );
    let (r, _, err, _) = run(&c, &opts(Encryption::KeyfileBlake2, true), &mut f, false);
    assert_eq!(r, InitOutcome::Done(Outcome::Failed));
    assert!(err.contains("init FAILED: borg init failed"), "{err}");
    assert!(!d.join("passphrase").exists());
    assert!(!d.join("key").exists());
}

#[test]
fn a_different_key_file_already_there_is_kept_aside() {
    let d = tmp("init-aside");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    std::fs::write(d.join("k"), key("cd")).unwrap();
    let mut f = Fake::default();
    expect_init(&mut f, &created(true));
    let (r, _, err, _) = run(&c, &opts(Encryption::KeyfileBlake2, false), &mut f, false);
    assert_eq!(r, InitOutcome::Done(Outcome::Ok), "{err}");
    assert_eq!(std::fs::read(d.join("k")).unwrap(), key("ab"));
    assert_eq!(
        std::fs::read(d.join(format!("k.old-{NOW}"))).unwrap(),
        key("cd")
    );
    assert!(err.contains("kept as"), "{err}");
}

// --- the server's side (--host) ------------------------------------------------------------

/// A real ed25519 host key and its fingerprint (`ssh-keygen -lf`).
const HOST_KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINbD82viPYU9Mob/c7pG0mLJEuWT5tp+pBx17CDEq6fi";
const HOST_FP: &str = "SHA256:2EG3cyQD68y1ufc6KeKwg/PUz82/wiAqIebB47NHPgY";
/// The vault's public key.
const USER_KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
const RUN_USER: &str = "qvm-run --user user --pass-io --no-gui --no-color-output --no-color-stderr";
const RUN_ROOT: [&str; 7] = [
    "qvm-run",
    "--user",
    "root",
    "--pass-io",
    "--no-gui",
    "--no-color-output",
    "--no-color-stderr",
];

fn server_opts(fingerprint: Option<&str>) -> InitOptions {
    InitOptions {
        encryption: Encryption::KeyfileBlake2,
        yes: false,
        server: Some(ServerOptions {
            host: "nas.example".into(),
            user: "borg".into(),
            port: 22,
            key_set: "default".into(),
            quota: "1T".into(),
            fingerprint: fingerprint.map(String::from),
            admin: false,
        }),
        repository: None,
    }
}

fn line() -> String {
    server::authorized_keys_line(USER_KEY, "default", "repo", "1T")
}

fn expect_server_start(f: &mut Fake, keyscan: &str) {
    f.expect(
        &format!("{RUN_USER} ssh-backup qubes-borg-keygen --server-line default repo 1T"),
        Reply::ok(&format!("{}\n", line())),
    )
    .expect(
        &format!("{RUN_USER} sys-backup ssh-keyscan -T 10 -p 22 nas.example"),
        Reply::ok(keyscan),
    );
}

fn file_calls(
    f: &mut Fake,
    vm: &str,
    user: &str,
    file: &server::QubeFile,
    current: &str,
    write: bool,
) {
    let argv = |script: &str| {
        let mut v: Vec<&str> = RUN_ROOT.to_vec();
        v[2] = user;
        v.extend([vm, "sh", "-c", script, "sh", file.arg]);
        v.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let r = argv(file.read);
    f.expect_argv(
        &r.iter().map(String::as_str).collect::<Vec<_>>(),
        Reply::ok(current),
    );
    if write {
        let w = argv(file.write);
        f.expect_argv(
            &w.iter().map(String::as_str).collect::<Vec<_>>(),
            Reply::ok(""),
        );
    }
}

/// Destination DEST in sys-backup and key set KEY_SET's server.conf in the vault: neither
/// there yet, both written.
fn new_files(f: &mut Fake, dest: &str, key_set: &str) {
    let dest = server::destination_file(dest);
    file_calls(f, "sys-backup", "root", &dest, "", true);
    let conf = server::server_conf_file(key_set);
    file_calls(f, "ssh-backup", "user", &conf, "", true);
}

#[test]
fn init_with_a_server_pins_the_confirmed_key_writes_both_files_and_prints_the_append_only_line() {
    let d = tmp("init-server");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    let mut f = Fake::default();
    expect_server_start(
        &mut f,
        &format!("# nas.example:22 SSH-2.0-OpenSSH_9.2\nnas.example ssh-ed25519 {HOST_KEY}\n"),
    );
    new_files(&mut f, "borgbase", "default");
    expect_init(&mut f, &created(true));
    let (r, out, err, asked) = run(&c, &server_opts(None), &mut f, true);
    assert_eq!(r, InitOutcome::Done(Outcome::Ok), "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    // the fingerprint was shown and confirmed, then the registration
    assert!(err.contains(&format!("ssh-ed25519 {HOST_FP}")), "{err}");
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[0].contains("host keys"), "{asked:?}");
    // the files written: what went to the writers' stdin
    let dest = String::from_utf8(f.requests[0].clone()).unwrap();
    assert!(
        dest.contains(&format!(
            "host = nas.example\nuser = borg\nhost-key = ssh-ed25519 {HOST_KEY}\nagent = default\n"
        )),
        "{dest}"
    );
    // read back by the parsers of sys-backup and of the vault
    let parsed = qubes_borg::ssh::destination::parse(
        Path::new("/etc/qubes-borg/destinations/borgbase.conf"),
        "borgbase",
        dest.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (parsed.host.as_str(), parsed.user.as_str(), parsed.port),
        ("nas.example", "borg", 22)
    );
    assert_eq!(parsed.agent.as_deref(), Some("default"));
    assert_eq!(parsed.host_keys.len(), 1);
    let conf = String::from_utf8(f.requests[1].clone()).unwrap();
    qubes_borg::agent::keyset::parse(Path::new("server.conf"), conf.as_bytes()).unwrap();
    assert!(
        conf.contains(&format!("user = borg\nhost-key = ssh-ed25519 {HOST_KEY}\n")),
        "{conf}"
    );
    assert!(out.contains(&format!("\n{}\n", line())), "{out}");
    assert!(line().starts_with("command=\"borg serve --append-only --restrict-to-repository repo --storage-quota 1T\",restrict ssh-ed25519 "));
}

#[test]
fn a_wrong_fingerprint_is_refused_and_nothing_is_written() {
    let d = tmp("init-wrongfp");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    let mut f = Fake::default();
    expect_server_start(&mut f, &format!("nas.example ssh-ed25519 {HOST_KEY}\n"));
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let (r, _, err, asked) = run(&c, &server_opts(Some(&wrong)), &mut f, true);
    assert_eq!(r, InitOutcome::HostKeyRefused, "{err}");
    assert!(asked.is_empty());
    assert!(
        f.expected.is_empty() && f.requests.is_empty(),
        "{:?}",
        f.calls
    );
    assert!(
        err.contains(&format!(
            "no host key of nas.example has the fingerprint {wrong}"
        )),
        "{err}"
    );
    assert!(!d.join("passphrase").exists());
}

#[test]
fn host_keys_not_confirmed_are_refused() {
    let d = tmp("init-notconfirmed");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    let mut f = Fake::default();
    expect_server_start(&mut f, &format!("nas.example ssh-ed25519 {HOST_KEY}\n"));
    let (r, _, err, _) = run(&c, &server_opts(None), &mut f, false);
    assert_eq!(r, InitOutcome::HostKeyRefused, "{err}");
    assert!(f.requests.is_empty());
}

#[test]
fn hostile_keyscan_output_is_refused_before_anything_is_written() {
    for (i, bad) in [
        format!("evil.example ssh-ed25519 {HOST_KEY}\n"),
        format!("nas.example ssh-ed25519 {HOST_KEY}\x1b[2J\n"),
        "nas.example ssh-ed25519 AAAAB3NzaC1yc2E=\n".to_string(),
        format!("nas.example ssh-ed25519 {HOST_KEY}\n").repeat(20) + &"x".repeat(70_000),
        "# no key at all\n".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let d = tmp(&format!("init-hostilescan{i}"));
        let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
        let mut f = Fake::default();
        expect_server_start(&mut f, bad);
        let (r, _, err, asked) = run(&c, &server_opts(Some(HOST_FP)), &mut f, true);
        assert_eq!(r, InitOutcome::Done(Outcome::Failed), "case {i}: {err}");
        assert!(asked.is_empty(), "case {i}");
        assert!(f.requests.is_empty(), "case {i}: {:?}", f.calls);
        assert!(!err.contains('\x1b'), "case {i}");
        assert!(err.contains("ssh-keyscan"), "case {i}: {err}");
    }
}

#[test]
fn a_changed_destination_file_is_shown_as_a_diff_and_left_alone_when_not_confirmed() {
    let d = tmp("init-diff");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    let mut f = Fake::default();
    expect_server_start(&mut f, &format!("nas.example ssh-ed25519 {HOST_KEY}\n"));
    // the current file (hostile bytes included) differs in its host key and agent
    let current = "# written by qvm-backup-borg init (docs/PROTOCOL.md)\nhost = nas.example\nuser = borg\nhost-key = ssh-ed25519 OLDKEY\x1b[31m\nagent = other\n";
    file_calls(
        &mut f,
        "sys-backup",
        "root",
        &server::destination_file("borgbase"),
        current,
        false,
    );
    let mut answers = vec![false];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut confirm = |_: &str| answers.pop().unwrap_or(false);
    let r = init(
        &c,
        &server_opts(Some(HOST_FP)),
        &mut f,
        &mut confirm,
        &mut out,
        &mut err,
        NOW,
    );
    let err = String::from_utf8(err).unwrap();
    assert_eq!(r, InitOutcome::Done(Outcome::Failed), "{err}");
    assert!(err.contains("-host-key = ssh-ed25519 OLDKEY?[31m"), "{err}");
    assert!(
        err.contains(&format!("+host-key = ssh-ed25519 {HOST_KEY}")),
        "{err}"
    );
    assert!(err.contains("\n-agent = other\n"), "{err}");
    assert!(err.contains("\n+agent = default\n"), "{err}");
    assert!(err.contains("\n host = nas.example\n"), "{err}");
    assert!(err.contains("left unchanged: not confirmed"), "{err}");
    assert!(f.requests.is_empty(), "written without confirmation");
    assert!(f.expected.is_empty());
}

#[test]
fn an_unchanged_destination_file_is_not_rewritten() {
    let d = tmp("init-same");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    let mut o = server_opts(Some(HOST_FP));
    o.yes = true;
    let s = o.server.clone().unwrap();
    let keys = server::parse_keyscan(
        format!("nas.example ssh-ed25519 {HOST_KEY}\n").as_bytes(),
        "nas.example",
        22,
    )
    .unwrap();
    let dest = server::destination_text("borgbase", &s, &keys).unwrap();
    let conf = server::server_conf_text(&s, &keys);
    let mut f = Fake::default();
    expect_server_start(&mut f, &format!("nas.example ssh-ed25519 {HOST_KEY}\n"));
    file_calls(
        &mut f,
        "sys-backup",
        "root",
        &server::destination_file("borgbase"),
        &dest,
        false,
    );
    file_calls(
        &mut f,
        "ssh-backup",
        "user",
        &server::server_conf_file("default"),
        &conf,
        false,
    );
    let exists = InitResult {
        created: false,
        key_file: None,
        export: vec![],
        paper: vec![],
    };
    expect_init(&mut f, &exists);
    let (r, out, err, asked) = run(&c, &o, &mut f, false);
    assert_eq!(r, InitOutcome::Done(Outcome::Ok), "{err}");
    assert!(asked.is_empty());
    assert_eq!(f.requests.len(), 1, "only the init job's request");
    assert!(err.contains("unchanged"), "{err}");
    assert!(out.contains("already exists"), "{out}");
}

#[test]
fn repository_given_makes_backup_conf_or_changes_it_after_confirmation() {
    use qubes_borg::dom0::command::init::{prepare_config, PrepareError};
    let d = tmp("init-prepare");
    let p = d.join("backup.conf");
    let mut err = Vec::new();
    let mut never = |_: &str| -> bool { panic!("nothing to confirm for a new file") };
    prepare_config(
        &p,
        Some("ssh://offsite/./repo"),
        false,
        &mut never,
        &mut err,
        NOW,
    )
    .unwrap();
    assert_eq!(load(&p).unwrap().repository, "ssh://offsite/./repo");
    assert_eq!(mode(&p), 0o600);
    // the same again: nothing to do, nothing asked
    prepare_config(
        &p,
        Some("ssh://offsite/./repo"),
        false,
        &mut never,
        &mut err,
        NOW,
    )
    .unwrap();
    // another repository: the diff, a question; declined leaves the file alone
    let mut no = |_: &str| false;
    let e = prepare_config(
        &p,
        Some("ssh://other/./repo"),
        false,
        &mut no,
        &mut err,
        NOW,
    )
    .unwrap_err();
    // not confirmed: exit 1 in qvm-backup-borg, not 78 (backup.conf itself is fine)
    assert!(
        matches!(&e, PrepareError::NotConfirmed(m) if m.contains("not confirmed")),
        "{e}"
    );
    assert_eq!(load(&p).unwrap().repository, "ssh://offsite/./repo");
    let shown = String::from_utf8(err.clone()).unwrap();
    assert!(
        shown.contains("-repository = ssh://offsite/./repo\n+repository = ssh://other/./repo"),
        "{shown}"
    );
    let mut yes = |_: &str| true;
    prepare_config(
        &p,
        Some("ssh://other/./repo"),
        false,
        &mut yes,
        &mut err,
        NOW,
    )
    .unwrap();
    assert_eq!(load(&p).unwrap().repository, "ssh://other/./repo");
}

#[test]
fn admin_adds_the_full_access_key_set_its_destination_and_admin_repository() {
    let d = tmp("init-admin");
    let c = write_cfg(&d, &format!("key_file = {}/k\n", d.display()));
    let mut o = server_opts(Some(HOST_FP));
    o.yes = true;
    o.server.as_mut().unwrap().admin = true;
    let admin_line = server::admin_keys_line(USER_KEY, "admin", "repo");
    let mut f = Fake::default();
    f.expect(
        &format!("{RUN_USER} ssh-backup qubes-borg-keygen --server-line default repo 1T"),
        Reply::ok(&format!("{}\n", line())),
    )
    .expect(
        &format!("{RUN_USER} ssh-backup qubes-borg-keygen --admin-server-line admin repo"),
        Reply::ok(&format!("{admin_line}\n")),
    )
    .expect(
        &format!("{RUN_USER} sys-backup ssh-keyscan -T 10 -p 22 nas.example"),
        Reply::ok(&format!("nas.example ssh-ed25519 {HOST_KEY}\n")),
    );
    new_files(&mut f, "borgbase", "default");
    new_files(&mut f, "borgbase-admin", "admin");
    expect_init(&mut f, &created(true));
    let (r, out, err, _) = run(&c, &o, &mut f, false);
    assert_eq!(r, InitOutcome::Done(Outcome::Ok), "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(admin_line
        .starts_with("command=\"borg serve --restrict-to-repository repo\",restrict ssh-ed25519 "));
    assert!(
        out.contains(&format!("{}\n{admin_line}\n", line())),
        "{out}"
    );
    let admin_dest = String::from_utf8(f.requests[2].clone()).unwrap();
    assert!(admin_dest.contains("agent = admin\n"), "{admin_dest}");
    let cfg = load(&d.join("backup.conf")).unwrap();
    assert_eq!(
        cfg.admin_repository.as_deref(),
        Some("ssh://borgbase-admin/./repo")
    );
}
