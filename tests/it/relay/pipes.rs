//! qubes-relay with pipes on fd 0/1, as borg's subprocess gives them to
//! qubes-ssh-client (64 KiB, the default size): the pipes are grown, bytes
//! arrive exact both ways at once, and a blocked or idle relay sleeps.
//! Self-contained.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

/// `qubes-relay ARGS` with default-size pipes on fd 0 and fd 1; returns the
/// child, the write end of its stdin and the read end of its stdout.
fn relay_on_pipes(args: &[&str]) -> (Child, File, File) {
    let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    assert_eq!(pipe_size(&in_w), 65536, "a fresh pipe has the default size");
    let child = Command::new(env!("CARGO_BIN_EXE_qubes-relay"))
        .args(args)
        .stdin(Stdio::from(in_r))
        .stdout(Stdio::from(out_w))
        .spawn()
        .unwrap();
    (child, File::from(in_w), File::from(out_r))
}

fn pipe_size(fd: &OwnedFd) -> i32 {
    fcntl(fd, FcntlArg::F_GETPIPE_SZ).unwrap()
}

/// utime+stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Deterministic bytes that differ at every offset of a 64 KiB window.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn default_size_pipes_on_stdin_and_stdout_are_grown_to_1_mib() {
    let (mut child, mut to, mut from) = relay_on_pipes(&["--", "cat"]);
    // One line through proves the relay is set up (it grows them first).
    to.write_all(b"ping\n").unwrap();
    let mut got = [0u8; 5];
    from.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping\n");
    let to_fd = OwnedFd::from(to.try_clone().unwrap());
    let from_fd = OwnedFd::from(from.try_clone().unwrap());
    assert_eq!(pipe_size(&to_fd), 1 << 20, "stdin pipe");
    assert_eq!(pipe_size(&from_fd), 1 << 20, "stdout pipe");
    drop((to, to_fd));
    let mut rest = Vec::new();
    from.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(child.wait().unwrap().success());
}

#[test]
fn both_ways_at_once_through_default_pipes_is_byte_exact() {
    let len = 48 << 20;
    let sent = data(len);
    let (mut child, mut to, mut from) = relay_on_pipes(&["--", "cat"]);
    let s2 = sent.clone();
    // Odd-sized writes, so chunks never line up with pipe buffers.
    let w = thread::spawn(move || {
        for c in s2.chunks(100_003) {
            to.write_all(c).unwrap();
        }
    });
    let mut got = Vec::with_capacity(len);
    from.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(got.len(), len);
    assert!(got == sent, "bytes differ");
}

#[test]
fn relay_blocked_on_a_full_stdout_pipe_sleeps() {
    let (mut child, mut to, mut from) = relay_on_pipes(&["--", "cat"]);
    let pid = child.id();
    let len = 32 << 20;
    let w = thread::spawn(move || {
        to.write_all(&data(len)).unwrap();
    });
    // Nobody reads stdout: every pipe on the way fills, the relay must
    // then wait in poll (not spin on EAGAIN).
    thread::sleep(Duration::from_millis(300));
    let t0 = cpu_ticks(pid);
    thread::sleep(Duration::from_millis(1000));
    let stalled = cpu_ticks(pid) - t0;
    let mut got = Vec::new();
    from.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(got.len(), len);
    assert!(stalled <= 3, "relay used {stalled} ticks while blocked");
}

#[test]
fn idle_relay_on_pipes_uses_no_cpu() {
    let (mut child, to, mut from) = relay_on_pipes(&["--", "cat"]);
    let pid = child.id();
    thread::sleep(Duration::from_millis(200));
    let t0 = cpu_ticks(pid);
    thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(pid) - t0;
    assert!(used <= 2, "idle relay used {used} ticks");
    drop(to);
    let mut rest = Vec::new();
    from.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(child.wait().unwrap().success());
}
