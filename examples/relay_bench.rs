//! Bench-only helper for tests/bench/relay (built with `cargo build
//! --release --example relay_bench`; never installed).
//!
//! Roles of the programs under test's far ends:
//!   relay_bench sink N       read stdin to EOF (splice to /dev/null when
//!                            stdin is a pipe), exit 3 unless N bytes came
//!   relay_bench sinkgen N    sink stdin and write N bytes to stdout at once
//!   relay_bench echo         write back whatever comes in
//! The harness, which plays qrexec: gives the command under test AF_UNIX
//! socketpairs on fd 0 and fd 1, pushes/pulls the data, and measures the
//! command's own wall time, CPU time (its /proc stat before it is reaped,
//! children excluded) and peak RSS (VmHWM, sampled):
//!   relay_bench table --relay PATH [--socat PATH] [--reps R]
//!                     [--up-bytes N] [--both-bytes N] [--rtt-iters K]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::sys::stat::{fstat, SFlag};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

fn pattern_buf() -> Vec<u8> {
    (0..(1usize << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn sink_stdin() -> u64 {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let is_pipe = fstat(fd)
        .map(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO)
        .unwrap_or(false);
    let mut total = 0u64;
    if is_pipe {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        loop {
            match splice(fd, None, &null, None, 1 << 20, SpliceFFlags::empty()) {
                Ok(0) => return total,
                Ok(n) => total += n as u64,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut r = stdin.lock();
    loop {
        match r.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("sink: {e}"),
        }
    }
}

fn gen_to<W: Write>(mut w: W, n: u64) {
    let buf = pattern_buf();
    let mut left = n;
    while left > 0 {
        let k = (buf.len() as u64).min(left) as usize;
        w.write_all(&buf[..k]).unwrap();
        left -= k as u64;
    }
}

fn arg_u64(args: &[String], i: usize) -> u64 {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .expect("a byte count")
}

// ---------------- harness ----------------

#[derive(Clone, Copy)]
enum Load {
    Down(u64),
    Up(u64),
    Both(u64),
    Rtt(usize),
}

#[derive(Clone, Copy, Default)]
struct Sample {
    secs: f64,
    cpu: f64,
    peak_kib: u64,
    rtt_us: f64,
}

fn proc_self_cpu(pid: u32, tck: f64) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / tck
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

fn run(cmd: &[OsString], load: Load) -> Sample {
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let (to, sub_in) = UnixStream::pair().unwrap();
    let (sub_out, from) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::from(OwnedFd::from(sub_in)))
        .stdout(Stdio::from(OwnedFd::from(sub_out)))
        .spawn()
        .expect("start the command under test");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let sampler = thread::spawn(move || {
        let mut peak = 0;
        while !d2.load(Ordering::Relaxed) {
            if let Some(k) = vm_hwm(pid) {
                peak = peak.max(k);
            }
            thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let mut rtt_us = 0.0;
    match load {
        Load::Up(_) | Load::Both(_) | Load::Down(_) => {
            let n_up = match load {
                Load::Down(_) => 0,
                Load::Up(n) | Load::Both(n) => n,
                Load::Rtt(_) => 0,
            };
            let w = thread::spawn(move || {
                gen_to(&to, n_up);
                to.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            loop {
                match (&from).read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => got += k as u64,
                    Err(e) => panic!("harness read: {e}"),
                }
            }
            w.join().unwrap();
            if let Load::Both(n) | Load::Down(n) = load {
                assert_eq!(got, n, "bytes back from {cmd:?}");
            }
        }
        Load::Rtt(iters) => {
            let msg = [0x5au8; 64];
            let mut back = [0u8; 64];
            let mut t = Vec::with_capacity(iters);
            for i in 0..iters + 1000 {
                let t0 = Instant::now();
                (&to).write_all(&msg).unwrap();
                (&from).read_exact(&mut back).unwrap();
                if i >= 1000 {
                    t.push(t0.elapsed().as_secs_f64());
                }
            }
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            rtt_us = t[t.len() / 2] * 1e6;
            to.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            (&from).read_to_end(&mut rest).unwrap();
        }
    }
    // Exited but not reaped: its own CPU time is still in /proc.
    waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cpu = proc_self_cpu(pid, tck);
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

struct Row {
    name: &'static str,
    /// Command for each load (None: not applicable).
    up: Option<Vec<OsString>>,
    both: Option<Vec<OsString>>,
    rtt: Option<Vec<OsString>>,
    hop: bool,
}

#[derive(Default, Clone)]
struct Res {
    up_mibs: Vec<f64>,
    up_cpu_gib: Vec<f64>,
    both_mibs: Vec<f64>,
    both_cpu_gib: Vec<f64>,
    rtt: Vec<f64>,
    peak: u64,
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn table(args: &[String]) {
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let relay = get("--relay").expect("--relay PATH");
    let socat = get("--socat");
    let reps: usize = get("--reps").and_then(|s| s.parse().ok()).unwrap_or(3);
    let up: u64 = get("--up-bytes")
        .and_then(|s| s.parse().ok())
        .unwrap_or(4 << 30);
    let both: u64 = get("--both-bytes")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let iters: usize = get("--rtt-iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let me = std::env::current_exe()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let (ups, boths) = (up.to_string(), both.to_string());
    let sink = format!("{me} sink {ups}");
    let sinkgen = format!("{me} sinkgen {boths}");
    let echo = format!("{me} echo");
    let mut rows = vec![
        Row {
            name: "bare pipe (no relay)",
            up: Some(os(&[&me, "sink", &ups])),
            both: Some(os(&[&me, "sinkgen", &boths])),
            rtt: Some(os(&[&me, "echo"])),
            hop: false,
        },
        Row {
            name: "cat as one hop",
            up: Some(os(&["cat"])),
            both: None,
            rtt: Some(os(&["cat"])),
            hop: true,
        },
    ];
    if let Some(s) = &socat {
        rows.push(Row {
            name: "socat - EXEC:... (defaults)",
            up: Some(os(&[s, "-", &format!("EXEC:{sink}")])),
            both: Some(os(&[s, "-", &format!("EXEC:{sinkgen}")])),
            rtt: Some(os(&[s, "-", &format!("EXEC:{echo}")])),
            hop: true,
        });
    }
    rows.push(Row {
        name: "qubes-relay -- ...",
        up: Some(os(&[&relay, "--", &me, "sink", &ups])),
        both: Some(os(&[&relay, "--", &me, "sinkgen", &boths])),
        rtt: Some(os(&[&relay, "--", &me, "echo"])),
        hop: true,
    });
    println!("Commands (each given AF_UNIX socketpairs on fd 0 and fd 1 by the harness):");
    for r in &rows {
        for (what, c) in [("upload", &r.up), ("both", &r.both), ("rtt", &r.rtt)] {
            if let Some(c) = c {
                let s: Vec<String> = c.iter().map(|x| x.to_string_lossy().into_owned()).collect();
                println!("  {:<28} {:<7} {}", r.name, what, s.join(" "));
            }
        }
    }
    let mut res = vec![Res::default(); rows.len()];
    // Interleave rows within each repetition so machine noise hits all alike.
    for rep in 0..reps {
        for (i, r) in rows.iter().enumerate() {
            if let Some(c) = &r.up {
                let s = run(c, Load::Up(up));
                res[i].up_mibs.push(up as f64 / MIB / s.secs);
                res[i].up_cpu_gib.push(s.cpu / (up as f64 / GIB));
                res[i].peak = res[i].peak.max(s.peak_kib);
            }
            if let Some(c) = &r.both {
                let s = run(c, Load::Both(both));
                res[i].both_mibs.push(both as f64 / MIB / s.secs);
                res[i].both_cpu_gib.push(s.cpu / (2.0 * both as f64 / GIB));
                res[i].peak = res[i].peak.max(s.peak_kib);
            }
            if let Some(c) = &r.rtt {
                let s = run(c, Load::Rtt(iters));
                res[i].rtt.push(s.rtt_us);
                res[i].peak = res[i].peak.max(s.peak_kib);
            }
        }
        eprintln!("relay_bench: repetition {} of {reps} done", rep + 1);
    }
    println!();
    println!(
        "Upload {:.0} GiB; both directions {:.0} GiB each way at once; 64-byte round trips x{iters}; {reps} repetitions, median (min–max).",
        up as f64 / GIB,
        both as f64 / GIB
    );
    println!();
    println!("| path | upload MiB/s | both ways MiB/s per direction | RTT 64 B µs (p50) | CPU s/GiB (upload) | CPU s/GiB (both) | peak RSS KiB |");
    println!("|---|---|---|---|---|---|---|");
    let cell = |v: &Vec<f64>, prec: usize| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.*} ({})", prec, median(v.clone()), spread(v))
        }
    };
    let cellf = |v: &Vec<f64>| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            format!("{:.3} ({lo:.3}–{hi:.3})", median(v.clone()))
        }
    };
    for (r, x) in rows.iter().zip(&res) {
        let (cu, cb, pk) = if r.hop {
            (
                cellf(&x.up_cpu_gib),
                cellf(&x.both_cpu_gib),
                x.peak.to_string(),
            )
        } else {
            (
                "n/a (no hop)".into(),
                "n/a (no hop)".into(),
                "n/a (no hop)".into(),
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            cell(&x.up_mibs, 0),
            cell(&x.both_mibs, 0),
            if x.rtt.is_empty() {
                "n/a".into()
            } else {
                format!(
                    "{:.1} ({:.1}–{:.1})",
                    median(x.rtt.clone()),
                    x.rtt.iter().cloned().fold(f64::INFINITY, f64::min),
                    x.rtt.iter().cloned().fold(0.0, f64::max)
                )
            },
            cu,
            cb,
            pk
        );
    }
    if socat.is_some() {
        let s = &res[rows.len() - 2];
        let q = &res[rows.len() - 1];
        let m = |v: &Vec<f64>| median(v.clone());
        println!();
        println!("Ratios, qubes-relay vs socat (medians):");
        println!(
            "  upload throughput       {:.1}x  (target >= 8x)",
            m(&q.up_mibs) / m(&s.up_mibs)
        );
        println!(
            "  both-ways throughput    {:.1}x",
            m(&q.both_mibs) / m(&s.both_mibs)
        );
        println!(
            "  CPU per GiB, upload     {:.3} of socat's = 1/{:.1}  (target <= 1/8)",
            m(&q.up_cpu_gib) / m(&s.up_cpu_gib),
            m(&s.up_cpu_gib) / m(&q.up_cpu_gib)
        );
        println!(
            "  CPU per GiB, both ways  {:.3} of socat's = 1/{:.1}",
            m(&q.both_cpu_gib) / m(&s.both_cpu_gib),
            m(&s.both_cpu_gib) / m(&q.both_cpu_gib)
        );
        println!(
            "  64 B round trip         {:.2}x socat's time  (target <= 1)",
            m(&q.rtt) / m(&s.rtt)
        );
        println!(
            "  peak RSS                {} KiB (socat {} KiB; target < 4096)",
            q.peak, s.peak
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sink") => {
            let want = arg_u64(&args, 1);
            let got = sink_stdin();
            if got != want {
                eprintln!("relay_bench sink: got {got} bytes, wanted {want}");
                std::process::exit(3);
            }
        }
        Some("sinkgen") => {
            let n = arg_u64(&args, 1);
            let t = thread::spawn(sink_stdin);
            // Our only reference to stdout, so that dropping it is EOF.
            let out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().unwrap());
            let null =
                nix::fcntl::open("/dev/null", OFlag::O_WRONLY, nix::sys::stat::Mode::empty())
                    .unwrap();
            nix::unistd::dup2_stdout(&null).unwrap();
            gen_to(&out, n);
            drop(out);
            let got = t.join().unwrap();
            if got != n {
                eprintln!("relay_bench sinkgen: got {got} bytes, wanted {n}");
                std::process::exit(3);
            }
        }
        Some("echo") => {
            let mut buf = vec![0u8; 65536];
            let mut i = std::io::stdin().lock();
            let mut o =
                std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().unwrap());
            loop {
                match i.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        o.write_all(&buf[..n]).unwrap();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("echo: {e}"),
                }
            }
        }
        Some("table") => table(&args[1..]),
        // One measurement: relay_bench once up|both|rtt N -- CMD...
        Some("once") => {
            let n = arg_u64(&args, 2);
            let load = match args[1].as_str() {
                "up" => Load::Up(n),
                "both" => Load::Both(n),
                "down" => Load::Down(n),
                _ => Load::Rtt(n as usize),
            };
            let cmd: Vec<OsString> = args[4..].iter().map(OsString::from).collect();
            let s = run(&cmd, load);
            println!(
                "{:.0} MiB/s  cpu {:.2}s  peak {} KiB  rtt {:.1} us",
                n as f64 / MIB / s.secs,
                s.cpu,
                s.peak_kib,
                s.rtt_us
            );
        }
        Some("gen") => {
            let n = arg_u64(&args, 1);
            let out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().unwrap());
            gen_to(&out, n);
        }
        _ => {
            eprintln!("usage: relay_bench sink N | sinkgen N | echo | table --relay PATH [--socat PATH] [--reps R] [--up-bytes N] [--both-bytes N] [--rtt-iters K]");
            std::process::exit(2);
        }
    }
}
