//! Shared harness of the tests/ssh_*.rs tests: a throw-away "world" in /tmp with the qube roots
//! of the qrexec stand-in (tests/sim, flat mode), a policy, the destination configuration, the
//! ssh double and the borg serve doubles (tests/ssh_doubles/).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const CLIENT: &str = env!("CARGO_BIN_EXE_qubes-ssh-client");
pub const SERVICE: &str = env!("CARGO_BIN_EXE_qubes-ssh-service");
pub const RELAY: &str = env!("CARGO_BIN_EXE_qubes-relay");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// A real ed25519 public key (its private half was thrown away).
pub const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIElAgMpNFIlM5mIbLeAMOBxSTltW3e1SaOrxGo1oMYIl";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn qrexec_client_vm() -> PathBuf {
    Path::new(REPO).join("tests/sim/qrexec-client-vm")
}

pub struct World {
    pub dir: PathBuf,
}

pub struct Out {
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl World {
    pub fn new(tag: &str) -> World {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/qbssh-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in [
            "qubes/sys-backup-mnt",
            "qubes/sys-backup/etc/qubes-rpc",
            "qubes/ssh-backup/etc/qubes-rpc",
            "policy",
            "conf",
            "bin",
            "state",
            "home",
            "run",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::set_permissions(dir.join("conf"), std::fs::Permissions::from_mode(0o755)).unwrap();
        write_exec(
            &dir.join("qubes/sys-backup/etc/qubes-rpc/qubes-borg.Ssh"),
            &format!("#!/bin/sh\nexec {SERVICE} \"$@\"\n"),
        );
        std::fs::write(
            dir.join("policy/50-test.policy"),
            "qubes-borg.Ssh * sys-backup-mnt @default allow target=sys-backup\n\
             qubes-borg.Ssh * @anyvm @anyvm deny\n\
             qubes-borg.SshAgent * sys-backup @default allow target=ssh-backup\n",
        )
        .unwrap();
        // A stand-in vault service: notes the key set asked for, answers nothing.
        write_exec(
            &dir.join("qubes/ssh-backup/etc/qubes-rpc/qubes-borg.SshAgent"),
            &format!(
                "#!/bin/sh\necho \"$1 from $QREXEC_REMOTE_DOMAIN\" >>{}\n",
                dir.join("state/agent-called").display()
            ),
        );
        symlink(
            Path::new(REPO).join("tests/ssh_doubles/ssh"),
            dir.join("bin/ssh"),
        )
        .unwrap();
        write_exec(
            &dir.join("bin/fake-borg"),
            &format!(
                "#!/bin/sh\nexec /usr/bin/python3 {REPO}/tests/ssh_doubles/borg_doubles.py serve {} \"$@\"\n",
                dir.join("state").display()
            ),
        );
        let w = World { dir };
        w.destination("nas", "");
        w.plan("stream 0 0 0");
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Write conf/NAME.conf: the default destination plus `extra` lines.
    pub fn destination(&self, name: &str, extra: &str) {
        let text = format!(
            "host = {name}.example\nuser = u\nremote-path = {}\nhost-key = {HOST_KEY}\n{extra}",
            self.path("bin/fake-borg").display()
        );
        self.write_conf(name, &text);
    }

    pub fn write_conf(&self, name: &str, text: &str) {
        let p = self.path(&format!("conf/{name}.conf"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub fn plan(&self, plan: &str) {
        std::fs::write(self.path("state/serve-plan"), plan).unwrap();
    }

    pub fn ssh_mode(&self, mode: &str) {
        std::fs::write(self.path("state/ssh-mode"), mode).unwrap();
    }

    /// The environment every program of the chain gets (the stand-in passes the caller's
    /// environment on to the service, as a login session in sys-backup would have its own).
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("QUBES_SSH_CLIENT_QREXEC", qrexec_client_vm())
            .env("QREXEC_SIM_QUBES", self.path("qubes"))
            .env("QREXEC_SIM_SOURCE", "sys-backup-mnt")
            .env("QREXEC_SIM_POLICY_DIR", self.path("policy"))
            .env("QUBES_SSH_SERVICE_CONFIG_DIR", self.path("conf"))
            .env("QUBES_SSH_SERVICE_SSH", self.path("bin/ssh"))
            .env("QUBES_SSH_SERVICE_HEADER_TIMEOUT_MS", "3000")
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("QUBES_BORG_QREXEC_CLIENT_VM", qrexec_client_vm())
            .env("QUBES_BORG_RELAY", RELAY)
            .env_remove("QUBES_BORG_RUNTIME_DIR")
            .env("HOME", self.path("home"))
            .env_remove("QUBES_SSH_CLIENT_TARGET")
            .env_remove("BORG_RSH")
            .env_remove("BORG_REMOTE_PATH");
    }

    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CLIENT);
        c.args(args);
        self.env(&mut c);
        c
    }

    /// qrexec-client-vm @default qubes-borg.Ssh+ARG with nothing in front: what a compromised
    /// sys-backup-mnt can do without qubes-ssh-client.
    pub fn qrexec(&self, arg: &str) -> Command {
        let mut c = Command::new(qrexec_client_vm());
        c.arg("@default").arg(format!("qubes-borg.Ssh+{arg}"));
        self.env(&mut c);
        c
    }

    /// The service binary run directly, with `args` as qrexec would pass them.
    pub fn service(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SERVICE);
        c.args(args);
        self.env(&mut c);
        c.env("QREXEC_REMOTE_DOMAIN", "sys-backup-mnt");
        c
    }

    /// argv of every ssh call so far (without argv[0]).
    pub fn ssh_calls(&self) -> Vec<Vec<String>> {
        numbered(&self.path("state"), "ssh-argv")
    }

    pub fn serve_calls(&self) -> Vec<Vec<String>> {
        numbered(&self.path("state"), "serve-argv")
    }

    pub fn serve_result(&self) -> String {
        std::fs::read_to_string(self.path("state/serve-result")).unwrap_or_default()
    }

    /// sys-backup's service log (the stand-in's journal).
    pub fn service_log(&self) -> String {
        std::fs::read_to_string(self.path("qubes/sys-backup/var/log/qubes/qrexec-services.log"))
            .unwrap_or_default()
    }

    /// Lines of the service log containing `pat`, waiting up to 10 s for at least `n` of them
    /// (the stand-in writes the service's stderr to the log asynchronously, as the journal is).
    pub fn log_lines(&self, pat: &str, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let v: Vec<String> = self
                .service_log()
                .lines()
                .filter(|l| l.contains(pat))
                .map(String::from)
                .collect();
            if v.len() >= n || start.elapsed() > Duration::from_secs(10) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn assert_no_ssh(&self, what: &str) {
        assert!(
            self.ssh_calls().is_empty(),
            "{what}: ssh was started: {:?}",
            self.ssh_calls()
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::env::var_os("QBSSH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn numbered(dir: &Path, stem: &str) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for n in 0.. {
        match std::fs::read(dir.join(format!("{stem}.{n}"))) {
            Ok(b) => v.push(
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            Err(_) => break,
        }
    }
    v
}

/// Run `cmd` with `input` on stdin (then EOF), collect stdout/stderr, kill after `limit`.
pub fn run(cmd: &mut Command, input: &[u8], limit: Duration) -> Out {
    use std::os::unix::process::CommandExt;
    // Own process group, so a hang is cleaned up whole (qrexec stand-in, service, ssh double).
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    w.join().unwrap();
    Out {
        code: status.code(),
        stdout: ro.join().unwrap(),
        stderr: String::from_utf8_lossy(&re.join().unwrap()).into_owned(),
    }
}

pub const LIMIT: Duration = Duration::from_secs(60);
pub const SHORT: Duration = Duration::from_secs(20);

/// The deterministic test stream (same definition as tests/ssh_doubles/borg_doubles.py).
pub fn stream(seed: u32, len: usize) -> Vec<u8> {
    const BLOCK: usize = 65536;
    let base: Vec<u8> = (0..BLOCK)
        .map(|j| ((j as u32 * 31 + (j as u32 >> 8) * 7 + seed * 101) & 0xff) as u8)
        .collect();
    let mut v = Vec::with_capacity(len);
    let mut k = 0u32;
    while v.len() < len {
        let take = (len - v.len()).min(BLOCK);
        v.extend(base[..take].iter().map(|&b| b.wrapping_add(k as u8)));
        k += 1;
    }
    v
}
