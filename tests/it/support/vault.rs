//! Development machine (tests): the split-SSH fixtures, a real OpenSSH ssh-agent holding the
//! backup key and another key, a front socket where every connection runs qubes-agent-filter on
//! it (what qrexec does in ssh-backup, with the connection as the service's stdin and stdout), a
//! real sshd, and agent protocol frames.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::proc::{output, wait_for};
use super::tmp::TempDir;
use super::FILTER;

pub fn keygen(path: &Path, comment: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let out = output(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    );
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// The agent side of ssh-backup: ssh-agent with two keys, plus the key dir
/// layout the filter expects.
pub struct Vault {
    pub dir: TempDir,
    pub agent: Child,
    pub key_dir: PathBuf,
    pub run_dir: PathBuf,
    pub agent_sock: PathBuf,
    pub backup_key: PathBuf,
    pub other_key: PathBuf,
}

impl Vault {
    pub fn new(tag: &str) -> Vault {
        let dir = TempDir::new(tag);
        let key_dir = dir.path().join("keys");
        let run_dir = dir.path().join("run");
        let backup_key = key_dir.join("default/id_ed25519");
        let other_key = dir.path().join("other/id_ed25519");
        keygen(&backup_key, "backup-key-comment");
        keygen(&other_key, "other-key-comment");
        fs::create_dir_all(run_dir.join("default")).unwrap();
        let agent_sock = run_dir.join("default/agent.sock");
        let agent = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&agent_sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent");
        wait_for(
            || UnixStream::connect(&agent_sock).is_ok(),
            "ssh-agent socket",
        );
        let v = Vault {
            dir,
            agent,
            key_dir,
            run_dir,
            agent_sock,
            backup_key,
            other_key,
        };
        for k in [&v.other_key, &v.backup_key] {
            let out = output(
                Command::new("ssh-add")
                    .arg("-q")
                    .arg(k)
                    .env("SSH_AUTH_SOCK", &v.agent_sock),
            );
            assert!(out.status.success(), "ssh-add: {out:?}");
        }
        v
    }

    /// `ssh-add -L` straight on the agent (bypassing the filter).
    pub fn direct_list(&self) -> String {
        let out = output(
            Command::new("ssh-add")
                .arg("-L")
                .env("SSH_AUTH_SOCK", &self.agent_sock),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn pub_line(&self, key: &Path) -> String {
        let s = fs::read_to_string(key.with_extension("pub")).unwrap();
        // "type base64" without the comment
        s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    /// A Command running the filter as qrexec would for
    /// qubes-borg.SshAgent+NAME called from `source`.
    pub fn filter_cmd(&self, name: &str, source: &str) -> Command {
        let mut c = Command::new(FILTER);
        c.arg(name)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("QREXEC_SERVICE_ARGUMENT", name)
            .env(
                "QREXEC_SERVICE_FULL_NAME",
                format!("qubes-borg.SshAgent+{name}"),
            )
            .env("QREXEC_REMOTE_DOMAIN", source)
            .env("QUBES_BORG_KEY_DIR", &self.key_dir)
            .env("QUBES_BORG_AGENT_RUNDIR", &self.run_dir)
            .env("QUBES_BORG_NOTIFY", "0");
        c
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// One finished filter run.
#[derive(Debug, Clone)]
pub struct FilterRun {
    pub code: Option<i32>,
    pub stderr: String,
}

/// A socket where each connection is served by a fresh filter process
/// (stdin = stdout = the connection), like the qrexec service in ssh-backup.
pub struct Front {
    pub path: PathBuf,
    pub runs: Arc<Mutex<Vec<FilterRun>>>,
    active: Arc<Mutex<u32>>,
}

impl Front {
    pub fn start(v: &Vault, source: &str, envs: &[(&str, &str)]) -> Front {
        let path = v.dir.path().join("front.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(Mutex::new(0));
        let mut template = v.filter_cmd("default", source);
        for (k, val) in envs {
            template.env(k, val);
        }
        let (r2, a2) = (runs.clone(), active.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                *a2.lock().unwrap() += 1;
                let mut cmd = clone_cmd(&template);
                let child = cmd
                    .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                        conn.try_clone().unwrap(),
                    )))
                    .stdout(Stdio::from(std::os::fd::OwnedFd::from(conn)))
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let (r3, a3) = (r2.clone(), a2.clone());
                thread::spawn(move || {
                    let out = child.wait_with_output().unwrap();
                    r3.lock().unwrap().push(FilterRun {
                        code: out.status.code(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                    *a3.lock().unwrap() -= 1;
                });
            }
        });
        Front { path, runs, active }
    }

    /// Wait until every filter run has exited, then return all their logs.
    pub fn logs(&self) -> String {
        wait_for(
            || *self.active.lock().unwrap() == 0,
            "filter processes to exit",
        );
        let runs = self.runs.lock().unwrap();
        runs.iter().map(|r| r.stderr.as_str()).collect()
    }

    pub fn finished(&self) -> Vec<FilterRun> {
        wait_for(
            || *self.active.lock().unwrap() == 0,
            "filter processes to exit",
        );
        self.runs.lock().unwrap().clone()
    }
}

fn clone_cmd(c: &Command) -> Command {
    let mut n = Command::new(c.get_program());
    n.args(c.get_args());
    n.env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            n.env(k, v);
        }
    }
    n
}

/// Frame helpers for raw protocol tests.
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// Send one request frame and read one answer frame (body).
pub fn call(s: &mut UnixStream, body: &[u8]) -> Vec<u8> {
    s.write_all(&frame(body)).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut b).unwrap();
    b
}

/// Decode the key blob from a `.pub` file.
pub fn pub_blob(pubfile: &Path) -> Vec<u8> {
    let s = fs::read_to_string(pubfile).unwrap();
    let b64 = s.split_whitespace().nth(1).unwrap();
    qubes_borg::codec::base64_decode(b64.as_bytes()).unwrap()
}

/// A user-authentication request (RFC 4252 section 7) for `blob`.
pub fn userauth_data(blob: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    put_string(&mut d, &[7u8; 32]);
    d.push(50);
    put_string(&mut d, b"borg");
    put_string(&mut d, b"ssh-connection");
    put_string(&mut d, b"publickey");
    d.push(1);
    put_string(&mut d, b"ssh-ed25519");
    put_string(&mut d, blob);
    d
}

pub fn sign_request(blob: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = vec![13u8];
    put_string(&mut m, blob);
    put_string(&mut m, data);
    m.extend_from_slice(&0u32.to_be_bytes());
    m
}

/// A real OpenSSH sshd on 127.0.0.1 (random free port) with its own host
/// key and config, accepting only `authorized` public keys. `None` (with a
/// message on stderr) when sshd cannot start here.
pub struct Sshd {
    pub child: Child,
    pub port: u16,
    pub known_hosts: PathBuf,
    pub host_key_pub: PathBuf,
    pub log: Arc<Mutex<String>>,
}

impl Sshd {
    pub fn start(dir: &Path, authorized: &Path) -> Option<Sshd> {
        let sshd_bin = Path::new("/usr/sbin/sshd");
        if !sshd_bin.exists() {
            eprintln!("SKIP: /usr/sbin/sshd is not installed");
            return None;
        }
        if nix::unistd::geteuid().is_root() && !Path::new("/run/sshd").exists() {
            // sshd's privilege separation directory (Debian's unit creates it).
            let _ = fs::create_dir("/run/sshd");
        }
        let d = dir.join("sshd");
        fs::create_dir_all(&d).unwrap();
        let host_key = d.join("host_ed25519");
        if !host_key.exists() {
            keygen(&host_key, "test-host");
        }
        fs::copy(authorized, d.join("authorized_keys")).unwrap();
        for _attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let cfg = d.join("sshd_config");
            fs::write(
                &cfg,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\n\
                     AuthorizedKeysFile {ak}\nStrictModes no\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nAuthenticationMethods publickey\n\
                     PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                    hk = host_key.display(),
                    ak = d.join("authorized_keys").display()
                ),
            )
            .unwrap();
            let mut child = match Command::new(sshd_bin)
                .args(["-D", "-e", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("SKIP: cannot start sshd: {e}");
                    return None;
                }
            };
            let log = Arc::new(Mutex::new(String::new()));
            let mut err = child.stderr.take().unwrap();
            let log2 = log.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log2.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            let start = Instant::now();
            loop {
                if log
                    .lock()
                    .unwrap()
                    .contains("Server listening on 127.0.0.1")
                {
                    let known_hosts = d.join("known_hosts");
                    let hk_pub = fs::read_to_string(host_key.with_extension("pub")).unwrap();
                    let mut it = hk_pub.split_whitespace();
                    fs::write(
                        &known_hosts,
                        format!(
                            "[127.0.0.1]:{port} {} {}\n",
                            it.next().unwrap(),
                            it.next().unwrap()
                        ),
                    )
                    .unwrap();
                    return Some(Sshd {
                        child,
                        port,
                        known_hosts,
                        host_key_pub: host_key.with_extension("pub"),
                        log,
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let text = log.lock().unwrap().clone();
            if !text.contains("Address already in use") {
                eprintln!("SKIP: sshd did not start:\n{text}");
                return None;
            }
        }
        eprintln!("SKIP: sshd could not get a free port");
        None
    }

    /// `ssh` to this sshd as the current user, with the agent at `agent`
    /// as the only source of keys, running `remote_cmd`.
    pub fn ssh_cmd(&self, agent: &Path, remote_cmd: &str) -> Command {
        ssh_cmd(self.port, &self.known_hosts, agent, remote_cmd)
    }

    /// `ssh-keygen -l` fingerprint of the host key.
    pub fn host_fingerprint(&self) -> String {
        let out = output(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(&self.host_key_pub),
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh` to 127.0.0.1:`port` as the current user, the agent at `agent` as
/// the only source of keys (given as qubes-ssh-service will: SSH_AUTH_SOCK
/// plus IdentityAgent=SSH_AUTH_SOCK), running `remote_cmd`.
pub fn ssh_cmd(port: u16, known_hosts: &Path, agent: &Path, remote_cmd: &str) -> Command {
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-p", &port.to_string()])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "IdentityAgent=SSH_AUTH_SOCK",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ForwardAgent=no",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "ConnectTimeout=10",
            "-l",
            &user,
            "127.0.0.1",
            remote_cmd,
        ])
        .env("SSH_AUTH_SOCK", agent);
    c
}
