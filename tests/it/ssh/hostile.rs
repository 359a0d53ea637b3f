//! Hostile input against qubes-ssh-client (argv from borg) and against the qubes-borg.Ssh service
//! (raw requests over the qrexec stand-in, as a compromised sys-backup-mnt could send them).
//! Every case asserts that no ssh was started, and the exit code and the message.

use crate::support::*;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Client argv that must be refused before any qrexec call (exit 64, one line).
const CLIENT_REFUSED: &[&[&str]] = &[
    // option injection, every position and spelling
    &[
        "-oProxyCommand=touch /tmp/qbssh-pwned",
        "nas",
        "borg",
        "serve",
    ],
    &[
        "-o",
        "ProxyCommand=touch /tmp/qbssh-pwned",
        "nas",
        "borg",
        "serve",
    ],
    &["-p", "22", "-oProxyCommand=x", "nas", "borg", "serve"],
    &["nas", "-oProxyCommand=x", "borg", "serve"],
    &["nas", "borg", "-oProxyCommand=x", "serve"],
    &["nas", "borg", "serve", "-oProxyCommand=x"],
    &["nas", "borg", "serve", "-o", "ProxyCommand=x"],
    &["-F", "/tmp/cfg", "nas", "borg", "serve"],
    &["nas", "borg", "serve", "-F", "/tmp/cfg"],
    &["-i", "/tmp/key", "nas", "borg", "serve"],
    &["-L", "8080:localhost:80", "nas", "borg", "serve"],
    &["-R", "8080:localhost:80", "nas", "borg", "serve"],
    &["-D", "1080", "nas", "borg", "serve"],
    &["-W", "host:22", "nas", "borg", "serve"],
    &["-J", "jump", "nas", "borg", "serve"],
    &["-A", "nas", "borg", "serve"],
    &["--", "nas", "borg", "serve"],
    &["nas", "--", "borg", "serve"],
    &["nas", "borg", "serve", "--"],
    &["-p", "-oProxyCommand=x", "nas", "borg", "serve"],
    &["-p", "22x", "nas", "borg", "serve"],
    &["-p22", "nas", "borg", "serve"],
    &["-oProxyCommand=x@nas", "borg", "serve"],
    &["-l", "root", "nas", "borg", "serve"],
    // shell metacharacters
    &["nas", "borg", "serve;touch /tmp/qbssh-pwned"],
    &["nas", "borg;id", "serve"],
    &["nas", "borg", "serve", "--info;id"],
    &["nas", "borg", "serve", "--debug-topic=repository$(id)"],
    &["nas", "borg", "serve", "--debug-topic=repository`id`"],
    &["nas", "$(id)", "serve"],
    &["nas|id", "borg", "serve"],
    &["nas&", "borg", "serve"],
    &["nas", "borg", "serve", ">/tmp/x"],
    &["nas", "borg", "serve", "--storage-quota=1000000000;id"],
    // newline (NUL cannot be in argv; it is tested against the service)
    &["nas", "borg", "serve\n--info"],
    &["nas\nother", "borg", "serve"],
    &["nas", "borg", "serve", "--info\n"],
    // NAME: overlong, slash, dot-dot, space, non-ASCII, empty
    &[
        "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
        "borg",
        "serve",
    ],
    &["a/b", "borg", "serve"],
    &["..", "borg", "serve"],
    &["../nas", "borg", "serve"],
    &[".nas", "borg", "serve"],
    &["n as", "borg", "serve"],
    &["n\u{e4}s", "borg", "serve"],
    &["", "borg", "serve"],
    &["u@", "borg", "serve"],
    &["u@v@nas", "borg", "serve"],
    // extra commands, other subcommands, options borg does not send
    &["nas", "borg", "serve", "list"],
    &["nas", "borg", "serve", "--info", "extra"],
    &["nas", "borg", "init"],
    &["nas", "sh", "-c", "id"],
    &["nas", "borg"],
    &["nas"],
    &[],
    &["nas", "borg", "serve", "--warning"],
    &["nas", "borg", "serve", "--umask=077"],
    &["nas", "borg", "serve", "--append-only"],
    &["nas", "borg", "serve", "--restrict-to-path=/"],
    &["nas", "borg", "serve", "--info", "--debug"],
    &["nas", "borg", "serve", "--debug-topic=cache"],
    &["nas", "borg", "serve", "--storage-quota=10G"],
    // remote paths that are not paths
    &["nas", "../../bin/sh", "serve"],
    &["nas", "-borg", "serve"],
    &["nas", "bo rg", "serve"],
];

#[test]
fn client_refuses_hostile_argv_before_any_qrexec_call() {
    let w = World::new("client-argv");
    for args in CLIENT_REFUSED {
        let out = run(&mut w.client(args), b"", LIMIT);
        assert_eq!(out.code, Some(64), "{args:?}: {}", out.stderr);
        let lines = out.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: one line expected: {}",
            out.stderr
        );
        assert!(lines[0].starts_with("qubes-ssh-client: "), "{}", lines[0]);
        assert!(
            lines[0].contains("ssh://NAME/./repo"),
            "message says what to do: {}",
            lines[0]
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(
        w.service_log().is_empty(),
        "a qrexec call was made: {}",
        w.service_log()
    );
    w.assert_no_ssh("client argv");
    assert!(!std::path::Path::new("/tmp/qbssh-pwned").exists());
}

#[test]
fn client_refuses_non_utf8_argv() {
    use std::os::unix::ffi::OsStrExt;
    let w = World::new("client-utf8");
    let mut c = w.client(&[]);
    c.arg(std::ffi::OsStr::from_bytes(b"n\xffs"))
        .args(["borg", "serve"]);
    let out = run(&mut c, b"", LIMIT);
    assert_eq!(out.code, Some(64));
    assert!(out.stderr.contains("not valid UTF-8"), "{}", out.stderr);
    assert!(w.service_log().is_empty());
}

/// Raw requests a compromised caller can send to qubes-borg.Ssh+nas directly, with the status line
/// (prefix) and exit code the service must answer with.
const SERVICE_REFUSED: &[(&[u8], u8, &str)] = &[
    (
        b"qubes-ssh/1 nas borg serve -oProxyCommand=x\n",
        77,
        "ERR 77 refused request refusing word 4",
    ),
    (
        b"qubes-ssh/1 nas borg serve -o ProxyCommand=x\n",
        77,
        "ERR 77 refused request refusing word 4",
    ),
    (
        b"qubes-ssh/1 -oProxyCommand=x nas borg serve\n",
        77,
        "ERR 77 refused request refusing word 1",
    ),
    (
        b"qubes-ssh/1 -F /tmp/x nas borg serve\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 -i /tmp/k nas borg serve\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 -L 1:h:2 nas borg serve\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 -R 1:h:2 nas borg serve\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 -D 1080 nas borg serve\n",
        77,
        "ERR 77 refused",
    ),
    (b"qubes-ssh/1 -W h:2 nas borg serve\n", 77, "ERR 77 refused"),
    (b"qubes-ssh/1 -J j nas borg serve\n", 77, "ERR 77 refused"),
    (b"qubes-ssh/1 -- nas borg serve\n", 77, "ERR 77 refused"),
    (b"qubes-ssh/1 nas borg serve --\n", 77, "ERR 77 refused"),
    (
        b"qubes-ssh/1 -p 22 -p 23 nas borg serve\n",
        77,
        "ERR 77 refused",
    ),
    // shell metacharacters and extra commands
    (
        b"qubes-ssh/1 nas borg serve;touch /tmp/qbssh-pwned\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 nas borg serve ; touch /tmp/qbssh-pwned\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 nas borg serve --info && id\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 nas borg serve --debug-topic=repository$(id)\n",
        77,
        "ERR 77 refused",
    ),
    (b"qubes-ssh/1 nas $(id) serve\n", 77, "ERR 77 refused"),
    (b"qubes-ssh/1 nas borg serve list\n", 77, "ERR 77 refused"),
    (b"qubes-ssh/1 nas borg init\n", 77, "ERR 77 refused"),
    (
        b"qubes-ssh/1 nas borg serve --umask=077\n",
        77,
        "ERR 77 refused",
    ),
    (
        b"qubes-ssh/1 nas borg serve --restrict-to-path=/\n",
        77,
        "ERR 77 refused",
    ),
    (b"qubes-ssh/1 nas  borg serve\n", 77, "ERR 77 refused"),
    (b"qubes-ssh/1 nas borg serve \n", 77, "ERR 77 refused"),
    // a remote path, port, user or name other than the configured ones
    (
        b"qubes-ssh/1 nas /bin/sh serve\n",
        77,
        "ERR 77 refused remote path '/bin/sh' is not the configured one",
    ),
    (
        b"qubes-ssh/1 nas /usr/bin/borg serve\n",
        77,
        "ERR 77 refused remote path",
    ),
    (
        b"qubes-ssh/1 -p 2222 nas borg serve\n",
        77,
        "ERR 77 refused port 2222 is not the configured port",
    ),
    (
        b"qubes-ssh/1 root@nas borg serve\n",
        77,
        "ERR 77 refused user 'root' is not the configured user",
    ),
    (
        b"qubes-ssh/1 other borg serve\n",
        77,
        "ERR 77 refused request names destination 'other'",
    ),
    // control characters, NUL, non-ASCII, wrong protocol
    (
        b"qubes-ssh/1 nas borg serve\0 --info\n",
        76,
        "ERR 76 header request header has a forbidden byte 0x00",
    ),
    (
        b"qubes-ssh/1 nas borg serve\r\n",
        76,
        "ERR 76 header request header has a forbidden byte 0x0d",
    ),
    (
        b"qubes-ssh/1 nas borg\tserve\n",
        76,
        "ERR 76 header request header has a forbidden byte 0x09",
    ),
    (
        b"qubes-ssh/1 nas borg serve \x1b[2J\n",
        76,
        "ERR 76 header request header has a forbidden byte 0x1b",
    ),
    (
        b"qubes-ssh/1 n\xc3\xa4s borg serve\n",
        76,
        "ERR 76 header request header has a forbidden byte 0xc3",
    ),
    (
        b"qubes-ssh/2 nas borg serve\n",
        76,
        "ERR 76 header request header does not start with 'qubes-ssh/1'",
    ),
    (b"SSH-2.0-OpenSSH_9.2\r\n", 76, "ERR 76 header"),
    (
        b"nas borg serve\n",
        76,
        "ERR 76 header request header does not start",
    ),
    (b"\n", 76, "ERR 76 header"),
];

#[test]
fn service_refuses_hostile_requests_without_starting_ssh() {
    let w = World::new("svc-raw");
    for (req, code, want) in SERVICE_REFUSED {
        let mut input = req.to_vec();
        input.extend_from_slice(b"BORG BYTES THAT MUST NOT REACH SSH");
        let out = run(&mut w.qrexec("nas"), &input, LIMIT);
        let shown = String::from_utf8_lossy(req);
        assert_eq!(out.code, Some(*code as i32), "{shown:?}: {}", out.stderr);
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(status.starts_with(want), "{shown:?}: got {status:?}");
        assert!(
            status.ends_with('\n') && status.lines().count() == 1,
            "{status:?}"
        );
        w.assert_no_ssh(&shown);
    }
    assert!(!std::path::Path::new("/tmp/qbssh-pwned").exists());
}

#[test]
fn service_refuses_overlong_header() {
    let w = World::new("svc-long");
    // No LF at all, and an LF only after the limit.
    for input in [vec![b'x'; 5000], {
        let mut v = b"qubes-ssh/1 nas borg serve ".to_vec();
        v.extend(std::iter::repeat_n(b'a', 1100));
        v.push(b'\n');
        v
    }] {
        let out = run(&mut w.qrexec("nas"), &input, LIMIT);
        assert_eq!(out.code, Some(76));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ERR 76 header request header longer than 1024 bytes\n"
        );
    }
    w.assert_no_ssh("overlong header");
}

#[test]
fn service_gives_up_on_a_header_that_never_ends() {
    let w = World::new("svc-slow");
    let mut c = w.qrexec("nas");
    c.env("QUBES_SSH_SERVICE_HEADER_TIMEOUT_MS", "1500");
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"qubes-ssh/1 nas bo").unwrap();
    let start = Instant::now();
    // stdin stays open: the service must stop waiting by itself.
    let out = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "service never gave up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(start.elapsed() >= Duration::from_millis(1400));
    let mut status = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut status).unwrap();
    drop(stdin);
    assert_eq!(out.code(), Some(76));
    assert_eq!(
        status,
        "ERR 76 header no complete request header within 1.5 s\n"
    );
    w.assert_no_ssh("slow header");
}

#[test]
fn service_handles_a_client_that_closes_early() {
    let w = World::new("svc-early");
    for input in [&b""[..], b"qubes-ssh/1 nas bo"] {
        let out = run(&mut w.qrexec("nas"), input, LIMIT);
        assert_eq!(out.code, Some(76));
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .starts_with("ERR 76 header client closed the connection after"),
            "{:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    w.assert_no_ssh("early close");
}

#[test]
fn service_refuses_unknown_and_malformed_destination_names() {
    let w = World::new("svc-names");
    let req = b"qubes-ssh/1 ghost borg serve\n";
    let out = run(&mut w.qrexec("ghost"), req, LIMIT);
    assert_eq!(out.code, Some(68));
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.starts_with(
            "ERR 68 unknown-destination unknown destination 'ghost': sys-backup has no "
        ),
        "{status}"
    );
    // qrexec turns '/' and spaces into '_' (daemon/qrexec-daemon.c sanitize_name) ...
    let out = run(
        &mut w.qrexec("../nas"),
        b"qubes-ssh/1 nas borg serve\n",
        LIMIT,
    );
    assert_eq!(out.code, Some(77), "{}", out.stderr);
    // ... so the service's own check is tested by running it as qrexec would, directly.
    let overlong = "n".repeat(65);
    for bad in [
        "../nas",
        "a/b",
        "..",
        "n as",
        "n\u{e4}s",
        "-oProxyCommand=x",
        overlong.as_str(),
        ".nas",
    ] {
        let mut c = w.service(&[bad]);
        c.env("QREXEC_SERVICE_ARGUMENT", bad);
        let out = run(&mut c, b"qubes-ssh/1 nas borg serve\n", LIMIT);
        assert_eq!(out.code, Some(77), "{bad:?}");
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(
            status.starts_with("ERR 77 refused destination name "),
            "{bad:?}: {status}"
        );
    }
    // argv[1] and QREXEC_SERVICE_ARGUMENT must agree; no argument at all is refused.
    let mut c = w.service(&["nas"]);
    c.env("QREXEC_SERVICE_ARGUMENT", "other");
    let out = run(&mut c, b"qubes-ssh/1 nas borg serve\n", LIMIT);
    assert_eq!(out.code, Some(77));
    let mut c = w.service(&[]);
    c.env_remove("QREXEC_SERVICE_ARGUMENT");
    let out = run(&mut c, b"qubes-ssh/1 nas borg serve\n", LIMIT);
    assert_eq!(out.code, Some(77));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no destination name"));
    w.assert_no_ssh("names");
}

#[test]
fn service_refuses_unsafe_or_malformed_configuration() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new("svc-conf");
    let req = b"qubes-ssh/1 nas borg serve\n";
    let status_of = |w: &World| {
        let out = run(&mut w.qrexec("nas"), req, LIMIT);
        (out.code, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // malformed
    w.write_conf(
        "nas",
        "host = nas.example\nuser = u\nProxyCommand = touch /tmp/qbssh-pwned\n",
    );
    let (code, st) = status_of(&w);
    assert_eq!(code, Some(78));
    assert!(
        st.starts_with("ERR 78 config ") && st.contains("line 3: unknown key 'ProxyCommand'"),
        "{st}"
    );
    // missing host key
    w.write_conf("nas", "host = nas.example\nuser = u\n");
    let (code, st) = status_of(&w);
    assert_eq!(code, Some(78));
    assert!(st.contains("required key 'host-key' is missing"), "{st}");
    // writable by others
    w.destination("nas", "");
    let p = w.path("conf/nas.conf");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, st) = status_of(&w);
    assert_eq!(code, Some(78));
    assert!(st.contains("writable by group or others"), "{st}");
    // a symlink
    std::fs::remove_file(&p).unwrap();
    w.destination("real", "");
    std::os::unix::fs::symlink(w.path("conf/real.conf"), &p).unwrap();
    let (code, st) = status_of(&w);
    assert_eq!(code, Some(78));
    assert!(st.contains("is a symbolic link"), "{st}");
    w.assert_no_ssh("config");
    assert!(!std::path::Path::new("/tmp/qbssh-pwned").exists());
}

#[test]
fn service_logs_one_line_per_connection() {
    // Run directly (stderr is what qrexec sends to sys-backup's journal).
    let w = World::new("svc-log");
    let out = run(
        &mut w.service(&["nas"]),
        b"qubes-ssh/1 nas borg serve --umask=0\n",
        LIMIT,
    );
    assert_eq!(out.code, Some(77));
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "qubes-ssh-service: source=sys-backup-mnt destination=nas outcome=refused exit=77 up=0 down=0: request refusing word 4 '--umask=0'"
        ),
        "{}",
        out.stderr
    );
    let out = run(&mut w.service(&["nas"]), b"qubes-ssh/1 nas bo", LIMIT);
    assert_eq!(out.code, Some(76));
    assert!(
        out.stderr.starts_with("qubes-ssh-service: source=sys-backup-mnt destination=nas outcome=header exit=76 up=0 down=0: client closed the connection after 18 bytes"),
        "{}",
        out.stderr
    );
    w.assert_no_ssh("log");
    w.plan("stream 5 7 0");
    let mut input = b"qubes-ssh/1 nas borg serve\n".to_vec();
    input.extend(stream(1, 5));
    let out = run(&mut w.service(&["nas"]), &input, LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "qubes-ssh-service: source=sys-backup-mnt destination=nas outcome=ok exit=0 up=5 down=7\n"
    );
    let mut want = b"OK\n".to_vec();
    want.extend(stream(2, 7));
    assert_eq!(out.stdout, want);
}
