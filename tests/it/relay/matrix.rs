//! The test matrix of issue 2 for `qubes-relay -- CMD`: stdin as pipe,
//! socketpair, regular file and pty; every EOF order; one direction and both
//! at once; 1 GiB streamed from a generator with a checksum.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, LocalFlags, SetArg};

fn relay_cmd(cmd: &[&str]) -> Command {
    let mut c = Command::new(RELAY);
    c.arg("--").args(cmd);
    c
}

fn sha256_of_gen(seed: u64, len: u64) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    send_gen(c.stdin.take().unwrap(), seed, len, 1 << 16).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn upload_only_matches_the_same_stream_without_relay() {
    for &len in &[0u64, 1, 4095, 65535, 65537, (1 << 20) + 1, 8 << 20] {
        let (mut child, to, from) = relay_on_sockets(&["--", "sha256sum"]);
        let w = thread::spawn(move || {
            send_gen(&to, len ^ 77, len, 32 << 10).unwrap();
            to.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut out = String::new();
        (&from).read_to_string(&mut out).unwrap();
        w.join().unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(out, sha256_of_gen(len ^ 77, len), "size {len}");
    }
}

#[test]
fn download_only_is_byte_exact() {
    let tmp = TempDir::new("relay-dl");
    let dir = tmp.path();
    for &len in &[1usize, 4095, 65536, (1 << 20) - 1, 5 << 20] {
        let f = dir.join("data");
        let data = pattern(len as u64, len);
        std::fs::write(&f, &data).unwrap();
        let (mut child, to, from) = relay_on_sockets(&["--", "cat", f.to_str().unwrap()]);
        let got = recv_sum(&from).unwrap();
        drop(to);
        assert!(child.wait().unwrap().success());
        assert_eq!(got, Sum::of(&data), "size {len}");
    }
}

#[test]
fn one_gib_both_directions_at_once_checksum_matches() {
    let len = 1u64 << 30;
    let t = Instant::now();
    let (mut child, to, from) = relay_on_sockets(&["--", "cat"]);
    let (sent, got) = pump(to, from, 0x1_0000, len, 1 << 20);
    assert_eq!(got.len, len);
    assert_eq!(sent, got);
    assert!(child.wait().unwrap().success());
    eprintln!("1 GiB through relay+cat in {:?}", t.elapsed());
}

/// `qubes-relay -- cat` with the given stdin; returns what came out.
fn through_cat_with_stdin(stdin: Stdio) -> (Vec<u8>, Option<i32>) {
    let out = relay_cmd(&["cat"])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    (out.stdout, out.status.code())
}

#[test]
fn stdin_as_pipe() {
    let data = pattern(11, 3_333_333);
    let mut c = relay_cmd(&["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    let d2 = data.clone();
    let w = thread::spawn(move || i.write_all(&d2).unwrap());
    let out = c.wait_with_output().unwrap();
    w.join().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == data);
}

#[test]
fn stdin_as_socketpair() {
    let data = pattern(12, 2_222_223);
    let (mut a, b) = UnixStream::pair().unwrap();
    let d2 = data.clone();
    let w = thread::spawn(move || {
        a.write_all(&d2).unwrap();
    });
    let (out, code) = through_cat_with_stdin(Stdio::from(OwnedFd::from(b)));
    w.join().unwrap();
    assert_eq!(code, Some(0));
    assert!(out == data);
}

#[test]
fn stdin_as_regular_file_and_dev_null() {
    let f = std::env::temp_dir().join(format!("qb-relay-file-{}", std::process::id()));
    let data = pattern(13, 4_000_037);
    std::fs::write(&f, &data).unwrap();
    let (out, code) = through_cat_with_stdin(Stdio::from(std::fs::File::open(&f).unwrap()));
    std::fs::remove_file(&f).unwrap();
    assert_eq!(code, Some(0));
    assert!(out == data);
    let (out, code) = through_cat_with_stdin(Stdio::null());
    assert_eq!((out.len(), code), (0, Some(0)));
}

#[test]
fn stdin_as_pty_canonical_mode_ends_at_eof_character() {
    let pty = open_pty();
    let mut t = tcgetattr(&pty.slave).unwrap();
    t.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!("line {i:05} {:016x}\n", i * 0x9E37_79B9u64));
    }
    let mut master = std::fs::File::from(pty.master);
    let t2 = text.clone();
    let w = thread::spawn(move || {
        master.write_all(t2.as_bytes()).unwrap();
        master.write_all(b"\x04").unwrap(); // VEOF at the start of a line
        master
    });
    let (out, code) = through_cat_with_stdin(Stdio::from(pty.slave));
    let _master = w.join().unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(String::from_utf8(out).unwrap(), text);
}

#[test]
fn stdin_as_raw_pty_binary_data_then_hangup_is_eof() {
    let pty = open_pty();
    let mut t = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
    let data = pattern(14, 200_000);
    let mut c = relay_cmd(&["cat"])
        .stdin(Stdio::from(pty.slave))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let d2 = data.clone();
    let w = thread::spawn(move || {
        master.write_all(&d2).unwrap();
        master
    });
    let mut out = c.stdout.take().unwrap();
    let mut got = vec![0u8; data.len()];
    out.read_exact(&mut got).unwrap();
    assert!(got == data);
    // Every byte is through; now hang up the terminal: EIO on the relay's
    // stdin is its end of input, the command gets EOF and exits 0.
    drop(w.join().unwrap());
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(c.wait().unwrap().code(), Some(0));
}

#[test]
fn stdout_as_regular_file_with_o_append_falls_back_to_write() {
    let f = std::env::temp_dir().join(format!("qb-relay-append-{}", std::process::id()));
    std::fs::write(&f, b"head:").unwrap();
    let data = pattern(15, 1_500_001);
    let out = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    let mut c = relay_cmd(&["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out))
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    i.write_all(&data).unwrap();
    drop(i);
    assert_eq!(c.wait().unwrap().code(), Some(0));
    let got = std::fs::read(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    assert_eq!(&got[..5], b"head:");
    assert!(got[5..] == data[..]);
}

// ---- EOF orders (AF_UNIX socketpairs on fd 0/1, as qrexec gives) ----

#[test]
fn eof_order_stdin_first_then_output_after_it() {
    let (mut child, to, from) =
        relay_on_sockets(&["--", "sh", "-c", "wc -c; sleep 0.2; echo tail"]);
    send_gen(&to, 3, 500_000, 4096).unwrap();
    to.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    (&from).read_to_string(&mut out).unwrap();
    assert_eq!(out, "500000\ntail\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn eof_order_output_first_while_stdin_still_flows() {
    // The command closes its stdout early and keeps reading: our stdout
    // must see EOF at once (shutdown), while stdin goes on flowing.
    let (mut child, mut to, from) = relay_on_sockets(&[
        "--",
        "sh",
        "-c",
        "echo early; exec >&-; cat >/dev/null; exit 4",
    ]);
    to.write_all(&pattern(1, 100_000)).unwrap();
    let mut out = Vec::new();
    (&from).read_to_end(&mut out).unwrap(); // EOF arrives before stdin ends
    assert_eq!(out, b"early\n");
    to.write_all(&pattern(2, 300_000)).unwrap();
    to.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(4));
}

#[test]
fn eof_order_child_exits_without_reading_stdin() {
    // stdin stays open and idle: the relay must not wait for it.
    let (mut child, to, from) = relay_on_sockets(&["--", "sh", "-c", "echo bye; exit 5"]);
    let t = Instant::now();
    let mut out = Vec::new();
    (&from).read_to_end(&mut out).unwrap();
    assert_eq!(out, b"bye\n");
    assert_eq!(child.wait().unwrap().code(), Some(5));
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(to);
}

#[test]
fn eof_order_our_reader_goes_away_first() {
    // Nobody reads our stdout any more: the command is told (SIGPIPE on its
    // next write) and its status is ours; stdin stays open meanwhile.
    let (mut child, to, from) = relay_on_sockets(&["--", "yes"]);
    let mut buf = [0u8; 4096];
    (&from).read_exact(&mut buf).unwrap();
    drop(from);
    assert_eq!(child.wait().unwrap().code(), Some(128 + 13));
    drop(to);
}

#[test]
fn eof_order_both_sides_end_together() {
    let (mut child, to, from) = relay_on_sockets(&["--", "cat"]);
    let (s, g) = pump(to, from, 5, 3 << 20, 65536);
    assert_eq!(s, g);
    assert!(child.wait().unwrap().success());
}

#[test]
fn child_writes_a_lot_after_stdin_eof() {
    let (mut child, to, from) = relay_on_sockets(&[
        "--",
        "sh",
        "-c",
        "cat >/dev/null; sleep 0.7; head -c 3000000 /dev/zero",
    ]);
    to.shutdown(std::net::Shutdown::Write).unwrap();
    let got = recv_sum(&from).unwrap();
    assert_eq!(got, Sum::of(&vec![0u8; 3_000_000]));
    assert!(child.wait().unwrap().success());
    drop(to);
}

#[test]
fn borrowed_fd_flags_are_restored_on_a_shared_terminal() {
    // fd 0 and fd 1 on one pty (as from an interactive shell): O_NONBLOCK
    // must be off again when the relay exits.
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let pty = open_pty();
    let slave = pty.slave;
    let out = Command::new(RELAY)
        .args(["--", "true"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(0));
    let fl = OFlag::from_bits_truncate(fcntl(slave.as_fd(), FcntlArg::F_GETFL).unwrap());
    assert!(!fl.contains(OFlag::O_NONBLOCK));
    drop(pty.master);
}
