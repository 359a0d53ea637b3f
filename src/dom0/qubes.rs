//! dom0: the only door to the Qubes tools (`qvm-*`) and `losetup`/`lvchange`. Every call is an
//! argv run with `std::process::Command` (never a shell), in its own process group (a Ctrl-C
//! on the terminal reaches `qvm-backup-borg` only, which then cleans up in order). `Fake`
//! checks calls against an expected table in tests.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::signals::Signals;

/// Most bytes kept from a command's stdout or stderr (a VM's text included).
pub const MAX_OUTPUT: usize = 1 << 20;
/// Most bytes of the job's stderr kept for the log.
pub const MAX_JOB_STDERR: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code, 128+N after signal N.
    pub code: u8,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The program could not be started.
    Start(String, String),
    /// A signal asked us to stop.
    Interrupted,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Start(p, e) => write!(f, "cannot run {p}: {e}"),
            CallError::Interrupted => f.write_str("interrupted by a signal"),
        }
    }
}

pub trait Qubes {
    /// Runs a short command to completion.
    fn run(&mut self, argv: &[String]) -> Result<Output, CallError>;
    /// Runs the job: writes `request` to its stdin, hands its stdout to `sink` as it arrives,
    /// keeps a bounded stderr. Stops it (and returns Interrupted) when a signal arrives.
    fn job(
        &mut self,
        argv: &[String],
        request: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Output, CallError>;
    /// True once SIGINT/SIGTERM/SIGHUP arrived.
    fn interrupted(&mut self) -> bool;
    /// Starts a command whose stdin dom0 writes (the export stream into a qube: `qvm-run
    /// --pass-io TARGET ...`); its stdout and stderr are kept bounded.
    fn inflow(&mut self, argv: &[String]) -> Result<Box<dyn Inflow>, CallError> {
        Err(CallError::Start(argv[0].clone(), "not supported".into()))
    }
}

/// A running command fed by dom0 (see `Qubes::inflow`).
pub trait Inflow {
    /// Writes `data` to its stdin; Err once it stopped reading (it exited or closed stdin).
    fn write(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// Closes its stdin and waits for it to end.
    fn finish(self: Box<Self>) -> Result<Output, CallError>;
}

struct RealInflow {
    program: String,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

impl Inflow for RealInflow {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(w) => w.write_all(data),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Output, CallError> {
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .map_err(|e| CallError::Start(self.program.clone(), e.to_string()))?;
        let mut out: Vec<Vec<u8>> = self
            .readers
            .drain(..)
            .map(|t| t.join().unwrap_or_default())
            .collect();
        let stderr = out.pop().unwrap_or_default();
        let stdout = out.pop().unwrap_or_default();
        Ok(Output {
            code: crate::child::status_code(status).unwrap_or(255),
            stdout,
            stderr,
        })
    }
}

/// The real tools.
pub struct Real {
    pub signals: Option<Signals>,
}

/// Starts `argv` in its own process group, stdin as given, stdout and stderr piped.
fn spawn(argv: &[String], stdin: Stdio) -> Result<std::process::Child, CallError> {
    Command::new(&argv[0])
        .args(&argv[1..])
        .process_group(0)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CallError::Start(argv[0].clone(), e.to_string()))
}

fn read_bounded(r: &mut impl Read, max: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.take(max as u64).read_to_end(&mut v);
    // Drain the rest so the writer is not blocked.
    let _ = std::io::copy(r, &mut std::io::sink());
    v
}

impl Qubes for Real {
    fn run(&mut self, argv: &[String]) -> Result<Output, CallError> {
        let mut child = spawn(argv, Stdio::null())?;
        let mut err = child.stderr.take().expect("piped");
        let t = std::thread::spawn(move || read_bounded(&mut err, MAX_OUTPUT));
        let stdout = read_bounded(child.stdout.as_mut().expect("piped"), MAX_OUTPUT);
        let stderr = t.join().unwrap_or_default();
        let status = child
            .wait()
            .map_err(|e| CallError::Start(argv[0].clone(), e.to_string()))?;
        Ok(Output {
            code: crate::child::status_code(status).unwrap_or(255),
            stdout,
            stderr,
        })
    }

    fn job(
        &mut self,
        argv: &[String],
        request: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Output, CallError> {
        let mut child = spawn(argv, Stdio::piped())?;
        let mut stdin = child.stdin.take().expect("piped");
        let req = request.to_vec();
        // The request holds the passphrase: it goes only to this pipe.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&req);
        });
        let mut err = child.stderr.take().expect("piped");
        let errt = std::thread::spawn(move || read_bounded(&mut err, MAX_JOB_STDERR));
        let mut out = child.stdout.take().expect("piped");
        let mut buf = vec![0u8; 8192];
        let mut interrupted = false;
        loop {
            let (ready_out, ready_sig) = {
                let mut fds = vec![PollFd::new(out.as_fd(), PollFlags::POLLIN)];
                if let Some(s) = &self.signals {
                    fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::from(1000u16)) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
                let r = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .map(|r| !r.is_empty())
                        .unwrap_or(false)
                };
                (r(0), r(1))
            };
            if ready_sig && self.interrupted() {
                interrupted = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                break;
            }
            if ready_out {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink(&buf[..n]),
                }
            }
        }
        drop(out);
        let status = child
            .wait()
            .map_err(|e| CallError::Start(argv[0].clone(), e.to_string()))?;
        let _ = writer.join();
        let stderr = errt.join().unwrap_or_default();
        if interrupted {
            return Err(CallError::Interrupted);
        }
        Ok(Output {
            code: crate::child::status_code(status).unwrap_or(255),
            stdout: vec![],
            stderr,
        })
    }

    fn interrupted(&mut self) -> bool {
        self.signals.as_mut().map(|s| s.check()).unwrap_or(false)
    }

    fn inflow(&mut self, argv: &[String]) -> Result<Box<dyn Inflow>, CallError> {
        let mut child = spawn(argv, Stdio::piped())?;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let readers = vec![
            std::thread::spawn(move || read_bounded(&mut out, MAX_JOB_STDERR)),
            std::thread::spawn(move || read_bounded(&mut err, MAX_JOB_STDERR)),
        ];
        Ok(Box::new(RealInflow {
            program: argv[0].clone(),
            stdin: child.stdin.take(),
            child,
            readers,
        }))
    }
}

/// What the fake answers to one expected call.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u8,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// For `job`: raise the interrupt flag after answering.
    pub interrupt: bool,
}

impl Reply {
    pub fn ok(stdout: &str) -> Reply {
        Reply {
            code: 0,
            stdout: stdout.as_bytes().to_vec(),
            stderr: vec![],
            interrupt: false,
        }
    }
    pub fn fail(code: u8, stderr: &str) -> Reply {
        Reply {
            code,
            stdout: vec![],
            stderr: stderr.as_bytes().to_vec(),
            interrupt: false,
        }
    }
}

/// Test double: every call must be the next expected argv (a `*` word matches anything).
#[derive(Debug, Default)]
pub struct Fake {
    pub expected: VecDeque<(Vec<String>, Reply)>,
    pub calls: Vec<Vec<String>>,
    pub requests: Vec<Vec<u8>>,
    pub flag: bool,
    /// What was written to each `inflow` command, in order.
    pub inflows: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
}

/// The fake's `inflow`: keeps what is written; a reply with a non-zero code plays a command
/// that failed at once (every write gets a broken pipe, finish returns the reply).
struct FakeInflow {
    sink: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
    index: usize,
    reply: Reply,
}

impl Inflow for FakeInflow {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.reply.code != 0 {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.sink.borrow_mut()[self.index].extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Output, CallError> {
        Ok(Output {
            code: self.reply.code,
            stdout: self.reply.stdout,
            stderr: self.reply.stderr,
        })
    }
}

impl Fake {
    pub fn expect(&mut self, argv: &str, reply: Reply) -> &mut Self {
        self.expected
            .push_back((argv.split(' ').map(String::from).collect(), reply));
        self
    }

    /// Like `expect`, for an argv whose words contain spaces (a `sh -c` script).
    pub fn expect_argv(&mut self, argv: &[&str], reply: Reply) -> &mut Self {
        self.expected
            .push_back((argv.iter().map(|s| s.to_string()).collect(), reply));
        self
    }

    fn next(&mut self, argv: &[String]) -> Reply {
        self.calls.push(argv.to_vec());
        let Some((want, reply)) = self.expected.pop_front() else {
            panic!(
                "unexpected call {argv:?} (no more expected)\ncalls so far: {:#?}",
                self.calls
            );
        };
        let ok = want.len() == argv.len() && want.iter().zip(argv).all(|(w, a)| w == "*" || w == a);
        assert!(
            ok,
            "call {argv:?}\nexpected {want:?}\ncalls so far: {:#?}",
            self.calls
        );
        reply
    }
}

impl Qubes for Fake {
    fn run(&mut self, argv: &[String]) -> Result<Output, CallError> {
        let r = self.next(argv);
        self.flag |= r.interrupt;
        Ok(Output {
            code: r.code,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    fn job(
        &mut self,
        argv: &[String],
        request: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Output, CallError> {
        let r = self.next(argv);
        self.requests.push(request.to_vec());
        sink(&r.stdout);
        if r.interrupt {
            self.flag = true;
            return Err(CallError::Interrupted);
        }
        Ok(Output {
            code: r.code,
            stdout: vec![],
            stderr: r.stderr,
        })
    }

    fn interrupted(&mut self) -> bool {
        self.flag
    }

    fn inflow(&mut self, argv: &[String]) -> Result<Box<dyn Inflow>, CallError> {
        let reply = self.next(argv);
        let index = {
            let mut v = self.inflows.borrow_mut();
            v.push(Vec::new());
            v.len() - 1
        };
        Ok(Box::new(FakeInflow {
            sink: self.inflows.clone(),
            index,
            reply,
        }))
    }
}
