//! The per-connection agent socket of sys-backup (`agent::forward`), end to
//! end: AgentSocket -> qubes-relay --listen -> (stand-in) qrexec-client-vm
//! -> qubes-agent-filter -> real ssh-agent, with real ssh and sshd; and the vault faults it
//! notes (agent down, key not loaded, agent frozen, call refused).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{geteuid, Pid};
use qubes_borg::agent::fault::VaultFault;
use qubes_borg::agent::forward::{AgentError, AgentSocket, AgentSocketOptions};

use crate::support::*;

/// Everything a test needs on the sys-backup side.
struct Side {
    vault: Vault,
    runtime: PathBuf,
    qrexec_log: PathBuf,
    journal: PathBuf,
    opts: AgentSocketOptions,
}

/// The sys-backup side, with the project's qrexec simulation (flat mode,
/// tests/sim/README.md) between it and ssh-backup: the project's dom0
/// policy decides, and qubes-borg.SshAgent in the simulated ssh-backup runs
/// qubes-agent-filter with qrexec's argv, QREXEC_* environment and
/// socketpairs. `caller` is the qube the calls come from.
fn side(tag: &str, caller: &str) -> Side {
    let vault = Vault::new(tag);
    let d = vault.dir.path();
    let runtime = d.join("rt");
    fs::create_dir(&runtime).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let qubes = d.join("qubes");
    for q in ["sys-backup", "sys-backup-mnt", "ssh-backup/etc/qubes-rpc"] {
        fs::create_dir_all(qubes.join(q)).unwrap();
    }
    let service = qubes.join("ssh-backup/etc/qubes-rpc/qubes-borg.SshAgent");
    // The installed wrapper execs /usr/libexec/qubes-borg/qubes-agent-filter;
    // here the same exec, of the built binary, with the vault's paths bound
    // to the test's directories in a mount namespace.
    write_exec(
        &service,
        &format!(
            "#!/bin/sh\n\
             QUBES_BORG_NOTIFY=0\n\
             export QUBES_BORG_NOTIFY\n\
             exec '{}' '{}' '{}' -- '{}' \"$@\"\n",
            IN_VAULT_NS,
            vault.key_dir.display(),
            vault.run_dir.display(),
            FILTER
        ),
    );
    let qrexec_log = d.join("qrexec.log");
    let client = d.join("qrexec-client-vm");
    let sim = qrexec_client_vm();
    write_exec(
        &client,
        &format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$*\" >> '{}'\n\
             QREXEC_SIM_QUBES='{}' QREXEC_SIM_SOURCE='{caller}' exec '{}' \"$@\"\n",
            qrexec_log.display(),
            qubes.display(),
            sim.display()
        ),
    );
    let opts = AgentSocketOptions {
        runtime_dir: Some(runtime.clone()),
        qrexec_client: client,
        relay: PathBuf::from(RELAY),
        ..Default::default()
    };
    Side {
        journal: qubes.join("ssh-backup/var/log/qubes/qrexec-services.log"),
        vault,
        runtime,
        qrexec_log,
        opts,
    }
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn assert_private(sock: &Path) {
    let m = fs::symlink_metadata(sock).unwrap();
    assert!(m.file_type().is_socket(), "{} is a socket", sock.display());
    assert_eq!(m.mode() & 0o777, 0o600, "socket mode");
    assert_eq!(m.uid(), geteuid().as_raw(), "socket owner");
    let d = fs::symlink_metadata(sock.parent().unwrap()).unwrap();
    assert!(d.file_type().is_dir());
    assert_eq!(d.mode() & 0o777, 0o700, "directory mode");
    assert_eq!(d.uid(), geteuid().as_raw(), "directory owner");
}

/// The process has exited (a zombie nobody reaped yet counts as exited:
/// an orphan's reaper may be slow or absent in a container).
fn gone(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None) == Err(Errno::ESRCH) {
        return true;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        .unwrap_or(true)
}

#[test]
fn agent_socket_exists_only_while_held_is_private_and_shows_only_the_backup_key() {
    let s = side("agent-sock", "sys-backup");
    assert!(entries(&s.runtime).is_empty(), "absent before");
    let sock = AgentSocket::start("default", &s.opts).unwrap();
    assert_private(sock.path());
    assert_eq!(entries(&s.runtime).len(), 1);
    let pid = sock.listener_pid().unwrap();

    let out = output(
        Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", sock.path()),
    );
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&s.vault.pub_line(&s.vault.backup_key)));
    let del = output(
        Command::new("ssh-add")
            .arg("-D")
            .env("SSH_AUTH_SOCK", sock.path()),
    );
    assert!(!del.status.success(), "ssh-add -D through the socket fails");
    assert_eq!(s.vault.direct_list().lines().count(), 2, "agent unchanged");
    let calls = fs::read_to_string(&s.qrexec_log).unwrap();
    assert_eq!(
        calls, "@default qubes-borg.SshAgent+default\n@default qubes-borg.SshAgent+default\n",
        "one qrexec call per connection"
    );
    let journal = fs::read_to_string(&s.journal).unwrap();
    assert!(
        journal.contains(
            "qubes-agent-filter: sys-backup: key set default: refused: removing all keys"
        ),
        "{journal}"
    );

    sock.close().unwrap();
    assert!(
        entries(&s.runtime).is_empty(),
        "absent after: {:?}",
        entries(&s.runtime)
    );
    wait_for(|| gone(pid), "the listener to exit");
}

#[test]
fn agent_socket_listener_does_not_hold_our_stderr() {
    // Under qrexec our stderr is the service's, and a call ends only when every holder of it
    // closed it: the listener (and the qrexec-client-vm it starts, which inherit its fds) must
    // have a stderr of its own. What they write still reaches ours, sanitized and prefixed.
    let s = side("agent-sock-stderr", "sys-backup-mnt");
    let sock = AgentSocket::start("default", &s.opts).unwrap();
    let pid = sock.listener_pid().unwrap();
    let ours = fs::metadata("/proc/self/fd/2").unwrap();
    let theirs = fs::metadata(format!("/proc/{pid}/fd/2")).unwrap();
    assert!(
        (ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino()),
        "the listener's fd 2 is our stderr"
    );
    sock.close().unwrap();
}

#[test]
fn agent_socket_in_a_qube_the_policy_does_not_allow_gives_no_keys() {
    let s = side("agent-sock-denied", "sys-backup-mnt");
    let sock = AgentSocket::start("default", &s.opts).unwrap();
    let out = output(
        Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", sock.path()),
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        fs::read_to_string(&s.qrexec_log).unwrap(),
        "@default qubes-borg.SshAgent+default\n"
    );
    let journal = fs::read_to_string(&s.journal).unwrap_or_default();
    assert!(
        !journal.contains("qubes-agent-filter"),
        "the filter never ran: {journal}"
    );
    sock.close().unwrap();
    assert!(entries(&s.runtime).is_empty());
}

#[test]
fn agent_socket_start_failures_leave_nothing_behind() {
    let s = side("agent-sock-fail", "sys-backup");
    let bad = AgentSocketOptions {
        relay: PathBuf::from("/nonexistent/qubes-relay"),
        ..s.opts.clone()
    };
    assert!(matches!(
        AgentSocket::start("default", &bad),
        Err(AgentError::Spawn { .. })
    ));
    let exits = AgentSocketOptions {
        relay: PathBuf::from("/bin/false"),
        ..s.opts.clone()
    };
    let e = AgentSocket::start("default", &exits).unwrap_err();
    assert!(matches!(e, AgentError::ListenerExited { .. }), "{e}");
    assert!(matches!(
        AgentSocket::start("../etc", &s.opts),
        Err(AgentError::Name(_))
    ));
    assert!(entries(&s.runtime).is_empty(), "{:?}", entries(&s.runtime));
}

/// Start the owner helper (this test binary, running `owner_helper`):
/// it holds an AgentSocket and runs ssh through it, like qubes-ssh-service.
/// `stderr`: where the helper's stderr goes (the caller's side of the link).
fn spawn_owner(
    s: &Side,
    sshd: &Sshd,
    stderr: Stdio,
) -> (std::process::Child, impl Iterator<Item = String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &owner_helper_name(),
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QB_OWNER_RUNTIME", &s.runtime)
        .env("QB_OWNER_QREXEC", &s.opts.qrexec_client)
        .env("QB_OWNER_PORT", sshd.port.to_string())
        .env("QB_OWNER_KNOWN_HOSTS", &sshd.known_hosts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap());
    (child, lines)
}

/// The libtest name of `owner_helper` in this binary (`agent::socket::owner_helper`).
fn owner_helper_name() -> String {
    let path = module_path!();
    let module = path.split_once("::").map_or(path, |(_, m)| m);
    format!("{module}::owner_helper")
}

/// Read the helper's output up to the line with `@@tag `; return the rest of
/// that line. (libtest prints its own text on the same line first.)
fn read_until(lines: &mut impl Iterator<Item = String>, tag: &str) -> String {
    let marker = format!("@@{tag}");
    for l in lines.by_ref() {
        if let Some(at) = l.find(&marker) {
            return l[at + marker.len()..].to_string();
        }
    }
    panic!("owner helper ended before printing {marker:?}");
}

#[test]
#[ignore = "helper process for the socket lifetime tests; does nothing when run alone"]
fn owner_helper() {
    let Some(runtime) = std::env::var_os("QB_OWNER_RUNTIME") else {
        return;
    };
    let opts = AgentSocketOptions {
        runtime_dir: Some(runtime.into()),
        qrexec_client: std::env::var_os("QB_OWNER_QREXEC").unwrap().into(),
        relay: PathBuf::from(RELAY),
        ..Default::default()
    };
    let sock = AgentSocket::start("default", &opts).unwrap();
    println!("@@SOCKET {}", sock.path().display());
    println!("@@LISTENER {}", sock.listener_pid().unwrap());
    let port: u16 = std::env::var("QB_OWNER_PORT").unwrap().parse().unwrap();
    let kh = PathBuf::from(std::env::var_os("QB_OWNER_KNOWN_HOSTS").unwrap());
    // The remote command lives until the connection is gone (cat sees EOF
    // when sshd drops the session), so nothing outlives the test.
    let mut ssh = ssh_cmd(
        port,
        &kh,
        sock.path(),
        "echo @@LOGGED-IN; exec cat >/dev/null",
    )
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let _keep_stdin_open = ssh.stdin.take();
    println!("@@SSH {}", ssh.id());
    let status = ssh.wait().unwrap();
    println!("@@SSH-EXITED {status}");
    // Like qubes-ssh-service after a login: the last lines of the vault calls reach stderr.
    sock.close_and_fault(Duration::from_secs(5));
}

#[test]
fn agent_socket_is_removed_when_ssh_is_killed() {
    let s = side("agent-sock-sshkill", "sys-backup");
    let Some(sshd) = Sshd::start(
        s.vault.dir.path(),
        &s.vault.backup_key.with_extension("pub"),
    ) else {
        return;
    };
    s.vault.allow_sshd(&sshd, "");
    assert!(entries(&s.runtime).is_empty(), "absent before");
    let (mut owner, mut lines) = spawn_owner(&s, &sshd, Stdio::inherit());
    let path = PathBuf::from(read_until(&mut lines, "SOCKET "));
    let listener: u32 = read_until(&mut lines, "LISTENER ").parse().unwrap();
    let ssh: u32 = read_until(&mut lines, "SSH ").parse().unwrap();
    read_until(&mut lines, "LOGGED-IN");
    // During the connection: private socket; the login went through it.
    assert_private(&path);
    assert!(fs::read_to_string(&s.qrexec_log)
        .unwrap()
        .contains("@default qubes-borg.SshAgent+default"));

    let journal = fs::read_to_string(&s.journal).unwrap();
    assert!(
        journal.contains("sys-backup: key set default: signed an SSH login"),
        "{journal}"
    );

    kill(Pid::from_raw(ssh as i32), Signal::SIGKILL).unwrap();
    read_until(&mut lines, "SSH-EXITED ");
    assert!(owner.wait().unwrap().success());
    assert!(!path.exists(), "socket removed after ssh was killed");
    assert!(entries(&s.runtime).is_empty(), "{:?}", entries(&s.runtime));
    assert!(gone(listener), "listener stopped");
}

#[test]
fn a_signed_logins_audit_line_stays_in_the_vault_while_a_refusal_reaches_the_caller() {
    let s = side("agent-sock-audit", "sys-backup");
    let Some(sshd) = Sshd::start(
        s.vault.dir.path(),
        &s.vault.backup_key.with_extension("pub"),
    ) else {
        return;
    };
    s.vault.allow_sshd(&sshd, "");
    // The owner's stderr is what qrexec hands to the caller of qubes-borg.Ssh (borg).
    let (mut owner, mut lines) = spawn_owner(&s, &sshd, Stdio::piped());
    let mut err = owner.stderr.take().unwrap();
    let caller = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let path = PathBuf::from(read_until(&mut lines, "SOCKET "));
    let ssh: u32 = read_until(&mut lines, "SSH ").parse().unwrap();
    read_until(&mut lines, "LOGGED-IN");
    // A refused request on the same socket.
    let del = output(
        Command::new("ssh-add")
            .arg("-D")
            .env("SSH_AUTH_SOCK", &path),
    );
    assert!(!del.status.success(), "{del:?}");
    kill(Pid::from_raw(ssh as i32), Signal::SIGKILL).unwrap();
    read_until(&mut lines, "SSH-EXITED ");
    assert!(owner.wait().unwrap().success());
    let caller = caller.join().unwrap();

    let journal = fs::read_to_string(&s.journal).unwrap();
    let prefix = "qubes-agent-filter: sys-backup: key set default: ";
    let signed = format!("{prefix}signed an SSH login (publickey-hostbound-v00@openssh.com)");
    let refused = format!("{prefix}refused: removing all keys");
    assert!(journal.contains(&signed), "vault journal: {journal}");
    assert!(journal.contains(&refused), "vault journal: {journal}");
    assert!(
        caller.contains(&format!("split-SSH agent: {refused}")),
        "caller: {caller}"
    );
    assert!(!caller.contains("signed an SSH login"), "caller: {caller}");
}

#[test]
fn agent_socket_is_removed_when_its_owner_is_killed() {
    let s = side("agent-sock-ownerkill", "sys-backup");
    let Some(sshd) = Sshd::start(
        s.vault.dir.path(),
        &s.vault.backup_key.with_extension("pub"),
    ) else {
        return;
    };
    s.vault.allow_sshd(&sshd, "");
    let (mut owner, mut lines) = spawn_owner(&s, &sshd, Stdio::inherit());
    let path = PathBuf::from(read_until(&mut lines, "SOCKET "));
    let listener: u32 = read_until(&mut lines, "LISTENER ").parse().unwrap();
    let ssh: u32 = read_until(&mut lines, "SSH ").parse().unwrap();
    read_until(&mut lines, "LOGGED-IN");
    assert_private(&path);

    // SIGKILL the owner (no Drop runs): the listener dies with it and
    // removes the socket.
    owner.kill().unwrap();
    owner.wait().unwrap();
    let _ = kill(Pid::from_raw(ssh as i32), Signal::SIGKILL);
    wait_for(
        || gone(listener),
        "the listener to exit after its owner died",
    );
    assert!(!path.exists(), "socket removed by the listener");
    // The empty private directory is swept by the next start.
    let next = AgentSocket::start("default", &s.opts).unwrap();
    assert_eq!(entries(&s.runtime).len(), 1, "{:?}", entries(&s.runtime));
    assert!(!path.parent().unwrap().exists(), "stale directory swept");
    next.close().unwrap();
    assert!(entries(&s.runtime).is_empty());
}

/// One login with real ssh to `sshd` through a fresh agent socket of `s`: whether it worked,
/// how long ssh took, and the vault fault the socket noted on the way.
fn login_and_fault(s: &Side, sshd: &Sshd) -> (bool, Duration, Option<VaultFault>) {
    let sock = AgentSocket::start("default", &s.opts).unwrap();
    let start = Instant::now();
    let out = output(&mut sshd.ssh_cmd(sock.path(), "true"));
    let took = start.elapsed();
    let fault = sock.close_and_fault(Duration::from_secs(5));
    eprintln!(
        "ssh: {} after {took:?}, fault {fault:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), took, fault)
}

/// The vault side with a real sshd that accepts the backup key; None: sshd cannot run (SKIP).
fn side_with_sshd(tag: &str, caller: &str) -> Option<(Side, Sshd)> {
    let s = side(tag, caller);
    let sshd = Sshd::start(
        s.vault.dir.path(),
        &s.vault.backup_key.with_extension("pub"),
    )?;
    s.vault.allow_sshd(&sshd, "");
    Some((s, sshd))
}

#[test]
fn a_working_vault_reports_no_fault() {
    let Some((s, sshd)) = side_with_sshd("fault-none", "sys-backup") else {
        return;
    };
    let (ok, _, fault) = login_and_fault(&s, &sshd);
    assert!(ok, "login through the vault works");
    assert_eq!(fault, None);
}

#[test]
fn vault_agent_not_running_is_reported_as_such_within_seconds() {
    let Some((mut s, sshd)) = side_with_sshd("fault-down", "sys-backup") else {
        return;
    };
    s.vault.agent.kill().unwrap();
    s.vault.agent.wait().unwrap();
    let _ = fs::remove_file(&s.vault.agent_sock);
    let (ok, took, fault) = login_and_fault(&s, &sshd);
    assert!(!ok);
    assert_eq!(fault, Some(VaultFault::AgentDown));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn vault_agent_without_the_backup_key_is_reported_as_such_within_seconds() {
    let Some((s, sshd)) = side_with_sshd("fault-nokey", "sys-backup") else {
        return;
    };
    let del = output(
        Command::new("ssh-add")
            .arg("-d")
            .arg(&s.vault.backup_key)
            .env("SSH_AUTH_SOCK", &s.vault.agent_sock),
    );
    assert!(del.status.success(), "{del:?}");
    let (ok, took, fault) = login_and_fault(&s, &sshd);
    assert!(!ok);
    assert_eq!(fault, Some(VaultFault::NoKey));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_frozen_vault_agent_fails_the_login_after_the_filters_timeout_not_sshds() {
    let Some((s, sshd)) = side_with_sshd("fault-frozen", "sys-backup") else {
        return;
    };
    let agent = Pid::from_raw(s.vault.agent.id() as i32);
    kill(agent, Signal::SIGSTOP).unwrap();
    let (ok, took, fault) = login_and_fault(&s, &sshd);
    kill(agent, Signal::SIGCONT).unwrap();
    assert!(!ok);
    assert_eq!(fault, Some(VaultFault::AgentTimeout));
    // One AGENT_TIMEOUT for the whole connection (then it fails at once), far below sshd's
    // LoginGraceTime (120 s) that ended such a login before.
    let bound = qubes_borg::agent::service::AGENT_TIMEOUT;
    assert!(took >= bound, "{took:?}");
    assert!(took < bound + Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_vault_call_refused_by_policy_is_reported_as_such_within_seconds() {
    // sys-backup-mnt may not call qubes-borg.SshAgent (the project's dom0 policy): qrexec
    // refuses with 126, which qubes-relay --listen reports.
    let Some((s, sshd)) = side_with_sshd("fault-refused", "sys-backup-mnt") else {
        return;
    };
    let (ok, took, fault) = login_and_fault(&s, &sshd);
    assert!(!ok);
    assert_eq!(fault, Some(VaultFault::Refused));
    assert!(took < Duration::from_secs(5), "{took:?}");
}
