//! qubes-relay --listen PATH -- CMD: a command per connection, byte-exact,
//! socket removed on SIGTERM/SIGINT and when the parent dies.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;

use crate::support::*;

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// Kills the listener if a test fails before it ends it.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn listen(path: &Path, extra: &[&str], cmd: &[&str]) -> Guard {
    let c = Command::new(RELAY)
        .arg("--listen")
        .arg(path)
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let g = Guard(c);
    wait_for(|| UnixStream::connect(path).is_ok(), "the listener");
    g
}

#[test]
fn each_connection_gets_its_own_command_and_byte_exact_relay() {
    let dir = TempDir::new("listen");
    let path = dir.0.join("s");
    let mut l = listen(&path, &[], &["cat"]);
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let c = UnixStream::connect(&path).unwrap();
                let c2 = c.try_clone().unwrap();
                let len = 1_000_000 + i * 4097;
                let (sent, got) = pump(c, c2, 100 + i, len, 8192);
                assert_eq!(sent, got, "connection {i}");
                assert_eq!(got.len, len);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    signal(l.0.id(), "TERM");
    let st = l.0.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(!path.exists(), "socket left behind");
}

#[test]
fn command_per_connection_sees_eof_and_answers_after_it() {
    let dir = TempDir::new("listen-eof");
    let path = dir.0.join("s");
    let mut l = listen(&path, &[], &["sh", "-c", "wc -c; echo done"]);
    let c = UnixStream::connect(&path).unwrap();
    let c2 = c.try_clone().unwrap();
    let w = thread::spawn(move || {
        send_gen(&c, 7, 77_777, 1000).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut out = String::new();
    (&c2).read_to_string(&mut out).unwrap();
    w.join().unwrap();
    assert_eq!(out, "77777\ndone\n");
    signal(l.0.id(), "INT");
    assert_eq!(l.0.wait().unwrap().code(), Some(0));
    assert!(!path.exists());
}

#[test]
fn socket_mode_follows_the_umask() {
    let dir = TempDir::new("listen-umask");
    let path = dir.0.join("s");
    let mut l = Guard(
        Command::new("sh")
            .arg("-c")
            .arg("umask 077; exec \"$0\" --listen \"$1\" -- cat")
            .arg(RELAY)
            .arg(&path)
            .spawn()
            .unwrap(),
    );
    wait_for(|| is_socket(&path), "the socket");
    let mode = std::fs::symlink_metadata(&path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    signal(l.0.id(), "TERM");
    assert_eq!(l.0.wait().unwrap().code(), Some(0));
}

#[test]
fn existing_path_is_refused_unless_unlink_early_and_a_socket() {
    let dir = TempDir::new("listen-exists");
    let path = dir.0.join("s");
    std::fs::write(&path, b"not a socket").unwrap();
    for extra in [&[][..], &["--unlink-early"][..]] {
        let out = Command::new(RELAY)
            .arg("--listen")
            .arg(&path)
            .args(extra)
            .args(["--", "cat"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{extra:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("qubes-relay: cannot listen on"));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
    // A stale socket (its listener gone) is replaced with --unlink-early.
    std::fs::remove_file(&path).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(is_socket(&path));
    let mut l = listen(&path, &["--unlink-early"], &["cat"]);
    let c = UnixStream::connect(&path).unwrap();
    let (s, g) = pump(c.try_clone().unwrap(), c, 1, 10_000, 999);
    assert_eq!(s, g);
    signal(l.0.id(), "TERM");
    assert_eq!(l.0.wait().unwrap().code(), Some(0));
}

#[test]
fn die_with_parent_removes_the_socket_when_the_parent_exits() {
    let dir = TempDir::new("listen-pdeath");
    let path = dir.0.join("s");
    let pidfile = dir.0.join("pid");
    // sh starts the listener in the background, records its pid, and exits
    // once the socket exists: the listener's parent is gone.
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --listen \"$1\" --die-with-parent -- cat & echo $! > \"$2\"; while [ ! -S \"$1\" ]; do sleep 0.05; done")
        .arg(RELAY)
        .arg(&path)
        .arg(&pidfile)
        .spawn()
        .unwrap();
    assert!(sh.wait().unwrap().success());
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    wait_for(|| !path.exists(), "the socket to go");
    wait_for(
        || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // Reparented; exited but not reaped by our init: a zombie.
            Ok(s) => s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
        },
        "the listener to exit",
    );
}
