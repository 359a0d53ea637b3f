//! scripts/qubes-borg-keygen: first-use key creation, the printed public
//! key line, name validation, and loading into the key set's agent.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::*;

fn keygen_cmd(home: &std::path::Path) -> Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/qubes-borg-keygen");
    let mut c = Command::new(script);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", home);
    c
}

#[test]
fn keygen_creates_the_key_once_and_prints_its_public_line() {
    let d = TempDir::new("agent-keygen");
    let out = output(&mut keygen_cmd(d.path()));
    assert!(out.status.success(), "{out:?}");
    let key = d.path().join(".ssh/qubes-borg/default/id_ed25519");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed,
        fs::read_to_string(key.with_extension("pub")).unwrap()
    );
    assert!(printed.starts_with("ssh-ed25519 "), "{printed}");
    assert_eq!(printed.lines().count(), 1, "stdout is only the key line");
    assert!(String::from_utf8_lossy(&out.stderr).contains("authorized_keys"));
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(key.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    // The filter accepts what it printed.
    qubes_borg::agent::filter::BackupKey::from_public_line(&printed).unwrap();

    // Second run: same key, not regenerated.
    let private_before = fs::read(&key).unwrap();
    let again = output(&mut keygen_cmd(d.path()));
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap(), printed);
    assert_eq!(fs::read(&key).unwrap(), private_before);

    // --create for another set prints nothing and makes that set's key.
    let out = output(keygen_cmd(d.path()).args(["--create", "work.2"]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(d
        .path()
        .join(".ssh/qubes-borg/work.2/id_ed25519.pub")
        .is_file());
}

#[test]
fn keygen_refuses_bad_names_without_touching_the_disk() {
    let d = TempDir::new("agent-keygen-bad");
    for bad in ["../x", ".x", "-x", "a/b", "a b", "a;b", &"x".repeat(65)] {
        let out = output(keygen_cmd(d.path()).arg(bad));
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
        let out = output(keygen_cmd(d.path()).args(["--create", bad]));
        assert_eq!(out.status.code(), Some(64), "--create {bad:?}: {out:?}");
    }
    let out = output(keygen_cmd(d.path()).arg("--load"));
    assert_eq!(out.status.code(), Some(64));
    assert!(!d.path().join(".ssh").exists(), "nothing created");
}

#[test]
fn keygen_load_puts_the_key_into_the_key_sets_agent() {
    let d = TempDir::new("agent-keygen-load");
    let rundir = d.path().join("run");
    fs::create_dir_all(rundir.join("default")).unwrap();
    let sock = rundir.join("default/agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(output(keygen_cmd(d.path()).args(["--create", "default"]))
        .status
        .success());
    let out = output(
        keygen_cmd(d.path())
            .args(["--load", "default"])
            .env("QUBES_BORG_AGENT_RUNDIR", &rundir),
    );
    let listed = output(
        Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", &sock),
    );
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{out:?}");
    let pubkey =
        fs::read_to_string(d.path().join(".ssh/qubes-borg/default/id_ed25519.pub")).unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(listed.lines().count(), 1);
    assert_eq!(
        listed.split_whitespace().nth(1),
        pubkey.split_whitespace().nth(1),
        "the agent holds exactly the backup key"
    );
}
