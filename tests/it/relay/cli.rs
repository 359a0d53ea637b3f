//! qubes-relay the program: byte-exact relaying in each mode, exit codes,
//! error messages.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::thread;

use crate::support::*;

#[test]
fn command_mode_sockets_round_trip_is_byte_exact_for_edge_sizes() {
    for &len in &[
        0u64,
        1,
        4095,
        65535,
        65536,
        65537,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
    ] {
        let (mut child, to, from) = relay_on_sockets(&["--", "cat"]);
        let (sent, got) = pump(to, from, len, len, 7919);
        assert_eq!(sent, got, "size {len}");
        assert_eq!(got.len, len);
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn command_mode_pipes_round_trip_is_byte_exact() {
    let len = 3 << 20;
    let mut child = Command::new(RELAY)
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let w = thread::spawn(move || send_gen(stdin, 42, len, 65536).unwrap());
    let got = recv_sum(stdout).unwrap();
    assert_eq!(w.join().unwrap(), got);
    assert!(child.wait().unwrap().success());
}

#[test]
fn exit_status_of_the_command_is_passed_through() {
    for (script, code) in [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 255", 255),
        ("kill -TERM $$", 128 + 15),
    ] {
        let st = Command::new(RELAY)
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(code), "{script}");
    }
}

#[test]
fn missing_command_exits_127_with_one_line_naming_it() {
    let out = Command::new(RELAY)
        .args(["--", "qubes-relay-no-such-command"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "qubes-relay: cannot start 'qubes-relay-no-such-command': No such file or directory\n"
    );
}

#[test]
fn non_executable_command_exits_126() {
    let out = Command::new(RELAY)
        .args(["--", "/etc/hostname"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
}

#[test]
fn bad_usage_exits_125() {
    for args in [
        &["--bogus"][..],
        &[][..],
        &["--connect"][..],
        &["--listen", "/tmp/x"][..],
    ] {
        let out = Command::new(RELAY).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("qubes-relay: "));
    }
}

#[test]
fn help_lists_the_exit_codes() {
    let out = Command::new(RELAY).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "125",
        "126",
        "127",
        "128+N",
        "--connect",
        "--listen",
        "--die-with-parent",
    ] {
        assert!(text.contains(needle), "{needle}");
    }
}

#[test]
fn output_written_long_after_stdin_eof_is_delivered() {
    // socat's default -t 0.5 would drop this (docs/SOURCES.md, "Relay").
    let out = Command::new(RELAY)
        .args([
            "--",
            "sh",
            "-c",
            "cat >/dev/null; sleep 1; echo late-output",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"late-output\n");
}

#[test]
fn connect_mode_relays_both_ways_with_half_close() {
    let tmp = TempDir::new("relay-connect");
    let dir = tmp.path();
    let path = dir.join("s");
    let listener = UnixListener::bind(&path).unwrap();
    // Server: read everything, then answer with its length and a tail.
    let server = thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let reply = format!("{} {:?}", got.len(), Sum::of(&got).h);
        c.write_all(reply.as_bytes()).unwrap();
        reply
    });
    let data = pattern(9, 2_000_003);
    let mut child = Command::new(RELAY)
        .arg("--connect")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let d2 = data.clone();
    let w = thread::spawn(move || stdin.write_all(&d2).unwrap());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    w.join().unwrap();
    assert!(child.wait().unwrap().success());
    let reply = server.join().unwrap();
    assert_eq!(out, reply);
    assert_eq!(reply, format!("{} {:?}", data.len(), Sum::of(&data).h));
}

#[test]
fn connect_to_missing_socket_exits_125_naming_it() {
    let out = Command::new(RELAY)
        .args(["--connect", "/nonexistent/qb-relay.sock"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "qubes-relay: cannot connect to '/nonexistent/qb-relay.sock': No such file or directory\n"
    );
}

#[test]
fn stream_sockets_on_both_fds_carry_a_reply_after_request_eof() {
    // The child answers only once its stdin ended: the relay must pass the
    // EOF on (shutdown) and keep the other direction open.
    let (mut child, to, from) = relay_on_sockets(&["--", "sh", "-c", "wc -c"]);
    let w = thread::spawn(move || {
        send_gen(&to, 1, 123_457, 4096).unwrap();
        to.shutdown(std::net::Shutdown::Write).unwrap();
        to
    });
    let mut out = String::new();
    (&from).read_to_string(&mut out).unwrap();
    let _to: UnixStream = w.join().unwrap();
    assert_eq!(out.trim(), "123457");
    assert!(child.wait().unwrap().success());
}

#[test]
fn one_socket_on_both_stdin_and_stdout_is_half_closed_exactly() {
    // inetd style: fd 0 and fd 1 are the same socket. EOF from the peer
    // must close only the command's stdin; its later output still arrives,
    // then the relay shuts the socket down for writing.
    let (peer, ours) = UnixStream::pair().unwrap();
    let fd = std::os::fd::OwnedFd::from(ours);
    let mut child = Command::new(RELAY)
        .args(["--", "sh", "-c", "wc -c; echo after-eof"])
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .stdout(Stdio::from(fd))
        .spawn()
        .unwrap();
    (&peer).write_all(&pattern(4, 250_000)).unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    (&peer).read_to_string(&mut out).unwrap();
    assert_eq!(out, "250000\nafter-eof\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn connect_mode_with_our_reader_gone_exits_cleanly_not_by_sigpipe() {
    let tmp = TempDir::new("relay-connect-gone");
    let dir = tmp.path();
    let path = dir.join("s");
    let listener = UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        let (c, _) = listener.accept().unwrap();
        // Talk until the relay stops reading us (EPIPE), then hang up.
        let chunk = vec![b'x'; 65536];
        for _ in 0..10_000 {
            if (&c).write_all(&chunk).is_err() {
                return true;
            }
        }
        false
    });
    let (from_relay, relay_out) = UnixStream::pair().unwrap();
    let mut child = Command::new(RELAY)
        .arg("--connect")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(relay_out)))
        .spawn()
        .unwrap();
    let mut buf = [0u8; 1000];
    (&from_relay).read_exact(&mut buf).unwrap();
    drop(from_relay);
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert!(
        server.join().unwrap(),
        "server was not told that nobody reads"
    );
}
