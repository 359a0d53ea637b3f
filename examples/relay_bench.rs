//! Bench-only helper for tests/bench/relay (built with `cargo build
//! --release --example relay_bench`; never installed).
//!
//! Far ends of the programs under test (their children):
//!   relay_bench sink N       read stdin to EOF (splice to /dev/null when
//!                            stdin is a pipe), exit 3 unless N bytes came
//!   relay_bench gen N        write N bytes to stdout (sendfile from a 1 MiB
//!                            pattern file: page references into a pipe)
//!   relay_bench sinkgen N    both at once, exit 3 unless N bytes came in
//!   relay_bench echo         write back whatever comes in
//!   relay_bench sleepfloor -- CMD... | --connect SOCK
//!                            the sleeping floor: a thread per direction
//!                            blocked in splice(2) (see `sleep_floor`)
//! The harness plays the program that starts the relay (qrexec, or borg):
//!   relay_bench matrix --relay PATH [--socat PATH] [--floor DIR] [--reps R]
//!                      [--bytes N] [--both-bytes N] [--rtt-iters K]
//!                      [--only TEXT]
//! gives the command under test fd 0/1 of each kind the chain produces
//! (AF_UNIX socketpairs, default 64 KiB pipes, 1 MiB pipes), feeds and
//! drains them the way the far end would (sendfile into a pipe, splice out of
//! one; write/read 1 MiB on a socket), and measures the command's own wall
//! time, CPU time (its /proc stat before it is reaped, children excluded) and
//! peak RSS (VmHWM, sampled). Commands compared side by side, order rotated
//! every repetition: `qubes-relay`, `socat` (defaults), the sleeping floor,
//! no relay at all (bare: the far end on the harness's own pipe or
//! socketpair) and, when --floor names a folder with a built `splicerelay`, that minimal
//! C splice relay (which spins while idle). Ends with a table of each row
//! against the goals of issue 11 (ok/MISS).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::sendfile::sendfile;
use nix::sys::stat::{fstat, SFlag};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{pipe2, Pid};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
const PAT: usize = 1 << 20;

fn pattern_buf() -> Vec<u8> {
    (0..PAT)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn is_pipe(fd: BorrowedFd<'_>) -> bool {
    fstat(fd)
        .map(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO)
        .unwrap_or(false)
}

/// A 1 MiB pattern file in tmpfs (unlinked at once) for sendfile.
fn pattern_file() -> File {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let p = dir.join(format!("relay_bench.{}.pat", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .expect("create the pattern file");
    let _ = std::fs::remove_file(&p);
    f.write_all(&pattern_buf()).unwrap();
    f
}

/// Write n bytes to fd by sendfile from a tmpfs file: page references,
/// not copies, into a pipe and (Linux 6.5+, MSG_SPLICE_PAGES) into an
/// AF_UNIX socket, so that the far ends cost little and the hop in the
/// middle is what is measured; write(2) where sendfile is refused.
fn pump(fd: BorrowedFd<'_>, n: u64) {
    let mut left = n;
    let pat = pattern_file();
    while left > 0 {
        let mut off = 0i64;
        let k = (PAT as u64).min(left) as usize;
        while (off as usize) < k {
            let want = k - off as usize;
            match sendfile(fd, &pat, Some(&mut off), want) {
                Ok(0) => panic!("pump: sendfile wrote nothing"),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EINVAL) => return write_out(fd, left),
                Err(e) => panic!("pump: {e}"),
            }
        }
        left -= k as u64;
    }
}

fn write_out(fd: BorrowedFd<'_>, n: u64) {
    let buf = pattern_buf();
    let mut w = File::from(fd.try_clone_to_owned().unwrap());
    let mut left = n;
    while left > 0 {
        let k = (buf.len() as u64).min(left) as usize;
        w.write_all(&buf[..k]).unwrap();
        left -= k as u64;
    }
}

/// Read fd to EOF without copying: splice to /dev/null (a socket through a
/// 1 MiB pipe of ours); read(2) where splice is refused. Returns the count.
fn drain(fd: BorrowedFd<'_>) -> u64 {
    let null = File::options().write(true).open("/dev/null").unwrap();
    let mut total = 0u64;
    let sp = |from: BorrowedFd<'_>, to: BorrowedFd<'_>, n: usize| loop {
        match splice(from, None, to, None, n, SpliceFFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r,
        }
    };
    if is_pipe(fd) {
        loop {
            match sp(fd, null.as_fd(), 1 << 20) {
                Ok(0) => return total,
                Ok(n) => total += n as u64,
                Err(e) => panic!("drain: {e}"),
            }
        }
    }
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let cap = fcntl(&w, FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap_or(65536) as usize;
    loop {
        match sp(fd, w.as_fd(), cap) {
            Ok(0) => return total,
            Ok(n) => {
                let mut left = n;
                while left > 0 {
                    left -= sp(r.as_fd(), null.as_fd(), left).expect("drain: splice out");
                }
                total += n as u64;
            }
            Err(nix::errno::Errno::EINVAL) if total == 0 => return read_all(fd),
            Err(e) => panic!("drain: {e}"),
        }
    }
}

fn read_all(fd: BorrowedFd<'_>) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut r = File::from(fd.try_clone_to_owned().unwrap());
    loop {
        match r.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("drain: {e}"),
        }
    }
}

fn echo(i: BorrowedFd<'_>, o: BorrowedFd<'_>) {
    let mut buf = vec![0u8; 65536];
    let mut i = File::from(i.try_clone_to_owned().unwrap());
    let mut o = File::from(o.try_clone_to_owned().unwrap());
    loop {
        match i.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => o.write_all(&buf[..n]).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("echo: {e}"),
        }
    }
}

fn arg_u64(args: &[String], i: usize) -> u64 {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .expect("a byte count")
}

/// Our only reference to stdout (fd 1 is pointed at /dev/null), so that
/// dropping it is EOF for the reader.
fn take_stdout() -> OwnedFd {
    let out = std::io::stdout().as_fd().try_clone_to_owned().unwrap();
    let null =
        nix::fcntl::open("/dev/null", OFlag::O_WRONLY, nix::sys::stat::Mode::empty()).unwrap();
    nix::unistd::dup2_stdout(&null).unwrap();
    out
}

// ---------------- the sleeping floor ----------------

/// One direction of the sleeping floor: blocking splice(2) from src to dst
/// until EOF (through a 1 MiB pipe when neither end is a pipe), then EOF to
/// dst's reader (shutdown on a socket; the fds are dropped on return).
fn splice_dir(src: OwnedFd, dst: OwnedFd) {
    let big = |fd: BorrowedFd<'_>| {
        if is_pipe(fd) {
            let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(1 << 20));
        }
    };
    big(src.as_fd());
    big(dst.as_fd());
    let sp = |from: BorrowedFd<'_>, to: BorrowedFd<'_>, n: usize| loop {
        match splice(from, None, to, None, n, SpliceFFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r,
        }
    };
    // A blocking splice out of a socket sleeps holding the destination
    // pipe's lock (the pipe's reader then waits for the next message too):
    // from a socket, sleep in poll(2) instead, then splice without waiting.
    let from_socket = !is_pipe(src.as_fd());
    let sp_src = |to: BorrowedFd<'_>, n: usize| {
        if !from_socket {
            return sp(src.as_fd(), to, n);
        }
        loop {
            let mut p = [PollFd::new(src.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut p, PollTimeout::NONE);
            match splice(
                src.as_fd(),
                None,
                to,
                None,
                n,
                SpliceFFlags::SPLICE_F_NONBLOCK,
            ) {
                Err(nix::errno::Errno::EAGAIN) => {
                    // src was readable: the pipe is full.
                    let mut p = [PollFd::new(to, PollFlags::POLLOUT)];
                    let _ = poll(&mut p, PollTimeout::NONE);
                }
                Err(nix::errno::Errno::EINTR) => {}
                r => return r,
            }
        }
    };
    if is_pipe(src.as_fd()) || is_pipe(dst.as_fd()) {
        while let Ok(n) = sp_src(dst.as_fd(), 1 << 20) {
            if n == 0 {
                break;
            }
        }
    } else {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let cap = fcntl(&w, FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap_or(65536) as usize;
        'outer: while let Ok(n) = sp_src(w.as_fd(), cap) {
            if n == 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                match sp(r.as_fd(), dst.as_fd(), left) {
                    Ok(k) if k > 0 => left -= k,
                    _ => break 'outer,
                }
            }
        }
    }
    shut_wr(dst.as_fd());
}

/// `relay_bench sleepfloor -- CMD...` and `relay_bench sleepfloor --connect
/// SOCK`: a relay that sleeps while idle, at the least cost the kernel
/// allows: one thread per direction, each blocked in splice(2) (from a
/// socket: in poll(2), then one splice), 1 MiB pipes. One wake-up and one
/// or two system calls per message and hop: the fair yardstick for a relay that must not spin (the
/// C floor's poll loop returns at once whenever a destination is writable,
/// so it spins while it waits for data). Exits with CMD's status.
fn sleep_floor(args: &[String]) -> i32 {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let null =
        nix::fcntl::open("/dev/null", OFlag::O_RDONLY, nix::sys::stat::Mode::empty()).unwrap();
    nix::unistd::dup2_stdin(&null).unwrap();
    let stdout = take_stdout();
    match args.first().map(String::as_str) {
        Some("--connect") => {
            let sock = OwnedFd::from(UnixStream::connect(&args[1]).expect("connect"));
            let sock2 = sock.try_clone().unwrap();
            let up = thread::spawn(move || splice_dir(stdin, sock));
            splice_dir(sock2, stdout);
            up.join().unwrap();
            0
        }
        Some("--") => {
            let mut child = Command::new(&args[1])
                .args(&args[2..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start CMD");
            let cin = OwnedFd::from(child.stdin.take().unwrap());
            let cout = OwnedFd::from(child.stdout.take().unwrap());
            // Not joined: after CMD's exit nothing is left to deliver.
            thread::spawn(move || splice_dir(stdin, cin));
            splice_dir(cout, stdout);
            let st = child.wait().unwrap();
            st.code().unwrap_or(128)
        }
        _ => {
            eprintln!("usage: relay_bench sleepfloor -- CMD... | --connect SOCK");
            2
        }
    }
}

// ---------------- harness ----------------

/// What fd 0/1 of the command under test are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sock,
    Pipe,
    BigPipe,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sock => "socketpair",
            Kind::Pipe => "pipe 64 KiB",
            Kind::BigPipe => "pipe 1 MiB",
        }
    }
}

/// (our end, the command's end). `to_cmd`: the command reads its end.
fn stdio_end(kind: Kind, to_cmd: bool) -> (OwnedFd, OwnedFd) {
    match kind {
        Kind::Sock => {
            let (a, b) = UnixStream::pair().unwrap();
            (OwnedFd::from(a), OwnedFd::from(b))
        }
        Kind::Pipe | Kind::BigPipe => {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
            if kind == Kind::BigPipe {
                fcntl(&w, FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
            }
            if to_cmd {
                (w, r)
            } else {
                (r, w)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Load {
    Up(u64),
    Down(u64),
    Both(u64),
    Rtt(usize),
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Up(_) => "upload",
            Load::Down(_) => "download",
            Load::Both(_) => "both ways",
            Load::Rtt(_) => "64 B round trip",
        }
    }
    /// Bytes in, bytes out.
    fn bytes(self) -> (u64, u64) {
        match self {
            Load::Up(n) => (n, 0),
            Load::Down(n) => (0, n),
            Load::Both(n) => (n, n),
            Load::Rtt(_) => (0, 0),
        }
    }
    /// The far end's role, as `relay_bench` arguments.
    fn role(self, me: &str) -> Vec<String> {
        match self {
            Load::Up(n) => vec![me.into(), "sink".into(), n.to_string()],
            Load::Down(n) => vec![me.into(), "gen".into(), n.to_string()],
            Load::Both(n) => vec![me.into(), "sinkgen".into(), n.to_string()],
            Load::Rtt(_) => vec![me.into(), "echo".into()],
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Sample {
    secs: f64,
    cpu: f64,
    peak_kib: u64,
    rtt_us: f64,
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// utime+stime of the process (all its threads), seconds.
fn proc_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / clk_tck()
}

/// On-CPU time of a single-threaded process in ns resolution (schedstat's
/// first field), seconds; readable until it is reaped.
fn proc_cpu_ns(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// EOF to a socket's reader even while a dup of it stays open (a pipe's
/// reader gets it when the last writer closes: ENOTSOCK ignored).
fn shut_wr(fd: BorrowedFd<'_>) {
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        nix::sys::socket::Shutdown::Write,
    );
}

/// Drive `load` through (to, from): our ends of the command's fd 0 and 1.
fn drive(to: OwnedFd, from: OwnedFd, load: Load) -> f64 {
    match load {
        Load::Rtt(iters) => {
            let mut to = File::from(to);
            let mut from = File::from(from);
            let msg = [0x5au8; 64];
            let mut back = [0u8; 64];
            let mut t = Vec::with_capacity(iters);
            for i in 0..iters + 1000 {
                let t0 = Instant::now();
                to.write_all(&msg).unwrap();
                from.read_exact(&mut back).unwrap();
                if i >= 1000 {
                    t.push(t0.elapsed().as_secs_f64());
                }
            }
            shut_wr(to.as_fd());
            drop(to);
            let mut rest = Vec::new();
            from.read_to_end(&mut rest).unwrap();
            median(t) * 1e6
        }
        _ => {
            let (up, down) = load.bytes();
            let w = thread::spawn(move || {
                pump(to.as_fd(), up);
                shut_wr(to.as_fd());
                drop(to);
            });
            let got = drain(from.as_fd());
            w.join().unwrap();
            assert_eq!(got, down, "bytes back");
            0.0
        }
    }
}

/// One run of `cmd` (which exits when done) with fd 0/1 of `kind`.
fn run(cmd: &[String], kind: Kind, load: Load) -> Sample {
    let (to, cmd_in) = stdio_end(kind, true);
    let (from, cmd_out) = stdio_end(kind, false);
    let start = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::from(cmd_in))
        .stdout(Stdio::from(cmd_out))
        .spawn()
        .expect("start the command under test");
    let pid = child.id();
    let (done, sampler) = sample_hwm(pid);
    let rtt_us = drive(to, from, load);
    // Exited but not reaped: its own CPU time is still in /proc.
    waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cpu = proc_cpu_ns(pid).unwrap_or_else(|| proc_cpu(pid));
    done.store(true, Ordering::Relaxed);
    let peak_kib = sampler.join().unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{cmd:?} exited {st:?}");
    Sample {
        secs,
        cpu,
        peak_kib,
        rtt_us,
    }
}

fn sample_hwm(pid: u32) -> (Arc<AtomicBool>, thread::JoinHandle<u64>) {
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let h = thread::spawn(move || {
        let mut peak = 0;
        while !d2.load(Ordering::Relaxed) {
            if let Some(k) = vm_hwm(pid) {
                peak = peak.max(k);
            }
            thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    (done, h)
}

/// `--connect` mode: the harness listens on a UNIX socket and plays the far
/// end on the accepted connection; `cmd` gets fd 0/1 of `kind`.
fn run_connect(cmd: &[String], sock: &Path, kind: Kind, load: Load) -> Sample {
    let _ = std::fs::remove_file(sock);
    let l = UnixListener::bind(sock).unwrap();
    let server = thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let c = OwnedFd::from(c);
        let (up, down) = load.bytes();
        match load {
            Load::Rtt(_) => echo(c.as_fd(), c.as_fd()),
            _ => {
                let c2 = c.try_clone().unwrap();
                let g = thread::spawn(move || {
                    pump(c2.as_fd(), down);
                    shut_wr(c2.as_fd());
                });
                assert_eq!(drain(c.as_fd()), up, "bytes at the socket");
                g.join().unwrap();
            }
        }
    });
    let s = run(cmd, kind, load);
    server.join().unwrap();
    let _ = std::fs::remove_file(sock);
    s
}

/// `--listen` mode: `cmd` is a server; one connection is timed from
/// connect to its EOF; CPU is the server's own (all threads) delta.
fn run_listen(cmd: &[String], sock: &Path, load: Load) -> Sample {
    let _ = std::fs::remove_file(sock);
    let mut server: Child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .spawn()
        .expect("start the listener");
    let pid = server.id();
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no socket");
        thread::sleep(Duration::from_millis(2));
    }
    let cpu0 = proc_cpu(pid);
    let (done, sampler) = sample_hwm(pid);
    let start = Instant::now();
    let c = OwnedFd::from(UnixStream::connect(sock).unwrap());
    let rtt_us = drive(c.try_clone().unwrap(), c, load);
    let secs = start.elapsed().as_secs_f64();
    // Let the connection's thread finish its accounting.
    thread::sleep(Duration::from_millis(20));
    let cpu = proc_cpu(pid) - cpu0;
    done.store(true, Ordering::Relaxed);
    let peak_kib = sampler.join().unwrap();
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
    let _ = server.wait();
    let _ = std::fs::remove_file(sock);
    Sample {
        secs,
        cpu,
        peak_kib,
        rtt_us,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn minmax(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    (lo, hi)
}

/// The commands compared, for one case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    /// No relay at all: the far end itself on the harness's fd 0/1 (a bare pipe or socketpair).
    Bare,
    Floor,
    Sleep,
    Socat,
    Relay,
}

/// How the command under test is hooked up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `CMD -- far-end`: fd 0/1 of `Kind`, pipes to the child.
    Exec(Kind),
    /// `--connect SOCK`, fd 0/1 of `Kind`.
    Connect(Kind),
    /// `--listen SOCK -- far-end`.
    Listen,
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Exec(k) => format!("`-- CMD`, fd 0/1 {}, pipes to CMD", k.name()),
            Mode::Connect(k) => format!("`--connect`, fd 0/1 {}", k.name()),
            Mode::Listen => "`--listen`, one connection, pipes to CMD".into(),
        }
    }
}

struct Case {
    mode: Mode,
    load: Load,
    /// The chain's real case (qubes-ssh-client under borg).
    real: bool,
}

#[derive(Default, Clone)]
struct Res {
    secs: Vec<f64>,
    cpu: Vec<f64>,
    rtt: Vec<f64>,
    peak: u64,
}

struct Cfg {
    me: String,
    relay: String,
    socat: Option<String>,
    floor: Option<String>,
    sock: PathBuf,
}

impl Cfg {
    fn cmd(&self, who: Who, mode: Mode, load: Load) -> Option<Vec<String>> {
        let role = load.role(&self.me);
        let sock = self.sock.to_string_lossy().into_owned();
        match (who, mode) {
            (Who::Bare, Mode::Exec(_)) => Some(role),
            (Who::Bare, _) => None,
            (Who::Relay, Mode::Exec(_)) => {
                Some([vec![self.relay.clone(), "--".into()], role].concat())
            }
            (Who::Relay, Mode::Connect(_)) => {
                Some(vec![self.relay.clone(), "--connect".into(), sock])
            }
            (Who::Relay, Mode::Listen) => Some(
                [
                    vec![self.relay.clone(), "--listen".into(), sock, "--".into()],
                    role,
                ]
                .concat(),
            ),
            (Who::Socat, m) => {
                let s = self.socat.clone()?;
                Some(match m {
                    Mode::Exec(_) => vec![s, "-".into(), format!("EXEC:{}", role.join(" "))],
                    Mode::Connect(_) => vec![s, "-".into(), format!("UNIX-CONNECT:{sock}")],
                    Mode::Listen => vec![
                        s,
                        // One connection, served in this process (with
                        // fork its CPU time would be a child's).
                        format!("UNIX-LISTEN:{sock}"),
                        format!("EXEC:{}", role.join(" ")),
                    ],
                })
            }
            (Who::Floor, Mode::Exec(_)) => {
                let f = self.floor.clone()?;
                Some([vec![format!("{f}/splicerelay")], role].concat())
            }
            (Who::Floor, _) => None,
            (Who::Sleep, Mode::Exec(_)) => Some(
                [
                    vec![self.me.clone(), "sleepfloor".into(), "--".into()],
                    role,
                ]
                .concat(),
            ),
            (Who::Sleep, Mode::Connect(_)) => Some(vec![
                self.me.clone(),
                "sleepfloor".into(),
                "--connect".into(),
                sock,
            ]),
            (Who::Sleep, Mode::Listen) => None,
        }
    }

    fn once(&self, cmd: &[String], mode: Mode, load: Load) -> Sample {
        match mode {
            Mode::Exec(k) => run(cmd, k, load),
            Mode::Connect(k) => run_connect(cmd, &self.sock, k, load),
            Mode::Listen => run_listen(cmd, &self.sock, load),
        }
    }
}

fn matrix(args: &[String]) {
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |k: &str, d: u64| get(k).and_then(|s| s.parse().ok()).unwrap_or(d);
    let reps = num("--reps", 3) as usize;
    let bytes = num("--bytes", 2 << 30);
    let both = num("--both-bytes", 1 << 30);
    let iters = num("--rtt-iters", 20_000) as usize;
    let cfg = Cfg {
        me: std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        relay: get("--relay").expect("--relay PATH"),
        socat: get("--socat"),
        floor: get("--floor"),
        sock: std::env::temp_dir().join(format!("relay_bench.{}.sock", std::process::id())),
    };
    let mut cases = Vec::new();
    for kind in [Kind::Pipe, Kind::BigPipe, Kind::Sock] {
        for load in [Load::Up(bytes), Load::Down(bytes), Load::Both(both)] {
            cases.push(Case {
                mode: Mode::Exec(kind),
                load,
                real: kind == Kind::Pipe,
            });
        }
    }
    for mode in [
        Mode::Connect(Kind::Sock),
        Mode::Connect(Kind::Pipe),
        Mode::Listen,
    ] {
        for load in [Load::Up(bytes), Load::Down(bytes)] {
            cases.push(Case {
                mode,
                load,
                real: false,
            });
        }
    }
    for mode in [Mode::Exec(Kind::Pipe), Mode::Exec(Kind::Sock), Mode::Listen] {
        cases.push(Case {
            mode,
            load: Load::Rtt(iters),
            real: mode == Mode::Exec(Kind::Pipe),
        });
    }
    // --only TEXT: keep the cases whose name or load contains TEXT.
    if let Some(only) = get("--only") {
        cases.retain(|c| format!("{} {}", c.mode.name(), c.load.name()).contains(&only));
    }
    let whos = [Who::Bare, Who::Floor, Who::Sleep, Who::Socat, Who::Relay];
    println!("Commands (far end = this harness's roles; SOCK = a temporary UNIX socket):");
    for c in &cases {
        for w in whos {
            if let Some(cmd) = cfg.cmd(w, c.mode, c.load) {
                println!("  {} / {}: {}", c.mode.name(), c.load.name(), cmd.join(" "));
            }
        }
    }
    let mut res = vec![
        [
            Res::default(),
            Res::default(),
            Res::default(),
            Res::default(),
            Res::default()
        ];
        cases.len()
    ];
    for rep in 0..reps {
        for (ci, c) in cases.iter().enumerate() {
            // Rotate the order every repetition: noise hits all alike.
            for k in 0..whos.len() {
                let wi = (k + rep + ci) % whos.len();
                let Some(cmd) = cfg.cmd(whos[wi], c.mode, c.load) else {
                    continue;
                };
                let s = cfg.once(&cmd, c.mode, c.load);
                let r = &mut res[ci][wi];
                r.secs.push(s.secs);
                r.cpu.push(s.cpu);
                r.rtt.push(s.rtt_us);
                r.peak = r.peak.max(s.peak_kib);
            }
        }
        eprintln!("relay_bench: repetition {} of {reps} done", rep + 1);
    }
    report(&cases, &res, reps, bytes, both, iters, cfg.floor.is_some());
}

/// Goals of issue 11 (throughput rows; round-trip rows).
const GOAL_FLOOR_TIME: f64 = 1.25;
const GOAL_SOCAT_X: f64 = 8.0;
const GOAL_CPU_OF_SOCAT: f64 = 1.0 / 8.0;
const GOAL_RTT_FLOOR: f64 = 1.5;

/// One goal of a row: (what, ratio, met?); `None` for information only.
type Check = (String, Option<f64>, Option<bool>);

fn report(
    cases: &[Case],
    res: &[[Res; 5]],
    reps: usize,
    bytes: u64,
    both: u64,
    iters: usize,
    floor: bool,
) {
    let m = |v: &Vec<f64>| median(v.clone());
    let secs = |r: &Res| {
        if r.secs.is_empty() {
            "n/a".to_string()
        } else {
            let (lo, hi) = minmax(&r.secs);
            format!("{:.2} ({lo:.2}–{hi:.2})", m(&r.secs))
        }
    };
    let q = |a: f64, b: f64| {
        if a.is_finite() && b.is_finite() && b > 0.0 {
            Some(a / b)
        } else {
            None
        }
    };
    let show = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{x:.2}"));
    let real = |c: &Case| {
        if c.real {
            " **(the chain's real case)**"
        } else {
            ""
        }
    };
    println!();
    println!(
        "Upload/download {:.1} GiB, both ways {:.1} GiB each way at once; {reps} repetitions, median (min–max); order rotated each repetition.",
        bytes as f64 / GIB,
        both as f64 / GIB
    );
    if !floor {
        println!("C floor (splicerelay) not available: its column is n/a.");
    }
    println!("Bare: no relay, the far end itself on the harness's fd 0/1 (one pipe or socketpair, for information). C floor: splicerelay (polls for src readable AND dst writable, so it spins while idle). Sleeping floor: `relay_bench sleepfloor` (a thread per direction blocked in splice(2); no poll, no spinning).");
    println!();
    println!("| case | load | bare s | C floor s | sleeping floor s | socat s | qubes-relay s | relay MiB/s | relay / C floor time | relay / sleeping floor time | relay throughput / socat's | CPU s/GiB relay (socat) | relay CPU / socat's | relay peak RSS KiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // (row name, [checks: (goal text, value, ok)])
    let mut verdicts: Vec<(String, Vec<Check>)> = Vec::new();
    for (c, r) in cases.iter().zip(res) {
        if let Load::Rtt(_) = c.load {
            continue;
        }
        let (up, down) = c.load.bytes();
        let gib = (up + down) as f64 / GIB;
        let [b, f, z, s, qr] = r;
        let cpu_gib = |x: &Res| m(&x.cpu) / gib;
        let vs_floor = q(m(&qr.secs), m(&f.secs));
        let vs_sleep = q(m(&qr.secs), m(&z.secs));
        let x_socat = q(m(&s.secs), m(&qr.secs));
        let cpu_socat = if s.cpu.is_empty() {
            None
        } else {
            q(cpu_gib(qr), cpu_gib(s))
        };
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.3} ({}) | {} | {} |",
            c.mode.name(),
            real(c),
            c.load.name(),
            secs(b),
            secs(f),
            secs(z),
            secs(s),
            secs(qr),
            up.max(down) as f64 / MIB / m(&qr.secs),
            show(vs_floor),
            show(vs_sleep),
            show(x_socat),
            cpu_gib(qr),
            if s.cpu.is_empty() {
                "n/a".into()
            } else {
                format!("{:.3}", cpu_gib(s))
            },
            show(cpu_socat),
            qr.peak
        );
        verdicts.push((
            format!("{}{} / {}", c.mode.name(), real(c), c.load.name()),
            vec![
                (
                    format!("time ≤ {GOAL_FLOOR_TIME}x C floor's"),
                    vs_floor,
                    vs_floor.map(|v| v <= GOAL_FLOOR_TIME),
                ),
                (
                    format!("throughput ≥ {GOAL_SOCAT_X}x socat's"),
                    x_socat,
                    x_socat.map(|v| v >= GOAL_SOCAT_X),
                ),
                (
                    "CPU/GiB ≤ 1/8 socat's".into(),
                    cpu_socat,
                    cpu_socat.map(|v| v <= GOAL_CPU_OF_SOCAT),
                ),
                ("(time vs sleeping floor)".into(), vs_sleep, None),
            ],
        ));
    }
    println!();
    println!(
        "64-byte round trips x{iters} per run (median of each run's p50, min–max over runs), µs:"
    );
    println!();
    println!("| case | bare | C floor | sleeping floor | socat | qubes-relay | relay / socat | relay / C floor | relay / sleeping floor |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let us = |r: &Res| {
        if r.rtt.is_empty() {
            "n/a".to_string()
        } else {
            let (lo, hi) = minmax(&r.rtt);
            format!("{:.1} ({lo:.1}–{hi:.1})", m(&r.rtt))
        }
    };
    for (c, r) in cases.iter().zip(res) {
        if let Load::Rtt(_) = c.load {
            let [b, f, z, s, qr] = r;
            let vs_socat = q(m(&qr.rtt), m(&s.rtt));
            let vs_floor = q(m(&qr.rtt), m(&f.rtt));
            let vs_sleep = q(m(&qr.rtt), m(&z.rtt));
            println!(
                "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.mode.name(),
                real(c),
                us(b),
                us(f),
                us(z),
                us(s),
                us(qr),
                show(vs_socat),
                show(vs_floor),
                show(vs_sleep)
            );
            verdicts.push((
                format!("{}{} / 64 B round trip", c.mode.name(), real(c)),
                vec![
                    ("≤ socat's".into(), vs_socat, vs_socat.map(|v| v <= 1.0)),
                    (
                        format!("≤ {GOAL_RTT_FLOOR}x C floor's"),
                        vs_floor,
                        vs_floor.map(|v| v <= GOAL_RTT_FLOOR),
                    ),
                    (
                        format!("(≤ {GOAL_RTT_FLOOR}x sleeping floor's)"),
                        vs_sleep,
                        None,
                    ),
                ],
            ));
        }
    }
    println!();
    println!("Against the goals of issue 11 (ratios of medians; n/a: no such command for this row; parenthesised: for information, not a goal):");
    println!();
    println!("| row | goal: ratio verdict ... | row verdict |");
    println!("|---|---|---|");
    let (mut ok, mut miss) = (0, 0);
    for (row, checks) in &verdicts {
        let mut cells = Vec::new();
        let mut row_ok = true;
        for (goal, v, verdict) in checks {
            let word = match verdict {
                Some(true) => {
                    ok += 1;
                    "ok"
                }
                Some(false) => {
                    miss += 1;
                    row_ok = false;
                    "MISS"
                }
                None => "",
            };
            cells.push(
                format!("{goal}: {} {word}", show(*v))
                    .trim_end()
                    .to_string(),
            );
        }
        println!(
            "| {row} | {} | {} |",
            cells.join("; "),
            if row_ok { "ok" } else { "MISS" }
        );
    }
    println!();
    println!("Goals: {ok} checks ok, {miss} missed.");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    match args.first().map(String::as_str) {
        Some("sink") => {
            let want = arg_u64(&args, 1);
            let got = drain(stdin.as_fd());
            if got != want {
                eprintln!("relay_bench sink: got {got} bytes, wanted {want}");
                std::process::exit(3);
            }
        }
        Some("gen") => {
            let out = take_stdout();
            pump(out.as_fd(), arg_u64(&args, 1));
        }
        Some("sinkgen") => {
            let n = arg_u64(&args, 1);
            let t = thread::spawn(move || drain(stdin.as_fd()));
            let out = take_stdout();
            pump(out.as_fd(), n);
            drop(out);
            let got = t.join().unwrap();
            if got != n {
                eprintln!("relay_bench sinkgen: got {got} bytes, wanted {n}");
                std::process::exit(3);
            }
        }
        Some("echo") => echo(stdin.as_fd(), std::io::stdout().as_fd()),
        Some("matrix") => matrix(&args[1..]),
        Some("sleepfloor") => std::process::exit(sleep_floor(&args[1..])),
        _ => {
            eprintln!("usage: relay_bench sink N | gen N | sinkgen N | echo | matrix --relay PATH [--socat PATH] [--floor DIR] [--reps R] [--bytes N] [--both-bytes N] [--rtt-iters K]");
            std::process::exit(2);
        }
    }
}
