//! Robustness of qubes-relay: bounded memory with a slow reader, no CPU
//! while idle or blocked, dying of a signal with stdio flags restored.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// utime+stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = s.rsplit(')').next().unwrap();
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')': state is field 3; utime 14 and stime 15 => indices 11, 12.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Peak resident set (VmHWM) in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn slow_reader_backpressure_keeps_memory_bounded_and_cpu_idle() {
    let len: u64 = 256 << 20;
    let (mut child, to, from) = relay_on_sockets(&["--", "cat"]);
    let pid = child.id();
    let w = thread::spawn(move || {
        let s = send_gen(&to, 21, len, 1 << 20).unwrap();
        to.shutdown(std::net::Shutdown::Write).unwrap();
        s
    });
    // Read nothing for a while: every buffer on the way fills, the relay
    // must then sleep in poll (not spin) and hold no more memory.
    thread::sleep(Duration::from_millis(300));
    let t0 = cpu_ticks(pid);
    thread::sleep(Duration::from_millis(1000));
    let stalled_ticks = cpu_ticks(pid) - t0;
    // Then read slowly, in small bites, sampling the relay's peak RSS.
    let mut sum = Sum::default();
    let mut buf = vec![0u8; 7777];
    let mut peak = 0;
    let mut reads = 0u64;
    loop {
        let n = (&from).read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        reads += 1;
        if reads % 4096 == 0 {
            if let Some(k) = vm_hwm_kib(pid) {
                peak = peak.max(k);
            }
            if reads < 20_000 {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let sent = w.join().unwrap();
    assert_eq!(sent, sum);
    assert!(child.wait().unwrap().success());
    assert!(
        stalled_ticks <= 3,
        "relay used {stalled_ticks} ticks while blocked"
    );
    assert!(peak > 0 && peak < 4096, "peak RSS {peak} KiB");
    eprintln!("peak RSS {peak} KiB, {stalled_ticks} ticks while stalled");
}

#[test]
fn idle_relay_uses_no_cpu() {
    let (mut child, to, from) = relay_on_sockets(&["--", "cat"]);
    let pid = child.id();
    thread::sleep(Duration::from_millis(200));
    let t0 = cpu_ticks(pid);
    thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(pid) - t0;
    assert!(used <= 2, "idle relay used {used} ticks");
    drop(to);
    let mut rest = Vec::new();
    (&from).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(child.wait().unwrap().success());
}

#[test]
fn killed_relay_dies_of_the_signal_and_restores_terminal_flags() {
    use std::os::unix::process::ExitStatusExt;
    for (sig, n) in [("TERM", 15), ("INT", 2), ("HUP", 1)] {
        let pty = open_pty();
        let mut c = Command::new(RELAY)
            .args(["--", "cat"])
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .spawn()
            .unwrap();
        // Wait until the relay has made the terminal nonblocking.
        let t = Instant::now();
        while !OFlag::from_bits_truncate(fcntl(pty.slave.as_fd(), FcntlArg::F_GETFL).unwrap())
            .contains(OFlag::O_NONBLOCK)
        {
            assert!(t.elapsed() < Duration::from_secs(10));
            thread::sleep(Duration::from_millis(5));
        }
        signal(c.id(), sig);
        let st = c.wait().unwrap();
        assert_eq!(st.signal(), Some(n), "{sig}: {st:?}");
        let fl = OFlag::from_bits_truncate(fcntl(pty.slave.as_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(
            !fl.contains(OFlag::O_NONBLOCK),
            "{sig}: O_NONBLOCK left on the terminal"
        );
    }
}

#[test]
fn signal_while_waiting_for_the_command_still_kills_the_relay() {
    use std::os::unix::process::ExitStatusExt;
    // Both flows are over (the command closed stdin and stdout); the relay
    // waits for it to exit and must still answer SIGTERM.
    let mut c = Command::new(RELAY)
        .args(["--", "sh", "-c", "exec >&- <&-; sleep 5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    c.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    signal(c.id(), "TERM");
    let st = c.wait().unwrap();
    assert_eq!(st.signal(), Some(15));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn stop_and_continue_during_a_transfer_loses_nothing() {
    // socat once lost data when SIGSTOPped mid-transfer (docs/SOURCES.md, "Relay").
    let len: u64 = 64 << 20;
    let (mut child, to, from) = relay_on_sockets(&["--", "cat"]);
    let pid = child.id();
    let w = thread::spawn(move || {
        let s = send_gen(&to, 31, len, 100_003).unwrap();
        to.shutdown(std::net::Shutdown::Write).unwrap();
        s
    });
    let k = thread::spawn(move || {
        for _ in 0..10 {
            thread::sleep(Duration::from_millis(20));
            let _ = Command::new("kill")
                .args(["-s", "STOP", &pid.to_string()])
                .status();
            thread::sleep(Duration::from_millis(20));
            let _ = Command::new("kill")
                .args(["-s", "CONT", &pid.to_string()])
                .status();
        }
    });
    let got = recv_sum(&from).unwrap();
    k.join().unwrap();
    assert_eq!(w.join().unwrap(), got);
    assert!(child.wait().unwrap().success());
}

#[test]
fn refused_pipe_resize_is_tolerated() {
    use std::io::Write;
    // Shrinking below the bytes a pipe holds is refused (EBUSY); grow_pipe
    // then reports the size the pipe kept instead of failing.
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let before = qubes_borg::relay::grow_pipe(&w, 65536);
    let mut wf = std::fs::File::from(w);
    wf.write_all(&vec![7u8; 60_000]).unwrap();
    let after = qubes_borg::relay::grow_pipe(&wf, 4096);
    assert_eq!(after, before);
    drop(r);
}

#[test]
fn intermediate_pipe_mode_sleeps_while_both_ends_are_blocked() {
    // --connect: socket to socket, so each direction goes through the
    // relay's own pipe. The server neither reads nor writes for a while:
    // the relay's pipe and the sockets fill up, and the relay must then
    // sleep in poll (the pipe is non-empty, so it waits for dst only).
    use std::os::unix::net::UnixListener;
    let tmp = TempDir::new("relay-stall");
    let dir = tmp.path();
    let path = dir.join("s");
    let listener = UnixListener::bind(&path).unwrap();
    let (to, relay_in) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = Command::new(RELAY)
        .arg("--connect")
        .arg(&path)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(relay_in)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (server, _) = listener.accept().unwrap();
    let len: u64 = 32 << 20;
    let w = thread::spawn(move || {
        let s = send_gen(&to, 41, len, 65536).unwrap();
        to.shutdown(std::net::Shutdown::Write).unwrap();
        s
    });
    thread::sleep(Duration::from_millis(400));
    let pid = child.id();
    let t0 = cpu_ticks(pid);
    thread::sleep(Duration::from_millis(1000));
    let stalled = cpu_ticks(pid) - t0;
    let got = recv_sum(&server).unwrap();
    assert_eq!(w.join().unwrap(), got);
    drop(server);
    assert!(child.wait().unwrap().success());
    assert!(stalled <= 3, "relay used {stalled} ticks while blocked");
}
