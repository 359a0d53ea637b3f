//! Development machine (tests): hardening of the qubes-borg.Ssh link, through the binaries: the
//! environment ssh gets, the service argument, the destination directory's ancestors, the
//! per-connection directory after signals, the client's status-line timeout and hostile
//! status lines.

use crate::support::*;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn ssh_env(w: &World, n: usize) -> Vec<(String, String)> {
    let raw = std::fs::read(w.path(&format!("state/ssh-env.{n}"))).unwrap();
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=').unwrap_or((&s, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn ssh_gets_a_clean_environment_whatever_the_caller_had() {
    let w = World::new("hard-env");
    let mut c = w.client(&["nas", "borg", "serve"]);
    // The flat stand-in passes the caller's environment on to the service (a worst case: under
    // qrexec the service's environment is sys-backup's own).
    c.env("LD_PRELOAD", "/nonexistent/evil.so")
        .env("SSH_AUTH_SOCK", "/tmp/evil-agent.sock")
        .env(
            "PATH",
            format!("/tmp/evil-bin:{}", std::env::var("PATH").unwrap()),
        )
        .env("SSH_ASKPASS", "/tmp/evil-askpass")
        .env("LD_LIBRARY_PATH", "/tmp/evil-lib")
        .env("GCONV_PATH", "/tmp/evil-gconv");
    let out = run(&mut c, b"", LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let env = ssh_env(&w, 0);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("PATH"), Some("/usr/bin:/bin"), "{env:?}");
    assert_eq!(get("LC_ALL"), Some("C"), "{env:?}");
    for bad in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "SSH_AUTH_SOCK",
        "SSH_ASKPASS",
        "GCONV_PATH",
        "QREXEC_SERVICE_ARGUMENT",
        "QREXEC_REMOTE_DOMAIN",
        "QREXEC_SIM_QUBES",
        "XDG_RUNTIME_DIR",
    ] {
        assert_eq!(get(bad), None, "{bad} reached ssh: {env:?}");
    }
    // Only what the service sets (PATH, LC_ALL, HOME, USER, LOGNAME) and what the double's own
    // shell adds (PWD, SHLVL, _).
    for (k, _) in &env {
        assert!(
            ["PATH", "LC_ALL", "HOME", "USER", "LOGNAME", "PWD", "SHLVL", "_"]
                .contains(&k.as_str()),
            "unexpected variable {k} for ssh: {env:?}"
        );
    }
}

#[test]
fn service_argument_that_is_not_utf8_or_help_is_refused_and_logged() {
    let w = World::new("hard-arg");
    // QREXEC_SERVICE_ARGUMENT not valid UTF-8, no argv: refused, not skipped.
    let mut c = w.service(&[]);
    c.env(
        "QREXEC_SERVICE_ARGUMENT",
        std::ffi::OsStr::from_bytes(b"n\xffas"),
    );
    let out = run(&mut c, b"qubes-ssh/1 nas borg serve\n", LIMIT);
    assert_eq!(out.code, Some(77), "{}", out.stderr);
    assert_eq!(
        status_text(&out.stdout),
        "ERR 77 refused QREXEC_SERVICE_ARGUMENT is not valid UTF-8\n"
    );
    assert!(
        out.stderr
            .contains("destination=- outcome=refused exit=77 up=0 down=0: QREXEC_SERVICE_ARGUMENT is not valid UTF-8"),
        "{}",
        out.stderr
    );
    // The same argument given in argv too: refused as well.
    let mut c = w.service(&["nas"]);
    c.env(
        "QREXEC_SERVICE_ARGUMENT",
        std::ffi::OsStr::from_bytes(b"n\xffas"),
    );
    let out = run(&mut c, b"qubes-ssh/1 nas borg serve\n", LIMIT);
    assert_eq!(out.code, Some(77), "{}", out.stderr);

    // qubes-borg.Ssh+--help from a caller: a bad destination name, refused and logged; no help
    // text goes back.
    let out = run(
        &mut w.qrexec("--help"),
        b"qubes-ssh/1 nas borg serve\n",
        LIMIT,
    );
    assert_eq!(out.code, Some(77), "{}", out.stderr);
    let back = status_text(&out.stdout);
    assert!(
        back.starts_with("ERR 77 refused destination name"),
        "{back}"
    );
    assert!(
        !back.contains("Usage") && !back.contains("Exit codes"),
        "{back}"
    );
    assert!(
        w.service_log()
            .contains("destination=- outcome=refused exit=77 up=0 down=0: destination name"),
        "{}",
        w.service_log()
    );
    // Outside qrexec, --help prints the help.
    let out = run(
        std::process::Command::new(SERVICE).arg("--help"),
        b"",
        LIMIT,
    );
    assert_eq!(out.code, Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("qubes-ssh-service: the qubes-borg.Ssh")
    );
    w.assert_no_ssh("bad arguments");
}

#[test]
fn destination_directory_with_a_writable_ancestor_is_refused() {
    let w = World::new("hard-dir");
    let parent = w.path("ov/etc/qubes-borg");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("refusing /etc/qubes-borg: is writable by group or others (chmod go-w)"),
        "{}",
        out.stderr
    );
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(w.ssh_calls().len(), 1);
}

/// The per-connection directories in the world's runtime directory.
fn conn_dirs(w: &World) -> Vec<PathBuf> {
    std::fs::read_dir(w.path("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("qubes-ssh."))
        })
        .collect()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start a connection whose ssh hangs; return the client and the service's pid (from its
/// directory's name, qubes-ssh.PID.RANDOM).
fn hanging_connection(w: &World) -> (std::process::Child, i32, PathBuf) {
    w.ssh_mode("hang");
    let mut c = w.client(&["nas", "borg", "serve"]);
    let child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the per-connection directory", || conn_dirs(w).len() == 1);
    let dir = conn_dirs(w).remove(0);
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    let pid: i32 = name.split('.').nth(1).unwrap().parse().unwrap();
    assert!(dir.join("known_hosts").exists());
    (child, pid, dir)
}

#[test]
fn killed_service_leaves_no_directory_behind() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let w = World::new("hard-kill");
    // SIGTERM (what stops a service): the directory goes with it.
    let (mut client, pid, dir) = hanging_connection(&w);
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_until("the directory removed after SIGTERM", || !dir.exists());
    let _ = client.kill();
    let _ = client.wait();

    // SIGKILL leaves it; the next connection sweeps it.
    let (mut client, pid, dir) = hanging_connection(&w);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let _ = client.kill();
    let _ = client.wait();
    wait_until("the killed service gone", || {
        kill(Pid::from_raw(pid), None).is_err()
    });
    assert!(dir.exists(), "SIGKILL cannot clean up");
    w.ssh_mode("ok");
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !dir.exists(),
        "stale directory swept by the next connection"
    );
    assert!(conn_dirs(&w).is_empty(), "{:?}", conn_dirs(&w));
}

/// Replace sys-backup's qubes-borg.Ssh with `script` (a hostile or broken service).
fn fake_service(w: &World, script: &str) {
    let p = w.path("qubes/sys-backup/etc/qubes-rpc/qubes-borg.Ssh");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn client_gives_up_when_no_status_line_comes() {
    let w = World::new("hard-timeout");
    fake_service(&w, "#!/bin/sh\nread -r header\nexec sleep 30\n");
    let start = Instant::now();
    let out = run(
        &mut w.client(&["--status-timeout=2", "nas", "borg", "serve"]),
        b"",
        LIMIT,
    );
    let took = start.elapsed();
    assert_eq!(out.code, Some(76), "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "qubes-ssh-client: qubes-borg.Ssh+nas: no status line from sys-backup within 2 s; gave up"
        ),
        "{}",
        out.stderr
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(
        took < Duration::from_secs(15),
        "the client did not wait for the service: {took:?}"
    );
    for bad in ["0", "x", "86401", "-1", "007", ""] {
        let out = run(
            &mut w.client(&[&format!("--status-timeout={bad}"), "nas", "borg", "serve"]),
            b"",
            LIMIT,
        );
        assert_eq!(out.code, Some(64), "{bad}: {}", out.stderr);
    }
}

#[test]
fn escape_bytes_in_a_status_line_never_reach_the_terminal() {
    let w = World::new("hard-escape");
    for line in [
        &b"ERR 77 refused \x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1m\r done\n"[..],
        b"\x1b[31mOK\n",
        b"ERR 7\x1b 77 refused x\n",
        b"OK\x1b[2J\n",
    ] {
        let mut script = b"#!/bin/sh\nread -r header\nprintf '%b' '".to_vec();
        // the mark (docs/PROTOCOL.md), then the status line under test
        for &b in qubes_borg::ssh::status::MARK.iter().chain(line) {
            script.extend_from_slice(format!("\\0{:03o}", b).as_bytes());
        }
        script.extend_from_slice(b"'\n");
        let p = w.path("qubes/sys-backup/etc/qubes-rpc/qubes-borg.Ssh");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&script)
            .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
        assert_ne!(out.code, Some(0), "{line:?}");
        let err = out.stderr.as_bytes();
        assert!(err.ends_with(b"\n"), "{line:?}: {:?}", out.stderr);
        assert_eq!(
            err.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one line: {:?}",
            out.stderr
        );
        assert!(
            err[..err.len() - 1]
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b)),
            "{line:?} gave non-printable bytes on stderr: {:?}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{line:?}: {:?}", out.stdout);
    }
}
