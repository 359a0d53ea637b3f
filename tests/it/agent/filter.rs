//! qubes-agent-filter against a real OpenSSH ssh-agent that holds the
//! backup key and another key.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn ssh_add(front: &Front, args: &[&str]) -> std::process::Output {
    output(
        Command::new("ssh-add")
            .args(args)
            .env("SSH_AUTH_SOCK", &front.path)
            .env_remove("DISPLAY"),
    )
}

#[test]
fn ssh_add_list_through_filter_shows_only_the_backup_key() {
    let v = Vault::new("agent-list");
    assert_eq!(
        v.direct_list().lines().count(),
        2,
        "the agent holds two keys"
    );
    let front = Front::start(&v, "sys-backup", &[]);
    let out = ssh_add(&front, &["-L"]);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one key: {listed}");
    assert!(lines[0].starts_with(&v.pub_line(&v.backup_key)), "{listed}");
    assert!(
        lines[0].ends_with(" qubes-borg default key"),
        "comment replaced: {listed}"
    );
    assert!(!listed.contains("other"), "{listed}");
    // The filter ended cleanly once ssh-add closed the connection.
    assert!(front.finished().iter().all(|r| r.code == Some(0)));
}

#[test]
fn management_requests_through_filter_fail_and_leave_the_agent_unchanged() {
    let v = Vault::new("agent-mgmt");
    let before = v.direct_list();
    let front = Front::start(&v, "sys-backup", &[]);
    let newkey = v.dir.path().join("new/id_ed25519");
    keygen(&newkey, "new");
    let askpass = v.dir.path().join("askpass");
    fs::write(&askpass, "#!/bin/sh\necho hunter2\n").unwrap();
    fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let add = ssh_add(&front, &[newkey.to_str().unwrap()]);
    assert!(!add.status.success(), "ssh-add KEY must fail: {add:?}");
    let del = ssh_add(
        &front,
        &["-d", v.other_key.with_extension("pub").to_str().unwrap()],
    );
    assert!(!del.status.success(), "ssh-add -d must fail: {del:?}");
    let del_backup = ssh_add(
        &front,
        &["-d", v.backup_key.with_extension("pub").to_str().unwrap()],
    );
    assert!(
        !del_backup.status.success(),
        "ssh-add -d backup must fail: {del_backup:?}"
    );
    let del_all = ssh_add(&front, &["-D"]);
    assert!(
        !del_all.status.success(),
        "ssh-add -D must fail: {del_all:?}"
    );
    for flag in ["-x", "-X"] {
        let lock = output(
            Command::new("ssh-add")
                .arg(flag)
                .env("SSH_AUTH_SOCK", &front.path)
                .env("SSH_ASKPASS", &askpass)
                .env("SSH_ASKPASS_REQUIRE", "force")
                .env("DISPLAY", ":0"),
        );
        assert!(!lock.status.success(), "ssh-add {flag} must fail: {lock:?}");
        assert!(
            String::from_utf8_lossy(&lock.stderr).contains("Failed"),
            "ssh-add {flag} reached the filter and was refused: {lock:?}"
        );
    }

    // Verified on the agent itself: same keys, not locked.
    assert_eq!(v.direct_list(), before);
    let logs = front.logs();
    for want in [
        "sys-backup: key set default: refused: adding a key is not allowed",
        "refused: removing a key is not allowed",
        "refused: removing all keys is not allowed",
        "refused: locking the agent is not allowed",
        "refused: unlocking the agent is not allowed",
    ] {
        assert!(logs.contains(want), "log lacks {want:?}:\n{logs}");
    }
}

#[test]
fn sign_request_for_another_key_fails_though_the_agent_would_sign_it() {
    let v = Vault::new("agent-other");
    let front = Front::start(&v, "sys-backup", &[]);
    let other = pub_blob(&v.other_key.with_extension("pub"));
    let backup = pub_blob(&v.backup_key.with_extension("pub"));
    let req = sign_request(&other, &userauth_data(&other));

    // Control: the agent itself signs this request.
    let mut direct = UnixStream::connect(&v.agent_sock).unwrap();
    assert_eq!(call(&mut direct, &req)[0], 14, "agent signs directly");

    let mut s = UnixStream::connect(&front.path).unwrap();
    assert_eq!(
        call(&mut s, &req),
        [5],
        "other key refused through the filter"
    );
    // Backup key blob but arbitrary data (an SSHSIG-like blob): refused.
    assert_eq!(
        call(&mut s, &sign_request(&backup, b"SSHSIG arbitrary")),
        [5]
    );
    // Backup key, login data naming the other key: refused.
    assert_eq!(
        call(&mut s, &sign_request(&backup, &userauth_data(&other))),
        [5]
    );
    // The connection is still usable: a proper login signature passes.
    let ok = call(&mut s, &sign_request(&backup, &userauth_data(&backup)));
    assert_eq!(ok[0], 14, "backup key login is signed");
    drop(s);

    // ssh-keygen -Y sign (file signing) through the filter fails for both
    // keys. The .pub files are copied where no private key lies next to
    // them, so ssh-keygen can only use the agent.
    for (i, key) in [&v.other_key, &v.backup_key].into_iter().enumerate() {
        let data = v.dir.path().join("data");
        fs::write(&data, "hello").unwrap();
        let lone_pub = v.dir.path().join(format!("lone{i}.pub"));
        fs::copy(key.with_extension("pub"), &lone_pub).unwrap();
        let out = output(
            Command::new("ssh-keygen")
                .args(["-Y", "sign", "-n", "file", "-f"])
                .arg(&lone_pub)
                .arg(&data)
                .env("SSH_AUTH_SOCK", &front.path),
        );
        assert!(
            !out.status.success(),
            "ssh-keygen -Y sign must fail: {out:?}"
        );
    }
    let logs = front.logs();
    assert!(
        logs.contains("sign request for a key that is not the backup key (SHA256:"),
        "{logs}"
    );
    assert!(
        logs.contains("is not an SSH login for the backup key"),
        "{logs}"
    );
    assert_eq!(logs.matches("signed an SSH login").count(), 1, "{logs}");
}

/// Run the filter with a socketpair as stdin/stdout, send `bytes`, then
/// optionally half-close; return (exit code, stderr, what came back).
fn raw_session(v: &Vault, bytes: &[u8], half_close: bool) -> (Option<i32>, String, Vec<u8>) {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let child = v
        .filter_cmd("default", "sys-backup")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(
            theirs.try_clone().unwrap(),
        )))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused oversized frame closes the connection before we finish
    // writing: ignore EPIPE.
    let _ = ours.write_all(bytes);
    if half_close {
        ours.shutdown(std::net::Shutdown::Write).unwrap();
    }
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut back = Vec::new();
    ours.read_to_end(&mut back)
        .expect("the filter closes the connection");
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        back,
    )
}

#[test]
fn truncated_oversized_and_garbage_frames_close_the_connection() {
    let v = Vault::new("agent-frames");
    let before = v.direct_list();

    // Truncated body: announced 10 bytes, 3 sent, then EOF.
    let (code, err, back) = raw_session(&v, &[0, 0, 0, 10, 11, 0, 0], true);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("connection closed inside a frame"), "{err}");
    assert!(back.is_empty());

    // Truncated length prefix.
    let (code, err, back) = raw_session(&v, &[0, 0], true);
    assert_eq!(code, Some(65), "{err}");
    assert!(back.is_empty());

    // Oversized: one byte over OpenSSH's 256 KiB, connection left open by
    // us: the filter must close it on its own, without reading the body.
    let (code, err, back) = raw_session(&v, &(256 * 1024 + 1u32).to_be_bytes(), false);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("more than the 262144-byte limit"), "{err}");
    assert!(back.is_empty());

    // Garbage: an HTTP request line reads as a huge length.
    let (code, err, back) = raw_session(&v, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(code, Some(65), "{err}");
    assert!(back.is_empty());

    // Zero-length frame.
    let (code, _, back) = raw_session(&v, &[0, 0, 0, 0], false);
    assert_eq!(code, Some(65));
    assert!(back.is_empty());

    // A valid frame with a garbage body is answered with FAILURE and the
    // connection goes on; a clean EOF then ends it with status 0.
    let mut bytes = frame(&[200, 1, 2, 3]);
    bytes.extend(frame(&[13, 0xff, 0xff, 0xff, 0xff]));
    bytes.extend(frame(&[11]));
    let (code, err, back) = raw_session(&v, &bytes, true);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(&back[..10], &[0, 0, 0, 1, 5, 0, 0, 0, 1, 5]);
    assert_eq!(back[14], 12, "identities answer after the garbage");

    // Too many requests on one connection.
    let mut bytes = Vec::new();
    for _ in 0..65 {
        bytes.extend(frame(&[22, 0, 0, 0, 0]));
    }
    let (code, err, back) = raw_session(&v, &bytes, false);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("more than 64 requests"), "{err}");
    assert_eq!(back.len(), 64 * 5, "64 failures, then closed");

    assert_eq!(v.direct_list(), before, "agent unchanged");
}

#[test]
fn bad_service_argument_or_missing_key_fails_before_any_agent_contact() {
    let v = Vault::new("agent-args");
    for bad in ["", "../default", "a/b", "-x", &"x".repeat(65), "a b"] {
        let out = output(
            v.filter_cmd(bad, "sys-backup")
                .env("QREXEC_SERVICE_ARGUMENT", bad),
        );
        assert_eq!(out.status.code(), Some(64), "NAME {bad:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("qubes-agent-filter: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // No QREXEC_REMOTE_DOMAIN: not started by qrexec.
    let out = output(
        v.filter_cmd("default", "x")
            .env_remove("QREXEC_REMOTE_DOMAIN"),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    // Valid name but no key set of that name.
    let out = output(&mut v.filter_cmd("nosuch", "sys-backup"));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("qubes-borg-keygen"));
}

#[test]
fn real_ssh_logs_in_to_real_sshd_through_the_filter_and_the_signature_is_logged() {
    let v = Vault::new("agent-sshd");
    let Some(sshd) = Sshd::start(v.dir.path(), &v.backup_key.with_extension("pub")) else {
        return;
    };
    // A stand-in notify-send that records its arguments.
    let bin = v.dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let notes = v.dir.path().join("notifications");
    fs::write(
        bin.join("notify-send"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\n",
            notes.display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        bin.join("notify-send"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let front = Front::start(
        &v,
        "sys-backup",
        &[("QUBES_BORG_NOTIFY", "1"), ("PATH", &path)],
    );

    let out = output(&mut sshd.ssh_cmd(&front.path, "echo qubes-borg-login-ok"));
    assert!(
        out.status.success(),
        "ssh failed: {out:?}\nsshd log:\n{}",
        sshd.log.lock().unwrap()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "qubes-borg-login-ok\n"
    );

    let logs = front.logs();
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let want = format!(
        "qubes-agent-filter: sys-backup: key set default: signed an SSH login as user '{user}' to server host key {}",
        sshd.host_fingerprint()
    );
    assert!(logs.contains(&want), "want {want:?} in:\n{logs}");
    let backup_fp = {
        let o = output(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(v.backup_key.with_extension("pub")),
        );
        String::from_utf8(o.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert!(
        logs.contains(&format!("with backup key {backup_fp}")),
        "{logs}"
    );
    wait_for(|| notes.exists(), "the notification");
    let n = fs::read_to_string(&notes).unwrap();
    assert!(
        n.contains("sys-backup used backup key set 'default'"),
        "{n}"
    );

    // Control: without the backup key in the agent, the same ssh fails.
    let rm = output(
        Command::new("ssh-add")
            .arg("-d")
            .arg(v.backup_key.with_extension("pub"))
            .env("SSH_AUTH_SOCK", &v.agent_sock),
    );
    assert!(rm.status.success());
    let out = output(&mut sshd.ssh_cmd(&front.path, "true"));
    assert!(
        !out.status.success(),
        "login must fail without the key: {out:?}"
    );
}
