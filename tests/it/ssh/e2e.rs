//! End to end through qubes-ssh-client, the qrexec stand-in (tests/sim), qubes-ssh-service and
//! the ssh double, to the borg serve doubles.

use crate::support::*;

#[test]
fn stream_is_byte_exact_both_ways() {
    let w = World::new("exact");
    let (up, down) = (3 * 1024 * 1024 + 17, 5 * 1024 * 1024 + 3);
    w.plan(&format!("stream {up} {down} 0"));
    let out = run(
        &mut w.client(&["nas", "borg", "serve", "--info"]),
        &stream(1, up),
        LIMIT,
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(w.serve_result(), format!("in={up} ok"));
    assert_eq!(out.stdout.len(), down);
    assert!(out.stdout == stream(2, down), "downstream bytes differ");
}

#[test]
fn exit_status_of_the_remote_reaches_borg_after_data_both_ways() {
    let w = World::new("exit");
    // 0, 1, 2: borg's success, warning, error; 255 and 127 from the remote after data are the
    // remote's, not qrexec's (the OK status line tells them apart).
    for code in [0, 1, 2, 255, 127] {
        w.plan(&format!("stream 1000 2000 {code}"));
        let out = run(
            &mut w.client(&["nas", "borg", "serve"]),
            &stream(1, 1000),
            LIMIT,
        );
        assert_eq!(out.code, Some(code), "stderr: {}", out.stderr);
        assert_eq!(out.stderr, "", "no message of our own when the session ran");
        assert_eq!(w.serve_result(), "in=1000 ok");
        assert!(out.stdout == stream(2, 2000));
    }
}

#[test]
fn ssh_failures_in_sys_backup_reach_the_client_as_ssh_s_lines_then_one_explanation_and_255() {
    let w = World::new("sshfail");
    let cases = [
        (
            "refused",
            "qubes-ssh-client: nas: connection to nas.example:22 refused (destination 'nas')",
        ),
        (
            "host-key",
            "qubes-ssh-client: nas: host key of destination 'nas' (nas.example) does not match the pinned host-key lines in",
        ),
        (
            "auth",
            "qubes-ssh-client: nas: authentication as u@nas.example port 22 failed with the default key of sys-backup's user",
        ),
    ];
    for (mode, want) in cases {
        w.ssh_mode(mode);
        let out = run(
            &mut w.client(&["nas", "borg", "serve", "--info"]),
            b"negotiate",
            LIMIT,
        );
        assert_eq!(out.code, Some(255), "{mode}: {}", out.stderr);
        // ssh's own lines come through qrexec's stderr channel; the explanation is last
        let lines = out.stderr_lines();
        assert!(lines.len() >= 2, "{mode}: {}", out.stderr);
        let first = [
            "ssh: connect to host",
            "No ED25519 host key is known",
            "u@nas.example:",
        ];
        assert!(
            first.iter().any(|f| lines[0].starts_with(f)),
            "{mode}: {}",
            out.stderr
        );
        assert!(
            lines.last().unwrap().starts_with(want),
            "{mode}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{mode}: no bytes for borg");
    }
    assert_eq!(w.ssh_calls().len(), 3);
    assert!(w.serve_calls().is_empty(), "the remote command never ran");
}

#[test]
fn service_refusals_reach_the_client_with_their_exit_code() {
    let w = World::new("refusals");
    let out = run(&mut w.client(&["ghost", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(68));
    assert!(
        out.stderr.starts_with(
            "qubes-ssh-client: ghost: unknown destination 'ghost': sys-backup has no "
        ),
        "{}",
        out.stderr
    );
    let out = run(
        &mut w.client(&["nas", "/usr/local/bin/borg", "serve"]),
        b"",
        LIMIT,
    );
    assert_eq!(out.code, Some(77));
    assert!(
        out.stderr.starts_with("qubes-ssh-client: nas: remote path '/usr/local/bin/borg' is not the configured one for 'nas'; drop --remote-path"),
        "{}",
        out.stderr
    );
    let out = run(
        &mut w.client(&["-p", "2200", "nas", "borg", "serve"]),
        b"",
        LIMIT,
    );
    assert_eq!(out.code, Some(77));
    assert!(out
        .stderr
        .contains("port 2200 is not the configured port of 'nas'"));
    w.destination("keyed", "agent = work\n");
    // sys-backup without qubes-relay: the agent socket cannot be set up.
    std::fs::remove_file(w.path("ov/usr-bin/qubes-relay")).unwrap();
    let mut c = w.client(&["keyed", "borg", "serve"]);
    let out = run(&mut c, b"", LIMIT);
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(
        out.stderr.starts_with("qubes-ssh-client: keyed: split-SSH key set 'work' unavailable in sys-backup: cannot start the agent socket listener"),
        "{}",
        out.stderr
    );
    w.assert_no_ssh("refusals");
}

#[test]
fn qrexec_exit_codes_become_clear_messages() {
    let w = World::new("qrexec");
    // 126: policy refuses this destination
    std::fs::write(
        w.path("policy/40-deny.policy"),
        "qubes-borg.Ssh +blocked sys-backup-mnt @anyvm deny\n",
    )
    .unwrap();
    let out = run(&mut w.client(&["blocked", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(126));
    assert!(
        out.stderr.contains("qubes-ssh-client: qrexec refused qubes-borg.Ssh+blocked from this qube (target @default): either the dom0 policy does not allow it or the target qube could not be started"),
        "{}",
        out.stderr
    );
    // 126 too: a target qube dom0 cannot start
    std::fs::create_dir_all(w.path("qubes/sys-backup/.qubes-sim")).unwrap();
    std::fs::write(w.path("qubes/sys-backup/.qubes-sim/start-fails"), "").unwrap();
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    std::fs::remove_file(w.path("qubes/sys-backup/.qubes-sim/start-fails")).unwrap();
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    assert!(
        out.stderr.contains("could not be started"),
        "{}",
        out.stderr
    );
    // 1: qrexec-client-vm fails in this qube (here: the simulation does not know the caller)
    let mut c = w.client(&["nas", "borg", "serve"]);
    c.env("QREXEC_SIM_SOURCE", "no-such-qube");
    let out = run(&mut c, b"", LIMIT);
    assert_eq!(out.code, Some(76), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "qubes-ssh-client: qrexec-client-vm failed in this qube (exit 1, its message is above)"
        ),
        "{}",
        out.stderr
    );
    // --target is passed on: a target the policy does not allow is refused
    let out = run(
        &mut w.client(&["--target=sys-backup-mnt", "nas", "borg", "serve"]),
        b"",
        LIMIT,
    );
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    assert!(
        out.stderr.contains("(target sys-backup-mnt)"),
        "{}",
        out.stderr
    );
    // 127: the service is not installed in the target
    std::fs::remove_file(w.path("qubes/sys-backup/etc/qubes-rpc/qubes-borg.Ssh")).unwrap();
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(127));
    assert!(
        out.stderr
            .contains("qubes-ssh-client: the target qube has no qubes-borg.Ssh service"),
        "{}",
        out.stderr
    );
    w.assert_no_ssh("qrexec");
}

/// The command lines borg 1.2 and 1.4 build (`src/borg/remote.py` `ssh_cmd` + `borg_cmd`,
/// identical on both branches), and the options that must reach `borg serve`.
const BORG_ARGV: &[(&[&str], &[&str])] = &[
    (&["nas", "borg", "serve"], &[]),
    (&["nas", "borg", "serve", "--debug"], &["--debug"]),
    (&["nas", "borg", "serve", "--info"], &["--info"]),
    (&["nas", "borg", "serve", "--error"], &["--error"]),
    (&["nas", "borg", "serve", "--critical"], &["--critical"]),
    (
        &["-p", "2222", "u@nas", "borg", "serve", "--info"],
        &["--info"],
    ),
    (&["u@nas", "borg", "serve", "--error"], &["--error"]),
    (
        &[
            "nas",
            "borg",
            "serve",
            "--debug",
            "--debug-topic=borg.debug.repository",
            "--debug-topic=repository.compaction",
        ],
        &[
            "--debug",
            "--debug-topic=borg.debug.repository",
            "--debug-topic=repository.compaction",
        ],
    ),
    (
        &[
            "nas",
            "borg",
            "serve",
            "--info",
            "--storage-quota=5000000000",
        ],
        &["--info", "--storage-quota=5000000000"],
    ),
    (
        &["nas", "borg", "serve", "--storage-quota=10000000"],
        &["--storage-quota=10000000"],
    ),
];

#[test]
fn legitimate_borg_argv_reaches_borg_serve_with_the_vetted_options() {
    let w = World::new("legit");
    w.destination("nas", "port = 2222\n");
    for (i, (args, opts)) in BORG_ARGV.iter().enumerate() {
        let out = run(&mut w.client(args), b"", LIMIT);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        let ssh = &w.ssh_calls()[i];
        let dd = ssh.iter().position(|a| a == "--").unwrap();
        let mut want = vec![
            "nas.example".to_string(),
            w.path("bin/fake-borg").display().to_string(),
            "serve".into(),
        ];
        want.extend(opts.iter().map(|s| s.to_string()));
        assert_eq!(ssh[dd + 1..], want[..], "{args:?}");
        assert!(
            ssh.windows(2).any(|p| p == ["-p", "2222"]) && ssh.windows(2).any(|p| p == ["-l", "u"])
        );
        let mut serve = vec!["serve".to_string()];
        serve.extend(opts.iter().map(|s| s.to_string()));
        assert_eq!(w.serve_calls()[i], serve, "{args:?}");
    }
}

#[test]
fn request_response_round_trips_flow_before_upstream_eof() {
    // borg's pattern: a request, wait for its reply, the next request, with stdin still open.
    use std::io::{Read, Write};
    let w = World::new("pingpong");
    w.plan("echo");
    let mut child = w
        .client(&["nas", "borg", "serve"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let talk = || -> Result<Vec<u8>, String> {
            for i in 0..50u32 {
                let msg = format!("request {i}\n");
                to.write_all(msg.as_bytes())
                    .map_err(|e| format!("request {i}: {e}"))?;
                let mut got = vec![0u8; msg.len()];
                from.read_exact(&mut got)
                    .map_err(|e| format!("reply {i}: {e}"))?;
                if got != msg.as_bytes() {
                    return Err(format!("reply {i}: {:?}", String::from_utf8_lossy(&got)));
                }
            }
            drop(to);
            let mut rest = Vec::new();
            from.read_to_end(&mut rest).map_err(|e| e.to_string())?;
            Ok(rest)
        };
        let _ = tx.send(talk());
    });
    let outcome = rx.recv_timeout(std::time::Duration::from_secs(30));
    if !matches!(outcome, Ok(Ok(_))) {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("round trips did not complete ({outcome:?}): a relay holds bytes back or the chain ended; the client's stderr:\n{err}");
    }
    assert_eq!(outcome.unwrap().unwrap(), b"");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn split_ssh_agent_socket_exists_only_during_the_connection() {
    let w = World::new("agent");
    w.destination("keyed", "agent = work\n");
    w.ssh_mode("agent-list");
    w.plan("stream 10 10 0");
    let out = run(
        &mut w.client(&["keyed", "borg", "serve"]),
        &stream(1, 10),
        LIMIT,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let ssh = &w.ssh_calls()[0];
    let agent = ssh
        .iter()
        .find_map(|a| a.strip_prefix("-oIdentityAgent="))
        .expect("IdentityAgent option");
    assert!(
        agent.starts_with(&format!("{}/qubes-borg-agent.", w.path("run").display()))
            && agent.ends_with("/agent.sock"),
        "{agent}"
    );
    let seen = std::fs::read_to_string(w.path("state/agent-socket.0")).unwrap();
    assert_eq!(
        seen.trim(),
        "socket",
        "the agent socket existed while ssh ran"
    );
    // ssh's agent request became one qrexec call qubes-borg.SshAgent+work from sys-backup.
    let called = std::fs::read_to_string(w.path("state/agent-called")).unwrap_or_default();
    assert_eq!(called, "work from sys-backup\n");
    // and the socket is gone afterwards
    let left: Vec<_> = std::fs::read_dir(w.path("run")).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(w.serve_result(), "in=10 ok");
}

#[test]
fn a_noisy_login_profile_in_sys_backup_is_shown_not_taken_for_the_status() {
    // qrexec starts the service through a login shell; what ~/.profile prints comes first
    // (here even a bare "OK" and a last line without LF)
    let w = World::new("profile");
    let home = w.path("qubes/sys-backup/home/user");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".profile"),
        "echo Welcome to sys-backup\necho OK\nprintf 'no-newline \\033[31m'\n",
    )
    .unwrap();
    w.plan("stream 100 200 0");
    let out = run(
        &mut w.client(&["nas", "borg", "serve"]),
        &stream(1, 100),
        LIMIT,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout == stream(2, 200), "downstream bytes differ");
    for noise in ["Welcome to sys-backup", "OK", "no-newline ?[31m"] {
        let want =
            format!("the target printed before the service started (login scripts?): {noise}\n");
        assert!(out.stderr.contains(&want), "{noise}: {}", out.stderr);
    }
}

/// Put a qrexec-client-vm in the client's /usr/bin that plays a call whose target side does
/// SCRIPT (sh), instead of the qrexec stand-in.
fn fake_qrexec(w: &World, script: &str) {
    let p = w.path("bin/fake-qrexec-client-vm");
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, format!("#!/bin/sh\nread -r header\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let link = w.path("ov/usr-bin/qrexec-client-vm");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&p, &link).unwrap();
}

#[test]
fn exit_255_without_the_services_last_line_is_a_lost_connection_not_ssh() {
    let w = World::new("lost");
    // the service said OK, sent data, then the connection died: no log line, 255
    fake_qrexec(&w, "printf '\\nqubes-ssh/1\\nOK\\ndata'\nexit 255");
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(255), "{}", out.stderr);
    assert_eq!(out.stdout, b"data");
    assert!(
        out.stderr.contains(
            "the qrexec connection to the target qube (@default) was lost before the service ended"
        ) && out.stderr.contains("not an ssh failure"),
        "{}",
        out.stderr
    );
    // the same 255 after the service's log line is ssh's (or the remote's): passed on quietly
    fake_qrexec(
        &w,
        "printf '\\nqubes-ssh/1\\nOK\\ndata'\necho 'Connection closed by remote host' >&2\necho 'qubes-ssh-service: source=sys-backup-mnt destination=nas outcome=ok exit=255 up=0 down=4' >&2\nexit 255",
    );
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(255), "{}", out.stderr);
    assert_eq!(out.stderr, "Connection closed by remote host\n");
    // no byte at all and 255: lost as well
    fake_qrexec(&w, "exit 255");
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(255), "{}", out.stderr);
    assert!(out.stderr.contains("was lost"), "{}", out.stderr);
}

#[test]
fn what_comes_on_qrexecs_stderr_reaches_borg_sanitized_line_by_line() {
    let w = World::new("stderr");
    fake_qrexec(
        &w,
        r#"printf 'plain\n\033]0;title\007bell\r\n{"type": "log_message", "message": "x\\u001b[2J", "levelname": "WARNING", "name": "borg"}\n\303\251\n' >&2
printf '\nqubes-ssh/1\nOK\n'"#,
    );
    let out = run(&mut w.client(&["nas", "borg", "serve"]), b"", LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stderr_lines(),
        [
            "plain",
            "?]0;title?bell",
            r#"{"type": "log_message", "message": "x?[2J", "levelname": "WARNING", "name": "borg"}"#,
            "??"
        ]
    );
}
