//! sys-backup: the OpenSSH command line that the `qubes-borg.Ssh` service runs, and the
//! classification of ssh's failures into one readable line.
//!
//! Nothing in the command line comes from the caller except the vetted `borg serve` options
//! (allowlisted words, see `argv`). Everything else is the destination configuration and
//! a fixed option set:
//!
//! * `-F none`: no user or system ssh_config is read (ssh(1)).
//! * Host key: `StrictHostKeyChecking=yes`, `UserKnownHostsFile=` a private file written from the
//!   pinned keys, `GlobalKnownHostsFile=/dev/null`, `HostKeyAlias=NAME` (the pinned keys are
//!   filed under the destination name), `CheckHostIP=no`, `UpdateHostKeys=no`.
//! * `BatchMode=yes` (never prompts), password and keyboard-interactive off.
//! * No forwarding of any kind: `ForwardAgent=no`, `ForwardX11=no`, `ClearAllForwardings=yes`,
//!   `Tunnel=no`; no local or proxy commands: `PermitLocalCommand=no`, `ProxyCommand=none`,
//!   `ProxyJump=none`; no connection sharing: `ControlMaster=no`, `ControlPath=none`.
//! * `ConnectTimeout=30`: a server that does not answer fails the connection after 30 s instead
//!   of the system's TCP timeout (minutes). `ServerAliveInterval=15`, `ServerAliveCountMax=3`:
//!   a dead link ends the session 60 s after the server's last packet. ssh asks after 15 s
//!   without a packet from the server and gives up when the 4th ask is due with none answered
//!   (openssh-portable `clientloop.c` `server_alive_check`, V_9_2_P1 to V_10_2_P1: the count
//!   must *exceed* the max, so (3+1) x 15 s). sshd answers these itself
//!   (`serverloop.c` `server_input_global_request`), never borg serve, so a borg serve that
//!   computes for hours without a byte keeps its session; any packet from the server (window
//!   adjusts while it reads our upload) resets the count.
//! * `-T` (no tty), `-e none` (no escape character), `-p PORT`, `-l USER`, then `--`, the host
//!   and the remote command words.
//! * Key: `IdentityAgent=` the per-connection split-SSH socket and `IdentityFile=none` (no
//!   default `~/.ssh/id_*` files) when the destination names a key set, else
//!   `IdentityAgent=none`; `IdentityFile=` + `IdentitiesOnly=yes` when it names a key file.

use super::destination::Destination;
use super::status::ErrClass;
use crate::validate;
use std::ffi::OsString;
use std::path::Path;

/// The fixed options, before the per-destination ones.
pub const FIXED_OPTIONS: &[&str] = &[
    "-oBatchMode=yes",
    "-oStrictHostKeyChecking=yes",
    "-oGlobalKnownHostsFile=/dev/null",
    "-oCheckHostIP=no",
    "-oUpdateHostKeys=no",
    "-oPasswordAuthentication=no",
    "-oKbdInteractiveAuthentication=no",
    "-oForwardAgent=no",
    "-oForwardX11=no",
    "-oForwardX11Trusted=no",
    "-oClearAllForwardings=yes",
    "-oTunnel=no",
    "-oPermitLocalCommand=no",
    "-oProxyCommand=none",
    "-oProxyJump=none",
    "-oControlMaster=no",
    "-oControlPath=none",
    "-oConnectTimeout=30",
    "-oServerAliveInterval=15",
    "-oServerAliveCountMax=3",
    "-oRequestTTY=no",
];

/// Seconds after the server's last packet at which ssh ends a session on a dead link: the
/// keep-alive options above, (ServerAliveCountMax + 1) x ServerAliveInterval.
pub const DEAD_LINK_SECS: u32 = 60;

/// Build the full argv (program first).
///
/// `known_hosts` and `agent_socket` are paths this service created; they must be allowlisted
/// path words (no spaces, no `%`, no `~`, which ssh would expand), else this returns `None`.
pub fn argv(
    ssh: &Path,
    dest: &Destination,
    known_hosts: &Path,
    agent_socket: Option<&Path>,
    remote_command: &[String],
) -> Option<Vec<OsString>> {
    let word = |p: &Path| -> Option<String> {
        let s = p.to_str()?;
        validate::path_word("path", s).ok()?;
        Some(s.to_string())
    };
    let mut v: Vec<OsString> = vec![ssh.into(), "-F".into(), "none".into()];
    v.extend(FIXED_OPTIONS.iter().map(OsString::from));
    v.push(format!("-oUserKnownHostsFile={}", word(known_hosts)?).into());
    v.push(format!("-oHostKeyAlias={}", dest.name).into());
    match (agent_socket, &dest.identity_file) {
        (Some(sock), _) => {
            v.push(format!("-oIdentityAgent={}", word(sock)?).into());
            // Without this, ssh also offers (and logs in with) the default key files of
            // sys-backup's user (~/.ssh/id_rsa, id_ed25519, ...): keys in the networked qube,
            // not the split-SSH key. `none` leaves only the agent's keys.
            v.push("-oIdentityFile=none".into());
        }
        (None, Some(file)) => {
            v.push("-oIdentityAgent=none".into());
            v.push(format!("-oIdentityFile={file}").into());
            v.push("-oIdentitiesOnly=yes".into());
        }
        (None, None) => v.push("-oIdentityAgent=none".into()),
    }
    v.extend(
        [
            "-T",
            "-e",
            "none",
            "-p",
            &dest.port.to_string(),
            "-l",
            &dest.user,
            "--",
            &dest.host,
        ]
        .iter()
        .map(OsString::from),
    );
    v.extend(remote_command.iter().map(OsString::from));
    Some(v)
}

/// Turn ssh's exit status and the start of its stderr (run with `LC_ALL=C`) into a class and
/// one readable line, for a failure that happened before ssh wrote anything to stdout.
pub fn classify(exit: u8, stderr: &[u8], dest: &Destination, config: &Path) -> (ErrClass, String) {
    let text = String::from_utf8_lossy(stderr);
    let has = |s: &str| text.contains(s);
    let target = format!("{}@{} port {}", dest.user, dest.host, dest.port);
    let last = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| validate::printable(l.as_bytes(), 200))
        .unwrap_or_default();
    let key = match (&dest.agent, &dest.identity_file) {
        (Some(a), _) => format!("split-SSH key set '{a}'"),
        (None, Some(f)) => format!("key file {f}"),
        (None, None) => "default key of sys-backup's user".to_string(),
    };
    if has("Host key verification failed")
        || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("host key is known")
        || has("Host key for")
    {
        return (
            ErrClass::HostKey,
            format!(
                "host key of destination '{}' ({}) does not match the pinned host-key lines in {} in sys-backup",
                dest.name,
                dest.host,
                config.display()
            ),
        );
    }
    if has("Permission denied (") || has("Too many authentication failures") {
        return (
            ErrClass::Auth,
            format!("authentication as {target} failed with the {key}: is its public key installed on the server?"),
        );
    }
    if has("Connection refused") {
        return (
            ErrClass::ConnectionRefused,
            format!(
                "connection to {}:{} refused (destination '{}')",
                dest.host, dest.port, dest.name
            ),
        );
    }
    if has("Could not resolve hostname")
        || has("Name or service not known")
        || has("Temporary failure in name resolution")
        || has("Connection timed out")
        || has("Network is unreachable")
        || has("No route to host")
        || has("Operation timed out")
        || (has("Timeout, server") && has("not responding"))
    {
        return (
            ErrClass::Network,
            format!(
                "cannot reach {}:{} from sys-backup (destination '{}'): {last}",
                dest.host, dest.port, dest.name
            ),
        );
    }
    if exit == 127 || has("command not found") {
        return (
            ErrClass::RemoteCommand,
            format!(
                "remote command '{}' not found on {} (exit {exit}); set remote-path in {}",
                dest.remote_path,
                dest.host,
                config.display()
            ),
        );
    }
    let what = if exit == 255 { "ssh" } else { "remote command" };
    (
        ErrClass::Ssh,
        format!(
            "{what} for destination '{}' failed (exit {exit}) before any data: {}",
            dest.name,
            if last.is_empty() { "no message" } else { &last }
        ),
    )
}

/// Explain ssh's failure (exit 255) *during* a session from its last stderr line (run with
/// `LC_ALL=C`) when that line says the connection failed: the link died (keep-alive timeout), or
/// the server closed or reset the connection. `None` for anything else (a 255 with another last
/// line may be the remote command's own status).
pub fn classify_lost(last_line: &str, dest: &Destination) -> Option<(ErrClass, String)> {
    let has = |s: &str| last_line.contains(s);
    let server = format!("{}:{} (destination '{}')", dest.host, dest.port, dest.name);
    let said = validate::printable(last_line.trim().as_bytes(), 160);
    let message = if has("Timeout, server") && has("not responding") {
        format!(
            "connection from sys-backup to the borg server {server} lost: no answer for {DEAD_LINK_SECS} s (ssh keep-alive); the network link or the server is down"
        )
    } else if has("Connection closed by")
        || has("Connection reset")
        || has("Broken pipe")
        || (has("Connection to ") && has("closed by remote host"))
    {
        format!("the connection from sys-backup to the borg server {server} broke during the session: {said}")
    } else {
        return None;
    };
    Some((ErrClass::ConnectionLost, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::destination::{Destination, HostKey};

    fn dest() -> Destination {
        Destination {
            name: "nas".into(),
            host: "nas.example".into(),
            port: 2222,
            user: "u".into(),
            remote_path: "borg".into(),
            host_keys: vec![HostKey {
                kind: "ssh-ed25519".into(),
                base64: "AAAA".into(),
            }],
            agent: None,
            identity_file: None,
        }
    }

    #[test]
    fn argv_has_fixed_options_then_dashdash_host_and_command() {
        let v = argv(
            Path::new("/usr/bin/ssh"),
            &dest(),
            Path::new("/tmp/qubes-ssh.x/known_hosts"),
            None,
            &["borg".into(), "serve".into(), "--info".into()],
        )
        .unwrap();
        let v: Vec<String> = v.into_iter().map(|s| s.into_string().unwrap()).collect();
        assert_eq!(&v[..3], ["/usr/bin/ssh", "-F", "none"]);
        for o in FIXED_OPTIONS {
            assert!(v.iter().any(|w| w == o), "{o}");
        }
        let dd = v.iter().position(|w| w == "--").unwrap();
        assert_eq!(&v[dd + 1..], ["nas.example", "borg", "serve", "--info"]);
        assert!(v.contains(&"-oIdentityAgent=none".to_string()));
        assert!(v.contains(&"-oHostKeyAlias=nas".to_string()));
        // ssh neither waits forever for a connection nor for a silent server: a dead link is
        // detected after (3 + 1) x 15 s.
        assert_eq!(DEAD_LINK_SECS, (3 + 1) * 15);
        for o in [
            "-oConnectTimeout=30",
            "-oServerAliveInterval=15",
            "-oServerAliveCountMax=3",
        ] {
            assert!(v[..dd].contains(&o.to_string()), "{o}");
        }
        assert!(v.windows(2).any(|w| w == ["-p", "2222"]));
        assert!(v.windows(2).any(|w| w == ["-l", "u"]));
    }

    #[test]
    fn argv_refuses_paths_ssh_would_expand() {
        for p in ["/tmp/a b/kh", "/tmp/%h/kh", "/tmp/~/kh"] {
            assert!(
                argv(Path::new("ssh"), &dest(), Path::new(p), None, &[]).is_none(),
                "{p}"
            );
        }
        assert!(argv(
            Path::new("ssh"),
            &dest(),
            Path::new("/tmp/kh"),
            Some(Path::new("/tmp/%d/agent")),
            &[]
        )
        .is_none());
    }

    /// What the installed OpenSSH makes of our argv (`ssh -G` prints the effective
    /// configuration and exits without connecting). None when there is no /usr/bin/ssh.
    fn ssh_g(dest: &Destination, agent: Option<&Path>) -> Option<String> {
        let ssh = Path::new("/usr/bin/ssh");
        if !ssh.exists() {
            eprintln!("SKIP: no /usr/bin/ssh");
            return None;
        }
        let mut v = argv(
            ssh,
            dest,
            Path::new("/tmp/qubes-ssh.x/known_hosts"),
            agent,
            &["borg".into(), "serve".into()],
        )
        .unwrap();
        v.insert(1, "-G".into());
        let out = std::process::Command::new(&v[0])
            .args(&v[1..])
            .env_clear()
            .env("HOME", "/nonexistent-home")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Some(String::from_utf8(out.stdout).unwrap())
    }

    fn identity_files(g: &str) -> Vec<&str> {
        g.lines()
            .filter_map(|l| l.strip_prefix("identityfile "))
            .collect()
    }

    #[test]
    fn split_ssh_destinations_offer_no_key_files_of_sys_backup() {
        let mut d = dest();
        d.agent = Some("backup".into());
        let Some(g) = ssh_g(&d, Some(Path::new("/tmp/qubes-borg-agent.1.x/agent.sock"))) else {
            return;
        };
        assert_eq!(identity_files(&g), ["none"], "{g}");
        assert!(g
            .lines()
            .any(|l| l == "identityagent /tmp/qubes-borg-agent.1.x/agent.sock"));
        // The pinned keys only.
        assert!(g.lines().any(|l| l == "globalknownhostsfile /dev/null"));
        assert!(g
            .lines()
            .any(|l| l == "userknownhostsfile /tmp/qubes-ssh.x/known_hosts"));
    }

    #[test]
    fn key_file_destinations_offer_that_file_only() {
        let mut d = dest();
        d.identity_file = Some("/home/user/.ssh/id_backup".into());
        let Some(g) = ssh_g(&d, None) else {
            return;
        };
        assert_eq!(identity_files(&g), ["/home/user/.ssh/id_backup"], "{g}");
        assert!(g.lines().any(|l| l == "identitiesonly yes"));
        assert!(g.lines().any(|l| l == "identityagent none"));
    }

    #[test]
    fn classify_recognises_openssh_messages() {
        let d = dest();
        let c = Path::new("/etc/qubes-borg/destinations/nas.conf");
        let cases: &[(&[u8], ErrClass)] = &[
            (b"No ED25519 host key is known for nas and you have requested strict checking.\r\nHost key verification failed.\r\n", ErrClass::HostKey),
            (b"u@nas.example: Permission denied (publickey).\r\n", ErrClass::Auth),
            (b"ssh: connect to host nas.example port 2222: Connection refused\r\n", ErrClass::ConnectionRefused),
            (b"ssh: Could not resolve hostname nas.example: Name or service not known\r\n", ErrClass::Network),
            (b"kex_exchange_identification: read: Connection reset by peer\r\n", ErrClass::Ssh),
            (b"Timeout, server nas.example not responding.\r\n", ErrClass::Network),
        ];
        for (stderr, want) in cases {
            assert_eq!(
                classify(255, stderr, &d, c).0,
                *want,
                "{}",
                String::from_utf8_lossy(stderr)
            );
        }
        assert_eq!(
            classify(127, b"sh: 1: borg: not found\n", &d, c).0,
            ErrClass::RemoteCommand
        );
        let (_, m) = classify(255, b"weird\x1b[0m\n", &d, c);
        assert!(m.ends_with("weird?[0m"), "{m}");
    }

    fn words(v: Option<Vec<OsString>>) -> Vec<String> {
        v.unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn argv_is_exactly_the_fixed_options_then_the_key_options_of_each_kind() {
        let kh = Path::new("/run/q/known_hosts");
        let cmd = ["borg".to_string(), "serve".to_string()];
        let tail = [
            "-T",
            "-e",
            "none",
            "-p",
            "2222",
            "-l",
            "u",
            "--",
            "nas.example",
            "borg",
            "serve",
        ];
        let expect = |key: &[&str]| -> Vec<String> {
            let mut v = vec!["ssh", "-F", "none"];
            v.extend(FIXED_OPTIONS);
            v.extend([
                "-oUserKnownHostsFile=/run/q/known_hosts",
                "-oHostKeyAlias=nas",
            ]);
            v.extend(key);
            v.extend(tail);
            v.into_iter().map(String::from).collect()
        };
        let agent = Path::new("/run/q/agent.sock");
        assert_eq!(
            words(argv(Path::new("ssh"), &dest(), kh, Some(agent), &cmd)),
            expect(&["-oIdentityAgent=/run/q/agent.sock", "-oIdentityFile=none"])
        );
        let mut d = dest();
        d.identity_file = Some("/k/id".into());
        assert_eq!(
            words(argv(Path::new("ssh"), &d, kh, None, &cmd)),
            expect(&[
                "-oIdentityAgent=none",
                "-oIdentityFile=/k/id",
                "-oIdentitiesOnly=yes"
            ])
        );
        assert_eq!(
            words(argv(Path::new("ssh"), &dest(), kh, None, &cmd)),
            expect(&["-oIdentityAgent=none"])
        );
    }

    #[test]
    fn each_openssh_message_alone_gives_its_class_and_line() {
        let d = dest();
        let c = Path::new("/c/nas.conf");
        let host_key = "host key of destination 'nas' (nas.example) does not match the pinned host-key lines in /c/nas.conf in sys-backup";
        for m in [
            "Host key verification failed.",
            "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @",
            "No ED25519 host key is known for nas and you have requested strict checking.",
            "Host key for nas has changed and you have requested strict checking.",
        ] {
            assert_eq!(
                classify(255, m.as_bytes(), &d, c),
                (ErrClass::HostKey, host_key.into()),
                "{m}"
            );
        }
        let auth = "authentication as u@nas.example port 2222 failed with the default key of sys-backup's user: is its public key installed on the server?";
        for m in [
            "u@nas.example: Permission denied (publickey).",
            "Received disconnect: Too many authentication failures",
        ] {
            assert_eq!(
                classify(255, m.as_bytes(), &d, c),
                (ErrClass::Auth, auth.into()),
                "{m}"
            );
        }
        assert_eq!(
            classify(
                255,
                b"ssh: connect to host nas.example port 2222: Connection refused",
                &d,
                c
            ),
            (
                ErrClass::ConnectionRefused,
                "connection to nas.example:2222 refused (destination 'nas')".into()
            )
        );
        for m in [
            "ssh: Could not resolve hostname x",
            "x: Name or service not known",
            "x: Temporary failure in name resolution",
            "connect to host x: Connection timed out",
            "connect to host x: Network is unreachable",
            "connect to host x: No route to host",
            "connect to host x: Operation timed out",
        ] {
            assert_eq!(
                classify(255, format!("{m}\n").as_bytes(), &d, c),
                (
                    ErrClass::Network,
                    format!(
                        "cannot reach nas.example:2222 from sys-backup (destination 'nas'): {m}"
                    )
                ),
                "{m}"
            );
        }
        let not_found = "remote command 'borg' not found on nas.example (exit 127); set remote-path in /c/nas.conf";
        assert_eq!(
            classify(127, b"", &d, c),
            (ErrClass::RemoteCommand, not_found.into())
        );
        assert_eq!(
            classify(1, b"bash: borg: command not found\n", &d, c).0,
            ErrClass::RemoteCommand
        );
        assert_eq!(
            classify(255, b"first\n  last words  \n\n", &d, c),
            (
                ErrClass::Ssh,
                "ssh for destination 'nas' failed (exit 255) before any data: last words".into()
            )
        );
        assert_eq!(
            classify(2, b"", &d, c),
            (
                ErrClass::Ssh,
                "remote command for destination 'nas' failed (exit 2) before any data: no message"
                    .into()
            )
        );
    }

    #[test]
    fn an_auth_failure_names_the_key_that_was_offered() {
        let c = Path::new("/c/nas.conf");
        let denied = b"Permission denied (publickey).";
        let mut d = dest();
        d.agent = Some("backup".into());
        assert!(classify(255, denied, &d, c)
            .1
            .contains("with the split-SSH key set 'backup':"));
        d.agent = None;
        d.identity_file = Some("/k/id".into());
        assert!(classify(255, denied, &d, c)
            .1
            .contains("with the key file /k/id:"));
    }

    #[test]
    fn failures_during_the_session_name_their_cause() {
        let d = dest();
        let lost = |l: &str| classify_lost(l, &d);
        let (class, m) = lost("Timeout, server nas.example not responding.").unwrap();
        assert_eq!(class, ErrClass::ConnectionLost);
        assert!(m.contains("no answer for 60 s (ssh keep-alive)"), "{m}");
        assert!(m.contains("nas.example:2222 (destination 'nas')"), "{m}");
        for l in [
            "Connection closed by 192.0.2.10 port 22",
            "Connection reset by 192.0.2.10 port 22",
            "client_loop: send disconnect: Broken pipe",
            "Connection to nas.example closed by remote host.",
        ] {
            let (_, m) = lost(l).unwrap();
            assert!(m.contains("broke during the session: "), "{m}");
            assert!(m.ends_with(l), "{m}");
        }
        // Not a connection failure ssh reported: perhaps the remote command's own 255.
        assert_eq!(lost(""), None);
        assert_eq!(lost("borg: some remote message"), None);
        let (_, m) = lost("Connection reset \x1b]0;x\x07").unwrap();
        assert!(m.ends_with("Connection reset ?]0;x?"), "{m}");
    }
}
