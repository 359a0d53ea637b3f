//! qubes-agent-filter's login policy (server.conf), session binding, session-id bounds, login
//! rate limit and notification interval, and a misbehaving agent, all through the binary,
//! against real OpenSSH ssh-agent, ssh and sshd.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

use crate::support::*;

/// A stand-in notify-send recording one line per notification; returns
/// (PATH value, notes file).
fn notify_recorder(v: &Vault) -> (String, std::path::PathBuf) {
    let bin = v.dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let notes = v.dir.path().join("notifications");
    fs::write(
        bin.join("notify-send"),
        format!(
            "#!/bin/sh\nfor a; do last=$a; done\nprintf '%s\\n' \"$last\" >> '{}'\n",
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
    (path, notes)
}

fn ok(out: &std::process::Output, sshd: &Sshd) {
    assert!(
        out.status.success(),
        "ssh failed: {out:?}\nsshd log:\n{}",
        sshd.log.lock().unwrap()
    );
}

#[test]
fn real_ssh_is_refused_for_a_server_or_user_the_key_set_does_not_name() {
    let v = Vault::new("hb-policy");
    let Some(sshd) = Sshd::start(v.dir.path(), &v.backup_key.with_extension("pub")) else {
        return;
    };
    let front = Front::start(&v, "sys-backup", &[]);

    // Control: the same ssh logs in when server.conf names this sshd and user.
    v.allow_sshd(&sshd, "");
    ok(&output(&mut sshd.ssh_cmd(&front.path, "true")), &sshd);

    // server.conf names another server's host key (the vault's other key): the session-bind
    // of this sshd's session is refused, and so the login.
    let other = v.pub_line(&v.other_key);
    v.set_policy(&format!("user = {}\nhost-key = {other}\n", v.user));
    let out = output(&mut sshd.ssh_cmd(&front.path, "true"));
    assert!(!out.status.success(), "{out:?}");
    let logs = front.logs();
    let want = format!(
        "refused: session-bind refused: server host key {} is not one of the key set's host keys",
        sshd.host_fingerprint()
    );
    assert!(logs.contains(&want), "want {want:?} in\n{logs}");
    assert!(
        logs.contains(
            "refused: login not allowed for this key set: the connection is not bound to a session"
        ),
        "{logs}"
    );

    // Right server, other user: refused before the agent signs.
    v.set_policy(&format!(
        "user = nobody-else\nhost-key = {}\n",
        sshd.host_key_line()
    ));
    let out = output(&mut sshd.ssh_cmd(&front.path, "true"));
    assert!(!out.status.success(), "{out:?}");
    let logs = front.logs();
    let want = format!(
        "refused: login not allowed for this key set: remote user '{}' is not the key set's user 'nobody-else'",
        v.user
    );
    assert!(logs.contains(&want), "want {want:?} in\n{logs}");
    assert_eq!(logs.matches("signed an SSH login").count(), 1, "{logs}");
}

#[test]
fn plain_publickey_is_signed_only_when_the_key_set_allows_it() {
    let v = Vault::new("hb-plain");
    let Some(sshd) = Sshd::start(v.dir.path(), &v.backup_key.with_extension("pub")) else {
        return;
    };
    v.allow_sshd(&sshd, "");
    let front = Front::start(&v, "sys-backup", &[]);
    // PubkeyAuthentication=unbound: ssh signs the plain publickey method, as it does
    // for a server that does not offer the hostbound one.
    let unbound = |front: &Front| {
        output(&mut sshd.ssh_cmd_opts(&front.path, &["-o", "PubkeyAuthentication=unbound"], "true"))
    };
    let out = unbound(&front);
    assert!(!out.status.success(), "{out:?}");
    let logs = front.logs();
    assert!(
        logs.contains(
            "refused: login not allowed for this key set: method publickey without host binding"
        ),
        "{logs}"
    );

    v.allow_sshd(&sshd, "plain-publickey = yes\n");
    ok(&unbound(&front), &sshd);
    let logs = front.logs();
    let want = format!(
        "signed an SSH login (publickey) as user '{}' with backup key",
        v.user
    );
    assert!(logs.contains(&want), "want {want:?} in\n{logs}");
    assert!(
        logs.contains(&format!(
            "in a session bound to server host key {}",
            sshd.host_fingerprint()
        )),
        "{logs}"
    );
}

#[test]
fn login_limit_holds_across_connections_and_notifications_come_once_per_interval() {
    let v = Vault::new("hb-rate");
    let Some(sshd) = Sshd::start(v.dir.path(), &v.backup_key.with_extension("pub")) else {
        return;
    };
    v.allow_sshd(&sshd, "logins-per-hour = 2\n");
    let (path, notes) = notify_recorder(&v);
    let front = Front::start(
        &v,
        "sys-backup",
        &[("QUBES_BORG_NOTIFY", "1"), ("PATH", &path)],
    );
    // Three connections, each its own filter process.
    ok(&output(&mut sshd.ssh_cmd(&front.path, "true")), &sshd);
    ok(&output(&mut sshd.ssh_cmd(&front.path, "true")), &sshd);
    let third = output(&mut sshd.ssh_cmd(&front.path, "true"));
    assert!(
        !third.status.success(),
        "third login within the hour: {third:?}"
    );
    let runs = front.finished();
    assert_eq!(runs.len(), 3, "one filter process per connection");
    let logs = front.logs();
    assert_eq!(logs.matches("signed an SSH login").count(), 2, "{logs}");
    assert!(logs.contains("login 2 of at most 2 this hour"), "{logs}");
    assert!(
        logs.contains(
            "refused: login limit of 2 per hour reached (logins-per-hour in server.conf)"
        ),
        "{logs}"
    );
    // The state the processes shared.
    let state = fs::read_to_string(v.run_dir.join("default/logins")).unwrap();
    assert_eq!(state.matches("login ").count(), 2, "{state}");
    // Notifications: the first login only (the rest fall in the same minute).
    thread::sleep(std::time::Duration::from_millis(300));
    let n = fs::read_to_string(&notes).unwrap();
    assert_eq!(
        n,
        "sys-backup used backup key set 'default' to log in to the backup server (logins this hour: 1)\n"
    );
}

/// A connection to a filter run on a socketpair (as qrexec runs it).
fn filter_session(v: &Vault) -> (UnixStream, std::process::Child) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = v
        .filter_cmd("default", "sys-backup")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs.try_clone().unwrap(),
        )))
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (ours, child)
}

fn finish(s: UnixStream, child: std::process::Child) -> String {
    drop(s);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn session_bind_is_verified_by_the_agent_and_session_ids_are_bounded() {
    let v = Vault::new("hb-bind");
    let host = pub_blob(&v.other_key.with_extension("pub"));
    let backup = pub_blob(&v.backup_key.with_extension("pub"));

    // Valid hash lengths bind, and a login in that session is signed.
    for len in [32, 48, 64] {
        let (mut s, child) = filter_session(&v);
        let (r, sid) = v.bind(&mut s, len);
        assert_eq!(r, [6], "sid of {len} bytes");
        let login = userauth_as(&backup, &sid, &v.user, Some(&host));
        assert_eq!(call(&mut s, &sign_request(&backup, &login))[0], 14);
        // Same session, other session id: refused.
        let mut other_sid = sid.clone();
        other_sid[0] ^= 1;
        let login = userauth_as(&backup, &other_sid, &v.user, Some(&host));
        assert_eq!(call(&mut s, &sign_request(&backup, &login)), [5]);
        // A second bind on the same connection: refused.
        assert_eq!(v.bind(&mut s, len).0, [5]);
        let err = finish(s, child);
        assert!(err.contains("the session id differs"), "{err}");
        assert!(err.contains("already bound"), "{err}");
    }

    // Other lengths: refused by the filter before the agent sees them.
    for len in [1, 16, 20, 31, 33, 65, 128] {
        let (mut s, child) = filter_session(&v);
        let (r, _) = v.bind(&mut s, len);
        assert_eq!(r, [5], "sid of {len} bytes");
        let err = finish(s, child);
        assert!(
            err.contains(&format!(
                "session id of {len} bytes is not a SHA-256/384/512 exchange hash"
            )),
            "{err}"
        );
    }

    // A forged binding (signature over another session id) is refused by the agent's check;
    // the connection then stays unbound and no login is signed on it.
    let (mut s, child) = filter_session(&v);
    let sid = [3u8; 32];
    let sig = v.host_sign(&[4u8; 32]);
    assert_eq!(call(&mut s, &session_bind(&host, &sid, &sig, false)), [5]);
    let login = userauth_as(&backup, &sid, &v.user, Some(&host));
    assert_eq!(call(&mut s, &sign_request(&backup, &login)), [5]);
    // A forwarding bind: refused.
    let sig = v.host_sign(&sid);
    assert_eq!(call(&mut s, &session_bind(&host, &sid, &sig, true)), [5]);
    let err = finish(s, child);
    assert!(
        err.contains("the ssh-agent did not verify the host key's signature over the session id"),
        "{err}"
    );
    assert!(err.contains("forwarded agent connection"), "{err}");
    assert!(!err.contains("signed"), "{err}");
}

/// A fake ssh-agent at the key set's socket that answers every request
/// with the next canned reply (raw bytes, framing included).
fn fake_agent(v: &Vault, replies: Vec<Vec<u8>>) -> thread::JoinHandle<()> {
    let sock = v.run_dir.join("default/agent.sock");
    let _ = fs::remove_file(&sock);
    let l = UnixListener::bind(&sock).unwrap();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        for r in replies {
            let mut len = [0u8; 4];
            if c.read_exact(&mut len).is_err() {
                return;
            }
            let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
            c.read_exact(&mut b).unwrap();
            if c.write_all(&r).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_misbehaving_agents_replies_never_reach_the_client() {
    let v = Vault::new("hb-badagent");
    let host = pub_blob(&v.other_key.with_extension("pub"));
    let backup = pub_blob(&v.backup_key.with_extension("pub"));
    let sid = [5u8; 32];
    let sig = v.host_sign(&sid);
    let bind = session_bind(&host, &sid, &sig, false);
    let login = sign_request(&backup, &userauth_as(&backup, &sid, &v.user, Some(&host)));

    // Identities answer with trailing bytes, a bind answered with a sign response, then
    // (after a good bind) a signature that is not ed25519, and one with trailing bytes.
    let mut ids = vec![12, 0, 0, 0, 0, 9];
    ids.splice(0..0, (ids.len() as u32).to_be_bytes());
    let mut rsa_sig = vec![14];
    put_string(&mut rsa_sig, &{
        let mut s = Vec::new();
        put_string(&mut s, b"rsa-sha2-512");
        put_string(&mut s, &[1; 64]);
        s
    });
    let mut good_sig = vec![14];
    put_string(&mut good_sig, &{
        let mut s = Vec::new();
        put_string(&mut s, b"ssh-ed25519");
        put_string(&mut s, &[1; 64]);
        s
    });
    good_sig.push(0);
    let agent = fake_agent(
        &v,
        vec![
            ids,
            frame(&[14]),
            frame(&[6]),
            frame(&rsa_sig),
            frame(&good_sig),
        ],
    );
    let (mut s, child) = filter_session(&v);
    assert_eq!(call(&mut s, &[11]), [5], "malformed identities answer");
    assert_eq!(
        call(&mut s, &bind),
        [5],
        "bind answered with a sign response"
    );
    assert_eq!(call(&mut s, &bind), [6], "agent verified the bind");
    assert_eq!(call(&mut s, &login), [5], "non-ed25519 signature");
    assert_eq!(call(&mut s, &login), [5], "trailing bytes");
    let err = finish(s, child);
    agent.join().unwrap();
    assert_eq!(
        err.matches("unexpected answer from ssh-agent").count(),
        4,
        "{err}"
    );
    assert!(!err.contains("signed an SSH login"), "{err}");

    // An agent announcing an oversized reply, and one closing mid-frame.
    for reply in [
        (256 * 1024 + 1u32).to_be_bytes().to_vec(),
        vec![0, 0, 0, 9, 12],
    ] {
        let agent = fake_agent(&v, vec![reply]);
        let (mut s, child) = filter_session(&v);
        assert_eq!(call(&mut s, &[11]), [5]);
        drop(s);
        let out = child.wait_with_output().unwrap();
        agent.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ssh-agent at "), "{err}");
    }
}
