//! ssh-backup: the `qubes-borg.SshAgent+NAME` service: one client connection
//! (qrexec gives us stdin/stdout socketpairs) served through the filter in
//! front of the dedicated ssh-agent of key set NAME, under the key set's
//! login policy (`keyset`) and login rate limit (`rate`).

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::fault::{VaultFault, SIGNED_LOGIN};
use super::filter::{self, BackupKey, Binding, SignReply, Verdict};
use super::keyset::{self, LoginPolicy, PolicyError};
use super::rate;
use super::wire::{self, WireError};
use super::{validate_key_set_name, NameError};
use crate::exit;

/// Program name used as the prefix of every message.
pub const PROG: &str = "qubes-agent-filter";

/// Default directory holding `NAME/agent.sock` (systemd RuntimeDirectory of
/// `qubes-borg-agent@NAME.service`). No override: tests run the filter in a mount namespace.
pub const DEFAULT_AGENT_RUNDIR: &str = "/run/qubes-borg-agent";
/// Key directory below the service user's home: `NAME/id_ed25519{,.pub}`.
/// No override (tests: a mount namespace).
pub const KEY_SUBDIR: &str = ".ssh/qubes-borg";

/// Most requests served on one connection (ssh needs 2-3 per login).
pub const MAX_REQUESTS: u32 = 64;
/// Most signatures made on one connection (ssh needs 1 per login).
pub const MAX_SIGNATURES: u32 = 4;
/// How long to wait for the local ssh-agent's answer. It signs an ed25519 login in
/// microseconds (keys are loaded without confirmation), so this only bounds a frozen agent:
/// the login fails within seconds as a vault fault instead of after sshd's LoginGraceTime.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest public key file read.
const MAX_PUBKEY_FILE: u64 = 16 * 1024;

/// Everything that stops the service.
#[derive(Debug)]
pub enum FilterError {
    /// Bad or missing service argument.
    Name(NameError),
    /// Service argument given twice, differently.
    ArgMismatch,
    /// QREXEC_REMOTE_DOMAIN missing or not a qube name.
    Source(&'static str),
    /// No home directory for the service user.
    NoHome,
    /// Public key file unreadable or malformed.
    Key(PathBuf, String),
    /// The key set's login policy (server.conf) is missing, unsafe or malformed.
    Policy(PolicyError),
    /// Client broke the framing or a per-connection limit.
    Protocol(String),
    /// Reading from / writing to the client failed.
    Client(io::Error),
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::Name(e) => write!(f, "{e}"),
            FilterError::ArgMismatch => f.write_str(
                "service argument in argv and QREXEC_SERVICE_ARGUMENT differ; refusing",
            ),
            FilterError::Source(why) => write!(
                f,
                "QREXEC_REMOTE_DOMAIN {why}: this program is the qubes-borg.SshAgent service and must be started by qrexec"
            ),
            FilterError::NoHome => f.write_str(
                "cannot find the home directory of the service user in the user database",
            ),
            FilterError::Key(p, e) => write!(
                f,
                "backup public key {}: {e} (create it with: qubes-borg-keygen NAME)",
                p.display()
            ),
            FilterError::Policy(e) => write!(f, "key set login policy: {e}"),
            FilterError::Protocol(e) => write!(f, "closing the connection: {e}"),
            FilterError::Client(e) => write!(f, "connection to the client failed: {e}"),
        }
    }
}

impl FilterError {
    /// The documented exit code for this error (the table: `crate::exit`).
    pub fn exit_code(&self) -> u8 {
        match self {
            FilterError::Name(_) | FilterError::ArgMismatch | FilterError::Source(_) => exit::USAGE,
            FilterError::NoHome | FilterError::Key(..) | FilterError::Policy(_) => exit::CONFIG,
            FilterError::Protocol(_) => exit::DATAERR,
            FilterError::Client(_) => exit::IOERR,
        }
    }
}

/// Validated settings of one service call.
#[derive(Debug, Clone)]
pub struct Config {
    pub key_set: String,
    pub source: String,
    pub agent_socket: PathBuf,
    pub public_key: PathBuf,
}

impl Config {
    /// The key set's directory (`id_ed25519.pub`, `server.conf`).
    pub fn key_set_dir(&self) -> &Path {
        self.public_key
            .parent()
            .expect("built as DIR/NAME/id_ed25519.pub")
    }

    /// The key set's agent runtime directory (socket, login counter).
    pub fn run_dir(&self) -> &Path {
        self.agent_socket
            .parent()
            .expect("built as DIR/NAME/agent.sock")
    }
}

fn env_get(env: &[(OsString, OsString)], name: &str) -> Option<OsString> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Build the configuration from argv (without argv\[0\]) and the
/// environment qrexec gave us. All of it is validated here.
pub fn config_from(
    args: &[OsString],
    env: &[(OsString, OsString)],
    home: Option<PathBuf>,
) -> Result<Config, FilterError> {
    if args.len() > 1 {
        return Err(FilterError::Name(NameError::BadChar(0)));
    }
    let untrusted_arg = args.first().cloned();
    let untrusted_env_arg = env_get(env, "QREXEC_SERVICE_ARGUMENT");
    let untrusted_name = match (&untrusted_arg, &untrusted_env_arg) {
        (Some(a), Some(e)) if a != e => return Err(FilterError::ArgMismatch),
        (Some(a), _) => a.clone(),
        (None, Some(e)) => e.clone(),
        (None, None) => OsString::new(),
    };
    let untrusted_name = untrusted_name
        .to_str()
        .ok_or(FilterError::Name(NameError::BadChar(0)))?;
    let key_set = validate_key_set_name(untrusted_name)
        .map_err(FilterError::Name)?
        .to_string();

    let source = env_get(env, "QREXEC_REMOTE_DOMAIN").ok_or(FilterError::Source("is not set"))?;
    let source = source
        .to_str()
        .filter(|s| validate_key_set_name(s).is_ok())
        .ok_or(FilterError::Source("is not a valid qube name"))?
        .to_string();

    // Paths are fixed: the environment sets none of them (qrexec builds it in the vault, but
    // the installed program has no test-only switches either).
    let rundir = PathBuf::from(DEFAULT_AGENT_RUNDIR);
    let keydir = home.ok_or(FilterError::NoHome)?.join(KEY_SUBDIR);
    Ok(Config {
        agent_socket: rundir.join(&key_set).join("agent.sock"),
        public_key: keydir.join(&key_set).join("id_ed25519.pub"),
        key_set,
        source,
    })
}

/// Read and parse the backup public key of the key set.
pub fn load_key(path: &Path) -> Result<BackupKey, FilterError> {
    let err = |e: String| FilterError::Key(path.to_path_buf(), e);
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_PUBKEY_FILE)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    BackupKey::from_public_line(&text).map_err(|e| err(e.to_string()))
}

/// Load the key set's login policy (`server.conf` next to the public key), which must be
/// owned by the service user or root.
pub fn load_policy(cfg: &Config) -> Result<LoginPolicy, FilterError> {
    let me = nix::unistd::geteuid().as_raw();
    keyset::load(cfg.key_set_dir(), &[me, 0]).map_err(FilterError::Policy)
}

/// Events the service reports (to the journal, and to the desktop at most
/// once per [`rate::NOTIFY_INTERVAL_SECS`]).
pub trait Events {
    fn log(&mut self, line: &str);
    /// Show a desktop notification with this (validated, plain) text.
    fn notify(&mut self, _text: &str) {}
    /// Seconds since boot, for the login limit (tests may override).
    fn now(&mut self) -> io::Result<u64> {
        rate::now()
    }
}

/// What one connection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub requests: u32,
    pub signatures: u32,
    pub refused: u32,
}

/// Lazily opened connection to the local ssh-agent.
struct Agent<'a> {
    path: &'a Path,
    conn: Option<UnixStream>,
    /// It did not answer within `AGENT_TIMEOUT` once: later requests on this connection fail
    /// at once instead of waiting again.
    frozen: bool,
}

impl Agent<'_> {
    /// Send one request frame and read the answer frame. The error is a log line that ends in
    /// the vault-fault tag when it is one (`fault`).
    fn call(&mut self, body: &[u8], reply: &mut Vec<u8>) -> Result<(), String> {
        let frozen = || {
            format!(
                "the ssh-agent at {} did not answer within {} s (frozen?){}",
                self.path.display(),
                AGENT_TIMEOUT.as_secs(),
                VaultFault::AgentTimeout.tag()
            )
        };
        if self.frozen {
            return Err(frozen());
        }
        if self.conn.is_none() {
            let c = UnixStream::connect(self.path).map_err(|e| {
                format!(
                    "cannot reach the ssh-agent at {}: {e} (is qubes-borg-agent@NAME.service running?){}",
                    self.path.display(),
                    VaultFault::AgentDown.tag()
                )
            })?;
            c.set_read_timeout(Some(AGENT_TIMEOUT)).ok();
            c.set_write_timeout(Some(AGENT_TIMEOUT)).ok();
            self.conn = Some(c);
        }
        let c = self.conn.as_mut().expect("connected above");
        let res = wire::write_frame(c, body)
            .map_err(WireError::Io)
            .and_then(|_| match wire::read_frame(c, reply) {
                Ok(true) => Ok(()),
                Ok(false) => Err(WireError::Truncated { got: 0, wanted: 5 }),
                Err(e) => Err(e),
            });
        res.map_err(|e| {
            self.conn = None;
            let timed_out = matches!(&e, WireError::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
            if timed_out {
                self.frozen = true;
                frozen()
            } else {
                format!("ssh-agent at {}: {e}", self.path.display())
            }
        })
    }
}

const FAILURE: [u8; 1] = [wire::SSH_AGENT_FAILURE];
const SUCCESS: [u8; 1] = [wire::SSH_AGENT_SUCCESS];

/// Serve one client connection until it closes. Refused requests are
/// answered with SSH_AGENT_FAILURE and never reach the agent; malformed
/// framing or exceeding a limit ends the connection with an error.
pub fn serve(
    cfg: &Config,
    key: &BackupKey,
    policy: &LoginPolicy,
    input: &mut impl Read,
    output: &mut impl Write,
    events: &mut impl Events,
) -> Result<Summary, FilterError> {
    let mut agent = Agent {
        path: &cfg.agent_socket,
        conn: None,
        frozen: false,
    };
    let comment = format!("qubes-borg {} key", cfg.key_set);
    let who = format!("{}: key set {}", cfg.source, cfg.key_set);
    let mut sum = Summary::default();
    let mut bound: Option<Binding> = None;
    let mut req = Vec::new();
    let mut reply = Vec::new();
    loop {
        match wire::read_frame(input, &mut req) {
            Ok(true) => {}
            Ok(false) => return Ok(sum),
            Err(WireError::Io(e)) => return Err(FilterError::Client(e)),
            Err(e) => return Err(FilterError::Protocol(format!("{who}: {e}"))),
        }
        sum.requests += 1;
        if sum.requests > MAX_REQUESTS {
            return Err(FilterError::Protocol(format!(
                "{who}: more than {MAX_REQUESTS} requests on one connection"
            )));
        }
        let answer: &[u8] = match filter::classify(&req, key, policy, bound.as_ref()) {
            Verdict::Refuse(why) => {
                sum.refused += 1;
                events.log(&format!("{who}: refused: {why}"));
                &FAILURE
            }
            Verdict::Bind(b) => match agent.call(&req, &mut reply) {
                Err(e) => {
                    events.log(&format!("{who}: {e}"));
                    &FAILURE
                }
                Ok(()) => match filter::check_bind_reply(&reply) {
                    Ok(true) => {
                        bound = Some(b);
                        &SUCCESS
                    }
                    Ok(false) => {
                        sum.refused += 1;
                        events.log(&format!(
                            "{who}: refused: session-bind to server host key {}: the ssh-agent did not verify the host key's signature over the session id",
                            b.host_fingerprint()
                        ));
                        &FAILURE
                    }
                    Err(e) => {
                        events.log(&format!("{who}: {e}"));
                        &FAILURE
                    }
                },
            },
            Verdict::Identities => match agent.call(&req, &mut reply) {
                Err(e) => {
                    events.log(&format!("{who}: {e}"));
                    &FAILURE
                }
                Ok(()) => match filter::filter_identities(&reply, key, comment.as_bytes()) {
                    Ok((ours, held)) => {
                        if !held {
                            events.log(&format!(
                                "{who}: the ssh-agent does not hold the backup key {}; answering with no keys{}",
                                key.fingerprint(),
                                VaultFault::NoKey.tag()
                            ));
                        }
                        reply = ours;
                        &reply
                    }
                    Err(e) => {
                        events.log(&format!("{who}: {e}"));
                        &FAILURE
                    }
                },
            },
            Verdict::Sign(info) => {
                if sum.signatures >= MAX_SIGNATURES {
                    return Err(FilterError::Protocol(format!(
                        "{who}: more than {MAX_SIGNATURES} signatures on one connection"
                    )));
                }
                let limit = policy.logins_per_hour;
                let decision = events
                    .now()
                    .and_then(|now| rate::record_login(cfg.run_dir(), limit, now));
                let decision = match decision {
                    Ok(d) => d,
                    Err(e) => {
                        sum.refused += 1;
                        events.log(&format!(
                            "{who}: refused: cannot count the login against the limit ({}/{}): {e}",
                            cfg.run_dir().display(),
                            rate::FILE_NAME
                        ));
                        wire::write_frame(output, &FAILURE).map_err(FilterError::Client)?;
                        continue;
                    }
                };
                if !decision.allowed {
                    sum.refused += 1;
                    events.log(&format!(
                        "{who}: refused: login limit of {limit} per hour reached (logins-per-hour in server.conf)"
                    ));
                    if decision.notify {
                        events.notify(&format!(
                            "{} was refused a login with backup key set '{}': limit of {limit} logins per hour reached",
                            cfg.source, cfg.key_set
                        ));
                    }
                    wire::write_frame(output, &FAILURE).map_err(FilterError::Client)?;
                    continue;
                }
                match agent.call(&req, &mut reply) {
                    Err(e) => {
                        events.log(&format!("{who}: {e}"));
                        &FAILURE
                    }
                    Ok(()) => match filter::check_sign_reply(&reply) {
                        Ok(SignReply::Signed) => {
                            sum.signatures += 1;
                            events.log(&format!(
                                "{who}: {SIGNED_LOGIN}{}) as user '{}' with backup key {} in a session bound to server host key {} (session-bind verified by ssh-agent; login {} of at most {limit} this hour)",
                                info.method,
                                info.user,
                                key.fingerprint(),
                                info.host_key,
                                decision.count
                            ));
                            if decision.notify {
                                events.notify(&format!(
                                    "{} used backup key set '{}' to log in to the backup server (logins this hour: {})",
                                    cfg.source, cfg.key_set, decision.count
                                ));
                            }
                            &reply
                        }
                        Ok(SignReply::Refused) => {
                            events.log(&format!("{who}: the ssh-agent refused to sign"));
                            &FAILURE
                        }
                        Err(e) => {
                            events.log(&format!("{who}: {e}"));
                            &FAILURE
                        }
                    },
                }
            }
        };
        wire::write_frame(output, answer).map_err(FilterError::Client)?;
    }
}

/// Find an executable by name in PATH (no shell).
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Events of the real service: log lines on stderr (qrexec hands a
/// service's stderr to the journal), and a desktop notification per
/// signature through `notify-send` when it is installed.
pub struct StderrEvents {
    pub notify: bool,
}

impl Events for StderrEvents {
    fn log(&mut self, line: &str) {
        eprintln!("{PROG}: {line}");
    }

    fn notify(&mut self, body: &str) {
        if !self.notify {
            return;
        }
        let Some(prog) = find_in_path("notify-send") else {
            return;
        };
        // Only validated names and numbers go into the text (no markup
        // possible: names are [A-Za-z0-9_.-]); nothing from the client does.
        let child = Command::new(prog)
            .args([
                "--app-name=qubes-borg",
                "--",
                "qubes-borg: SSH backup key used",
            ])
            .arg(body)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            // Reap it without making the client wait for the desktop.
            Ok(mut c) => {
                std::thread::spawn(move || c.wait());
            }
            Err(e) => eprintln!("{PROG}: cannot run notify-send: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn env(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter().map(|(a, b)| (a.into(), b.into())).collect()
    }

    #[test]
    fn config_takes_the_validated_argument_and_source() {
        let e = env(&[
            ("QREXEC_SERVICE_ARGUMENT", "work"),
            ("QREXEC_REMOTE_DOMAIN", "sys-backup"),
        ]);
        let c = config_from(&os(&["work"]), &e, Some("/home/user".into())).unwrap();
        assert_eq!(c.key_set, "work");
        assert_eq!(c.source, "sys-backup");
        assert_eq!(
            c.agent_socket,
            Path::new("/run/qubes-borg-agent/work/agent.sock")
        );
        assert_eq!(
            c.public_key,
            Path::new("/home/user/.ssh/qubes-borg/work/id_ed25519.pub")
        );
        let c = config_from(&[], &e, Some("/h".into())).unwrap();
        assert_eq!(c.key_set, "work");
        // Former test-only overrides in the environment change nothing.
        let mut e2 = e.clone();
        e2.extend(env(&[
            ("QUBES_BORG_KEY_DIR", "/tmp/evil"),
            ("QUBES_BORG_AGENT_RUNDIR", "/tmp/evil"),
        ]));
        let c2 = config_from(&os(&["work"]), &e2, Some("/home/user".into())).unwrap();
        assert_eq!(
            c2.public_key,
            Path::new("/home/user/.ssh/qubes-borg/work/id_ed25519.pub")
        );
        assert_eq!(
            c2.agent_socket,
            Path::new("/run/qubes-borg-agent/work/agent.sock")
        );
    }

    #[test]
    fn config_refuses_bad_arguments_and_sources() {
        let src = ("QREXEC_REMOTE_DOMAIN", "sys-backup");
        let r = config_from(&[], &env(&[src]), Some("/h".into()));
        assert!(matches!(r, Err(FilterError::Name(NameError::Empty))));
        let r = config_from(&os(&["../x"]), &env(&[src]), Some("/h".into()));
        assert!(matches!(r, Err(FilterError::Name(_))));
        let r = config_from(&os(&["a", "b"]), &env(&[src]), Some("/h".into()));
        assert!(r.is_err());
        let e = env(&[("QREXEC_SERVICE_ARGUMENT", "b"), src]);
        assert!(matches!(
            config_from(&os(&["a"]), &e, Some("/h".into())),
            Err(FilterError::ArgMismatch)
        ));
        let r = config_from(&os(&["a"]), &[], Some("/h".into()));
        assert!(matches!(r, Err(FilterError::Source(_))));
        let e = env(&[("QREXEC_REMOTE_DOMAIN", "x y")]);
        assert!(matches!(
            config_from(&os(&["a"]), &e, Some("/h".into())),
            Err(FilterError::Source(_))
        ));
        assert!(matches!(
            config_from(&os(&["a"]), &env(&[src]), None),
            Err(FilterError::NoHome)
        ));
    }
}
